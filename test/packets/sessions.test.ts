/**
 * Session lookup rules (bits-protocol.md §3 step 4, §5.4, §5.6): tombstones, expiry, binding to
 * the URL path, and Create-Session's destination checks (§3.2).
 */
import { PacketHarness, errorHeaders } from '../helpers/packet-harness';

const DAY = 24 * 60 * 60 * 1000;

function notFound(sid: string) {
  return { status: 500, headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x8020001F') } };
}

describe('binding to the URL path (§5.6, §15 A18)', () => {
  test('a packet for the session on another path is an unknown session', async () => {
    const h = new PacketHarness();
    const sid = await h.session('/a/report.bin');
    expect(await h.fragment(sid, 'bytes 0-3/4', 'abcd', { url: '/b/report.bin' })).toEqual(notFound(sid));
    expect(await h.close(sid, '/other.bin')).toEqual(notFound(sid));
    expect(h.storage.callsOf('writeFragment')).toHaveLength(0);
    expect(h.storage.callsOf('endSession')).toHaveLength(0);
  });

  test('equivalent spellings of the same path, a query string and absolute-form match', async () => {
    const h = new PacketHarness();
    const sid = await h.session('/dir/report.bin');
    const ack = await h.fragment(sid, 'bytes 0-3/8', 'abcd', { url: '/%64ir/report.bin?x=1' });
    expect(ack.status).toBe(200);
    const final = await h.fragment(sid, 'bytes 4-7/8', 'efgh', { url: 'http://bits.example.test/dir/report.bin' });
    expect(final.status).toBe(200);
    expect(h.storage.fileText('dir/report.bin')).toBe('abcdefgh');
  });

  test('subdirectories map to subdirectories', async () => {
    const h = new PacketHarness();
    await h.session('/2024/q1/report%20final.bin');
    expect(h.storage.callsOf('createSession')[0]?.args[0]).toMatchObject({
      destination: ['2024', 'q1', 'report final.bin'],
      urlPath: '/2024/q1/report%20final.bin',
    });
  });
});

describe('expiry (§5.4, sessionTimeout and tombstoneTimeout)', () => {
  test('a session idle for longer than sessionTimeout is unknown and deleted', async () => {
    const h = new PacketHarness({ sessionTimeout: DAY });
    const sid = await h.session();
    h.now += DAY + 1;
    expect(await h.fragment(sid, 'bytes 0-3/4', 'abcd')).toEqual(notFound(sid));
    expect(h.storage.callsOf('deleteSession')).toHaveLength(1);
    expect(await h.close(sid)).toEqual(notFound(sid));
  });

  test('progress keeps a session alive', async () => {
    const h = new PacketHarness({ sessionTimeout: DAY });
    const sid = await h.session();
    h.now += DAY - 1;
    await h.fragment(sid, 'bytes 0-3/8', 'abcd');
    h.now += DAY - 1;
    expect((await h.fragment(sid, 'bytes 4-7/8', 'efgh')).status).toBe(200);
  });

  test('the default is 14 days', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    h.now += 14 * DAY;
    expect((await h.fragment(sid, 'bytes 0-3/8', 'abcd')).status).toBe(200);
    h.now += 14 * DAY + 1;
    expect(await h.fragment(sid, 'bytes 4-7/8', 'efgh')).toEqual(notFound(sid));
  });

  test('an expired tombstone no longer makes Close idempotent', async () => {
    const h = new PacketHarness({ tombstoneTimeout: DAY });
    const sid = await h.session();
    await h.close(sid);
    h.now += DAY + 1;
    expect(await h.close(sid)).toEqual(notFound(sid));
  });
});

describe('tombstones (§5.4)', () => {
  test('Close, then Cancel, then Close again: all 200, endSession only once', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    for (const send of [h.close, h.cancel, h.close]) {
      expect(await send.call(h, sid)).toEqual({ status: 200, headers: { 'BITS-Session-Id': sid } });
    }
    expect(h.storage.callsOf('endSession')).toHaveLength(1);
  });

  test('a Fragment on a closed session → 500 + BG_E_SESSION_NOT_FOUND', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-9/10', '0123456789');
    await h.close(sid);
    expect(await h.fragment(sid, 'bytes 6-9/10', '6789')).toEqual(notFound(sid));
  });

  test('a session that vanished from storage between lookup and use → 500 + BG_E_SESSION_NOT_FOUND', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    jest.spyOn(h.storage, 'endSession').mockImplementationOnce(async (id) => {
      const { SessionNotFoundError } = await import('../../lib/storage/adapter');
      throw new SessionNotFoundError(id);
    });
    expect(await h.close(sid)).toEqual(notFound(sid));
  });
});

describe('Create-Session destination checks (§3.2)', () => {
  test('a directory at the destination → 400', async () => {
    const h = new PacketHarness();
    h.storage.directories.add('report.bin');
    expect(await h.create()).toEqual({ status: 400, headers: errorHeaders('0x80070057') });
    expect(h.storage.callsOf('createSession')).toHaveLength(0);
  });

  test.each(['/', '/dir/', '/../etc/passwd', '/a/%2e%2e/b', '/CON', '/.bits-sessions/x'])(
    'invalid destination %s → 400 + E_INVALIDARG, storage untouched',
    async (url) => {
      const h = new PacketHarness();
      expect(await h.create(url)).toEqual({ status: 400, headers: errorHeaders('0x80070057') });
      expect(h.storage.calls).toHaveLength(0);
    },
  );

  test('protocol negotiation comes before the destination check', async () => {
    const h = new PacketHarness();
    await h.create('/', '{12345678-1234-1234-1234-123456789abc}');
    expect(h.storage.calls).toHaveLength(0);
  });

  test('Content-Name is never used for the destination', async () => {
    const h = new PacketHarness();
    await h.send({
      type: 'Create-Session',
      url: '/report.bin',
      headers: { 'BITS-Supported-Protocols': '{7df0354d-249b-430f-820d-3d2a9bef4931}', 'Content-Name': '../evil.bin' },
    });
    expect(h.storage.callsOf('createSession')[0]?.args[0]).toMatchObject({ destination: ['report.bin'] });
  });

  test('the record holds id, destination, URL path, protocol and creation time', async () => {
    const h = new PacketHarness();
    const sid = await h.session('/dir/report.bin');
    expect(h.storage.callsOf('createSession')[0]?.args[0]).toEqual({
      id: sid,
      destination: ['dir', 'report.bin'],
      urlPath: '/dir/report.bin',
      principal: undefined,
      protocol: '{7df0354d-249b-430f-820d-3d2a9bef4931}',
      createdAt: h.now,
    });
  });

  test('Ping does not look at the destination', async () => {
    const h = new PacketHarness();
    expect(await h.send({ type: 'Ping', url: '/' })).toEqual({ status: 200, headers: {} });
  });
});
