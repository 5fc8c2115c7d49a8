/**
 * Every error Ack over real sockets (bits-protocol.md §3 pipeline, §6.2, §8): the status, both
 * `BITS-Error-Code` and `BITS-Error` as `0x%08X`, `BITS-Error-Context: 0x5`, the echoed session id
 * where the spec asks for it, `Content-Length: 0`, no body; and the keep-alive connection stays
 * usable afterwards (except after 413, which closes it on purpose).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import express from 'express';
import { bitsUpload } from '../../lib/middleware';
import type { BitsUploadOptions } from '../../lib/options';
import { FileSystemStorage } from '../../lib/storage/filesystem';
import { BITS_PROTOCOL, BitsClient, type HttpResponse, type PacketRequest } from '../helpers/bits-client';
import {
  BG_E_SESSION_NOT_FOUND,
  BG_E_TOO_LARGE,
  E_ACCESSDENIED,
  E_FAIL,
  E_INVALIDARG,
  errorHeaders,
  expectAck,
  listUploads,
  serve,
  sessionDataBytes,
  useServerTest,
} from './support';

const TARGET = '/uploads/report.bin';
const ERROR_DISK_FULL = '0x80070070';

/** A file-system storage whose writes can be made to fail. */
class FailingStorage extends FileSystemStorage {
  failure: Error | undefined;

  override async writeFragment(id: string, offset: number, body: Readable): Promise<number> {
    if (this.failure !== undefined) throw this.failure;
    return super.writeFragment(id, offset, body);
  }
}

const env = useServerTest();

interface StartOptions {
  readonly bits?: Omit<BitsUploadOptions, 'directory'>;
  /** Mount express.raw() before bitsUpload (a misconfiguration, §2.5). */
  readonly rawParserFirst?: boolean;
}

async function start(options: StartOptions = {}): Promise<BitsClient> {
  const app = express();
  if (options.rawParserFirst === true) app.use(express.raw({ type: 'application/octet-stream' }));
  const bits = options.bits ?? {};
  app.use('/uploads', bitsUpload(bits.storage === undefined ? { directory: env.sandbox.root, ...bits } : bits));
  env.running = await serve(app);
  const client = new BitsClient(env.running.port);
  env.clients.push(client);
  return client;
}

const body = (text: string): Buffer => Buffer.from(text, 'latin1');
const invalid = errorHeaders(E_INVALIDARG);
const notFound = (sid: string): Record<string, string> => ({ 'BITS-Session-Id': sid, ...errorHeaders(BG_E_SESSION_NOT_FOUND) });

/** The keep-alive connection still works and was the only one. */
async function expectConnectionUsable(client: BitsClient): Promise<void> {
  expectAck(await client.ping(TARGET), 200);
  expect(client.connectionsOpened).toBe(1);
  expect(env.running?.connections()).toBe(1);
}

describe('§3 step 1: uploads disabled', () => {
  test('501 + E_ACCESSDENIED + 0x5 for every packet type, checked before the syntax', async () => {
    const client = await start({ bits: { enabled: false } });
    const disabled = errorHeaders(E_ACCESSDENIED);
    expectAck(await client.ping(TARGET), 501, disabled);
    expectAck(await client.packet({ target: TARGET, packetType: null }), 501, disabled);
    expectAck(await client.createSession('/uploads/../x'), 501, disabled);
    expectAck(await client.fragment(TARGET, '{00000000-0000-0000-0000-000000000001}', 0, 3, 4, body('abcd')), 501, disabled, {
      'BITS-Session-Id': '{00000000-0000-0000-0000-000000000001}',
    });
    await expectConnectionUsableWith(client, 501);
  });
});

/** Like {@link expectConnectionUsable} for a server that answers Ping with `status`. */
async function expectConnectionUsableWith(client: BitsClient, status: number): Promise<void> {
  expect((await client.ping(TARGET)).status).toBe(status);
  expect(client.connectionsOpened).toBe(1);
  expect(env.running?.connections()).toBe(1);
}

