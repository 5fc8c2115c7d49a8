/**
 * Session lifecycle against the real FileSystemStorage (bits-protocol.md §5.4, §5.6, §6.4, §10):
 * expiry and the sweeper, start-up reconciliation of what a crash left behind, a full disk (a
 * small tmpfs), session quotas, binding to the principal, completion delivered exactly once (also
 * across a restart of a child-process server) and graceful shutdown of the standalone server.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { promises as fsp } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import path from 'node:path';
import express from 'express';
import type { CompletedUpload, FailureInfo, SessionInfo } from '../../lib/events';
import { bitsUpload, type BitsUploadMiddleware } from '../../lib/middleware';
import type { BitsUploadOptions } from '../../lib/options';
import type { RecoveryReport } from '../../lib/storage/adapter';
import {
  BITS_PROTOCOL,
  BitsClient,
  checkAck,
  parseResponse,
  patternBytes,
  patternSource,
  receivedOffset,
  sha256OfFile,
  sha256OfSource,
  type ByteSource,
  type HeaderList,
  type HttpResponse,
} from '../helpers/bits-client';
import { ChildServer, killAllChildren, mountTmpfs, unmountTmpfs } from '../fixtures/child-server';
import {
  BG_E_SESSION_NOT_FOUND,
  errorHeaders,
  exists,
  expectAck,
  listUploads,
  makeSandbox,
  serve,
  sessionDataBytes,
  waitUntil,
  type RunningServer,
  type Sandbox,
} from '../http/support';
import { readStoredRecord } from '../helpers/record-file';

const KiB = 1024;
const MiB = 1024 * KiB;
const ERROR_DISK_FULL = '0x80070070';
const ERROR_TOO_MANY_SESS = '0x80070045';
const SESSIONS = '.bits-sessions';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// In-process servers

interface Endpoint {
  readonly middleware: BitsUploadMiddleware;
  readonly mount: string;
}

interface InProcess {
  readonly server: RunningServer;
  readonly endpoints: readonly Endpoint[];
}

let sandbox: Sandbox | undefined;
let running: InProcess | undefined;
const clients: BitsClient[] = [];

afterEach(async () => {
  for (const client of clients.splice(0)) client.dispose();
  if (running !== undefined) {
    const { server, endpoints } = running;
    running = undefined;
    await Promise.all(endpoints.map((endpoint) => endpoint.middleware.close({ timeout: 2000 }).catch(() => undefined)));
    await server.close();
  }
  await killAllChildren();
  await sandbox?.remove();
  sandbox = undefined;
});

afterAll(async () => {
  await killAllChildren();
});

async function newSandbox(): Promise<Sandbox> {
  sandbox = await makeSandbox();
  return sandbox;
}

/** Serves each middleware at its mount on one server (127.0.0.1, port 0). */
async function serveEndpoints(endpoints: readonly Endpoint[]): Promise<InProcess> {
  const app = express();
  for (const { mount, middleware } of endpoints) app.use(mount, middleware);
  const server = await serve(app, 'createBitsServer');
  running = { server, endpoints };
  return running;
}

/** One middleware at `/up` over a FileSystemStorage of `directory`. */
async function startOne(
  options: BitsUploadOptions,
): Promise<{ middleware: BitsUploadMiddleware; port: number; recovery: RecoveryReport | undefined }> {
  const middleware = bitsUpload(options);
  const { server } = await serveEndpoints([{ middleware, mount: '/up' }]);
  const recovery = await middleware.ready();
  return { middleware, port: server.port, recovery };
}

function newClient(port: number): BitsClient {
  const client = new BitsClient(port);
  clients.push(client);
  return client;
}

/** Collects every event of a middleware. */
function eventLog(middleware: BitsUploadMiddleware): {
  completed: CompletedUpload[];
  expired: SessionInfo[];
  failed: FailureInfo[];
  created: SessionInfo[];
  closed: SessionInfo[];
} {
  const log = {
    completed: [] as CompletedUpload[],
    expired: [] as SessionInfo[],
    failed: [] as FailureInfo[],
    created: [] as SessionInfo[],
    closed: [] as SessionInfo[],
  };
  middleware.on('upload-completed', (upload) => log.completed.push(upload));
  middleware.on('session-expired', (session) => log.expired.push(session));
  middleware.on('upload-failed', (failure) => log.failed.push(failure));
  middleware.on('session-created', (session) => log.created.push(session));
  middleware.on('session-closed', (session) => log.closed.push(session));
  return log;
}

/** Sends bytes `start`..`end - 1` of `source` as one fragment. */
function sendRange(
  client: BitsClient,
  target: string,
  sessionId: string,
  source: ByteSource,
  start: number,
  end: number,
  extraHeaders: HeaderList = [],
): Promise<HttpResponse> {
  return client.fragment(target, sessionId, start, end - 1, source.size, source.slice(start, end), {
    contentLength: end - start,
    extraHeaders,
  });
}

/** Uploads bytes `from`..`to - 1` of `source` in fragments of `fragment` bytes, each acknowledged 200; returns the last Ack. */
async function sendAll(
  client: BitsClient,
  target: string,
  sessionId: string,
  source: ByteSource,
  fragment: number,
  from = 0,
  to = source.size,
): Promise<HttpResponse> {
  let offset = from;
  let last: HttpResponse | undefined;
  while (offset < to) {
    const end = Math.min(offset + fragment, to);
    last = await sendRange(client, target, sessionId, source, offset, end);
    expectAck(last, 200, { 'BITS-Received-Content-Range': String(end) }, { 'BITS-Session-Id': sessionId });
    offset = end;
  }
  if (last === undefined) throw new Error('nothing to send');
  return last;
}

