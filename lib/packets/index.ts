import type { PacketType } from '../protocol/constants';
import { cancelSession } from './cancel-session';
import { closeSession } from './close-session';
import type { PacketHandler } from './context';
import { createSession } from './create-session';
import { fragment } from './fragment';
import { ping } from './ping';

export type { PacketContext, PacketHandler } from './context';

/** One handler per packet type of bits-protocol.md §3; the compiler rejects a missing one. */
export const PACKET_HANDLERS: Readonly<Record<PacketType, PacketHandler>> = Object.freeze({
  Ping: ping,
  'Create-Session': createSession,
  Fragment: fragment,
  'Close-Session': closeSession,
  'Cancel-Session': cancelSession,
});
