import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants, type BigIntStats, type Stats } from 'node:fs';
import * as fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { finished, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import createDebug from 'debug';
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
  RecoveryReport,
  SessionChanges,
  SessionRecord,
  SessionState,
  StorageAdapter,
  StoredReply,
} from './adapter';
import { DirectorySync } from './directory-sync';

const debug = createDebug('bits-upload:storage:fs');

/**
 * When {@link FileSystemStorage} calls `fsync`:
 * - `fragment`: the data file before every fragment is acknowledged (`fdatasync`), and every record
 *   whose loss a restart could not repair when it is written (the others go with the next). An
 *   acknowledged byte survives a power cut.
 * - `commit`: only data at commit, records as under `fragment`. After a power cut a session may
 *   report fewer bytes than were acknowledged (the client then resends them, bits-protocol.md
 *   §6.3), and on file systems without ordered data writes the lost tail may read back as zeros.
 * - `never`: no `fsync` at all (tests, tmpfs, or storage that is durable anyway).
 */
export type FsyncPolicy = 'fragment' | 'commit' | 'never';

/** Options of {@link FileSystemStorage}. */
export interface FileSystemStorageOptions {
  /** Root folder of all destinations. Resolved to an absolute path and created if missing. Required. */
  readonly directory: string;
  /**
   * Name of the hidden folder under `directory` that holds session records and partial data. It sits
   * on the same file system as the destinations so that commit is a rename, and no upload may target
   * it. Defaults to `.bits-sessions`.
   */
  readonly sessionDirectory?: string;
  /** When data and records are flushed to disk, see {@link FsyncPolicy}. Defaults to `'fragment'`. */
  readonly fsync?: FsyncPolicy;
  /**
   * How many data files of sessions in progress stay open between their fragments, so that a
   * fragment does not pay for opening and closing its file, and as many records (record.json)
   * between their updates. The least recently used beyond this are closed; 0 closes every file
   * after its use. Each is one file descriptor. Keep it above the number of sessions that receive
   * at once: clients that take turns over more sessions than this find their file closed at every
   * fragment. Defaults to 1024.
   */
  readonly maxOpenFiles?: number;
  /**
   * Milliseconds after which a data file no fragment used, or a record no update used, is closed.
   * Defaults to 10 000.
   */
  readonly openFileIdleTimeout?: number;
}

interface ResolvedOptions {
  readonly root: string;
  readonly sessionDirectory: string;
  readonly fsync: FsyncPolicy;
  readonly maxOpenFiles: number;
  readonly openFileIdleTimeout: number;
}

/** What record.json holds: the public record plus the adapter's own commit marker. */
interface StoredRecord extends SessionRecord {
  /** Set just before the data is moved, so that a commit interrupted by a crash can be finished. */
  readonly committing?: boolean;
  /**
   * The `overwrite` option of the commit that set the marker, so that {@link FileSystemStorage.recover}
   * finishes it the same way. Markers written before this field existed lack it: treated as false.
   */
  readonly commitOverwrite?: boolean;
}

/** A parsed record.json and the identity of the file it was read from (see {@link stampOf}). */
interface CachedRecord {
  readonly record: StoredRecord;
  /** The version of record.json it was read from or written as (see {@link stampOf}). */
  readonly stamp: string;
  /** That file's identity and size, to recognise an append as the only change since. */
  readonly stats: BigIntStats;
}

/** A session's record.json kept open between its updates, or its data file (see {@link OpenDataFile}). */
interface OpenFile {
  readonly handle: FileHandle;
  /** A fragment or an update is being written through it: it is closed only once that is done. */
  busy: boolean;
  /** Removed from the cache while busy: close it when the write is done. */
  closeWhenDone: boolean;
  lastUsed: number;
}

/** The data file of a session in progress, kept open between its fragments. */
interface OpenDataFile extends OpenFile {
  /** The modification time this instance last gave the file (see {@link TIME_REFRESH_MS}). */
  timeSet: number;
  /** Every byte written through this handle since it was opened has been flushed (`fdatasync`). */
  flushed: boolean;
}

/** record.json cannot be parsed or fails validation. */
class CorruptRecordError extends Error {
  override readonly name = 'CorruptRecordError';
}

/** record.json was written by a newer version of this adapter; never touched, never deleted. */
class FutureRecordError extends Error {
  override readonly name = 'FutureRecordError';
}

const RECORD_FILE = 'record.json';
const RECORD_TEMP = 'record.json.tmp';
/**
 * record.json holds one line per version of the record, the last complete one counting: updates
 * are appended (see `#writeRecord`). Once it grows past this many bytes (about thirty versions;
 * a session normally has five to seven) it is replaced by a file of one line.
 */
const RECORD_COMPACT_BYTES = 16 * 1024;
/**
 * When a record line is flushed (under `fsync` `'fragment'` and `'commit'`). `'now'`: before the
 * call returns. `'deferred'`: by the next line flushed (`fdatasync` covers the whole file) or the
 * kernel's writeback, for lines whose loss to a power cut a restart repairs, each flush being a
 * disk round trip before an Ack: the total (the next fragment's Content-Range carries it again,
 * bits-protocol.md §6.3), the SHA-256 (computed again from the stored bytes, and flushed with the
 * commit marker before the data moves, §6.4), the state after a commit (the marker and the data
 * gone from the folder say it, see recover()). Everything else is flushed at once: a new session,
 * the commit marker, `delivered` (else the application is told twice), replies, and tombstones (a
 * lost one would bring back an open session, counted against the limits until it expires, §5.4).
 */
type RecordFlush = 'now' | 'deferred';
const DATA_FILE = 'data';
/** The stored reply of an upload-reply session (bits-protocol.md §10), replaced atomically. */
const REPLY_FILE = 'reply';
/** A reply being written: `reply.<random hex>.tmp`, renamed to {@link REPLY_FILE} once complete. */
const REPLY_TEMP = /^reply\.[0-9a-f]+\.tmp$/;
/**
 * Format version of a record (a line of record.json). `sha256`, `delivered` and `reply` were added
 * to version 1 as optional fields: records written before them load as undefined, false and
 * undefined. A record with a higher version is left alone. record.json files of one line, all that
 * versions before the appended updates wrote, read as before; those versions cannot read a file of
 * several lines (no release had been published when that changed). Since record.json stopped being
 * rewritten per fragment, its
 * `receivedLength` of a session in progress is the length when the record was last written (the
 * data file has the rest); an older release reading it would cut the data back to it and have the
 * client resend the rest (§6.3), never lose or invent a byte.
 */
const RECORD_VERSION = 1;
/**
 * Data files are opened for positioned writes (no O_APPEND: a position is then honoured), created
 * when missing, as the append-mode open before did.
 */
const DATA_WRITE_FLAGS = fsConstants.O_WRONLY | fsConstants.O_CREAT;
/**
 * Fragment bodies arrive in socket-sized chunks (often 10-64 KiB), and every write is a thread-pool
 * round trip that costs more CPU than the kernel's copy. So chunks are gathered and written
 * together with one `writev`: at least {@link MIN_WRITE} bytes (or the rest of the body), and
 * whatever arrived meanwhile while a write is in flight, up to {@link MAX_WRITE}, which also bounds
 * what one fragment holds in memory (then reading waits). A body that stalls is written after
 * {@link STALL_FLUSH_MS}, so its bytes reach the file while the client is quiet.
 */
const MIN_WRITE = 128 * 1024;
const MAX_WRITE = 512 * 1024;
const STALL_FLUSH_MS = 2;
/** Parsed records kept to skip re-reading record.json when its stamp did not change. */
const MAX_CACHED_RECORDS = 1024;
/**
 * A fragment sets its data file's modification time (the session's last progress) only when the
 * time this instance last set is older than this: in between, every write moves it anyway, on the
 * kernel's clock (which can lag by a timer tick). Saves a thread-pool round trip per fragment.
 */
const TIME_REFRESH_MS = 1000;
const DEFAULT_MAX_OPEN_FILES = 1024;
const DEFAULT_OPEN_FILE_IDLE_TIMEOUT = 10_000;
const STATES: readonly SessionState[] = ['receiving', 'complete', 'closed', 'cancelled'];
const FSYNC_POLICIES: readonly FsyncPolicy[] = ['fragment', 'commit', 'never'];
const WINDOWS_RESERVED = /^(con|prn|aux|nul|com\d|lpt\d)$/i;
/** A session id that is its own folder name: only characters never encoded, and short enough. */
const PLAIN_FOLDER_NAME = /^[A-Za-z0-9_{}-]{1,200}$/;

/**
 * Stores uploads on a local (or any POSIX-like) file system. Each session is a folder
 * `<directory>/<sessionDirectory>/<id>/` holding `record.json` (one appended line per update, see
 * {@link RECORD_COMPACT_BYTES}), `data`
 * (the received bytes, written in place) and, for upload-reply sessions, `reply` (replaced
 * atomically). Commit renames or hard-links `data` to the destination, so readers see the old file
 * or the whole new one (bits-protocol.md §5.5). A session marked `complete` without a commit (an
 * upload-reply endpoint, §10.1) keeps `data` in its folder until it ends or is committed; marking it
 * so cuts `data` to the received length and flushes it like a commit would.
 *
 * The per-fragment path touches only the data file. While a session is `receiving`:
 * - its received length R (§6) is the data file's length (capped at the total). The adapter writes
 *   the body's bytes in order at R, so every byte in the file is the client's byte at that offset,
 *   acknowledged or not: after a crash the file is right by construction, and bytes written but
 *   never acknowledged simply count (the next Ack tells the client, §6.3). record.json keeps
 *   everything else and is updated only when something other than the length changes.
 * - its last progress (`updatedAt`, §5.4 expiry) is the later of the record's and the data file's
 *   modification time. Every write moves that time; the adapter also sets it to `Date.now()` after
 *   a fragment when it last did so a second ago or more (the kernel's clock for file times can lag
 *   by a timer tick), and back to the record's time when it writes an earlier one, so that an
 *   explicit `updatedAt` holds.
 * Both are read from the file system, so another process or a restarted one sees the same values.
 * Data files of sessions in progress stay open between fragments (`maxOpenFiles`,
 * `openFileIdleTimeout`); {@link close} closes them.
 */