/** The start of the final fragment when uploading in `fragment`-byte pieces. */
function finalStart(source: ByteSource, fragment: number): number {
  return Math.floor((source.size - 1) / fragment) * fragment;
}

/** SHA-256 of the first `length` bytes of a source. */
async function sha256OfPrefix(source: ByteSource, length: number): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of source.slice(0, length)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** SHA-256 of the first `length` bytes of a file. */
async function sha256OfFilePrefix(file: string, length: number): Promise<string> {
  const handle = await fsp.open(file, 'r');
  try {
    const hash = createHash('sha256');
    const buffer = Buffer.alloc(64 * KiB);
    for (let position = 0; position < length; ) {
      const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, length - position), position);
      if (bytesRead === 0) throw new Error(`${file} has only ${position} of ${length} bytes`);
      hash.update(buffer.subarray(0, bytesRead));
      position += bytesRead;
    }
    return hash.digest('hex');
  } finally {
    await handle.close();
  }
}

/** Session folders under the root (names). */
async function sessionFolders(root: string): Promise<string[]> {
  const entries = await fsp.readdir(path.join(root, SESSIONS)).catch(() => [] as string[]);
  return entries.sort();
}

/** Expects a `500 + BG_E_SESSION_NOT_FOUND + 0x5` Ack (§5.4, §5.6). */
function expectSessionNotFound(ack: HttpResponse, sessionId: string): void {
  expectAck(ack, 500, errorHeaders(BG_E_SESSION_NOT_FOUND), { 'BITS-Session-Id': sessionId });
}

/** A fragment written by hand, so the test decides when each part of the body leaves. */
class SlowFragment {
  readonly socket: net.Socket;
  #buffer = Buffer.alloc(0);

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
    });
    socket.on('error', () => undefined);
  }

  /** Connects and sends the head of Fragment `bytes start-(end-1)/total`; the body is up to the caller. */
  static async begin(
    port: number,
    target: string,
    sessionId: string,
    start: number,
    end: number,
    total: number,
  ): Promise<SlowFragment> {
    const socket = net.connect({ port, host: '127.0.0.1' });
    await once(socket, 'connect');
    const fragment = new SlowFragment(socket);
    await fragment.write(
      `BITS_POST ${target} HTTP/1.1\r\nBITS-Packet-Type: Fragment\r\nBITS-Session-Id: ${sessionId}\r\n` +
        `Content-Name: ${target.slice(target.lastIndexOf('/') + 1)}\r\nContent-Range: bytes ${start}-${end - 1}/${total}\r\n` +
        `User-Agent: Microsoft BITS/7.8\r\nHost: 127.0.0.1:${port}\r\nContent-Length: ${end - start}\r\n\r\n`,
    );
    return fragment;
  }

  async write(data: Buffer | string): Promise<void> {
    await new Promise<void>((resolve, reject) => this.socket.write(data, (error) => (error ? reject(error) : resolve())));
  }

  async response(timeoutMs: number): Promise<HttpResponse> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const parsed = parseResponse(this.#buffer, this.socket.destroyed);
      if (parsed !== undefined) return parsed.response;
      if (this.socket.destroyed || Date.now() > deadline) {
        throw new Error(`no Ack for the slow fragment; received ${JSON.stringify(this.#buffer.toString('latin1'))}`);
      }
      await sleep(10);
    }
  }
}

/** The bytes `start`..`end - 1` of a source in one buffer (keep it small). */
async function bytesOf(source: ByteSource, start: number, end: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of source.slice(start, end)) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------------

