/**
 * Completion exactly once, with SHA-256 (bits-protocol.md §6.4, §5.5, §10.4, TV-3, TV-10): the
 * hash computed while the bytes stream in, the order hash → record → commit → hook → event →
 * delivered, repeats of the final fragment, a failing hook, partial durability, restarts, and the
 * events of a whole upload.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { CompletedUpload } from '../../lib/events';
import type { SessionRecord } from '../../lib/storage/adapter';
import { PacketHarness, errorHeaders } from '../helpers/packet-harness';

const sha256 = (text: string): string => createHash('sha256').update(text, 'latin1').digest('hex');
const SHA_0_9 = sha256('0123456789');

function fragmentAck(sid: string, received: number, status = 200) {
  return { status, headers: { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': String(received) } };
}

/** A record as an earlier process left it: `receiving`, bytes stored, nothing in this one's memory. */
function leftOver(id: string, received: number, total: number, overrides: Partial<SessionRecord> = {}): SessionRecord {
  return {
    id,
    destination: ['report.bin'],
    urlPath: '/report.bin',
    principal: undefined,
    protocol: '{7df0354d-249b-430f-820d-3d2a9bef4931}',
    totalLength: total,
    receivedLength: received,
    state: 'receiving',
    createdAt: 1_700_000_000_000,
    updatedAt: 1_700_000_000_000,
    sha256: undefined,
    delivered: false,
    reply: undefined,
    ...overrides,
  };
}

const SID = '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}';

describe('events of a whole upload (TV-1)', () => {
  test('session-created, progress per stored fragment, upload-completed, session-closed, in that order', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    await h.fragment(sid, 'bytes 4-9/10', '456789');
    await h.close(sid);
    expect(h.eventNames()).toEqual(['session-created', 'progress', 'progress', 'upload-completed', 'session-closed']);
    const session = { sessionId: sid, destination: ['report.bin'], urlPath: '/report.bin', principal: undefined };
    expect(h.events.map((event) => event.payload)).toEqual([
      session,
      { ...session, bytes: 6, offset: 6, total: 10 },
      { ...session, bytes: 4, offset: 10, total: 10 },
      { ...session, size: 10, sha256: SHA_0_9 },
      session,
    ]);
  });

  test('duplicates, gaps and refused fragments emit nothing', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    const before = h.events.length;
    expect((await h.fragment(sid, 'bytes 0-5/10', '012345')).status).toBe(200);
    expect((await h.fragment(sid, 'bytes 8-9/10', '89')).status).toBe(416);
    expect((await h.fragment(sid, 'bytes 6-9/12', '6789')).status).toBe(400);
    expect(h.events.length).toBe(before);
  });

  test('a cancelled session emits session-cancelled, a repeated Cancel nothing', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.cancel(sid);
    await h.cancel(sid);
    await h.close(sid);
    expect(h.eventNames()).toEqual(['session-created', 'session-cancelled']);
  });
});