export class FileSystemStorage implements StorageAdapter {
  readonly #options: ResolvedOptions;
  readonly #sessionsDir: string;
  #ready: Promise<{ realRoot: string; realSessions: string }> | undefined;
  /** Parsed records by session folder, least recently used first. */
  readonly #records = new Map<string, CachedRecord>();
  /** Open data files by session folder, least recently used first. */
  readonly #dataFiles = new Map<string, OpenDataFile>();
  /** record.json files open for appending, by session folder, least recently used first. */
  readonly #recordFiles = new Map<string, OpenFile>();
  readonly #directorySync = new DirectorySync();
  #idleTimer: NodeJS.Timeout | undefined;

  constructor(options: FileSystemStorageOptions) {
    this.#options = resolveOptions(options);
    this.#sessionsDir = path.join(this.#options.root, this.#options.sessionDirectory);
  }

  /** Absolute path of the storage root. */
  get directory(): string {
    return this.#options.root;
  }

  /**
   * Closes the data files kept open between fragments and the records kept open between updates
   * (a file in use is closed when its write is done). The storage stays usable and opens files
   * again as needed; call it when the server shuts down, or before unmounting the file system.
   */
  async close(): Promise<void> {
    await Promise.all([
      ...[...this.#dataFiles.keys()].map((dir) => this.#closeDataFile(dir)),
      ...[...this.#recordFiles.keys()].map((dir) => this.#closeRecordFile(dir)),
    ]);
  }

  async createSession(session: NewSession): Promise<SessionRecord> {
    await this.#init();
    await this.#destinationPath(session.destination);
    const dir = this.#sessionPath(session.id);
    // Not recursive: an existing folder means the id is taken, which must never be papered over.
    await fs.mkdir(dir);
    const record: StoredRecord = newSessionRecord(session);
    let data: FileHandle | undefined;
    try {
      data = await fs.open(path.join(dir, DATA_FILE), DATA_WRITE_FLAGS | fsConstants.O_EXCL);
      // The data file's time counts as progress (see the class comment): it starts at the record's.
      await setTime(data, record.updatedAt);
      await this.#createRecord(dir, record);
    } catch (error) {
      await data?.close().catch(() => undefined);
      // A folder without a record is invisible to listSessions and would never expire.
      await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
      throw error;
    }
    // Kept open for the first fragment, which normally follows.
    await this.#keepDataFile(dir, data, record.updatedAt);
    // The folder's entries, and the folder's own, are durable before the Ack.
    await this.#syncDirectory(dir);
    await this.#syncDirectory(this.#sessionsDir);
    debug('created session %s for %s', session.id, session.destination.join('/'));
    return publicRecord(record);
  }

  async getSession(id: string): Promise<SessionRecord | undefined> {
    await this.#init();
    const loaded = await this.#loadRecord(id);
    return loaded && publicRecord(loaded.record);
  }

  async updateSession(id: string, changes: SessionChanges): Promise<SessionRecord> {
    await this.#init();
    // Checked before anything is written: a value record.json cannot hold would make it corrupt.
    const reply = changes.reply === undefined ? undefined : parseReply(changes.reply);
    if (changes.reply !== undefined && reply === undefined) {
      throw new TypeError(`Invalid reply for session ${id}: ${show(changes.reply)}`);
    }
    const { record, dir, data } = await this.#requireRecord(id);
    const updated: StoredRecord = {
      ...record,
      ...(changes.totalLength !== undefined && { totalLength: changes.totalLength }),
      ...(changes.state !== undefined && { state: changes.state }),
      ...(changes.updatedAt !== undefined && { updatedAt: changes.updatedAt }),
      ...(changes.sha256 !== undefined && { sha256: changes.sha256 }),
      ...(changes.delivered !== undefined && { delivered: changes.delivered }),
      ...(reply !== undefined && { reply }),
    };
    if (record.state === 'receiving' && updated.state === 'complete') {
      // Complete without a commit (an upload-reply endpoint, §10.1): the data stays here and is now
      // the upload, so it gets what a commit would give it before the record says so.
      await this.#withDataFileTakenOut(dir, (kept) => this.#settleData(dir, record.receivedLength, kept));
    } else if (updated.state === 'receiving' && changes.updatedAt !== undefined && data !== undefined) {
      // The data file's time counts as progress too (see reconcile): moved back to the time given
      // when that is earlier; a later one is what the record now says anyway.
      if (changes.updatedAt < Math.round(data.mtimeMs)) await setTime(path.join(dir, DATA_FILE), changes.updatedAt);
      const open = this.#dataFiles.get(dir);
      if (open !== undefined) open.timeSet = changes.updatedAt;
    }
    const repairable = changes.state === undefined && changes.delivered === undefined && reply === undefined;
    await this.#writeRecord(dir, updated, repairable ? 'deferred' : 'now');
    return publicRecord(updated);
  }

  async writeFragment(id: string, offset: number, body: Readable): Promise<number> {
    // Until the body is read, an abort must not surface as an unhandled 'error' event.
    const ignore = (): void => undefined;
    body.on('error', ignore);
    try {
      return await this.#writeFragment(id, offset, body);
    } finally {
      body.off('error', ignore);
    }
  }

  /**
   * The per-fragment path: check the record (a stat while it is cached) and the open data file (an
   * fstat) at once, write the body at the end of the data file, flush it under `fsync: 'fragment'`.
   * No record is written: the file's length is the received length (see the class comment), so one
   * `fdatasync` of the data file makes a fragment durable (bits-protocol.md §6.3: only durable bytes
   * are acknowledged).
   */
  async #writeFragment(id: string, offset: number, body: Readable): Promise<number> {
    await this.#init();
    const dir = this.#sessionPath(id);
    // A file kept open is checked together with the record; otherwise it is opened (and created
    // if missing) only once the record says the session takes data.
    let file = this.#takeDataFile(dir);
    // A file that failed is not trusted for the next fragment: it is closed and opened afresh.
    let healthy = false;
    try {
      const [record, kept] = await Promise.all([this.#readRecordOf(id, dir), file?.handle.stat()]);
      if (record === undefined) throw new SessionNotFoundError(id);
      if (record.state !== 'receiving') {
        throw new Error(`Session ${id} is ${record.state}; it takes no more data`);
      }
      let stats = kept;
      if (file === undefined || stats === undefined || stats.nlink === 0) {
        // Not open yet, or its file was removed meanwhile (by another process): open what is there.
        if (file !== undefined) await this.#releaseDataFile(dir, file, false);
        file = await this.#openDataFile(dir);
        stats = await file.handle.stat();
      }
      const received = receivedOf(record, stats.size);
      if (offset !== received) {
        // The middleware owns the range arithmetic (§6.3); a mismatch is a bug there, and writing
        // anyway would leave a hole or overwrite stored bytes.
        throw new RangeError(`Fragment offset ${offset} is not the received length ${received} of ${id}`);
      }

      const { handle } = file;
      file.flushed = false;
      const outcome = await writeBody(handle, offset, body);
      const { written } = outcome;
      let { storageError } = outcome;
      if (storageError === undefined && outcome.bodyError !== undefined) {
        debug('session %s: body ended with %s after %d bytes', id, errorText(outcome.bodyError), written);
      }
      let length = offset + written;
      if (written > 0) {
        const now = Date.now();
        const refresh = now - file.timeSet >= TIME_REFRESH_MS;
        if (refresh) file.timeSet = now;
        const [synced, timed] = await Promise.allSettled([
          this.#options.fsync === 'fragment' ? handle.datasync() : undefined,
          refresh ? setTime(handle, now) : undefined,
        ]);
        if (synced.status === 'rejected') {
          // A failed fsync vouches for nothing written since the last good one.
          storageError ??= synced.reason;
          length = offset;
        } else {
          file.flushed = this.#options.fsync === 'fragment';
        }
        if (timed.status === 'rejected') debug('session %s: cannot set the data time: %s', id, errorText(timed.reason));
      }
      if (storageError !== undefined) {
        debug('session %s: storing failed with %s; keeping %d bytes', id, errorText(storageError), length);
        // Cut back what was not made durable: the file's length is what the next Ack reports.
        if (length < offset + written) await handle.truncate(length).catch(() => undefined);
        throw storageError;
      }
      debug('session %s: %d -> %d', id, offset, length);
      healthy = true;
      return length;
    } finally {
      if (file !== undefined) await this.#releaseDataFile(dir, file, healthy);
    }
  }

  async inspectDestination(destination: Destination): Promise<DestinationKind> {
    await this.#init();
    return kindOf(await this.#destinationPath(destination));
  }

  async commit(id: string, options: CommitOptions): Promise<void> {
    await this.#init();
    // The data file is about to move: nothing may keep writing through an open handle.
    await this.#withDataFileTakenOut(this.#sessionPath(id), (kept) => this.#commit(id, options, kept));
  }

  async #commit(id: string, options: CommitOptions, kept: OpenDataFile | undefined): Promise<void> {
    const { record, dir, data } = await this.#requireRecord(id);
    if (record.state !== 'receiving' && record.state !== 'complete') {
      throw new Error(`Session ${id} is ${record.state}; it cannot be committed`);
    }
    const dataPath = path.join(dir, DATA_FILE);
    // A complete session whose data left the folder was committed; one that still holds it was only
    // marked complete (an upload-reply endpoint, §10.1) and is committed now (§10.4 copy to destination).
    if (record.state === 'complete' && data === undefined && !record.committing) return;

    const target = await this.#destinationPath(record.destination);
    if (data === undefined) {
      // The data is gone: either a previous commit moved it and crashed before recording that,
      // or it was lost. Only the commit marker tells the two apart.
      if (!record.committing) throw new Error(`Session ${id} has no data to commit`);
      debug('session %s: finishing an interrupted commit', id);
      await this.#writeRecord(dir, withoutCommitMarker({ ...record, state: 'complete' }));
      return;
    }
    if (record.totalLength !== undefined && record.receivedLength !== record.totalLength) {
      throw new Error(`Session ${id} holds ${record.receivedLength} of ${record.totalLength} bytes; it cannot be committed`);
    }
    if (data.size < record.receivedLength) {
      // Only a complete session can get here (a receiving one has the file's length): its data was
      // lost after it was marked complete, and a short file must not be published.
      throw new Error(`Session ${id} holds ${data.size} of its ${record.receivedLength} bytes; it cannot be committed`);
    }

    await this.#settleData(dir, record.receivedLength, kept);

    const existing = await kindOf(target);
    if (existing === 'directory') throw new DestinationIsDirectoryError(record.destination);
    if (existing === 'file' && !options.overwrite && !(await sameFile(dataPath, target))) {
      throw new DestinationExistsError(record.destination);
    }
    if (record.destination.length > 1) {
      await fs.mkdir(path.dirname(target), { recursive: true });
      // mkdir may have created folders through a link planted meanwhile; check again before moving.
      await this.#destinationPath(record.destination);
    }
    if (!record.committing || record.commitOverwrite !== options.overwrite) {
      await this.#writeRecord(dir, { ...record, committing: true, commitOverwrite: options.overwrite });
    }

    if (options.overwrite) {
      await fs.rename(dataPath, target).catch((error: unknown) => {
        throw mapMoveError(error, record.destination);
      });
    } else {
      await this.#linkWithoutOverwrite(dataPath, target, record.destination);
    }
    await this.#syncDirectory(path.dirname(target));
    // The marker and the data gone from the folder already say this after a crash (see recover()).
    await this.#writeRecord(dir, withoutCommitMarker({ ...record, state: 'complete' }), 'deferred');
    debug('session %s committed to %s', id, record.destination.join('/'));
  }

  async endSession(id: string, state: 'closed' | 'cancelled', now: number): Promise<void> {
    await this.#init();
    await this.#closeDataFile(this.#sessionPath(id));
    const { record, dir, data } = await this.#requireRecord(id);
    // Only the temporary data goes; a committed destination is no longer in the session folder.
    // Nothing creates the data file of a session that no longer receives, so one seen gone stays gone.
    if (data !== undefined || record.state === 'receiving') await fs.rm(path.join(dir, DATA_FILE), { force: true });
    await this.#removeReplyFiles(dir);
    await this.#writeRecord(dir, withoutCommitMarker({ ...record, state, updatedAt: now }));
    // The session takes no more updates, only its removal when it expires.
    await this.#closeRecordFile(dir);
    debug('session %s %s', id, state);
  }

  async deleteSession(id: string): Promise<void> {
    await this.#init();
    const dir = this.#sessionPath(id);
    await Promise.all([this.#closeDataFile(dir), this.#closeRecordFile(dir)]);
    await fs.rm(dir, { recursive: true, force: true });
    this.#records.delete(dir);
    debug('session %s deleted', id);
  }

  async *listSessions(): AsyncIterable<SessionRecord> {
    await this.#init();
    const entries = await fs.readdir(this.#sessionsDir, { withFileTypes: true });
    for (const entry of entries) {
      if (!entry.isDirectory()) continue;
      const dir = path.join(this.#sessionsDir, entry.name);
      let record: StoredRecord;
      try {
        ({ record } = await this.#loadAt(dir));
        if (sessionFolderName(record.id) !== entry.name) throw new Error(`it holds the record of ${record.id}`);
      } catch (error) {
        // One damaged folder must not stop expiry of all the others.
        debug('skipping session folder %s: %s', entry.name, errorText(error));
        continue;
      }
      yield publicRecord(record);
    }
  }

  /**
   * Streams bytes `start` to receivedLength-1 of the session's data file, while it is the session's:
   * state `receiving`, or `complete` with the data still in the session folder (not committed). The
   * file is opened before the promise resolves, so a missing file rejects here rather than failing
   * the stream; bytes beyond the received length (beyond the total) are never included. Consume or
   * destroy the stream: it holds the file open until then.
   */
  async readData(id: string, start: number): Promise<Readable> {
    await this.#init();
    const { record, dir } = await this.#requireRecord(id);
    if (record.state !== 'receiving' && record.state !== 'complete') {
      throw new Error(`Session ${id} is ${record.state}; its data is no longer held in the session`);
    }
    const end = record.receivedLength;
    if (!Number.isSafeInteger(start) || start < 0 || start > end) {
      throw new RangeError(`Cannot read session ${id} from ${String(start)}: it holds ${end} bytes`);
    }
    // A receiving session without a data file holds nothing (reconcile), which an empty read reports.
    if (start === end && record.state === 'receiving') return Readable.from([], { objectMode: false });
    let handle: FileHandle;
    try {
      handle = await fs.open(path.join(dir, DATA_FILE), 'r');
    } catch (error) {
      if (isErrno(error, 'ENOENT')) throw noDataError(record);
      throw error;
    }
    if (start === end) {
      await handle.close();
      return Readable.from([], { objectMode: false });
    }
    return handle.createReadStream({ start, end: end - 1 });
  }

  /**
   * Streams `body` into a temporary file in the session folder, flushes it (unless the fsync policy
   * is `never`) and renames it to `reply`, so that a reader sees the old reply or the whole new one;
   * a stream of the old reply that is already open keeps reading the old bytes. Rejects, keeping any
   * earlier reply, when `body` fails or storing does; and for sessions that ended (`closed`,
   * `cancelled`), whose folder holds no temporary data any more.
   */
  async writeReply(id: string, body: Readable): Promise<number> {
    // Until pipeline listens, a failing body must not surface as an unhandled 'error' event.
    const ignore = (): void => undefined;
    body.on('error', ignore);
    try {
      return await this.#writeReply(id, body);
    } finally {
      body.off('error', ignore);
    }
  }

  async #writeReply(id: string, body: Readable): Promise<number> {
    await this.#init();
    const { record, dir } = await this.#requireRecord(id);
    if (record.state !== 'receiving' && record.state !== 'complete') {
      throw new Error(`Session ${id} is ${record.state}; it takes no reply`);
    }
    // A name of its own: a failed earlier attempt can never mix its bytes into this one.
    const temp = path.join(dir, `reply.${randomBytes(8).toString('hex')}.tmp`);
    const file = await fs.open(temp, 'wx');
    let size = 0;
    try {
      try {
        await pipeline(body, async (source: AsyncIterable<unknown>) => {
          for await (const chunk of source) {
            const bytes = toBuffer(chunk, 'A reply');
            for (let done = 0; done < bytes.length; ) {
              const { bytesWritten } = await file.write(bytes, done, bytes.length - done, null);
              done += bytesWritten;
            }
            size += bytes.length;
          }
        });
        if (this.#options.fsync !== 'never') await file.sync();
      } finally {
        await file.close();
      }
      await fs.rename(temp, path.join(dir, REPLY_FILE));
    } catch (error) {
      debug('session %s: reply not stored: %s', id, errorText(error));
      await fs.rm(temp, { force: true }).catch(() => undefined);
      throw error;
    }
    await this.#syncDirectory(dir);
    debug('session %s: stored a reply of %d bytes', id, size);
    return size;
  }

  /**
   * Streams bytes `start` to `end` (inclusive) of the stored reply; `end` = `start` - 1 is an empty
   * range (the only one a 0-byte reply has). The file is opened and the range checked against its
   * size before the promise resolves: a range outside the reply rejects with a RangeError, a
   * session without a stored reply with an Error. Consume or destroy the stream: it holds the file
   * open until then.
   */
  async readReply(id: string, start: number, end: number): Promise<Readable> {
    await this.#init();
    const { dir } = await this.#requireRecord(id);
    let handle: FileHandle;
    try {
      handle = await fs.open(path.join(dir, REPLY_FILE), 'r');
    } catch (error) {
      if (isErrno(error, 'ENOENT')) throw new Error(`Session ${id} has no stored reply`);
      throw error;
    }
    try {
      const stats = await handle.stat();
      if (!stats.isFile()) throw new Error(`Session ${id} has no stored reply`);
      checkReplyRange(id, start, end, stats.size);
    } catch (error) {
      await handle.close();
      throw error;
    }
    if (end < start) {
      await handle.close();
      return Readable.from([], { objectMode: false });
    }
    return handle.createReadStream({ start, end });
  }

  /**
   * The absolute path of the session's data file, while the data is the session's (state
   * `receiving`, or `complete` and not committed), for a notification by reference (§10.3). Bytes
   * beyond the total, which nothing but damage leaves, are cut when the session is marked complete.
   * The file belongs to the session: read it, never move or change it.
   */
  async localDataFile(id: string): Promise<string> {
    await this.#init();
    const { record, dir } = await this.#requireRecord(id);
    if (record.state !== 'receiving' && record.state !== 'complete') {
      throw new Error(`Session ${id} is ${record.state}; its data is no longer held in the session`);
    }
    const file = path.join(dir, DATA_FILE);
    if ((await statOrUndefined(file)) === undefined) throw noDataError(record);
    return file;
  }

  /**
   * Repairs what a crash left in the session folder; call it once at start-up, while no other
   * process or instance uses the same `directory` (it would take their half-created sessions for
   * orphans). Per session folder:
   * - no readable record.json (a crash inside createSession: none yet, or empty or cut short; or
   *   junk), or a record of another id:
   *   the folder is removed (`orphansRemoved`); a record of a newer format version is left alone;
   * - a leftover `record.json.tmp` is removed (`orphansRemoved`), and so is the data file of a
   *   session that ended (`closed`, `cancelled`); the data of a `complete` session that was not
   *   committed (an upload-reply endpoint, §10.1) is the upload and stays;
   * - replies (§10): a half-written `reply.*.tmp` is removed, and so is a `reply` file of an ended
   *   session or one its record does not name (`orphansRemoved`); a live record naming a stored
   *   reply whose file is gone, or of another size, forgets it (`recordsRepaired`), so that the
   *   next repeat of the final fragment asks the application again;
   * - a `receiving` record whose data file is missing gets an empty one and receivedLength 0, one
   *   whose data file is shorter than the record last said (a power cut under `fsync: 'commit'` or
   *   `'never'`) gets the file's length (`recordsRepaired`; totalLength is kept, the client resends
   *   the rest, bits-protocol.md §6.3); a longer data file is what a session in progress normally
   *   has (the record is not rewritten per fragment) and stays, except bytes beyond the total, which
   *   are cut (not counted);
   * - a record with the commit marker is committed the way the interrupted commit would have
   *   (`commitsFinished`): the data is moved (or, already at the destination, the record is just
   *   marked complete). When the destination changed meanwhile so that this is not possible, the
   *   record is left for the next {@link commit}; when the data is neither in the session nor at
   *   the destination, the record is reset to 0 bytes (`recordsRepaired`).
   * Sessions that are consistent are not written to. A folder that cannot be repaired (a
   * permission error, say) is skipped, so that one of them does not keep the server from starting.
   */
  async recover(): Promise<RecoveryReport> {
    await this.#init();
    // Files are cut and created below; none may stay open from before.
    await this.close();
    const report = { orphansRemoved: 0, recordsRepaired: 0, commitsFinished: 0 };
    const entries = await fs.readdir(this.#sessionsDir, { withFileTypes: true });
    for (const entry of entries) {
      if (!entry.isDirectory()) {
        // The adapter creates nothing but folders here; whatever this is, it is not ours to delete.
        debug('recover: leaving %s alone: not a session folder', entry.name);
        continue;
      }
      const dir = path.join(this.#sessionsDir, entry.name);
      let record: StoredRecord;
      try {
        record = await this.#readRecordFile(dir);
        if (sessionFolderName(record.id) !== entry.name) {
          throw new CorruptRecordError(`the folder ${entry.name} holds the record of ${record.id}`);
        }
      } catch (error) {
        if (error instanceof CorruptRecordError || isErrno(error, 'ENOENT', 'EISDIR', 'ENOTDIR')) {
          debug('recover: removing orphan session folder %s (%s)', entry.name, errorText(error));
          try {
            await fs.rm(dir, { recursive: true, force: true });
            report.orphansRemoved += 1;
          } catch (rmError) {
            debug('recover: cannot remove %s: %s', entry.name, errorText(rmError));
          }
        } else {
          debug('recover: skipping session folder %s: %s', entry.name, errorText(error));
        }
        continue;
      }
      try {
        await this.#recoverSession(record, dir, report);
      } catch (error) {
        debug('recover: cannot repair session %s: %s', record.id, errorText(error));
      }
    }
    if (report.orphansRemoved > 0) await this.#syncDirectory(this.#sessionsDir);
    debug('recover: %o', report);
    return { ...report };
  }

  async #recoverSession(
    found: StoredRecord,
    dir: string,
    report: { orphansRemoved: number; recordsRepaired: number; commitsFinished: number },
  ): Promise<void> {
    let record = found;
    const id = record.id;
    if (await removeIfPresent(path.join(dir, RECORD_TEMP))) {
      debug('recover: session %s: removed a leftover %s', id, RECORD_TEMP);
      report.orphansRemoved += 1;
    }

    // Replies (§10): a half-written one is junk, and so is a reply file of an ended session or one
    // the record does not name (a crash between writeReply and updateSession: the application is
    // asked again, and its reply stored again).
    for (const name of await fs.readdir(dir)) {
      if (!REPLY_TEMP.test(name)) continue;
      debug('recover: session %s: removing a half-written reply %s', id, name);
      await fs.rm(path.join(dir, name), { recursive: true, force: true });
      report.orphansRemoved += 1;
    }
    const live = record.state === 'receiving' || record.state === 'complete';
    const storedReply = record.reply?.kind === 'stored' ? record.reply : undefined;
    const replyPath = path.join(dir, REPLY_FILE);
    const replyFile = await lstatOrUndefined(replyPath);
    const replyHeld = replyFile !== undefined && replyFile.isFile() && replyFile.size === storedReply?.size;
    if (replyFile !== undefined && !(live && replyHeld)) {
      debug('recover: session %s (%s): removing a reply file nothing serves', id, record.state);
      await fs.rm(replyPath, { recursive: true, force: true });
      report.orphansRemoved += 1;
    }
    if (live && storedReply !== undefined && !replyHeld) {
      // The recorded reply is lost (stored without fsync) or was being replaced: forgotten, so that
      // the next repeat of the final fragment asks the application again (§10.4) instead of
      // offering a reply that cannot be served.
      debug('recover: session %s: its stored reply is gone; forgetting it', id);
      record = { ...record, reply: undefined };
      await this.#writeRecord(dir, record);
      report.recordsRepaired += 1;
    }
    const dataPath = path.join(dir, DATA_FILE);
    let data = await lstatOrUndefined(dataPath);
    if (data !== undefined && !data.isFile()) {
      // Never the adapter's own (a link or a folder): gone, so that nothing reads through it.
      debug('recover: session %s: removing a data entry that is not a file', id);
      await fs.rm(dataPath, { recursive: true, force: true });
      data = undefined;
      if (record.state !== 'receiving') report.orphansRemoved += 1;
    }

    if (!live) {
      // A tombstone holds no temporary data.
      if (data !== undefined) {
        debug('recover: session %s (%s): removing its leftover data', id, record.state);
        await fs.rm(dataPath, { force: true });
        report.orphansRemoved += 1;
      }
      return;
    }
    // Complete: committed (no data here), or complete without a commit (an upload-reply endpoint,
    // §10.1), whose data is the upload and was cut and flushed when it was marked complete.
    if (record.state === 'complete' && !record.committing) return;

    // The bytes held are fewer than recorded (or gone): the record is corrected to them. The
    // commit marker goes too: what is left is not a complete upload.
    const repair = async (received: number): Promise<void> => {
      if (data === undefined) {
        const handle = await fs.open(dataPath, 'w');
        try {
          // Not progress: the session's last progress stays what the record says.
          await setTime(handle, record.updatedAt);
          if (this.#options.fsync !== 'never') await handle.sync();
        } finally {
          await handle.close();
        }
      }
      debug('recover: session %s: record said %d bytes, %d are held', id, record.receivedLength, received);
      await this.#writeRecord(dir, withoutCommitMarker({ ...record, receivedLength: received, sha256: undefined }));
      report.recordsRepaired += 1;
    };

    if (record.committing) {
      if (data === undefined) {
        // Moved by the interrupted commit, or lost. The destination tells which.
        let target: string;
        try {
          target = await this.#destinationPath(record.destination);
        } catch (error) {
          debug('recover: session %s: leaving the interrupted commit alone: %s', id, errorText(error));
          return;
        }
        if ((await kindOf(target)) === 'file') {
          await this.#writeRecord(dir, withoutCommitMarker({ ...record, receivedLength: committedLength(record), state: 'complete' }));
          debug('recover: session %s: the data was at the destination; marked complete', id);
          report.commitsFinished += 1;
        } else if (record.state === 'receiving') {
          await repair(0);
        } else {
          // A complete session cannot go back to receiving; its next commit reports the loss.
          debug('recover: session %s: complete, but its data is neither here nor at the destination', id);
        }
        return;
      }
      if (data.size < committedLength(record)) {
        if (record.state === 'receiving') await repair(data.size);
        else debug('recover: session %s: complete, but its data is shorter than recorded; not committed', id);
        return;
      }
      try {
        await this.commit(id, { overwrite: record.commitOverwrite === true });
      } catch (error) {
        // The destination changed since the marker was set (a folder or another file appeared there,
        // a link was planted): the middleware's next commit decides, with its own options.
        debug('recover: session %s: leaving the interrupted commit for later: %s', id, errorText(error));
        return;
      }
      debug('recover: session %s: finished the interrupted commit', id);
      report.commitsFinished += 1;
      return;
    }

    if (data === undefined) {
      await repair(0);
    } else if (data.size < record.receivedLength) {
      await repair(data.size);
    } else if (record.totalLength !== undefined && data.size > record.totalLength) {
      // The middleware never sends bytes past the total, so these are not the client's.
      const { totalLength } = record;
      debug('recover: session %s: dropping %d bytes beyond the total', id, data.size - totalLength);
      const handle = await fs.open(dataPath, 'r+');
      try {
        await handle.truncate(totalLength);
        // Cutting is not progress: the file keeps its time.
        await setTime(handle, Math.round(data.mtimeMs));
        if (this.#options.fsync !== 'never') await handle.sync();
      } finally {
        await handle.close();
      }
    }
  }

  /**
   * Cuts the data file to `length` (bytes beyond the total, or beyond what a complete session
   * recorded, are not the upload's) and flushes it before it becomes the upload, through `kept` (the
   * file kept open for the fragments, left open) or a file opened here. `fdatasync` suffices: the
   * upload needs its bytes and length, not its times. Under `fsync: 'fragment'` a kept file was
   * flushed after its last fragment (`fdatasync` covers the whole file, whoever wrote it), so that
   * flush is not repeated.
   */
  async #settleData(dir: string, length: number, kept?: OpenDataFile): Promise<void> {
    const keptStats = await kept?.handle.stat();
    // A kept file that another process removed meanwhile is not the session's data any more.
    if (kept !== undefined && keptStats !== undefined && keptStats.nlink > 0) {
      await this.#cutAndFlush(kept.handle, keptStats.size, length, kept.flushed);
      return;
    }
    let handle: FileHandle;
    try {
      handle = await fs.open(path.join(dir, DATA_FILE), 'r+');
    } catch (error) {
      if (isErrno(error, 'ENOENT')) return;
      throw error;
    }
    try {
      await this.#cutAndFlush(handle, (await handle.stat()).size, length, false);
    } finally {
      await handle.close();
    }
  }

  async #cutAndFlush(handle: FileHandle, size: number, length: number, flushed: boolean): Promise<void> {
    const cut = size > length;
    if (cut) await handle.truncate(length);
    if (this.#options.fsync !== 'never' && (cut || !flushed)) await handle.datasync();
  }

  /** Removes the stored reply and any half-written one. */
  async #removeReplyFiles(dir: string): Promise<void> {
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch (error) {
      if (isErrno(error, 'ENOENT', 'ENOTDIR')) return;
      throw error;
    }
    for (const name of names) {
      if (name === REPLY_FILE || REPLY_TEMP.test(name)) await fs.rm(path.join(dir, name), { recursive: true, force: true });
    }
  }

  /** Creates the root and session folder once; a failure is retried by the next call. */
  #init(): Promise<{ realRoot: string; realSessions: string }> {
    this.#ready ??= (async () => {
      await fs.mkdir(this.#sessionsDir, { recursive: true });
      return { realRoot: await fs.realpath(this.#options.root), realSessions: await fs.realpath(this.#sessionsDir) };
    })().catch((error: unknown) => {
      this.#ready = undefined;
      throw error;
    });
    return this.#ready;
  }

  #sessionPath(id: string): string {
    return path.join(this.#sessionsDir, sessionFolderName(id));
  }

  /**
   * Maps a destination to a path inside the root, or throws InvalidDestinationError. The middleware
   * has validated the segments already; this is the adapter's own guarantee that nothing escapes.
   */
  async #destinationPath(destination: Destination): Promise<string> {
    const refuse = (reason: string): never => {
      throw new InvalidDestinationError(destination, reason);
    };
    if (!Array.isArray(destination) || destination.length === 0) refuse('it has no segments');
    for (const segment of destination) {
      if (typeof segment !== 'string' || segment === '' || segment === '.' || segment === '..') refuse('a segment is empty, . or ..');
      if (/[/\\\0]/.test(segment)) refuse('a segment contains a separator or NUL');
    }
    // Windows ignores trailing dots and spaces, so `.bits-sessions.` would name the session folder too.
    if (destination[0].replace(/[. ]+$/, '').toLowerCase() === this.#options.sessionDirectory.toLowerCase()) {
      refuse('it names the session folder');
    }
    const { root } = this.#options;
    const target = path.join(root, ...destination);
    if (!isInside(root, target)) refuse('it leaves the storage root');

    const { realRoot, realSessions } = await this.#init();
    // A file directly in the root has no folder on the way; the root itself was resolved by #init.
    if (destination.length === 1) return target;
    // Links: the deepest folder that exists must really be inside the root, and not in the sessions.
    const real = await realpathOfDeepestExisting(path.dirname(target), root);
    if (real === undefined) return refuse('a link on the way leads nowhere');
    if (!isInside(realRoot, real) && real !== realRoot) refuse('a link leads outside the storage root');
    if (real === realSessions || isInside(realSessions, real)) refuse('a link leads into the session folder');
    // A file on the way (`report.txt/child.bin`) would only fail at commit, after the whole upload.
    if (!(await fs.stat(real)).isDirectory()) refuse('a folder on the way is a file');
    return target;
  }

  /** A session's record as it stands (see {@link reconcile}), and its data file's stats; undefined when unknown. */
  async #loadRecord(id: string): Promise<{ record: StoredRecord; dir: string; data: Stats | undefined } | undefined> {
    const dir = this.#sessionPath(id);
    let loaded: { record: StoredRecord; data: Stats | undefined };
    try {
      loaded = await this.#loadAt(dir);
    } catch (error) {
      if (isErrno(error, 'ENOENT', 'ENOTDIR')) return undefined;
      throw error;
    }
    // Case-insensitive file systems map ids differing in case to one folder; ids are exact.
    if (loaded.record.id !== id) return undefined;
    return { ...loaded, dir };
  }

  async #requireRecord(id: string): Promise<{ record: StoredRecord; dir: string; data: Stats | undefined }> {
    const loaded = await this.#loadRecord(id);
    if (loaded === undefined) throw new SessionNotFoundError(id);
    return loaded;
  }

  /** The record in `dir` reconciled with its data file, both read at once. */
  async #loadAt(dir: string): Promise<{ record: StoredRecord; data: Stats | undefined }> {
    const [stored, data] = await Promise.all([this.#readRecordFile(dir), statOrUndefined(path.join(dir, DATA_FILE))]);
    return { record: reconcile(stored, data), data };
  }

  /** record.json of session `id` as stored (not reconciled), or undefined when there is none. */
  async #readRecordOf(id: string, dir: string): Promise<StoredRecord | undefined> {
    try {
      const record = await this.#readRecordFile(dir);
      return record.id === id ? record : undefined;
    } catch (error) {
      if (isErrno(error, 'ENOENT', 'ENOTDIR')) return undefined;
      throw error;
    }
  }

  /**
   * Parses record.json (its last complete line, see {@link RECORD_COMPACT_BYTES}), or takes the
   * record parsed before when the file is unchanged: same inode, size, modification and change time
   * (see {@link stampOf}). A stat costs a fraction of a read, and every update of the file, by any
   * process, changes its size or replaces it.
   */
  async #readRecordFile(dir: string): Promise<StoredRecord> {
    const file = path.join(dir, RECORD_FILE);
    const stats = await fs.stat(file, { bigint: true });
    const cached = this.#records.get(dir);
    if (cached?.stamp === stampOf(stats)) {
      this.#records.delete(dir);
      this.#records.set(dir, cached);
      return cached.record;
    }
    // Read after the stat: the content is at least as new as the stamp it is kept under.
    const record = parseRecord(await fs.readFile(file, 'utf8'), dir);
    this.#rememberRecord(dir, record, stats);
    return record;
  }

  #rememberRecord(dir: string, record: StoredRecord, stats: BigIntStats): void {
    this.#records.delete(dir);
    this.#records.set(dir, { record, stamp: stampOf(stats), stats });
    for (const oldest of this.#records.keys()) {
      if (this.#records.size <= MAX_CACHED_RECORDS) break;
      this.#records.delete(oldest);
    }
  }

  /**
   * Records a session's new state: appended to record.json as one more line and, unless `flush` is
   * `'deferred'` (see {@link RecordFlush}), flushed, so a crash leaves the old last line or the new
   * one (a torn line is never taken, see {@link lastJsonLine}). Replacing the file instead (write a
   * temporary file, flush, rename, flush the folder) creates and frees a file per update, which
   * made up most of a session's kernel time on the development VM. The first record is written in
   * place (see #createRecord), a file that grew past {@link RECORD_COMPACT_BYTES} is replaced. The
   * file stays open between updates, like the data file between fragments (see #appendRecord).
   */
  async #writeRecord(dir: string, record: StoredRecord, flush: RecordFlush = 'now'): Promise<void> {
    const before = this.#records.get(dir)?.stats;
    this.#records.delete(dir);
    // The leading newline ends a line that a failed append left without one.
    const line = `\n${serializeRecord(record)}`;
    const stats = await this.#appendRecord(dir, line, flush);
    if (stats.size > RECORD_COMPACT_BYTES) {
      await this.#replaceRecord(dir, record);
      return;
    }
    // Kept for the next read when this append is the file's only change since the version known before.
    const appended = BigInt(Buffer.byteLength(line));
    if (before !== undefined && before.dev === stats.dev && before.ino === stats.ino && before.size + appended === stats.size) {
      this.#rememberRecord(dir, record, stats);
    }
  }

  /**
   * Appends `line` to record.json in `dir` and flushes it as `flush` says, through the file kept
   * open since the session's last update when there is one, and returns the file's stats after
   * the append. A kept file that was replaced or removed meanwhile (compacted or repaired by
   * another process: no link left) took a line that nobody reads; the line is then appended to the
   * file by its name. Without O_CREAT: a session whose record is gone is not brought back by an
   * update.
   */
  async #appendRecord(dir: string, line: string, flush: RecordFlush): Promise<BigIntStats> {
    const kept = this.#recordFiles.get(dir);
    if (kept !== undefined && !kept.busy) {
      kept.busy = true;
      // Most recently used last.
      this.#recordFiles.delete(dir);
      this.#recordFiles.set(dir, kept);
      let stats: BigIntStats | undefined;
      try {
        stats = await this.#appendThrough(kept.handle, line, flush);
      } finally {
        kept.busy = false;
        kept.lastUsed = Date.now();
        if (stats === undefined || stats.nlink === 0n) await this.#dropFile(this.#recordFiles, dir, kept);
        else if (kept.closeWhenDone) await closeQuietly(kept.handle);
      }
      if (stats.nlink > 0n) return stats;
    }
    const handle = await fs.open(path.join(dir, RECORD_FILE), fsConstants.O_WRONLY | fsConstants.O_APPEND);
    let keeping = false;
    try {
      const stats = await this.#appendThrough(handle, line, flush);
      keeping = stats.nlink > 0n && this.#keepRecordFile(dir, handle);
      return stats;
    } finally {
      if (keeping) await this.#trimOpenFiles();
      else await handle.close();
    }
  }

  /**
   * Writes the first record of a new session in place, flushed, and keeps the file open for the
   * session's updates. Not by rename: nobody reads a session before its Create-Session Ack, and a
   * crash before that leaves a record without a complete line, which recover() removes with its
   * folder (a session never acknowledged). The caller flushes the folder.
   */
  async #createRecord(dir: string, record: StoredRecord): Promise<void> {
    const flags = fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_CREAT | fsConstants.O_EXCL;
    const handle = await fs.open(path.join(dir, RECORD_FILE), flags);
    let keeping = false;
    try {
      this.#rememberRecord(dir, record, await this.#appendThrough(handle, serializeRecord(record), 'now'));
      keeping = this.#keepRecordFile(dir, handle);
    } finally {
      if (keeping) await this.#trimOpenFiles();
      else await handle.close();
    }
  }

  /** Keeps `handle` open as the record of the session in `dir`, when allowed and none is kept yet. */
  #keepRecordFile(dir: string, handle: FileHandle): boolean {
    if (this.#options.maxOpenFiles === 0 || this.#recordFiles.has(dir)) return false;
    this.#recordFiles.set(dir, { handle, busy: false, closeWhenDone: false, lastUsed: Date.now() });
    return true;
  }

  async #appendThrough(handle: FileHandle, line: string, flush: RecordFlush): Promise<BigIntStats> {
    await handle.writeFile(line);
    if (this.#options.fsync !== 'never' && flush === 'now') await handle.datasync();
    return await handle.stat({ bigint: true });
  }

  /** Closes the record kept open for the session in `dir`, if any (once its update is done, if one runs). */
  async #closeRecordFile(dir: string): Promise<void> {
    const file = this.#recordFiles.get(dir);
    if (file === undefined) return;
    await this.#dropFile(this.#recordFiles, dir, file);
    await this.#trimOpenFiles();
  }

  /** write temp + fsync + rename + fsync folder: a crash leaves the old file or the new one. */
  async #replaceRecord(dir: string, record: StoredRecord): Promise<void> {
    // The file kept open for appending is about to be replaced.
    await this.#closeRecordFile(dir);
    const temp = path.join(dir, RECORD_TEMP);
    const file = path.join(dir, RECORD_FILE);
    const handle = await fs.open(temp, 'w');
    let written: bigint;
    try {
      await handle.writeFile(serializeRecord(record));
      if (this.#options.fsync !== 'never') await handle.sync();
      written = (await handle.stat({ bigint: true })).ino;
    } finally {
      await handle.close();
    }
    this.#records.delete(dir);
    await fs.rename(temp, file);
    await this.#syncDirectory(dir);
    // Kept for the next read, under the stamp the file has now, if the file is still this one.
    const stats = await fs.stat(file, { bigint: true }).catch(() => undefined);
    if (stats !== undefined && stats.ino === written) this.#rememberRecord(dir, record, stats);
  }

  /** The open data file of the session in `dir`, marked busy; undefined when none is open. */
  #takeDataFile(dir: string): OpenDataFile | undefined {
    const file = this.#dataFiles.get(dir);
    if (file === undefined || file.busy) return undefined;
    file.busy = true;
    // Most recently used last.
    this.#dataFiles.delete(dir);
    this.#dataFiles.set(dir, file);
    return file;
  }

