import createDebug from 'debug';
import type { PacketHandler } from './context';
import { endSession } from './session';

const debug = createDebug('bits-upload:packet:cancel-session');

/**
 * Cancel-Session (bits-protocol.md §3.5): deletes the temporary data; after completion the
 * committed destination stays (TV-4). Repeats get 200 (§5.4).
 */
export const cancelSession: PacketHandler = (ctx) => endSession(ctx, 'cancelled', debug);
