import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import createDebug from 'debug';
import { toBitsError } from '../errors';
import { isExpired, isTombstone } from '../lifecycle/expiry';
import type { UploadRuntime } from '../lifecycle/runtime';
import { principalOfRequest } from '../packets/session';
import { SessionNotFoundError, type SessionRecord, type StoredReply } from '../storage/adapter';
import { decideRange, ifRangeMatches } from './range';
import { matchReplyPath, type ReplyPathMatch } from './url';

const debug = createDebug('bits-upload:reply');

/** A reply kept in storage, with its session. */
interface ServedReply {
  readonly record: SessionRecord;
  readonly reply: Extract<StoredReply, { kind: 'stored' }>;
}

/**
 * The reply download a request asks for (bits-protocol.md §10.6): a GET or HEAD of a reply path
 * below the mount point (see `replyPath`). Undefined for every other request, which the middleware
 * passes on.
 */
export function replyDownload(req: IncomingMessage): ReplyPathMatch | undefined {
  if (req.method !== 'GET' && req.method !== 'HEAD') return undefined;
  return matchReplyPath(req.url ?? '');
}

/**
 * Serves a reply download (§10.6) the way a BITS download needs it:
 * - the session must exist, be open (not closed, cancelled or expired, §5.4) and belong to the
 *   requesting principal (§5.6), and its reply must be stored here; otherwise 404 with an empty
 *   body, so another principal learns nothing;
 * - HEAD: 200 with `Content-Length` (§10.6: the client reads the size from it);
 * - GET without `Range`, or with one the server may ignore (RFC 7233 §3.1: several ranges, a
 *   malformed one, or an `If-Range` that does not match): 200 and the whole reply;
 * - GET with one byte range: 206 with `Content-Range` and `Content-Length`, the end clamped to the
 *   size (§10.6); 416 with `Content-Range: bytes` then `*` and the size when it starts past the end;
 * - every 200/206/416 carries `Accept-Ranges: bytes`, a stable `Last-Modified` (when the reply was
 *   stored) and `ETag`, `Content-Type: application/octet-stream`; never compressed (§10.6).
 * Bodies are streamed from `storage.readReply` with backpressure, never buffered whole. After
 * `close()` every download is answered 503. A failure before the headers is answered 500 (and
 * reported as `upload-failed`); after them the connection is cut, so the client retries.
 *
 * @throws only when even the error response cannot be written.
 */
export async function serveReply(
  req: IncomingMessage,
  res: ServerResponse,
  runtime: UploadRuntime,
  sessionId: string | undefined,
): Promise<void> {
  try {
    await runtime.ready();
    if (runtime.phase === 'closed') return respondEmpty(res, 503);
    const served = sessionId === undefined ? undefined : await findReply(req, runtime, sessionId);
    if (served === undefined) return respondEmpty(res, 404);
    await send(req, res, runtime, served);
  } catch (error) {
    if (error instanceof SessionNotFoundError && !res.headersSent) {
      debug('reply of %s vanished while it was opened', sessionId);
      return respondEmpty(res, 404);
    }
    debug('reply download of %s failed: %O', sessionId, error);
    runtime.fault(toBitsError(error), sessionId);
    if (res.headersSent) res.destroy();
    else respondEmpty(res, 500);
  }
}

/** The session's stored reply if the requester may download it (§10.6, §5.6, §5.4). */
async function findReply(
  req: IncomingMessage,
  runtime: UploadRuntime,
  sessionId: string,
): Promise<ServedReply | undefined> {
  const { options } = runtime;
  const record = await options.storage.getSession(sessionId);
  if (record === undefined || isTombstone(record) || isExpired(record, options, Date.now())) {
    debug('reply of %s: no open session', sessionId);
    return undefined;
  }
  if (record.principal !== principalOfRequest(options, req)) {
    debug('reply of %s: requested by another principal', sessionId);
    return undefined;
  }
  const { reply } = record;
  if (reply?.kind !== 'stored') {
    debug('reply of %s: none stored here', sessionId);
    return undefined;
  }
  return { record, reply };
}

/** Answers a found reply: headers per the decision, then the bytes. */
async function send(req: IncomingMessage, res: ServerResponse, runtime: UploadRuntime, served: ServedReply): Promise<void> {
  const { record, reply } = served;
  const { size, storedAt } = reply;
  const lastModified = new Date(storedAt).toUTCString();
  const etag = `"${(record.sha256 ?? '').slice(0, 16)}-${size.toString(16)}-${storedAt.toString(16)}"`;
  const headers: OutgoingHttpHeaders = {
    'Content-Type': 'application/octet-stream',
    'Accept-Ranges': 'bytes',
    'Last-Modified': lastModified,
    ETag: etag,
    'Cache-Control': 'private',
  };
  // RFC 7233 §3.1: Range applies to GET only; §3.2: a stale If-Range gets the whole reply.
  const ranged = req.method === 'GET' && ifRangeMatches(header(req, 'if-range'), etag, lastModified);
  const decision = decideRange(ranged ? header(req, 'range') : undefined, size);
  if (decision.kind === 'unsatisfiable') {
    res.writeHead(416, { ...headers, 'Content-Range': `bytes */${size}`, 'Content-Length': '0' });
    res.end();
    return;
  }
  const [start, end] = decision.kind === 'partial' ? [decision.start, decision.end] : [0, size - 1];
  const length = end - start + 1;
  Object.assign(headers, {
    'Content-Length': String(length),
    ...(decision.kind === 'partial' && { 'Content-Range': `bytes ${start}-${end}/${size}` }),
  });
  const status = decision.kind === 'partial' ? 206 : 200;
  if (req.method === 'HEAD' || length === 0) {
    res.writeHead(status, headers);
    res.end();
    return;
  }
  // Opened before the headers go out, so that a reply that vanished can still be answered 404.
  const body = await runtime.options.storage.readReply(record.id, start, end);
  res.writeHead(status, headers);
  debug('reply of %s: %d, bytes %d-%d of %d', record.id, status, start, end, size);
  try {
    await pipeline(body, exactly(length, record.id), res);
  } catch (error) {
    if ((error as { code?: unknown }).code !== 'ERR_STREAM_PREMATURE_CLOSE') throw error;
    debug('reply of %s: the client left after part of it', record.id);
  }
}

/**
 * Passes on exactly `length` bytes and fails otherwise, so that a storage returning too few or too
 * many bytes cuts the connection instead of sending a body that contradicts its `Content-Length`.
 */
function exactly(length: number, id: string): (chunks: AsyncIterable<Uint8Array>) => AsyncGenerator<Uint8Array> {
  return async function* (chunks) {
    let sent = 0;
    for await (const chunk of chunks) {
      sent += chunk.byteLength;
      if (sent > length) throw new Error(`Storage returned more than the ${length} bytes asked of the reply of ${id}`);
      yield chunk;
    }
    if (sent !== length) throw new Error(`Storage returned ${sent} of the ${length} bytes asked of the reply of ${id}`);
  };
}

function header(req: IncomingMessage, name: 'range' | 'if-range'): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}

/** A response without a body: `Content-Length: 0`, never chunked. */
function respondEmpty(res: ServerResponse, status: number): void {
  res.writeHead(status, { 'Content-Length': '0' });
  res.end();
}
