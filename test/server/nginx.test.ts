/**
 * BITS_POST behind a real nginx that pools upstream connections (`keepalive` in the upstream
 * block). Proves the recipes in docs/nginx.md:
 *  (a) the shim in 'all' mode behind nginx forwarding BITS_POST verbatim;
 *  (b) the documented failure of 'first-request' mode behind a pooling proxy;
 *  (c) trusted-proxy mode (`shim: false`): nginx rewrites BITS_POST to POST plus headers.
 * nginx runs as a child process (master_process off, everything in a temporary directory).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { bitsPostStats } from '../../lib/server/accept-bits-post';
import { createBitsServer } from '../../lib/server/create-server';
import { RawClient, closeServer, freePort, listen, makeBody, sha256, sleep } from '../helpers/net-utils';

interface Seen {
  readonly method: string;
  readonly url: string;
  readonly length: number;
  readonly sha: string;
  readonly client: string;
  readonly headers: http.IncomingHttpHeaders;
}

interface Upstream {
  readonly server: http.Server;
  port: number;
  readonly seen: Seen[];
  /** Methods seen on each upstream (nginx -> Node) connection, in order. */
  readonly perConnection: Map<net.Socket, Seen[]>;
  connections: number;
}

interface Echoed {
  method: string;
  url: string;
  length: number;
  sha: string;
  headers: http.IncomingHttpHeaders;
}

const SECRET = randomBytes(24).toString('base64url').slice(0, 32);

