/**
 * bitsUpload() as request handler: recognising BITS packets, passing everything else to next(),
 * mounting under Express 4, Express 5 and Connect, body draining and connection handling around
 * the Ack (bits-protocol.md §0.10, §2.5, §6.3), and the misconfiguration warning (§0.1).
 */
import type { RequestListener } from 'node:http';
import connect from 'connect';
import express from 'express';
import bitsUploadDefault, { bitsUpload } from '../../lib/middleware';
import { MemoryStorage } from '../../lib/storage/memory';
import { finalResponses, RawConnection, sendRaw, startServer, type StartedServer } from '../helpers/raw-http';
import { waitFor } from '../helpers/net-utils';
import { StubStorage } from '../helpers/stub-storage';

const express4 = jest.requireActual<typeof import('express')>('express4');
const PROTOCOL = '{7df0354d-249b-430f-820d-3d2a9bef4931}';

function packet(target: string, headers: Record<string, string | number>, body = '', method = 'BITS_POST'): string {
  const lines = [`${method} ${target} HTTP/1.1`, 'Host: bits.example.test'];
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  if (!('Content-Length' in headers)) lines.push(`Content-Length: ${Buffer.byteLength(body, 'latin1')}`);
  return `${lines.join('\r\n')}\r\n\r\n${body}`;
}

let server: StartedServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function serve(listener: RequestListener, bitsPost = true): Promise<StartedServer> {
  server = await startServer(listener, bitsPost ? {} : { bitsPost: false });
  return server;
}

/** Runs TV-1 over one keep-alive connection at `prefix` and returns the last response headers. */
async function uploadTv1(port: number, prefix: string, storage: MemoryStorage): Promise<void> {
  const connection = await RawConnection.open(port);
  try {
    await connection.write(packet(`${prefix}/report.bin`, { 'BITS-Packet-Type': 'Ping' }));
    await connection.write(
      packet(`${prefix}/report.bin`, { 'BITS-Packet-Type': 'Create-Session', 'BITS-Supported-Protocols': PROTOCOL }),
    );
    await connection.waitForResponses(2);
    const [ping, created] = finalResponses(connection.responses);
    expect(ping?.statusCode).toBe(200);
    expect(ping?.headers['bits-packet-type']).toBe('Ack');
    const sid = created?.headers['bits-session-id'] as string;
    expect(sid).toMatch(/^\{[0-9A-F-]{36}\}$/);
    await connection.write(
      packet(`${prefix}/report.bin`, { 'BITS-Packet-Type': 'Fragment', 'BITS-Session-Id': sid, 'Content-Range': 'bytes 0-5/10' }, '012345'),
    );
    await connection.write(
      packet(`${prefix}/report.bin`, { 'BITS-Packet-Type': 'Fragment', 'BITS-Session-Id': sid, 'Content-Range': 'bytes 6-9/10' }, '6789'),
    );
    await connection.write(packet(`${prefix}/report.bin`, { 'BITS-Packet-Type': 'Close-Session', 'BITS-Session-Id': sid }));
    await connection.waitForResponses(5);
    const responses = finalResponses(connection.responses);
    expect(responses.map((response) => response.statusCode)).toEqual([200, 200, 200, 200, 200]);
    expect(responses.map((response) => response.headers['bits-received-content-range'])).toEqual([
      undefined,
      undefined,
      '6',
      '10',
      undefined,
    ]);
    for (const response of responses) {
      expect(response.headers['content-length']).toBe('0');
      expect(response.headers['transfer-encoding']).toBeUndefined();
      expect(response.body.length).toBe(0);
    }
    expect(storage.readFile(['report.bin'])?.toString()).toBe('0123456789');
  } finally {
    connection.destroy();
  }
}

describe('mounting', () => {
  test('Express 5 at a prefix', async () => {
    const storage = new MemoryStorage();
    const app = express();
    app.use('/uploads', bitsUpload({ storage }));
    const { port } = await serve(app);
    await uploadTv1(port, '/uploads', storage);
  });

  test('Express 5 at a prefix, absolute-form targets', async () => {
    const storage = new MemoryStorage();
    const app = express();
    app.use('/uploads', bitsUpload({ storage }));
    const { port } = await serve(app);
    await uploadTv1(port, 'http://bits.example.test/uploads', storage);
  });

  test('Express 4 at a prefix', async () => {
    const storage = new MemoryStorage();
    const app = express4();
    app.use('/uploads', bitsUpload({ storage }));
    const { port } = await serve(app);
    await uploadTv1(port, '/uploads', storage);
  });

  test('Connect at a prefix', async () => {
    const storage = new MemoryStorage();
    const app = connect();
    app.use('/uploads', bitsUpload({ storage }));
    const { port } = await serve(app);
    await uploadTv1(port, '/uploads', storage);
  });

  test('plain node:http, absolute-form targets', async () => {
    const storage = new MemoryStorage();
    const middleware = bitsUpload({ storage });
    const { port } = await serve((req, res) => middleware(req, res, () => res.writeHead(404).end()));
    await uploadTv1(port, 'http://bits.example.test', storage);
  });

  test('the default export is bitsUpload', () => {
    expect(bitsUploadDefault).toBe(bitsUpload);
  });
});

