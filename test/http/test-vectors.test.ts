/**
 * The test vectors of bits-protocol.md §16 (TV-1 to TV-9, TV-11 to TV-17, and a short TV-18), run
 * end to end: real `BITS_POST` bytes over real sockets to `bitsUpload()` mounted in Express 5 at
 * `/uploads`, on a server made by `acceptBitsPost(app.listen(0))`, storing into a temporary folder.
 * Every Ack is compared header by header (support.ts `expectAck`).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import express from 'express';
import { bitsUpload } from '../../lib/middleware';
import type { BitsUploadOptions } from '../../lib/options';
import { BITS_PROTOCOL, BitsClient, type HttpResponse } from '../helpers/bits-client';
import {
  BG_E_SESSION_NOT_FOUND,
  BG_E_TOO_LARGE,
  E_ACCESSDENIED,
  E_INVALIDARG,
  errorHeaders,
  exists,
  expectAck,
  listUploads,
  serve,
  SESSION_ID_FORM,
  sessionDataBytes,
  useServerTest,
} from './support';

const HOST = 'bits.example.test';
const TARGET = '/uploads/report.bin';
const OTHER_PROTOCOL = '{12345678-1234-1234-1234-123456789abc}';

const env = useServerTest();

/** Starts Express 5 with `bitsUpload` at /uploads and a GET route, and returns a client for it. */
async function start(options: Omit<BitsUploadOptions, 'directory' | 'storage'> = {}, host = HOST): Promise<BitsClient> {
  const app = express();
  app.get('/api/status', (_req, res) => {
    res.json({ ok: true });
  });
  app.use('/uploads', bitsUpload({ directory: env.sandbox.root, ...options }));
  env.running = await serve(app);
  return client(host);
}

function client(host = HOST): BitsClient {
  if (env.running === undefined) throw new Error('server not started');
  const made = new BitsClient(env.running.port, { host });
  env.clients.push(made);
  return made;
}

function destination(name = 'report.bin'): string {
  return path.join(env.sandbox.root, name);
}

async function content(name = 'report.bin'): Promise<string> {
  return fsp.readFile(destination(name), 'latin1');
}

const body = (text: string): Buffer => Buffer.from(text, 'latin1');

function sidOf(response: HttpResponse): string {
  const sid = response.headers['bits-session-id'];
  if (sid === undefined) throw new Error('no BITS-Session-Id');
  return sid;
}

/** Create-Session that must succeed; checks the whole Ack (§3.2, TV-1). */
async function createSession(bits: BitsClient, target = TARGET): Promise<string> {
  const created = await bits.createSession(target);
  const sid = sidOf(created);
  expect(sid).toMatch(SESSION_ID_FORM);
  expectAck(created, 200, { 'BITS-Protocol': BITS_PROTOCOL, 'BITS-Session-Id': sid, 'Accept-Encoding': 'identity' });
  return sid;
}

