import { promises as fsp, createWriteStream } from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { inspect } from 'node:util';
import type { ReplyHandler, ReplyResult, ReplyUpload } from './types';

/**
 * Options of {@link httpNotification}: the IIS-compatible notification of a server application
 * over HTTP (bits-protocol.md §10.1-10.4, IIS `BITSServerNotificationType` 1 and 2).
 */
export interface HttpNotificationOptions {
  /**
   * Absolute `http:` or `https:` URL the notification is POSTed to (IIS `BITSServerNotificationURL`;
   * unlike IIS, HTTPS is allowed). The query string of the upload URL is appended to it (after its
   * own query, joined with `&`). Required.
   */
  readonly url: string;
  /**
   * `'reference'` (IIS type 1): the request is empty and names server-local files in
   * `BITS-Request-DataFile-Name` (the uploaded bytes: the storage's own file when it has one, e.g.
   * `FileSystemStorage`, to be treated as read-only; else a temporary copy) and
   * `BITS-Response-DataFile-Name` (where the application may write its reply; both valid until it
   * answers). `'value'` (IIS type 2): the request body is the uploaded file and the response body is
   * the reply. Required.
   */
  readonly mode: 'reference' | 'value';
  /**
   * Milliseconds allowed for each phase of the exchange, like IIS (§10.4): connecting and sending
   * the request (with its body in mode `value`), waiting for the response headers, and receiving
   * the response body (the reply, in mode `value`). When one runs out the final fragment is
   * answered 408 with 0x80070112 (§15 A17), which the client retries (§9.2).
   * Defaults to 5 minutes (300 000).
   */
  readonly timeout?: number;
  /**
   * Extra request headers, e.g. `{ Authorization: 'Bearer ...' }`. They may replace `User-Agent`
   * and `Accept`, not the headers the notification computes (`Content-Length`, `Transfer-Encoding`,
   * `Host`, `Connection`, `Expect`, `BITS-*`). Credentials in `url` (`http://user:pass@host/`) are
   * sent as Basic authorization. Defaults to none.
   */
  readonly headers?: Readonly<Record<string, string>>;
  /**
   * Certificate authorities (PEM) trusted for an `https:` URL instead of Node's defaults, e.g. the
   * certificate of an internal CA or a self-signed application server. Defaults to Node's
   * trusted CAs.
   */
  readonly ca?: string | Buffer | readonly (string | Buffer)[];
  /**
   * Folder for the temporary files of mode `reference`: the spooled upload (when the storage has
   * no local file for it) and the response file, each notification in its own private folder
   * (mode 0700) removed after the answer. The application must be able to read and write there,
   * so it runs as the same OS user (or give a folder both can use). Defaults to `os.tmpdir()`.
   */
  readonly tempDirectory?: string;
}

/** Why a notification failed; see {@link HttpNotificationError}. */
export type HttpNotificationFailure = 'status' | 'timeout' | 'network' | 'upload' | 'response';

/**
 * A notification that did not produce a reply. `status` and `errorCode` are what the final
 * fragment's error Ack carries (context 0x7, §8.4); `responseStatus` is the application's own HTTP
 * status when it answered.
 *
 * - `status`: the application answered outside 2xx: `status` is its status (500 when it is not
 *   400-599, e.g. a redirect, which is never followed), `errorCode` BG_E_HTTP_ERROR_<status>
 *   (0x80190000 + status, §8.6), so the client classifies it per §9.2 (5xx, 408 and 409 retried).
 * - `timeout`: a phase exceeded `timeout`: 408 and 0x80070112 (§10.4, §15 A17); retried.
 * - `network`: no usable answer (refused, reset, unresolvable host, TLS failure, malformed
 *   response): 502 with the matching WinHTTP HRESULT (e.g. 0x80072EFD ERROR_WINHTTP_CANNOT_CONNECT);
 *   retried.
 * - `upload`: the uploaded bytes could not be read from storage: 500 and E_FAIL; retried.
 * - `response`: mode `reference`, the response file exists but cannot be opened: 500 and E_FAIL.
 */
export class HttpNotificationError extends Error {
  readonly reason: HttpNotificationFailure;
  /** HTTP status of the error Ack (400-599). */
  readonly status: number;
  /** HRESULT of the error Ack (`BITS-Error-Code`). */
  readonly errorCode: number;
  /** Status of the application's answer, when it answered. */
  readonly responseStatus: number | undefined;

