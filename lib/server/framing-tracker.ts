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
const BITS_PREFIX = Buffer.from('BITS_POST ', 'latin1');
const POST = Buffer.from('POST', 'latin1');
const HTTP_10 = Buffer.from(' HTTP/1.0', 'latin1');
const HTTP_11 = Buffer.from(' HTTP/1.1', 'latin1');
// A size of 13 hex digits is already past Number.MAX_SAFE_INTEGER's reach; llhttp overflows later.
const MAX_CHUNK_SIZE_DIGITS = 13;
const MAX_CONTENT_LENGTH_DIGITS = 15;

/**
 * Follows one connection's request stream and rewrites `BITS_POST` request lines.
 * Feed it every inbound chunk with {@link FramingTracker.write}; it calls `emit` with the bytes to
 * hand to the HTTP parser.
 */
export class FramingTracker {
  private state: State = State.MessageStart;
  /** Bytes withheld from the parser: a (possibly partial) `BITS_POST` request line. */
  private held: Buffer | null = null;
  /** Bytes of a partial line already emitted, kept only so that the line can be parsed. */
  private carry: Buffer | null = null;
  private remaining = 0;
  private contentLength = -1;
  private chunked = false;
  private firstMessage = true;
  private reasonValue: PassthroughReason | null = null;
  private rewrittenCount = 0;

  constructor(private readonly options: FramingTrackerOptions) {}

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
    let emitFrom = 0;
    while (pos < end && !this.stopped) {
      switch (this.state) {
        case State.MessageStart: {
          // llhttp skips any run of CR and LF before a request line (RFC 9112 §2.2).
          while (pos < end && (chunk[pos] === CR || chunk[pos] === LF)) pos++;
          if (pos === end) break;
          if (chunk[pos] === BITS_PREFIX[0]) {
            if (emitFrom < pos) emit(chunk.subarray(emitFrom, pos));
            emitFrom = pos;
            this.state = State.BitsLine;
            this.held = Buffer.alloc(0);
          } else {
            if (!this.startOtherRequest()) break;
            this.state = State.RequestLine;
          }
          break;
        }
        case State.BitsLine: {
          const consumed = this.continueBitsLine(chunk, pos, emit);
          if (this.state === State.BitsLine) {
            // Everything up to the end of the chunk is withheld.
            pos = end;
            emitFrom = end;
          } else {
            pos += consumed;
            // A rewrite emitted its own head; an abandoned hold was emitted untouched.
            emitFrom = pos;
          }
          break;
        }
        case State.Body: {
          const take = Math.min(this.remaining, end - pos);
          pos += take;
          this.remaining -= take;
          if (this.remaining === 0) this.endOfMessage();
          break;
        }
        case State.ChunkData: {
          const take = Math.min(this.remaining, end - pos);
          pos += take;
          this.remaining -= take;
          if (this.remaining === 0) this.state = State.ChunkDataCr;
          break;
        }
        case State.ChunkDataCr:
        case State.ChunkDataLf: {
          const expected = this.state === State.ChunkDataCr ? CR : LF;
          if (chunk[pos] !== expected) {
            this.bail('invalid-chunk-end');
            break;
          }
          pos++;
          this.state = this.state === State.ChunkDataCr ? State.ChunkDataLf : State.ChunkSizeLine;
          break;
        }
        default:
          pos = this.readLine(chunk, pos);
      }
    }
    // Withheld bytes moved emitFrom to the end; everything else leaves untouched, without a copy.
    if (emitFrom < end) emit(emitFrom === 0 ? chunk : chunk.subarray(emitFrom));
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
   * Extends the withheld `BITS_POST` line with bytes from `chunk` at `pos`. Returns how many bytes of
   * the chunk it consumed once the hold is resolved (rewritten or released).
   */
  private continueBitsLine(chunk: Buffer, pos: number, emit: Emit): number {
    const held = this.held as Buffer;
    // Still matching the verb itself?
    if (held.length < BITS_PREFIX.length) {
      let i = 0;
      while (held.length + i < BITS_PREFIX.length && pos + i < chunk.length) {
        if (chunk[pos + i] !== BITS_PREFIX[held.length + i]) {
          return this.releaseHold(chunk, pos, i, emit);
        }
        i++;
      }
    }
    const lf = chunk.indexOf(LF, pos);
    const upTo = lf === -1 ? chunk.length : lf + 1;
    if (held.length + (upTo - pos) > this.options.maxLineLength) {
      return this.releaseHold(chunk, pos, upTo - pos, emit, 'line-too-long');
    }
    const line = Buffer.concat([held, chunk.subarray(pos, upTo)]);
    if (lf === -1) {
      this.held = line;
      return chunk.length - pos;
    }
    this.held = null;
    if (!isValidBitsRequestLine(line)) {
      emit(line);
      this.bail(line[line.length - 2] === CR ? 'invalid-request-line' : 'bare-line-feed');
      return upTo - pos;
    }
    // "BITS_POST /t HTTP/1.1\r\n" -> "POST /t HTTP/1.1\r\n" + marker line, as one new small buffer.
    emit(Buffer.concat([POST, line.subarray(BITS_PREFIX.length - 1), this.options.marker]));
    this.rewrittenCount++;
    this.firstMessage = false;
    this.beginHeaders();
    return upTo - pos;
  }

