/**
 * Upload-reply endpoints at the packet level (bits-protocol.md §10, §6.4, TV-10), against the stub
 * adapter: when the handler is called and with what, how its result is stored and recorded, the
 * order hash → reply → commit (or not) → onUploadComplete → delivered, the `BITS-Reply-URL` of the
 * final Ack and its repeats (also after a restart), failures and their retries, and that plain
 * endpoints never name a reply (§15 A23).
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { ReplyHandler, ReplyResult, ReplyUpload } from '../../lib/reply/types';
import type { SessionRecord, StoredReply } from '../../lib/storage/adapter';
import { PacketHarness, errorHeaders } from '../helpers/packet-harness';
import { StubStorage } from '../helpers/stub-storage';

const sha256 = (text: string): string => createHash('sha256').update(text, 'latin1').digest('hex');
const SHA_0_9 = sha256('0123456789');
const NOW = 1_700_000_000_000;
const SID = '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}';
const urlOf = (sid: string, base = 'http://bits.example.test'): string =>
  `${base}/BITS-Sessions/Replies/${encodeURIComponent(sid)}/responsefile.bin`;


/** A handler that records its calls and answers with `result` (a function of the call number). */
function recordingHandler(result: (call: number, upload: ReplyUpload) => ReplyResult | Promise<ReplyResult> = () => 'HELLO') {
  const calls: { upload: ReplyUpload; req: IncomingMessage; data: string }[] = [];
  const handler: ReplyHandler = async (upload, req) => {
    const chunks: Buffer[] = [];
    for await (const chunk of await upload.read()) chunks.push(chunk as Buffer);
    calls.push({ upload, req, data: Buffer.concat(chunks).toString('latin1') });
    return result(calls.length, upload);
  };
  return { handler, calls };
}

/** TV-1 up to the final fragment: a session with bytes 0-5 of "0123456789". */
async function halfway(h: PacketHarness): Promise<string> {
  const sid = await h.session();
  const first = await h.fragment(sid, 'bytes 0-5/10', '012345');
  // TV-10: the first fragment's Ack (R = 6) names no reply.
  expect(first).toEqual({ status: 200, headers: { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '6' } });
  return sid;
}

const finalFragment = (h: PacketHarness, sid: string, more = {}) => h.fragment(sid, 'bytes 6-9/10', '6789', more);

function replyAck(sid: string, url = urlOf(sid)) {
  return {
    status: 200,
    headers: { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '10', 'BITS-Reply-URL': url },
  };
}

async function record(h: PacketHarness, sid: string): Promise<SessionRecord> {
  const found = await h.storage.getSession(sid);
  if (found === undefined) throw new Error(`no record ${sid}`);
  return found;
}

