/**
 * Concurrency over real sockets (bits-protocol.md §2.4, §5.6): 20 sessions uploading distinct
 * 1-2 MiB files at the same time, packets of one session racing on several connections (the
 * per-session lock), and two sessions racing for the same destination (§15 A7).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import express from 'express';
import { bitsUpload } from '../../lib/middleware';
import {
  BitsClient,
  patternBytes,
  patternSource,
  receivedOffset,
  sha256OfFile,
  sha256OfSource,
} from '../helpers/bits-client';
import {
  E_ACCESSDENIED,
  errorHeaders,
  expectAck,
  listUploads,
  serve,
  sessionDataBytes,
  useServerTest,
} from './support';

const KiB = 1024;
const MiB = 1024 * KiB;

const env = useServerTest();

beforeEach(async () => {
  const app = express();
  // Every client here is 127.0.0.1, one principal by default: lift the per-principal limit (§5.4)
  // above the 300 sessions these tests leave open.
  app.use('/uploads', bitsUpload({ directory: env.sandbox.root, maxSessionsPerPrincipal: 1000 }));
  env.running = await serve(app);
});

function client(connection: 'keep-alive' | 'per-packet' = 'keep-alive'): BitsClient {
  if (env.running === undefined) throw new Error('server not started');
  const made = new BitsClient(env.running.port, { connection });
  env.clients.push(made);
  return made;
}

test('20 concurrent sessions, each uploading a distinct 1-2 MiB file', async () => {
  const jobs = Array.from({ length: 20 }, (_, i) => ({
    name: `job-${String(i).padStart(2, '0')}.bin`,
    source: patternSource(`concurrent-${i}`, MiB + i * 52_433 + 7),
    fragment: 96 * KiB + i * 7_919,
    mode: i % 4 === 3 ? ('per-packet' as const) : ('keep-alive' as const),
  }));
  // allSettled: a failing job must not let the sandbox be removed under the others.
  const settled = await Promise.allSettled(
    jobs.map((job) => client(job.mode).uploadFile(`/uploads/${job.name}`, job.source, job.fragment)),
  );
  expect(settled.flatMap((outcome, i) => (outcome.status === 'rejected' ? [`${i}: ${String(outcome.reason)}`] : []))).toEqual([]);
  const results = settled.flatMap((outcome) => (outcome.status === 'fulfilled' ? [outcome.value] : []));
  for (const [i, job] of jobs.entries()) {
    const result = results[i];
    expect(result?.offsets.at(-1)).toBe(job.source.size);
    expect(result?.fragmentAcks.every((ack) => ack.status === 200)).toBe(true);
    expect(await sha256OfFile(path.join(env.sandbox.root, job.name))).toBe(await sha256OfSource(job.source));
  }
  expect(new Set(results.map((result) => result.sessionId)).size).toBe(20);
  expect(await listUploads(env.sandbox.root)).toEqual(jobs.map((job) => `${job.name} ${job.source.size}`));
  expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
}, 60_000);

test('the same fragment racing on five connections: one write, five consistent Acks', async () => {
  const size = 512 * KiB;
  const source = patternSource('race-same', size);
  const owner = client();
  const sid = await owner.openSession('/uploads/race.bin');
  const first = await patternBytes('race-same', 0, 256 * KiB);
  const acks = await Promise.all(
    Array.from({ length: 5 }, () => client().fragment('/uploads/race.bin', sid, 0, 256 * KiB - 1, size, first)),
  );
  for (const ack of acks) expectAck(ack, 200, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': String(256 * KiB) });
  expect(await sessionDataBytes(env.sandbox.root)).toBe(256 * KiB);
  const rest = await owner.uploadFile('/uploads/race.bin', source, 256 * KiB, { sessionId: sid, startAt: 256 * KiB });
  expect(rest.offsets).toEqual([size]);
  expect(await sha256OfFile(path.join(env.sandbox.root, 'race.bin'))).toBe(await sha256OfSource(source));
});

test('consecutive fragments racing on two connections: never a hole, the client resyncs', async () => {
  const size = 2 * MiB;
  const source = patternSource('race-next', size);
  const sid = await client().openSession('/uploads/next.bin');
  const [a, b] = [client(), client()];
  const [ackA, ackB] = await Promise.all([
    a.fragment('/uploads/next.bin', sid, 0, MiB - 1, size, source.slice(0, MiB), { contentLength: MiB }),
    b.fragment('/uploads/next.bin', sid, MiB, size - 1, size, source.slice(MiB, size), { contentLength: MiB }),
  ]);
  expect(ackA.status).toBe(200);
  expect(receivedOffset(ackA)).toBeGreaterThanOrEqual(MiB);
  // B either came second (200, complete) or first (416 at 0).
  if (ackB.status === 416) expect(receivedOffset(ackB)).toBe(0);
  else expectAck(ackB, 200, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': String(size) });
  // The rest as the client would: from MiB (a duplicate if B already landed).
  const finish = await a.uploadFile('/uploads/next.bin', source, MiB, { sessionId: sid, startAt: MiB });
  expect(finish.offsets.at(-1)).toBe(size);
  expect(await sha256OfFile(path.join(env.sandbox.root, 'next.bin'))).toBe(await sha256OfSource(source));
});

test('two sessions racing for one destination: the first commit wins, the second gets 403 at commit', async () => {
  const [one, two] = [client(), client()];
  const sidOne = await one.openSession('/uploads/contested.bin');
  const sidTwo = await two.openSession('/uploads/contested.bin');
  expect(sidOne).not.toBe(sidTwo);
  const data = (text: string): Buffer => Buffer.from(text, 'latin1');
  expect(receivedOffset(await two.fragment('/uploads/contested.bin', sidTwo, 0, 4, 10, data('TWO-0')))).toBe(5);
  expect(receivedOffset(await one.fragment('/uploads/contested.bin', sidOne, 0, 9, 10, data('ONE-012345')))).toBe(10);
  const lost = await two.fragment('/uploads/contested.bin', sidTwo, 5, 9, 10, data('TWO-1'));
  expectAck(lost, 403, { 'BITS-Session-Id': sidTwo, ...errorHeaders(E_ACCESSDENIED) });
  expect(await fsp.readFile(path.join(env.sandbox.root, 'contested.bin'), 'latin1')).toBe('ONE-012345');
  expectAck(await two.cancel('/uploads/contested.bin', sidTwo), 200, { 'BITS-Session-Id': sidTwo });
  expectAck(await one.close('/uploads/contested.bin', sidOne), 200, { 'BITS-Session-Id': sidOne });
  expect(await fsp.readFile(path.join(env.sandbox.root, 'contested.bin'), 'latin1')).toBe('ONE-012345');
  expect(await sessionDataBytes(env.sandbox.root)).toBe(0);
});

// Many uploads finishing at once into a folder that does not exist yet: every commit creates the
// folder (mkdir -p) while the others check the path for links (FileSystemStorage #destinationPath).
// A folder that appears between realpath() failing and lstat() must not be taken for a dangling
// link: that answered the final fragment with 400 + E_INVALIDARG, a fatal error for the job (§9.1).
test('30 uploads completing at the same moment into one new folder, 10 rounds: all committed', async () => {
  const failures: string[] = [];
  for (let round = 0; round < 10; round++) {
    const uploads = await Promise.all(
      Array.from({ length: 30 }, async (_, i) => {
        const bits = client();
        const target = `/uploads/round-${round}/deeper/file-${i}.bin`;
        return { bits, target, sid: await bits.openSession(target), i };
      }),
    );
    const acks = await Promise.all(
      uploads.map(({ bits, target, sid, i }) => bits.fragment(target, sid, 0, 1, 2, Buffer.from([round, i]))),
    );
    for (const [n, ack] of acks.entries()) {
      if (ack.status !== 200) failures.push(`round ${round} upload ${n}: ${ack.status} ${ack.headers['bits-error-code'] ?? ''}`);
    }
    for (const client of env.clients.splice(0)) client.dispose();
  }
  expect(failures).toEqual([]);
  const files = await listUploads(env.sandbox.root);
  expect(files.filter((entry) => entry.endsWith('.bin 2'))).toHaveLength(300);
}, 60_000);
