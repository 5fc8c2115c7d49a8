/**
 * Fragment streaming beyond the §16 vectors: bodies reach the adapter as streams, a body cut short
 * keeps only its durable prefix and never completes an upload (§6.3), work on one session is
 * serialised while different sessions run in parallel (§5.6), and storage faults become Acks (§8.5).
 */
import { PassThrough, Readable } from 'node:stream';
import { PacketHarness, errorHeaders } from '../helpers/packet-harness';

function ackOf(sid: string, received: number, status = 200) {
  return { status, headers: { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': String(received) } };
}

/** A body that sends `first`, then fails like an aborted request. */
function abortingBody(first: string): Readable {
  const body = new PassThrough();
  body.write(Buffer.from(first));
  setImmediate(() => body.destroy(Object.assign(new Error('aborted'), { code: 'ECONNRESET' })));
  return body;
}

describe('streaming', () => {
  test('a body arriving in many chunks is stored in order', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const chunks = ['01', '23', '4', '56789'].map((text) => Buffer.from(text));
    expect(await h.fragment(sid, 'bytes 0-9/10', Readable.from(chunks), { contentLength: 10 })).toEqual(ackOf(sid, 10));
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
  });

  test('an overlap that ends inside a later chunk skips exactly R - S bytes', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-4/10', '01234');
    const chunks = ['x', 'xx', 'x56', '789'].map((text) => Buffer.from(text));
    expect(await h.fragment(sid, 'bytes 1-9/10', Readable.from(chunks), { contentLength: 9 })).toEqual(ackOf(sid, 10));
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
  });

  test('large offsets near 2^53 are carried exactly', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const total = Number.MAX_SAFE_INTEGER;
    expect(await h.fragment(sid, `bytes 0-3/${total}`, 'abcd')).toEqual(ackOf(sid, 4));
    expect(await h.fragment(sid, `bytes 9-12/${total}`, 'abcd')).toEqual(ackOf(sid, 4, 416));
    expect((await h.fragment(sid, `bytes 0-3/${total + 1}`, 'abcd')).status).toBe(400);
  });
});

describe('a body cut short (client abort)', () => {
  test('the durable prefix is kept, the upload is not complete, the next Ack reports the prefix', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const cut = await h.fragment(sid, 'bytes 0-9/10', abortingBody('0123'), { contentLength: 10 });
    expect(cut).toEqual(ackOf(sid, 4));
    expect(h.storage.callsOf('commit')).toHaveLength(0);
    // The client resends the whole fragment: case B, only the missing bytes are written.
    expect(await h.fragment(sid, 'bytes 0-9/10', '0123456789')).toEqual(ackOf(sid, 10));
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
  });

  test('a body that ends early without an error is not taken for a whole one', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const short = Readable.from([Buffer.from('012345678')]);
    const ack = await h.fragment(sid, 'bytes 0-9/10', short, { contentLength: 10 });
    expect(Number(ack.headers['BITS-Received-Content-Range'])).toBeLessThan(10);
    expect(h.storage.callsOf('commit')).toHaveLength(0);
    expect(h.storage.files.size).toBe(0);
  });

  test('a body longer than Content-Length fails; no byte past the declared length is stored', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const long = Readable.from([Buffer.from('0123'), Buffer.from('4567')]);
    const ack = await h.fragment(sid, 'bytes 0-3/4', long, { contentLength: 4 });
    expect(Number(ack.headers['BITS-Received-Content-Range'])).toBeLessThanOrEqual(4);
    expect(h.storage.dataOf(sid)?.toString() ?? '').not.toContain('4');
    expect(h.storage.callsOf('commit')).toHaveLength(0);
  });

  test('a body already read by other middleware → 500, nothing written', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const consumed = Readable.from([Buffer.from('0123')]);
    for await (const chunk of consumed) expect(chunk).toBeDefined();
    const ack = await h.fragment(sid, 'bytes 0-3/10', consumed, { contentLength: 4 });
    expect(ack).toEqual({ status: 500, headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80004005') } });
    expect(h.storage.callsOf('writeFragment')).toHaveLength(0);
  });
});

