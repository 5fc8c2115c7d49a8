/**
 * The session lifecycle over real sockets (bits-protocol.md §5, §6.4, §8.4, §9.2, §12): events of
 * a whole upload, completion exactly once under a retransmitted final fragment, hook refusals and
 * failures, the session limit, binding to the principal, and close() with an upload in flight.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import express from 'express';
import type { BitsUploadEvents } from '../../lib/events';
import { bitsUpload, type BitsUploadMiddleware } from '../../lib/middleware';
import type { BitsUploadOptions } from '../../lib/options';
import { BitsClient, type HeaderList } from '../helpers/bits-client';
import { EVENT_NAMES } from '../helpers/packet-harness';
import {
  BG_E_SESSION_NOT_FOUND,
  E_ACCESSDENIED,
  E_FAIL,
  errorHeaders,
  expectAck,
  serve,
  useServerTest,
} from './support';

const TARGET = '/uploads/report.bin';
const ERROR_TOO_MANY_SESS = '0x80070045';
const body = (text: string): Buffer => Buffer.from(text, 'latin1');
const sha256 = (text: string): string => createHash('sha256').update(text, 'latin1').digest('hex');
const user = (name: string): HeaderList => [['X-Test-User', name]];

/** The principal is the `X-Test-User` header, as a test application would read it. */
const byHeader = (req: IncomingMessage): string | undefined => {
  const value = req.headers['x-test-user'];
  return typeof value === 'string' ? value : undefined;
};

let middleware: BitsUploadMiddleware | undefined;

// Before useServerTest's hooks, so that the middleware closes while its server and files still exist.
afterEach(async () => {
  await middleware?.close({ timeout: 1_000 });
  middleware = undefined;
});

const env = useServerTest();

/** Every event of the middleware, in order, as `[name, argument]`. */
type Recorded = { [K in keyof BitsUploadEvents]: [K, BitsUploadEvents[K][0]] }[keyof BitsUploadEvents];

async function start(options: Omit<BitsUploadOptions, 'directory' | 'storage'> = {}): Promise<{ events: Recorded[] }> {
  const events: Recorded[] = [];
  middleware = bitsUpload({ directory: env.sandbox.root, ...options });
  for (const name of EVENT_NAMES) {
    middleware.on(name, (payload: BitsUploadEvents[typeof name][0]) => events.push([name, payload] as Recorded));
  }
  const app = express();
  app.use('/uploads', middleware);
  env.running = await serve(app);
  return { events };
}

function client(): BitsClient {
  if (env.running === undefined) throw new Error('server not started');
  const bits = new BitsClient(env.running.port);
  env.clients.push(bits);
  return bits;
}

const fragmentAck = (sid: string, received: number): Record<string, string> => ({
  'BITS-Session-Id': sid,
  'BITS-Received-Content-Range': String(received),
});