  /** Opens (creating if missing) the data file of the session in `dir` for writing, marked busy. */
  async #openDataFile(dir: string): Promise<OpenDataFile> {
    const handle = await fs.open(path.join(dir, DATA_FILE), DATA_WRITE_FLAGS);
    const file: OpenDataFile = { handle, busy: true, closeWhenDone: false, lastUsed: 0, timeSet: 0, flushed: false };
    // The middleware never runs two calls of one session at once; should a file be open anyway,
    // this one replaces it in the cache and the other is closed once its user is done.
    const other = this.#dataFiles.get(dir);
    if (other !== undefined) await this.#dropFile(this.#dataFiles, dir, other);
    if (this.#options.maxOpenFiles > 0) this.#dataFiles.set(dir, file);
    else file.closeWhenDone = true;
    return file;
  }

  /** Ends a fragment's use of a data file: kept open for the next one, or closed. */
  async #releaseDataFile(dir: string, file: OpenDataFile, keep: boolean): Promise<void> {
    file.busy = false;
    file.lastUsed = Date.now();
    if (!keep && this.#dataFiles.get(dir) === file) this.#dataFiles.delete(dir);
    await Promise.all([!keep || file.closeWhenDone ? closeQuietly(file.handle) : undefined, this.#trimOpenFiles()]);
  }

  /** Keeps a file just created, whose time was set to `timeSet`, open for the session's first fragment. */
  async #keepDataFile(dir: string, handle: FileHandle, timeSet: number): Promise<void> {
    const file: OpenDataFile = { handle, busy: true, closeWhenDone: false, lastUsed: 0, timeSet, flushed: false };
    if (this.#options.maxOpenFiles > 0) this.#dataFiles.set(dir, file);
    await this.#releaseDataFile(dir, file, this.#options.maxOpenFiles > 0);
  }

  /**
   * Runs `use` with the data file of the session in `dir` taken out of the cache, so that nothing
   * writes through it any more, and closes it afterwards. `use` gets its handle (to flush through
   * it instead of opening the file again), or undefined when none is open or a fragment still uses
   * it (that one is closed when the fragment is done).
   */
  async #withDataFileTakenOut<T>(dir: string, use: (kept: OpenDataFile | undefined) => Promise<T>): Promise<T> {
    const file = this.#dataFiles.get(dir);
    this.#dataFiles.delete(dir);
    if (file?.busy === true) file.closeWhenDone = true;
    const kept = file?.busy === false ? file : undefined;
    try {
      return await use(kept);
    } finally {
      if (kept !== undefined) await closeQuietly(kept.handle);
      if (file !== undefined) await this.#trimOpenFiles();
    }
  }

  /** Closes the data file of the session in `dir` if it is open (once its fragment is done, if one is running). */
  async #closeDataFile(dir: string): Promise<void> {
    const file = this.#dataFiles.get(dir);
    if (file === undefined) return;
    this.#dataFiles.delete(dir);
    if (file.busy) {
      file.closeWhenDone = true;
      return;
    }
    await closeQuietly(file.handle);
    await this.#trimOpenFiles();
  }

