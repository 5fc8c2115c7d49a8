#!/usr/bin/env node
'use strict';
/**
 * Micro-benchmark of FramingTracker.write: nanoseconds per call, without sockets or jest.
 *
 *   npm run build && node bench/tracker-micro.js [options]
 *
 * Cases (each a tracker in connections: 'all' mode, fed the same chunk over and over):
 *   wrk-get      the 41-byte keep-alive GET head wrk sends (`GET / HTTP/1.1` + Host)
 *   browser-get  a 272-byte browser-like GET head (8 header lines)
 *   bits-post    a BITS_POST head (rewritten: one new buffer per call), for reference
 *   cookie-8k    a GET head with an 8 KiB Cookie line: long lines must not get slower
 *   body-64k     a 64 KiB chunk in the middle of a Content-Length body
 *
 * Options:
 *   --module=PATH   tracker module to measure (default dist/server/framing-tracker.js); repeat it
 *                   to compare builds, e.g. a saved copy of the old one: each module runs in its
 *                   own child process, alternated per round, and the table shows the median round
 *   --rounds=7      rounds per module
 *   --ms=300        target duration of one measurement
 *   --cases=wrk-get,browser-get,bits-post,cookie-8k,body-64k
 *   --json          print the results as JSON
 *
 * Every case also checks that the tracker is still tracking and that it forwarded the expected
 * number of bytes, so that a broken build cannot look fast.
 */

const path = require('node:path');
const { spawnSync } = require('node:child_process');

const DEFAULT_MODULE = path.resolve(__dirname, '..', 'dist', 'server', 'framing-tracker.js');
const MARKER = Buffer.from('BITS-Upload-Method-Shim: 0123456789abcdef0123456789abcdef\r\n', 'latin1');

const WRK_GET = 'GET / HTTP/1.1\r\nHost: 127.0.0.1:38123\r\n\r\n';
const BROWSER_GET = padTo(
  272,
  'GET /index.html HTTP/1.1\r\n' +
    'Host: example.com\r\n' +
    'User-Agent: Mozilla/5.0 (X11; Linux)\r\n' +
    'Accept: text/html,application/xhtml+xml\r\n' +
    'Accept-Language: en-US,en;q=0.9\r\n' +
    'Accept-Encoding: gzip, deflate, br\r\n' +
    'Connection: keep-alive\r\n' +
    'Cookie: session=',
  ';\r\nUpgrade-Insecure-Requests: 1\r\n\r\n',
);
const COOKIE_8K = `GET / HTTP/1.1\r\nHost: example.com\r\nCookie: ${'c'.repeat(8192)}\r\n\r\n`;
const BITS_POST =
  'BITS_POST /upload/file.bin HTTP/1.1\r\nHost: example.com\r\nBITS-Packet-Type: Fragment\r\n' +
  'BITS-Session-Id: {01234567-89ab-cdef-0123-456789abcdef}\r\nContent-Range: bytes 0-0/1\r\n' +
  'Content-Length: 0\r\n\r\n';

/** Builds `head + filler + tail` of exactly `length` bytes (the filler lands in a cookie value). */
function padTo(length, head, tail) {
  const filler = length - head.length - tail.length;
  if (filler < 0) throw new Error('padTo: head and tail are already too long');
  return head + 'x'.repeat(filler) + tail;
}

/** Each case: how to set a tracker up, the chunk written per call and the bytes expected out. */
const CASES = {
  'wrk-get': { chunk: Buffer.from(WRK_GET, 'latin1'), setup: null, outPerCall: WRK_GET.length, rewrites: false },
  'browser-get': {
    chunk: Buffer.from(BROWSER_GET, 'latin1'),
    setup: null,
    outPerCall: BROWSER_GET.length,
    rewrites: false,
  },
  'bits-post': {
    chunk: Buffer.from(BITS_POST, 'latin1'),
    setup: null,
    outPerCall: BITS_POST.length - 'BITS_'.length + MARKER.length,
    rewrites: true,
  },
  'cookie-8k': { chunk: Buffer.from(COOKIE_8K, 'latin1'), setup: null, outPerCall: COOKIE_8K.length, rewrites: false },
  'body-64k': {
    chunk: Buffer.alloc(64 * 1024, 0x42),
    // 15 digits, the most the tracker accepts: room for ~15 billion 64 KiB writes.
    setup: Buffer.from('POST /u HTTP/1.1\r\nContent-Length: 999999999999999\r\n\r\n', 'latin1'),
    outPerCall: 64 * 1024,
    rewrites: false,
  },
};

