/**
 * Raw HTTP/1.1 over real sockets, for tests of the BITS_POST transport shim.
 *
 * Everything here speaks bytes: requests are written exactly as given (latin1 for strings), and
 * responses are parsed from the bytes the server sent, so tests see what a Windows BITS client or
 * an attacker would see. Servers listen on 127.0.0.1 port 0; nothing uses a fixed port.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { acceptBitsPost, type AcceptBitsPostOptions } from '../../lib/server/accept-bits-post';
import { isBitsPost } from '../../lib/server/method-marker';

/** Bytes to send: a string (latin1), a buffer, or a sequence of writes. */
export type RawInput = string | Buffer | Iterable<string | Buffer> | AsyncIterable<string | Buffer>;

/** One HTTP response as parsed from the wire. */
export interface ParsedResponse {
  readonly httpVersion: string;
  readonly statusCode: number;
  readonly statusMessage: string;
  /** Name/value pairs in wire order, names as sent. */
  readonly rawHeaders: readonly string[];
  /** Lower-case names; repeated headers joined with ', '. */
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
  /** False when the connection ended before the whole response arrived. */
  readonly complete: boolean;
}

/** What {@link sendRaw} saw on one connection. */
export interface RawResult {
  /** Responses in order, including interim (1xx) responses. */
  readonly responses: ParsedResponse[];
  /** True when the server closed the connection before the client gave up on it. */
  readonly closed: boolean;
  /** Every byte the server sent. */
  readonly raw: Buffer;
  /** Milliseconds from connecting until the server closed the connection (or until resolution). */
  readonly elapsedMs: number;
  /** Error code of the client socket, if any (ECONNRESET, EPIPE...). */
  readonly error: string | undefined;
  /** The client's port: `req.socket.remotePort` on the server. */
  readonly localPort: number;
}

/** Options of {@link sendRaw}. */
export interface SendRawOptions {
  /** Pause between two writes of a sequence. Defaults to 0 (writes are still separate calls). */
  readonly delayMs?: number;
  /** Resolve as soon as this many final (non-1xx) responses are complete. Defaults to none. */
  readonly responses?: number;
  /** After the last write, wait this long, then half-close the client side. Defaults to never. */
  readonly endAfterMs?: number;
  /** Give up (destroy the socket and resolve) after this long. Defaults to 10 000. */
  readonly timeoutMs?: number;
}

/** Options of {@link startServer}. */
export interface StartServerOptions {
  /** Options for {@link acceptBitsPost}, or false for a plain, unshimmed server. Defaults to `{}`. */
  readonly bitsPost?: AcceptBitsPostOptions | false;
  /** Options of `http.createServer`. Defaults to none. */
  readonly serverOptions?: http.ServerOptions;
}

/** A listening server and the means to stop it. */
export interface StartedServer {
  readonly server: http.Server;
  readonly port: number;
  /** Closes every connection and the listener. */
  close(): Promise<void>;
}

