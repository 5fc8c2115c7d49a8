/**
 * acceptBitsPost over real sockets: raw bytes from node:net to a stock http.Server on 127.0.0.1.
 *
 * Node's parser rejects BITS_POST (bits-protocol.md §0.1); the shim rewrites BITS_POST request lines
 * at message starts it is sure of and otherwise leaves bytes untouched (§2.5). The safety rule
 * checked throughout: the shimmed server never delivers a request that a plain server would not
 * deliver for the same bytes with `BITS_POST` replaced by `PROPPATCH` (a method of the same length
 * that Node accepts).
 */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { generate } from 'selfsigned';
import { acceptBitsPost, acceptsBitsPost, bitsPostStats, MARKER_OVERHEAD } from '../../lib/server/accept-bits-post';
import type { AcceptBitsPostOptions } from '../../lib/server/accept-bits-post';
import type { PassthroughReason } from '../../lib/server/framing-tracker';
import { isBitsPost, MARKER_LINE, MARKER_NAME } from '../../lib/server/method-marker';
import {
  byteByByte,
  bytes,
  createRecorder,
  delay,
  finalResponses,
  parseResponses,
  RawConnection,
  seededRandom,
  sendRaw,
  sha256,
  startServer,
  statusCodes,
  type ParsedResponse,
  type RecordedRequest,
  type Recorder,
  type RecorderOptions,
  type StartedServer,
  type StartServerOptions,
} from '../helpers/raw-http';

// ---------------------------------------------------------------------------------------------
// Fixtures

const started: StartedServer[] = [];

afterEach(async () => {
  await Promise.all(started.splice(0).map((server) => server.close()));
});

interface TestServer extends StartedServer {
  readonly recorder: Recorder;
  readonly requests: RecordedRequest[];
  readonly reasons: PassthroughReason[];
  stats(): ReturnType<typeof bitsPostStats>;
}

/** A recording server, shimmed unless `bitsPost: false`; onPassthrough reasons are collected. */
async function start(options: StartServerOptions & { recorder?: RecorderOptions } = {}): Promise<TestServer> {
  const recorder = createRecorder(options.recorder);
  const reasons: PassthroughReason[] = [];
  const own = options.bitsPost;
  const bitsPost: AcceptBitsPostOptions | false =
    own === false
      ? false
      : {
          ...own,
          onPassthrough: (reason, socket) => {
            reasons.push(reason);
            own?.onPassthrough?.(reason, socket);
          },
        };
  const server = await startServer(recorder.handler, { ...options, bitsPost });
  started.push(server);
  return { ...server, recorder, requests: recorder.requests, reasons, stats: () => bitsPostStats(server.server) };
}

interface RequestOptions {
  readonly body?: string | Buffer;
  /** Extra header lines, each ending in CRLF. */
  readonly headers?: string;
  readonly version?: '1.0' | '1.1';
  /** Add `Content-Length` for the body. Defaults to true. */
  readonly contentLength?: boolean;
}

function request(method: string, target: string, options: RequestOptions = {}): Buffer {
  const body = options.body === undefined ? Buffer.alloc(0) : bytes(options.body);
  const length = options.contentLength === false ? '' : `Content-Length: ${body.length}\r\n`;
  const head = `${method} ${target} HTTP/${options.version ?? '1.1'}\r\nHost: test\r\n${options.headers ?? ''}${length}\r\n`;
  return Buffer.concat([bytes(head), body]);
}

const BITS = (target: string, options?: RequestOptions): Buffer => request('BITS_POST', target, options);
const GET = (target: string, headers = ''): Buffer => request('GET', target, { headers, contentLength: false });
const POST = (target: string, options?: RequestOptions): Buffer => request('POST', target, options);

/** `size-in-hex[ext] CRLF data CRLF` */
function chunk(data: string, extension = ''): string {
  return `${Buffer.byteLength(data, 'latin1').toString(16)}${extension}\r\n${data}\r\n`;
}

const REQUEST_LINE_TEXT = 'BITS_POST / HTTP/1.1';

/** The same bytes with every `BITS_POST` replaced by `PROPPATCH` (same length, a method Node accepts). */
function plainEquivalent(input: Buffer | string): Buffer {
  return Buffer.from(bytes(input).toString('latin1').replace(/BITS_POST/g, 'PROPPATCH'), 'latin1');
}

interface Summary {
  readonly method: string;
  readonly url: string;
  readonly length: number;
  readonly sha256: string;
}

function summary(response: ParsedResponse | undefined): Summary {
  if (response === undefined) throw new Error('missing response');
  return JSON.parse(response.body.toString('utf8')) as Summary;
}

function methodsAndUrls(requests: readonly RecordedRequest[]): string[] {
  return requests.map((r) => `${r.method} ${r.url}`);
}

const markerKey = MARKER_NAME.toLowerCase();
/** This process's marker value, as the shim inserts it. */
const NONCE = MARKER_LINE.toString('latin1').slice(MARKER_NAME.length + 2, -2);

/** Asserts that no view of a request shows the marker header. */
function expectNoMarker(record: RecordedRequest): void {
  expect(record.headers[markerKey]).toBeUndefined();
  expect(record.headersDistinct[markerKey]).toBeUndefined();
  expect(record.rawHeaders.map((name) => name.toLowerCase())).not.toContain(markerKey);
  expect(JSON.stringify(record)).not.toContain(NONCE);
}

// ---------------------------------------------------------------------------------------------

