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
import type { Destination, FileSystemStorageOptions, NewSession, SessionRecord } from '../../lib/storage';
import { sessionFolderName } from '../../lib/storage/filesystem';

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
    return {
      adapter: new FileSystemStorage({ directory, ...options }),
      readDestination: (destination) => readOrUndefined(path.join(directory, ...destination)),
      cleanup: () => fs.rm(base, { recursive: true, force: true }),
      reopen: async () => new FileSystemStorage({ directory, ...options }),
    };
  });
}

conformance('FileSystemStorage', {});
conformance('FileSystemStorage (fsync: commit, custom session folder)', { fsync: 'commit', sessionDirectory: '_sessions' });

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

  beforeEach(async () => {
    base = await fs.mkdtemp(path.join(os.tmpdir(), 'bits-fs-'));
    root = path.join(base, 'root');
    storage = new FileSystemStorage({ directory: root });
  });
  afterEach(async () => {
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
    ])('throws a TypeError for %s', (_label, options, message) => {
      expect(() => new FileSystemStorage(options as unknown as FileSystemStorageOptions)).toThrow(TypeError);
      expect(() => new FileSystemStorage(options as unknown as FileSystemStorageOptions)).toThrow(message);
    });
  });

  describe('layout', () => {
    it('keeps each session as a record and a data file in a hidden folder under the root', async () => {
      const record = await started(['report.bin'], Buffer.from('hello'));
      expect(sessionFolderName(record.id)).toBe(record.id);
      const stored = JSON.parse(await fs.readFile(path.join(sessionDir(record.id), 'record.json'), 'utf8')) as Record<string, unknown>;
      expect(stored).toMatchObject({ id: record.id, receivedLength: 5, totalLength: 5, state: 'receiving', principal: null });
      expect((await fs.readFile(dataFile(record.id))).toString()).toBe('hello');

      await storage.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'report.bin'))).toString()).toBe('hello');
      await expect(fs.stat(dataFile(record.id))).rejects.toMatchObject({ code: 'ENOENT' });

      await storage.endSession(record.id, 'closed', 42);
      const tombstone = JSON.parse(await fs.readFile(path.join(sessionDir(record.id), 'record.json'), 'utf8')) as Record<string, unknown>;
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

  describe('crash consistency (§6.3: never report bytes that are not on disk)', () => {
    it('drops unrecorded bytes at the end of the data file on the next write', async () => {
      const content = bytes(120);
      const record = await started(['longer.bin']);
      await storage.updateSession(record.id, { totalLength: 120 });
      await storage.writeFragment(record.id, 0, body(content.subarray(0, 100)));
      // A crash after writing bytes but before recording them.
      await fs.appendFile(dataFile(record.id), Buffer.alloc(50, 0xee));

      const restarted = new FileSystemStorage({ directory: root });
      expect((await restarted.getSession(record.id))?.receivedLength).toBe(100);
      await expect(restarted.writeFragment(record.id, 100, body(content.subarray(100)))).resolves.toBe(120);
      await restarted.commit(record.id, { overwrite: false });
      expect((await fs.readFile(path.join(root, 'longer.bin'))).equals(content)).toBe(true);
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
      const stored = JSON.parse(await fs.readFile(recordFile, 'utf8')) as Record<string, unknown>;
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
    type SyncFn = (this: FileHandle) => Promise<void>;
    let proto: { write: WriteFn; sync: SyncFn };
    let realWrite: WriteFn;
    let realSync: SyncFn;

    beforeEach(async () => {
      const probe = await fs.open(path.join(base, 'probe'), 'w');
      proto = Object.getPrototypeOf(probe) as { write: WriteFn; sync: SyncFn };
      await probe.close();
      realWrite = proto.write;
      realSync = proto.sync;
    });
    afterEach(() => {
      proto.write = realWrite;
      proto.sync = realSync;
    });

    const errno = (code: string): NodeJS.ErrnoException => Object.assign(new Error(`${code}: simulated`), { code });

    it('rejects with ENOSPC, keeping and recording the bytes that landed, even half a chunk', async () => {
      const record = await started(['full.bin'], bytes(100));
      let calls = 0;
      proto.write = function (this: FileHandle, ...args: unknown[]) {
        calls += 1;
        // First call: a short write of 10 bytes; second call: the disk is full.
        if (calls === 1) return realWrite.call(this, args[0], args[1], 10, null);
        return Promise.reject(errno('ENOSPC'));
      };
      const error = await storage.writeFragment(record.id, 100, body(bytes(5000, 1))).catch((e: unknown) => e);
      proto.write = realWrite;
      expect(error).toMatchObject({ code: 'ENOSPC' });
      expect((await storage.getSession(record.id))?.receivedLength).toBe(110);
      expect((await fs.stat(dataFile(record.id))).size).toBe(110);
      await expect(storage.writeFragment(record.id, 110, body('more'))).resolves.toBe(114);
    });

    it('keeps EDQUOT as the code', async () => {
      const record = await started(['quota.bin']);
      proto.write = () => Promise.reject(errno('EDQUOT'));
      await expect(storage.writeFragment(record.id, 0, body('abc'))).rejects.toMatchObject({ code: 'EDQUOT' });
      proto.write = realWrite;
      expect((await storage.getSession(record.id))?.receivedLength).toBe(0);
    });

    it('vouches for nothing new when fsync fails, and truncates back', async () => {
      const record = await started(['sync.bin'], bytes(100));
      proto.sync = () => Promise.reject(errno('EIO'));
      await expect(storage.writeFragment(record.id, 100, body(bytes(500)))).rejects.toMatchObject({ code: 'EIO' });
      proto.sync = realSync;
      expect((await storage.getSession(record.id))?.receivedLength).toBe(100);
      expect((await fs.stat(dataFile(record.id))).size).toBe(100);
    });

    describe('when the record no longer fits on the disk', () => {
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

      it('gives back a little data so the record fits, and still rejects', async () => {
        const record = await started(['tight.bin'], bytes(100));
        let failures = 1;
        handleProto.writeFile = function (this: FileHandle, ...args: unknown[]) {
          if (failures-- > 0) return Promise.reject(errno('ENOSPC'));
          return realWriteFile.apply(this, args);
        };
        await expect(storage.writeFragment(record.id, 100, body(bytes(200_000)))).rejects.toMatchObject({ code: 'ENOSPC' });
        const expected = 100 + 200_000 - 64 * 1024;
        expect((await storage.getSession(record.id))?.receivedLength).toBe(expected);
        expect((await fs.stat(dataFile(record.id))).size).toBe(expected);
      });

      it('cuts the data back to the old record when no record can be written', async () => {
        const record = await started(['none.bin'], bytes(100));
        handleProto.writeFile = () => Promise.reject(errno('ENOSPC'));
        await expect(storage.writeFragment(record.id, 100, body(bytes(200_000)))).rejects.toMatchObject({ code: 'ENOSPC' });
        handleProto.writeFile = realWriteFile;
        expect((await storage.getSession(record.id))?.receivedLength).toBe(100);
        expect((await fs.stat(dataFile(record.id))).size).toBe(100);
      });

      it('leaves no half-created session behind when createSession fails', async () => {
        await storage.inspectDestination(['warm-up']);
        handleProto.writeFile = () => Promise.reject(errno('ENOSPC'));
        await expect(storage.createSession(newSession(['x.bin']))).rejects.toMatchObject({ code: 'ENOSPC' });
        handleProto.writeFile = realWriteFile;
        expect(await fs.readdir(path.join(root, '.bits-sessions'))).toEqual([]);
      });
    });

    it('resolves with the stored prefix when the body fails (client abort)', async () => {
      const record = await started(['abort.bin'], bytes(100));
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
    });
  });
});
