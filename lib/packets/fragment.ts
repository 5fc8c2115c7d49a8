import createDebug from 'debug';
import {
  bodyConsumed,
  fragmentTooLarge,
  internalError,
  invalidRange,
  unsupportedEncoding,
  uploadTooLarge,
} from '../errors';
import type { CompletedUpload } from '../events';
import { sessionInfo } from '../lifecycle/runtime';
import { ack, type Ack } from '../protocol/ack';
import { HEADER } from '../protocol/constants';
import { EMPTY_RANGE, parseContentRange, rangeLength, type ContentRange } from '../protocol/content-range';
import { readFragmentBody } from '../protocol/fragment-body';
import { produceReply } from '../reply/produce';
import { replyUrl } from '../reply/url';
import type { SessionRecord, StoredReply } from '../storage/adapter';
import type { PacketContext, PacketHandler } from './context';
import { callHook } from './hooks';
import { findSession } from './session';

const debug = createDebug('bits-upload:packet:fragment');

/**
 * Fragment (bits-protocol.md §3.3, §6): validate V1-V6 without touching data (§6.2), place the
 * bytes (§6.3) while hashing them, complete the upload when the received offset R reaches the total
 * (§6.4, §5.5), then answer with R in `BITS-Received-Content-Range`, and, once R is the total on an
 * upload with a reply (§10), with `BITS-Reply-URL` (§10.5).
 */
export const fragment: PacketHandler = async (ctx) => {
  const { request, options } = ctx;
  const { record, sessionHeader } = await findSession(ctx, false);
  const length = request.contentLength;
  const range = fragmentRange(request.contentRange, length);
  // V2: the body is exactly the range.
  if (length !== rangeLength(range)) {
    throw invalidRange(`Content-Length ${length} differs from the ${rangeLength(range)} bytes of the Content-Range`);
  }
  // V3: the total never changes within a session.
  if (record.totalLength !== undefined && range.total !== record.totalLength) {
    throw invalidRange(`Total length ${range.total} differs from the ${record.totalLength} announced before`);
  }
  // V4: whole-file limit, BG_E_TOO_LARGE, never 413 (§0.6).
  if (range.total > options.maxUploadSize) throw uploadTooLarge(range.total, options.maxUploadSize);
  // V5: per-fragment limit, checked before the body is read.
  if (length > options.maxFragmentSize) throw fragmentTooLarge(length, options.maxFragmentSize);
  // V6: identity only (§3.3).
  const encoding = request.contentEncoding;
  if (encoding !== undefined && encoding.toLowerCase() !== 'identity') throw unsupportedEncoding(encoding);
  return place(ctx, record, range, sessionHeader);
};

/** V1 (§6.1, §6.2): the Content-Range; a missing one only for an empty body (§6.5). */
function fragmentRange(header: string | undefined, length: number): ContentRange {
  if (header !== undefined) return parseContentRange(header);
  if (length === 0) return EMPTY_RANGE;
  throw invalidRange('Content-Range header missing');
}

/** §6.3 placement and §6.4 completion. */
async function place(
  ctx: PacketContext,
  record: SessionRecord,
  range: ContentRange,
  sessionHeader: Readonly<Record<string, string>>,
): Promise<Ack> {
  const { options, runtime } = ctx;
  let received = record.receivedLength;
  const answer = (status: number, more: Readonly<Record<string, string>> = {}): Ack =>
    ack({ ...sessionHeader, [HEADER.receivedContentRange]: String(received), ...more }, status);
  // Case D, gap: nothing kept; 416 is a resynchronisation signal carrying R (§0.3, §15 A4).
  if (range.first > received) {
    debug('session %s: gap, bytes %d-%d while holding %d', record.id, range.first, range.last, received);
    return answer(416);
  }
  if (record.totalLength === undefined) {
    await options.storage.updateSession(record.id, { totalLength: range.total, updatedAt: ctx.now });
  }
  // Cases A (contiguous) and B (overlap); case C (duplicate) writes nothing.
  if (range.last >= received) {
    const before = received;
    received = await storeBody(ctx, record.id, received, range);
    if (received > before) {
      runtime.emit('progress', { ...sessionInfo(record), bytes: received - before, offset: received, total: range.total });
    }
  } else {
    debug('session %s: duplicate bytes %d-%d, holding %d', record.id, range.first, range.last, received);
  }
  if (received !== range.total) return answer(200);
  const reply = await complete(ctx, record, received);
  // §10.5, §15 A23: only an upload that has a reply names it, on every Ack that reports R = total.
  return answer(200, reply === undefined ? {} : { [HEADER.replyUrl]: replyUrlOf(ctx, record.id, reply) });
}

/** Finishes the SHA-256 of the upload's `size` bytes (reading back what memory misses) and records it. */
async function recordDigest(ctx: PacketContext, id: string, size: number): Promise<string> {
  const sha256 = await ctx.runtime.hashes.digest(id, size);
  await ctx.options.storage.updateSession(id, { sha256 });
  return sha256;
}

