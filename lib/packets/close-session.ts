import createDebug from 'debug';
import type { PacketHandler } from './context';
import { endSession } from './session';

const debug = createDebug('bits-upload:packet:close-session');

/**
 * Close-Session (bits-protocol.md §3.4). A complete upload is already at its destination (commit
 * at the last byte, §5.5, §15 A8), so Close only cleans up; before completion it deletes the
 * partial data and leaves the destination untouched (TV-12). Repeats get 200 (§5.4).
 */
export const closeSession: PacketHandler = (ctx) => endSession(ctx, 'closed', debug);
