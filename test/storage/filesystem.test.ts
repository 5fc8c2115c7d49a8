import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { FileSystemStorage, runStorageAdapterConformance } from '../../lib/storage';
import type { Destination, FileSystemStorageOptions, NewSession, SessionRecord, StoredReply } from '../../lib/storage';
import { sessionFolderName } from '../../lib/storage/filesystem';
import { readStoredRecord } from '../helpers/record-file';

async function readOrUndefined(file: string): Promise<Buffer | undefined> {
  try {
    return await fs.readFile(file);
  } catch (error) {
    if (['ENOENT', 'EISDIR', 'ENOTDIR'].includes((error as NodeJS.ErrnoException).code ?? '')) return undefined;
    throw error;
  }
}

function conformance(label: string, options: Omit<FileSystemStorageOptions, 'directory'>): void {
  runStorageAdapterConformance(label, async () => {
    const base = await fs.mkdtemp(path.join(os.tmpdir(), 'bits-fs-'));
    // A root that does not exist yet: the adapter creates it.
    const directory = path.join(base, 'uploads', 'root');
    const adapters = [new FileSystemStorage({ directory, ...options })];
    return {
      adapter: adapters[0] as FileSystemStorage,
      readDestination: (destination) => readOrUndefined(path.join(directory, ...destination)),
      cleanup: async () => {
        await Promise.all(adapters.map((adapter) => adapter.close()));
        await fs.rm(base, { recursive: true, force: true });
      },
      reopen: async () => {
        const adapter = new FileSystemStorage({ directory, ...options });
        adapters.push(adapter);
        return adapter;
      },
    };
  });
}

conformance('FileSystemStorage', {});
conformance('FileSystemStorage (fsync: commit, custom session folder)', { fsync: 'commit', sessionDirectory: '_sessions' });
conformance('FileSystemStorage (fsync: never, no file kept open)', { fsync: 'never', maxOpenFiles: 0 });

const PROTOCOL = '{7df0354d-249b-430f-820d-3d2a9bef4931}';

function newSession(destination: Destination): NewSession {
  return {
    id: `{${randomUUID().toUpperCase()}}`,
    destination,
    urlPath: `/${destination.join('/')}`,
    principal: undefined,
    protocol: PROTOCOL,
    createdAt: Date.now(),
  };
}

function body(bytes: Buffer | string): Readable {
  return Readable.from([Buffer.from(bytes)]);
}

function bytes(length: number, seed = 0): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) out[i] = (i * 13 + seed) % 256;
  return out;
}

