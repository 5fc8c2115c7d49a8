/** bits-protocol.md §3 step 3: request syntax checks of parseRequest. */
import { parseRequest } from '../../lib/protocol/request';

function head(headers: Record<string, string> | string[], httpVersion = '1.1', url = '/report.bin') {
  const rawHeaders = Array.isArray(headers) ? headers : Object.entries(headers).flat();
  return { httpVersion, url, rawHeaders };
}

describe('accepted requests', () => {
  test.each([
    ['Ping', 'Ping'],
    ['ping', 'Ping'],
    ['PING', 'Ping'],
    ['Create-Session', 'Create-Session'],
    ['CREATE-SESSION', 'Create-Session'],
    ['fragment', 'Fragment'],
    ['Close-Session', 'Close-Session'],
    ['cancel-SESSION', 'Cancel-Session'],
    [' Ping ', 'Ping'],
  ])('packet type %j → %s', (value, type) => {
    expect(parseRequest(head({ 'BITS-Packet-Type': value, 'Content-Length': '0' })).packetType).toBe(type);
  });

  test('every header the packets read, by case-insensitive name', () => {
    const request = parseRequest(
      head({
        'bits-packet-type': 'Fragment',
        'CONTENT-LENGTH': '4',
        'Bits-Session-Id': '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}',
        'content-range': 'bytes 0-3/4',
        'Content-Encoding': 'identity',
        'BITS-Supported-Protocols': '{x}',
      }),
    );
    expect(request).toEqual({
      packetType: 'Fragment',
      contentLength: 4,
      url: '/report.bin',
      sessionId: '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}',
      supportedProtocols: '{x}',
      contentRange: 'bytes 0-3/4',
      contentEncoding: 'identity',
    });
  });

  test('identical repeated headers are accepted', () => {
    const request = parseRequest(head(['BITS-Packet-Type', 'Ping', 'Content-Length', '0', 'Content-Length', '0']));
    expect(request.contentLength).toBe(0);
  });

  test('a header value of exactly 4096 bytes is accepted', () => {
    expect(() => parseRequest(head({ 'BITS-Packet-Type': 'Ping', 'Content-Length': '0', X: 'a'.repeat(4096) }))).not.toThrow();
  });

  test('the largest safe Content-Length is accepted on Fragment', () => {
    const request = parseRequest(head({ 'BITS-Packet-Type': 'Fragment', 'Content-Length': String(Number.MAX_SAFE_INTEGER) }));
    expect(request.contentLength).toBe(Number.MAX_SAFE_INTEGER);
  });
});

describe('rejected requests', () => {
  test.each([
    ['HTTP/1.0', head({ 'BITS-Packet-Type': 'Ping', 'Content-Length': '0' }, '1.0'), 400, 'BITS_BAD_REQUEST'],
    ['HTTP/2.0', head({ 'BITS-Packet-Type': 'Ping', 'Content-Length': '0' }, '2.0'), 400, 'BITS_BAD_REQUEST'],
    ['header value > 4 KB', head({ 'BITS-Packet-Type': 'Ping', 'Content-Length': '0', X: 'a'.repeat(4097) }), 400, 'BITS_BAD_REQUEST'],
    ['no packet type', head({ 'Content-Length': '0' }), 400, 'BITS_UNKNOWN_PACKET_TYPE'],
    ['empty packet type', head({ 'BITS-Packet-Type': '', 'Content-Length': '0' }), 400, 'BITS_UNKNOWN_PACKET_TYPE'],
    ['unknown packet type', head({ 'BITS-Packet-Type': 'Frobnicate', 'Content-Length': '0' }), 400, 'BITS_UNKNOWN_PACKET_TYPE'],
    ['Ack as a request', head({ 'BITS-Packet-Type': 'Ack', 'Content-Length': '0' }), 400, 'BITS_UNKNOWN_PACKET_TYPE'],
    ['packet type with underscore', head({ 'BITS-Packet-Type': 'Create_Session', 'Content-Length': '0' }), 400, 'BITS_UNKNOWN_PACKET_TYPE'],
    ['two packet types', head(['BITS-Packet-Type', 'Ping', 'BITS-Packet-Type', 'Fragment', 'Content-Length', '0']), 400, 'BITS_BAD_REQUEST'],
    ['no Content-Length', head({ 'BITS-Packet-Type': 'Create-Session' }), 411, 'BITS_LENGTH_REQUIRED'],
    ['chunked', head({ 'BITS-Packet-Type': 'Fragment', 'Transfer-Encoding': 'chunked' }), 411, 'BITS_LENGTH_REQUIRED'],
    ['chunked with Content-Length', head({ 'BITS-Packet-Type': 'Fragment', 'Transfer-Encoding': 'chunked', 'Content-Length': '4' }), 411, 'BITS_LENGTH_REQUIRED'],
    ['Content-Length not a number', head({ 'BITS-Packet-Type': 'Ping', 'Content-Length': 'ten' }), 400, 'BITS_BAD_REQUEST'],
    ['negative Content-Length', head({ 'BITS-Packet-Type': 'Ping', 'Content-Length': '-0' }), 400, 'BITS_BAD_REQUEST'],
    ['empty Content-Length', head({ 'BITS-Packet-Type': 'Ping', 'Content-Length': '' }), 400, 'BITS_BAD_REQUEST'],
    ['Content-Length over 2^53', head({ 'BITS-Packet-Type': 'Fragment', 'Content-Length': '9007199254740992' }), 400, 'BITS_BAD_REQUEST'],
    ['conflicting Content-Length', head(['BITS-Packet-Type', 'Fragment', 'Content-Length', '4', 'Content-Length', '5']), 400, 'BITS_BAD_REQUEST'],
    ['Ping with a body', head({ 'BITS-Packet-Type': 'Ping', 'Content-Length': '1' }), 400, 'BITS_BAD_REQUEST'],
    ['Create-Session with a body', head({ 'BITS-Packet-Type': 'Create-Session', 'Content-Length': '5' }), 400, 'BITS_BAD_REQUEST'],
    ['Close-Session with a body', head({ 'BITS-Packet-Type': 'Close-Session', 'Content-Length': '5' }), 400, 'BITS_BAD_REQUEST'],
    ['Cancel-Session with a body', head({ 'BITS-Packet-Type': 'Cancel-Session', 'Content-Length': '5' }), 400, 'BITS_BAD_REQUEST'],
    ['two session ids', head(['BITS-Packet-Type', 'Close-Session', 'Content-Length', '0', 'BITS-Session-Id', 'a', 'BITS-Session-Id', 'b']), 400, 'BITS_BAD_REQUEST'],
  ])('%s → %d %s', (_why, request, status, code) => {
    expect(() => parseRequest(request)).toThrow(expect.objectContaining({ status, code, hresult: 0x80070057 }));
  });
});
