import createDebug from 'debug';
import { ack } from '../protocol/ack';
import type { PacketHandler } from './context';

const debug = createDebug('bits-upload:packet:ping');

/**
 * Ping (bits-protocol.md §3.1): no session, no state, always 200 once the pipeline's checks passed
 * (§3 steps 1-3). Clients use it to open and authenticate a connection.
 */
export const ping: PacketHandler = async () => {
  debug('ping');
  return ack();
};
