/**
 * Generates HTTP/1.1 request streams for the BITS_POST differential fuzz: structured messages
 * (GET/POST/PUT/BITS_POST/..., Content-Length and chunked bodies, HTTP/1.0 and 1.1, pipelining)
 * serialised to bytes, then optionally mutated, then split into delivery chunks.
 *
 * Everything is a latin1 string until the end, so one character is one byte.
 */
import { Prng } from './fuzz-prng';

export interface HeaderField {
  name: string;
  /** The colon and the whitespace after it. */
  sep: string;
  value: string;
}

export interface ChunkPart {
  size: string;
  ext: string;
  data: string;
  /** What follows the data: normally CRLF. */
  end: string;
}

export type Body =
  | { kind: 'none'; extra: string }
  | { kind: 'length'; data: string }
  | { kind: 'chunked'; chunks: ChunkPart[]; last: string; trailers: HeaderField[] };

export interface Message {
  lead: string;
  method: string;
  target: string;
  version: string;
  /** When set, replaces the whole request line (without its CRLF). */
  line: string | null;
  headers: HeaderField[];
  body: Body;
}

export interface GeneratedStream {
  /** The bytes the shimmed server receives. */
  readonly bytes: Buffer;
  /** Sizes of the delivery chunks, summing to `bytes.length`. */
  readonly chunks: number[];
  /** Names of the mutations applied; empty for a well-formed stream. */
  readonly mutations: string[];
  readonly messages: number;
}

const LATIN1 = 'latin1';

/** Strings that make body and header bytes look like message starts or framing. */
const BAIT = [
  'BITS_POST / HTTP/1.1\r\nHost: x\r\n\r\n',
  'BITS_POST /upload/evil HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello',
  'BITS_POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
  'BITS_POST / HTTP/1.0\r\n\r\n',
  'GET /smuggled HTTP/1.1\r\nHost: y\r\n\r\n',
  'POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc',
  '\r\n0\r\n\r\n',
  '0\r\n\r\n',
  'Content-Length: 0\r\n',
  'Transfer-Encoding: chunked\r\n',
  '\r\n\r\n',
  '\r\n',
  'BITS_POST ',
  'BITS_',
  ' HTTP/1.1\r\n',
];

const METHODS: ReadonlyArray<readonly [number, string]> = [
  [36, 'BITS_POST'],
  [20, 'POST'],
  [18, 'GET'],
  [10, 'PUT'],
  [3, 'HEAD'],
  [3, 'DELETE'],
  [3, 'OPTIONS'],
  [2, 'PATCH'],
  [2, 'BIND'],
  [1, 'LOCK'],
  [1, 'MKCOL'],
  [1, 'REPORT'],
];

const TARGETS = [
  '/',
  '/upload/file.bin',
  '/BITS_POST',
  '/a?b=c&d=BITS_POST%20/%20HTTP/1.1',
  '/x%20y/z.txt',
  '/very/long/path/to/some/upload/target/that/goes/on/and/on.dat',
  'http://bits.example/upload',
  '/~user/!$&\'()*+,;=:@',
];

const HOSTS = ['example.com', 'bits.example:8080', '127.0.0.1', 'BITS_POST', '[::1]:80'];

const SESSION_ID = '{5C6AE4F4-9D3E-4B3C-8F44-1AD1B1F5F5D1}';

function randomHex(rng: Prng, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += '0123456789abcdef'[rng.int(16)];
  return s;
}

function fromCodes(codes: number[]): string {
  let s = '';
  for (let i = 0; i < codes.length; i += 8192) s += String.fromCharCode(...codes.slice(i, i + 8192));
  return s;
}

