/**
 * bits-protocol.md §16 test vectors TV-1..TV-9 and TV-11..TV-17, at handler level: every packet
 * goes through the pipeline (`processPacket`) and the packet handlers against a stub adapter,
 * without sockets. TV-10 (upload-reply) and TV-18 (transport) are covered elsewhere.
 */
import { PacketHarness, errorHeaders } from '../helpers/packet-harness';

const PROTOCOL = '{7df0354d-249b-430f-820d-3d2a9bef4931}';
const SID = /^\{[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}\}$/;

function fragmentAck(sid: string, received: number, status = 200) {
  return { status, headers: { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': String(received) } };
}

describe('TV-1 complete upload in two fragments', () => {
  test('Ping, Create-Session, two Fragments, Close-Session, repeated Close', async () => {
    const h = new PacketHarness();
    expect(await h.ping()).toEqual({ status: 200, headers: {} });

    const created = await h.create();
    expect(created.status).toBe(200);
    const sid = created.headers['BITS-Session-Id'] as string;
    expect(sid).toMatch(SID);
    expect(created.headers).toEqual({
      'BITS-Protocol': PROTOCOL,
      'BITS-Session-Id': sid,
      'Accept-Encoding': 'identity',
    });

    expect(await h.fragment(sid, 'bytes 0-5/10', '012345', { headers: { 'Content-Name': 'report.bin' } })).toEqual(
      fragmentAck(sid, 6),
    );
    expect(h.storage.files.size).toBe(0);
    expect(await h.fragment(sid, 'bytes 6-9/10', '6789')).toEqual(fragmentAck(sid, 10));
    expect(h.storage.fileText('report.bin')).toBe('0123456789');

    expect(await h.close(sid)).toEqual({ status: 200, headers: { 'BITS-Session-Id': sid } });
    expect(await h.close(sid)).toEqual({ status: 200, headers: { 'BITS-Session-Id': sid } });
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
    expect(h.storage.callsOf('commit')).toHaveLength(1);
  });

  test('without Ping, and with a Ping between the last Fragment and Close', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    expect((await h.fragment(sid, 'bytes 0-9/10', '0123456789')).status).toBe(200);
    expect(await h.ping()).toEqual({ status: 200, headers: {} });
    expect((await h.close(sid)).status).toBe(200);
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
  });

  test('each Create-Session makes a new session, and Ping creates none', async () => {
    const h = new PacketHarness();
    await h.ping();
    expect(h.storage.callsOf('createSession')).toHaveLength(0);
    const first = await h.session();
    const second = await h.session();
    expect(first).not.toBe(second);
  });

  test('the session id is matched case-insensitively and echoed as sent', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const lower = sid.toLowerCase();
    expect(await h.fragment(lower, 'bytes 0-9/10', '0123456789')).toEqual(fragmentAck(lower, 10));
  });
});

describe('TV-2 gap', () => {
  test('416 with the held offset, nothing written; then the right fragment', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    const writes = h.storage.callsOf('writeFragment').length;
    expect(await h.fragment(sid, 'bytes 8-9/10', '89')).toEqual(fragmentAck(sid, 6, 416));
    expect(h.storage.callsOf('writeFragment')).toHaveLength(writes);
    expect(await h.fragment(sid, 'bytes 6-9/10', '6789')).toEqual(fragmentAck(sid, 10));
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
  });

  test('a first fragment that does not start at 0 is a gap too', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    expect(await h.fragment(sid, 'bytes 4-9/10', '456789')).toEqual(fragmentAck(sid, 0, 416));
  });
});

describe('TV-3 overlap, duplicate, repeated final fragment', () => {
  test('overlap: the held bytes are skipped, never overwritten', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    expect(await h.fragment(sid, 'bytes 4-9/10', 'XX6789')).toEqual(fragmentAck(sid, 10));
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
    expect(h.storage.callsOf('writeFragment').map((call) => call.args[1])).toEqual([0, 6]);
  });

  test('duplicate: 200 with the unchanged offset, nothing written', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    expect(await h.fragment(sid, 'bytes 0-5/10', 'XXXXXX')).toEqual(fragmentAck(sid, 6));
    expect(h.storage.callsOf('writeFragment')).toHaveLength(1);
    expect(h.storage.dataOf(sid.toUpperCase())?.toString()).toBe('012345');
  });

  test('final fragment repeated after completion: same Ack, no second commit', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    const final = await h.fragment(sid, 'bytes 6-9/10', '6789');
    expect(await h.fragment(sid, 'bytes 6-9/10', '6789')).toEqual(final);
    expect(h.storage.callsOf('commit')).toHaveLength(1);
    expect(h.storage.callsOf('writeFragment')).toHaveLength(2);
  });
});

