/**
 * Crash survival (bits-protocol.md §5.5, §6.3): a server in a child process is killed with SIGKILL
 * at many points of one 64 MiB upload (mid-fragment, between fragments, with the body sent but the
 * Ack not yet read, right after the final Ack) and during the commit, then restarted on the same
 * directory. The client carries on with the same session id. Every Ack reports a durable offset
 * that is never below what was acknowledged and never beyond what was sent; with the default fsync
 * policy ('fragment') every acknowledged byte survives. The final file matches the source by
 * SHA-256, and an interrupted commit is finished on the next start, never left half done.
 */
import { once } from 'node:events';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import {
  BitsClient,
  patternBytes,
  patternSource,
  receivedOffset,
  sha256OfFile,
  sha256OfSource,
  type ByteSource,
  type HttpResponse,
} from '../helpers/bits-client';
import { ChildServer, killAllChildren } from '../fixtures/child-server';
import type { RecoveryReport } from '../../lib/storage/adapter';
import { exists, expectAck, listUploads, makeSandbox, sessionDataBytes, waitUntil, type Sandbox } from '../http/support';

const KiB = 1024;
const MiB = 1024 * KiB;

let sandbox: Sandbox | undefined;

afterEach(async () => {
  await killAllChildren();
  await sandbox?.remove();
  sandbox = undefined;
});

afterAll(async () => {
  await killAllChildren();
});

/** What the upload has done so far, checked against every Ack. */
class CrashingUpload {
  readonly servers: ChildServer[] = [];
  server!: ChildServer;
  client!: BitsClient;
  sessionId = '';
  /** Highest offset the server ever acknowledged: no later Ack may report less. */
  acked = 0;
  /** End of the bytes that left the client contiguously from 0: no Ack may report more. */
  sent = 0;
  kills = 0;
  readonly history: string[] = [];

  constructor(
    readonly root: string,
    readonly target: string,
    readonly source: ByteSource,
    readonly seed: string,
    readonly env: Readonly<Record<string, string>> = {},
  ) {}

  get size(): number {
    return this.source.size;
  }

  get dataFile(): string {
    return path.join(this.root, '.bits-sessions', this.sessionId, 'data');
  }

  get destination(): string {
    return path.join(this.root, ...this.target.split('/').filter((s) => s !== ''));
  }

  async start(env: Readonly<Record<string, string>> = this.env): Promise<void> {
    this.server = await ChildServer.start({ dir: this.root, env });
    this.servers.push(this.server);
    this.client = new BitsClient(this.server.port, { timeoutMs: 30_000 });
  }

  async kill(): Promise<void> {
    const status = await this.server.kill('SIGKILL');
    expect(status.signal).toBe('SIGKILL');
    this.client.dispose();
    this.kills += 1;
  }

  async restart(env?: Readonly<Record<string, string>>): Promise<void> {
    await this.kill();
    await this.start(env);
  }

  /** Sends bytes `start`..`start + length - 1` (clipped to the file) as one fragment. */
  async send(start: number, length = MiB): Promise<HttpResponse> {
    const end = Math.min(start + length, this.size);
    const ack = await this.client.fragment(this.target, this.sessionId, start, end - 1, this.size, this.source.slice(start, end), {
      contentLength: end - start,
    });
    this.sentUpTo(start, end);
    return ack;
  }

  /** Bytes `start`..`end - 1` left the client; only bytes contiguous with those before can ever be stored. */
  sentUpTo(start: number, end: number): void {
    if (start <= this.sent) this.sent = Math.max(this.sent, end);
  }

