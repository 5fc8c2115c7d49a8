/**
 * The test client itself (test/helpers/bits-client.ts), against a scripted raw TCP server: it must
 * reject Acks that break the rules, follow `BITS-Received-Content-Range` like the Windows client,
 * and produce the same pseudo-random bytes for any slice. Without this, the end-to-end tests could
 * pass against a server that sends malformed Acks.
 */
import net from 'node:net';
import {
  BitsClient,
  BitsProtocolViolation,
  patternBytes,
  patternSource,
  sha256OfSource,
  type HttpResponse,
} from '../helpers/bits-client';

interface ScriptedRequest {
  readonly requestLine: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
}

/** Raw response bytes; `close` ends the connection after them. */
type Script = (request: ScriptedRequest) => string | { readonly raw: string; readonly close: true };

const servers: net.Server[] = [];
const clients: BitsClient[] = [];

afterEach(async () => {
  for (const client of clients.splice(0)) client.dispose();
  await Promise.all(servers.splice(0).map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
});

/** A TCP server that parses Content-Length-framed requests and answers with `script`'s raw bytes. */
async function scripted(script: Script): Promise<BitsClient> {
  const server = net.createServer((socket) => {
    let buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        const headEnd = buffer.indexOf('\r\n\r\n');
        if (headEnd === -1) return;
        const lines = buffer.toString('latin1', 0, headEnd).split('\r\n');
        const headers: Record<string, string> = {};
        for (const line of lines.slice(1)) {
          const colon = line.indexOf(':');
          headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
        }
        const length = Number(headers['content-length'] ?? '0');
        if (buffer.length < headEnd + 4 + length) return;
        const body = buffer.subarray(headEnd + 4, headEnd + 4 + length);
        buffer = buffer.subarray(headEnd + 4 + length);
        const answer = script({ requestLine: lines[0] ?? '', headers, body });
        if (typeof answer === 'string') socket.write(answer, 'latin1');
        else socket.end(answer.raw, 'latin1');
      }
    });
    socket.on('error', () => undefined);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const client = new BitsClient((server.address() as net.AddressInfo).port);
  clients.push(client);
  return client;
}

const ack = (head: string, extra = ''): string => `${head}\r\n${extra}\r\n`;