describe('expiry (§5.4)', () => {
  it('cleanupExpired() removes expired sessions and tombstones, keeps committed files, emits session-expired', async () => {
    const { root } = await newSandbox();
    const { middleware, port } = await startOne({
      directory: root,
      sessionTimeout: 250,
      tombstoneTimeout: 250,
      cleanupInterval: false,
    });
    const log = eventLog(middleware);
    const client = newClient(port);
    const small = patternSource('expiry-a', 100 * KiB);

    // A: uploaded and closed (a tombstone). C: uploaded, never closed. B: half uploaded.
    await client.uploadFile('/up/a.bin', small, 64 * KiB);
    const c = await client.uploadFile('/up/c.bin', patternSource('expiry-c', 70 * KiB), 64 * KiB, { close: false });
    const half = patternSource('expiry-b', 200 * KiB);
    const b = await client.openSession('/up/b.bin');
    await sendRange(client, '/up/b.bin', b, half, 0, 64 * KiB);
    expect(await sessionDataBytes(root)).toBe(64 * KiB);
    const aHash = await sha256OfFile(path.join(root, 'a.bin'));
    const cHash = await sha256OfFile(path.join(root, 'c.bin'));

    await sleep(600);
    // A's tombstone and B deleted, C turned into a tombstone.
    expect(await middleware.cleanupExpired()).toBe(3);
    expect(log.expired.map((session) => session.sessionId).sort()).toEqual([b, c.sessionId].sort());
    expect(log.expired.find((session) => session.sessionId === b)).toMatchObject({
      destination: ['b.bin'],
      urlPath: '/b.bin',
    });
    // The data of B is gone; committed files are untouched.
    expect(await sessionDataBytes(root)).toBe(0);
    expect(await sha256OfFile(path.join(root, 'a.bin'))).toBe(aHash);
    expect(await sha256OfFile(path.join(root, 'c.bin'))).toBe(cHash);
    expect(await listUploads(root)).toEqual([`a.bin ${100 * KiB}`, `c.bin ${70 * KiB}`]);

    // An expired upload in progress is unknown: the client starts over (§5.4). An expired complete
    // one is a tombstone: its late Close is still answered 200 (§15 A9).
    expectSessionNotFound(await sendRange(client, '/up/b.bin', b, half, 64 * KiB, 128 * KiB), b);
    expectSessionNotFound(await client.close('/up/b.bin', b), b);
    expectAck(await client.close('/up/c.bin', c.sessionId), 200, {}, { 'BITS-Session-Id': c.sessionId });

    // The tombstones expiry left expire too; nothing is left in the session folder.
    await sleep(600);
    expect(await middleware.cleanupExpired()).toBe(1);
    expect(await sessionFolders(root)).toEqual([]);
    expect(log.expired.map((session) => session.sessionId).sort()).toEqual([b, c.sessionId].sort());
    expect(await listUploads(root)).toEqual([`a.bin ${100 * KiB}`, `c.bin ${70 * KiB}`]);
  });

  it('an idle session is unknown to its next Fragment even when no cleanup ran', async () => {
    const { root } = await newSandbox();
    const { middleware, port } = await startOne({ directory: root, sessionTimeout: 100, cleanupInterval: false });
    const log = eventLog(middleware);
    const client = newClient(port);
    const source = patternSource('lazy-expiry', 64 * KiB);
    const id = await client.openSession('/up/lazy.bin');
    await sendRange(client, '/up/lazy.bin', id, source, 0, 16 * KiB);
    await sleep(300);
    expectSessionNotFound(await sendRange(client, '/up/lazy.bin', id, source, 16 * KiB, 32 * KiB), id);
    expect(log.expired.map((session) => session.sessionId)).toEqual([id]);
    expect(await sessionDataBytes(root)).toBe(0);
    expect(await listUploads(root)).toEqual([]);
  });

  it('the sweeper expires idle sessions on its own and spares a session that keeps making progress', async () => {
    const { root } = await newSandbox();
    const { middleware, port } = await startOne({
      directory: root,
      sessionTimeout: 400,
      tombstoneTimeout: 400,
      cleanupInterval: 25,
    });
    const log = eventLog(middleware);
    const idleClient = newClient(port);
    const busyClient = newClient(port);
    const idleSource = patternSource('sweeper-idle', 100 * KiB);
    const idle = await idleClient.openSession('/up/idle.bin');
    await sendRange(idleClient, '/up/idle.bin', idle, idleSource, 0, 32 * KiB);

    // Busy: one 16 KiB fragment every 50 ms for well over a second, three times the session timeout.
    const busySource = patternSource('sweeper-busy', 24 * 16 * KiB);
    const busy = await busyClient.openSession('/up/busy.bin');
    for (let offset = 0; offset < busySource.size; offset += 16 * KiB) {
      const ack = await sendRange(busyClient, '/up/busy.bin', busy, busySource, offset, offset + 16 * KiB);
      expectAck(ack, 200, { 'BITS-Received-Content-Range': String(offset + 16 * KiB) }, { 'BITS-Session-Id': busy });
      await sleep(50);
    }
    expectAck(await busyClient.close('/up/busy.bin', busy), 200, {}, { 'BITS-Session-Id': busy });
    expect(await sha256OfFile(path.join(root, 'busy.bin'))).toBe(await sha256OfSource(busySource));

    await waitUntil(async () => log.expired.length > 0, 5000, 'the sweeper to expire the idle session');
    expect(log.expired.map((session) => session.sessionId)).toEqual([idle]);
    await waitUntil(async () => (await sessionDataBytes(root)) === 0, 5000, 'the idle session data to be removed');
    expectSessionNotFound(await sendRange(idleClient, '/up/idle.bin', idle, idleSource, 32 * KiB, 64 * KiB), idle);
    // Tombstones go too, in time.
    await waitUntil(async () => (await sessionFolders(root)).length === 0, 5000, 'the tombstones to expire');
    expect(await listUploads(root)).toEqual([`busy.bin ${busySource.size}`]);
  });

  it('a fragment that trickles in for longer than sessionTimeout is not expired under it', async () => {
    const { root } = await newSandbox();
    const { middleware, port } = await startOne({
      directory: root,
      sessionTimeout: 300,
      tombstoneTimeout: 300,
      cleanupInterval: 25,
    });
    const log = eventLog(middleware);
    const client = newClient(port);
    const source = patternSource('trickle', 256 * KiB);
    const target = '/up/trickle.bin';
    const id = await client.openSession(target);
    const body = await bytesOf(source, 0, source.size);
    const slow = await SlowFragment.begin(port, target, id, 0, source.size, source.size);
    // One fragment in 16 pieces 80 ms apart: over four times the session timeout while the sweeper runs.
    for (let piece = 0; piece < 16; piece++) {
      await slow.write(body.subarray(piece * 16 * KiB, (piece + 1) * 16 * KiB));
      await sleep(80);
    }
    const ack = await slow.response(5000);
    slow.socket.destroy();
    expectAck(ack, 200, { 'BITS-Received-Content-Range': String(source.size) }, { 'BITS-Session-Id': id });
    expect(log.expired).toEqual([]);
    expect(log.completed.map((upload) => upload.sessionId)).toEqual([id]);
    expectAck(await client.close(target, id), 200, {}, { 'BITS-Session-Id': id });
    expect(await sha256OfFile(path.join(root, 'trickle.bin'))).toBe(await sha256OfSource(source));
  });
});

