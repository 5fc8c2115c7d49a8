#!/usr/bin/env node
'use strict';
/**
 * Does bits-upload run at the speed of the disk and the wire? One run on this machine, loopback only.
 *
 *   npm run bench                 (= npm run build && node bench/run.js)
 *   node bench/run.js --quick     (about 2 minutes, smaller sizes)
 *
 * Servers, each in its own child process, each storing into its own folder of a temporary directory
 * on the repository's disk (never tmpfs):
 *   bits           the standalone server as shipped: dist/server/cli.js (Express + bitsUpload +
 *                  createBitsServer/acceptBitsPost; FileSystemStorage's default fsync 'fragment'),
 *                  run with --max-sessions-per-client 1000 because every session comes from 127.0.0.1
 *   baseline       the physical baseline: a bare node:http server, `POST /<name>?offset=N&total=T`
 *                  streams the body into the file at N (createWriteStream on a cached fd,
 *                  start = N) and answers 204 once the write finished. No fsync. Ratios are to it.
 *   tus            @tus/server 2 + @tus/file-store (POST with Upload-Length, then PATCH with
 *                  Upload-Offset per fragment). No fsync either.
 * References (to split the gap into durability and code; not part of the targets):
 *   bits-nosync    the same bits server built from dist with FileSystemStorage({ fsync: 'never' })
 *   bits-sha256    the same bits server with an onUploadComplete hook: the SHA-256 of every upload is
 *                  computed (the command computes none, nothing there receives it)
 *   baseline-sync  the baseline with fdatasync before every 204 (what a durable Ack costs at least)
 *
 * One client process drives every server with the same bytes over keep-alive loopback sockets,
 * writing raw HTTP by hand (real BITS_POST packets for bits: Create-Session, Fragment with
 * Content-Range, Close-Session). The bytes are a deterministic pseudo-random pattern (AES-128-CTR
 * keystream, 16 MiB period) generated once in the client; fragments are views of it, so no upload
 * is ever held in memory and the client spends no CPU making data.
 *
 * Scenarios:
 *   S1  one 1 GiB file in 1 MiB fragments (5 rounds, median)
 *   S2  one 64 MiB file in 64 KiB fragments (5 rounds, median)
 *   S3  200 sessions of 1 MiB (4 x 256 KiB fragments), all open at once, interleaved over 48
 *       keep-alive connections; errors counted
 *   S4  one 4 GiB file in 1 MiB fragments, fresh server per variant (bits, baseline, tus): peak
 *       RSS, and RSS read from /proc at every eighth of the upload (does it grow with the file?)
 *   S5  small keep-alive GETs through a server with the BITS_POST support vs a plain server:
 *       runs bench/shim.js --scenarios=get (wrk)
 * Per server and scenario: MiB/s, fragments/s, p50/p99 fragment latency (client side: head written
 * -> response parsed), server CPU seconds (process.cpuUsage deltas, user + system, all threads),
 * peak RSS (resourceUsage().maxRSS reported by the server child at exit), read/write system calls
 * per fragment (/proc/<pid>/io; they include the event loop's wake-ups for thread-pool file calls),
 * ratios to the baseline (of the medians, and the median of per-round ratios: "paired"), and the
 * user CPU other processes used meanwhile (/proc/stat: the noise indicator; a warning names
 * benchmarks, test runs or builds found running). Every file is checked
 * byte for byte against the pattern after its sample (not timed) and deleted, every server folder
 * is deleted when its scenario ends, and dirty pages are flushed (`sync`) before every timed sample
 * so that no sample pays for another's writeback.
 *
 * Targets (PASS/FAIL lines at the end): S1 bits >= 0.9x baseline MiB/s; S2 >= 0.8x; S3 >= 0.8x
 * with zero errors; bits ahead of tus in S1-S4 (S1-S3 judged by paired ratios); S4 bits peak RSS
 * <= 1.2x the baseline's and RSS not growing (2nd half vs 1st half of the upload, <= 16 MiB); S5
 * GETs with the BITS_POST support ('all', what the CLI uses) >= 0.9x plain.
 *
 * Options:
 *   --quick                      about 2 minutes: S1 512 MiB, S2 32 MiB, S4 1 GiB, 3 rounds, S5 short
 *   --scenarios=s5,s1,s2,s3,s4   subset and order (S5 runs first by default: before any disk writeback)
 *   --variants=bits,baseline,tus,bits-nosync,bits-sha256,baseline-sync   (bits and baseline are required)
 *   --rounds=5                   rounds of S1-S3, 3 with --quick (variants rotated per round)
 *   --s1-mib=1024 --s2-mib=64 --s3-sessions=200 --s3-session-kib=1024 --s3-fragment-kib=256
 *   --s3-connections=48 --s4-mib=4096
 *   --no-verify                  skip the byte-for-byte check of the uploaded files
 *   --profile                    node --cpu-prof on every server child; top self time printed
 *                                (bench/results/profiles-bench/)
 *   --server-flags="--a --b"     Node/V8 flags for every server child, all variants alike (e.g.
 *                                --initial-old-space-size=64, see README Performance); in the report
 *   --out=bench/results/bench.json   JSON results (markdown goes to stdout, also <out>.md)
 *   --check                      exit 1 when a target is missed
 *
 * Every loop is bounded, every wait has a time limit, an overall watchdog stops the run (16 min,
 * 6 min with --quick), and the temporary directory is removed at the end. A full run takes about
 * 4-5 minutes on a 2-core VM.
 */

const http = require('node:http');
const net = require('node:net');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { fork, spawn, spawnSync } = require('node:child_process');
const { runAsDriverOrChild } = require('./entry.js');
const { withTimeout } = require('./with-timeout.js');
const { once } = require('node:events');
const { pipeline } = require('node:stream');

const HOST = '127.0.0.1';
const ROOT = path.resolve(__dirname, '..');
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const PATTERN_BYTES = 16 * MiB;
const PATTERN_SEED = 'bits-upload bench/run.js';
const BITS_PROTOCOL = '{7df0354d-249b-430f-820d-3d2a9bef4931}';
const CHILD_LIFETIME_MS = 20 * 60_000;
const REQUEST_TIMEOUT_MS = 60_000;
const TMPFS_MAGIC = 0x01021994;

const ALL_VARIANTS = ['bits', 'baseline', 'tus', 'bits-nosync', 'bits-sha256', 'baseline-sync'];
const CORE_VARIANTS = ['bits', 'baseline', 'tus'];
/** Which wire protocol each server speaks. */
const PROTOCOL_OF = { bits: 'bits', 'bits-nosync': 'bits', 'bits-sha256': 'bits', baseline: 'raw', 'baseline-sync': 'raw', tus: 'tus' };
const TARGETS = { s1: 0.9, s2: 0.8, s3: 0.8, s4Rss: 1.2, s5: 0.9 };
/** S4: RSS may rise by this much between the first and the last quarter of the upload. */
const S4_GROWTH_ALLOWANCE_MIB = 16;

// =============================================================================================
// Test data: a 16 MiB AES-128-CTR keystream, repeated. Byte x of every upload is pattern[x % 16 MiB].
// =============================================================================================

function makePattern() {
  const key = crypto.createHash('sha256').update(PATTERN_SEED).digest().subarray(0, 16);
  const cipher = crypto.createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const pattern = Buffer.allocUnsafe(PATTERN_BYTES);
  const zeros = Buffer.alloc(MiB);
  for (let at = 0; at < PATTERN_BYTES; at += MiB) cipher.update(zeros).copy(pattern, at);
  return pattern;
}

