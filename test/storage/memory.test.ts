import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { MemoryStorage, runStorageAdapterConformance } from '../../lib/storage';
import type { Destination, NewSession, StorageAdapter } from '../../lib/storage';

runStorageAdapterConformance('MemoryStorage', async () => {
  const adapter = new MemoryStorage();
  return {
    adapter,
    readDestination: async (destination) => adapter.readFile(destination),
    cleanup: async () => undefined,
  };
});

function newSession(destination: Destination): NewSession {
  return {
    id: `{${randomUUID().toUpperCase()}}`,
    destination,
    urlPath: `/${destination.join('/')}`,
    principal: undefined,
    protocol: '{7df0354d-249b-430f-820d-3d2a9bef4931}',
    createdAt: Date.now(),
  };
}

describe('MemoryStorage', () => {
  it('sees seeded files as files, their folders as directories, and refuses to overwrite them', async () => {
    const storage = new MemoryStorage({ files: { 'reports/old.bin': 'old', 'top.txt': Buffer.from('top') } });
    await expect(storage.inspectDestination(['reports', 'old.bin'])).resolves.toBe('file');
    await expect(storage.inspectDestination(['reports'])).resolves.toBe('directory');
    await expect(storage.inspectDestination(['top.txt'])).resolves.toBe('file');
    expect(storage.readFile(['reports', 'old.bin'])?.toString()).toBe('old');

    const session = await storage.createSession(newSession(['reports', 'old.bin']));
    await storage.writeFragment(session.id, 0, Readable.from([Buffer.from('new')]));
    await expect(storage.commit(session.id, { overwrite: false })).rejects.toMatchObject({ code: 'BITS_DESTINATION_EXISTS' });
    await storage.commit(session.id, { overwrite: true });
    expect(storage.readFile(['reports', 'old.bin'])?.toString()).toBe('new');
  });

  it('readFile returns a copy', async () => {
    const storage = new MemoryStorage({ files: { 'a.bin': 'abc' } });
    const copy = storage.readFile(['a.bin']);
    copy?.fill(0);
    expect(storage.readFile(['a.bin'])?.toString()).toBe('abc');
  });

  it('keeps exactly the bytes read before a client abort', async () => {
    const storage = new MemoryStorage();
    const session = await storage.createSession(newSession(['a.bin']));
    async function* aborting(): AsyncGenerator<Buffer> {
      yield Buffer.alloc(300, 1);
      yield Buffer.alloc(200, 2);
      await delay(20);
      throw new Error('aborted');
    }
    await expect(storage.writeFragment(session.id, 0, Readable.from(aborting()))).resolves.toBe(500);
    expect((await storage.getSession(session.id))?.receivedLength).toBe(500);
  });

  it('refuses destinations that are not clean segment lists', async () => {
    const storage = new MemoryStorage();
    for (const destination of [[], ['..', 'x'], ['.'], ['a/b'], ['a\\b'], ['']]) {
      await expect(storage.createSession(newSession(destination))).rejects.toMatchObject({
        name: 'InvalidDestinationError',
        code: 'BITS_INVALID_DESTINATION',
      });
    }
    expect(() => new MemoryStorage({ files: { '../x': 'x' } })).toThrow(TypeError);
  });

  it('refuses to commit below an existing file', async () => {
    const storage = new MemoryStorage({ files: { plain: 'x' } });
    const session = await storage.createSession(newSession(['plain', 'child.bin']));
    await expect(storage.commit(session.id, { overwrite: true })).rejects.toMatchObject({ code: 'ENOTDIR' });
  });

  it('has no recover(): nothing survives a restart', () => {
    expect((new MemoryStorage() as StorageAdapter).recover).toBeUndefined();
  });

  it('has no localDataFile(): nothing is on disk', () => {
    expect((new MemoryStorage() as StorageAdapter).localDataFile).toBeUndefined();
  });

  describe('replies', () => {
    async function readAll(stream: Readable): Promise<Buffer> {
      const chunks: Buffer[] = [];
      for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk);
      return Buffer.concat(chunks);
    }

    async function completeSession(storage: MemoryStorage): Promise<string> {
      const session = await storage.createSession(newSession(['r.bin']));
      await storage.writeFragment(session.id, 0, Readable.from([Buffer.from('upload')]));
      await storage.updateSession(session.id, { state: 'complete' });
      return session.id;
    }

    it('a stream opened before a replacement reads the old reply, and copies', async () => {
      const storage = new MemoryStorage();
      const id = await completeSession(storage);
      await storage.writeReply(id, Readable.from([Buffer.from('old reply')]));
      const before = await storage.readReply(id, 0, 8);
      await storage.writeReply(id, Readable.from([Buffer.from('new')]));
      const read = await readAll(before);
      expect(read.toString()).toBe('old reply');
      read.fill(0);
      expect((await readAll(await storage.readReply(id, 0, 2))).toString()).toBe('new');
    });

    it('keeps the earlier reply when the body fails or yields something other than bytes', async () => {
      const storage = new MemoryStorage();
      const id = await completeSession(storage);
      await storage.writeReply(id, Readable.from([Buffer.from('earlier')]));
      async function* failing(): AsyncGenerator<Buffer> {
        yield Buffer.alloc(100, 1);
        await delay(5);
        throw new Error('application stream failed');
      }
      await expect(storage.writeReply(id, Readable.from(failing()))).rejects.toThrow(/application stream failed/);
      await expect(storage.writeReply(id, Readable.from([{ not: 'bytes' }]))).rejects.toThrow(TypeError);
      expect((await readAll(await storage.readReply(id, 0, 6))).toString()).toBe('earlier');
    });

    it('commits a session marked complete without a commit, once; readData then rejects', async () => {
      const storage = new MemoryStorage({ files: { 'r.bin': 'original' } });
      const id = await completeSession(storage);
      await expect(storage.commit(id, { overwrite: false })).rejects.toMatchObject({ code: 'BITS_DESTINATION_EXISTS' });
      expect((await readAll(await storage.readData(id, 0))).toString()).toBe('upload');
      await storage.commit(id, { overwrite: true });
      expect(storage.readFile(['r.bin'])?.toString()).toBe('upload');
      await expect(storage.readData(id, 0)).rejects.toThrow(/is complete/);
      await expect(storage.commit(id, { overwrite: true })).resolves.toBeUndefined();
    });

    it('reads the empty range end = start - 1, as of a 0-byte reply', async () => {
      const storage = new MemoryStorage();
      const id = await completeSession(storage);
      await expect(storage.writeReply(id, Readable.from([]))).resolves.toBe(0);
      expect((await readAll(await storage.readReply(id, 0, -1))).length).toBe(0);
      await expect(storage.readReply(id, 0, 0)).rejects.toThrow(RangeError);
    });

    it('takes no reply for a session that ended, or ends while the reply is read', async () => {
      const storage = new MemoryStorage();
      const ended = await completeSession(storage);
      await storage.endSession(ended, 'closed', Date.now());
      await expect(storage.writeReply(ended, Readable.from([Buffer.from('late')]))).rejects.toThrow(/is closed/);

      const ending = await completeSession(storage);
      async function* slow(): AsyncGenerator<Buffer> {
        yield Buffer.from('part');
        await storage.endSession(ending, 'cancelled', Date.now());
        yield Buffer.from(' more');
      }
      await expect(storage.writeReply(ending, Readable.from(slow()))).rejects.toThrow(/ended/);
      await expect(storage.readReply(ending, 0, 0)).rejects.toThrow(/no stored reply/);
    });
  });

  describe('readData', () => {
    async function readAll(stream: Readable): Promise<Buffer> {
      const chunks: Buffer[] = [];
      for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk);
      return Buffer.concat(chunks);
    }

    it('streams copies, and only the bytes stored when it was called', async () => {
      const storage = new MemoryStorage();
      const session = await storage.createSession(newSession(['a.bin']));
      await storage.writeFragment(session.id, 0, Readable.from([Buffer.from('hello ')]));
      const stream = await storage.readData(session.id, 2);
      await storage.writeFragment(session.id, 6, Readable.from([Buffer.from('world')]));
      const read = await readAll(stream);
      expect(read.toString()).toBe('llo ');
      read.fill(0);
      expect((await readAll(await storage.readData(session.id, 0))).toString()).toBe('hello world');
    });

    it('rejects offsets outside 0..receivedLength and sessions that are no longer receiving', async () => {
      const storage = new MemoryStorage();
      const session = await storage.createSession(newSession(['b.bin']));
      await storage.writeFragment(session.id, 0, Readable.from([Buffer.from('abc')]));
      for (const start of [-1, 4, 0.5]) await expect(storage.readData(session.id, start)).rejects.toThrow(RangeError);
      await storage.commit(session.id, { overwrite: false });
      await expect(storage.readData(session.id, 0)).rejects.toThrow(/is complete/);
    });
  });

  it('refuses a non-object options argument with a TypeError', () => {
    expect(() => new MemoryStorage('files' as unknown as object)).toThrow(TypeError);
  });
});
