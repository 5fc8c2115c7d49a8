/** Per-session serialisation (bits-protocol.md §5.6). */
import { SessionLocks } from '../../lib/protocol/session-lock';

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((done) => (resolve = done));
  return { promise, resolve };
}

test('tasks for one key run one after another, in order', async () => {
  const locks = new SessionLocks();
  const order: string[] = [];
  const gate = deferred();
  const first = locks.run('a', async () => {
    order.push('first start');
    await gate.promise;
    order.push('first end');
    return 1;
  });
  const second = locks.run('a', async () => {
    order.push('second');
    return 2;
  });
  await new Promise((resolve) => setImmediate(resolve));
  expect(order).toEqual(['first start']);
  gate.resolve();
  expect(await Promise.all([first, second])).toEqual([1, 2]);
  expect(order).toEqual(['first start', 'first end', 'second']);
});

test('tasks for different keys run in parallel', async () => {
  const locks = new SessionLocks();
  const gate = deferred();
  const blocked = locks.run('a', () => gate.promise);
  let ranB = false;
  await locks.run('b', async () => {
    ranB = true;
  });
  expect(ranB).toBe(true);
  gate.resolve();
  await blocked;
});

test('a rejected task rejects its caller and does not block the next', async () => {
  const locks = new SessionLocks();
  await expect(locks.run('a', () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
  await expect(locks.run('a', async () => 'next')).resolves.toBe('next');
});

test('idle keys are removed, so the map never grows without bound', async () => {
  const locks = new SessionLocks();
  await Promise.all(Array.from({ length: 1000 }, (_, i) => locks.run(`k${i}`, async () => i)));
  await new Promise((resolve) => setImmediate(resolve));
  expect(locks.size).toBe(0);
});

test('a key stays while work is queued and goes when the last task ends', async () => {
  const locks = new SessionLocks();
  const gate = deferred();
  const first = locks.run('a', () => gate.promise);
  const second = locks.run('a', async () => undefined);
  expect(locks.size).toBe(1);
  gate.resolve();
  await Promise.all([first, second]);
  await new Promise((resolve) => setImmediate(resolve));
  expect(locks.size).toBe(0);
});