  /** Takes a file out of its cache and closes it, at once or, if in use, when its write is done. */
  #dropFile<F extends OpenFile>(files: Map<string, F>, dir: string, file: F): Promise<void> | undefined {
    if (files.get(dir) === file) files.delete(dir);
    if (!file.busy) return closeQuietly(file.handle);
    file.closeWhenDone = true;
    return undefined;
  }

  /**
   * Keeps at most `maxOpenFiles` data files and as many records open, closing the least recently
   * used idle ones (files in use stay open, so under more concurrent sessions a cache may exceed it
   * until they are done), and runs the idle timer while any file is open.
   */
  async #trimOpenFiles(): Promise<void> {
    const { maxOpenFiles, openFileIdleTimeout } = this.#options;
    const closing: (Promise<void> | undefined)[] = [];
    for (const files of [this.#dataFiles, this.#recordFiles]) {
      for (const [dir, file] of files) {
        if (files.size <= maxOpenFiles) break;
        if (!file.busy) closing.push(this.#dropFile(files, dir, file));
      }
    }
    if (this.#dataFiles.size === 0 && this.#recordFiles.size === 0) {
      clearInterval(this.#idleTimer);
      this.#idleTimer = undefined;
    } else if (this.#idleTimer === undefined) {
      // Every half timeout, and at least once a minute (a timer cannot wait longer than 2^31 ms).
      this.#idleTimer = setInterval(() => this.#closeIdleFiles(), Math.min(Math.max(10, openFileIdleTimeout / 2), 60_000));
      // Open files never keep the process alive.
      this.#idleTimer.unref();
    }
    await Promise.all(closing);
  }

  #closeIdleFiles(): void {
    const idleSince = Date.now() - this.#options.openFileIdleTimeout;
    for (const files of [this.#dataFiles, this.#recordFiles]) {
      for (const [dir, file] of files) {
        if (!file.busy && file.lastUsed <= idleSince) void this.#dropFile(files, dir, file);
      }
    }
    void this.#trimOpenFiles();
  }

  /** Makes a rename or new entry in `dir` durable (best effort, see {@link DirectorySync}). */
  async #syncDirectory(dir: string): Promise<void> {
    if (this.#options.fsync !== 'never') await this.#directorySync.sync(dir);
  }

  /**
   * link() fails with EEXIST atomically, which a stat-then-rename cannot do; the link is then the
   * destination and the session's name for it is removed.
   */
  async #linkWithoutOverwrite(dataPath: string, target: string, destination: Destination): Promise<void> {
    try {
      await fs.link(dataPath, target);
    } catch (error) {
      if (isErrno(error, 'EEXIST')) {
        // A commit that crashed after linking left the same file under both names.
        if (!(await sameFile(dataPath, target))) {
          throw (await kindOf(target)) === 'directory'
            ? new DestinationIsDirectoryError(destination)
            : new DestinationExistsError(destination);
        }
      } else if (isErrno(error, 'EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS') && (await kindOf(target)) === 'missing') {
        // File systems without hard links (FAT, some network shares): check, then rename. A file
        // appearing between the two steps would be replaced; nothing better exists there.
        debug('hard links unavailable (%s); renaming instead', errorText(error));
        await fs.rename(dataPath, target).catch((renameError: unknown) => {
          throw mapMoveError(renameError, destination);
        });
        return;
      } else {
        throw mapMoveError(error, destination);
      }
    }
    await fs.unlink(dataPath);
  }
}

