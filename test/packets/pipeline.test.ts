/**
 * The request pipeline of bits-protocol.md §3 steps 1-3 ahead of every handler: HTTP version
 * (§2.1), header sizes (§2.2), Content-Length rules (§2.3).
 */
import { PacketHarness, errorHeaders } from '../helpers/packet-harness';

const INVALID = { status: 400, headers: errorHeaders('0x80070057') };

test.each(['1.0', '2.0'])('HTTP/%s → 400', async (httpVersion) => {
  const h = new PacketHarness();
  expect(await h.send({ type: 'Ping', httpVersion })).toEqual(INVALID);
});

test('a header value over 4 KB → 400', async () => {
  const h = new PacketHarness();
  expect(await h.send({ type: 'Ping', headers: { 'X-Custom': 'a'.repeat(4097) } })).toEqual(INVALID);
  expect(await h.send({ type: 'Ping', headers: { 'X-Custom': 'a'.repeat(4096) } })).toEqual({ status: 200, headers: {} });
});

test.each(['Ping', 'Create-Session', 'Close-Session', 'Cancel-Session'])('%s with a body → 400', async (type) => {
  const h = new PacketHarness();
  const ack = await h.send({
    type,
    body: 'x',
    sessionId: '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}',
    headers: { 'BITS-Supported-Protocols': '{7df0354d-249b-430f-820d-3d2a9bef4931}' },
  });
  expect(ack.status).toBe(400);
  expect(ack.headers).toMatchObject(errorHeaders('0x80070057'));
  expect(h.storage.calls).toHaveLength(0);
});

test.each(['abc', '-1', '1.5', '99999999999999999999'])('Content-Length %s → 400', async (value) => {
  const h = new PacketHarness();
  expect(await h.send({ type: 'Ping', contentLength: null, headers: { 'Content-Length': value } })).toEqual(INVALID);
});

test('conflicting Content-Length headers → 400; identical repeats are accepted', async () => {
  const h = new PacketHarness();
  expect(await h.send({ type: 'Ping', contentLength: 0, headers: { 'content-length': '1' } })).toEqual(INVALID);
  expect(await h.send({ type: 'Ping', contentLength: 0, headers: { 'content-length': '0' } })).toEqual({
    status: 200,
    headers: {},
  });
});

test('conflicting BITS-Packet-Type headers → 400', async () => {
  const h = new PacketHarness();
  expect(await h.send({ type: 'Ping', headers: { 'bits-packet-type': 'Create-Session' } })).toEqual(INVALID);
});

test('unknown request headers are ignored (§2.2)', async () => {
  const h = new PacketHarness();
  expect(await h.send({ type: 'Ping', headers: { 'X-Anything': 'value', 'BITS-Future': '1' } })).toEqual({
    status: 200,
    headers: {},
  });
});

test('Transfer-Encoding of any kind → 411', async () => {
  const h = new PacketHarness();
  expect(await h.send({ type: 'Ping', headers: { 'Transfer-Encoding': 'gzip, chunked' } })).toEqual({
    status: 411,
    headers: errorHeaders('0x80070057'),
  });
});

test('the packet type is checked before Content-Length', async () => {
  const h = new PacketHarness();
  expect(await h.send({ type: 'Frobnicate', contentLength: null })).toEqual(INVALID);
});

test('an invalid destination on Fragment, Close and Cancel → 400 before any session lookup', async () => {
  const h = new PacketHarness();
  const sid = '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}';
  for (const type of ['Fragment', 'Close-Session', 'Cancel-Session']) {
    const ack = await h.send({ type, sessionId: sid, url: '/a/../b', range: 'bytes 0-0/1', body: type === 'Fragment' ? 'x' : '' });
    expect(ack).toEqual({ status: 400, headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80070057') } });
  }
  expect(h.storage.calls).toHaveLength(0);
});