/** Views of the pattern covering bytes [start, end) of an upload. */
function slices(pattern, start, end) {
  const parts = [];
  for (let at = start; at < end; ) {
    const from = at % PATTERN_BYTES;
    const length = Math.min(end - at, PATTERN_BYTES - from);
    parts.push(pattern.subarray(from, from + length));
    at += length;
  }
  return parts;
}

// =============================================================================================
// Server children
// =============================================================================================

/** Lets the orchestrator ask any server child for its CPU time and memory, and stop it. */
function installReporter(name) {
  const report = () => ({
    variant: name,
    pid: process.pid,
    cpu: process.cpuUsage(),
    rss: process.memoryUsage().rss,
    maxRssKiB: process.resourceUsage().maxRSS,
  });
  process.on('message', (message) => {
    if (message?.cmd === 'usage') process.send({ id: message.id, ...report() });
    if (message?.cmd === 'exit') process.send({ id: message.id, ...report() }, () => process.exit(0));
  });
  process.on('disconnect', () => process.exit(0));
  setTimeout(() => process.exit(2), CHILD_LIFETIME_MS).unref();
}

function announce(server) {
  process.stdout.write(`listening on http://${HOST}:${server.address().port}/\n`);
}

/** The standalone bits-upload server itself (dist/server/cli.js), in this process. */
function runBitsCli(cliPath, args) {
  installReporter('bits');
  process.argv = [process.argv[0], cliPath, ...args];
  require(cliPath);
}

/**
 * References: the same stack as the CLI, with FileSystemStorage's fsync policy 'never'
 * (bits-nosync), or with an onUploadComplete hook, which has the SHA-256 computed (bits-sha256).
 */
function runBitsLibrary(variant, distDir, dir) {
  installReporter(variant);
  const express = require('express');
  const { bitsUpload, FileSystemStorage, createBitsServer } = require(path.join(distDir, 'index.js'));
  const app = express();
  app.disable('x-powered-by');
  const fsync = variant === 'bits-nosync' ? 'never' : 'fragment';
  const onUploadComplete = variant === 'bits-sha256' ? () => undefined : undefined;
  app.use('/', bitsUpload({ storage: new FileSystemStorage({ directory: dir, fsync }), maxSessionsPerPrincipal: 1000, onUploadComplete }));
  const server = createBitsServer(app);
  server.listen(0, HOST, () => announce(server));
}

/**
 * The physical baseline: `POST /<name>?offset=N&total=T` streams the body to the file at N through a
 * cached fd and answers 204 after the write finished (after fdatasync with `sync`). The fd is closed
 * when the last byte arrived.
 */
function runBaseline(dir, sync) {
  installReporter(sync ? 'baseline-sync' : 'baseline');
  const fds = new Map();
  const fail = (res, status, text) => {
    res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text) });
    res.end(text);
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const name = url.pathname.slice(1);
    const offset = Number(url.searchParams.get('offset'));
    const total = Number(url.searchParams.get('total'));
    const length = Number(req.headers['content-length']);
    if (req.method !== 'POST' || !/^[\w.-]+$/.test(name) || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length)) {
      req.resume();
      return fail(res, 400, 'bad request');
    }
    const file = path.join(dir, name);
    const withFd = (callback) => {
      const cached = fds.get(name);
      if (cached !== undefined) return callback(null, cached);
      fs.open(file, offset === 0 ? 'w' : 'r+', (err, fd) => {
        if (!err) fds.set(name, fd);
        callback(err, fd);
      });
    };
    withFd((err, fd) => {
      if (err) {
        req.resume();
        return fail(res, 500, String(err));
      }
      const out = fs.createWriteStream(file, { fd, start: offset, autoClose: false });
      pipeline(req, out, (error) => {
        if (error) return fail(res, 500, String(error));
        const done = (syncError) => {
          if (syncError) return fail(res, 500, String(syncError));
          if (offset + length >= total) {
            fds.delete(name);
            fs.close(fd, () => undefined);
          }
          res.writeHead(204);
          res.end();
        };
        if (sync) fs.fdatasync(fd, done);
        else done(null);
      });
    });
  });
  server.keepAliveTimeout = 120_000;
  server.requestTimeout = 0;
  server.listen(0, HOST, () => announce(server));
}

/** @tus/server 2 with @tus/file-store, mounted on a node:http server with server.handle(). */
async function runTus(dir) {
  installReporter('tus');
  const { Server } = await import('@tus/server');
  const { FileStore } = await import('@tus/file-store');
  const tus = new Server({ path: '/files', datastore: new FileStore({ directory: dir }) });
  const server = http.createServer((req, res) => {
    tus.handle(req, res).catch((error) => {
      if (!res.headersSent) res.writeHead(500, { 'Content-Length': 0 });
      res.end();
      console.error('tus:', error);
    });
  });
  server.keepAliveTimeout = 120_000;
  server.requestTimeout = 0;
  server.listen(0, HOST, () => announce(server));
}

// =============================================================================================
// Client child: raw HTTP/1.1 over keep-alive sockets
// =============================================================================================

class ResponseError extends Error {
  constructor(what, response) {
    super(`${what}: HTTP ${response.status} ${JSON.stringify(response.headers)} ${response.body.toString('latin1').slice(0, 200)}`);
  }
}

/** One keep-alive connection; one request at a time. */
class Conn {
  constructor(port) {
    this.port = port;
    this.socket = null;
    this.inbound = null;
    this.pending = null;
    this.dead = true;
  }

  async connect() {
    const socket = net.connect({ host: HOST, port: this.port, noDelay: true });
    this.socket = socket;
    this.inbound = null;
    this.dead = false;
    socket.on('data', (chunk) => {
      this.inbound = this.inbound === null ? chunk : Buffer.concat([this.inbound, chunk]);
      this.parse();
    });
    const down = (error) => {
      this.dead = true;
      this.settle(error ?? new Error('connection closed by the server'));
    };
    socket.on('error', down);
    socket.on('close', () => down(null));
    await once(socket, 'connect');
  }

  /** Writes one request (head + body parts, views of the pattern) and resolves with its response. */
  request(head, parts = []) {
    if (this.dead) return Promise.reject(new Error('connection is closed'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.settle(new Error(`no response within ${REQUEST_TIMEOUT_MS} ms`));
        this.socket.destroy();
      }, REQUEST_TIMEOUT_MS);
      this.pending = { resolve, reject, timer, t0: process.hrtime.bigint() };
      this.socket.cork();
      this.socket.write(head, 'latin1');
      for (const part of parts) this.socket.write(part);
      this.socket.uncork();
      this.parse();
    });
  }

  settle(error, response) {
    const pending = this.pending;
    if (pending === null) return;
    this.pending = null;
    clearTimeout(pending.timer);
    if (error) pending.reject(error);
    else pending.resolve({ ...response, ns: Number(process.hrtime.bigint() - pending.t0) });
  }

  parse() {
    const buf = this.inbound;
    if (buf === null || this.pending === null) return;
    const headEnd = buf.indexOf('\r\n\r\n', 0, 'latin1');
    if (headEnd === -1) return;
    const lines = buf.toString('latin1', 0, headEnd).split('\r\n');
    const status = Number(lines[0].slice(9, 12));
    const headers = {};
    for (let i = 1; i < lines.length; i++) {
      const colon = lines[i].indexOf(':');
      headers[lines[i].slice(0, colon).toLowerCase()] = lines[i].slice(colon + 1).trim();
    }
    let end = headEnd + 4;
    if (status >= 200 && status !== 204 && status !== 304) {
      if (headers['content-length'] !== undefined) {
        end += Number(headers['content-length']);
        if (buf.length < end) return;
      } else if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
        // Only error responses have bodies here; find the last chunk and keep the raw bytes.
        const last = buf.indexOf('\r\n0\r\n\r\n', headEnd + 2, 'latin1');
        if (last === -1) return;
        end = last + 7;
      }
    }
    const body = buf.subarray(headEnd + 4, end);
    this.inbound = end >= buf.length ? null : buf.subarray(end);
    this.settle(null, { status, headers, body });
  }

  close() {
    this.dead = true;
    this.socket?.destroy();
  }
}

