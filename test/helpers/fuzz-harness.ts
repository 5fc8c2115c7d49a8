/**
 * Servers and transports for the BITS_POST differential fuzz.
 *
 * Two (or three) servers share one recording request handler: a plain `http.Server`, and the same
 * server with {@link acceptBitsPost}. Each stream runs on its own connection, either in memory (a
 * Duplex handed to `server.emit('connection')`, so Node reads it on its JavaScript data path) or
 * over real TCP on 127.0.0.1. Everything a connection shows is recorded: each request as the
 * handler saw it, every byte the server wrote, and how the server finished the connection.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { Duplex } from 'node:stream';
import { acceptBitsPost, type AcceptBitsPostOptions } from '../../lib/server/accept-bits-post';
import type { PassthroughReason } from '../../lib/server/framing-tracker';

/** A request as the application handler saw it. Plain-server values have PROPPATCH mapped back. */
export interface RequestRecord {
  method: string;
  url: string;
  version: string;
  rawHeaders: string[];
  rawTrailers: string[];
  bodyLength: number;
  bodySha: string;
  /** `req.complete`: the parser saw the end of the message. */
  complete: boolean;
}

/** Everything one connection showed. */
export interface Observation {
  requests: RequestRecord[];
  /** Every byte the server wrote, latin1. */
  output: string;
  /** The server ended its side (end()/destroySoon()). */
  ended: boolean;
  /** The socket was destroyed (by the server, or by the harness when hung). */
  destroyed: boolean;
  /** Code of the error the server destroyed the socket with (llhttp's HPE_* for parse errors). */
  errorCode: string | null;
  /**
   * The server neither answered nor closed after the input ended (Node waits for more input, for
   * instance after an Upgrade request nobody handles), so the harness closed the connection.
   */
  hung: boolean;
  /** Why the shim stopped rewriting this connection (null: it never did, or plain server). */
  passthrough: PassthroughReason | null;
}

/** The method the plain server receives instead of `BITS_POST`: same length, known to llhttp. */
export const PLAIN_METHOD = 'PROPPATCH';
export const BITS_METHOD = 'BITS_POST';

const PLAIN_PATTERN = /PROPPATCH/g;

/** Maps the plain server's view back to what the client sent. */
export function unmap(text: string): string {
  return text.includes(PLAIN_METHOD) ? text.replace(PLAIN_PATTERN, BITS_METHOD) : text;
}

/** The bytes the plain server receives for a stream: every `BITS_POST` replaced, positions kept. */
export function toPlainStream(bytes: Buffer): Buffer {
  const text = bytes.toString('latin1');
  return text.includes(BITS_METHOD) ? Buffer.from(text.replace(/BITS_POST/g, PLAIN_METHOD), 'latin1') : bytes;
}

/**
 * A message boundary can fall inside a `BITS_POST` token: a body then ends with `BITS` on the
 * shimmed server and with `PROP` on the plain one. Both servers hash bodies in a canonical form
 * where the longest trailing proper prefix of either token is written as that prefix of BITS_POST,
 * so that such bodies compare equal. Only the last 8 bytes can change, and only between token
 * prefixes of the same length.
 */
export function normaliseBodyTail(body: Buffer): Buffer {
  for (let k = Math.min(BITS_METHOD.length - 1, body.length); k >= 1; k--) {
    const tail = body.toString('latin1', body.length - k);
    if (tail === BITS_METHOD.slice(0, k)) return body;
    if (tail === PLAIN_METHOD.slice(0, k)) {
      const copy = Buffer.from(body);
      copy.write(BITS_METHOD.slice(0, k), body.length - k, 'latin1');
      return copy;
    }
  }
  return body;
}

function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Per-connection recording. */
class ConnectionLog {
  readonly requests: RequestRecord[] = [];
  readonly writes: Buffer[] = [];
  ended = false;
  destroyed = false;
  errorCode: string | null = null;
  hung = false;
  passthrough: PassthroughReason | null = null;
  /** Bumped by everything the server does on this connection (for idle detection). */
  progress = 0;
  private pendingRequests = 0;
  private closed = false;
  private forced = false;
  private waiters: Array<() => void> = [];

  constructor(readonly plain: boolean) {}

  requestStarted(): void {
    this.progress++;
    this.pendingRequests++;
  }

  requestSettled(): void {
    this.progress++;
    this.pendingRequests--;
    this.wake();
  }

  socketClosed(): void {
    this.progress++;
    this.closed = true;
    this.wake();
  }

  /** True once the socket closed and every request it carried was finalised (or abandoned). */
  get done(): boolean {
    return this.isSettled();
  }

