/**
 * The shared read buffer (lib/server/shared-read-buffer.ts): every plain TCP connection the shim
 * tracks reads into ONE process-wide 64 KiB buffer, so any byte that is still a view of that buffer
 * after the synchronous read callback is overwritten by the next read of any connection. These
 * tests keep bytes across ticks in every place a listener can get them (request bodies queued
 * behind a paused socket, an extra 'data' listener on the socket, the head and stream of an
 * upgraded or CONNECT socket, a client error's raw packet) while other connections push plenty of
 * different bytes through the server, then compare them byte for byte with what was sent.
 * Everything runs over real sockets on 127.0.0.1.
 */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import type tls from 'node:tls';
import { acceptBitsPost, bitsPostStats } from '../../lib/server/accept-bits-post';
import { isSharedView } from '../../lib/server/shared-read-buffer';
import { RawClient, buildRequest, closeServer, listen, waitFor } from '../helpers/net-utils';
import { delay, seededRandom, sha256, startServer, type StartedServer } from '../helpers/raw-http';
import { localhostCertificate } from '../helpers/self-signed';

// ---------------------------------------------------------------------------------------------
// Fixtures

const servers: StartedServer[] = [];
const otherServers: Array<http.Server | https.Server> = [];
const clients: RawClient[] = [];

afterEach(async () => {
  for (const client of clients.splice(0)) client.destroy();
  await Promise.all([
    ...servers.splice(0).map((server) => server.close()),
    ...otherServers.splice(0).map((server) => closeServer(server)),
  ]);
});

async function connect(port: number): Promise<RawClient> {
  const client = await RawClient.connect(port);
  client.socket.setNoDelay(true);
  clients.push(client);
  return client;
}

async function start(handler: http.RequestListener): Promise<StartedServer> {
  const server = await startServer(handler);
  servers.push(server);
  return server;
}

/** The value of a socket's own symbol property described as `description`, or 'missing'. */
function ownSymbolValue(socket: net.Socket, description: string): unknown {
  const symbol = Object.getOwnPropertySymbols(socket).find((s) => s.description === description);
  return symbol === undefined ? 'missing' : (socket as unknown as Record<symbol, unknown>)[symbol];
}

interface Echoed {
  readonly method: string;
  readonly url: string;
  readonly length: number;
  readonly sha: string;
}

function parseEcho(body: Buffer): Echoed {
  return JSON.parse(body.toString('utf8')) as Echoed;
}

/** How a request listener reads the body. */
type Mode = 'fast' | 'pause' | 'readable';

/**
 * Reads the body (`?mode=` fast, pause: pauses the request for a few ms every few chunks,
 * readable: reads only on a timer after each 'readable') and answers `{method, url, length, sha}`.
 * `before` may delay the first read (the request is not read at all until it resolves).
 */
function echoHandler(served: Echoed[], before?: (req: http.IncomingMessage) => Promise<void> | undefined): http.RequestListener {
  return (req, res) => {
    const hash = createHash('sha256');
    let length = 0;
    const update = (chunk: Buffer): void => {
      hash.update(chunk);
      length += chunk.length;
    };
    req.once('end', () => {
      const echoed: Echoed = { method: req.method ?? '', url: req.url ?? '', length, sha: hash.digest('hex') };
      served.push(echoed);
      const body = JSON.stringify(echoed);
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    });
    const mode = (/[?&]mode=(\w+)/.exec(req.url ?? '')?.[1] ?? 'fast') as Mode;
    const read = (): void => {
      if (mode === 'pause') {
        let chunks = 0;
        req.on('data', (chunk: Buffer) => {
          update(chunk);
          chunks++;
          if (chunks % 3 !== 0) return;
          req.pause();
          setTimeout(() => req.resume(), 1 + (chunks % 4));
        });
      } else if (mode === 'readable') {
        req.on('readable', () => {
          setTimeout(() => {
            for (let chunk: Buffer | null = req.read() as Buffer | null; chunk !== null; chunk = req.read() as Buffer | null) update(chunk);
          }, 2);
        });
      } else {
        req.on('data', update);
      }
    };
    const waiting = before?.(req);
    if (waiting === undefined) read();
    else void waiting.then(read);
  };
}