describe('§3 step 3: request syntax', () => {
  const syntaxErrors: [string, Omit<PacketRequest, 'target'>][] = [
    ['unknown packet type', { packetType: 'Frobnicate' }],
    ['missing packet type', { packetType: null }],
    ['packet type Ack', { packetType: 'Ack' }],
    ['a Ping with a body', { packetType: 'Ping', body: body('abc') }],
    ['a Create-Session with a body', { packetType: 'Create-Session', supportedProtocols: BITS_PROTOCOL, body: body('abc') }],
    ['a Close-Session with a body', { packetType: 'Close-Session', sessionId: '{00000000-0000-0000-0000-000000000001}', body: body('x') }],
    ['a header value over 4 KB', { packetType: 'Ping', headers: [['Content-Name', 'n'.repeat(4097)]] as const }],
    ['two different packet types', { packetType: 'Ping', headers: [['BITS-Packet-Type', 'Create-Session']] as const }],
    ['two different session ids', {
      packetType: 'Close-Session',
      sessionId: '{00000000-0000-0000-0000-000000000001}',
      headers: [['BITS-Session-Id', '{00000000-0000-0000-0000-000000000002}']] as const,
    }],
  ];
  test.each(syntaxErrors)('%s: 400 + E_INVALIDARG + 0x5', async (_name, request) => {
    const client = await start();
    const response = await client.packet({ target: TARGET, ...request });
    expectAck(response, 400, invalid, request.sessionId === undefined ? {} : { 'BITS-Session-Id': request.sessionId });
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    await expectConnectionUsable(client);
  });

  test('a header value of exactly 4096 bytes is accepted', async () => {
    const client = await start();
    expectAck(await client.packet({ target: TARGET, packetType: 'Ping', headers: [['Content-Name', 'n'.repeat(4096)]] }), 200);
  });

  test.each(['Ping', 'Create-Session', 'Close-Session'])('%s without Content-Length: 411 + E_INVALIDARG + 0x5', async (packetType) => {
    const client = await start();
    const response = await client.packet({
      target: TARGET,
      packetType,
      supportedProtocols: BITS_PROTOCOL,
      sessionId: packetType === 'Close-Session' ? '{00000000-0000-0000-0000-000000000001}' : undefined,
      contentLength: null,
    });
    expectAck(response, 411, invalid, { 'BITS-Session-Id': '{00000000-0000-0000-0000-000000000001}' });
  });

  test('a chunked Fragment: 411 + E_INVALIDARG + 0x5, nothing written (§2.3)', async () => {
    const client = await start();
    const sid = await client.openSession(TARGET);
    const response = await client.packet({
      target: TARGET,
      packetType: 'Fragment',
      sessionId: sid,
      contentRange: 'bytes 0-3/4',
      headers: [['Transfer-Encoding', 'chunked']],
      body: body('4\r\nabcd\r\n0\r\n\r\n'),
      contentLength: null,
    });
    expectAck(response, 411, invalid, { 'BITS-Session-Id': sid });
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    expect(await listUploads(env.sandbox.root)).toEqual([]);
  });

  test('HTTP/1.0: 400 + E_INVALIDARG + 0x5 (§2.1)', async () => {
    const client = await start();
    const response = await client.packet({ target: TARGET, packetType: 'Ping', httpVersion: '1.0', strict: false });
    expectAck(response, 400, invalid);
  });
});

