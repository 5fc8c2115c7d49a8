/**
 * bitsUpload() inside real applications (bits-protocol.md §2.5, §3.6): Express 4 (package
 * `express4`), Express 5 and Connect, mounted at a prefix, at the root and (Express) inside a
 * Router, on servers from `acceptBitsPost(app.listen(0))` and from `createBitsServer(app)`. A whole
 * upload runs on one keep-alive connection between plain GET and JSON POST requests to other
 * routes, which keep working; requests that are not `BITS_POST` pass through to the app.
 */
import { promises as fsp } from 'node:fs';
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import path from 'node:path';
import connect from 'connect';
import express from 'express';
import { bitsUpload, type BitsUploadMiddleware } from '../../lib/middleware';
import { BITS_PROTOCOL, BitsClient, patternSource, sha256OfFile, sha256OfSource, type HttpResponse } from '../helpers/bits-client';
import {
  E_INVALIDARG,
  errorHeaders,
  expectAck,
  listTree,
  listUploads,
  serve,
  useServerTest,
  type Listenable,
} from './support';

const express4 = jest.requireActual<typeof import('express')>('express4');

type Mount = 'prefix' | 'root' | 'router';
type App = Listenable & RequestListener;

/** The URL path under which the middleware's root is reachable for each mount. */
const BASE: Record<Mount, string> = { prefix: '/uploads', root: '', router: '/uploads/files' };

function buildExpress(factory: typeof express, mount: Mount, bits: BitsUploadMiddleware): App {
  const app = factory();
  app.get('/api/before', (_req, res) => {
    res.json({ route: 'before' });
  });
  if (mount === 'prefix') app.use('/uploads', bits);
  else if (mount === 'root') app.use(bits);
  else {
    const router = factory.Router();
    router.get('/status', (_req, res) => {
      res.json({ route: 'router' });
    });
    router.use('/files', bits);
    app.use('/uploads', router);
  }
  // Mounted after bitsUpload, with its own body parser (§2.5: parsers go after the middleware).
  app.post('/api/echo', factory.json(), (req, res) => {
    res.json({ echo: req.body as unknown });
  });
  return app;
}

