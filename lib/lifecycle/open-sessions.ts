import { tooManySessions } from '../errors';
import type { SessionRecord } from '../storage/adapter';

/** The limits {@link OpenSessions} enforces. */
export interface SessionLimits {
  readonly maxSessions: number;
  readonly maxSessionsPerPrincipal: number;
}

/**
 * The open sessions of one middleware (receiving or complete, not yet closed, cancelled or expired;
 * bits-protocol.md §5.2) and who created them, for `maxSessions` and `maxSessionsPerPrincipal`
 * (§5.4: IIS limits sessions per user; §5.7). Built from the storage's records at the first
 * Create-Session, then kept up to date by Create-Session, Close, Cancel and expiry; its size is
 * bounded by `maxSessions`. The counts are those of this process: other processes sharing the
 * storage are not seen until the index is built again (a restart).
 */
export class OpenSessions {
  /** Principal of every open session, by id. */
  readonly #principals = new Map<string, string | undefined>();
  /** Open sessions per known principal; principals with none are not kept. */
  readonly #perPrincipal = new Map<string, number>();
  /** Last progress known of every open session (from the records when last listed, or creation). */
  readonly #lastProgress = new Map<string, number>();
  #loaded = false;
  #loading: Promise<void> | undefined;
  /** Sessions that ended while the records were being listed, removed from the listing's result. */
  #endedWhileLoading: Set<string> | undefined;

  constructor(private readonly limits: SessionLimits) {}

  /** Number of open sessions known. */
  get size(): number {
    return this.#principals.size;
  }

  /** Open sessions of one principal. */
  countOf(principal: string): number {
    return this.#perPrincipal.get(principal) ?? 0;
  }

  /**
   * Builds the index once from `records()`, keeping those for which `isOpen` holds; concurrent
   * callers share one listing, and a listing that fails is tried again by the next caller.
   */
  async load(records: () => AsyncIterable<SessionRecord>, isOpen: (record: SessionRecord) => boolean): Promise<void> {
    if (this.#loaded) return;
    this.#loading ??= this.#fill(records, isOpen).finally(() => {
      this.#loading = undefined;
    });
    await this.#loading;
  }

  /**
   * Counts a new session before it is created (so that concurrent Create-Sessions cannot overshoot).
   *
   * @throws BitsError `BITS_TOO_MANY_SESSIONS` (503 + ERROR_TOO_MANY_SESS) when a limit is reached.
   */
  /**
   * True when a session's last known progress is older than `timeout`: it may have expired, so a
   * sweep could free a slot. Progress after the last listing is not seen; {@link refresh} updates it.
   */
  mayHaveExpired(now: number, timeout: number): boolean {
    for (const updatedAt of this.#lastProgress.values()) {
      if (now - updatedAt > timeout) return true;
    }
    return false;
  }

  /** Records the last progress of an open session, as a listing of the records saw it. */
  refresh(id: string, updatedAt: number): void {
    if (this.#lastProgress.has(id)) this.#lastProgress.set(id, updatedAt);
  }

  admit(id: string, principal: string | undefined, now: number): void {
    const { maxSessions, maxSessionsPerPrincipal } = this.limits;
    if (this.#principals.size >= maxSessions) {
      throw tooManySessions(`${this.#principals.size} sessions are open, the limit is ${maxSessions}`);
    }
    if (principal !== undefined && this.countOf(principal) >= maxSessionsPerPrincipal) {
      throw tooManySessions(`${JSON.stringify(principal)} has ${maxSessionsPerPrincipal} open sessions, the limit`);
    }
    this.#add(id, principal, now);
  }

  /** Forgets a session that was closed, cancelled, expired or never created. */
  remove(id: string): void {
    this.#endedWhileLoading?.add(id);
    if (!this.#principals.has(id)) return;
    const principal = this.#principals.get(id);
    this.#principals.delete(id);
    this.#lastProgress.delete(id);
    if (principal === undefined) return;
    const left = this.countOf(principal) - 1;
    if (left > 0) this.#perPrincipal.set(principal, left);
    else this.#perPrincipal.delete(principal);
  }

  /** Drops everything; the next {@link load} lists the records again. */
  clear(): void {
    this.#principals.clear();
    this.#perPrincipal.clear();
    this.#lastProgress.clear();
    this.#loaded = false;
  }

  async #fill(records: () => AsyncIterable<SessionRecord>, isOpen: (record: SessionRecord) => boolean): Promise<void> {
    const ended = new Set<string>();
    this.#endedWhileLoading = ended;
    const found = new Map<string, SessionRecord>();
    try {
      for await (const record of records()) {
        if (isOpen(record)) found.set(record.id, record);
      }
    } finally {
      this.#endedWhileLoading = undefined;
    }
    for (const [id, record] of found) {
      if (!ended.has(id)) this.#add(id, record.principal, record.updatedAt);
    }
    this.#loaded = true;
  }

  #add(id: string, principal: string | undefined, updatedAt: number): void {
    this.#principals.set(id, principal);
    this.#lastProgress.set(id, updatedAt);
    if (principal !== undefined) this.#perPrincipal.set(principal, this.countOf(principal) + 1);
  }
}