/** One BITS_POST (or POST) of `size` random bytes on its own connection, checked byte-exact. */
async function upload(port: number, size: number, method = 'BITS_POST', url = '/background'): Promise<void> {
  const body = randomBytes(size);
  const client = await connect(port);
  const request = buildRequest(method, url, { body });
  for (let at = 0; at < request.length; at += 256 * 1024) await client.write(request.subarray(at, at + 256 * 1024));
  const response = await client.readResponse();
  expect(response.statusCode).toBe(200);
  expect(parseEcho(response.body)).toEqual({ method, url, length: size, sha: sha256(body) });
  client.destroy();
}

let key = '';
let cert = '';

beforeAll(async () => {
  ({ key, cert } = await localhostCertificate());
});

// ---------------------------------------------------------------------------------------------

describe('shared read buffer: when it is used', () => {
  test('a plain http server reads every tracked connection into one shared 64 KiB buffer', async () => {
    const served: Echoed[] = [];
    const seen: unknown[] = [];
    const server = http.createServer(echoHandler(served));
    acceptBitsPost(server);
    server.on('connection', (socket: net.Socket) => seen.push(ownSymbolValue(socket, 'kBuffer')));
    otherServers.push(server);
    const port = await listen(server);
    // A plain server on the same Node: the symbol exists and is unused (guards the lookup itself).
    const plainSeen: unknown[] = [];
    const plain = http.createServer(echoHandler([]));
    plain.on('connection', (socket: net.Socket) => plainSeen.push(ownSymbolValue(socket, 'kBuffer')));
    otherServers.push(plain);
    const plainPort = await listen(plain);
    const plainClient = await connect(plainPort);
    expect((await plainClient.request('POST', '/plain', { body: Buffer.from('x') })).statusCode).toBe(200);
    expect(plainSeen).toEqual([null]);

    const body = randomBytes(200_000);
    for (let i = 0; i < 2; i++) {
      const client = await connect(port);
      const response = await client.request('BITS_POST', `/up${i}`, { body });
      expect(parseEcho(response.body)).toEqual({ method: 'BITS_POST', url: `/up${i}`, length: body.length, sha: sha256(body) });
    }
    expect(seen).toHaveLength(2);
    const [first, second] = seen;
    expect(Buffer.isBuffer(first)).toBe(true);
    expect((first as Buffer).length).toBe(64 * 1024);
    expect(isSharedView(first as Buffer)).toBe(true);
    // One buffer for the whole process, not one per connection.
    expect(second).toBe(first);
  });

  test('an https server does not use it (TLS), and BITS_POST still works', async () => {
    const served: Echoed[] = [];
    const tcpSeen: unknown[] = [];
    const tlsSeen: unknown[] = [];
    const server = https.createServer({ key, cert }, echoHandler(served));
    acceptBitsPost(server);
    server.on('connection', (socket: net.Socket) => tcpSeen.push(ownSymbolValue(socket, 'kBuffer')));
    server.on('secureConnection', (socket: tls.TLSSocket) => tlsSeen.push(ownSymbolValue(socket, 'kBuffer')));
    otherServers.push(server);
    const port = await listen(server);
    const client = await RawClient.connectTls(port, { ca: cert });
    clients.push(client);
    const body = randomBytes(300_000);
    const response = await client.request('BITS_POST', '/tls', { body });
    expect(response.statusCode).toBe(200);
    expect(parseEcho(response.body)).toEqual({ method: 'BITS_POST', url: '/tls', length: body.length, sha: sha256(body) });
    expect(tcpSeen).toEqual([null]);
    expect(tlsSeen).toEqual([null]);
    expect(bitsPostStats(server)).toMatchObject({ trackedConnections: 1, rewritten: 1, restored: 1 });
  });
});

