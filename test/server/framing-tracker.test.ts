/**
 * Unit tests of FramingTracker: the byte-level rewriter behind acceptBitsPost (bits-protocol.md §2.5).
 *
 * Every case feeds raw request bytes, collects what the tracker hands to the HTTP parser and checks
 * the concatenated output, the passthrough reason and the rewrite count. The same input is then
 * split at every byte boundary (and fed one byte at a time) and must give the same result.
 */
import { FramingTracker, type FramingTrackerOptions, type PassthroughReason } from '../../lib/server/framing-tracker';
import { seededRandom } from '../helpers/raw-http';

const MARKER = 'X-Test-Marker: 0123456789abcdef\r\n';
const MARKER_BUF = Buffer.from(MARKER, 'latin1');
/** Placeholder for the marker line in expected outputs. */
const M = '{M}';

interface Run {
  readonly output: Buffer;
  readonly pieces: Buffer[];
  readonly reason: PassthroughReason | null;
  readonly rewritten: number;
  readonly holding: boolean;
}

function tracker(options: Partial<FramingTrackerOptions> = {}): FramingTracker {
  return new FramingTracker({ marker: MARKER_BUF, maxLineLength: 16 * 1024, firstRequestOnly: false, ...options });
}

/** A copy of `data` in an ArrayBuffer of its own, so that `piece.buffer === chunk.buffer` means "not copied". */
function isolated(data: string | Buffer): Buffer {
  const source = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
  const copy = Buffer.from(new ArrayBuffer(source.length));
  source.copy(copy);
  return copy;
}

function feed(chunks: readonly Buffer[], options: Partial<FramingTrackerOptions> = {}): Run {
  const t = tracker(options);
  const pieces: Buffer[] = [];
  for (const chunk of chunks) t.write(chunk, (piece) => pieces.push(piece));
  return {
    output: Buffer.concat(pieces),
    pieces,
    reason: t.passthroughReason,
    rewritten: t.rewritten,
    holding: t.holding,
  };
}

function expand(expected: string): string {
  return expected.split(M).join(MARKER);
}

function latin1(buf: Buffer): string {
  return buf.toString('latin1');
}

/** `size-in-hex CRLF data CRLF` */
function chunk(data: string, extension = ''): string {
  return `${Buffer.byteLength(data, 'latin1').toString(16)}${extension}\r\n${data}\r\n`;
}

