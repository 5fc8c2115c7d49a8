/**
 * Upload-reply jobs end to end with the IIS-compatible HTTP notification (bits-protocol.md §10):
 * a Windows-style client (Create-Session, Fragments, final Ack with `BITS-Reply-URL`, GET of the
 * reply, Close-Session) against `bitsUpload({ ..., notification })`, the application being a real
 * second HTTP server on 127.0.0.1. Both modes; replies from the response body and from the response
 * file; error statuses and timeouts in the final fragment's Ack (context 0x7) and the retry that
 * follows (§10.4, §9.2); static reply URLs; copy-to-destination.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import path from 'node:path';
import express from 'express';
import { bitsUpload } from '../../lib/middleware';
import type { BitsUploadOptions } from '../../lib/options';
import { NOTIFICATION_USER_AGENT } from '../../lib/reply/http-notification';
import { MemoryStorage } from '../../lib/storage/memory';
import {
  BitsClient,
  patternSource,
  receivedOffset,
  sha256OfSource,
  type ByteSource,
  type HttpResponse,
} from '../helpers/bits-client';
import { closeServer, listen, sleep } from '../helpers/net-utils';
import { errorHeaders, expectAck, exists, listUploads, makeSandbox, serve, type RunningServer, type Sandbox } from './support';

const MiB = 1024 * 1024;

/** What the application server saw of one notification. */
interface Notified {
  readonly url: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly bodyLength: number;
  readonly bodySha256: string;
  /** In mode reference: SHA-256 of the file named by BITS-Request-DataFile-Name, read during the call. */
  readonly requestFileSha256: string | undefined;
}

type Answer = (req: IncomingMessage, res: ServerResponse, seen: Notified) => void | Promise<void>;

let sandbox: Sandbox;
let running: RunningServer | undefined;
let appServer: http.Server | undefined;
let clients: BitsClient[] = [];
let notified: Notified[];
let answer: Answer;
let appUrl: string;

beforeEach(async () => {
  sandbox = await makeSandbox();
  notified = [];
  answer = (_req, res) => {
    res.end();
  };
  appServer = http.createServer((req, res) => {
    void (async () => {
      const hash = createHash('sha256');
      let length = 0;
      for await (const chunk of req) {
        hash.update(chunk as Buffer);
        length += (chunk as Buffer).length;
      }
      const requestFile = req.headers['bits-request-datafile-name'];
      const seen: Notified = {
        url: req.url ?? '',
        headers: req.headers,
        bodyLength: length,
        bodySha256: hash.digest('hex'),
        requestFileSha256:
          typeof requestFile === 'string'
            ? createHash('sha256').update(await fsp.readFile(requestFile)).digest('hex')
            : undefined,
      };
      notified.push(seen);
      await answer(req, res, seen);
    })().catch((error: unknown) => {
      res.destroy(error instanceof Error ? error : new Error(String(error)));
    });
  });
  const port = await listen(appServer);
  appUrl = `http://127.0.0.1:${port}/app/notify`;
});

afterEach(async () => {
  for (const client of clients) client.dispose();
  clients = [];
  await running?.close();
  running = undefined;
  if (appServer !== undefined) await closeServer(appServer);
  appServer = undefined;
  await sandbox.remove();
});

async function start(options: Omit<BitsUploadOptions, 'directory'>): Promise<BitsClient> {
  const app = express();
  app.use('/uploads', bitsUpload(options.storage === undefined ? { directory: sandbox.root, ...options } : options));
  running = await serve(app);
  const client = new BitsClient(running.port);
  clients.push(client);
  return client;
}

/** Sends the fragments of `data` up to, not including, the last one; returns the session id. */
async function sendAllButLast(client: BitsClient, target: string, data: ByteSource, fragmentSize: number): Promise<string> {
  const sessionId = await client.openSession(target);
  for (let offset = 0; offset + fragmentSize < data.size; offset += fragmentSize) {
    const end = offset + fragmentSize;
    const ack = await client.fragment(target, sessionId, offset, end - 1, data.size, data.slice(offset, end), {
      contentLength: fragmentSize,
    });
    expect(ack.status).toBe(200);
    expect(ack.headers['bits-reply-url']).toBeUndefined();
  }
  return sessionId;
}

/** The final fragment of `data`, sent again as often as asked. */
function finalFragment(client: BitsClient, target: string, sessionId: string, data: ByteSource, fragmentSize: number): Promise<HttpResponse> {
  const start = data.size <= fragmentSize ? 0 : Math.floor((data.size - 1) / fragmentSize) * fragmentSize;
  return client.fragment(target, sessionId, start, data.size - 1, data.size, data.slice(start, data.size), {
    contentLength: data.size - start,
  });
}