/** How each kind of server is spoken to: open an upload, a fragment's request head and check, close. */
const PROTOCOLS = {
  bits: {
    head(port, target, type, extra, length) {
      return (
        `BITS_POST ${target} HTTP/1.1\r\nAccept: */*\r\nBITS-Packet-Type: ${type}\r\n${extra}` +
        `User-Agent: Microsoft BITS/7.8\r\nHost: ${HOST}:${port}\r\nContent-Length: ${length}\r\nConnection: Keep-Alive\r\n\r\n`
      );
    },
    async open(conn, name, size) {
      const target = `/${name}`;
      const response = await conn.request(this.head(conn.port, target, 'Create-Session', `BITS-Supported-Protocols: ${BITS_PROTOCOL}\r\n`, 0));
      const sessionId = response.headers['bits-session-id'];
      if (response.status !== 200 || !sessionId) throw new ResponseError('Create-Session', response);
      return { name, size, target, sessionId, files: [name] };
    },
    fragment(conn, upload, start, end) {
      return this.head(
        conn.port,
        upload.target,
        'Fragment',
        `BITS-Session-Id: ${upload.sessionId}\r\nContent-Name: ${upload.name}\r\nContent-Range: bytes ${start}-${end - 1}/${upload.size}\r\n`,
        end - start,
      );
    },
    ok: (response, end) => response.status === 200 && response.headers['bits-received-content-range'] === String(end),
    async close(conn, upload) {
      const response = await conn.request(this.head(conn.port, upload.target, 'Close-Session', `BITS-Session-Id: ${upload.sessionId}\r\n`, 0));
      if (response.status !== 200) throw new ResponseError('Close-Session', response);
    },
  },
  raw: {
    async open(conn, name, size) {
      return { name, size, files: [name] };
    },
    fragment(conn, upload, start, end) {
      return (
        `POST /${upload.name}?offset=${start}&total=${upload.size} HTTP/1.1\r\nHost: ${HOST}:${conn.port}\r\n` +
        `Content-Type: application/octet-stream\r\nContent-Length: ${end - start}\r\n\r\n`
      );
    },
    ok: (response) => response.status === 204,
    async close() {},
  },
  tus: {
    async open(conn, name, size) {
      const response = await conn.request(
        `POST /files HTTP/1.1\r\nHost: ${HOST}:${conn.port}\r\nTus-Resumable: 1.0.0\r\nUpload-Length: ${size}\r\nContent-Length: 0\r\n\r\n`,
      );
      const location = response.headers.location;
      if (response.status !== 201 || !location) throw new ResponseError('tus create', response);
      const id = location.slice(location.lastIndexOf('/') + 1);
      return { name, size, id, files: [id, `${id}.json`] };
    },
    fragment(conn, upload, start, end) {
      return (
        `PATCH /files/${upload.id} HTTP/1.1\r\nHost: ${HOST}:${conn.port}\r\nTus-Resumable: 1.0.0\r\n` +
        `Upload-Offset: ${start}\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: ${end - start}\r\n\r\n`
      );
    },
    ok: (response, end) => response.status === 204 && response.headers['upload-offset'] === String(end),
    async close() {},
  },
};