  constructor(
    reason: HttpNotificationFailure,
    message: string,
    wire: { readonly status: number; readonly errorCode: number; readonly responseStatus?: number },
    cause?: unknown,
  ) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'HttpNotificationError';
    this.reason = reason;
    this.status = wire.status;
    this.errorCode = wire.errorCode;
    this.responseStatus = wire.responseStatus;
  }
}

/** Defaults of {@link HttpNotificationOptions}. */
export const HTTP_NOTIFICATION_DEFAULTS = Object.freeze({ timeout: 5 * 60 * 1000 });

/**
 * `User-Agent` of the notification. IIS sends `BITSExts 1.5` (§10.3); this one starts the same way
 * so that applications matching on it keep working.
 */
export const NOTIFICATION_USER_AGENT = 'BITSExts 1.5 (compatible; bits-upload)';

/** Notification headers (§10.3, §10.4, §15 A26). */
const H = {
  originalUrl: 'BITS-Original-Request-URL',
  requestFile: 'BITS-Request-DataFile-Name',
  responseFile: 'BITS-Response-DataFile-Name',
  staticUrl: 'bits-static-response-url',
  copyToDestination: 'bits-copy-file-to-destination',
} as const;

/** HRESULTs of failed notifications. */
const CODES = {
  /** BG_E_HTTP_ERROR_<status> is this plus the status (§8.6). */
  httpErrorBase: 0x80190000,
  /** The spec's literal value for a notification timeout (§10.4, §15 A17). */
  timeout: 0x80070112,
  E_FAIL: 0x80004005,
  /** HRESULT_FROM_WIN32(ERROR_WINHTTP_NAME_NOT_RESOLVED = 12007). */
  nameNotResolved: 0x80072ee7,
  /** HRESULT_FROM_WIN32(ERROR_WINHTTP_CANNOT_CONNECT = 12029). */
  cannotConnect: 0x80072efd,
  /** HRESULT_FROM_WIN32(ERROR_WINHTTP_CONNECTION_ERROR = 12030). */
  connectionError: 0x80072efe,
  /** HRESULT_FROM_WIN32(ERROR_WINHTTP_INVALID_SERVER_RESPONSE = 12152). */
  invalidServerResponse: 0x80072f78,
  /** HRESULT_FROM_WIN32(ERROR_WINHTTP_SECURE_FAILURE = 12175). */
  secureFailure: 0x80072f8f,
} as const;

/** Status of the error Ack when the application could not be reached or answered garbage. */
const NETWORK_STATUS = 502;

/** Header names the handler computes itself (lower case). */
const RESERVED_HEADERS = new Set(['content-length', 'transfer-encoding', 'host', 'connection', 'expect']);
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Header values Node accepts: visible ASCII, Latin-1, space and tab; no CR/LF. */
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
/** Longest delay a Node timer honours (2^31 - 1 ms). */
const MAX_TIMER_DELAY = 0x7fff_ffff;

const KNOWN_OPTIONS: readonly (keyof HttpNotificationOptions)[] = ['url', 'mode', 'timeout', 'headers', 'ca', 'tempDirectory'];

interface Config {
  readonly url: URL;
  readonly mode: 'reference' | 'value';
  readonly timeout: number;
  readonly headers: readonly (readonly [string, string])[];
  readonly ca: string | Buffer | (string | Buffer)[] | undefined;
  readonly tempDirectory: string | undefined;
}

/**
 * A {@link ReplyHandler} that notifies a server application over HTTP the way IIS's BITS server
 * extension does (bits-protocol.md §10.3-10.4) and turns its answer into the reply:
 *
 * - POSTs to `url` plus the upload URL's query string, with `BITS-Original-Request-URL`,
 *   `User-Agent: BITSExts 1.5 (compatible; bits-upload)` and `Accept: *\/*`;
 * - mode `value`: streams the upload as the body (`Content-Length` its size); a 2xx response body
 *   is the reply, streamed into storage;
 * - mode `reference`: `Content-Length: 0`, `BITS-Request-DataFile-Name` (the storage's local file,
 *   else a private temporary copy) and `BITS-Response-DataFile-Name` (a fresh path); after a 2xx
 *   answer the reply is what the application wrote there (empty if it wrote nothing); the
 *   temporary files are removed;
 * - either mode: `BITS-Static-Response-URL` makes that URL the reply, `BITS-Copy-File-To-Destination`
 *   also places the upload at its destination;
 * - otherwise throws an {@link HttpNotificationError} whose `status` and `errorCode` the final
 *   fragment's error Ack carries with context 0x7; the client resends the final fragment later and
 *   the application is notified again (it must tolerate duplicates, §10.2).
 *
 * Nothing is buffered: the upload and the reply stream.
 *
 * @throws TypeError when an option is invalid, naming it.
 */
