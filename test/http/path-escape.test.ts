/**
 * Path-escape attempts over real sockets (bits-protocol.md §3.2 step 2, §15 A14): every
 * request-target that could leave the upload root, reach the session folder, name a directory or
 * mean something else on Windows is refused at Create-Session with 400 + E_INVALIDARG, and nothing
 * is written anywhere: the whole sandbox (the upload root's parent) is listed before and after.
 * Runs with `bitsUpload()` mounted at `/uploads` and at the root of an Express 5 app.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import express from 'express';
import { bitsUpload } from '../../lib/middleware';
import { BITS_PROTOCOL, BitsClient, type HttpResponse } from '../helpers/bits-client';
import {
  E_ACCESSDENIED,
  E_INVALIDARG,
  errorHeaders,
  expectAck,
  listTree,
  serve,
  useServerTest,
} from './support';

const env = useServerTest();

/**
 * sandbox/
 *   outside/victim.txt      must never change
 *   root/                   the upload root
 *     sub/                  a folder
 *     existing.txt
 *     link -> ../outside    a folder link leading out
 *     victim-link -> ../outside/victim.txt
 */
beforeEach(async () => {
  await fsp.mkdir(path.join(env.sandbox.dir, 'outside'));
  await fsp.writeFile(path.join(env.sandbox.dir, 'outside', 'victim.txt'), 'victim');
  await fsp.mkdir(path.join(env.sandbox.root, 'sub'));
  await fsp.writeFile(path.join(env.sandbox.root, 'existing.txt'), 'existing');
  await fsp.symlink(path.join('..', 'outside'), path.join(env.sandbox.root, 'link'));
  await fsp.symlink(path.join('..', 'outside', 'victim.txt'), path.join(env.sandbox.root, 'victim-link'));
});

async function start(mount: string, allowOverwrites = false): Promise<BitsClient> {
  const app = express();
  const middleware = bitsUpload({ directory: env.sandbox.root, allowOverwrites });
  if (mount === '') app.use(middleware);
  else app.use(mount, middleware);
  env.running = await serve(app);
  // One connection per packet, so a request the server refuses at the HTTP level cannot spoil the next.
  const client = new BitsClient(env.running.port, { connection: 'per-packet' });
  env.clients.push(client);
  return client;
}

/** The sandbox as a listing, without the (empty) session folder the storage may create on first use. */
async function snapshot(): Promise<string[]> {
  return (await listTree(env.sandbox.dir)).filter((entry) => entry !== 'root/.bits-sessions/');
}

/** Create-Session at `target`; if it (wrongly) succeeds, uploads "PWNED" there to expose where it lands. */
async function attempt(client: BitsClient, target: string): Promise<HttpResponse> {
  const created = await client.createSession(target);
  const sid = created.headers['bits-session-id'];
  if (created.status === 200 && sid !== undefined) {
    await client.fragment(target, sid, 0, 4, 5, Buffer.from('PWNED'));
    await client.close(target, sid);
  }
  return created;
}

interface Escape {
  readonly name: string;
  /** Path below the mount point, or with `absolute` the path after `http://<host><mount>`. */
  readonly rest: string;
  readonly absolute?: string;
}