describe('per-session serialisation (§5.6)', () => {
  test('two fragments for one session never reach the adapter at once; the second sees the first', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const release = h.storage.hold('writeFragment');
    const first = h.fragment(sid, 'bytes 0-5/10', '012345');
    const second = h.fragment(sid, 'bytes 0-9/10', '0123456789');
    await new Promise((resolve) => setImmediate(resolve));
    expect(h.locks.size).toBe(1);
    release();
    expect(await first).toEqual(ackOf(sid, 6));
    expect(await second).toEqual(ackOf(sid, 10));
    expect(h.storage.maxConcurrentWrites).toBe(1);
    expect(h.storage.callsOf('writeFragment').map((call) => call.args[1])).toEqual([0, 6]);
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
    expect(h.locks.size).toBe(0);
  });

  test('different sessions run in parallel', async () => {
    const h = new PacketHarness();
    const a = await h.session('/a.bin');
    const b = await h.session('/b.bin');
    const bodyA = new PassThrough();
    const pendingA = h.fragment(a, 'bytes 0-3/4', bodyA, { url: '/a.bin', contentLength: 4 });
    // A's body is still open; B completes meanwhile.
    expect(await h.fragment(b, 'bytes 0-3/4', 'bbbb', { url: '/b.bin' })).toEqual(ackOf(b, 4));
    bodyA.end(Buffer.from('aaaa'));
    expect(await pendingA).toEqual(ackOf(a, 4));
    expect(h.locks.size).toBe(0);
  });

  test('a failing task releases the lock', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    h.storage.failNext('writeFragment', new Error('boom'));
    expect((await h.fragment(sid, 'bytes 0-3/10', '0123')).status).toBe(500);
    expect(h.locks.size).toBe(0);
    expect(await h.fragment(sid, 'bytes 0-3/10', '0123')).toEqual(ackOf(sid, 4));
  });
});

describe('storage faults (§8.5)', () => {
  test('a write failure → 500 + E_FAIL with the session id', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    h.storage.failNext('writeFragment', new Error('I/O error'));
    expect(await h.fragment(sid, 'bytes 0-3/10', '0123')).toEqual({
      status: 500,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80004005') },
    });
  });

  test.each(['ENOSPC', 'EDQUOT'])('%s → 500 + 0x80070070 (disk full, §15 A17)', async (code) => {
    const h = new PacketHarness();
    const sid = await h.session();
    h.storage.failNext('writeFragment', Object.assign(new Error('full'), { code }));
    expect(await h.fragment(sid, 'bytes 0-3/10', '0123')).toEqual({
      status: 500,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80070070') },
    });
  });

  test('a failure in Create-Session → 500 without session id', async () => {
    const h = new PacketHarness();
    h.storage.failNext('createSession', new Error('boom'));
    expect(await h.create()).toEqual({ status: 500, headers: errorHeaders('0x80004005') });
  });

  test('an adapter reporting more bytes than it was given → 500, nothing completes', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    jest.spyOn(h.storage, 'writeFragment').mockResolvedValueOnce(10);
    expect((await h.fragment(sid, 'bytes 0-3/10', '0123')).status).toBe(500);
    expect(h.storage.callsOf('commit')).toHaveLength(0);
  });

  test('a commit that failed is retried by a resend of the final fragment', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    h.storage.failNext('commit', new Error('rename failed'));
    expect((await h.fragment(sid, 'bytes 0-9/10', '0123456789')).status).toBe(500);
    expect(await h.fragment(sid, 'bytes 0-9/10', '0123456789')).toEqual(ackOf(sid, 10));
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
  });

  test('commit finding a directory → 400', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    h.storage.directories.add('report.bin');
    expect(await h.fragment(sid, 'bytes 0-3/4', 'abcd')).toEqual({
      status: 400,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80070057') },
    });
  });
});
