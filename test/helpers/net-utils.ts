/**
 * Small socket-level helpers for the server transport tests: a raw HTTP/1.1 client that can send
 * any bytes (including the `BITS_POST` verb that Node's own client refuses to parse responses for),
 * a minimal response reader, deterministic bodies and server lifecycle helpers.
 */
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import type http from 'node:http';
import type https from 'node:https';
import v8 from 'node:v8';
import vm from 'node:vm';

export type AnyServer = http.Server | https.Server;

/** Listens on 127.0.0.1 with an OS-chosen port and resolves with the port. */
export function listen(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

/** Closes a server, destroying every remaining connection, and waits for it. */
export function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      resolve();
      return;
    }
    server.close(() => resolve());
    const withConnections = server as Partial<Pick<http.Server, 'closeAllConnections'>>;
    withConnections.closeAllConnections?.();
  });
}

/** A free TCP port on 127.0.0.1: binds port 0, reads the port, closes. */
export async function freePort(): Promise<number> {
  const probe = net.createServer();
  const port = await listen(probe);
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `condition` every 10 ms until it holds or `timeoutMs` passes. */
export async function waitFor(condition: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * A random body of `size` bytes with fake request lines sprinkled in (`BITS_POST`, a blank line,
 * `Content-Length`), so that a tracker that rewrites body bytes is caught by the byte comparison.
 */
export function makeBody(size: number): Buffer {
  const body = randomBytes(size);
  const decoy = Buffer.from('\r\n\r\nBITS_POST /decoy HTTP/1.1\r\nContent-Length: 5\r\n\r\nBITS_', 'latin1');
  for (let at = 17; at + decoy.length <= size; at += 65_537) decoy.copy(body, at);
  if (size >= decoy.length) decoy.copy(body, 0);
  return body;
}

export interface RequestOptions {
  readonly headers?: Readonly<Record<string, string | number>>;
  /** Body bytes; Content-Length is added unless `headers` already has one or `noContentLength` is set. */
  readonly body?: Buffer;
  readonly noContentLength?: boolean;
  readonly host?: string;
}

/** Serialises one HTTP/1.1 request (any method token) to bytes. */
export function buildRequest(method: string, target: string, options: RequestOptions = {}): Buffer {
  const lines = [`${method} ${target} HTTP/1.1`, `Host: ${options.host ?? '127.0.0.1'}`];
  const headers = options.headers ?? {};
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  const hasLength = Object.keys(headers).some((name) => name.toLowerCase() === 'content-length');
  if (!hasLength && !options.noContentLength) lines.push(`Content-Length: ${options.body?.length ?? 0}`);
  const head = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
  return options.body === undefined ? head : Buffer.concat([head, options.body]);
}

export interface RawResponse {
  readonly statusCode: number;
  readonly statusMessage: string;
  /** Lower-cased header names; repeated headers joined with ", ". */
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
}

const HEAD_END = Buffer.from('\r\n\r\n', 'latin1');

/**
 * A raw HTTP/1.1 client connection. It writes whatever bytes it is given and parses responses
 * (Content-Length, chunked, or read-until-close framing) in order.
 */
export class RawClient {
  private buffered: Buffer = Buffer.alloc(0);
  private endedFlag = false;
  private closedFlag = false;
  private closedAt = 0;
  private readonly listeners = new Set<() => void>();
  readonly errors: Error[] = [];

  constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
      this.notify();
    });
    socket.on('end', () => {
      this.endedFlag = true;
      this.notify();
    });
    socket.on('error', (error: Error) => {
      this.errors.push(error);
    });
    socket.on('close', () => {
      this.endedFlag = true;
      this.closedFlag = true;
      this.closedAt = Date.now();
      this.notify();
    });
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ port, host });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawClient(socket));
      });
    });
  }

  static connectTls(port: number, options: tls.ConnectionOptions): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ port, host: '127.0.0.1', ...options });
      socket.once('error', reject);
      socket.once('secureConnect', () => {
        socket.off('error', reject);
        resolve(new RawClient(socket));
      });
    });
  }

  get ended(): boolean {
    return this.endedFlag;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /** Date.now() when the socket closed, 0 while open. */
  get closedTime(): number {
    return this.closedAt;
  }

  /** Bytes received but not yet consumed by {@link readResponse}. */
  get pending(): Buffer {
    return this.buffered;
  }

  /** Writes and resolves once the data is handed to the kernel (or rejects on a write error). */
  write(data: Buffer | string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.socket.write(data, (error?: Error | null) => (error ? reject(error) : resolve()));
    });
  }

  /** Sends one request and reads one response. */
  async request(method: string, target: string, options: RequestOptions = {}, timeoutMs = 20_000): Promise<RawResponse> {
    await this.write(buildRequest(method, target, options));
    return this.readResponse(timeoutMs);
  }

  /** Reads the next complete response (skipping 1xx responses). */
  async readResponse(timeoutMs = 20_000): Promise<RawResponse> {
    for (;;) {
      const response = await this.until(() => this.tryParse(), timeoutMs, 'a response');
      if (response.statusCode >= 200 || response.statusCode === 101) return response;
    }
  }

  /** Waits until the peer has closed the connection; resolves with Date.now() at the close. */
  async waitForClose(timeoutMs = 10_000): Promise<number> {
    await this.until(() => (this.closedFlag ? true : undefined), timeoutMs, 'the connection to close');
    return this.closedAt;
  }

  /** Waits until the peer has ended its side (FIN) or the socket closed. */
  async waitForEnd(timeoutMs = 10_000): Promise<void> {
    await this.until(() => (this.endedFlag ? true : undefined), timeoutMs, 'the connection to end');
  }

  destroy(): void {
    this.socket.destroy();
  }

  private notify(): void {
    for (const listener of [...this.listeners]) listener();
  }

  private until<T>(probe: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        let value: T | undefined;
        try {
          value = probe();
        } catch (error) {
          done();
          reject(error instanceof Error ? error : new Error(String(error)));
          return;
        }
        if (value !== undefined) {
          done();
          resolve(value);
        } else if (this.closedFlag) {
          done();
          reject(new Error(`connection closed while waiting for ${what} (pending: ${JSON.stringify(this.buffered.toString('latin1', 0, 200))})`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.listeners.delete(check);
      };
      this.listeners.add(check);
      check();
    });
  }

  /** Parses one response off the front of the buffer, or returns undefined when incomplete. */
  private tryParse(): RawResponse | undefined {
    const buffer = this.buffered;
    const headEnd = buffer.indexOf(HEAD_END);
    if (headEnd === -1) return undefined;
    const lines = buffer.toString('latin1', 0, headEnd).split('\r\n');
    const status = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(lines[0] ?? '');
    if (status === null) throw new Error(`malformed status line ${JSON.stringify(lines[0])}`);
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
    }
    const statusCode = Number(status[1]);
    const bodyStart = headEnd + HEAD_END.length;
    let body: Buffer;
    let consumed: number;
    if (statusCode < 200 || statusCode === 204 || statusCode === 304) {
      body = Buffer.alloc(0);
      consumed = bodyStart;
    } else if (headers['transfer-encoding']?.toLowerCase().includes('chunked')) {
      const chunks: Buffer[] = [];
      let pos = bodyStart;
      for (;;) {
        const lineEnd = buffer.indexOf('\r\n', pos, 'latin1');
        if (lineEnd === -1) return undefined;
        const size = parseInt(buffer.toString('latin1', pos, lineEnd), 16);
        if (Number.isNaN(size)) throw new Error('malformed chunk size');
        if (size === 0) {
          const trailerEnd = buffer.indexOf(HEAD_END, lineEnd);
          const emptyTrailer = buffer.subarray(lineEnd, lineEnd + 4).equals(HEAD_END);
          if (emptyTrailer) {
            consumed = lineEnd + 4;
          } else if (trailerEnd === -1) {
            return undefined;
          } else {
            consumed = trailerEnd + 4;
          }
          break;
        }
        if (buffer.length < lineEnd + 2 + size + 2) return undefined;
        chunks.push(buffer.subarray(lineEnd + 2, lineEnd + 2 + size));
        pos = lineEnd + 2 + size + 2;
      }
      body = Buffer.concat(chunks);
    } else if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length']);
      if (buffer.length < bodyStart + length) return undefined;
      body = buffer.subarray(bodyStart, bodyStart + length);
      consumed = bodyStart + length;
    } else {
      // Read until close.
      if (!this.endedFlag) return undefined;
      body = buffer.subarray(bodyStart);
      consumed = buffer.length;
    }
    this.buffered = buffer.subarray(consumed);
    return { statusCode, statusMessage: status[2] ?? '', headers, body: Buffer.from(body) };
  }
}

/**
 * A garbage collector function when one can be had: `global.gc` under `--expose-gc`, otherwise
 * the function of a fresh context created after turning the flag on at run time.
 */
export function getGc(): (() => void) | undefined {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (typeof exposed === 'function') return exposed;
  try {
    v8.setFlagsFromString('--expose-gc');
    const fromContext: unknown = vm.runInNewContext('gc');
    if (typeof fromContext === 'function') return fromContext as () => void;
  } catch {
    // Not available: callers skip heap assertions.
  }
  return undefined;
}

/** Collects garbage thoroughly (several passes with event-loop turns between them). */
export async function collectGarbage(gc: () => void): Promise<void> {
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}
