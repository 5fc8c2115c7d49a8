/**
 * An in-memory storage adapter for packet-handler tests: it records every call, can be told to
 * fail or pause a method, and makes each chunk "durable" as it arrives, so an aborted body leaves
 * exactly the prefix that was read (lib/storage/adapter.ts, bits-protocol.md §6.3). It can also
 * keep back the tail of every write, like an object store that only makes whole parts durable.
 */
import { Readable } from 'node:stream';
import {
  DestinationExistsError,
  DestinationIsDirectoryError,
  newSessionRecord,
  SessionNotFoundError,
  type CommitOptions,
  type Destination,
  type DestinationKind,
  type NewSession,
  type RecoveryReport,
  type SessionChanges,
  type SessionRecord,
  type StorageAdapter,
} from '../../lib/storage/adapter';

/** Names of the adapter methods. */
export type StorageMethod = keyof StorageAdapter;

/** One recorded call. */
export interface StorageCall {
  readonly method: StorageMethod;
  readonly args: readonly unknown[];
}

interface Entry {
  record: SessionRecord;
  data: Buffer;
  /** Reply bytes stored with writeReply (bits-protocol.md §10); temporary data like `data`. */
  reply: Buffer | undefined;
}

export class StubStorage implements StorageAdapter {
  readonly calls: StorageCall[] = [];
  /** Committed files by slash-joined destination. */
  readonly files = new Map<string, Buffer>();
  /** Slash-joined destinations that are directories. */
  readonly directories = new Set<string>();
  readonly #sessions = new Map<string, Entry>();
  readonly #failures = new Map<StorageMethod, unknown>();
  readonly #gates = new Map<StorageMethod, Promise<void>>();
  /** Clock used for updatedAt of written bytes. */
  now: () => number = () => Date.now();
  /** Bytes at the end of every write that are read but not kept (not durable); 0 keeps all. */
  withheldTail = 0;
  /** The optional start-up repair; none unless a test sets it. */
  recover: (() => Promise<RecoveryReport>) | undefined = undefined;
  /** Largest number of writeFragment calls seen running at once for one session. */
  maxConcurrentWrites = 0;
  readonly #writing = new Map<string, number>();

  /** Makes the next call of `method` reject with `error` (once). */
  failNext(method: StorageMethod, error: unknown): void {
    this.#failures.set(method, error);
  }

  /** Makes calls of `method` wait until the returned function is called. */
  hold(method: StorageMethod): () => void {
    let release!: () => void;
    this.#gates.set(method, new Promise<void>((resolve) => (release = resolve)));
    return () => {
      this.#gates.delete(method);
      release();
    };
  }

  /** Calls of one method, in order. */
  callsOf(method: StorageMethod): StorageCall[] {
    return this.calls.filter((call) => call.method === method);
  }

  /** The temporary data of a session. */
  dataOf(id: string): Buffer | undefined {
    return this.#sessions.get(id)?.data;
  }

  /** The stored reply bytes of a session, if any. */
  replyOf(id: string): Buffer | undefined {
    return this.#sessions.get(id)?.reply;
  }

  /** The committed file at a slash-joined path, as text. */
  fileText(path: string): string | undefined {
    return this.files.get(path)?.toString('latin1');
  }

  /** Overwrites fields of a record directly (for expiry tests). */
  patch(id: string, changes: Partial<SessionRecord>): void {
    const entry = this.#require(id);
    entry.record = { ...entry.record, ...changes };
  }