describe('SHA-256 computed while streaming (§6.4)', () => {
  test('the record gets the hash before the commit; the file is never read back', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-3/10', '0123');
    await h.fragment(sid, 'bytes 4-9/10', '456789');
    const methods = h.storage.calls.map((call) => call.method);
    const recorded = h.storage.calls.findIndex(
      (call) => call.method === 'updateSession' && (call.args[1] as { sha256?: string }).sha256 === SHA_0_9,
    );
    expect(recorded).toBeGreaterThan(-1);
    expect(recorded).toBeLessThan(methods.indexOf('commit'));
    expect(methods).not.toContain('readData');
    expect(h.runtime.hashes.size).toBe(0);
  });

  test('overlapping bytes are hashed once (TV-3)', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-5/10', '012345');
    await h.fragment(sid, 'bytes 2-9/10', 'XXXX6789');
    expect(h.eventsOf('upload-completed')[0]?.sha256).toBe(SHA_0_9);
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
  });

  test('a zero-byte upload has the hash of nothing (TV-11)', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    expect(await h.fragment(sid, 'bytes 0--1/0', '')).toEqual(fragmentAck(sid, 0));
    expect(h.eventsOf('upload-completed')).toEqual([expect.objectContaining({ size: 0, sha256: sha256('') })]);
    expect(h.eventsOf('progress')).toEqual([]);
  });

  test('a body cut short: the durable prefix is hashed, the rest comes with the resend', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    const body = new Readable({ read() {} });
    body.push('0123');
    setImmediate(() => body.destroy(new Error('client went away')));
    expect(await h.fragment(sid, 'bytes 0-9/10', body, { contentLength: 10 })).toEqual(fragmentAck(sid, 4));
    expect(await h.fragment(sid, 'bytes 4-9/10', '456789')).toEqual(fragmentAck(sid, 10));
    expect(h.eventsOf('upload-completed')[0]?.sha256).toBe(SHA_0_9);
    expect(h.storage.callsOf('readData')).toHaveLength(0);
  });

  test('an adapter that keeps back part of a write: the hash goes back to its checkpoint and reads only what it missed', async () => {
    const h = new PacketHarness();
    h.storage.withheldTail = 2;
    const sid = await h.session();
    expect(await h.fragment(sid, 'bytes 0-5/10', '012345')).toEqual(fragmentAck(sid, 4));
    expect(h.eventsOf('progress')).toEqual([expect.objectContaining({ bytes: 4, offset: 4 })]);
    h.storage.withheldTail = 0;
    expect(await h.fragment(sid, 'bytes 4-9/10', '456789')).toEqual(fragmentAck(sid, 10));
    expect(h.storage.callsOf('readData').map((call) => call.args)).toEqual([[sid, 0]]);
    expect(h.eventsOf('upload-completed')[0]?.sha256).toBe(SHA_0_9);
  });

  test('a full disk: nothing unwritten acknowledged, no commit, upload-failed (§8.5)', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-3/10', '0123');
    const full = Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
    h.storage.failNext('writeFragment', full);
    expect(await h.fragment(sid, 'bytes 4-9/10', '456789')).toEqual({
      status: 500,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80070070') },
    });
    expect(h.storage.callsOf('commit')).toHaveLength(0);
    expect(h.eventsOf('upload-failed')).toEqual([{ sessionId: sid, error: full }]);
    // Space again: the resend completes with the right hash, without reading anything back.
    expect(await h.fragment(sid, 'bytes 4-9/10', '456789')).toEqual(fragmentAck(sid, 10));
    expect(h.eventsOf('upload-completed')[0]?.sha256).toBe(SHA_0_9);
    expect(h.storage.callsOf('readData')).toHaveLength(0);
  });

  test('a storage that cannot give the missing bytes back → 500, and the next try starts over', async () => {
    const h = new PacketHarness();
    h.storage.seed(leftOver(SID, 4, 10), Buffer.from('0123'));
    h.storage.failNext('readData', new Error('disk read error'));
    expect((await h.fragment(SID, 'bytes 4-9/10', '456789')).headers).toMatchObject(errorHeaders('0x80004005'));
    expect(h.storage.callsOf('writeFragment')).toHaveLength(0);
    expect(await h.fragment(SID, 'bytes 4-9/10', '456789')).toEqual(fragmentAck(SID, 10));
    expect(h.eventsOf('upload-completed')[0]?.sha256).toBe(SHA_0_9);
  });
});

