import { Readable } from 'node:stream';
import {
  DestinationExistsError,
  DestinationIsDirectoryError,
  InvalidDestinationError,
  newSessionRecord,
  SessionNotFoundError,
} from './adapter';
import type {
  CommitOptions,
  Destination,
  DestinationKind,
  NewSession,
  SessionChanges,
  SessionRecord,
  StorageAdapter,
} from './adapter';

/** Options of {@link MemoryStorage}. */
export interface MemoryStorageOptions {
  /**
   * Files that exist before any upload, keyed by their slash-separated destination path
   * (`'reports/old.bin'`), for example to test the overwrite policy. Defaults to none.
   */
  readonly files?: Readonly<Record<string, Uint8Array | string>>;
}

interface Entry {
  record: SessionRecord;
  /** Received bytes, kept as the chunks they arrived in. */
  chunks: Buffer[];
  /** The data went to the destination; a `complete` session without it still holds its data (§10.1). */
  committed: boolean;
  /** The stored reply (§10), replaced as a whole. */
  reply: Buffer | undefined;
}

/**
 * Keeps sessions and committed files in this process's memory. Meant for tests and small
 * deployments: everything, committed files included, is lost when the process exits, and every
 * byte of every upload occupies memory. Read committed files with {@link MemoryStorage.readFile}.
 *
 * It uses only the public storage contract, so it doubles as an example for adapter authors.
 */
export class MemoryStorage implements StorageAdapter {
  readonly #sessions = new Map<string, Entry>();
  /** Committed files by slash-joined destination; folders exist implicitly as path prefixes. */
  readonly #files = new Map<string, Buffer>();

  constructor(options: MemoryStorageOptions = {}) {
    if (typeof options !== 'object' || options === null) {
      throw new TypeError(`MemoryStorage expects an options object or nothing, got ${String(options)}`);
    }
    for (const [key, content] of Object.entries(options.files ?? {})) {
      const destination = key.split('/');
      validate(destination);
      this.#files.set(destination.join('/'), Buffer.from(content));
    }
  }

  /** A copy of the committed file at `destination`, or undefined when none is there. */
  readFile(destination: Destination): Buffer | undefined {
    const file = this.#files.get(destination.join('/'));
    return file && Buffer.from(file);
  }