function resolveOptions(options: FileSystemStorageOptions): ResolvedOptions {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError(
      `FileSystemStorage expects an options object, got ${show(options)}; write new FileSystemStorage({ directory: '...' })`,
    );
  }
  const {
    directory,
    sessionDirectory = '.bits-sessions',
    fsync = 'fragment',
    maxOpenFiles = DEFAULT_MAX_OPEN_FILES,
    openFileIdleTimeout = DEFAULT_OPEN_FILE_IDLE_TIMEOUT,
  } = options;
  if (typeof directory !== 'string' || directory === '') {
    throw new TypeError(`FileSystemStorage option "directory" must be a non-empty path, got ${show(directory)}`);
  }
  if (
    typeof sessionDirectory !== 'string' ||
    sessionDirectory === '' ||
    sessionDirectory === '.' ||
    sessionDirectory === '..' ||
    /[/\\\0]/.test(sessionDirectory)
  ) {
    throw new TypeError(
      `FileSystemStorage option "sessionDirectory" must be a single folder name such as '.bits-sessions', got ${show(sessionDirectory)}`,
    );
  }
  if (!FSYNC_POLICIES.includes(fsync)) {
    throw new TypeError(
      `FileSystemStorage option "fsync" must be one of ${FSYNC_POLICIES.map((p) => `'${p}'`).join(', ')}, got ${show(fsync)}`,
    );
  }
  if (typeof maxOpenFiles !== 'number' || !Number.isSafeInteger(maxOpenFiles) || maxOpenFiles < 0) {
    throw new TypeError(`FileSystemStorage option "maxOpenFiles" must be a whole number of files, 0 or more, got ${show(maxOpenFiles)}`);
  }
  if (typeof openFileIdleTimeout !== 'number' || !Number.isFinite(openFileIdleTimeout) || openFileIdleTimeout <= 0) {
    throw new TypeError(
      `FileSystemStorage option "openFileIdleTimeout" must be a number of milliseconds above 0, got ${show(openFileIdleTimeout)}`,
    );
  }
  return Object.freeze({ root: path.resolve(directory), sessionDirectory, fsync, maxOpenFiles, openFileIdleTimeout });
}

