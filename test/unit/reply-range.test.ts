/** Range and If-Range of reply downloads (bits-protocol.md §10.6, RFC 7233), table-driven. */
import { decideRange, ifRangeMatches, type RangeDecision } from '../../lib/reply/range';

const whole: RangeDecision = { kind: 'whole' };
const unsatisfiable: RangeDecision = { kind: 'unsatisfiable' };
const partial = (start: number, end: number): RangeDecision => ({ kind: 'partial', start, end });

describe('decideRange', () => {
  test.each<[string | undefined, number, RangeDecision]>([
    // No Range: the whole reply (§10.6: the client sometimes omits it).
    [undefined, 5, whole],
    // One range (TV-10).
    ['bytes=0-99', 5, partial(0, 4)],
    ['bytes=2-3', 5, partial(2, 3)],
    ['bytes=0-4', 5, partial(0, 4)],
    ['bytes=4-4', 5, partial(4, 4)],
    ['bytes=0-0', 1, partial(0, 0)],
    // Open-ended and suffix ranges.
    ['bytes=3-', 5, partial(3, 4)],
    ['bytes=0-', 5, partial(0, 4)],
    ['bytes=-2', 5, partial(3, 4)],
    ['bytes=-5', 5, partial(0, 4)],
    ['bytes=-99', 5, partial(0, 4)],
    // Spelling: unit case, whitespace, empty list elements.
    ['Bytes=2-3', 5, partial(2, 3)],
    ['BYTES = 2-3', 5, partial(2, 3)],
    ['  bytes=2-3  ', 5, partial(2, 3)],
    ['bytes=2-3,', 5, partial(2, 3)],
    ['bytes=, 2-3', 5, partial(2, 3)],
    ['bytes=007-', 10, partial(7, 9)],
    // Clamping of huge ends, offsets beyond 2^53.
    ['bytes=1-99999999999999999999999', 5, partial(1, 4)],
    [`bytes=0-${Number.MAX_SAFE_INTEGER}`, 5, partial(0, 4)],
    ['bytes=-99999999999999999999999', 5, partial(0, 4)],
    // Unsatisfiable: start at or past the end, a suffix of 0, any range of an empty reply.
    ['bytes=5-', 5, unsatisfiable],
    ['bytes=5-9', 5, unsatisfiable],
    ['bytes=99999999999999999999999-', 5, unsatisfiable],
    ['bytes=-0', 5, unsatisfiable],
    ['bytes=0-0', 0, unsatisfiable],
    ['bytes=0-', 0, unsatisfiable],
    ['bytes=-1', 0, unsatisfiable],
    // Ignored (RFC 7233 §3.1): several ranges, malformed ones, reversed ones, other units.
    ['bytes=0-1,3-4', 5, whole],
    ['bytes=0-1, -1', 5, whole],
    ['bytes=5-9,0-1', 5, whole],
    ['bytes=3-2', 5, whole],
    ['bytes=99999999999999999999999-99999999999999999999998', 5, whole],
    ['bytes=', 5, whole],
    ['bytes=,', 5, whole],
    ['bytes=-', 5, whole],
    ['bytes=a-b', 5, whole],
    ['bytes=1-2-3', 5, whole],
    ['bytes=+1-2', 5, whole],
    ['bytes=1.5-2', 5, whole],
    ['bytes 0-1', 5, whole],
    ['bytes', 5, whole],
    ['items=0-1', 5, whole],
    ['0-1', 5, whole],
    ['', 5, whole],
    ['bytes=0-1', 5, partial(0, 1)],
  ])('Range %j of %d bytes → %j', (header, size, expected) => {
    expect(decideRange(header, size)).toEqual(expected);
  });
});

describe('ifRangeMatches (RFC 7233 §3.2)', () => {
  const etag = '"abc-5-1"';
  const date = 'Tue, 14 Nov 2023 22:13:20 GMT';
  test.each<[string | undefined, boolean]>([
    [undefined, true],
    [etag, true],
    [` ${etag} `, true],
    [date, true],
    ['"other"', false],
    [`W/${etag}`, false],
    ['Tue, 14 Nov 2023 22:13:21 GMT', false],
    ['', false],
  ])('If-Range %j → %s', (header, expected) => {
    expect(ifRangeMatches(header, etag, date)).toBe(expected);
  });
});