describe('TV-4 cancel', () => {
  test('Cancel deletes the data; a Fragment afterwards is an unknown session; Cancel again is 200', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    expect(await h.cancel(sid)).toEqual({ status: 200, headers: { 'BITS-Session-Id': sid } });
    expect(h.storage.files.size).toBe(0);
    expect(h.storage.dataOf(sid)?.length).toBe(0);
    expect(await h.fragment(sid, 'bytes 6-9/10', '6789')).toEqual({
      status: 500,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x8020001F') },
    });
    expect(h.storage.callsOf('writeFragment')).toHaveLength(1);
    expect(await h.cancel(sid)).toEqual({ status: 200, headers: { 'BITS-Session-Id': sid } });
    expect(await h.close(sid)).toEqual({ status: 200, headers: { 'BITS-Session-Id': sid } });
  });

  test('Cancel after completion keeps the destination', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-9/10', '0123456789');
    expect((await h.cancel(sid)).status).toBe(200);
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
  });
});

describe('TV-5 unknown session', () => {
  const unknown = '{00000000-0000-0000-0000-000000000001}';
  const notFound = { status: 500, headers: { 'BITS-Session-Id': unknown, ...errorHeaders('0x8020001F') } };

  test.each([
    ['Fragment', { range: 'bytes 0-3/4', body: 'abcd' }],
    ['Close-Session', {}],
    ['Cancel-Session', {}],
  ])('%s with an id that never existed', async (type, more) => {
    const h = new PacketHarness();
    expect(await h.send({ type, sessionId: unknown, ...more })).toEqual(notFound);
    expect(h.storage.callsOf('writeFragment')).toHaveLength(0);
  });

  test.each(['not-a-guid', '{3F2504E0-4F89-41D3-9A0C}', '../../etc/passwd'])(
    'an id we cannot have issued (%s) never reaches the storage',
    async (id) => {
      const h = new PacketHarness();
      const ack = await h.send({ type: 'Close-Session', sessionId: id });
      expect(ack).toEqual({ status: 500, headers: { 'BITS-Session-Id': id, ...errorHeaders('0x8020001F') } });
      expect(h.storage.callsOf('getSession')).toHaveLength(0);
    },
  );

  test.each(['Fragment', 'Close-Session', 'Cancel-Session'])('%s without BITS-Session-Id → 400', async (type) => {
    const h = new PacketHarness();
    const ack = await h.send({ type, range: type === 'Fragment' ? 'bytes 0-3/4' : undefined, body: type === 'Fragment' ? 'abcd' : '' });
    expect(ack).toEqual({ status: 400, headers: errorHeaders('0x80070057') });
  });
});

describe('TV-6 protocol negotiation', () => {
  test.each([
    ['an unsupported protocol', '{12345678-1234-1234-1234-123456789abc}'],
    ['an empty header', ''],
  ])('%s → 400, no session', async (_name, protocols) => {
    const h = new PacketHarness();
    expect(await h.create(undefined, protocols)).toEqual({ status: 400, headers: errorHeaders('0x80070057') });
    expect(h.storage.callsOf('createSession')).toHaveLength(0);
  });

  test('a missing header → 400, no session', async () => {
    const h = new PacketHarness();
    expect(await h.send({ type: 'Create-Session' })).toEqual({ status: 400, headers: errorHeaders('0x80070057') });
    expect(h.storage.callsOf('createSession')).toHaveLength(0);
  });

  test.each([
    '{12345678-1234-1234-1234-123456789abc} {7DF0354D-249B-430F-820D-3D2A9BEF4931}',
    '{12345678-1234-1234-1234-123456789abc},{7df0354d-249b-430f-820d-3d2a9bef4931}',
  ])('%s → the canonical protocol', async (protocols) => {
    const h = new PacketHarness();
    const ack = await h.create(undefined, protocols);
    expect(ack.status).toBe(200);
    expect(ack.headers['BITS-Protocol']).toBe(PROTOCOL);
    expect(h.storage.callsOf('createSession')[0]?.args[0]).toMatchObject({ protocol: PROTOCOL });
  });
});