describe('FileSystemStorage', () => {
  let base: string;
  let root: string;
  let storage: FileSystemStorage;
  const sessionDir = (id: string): string => path.join(root, '.bits-sessions', sessionFolderName(id));
  const dataFile = (id: string): string => path.join(sessionDir(id), 'data');
  const replyFile = (id: string): string => path.join(sessionDir(id), 'reply');
  /** Names of half-written replies in a session folder. */
  const replyTemps = async (id: string): Promise<string[]> => (await fs.readdir(sessionDir(id))).filter((name) => /^reply\..*\.tmp$/.test(name));

  beforeEach(async () => {
    base = await fs.mkdtemp(path.join(os.tmpdir(), 'bits-fs-'));
    root = path.join(base, 'root');
    storage = new FileSystemStorage({ directory: root });
  });
  afterEach(async () => {
    await storage.close();
    await fs.rm(base, { recursive: true, force: true });
  });

  async function started(destination: Destination, content?: Buffer): Promise<SessionRecord> {
    const record = await storage.createSession(newSession(destination));
    if (content !== undefined) {
      await storage.updateSession(record.id, { totalLength: content.length });
      await storage.writeFragment(record.id, 0, body(content));
    }
    return record;
  }

  /** A whole upload with its reply stored and recorded, still `receiving`, as the middleware has it before it commits. */
  async function replied(destination: Destination, content: Buffer, reply: string, copyToDestination = false): Promise<SessionRecord> {
    const record = await started(destination, content);
    const size = await storage.writeReply(record.id, body(reply));
    return storage.updateSession(record.id, { reply: { kind: 'stored', size, storedAt: Date.now(), copyToDestination } });
  }

  /** A complete upload kept in the session (an upload-reply endpoint, §10.1), with a stored reply if given. */
  async function kept(destination: Destination, content: Buffer, reply?: string): Promise<SessionRecord> {
    const record = reply === undefined ? await started(destination, content) : await replied(destination, content, reply);
    return storage.updateSession(record.id, { state: 'complete' });
  }

  describe('options', () => {
    it('resolves the directory to an absolute path', () => {
      const relative = new FileSystemStorage({ directory: 'some/relative/dir' });
      expect(relative.directory).toBe(path.resolve('some/relative/dir'));
    });

    it.each([
      ['a string instead of options', 'uploads', /options object/],
      ['no directory', {}, /"directory"/],
      ['an empty directory', { directory: '' }, /"directory"/],
      ['a session folder with a separator', { directory: 'x', sessionDirectory: 'a/b' }, /"sessionDirectory"/],
      ['a session folder named ..', { directory: 'x', sessionDirectory: '..' }, /"sessionDirectory"/],
      ['an unknown fsync policy', { directory: 'x', fsync: 'always' }, /"fsync" must be one of 'fragment', 'commit', 'never', got "always"/],
      ['a negative maxOpenFiles', { directory: 'x', maxOpenFiles: -1 }, /"maxOpenFiles" must be a whole number of files, 0 or more, got -1/],
      ['a fractional maxOpenFiles', { directory: 'x', maxOpenFiles: 1.5 }, /"maxOpenFiles"/],
      ['a maxOpenFiles that is a string', { directory: 'x', maxOpenFiles: '8' }, /"maxOpenFiles"/],
      ['an openFileIdleTimeout of 0', { directory: 'x', openFileIdleTimeout: 0 }, /"openFileIdleTimeout" must be a number of milliseconds above 0, got 0/],
      ['an openFileIdleTimeout of NaN', { directory: 'x', openFileIdleTimeout: Number.NaN }, /"openFileIdleTimeout"/],
    ])('throws a TypeError for %s', (_label, options, message) => {
      expect(() => new FileSystemStorage(options as unknown as FileSystemStorageOptions)).toThrow(TypeError);
      expect(() => new FileSystemStorage(options as unknown as FileSystemStorageOptions)).toThrow(message);
    });
  });

  describe('layout', () => {
    it('keeps each session as a record and a data file in a hidden folder under the root', async () => {
      const record = await started(['report.bin'], Buffer.from('hello'));
      expect(sessionFolderName(record.id)).toBe(record.id);
      const stored = await readStoredRecord(path.join(sessionDir(record.id), 'record.json'));
      // Fragments write only the data file: its length is the received length, the record keeps
      // the length of when it was last written (here: when the total was set).
      expect(stored).toMatchObject({ id: record.id, receivedLength: 0, totalLength: 5, state: 'receiving', principal: null });
      expect((await fs.readFile(dataFile(record.id))).toString()).toBe('hello');
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ receivedLength: 5 });

      await storage.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'report.bin'))).toString()).toBe('hello');
      await expect(fs.stat(dataFile(record.id))).rejects.toMatchObject({ code: 'ENOENT' });

      await storage.endSession(record.id, 'closed', 42);
      const tombstone = await readStoredRecord(path.join(sessionDir(record.id), 'record.json'));
      expect(tombstone).toMatchObject({ state: 'closed', updatedAt: 42 });

      await storage.deleteSession(record.id);
      await expect(fs.stat(sessionDir(record.id))).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('removes the data but keeps the record when a session ends', async () => {
      const record = await started(['x.bin'], Buffer.from('partial'));
      await storage.endSession(record.id, 'cancelled', Date.now());
      await expect(fs.stat(dataFile(record.id))).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(fs.stat(path.join(sessionDir(record.id), 'record.json'))).resolves.toBeDefined();
    });

    it('maps any id to one safe folder name', () => {
      expect(sessionFolderName('{3F2504E0-4F89-41D3-9A0C-0305E82C3301}')).toBe('{3F2504E0-4F89-41D3-9A0C-0305E82C3301}');
      expect(sessionFolderName('..')).toBe('%2E%2E');
      expect(sessionFolderName('a/b\\c')).toBe('a%2Fb%5Cc');
      expect(sessionFolderName('CON')).toBe('%43ON');
      expect(sessionFolderName('x'.repeat(300))).toMatch(/^~[0-9a-f]{64}$/);
      // The edges of the shortcut for ids that need no encoding.
      expect(sessionFolderName('x'.repeat(200))).toBe('x'.repeat(200));
      expect(sessionFolderName('x'.repeat(201))).toMatch(/^~[0-9a-f]{64}$/);
      expect(sessionFolderName('')).toMatch(/^~[0-9a-f]{64}$/);
      expect(sessionFolderName('com1')).toBe('%63om1');
      expect(sessionFolderName('com1x')).toBe('com1x');
      expect(sessionFolderName('{a}_b-C9')).toBe('{a}_b-C9');
    });

    it('keeps ids that differ only in case apart', async () => {
      const record = await started(['a.bin']);
      await expect(storage.getSession(record.id.toLowerCase())).resolves.toBeUndefined();
    });

    it('listSessions skips damaged session folders instead of failing', async () => {
      const good = await started(['good.bin'], Buffer.from('ok'));
      const sessions = path.join(root, '.bits-sessions');
      await fs.mkdir(path.join(sessions, 'no-record'));
      await fs.mkdir(path.join(sessions, 'garbage'));
      await fs.writeFile(path.join(sessions, 'garbage', 'record.json'), '{ not json');
      await fs.writeFile(path.join(sessions, 'stray-file'), 'x');
      const ids: string[] = [];
      for await (const record of storage.listSessions()) ids.push(record.id);
      expect(ids).toEqual([good.id]);
    });

    it('writes a 20 MiB fragment to disk as it reads it, not after', async () => {
      const record = await started(['big.bin']);
      const size = 20 * 1024 * 1024;
      const chunk = bytes(64 * 1024);
      let maxLag = 0;
      async function* produce(): AsyncGenerator<Buffer> {
        for (let produced = 0; produced < size; produced += chunk.length) {
          if (produced % (1024 * 1024) === 0 && produced > 0) {
            const { size: onDisk } = await fs.stat(dataFile(record.id));
            maxLag = Math.max(maxLag, produced - onDisk);
          }
          yield Buffer.from(chunk);
        }
      }
      await expect(storage.writeFragment(record.id, 0, Readable.from(produce()))).resolves.toBe(size);
      expect(maxLag).toBeLessThanOrEqual(2 * 1024 * 1024);
    });
  });

  describe('open data files', () => {
    // Counted from the file descriptors this process really holds (Linux only).
    const itLinux = process.platform === 'linux' ? it : it.skip;
    const others: FileSystemStorage[] = [];
    afterEach(async () => {
      await Promise.all(others.splice(0).map((other) => other.close()));
    });
    function storageWith(options: Omit<FileSystemStorageOptions, 'directory'>): FileSystemStorage {
      const created = new FileSystemStorage({ directory: root, ...options });
      others.push(created);
      return created;
    }

    /** Session folders (by id) whose `name` file this process holds open, deleted or not. */
    async function openFiles(name: string): Promise<string[]> {
      const sessions = `${await fs.realpath(path.join(root, '.bits-sessions'))}${path.sep}`;
      const open: string[] = [];
      for (const fd of await fs.readdir('/proc/self/fd')) {
        const target = await fs.readlink(`/proc/self/fd/${fd}`).catch(() => undefined);
        const rest = target?.startsWith(sessions) ? target.slice(sessions.length).replace(/ \(deleted\)$/, '') : undefined;
        if (rest?.endsWith(`/${name}`)) open.push(rest.slice(0, -name.length - 1));
      }
      return open.sort();
    }
    const openDataFiles = (): Promise<string[]> => openFiles('data');
    const openRecords = (): Promise<string[]> => openFiles('record.json');

    async function receiving(target: FileSystemStorage, name: string, length = 1000): Promise<SessionRecord> {
      const record = await target.createSession(newSession([name]));
      await target.updateSession(record.id, { totalLength: 1_000_000 });
      await target.writeFragment(record.id, 0, body(bytes(length)));
      return record;
    }

    itLinux('keeps a data file open from creation through its fragments, and closes it when the data leaves the session', async () => {
      const committed = await storage.createSession(newSession(['committed.bin']));
      expect(await openDataFiles()).toEqual([committed.id]);
      await storage.updateSession(committed.id, { totalLength: 2000 });
      await storage.writeFragment(committed.id, 0, body(bytes(1000)));
      await storage.writeFragment(committed.id, 1000, body(bytes(1000, 1)));
      expect(await openDataFiles()).toEqual([committed.id]);
      await storage.commit(committed.id, { overwrite: false });
      expect(await openDataFiles()).toEqual([]);

      const ended = await receiving(storage, 'ended.bin');
      const deleted = await receiving(storage, 'deleted.bin');
      const completed = await receiving(storage, 'completed.bin');
      expect(await openDataFiles()).toEqual([ended.id, deleted.id, completed.id].sort());
      await storage.endSession(ended.id, 'cancelled', Date.now());
      await storage.deleteSession(deleted.id);
      await storage.updateSession(completed.id, { totalLength: 1000 });
      await storage.updateSession(completed.id, { state: 'complete' });
      expect(await openDataFiles()).toEqual([]);
    });

    itLinux('keeps at most maxOpenFiles open, closing the least recently used, and reopens them as needed', async () => {
      const bounded = storageWith({ maxOpenFiles: 2 });
      const sessions: SessionRecord[] = [];
      for (let i = 0; i < 5; i++) sessions.push(await receiving(bounded, `s${i}.bin`));
      expect(await openDataFiles()).toEqual([sessions[3]?.id, sessions[4]?.id].sort());
      const first = sessions[0] as SessionRecord;
      await expect(bounded.writeFragment(first.id, 1000, body(bytes(500, 7)))).resolves.toBe(1500);
      expect(await openDataFiles()).toEqual([first.id, sessions[4]?.id].sort());
      expect((await fs.readFile(dataFile(first.id))).equals(Buffer.concat([bytes(1000), bytes(500, 7)]))).toBe(true);
    });

    itLinux('keeps the files of 300 sessions taking turns open by default', async () => {
      const sessions: SessionRecord[] = [];
      for (let i = 0; i < 300; i++) sessions.push(await receiving(storage, `turn${i}.bin`, 10));
      for (const session of sessions) await storage.writeFragment(session.id, 10, body(bytes(10)));
      expect(await openDataFiles()).toHaveLength(300);
    });

    itLinux('keeps a record open between updates, and closes it when the session ends or is deleted', async () => {
      const ended = await receiving(storage, 'record-ended.bin');
      const deleted = await receiving(storage, 'record-deleted.bin');
      expect(await openRecords()).toEqual([ended.id, deleted.id].sort());
      await storage.updateSession(ended.id, { totalLength: 5000 });
      await expect(new FileSystemStorage({ directory: root }).getSession(ended.id)).resolves.toMatchObject({ totalLength: 5000 });
      await storage.endSession(ended.id, 'closed', Date.now());
      await storage.deleteSession(deleted.id);
      expect(await openRecords()).toEqual([]);
      await expect(storage.getSession(ended.id)).resolves.toMatchObject({ state: 'closed' });
    });

    itLinux('keeps at most maxOpenFiles records open, closes idle ones and closes them all on close()', async () => {
      const bounded = storageWith({ maxOpenFiles: 2, openFileIdleTimeout: 40 });
      const sessions: SessionRecord[] = [];
      for (let i = 0; i < 4; i++) sessions.push(await receiving(bounded, `r${i}.bin`));
      expect(await openRecords()).toEqual([sessions[2]?.id, sessions[3]?.id].sort());
      await delay(200);
      expect(await openRecords()).toEqual([]);
      await bounded.updateSession(sessions[0]?.id ?? '', { totalLength: 2000 });
      expect(await openRecords()).toEqual([sessions[0]?.id]);
      await bounded.close();
      expect(await openRecords()).toEqual([]);
      await expect(bounded.getSession(sessions[0]?.id ?? '')).resolves.toMatchObject({ totalLength: 2000 });

      const none = storageWith({ maxOpenFiles: 0 });
      await receiving(none, 'no-record-kept.bin');
      expect(await openRecords()).toEqual([]);
    });

    itLinux('closes a file no fragment used for openFileIdleTimeout', async () => {
      const idle = storageWith({ openFileIdleTimeout: 40 });
      const record = await receiving(idle, 'idle.bin');
      expect(await openDataFiles()).toEqual([record.id]);
      await delay(200);
      expect(await openDataFiles()).toEqual([]);
      await expect(idle.writeFragment(record.id, 1000, body('more'))).resolves.toBe(1004);
    });

    itLinux('keeps no file open with maxOpenFiles: 0', async () => {
      const none = storageWith({ maxOpenFiles: 0 });
      await receiving(none, 'none.bin');
      expect(await openDataFiles()).toEqual([]);
    });

    itLinux('close() closes every file, one in use once its fragment is done, and the storage stays usable', async () => {
      const quiet = await receiving(storage, 'quiet.bin');
      const busy = await receiving(storage, 'busy.bin');
      let release: () => void = () => undefined;
      const gate = new Promise<void>((resolve) => {
        release = resolve;
      });
      async function* slow(): AsyncGenerator<Buffer> {
        yield bytes(100, 1);
        await gate;
        yield bytes(100, 2);
      }
      const writing = storage.writeFragment(busy.id, 1000, Readable.from(slow()));
      await delay(20);
      await storage.close();
      expect(await openDataFiles()).toEqual([busy.id]);
      release();
      await expect(writing).resolves.toBe(1200);
      await delay(10);
      expect(await openDataFiles()).toEqual([]);
      expect((await fs.readFile(dataFile(busy.id))).equals(Buffer.concat([bytes(1000), bytes(100, 1), bytes(100, 2)]))).toBe(true);
      await expect(storage.writeFragment(quiet.id, 1000, body('go on'))).resolves.toBe(1005);
    });
  });

  describe('last progress (updatedAt, for expiry)', () => {
    it('is the time of the last fragment, kept on the data file rather than in a record, the same for another instance', async () => {
      const createdAt = Date.now() - 60_000;
      const record = await storage.createSession({ ...newSession(['progress.bin']), createdAt });
      await storage.updateSession(record.id, { totalLength: 10_000 });
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ updatedAt: createdAt });
      const before = Date.now();
      await storage.writeFragment(record.id, 0, body(bytes(100)));
      const after = Date.now();
      const progressed = await storage.getSession(record.id);
      expect(progressed?.updatedAt).toBeGreaterThanOrEqual(before);
      expect(progressed?.updatedAt).toBeLessThanOrEqual(after);
      expect(Math.round((await fs.stat(dataFile(record.id))).mtimeMs)).toBe(progressed?.updatedAt);
      expect(await storedRecord(record.id)).toMatchObject({ updatedAt: createdAt, receivedLength: 0 });
      await expect(new FileSystemStorage({ directory: root }).getSession(record.id)).resolves.toEqual(progressed);
      const listed: SessionRecord[] = [];
      for await (const r of storage.listSessions()) listed.push(r);
      expect(listed).toEqual([progressed]);
    });

    it('is what updateSession was given, also an earlier time, until the next fragment', async () => {
      const record = await started(['explicit.bin']);
      await storage.updateSession(record.id, { totalLength: 10_000 });
      await storage.writeFragment(record.id, 0, body(bytes(100)));
      const earlier = Date.now() - 3_600_000;
      await expect(storage.updateSession(record.id, { updatedAt: earlier })).resolves.toMatchObject({ updatedAt: earlier, receivedLength: 100 });
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ updatedAt: earlier });
      await expect(new FileSystemStorage({ directory: root }).getSession(record.id)).resolves.toMatchObject({ updatedAt: earlier });
      const before = Date.now();
      await storage.writeFragment(record.id, 100, body(bytes(100)));
      expect((await storage.getSession(record.id))?.updatedAt).toBeGreaterThanOrEqual(before);

      // A later time is the record's alone: the data file keeps the time of its last write.
      const fileTime = (await fs.stat(dataFile(record.id))).mtimeMs;
      const later = Date.now() + 60_000;
      await storage.updateSession(record.id, { updatedAt: later });
      await expect(new FileSystemStorage({ directory: root }).getSession(record.id)).resolves.toMatchObject({ updatedAt: later });
      expect((await fs.stat(dataFile(record.id))).mtimeMs).toBe(fileTime);
    });

    it('counts bytes another process wrote without setting the time (the kernel sets it)', async () => {
      const record = await started(['kernel.bin']);
      await storage.updateSession(record.id, { totalLength: 10_000, updatedAt: Date.now() - 3_600_000 });
      const before = Date.now();
      await fs.appendFile(dataFile(record.id), bytes(10));
      const reread = await storage.getSession(record.id);
      expect(reread?.receivedLength).toBe(10);
      // The kernel's clock for file times can lag Date.now() by a timer tick.
      expect(reread?.updatedAt).toBeGreaterThanOrEqual(before - 50);
    });

    it('is not moved by a fragment that stored nothing, nor by recover() recreating a lost data file', async () => {
      const record = await started(['still.bin']);
      const earlier = Date.now() - 3_600_000;
      await storage.updateSession(record.id, { totalLength: 10_000, updatedAt: earlier });
      await storage.writeFragment(record.id, 0, Readable.from([]));
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ updatedAt: earlier });
      await storage.close();
      await fs.rm(dataFile(record.id));
      await expect(new FileSystemStorage({ directory: root }).recover()).resolves.toMatchObject({ recordsRepaired: 1 });
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ updatedAt: earlier, receivedLength: 0 });
    });
  });

  describe('another instance (another process) over the same folder', () => {
    let other: FileSystemStorage;
    beforeEach(() => {
      other = new FileSystemStorage({ directory: root });
    });
    afterEach(async () => {
      await other.close();
    });

    it('carries on a session while this one keeps its data file open, and each sees the other\'s bytes', async () => {
      const content = bytes(3000, 9);
      const record = await started(['shared.bin']);
      await storage.updateSession(record.id, { totalLength: 3000 });
      await storage.writeFragment(record.id, 0, body(content.subarray(0, 1000)));
      await expect(other.writeFragment(record.id, 1000, body(content.subarray(1000, 2000)))).resolves.toBe(2000);
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ receivedLength: 2000 });
      await expect(storage.writeFragment(record.id, 1000, body('x'))).rejects.toThrow(RangeError);
      await expect(storage.writeFragment(record.id, 2000, body(content.subarray(2000)))).resolves.toBe(3000);
      await other.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'shared.bin'))).equals(content)).toBe(true);
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ state: 'complete', receivedLength: 3000 });
      await expect(storage.writeFragment(record.id, 3000, body('late'))).rejects.toThrow(/is complete/);
      expect((await fs.readFile(path.join(root, 'shared.bin'))).equals(content)).toBe(true);
      await expect(fs.stat(dataFile(record.id))).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('never writes through a file kept open into a session another instance ended', async () => {
      const record = await started(['ended-elsewhere.bin']);
      await storage.updateSession(record.id, { totalLength: 3000 });
      await storage.writeFragment(record.id, 0, body(bytes(1000)));
      await other.endSession(record.id, 'cancelled', Date.now());
      await expect(storage.writeFragment(record.id, 1000, body(bytes(1000)))).rejects.toThrow(/is cancelled/);
      await expect(fs.stat(dataFile(record.id))).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ state: 'cancelled' });
    });

    it('commits the data file under its name when the one this instance kept open was replaced meanwhile', async () => {
      const record = await started(['replaced.bin'], bytes(2000, 1));
      // Whatever replaced it (another instance, an operator restoring a copy), the name is what commit publishes.
      const replacement = Buffer.concat([bytes(2000, 2), Buffer.from('beyond the total')]);
      await fs.writeFile(`${dataFile(record.id)}.new`, replacement);
      await fs.rename(`${dataFile(record.id)}.new`, dataFile(record.id));
      await storage.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'replaced.bin'))).equals(bytes(2000, 2))).toBe(true);
    });

    it('appends an update to the record another process replaced meanwhile, not to the file kept open', async () => {
      const record = await started(['replaced-record.bin']);
      await storage.updateSession(record.id, { totalLength: 1 });
      await other.updateSession(record.id, { totalLength: 2 });
      // Replaced as a process does that rewrites the file on every update (versions before the
      // appended record did), or a compaction.
      const file = path.join(sessionDir(record.id), 'record.json');
      await fs.writeFile(`${file}.new`, await fs.readFile(file));
      await fs.rename(`${file}.new`, file);
      await storage.updateSession(record.id, { totalLength: 1000 });
      await expect(new FileSystemStorage({ directory: root }).getSession(record.id)).resolves.toMatchObject({ totalLength: 1000 });
      await expect(other.getSession(record.id)).resolves.toMatchObject({ totalLength: 1000 });
    });

    it('sees every record change the other made, however quickly they follow each other', async () => {
      const record = await started(['changes.bin']);
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ totalLength: undefined });
      for (let total = 1; total <= 20; total++) {
        await other.updateSession(record.id, { totalLength: total });
        await expect(storage.getSession(record.id)).resolves.toMatchObject({ totalLength: total });
      }
      await other.deleteSession(record.id);
      await expect(storage.getSession(record.id)).resolves.toBeUndefined();
    });
  });

  describe('crash consistency (§6.3: never report bytes that are not on disk)', () => {
    it('counts bytes that reached the data file but were never acknowledged (a crash before the Ack)', async () => {
      const content = bytes(200);
      const record = await started(['longer.bin']);
      await storage.updateSession(record.id, { totalLength: 200 });
      await storage.writeFragment(record.id, 0, body(content.subarray(0, 100)));
      // A crash after the next fragment's first bytes were written: they are the client's bytes at
      // their offsets (only the adapter writes there, in order), so they count and the next Ack
      // tells the client to go on after them (§6.3).
      await fs.appendFile(dataFile(record.id), content.subarray(100, 150));

      const restarted = new FileSystemStorage({ directory: root });
      expect((await restarted.getSession(record.id))?.receivedLength).toBe(150);
      await expect(restarted.writeFragment(record.id, 100, body('x'))).rejects.toThrow(RangeError);
      await expect(restarted.writeFragment(record.id, 150, body(content.subarray(150)))).resolves.toBe(200);
      await restarted.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'longer.bin'))).equals(content)).toBe(true);
      await restarted.close();
    });

    it('never counts bytes beyond the total, and never publishes them', async () => {
      const content = bytes(120);
      const record = await started(['beyond.bin'], content);
      await fs.appendFile(dataFile(record.id), Buffer.alloc(50, 0xee));
      const restarted = new FileSystemStorage({ directory: root });
      await expect(restarted.getSession(record.id)).resolves.toMatchObject({ receivedLength: 120, totalLength: 120 });
      expect((await readAll(await restarted.readData(record.id, 0))).equals(content)).toBe(true);
      await restarted.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'beyond.bin'))).equals(content)).toBe(true);
    });

    it('reports the data file size when the file is shorter than the record', async () => {
      const content = bytes(100);
      const record = await started(['shorter.bin'], content);
      await fs.truncate(dataFile(record.id), 60);

      const restarted = new FileSystemStorage({ directory: root });
      expect((await restarted.getSession(record.id))?.receivedLength).toBe(60);
      const listed: SessionRecord[] = [];
      for await (const r of restarted.listSessions()) listed.push(r);
      expect(listed[0]?.receivedLength).toBe(60);
      // Writing at the stale offset would leave a hole.
      await expect(restarted.writeFragment(record.id, 100, body('x'))).rejects.toThrow(RangeError);
      await expect(restarted.writeFragment(record.id, 60, body(content.subarray(60)))).resolves.toBe(100);
      await restarted.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'shorter.bin'))).equals(content)).toBe(true);
    });

    it('reports 0 when the data file of a receiving session is gone', async () => {
      const record = await started(['vanished.bin'], bytes(10));
      await fs.rm(dataFile(record.id));
      expect((await storage.getSession(record.id))?.receivedLength).toBe(0);
      await expect(storage.writeFragment(record.id, 0, body(bytes(10)))).resolves.toBe(10);
    });

    it('finishes a commit that crashed after linking the destination', async () => {
      const record = await started(['linked.bin'], Buffer.from('content'));
      await fs.link(dataFile(record.id), path.join(root, 'linked.bin'));
      await storage.commit(record.id, { overwrite: false });
      expect((await storage.getSession(record.id))?.state).toBe('complete');
      expect((await fs.readFile(path.join(root, 'linked.bin'))).toString()).toBe('content');
      await expect(fs.stat(dataFile(record.id))).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('finishes a commit that crashed after moving the data', async () => {
      const record = await started(['moved.bin'], Buffer.from('content'));
      const recordFile = path.join(sessionDir(record.id), 'record.json');
      const stored = await readStoredRecord(recordFile);
      await fs.writeFile(recordFile, JSON.stringify({ ...stored, committing: true }));
      await fs.rename(dataFile(record.id), path.join(root, 'moved.bin'));

      expect((await storage.getSession(record.id))?.receivedLength).toBe(7);
      await storage.commit(record.id, { overwrite: false });
      expect((await storage.getSession(record.id))?.state).toBe('complete');
    });

    it('never publishes unrecorded bytes at commit', async () => {
      const record = await started(['tail.bin'], Buffer.from('complete'));
      await fs.appendFile(dataFile(record.id), 'crash tail');
      await storage.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'tail.bin'))).toString()).toBe('complete');
    });

    it('refuses to commit a session whose data was lost', async () => {
      const record = await started(['lost.bin'], Buffer.from('content'));
      await fs.rm(dataFile(record.id));
      await expect(storage.commit(record.id, { overwrite: false })).rejects.toThrow(/no data to commit/);
      await expect(fs.stat(path.join(root, 'lost.bin'))).rejects.toMatchObject({ code: 'ENOENT' });
    });
  });

  /** Reads record.json as stored. */
  async function storedRecord(id: string): Promise<Record<string, unknown>> {
    return readStoredRecord(path.join(sessionDir(id), 'record.json'));
  }

  /** Rewrites record.json the way another release or a crash left it. */
  async function plantRecord(id: string, change: (stored: Record<string, unknown>) => Record<string, unknown>): Promise<void> {
    await fs.writeFile(path.join(sessionDir(id), 'record.json'), JSON.stringify(change(await storedRecord(id))));
  }

  async function readAll(stream: Readable): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk);
    return Buffer.concat(chunks);
  }

  describe('record format', () => {
    /** The non-empty lines of a session's record.json. */
    async function recordLines(id: string): Promise<string[]> {
      return (await fs.readFile(path.join(sessionDir(id), 'record.json'), 'utf8')).split('\n').filter((line) => line.trim() !== '');
    }

    it('appends each update as a line and reads the last one, also in another instance', async () => {
      const record = await started(['lines.bin'], Buffer.from('abc'));
      // The first record is written whole; the total set by the first fragment is appended.
      expect(await recordLines(record.id)).toHaveLength(2);
      await storage.updateSession(record.id, { sha256: 'a'.repeat(64) });
      await storage.updateSession(record.id, { delivered: true });
      expect(await recordLines(record.id)).toHaveLength(4);
      const expected = { id: record.id, totalLength: 3, receivedLength: 3, sha256: 'a'.repeat(64), delivered: true };
      await expect(storage.getSession(record.id)).resolves.toMatchObject(expected);
      await expect(new FileSystemStorage({ directory: root }).getSession(record.id)).resolves.toMatchObject(expected);
    });

    it.each([
      ['cut short', (line: string) => line.slice(0, line.length / 2)],
      ['zeros where the file system had not written yet', (line: string) => '\0'.repeat(line.length)],
      ['cut short without its newline', (line: string) => line.slice(0, -3)],
    ])('ignores a last line a crash left %s, and a later update wins over it', async (_name, tear) => {
      const record = await started(['torn.bin'], Buffer.from('abc'));
      const file = path.join(sessionDir(record.id), 'record.json');
      const torn = tear(`${JSON.stringify({ ...(await storedRecord(record.id)), delivered: true })}\n`);
      await fs.appendFile(file, torn);
      const restarted = new FileSystemStorage({ directory: root });
      await expect(restarted.getSession(record.id)).resolves.toMatchObject({ delivered: false, totalLength: 3 });
      await expect(restarted.recover()).resolves.toEqual({ orphansRemoved: 0, recordsRepaired: 0, commitsFinished: 0 });
      await restarted.updateSession(record.id, { sha256: 'b'.repeat(64) });
      await expect(new FileSystemStorage({ directory: root }).getSession(record.id)).resolves.toMatchObject({
        sha256: 'b'.repeat(64),
        delivered: false,
      });
    });

    it('replaces a record.json grown past 16 KiB by one line', async () => {
      const record = await started(['many.bin'], Buffer.from('abc'));
      for (let i = 1; i <= 60; i++) await storage.updateSession(record.id, { updatedAt: record.updatedAt + i });
      const lines = await recordLines(record.id);
      expect(lines.length).toBeLessThan(45);
      expect((await fs.stat(path.join(sessionDir(record.id), 'record.json'))).size).toBeLessThanOrEqual(16 * 1024 + 1024);
      await expect(new FileSystemStorage({ directory: root }).getSession(record.id)).resolves.toMatchObject({ updatedAt: record.updatedAt + 60 });
      expect(await fs.readdir(sessionDir(record.id))).not.toContain('record.json.tmp');
    });

    it('does not bring back a session whose record was removed', async () => {
      const record = await started(['gone.bin'], Buffer.from('abc'));
      await fs.rm(sessionDir(record.id), { recursive: true });
      await expect(storage.updateSession(record.id, { delivered: true })).rejects.toBeDefined();
      await expect(fs.stat(sessionDir(record.id))).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('sees an update another instance appended, not its own cached record', async () => {
      const record = await started(['shared.bin'], Buffer.from('abc'));
      await storage.getSession(record.id);
      await new FileSystemStorage({ directory: root }).updateSession(record.id, { sha256: 'c'.repeat(64) });
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ sha256: 'c'.repeat(64) });
    });

    it('stores the SHA-256 and the delivered flag in record.json, still as version 1', async () => {
      const record = await started(['hashed.bin'], Buffer.from('abc'));
      expect(await storedRecord(record.id)).toMatchObject({ version: 1, sha256: null, delivered: false });
      const sha256 = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad';
      await storage.updateSession(record.id, { sha256, delivered: true });
      expect(await storedRecord(record.id)).toMatchObject({ version: 1, sha256, delivered: true });
      await expect(new FileSystemStorage({ directory: root }).getSession(record.id)).resolves.toMatchObject({ sha256, delivered: true });
    });

    it('loads a record written before sha256 and delivered existed, and adds them on the next write', async () => {
      const record = await started(['old.bin'], Buffer.from('old'));
      await plantRecord(record.id, ({ sha256: _sha256, delivered: _delivered, ...older }) => older);
      expect(await storedRecord(record.id)).not.toHaveProperty('delivered');

      const restarted = new FileSystemStorage({ directory: root });
      const loaded = await restarted.getSession(record.id);
      expect(loaded).toEqual({ ...record, totalLength: 3, receivedLength: 3, updatedAt: loaded?.updatedAt, sha256: undefined, delivered: false });
      const listed: SessionRecord[] = [];
      for await (const r of restarted.listSessions()) listed.push(r);
      expect(listed).toEqual([loaded]);
      await expect(restarted.recover()).resolves.toEqual({ orphansRemoved: 0, recordsRepaired: 0, commitsFinished: 0 });

      await restarted.updateSession(record.id, { delivered: true });
      expect(await storedRecord(record.id)).toMatchObject({ version: 1, sha256: null, delivered: true });
    });

    it.each([
      ['a sha256 that is not a string', { sha256: 42 }],
      ['a delivered flag that is not a boolean', { delivered: 'yes' }],
    ])('treats a record with %s as corrupt', async (_label, patch) => {
      const record = await started(['bad.bin']);
      await plantRecord(record.id, (stored) => ({ ...stored, ...patch }));
      await expect(storage.getSession(record.id)).rejects.toThrow(/Corrupt session record.*bad (sha256|delivered)/);
    });

    it('forgets the SHA-256 when the data file turns out shorter than recorded', async () => {
      const record = await started(['short.bin'], bytes(100));
      await storage.updateSession(record.id, { sha256: 'a'.repeat(64) });
      await fs.truncate(dataFile(record.id), 40);
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ receivedLength: 40, sha256: undefined });
    });
  });

  describe('readData', () => {
    it('streams the data file up to the record, without an unrecorded crash tail', async () => {
      const content = bytes(1000);
      const record = await started(['tail.bin'], content);
      await fs.appendFile(dataFile(record.id), Buffer.alloc(500, 0xee));
      expect((await readAll(await storage.readData(record.id, 0))).equals(content)).toBe(true);
      expect((await readAll(await storage.readData(record.id, 999))).equals(content.subarray(999))).toBe(true);
    });

    it('streams only what is on disk when the data file is shorter than recorded', async () => {
      const content = bytes(1000);
      const record = await started(['short.bin'], content);
      await fs.truncate(dataFile(record.id), 600);
      expect((await readAll(await storage.readData(record.id, 100))).equals(content.subarray(100, 600))).toBe(true);
      await expect(storage.readData(record.id, 601)).rejects.toThrow(RangeError);
    });

    it('rejects offsets outside 0..receivedLength with a RangeError', async () => {
      const record = await started(['range.bin'], bytes(10));
      for (const start of [-1, 11, 1.5, Number.NaN]) await expect(storage.readData(record.id, start)).rejects.toThrow(RangeError);
    });

    it('rejects sessions that are no longer receiving', async () => {
      const committed = await started(['done.bin'], Buffer.from('done'));
      await storage.commit(committed.id, { overwrite: false });
      await expect(storage.readData(committed.id, 0)).rejects.toThrow(/is complete/);
      const cancelled = await started(['gone.bin'], Buffer.from('gone'));
      await storage.endSession(cancelled.id, 'cancelled', Date.now());
      await expect(storage.readData(cancelled.id, 0)).rejects.toThrow(/is cancelled/);
    });

    it('rejects, rather than failing the stream, when an interrupted commit moved the data', async () => {
      const record = await started(['moved.bin'], Buffer.from('content'));
      await plantRecord(record.id, (stored) => ({ ...stored, committing: true }));
      await fs.rename(dataFile(record.id), path.join(root, 'moved.bin'));
      await expect(storage.readData(record.id, 0)).rejects.toThrow(/interrupted commit/);
    });
  });

  describe('upload-reply sessions (§10)', () => {
    it('keeps the reply as `reply` next to the data, and its record in record.json', async () => {
      const record = await kept(['r.bin'], Buffer.from('upload'), 'HELLO');
      expect((await fs.readFile(replyFile(record.id))).toString()).toBe('HELLO');
      expect((await fs.readFile(dataFile(record.id))).toString()).toBe('upload');
      expect(await storedRecord(record.id)).toMatchObject({
        version: 1,
        state: 'complete',
        reply: { kind: 'stored', size: 5, storedAt: record.reply?.kind === 'stored' ? record.reply.storedAt : -1, copyToDestination: false },
      });
      expect(await replyTemps(record.id)).toEqual([]);

      const url: StoredReply = { kind: 'url', url: 'https://static.example.com/x', copyToDestination: false };
      await storage.updateSession(record.id, { reply: url });
      expect((await storedRecord(record.id))['reply']).toEqual(url);
      expect((await started(['fresh.bin'])).reply).toBeUndefined();
      expect(await storedRecord((await started(['fresh2.bin'])).id)).toMatchObject({ reply: null });
    });

    it('writes a 20 MiB reply to disk as it reads it, not after', async () => {
      const record = await kept(['big-reply.bin'], Buffer.from('upload'));
      const size = 20 * 1024 * 1024;
      const chunk = bytes(64 * 1024);
      let maxLag = 0;
      async function* produce(): AsyncGenerator<Buffer> {
        for (let produced = 0; produced < size; produced += chunk.length) {
          if (produced % (1024 * 1024) === 0 && produced > 0) {
            const [temp] = await replyTemps(record.id);
            const onDisk = temp === undefined ? 0 : (await fs.stat(path.join(sessionDir(record.id), temp))).size;
            maxLag = Math.max(maxLag, produced - onDisk);
          }
          yield Buffer.from(chunk);
        }
      }
      await expect(storage.writeReply(record.id, Readable.from(produce()))).resolves.toBe(size);
      expect(maxLag).toBeLessThanOrEqual(2 * 1024 * 1024);
      expect((await fs.stat(replyFile(record.id))).size).toBe(size);
    });

    it('replaces the reply atomically: a stream opened before reads the old bytes', async () => {
      const record = await kept(['swap.bin'], Buffer.from('upload'), 'old reply bytes');
      const before = await storage.readReply(record.id, 0, 14);
      await storage.writeReply(record.id, body('new'));
      expect((await readAll(before)).toString()).toBe('old reply bytes');
      expect((await readAll(await storage.readReply(record.id, 0, 2))).toString()).toBe('new');
    });

    it('keeps the earlier reply and leaves no temporary file when the body fails', async () => {
      const record = await kept(['failing.bin'], Buffer.from('upload'), 'earlier');
      async function* failing(): AsyncGenerator<Buffer> {
        yield bytes(70_000);
        await delay(10);
        throw new Error('the application stream failed');
      }
      await expect(storage.writeReply(record.id, Readable.from(failing()))).rejects.toThrow(/application stream failed/);
      const notBytes = Readable.from([{ not: 'bytes' }]);
      await expect(storage.writeReply(record.id, notBytes)).rejects.toThrow(/A reply must yield bytes/);
      expect((await readAll(await storage.readReply(record.id, 0, 6))).toString()).toBe('earlier');
      expect(await replyTemps(record.id)).toEqual([]);
    });

    it('takes no reply for a session that ended', async () => {
      for (const state of ['closed', 'cancelled'] as const) {
        const record = await kept([`${state}.bin`], Buffer.from('upload'));
        await storage.endSession(record.id, state, Date.now());
        await expect(storage.writeReply(record.id, body('late'))).rejects.toThrow(new RegExp(`is ${state}`));
        await expect(fs.stat(replyFile(record.id))).rejects.toMatchObject({ code: 'ENOENT' });
      }
    });

    it('endSession removes the reply and a half-written one, and the data kept in the session', async () => {
      const record = await kept(['ending.bin'], Buffer.from('upload'), 'reply');
      await fs.writeFile(path.join(sessionDir(record.id), 'reply.0123abcd.tmp'), 'half');
      await storage.endSession(record.id, 'closed', Date.now());
      expect((await fs.readdir(sessionDir(record.id))).sort()).toEqual(['record.json']);
    });

    it('rejects readReply of a reply entry that is not a file as "no stored reply"', async () => {
      const record = await kept(['dir-reply.bin'], Buffer.from('upload'));
      await fs.mkdir(replyFile(record.id));
      await expect(storage.readReply(record.id, 0, 0)).rejects.toThrow(/no stored reply/);
    });

    it('cuts a crash tail and keeps the data when a session is marked complete without a commit', async () => {
      const content = bytes(500);
      const record = await started(['tail-kept.bin'], content);
      await fs.appendFile(dataFile(record.id), Buffer.alloc(100, 0xee));
      await storage.updateSession(record.id, { state: 'complete' });
      expect((await fs.readFile(dataFile(record.id))).equals(content)).toBe(true);
      expect((await readAll(await storage.readData(record.id, 0))).equals(content)).toBe(true);
    });

    it('localDataFile names the data file while it is the session\'s', async () => {
      const receiving = await started(['local.bin'], Buffer.from('abc'));
      await expect(storage.localDataFile(receiving.id)).resolves.toBe(dataFile(receiving.id));
      const complete = await kept(['local-kept.bin'], Buffer.from('kept'));
      await expect(storage.localDataFile(complete.id)).resolves.toBe(dataFile(complete.id));
      expect(path.isAbsolute(await storage.localDataFile(complete.id))).toBe(true);
      await storage.commit(complete.id, { overwrite: false });
      await expect(storage.localDataFile(complete.id)).rejects.toThrow(/is complete and its data was committed/);
      await storage.endSession(receiving.id, 'cancelled', Date.now());
      await expect(storage.localDataFile(receiving.id)).rejects.toThrow(/is cancelled/);
    });

    it('commits a session marked complete whose data is still here, once; the overwrite rules hold', async () => {
      const record = await kept(['taken.bin'], Buffer.from('replacement'), 'reply');
      await fs.writeFile(path.join(root, 'taken.bin'), 'original');
      await expect(storage.commit(record.id, { overwrite: false })).rejects.toMatchObject({ code: 'BITS_DESTINATION_EXISTS' });
      expect((await readAll(await storage.readData(record.id, 0))).toString()).toBe('replacement');
      await storage.commit(record.id, { overwrite: true });
      expect((await fs.readFile(path.join(root, 'taken.bin'))).toString()).toBe('replacement');
      await expect(storage.readData(record.id, 0)).rejects.toThrow(/is complete and its data was committed/);
      await storage.commit(record.id, { overwrite: true });
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ state: 'complete', reply: record.reply });
      expect((await readAll(await storage.readReply(record.id, 0, 4))).toString()).toBe('reply');
    });

    it('reads the empty range end = start - 1 of a reply, as of a 0-byte one', async () => {
      const record = await kept(['empty-reply.bin'], Buffer.from('upload'));
      await expect(storage.writeReply(record.id, Readable.from([]))).resolves.toBe(0);
      expect((await readAll(await storage.readReply(record.id, 0, -1))).length).toBe(0);
      await expect(storage.readReply(record.id, 0, 0)).rejects.toThrow(RangeError);
      await expect(storage.readReply(record.id, 1, 0)).rejects.toThrow(RangeError);
      await storage.writeReply(record.id, body('abc'));
      expect((await readAll(await storage.readReply(record.id, 3, 2))).length).toBe(0);
      await expect(storage.readReply(record.id, 4, 3)).rejects.toThrow(RangeError);
    });

    it('refuses to commit a complete session whose data turned out shorter than recorded', async () => {
      const record = await kept(['short-kept.bin'], bytes(100));
      await fs.truncate(dataFile(record.id), 40);
      await expect(storage.commit(record.id, { overwrite: false })).rejects.toThrow(/holds 40 of its 100 bytes/);
      await expect(fs.stat(path.join(root, 'short-kept.bin'))).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('refuses a reply that record.json could not hold, and writes nothing', async () => {
      const record = await kept(['bad-reply.bin'], Buffer.from('upload'));
      const before = await fs.readFile(path.join(sessionDir(record.id), 'record.json'));
      for (const reply of [
        { kind: 'stored', size: -1, storedAt: 1, copyToDestination: false },
        { kind: 'stored', size: Number.NaN, storedAt: 1, copyToDestination: false },
        { kind: 'url', url: '', copyToDestination: false },
        { kind: 'url', url: 'https://x.example/', copyToDestination: 'yes' },
        { kind: 'other', copyToDestination: false },
      ]) {
        await expect(storage.updateSession(record.id, { reply: reply as unknown as StoredReply })).rejects.toThrow(TypeError);
      }
      expect((await fs.readFile(path.join(sessionDir(record.id), 'record.json'))).equals(before)).toBe(true);
    });

    it.each([
      ['a reply that is a string', 'stored'],
      ['a reply without a kind', { size: 1, storedAt: 1, copyToDestination: false }],
      ['a stored reply with a fractional size', { kind: 'stored', size: 1.5, storedAt: 1, copyToDestination: false }],
      ['a stored reply without storedAt', { kind: 'stored', size: 1, copyToDestination: false }],
      ['a URL reply without a URL', { kind: 'url', copyToDestination: true }],
      ['a reply without copyToDestination', { kind: 'url', url: 'https://x.example/' }],
    ])('treats a record with %s as corrupt', async (_label, reply) => {
      const record = await started(['corrupt-reply.bin']);
      await plantRecord(record.id, (stored) => ({ ...stored, reply }));
      await expect(storage.getSession(record.id)).rejects.toThrow(/Corrupt session record.*bad reply/);
    });

    it('loads a record written before reply existed as having none', async () => {
      const record = await started(['pre-reply.bin'], Buffer.from('x'));
      await plantRecord(record.id, ({ reply: _reply, ...older }) => older);
      expect(await storedRecord(record.id)).not.toHaveProperty('reply');
      const loaded = await new FileSystemStorage({ directory: root }).getSession(record.id);
      expect(loaded).toMatchObject({ receivedLength: 1 });
      expect(loaded?.reply).toBeUndefined();
    });
  });

  describe('recover', () => {
    const nothing = { orphansRemoved: 0, recordsRepaired: 0, commitsFinished: 0 };
    const sessionsRoot = (): string => path.join(root, '.bits-sessions');
    /** Sessions that are fine, and what their folders hold, to prove recover() leaves them alone. */
    let healthy: { ids: string[]; records: (SessionRecord | undefined)[]; folders: unknown[] };

    async function folderSnapshot(id: string): Promise<unknown> {
      const dir = sessionDir(id);
      const names = (await fs.readdir(dir)).sort();
      return Promise.all(
        names.map(async (name) => {
          const stats = await fs.stat(path.join(dir, name));
          return { name, ino: stats.ino, mtimeMs: stats.mtimeMs, content: (await fs.readFile(path.join(dir, name))).toString('base64') };
        }),
      );
    }

    beforeEach(async () => {
      const receiving = await started(['fine', 'receiving.bin']);
      await storage.updateSession(receiving.id, { totalLength: 5000 });
      await storage.writeFragment(receiving.id, 0, body(bytes(3000)));
      const empty = await started(['fine', 'empty.bin']);
      const complete = await started(['fine', 'complete.bin'], Buffer.from('complete'));
      await storage.updateSession(complete.id, { sha256: 'c'.repeat(64) });
      await storage.commit(complete.id, { overwrite: false });
      await storage.updateSession(complete.id, { delivered: true });
      const closed = await started(['fine', 'closed.bin'], Buffer.from('closed'));
      await storage.commit(closed.id, { overwrite: false });
      await storage.endSession(closed.id, 'closed', Date.now());
      const cancelled = await started(['fine', 'cancelled.bin'], Buffer.from('partial'));
      await storage.endSession(cancelled.id, 'cancelled', Date.now());
      // Upload-reply sessions (§10.1): the upload kept in the session with its reply, a URL reply,
      // and one placed at its destination too.
      const withReply = await kept(['fine', 'kept.bin'], Buffer.from('kept'), 'kept reply');
      const withUrl = await kept(['fine', 'url.bin'], Buffer.from('url'));
      await storage.updateSession(withUrl.id, { reply: { kind: 'url', url: 'https://static.example.com/r', copyToDestination: false } });
      const copied = await replied(['fine', 'copied.bin'], Buffer.from('copied'), '', true);
      await storage.commit(copied.id, { overwrite: false });
      const ids = [receiving.id, empty.id, complete.id, closed.id, cancelled.id, withReply.id, withUrl.id, copied.id];
      healthy = {
        ids,
        records: await Promise.all(ids.map((id) => storage.getSession(id))),
        folders: await Promise.all(ids.map(folderSnapshot)),
      };
    });

    /** recover() on a fresh instance, as at start-up; then checks that the fine sessions were not touched. */
    async function recover(): Promise<unknown> {
      const restarted = new FileSystemStorage({ directory: root });
      const report = await restarted.recover();
      expect(await Promise.all(healthy.ids.map(folderSnapshot))).toEqual(healthy.folders);
      expect(await Promise.all(healthy.ids.map((id) => restarted.getSession(id)))).toEqual(healthy.records);
      expect((await fs.readFile(path.join(root, 'fine', 'complete.bin'))).toString()).toBe('complete');
      expect((await fs.readFile(path.join(root, 'fine', 'closed.bin'))).toString()).toBe('closed');
      // A second run finds nothing more.
      await expect(new FileSystemStorage({ directory: root }).recover()).resolves.toEqual(nothing);
      return report;
    }

    it('changes nothing in a healthy store', async () => {
      await expect(recover()).resolves.toEqual(nothing);
    });

    it('removes a session folder that holds only a data file (a crash inside createSession)', async () => {
      const orphan = path.join(sessionsRoot(), `{${randomUUID().toUpperCase()}}`);
      await fs.mkdir(orphan);
      await fs.writeFile(path.join(orphan, 'data'), bytes(100));
      await expect(recover()).resolves.toEqual({ ...nothing, orphansRemoved: 1 });
      await expect(fs.stat(orphan)).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('removes a session folder whose first record never got its name (only record.json.tmp)', async () => {
      const orphan = path.join(sessionsRoot(), `{${randomUUID().toUpperCase()}}`);
      await fs.mkdir(orphan);
      await fs.writeFile(path.join(orphan, 'data'), '');
      await fs.writeFile(path.join(orphan, 'record.json.tmp'), '{"version":1');
      await expect(recover()).resolves.toEqual({ ...nothing, orphansRemoved: 1 });
      await expect(fs.stat(orphan)).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('removes a session whose first record a crash cut short, before its Create-Session Ack', async () => {
      const record = await storage.createSession(newSession(['cut.bin']));
      await storage.close();
      const file = path.join(sessionDir(record.id), 'record.json');
      const whole = await fs.readFile(file);
      expect(whole.toString().trim().split('\n')).toHaveLength(1);
      await fs.truncate(file, Math.floor(whole.length / 2));
      await expect(recover()).resolves.toEqual({ ...nothing, orphansRemoved: 1 });
      await expect(fs.stat(sessionDir(record.id))).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(storage.getSession(record.id)).resolves.toBeUndefined();
    });

    it.each([
      ['corrupt JSON', async (dir: string) => fs.writeFile(path.join(dir, 'record.json'), '{ not json')],
      ['an empty record.json', async (dir: string) => fs.writeFile(path.join(dir, 'record.json'), '')],
      ['a record without its fields', async (dir: string) => fs.writeFile(path.join(dir, 'record.json'), '{"version":1}')],
      ['a record.json that is a folder', async (dir: string) => fs.mkdir(path.join(dir, 'record.json'))],
      ['nothing at all', async () => undefined],
    ])('removes a session folder with %s', async (_label, plant) => {
      const orphan = path.join(sessionsRoot(), 'junk');
      await fs.mkdir(orphan);
      await fs.writeFile(path.join(orphan, 'data'), bytes(10));
      await plant(orphan);
      await expect(recover()).resolves.toEqual({ ...nothing, orphansRemoved: 1 });
      await expect(fs.stat(orphan)).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('removes a folder holding the record of another id, which nothing can reach', async () => {
      const record = await started(['copied.bin'], bytes(10));
      const copy = path.join(sessionsRoot(), `{${randomUUID().toUpperCase()}}`);
      await fs.cp(sessionDir(record.id), copy, { recursive: true });
      await expect(recover()).resolves.toEqual({ ...nothing, orphansRemoved: 1 });
      await expect(fs.stat(copy)).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ receivedLength: 10 });
    });

    it('removes a stray record.json.tmp and leaves its session as it was', async () => {
      const record = await started(['stray.bin'], bytes(50));
      const recordBefore = await fs.readFile(path.join(sessionDir(record.id), 'record.json'));
      await fs.writeFile(path.join(sessionDir(record.id), 'record.json.tmp'), '{"version":1,"half');
      await expect(recover()).resolves.toEqual({ ...nothing, orphansRemoved: 1 });
      expect(await fs.readdir(sessionDir(record.id))).toEqual(expect.arrayContaining(['data', 'record.json']));
      expect(await fs.readdir(sessionDir(record.id))).toHaveLength(2);
      expect((await fs.readFile(path.join(sessionDir(record.id), 'record.json'))).equals(recordBefore)).toBe(true);
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ receivedLength: 50 });
    });

    it('removes the leftover data of a session that is no longer receiving', async () => {
      const record = await started(['ended.bin'], bytes(50));
      await storage.endSession(record.id, 'cancelled', Date.now());
      await fs.writeFile(dataFile(record.id), bytes(50));
      await expect(recover()).resolves.toEqual({ ...nothing, orphansRemoved: 1 });
      await expect(fs.stat(dataFile(record.id))).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ state: 'cancelled' });
    });

    describe('replies', () => {
      it('removes half-written replies, in live and ended sessions, and keeps the stored reply', async () => {
        const live = await kept(['temp-live.bin'], Buffer.from('upload'), 'the reply');
        await fs.writeFile(path.join(sessionDir(live.id), 'reply.00ff.tmp'), 'half a rep');
        await fs.writeFile(path.join(sessionDir(live.id), 'reply.1234abcd5678ef90.tmp'), '');
        const receiving = await started(['temp-receiving.bin'], Buffer.from('partial'));
        await fs.writeFile(path.join(sessionDir(receiving.id), 'reply.abc.tmp'), 'x');
        const ended = await kept(['temp-ended.bin'], Buffer.from('upload'));
        await storage.endSession(ended.id, 'cancelled', Date.now());
        await fs.writeFile(path.join(sessionDir(ended.id), 'reply.abc.tmp'), 'x');
        await expect(recover()).resolves.toEqual({ ...nothing, orphansRemoved: 4 });
        for (const { id } of [live, receiving, ended]) expect(await replyTemps(id)).toEqual([]);
        expect((await fs.readFile(replyFile(live.id))).toString()).toBe('the reply');
        expect((await fs.readFile(dataFile(live.id))).toString()).toBe('upload');
        await expect(storage.getSession(live.id)).resolves.toMatchObject({ state: 'complete', reply: { kind: 'stored', size: 9 } });
      });

      it('removes the reply file of an ended session, keeping its tombstone', async () => {
        const record = await kept(['ended-reply.bin'], Buffer.from('upload'), 'reply');
        const reply = record.reply;
        await storage.endSession(record.id, 'closed', Date.now());
        await fs.writeFile(replyFile(record.id), 'reply');
        await expect(recover()).resolves.toEqual({ ...nothing, orphansRemoved: 1 });
        expect((await fs.readdir(sessionDir(record.id))).sort()).toEqual(['record.json']);
        await expect(storage.getSession(record.id)).resolves.toMatchObject({ state: 'closed', reply });
      });

      it('removes a reply file the record does not name (a crash before it was recorded)', async () => {
        const record = await kept(['unrecorded.bin'], Buffer.from('upload'));
        await storage.writeReply(record.id, body('never recorded'));
        const linked = await kept(['linked.bin'], Buffer.from('upload'));
        await storage.updateSession(linked.id, { reply: { kind: 'url', url: 'https://static.example.com/r', copyToDestination: false } });
        await fs.writeFile(replyFile(linked.id), 'stray');
        await expect(recover()).resolves.toEqual({ ...nothing, orphansRemoved: 2 });
        await expect(fs.stat(replyFile(record.id))).rejects.toMatchObject({ code: 'ENOENT' });
        await expect(fs.stat(replyFile(linked.id))).rejects.toMatchObject({ code: 'ENOENT' });
        expect((await fs.readFile(dataFile(record.id))).toString()).toBe('upload');
      });

      it('forgets a recorded reply whose file is gone or is not the one recorded, so that the application is asked again', async () => {
        const lost = await kept(['lost-reply.bin'], Buffer.from('upload'), 'lost');
        await fs.rm(replyFile(lost.id));
        const replaced = await kept(['replaced-reply.bin'], Buffer.from('upload'), 'first');
        await storage.writeReply(replaced.id, body('a longer second reply'));
        await expect(recover()).resolves.toEqual({ ...nothing, orphansRemoved: 1, recordsRepaired: 2 });
        for (const { id } of [lost, replaced]) {
          const record = await storage.getSession(id);
          expect(record).toMatchObject({ state: 'complete', receivedLength: 6 });
          expect(record?.reply).toBeUndefined();
          await expect(fs.stat(replyFile(id))).rejects.toMatchObject({ code: 'ENOENT' });
          expect((await readAll(await storage.readData(id, 0))).toString()).toBe('upload');
        }
      });

      it('finishes an interrupted commit of an upload copied to its destination (§10.4), keeping its reply', async () => {
        const inFolder = await replied(['copy-in-folder.bin'], Buffer.from('in folder'), 'reply one', true);
        await plantRecord(inFolder.id, (stored) => ({ ...stored, committing: true, commitOverwrite: false }));
        // Marked complete first, then committed (see "commits a session marked complete" above).
        const moved = await kept(['copy-moved.bin'], Buffer.from('moved'), 'reply two');
        await plantRecord(moved.id, (stored) => ({ ...stored, committing: true, commitOverwrite: false }));
        await fs.rename(dataFile(moved.id), path.join(root, 'copy-moved.bin'));
        await expect(recover()).resolves.toEqual({ ...nothing, commitsFinished: 2 });
        for (const [record, name, content, reply] of [
          [inFolder, 'copy-in-folder.bin', 'in folder', 'reply one'],
          [moved, 'copy-moved.bin', 'moved', 'reply two'],
        ] as const) {
          expect(await storedRecord(record.id)).not.toHaveProperty('committing');
          expect((await fs.readFile(path.join(root, name))).toString()).toBe(content);
          await expect(fs.stat(dataFile(record.id))).rejects.toMatchObject({ code: 'ENOENT' });
          await expect(storage.getSession(record.id)).resolves.toMatchObject({ state: 'complete', reply: record.reply });
          expect((await readAll(await storage.readReply(record.id, 0, reply.length - 1))).toString()).toBe(reply);
        }
      });

      it('never publishes a complete session\'s data that is shorter than recorded', async () => {
        const record = await kept(['copy-short.bin'], bytes(100), 'reply');
        await plantRecord(record.id, (stored) => ({ ...stored, committing: true, commitOverwrite: false }));
        await fs.truncate(dataFile(record.id), 30);
        await expect(recover()).resolves.toEqual(nothing);
        await expect(fs.stat(path.join(root, 'copy-short.bin'))).rejects.toMatchObject({ code: 'ENOENT' });
        await expect(storage.getSession(record.id)).resolves.toMatchObject({ state: 'complete', receivedLength: 100 });
      });
    });

    it('leaves a record of a newer format version, and files that are not session folders, alone', async () => {
      const record = await started(['future.bin'], bytes(10));
      await plantRecord(record.id, (stored) => ({ ...stored, version: 2, somethingNew: true }));
      await fs.writeFile(path.join(sessionsRoot(), 'README'), 'not a session');
      await expect(recover()).resolves.toEqual(nothing);
      expect(await storedRecord(record.id)).toMatchObject({ version: 2 });
      expect((await fs.readFile(dataFile(record.id))).length).toBe(10);
      expect((await fs.readFile(path.join(sessionsRoot(), 'README'))).toString()).toBe('not a session');
    });

    it('repairs a record whose data file is missing: 0 bytes, an empty data file, the total kept', async () => {
      const content = bytes(400);
      const record = await started(['lost.bin'], content);
      await storage.updateSession(record.id, { sha256: 'd'.repeat(64) });
      await fs.rm(dataFile(record.id));
      await expect(recover()).resolves.toEqual({ ...nothing, recordsRepaired: 1 });
      expect(await storedRecord(record.id)).toMatchObject({ receivedLength: 0, totalLength: 400, state: 'receiving', sha256: null });
      expect((await fs.stat(dataFile(record.id))).size).toBe(0);
      // The client resends everything (bits-protocol.md §6.3) and the upload completes.
      await expect(storage.writeFragment(record.id, 0, body(content))).resolves.toBe(400);
      await storage.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'lost.bin'))).equals(content)).toBe(true);
    });

    it('repairs a record claiming more bytes than the data file holds (a power cut under fsync commit or never)', async () => {
      const content = bytes(400);
      const record = await started(['short.bin'], content);
      // Any record write after the data stores the length then (here: the SHA-256 recorded).
      await storage.updateSession(record.id, { sha256: 'e'.repeat(64) });
      expect(await storedRecord(record.id)).toMatchObject({ receivedLength: 400 });
      await fs.truncate(dataFile(record.id), 150);
      await expect(recover()).resolves.toEqual({ ...nothing, recordsRepaired: 1 });
      expect(await storedRecord(record.id)).toMatchObject({ receivedLength: 150, totalLength: 400, sha256: null });
      await expect(storage.writeFragment(record.id, 150, body(content.subarray(150)))).resolves.toBe(400);
      await storage.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'short.bin'))).equals(content)).toBe(true);
    });

    it('keeps a data file longer than the record says (the normal case), without rewriting the record', async () => {
      const content = bytes(400);
      const record = await started(['long.bin']);
      await storage.updateSession(record.id, { totalLength: 1000 });
      await storage.writeFragment(record.id, 0, body(content));
      const recordStats = await fs.stat(path.join(sessionDir(record.id), 'record.json'));
      const dataStats = await fs.stat(dataFile(record.id));
      expect(await storedRecord(record.id)).toMatchObject({ receivedLength: 0 });
      await expect(recover()).resolves.toEqual(nothing);
      expect((await fs.readFile(dataFile(record.id))).equals(content)).toBe(true);
      const after = await fs.stat(path.join(sessionDir(record.id), 'record.json'));
      expect({ ino: after.ino, mtimeMs: after.mtimeMs }).toEqual({ ino: recordStats.ino, mtimeMs: recordStats.mtimeMs });
      await expect(storage.getSession(record.id)).resolves.toMatchObject({ receivedLength: 400, updatedAt: Math.round(dataStats.mtimeMs) });
    });

    it('cuts bytes beyond the total, without counting, rewriting the record or touching the last progress', async () => {
      const content = bytes(400);
      const record = await started(['long.bin'], content);
      await fs.appendFile(dataFile(record.id), Buffer.alloc(1000, 0xee));
      const past = Date.now() - 3_600_000;
      await fs.utimes(dataFile(record.id), new Date(past), new Date(past));
      const recordStats = await fs.stat(path.join(sessionDir(record.id), 'record.json'));
      await expect(recover()).resolves.toEqual(nothing);
      expect((await fs.readFile(dataFile(record.id))).equals(content)).toBe(true);
      expect(Math.round((await fs.stat(dataFile(record.id))).mtimeMs)).toBe(past);
      const after = await fs.stat(path.join(sessionDir(record.id), 'record.json'));
      expect({ ino: after.ino, mtimeMs: after.mtimeMs }).toEqual({ ino: recordStats.ino, mtimeMs: recordStats.mtimeMs });
    });

    describe('interrupted commits', () => {
      async function committing(name: string, content: Buffer, overwrite?: boolean): Promise<SessionRecord> {
        const record = await started([name], content);
        await plantRecord(record.id, (stored) => ({
          ...stored,
          committing: true,
          ...(overwrite !== undefined && { commitOverwrite: overwrite }),
        }));
        return record;
      }

      async function expectComplete(id: string, name: string, content: Buffer): Promise<void> {
        const stored = await storedRecord(id);
        expect(stored).toMatchObject({ state: 'complete', receivedLength: content.length });
        expect(stored).not.toHaveProperty('committing');
        await expect(fs.stat(dataFile(id))).rejects.toMatchObject({ code: 'ENOENT' });
        expect((await fs.readFile(path.join(root, name))).equals(content)).toBe(true);
      }

      it('moves data still in the session folder to the destination and marks the session complete', async () => {
        const content = bytes(300);
        const record = await committing('in-session.bin', content, false);
        await expect(recover()).resolves.toEqual({ ...nothing, commitsFinished: 1 });
        await expectComplete(record.id, 'in-session.bin', content);
      });

      it('only marks complete when the data is already at the destination', async () => {
        const content = bytes(300);
        const record = await committing('moved.bin', content);
        await fs.rename(dataFile(record.id), path.join(root, 'moved.bin'));
        await expect(recover()).resolves.toEqual({ ...nothing, commitsFinished: 1 });
        await expectComplete(record.id, 'moved.bin', content);
      });

      it('finishes a commit that had linked the data but not removed the session name', async () => {
        const content = bytes(300);
        const record = await committing('linked.bin', content, false);
        await fs.link(dataFile(record.id), path.join(root, 'linked.bin'));
        await expect(recover()).resolves.toEqual({ ...nothing, commitsFinished: 1 });
        await expectComplete(record.id, 'linked.bin', content);
      });

      it('finishes an overwriting commit, replacing the old file', async () => {
        await fs.writeFile(path.join(root, 'replaced.bin'), 'old');
        const content = bytes(300);
        const record = await committing('replaced.bin', content, true);
        await expect(recover()).resolves.toEqual({ ...nothing, commitsFinished: 1 });
        await expectComplete(record.id, 'replaced.bin', content);
      });

      it('publishes no unrecorded tail', async () => {
        const content = bytes(300);
        const record = await committing('tail.bin', content, false);
        await fs.appendFile(dataFile(record.id), 'tail');
        await expect(recover()).resolves.toEqual({ ...nothing, commitsFinished: 1 });
        await expectComplete(record.id, 'tail.bin', content);
      });

      it('leaves the commit to the middleware when another file is at the destination and overwrite was off', async () => {
        await fs.writeFile(path.join(root, 'taken.bin'), 'someone else');
        const content = bytes(300);
        // A marker from before commitOverwrite existed counts as overwrite off.
        const record = await committing('taken.bin', content);
        await expect(recover()).resolves.toEqual(nothing);
        expect(await storedRecord(record.id)).toMatchObject({ state: 'receiving', committing: true });
        expect((await fs.readFile(path.join(root, 'taken.bin'))).toString()).toBe('someone else');
        await storage.commit(record.id, { overwrite: true });
        await expectComplete(record.id, 'taken.bin', content);
      });

      it('resets the session when its data is neither in the session nor at the destination', async () => {
        const record = await committing('vanished.bin', bytes(300), false);
        await fs.rm(dataFile(record.id));
        await expect(recover()).resolves.toEqual({ ...nothing, recordsRepaired: 1 });
        const stored = await storedRecord(record.id);
        expect(stored).toMatchObject({ state: 'receiving', receivedLength: 0, totalLength: 300 });
        expect(stored).not.toHaveProperty('committing');
        expect((await fs.stat(dataFile(record.id))).size).toBe(0);
      });

      it('repairs rather than publishes data shorter than recorded', async () => {
        const record = await committing('cut.bin', bytes(300), false);
        await fs.truncate(dataFile(record.id), 120);
        await expect(recover()).resolves.toEqual({ ...nothing, recordsRepaired: 1 });
        expect(await storedRecord(record.id)).toMatchObject({ state: 'receiving', receivedLength: 120 });
        await expect(fs.stat(path.join(root, 'cut.bin'))).rejects.toMatchObject({ code: 'ENOENT' });
      });
    });

    it('repairs everything at once and reports the sum', async () => {
      const onlyData = path.join(sessionsRoot(), `{${randomUUID().toUpperCase()}}`);
      await fs.mkdir(onlyData);
      await fs.writeFile(path.join(onlyData, 'data'), bytes(10));
      const corrupt = path.join(sessionsRoot(), `{${randomUUID().toUpperCase()}}`);
      await fs.mkdir(corrupt);
      await fs.writeFile(path.join(corrupt, 'record.json'), '{');
      const stray = await started(['stray.bin'], bytes(10));
      await fs.writeFile(path.join(sessionDir(stray.id), 'record.json.tmp'), '');
      const noData = await started(['no-data.bin'], bytes(10));
      await fs.rm(dataFile(noData.id));
      const shorter = await started(['shorter.bin'], bytes(10));
      await storage.updateSession(shorter.id, { delivered: false });
      await fs.truncate(dataFile(shorter.id), 4);
      const longer = await started(['longer.bin'], bytes(10));
      await fs.appendFile(dataFile(longer.id), 'xx');
      const inFolder = await started(['in-folder.bin'], bytes(10));
      await plantRecord(inFolder.id, (stored) => ({ ...stored, committing: true, commitOverwrite: false }));
      const atDestination = await started(['at-destination.bin'], bytes(10));
      await plantRecord(atDestination.id, (stored) => ({ ...stored, committing: true, commitOverwrite: false }));
      await fs.rename(dataFile(atDestination.id), path.join(root, 'at-destination.bin'));

      await expect(recover()).resolves.toEqual({ orphansRemoved: 3, recordsRepaired: 2, commitsFinished: 2 });
      const states = await Promise.all(
        [stray, noData, shorter, longer, inFolder, atDestination].map(async ({ id }) => {
          const record = await storage.getSession(id);
          return [record?.state, record?.receivedLength];
        }),
      );
      expect(states).toEqual([
        ['receiving', 10],
        ['receiving', 0],
        ['receiving', 4],
        ['receiving', 10],
        ['complete', 10],
        ['complete', 10],
      ]);
      expect((await fs.stat(dataFile(longer.id))).size).toBe(10);
    });
  });

  describe('destinations that leave the root', () => {
    const invalid = { name: 'InvalidDestinationError', code: 'BITS_INVALID_DESTINATION' };

    it.each([
      [[]],
      [['..', 'escape.bin']],
      [['a', '..', '..', 'escape.bin']],
      [['.']],
      [['']],
      [['a/../../escape.bin']],
      [['a\\..\\escape.bin']],
      [['nul\0byte']],
      [['.bits-sessions', 'x.bin']],
      [['.BITS-Sessions', 'x.bin']],
      [['.bits-sessions. ', 'x.bin']],
      [['.bits-sessions']],
    ])('refuses %j', async (destination) => {
      await expect(storage.createSession(newSession(destination))).rejects.toMatchObject(invalid);
      await expect(storage.inspectDestination(destination)).rejects.toMatchObject(invalid);
      expect(await fs.readdir(root)).toEqual(['.bits-sessions']);
      expect(await fs.readdir(path.join(root, '.bits-sessions'))).toEqual([]);
    });

    it('refuses the custom session folder name and allows the default one then', async () => {
      const custom = new FileSystemStorage({ directory: root, sessionDirectory: 'state' });
      await expect(custom.createSession(newSession(['State', 'x.bin']))).rejects.toMatchObject(invalid);
      await expect(custom.createSession(newSession(['.bits-sessions', 'x.bin']))).resolves.toBeDefined();
    });

    it('refuses a link inside the root that leads outside, at creation and at inspection', async () => {
      const outside = path.join(base, 'outside');
      await fs.mkdir(outside);
      await fs.mkdir(root, { recursive: true });
      await fs.symlink(outside, path.join(root, 'link'));
      await expect(storage.createSession(newSession(['link', 'x.bin']))).rejects.toMatchObject(invalid);
      await expect(storage.createSession(newSession(['link', 'deeper', 'x.bin']))).rejects.toMatchObject(invalid);
      await expect(storage.inspectDestination(['link', 'x.bin'])).rejects.toMatchObject(invalid);
    });

    it('refuses a dangling link on the way, which mkdir or rename would follow', async () => {
      await fs.mkdir(root, { recursive: true });
      await fs.symlink(path.join(base, 'outside', 'not-yet'), path.join(root, 'dangling'));
      await fs.symlink(path.join(root, 'loop'), path.join(root, 'loop'));
      await expect(storage.createSession(newSession(['dangling', 'x.bin']))).rejects.toMatchObject(invalid);
      await expect(storage.createSession(newSession(['dangling', 'a', 'x.bin']))).rejects.toMatchObject(invalid);
      await expect(storage.createSession(newSession(['loop', 'x.bin']))).rejects.toMatchObject(invalid);
    });

    it('refuses a link planted before commit, and writes nothing outside', async () => {
      const outside = path.join(base, 'outside');
      await fs.mkdir(outside);
      const record = await started(['later', 'x.bin'], Buffer.from('secret'));
      await fs.symlink(outside, path.join(root, 'later'));
      await expect(storage.commit(record.id, { overwrite: true })).rejects.toMatchObject(invalid);
      expect(await fs.readdir(outside)).toEqual([]);
      expect((await storage.getSession(record.id))?.state).toBe('receiving');
    });

    it('refuses a link that leads into the session folder', async () => {
      await fs.mkdir(root, { recursive: true });
      await storage.inspectDestination(['warm-up']);
      await fs.symlink(path.join(root, '.bits-sessions'), path.join(root, 'sneaky'));
      await expect(storage.createSession(newSession(['sneaky', 'x.bin']))).rejects.toMatchObject(invalid);
    });

    it('allows links that stay inside the root', async () => {
      await fs.mkdir(path.join(root, 'real'), { recursive: true });
      await fs.symlink(path.join(root, 'real'), path.join(root, 'alias'));
      const record = await started(['alias', 'x.bin'], Buffer.from('fine'));
      await storage.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'real', 'x.bin'))).toString()).toBe('fine');
    });

    it('replaces a link at the destination itself instead of writing through it', async () => {
      const outside = path.join(base, 'outside.bin');
      await fs.writeFile(outside, 'untouched');
      await fs.mkdir(root, { recursive: true });
      await fs.symlink(outside, path.join(root, 'target.bin'));
      const record = await started(['target.bin'], Buffer.from('new'));
      await expect(storage.inspectDestination(['target.bin'])).resolves.toBe('file');
      await expect(storage.commit(record.id, { overwrite: false })).rejects.toMatchObject({ code: 'BITS_DESTINATION_EXISTS' });
      await storage.commit(record.id, { overwrite: true });
      expect((await fs.readFile(outside)).toString()).toBe('untouched');
      expect((await fs.lstat(path.join(root, 'target.bin'))).isSymbolicLink()).toBe(false);
      expect((await fs.readFile(path.join(root, 'target.bin'))).toString()).toBe('new');
    });
  });

  describe('storage failures', () => {
    type WriteFn = (this: FileHandle, ...args: unknown[]) => Promise<{ bytesWritten: number; buffer: Uint8Array }>;
    type WritevFn = (this: FileHandle, buffers: Buffer[], position: number | null) => Promise<{ bytesWritten: number; buffers: Buffer[] }>;
    type SyncFn = (this: FileHandle) => Promise<void>;
    let proto: { write: WriteFn; writev: WritevFn; sync: SyncFn; datasync: SyncFn };
    let realWrite: WriteFn;
    let realWritev: WritevFn;
    let realSync: SyncFn;
    let realDatasync: SyncFn;

    beforeEach(async () => {
      const probe = await fs.open(path.join(base, 'probe'), 'w');
      proto = Object.getPrototypeOf(probe) as typeof proto;
      await probe.close();
      realWrite = proto.write;
      realWritev = proto.writev;
      realSync = proto.sync;
      realDatasync = proto.datasync;
    });
    afterEach(() => {
      proto.write = realWrite;
      proto.writev = realWritev;
      proto.sync = realSync;
      proto.datasync = realDatasync;
    });

    const errno = (code: string): NodeJS.ErrnoException => Object.assign(new Error(`${code}: simulated`), { code });
    /** A fragment body for the total of 100 000 bytes the sessions below announce. */
    const totalOf = 100_000;
    async function startedOf(name: string, length: number): Promise<SessionRecord> {
      const record = await started([name]);
      await storage.updateSession(record.id, { totalLength: totalOf });
      if (length > 0) await storage.writeFragment(record.id, 0, body(bytes(length)));
      return record;
    }

    it('rejects with ENOSPC, keeping the bytes that landed, even half a chunk', async () => {
      const record = await startedOf('full.bin', 100);
      let calls = 0;
      proto.writev = function (this: FileHandle, buffers: Buffer[], position: number | null) {
        calls += 1;
        // First call: a short write of 10 bytes; second call: the disk is full.
        if (calls === 1) return realWritev.call(this, [(buffers[0] ?? Buffer.alloc(0)).subarray(0, 10)], position);
        return Promise.reject(errno('ENOSPC'));
      };
      const error = await storage.writeFragment(record.id, 100, body(bytes(5000, 1))).catch((e: unknown) => e);
      proto.writev = realWritev;
      expect(error).toMatchObject({ code: 'ENOSPC' });
      expect((await storage.getSession(record.id))?.receivedLength).toBe(110);
      expect((await fs.stat(dataFile(record.id))).size).toBe(110);
      await expect(storage.writeFragment(record.id, 110, body('more'))).resolves.toBe(114);
      expect((await fs.readFile(dataFile(record.id))).equals(Buffer.concat([bytes(100), bytes(5000, 1).subarray(0, 10), Buffer.from('more')]))).toBe(true);
    });

    it('keeps EDQUOT as the code', async () => {
      const record = await startedOf('quota.bin', 0);
      proto.writev = () => Promise.reject(errno('EDQUOT'));
      await expect(storage.writeFragment(record.id, 0, body('abc'))).rejects.toMatchObject({ code: 'EDQUOT' });
      proto.writev = realWritev;
      expect((await storage.getSession(record.id))?.receivedLength).toBe(0);
    });

    /** Counts fdatasync and fsync calls of every file handle from now on (afterEach restores both). */
    function countFlushes(): { counts: { datasyncs: number; syncs: number }; reset(): void } {
      const counts = { datasyncs: 0, syncs: 0 };
      proto.datasync = function (this: FileHandle) {
        counts.datasyncs += 1;
        return realDatasync.call(this);
      };
      proto.sync = function (this: FileHandle) {
        counts.syncs += 1;
        return realSync.call(this);
      };
      return { counts, reset: () => Object.assign(counts, { datasyncs: 0, syncs: 0 }) };
    }

    it('vouches for nothing new when fdatasync fails, and truncates back', async () => {
      const record = await startedOf('sync.bin', 100);
      proto.datasync = () => Promise.reject(errno('EIO'));
      await expect(storage.writeFragment(record.id, 100, body(bytes(500)))).rejects.toMatchObject({ code: 'EIO' });
      proto.datasync = realDatasync;
      expect((await storage.getSession(record.id))?.receivedLength).toBe(100);
      expect((await fs.stat(dataFile(record.id))).size).toBe(100);
      // The file that failed is not used again: the next fragment opens it afresh.
      await expect(storage.writeFragment(record.id, 100, body(bytes(500)))).resolves.toBe(600);
    });

    it('flushes each fragment with one fdatasync of the data file under fsync: fragment, and none under commit', async () => {
      const flushes = countFlushes();
      const record = await startedOf('flushed.bin', 0);
      flushes.reset();
      for (let offset = 0; offset < 3000; offset += 1000) await storage.writeFragment(record.id, offset, body(bytes(1000)));
      expect(flushes.counts).toEqual({ datasyncs: 3, syncs: 0 });

      const lazy = new FileSystemStorage({ directory: root, fsync: 'commit' });
      const other = await lazy.createSession(newSession(['lazy.bin']));
      await lazy.updateSession(other.id, { totalLength: 3000 });
      flushes.reset();
      for (let offset = 0; offset < 3000; offset += 1000) await lazy.writeFragment(other.id, offset, body(bytes(1000)));
      expect(flushes.counts).toEqual({ datasyncs: 0, syncs: 0 });
      await lazy.close();
    });

    it('commits with one fdatasync (the commit marker) and one fsync (the destination folder) when the fragments were flushed', async () => {
      const flushes = countFlushes();
      const record = await started(['commit-flushes.bin'], bytes(3000));
      flushes.reset();
      await storage.commit(record.id, { overwrite: false });
      // The data file was flushed with its fragment; the state after the commit goes with the next line flushed.
      expect(flushes.counts).toEqual({ datasyncs: 1, syncs: 1 });

      /** Flushes made by `adapter` committing session `id`. */
      const commitFlushes = async (adapter: FileSystemStorage, id: string): Promise<typeof flushes.counts> => {
        flushes.reset();
        await adapter.commit(id, { overwrite: false });
        return { ...flushes.counts };
      };
      /** A session holding 3000 bytes written through `adapter`. */
      const writtenBy = async (adapter: FileSystemStorage, name: string): Promise<string> => {
        const { id } = await adapter.createSession(newSession([name]));
        await adapter.updateSession(id, { totalLength: 3000 });
        await adapter.writeFragment(id, 0, body(bytes(3000)));
        return id;
      };
      // Written but never flushed: under fsync 'commit', or after a restart (the file opened again),
      // the data file is flushed before it moves.
      const lazy = new FileSystemStorage({ directory: root, fsync: 'commit' });
      expect(await commitFlushes(lazy, await writtenBy(lazy, 'commit-unflushed.bin'))).toEqual({ datasyncs: 2, syncs: 1 });
      const before = await started(['commit-restarted.bin'], bytes(3000));
      expect(await commitFlushes(lazy, before.id)).toEqual({ datasyncs: 2, syncs: 1 });
      await lazy.close();

      const never = new FileSystemStorage({ directory: root, fsync: 'never' });
      expect(await commitFlushes(never, await writtenBy(never, 'never-flushed.bin'))).toEqual({ datasyncs: 0, syncs: 0 });
      await never.close();
    });

    it('flushes a record update only when a restart could not repair its loss', async () => {
      const flushes = countFlushes();
      const record = await started(['updates.bin']);
      flushes.reset();
      await storage.updateSession(record.id, { totalLength: 10, updatedAt: Date.now() });
      await storage.updateSession(record.id, { sha256: 'a'.repeat(64) });
      expect(flushes.counts).toEqual({ datasyncs: 0, syncs: 0 });
      await storage.updateSession(record.id, { delivered: true });
      expect(flushes.counts).toEqual({ datasyncs: 1, syncs: 0 });
      await storage.endSession(record.id, 'cancelled', Date.now());
      expect(flushes.counts).toEqual({ datasyncs: 2, syncs: 0 });
    });

    it('recovers every session to a state that carries on after a power cut that lost all it did not flush', async () => {
      // The length of every file at its last flush, by inode: what a power cut leaves of it.
      const flushedLength = new Map<bigint, number>();
      const remember = (real: SyncFn): SyncFn =>
        async function (this: FileHandle) {
          await real.call(this);
          const stats = await this.stat({ bigint: true });
          flushedLength.set(stats.ino, Number(stats.size));
        };
      proto.datasync = remember(realDatasync);
      proto.sync = remember(realSync);
      const content = bytes(3000, 5);
      const sha256 = 'b'.repeat(64);
      const inProgress = await started(['cut-in-progress.bin']);
      await storage.updateSession(inProgress.id, { totalLength: 3000, updatedAt: Date.now() });
      await storage.writeFragment(inProgress.id, 0, body(content.subarray(0, 1000)));
      const committed = await started(['cut-committed.bin'], content);
      await storage.updateSession(committed.id, { sha256 });
      await storage.commit(committed.id, { overwrite: false });
      await storage.close();

      for (const id of [inProgress.id, committed.id]) {
        for (const name of ['record.json', 'data']) {
          const file = path.join(sessionDir(id), name);
          const stats = await fs.stat(file, { bigint: true }).catch(() => undefined);
          if (stats !== undefined) await fs.truncate(file, flushedLength.get(stats.ino) ?? 0);
        }
      }
      // Both lost a line: the total of the first, the state after the commit of the second.
      expect(await readStoredRecord(path.join(sessionDir(inProgress.id), 'record.json'))).toMatchObject({ state: 'receiving', totalLength: null });
      expect(await readStoredRecord(path.join(sessionDir(committed.id), 'record.json'))).toMatchObject({ state: 'receiving', committing: true, sha256 });

      storage = new FileSystemStorage({ directory: root });
      await expect(storage.recover()).resolves.toMatchObject({ commitsFinished: 1 });
      await expect(storage.getSession(committed.id)).resolves.toMatchObject({ state: 'complete', receivedLength: 3000, sha256 });
      expect((await fs.readFile(path.join(root, 'cut-committed.bin'))).equals(content)).toBe(true);
      // The flushed fragment is there; the next fragment's Content-Range brings the total again.
      await expect(storage.getSession(inProgress.id)).resolves.toMatchObject({ state: 'receiving', receivedLength: 1000, totalLength: undefined });
      await storage.updateSession(inProgress.id, { totalLength: 3000 });
      await expect(storage.writeFragment(inProgress.id, 1000, body(content.subarray(1000)))).resolves.toBe(3000);
      await storage.commit(inProgress.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'cut-in-progress.bin'))).equals(content)).toBe(true);
    });

    it('gathers the chunks that arrive while a write is in flight into one writev', async () => {
      const calls: number[] = [];
      proto.writev = function (this: FileHandle, buffers: Buffer[], position: number | null) {
        calls.push(buffers.reduce((sum, buffer) => sum + buffer.length, 0));
        return realWritev.call(this, buffers, position);
      };
      const record = await started(['batched.bin']);
      const content = bytes(1024 * 1024, 3);
      await storage.updateSession(record.id, { totalLength: content.length });
      const chunks: Buffer[] = [];
      for (let i = 0; i < content.length; i += 64 * 1024) chunks.push(content.subarray(i, i + 64 * 1024));
      await expect(storage.writeFragment(record.id, 0, Readable.from(chunks))).resolves.toBe(content.length);
      // 16 chunks of 64 KiB: the first written alone, the rest in batches of up to 512 KiB.
      expect(calls.length).toBeLessThanOrEqual(4);
      expect(calls.reduce((a, b) => a + b, 0)).toBe(content.length);
      expect((await fs.readFile(dataFile(record.id))).equals(content)).toBe(true);
    });

    it('keeps the earlier reply and no temporary file when storing a reply fails (ENOSPC, fsync)', async () => {
      const record = await kept(['reply-full.bin'], Buffer.from('upload'), 'earlier');
      proto.write = () => Promise.reject(errno('ENOSPC'));
      await expect(storage.writeReply(record.id, body(bytes(5000)))).rejects.toMatchObject({ code: 'ENOSPC' });
      proto.write = realWrite;
      proto.sync = () => Promise.reject(errno('EIO'));
      await expect(storage.writeReply(record.id, body(bytes(5000)))).rejects.toMatchObject({ code: 'EIO' });
      proto.sync = realSync;
      expect((await readAll(await storage.readReply(record.id, 0, 6))).toString()).toBe('earlier');
      expect(await replyTemps(record.id)).toEqual([]);
    });

    describe('when no record fits on the disk any more', () => {
      type WriteFileFn = (this: FileHandle, ...args: unknown[]) => Promise<void>;
      let handleProto: { writeFile: WriteFileFn };
      let realWriteFile: WriteFileFn;
      beforeEach(() => {
        handleProto = proto as unknown as { writeFile: WriteFileFn };
        realWriteFile = handleProto.writeFile;
      });
      afterEach(() => {
        handleProto.writeFile = realWriteFile;
      });

      it('still stores fragments: the per-fragment path writes no record', async () => {
        const record = await startedOf('tight.bin', 100);
        const recordFile = path.join(sessionDir(record.id), 'record.json');
        const before = await fs.stat(recordFile);
        handleProto.writeFile = () => Promise.reject(errno('ENOSPC'));
        await expect(storage.writeFragment(record.id, 100, body(bytes(99_800)))).resolves.toBe(99_900);
        await expect(storage.writeFragment(record.id, 99_900, body(bytes(100)))).resolves.toBe(100_000);
        handleProto.writeFile = realWriteFile;
        const after = await fs.stat(recordFile);
        expect({ ino: after.ino, mtimeMs: after.mtimeMs }).toEqual({ ino: before.ino, mtimeMs: before.mtimeMs });
        expect((await storage.getSession(record.id))?.receivedLength).toBe(100_000);
      });

      it('leaves no half-created session behind when createSession fails', async () => {
        await storage.inspectDestination(['warm-up']);
        handleProto.writeFile = () => Promise.reject(errno('ENOSPC'));
        await expect(storage.createSession(newSession(['x.bin']))).rejects.toMatchObject({ code: 'ENOSPC' });
        handleProto.writeFile = realWriteFile;
        expect(await fs.readdir(path.join(root, '.bits-sessions'))).toEqual([]);
      });
    });

    it('rejects a body that yields something other than bytes, keeping what it stored before', async () => {
      const record = await startedOf('objects.bin', 100);
      const mixed = Readable.from([bytes(50), { not: 'bytes' }, bytes(50)]);
      await expect(storage.writeFragment(record.id, 100, mixed)).rejects.toThrow(/A fragment body must yield bytes/);
      expect((await storage.getSession(record.id))?.receivedLength).toBe(150);
    });

    it('resolves with the stored prefix when the body fails (client abort)', async () => {
      const record = await startedOf('abort.bin', 100);
      async function* aborting(): AsyncGenerator<Buffer> {
        yield bytes(3000);
        yield bytes(2000);
        await delay(30);
        throw Object.assign(new Error('aborted'), { code: 'ECONNRESET' });
      }
      await expect(storage.writeFragment(record.id, 100, Readable.from(aborting()))).resolves.toBe(5100);
      expect((await storage.getSession(record.id))?.receivedLength).toBe(5100);
      expect((await fs.stat(dataFile(record.id))).size).toBe(5100);
    });
  });

  describe('a real full disk (1 MiB tmpfs)', () => {
    // Mounting needs root; elsewhere these tests are skipped.
    let mountPoint: string | undefined = mkdtempSync(path.join(os.tmpdir(), 'bits-tmpfs-'));
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mountPoint], { stdio: 'ignore' });
    } catch {
      rmSync(mountPoint, { recursive: true, force: true });
      mountPoint = undefined;
    }
    const itMounted = mountPoint === undefined ? it.skip : it;
    afterAll(() => {
      if (mountPoint === undefined) return;
      execFileSync('umount', [mountPoint]);
      rmSync(mountPoint, { recursive: true, force: true });
    });

    itMounted('rejects with ENOSPC, records only bytes on disk, and continues once space is free', async () => {
      const mount = mountPoint as string;
      const directory = path.join(mount, 'root');
      const tiny = new FileSystemStorage({ directory });
      const content = bytes(700 * 1024, 5);
      const filler = path.join(mount, 'filler');
      await fs.writeFile(filler, Buffer.alloc(600 * 1024));
      const record = await tiny.createSession(newSession(['big.bin']));
      await tiny.updateSession(record.id, { totalLength: content.length });

      const chunks = (from: number): Readable =>
        Readable.from((function* () {
          for (let i = from; i < content.length; i += 64 * 1024) yield content.subarray(i, Math.min(i + 64 * 1024, content.length));
        })());
      await expect(tiny.writeFragment(record.id, 0, chunks(0))).rejects.toMatchObject({ code: 'ENOSPC' });

      const after = await tiny.getSession(record.id);
      const onDisk = (await fs.stat(path.join(directory, '.bits-sessions', sessionFolderName(record.id), 'data'))).size;
      expect(after?.receivedLength).toBe(onDisk);
      expect(onDisk).toBeGreaterThan(0);
      expect(onDisk).toBeLessThan(content.length);

      await fs.rm(filler);
      const received = after?.receivedLength ?? 0;
      await expect(tiny.writeFragment(record.id, received, chunks(received))).resolves.toBe(content.length);
      await tiny.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(directory, 'big.bin'))).equals(content)).toBe(true);
      // Nothing may keep the file system busy when it is unmounted.
      await tiny.close();
    });
  });
});