function parseArgs(argv) {
  const options = { modules: [], rounds: 7, ms: 300, cases: Object.keys(CASES), json: false, child: false };
  for (const arg of argv) {
    const [key, value = ''] = arg.replace(/^--/, '').split(/=(.*)/s);
    if (key === 'module') options.modules.push(path.resolve(value));
    else if (key === 'rounds') options.rounds = positiveInteger(key, value);
    else if (key === 'ms') options.ms = positiveInteger(key, value);
    else if (key === 'cases') options.cases = value.split(',').filter(Boolean);
    else if (key === 'json') options.json = true;
    else if (key === 'child') options.child = true;
    else if (key === 'help' || key === 'h') {
      console.log(require('node:fs').readFileSync(__filename, 'utf8').split('*/')[0]);
      process.exit(0);
    } else throw new Error(`unknown option ${arg} (try --help)`);
  }
  for (const name of options.cases) if (!(name in CASES)) throw new Error(`unknown case ${name}`);
  if (options.modules.length === 0) options.modules.push(DEFAULT_MODULE);
  return options;
}

function positiveInteger(name, value) {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name} must be a positive integer, got ${value}`);
  return n;
}

/** Runs one case `iterations` times on a fresh tracker; returns ns per write. */
function measure(FramingTracker, spec, iterations) {
  let forwarded = 0;
  const emit = (piece) => {
    forwarded += piece.length;
  };
  const tracker = new FramingTracker({ marker: MARKER, maxLineLength: 16 * 1024, firstRequestOnly: false });
  if (spec.setup !== null) tracker.write(spec.setup, emit);
  forwarded = 0;
  const { chunk } = spec;
  const start = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) tracker.write(chunk, emit);
  const elapsed = Number(process.hrtime.bigint() - start);
  if (tracker.passthroughReason !== null) throw new Error(`tracker passed through: ${tracker.passthroughReason}`);
  if (forwarded !== spec.outPerCall * iterations) {
    throw new Error(`forwarded ${forwarded} bytes, expected ${spec.outPerCall * iterations}`);
  }
  if (spec.rewrites && tracker.rewritten !== iterations) {
    throw new Error(`rewrote ${tracker.rewritten} of ${iterations}`);
  }
  return elapsed / iterations;
}

/** Child: one round of every case against one module; prints {case: ns} as JSON. */
function runChild(options) {
  const { FramingTracker } = require(options.modules[0]);
  const result = {};
  for (const name of options.cases) {
    const spec = CASES[name];
    // Warm up (and let V8 optimise), then size the measured run to about options.ms.
    let iterations = 1000;
    let ns = measure(FramingTracker, spec, iterations);
    for (let i = 0; i < 3; i++) {
      iterations = Math.max(1000, Math.round((options.ms * 1e6) / Math.max(ns, 1) / 4));
      ns = measure(FramingTracker, spec, iterations);
    }
    iterations = Math.max(1000, Math.round((options.ms * 1e6) / Math.max(ns, 1)));
    result[name] = measure(FramingTracker, spec, iterations);
  }
  process.stdout.write(JSON.stringify(result));
}

/** A module's path relative to the working directory when it lies inside it, else absolute. */
function label(modulePath) {
  const relative = path.relative(process.cwd(), modulePath);
  return relative === '' || relative.startsWith('..') ? modulePath : relative;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function runParent(options) {
  const samples = new Map(options.modules.map((m) => [m, Object.fromEntries(options.cases.map((c) => [c, []]))]));
  for (let round = 0; round < options.rounds; round++) {
    // Rotate the order per round so that neither module always runs on a cooler machine.
    const order = options.modules.map((_, i) => options.modules[(i + round) % options.modules.length]);
    for (const modulePath of order) {
      const child = spawnSync(
        process.execPath,
        [__filename, '--child', `--module=${modulePath}`, `--ms=${options.ms}`, `--cases=${options.cases.join(',')}`],
        { encoding: 'utf8', timeout: 120_000 },
      );
      if (child.status !== 0) throw new Error(`child for ${modulePath} failed:\n${child.stderr}`);
      const result = JSON.parse(child.stdout);
      for (const name of options.cases) samples.get(modulePath)[name].push(result[name]);
    }
  }
  const table = options.modules.map((modulePath) => ({
    module: label(modulePath),
    ...Object.fromEntries(
      options.cases.map((name) => {
        const values = samples.get(modulePath)[name];
        return [name, { median: median(values), min: Math.min(...values), max: Math.max(...values) }];
      }),
    ),
  }));
  if (options.json) {
    console.log(JSON.stringify({ node: process.version, rounds: options.rounds, results: table }, null, 2));
    return;
  }
  const title = `FramingTracker.write, ns per call (median of ${options.rounds} rounds, [min-max])`;
  console.log(`${title}, node ${process.version}`);
  console.log(`case sizes: ${options.cases.map((c) => `${c} ${CASES[c].chunk.length} B`).join(', ')}\n`);
  const header = ['case', ...table.map((row) => row.module)];
  const rows = options.cases.map((name) => [
    name,
    ...table.map((row) => `${row[name].median.toFixed(1)} [${row[name].min.toFixed(0)}-${row[name].max.toFixed(0)}]`),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  console.log(line(header));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const row of rows) console.log(line(row));
}

const options = parseArgs(process.argv.slice(2));
if (options.child) runChild(options);
else runParent(options);
