/**
 * A small BITS upload client for end-to-end tests over real sockets (bits-protocol.md §2-§6).
 *
 * It writes `BITS_POST` requests as raw bytes with node:net, in the header order the Windows client
 * uses (§2.2), and parses every response from the bytes the server sent. Acks are checked strictly
 * (§0.5, §2.3, §8.1-8.2): HTTP/1.1, one `BITS-Packet-Type: Ack`, one `Content-Length: 0`, no
 * `Transfer-Encoding`, no body bytes, and well-formed error headers; a violation throws
 * {@link BitsProtocolViolation}, so a test fails even when it does not look at those headers.
 *
 * Test data comes from {@link patternSource}: deterministic pseudo-random bytes (AES-128-CTR over
 * zeros) that can be produced from any offset, so a 20 MiB upload never sits in memory.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { once } from 'node:events';
import { createReadStream, promises as fsp } from 'node:fs';
import net from 'node:net';
import { Readable } from 'node:stream';

/** The only BITS upload protocol (§7). */
export const BITS_PROTOCOL = '{7df0354d-249b-430f-820d-3d2a9bef4931}';

/** Header name/value pairs in wire order. */
export type HeaderList = readonly (readonly [string, string])[];

/** One HTTP response, parsed from the wire. */
export interface HttpResponse {
  readonly httpVersion: string;
  readonly status: number;
  readonly statusMessage: string;
  /** Name/value pairs in wire order, names as sent. */
  readonly rawHeaders: HeaderList;
  /** Lower-case names; repeated headers joined with ', '. */
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
  /** Number of the client connection (1, 2, ...) that carried the response. */
  readonly connection: number;
}

/** A response that breaks the BITS Ack rules; the message shows the whole response. */
export class BitsProtocolViolation extends Error {
  constructor(problem: string, response?: HttpResponse) {
    super(response === undefined ? problem : `${problem}\n${describeResponse(response)}`);
    this.name = 'BitsProtocolViolation';
  }
}

/** How {@link BitsClient} uses connections. */
export type ConnectionMode = 'keep-alive' | 'per-packet';

/** Options of {@link BitsClient}. */
export interface BitsClientOptions {
  /**
   * `keep-alive`: one connection for everything, like the Windows client (`Connection: Keep-Alive`);
   * a new one only after the server closed it. `per-packet`: a new connection per request, sent
   * with `Connection: close`. Defaults to `keep-alive`.
   */
  readonly connection?: ConnectionMode;
  /** Value of the `Host` header. Defaults to `127.0.0.1:<port>`. */
  readonly host?: string;
  /** Value of `User-Agent`. Defaults to `Microsoft BITS/7.8`. */
  readonly userAgent?: string;
  /** How long to wait for one response. Defaults to 20 000 ms. */
  readonly timeoutMs?: number;
}

/** A `BITS_POST` (or any other) request as {@link BitsClient.packet} sends it. */
export interface PacketRequest {
  /** Request-target, e.g. `/uploads/report.bin` or an absolute-form URL. */
  readonly target: string;
  /** `BITS-Packet-Type` value; `null` leaves the header out. */
  readonly packetType: string | null;
  readonly sessionId?: string | undefined;
  readonly supportedProtocols?: string | undefined;
  readonly contentName?: string | undefined;
  readonly contentRange?: string | undefined;
  /** Headers added after the standard ones (before Content-Length). */
  readonly headers?: HeaderList | undefined;
  readonly body?: Buffer | Readable | undefined;
  /** Declared `Content-Length`; `null` leaves the header out. Defaults to the body's length (0 without body). */
  readonly contentLength?: number | null | undefined;
  /** Defaults to `BITS_POST`. */
  readonly method?: string | undefined;
  /** Defaults to `1.1`. */
  readonly httpVersion?: string | undefined;
  /** Check the response as a BITS Ack. Defaults to true. */
  readonly strict?: boolean | undefined;
}

