/**
 * Upload-reply jobs end to end (bits-protocol.md §10, TV-10): real `BITS_POST` bytes over real
 * sockets to `bitsUpload({ reply })` in Express 5 (and Connect), storing into a temporary folder
 * with `FileSystemStorage`; the reply downloaded with HEAD and (ranged) GETs from the URL the final
 * Ack names, as the Windows client does (§10.6). Covers replies of 0 bytes, a few bytes and more
 * than 64 MiB (streamed both ways), repeats, failures, lifetime (Close, Cancel), copyToDestination,
 * static URLs, mount points, publicUrl, forwarded headers, plain endpoints and principals.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http, { type IncomingHttpHeaders, type RequestListener } from 'node:http';
import path from 'node:path';
import { Readable } from 'node:stream';
import connect from 'connect';
import express from 'express';
import { bitsUpload } from '../../lib/middleware';
import type { BitsUploadOptions } from '../../lib/options';
import type { ReplyHandler, ReplyUpload } from '../../lib/reply/types';
import { MemoryStorage } from '../../lib/storage/memory';
import { BITS_PROTOCOL, BitsClient, patternSource, sha256OfSource, type HeaderList, type HttpResponse } from '../helpers/bits-client';
import {
  E_FAIL,
  E_INVALIDARG,
  errorHeaders,
  exists,
  expectAck,
  listUploads,
  serve,
  SESSION_ID_FORM,
  sessionDataBytes,
  useServerTest,
  type Listenable,
} from './support';

const HOST = 'bits.example.test';
const TARGET = '/uploads/report.bin';
const MiB = 1024 * 1024;

const env = useServerTest();

type Options = Omit<BitsUploadOptions, 'directory' | 'storage'> & Pick<BitsUploadOptions, 'storage'>;

/** Express 5 with `bitsUpload` at /uploads and a catch-all after it; returns a client with Host `host`. */
async function start(options: Options = {}, host = HOST): Promise<BitsClient> {
  const app = express();
  const bits = bitsUpload(options.storage === undefined ? { directory: env.sandbox.root, ...options } : options);
  app.use('/uploads', bits);
  app.use((req, res) => {
    res.status(418).json({ passedOn: `${req.method} ${req.originalUrl}` });
  });
  return listen(app, host);
}

async function listen(app: Listenable & RequestListener, host = HOST): Promise<BitsClient> {
  env.running = await serve(app);
  const made = new BitsClient(env.running.port, { host });
  env.clients.push(made);
  return made;
}

/** A reply handler that records its calls and what it read of the upload. */
function recorder(answer: (upload: ReplyUpload, call: number) => ReturnType<ReplyHandler> = () => 'HELLO') {
  const calls: { upload: ReplyUpload; data: Buffer }[] = [];
  const handler: ReplyHandler = async (upload) => {
    const parts: Buffer[] = [];
    for await (const chunk of await upload.read()) parts.push(chunk as Buffer);
    calls.push({ upload, data: Buffer.concat(parts) });
    return answer(upload, calls.length);
  };
  return { handler, calls };
}

const body = (text: string): Buffer => Buffer.from(text, 'latin1');

function sidOf(response: HttpResponse): string {
  const sid = response.headers['bits-session-id'];
  if (sid === undefined || !SESSION_ID_FORM.test(sid)) throw new Error(`no session id in ${response.status}`);
  return sid;
}

const replyUrlOf = (sid: string, base = `http://${HOST}/uploads`): string =>
  `${base}/BITS-Sessions/Replies/${encodeURIComponent(sid)}/responsefile.bin`;

function fragmentAck(sid: string, received: number, replyUrl?: string): Record<string, string> {
  return {
    'BITS-Session-Id': sid,
    'BITS-Received-Content-Range': String(received),
    ...(replyUrl !== undefined && { 'BITS-Reply-URL': replyUrl }),
  };
}