  async createSession(session: NewSession): Promise<SessionRecord> {
    await this.#enter('createSession', [session]);
    if (this.#sessions.has(session.id)) throw new Error(`duplicate session ${session.id}`);
    const record = newSessionRecord(session);
    this.#sessions.set(session.id, { record, data: Buffer.alloc(0), reply: undefined });
    return record;
  }

  async getSession(id: string): Promise<SessionRecord | undefined> {
    await this.#enter('getSession', [id]);
    return this.#sessions.get(id)?.record;
  }

  async updateSession(id: string, changes: SessionChanges): Promise<SessionRecord> {
    await this.#enter('updateSession', [id, changes]);
    const entry = this.#require(id);
    entry.record = { ...entry.record, ...changes };
    return entry.record;
  }

  async writeFragment(id: string, offset: number, body: Readable): Promise<number> {
    await this.#enter('writeFragment', [id, offset]);
    const entry = this.#require(id);
    const expected = entry.record.receivedLength;
    if (offset !== expected) throw new Error(`offset ${offset} is not the received length ${expected}`);
    const running = (this.#writing.get(id) ?? 0) + 1;
    this.#writing.set(id, running);
    this.maxConcurrentWrites = Math.max(this.maxConcurrentWrites, running);
    try {
      for await (const chunk of body) {
        entry.data = Buffer.concat([entry.data, chunk as Buffer]);
        entry.record = { ...entry.record, receivedLength: entry.data.length, updatedAt: this.now() };
      }
    } catch {
      // A body that errors (client abort) keeps the durable prefix.
    } finally {
      this.#writing.set(id, running - 1);
    }
    const kept = Math.max(offset, entry.data.length - this.withheldTail);
    entry.data = entry.data.subarray(0, kept);
    entry.record = { ...entry.record, receivedLength: kept };
    return entry.record.receivedLength;
  }

  async inspectDestination(destination: Destination): Promise<DestinationKind> {
    await this.#enter('inspectDestination', [destination]);
    const key = destination.join('/');
    if (this.directories.has(key)) return 'directory';
    return this.files.has(key) ? 'file' : 'missing';
  }

  async commit(id: string, options: CommitOptions): Promise<void> {
    await this.#enter('commit', [id, options]);
    const entry = this.#require(id);
    if (entry.record.state === 'complete') return;
    const key = entry.record.destination.join('/');
    if (this.directories.has(key)) throw new DestinationIsDirectoryError(entry.record.destination);
    if (this.files.has(key) && !options.overwrite) throw new DestinationExistsError(entry.record.destination);
    this.files.set(key, entry.data);
    entry.data = Buffer.alloc(0);
    entry.record = { ...entry.record, state: 'complete', updatedAt: this.now() };
  }

  async endSession(id: string, state: 'closed' | 'cancelled', now: number): Promise<void> {
    await this.#enter('endSession', [id, state, now]);
    const entry = this.#require(id);
    entry.data = Buffer.alloc(0);
    entry.reply = undefined;
    entry.record = { ...entry.record, state, updatedAt: now };
  }

  async deleteSession(id: string): Promise<void> {
    await this.#enter('deleteSession', [id]);
    this.#sessions.delete(id);
  }

  async *listSessions(): AsyncIterable<SessionRecord> {
    await this.#enter('listSessions', []);
    for (const entry of [...this.#sessions.values()]) yield entry.record;
  }

  async readData(id: string, start: number): Promise<Readable> {
    await this.#enter('readData', [id, start]);
    const entry = this.#require(id);
    return Readable.from([entry.data.subarray(start)]);
  }

  /** Stores the whole body as the reply once it ended; a body that errors rejects and keeps nothing. */
  async writeReply(id: string, body: Readable): Promise<number> {
    await this.#enter('writeReply', [id]);
    const entry = this.#require(id);
    const parts: Buffer[] = [];
    for await (const chunk of body) parts.push(chunk as Buffer);
    entry.reply = Buffer.concat(parts);
    return entry.reply.length;
  }

  async readReply(id: string, start: number, end: number): Promise<Readable> {
    await this.#enter('readReply', [id, start, end]);
    const reply = this.#require(id).reply;
    if (reply === undefined) throw new Error(`session ${id} has no reply`);
    return Readable.from([reply.subarray(start, end + 1)]);
  }

  /** Adds a record as another process (or the process before a restart) left it. */
  seed(record: SessionRecord, data: Buffer = Buffer.alloc(0), reply?: Buffer): void {
    this.#sessions.set(record.id, { record, data, reply });
  }

  async #enter(method: StorageMethod, args: readonly unknown[]): Promise<void> {
    this.calls.push({ method, args });
    await this.#gates.get(method);
    if (this.#failures.has(method)) {
      const error = this.#failures.get(method);
      this.#failures.delete(method);
      throw error;
    }
  }

  #require(id: string): Entry {
    const entry = this.#sessions.get(id);
    if (entry === undefined) throw new SessionNotFoundError(id);
    return entry;
  }
}
