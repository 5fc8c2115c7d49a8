#!/usr/bin/env node
'use strict';
/**
 * Cost of the BITS_POST shim (acceptBitsPost) on loopback, in one run.
 *
 *   npm run build && node bench/shim.js [options]
 *
 * Three server variants, each in its own child process with the same trivial handler:
 *   plain          stock http.createServer
 *   all            acceptBitsPost(server, { connections: 'all' })
 *   first-request  acceptBitsPost(server, { connections: 'first-request' })
 *
 * Scenarios (driven from other processes, variants alternated in rounds, order rotated per round):
 *   get       small keep-alive GETs (wrk; a Node raw-socket driver if wrk is missing): requests/s
 *   get-close small GETs with `Connection: close` (one connection per request, wrk only): requests/s
 *   body      N x 64 MiB POST / BITS_POST bodies over one keep-alive connection (Content-Length),
 *             discarded by the handler: MiB/s
 * Ratios: "ratio" divides the medians; "paired ratio", which the requirements use, is the median of
 * the per-round ratios (variants run back to back in a round, so each pair saw the same load).
 * Also: server CPU per request / per GiB (process.cpuUsage deltas reported by the child), peak RSS
 * of every server child (resourceUsage().maxRSS at exit), and a zero-copy check of the tracker
 * (every body byte it hands to the parser is a view of a buffer the socket received).
 *
 * Options:
 *   --rounds=5 --duration=3 --close-rounds=3 --close-duration=2 --warmup=1 --connections=32 --body-rounds=5
 *   --variants=plain,all,first-request,unconsumed   (unconsumed: reference, see ALL_VARIANTS)
 *   --bodies=16 --body-mib=64 --sink=discard|devnull
 *   --scenarios=get,get-close,body,copies     subset to run
 *   --driver=wrk|node                          force the small-request driver
 *   --profile                                  node --cpu-prof on every server child, then print
 *                                              the top self-time functions (bench/results/profiles/)
 *   --out=bench/results/shim.json --check (exit 1 when a requirement is missed)
 *
 * Loopback only; every loop and wait is bounded; the run stops by itself (about 2 minutes).
 */

const http = require('node:http');
const net = require('node:net');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { fork, spawn, spawnSync } = require('node:child_process');
const { runAsDriverOrChild } = require('./entry.js');
const { withTimeout } = require('./with-timeout.js');
const { once } = require('node:events');

const HOST = '127.0.0.1';
const ROOT = path.resolve(__dirname, '..');
// 'unconsumed' is a reference, not a shim mode: a plain server whose connections are kept off the
// native parser fast path (what the shim does first) with no tracker, to split the shim's cost into
// "leaving the fast path" and "tracking the bytes".
const ALL_VARIANTS = ['plain', 'all', 'first-request', 'unconsumed'];
let VARIANTS = ALL_VARIANTS;
const REQUIREMENTS = { get: { all: 0.8, 'first-request': 0.95 }, body: 0.95 };
const CHILD_LIFETIME_MS = 10 * 60_000;

// ---------------------------------------------------------------------------------------------
// Server child
// ---------------------------------------------------------------------------------------------