describe('SHA-256 only when something receives it (§6.4)', () => {
  /** A harness whose upload-completed events nobody listens to (the standalone command's case). */
  function unobserved(options: ConstructorParameters<typeof PacketHarness>[0] = {}): PacketHarness {
    const h = new PacketHarness(options);
    h.emitter.removeAllListeners('upload-completed');
    return h;
  }
  const recorded = (h: PacketHarness, field: 'sha256' | 'delivered'): unknown[] =>
    h.storage.callsOf('updateSession').filter((call) => (call.args[1] as Record<string, unknown>)[field] !== undefined);

  test('without onUploadComplete, a reply handler or an upload-completed listener, nothing is hashed, read back or delivered', async () => {
    const h = unobserved();
    const sid = await h.session();
    expect(await h.fragment(sid, 'bytes 0-3/10', '0123')).toEqual(fragmentAck(sid, 4));
    expect(h.runtime.hashes.size).toBe(0);
    expect(await h.fragment(sid, 'bytes 4-9/10', '456789')).toEqual(fragmentAck(sid, 10));
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
    expect(recorded(h, 'sha256')).toEqual([]);
    expect(recorded(h, 'delivered')).toEqual([]);
    expect(h.storage.callsOf('readData')).toEqual([]);
    // Attached after the completion: the repeat of the final fragment tells it nothing.
    const late = jest.fn();
    h.emitter.on('upload-completed', late);
    expect(await h.fragment(sid, 'bytes 4-9/10', '456789')).toEqual(fragmentAck(sid, 10));
    expect(late).not.toHaveBeenCalled();
  });

  test('a listener added during the upload gets the SHA-256 of every byte, those stored before read back once', async () => {
    const h = unobserved();
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-3/10', '0123');
    const completed: CompletedUpload[] = [];
    h.emitter.on('upload-completed', (upload) => completed.push(upload));
    expect(await h.fragment(sid, 'bytes 4-9/10', '456789')).toEqual(fragmentAck(sid, 10));
    expect(completed).toEqual([expect.objectContaining({ size: 10, sha256: SHA_0_9 })]);
    expect(h.storage.callsOf('readData').map((call) => call.args)).toEqual([[sid, 0]]);
    expect(recorded(h, 'delivered')).toHaveLength(1);
  });

  const receivers: [string, (receive: (upload: CompletedUpload) => void) => ConstructorParameters<typeof PacketHarness>[0]][] = [
    ['onUploadComplete', (receive) => ({ onUploadComplete: receive })],
    [
      'a reply handler',
      (receive) => ({
        reply: (upload) => {
          receive(upload);
          return 'REPLY';
        },
      }),
    ],
  ];
  test.each(receivers)('%s alone has it computed while the bytes stream', async (_receiver, optionsWith) => {
    const received: CompletedUpload[] = [];
    const h = unobserved(optionsWith((upload) => received.push(upload)));
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-3/10', '0123');
    await h.fragment(sid, 'bytes 4-9/10', '456789');
    expect(received).toEqual([expect.objectContaining({ sha256: SHA_0_9 })]);
    expect(h.storage.callsOf('readData')).toEqual([]);
  });
});

describe('after a restart (§5: sessions survive the process)', () => {
  test('the bytes stored before the restart are read once, at the next fragment; later ones stream', async () => {
    const before = new PacketHarness();
    const sid = await before.session();
    await before.fragment(sid, 'bytes 0-3/10', '0123');
    const after = before.restart();
    expect(await after.fragment(sid, 'bytes 4-6/10', '456')).toEqual(fragmentAck(sid, 7));
    expect(await after.fragment(sid, 'bytes 7-9/10', '789')).toEqual(fragmentAck(sid, 10));
    expect(after.storage.callsOf('readData').map((call) => call.args)).toEqual([[sid, 0]]);
    expect(after.eventsOf('upload-completed')[0]?.sha256).toBe(SHA_0_9);
  });

  test('all bytes stored before the restart: the hash is finished at the repeated final fragment', async () => {
    const h = new PacketHarness();
    h.storage.seed(leftOver(SID, 10, 10), Buffer.from('0123456789'));
    expect(await h.fragment(SID, 'bytes 6-9/10', '6789')).toEqual(fragmentAck(SID, 10));
    expect(h.storage.callsOf('readData').map((call) => call.args)).toEqual([[SID, 0]]);
    expect(h.storage.callsOf('commit')).toHaveLength(1);
    expect(h.eventsOf('upload-completed')).toEqual([expect.objectContaining({ sessionId: SID, size: 10, sha256: SHA_0_9 })]);
  });

  test('a hash recorded before a crash is used as it is, nothing read', async () => {
    const h = new PacketHarness();
    h.storage.seed(leftOver(SID, 10, 10, { sha256: 'ab'.repeat(32) }), Buffer.from('0123456789'));
    await h.fragment(SID, 'bytes 6-9/10', '6789');
    expect(h.storage.callsOf('readData')).toHaveLength(0);
    expect(h.eventsOf('upload-completed')[0]?.sha256).toBe('ab'.repeat(32));
  });

  test('committed but not delivered (a crash between commit and hook): the resend delivers, without a commit', async () => {
    const onUploadComplete = jest.fn();
    const h = new PacketHarness({ onUploadComplete });
    h.storage.seed(leftOver(SID, 10, 10, { state: 'complete', sha256: SHA_0_9 }));
    expect(await h.fragment(SID, 'bytes 6-9/10', '6789')).toEqual(fragmentAck(SID, 10));
    expect(h.storage.callsOf('commit')).toHaveLength(0);
    expect(onUploadComplete).toHaveBeenCalledTimes(1);
    expect(h.eventsOf('upload-completed')).toHaveLength(1);
    expect(h.storage.callsOf('updateSession').map((call) => call.args[1])).toEqual([{ delivered: true }]);
  });

  test('delivered before the restart: the resend gets the 200 Ack and nothing else', async () => {
    const onUploadComplete = jest.fn();
    const h = new PacketHarness({ onUploadComplete });
    h.storage.seed(leftOver(SID, 10, 10, { state: 'complete', sha256: SHA_0_9, delivered: true }));
    expect(await h.fragment(SID, 'bytes 6-9/10', '6789')).toEqual(fragmentAck(SID, 10));
    expect(onUploadComplete).not.toHaveBeenCalled();
    expect(h.events).toEqual([]);
  });

  test('a complete record without a hash (an older version completed it) is not delivered', async () => {
    const onUploadComplete = jest.fn();
    const h = new PacketHarness({ onUploadComplete });
    h.storage.seed(leftOver(SID, 10, 10, { state: 'complete' }));
    expect(await h.fragment(SID, 'bytes 6-9/10', '6789')).toEqual(fragmentAck(SID, 10));
    expect(onUploadComplete).not.toHaveBeenCalled();
    expect(h.events).toEqual([]);
  });
});