export function httpNotification(options: HttpNotificationOptions): ReplyHandler {
  const config = resolveNotificationOptions(options);
  return (upload, req) => notify(config, upload, req);
}

function resolveNotificationOptions(input: unknown): Config {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new TypeError(
      `httpNotification expects an options object, got ${show(input)}. ` +
        "Example: httpNotification({ url: 'http://127.0.0.1:9000/notify', mode: 'value' }).",
    );
  }
  const given = Object.fromEntries(Object.entries(input).filter(([, value]) => value !== undefined)) as Partial<
    Record<string, unknown>
  >;
  for (const key of Object.keys(given)) {
    if (!(KNOWN_OPTIONS as readonly string[]).includes(key)) {
      throw new TypeError(`httpNotification: unknown option "${key}". Known options: ${KNOWN_OPTIONS.join(', ')}.`);
    }
  }
  return Object.freeze({
    url: urlOption(given.url),
    mode: modeOption(given.mode),
    timeout: timeoutOption(given.timeout),
    headers: headersOption(given.headers),
    ca: caOption(given.ca),
    tempDirectory: tempDirectoryOption(given.tempDirectory),
  });
}

function urlOption(value: unknown): URL {
  let url: URL | undefined;
  if (typeof value === 'string') {
    try {
      url = new URL(value);
    } catch {
      url = undefined;
    }
  }
  if (url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
    throw new TypeError(
      `httpNotification: option "url" must be an absolute http: or https: URL, got ${show(value)}. ` +
        "Example: url: 'http://127.0.0.1:9000/bits/notify'.",
    );
  }
  url.hash = '';
  return url;
}

function modeOption(value: unknown): 'reference' | 'value' {
  if (value !== 'reference' && value !== 'value') {
    throw new TypeError(
      `httpNotification: option "mode" must be 'reference' or 'value', got ${show(value)}. ` +
        "'value' posts the upload as the body; 'reference' names its file in BITS-Request-DataFile-Name.",
    );
  }
  return value;
}

function timeoutOption(value: unknown): number {
  if (value === undefined) return HTTP_NOTIFICATION_DEFAULTS.timeout;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_TIMER_DELAY) {
    throw new TypeError(
      `httpNotification: option "timeout" must be an integer from 1 to ${MAX_TIMER_DELAY} (milliseconds), ` +
        `got ${show(value)}. Omit it for the default of ${HTTP_NOTIFICATION_DEFAULTS.timeout}.`,
    );
  }
  return value;
}

function headersOption(value: unknown): readonly (readonly [string, string])[] {
  if (value === undefined) return [];
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new TypeError(
      `httpNotification: option "headers" must be an object of header names to string values, got ${show(value)}. ` +
        "Example: headers: { Authorization: 'Bearer <token>' }.",
    );
  }
  const seen = new Set<string>();
  const out: [string, string][] = [];
  for (const [name, headerValue] of Object.entries(value)) {
    const lower = name.toLowerCase();
    if (!TOKEN.test(name) || typeof headerValue !== 'string' || !HEADER_VALUE.test(headerValue)) {
      throw new TypeError(
        `httpNotification: option "headers" has an invalid header ${show(name)}: ${show(headerValue)}. ` +
          'Names are HTTP tokens, values strings without CR or LF.',
      );
    }
    if (RESERVED_HEADERS.has(lower) || lower.startsWith('bits-')) {
      throw new TypeError(
        `httpNotification: option "headers" may not set ${JSON.stringify(name)}; the notification computes it. ` +
          'Remove it from headers.',
      );
    }
    if (seen.has(lower)) {
      throw new TypeError(`httpNotification: option "headers" names ${JSON.stringify(name)} twice (names ignore case).`);
    }
    seen.add(lower);
    out.push([name, headerValue]);
  }
  return Object.freeze(out);
}