function runServer(variant, options) {
  const { acceptBitsPost, bitsPostStats } = require(path.join(ROOT, 'dist', 'index.js'));
  const copies = options.checkCopies ? { in: 0, out: 0, views: 0, copied: 0, direct: 0, pieces: 0 } : null;
  let bodyBytes = 0;

  const server = http.createServer((req, res) => {
    if (req.method === 'GET') {
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 2 });
      res.end('ok');
      return;
    }
    if (req.method === 'POST' || req.method === 'BITS_POST') {
      let received = 0;
      const done = () => {
        bodyBytes += received;
        const text = `${req.method} ${received}`;
        res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text) });
        res.end(text);
      };
      req.on('data', (chunk) => {
        received += chunk.length;
      });
      if (options.sink === 'devnull') {
        const sink = fs.createWriteStream('/dev/null');
        req.pipe(sink);
        sink.on('finish', done);
      } else {
        req.on('end', done);
      }
      return;
    }
    res.writeHead(405, { 'Content-Length': 0 });
    res.end();
  });
  if (variant === 'all' || variant === 'first-request') acceptBitsPost(server, { connections: variant });
  if (variant === 'unconsumed') {
    server.prependListener('connection', (socket) => {
      if (socket._handle) socket._handle._consumed = true;
    });
  }

  if (copies !== null && (variant === 'all' || variant === 'first-request')) {
    // Runs before the shim's own 'connection' listener, so the shim forwards through this push.
    let inTracker = false;
    const received = new WeakSet();
    server.prependListener('connection', (socket) => {
      const basePush = socket.push;
      socket.push = function observedOutput(chunk, encoding) {
        if (Buffer.isBuffer(chunk)) {
          if (!inTracker) copies.direct += chunk.length;
          else {
            copies.out += chunk.length;
            copies.pieces++;
            if (received.has(chunk.buffer)) copies.views += chunk.length;
            else copies.copied += chunk.length;
          }
        }
        return basePush.call(this, chunk, encoding);
      };
    });
    // Runs after the shim's listener: wraps the tracker's input to see what the socket received,
    // the read callback of Node's onread mode (plain TCP) or else push (TLS).
    const observe = (receive, chunkOf) =>
      function observedInput(...args) {
        const chunk = chunkOf(args);
        if (Buffer.isBuffer(chunk)) {
          copies.in += chunk.length;
          received.add(chunk.buffer);
        }
        inTracker = true;
        try {
          return receive.apply(this, args);
        } finally {
          inTracker = false;
        }
      };
    server.on('connection', (socket) => {
      const kBuffer = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'kBuffer');
      const kBufferCb = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'kBufferCb');
      if (kBufferCb !== undefined && typeof socket[kBufferCb] === 'function') {
        socket[kBufferCb] = observe(socket[kBufferCb], ([nread]) => socket[kBuffer].subarray(0, nread));
      } else {
        socket.push = observe(socket.push, ([chunk]) => chunk);
      }
    });
  }

  const report = () => ({
    variant,
    pid: process.pid,
    cpu: process.cpuUsage(),
    rss: process.memoryUsage().rss,
    maxRssKiB: process.resourceUsage().maxRSS,
    bodyBytes,
    copies,
    stats: variant !== 'all' && variant !== 'first-request' ? null : JSON.parse(JSON.stringify(bitsPostStats(server))),
  });

  process.on('message', (message) => {
    if (message.cmd === 'usage') process.send({ id: message.id, ...report() });
    if (message.cmd === 'exit') {
      const final = report();
      server.close();
      server.closeAllConnections();
      process.send({ id: message.id, ...final }, () => process.exit(0));
    }
  });
  process.on('disconnect', () => process.exit(0));
  setTimeout(() => process.exit(2), CHILD_LIFETIME_MS).unref();
  server.listen(0, HOST, () => process.send({ cmd: 'listening', port: server.address().port }));
}

// ---------------------------------------------------------------------------------------------
// Body client child: N bodies over one keep-alive connection, Content-Length framing
// ---------------------------------------------------------------------------------------------

async function runBodyClient({ port, method, bodies, bodyBytes }) {
  const piece = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < piece.length; i++) piece[i] = (i * 131 + 7) & 0xff;
  const socket = net.connect({ host: HOST, port, noDelay: true });
  await once(socket, 'connect');

  let inbound = Buffer.alloc(0);
  let waiter = null;
  socket.on('data', (data) => {
    inbound = inbound.length === 0 ? data : Buffer.concat([inbound, data]);
    if (waiter) waiter();
  });
  socket.on('error', (err) => {
    if (waiter) waiter(err);
  });
  socket.on('close', () => {
    if (waiter) waiter(new Error('connection closed by server'));
  });
  const readResponse = () =>
    new Promise((resolve, reject) => {
      const attempt = (err) => {
        if (err) return reject(err);
        const headEnd = inbound.indexOf('\r\n\r\n');
        if (headEnd === -1) return;
        const head = inbound.toString('latin1', 0, headEnd);
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? NaN);
        if (!Number.isFinite(length)) return reject(new Error(`no Content-Length in response: ${head}`));
        if (inbound.length < headEnd + 4 + length) return;
        const body = inbound.toString('latin1', headEnd + 4, headEnd + 4 + length);
        inbound = inbound.subarray(headEnd + 4 + length);
        waiter = null;
        resolve({ status: Number(head.slice(9, 12)), body });
      };
      waiter = attempt;
      attempt();
    });

  const times = [];
  const start = process.hrtime.bigint();
  for (let n = 0; n < bodies; n++) {
    const t0 = process.hrtime.bigint();
    socket.write(
      `${method} /upload HTTP/1.1\r\nHost: ${HOST}:${port}\r\nContent-Type: application/octet-stream\r\n` +
        `Content-Length: ${bodyBytes}\r\n\r\n`,
      'latin1',
    );
    for (let sent = 0; sent < bodyBytes; sent += piece.length) {
      const part = bodyBytes - sent >= piece.length ? piece : piece.subarray(0, bodyBytes - sent);
      if (!socket.write(part)) await once(socket, 'drain');
    }
    const response = await readResponse();
    if (response.status !== 200 || response.body !== `${method} ${bodyBytes}`) {
      throw new Error(`${method}: unexpected response ${response.status} ${response.body}`);
    }
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  socket.end();
  return { seconds, bytes: bodies * bodyBytes, times, clientCpu: process.cpuUsage() };
}

