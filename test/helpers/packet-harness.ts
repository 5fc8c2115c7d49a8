/**
 * Drives packets through the middleware's pipeline (`processPacket`) without sockets, against a
 * {@link StubStorage}, in the vocabulary of bits-protocol.md §16.
 */
import { Readable } from 'node:stream';
import { processPacket } from '../../lib/middleware';
import { resolveOptions, type BitsUploadOptions, type ResolvedOptions } from '../../lib/options';
import type { Ack } from '../../lib/protocol/ack';
import { SessionLocks } from '../../lib/protocol/session-lock';
import { StubStorage } from './stub-storage';

/** The upload URL of the test vectors, below the mount point. */
export const URL_PATH = '/report.bin';

/** One packet to send. */
export interface Packet {
  /** `BITS-Packet-Type`; omitted when undefined. */
  readonly type?: string;
  readonly sessionId?: string;
  readonly range?: string;
  /** Body; a Readable is passed through as it is. Defaults to empty. */
  readonly body?: string | Buffer | Readable;
  /** Content-Length; computed from a string or Buffer body unless given; null leaves it out. */
  readonly contentLength?: number | null;
  /** More headers, as name/value pairs in order. */
  readonly headers?: Readonly<Record<string, string>>;
  readonly url?: string;
  readonly httpVersion?: string;
}

export class PacketHarness {
  readonly storage = new StubStorage();
  readonly options: ResolvedOptions;
  readonly locks = new SessionLocks();
  /** The time requests are made at. */
  now = 1_700_000_000_000;

  constructor(options: Omit<BitsUploadOptions, 'storage' | 'directory'> = {}) {
    this.options = resolveOptions({ storage: this.storage, ...options });
    this.storage.now = () => this.now;
  }

  send(packet: Packet): Promise<Ack> {
    const body = packet.body ?? '';
    const rawHeaders: string[] = [];
    const add = (name: string, value: string | undefined): void => {
      if (value !== undefined) rawHeaders.push(name, value);
    };
    add('Host', 'bits.example.test');
    add('BITS-Packet-Type', packet.type);
    add('BITS-Session-Id', packet.sessionId);
    add('Content-Range', packet.range);
    const length =
      packet.contentLength === undefined
        ? body instanceof Readable
          ? undefined
          : Buffer.byteLength(body, 'latin1')
        : packet.contentLength;
    if (length !== null && length !== undefined) add('Content-Length', String(length));
    for (const [name, value] of Object.entries(packet.headers ?? {})) add(name, value);
    const stream =
      body instanceof Readable ? body : Readable.from([typeof body === 'string' ? Buffer.from(body, 'latin1') : body]);
    return processPacket(
      { httpVersion: packet.httpVersion ?? '1.1', url: packet.url ?? URL_PATH, rawHeaders, body: stream },
      this.options,
      this.locks,
      this.now,
    );
  }

  ping(): Promise<Ack> {
    return this.send({ type: 'Ping' });
  }

  /** Create-Session with the BITS 1.5 protocol; returns the Ack. */
  create(url?: string, protocols = '{7df0354d-249b-430f-820d-3d2a9bef4931}'): Promise<Ack> {
    return this.send({ type: 'Create-Session', url, headers: { 'BITS-Supported-Protocols': protocols } });
  }

  /** Create-Session that must succeed; returns the session id. */
  async session(url?: string): Promise<string> {
    const ack = await this.create(url);
    const id = ack.headers['BITS-Session-Id'];
    if (ack.status !== 200 || id === undefined) throw new Error(`Create-Session failed: ${JSON.stringify(ack)}`);
    return id;
  }

  fragment(
    sessionId: string,
    range: string | undefined,
    body: string | Buffer | Readable,
    more: Partial<Packet> = {},
  ): Promise<Ack> {
    return this.send({ type: 'Fragment', sessionId, range, body, ...more });
  }

  close(sessionId: string, url?: string): Promise<Ack> {
    return this.send({ type: 'Close-Session', sessionId, url });
  }

  cancel(sessionId: string, url?: string): Promise<Ack> {
    return this.send({ type: 'Cancel-Session', sessionId, url });
  }
}

/** Error headers "X/Y" of §16: both names with the same code, and the context. */
export function errorHeaders(code: string, context = '0x5'): Record<string, string> {
  return { 'BITS-Error-Code': code, 'BITS-Error': code, 'BITS-Error-Context': context };
}
