import type { IncomingMessage } from 'node:http';
import type { Destination } from './storage/adapter';

/** What every session event says about its session. */
export interface SessionInfo {
  /** Braced GUID of the session. */
  readonly sessionId: string;
  /** Where the upload goes, as path segments under the storage root. */
  readonly destination: Destination;
  /** The URL path (under the mount point) the session was created on. */
  readonly urlPath: string;
  /** Who created it (see the `principal` option), if known. */
  readonly principal: string | undefined;
}

/** A fragment stored: how far the session got. */
export interface ProgressInfo extends SessionInfo {
  /** New bytes this fragment stored. */
  readonly bytes: number;
  /** Durable received offset after the fragment. */
  readonly offset: number;
  /** Total length of the upload. */
  readonly total: number;
}

/** A complete upload, handed to `onUploadComplete` and the `upload-completed` event exactly once. */
export interface CompletedUpload extends SessionInfo {
  /** Size in bytes. */
  readonly size: number;
  /**
   * SHA-256 of the whole file, hex, computed while the bytes streamed in (when a listener was added
   * during the upload, from the bytes stored before it, read back once).
   */
  readonly sha256: string;
}

/** A failure the client was answered with an error Ack for, or a fault of the server itself. */
export interface FailureInfo {
  /** The session, when the failure concerned one. */
  readonly sessionId: string | undefined;
  readonly error: Error;
}

/** Events of the middleware, with their listener arguments. */
export interface BitsUploadEvents {
  'session-created': [session: SessionInfo];
  progress: [progress: ProgressInfo];
  'upload-completed': [upload: CompletedUpload];
  'session-closed': [session: SessionInfo];
  'session-cancelled': [session: SessionInfo];
  'session-expired': [session: SessionInfo];
  /** A storage fault, a failing hook, a full disk: answered with a 5xx Ack (or no Ack if the client left). */
  'upload-failed': [failure: FailureInfo];
}

/** A refusal from an application hook: the status and BITS error code of the error Ack. */
export interface Refusal {
  /** HTTP status of the error Ack, 400-599. */
  readonly status: number;
  /** HRESULT sent as `BITS-Error-Code`. Defaults to E_ACCESSDENIED (0x80070005) for 401/403, else E_FAIL (0x80004005). */
  readonly errorCode?: number;
}

/** What `onCreateSession` learns about a session it may refuse. */
export interface SessionRequest {
  readonly destination: Destination;
  readonly urlPath: string;
  readonly principal: string | undefined;
  readonly req: IncomingMessage;
}

/**
 * Application hooks. Each may be async; a hook that throws answers the packet with an error Ack
 * (status from the error's `status` property when it is 400-599, else 500; context 0x7) and the
 * packet can be retried.
 */
export interface BitsUploadHooks {
  /**
   * Called before a session is created. Return a {@link Refusal} to refuse it (authorisation,
   * naming policy, quota); return nothing to accept. Defaults to accepting every session.
   */
  readonly onCreateSession?: (session: SessionRequest) => Refusal | undefined | void | Promise<Refusal | undefined | void>;
  /**
   * Maps the destination taken from the URL to the one to store at (rename, relocate). The result
   * is validated with the same rules as a URL path. Defaults to the URL's destination.
   */
  readonly destination?: (destination: Destination, req: IncomingMessage) => Destination | Promise<Destination>;
  /**
   * Awaited once per completed upload, after the file is in place and before the final Ack. If it
   * throws, the final fragment gets an error Ack and the client's resend calls it again.
   * Defaults to none; with none, no reply handler and no `upload-completed` listener, the
   * SHA-256 of uploads is not computed at all.
   */
  readonly onUploadComplete?: (upload: CompletedUpload, req: IncomingMessage) => void | Promise<void>;
}