/**
 * A folder name for a session id that is the same on every file system: characters outside
 * `[A-Za-z0-9_{}-]` are percent-encoded (so no dots, separators or trailing spaces), Windows device
 * names get their first letter encoded, and ids too long for a file name are hashed. IIS-style ids
 * (`{XXXXXXXX-...}`, bits-protocol.md §5.1) map to themselves.
 */
export function sessionFolderName(id: string): string {
  // Nothing to encode (every IIS-style id): skip the walk over the bytes.
  if (PLAIN_FOLDER_NAME.test(id) && !WINDOWS_RESERVED.test(id)) return id;
  let name = '';
  for (const byte of Buffer.from(id, 'utf8')) {
    const char = String.fromCharCode(byte);
    name += /[A-Za-z0-9_{}-]/.test(char) ? char : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  if (WINDOWS_RESERVED.test(name)) name = `%${name.charCodeAt(0).toString(16).toUpperCase()}${name.slice(1)}`;
  // `~` is always encoded above, so hashed names cannot collide with encoded ones.
  if (name === '' || name.length > 200) name = `~${createHash('sha256').update(id).digest('hex')}`;
  return name;
}

/**
 * A record as it stands. For a session `receiving`, the data file decides (see the class comment):
 * its length (capped at the total) is the received length, and its modification time, when later,
 * the last progress. A missing data file holds nothing, except during an interrupted commit, which
 * moved it to the destination.
 */
function reconcile(record: StoredRecord, data: Stats | undefined): StoredRecord {
  if (record.state !== 'receiving') return record;
  if (data === undefined && record.committing) {
    const receivedLength = committedLength(record);
    return receivedLength === record.receivedLength ? record : { ...record, receivedLength };
  }
  const receivedLength = receivedOf(record, data?.size ?? 0);
  // mtimeMs is a float of the nanosecond time, which setTime makes a whole millisecond.
  const updatedAt = data === undefined ? record.updatedAt : Math.max(record.updatedAt, Math.round(data.mtimeMs));
  if (receivedLength === record.receivedLength && updatedAt === record.updatedAt) return record;
  if (receivedLength < record.receivedLength && !record.committing) {
    debug('session %s: record says %d bytes, data file has %d', record.id, record.receivedLength, receivedLength);
  }
  // A hash recorded for the complete upload no longer describes fewer bytes.
  const sha256 = receivedLength < record.receivedLength ? undefined : record.sha256;
  return { ...record, receivedLength, updatedAt, sha256 };
}

/** The length of the upload a record with the commit marker commits: a commit starts only once all of it is held. */
function committedLength(record: StoredRecord): number {
  return record.totalLength ?? record.receivedLength;
}

/** The received length of a session in progress whose data file has `size` bytes. */
function receivedOf(record: StoredRecord, size: number): number {
  // Bytes beyond the total are not the upload's: the middleware never sends them.
  return record.totalLength === undefined ? size : Math.min(size, record.totalLength);
}

/**
 * What identifies one version of record.json: it only grows by appends or is replaced by a rename
 * (a new inode), and inode numbers reused later come with other times.
 */
function stampOf(stats: BigIntStats): string {
  return `${stats.dev}:${stats.ino}:${stats.size}:${stats.mtimeNs}:${stats.ctimeNs}`;
}

/** Sets a file's access and modification time to `time` (ms since the epoch). */
function setTime(file: string | FileHandle, time: number): Promise<void> {
  const date = new Date(time);
  return typeof file === 'string' ? fs.utimes(file, date, date) : file.utimes(date, date);
}

/** Closes a file; a failure to close is only logged (nothing was written through it since its last flush). */
function closeQuietly(handle: FileHandle): Promise<void> {
  return handle.close().catch((error: unknown) => debug('cannot close a data file: %s', errorText(error)));
}

/** How writing a fragment body went. */
interface WriteOutcome {
  /** Bytes written, from the position on, without a gap. */
  readonly written: number;
  /** Why storing failed (the rest of the body was not read). */
  readonly storageError: unknown;
  /** Why the body failed (a client abort); everything it delivered before was written. */
  readonly bodyError: unknown;
}

/**
 * Writes `body` to `handle` at `position`, gathering chunks as {@link MIN_WRITE} explains. Bytes
 * delivered before the body failed are written too: they are the client's, in order (§6.3). A
 * write that stores part of its bytes counts them, so a failure halfway still knows what landed.
 * The body is read with 'data' events and paused while {@link MAX_WRITE} bytes wait for a write in
 * flight: an async iterator would allocate a promise and a result per chunk, garbage that costs
 * the event loop more than the rest of a chunk's handling.
 */
function writeBody(handle: FileHandle, position: number, body: Readable): Promise<WriteOutcome> {
  return new Promise((resolve) => {
    let written = 0;
    let storageError: unknown;
    let bodyError: unknown;
    /** A chunk that is not bytes: a caller's bug, reported like a failure to store, not taken for an abort. */
    let invalidChunk: unknown;
    let queue: Buffer[] = [];
    let queued = 0;
    let inFlight = false;
    let stallTimer: NodeJS.Timeout | undefined;
    /** Reading is over (the body ended or failed, or storing failed): whatever is queued goes out now. */
    let ended = false;

    const writeQueue = (): void => {
      clearTimeout(stallTimer);
      stallTimer = undefined;
      if (inFlight || queue.length === 0 || storageError !== undefined) return;
      const batch = queue;
      queue = [];
      queued = 0;
      inFlight = true;
      writeAll(handle, batch, position + written, (bytes) => {
        written += bytes;
      })
        .catch((error: unknown) => {
          storageError = error;
        })
        .then(() => {
          inFlight = false;
          // Storing failed: stop reading; destroying the body is what the contract allows then.
          if (storageError !== undefined) stopReading(true);
          writeWhenWorth();
          if (!ended && body.isPaused()) body.resume();
          settleWhenDone();
        });
    };
    /** Writes the queue once it is worth a write (or reading is over), else when the body stalls. */
    const writeWhenWorth = (): void => {
      if (inFlight || queue.length === 0) return;
      if (ended || queued >= MIN_WRITE) writeQueue();
      else stallTimer ??= setTimeout(writeQueue, STALL_FLUSH_MS);
    };
    const settleWhenDone = (): void => {
      if (!ended || inFlight) return;
      clearTimeout(stallTimer);
      resolve({ written, storageError: storageError ?? invalidChunk, bodyError });
    };
    const onData = (chunk: unknown): void => {
      let bytes: Buffer;
      try {
        bytes = toBuffer(chunk);
      } catch (error) {
        invalidChunk = error;
        stopReading(true);
        writeWhenWorth();
        settleWhenDone();
        return;
      }
      if (bytes.length === 0) return;
      queue.push(bytes);
      queued += bytes.length;
      writeWhenWorth();
      if (queued >= MAX_WRITE && inFlight) body.pause();
    };
    const stopWatching = finished(body, { writable: false }, (error) => {
      // The rest goes now, also after a failed body.
      if (error !== undefined && error !== null && !ended) bodyError = error;
      stopReading(false);
      writeWhenWorth();
      settleWhenDone();
    });
    function stopReading(destroy: boolean): void {
      if (ended) return;
      ended = true;
      body.off('data', onData);
      stopWatching();
      if (destroy) body.destroy();
    }
    body.on('data', onData);
  });
}

/** Writes all of `buffers` at `position`, calling `progress` with the bytes of every write call. */
async function writeAll(handle: FileHandle, buffers: Buffer[], position: number, progress: (bytes: number) => void): Promise<void> {
  let rest = buffers;
  let at = position;
  while (rest.length > 0) {
    const { bytesWritten } = await handle.writev(rest, at);
    if (bytesWritten <= 0) throw new Error('A write of the data file stored no byte');
    progress(bytesWritten);
    at += bytesWritten;
    rest = dropBytes(rest, bytesWritten);
  }
}

/** `buffers` without their first `count` bytes, without copying. */
function dropBytes(buffers: Buffer[], count: number): Buffer[] {
  let skip = count;
  let index = 0;
  while (index < buffers.length && skip >= (buffers[index]?.length ?? 0)) {
    skip -= buffers[index]?.length ?? 0;
    index += 1;
  }
  const rest = buffers.slice(index);
  const first = rest[0];
  if (first !== undefined && skip > 0) rest[0] = first.subarray(skip);
  return rest;
}

function toBuffer(chunk: unknown, what = 'A fragment body'): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (typeof chunk === 'string') return Buffer.from(chunk, 'utf8');
  if (ArrayBuffer.isView(chunk)) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  throw new TypeError(`${what} must yield bytes, got ${show(chunk)}`);
}

