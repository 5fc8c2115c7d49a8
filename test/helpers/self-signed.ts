import { generate } from 'selfsigned';

/** A key and certificate for `localhost` and 127.0.0.1, made at run time (never checked in). */
export interface LocalCertificate {
  readonly key: string;
  readonly cert: string;
}

/** Generates a self-signed EC certificate valid for `localhost` and `127.0.0.1`. */
export async function localhostCertificate(): Promise<LocalCertificate> {
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    algorithm: 'sha256',
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'subjectAltName', altNames: [{ type: 2, value: 'localhost' }, { type: 7, ip: '127.0.0.1' }] },
    ],
  });
  return { key: pems.private, cert: pems.cert };
}