describe('TV-10: the final fragment of an upload-reply endpoint', () => {
  test('calls the handler once, stores its reply, keeps the upload out of the destination, names the reply URL', async () => {
    const { handler, calls } = recordingHandler();
    const h = new PacketHarness({ reply: handler });
    const sid = await halfway(h);
    expect(calls).toEqual([]);
    expect(await finalFragment(h, sid)).toEqual(replyAck(sid));

    expect(calls).toHaveLength(1);
    const [call] = calls;
    expect(call?.data).toBe('0123456789');
    expect(call?.upload).toMatchObject({
      sessionId: sid,
      destination: ['report.bin'],
      urlPath: '/report.bin',
      principal: undefined,
      size: 10,
      sha256: SHA_0_9,
    });
    expect(call?.req.headers['content-range']).toBe('bytes 6-9/10');
    expect(call?.upload.req).toBe(call?.req);
    expect(await call?.upload.localFile()).toBeUndefined();

    expect(h.storage.replyOf(sid)?.toString()).toBe('HELLO');
    expect((await record(h, sid)).reply).toEqual({ kind: 'stored', size: 5, storedAt: NOW, copyToDestination: false });
    expect((await record(h, sid)).state).toBe('complete');
    expect((await record(h, sid)).delivered).toBe(true);
    // §10.1: not copied to the destination unless asked; the upload stays the session's.
    expect(h.storage.callsOf('commit')).toEqual([]);
    expect(h.storage.files.size).toBe(0);
    expect(h.storage.dataOf(sid)?.toString()).toBe('0123456789');
    expect(h.eventNames()).toEqual(['session-created', 'progress', 'progress', 'upload-completed']);
  });

  test('order: hash recorded → handler → reply stored and recorded → marked complete → onUploadComplete → delivered', async () => {
    const order: string[] = [];
    const h = new PacketHarness({
      reply: () => {
        order.push('reply');
        return 'HELLO';
      },
      onUploadComplete: () => {
        order.push('onUploadComplete');
      },
    });
    const sid = await halfway(h);
    const start = h.storage.calls.length;
    await finalFragment(h, sid);
    const storageSteps = h.storage.calls.slice(start).flatMap((call) => {
      if (call.method === 'updateSession') return [`update ${Object.keys(call.args[1] as object).join(',')}`];
      return ['writeReply', 'commit', 'readReply'].includes(call.method) ? [call.method] : [];
    });
    expect(storageSteps).toEqual(['update sha256', 'writeReply', 'update reply', 'update state,updatedAt', 'update delivered']);
    expect(order).toEqual(['reply', 'onUploadComplete']);
  });

  test('copyToDestination: true also commits the upload to its destination (§10.4)', async () => {
    const h = new PacketHarness({ reply: () => ({ body: 'HELLO', copyToDestination: true }) });
    const sid = await halfway(h);
    expect(await finalFragment(h, sid)).toEqual(replyAck(sid));
    expect(h.storage.callsOf('commit')).toHaveLength(1);
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
    expect((await record(h, sid)).reply).toEqual({ kind: 'stored', size: 5, storedAt: NOW, copyToDestination: true });
  });

  test('a static URL is the reply URL; nothing is stored (§10.4)', async () => {
    const h = new PacketHarness({ reply: () => ({ url: 'https://cdn.example.test/replies/r 1.bin' }) });
    const sid = await halfway(h);
    expect(await finalFragment(h, sid)).toEqual(replyAck(sid, 'https://cdn.example.test/replies/r%201.bin'));
    expect(h.storage.callsOf('writeReply')).toEqual([]);
    expect((await record(h, sid)).reply).toEqual({
      kind: 'url',
      url: 'https://cdn.example.test/replies/r%201.bin',
      copyToDestination: false,
    });
  });

  test('every Ack that reports R = total names the reply, also a late duplicate of an earlier fragment', async () => {
    const h = new PacketHarness({ reply: () => 'HELLO' });
    const sid = await halfway(h);
    await finalFragment(h, sid);
    expect(await h.fragment(sid, 'bytes 0-5/10', '012345')).toEqual(replyAck(sid));
  });

  test('a zero-byte upload gets a reply too (TV-11)', async () => {
    const { handler, calls } = recordingHandler(() => 'EMPTY IN');
    const h = new PacketHarness({ reply: handler });
    const sid = await h.session();
    expect(await h.fragment(sid, 'bytes 0--1/0', '')).toEqual({
      status: 200,
      headers: { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '0', 'BITS-Reply-URL': urlOf(sid) },
    });
    expect(calls.map((call) => [call.upload.size, call.data])).toEqual([[0, '']]);
  });

  test('Close after completion deletes the reply with the session data', async () => {
    const h = new PacketHarness({ reply: () => 'HELLO' });
    const sid = await halfway(h);
    await finalFragment(h, sid);
    expect((await h.close(sid)).status).toBe(200);
    expect(h.storage.replyOf(sid)).toBeUndefined();
    expect((await record(h, sid)).state).toBe('closed');
  });
});

