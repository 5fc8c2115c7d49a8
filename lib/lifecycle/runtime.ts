import type { EventEmitter } from 'node:events';
import createDebug from 'debug';
import { BitsError, toBitsError } from '../errors';
import type { BitsUploadEvents, SessionInfo } from '../events';
import type { ResolvedOptions } from '../options';
import { SessionLocks } from '../protocol/session-lock';
import type { RecoveryReport, SessionRecord, StorageAdapter } from '../storage/adapter';
import { isExpired, isTombstone } from './expiry';
import { OpenSessions } from './open-sessions';
import { UploadHashes } from './upload-hashes';

const debug = createDebug('bits-upload');

/**
 * Where a middleware stands: `open` serves every packet; `closing` (after `close()`) refuses new
 * sessions while packets of existing ones are still served; `closed` answers every packet 503.
 */
export type Phase = 'open' | 'closing' | 'closed';

/** How a session stopped being open. */
export type SessionEnd = 'closed' | 'cancelled' | 'expired';

const END_EVENTS = {
  closed: 'session-closed',
  cancelled: 'session-cancelled',
  expired: 'session-expired',
} as const satisfies Record<SessionEnd, keyof BitsUploadEvents>;

/** Session locks per storage adapter: one session is never worked on twice at once (§5.6). */
const locksByStorage = new WeakMap<StorageAdapter, SessionLocks>();

/** The locks of every middleware that uses `storage`. */
export function locksFor(storage: StorageAdapter): SessionLocks {
  let locks = locksByStorage.get(storage);
  if (locks === undefined) {
    locks = new SessionLocks();
    locksByStorage.set(storage, locks);
  }
  return locks;
}

/** What the events say about a session. */
export function sessionInfo(record: SessionRecord): SessionInfo {
  return {
    sessionId: record.id,
    destination: record.destination,
    urlPath: record.urlPath,
    principal: record.principal,
  };
}

/**
 * The state one middleware keeps besides its options (bits-protocol.md §5): start-up recovery, the
 * session locks, running hashes, the open-session index, in-flight packets, the expiry sweeper and
 * the events. Everything in it is bounded by the open sessions or the packets in flight.
 */
export class UploadRuntime {
  readonly locks: SessionLocks;
  readonly hashes: UploadHashes;
  readonly openSessions: OpenSessions;
  #phase: Phase = 'open';
  #recovery: Promise<RecoveryReport | undefined> | undefined;
  #sweeper: NodeJS.Timeout | undefined;
  #sweeping = false;
  #closing: Promise<void> | undefined;
  readonly #inFlight = new Set<Promise<void>>();

  constructor(
    readonly options: ResolvedOptions,
    private readonly events: EventEmitter<BitsUploadEvents>,
  ) {
    this.locks = locksFor(options.storage);
    this.hashes = new UploadHashes(options.storage);
    this.openSessions = new OpenSessions(options);
  }

  get phase(): Phase {
    return this.#phase;
  }

  /**
   * Whether anything receives the SHA-256 of a completed upload (bits-protocol.md §6.4): an
   * `onUploadComplete` hook, a reply handler (§10) or an `upload-completed` listener. Without one
   * (the standalone command) it is not computed: that is a seventh to a quarter of the event loop's
   * time on large fragments. A listener added during an upload gets it computed from the bytes
   * stored before (see {@link UploadHashes}).
   */
  get digestWanted(): boolean {
    const { onUploadComplete, reply } = this.options;
    return onUploadComplete !== undefined || reply !== undefined || this.events.listenerCount('upload-completed') > 0;
  }

  /**
   * Runs `storage.recover()` once, the first time it is called (before the first packet is served,
   * §5). A failing recovery is reported (`upload-failed`) and the middleware serves anyway.
   * Resolves with the adapter's report, or undefined when it has no `recover` or it failed.
   */
  ready(): Promise<RecoveryReport | undefined> {
    this.#recovery ??= this.#recover();
    return this.#recovery;
  }

  /** Tells the listeners of `event`, each on its own: one that throws or rejects is only logged. */
  emit<K extends keyof BitsUploadEvents>(event: K, ...args: BitsUploadEvents[K]): void {
    const listeners = this.events.rawListeners(event) as ((...values: BitsUploadEvents[K]) => unknown)[];
    for (const listener of listeners) {
      try {
        const result = Reflect.apply(listener, this.events, args);
        if (result instanceof Promise) {
          result.catch((error: unknown) => debug('a listener of %s rejected: %O', event, error));
        }
      } catch (error) {
        debug('a listener of %s threw: %O', event, error);
      }
    }
  }

  /**
   * Reports a fault of the storage, the application or the server (§8.5) as `upload-failed`, with
   * the underlying error when there is one.
   */
  fault(error: BitsError, sessionId: string | undefined): void {
    this.emit('upload-failed', { sessionId, error: error.cause instanceof Error ? error.cause : error });
  }

  /** Forgets a session that is no longer open and tells the listeners how it ended. */
  sessionEnded(record: SessionRecord, end: SessionEnd): void {
    this.openSessions.remove(record.id);
    this.hashes.forget(record.id);
    this.emit(END_EVENTS[end], sessionInfo(record));
  }