/** S1, S2, S4: one upload, fragment after fragment over one keep-alive connection. */
async function runSequential(job, pattern, progress) {
  const protocol = PROTOCOLS[job.protocol];
  const conn = new Conn(job.port);
  await conn.connect();
  const latencies = [];
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  let nextProgress = job.progressEvery || Infinity;
  let upload;
  try {
    upload = await protocol.open(conn, job.name, job.size);
    const maxFragments = Math.ceil(job.size / job.fragment);
    for (let n = 0, start = 0; n < maxFragments && start < job.size; n++) {
      const end = Math.min(job.size, start + job.fragment);
      const response = await conn.request(protocol.fragment(conn, upload, start, end), slices(pattern, start, end));
      if (!protocol.ok(response, end)) throw new ResponseError(`fragment ${start}-${end - 1}`, response);
      latencies.push(response.ns / 1e6);
      start = end;
      if (start >= nextProgress) {
        progress(start);
        nextProgress += job.progressEvery;
      }
    }
    await protocol.close(conn, upload);
  } finally {
    conn.close();
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { seconds, bytes: job.size, fragments: latencies.length, latencies, errors: 0, files: upload.files, clientCpu: process.cpuUsage(cpu0) };
}

/**
 * S3: `sessions` uploads all open at once. Connection w carries sessions w, w + C, w + 2C, ... and
 * sends their fragments round-robin (fragment k of each of its sessions, then k + 1), so every
 * session stays open from the first Create-Session to the end. A failed request counts as an error
 * and abandons its session; a broken connection is reopened (at most 10 times per connection).
 */
async function runConcurrent(job, pattern) {
  const protocol = PROTOCOLS[job.protocol];
  const latencies = [];
  const errors = [];
  let fragments = 0;
  let bytes = 0;
  const files = [];
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const worker = async (w) => {
    const conn = new Conn(job.port);
    let reconnects = 0;
    const ensure = async () => {
      if (!conn.dead) return true;
      if (reconnects++ > 10) return false;
      await conn.connect();
      return true;
    };
    const mine = [];
    for (let s = w; s < job.sessions; s += job.connections) mine.push({ name: `${job.prefix}-${s}.bin`, upload: null, failed: false });
    const attempt = async (session, what, fn) => {
      try {
        if (!(await ensure())) throw new Error('too many reconnects');
        await fn();
      } catch (error) {
        session.failed = true;
        errors.push(`${session.name} ${what}: ${String(error.message ?? error).slice(0, 300)}`);
      }
    };
    for (const session of mine) {
      await attempt(session, 'open', async () => {
        session.upload = await protocol.open(conn, session.name, job.sessionSize);
        files.push(...session.upload.files);
      });
    }
    const perSession = Math.ceil(job.sessionSize / job.fragment);
    for (let k = 0; k < perSession; k++) {
      const start = k * job.fragment;
      const end = Math.min(job.sessionSize, start + job.fragment);
      for (const session of mine) {
        if (session.failed) continue;
        await attempt(session, `fragment ${k}`, async () => {
          const response = await conn.request(protocol.fragment(conn, session.upload, start, end), slices(pattern, start, end));
          if (!protocol.ok(response, end)) throw new ResponseError(`fragment ${start}-${end - 1}`, response);
          latencies.push(response.ns / 1e6);
          fragments++;
          bytes += end - start;
        });
      }
    }
    for (const session of mine) {
      if (!session.failed) await attempt(session, 'close', () => protocol.close(conn, session.upload));
    }
    conn.close();
  };
  await Promise.all(Array.from({ length: job.connections }, (_, w) => worker(w)));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { seconds, bytes, fragments, latencies, errors: errors.length, errorSamples: errors.slice(0, 5), files, clientCpu: process.cpuUsage(cpu0) };
}

function runClient() {
  const pattern = makePattern();
  process.on('message', (message) => {
    if (message?.cmd !== 'run') return;
    const { id, job } = message;
    const progress = (bytes) => process.send({ cmd: 'progress', id, bytes });
    const work = job.kind === 'concurrent' ? runConcurrent(job, pattern) : runSequential(job, pattern, progress);
    work.then(
      (result) => process.send({ id, result }),
      (error) => process.send({ id, error: String(error.stack ?? error) }),
    );
  });
  process.on('disconnect', () => process.exit(0));
  setTimeout(() => process.exit(2), CHILD_LIFETIME_MS).unref();
  process.send({ cmd: 'ready' });
}

// =============================================================================================
// Orchestrator
// =============================================================================================

function parseArgs(argv) {
  const quick = argv.includes('--quick');
  const options = {
    quick,
    // S5 first: small-request rates are the most sensitive to the writeback the disk scenarios leave.
    scenarios: ['s5', 's1', 's2', 's3', 's4'],
    variants: ALL_VARIANTS,
    rounds: quick ? 3 : 5,
    s1Mib: quick ? 512 : 1024,
    s2Mib: quick ? 32 : 64,
    s3Sessions: 200,
    s3SessionKib: 1024,
    s3FragmentKib: 256,
    s3Connections: 48,
    s4Mib: quick ? 1024 : 4096,
    s5Rounds: quick ? 3 : 5,
    s5Duration: quick ? 2 : 3,
    verify: true,
    profile: false,
    serverFlags: [],
    check: false,
    out: path.join(__dirname, 'results', 'bench.json'),
  };
  for (const arg of argv) {
    if (arg === '--quick') continue;
    const [key, value] = arg.replace(/^--/, '').split('=');
    const camel = key.replace(/-(.)/g, (_, c) => c.toUpperCase());
    if (camel === 'profile' || camel === 'check') options[camel] = true;
    else if (camel === 'noVerify') options.verify = false;
    else if (camel === 'scenarios') options.scenarios = value.split(',');
    else if (camel === 'serverFlags') options.serverFlags = arg.slice('--server-flags='.length).split(/\s+/).filter(Boolean);
    else if (camel === 'variants') {
      options.variants = value.split(',');
      if (!options.variants.includes('bits') || !options.variants.includes('baseline') || options.variants.some((v) => !ALL_VARIANTS.includes(v))) {
        throw new Error(`--variants: a list of ${ALL_VARIANTS.join(', ')} including bits and baseline`);
      }
    } else if (camel === 'out') options.out = path.resolve(value);
    else if (camel in options && value !== undefined && Number.isFinite(Number(value)) && Number(value) > 0) options[camel] = Number(value);
    else throw new Error(`unknown option ${arg}`);
  }
  return options;
}

const children = new Set();
let rpcId = 0;
let tempDir = null;

function rpc(child, message, timeoutMs = 10_000, onProgress = null) {
  const id = ++rpcId;
  let onMessage;
  return withTimeout(
    new Promise((resolve, reject) => {
      onMessage = (reply) => {
        if (reply?.id !== id) return;
        if (reply.cmd === 'progress') return onProgress?.(reply.bytes);
        if (reply.error) reject(new Error(reply.error));
        else resolve(reply);
      };
      child.on('message', onMessage);
      child.send({ ...message, id });
    }),
    timeoutMs,
    `${message.cmd}`,
  ).finally(() => child.off('message', onMessage));
}

function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Starts one server child and waits for its `listening on http://127.0.0.1:PORT/` line. */
async function startServer(variant, ctx, phase) {
  const dir = path.join(ctx.dataDir, `${variant}-${phase}`);
  fs.mkdirSync(dir, { recursive: true });
  const execArgv = [...ctx.options.serverFlags];
  if (ctx.options.profile) {
    execArgv.push('--cpu-prof', `--cpu-prof-dir=${ctx.profileDir}`, `--cpu-prof-name=${variant}-${phase}-${Date.now()}.cpuprofile`);
  }
  let args;
  if (variant === 'bits') {
    const cli = path.join(ctx.distDir, 'server', 'cli.js');
    args = ['--child=bits-cli', cli, '--dir', dir, '--port', '0', '--host', HOST, '--max-sessions-per-client', '1000'];
  } else if (variant === 'bits-nosync' || variant === 'bits-sha256') args = ['--child=bits-library', variant, ctx.distDir, dir];
  else if (variant === 'baseline' || variant === 'baseline-sync') args = ['--child=baseline', dir, variant === 'baseline-sync' ? '1' : '0'];
  else if (variant === 'tus') args = ['--child=tus', dir];
  const child = track(fork(__filename, args, { execArgv, stdio: ['ignore', 'pipe', 'inherit', 'ipc'] }));
  let output = '';
  const port = await withTimeout(
    new Promise((resolve, reject) => {
      child.stdout.on('data', (data) => {
        output += data;
        const match = /listening on http:\/\/127\.0\.0\.1:(\d+)\//.exec(output);
        if (match) resolve(Number(match[1]));
      });
      child.once('exit', (code) => reject(new Error(`${variant} server exited with ${code}: ${output}`)));
    }),
    15_000,
    `${variant} server start`,
  );
  return { variant, child, port, pid: child.pid, dir, protocol: PROTOCOL_OF[variant] };
}

/** Stops a server child (its final usage report) and deletes its folder: nothing stays on the disk between scenarios. */
async function stopServer(server) {
  const exited = once(server.child, 'exit');
  const final = await rpc(server.child, { cmd: 'exit' });
  await withTimeout(exited, 15_000, `${server.variant} exit`).catch(() => server.child.kill('SIGKILL'));
  fs.rmSync(server.dir, { recursive: true, force: true });
  return final;
}

/** Resident set of a process from /proc (KiB), or null. */
function rssKiB(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'latin1');
    return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  } catch {
    return null;
  }
}

/** Read and write system calls of a process so far (all its threads), from /proc/<pid>/io, or null. */
function syscalls(pid) {
  try {
    const io = fs.readFileSync(`/proc/${pid}/io`, 'latin1');
    return { reads: Number(/syscr:\s+(\d+)/.exec(io)[1]), writes: Number(/syscw:\s+(\d+)/.exec(io)[1]) };
  } catch {
    return null;
  }
}

/** User-mode (user + nice) and total CPU time of the whole machine so far (seconds), from /proc/stat. */
function machineCpu() {
  try {
    const fields = fs.readFileSync('/proc/stat', 'latin1').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const total = fields.reduce((a, b) => a + b, 0);
    const idle = fields[3] + (fields[4] ?? 0);
    const tick = 100; // USER_HZ
    return { user: (fields[0] + fields[1]) / tick, total: total / tick };
  } catch {
    return null;
  }
}

function sampleRss(pid, everyMs = 100) {
  let max = 0;
  const series = [];
  const t0 = Date.now();
  const take = () => {
    const value = rssKiB(pid);
    if (value !== null) {
      max = Math.max(max, value);
      series.push([Date.now() - t0, value]);
    }
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    stop() {
      clearInterval(timer);
      take();
      return { maxKiB: max, samples: series.length };
    },
  };
}

function syncDisk() {
  spawnSync('sync', [], { timeout: 120_000 });
}

