/**
 * The middleware as an object (bits-protocol.md §5): a plain three-parameter function that is also
 * a typed EventEmitter, with ready(), cleanupExpired(), close() and the expiry sweeper (§5.4).
 */
import { EventEmitter } from 'node:events';
import { bitsUpload, type BitsUploadMiddleware } from '../../lib/middleware';
import type { SessionRecord } from '../../lib/storage/adapter';
import { StubStorage } from '../helpers/stub-storage';

const DAY = 24 * 60 * 60 * 1000;
const SID = '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}';

function idleRecord(updatedAt: number): SessionRecord {
  return {
    id: SID,
    destination: ['report.bin'],
    urlPath: '/report.bin',
    principal: undefined,
    protocol: '{7df0354d-249b-430f-820d-3d2a9bef4931}',
    totalLength: 10,
    receivedLength: 4,
    state: 'receiving',
    createdAt: updatedAt,
    updatedAt,
    sha256: undefined,
    delivered: false,
    reply: undefined,
  };
}

const created: BitsUploadMiddleware[] = [];
function make(options: Parameters<typeof bitsUpload>[0]): BitsUploadMiddleware {
  const middleware = bitsUpload(options);
  created.push(middleware);
  return middleware;
}
afterEach(async () => {
  jest.useRealTimers();
  await Promise.all(created.splice(0).map((middleware) => middleware.close()));
});

describe('shape', () => {
  test('a plain function of three parameters, with the EventEmitter methods and its own', () => {
    const middleware = make({ storage: new StubStorage() });
    expect(typeof middleware).toBe('function');
    expect(middleware.length).toBe(3);
    expect(middleware.name).toBe('bitsUploadMiddleware');
    expect(middleware).not.toBeInstanceOf(EventEmitter);
    for (const method of ['on', 'once', 'off', 'emit', 'listenerCount', 'removeAllListeners', 'ready', 'cleanupExpired', 'close']) {
      expect(typeof (middleware as unknown as Record<string, unknown>)[method]).toBe('function');
    }
  });

  test('events are typed and each middleware has its own listeners', () => {
    const first = make({ storage: new StubStorage() });
    const second = make({ storage: new StubStorage() });
    const offsets: number[] = [];
    first.on('progress', (progress) => offsets.push(progress.offset));
    first.once('upload-completed', (upload) => offsets.push(upload.size));
    // @ts-expect-error no such event
    first.on('progres', () => undefined);
    // @ts-expect-error the listener does not take a ProgressInfo
    first.on('progress', (progress: { nope: string }) => progress.nope);
    expect(first.listenerCount('progress')).toBe(2);
    expect(second.listenerCount('progress')).toBe(0);
    first.removeAllListeners();
    expect(first.listenerCount('progress')).toBe(0);
  });
});

describe('ready()', () => {
  test('resolves with the adapter report, running recover() once', async () => {
    const storage = new StubStorage();
    const report = { orphansRemoved: 0, recordsRepaired: 1, commitsFinished: 0 };
    storage.recover = jest.fn(async () => report);
    const middleware = make({ storage });
    expect(await middleware.ready()).toBe(report);
    expect(await middleware.ready()).toBe(report);
    expect(storage.recover).toHaveBeenCalledTimes(1);
  });

  test('a failing recovery: undefined and upload-failed, never a rejection', async () => {
    const storage = new StubStorage();
    storage.recover = async () => {
      throw new Error('broken');
    };
    const middleware = make({ storage });
    const failures: string[] = [];
    middleware.on('upload-failed', (failure) => failures.push(failure.error.message));
    expect(await middleware.ready()).toBeUndefined();
    expect(failures).toEqual(['broken']);
  });
});