/** GET of a reply URL, optionally with a Range, as the client's BITS download does (§10.6). */
function download(url: string, range?: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const request = http.get(url, { agent: false, headers: range === undefined ? {} : { Range: range } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    request.on('error', (error: Error) => reject(new Error(`GET ${url} (${range ?? 'no range'}) failed: ${error.message}`)));
  });
}

/** A whole upload-reply job like the Windows client (§9.1): upload, final Ack, download, Close. */
async function uploadReplyJob(
  client: BitsClient,
  target: string,
  data: ByteSource,
  fragmentSize: number,
): Promise<{ sessionId: string; finalAck: HttpResponse; replyUrl: string; reply: Buffer }> {
  const sessionId = await sendAllButLast(client, target, data, fragmentSize);
  const finalAck = await finalFragment(client, target, sessionId, data, fragmentSize);
  expect(finalAck.status).toBe(200);
  expect(receivedOffset(finalAck)).toBe(data.size);
  const replyUrl = finalAck.headers['bits-reply-url'] ?? '';
  expect(replyUrl).not.toBe('');
  const got = await download(replyUrl);
  expect(got.status).toBe(200);
  expectAck(await client.close(target, sessionId), 200, { 'BITS-Session-Id': sessionId });
  return { sessionId, finalAck, replyUrl, reply: got.body };
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

describe.each(['value', 'reference'] as const)('mode %s', (mode) => {
  test('a multi-fragment upload-reply job gets the application’s reply; the upload stays out of the destination', async () => {
    const data = patternSource(`job-${mode}`, 3 * MiB + 12_345);
    const dataSha = await sha256OfSource(data);
    answer = async (req, res, seen) => {
      const reply = `reply to ${seen.bodySha256}/${seen.requestFileSha256 ?? '-'}`;
      const file = req.headers['bits-response-datafile-name'];
      if (typeof file === 'string') {
        await fsp.writeFile(file, reply);
        res.end('ignored');
      } else {
        res.end(reply);
      }
    };
    const client = await start({ notification: { url: `${appUrl}?tenant=blue`, mode } });
    const job = await uploadReplyJob(client, '/uploads/in/report.bin?job=42', data, MiB);

    expect(notified).toHaveLength(1);
    const [seen] = notified;
    expect(seen?.url).toBe('/app/notify?tenant=blue&job=42');
    expect(seen?.headers).toMatchObject({
      'bits-original-request-url': `http://127.0.0.1:${running?.port}/uploads/in/report.bin?job=42`,
      'user-agent': NOTIFICATION_USER_AGENT,
      accept: '*/*',
    });
    if (mode === 'value') {
      expect(seen?.headers['content-length']).toBe(String(data.size));
      expect(seen?.bodySha256).toBe(dataSha);
      expect(seen?.headers['bits-request-datafile-name']).toBeUndefined();
      expect(job.reply.toString()).toBe(`reply to ${dataSha}/-`);
    } else {
      expect(seen?.headers['content-length']).toBe('0');
      expect(seen?.bodyLength).toBe(0);
      // FileSystemStorage names its own data file: nothing is copied.
      expect(String(seen?.headers['bits-request-datafile-name']).startsWith(sandbox.root)).toBe(true);
      expect(seen?.requestFileSha256).toBe(dataSha);
      expect(job.reply.toString()).toBe(`reply to ${sha256(Buffer.alloc(0))}/${dataSha}`);
    }
    expect(job.replyUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/uploads\//);
    // §10.1: not copied to the destination unless the application asks.
    expect(await listUploads(sandbox.root)).toEqual([]);
  });

  test('the application answers 503: the final Ack is 503 with BG_E_HTTP_ERROR_503 and context 0x7; the resend succeeds', async () => {
    const data = patternSource(`retry-${mode}`, 200_000);
    let calls = 0;
    answer = async (req, res) => {
      calls += 1;
      if (calls === 1) {
        res.writeHead(503, { 'Retry-After': '1' }).end('busy');
        return;
      }
      const file = req.headers['bits-response-datafile-name'];
      if (typeof file === 'string') await fsp.writeFile(file, 'second time lucky');
      res.end(typeof file === 'string' ? undefined : 'second time lucky');
    };
    const client = await start({ notification: { url: appUrl, mode } });
    const target = '/uploads/retry.bin';
    const sessionId = await sendAllButLast(client, target, data, 64 * 1024);
    const failed = await finalFragment(client, target, sessionId, data, 64 * 1024);
    expectAck(failed, 503, { 'BITS-Session-Id': sessionId, ...errorHeaders('0x801901F7', '0x7') }, {
      'BITS-Received-Content-Range': String(data.size),
    });
    expect(failed.headers['bits-reply-url']).toBeUndefined();

    const retried = await finalFragment(client, target, sessionId, data, 64 * 1024);
    expect(retried.status).toBe(200);
    const replyUrl = retried.headers['bits-reply-url'] ?? '';
    expect((await download(replyUrl)).body.toString()).toBe('second time lucky');
    // A further repeat gets the same Reply-URL without a new notification (§6.4).
    const repeated = await finalFragment(client, target, sessionId, data, 64 * 1024);
    expect(repeated.headers['bits-reply-url']).toBe(replyUrl);
    expect(calls).toBe(2);
    expectAck(await client.close(target, sessionId), 200, { 'BITS-Session-Id': sessionId });
  });

  test('no answer within the timeout: 408 with 0x80070112 and context 0x7; the resend notifies again', async () => {
    const data = patternSource(`timeout-${mode}`, 10_000);
    let calls = 0;
    answer = async (_req, res) => {
      calls += 1;
      if (calls === 1) return; // never answers
      res.end(mode === 'value' ? 'in time' : undefined);
    };
    const client = await start({ notification: { url: appUrl, mode, timeout: 300 } });
    const target = '/uploads/slow.bin';
    const sessionId = await client.openSession(target);
    const failed = await finalFragment(client, target, sessionId, data, MiB);
    expectAck(failed, 408, { 'BITS-Session-Id': sessionId, ...errorHeaders('0x80070112', '0x7') }, {
      'BITS-Received-Content-Range': String(data.size),
    });
    const retried = await finalFragment(client, target, sessionId, data, MiB);
    expect(retried.status).toBe(200);
    const got = await download(retried.headers['bits-reply-url'] ?? '');
    expect(got.body.toString()).toBe(mode === 'value' ? 'in time' : '');
    expect(calls).toBe(2);
  });

  test('BITS-Static-Response-URL becomes the Reply-URL; nothing is stored', async () => {
    answer = (_req, res) => {
      res.writeHead(200, { 'BITS-Static-Response-URL': 'https://static.example/answers/42.xml' }).end('ignored');
    };
    const client = await start({ notification: { url: appUrl, mode } });
    const data = patternSource(`static-${mode}`, 5_000);
    const sessionId = await client.openSession('/uploads/s.bin');
    const ack = await finalFragment(client, '/uploads/s.bin', sessionId, data, MiB);
    expect(ack.status).toBe(200);
    expect(ack.headers['bits-reply-url']).toBe('https://static.example/answers/42.xml');
    expect(await listUploads(sandbox.root)).toEqual([]);
  });

  test('BITS-Copy-File-To-Destination places the upload at its destination as well', async () => {
    const data = patternSource(`copy-${mode}`, 300_000);
    answer = async (req, res) => {
      const file = req.headers['bits-response-datafile-name'];
      if (typeof file === 'string') await fsp.writeFile(file, 'copied');
      res.writeHead(200, { 'BITS-Copy-File-To-Destination': 'true' }).end(typeof file === 'string' ? undefined : 'copied');
    };
    const client = await start({ notification: { url: appUrl, mode } });
    const job = await uploadReplyJob(client, '/uploads/kept/copy.bin', data, 128 * 1024);
    expect(job.reply.toString()).toBe('copied');
    expect(await listUploads(sandbox.root)).toEqual(['kept/', `kept/copy.bin ${data.size}`]);
    const onDisk = await fsp.readFile(path.join(sandbox.root, 'kept', 'copy.bin'));
    expect(sha256(onDisk)).toBe(await sha256OfSource(data));
  });

  test('the application cannot be reached: 502 and context 0x7', async () => {
    const client = await start({ notification: { url: appUrl, mode } });
    if (appServer !== undefined) await closeServer(appServer);
    const data = patternSource(`down-${mode}`, 1_000);
    const sessionId = await client.openSession('/uploads/down.bin');
    const ack = await finalFragment(client, '/uploads/down.bin', sessionId, data, MiB);
    expectAck(ack, 502, { 'BITS-Session-Id': sessionId, ...errorHeaders('0x80072EFD', '0x7') }, {
      'BITS-Received-Content-Range': String(data.size),
    });
  });
});

test('mode value streams a 24 MiB upload and a 6 MiB reply, served with ranges', async () => {
  const data = patternSource('big', 24 * MiB + 7);
  const reply = patternSource('big-reply', 6 * MiB + 3);
  answer = (_req, res) => {
    res.writeHead(200, { 'Content-Length': String(reply.size) });
    reply.slice(0, reply.size).pipe(res);
  };
  const client = await start({ notification: { url: appUrl, mode: 'value' } });
  const sessionId = await sendAllButLast(client, '/uploads/big.bin', data, 8 * MiB);
  const ack = await finalFragment(client, '/uploads/big.bin', sessionId, data, 8 * MiB);
  expect(ack.status).toBe(200);
  expect(notified[0]?.bodySha256).toBe(await sha256OfSource(data));
  const replyUrl = ack.headers['bits-reply-url'] ?? '';
  const whole = await download(replyUrl);
  expect(sha256(whole.body)).toBe(await sha256OfSource(reply));
  const part = await download(replyUrl, 'bytes=1000-1999');
  expect(part.status).toBe(206);
  expect(part.body.equals(whole.body.subarray(1000, 2000))).toBe(true);
});

test('mode reference on a storage without local files spools the upload to a temporary file', async () => {
  const data = patternSource('memory', 150_000);
  answer = async (req, res) => {
    await fsp.writeFile(String(req.headers['bits-response-datafile-name']), 'from memory storage');
    res.end();
  };
  const client = await start({ storage: new MemoryStorage(), notification: { url: appUrl, mode: 'reference' } });
  const job = await uploadReplyJob(client, '/uploads/m.bin', data, 64 * 1024);
  expect(job.reply.toString()).toBe('from memory storage');
  expect(notified[0]?.requestFileSha256).toBe(await sha256OfSource(data));
  const requestFile = String(notified[0]?.headers['bits-request-datafile-name']);
  expect(await exists(requestFile)).toBe(false);
  expect(await exists(path.dirname(requestFile))).toBe(false);
});

test('an application answering 404 makes the final Ack 404 (fatal for the client, §9.2)', async () => {
  answer = (_req, res) => {
    res.writeHead(404).end();
  };
  const client = await start({ notification: { url: appUrl, mode: 'value' } });
  const data = patternSource('gone', 100);
  const sessionId = await client.openSession('/uploads/gone.bin');
  const ack = await finalFragment(client, '/uploads/gone.bin', sessionId, data, MiB);
  expectAck(ack, 404, { 'BITS-Session-Id': sessionId, ...errorHeaders('0x80190194', '0x7') }, {
    'BITS-Received-Content-Range': String(data.size),
  });
});

test('a reply cut off by the application fails the final fragment with 502; the resend succeeds', async () => {
  let calls = 0;
  answer = async (_req, res) => {
    calls += 1;
    res.writeHead(200, { 'Content-Length': '100000' });
    if (calls === 1) {
      res.write(Buffer.alloc(1000));
      await sleep(50);
      res.socket?.destroy();
      return;
    }
    res.end(Buffer.alloc(100_000, 1));
  };
  const client = await start({ notification: { url: appUrl, mode: 'value' } });
  const data = patternSource('cut', 100);
  const sessionId = await client.openSession('/uploads/cut.bin');
  const failed = await finalFragment(client, '/uploads/cut.bin', sessionId, data, MiB);
  expectAck(failed, 502, { 'BITS-Session-Id': sessionId, ...errorHeaders('0x80072EFE', '0x7') }, {
    'BITS-Received-Content-Range': String(data.size),
  });
  const retried = await finalFragment(client, '/uploads/cut.bin', sessionId, data, MiB);
  expect(retried.status).toBe(200);
  expect((await download(retried.headers['bits-reply-url'] ?? '')).body.equals(Buffer.alloc(100_000, 1))).toBe(true);
});

test('options: notification and reply exclude each other; notification is validated', () => {
  expect(() =>
    bitsUpload({ directory: '/tmp/x', notification: { url: 'http://127.0.0.1:1/n', mode: 'value' }, reply: () => 'r' }),
  ).toThrow(/either option "notification" or option "reply", not both/);
  expect(() =>
    bitsUpload({ directory: '/tmp/x', notification: { url: 'relative/notify', mode: 'value' } }),
  ).toThrow(/option "url" must be an absolute/);
  expect(() => bitsUpload({ directory: '/tmp/x', notification: 'http://x' as unknown as { url: string; mode: 'value' } })).toThrow(
    TypeError,
  );
});