/** Byte-for-byte check of an uploaded file against the pattern; returns a problem or null. */
function verifyFile(file, size, pattern) {
  let fd;
  try {
    fd = fs.openSync(file, 'r');
  } catch (error) {
    return `${file}: ${error.code}`;
  }
  try {
    const actual = fs.fstatSync(fd).size;
    if (actual !== size) return `${file}: ${actual} bytes, expected ${size}`;
    const buffer = Buffer.allocUnsafe(4 * MiB);
    for (let at = 0; at < size; ) {
      const want = Math.min(buffer.length, size - at, PATTERN_BYTES - (at % PATTERN_BYTES));
      let got = 0;
      for (let tries = 0; got < want && tries < 1000; tries++) {
        const n = fs.readSync(fd, buffer, got, want - got, at + got);
        if (n === 0) break;
        got += n;
      }
      if (got !== want) return `${file}: short read at ${at}`;
      const from = at % PATTERN_BYTES;
      if (buffer.compare(pattern, from, from + want, 0, want) !== 0) return `${file}: bytes differ in ${at}-${at + want - 1}`;
      at += want;
    }
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

/** Checks (unless --no-verify) and deletes the files of one sample. */
function verifyAndDelete(server, result, size, ctx) {
  const problems = [];
  for (const name of result.files) {
    const file = path.join(server.dir, name);
    if (ctx.options.verify && !name.endsWith('.json')) {
      const problem = verifyFile(file, size, ctx.pattern);
      if (problem) problems.push(problem);
    }
    fs.rmSync(file, { force: true });
  }
  return problems;
}

const cpuSeconds = (before, after) => (after.cpu.user - before.cpu.user + after.cpu.system - before.cpu.system) / 1e6;
const rotate = (list, by) => list.map((_, i) => list[(i + by) % list.length]);

function median(values) {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function percentile(values, p) {
  if (values.length === 0) return NaN;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** One timed sample: flush the disk, measure the server's CPU and RSS around the client's job. */
async function measure(server, job, ctx, onProgress) {
  syncDisk();
  const before = await rpc(server.child, { cmd: 'usage' });
  const io0 = syscalls(server.pid);
  const machine0 = machineCpu();
  const sampler = sampleRss(server.pid);
  const timeoutMs = 60_000 + Math.ceil((job.bytesTotal / (20 * MiB)) * 1000);
  let result;
  let error = null;
  try {
    ({ result } = await rpc(ctx.client, { cmd: 'run', job }, timeoutMs, onProgress));
  } catch (e) {
    error = String(e.message ?? e).slice(0, 1000);
  }
  const rss = sampler.stop();
  const io1 = syscalls(server.pid);
  const machine1 = machineCpu();
  const after = await rpc(server.child, { cmd: 'usage' });
  const cpu = cpuSeconds(before, after);
  const userCpu = (after.cpu.user - before.cpu.user) / 1e6;
  if (error !== null) return { error, serverCpuSeconds: cpu, sampledMaxRssMiB: rss.maxKiB / 1024 };
  const problems = verifyAndDelete(server, result, job.kind === 'concurrent' ? job.sessionSize : job.size, ctx);
  return {
    mibps: result.bytes / MiB / result.seconds,
    fragmentsPerSecond: result.fragments / result.seconds,
    seconds: result.seconds,
    bytes: result.bytes,
    fragments: result.fragments,
    latencies: result.latencies,
    errors: result.errors + problems.length,
    errorSamples: [...(result.errorSamples ?? []), ...problems].slice(0, 5),
    verified: ctx.options.verify && problems.length === 0,
    serverCpuSeconds: cpu,
    serverCpuSecondsPerGiB: cpu / (result.bytes / GiB),
    serverUserCpuSecondsPerGiB: userCpu / (result.bytes / GiB),
    serverSystemCpuSecondsPerGiB: (cpu - userCpu) / (result.bytes / GiB),
    clientCpuSeconds: (result.clientCpu.user + result.clientCpu.system) / 1e6,
    sampledMaxRssMiB: rss.maxKiB / 1024,
    // User-mode CPU that other processes used meanwhile, as a share of all cores: the noise
    // indicator of the sample (kernel time is left out: it is mostly this sample's own I/O).
    otherCpuShare:
      machine0 && machine1
        ? Math.max(0, machine1.user - machine0.user - userCpu - result.clientCpu.user / 1e6) / (machine1.total - machine0.total)
        : NaN,
    readSyscallsPerFragment: io0 && io1 ? (io1.reads - io0.reads) / result.fragments : NaN,
    writeSyscallsPerFragment: io0 && io1 ? (io1.writes - io0.writes) / result.fragments : NaN,
  };
}

function jobFor(def, server, round) {
  const prefix = `${def.id}-r${round}`;
  if (def.kind === 'concurrent') {
    return {
      kind: 'concurrent',
      protocol: server.protocol,
      port: server.port,
      prefix,
      sessions: def.sessions,
      sessionSize: def.sessionSize,
      fragment: def.fragment,
      connections: def.connections,
      bytesTotal: def.sessions * def.sessionSize,
    };
  }
  return { kind: 'sequential', protocol: server.protocol, port: server.port, name: `${prefix}.bin`, size: def.size, fragment: def.fragment, bytesTotal: def.size, progressEvery: def.progressEvery };
}

function summarise(samples, final) {
  const ok = samples.filter((s) => s.error === undefined);
  const latencies = ok.flatMap((s) => s.latencies);
  return {
    samples: samples.length,
    failedSamples: samples.length - ok.length,
    medianMiBps: median(ok.map((s) => s.mibps)),
    minMiBps: Math.min(...ok.map((s) => s.mibps)),
    maxMiBps: Math.max(...ok.map((s) => s.mibps)),
    fragmentsPerSecond: median(ok.map((s) => s.fragmentsPerSecond)),
    p50ms: percentile(latencies, 50),
    p99ms: percentile(latencies, 99),
    errors: ok.reduce((a, s) => a + s.errors, 0) + (samples.length - ok.length),
    errorSamples: samples.flatMap((s) => (s.error ? [s.error] : s.errorSamples ?? [])).slice(0, 5),
    serverCpuSeconds: median(ok.map((s) => s.serverCpuSeconds)),
    serverCpuSecondsPerGiB: median(ok.map((s) => s.serverCpuSecondsPerGiB)),
    serverUserCpuSecondsPerGiB: median(ok.map((s) => s.serverUserCpuSecondsPerGiB)),
    serverSystemCpuSecondsPerGiB: median(ok.map((s) => s.serverSystemCpuSecondsPerGiB)),
    clientCpuSeconds: median(ok.map((s) => s.clientCpuSeconds)),
    otherCpuShare: median(ok.map((s) => s.otherCpuShare)),
    readSyscallsPerFragment: median(ok.map((s) => s.readSyscallsPerFragment)),
    writeSyscallsPerFragment: median(ok.map((s) => s.writeSyscallsPerFragment)),
    peakRssMiB: final ? final.maxRssKiB / 1024 : NaN,
    serverCpuSecondsTotal: final ? (final.cpu.user + final.cpu.system) / 1e6 : NaN,
    verified: ok.length > 0 && ok.every((s) => s.verified),
    perSample: samples.map(({ latencies: _l, ...rest }) => rest),
  };
}

function addRatios(servers) {
  const base = servers.baseline;
  for (const s of Object.values(servers)) {
    s.ratioMiBps = s.medianMiBps / base.medianMiBps;
    s.ratioCpuPerGiB = s.serverCpuSecondsPerGiB / base.serverCpuSecondsPerGiB;
    s.ratioPeakRss = s.peakRssMiB / base.peakRssMiB;
  }
}

/** S1, S2, S3: all variants up at once, warm-up, then rounds with the variants rotated. */
async function throughputScenario(def, ctx, log) {
  const variants = ctx.options.variants;
  const loadBefore = os.loadavg();
  const servers = {};
  for (const variant of variants) servers[variant] = await startServer(variant, ctx, def.id);
  // Warm-up (JIT, heaps, first files): a small upload of the scenario's shape per server, not timed.
  for (const variant of variants) {
    const warm = def.kind === 'concurrent'
      ? { ...def, sessions: Math.min(def.sessions, def.connections) }
      : { ...def, size: Math.min(def.size, 32 * MiB) };
    const sample = await measure(servers[variant], jobFor(warm, servers[variant], 'warm'), ctx);
    if (sample.error) log(`  ${def.id} warm-up ${variant}: ${sample.error}`);
  }
  const samples = Object.fromEntries(variants.map((v) => [v, []]));
  for (let round = 0; round < def.rounds; round++) {
    for (const variant of rotate(variants, round)) {
      const sample = await measure(servers[variant], jobFor(def, servers[variant], round), ctx);
      samples[variant].push(sample);
      log(
        sample.error
          ? `  ${def.id} round ${round + 1} ${variant.padEnd(13)} ERROR ${sample.error.split('\n')[0]}`
          : `  ${def.id} round ${round + 1} ${variant.padEnd(13)} ${fmt(sample.mibps)} MiB/s, ${fmt(sample.fragmentsPerSecond)} fragments/s, ` +
              `server ${fmt(sample.serverCpuSeconds, 2)} CPU s${sample.errors ? `, ${sample.errors} errors` : ''}`,
      );
    }
  }
  const summary = {};
  for (const variant of variants) summary[variant] = summarise(samples[variant], await stopServer(servers[variant]));
  addRatios(summary);
  for (const variant of variants) {
    summary[variant].pairedRatioMiBps = pairedRatio(samples[variant], samples.baseline);
    if (samples.tus) summary[variant].pairedRatioToTus = pairedRatio(samples[variant], samples.tus);
  }
  return { id: def.id, title: def.title, def: { ...def }, loadBefore, loadAfter: os.loadavg(), servers: summary };
}

/**
 * The median over rounds of `sample.mibps / other.mibps` of the same round. The variants of a
 * round run back to back, so this pairs samples taken under the same load; on a shared VM whose
 * speed drifts from round to round it is steadier than the ratio of the two medians.
 */
function pairedRatio(samples, others) {
  return median(samples.map((s, round) => (s.error === undefined && others[round]?.error === undefined ? s.mibps / others[round].mibps : NaN)));
}

/** S4: one big upload per variant, each on a fresh server alone; RSS at every quarter of the upload. */
async function memoryScenario(def, ctx, log) {
  const variants = ctx.options.variants.filter((v) => CORE_VARIANTS.includes(v));
  const loadBefore = os.loadavg();
  const summary = {};
  for (const variant of variants) {
    const server = await startServer(variant, ctx, def.id);
    const checkpoints = [];
    const sample = await measure(server, jobFor(def, server, 0), ctx, (bytes) => {
      checkpoints.push({ bytes, rssMiB: rssKiB(server.pid) / 1024 });
    });
    const final = await stopServer(server);
    summary[variant] = summarise([sample], final);
    summary[variant].rssCheckpoints = checkpoints;
    const half = Math.floor(checkpoints.length / 2);
    const firstHalf = Math.max(...checkpoints.slice(0, half).map((c) => c.rssMiB));
    const secondHalf = Math.max(...checkpoints.slice(half).map((c) => c.rssMiB));
    summary[variant].rssGrowthMiB = checkpoints.length >= 2 ? secondHalf - firstHalf : NaN;
    log(
      sample.error
        ? `  s4 ${variant.padEnd(13)} ERROR ${sample.error.split('\n')[0]}`
        : `  s4 ${variant.padEnd(13)} ${fmt(sample.mibps)} MiB/s, peak RSS ${fmt(final.maxRssKiB / 1024, 1)} MiB, ` +
            `RSS at ${checkpoints.map((c) => `${fmt(c.bytes / GiB, 2)} GiB: ${fmt(c.rssMiB, 1)}`).join(', ')}`,
    );
  }
  addRatios(summary);
  return { id: def.id, title: def.title, def: { ...def }, loadBefore, loadAfter: os.loadavg(), servers: summary };
}

/** S5: bench/shim.js's keep-alive GET measurement (wrk), plain vs the BITS_POST support. */
async function getScenario(ctx, log) {
  const out = path.join(__dirname, 'results', 'bench-s5-shim.json');
  const args = [
    path.join(__dirname, 'shim.js'),
    '--scenarios=get',
    '--variants=plain,all,first-request',
    `--rounds=${ctx.options.s5Rounds}`,
    `--duration=${ctx.options.s5Duration}`,
    `--out=${out}`,
  ];
  const loadBefore = os.loadavg();
  log(`  s5: node ${args.map((a) => path.relative(ROOT, a) || a).join(' ')}`);
  await withTimeout(
    new Promise((resolve, reject) => {
      const proc = track(spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] }));
      proc.on('error', reject);
      proc.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`bench/shim.js exited with ${code}`))));
    }),
    5 * 60_000,
    'bench/shim.js',
  );
  const shim = JSON.parse(fs.readFileSync(out, 'utf8'));
  const get = shim.scenarios.find((s) => s.scenario === 'get');
  return { id: 's5', title: 'Small GETs, keep-alive', driver: get.driver, connections: get.connections, rounds: get.rounds, seconds: get.seconds, loadBefore, loadAfter: os.loadavg(), variants: get.variants, json: path.relative(ROOT, out) };
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