describe('TV-7 invalid fragments', () => {
  const invalid = { status: 400, headers: errorHeaders('0x80070057') };

  test.each([
    ['end before start', { range: 'bytes 5-3/10', contentLength: 0, body: '' }],
    ['end ≥ total', { range: 'bytes 0-10/10', body: '01234567890' }],
    ['length ≠ range length', { range: 'bytes 0-5/10', body: '01234' }],
    ['header missing', { body: '0123' }],
    ['unsatisfied-range form', { range: 'bytes */10', body: '0123' }],
    ['Content-Encoding gzip', { range: 'bytes 0-3/10', body: '0123', headers: { 'Content-Encoding': 'gzip' } }],
  ])('%s → 400, nothing written', async (_why, packet) => {
    const h = new PacketHarness();
    const sid = await h.session();
    expect(await h.send({ type: 'Fragment', sessionId: sid, ...packet })).toEqual({
      status: 400,
      headers: { 'BITS-Session-Id': sid, ...invalid.headers },
    });
    expect(h.storage.callsOf('writeFragment')).toHaveLength(0);
    expect(h.storage.callsOf('updateSession')).toHaveLength(0);
  });

  test('total changed after an accepted fragment → 400', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    expect(await h.fragment(sid, 'bytes 6-9/12', '6789')).toEqual({
      status: 400,
      headers: { 'BITS-Session-Id': sid, ...invalid.headers },
    });
    expect(h.storage.callsOf('writeFragment')).toHaveLength(1);
  });

  test('Content-Encoding identity is accepted', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const ack = await h.fragment(sid, 'bytes 0-3/10', '0123', { headers: { 'Content-Encoding': 'Identity' } });
    expect(ack).toEqual(fragmentAck(sid, 4));
  });
});

describe('TV-8 upload too large (maxUploadSize = 8)', () => {
  test('500 + BG_E_TOO_LARGE, never 413', async () => {
    const h = new PacketHarness({ maxUploadSize: 8 });
    const sid = await h.session();
    expect(await h.fragment(sid, 'bytes 0-5/10', '012345')).toEqual({
      status: 500,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80200020') },
    });
    expect(h.storage.callsOf('writeFragment')).toHaveLength(0);
  });

  test('a total equal to the limit is accepted', async () => {
    const h = new PacketHarness({ maxUploadSize: 8 });
    const sid = await h.session();
    expect(await h.fragment(sid, 'bytes 0-7/8', '01234567')).toEqual(fragmentAck(sid, 8));
  });
});

describe('TV-9 fragment larger than the server accepts (maxFragmentSize = 4)', () => {
  test('413 with Connection: close and no error headers, body unread; a smaller fragment then works', async () => {
    const h = new PacketHarness({ maxFragmentSize: 4 });
    const sid = await h.session();
    const tooBig = await h.fragment(sid, 'bytes 0-5/10', '012345');
    expect(tooBig).toEqual({ status: 413, headers: { 'BITS-Session-Id': sid, Connection: 'close' } });
    expect(h.storage.callsOf('writeFragment')).toHaveLength(0);
    expect(await h.fragment(sid, 'bytes 0-3/10', '0123')).toEqual(fragmentAck(sid, 4));
  });
});

describe('TV-11 zero-byte file', () => {
  test.each([
    ['bytes 0--1/0'],
    ['bytes 0-18446744073709551615/0'],
    ['bytes 0-0/0'],
    ['bytes */0'],
    [undefined],
  ])('Content-Range %s with Content-Length 0 commits an empty file', async (range) => {
    const h = new PacketHarness();
    const sid = await h.session();
    expect(await h.fragment(sid, range, '')).toEqual(fragmentAck(sid, 0));
    expect(h.storage.fileText('report.bin')).toBe('');
    expect(await h.close(sid)).toEqual({ status: 200, headers: { 'BITS-Session-Id': sid } });
    expect(h.storage.fileText('report.bin')).toBe('');
  });

  test('Create-Session then Close-Session commits nothing', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    expect((await h.close(sid)).status).toBe(200);
    expect(h.storage.files.size).toBe(0);
    expect(h.storage.callsOf('commit')).toHaveLength(0);
  });

  test('a zero-byte fragment for a session with a non-zero total → 400', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    expect((await h.fragment(sid, 'bytes 0--1/0', '')).status).toBe(400);
    expect((await h.fragment(sid, undefined, '')).status).toBe(400);
  });
});

describe('TV-12 close before completion', () => {
  test('Close deletes the partial data; the destination is not created', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    expect(await h.close(sid)).toEqual({ status: 200, headers: { 'BITS-Session-Id': sid } });
    expect(h.storage.files.size).toBe(0);
    expect(h.storage.dataOf(sid)?.length).toBe(0);
    expect(h.storage.callsOf('endSession')[0]?.args.slice(0, 2)).toEqual([sid, 'closed']);
  });

  test('Close before completion leaves an existing destination untouched (allowOverwrites)', async () => {
    const h = new PacketHarness({ allowOverwrites: true });
    h.storage.files.set('report.bin', Buffer.from('old'));
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    await h.close(sid);
    expect(h.storage.fileText('report.bin')).toBe('old');
  });
});

