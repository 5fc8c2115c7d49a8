import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import createDebug from 'debug';
import { isServerFault, shuttingDown, toBitsError, uploadsDisabled } from './errors';
import type { BitsUploadEvents } from './events';
import { UploadRuntime } from './lifecycle/runtime';
import { resolveOptions, type BitsUploadOptions } from './options';
import { PACKET_HANDLERS } from './packets';
import { closesConnection, errorAck, withConnectionClose, writeAck, type Ack } from './protocol/ack';
import { parseRequest } from './protocol/request';
import { echoableSessionId, sessionKey } from './protocol/session-id';
import { replyDownload, serveReply } from './reply/serve';
import { acceptsBitsPost } from './server/accept-bits-post';
import { isBitsPost, NATIVE_BITS_POST } from './server/method-marker';
import type { RecoveryReport } from './storage/adapter';

const debug = createDebug('bits-upload');

/** Longest delay a Node timer honours (2^31 - 1 ms). */
const MAX_TIMER_DELAY = 0x7fff_ffff;

/** Options of {@link BitsUploadMiddleware.close}. */
export interface CloseOptions {
  /**
   * Longest wait, in milliseconds, for the packets in flight; after it the middleware closes
   * anyway. Defaults to 30 000.
   */
  readonly timeout?: number;
}

/**
 * A request handler for Express 4 and 5, Connect and plain `node:http` (BITS packets and reply
 * downloads are answered, everything else goes to `next()`), and an `EventEmitter` of
 * {@link BitsUploadEvents}.
 */
export interface BitsUploadMiddleware extends EventEmitter<BitsUploadEvents> {
  (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void): void;
  /**
   * Resolves once the storage's start-up recovery (`storage.recover()`, bits-protocol.md §5) ran,
   * with its report; undefined when the adapter has none or it failed (reported as
   * `upload-failed`; the middleware serves anyway). Starts the recovery if no packet did yet.
   */
  ready(): Promise<RecoveryReport | undefined>;
  /**
   * Expires what is idle past its timeout now, as the sweeper of `cleanupInterval` does (§5.4):
   * uploads in progress idle past `sessionTimeout` are deleted with their data, complete ones
   * become tombstones (their files stay), tombstones past `tombstoneTimeout` are deleted.
   * Resolves with the number of records expired.
   */
  cleanupExpired(): Promise<number>;
  /**
   * Shuts down gracefully: new sessions are refused at once (503, which the client retries later,
   * §9.2), packets of existing sessions are served until those in flight are done or `timeout`
   * passed; then the sweeper stops, the in-memory state is dropped and every further packet is
   * answered 503. Call it before closing the HTTP server. Calling it again returns the same promise.
   */
  close(options?: CloseOptions): Promise<void>;
}

/** A request as {@link processPacket} needs it. */
export interface PacketRequest {
  /** The request: HTTP version, URL below the mount point, headers; given to the hooks. */
  readonly message: IncomingMessage;
  /** The body stream: the request itself, except in tests. */
  readonly body: Readable;
}

/**
 * Creates the BITS upload middleware (bits-protocol.md §3). Mount it at any prefix, before any body
 * parser (§2.5), on a server prepared with `acceptBitsPost()` or `createBitsServer()`. With the
 * `reply` option it is an upload-reply endpoint (§10) and serves the replies below its mount point
 * (GET and HEAD of `BITS-Sessions/Replies/...`, §10.6). It is also an `EventEmitter` of
 * {@link BitsUploadEvents}; a listener that throws never changes an Ack.
 *
 * @param dirOrOptions A directory (shorthand for `{ directory }`) or {@link BitsUploadOptions}.
 * @example app.use('/uploads', bitsUpload('./uploads'))
 * @throws TypeError for invalid options, naming the option and the fix.
 */
export function bitsUpload(dirOrOptions?: string | BitsUploadOptions): BitsUploadMiddleware {
  const options = resolveOptions(dirOrOptions, arguments.length);
  function bitsUploadMiddleware(req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void): void {
    if (!isBitsPost(req)) {
      // §10.6: GET and HEAD of a reply URL download the reply of an upload-reply session.
      const download = replyDownload(req);
      if (download !== undefined) {
        serveReply(req, res, runtime, download.sessionId).catch((error: unknown) => {
          debug('could not answer a reply download: %O', error);
          next(error);
        });
        return;
      }
      warnIfServerLacksBitsPost(req);
      next();
      return;
    }
    runtime.track(
      respond(req, res, runtime).catch((error: unknown) => {
        debug('could not write the Ack: %O', error);
        next(error);
      }),
    );
  }
  const middleware = Object.assign(withEvents(bitsUploadMiddleware), {
    ready: () => runtime.ready(),
    cleanupExpired: () => runtime.cleanupExpired(),
    close: ({ timeout = 30_000 }: CloseOptions = {}) => {
      if (typeof timeout !== 'number' || !(timeout >= 0 && timeout <= MAX_TIMER_DELAY)) {
        return Promise.reject(
          new TypeError(
            `close: option "timeout" must be a number of milliseconds from 0 to ${MAX_TIMER_DELAY}, got ${String(timeout)}. ` +
              'Omit it for the default of 30 000.',
          ),
        );
      }
      return runtime.close(timeout);
    },
  });
  const runtime = new UploadRuntime(options, middleware);
  runtime.startSweeper();
  return middleware;
}

