import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import createDebug from 'debug';
import { toBitsError, uploadsDisabled } from './errors';
import { resolveOptions, type BitsUploadOptions, type ResolvedOptions } from './options';
import { PACKET_HANDLERS } from './packets';
import { closesConnection, errorAck, withConnectionClose, writeAck, type Ack } from './protocol/ack';
import { parseRequest, type RequestHead } from './protocol/request';
import { echoableSessionId, sessionKey } from './protocol/session-id';
import { SessionLocks } from './protocol/session-lock';
import { acceptsBitsPost } from './server/accept-bits-post';
import { isBitsPost, NATIVE_BITS_POST } from './server/method-marker';
import type { StorageAdapter } from './storage/adapter';

const debug = createDebug('bits-upload');

/**
 * A request handler for Express 4 and 5, Connect and plain `node:http`: BITS packets are answered,
 * everything else goes to `next()`.
 */
export type BitsUploadMiddleware = (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void;

/** A request as {@link processPacket} needs it: the head and the body stream. */
export interface PacketRequest extends RequestHead {
  readonly body: Readable;
}

/** Session locks per storage adapter: one session is never worked on twice at once (§5.6). */
const locksByStorage = new WeakMap<StorageAdapter, SessionLocks>();

/**
 * Creates the BITS upload middleware (bits-protocol.md §3). Mount it at any prefix, before any body
 * parser (§2.5), on a server prepared with `acceptBitsPost()` or `createBitsServer()`.
 *
 * @param dirOrOptions A directory (shorthand for `{ directory }`) or {@link BitsUploadOptions}.
 * @example app.use('/uploads', bitsUpload('./uploads'))
 * @throws TypeError for invalid options, naming the option and the fix.
 */
export function bitsUpload(dirOrOptions?: string | BitsUploadOptions): BitsUploadMiddleware {
  const options = resolveOptions(dirOrOptions, arguments.length);
  const locks = locksFor(options.storage);
  return function bitsUploadMiddleware(req, res, next) {
    if (!isBitsPost(req)) {
      warnIfServerLacksBitsPost(req);
      next();
      return;
    }
    respond(req, res, options, locks).catch((error: unknown) => {
      debug('could not write the Ack: %O', error);
      next(error);
    });
  };
}

/**
 * Runs one packet through the pipeline of §3 (enabled, syntax, session lock, handler) and returns
 * its Ack; every failure becomes an error Ack (§8). Needs no socket.
 */
export async function processPacket(
  request: PacketRequest,
  options: ResolvedOptions,
  locks: SessionLocks = locksFor(options.storage),
  now: number = Date.now(),
): Promise<Ack> {
  let echo: string | undefined;
  try {
    // §3 step 1.
    if (!options.enabled) throw uploadsDisabled();
    // §3 step 3.
    const parsed = parseRequest(request);
    const handler = PACKET_HANDLERS[parsed.packetType];
    const ctx = { request: parsed, body: request.body, options, now };
    if (parsed.packetType === 'Ping' || parsed.packetType === 'Create-Session') return await handler(ctx);
    echo = echoableSessionId(parsed.sessionId);
    const key = parsed.sessionId === undefined ? undefined : sessionKey(parsed.sessionId);
    return await (key === undefined ? handler(ctx) : locks.run(key, () => handler(ctx)));
  } catch (error) {
    const bitsError = toBitsError(error);
    if (bitsError.status >= 500 && bitsError.cause !== undefined) {
      debug('server fault answered %d: %O', bitsError.status, bitsError.cause);
    } else {
      debug('answered %d %s: %s', bitsError.status, bitsError.code, bitsError.message);
    }
    return errorAck(bitsError, echo);
  }
}

async function respond(
  req: IncomingMessage,
  res: ServerResponse,
  options: ResolvedOptions,
  locks: SessionLocks,
): Promise<void> {
  const packetAck = await processPacket(
    { httpVersion: req.httpVersion, url: req.url, rawHeaders: req.rawHeaders, body: req },
    options,
    locks,
  );
  const finalAck = await settleBody(req, packetAck, options.maxFragmentSize);
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

function locksFor(storage: StorageAdapter): SessionLocks {
  let locks = locksByStorage.get(storage);
  if (locks === undefined) {
    locks = new SessionLocks();
    locksByStorage.set(storage, locks);
  }
  return locks;
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