  /**
   * Checks a Fragment Ack (200 or 416) against what was acknowledged and sent, records it, and
   * returns the offset to continue from.
   */
  check(ack: HttpResponse, what: string): number {
    if (ack.status !== 200 && ack.status !== 416) {
      throw new Error(`${what}: expected a 200 or 416 Ack, got ${ack.status} ${JSON.stringify(ack.headers)}\n${this.server.describe()}`);
    }
    const offset = receivedOffset(ack);
    this.history.push(`${what}: ${ack.status} ${offset}`);
    // Never less than acknowledged (with fsync 'fragment' every acknowledged byte is durable), never
    // more than the bytes that reached the server.
    if (offset < this.acked || offset > this.sent) {
      throw new Error(
        `${what}: the Ack reports ${offset}, outside [${this.acked} acknowledged, ${this.sent} sent]\n` +
          `${this.history.join('\n')}\n${this.server.describe()}`,
      );
    }
    this.acked = offset;
    return offset;
  }

  /** Resolves once the server has written the session's data file up to `length` bytes. */
  async waitForData(length: number): Promise<void> {
    await waitUntil(
      async () => ((await fsp.stat(this.dataFile).catch(() => undefined))?.size ?? 0) >= length,
      10_000,
      `${this.dataFile} to reach ${length} bytes`,
    );
  }

  /** Writes a whole fragment on a raw socket without reading the Ack; the caller kills the server. */
  async sendBlind(start: number, end: number): Promise<net.Socket> {
    const socket = net.connect({ port: this.server.port, host: '127.0.0.1' });
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    const name = this.target.slice(this.target.lastIndexOf('/') + 1);
    socket.write(
      `BITS_POST ${this.target} HTTP/1.1\r\nAccept: */*\r\nBITS-Packet-Type: Fragment\r\n` +
        `BITS-Session-Id: ${this.sessionId}\r\nContent-Name: ${name}\r\n` +
        `Content-Range: bytes ${start}-${end - 1}/${this.size}\r\nUser-Agent: Microsoft BITS/7.8\r\n` +
        `Host: 127.0.0.1:${this.server.port}\r\nContent-Length: ${end - start}\r\nConnection: Keep-Alive\r\n\r\n`,
      'latin1',
    );
    for await (const chunk of this.source.slice(start, end)) {
      if (!socket.write(chunk as Buffer)) await Promise.race([once(socket, 'drain'), once(socket, 'close')]);
    }
    this.sentUpTo(start, end);
    return socket;
  }

  /** Sends the head and `prefix` bytes of the fragment at `start`, waits until they are on disk, kills the server. */
  async killMidFragment(start: number, prefix: number): Promise<void> {
    const end = Math.min(start + MiB, this.size);
    const bytes = await patternBytes(this.seed, start, start + prefix);
    await this.client.fragmentCutOff(this.target, this.sessionId, start, end - 1, this.size, bytes, {
      beforeDestroy: async () => {
        if (prefix > 0) await this.waitForData(start + prefix);
        else await new Promise((resolve) => setTimeout(resolve, 100));
        await this.kill();
      },
    });
    this.sentUpTo(start, start + prefix);
  }

  /** upload-completed events printed by all the server processes. */
  completedEvents(): { sessionId: string; sha256: string; size: number }[] {
    return this.servers.flatMap((server) => server.events('upload-completed') as { sessionId: string; sha256: string; size: number }[]);
  }
}

/** Kill points, by the index of the fragment (MiB) about to be sent. */
type KillPoint =
  | { kind: 'mid-fragment'; prefix: number }
  | { kind: 'between' }
  | { kind: 'lost-ack' }
  | { kind: 'body-sent-no-ack' }
  | { kind: 'gap-probe' }
  | { kind: 'double-kill' };

