/**
 * A strict HTTP/1.1 request framing tracker that rewrites `BITS_POST` request lines.
 *
 * Node's parser (llhttp) rejects the `BITS_POST` verb before any JavaScript runs
 * (bits-protocol.md §0.1, §2.5). This tracker sits on a connection's inbound byte stream, follows
 * request framing exactly as llhttp does in strict mode, and at a message start that it is certain
 * of rewrites `BITS_POST <target> HTTP/1.x\r\n` into `POST <target> HTTP/1.x\r\n<marker line>`.
 *
 * Safety rule: a rewrite happens only at a position both this tracker and llhttp consider the start
 * of a request. Whenever the tracker cannot frame a message with certainty (CL+TE, odd or duplicate
 * Content-Length, bad chunk sizes, bare LF or CR, obs-fold, oversized lines, Upgrade, CONNECT, an
 * HTTP version other than 1.0/1.1), it stops rewriting for the rest of the connection and hands
 * every further byte through untouched, so llhttp sees exactly what a plain server would see.
 * Body bytes are never copied: they leave as zero-copy slices of the chunk they arrived in.
 */

/** Why a connection stopped being rewritten. */
export type PassthroughReason =
  | 'not-bits-first-request'
  | 'bare-line-feed'
  | 'bare-carriage-return'
  | 'line-too-long'
  | 'invalid-request-line'
  | 'http-version'
  | 'connect'
  | 'h2-preface'
  | 'upgrade'
  | 'obs-fold'
  | 'invalid-header-line'
  | 'invalid-content-length'
  | 'duplicate-content-length'
  | 'transfer-encoding'
  | 'content-length-with-transfer-encoding'
  | 'invalid-chunk-size'
  | 'chunk-extension'
  | 'invalid-chunk-end'
  | 'trailer-framing-header'
  | 'end-of-stream'
  | 'hold-timeout';

/** Options of one tracker. */
export interface FramingTrackerOptions {
  /** The complete marker header line, `Name: value\r\n`, inserted first after a rewritten request line. */
  readonly marker: Buffer;
  /** Longest request line, header line or chunk-size line the tracker follows before it gives up. */
  readonly maxLineLength: number;
  /** Track only connections whose first request is `BITS_POST`. */
  readonly firstRequestOnly: boolean;
}

/** Receives every piece of output, in order. */
export type Emit = (piece: Buffer) => void;

const enum State {
  MessageStart,
  BitsLine,
  RequestLine,
  HeaderLine,
  Body,
  ChunkSizeLine,
  ChunkData,
  ChunkDataCr,
  ChunkDataLf,
  TrailerLine,
  Passthrough,
}

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const HTAB = 0x09;
const COLON = 0x3a;
const SEMICOLON = 0x3b;
const EQUALS = 0x3d;
const DIGIT_0 = 0x30;
const DIGIT_1 = 0x31;
const BITS_PREFIX = Buffer.from('BITS_POST ', 'latin1');
const POST = Buffer.from('POST', 'latin1');
/** ` HTTP/1.` followed by `0` or `1` ends every request line the tracker follows. */
const VERSION_PREFIX = Buffer.from(' HTTP/1.', 'latin1');
const VERSION_LENGTH = VERSION_PREFIX.length + 1;
// Methods (case-sensitive) and field names (lower case, compared case-insensitively) as bytes, so
// that a line is never decoded into a string.
const CONNECT = Buffer.from('CONNECT', 'latin1');
const PRI = Buffer.from('PRI', 'latin1');
const UPGRADE = Buffer.from('upgrade', 'latin1');
const CONTENT_LENGTH = Buffer.from('content-length', 'latin1');
const TRANSFER_ENCODING = Buffer.from('transfer-encoding', 'latin1');
const CHUNKED = Buffer.from('chunked', 'latin1');
// A size of 13 hex digits is already past Number.MAX_SAFE_INTEGER's reach; llhttp overflows later.
const MAX_CHUNK_SIZE_DIGITS = 13;
const MAX_CONTENT_LENGTH_DIGITS = 15;
/**
 * Bytes of a line that readLine scans in JavaScript before it hands the rest to Buffer#indexOf:
 * about where a native call's fixed cost equals the loop's cost per byte (bench/tracker-micro.js).
 */
