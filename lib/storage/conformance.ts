import { createHash, randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import type { Destination, NewSession, SessionRecord, StorageAdapter, StoredReply } from './adapter';

/** What a test of one adapter provides to {@link runStorageAdapterConformance}, fresh for every test. */
export interface StorageAdapterHarness {
  /** An adapter over an empty backing store. */
  readonly adapter: StorageAdapter;
  /** Reads back the committed file at a destination, or undefined when there is none. */
  readDestination(destination: Destination): Promise<Buffer | undefined>;
  /** Releases everything the harness created (folders, buckets, connections). */
  cleanup(): Promise<void>;
  /**
   * A second adapter instance over the same backing store, as another process or a restart would
   * see it. Adapters that keep everything in process memory leave it out; the restart test then
   * checks nothing.
   */
  reopen?(): Promise<StorageAdapter>;
}

type JestGlobals = typeof import('@jest/globals');

const MiB = 1024 * 1024;

/**
 * Registers the storage conformance tests (one `describe` block) for an adapter, with Jest.
 * Every guarantee of the {@link StorageAdapter} contract has a test; a third-party adapter passes
 * when all of them do.
 *
 * ```ts
 * import { runStorageAdapterConformance } from 'bits-upload';
 * runStorageAdapterConformance('S3Storage', async () => {
 *   const bucket = await createTestBucket();
 *   return { adapter: new S3Storage({ bucket }), readDestination: (d) => bucket.get(d.join('/')), cleanup: () => bucket.remove() };
 * });
 * ```
 */
export function runStorageAdapterConformance(name: string, factory: () => Promise<StorageAdapterHarness>): void {
  // Loaded when called, not imported: @jest/globals throws outside a Jest run, and this module is
  // part of the library, which must load anywhere.
  const { describe, it, expect, beforeEach, afterEach } = require('@jest/globals') as JestGlobals;

  describe(`${name} storage adapter conformance`, () => {
    let harness: StorageAdapterHarness | undefined;
    const store = (): StorageAdapterHarness => {
      if (harness === undefined) throw new Error('the conformance harness was not created');
      return harness;
    };
    const adapter = (): StorageAdapter => store().adapter;

    beforeEach(async () => {
      harness = await factory();
    });
    afterEach(async () => {
      await harness?.cleanup();
      harness = undefined;
    });

    const create = (destination: Destination = ['upload.bin'], extra: Partial<NewSession> = {}): Promise<SessionRecord> =>
      adapter().createSession(newSession(destination, extra));

    /** Writes `bytes` as one fragment at the session's received length and returns the new length. */
    const append = async (id: string, bytes: Buffer | string, target: StorageAdapter = adapter()): Promise<number> => {
      const record = await target.getSession(id);
      if (record === undefined) throw new Error(`no session ${id}`);
      return target.writeFragment(id, record.receivedLength, bodyOf(bytes));
    };

    /** Creates a session, stores `bytes` and commits them. */
    const upload = async (destination: Destination, bytes: Buffer | string, overwrite = false): Promise<SessionRecord> => {
      const record = await create(destination);
      await adapter().updateSession(record.id, { totalLength: Buffer.byteLength(bytes) });
      await append(record.id, bytes);
      await adapter().commit(record.id, { overwrite });
      return record;
    };

    /**
     * Creates a session, stores `bytes` and marks it complete without a commit, as an upload-reply
     * endpoint does (bits-protocol.md §10.1): the upload stays in the session.
     */
    const uploadKept = async (destination: Destination, bytes: Buffer | string): Promise<SessionRecord> => {
      const record = await create(destination);
      await adapter().updateSession(record.id, { totalLength: Buffer.byteLength(bytes) });
      await append(record.id, bytes);
      return adapter().updateSession(record.id, { state: 'complete' });
    };

    /** Stores `bytes` as the reply of a session and records it, as the middleware does. */
    const storeReply = async (id: string, bytes: Buffer | string, copyToDestination = false): Promise<StoredReply> => {
      const size = await adapter().writeReply(id, bodyOf(bytes));
      const reply: StoredReply = { kind: 'stored', size, storedAt: Date.now(), copyToDestination };
      await adapter().updateSession(id, { reply });
      return reply;
    };

    const readReply = async (id: string, start: number, end: number, target: StorageAdapter = adapter()): Promise<Buffer> =>
      collect(await target.readReply(id, start, end));

    describe('sessions', () => {
      it('createSession returns a receiving record with nothing received and no total yet', async () => {
        const session = newSession(['reports', 'q1.bin'], { principal: 'alice' });
        const record = await adapter().createSession(session);
        expect(record).toEqual({
          id: session.id,
          destination: ['reports', 'q1.bin'],
          urlPath: session.urlPath,
          principal: 'alice',
          protocol: session.protocol,
          totalLength: undefined,
          receivedLength: 0,
          state: 'receiving',
          createdAt: session.createdAt,
          updatedAt: session.createdAt,
          sha256: undefined,
          delivered: false,
          reply: undefined,
        });
        // toEqual takes a missing field for undefined, so false is checked on its own.
        expect(record.delivered).toBe(false);
        expect(record.reply).toBeUndefined();
      });

      it('getSession reads the record back, with an undefined principal kept undefined', async () => {
        const created = await create(['a.bin'], { principal: undefined });
        const read = await adapter().getSession(created.id);
        expect(read).toEqual(created);
        expect(read?.principal).toBeUndefined();
        expect(read?.totalLength).toBeUndefined();
      });

      it('getSession resolves undefined for an id it never saw', async () => {
        await expect(adapter().getSession(newId())).resolves.toBeUndefined();
      });

      it('every createSession makes an independent session, even for the same destination (§3.2)', async () => {
        const first = await create(['same.bin']);
        const second = await create(['same.bin']);
        await append(first.id, 'first');
        await append(second.id, 'second!');
        expect((await adapter().getSession(first.id))?.receivedLength).toBe(5);
        expect((await adapter().getSession(second.id))?.receivedLength).toBe(7);
      });

      it('updateSession changes only the given fields and persists them', async () => {
        const created = await create();
        const updated = await adapter().updateSession(created.id, { totalLength: 1234 });
        expect(updated).toEqual({ ...created, totalLength: 1234 });
        const later = await adapter().updateSession(created.id, { updatedAt: created.updatedAt + 5000 });
        expect(later).toEqual({ ...created, totalLength: 1234, updatedAt: created.updatedAt + 5000 });
        await expect(adapter().getSession(created.id)).resolves.toEqual(later);
      });

      it('updateSession records the SHA-256 and the delivered flag, and keeps them', async () => {
        const created = await create();
        const sha256 = createHash('sha256').update('the whole upload').digest('hex');
        const hashed = await adapter().updateSession(created.id, { sha256 });
        expect(hashed).toEqual({ ...created, sha256 });
        await expect(adapter().getSession(created.id)).resolves.toEqual(hashed);

        const delivered = await adapter().updateSession(created.id, { delivered: true, state: 'complete' });
        expect(delivered).toEqual({ ...created, sha256, delivered: true, state: 'complete' });
        await expect(adapter().getSession(created.id)).resolves.toEqual(delivered);

        // Changing other fields leaves both alone.
        const later = await adapter().updateSession(created.id, { updatedAt: created.updatedAt + 1 });
        expect(later).toMatchObject({ sha256, delivered: true });
        let listed: SessionRecord | undefined;
        for await (const record of adapter().listSessions()) if (record.id === created.id) listed = record;
        expect(listed).toEqual(later);
      });

      it('writing data keeps the SHA-256 and the delivered flag', async () => {
        const created = await create();
        const sha256 = createHash('sha256').update('abc').digest('hex');
        await adapter().updateSession(created.id, { totalLength: 3, sha256 });
        await append(created.id, 'abc');
        await expect(adapter().getSession(created.id)).resolves.toMatchObject({ receivedLength: 3, sha256, delivered: false });
      });

      it('updateSession can change the state', async () => {
        const created = await create();
        const updated = await adapter().updateSession(created.id, { state: 'complete' });
        expect(updated.state).toBe('complete');
        expect((await adapter().getSession(created.id))?.state).toBe('complete');
      });
    });

    describe('writeFragment', () => {
      it('appends at the offset and resolves with the new received length', async () => {
        const created = await create();
        await expect(adapter().writeFragment(created.id, 0, bodyOf('hello '))).resolves.toBe(6);
        await expect(adapter().writeFragment(created.id, 6, bodyOf('world'))).resolves.toBe(11);
        expect((await adapter().getSession(created.id))?.receivedLength).toBe(11);
      });

      it('records the received length with updatedAt', async () => {
        const created = await create(['a.bin'], { createdAt: Date.now() - 60_000 });
        const before = Date.now();
        await adapter().writeFragment(created.id, 0, bodyOf('abc'));
        const record = await adapter().getSession(created.id);
        expect(record?.receivedLength).toBe(3);
        expect(record?.updatedAt).toBeGreaterThanOrEqual(before);
      });

      it('stores several fragments, each a multi-chunk stream, in order', async () => {
        const created = await create(['many.bin']);
        const all = patternBytes(0, 300_000);
        const cuts = [0, 1, 65_536, 65_537, 200_000, 300_000];
        for (let i = 0; i + 1 < cuts.length; i++) {
          const part = all.subarray(cuts[i], cuts[i + 1]);
          const length = await adapter().writeFragment(created.id, cuts[i], chunked(part, 7_919));
          expect(length).toBe(cuts[i + 1]);
        }
        await adapter().updateSession(created.id, { totalLength: all.length });
        await adapter().commit(created.id, { overwrite: false });
        expect((await store().readDestination(['many.bin']))?.equals(all)).toBe(true);
      });

      it('a zero-length body changes nothing and resolves with the offset', async () => {
        const created = await create();
        await expect(adapter().writeFragment(created.id, 0, bodyOf(''))).resolves.toBe(0);
        await expect(adapter().writeFragment(created.id, 0, bodyOf('12345'))).resolves.toBe(5);
        await expect(adapter().writeFragment(created.id, 5, Readable.from([]))).resolves.toBe(5);
        expect((await adapter().getSession(created.id))?.receivedLength).toBe(5);
      });

      it('a body that errors halfway (client abort) resolves with the stored prefix, and the upload can go on from there (§6.3)', async () => {
        const created = await create(['aborted.bin']);
        const all = patternBytes(0, 4000);
        await append(created.id, all.subarray(0, 1000));
        const length = await adapter().writeFragment(created.id, 1000, abortingBody(all.subarray(1000, 2500)));
        // Adapters that only make whole parts durable may keep less than was read, never more.
        expect(length).toBeGreaterThanOrEqual(1000);
        expect(length).toBeLessThanOrEqual(2500);
        expect((await adapter().getSession(created.id))?.receivedLength).toBe(length);

        await expect(adapter().writeFragment(created.id, length, bodyOf(all.subarray(length)))).resolves.toBe(4000);
        await adapter().updateSession(created.id, { totalLength: 4000 });
        await adapter().commit(created.id, { overwrite: false });
        expect((await store().readDestination(['aborted.bin']))?.equals(all)).toBe(true);
      });

      it('a body that is already destroyed resolves with the unchanged offset', async () => {
        const created = await create();
        await append(created.id, 'abc');
        const body = new Readable({ read() {} });
        body.on('error', () => undefined); // the middleware listens to its request
        body.destroy(new Error('socket hang up'));
        await expect(adapter().writeFragment(created.id, 3, body)).resolves.toBe(3);
        expect((await adapter().getSession(created.id))?.receivedLength).toBe(3);
      });

      it('streams a 20 MiB fragment from a lazy generator and stores every byte', async () => {
        const created = await create(['big.bin']);
        const size = 20 * MiB;
        const hash = createHash('sha256');
        async function* produce(): AsyncGenerator<Buffer> {
          for (let offset = 0; offset < size; offset += 64 * 1024) {
            const chunk = patternBytes(offset, Math.min(64 * 1024, size - offset));
            hash.update(chunk);
            yield chunk;
          }
        }
        const body = Readable.from(produce(), { objectMode: false, highWaterMark: 64 * 1024 });
        await expect(adapter().writeFragment(created.id, 0, body)).resolves.toBe(size);
        await adapter().updateSession(created.id, { totalLength: size });
        await adapter().commit(created.id, { overwrite: false });
        const stored = await store().readDestination(['big.bin']);
        expect(stored?.length).toBe(size);
        expect(createHash('sha256').update(stored ?? Buffer.alloc(0)).digest('hex')).toBe(hash.digest('hex'));
      });
    });

    describe('readData', () => {
      it('streams the stored bytes from 0 and from the middle, up to the received length', async () => {
        const all = patternBytes(5, 150_000);
        const created = await create(['read.bin']);
        await adapter().updateSession(created.id, { totalLength: 200_000 });
        await append(created.id, all.subarray(0, 1));
        await append(created.id, all.subarray(1, 70_001));
        await append(created.id, all.subarray(70_001));

        expect((await collect(await adapter().readData(created.id, 0))).equals(all)).toBe(true);
        for (const start of [1, 70_000, 70_001, 123_457, 149_999]) {
          const read = await collect(await adapter().readData(created.id, start));
          expect(read.length).toBe(all.length - start);
          expect(read.equals(all.subarray(start))).toBe(true);
        }
        expect((await collect(await adapter().readData(created.id, all.length))).length).toBe(0);
        // Reading changes nothing, and the upload goes on.
        expect((await adapter().getSession(created.id))?.receivedLength).toBe(all.length);
        await expect(append(created.id, 'more')).resolves.toBe(all.length + 4);
      });

      it('reads an empty stream from a session that received nothing', async () => {
        const created = await create();
        expect((await collect(await adapter().readData(created.id, 0))).length).toBe(0);
      });

      it('reads what an aborted fragment kept, and nothing more', async () => {
        const created = await create(['aborted-read.bin']);
        const all = patternBytes(9, 3000);
        await append(created.id, all.subarray(0, 1000));
        const length = await adapter().writeFragment(created.id, 1000, abortingBody(all.subarray(1000)));
        const read = await collect(await adapter().readData(created.id, 0));
        expect(read.length).toBe(length);
        expect(read.equals(all.subarray(0, length))).toBe(true);
      });

      it('rejects an unknown id with SessionNotFoundError', async () => {
        const id = newId();
        await expect(adapter().readData(id, 0)).rejects.toMatchObject({
          name: 'SessionNotFoundError',
          code: 'BITS_SESSION_NOT_FOUND',
          sessionId: id,
        });
      });
    });

    describe('commit', () => {
      it('places the exact bytes at the destination and marks the session complete', async () => {
        const all = patternBytes(17, 70_000);
        const created = await create(['exact.bin']);
        await adapter().updateSession(created.id, { totalLength: all.length });
        await append(created.id, all.subarray(0, 12_345));
        await append(created.id, all.subarray(12_345));
        await adapter().commit(created.id, { overwrite: false });
        expect((await store().readDestination(['exact.bin']))?.equals(all)).toBe(true);
        const record = await adapter().getSession(created.id);
        expect(record?.state).toBe('complete');
        expect(record?.receivedLength).toBe(all.length);
        await expect(adapter().inspectDestination(['exact.bin'])).resolves.toBe('file');
      });

      it('commits a zero-byte upload as an empty file (§6.5)', async () => {
        const created = await create(['empty.bin']);
        await adapter().updateSession(created.id, { totalLength: 0 });
        await adapter().commit(created.id, { overwrite: false });
        const stored = await store().readDestination(['empty.bin']);
        expect(stored).toBeDefined();
        expect(stored?.length).toBe(0);
      });

      it('is idempotent: a second commit resolves and changes nothing', async () => {
        const created = await upload(['twice.bin'], 'payload');
        await expect(adapter().commit(created.id, { overwrite: false })).resolves.toBeUndefined();
        await expect(adapter().commit(created.id, { overwrite: true })).resolves.toBeUndefined();
        expect((await store().readDestination(['twice.bin']))?.toString()).toBe('payload');
        expect((await adapter().getSession(created.id))?.state).toBe('complete');
      });

      it('refuses an existing file unless overwrite is on, and keeps the session for a retry (§15 A7)', async () => {
        await upload(['taken.bin'], 'old content');
        const created = await create(['taken.bin']);
        await adapter().updateSession(created.id, { totalLength: 11 });
        await append(created.id, 'new content');

        await expect(adapter().commit(created.id, { overwrite: false })).rejects.toMatchObject({
          name: 'DestinationExistsError',
          code: 'BITS_DESTINATION_EXISTS',
        });
        expect((await store().readDestination(['taken.bin']))?.toString()).toBe('old content');
        expect((await adapter().getSession(created.id))?.state).toBe('receiving');

        await adapter().commit(created.id, { overwrite: true });
        expect((await store().readDestination(['taken.bin']))?.toString()).toBe('new content');
        expect((await adapter().getSession(created.id))?.state).toBe('complete');
      });

      it('rejects a destination that is a directory, with or without overwrite', async () => {
        await upload(['folder', 'inside.bin'], 'inside');
        const created = await create(['folder']);
        await adapter().updateSession(created.id, { totalLength: 4 });
        await append(created.id, 'data');
        for (const overwrite of [false, true]) {
          await expect(adapter().commit(created.id, { overwrite })).rejects.toMatchObject({
            name: 'DestinationIsDirectoryError',
            code: 'BITS_DESTINATION_IS_DIRECTORY',
          });
        }
        expect((await store().readDestination(['folder', 'inside.bin']))?.toString()).toBe('inside');
        expect((await adapter().getSession(created.id))?.state).toBe('receiving');
      });

      it('creates missing parent folders', async () => {
        await upload(['a', 'b', 'c', 'deep.bin'], 'deep');
        expect((await store().readDestination(['a', 'b', 'c', 'deep.bin']))?.toString()).toBe('deep');
        await expect(adapter().inspectDestination(['a', 'b'])).resolves.toBe('directory');
      });

      it('keeps other files in the destination folder', async () => {
        await upload(['shared', 'one.bin'], 'one');
        await upload(['shared', 'two.bin'], 'two');
        expect((await store().readDestination(['shared', 'one.bin']))?.toString()).toBe('one');
        expect((await store().readDestination(['shared', 'two.bin']))?.toString()).toBe('two');
      });
    });

    describe('inspectDestination', () => {
      it('reports missing, file and directory', async () => {
        await upload(['dir', 'file.bin'], 'x');
        await expect(adapter().inspectDestination(['nothing-here.bin'])).resolves.toBe('missing');
        await expect(adapter().inspectDestination(['dir', 'nothing', 'deeper.bin'])).resolves.toBe('missing');
        await expect(adapter().inspectDestination(['dir'])).resolves.toBe('directory');
        await expect(adapter().inspectDestination(['dir', 'file.bin'])).resolves.toBe('file');
      });

      it('does not count unfinished uploads as files', async () => {
        const created = await create(['pending.bin']);
        await append(created.id, 'partial');
        await expect(adapter().inspectDestination(['pending.bin'])).resolves.toBe('missing');
        expect(await store().readDestination(['pending.bin'])).toBeUndefined();
      });
    });

    describe('endSession and deleteSession', () => {
      it('closing a committed session keeps a tombstone and the destination (§5.4)', async () => {
        const created = await upload(['kept.bin'], 'kept');
        const now = Date.now() + 1000;
        await adapter().endSession(created.id, 'closed', now);
        const record = await adapter().getSession(created.id);
        expect(record).toMatchObject({ id: created.id, state: 'closed', updatedAt: now });
        expect((await store().readDestination(['kept.bin']))?.toString()).toBe('kept');
      });

      it('cancelling an unfinished session keeps a tombstone and writes nothing to the destination (§3.5)', async () => {
        const created = await create(['never.bin']);
        await append(created.id, 'partial data');
        const now = Date.now();
        await adapter().endSession(created.id, 'cancelled', now);
        expect(await adapter().getSession(created.id)).toMatchObject({ state: 'cancelled', updatedAt: now });
        await expect(adapter().inspectDestination(['never.bin'])).resolves.toBe('missing');
        expect(await store().readDestination(['never.bin'])).toBeUndefined();
      });

      it('closing an unfinished session discards it without touching an existing destination (§3.4)', async () => {
        await upload(['existing.bin'], 'original');
        const created = await create(['existing.bin']);
        await append(created.id, 'replacement that never completes');
        await adapter().endSession(created.id, 'closed', Date.now());
        expect((await adapter().getSession(created.id))?.state).toBe('closed');
        expect((await store().readDestination(['existing.bin']))?.toString()).toBe('original');
      });

      it('deleteSession removes the record, keeps the destination and resolves when already gone', async () => {
        const created = await upload(['stays.bin'], 'stays');
        await adapter().deleteSession(created.id);
        await expect(adapter().getSession(created.id)).resolves.toBeUndefined();
        await expect(adapter().deleteSession(created.id)).resolves.toBeUndefined();
        await expect(adapter().deleteSession(newId())).resolves.toBeUndefined();
        expect((await store().readDestination(['stays.bin']))?.toString()).toBe('stays');
      });

      it('deleteSession of an unfinished session removes it completely', async () => {
        const created = await create(['gone.bin']);
        await append(created.id, 'bytes');
        await adapter().deleteSession(created.id);
        await expect(adapter().getSession(created.id)).resolves.toBeUndefined();
        await expect(adapter().inspectDestination(['gone.bin'])).resolves.toBe('missing');
      });
    });

    describe('upload-reply sessions (§10): the upload kept in the session', () => {
      it('readData streams the upload of a session marked complete without a commit', async () => {
        const all = patternBytes(21, 90_000);
        const kept = await uploadKept(['kept', 'upload.bin'], all);
        expect(kept).toMatchObject({ state: 'complete', receivedLength: all.length });
        expect((await collect(await adapter().readData(kept.id, 0))).equals(all)).toBe(true);
        expect((await collect(await adapter().readData(kept.id, 54_321))).equals(all.subarray(54_321))).toBe(true);
        expect((await collect(await adapter().readData(kept.id, all.length))).length).toBe(0);
        await expect(adapter().readData(kept.id, all.length + 1)).rejects.toThrow(RangeError);
        // Nothing reaches the destination unless the application asks for it (§10.1).
        await expect(adapter().inspectDestination(['kept', 'upload.bin'])).resolves.toBe('missing');
        expect(await store().readDestination(['kept', 'upload.bin'])).toBeUndefined();
      });

      it('readData of a zero-byte upload kept in the session reads nothing', async () => {
        const kept = await uploadKept(['kept-empty.bin'], '');
        expect((await collect(await adapter().readData(kept.id, 0))).length).toBe(0);
      });

      it('readData rejects for a committed session, and for a session that ended', async () => {
        const committed = await upload(['committed.bin'], 'committed');
        await expect(adapter().readData(committed.id, 0)).rejects.toThrow();
        const emptyCommitted = await upload(['committed-empty.bin'], '');
        await expect(adapter().readData(emptyCommitted.id, 0)).rejects.toThrow();
        const closed = await uploadKept(['closed.bin'], 'closed');
        await adapter().endSession(closed.id, 'closed', Date.now());
        await expect(adapter().readData(closed.id, 0)).rejects.toThrow();
      });

      it('localDataFile, when offered, names a local file holding exactly the upload while it is the session\'s', async () => {
        const { localDataFile } = adapter();
        if (localDataFile === undefined) return;
        const all = patternBytes(29, 30_000);
        const receiving = await create(['local-receiving.bin']);
        await append(receiving.id, all.subarray(0, 10_000));
        const receivingPath = await localDataFile.call(adapter(), receiving.id);
        expect(path.isAbsolute(receivingPath)).toBe(true);
        expect((await readFile(receivingPath)).equals(all.subarray(0, 10_000))).toBe(true);

        const kept = await uploadKept(['local-kept.bin'], all);
        expect((await readFile(await localDataFile.call(adapter(), kept.id))).equals(all)).toBe(true);

        const committed = await upload(['local-committed.bin'], all);
        await expect(localDataFile.call(adapter(), committed.id)).rejects.toThrow();
        await adapter().endSession(kept.id, 'closed', Date.now());
        await expect(localDataFile.call(adapter(), kept.id)).rejects.toThrow();
        await adapter().endSession(receiving.id, 'cancelled', Date.now());
        await expect(localDataFile.call(adapter(), receiving.id)).rejects.toThrow();
      });
    });

    describe('writeReply and readReply', () => {
      it('store a reply and stream any inclusive range of it', async () => {
        const kept = await uploadKept(['reply-small.bin'], 'upload');
        const text = 'HELLO, REPLY';
        await expect(adapter().writeReply(kept.id, bodyOf(text))).resolves.toBe(text.length);
        expect((await readReply(kept.id, 0, text.length - 1)).toString()).toBe(text);
        for (const [start, end] of [
          [0, 0],
          [0, 4],
          [3, 8],
          [5, 5],
          [7, text.length - 1],
          [text.length - 1, text.length - 1],
        ]) {
          expect((await readReply(kept.id, start, end)).toString()).toBe(text.slice(start, end + 1));
        }
      });

      it('store a 0-byte reply, which has no byte to read', async () => {
        const kept = await uploadKept(['reply-empty.bin'], 'upload');
        await expect(adapter().writeReply(kept.id, Readable.from([]))).resolves.toBe(0);
        await expect(adapter().readReply(kept.id, 0, 0)).rejects.toThrow(RangeError);
        // A later reply replaces it.
        await expect(adapter().writeReply(kept.id, bodyOf('now'))).resolves.toBe(3);
        expect((await readReply(kept.id, 0, 2)).toString()).toBe('now');
      });

      it('stream a 20 MiB reply from a lazy generator in and any range of it out', async () => {
        const kept = await uploadKept(['reply-big.bin'], 'upload');
        const size = 20 * MiB;
        const hash = createHash('sha256');
        async function* produce(): AsyncGenerator<Buffer> {
          for (let offset = 0; offset < size; offset += 64 * 1024) {
            const chunk = patternBytes(offset, Math.min(64 * 1024, size - offset));
            hash.update(chunk);
            yield chunk;
          }
        }
        const body = Readable.from(produce(), { objectMode: false, highWaterMark: 64 * 1024 });
        await expect(adapter().writeReply(kept.id, body)).resolves.toBe(size);

        // The whole reply, hashed as it streams rather than collected.
        const whole = createHash('sha256');
        let length = 0;
        for await (const chunk of (await adapter().readReply(kept.id, 0, size - 1)) as AsyncIterable<unknown>) {
          if (!ArrayBuffer.isView(chunk)) throw new TypeError(`readReply must stream bytes, got ${typeof chunk}`);
          whole.update(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
          length += chunk.byteLength;
        }
        expect(length).toBe(size);
        expect(whole.digest('hex')).toBe(hash.digest('hex'));

        for (const [start, end] of [
          [0, 65_535],
          [0, 0],
          [10 * MiB - 7, 10 * MiB + 100_000],
          [size - 1000, size - 1],
          [size - 1, size - 1],
        ]) {
          const read = await readReply(kept.id, start, end);
          expect(read.length).toBe(end - start + 1);
          expect(read.equals(patternBytes(start, end - start + 1))).toBe(true);
        }
      });

      it('replace an earlier reply as a whole', async () => {
        const kept = await uploadKept(['reply-replaced.bin'], 'upload');
        await adapter().writeReply(kept.id, bodyOf('the first, longer reply'));
        await expect(adapter().writeReply(kept.id, bodyOf('second'))).resolves.toBe(6);
        expect((await readReply(kept.id, 0, 5)).toString()).toBe('second');
        await expect(adapter().readReply(kept.id, 0, 6)).rejects.toThrow(RangeError);
      });

      it('reject a body that fails, rather than storing part of it as the reply', async () => {
        const kept = await uploadKept(['reply-aborted.bin'], 'upload');
        await expect(adapter().writeReply(kept.id, abortingBody(patternBytes(1, 5000)))).rejects.toThrow();
      });

      it('readReply rejects a range outside the reply with a RangeError', async () => {
        const kept = await uploadKept(['reply-ranges.bin'], 'upload');
        await adapter().writeReply(kept.id, bodyOf('HELLO'));
        for (const [start, end] of [
          [-1, 0],
          [0, 5],
          [4, 5],
          [3, 1],
          [6, 5],
          [1.5, 2],
          [0, 2.5],
          [Number.NaN, 1],
          [0, Number.POSITIVE_INFINITY],
        ]) {
          await expect(adapter().readReply(kept.id, start, end)).rejects.toThrow(RangeError);
        }
        expect((await readReply(kept.id, 0, 4)).toString()).toBe('HELLO');
      });

      it('readReply rejects when no reply was stored', async () => {
        const kept = await uploadKept(['reply-none.bin'], 'upload');
        await expect(adapter().readReply(kept.id, 0, 0)).rejects.toThrow();
        const receiving = await create(['reply-none-receiving.bin']);
        await expect(adapter().readReply(receiving.id, 0, 0)).rejects.toThrow();
      });

      it.each(['closed', 'cancelled'] as const)('endSession(%s) removes the reply, keeps the record and a committed destination', async (state) => {
        // Copied to the destination (§10.4): the reply is stored, then the upload committed.
        const kept = await create([`reply-${state}.bin`]);
        await adapter().updateSession(kept.id, { totalLength: 6 });
        await append(kept.id, 'upload');
        const reply = await storeReply(kept.id, 'reply bytes', true);
        await adapter().commit(kept.id, { overwrite: false });
        const alsoKept = await uploadKept([`reply-${state}-kept.bin`], 'kept upload');
        await storeReply(alsoKept.id, 'another reply');

        for (const id of [kept.id, alsoKept.id]) {
          await adapter().endSession(id, state, Date.now());
          await expect(adapter().readReply(id, 0, 0)).rejects.toThrow();
          await expect(adapter().getSession(id)).resolves.toMatchObject({ state });
        }
        expect((await adapter().getSession(kept.id))?.reply).toEqual(reply);
        expect((await store().readDestination([`reply-${state}.bin`]))?.toString()).toBe('upload');
        expect(await store().readDestination([`reply-${state}-kept.bin`])).toBeUndefined();
      });

      it('deleteSession removes the reply with the session', async () => {
        const kept = await uploadKept(['reply-deleted.bin'], 'upload');
        await storeReply(kept.id, 'reply');
        await adapter().deleteSession(kept.id);
        await expect(adapter().readReply(kept.id, 0, 0)).rejects.toMatchObject({ code: 'BITS_SESSION_NOT_FOUND' });
        await expect(adapter().getSession(kept.id)).resolves.toBeUndefined();
      });
    });

    describe('the reply field', () => {
      it.each<[string, StoredReply]>([
        ['a stored reply', { kind: 'stored', size: 5, storedAt: 1_700_000_000_123, copyToDestination: false }],
        ['a stored reply with copy to destination', { kind: 'stored', size: 0, storedAt: 1_700_000_000_456, copyToDestination: true }],
        ['a static URL', { kind: 'url', url: 'https://static.example.com/replies/1.bin', copyToDestination: false }],
        ['a static URL with copy to destination', { kind: 'url', url: 'https://static.example.com/r?id=2', copyToDestination: true }],
      ])('round-trips %s through updateSession, getSession and listSessions', async (_label, reply) => {
        const kept = await uploadKept(['reply-field.bin'], 'upload');
        const updated = await adapter().updateSession(kept.id, { reply, delivered: true });
        expect(updated).toEqual({ ...kept, reply, delivered: true });
        expect(updated.reply).toEqual(reply);
        await expect(adapter().getSession(kept.id)).resolves.toEqual(updated);
        let listed: SessionRecord | undefined;
        for await (const record of adapter().listSessions()) if (record.id === kept.id) listed = record;
        expect(listed).toEqual(updated);
        // Other changes keep it.
        const later = await adapter().updateSession(kept.id, { updatedAt: kept.updatedAt + 10 });
        expect(later.reply).toEqual(reply);
      });

      it('is undefined until set, and a later reply replaces it', async () => {
        const kept = await uploadKept(['reply-field-later.bin'], 'upload');
        expect((await adapter().getSession(kept.id))?.reply).toBeUndefined();
        const first: StoredReply = { kind: 'url', url: 'https://static.example.com/first', copyToDestination: true };
        const second: StoredReply = { kind: 'stored', size: 3, storedAt: Date.now(), copyToDestination: false };
        await adapter().updateSession(kept.id, { reply: first });
        await adapter().updateSession(kept.id, { reply: second });
        expect((await adapter().getSession(kept.id))?.reply).toEqual(second);
      });
    });

    describe('listSessions', () => {
      it('yields every record, tombstones included, and not deleted ones', async () => {
        const receiving = await create(['one.bin']);
        await append(receiving.id, 'abc');
        const complete = await upload(['two.bin'], 'two');
        const closed = await upload(['three.bin'], 'three');
        await adapter().endSession(closed.id, 'closed', Date.now());
        const cancelled = await create(['four.bin']);
        await adapter().endSession(cancelled.id, 'cancelled', Date.now());
        const deleted = await create(['five.bin']);
        await adapter().deleteSession(deleted.id);

        const listed = new Map<string, SessionRecord>();
        for await (const record of adapter().listSessions()) listed.set(record.id, record);
        expect(listed.get(receiving.id)).toMatchObject({ state: 'receiving', receivedLength: 3 });
        expect(listed.get(complete.id)?.state).toBe('complete');
        expect(listed.get(closed.id)?.state).toBe('closed');
        expect(listed.get(cancelled.id)?.state).toBe('cancelled');
        expect(listed.has(deleted.id)).toBe(false);
      });

      it('allows deleting sessions while iterating (expiry)', async () => {
        const ids = [(await create(['x1.bin'])).id, (await create(['x2.bin'])).id, (await create(['x3.bin'])).id];
        for await (const record of adapter().listSessions()) await adapter().deleteSession(record.id);
        for (const id of ids) await expect(adapter().getSession(id)).resolves.toBeUndefined();
      });
    });

    describe('unknown sessions', () => {
      it('reject with SessionNotFoundError in every method that names a session', async () => {
        const id = newId();
        const notFound = { name: 'SessionNotFoundError', code: 'BITS_SESSION_NOT_FOUND', sessionId: id };
        await expect(adapter().updateSession(id, { totalLength: 1 })).rejects.toMatchObject(notFound);
        await expect(adapter().writeFragment(id, 0, bodyOf('x'))).rejects.toMatchObject(notFound);
        await expect(adapter().commit(id, { overwrite: false })).rejects.toMatchObject(notFound);
        await expect(adapter().endSession(id, 'closed', Date.now())).rejects.toMatchObject(notFound);
        await expect(adapter().readData(id, 0)).rejects.toMatchObject(notFound);
        await expect(adapter().writeReply(id, bodyOf('reply'))).rejects.toMatchObject(notFound);
        await expect(adapter().readReply(id, 0, 0)).rejects.toMatchObject(notFound);
        const { localDataFile } = adapter();
        if (localDataFile !== undefined) await expect(localDataFile.call(adapter(), id)).rejects.toMatchObject(notFound);
      });

      it('a deleted session is unknown', async () => {
        const created = await create();
        await adapter().deleteSession(created.id);
        await expect(adapter().writeFragment(created.id, 0, bodyOf('x'))).rejects.toMatchObject({
          code: 'BITS_SESSION_NOT_FOUND',
        });
      });
    });

    describe('another instance over the same store', () => {
      it('sees the sessions, continues them and commits (when the harness can reopen)', async () => {
        const { reopen } = store();
        if (reopen === undefined) return;
        const all = patternBytes(3, 50_000);
        const created = await create(['resumed.bin']);
        await adapter().updateSession(created.id, { totalLength: all.length });
        await append(created.id, all.subarray(0, 20_000));
        const tombstone = await create(['ended.bin']);
        await adapter().endSession(tombstone.id, 'cancelled', Date.now());

        const second = await reopen.call(store());
        expect(await second.getSession(created.id)).toEqual(await adapter().getSession(created.id));
        const ids: string[] = [];
        for await (const record of second.listSessions()) ids.push(record.id);
        expect(ids).toEqual(expect.arrayContaining([created.id, tombstone.id]));
        expect((await second.getSession(tombstone.id))?.state).toBe('cancelled');

        // What the earlier instance stored is readable (the SHA-256 of a resumed upload, §6.3).
        expect((await collect(await second.readData(created.id, 0))).equals(all.subarray(0, 20_000))).toBe(true);
        expect((await collect(await second.readData(created.id, 12_345))).equals(all.subarray(12_345, 20_000))).toBe(true);

        await expect(append(created.id, all.subarray(20_000), second)).resolves.toBe(all.length);
        await second.commit(created.id, { overwrite: false });
        expect((await store().readDestination(['resumed.bin']))?.equals(all)).toBe(true);
        expect((await adapter().getSession(created.id))?.state).toBe('complete');
      });

      it('keeps the SHA-256 and the delivered flag (when the harness can reopen)', async () => {
        const { reopen } = store();
        if (reopen === undefined) return;
        const sha256 = createHash('sha256').update('x').digest('hex');
        const hashed = await create(['hashed.bin']);
        await adapter().updateSession(hashed.id, { sha256 });
        const delivered = await upload(['delivered.bin'], 'x');
        await adapter().updateSession(delivered.id, { sha256, delivered: true });
        const plain = await create(['plain.bin']);

        const second = await reopen.call(store());
        await expect(second.getSession(hashed.id)).resolves.toMatchObject({ sha256, delivered: false });
        await expect(second.getSession(delivered.id)).resolves.toMatchObject({ sha256, delivered: true, state: 'complete' });
        const reread = await second.getSession(plain.id);
        expect(reread?.sha256).toBeUndefined();
        expect(reread?.delivered).toBe(false);
      });

      it('keeps a reply, its record and an upload kept in the session (when the harness can reopen)', async () => {
        const { reopen } = store();
        if (reopen === undefined) return;
        const all = patternBytes(31, 25_000);
        const kept = await uploadKept(['reopened-kept.bin'], all);
        const reply = await storeReply(kept.id, 'the reply', true);
        const linked = await uploadKept(['reopened-url.bin'], 'x');
        const url: StoredReply = { kind: 'url', url: 'https://static.example.com/reply', copyToDestination: false };
        await adapter().updateSession(linked.id, { reply: url });

        const second = await reopen.call(store());
        await expect(second.getSession(kept.id)).resolves.toMatchObject({ state: 'complete', reply });
        await expect(second.getSession(linked.id)).resolves.toMatchObject({ reply: url });
        expect((await readReply(kept.id, 0, reply.kind === 'stored' ? reply.size - 1 : 0, second)).toString()).toBe('the reply');
        expect((await readReply(kept.id, 4, 6, second)).toString()).toBe('rep');
        expect((await collect(await second.readData(kept.id, 0))).equals(all)).toBe(true);
        await second.endSession(kept.id, 'closed', Date.now());
        await expect(adapter().readReply(kept.id, 0, 0)).rejects.toThrow();
        await expect(adapter().readData(kept.id, 0)).rejects.toThrow();
        expect(await store().readDestination(['reopened-kept.bin'])).toBeUndefined();
      });

      it('recover() on a fresh instance finds nothing to repair in a healthy store and changes nothing (when the harness can reopen)', async () => {
        const { reopen } = store();
        if (reopen === undefined) return;
        const all = patternBytes(11, 30_000);
        const receiving = await create(['recover-receiving.bin']);
        await adapter().updateSession(receiving.id, { totalLength: all.length });
        await append(receiving.id, all.subarray(0, 10_000));
        const empty = await create(['recover-empty.bin']);
        const complete = await upload(['recover-complete.bin'], 'complete');
        await adapter().updateSession(complete.id, { sha256: createHash('sha256').update('complete').digest('hex'), delivered: true });
        const closed = await upload(['recover-closed.bin'], 'closed');
        await adapter().endSession(closed.id, 'closed', Date.now());
        const cancelled = await create(['recover-cancelled.bin']);
        await append(cancelled.id, 'partial');
        await adapter().endSession(cancelled.id, 'cancelled', Date.now());
        // Upload-reply sessions (§10): the upload kept in the session, with a stored reply or a URL.
        const kept = await uploadKept(['recover-kept.bin'], 'kept upload');
        await storeReply(kept.id, 'kept reply');
        const copied = await create(['recover-copied.bin']);
        await adapter().updateSession(copied.id, { totalLength: 13 });
        await append(copied.id, 'copied upload');
        await storeReply(copied.id, 'copied reply', true);
        await adapter().commit(copied.id, { overwrite: false });
        const linked = await uploadKept(['recover-linked.bin'], 'linked upload');
        await adapter().updateSession(linked.id, { reply: { kind: 'url', url: 'https://static.example.com/r', copyToDestination: false } });
        const ended = await uploadKept(['recover-ended.bin'], 'ended upload');
        await storeReply(ended.id, 'ended reply');
        await adapter().endSession(ended.id, 'closed', Date.now());
        const ids = [receiving.id, empty.id, complete.id, closed.id, cancelled.id, kept.id, copied.id, linked.id, ended.id];
        const before = await Promise.all(ids.map((id) => adapter().getSession(id)));

        const second = await reopen.call(store());
        if (second.recover === undefined) return;
        await expect(second.recover()).resolves.toEqual({ orphansRemoved: 0, recordsRepaired: 0, commitsFinished: 0 });
        expect(await Promise.all(ids.map((id) => second.getSession(id)))).toEqual(before);
        // Running it again is harmless.
        await expect(second.recover()).resolves.toEqual({ orphansRemoved: 0, recordsRepaired: 0, commitsFinished: 0 });

        expect((await collect(await second.readData(receiving.id, 0))).equals(all.subarray(0, 10_000))).toBe(true);
        await expect(append(receiving.id, all.subarray(10_000), second)).resolves.toBe(all.length);
        await second.commit(receiving.id, { overwrite: false });
        expect((await store().readDestination(['recover-receiving.bin']))?.equals(all)).toBe(true);
        expect((await store().readDestination(['recover-complete.bin']))?.toString()).toBe('complete');
        expect((await store().readDestination(['recover-closed.bin']))?.toString()).toBe('closed');
        expect(await store().readDestination(['recover-cancelled.bin'])).toBeUndefined();
        expect((await collect(await second.readData(kept.id, 0))).toString()).toBe('kept upload');
        expect((await readReply(kept.id, 0, 9, second)).toString()).toBe('kept reply');
        expect((await readReply(copied.id, 0, 11, second)).toString()).toBe('copied reply');
        expect((await store().readDestination(['recover-copied.bin']))?.toString()).toBe('copied upload');
        expect((await collect(await second.readData(linked.id, 0))).toString()).toBe('linked upload');
        expect(await store().readDestination(['recover-ended.bin'])).toBeUndefined();
      });
    });
  });
}

/** A braced upper-case GUID, like the ids the middleware issues (bits-protocol.md §5.1). */
function newId(): string {
  return `{${randomUUID().toUpperCase()}}`;
}

function newSession(destination: Destination, extra: Partial<NewSession>): NewSession {
  return {
    id: newId(),
    destination,
    urlPath: `/uploads/${destination.join('/')}`,
    principal: undefined,
    protocol: '{7df0354d-249b-430f-820d-3d2a9bef4931}',
    createdAt: Date.now(),
    ...extra,
  };
}

function bodyOf(bytes: Buffer | string): Readable {
  return chunked(Buffer.from(bytes), 16 * 1024);
}

/** A byte stream delivering `bytes` in chunks of `size`, like a socket would. */
function chunked(bytes: Buffer, size: number): Readable {
  const chunks: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += size) chunks.push(Buffer.from(bytes.subarray(i, i + size)));
  return Readable.from(chunks, { objectMode: false });
}

/** Delivers `bytes`, then fails the way a request does when its client disconnects. */
function abortingBody(bytes: Buffer): Readable {
  async function* produce(): AsyncGenerator<Buffer> {
    yield Buffer.from(bytes);
    // Time for the adapter to take the bytes before the stream fails.
    await delay(50);
    throw Object.assign(new Error('aborted'), { code: 'ECONNRESET' });
  }
  return Readable.from(produce(), { objectMode: false });
}

/** Reads a stream to its end. */
async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream as AsyncIterable<unknown>) {
    if (!ArrayBuffer.isView(chunk)) throw new TypeError(`readData must stream bytes, got ${typeof chunk}`);
    chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
  }
  return Buffer.concat(chunks);
}

/** Deterministic bytes that differ at every position of a period (251, a prime) and repeat. */
function patternBytes(start: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) out[i] = ((start + i) * 7 + 13) % 251;
  return out;
}
