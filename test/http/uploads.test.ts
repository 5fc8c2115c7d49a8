/**
 * Whole uploads over real sockets (bits-protocol.md §6): file sizes from 0 B to 20 MiB, fragment
 * sizes that do not divide them, retransmits, overlaps carrying different bytes, gaps and resync
 * after 416, 413 and smaller fragments, a fragment cut off mid-body and resumed on a new
 * connection, one keep-alive connection for a whole session, and one connection per packet.
 * The file on disk is compared with the source by SHA-256.
 */
import { promises as fsp } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import path from 'node:path';
import express from 'express';
import { bitsUpload } from '../../lib/middleware';
import type { BitsUploadOptions } from '../../lib/options';
import {
  BitsClient,
  patternBytes,
  patternSource,
  receivedOffset,
  sha256OfFile,
  sha256OfSource,
  writeSourceToFile,
  type ConnectionMode,
} from '../helpers/bits-client';
import {
  expectAck,
  listUploads,
  serve,
  sessionDataBytes,
  useServerTest,
  waitUntil,
  type RunningServer,
} from './support';

const KiB = 1024;
const MiB = 1024 * KiB;

const env = useServerTest();
/** Sockets the app saw requests on. */
let sockets: Set<Socket>;

beforeEach(async () => {
  sockets = new Set();
});

async function start(
  options: Omit<BitsUploadOptions, 'directory' | 'storage'> = {},
  via: 'listen' | 'createBitsServer' = 'listen',
): Promise<RunningServer> {
  const app = express();
  app.use((req: IncomingMessage, _res, next) => {
    sockets.add(req.socket);
    next();
  });
  app.use('/uploads', bitsUpload({ directory: env.sandbox.root, ...options }));
  env.running = await serve(app, via);
  return env.running;
}

function client(connection: ConnectionMode = 'keep-alive'): BitsClient {
  if (env.running === undefined) throw new Error('server not started');
  const made = new BitsClient(env.running.port, { connection });
  env.clients.push(made);
  return made;
}

function onDisk(name: string): string {
  return path.join(env.sandbox.root, name);
}

describe('file sizes and fragment sizes', () => {
  test.each([
    { size: 0, fragment: 1024, mode: 'keep-alive' },
    { size: 1, fragment: 1024, mode: 'keep-alive' },
    { size: 1, fragment: 1, mode: 'per-packet' },
    { size: 7, fragment: 2, mode: 'per-packet' },
    { size: 4095, fragment: 1024, mode: 'keep-alive' },
    { size: 65_537, fragment: 4096, mode: 'keep-alive' },
    { size: MiB + 1, fragment: 256 * KiB, mode: 'keep-alive' },
    { size: 3 * MiB - 7, fragment: 700_001, mode: 'per-packet' },
  ] as const)('$size B in fragments of $fragment B ($mode)', async ({ size, fragment, mode }) => {
    await start();
    const bits = client(mode);
    const source = patternSource(`size-${size}`, size);
    const result = await bits.uploadFile('/uploads/file.bin', source, fragment);
    const expectedFragments = Math.max(1, Math.ceil(size / fragment));
    expect(result.fragmentAcks.map((ack) => ack.status)).toEqual(Array<number>(expectedFragments).fill(200));
    expect(result.offsets).toEqual(
      Array.from({ length: expectedFragments }, (_, i) => Math.min(size, (i + 1) * fragment)),
    );
    if (result.closeAck === undefined) throw new Error('no Close-Session Ack');
    expectAck(result.closeAck, 200, { 'BITS-Session-Id': result.sessionId });
    expect(await listUploads(env.sandbox.root)).toEqual([`file.bin ${size}`]);
    expect(await sha256OfFile(onDisk('file.bin'))).toBe(await sha256OfSource(source));
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    const packets = expectedFragments + 2;
    expect(env.running?.connections()).toBe(mode === 'keep-alive' ? 1 : packets);
  });

  test('20 MiB + 12 345 B in 3 MiB fragments, streamed from the generator (no copy in memory or on disk)', async () => {
    await start();
    const size = 20 * MiB + 12_345;
    const source = patternSource('twenty', size);
    const bits = client();
    const result = await bits.uploadFile('/uploads/big/twenty.bin', source, 3 * MiB);
    expect(result.offsets).toEqual([3, 6, 9, 12, 15, 18].map((n) => n * MiB).concat(size));
    expect(result.fragmentAcks.every((ack) => ack.status === 200)).toBe(true);
    expect((await fsp.stat(onDisk('big/twenty.bin'))).size).toBe(size);
    expect(await sha256OfFile(onDisk('big/twenty.bin'))).toBe(await sha256OfSource(source));
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    expect(env.running?.connections()).toBe(1);
  }, 60_000);

  test('the source given as a file path (2.5 MiB in 1 MiB fragments)', async () => {
    await start();
    const sourceFile = path.join(env.sandbox.dir, 'source.bin');
    const expected = await writeSourceToFile(patternSource('from-file', 2.5 * MiB), sourceFile);
    const result = await client().uploadFile('/uploads/from-file.bin', sourceFile, MiB);
    expect(result.offsets).toEqual([MiB, 2 * MiB, 2.5 * MiB]);
    expect(await sha256OfFile(onDisk('from-file.bin'))).toBe(expected);
  });

  test('4 MiB straight from the generator, over createBitsServer(app)', async () => {
    await start({}, 'createBitsServer');
    const source = patternSource('generator', 4 * MiB + 3);
    const result = await client().uploadFile('/uploads/gen.bin', source, MiB);
    expect(result.offsets).toEqual([MiB, 2 * MiB, 3 * MiB, 4 * MiB, 4 * MiB + 3]);
    expect(await sha256OfFile(onDisk('gen.bin'))).toBe(await sha256OfSource(source));
  });
});