/** Options of {@link BitsClient.fragment}. */
export interface FragmentOptions {
  /** Declared `Content-Length` instead of the body length (required for a stream body). */
  readonly contentLength?: number;
  readonly extraHeaders?: HeaderList;
  /** Overrides the `Content-Range` value built from start/end/total; `null` leaves it out. */
  readonly contentRange?: string | null;
  /** `Content-Name` value (the Windows client repeats it, §3.3). Defaults to the last path segment. */
  readonly contentName?: string | null;
}

/** Bytes to upload, readable in slices. */
export interface ByteSource {
  readonly size: number;
  /** Bytes `start` to `end - 1`. */
  slice(start: number, end: number): Readable;
}

/** Options of {@link BitsClient.uploadFile}. */
export interface UploadOptions {
  /** Continue this session instead of creating one. Defaults to a new session. */
  readonly sessionId?: string;
  /** Offset of the first fragment; past the server's offset it draws a 416 and a resync. Defaults to 0. */
  readonly startAt?: number;
  /** Send Close-Session at the end. Defaults to true. */
  readonly close?: boolean;
  /** Protocols to offer in Create-Session. Defaults to {@link BITS_PROTOCOL}. */
  readonly protocols?: string;
  /** Stop after this many fragments (a loop guard). Defaults to `4 * size / fragmentSize + 64`. */
  readonly maxFragments?: number;
}

/** What {@link BitsClient.uploadFile} did. */
export interface UploadResult {
  readonly sessionId: string;
  /** Ack of every fragment, in order. */
  readonly fragmentAcks: readonly HttpResponse[];
  /** `BITS-Received-Content-Range` of every fragment Ack. */
  readonly offsets: readonly number[];
  /** The Close-Session Ack, if one was sent. */
  readonly closeAck: HttpResponse | undefined;
  /** Fragment size at the end (smaller than asked after 413 Acks). */
  readonly finalFragmentSize: number;
}

const DEFAULT_TIMEOUT_MS = 20_000;
const CRLF = '\r\n';
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HRESULT_TEXT = /^0x[0-9A-F]{8}$/;
const CONTEXT_TEXT = /^0x[0-9A-F]+$/;
const ERROR_HEADERS = ['bits-error-code', 'bits-error', 'bits-error-context'] as const;

/** One TCP connection and the bytes received on it. */
class Connection {
  readonly id: number;
  readonly socket: net.Socket;
  #buffer: Buffer = Buffer.alloc(0);
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;

  constructor(socket: net.Socket, id: number) {
    this.socket = socket;
    this.id = id;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
      this.#notify();
    });
    socket.on('end', () => {
      this.#ended = true;
      this.#notify();
    });
    socket.on('close', () => {
      this.#ended = true;
      this.#notify();
    });
    socket.on('error', (error: Error) => {
      this.#error ??= error;
      this.#ended = true;
      this.#notify();
    });
  }

  static async open(port: number, id: number): Promise<Connection> {
    const socket = net.connect({ port, host: '127.0.0.1' });
    socket.setNoDelay(true);
    await once(socket, 'connect');
    return new Connection(socket, id);
  }

  /** True once the server closed its side (or the socket failed). */
  get ended(): boolean {
    return this.#ended;
  }

  get pending(): Buffer {
    return this.#buffer;
  }

  get error(): Error | undefined {
    return this.#error;
  }

  /** Reads the next complete response, or throws when the connection ends first or time runs out. */
  async readResponse(timeoutMs: number): Promise<HttpResponse> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const parsed = parseResponse(this.#buffer, this.#ended, this.id);
      if (parsed !== undefined) {
        this.#buffer = this.#buffer.subarray(parsed.consumed);
        return parsed.response;
      }
      if (this.#ended) {
        throw new Error(
          `connection ${this.id} ended before a complete response (${this.#error?.message ?? 'closed'}); ` +
            `received ${JSON.stringify(this.#buffer.toString('latin1').slice(0, 300))}`,
        );
      }
      await this.#waitForEvent(deadline - Date.now());
    }
  }

  /** Waits until the server closes the connection; false when it is still open after `timeoutMs`. */
  async waitForEnd(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#ended) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await this.#waitForEvent(left).catch(() => undefined);
    }
    return true;
  }

  destroy(): void {
    this.socket.destroy();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  #waitForEvent(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      if (timeoutMs <= 0) {
        reject(new Error(`connection ${this.id}: no response within the time limit`));
        return;
      }
      const timer = setTimeout(() => {
        this.#wake = undefined;
        reject(new Error(`connection ${this.id}: no response within the time limit`));
      }, timeoutMs);
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}