const SHORT_LINE = 128;
/** RFC 9110 tchar (ALPHA / DIGIT / "!#$%&'*+-.^_`|~") by byte value: 1 for a token character. */
const TOKEN_CHARS = tokenCharTable();

/**
 * Follows one connection's request stream and rewrites `BITS_POST` request lines.
 * Feed it every inbound chunk with {@link FramingTracker.write}; it calls `emit` with the bytes to
 * hand to the HTTP parser.
 *
 * Every inbound byte of every tracked connection passes through `write`, so its line path reads a
 * complete line in place: positions in the chunk, byte-wise comparisons, no strings, no slices.
 * Only a line that spans chunks is copied (into `carry` or `held`); the output's only new buffers
 * are rewritten heads and withheld bytes released untouched. Everything else is the chunk itself or
 * a zero-copy slice of it.
 */
export class FramingTracker {
  private state: State = State.MessageStart;
  /**
   * Bytes withheld from the parser: the start of a `BITS_POST` request line whose end has not
   * arrived yet. Only set between chunks; a line within one chunk is read in place.
   */
  private held: Buffer | null = null;
  /** Bytes of a partial line already emitted, kept only so that the line can be parsed. */
  private carry: Buffer | null = null;
  /** During `write`: the position in the chunk before which every byte was emitted (or withheld). */
  private emitFrom = 0;
  private remaining = 0;
  private contentLength = -1;
  private chunked = false;
  private firstMessage = true;
  private reasonValue: PassthroughReason | null = null;
  private rewrittenCount = 0;
  private readonly maxLineLength: number;

  constructor(private readonly options: FramingTrackerOptions) {
    this.maxLineLength = options.maxLineLength;
  }

  /** True while bytes of a `BITS_POST` request line are withheld waiting for the rest of the line. */
  get holding(): boolean {
    return this.held !== null;
  }

  /** Why the tracker stopped rewriting, or `null` while it still tracks. */
  get passthroughReason(): PassthroughReason | null {
    return this.reasonValue;
  }

  private get stopped(): boolean {
    return this.state === State.Passthrough;
  }

  /** How many request lines this tracker rewrote. */
  get rewritten(): number {
    return this.rewrittenCount;
  }

  /**
   * Stops rewriting for good and releases any withheld bytes untouched (end of stream, timeout).
   */
  stop(reason: PassthroughReason, emit: Emit): void {
    const held = this.held;
    this.held = null;
    this.bail(reason);
    if (held !== null) emit(held);
  }

  /** Processes one inbound chunk, emitting what the HTTP parser should see. */
  write(chunk: Buffer, emit: Emit): void {
    if (this.stopped) {
      emit(chunk);
      return;
    }
    const end = chunk.length;
    let pos = 0;
    this.emitFrom = 0;
    while (pos < end && !this.stopped) {
      switch (this.state) {
        case State.MessageStart:
          pos = this.startMessage(chunk, pos);
          break;
        case State.BitsLine:
          pos = this.readBitsLine(chunk, pos, emit);
          break;
        case State.Body:
          pos = this.skipBody(chunk, pos);
          break;
        case State.ChunkData:
          pos = this.skipChunkData(chunk, pos);
          break;
        case State.ChunkDataCr:
        case State.ChunkDataLf:
          pos = this.readChunkDataEnd(chunk, pos);
          break;
        default:
          pos = this.readLine(chunk, pos);
      }
    }
    // Everything not emitted or withheld yet leaves untouched, without a copy.
    const from = this.emitFrom;
    if (from < end) emit(from === 0 ? chunk : chunk.subarray(from));
  }