const fmt = (value, digits = 0) =>
  value === null || value === undefined || Number.isNaN(value) || !Number.isFinite(value)
    ? '-'
    : value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

function evaluate(results) {
  const checks = [];
  const scenario = (id) => results.scenarios.find((s) => s.id === id);
  const add = (what, value, bound, ok) => checks.push({ what, value, bound, ok });
  for (const [id, target] of [['s1', TARGETS.s1], ['s2', TARGETS.s2], ['s3', TARGETS.s3]]) {
    const s = scenario(id);
    if (!s) continue;
    const bits = s.servers.bits;
    add(`${id.toUpperCase()} bits MiB/s / baseline (paired per round)`, bits.pairedRatioMiBps, `≥ ${target}`, bits.pairedRatioMiBps >= target && bits.failedSamples === 0);
    if (id === 's3') add('S3 bits errors', bits.errors, '= 0', bits.errors === 0);
  }
  for (const id of ['s1', 's2', 's3', 's4']) {
    const s = scenario(id);
    if (!s?.servers.tus) continue;
    // S4 runs once per server: its one pair of samples.
    const paired = id !== 's4';
    const value = paired ? s.servers.bits.pairedRatioToTus : s.servers.bits.medianMiBps / s.servers.tus.medianMiBps;
    add(`${id.toUpperCase()} bits ahead of tus (bits MiB/s / tus MiB/s${paired ? ', paired per round' : ''})`, value, '> 1', value > 1);
  }
  const s4 = scenario('s4');
  if (s4) {
    const bits = s4.servers.bits;
    add('S4 bits peak RSS / baseline peak RSS', bits.ratioPeakRss, `≤ ${TARGETS.s4Rss}`, bits.ratioPeakRss <= TARGETS.s4Rss);
    add(
      'S4 bits RSS growth, 2nd half vs 1st half of the upload (MiB)',
      bits.rssGrowthMiB,
      `≤ ${S4_GROWTH_ALLOWANCE_MIB}`,
      bits.rssGrowthMiB <= S4_GROWTH_ALLOWANCE_MIB,
    );
  }
  const s5 = scenario('s5');
  if (s5) {
    const all = s5.variants.all;
    add("S5 GET req/s, BITS_POST support ('all', what the CLI uses) / plain (paired per round)", all.pairedRatioToPlain, `≥ ${TARGETS.s5}`, all.pairedRatioToPlain >= TARGETS.s5);
  }
  return checks;
}