const ESCAPES: readonly Escape[] = [
  // Raw dot segments.
  { name: 'raw ..', rest: '/../escape.txt' },
  { name: 'raw ../..', rest: '/../../escape.txt' },
  { name: 'raw .. after a folder', rest: '/sub/../../escape.txt' },
  { name: 'raw .. as the last segment', rest: '/sub/..' },
  { name: 'raw .', rest: '/./escape.txt' },
  // Percent-encoded dots.
  { name: '%2e%2e', rest: '/%2e%2e/escape.txt' },
  { name: '%2E%2E twice', rest: '/%2E%2E/%2e%2e/escape.txt' },
  { name: '.%2e', rest: '/.%2e/escape.txt' },
  { name: '%2e.', rest: '/%2e./escape.txt' },
  { name: '%2e%2e as the last segment', rest: '/%2e%2e' },
  // Encoded separators.
  { name: '..%2f', rest: '/..%2fescape.txt' },
  { name: '..%2f..%2f', rest: '/..%2f..%2fescape.txt' },
  { name: 'sub%2f..%2f..%2f', rest: '/sub%2f..%2f..%2fescape.txt' },
  { name: 'leading %2f', rest: '/%2fescape.txt' },
  { name: '%2F upper case', rest: '/%2F..%2Fescape.txt' },
  { name: '..%5c', rest: '/..%5cescape.txt' },
  { name: '..%5C..%5C', rest: '/..%5C..%5Cescape.txt' },
  { name: 'raw backslash', rest: '/..\\escape.txt' },
  { name: 'raw backslashes after a folder', rest: '/sub\\..\\..\\escape.txt' },
  // NUL and other control characters, invalid encodings.
  { name: 'NUL at the end', rest: '/escape.txt%00' },
  { name: 'NUL in the middle', rest: '/escape%00.txt' },
  { name: 'NUL alone', rest: '/%00' },
  { name: 'line feed', rest: '/escape%0a.txt' },
  { name: 'overlong UTF-8 dots', rest: '/%c0%ae%c0%ae/escape.txt' },
  { name: 'bad percent-encoding', rest: '/%zz' },
  { name: 'lone percent', rest: '/escape%' },
  // Drive letters and other Windows-reserved characters.
  { name: 'C:/', rest: '/C:/escape.txt' },
  { name: 'C:%5c', rest: '/C:%5cescape.txt' },
  { name: 'C%3a%5c', rest: '/C%3a%5cescape.txt' },
  { name: 'drive-relative C:name', rest: '/C:escape.txt' },
  { name: 'alternate data stream', rest: '/existing.txt:stream' },
  { name: 'asterisk', rest: '/esc*pe.txt' },
  { name: 'encoded question mark', rest: '/escape%3F.txt' },
  { name: 'encoded quote', rest: '/escape%22.txt' },
  { name: 'encoded angle bracket', rest: '/escape%3C.txt' },
  // Absolute-form request-targets (§2.1).
  { name: 'absolute-form with ..', rest: '/../escape.txt', absolute: 'http://127.0.0.1' },
  { name: 'absolute-form with ..%2f', rest: '/..%2fescape.txt', absolute: 'http://127.0.0.1' },
  { name: 'absolute-form with %2e%2e', rest: '/%2e%2e/escape.txt', absolute: 'http://127.0.0.1' },
  { name: 'absolute-form, other host, ..', rest: '/../../escape.txt', absolute: 'http://evil.example' },
  { name: 'absolute-form, session folder', rest: '/.bits-sessions/x', absolute: 'https://bits.example.test:8443' },
  // Windows device names.
  { name: 'CON', rest: '/CON' },
  { name: 'con in lower case', rest: '/con' },
  { name: 'aux.txt', rest: '/aux.txt' },
  { name: 'AUX.tar.gz', rest: '/AUX.tar.gz' },
  { name: 'nul in a folder', rest: '/sub/nul' },
  { name: 'COM1.log', rest: '/COM1.log' },
  { name: 'lpt9', rest: '/lpt9' },
  { name: 'CONIN$', rest: '/CONIN$' },
  { name: 'device name as a folder', rest: '/prn/escape.txt' },
  // Trailing dots and spaces.
  { name: 'trailing dot', rest: '/escape.' },
  { name: 'trailing dot after an extension', rest: '/escape.txt.' },
  { name: 'folder with a trailing dot', rest: '/sub./escape.txt' },
  { name: 'trailing space', rest: '/escape.txt%20' },
  // The session folder.
  { name: '.bits-sessions itself', rest: '/.bits-sessions' },
  { name: 'a file in .bits-sessions', rest: '/.bits-sessions/escape.txt' },
  { name: '.BITS-SESSIONS in upper case', rest: '/.BITS-SESSIONS/escape.txt' },
  { name: '.bits-sessions with a trailing dot', rest: '/.bits-sessions./escape.txt' },
  { name: '%2ebits-sessions', rest: '/%2ebits-sessions/escape.txt' },
  // Empty segments and directories.
  { name: '// at the start', rest: '//escape.txt' },
  { name: '//tmp/', rest: '//tmp/escape.txt' },
  { name: '// in the middle', rest: '/sub//escape.txt' },
  { name: 'trailing slash', rest: '/new-folder/' },
  { name: 'trailing slash on an existing folder', rest: '/sub/' },
  { name: 'the mount point with a slash', rest: '/' },
  { name: 'an existing folder', rest: '/sub' },
  // Names too long for any file system.
  { name: '256-byte name', rest: `/${'a'.repeat(256)}` },
  // Links inside the root that lead out.
  { name: 'through a folder link leading out', rest: '/link/escape.txt' },
  { name: 'into a folder link leading out', rest: '/link/victim.txt' },
];

