/**
 * httpNotification (bits-protocol.md §10.3-10.4, §9.2, §15 A17/A26) against a real application
 * server on 127.0.0.1 and fake ReplyUpload objects: both modes, headers, query strings, replies,
 * static URLs, copy-to-destination, error statuses, timeouts, network failures, streaming of large
 * uploads and replies, HTTPS with a CA given at run time.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import {
  HttpNotificationError,
  NOTIFICATION_USER_AGENT,
  httpNotification,
  type HttpNotificationOptions,
} from '../../lib/reply/http-notification';
import type { ReplyResult, ReplyUpload } from '../../lib/reply/types';
import { type AnyServer, closeServer, freePort, listen, sleep } from '../helpers/net-utils';
import { localhostCertificate } from '../helpers/self-signed';

/** One request the application server received. */
interface Seen {
  readonly method: string;
  readonly url: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly rawHeaderNames: readonly string[];
  readonly body: Buffer;
}

type Handler = (req: IncomingMessage, res: ServerResponse, body: () => Promise<Buffer>) => void | Promise<void>;

interface App {
  readonly url: string;
  readonly seen: Seen[];
  handle: Handler;
}

const servers: AnyServer[] = [];
const folders: string[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => closeServer(server)));
  await Promise.all(folders.splice(0).map((folder) => fsp.rm(folder, { recursive: true, force: true })));
});