/** Why a live session has no data file to read. */
function noDataError(record: StoredRecord): Error {
  if (record.state === 'complete' && !record.committing) {
    return new Error(`Session ${record.id} is complete and its data was committed to its destination`);
  }
  // Only an interrupted commit leaves a receiving record with bytes but no data file.
  return new Error(`Session ${record.id} has no data file; an interrupted commit moved it`);
}

/** Bytes `start` to `end` (inclusive) of a reply of `size` bytes; `end` = `start` - 1 is empty. */
function checkReplyRange(id: string, start: number, end: number, size: number): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start - 1 || end >= size) {
    throw new RangeError(`Cannot read bytes ${String(start)}-${String(end)} of the reply of session ${id}: it holds ${size} bytes`);
  }
}

/** A validated copy of a reply (from record.json or updateSession), or undefined when it is malformed. */
function parseReply(value: unknown): StoredReply | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const { kind, size, storedAt, url, copyToDestination } = value as Record<string, unknown>;
  if (typeof copyToDestination !== 'boolean') return undefined;
  if (kind === 'stored') {
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) return undefined;
    if (typeof storedAt !== 'number' || !Number.isFinite(storedAt)) return undefined;
    return Object.freeze({ kind, size, storedAt, copyToDestination });
  }
  if (kind === 'url') {
    if (typeof url !== 'string' || url === '') return undefined;
    return Object.freeze({ kind, url, copyToDestination });
  }
  return undefined;
}

