import http from 'node:http';
import https from 'node:https';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import createDebug from 'debug';
import { FramingTracker, type PassthroughReason } from './framing-tracker';
import { MARKER_LINE, MARKER_OVERHEAD, NATIVE_BITS_POST, restoreMarkedRequest } from './method-marker';
import { detach, pushPiece, readIntoSharedBuffer } from './shared-read-buffer';
import { createTrustedProxy, type TrustedProxy, type TrustedProxyOptions } from './trusted-proxy';

const debug = createDebug('bits-upload:method');

/** Options of {@link acceptBitsPost}. */
export interface AcceptBitsPostOptions {
  /**
   * Which connections get the `BITS_POST` support. `'all'` follows every HTTP/1 connection, which
   * is required behind reverse proxies and load balancers that pool upstream connections (a BITS
   * request can follow a GET from another client on the same connection). `'first-request'` follows
   * only connections whose first request is `BITS_POST` and gives every other connection back to
   * Node's native fast path; use it only when Windows clients connect directly.
   * Defaults to `'all'`.
   */
  readonly connections?: 'all' | 'first-request';
  /** Per-connection opt-out: return false to leave a connection untouched. Defaults to every connection. */
  readonly filter?: (socket: Socket) => boolean;
  /**
   * Longest request line, header line or chunk-size line the tracker follows; longer ones end
   * rewriting on that connection. Defaults to the server's `maxHeaderSize` (Node: 16 KiB).
   */
  readonly maxLineLength?: number;
  /**
   * How long (ms) a partial `BITS_POST` request line may be withheld from the parser before the
   * connection is answered 408 and closed, like Node's own headers timeout.
   * Defaults to the server's `headersTimeout` (Node: 60 s).
   */
  readonly holdTimeout?: number;
  /** Called once per connection when the tracker stops rewriting it, with the reason. Defaults to none. */
  readonly onPassthrough?: (reason: PassthroughReason, socket: Socket) => void;
  /** Accept `POST` announced as `BITS_POST` by a trusted reverse proxy. Defaults to off. */
  readonly trustedProxy?: TrustedProxyOptions;
  /** Set to false to rely only on `trustedProxy` and leave every connection untouched. Defaults to true. */
  readonly shim?: boolean;
}

/** Counters of one server, for diagnosing "BITS gets 400 behind proxy X". */
export interface BitsPostStats {
  /** Connections the tracker followed. */
  trackedConnections: number;
  /** `BITS_POST` request lines rewritten. */
  rewritten: number;
  /** Requests restored to `BITS_POST` before the application saw them. */
  restored: number;
  /** Connections that stopped being rewritten, by reason. */
  passthrough: Partial<Record<PassthroughReason, number>>;
  /** Requests carrying a marker header that was not this process's (forgery attempts). */
  forgedMarkers: number;
  /** Requests accepted from the trusted proxy. */
  proxyAccepted: number;
  /** Requests that named `BITS_POST` in the proxy header but failed the address or secret check. */
  proxyRejected: number;
}

interface ServerState {
  readonly stats: BitsPostStats;
  readonly options: AcceptBitsPostOptions;
  readonly proxy: TrustedProxy | undefined;
}

/** Node internals the shim relies on, typed narrowly. */
interface StreamHandle {
  _consumed?: boolean;
}
interface HttpParser {
  _consumed?: boolean;
  consume(handle: StreamHandle): void;
}
interface InternalSocket extends Socket {
  _handle?: StreamHandle | null;
  parser?: HttpParser | null;
  /** The response Node is writing on this socket, if any. */
  _httpMessage?: { _headerSent?: boolean } | null;
}

type AnyServer = http.Server | https.Server;

const servers = new WeakMap<AnyServer, ServerState>();
const REQUEST_EVENTS = new Set<string | symbol>(['request', 'checkContinue', 'checkExpectation', 'upgrade']);
const REQUEST_TIMEOUT_RESPONSE = Buffer.from('HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n', 'latin1');

/**
 * Makes an existing `http.Server` or `https.Server` accept the `BITS_POST` verb and returns it.
 *
 * Node's parser rejects `BITS_POST` with a 400 before any JavaScript runs (bits-protocol.md §0.1).
 * This moves each HTTP/1 connection onto Node's JavaScript data path (plain TCP connections read
 * into one shared buffer, see `shared-read-buffer.ts`) and passes its bytes through a strict
 * framing tracker that rewrites only `BITS_POST` request lines (to `POST` plus a private,
 * unforgeable marker header); a hook restores `req.method = 'BITS_POST'` before any listener runs.
 * Does nothing to connections if the running Node parses `BITS_POST` natively.
 *
 * @example acceptBitsPost(app.listen(8080))
 * @throws TypeError for anything that is not a Node HTTP or HTTPS server, or for invalid options.
 */