function collect(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** An application server; `handle` decides each answer (default: 200, empty). */
async function startApp(secure?: { key: string; cert: string }): Promise<App> {
  const app: App = {
    url: '',
    seen: [],
    handle: async (_req, res, body) => {
      await body();
      res.end();
    },
  };
  const listener: http.RequestListener = (req, res) => {
    let read: Promise<Buffer> | undefined;
    const body = (): Promise<Buffer> => {
      read ??= collect(req).then((bytes) => {
        app.seen.push({
          method: req.method ?? '',
          url: req.url ?? '',
          headers: req.headers,
          rawHeaderNames: req.rawHeaders.filter((_, i) => i % 2 === 0),
          body: bytes,
        });
        return bytes;
      });
      return read;
    };
    Promise.resolve(app.handle(req, res, body)).catch((error: unknown) => {
      res.destroy(error instanceof Error ? error : new Error(String(error)));
    });
  };
  const server = secure === undefined ? http.createServer(listener) : https.createServer(secure, listener);
  servers.push(server);
  const port = await listen(server);
  return Object.assign(app, { url: `${secure === undefined ? 'http' : 'https'}://127.0.0.1:${port}/notify` });
}

/** A fake final-fragment request. */
function fakeRequest(
  url: string,
  options: { host?: string; encrypted?: boolean; originalUrl?: string } = {},
): IncomingMessage {
  const fake = {
    url,
    headers: { host: options.host ?? 'bits.example:8080' },
    socket: { encrypted: options.encrypted, localAddress: '127.0.0.1', localPort: 8080 },
    ...(options.originalUrl === undefined ? {} : { originalUrl: options.originalUrl }),
  };
  return fake as unknown as IncomingMessage;
}

interface FakeUploadOptions {
  readonly req?: IncomingMessage;
  /** Bytes the upload's read() streams; a generator for large uploads. */
  readonly stream?: () => Readable;
  readonly size?: number;
  readonly localFile?: string;
  readonly readFails?: boolean;
}

function fakeUpload(data: Buffer, options: FakeUploadOptions = {}): ReplyUpload & { reads: number } {
  const upload: ReplyUpload & { reads: number } = {
    reads: 0,
    sessionId: '{11111111-2222-3333-4444-555555555555}',
    destination: ['in', 'report.bin'],
    urlPath: '/in/report.bin',
    principal: 'alice',
    size: options.size ?? data.length,
    sha256: createHash('sha256').update(data).digest('hex'),
    req: options.req ?? fakeRequest('/uploads/in/report.bin'),
    read: async (start = 0): Promise<Readable> => {
      upload.reads += 1;
      if (options.readFails === true) throw Object.assign(new Error('storage offline'), { code: 'EIO' });
      return options.stream?.() ?? Readable.from([data.subarray(start)]);
    },
    localFile: async () => options.localFile,
  };
  return upload;
}

async function run(options: HttpNotificationOptions, upload: ReplyUpload): Promise<ReplyResult> {
  return httpNotification(options)(upload, upload.req);
}

function objectResult(result: ReplyResult): {
  body?: unknown;
  file?: string;
  url?: string;
  copyToDestination?: boolean;
} {
  if (typeof result !== 'object' || Buffer.isBuffer(result) || result instanceof Uint8Array || result instanceof Readable) {
    throw new Error(`expected an object result, got ${String(result)}`);
  }
  return result;
}

async function readAll(body: unknown): Promise<Buffer> {
  if (Buffer.isBuffer(body)) return body;
  if (body instanceof Readable) {
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  }
  throw new Error(`not a reply body: ${String(body)}`);
}

async function expectFailure(promise: Promise<unknown>): Promise<HttpNotificationError> {
  const error: unknown = await promise.then(
    () => undefined,
    (reason: unknown) => reason,
  );
  expect(error).toBeInstanceOf(HttpNotificationError);
  return error as HttpNotificationError;
}

/** Deterministic bytes: `size` bytes in 64 KiB chunks, produced lazily, counting what left. */
function generated(size: number, seed = 7): { stream: () => Readable; produced: () => number; sha256: string } {
  const chunk = (index: number, length: number): Buffer => {
    const bytes = Buffer.alloc(length);
    for (let i = 0; i < length; i += 4) bytes.writeUInt32LE(((index * 2654435761) ^ (i * seed)) >>> 0, i);
    return bytes;
  };
  const CHUNK = 64 * 1024;
  const hash = createHash('sha256');
  for (let at = 0, i = 0; at < size; at += CHUNK, i++) hash.update(chunk(i, Math.min(CHUNK, size - at)));
  let produced = 0;
  return {
    sha256: hash.digest('hex'),
    produced: () => produced,
    stream: () => {
      produced = 0;
      return Readable.from(
        (function* () {
          for (let at = 0, i = 0; at < size; at += CHUNK, i++) {
            const bytes = chunk(i, Math.min(CHUNK, size - at));
            produced += bytes.length;
            yield bytes;
          }
        })(),
        { objectMode: false, highWaterMark: CHUNK },
      );
    },
  };
}

async function tempFolder(): Promise<string> {
  const folder = await fsp.mkdtemp(path.join(os.tmpdir(), 'bits-notify-test-'));
  folders.push(folder);
  return folder;
}

describe('options are validated when the handler is created', () => {
  const url = 'http://127.0.0.1:9/notify';
  test.each([
    [{ mode: 'value' }, /option "url" must be an absolute http: or https: URL, got undefined/],
    [{ url: '/notify', mode: 'value' }, /option "url" must be an absolute/],
    [{ url: 'ftp://host/notify', mode: 'value' }, /option "url"/],
    [{ url: 42, mode: 'value' }, /option "url"/],
    [{ url }, /option "mode" must be 'reference' or 'value', got undefined/],
    [{ url, mode: 'by-value' }, /option "mode"/],
    [{ url, mode: 'value', timeout: 0 }, /option "timeout" must be an integer from 1/],
    [{ url, mode: 'value', timeout: 1.5 }, /option "timeout"/],
    [{ url, mode: 'value', timeout: 2 ** 31 }, /option "timeout"/],
    [{ url, mode: 'value', headers: 'x' }, /option "headers" must be an object/],
    [{ url, mode: 'value', headers: { 'Bad Name': 'x' } }, /option "headers" has an invalid header/],
    [{ url, mode: 'value', headers: { 'X-Token': 'a\r\nInjected: 1' } }, /option "headers" has an invalid header/],
    [{ url, mode: 'value', headers: { 'X-Number': 5 } }, /option "headers" has an invalid header/],
    [{ url, mode: 'value', headers: { 'content-length': '1' } }, /may not set "content-length"/],
    [{ url, mode: 'value', headers: { 'BITS-Original-Request-URL': 'x' } }, /may not set/],
    [{ url, mode: 'value', headers: { Host: 'x' } }, /may not set "Host"/],
    [{ url, mode: 'value', headers: { 'X-A': '1', 'x-a': '2' } }, /names "x-a" twice/],
    [{ url, mode: 'value', ca: 5 }, /option "ca" must be PEM certificates/],
    [{ url, mode: 'value', ca: [] }, /option "ca"/],
    [{ url, mode: 'value', tempDirectory: '' }, /option "tempDirectory"/],
    [{ url, mode: 'value', retries: 3 }, /unknown option "retries"/],
    ['http://x', /expects an options object/],
    [null, /expects an options object/],
  ])('%p', (options, message) => {
    expect(() => httpNotification(options as unknown as HttpNotificationOptions)).toThrow(TypeError);
    expect(() => httpNotification(options as unknown as HttpNotificationOptions)).toThrow(message);
  });

  test('valid options', () => {
    expect(typeof httpNotification({ url: 'https://app.example/notify?a=1#frag', mode: 'reference' })).toBe('function');
    expect(
      typeof httpNotification({
        url,
        mode: 'value',
        timeout: 1,
        headers: { Authorization: 'Bearer x', 'User-Agent': 'mine' },
        ca: ['pem', Buffer.from('pem')],
        tempDirectory: os.tmpdir(),
        // undefined values count as not given
        ...({ extra: undefined } as object),
      }),
    ).toBe('function');
  });
});

describe('mode value', () => {
  test('posts the upload as the body with the IIS headers; the response body is the reply, streamed', async () => {
    const app = await startApp();
    app.handle = async (_req, res, body) => {
      const bytes = await body();
      res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
      res.end(Buffer.concat([Buffer.from('got '), bytes]));
    };
    const data = Buffer.from('hello upload');
    const upload = fakeUpload(data, { req: fakeRequest('/uploads/in/report.bin?job=7&x=%20y') });
    const result = objectResult(await run({ url: `${app.url}?token=abc`, mode: 'value' }, upload));

    expect(result.body).toBeInstanceOf(Readable);
    expect(result.copyToDestination).toBe(false);
    expect(result.url).toBeUndefined();
    expect((await readAll(result.body)).toString()).toBe('got hello upload');

    expect(app.seen).toHaveLength(1);
    const [seen] = app.seen;
    expect(seen?.method).toBe('POST');
    expect(seen?.url).toBe('/notify?token=abc&job=7&x=%20y');
    expect(seen?.body.equals(data)).toBe(true);
    expect(seen?.headers).toMatchObject({
      'bits-original-request-url': 'http://bits.example:8080/uploads/in/report.bin?job=7&x=%20y',
      'user-agent': NOTIFICATION_USER_AGENT,
      accept: '*/*',
      'content-length': String(data.length),
    });
    expect(NOTIFICATION_USER_AGENT).toMatch(/^BITSExts 1\.5\b/);
    expect(seen?.headers['transfer-encoding']).toBeUndefined();
    expect(seen?.headers['bits-request-datafile-name']).toBeUndefined();
    expect(seen?.headers['bits-response-datafile-name']).toBeUndefined();
    expect(seen?.rawHeaderNames).toEqual(expect.arrayContaining(['BITS-Original-Request-URL', 'User-Agent', 'Accept']));
  });

  test('no query on either URL: none is added; only the upload has one: it becomes the query', async () => {
    const app = await startApp();
    await readAll(objectResult(await run({ url: app.url, mode: 'value' }, fakeUpload(Buffer.from('a')))).body);
    const upload = fakeUpload(Buffer.from('b'), { req: fakeRequest('/up/b.bin?only=1') });
    await readAll(objectResult(await run({ url: app.url, mode: 'value' }, upload)).body);
    expect(app.seen.map((seen) => seen.url)).toEqual(['/notify', '/notify?only=1']);
  });

  test('original URL: https on a TLS socket, req.originalUrl before req.url, Host as sent', async () => {
    const app = await startApp();
    const req = fakeRequest('/report.bin?q=1', { encrypted: true, originalUrl: '/mount/report.bin?q=1', host: 'files.example' });
    await readAll(objectResult(await run({ url: app.url, mode: 'value' }, fakeUpload(Buffer.from('x'), { req }))).body);
    expect(app.seen[0]?.headers['bits-original-request-url']).toBe('https://files.example/mount/report.bin?q=1');
    expect(app.seen[0]?.url).toBe('/notify?q=1');
  });

  test('extra headers are sent and may replace User-Agent and Accept', async () => {
    const app = await startApp();
    const options: HttpNotificationOptions = {
      url: app.url,
      mode: 'value',
      headers: { Authorization: 'Bearer s3cret', 'user-agent': 'my-agent', 'X-Tenant': 'blue' },
    };
    await readAll(objectResult(await run(options, fakeUpload(Buffer.from('x')))).body);
    expect(app.seen[0]?.headers).toMatchObject({
      authorization: 'Bearer s3cret',
      'user-agent': 'my-agent',
      accept: '*/*',
      'x-tenant': 'blue',
    });
  });

  test('a zero-byte upload is posted with Content-Length: 0; a 204 answer is an empty reply', async () => {
    const app = await startApp();
    app.handle = async (_req, res, body) => {
      await body();
      res.writeHead(204).end();
    };
    const result = objectResult(await run({ url: app.url, mode: 'value' }, fakeUpload(Buffer.alloc(0))));
    expect((await readAll(result.body)).length).toBe(0);
    expect(app.seen[0]?.headers['content-length']).toBe('0');
  });

  test('BITS-Static-Response-URL: that URL is the reply, no body', async () => {
    const app = await startApp();
    app.handle = async (_req, res, body) => {
      await body();
      res.writeHead(200, { 'BITS-Static-Response-URL': 'https://cdn.example/reply.bin' });
      res.end('ignored body');
    };
    const result = objectResult(await run({ url: app.url, mode: 'value' }, fakeUpload(Buffer.from('x'))));
    expect(result).toEqual({ url: 'https://cdn.example/reply.bin', copyToDestination: false });
  });

  test('BITS-Copy-File-To-Destination (any value, even empty) asks for the upload at its destination', async () => {
    const app = await startApp();
    app.handle = async (_req, res, body) => {
      await body();
      res.writeHead(200, { 'BITS-Copy-File-To-Destination': '' });
      res.end('reply');
    };
    const result = objectResult(await run({ url: app.url, mode: 'value' }, fakeUpload(Buffer.from('x'))));
    expect(result.copyToDestination).toBe(true);
    expect((await readAll(result.body)).toString()).toBe('reply');

    app.handle = async (_req, res, body) => {
      await body();
      res.writeHead(200, { 'BITS-Copy-File-To-Destination': 'true', 'BITS-Static-Response-URL': 'http://h/r' });
      res.end();
    };
    expect(objectResult(await run({ url: app.url, mode: 'value' }, fakeUpload(Buffer.from('x'))))).toEqual({
      url: 'http://h/r',
      copyToDestination: true,
    });
  });

  test('streams a large upload (48 MiB) and a large reply (24 MiB) with backpressure, never whole', async () => {
    const UPLOAD = 48 * 1024 * 1024;
    const REPLY = 24 * 1024 * 1024;
    const WINDOW = 12 * 1024 * 1024; // socket and stream buffers; far below either size
    const source = generated(UPLOAD, 3);
    const reply = generated(REPLY, 5);
    const app = await startApp();
    let received = 0;
    let uploadLead = 0;
    let replyLead = 0;
    let uploadHash = '';
    app.handle = async (req, res) => {
      const hash = createHash('sha256');
      for await (const chunk of req) {
        const bytes = chunk as Buffer;
        hash.update(bytes);
        received += bytes.length;
        uploadLead = Math.max(uploadLead, source.produced() - received);
        // A slow application: pause twice so that the sender must wait.
        if (received >= UPLOAD / 3 && received - bytes.length < UPLOAD / 3) await sleep(300);
        if (received >= (2 * UPLOAD) / 3 && received - bytes.length < (2 * UPLOAD) / 3) await sleep(300);
      }
      uploadHash = hash.digest('hex');
      res.writeHead(200, { 'Content-Length': String(REPLY) });
      const stream = reply.stream();
      stream.pipe(res);
    };
    const upload = fakeUpload(Buffer.alloc(0), { stream: source.stream, size: UPLOAD });
    const result = objectResult(await run({ url: app.url, mode: 'value' }, upload));
    expect(uploadHash).toBe(source.sha256);
    expect(received).toBe(UPLOAD);
    expect(uploadLead).toBeLessThan(WINDOW);

    // Read the reply slowly: the application may not run far ahead of the reader.
    const hash = createHash('sha256');
    let read = 0;
    for await (const chunk of result.body as Readable) {
      const bytes = chunk as Buffer;
      hash.update(bytes);
      read += bytes.length;
      replyLead = Math.max(replyLead, reply.produced() - read);
      if (read >= REPLY / 2 && read - bytes.length < REPLY / 2) await sleep(300);
    }
    expect(read).toBe(REPLY);
    expect(hash.digest('hex')).toBe(reply.sha256);
    expect(replyLead).toBeLessThan(WINDOW);
  });

  test('an upload stream shorter than its size fails the notification (500, E_FAIL) instead of hanging', async () => {
    const app = await startApp();
    const upload = fakeUpload(Buffer.from('short'), { size: 10 });
    const error = await expectFailure(run({ url: app.url, mode: 'value', timeout: 5_000 }, upload));
    expect({ reason: error.reason, status: error.status, errorCode: error.errorCode }).toEqual({
      reason: 'upload',
      status: 500,
      errorCode: 0x80004005,
    });
  });

  test('an unreadable upload fails with 500, E_FAIL and nothing is sent', async () => {
    const app = await startApp();
    const upload = fakeUpload(Buffer.from('x'), { readFails: true });
    const error = await expectFailure(run({ url: app.url, mode: 'value' }, upload));
    expect({ reason: error.reason, status: error.status, errorCode: error.errorCode }).toEqual({
      reason: 'upload',
      status: 500,
      errorCode: 0x80004005,
    });
    expect(app.seen).toHaveLength(0);
  });

  test('an early error answer stops the upload from being sent', async () => {
    const source = generated(64 * 1024 * 1024);
    const app = await startApp();
    app.handle = (_req, res) => {
      res.writeHead(503, { Connection: 'close' });
      res.end();
    };
    const upload = fakeUpload(Buffer.alloc(0), { stream: source.stream, size: 64 * 1024 * 1024 });
    const error = await expectFailure(run({ url: app.url, mode: 'value' }, upload));
    expect({ status: error.status, errorCode: error.errorCode, responseStatus: error.responseStatus }).toEqual({
      status: 503,
      errorCode: 0x801901f7,
      responseStatus: 503,
    });
    await sleep(200);
    expect(source.produced()).toBeLessThan(32 * 1024 * 1024);
  });

  test('a reply cut off by the application fails the reply stream with a network error', async () => {
    const app = await startApp();
    app.handle = async (_req, res, body) => {
      await body();
      res.writeHead(200, { 'Content-Length': '1000' });
      res.write(Buffer.alloc(100));
      await sleep(50);
      res.socket?.destroy();
    };
    const result = objectResult(await run({ url: app.url, mode: 'value' }, fakeUpload(Buffer.from('x'))));
    const error = await expectFailure(readAll(result.body));
    expect({ reason: error.reason, status: error.status }).toEqual({ reason: 'network', status: 502 });
  });
});

describe('mode reference', () => {
  test('names the spooled upload and a fresh response file; the response file is the reply; temp files go', async () => {
    const app = await startApp();
    let requestFile = '';
    let responseFile = '';
    let spooled = Buffer.alloc(0);
    let folderMode = 0;
    app.handle = async (req, res, body) => {
      await body();
      requestFile = String(req.headers['bits-request-datafile-name']);
      responseFile = String(req.headers['bits-response-datafile-name']);
      spooled = await fsp.readFile(requestFile);
      folderMode = (await fsp.stat(path.dirname(requestFile))).mode & 0o777;
      await expect(fsp.stat(responseFile)).rejects.toMatchObject({ code: 'ENOENT' });
      await fsp.writeFile(responseFile, `reply to ${spooled.toString()}`);
      res.end('body is ignored by reference');
    };
    const data = Buffer.from('by reference');
    const upload = fakeUpload(data, { req: fakeRequest('/uploads/r.bin?id=9') });
    const result = objectResult(await run({ url: `${app.url}?a=b`, mode: 'reference' }, upload));

    const [seen] = app.seen;
    expect(seen?.url).toBe('/notify?a=b&id=9');
    expect(seen?.body.length).toBe(0);
    expect(seen?.headers).toMatchObject({
      'content-length': '0',
      'bits-original-request-url': 'http://bits.example:8080/uploads/r.bin?id=9',
      'user-agent': NOTIFICATION_USER_AGENT,
      accept: '*/*',
    });
    expect(seen?.rawHeaderNames).toEqual(
      expect.arrayContaining(['BITS-Request-DataFile-Name', 'BITS-Response-DataFile-Name']),
    );
    expect(spooled.equals(data)).toBe(true);
    expect(path.isAbsolute(requestFile) && path.isAbsolute(responseFile)).toBe(true);
    expect(path.dirname(requestFile)).toBe(path.dirname(responseFile));
    expect(requestFile.startsWith(os.tmpdir())).toBe(true);
    if (process.platform !== 'win32') expect(folderMode).toBe(0o700);

    // The reply stays readable although its file and folder are already gone.
    await expect(fsp.stat(path.dirname(requestFile))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(result.copyToDestination).toBe(false);
    expect(result.body).toBeInstanceOf(Readable);
    expect((await readAll(result.body)).toString()).toBe('reply to by reference');
  });

  test('no response file: an empty reply', async () => {
    const app = await startApp();
    const result = objectResult(await run({ url: app.url, mode: 'reference' }, fakeUpload(Buffer.from('x'))));
    expect(result).toEqual({ body: Buffer.alloc(0), copyToDestination: false });
  });

  test('the storage’s local file is named instead of a copy', async () => {
    const folder = await tempFolder();
    const local = path.join(folder, 'data.bin');
    await fsp.writeFile(local, 'stored bytes');
    const app = await startApp();
    const upload = fakeUpload(Buffer.from('stored bytes'), { localFile: local });
    await run({ url: app.url, mode: 'reference' }, upload);
    expect(app.seen[0]?.headers['bits-request-datafile-name']).toBe(local);
    expect(upload.reads).toBe(0);
    expect(await fsp.readFile(local, 'utf8')).toBe('stored bytes');
  });

  test('tempDirectory holds the private folders', async () => {
    const folder = await tempFolder();
    const app = await startApp();
    let seenDir = '';
    app.handle = async (req, res, body) => {
      await body();
      seenDir = path.dirname(String(req.headers['bits-response-datafile-name']));
      res.end();
    };
    await run({ url: app.url, mode: 'reference', tempDirectory: folder }, fakeUpload(Buffer.from('x')));
    expect(path.dirname(seenDir)).toBe(folder);
    expect(await fsp.readdir(folder)).toEqual([]);
  });

  test('a large upload is spooled to the request file by streaming', async () => {
    const SIZE = 24 * 1024 * 1024;
    const source = generated(SIZE, 11);
    const app = await startApp();
    let hash = '';
    app.handle = async (req, res, body) => {
      await body();
      const bytes = await fsp.readFile(String(req.headers['bits-request-datafile-name']));
      hash = createHash('sha256').update(bytes).digest('hex');
      res.end();
    };
    await run({ url: app.url, mode: 'reference' }, fakeUpload(Buffer.alloc(0), { stream: source.stream, size: SIZE }));
    expect(hash).toBe(source.sha256);
  });

  test('static URL and copy-to-destination; the response file is then ignored', async () => {
    const app = await startApp();
    app.handle = async (req, res, body) => {
      await body();
      await fsp.writeFile(String(req.headers['bits-response-datafile-name']), 'not used');
      res.writeHead(200, {
        'BITS-Static-Response-URL': 'http://static.example/answer.xml',
        'BITS-Copy-File-To-Destination': 'yes',
      });
      res.end();
    };
    const result = objectResult(await run({ url: app.url, mode: 'reference' }, fakeUpload(Buffer.from('x'))));
    expect(result).toEqual({ url: 'http://static.example/answer.xml', copyToDestination: true });
  });

  test('copy-to-destination with a reply file', async () => {
    const app = await startApp();
    app.handle = async (req, res, body) => {
      await body();
      await fsp.writeFile(String(req.headers['bits-response-datafile-name']), 'R');
      res.writeHead(200, { 'BITS-Copy-File-To-Destination': '1' }).end();
    };
    const result = objectResult(await run({ url: app.url, mode: 'reference' }, fakeUpload(Buffer.from('x'))));
    expect(result.copyToDestination).toBe(true);
    expect((await readAll(result.body)).toString()).toBe('R');
  });

  test('an error answer removes the temporary files', async () => {
    const folder = await tempFolder();
    const app = await startApp();
    app.handle = async (req, res, body) => {
      await body();
      await fsp.writeFile(String(req.headers['bits-response-datafile-name']), 'partial');
      res.writeHead(500).end();
    };
    const error = await expectFailure(
      run({ url: app.url, mode: 'reference', tempDirectory: folder }, fakeUpload(Buffer.from('x'))),
    );
    expect(error.status).toBe(500);
    expect(await fsp.readdir(folder)).toEqual([]);
  });
});

describe('failures become the final fragment’s error Ack (status, BITS-Error-Code; context 0x7)', () => {
  test.each([
    [503, 503, 0x801901f7],
    [500, 500, 0x801901f4],
    [404, 404, 0x80190194],
    [403, 403, 0x80190193],
    [409, 409, 0x80190199],
    [501, 501, 0x801901f5],
    [302, 500, 0x8019012e],
    [304, 500, 0x80190130],
  ])('application answers %i: status %i, errorCode %s', async (answer, status, errorCode) => {
    const app = await startApp();
    app.handle = async (_req, res, body) => {
      await body();
      res.writeHead(answer, answer === 302 ? { Location: 'http://elsewhere.example/' } : {});
      res.end(answer === 304 ? undefined : 'application error text');
    };
    for (const mode of ['value', 'reference'] as const) {
      const error = await expectFailure(run({ url: app.url, mode }, fakeUpload(Buffer.from('x'))));
      expect({ reason: error.reason, status: error.status, errorCode: error.errorCode, responseStatus: error.responseStatus }).toEqual({
        reason: 'status',
        status,
        errorCode,
        responseStatus: answer,
      });
    }
    // Redirects are not followed.
    expect(app.seen).toHaveLength(2);
  });

  test('no answer within the timeout: 408 and 0x80070112, in both modes', async () => {
    const app = await startApp();
    app.handle = async (_req, _res, body) => {
      await body(); // never answers
    };
    for (const mode of ['value', 'reference'] as const) {
      const started = Date.now();
      const error = await expectFailure(run({ url: app.url, mode, timeout: 250 }, fakeUpload(Buffer.from('x'))));
      expect({ reason: error.reason, status: error.status, errorCode: error.errorCode }).toEqual({
        reason: 'timeout',
        status: 408,
        errorCode: 0x80070112,
      });
      expect(Date.now() - started).toBeGreaterThanOrEqual(200);
      expect(Date.now() - started).toBeLessThan(5_000);
    }
  });

  test('an application that stops reading the upload times out (sending phase)', async () => {
    const SIZE = 64 * 1024 * 1024;
    const source = generated(SIZE);
    const app = await startApp();
    app.handle = (req) => {
      req.pause(); // never reads, never answers
    };
    const upload = fakeUpload(Buffer.alloc(0), { stream: source.stream, size: SIZE });
    const error = await expectFailure(run({ url: app.url, mode: 'value', timeout: 300 }, upload));
    expect(error.status).toBe(408);
    expect(source.produced()).toBeLessThan(SIZE);
  });

  test('a reply body that stalls times out: the reply stream fails with 408', async () => {
    const app = await startApp();
    app.handle = async (_req, res, body) => {
      await body();
      res.writeHead(200, { 'Content-Length': '10' });
      res.write('12345'); // and nothing more
    };
    const result = objectResult(await run({ url: app.url, mode: 'value', timeout: 300 }, fakeUpload(Buffer.from('x'))));
    const error = await expectFailure(readAll(result.body));
    expect({ reason: error.reason, status: error.status, errorCode: error.errorCode }).toEqual({
      reason: 'timeout',
      status: 408,
      errorCode: 0x80070112,
    });
  });

  test('each phase has its own timeout: a slow but steady exchange succeeds', async () => {
    const app = await startApp();
    app.handle = async (_req, res, body) => {
      await body();
      await sleep(350);
      res.writeHead(200);
      res.flushHeaders();
      await sleep(350);
      res.end('late but fine');
    };
    // 700 ms in all, but no phase takes 600 ms.
    const result = objectResult(await run({ url: app.url, mode: 'value', timeout: 600 }, fakeUpload(Buffer.from('x'))));
    expect((await readAll(result.body)).toString()).toBe('late but fine');
  });

  test('connection refused: 502 with ERROR_WINHTTP_CANNOT_CONNECT', async () => {
    const port = await freePort();
    for (const mode of ['value', 'reference'] as const) {
      const error = await expectFailure(
        run({ url: `http://127.0.0.1:${port}/notify`, mode }, fakeUpload(Buffer.from('x'))),
      );
      expect({ reason: error.reason, status: error.status, errorCode: error.errorCode }).toEqual({
        reason: 'network',
        status: 502,
        errorCode: 0x80072efd,
      });
      expect((error.cause as NodeJS.ErrnoException).code).toBe('ECONNREFUSED');
    }
  });

  test('the application closes the connection without answering: 502', async () => {
    const app = await startApp();
    app.handle = async (req, _res, body) => {
      await body();
      req.socket.destroy();
    };
    const error = await expectFailure(run({ url: app.url, mode: 'value' }, fakeUpload(Buffer.from('x'))));
    expect({ reason: error.reason, status: error.status, errorCode: error.errorCode }).toEqual({
      reason: 'network',
      status: 502,
      errorCode: 0x80072efe,
    });
  });

  test('an unresolvable host: 502 with ERROR_WINHTTP_NAME_NOT_RESOLVED', async () => {
    const error = await expectFailure(
      run({ url: 'http://no-such-host.invalid/notify', mode: 'value', timeout: 10_000 }, fakeUpload(Buffer.from('x'))),
    );
    expect({ status: error.status, errorCode: error.errorCode }).toEqual({ status: 502, errorCode: 0x80072ee7 });
  });
});

describe('HTTPS', () => {
  let key = '';
  let cert = '';

  beforeAll(async () => {
    ({ key, cert } = await localhostCertificate());
  });

  test('a target with a self-signed certificate works when `ca` trusts it, in both modes', async () => {
    const app = await startApp({ key, cert });
    app.handle = async (req, res, body) => {
      const bytes = await body();
      const file = req.headers['bits-response-datafile-name'];
      if (typeof file === 'string') await fsp.writeFile(file, 'secure reference reply');
      res.end(`secure ${bytes.toString()}`);
    };
    const value = objectResult(await run({ url: app.url, mode: 'value', ca: cert }, fakeUpload(Buffer.from('value'))));
    expect((await readAll(value.body)).toString()).toBe('secure value');
    const reference = objectResult(await run({ url: app.url, mode: 'reference', ca: [cert] }, fakeUpload(Buffer.from('r'))));
    expect((await readAll(reference.body)).toString()).toBe('secure reference reply');
  });

  test('an untrusted certificate fails with 502 and ERROR_WINHTTP_SECURE_FAILURE; nothing reaches the application', async () => {
    const app = await startApp({ key, cert });
    const error = await expectFailure(run({ url: app.url, mode: 'value' }, fakeUpload(Buffer.from('x'))));
    expect({ reason: error.reason, status: error.status, errorCode: error.errorCode }).toEqual({
      reason: 'network',
      status: 502,
      errorCode: 0x80072f8f,
    });
    expect(app.seen).toHaveLength(0);
  });
});
