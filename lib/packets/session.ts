import type { IncomingMessage } from 'node:http';
import createDebug from 'debug';
import { internalError, sessionIdMissing, sessionNotFound } from '../errors';
import { isExpired, isTombstone } from '../lifecycle/expiry';
import { ack, type Ack } from '../protocol/ack';
import { HEADER } from '../protocol/constants';
import { parseDestination } from '../protocol/destination';
import type { ResolvedOptions } from '../options';
import { sessionKey } from '../protocol/session-id';
import type { SessionRecord } from '../storage/adapter';
import type { PacketContext } from './context';

const debug = createDebug('bits-upload');

/** A session found for a packet, and the id to echo in its Ack. */
export interface FoundSession {
  readonly record: SessionRecord;
  /** `BITS-Session-Id: <the request's value>` (§4, §15 A6). */
  readonly sessionHeader: Readonly<Record<string, string>>;
}

/**
 * Who sends the packet, from the `principal` option (bits-protocol.md §5.6, §12).
 *
 * @throws BitsError `BITS_INTERNAL` when the option returns something other than a string or undefined.
 */
export function principalOf(ctx: PacketContext): string | undefined {
  return principalOfRequest(ctx.options, ctx.message);
}

/**
 * Who sends a request (a packet or a reply download, §10.6), from the `principal` option (§5.6, §12).
 *
 * @throws BitsError `BITS_INTERNAL` when the option returns something other than a string or undefined.
 */
export function principalOfRequest(options: Pick<ResolvedOptions, 'principal'>, req: IncomingMessage): string | undefined {
  const principal: unknown = options.principal(req);
  if (principal === undefined || typeof principal === 'string') return principal;
  throw internalError(new TypeError(`The "principal" option returned ${typeof principal}; it must return a string or undefined`));
}

/**
 * Looks up the session of a Fragment, Close-Session or Cancel-Session (bits-protocol.md §3 step 4).
 * Missing id → 400. The session counts as unknown (500 + BG_E_SESSION_NOT_FOUND) when the id was
 * never issued; when its record is idle past its timeout (§5.4: `sessionTimeout` for sessions,
 * `tombstoneTimeout` for tombstones; the record is then expired, see `UploadRuntime.expire`), except
 * that a Close or Cancel of a completed upload is still accepted; when it was created on another URL
 * path or by another principal (§5.6, §15 A18). Tombstones of ended sessions (§5.4) are returned
 * only when `acceptEnded` is true.
 */
export async function findSession(ctx: PacketContext, acceptEnded: boolean): Promise<FoundSession> {
  const { request, options, runtime, now } = ctx;
  const { urlPath } = parseDestination(request.url);
  const echoed = request.sessionId;
  if (echoed === undefined) throw sessionIdMissing();
  const id = sessionKey(echoed);
  const record = id === undefined ? undefined : await options.storage.getSession(id);
  if (record === undefined) throw sessionNotFound(echoed);
  // A delivered upload stays delivered: its late Close or Cancel is still answered 200, or the
  // client would restart an upload whose file already exists (§5.4, §15 A9).
  const deliveredAndEnding = acceptEnded && record.state === 'complete';
  if (isExpired(record, options, now) && !deliveredAndEnding) {
    await runtime.expire(record, now);
    throw sessionNotFound(echoed);
  }
  if (record.urlPath !== urlPath) {
    debug('session %s belongs to %s, not %s', record.id, record.urlPath, urlPath);
    throw sessionNotFound(echoed);
  }
  const principal = principalOf(ctx);
  if (record.principal !== principal) {
    debug('session %s belongs to %s, not %s', record.id, record.principal ?? 'no principal', principal ?? 'no principal');
    throw sessionNotFound(echoed);
  }
  if (isTombstone(record) && !acceptEnded) throw sessionNotFound(echoed);
  return { record, sessionHeader: { [HEADER.sessionId]: echoed } };
}

/**
 * Ends a session as `closed` or `cancelled` (§3.4, §3.5): the adapter deletes the temporary data,
 * never a committed destination, and keeps a tombstone. A session already ended is left as it is
 * and answered 200 again, so Close and Cancel are idempotent (§5.4, §15 A9).
 */
export async function endSession(
  ctx: PacketContext,
  state: 'closed' | 'cancelled',
  log: (format: string, ...args: unknown[]) => void,
): Promise<Ack> {
  const { record, sessionHeader } = await findSession(ctx, true);
  if (isTombstone(record)) {
    log('session %s already %s', record.id, record.state);
  } else {
    await ctx.options.storage.endSession(record.id, state, ctx.now);
    log('session %s %s (was %s)', record.id, state, record.state);
    ctx.runtime.sessionEnded(record, state);
  }
  return ack(sessionHeader);
}
