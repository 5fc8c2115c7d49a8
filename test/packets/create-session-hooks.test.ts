/**
 * Create-Session's application hooks and limits (bits-protocol.md §3.2, §5.4, §5.6, §8.4, §9.2,
 * §12): `destination`, `onCreateSession` refusals and failures, `maxSessions`,
 * `maxSessionsPerPrincipal`, and binding sessions to their principal (§15 A18).
 */
import type { IncomingMessage } from 'node:http';
import type { SessionRecord } from '../../lib/storage/adapter';
import { PacketHarness, errorHeaders, type Packet } from '../helpers/packet-harness';

const PROTOCOL = '{7df0354d-249b-430f-820d-3d2a9bef4931}';
const TOO_MANY = { status: 503, headers: errorHeaders('0x80070045') };

/** The principal is the `X-Test-User` header, as a test application would read it. */
const byHeader = (req: IncomingMessage): string | undefined => {
  const value = req.headers['x-test-user'];
  return typeof value === 'string' ? value : undefined;
};
const as = (user: string): Partial<Packet> => ({ headers: { 'X-Test-User': user } });

function notFound(sid: string) {
  return { status: 500, headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x8020001F') } };
}

describe('the destination hook', () => {
  test('maps the URL destination; the session stays bound to the URL path', async () => {
    const destination = jest.fn((requested: readonly string[]) => ['incoming', ...requested]);
    const h = new PacketHarness({ destination });
    const sid = await h.session('/dir/report.bin');
    expect(destination).toHaveBeenCalledWith(['dir', 'report.bin'], expect.objectContaining({ url: '/dir/report.bin' }));
    expect(h.storage.callsOf('createSession')[0]?.args[0]).toMatchObject({
      destination: ['incoming', 'dir', 'report.bin'],
      urlPath: '/dir/report.bin',
    });
    await h.fragment(sid, 'bytes 0-3/4', 'abcd', { url: '/dir/report.bin' });
    expect(h.storage.fileText('incoming/dir/report.bin')).toBe('abcd');
    expect(h.eventsOf('session-created')[0]?.destination).toEqual(['incoming', 'dir', 'report.bin']);
  });

  test('may be async; the overwrite check applies to its result', async () => {
    const h = new PacketHarness({ destination: async () => ['taken.bin'] });
    h.storage.files.set('taken.bin', Buffer.from('x'));
    expect(await h.create()).toEqual({ status: 403, headers: errorHeaders('0x80070005') });
  });

  test.each([
    ['a dot segment', ['..', 'etc', 'passwd']],
    ['an empty list', []],
    ['an empty name', ['a', '']],
    ['a separator', ['a/b']],
    ['a device name', ['NUL.txt']],
    ['the session folder', ['.bits-sessions', 'x']],
    ['a string', 'report.bin'],
    ['a number in the list', ['a', 7]],
  ])('a result with %s → 400 + E_INVALIDARG, no session', async (_name, result) => {
    const h = new PacketHarness({ destination: () => result as unknown as string[] });
    expect(await h.create()).toEqual({ status: 400, headers: errorHeaders('0x80070057') });
    expect(h.storage.callsOf('createSession')).toHaveLength(0);
  });

  test('a destination hook that throws → application error, context 0x7', async () => {
    const h = new PacketHarness({
      destination: () => {
        throw Object.assign(new Error('mapping service down'), { status: 503 });
      },
    });
    expect(await h.create()).toEqual({ status: 503, headers: errorHeaders('0x80004005', '0x7') });
    expect(h.eventsOf('upload-failed')).toEqual([{ sessionId: undefined, error: expect.objectContaining({ message: 'mapping service down' }) }]);
  });
});

describe('onCreateSession (§12)', () => {
  test('sees destination, URL path, principal and request; returning nothing accepts', async () => {
    const onCreateSession = jest.fn();
    const h = new PacketHarness({ onCreateSession, principal: byHeader });
    expect((await h.create('/a/b.bin', PROTOCOL, as('alice'))).status).toBe(200);
    expect(onCreateSession).toHaveBeenCalledWith({
      destination: ['a', 'b.bin'],
      urlPath: '/a/b.bin',
      principal: 'alice',
      req: expect.objectContaining({ url: '/a/b.bin' }),
    });
  });

  test.each([
    [403, undefined, '0x80070005'],
    [401, undefined, '0x80070005'],
    [404, undefined, '0x80004005'],
    [503, undefined, '0x80004005'],
    [409, 0x80070050, '0x80070050'],
  ])('a refusal with status %d and errorCode %s → that status, %s, context 0x5, no session', async (status, errorCode, code) => {
    const h = new PacketHarness({ onCreateSession: async () => ({ status, errorCode }) });
    expect(await h.create()).toEqual({ status, headers: errorHeaders(code) });
    expect(h.storage.callsOf('createSession')).toHaveLength(0);
    expect(h.storage.callsOf('inspectDestination')).toHaveLength(0);
    expect(h.events).toEqual([]);
  });

  test.each([
    ['a status below 400', { status: 200 }],
    ['a status above 599', { status: 600 }],
    ['a fractional errorCode', { status: 403, errorCode: 1.5 }],
    ['not an object', 'no'],
  ])('a refusal with %s is a failing hook → 500 + E_FAIL, context 0x7', async (_name, refusal) => {
    const h = new PacketHarness({ onCreateSession: () => refusal as unknown as { status: number } });
    expect(await h.create()).toEqual({ status: 500, headers: errorHeaders('0x80004005', '0x7') });
    expect(h.eventsOf('upload-failed')).toHaveLength(1);
  });

  test('a hook that throws → its status, its errorCode, context 0x7', async () => {
    const h = new PacketHarness({
      onCreateSession: () => {
        throw Object.assign(new Error('directory service down'), { status: 502, errorCode: 0x8007274c });
      },
    });
    expect(await h.create()).toEqual({ status: 502, headers: errorHeaders('0x8007274C', '0x7') });
  });

  test('runs after protocol negotiation and URL validation', async () => {
    const onCreateSession = jest.fn();
    const h = new PacketHarness({ onCreateSession });
    await h.create(undefined, '{12345678-1234-1234-1234-123456789abc}');
    await h.create('/../x');
    expect(onCreateSession).not.toHaveBeenCalled();
  });
});

describe('session limits (§5.4)', () => {
  test('maxSessions: 503 + ERROR_TOO_MANY_SESS, context 0x5; Close, Cancel and expiry make room', async () => {
    const h = new PacketHarness({ maxSessions: 2 });
    const first = await h.session();
    const second = await h.session();
    expect(await h.create()).toEqual(TOO_MANY);
    expect(h.storage.callsOf('createSession')).toHaveLength(2);
    await h.close(first);
    const third = await h.session();
    expect(await h.create()).toEqual(TOO_MANY);
    await h.cancel(second);
    await h.session();
    expect(await h.create()).toEqual(TOO_MANY);
    h.now += 14 * 24 * 60 * 60 * 1000 + 1;
    expect(await h.runtime.cleanupExpired(h.now)).toBe(4);
    expect(h.runtime.openSessions.size).toBe(0);
    await h.session();
    expect(third).not.toBe(first);
  });

  test('a completed upload counts until it is closed', async () => {
    const h = new PacketHarness({ maxSessions: 1 });
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-3/4', 'abcd');
    expect(await h.create('/other.bin')).toEqual(TOO_MANY);
    await h.close(sid);
    expect((await h.create('/other.bin')).status).toBe(200);
  });

  test('maxSessionsPerPrincipal counts each principal apart; sessions without one only count in the total', async () => {
    const h = new PacketHarness({ maxSessionsPerPrincipal: 2, principal: byHeader });
    await h.session(undefined, as('alice'));
    const alices = await h.session(undefined, as('alice'));
    expect(await h.create(undefined, PROTOCOL, as('alice'))).toEqual(TOO_MANY);
    expect((await h.create(undefined, PROTOCOL, as('bob'))).status).toBe(200);
    for (let i = 0; i < 3; i++) expect((await h.create()).status).toBe(200);
    await h.cancel(alices, undefined, as('alice'));
    expect((await h.create(undefined, PROTOCOL, as('alice'))).status).toBe(200);
  });

  test('the default principal limit is 50 (IIS BITSNumberOfSessionsLimit)', async () => {
    const h = new PacketHarness({ principal: () => 'one' });
    for (let i = 0; i < 50; i++) await h.session();
    expect(await h.create()).toEqual(TOO_MANY);
  });

  test('the index is built once from the stored records: open ones count, tombstones and expired ones do not', async () => {
    const h = new PacketHarness({ maxSessions: 3, principal: byHeader, maxSessionsPerPrincipal: 1 });
    const record = (id: string, fields: Partial<SessionRecord>): SessionRecord => ({
      id,
      destination: ['x.bin'],
      urlPath: '/x.bin',
      principal: 'alice',
      protocol: PROTOCOL,
      totalLength: undefined,
      receivedLength: 0,
      state: 'receiving',
      createdAt: h.now,
      updatedAt: h.now,
      sha256: undefined,
      delivered: false,
      reply: undefined,
      ...fields,
    });
    h.storage.seed(record('{00000000-0000-4000-8000-000000000001}', {}));
    h.storage.seed(record('{00000000-0000-4000-8000-000000000002}', { state: 'complete', principal: 'bob' }));
    h.storage.seed(record('{00000000-0000-4000-8000-000000000003}', { state: 'closed' }));
    h.storage.seed(record('{00000000-0000-4000-8000-000000000004}', { updatedAt: h.now - 15 * 24 * 60 * 60 * 1000 }));
    expect(await h.create(undefined, PROTOCOL, as('alice'))).toEqual(TOO_MANY);
    expect(await h.create(undefined, PROTOCOL, as('bob'))).toEqual(TOO_MANY);
    expect((await h.create(undefined, PROTOCOL, as('carol'))).status).toBe(200);
    // One listing built the index; no open session it knows can have expired, so refusals do not
    // list the storage again.
    expect(await h.create(undefined, PROTOCOL, as('dave'))).toEqual(TOO_MANY);
    expect(h.storage.callsOf('listSessions')).toHaveLength(1);
  });

  test('concurrent Create-Sessions share one listing and cannot overshoot the limit', async () => {
    const h = new PacketHarness({ maxSessions: 3 });
    const release = h.storage.hold('listSessions');
    const acks = Array.from({ length: 6 }, () => h.create());
    await new Promise((resolve) => setImmediate(resolve));
    release();
    const statuses = (await Promise.all(acks)).map((ack) => ack.status).sort();
    expect(statuses).toEqual([200, 200, 200, 503, 503, 503]);
    expect(h.storage.callsOf('listSessions')).toHaveLength(1);
  });

  test('a session closed while the records are being listed is not counted', async () => {
    const h = new PacketHarness({ maxSessions: 1 });
    const sid = '{00000000-0000-4000-8000-000000000001}';
    h.storage.seed({
      id: sid,
      destination: ['report.bin'],
      urlPath: '/report.bin',
      principal: undefined,
      protocol: PROTOCOL,
      totalLength: undefined,
      receivedLength: 0,
      state: 'receiving',
      createdAt: h.now,
      updatedAt: h.now,
      sha256: undefined,
      delivered: false,
      reply: undefined,
    });
    const release = h.storage.hold('listSessions');
    const create = h.create();
    await new Promise((resolve) => setImmediate(resolve));
    expect((await h.close(sid)).status).toBe(200);
    release();
    expect((await create).status).toBe(200);
  });

  test('a listing that fails → 500, and the next Create-Session lists again', async () => {
    const h = new PacketHarness();
    h.storage.failNext('listSessions', new Error('index unreadable'));
    expect((await h.create()).status).toBe(500);
    expect((await h.create()).status).toBe(200);
    expect(h.storage.callsOf('listSessions')).toHaveLength(2);
  });

  test('a createSession that fails frees its place', async () => {
    const h = new PacketHarness({ maxSessions: 1 });
    h.storage.failNext('createSession', new Error('disk'));
    expect((await h.create()).status).toBe(500);
    expect((await h.create()).status).toBe(200);
  });
});

describe('binding to the principal (§5.6, §15 A18)', () => {
  test('the record holds the principal; packets from another principal are for an unknown session', async () => {
    const h = new PacketHarness({ principal: byHeader });
    const sid = await h.session(undefined, as('alice'));
    expect(h.storage.callsOf('createSession')[0]?.args[0]).toMatchObject({ principal: 'alice' });
    expect(await h.fragment(sid, 'bytes 0-3/4', 'abcd', as('mallory'))).toEqual(notFound(sid));
    expect(await h.fragment(sid, 'bytes 0-3/4', 'abcd')).toEqual(notFound(sid));
    expect(await h.cancel(sid, undefined, as('mallory'))).toEqual(notFound(sid));
    expect(h.storage.callsOf('writeFragment')).toHaveLength(0);
    expect(h.storage.callsOf('endSession')).toHaveLength(0);
    expect((await h.fragment(sid, 'bytes 0-3/4', 'abcd', as('alice'))).status).toBe(200);
    expect(await h.close(sid, undefined, as('mallory'))).toEqual(notFound(sid));
    expect((await h.close(sid, undefined, as('alice'))).status).toBe(200);
  });

  test('the default principal is req.user (a string or its id, username or name), else the client address', async () => {
    const h = new PacketHarness();
    const sid = await h.session(undefined, { user: { id: 42, name: 'Alice' } });
    expect(h.eventsOf('session-created')[0]?.principal).toBe('42');
    expect(await h.fragment(sid, 'bytes 0-3/4', 'abcd', { user: { username: 'alice' } })).toEqual(notFound(sid));
    expect((await h.fragment(sid, 'bytes 0-3/4', 'abcd', { user: { id: 42 } })).status).toBe(200);
  });

  test('a principal option that returns something other than a string → 500 E_FAIL', async () => {
    const h = new PacketHarness({ principal: () => 7 as unknown as string });
    expect((await h.create()).headers).toMatchObject(errorHeaders('0x80004005'));
  });
});