  /** Emits the bytes of the chunk from `emitFrom` up to `to`, as a zero-copy slice. */
  private emitUpTo(chunk: Buffer, to: number, emit: Emit): void {
    if (this.emitFrom < to) emit(chunk.subarray(this.emitFrom, to));
    this.emitFrom = to;
  }

  /** Skips the CR/LF run before a request line and picks the state for the line. */
  private startMessage(chunk: Buffer, pos: number): number {
    const end = chunk.length;
    // llhttp skips any run of CR and LF before a request line (RFC 9112 §2.2).
    while (pos < end && (chunk[pos] === CR || chunk[pos] === LF)) pos++;
    if (pos === end) return pos;
    // The line is not consumed here: the line states read it from its first byte.
    if (chunk[pos] === BITS_PREFIX[0]) this.state = State.BitsLine;
    else if (this.startOtherRequest()) this.state = State.RequestLine;
    return pos;
  }

  /** Decides the fate of a message start that cannot be `BITS_POST`. Returns false on passthrough. */
  private startOtherRequest(): boolean {
    if (this.firstMessage && this.options.firstRequestOnly) {
      this.bail('not-bits-first-request');
      return false;
    }
    this.firstMessage = false;
    return true;
  }

  /**
   * Reads a request line that may be `BITS_POST`: from its first byte at `pos`, or, when bytes of it
   * are withheld, from the start of the chunk. Returns the new position.
   */
  private readBitsLine(chunk: Buffer, pos: number, emit: Emit): number {
    const heldLength = this.held === null ? 0 : this.held.length;
    if (!continuesBitsPrefix(chunk, pos, heldLength)) return this.readOtherRequestLine(pos, emit);
    const lf = chunk.indexOf(LF, pos);
    const lineEnd = lf === -1 ? chunk.length : lf + 1;
    // A BITS_POST line counts its CRLF against the limit (unlike readLine, which counts the CR only).
    if (heldLength + (lineEnd - pos) > this.maxLineLength) {
      this.releaseHeld('line-too-long', emit);
      return lineEnd;
    }
    if (lf === -1) {
      this.holdRest(chunk, pos, emit);
      return lineEnd;
    }
    return this.completeBitsLine(chunk, pos, lineEnd, emit);
  }

  /**
   * The line turned out not to be `BITS_POST`: hand any withheld bytes through untouched and read the
   * line as an ordinary request line, in place when it started in this chunk.
   */
  private readOtherRequestLine(pos: number, emit: Emit): number {
    const held = this.held;
    this.held = null;
    if (!this.startOtherRequest()) {
      if (held !== null) emit(held);
      return pos;
    }
    this.state = State.RequestLine;
    if (held !== null) {
      emit(held);
      // Already emitted; kept only so that readLine sees the whole line.
      this.carry = held;
    }
    return pos;
  }

  /** Stops rewriting and hands the withheld bytes, if any, through untouched. */
  private releaseHeld(reason: PassthroughReason, emit: Emit): void {
    const held = this.held;
    this.held = null;
    // Passthrough first, so that the output callback knows of it before the parser sees the bytes.
    this.bail(reason);
    if (held !== null) emit(held);
  }

  /** The chunk ends inside a `BITS_POST` line: withhold the line so far (a copy: the chunk is not kept). */
  private holdRest(chunk: Buffer, pos: number, emit: Emit): void {
    const rest = chunk.subarray(pos);
    if (this.held === null) {
      this.emitUpTo(chunk, pos, emit);
      this.held = Buffer.from(rest);
    } else {
      this.held = Buffer.concat([this.held, rest]);
    }
    this.emitFrom = chunk.length;
  }

