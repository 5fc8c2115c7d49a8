/**
 * The life of the middleware around its packets (bits-protocol.md §5): start-up recovery before
 * the first packet, expiry of sessions and tombstones on use and by `cleanupExpired` (§5.4), and
 * graceful shutdown (`close()`, §9.2: 503 is transient for the client).
 */
import { createHash } from 'node:crypto';
import type { RecoveryReport, SessionRecord } from '../../lib/storage/adapter';
import { PacketHarness, errorHeaders } from '../helpers/packet-harness';

const HOUR = 60 * 60 * 1000;
const DAY = 24 * HOUR;
const PROTOCOL = '{7df0354d-249b-430f-820d-3d2a9bef4931}';
const REPORT: RecoveryReport = { orphansRemoved: 1, recordsRepaired: 2, commitsFinished: 3 };
const SHUTTING_DOWN = errorHeaders('0x80004005');

function notFound(sid: string) {
  return { status: 500, headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x8020001F') } };
}

function record(h: PacketHarness, n: number, fields: Partial<SessionRecord> = {}): SessionRecord {
  return {
    id: `{00000000-0000-4000-8000-00000000000${n}}`,
    destination: [`file-${n}.bin`],
    urlPath: `/file-${n}.bin`,
    principal: undefined,
    protocol: PROTOCOL,
    totalLength: 4,
    receivedLength: 2,
    state: 'receiving',
    createdAt: h.now,
    updatedAt: h.now,
    sha256: undefined,
    delivered: false,
    reply: undefined,
    ...fields,
  };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('start-up recovery (§5)', () => {
  test('storage.recover() runs once, before the first packet is served, and ready() gives its report', async () => {
    const h = new PacketHarness();
    let release!: () => void;
    const recover = jest.fn(
      () =>
        new Promise<RecoveryReport>((resolve) => {
          release = () => resolve(REPORT);
        }),
    );
    h.storage.recover = recover;
    const ping = h.ping();
    const created = h.create();
    await tick();
    expect(h.storage.calls).toHaveLength(0);
    release();
    expect((await ping).status).toBe(200);
    expect((await created).status).toBe(200);
    expect(await h.runtime.ready()).toBe(REPORT);
    await h.ping();
    expect(recover).toHaveBeenCalledTimes(1);
  });

  test('ready() starts the recovery itself when no packet came yet', async () => {
    const h = new PacketHarness();
    h.storage.recover = jest.fn(async () => REPORT);
    expect(await h.runtime.ready()).toBe(REPORT);
  });

  test('an adapter without recover(): ready() resolves undefined', async () => {
    const h = new PacketHarness();
    expect(await h.runtime.ready()).toBeUndefined();
  });

  test('a failing recovery is reported as upload-failed and the middleware serves anyway', async () => {
    const h = new PacketHarness();
    const failure = new Error('session folder unreadable');
    h.storage.recover = jest.fn(async () => {
      throw failure;
    });
    expect((await h.create()).status).toBe(200);
    expect(await h.runtime.ready()).toBeUndefined();
    expect(h.eventsOf('upload-failed')).toEqual([{ sessionId: undefined, error: failure }]);
    expect(h.storage.recover).toHaveBeenCalledTimes(1);
  });
});

describe('expiry on use (§5.4)', () => {
  test('an expired upload in progress is deleted, session-expired is emitted and its place freed', async () => {
    const h = new PacketHarness({ sessionTimeout: DAY, maxSessions: 1 });
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-1/4', 'ab');
    h.now += DAY + 1;
    expect(await h.fragment(sid, 'bytes 2-3/4', 'cd')).toEqual(notFound(sid));
    expect(await h.storage.getSession(sid)).toBeUndefined();
    expect(h.eventsOf('session-expired')).toEqual([
      { sessionId: sid, destination: ['report.bin'], urlPath: '/report.bin', principal: undefined },
    ]);
    expect(h.runtime.hashes.size).toBe(0);
    expect((await h.create('/other.bin')).status).toBe(200);
  });

  test('an expired complete upload becomes a tombstone: a Fragment is unknown, a later Close still 200', async () => {
    const h = new PacketHarness({ sessionTimeout: DAY });
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-3/4', 'abcd');
    h.now += DAY + 1;
    expect(await h.fragment(sid, 'bytes 0-3/4', 'abcd')).toEqual(notFound(sid));
    expect((await h.storage.getSession(sid))?.state).toBe('closed');
    expect(h.storage.fileText('report.bin')).toBe('abcd');
    expect((await h.close(sid)).status).toBe(200);
    expect(h.eventNames().slice(-1)).toEqual(['session-expired']);
  });

  test('Close of a complete upload past sessionTimeout is a normal Close (§15 A9)', async () => {
    const h = new PacketHarness({ sessionTimeout: DAY });
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-3/4', 'abcd');
    h.now += 2 * DAY;
    expect((await h.close(sid)).status).toBe(200);
    expect(h.eventNames().slice(-1)).toEqual(['session-closed']);
  });

  test('tombstones expire after tombstoneTimeout, not sessionTimeout', async () => {
    const h = new PacketHarness({ sessionTimeout: 30 * DAY, tombstoneTimeout: HOUR });
    const sid = await h.session();
    await h.close(sid);
    h.now += HOUR;
    expect((await h.close(sid)).status).toBe(200);
    h.now += 1;
    expect(await h.close(sid)).toEqual(notFound(sid));
    expect(await h.storage.getSession(sid)).toBeUndefined();
    expect(h.eventsOf('session-expired')).toEqual([]);
  });

  test('a tombstone outlives a short sessionTimeout', async () => {
    const h = new PacketHarness({ sessionTimeout: HOUR });
    const sid = await h.session();
    await h.cancel(sid);
    h.now += DAY;
    expect((await h.cancel(sid)).status).toBe(200);
  });
});

describe('cleanupExpired (§5.4)', () => {
  test('expires what is idle past its timeout and nothing else; returns how many', async () => {
    const h = new PacketHarness({ sessionTimeout: DAY, tombstoneTimeout: HOUR });
    const old = h.now - DAY - 1;
    h.storage.seed(record(h, 1, { updatedAt: old }), Buffer.from('ab'));
    h.storage.seed(record(h, 2, { updatedAt: old, state: 'complete', receivedLength: 4 }));
    h.storage.files.set('file-2.bin', Buffer.from('abcd'));
    h.storage.seed(record(h, 3, { updatedAt: h.now - HOUR - 1, state: 'closed' }));
    h.storage.seed(record(h, 4, { updatedAt: h.now - DAY + 1 }));
    h.storage.seed(record(h, 5, { updatedAt: h.now - HOUR + 1, state: 'cancelled' }));
    expect(await h.runtime.cleanupExpired(h.now)).toBe(3);
    expect(await h.storage.getSession(record(h, 1).id)).toBeUndefined();
    expect((await h.storage.getSession(record(h, 2).id))?.state).toBe('closed');
    expect(h.storage.fileText('file-2.bin')).toBe('abcd');
    expect(await h.storage.getSession(record(h, 3).id)).toBeUndefined();
    expect(await h.storage.getSession(record(h, 4).id)).toBeDefined();
    expect(await h.storage.getSession(record(h, 5).id)).toBeDefined();
    expect(h.eventsOf('session-expired').map((info) => info.sessionId)).toEqual([record(h, 1).id, record(h, 2).id]);
    expect(await h.runtime.cleanupExpired(h.now)).toBe(0);
  });

  test('a session that made progress after the listing is left alone', async () => {
    const h = new PacketHarness({ sessionTimeout: DAY });
    h.storage.seed(record(h, 1, { updatedAt: h.now - DAY - 1 }));
    const release = h.storage.hold('getSession');
    const cleanup = h.runtime.cleanupExpired(h.now);
    await tick();
    h.storage.patch(record(h, 1).id, { updatedAt: h.now });
    release();
    expect(await cleanup).toBe(0);
    expect(await h.storage.getSession(record(h, 1).id)).toBeDefined();
  });

  test('one record that cannot be removed is reported; the others still go', async () => {
    const h = new PacketHarness({ sessionTimeout: DAY });
    h.storage.seed(record(h, 1, { updatedAt: h.now - 2 * DAY }));
    h.storage.seed(record(h, 2, { updatedAt: h.now - 2 * DAY }));
    const failure = new Error('EBUSY');
    h.storage.failNext('deleteSession', failure);
    expect(await h.runtime.cleanupExpired(h.now)).toBe(1);
    expect(h.eventsOf('upload-failed')).toEqual([{ sessionId: record(h, 1).id, error: failure }]);
    expect(await h.storage.getSession(record(h, 2).id)).toBeUndefined();
  });

  test('a listing that fails rejects', async () => {
    const h = new PacketHarness();
    h.storage.failNext('listSessions', new Error('unreadable'));
    await expect(h.runtime.cleanupExpired(h.now)).rejects.toThrow('unreadable');
  });

  test('the running hash of an expired session is dropped', async () => {
    const h = new PacketHarness({ sessionTimeout: DAY });
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-1/4', 'ab');
    expect(h.runtime.hashes.size).toBe(1);
    expect(await h.runtime.cleanupExpired(h.now + DAY + 1)).toBe(1);
    expect(h.runtime.hashes.size).toBe(0);
  });
});

describe('close() (graceful shutdown)', () => {
  test('new sessions are refused at once; packets of existing sessions are served until the in-flight ones are done', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const release = h.storage.hold('writeFragment');
    const inFlight = h.fragment(sid, 'bytes 0-1/4', 'ab');
    h.runtime.track(inFlight.then(() => undefined));
    await tick();
    let closed = false;
    const closing = h.runtime.close(30_000).then(() => {
      closed = true;
    });
    expect(h.runtime.phase).toBe('closing');
    expect(await h.create()).toEqual({ status: 503, headers: SHUTTING_DOWN });
    expect((await h.ping()).status).toBe(200);
    await tick();
    expect(closed).toBe(false);
    release();
    expect((await inFlight).status).toBe(200);
    await closing;
    expect(h.runtime.phase).toBe('closed');
    for (const ack of [await h.ping(), await h.create(), await h.fragment(sid, 'bytes 2-3/4', 'cd'), await h.close(sid)]) {
      expect(ack).toEqual({ status: 503, headers: SHUTTING_DOWN });
    }
    expect(h.runtime.hashes.size).toBe(0);
    expect(h.runtime.openSessions.size).toBe(0);
  });

  test('the timeout bounds the wait; a second close() returns the same promise', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const release = h.storage.hold('writeFragment');
    const inFlight = h.fragment(sid, 'bytes 0-1/4', 'ab');
    h.runtime.track(inFlight.then(() => undefined));
    await tick();
    const started = Date.now();
    const first = h.runtime.close(50);
    expect(h.runtime.close(10_000)).toBe(first);
    await first;
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(h.runtime.phase).toBe('closed');
    release();
    expect((await inFlight).status).toBe(200);
  });

  test('a packet outliving close() (timeout) still completes with the right hash, read back from the storage', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-1/4', 'ab');
    const release = h.storage.hold('writeFragment');
    const last = h.fragment(sid, 'bytes 2-3/4', 'cd');
    await tick();
    await h.runtime.close(0);
    expect(h.runtime.hashes.size).toBe(0);
    release();
    expect(await last).toEqual({ status: 200, headers: { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '4' } });
    expect(h.storage.callsOf('readData').map((call) => call.args)).toEqual([[sid, 0]]);
    expect(h.eventsOf('upload-completed')[0]?.sha256).toBe(createHash('sha256').update('abcd').digest('hex'));
  });
});