export function acceptBitsPost<S extends AnyServer>(server: S, options: AcceptBitsPostOptions = {}): S {
  const candidate: unknown = server;
  if (!(candidate instanceof http.Server) && !(candidate instanceof https.Server)) {
    throw new TypeError(
      'acceptBitsPost(server): expected a Node http.Server or https.Server, such as the return value of app.listen()',
    );
  }
  validateOptions(options);
  if (servers.has(server)) return server;
  const secure = candidate instanceof https.Server;
  const state: ServerState = {
    options,
    proxy: options.trustedProxy === undefined ? undefined : createTrustedProxy(options.trustedProxy),
    stats: {
      trackedConnections: 0,
      rewritten: 0,
      restored: 0,
      passthrough: {},
      forgedMarkers: 0,
      proxyAccepted: 0,
      proxyRejected: 0,
    },
  };
  servers.set(server, state);
  hookRequestEvents(server, state);
  if (options.shim !== false && !NATIVE_BITS_POST && !usesLenientParser(server)) {
    // HTTPS hands Node's HTTP parser the decrypted socket on 'secureConnection'.
    const event = secure ? 'secureConnection' : 'connection';
    server.prependListener(event, (socket: Socket) => onConnection(server, socket, state));
  }
  debug('BITS_POST accepted on a %s server (shim %s)', secure ? 'https' : 'http',
    options.shim === false || NATIVE_BITS_POST ? 'off' : options.connections ?? 'all');
  return server;
}

/**
 * A lenient parser (`insecureHTTPParser`, `--insecure-http-parser`) reads framing the strict
 * tracker cannot predict, e.g. folds a continuation line into the marker header: never shim it.
 */
function usesLenientParser(server: AnyServer): boolean {
  const option = (server as { insecureHTTPParser?: boolean }).insecureHTTPParser;
  const flag = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)].includes('--insecure-http-parser');
  if (option !== true && !(option === undefined && flag)) return false;
  process.emitWarning(
    'acceptBitsPost: this server uses the lenient HTTP parser (insecureHTTPParser), whose request framing ' +
      'cannot be followed safely, so BITS_POST is not rewritten on it. Use the strict parser, or a reverse ' +
      'proxy with the trustedProxy option.',
    { code: 'BITS_UPLOAD_LENIENT_PARSER' },
  );
  return true;
}

/** The counters of a server passed to {@link acceptBitsPost}, or undefined for any other server. */
export function bitsPostStats(server: AnyServer): Readonly<BitsPostStats> | undefined {
  return servers.get(server)?.stats;
}

/** True when {@link acceptBitsPost} was applied to this server. */
export function acceptsBitsPost(server: unknown): boolean {
  return servers.has(server as AnyServer);
}

function validateOptions(options: AcceptBitsPostOptions): void {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError('acceptBitsPost(server, options): options must be an object');
  }
  const { connections, filter, maxLineLength, holdTimeout, onPassthrough } = options;
  if (connections !== undefined && connections !== 'all' && connections !== 'first-request') {
    throw new TypeError(`acceptBitsPost: connections must be 'all' or 'first-request', got ${String(connections)}`);
  }
  if (filter !== undefined && typeof filter !== 'function') {
    throw new TypeError('acceptBitsPost: filter must be a function (socket) => boolean');
  }
  if (onPassthrough !== undefined && typeof onPassthrough !== 'function') {
    throw new TypeError('acceptBitsPost: onPassthrough must be a function (reason, socket) => void');
  }
  if (maxLineLength !== undefined && !(Number.isInteger(maxLineLength) && maxLineLength >= 64)) {
    throw new TypeError(`acceptBitsPost: maxLineLength must be an integer of at least 64, got ${String(maxLineLength)}`);
  }
  if (holdTimeout !== undefined && !(Number.isInteger(holdTimeout) && holdTimeout > 0)) {
    throw new TypeError(`acceptBitsPost: holdTimeout must be a positive integer (ms), got ${String(holdTimeout)}`);
  }
}

/** Restores verified `BITS_POST` requests before any `request`-like listener runs. */
function hookRequestEvents(server: AnyServer, state: ServerState): void {
  const originalEmit = server.emit;
  server.emit = function emitWithBitsPost(this: AnyServer, event: string | symbol, ...args: unknown[]): boolean {
    if (REQUEST_EVENTS.has(event)) recogniseRequest(args[0] as IncomingMessage, state);
    detachSharedBytes(event, args);
    return Reflect.apply(originalEmit, this, [event, ...args]) as boolean;
  } as typeof server.emit;
}

/**
 * The bytes Node hands to listeners beyond the parser (the head of an upgraded or CONNECT stream,
 * the raw packet of a client error) may be views of the shared read buffer: give listeners copies,
 * as Node's native path does, since they may keep them.
 */
function detachSharedBytes(event: string | symbol, args: unknown[]): void {
  if (event === 'upgrade' || event === 'connect') {
    if (Buffer.isBuffer(args[2])) args[2] = detach(args[2]);
  } else if (event === 'clientError') {
    const error = args[0] as { rawPacket?: unknown } | undefined;
    if (error !== undefined && Buffer.isBuffer(error.rawPacket)) error.rawPacket = detach(error.rawPacket);
  }
}