describe('§3 step 4: session lookup', () => {
  test('missing BITS-Session-Id on Fragment, Close-Session, Cancel-Session: 400 + E_INVALIDARG', async () => {
    const client = await start();
    expectAck(await client.packet({ target: TARGET, packetType: 'Fragment', contentRange: 'bytes 0-1/2', body: body('ab') }), 400, invalid);
    expectAck(await client.packet({ target: TARGET, packetType: 'Close-Session' }), 400, invalid);
    expectAck(await client.packet({ target: TARGET, packetType: 'Cancel-Session' }), 400, invalid);
    await expectConnectionUsable(client);
  });

  test('unknown session on Fragment, Close-Session, Cancel-Session: 500 + BG_E_SESSION_NOT_FOUND', async () => {
    const client = await start();
    const sid = '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}';
    expectAck(await client.fragment(TARGET, sid, 0, 3, 4, body('abcd')), 500, notFound(sid));
    expectAck(await client.close(TARGET, sid), 500, notFound(sid));
    expectAck(await client.cancel(TARGET, sid), 500, notFound(sid));
    await expectConnectionUsable(client);
  });

  test('a session used on another path is unknown there (§5.6, §15 A18)', async () => {
    const client = await start();
    const sid = await client.openSession('/uploads/a.bin');
    expectAck(await client.fragment('/uploads/b.bin', sid, 0, 3, 4, body('abcd')), 500, notFound(sid));
    expectAck(await client.close('/uploads/b.bin', sid), 500, notFound(sid));
    expectAck(await client.fragment('/uploads/a.bin', sid, 0, 3, 4, body('abcd')), 200, {
      'BITS-Session-Id': sid,
      'BITS-Received-Content-Range': '4',
    });
    expect(await listUploads(env.sandbox.root)).toEqual(['a.bin 4']);
  });

  test('an expired session is unknown to Fragment (§5.4)', async () => {
    const client = await start({ bits: { sessionTimeout: 50 } });
    const sid = await client.openSession(TARGET);
    await new Promise((resolve) => setTimeout(resolve, 120));
    expectAck(await client.fragment(TARGET, sid, 0, 3, 4, body('abcd')), 500, notFound(sid));
    expect(await listUploads(env.sandbox.root)).toEqual([]);
  });

  // §5.4 [REC] and §15 A9: after expiry a tombstone remains; a Close that hits it gets 200. Otherwise a
  // client that finished an upload, then stayed away longer than the session timeout, gets
  // BG_E_SESSION_NOT_FOUND for its Close, restarts the upload (§3.4, SPEC 3.1.5.2.1), and its new
  // Create-Session is refused with 403 because the file it already delivered exists: a failed job.
  test('a completed upload whose session expired before Close: Close is still 200, a Fragment 500 (§5.4 tombstone)', async () => {
    const client = await start({ bits: { sessionTimeout: 100 } });
    const sid = await client.openSession(TARGET);
    expectAck(await client.fragment(TARGET, sid, 0, 3, 4, body('abcd')), 200, {
      'BITS-Session-Id': sid,
      'BITS-Received-Content-Range': '4',
    });
    await new Promise((resolve) => setTimeout(resolve, 250));
    expectAck(await client.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expectAck(await client.fragment(TARGET, sid, 0, 3, 4, body('abcd')), 500, notFound(sid));
    expect(await listUploads(env.sandbox.root)).toEqual(['report.bin 4']);
  });

  test('Fragment after Close and after Cancel: 500 + BG_E_SESSION_NOT_FOUND; Close/Cancel repeats: 200', async () => {
    const client = await start();
    const closed = await client.openSession(TARGET);
    expectAck(await client.close(TARGET, closed), 200, { 'BITS-Session-Id': closed });
    expectAck(await client.fragment(TARGET, closed, 0, 3, 4, body('abcd')), 500, notFound(closed));
    expectAck(await client.cancel(TARGET, closed), 200, { 'BITS-Session-Id': closed });
    const cancelled = await client.openSession(TARGET);
    expectAck(await client.cancel(TARGET, cancelled), 200, { 'BITS-Session-Id': cancelled });
    expectAck(await client.fragment(TARGET, cancelled, 0, 3, 4, body('abcd')), 500, notFound(cancelled));
    expectAck(await client.close(TARGET, cancelled), 200, { 'BITS-Session-Id': cancelled });
    expect(await listUploads(env.sandbox.root)).toEqual([]);
  });
});

describe('§3.2 Create-Session errors', () => {
  test.each([
    ['an unsupported protocol', '{12345678-1234-1234-1234-123456789abc}'],
    ['a protocol without braces that is not ours', '12345678-1234-1234-1234-123456789abc'],
    ['only separators', ' , '],
  ])('%s: 400 + E_INVALIDARG', async (_name, offered) => {
    const client = await start();
    expectAck(await client.createSession(TARGET, offered), 400, invalid);
  });

  test('the destination is a folder: 400 + E_INVALIDARG', async () => {
    await fsp.mkdir(path.join(env.sandbox.root, 'folder'));
    const client = await start();
    expectAck(await client.createSession('/uploads/folder'), 400, invalid);
  });

  // §3.2 step 2: a destination that cannot exist is refused at Create-Session (400 + E_INVALIDARG like a
  // directory, or 404 without a code for "target location does not exist"). Accepting it lets the
  // client upload the whole file and then answers every resend of the final fragment with
  // 500 + E_FAIL, which the client treats as transient (§9.2) and retries for days.
  test('a folder in the destination path is a file: refused at Create-Session, not after the upload', async () => {
    await fsp.writeFile(path.join(env.sandbox.root, 'existing.txt'), 'a file');
    const client = await start();
    const response = await client.createSession('/uploads/existing.txt/child.bin');
    if (response.status === 404) expectAck(response, 404);
    else expectAck(response, 400, invalid);
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    expect(await fsp.readFile(path.join(env.sandbox.root, 'existing.txt'), 'latin1')).toBe('a file');
  });

  test('the destination exists: 403 + E_ACCESSDENIED', async () => {
    await fsp.writeFile(path.join(env.sandbox.root, 'report.bin'), 'old');
    const client = await start();
    expectAck(await client.createSession(TARGET), 403, errorHeaders(E_ACCESSDENIED));
    await expectConnectionUsable(client);
  });
});

describe('§6.2 Fragment errors', () => {
  test('V4 too large: 500 + BG_E_TOO_LARGE at the first fragment that shows the total', async () => {
    const client = await start({ bits: { maxUploadSize: 1000 } });
    const sid = await client.openSession(TARGET);
    expectAck(await client.fragment(TARGET, sid, 0, 9, 1001, body('0123456789')), 500, {
      'BITS-Session-Id': sid,
      ...errorHeaders(BG_E_TOO_LARGE),
    });
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    await expectConnectionUsable(client);
  });

  test('V5 fragment too large: 413 without error headers, the connection closes, the session survives', async () => {
    const client = await start({ bits: { maxFragmentSize: 1024 } });
    const sid = await client.openSession(TARGET);
    const refused = await client.fragment(TARGET, sid, 0, 1024, 2048, Buffer.alloc(1025, 0x41));
    expectAck(refused, 413, {}, { 'BITS-Session-Id': sid });
    expect(refused.headers.connection).toBe('close');
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    const accepted = await client.fragment(TARGET, sid, 0, 1023, 2048, Buffer.alloc(1024, 0x41));
    expectAck(accepted, 200, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '1024' });
    expect(accepted.connection).toBe(2);
  });

  test('V5 with a large unread body: 413 arrives and the next connection works', async () => {
    const client = await start({ bits: { maxFragmentSize: 64 * 1024 } });
    const sid = await client.openSession(TARGET);
    const size = 4 * 1024 * 1024;
    const refused = await client.fragment(TARGET, sid, 0, size - 1, size, Buffer.alloc(size, 0x42));
    expectAck(refused, 413, {}, { 'BITS-Session-Id': sid });
    expectAck(await client.ping(TARGET), 200);
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
  });

  test('V6 Content-Encoding other than identity: 400; identity is accepted', async () => {
    const client = await start();
    const sid = await client.openSession(TARGET);
    for (const encoding of ['gzip', 'deflate', 'br', 'identity, gzip']) {
      const response = await client.fragment(TARGET, sid, 0, 3, 4, body('abcd'), { extraHeaders: [['Content-Encoding', encoding]] });
      expectAck(response, 400, { 'BITS-Session-Id': sid, ...invalid });
    }
    const plain = await client.fragment(TARGET, sid, 0, 3, 4, body('abcd'), { extraHeaders: [['Content-Encoding', 'identity']] });
    expectAck(plain, 200, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '4' });
    await expectConnectionUsable(client);
  });

  test('offsets beyond 2^53 - 1: 400 + E_INVALIDARG (§5.7)', async () => {
    const client = await start();
    const sid = await client.openSession(TARGET);
    const response = await client.fragment(TARGET, sid, 0, 0, 0, body('a'), { contentRange: 'bytes 0-0/9007199254740993' });
    expectAck(response, 400, { 'BITS-Session-Id': sid, ...invalid });
  });
});