/**
 * Makes the handler an `EventEmitter` the way `express()` makes its app one: the emitter's methods
 * are copied onto the function, which stays a plain function of three parameters.
 */
function withEvents<F extends (...args: never[]) => void>(handler: F): F & EventEmitter<BitsUploadEvents> {
  for (const key of Reflect.ownKeys(EventEmitter.prototype)) {
    const descriptor = Reflect.getOwnPropertyDescriptor(EventEmitter.prototype, key);
    if (key === 'constructor' || descriptor === undefined || Object.hasOwn(handler, key)) continue;
    Object.defineProperty(handler, key, descriptor);
  }
  return handler as F & EventEmitter<BitsUploadEvents>;
}

/**
 * Runs one packet through the pipeline of §3 (recovery done, not shut down, enabled, syntax,
 * session lock, handler) and returns its Ack; every failure becomes an error Ack (§8), and faults
 * of the storage or the application are reported as `upload-failed`. Needs no socket.
 */
export async function processPacket(request: PacketRequest, runtime: UploadRuntime, now: number = Date.now()): Promise<Ack> {
  const { options } = runtime;
  let echo: string | undefined;
  let key: string | undefined;
  try {
    // §5: the storage repaired what a crash left before the first packet is served.
    await runtime.ready();
    if (runtime.phase === 'closed') throw shuttingDown();
    // §3 step 1.
    if (!options.enabled) throw uploadsDisabled();
    // §3 step 3.
    const parsed = parseRequest(request.message);
    const handler = PACKET_HANDLERS[parsed.packetType];
    const ctx = { request: parsed, body: request.body, message: request.message, options, runtime, now };
    if (parsed.packetType === 'Ping') return await handler(ctx);
    if (parsed.packetType === 'Create-Session') {
      if (runtime.phase !== 'open') throw shuttingDown();
      return await handler(ctx);
    }
    echo = echoableSessionId(parsed.sessionId);
    key = parsed.sessionId === undefined ? undefined : sessionKey(parsed.sessionId);
    const sessionId = key;
    return await (sessionId === undefined ? handler(ctx) : runtime.locks.run(sessionId, () => handler(ctx)));
  } catch (error) {
    const bitsError = toBitsError(error);
    if (isServerFault(bitsError)) {
      debug('fault answered %d: %O', bitsError.status, bitsError.cause ?? bitsError);
      runtime.fault(bitsError, key);
    } else {
      debug('answered %d %s: %s', bitsError.status, bitsError.code, bitsError.message);
    }
    return errorAck(bitsError, echo);
  }
}

async function respond(req: IncomingMessage, res: ServerResponse, runtime: UploadRuntime): Promise<void> {
  const packetAck = await processPacket({ message: req, body: req }, runtime);
  const finalAck = await settleBody(req, packetAck, runtime.options.maxFragmentSize);
  if (res.headersSent || res.writableEnded) {
    debug('response already sent by other code; Ack %d not written', finalAck.status);
    return;
  }
  writeAck(res, finalAck);
}

/**
 * Keeps keep-alive framing intact (§0.10, §6.3 case D): whatever the Ack, the rest of the body is
 * read and discarded first, unless the Ack closes the connection (413), or the body is too big or
 * of unknown length to be worth reading, in which case the Ack gets `Connection: close`.
 */
async function settleBody(req: IncomingMessage, packetAck: Ack, drainLimit: number): Promise<Ack> {
  if (req.readableEnded || req.destroyed || closesConnection(packetAck)) return packetAck;
  const declared = req.headers['transfer-encoding'] === undefined ? Number(req.headers['content-length']) : Number.NaN;
  if (!(declared <= drainLimit)) return withConnectionClose(packetAck);
  req.resume();
  await finished(req, { writable: false }).catch(() => undefined);
  return packetAck;
}

let warnedAboutServer = false;

/**
 * §0.1, §2.5: a POST that carries `BITS-Packet-Type` on a server without `BITS_POST` support
 * usually means `acceptBitsPost()` was forgotten (real clients' `BITS_POST` then never gets here).
 */
function warnIfServerLacksBitsPost(req: IncomingMessage): void {
  if (warnedAboutServer || NATIVE_BITS_POST || req.method !== 'POST') return;
  if (req.headers['bits-packet-type'] === undefined) return;
  const server = (req.socket as Socket & { server?: unknown }).server;
  if (acceptsBitsPost(server)) return;
  warnedAboutServer = true;
  process.emitWarning(
    'bits-upload received a POST with a BITS-Packet-Type header on a server that does not accept the ' +
      'BITS_POST method. Windows BITS clients send BITS_POST, which Node.js rejects with 400 before any ' +
      'middleware runs. Call acceptBitsPost(server) on the server returned by app.listen(), or create the ' +
      'server with createBitsServer(app). The request was passed to next().',
    { code: 'BITS_UPLOAD_NO_BITS_POST' },
  );
}

export default bitsUpload;