const REQUEST_LINE_TEXT = 'BITS_POST / HTTP/1.1\r\n';
const BITS = (target = '/after', body = ''): string =>
  `BITS_POST ${target} HTTP/1.1\r\nHost: h\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
const BITS_OUT = (target = '/after', body = ''): string =>
  `POST ${target} HTTP/1.1\r\n${M}Host: h\r\nContent-Length: ${body.length}\r\n\r\n${body}`;

interface Case {
  readonly name: string;
  readonly input: string;
  /** Output with `{M}` for the marker line; defaults to the input, untouched. */
  readonly expected?: string;
  readonly reason: PassthroughReason | null;
  readonly rewritten?: number;
  readonly holding?: boolean;
  readonly options?: Partial<FramingTrackerOptions>;
}

const tracked: Case[] = [
  { name: 'GET without a body', input: 'GET / HTTP/1.1\r\nHost: h\r\n\r\n', reason: null },
  {
    name: 'BITS_POST without a body',
    input: BITS('/u'),
    expected: BITS_OUT('/u'),
    reason: null,
    rewritten: 1,
  },
  {
    name: 'BITS_POST with a query string and an absolute-form target',
    input: 'BITS_POST http://h:8080/u/f.bin?x=1&y=%20 HTTP/1.1\r\nContent-Length: 0\r\n\r\n',
    expected: `POST http://h:8080/u/f.bin?x=1&y=%20 HTTP/1.1\r\n${M}Content-Length: 0\r\n\r\n`,
    reason: null,
    rewritten: 1,
  },
  {
    name: 'HTTP/1.0 BITS_POST',
    input: 'BITS_POST /u HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi',
    expected: `POST /u HTTP/1.0\r\n${M}Content-Length: 2\r\n\r\nhi`,
    reason: null,
    rewritten: 1,
  },
  {
    name: 'a BITS_POST whose body is a BITS_POST request, then a real one',
    input: BITS('/a', `${REQUEST_LINE_TEXT}Content-Length: 0\r\n\r\n`) + BITS('/b'),
    expected: BITS_OUT('/a', `${REQUEST_LINE_TEXT}Content-Length: 0\r\n\r\n`) + BITS_OUT('/b'),
    reason: null,
    rewritten: 2,
  },
  {
    name: 'GET, BITS_POST, POST with a BITS_POST body and BITS_POST on one connection',
    input:
      'GET /g HTTP/1.1\r\nHost: h\r\n\r\n' +
      BITS('/1', 'BITS_') +
      `POST /p HTTP/1.1\r\nContent-Length: ${REQUEST_LINE_TEXT.length}\r\n\r\n${REQUEST_LINE_TEXT}` +
      BITS('/2', 'x'),
    expected:
      'GET /g HTTP/1.1\r\nHost: h\r\n\r\n' +
      BITS_OUT('/1', 'BITS_') +
      `POST /p HTTP/1.1\r\nContent-Length: ${REQUEST_LINE_TEXT.length}\r\n\r\n${REQUEST_LINE_TEXT}` +
      BITS_OUT('/2', 'x'),
    reason: null,
    rewritten: 2,
  },
  {
    name: 'CR and LF runs before the first request and between requests are skipped (RFC 9112 §2.2)',
    input: `\r\n\r\n\n${BITS('/a')}\r\n\r\r\n${BITS('/b')}`,
    expected: `\r\n\r\n\n${BITS_OUT('/a')}\r\n\r\r\n${BITS_OUT('/b')}`,
    reason: null,
    rewritten: 2,
  },
  {
    name: 'chunked POST with extensions, chunks and trailers that look like requests, then BITS_POST',
    input:
      'POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n' +
      chunk('BITS_', ';a=b;c') +
      chunk(REQUEST_LINE_TEXT, ';name=BITS_POST') +
      '0;last\r\nX-Trailer: BITS_POST / HTTP/1.1\r\n\r\n' +
      BITS('/after-chunked'),
    expected:
      'POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n' +
      chunk('BITS_', ';a=b;c') +
      chunk(REQUEST_LINE_TEXT, ';name=BITS_POST') +
      '0;last\r\nX-Trailer: BITS_POST / HTTP/1.1\r\n\r\n' +
      BITS_OUT('/after-chunked'),
    reason: null,
    rewritten: 1,
  },
  {
    name: 'BITS_POST, then a chunked request without trailers, then BITS_POST',
    input:
      BITS('/a', 'abc') +
      'PUT /c HTTP/1.1\r\ntransfer-encoding:  CHUNKED  \r\n\r\n' +
      chunk('x'.repeat(300)) +
      '000\r\n\r\n' +
      BITS('/b'),
    expected:
      BITS_OUT('/a', 'abc') +
      'PUT /c HTTP/1.1\r\ntransfer-encoding:  CHUNKED  \r\n\r\n' +
      chunk('x'.repeat(300)) +
      '000\r\n\r\n' +
      BITS_OUT('/b'),
    reason: null,
    rewritten: 2,
  },
  {
    name: 'chunk sizes in upper case hex with leading zeros',
    input: `POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n000A\r\n0123456789\r\n0\r\n\r\n${BITS()}`,
    expected: `POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n000A\r\n0123456789\r\n0\r\n\r\n${BITS_OUT()}`,
    reason: null,
    rewritten: 1,
  },
  {
    name: 'Content-Length in any letter case, with spaces around the value',
    input: `POST / HTTP/1.1\r\ncontent-LENGTH:   4  \r\n\r\nBITS${BITS()}`,
    expected: `POST / HTTP/1.1\r\ncontent-LENGTH:   4  \r\n\r\nBITS${BITS_OUT()}`,
    reason: null,
    rewritten: 1,
  },
  {
    name: 'other methods starting with B are released from the hold and followed',
    input: `BIND /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nBITS_${BITS()}B`,
    expected: `BIND /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nBITS_${BITS_OUT()}`,
    reason: null,
    rewritten: 1,
    holding: true,
  },
  {
    name: 'BITS_POSTX is not BITS_POST',
    input: `BITS_POSTX / HTTP/1.1\r\nContent-Length: 0\r\n\r\n${BITS()}`,
    expected: `BITS_POSTX / HTTP/1.1\r\nContent-Length: 0\r\n\r\n${BITS_OUT()}`,
    reason: null,
    rewritten: 1,
  },
  {
    name: 'lower-case bits_post is not rewritten',
    input: 'bits_post / HTTP/1.1\r\nContent-Length: 0\r\n\r\n',
    reason: null,
  },
  {
    name: 'headers that merely mention framing words are ignored',
    input: `GET / HTTP/1.1\r\nX-Content-Length: 5\r\nContent-Lengths: 7\r\nUpgrade-Insecure-Requests: 1\r\nX-Transfer-Encoding: gzip\r\nX: Content-Length: 9\r\n\r\n${BITS()}`,
    expected: `GET / HTTP/1.1\r\nX-Content-Length: 5\r\nContent-Lengths: 7\r\nUpgrade-Insecure-Requests: 1\r\nX-Transfer-Encoding: gzip\r\nX: Content-Length: 9\r\n\r\n${BITS_OUT()}`,
    reason: null,
    rewritten: 1,
  },
  {
    name: 'a partial BITS_POST line at the end is withheld',
    input: 'GET / HTTP/1.1\r\n\r\nBITS_POST /u HT',
    expected: 'GET / HTTP/1.1\r\n\r\n',
    reason: null,
    holding: true,
  },
  {
    name: 'first-request mode follows a connection that starts with BITS_POST',
    input: `${BITS('/a', 'ab')}GET / HTTP/1.1\r\n\r\n${BITS('/b')}`,
    expected: `${BITS_OUT('/a', 'ab')}GET / HTTP/1.1\r\n\r\n${BITS_OUT('/b')}`,
    reason: null,
    rewritten: 2,
    options: { firstRequestOnly: true },
  },
  {
    name: 'first-request mode: leading CRLF before the first BITS_POST',
    input: `\r\n${BITS('/a')}`,
    expected: `\r\n${BITS_OUT('/a')}`,
    reason: null,
    rewritten: 1,
    options: { firstRequestOnly: true },
  },
];