describe('what the handler may return', () => {
  const stream = (...parts: string[]): Readable => Readable.from(parts.map((part) => Buffer.from(part)));

  test.each<[string, () => ReplyResult | Promise<ReplyResult>, string]>([
    ['a string, as UTF-8', () => 'héllo', 'héllo'],
    ['a Buffer', () => Buffer.from('HELLO'), 'HELLO'],
    [
      'a Uint8Array view',
      () => {
        const backing = Buffer.from('xxHELLOxx');
        return new Uint8Array(backing.buffer, backing.byteOffset + 2, 5);
      },
      'HELLO',
    ],
    ['a Readable', () => stream('HE', 'LL', 'O'), 'HELLO'],
    ['{ body: string }', () => ({ body: 'HELLO' }), 'HELLO'],
    ['{ body: Readable }', () => ({ body: stream('HELLO') }), 'HELLO'],
    ['{} (an empty reply)', () => ({}), ''],
    ['{ copyToDestination: false } (an empty reply)', () => ({ copyToDestination: false }), ''],
    ['an empty string', () => '', ''],
    ['a promise of a string', async () => 'HELLO', 'HELLO'],
  ])('%s', async (_name, result, stored) => {
    const h = new PacketHarness({ reply: result });
    const sid = await halfway(h);
    expect(await finalFragment(h, sid)).toEqual(replyAck(sid));
    expect(h.storage.replyOf(sid)?.toString('utf8')).toBe(stored);
    expect((await record(h, sid)).reply).toMatchObject({ kind: 'stored', size: Buffer.byteLength(stored) });
  });

  test('{ file }: the file is copied into storage', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'bits-reply-'));
    try {
      const file = path.join(dir, 'answer.bin');
      await fsp.writeFile(file, 'FROM A FILE');
      const h = new PacketHarness({ reply: () => ({ file }) });
      const sid = await halfway(h);
      expect(await finalFragment(h, sid)).toEqual(replyAck(sid));
      expect(h.storage.replyOf(sid)?.toString()).toBe('FROM A FILE');
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  test('localFile() names the storage file when the adapter has one', async () => {
    const storage = Object.assign(new StubStorage(), { localDataFile: async (id: string) => `/data/${id}` });
    const { handler, calls } = recordingHandler();
    const h = new PacketHarness({ reply: handler }, storage);
    const sid = await halfway(h);
    await finalFragment(h, sid);
    expect(await calls[0]?.upload.localFile()).toBe(`/data/${sid}`);
  });

  test.each<[string, () => unknown]>([
    ['undefined', () => undefined],
    ['null', () => null],
    ['a number', () => 42],
    ['{ body: 42 }', () => ({ body: 42 })],
    ['{ body, url }', () => ({ body: 'x', url: 'https://a.test/' })],
    ['{ body, file }', () => ({ body: 'x', file: '/tmp/x' })],
    ['{ file: "" }', () => ({ file: '' })],
    ['{ url: relative }', () => ({ url: '/replies/1' })],
    ['{ url: ftp }', () => ({ url: 'ftp://a.test/r' })],
    ['{ url: 7 }', () => ({ url: 7 })],
    ['{ copyToDestination: "yes" }', () => ({ body: 'x', copyToDestination: 'yes' })],
    ['a missing file', () => ({ file: '/nonexistent/bits-upload/reply.bin' })],
    ['a stream that fails', () => new Readable({ read() { this.destroy(new Error('the application failed')); } })],
    ['a stream that closes early', () => new Readable({ read() { this.push('HE'); this.destroy(); } })],
  ])('not a reply: %s → 500 + E_FAIL, context 0x7, nothing recorded; the next repeat asks again', async (_name, result) => {
    let calls = 0;
    const h = new PacketHarness({
      reply: () => {
        calls += 1;
        return (calls === 1 ? result() : 'HELLO') as ReplyResult;
      },
    });
    const sid = await halfway(h);
    expect(await finalFragment(h, sid)).toEqual({
      status: 500,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80004005', '0x7') },
    });
    expect((await record(h, sid)).reply).toBeUndefined();
    expect((await record(h, sid)).state).toBe('receiving');
    expect(h.eventsOf('upload-failed')).toHaveLength(1);
    expect(await finalFragment(h, sid)).toEqual(replyAck(sid));
    expect(calls).toBe(2);
    expect(h.storage.replyOf(sid)?.toString()).toBe('HELLO');
  });
});

