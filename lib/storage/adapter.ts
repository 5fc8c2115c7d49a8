import type { Readable } from 'node:stream';

/**
 * Where an upload session stands (bits-protocol.md §5.2). `closed` and `cancelled` records are
 * tombstones: their data is gone, the record remains so that a repeated Close or Cancel is answered
 * 200 (§5.4) until the record expires.
 */
export type SessionState = 'receiving' | 'complete' | 'closed' | 'cancelled';

/**
 * A destination inside the storage root, as a list of validated path segments (never empty, never
 * `.`/`..`, no separators, no NUL, no Windows reserved names). Built only by the middleware from
 * the request URL; an adapter maps it onto its own medium and must never let it escape its root.
 */
export type Destination = readonly string[];

/** Everything the server keeps about one session; adapters persist it so another process can resume. */
export interface SessionRecord {
  /** Braced upper-case GUID (§5.1). */
  readonly id: string;
  /** Target of the upload. */
  readonly destination: Destination;
  /** The destination URL path the session was created on (§5.6 binding). */
  readonly urlPath: string;
  /** Who created the session, if known (§5.6 binding). */
  readonly principal: string | undefined;
  /** Negotiated protocol GUID (§7). */
  readonly protocol: string;
  /** Total length announced by the first fragment; undefined until then (§3.2 step 4). */
  readonly totalLength: number | undefined;
  /** Durable received offset R: bytes 0..R-1 are stored (§6). */
  readonly receivedLength: number;
  readonly state: SessionState;
  /** Creation time, ms since the epoch. */
  readonly createdAt: number;
  /** Last progress (creation, a stored byte, completion), ms since the epoch; drives expiry (§5.4). */
  readonly updatedAt: number;
  /** SHA-256 (hex) of the complete upload, recorded just before the commit; undefined until then. */
  readonly sha256: string | undefined;
  /**
   * True once the application was told of the completed upload (the `onUploadComplete` hook
   * succeeded and the `upload-completed` event fired), so that it is told exactly once, also across
   * retransmitted final fragments and restarts.
   */
  readonly delivered: boolean;
  /**
   * The reply of an upload-reply session (bits-protocol.md §10), once the application produced it;
   * cached so that a repeated final fragment, also after a restart, gets the same `BITS-Reply-URL`.
   */
  readonly reply: StoredReply | undefined;
}

/**
 * A reply kept in storage (`stored`: bytes written with {@link StorageAdapter.writeReply}, served
 * under the middleware's mount point) or a static URL the application named (`url`: never stored,
 * never deleted; §10.4).
 */
export type StoredReply = (
  | { readonly kind: 'stored'; readonly size: number; readonly storedAt: number }
  | { readonly kind: 'url'; readonly url: string }
) & {
  /** The application asked for the upload at its destination too (§10.4); a resend after a crash commits it. */
  readonly copyToDestination: boolean;
};

/** What the middleware passes to {@link StorageAdapter.createSession}. */
export interface NewSession {
  readonly id: string;
  readonly destination: Destination;
  readonly urlPath: string;
  readonly principal: string | undefined;
  readonly protocol: string;
  readonly createdAt: number;
}

/** Fields the middleware may change with {@link StorageAdapter.updateSession}. */
export interface SessionChanges {
  readonly totalLength?: number;
  readonly state?: SessionState;
  readonly updatedAt?: number;
  readonly sha256?: string;
  readonly delivered?: boolean;
  readonly reply?: StoredReply;
}

/** What {@link StorageAdapter.recover} found and repaired at start-up. */
export interface RecoveryReport {
  /** Temporary data without a session record, removed. */
  readonly orphansRemoved: number;
  /** Records whose data was missing or shorter than recorded, corrected to the bytes really stored. */
  readonly recordsRepaired: number;
  /** Commits a crash interrupted, finished. */
  readonly commitsFinished: number;
}

/** What exists at a destination, for the overwrite and directory checks (§3.2 step 2-3, A7). */
export type DestinationKind = 'missing' | 'file' | 'directory';

/** Options of {@link StorageAdapter.commit}. */
export interface CommitOptions {
  /** Replace an existing file at the destination (§15 A7). */
  readonly overwrite: boolean;
}

/**
 * The storage contract of bits-upload. The middleware owns the protocol: it parses and validates
 * every packet, does the range arithmetic of §6.3, serialises work on one session (an adapter never
 * sees two calls for the same session at once), enforces limits, and hands the adapter only bytes
 * that continue the session's data exactly at its durable offset. The adapter owns bytes and
 * records.
 *
 * Every method is required, except `recover`, `localDataFile` and `close`, and returns a promise. Methods that name a session id
 * reject with a {@link SessionNotFoundError} when no record exists.
 */
export interface StorageAdapter {
  /**
   * Creates the record and empty temporary data of a new session (state `receiving`,
   * receivedLength 0, totalLength undefined). Must be durable before it resolves.
   */
  createSession(session: NewSession): Promise<SessionRecord>;

  /** Reads a record back, tombstones included; undefined when there is none. */
  getSession(id: string): Promise<SessionRecord | undefined>;

  /**
   * Applies `changes` to a record and returns the updated record. The change survives a crash of
   * the process, and is durable (survives a power cut) when the call resolves, except that a change
   * of only `totalLength`, `sha256` and `updatedAt` may become durable later: after a restart the
   * middleware gets them again (the next fragment's Content-Range, the stored bytes), provided the
   * adapter makes a recorded `sha256` durable before the data it describes is committed.
   */
  updateSession(id: string, changes: SessionChanges): Promise<SessionRecord>;