describe('start-up reconciliation', () => {
  it('removes orphans a crash left behind and keeps good sessions resumable', async () => {
    const { root } = await newSandbox();
    const sessions = path.join(root, SESSIONS);
    const goodSource = patternSource('reconcile-good', 300 * KiB);
    let good: string;
    let closed: string;
    {
      const { middleware, port } = await startOne({ directory: root });
      const client = newClient(port);
      good = await client.openSession('/up/good.bin');
      await sendRange(client, '/up/good.bin', good, goodSource, 0, 100 * KiB);
      closed = (await client.uploadFile('/up/closed.bin', patternSource('reconcile-closed', 10 * KiB), 8 * KiB)).sessionId;
      client.dispose();
      await middleware.close({ timeout: 2000 });
      await running?.server.close();
      running = undefined;
    }
    const goodRecord = await readStoredRecord(path.join(sessions, good, 'record.json'));

    // A crash tail: the client's next bytes, written before a crash and never acknowledged. The data
    // file is the durable offset, so they count: the client is told and sends from after them.
    const tail = 5000;
    await fsp.appendFile(path.join(sessions, good, 'data'), await patternBytes('reconcile-good', 100 * KiB, 100 * KiB + tail));
    // A record replacement that never finished.
    await fsp.writeFile(path.join(sessions, good, 'record.json.tmp'), '{"version":1,"id":"half-writ');
    // Orphans: data without a record, a corrupt record, a record without data.
    const dataOnly = '{0D0D0D0D-0000-4000-8000-000000000001}';
    const corrupt = '{0D0D0D0D-0000-4000-8000-000000000002}';
    const noData = '{0D0D0D0D-0000-4000-8000-000000000003}';
    await fsp.mkdir(path.join(sessions, dataOnly));
    await fsp.writeFile(path.join(sessions, dataOnly, 'data'), Buffer.alloc(70 * KiB, 1));
    await fsp.mkdir(path.join(sessions, corrupt));
    await fsp.writeFile(path.join(sessions, corrupt, 'record.json'), '{"version":1,"id":"{0D0D0D0D-0000-4000-80');
    await fsp.writeFile(path.join(sessions, corrupt, 'data'), Buffer.alloc(30 * KiB, 2));
    await fsp.mkdir(path.join(sessions, noData));
    await fsp.writeFile(
      path.join(sessions, noData, 'record.json'),
      `${JSON.stringify({
        ...goodRecord,
        id: noData,
        destination: ['nodata.bin'],
        urlPath: '/nodata.bin',
        totalLength: 60 * KiB,
        receivedLength: 50 * KiB,
      })}\n`,
    );

    const { middleware, port, recovery } = await startOne({ directory: root });
    // Removed: the two orphan folders and the half-written record; repaired: the record without data.
    expect(recovery).toEqual({ orphansRemoved: 3, recordsRepaired: 1, commitsFinished: 0 });
    const log = eventLog(middleware);
    const folders = await sessionFolders(root);
    expect(folders).not.toContain(dataOnly);
    expect(folders).not.toContain(corrupt);
    expect(folders).toContain(good);
    // The crash tail is kept (the client's own bytes at their offsets); the half-written record is gone.
    expect((await fsp.stat(path.join(sessions, good, 'data'))).size).toBe(100 * KiB + tail);
    expect(await exists(path.join(sessions, good, 'record.json.tmp'))).toBe(false);
    const client = newClient(port);

    // The record without data vouches for bytes nobody holds: it is gone, or reports none of them.
    const noDataSource = patternSource('reconcile-nodata', 60 * KiB);
    const probe = await sendRange(client, '/up/nodata.bin', noData, noDataSource, 50 * KiB, 60 * KiB);
    if (probe.status === 500) expectSessionNotFound(probe, noData);
    else expectAck(probe, 416, { 'BITS-Received-Content-Range': '0' }, { 'BITS-Session-Id': noData });

    // The good session resumes exactly at its durable offset: a gap probe reveals it.
    const gap = await sendRange(client, '/up/good.bin', good, goodSource, 200 * KiB, 300 * KiB);
    expectAck(gap, 416, { 'BITS-Received-Content-Range': String(100 * KiB + tail) }, { 'BITS-Session-Id': good });
    await sendAll(client, '/up/good.bin', good, goodSource, 64 * KiB, 100 * KiB + tail);
    expect(await sha256OfFile(path.join(root, 'good.bin'))).toBe(await sha256OfSource(goodSource));
    expect(log.completed.map((upload) => [upload.sessionId, upload.sha256])).toEqual([[good, await sha256OfSource(goodSource)]]);
    expectAck(await client.close('/up/good.bin', good), 200, {}, { 'BITS-Session-Id': good });
    // The tombstone of the closed session still answers a repeated Close (§5.4).
    expectAck(await client.close('/up/closed.bin', closed), 200, {}, { 'BITS-Session-Id': closed });
    expect(await listUploads(root)).toEqual([`closed.bin ${10 * KiB}`, `good.bin ${300 * KiB}`]);
    expect(await sessionDataBytes(root)).toBe(0);
  });
});