async function kindOf(target: string): Promise<DestinationKind> {
  const stats = await lstatOrUndefined(target);
  if (stats === undefined) return 'missing';
  return stats.isDirectory() ? 'directory' : 'file';
}

async function sameFile(a: string, b: string): Promise<boolean> {
  const [sa, sb] = await Promise.all([lstatOrUndefined(a), lstatOrUndefined(b)]);
  return sa !== undefined && sb !== undefined && sa.ino === sb.ino && sa.dev === sb.dev && sa.ino !== 0;
}

async function statOrUndefined(file: string): Promise<Stats | undefined> {
  try {
    return await fs.stat(file);
  } catch (error) {
    if (isErrno(error, 'ENOENT', 'ENOTDIR')) return undefined;
    throw error;
  }
}

/** Removes a file; false when there was none. */
async function removeIfPresent(file: string): Promise<boolean> {
  try {
    await fs.unlink(file);
    return true;
  } catch (error) {
    if (isErrno(error, 'ENOENT', 'ENOTDIR')) return false;
    throw error;
  }
}

async function lstatOrUndefined(file: string): Promise<Stats | undefined> {
  try {
    return await fs.lstat(file);
  } catch (error) {
    if (isErrno(error, 'ENOENT', 'ENOTDIR')) return undefined;
    throw error;
  }
}

/** Real path of `dir` or of its deepest existing ancestor; undefined when a link there leads nowhere. */
async function realpathOfDeepestExisting(dir: string, stop: string): Promise<string | undefined> {
  let current = dir;
  // Another session's commit may create a folder between realpath and lstat: retry that a few times.
  let retries = 3;
  for (;;) {
    try {
      return await fs.realpath(current);
    } catch (error) {
      if (isErrno(error, 'ELOOP')) return undefined;
      if (!isErrno(error, 'ENOENT', 'ENOTDIR') || current === stop) throw error;
      const entry = await lstatOrUndefined(current);
      if (entry !== undefined) {
        // A dangling link would let mkdir or rename create its target wherever it points.
        if (entry.isSymbolicLink() || retries-- === 0) return undefined;
        continue;
      }
      const parent = path.dirname(current);
      if (parent === current) throw error;
      current = parent;
    }
  }
}

function isInside(parent: string, child: string): boolean {
  const relative = path.relative(parent, child);
  return relative !== '' && relative.split(path.sep)[0] !== '..' && !path.isAbsolute(relative);
}

function mapMoveError(error: unknown, destination: Destination): unknown {
  if (isErrno(error, 'EISDIR', 'ENOTEMPTY')) return new DestinationIsDirectoryError(destination);
  return error;
}

function withoutCommitMarker(record: StoredRecord): StoredRecord {
  const { committing: _committing, commitOverwrite: _commitOverwrite, ...rest } = record;
  return rest;
}

function publicRecord(record: StoredRecord): SessionRecord {
  return Object.freeze({
    id: record.id,
    destination: Object.freeze([...record.destination]),
    urlPath: record.urlPath,
    principal: record.principal,
    protocol: record.protocol,
    totalLength: record.totalLength,
    receivedLength: record.receivedLength,
    state: record.state,
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
    sha256: record.sha256,
    delivered: record.delivered,
    reply: record.reply,
  });
}

function serializeRecord(record: StoredRecord): string {
  return `${JSON.stringify({
    version: RECORD_VERSION,
    id: record.id,
    destination: record.destination,
    urlPath: record.urlPath,
    principal: record.principal ?? null,
    protocol: record.protocol,
    totalLength: record.totalLength ?? null,
    receivedLength: record.receivedLength,
    state: record.state,
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
    sha256: record.sha256 ?? null,
    delivered: record.delivered,
    reply: record.reply ?? null,
    ...(record.committing === true && { committing: true, commitOverwrite: record.commitOverwrite === true }),
  })}\n`;
}

/**
 * The value of the last line of a record.json that is complete JSON, or undefined when no line is.
 * Lines an append left torn by a crash or a full disk (cut short, or zeros where the file system
 * had not written yet) are skipped.
 */
function lastJsonLine(text: string): unknown {
  let end = text.length;
  while (end > 0) {
    const start = text.lastIndexOf('\n', end - 1) + 1;
    const line = text.slice(start, end);
    if (line.trim() !== '') {
      try {
        return JSON.parse(line) as unknown;
      } catch {
        // Torn: the line before it holds the record.
      }
    }
    end = start - 1;
  }
  return undefined;
}

/** The record a record.json holds: its last complete line (see {@link lastJsonLine}), validated. */
function parseRecord(text: string, dir: string): StoredRecord {
  const fail = (field: string): never => {
    throw new CorruptRecordError(`Corrupt session record in ${dir}: bad ${field}`);
  };
  const value = lastJsonLine(text);
  if (value === undefined) return fail('JSON');
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return fail('document');
  const v = value as Record<string, unknown>;
  const version = v['version'];
  if (typeof version === 'number' && Number.isSafeInteger(version) && version > RECORD_VERSION) {
    throw new FutureRecordError(`Session record in ${dir} has version ${version}; this release reads up to ${RECORD_VERSION}`);
  }
  if (version !== RECORD_VERSION) fail('version');
  const isLength = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
  const { id, destination, urlPath, principal, protocol, totalLength, receivedLength, state, createdAt, updatedAt } = v;
  // Absent in records written before these fields existed (still version 1).
  const { sha256 = null, delivered = false, reply = null, committing = false, commitOverwrite = false } = v;
  if (typeof id !== 'string') fail('id');
  if (!Array.isArray(destination) || !destination.every((s): s is string => typeof s === 'string')) fail('destination');
  if (typeof urlPath !== 'string') fail('urlPath');
  if (principal !== null && typeof principal !== 'string') fail('principal');
  if (typeof protocol !== 'string') fail('protocol');
  if (totalLength !== null && !isLength(totalLength)) fail('totalLength');
  if (!isLength(receivedLength)) fail('receivedLength');
  if (!STATES.includes(state as SessionState)) fail('state');
  if (typeof createdAt !== 'number' || typeof updatedAt !== 'number') fail('timestamps');
  if (sha256 !== null && typeof sha256 !== 'string') fail('sha256');
  if (typeof delivered !== 'boolean') fail('delivered');
  const parsedReply = reply === null ? undefined : parseReply(reply);
  if (reply !== null && parsedReply === undefined) fail('reply');
  return {
    id: id as string,
    destination: destination as string[],
    urlPath: urlPath as string,
    principal: (principal as string | null) ?? undefined,
    protocol: protocol as string,
    totalLength: (totalLength as number | null) ?? undefined,
    receivedLength: receivedLength as number,
    state: state as SessionState,
    createdAt: createdAt as number,
    updatedAt: updatedAt as number,
    sha256: (sha256 as string | null) ?? undefined,
    delivered: delivered as boolean,
    reply: parsedReply,
    ...(committing === true && { committing: true, commitOverwrite: commitOverwrite === true }),
  };
}

// Duck-typed: errors from another realm (vm contexts, Jest) fail `instanceof Error`.
function isErrno(error: unknown, ...codes: string[]): error is NodeJS.ErrnoException {
  const code = typeof error === 'object' && error !== null ? (error as NodeJS.ErrnoException).code : undefined;
  return typeof code === 'string' && codes.includes(code);
}

function errorText(error: unknown): string {
  if (typeof error !== 'object' || error === null) return String(error);
  const { code, message } = error as NodeJS.ErrnoException;
  return typeof code === 'string' ? code : String(message);
}

function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (value === null || value === undefined) return String(value);
  if (typeof value === 'function') return `a function${value.name ? ` (${value.name})` : ''}`;
  return typeof value === 'object' ? JSON.stringify(value) ?? typeof value : String(value);
}
