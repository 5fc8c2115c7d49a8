import * as fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { setImmediate as tick } from 'node:timers/promises';
import { DirectorySync } from '../../lib/storage/directory-sync';

type SyncFn = (this: FileHandle) => Promise<void>;

describe('DirectorySync', () => {
  let base: string;
  let proto: { sync: SyncFn };
  let realSync: SyncFn;
  /** Every fsync in the order it started: the folder it flushes and how to let it end. */
  let started: { dir: string; finish: () => void }[];

  beforeEach(async () => {
    base = await fs.mkdtemp(path.join(os.tmpdir(), 'bits-dirsync-'));
    await Promise.all(['a', 'b'].map((name) => fs.mkdir(path.join(base, name))));
    const probe = await fs.open(base, 'r');
    proto = Object.getPrototypeOf(probe) as typeof proto;
    await probe.close();
    realSync = proto.sync;
    started = [];
    // Each fsync waits until the test lets it end, then really runs.
    proto.sync = async function (this: FileHandle) {
      const dir = await fs.readlink(`/proc/self/fd/${this.fd}`).catch(() => '?');
      await new Promise<void>((resolve) => started.push({ dir, finish: resolve }));
      return realSync.call(this);
    };
  });
  afterEach(async () => {
    proto.sync = realSync;
    await fs.rm(base, { recursive: true, force: true });
  });

  /** Lets the event loop run until `count` fsyncs have started (bounded). */
  async function untilStarted(count: number): Promise<void> {
    for (let i = 0; i < 1000 && started.length < count; i++) await tick();
    expect(started.length).toBe(count);
  }

  const itLinux = process.platform === 'linux' ? it : it.skip;

  itLinux('answers callers that arrive during an fsync only after the next one, which they all share', async () => {
    const sync = new DirectorySync();
    const dir = path.join(base, 'a');
    const done: string[] = [];
    const first = sync.sync(dir).then(() => done.push('first'));
    await untilStarted(1);
    const later = [1, 2, 3, 4, 5].map((n) => sync.sync(dir).then(() => done.push(`later ${n}`)));
    for (let i = 0; i < 20; i++) await tick();
    expect(started.length).toBe(1);

    started[0]?.finish();
    await first;
    expect(done).toEqual(['first']);
    // One more fsync, started after all five asked, answers all five.
    await untilStarted(2);
    for (let i = 0; i < 20; i++) await tick();
    expect(done).toEqual(['first']);
    started[1]?.finish();
    await Promise.all(later);
    expect(done).toEqual(['first', 'later 1', 'later 2', 'later 3', 'later 4', 'later 5']);
    expect(started.map((s) => path.basename(s.dir))).toEqual(['a', 'a']);

    // Idle again: the next caller starts its own at once.
    const again = sync.sync(dir);
    await untilStarted(3);
    started[2]?.finish();
    await again;
  });

  itLinux('flushes different folders independently', async () => {
    const sync = new DirectorySync();
    const a = sync.sync(path.join(base, 'a'));
    const b = sync.sync(path.join(base, 'b'));
    await untilStarted(2);
    expect(started.map((s) => path.basename(s.dir)).sort()).toEqual(['a', 'b']);
    started[1]?.finish();
    started[0]?.finish();
    await Promise.all([a, b]);
  });

  it('resolves (best effort) when a folder cannot be flushed, and flushes it again later', async () => {
    const sync = new DirectorySync();
    await expect(sync.sync(path.join(base, 'missing'))).resolves.toBeUndefined();
    await fs.mkdir(path.join(base, 'missing'));
    const later = sync.sync(path.join(base, 'missing'));
    await untilStarted(1);
    started[0]?.finish();
    await expect(later).resolves.toBeUndefined();
  });
});