// ---------------------------------------------------------------------------------------------
// Node small-request driver child (fallback when wrk is missing): keep-alive, no pipelining
// ---------------------------------------------------------------------------------------------

async function runLoadGen({ port, connections, seconds }) {
  const request = Buffer.from(`GET / HTTP/1.1\r\nHost: ${HOST}:${port}\r\n\r\n`, 'latin1');
  const terminator = Buffer.from('\r\n\r\nok', 'latin1');
  let completed = 0;
  let errors = 0;
  const start = process.hrtime.bigint();
  const deadline = Date.now() + seconds * 1000;
  const one = () =>
    new Promise((resolve) => {
      const socket = net.connect({ host: HOST, port, noDelay: true });
      let tail = Buffer.alloc(0);
      socket.on('connect', () => socket.write(request));
      socket.on('data', (data) => {
        const view = tail.length === 0 ? data : Buffer.concat([tail, data]);
        let at = 0;
        let seen = 0;
        for (;;) {
          const found = view.indexOf(terminator, at);
          if (found === -1) break;
          seen++;
          at = found + terminator.length;
        }
        tail = view.subarray(Math.max(at, view.length - (terminator.length - 1)));
        completed += seen;
        if (seen > 0) {
          if (Date.now() < deadline) socket.write(request);
          else socket.end();
        }
      });
      socket.on('error', () => {
        errors++;
      });
      socket.on('close', resolve);
      setTimeout(() => socket.destroy(), seconds * 1000 + 5000).unref();
    });
  await Promise.all(Array.from({ length: connections }, one));
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  return { requests: completed, seconds: elapsed, rps: completed / elapsed, errors };
}

// ---------------------------------------------------------------------------------------------
// Orchestrator
// ---------------------------------------------------------------------------------------------

function parseArgs(argv) {
  const options = {
    rounds: 5,
    duration: 3,
    closeRounds: 3,
    closeDuration: 2,
    warmup: 1,
    connections: 32,
    bodies: 16,
    bodyMib: 64,
    bodyRounds: 5,
    variants: ALL_VARIANTS,
    sink: 'discard',
    scenarios: ['get', 'get-close', 'body', 'copies'],
    driver: undefined,
    profile: false,
    check: false,
    out: path.join(__dirname, 'results', 'shim.json'),
  };
  for (const arg of argv) {
    const [key, value] = arg.replace(/^--/, '').split('=');
    const camel = key.replace(/-(.)/g, (_, c) => c.toUpperCase());
    if (camel === 'profile' || camel === 'check') options[camel] = true;
    else if (camel === 'scenarios') options.scenarios = value.split(',');
    else if (camel === 'variants') {
      options.variants = value.split(',');
      if (!options.variants.includes('plain') || options.variants.some((v) => !ALL_VARIANTS.includes(v))) {
        throw new Error(`--variants: a list of ${ALL_VARIANTS.join(', ')} including plain`);
      }
    }
    else if (camel === 'out') options.out = path.resolve(value);
    else if (camel === 'driver' || camel === 'sink') options[camel] = value;
    else if (camel in options && value !== undefined && Number.isFinite(Number(value))) options[camel] = Number(value);
    else throw new Error(`unknown option ${arg}`);
  }
  return options;
}

const children = new Set();
let rpcId = 0;

function rpc(child, cmd) {
  const id = ++rpcId;
  return withTimeout(
    new Promise((resolve) => {
      const onMessage = (message) => {
        if (message.id !== id) return;
        child.off('message', onMessage);
        resolve(message);
      };
      child.on('message', onMessage);
      child.send({ cmd, id });
    }),
    10_000,
    `server ${cmd}`,
  );
}