/** The `BITS-Reply-URL` of a reply (§10.5): its static URL, or where this middleware serves it. */
function replyUrlOf(ctx: PacketContext, id: string, reply: StoredReply): string {
  return reply.kind === 'url' ? reply.url : replyUrl(ctx.message, id, ctx.options);
}

/**
 * Streams the new bytes of a fragment (skipping the `received - first` bytes already held) to the
 * adapter, through the session's running SHA-256 when anything receives it (see
 * `UploadRuntime.digestWanted`), and returns the new durable offset, which can never exceed the
 * bytes really delivered. Bytes hashed but not made durable are taken back out of the hash (see
 * `UploadHashes.tee`).
 */
async function storeBody(ctx: PacketContext, id: string, received: number, range: ContentRange): Promise<number> {
  const { body: source, request, options, runtime } = ctx;
  if (source.readableEnded || source.readableDidRead) throw bodyConsumed();
  const tee = runtime.digestWanted ? await runtime.hashes.tee(id, received) : undefined;
  const reader = readFragmentBody(source, received - range.first, request.contentLength, tee?.hash);
  let durable: number | undefined;
  try {
    const reported = await options.storage.writeFragment(id, received, reader.body);
    const delivered = received + reader.body.forwarded;
    if (!Number.isSafeInteger(reported) || reported < received || reported > delivered) {
      throw internalError(new Error(`Storage reported offset ${reported} after bytes ${received}-${delivered - 1}`));
    }
    durable = reported;
    if (!reader.body.complete) {
      debug('session %s: body cut short after %d new bytes; durable offset %d', id, reader.body.forwarded, durable);
    }
    return durable;
  } finally {
    tee?.settle(reader.body.forwarded, durable);
    reader.detach();
  }
}

/**
 * §6.4 completion, once R reached the total, in this order: when anything receives it, finish the
 * SHA-256 (reading back only what the memory state misses) and record it; on an upload-reply
 * endpoint (option `reply`, §10.1) get the reply unless the record has one (§10.2: the
 * application answers before the final Ack; see `produceReply`); commit (§5.5), except that a
 * reply that does not ask for `copyToDestination` (§10.4) leaves the upload in the session and
 * only marks it complete; then, unless the record says the application was already told or no
 * SHA-256 was computed (nothing received completed uploads then), await `onUploadComplete`, emit
 * `upload-completed` and record `delivered`. A repeat of the final fragment after that gets the
 * same 200 Ack (with the same `BITS-Reply-URL`) and nothing else (§6.4, SPEC 3.2.5.1.2
 * "NotifyCache"); if the reply handler or the hook failed, the repeat calls it again (§10.4,
 * TV-10). The same holds after a restart, from the record: a crash after the reply was recorded and
 * before the commit is finished by the repeat according to the recorded `copyToDestination`.
 *
 * Delivery is exactly-once except in one window: a crash after the hook returned and before
 * `delivered` was recorded makes the hook run again for the repeat of the final fragment after the
 * restart (at-least-once there, as with IIS notifications, §10.2). An application that must never
 * see a duplicate can key on `sessionId` and `sha256`. The same holds for the reply handler between
 * its return and the recording of its reply.
 *
 * @returns The session's reply, if it has one.
 */
async function complete(ctx: PacketContext, record: SessionRecord, size: number): Promise<StoredReply | undefined> {
  const { options, runtime } = ctx;
  const { storage, onUploadComplete } = options;
  let { sha256, reply } = record;
  if (record.state === 'receiving') {
    if (runtime.digestWanted) sha256 ??= await recordDigest(ctx, record.id, size);
    runtime.hashes.forget(record.id);
    if (reply === undefined && options.reply !== undefined) {
      // Computed above: a reply handler makes the digest wanted (which the compiler cannot see).
      sha256 ??= await recordDigest(ctx, record.id, size);
      reply = await produceReply(ctx, { ...sessionInfo(record), size, sha256 }, options.reply);
    }
    if (reply === undefined || reply.copyToDestination) {
      await storage.commit(record.id, { overwrite: options.allowOverwrites });
      debug('session %s: complete, %d bytes committed, SHA-256 %s', record.id, size, sha256 ?? 'not computed');
    } else {
      // §10.1: an upload-reply endpoint does not copy the upload to its destination unless asked.
      await storage.updateSession(record.id, { state: 'complete', updatedAt: ctx.now });
      debug('session %s: complete, %d bytes kept with the reply, SHA-256 %s', record.id, size, sha256);
    }
  }
  if (record.delivered) return reply;
  if (sha256 === undefined) {
    // Nothing received completed uploads when this one completed (or an older version completed it).
    debug('session %s: completed without a SHA-256; nothing is told', record.id);
    return reply;
  }
  const upload: CompletedUpload = { ...sessionInfo(record), size, sha256 };
  if (onUploadComplete !== undefined) await callHook(() => onUploadComplete(upload, ctx.message));
  runtime.emit('upload-completed', upload);
  await storage.updateSession(record.id, { delivered: true });
  return reply;
}