/** Random body bytes: printable runs, binary runs and bait. */
export function randomData(rng: Prng, n: number): string {
  if (n === 0) return '';
  if (n > 2048 && rng.chance(0.7)) {
    // Large bodies: mostly filler with a few bait strings, cheap to build.
    const filler = String.fromCharCode(0x41 + rng.int(26)).repeat(n);
    let s = filler;
    const baits = rng.int(4);
    for (let i = 0; i < baits; i++) {
      const at = rng.int(n);
      const b = rng.pick(BAIT);
      s = s.slice(0, at) + b + s.slice(at + b.length);
    }
    return s.slice(0, n);
  }
  let s = '';
  while (s.length < n) {
    const kind = rng.int(10);
    if (kind < 4) {
      const len = rng.range(1, 64);
      const codes: number[] = [];
      for (let i = 0; i < len; i++) codes.push(0x20 + rng.int(95));
      s += fromCodes(codes);
    } else if (kind < 7) {
      const len = rng.range(1, 32);
      const codes: number[] = [];
      for (let i = 0; i < len; i++) codes.push(rng.int(256));
      s += fromCodes(codes);
    } else {
      s += rng.pick(BAIT);
    }
  }
  return s.slice(0, n);
}

function bodySize(rng: Prng): number {
  return rng.weighted<number>([
    [10, 0],
    [35, rng.range(1, 16)],
    [35, rng.range(17, 256)],
    [17, rng.range(257, 4096)],
    [2.5, rng.range(4097, 20000)],
    [0.5, rng.range(20001, 70000)],
  ]);
}

function header(name: string, value: string, sep = ': '): HeaderField {
  return { name, sep, value };
}

function wellFormedSep(rng: Prng): string {
  return rng.weighted<string>([
    [90, ': '],
    [5, ':'],
    [5, ':   '],
  ]);
}

const CL_NAMES = ['Content-Length', 'content-length', 'CONTENT-LENGTH', 'Content-length'];
const TE_NAMES = ['Transfer-Encoding', 'transfer-encoding', 'TRANSFER-ENCODING'];

function extraHeaders(rng: Prng): HeaderField[] {
  const pool: Array<() => HeaderField> = [
    () => header('User-Agent', 'Microsoft BITS/7.8'),
    () => header('BITS-Packet-Type', rng.pick(['Ping', 'Create-Session', 'Fragment', 'Close-Session', 'Cancel-Session'])),
    () => header('BITS-Session-Id', SESSION_ID),
    () => header('BITS-Supported-Protocols', '{7df0354d-249b-430f-820d-3d2a9bef4931}'),
    () => header('Content-Range', `bytes ${rng.int(100)}-${100 + rng.int(100)}/${200 + rng.int(1000)}`),
    () => header('Content-Type', 'application/octet-stream'),
    () => header('Accept', '*/*'),
    () => header('X-Note', 'BITS_POST / HTTP/1.1'),
    () => header('X-Latin1', 'caf\u00e9 \u00ff'),
    () => header('Cookie', 'a=b; c=BITS_POST'),
    () => header('Authorization', 'Negotiate YIIBhgYGKwYBBQUCoIIBejCCAXag'),
    () => header('Accept-Encoding', 'identity'),
    () => header('X-Empty', ''),
  ];
  const out: HeaderField[] = [];
  const n = rng.weighted<number>([
    [30, 0],
    [40, rng.range(1, 3)],
    [25, rng.range(4, 8)],
    [5, rng.range(9, 30)],
  ]);
  for (let i = 0; i < n; i++) {
    const h = rng.pick(pool)();
    h.sep = wellFormedSep(rng);
    if (rng.chance(0.05)) h.value += '  ';
    out.push(h);
  }
  return out;
}

function chunkSizeString(rng: Prng, size: number): string {
  let hex = size.toString(16);
  if (rng.chance(0.2)) hex = hex.toUpperCase();
  if (rng.chance(0.08)) hex = '0'.repeat(rng.range(1, 3)) + hex;
  return hex;
}

function simpleExtension(rng: Prng): string {
  return rng.weighted<string>([
    [75, ''],
    [10, ';a'],
    [8, `;name=${randomHex(rng, 4)}`],
    [4, ';bits=1;x'],
    [3, ";x!#$%&'*+-.^_`|~=v"],
  ]);
}