function fragmentAck(sid: string, received: number): Record<string, string> {
  return { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': String(received) };
}

/** A gap probe: a Fragment past the end reads the server's offset R from the 416 without writing (§6.3 D). */
async function probeOffset(bits: BitsClient, sid: string, total = 10, target = TARGET): Promise<number> {
  const probe = await bits.fragment(target, sid, total - 1, total - 1, total, body('9'));
  expect(probe.status === 416 || probe.status === 200).toBe(true);
  return Number(probe.headers['bits-received-content-range']);
}

describe('TV-1 complete upload in two fragments', () => {
  test('Ping, Create-Session, two Fragments, Close-Session, repeated Close', async () => {
    const bits = await start();
    expectAck(await bits.ping(TARGET), 200);
    const sid = await createSession(bits);

    expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
    expect(await exists(destination())).toBe(false);
    expectAck(await bits.fragment(TARGET, sid, 6, 9, 10, body('6789')), 200, fragmentAck(sid, 10));
    expect(await content()).toBe('0123456789');

    expectAck(await bits.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expect(await content()).toBe('0123456789');
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    // Lost-Ack retry: the tombstone answers 200 (§5.4).
    expectAck(await bits.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expect(await listUploads(env.sandbox.root)).toEqual(['report.bin 10']);
    expect(env.running?.connections()).toBe(1);
  });

  test('without the initial Ping, and with a Ping between the last Fragment and Close', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
    expectAck(await bits.fragment(TARGET, sid, 6, 9, 10, body('6789')), 200, fragmentAck(sid, 10));
    expectAck(await bits.ping(TARGET), 200);
    expectAck(await bits.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expect(await content()).toBe('0123456789');
  });

  test('the session id is matched case-insensitively and echoed as sent (§5.1)', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    const lower = sid.toLowerCase();
    expectAck(await bits.fragment(TARGET, lower, 0, 9, 10, body('0123456789')), 200, fragmentAck(lower, 10));
    expectAck(await bits.close(TARGET, lower), 200, { 'BITS-Session-Id': lower });
    expect(await content()).toBe('0123456789');
  });
});

describe('TV-2 gap', () => {
  test('a fragment past R gets 416 with R and no error headers; nothing is written', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
    expectAck(await bits.fragment(TARGET, sid, 8, 9, 10, body('89')), 416, fragmentAck(sid, 6));
    expect(await exists(destination())).toBe(false);
    expectAck(await bits.fragment(TARGET, sid, 6, 9, 10, body('6789')), 200, fragmentAck(sid, 10));
    expect(await content()).toBe('0123456789');
    expectAck(await bits.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
  });

  test('a gap as the very first fragment reports 0', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    expectAck(await bits.fragment(TARGET, sid, 4, 9, 10, body('456789')), 416, fragmentAck(sid, 0));
    expectAck(await bits.fragment(TARGET, sid, 0, 9, 10, body('0123456789')), 200, fragmentAck(sid, 10));
    expect(await content()).toBe('0123456789');
  });
});

describe('TV-3 overlap, duplicate, repeated final fragment', () => {
  test('overlap: the held bytes are skipped', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
    expectAck(await bits.fragment(TARGET, sid, 4, 9, 10, body('456789')), 200, fragmentAck(sid, 10));
    expect(await content()).toBe('0123456789');
  });

  test('duplicate: 200 with R unchanged, nothing written', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
    expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
    expectAck(await bits.fragment(TARGET, sid, 6, 9, 10, body('6789')), 200, fragmentAck(sid, 10));
    expect(await content()).toBe('0123456789');
  });

  test('final fragment repeated after completion: the same Ack, no second commit', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
    expectAck(await bits.fragment(TARGET, sid, 6, 9, 10, body('6789')), 200, fragmentAck(sid, 10));
    const before = await fsp.stat(destination());
    expectAck(await bits.fragment(TARGET, sid, 6, 9, 10, body('6789')), 200, fragmentAck(sid, 10));
    const after = await fsp.stat(destination());
    expect(after.ino).toBe(before.ino);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    expect(await content()).toBe('0123456789');
    expectAck(await bits.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
  });
});