describe('ownership', () => {
  test('non-BITS requests go to next(), BITS requests never do', async () => {
    const app = express();
    app.use(bitsUpload({ storage: new StubStorage() }));
    app.use((req, res) => {
      res.status(404).end(`next ${req.method}`);
    });
    const { port } = await serve(app);
    const result = await sendRaw(
      port,
      packet('/x', {}, '', 'GET') + packet('/x', {}, 'data', 'POST') + packet('/x', { 'BITS-Packet-Type': 'Frobnicate' }),
      { responses: 3 },
    );
    const responses = finalResponses(result.responses);
    expect(responses.map((response) => response.statusCode)).toEqual([404, 404, 400]);
    expect(responses[2]?.headers['bits-error-code']).toBe('0x80070057');
  });

  test('a POST with BITS-Packet-Type on a server without acceptBitsPost warns once and goes to next()', async () => {
    const emitWarning = jest.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    try {
      const app = express();
      app.use(bitsUpload({ storage: new StubStorage() }));
      app.use((_req, res) => {
        res.status(404).end();
      });
      const { port } = await serve(app, false);
      const ping = packet('/x', { 'BITS-Packet-Type': 'Ping' }, '', 'POST');
      const result = await sendRaw(port, ping + ping, { responses: 2 });
      expect(finalResponses(result.responses).map((response) => response.statusCode)).toEqual([404, 404]);
      expect(emitWarning).toHaveBeenCalledTimes(1);
      expect(emitWarning).toHaveBeenCalledWith(expect.stringMatching(/acceptBitsPost\(server\)/), {
        code: 'BITS_UPLOAD_NO_BITS_POST',
      });
    } finally {
      emitWarning.mockRestore();
    }
  });

  test('app.use(bitsUpload) misuse is reported with the fix', () => {
    const call = bitsUpload as unknown as (...args: unknown[]) => unknown;
    expect(() => call({ method: 'GET', headers: {}, url: '/' }, {}, () => undefined)).toThrow(
      /not app\.use\(bitsUpload\)/,
    );
  });
});