  /**
   * A complete line starting `BITS_POST ` ends at `lineEnd` (after its LF): rewrite it, or stop when it
   * is not a valid request line.
   */
  private completeBitsLine(chunk: Buffer, pos: number, lineEnd: number, emit: Emit): number {
    const held = this.held;
    // Only a line that spans chunks is joined (copied); a line within the chunk is read in place.
    const line = held === null ? chunk : Buffer.concat([held, chunk.subarray(pos, lineEnd)]);
    const start = held === null ? pos : 0;
    const end = held === null ? lineEnd : line.length;
    if (!isValidBitsRequestLine(line, start, end)) {
      // The rest of the line leaves with the chunk, after the withheld start.
      this.releaseHeld(line[end - 2] === CR ? 'invalid-request-line' : 'bare-line-feed', emit);
      return lineEnd;
    }
    this.held = null;
    this.emitUpTo(chunk, pos, emit);
    // "BITS_POST /t HTTP/1.1\r\n" -> "POST /t HTTP/1.1\r\n" + marker line, as one new small buffer.
    emit(Buffer.concat([POST, line.subarray(start + BITS_PREFIX.length - 1, end), this.options.marker]));
    this.emitFrom = lineEnd;
    this.rewrittenCount++;
    this.firstMessage = false;
    this.beginHeaders();
    return lineEnd;
  }

  private skipBody(chunk: Buffer, pos: number): number {
    const take = Math.min(this.remaining, chunk.length - pos);
    this.remaining -= take;
    if (this.remaining === 0) this.endOfMessage();
    return pos + take;
  }

  private skipChunkData(chunk: Buffer, pos: number): number {
    const take = Math.min(this.remaining, chunk.length - pos);
    this.remaining -= take;
    if (this.remaining === 0) this.state = State.ChunkDataCr;
    return pos + take;
  }

  /** The CRLF after a chunk's data, one byte at a time (it may be split across chunks). */
  private readChunkDataEnd(chunk: Buffer, pos: number): number {
    const expectCr = this.state === State.ChunkDataCr;
    if (chunk[pos] !== (expectCr ? CR : LF)) {
      this.bail('invalid-chunk-end');
      return pos;
    }
    this.state = expectCr ? State.ChunkDataLf : State.ChunkSizeLine;
    return pos + 1;
  }

  /** Reads (part of) one CRLF-terminated line in a line state. Returns the new position. */
  private readLine(chunk: Buffer, pos: number): number {
    const end = chunk.length;
    // One pass finds the LF and the first CR. On the short lines of a request head this loop is
    // several times cheaper than native indexOf calls; CR and LF are both below 0x0e, which most
    // bytes are not.
    const scanEnd = Math.min(end, pos + SHORT_LINE);
    let firstCr = -1;
    let lf = pos;
    for (; lf < scanEnd; lf++) {
      const c = chunk[lf] as number;
      if (c > CR) continue;
      if (c === LF) break;
      if (c === CR && firstCr === -1) firstCr = lf;
    }
    if (lf === scanEnd && scanEnd < end) {
      // A long line (a big cookie, a long URL): native memchr is faster per byte than the loop.
      lf = chunk.indexOf(LF, scanEnd);
      if (lf === -1) lf = end;
      // Only a line ending in CR needs its first CR, and then this search stops within the line.
      else if (firstCr === -1 && chunk[lf - 1] === CR) firstCr = chunk.indexOf(CR, scanEnd);
    }
    if (lf === end) {
      this.carryPartialLine(chunk, pos);
      return end;
    }
    if (this.carry === null) {
      this.onLine(chunk, pos, lf, firstCr);
    } else {
      const line = Buffer.concat([this.carry, chunk.subarray(pos, lf)]);
      this.carry = null;
      this.onLine(line, 0, line.length, line.indexOf(CR));
    }
    return lf + 1;
  }

  /** The chunk ends inside a line: keep a copy of the part so far (already emitted) to parse it later. */
  private carryPartialLine(chunk: Buffer, pos: number): void {
    const carried = this.carry === null ? 0 : this.carry.length;
    if (carried + chunk.length - pos > this.maxLineLength) {
      this.bail('line-too-long');
      return;
    }
    const rest = chunk.subarray(pos);
    this.carry = this.carry === null ? Buffer.from(rest) : Buffer.concat([this.carry, rest]);
  }