/**
 * A BITS client for one server. Requests are sent one at a time (§2.4); a second request while one
 * is outstanding throws.
 */
export class BitsClient {
  readonly port: number;
  readonly mode: ConnectionMode;
  readonly host: string;
  readonly userAgent: string;
  readonly timeoutMs: number;
  #connection: Connection | undefined;
  #connectionsOpened = 0;
  #busy = false;

  /** @param target a port, or a base URL such as `http://127.0.0.1:1234` (only host and port are used). */
  constructor(target: number | string | URL, options: BitsClientOptions = {}) {
    const port = typeof target === 'number' ? target : Number(new URL(String(target)).port);
    if (!Number.isInteger(port) || port <= 0) throw new TypeError(`BitsClient: no port in ${String(target)}`);
    this.port = port;
    this.mode = options.connection ?? 'keep-alive';
    this.host = options.host ?? `127.0.0.1:${port}`;
    this.userAgent = options.userAgent ?? 'Microsoft BITS/7.8';
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /** Connections this client opened so far. */
  get connectionsOpened(): number {
    return this.#connectionsOpened;
  }

  ping(path: string): Promise<HttpResponse> {
    return this.packet({ target: path, packetType: 'Ping' });
  }

  createSession(path: string, protocols: string = BITS_PROTOCOL): Promise<HttpResponse> {
    return this.packet({ target: path, packetType: 'Create-Session', supportedProtocols: protocols });
  }

  /** Create-Session that must succeed (200, §3.2); returns the session id. */
  async openSession(path: string, protocols: string = BITS_PROTOCOL): Promise<string> {
    const response = await this.createSession(path, protocols);
    const id = response.headers['bits-session-id'];
    if (response.status !== 200 || id === undefined || id === '') {
      throw new BitsProtocolViolation(`Create-Session for ${path} did not succeed`, response);
    }
    return id;
  }

  /** Fragment `bytes start-end/total` (inclusive offsets, §3.3) with `body`. */
  fragment(
    path: string,
    sessionId: string,
    start: number,
    end: number,
    total: number,
    body: Buffer | Readable,
    options: FragmentOptions = {},
  ): Promise<HttpResponse> {
    if (!Buffer.isBuffer(body) && options.contentLength === undefined) {
      throw new TypeError('BitsClient.fragment: a stream body needs options.contentLength');
    }
    const contentRange = options.contentRange === undefined ? `bytes ${start}-${end}/${total}` : options.contentRange;
    const contentName = options.contentName === undefined ? lastSegment(path) : options.contentName;
    return this.packet({
      target: path,
      packetType: 'Fragment',
      sessionId,
      contentName: contentName ?? undefined,
      contentRange: contentRange ?? undefined,
      headers: options.extraHeaders,
      body,
      contentLength: options.contentLength,
    });
  }

  close(path: string, sessionId: string): Promise<HttpResponse> {
    return this.packet({ target: path, packetType: 'Close-Session', sessionId });
  }

  cancel(path: string, sessionId: string): Promise<HttpResponse> {
    return this.packet({ target: path, packetType: 'Cancel-Session', sessionId });
  }

  /** Sends one request built from `request` and returns its response (checked as an Ack unless `strict: false`). */
  async packet(request: PacketRequest): Promise<HttpResponse> {
    const body = request.body ?? Buffer.alloc(0);
    const declared =
      request.contentLength === undefined ? (Buffer.isBuffer(body) ? body.length : undefined) : request.contentLength;
    if (declared === undefined) throw new TypeError('BitsClient.packet: a stream body needs contentLength');
    const headers: [string, string][] = [['Accept', '*/*']];
    if (request.packetType !== null) headers.push(['BITS-Packet-Type', request.packetType]);
    if (request.sessionId !== undefined) headers.push(['BITS-Session-Id', request.sessionId]);
    if (request.supportedProtocols !== undefined) headers.push(['BITS-Supported-Protocols', request.supportedProtocols]);
    if (request.contentName !== undefined) headers.push(['Content-Name', request.contentName]);
    if (request.contentRange !== undefined) headers.push(['Content-Range', request.contentRange]);
    headers.push(['User-Agent', this.userAgent], ['Host', this.host]);
    for (const [name, value] of request.headers ?? []) headers.push([name, value]);
    if (declared !== null) headers.push(['Content-Length', String(declared)]);
    headers.push(['Connection', this.mode === 'keep-alive' ? 'Keep-Alive' : 'close']);
    const head =
      `${request.method ?? 'BITS_POST'} ${request.target} HTTP/${request.httpVersion ?? '1.1'}${CRLF}` +
      headers.map(([name, value]) => `${name}: ${value}${CRLF}`).join('') +
      CRLF;
    const [response] = await this.#exchange([Buffer.from(head, 'latin1'), body], 1, this.mode === 'per-packet');
    if (response === undefined) throw new Error('no response');
    if (request.strict !== false) checkAck(response);
    return response;
  }

  /**
   * Writes `requestBytes` as they are (latin1 for strings) on the client's connection and returns
   * the next `responses` responses, unchecked. In `per-packet` mode the connection is closed
   * afterwards (the bytes decide whether they ask the server to close it). Responses to HEAD are
   * not supported (the parser would wait for the body their Content-Length announces).
   */
  async raw(requestBytes: string | Buffer, responses = 1): Promise<HttpResponse[]> {
    const bytes = typeof requestBytes === 'string' ? Buffer.from(requestBytes, 'latin1') : requestBytes;
    return this.#exchange([bytes], responses, false);
  }

  /**
   * Sends the head of Fragment `bytes start-end/total` and only `prefix` of its body, waits until
   * the bytes left this process, then for `options.beforeDestroy` (or 150 ms), then destroys the
   * connection: a transfer cut off mid-fragment (§6.3). The next request uses a new connection.
   */
  async fragmentCutOff(
    path: string,
    sessionId: string,
    start: number,
    end: number,
    total: number,
    prefix: Buffer,
    options: { readonly beforeDestroy?: () => Promise<void> } = {},
  ): Promise<void> {
    this.#enter();
    try {
      const connection = await this.#connectionForRequest();
      const head =
        `BITS_POST ${path} HTTP/1.1${CRLF}Accept: */*${CRLF}BITS-Packet-Type: Fragment${CRLF}` +
        `BITS-Session-Id: ${sessionId}${CRLF}Content-Name: ${lastSegment(path)}${CRLF}` +
        `Content-Range: bytes ${start}-${end}/${total}${CRLF}User-Agent: ${this.userAgent}${CRLF}` +
        `Host: ${this.host}${CRLF}Content-Length: ${end - start + 1}${CRLF}Connection: Keep-Alive${CRLF}${CRLF}`;
      await writeAll(connection.socket, Buffer.from(head, 'latin1'));
      await writeAll(connection.socket, prefix);
      await (options.beforeDestroy?.() ?? new Promise((resolve) => setTimeout(resolve, 150)));
      if (connection.pending.length > 0) {
        throw new Error(`the server answered a fragment it had only part of: ${connection.pending.toString('latin1')}`);
      }
      connection.destroy();
      this.#connection = undefined;
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Runs a whole upload like the Windows client (§1, §9.1): Create-Session, then Fragments of at
   * most `fragmentSize` bytes, each starting at the `BITS-Received-Content-Range` of the previous
   * Ack (after 200 and after 416), smaller fragments after 413, then Close-Session. A zero-byte
   * source is sent as one empty Fragment `bytes 0--1/0` (§6.5, TV-11).
   */
  async uploadFile(
    path: string,
    source: Buffer | string | ByteSource,
    fragmentSize: number,
    options: UploadOptions = {},
  ): Promise<UploadResult> {
    const data = await toByteSource(source);
    const sessionId = options.sessionId ?? (await this.openSession(path, options.protocols));
    const fragmentAcks: HttpResponse[] = [];
    const offsets: number[] = [];
    let size = fragmentSize;
    let offset = options.startAt ?? 0;
    const maxFragments = options.maxFragments ?? Math.ceil((4 * data.size) / fragmentSize) + 64;
    let done = false;
    while (!done) {
      if (fragmentAcks.length >= maxFragments) throw new Error(`upload of ${path} did not finish in ${maxFragments} fragments`);
      const end = Math.min(offset + size, data.size);
      const ack =
        data.size === 0
          ? await this.fragment(path, sessionId, 0, -1, 0, Buffer.alloc(0))
          : await this.fragment(path, sessionId, offset, end - 1, data.size, data.slice(offset, end), {
              contentLength: end - offset,
            });
      fragmentAcks.push(ack);
      if (ack.status === 413) {
        // §3.3, §9.1: resend smaller, never below 5 KB.
        if (size <= 5 * 1024) throw new BitsProtocolViolation('413 for a fragment of 5 KB or less', ack);
        size = Math.max(5 * 1024, Math.floor(size / 2));
        continue;
      }
      if (ack.status !== 200 && ack.status !== 416) {
        throw new BitsProtocolViolation(`fragment bytes ${offset}-${end - 1}/${data.size} failed`, ack);
      }
      const received = receivedOffset(ack);
      if (received > data.size) throw new BitsProtocolViolation(`server reports ${received} of ${data.size} bytes`, ack);
      offsets.push(received);
      offset = received;
      done = received === data.size;
    }
    const closeAck = options.close === false ? undefined : await this.close(path, sessionId);
    if (closeAck !== undefined && closeAck.status !== 200) throw new BitsProtocolViolation('Close-Session failed', closeAck);
    return { sessionId, fragmentAcks, offsets, closeAck, finalFragmentSize: size };
  }

  /** Closes the client's connection. */
  dispose(): void {
    this.#connection?.destroy();
    this.#connection = undefined;
  }

  /** Connection currently kept open (keep-alive mode), if any. */
  get currentConnection(): net.Socket | undefined {
    return this.#connection?.socket;
  }

  #enter(): void {
    if (this.#busy) throw new Error('BitsClient: one request at a time (§2.4)');
    this.#busy = true;
  }

  async #connectionForRequest(): Promise<Connection> {
    const current = this.#connection;
    if (current !== undefined && this.mode === 'keep-alive' && !current.ended) {
      if (current.pending.length > 0) {
        throw new BitsProtocolViolation(
          `unexpected bytes after the last response on connection ${current.id}: ` +
            JSON.stringify(current.pending.toString('latin1').slice(0, 200)),
        );
      }
      return current;
    }
    current?.destroy();
    this.#connectionsOpened += 1;
    const connection = await Connection.open(this.port, this.#connectionsOpened);
    this.#connection = connection;
    return connection;
  }

  /**
   * Sends `parts` and reads `count` responses. When the request asked for `Connection: close`
   * (`askedToClose`) or a response announces it, the server must close the connection and send
   * nothing more.
   */
  async #exchange(parts: readonly (Buffer | Readable)[], count: number, askedToClose: boolean): Promise<HttpResponse[]> {
    this.#enter();
    try {
      const connection = await this.#connectionForRequest();
      const responses: HttpResponse[] = [];
      const reading = (async () => {
        for (let i = 0; i < count; i++) responses.push(await connection.readResponse(this.timeoutMs));
      })();
      // Writing may fail once the server answered early and closed (413); the response still counts.
      let writeError: unknown;
      const writing = sendParts(connection.socket, parts).catch((error: unknown) => {
        writeError = error ?? new Error('write failed');
      });
      await reading;
      const closing = askedToClose || responses.some((response) => /\bclose\b/i.test(response.headers.connection ?? ''));
      if (closing) {
        const ended = await connection.waitForEnd(2_000);
        connection.destroy();
        this.#connection = undefined;
        if (!ended) throw new BitsProtocolViolation(`connection ${connection.id} still open after Connection: close`);
        if (connection.pending.length > 0) {
          throw new BitsProtocolViolation(
            `bytes after the last response on connection ${connection.id}: ` +
              JSON.stringify(connection.pending.toString('latin1').slice(0, 200)),
          );
        }
        return responses;
      }
      await writing;
      if (writeError !== undefined || this.mode === 'per-packet') {
        connection.destroy();
        this.#connection = undefined;
      }
      if (writeError !== undefined) throw writeError;
      return responses;
    } finally {
      this.#busy = false;
    }
  }
}

/**
 * Checks the rules every Ack obeys (§0.5, §2.3, §4, §8.1-8.3) and throws {@link BitsProtocolViolation}
 * otherwise. Status-specific expectations are left to the tests.
 */
export function checkAck(response: HttpResponse): void {
  const fail = (problem: string): never => {
    throw new BitsProtocolViolation(problem, response);
  };
  if (response.httpVersion !== '1.1') fail('an Ack must be HTTP/1.1 (§2.1)');
  const values = (name: string): string[] =>
    response.rawHeaders.filter(([key]) => key.toLowerCase() === name).map(([, value]) => value);
  const packetType = values('bits-packet-type');
  if (packetType.length !== 1 || packetType[0] !== 'Ack') fail('expected exactly one "BITS-Packet-Type: Ack" (§4)');
  const contentLength = values('content-length');
  if (contentLength.length !== 1 || contentLength[0] !== '0') fail('expected exactly one "Content-Length: 0" (§2.3)');
  if (values('transfer-encoding').length > 0) fail('an Ack must not be chunked (§0.5)');
  if (response.body.length > 0) fail('an Ack must not have a body (§2.3)');
  for (const [name] of response.rawHeaders) {
    const key = name.toLowerCase();
    if (key.startsWith('bits-') && values(key).length > 1) fail(`header ${name} appears more than once`);
  }
  const present = ERROR_HEADERS.filter((name) => values(name).length > 0);
  if (present.length > 0) {
    if (present.length !== ERROR_HEADERS.length) fail('BITS-Error-Code, BITS-Error and BITS-Error-Context go together (§8.1)');
    const code = values('bits-error-code')[0] ?? '';
    if (!HRESULT_TEXT.test(code)) fail('BITS-Error-Code must be 0x plus 8 upper-case hex digits (§8.2)');
    if (values('bits-error')[0] !== code) fail('BITS-Error must equal BITS-Error-Code (§8.1)');
    if (!CONTEXT_TEXT.test(values('bits-error-context')[0] ?? '')) fail('BITS-Error-Context must be 0x plus hex digits (§8.2)');
    if (response.status === 200 || response.status === 201) fail('error headers on a success Ack (§8.3)');
  }
}

/** `BITS-Received-Content-Range` of a Fragment Ack as a number; throws unless it is one decimal number (§0.2). */
export function receivedOffset(response: HttpResponse): number {
  const value = response.headers['bits-received-content-range'];
  if (value === undefined || !/^\d+$/.test(value)) {
    throw new BitsProtocolViolation('BITS-Received-Content-Range must be one decimal number (§0.2, §3.3)', response);
  }
  return Number(value);
}

/** Human-readable form of a response for failure messages. */
export function describeResponse(response: HttpResponse): string {
  const lines = [`HTTP/${response.httpVersion} ${response.status} ${response.statusMessage}`];
  for (const [name, value] of response.rawHeaders) lines.push(`${name}: ${value}`);
  const body = response.body.length === 0 ? '' : `\n\n${response.body.toString('latin1').slice(0, 500)}`;
  return `${lines.join('\n')}${body}`;
}

/**
 * Parses one HTTP/1.1 response at the start of `buf`. Undefined when more bytes are needed; throws
 * on bytes that are not a valid response.
 */
export function parseResponse(
  buf: Buffer,
  ended: boolean,
  connection = 0,
): { response: HttpResponse; consumed: number } | undefined {
  const headEnd = buf.indexOf('\r\n\r\n', 0, 'latin1');
  if (headEnd === -1) return undefined;
  const lines = buf.toString('latin1', 0, headEnd).split(CRLF);
  const statusLine = /^HTTP\/(\d\.\d) (\d{3}) ?(.*)$/.exec(lines[0] ?? '');
  if (statusLine === null) {
    throw new BitsProtocolViolation(`not an HTTP status line: ${JSON.stringify(buf.toString('latin1', 0, 120))}`);
  }
  const rawHeaders: [string, string][] = [];
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon) : '';
    if (!TOKEN.test(name)) throw new BitsProtocolViolation(`bad response header line ${JSON.stringify(line)}`);
    const value = line.slice(colon + 1).trim();
    rawHeaders.push([name, value]);
    const key = name.toLowerCase();
    headers[key] = headers[key] === undefined ? value : `${headers[key]}, ${value}`;
  }
  const status = Number(statusLine[2]);
  const base = { httpVersion: statusLine[1] ?? '', status, statusMessage: statusLine[3] ?? '', rawHeaders, headers, connection };
  const bodyStart = headEnd + 4;
  if (status < 200 || status === 204 || status === 304) {
    return { response: { ...base, body: Buffer.alloc(0) }, consumed: bodyStart };
  }
  if (/\bchunked\b/i.test(headers['transfer-encoding'] ?? '')) {
    const chunks: Buffer[] = [];
    let pos = bodyStart;
    for (;;) {
      const lineEnd = buf.indexOf(CRLF, pos, 'latin1');
      if (lineEnd === -1) return undefined;
      const size = Number.parseInt(buf.toString('latin1', pos, lineEnd).split(';')[0] ?? '', 16);
      if (!Number.isInteger(size) || size < 0) throw new BitsProtocolViolation('bad chunk size line');
      pos = lineEnd + 2;
      if (size === 0) {
        const trailerEnd = buf.indexOf('\r\n\r\n', pos - 2, 'latin1');
        if (trailerEnd === -1) return undefined;
        return { response: { ...base, body: Buffer.concat(chunks) }, consumed: trailerEnd + 4 };
      }
      if (buf.length < pos + size + 2) return undefined;
      chunks.push(buf.subarray(pos, pos + size));
      pos += size + 2;
    }
  }
  const length = headers['content-length'];
  if (length !== undefined) {
    if (!/^\d+$/.test(length)) throw new BitsProtocolViolation(`bad Content-Length ${JSON.stringify(length)}`);
    const end = bodyStart + Number(length);
    if (buf.length < end) return undefined;
    return { response: { ...base, body: Buffer.from(buf.subarray(bodyStart, end)) }, consumed: end };
  }
  // Delimited by the end of the connection.
  if (!ended) return undefined;
  return { response: { ...base, body: Buffer.from(buf.subarray(bodyStart)) }, consumed: buf.length };
}

