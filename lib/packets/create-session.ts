import createDebug from 'debug';
import { destinationExists, destinationIsDirectory, refused } from '../errors';
import { sessionInfo } from '../lifecycle/runtime';
import { ack } from '../protocol/ack';
import { HEADER } from '../protocol/constants';
import { checkDestination, parseDestination } from '../protocol/destination';
import { negotiateProtocol } from '../protocol/negotiate';
import { newSessionId } from '../protocol/session-id';
import type { Destination } from '../storage/adapter';
import type { PacketContext, PacketHandler } from './context';
import { callHook } from './hooks';
import { principalOf } from './session';

const debug = createDebug('bits-upload:packet:create-session');

/**
 * Create-Session (bits-protocol.md §3.2), in the order of its server processing: negotiate the
 * protocol (§7); map the URL to a destination, through the `destination` hook if any; let
 * `onCreateSession` refuse (§12: authorisation is the application's); check that the destination
 * is not a directory and the overwrite policy (§15 A7); count the session against the limits
 * (§5.4); create it, bound to the URL path and the principal (§5.1, §5.6). Every Create-Session
 * makes a new session.
 */
export const createSession: PacketHandler = async (ctx) => {
  const { request, options, runtime, now, message } = ctx;
  const protocol = negotiateProtocol(request.supportedProtocols);
  const { destination: requested, urlPath } = parseDestination(request.url);
  const principal = principalOf(ctx);
  const destination = await mapDestination(ctx, requested);
  const { onCreateSession } = options;
  if (onCreateSession !== undefined) {
    const verdict: unknown = await callHook(() => onCreateSession({ destination, urlPath, principal, req: message }));
    if (verdict !== undefined && verdict !== null) throw refused(verdict);
  }
  const existing = await options.storage.inspectDestination(destination);
  if (existing === 'directory') throw destinationIsDirectory();
  if (existing === 'file' && !options.allowOverwrites) throw destinationExists();
  const id = newSessionId();
  await runtime.admit(id, principal, now);
  const record = await options.storage
    .createSession({ id, destination, urlPath, principal, protocol, createdAt: now })
    .catch((error: unknown) => {
      runtime.openSessions.remove(id);
      throw error;
    });
  debug('session %s created for %s', id, urlPath);
  runtime.emit('session-created', sessionInfo(record));
  // §3.2 Ack: BITS-Protocol and Accept-Encoding only on success; Host-Id headers only when configured (§11).
  return ack({
    [HEADER.protocol]: protocol,
    [HEADER.sessionId]: id,
    ...(options.hostId !== undefined && {
      [HEADER.hostId]: options.hostId,
      [HEADER.hostIdFallbackTimeout]: String(options.hostIdFallbackTimeout),
    }),
    [HEADER.acceptEncoding]: 'identity',
  });
};

/**
 * The destination to store at: the URL's, or what the `destination` hook makes of it, checked
 * with the same rules as a URL path (§3.2 step 2; an unsafe one → 400 + E_INVALIDARG).
 */
async function mapDestination(ctx: PacketContext, requested: Destination): Promise<Destination> {
  const hook = ctx.options.destination;
  if (hook === undefined) return requested;
  const mapped: unknown = await callHook(() => hook(requested, ctx.message));
  return checkDestination(mapped);
}