describe.each([
  ['mounted at /uploads', '/uploads'],
  ['mounted at the root', ''],
])('%s', (_mountName, mount) => {
  test.each(ESCAPES)('$name is refused with 400 + E_INVALIDARG, nothing written', async ({ rest, absolute }) => {
    const client = await start(mount);
    const target = `${absolute ?? ''}${mount}${rest}`;
    const before = await snapshot();
    const response = await attempt(client, target);
    const after = await snapshot();
    expectAck(response, 400, errorHeaders(E_INVALIDARG));
    expect(after).toEqual(before);
    expect(await fsp.readFile(path.join(env.sandbox.dir, 'outside', 'victim.txt'), 'latin1')).toBe('victim');
  });

  test('a link to a file outside: 403 (it exists); nothing outside changes', async () => {
    const client = await start(mount);
    const before = await snapshot();
    const response = await attempt(client, `${mount}/victim-link`);
    expectAck(response, 403, errorHeaders(E_ACCESSDENIED));
    expect(await snapshot()).toEqual(before);
    expect(await fsp.readFile(path.join(env.sandbox.dir, 'outside', 'victim.txt'), 'latin1')).toBe('victim');
  });

  test('a link to a file outside with allowOverwrites: the file outside is never written', async () => {
    const client = await start(mount, true);
    await attempt(client, `${mount}/victim-link`);
    expect(await fsp.readFile(path.join(env.sandbox.dir, 'outside', 'victim.txt'), 'latin1')).toBe('victim');
    const outside = (await listTree(env.sandbox.dir)).filter((entry) => !entry.startsWith('root/'));
    expect(outside).toEqual(['outside/', 'outside/victim.txt 6']);
  });

  test('a session cannot be steered into the session folder, another path or out of the root', async () => {
    const client = await start(mount);
    const target = `${mount}/ok.bin`;
    const sid = await client.openSession(target);
    expectAck(await client.fragment(target, sid, 0, 2, 10, Buffer.from('012')), 200, {
      'BITS-Session-Id': sid,
      'BITS-Received-Content-Range': '3',
    });
    const before = await snapshot();
    // The session's own data file as a destination.
    const dataTarget = `${mount}/.bits-sessions/${encodeURIComponent(sid)}/data`;
    expectAck(await attempt(client, dataTarget), 400, errorHeaders(E_INVALIDARG));
    // The right session id on an escaping path: refused before any data is looked at.
    for (const wrong of [`${mount}/../ok.bin`, `${mount}/%2e%2e/ok.bin`, dataTarget]) {
      const response = await client.fragment(wrong, sid, 3, 9, 10, Buffer.from('3456789'));
      expectAck(response, 400, errorHeaders(E_INVALIDARG), { 'BITS-Session-Id': sid });
    }
    expect(await snapshot()).toEqual(before);
    // The session is unharmed and still bound to its own path.
    expectAck(await client.fragment(target, sid, 3, 9, 10, Buffer.from('3456789')), 200, {
      'BITS-Session-Id': sid,
      'BITS-Received-Content-Range': '10',
    });
    expect(await fsp.readFile(path.join(env.sandbox.root, 'ok.bin'), 'latin1')).toBe('0123456789');
  });

  test('a valid absolute-form target and a query string stay inside the root', async () => {
    const client = await start(mount);
    const absolute = `http://bits.example.test${mount}/abs.bin`;
    const result = await client.uploadFile(absolute, Buffer.from('absolute'), 4);
    expect(result.offsets).toEqual([4, 8]);
    const queried = `${mount}/q.bin?name=/../../escape.txt`;
    await client.uploadFile(queried, Buffer.from('query'), 5);
    const tree = await listTree(env.sandbox.dir);
    expect(tree.filter((entry) => !entry.startsWith('root/.bits-sessions/'))).toEqual([
      'outside/',
      'outside/victim.txt 6',
      'root/',
      'root/abs.bin 8',
      'root/existing.txt 8',
      'root/link@',
      'root/q.bin 5',
      'root/sub/',
      'root/victim-link@',
    ]);
  });
});

test('a relative request-target is refused before the application; nothing written', async () => {
  for (const mount of ['/uploads', '']) {
    const client = await start(mount);
    const before = await snapshot();
    const response = await client.packet({
      target: '../escape.txt',
      packetType: 'Create-Session',
      supportedProtocols: BITS_PROTOCOL,
      strict: false,
    });
    // Node's own parser rejects it (400, no Ack), or the middleware does (400 Ack); never success.
    expect(response.status).toBe(400);
    expect(await snapshot()).toEqual(before);
    client.dispose();
    await env.running?.close();
    env.running = undefined;
  }
});