function chunkedBody(rng: Prng): Body {
  const count = rng.weighted<number>([
    [10, 0],
    [50, rng.range(1, 2)],
    [40, rng.range(3, 6)],
  ]);
  const chunks: ChunkPart[] = [];
  for (let i = 0; i < count; i++) {
    const size = rng.chance(0.9) ? rng.range(1, 200) : rng.range(201, 6000);
    chunks.push({ size: chunkSizeString(rng, size), ext: simpleExtension(rng), data: randomData(rng, size), end: '\r\n' });
  }
  const trailers: HeaderField[] = [];
  if (rng.chance(0.25)) {
    const n = rng.range(1, 2);
    for (let i = 0; i < n; i++) {
      trailers.push(rng.chance(0.5) ? header('X-Checksum', randomHex(rng, 8)) : header('X-Trailer', 'BITS_POST / HTTP/1.1'));
    }
  }
  return { kind: 'chunked', chunks, last: (rng.chance(0.1) ? '000' : '0') + simpleExtension(rng), trailers };
}

/** One well-formed request message. */
function wellFormedMessage(rng: Prng, first: boolean, last: boolean): Message {
  const method = rng.weighted(METHODS);
  const version = rng.chance(0.85) ? 'HTTP/1.1' : 'HTTP/1.0';
  const headers: HeaderField[] = [];
  if (version === 'HTTP/1.1' || rng.chance(0.5)) headers.push(header(rng.pick(['Host', 'host', 'HOST']), rng.pick(HOSTS)));
  headers.push(...extraHeaders(rng));
  const carriesBody = method === 'BITS_POST' || method === 'POST' || method === 'PUT' || method === 'PATCH';
  let body: Body = { kind: 'none', extra: '' };
  const roll = rng.float();
  if (carriesBody ? roll < 0.55 : roll < 0.08) {
    const data = randomData(rng, bodySize(rng));
    headers.splice(rng.int(headers.length + 1), 0, header(rng.pick(CL_NAMES), String(data.length), wellFormedSep(rng)));
    body = { kind: 'length', data };
  } else if (carriesBody && version === 'HTTP/1.1' && roll < 0.85) {
    headers.splice(rng.int(headers.length + 1), 0, header(rng.pick(TE_NAMES), rng.pick(['chunked', 'chunked', 'Chunked']), wellFormedSep(rng)));
    body = chunkedBody(rng);
  } else if (carriesBody && rng.chance(0.3)) {
    headers.push(header('Content-Length', '0'));
  }
  if (body.kind !== 'none' && version === 'HTTP/1.1' && rng.chance(0.1)) headers.push(header('Expect', '100-continue'));
  if (version === 'HTTP/1.0' && rng.chance(0.6)) headers.push(header('Connection', 'keep-alive'));
  else if (!last && rng.chance(0.03)) headers.push(header('Connection', 'close'));
  else if (rng.chance(0.1)) headers.push(header('Connection', rng.pick(['keep-alive', 'Keep-Alive'])));
  let lead = '';
  if (rng.chance(first ? 0.05 : 0.1)) lead = rng.pick(['\r\n', '\r\n\r\n', '\n', '\r', '\r\n\n\r']);
  return { lead, method, target: rng.pick(TARGETS), version, line: null, headers, body };
}