describe('exactly once (§6.4 "NotifyCache", TV-3 repeated final fragment, TV-10)', () => {
  test('the hook and the event once, then delivered is recorded; repeats only get the Ack', async () => {
    const calls: string[] = [];
    const h = new PacketHarness({
      onUploadComplete: async (upload, req) => {
        calls.push(`hook ${upload.sha256} ${req.url ?? ''}`);
      },
    });
    h.emitter.on('upload-completed', () => calls.push('event'));
    const sid = await h.session();
    await h.fragment(sid, 'bytes 0-9/10', '0123456789');
    for (let repeat = 0; repeat < 3; repeat++) {
      expect(await h.fragment(sid, 'bytes 6-9/10', '6789')).toEqual(fragmentAck(sid, 10));
    }
    expect(calls).toEqual([`hook ${SHA_0_9} /report.bin`, 'event']);
    expect(h.storage.callsOf('commit')).toHaveLength(1);
    const updates = h.storage.callsOf('updateSession').map((call) => call.args[1]);
    expect(updates).toEqual([{ totalLength: 10, updatedAt: h.now }, { sha256: SHA_0_9 }, { delivered: true }]);
  });

  test('the hook sees the file in place and the request of the final fragment', async () => {
    let seen: { file: string | undefined; upload: CompletedUpload; user: unknown } | undefined;
    const h = new PacketHarness({
      onUploadComplete: (upload, req) => {
        seen = { file: h.storage.fileText('report.bin'), upload, user: (req as { user?: unknown }).user };
      },
    });
    const sid = await h.session(undefined, { user: 'alice' });
    await h.fragment(sid, 'bytes 0-9/10', '0123456789', { user: 'alice' });
    expect(seen).toEqual({
      file: '0123456789',
      upload: { sessionId: sid, destination: ['report.bin'], urlPath: '/report.bin', principal: 'alice', size: 10, sha256: SHA_0_9 },
      user: 'alice',
    });
  });

  test('a failing hook: error Ack with context 0x7, no event, not delivered; the resend calls it again (TV-10)', async () => {
    let fail = true;
    const hook = jest.fn(async () => {
      if (fail) throw Object.assign(new Error('queue unavailable'), { status: 503 });
    });
    const h = new PacketHarness({ onUploadComplete: hook });
    const sid = await h.session();
    expect(await h.fragment(sid, 'bytes 0-9/10', '0123456789')).toEqual({
      status: 503,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80004005', '0x7') },
    });
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
    expect(h.eventsOf('upload-completed')).toEqual([]);
    expect(h.eventsOf('upload-failed')).toEqual([{ sessionId: sid, error: expect.objectContaining({ message: 'queue unavailable' }) }]);
    fail = false;
    expect(await h.fragment(sid, 'bytes 6-9/10', '6789')).toEqual(fragmentAck(sid, 10));
    expect(hook).toHaveBeenCalledTimes(2);
    expect(h.eventsOf('upload-completed')).toHaveLength(1);
    expect(h.storage.callsOf('commit')).toHaveLength(1);
    await h.fragment(sid, 'bytes 6-9/10', '6789');
    expect(hook).toHaveBeenCalledTimes(2);
  });

  test.each([
    ['a 4xx status and an errorCode', 409, '0x80070020', { status: 409, errorCode: 0x80070020 }],
    ['a signed errorCode', 500, '0x80070005', { status: 500, errorCode: -2147024891 }],
    ['a status outside 400-599', 500, '0x80004005', { status: 302 }],
    ['a non-numeric errorCode', 500, '0x80004005', { errorCode: '0x1' }],
  ])('a hook error with %s → %d %s, context 0x7', async (_name, status, code, fields) => {
    const h = new PacketHarness({
      onUploadComplete: () => {
        throw Object.assign(new Error('no'), fields);
      },
    });
    const sid = await h.session();
    expect(await h.fragment(sid, 'bytes 0-3/4', 'abcd')).toEqual({
      status,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders(code, '0x7') },
    });
  });

  test('a hook that throws a non-Error → 500 E_FAIL 0x7, reported', async () => {
    const h = new PacketHarness({
      onUploadComplete: () => {
        throw 'nope';
      },
    });
    const sid = await h.session();
    expect((await h.fragment(sid, 'bytes 0-3/4', 'abcd')).headers).toMatchObject(errorHeaders('0x80004005', '0x7'));
    expect(h.eventsOf('upload-failed')).toEqual([{ sessionId: sid, error: expect.objectContaining({ code: 'BITS_APPLICATION_ERROR' }) }]);
  });

  test('recording delivered fails: 500, and the resend tells the application again (the documented window)', async () => {
    // The first call makes the next storage update, the one recording `delivered`, fail.
    const hook = jest.fn(() => {
      if (hook.mock.calls.length === 1) h.storage.failNext('updateSession', new Error('record write failed'));
    });
    const h = new PacketHarness({ onUploadComplete: hook });
    const sid = await h.session();
    expect((await h.fragment(sid, 'bytes 0-3/4', 'abcd')).status).toBe(500);
    expect((await h.fragment(sid, 'bytes 0-3/4', 'abcd')).status).toBe(200);
    expect(hook).toHaveBeenCalledTimes(2);
    expect(h.eventsOf('upload-completed')).toHaveLength(2);
    expect((await h.storage.getSession(sid))?.delivered).toBe(true);
  });

  test('a commit refused (a file appeared, §15 A7): 403, the hash kept in the record, no event', async () => {
    const h = new PacketHarness();
    const sid = await h.session();
    h.storage.files.set('report.bin', Buffer.from('other'));
    expect((await h.fragment(sid, 'bytes 0-3/4', 'abcd')).status).toBe(403);
    expect((await h.storage.getSession(sid))?.sha256).toBe(sha256('abcd'));
    expect(h.eventsOf('upload-completed')).toEqual([]);
    expect(h.eventsOf('upload-failed')).toEqual([]);
  });
});

describe('listeners', () => {
  test('a listener that throws or rejects never changes an Ack, and later listeners still run', async () => {
    const h = new PacketHarness();
    const later = jest.fn();
    h.emitter.on('progress', () => {
      throw new Error('listener bug');
    });
    h.emitter.on('progress', async () => {
      throw new Error('async listener bug');
    });
    h.emitter.on('progress', later);
    h.emitter.once('upload-completed', () => {
      throw new Error('once');
    });
    const sid = await h.session();
    expect(await h.fragment(sid, 'bytes 0-9/10', '0123456789')).toEqual(fragmentAck(sid, 10));
    expect(later).toHaveBeenCalledTimes(1);
    expect(h.emitter.listenerCount('upload-completed')).toBe(1);
    await new Promise((resolve) => setImmediate(resolve));
  });
});