  /**
   * One complete line `line[start..lf)` (without its LF), whose first CR is at `firstCr` (-1: none):
   * checks the line ending, then hands the content (without CRLF) to the current state.
   */
  private onLine(line: Buffer, start: number, lf: number, firstCr: number): void {
    if (lf - start > this.maxLineLength) {
      this.bail('line-too-long');
      return;
    }
    if (lf === start || line[lf - 1] !== CR) {
      this.bail('bare-line-feed');
      return;
    }
    const end = lf - 1;
    if (firstCr < end) {
      // A lenient parser would end the line there; a strict one rejects it. Either way, stop.
      this.bail('bare-carriage-return');
      return;
    }
    switch (this.state) {
      case State.RequestLine:
        this.onRequestLine(line, start, end);
        break;
      case State.HeaderLine:
        this.onHeaderLine(line, start, end);
        break;
      case State.ChunkSizeLine:
        this.onChunkSizeLine(line, start, end);
        break;
      case State.TrailerLine:
        this.onTrailerLine(line, start, end);
        break;
      default:
        break;
    }
  }

  /** `line[start..end)` is a request line (not `BITS_POST`) without its CRLF. */
  private onRequestLine(line: Buffer, start: number, end: number): void {
    const sp = indexOfByte(line, SP, start, end);
    if (sp === -1 || sp === start) {
      this.bail('invalid-request-line');
      return;
    }
    const methodLength = sp - start;
    if (methodLength === CONNECT.length && equalsAt(line, start, CONNECT)) {
      this.bail('connect');
      return;
    }
    if (methodLength === PRI.length && equalsAt(line, start, PRI)) {
      this.bail('h2-preface');
      return;
    }
    if (!endsWithVersion(line, start, end)) {
      this.bail('http-version');
      return;
    }
    this.beginHeaders();
  }

  private beginHeaders(): void {
    this.state = State.HeaderLine;
    this.contentLength = -1;
    this.chunked = false;
  }

  /** `line[start..end)` is a header line without its CRLF (empty: the end of the head). */
  private onHeaderLine(line: Buffer, start: number, end: number): void {
    if (start === end) {
      this.endOfHeaders();
      return;
    }
    const colon = this.fieldColon(line, start, end);
    if (colon === -1) return;
    // Only three names matter; their lengths rule out almost every other header without a comparison.
    switch (colon - start) {
      case UPGRADE.length:
        if (equalsLowercaseAt(line, start, UPGRADE)) this.bail('upgrade');
        return;
      case CONTENT_LENGTH.length:
        if (equalsLowercaseAt(line, start, CONTENT_LENGTH)) this.onContentLength(line, colon + 1, end);
        return;
      case TRANSFER_ENCODING.length:
        if (equalsLowercaseAt(line, start, TRANSFER_ENCODING)) this.onTransferEncoding(line, colon + 1, end);
        return;
      default:
    }
  }

  /**
   * The colon of a non-empty header or trailer line, or -1 after stopping on a line that cannot be
   * a field: obs-fold, no colon, or whitespace before the colon. A strict llhttp refuses such a
   * line, but a lenient one (insecureHTTPParser) reads `Content-Length : 5` as a Content-Length,
   * which this tracker would not, and a BITS_POST rewritten inside that body would smuggle a request.
   */
  private fieldColon(line: Buffer, start: number, end: number): number {
    if (line[start] === SP || line[start] === HTAB) {
      this.bail('obs-fold');
      return -1;
    }
    const colon = fieldNameEnd(line, start, end);
    if (colon === -1) this.bail('invalid-header-line');
    return colon;
  }

  /** `line[from..end)` is the value of a Content-Length header. */
  private onContentLength(line: Buffer, from: number, end: number): void {
    if (this.contentLength !== -1) {
      // llhttp rejects a second Content-Length even with the same value.
      this.bail('duplicate-content-length');
      return;
    }
    if (this.chunked) {
      this.bail('content-length-with-transfer-encoding');
      return;
    }
    const value = parseDigits(line, from, end);
    if (value < 0) {
      this.bail('invalid-content-length');
      return;
    }
    this.contentLength = value;
  }