async function writeAll(socket: net.Socket, data: Buffer): Promise<void> {
  if (data.length === 0) return;
  await new Promise<void>((resolve, reject) => {
    socket.write(data, (error) => (error ? reject(error) : resolve()));
  });
}

/** Waits for 'drain' or 'close', whichever comes first, and removes the other listener. */
function drainOrClose(socket: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.on('drain', done);
    socket.on('close', done);
  });
}

async function sendParts(socket: net.Socket, parts: readonly (Buffer | Readable)[]): Promise<void> {
  for (const part of parts) {
    if (Buffer.isBuffer(part)) {
      await writeAll(socket, part);
      continue;
    }
    for await (const chunk of part) {
      if (socket.destroyed) throw new Error('socket closed while sending the body');
      const data = Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk), 'latin1');
      if (!socket.write(data)) await drainOrClose(socket);
    }
  }
}

function lastSegment(path: string): string {
  const noQuery = path.split('?', 1)[0] ?? '';
  return noQuery.slice(noQuery.lastIndexOf('/') + 1) || 'file';
}

// ---------------------------------------------------------------------------------------------
// Test data

/**
 * Deterministic pseudo-random bytes: AES-128-CTR keystream keyed by SHA-256(`seed`), so any slice
 * can be produced on its own, in 64 KiB chunks, without holding the whole file.
 */