/** TV-1 up to the final fragment, with optional extra headers on every packet. */
async function halfway(bits: BitsClient, extra: HeaderList = [], target = TARGET): Promise<string> {
  const created = await bits.packet({ target, packetType: 'Create-Session', supportedProtocols: BITS_PROTOCOL, headers: extra });
  const sid = sidOf(created);
  expectAck(created, 200, { 'BITS-Protocol': BITS_PROTOCOL, 'BITS-Session-Id': sid, 'Accept-Encoding': 'identity' });
  // TV-10: the first fragment's Ack (R = 6) names no reply.
  expectAck(await bits.fragment(target, sid, 0, 5, 10, body('012345'), { extraHeaders: extra }), 200, fragmentAck(sid, 6));
  return sid;
}

const finalFragment = (bits: BitsClient, sid: string, extra: HeaderList = [], target = TARGET): Promise<HttpResponse> =>
  bits.fragment(target, sid, 6, 9, 10, body('6789'), { extraHeaders: extra });

/** One download response, body collected. */
interface Download {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** GET (or HEAD) of an absolute URL, sent to the test server whatever its host says. */
function download(url: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Download> {
  const target = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port: env.running?.port,
        method,
        path: `${target.pathname}${target.search}`,
        headers: { Host: target.host, 'Accept-Encoding': 'identity', ...headers },
        agent: false,
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (chunk: Buffer) => parts.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

const head = (url: string, headers: Record<string, string> = {}): Promise<Download> => download(url, headers, 'HEAD');

/** Asserts a download: status, body and the headers a BITS download needs (§10.6). */
function expectDownload(response: Download, status: number, text: string, contentRange?: string): void {
  expect({ status: response.status, body: response.body.toString('latin1') }).toEqual({ status, body: text });
  expect(response.headers).toMatchObject({
    'content-length': String(Buffer.byteLength(text, 'latin1')),
    'content-type': 'application/octet-stream',
    'accept-ranges': 'bytes',
    'last-modified': expect.stringMatching(/^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$/),
    etag: expect.stringMatching(/^"[0-9a-f]+-[0-9a-f]+-[0-9a-f]+"$/),
  });
  expect(response.headers['content-range']).toBe(contentRange);
  expect(response.headers['content-encoding']).toBeUndefined();
  expect(response.headers['transfer-encoding']).toBeUndefined();
}

/** Asserts a HEAD answer: 200, the size in Content-Length (§10.6), the download headers, no body. */
function expectHead(response: Download, size: number): void {
  expect({ status: response.status, body: response.body.length }).toEqual({ status: 200, body: 0 });
  expect(response.headers).toMatchObject({
    'content-length': String(size),
    'content-type': 'application/octet-stream',
    'accept-ranges': 'bytes',
    'last-modified': expect.any(String),
    etag: expect.any(String),
  });
}

function expectNotFound(response: Download): void {
  expect({ status: response.status, length: response.headers['content-length'], body: response.body.length }).toEqual({
    status: 404,
    length: '0',
    body: 0,
  });
}

describe('TV-10 upload-reply job as the Windows client runs it', () => {
  test('Create → Fragments → Ack with BITS-Reply-URL → HEAD → GETs (whole, ranged, clamped, suffix, open, 416) → Close → 404', async () => {
    const { handler, calls } = recorder();
    const bits = await start({ reply: handler });
    const sid = await halfway(bits);
    const url = replyUrlOf(sid);
    expect(url).toBe(`http://bits.example.test/uploads/BITS-Sessions/Replies/%7B${sid.slice(1, -1)}%7D/responsefile.bin`);
    expectAck(await finalFragment(bits, sid), 200, fragmentAck(sid, 10, url));
    expect(calls.map((call) => call.data.toString())).toEqual(['0123456789']);
    expect(calls[0]?.upload).toMatchObject({
      sessionId: sid,
      destination: ['report.bin'],
      urlPath: '/report.bin',
      principal: '127.0.0.1',
      size: 10,
      sha256: createHash('sha256').update('0123456789').digest('hex'),
    });
    // §10.1: the upload is not copied to the destination.
    expect(await exists(path.join(env.sandbox.root, 'report.bin'))).toBe(false);

    const probe = await head(url);
    expectHead(probe, 5);
    expectDownload(await download(url, { Range: 'bytes=0-99' }), 206, 'HELLO', 'bytes 0-4/5');
    const whole = await download(url);
    expectDownload(whole, 200, 'HELLO');
    expectDownload(await download(url, { Range: 'bytes=2-3' }), 206, 'LL', 'bytes 2-3/5');
    expectDownload(await download(url, { Range: 'bytes=-2' }), 206, 'LO', 'bytes 3-4/5');
    expectDownload(await download(url, { Range: 'bytes=1-' }), 206, 'ELLO', 'bytes 1-4/5');
    const unsatisfiable = await download(url, { Range: 'bytes=5-' });
    expect({ status: unsatisfiable.status, range: unsatisfiable.headers['content-range'], body: unsatisfiable.body.length }).toEqual({
      status: 416,
      range: 'bytes */5',
      body: 0,
    });
    // Stable validators (§10.6: if they change, the client starts over).
    for (const response of [whole, await head(url), await download(url, { Range: 'bytes=0-0' })]) {
      expect(response.headers['last-modified']).toBe(probe.headers['last-modified']);
      expect(response.headers.etag).toBe(probe.headers.etag);
    }

    expectAck(await bits.close(TARGET, sid), 200, { 'BITS-Session-Id': sid });
    expectNotFound(await download(url));
    expectNotFound(await head(url));
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    expect(await listUploads(env.sandbox.root)).toEqual([]);
    expect(calls).toHaveLength(1);
  });

  test('If-Range: a matching validator keeps the range, another one gets the whole reply; several ranges get the whole reply', async () => {
    const bits = await start({ reply: () => 'HELLO' });
    const sid = await halfway(bits);
    await finalFragment(bits, sid);
    const url = replyUrlOf(sid);
    const { etag = '', 'last-modified': lastModified = '' } = (await head(url)).headers;
    expectDownload(await download(url, { Range: 'bytes=1-2', 'If-Range': etag }), 206, 'EL', 'bytes 1-2/5');
    expectDownload(await download(url, { Range: 'bytes=1-2', 'If-Range': lastModified }), 206, 'EL', 'bytes 1-2/5');
    expectDownload(await download(url, { Range: 'bytes=1-2', 'If-Range': '"other"' }), 200, 'HELLO');
    expectDownload(await download(url, { Range: 'bytes=0-0,2-3' }), 200, 'HELLO');
    expectDownload(await download(url, { Range: 'pages=1' }), 200, 'HELLO');
    // RFC 7233 §3.1: Range applies to GET only.
    expectHead(await head(url, { Range: 'bytes=1-2' }), 5);
  });
});

describe('reply sizes', () => {
  test('a zero-byte reply: HEAD and GET report 0 bytes, any range is unsatisfiable', async () => {
    const bits = await start({ reply: () => Buffer.alloc(0) });
    const sid = await halfway(bits);
    const url = replyUrlOf(sid);
    expectAck(await finalFragment(bits, sid), 200, fragmentAck(sid, 10, url));
    expectHead(await head(url), 0);
    expectDownload(await download(url), 200, '');
    const ranged = await download(url, { Range: 'bytes=0-99' });
    expect({ status: ranged.status, range: ranged.headers['content-range'] }).toEqual({ status: 416, range: 'bytes */0' });
  });

  test('a zero-byte upload with a reply (TV-11)', async () => {
    const bits = await start({ reply: (upload) => `size ${upload.size}` });
    const sid = sidOf(await bits.createSession(TARGET));
    const url = replyUrlOf(sid);
    expectAck(await bits.fragment(TARGET, sid, 0, -1, 0, Buffer.alloc(0)), 200, fragmentAck(sid, 0, url));
    expectDownload(await download(url), 200, 'size 0');
  });

  test('a reply larger than 64 MiB is streamed in and out: server memory stays far below its size', async () => {
    const size = 80 * MiB + 123;
    const source = patternSource('big reply', size);
    const warmSource = patternSource('warm-up', 4 * MiB);
    const bits = await start({
      reply: (upload) => (upload.destination[0] === 'warm.bin' ? warmSource.slice(0, warmSource.size) : source.slice(0, size)),
    });
    let maxRss = 0;
    const sampler = setInterval(() => {
      maxRss = Math.max(maxRss, process.memoryUsage().rss);
    }, 5);
    try {
      // Warm-up (a 4 MiB reply through the same paths): the first transfers in a process grow the
      // heap whatever the server does, which would hide the figure measured below.
      expect(await warmUp(bits, 'warm')).toBe(4 * MiB);
      const rssBefore = process.memoryUsage().rss;
      maxRss = rssBefore;
      const sid = await halfway(bits);
      const url = replyUrlOf(sid);
      expectAck(await finalFragment(bits, sid), 200, fragmentAck(sid, 10, url));
      expectHead(await head(url), size);
      const got = await streamDownload(url);
      const tail = await streamDownload(url, { Range: `bytes=${size - 1000}-` });
      const growth = maxRss - rssBefore;
      // Measured after the transfers: hashing 80 MiB here would raise the baseline.
      expect(got).toEqual({ status: 200, length: size, sha256: await sha256OfSource(source) });
      expect({ status: tail.status, length: tail.length }).toEqual({ status: 206, length: 1000 });
      // A server holding the reply grows by at least its 80 MiB (a handler that buffers it
      // measured 116-127 MiB here); streaming measured 4-25 MiB (garbage of 64 KiB chunks awaiting
      // collection, noisy).
      expect(growth).toBeLessThan(32 * MiB);
      console.log(`upload-reply: ${(size / MiB).toFixed(0)} MiB reply, rss growth ${(growth / MiB).toFixed(1)} MiB`);
    } finally {
      clearInterval(sampler);
    }
  });
});

/** A small upload-reply job on the same server; returns the number of reply bytes downloaded. */
async function warmUp(bits: BitsClient, name: string): Promise<number> {
  const target = `/uploads/${name}.bin`;
  const sid = sidOf(await bits.createSession(target));
  const ack = await bits.fragment(target, sid, 0, 9, 10, body('0123456789'));
  const got = await streamDownload(ack.headers['bits-reply-url'] ?? '');
  await bits.close(target, sid);
  return got.length;
}

/** GET streamed: status, byte count and SHA-256, never holding the body. */
function streamDownload(url: string, headers: Record<string, string> = {}): Promise<{ status: number; length: number; sha256: string }> {
  const target = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.get(
      { host: '127.0.0.1', port: env.running?.port, path: target.pathname, headers: { Host: target.host, ...headers }, agent: false },
      (res) => {
        const hash = createHash('sha256');
        let length = 0;
        res.on('data', (chunk: Buffer) => {
          hash.update(chunk);
          length += chunk.length;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, length, sha256: hash.digest('hex') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
  });
}

describe('repeats and failures', () => {
  test('a repeated final fragment gets the same Ack and URL without a second handler call', async () => {
    const { handler, calls } = recorder();
    const bits = await start({ reply: handler });
    const sid = await halfway(bits);
    const url = replyUrlOf(sid);
    expectAck(await finalFragment(bits, sid), 200, fragmentAck(sid, 10, url));
    const before = (await head(url)).headers;
    expectAck(await finalFragment(bits, sid), 200, fragmentAck(sid, 10, url));
    expect(calls).toHaveLength(1);
    expect((await head(url)).headers.etag).toBe(before.etag);
  });

  test('a handler failing with 503 → 503 + context 0x7, no reply yet; the retry succeeds', async () => {
    const { handler, calls } = recorder((_upload, call) => {
      if (call === 1) throw Object.assign(new Error('application busy'), { status: 503 });
      return 'HELLO';
    });
    const bits = await start({ reply: handler });
    const sid = await halfway(bits);
    const url = replyUrlOf(sid);
    expectAck(await finalFragment(bits, sid), 503, { 'BITS-Session-Id': sid, ...errorHeaders(E_FAIL, '0x7') });
    expectNotFound(await download(url));
    expectAck(await finalFragment(bits, sid), 200, fragmentAck(sid, 10, url));
    expect(calls).toHaveLength(2);
    expectDownload(await download(url), 200, 'HELLO');
  });

  test('a static URL over 2,200 characters → 400 + E_INVALIDARG', async () => {
    const bits = await start({ reply: () => ({ url: `https://cdn.example.test/${'x'.repeat(2200)}` }) });
    const sid = await halfway(bits);
    expectAck(await finalFragment(bits, sid), 400, { 'BITS-Session-Id': sid, ...errorHeaders(E_INVALIDARG) });
  });
});

describe('lifetime (§10.5, §5.2)', () => {
  test.each(['Close', 'Cancel'])('the reply is gone after %s-Session, and so is the kept upload', async (end) => {
    const bits = await start({ reply: () => 'HELLO' });
    const sid = await halfway(bits);
    await finalFragment(bits, sid);
    const url = replyUrlOf(sid);
    expectDownload(await download(url), 200, 'HELLO');
    expect(await sessionDataBytes(env.sandbox.root)).toBeGreaterThan(0);
    const ack = end === 'Close' ? await bits.close(TARGET, sid) : await bits.cancel(TARGET, sid);
    expectAck(ack, 200, { 'BITS-Session-Id': sid });
    expectNotFound(await download(url));
    expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
    expect(await listUploads(env.sandbox.root)).toEqual([]);
  });

  test('an expired session serves no reply', async () => {
    const bits = await start({ reply: () => 'HELLO', sessionTimeout: 200 });
    const sid = await halfway(bits);
    await finalFragment(bits, sid);
    const url = replyUrlOf(sid);
    expectDownload(await download(url), 200, 'HELLO');
    await new Promise((resolve) => setTimeout(resolve, 300));
    expectNotFound(await download(url));
  });
});

describe('copyToDestination (§10.4)', () => {
  test.each([
    [true, ['report.bin 10']],
    [false, []],
  ])('copyToDestination %s: destination file %j', async (copyToDestination, uploads) => {
    const bits = await start({ reply: () => ({ body: 'HELLO', copyToDestination }) });
    const sid = await halfway(bits);
    expectAck(await finalFragment(bits, sid), 200, fragmentAck(sid, 10, replyUrlOf(sid)));
    expect(await listUploads(env.sandbox.root)).toEqual(uploads);
    expectDownload(await download(replyUrlOf(sid)), 200, 'HELLO');
    await bits.close(TARGET, sid);
    expect(await listUploads(env.sandbox.root)).toEqual(uploads);
    if (copyToDestination) expect(await fsp.readFile(path.join(env.sandbox.root, 'report.bin'), 'latin1')).toBe('0123456789');
  });
});

describe('reply URLs (§10.5)', () => {
  test('a static URL is the BITS-Reply-URL; nothing is served here', async () => {
    const bits = await start({ reply: () => ({ url: 'https://cdn.example.test/replies/42.bin' }) });
    const sid = await halfway(bits);
    expectAck(await finalFragment(bits, sid), 200, fragmentAck(sid, 10, 'https://cdn.example.test/replies/42.bin'));
    expectNotFound(await download(replyUrlOf(sid)));
  });

  test('behind a route prefix: Express Router below /api, and Connect', async () => {
    const app = express();
    const router = express.Router();
    router.use('/bits', bitsUpload({ directory: env.sandbox.root, reply: () => 'ROUTED' }));
    app.use('/api', router);
    const bits = await listen(app);
    const target = '/api/bits/report.bin';
    const sid = await halfway(bits, [], target);
    const url = replyUrlOf(sid, `http://${HOST}/api/bits`);
    expectAck(await finalFragment(bits, sid, [], target), 200, fragmentAck(sid, 10, url));
    expectDownload(await download(url), 200, 'ROUTED');
    await env.running?.close();

    const connectApp = connect();
    connectApp.use('/c/uploads', bitsUpload({ directory: env.sandbox.root, reply: () => 'CONNECT' }));
    const viaConnect = await listen(connectApp);
    const connectTarget = '/c/uploads/other.bin';
    const other = await halfway(viaConnect, [], connectTarget);
    const otherUrl = replyUrlOf(other, `http://${HOST}/c/uploads`);
    expectAck(await finalFragment(viaConnect, other, [], connectTarget), 200, fragmentAck(other, 10, otherUrl));
    expectDownload(await download(otherUrl), 200, 'CONNECT');
  });

  test('publicUrl names the reply as the proxy publishes it', async () => {
    const bits = await start({ reply: () => 'HELLO', publicUrl: 'https://public.example.com/bits/' });
    const sid = await halfway(bits);
    const published = replyUrlOf(sid, 'https://public.example.com/bits');
    expectAck(await finalFragment(bits, sid), 200, fragmentAck(sid, 10, published));
    // The proxy maps /bits to /uploads here.
    expectDownload(await download(replyUrlOf(sid)), 200, 'HELLO');
  });

  test('X-Forwarded-Proto/Host and Forwarded are honoured only with trustForwardedHeaders', async () => {
    const forwarded: HeaderList = [
      ['X-Forwarded-Proto', 'https'],
      ['X-Forwarded-Host', 'edge.example.com'],
    ];
    const plain = await start({ reply: () => 'HELLO' });
    const sid = await halfway(plain, forwarded);
    expectAck(await finalFragment(plain, sid, forwarded), 200, fragmentAck(sid, 10, replyUrlOf(sid)));
    await env.running?.close();

    const trusting = await start({ reply: () => 'HELLO', trustForwardedHeaders: true });
    const other = await halfway(trusting, forwarded);
    const edgeUrl = replyUrlOf(other, 'https://edge.example.com/uploads');
    expectAck(await finalFragment(trusting, other, forwarded), 200, fragmentAck(other, 10, edgeUrl));
    const standard: HeaderList = [['Forwarded', 'for=192.0.2.1;proto=https;host=std.example.com']];
    const third = await halfway(trusting, standard);
    expectAck(
      await finalFragment(trusting, third, standard),
      200,
      fragmentAck(third, 10, replyUrlOf(third, 'https://std.example.com/uploads')),
    );
  });
});

describe('plain endpoints and other requests', () => {
  test('a plain endpoint never sends BITS-Reply-URL, and serves no replies', async () => {
    const bits = await start();
    const result = await bits.uploadFile(TARGET, body('0123456789'), 4, { close: false });
    for (const ack of [...result.fragmentAcks, await finalFragment(bits, result.sessionId)]) {
      expect(ack.headers['bits-reply-url']).toBeUndefined();
    }
    expect(result.offsets).toEqual([4, 8, 10]);
    expectNotFound(await download(replyUrlOf(result.sessionId)));
    expect(await listUploads(env.sandbox.root)).toEqual(['report.bin 10']);
  });

  test("another principal's download → 404 like an unknown session; the owner's → 200", async () => {
    const bits = await start({
      reply: () => 'SECRET',
      principal: (req) => (typeof req.headers['x-user'] === 'string' ? req.headers['x-user'] : undefined),
    });
    const alice: HeaderList = [['X-User', 'alice']];
    const sid = await halfway(bits, alice);
    await finalFragment(bits, sid, alice);
    const url = replyUrlOf(sid);
    expectNotFound(await download(url, { 'X-User': 'bob' }));
    expectNotFound(await head(url, { 'X-User': 'bob' }));
    expectNotFound(await download(url));
    expectDownload(await download(url, { 'X-User': 'alice' }), 200, 'SECRET');
    expectNotFound(await download(replyUrlOf('{00000000-0000-0000-0000-000000000000}'), { 'X-User': 'alice' }));
    expectNotFound(await download(`http://${HOST}/uploads/BITS-Sessions/Replies/junk/responsefile.bin`));
  });

  test('other methods on a reply path, and other paths, go to next()', async () => {
    const bits = await start({ reply: () => 'HELLO' });
    const sid = await halfway(bits);
    await finalFragment(bits, sid);
    const url = replyUrlOf(sid);
    const deleted = await download(url, {}, 'DELETE');
    expect(deleted.status).toBe(418);
    const other = await download(`http://${HOST}/uploads/BITS-Sessions/Replies/${encodeURIComponent(sid)}/other.bin`);
    expect(other.status).toBe(418);
    expectDownload(await download(url), 200, 'HELLO');
  });

  test('after close() a reply download is answered 503', async () => {
    const bits = bitsUpload({ storage: new MemoryStorage(), reply: () => 'HELLO' });
    const app = express();
    app.use('/uploads', bits);
    const client = await listen(app);
    const sid = await halfway(client);
    expectAck(await finalFragment(client, sid), 200, fragmentAck(sid, 10, replyUrlOf(sid)));
    expectDownload(await download(replyUrlOf(sid)), 200, 'HELLO');
    await bits.close({ timeout: 1000 });
    expect((await download(replyUrlOf(sid))).status).toBe(503);
  });

  test('a storage that fails to open the reply → 500 with an empty body, reported as upload-failed', async () => {
    const storage = new MemoryStorage();
    const bits = bitsUpload({ storage, reply: () => 'HELLO' });
    const failures: unknown[] = [];
    bits.on('upload-failed', ({ error }) => failures.push(error.message));
    const app = express();
    app.use('/uploads', bits);
    const client = await listen(app);
    const sid = await halfway(client);
    await finalFragment(client, sid);
    storage.readReply = async () => {
      throw new Error('medium gone');
    };
    const failed = await download(replyUrlOf(sid));
    expect({ status: failed.status, length: failed.headers['content-length'], body: failed.body.length }).toEqual({
      status: 500,
      length: '0',
      body: 0,
    });
    expect(failures).toEqual(['medium gone']);
  });

  test('a storage returning fewer bytes than asked cuts the connection instead of ending the body', async () => {
    const storage = new MemoryStorage();
    const bits = await start({ storage, reply: () => 'HELLO WORLD' });
    const sid = await halfway(bits);
    await finalFragment(bits, sid);
    storage.readReply = async () => Readable.from([Buffer.from('HELL')]);
    await expect(download(replyUrlOf(sid))).rejects.toThrow(/aborted|socket hang up|ECONNRESET/);
  });

  test('a reply stream from the application is stored while it arrives (MemoryStorage)', async () => {
    const bits = await start({
      storage: new MemoryStorage(),
      reply: () => Readable.from((function* () {
        for (let i = 0; i < 100; i++) yield Buffer.from(`line ${i}\n`);
      })()),
    });
    const sid = await halfway(bits);
    await finalFragment(bits, sid);
    const got = await download(replyUrlOf(sid), { Range: 'bytes=0-6' });
    expectDownload(got, 206, 'line 0\n', `bytes 0-6/${Array.from({ length: 100 }, (_, i) => `line ${i}\n`).join('').length}`);
  });
});