const CHUNKED_HEAD = 'POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n';
const LONG = 'a'.repeat(100);

const passthrough: Case[] = [
  {
    name: 'first-request mode gives up on a connection that starts with GET',
    input: `GET / HTTP/1.1\r\n\r\n${BITS()}`,
    reason: 'not-bits-first-request',
    options: { firstRequestOnly: true },
  },
  {
    name: 'first-request mode gives up on a first method that only starts like BITS_POST',
    input: `BIND / HTTP/1.1\r\n\r\n${BITS()}`,
    reason: 'not-bits-first-request',
    options: { firstRequestOnly: true },
  },
  { name: 'bare LF ending a request line', input: `GET / HTTP/1.1\nHost: h\r\n\r\n${BITS()}`, reason: 'bare-line-feed' },
  { name: 'bare LF ending a header line', input: `GET / HTTP/1.1\r\nHost: h\n\r\n${BITS()}`, reason: 'bare-line-feed' },
  { name: 'bare LF ending a BITS_POST line', input: `BITS_POST / HTTP/1.1\nHost: h\r\n\r\n${BITS()}`, reason: 'bare-line-feed' },
  { name: 'bare LF as the end of the head', input: `GET / HTTP/1.1\r\nHost: h\r\n\n${BITS()}`, reason: 'bare-line-feed' },
  { name: 'bare LF ending a chunk-size line', input: `${CHUNKED_HEAD}5\nBITS_\r\n0\r\n\r\n${BITS()}`, reason: 'bare-line-feed' },
  { name: 'bare CR inside a header value', input: `GET / HTTP/1.1\r\nX: a\rb\r\n\r\n${BITS()}`, reason: 'bare-carriage-return' },
  { name: 'bare CR ending a header line', input: `GET / HTTP/1.1\r\nHost: h\rContent-Length: 0\r\n\r\n${BITS()}`, reason: 'bare-carriage-return' },
  { name: 'bare CR in a request line', input: `GET /\r HTTP/1.1\r\n\r\n${BITS()}`, reason: 'bare-carriage-return' },
  {
    name: 'request line longer than maxLineLength',
    input: `GET /${LONG} HTTP/1.1\r\n\r\n${BITS()}`,
    reason: 'line-too-long',
    options: { maxLineLength: 64 },
  },
  {
    name: 'header line longer than maxLineLength',
    input: `GET / HTTP/1.1\r\nX-Long: ${LONG}\r\n\r\n${BITS()}`,
    reason: 'line-too-long',
    options: { maxLineLength: 64 },
  },
  {
    name: 'BITS_POST line longer than maxLineLength',
    input: `BITS_POST /${LONG} HTTP/1.1\r\n\r\n${BITS()}`,
    reason: 'line-too-long',
    options: { maxLineLength: 64 },
  },
  {
    name: 'unfinished line already longer than maxLineLength',
    input: `GET / HTTP/1.1\r\nX-Long: ${LONG}`,
    reason: 'line-too-long',
    options: { maxLineLength: 64 },
  },
  {
    name: 'unfinished BITS_POST line already longer than maxLineLength',
    input: `BITS_POST /${LONG}`,
    reason: 'line-too-long',
    options: { maxLineLength: 64 },
  },
  {
    name: 'chunk-size line longer than maxLineLength',
    input: `${CHUNKED_HEAD}5;ext=${LONG}\r\nBITS_\r\n0\r\n\r\n${BITS()}`,
    reason: 'line-too-long',
    options: { maxLineLength: 64 },
  },
  { name: 'request line without a space', input: `GET\r\n\r\n${BITS()}`, reason: 'invalid-request-line' },
  { name: 'request line starting with a space', input: ` GET / HTTP/1.1\r\n\r\n${BITS()}`, reason: 'invalid-request-line' },
  { name: 'BITS_POST with two spaces', input: `BITS_POST  /u HTTP/1.1\r\n\r\n${BITS()}`, reason: 'invalid-request-line' },
  { name: 'BITS_POST with a space in the target', input: `BITS_POST /a b HTTP/1.1\r\n\r\n${BITS()}`, reason: 'invalid-request-line' },
  { name: 'BITS_POST with a tab in the target', input: `BITS_POST /a\tb HTTP/1.1\r\n\r\n${BITS()}`, reason: 'invalid-request-line' },
  { name: 'BITS_POST with a DEL in the target', input: `BITS_POST /a\x7fb HTTP/1.1\r\n\r\n${BITS()}`, reason: 'invalid-request-line' },
  { name: 'BITS_POST with a trailing space', input: `BITS_POST / HTTP/1.1 \r\n\r\n${BITS()}`, reason: 'invalid-request-line' },
  { name: 'BITS_POST without a target', input: `BITS_POST HTTP/1.1\r\n\r\n${BITS()}`, reason: 'invalid-request-line' },
  { name: 'BITS_POST with HTTP/2.0', input: `BITS_POST / HTTP/2.0\r\n\r\n${BITS()}`, reason: 'invalid-request-line' },
  { name: 'BITS_POST with a bare CR in the target', input: `BITS_POST /a\rb HTTP/1.1\r\n\r\n${BITS()}`, reason: 'invalid-request-line' },
  { name: 'HTTP/2.0 request line', input: `GET / HTTP/2.0\r\n\r\n${BITS()}`, reason: 'http-version' },
  { name: 'HTTP/0.9 request line', input: `GET /\r\n${BITS()}`, reason: 'http-version' },
  { name: 'lower-case version', input: `GET / http/1.1\r\n\r\n${BITS()}`, reason: 'http-version' },
  { name: 'CONNECT', input: `CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n${BITS()}`, reason: 'connect' },
  { name: 'HTTP/2 connection preface', input: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n${BITS()}`, reason: 'h2-preface' },
  {
    name: 'Upgrade request followed by frames',
    input: `GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x14${REQUEST_LINE_TEXT}${BITS()}`,
    reason: 'upgrade',
  },
  {
    name: 'BITS_POST with an Upgrade header is rewritten, then nothing else',
    input: `BITS_POST /u HTTP/1.1\r\nupgrade: x\r\nConnection: upgrade\r\n\r\n${BITS()}`,
    expected: `POST /u HTTP/1.1\r\n${M}upgrade: x\r\nConnection: upgrade\r\n\r\n${BITS()}`,
    reason: 'upgrade',
    rewritten: 1,
  },
  { name: 'obs-fold with a space', input: `GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n${BITS()}`, reason: 'obs-fold' },
  { name: 'obs-fold with a tab', input: `GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n${BITS()}`, reason: 'obs-fold' },
  { name: 'obs-fold in trailers', input: `${CHUNKED_HEAD}0\r\nX: a\r\n b\r\n\r\n${BITS()}`, reason: 'obs-fold' },
  { name: 'header line without a colon', input: `GET / HTTP/1.1\r\nNoColon\r\n\r\n${BITS()}`, reason: 'invalid-header-line' },
  { name: 'header line starting with a colon', input: `GET / HTTP/1.1\r\n: v\r\n\r\n${BITS()}`, reason: 'invalid-header-line' },
  { name: 'trailer line without a colon', input: `${CHUNKED_HEAD}0\r\nNoColon\r\n\r\n${BITS()}`, reason: 'invalid-header-line' },
  ...['+5', '\t5', '5\t', '5a', '', ' ', '1 2', '-1', '0x5', '5,5', '1234567890123456'].map(
    (value): Case => ({
      name: `Content-Length ${JSON.stringify(value)}`,
      input: `POST / HTTP/1.1\r\nContent-Length:${value === '' ? '' : ' '}${value}\r\n\r\nabcde${BITS()}`,
      reason: 'invalid-content-length',
    }),
  ),
  {
    name: 'two Content-Length headers with the same value',
    input: `POST / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n${BITS()}`,
    reason: 'duplicate-content-length',
  },
  {
    name: 'two Content-Length headers with different values',
    input: `POST / HTTP/1.1\r\nContent-Length: 0\r\ncontent-length: 46\r\n\r\n${BITS()}`,
    reason: 'duplicate-content-length',
  },
  {
    name: 'Transfer-Encoding: gzip, chunked',
    input: `POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n${BITS()}`,
    reason: 'transfer-encoding',
  },
  {
    name: 'Transfer-Encoding: identity',
    input: `POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n${BITS()}`,
    reason: 'transfer-encoding',
  },
  {
    name: 'Transfer-Encoding: chunked with a tab',
    input: `POST / HTTP/1.1\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n${BITS()}`,
    reason: 'transfer-encoding',
  },
  {
    name: 'two Transfer-Encoding headers',
    input: `POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${BITS()}`,
    reason: 'transfer-encoding',
  },
  {
    name: 'Content-Length, then Transfer-Encoding',
    input: `POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${BITS()}`,
    reason: 'content-length-with-transfer-encoding',
  },
  {
    name: 'Transfer-Encoding, then Content-Length',
    input: `POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n${BITS()}`,
    reason: 'content-length-with-transfer-encoding',
  },
  ...['zz', '', '-5', 'g', '1'.repeat(14), ';ext'].map(
    (size): Case => ({
      name: `chunk size ${JSON.stringify(size)}`,
      input: `${CHUNKED_HEAD}${size}\r\nBITS_\r\n0\r\n\r\n${BITS()}`,
      reason: 'invalid-chunk-size',
    }),
  ),
  ...['5 ', '5 ;a', '5\t', '5;a="b"', '5;a b', '5;a=b c', '5x', '5;a=\x80'].map(
    (line): Case => ({
      name: `chunk-size line ${JSON.stringify(line)}`,
      input: `${CHUNKED_HEAD}${line}\r\nBITS_\r\n0\r\n\r\n${BITS()}`,
      reason: 'chunk-extension',
    }),
  ),
  { name: 'chunk data not followed by CR', input: `${CHUNKED_HEAD}5\r\nBITS_X\r\n0\r\n\r\n${BITS()}`, reason: 'invalid-chunk-end' },
  { name: 'chunk data followed by CR without LF', input: `${CHUNKED_HEAD}5\r\nBITS_\rX0\r\n\r\n${BITS()}`, reason: 'invalid-chunk-end' },
  {
    name: 'Content-Length in trailers',
    input: `${CHUNKED_HEAD}0\r\nContent-Length: 5\r\n\r\n${BITS()}`,
    reason: 'trailer-framing-header',
  },
  {
    name: 'Transfer-Encoding in trailers',
    input: `${CHUNKED_HEAD}0\r\ntransfer-encoding: chunked\r\n\r\n${BITS()}`,
    reason: 'trailer-framing-header',
  },
  {
    name: 'a rewrite before the point of passthrough stays',
    input: `${BITS('/first', 'ab')}GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx${BITS()}`,
    expected: `${BITS_OUT('/first', 'ab')}GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx${BITS()}`,
    reason: 'invalid-content-length',
    rewritten: 1,
  },
];

function check(run: Run, c: Case): void {
  expect(latin1(run.output)).toBe(expand(c.expected ?? c.input));
  expect(run.reason).toBe(c.reason);
  expect(run.rewritten).toBe(c.rewritten ?? 0);
  expect(run.holding).toBe(c.holding ?? false);
}

describe('FramingTracker', () => {
  describe('follows and rewrites', () => {
    test.each(tracked.map((c) => [c.name, c] as const))('%s', (_name, c) => {
      check(feed([isolated(c.input)], c.options), c);
    });
  });

  describe('passes through', () => {
    test.each(passthrough.map((c) => [c.name, c] as const))('%s', (_name, c) => {
      check(feed([isolated(c.input)], c.options), c);
    });
  });

  test('every passthrough reason of the type has a case here (end-of-stream and hold-timeout via stop())', () => {
    const covered = new Set<PassthroughReason | null>(passthrough.map((c) => c.reason));
    covered.add('end-of-stream');
    covered.add('hold-timeout');
    const all: Record<PassthroughReason, true> = {
      'not-bits-first-request': true,
      'bare-line-feed': true,
      'bare-carriage-return': true,
      'line-too-long': true,
      'invalid-request-line': true,
      'http-version': true,
      connect: true,
      'h2-preface': true,
      upgrade: true,
      'obs-fold': true,
      'invalid-header-line': true,
      'invalid-content-length': true,
      'duplicate-content-length': true,
      'transfer-encoding': true,
      'content-length-with-transfer-encoding': true,
      'invalid-chunk-size': true,
      'chunk-extension': true,
      'invalid-chunk-end': true,
      'trailer-framing-header': true,
      'end-of-stream': true,
      'hold-timeout': true,
    };
    expect([...covered].sort()).toEqual(Object.keys(all).sort());
  });

  describe('gives the same output however the input is split', () => {
    const all = [...tracked, ...passthrough];
    test.each(all.map((c) => [c.name, c] as const))('%s', (_name, c) => {
      const input = Buffer.from(c.input, 'latin1');
      const whole = feed([isolated(input)], c.options);
      check(whole, c);
      for (let at = 0; at <= input.length; at++) {
        const split = feed([isolated(input.subarray(0, at)), isolated(input.subarray(at))], c.options);
        if (!split.output.equals(whole.output) || split.reason !== whole.reason || split.rewritten !== whole.rewritten) {
          throw new Error(`split at byte ${at} of ${c.name}: ${JSON.stringify(latin1(split.output))} / ${split.reason}`);
        }
        expect(split.holding).toBe(whole.holding);
      }
      const bytewise = feed(
        [...input].map((byte) => isolated(Buffer.from([byte]))),
        c.options,
      );
      expect(latin1(bytewise.output)).toBe(latin1(whole.output));
      expect(bytewise.reason).toBe(whole.reason);
      expect(bytewise.rewritten).toBe(whole.rewritten);
    });

    test('every three-piece split of a mixed stream', () => {
      const input = Buffer.from(
        `\r\n${BITS('/a', 'BITS_')}${CHUNKED_HEAD}${chunk('BITS_POST', ';e=1')}0\r\nT: BITS_POST / HTTP/1.1\r\n\r\nBIND / HTTP/1.1\r\n\r\n${BITS('/b', 'x')}`,
        'latin1',
      );
      const whole = feed([input]);
      expect(whole.rewritten).toBe(2);
      expect(whole.reason).toBeNull();
      for (let i = 0; i <= input.length; i++) {
        for (let j = i; j <= input.length; j++) {
          const run = feed([input.subarray(0, i), input.subarray(i, j), input.subarray(j)]);
          if (!run.output.equals(whole.output) || run.rewritten !== 2 || run.reason !== null) {
            throw new Error(`split at ${i} and ${j}: ${JSON.stringify(latin1(run.output))}`);
          }
        }
      }
    });
  });

  describe('random streams of valid requests, randomly split', () => {
    test.each([1, 2, 3, 4, 5, 6, 7, 8])('seed %i', (seed) => {
      const rnd = seededRandom(seed);
      const pick = <T>(items: readonly T[]): T => items[Math.floor(rnd() * items.length)] as T;
      const bodyText = (): string => {
        const parts = ['BITS_POST / HTTP/1.1\r\n', 'BITS_', '\r\n', '\r\n\r\n', 'B', 'GET / HTTP/1.1\r\n', 'xyz', '0\r\n\r\n'];
        let text = '';
        const count = Math.floor(rnd() * 6);
        for (let i = 0; i < count; i++) text += pick(parts);
        return text;
      };
      let input = '';
      let expected = '';
      let bits = 0;
      for (let n = 0; n < 12; n++) {
        const crlf = pick(['', '', '\r\n', '\n', '\r\n\r\n']);
        input += crlf;
        expected += crlf;
        const body = bodyText();
        switch (pick(['bits', 'bits', 'get', 'post', 'chunked', 'bits10'])) {
          case 'bits':
            input += BITS(`/b${n}`, body);
            expected += BITS_OUT(`/b${n}`, body);
            bits++;
            break;
          case 'bits10': {
            const head = `/t${n}?q=${n} HTTP/1.0\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
            input += `BITS_POST ${head}`;
            expected += `POST ${head.replace('\r\n', `\r\n${M}`)}`;
            bits++;
            break;
          }
          case 'get': {
            const text = `GET /g${n} HTTP/1.1\r\nX-Note: BITS_POST / HTTP/1.1\r\n\r\n`;
            input += text;
            expected += text;
            break;
          }
          case 'post': {
            const text = `POST /p${n} HTTP/1.1\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
            input += text;
            expected += text;
            break;
          }
          default: {
            let text = `POST /c${n} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n`;
            const pieces = Math.floor(rnd() * 3);
            for (let i = 0; i < pieces; i++) text += chunk(bodyText() || 'x', pick(['', ';a', ';a=b', ';BITS_POST=1']));
            text += pick(['0\r\n\r\n', '0\r\nT: BITS_POST / HTTP/1.1\r\n\r\n', '0;x=y\r\n\r\n']);
            input += text;
            expected += text;
          }
        }
      }
      const data = Buffer.from(input, 'latin1');
      for (let round = 0; round < 50; round++) {
        const chunks: Buffer[] = [];
        let at = 0;
        while (at < data.length) {
          const size = 1 + Math.floor(rnd() * (rnd() < 0.5 ? 4 : 60));
          chunks.push(isolated(data.subarray(at, at + size)));
          at += size;
        }
        const run = feed(chunks);
        expect(latin1(run.output)).toBe(expand(expected));
        expect(run.reason).toBeNull();
        expect(run.rewritten).toBe(bits);
        expect(run.holding).toBe(false);
      }
    });
  });

  describe('body bytes are zero-copy slices', () => {
    test('a body arriving in its own chunks leaves as the same buffers', () => {
      const t = tracker();
      const pieces: Buffer[] = [];
      t.write(isolated(`BITS_POST /u HTTP/1.1\r\nContent-Length: 2000\r\n\r\n`), (p) => pieces.push(p));
      pieces.length = 0;
      const first = isolated('B'.repeat(1000));
      const second = isolated(`${REQUEST_LINE_TEXT}${'x'.repeat(1000 - REQUEST_LINE_TEXT.length)}`);
      t.write(first, (p) => pieces.push(p));
      t.write(second, (p) => pieces.push(p));
      expect(pieces).toHaveLength(2);
      expect(pieces[0]).toBe(first);
      expect(pieces[1]).toBe(second);
      expect(t.rewritten).toBe(1);
    });

    test('the body after a rewritten head shares the memory of the chunk it came in', () => {
      const t = tracker();
      const pieces: Buffer[] = [];
      const body = `BITS_POST / HTTP/1.1\r\n${'y'.repeat(200)}`;
      const data = isolated(`BITS_POST /u HTTP/1.1\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      t.write(data, (p) => pieces.push(p));
      expect(latin1(Buffer.concat(pieces))).toBe(
        expand(`POST /u HTTP/1.1\r\n${M}Content-Length: ${body.length}\r\n\r\n${body}`),
      );
      const last = pieces[pieces.length - 1] as Buffer;
      expect(last.buffer).toBe(data.buffer);
      expect(latin1(last).endsWith(body)).toBe(true);
      expect(last.byteOffset + last.length).toBe(data.byteOffset + data.length);
      // Only the rewritten head is new memory.
      const copied = pieces.filter((p) => p.buffer !== data.buffer);
      expect(copied).toHaveLength(1);
      expect(latin1(copied[0] as Buffer)).toBe(expand(`POST /u HTTP/1.1\r\n${M}`));
    });

    test('chunked data leaves as slices of the chunks it came in', () => {
      const t = tracker();
      const pieces: Buffer[] = [];
      t.write(isolated(CHUNKED_HEAD), (p) => pieces.push(p));
      pieces.length = 0;
      const data = isolated(`${chunk('BITS_POST / HTTP/1.1\r\n'.repeat(10))}0\r\n\r\n`);
      const tail = isolated(BITS());
      t.write(data, (p) => pieces.push(p));
      expect(pieces).toEqual([data]);
      expect(pieces[0]).toBe(data);
      pieces.length = 0;
      t.write(tail, (p) => pieces.push(p));
      expect(latin1(Buffer.concat(pieces))).toBe(expand(BITS_OUT()));
    });

    test('an untouched chunk leaves as itself, before and after passthrough', () => {
      const t = tracker();
      const pieces: Buffer[] = [];
      const get = isolated('GET / HTTP/1.1\r\nHost: h\r\n\r\n');
      t.write(get, (p) => pieces.push(p));
      expect(pieces).toHaveLength(1);
      expect(pieces[0]).toBe(get);
      const bad = isolated('GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n');
      t.write(bad, (p) => pieces.push(p));
      expect(t.passthroughReason).toBe('invalid-content-length');
      const after = isolated(BITS());
      t.write(after, (p) => pieces.push(p));
      expect(pieces.slice(1)).toHaveLength(2);
      expect(pieces[1]).toBe(bad);
      expect(pieces[2]).toBe(after);
    });
  });

  describe('holding, stop() and counters', () => {
    test('withholds a partial BITS_POST line and releases it rewritten once complete', () => {
      const t = tracker();
      const pieces: Buffer[] = [];
      t.write(Buffer.from('BITS_PO'), (p) => pieces.push(p));
      expect(pieces).toHaveLength(0);
      expect(t.holding).toBe(true);
      t.write(Buffer.from('ST /u HTTP/1.1'), (p) => pieces.push(p));
      expect(pieces).toHaveLength(0);
      expect(t.holding).toBe(true);
      t.write(Buffer.from('\r\nContent-Length: 0\r\n\r\n'), (p) => pieces.push(p));
      expect(t.holding).toBe(false);
      expect(latin1(Buffer.concat(pieces))).toBe(expand(`POST /u HTTP/1.1\r\n${M}Content-Length: 0\r\n\r\n`));
      expect(t.rewritten).toBe(1);
    });

    test('releases a withheld prefix untouched as soon as it stops matching', () => {
      const t = tracker();
      const pieces: Buffer[] = [];
      t.write(Buffer.from('BITS_'), (p) => pieces.push(p));
      expect(pieces).toHaveLength(0);
      t.write(Buffer.from('PUT / HTTP/1.1\r\n'), (p) => pieces.push(p));
      expect(latin1(Buffer.concat(pieces))).toBe('BITS_PUT / HTTP/1.1\r\n');
      expect(t.holding).toBe(false);
      expect(t.passthroughReason).toBeNull();
    });

    test.each(['end-of-stream', 'hold-timeout'] as const)('stop(%s) releases the withheld bytes untouched', (reason) => {
      const t = tracker();
      const pieces: Buffer[] = [];
      t.write(Buffer.from(`GET / HTTP/1.1\r\n\r\nBITS_POST /u HTTP/1`), (p) => pieces.push(p));
      expect(latin1(Buffer.concat(pieces))).toBe('GET / HTTP/1.1\r\n\r\n');
      t.stop(reason, (p) => pieces.push(p));
      expect(latin1(Buffer.concat(pieces))).toBe('GET / HTTP/1.1\r\n\r\nBITS_POST /u HTTP/1');
      expect(t.passthroughReason).toBe(reason);
      expect(t.holding).toBe(false);
      const later = Buffer.from('.1\r\n\r\n');
      t.write(later, (p) => pieces.push(p));
      expect(pieces[pieces.length - 1]).toBe(later);
      expect(t.rewritten).toBe(0);
    });

    test('stop() without withheld bytes emits nothing', () => {
      const t = tracker();
      const pieces: Buffer[] = [];
      t.stop('end-of-stream', (p) => pieces.push(p));
      expect(pieces).toHaveLength(0);
      expect(t.passthroughReason).toBe('end-of-stream');
    });

    test('the first reason sticks', () => {
      const t = tracker();
      t.write(Buffer.from('GET / HTTP/1.1\nX'), () => undefined);
      expect(t.passthroughReason).toBe('bare-line-feed');
      t.stop('end-of-stream', () => undefined);
      expect(t.passthroughReason).toBe('bare-line-feed');
    });

    test('counts rewrites across writes', () => {
      const t = tracker();
      for (let i = 0; i < 5; i++) t.write(Buffer.from(BITS(`/${i}`, 'abc')), () => undefined);
      expect(t.rewritten).toBe(5);
      expect(t.passthroughReason).toBeNull();
    });

    test('a 64-byte line limit still rewrites a short BITS_POST line and counts CRLF', () => {
      // "BITS_POST /" + target + " HTTP/1.1\r\n" is 22 bytes plus the target.
      const exact = `BITS_POST /${'a'.repeat(64 - 22)} HTTP/1.1\r\n`;
      expect(exact).toHaveLength(64);
      expect(feed([Buffer.from(`${exact}\r\n`)], { maxLineLength: 64 }).rewritten).toBe(1);
      const over = `BITS_POST /${'a'.repeat(65 - 22)} HTTP/1.1\r\n`;
      expect(feed([Buffer.from(`${over}\r\n`)], { maxLineLength: 64 }).reason).toBe('line-too-long');
    });
  });
});