  /** `line[from..end)` is the value of a Transfer-Encoding header. */
  private onTransferEncoding(line: Buffer, from: number, end: number): void {
    if (this.chunked) {
      this.bail('transfer-encoding');
      return;
    }
    if (this.contentLength !== -1) {
      this.bail('content-length-with-transfer-encoding');
      return;
    }
    if (!isChunked(line, from, end)) {
      this.bail('transfer-encoding');
      return;
    }
    this.chunked = true;
  }

  private endOfHeaders(): void {
    if (this.chunked) {
      this.state = State.ChunkSizeLine;
    } else if (this.contentLength > 0) {
      this.remaining = this.contentLength;
      this.state = State.Body;
    } else {
      this.endOfMessage();
    }
  }

  /** `line[start..end)` is a chunk-size line without its CRLF. */
  private onChunkSizeLine(line: Buffer, start: number, end: number): void {
    let i = start;
    let size = 0;
    while (i < end) {
      const digit = hexValue(line[i] as number);
      if (digit < 0) break;
      size = size * 16 + digit;
      i++;
    }
    const digits = i - start;
    if (digits === 0 || digits > MAX_CHUNK_SIZE_DIGITS) {
      this.bail('invalid-chunk-size');
      return;
    }
    if (i < end && !isSimpleChunkExtension(line, i, end)) {
      this.bail('chunk-extension');
      return;
    }
    if (size === 0) {
      this.state = State.TrailerLine;
    } else {
      this.remaining = size;
      this.state = State.ChunkData;
    }
  }

  /** `line[start..end)` is a trailer line without its CRLF (empty: the end of the message). */
  private onTrailerLine(line: Buffer, start: number, end: number): void {
    if (start === end) {
      this.endOfMessage();
      return;
    }
    const colon = this.fieldColon(line, start, end);
    if (colon === -1) return;
    const nameLength = colon - start;
    if (
      (nameLength === CONTENT_LENGTH.length && equalsLowercaseAt(line, start, CONTENT_LENGTH)) ||
      (nameLength === TRANSFER_ENCODING.length && equalsLowercaseAt(line, start, TRANSFER_ENCODING))
    ) {
      this.bail('trailer-framing-header');
    }
  }

  private endOfMessage(): void {
    this.state = State.MessageStart;
  }

  private bail(reason: PassthroughReason): void {
    if (this.reasonValue === null) this.reasonValue = reason;
    this.state = State.Passthrough;
    this.carry = null;
  }
}

/**
 * True when the chunk's bytes from `pos` continue `BITS_POST ` after its first `matched` bytes, as
 * far as the chunk goes (always true once the whole prefix matched).
 */
function continuesBitsPrefix(chunk: Buffer, pos: number, matched: number): boolean {
  const count = Math.min(BITS_PREFIX.length - matched, chunk.length - pos);
  for (let i = 0; i < count; i++) {
    if (chunk[pos + i] !== BITS_PREFIX[matched + i]) return false;
  }
  return true;
}

/**
 * `line[start..end)`, LF included, is `BITS_POST SP request-target SP HTTP/1.x CRLF` with a target
 * of visible ASCII only. The `BITS_POST ` prefix is already known to match.
 */
function isValidBitsRequestLine(line: Buffer, start: number, end: number): boolean {
  if (end - start < BITS_PREFIX.length + 12 || line[end - 1] !== LF || line[end - 2] !== CR) return false;
  const contentEnd = end - 2;
  if (!endsWithVersion(line, start, contentEnd)) return false;
  const targetEnd = contentEnd - VERSION_LENGTH;
  if (targetEnd - start <= BITS_PREFIX.length) return false;
  for (let i = start + BITS_PREFIX.length; i < targetEnd; i++) {
    const c = line[i] as number;
    // Node refuses bytes >= 0x7f in a URL; its error would carry the marker line (err.rawPacket).
    if (c <= SP || c >= 0x7f) return false;
  }
  return true;
}

