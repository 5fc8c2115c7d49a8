/**
 * Shared set-up of the end-to-end tests in test/http: temporary sandboxes, apps listening on
 * 127.0.0.1 port 0 with `BITS_POST` support, and exact Ack assertions.
 */
import { promises as fsp } from 'node:fs';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { acceptBitsPost } from '../../lib/server/accept-bits-post';
import { createBitsServer } from '../../lib/server/create-server';
import type { BitsClient, HttpResponse } from '../helpers/bits-client';

/** A fresh temporary folder: `dir` is the sandbox, `root` the upload root inside it. */
export interface Sandbox {
  readonly dir: string;
  readonly root: string;
  remove(): Promise<void>;
}

/** Creates `<tmp>/bits-http-XXXX/` with an (empty) upload root `root/` inside it. */
export async function makeSandbox(): Promise<Sandbox> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'bits-http-'));
  const root = path.join(dir, 'root');
  await fsp.mkdir(root);
  return { dir, root, remove: () => fsp.rm(dir, { recursive: true, force: true }) };
}

/** The state of one end-to-end test, kept by {@link useServerTest}. */
export interface ServerTest {
  /** A fresh sandbox for each test. */
  readonly sandbox: Sandbox;
  /** The server the test started, if any: closed after the test. */
  running: RunningServer | undefined;
  /** Clients the test made: disposed after the test. */
  readonly clients: BitsClient[];
}

/**
 * Registers the set-up the end-to-end suites share: a fresh sandbox before each test, and after
 * it every client in `clients` disposed, the running server closed and the sandbox removed. Hooks
 * a suite registers later run after these (jest runs hooks in the order they were declared).
 */
export function useServerTest(): ServerTest {
  let sandbox: Sandbox | undefined;
  const test: ServerTest = {
    get sandbox(): Sandbox {
      if (sandbox === undefined) throw new Error('useServerTest: the sandbox exists only during a test');
      return sandbox;
    },
    running: undefined,
    clients: [],
  };
  beforeEach(async () => {
    sandbox = await makeSandbox();
  });
  afterEach(async () => {
    for (const client of test.clients.splice(0)) client.dispose();
    await test.running?.close();
    test.running = undefined;
    await sandbox?.remove();
    sandbox = undefined;
  });
  return test;
}

/**
 * Every entry below `dir`, as sorted relative paths with a type mark (`/` folder, `@` link) and
 * the size of files, e.g. `root/report.bin 10`. Entries that vanish while being listed (a record
 * replaced by the server at that moment) are left out.
 */
export async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const gone = (error: unknown): undefined => {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  };
  const walk = async (folder: string): Promise<void> => {
    const entries = await fsp.readdir(folder, { withFileTypes: true }).catch(gone);
    for (const entry of entries ?? []) {
      const full = path.join(folder, entry.name);
      const rel = path.relative(dir, full);
      if (entry.isSymbolicLink()) out.push(`${rel}@`);
      else if (entry.isDirectory()) {
        out.push(`${rel}/`);
        await walk(full);
      } else {
        const stats = await fsp.stat(full).catch(gone);
        if (stats !== undefined) out.push(`${rel} ${stats.size}`);
      }
    }
  };
  await walk(dir);
  return out.sort();
}

/** Files of the upload root that are uploads (the session folder is left out). */
export async function listUploads(root: string): Promise<string[]> {
  return (await listTree(root)).filter((entry) => !entry.startsWith('.bits-sessions'));
}

export async function exists(file: string): Promise<boolean> {
  return fsp.stat(file).then(
    () => true,
    () => false,
  );
}

/** Anything `app.listen(port, host)` works on: Express 4/5 and Connect apps. */
export interface Listenable {
  listen(port: number, hostname: string): http.Server;
}

/** A listening server and the means to stop it. */
export interface RunningServer {
  readonly server: http.Server;
  readonly port: number;
  /** TCP connections the server accepted so far. */
  connections(): number;
  close(): Promise<void>;
}

/**
 * Serves `app` on 127.0.0.1, port 0: `listen` is `acceptBitsPost(app.listen(0))`, `createBitsServer`
 * is `createBitsServer(app).listen(0)`.
 */
export async function serve(
  app: Listenable & http.RequestListener,
  via: 'listen' | 'createBitsServer' = 'listen',
): Promise<RunningServer> {
  const server =
    via === 'listen'
      ? acceptBitsPost(app.listen(0, '127.0.0.1'))
      : (createBitsServer(app).listen(0, '127.0.0.1') as http.Server);
  let connections = 0;
  server.on('connection', () => {
    connections += 1;
  });
  if (!server.listening) {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.once('listening', () => {
        server.off('error', reject);
        resolve();
      });
    });
  }
  const { port } = server.address() as AddressInfo;
  return {
    server,
    port,
    connections: () => connections,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Headers an Ack may carry besides the protocol ones (§16: "may also appear"). */
const INCIDENTAL_HEADERS = new Set(['date', 'server', 'pragma', 'connection', 'keep-alive', 'x-powered-by']);

/**
 * Asserts the status and the exact set of protocol headers of an Ack: `BITS-Packet-Type: Ack`,
 * `Content-Length: 0` and exactly `headers` (names case-insensitive, values exact); headers in
 * `optional` may be absent but, when present, must have the given value. Any other header except
 * Date/Server/Pragma/Connection/Keep-Alive/X-Powered-By fails.
 */
export function expectAck(
  response: HttpResponse,
  status: number,
  headers: Readonly<Record<string, string>> = {},
  optional: Readonly<Record<string, string>> = {},
): void {
  const actual: Record<string, string> = {};
  for (const [name, value] of Object.entries(response.headers)) {
    if (!INCIDENTAL_HEADERS.has(name)) actual[name] = value;
  }
  const expected: Record<string, string> = { 'bits-packet-type': 'Ack', 'content-length': '0' };
  for (const [name, value] of Object.entries(headers)) expected[name.toLowerCase()] = value;
  for (const [name, value] of Object.entries(optional)) {
    if (actual[name.toLowerCase()] !== undefined) expected[name.toLowerCase()] = value;
  }
  expect({ status: response.status, headers: actual, body: response.body.length }).toEqual({
    status,
    headers: expected,
    body: 0,
  });
}

/** Bytes of session data (not records) kept under the upload root's session folder. */
export async function sessionDataBytes(root: string): Promise<number> {
  const sessions = path.join(root, '.bits-sessions');
  if (!(await exists(sessions))) return 0;
  let total = 0;
  for (const entry of await listTree(sessions)) {
    const match = /^(.*) (\d+)$/.exec(entry);
    if (match !== null && !/record\.json(\.tmp)?$/.test(match[1] ?? '')) total += Number(match[2]);
  }
  return total;
}

/** The error headers of §8.1-8.2 for an HRESULT and a context. */
export function errorHeaders(code: string, context = '0x5'): Record<string, string> {
  return { 'BITS-Error-Code': code, 'BITS-Error': code, 'BITS-Error-Context': context };
}

export const E_INVALIDARG = '0x80070057';
export const E_ACCESSDENIED = '0x80070005';
export const BG_E_SESSION_NOT_FOUND = '0x8020001F';
export const BG_E_TOO_LARGE = '0x80200020';
export const E_FAIL = '0x80004005';

/** Upper-case braced GUID, as IIS issues session ids (§5.1). */
export const SESSION_ID_FORM = /^\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}$/;

/** Polls `condition` every 10 ms until it holds, or throws after `timeoutMs`. */
export async function waitUntil(condition: () => Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
