/**
 * The packet handlers against the built-in adapters (lib/storage), through the same socketless
 * pipeline: TV-1, TV-3 overlap, TV-11 zero-byte, TV-12 and TV-16 with real storage behaviour.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { EventEmitter } from 'node:events';
import { Readable } from 'node:stream';
import type { BitsUploadEvents } from '../../lib/events';
import { UploadRuntime } from '../../lib/lifecycle/runtime';
import { processPacket } from '../../lib/middleware';
import { resolveOptions, type BitsUploadOptions } from '../../lib/options';
import type { Ack } from '../../lib/protocol/ack';
import type { StorageAdapter } from '../../lib/storage/adapter';
import { FileSystemStorage } from '../../lib/storage/filesystem';
import { MemoryStorage } from '../../lib/storage/memory';
import { fakeRequest } from '../helpers/packet-harness';

const PROTOCOL = '{7df0354d-249b-430f-820d-3d2a9bef4931}';

interface Subject {
  readonly storage: StorageAdapter;
  read(name: string): Promise<string | undefined>;
}

/** Makes an adapter whose root already holds `files`. */
type MakeSubject = (files?: Record<string, string>) => Promise<Subject>;

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

const subjects: Array<[string, MakeSubject]> = [
  [
    'MemoryStorage',
    async (files = {}) => {
      const storage = new MemoryStorage({ files });
      return { storage, read: async (name) => storage.readFile(name.split('/'))?.toString() };
    },
  ],
  [
    'FileSystemStorage',
    async (files = {}) => {
      const directory = await mkdtemp(path.join(tmpdir(), 'bits-upload-packets-'));
      dirs.push(directory);
      for (const [name, content] of Object.entries(files)) await writeFile(path.join(directory, name), content);
      return {
        storage: new FileSystemStorage({ directory, fsync: 'never' }),
        read: (name) => readFile(path.join(directory, name), 'latin1').catch(() => undefined),
      };
    },
  ],
];

/** One middleware state per adapter and set of options, as one bitsUpload() would keep it. */
const runtimes = new WeakMap<StorageAdapter, Map<string, UploadRuntime>>();

function runtimeFor(storage: StorageAdapter, options: Omit<BitsUploadOptions, 'storage'>): UploadRuntime {
  const byOptions = runtimes.get(storage) ?? new Map<string, UploadRuntime>();
  runtimes.set(storage, byOptions);
  const key = JSON.stringify(options);
  const runtime = byOptions.get(key) ?? new UploadRuntime(resolveOptions({ storage, ...options }), new EventEmitter<BitsUploadEvents>());
  byOptions.set(key, runtime);
  return runtime;
}

function send(
  storage: StorageAdapter,
  headers: Record<string, string>,
  body = '',
  options: Omit<BitsUploadOptions, 'storage'> = {},
): Promise<Ack> {
  const rawHeaders = Object.entries({ 'Content-Length': String(body.length), ...headers }).flat();
  return processPacket(
    { message: fakeRequest('/report.bin', rawHeaders), body: Readable.from([Buffer.from(body, 'latin1')]) },
    runtimeFor(storage, options),
  );
}

async function createSession(
  storage: StorageAdapter,
  options: Omit<BitsUploadOptions, 'storage'> = {},
): Promise<string> {
  const headers = { 'BITS-Packet-Type': 'Create-Session', 'BITS-Supported-Protocols': PROTOCOL };
  const ack = await send(storage, headers, '', options);
  expect(ack.status).toBe(200);
  return ack.headers['BITS-Session-Id'] as string;
}

function fragment(storage: StorageAdapter, sid: string, range: string, body: string): Promise<Ack> {
  return send(storage, { 'BITS-Packet-Type': 'Fragment', 'BITS-Session-Id': sid, 'Content-Range': range }, body);
}

function close(storage: StorageAdapter, sid: string): Promise<Ack> {
  return send(storage, { 'BITS-Packet-Type': 'Close-Session', 'BITS-Session-Id': sid });
}

describe.each(subjects)('%s', (_name, make) => {
  test('TV-1 with an overlap (TV-3) and a repeated Close', async () => {
    const { storage, read } = await make();
    const sid = await createSession(storage);
    expect((await fragment(storage, sid, 'bytes 0-5/10', '012345')).headers['BITS-Received-Content-Range']).toBe('6');
    expect((await fragment(storage, sid, 'bytes 4-9/10', 'XX6789')).headers['BITS-Received-Content-Range']).toBe('10');
    expect(await read('report.bin')).toBe('0123456789');
    expect((await close(storage, sid)).status).toBe(200);
    expect((await close(storage, sid)).status).toBe(200);
    expect((await fragment(storage, sid, 'bytes 6-9/10', '6789')).status).toBe(500);
    expect(await read('report.bin')).toBe('0123456789');
  });

  test('TV-11 zero-byte file', async () => {
    const { storage, read } = await make();
    const sid = await createSession(storage);
    const ack = await fragment(storage, sid, 'bytes 0--1/0', '');
    expect(ack).toEqual({ status: 200, headers: { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '0' } });
    expect(await read('report.bin')).toBe('');
  });

  test('TV-12 close before completion', async () => {
    const { storage, read } = await make();
    const sid = await createSession(storage);
    await fragment(storage, sid, 'bytes 0-5/10', '012345');
    expect((await close(storage, sid)).status).toBe(200);
    expect(await read('report.bin')).toBeUndefined();
  });

  test('TV-16 destination exists', async () => {
    const { storage, read } = await make({ 'report.bin': 'old' });
    const refused = await send(storage, { 'BITS-Packet-Type': 'Create-Session', 'BITS-Supported-Protocols': PROTOCOL });
    expect(refused.status).toBe(403);
    const sid = await createSession(storage, { allowOverwrites: true });
    const ack = await send(
      storage,
      { 'BITS-Packet-Type': 'Fragment', 'BITS-Session-Id': sid, 'Content-Range': 'bytes 0-2/3' },
      'new',
      { allowOverwrites: true },
    );
    expect(ack.status).toBe(200);
    expect(await read('report.bin')).toBe('new');
  });
});