function caOption(value: unknown): Config['ca'] {
  if (value === undefined) return undefined;
  const valid = (item: unknown): item is string | Buffer => typeof item === 'string' || Buffer.isBuffer(item);
  if (valid(value)) return value;
  if (Array.isArray(value) && value.length > 0 && value.every(valid)) return [...(value as (string | Buffer)[])];
  throw new TypeError(
    `httpNotification: option "ca" must be PEM certificates (a string, a Buffer or a non-empty array of them), ` +
      `got ${show(value)}. Omit it to trust Node's default CAs.`,
  );
}

function tempDirectoryOption(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value.trim() === '') {
    throw new TypeError(
      `httpNotification: option "tempDirectory" must be a non-empty folder path, got ${show(value)}. ` +
        'Omit it for os.tmpdir().',
    );
  }
  return value;
}

async function notify(config: Config, upload: ReplyUpload, req: IncomingMessage): Promise<ReplyResult> {
  const uploadTarget = requestTarget(req);
  const target = notificationTarget(config.url, uploadTarget);
  const headers = buildHeaders(config, originalRequestUrl(req, uploadTarget));
  return config.mode === 'value'
    ? notifyByValue(config, target, headers, upload)
    : notifyByReference(config, target, headers, upload);
}

async function notifyByValue(
  config: Config,
  target: URL,
  headers: Record<string, string>,
  upload: ReplyUpload,
): Promise<ReplyResult> {
  let body: Readable;
  try {
    body = await upload.read();
  } catch (error) {
    throw uploadUnreadable(error);
  }
  headers['Content-Length'] = String(upload.size);
  const exchange = await post(config, target, headers, { stream: body, size: upload.size });
  const verdict = judge(exchange);
  if (verdict.url !== undefined) {
    exchange.discard();
    return { url: verdict.url, copyToDestination: verdict.copyToDestination };
  }
  return { body: exchange.body(), copyToDestination: verdict.copyToDestination };
}

async function notifyByReference(
  config: Config,
  target: URL,
  headers: Record<string, string>,
  upload: ReplyUpload,
): Promise<ReplyResult> {
  const folder = await fsp.mkdtemp(path.join(config.tempDirectory ?? os.tmpdir(), 'bits-notification-'));
  let reply: Readable | undefined;
  try {
    const requestFile = (await localFile(upload)) ?? (await spool(upload, path.join(folder, 'request.bin')));
    const responseFile = path.join(folder, 'response.bin');
    headers['Content-Length'] = '0';
    headers[H.requestFile] = requestFile;
    headers[H.responseFile] = responseFile;
    const exchange = await post(config, target, headers, undefined);
    exchange.discard();
    const verdict = judge(exchange);
    if (verdict.url !== undefined) return { url: verdict.url, copyToDestination: verdict.copyToDestination };
    reply = await openReply(responseFile);
    return { body: reply ?? Buffer.alloc(0), copyToDestination: verdict.copyToDestination };
  } finally {
    // The reply stays readable from its open descriptor. Where an open file cannot be removed
    // (Windows), the folder goes once the reply was read.
    await fsp.rm(folder, { recursive: true, force: true }).catch(() => {
      reply?.once('close', () => void fsp.rm(folder, { recursive: true, force: true }).catch(() => undefined));
    });
  }
}

/**
 * The storage's own file of the upload (`upload.localFile()`, e.g. `FileSystemStorage`), valid while
 * the handler runs; undefined when the storage has none or cannot tell (the upload is then copied).
 */
async function localFile(upload: ReplyUpload): Promise<string | undefined> {
  if (typeof upload.localFile !== 'function') return undefined;
  try {
    const file: unknown = await upload.localFile();
    return typeof file === 'string' && file !== '' ? file : undefined;
  } catch {
    return undefined;
  }
}

/** Copies the upload to `file` (mode 0600) and returns its path. */
async function spool(upload: ReplyUpload, file: string): Promise<string> {
  try {
    await pipeline(await upload.read(), createWriteStream(file, { mode: 0o600, flags: 'wx' }));
  } catch (error) {
    throw uploadUnreadable(error);
  }
  return file;
}