  /**
   * Counts a new session in the open-session index, built from the storage's records the first
   * time (§5.4 limits).
   *
   * @throws BitsError `BITS_TOO_MANY_SESSIONS` when a limit is reached.
   */
  async admit(id: string, principal: string | undefined, now: number): Promise<void> {
    await this.openSessions.load(
      () => this.options.storage.listSessions(),
      (record) => !isTombstone(record) && !isExpired(record, this.options, now),
    );
    try {
      this.openSessions.admit(id, principal, now);
    } catch (error) {
      // A session that expired since the last sweep must not hold a slot: sweep, then count again.
      // Only when the index knows a session that may have expired (the sweep refreshes what it
      // knows), so clients retrying at their limit cannot make every refusal list the storage.
      if (!(error instanceof BitsError) || error.code !== 'BITS_TOO_MANY_SESSIONS') throw error;
      if (!this.openSessions.mayHaveExpired(now, this.options.sessionTimeout)) throw error;
      if ((await this.cleanupExpired(now)) === 0) throw error;
      this.openSessions.admit(id, principal, now);
    }
  }

  /**
   * Ends an expired record (§5.4, SPEC 3.2.6.1: all data of the session is removed): an upload in
   * progress is deleted with its data; a complete one keeps its destination and becomes a
   * tombstone, so a late Close is still answered 200 (§15 A9); a tombstone is deleted. The caller
   * holds the session's lock.
   */
  async expire(record: SessionRecord, now: number): Promise<void> {
    const { storage } = this.options;
    if (record.state === 'complete') await storage.endSession(record.id, 'closed', now);
    else await storage.deleteSession(record.id);
    debug('session %s (%s) expired, idle since %s', record.id, record.state, new Date(record.updatedAt).toISOString());
    if (!isTombstone(record)) this.sessionEnded(record, 'expired');
  }

  /**
   * Expires every record idle past its timeout (§5.4): sessions after `sessionTimeout`, tombstones
   * after `tombstoneTimeout`. A record that fails to expire is reported (`upload-failed`) and the
   * others still go.
   *
   * @returns How many records it expired: uploads in progress and tombstones deleted, complete
   * sessions turned into tombstones.
   */
  async cleanupExpired(now = Date.now()): Promise<number> {
    await this.ready();
    const { storage } = this.options;
    const candidates: string[] = [];
    for await (const record of storage.listSessions()) {
      if (isExpired(record, this.options, now)) candidates.push(record.id);
      else this.openSessions.refresh(record.id, record.updatedAt);
    }
    let expired = 0;
    for (const id of candidates) {
      try {
        const done = await this.locks.run(id, async () => {
          const record = await storage.getSession(id);
          if (record === undefined || !isExpired(record, this.options, now)) return false;
          await this.expire(record, now);
          return true;
        });
        if (done) expired += 1;
      } catch (error) {
        debug('could not expire session %s: %O', id, error);
        this.fault(toBitsError(error), id);
      }
    }
    return expired;
  }

  /** Starts the sweeper of `cleanupInterval`, if any; its timer does not keep the process alive. */
  startSweeper(): void {
    const { cleanupInterval } = this.options;
    if (cleanupInterval === false) return;
    this.#sweeper = setInterval(() => this.track(this.#sweep()), cleanupInterval);
    this.#sweeper.unref();
  }

  /** Counts `work` as in flight until it settles (`close()` waits for it). */
  track(work: Promise<void>): void {
    this.#inFlight.add(work);
    const settle = (): void => {
      this.#inFlight.delete(work);
    };
    work.then(settle, settle);
  }

  /**
   * Shuts down once (see {@link Phase}): refuses new sessions, waits up to `timeout` ms for the
   * packets in flight (also those that arrive meanwhile for existing sessions), stops the sweeper,
   * drops the in-memory state, then refuses every packet.
   */
  close(timeout: number): Promise<void> {
    this.#closing ??= this.#shutDown(timeout);
    return this.#closing;
  }

  async #shutDown(timeout: number): Promise<void> {
    this.#phase = 'closing';
    clearInterval(this.#sweeper);
    const drained = await this.#drain(timeout);
    if (!drained) debug('close: %d packets still in flight after %d ms; closing anyway', this.#inFlight.size, timeout);
    this.#phase = 'closed';
    this.hashes.clear();
    this.openSessions.clear();
    // Release the storage's open files or connections too (file handles, bits-protocol.md §5.4 cleanup).
    await this.options.storage.close?.().catch((error: unknown) => debug('close: the storage failed to close: %O', error));
    debug('closed');
  }

  /** Waits until nothing is in flight; false when `timeout` ms passed first. */
  async #drain(timeout: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<false>((resolve) => {
      timer = setTimeout(resolve, timeout, false);
    });
    try {
      while (this.#inFlight.size > 0) {
        const settled = await Promise.race([Promise.allSettled([...this.#inFlight]).then(() => true), expired]);
        if (!settled) return false;
      }
      return true;
    } finally {
      clearTimeout(timer);
    }
  }

  async #sweep(): Promise<void> {
    if (this.#sweeping) return;
    this.#sweeping = true;
    try {
      const expired = await this.cleanupExpired();
      if (expired > 0) debug('sweeper expired %d records', expired);
    } catch (error) {
      debug('sweeper failed: %O', error);
      this.fault(toBitsError(error), undefined);
    } finally {
      this.#sweeping = false;
    }
  }

  async #recover(): Promise<RecoveryReport | undefined> {
    const { storage } = this.options;
    if (storage.recover === undefined) return undefined;
    try {
      const report = await storage.recover();
      debug('storage recovered: %o', report);
      return report;
    } catch (error) {
      debug('storage recovery failed; serving anyway: %O', error);
      this.fault(toBitsError(error), undefined);
      return undefined;
    }
  }
}
