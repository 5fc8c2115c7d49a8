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
