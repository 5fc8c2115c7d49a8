/** Session ids (bits-protocol.md §5.1). */
import { echoableSessionId, newSessionId, sessionKey } from '../../lib/protocol/session-id';

test('new ids are random v4 GUIDs, upper case, braced', () => {
  const ids = new Set(Array.from({ length: 100 }, newSessionId));
  expect(ids.size).toBe(100);
  for (const id of ids) expect(id).toMatch(/^\{[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}\}$/);
});

test.each([
  ['{3F2504E0-4F89-41D3-9A0C-0305E82C3301}', '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}'],
  ['{3f2504e0-4f89-41d3-9a0c-0305e82c3301}', '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}'],
  ['3f2504e0-4f89-41d3-9a0c-0305e82c3301', '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}'],
])('sessionKey(%s) = %s', (echoed, key) => {
  expect(sessionKey(echoed)).toBe(key);
});

test.each(['', 'abc', '{3F2504E0-4F89-41D3-9A0C-0305E82C330}', '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}x', '../x', '{3F2504E0 4F89 41D3 9A0C 0305E82C3301}'])(
  'sessionKey(%j) is undefined',
  (echoed) => {
    expect(sessionKey(echoed)).toBeUndefined();
  },
);

test.each([
  ['{A}', '{A}'],
  ['x'.repeat(100), 'x'.repeat(100)],
  ['x'.repeat(101), undefined],
  ['a b', undefined],
  ['a\tb', undefined],
  ['é', undefined],
  ['', undefined],
  [undefined, undefined],
])('echoableSessionId(%j) = %j', (echoed, result) => {
  expect(echoableSessionId(echoed)).toBe(result);
});