function findNginx(): string | undefined {
  const candidates = ['/usr/sbin/nginx', ...(process.env.PATH ?? '').split(path.delimiter).map((dir) => path.join(dir, 'nginx'))];
  return candidates.find((candidate) => {
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

function makeUpstream(bitsPost: Parameters<typeof createBitsServer>[1]): Upstream {
  const seen: Seen[] = [];
  const perConnection = new Map<net.Socket, Seen[]>();
  const server = createBitsServer((req, res) => {
    const hash = createHash('sha256');
    let length = 0;
    req.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      length += chunk.length;
    });
    req.on('end', () => {
      const sha = hash.digest('hex');
      const record: Seen = {
        method: req.method ?? '',
        url: req.url ?? '',
        length,
        sha,
        client: String(req.headers['x-test-client'] ?? ''),
        headers: req.headers,
      };
      seen.push(record);
      perConnection.get(req.socket)?.push(record);
      const body = JSON.stringify({ method: req.method, url: req.url, length, sha, headers: req.headers });
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    });
  }, bitsPost) as http.Server;
  const upstream: Upstream = { server, port: 0, seen, perConnection, connections: 0 };
  server.on('connection', (socket: net.Socket) => {
    upstream.connections++;
    perConnection.set(socket, []);
  });
  return upstream;
}

const all = makeUpstream({ bitsPost: { connections: 'all' } });
const firstRequest = makeUpstream({ bitsPost: { connections: 'first-request' } });
const trustedOptions = { shim: false, trustedProxy: { addresses: ['127.0.0.1'], secret: SECRET } } as const;
const trusted = makeUpstream({ bitsPost: trustedOptions });
const trustedStrict = makeUpstream({ bitsPost: trustedOptions });
const upstreams = [all, firstRequest, trusted, trustedStrict];

let nginx: ChildProcess | undefined;
let nginxExit: Promise<void> = Promise.resolve();
let dir = '';
const ports = { all: 0, firstRequest: 0, trusted: 0, trustedStrict: 0 };

/**
 * One nginx with four front ends. The upstream and server blocks are the recipes of docs/nginx.md
 * (ports, paths and secret filled in); keep both in step.
 */
function nginxConf(): string {
  const upstream = (name: string, port: number): string => `
    upstream ${name} {
        server 127.0.0.1:${port};
        keepalive 4;
        keepalive_timeout 60s;
    }`;
  const server = (name: string, listenPort: number, extra = ''): string => `
    server {
        listen 127.0.0.1:${listenPort};
        client_max_body_size 0;
        proxy_request_buffering off;

        location / {
            proxy_pass http://${name};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_read_timeout 300s;${extra}
        }
    }`;
  return `
worker_processes 1;
daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 512; }
http {
    access_log ${dir}/access.log;
    client_body_temp_path ${dir}/client_body;
    proxy_temp_path ${dir}/proxy;
    fastcgi_temp_path ${dir}/fastcgi;
    uwsgi_temp_path ${dir}/uwsgi;
    scgi_temp_path ${dir}/scgi;

    # (c) trusted-proxy mode, as briefed.
    map $request_method $bits_method {
        BITS_POST POST;
        default   $request_method;
    }
    # (c') stricter variant: the two headers only on BITS_POST (an empty value sends no header).
    map $request_method $bits_original_method {
        BITS_POST BITS_POST;
        default   "";
    }
    map $request_method $bits_proxy_secret {
        BITS_POST "${SECRET}";
        default   "";
    }
${upstream('bits_all', all.port)}
${upstream('bits_first', firstRequest.port)}
${upstream('bits_trusted', trusted.port)}
${upstream('bits_trusted_strict', trustedStrict.port)}
${server('bits_all', ports.all)}
${server('bits_first', ports.firstRequest)}
${server(
  'bits_trusted',
  ports.trusted,
  `
            proxy_method $bits_method;
            proxy_set_header X-BITS-Original-Method $request_method;
            proxy_set_header X-BITS-Proxy-Secret "${SECRET}";`,
)}
${server(
  'bits_trusted_strict',
  ports.trustedStrict,
  `
            proxy_method $bits_method;
            proxy_set_header X-BITS-Original-Method $bits_original_method;
            proxy_set_header X-BITS-Proxy-Secret $bits_proxy_secret;`,
)}
}
`;
}

function errorLog(): string {
  try {
    return fs.readFileSync(path.join(dir, 'error.log'), 'utf8');
  } catch {
    return '';
  }
}

async function waitForPort(port: number, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`nginx exited early (${child.exitCode ?? child.signalCode}):\n${errorLog()}`);
    }
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ port, host: '127.0.0.1' });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nginx did not listen on ${port}:\n${errorLog()}`);
    await sleep(20);
  }
}

beforeAll(async () => {
  const binary = findNginx();
  if (binary === undefined) {
    throw new Error('nginx not found: install it (apt-get install -y nginx-light); .ci/run does this');
  }
  for (const upstream of upstreams) upstream.port = await listen(upstream.server);
  for (const name of ['all', 'firstRequest', 'trusted', 'trustedStrict'] as const) ports[name] = await freePort();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bits-nginx-'));
  fs.writeFileSync(path.join(dir, 'nginx.conf'), nginxConf());
  const child = spawn(binary, ['-p', `${dir}/`, '-c', path.join(dir, 'nginx.conf'), '-e', path.join(dir, 'error.log')], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  nginx = child;
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  nginxExit = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    for (const port of Object.values(ports)) await waitForPort(port, child);
  } catch (error) {
    throw new Error(`${(error as Error).message}\nstderr: ${stderr}`);
  }
});

afterAll(async () => {
  if (nginx !== undefined && nginx.exitCode === null && nginx.signalCode === null) {
    nginx.kill('SIGTERM');
    const killer = setTimeout(() => nginx?.kill('SIGKILL'), 5000);
    await nginxExit;
    clearTimeout(killer);
  }
  await Promise.all(upstreams.map((upstream) => closeServer(upstream.server)));
  if (dir !== '') fs.rmSync(dir, { recursive: true, force: true });
});

function parse(body: Buffer): Echoed {
  return JSON.parse(body.toString('utf8')) as Echoed;
}

type Step = readonly [method: string, size: number];

/** Runs `steps` on one client connection through nginx, checking every echo byte for byte. */
async function session(port: number, clientId: string, steps: readonly Step[]): Promise<void> {
  const client = await RawClient.connect(port);
  try {
    for (const [index, [method, size]] of steps.entries()) {
      const body = size > 0 ? makeBody(size) : undefined;
      const url = `/${clientId}/${index}?size=${size}`;
      const response = await client.request(method, url, {
        headers: { 'X-Test-Client': clientId },
        ...(body === undefined ? {} : { body }),
      });
      expect(response.statusCode).toBe(200);
      const echoed = parse(response.body);
      const bytes = body ?? Buffer.alloc(0);
      expect({ method: echoed.method, url: echoed.url, length: echoed.length, sha: echoed.sha }).toEqual({
        method,
        url,
        length: bytes.length,
        sha: sha256(bytes),
      });
      expect(echoed.headers.host).toBe('127.0.0.1');
    }
  } finally {
    client.destroy();
  }
}

const MiB = 1024 * 1024;

describe("(a) shim in 'all' mode behind nginx with pooled upstream connections", () => {
  test('GET, BITS_POST and POST from several client connections all succeed byte-exact', async () => {
    const round: Step[] = [
      ['GET', 0],
      ['BITS_POST', 4 * MiB + 123],
      ['POST', 256 * 1024],
      ['BITS_POST', 1],
      ['GET', 0],
      ['BITS_POST', MiB],
    ];
    // Three concurrent clients, then three one after another (each reuses the pool the others left).
    await Promise.all(['c1', 'c2', 'c3'].map((id) => session(ports.all, id, round)));
    for (const id of ['s1', 's2', 's3']) await session(ports.all, id, round);

    const requests = all.seen.length;
    expect(requests).toBe(6 * round.length);
    expect(all.seen.filter((request) => request.method === 'BITS_POST')).toHaveLength(6 * 3);
    // Pooling really happened: fewer upstream connections than requests...
    expect(all.connections).toBeLessThan(requests);
    expect(all.connections).toBeLessThanOrEqual(8);
    const sequences = [...all.perConnection.values()];
    // ...one upstream connection carried requests of several clients...
    expect(sequences.some((seen) => new Set(seen.map((request) => request.client)).size >= 2)).toBe(true);
    // ...and a BITS_POST followed a GET on the same upstream connection.
    expect(
      sequences.some((seen) => seen.some((request, i) => request.method === 'BITS_POST' && seen[i - 1]?.method === 'GET')),
    ).toBe(true);
    expect(bitsPostStats(all.server)?.restored).toBe(18);
    console.log(`nginx (a): ${requests} requests over ${all.connections} upstream connections`);
  });
});

describe("(b) shim in 'first-request' mode behind the same nginx", () => {
  test('a BITS_POST on a pooled upstream connection that began with a GET gets 400', async () => {
    const client = await RawClient.connect(ports.firstRequest);
    const get = await client.request('GET', '/first');
    expect(get.statusCode).toBe(200);
    expect(firstRequest.connections).toBe(1);
    // nginx reuses the idle upstream connection, which Node already handed back to its own parser.
    const bits = await client.request('BITS_POST', '/second', { body: Buffer.from('hello') });
    expect(bits.statusCode).toBe(400);
    expect(firstRequest.connections).toBe(1);
    expect(firstRequest.seen.map((request) => request.method)).toEqual(['GET']);
    expect(bitsPostStats(firstRequest.server)?.passthrough['not-bits-first-request']).toBe(1);
    // The 400 closed that upstream connection; a BITS_POST on a fresh one works again.
    const again = await client.request('BITS_POST', '/third', { body: Buffer.from('hello') });
    expect(again.statusCode).toBe(200);
    expect(parse(again.body).method).toBe('BITS_POST');
    expect(firstRequest.connections).toBe(2);
    client.destroy();
  });
});

describe("(c) trusted-proxy mode ('shim: false') behind nginx", () => {
  test('BITS_POST arrives as BITS_POST with the proxy headers removed', async () => {
    const client = await RawClient.connect(ports.trusted);
    const body = makeBody(3 * MiB);
    const response = await client.request('BITS_POST', '/up', { body, headers: { 'BITS-Packet-Type': 'Fragment' } });
    expect(response.statusCode).toBe(200);
    const echoed = parse(response.body);
    expect(echoed).toMatchObject({ method: 'BITS_POST', url: '/up', length: body.length, sha: sha256(body) });
    expect(echoed.headers['bits-packet-type']).toBe('Fragment');
    expect(echoed.headers['x-bits-original-method']).toBeUndefined();
    expect(echoed.headers['x-bits-proxy-secret']).toBeUndefined();
    // Other methods pass unchanged.
    const get = await client.request('GET', '/plain');
    expect(parse(get.body).method).toBe('GET');
    const post = await client.request('POST', '/plain', { body: Buffer.from('abc') });
    expect(parse(post.body).method).toBe('POST');
    client.destroy();
    expect(bitsPostStats(trusted.server)?.proxyAccepted).toBe(1);
  });

  test("a client's own X-BITS-Original-Method: BITS_POST on a POST is overwritten by nginx", async () => {
    const client = await RawClient.connect(ports.trusted);
    const response = await client.request('POST', '/forged', {
      body: Buffer.from('data'),
      headers: { 'X-BITS-Original-Method': 'BITS_POST', 'X-BITS-Proxy-Secret': 'guess' },
    });
    const echoed = parse(response.body);
    expect(echoed.method).toBe('POST');
    // nginx overwrote both headers; bits-upload strips them so the secret never reaches the app.
    expect(echoed.headers['x-bits-original-method']).toBeUndefined();
    expect(echoed.headers['x-bits-proxy-secret']).toBeUndefined();
    expect(bitsPostStats(trusted.server)?.proxyRejected).toBe(0);
    client.destroy();
  });

  test('a direct POST with both headers but a wrong secret stays POST; a direct BITS_POST is refused', async () => {
    const client = await RawClient.connect(trusted.port);
    const wrong = await client.request('POST', '/direct', {
      body: Buffer.from('data'),
      headers: { 'X-BITS-Original-Method': 'BITS_POST', 'X-BITS-Proxy-Secret': 'x'.repeat(SECRET.length) },
    });
    expect(parse(wrong.body).method).toBe('POST');
    const missing = await client.request('POST', '/direct', {
      body: Buffer.from('data'),
      headers: { 'X-BITS-Original-Method': 'BITS_POST' },
    });
    expect(parse(missing.body).method).toBe('POST');
    // With the right secret from an allowed address the same request would be accepted...
    const right = await client.request('POST', '/direct', {
      body: Buffer.from('data'),
      headers: { 'X-BITS-Original-Method': 'BITS_POST', 'X-BITS-Proxy-Secret': SECRET },
    });
    expect(parse(right.body).method).toBe('BITS_POST');
    // ...and with the shim off, Node itself still refuses the raw verb.
    const raw = await client.request('BITS_POST', '/direct', { body: Buffer.from('data') });
    expect(raw.statusCode).toBe(400);
    client.destroy();
  });
});

describe("(c') trusted-proxy mode with the headers sent only on BITS_POST", () => {
  test('BITS_POST is restored; other requests carry neither header, even when the client sends them', async () => {
    const client = await RawClient.connect(ports.trustedStrict);
    const body = makeBody(2 * MiB);
    const bits = parse((await client.request('BITS_POST', '/up', { body })).body);
    expect(bits).toMatchObject({ method: 'BITS_POST', url: '/up', length: body.length, sha: sha256(body) });
    expect(bits.headers['x-bits-original-method']).toBeUndefined();
    expect(bits.headers['x-bits-proxy-secret']).toBeUndefined();
    const forged = { 'X-BITS-Original-Method': 'BITS_POST', 'X-BITS-Proxy-Secret': SECRET };
    for (const method of ['POST', 'GET']) {
      const echoed = parse((await client.request(method, '/other', { body: Buffer.from('data'), headers: forged })).body);
      expect(echoed.method).toBe(method);
      expect(echoed.headers['x-bits-original-method']).toBeUndefined();
      expect(echoed.headers['x-bits-proxy-secret']).toBeUndefined();
    }
    client.destroy();
    expect(bitsPostStats(trustedStrict.server)).toMatchObject({ proxyAccepted: 1, proxyRejected: 0 });
  });
});