describe('TV-4 cancel', () => {
  test('Cancel deletes the partial data; the session is then unknown; Cancel again is 200', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
    expect(await sessionDataBytes(env.sandbox.root)).toBe(6);
    expectAck(await bits.cancel(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expect(await exists(destination())).toBe(false);
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    expectAck(
      await bits.fragment(TARGET, sid, 6, 9, 10, body('6789')),
      500,
      { 'BITS-Session-Id': sid, ...errorHeaders(BG_E_SESSION_NOT_FOUND) },
    );
    expectAck(await bits.cancel(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expect(await listUploads(env.sandbox.root)).toEqual([]);
  });

  test('Cancel after completion keeps the destination', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    expectAck(await bits.fragment(TARGET, sid, 0, 9, 10, body('0123456789')), 200, fragmentAck(sid, 10));
    expectAck(await bits.cancel(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expect(await content()).toBe('0123456789');
    expectAck(await bits.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expect(await listUploads(env.sandbox.root)).toEqual(['report.bin 10']);
  });
});

describe('TV-5 unknown session', () => {
  const UNKNOWN = '{00000000-0000-0000-0000-000000000001}';

  test('Fragment, Close-Session and Cancel-Session with an id that never existed: 500 + BG_E_SESSION_NOT_FOUND', async () => {
    const bits = await start();
    const notFound = { 'BITS-Session-Id': UNKNOWN, ...errorHeaders(BG_E_SESSION_NOT_FOUND) };
    expectAck(await bits.fragment(TARGET, UNKNOWN, 0, 3, 4, body('abcd')), 500, notFound);
    expectAck(await bits.close(TARGET, UNKNOWN), 500, notFound);
    expectAck(await bits.cancel(TARGET, UNKNOWN), 500, notFound);
    // Not a GUID at all: still "not found", echoed as sent.
    expectAck(await bits.close(TARGET, 'session-42'), 500, { 'BITS-Session-Id': 'session-42', ...errorHeaders(BG_E_SESSION_NOT_FOUND) });
    expect(await listUploads(env.sandbox.root)).toEqual([]);
    // The connection stays usable after the unread fragment body was drained.
    expectAck(await bits.ping(TARGET), 200);
    expect(env.running?.connections()).toBe(1);
  });

  test('Fragment, Close-Session and Cancel-Session without BITS-Session-Id: 400 + E_INVALIDARG', async () => {
    const bits = await start();
    const frag = await bits.packet({
      target: TARGET,
      packetType: 'Fragment',
      contentRange: 'bytes 0-3/4',
      body: body('abcd'),
    });
    expectAck(frag, 400, errorHeaders(E_INVALIDARG));
    expectAck(await bits.packet({ target: TARGET, packetType: 'Close-Session' }), 400, errorHeaders(E_INVALIDARG));
    expectAck(await bits.packet({ target: TARGET, packetType: 'Cancel-Session' }), 400, errorHeaders(E_INVALIDARG));
  });
});

describe('TV-6 protocol negotiation', () => {
  test.each([
    ['an unsupported protocol', OTHER_PROTOCOL],
    ['an empty header', ''],
    ['no header', undefined],
  ])('%s: 400 + E_INVALIDARG, no BITS-Protocol, no session', async (_name, offered) => {
    const bits = await start();
    const response = await bits.packet({ target: TARGET, packetType: 'Create-Session', supportedProtocols: offered });
    expectAck(response, 400, errorHeaders(E_INVALIDARG));
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    expect(await listUploads(env.sandbox.root)).toEqual([]);
  });

  test.each([
    ['space-separated, second entry in upper case', `${OTHER_PROTOCOL} {7DF0354D-249B-430F-820D-3D2A9BEF4931}`],
    ['comma-separated', `${OTHER_PROTOCOL},{7df0354d-249b-430f-820d-3d2a9bef4931}`],
  ])('%s: 200 with the canonical BITS-Protocol', async (_name, offered) => {
    const bits = await start();
    const response = await bits.createSession(TARGET, offered);
    const sid = sidOf(response);
    expectAck(response, 200, { 'BITS-Protocol': BITS_PROTOCOL, 'BITS-Session-Id': sid, 'Accept-Encoding': 'identity' });
  });
});

describe('TV-7 invalid fragments: 400 + E_INVALIDARG, nothing written', () => {
  interface InvalidFragment {
    readonly name: string;
    readonly first?: boolean;
    readonly range: string | null;
    readonly payload: string;
    readonly headers?: readonly (readonly [string, string])[];
  }
  const cases: InvalidFragment[] = [
    { name: 'end before start', range: 'bytes 5-3/10', payload: '' },
    { name: 'end at or past the total', range: 'bytes 0-10/10', payload: '0123456789A' },
    { name: 'Content-Length differs from the range length', range: 'bytes 0-5/10', payload: '01234' },
    { name: 'total changed', first: true, range: 'bytes 6-9/12', payload: '6789' },
    { name: 'Content-Range missing', range: null, payload: '0123' },
    { name: 'unsatisfied-range form', range: 'bytes */10', payload: '0123' },
    { name: 'Content-Encoding gzip', range: 'bytes 0-5/10', payload: '012345', headers: [['Content-Encoding', 'gzip']] },
    { name: 'not a byte range', range: 'items 0-5/10', payload: '012345' },
    { name: 'negative start', range: 'bytes -1-5/10', payload: '012345' },
  ];

  test.each(cases)('$name', async ({ first, range, payload, headers }) => {
    const bits = await start();
    const sid = await createSession(bits);
    let held = 0;
    if (first === true) {
      expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
      held = 6;
    }
    const response = await bits.fragment(TARGET, sid, 0, 0, 0, body(payload), {
      contentRange: range,
      extraHeaders: headers ?? [],
    });
    expectAck(response, 400, { 'BITS-Session-Id': sid, ...errorHeaders(E_INVALIDARG) });
    // Nothing was written: the session still holds what it held, no file appeared.
    expect(await probeOffset(bits, sid)).toBe(held);
    expect(await sessionDataBytes(env.sandbox.root)).toBe(held);
    expect(await exists(destination())).toBe(false);
    // The session survives the bad packet.
    expectAck(await bits.fragment(TARGET, sid, held, 9, 10, body('0123456789'.slice(held))), 200, fragmentAck(sid, 10));
    expect(await content()).toBe('0123456789');
  });

  test('unit and packet type are case-insensitive (§15 A15, A24)', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    const response = await bits.packet({
      target: TARGET,
      packetType: 'FRAGMENT',
      sessionId: sid,
      contentRange: 'Bytes 0-9/10',
      body: body('0123456789'),
    });
    expectAck(response, 200, fragmentAck(sid, 10));
    expect(await content()).toBe('0123456789');
  });
});

describe('TV-8 upload too large', () => {
  test('maxUploadSize 8: a 10-byte upload is refused with 500 + BG_E_TOO_LARGE, never 413', async () => {
    const bits = await start({ maxUploadSize: 8 });
    const sid = await createSession(bits);
    expectAck(
      await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')),
      500,
      { 'BITS-Session-Id': sid, ...errorHeaders(BG_E_TOO_LARGE) },
    );
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    expect(await exists(destination())).toBe(false);
  });

  test('maxUploadSize 8: an upload of exactly 8 bytes is accepted', async () => {
    const bits = await start({ maxUploadSize: 8 });
    const sid = await createSession(bits);
    expectAck(await bits.fragment(TARGET, sid, 0, 7, 8, body('01234567')), 200, fragmentAck(sid, 8));
    expect(await content()).toBe('01234567');
  });
});

describe('TV-9 fragment larger than the server accepts', () => {
  test('maxFragmentSize 4: 413 without error headers, nothing written; a 4-byte fragment then succeeds', async () => {
    const bits = await start({ maxFragmentSize: 4 });
    const sid = await createSession(bits);
    const refused = await bits.fragment(TARGET, sid, 0, 5, 10, body('012345'));
    expectAck(refused, 413, {}, { 'BITS-Session-Id': sid });
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    expectAck(await bits.fragment(TARGET, sid, 0, 3, 10, body('0123')), 200, fragmentAck(sid, 4));
    expectAck(await bits.fragment(TARGET, sid, 4, 7, 10, body('4567')), 200, fragmentAck(sid, 8));
    expectAck(await bits.fragment(TARGET, sid, 8, 9, 10, body('89')), 200, fragmentAck(sid, 10));
    expect(await content()).toBe('0123456789');
  });
});

describe('TV-11 zero-byte file', () => {
  test.each([
    ['bytes 0--1/0', 'bytes 0--1/0'],
    ['bytes 0-18446744073709551615/0', 'bytes 0-18446744073709551615/0'],
    ['bytes 0-0/0', 'bytes 0-0/0'],
    ['bytes */0', 'bytes */0'],
    ['no Content-Range', null],
  ])('%s with Content-Length 0: 200, R = 0, empty destination', async (_name, range) => {
    const bits = await start();
    const sid = await createSession(bits, '/uploads/empty.bin');
    const response = await bits.fragment('/uploads/empty.bin', sid, 0, -1, 0, Buffer.alloc(0), { contentRange: range });
    expectAck(response, 200, fragmentAck(sid, 0));
    expect((await fsp.stat(destination('empty.bin'))).size).toBe(0);
    expectAck(await bits.close('/uploads/empty.bin', sid), 200, { 'BITS-Session-Id': sid });
    expect(await listUploads(env.sandbox.root)).toEqual(['empty.bin 0']);
  });

  test('Close-Session on a session that never received a fragment commits nothing', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    expectAck(await bits.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expect(await listUploads(env.sandbox.root)).toEqual([]);
  });
});

describe('TV-12 close before completion', () => {
  test('the destination is not created and the partial data is deleted', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
    expectAck(await bits.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expect(await exists(destination())).toBe(false);
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    // The closed session takes no more data.
    expectAck(
      await bits.fragment(TARGET, sid, 6, 9, 10, body('6789')),
      500,
      { 'BITS-Session-Id': sid, ...errorHeaders(BG_E_SESSION_NOT_FOUND) },
    );
    expect(await listUploads(env.sandbox.root)).toEqual([]);
  });
});

describe('TV-13 unknown or missing packet type', () => {
  test.each([
    ['Frobnicate', 'Frobnicate'],
    ['missing', null],
    ['Ack', 'Ack'],
    ['empty', ''],
  ])('%s: 400 + E_INVALIDARG', async (_name, packetType) => {
    const bits = await start();
    expectAck(await bits.packet({ target: TARGET, packetType }), 400, errorHeaders(E_INVALIDARG));
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
  });

  test('packet types in other letter cases are accepted', async () => {
    const bits = await start();
    expectAck(await bits.packet({ target: TARGET, packetType: 'PING' }), 200);
    const created = await bits.packet({ target: TARGET, packetType: 'create-session', supportedProtocols: BITS_PROTOCOL });
    const sid = sidOf(created);
    expectAck(created, 200, { 'BITS-Protocol': BITS_PROTOCOL, 'BITS-Session-Id': sid, 'Accept-Encoding': 'identity' });
    const frag = await bits.packet({
      target: TARGET,
      packetType: 'FRAGMENT',
      sessionId: sid,
      contentRange: 'bytes 0-9/10',
      body: body('0123456789'),
    });
    expectAck(frag, 200, fragmentAck(sid, 10));
    expectAck(await bits.packet({ target: TARGET, packetType: 'close-SESSION', sessionId: sid }), 200, { 'BITS-Session-Id': sid });
    expect(await content()).toBe('0123456789');
  });
});

describe('TV-14 missing Content-Length', () => {
  test('Create-Session without Content-Length: 411 (or 400) + E_INVALIDARG', async () => {
    const bits = await start();
    const response = await bits.packet({
      target: TARGET,
      packetType: 'Create-Session',
      supportedProtocols: BITS_PROTOCOL,
      contentLength: null,
    });
    expect([400, 411]).toContain(response.status);
    expectAck(response, response.status, errorHeaders(E_INVALIDARG));
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
  });

  test('the raw request bytes of TV-14 get the same answer', async () => {
    const bits = await start();
    const [response] = await bits.raw(
      `BITS_POST ${TARGET} HTTP/1.1\r\nHost: ${HOST}\r\nBITS-Packet-Type: Create-Session\r\n` +
        `BITS-Supported-Protocols: ${BITS_PROTOCOL}\r\n\r\n`,
    );
    if (response === undefined) throw new Error('no response');
    expect([400, 411]).toContain(response.status);
    expectAck(response, response.status, errorHeaders(E_INVALIDARG));
  });
});

describe('TV-15 Host-Id', () => {
  test('hostId node7: Create-Session carries BITS-Host-Id and the default fallback; a Fragment with Host: node7 is accepted', async () => {
    const bits = await start({ hostId: 'node7' });
    const created = await bits.createSession(TARGET);
    const sid = sidOf(created);
    expectAck(created, 200, {
      'BITS-Protocol': BITS_PROTOCOL,
      'BITS-Session-Id': sid,
      'BITS-Host-Id': 'node7',
      'BITS-Host-Id-Fallback-Timeout': '86400',
      'Accept-Encoding': 'identity',
    });
    const pinned = client('node7');
    expectAck(await pinned.ping(TARGET), 200);
    expectAck(await pinned.fragment(TARGET, sid, 0, 9, 10, body('0123456789')), 200, fragmentAck(sid, 10));
    expectAck(await pinned.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expect(await content()).toBe('0123456789');
  });

  test('hostIdFallbackTimeout 3600 is sent as given; no Host-Id headers on other Acks', async () => {
    const bits = await start({ hostId: 'node7', hostIdFallbackTimeout: 3600 });
    const created = await bits.createSession(TARGET);
    const sid = sidOf(created);
    expectAck(created, 200, {
      'BITS-Protocol': BITS_PROTOCOL,
      'BITS-Session-Id': sid,
      'BITS-Host-Id': 'node7',
      'BITS-Host-Id-Fallback-Timeout': '3600',
      'Accept-Encoding': 'identity',
    });
    expectAck(await bits.ping(TARGET), 200);
    expectAck(await bits.fragment(TARGET, sid, 0, 9, 10, body('0123456789')), 200, fragmentAck(sid, 10));
    // A failed Create-Session carries no Host-Id (§11: only on success).
    expectAck(await bits.createSession(TARGET), 403, errorHeaders(E_ACCESSDENIED));
  });
});

describe('TV-16 destination exists', () => {
  test('overwrites not allowed: 403 + E_ACCESSDENIED, no session, file unchanged', async () => {
    await fsp.writeFile(destination(), 'old content');
    const bits = await start();
    expectAck(await bits.createSession(TARGET), 403, errorHeaders(E_ACCESSDENIED));
    expect(await content()).toBe('old content');
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
  });

  test('allowOverwrites: 200 and the old file is replaced at completion', async () => {
    await fsp.writeFile(destination(), 'old content');
    const bits = await start({ allowOverwrites: true });
    const sid = await createSession(bits);
    expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
    expect(await content()).toBe('old content');
    expectAck(await bits.fragment(TARGET, sid, 6, 9, 10, body('6789')), 200, fragmentAck(sid, 10));
    expect(await content()).toBe('0123456789');
    expectAck(await bits.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expect(await listUploads(env.sandbox.root)).toEqual(['report.bin 10']);
  });

  test('a file that appears during the upload is not overwritten at commit (§15 A7)', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
    await fsp.writeFile(destination(), 'appeared');
    expectAck(
      await bits.fragment(TARGET, sid, 6, 9, 10, body('6789')),
      403,
      { 'BITS-Session-Id': sid, ...errorHeaders(E_ACCESSDENIED) },
    );
    expect(await content()).toBe('appeared');
  });
});

describe('TV-17 uploads disabled', () => {
  test('every BITS_POST, Ping included, gets 501 + E_ACCESSDENIED; nothing is stored', async () => {
    const bits = await start({ enabled: false });
    const disabled = errorHeaders(E_ACCESSDENIED);
    const sid = '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}';
    expectAck(await bits.ping(TARGET), 501, disabled);
    expectAck(await bits.createSession(TARGET), 501, disabled);
    expectAck(await bits.fragment(TARGET, sid, 0, 9, 10, body('0123456789')), 501, disabled, { 'BITS-Session-Id': sid });
    expectAck(await bits.close(TARGET, sid), 501, disabled, { 'BITS-Session-Id': sid });
    expectAck(await bits.cancel(TARGET, sid), 501, disabled, { 'BITS-Session-Id': sid });
    expectAck(await bits.packet({ target: TARGET, packetType: 'Frobnicate' }), 501, disabled);
    expect(await listUploads(env.sandbox.root)).toEqual([]);
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    // Other routes still work.
    const [status] = await bits.raw(`GET /api/status HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    expect(status?.status).toBe(200);
    expect(JSON.parse(status?.body.toString('utf8') ?? '')).toEqual({ ok: true });
  });
});

describe('TV-18 (short) one keep-alive connection: Ping, a Fragment whose body holds a request line, a GET', () => {
  test('the body is stored unchanged and the GET reaches its route', async () => {
    const bits = await start();
    const sid = await createSession(bits);
    const payload = body('BITS_POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET / HTTP/1.1\r\n\r\n');
    expectAck(await bits.ping(TARGET), 200);
    expectAck(
      await bits.fragment(TARGET, sid, 0, payload.length - 1, payload.length, payload),
      200,
      fragmentAck(sid, payload.length),
    );
    const [got] = await bits.raw(`GET /api/status HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    expect(got?.status).toBe(200);
    expect(got?.headers['bits-packet-type']).toBeUndefined();
    expect(JSON.parse(got?.body.toString('utf8') ?? '')).toEqual({ ok: true });
    expect((await fsp.readFile(destination())).equals(payload)).toBe(true);
    expect(bits.connectionsOpened).toBe(1);
    expect(env.running?.connections()).toBe(1);
  });
});