  /**
   * The withheld bytes turned out not to be a `BITS_POST` request line: hand them through untouched
   * and parse the line as an ordinary request line. `take` bytes of the chunk at `pos` are consumed
   * as part of the released prefix.
   */
  private releaseHold(chunk: Buffer, pos: number, take: number, emit: Emit, reason?: PassthroughReason): number {
    const released = Buffer.concat([this.held as Buffer, chunk.subarray(pos, pos + take)]);
    this.held = null;
    emit(released);
    if (reason !== undefined) {
      this.bail(reason);
      return take;
    }
    if (!this.startOtherRequest()) return take;
    this.state = State.RequestLine;
    this.carry = released;
    return take;
  }

  /** Reads (part of) one CRLF-terminated line in a line state. Returns the new position. */
  private readLine(chunk: Buffer, pos: number): number {
    const lf = chunk.indexOf(LF, pos);
    if (lf === -1) {
      const carried = this.carry === null ? 0 : this.carry.length;
      if (carried + chunk.length - pos > this.options.maxLineLength) {
        this.bail('line-too-long');
        return chunk.length;
      }
      const rest = chunk.subarray(pos);
      this.carry = this.carry === null ? Buffer.from(rest) : Buffer.concat([this.carry, rest]);
      return chunk.length;
    }
    let line = chunk.subarray(pos, lf);
    if (this.carry !== null) {
      line = Buffer.concat([this.carry, line]);
      this.carry = null;
    }
    if (line.length > this.options.maxLineLength) {
      this.bail('line-too-long');
      return lf + 1;
    }
    if (line.length === 0 || line[line.length - 1] !== CR) {
      this.bail('bare-line-feed');
      return lf + 1;
    }
    const content = line.subarray(0, line.length - 1);
    if (content.indexOf(CR) !== -1) {
      // A lenient parser would end the line there; a strict one rejects it. Either way, stop.
      this.bail('bare-carriage-return');
      return lf + 1;
    }
    switch (this.state) {
      case State.RequestLine:
        this.onRequestLine(content);
        break;
      case State.HeaderLine:
        this.onHeaderLine(content);
        break;
      case State.ChunkSizeLine:
        this.onChunkSizeLine(content);
        break;
      case State.TrailerLine:
        this.onTrailerLine(content);
        break;
      default:
        break;
    }
    return lf + 1;
  }

