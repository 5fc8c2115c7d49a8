import type { IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import type { UploadRuntime } from '../lifecycle/runtime';
import type { ResolvedOptions } from '../options';
import type { Ack } from '../protocol/ack';
import type { BitsRequest } from '../protocol/request';

/** Everything a packet handler works with; no socket, so handlers are testable on their own. */
export interface PacketContext {
  /** The parsed request (bits-protocol.md §3 step 3 passed). */
  readonly request: BitsRequest;
  /** The request body; only Fragment reads it. */
  readonly body: Readable;
  /** The request as Node delivered it, for the `principal` option and the application hooks. */
  readonly message: IncomingMessage;
  readonly options: ResolvedOptions;
  /** The middleware's state: locks, hashes, open sessions, events. */
  readonly runtime: UploadRuntime;
  /** Time of the request, ms since the epoch. */
  readonly now: number;
}

/** Handles one packet type and describes the Ack; failures are thrown as `BitsError`. */
export type PacketHandler = (ctx: PacketContext) => Promise<Ack>;