function sendJson(res: ServerResponse, value: unknown): void {
  const text = JSON.stringify(value);
  res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function buildConnect(mount: Mount, bits: BitsUploadMiddleware): App {
  const app = connect();
  app.use('/api/before', (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => {
    if (req.method !== 'GET') return next();
    sendJson(res, { route: 'before' });
  });
  if (mount === 'prefix') app.use('/uploads', bits);
  else app.use(bits);
  app.use('/api/echo', (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => {
    if (req.method !== 'POST') return next();
    const parts: Buffer[] = [];
    req.on('data', (chunk: Buffer) => parts.push(chunk));
    req.on('end', () => sendJson(res, { echo: JSON.parse(Buffer.concat(parts).toString('utf8')) as unknown }));
  });
  return app;
}

interface Framework {
  readonly name: string;
  readonly mounts: readonly Mount[];
  build(mount: Mount, bits: BitsUploadMiddleware): App;
}

const FRAMEWORKS: readonly Framework[] = [
  { name: 'Express 4', mounts: ['prefix', 'root', 'router'], build: (mount, bits) => buildExpress(express4, mount, bits) },
  { name: 'Express 5', mounts: ['prefix', 'root', 'router'], build: (mount, bits) => buildExpress(express, mount, bits) },
  { name: 'Connect', mounts: ['prefix', 'root'], build: buildConnect },
];

const CASES = FRAMEWORKS.flatMap((framework) =>
  framework.mounts.flatMap((mount) =>
    (['listen', 'createBitsServer'] as const).map((via) => ({ framework, mount, via, title: `${framework.name}, ${mount}, ${via}` })),
  ),
);

test('the express4 package is Express 4 and express is Express 5', () => {
  expect(jest.requireActual<{ version: string }>('express4/package.json').version).toMatch(/^4\./);
  expect(jest.requireActual<{ version: string }>('express/package.json').version).toMatch(/^5\./);
});

const env = useServerTest();

async function get(client: BitsClient, target: string): Promise<HttpResponse> {
  const [response] = await client.raw(`GET ${target} HTTP/1.1\r\nHost: ${client.host}\r\nConnection: Keep-Alive\r\n\r\n`);
  if (response === undefined) throw new Error('no response');
  return response;
}

async function postJson(client: BitsClient, target: string, value: unknown): Promise<HttpResponse> {
  const text = JSON.stringify(value);
  const [response] = await client.raw(
    `POST ${target} HTTP/1.1\r\nHost: ${client.host}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(text)}\r\nConnection: Keep-Alive\r\n\r\n${text}`,
  );
  if (response === undefined) throw new Error('no response');
  return response;
}

function json(response: HttpResponse): unknown {
  expect(response.headers['content-type']).toMatch(/^application\/json/);
  return JSON.parse(response.body.toString('utf8')) as unknown;
}

/** Plain routes answer as before, never with BITS headers. */
async function expectRoutesWork(client: BitsClient, n: number): Promise<void> {
  const before = await get(client, '/api/before');
  expect(before.status).toBe(200);
  expect(json(before)).toEqual({ route: 'before' });
  const echo = await postJson(client, '/api/echo', { n, text: 'BITS_POST / HTTP/1.1' });
  expect(echo.status).toBe(200);
  expect(json(echo)).toEqual({ echo: { n, text: 'BITS_POST / HTTP/1.1' } });
  for (const response of [before, echo]) expect(response.headers['bits-packet-type']).toBeUndefined();
}

describe.each(CASES)('$title', ({ framework, mount, via }) => {
  test('a whole upload between other requests on one keep-alive connection', async () => {
    env.running = await serve(framework.build(mount, bitsUpload({ directory: env.sandbox.root })), via);
    const client = new BitsClient(env.running.port);
    env.clients.push(client);
    const base = BASE[mount];

    await expectRoutesWork(client, 1);
    const source = patternSource(`${framework.name}-${mount}`, 200 * 1024 + 3);
    expectAck(await client.ping(`${base}/nested/deep/file.bin`), 200);
    const result = await client.uploadFile(`${base}/nested/deep/file.bin`, source, 64 * 1024);
    expect(result.offsets).toEqual([65_536, 131_072, 196_608, 204_803]);
    await expectRoutesWork(client, 2);

    expect(await sha256OfFile(path.join(env.sandbox.root, 'nested', 'deep', 'file.bin'))).toBe(await sha256OfSource(source));
    expect(await listUploads(env.sandbox.root)).toEqual(['nested/', 'nested/deep/', 'nested/deep/file.bin 204803']);
    expect(client.connectionsOpened).toBe(1);
    expect(env.running.connections()).toBe(1);
  });

  test('absolute-form request-targets (§2.1) reach the same destination and session as origin-form', async () => {
    env.running = await serve(framework.build(mount, bitsUpload({ directory: env.sandbox.root })), via);
    const client = new BitsClient(env.running.port);
    env.clients.push(client);
    const origin = `${BASE[mount]}/abs.bin`;
    const absolute = `http://bits.example.test${origin}`;
    const sid = await client.openSession(absolute);
    const received = (value: number): Record<string, string> => ({
      'BITS-Session-Id': sid,
      'BITS-Received-Content-Range': String(value),
    });
    expectAck(await client.fragment(origin, sid, 0, 4, 10, Buffer.from('01234')), 200, received(5));
    expectAck(await client.fragment(absolute, sid, 5, 9, 10, Buffer.from('56789')), 200, received(10));
    expectAck(await client.close(origin, sid), 200, { 'BITS-Session-Id': sid });
    expect(await fsp.readFile(path.join(env.sandbox.root, 'abs.bin'), 'latin1')).toBe('0123456789');
    expect(await listUploads(env.sandbox.root)).toEqual(['abs.bin 10']);
  });

  test('requests that are not BITS packets for the middleware pass through to the app', async () => {
    env.running = await serve(framework.build(mount, bitsUpload({ directory: env.sandbox.root })), via);
    const client = new BitsClient(env.running.port);
    env.clients.push(client);
    const base = BASE[mount];

    // GET of an upload URL: not the middleware's business (§3.6).
    const fetched = await get(client, `${base}/file.bin`);
    expect(fetched.status).toBe(404);
    expect(fetched.headers['bits-packet-type']).toBeUndefined();
    // A plain POST carrying BITS headers is not a BITS_POST.
    const plain = await client.packet({
      method: 'POST',
      target: `${base}/file.bin`,
      packetType: 'Create-Session',
      supportedProtocols: BITS_PROTOCOL,
      strict: false,
    });
    expect(plain.status).toBe(404);
    expect(plain.headers['bits-packet-type']).toBeUndefined();
    if (mount !== 'root') {
      // BITS_POST outside the mount point never reaches the middleware.
      const elsewhere = await client.packet({
        target: '/elsewhere/file.bin',
        packetType: 'Create-Session',
        supportedProtocols: BITS_PROTOCOL,
        strict: false,
      });
      expect(elsewhere.status).toBe(404);
      expect(elsewhere.headers['bits-packet-type']).toBeUndefined();
    }
    if (mount === 'router') expect(json(await get(client, '/uploads/status'))).toEqual({ route: 'router' });
    // Escapes are refused whatever the framework did to req.url.
    for (const target of [`${base}/../escape.bin`, `${base}/%2e%2e/escape.bin`, `${base}/..%2fescape.bin`]) {
      expectAck(await client.createSession(target), 400, errorHeaders(E_INVALIDARG));
    }
    await expectRoutesWork(client, 3);
    expect(await listUploads(env.sandbox.root)).toEqual([]);
    // Nothing beside the upload root either.
    expect((await listTree(env.sandbox.dir)).filter((entry) => !entry.startsWith('root/'))).toEqual([]);
  });
});