async function startServer(variant, options, extra = {}) {
  const execArgv = [];
  if (options.profile) {
    execArgv.push('--cpu-prof', `--cpu-prof-dir=${path.join(__dirname, 'results', 'profiles')}`);
    execArgv.push(`--cpu-prof-name=${variant}-${extra.phase ?? 'run'}-${Date.now()}.cpuprofile`);
  }
  const config = JSON.stringify({ sink: options.sink, checkCopies: Boolean(extra.checkCopies) });
  const child = fork(__filename, ['--child=server', variant, config], { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  const [message] = await withTimeout(once(child, 'message'), 10_000, `${variant} server start`);
  return { variant, child, port: message.port };
}

async function stopServer(server) {
  const final = await rpc(server.child, 'exit');
  await withTimeout(once(server.child, 'exit'), 10_000, `${server.variant} server exit`).catch(() => server.child.kill());
  return final;
}

function runChild(mode, config, timeoutMs) {
  const child = fork(__filename, [`--child=${mode}`, JSON.stringify(config)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return withTimeout(
    new Promise((resolve, reject) => {
      child.once('message', (message) => (message.error ? reject(new Error(message.error)) : resolve(message)));
      child.once('exit', (code) => reject(new Error(`${mode} child exited with ${code}`)));
    }),
    timeoutMs,
    mode,
  ).finally(() => {
    if (child.exitCode === null) child.kill();
  });
}

function hasWrk() {
  const probe = spawnSync('wrk', ['--version'], { encoding: 'utf8', timeout: 5000 });
  if (probe.error) return null;
  return (probe.stdout + probe.stderr).split('\n')[0].trim();
}

function toMicros(value, unit) {
  const factor = { us: 1, ms: 1000, s: 1e6 }[unit];
  return Number(value) * factor;
}

function runWrk(port, seconds, connections, close) {
  const args = ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency'];
  if (close) args.push('-H', 'Connection: close');
  args.push(`http://${HOST}:${port}/`);
  return withTimeout(
    new Promise((resolve, reject) => {
      const proc = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      children.add(proc);
      let output = '';
      proc.stdout.on('data', (d) => (output += d));
      proc.stderr.on('data', (d) => (output += d));
      proc.on('error', reject);
      proc.on('exit', (code) => {
        children.delete(proc);
        if (code !== 0) return reject(new Error(`wrk exited with ${code}: ${output}`));
        const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(output)?.[1]);
        const requests = Number(/(\d+) requests in/.exec(output)?.[1]);
        const p50 = /\s50%\s+([\d.]+)(us|ms|s)/.exec(output);
        const p99 = /\s99%\s+([\d.]+)(us|ms|s)/.exec(output);
        const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(output)?.[1] ?? 0);
        const socketErrors = /Socket errors: (.*)/.exec(output)?.[1] ?? null;
        if (!Number.isFinite(rps)) return reject(new Error(`cannot parse wrk output: ${output}`));
        resolve({
          rps,
          requests,
          p50us: p50 ? toMicros(p50[1], p50[2]) : null,
          p99us: p99 ? toMicros(p99[1], p99[2]) : null,
          non2xx,
          socketErrors,
        });
      });
    }),
    (seconds + 15) * 1000,
    'wrk',
  );
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

const micros = (value) => (Number.isFinite(value) ? `${fmt(value)} µs` : '-');
const cpuSeconds = (before, after) => (after.cpu.user - before.cpu.user + after.cpu.system - before.cpu.system) / 1e6;
const rotate = (list, by) => list.map((_, i) => list[(i + by) % list.length]);
const fmt = (value, digits = 0) =>
  value === null || value === undefined || Number.isNaN(value) ? '-' : value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

async function requestScenario(name, options, driver, log) {
  const close = name === 'get-close';
  const seconds = close ? options.closeDuration : options.duration;
  const rounds = close ? options.closeRounds : options.rounds;
  const servers = {};
  for (const variant of VARIANTS) servers[variant] = await startServer(variant, options, { phase: name });
  const samples = Object.fromEntries(VARIANTS.map((v) => [v, []]));
  const drive = (server, secs) =>
    driver === 'wrk'
      ? runWrk(server.port, secs, options.connections, close)
      : runChild('loadgen', { port: server.port, connections: options.connections, seconds: secs }, (secs + 20) * 1000);
  if (options.warmup > 0) for (const variant of VARIANTS) await drive(servers[variant], options.warmup);
  for (let round = 0; round < rounds; round++) {
    for (const variant of rotate(VARIANTS, round)) {
      const before = await rpc(servers[variant].child, 'usage');
      const result = await drive(servers[variant], seconds);
      const after = await rpc(servers[variant].child, 'usage');
      const cpu = cpuSeconds(before, after);
      const sample = { round, ...result, serverCpuSeconds: cpu, serverCpuUsPerRequest: (cpu * 1e6) / result.requests };
      samples[variant].push(sample);
      log(`  ${name} round ${round + 1} ${variant.padEnd(13)} ${fmt(result.rps)} req/s, server ${fmt(sample.serverCpuUsPerRequest, 1)} µs CPU/req`);
    }
  }
  const finals = {};
  for (const variant of VARIANTS) finals[variant] = await stopServer(servers[variant]);
  const summary = {};
  for (const variant of VARIANTS) {
    const rps = median(samples[variant].map((s) => s.rps));
    const cpuPerRequest = median(samples[variant].map((s) => s.serverCpuUsPerRequest));
    summary[variant] = {
      medianRps: rps,
      bestRps: Math.max(...samples[variant].map((s) => s.rps)),
      cpuUsPerRequest: cpuPerRequest,
      bestCpuUsPerRequest: Math.min(...samples[variant].map((s) => s.serverCpuUsPerRequest)),
      medianP50us: median(samples[variant].map((s) => s.p50us ?? NaN)),
      medianP99us: median(samples[variant].map((s) => s.p99us ?? NaN)),
      serverCpuSecondsTotal: (finals[variant].cpu.user + finals[variant].cpu.system) / 1e6,
      peakRssMiB: finals[variant].maxRssKiB / 1024,
      stats: finals[variant].stats,
      samples: samples[variant],
    };
  }
  for (const variant of VARIANTS) {
    summary[variant].pairedRatioToPlain = pairedRatio(samples[variant], samples.plain, (s) => s.rps);
    summary[variant].ratioToPlain = summary[variant].medianRps / summary.plain.medianRps;
    summary[variant].bestRatioToPlain = summary[variant].bestRps / summary.plain.bestRps;
    summary[variant].cpuRatioToPlain = summary[variant].cpuUsPerRequest / summary.plain.cpuUsPerRequest;
    summary[variant].bestCpuRatioToPlain = summary[variant].bestCpuUsPerRequest / summary.plain.bestCpuUsPerRequest;
  }
  return { scenario: name, driver, seconds, connections: options.connections, rounds, variants: summary };
}

/**
 * The median over rounds of `value(sample) / value(plain sample of the same round)`. Variants run
 * back to back within a round, so this pairs samples taken under the same load; on a shared VM
 * whose load drifts it is steadier than the ratio of the two medians.
 */
function pairedRatio(samples, plainSamples, value) {
  const ratios = [];
  for (const sample of samples) {
    const plain = plainSamples.find((p) => p.round === sample.round);
    if (plain !== undefined && value(plain) > 0) ratios.push(value(sample) / value(plain));
  }
  return median(ratios);
}

async function bodyScenario(options, log) {
  const bodyBytes = options.bodyMib * 1024 * 1024;
  const cases = [
    ['plain', 'POST'],
    ['all', 'POST'],
    ['all', 'BITS_POST'],
    ['first-request', 'POST'],
    ['first-request', 'BITS_POST'],
    ['unconsumed', 'POST'],
  ].filter(([variant]) => VARIANTS.includes(variant));
  const servers = {};
  for (const variant of VARIANTS) servers[variant] = await startServer(variant, options, { phase: 'body' });
  const samples = Object.fromEntries(cases.map(([v, m]) => [`${v} ${m}`, []]));
  // Warm-up (JIT, heap growth): two bodies per case.
  for (const [variant, method] of cases) {
    await runChild('body', { port: servers[variant].port, method, bodies: 2, bodyBytes }, 60_000);
  }
  for (let round = 0; round < options.bodyRounds; round++) {
    for (const [variant, method] of rotate(cases, round)) {
      const before = await rpc(servers[variant].child, 'usage');
      const result = await runChild('body', { port: servers[variant].port, method, bodies: options.bodies, bodyBytes }, 120_000);
      const after = await rpc(servers[variant].child, 'usage');
      const cpu = cpuSeconds(before, after);
      const mibps = result.bytes / 1048576 / result.seconds;
      const gib = result.bytes / 2 ** 30;
      const sample = { round, mibps, seconds: result.seconds, bytes: result.bytes, serverCpuSeconds: cpu, serverCpuSecondsPerGiB: cpu / gib };
      samples[`${variant} ${method}`].push(sample);
      log(`  body round ${round + 1} ${`${variant} ${method}`.padEnd(23)} ${fmt(mibps)} MiB/s, server ${fmt(sample.serverCpuSecondsPerGiB, 3)} CPU s/GiB`);
    }
  }
  const finals = {};
  for (const variant of VARIANTS) finals[variant] = await stopServer(servers[variant]);
  const summary = {};
  for (const key of Object.keys(samples)) {
    summary[key] = {
      medianMiBps: median(samples[key].map((s) => s.mibps)),
      bestMiBps: Math.max(...samples[key].map((s) => s.mibps)),
      cpuSecondsPerGiB: median(samples[key].map((s) => s.serverCpuSecondsPerGiB)),
      bestCpuSecondsPerGiB: Math.min(...samples[key].map((s) => s.serverCpuSecondsPerGiB)),
      samples: samples[key],
    };
  }
  for (const key of Object.keys(summary)) {
    const plain = summary['plain POST'];
    summary[key].pairedRatioToPlain = pairedRatio(samples[key], samples['plain POST'], (s) => s.mibps);
    summary[key].ratioToPlain = summary[key].medianMiBps / plain.medianMiBps;
    summary[key].bestRatioToPlain = summary[key].bestMiBps / plain.bestMiBps;
    summary[key].cpuRatioToPlain = summary[key].cpuSecondsPerGiB / plain.cpuSecondsPerGiB;
    summary[key].bestCpuRatioToPlain = summary[key].bestCpuSecondsPerGiB / plain.bestCpuSecondsPerGiB;
  }
  const servers_ = {};
  for (const variant of VARIANTS) {
    servers_[variant] = {
      serverCpuSecondsTotal: (finals[variant].cpu.user + finals[variant].cpu.system) / 1e6,
      peakRssMiB: finals[variant].maxRssKiB / 1024,
      bodyBytesReceived: finals[variant].bodyBytes,
      stats: finals[variant].stats,
    };
  }
  return { scenario: 'body', bodies: options.bodies, bodyMiB: options.bodyMib, sink: options.sink, rounds: options.bodyRounds, cases: summary, servers: servers_ };
}

/** Instrumented children: do the tracker's forwarded body bytes stay views of the received buffers? */
async function copiesScenario(options, log) {
  const bodyBytes = options.bodyMib * 1024 * 1024;
  const result = {};
  for (const variant of ['all', 'first-request']) {
    const server = await startServer(variant, { ...options, profile: false }, { checkCopies: true });
    await runChild('body', { port: server.port, method: 'BITS_POST', bodies: 2, bodyBytes }, 60_000);
    await runChild('body', { port: server.port, method: 'POST', bodies: 1, bodyBytes }, 60_000);
    const final = await stopServer(server);
    result[variant] = { ...final.copies, rewritten: final.stats.rewritten, bodyBytes: final.bodyBytes };
    const c = final.copies;
    log(`  copies ${variant.padEnd(13)} received ${fmt(c.in)} B; forwarded by the tracker ${fmt(c.out)} B in ${fmt(c.pieces)} pieces: ` +
      `${fmt(c.views)} B as views of received buffers, ${fmt(c.copied)} B in new buffers; ${fmt(c.direct)} B pushed after the tracker left`);
  }
  return result;
}

function markdown(results) {
  const lines = [];
  const { meta } = results;
  lines.push(`### BITS_POST shim cost (${meta.date}, Node ${meta.node}, ${meta.cpus} × ${meta.cpuModel}, load ${meta.loadBefore.join(' ')})`);
  lines.push('');
  for (const scenario of results.scenarios.filter((s) => s.scenario !== 'body')) {
    const title =
      scenario.scenario === 'get'
        ? `Small GET, keep-alive (${scenario.driver}, ${scenario.connections} connections, ${scenario.rounds} × ${scenario.seconds} s per variant, median)`
        : `Small GET, \`Connection: close\` (${scenario.driver}, ${scenario.connections} connections, ${scenario.rounds} × ${scenario.seconds} s per variant, median)`;
    lines.push(`**${title}**`, '');
    lines.push('| variant | req/s | ratio | paired ratio | best req/s | best ratio | server CPU µs/req | CPU ratio | best CPU µs/req | p50 | p99 | peak RSS MiB | server CPU s |');
    lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const variant of VARIANTS) {
      const v = scenario.variants[variant];
      lines.push(
        `| ${variant} | ${fmt(v.medianRps)} | ${fmt(v.ratioToPlain, 3)} | ${fmt(v.pairedRatioToPlain, 3)} | ${fmt(v.bestRps)} | ${fmt(v.bestRatioToPlain, 3)} | ` +
          `${fmt(v.cpuUsPerRequest, 1)} | ${fmt(v.cpuRatioToPlain, 3)} | ${fmt(v.bestCpuUsPerRequest, 1)} | ` +
          `${micros(v.medianP50us)} | ${micros(v.medianP99us)} | ${fmt(v.peakRssMiB, 1)} | ${fmt(v.serverCpuSecondsTotal, 2)} |`,
      );
    }
    lines.push('');
  }
  const body = results.scenarios.find((s) => s.scenario === 'body');
  if (body) {
    lines.push(`**Bodies: ${body.bodies} × ${body.bodyMiB} MiB per sample over one keep-alive connection, ${body.sink}, ${body.rounds} rounds, median**`, '');
    lines.push('| variant | method | MiB/s | ratio | paired ratio | best MiB/s | best ratio | server CPU s/GiB | CPU ratio | best CPU s/GiB | best CPU ratio |');
    lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const [key, c] of Object.entries(body.cases)) {
      const [variant, method] = key.split(' ');
      lines.push(
        `| ${variant} | ${method} | ${fmt(c.medianMiBps)} | ${fmt(c.ratioToPlain, 3)} | ${fmt(c.pairedRatioToPlain, 3)} | ${fmt(c.bestMiBps)} | ${fmt(c.bestRatioToPlain, 3)} | ` +
          `${fmt(c.cpuSecondsPerGiB, 3)} | ${fmt(c.cpuRatioToPlain, 3)} | ${fmt(c.bestCpuSecondsPerGiB, 3)} | ${fmt(c.bestCpuRatioToPlain, 3)} |`,
      );
    }
    lines.push('');
    lines.push('| body server | peak RSS MiB | server CPU s |');
    lines.push('|---|---:|---:|');
    for (const variant of VARIANTS) {
      const s = body.servers[variant];
      lines.push(`| ${variant} | ${fmt(s.peakRssMiB, 1)} | ${fmt(s.serverCpuSecondsTotal, 2)} |`);
    }
    lines.push('');
  }
  if (results.copies) {
    lines.push('**Zero-copy check** (2 × BITS_POST + 1 × POST per variant, instrumented child)', '');
    lines.push('| variant | bytes received | forwarded by tracker | as views of received buffers | in new buffers | rewritten heads |');
    lines.push('|---|---:|---:|---:|---:|---:|');
    for (const [variant, c] of Object.entries(results.copies)) {
      lines.push(`| ${variant} | ${fmt(c.in)} | ${fmt(c.out)} | ${fmt(c.views)} | ${fmt(c.copied)} | ${fmt(c.rewritten)} |`);
    }
    lines.push('');
  }
  if (results.checks.length > 0) {
    lines.push('**Requirements**', '');
    for (const check of results.checks) {
      const bound = check.min !== undefined ? `≥ ${check.min}` : `≤ ${check.max}`;
      lines.push(`- ${check.ok ? 'PASS' : 'FAIL'} ${check.what}: ${fmt(check.value, 3)} (${bound})`);
    }
    lines.push('');
  }
  return lines.join('\n');
}

function evaluate(results) {
  const checks = [];
  const get = results.scenarios.find((s) => s.scenario === 'get');
  if (get) {
    for (const [variant, min] of Object.entries(REQUIREMENTS.get)) {
      if (!get.variants[variant]) continue;
      const value = get.variants[variant].pairedRatioToPlain;
      checks.push({ what: `small GET ${variant} / plain (paired)`, value, min, ok: value >= min });
    }
  }
  const body = results.scenarios.find((s) => s.scenario === 'body');
  if (body) {
    for (const [key, c] of Object.entries(body.cases)) {
      if (key === 'plain POST' || key.startsWith('unconsumed')) continue;
      const value = c.pairedRatioToPlain;
      checks.push({ what: `bodies ${key} / plain POST (paired)`, value, min: REQUIREMENTS.body, ok: value >= REQUIREMENTS.body });
    }
  }
  if (results.copies) {
    for (const [variant, c] of Object.entries(results.copies)) {
      const headBytes = c.copied;
      // Only rewritten request heads may be new buffers: "POST <target> HTTP/1.1\r\n" + marker, ~100 bytes each.
      const value = c.copied / Math.max(1, c.rewritten);
      checks.push({ what: `copies ${variant}: bytes in new buffers per rewritten head (${headBytes} B total; body bytes would be millions)`, value, max: 512, ok: value <= 512 });
    }
  }
  return checks;
}

function summariseProfiles(dir, top = 15) {
  const summarise = require('./cpuprofile-top.js');
  const out = [];
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).sort()) {
    out.push(`#### ${file}`, '', summarise(path.join(dir, file), top), '');
  }
  return out.join('\n');
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  VARIANTS = options.variants;
  const started = Date.now();
  const watchdog = setTimeout(() => {
    console.error('bench/shim.js: overall time limit reached, stopping');
    for (const child of children) child.kill();
    process.exit(1);
  }, 8 * 60_000);
  watchdog.unref();
  const cleanup = () => {
    for (const child of children) child.kill();
  };
  process.on('exit', cleanup);
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(130));

  if (!fs.existsSync(path.join(ROOT, 'dist', 'index.js'))) {
    throw new Error('dist/index.js is missing: run `npm run build` first');
  }
  const wrkVersion = hasWrk();
  const driver = options.driver ?? (wrkVersion ? 'wrk' : 'node');
  if (driver === 'wrk' && !wrkVersion) throw new Error('wrk is not installed (apt-get install -y wrk), or use --driver=node');
  if (options.profile) {
    const dir = path.join(__dirname, 'results', 'profiles');
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
  }
  const log = (line) => console.error(line);
  const cpus = os.cpus();
  const results = {
    meta: {
      date: new Date().toISOString(),
      node: process.versions.node,
      platform: `${process.platform} ${os.release()}`,
      cpus: cpus.length,
      cpuModel: cpus[0]?.model.trim(),
      loadBefore: os.loadavg().map((l) => l.toFixed(2)),
      driver,
      wrk: wrkVersion,
      options: { ...options, out: path.relative(ROOT, options.out) },
    },
    scenarios: [],
    copies: null,
    checks: [],
  };
  log(`bench/shim.js: driver ${driver}, ${options.rounds} rounds, scenarios ${options.scenarios.join(',')}`);
  if (options.scenarios.includes('get')) results.scenarios.push(await requestScenario('get', options, driver, log));
  if (options.scenarios.includes('get-close')) {
    if (driver === 'wrk') results.scenarios.push(await requestScenario('get-close', options, driver, log));
    else log('  get-close skipped: needs wrk');
  }
  if (options.scenarios.includes('body')) results.scenarios.push(await bodyScenario(options, log));
  if (options.scenarios.includes('copies')) results.copies = await copiesScenario(options, log);
  results.meta.loadAfter = os.loadavg().map((l) => l.toFixed(2));
  results.meta.seconds = (Date.now() - started) / 1000;
  results.checks = evaluate(results);

  fs.mkdirSync(path.dirname(options.out), { recursive: true });
  fs.writeFileSync(options.out, `${JSON.stringify(results, null, 2)}\n`);
  console.log(markdown(results));
  console.log(`(${results.meta.seconds.toFixed(0)} s, load ${results.meta.loadBefore.join(' ')} -> ${results.meta.loadAfter.join(' ')}; JSON: ${path.relative(process.cwd(), options.out)})`);
  if (options.profile) {
    // Children write their profiles on exit; they have exited by now.
    console.log('\n### Server CPU profiles (top self time)\n');
    console.log(summariseProfiles(path.join(__dirname, 'results', 'profiles')));
  }
  clearTimeout(watchdog);
  if (options.check && results.checks.some((c) => !c.ok)) process.exitCode = 1;
}

// ---------------------------------------------------------------------------------------------

runAsDriverOrChild(main, (mode, rest) => {
  if (mode === 'server') return runServer(rest[0], JSON.parse(rest[1]));
  setTimeout(() => process.exit(2), CHILD_LIFETIME_MS).unref();
  const work = mode === 'body' ? runBodyClient : runLoadGen;
  return work(JSON.parse(rest[0])).then(
    (result) => process.send(result, () => process.exit(0)),
    (err) => process.send({ error: String(err.stack ?? err) }, () => process.exit(1)),
  );
});