describe('failures (§10.4, TV-10)', () => {
  test('a handler failing with status 503 → 503 + context 0x7, R stays; the next repeat calls it again', async () => {
    const { handler, calls } = recordingHandler((call) => {
      if (call === 1) throw Object.assign(new Error('busy'), { status: 503 });
      return 'HELLO';
    });
    const h = new PacketHarness({ reply: handler });
    const sid = await halfway(h);
    expect(await finalFragment(h, sid)).toEqual({
      status: 503,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80004005', '0x7') },
    });
    expect((await record(h, sid)).receivedLength).toBe(10);
    expect(h.storage.callsOf('writeReply')).toEqual([]);
    expect(h.eventsOf('upload-completed')).toEqual([]);
    expect(h.eventsOf('upload-failed')).toEqual([{ sessionId: sid, error: expect.objectContaining({ message: 'busy' }) }]);
    expect(await finalFragment(h, sid)).toEqual(replyAck(sid));
    expect(calls).toHaveLength(2);
    expect(h.eventsOf('upload-completed')).toHaveLength(1);
  });

  test('the error’s numeric errorCode is the BITS error code; a status outside 400-599 becomes 500', async () => {
    const h = new PacketHarness({
      reply: () => {
        throw Object.assign(new Error('no'), { status: 302, errorCode: 0x80070005 });
      },
    });
    const sid = await halfway(h);
    expect(await finalFragment(h, sid)).toEqual({
      status: 500,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80070005', '0x7') },
    });
  });

  test('a full disk while storing the reply → 500 + ERROR_DISK_FULL, context 0x5; the repeat asks again', async () => {
    const { handler, calls } = recordingHandler();
    const h = new PacketHarness({ reply: handler });
    const sid = await halfway(h);
    h.storage.failNext('writeReply', Object.assign(new Error('full'), { code: 'ENOSPC' }));
    expect(await finalFragment(h, sid)).toEqual({
      status: 500,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80070070') },
    });
    expect((await record(h, sid)).reply).toBeUndefined();
    expect(await finalFragment(h, sid)).toEqual(replyAck(sid));
    expect(calls).toHaveLength(2);
  });

  test('a static URL over 2,200 characters → 400 + E_INVALIDARG (§10.5), not recorded', async () => {
    const long = `https://cdn.example.test/${'a'.repeat(2200)}`;
    const h = new PacketHarness({ reply: () => ({ url: long }) });
    const sid = await halfway(h);
    expect(await finalFragment(h, sid)).toEqual({
      status: 400,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80070057') },
    });
    expect((await record(h, sid)).reply).toBeUndefined();
  });

  test('a reply URL that would exceed 2,200 characters → 400 + E_INVALIDARG before the handler runs', async () => {
    const { handler, calls } = recordingHandler();
    const h = new PacketHarness({ reply: handler });
    const sid = await halfway(h);
    const host = `${'h'.repeat(2150)}.test`;
    expect(await finalFragment(h, sid, { headers: { Host: host } })).toEqual({
      status: 400,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80070057') },
    });
    expect(calls).toEqual([]);
  });

  test('a failing commit after the reply was recorded: the repeat commits without asking again', async () => {
    const { handler, calls } = recordingHandler(() => ({ body: 'HELLO', copyToDestination: true }));
    const h = new PacketHarness({ reply: handler });
    const sid = await halfway(h);
    h.storage.failNext('commit', new Error('disk went away'));
    expect((await finalFragment(h, sid)).status).toBe(500);
    expect((await record(h, sid)).reply).toMatchObject({ kind: 'stored', copyToDestination: true });
    expect(await finalFragment(h, sid)).toEqual(replyAck(sid));
    expect(calls).toHaveLength(1);
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
  });
});

