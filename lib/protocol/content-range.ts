import { invalidRange } from '../errors';

/**
 * A parsed `Content-Range: bytes S-E/T` (bits-protocol.md §6): zero-based inclusive offsets
 * `first` (S) and `last` (E) of a file of `total` (T) bytes. The empty range of a zero-byte file
 * (§6.5) is `{ first: 0, last: -1, total: 0 }`, so its length `last - first + 1` is 0.
 */
export interface ContentRange {
  readonly first: number;
  readonly last: number;
  readonly total: number;
}

/** The range of a zero-byte file (§6.5). */
export const EMPTY_RANGE: ContentRange = Object.freeze({ first: 0, last: -1, total: 0 });

/** Number of bytes a range covers. */
export function rangeLength(range: ContentRange): number {
  return range.last - range.first + 1;
}

/** §6.1: the unit is compared case-insensitively (§15 A24); whitespace between unit and range. */
const RANGE = /^bytes[ \t]+(\d+)-(\d+)\/(\d+)$/i;
/**
 * §6.5 zero-byte forms: `bytes 0--1/0`, `bytes 0-18446744073709551615/0` (-1 as an unsigned 64-bit
 * number), `bytes 0-0/0`, `bytes * /0` (without the space).
 */
const EMPTY_FORMS = /^bytes[ \t]+(?:0-(?:-1|18446744073709551615|0)|\*)\/0$/i;

/**
 * Parses and checks (§6.2 V1: `S <= E < T`) the value of a request's `Content-Range` header.
 * Offsets beyond 2^53 - 1 are rejected (§5.7). The zero-byte forms of §6.5 give {@link EMPTY_RANGE};
 * whether the body is empty is checked by the caller (V2).
 *
 * @throws BitsError `BITS_INVALID_RANGE` for anything else, including the `*` forms of RFC 7233.
 */
export function parseContentRange(value: string): ContentRange {
  const text = value.trim();
  if (EMPTY_FORMS.test(text)) return EMPTY_RANGE;
  const match = RANGE.exec(text);
  if (match === null) throw invalidRange(`Malformed Content-Range ${JSON.stringify(value)}`);
  const [first, last, total] = [match[1], match[2], match[3]].map((digits) => toSafeInteger(digits ?? ''));
  if (first === undefined || last === undefined || total === undefined) {
    throw invalidRange(`Content-Range ${JSON.stringify(value)} has offsets beyond 2^53 - 1`);
  }
  if (first > last) throw invalidRange(`Content-Range ${JSON.stringify(value)} ends before it starts`);
  if (last >= total) throw invalidRange(`Content-Range ${JSON.stringify(value)} ends at or past the total length`);
  return { first, last, total };
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** A decimal digit string as a number, or undefined above 2^53 - 1 (leading zeros allowed). */
function toSafeInteger(digits: string): number | undefined {
  const number = BigInt(digits);
  return number <= MAX_SAFE ? Number(number) : undefined;
}