describe('SIGKILL during a 64 MiB upload, restart on the same directory', () => {
  it('resumes the same session after every kill and ends with the exact file', async () => {
    sandbox = await makeSandbox();
    const seed = 'durability-crash-64';
    const source = patternSource(seed, 64 * MiB + 12_345);
    const expected = await sha256OfSource(source);
    const upload = new CrashingUpload(sandbox.root, '/crash/big.bin', source, seed);
    const points = new Map<number, KillPoint>([
      [2, { kind: 'mid-fragment', prefix: 300 * KiB }],
      [7, { kind: 'between' }],
      [13, { kind: 'mid-fragment', prefix: 777_777 }],
      [20, { kind: 'lost-ack' }],
      [27, { kind: 'body-sent-no-ack' }],
      [33, { kind: 'mid-fragment', prefix: 0 }],
      [40, { kind: 'gap-probe' }],
      [47, { kind: 'mid-fragment', prefix: MiB - 1 }],
      [53, { kind: 'double-kill' }],
      // The final fragment (12 345 bytes), cut off after 5 000 of them.
      [64, { kind: 'mid-fragment', prefix: 5000 }],
    ]);

    await upload.start();
    upload.sessionId = await upload.client.openSession(upload.target);

    let offset = 0;
    let guard = 0;
    while (offset < upload.size) {
      guard += 1;
      if (guard > 200) throw new Error(`upload did not finish:\n${upload.history.join('\n')}`);
      const index = Math.floor(offset / MiB);
      const point = points.get(index);
      points.delete(index);
      const end = Math.min(offset + MiB, upload.size);

      if (point === undefined) {
        offset = upload.check(await upload.send(offset), `fragment ${index}`);
        expect(offset).toBe(end);
        continue;
      }

      switch (point.kind) {
        case 'mid-fragment': {
          await upload.killMidFragment(offset, point.prefix);
          await upload.start();
          // The client goes on from where it stopped sending; the server resynchronises it (416)
          // to its durable offset unless it kept exactly all of the prefix (200).
          // It sends the rest of the interrupted fragment, so later fragments stay on MiB boundaries.
          const ack = await upload.send(offset + point.prefix, MiB - point.prefix);
          const reported = upload.check(ack, `after a kill ${point.prefix} bytes into fragment ${index}`);
          if (ack.status === 416) expect(reported).toBeLessThanOrEqual(offset + point.prefix);
          offset = reported;
          break;
        }
        case 'between': {
          await upload.restart();
          offset = upload.check(await upload.send(offset), `fragment ${index} after a kill between fragments`);
          expect(offset).toBe(end);
          break;
        }
        case 'lost-ack': {
          const start = offset;
          offset = upload.check(await upload.send(start), `fragment ${index}`);
          expect(offset).toBe(end);
          await upload.restart();
          // The client never saw that Ack and resends the fragment: a duplicate, answered with
          // exactly the acknowledged offset (§6.3 case C).
          const again = await upload.send(start);
          expect(again.status).toBe(200);
          expect(upload.check(again, `fragment ${index} resent after the kill`)).toBe(end);
          break;
        }
        case 'body-sent-no-ack': {
          const socket = await upload.sendBlind(offset, end);
          await upload.waitForData(end);
          await upload.kill();
          socket.destroy();
          await upload.start();
          const ack = await upload.send(offset);
          expect(ack.status).toBe(200);
          offset = upload.check(ack, `fragment ${index} resent after a kill once its body was on disk`);
          expect(offset).toBe(end);
          break;
        }
        case 'gap-probe': {
          await upload.restart();
          // A fragment past the durable offset reveals it exactly (§6.3 case D).
          const ack = await upload.send(offset + 2 * MiB);
          expect(ack.status).toBe(416);
          expect(upload.check(ack, `gap probe after a kill before fragment ${index}`)).toBe(offset);
          break;
        }
        case 'double-kill': {
          await upload.restart();
          // Killed again before it served anything (possibly during its start-up recovery).
          await upload.restart();
          offset = upload.check(await upload.send(offset), `fragment ${index} after two kills`);
          expect(offset).toBe(end);
          break;
        }
      }
    }
    expect(points.size).toBe(0);
    expect(await sha256OfFile(upload.destination)).toBe(expected);

    // Killed right after the final Ack: the resent final fragment gets the same final Ack.
    await upload.restart();
    const finalStart = Math.floor((upload.size - 1) / MiB) * MiB;
    const resent = await upload.send(finalStart);
    expectAck(resent, 200, { 'BITS-Received-Content-Range': String(upload.size) }, { 'BITS-Session-Id': upload.sessionId });
    expectAck(await upload.client.close(upload.target, upload.sessionId), 200, {}, { 'BITS-Session-Id': upload.sessionId });

    expect(upload.kills).toBe(12);
    expect(await sha256OfFile(upload.destination)).toBe(expected);
    expect(await listUploads(sandbox.root)).toEqual(['crash/', `crash/big.bin ${upload.size}`]);
    expect(await sessionDataBytes(sandbox.root)).toBe(0);
    // The application heard of the upload exactly once, with the right digest, across all processes.
    expect(upload.completedEvents().map((event) => [event.sessionId, event.size, event.sha256])).toEqual([
      [upload.sessionId, upload.size, expected],
    ]);
  }, 120_000);
});