describe('cleanupExpired() and the sweeper (§5.4)', () => {
  test('cleanupExpired() expires now and says how many', async () => {
    const storage = new StubStorage();
    storage.seed(idleRecord(Date.now() - 2 * DAY));
    const middleware = make({ storage, sessionTimeout: DAY, cleanupInterval: false });
    const expired: string[] = [];
    middleware.on('session-expired', (session) => expired.push(session.sessionId));
    expect(await middleware.cleanupExpired()).toBe(1);
    expect(expired).toEqual([SID]);
    expect(await storage.getSession(SID)).toBeUndefined();
  });

  test('the sweeper runs every cleanupInterval and stops at close()', async () => {
    jest.useFakeTimers({ now: 1_700_000_000_000 });
    const storage = new StubStorage();
    storage.seed(idleRecord(Date.now()));
    const middleware = make({ storage, sessionTimeout: 5_000, cleanupInterval: 1_000 });
    const expired = jest.fn();
    middleware.on('session-expired', expired);
    expect(jest.getTimerCount()).toBe(1);
    await jest.advanceTimersByTimeAsync(5_000);
    expect(storage.callsOf('listSessions')).toHaveLength(5);
    expect(expired).not.toHaveBeenCalled();
    await jest.advanceTimersByTimeAsync(1_000);
    expect(expired).toHaveBeenCalledTimes(1);
    expect(await storage.getSession(SID)).toBeUndefined();
    await middleware.close();
    expect(jest.getTimerCount()).toBe(0);
    await jest.advanceTimersByTimeAsync(10_000);
    expect(storage.callsOf('listSessions')).toHaveLength(6);
  });

  test('a sweep that fails is reported and the next one runs; sweeps never overlap', async () => {
    jest.useFakeTimers();
    const storage = new StubStorage();
    const middleware = make({ storage, cleanupInterval: 1_000 });
    const failures = jest.fn();
    middleware.on('upload-failed', failures);
    storage.failNext('listSessions', new Error('unreadable'));
    await jest.advanceTimersByTimeAsync(1_000);
    expect(failures).toHaveBeenCalledWith({ sessionId: undefined, error: expect.objectContaining({ message: 'unreadable' }) });
    const release = storage.hold('listSessions');
    await jest.advanceTimersByTimeAsync(3_000);
    expect(storage.callsOf('listSessions')).toHaveLength(2);
    release();
    await jest.advanceTimersByTimeAsync(1_000);
    expect(storage.callsOf('listSessions')).toHaveLength(3);
  });

  test('cleanupInterval: false starts no timer', () => {
    jest.useFakeTimers();
    make({ storage: new StubStorage(), cleanupInterval: false });
    expect(jest.getTimerCount()).toBe(0);
  });

  test('the sweeper timer does not keep the process alive', async () => {
    const setIntervalSpy = jest.spyOn(global, 'setInterval');
    try {
      make({ storage: new StubStorage() });
      const timer = setIntervalSpy.mock.results[0]?.value as NodeJS.Timeout;
      expect(setIntervalSpy).toHaveBeenCalledWith(expect.any(Function), 60 * 60 * 1000);
      expect(timer.hasRef()).toBe(false);
    } finally {
      setIntervalSpy.mockRestore();
    }
  });
});

describe('close()', () => {
  test.each([-1, Number.NaN, Infinity, 2 ** 31, '10'])('timeout %p is refused with a TypeError naming it', async (timeout) => {
    const middleware = make({ storage: new StubStorage() });
    await expect(middleware.close({ timeout: timeout as number })).rejects.toThrow(/close: option "timeout" must be a number/);
  });

  test('releases the storage: its optional close() is awaited once, and its failure does not reject', async () => {
    const storage = Object.assign(new StubStorage(), { close: jest.fn(async () => undefined) });
    const middleware = make({ storage });
    await middleware.close();
    await middleware.close();
    expect(storage.close).toHaveBeenCalledTimes(1);
    const failing = Object.assign(new StubStorage(), { close: jest.fn(async () => Promise.reject(new Error('busy'))) });
    await expect(make({ storage: failing }).close()).resolves.toBeUndefined();
  });

  test('a storage whose close is not a method is refused at creation', () => {
    expect(() => make({ storage: Object.assign(new StubStorage(), { close: 42 }) as unknown as StubStorage })).toThrow(
      /option "storage" has a "close" that is not a method/,
    );
  });

  test('resolves at once when nothing is in flight; the same promise on every call', async () => {
    const middleware = make({ storage: new StubStorage() });
    const closing = middleware.close();
    expect(middleware.close({ timeout: 5 })).toBe(closing);
    await closing;
  });
});