/** Latin1 bytes of a string; buffers are returned as they are. */
export function bytes(input: string | Buffer): Buffer {
  return typeof input === 'string' ? Buffer.from(input, 'latin1') : input;
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Starts an HTTP server on 127.0.0.1, port 0, shimmed with {@link acceptBitsPost} unless told not to. */
export async function startServer(
  handler?: http.RequestListener,
  options: StartServerOptions = {},
): Promise<StartedServer> {
  const server = http.createServer(options.serverOptions ?? {}, handler);
  if (options.bitsPost !== false) acceptBitsPost(server, options.bitsPost ?? {});
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  // Upgraded and CONNECT sockets leave the server's own connection list; keep every socket to end it.
  const sockets = new Set<net.Socket>();
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  return {
    server,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A request as the server's 'request' (or other) listener received it. */
export interface RecordedRequest {
  readonly event: string;
  readonly method: string;
  readonly url: string;
  readonly httpVersion: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly rawHeaders: readonly string[];
  readonly headersDistinct: Readonly<NodeJS.Dict<string[]>>;
  /** `isBitsPost(req)` when the listener ran. */
  readonly bitsPost: boolean;
  /** Body bytes (all of them; keep bodies small or use {@link RecordedRequest.sha256}). */
  body: Buffer;
  bodyLength: number;
  sha256: string;
  trailers: Readonly<Record<string, string | undefined>>;
  /** True once the whole body arrived. */
  complete: boolean;
}

/** Options of {@link createRecorder}. */
export interface RecorderOptions {
  /** Keep body bytes up to this size (hash and length are always kept). Defaults to 1 MiB. */
  readonly keepBodyUpTo?: number;
  /** Delay (ms) before answering each request. Defaults to 0. */
  readonly respondAfterMs?: number;
}

/** A request listener that records every request and answers 200 with a JSON summary. */
export interface Recorder {
  readonly requests: RecordedRequest[];
  readonly handler: http.RequestListener;
  /** Records `req` as seen by a listener of `event` (does not read the body). */
  snapshot(req: http.IncomingMessage, event: string): RecordedRequest;
}

export function createRecorder(options: RecorderOptions = {}): Recorder {
  const keepBodyUpTo = options.keepBodyUpTo ?? 1024 * 1024;
  const requests: RecordedRequest[] = [];
  const snapshot = (req: http.IncomingMessage, event: string): RecordedRequest => {
    const record: RecordedRequest = {
      event,
      method: req.method ?? '',
      url: req.url ?? '',
      httpVersion: req.httpVersion,
      headers: { ...req.headers },
      rawHeaders: [...req.rawHeaders],
      headersDistinct: { ...req.headersDistinct },
      bitsPost: isBitsPost(req),
      body: Buffer.alloc(0),
      bodyLength: 0,
      sha256: sha256(''),
      trailers: {},
      complete: false,
    };
    requests.push(record);
    return record;
  };
  const handler: http.RequestListener = (req, res) => {
    const record = snapshot(req, 'request');
    const hash = createHash('sha256');
    const kept: Buffer[] = [];
    req.on('data', (data: Buffer) => {
      hash.update(data);
      record.bodyLength += data.length;
      if (record.bodyLength <= keepBodyUpTo) kept.push(data);
    });
    req.on('end', () => {
      record.sha256 = hash.digest('hex');
      record.body = Buffer.concat(kept);
      record.trailers = { ...req.trailers };
      record.complete = true;
      const answer = (): void => {
        const body = JSON.stringify({
          method: record.method,
          url: record.url,
          length: record.bodyLength,
          sha256: record.sha256,
        });
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
        res.end(body);
      };
      if (options.respondAfterMs) setTimeout(answer, options.respondAfterMs);
      else answer();
    });
  };
  return { requests, handler, snapshot };
}

/**
 * Parses consecutive HTTP/1.x responses. `ended` says the connection is closed, which completes a
 * response delimited by the end of the connection. Stops at the first incomplete response, which
 * is returned with `complete: false`; throws on bytes that are not a response.
 */
export function parseResponses(buf: Buffer, ended = false): ParsedResponse[] {
  const responses: ParsedResponse[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const headEnd = buf.indexOf('\r\n\r\n', pos, 'latin1');
    if (headEnd === -1) {
      responses.push(incomplete(buf.subarray(pos)));
      break;
    }
    const lines = buf.toString('latin1', pos, headEnd).split('\r\n');
    const statusLine = /^HTTP\/(\d\.\d) (\d{3})(?: (.*))?$/.exec(lines[0] ?? '');
    if (statusLine === null) {
      throw new Error(`not an HTTP response at byte ${pos}: ${JSON.stringify(buf.toString('latin1', pos, pos + 80))}`);
    }
    const rawHeaders: string[] = [];
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      if (colon <= 0) throw new Error(`bad response header line ${JSON.stringify(line)}`);
      const name = line.slice(0, colon);
      const value = line.slice(colon + 1).trim();
      rawHeaders.push(name, value);
      const key = name.toLowerCase();
      headers[key] = headers[key] === undefined ? value : `${headers[key]}, ${value}`;
    }
    const statusCode = Number(statusLine[2]);
    const head = {
      httpVersion: statusLine[1] as string,
      statusCode,
      statusMessage: statusLine[3] ?? '',
      rawHeaders,
      headers,
    };
    let bodyStart = headEnd + 4;
    const noBody = statusCode < 200 || statusCode === 204 || statusCode === 304;
    if (noBody) {
      responses.push({ ...head, body: Buffer.alloc(0), complete: true });
      pos = bodyStart;
      continue;
    }
    if ((headers['transfer-encoding'] ?? '').toLowerCase().includes('chunked')) {
      const parts: Buffer[] = [];
      let complete = false;
      for (;;) {
        const lineEnd = buf.indexOf('\r\n', bodyStart, 'latin1');
        if (lineEnd === -1) break;
        const size = parseInt(buf.toString('latin1', bodyStart, lineEnd), 16);
        if (Number.isNaN(size)) throw new Error('bad chunk size in response');
        if (size === 0) {
          const trailerEnd = buf.indexOf('\r\n\r\n', lineEnd, 'latin1');
          if (trailerEnd !== -1) {
            complete = true;
            bodyStart = trailerEnd + 4;
          }
          break;
        }
        if (lineEnd + 2 + size + 2 > buf.length) break;
        parts.push(buf.subarray(lineEnd + 2, lineEnd + 2 + size));
        bodyStart = lineEnd + 2 + size + 2;
      }
      responses.push({ ...head, body: Buffer.concat(parts), complete });
      if (!complete) break;
      pos = bodyStart;
      continue;
    }
    const length = headers['content-length'];
    if (length !== undefined) {
      const end = bodyStart + Number(length);
      const complete = end <= buf.length;
      responses.push({ ...head, body: buf.subarray(bodyStart, Math.min(end, buf.length)), complete });
      if (!complete) break;
      pos = end;
      continue;
    }
    // Delimited by the end of the connection.
    responses.push({ ...head, body: buf.subarray(bodyStart), complete: ended });
    break;
  }
  return responses;
}

function incomplete(head: Buffer): ParsedResponse {
  const statusLine = /^HTTP\/(\d\.\d) (\d{3})/.exec(head.toString('latin1'));
  return {
    httpVersion: statusLine?.[1] ?? '',
    statusCode: Number(statusLine?.[2] ?? 0),
    statusMessage: '',
    rawHeaders: [],
    headers: {},
    body: Buffer.alloc(0),
    complete: false,
  };
}

/** Final responses (status 200 and above) that arrived whole. */
export function finalResponses(responses: readonly ParsedResponse[]): ParsedResponse[] {
  return responses.filter((response) => response.complete && response.statusCode >= 200);
}

/** Status codes of the responses that arrived whole, interim ones included. */
export function statusCodes(responses: readonly ParsedResponse[]): number[] {
  return responses.filter((response) => response.complete).map((response) => response.statusCode);
}

/** One client connection speaking raw bytes. */
export class RawConnection {
  private readonly received: Buffer[] = [];
  private receivedLength = 0;
  private waiters: Array<() => void> = [];
  private readonly started = Date.now();
  /** The client's port: `req.socket.remotePort` on the server. */
  readonly localPort: number;
  /** True once the server ended or closed the connection. */
  serverClosed = false;
  /** True once the socket is fully closed. */
  closed = false;
  closedAt: number | undefined;
  error: string | undefined;

  private constructor(readonly socket: net.Socket) {
    this.localPort = socket.localPort ?? 0;
    socket.setNoDelay(true);
    socket.on('data', (data: Buffer) => {
      this.received.push(data);
      this.receivedLength += data.length;
      this.notify();
    });
    socket.on('end', () => {
      this.markServerClosed();
      this.notify();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.error ??= err.code ?? err.message;
    });
    socket.on('close', () => {
      this.closed = true;
      this.markServerClosed();
      this.notify();
    });
  }

  /** Connects to 127.0.0.1:`port`. */
  static open(port: number): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawConnection(socket));
      });
    });
  }

  /** Every byte received so far. */
  get raw(): Buffer {
    return Buffer.concat(this.received, this.receivedLength);
  }

  /** Responses received so far. */
  get responses(): ParsedResponse[] {
    return parseResponses(this.raw, this.serverClosed);
  }

  /** Milliseconds since connecting. */
  get elapsedMs(): number {
    return (this.closedAt ?? Date.now()) - this.started;
  }

  /** Writes bytes, resolving when they are handed to the kernel; false when the socket is gone. */
  write(data: string | Buffer): Promise<boolean> {
    if (this.socket.destroyed || !this.socket.writable) return Promise.resolve(false);
    return new Promise((resolve) => {
      this.socket.write(bytes(data), (err) => resolve(err == null));
    });
  }

  /** Writes every piece of `input`, separately, waiting `delayMs` between writes. Stops once the socket is gone. */
  async writeAll(input: RawInput, delayMs = 0): Promise<void> {
    let first = true;
    for await (const piece of toPieces(input)) {
      if (!first && delayMs > 0) await delay(delayMs);
      first = false;
      if (!(await this.write(piece))) return;
    }
  }

  /** Half-closes the client side. */
  end(): void {
    if (!this.socket.destroyed) this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Resolves when `predicate` holds (checked on every event) or after `timeoutMs`; returns whether it held. */
  waitFor(predicate: () => boolean, timeoutMs = 10_000): Promise<boolean> {
    if (predicate()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((waiter) => waiter !== check);
        resolve(false);
      }, timeoutMs);
      const check = (): void => {
        if (!predicate()) return;
        clearTimeout(timer);
        this.waiters = this.waiters.filter((waiter) => waiter !== check);
        resolve(true);
      };
      this.waiters.push(check);
    });
  }

  /** Waits until `count` final responses arrived whole. */
  waitForResponses(count: number, timeoutMs?: number): Promise<boolean> {
    return this.waitFor(() => this.safeFinalCount() >= count || this.closed, timeoutMs);
  }

  /** Waits until the server closed the connection. */
  waitForClose(timeoutMs?: number): Promise<boolean> {
    return this.waitFor(() => this.closed, timeoutMs);
  }

  /** A snapshot as returned by {@link sendRaw}. */
  result(): RawResult {
    return {
      responses: this.responses,
      closed: this.serverClosed,
      raw: this.raw,
      elapsedMs: this.elapsedMs,
      error: this.error,
      localPort: this.localPort,
    };
  }

  private safeFinalCount(): number {
    try {
      return finalResponses(this.responses).length;
    } catch {
      return 0;
    }
  }

  private markServerClosed(): void {
    if (this.serverClosed) return;
    this.serverClosed = true;
    this.closedAt = Date.now();
  }

  private notify(): void {
    for (const waiter of [...this.waiters]) waiter();
  }
}