  async createSession(session: NewSession): Promise<SessionRecord> {
    validate(session.destination);
    if (this.#sessions.has(session.id)) throw new Error(`Session ${session.id} already exists`);
    const record: SessionRecord = freeze(newSessionRecord(session));
    this.#sessions.set(session.id, { record, chunks: [], committed: false, reply: undefined });
    return record;
  }

  async getSession(id: string): Promise<SessionRecord | undefined> {
    return this.#sessions.get(id)?.record;
  }

  async updateSession(id: string, changes: SessionChanges): Promise<SessionRecord> {
    const entry = this.#require(id);
    entry.record = freeze({
      ...entry.record,
      ...(changes.totalLength !== undefined && { totalLength: changes.totalLength }),
      ...(changes.state !== undefined && { state: changes.state }),
      ...(changes.updatedAt !== undefined && { updatedAt: changes.updatedAt }),
      ...(changes.sha256 !== undefined && { sha256: changes.sha256 }),
      ...(changes.delivered !== undefined && { delivered: changes.delivered }),
      ...(changes.reply !== undefined && { reply: changes.reply }),
    });
    return entry.record;
  }

  async writeFragment(id: string, offset: number, body: Readable): Promise<number> {
    const entry = this.#require(id);
    if (entry.record.state !== 'receiving') throw new Error(`Session ${id} is ${entry.record.state}; it takes no more data`);
    if (offset !== entry.record.receivedLength) {
      throw new RangeError(`Fragment offset ${offset} is not the received length ${entry.record.receivedLength} of ${id}`);
    }
    let length = offset;
    let failure: Error | undefined;
    const chunks = (body as AsyncIterable<unknown>)[Symbol.asyncIterator]();
    for (;;) {
      let step: IteratorResult<unknown>;
      try {
        step = await chunks.next();
      } catch {
        // A client abort (bits-protocol.md §6.3): keep what arrived, the next Ack reports it.
        break;
      }
      if (step.done) break;
      const chunk = step.value;
      if (typeof chunk !== 'string' && !ArrayBuffer.isView(chunk)) {
        await chunks.return?.();
        failure = new TypeError(`A fragment body must yield bytes, got ${typeof chunk}`);
        break;
      }
      // Copied, so a stored chunk neither shares nor pins the producer's (possibly pooled) buffer.
      const bytes =
        typeof chunk === 'string'
          ? Buffer.from(chunk, 'utf8')
          : Buffer.from(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      entry.chunks.push(bytes);
      length += bytes.length;
    }
    if (length !== offset) entry.record = freeze({ ...entry.record, receivedLength: length, updatedAt: Date.now() });
    if (failure) throw failure;
    return length;
  }

  async inspectDestination(destination: Destination): Promise<DestinationKind> {
    validate(destination);
    return this.#kindOf(destination.join('/'));
  }

  async commit(id: string, options: CommitOptions): Promise<void> {
    const entry = this.#require(id);
    const { record } = entry;
    // A complete session not yet committed (an upload-reply endpoint, §10.1) is committed now (§10.4).
    if (record.state === 'complete' && entry.committed) return;
    if (record.state !== 'receiving' && record.state !== 'complete') {
      throw new Error(`Session ${id} is ${record.state}; it cannot be committed`);
    }
    if (record.totalLength !== undefined && record.receivedLength !== record.totalLength) {
      throw new Error(`Session ${id} holds ${record.receivedLength} of ${record.totalLength} bytes; it cannot be committed`);
    }
    const key = record.destination.join('/');
    const kind = this.#kindOf(key);
    if (kind === 'directory') throw new DestinationIsDirectoryError(record.destination);
    if (kind === 'file' && !options.overwrite) throw new DestinationExistsError(record.destination);
    // Parent folders are implicit, but one of them must not already be a file.
    for (let i = 1; i < record.destination.length; i++) {
      const parent = record.destination.slice(0, i).join('/');
      if (this.#files.has(parent)) {
        throw Object.assign(new Error(`Cannot create a folder at ${parent}: a file is there`), { code: 'ENOTDIR' });
      }
    }
    // One synchronous step: readers see the old file or the new one.
    this.#files.set(key, Buffer.concat(entry.chunks));
    entry.chunks = [];
    entry.committed = true;
    entry.record = freeze({ ...record, state: 'complete' });
  }

  async endSession(id: string, state: 'closed' | 'cancelled', now: number): Promise<void> {
    const entry = this.#require(id);
    entry.chunks = [];
    entry.reply = undefined;
    entry.record = freeze({ ...entry.record, state, updatedAt: now });
  }

  async deleteSession(id: string): Promise<void> {
    this.#sessions.delete(id);
  }

  async *listSessions(): AsyncIterable<SessionRecord> {
    // A snapshot, so that deleting while iterating (expiry) is safe.
    for (const { record } of [...this.#sessions.values()]) yield record;
  }

  async readData(id: string, start: number): Promise<Readable> {
    const entry = this.#require(id);
    const { record } = entry;
    if (record.state === 'complete' && entry.committed) {
      throw new Error(`Session ${id} is complete and its data was committed to its destination`);
    }
    if (record.state !== 'receiving' && record.state !== 'complete') {
      throw new Error(`Session ${id} is ${record.state}; its data is no longer held in the session`);
    }
    const end = record.receivedLength;
    if (!Number.isSafeInteger(start) || start < 0 || start > end) {
      throw new RangeError(`Cannot read session ${id} from ${String(start)}: it holds ${end} bytes`);
    }
    // The chunks as they are now: bytes stored later are not part of this read.
    const chunks = [...entry.chunks];
    function* slices(): Generator<Buffer> {
      let position = 0;
      for (const chunk of chunks) {
        const from = Math.max(start - position, 0);
        position += chunk.length;
        // Copied, so that a consumer changing a chunk does not change the stored bytes.
        if (from < chunk.length) yield Buffer.from(chunk.subarray(from));
      }
    }
    return Readable.from(slices(), { objectMode: false });
  }

  async writeReply(id: string, body: Readable): Promise<number> {
    const entry = this.#require(id);
    const { state } = entry.record;
    if (state !== 'receiving' && state !== 'complete') throw new Error(`Session ${id} is ${state}; it takes no reply`);
    const chunks: Buffer[] = [];
    // A failing body rejects and keeps the earlier reply.
    for await (const chunk of body as AsyncIterable<unknown>) {
      if (typeof chunk !== 'string' && !ArrayBuffer.isView(chunk)) {
        body.destroy();
        throw new TypeError(`A reply must yield bytes, got ${typeof chunk}`);
      }
      chunks.push(
        typeof chunk === 'string'
          ? Buffer.from(chunk, 'utf8')
          : Buffer.from(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength)),
      );
    }
    // The session may have ended while the body was read.
    if (this.#sessions.get(id) !== entry || (entry.record.state !== 'receiving' && entry.record.state !== 'complete')) {
      throw new Error(`Session ${id} ended while its reply was stored`);
    }
    entry.reply = Buffer.concat(chunks);
    return entry.reply.length;
  }

  async readReply(id: string, start: number, end: number): Promise<Readable> {
    const { reply } = this.#require(id);
    if (reply === undefined) throw new Error(`Session ${id} has no stored reply`);
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start - 1 || end >= reply.length) {
      throw new RangeError(`Cannot read bytes ${String(start)}-${String(end)} of the reply of session ${id}: it holds ${reply.length} bytes`);
    }
    // `end` = `start` - 1 is the empty range of a 0-byte reply. A copy, in stream-sized chunks: a
    // replacement stored meanwhile does not change what this stream reads.
    const bytes = Buffer.from(reply.subarray(start, end + 1));
    function* slices(): Generator<Buffer> {
      for (let i = 0; i < bytes.length; i += 64 * 1024) yield bytes.subarray(i, i + 64 * 1024);
    }
    return Readable.from(slices(), { objectMode: false });
  }

  // No localDataFile(): nothing is on disk. No recover(): nothing survives a restart, so nothing
  // can be left half-done.

  #require(id: string): Entry {
    const entry = this.#sessions.get(id);
    if (entry === undefined) throw new SessionNotFoundError(id);
    return entry;
  }

  #kindOf(key: string): DestinationKind {
    if (this.#files.has(key)) return 'file';
    const prefix = `${key}/`;
    for (const name of this.#files.keys()) if (name.startsWith(prefix)) return 'directory';
    return 'missing';
  }
}

function validate(destination: Destination): void {
  if (!Array.isArray(destination) || destination.length === 0) {
    throw new InvalidDestinationError(destination ?? [], 'it has no segments');
  }
  for (const segment of destination) {
    if (typeof segment !== 'string' || segment === '' || segment === '.' || segment === '..' || /[/\\\0]/.test(segment)) {
      throw new InvalidDestinationError(destination, 'a segment is empty, . or .., or contains a separator');
    }
  }
}

function freeze(record: SessionRecord): SessionRecord {
  return Object.freeze({
    ...record,
    destination: Object.freeze([...record.destination]),
    reply: record.reply && Object.freeze({ ...record.reply }),
  });
}