  /**
   * Appends `body` to the session's data at `offset`, which the middleware guarantees equals the
   * record's receivedLength. Streams; never holds the whole body in memory. Resolves with the new
   * durable receivedLength, which it also records (with updatedAt), once those bytes are durably
   * stored. If `body` errors or ends early (a client abort), the adapter keeps the durable prefix
   * and resolves with its length rather than rejecting: the next Ack reports it. It may report fewer
   * bytes than it read if its medium can only make whole parts durable (object stores). It rejects
   * only when storing fails (a full disk: `ENOSPC`/`EDQUOT` errors keep their `code`), and then
   * the record still reports only durable bytes. When it rejects it may have destroyed `body`, so a
   * middleware that still wants to drain the request passes a stream of its own rather than the request.
   */
  writeFragment(id: string, offset: number, body: Readable): Promise<number>;

  /** Reports what exists at a destination. */
  inspectDestination(destination: Destination): Promise<DestinationKind>;

  /**
   * Moves the complete data of a session to its destination atomically (readers see the old file
   * or the whole new one, never a part), creating missing parent folders, and marks the record
   * `complete`. Rejects with {@link DestinationExistsError} when a file is there and
   * `overwrite` is false, with {@link DestinationIsDirectoryError} when a directory is there.
   * Calling it again for a session already `complete` resolves without doing anything.
   */
  commit(id: string, options: CommitOptions): Promise<void>;

  /**
   * Ends a session as `closed` or `cancelled`: deletes its temporary data (never the committed
   * destination) and keeps the record as a tombstone with that state and updatedAt = now.
   */
  endSession(id: string, state: 'closed' | 'cancelled', now: number): Promise<void>;

  /** Deletes a session's record and any temporary data. Resolves if it is already gone. */
  deleteSession(id: string): Promise<void>;

  /** Every record the adapter holds, tombstones included (for expiry and quotas). */
  listSessions(): AsyncIterable<SessionRecord>;

  /**
   * Streams the session's stored bytes from `start` up to its receivedLength while the data is still
   * the session's: state `receiving`, or `complete` without a commit (upload-reply endpoints keep
   * the upload in the session unless the application asks for it, §10.1). The middleware reads the
   * part of an upload an earlier process stored, to finish its SHA-256 after a restart, and the
   * application reads the upload it answers.
   */
  readData(id: string, start: number): Promise<Readable>;

  /**
   * Stores the reply of an upload-reply session (replacing any earlier one), durably, and resolves
   * with its size. The middleware then records it with `updateSession({ reply })`. The reply is
   * temporary data: `endSession` and `deleteSession` remove it.
   */
  writeReply(id: string, body: Readable): Promise<number>;

  /** Streams bytes `start` to `end` (inclusive) of the stored reply. */
  readReply(id: string, start: number, end: number): Promise<Readable>;

  /**
   * Optional. The server-local path of the session's uploaded bytes while they are the session's,
   * so that the notification by reference (§10.3) can name it instead of copying the upload.
   * Adapters without local files omit it.
   */
  localDataFile?(id: string): Promise<string>;

  /**
   * Optional. Releases what the adapter holds open between calls (file handles, connections) when
   * the middleware is closed. The adapter may stay usable afterwards.
   */
  close?(): Promise<void>;

  /**
   * Optional. Repairs what a crash may have left, once, before the middleware serves its first
   * packet: removes temporary data that has no record, corrects records whose data is missing or
   * shorter than recorded, and finishes commits that were interrupted. Adapters whose medium cannot
   * be left half-done omit it.
   */
  recover?(): Promise<RecoveryReport>;
}

/**
 * The record a new session starts with, as {@link StorageAdapter.createSession} must store it:
 * state `receiving`, nothing received, no total yet, last progress at creation.
 */
export function newSessionRecord(session: NewSession): SessionRecord {
  return {
    id: session.id,
    destination: [...session.destination],
    urlPath: session.urlPath,
    principal: session.principal,
    protocol: session.protocol,
    totalLength: undefined,
    receivedLength: 0,
    state: 'receiving',
    createdAt: session.createdAt,
    updatedAt: session.createdAt,
    sha256: undefined,
    delivered: false,
    reply: undefined,
  };
}

/** Thrown by adapters when a session id has no record. */
export class SessionNotFoundError extends Error {
  readonly code = 'BITS_SESSION_NOT_FOUND';
  constructor(readonly sessionId: string) {
    super(`No upload session ${sessionId}`);
    this.name = 'SessionNotFoundError';
  }
}

/** Thrown by {@link StorageAdapter.commit} when a file exists at the destination and overwrite is off. */
export class DestinationExistsError extends Error {
  readonly code = 'BITS_DESTINATION_EXISTS';
  constructor(readonly destination: Destination) {
    super(`A file already exists at ${destination.join('/')}`);
    this.name = 'DestinationExistsError';
  }
}

/** Thrown by {@link StorageAdapter.commit} when the destination is a directory. */
export class DestinationIsDirectoryError extends Error {
  readonly code = 'BITS_DESTINATION_IS_DIRECTORY';
  constructor(readonly destination: Destination) {
    super(`The destination ${destination.join('/')} is a directory`);
    this.name = 'DestinationIsDirectoryError';
  }
}

/**
 * Thrown by adapters when a destination would leave the storage root or reach into the adapter's
 * own bookkeeping (a `..` segment, a symbolic link leading outside, the session folder). The
 * middleware validates destinations first, so this is a second line of defence; answer it like an
 * invalid URL (400).
 */
export class InvalidDestinationError extends TypeError {
  readonly code = 'BITS_INVALID_DESTINATION';
  constructor(readonly destination: Destination, reason: string) {
    super(`Invalid destination ${destination.join('/')}: ${reason}`);
    this.name = 'InvalidDestinationError';
  }
}