async function* toPieces(input: RawInput): AsyncIterable<string | Buffer> {
  if (typeof input === 'string' || Buffer.isBuffer(input)) {
    yield input;
    return;
  }
  yield* input;
}

/**
 * Connects to 127.0.0.1:`port`, writes `input` (each piece of a sequence is a separate write) and
 * collects what comes back. Resolves when the server closes the connection, when
 * `options.responses` final responses are complete, or after `options.timeoutMs`.
 */
export async function sendRaw(port: number, input: RawInput, options: SendRawOptions = {}): Promise<RawResult> {
  const connection = await RawConnection.open(port);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  const wanted = options.responses;
  const done = (): boolean =>
    connection.closed || (wanted !== undefined && finalResponses(safeParse(connection)).length >= wanted);
  try {
    await connection.writeAll(input, options.delayMs ?? 0);
    if (options.endAfterMs !== undefined && !done()) {
      await connection.waitFor(done, options.endAfterMs);
      if (!done()) connection.end();
    }
    await connection.waitFor(done, Math.max(0, deadline - Date.now()));
    return connection.result();
  } finally {
    connection.destroy();
  }
}

function safeParse(connection: RawConnection): ParsedResponse[] {
  try {
    return connection.responses;
  } catch {
    return [];
  }
}

/** A small deterministic PRNG (mulberry32) returning numbers in [0, 1), so that failures reproduce. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `input` cut into one-byte pieces, for {@link sendRaw} to write one at a time. */
export function byteByByte(input: string | Buffer): Buffer[] {
  const data = bytes(input);
  const pieces: Buffer[] = [];
  for (let i = 0; i < data.length; i++) pieces.push(data.subarray(i, i + 1));
  return pieces;
}
