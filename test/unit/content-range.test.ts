/** bits-protocol.md §6.1 parsing and §6.2 V1 checks of Content-Range, including §6.5 zero-byte forms. */
import { BitsError } from '../../lib/errors';
import { EMPTY_RANGE, parseContentRange, rangeLength } from '../../lib/protocol/content-range';

const MAX = Number.MAX_SAFE_INTEGER;

describe('valid ranges', () => {
  test.each([
    ['bytes 0-65535/1048576', 0, 65535, 1048576],
    ['bytes 0-5/10', 0, 5, 10],
    ['bytes 6-9/10', 6, 9, 10],
    ['bytes 9-9/10', 9, 9, 10],
    ['Bytes 0-0/1', 0, 0, 1],
    ['BYTES 0-0/1', 0, 0, 1],
    ['bytes\t0-0/1', 0, 0, 1],
    ['bytes   1-2/3', 1, 2, 3],
    [' bytes 1-2/3 ', 1, 2, 3],
    ['bytes 007-008/010', 7, 8, 10],
    [`bytes 0-${MAX - 1}/${MAX}`, 0, MAX - 1, MAX],
    [`bytes ${MAX - 1}-${MAX - 1}/${MAX}`, MAX - 1, MAX - 1, MAX],
  ])('%s', (value, first, last, total) => {
    expect(parseContentRange(value)).toEqual({ first, last, total });
  });
});

describe('zero-byte forms (§6.5)', () => {
  test.each(['bytes 0--1/0', 'bytes 0-18446744073709551615/0', 'bytes 0-0/0', 'bytes */0', 'BYTES */0'])(
    '%s is the empty range',
    (value) => {
      const range = parseContentRange(value);
      expect(range).toEqual(EMPTY_RANGE);
      expect(rangeLength(range)).toBe(0);
    },
  );
});

describe('rejected (400 + E_INVALIDARG)', () => {
  test.each([
    ['end before start', 'bytes 5-3/10'],
    ['end equals total', 'bytes 0-10/10'],
    ['end past total', 'bytes 0-11/10'],
    ['zero total with data', 'bytes 0-1/0'],
    ['unsatisfied-range form', 'bytes */10'],
    ['unknown total', 'bytes 0-5/*'],
    ['other unit', 'items 0-5/10'],
    ['missing unit', '0-5/10'],
    ['no space after unit', 'bytes0-5/10'],
    ['= instead of space', 'bytes=0-5'],
    ['open range', 'bytes 0-/10'],
    ['suffix range', 'bytes -5/10'],
    ['negative first', 'bytes -1-5/10'],
    ['sign', 'bytes +1-5/10'],
    ['decimal', 'bytes 0-5.0/10'],
    ['hex', 'bytes 0x0-0x5/10'],
    ['two ranges', 'bytes 0-1/10, 2-3/10'],
    ['empty', ''],
    ['2^53 total', `bytes 0-0/${MAX + 1}`],
    ['2^53 end', `bytes 0-${MAX + 1}/${MAX}`],
    ['2^64 - 1 with a non-zero total', 'bytes 0-18446744073709551615/18446744073709551616'],
    ['huge number', `bytes 0-0/${'9'.repeat(400)}`],
    ['-1 end with a non-zero total', 'bytes 0--1/10'],
    ['zero-byte form starting elsewhere', 'bytes 1--1/0'],
  ])('%s: %s', (_why, value) => {
    expect(() => parseContentRange(value)).toThrow(BitsError);
    try {
      parseContentRange(value);
    } catch (error) {
      expect(error).toMatchObject({ code: 'BITS_INVALID_RANGE', status: 400, hresult: 0x80070057 });
    }
  });
});

test('rangeLength counts inclusive offsets', () => {
  expect(rangeLength({ first: 6, last: 9, total: 10 })).toBe(4);
});
