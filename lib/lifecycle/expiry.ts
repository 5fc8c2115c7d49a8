import type { ResolvedOptions } from '../options';
import type { SessionRecord } from '../storage/adapter';

/** The timeouts expiry depends on. */
export type ExpiryOptions = Pick<ResolvedOptions, 'sessionTimeout' | 'tombstoneTimeout'>;

/** True for the tombstone of a closed or cancelled session (bits-protocol.md §5.2, §5.4). */
export function isTombstone(record: SessionRecord): boolean {
  return record.state === 'closed' || record.state === 'cancelled';
}

/**
 * §5.4: a record idle for longer than its timeout, counted from its last progress (`updatedAt`):
 * `sessionTimeout` for open sessions (receiving, or complete and waiting for Close),
 * `tombstoneTimeout` for tombstones.
 */
export function isExpired(record: SessionRecord, options: ExpiryOptions, now: number): boolean {
  const timeout = isTombstone(record) ? options.tombstoneTimeout : options.sessionTimeout;
  return now - record.updatedAt > timeout;
}
