/** resolveOptions for upload-reply endpoints: `reply`, `publicUrl`, `trustForwardedHeaders` (bits-protocol.md §10). */
import { REPLY_STORAGE_METHODS, REQUIRED_STORAGE_METHODS, resolveOptions } from '../../lib/options';
import { StubStorage } from '../helpers/stub-storage';

const storage = new StubStorage();
const reply = (): string => 'HELLO';

test('defaults: no reply, no publicUrl, forwarded headers not trusted', () => {
  expect(resolveOptions({ storage })).toMatchObject({ reply: undefined, publicUrl: undefined, trustForwardedHeaders: false });
});

test('a reply handler is taken over', () => {
  expect(resolveOptions({ storage, reply }).reply).toBe(reply);
});

test.each<[string, unknown, RegExp]>([
  ['a string', 'HELLO', /option "reply" must be a function, got 'HELLO'/],
  ['an object', { body: 'x' }, /option "reply" must be a function/],
])('reply that is %s → TypeError', (_name, value, message) => {
  expect(() => resolveOptions({ storage, reply: value })).toThrow(TypeError);
  expect(() => resolveOptions({ storage, reply: value })).toThrow(message);
});

describe('a reply endpoint needs a storage that keeps replies', () => {
  const withoutReplies = (...missing: string[]): object =>
    Object.fromEntries(
      [...REQUIRED_STORAGE_METHODS, ...REPLY_STORAGE_METHODS]
        .filter((method) => !missing.includes(method))
        .map((method) => [method, () => undefined]),
    );

  test.each([
    [['writeReply', 'readReply'], /option "reply" needs a storage that keeps replies, but "storage" lacks writeReply, readReply\./],
    [['readReply'], /lacks readReply\./],
  ])('lacking %j → TypeError', (missing, message) => {
    expect(() => resolveOptions({ storage: withoutReplies(...missing), reply })).toThrow(message);
  });

  test('without reply, an adapter from before replies is still accepted', () => {
    expect(() => resolveOptions({ storage: withoutReplies('writeReply', 'readReply') })).not.toThrow();
  });
});

describe('publicUrl', () => {
  test.each([
    ['https://bits.example.com/uploads', 'https://bits.example.com/uploads'],
    ['https://bits.example.com/uploads/', 'https://bits.example.com/uploads'],
    ['https://bits.example.com/uploads//', 'https://bits.example.com/uploads'],
    ['https://bits.example.com', 'https://bits.example.com'],
    ['https://bits.example.com/', 'https://bits.example.com'],
    ['HTTP://BITS.Example.com:80/a%20b', 'http://bits.example.com/a%20b'],
    ['http://10.0.0.7:8080/x', 'http://10.0.0.7:8080/x'],
  ])('%s → %s', (value, normalized) => {
    expect(resolveOptions({ storage, publicUrl: value }).publicUrl).toBe(normalized);
  });

  test.each([
    ['a relative URL', '/uploads'],
    ['another scheme', 'ftp://bits.example.com/uploads'],
    ['credentials', 'https://user:pw@bits.example.com/uploads'],
    ['a query', 'https://bits.example.com/uploads?x=1'],
    ['an empty query', 'https://bits.example.com/uploads?'],
    ['a fragment', 'https://bits.example.com/uploads#x'],
    ['not a string', 42],
    ['too long for reply URLs of 2,200 characters', `https://bits.example.com/${'a'.repeat(2100)}`],
  ])('%s → TypeError', (_name, value) => {
    expect(() => resolveOptions({ storage, publicUrl: value })).toThrow(/option "publicUrl" must be an absolute http: or https: URL/);
  });

  test('the longest accepted publicUrl keeps reply URLs at 2,200 characters', () => {
    const base = 'https://b.test/';
    const longest = `${base}${'a'.repeat(2200 - 82 - base.length)}`;
    expect(resolveOptions({ storage, publicUrl: longest }).publicUrl).toHaveLength(2118);
    expect(() => resolveOptions({ storage, publicUrl: `${longest}a` })).toThrow(/at most 2118 characters/);
  });
});

test.each([
  [true, true],
  [false, false],
])('trustForwardedHeaders %s', (value, expected) => {
  expect(resolveOptions({ storage, trustForwardedHeaders: value }).trustForwardedHeaders).toBe(expected);
});

test('trustForwardedHeaders must be a boolean', () => {
  expect(() => resolveOptions({ storage, trustForwardedHeaders: 'yes' })).toThrow(/option "trustForwardedHeaders" must be true or false/);
});
