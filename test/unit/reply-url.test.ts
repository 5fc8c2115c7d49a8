/** Reply URLs and reply paths (bits-protocol.md §10.5, §10.6), table-driven. */
import { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import {
  checkReplyUrlLength,
  matchReplyPath,
  MAX_REPLY_URL_LENGTH,
  mountPath,
  parseForwarded,
  REPLY_PATH_LENGTH,
  replyPath,
  replyUrl,
  type ReplyUrlSettings,
} from '../../lib/reply/url';

const SID = '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}';
const PATH = '/BITS-Sessions/Replies/%7B3F2504E0-4F89-41D3-9A0C-0305E82C3301%7D/responsefile.bin';

interface FakeRequest {
  readonly headers?: Readonly<Record<string, string>>;
  readonly url?: string;
  /** Express's req.baseUrl. */
  readonly baseUrl?: string;
  /** Express's and Connect's req.originalUrl. */
  readonly originalUrl?: string;
  readonly tls?: boolean;
}

function request({ headers = { host: 'bits.example.test' }, url = '/report.bin', baseUrl, originalUrl, tls = false }: FakeRequest): IncomingMessage {
  const socket = new Socket();
  if (tls) Object.defineProperty(socket, 'encrypted', { value: true });
  const req = new IncomingMessage(socket);
  req.url = url;
  for (const [name, value] of Object.entries(headers)) req.headers[name.toLowerCase()] = value;
  if (baseUrl !== undefined) Object.assign(req, { baseUrl });
  if (originalUrl !== undefined) Object.assign(req, { originalUrl });
  return req;
}

const direct: ReplyUrlSettings = { publicUrl: undefined, trustForwardedHeaders: false };
const trusting: ReplyUrlSettings = { publicUrl: undefined, trustForwardedHeaders: true };

test('replyPath: the IIS layout with the braced id percent-encoded (TV-10)', () => {
  expect(replyPath(SID)).toBe(PATH);
  expect(REPLY_PATH_LENGTH).toBe(PATH.length);
});

describe('matchReplyPath', () => {
  test.each<[string, string | undefined | null]>([
    [PATH, SID],
    [`${PATH}?x=1`, SID],
    ['/bits-sessions/replies/%7b3f2504e0-4f89-41d3-9a0c-0305e82c3301%7d/RESPONSEFILE.BIN', SID],
    ['/BITS-Sessions/Replies/{3F2504E0-4F89-41D3-9A0C-0305E82C3301}/responsefile.bin', SID],
    ['/BITS-Sessions/Replies/3F2504E0-4F89-41D3-9A0C-0305E82C3301/responsefile.bin', SID],
    ['/BITS%2DSessions/Replies/%7B3F2504E0-4F89-41D3-9A0C-0305E82C3301%7D/responsefile.bin', SID],
    [`http://bits.example.test${PATH}`, SID],
    // The path is ours but the id cannot be one we issued.
    ['/BITS-Sessions/Replies/not-a-guid/responsefile.bin', undefined],
    ['/BITS-Sessions/Replies/%E0%A4%A/responsefile.bin', undefined],
    ['/BITS-Sessions/Replies//responsefile.bin', undefined],
    // Not a reply path.
    ['/report.bin', null],
    ['/BITS-Sessions/Replies/x', null],
    ['/BITS-Sessions/Replies/x/other.bin', null],
    [`${PATH}/more`, null],
    [`/dir${PATH}`, null],
    ['/BITS-Sessions/Other/x/responsefile.bin', null],
    ['', null],
  ])('%s → %s', (target, sessionId) => {
    expect(matchReplyPath(target)).toEqual(sessionId === null ? undefined : { sessionId });
  });
});

describe('mountPath', () => {
  test.each<[string, FakeRequest, string]>([
    ['plain node:http', { url: '/uploads/report.bin' }, ''],
    ['Express: baseUrl', { url: '/report.bin', baseUrl: '/uploads', originalUrl: '/uploads/report.bin' }, '/uploads'],
    ['Express at the root', { url: '/report.bin', baseUrl: '', originalUrl: '/report.bin' }, ''],
    ['Express router', { url: '/r.bin', baseUrl: '/uploads/files', originalUrl: '/uploads/files/r.bin' }, '/uploads/files'],
    ['Connect: originalUrl minus url', { url: '/report.bin?q=1', originalUrl: '/uploads/report.bin?q=1' }, '/uploads'],
    ['Connect at the root', { url: '/report.bin', originalUrl: '/report.bin' }, ''],
    ['trailing slash dropped', { url: '/report.bin', baseUrl: '/uploads/' }, '/uploads'],
    ['absolute-form original URL', { url: '/report.bin', originalUrl: 'http://h.test/uploads/report.bin' }, '/uploads'],
    ['url not a suffix', { url: '/x', originalUrl: '/y' }, ''],
  ])('%s', (_name, fake, expected) => {
    expect(mountPath(request(fake))).toBe(expected);
  });
});

describe('replyUrl', () => {
  test.each<[string, FakeRequest, ReplyUrlSettings, string]>([
    ['TV-10: Host and mount path', { baseUrl: '/uploads' }, direct, `http://bits.example.test/uploads${PATH}`],
    ['at the root', {}, direct, `http://bits.example.test${PATH}`],
    ['Host with a port', { headers: { host: '127.0.0.1:8080' } }, direct, `http://127.0.0.1:8080${PATH}`],
    ['IPv6 Host', { headers: { host: '[::1]:8080' } }, direct, `http://[::1]:8080${PATH}`],
    ['TLS socket → https', { tls: true }, direct, `https://bits.example.test${PATH}`],
    [
      'publicUrl wins over everything',
      { tls: true, baseUrl: '/uploads', headers: { host: 'internal:3000', 'x-forwarded-host': 'x.test' } },
      { publicUrl: 'https://bits.example.com/pub', trustForwardedHeaders: true },
      `https://bits.example.com/pub${PATH}`,
    ],
    [
      'X-Forwarded-* ignored without trust',
      { headers: { host: 'internal:3000', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'public.test' } },
      direct,
      `http://internal:3000${PATH}`,
    ],
    [
      'X-Forwarded-* honoured with trust',
      { baseUrl: '/u', headers: { host: 'internal:3000', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'public.test' } },
      trusting,
      `https://public.test/u${PATH}`,
    ],
    [
      'X-Forwarded-* lists: the first item (the proxy nearest the client)',
      { headers: { host: 'internal', 'x-forwarded-proto': 'HTTPS, http', 'x-forwarded-host': 'a.test:8443, b.test' } },
      trusting,
      `https://a.test:8443${PATH}`,
    ],
    [
      'Forwarded honoured with trust, before X-Forwarded-*',
      {
        headers: {
          host: 'internal',
          forwarded: 'for=192.0.2.60;proto=https;host="public.test:444", for=10.0.0.1;proto=http;host=inner',
          'x-forwarded-proto': 'http',
          'x-forwarded-host': 'other.test',
        },
      },
      trusting,
      `https://public.test:444${PATH}`,
    ],
    ['Forwarded ignored without trust', { headers: { host: 'internal', forwarded: 'proto=https;host=public.test' } }, direct, `http://internal${PATH}`],
    [
      'Forwarded with only proto: host from X-Forwarded-Host, then Host',
      { headers: { host: 'internal', forwarded: 'proto=https', 'x-forwarded-host': 'xf.test' } },
      trusting,
      `https://xf.test${PATH}`,
    ],
    [
      'garbage forwarded values are ignored',
      { tls: true, headers: { host: 'internal', 'x-forwarded-proto': 'gopher', 'x-forwarded-host': 'evil.test/path' } },
      trusting,
      `https://internal${PATH}`,
    ],
    ['empty forwarded values are ignored', { headers: { host: 'internal', 'x-forwarded-host': ' , x.test' } }, trusting, `http://internal${PATH}`],
  ])('%s', (_name, fake, settings, expected) => {
    expect(replyUrl(request(fake), SID, settings)).toBe(expected);
  });

  test.each<[string, Record<string, string>]>([
    ['no Host', {}],
    ['a Host with a slash', { host: 'a.test/x' }],
    ['a Host with user info', { host: 'user@a.test' }],
    ['a Host with a space', { host: 'a test' }],
    ['an empty Host', { host: '' }],
  ])('%s → 400 + E_INVALIDARG', (_name, headers) => {
    expect(() => replyUrl(request({ headers }), SID, direct)).toThrow(
      expect.objectContaining({ code: 'BITS_BAD_REQUEST', status: 400, hresult: 0x80070057 }),
    );
  });

  test('over 2,200 characters → 400 + E_INVALIDARG (§10.5); exactly 2,200 is fine', () => {
    const hostFor = (length: number): string => 'h'.repeat(length - 'http://'.length - PATH.length);
    expect(replyUrl(request({ headers: { host: hostFor(MAX_REPLY_URL_LENGTH) } }), SID, direct)).toHaveLength(2200);
    expect(() => replyUrl(request({ headers: { host: hostFor(MAX_REPLY_URL_LENGTH + 1) } }), SID, direct)).toThrow(
      expect.objectContaining({ code: 'BITS_REPLY_URL_TOO_LONG', status: 400, hresult: 0x80070057 }),
    );
    expect(checkReplyUrlLength('x'.repeat(2200))).toHaveLength(2200);
  });
});

describe('parseForwarded (RFC 7239)', () => {
  test.each<[string | undefined, Record<string, string>]>([
    [undefined, {}],
    ['', {}],
    ['proto=https', { proto: 'https' }],
    ['For=1.2.3.4; Proto=https ;HOST=a.test', { for: '1.2.3.4', proto: 'https', host: 'a.test' }],
    ['host="a.test:8080";proto=http, host=b.test', { host: 'a.test:8080', proto: 'http' }],
    ['for="[2001:db8::1]:4711";proto=https', { for: '[2001:db8::1]:4711', proto: 'https' }],
    ['host="a\\"b"', { host: 'a"b' }],
    ['proto=https;proto=http', { proto: 'https' }],
    ['garbage;proto=https', {}],
    ['proto=https;garbage', { proto: 'https' }],
  ])('%j', (value, expected) => {
    expect(Object.fromEntries(parseForwarded(value))).toEqual(expected);
  });
});