export function serialiseMessage(m: Message): string {
  let s = m.lead;
  s += m.line ?? `${m.method} ${m.target}${m.version === '' ? '' : ` ${m.version}`}`;
  s += '\r\n';
  for (const h of m.headers) s += `${h.name}${h.sep}${h.value}\r\n`;
  s += '\r\n';
  const body = m.body;
  switch (body.kind) {
    case 'none':
      s += body.extra;
      break;
    case 'length':
      s += body.data;
      break;
    case 'chunked':
      for (const c of body.chunks) s += `${c.size}${c.ext}\r\n${c.data}${c.end}`;
      s += `${body.last}\r\n`;
      for (const t of body.trailers) s += `${t.name}${t.sep}${t.value}\r\n`;
      s += '\r\n';
      break;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Mutations

type MessageMutation = (rng: Prng, m: Message, all: Message[]) => boolean;

function findHeader(m: Message, lower: string): HeaderField | undefined {
  return m.headers.find((h) => h.name.toLowerCase() === lower);
}

function insertHeader(rng: Prng, m: Message, h: HeaderField): void {
  m.headers.splice(rng.int(m.headers.length + 1), 0, h);
}

function makeLengthBody(rng: Prng, m: Message): string {
  if (m.body.kind === 'length') return m.body.data;
  const data = randomData(rng, rng.range(0, 40));
  m.body = { kind: 'length', data };
  insertHeader(rng, m, header('Content-Length', String(data.length)));
  return data;
}

function makeChunkedBody(rng: Prng, m: Message): Extract<Body, { kind: 'chunked' }> {
  if (m.body.kind === 'chunked') return m.body;
  const cl = findHeader(m, 'content-length');
  if (cl !== undefined) m.headers.splice(m.headers.indexOf(cl), 1);
  const body = chunkedBody(rng) as Extract<Body, { kind: 'chunked' }>;
  m.body = body;
  insertHeader(rng, m, header('Transfer-Encoding', 'chunked'));
  return body;
}

const CL_VARIANTS = (n: number): string[] => [
  `+${n}`,
  `${n} `,
  ` ${n}`,
  `\t${n}`,
  `${n}\t`,
  `0x${n.toString(16)}`,
  `${n},${n}`,
  `${n}, ${n}`,
  `${n}, ${n + 1}`,
  '-1',
  `0${n}`,
  `000000000000000${n}`,
  '99999999999999999999',
  '18446744073709551616',
  '',
  `${n}\x00`,
  `${n}a`,
  `${n} ${n}`,
  `${n + 1}`,
  `${Math.max(0, n - 1)}`,
  '1e3',
];

const TE_VARIANTS = [
  'chunked, chunked',
  'gzip, chunked',
  'chunked, gzip',
  'Chunked',
  ' chunked ',
  'chunked\t',
  '\tchunked',
  'identity',
  'chunked;q=1',
  'xchunked',
  'chunked ,',
  ',chunked',
  'chunk',
  'CHUNKED',
  'chunked\x0b',
];

const CHUNK_SIZE_VARIANTS = (hex: string): string[] => [
  `0000000000000000000${hex}`,
  `00000000000${hex}`,
  hex.toUpperCase(),
  `0x${hex}`,
  ` ${hex}`,
  `${hex} `,
  `${hex}\t`,
  `-${hex}`,
  `+${hex}`,
  'ffffffffffffffff',
  '10000000000000000',
  'fffffffffffff',
  `${hex}g`,
  '',
  `${hex} ;a=b`,
  `${hex};`,
];

const CHUNK_EXT_VARIANTS = [
  ';a="b c"',
  ';a="b\\"c"',
  '; a=b',
  ';a = b',
  ';a=b;',
  ';;',
  ';=',
  ';a="\r\n"',
  ';a="x',
  ';a\x00',
  ';a=\x80',
  ';' + 'x'.repeat(20000),
  ';a=' + 'y'.repeat(5000),
  ';BITS_POST',
  ' ;a',
  '\t;a',
];

const VERSION_VARIANTS = ['HTTP/1.2', 'HTTP/2.0', 'HTTP/0.9', 'HTTP/1.1 ', 'http/1.1', '', 'HTTP/1.10', 'HTTP/11', 'HTTP/1', 'HTTP/1.1\t', 'RTSP/1.0', 'ICE/1.0', 'HTTP/9.9'];

const METHOD_VARIANTS = [
  'CONNECT',
  'PRI',
  'bits_post',
  'BITS_POSTX',
  'BITS_POS',
  'BITS_PUT',
  'BITS',
  'BITS_POST\t',
  'BITS_POST ',
  ' BITS_POST',
  'BITSPOST',
  'Bits_Post',
  'B',
  'BI',
  'BIND',
  'BASELINE-CONTROL',
  'POST\tBITS_POST',
  'GET',
  'FOO',
  'SOURCE',
];

const TARGET_VARIANTS = [
  '/\t/',
  '/\x7f',
  '/\x80\xff',
  '/\x00',
  '/#frag',
  '/"quoted"',
  '/<>',
  '/{}|\\^`',
  '/\x0c',
  '',
  '*',
  'bits.example:443',
  '/ /',
  '/x HTTP/1.1\r\nX: y',
  '/BITS_POST / HTTP/1.1',
];

const HEADER_NAME_VARIANTS = ['Content Length', 'Content-Length\x00', 'X\x7f', '\x01Name', 'N\u00e9', '(bad)', 'a"b', 'X{', 'Transfer-Encoding\t', 'Content-Length\t'];

const HEADER_VALUE_VARIANTS = ['a\x00b', 'a\x7fb', 'a\x01b', 'a\rb', '\x0b', 'a\x1fb', 'BITS_POST / HTTP/1.1\r', 'x\x80\xff'];

const MESSAGE_MUTATIONS: ReadonlyArray<readonly [number, string, MessageMutation]> = [
  [6, 'duplicate-content-length', (rng, m) => {
    const data = makeLengthBody(rng, m);
    const value = rng.pick([String(data.length), String(data.length), String(data.length + 1), String(Math.max(0, data.length - 1)), '0']);
    insertHeader(rng, m, header(rng.pick(CL_NAMES), value, wellFormedSep(rng)));
    return true;
  }],
  [6, 'content-length-with-transfer-encoding', (rng, m) => {
    if (rng.chance(0.5)) {
      makeChunkedBody(rng, m);
      insertHeader(rng, m, header(rng.pick(CL_NAMES), String(rng.pick([0, 5, 10, 64]))));
    } else {
      makeLengthBody(rng, m);
      insertHeader(rng, m, header(rng.pick(TE_NAMES), rng.pick(['chunked', 'chunked', ...TE_VARIANTS])));
    }
    return true;
  }],
  [5, 'transfer-encoding-variant', (rng, m) => {
    makeChunkedBody(rng, m);
    const te = findHeader(m, 'transfer-encoding') as HeaderField;
    if (rng.chance(0.25)) insertHeader(rng, m, header(te.name, rng.pick(['chunked', ...TE_VARIANTS])));
    else te.value = rng.pick(TE_VARIANTS);
    return true;
  }],
  [5, 'content-length-variant', (rng, m) => {
    const data = makeLengthBody(rng, m);
    const cl = findHeader(m, 'content-length') as HeaderField;
    cl.value = rng.pick(CL_VARIANTS(data.length));
    return true;
  }],
  [5, 'chunk-size-variant', (rng, m) => {
    const body = makeChunkedBody(rng, m);
    if (body.chunks.length === 0 || rng.chance(0.15)) {
      body.last = rng.pick(['0 ', ' 0', '00000000000000000', '0x0', '-0', '', '0\t', 'O']);
      return true;
    }
    const c = rng.pick(body.chunks);
    c.size = rng.pick(CHUNK_SIZE_VARIANTS(c.size));
    return true;
  }],
  [4, 'chunk-extension-variant', (rng, m) => {
    const body = makeChunkedBody(rng, m);
    const ext = rng.pick(CHUNK_EXT_VARIANTS);
    if (body.chunks.length === 0 || rng.chance(0.2)) body.last = `0${ext}`;
    else rng.pick(body.chunks).ext = ext;
    return true;
  }],
  [4, 'chunk-data-mismatch', (rng, m) => {
    const body = makeChunkedBody(rng, m);
    if (body.chunks.length === 0) body.chunks.push({ size: '5', ext: '', data: 'hello', end: '\r\n' });
    const c = rng.pick(body.chunks);
    if (rng.chance(0.5)) c.data += rng.chance(0.5) ? randomData(rng, rng.range(1, 8)) : rng.pick(BAIT);
    else c.data = c.data.slice(0, Math.max(0, c.data.length - rng.range(1, 4)));
    return true;
  }],
  [3, 'chunk-end-variant', (rng, m) => {
    const body = makeChunkedBody(rng, m);
    if (body.chunks.length === 0) body.chunks.push({ size: '3', ext: '', data: 'abc', end: '\r\n' });
    rng.pick(body.chunks).end = rng.pick(['\n', '', '\r', 'XX\r\n', '\r\r\n', ' \r\n', '\r\n\r\n']);
    return true;
  }],
  [5, 'obs-fold', (rng, m) => {
    const fold = header(rng.pick([' ', '\t', '  ']) + rng.pick(['folded', 'chunked', '5', 'BITS_POST / HTTP/1.1', '']), '', '');
    const at = rng.chance(0.3) ? 0 : rng.int(m.headers.length + 1);
    m.headers.splice(at, 0, fold);
    return true;
  }],
  [4, 'huge-line', (rng, m) => {
    const size = rng.weighted<number>([
      [40, rng.range(1000, 12000)],
      [30, rng.range(15800, 16500)],
      [30, rng.range(16500, 40000)],
    ]);
    const where = rng.int(4);
    if (where === 0) m.target = `/${'t'.repeat(size)}`;
    else if (where === 1 && m.body.kind === 'chunked' && m.body.chunks.length > 0) rng.pick(m.body.chunks).ext = `;e=${'x'.repeat(size)}`;
    else insertHeader(rng, m, header('X-Huge', 'h'.repeat(size)));
    return true;
  }],
  [1, 'many-headers', (rng, m) => {
    const n = rng.range(990, 1005);
    const extra: HeaderField[] = [];
    for (let i = 0; i < n; i++) extra.push(header(`h${i}`, 'v'));
    m.headers.push(...extra);
    return true;
  }],
  [4, 'version-variant', (rng, m) => {
    m.version = rng.pick(VERSION_VARIANTS);
    return true;
  }],
  [5, 'method-variant', (rng, m) => {
    const method = rng.pick(METHOD_VARIANTS);
    m.method = method;
    if (method === 'PRI') {
      m.line = 'PRI * HTTP/2.0';
      m.headers = [];
      m.body = { kind: 'none', extra: 'SM\r\n\r\n' };
    } else if (method === 'CONNECT') {
      m.target = 'bits.example:443';
    }
    return true;
  }],
  [3, 'request-line-spacing', (rng, m) => {
    const sp = rng.pick(['  ', '\t', ' \t', '\x0b']);
    const parts = [m.method, m.target, m.version];
    const i = rng.int(2);
    m.line = i === 0 ? `${parts[0]}${sp}${parts[1]} ${parts[2]}` : `${parts[0]} ${parts[1]}${sp}${parts[2]}`;
    if (rng.chance(0.2)) m.line += ' ';
    return true;
  }],
  [3, 'upgrade', (rng, m) => {
    insertHeader(rng, m, header(rng.pick(['Upgrade', 'upgrade']), rng.pick(['websocket', 'h2c', 'BITS_POST'])));
    if (rng.chance(0.7)) insertHeader(rng, m, header('Connection', rng.pick(['Upgrade', 'upgrade, keep-alive'])));
    return true;
  }],
  [3, 'forged-marker', (rng, m) => {
    const h = header(rng.pick(['BITS-Upload-Method-Shim', 'bits-upload-method-shim']), randomHex(rng, 32));
    if (rng.chance(0.6)) m.headers.unshift(h);
    else insertHeader(rng, m, h);
    return true;
  }],
  [3, 'space-before-colon', (rng, m) => {
    if (m.body.kind === 'chunked' || rng.chance(0.5)) {
      makeChunkedBody(rng, m);
      (findHeader(m, 'transfer-encoding') as HeaderField).sep = rng.pick([' : ', '\t: ', ' :']);
    } else {
      makeLengthBody(rng, m);
      (findHeader(m, 'content-length') as HeaderField).sep = rng.pick([' : ', '\t: ', ' :']);
    }
    return true;
  }],
  [6, 'body-length-mismatch', (rng, m) => {
    const bait = rng.chance(0.7) ? rng.pick(BAIT) : randomData(rng, rng.range(1, 10));
    if (m.body.kind === 'none') m.body.extra += bait;
    else if (m.body.kind === 'length') m.body.data = rng.chance(0.6) ? m.body.data + bait : m.body.data.slice(0, rng.int(m.body.data.length + 1));
    else m.body.trailers.push(header('X', 'y'), header('', '', ''), header(bait, '', ''));
    return true;
  }],
  [3, 'trailer-framing-header', (rng, m) => {
    const body = makeChunkedBody(rng, m);
    body.trailers.push(rng.chance(0.5) ? header('Content-Length', '5') : header('Transfer-Encoding', 'chunked'));
    return true;
  }],
  [2, 'http10-chunked', (rng, m) => {
    makeChunkedBody(rng, m);
    m.version = 'HTTP/1.0';
    return true;
  }],
  [3, 'connection-close', (rng, m) => {
    insertHeader(rng, m, header('Connection', rng.pick(['close', 'Close', 'keep-alive, close'])));
    return true;
  }],
  [3, 'header-name-variant', (rng, m) => {
    insertHeader(rng, m, header(rng.pick(HEADER_NAME_VARIANTS), rng.pick(['5', 'chunked', 'x'])));
    return true;
  }],
  [3, 'header-value-variant', (rng, m) => {
    insertHeader(rng, m, header(rng.pick(['X-Value', 'Content-Length', 'Transfer-Encoding', 'Host']), rng.pick(HEADER_VALUE_VARIANTS)));
    return true;
  }],
  [3, 'target-variant', (rng, m) => {
    m.target = rng.pick(TARGET_VARIANTS);
    return true;
  }],
  [2, 'empty-header-name', (rng, m) => {
    insertHeader(rng, m, header('', ':', rng.pick(['x', 'Content-Length: 5'])));
    return true;
  }],
  [2, 'huge-content-length', (rng, m) => {
    makeLengthBody(rng, m);
    (findHeader(m, 'content-length') as HeaderField).value = rng.pick(['4294967296', '999999999999999', '9007199254740993', '100000']);
    return true;
  }],
];

type StreamMutation = (rng: Prng, s: string) => string;

const INSERTIONS = ['\r', '\n', '\r\n', ' ', '\t', ':', ';', '0', '1', 'f', 'B', '\x00', '\x7f', '\x80', '\xff', 'BITS_POST ', 'BITS_POST / HTTP/1.1\r\n', '\r\n\r\n', 'Content-Length: 5\r\n', 'Transfer-Encoding: chunked\r\n', '0\r\n\r\n', ' HTTP/1.1'];

/** A position weighted towards line starts, where mutations matter most. */
function position(rng: Prng, s: string): number {
  if (s.length === 0) return 0;
  if (rng.chance(0.5)) {
    const at = rng.int(s.length);
    const lf = s.indexOf('\n', at);
    if (lf !== -1) return Math.min(s.length, lf + 1 - rng.int(3));
  }
  return rng.int(s.length + 1);
}

const STREAM_MUTATIONS: ReadonlyArray<readonly [number, string, StreamMutation]> = [
  [5, 'byte-flip', (rng, s) => {
    const at = rng.int(Math.max(1, s.length));
    return s.slice(0, at) + String.fromCharCode(rng.int(256)) + s.slice(at + 1);
  }],
  [4, 'bit-flip', (rng, s) => {
    if (s.length === 0) return s;
    const at = rng.int(s.length);
    return s.slice(0, at) + String.fromCharCode(s.charCodeAt(at) ^ (1 << rng.int(8))) + s.slice(at + 1);
  }],
  [6, 'insert', (rng, s) => {
    const at = position(rng, s);
    return s.slice(0, at) + rng.pick(INSERTIONS) + s.slice(at);
  }],
  [4, 'delete', (rng, s) => {
    const at = position(rng, s);
    return s.slice(0, at) + s.slice(at + (rng.chance(0.8) ? rng.range(1, 4) : rng.range(5, 64)));
  }],
  [2, 'duplicate-range', (rng, s) => {
    const at = rng.int(s.length + 1);
    const len = rng.range(1, 64);
    return s.slice(0, at + len) + s.slice(at, at + len) + s.slice(at + len);
  }],
  [4, 'bare-lf', (rng, s) => {
    if (rng.chance(0.3)) return s.replace(/\r\n/g, '\n');
    const positions: number[] = [];
    for (let i = s.indexOf('\r\n'); i !== -1 && positions.length < 400; i = s.indexOf('\r\n', i + 2)) positions.push(i);
    if (positions.length === 0) return s;
    const at = rng.pick(positions);
    return s.slice(0, at) + s.slice(at + 1);
  }],
  [3, 'bare-cr', (rng, s) => {
    const positions: number[] = [];
    for (let i = s.indexOf('\r\n'); i !== -1 && positions.length < 400; i = s.indexOf('\r\n', i + 2)) positions.push(i);
    if (positions.length === 0 || rng.chance(0.3)) {
      const at = position(rng, s);
      return `${s.slice(0, at)}\r${s.slice(at)}`;
    }
    const at = rng.pick(positions);
    return s.slice(0, at + 1) + s.slice(at + 2);
  }],
  [5, 'truncate', (rng, s) => s.slice(0, rng.int(s.length + 1))],
  [2, 'crlf-insert', (rng, s) => {
    const at = rng.int(s.length + 1);
    return `${s.slice(0, at)}\r\n${s.slice(at)}`;
  }],
];

/** Applies one or more mutations to the messages and then to the bytes. */
function mutate(rng: Prng, messages: Message[], applied: string[]): string {
  const count = rng.weighted<number>([
    [60, 1],
    [28, 2],
    [12, 3],
  ]);
  let structural = 0;
  for (let i = 0; i < count; i++) {
    if (rng.chance(0.55)) {
      const [, name, fn] = rng.weighted(MESSAGE_MUTATIONS.map((entry) => [entry[0], entry] as const));
      if (fn(rng, rng.pick(messages), messages)) {
        applied.push(name);
        structural++;
      }
    }
  }
  let s = messages.map(serialiseMessage).join('');
  const streamMutations = count - structural;
  for (let i = 0; i < streamMutations; i++) {
    const [, name, fn] = rng.weighted(STREAM_MUTATIONS.map((entry) => [entry[0], entry] as const));
    s = fn(rng, s);
    applied.push(name);
  }
  return s;
}

/** Splits `length` bytes into delivery chunks. */
export function chunkPlan(rng: Prng, s: string): number[] {
  const length = s.length;
  if (length === 0) return [];
  // Every piece costs a parser call on both servers: long streams get fewer, larger pieces.
  const mode = rng.weighted<string>([
    [22, 'whole'],
    [20, 'small'],
    [25, 'medium'],
    [8, 'bytes'],
    [20, 'interesting'],
    [5, 'halves'],
  ]);
  const sizes: number[] = [];
  const pieceMode = length > 4096 && (mode === 'small' || mode === 'bytes') ? 'medium' : mode;
  const cut = (positions: number[]): void => {
    let prev = 0;
    for (const p of positions.sort((a, b) => a - b)) {
      if (p > prev && p < length) {
        sizes.push(p - prev);
        prev = p;
      }
    }
    sizes.push(length - prev);
  };
  switch (pieceMode) {
    case 'whole':
      sizes.push(length);
      break;
    case 'bytes':
    case 'small':
      // Single bytes for short streams (each piece costs a parser call); long ones in small pieces.
      for (let left = length; left > 0; ) {
        const n = Math.min(left, pieceMode === 'bytes' && length <= 800 ? 1 : rng.range(1, 16));
        sizes.push(n);
        left -= n;
      }
      break;
    case 'medium':
      for (let left = length; left > 0; ) {
        const n = Math.min(left, rng.chance(0.2) ? rng.range(1, 3) : rng.range(1, 600));
        sizes.push(n);
        left -= n;
      }
      break;
    case 'interesting': {
      // Cut right before, inside and after request lines, line ends and `BITS_POST`.
      const positions: number[] = [];
      for (let i = s.indexOf('B'); i !== -1 && positions.length < 200; i = s.indexOf('B', i + 1)) {
        positions.push(i + rng.int(11));
      }
      for (let i = s.indexOf('\n'); i !== -1 && positions.length < 400; i = s.indexOf('\n', i + 1)) {
        if (rng.chance(0.3)) positions.push(i + rng.int(3) - 1);
      }
      cut(positions);
      break;
    }
    default: {
      cut([rng.int(length)]);
      break;
    }
  }
  return sizes;
}

/** Builds stream number `index` of the run seeded with `seed`. */
export function generateStream(seed: number, index: number): GeneratedStream {
  const rng = new Prng(seed, index);
  const count = rng.weighted<number>([
    [30, 1],
    [25, 2],
    [18, 3],
    [12, 4],
    [8, 5],
    [7, 6],
  ]);
  const messages: Message[] = [];
  for (let i = 0; i < count; i++) messages.push(wellFormedMessage(rng, i === 0, i === count - 1));
  const mutations: string[] = [];
  const text = rng.chance(0.5) ? mutate(rng, messages, mutations) : messages.map(serialiseMessage).join('');
  return { bytes: Buffer.from(text, LATIN1), chunks: chunkPlan(rng, text), mutations, messages: count };
}