describe('server faults', () => {
  test('a body parser ran first (§2.5): 500 + E_FAIL, nothing written', async () => {
    const client = await start({ rawParserFirst: true });
    const sid = await client.openSession(TARGET);
    const response = await client.fragment(TARGET, sid, 0, 3, 4, body('abcd'), {
      extraHeaders: [['Content-Type', 'application/octet-stream']],
    });
    expectAck(response, 500, { 'BITS-Session-Id': sid, ...errorHeaders(E_FAIL) });
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    // Without a Content-Type (as Windows sends it) the parser leaves the body alone.
    const plain = await client.fragment(TARGET, sid, 0, 3, 4, body('abcd'));
    expectAck(plain, 200, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '4' });
  });

  test('the storage fails: 500 + E_FAIL; disk full: 500 + 0x80070070 (§15 A17); the upload then resumes', async () => {
    const storage = new FailingStorage({ directory: env.sandbox.root, fsync: 'never' });
    const client = await start({ bits: { storage } });
    const sid = await client.openSession(TARGET);
    storage.failure = new Error('boom');
    expectAck(await client.fragment(TARGET, sid, 0, 3, 8, body('abcd')), 500, { 'BITS-Session-Id': sid, ...errorHeaders(E_FAIL) });
    storage.failure = Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    expectAck(await client.fragment(TARGET, sid, 0, 3, 8, body('abcd')), 500, {
      'BITS-Session-Id': sid,
      ...errorHeaders(ERROR_DISK_FULL),
    });
    storage.failure = undefined;
    const resumed = await client.uploadFile(TARGET, body('abcdefgh'), 4, { sessionId: sid });
    expect(resumed.offsets).toEqual([4, 8]);
    expect(await fsp.readFile(path.join(env.sandbox.root, 'report.bin'), 'latin1')).toBe('abcdefgh');
    await expectConnectionUsable(client);
  });
});

test('no error headers on success Acks and on 416 (§8.3, §15 A4)', async () => {
  const client = await start();
  const acks: HttpResponse[] = [];
  acks.push(await client.ping(TARGET));
  const created = await client.createSession(TARGET);
  acks.push(created);
  const sid = created.headers['bits-session-id'] ?? '';
  acks.push(await client.fragment(TARGET, sid, 2, 3, 4, body('cd')));
  acks.push(await client.fragment(TARGET, sid, 0, 3, 4, body('abcd')));
  acks.push(await client.close(TARGET, sid));
  expect(acks.map((ack) => ack.status)).toEqual([200, 200, 416, 200, 200]);
  for (const ack of acks) {
    expect(Object.keys(ack.headers).filter((name) => name.startsWith('bits-error'))).toEqual([]);
  }
});