/** Opens the response file the application wrote, or undefined when it wrote none. */
async function openReply(file: string): Promise<Readable | undefined> {
  let handle: fsp.FileHandle;
  try {
    handle = await fsp.open(file, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new HttpNotificationError(
      'response',
      `The application's response file ${file} cannot be read: ${(error as Error).message}`,
      { status: 500, errorCode: CODES.E_FAIL },
      error,
    );
  }
  return handle.createReadStream();
}

/** What a 2xx answer asks for (§10.4). */
interface Verdict {
  readonly url: string | undefined;
  readonly copyToDestination: boolean;
}

function judge(exchange: Exchange): Verdict {
  const { response } = exchange;
  const status = response.statusCode ?? 0;
  if (status < 200 || status > 299) {
    exchange.discard();
    throw new HttpNotificationError(
      'status',
      `The application answered the notification with ${status} ${response.statusMessage ?? ''}`.trimEnd(),
      {
        status: status >= 400 && status <= 599 ? status : 500,
        errorCode: (CODES.httpErrorBase + status) >>> 0,
        responseStatus: status,
      },
    );
  }
  const staticUrl = single(response.headers[H.staticUrl])?.trim();
  return {
    url: staticUrl === undefined || staticUrl === '' ? undefined : staticUrl,
    copyToDestination: response.headers[H.copyToDestination] !== undefined,
  };
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** A notification answered: its response, whose body is either read as the reply or discarded. */
interface Exchange {
  readonly response: IncomingMessage;
  /** The response body as a stream that fails with an {@link HttpNotificationError}. */
  body(): Readable;
  /** Drains the response body; nothing waits for it. */
  discard(): void;
}

/**
 * POSTs the notification and resolves once the response headers arrived. Each phase (connect and
 * send, wait for headers, receive the body) gets `config.timeout`. `body` must yield exactly
 * `size` bytes.
 */
function post(
  config: Config,
  target: URL,
  headers: Record<string, string>,
  body: { readonly stream: Readable; readonly size: number } | undefined,
): Promise<Exchange> {
  return new Promise<Exchange>((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    let phase: 'sending' | 'waiting' | 'receiving' | 'done' = 'sending';
    let response: IncomingMessage | undefined;
    let reply: PassThrough | undefined;
    let uploadFailure: unknown;

    const request =
      target.protocol === 'https:'
        ? https.request(target, { method: 'POST', headers, ...(config.ca === undefined ? {} : { ca: config.ca }) })
        : http.request(target, { method: 'POST', headers });

    const settle = (): void => {
      phase = 'done';
      clearTimeout(timer);
    };
    const arm = (next: 'sending' | 'waiting' | 'receiving'): void => {
      phase = next;
      clearTimeout(timer);
      timer = setTimeout(() => {
        const error = new HttpNotificationError(
          'timeout',
          `The application did not answer the notification within ${config.timeout} ms (${next})`,
          { status: 408, errorCode: CODES.timeout },
        );
        settle();
        reply?.destroy(error);
        response?.destroy();
        request.destroy(error);
      }, config.timeout);
    };
    arm('sending');

    request.on('error', (error: Error) => {
      if (response !== undefined) {
        // After the answer a failure only matters to a reply still being read.
        if (reply !== undefined && phase !== 'done') reply.destroy(networkError(error));
        settle();
        return;
      }
      settle();
      if (error instanceof HttpNotificationError) reject(error);
      else if (uploadFailure !== undefined) reject(uploadUnreadable(uploadFailure));
      else reject(networkError(error));
    });
    request.on('finish', () => {
      if (response === undefined) arm('waiting');
    });
    request.on('response', (res: IncomingMessage) => {
      response = res;
      arm('receiving');
      res.on('end', settle);
      res.on('error', (error: Error) => {
        if (reply !== undefined && phase !== 'done') reply.destroy(networkError(error));
        settle();
      });
      res.on('close', () => {
        if (!res.complete && phase !== 'done') {
          reply?.destroy(networkError(Object.assign(new Error('the connection closed before the response ended'), { code: 'ECONNRESET' })));
          settle();
        }
        // An answer that came before the whole upload was sent (an early error): stop sending.
        if (!request.writableEnded) request.destroy();
      });
      resolve({
        response: res,
        body: () => {
          const stream = new PassThrough();
          reply = stream;
          // The reader gave up (its storage failed): stop receiving.
          stream.on('close', () => {
            if (phase !== 'done') {
              settle();
              res.destroy();
            }
          });
          res.pipe(stream);
          return stream;
        },
        discard: () => {
          res.resume();
        },
      });
    });

    if (body === undefined) {
      request.end();
    } else {
      send(request, body.stream, body.size, () => response !== undefined).catch((error: unknown) => {
        uploadFailure = error;
        request.destroy(error instanceof Error ? error : new Error(String(error)));
      });
    }
  });
}

/**
 * Writes `size` bytes of `stream` to `request` with backpressure and ends it; stops (destroying
 * `stream`) once `answered()` or the request is gone. Rejects when `stream` fails or its length
 * is not `size`.
 */
async function send(request: http.ClientRequest, stream: Readable, size: number, answered: () => boolean): Promise<void> {
  let sent = 0;
  for await (const chunk of stream) {
    if (answered() || request.destroyed) break;
    const bytes = chunk as Buffer;
    sent += bytes.length;
    if (sent > size) throw new Error(`the stored upload has more than its ${size} bytes`);
    if (!request.write(bytes)) await drained(request);
  }
  if (answered() || request.destroyed) {
    stream.destroy();
    return;
  }
  if (sent !== size) throw new Error(`the stored upload has ${sent} of its ${size} bytes`);
  request.end();
}

function drained(request: http.ClientRequest): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      request.off('drain', done);
      request.off('close', done);
      resolve();
    };
    request.on('drain', done);
    request.on('close', done);
  });
}