describe('TV-13 unknown or missing packet type', () => {
  test.each([['Frobnicate'], ['Ack'], [undefined]])('%s → 400', async (type) => {
    const h = new PacketHarness();
    expect(await h.send({ type })).toEqual({ status: 400, headers: errorHeaders('0x80070057') });
  });

  test.each(['ping', 'PING', 'create-session', 'CREATE-SESSION'])('%s is accepted', async (type) => {
    const h = new PacketHarness();
    const ack = await h.send({ type, headers: { 'BITS-Supported-Protocols': PROTOCOL } });
    expect(ack.status).toBe(200);
  });

  test('FRAGMENT in capitals is accepted', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    expect(await h.send({ type: 'FRAGMENT', sessionId: sid, range: 'bytes 0-3/4', body: 'abcd' })).toEqual(
      fragmentAck(sid, 4),
    );
  });
});

describe('TV-14 missing Content-Length', () => {
  test('Create-Session without Content-Length → 411', async () => {
    const h = new PacketHarness();
    const ack = await h.send({
      type: 'Create-Session',
      contentLength: null,
      headers: { 'BITS-Supported-Protocols': PROTOCOL },
    });
    expect(ack).toEqual({ status: 411, headers: errorHeaders('0x80070057') });
  });

  test('a chunked Fragment → 411', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const ack = await h.fragment(sid, 'bytes 0-3/4', 'abcd', {
      contentLength: null,
      headers: { 'Transfer-Encoding': 'chunked' },
    });
    expect(ack).toEqual({ status: 411, headers: errorHeaders('0x80070057') });
    expect(h.storage.callsOf('writeFragment')).toHaveLength(0);
  });
});

describe('TV-15 Host-Id', () => {
  test('hostId = node7: both Host-Id headers on Create-Session; later packets with Host: node7 work', async () => {
    const h = new PacketHarness({ hostId: 'node7' });
    const created = await h.create();
    expect(created.headers).toMatchObject({ 'BITS-Host-Id': 'node7', 'BITS-Host-Id-Fallback-Timeout': '86400' });
    const sid = created.headers['BITS-Session-Id'] as string;
    const ack = await h.fragment(sid, 'bytes 0-3/4', 'abcd', { headers: { Host: 'node7' } });
    expect(ack).toEqual(fragmentAck(sid, 4));
  });

  test('a configured fallback timeout is sent', async () => {
    const h = new PacketHarness({ hostId: 'node7', hostIdFallbackTimeout: 600 });
    expect((await h.create()).headers['BITS-Host-Id-Fallback-Timeout']).toBe('600');
  });

  test('no Host-Id headers when hostId is not set', async () => {
    const h = new PacketHarness();
    const headers = (await h.create()).headers;
    expect(headers).not.toHaveProperty('BITS-Host-Id');
    expect(headers).not.toHaveProperty('BITS-Host-Id-Fallback-Timeout');
  });
});

describe('TV-16 destination exists', () => {
  test('overwrites not allowed: 403 + E_ACCESSDENIED, no session', async () => {
    const h = new PacketHarness();
    h.storage.files.set('report.bin', Buffer.from('old'));
    expect(await h.create()).toEqual({ status: 403, headers: errorHeaders('0x80070005') });
    expect(h.storage.callsOf('createSession')).toHaveLength(0);
  });

  test('allowOverwrites: 200, and the old file is replaced after completion', async () => {
    const h = new PacketHarness({ allowOverwrites: true });
    h.storage.files.set('report.bin', Buffer.from('old'));
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-9/10', '0123456789');
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
    expect(h.storage.callsOf('commit')[0]?.args[1]).toEqual({ overwrite: true });
  });

  test('a file that appears during the upload is refused again at commit', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    h.storage.files.set('report.bin', Buffer.from('other'));
    expect(await h.fragment(sid, 'bytes 6-9/10', '6789')).toEqual({
      status: 403,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80070005') },
    });
    expect(h.storage.fileText('report.bin')).toBe('other');
  });
});

describe('TV-17 uploads disabled', () => {
  test.each([
    ['Ping', {}],
    ['Create-Session', { headers: { 'BITS-Supported-Protocols': PROTOCOL } }],
    ['Fragment', { sessionId: '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}', range: 'bytes 0-3/4', body: 'abcd' }],
    ['Close-Session', { sessionId: '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}' }],
    ['Cancel-Session', { sessionId: '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}' }],
    ['Frobnicate', {}],
  ])('%s → 501 + E_ACCESSDENIED', async (type, more) => {
    const h = new PacketHarness({ enabled: false });
    expect(await h.send({ type, ...more })).toEqual({ status: 501, headers: errorHeaders('0x80070005') });
    expect(h.storage.calls).toHaveLength(0);
  });
});