describe('repeats and restarts (§6.4 "NotifyCache")', () => {
  test('a repeated final fragment gets the same Ack, without a second call or store', async () => {
    const { handler, calls } = recordingHandler();
    const h = new PacketHarness({ reply: handler });
    const sid = await halfway(h);
    expect(await finalFragment(h, sid)).toEqual(replyAck(sid));
    expect(await finalFragment(h, sid)).toEqual(replyAck(sid));
    expect(calls).toHaveLength(1);
    expect(h.storage.callsOf('writeReply')).toHaveLength(1);
    expect(h.eventsOf('upload-completed')).toHaveLength(1);
  });

  test('after a restart the repeat is answered from the record', async () => {
    const first = recordingHandler();
    const h = new PacketHarness({ reply: first.handler });
    const sid = await halfway(h);
    await finalFragment(h, sid);
    const second = recordingHandler();
    const restarted = h.restart({ reply: second.handler });
    expect(await finalFragment(restarted, sid)).toEqual(replyAck(sid));
    expect(second.calls).toEqual([]);
  });

  /** A record as a crash left it: reply stored and recorded, then the process died before the commit. */
  function crashedAfterReply(storage: StubStorage, reply: StoredReply): void {
    storage.seed(
      {
        id: SID,
        destination: ['report.bin'],
        urlPath: '/report.bin',
        principal: undefined,
        protocol: '{7df0354d-249b-430f-820d-3d2a9bef4931}',
        totalLength: 10,
        receivedLength: 10,
        state: 'receiving',
        createdAt: NOW,
        updatedAt: NOW,
        sha256: SHA_0_9,
        delivered: false,
        reply,
      },
      Buffer.from('0123456789'),
      Buffer.from('HELLO'),
    );
  }

  test.each([true, false])(
    'a crash between recording the reply and the commit: the repeat finishes it (copyToDestination %s)',
    async (copyToDestination) => {
      const storage = new StubStorage();
      crashedAfterReply(storage, { kind: 'stored', size: 5, storedAt: NOW, copyToDestination });
      const { handler, calls } = recordingHandler();
      const h = new PacketHarness({ reply: handler }, storage);
      h.now = NOW + 1000;
      expect(await finalFragment(h, SID)).toEqual(replyAck(SID));
      expect(calls).toEqual([]);
      expect(h.storage.callsOf('commit')).toHaveLength(copyToDestination ? 1 : 0);
      expect(h.storage.fileText('report.bin')).toBe(copyToDestination ? '0123456789' : undefined);
      expect((await record(h, SID)).state).toBe('complete');
      expect(h.eventsOf('upload-completed')).toEqual([expect.objectContaining({ sessionId: SID, sha256: SHA_0_9 })]);
    },
  );

  test('a recorded static URL is sent again after a restart', async () => {
    const storage = new StubStorage();
    crashedAfterReply(storage, { kind: 'url', url: 'https://cdn.example.test/r', copyToDestination: false });
    const h = new PacketHarness({ reply: () => 'never' }, storage);
    expect(await finalFragment(h, SID)).toEqual(replyAck(SID, 'https://cdn.example.test/r'));
  });
});

describe('reply URLs (§10.5)', () => {
  test('publicUrl replaces scheme, host and mount path', async () => {
    const h = new PacketHarness({ reply: () => 'HELLO', publicUrl: 'https://bits.example.com/base/' });
    const sid = await halfway(h);
    expect(await finalFragment(h, sid)).toEqual(replyAck(sid, urlOf(sid, 'https://bits.example.com/base')));
  });

  test('forwarded headers count only with trustForwardedHeaders', async () => {
    const headers = { 'X-Forwarded-Proto': 'https', 'X-Forwarded-Host': 'public.example.test' };
    const plain = new PacketHarness({ reply: () => 'HELLO' });
    const sid = await halfway(plain);
    expect(await finalFragment(plain, sid, { headers })).toEqual(replyAck(sid));
    const trusting = new PacketHarness({ reply: () => 'HELLO', trustForwardedHeaders: true });
    const other = await halfway(trusting);
    expect(await finalFragment(trusting, other, { headers })).toEqual(replyAck(other, urlOf(other, 'https://public.example.test')));
  });

  test('a request without a usable Host → 400 + E_INVALIDARG before the handler runs', async () => {
    const { handler, calls } = recordingHandler();
    const h = new PacketHarness({ reply: handler });
    const sid = await halfway(h);
    expect(await finalFragment(h, sid, { headers: { Host: 'bad host/x' } })).toEqual({
      status: 400,
      headers: { 'BITS-Session-Id': sid, ...errorHeaders('0x80070057') },
    });
    expect(calls).toEqual([]);
  });
});

describe('plain endpoints (§15 A23)', () => {
  test('never name a reply: no BITS-Reply-URL on the final Ack or its repeats, no reply stored', async () => {
    const h = new PacketHarness();
    const sid = await halfway(h);
    const final = { status: 200, headers: { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '10' } };
    expect(await finalFragment(h, sid)).toEqual(final);
    expect(await finalFragment(h, sid)).toEqual(final);
    expect(h.storage.callsOf('writeReply')).toEqual([]);
    expect(h.storage.fileText('report.bin')).toBe('0123456789');
  });

  test('no upload may target the reply folder: Create-Session on /BITS-Sessions/... → 400', async () => {
    const h = new PacketHarness({ reply: () => 'HELLO' });
    for (const url of ['/BITS-Sessions/Replies/x/responsefile.bin', '/bits-sessions/x']) {
      expect(await h.create(url)).toEqual({ status: 400, headers: errorHeaders('0x80070057') });
    }
    expect(h.storage.callsOf('createSession')).toEqual([]);
  });
});