describe('acceptBitsPost: arguments', () => {
  test.each([
    ['a plain object', {}],
    ['a net.Server', net.createServer()],
    ['null', null],
    ['undefined', undefined],
    ['a function', () => undefined],
  ])('throws TypeError for %s', (_name, value) => {
    expect(() => acceptBitsPost(value as unknown as http.Server)).toThrow(TypeError);
    expect(() => acceptBitsPost(value as unknown as http.Server)).toThrow(/http\.Server or https\.Server/);
  });

  test.each([
    ['options null', null],
    ['options a string', 'all'],
    ['connections', { connections: 'some' }],
    ['filter', { filter: true }],
    ['onPassthrough', { onPassthrough: 'log' }],
    ['maxLineLength below 64', { maxLineLength: 63 }],
    ['maxLineLength fractional', { maxLineLength: 100.5 }],
    ['maxLineLength a string', { maxLineLength: '1000' }],
    ['holdTimeout zero', { holdTimeout: 0 }],
    ['holdTimeout negative', { holdTimeout: -1 }],
    ['holdTimeout NaN', { holdTimeout: Number.NaN }],
    ['holdTimeout fractional', { holdTimeout: 1.5 }],
    ['trustedProxy without addresses or secret', { trustedProxy: {} }],
    ['trustedProxy with a short secret', { trustedProxy: { secret: 'short' } }],
  ])('throws TypeError for bad options: %s', (_name, options) => {
    const server = http.createServer();
    expect(() => acceptBitsPost(server, options as unknown as AcceptBitsPostOptions)).toThrow(TypeError);
    expect(acceptsBitsPost(server)).toBe(false);
  });

  test('returns the same server; a second call is harmless', async () => {
    const recorder = createRecorder();
    const server = http.createServer(recorder.handler);
    expect(acceptBitsPost(server)).toBe(server);
    const listeners = server.listenerCount('connection');
    const emit = server.emit;
    expect(acceptBitsPost(server, { connections: 'first-request' })).toBe(server);
    expect(server.listenerCount('connection')).toBe(listeners);
    expect(server.emit).toBe(emit);
    expect(acceptsBitsPost(server)).toBe(true);
    expect(() => acceptBitsPost(server, { holdTimeout: -5 })).toThrow(TypeError);

    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    try {
      const result = await sendRaw(port, Buffer.concat([BITS('/twice', { body: 'x' }), GET('/after')]), { responses: 2 });
      expect(statusCodes(result.responses)).toEqual([200, 200]);
      expect(methodsAndUrls(recorder.requests)).toEqual(['BITS_POST /twice', 'GET /after']);
      expectNoMarker(recorder.requests[0] as RecordedRequest);
      expect(bitsPostStats(server)).toMatchObject({ trackedConnections: 1, rewritten: 1, restored: 1 });
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  test('bitsPostStats is undefined for a server without the shim', () => {
    expect(bitsPostStats(http.createServer())).toBeUndefined();
    expect(acceptsBitsPost(http.createServer())).toBe(false);
    expect(acceptsBitsPost({})).toBe(false);
  });
});

describe('acceptBitsPost: BITS_POST reaches the application', () => {
  test('as method BITS_POST, marker removed from headers, rawHeaders and headersDistinct', async () => {
    const server = await start();
    const input = BITS('/uploads/report.bin?x=1', {
      headers: 'BITS-Packet-Type: Ping\r\nX-Dup: one\r\nX-Dup: two\r\nUser-Agent: Microsoft BITS/7.8\r\n',
    });
    const result = await sendRaw(server.port, input, { responses: 1 });
    expect(statusCodes(result.responses)).toEqual([200]);
    expect(summary(result.responses[0])).toMatchObject({ method: 'BITS_POST', url: '/uploads/report.bin?x=1', length: 0 });
    const [record] = server.requests;
    if (record === undefined) throw new Error('no request');
    expect(record.method).toBe('BITS_POST');
    expect(record.bitsPost).toBe(true);
    expect(record.rawHeaders).toEqual([
      'Host', 'test',
      'BITS-Packet-Type', 'Ping',
      'X-Dup', 'one',
      'X-Dup', 'two',
      'User-Agent', 'Microsoft BITS/7.8',
      'Content-Length', '0',
    ]);
    expect(record.headers).toEqual({
      host: 'test',
      'bits-packet-type': 'Ping',
      'x-dup': 'one, two',
      'user-agent': 'Microsoft BITS/7.8',
      'content-length': '0',
    });
    expect(record.headersDistinct['x-dup']).toEqual(['one', 'two']);
    expect(Object.keys(record.headersDistinct).sort()).toEqual(
      ['bits-packet-type', 'content-length', 'host', 'user-agent', 'x-dup'],
    );
    expectNoMarker(record);
    expect(server.stats()).toMatchObject({ trackedConnections: 1, rewritten: 1, restored: 1, forgedMarkers: 0, passthrough: {} });
  });

  test('a plain server answers the same bytes with 400 (what the shim is for)', async () => {
    const server = await start({ bitsPost: false });
    const result = await sendRaw(server.port, BITS('/x'));
    expect(statusCodes(result.responses)).toEqual([400]);
    expect(result.closed).toBe(true);
    expect(server.requests).toHaveLength(0);
  });

  test('isBitsPost is false for GET, POST and for a method set by application code', async () => {
    const seen: Array<[string, boolean]> = [];
    const server = await startServer((req, res) => {
      if (req.url === '/override') req.method = 'BITS_POST';
      seen.push([`${req.method} ${req.url}`, isBitsPost(req)]);
      req.resume();
      req.on('end', () => res.end());
    });
    started.push(server);
    const input = Buffer.concat([GET('/g'), POST('/override', { body: 'x' }), BITS('/b')]);
    await sendRaw(server.port, input, { responses: 3 });
    expect(seen).toEqual([
      ['GET /g', false],
      ['BITS_POST /override', false],
      ['BITS_POST /b', true],
    ]);
  });

  test('HTTPS: a BITS_POST over TLS arrives as BITS_POST', async () => {
    const pems = await generate([{ name: 'commonName', value: 'localhost' }], { keyType: 'ec', algorithm: 'sha256' });
    const recorder = createRecorder();
    const server = acceptBitsPost(https.createServer({ key: pems.private, cert: pems.cert }, recorder.handler));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    try {
      const raw = await new Promise<Buffer>((resolve, reject) => {
        const socket = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false }, () => {
          socket.write(Buffer.concat([BITS('/tls', { body: REQUEST_LINE_TEXT }), GET('/tls-get')]));
        });
        const received: Buffer[] = [];
        socket.on('data', (data: Buffer) => {
          received.push(data);
          if (finalResponses(parseResponses(Buffer.concat(received))).length === 2) {
            socket.destroy();
            resolve(Buffer.concat(received));
          }
        });
        socket.on('error', reject);
      });
      expect(statusCodes(parseResponses(raw))).toEqual([200, 200]);
      expect(methodsAndUrls(recorder.requests)).toEqual(['BITS_POST /tls', 'GET /tls-get']);
      expect(recorder.requests[0]?.bitsPost).toBe(true);
      expect(recorder.requests[0]?.body.toString('latin1')).toBe(REQUEST_LINE_TEXT);
      expect(bitsPostStats(server)).toMatchObject({ trackedConnections: 1, rewritten: 1, restored: 1 });
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe('acceptBitsPost: bodies are byte-exact', () => {
  test.each([
    ['0 B', 0],
    ['1 B', 1],
    ['1 MiB', 1024 * 1024],
  ])('BITS_POST body of %s', async (_name, size) => {
    const server = await start();
    const body = randomBytes(size);
    // Plant request-like text in the body where there is room.
    if (size >= 64) body.write(`${REQUEST_LINE_TEXT}\r\nContent-Length: 0\r\n\r\n`, 17, 'latin1');
    const input = Buffer.concat([BITS('/body', { body }), GET('/next')]);
    const result = await sendRaw(server.port, input, { responses: 2 });
    expect(statusCodes(result.responses)).toEqual([200, 200]);
    expect(summary(result.responses[0])).toEqual({ method: 'BITS_POST', url: '/body', length: size, sha256: sha256(body) });
    expect(server.requests[0]?.body.equals(body)).toBe(true);
    expect(methodsAndUrls(server.requests)).toEqual(['BITS_POST /body', 'GET /next']);
  });

  test('BITS_POST body of 64 MiB, streamed, followed by more requests on the connection', async () => {
    const server = await start({ recorder: { keepBodyUpTo: 0 } });
    const size = 64 * 1024 * 1024;
    const connection = await RawConnection.open(server.port);
    try {
      await connection.write(BITS('/big', { headers: `Content-Length: ${size}\r\n`, contentLength: false }));
      const hash = createHash('sha256');
      const block = randomBytes(1024 * 1024);
      block.write(`\r\n\r\n${REQUEST_LINE_TEXT}\r\nContent-Length: 0\r\n\r\n`, 4096, 'latin1');
      for (let i = 0; i < size / block.length; i++) {
        block.writeUInt32BE(i, 0);
        hash.update(block);
        // The write callback means the kernel has the bytes, so the block may be changed afterwards.
        expect(await connection.write(block)).toBe(true);
      }
      await connection.write(Buffer.concat([GET('/after'), BITS('/small', { body: 'abc' })]));
      expect(await connection.waitForResponses(3, 30_000)).toBe(true);
      const responses = finalResponses(connection.responses);
      expect(summary(responses[0])).toEqual({ method: 'BITS_POST', url: '/big', length: size, sha256: hash.digest('hex') });
      expect(summary(responses[1])).toMatchObject({ method: 'GET', url: '/after' });
      expect(summary(responses[2])).toMatchObject({ method: 'BITS_POST', url: '/small', length: 3 });
      expect(server.stats()).toMatchObject({ rewritten: 2, restored: 2, passthrough: {} });
    } finally {
      connection.destroy();
    }
  });
});

describe('acceptBitsPost: keep-alive, pipelining and arbitrary splits', () => {
  test('BITS_POST mixed with GET and POST on one keep-alive connection, one at a time', async () => {
    const server = await start();
    const connection = await RawConnection.open(server.port);
    try {
      const steps: Array<[Buffer, string]> = [
        [GET('/1'), 'GET /1'],
        [BITS('/2', { body: 'fragment-one' }), 'BITS_POST /2'],
        [POST('/3', { body: REQUEST_LINE_TEXT }), 'POST /3'],
        [BITS('/4', { body: 'fragment-two' }), 'BITS_POST /4'],
        [GET('/5'), 'GET /5'],
      ];
      for (const [index, [input, expected]] of steps.entries()) {
        await connection.write(input);
        expect(await connection.waitForResponses(index + 1)).toBe(true);
        const response = finalResponses(connection.responses)[index];
        expect(`${summary(response).method} ${summary(response).url}`).toBe(expected);
      }
      expect(connection.serverClosed).toBe(false);
      expect(server.requests.map((r) => [r.method, r.body.toString('latin1'), r.bitsPost])).toEqual([
        ['GET', '', false],
        ['BITS_POST', 'fragment-one', true],
        ['POST', REQUEST_LINE_TEXT, false],
        ['BITS_POST', 'fragment-two', true],
        ['GET', '', false],
      ]);
      expect(server.stats()).toMatchObject({ trackedConnections: 1, rewritten: 2, restored: 2, passthrough: {} });
    } finally {
      connection.destroy();
    }
  });

  test('many requests pipelined in one write are answered in order', async () => {
    const server = await start();
    const inputs: Buffer[] = [];
    const expected: string[] = [];
    for (let i = 0; i < 60; i++) {
      const kind = i % 4;
      if (kind === 0 || kind === 2) {
        inputs.push(BITS(`/bits/${i}`, { body: `${REQUEST_LINE_TEXT}\r\n#${i}` }));
        expected.push(`BITS_POST /bits/${i}`);
      } else if (kind === 1) {
        inputs.push(GET(`/get/${i}`));
        expected.push(`GET /get/${i}`);
      } else {
        inputs.push(POST(`/post/${i}`, { body: `BITS_POST /x HTTP/1.1\r\n\r\n#${i}` }));
        expected.push(`POST /post/${i}`);
      }
    }
    const result = await sendRaw(server.port, Buffer.concat(inputs), { responses: 60 });
    const responses = finalResponses(result.responses);
    expect(responses.map((r) => `${summary(r).method} ${summary(r).url}`)).toEqual(expected);
    expect(methodsAndUrls(server.requests)).toEqual(expected);
    expect(server.stats()).toMatchObject({ rewritten: 30, restored: 30, passthrough: {} });
  });

  // Four requests whose bodies, chunks and trailers carry request-like text.
  const SPLIT_STREAM = Buffer.concat([
    BITS('/s1', { body: `${REQUEST_LINE_TEXT}\r\n` }),
    GET('/s2'),
    bytes(
      `\r\nPOST /s3 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n${chunk('BITS_', ';x=BITS_POST')}0\r\nT: ${REQUEST_LINE_TEXT}\r\n\r\n`,
    ),
    BITS('/s4', { body: 'B' }),
  ]);

  async function expectSplitStreamDelivered(server: TestServer, result: Awaited<ReturnType<typeof sendRaw>>, what: string): Promise<void> {
    const got = finalResponses(result.responses).map((r) => `${summary(r).method} ${summary(r).url} ${summary(r).length}`);
    const want = ['BITS_POST /s1 22', 'GET /s2 0', 'POST /s3 5', 'BITS_POST /s4 1'];
    if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`${what}: ${JSON.stringify(got)}`);
    const s3 = server.requests.find((r) => r.url === '/s3');
    expect(s3?.body.toString('latin1')).toBe('BITS_');
    expect(s3?.trailers).toEqual({ t: REQUEST_LINE_TEXT });
    expect(server.requests.find((r) => r.url === '/s1')?.body.toString('latin1')).toBe(`${REQUEST_LINE_TEXT}\r\n`);
  }

  test('the same stream split in two at every byte boundary', async () => {
    const server = await start();
    for (let at = 1; at < SPLIT_STREAM.length; at++) {
      server.requests.length = 0;
      const result = await sendRaw(server.port, [SPLIT_STREAM.subarray(0, at), SPLIT_STREAM.subarray(at)], {
        delayMs: 1,
        responses: 4,
      });
      await expectSplitStreamDelivered(server, result, `split at byte ${at}`);
    }
    const stats = server.stats();
    expect(stats?.rewritten).toBe(2 * (SPLIT_STREAM.length - 1));
    expect(stats?.passthrough).toEqual({});
  });

  test('the same stream written one byte at a time', async () => {
    const server = await start();
    const result = await sendRaw(server.port, byteByByte(SPLIT_STREAM), { delayMs: 1, responses: 4 });
    await expectSplitStreamDelivered(server, result, 'byte by byte');
    expect(server.stats()).toMatchObject({ rewritten: 2, restored: 2, passthrough: {} });
  });
});

describe('acceptBitsPost: request-like bytes inside messages are data', () => {
  test('bodies, chunks, chunk extensions, trailers and header values containing BITS_POST / HTTP/1.1', async () => {
    const server = await start();
    const fake = `${REQUEST_LINE_TEXT}\r\nHost: test\r\nContent-Length: 0\r\n\r\n`;
    const chunked =
      `POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n` +
      chunk(fake, ';ext=x') +
      chunk(`\r\n${fake}`, ';BITS_POST=1') +
      `0\r\nX-Trailer: ${REQUEST_LINE_TEXT}\r\nX-Other: ${fake.split('\r\n')[0]}\r\n\r\n`;
    const input = Buffer.concat([
      BITS('/in-body', { body: fake }),
      GET('/in-header', `X-Echo: ${REQUEST_LINE_TEXT}\r\nX-Also: BITS_POST /x HTTP/1.0\r\n`),
      bytes(chunked),
      POST('/post-body', { body: `\r\n\r\n${fake}${fake}` }),
      BITS('/last', { body: fake.slice(0, 9) }),
    ]);
    const result = await sendRaw(server.port, input, { responses: 5 });
    expect(statusCodes(result.responses)).toEqual([200, 200, 200, 200, 200]);
    expect(methodsAndUrls(server.requests)).toEqual([
      'BITS_POST /in-body',
      'GET /in-header',
      'POST /chunked',
      'POST /post-body',
      'BITS_POST /last',
    ]);
    const [inBody, inHeader, inChunks, postBody, last] = server.requests;
    expect(inBody?.body.toString('latin1')).toBe(fake);
    expect(inHeader?.headers['x-echo']).toBe(REQUEST_LINE_TEXT);
    expect(inHeader?.headers['x-also']).toBe('BITS_POST /x HTTP/1.0');
    expect(inChunks?.body.toString('latin1')).toBe(`${fake}\r\n${fake}`);
    expect(inChunks?.trailers).toEqual({ 'x-trailer': REQUEST_LINE_TEXT, 'x-other': REQUEST_LINE_TEXT });
    expect(postBody?.body.toString('latin1')).toBe(`\r\n\r\n${fake}${fake}`);
    expect(last?.body.toString('latin1')).toBe('BITS_POST');
    expect(server.stats()).toMatchObject({ rewritten: 2, restored: 2, passthrough: {} });
  });

  test('chunked requests with extensions and trailers before and after BITS_POST, and a chunked BITS_POST', async () => {
    const server = await start();
    const chunkedRequest = (method: string, target: string): string =>
      `${method} ${target} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n` +
      chunk('hello ', ';a=1;b') +
      chunk('world', ';c=BITS_POST') +
      `0;final=yes\r\nX-Sum: 11\r\n\r\n`;
    const input = Buffer.concat([
      bytes(chunkedRequest('POST', '/before')),
      BITS('/middle', { body: 'mid' }),
      bytes(chunkedRequest('PUT', '/after')),
      bytes(chunkedRequest('BITS_POST', '/chunked-bits')),
      GET('/end'),
    ]);
    const result = await sendRaw(server.port, input, { responses: 5 });
    expect(statusCodes(result.responses)).toEqual([200, 200, 200, 200, 200]);
    expect(server.requests.map((r) => [r.method, r.url, r.body.toString('latin1'), r.trailers['x-sum']])).toEqual([
      ['POST', '/before', 'hello world', '11'],
      ['BITS_POST', '/middle', 'mid', undefined],
      ['PUT', '/after', 'hello world', '11'],
      ['BITS_POST', '/chunked-bits', 'hello world', '11'],
      ['GET', '/end', '', undefined],
    ]);
    expect(server.requests[3]?.bitsPost).toBe(true);
    expectNoMarker(server.requests[3] as RecordedRequest);
  });
});

describe('acceptBitsPost: Expect, HTTP/1.0, leading CRLF', () => {
  test('Expect: 100-continue without a checkContinue listener', async () => {
    const server = await start();
    const connection = await RawConnection.open(server.port);
    try {
      await connection.write(BITS('/continue', { headers: 'Expect: 100-continue\r\nContent-Length: 5\r\n', contentLength: false }));
      expect(await connection.waitFor(() => connection.raw.toString('latin1').includes('100 Continue'))).toBe(true);
      expect(server.requests.map((r) => r.method)).toEqual(['BITS_POST']);
      await connection.write('BITS_');
      expect(await connection.waitForResponses(1)).toBe(true);
      expect(statusCodes(connection.responses)).toEqual([100, 200]);
      expect(server.requests[0]?.body.toString('latin1')).toBe('BITS_');
      expect(server.requests[0]?.bitsPost).toBe(true);
      expectNoMarker(server.requests[0] as RecordedRequest);
    } finally {
      connection.destroy();
    }
  });

  test('Expect: 100-continue with a checkContinue listener that re-emits request', async () => {
    const server = await start();
    const seen: Array<[string | undefined, boolean, string[]]> = [];
    server.server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => {
      seen.push([req.method, isBitsPost(req), [...req.rawHeaders]]);
      res.writeContinue();
      server.server.emit('request', req, res);
    });
    const connection = await RawConnection.open(server.port);
    try {
      await connection.write(BITS('/cc', { headers: 'Expect: 100-continue\r\nContent-Length: 3\r\n', contentLength: false }));
      expect(await connection.waitFor(() => connection.raw.toString('latin1').includes('100 Continue'))).toBe(true);
      await connection.write('abc');
      await connection.write(POST('/plain', { headers: 'Expect: 100-continue\r\n', body: 'x' }));
      expect(await connection.waitForResponses(2)).toBe(true);
      expect(seen).toEqual([
        ['BITS_POST', true, ['Host', 'test', 'Expect', '100-continue', 'Content-Length', '3']],
        ['POST', false, ['Host', 'test', 'Expect', '100-continue', 'Content-Length', '1']],
      ]);
      expect(server.requests.map((r) => [r.method, r.bitsPost, r.body.toString('latin1')])).toEqual([
        ['BITS_POST', true, 'abc'],
        ['POST', false, 'x'],
      ]);
      expect(server.stats()).toMatchObject({ rewritten: 1, restored: 1 });
    } finally {
      connection.destroy();
    }
  });

  test('another Expect reaches a checkExpectation listener as BITS_POST', async () => {
    const server = await start();
    const seen: Array<[string | undefined, boolean]> = [];
    server.server.on('checkExpectation', (req: http.IncomingMessage, res: http.ServerResponse) => {
      seen.push([req.method, isBitsPost(req)]);
      res.writeHead(417, { 'Content-Length': 0 }).end();
    });
    const result = await sendRaw(server.port, BITS('/expect', { headers: 'Expect: something\r\n' }), { responses: 1 });
    expect(statusCodes(result.responses)).toEqual([417]);
    expect(seen).toEqual([['BITS_POST', true]]);
  });

  test('HTTP/1.0 BITS_POST', async () => {
    const server = await start();
    const result = await sendRaw(server.port, BITS('/ten', { version: '1.0', body: 'old' }), { timeoutMs: 5000 });
    expect(statusCodes(result.responses)).toEqual([200]);
    expect(result.closed).toBe(true);
    expect(server.requests.map((r) => [r.method, r.httpVersion, r.body.toString('latin1'), r.bitsPost])).toEqual([
      ['BITS_POST', '1.0', 'old', true],
    ]);
  });

  test('HTTP/1.0 keep-alive BITS_POST followed by a GET', async () => {
    const server = await start();
    const input = Buffer.concat([BITS('/ten', { version: '1.0', headers: 'Connection: keep-alive\r\n' }), GET('/g')]);
    const result = await sendRaw(server.port, input, { responses: 2 });
    expect(statusCodes(result.responses)).toEqual([200, 200]);
    expect(methodsAndUrls(server.requests)).toEqual(['BITS_POST /ten', 'GET /g']);
  });

  test('CR and LF before a BITS_POST, at the start and between requests, as on a plain server', async () => {
    const input = Buffer.concat([
      bytes('\r\n\r\n'),
      BITS('/first', { body: 'a' }),
      bytes('\r\n'),
      GET('/g'),
      bytes('\n\r\n\r'),
      BITS('/second'),
    ]);
    const { shim, plain, shimServer } = await compareWithPlain(input);
    expect(methodsAndUrls(shim)).toEqual(['BITS_POST /first', 'GET /g', 'BITS_POST /second']);
    expect(normalised(shim)).toEqual(normalised(plain));
    expect(shimServer.stats()).toMatchObject({ rewritten: 2, restored: 2, passthrough: {} });
  });
});

// ---------------------------------------------------------------------------------------------
// Comparison with a plain server

function normalised(requests: readonly RecordedRequest[]): string[] {
  return requests.map((r) =>
    plainEquivalent(`${r.method} ${r.url} HTTP/${r.httpVersion} ${JSON.stringify(r.rawHeaders)}`).toString('latin1'),
  );
}

/**
 * Sends `input` to a shimmed server and the PROPPATCH version of it to a plain server, then
 * half-closes both after a pause. Checks the safety rule: the shimmed server's deliveries are a
 * prefix of the plain server's, and every body delivered whole on both sides is the same.
 */
async function compareWithPlain(input: Buffer, options: AcceptBitsPostOptions = {}) {
  const shimServer = await start({ bitsPost: options });
  const plainServer = await start({ bitsPost: false });
  const [shimResult, plainResult] = await Promise.all([
    sendRaw(shimServer.port, input, { endAfterMs: 150 }),
    sendRaw(plainServer.port, plainEquivalent(input), { endAfterMs: 150 }),
  ]);
  const shim = shimServer.requests;
  const plain = plainServer.requests;
  const shimKeys = normalised(shim);
  expect(shimKeys).toEqual(normalised(plain).slice(0, shimKeys.length));
  shim.forEach((request, i) => {
    const twin = plain[i] as RecordedRequest;
    if (request.complete && twin.complete) {
      expect(plainEquivalent(request.body).equals(twin.body)).toBe(true);
    }
  });
  return { shim, plain, shimResult, plainResult, shimServer };
}

const SMUGGLED = BITS('/smuggled');
const H = 'Host: test\r\n';

/** Shapes that desynchronise naive parsers; [name, bytes before the BITS_POST, reason]. */
const SMUGGLING: Array<[string, string, PassthroughReason]> = [
  ['CL + TE', `POST /a HTTP/1.1\r\n${H}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, 'content-length-with-transfer-encoding'],
  ['TE + CL', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n`, 'content-length-with-transfer-encoding'],
  ['duplicate Content-Length, same value', `POST /a HTTP/1.1\r\n${H}Content-Length: 0\r\nContent-Length: 0\r\n\r\n`, 'duplicate-content-length'],
  ['duplicate Content-Length, different values', `POST /a HTTP/1.1\r\n${H}Content-Length: 0\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n`, 'duplicate-content-length'],
  ['Content-Length: +5', `POST /a HTTP/1.1\r\n${H}Content-Length: +5\r\n\r\nabcde`, 'invalid-content-length'],
  ['tab in Content-Length', `POST /a HTTP/1.1\r\n${H}Content-Length:\t5\r\n\r\nabcde`, 'invalid-content-length'],
  ['Content-Length: 5, 5', `POST /a HTTP/1.1\r\n${H}Content-Length: 5, 5\r\n\r\nabcde`, 'invalid-content-length'],
  ['Transfer-Encoding: gzip, chunked', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`, 'transfer-encoding'],
  ['Transfer-Encoding twice', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n`, 'transfer-encoding'],
  ['Transfer-Encoding: identity', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: identity\r\n\r\n`, 'transfer-encoding'],
  ['obs-fold', `POST /a HTTP/1.1\r\n${H}X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n`, 'obs-fold'],
  ['obs-fold hiding a Content-Length', `POST /a HTTP/1.1\r\n${H}X-A: a\r\n Content-Length: 5\r\n\r\nabcde`, 'obs-fold'],
  ['bare LF in the request line', `POST /a HTTP/1.1\n${H}Content-Length: 0\r\n\r\n`, 'bare-line-feed'],
  ['bare LF in headers', `POST /a HTTP/1.1\r\n${H}Content-Length: 5\n\r\nabcde`, 'bare-line-feed'],
  ['bare LF ending the head', `POST /a HTTP/1.1\r\n${H}Content-Length: 0\r\n\n`, 'bare-line-feed'],
  ['bare CR in headers', `POST /a HTTP/1.1\r\n${H}X-A: a\rContent-Length: 0\r\n\r\n`, 'bare-carriage-return'],
  ['bad chunk size', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n`, 'invalid-chunk-size'],
  ['negative chunk size', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n-1\r\n\r\n`, 'invalid-chunk-size'],
  ['chunk size with space', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5 \r\nabcde\r\n0\r\n\r\n`, 'chunk-extension'],
  ['chunk extension with a quoted string', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5;a="b"\r\nabcde\r\n0\r\n\r\n`, 'chunk-extension'],
  ['chunk longer than its size', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n3\r\nabcde\r\n0\r\n\r\n`, 'invalid-chunk-end'],
  ['Content-Length in trailers', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\nabcde`, 'trailer-framing-header'],
  ['obs-fold in trailers', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n`, 'obs-fold'],
  ['header line without a colon', `POST /a HTTP/1.1\r\n${H}Content-Length 5\r\n\r\nabcde`, 'invalid-header-line'],
  ['Upgrade without an upgrade listener', `GET /a HTTP/1.1\r\n${H}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n`, 'upgrade'],
  ['HTTP/2 preface', `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, 'h2-preface'],
  ['HTTP/1.2 request line', `GET /a HTTP/1.2\r\n${H}\r\n`, 'http-version'],
  ['request line without version', `GET /a\r\n`, 'http-version'],
];

/** Odd bytes the tracker may follow (llhttp rejects them or agrees on the framing). */
const OTHER_SHAPES: Array<[string, string]> = [
  ['space before the colon of Content-Length', `POST /a HTTP/1.1\r\n${H}Content-Length : 5\r\n\r\nabcde`],
  ['space before the colon of Transfer-Encoding', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n`],
  ['NUL in a header value', `POST /a HTTP/1.1\r\n${H}X-A: a\x00b\r\nContent-Length: 0\r\n\r\n`],
  ['Connection: close before the BITS_POST', `GET /a HTTP/1.1\r\n${H}Connection: close\r\n\r\n`],
  ['HTTP/1.0 with Transfer-Encoding: chunked', `POST /a HTTP/1.0\r\n${H}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n`],
  ['Content-Length with trailing spaces', `POST /a HTTP/1.1\r\n${H}Content-Length: 5  \r\n\r\nabcde`],
  ['chunked with extensions and trailers', `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nabcde\r\n0\r\nT: v\r\n\r\n`],
  ['space-separated method garbage', `POST  /a HTTP/1.1\r\n${H}Content-Length: 0\r\n\r\n`],
  ['unknown method', `FOO /a HTTP/1.1\r\n${H}Content-Length: 0\r\n\r\n`],
  ['huge Content-Length', `POST /a HTTP/1.1\r\n${H}Content-Length: 99999999999999999999\r\n\r\n`],
  ['BITS_POST with a bad target', `BITS_POST /a b HTTP/1.1\r\n${H}Content-Length: 0\r\n\r\n`],
];

describe('acceptBitsPost: never delivers what a plain server would not', () => {
  test.each(SMUGGLING)('%s, then BITS_POST in the same write', async (_name, prefix, reason) => {
    const { shim, shimServer } = await compareWithPlain(Buffer.concat([bytes(prefix), SMUGGLED]));
    expect(shim.some((r) => r.url === '/smuggled')).toBe(false);
    expect(shim.some((r) => r.method === 'BITS_POST')).toBe(false);
    expect(shimServer.reasons).toEqual([reason]);
    expect(shimServer.stats()).toMatchObject({ rewritten: 0, restored: 0, passthrough: { [reason]: 1 } });
  });

  test.each(OTHER_SHAPES)('%s, then BITS_POST in the same write', async (_name, prefix) => {
    await compareWithPlain(Buffer.concat([bytes(prefix), SMUGGLED]));
  });

  test('valid framing: the shimmed server delivers exactly what the plain server does', async () => {
    const input = Buffer.concat([
      POST('/a', { body: 'BITS_POST' }),
      bytes(`POST /c HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n${chunk('BITS_POST /x HTTP/1.1\r\n', ';q=1')}0\r\nT: v\r\n\r\n`),
      SMUGGLED,
      GET('/g'),
    ]);
    const { shim, plain } = await compareWithPlain(input);
    expect(shim).toHaveLength(4);
    expect(normalised(shim)).toEqual(normalised(plain));
    expect(shim[2]?.method).toBe('BITS_POST');
  });
});

describe('acceptBitsPost: random damaged streams, compared with a plain server', () => {
  /** Pieces the damage is made of: framing characters and whole framing headers. */
  const DAMAGE = [
    ' ', '\t', '\r', '\n', ':', ';', '"', '0', '5', 'a', 'B', '\x00', '\x7f', '\xff', '+', '-', ',', '\r\n', '\r\n\r\n',
    `${REQUEST_LINE_TEXT}\r\n`, 'Content-Length: 3\r\n', 'Content-Length: 0\r\n', 'Transfer-Encoding: chunked\r\n',
    'Transfer-Encoding: chunked, chunked\r\n', 'Content-Length : 2\r\n', 'Upgrade: x\r\nConnection: upgrade\r\n',
    'Connection: close\r\n', 'Expect: 100-continue\r\n', ' HTTP/1.0', '\r\n ', '0x', 'fffffffffffffff', 'CONNECT', 'PRI',
    `X-Long: ${'x'.repeat(210)}\r\n`,
  ];

  function randomStream(rnd: () => number): string {
    const pick = <T>(items: readonly T[]): T => items[Math.floor(rnd() * items.length)] as T;
    const body = (): string => pick(['', 'abc', `${REQUEST_LINE_TEXT}\r\n`, '\r\n', 'B', '0\r\n\r\n']);
    let text = '';
    const count = 2 + Math.floor(rnd() * 4);
    for (let i = 0; i < count; i++) {
      const b = body();
      const chunks = `${b.length > 0 ? chunk(b, pick(['', ';e=1'])) : ''}0\r\n${pick(['', 'T: v\r\n'])}\r\n`;
      switch (pick(['get', 'post', 'chunked', 'bits', 'bits', 'bits-chunked'])) {
        case 'get':
          text += `GET /g${i} HTTP/1.1\r\n${H}\r\n`;
          break;
        case 'post':
          text += `POST /p${i} HTTP/1.1\r\n${H}Content-Length: ${b.length}\r\n\r\n${b}`;
          break;
        case 'chunked':
          text += `POST /c${i} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n${chunks}`;
          break;
        case 'bits':
          text += `BITS_POST /b${i} HTTP/1.1\r\n${H}Content-Length: ${b.length}\r\n\r\n${b}`;
          break;
        default:
          text += `BITS_POST /bc${i} HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n${chunks}`;
      }
    }
    const damage = Math.floor(rnd() * 5);
    for (let d = 0; d < damage; d++) {
      const at = Math.floor(rnd() * text.length);
      const kind = rnd();
      if (kind < 0.4) text = text.slice(0, at) + pick(DAMAGE) + text.slice(at);
      else if (kind < 0.7) text = text.slice(0, at) + text.slice(at + 1 + Math.floor(rnd() * 3));
      else text = text.slice(0, at) + pick(DAMAGE) + text.slice(at + 1);
    }
    return text;
  }

  function splitRandomly(data: Buffer, mode: number, rnd: () => number): Buffer[] {
    if (mode === 0) return [data];
    if (mode === 1) return byteByByte(data);
    if (mode === 2) {
      const at = Math.floor(rnd() * data.length);
      return [data.subarray(0, at), data.subarray(at)];
    }
    const pieces: Buffer[] = [];
    for (let at = 0; at < data.length; at += 7) pieces.push(data.subarray(at, at + 7));
    return pieces;
  }

  /** A server that logs what each client port got delivered: requests with bodies, upgrades, CONNECTs. */
  async function loggingServer(bitsPost: AcceptBitsPostOptions | false) {
    const byPort = new Map<number, Array<{ line: string; body: string; complete: boolean }>>();
    // The client's port, read when the connection is accepted (later the peer may be gone).
    const ports = new WeakMap<net.Socket, number>();
    const log = (req: http.IncomingMessage, kind: string) => {
      const entry = { line: `${kind}${req.method} ${req.url} ${JSON.stringify(req.rawHeaders)}`, body: '', complete: false };
      const port = ports.get(req.socket) ?? -1;
      byPort.set(port, [...(byPort.get(port) ?? []), entry]);
      return entry;
    };
    const server = await startServer(
      (req, res) => {
        const entry = log(req, '');
        req.setEncoding('latin1');
        req.on('data', (data: string) => (entry.body += data));
        req.on('end', () => {
          entry.complete = true;
          res.end();
        });
        req.on('error', () => undefined);
      },
      { bitsPost },
    );
    server.server.prependListener('connection', (socket: net.Socket) => ports.set(socket, socket.remotePort ?? -1));
    server.server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => {
      log(req, 'upgrade ');
      socket.destroy();
    });
    server.server.on('connect', (req: http.IncomingMessage, socket: net.Socket) => {
      log(req, 'connect ');
      socket.destroy();
    });
    started.push(server);
    return { ...server, byPort };
  }

  test('800 seeded random streams with random damage and random splits', async () => {
    const shim = await loggingServer({ maxLineLength: 200 });
    const plain = await loggingServer(false);
    let bitsDelivered = 0;
    let inconclusive = 0;
    /** Runs one case; returns a description of the disagreement, or null. */
    const runCase = async (seed: number, endAfterMs: number): Promise<string | null> => {
      const text = randomStream(seededRandom(seed));
      const input = bytes(text);
      const mode = seed % 4;
      const [shimResult, plainResult] = await Promise.all([
        sendRaw(shim.port, splitRandomly(input, mode, seededRandom(seed + 1)), { endAfterMs }),
        sendRaw(plain.port, splitRandomly(plainEquivalent(input), mode, seededRandom(seed + 1)), { endAfterMs }),
      ]);
      // Client ports get reused by later connections: take this connection's log out of the map.
      const shimLog = shim.byPort.get(shimResult.localPort) ?? [];
      const plainLog = plain.byPort.get(plainResult.localPort) ?? [];
      shim.byPort.delete(shimResult.localPort);
      plain.byPort.delete(plainResult.localPort);
      const shimLines = shimLog.map((entry) => plainEquivalent(entry.line).toString('latin1'));
      const plainLines = plainLog.map((entry) => entry.line).slice(0, shimLines.length);
      // Bodies must be the same too, where both servers read them whole.
      const sameBodies = shimLog.every((entry, i) => {
        const twin = plainLog[i];
        return !entry.complete || twin === undefined || !twin.complete || plainEquivalent(entry.body).toString('latin1') === twin.body;
      });
      if (sameBodies && JSON.stringify(shimLines) === JSON.stringify(plainLines)) {
        bitsDelivered += shimLog.filter((entry) => entry.line.startsWith('BITS_POST /')).length;
        return null;
      }
      // Replacing BITS_POST by PROPPATCH is only faithful when no BITS_POST straddles the end of a
      // body (body "...BITS_" + next request "POST ..."); such cases prove nothing either way.
      if (plainLog.some((entry) => /P(R(O(P(P(A(T(C)?)?)?)?)?)?)?$/.test(entry.body))) {
        inconclusive++;
        return null;
      }
      const show = (log: typeof shimLog): string => log.map((e) => `${e.line} ${JSON.stringify(e.body)}`).join('\n       ');
      return `seed ${seed}: ${JSON.stringify(text)}\nshim:  ${show(shimLog)}\nplain: ${show(plainLog)}`;
    };
    const disagreements: number[] = [];
    for (let seed = 1; seed <= 800; seed += 20) {
      const batch: Array<Promise<void>> = [];
      for (let i = seed; i < seed + 20; i++) {
        batch.push(runCase(i, 30).then((found) => void (found !== null && disagreements.push(i))));
      }
      await Promise.all(batch);
    }
    // A loaded machine may not have read every body within 30 ms: run disagreements again, slowly.
    for (const seed of disagreements) {
      const found = await runCase(seed, 300);
      if (found !== null) throw new Error(found);
    }
    // The streams are mostly valid: many BITS_POST requests must have got through.
    expect(bitsDelivered).toBeGreaterThan(400);
    expect(inconclusive).toBeLessThan(20);
  });
});

describe('acceptBitsPost: forged markers and method overrides', () => {
  test('a client-sent marker header first on a POST stays a POST and is counted', async () => {
    const server = await start();
    // An all-zero value, the real nonce with its first character changed, and an empty value.
    const forged = ['0'.repeat(32), `x${NONCE.slice(1)}`, ''];
    const input = Buffer.concat(
      forged.map((value, i) => bytes(`POST /forged/${i} HTTP/1.1\r\n${MARKER_NAME}: ${value}\r\nHost: test\r\nContent-Length: 0\r\n\r\n`)),
    );
    const result = await sendRaw(server.port, input, { responses: forged.length });
    expect(statusCodes(result.responses)).toEqual([200, 200, 200]);
    expect(server.requests.map((r) => [r.method, r.bitsPost, r.rawHeaders[0], r.rawHeaders[1]])).toEqual(
      forged.map((value) => ['POST', false, MARKER_NAME, value]),
    );
    expect(server.stats()).toMatchObject({ forgedMarkers: 3, restored: 0, rewritten: 0 });
  });

  test('a marker on a GET or not in first position is ignored; on a BITS_POST it is removed', async () => {
    const server = await start();
    const input = Buffer.concat([
      bytes(`GET /g HTTP/1.1\r\n${MARKER_NAME}: abc\r\nHost: test\r\n\r\n`),
      POST('/second', { headers: `${MARKER_NAME}: abc\r\n` }),
      BITS('/bits', { headers: `${MARKER_NAME}: abc\r\n${MARKER_NAME.toUpperCase()}: def\r\n` }),
    ]);
    const result = await sendRaw(server.port, input, { responses: 3 });
    expect(statusCodes(result.responses)).toEqual([200, 200, 200]);
    expect(server.requests.map((r) => [r.method, r.bitsPost])).toEqual([
      ['GET', false],
      ['POST', false],
      ['BITS_POST', true],
    ]);
    expect(server.requests[0]?.headers[markerKey]).toBe('abc');
    expect(server.requests[1]?.headers[markerKey]).toBe('abc');
    expectNoMarker(server.requests[2] as RecordedRequest);
    expect(server.stats()).toMatchObject({ forgedMarkers: 1, restored: 1, rewritten: 1 });
  });

  test('POST with X-HTTP-Method-Override: BITS_POST stays POST', async () => {
    const server = await start();
    const result = await sendRaw(server.port, POST('/override', { headers: 'X-HTTP-Method-Override: BITS_POST\r\n', body: 'x' }), {
      responses: 1,
    });
    expect(summary(result.responses[0])).toMatchObject({ method: 'POST' });
    expect(server.requests.map((r) => [r.method, r.bitsPost, r.headers['x-http-method-override']])).toEqual([
      ['POST', false, 'BITS_POST'],
    ]);
  });
});

describe('acceptBitsPost: limits', () => {
  test.each([
    ['maxLineLength 64', { maxLineLength: 64 }, 200],
    ['default maxLineLength (maxHeaderSize)', {}, 20_000],
  ])('an oversized BITS_POST request line gets what a plain server answers to the same bytes (%s)', async (_name, options, targetLength) => {
    const input = BITS(`/${'a'.repeat(targetLength)}`);
    const shim = await start({ bitsPost: options });
    const plain = await start({ bitsPost: false });
    const [shimResult, plainResult] = await Promise.all([sendRaw(shim.port, input), sendRaw(plain.port, input)]);
    expect(statusCodes(shimResult.responses)).toEqual([400]);
    expect(statusCodes(shimResult.responses)).toEqual(statusCodes(plainResult.responses));
    expect(shimResult.closed).toBe(true);
    expect(shim.requests).toHaveLength(0);
    expect(shim.reasons).toEqual(['line-too-long']);
  });

  test('headers near maxHeaderSize: a BITS_POST has MARKER_OVERHEAD (+1 in Node accounting) bytes less room', async () => {
    // The marker line the shim inserts makes a BITS_POST head MARKER_OVERHEAD bytes longer on the
    // wire (`BITS-Upload-Method-Shim: <nonce>\r\n` minus the 5 bytes of `BITS_`). Node's
    // maxHeaderSize counts only URL, header names and header values, not the method nor ': ' and
    // CRLF, so there the marker costs its name plus value: MARKER_LINE.length - 4, which is
    // MARKER_OVERHEAD + 1 for Node's limit.
    expect(MARKER_OVERHEAD).toBe(MARKER_LINE.length - 'BITS_'.length);
    const markerCost = MARKER_LINE.length - ': \r\n'.length;
    const maxHeaderSize = 4096;
    const shim = await start({ serverOptions: { maxHeaderSize } });
    const plain = await start({ bitsPost: false, serverOptions: { maxHeaderSize } });
    const padded = (method: string, pad: number): Buffer =>
      request(method, '/p', { headers: `X-Pad: ${'p'.repeat(pad)}\r\n` });
    const status = async (port: number, input: Buffer): Promise<number> => {
      const result = await sendRaw(port, input, { responses: 1 });
      return statusCodes(result.responses)[0] ?? 0;
    };
    // Largest padding a plain server accepts for a POST.
    let low = 0;
    let high = maxHeaderSize;
    while (low < high) {
      const mid = Math.ceil((low + high) / 2);
      if ((await status(plain.port, padded('POST', mid))) === 200) low = mid;
      else high = mid - 1;
    }
    const limit = low;
    expect(limit).toBeGreaterThan(maxHeaderSize - 100);
    expect(await status(plain.port, padded('POST', limit + 1))).toBe(431);
    // Other requests on the shimmed server have exactly the same room.
    expect(await status(shim.port, padded('POST', limit))).toBe(200);
    expect(await status(shim.port, padded('POST', limit + 1))).toBe(431);
    expect(await status(shim.port, padded('PROPPATCH', limit))).toBe(200);
    // A BITS_POST has markerCost bytes less.
    expect(await status(shim.port, padded('BITS_POST', limit - markerCost))).toBe(200);
    expect(await status(shim.port, padded('BITS_POST', limit - markerCost + 1))).toBe(431);
    expect(shim.requests.filter((r) => r.method === 'BITS_POST')).toHaveLength(1);
  });
});

describe('acceptBitsPost: withheld request lines (slowloris)', () => {
  const holdTimeout = 300;

  test('a client that sends BITS_PO and stalls gets 408 and close after holdTimeout', async () => {
    const server = await start({ bitsPost: { holdTimeout } });
    const result = await sendRaw(server.port, 'BITS_PO', { timeoutMs: 5000 });
    expect(statusCodes(result.responses)).toEqual([408]);
    expect(result.responses[0]?.headers.connection).toBe('close');
    expect(result.closed).toBe(true);
    expect(result.elapsedMs).toBeGreaterThanOrEqual(holdTimeout - 20);
    expect(result.elapsedMs).toBeLessThan(holdTimeout + 1500);
    expect(server.requests).toHaveLength(0);
    expect(server.reasons).toEqual(['hold-timeout']);
    expect(server.stats()?.passthrough).toEqual({ 'hold-timeout': 1 });
  });

  test('the same after a first keep-alive request', async () => {
    const server = await start({ bitsPost: { holdTimeout } });
    const connection = await RawConnection.open(server.port);
    try {
      await connection.write(BITS('/first'));
      expect(await connection.waitForResponses(1)).toBe(true);
      // Idle longer than the hold timeout: only withheld bytes are timed.
      await delay(holdTimeout + 100);
      expect(connection.serverClosed).toBe(false);
      const stalledAt = Date.now();
      await connection.write('BITS_POST /sec');
      expect(await connection.waitForClose(5000)).toBe(true);
      const waited = (connection.closedAt ?? 0) - stalledAt;
      expect(waited).toBeGreaterThanOrEqual(holdTimeout - 20);
      expect(waited).toBeLessThan(holdTimeout + 1500);
      expect(statusCodes(connection.responses)).toEqual([200, 408]);
      expect(methodsAndUrls(server.requests)).toEqual(['BITS_POST /first']);
    } finally {
      connection.destroy();
    }
  });

  test('a client trickling a BITS_POST line one byte every 50 ms still gets 408 at holdTimeout', async () => {
    const server = await start({ bitsPost: { holdTimeout } });
    const line = 'BITS_POST /trickle HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n';
    const result = await sendRaw(server.port, byteByByte(line), { delayMs: 50, timeoutMs: 5000 });
    expect(statusCodes(result.responses)).toEqual([408]);
    expect(result.closed).toBe(true);
    // The whole line would take over 1.3 s at this pace.
    expect(result.elapsedMs).toBeLessThan(line.length * 50);
    expect(result.elapsedMs).toBeGreaterThanOrEqual(holdTimeout - 20);
    expect(server.requests).toHaveLength(0);
  });

  test('a line completed before holdTimeout is served, and the timer does not fire later', async () => {
    // A longer limit here: the pause below must stay well inside it even on a loaded machine.
    const longer = 2 * holdTimeout;
    const server = await start({ bitsPost: { holdTimeout: longer } });
    const connection = await RawConnection.open(server.port);
    try {
      await connection.write('BITS_PO');
      await delay(50);
      await connection.write(bytes(BITS('/in-time')).subarray('BITS_PO'.length));
      expect(await connection.waitForResponses(1)).toBe(true);
      await delay(longer + 100);
      expect(connection.serverClosed).toBe(false);
      await connection.write(GET('/still-open'));
      expect(await connection.waitForResponses(2)).toBe(true);
      expect(statusCodes(connection.responses)).toEqual([200, 200]);
      expect(server.reasons).toEqual([]);
    } finally {
      connection.destroy();
    }
  });

  test('a 408 never lands inside a response that has already started', async () => {
    // GET /stream's response is still being written when the withheld line times out.
    const server = await startServer(
      (req, res) => {
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.flushHeaders();
        let parts = 0;
        const timer = setInterval(() => {
          res.write(`part ${parts}\n`);
          if (++parts === 10) {
            clearInterval(timer);
            res.end();
          }
        }, 60);
        res.on('close', () => clearInterval(timer));
        req.resume();
      },
      { bitsPost: { holdTimeout } },
    );
    started.push(server);
    const result = await sendRaw(server.port, Buffer.concat([GET('/stream'), bytes('BITS_PO')]), { timeoutMs: 5000 });
    expect(result.closed).toBe(true);
    expect(result.raw.toString('latin1')).not.toContain('408 Request Timeout');
    const responses = parseResponses(result.raw, true);
    expect(responses).toHaveLength(1);
    expect(responses[0]?.statusCode).toBe(200);
    expect(responses[0]?.complete).toBe(false);
  });

  test.each(['B', 'BITS_PO', 'BITS_POST /x HTT', 'BITS_POST /x HTTP/1.1\r'])(
    'EOF after %j releases the withheld bytes: same answer as a plain server',
    async (prefix) => {
      const shim = await start();
      const plain = await start({ bitsPost: false });
      const [shimResult, plainResult] = await Promise.all([
        sendRaw(shim.port, prefix, { endAfterMs: 50, timeoutMs: 5000 }),
        sendRaw(plain.port, prefix, { endAfterMs: 50, timeoutMs: 5000 }),
      ]);
      expect(statusCodes(shimResult.responses)).toEqual([400]);
      expect(statusCodes(shimResult.responses)).toEqual(statusCodes(plainResult.responses));
      expect(shimResult.closed).toBe(true);
      expect(shim.requests).toHaveLength(0);
      expect(shim.reasons).toEqual(['end-of-stream']);
    },
  );
});

describe('acceptBitsPost: connection selection', () => {
  test("connections: 'first-request': GET then BITS_POST gets 400 for the BITS_POST (documented limitation)", async () => {
    const server = await start({ bitsPost: { connections: 'first-request' } });
    const connection = await RawConnection.open(server.port);
    try {
      await connection.write(GET('/first'));
      expect(await connection.waitForResponses(1)).toBe(true);
      await connection.write(BITS('/later'));
      expect(await connection.waitForClose(5000)).toBe(true);
      expect(statusCodes(connection.responses)).toEqual([200, 400]);
      expect(methodsAndUrls(server.requests)).toEqual(['GET /first']);
      expect(server.reasons).toEqual(['not-bits-first-request']);
      expect(server.stats()).toMatchObject({ trackedConnections: 1, rewritten: 0, passthrough: { 'not-bits-first-request': 1 } });
    } finally {
      connection.destroy();
    }
  });

  test("connections: 'first-request': a connection starting with BITS_POST keeps working", async () => {
    const server = await start({ bitsPost: { connections: 'first-request' } });
    const connection = await RawConnection.open(server.port);
    try {
      const steps = [BITS('/1', { body: 'a' }), GET('/2'), BITS('/3', { body: 'b' }), POST('/4', { body: 'c' }), BITS('/5')];
      for (const [index, input] of steps.entries()) {
        await connection.write(input);
        expect(await connection.waitForResponses(index + 1)).toBe(true);
      }
      expect(statusCodes(connection.responses)).toEqual([200, 200, 200, 200, 200]);
      expect(methodsAndUrls(server.requests)).toEqual(['BITS_POST /1', 'GET /2', 'BITS_POST /3', 'POST /4', 'BITS_POST /5']);
      expect(server.reasons).toEqual([]);
      expect(server.stats()).toMatchObject({ rewritten: 3, restored: 3 });
    } finally {
      connection.destroy();
    }
  });

  test("connections: 'first-request': pipelined GET then BITS_POST in one write, as a plain server", async () => {
    const { shim, shimServer } = await compareWithPlain(Buffer.concat([GET('/g'), BITS('/b')]), { connections: 'first-request' });
    expect(methodsAndUrls(shim)).toEqual(['GET /g']);
    expect(shimServer.reasons).toEqual(['not-bits-first-request']);
  });

  test("connections: 'first-request': a connection whose first request is a large POST goes native", async () => {
    // The first body fills the socket's buffer and pauses it; the hand-back must wait for the resume.
    const server = http.createServer((req, res) => {
      let length = 0;
      req.on('data', (chunk: Buffer) => (length += chunk.length));
      req.on('end', () => res.end(String(length)));
    });
    acceptBitsPost(server, { connections: 'first-request' });
    let jsBytes = 0;
    server.on('connection', (socket: net.Socket) => socket.on('data', (chunk: Buffer) => (jsBytes += chunk.length)));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const client = net.connect((server.address() as AddressInfo).port, '127.0.0.1');
    const body = Buffer.alloc(8 * 1024 * 1024, 0x78);
    const post = (path: string): Promise<string> =>
      new Promise((resolve) => {
        client.once('data', (data: Buffer) => resolve(data.toString('latin1').split('\r\n\r\n')[1] ?? ''));
        client.write(`POST ${path} HTTP/1.1\r\nHost: test\r\nContent-Length: ${body.length}\r\n\r\n`);
        client.write(body);
      });
    try {
      expect(await post('/first')).toBe(String(body.length));
      const afterFirst = jsBytes;
      expect(afterFirst).toBeLessThan(body.length);
      expect(await post('/second')).toBe(String(body.length));
      expect(jsBytes - afterFirst).toBeLessThan(64 * 1024);
    } finally {
      client.destroy();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  test('filter returning false leaves a connection untouched', async () => {
    const sockets: Array<[boolean, string | undefined]> = [];
    const server = await start({
      bitsPost: {
        filter: (socket) => {
          sockets.push([socket instanceof net.Socket, socket.remoteAddress]);
          return sockets.length !== 1;
        },
      },
    });
    const untouched = await sendRaw(server.port, Buffer.concat([GET('/a'), BITS('/b')]));
    // Node's 400 for the BITS_POST goes out before the GET's answer, then the connection closes.
    expect(statusCodes(untouched.responses)).toEqual([400]);
    expect(untouched.closed).toBe(true);
    const tracked = await sendRaw(server.port, Buffer.concat([GET('/c'), BITS('/d')]), { responses: 2 });
    expect(statusCodes(tracked.responses)).toEqual([200, 200]);
    expect(methodsAndUrls(server.requests)).toEqual(['GET /a', 'GET /c', 'BITS_POST /d']);
    expect(sockets).toEqual([
      [true, '127.0.0.1'],
      [true, '127.0.0.1'],
    ]);
    expect(server.stats()).toMatchObject({ trackedConnections: 1, rewritten: 1 });
    expect(server.reasons).toEqual([]);
  });

  test('shim: false leaves every connection untouched', async () => {
    const server = await start({ bitsPost: { shim: false } });
    const result = await sendRaw(server.port, Buffer.concat([GET('/a'), BITS('/b')]));
    expect(statusCodes(result.responses)).toEqual([400]);
    expect(methodsAndUrls(server.requests)).toEqual(['GET /a']);
    expect(server.stats()).toMatchObject({ trackedConnections: 0, rewritten: 0 });
  });

  test('a server with the lenient parser (insecureHTTPParser) is never shimmed, with a warning', async () => {
    const emitWarning = jest.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    try {
      const server = await start({ serverOptions: { insecureHTTPParser: true } });
      expect(emitWarning).toHaveBeenCalledWith(
        expect.stringContaining('lenient HTTP parser'),
        expect.objectContaining({ code: 'BITS_UPLOAD_LENIENT_PARSER' }),
      );
      // Lenient llhttp would fold ' folded' into a marker header inserted before it was seen.
      const folded = bytes('BITS_POST /f HTTP/1.1\r\n folded\r\nHost: test\r\nContent-Length: 0\r\n\r\n');
      const result = await sendRaw(server.port, Buffer.concat([GET('/a'), folded]));
      // Node may drop the reply to GET /a when a parse error follows in the same packet.
      expect(statusCodes(result.responses).at(-1)).toBe(400);
      expect(methodsAndUrls(server.requests)).toEqual(['GET /a']);
      expect(server.stats()).toMatchObject({ trackedConnections: 0, rewritten: 0 });
    } finally {
      emitWarning.mockRestore();
    }
  });

  test('onPassthrough is called once per connection, with the reason and the socket', async () => {
    const calls: Array<[PassthroughReason, string | undefined]> = [];
    const server = await start({
      bitsPost: { onPassthrough: (reason, socket) => calls.push([reason, socket.remoteAddress]) },
    });
    // Two reasons to give up on one connection: only the first one is reported.
    const input = Buffer.concat([
      BITS('/ok'),
      bytes(`POST /a HTTP/1.1\r\n${H}Content-Length: 0\r\nContent-Length: 0\r\n\r\n`),
      bytes(`GET /b HTTP/1.1\n\n`),
      BITS('/no'),
    ]);
    await sendRaw(server.port, input);
    await sendRaw(server.port, GET('/clean'), { responses: 1 });
    expect(calls).toEqual([['duplicate-content-length', '127.0.0.1']]);
    expect(server.reasons).toEqual(['duplicate-content-length']);
    expect(methodsAndUrls(server.requests)).toEqual(['BITS_POST /ok', 'GET /clean']);
  });
});

describe('acceptBitsPost: stats', () => {
  test('counters over several connections', async () => {
    const server = await start({
      bitsPost: { trustedProxy: { addresses: ['127.0.0.1'], secret: 'proxy-secret-0123456789' } },
    });
    await sendRaw(server.port, Buffer.concat([BITS('/1'), BITS('/2'), GET('/3')]), { responses: 3 });
    await sendRaw(server.port, bytes(`POST /f HTTP/1.1\r\n${MARKER_NAME}: nope\r\n${H}Content-Length: 0\r\n\r\n`), { responses: 1 });
    await sendRaw(server.port, Buffer.concat([bytes(`GET / HTTP/1.1\r\n${H}Content-Length: +1\r\n\r\nx`), BITS('/x')]));
    await sendRaw(server.port, Buffer.concat([bytes(`GET / HTTP/1.1\r\n${H}Content-Length: -1\r\n\r\n`), BITS('/x')]));
    const proxied = (secret: string): string =>
      `X-BITS-Original-Method: BITS_POST\r\nX-BITS-Proxy-Secret: ${secret}\r\n`;
    await sendRaw(server.port, POST('/proxied', { headers: proxied('proxy-secret-0123456789') }), { responses: 1 });
    await sendRaw(server.port, POST('/proxied-bad', { headers: proxied('proxy-secret-0123456780') }), { responses: 1 });
    expect(server.stats()).toEqual({
      trackedConnections: 6,
      rewritten: 2,
      restored: 2,
      passthrough: { 'invalid-content-length': 2 },
      forgedMarkers: 1,
      proxyAccepted: 1,
      proxyRejected: 1,
    });
    expect(server.requests.map((r) => [r.method, r.url, r.bitsPost])).toEqual([
      ['BITS_POST', '/1', true],
      ['BITS_POST', '/2', true],
      ['GET', '/3', false],
      ['POST', '/f', false],
      ['BITS_POST', '/proxied', true],
      ['POST', '/proxied-bad', false],
    ]);
  });
});

describe('acceptBitsPost: upgrades and CONNECT', () => {
  test('websocket-style Upgrade: frames containing BITS_POST reach the upgrade listener unchanged', async () => {
    const server = await start();
    const upgraded: Array<{ method: string | undefined; head: Buffer; data: Buffer[] }> = [];
    server.server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
      const entry = { method: req.method, head: Buffer.from(head), data: [] as Buffer[] };
      upgraded.push(entry);
      socket.on('data', (data: Buffer) => entry.data.push(data));
      socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    });
    const frameOne = Buffer.concat([Buffer.from([0x81, 0x7e, 0x00, 0x40]), bytes(`${REQUEST_LINE_TEXT}\r\nHost: test\r\nContent-Length: 0\r\n\r\n`)]);
    const frameTwo = Buffer.concat([bytes(`\r\n${REQUEST_LINE_TEXT}\r\n\r\n`), BITS('/inside'), randomBytes(64)]);
    const connection = await RawConnection.open(server.port);
    try {
      await connection.write(Buffer.concat([GET('/ws', 'Connection: Upgrade\r\nUpgrade: websocket\r\n'), frameOne]));
      expect(await connection.waitFor(() => connection.raw.toString('latin1').includes('101 Switching'))).toBe(true);
      await connection.write(frameTwo);
      const total = frameOne.length + frameTwo.length;
      const got = (): number => (upgraded[0] ? upgraded[0].head.length + Buffer.concat(upgraded[0].data).length : 0);
      for (let i = 0; i < 500 && got() < total; i++) await delay(10);
      expect(upgraded).toHaveLength(1);
      const entry = upgraded[0];
      if (entry === undefined) throw new Error('no upgrade');
      expect(entry.method).toBe('GET');
      expect(Buffer.concat([entry.head, ...entry.data]).equals(Buffer.concat([frameOne, frameTwo]))).toBe(true);
      expect(server.requests).toHaveLength(0);
      expect(server.reasons).toEqual(['upgrade']);
      expect(server.stats()).toMatchObject({ rewritten: 0, restored: 0 });
    } finally {
      connection.destroy();
    }
  });

  test('a BITS_POST with an Upgrade header arrives at the upgrade listener as BITS_POST', async () => {
    const server = await start();
    const seen: Array<[string | undefined, boolean, string[], string]> = [];
    server.server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
      seen.push([req.method, isBitsPost(req), [...req.rawHeaders], head.toString('latin1')]);
      socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    });
    const result = await sendRaw(
      server.port,
      Buffer.concat([BITS('/up', { headers: 'Connection: Upgrade\r\nUpgrade: bits\r\n' }), bytes(REQUEST_LINE_TEXT)]),
      { timeoutMs: 5000 },
    );
    expect(statusCodes(result.responses)).toEqual([400]);
    expect(seen).toEqual([
      ['BITS_POST', true, ['Host', 'test', 'Connection', 'Upgrade', 'Upgrade', 'bits', 'Content-Length', '0'], REQUEST_LINE_TEXT],
    ]);
    expect(server.reasons).toEqual(['upgrade']);
    expect(server.stats()).toMatchObject({ rewritten: 1, restored: 1 });
  });

  test('CONNECT passes through untouched', async () => {
    const server = await start();
    const tunnelled: Array<{ url: string | undefined; head: Buffer; data: Buffer[] }> = [];
    server.server.on('connect', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
      const entry = { url: req.url, head: Buffer.from(head), data: [] as Buffer[] };
      tunnelled.push(entry);
      socket.on('data', (data: Buffer) => entry.data.push(data));
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    });
    const inside = Buffer.concat([BITS('/tunnel', { body: 'x' }), GET('/t')]);
    const connection = await RawConnection.open(server.port);
    try {
      await connection.write(Buffer.concat([bytes('CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n'), inside]));
      expect(await connection.waitFor(() => connection.raw.toString('latin1').includes('200 Connection Established'))).toBe(true);
      await connection.write(inside);
      const got = (): number => (tunnelled[0] ? tunnelled[0].head.length + Buffer.concat(tunnelled[0].data).length : 0);
      for (let i = 0; i < 500 && got() < inside.length * 2; i++) await delay(10);
      const entry = tunnelled[0];
      if (entry === undefined) throw new Error('no CONNECT');
      expect(entry.url).toBe('example.test:443');
      expect(Buffer.concat([entry.head, ...entry.data]).equals(Buffer.concat([inside, inside]))).toBe(true);
      expect(server.requests).toHaveLength(0);
      expect(server.reasons).toEqual(['connect']);
    } finally {
      connection.destroy();
    }
  });
});