describe('retransmits, overlaps and gaps', () => {
  test('the same fragment sent twice (lost Ack): 200, R unchanged, file exact', async () => {
    await start();
    const bits = client();
    const size = 600 * KiB + 5;
    const source = patternSource('retransmit', size);
    const sid = await bits.openSession('/uploads/r.bin');
    const send = (start: number, end: number) =>
      bits.fragment('/uploads/r.bin', sid, start, end - 1, size, source.slice(start, end), { contentLength: end - start });
    expect(receivedOffset(await send(0, 200 * KiB))).toBe(200 * KiB);
    expect(receivedOffset(await send(200 * KiB, 400 * KiB))).toBe(400 * KiB);
    const again = await send(200 * KiB, 400 * KiB);
    expectAck(again, 200, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': String(400 * KiB) });
    expect(await sessionDataBytes(env.sandbox.root)).toBe(400 * KiB);
    expect(receivedOffset(await send(400 * KiB, size))).toBe(size);
    // The final fragment once more after completion.
    expectAck(await send(400 * KiB, size), 200, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': String(size) });
    expectAck(await bits.close('/uploads/r.bin', sid), 200, { 'BITS-Session-Id': sid });
    expect(await sha256OfFile(onDisk('r.bin'))).toBe(await sha256OfSource(source));
  });

  test('an overlap carrying different bytes: the server keeps the bytes it already held (§6.3 B)', async () => {
    await start();
    const bits = client();
    const sid = await bits.openSession('/uploads/o.bin');
    const b = (text: string): Buffer => Buffer.from(text, 'latin1');
    expect(receivedOffset(await bits.fragment('/uploads/o.bin', sid, 0, 5, 10, b('012345')))).toBe(6);
    // Bytes 3-5 differ from what is held; only 6-9 are new.
    expect(receivedOffset(await bits.fragment('/uploads/o.bin', sid, 3, 9, 10, b('XYZ6789')))).toBe(10);
    expect(await fsp.readFile(onDisk('o.bin'), 'latin1')).toBe('0123456789');
  });

  test('large overlaps and full duplicates with different bytes never replace held bytes', async () => {
    await start();
    const bits = client();
    const size = 2 * MiB;
    const good = patternSource('held', size);
    const other = patternSource('impostor', size);
    const sid = await bits.openSession('/uploads/big-overlap.bin');
    const send = (src: typeof good, start: number, end: number) =>
      bits.fragment('/uploads/big-overlap.bin', sid, start, end - 1, size, src.slice(start, end), {
        contentLength: end - start,
      });
    expect(receivedOffset(await send(good, 0, 700 * KiB))).toBe(700 * KiB);
    // Full duplicate of held bytes, different content: nothing written.
    expect(receivedOffset(await send(other, 100 * KiB, 600 * KiB))).toBe(700 * KiB);
    // Overlap: 500-700 KiB held (impostor bytes there must be skipped), 700-1200 KiB new.
    const overlap = await bits.fragment(
      '/uploads/big-overlap.bin',
      sid,
      500 * KiB,
      1200 * KiB - 1,
      size,
      Buffer.concat([await patternBytes('impostor', 500 * KiB, 700 * KiB), await patternBytes('held', 700 * KiB, 1200 * KiB)]),
    );
    expect(receivedOffset(overlap)).toBe(1200 * KiB);
    expect(receivedOffset(await send(good, 1200 * KiB, size))).toBe(size);
    expect(await sha256OfFile(onDisk('big-overlap.bin'))).toBe(await sha256OfSource(good));
  });

  test('gaps: 416 carries R, the client resumes from it (also as the very first fragment)', async () => {
    await start();
    const bits = client();
    const size = MiB + 100;
    const source = patternSource('gaps', size);
    const sid = await bits.openSession('/uploads/g.bin');
    const send = (start: number, end: number) =>
      bits.fragment('/uploads/g.bin', sid, start, end - 1, size, source.slice(start, end), { contentLength: end - start });
    expectAck(await send(300 * KiB, 400 * KiB), 416, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '0' });
    expect(receivedOffset(await send(0, 256 * KiB))).toBe(256 * KiB);
    // The client believes it sent up to 512 KiB and goes on from there.
    expectAck(await send(512 * KiB, 768 * KiB), 416, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': String(256 * KiB) });
    expect(await sessionDataBytes(env.sandbox.root)).toBe(256 * KiB);
    // The rest as the Windows client would: follow BITS-Received-Content-Range.
    const rest = await bits.uploadFile('/uploads/g.bin', source, 256 * KiB, { sessionId: sid, startAt: 768 * KiB });
    expect(rest.fragmentAcks.map((ack) => ack.status)).toEqual([416, 200, 200, 200, 200]);
    expect(rest.offsets).toEqual([256 * KiB, 512 * KiB, 768 * KiB, MiB, size]);
    expect(await sha256OfFile(onDisk('g.bin'))).toBe(await sha256OfSource(source));
    expect(env.running?.connections()).toBe(1);
  });

  test('413: the client halves its fragments until they fit (§3.3, TV-9)', async () => {
    await start({ maxFragmentSize: 64 * KiB });
    const bits = client();
    const size = 300 * KiB + 1;
    const source = patternSource('shrink', size);
    const result = await bits.uploadFile('/uploads/s.bin', source, 256 * KiB);
    expect(result.fragmentAcks.slice(0, 3).map((ack) => ack.status)).toEqual([413, 413, 200]);
    expect(result.finalFragmentSize).toBe(64 * KiB);
    for (const refused of result.fragmentAcks.slice(0, 2)) {
      expectAck(refused, 413, {}, { 'BITS-Session-Id': result.sessionId });
      expect(refused.headers.connection).toBe('close');
    }
    expect(await sha256OfFile(onDisk('s.bin'))).toBe(await sha256OfSource(source));
  });
});

describe('a fragment cut off mid-body', () => {
  test('the durable prefix is kept, reported on a new connection, and the upload finishes byte-exact', async () => {
    await start();
    const bits = client();
    const size = 3 * MiB + 11;
    const source = patternSource('cut', size);
    const target = '/uploads/cut.bin';
    const sid = await bits.openSession(target);
    expect(receivedOffset(await bits.fragment(target, sid, 0, MiB - 1, size, source.slice(0, MiB), { contentLength: MiB }))).toBe(MiB);

    const prefix = 300_001;
    await bits.fragmentCutOff(target, sid, MiB, 2 * MiB - 1, size, await patternBytes('cut', MiB, MiB + prefix), {
      beforeDestroy: () => waitUntil(async () => (await sessionDataBytes(env.sandbox.root)) === MiB + prefix, 5000, 'the prefix on disk'),
    });
    // A new connection: a gap probe reads R without writing anything.
    const probe = await bits.fragment(target, sid, size - 1, size - 1, size, source.slice(size - 1, size), { contentLength: 1 });
    expectAck(probe, 416, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': String(MiB + prefix) });
    expect(probe.connection).toBe(2);

    // The client resends the whole interrupted fragment (case B: the held prefix is skipped), then the rest.
    const rest = await bits.uploadFile(target, source, MiB, { sessionId: sid, startAt: MiB });
    expect(rest.offsets).toEqual([2 * MiB, 3 * MiB, size]);
    expect(await sha256OfFile(onDisk('cut.bin'))).toBe(await sha256OfSource(source));
    expect(bits.connectionsOpened).toBe(2);
    expect(env.running?.connections()).toBe(2);
  });

  test('cut off right after the headers: nothing is kept, the resend succeeds', async () => {
    await start();
    const bits = client();
    const size = 100_000;
    const source = patternSource('cut-early', size);
    const sid = await bits.openSession('/uploads/early.bin');
    await bits.fragmentCutOff('/uploads/early.bin', sid, 0, size - 1, size, Buffer.alloc(0));
    const result = await bits.uploadFile('/uploads/early.bin', source, size, { sessionId: sid });
    expect(result.offsets).toEqual([size]);
    expect(await sha256OfFile(onDisk('early.bin'))).toBe(await sha256OfSource(source));
  });

  test('cut off one byte before the end: the file is not committed early', async () => {
    await start();
    const bits = client();
    const size = 50_000;
    const source = patternSource('cut-late', size);
    const target = '/uploads/late.bin';
    const sid = await bits.openSession(target);
    await bits.fragmentCutOff(target, sid, 0, size - 1, size, await patternBytes('cut-late', 0, size - 1), {
      beforeDestroy: () => waitUntil(async () => (await sessionDataBytes(env.sandbox.root)) === size - 1, 5000, 'the prefix on disk'),
    });
    expect(await listUploads(env.sandbox.root)).toEqual([]);
    expect(await sessionDataBytes(env.sandbox.root)).toBe(size - 1);
    const rest = await bits.uploadFile(target, source, size, { sessionId: sid });
    expect(rest.offsets).toEqual([size]);
    expect(await sha256OfFile(onDisk('late.bin'))).toBe(await sha256OfSource(source));
  });
});

describe('a fragment cut off mid-body, overlapping held bytes', () => {
  test('cut inside the bytes already held: R unchanged; cut past them: R advances by the new bytes only', async () => {
    await start();
    const bits = client();
    const size = 400 * KiB;
    const source = patternSource('cut-overlap', size);
    const target = '/uploads/cut-overlap.bin';
    const sid = await bits.openSession(target);
    expect(receivedOffset(await bits.fragment(target, sid, 0, 100 * KiB - 1, size, source.slice(0, 100 * KiB), { contentLength: 100 * KiB }))).toBe(100 * KiB);
    const probe = async (): Promise<number> => {
      const response = await bits.fragment(target, sid, size - 1, size - 1, size, source.slice(size - 1, size), { contentLength: 1 });
      expect(response.status).toBe(416);
      return receivedOffset(response);
    };
    // Fragment 50-300 KiB, cut after 30 KiB: every byte sent was already held.
    await bits.fragmentCutOff(target, sid, 50 * KiB, 300 * KiB - 1, size, await patternBytes('cut-overlap', 50 * KiB, 80 * KiB));
    expect(await probe()).toBe(100 * KiB);
    // The same fragment cut after 80 KiB: 30 KiB of it are new; the impostor-free prefix is kept.
    await bits.fragmentCutOff(target, sid, 50 * KiB, 300 * KiB - 1, size, await patternBytes('cut-overlap', 50 * KiB, 130 * KiB), {
      beforeDestroy: () => waitUntil(async () => (await sessionDataBytes(env.sandbox.root)) === 130 * KiB, 5000, 'the prefix on disk'),
    });
    expect(await probe()).toBe(130 * KiB);
    const rest = await bits.uploadFile(target, source, 150 * KiB, { sessionId: sid, startAt: 50 * KiB });
    expect(rest.offsets).toEqual([200 * KiB, 350 * KiB, size]);
    expect(await sha256OfFile(onDisk('cut-overlap.bin'))).toBe(await sha256OfSource(source));
    expect(bits.connectionsOpened).toBe(3);
  });

  test('Close-Session waits for a stalled fragment of its session, then discards everything', async () => {
    await start();
    const bits = client();
    const stalled = client();
    const target = '/uploads/stalled.bin';
    const sid = await bits.openSession(target);
    let closed = false;
    const closing = (async () => {
      await new Promise((resolve) => setTimeout(resolve, 50));
      const response = await bits.close(target, sid);
      closed = true;
      return response;
    })();
    let closedWhileStalled = true;
    await stalled.fragmentCutOff(target, sid, 0, 9, 10, Buffer.from('01234'), {
      beforeDestroy: async () => {
        await new Promise((resolve) => setTimeout(resolve, 300));
        closedWhileStalled = closed;
      },
    });
    expectAck(await closing, 200, { 'BITS-Session-Id': sid });
    // The per-session lock (§5.6) kept Close waiting until the fragment ended.
    expect(closedWhileStalled).toBe(false);
    expect(await listUploads(env.sandbox.root)).toEqual([]);
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
  });
});

describe('connections', () => {
  test('pipelined packets on one connection are answered in order', async () => {
    await start();
    const bits = client();
    const sid = await bits.openSession('/uploads/pipelined.bin');
    const fragment = (first: number, text: string): string =>
      `BITS_POST /uploads/pipelined.bin HTTP/1.1\r\nHost: x\r\nBITS-Packet-Type: Fragment\r\nBITS-Session-Id: ${sid}\r\n` +
      `Content-Range: bytes ${first}-${first + text.length - 1}/10\r\nContent-Length: ${text.length}\r\n\r\n${text}`;
    const ping = 'BITS_POST /uploads/pipelined.bin HTTP/1.1\r\nHost: x\r\nBITS-Packet-Type: Ping\r\nContent-Length: 0\r\n\r\n';
    const [first, second, third] = await bits.raw(fragment(0, '012345') + ping + fragment(6, '6789'), 3);
    if (first === undefined || second === undefined || third === undefined) throw new Error('three responses expected');
    expectAck(first, 200, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '6' });
    expectAck(second, 200);
    expectAck(third, 200, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '10' });
    expect(await fsp.readFile(onDisk('pipelined.bin'), 'latin1')).toBe('0123456789');
    expect(env.running?.connections()).toBe(1);
  });

  test('keep-alive: one TCP connection serves a whole session of many packets', async () => {
    await start();
    const bits = client('keep-alive');
    const source = patternSource('keep', 512 * KiB + 17);
    expect((await bits.ping('/uploads/keep.bin')).status).toBe(200);
    const result = await bits.uploadFile('/uploads/keep.bin', source, 16 * KiB);
    expect(result.fragmentAcks).toHaveLength(33);
    expect(new Set([...result.fragmentAcks, result.closeAck].map((ack) => ack?.connection))).toEqual(new Set([1]));
    expect(bits.connectionsOpened).toBe(1);
    expect(env.running?.connections()).toBe(1);
    expect(sockets.size).toBe(1);
    expect(await sha256OfFile(onDisk('keep.bin'))).toBe(await sha256OfSource(source));
  });

  test('per-packet: every packet on a new connection, the session spans them all', async () => {
    await start();
    const bits = client('per-packet');
    const source = patternSource('per-packet', 100 * KiB + 1);
    expect((await bits.ping('/uploads/pp.bin')).status).toBe(200);
    const result = await bits.uploadFile('/uploads/pp.bin', source, 10 * KiB);
    const packets = 1 + 1 + result.fragmentAcks.length + 1;
    expect(result.fragmentAcks).toHaveLength(11);
    expect(bits.connectionsOpened).toBe(packets);
    expect(env.running?.connections()).toBe(packets);
    expect(sockets.size).toBe(packets);
    expect(await sha256OfFile(onDisk('pp.bin'))).toBe(await sha256OfSource(source));
  });
});