describe('shared read buffer: request bodies', () => {
  test('concurrent keep-alive connections, pipelined, slow and fast consumers: every body byte-exact', async () => {
    const served: Echoed[] = [];
    const server = await start(echoHandler(served));
    const random = seededRandom(0x5eed_b175);
    const int = (min: number, max: number): number => min + Math.floor(random() * (max - min + 1));
    const modes: Mode[] = ['fast', 'pause', 'readable'];

    interface Planned {
      readonly method: string;
      readonly url: string;
      readonly body: Buffer;
    }
    const connections = 12;
    const plans: Planned[][][] = [];
    let totalBytes = 0;
    for (let c = 0; c < connections; c++) {
      const batches: Planned[][] = [];
      const count = int(4, 6);
      let batch: Planned[] = [];
      for (let r = 0; r < count; r++) {
        const kind = random();
        const size = kind < 0.25 ? int(0, 2048) : kind < 0.65 ? int(2049, 256 * 1024) : int(256 * 1024, 3 * 1024 * 1024);
        const method = random() < 0.7 ? 'BITS_POST' : 'POST';
        const mode = modes[int(0, modes.length - 1)] as Mode;
        batch.push({ method, url: `/c${c}/r${r}?mode=${mode}`, body: randomBytes(size) });
        totalBytes += size;
        // Some requests go pipelined with the next ones in the same stream of writes.
        if (random() < 0.55 || r === count - 1) {
          batches.push(batch);
          batch = [];
        }
      }
      plans.push(batches);
    }

    const mismatches: string[] = [];
    const pipelinedWrites = { count: 0 };
    const run = async (batches: Planned[][]): Promise<void> => {
      const client = await connect(server.port);
      for (const batch of batches) {
        const stream = Buffer.concat(batch.map((planned) => buildRequest(planned.method, planned.url, { body: planned.body })));
        const boundaries: number[] = [];
        let offset = 0;
        for (const planned of batch) {
          offset += buildRequest(planned.method, planned.url, { body: planned.body }).length;
          boundaries.push(offset);
        }
        for (let at = 0; at < stream.length; ) {
          const kind = random();
          const size = kind < 0.2 ? int(1, 64) : kind < 0.5 ? int(65, 8192) : int(8193, 256 * 1024);
          const end = Math.min(stream.length, at + size);
          if (boundaries.some((boundary) => boundary > at && boundary < end)) pipelinedWrites.count++;
          await client.write(stream.subarray(at, end));
          at = end;
        }
        for (const planned of batch) {
          const response = await client.readResponse();
          const got = response.statusCode === 200 ? JSON.stringify(parseEcho(response.body)) : response.body.toString('latin1');
          const want = JSON.stringify({ method: planned.method, url: planned.url, length: planned.body.length, sha: sha256(planned.body) });
          if (got !== want) {
            // A corrupted stream desynchronises the connection: report it and stop using it.
            mismatches.push(`${planned.url}: got ${response.statusCode} ${got}, want ${want}`);
            return;
          }
        }
      }
    };
    await Promise.all(
      plans.map((batches, c) => run(batches).catch((error: unknown) => mismatches.push(`connection ${c}: ${String(error)}`))),
    );

    expect(mismatches).toEqual([]);
    const requestCount = plans.flat(2).length;
    expect(served).toHaveLength(requestCount);
    expect(served.reduce((sum, echoed) => sum + echoed.length, 0)).toBe(totalBytes);
    // The plan really pipelined requests within one write.
    expect(pipelinedWrites.count).toBeGreaterThan(0);
    expect(bitsPostStats(server.server)).toMatchObject({ trackedConnections: connections });
  });

  test('a 16 MiB BITS_POST not read for 200 ms while another connection uploads arrives byte-exact', async () => {
    const served: Echoed[] = [];
    let otherDone: Promise<void> = Promise.resolve();
    const queued: number[] = [];
    let requestArrived: () => void = () => undefined;
    const arrived = new Promise<void>((resolve) => {
      requestArrived = resolve;
    });
    const server = await start(
      echoHandler(served, (req) => {
        if (!req.url?.startsWith('/late')) return undefined;
        requestArrived();
        // Reads nothing until 200 ms passed and the other upload finished, then everything.
        return Promise.all([delay(200), otherDone.catch(() => undefined)]).then(() => {
          queued.push(req.socket.readableLength);
        });
      }),
    );
    const body = randomBytes(16 * 1024 * 1024);
    const late = (async () => {
      const client = await connect(server.port);
      const request = buildRequest('BITS_POST', '/late', { body });
      for (let at = 0; at < request.length; at += 1024 * 1024) await client.write(request.subarray(at, at + 1024 * 1024));
      return client.readResponse();
    })();
    await arrived;
    otherDone = upload(server.port, 8 * 1024 * 1024, 'BITS_POST', '/other');
    await otherDone;
    const response = await late;
    expect(parseEcho(response.body)).toEqual({ method: 'BITS_POST', url: '/late', length: body.length, sha: sha256(body) });
    // The scenario happened: the socket held read bytes in its queue while the handler was idle.
    expect(queued).toHaveLength(1);
    expect(queued[0]).toBeGreaterThan(0);
  });

  test("an extra 'data' listener on a tracked socket keeps chunks that stay intact", async () => {
    const served: Echoed[] = [];
    const server = await start(echoHandler(served));
    // Keeps the raw chunks of the first connection, as a logging or metering listener might.
    const spied: Buffer[] = [];
    let spiedSocket: net.Socket | undefined;
    server.server.on('connection', (socket: net.Socket) => {
      if (spiedSocket !== undefined) return;
      spiedSocket = socket;
      socket.on('data', (chunk: Buffer) => spied.push(chunk));
    });
    const spiedClient = await connect(server.port);
    await waitFor(() => spiedSocket !== undefined, 5000, 'the spied connection');
    // POST only on the spied connection: no rewriting, so the socket's bytes are the bytes sent.
    const sent: Buffer[] = [];
    const spiedRun = (async () => {
      for (let i = 0; i < 6; i++) {
        const body = randomBytes(300_000 + i * 50_000);
        const request = buildRequest('POST', `/spied${i}?mode=${i % 2 === 0 ? 'fast' : 'pause'}`, { body });
        sent.push(request);
        for (let at = 0; at < request.length; at += 100_000) await spiedClient.write(request.subarray(at, at + 100_000));
        const response = await spiedClient.readResponse();
        expect(parseEcho(response.body).sha).toBe(sha256(body));
      }
    })();
    await Promise.all([spiedRun, upload(server.port, 6 * 1024 * 1024), upload(server.port, 4 * 1024 * 1024, 'POST')]);
    // Later traffic on other connections.
    await upload(server.port, 4 * 1024 * 1024);
    const expected = Buffer.concat(sent);
    const got = Buffer.concat(spied);
    expect(got.length).toBe(expected.length);
    expect(got.equals(expected)).toBe(true);
  });
});