  /** Resolves once the socket closed and every request it carried was finalised. */
  settled(): Promise<void> {
    if (this.isSettled()) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Gives up waiting (the harness's hang timeout). */
  abandon(): void {
    this.hung = true;
    this.forced = true;
    this.wake();
  }

  private isSettled(): boolean {
    return this.forced || (this.closed && this.pendingRequests === 0);
  }

  private wake(): void {
    if (!this.isSettled()) return;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  recordWrite(data: unknown, encoding: unknown): void {
    this.progress++;
    if (typeof data === 'string') {
      this.writes.push(Buffer.from(data, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8'));
    } else if (ArrayBuffer.isView(data)) {
      // Not `instanceof`: under Jest, Node's own objects come from another realm.
      this.writes.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    }
  }

  recordDestroy(error: unknown): void {
    this.progress++;
    if (this.destroyed) return;
    this.destroyed = true;
    // Not `instanceof Error`: under Jest, errors made by Node's HTTP parser come from another realm.
    if (typeof error === 'object' && error !== null) {
      const { code, message } = error as { code?: unknown; message?: unknown };
      this.errorCode = typeof code === 'string' ? code : String(message);
    }
  }

  observe(): Observation {
    const output = Buffer.concat(this.writes).toString('latin1');
    return {
      requests: this.requests,
      output: this.plain ? unmap(output) : output,
      ended: this.ended,
      destroyed: this.destroyed,
      errorCode: this.errorCode,
      hung: this.hung,
      passthrough: this.passthrough,
    };
  }
}

/** Which log a server-side socket writes to. */
const logs = new WeakMap<object, ConnectionLog>();

function noop(): void {}

/**
 * Records a request; reads its whole body; when it ended, responds `status` with a body (and a
 * header, for HEAD) naming method, URL hash, body hash and length.
 */
function recordRequest(req: http.IncomingMessage, res: http.ServerResponse, status: number): void {
  const log = logs.get(req.socket);
  const plain = log?.plain ?? false;
  const map = plain ? unmap : (s: string): string => s;
  const record: RequestRecord = {
    method: map(req.method ?? ''),
    url: map(req.url ?? ''),
    version: req.httpVersion,
    rawHeaders: req.rawHeaders.map(map),
    rawTrailers: [],
    bodyLength: 0,
    bodySha: '',
    complete: false,
  };
  log?.requests.push(record);
  log?.requestStarted();
  const parts: Buffer[] = [];
  let settled = false;
  const settle = (ended: boolean): void => {
    if (settled) return;
    settled = true;
    const body = Buffer.concat(parts);
    record.bodyLength = body.length;
    record.bodySha = sha256(normaliseBodyTail(plain ? Buffer.from(unmap(body.toString('latin1')), 'latin1') : body));
    record.complete = req.complete;
    record.rawTrailers = req.rawTrailers.map(map);
    if (ended && status === 200) {
      const text = `${record.method} ${sha256(record.url)} ${record.bodySha} ${record.bodyLength}\n`;
      res.sendDate = false;
      res.writeHead(200, {
        'Content-Type': 'text/plain',
        'Content-Length': String(Buffer.byteLength(text)),
        'X-Fuzz': text.trim(),
      });
      res.end(text);
    }
    log?.requestSettled();
  };
  req.on('data', (chunk: Buffer) => {
    if (log !== undefined) log.progress++;
    parts.push(chunk);
  });
  req.on('end', () => settle(true));
  req.on('close', () => settle(false));
  req.on('error', noop);
  if (status !== 200) {
    // What Node does by itself for an Expect it cannot meet (no checkExpectation listener).
    res.sendDate = false;
    res.writeHead(status);
    res.end();
  }
}

export interface FuzzServers {
  readonly plain: http.Server;
  /** acceptBitsPost with connections: 'all' (the default). */
  readonly shim: http.Server;
  /** acceptBitsPost with connections: 'first-request'. */
  readonly firstRequest: http.Server;
}

/** Large enough that no stream of the fuzz ever hits backpressure (which pauses the parser). */
const HUGE_WATERMARK = 1 << 30;

function createServer(bits: AcceptBitsPostOptions | null, tcp: boolean): http.Server {
  const server = http.createServer({
    // Node would answer a Host-less HTTP/1.1 request itself, before any listener sees it.
    requireHostHeader: false,
    ...(tcp ? { highWaterMark: HUGE_WATERMARK } : {}),
  });
  // Answer every request before closing, even after the client's end of input: otherwise Node
  // ends the connection at end of input and no response is ever compared.
  (server as http.Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
  server.on('request', (req, res) => recordRequest(req, res, 200));
  server.on('checkExpectation', (req, res) => recordRequest(req, res, 417));
  if (bits === null) return server;
  return acceptBitsPost(server, {
    ...bits,
    onPassthrough: (reason, socket) => {
      const log = logs.get(socket);
      if (log !== undefined) log.passthrough = reason;
    },
  });
}

export function createFuzzServers(tcp: boolean): FuzzServers {
  return {
    plain: createServer(null, tcp),
    shim: createServer({}, tcp),
    firstRequest: createServer({ connections: 'first-request' }, tcp),
  };
}

/** An in-memory socket: what is pushed is read by the server; what it writes is recorded. */
class FuzzSocket extends Duplex {
  constructor(private readonly log: ConnectionLog) {
    super({ allowHalfOpen: true, readableHighWaterMark: HUGE_WATERMARK, writableHighWaterMark: HUGE_WATERMARK });
  }

  override _read(): void {}

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.log.progress++;
    this.log.writes.push(chunk);
    callback();
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.log.progress++;
    this.log.ended = true;
    callback();
  }

  override _destroy(error: Error | null, callback: (error: Error | null) => void): void {
    this.log.recordDestroy(error);
    callback(null);
  }
}

/**
 * In memory nothing waits for a timer: a connection that shows no progress for this many turns of
 * the event loop after its input ended never will (Node waits for more input, say after an
 * Upgrade request with no listener). Much cheaper than a timeout; the timeout stays as a backstop.
 */
const IDLE_TURNS = 64;

/**
 * Runs one stream on a fresh in-memory connection of `server`: every chunk is pushed at once, then
 * end of input, then waits until the server closed the connection (or it is idle for good).
 */
export async function runInMemory(
  server: http.Server,
  plain: boolean,
  bytes: Buffer,
  chunks: readonly number[],
  hangTimeoutMs: number,
): Promise<Observation> {
  const log = new ConnectionLog(plain);
  const socket = new FuzzSocket(log);
  logs.set(socket, log);
  socket.once('close', () => log.socketClosed());
  server.emit('connection', socket);
  let at = 0;
  for (const size of chunks) {
    socket.push(bytes.subarray(at, at + size));
    at += size;
  }
  socket.push(null);
  const deadline = Date.now() + hangTimeoutMs;
  let seen = -1;
  let idle = 0;
  while (!log.done) {
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (log.done) break;
    if (log.progress !== seen) {
      seen = log.progress;
      idle = 0;
    } else if (Date.now() > deadline) {
      socket.destroy();
      log.abandon();
    } else if (++idle >= IDLE_TURNS && !log.hung) {
      // Close it the way a client would give up, then let its requests finish as aborted.
      log.hung = true;
      idle = 0;
      socket.destroy();
    }
  }
  return log.observe();
}

/** Records what the server does with its side of a real TCP connection. */
function instrumentTcpServer(server: http.Server, plain: boolean, byPort: Map<number, ConnectionLog>): void {
  server.on('connection', (socket: net.Socket) => {
    const log = new ConnectionLog(plain);
    logs.set(socket, log);
    if (socket.remotePort !== undefined) byPort.set(socket.remotePort, log);
    const write = socket.write;
    socket.write = function recordingWrite(this: net.Socket, ...args: unknown[]): boolean {
      log.recordWrite(args[0], args[1]);
      return Reflect.apply(write, this, args) as boolean;
    } as typeof socket.write;
    const end = socket.end;
    socket.end = function recordingEnd(this: net.Socket, ...args: unknown[]): net.Socket {
      log.ended = true;
      return Reflect.apply(end, this, args) as net.Socket;
    } as typeof socket.end;
    const destroy = socket.destroy;
    socket.destroy = function recordingDestroy(this: net.Socket, error?: Error): net.Socket {
      log.recordDestroy(error ?? null);
      return Reflect.apply(destroy, this, [error]) as net.Socket;
    };
    socket.once('close', () => log.socketClosed());
  });
}

export interface TcpTarget {
  readonly server: http.Server;
  readonly plain: boolean;
  readonly port: number;
  readonly byPort: Map<number, ConnectionLog>;
}

export async function listenForFuzz(server: http.Server, plain: boolean): Promise<TcpTarget> {
  const byPort = new Map<number, ConnectionLog>();
  instrumentTcpServer(server, plain, byPort);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as net.AddressInfo;
  return { server, plain, port: address.port, byPort };
}

/**
 * Runs one stream over a real TCP connection. With `spread` false the chunks leave in one write
 * (one read on loopback for streams under 64 KiB); otherwise each chunk is its own write with a
 * short pause between them, so the server reads in several pieces.
 */
export async function runOverTcp(target: TcpTarget, bytes: Buffer, chunks: readonly number[], spread: boolean, hangTimeoutMs: number): Promise<Observation> {
  const client = net.connect({ port: target.port, host: '127.0.0.1' });
  client.setNoDelay(true);
  client.on('data', noop);
  const clientClosed = new Promise<void>((resolve) => client.once('close', () => resolve()));
  client.on('error', noop);
  await new Promise<void>((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
  });
  const localPort = client.localPort as number;
  let at = 0;
  if (!spread) {
    client.write(bytes);
  } else {
    for (const size of chunks) {
      if (client.destroyed) break;
      client.write(bytes.subarray(at, at + size));
      at += size;
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }
  if (!client.destroyed) client.end();
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), hangTimeoutMs);
  });
  // The server's log appears once its 'connection' listener ran.
  let log = target.byPort.get(localPort);
  for (let i = 0; log === undefined && i < 200; i++) {
    await new Promise((resolve) => setTimeout(resolve, 5));
    log = target.byPort.get(localPort);
  }
  if (log === undefined) throw new Error(`no server-side connection for client port ${localPort}`);
  const outcome = await Promise.race([Promise.all([log.settled(), clientClosed]), timedOut]);
  if (outcome === 'timeout') {
    client.destroy();
    log.abandon();
  }
  clearTimeout(timer);
  target.byPort.delete(localPort);
  return log.observe();
}
