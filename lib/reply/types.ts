import type { IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import type { CompletedUpload } from '../events';

/**
 * An upload handed to the `reply` option of an upload-reply endpoint (bits-protocol.md §10): the
 * completed upload plus a way to read it. The bytes stay in the session's storage (they are not
 * placed at the destination unless the reply asks for it, §10.1) until Close, Cancel or expiry.
 */
export interface ReplyUpload extends CompletedUpload {
  /** Streams the uploaded bytes from `start` (default 0). */
  read(start?: number): Promise<Readable>;
  /**
   * The server-local path of the uploaded bytes when the storage keeps them in a local file
   * (`StorageAdapter.localDataFile`, e.g. `FileSystemStorage`), else undefined. Read-only, and valid
   * only until the handler's promise settles.
   */
  localFile(): Promise<string | undefined>;
  /** The request of the final fragment. */
  readonly req: IncomingMessage;
}

/** Reply bytes: a Buffer, a string (UTF-8), or a readable stream of bytes. */
export type ReplyBody = Buffer | Uint8Array | string | Readable;

/**
 * What a reply handler returns. Either reply bytes directly, or an object:
 * - `body`: the reply bytes, or `file`: a path whose content is the reply (copied into storage), or
 *   `url`: an absolute static URL that is the reply (never stored or deleted, §10.4);
 * - `copyToDestination`: also place the upload at its destination URL (§10.4
 *   `BITS-Copy-File-To-Destination`). Defaults to false: an upload-reply endpoint keeps uploads out of
 *   the destination unless asked.
 */
export type ReplyResult =
  | ReplyBody
  | {
      readonly body?: ReplyBody;
      readonly file?: string;
      readonly url?: string;
      readonly copyToDestination?: boolean;
    };

/**
 * Produces the reply of an upload-reply endpoint. Called once per upload, after the last byte is
 * durably stored and before the final fragment's Ack; its result is cached (a repeated final
 * fragment, also after a restart, gets the same `BITS-Reply-URL` without a second call). If it
 * throws, the final fragment gets an error Ack with context 0x7 (status from the error's `status`
 * when it is 400-599, else 500; `errorCode` when numeric, else E_FAIL) and the client's next repeat
 * of the final fragment calls it again.
 */
export type ReplyHandler = (upload: ReplyUpload, req: IncomingMessage) => ReplyResult | Promise<ReplyResult>;

/** Where reply URLs point (§10.5): absolute URLs served by the same middleware. */
export interface ReplyUrlOptions {
  /**
   * Public base URL of the mount point, e.g. `https://bits.example.com/uploads`, for deployments
   * behind a reverse proxy. Defaults to the request's own scheme, Host and mount path.
   */
  readonly publicUrl?: string;
  /**
   * Honour `Forwarded` / `X-Forwarded-Proto` / `X-Forwarded-Host` when building reply URLs. Only for
   * servers reached solely through a proxy that sets them. Defaults to false.
   */
  readonly trustForwardedHeaders?: boolean;
}
