import { createReadStream } from 'node:fs';
import { finished, PassThrough, Readable } from 'node:stream';
import { inspect } from 'node:util';
import createDebug from 'debug';
import { applicationError, internalError } from '../errors';
import type { CompletedUpload } from '../events';
import type { PacketContext } from '../packets/context';
import { callHook } from '../packets/hooks';
import type { StoredReply } from '../storage/adapter';
import type { ReplyBody, ReplyHandler, ReplyUpload } from './types';
import { checkReplyUrlLength, replyUrl } from './url';

const debug = createDebug('bits-upload:reply');

/** A handler's result, checked: bytes to store, or a static URL (§10.4). */
type PreparedReply =
  | { readonly kind: 'body'; readonly source: Readable; readonly copyToDestination: boolean }
  | { readonly kind: 'url'; readonly url: string; readonly copyToDestination: boolean };

/**
 * Asks the application for the reply of a completed upload and keeps it (bits-protocol.md §10.2:
 * after the last byte is stored, before the final Ack): calls `handler` once, streams the reply
 * bytes (a body or a file) into `storage.writeReply`, or takes a static URL (§10.4
 * `BITS-Static-Response-URL`: never stored), and records the result with
 * `updateSession({ reply })`, so that repeats of the final fragment and restarts find it (§6.4).
 * The upload is still the session's data while the handler runs (nothing is committed yet, §10.1).
 *
 * @throws BitsError `BITS_BAD_REQUEST` / `BITS_REPLY_URL_TOO_LONG` (400) before the handler runs
 * when the request cannot name a reply URL, or when a static URL exceeds 2,200 characters (§10.5);
 * `BITS_APPLICATION_ERROR` (context 0x7, §10.4) when the handler throws, returns something that is
 * not a reply, or its reply stream fails; storage failures as they come (a full disk, a fault).
 * Nothing is recorded then, so the next repeat of the final fragment calls the handler again.
 */
export async function produceReply(
  ctx: PacketContext,
  upload: CompletedUpload,
  handler: ReplyHandler,
): Promise<StoredReply> {
  const { options, message, now } = ctx;
  const { storage } = options;
  const id = upload.sessionId;
  // §10.5: a request that cannot name the reply URL is refused before the application runs.
  replyUrl(message, id, options);
  const replyUpload: ReplyUpload = {
    ...upload,
    req: message,
    read: (start = 0) => storage.readData(id, start),
    localFile: async () => storage.localDataFile?.(id),
  };
  const result: unknown = await callHook(() => handler(replyUpload, message));
  const prepared = prepare(result);
  const reply: StoredReply =
    prepared.kind === 'url'
      ? { kind: 'url', url: prepared.url, copyToDestination: prepared.copyToDestination }
      : {
          kind: 'stored',
          size: await store(ctx, id, prepared.source),
          storedAt: now,
          copyToDestination: prepared.copyToDestination,
        };
  await storage.updateSession(id, { reply });
  debug('session %s: reply %o recorded', id, reply);
  return reply;
}

/**
 * Checks what a handler returned (see `ReplyResult`): reply bytes, or an object with at most one
 * of `body`, `file` and `url` (none: an empty reply) and an optional boolean `copyToDestination`.
 */
function prepare(result: unknown): PreparedReply {
  if (isReplyBody(result)) return { kind: 'body', source: toStream(result), copyToDestination: false };
  if (typeof result !== 'object' || result === null) throw invalidResult(`returned ${show(result)}`);
  const { body, file, url, copyToDestination } = result as Partial<Record<'body' | 'file' | 'url' | 'copyToDestination', unknown>>;
  if (copyToDestination !== undefined && typeof copyToDestination !== 'boolean') {
    throw invalidResult(`returned copyToDestination ${show(copyToDestination)}; it must be true or false`);
  }
  const copy = copyToDestination === true;
  if ([body, file, url].filter((value) => value !== undefined).length > 1) {
    throw invalidResult('returned more than one of body, file and url');
  }
  if (url !== undefined) return { kind: 'url', url: staticUrl(url), copyToDestination: copy };
  if (file !== undefined) {
    if (typeof file !== 'string' || file === '') throw invalidResult(`returned file ${show(file)}; it must be a path`);
    return { kind: 'body', source: createReadStream(file), copyToDestination: copy };
  }
  if (body !== undefined && !isReplyBody(body)) {
    throw invalidResult(`returned body ${show(body)}; it must be a Buffer, Uint8Array, string or Readable`);
  }
  return { kind: 'body', source: toStream(body ?? Buffer.alloc(0)), copyToDestination: copy };
}

/**
 * A static reply URL (§10.4): absolute `http:` or `https:`, normalised by WHATWG URL parsing so it
 * is safe in a header.
 *
 * @throws BitsError `BITS_APPLICATION_ERROR` for anything else; `BITS_REPLY_URL_TOO_LONG` (400 +
 * E_INVALIDARG) above 2,200 characters (§10.5).
 */
function staticUrl(value: unknown): string {
  let parsed: URL | undefined;
  try {
    parsed = typeof value === 'string' ? new URL(value) : undefined;
  } catch {
    parsed = undefined;
  }
  if (parsed === undefined || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')) {
    throw invalidResult(`returned url ${show(value)}; it must be an absolute http: or https: URL`);
  }
  return checkReplyUrlLength(parsed.href);
}

/**
 * Streams `source` into `storage.writeReply` and returns the stored size. The storage reads a
 * stream of our own fed from `source`, so that a failure of the source (the application's stream or
 * file, also one that closes before its end) is told apart from a failure of the storage: the
 * former is the application's (context 0x7, §10.4), the latter keeps its own mapping (a full disk,
 * a fault). The source is destroyed once the storage is done.
 */
async function store(ctx: PacketContext, id: string, source: Readable): Promise<number> {
  const feed = new PassThrough();
  let sourceError: unknown;
  const stopWatching = finished(source, { writable: false }, (error) => {
    if (error === undefined || error === null) return;
    sourceError = error;
    feed.destroy(error);
  });
  source.pipe(feed);
  let size: number;
  try {
    size = await ctx.options.storage.writeReply(id, feed);
  } catch (error) {
    throw sourceError === undefined ? error : applicationError(sourceError);
  } finally {
    stopWatching();
    source.unpipe(feed);
    source.destroy();
  }
  if (sourceError !== undefined) throw applicationError(sourceError);
  if (!Number.isSafeInteger(size) || size < 0) throw internalError(new Error(`Storage reported a reply of ${size} bytes`));
  return size;
}

function isReplyBody(value: unknown): value is ReplyBody {
  return typeof value === 'string' || value instanceof Uint8Array || value instanceof Readable;
}

/** Reply bytes as a byte stream (strings as UTF-8). */
function toStream(body: ReplyBody): Readable {
  if (body instanceof Readable) return body;
  const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  return Readable.from(bytes.length === 0 ? [] : [bytes], { objectMode: false });
}

function invalidResult(problem: string): Error {
  return applicationError(
    new TypeError(
      `The reply handler ${problem}. Return reply bytes (a Buffer, Uint8Array, string or Readable) or ` +
        '{ body | file | url, copyToDestination }.',
    ),
  );
}

function show(value: unknown): string {
  return inspect(value, { depth: 0, breakLength: Infinity });
}
