/** Ack building and writing: bits-protocol.md §0.5, §2.3, §8.1-8.3. */
import http, { type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { BitsError, fragmentTooLarge, sessionNotFound, uploadsDisabled } from '../../lib/errors';
import { ack, closesConnection, errorAck, formatContext, formatHresult, withConnectionClose, writeAck } from '../../lib/protocol/ack';

describe('value formats (§8.2, §15 A2)', () => {
  test.each([
    [0x8020001f, '0x8020001F'],
    [0x80070057, '0x80070057'],
    [0x80200020, '0x80200020'],
    [0x5, '0x00000005'],
    [0, '0x00000000'],
    [-2145386465, '0x8020001F'],
  ])('HRESULT %d → %s', (value, text) => {
    expect(formatHresult(value)).toBe(text);
  });

  test.each([
    [0x5, '0x5'],
    [0x7, '0x7'],
  ])('context %d → %s', (value, text) => {
    expect(formatContext(value)).toBe(text);
  });
});

describe('errorAck', () => {
  test('both error header names with the same value, and the context (§8.1)', () => {
    expect(errorAck(uploadsDisabled())).toEqual({
      status: 501,
      headers: { 'BITS-Error-Code': '0x80070005', 'BITS-Error': '0x80070005', 'BITS-Error-Context': '0x5' },
    });
  });

  test('the session id is echoed when given', () => {
    const sid = '{00000000-0000-0000-0000-000000000001}';
    expect(errorAck(sessionNotFound(sid), sid)).toEqual({
      status: 500,
      headers: {
        'BITS-Session-Id': sid,
        'BITS-Error-Code': '0x8020001F',
        'BITS-Error': '0x8020001F',
        'BITS-Error-Context': '0x5',
      },
    });
  });

  test('413 has no error headers but closes the connection (§15 A11)', () => {
    expect(errorAck(fragmentTooLarge(6, 4))).toEqual({ status: 413, headers: { Connection: 'close' } });
  });

  test('a remote-application context is written as 0x7', () => {
    const error = new BitsError('BITS_INTERNAL', 'app failed', { context: 0x7 });
    expect(errorAck(error).headers['BITS-Error-Context']).toBe('0x7');
  });
});

describe('Connection: close', () => {
  test('is detected case-insensitively and can be added', () => {
    expect(closesConnection(ack())).toBe(false);
    expect(closesConnection(ack({ connection: 'Close' }))).toBe(true);
    expect(withConnectionClose(ack({ A: 'b' }, 416))).toEqual({ status: 416, headers: { A: 'b', Connection: 'close' } });
  });
});

describe('writeAck', () => {
  test('writeHead with BITS-Packet-Type first and Content-Length: 0 last, then end() without a body', () => {
    const calls: unknown[][] = [];
    const res = {
      writeHead: (...args: unknown[]) => calls.push(['writeHead', ...args]),
      end: (...args: unknown[]) => calls.push(['end', ...args]),
    } as unknown as ServerResponse;
    writeAck(res, ack({ 'BITS-Session-Id': '{X}', 'BITS-Received-Content-Range': '6' }));
    expect(calls).toEqual([
      [
        'writeHead',
        200,
        { 'BITS-Packet-Type': 'Ack', 'BITS-Session-Id': '{X}', 'BITS-Received-Content-Range': '6', 'Content-Length': '0' },
      ],
      ['end'],
    ]);
    const written = calls[0]?.[2] as Record<string, string>;
    expect(Object.keys(written)).toEqual(['BITS-Packet-Type', 'BITS-Session-Id', 'BITS-Received-Content-Range', 'Content-Length']);
  });

  test('an Ack cannot override BITS-Packet-Type or Content-Length', () => {
    let headers: Record<string, string> = {};
    const res = {
      writeHead: (_status: number, given: Record<string, string>) => (headers = given),
      end: () => undefined,
    } as unknown as ServerResponse;
    writeAck(res, ack({ 'BITS-Packet-Type': 'Fragment', 'Content-Length': '5' }));
    expect(headers).toEqual({ 'BITS-Packet-Type': 'Ack', 'Content-Length': '0' });
  });

  test('on the wire: exact header names, Content-Length: 0, never chunked, no body', async () => {
    const server = http.createServer((_req, res) => {
      res.setHeader('X-Set-Earlier', 'kept');
      writeAck(res, errorAck(sessionNotFound('{S}'), '{S}'));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const raw = await new Promise<string>((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1', () => {
          socket.end('POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
        });
        let data = '';
        socket.setEncoding('latin1');
        socket.on('data', (chunk: string) => (data += chunk));
        socket.on('end', () => resolve(data));
        socket.on('error', reject);
      });
      const [head, body] = raw.split('\r\n\r\n');
      const lines = (head ?? '').split('\r\n');
      expect(lines[0]).toBe('HTTP/1.1 500 Internal Server Error');
      expect(lines).toEqual(
        expect.arrayContaining([
          'BITS-Packet-Type: Ack',
          'BITS-Session-Id: {S}',
          'BITS-Error-Code: 0x8020001F',
          'BITS-Error: 0x8020001F',
          'BITS-Error-Context: 0x5',
          'Content-Length: 0',
          'X-Set-Earlier: kept',
        ]),
      );
      expect(raw).not.toMatch(/transfer-encoding/i);
      expect(raw).not.toMatch(/content-type/i);
      expect(body).toBe('');
    } finally {
      server.close();
    }
  });
});