describe('strict Ack checks', () => {
  test('no Content-Length (the connection delimits the empty body) is a violation', async () => {
    const client = await scripted(() => ({ raw: 'HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nConnection: close\r\n\r\n', close: true }));
    await expect(client.ping('/x')).rejects.toThrow(BitsProtocolViolation);
  });

  test.each([
    ['Content-Length 00', 'HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nContent-Length: 00\r\n\r\n'],
    ['a body', 'HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nContent-Length: 2\r\n\r\nok'],
    ['chunked', 'HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
    ['no BITS-Packet-Type', 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'],
    ['BITS-Packet-Type ACK', 'HTTP/1.1 200 OK\r\nBITS-Packet-Type: ACK\r\nContent-Length: 0\r\n\r\n'],
    ['two Content-Length headers', 'HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n'],
    ['HTTP/1.0', 'HTTP/1.0 200 OK\r\nBITS-Packet-Type: Ack\r\nContent-Length: 0\r\n\r\n'],
    [
      'a lower-case error code',
      'HTTP/1.1 500 x\r\nBITS-Packet-Type: Ack\r\nBITS-Error-Code: 0x8020001f\r\nBITS-Error: 0x8020001f\r\nBITS-Error-Context: 0x5\r\nContent-Length: 0\r\n\r\n',
    ],
    [
      'an error code without 0x',
      'HTTP/1.1 500 x\r\nBITS-Packet-Type: Ack\r\nBITS-Error-Code: 8020001F\r\nBITS-Error: 8020001F\r\nBITS-Error-Context: 0x5\r\nContent-Length: 0\r\n\r\n',
    ],
    [
      'BITS-Error-Code without BITS-Error',
      'HTTP/1.1 500 x\r\nBITS-Packet-Type: Ack\r\nBITS-Error-Code: 0x8020001F\r\nBITS-Error-Context: 0x5\r\nContent-Length: 0\r\n\r\n',
    ],
    [
      'BITS-Error different from BITS-Error-Code',
      'HTTP/1.1 500 x\r\nBITS-Packet-Type: Ack\r\nBITS-Error-Code: 0x8020001F\r\nBITS-Error: 0x80070057\r\nBITS-Error-Context: 0x5\r\nContent-Length: 0\r\n\r\n',
    ],
    [
      'no context',
      'HTTP/1.1 500 x\r\nBITS-Packet-Type: Ack\r\nBITS-Error-Code: 0x8020001F\r\nBITS-Error: 0x8020001F\r\nContent-Length: 0\r\n\r\n',
    ],
    [
      'error headers on 200',
      'HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nBITS-Error-Code: 0x00000000\r\nBITS-Error: 0x00000000\r\nBITS-Error-Context: 0x5\r\nContent-Length: 0\r\n\r\n',
    ],
  ])('%s is a violation', async (_name, response) => {
    const client = await scripted(() => response);
    await expect(client.ping('/x')).rejects.toThrow(BitsProtocolViolation);
  });

  test('bytes after an Ack on a keep-alive connection fail the next request', async () => {
    const client = await scripted(() => 'HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nContent-Length: 0\r\n\r\nGARBAGE');
    await client.ping('/x');
    await new Promise((resolve) => setTimeout(resolve, 50));
    await expect(client.ping('/x')).rejects.toThrow(/unexpected bytes after the last response/);
  });

  test('a good Ack passes, and the request is written in the Windows header order', async () => {
    const seen: ScriptedRequest[] = [];
    const client = await scripted((request) => {
      seen.push(request);
      return ack('HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nContent-Length: 0');
    });
    const response: HttpResponse = await client.fragment('/u/a.bin', '{S}', 0, 2, 3, Buffer.from('abc'));
    expect(response.status).toBe(200);
    expect(seen[0]?.requestLine).toBe('BITS_POST /u/a.bin HTTP/1.1');
    expect(Object.keys(seen[0]?.headers ?? {})).toEqual([
      'accept',
      'bits-packet-type',
      'bits-session-id',
      'content-name',
      'content-range',
      'user-agent',
      'host',
      'content-length',
      'connection',
    ]);
    expect(seen[0]?.headers['content-range']).toBe('bytes 0-2/3');
    expect(seen[0]?.body.toString()).toBe('abc');
  });
});

describe('uploadFile follows the server like the Windows client', () => {
  test('shrinks after 413, resyncs after 416 and after a 200 that reports another offset', async () => {
    const ranges: string[] = [];
    let received = 0;
    let first = true;
    const client = await scripted((request) => {
      const type = request.headers['bits-packet-type'];
      if (type === 'Create-Session') {
        return ack('HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nBITS-Session-Id: {S}\r\nContent-Length: 0');
      }
      if (type === 'Close-Session') return ack('HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nContent-Length: 0');
      const range = request.headers['content-range'] ?? '';
      ranges.push(range);
      const [, start, end] = /^bytes (\d+)-(\d+)\/\d+$/.exec(range) ?? [];
      if (Number(end) - Number(start) + 1 > 8 * 1024) return ack('HTTP/1.1 413 Too Large\r\nBITS-Packet-Type: Ack\r\nContent-Length: 0');
      if (Number(start) > received) {
        return ack(`HTTP/1.1 416 x\r\nBITS-Packet-Type: Ack\r\nBITS-Received-Content-Range: ${received}\r\nContent-Length: 0`);
      }
      // Pretend to keep only half of the first fragment.
      received = first ? Number(start) + 1000 : Number(end) + 1;
      first = false;
      return ack(`HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nBITS-Received-Content-Range: ${received}\r\nContent-Length: 0`);
    });
    const result = await client.uploadFile('/u/a.bin', patternSource('fake', 20_000), 16 * 1024, { startAt: 5000 });
    expect(ranges).toEqual([
      'bytes 5000-19999/20000', // 413
      'bytes 5000-13191/20000', // 416, R = 0
      'bytes 0-8191/20000', // 200, R = 1000
      'bytes 1000-9191/20000',
      'bytes 9192-17383/20000',
      'bytes 17384-19999/20000',
    ]);
    expect(result.offsets).toEqual([0, 1000, 9192, 17384, 20000]);
    expect(result.finalFragmentSize).toBe(8192);
  });

  test('a 416 without BITS-Received-Content-Range is a violation', async () => {
    const client = await scripted((request) =>
      request.headers['bits-packet-type'] === 'Create-Session'
        ? ack('HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nBITS-Session-Id: {S}\r\nContent-Length: 0')
        : ack('HTTP/1.1 416 x\r\nBITS-Packet-Type: Ack\r\nContent-Length: 0'),
    );
    await expect(client.uploadFile('/u/a.bin', Buffer.from('abc'), 2)).rejects.toThrow(/BITS-Received-Content-Range/);
  });

  test('a range as BITS-Received-Content-Range is a violation (§0.2)', async () => {
    const client = await scripted((request) =>
      request.headers['bits-packet-type'] === 'Create-Session'
        ? ack('HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nBITS-Session-Id: {S}\r\nContent-Length: 0')
        : ack('HTTP/1.1 200 OK\r\nBITS-Packet-Type: Ack\r\nBITS-Received-Content-Range: 0-2\r\nContent-Length: 0'),
    );
    await expect(client.uploadFile('/u/a.bin', Buffer.from('abc'), 3)).rejects.toThrow(BitsProtocolViolation);
  });
});

test('pattern data: any slice equals the same bytes of the whole stream', async () => {
  const whole = await patternBytes('slices', 0, 200_003);
  for (const [start, end] of [
    [0, 1],
    [15, 17],
    [16, 32],
    [65_535, 65_537],
    [100_001, 200_003],
    [7, 7],
  ] as const) {
    expect((await patternBytes('slices', start, end)).equals(whole.subarray(start, end))).toBe(true);
  }
  expect(await sha256OfSource(patternSource('slices', 200_003))).toBe(
    (await import('node:crypto')).createHash('sha256').update(whole).digest('hex'),
  );
  expect((await patternBytes('other', 0, 64)).equals(whole.subarray(0, 64))).toBe(false);
});