describe('shared read buffer: bytes handed beyond the parser', () => {
  test('Upgrade and CONNECT: head and later stream bytes kept by listeners stay intact', async () => {
    const served: Echoed[] = [];
    const server = await start(echoHandler(served));
    interface Tunnel {
      readonly event: string;
      readonly method: string;
      readonly head: Buffer;
      readonly chunks: Buffer[];
    }
    const tunnels = new Map<string, Tunnel>();
    let tunnelsReady: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => {
      tunnelsReady = resolve;
    });
    const keep = (event: string, response: string) => (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
      // Keeps head and chunks as they are: no copies.
      const tunnel: Tunnel = { event, method: req.method ?? '', head, chunks: [] };
      tunnels.set(req.url ?? '', tunnel);
      socket.on('data', (chunk: Buffer) => tunnel.chunks.push(chunk));
      socket.write(response);
      if (tunnels.size === 2) tunnelsReady();
    };
    server.server.on('upgrade', keep('upgrade', 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x-test\r\n\r\n'));
    server.server.on('connect', keep('connect', 'HTTP/1.1 200 Connection Established\r\n\r\n'));

    const upgradeHead = randomBytes(3000);
    const connectHead = randomBytes(5000);
    const upgradeClient = await connect(server.port);
    const connectClient = await connect(server.port);
    await Promise.all([
      upgradeClient.write(
        Buffer.concat([
          Buffer.from('GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: x-test\r\n\r\n', 'latin1'),
          upgradeHead,
        ]),
      ),
      connectClient.write(
        Buffer.concat([Buffer.from('CONNECT tunnel.test:443 HTTP/1.1\r\nHost: tunnel.test:443\r\n\r\n', 'latin1'), connectHead]),
      ),
    ]);
    await ready;
    // Plenty of other reads through the shared buffer before the heads are looked at.
    await Promise.all([upload(server.port, 8 * 1024 * 1024), upload(server.port, 2 * 1024 * 1024, 'POST')]);

    const upgrade = tunnels.get('/ws');
    const tunnel = tunnels.get('tunnel.test:443');
    if (upgrade === undefined || tunnel === undefined) throw new Error('missing upgrade or CONNECT');
    expect([upgrade.event, upgrade.method, tunnel.event, tunnel.method]).toEqual(['upgrade', 'GET', 'connect', 'CONNECT']);
    const streamed = (t: Tunnel): Buffer => Buffer.concat([t.head, ...t.chunks]);
    // The head may arrive split from the request head; what the listener holds must be the bytes sent.
    expect(streamed(upgrade).equals(upgradeHead)).toBe(true);
    expect(streamed(tunnel).equals(connectHead)).toBe(true);

    // More bytes on the upgraded and tunnelled sockets, while others upload; checked only afterwards.
    const upgradeMore = randomBytes(400_000);
    const connectMore = randomBytes(300_000);
    const pump = async (client: RawClient, data: Buffer): Promise<void> => {
      for (let at = 0; at < data.length; at += 30_000) {
        await client.write(data.subarray(at, at + 30_000));
        await delay(1);
      }
    };
    await Promise.all([pump(upgradeClient, upgradeMore), pump(connectClient, connectMore), upload(server.port, 4 * 1024 * 1024)]);
    const total = (t: Tunnel): number => t.head.length + t.chunks.reduce((sum, chunk) => sum + chunk.length, 0);
    await waitFor(
      () => total(upgrade) >= upgradeHead.length + upgradeMore.length && total(tunnel) >= connectHead.length + connectMore.length,
      10_000,
      'the tunnelled bytes',
    );
    await upload(server.port, 8 * 1024 * 1024);
    expect(streamed(upgrade).equals(Buffer.concat([upgradeHead, upgradeMore]))).toBe(true);
    expect(streamed(tunnel).equals(Buffer.concat([connectHead, connectMore]))).toBe(true);
  });

  const badRequests: ReadonlyArray<readonly [string, (tag: string) => string]> = [
    ['an unknown method', (tag) => `NOTAMETHOD /${tag} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`],
    ['a control character in a header value', (tag) => `GET /${tag} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: a\x01${tag}\r\n\r\n`],
    ['a header line without a colon', (tag) => `GET /${tag} HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header ${tag}\r\n\r\n`],
    [
      'a head larger than maxHeaderSize',
      (tag) => `GET /${tag} HTTP/1.1\r\nHost: 127.0.0.1\r\n${Array.from({ length: 200 }, (_, i) => `X-Filler-${i}: ${tag}${'f'.repeat(80)}\r\n`).join('')}\r\n`,
    ],
  ];

  test.each(badRequests)("clientError: the raw packet of %s stays intact after other traffic", async (_name, make) => {
    const served: Echoed[] = [];
    const server = await start(echoHandler(served));
    const errors: Array<{ code: string; raw: Buffer; copy: Buffer }> = [];
    server.server.on('clientError', (err: NodeJS.ErrnoException & { rawPacket?: unknown }, socket: net.Socket) => {
      const raw = err.rawPacket;
      if (Buffer.isBuffer(raw)) errors.push({ code: err.code ?? '', raw, copy: Buffer.from(raw) });
      socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    });
    const tag = randomBytes(24).toString('hex');
    const bad = Buffer.from(make(tag), 'latin1');
    const client = await connect(server.port);
    // A good request first on the same connection, then the bad one in a write of its own.
    const ok = await client.request('GET', '/first');
    expect(parseEcho(ok.body)).toMatchObject({ method: 'GET', url: '/first' });
    await client.write(bad);
    expect((await client.readResponse()).statusCode).toBe(400);
    expect(errors).toHaveLength(1);
    await Promise.all([upload(server.port, 4 * 1024 * 1024), upload(server.port, 1024 * 1024, 'POST')]);
    const [error] = errors;
    if (error === undefined) throw new Error('no clientError');
    expect(error.code).toMatch(/^HPE_/);
    expect(error.copy.length).toBeGreaterThan(0);
    // The packet is (a part of) the bad request as sent...
    expect(bad.includes(error.copy)).toBe(true);
    // ...and still so after the shared buffer was overwritten many times.
    expect(error.raw.equals(error.copy)).toBe(true);
  });
});