test('a whole upload: session-created, progress, upload-completed with the file SHA-256, session-closed', async () => {
  const { events } = await start();
  const bits = client();
  const sid = await bits.openSession(TARGET);
  expectAck(await bits.fragment(TARGET, sid, 0, 5, 10, body('012345')), 200, fragmentAck(sid, 6));
  expectAck(await bits.fragment(TARGET, sid, 6, 9, 10, body('6789')), 200, fragmentAck(sid, 10));
  expectAck(await bits.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
  const session = { sessionId: sid, destination: ['report.bin'], urlPath: '/report.bin', principal: '127.0.0.1' };
  expect(events).toEqual([
    ['session-created', session],
    ['progress', { ...session, bytes: 6, offset: 6, total: 10 }],
    ['progress', { ...session, bytes: 4, offset: 10, total: 10 }],
    ['upload-completed', { ...session, size: 10, sha256: sha256('0123456789') }],
    ['session-closed', session],
  ]);
  const file = await fsp.readFile(path.join(env.sandbox.root, 'report.bin'));
  expect(createHash('sha256').update(file).digest('hex')).toBe(sha256('0123456789'));
});

test('a retransmitted final fragment (same and new connection) gets the same Ack and no second completion', async () => {
  const onUploadComplete = jest.fn();
  const { events } = await start({ onUploadComplete });
  const bits = client();
  const sid = await bits.openSession(TARGET);
  expectAck(await bits.fragment(TARGET, sid, 0, 9, 10, body('0123456789')), 200, fragmentAck(sid, 10));
  expectAck(await bits.fragment(TARGET, sid, 6, 9, 10, body('6789')), 200, fragmentAck(sid, 10));
  expectAck(await client().fragment(TARGET, sid, 0, 9, 10, body('0123456789')), 200, fragmentAck(sid, 10));
  expect(onUploadComplete).toHaveBeenCalledTimes(1);
  expect(events.filter(([name]) => name === 'upload-completed')).toHaveLength(1);
});

describe('hooks', () => {
  test('onCreateSession refusals: their status, E_ACCESSDENIED for 403, their errorCode, context 0x5', async () => {
    await start({
      onCreateSession: ({ principal }) =>
        principal === 'mallory' ? { status: 403 } : principal === 'busy' ? { status: 503, errorCode: 0x8007000e } : undefined,
      principal: byHeader,
    });
    const bits = client();
    const refusedFor = (name: string) =>
      bits.packet({ target: TARGET, packetType: 'Create-Session', supportedProtocols: '{7df0354d-249b-430f-820d-3d2a9bef4931}', headers: user(name) });
    expectAck(await refusedFor('mallory'), 403, errorHeaders(E_ACCESSDENIED));
    expectAck(await refusedFor('busy'), 503, errorHeaders('0x8007000E'));
    expect((await refusedFor('alice')).status).toBe(200);
  });

  test('onUploadComplete failing: the final fragment gets its status with context 0x7; the resend delivers', async () => {
    let attempts = 0;
    const { events } = await start({
      onUploadComplete: async () => {
        attempts += 1;
        if (attempts === 1) throw Object.assign(new Error('downstream unavailable'), { status: 503 });
      },
    });
    const bits = client();
    const sid = await bits.openSession(TARGET);
    expectAck(await bits.fragment(TARGET, sid, 0, 3, 4, body('abcd')), 503, {
      'BITS-Session-Id': sid,
      ...errorHeaders(E_FAIL, '0x7'),
    });
    expectAck(await bits.fragment(TARGET, sid, 0, 3, 4, body('abcd')), 200, fragmentAck(sid, 4));
    expect(attempts).toBe(2);
    expect(events.map(([name]) => name)).toEqual(['session-created', 'progress', 'upload-failed', 'upload-completed']);
  });
});

test('the session limit per principal: 503 + ERROR_TOO_MANY_SESS, context 0x5; another principal is not affected', async () => {
  await start({ maxSessionsPerPrincipal: 1, principal: byHeader });
  const bits = client();
  const create = (name: string) =>
    bits.packet({ target: TARGET, packetType: 'Create-Session', supportedProtocols: '{7df0354d-249b-430f-820d-3d2a9bef4931}', headers: user(name) });
  const first = await create('alice');
  expect(first.status).toBe(200);
  expectAck(await create('alice'), 503, errorHeaders(ERROR_TOO_MANY_SESS));
  expect((await create('bob')).status).toBe(200);
  const sid = first.headers['bits-session-id'] ?? '';
  expectAck(
    await bits.packet({ target: TARGET, packetType: 'Cancel-Session', sessionId: sid, headers: user('alice') }),
    200,
    { 'BITS-Session-Id': sid },
  );
  expect((await create('alice')).status).toBe(200);
});

test('a session is bound to its principal: from another one it is an unknown session (§15 A18)', async () => {
  await start({ principal: byHeader });
  const bits = client();
  const created = await bits.packet({
    target: TARGET,
    packetType: 'Create-Session',
    supportedProtocols: '{7df0354d-249b-430f-820d-3d2a9bef4931}',
    headers: user('alice'),
  });
  const sid = created.headers['bits-session-id'] ?? '';
  expectAck(await bits.fragment(TARGET, sid, 0, 3, 4, body('evil'), { extraHeaders: user('mallory') }), 500, {
    'BITS-Session-Id': sid,
    ...errorHeaders(BG_E_SESSION_NOT_FOUND),
  });
  expectAck(await bits.fragment(TARGET, sid, 0, 3, 4, body('abcd'), { extraHeaders: user('alice') }), 200, fragmentAck(sid, 4));
  expect(await fsp.readFile(path.join(env.sandbox.root, 'report.bin'), 'latin1')).toBe('abcd');
});

test('close() with a fragment in flight: new sessions 503 at once, the fragment completes, then every packet 503', async () => {
  await start();
  const uploader = client();
  const sid = await uploader.openSession(TARGET);
  const stream = new PassThrough();
  const inFlight = uploader.fragment(TARGET, sid, 0, 9, 10, stream, { contentLength: 10 });
  stream.write(body('01234'));
  await new Promise((resolve) => setTimeout(resolve, 50));
  let closed = false;
  const closing = middleware?.close({ timeout: 10_000 }).then(() => {
    closed = true;
  });
  const other = client();
  expectAck(await other.createSession('/uploads/other.bin'), 503, errorHeaders(E_FAIL));
  expect(closed).toBe(false);
  stream.end(body('56789'));
  expectAck(await inFlight, 200, fragmentAck(sid, 10));
  await closing;
  expect(closed).toBe(true);
  expectAck(await other.ping('/uploads/other.bin'), 503, errorHeaders(E_FAIL));
  expectAck(await uploader.close(TARGET, sid), 503, errorHeaders(E_FAIL));
  expect(await fsp.readFile(path.join(env.sandbox.root, 'report.bin'), 'latin1')).toBe('0123456789');
});