export function patternSource(seed: string, size: number): ByteSource {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16);
  return {
    size,
    slice(start: number, end: number): Readable {
      if (start < 0 || end > size || start > end) throw new RangeError(`slice ${start}-${end} of ${size}`);
      return Readable.from(keystream(key, start, end));
    },
  };
}

/** Bytes `start` to `end - 1` of {@link patternSource}(`seed`) as one buffer (keep it small). */
export async function patternBytes(seed: string, start: number, end: number): Promise<Buffer> {
  return collect(patternSource(seed, end).slice(start, end));
}

function* keystream(key: Buffer, start: number, end: number): Generator<Buffer> {
  const block = Math.floor(start / 16);
  const counter = Buffer.alloc(16);
  counter.writeBigUInt64BE(BigInt(block), 8);
  const cipher = createCipheriv('aes-128-ctr', key, counter);
  let skip = start - block * 16;
  let position = block * 16;
  const chunk = 64 * 1024;
  while (position < end) {
    const length = Math.min(chunk, end - position);
    let out = cipher.update(Buffer.alloc(length));
    position += length;
    if (skip > 0) {
      out = out.subarray(skip);
      skip = 0;
    }
    if (out.length > 0) yield out;
  }
}

/** A buffer as a {@link ByteSource}. */
export function bufferSource(data: Buffer): ByteSource {
  return {
    size: data.length,
    slice: (start, end) => Readable.from([data.subarray(start, end)]),
  };
}

/** A file as a {@link ByteSource}. */
export async function fileSource(path: string): Promise<ByteSource> {
  const { size } = await fsp.stat(path);
  return {
    size,
    slice: (start, end) =>
      end === start ? Readable.from([]) : createReadStream(path, { start, end: end - 1, highWaterMark: 64 * 1024 }),
  };
}

async function toByteSource(source: Buffer | string | ByteSource): Promise<ByteSource> {
  if (Buffer.isBuffer(source)) return bufferSource(source);
  if (typeof source === 'string') return fileSource(source);
  return source;
}

/** SHA-256 (hex) of a whole source, streamed. */
export async function sha256OfSource(source: ByteSource): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of source.slice(0, source.size)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** SHA-256 (hex) of a file, streamed. */
export async function sha256OfFile(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Writes a source to a file (streamed) and returns its SHA-256. */
export async function writeSourceToFile(source: ByteSource, path: string): Promise<string> {
  const hash = createHash('sha256');
  const handle = await fsp.open(path, 'wx');
  try {
    for await (const chunk of source.slice(0, source.size)) {
      const data = chunk as Buffer;
      hash.update(data);
      await handle.write(data);
    }
  } finally {
    await handle.close();
  }
  return hash.digest('hex');
}

async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}