  private onRequestLine(content: Buffer): void {
    const sp = content.indexOf(SP);
    if (sp <= 0) {
      this.bail('invalid-request-line');
      return;
    }
    const method = content.toString('latin1', 0, sp);
    if (method === 'CONNECT') {
      this.bail('connect');
      return;
    }
    if (method === 'PRI') {
      this.bail('h2-preface');
      return;
    }
    if (!endsWithVersion(content)) {
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

  private onHeaderLine(content: Buffer): void {
    if (content.length === 0) {
      this.endOfHeaders();
      return;
    }
    if (content[0] === SP || content[0] === HTAB) {
      this.bail('obs-fold');
      return;
    }
    const colon = content.indexOf(COLON);
    if (colon <= 0 || hasWhitespace(content, colon)) {
      // Whitespace before the colon: strict llhttp refuses the line, but a lenient one
      // (insecureHTTPParser) reads `Content-Length : 5` as a Content-Length, which this tracker
      // would not, and a BITS_POST rewritten inside that body would smuggle a request. Stop.
      this.bail('invalid-header-line');
      return;
    }
    switch (colon) {
      case 7:
        if (equalsLowercase(content, 0, 'upgrade')) this.bail('upgrade');
        return;
      case 14:
        if (equalsLowercase(content, 0, 'content-length')) this.onContentLength(content, colon + 1);
        return;
      case 17:
        if (equalsLowercase(content, 0, 'transfer-encoding')) this.onTransferEncoding(content, colon + 1);
        return;
      default:
    }
  }

  private onContentLength(content: Buffer, from: number): void {
    if (this.contentLength !== -1) {
      // llhttp rejects a second Content-Length even with the same value.
      this.bail('duplicate-content-length');
      return;
    }
    if (this.chunked) {
      this.bail('content-length-with-transfer-encoding');
      return;
    }
    const value = parseDigits(content, from);
    if (value < 0) {
      this.bail('invalid-content-length');
      return;
    }
    this.contentLength = value;
  }

  private onTransferEncoding(content: Buffer, from: number): void {
    if (this.chunked) {
      this.bail('transfer-encoding');
      return;
    }
    if (this.contentLength !== -1) {
      this.bail('content-length-with-transfer-encoding');
      return;
    }
    const value = content.toString('latin1', from).replace(/^ +| +$/g, '');
    if (value.toLowerCase() !== 'chunked') {
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

  private onChunkSizeLine(content: Buffer): void {
    let i = 0;
    let size = 0;
    while (i < content.length) {
      const digit = hexValue(content[i] as number);
      if (digit < 0) break;
      size = size * 16 + digit;
      i++;
    }
    if (i === 0 || i > MAX_CHUNK_SIZE_DIGITS) {
      this.bail('invalid-chunk-size');
      return;
    }
    if (i < content.length && !isSimpleChunkExtension(content, i)) {
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

  private onTrailerLine(content: Buffer): void {
    if (content.length === 0) {
      this.endOfMessage();
      return;
    }
    if (content[0] === SP || content[0] === HTAB) {
      this.bail('obs-fold');
      return;
    }
    const colon = content.indexOf(COLON);
    if (colon <= 0 || hasWhitespace(content, colon)) {
      // As in onHeaderLine: a field name with whitespace is refused or misread; stop.
      this.bail('invalid-header-line');
      return;
    }
    if (
      (colon === 14 && equalsLowercase(content, 0, 'content-length')) ||
      (colon === 17 && equalsLowercase(content, 0, 'transfer-encoding'))
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

/** `BITS_POST SP request-target SP HTTP/1.x CRLF`, target of visible ASCII only. */
function isValidBitsRequestLine(line: Buffer): boolean {
  const length = line.length;
  if (length < BITS_PREFIX.length + 12 || line[length - 1] !== LF || line[length - 2] !== CR) return false;
  const content = line.subarray(0, length - 2);
  if (!endsWithVersion(content)) return false;
  const targetEnd = content.length - HTTP_11.length;
  if (targetEnd <= BITS_PREFIX.length) return false;
  for (let i = BITS_PREFIX.length; i < targetEnd; i++) {
    const c = content[i] as number;
    // Node refuses bytes >= 0x7f in a URL; its error would carry the marker line (err.rawPacket).
    if (c <= SP || c >= 0x7f) return false;
  }
  return true;
}

function endsWithVersion(content: Buffer): boolean {
  const at = content.length - HTTP_11.length;
  if (at <= 0) return false;
  return content.subarray(at).equals(HTTP_11) || content.subarray(at).equals(HTTP_10);
}

/** True when `content[0..end)` (a field name) contains a space or a tab. */
function hasWhitespace(content: Buffer, end: number): boolean {
  for (let i = 0; i < end; i++) {
    const c = content[i] as number;
    if (c === SP || c === HTAB) return true;
  }
  return false;
}

/** Case-insensitive comparison of `content[from..]` with a lower-case ASCII name. */
function equalsLowercase(content: Buffer, from: number, name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    let c = content[from + i] as number;
    if (c >= 0x41 && c <= 0x5a) c += 0x20;
    if (c !== name.charCodeAt(i)) return false;
  }
  return true;
}

/** Parses `SP* DIGIT+ SP*` (what llhttp accepts strictly); returns -1 for anything else. */
function parseDigits(content: Buffer, from: number): number {
  let i = from;
  const end = content.length;
  while (i < end && content[i] === SP) i++;
  const start = i;
  let value = 0;
  while (i < end) {
    const c = content[i] as number;
    if (c < 0x30 || c > 0x39) break;
    value = value * 10 + (c - 0x30);
    i++;
  }
  const digits = i - start;
  while (i < end && content[i] === SP) i++;
  if (digits === 0 || digits > MAX_CONTENT_LENGTH_DIGITS || i !== end) return -1;
  return value;
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  return -1;
}

/** `;name` or `;name=value` repeated, token characters only: no spaces, no quoted strings. */
function isSimpleChunkExtension(content: Buffer, from: number): boolean {
  if (content[from] !== 0x3b) return false;
  for (let i = from; i < content.length; i++) {
    const c = content[i] as number;
    if (c === 0x3b || c === 0x3d) continue;
    if (!isTokenChar(c)) return false;
  }
  return true;
}

function isTokenChar(c: number): boolean {
  // RFC 9110 tchar: ALPHA / DIGIT / "!#$%&'*+-.^_`|~"
  if ((c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)) return true;
  return "!#$%&'*+-.^_`|~".includes(String.fromCharCode(c));
}
