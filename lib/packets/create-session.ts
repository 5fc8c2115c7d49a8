import createDebug from 'debug';
import { destinationExists, destinationIsDirectory } from '../errors';
import { ack } from '../protocol/ack';
import { HEADER } from '../protocol/constants';
import { parseDestination } from '../protocol/destination';
import { negotiateProtocol } from '../protocol/negotiate';
import { newSessionId } from '../protocol/session-id';
import type { PacketHandler } from './context';

const debug = createDebug('bits-upload:packet:create-session');

/**
 * Create-Session (bits-protocol.md §3.2), in the order of its server processing: negotiate the
 * protocol (§7), map the URL to a destination that is not a directory, apply the overwrite policy
 * (§15 A7), create the session (§5.1). Every Create-Session makes a new session.
 */
export const createSession: PacketHandler = async ({ request, options, now }) => {
  const protocol = negotiateProtocol(request.supportedProtocols);
  const { destination, urlPath } = parseDestination(request.url);
  const existing = await options.storage.inspectDestination(destination);
  if (existing === 'directory') throw destinationIsDirectory();
  if (existing === 'file' && !options.allowOverwrites) throw destinationExists();
  const id = newSessionId();
  await options.storage.createSession({ id, destination, urlPath, principal: undefined, protocol, createdAt: now });
  debug('session %s created for %s', id, urlPath);
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