function recogniseRequest(req: IncomingMessage, state: ServerState): void {
  const marker = restoreMarkedRequest(req);
  if (marker === 'restored') {
    state.stats.restored++;
    return;
  }
  if (marker === 'forged') {
    state.stats.forgedMarkers++;
    debug('ignored a forged method marker from %s', req.socket.remoteAddress);
    return;
  }
  if (state.proxy === undefined) return;
  const proxied = state.proxy.check(req);
  if (proxied === 'accepted') state.stats.proxyAccepted++;
  else if (proxied === 'rejected') {
    state.stats.proxyRejected++;
    debug('refused a BITS_POST announcement from untrusted %s', req.socket.remoteAddress);
  }
}

function onConnection(server: AnyServer, socket: InternalSocket, state: ServerState): void {
  const { options, stats } = state;
  if (options.filter !== undefined && !options.filter(socket)) return;
  const handle = socket._handle;
  // Keep Node's parser off the native consume fast path so that bytes reach it through push(),
  // read into the shared buffer where the connection allows it (readIntoSharedBuffer below).
  if (handle) handle._consumed = true;
  stats.trackedConnections++;
  const firstRequestOnly = options.connections === 'first-request';
  const tracker = new FramingTracker({
    marker: MARKER_LINE,
    maxLineLength: options.maxLineLength ?? (server as { maxHeaderSize?: number }).maxHeaderSize ?? http.maxHeaderSize,
    firstRequestOnly,
  });
  const holdTimeout = options.holdTimeout ?? (server.headersTimeout || 60_000);
  const originalPush = socket.push;
  const push = (chunk: Buffer): boolean => originalPush.call(socket, chunk);
  let lastResult = true;
  let holdTimer: NodeJS.Timeout | undefined;
  let finished = false;
  const forward = (piece: Buffer): void => {
    // Report a passthrough before the parser sees the bytes that caused it: when they are bad, the
    // parser's 400 destroys the socket at once, and onPassthrough (and the debug line) would get a
    // socket whose remoteAddress is already gone.
    if (tracker.passthroughReason !== null) finish();
    lastResult = pushPiece(socket, push, piece);
  };

  const finish = (): void => {
    const reason = tracker.passthroughReason;
    if (reason === null || finished) return;
    finished = true;
    stats.passthrough[reason] = (stats.passthrough[reason] ?? 0) + 1;
    // Nothing is rewritten any more: take the tracker out of the data path.
    socket.push = originalPush;
    if (reason === 'not-bits-first-request') process.nextTick(returnToNativeParser, socket);
    if (reason !== 'not-bits-first-request') debug('connection from %s passes through: %s', socket.remoteAddress, reason);
    options.onPassthrough?.(reason, socket);
  };

  const onHoldTimeout = (): void => {
    holdTimer = undefined;
    tracker.stop('hold-timeout', () => undefined);
    finish();
    // Like Node's own socketOnError: answer only when no response to an earlier (pipelined) request
    // has started, otherwise the 408 would land in the middle of that response's body.
    if (socket.writable && !socket._httpMessage?._headerSent) socket.write(REQUEST_TIMEOUT_RESPONSE);
    socket.destroy();
  };

  const receive = (chunk: Buffer): boolean => {
    lastResult = true;
    const rewrittenBefore = tracker.rewritten;
    tracker.write(chunk, forward);
    stats.rewritten += tracker.rewritten - rewrittenBefore;
    if (tracker.holding) {
      holdTimer ??= setTimeout(onHoldTimeout, holdTimeout).unref();
    } else if (holdTimer !== undefined) {
      clearTimeout(holdTimer);
      holdTimer = undefined;
    }
    if (tracker.passthroughReason !== null) finish();
    return lastResult;
  };

  socket.push = function pushThroughTracker(chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk === null) {
      if (tracker.holding) tracker.stop('end-of-stream', forward);
      if (holdTimer !== undefined) clearTimeout(holdTimer);
      finish();
      return originalPush.call(socket, null);
    }
    if (!Buffer.isBuffer(chunk)) return originalPush.call(socket, chunk, encoding);
    return receive(chunk);
  };
  readIntoSharedBuffer(socket, (view) => (finished ? pushPiece(socket, push, view) : receive(view)));
  socket.once('close', () => {
    if (holdTimer !== undefined) clearTimeout(holdTimer);
  });
}

/**
 * First-request mode: the connection's first request is not BITS, so hand it back to Node's native
 * consume path (what a plain server does). Only when nothing is buffered in the JavaScript stream,
 * so that no byte can overtake another; a socket paused by a request body that fills its buffer is
 * tried again once it resumes and has emptied the buffer.
 */
function returnToNativeParser(socket: InternalSocket): void {
  const { parser, _handle: handle } = socket;
  if (!parser || !handle || socket.destroyed) return;
  if (socket.readableLength > 0 || socket.isPaused()) {
    socket.once('resume', () => process.nextTick(returnToNativeParser, socket));
    return;
  }
  parser._consumed = true;
  parser.consume(handle);
}

export { MARKER_OVERHEAD };