function networkError(cause: Error): HttpNotificationError {
  if (cause instanceof HttpNotificationError) return cause;
  const code = (cause as NodeJS.ErrnoException).code ?? '';
  let errorCode: number = CODES.connectionError;
  if (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'EADDRNOTAVAIL') {
    errorCode = CODES.cannotConnect;
  } else if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EAI_FAIL') {
    errorCode = CODES.nameNotResolved;
  } else if (code.startsWith('HPE_')) {
    errorCode = CODES.invalidServerResponse;
  } else if (code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_') || /CERT|SELF_SIGNED|UNABLE_TO_/.test(code)) {
    errorCode = CODES.secureFailure;
  }
  return new HttpNotificationError(
    'network',
    `The notification failed: ${cause.message}${code === '' ? '' : ` (${code})`}`,
    { status: NETWORK_STATUS, errorCode },
    cause,
  );
}

function uploadUnreadable(cause: unknown): HttpNotificationError {
  if (cause instanceof HttpNotificationError) return cause;
  return new HttpNotificationError(
    'upload',
    `The uploaded bytes could not be read for the notification: ${cause instanceof Error ? cause.message : String(cause)}`,
    { status: 500, errorCode: CODES.E_FAIL },
    cause,
  );
}

function buildHeaders(config: Config, originalUrl: string): Record<string, string> {
  const headers: Record<string, string> = {};
  const overridden = new Set(config.headers.map(([name]) => name.toLowerCase()));
  if (!overridden.has('user-agent')) headers['User-Agent'] = NOTIFICATION_USER_AGENT;
  if (!overridden.has('accept')) headers.Accept = '*/*';
  for (const [name, value] of config.headers) headers[name] = value;
  headers[H.originalUrl] = originalUrl;
  return headers;
}

/** The request-target of the upload as the client sent it (before any router rewrote `req.url`). */
function requestTarget(req: IncomingMessage): string {
  const { originalUrl } = req as IncomingMessage & { readonly originalUrl?: unknown };
  return typeof originalUrl === 'string' ? originalUrl : (req.url ?? '/');
}

/** The notification URL with the upload URL's query string appended (§10.3). */
function notificationTarget(base: URL, uploadTarget: string): URL {
  const target = new URL(base.href);
  const mark = uploadTarget.indexOf('?');
  const query = mark < 0 ? '' : uploadTarget.slice(mark + 1);
  if (query !== '') target.search = target.search.length > 1 ? `${target.search.slice(1)}&${query}` : query;
  return target;
}

/** Absolute URL of the upload: scheme of the connection, `Host` header, request-target (§10.3). */
function originalRequestUrl(req: IncomingMessage, uploadTarget: string): string {
  const encrypted = (req.socket as { readonly encrypted?: unknown }).encrypted === true;
  const host = single(req.headers.host) ?? localHost(req);
  if (/^https?:\/\//i.test(uploadTarget)) return uploadTarget; // absolute-form request-target
  return `${encrypted ? 'https' : 'http'}://${host}${uploadTarget.startsWith('/') ? '' : '/'}${uploadTarget}`;
}

function localHost(req: IncomingMessage): string {
  const address = req.socket.localAddress ?? '127.0.0.1';
  const port = req.socket.localPort;
  const name = address.includes(':') ? `[${address}]` : address;
  return port === undefined ? name : `${name}:${port}`;
}

function show(value: unknown): string {
  return inspect(value, { depth: 0, breakLength: Infinity });
}
