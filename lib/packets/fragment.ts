import createDebug from 'debug';
import {
  bodyConsumed,
  fragmentTooLarge,
  internalError,
  invalidRange,
  unsupportedEncoding,
  uploadTooLarge,
} from '../errors';
import { ack, type Ack } from '../protocol/ack';
import { HEADER } from '../protocol/constants';
import { EMPTY_RANGE, parseContentRange, rangeLength, type ContentRange } from '../protocol/content-range';
import { readFragmentBody } from '../protocol/fragment-body';
import type { SessionRecord } from '../storage/adapter';
import type { PacketContext, PacketHandler } from './context';
import { findSession } from './session';

const debug = createDebug('bits-upload:packet:fragment');

/**
 * Fragment (bits-protocol.md §3.3, §6): validate V1-V6 without touching data (§6.2), place the
 * bytes (§6.3), commit when the received offset R reaches the total (§6.4, §5.5), then answer with
 * R in `BITS-Received-Content-Range`.
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
  const { storage, allowOverwrites } = ctx.options;
  let received = record.receivedLength;
  const answer = (status: number): Ack =>
    ack({ ...sessionHeader, [HEADER.receivedContentRange]: String(received) }, status);
  // Case D, gap: nothing kept; 416 is a resynchronisation signal carrying R (§0.3, §15 A4).
  if (range.first > received) {
    debug('session %s: gap, bytes %d-%d while holding %d', record.id, range.first, range.last, received);
    return answer(416);
  }
  if (record.totalLength === undefined) {
    await storage.updateSession(record.id, { totalLength: range.total, updatedAt: ctx.now });
  }
  // Cases A (contiguous) and B (overlap); case C (duplicate) writes nothing.
  if (range.last >= received) received = await storeBody(ctx, record.id, received, range);
  else debug('session %s: duplicate bytes %d-%d, holding %d', record.id, range.first, range.last, received);
  // §6.4: complete when R reaches the total; a commit that failed before is retried by a resend.
  if (received === range.total && record.state === 'receiving') {
    await storage.commit(record.id, { overwrite: allowOverwrites });
    debug('session %s: complete, %d bytes committed', record.id, received);
  }
  return answer(200);
}

/**
 * Streams the new bytes of a fragment (skipping the `received - first` bytes already held) to the
 * adapter and returns the new durable offset, which can never exceed the bytes really delivered.
 */
async function storeBody(ctx: PacketContext, id: string, received: number, range: ContentRange): Promise<number> {
  const { body: source, request, options } = ctx;
  if (source.readableEnded || source.readableDidRead) throw bodyConsumed();
  const reader = readFragmentBody(source, received - range.first, request.contentLength);
  try {
    const durable = await options.storage.writeFragment(id, received, reader.body);
    const delivered = received + reader.body.forwarded;
    if (!Number.isSafeInteger(durable) || durable < received || durable > delivered) {
      throw internalError(new Error(`Storage reported offset ${durable} after bytes ${received}-${delivered - 1}`));
    }
    if (!reader.body.complete) {
      debug('session %s: body cut short after %d new bytes; durable offset %d', id, reader.body.forwarded, durable);
    }
    return durable;
  } finally {
    reader.detach();
  }
}