function markdown(results) {
  const { meta } = results;
  const lines = [];
  lines.push(`### bits-upload vs the disk and the wire (${meta.date}, Node ${meta.node}, ${meta.cpus} × ${meta.cpuModel}${meta.quick ? ', --quick' : ''})`, '');
  lines.push(`Measured code: git ${meta.git.head}${meta.git.dirty ? ` + uncommitted changes in ${meta.git.dirty}` : ''}; dist/storage/filesystem.js sha256 ${meta.distFilesystemSha256.slice(0, 12)}.`);
  if (meta.serverFlags.length > 0) lines.push(`Every server ran with \`node ${meta.serverFlags.join(' ')}\`.`);
  if (meta.otherActivity?.length || meta.otherActivityAtStart?.length) {
    lines.push(`**Other work ran during this run, the numbers are disturbed:** ${[...(meta.otherActivityAtStart ?? []), ...(meta.otherActivity ?? [])].map((l) => `\`${l}\``).join('; ')}.`);
  }
  lines.push(`Disk: ${meta.disk}. Load average before ${meta.loadBefore.map((l) => l.toFixed(2)).join(' ')}, after ${meta.loadAfter.map((l) => l.toFixed(2)).join(' ')}. Run time ${fmt(meta.seconds)} s.`, '');
  for (const s of results.scenarios) {
    if (s.id === 's5') continue;
    lines.push(`**${s.id.toUpperCase()}: ${s.title}** (load ${s.loadBefore.map((l) => l.toFixed(2)).join(' ')})`, '');
    lines.push('| server | MiB/s (median) | min–max | ratio | paired ratio | fragments/s | p50 ms | p99 ms | server CPU s | CPU s/GiB (user + sys) | CPU ratio | peak RSS MiB | read/write syscalls per fragment | other processes’ CPU | errors |');
    lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const [variant, v] of Object.entries(s.servers)) {
      lines.push(
        `| ${variant} | ${fmt(v.medianMiBps)} | ${fmt(v.minMiBps)}–${fmt(v.maxMiBps)} | ${fmt(v.ratioMiBps, 2)} | ${fmt(v.pairedRatioMiBps, 2)} | ${fmt(v.fragmentsPerSecond)} | ` +
          `${fmt(v.p50ms, 2)} | ${fmt(v.p99ms, 2)} | ${fmt(v.serverCpuSeconds, 2)} | ${fmt(v.serverCpuSecondsPerGiB, 2)} (${fmt(v.serverUserCpuSecondsPerGiB, 1)} + ${fmt(v.serverSystemCpuSecondsPerGiB, 1)}) | ${fmt(v.ratioCpuPerGiB, 2)} | ` +
          `${fmt(v.peakRssMiB, 1)} | ${fmt(v.readSyscallsPerFragment, 1)} / ${fmt(v.writeSyscallsPerFragment, 1)} | ${fmt(100 * v.otherCpuShare)} % | ${v.errors}${v.verified ? '' : ' (not verified)'} |`,
      );
    }
    if (s.id === 's4') {
      lines.push('', '| server | RSS MiB at ' + (s.servers.bits?.rssCheckpoints ?? []).map((c) => `${fmt(c.bytes / GiB, 2)} GiB`).join(' | ') + ' | growth 2nd vs 1st half MiB |');
      lines.push('|---|' + (s.servers.bits?.rssCheckpoints ?? []).map(() => '---:|').join('') + '---:|');
      for (const [variant, v] of Object.entries(s.servers)) {
        lines.push(`| ${variant} | ${v.rssCheckpoints.map((c) => fmt(c.rssMiB, 1)).join(' | ')} | ${fmt(v.rssGrowthMiB, 1)} |`);
      }
    }
    const errors = Object.entries(s.servers).filter(([, v]) => v.errorSamples.length > 0);
    for (const [variant, v] of errors) lines.push('', `${variant} errors: ${v.errorSamples.map((e) => `\`${e.split('\n')[0]}\``).join('; ')}`);
    lines.push('');
  }
  const s5 = results.scenarios.find((s) => s.id === 's5');
  if (s5) {
    lines.push(`**S5: small GETs, keep-alive** (bench/shim.js, ${s5.driver}, ${s5.connections} connections, ${s5.rounds} × ${s5.seconds} s, median; load ${s5.loadBefore.map((l) => l.toFixed(2)).join(' ')})`, '');
    lines.push('| server | req/s | ratio (paired per round) | server CPU µs/req | p50 µs | p99 µs | peak RSS MiB |');
    lines.push('|---|---:|---:|---:|---:|---:|---:|');
    const names = { plain: 'plain node:http', all: "BITS_POST support, connections 'all' (CLI default)", 'first-request': "BITS_POST support, connections 'first-request'" };
    for (const [variant, v] of Object.entries(s5.variants)) {
      lines.push(`| ${names[variant] ?? variant} | ${fmt(v.medianRps)} | ${fmt(v.pairedRatioToPlain, 3)} | ${fmt(v.cpuUsPerRequest, 1)} | ${fmt(v.medianP50us)} | ${fmt(v.medianP99us)} | ${fmt(v.peakRssMiB, 1)} |`);
    }
    lines.push('');
  }
  lines.push('**Targets**', '');
  for (const c of results.checks) lines.push(`- ${c.ok ? 'PASS' : 'FAIL'} ${c.what}: ${fmt(c.value, 3)} (${c.bound})`);
  lines.push('');
  return lines.join('\n');
}

function summariseProfiles(dir) {
  const summarise = require('./cpuprofile-top.js');
  const out = [];
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).sort()) {
    out.push(`#### ${file}`, '', summarise(path.join(dir, file), 25), '');
  }
  return out.join('\n');
}

/** This process and the ones that started it (`npm run bench`, its shell): not other work. */
function ancestry() {
  const pids = [];
  for (let pid = process.pid; pid > 1 && pids.length < 64; ) {
    pids.push(String(pid));
    try {
      // "pid (command) state ppid ...": the command may contain spaces and parentheses.
      pid = Number(fs.readFileSync(`/proc/${pid}/stat`, 'latin1').replace(/^.*\) /s, '').split(' ')[1]);
    } catch {
      break;
    }
  }
  return pids;
}

/** Other heavy work on the machine right now (benchmarks, test runs, builds), by command line. */
function otherActivity() {
  const found = [];
  let pids = [];
  try {
    pids = fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name));
  } catch {
    return found;
  }
  const ours = new Set([...ancestry(), ...[...children].map((c) => String(c.pid))]);
  for (const pid of pids) {
    if (ours.has(pid)) continue;
    let cmd;
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').join(' ').trim();
    } catch {
      continue;
    }
    if (/bench\/(run|shim|fsync|tracker-micro)\.js(?! --child)|jest|tsc |wrk /.test(cmd) && !/--child=/.test(cmd)) found.push(`${pid}: ${cmd.slice(0, 120)}`);
  }
  return found;
}

