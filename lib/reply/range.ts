/**
 * `Range` and `If-Range` of a reply download (bits-protocol.md §10.6, RFC 7233). The BITS client
 * asks for one range at a time; multi-range support is optional (§10.6), so anything but one byte
 * range is ignored and answered with the whole reply, as RFC 7233 §3.1 allows.
 */

/** What to send for a GET. */
export type RangeDecision =
  /** 200 with the whole reply: no Range, a malformed one, several ranges, or another unit. */
  | { readonly kind: 'whole' }
  /** 206 with bytes `start` to `end` (inclusive, `end` clamped to the last byte). */
  | { readonly kind: 'partial'; readonly start: number; readonly end: number }
  /** 416 with a `Content-Range` that names only the size (RFC 7233 §4.4). */
  | { readonly kind: 'unsatisfiable' };

const WHOLE: RangeDecision = Object.freeze({ kind: 'whole' });
const UNSATISFIABLE: RangeDecision = Object.freeze({ kind: 'unsatisfiable' });

/** `bytes=<set>`, unit case-insensitive (RFC 7233 §2.1), optional whitespace around `=`. */
const BYTES_UNIT = /^bytes[ \t]*=[ \t]*(.*)$/is;
/** `first-[last]` or `-suffix` (RFC 7233 §2.1). */
const BYTE_RANGE = /^(\d+)-(\d*)$/;
const SUFFIX_RANGE = /^-(\d+)$/;

/**
 * Decides a GET's answer from its `Range` header for a reply of `size` bytes (§10.6):
 * - `bytes=a-b`: bytes a to min(b, size - 1) (an end past the size is clamped, §10.6);
 * - `bytes=a-`: bytes a to the end;
 * - `bytes=-n`: the last n bytes (all of them when n >= size);
 * - a start at or past the size, a suffix of 0, or any range of a zero-byte reply: unsatisfiable;
 * - no header, another unit, a malformed or reversed range (`b < a`), or more than one range:
 *   the whole reply (RFC 7233 §3.1: a server may ignore Range).
 */
export function decideRange(header: string | undefined, size: number): RangeDecision {
  if (header === undefined) return WHOLE;
  const set = BYTES_UNIT.exec(header.trim())?.[1];
  if (set === undefined) return WHOLE;
  // RFC 7230 §7: empty list elements are allowed and ignored.
  const specs = set
    .split(',')
    .map((spec) => spec.trim())
    .filter((spec) => spec !== '');
  if (specs.length !== 1) return WHOLE;
  const spec = specs[0] ?? '';
  const suffix = SUFFIX_RANGE.exec(spec)?.[1];
  if (suffix !== undefined) {
    const length = toOffset(suffix);
    if (length === 0 || size === 0) return UNSATISFIABLE;
    return { kind: 'partial', start: Math.max(0, size - length), end: size - 1 };
  }
  const match = BYTE_RANGE.exec(spec);
  if (match === null) return WHOLE;
  const [, firstDigits = '', lastDigits = ''] = match;
  if (lastDigits !== '' && BigInt(lastDigits) < BigInt(firstDigits)) return WHOLE;
  const start = toOffset(firstDigits);
  if (start >= size) return UNSATISFIABLE;
  const end = lastDigits === '' ? size - 1 : Math.min(toOffset(lastDigits), size - 1);
  return { kind: 'partial', start, end };
}

/**
 * Whether a GET's `If-Range` lets its Range apply (RFC 7233 §3.2): absent, or equal to the current
 * entity tag (strong comparison: a weak tag never matches) or to the exact `Last-Modified` date.
 * Otherwise the reply changed since the client's copy and the whole reply is sent.
 */
export function ifRangeMatches(header: string | undefined, etag: string, lastModified: string): boolean {
  if (header === undefined) return true;
  const value = header.trim();
  return value === etag || value === lastModified;
}

/** Decimal digits as a number, capped at 2^53 - 1 (larger offsets lie past any reply anyway). */
function toOffset(digits: string): number {
  const value = BigInt(digits);
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(value);
}