describe('SIGKILL during the commit', () => {
  const size = 8 * MiB + 4321;

  async function uploadAllButTheCommit(
    name: string,
    env: Readonly<Record<string, string>>,
    marker: RegExp,
  ): Promise<{ upload: CrashingUpload; expected: string }> {
    if (sandbox === undefined) throw new Error('no sandbox');
    const seed = `durability-commit-${name}`;
    const source = patternSource(seed, size);
    const upload = new CrashingUpload(sandbox.root, `/commit/${name}.bin`, source, seed, env);
    await upload.start();
    upload.sessionId = await upload.client.openSession(upload.target);
    let offset = 0;
    const finalStart = Math.floor((size - 1) / MiB) * MiB;
    while (offset < finalStart) offset = upload.check(await upload.send(offset), `fragment at ${offset}`);
    const socket = await upload.sendBlind(finalStart, size);
    await upload.server.waitForLine(marker, 15_000).catch((error: unknown) => {
      throw new Error(`the commit never reached ${marker} (did the storage's commit change?): ${String(error)}`);
    });
    await upload.kill();
    socket.destroy();
    return { upload, expected: await sha256OfSource(source) };
  }

  /**
   * The destination is absent, the whole new file, or (`previous`, when the upload replaces a file)
   * the whole old one: never a part of a file.
   */
  async function expectNeverHalf(
    upload: CrashingUpload,
    expected: string,
    previous?: string,
  ): Promise<'missing' | 'previous' | 'complete'> {
    const stats = await fsp.stat(upload.destination).catch(() => undefined);
    if (stats === undefined) return 'missing';
    const found = await sha256OfFile(upload.destination);
    if (previous !== undefined && found === previous) return 'previous';
    expect({ size: stats.size, sha256: found }).toEqual({ size, sha256: expected });
    return 'complete';
  }

  /** Restarts without the slow commit, waits for start-up recovery and returns its report. */
  async function restartAndRecover(
    upload: CrashingUpload,
    expected: string,
    env: Readonly<Record<string, string>> = {},
    previous?: string,
  ): Promise<RecoveryReport> {
    await upload.start(env);
    const line = await upload.server.waitForLine(/^ready( |$)/, 15_000);
    // Start-up recovery finished or rolled back the commit: never half a file, and never the data
    // both at the destination and still in the session.
    const destination = await expectNeverHalf(upload, expected, previous);
    const dataLeft = await exists(upload.dataFile);
    expect({ destination, dataLeft }).not.toEqual({ destination: 'complete', dataLeft: true });
    return JSON.parse(line.slice('ready '.length)) as RecoveryReport;
  }

  async function resendFinalAndClose(upload: CrashingUpload, expected: string): Promise<void> {
    const finalStart = Math.floor((size - 1) / MiB) * MiB;
    const ack = await upload.send(finalStart);
    expectAck(ack, 200, { 'BITS-Received-Content-Range': String(size) }, { 'BITS-Session-Id': upload.sessionId });
    expect(await expectNeverHalf(upload, expected)).toBe('complete');
    expectAck(await upload.client.close(upload.target, upload.sessionId), 200, {}, { 'BITS-Session-Id': upload.sessionId });
    expect(await sessionDataBytes(upload.root)).toBe(0);
    expect(upload.completedEvents().map((event) => [event.sessionId, event.size, event.sha256])).toEqual([
      [upload.sessionId, size, expected],
    ]);
  }

  it('killed as the commit starts: the restarted server commits on the resent final fragment', async () => {
    sandbox = await makeSandbox();
    const { upload, expected } = await uploadAllButTheCommit('start', { BITS_COMMIT_DELAY_MS: '60000' }, /^commit-start /);
    expect(await expectNeverHalf(upload, expected)).toBe('missing');
    // The commit had not begun: nothing to finish, the data waits in the session.
    expect(await restartAndRecover(upload, expected)).toMatchObject({ commitsFinished: 0 });
    expect(await exists(upload.destination)).toBe(false);
    await resendFinalAndClose(upload, expected);
    expect(await listUploads(sandbox.root)).toEqual(['commit/', `commit/start.bin ${size}`]);
  }, 60_000);

  it('killed halfway through the commit (file linked, record not yet complete): finished on the next start', async () => {
    sandbox = await makeSandbox();
    const { upload, expected } = await uploadAllButTheCommit('halfway', { BITS_LINK_DELAY_MS: '60000' }, /^commit-linked$/);
    // The link is atomic: the destination is already the whole file, or not there.
    await expectNeverHalf(upload, expected);
    expect(await restartAndRecover(upload, expected)).toMatchObject({ commitsFinished: 1 });
    expect(await expectNeverHalf(upload, expected)).toBe('complete');
    expect(await exists(upload.dataFile)).toBe(false);
    await resendFinalAndClose(upload, expected);
    expect(await listUploads(sandbox.root)).toEqual(['commit/', `commit/halfway.bin ${size}`]);
  }, 60_000);

  it('replacing a file (allowOverwrites), killed after the rename, before the record: old or new file, never half', async () => {
    sandbox = await makeSandbox();
    const previousFile = path.join(sandbox.root, 'commit', 'replace.bin');
    await fsp.mkdir(path.dirname(previousFile));
    await fsp.writeFile(previousFile, 'the previous version of the file\n');
    const previous = await sha256OfFile(previousFile);
    const options = { BITS_OPTIONS: JSON.stringify({ allowOverwrites: true }) };
    const { upload, expected } = await uploadAllButTheCommit(
      'replace',
      { ...options, BITS_RENAME_DELAY_MS: '60000' },
      /^commit-renamed$/,
    );
    // rename() is atomic: the new file is in place (readers never saw a part of either).
    expect(await expectNeverHalf(upload, expected, previous)).toBe('complete');
    expect(await restartAndRecover(upload, expected, options, previous)).toMatchObject({ commitsFinished: 1 });
    expect(await expectNeverHalf(upload, expected, previous)).toBe('complete');
    await resendFinalAndClose(upload, expected);
    expect(await listUploads(sandbox.root)).toEqual(['commit/', `commit/replace.bin ${size}`]);
  }, 60_000);

  it('replacing a file, killed before the commit: the old file stays whole until the resent final fragment commits', async () => {
    sandbox = await makeSandbox();
    const previousFile = path.join(sandbox.root, 'commit', 'keep.bin');
    await fsp.mkdir(path.dirname(previousFile));
    await fsp.writeFile(previousFile, 'the previous version of the file\n');
    const previous = await sha256OfFile(previousFile);
    const options = { BITS_OPTIONS: JSON.stringify({ allowOverwrites: true }) };
    const { upload, expected } = await uploadAllButTheCommit(
      'keep',
      { ...options, BITS_COMMIT_DELAY_MS: '60000' },
      /^commit-start /,
    );
    expect(await expectNeverHalf(upload, expected, previous)).toBe('previous');
    expect(await restartAndRecover(upload, expected, options, previous)).toMatchObject({ commitsFinished: 0 });
    expect(await expectNeverHalf(upload, expected, previous)).toBe('previous');
    await resendFinalAndClose(upload, expected);
    expect(await listUploads(sandbox.root)).toEqual(['commit/', `commit/keep.bin ${size}`]);
  }, 60_000);
});