/** True when the content `line[start..end)` ends with ` HTTP/1.1` or ` HTTP/1.0` after something. */
function endsWithVersion(line: Buffer, start: number, end: number): boolean {
  const at = end - VERSION_LENGTH;
  if (at <= start) return false;
  const minor = line[end - 1];
  return (minor === DIGIT_1 || minor === DIGIT_0) && equalsAt(line, at, VERSION_PREFIX);
}

/** Position of the first `byte` in `line[from..end)`, or -1. */
function indexOfByte(line: Buffer, byte: number, from: number, end: number): number {
  for (let i = from; i < end; i++) {
    if (line[i] === byte) return i;
  }
  return -1;
}

/**
 * Position of the colon that ends the field name starting at `start`, or -1 when there is no colon,
 * the name is empty, or the name contains a space or a tab (all refused alike).
 */
function fieldNameEnd(line: Buffer, start: number, end: number): number {
  for (let i = start; i < end; i++) {
    const c = line[i];
    if (c === COLON) return i === start ? -1 : i;
    if (c === SP || c === HTAB) return -1;
  }
  return -1;
}

/** True when `line` holds exactly the bytes of `expected` at `from`. */
function equalsAt(line: Buffer, from: number, expected: Buffer): boolean {
  for (let i = 0; i < expected.length; i++) {
    if (line[from + i] !== expected[i]) return false;
  }
  return true;
}

/** Case-insensitive comparison of `line` at `from` with a lower-case ASCII name (letters A-Z fold only). */
function equalsLowercaseAt(line: Buffer, from: number, name: Buffer): boolean {
  for (let i = 0; i < name.length; i++) {
    let c = line[from + i] as number;
    if (c >= 0x41 && c <= 0x5a) c += 0x20;
    if (c !== name[i]) return false;
  }
  return true;
}

/**
 * True when the value `line[from..end)` is `chunked` in any letter case, with any spaces (not tabs)
 * around it: what llhttp accepts strictly.
 */
function isChunked(line: Buffer, from: number, end: number): boolean {
  let first = from;
  while (first < end && line[first] === SP) first++;
  let last = end;
  while (last > first && line[last - 1] === SP) last--;
  return last - first === CHUNKED.length && equalsLowercaseAt(line, first, CHUNKED);
}

/** Parses `SP* DIGIT+ SP*` in `line[from..end)` (what llhttp accepts strictly); -1 for anything else. */
function parseDigits(line: Buffer, from: number, end: number): number {
  let i = from;
  while (i < end && line[i] === SP) i++;
  const start = i;
  let value = 0;
  while (i < end) {
    const c = line[i] as number;
    if (c < 0x30 || c > 0x39) break;
    value = value * 10 + (c - 0x30);
    i++;
  }
  const digits = i - start;
  while (i < end && line[i] === SP) i++;
  if (digits === 0 || digits > MAX_CONTENT_LENGTH_DIGITS || i !== end) return -1;
  return value;
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  return -1;
}

/** `line[from..end)` is `;name` or `;name=value` repeated, token characters only: no spaces, no quoted strings. */
function isSimpleChunkExtension(line: Buffer, from: number, end: number): boolean {
  if (line[from] !== SEMICOLON) return false;
  for (let i = from; i < end; i++) {
    const c = line[i] as number;
    if (c === SEMICOLON || c === EQUALS) continue;
    if (TOKEN_CHARS[c] !== 1) return false;
  }
  return true;
}

function tokenCharTable(): Uint8Array {
  const table = new Uint8Array(256);
  const mark = (from: number, to: number): void => {
    for (let c = from; c <= to; c++) table[c] = 1;
  };
  mark(0x30, 0x39);
  mark(0x41, 0x5a);
  mark(0x61, 0x7a);
  for (const c of "!#$%&'*+-.^_`|~") table[c.charCodeAt(0)] = 1;
  return table;
}