function gitState() {
  const git = (...args) => spawnSync('git', ['-C', ROOT, ...args], { encoding: 'utf8', timeout: 10_000 }).stdout?.trim() ?? '';
  const status = spawnSync('git', ['-C', ROOT, 'status', '--short', '--', 'lib'], { encoding: 'utf8', timeout: 10_000 }).stdout ?? '';
  const dirty = status
    .split('\n')
    .filter(Boolean)
    .map((l) => l.slice(3))
    .join(', ');
  return { head: git('rev-parse', '--short', 'HEAD'), dirty };
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const log = (line) => console.error(line);
  const watchdog = setTimeout(() => {
    console.error('bench/run.js: overall time limit reached, stopping');
    process.exit(1);
  }, (options.quick ? 6 : 16) * 60_000);
  watchdog.unref();
  process.on('exit', () => {
    for (const child of children) child.kill('SIGKILL');
    if (tempDir !== null) fs.rmSync(tempDir, { recursive: true, force: true });
  });
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(130));

  const dist = path.join(ROOT, 'dist');
  if (!fs.existsSync(path.join(dist, 'server', 'cli.js'))) throw new Error('dist/ is missing: run `npm run build` first (npm run bench does)');
  // A private copy of dist/ taken now, so that a rebuild during the run cannot change the measured
  // code halfway; inside the repository so that node_modules resolves, and on the disk under test.
  fs.mkdirSync(path.join(ROOT, '.tmp'), { recursive: true });
  tempDir = fs.mkdtempSync(path.join(ROOT, '.tmp', 'bench-'));
  const distDir = path.join(tempDir, 'dist');
  fs.cpSync(dist, distDir, { recursive: true });
  const dataDir = path.join(tempDir, 'data');
  fs.mkdirSync(dataDir);
  const statfs = fs.statfsSync(dataDir);
  if (statfs.type === TMPFS_MAGIC) throw new Error(`${dataDir} is on tmpfs: the benchmark must write to a disk`);
  const needed = Math.max(options.s1Mib, options.s4Mib) * MiB * 1.5;
  if (statfs.bavail * statfs.bsize < needed) throw new Error(`not enough free space in ${dataDir}: need ${fmt(needed / GiB, 1)} GiB`);
  const profileDir = path.join(__dirname, 'results', 'profiles-bench');
  if (options.profile) {
    fs.rmSync(profileDir, { recursive: true, force: true });
    fs.mkdirSync(profileDir, { recursive: true });
  }

  const client = track(fork(__filename, ['--child=client'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  await withTimeout(once(client, 'message'), 15_000, 'client start');
  const ctx = { options, distDir, dataDir, profileDir, client, pattern: makePattern() };

  const cpus = os.cpus();
  const df = spawnSync('df', ['-hT', dataDir], { encoding: 'utf8' }).stdout.trim().split('\n')[1]?.split(/\s+/) ?? [];
  const results = {
    meta: {
      date: new Date().toISOString(),
      quick: options.quick,
      serverFlags: options.serverFlags,
      node: process.versions.node,
      platform: `${process.platform} ${os.release()}`,
      cpus: cpus.length,
      cpuModel: cpus[0]?.model.trim(),
      memoryGiB: os.totalmem() / GiB,
      disk: `${df[0]} (${df[1]}, ${df[2]}, ${df[4]} free)`,
      git: gitState(),
      distFilesystemSha256: crypto.createHash('sha256').update(fs.readFileSync(path.join(distDir, 'storage', 'filesystem.js'))).digest('hex'),
      loadBefore: os.loadavg(),
      options: { ...options, out: path.relative(ROOT, options.out) },
    },
    scenarios: [],
    checks: [],
  };
  results.meta.otherActivityAtStart = otherActivity();
  for (const line of results.meta.otherActivityAtStart) log(`WARNING: other work is running and will disturb the measurements: ${line}`);
  log(`bench/run.js: ${options.quick ? 'quick, ' : ''}scenarios ${options.scenarios.join(',')}, variants ${options.variants.join(',')}, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);

  const defs = {
    s1: { id: 's1', kind: 'sequential', title: `one ${fmt(options.s1Mib)} MiB file in 1 MiB fragments, ${options.rounds} rounds`, size: options.s1Mib * MiB, fragment: MiB, rounds: options.rounds },
    s2: { id: 's2', kind: 'sequential', title: `one ${fmt(options.s2Mib)} MiB file in 64 KiB fragments, ${options.rounds} rounds`, size: options.s2Mib * MiB, fragment: 64 * KiB, rounds: options.rounds },
    s3: {
      id: 's3',
      kind: 'concurrent',
      title:
        `${options.s3Sessions} sessions of ${fmt(options.s3SessionKib)} KiB (${fmt(options.s3FragmentKib)} KiB fragments), all open at once, ` +
        `over ${options.s3Connections} connections, ${options.rounds} rounds`,
      sessions: options.s3Sessions,
      sessionSize: options.s3SessionKib * KiB,
      fragment: options.s3FragmentKib * KiB,
      connections: options.s3Connections,
      rounds: options.rounds,
    },
    s4: {
      id: 's4',
      kind: 'sequential',
      title: `one ${fmt(options.s4Mib / 1024, 2)} GiB file in 1 MiB fragments, fresh server each, one run`,
      size: options.s4Mib * MiB,
      fragment: MiB,
      rounds: 1,
      progressEvery: (options.s4Mib * MiB) / 8,
    },
  };
  for (const id of options.scenarios) {
    syncDisk();
    await new Promise((resolve) => setTimeout(resolve, 2000));
    for (const line of otherActivity()) {
      log(`WARNING: other work is running: ${line}`);
      results.meta.otherActivity = [...(results.meta.otherActivity ?? []), `${id}: ${line}`];
    }
    log(`${id.toUpperCase()}: ${defs[id]?.title ?? 'small GETs via bench/shim.js'} (load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')})`);
    if (id === 's5') results.scenarios.push(await getScenario(ctx, log));
    else if (id === 's4') results.scenarios.push(await memoryScenario(defs.s4, ctx, log));
    else if (defs[id]) results.scenarios.push(await throughputScenario(defs[id], ctx, log));
    else throw new Error(`unknown scenario ${id}`);
  }
  client.kill();
  results.meta.loadAfter = os.loadavg();
  results.meta.seconds = (Date.now() - started) / 1000;
  results.checks = evaluate(results);

  fs.mkdirSync(path.dirname(options.out), { recursive: true });
  fs.writeFileSync(options.out, `${JSON.stringify(results, null, 2)}\n`);
  const text = markdown(results);
  fs.writeFileSync(options.out.replace(/\.json$/, '') + '.md', `${text}\n`);
  console.log(text);
  for (const c of results.checks) console.log(`${c.ok ? 'PASS' : 'FAIL'} ${c.what}: ${fmt(c.value, 3)} (${c.bound})`);
  console.log(`(${fmt(results.meta.seconds)} s; JSON: ${path.relative(process.cwd(), options.out)})`);
  if (options.profile) {
    console.log('\n### Server CPU profiles (top self time)\n');
    console.log(summariseProfiles(profileDir));
  }
  clearTimeout(watchdog);
  if (options.check && results.checks.some((c) => !c.ok)) process.exitCode = 1;
}

// =============================================================================================

runAsDriverOrChild(main, (mode, rest) => {
  if (mode === 'bits-cli') return runBitsCli(rest[0], rest.slice(1));
  if (mode === 'bits-library') return runBitsLibrary(rest[0], rest[1], rest[2]);
  if (mode === 'baseline') return runBaseline(rest[0], rest[1] === '1');
  if (mode === 'tus') return runTus(rest[0]);
  if (mode === 'client') return runClient();
  throw new Error(`unknown child mode ${mode}`);
});