describe('disk full (ENOSPC on a 4 MiB tmpfs)', () => {
  let mounted: string | undefined;

  afterEach(async () => {
    // Servers first (afterEach above runs after this one): unmount lazily if files are still open.
    if (mounted !== undefined) {
      if (running !== undefined) {
        await Promise.all(running.endpoints.map((endpoint) => endpoint.middleware.close({ timeout: 2000 }).catch(() => undefined)));
        await running.server.close();
        running = undefined;
      }
      unmountTmpfs(mounted);
      mounted = undefined;
    }
  });

  it('answers 500 + ERROR_DISK_FULL, never acknowledges unwritten bytes, commits nothing, and other sessions keep working', async () => {
    const { dir, root } = await newSandbox();
    const small = path.join(dir, 'small');
    await fsp.mkdir(small);
    mountTmpfs(small, '4m');
    mounted = small;

    const full = bitsUpload({ directory: small });
    const roomy = bitsUpload({ directory: root });
    const { server } = await serveEndpoints([
      { middleware: full, mount: '/small' },
      { middleware: roomy, mount: '/big' },
    ]);
    await Promise.all([full.ready(), roomy.ready()]);
    const log = eventLog(full);
    const client = newClient(server.port);

    const source = patternSource('disk-full', 6 * MiB);
    const target = '/small/six.bin';
    const id = await client.openSession(target);
    let acked = 0;
    let refused: HttpResponse | undefined;
    while (acked < source.size) {
      const end = Math.min(acked + MiB, source.size);
      const ack = await sendRange(client, target, id, source, acked, end);
      if (ack.status !== 200) {
        refused = ack;
        break;
      }
      expectAck(ack, 200, { 'BITS-Received-Content-Range': String(end) }, { 'BITS-Session-Id': id });
      acked = end;
    }
    if (refused === undefined) throw new Error('6 MiB fitted on a 4 MiB tmpfs');
    expect(acked).toBeGreaterThanOrEqual(2 * MiB);
    expect(acked).toBeLessThan(4 * MiB);
    expectAck(refused, 500, errorHeaders(ERROR_DISK_FULL), { 'BITS-Session-Id': id });
    expect(log.failed.some((failure) => failure.sessionId === id)).toBe(true);

    // The durable offset: at least what was acknowledged, and every byte it vouches for is on disk
    // and correct (§6.3: never report bytes that were not written).
    const probe = await sendRange(client, target, id, source, source.size - 1, source.size);
    expect(probe.status).toBe(416);
    const durable = receivedOffset(probe);
    expect(durable).toBeGreaterThanOrEqual(acked);
    expect(durable).toBeLessThan(4 * MiB);
    const dataFile = path.join(small, SESSIONS, id, 'data');
    expect((await fsp.stat(dataFile)).size).toBeGreaterThanOrEqual(durable);
    expect(await sha256OfFilePrefix(dataFile, durable)).toBe(await sha256OfPrefix(source, durable));

    // Still full: the retry is refused the same way, and the offset does not move past the disk.
    const retry = await sendRange(client, target, id, source, durable, Math.min(durable + MiB, source.size));
    expectAck(retry, 500, errorHeaders(ERROR_DISK_FULL), { 'BITS-Session-Id': id });
    const again = await sendRange(client, target, id, source, source.size - 1, source.size);
    expect(again.status).toBe(416);
    expect(receivedOffset(again)).toBeLessThan(4 * MiB);
    expect(receivedOffset(again)).toBeGreaterThanOrEqual(durable);
    expect(await listUploads(small)).toEqual([]);
    expect(log.completed).toEqual([]);

    // Another endpoint on a disk with room is not affected.
    const other = patternSource('disk-full-other', 2 * MiB + 17);
    await client.uploadFile('/big/other.bin', other, MiB);
    expect(await sha256OfFile(path.join(root, 'other.bin'))).toBe(await sha256OfSource(other));

    // Cancelling the stuck upload frees the space; a small upload then fits on the small disk.
    expectAck(await client.cancel(target, id), 200, {}, { 'BITS-Session-Id': id });
    const fits = patternSource('disk-full-fits', 256 * KiB + 3);
    await client.uploadFile('/small/fits.bin', fits, 100 * KiB);
    expect(await sha256OfFile(path.join(small, 'fits.bin'))).toBe(await sha256OfSource(fits));
    expect(await listUploads(small)).toEqual([`fits.bin ${fits.size}`]);
    expect(await sessionDataBytes(small)).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------
// Principals: the test header X-Test-User

const byTestUser = (req: IncomingMessage): string | undefined => {
  const value = req.headers['x-test-user'];
  return typeof value === 'string' ? value : undefined;
};

/** Packets sent as a user (X-Test-User), or as nobody. */
class UserClient {
  constructor(
    readonly client: BitsClient,
    readonly user: string | undefined,
  ) {}

  get headers(): HeaderList {
    return this.user === undefined ? [] : [['X-Test-User', this.user]];
  }

  createSession(target: string): Promise<HttpResponse> {
    return this.client.packet({ target, packetType: 'Create-Session', supportedProtocols: BITS_PROTOCOL, headers: this.headers });
  }

  async openSession(target: string): Promise<string> {
    const ack = await this.createSession(target);
    const id = ack.headers['bits-session-id'];
    if (ack.status !== 200 || id === undefined) {
      throw new Error(`Create-Session of ${target} for ${this.user ?? 'nobody'} failed: ${ack.status} ${JSON.stringify(ack.headers)}`);
    }
    return id;
  }

  fragment(target: string, id: string, source: ByteSource, start: number, end: number): Promise<HttpResponse> {
    return sendRange(this.client, target, id, source, start, end, this.headers);
  }

  close(target: string, id: string): Promise<HttpResponse> {
    return this.client.packet({ target, packetType: 'Close-Session', sessionId: id, headers: this.headers });
  }

  cancel(target: string, id: string): Promise<HttpResponse> {
    return this.client.packet({ target, packetType: 'Cancel-Session', sessionId: id, headers: this.headers });
  }
}

describe('session quotas (§5.4)', () => {
  it('maxSessionsPerPrincipal: a third session of one user gets 503 + ERROR_TOO_MANY_SESS; Close and Cancel free slots', async () => {
    const { root } = await newSandbox();
    const { port } = await startOne({ directory: root, maxSessionsPerPrincipal: 2, principal: byTestUser });
    const alice = new UserClient(newClient(port), 'alice');
    const bob = new UserClient(newClient(port), 'bob');

    const first = await alice.openSession('/up/a1.bin');
    const second = await alice.openSession('/up/a2.bin');
    expectAck(await alice.createSession('/up/a3.bin'), 503, errorHeaders(ERROR_TOO_MANY_SESS));
    // Another principal has slots of its own.
    const bobs = await bob.openSession('/up/b1.bin');
    expect(new Set([first, second, bobs]).size).toBe(3);

    expectAck(await alice.close('/up/a1.bin', first), 200, {}, { 'BITS-Session-Id': first });
    const third = await alice.openSession('/up/a3.bin');
    expectAck(await alice.createSession('/up/a4.bin'), 503, errorHeaders(ERROR_TOO_MANY_SESS));
    expectAck(await alice.cancel('/up/a2.bin', second), 200, {}, { 'BITS-Session-Id': second });
    const fourth = await alice.openSession('/up/a4.bin');
    expectAck(await alice.createSession('/up/a5.bin'), 503, errorHeaders(ERROR_TOO_MANY_SESS));

    // The sessions that hold slots still work.
    const source = patternSource('quota-upload', 40 * KiB);
    for (const [target, id] of [
      ['/up/a3.bin', third],
      ['/up/a4.bin', fourth],
    ] as const) {
      const ack = await alice.fragment(target, id, source, 0, source.size);
      expectAck(ack, 200, { 'BITS-Received-Content-Range': String(source.size) }, { 'BITS-Session-Id': id });
    }
    expect(await listUploads(root)).toEqual([`a3.bin ${source.size}`, `a4.bin ${source.size}`]);
  });

  it('maxSessions: the server-wide limit refuses the next session of anyone with 503 until one ends', async () => {
    const { root } = await newSandbox();
    const { port } = await startOne({ directory: root, maxSessions: 3, principal: byTestUser });
    const users = ['ann', 'ben', 'cat', 'dan'].map((user) => new UserClient(newClient(port), user));
    const ids: string[] = [];
    for (const user of users.slice(0, 3)) ids.push(await user.openSession(`/up/${user.user ?? 'x'}.bin`));
    const refused = await users[3].createSession('/up/dan.bin');
    expect(refused.status).toBe(503);
    expect(refused.headers['bits-error-code']).toMatch(/^0x[0-9A-F]{8}$/);
    expect(refused.headers['bits-error-context']).toBe('0x5');
    expect(refused.headers['bits-session-id']).toBeUndefined();

    expectAck(await users[1].close('/up/ben.bin', ids[1]), 200, {}, { 'BITS-Session-Id': ids[1] });
    await users[3].openSession('/up/dan.bin');
    expect((await users[1].createSession('/up/ben2.bin')).status).toBe(503);
  });

  it('an expired session holds no slot, even before any cleanup ran', async () => {
    const { root } = await newSandbox();
    const { port } = await startOne({
      directory: root,
      maxSessions: 1,
      maxSessionsPerPrincipal: 1,
      sessionTimeout: 150,
      cleanupInterval: false,
      principal: byTestUser,
    });
    const alice = new UserClient(newClient(port), 'alice');
    const bob = new UserClient(newClient(port), 'bob');
    const first = await alice.openSession('/up/first.bin');
    expectAck(await alice.createSession('/up/second.bin'), 503, errorHeaders(ERROR_TOO_MANY_SESS));
    expectAck(await bob.createSession('/up/bob.bin'), 503, errorHeaders(ERROR_TOO_MANY_SESS));
    await sleep(400);
    // Idle past sessionTimeout: expired, so neither limit counts it any more (the option says
    // "open sessions (not closed, cancelled or expired)").
    const second = await alice.openSession('/up/second.bin');
    expect(second).not.toBe(first);
  });

  it('the limits count the sessions a previous process left open (child process, restart)', async () => {
    const { root } = await newSandbox();
    const env = {
      BITS_OPTIONS: JSON.stringify({ maxSessionsPerPrincipal: 2 }),
      BITS_PRINCIPAL_HEADER: 'x-test-user',
    };
    let server = await ChildServer.start({ dir: root, env });
    let alice = new UserClient(newClient(server.port), 'alice');
    const first = await alice.openSession('/a1.bin');
    await alice.openSession('/a2.bin');
    await server.kill('SIGKILL');
    server = await ChildServer.start({ dir: root, env });
    alice = new UserClient(newClient(server.port), 'alice');
    expectAck(await alice.createSession('/a3.bin'), 503, errorHeaders(ERROR_TOO_MANY_SESS));
    expectAck(await alice.close('/a1.bin', first), 200, {}, { 'BITS-Session-Id': first });
    await alice.openSession('/a3.bin');
    expectAck(await alice.createSession('/a4.bin'), 503, errorHeaders(ERROR_TOO_MANY_SESS));
  }, 30_000);
});

describe('binding to the principal (§5.6)', () => {
  it('a session used by another principal, or by nobody, is unknown; its owner carries on', async () => {
    const { root } = await newSandbox();
    const { middleware, port } = await startOne({ directory: root, principal: byTestUser });
    const log = eventLog(middleware);
    const alice = new UserClient(newClient(port), 'alice');
    const bob = new UserClient(newClient(port), 'bob');
    const nobody = new UserClient(newClient(port), undefined);
    const source = patternSource('binding', 150 * KiB);
    const target = '/up/alice.bin';

    const id = await alice.openSession(target);
    expect(log.created.map((session) => [session.sessionId, session.principal])).toEqual([[id, 'alice']]);
    expectAck(
      await alice.fragment(target, id, source, 0, 50 * KiB),
      200,
      { 'BITS-Received-Content-Range': String(50 * KiB) },
      { 'BITS-Session-Id': id },
    );
    expectSessionNotFound(await bob.fragment(target, id, source, 50 * KiB, 100 * KiB), id);
    expectSessionNotFound(await nobody.fragment(target, id, source, 50 * KiB, 100 * KiB), id);
    expectSessionNotFound(await bob.close(target, id), id);
    expectSessionNotFound(await bob.cancel(target, id), id);

    // Nothing of theirs was stored and the session is still alice's.
    expectAck(
      await alice.fragment(target, id, source, 50 * KiB, 100 * KiB),
      200,
      { 'BITS-Received-Content-Range': String(100 * KiB) },
      { 'BITS-Session-Id': id },
    );
    expectAck(
      await alice.fragment(target, id, source, 100 * KiB, 150 * KiB),
      200,
      { 'BITS-Received-Content-Range': String(150 * KiB) },
      { 'BITS-Session-Id': id },
    );
    // The upload is complete: still not bob's to close.
    expectSessionNotFound(await bob.close(target, id), id);
    expectAck(await alice.close(target, id), 200, {}, { 'BITS-Session-Id': id });
    expect(await sha256OfFile(path.join(root, 'alice.bin'))).toBe(await sha256OfSource(source));
    expect(log.completed.map((upload) => [upload.sessionId, upload.principal])).toEqual([[id, 'alice']]);
  });
});

describe('completion is delivered exactly once (§5.2, §6.4)', () => {
  it('a final fragment retransmitted three times: one onUploadComplete call, one upload-completed, the right SHA-256', async () => {
    const { root } = await newSandbox();
    const calls: CompletedUpload[] = [];
    const { middleware, port } = await startOne({
      directory: root,
      onUploadComplete: (upload) => {
        calls.push(upload);
      },
    });
    const log = eventLog(middleware);
    const client = newClient(port);
    const source = patternSource('once', 300 * KiB + 7);
    const target = '/up/once/file.bin';
    const { sessionId } = await client.uploadFile(target, source, 128 * KiB, { close: false });
    const expected = await sha256OfSource(source);
    const start = finalStart(source, 128 * KiB);
    for (let i = 0; i < 3; i++) {
      const ack = await sendRange(client, target, sessionId, source, start, source.size);
      expectAck(ack, 200, { 'BITS-Received-Content-Range': String(source.size) }, { 'BITS-Session-Id': sessionId });
    }
    expectAck(await client.close(target, sessionId), 200, {}, { 'BITS-Session-Id': sessionId });
    expect(calls).toHaveLength(1);
    expect(log.completed).toHaveLength(1);
    const expectedUpload = {
      sessionId,
      destination: ['once', 'file.bin'],
      urlPath: '/once/file.bin',
      principal: expect.anything() as unknown,
      size: source.size,
      sha256: expected,
    };
    expect(log.completed[0]).toMatchObject(expectedUpload);
    expect(calls[0]).toMatchObject(expectedUpload);
    expect(await sha256OfFile(path.join(root, 'once', 'file.bin'))).toBe(expected);
  });

  it('onUploadComplete throwing once: error Ack with context 0x7, the resend calls it again, one upload-completed', async () => {
    const { root } = await newSandbox();
    let calls = 0;
    const { middleware, port } = await startOne({
      directory: root,
      onUploadComplete: async () => {
        calls += 1;
        await sleep(5);
        if (calls === 1) throw Object.assign(new Error('the application is busy'), { status: 503 });
      },
    });
    const log = eventLog(middleware);
    const client = newClient(port);
    const source = patternSource('hook-throws', 200 * KiB + 1);
    const target = '/up/hook.bin';
    const id = await client.openSession(target);
    const start = finalStart(source, 64 * KiB);
    await sendAll(client, target, id, source, 64 * KiB, 0, start);
    const first = await sendRange(client, target, id, source, start, source.size);
    // The application's failure: its status, context 0x7 (BG_ERROR_CONTEXT_REMOTE_APPLICATION, §8.4).
    expect(first.status).toBe(503);
    expect(first.headers['bits-error-code']).toMatch(/^0x[0-9A-F]{8}$/);
    expect(first.headers['bits-error-context']).toBe('0x7');
    expect(calls).toBe(1);
    expect(log.failed.filter((failure) => failure.sessionId === id).length).toBeGreaterThanOrEqual(1);
    expect(log.completed).toHaveLength(0);
    // The file is in place already (the hook runs after the commit, §10.2).
    expect(await sha256OfFile(path.join(root, 'hook.bin'))).toBe(await sha256OfSource(source));

    // Replay the final fragment: the hook runs again, succeeds, and the Ack is the final one.
    const second = await sendRange(client, target, id, source, start, source.size);
    expectAck(second, 200, { 'BITS-Received-Content-Range': String(source.size) }, { 'BITS-Session-Id': id });
    expect(calls).toBe(2);
    expect(log.completed).toHaveLength(1);
    expect(log.completed[0]).toMatchObject({ sessionId: id, size: source.size, sha256: await sha256OfSource(source) });
    const third = await sendRange(client, target, id, source, start, source.size);
    expectAck(third, 200, { 'BITS-Received-Content-Range': String(source.size) }, { 'BITS-Session-Id': id });
    expect(calls).toBe(2);
    expect(log.completed).toHaveLength(1);
    expect(await sha256OfFile(path.join(root, 'hook.bin'))).toBe(await sha256OfSource(source));
  });

  it('killed right after the final Ack: the restarted server answers the resent final fragment without a second notification', async () => {
    const { dir, root } = await newSandbox();
    const hookLog = path.join(dir, 'hook.log');
    const env = { BITS_HOOK_LOG: hookLog };
    const source = patternSource('hook-restart', MiB + 5);
    const target = '/restart.bin';
    let server = await ChildServer.start({ dir: root, env });
    let client = newClient(server.port);
    const { sessionId } = await client.uploadFile(target, source, 512 * KiB, { close: false });
    const lines = async (): Promise<string[]> => (await fsp.readFile(hookLog, 'utf8')).split('\n').filter((line) => line !== '');
    expect(await lines()).toHaveLength(1);

    client.dispose();
    expect((await server.kill('SIGKILL')).signal).toBe('SIGKILL');
    server = await ChildServer.start({ dir: root, env });
    client = newClient(server.port);
    const ack = await sendRange(client, target, sessionId, source, finalStart(source, 512 * KiB), source.size);
    expectAck(ack, 200, { 'BITS-Received-Content-Range': String(source.size) }, { 'BITS-Session-Id': sessionId });
    expectAck(await client.close(target, sessionId), 200, {}, { 'BITS-Session-Id': sessionId });

    const expected = await sha256OfSource(source);
    const written = (await lines()).map((line) => JSON.parse(line) as { sessionId: string; sha256: string; size: number });
    expect(written).toEqual([{ sessionId, sha256: expected, size: source.size }]);
    expect(server.events('upload-completed')).toEqual([]);
    expect(await sha256OfFile(path.join(root, 'restart.bin'))).toBe(expected);
  }, 60_000);
});

describe('graceful shutdown of the standalone server', () => {
  it('SIGTERM: the in-flight fragment is stored and acknowledged, new sessions get 503, the process exits 0', async () => {
    const { root } = await newSandbox();
    const source = patternSource('shutdown', 3 * MiB);
    const target = '/slow.bin';
    const server = await ChildServer.start({ dir: root, program: 'cli' });
    const client = newClient(server.port);
    const id = await client.openSession(target);

    // Another session, open before the shutdown, sends its fragment while the server drains.
    const otherSource = patternSource('shutdown-other', 100 * KiB);
    const otherId = await client.openSession('/other.bin');

    const slow = await SlowFragment.begin(server.port, target, id, 0, 2 * MiB, source.size);
    const whole = await bytesOf(source, 0, 2 * MiB);
    await slow.write(whole.subarray(0, 512 * KiB));
    const dataFile = path.join(root, SESSIONS, id, 'data');
    await waitUntil(
      async () => ((await fsp.stat(dataFile).catch(() => undefined))?.size ?? 0) >= 512 * KiB,
      5000,
      'the server to store the first part of the in-flight fragment',
    );

    const signalledAt = Date.now();
    server.child.kill('SIGTERM');
    await sleep(300);
    expect(server.exitStatus).toBeUndefined();

    // A new session while shutting down: refused with 503 (transient, §9.2), not a dropped connection.
    const latecomer = newClient(server.port);
    const refused = await latecomer.createSession('/late.bin').catch((error: unknown) => {
      throw new Error(`Create-Session during the shutdown got no Ack (${String(error)}); expected 503\n${server.describe()}`);
    });
    expect(refused.status).toBe(503);
    expect(refused.headers['bits-session-id']).toBeUndefined();
    expect(refused.headers['bits-error-code']).toMatch(/^0x[0-9A-F]{8}$/);

    // Packets of sessions that exist are still served while packets are in flight.
    const other = await sendRange(newClient(server.port), '/other.bin', otherId, otherSource, 0, otherSource.size);
    expectAck(other, 200, { 'BITS-Received-Content-Range': String(otherSource.size) }, { 'BITS-Session-Id': otherId });

    // The slow client finishes its fragment in pieces; it is stored and acknowledged.
    for (let offset = 512 * KiB; offset < whole.length; offset += 384 * KiB) {
      await slow.write(whole.subarray(offset, Math.min(offset + 384 * KiB, whole.length)));
      await sleep(40);
    }
    const ack = await slow.response(10_000);
    checkAck(ack);
    expectAck(ack, 200, { 'BITS-Received-Content-Range': String(2 * MiB) }, { 'BITS-Session-Id': id });
    slow.socket.destroy();

    let timer: NodeJS.Timeout | undefined;
    const status = await Promise.race([
      server.exited,
      new Promise<undefined>((resolve) => {
        timer = setTimeout(resolve, 15_000, undefined);
      }),
    ]);
    clearTimeout(timer);
    if (status === undefined) throw new Error(`the server did not exit within 15 s of SIGTERM\n${server.describe()}`);
    expect(status).toEqual({ code: 0, signal: null });
    expect(Date.now() - signalledAt).toBeLessThan(15_000);

    // The acknowledged bytes are there for the next process; the upload finishes on it.
    const next = await ChildServer.start({ dir: root, program: 'cli' });
    const resumed = newClient(next.port);
    const last = await sendRange(resumed, target, id, source, 2 * MiB, source.size);
    expectAck(last, 200, { 'BITS-Received-Content-Range': String(source.size) }, { 'BITS-Session-Id': id });
    expectAck(await resumed.close(target, id), 200, {}, { 'BITS-Session-Id': id });
    expect(await sha256OfFile(path.join(root, 'slow.bin'))).toBe(await sha256OfSource(source));
    expect(await exists(path.join(root, 'late.bin'))).toBe(false);
    expect(await sha256OfFile(path.join(root, 'other.bin'))).toBe(await sha256OfSource(otherSource));
    // Nothing receives completed uploads in the standalone server: no SHA-256 computed or recorded.
    for (const session of [id, otherId]) {
      expect(await readStoredRecord(path.join(root, SESSIONS, session, 'record.json'))).toMatchObject({ sha256: null });
    }
  }, 60_000);
});