describe('bodies and connections around the Ack', () => {
  async function session(connection: RawConnection, index: number): Promise<string> {
    await connection.write(packet('/r.bin', { 'BITS-Packet-Type': 'Create-Session', 'BITS-Supported-Protocols': PROTOCOL }));
    await connection.waitForResponses(index);
    return finalResponses(connection.responses)[index - 1]?.headers['bits-session-id'] as string;
  }

  test('a gap fragment body is drained and the connection stays usable (§6.3 case D)', async () => {
    const storage = new StubStorage();
    const middleware = bitsUpload({ storage });
    const { port } = await serve((req, res) => middleware(req, res, () => res.writeHead(404).end()));
    const connection = await RawConnection.open(port);
    try {
      const sid = await session(connection, 1);
      const body = 'x'.repeat(100_000);
      await connection.write(
        packet('/r.bin', { 'BITS-Packet-Type': 'Fragment', 'BITS-Session-Id': sid, 'Content-Range': `bytes 5-100004/200000` }, body),
      );
      await connection.write(packet('/r.bin', { 'BITS-Packet-Type': 'Ping' }));
      await connection.waitForResponses(3);
      const [, gap, ping] = finalResponses(connection.responses);
      expect(gap?.statusCode).toBe(416);
      expect(gap?.headers['bits-received-content-range']).toBe('0');
      expect(gap?.headers.connection).not.toBe('close');
      expect(ping?.statusCode).toBe(200);
      expect(storage.callsOf('writeFragment')).toHaveLength(0);
    } finally {
      connection.destroy();
    }
  });

  test('413: Connection: close, no error headers, the body is not stored (TV-9)', async () => {
    const storage = new StubStorage();
    const middleware = bitsUpload({ storage, maxFragmentSize: 4 });
    const { port } = await serve((req, res) => middleware(req, res, () => res.writeHead(404).end()));
    const connection = await RawConnection.open(port);
    try {
      const sid = await session(connection, 1);
      await connection.write(
        packet('/r.bin', { 'BITS-Packet-Type': 'Fragment', 'BITS-Session-Id': sid, 'Content-Range': 'bytes 0-5/10' }, '012345'),
      );
      await connection.waitForClose();
      const tooBig = finalResponses(connection.responses)[1];
      expect(tooBig?.statusCode).toBe(413);
      expect(tooBig?.headers.connection).toBe('close');
      expect(tooBig?.headers['bits-packet-type']).toBe('Ack');
      expect(tooBig?.headers['content-length']).toBe('0');
      expect(tooBig?.headers['bits-error-code']).toBeUndefined();
      expect(tooBig?.headers['bits-error']).toBeUndefined();
      expect(storage.callsOf('writeFragment')).toHaveLength(0);
    } finally {
      connection.destroy();
    }
  });

  test('a Ping with a large body is answered 400 and the connection closed', async () => {
    const middleware = bitsUpload({ storage: new StubStorage(), maxFragmentSize: 4 });
    const { port } = await serve((req, res) => middleware(req, res, () => res.writeHead(404).end()));
    const result = await sendRaw(port, packet('/r.bin', { 'BITS-Packet-Type': 'Ping' }, 'x'.repeat(10)));
    const [response] = finalResponses(result.responses);
    expect(response?.statusCode).toBe(400);
    expect(response?.headers.connection).toBe('close');
    expect(result.closed).toBe(true);
  });

  test('a client that drops mid-fragment leaves the durable prefix, reported by the next Ack (§6.3)', async () => {
    const storage = new StubStorage();
    const middleware = bitsUpload({ storage });
    const { port } = await serve((req, res) => middleware(req, res, () => res.writeHead(404).end()));
    const first = await RawConnection.open(port);
    const sid = await session(first, 1);
    await first.write(
      packet(
        '/r.bin',
        { 'BITS-Packet-Type': 'Fragment', 'BITS-Session-Id': sid, 'Content-Range': 'bytes 0-9/10', 'Content-Length': 10 },
        '0123',
      ),
    );
    await waitFor(() => (storage.dataOf(sid)?.length ?? 0) === 4);
    first.destroy();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(storage.callsOf('commit')).toHaveLength(0);

    const second = await RawConnection.open(port);
    try {
      await second.write(
        packet('/r.bin', { 'BITS-Packet-Type': 'Fragment', 'BITS-Session-Id': sid, 'Content-Range': 'bytes 6-9/10' }, '6789'),
      );
      await second.waitForResponses(1);
      const [gap] = finalResponses(second.responses);
      expect(gap?.statusCode).toBe(416);
      expect(gap?.headers['bits-received-content-range']).toBe('4');
      await second.write(
        packet('/r.bin', { 'BITS-Packet-Type': 'Fragment', 'BITS-Session-Id': sid, 'Content-Range': 'bytes 0-9/10' }, '0123456789'),
      );
      await second.waitForResponses(2);
      expect(finalResponses(second.responses)[1]?.headers['bits-received-content-range']).toBe('10');
      expect(storage.fileText('r.bin')).toBe('0123456789');
    } finally {
      second.destroy();
    }
  });

  test('an internal storage fault is still answered with an Ack', async () => {
    const storage = new StubStorage();
    storage.failNext('createSession', new Error('database down'));
    const middleware = bitsUpload({ storage });
    const { port } = await serve((req, res) => middleware(req, res, () => res.writeHead(404).end()));
    const result = await sendRaw(
      port,
      packet('/r.bin', { 'BITS-Packet-Type': 'Create-Session', 'BITS-Supported-Protocols': PROTOCOL }),
      { responses: 1 },
    );
    const [response] = finalResponses(result.responses);
    expect(response?.statusCode).toBe(500);
    expect(response?.headers).toMatchObject({
      'bits-packet-type': 'Ack',
      'bits-error-code': '0x80004005',
      'bits-error': '0x80004005',
      'bits-error-context': '0x5',
      'content-length': '0',
    });
  });

  test('Create-Session without Content-Length on the wire → 411 (TV-14)', async () => {
    const middleware = bitsUpload({ storage: new StubStorage() });
    const { port } = await serve((req, res) => middleware(req, res, () => res.writeHead(404).end()));
    const raw = `BITS_POST /r.bin HTTP/1.1\r\nHost: h\r\nBITS-Packet-Type: Create-Session\r\nBITS-Supported-Protocols: ${PROTOCOL}\r\n\r\n`;
    const result = await sendRaw(port, raw, { responses: 1 });
    const [response] = finalResponses(result.responses);
    expect(response?.statusCode).toBe(411);
    expect(response?.headers['bits-error-code']).toBe('0x80070057');
  });
});
