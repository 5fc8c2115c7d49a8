#!/usr/bin/env node
'use strict';
/**
 * What the `fsync` policy of FileSystemStorage costs, on the disk the storage directory is on.
 *
 *   npm run build && node bench/fsync.js [options]
 *
 * Writes one upload of --size-mib (256) MiB through FileSystemStorage.writeFragment, in fragments of
 * 1 MiB and of 64 KiB, for each policy ('fragment', 'commit', 'never'), and commits it (the commit is
 * where 'commit' pays its fsync, so it is part of every measurement). Each fragment body is a stream
 * of 64 KiB chunks, like a request body read from a socket. References:
 *   raw          fs.createWriteStream of the same bytes in 64 KiB chunks, no fsync (= ratio 1.00)
 *   raw + fsync  the same followed by one fsync of the file: the least any durable upload costs
 * Before every measurement the page cache's dirty pages are flushed (`sync`) so that one run does
 * not pay for the previous one's writeback. Scenarios are alternated within rounds; the table shows
 * the median of the rounds (and min-max).
 *
 * Options:
 *   --dir=PATH        where to write (default: a temporary folder in the repository, i.e. on the
 *                     disk under /work; warns when it is tmpfs, where fsync measures nothing)
 *   --size-mib=256    upload size
 *   --rounds=3        repetitions of every scenario
 *   --fragments=1024,64   fragment sizes in KiB
 *   --policies=fragment,commit,never
 *   --out=FILE        also write the results as JSON
 */

const fs = require('node:fs');
const fsp = require('node:fs/promises');
const path = require('node:path');
const { randomBytes, randomUUID } = require('node:crypto');
const { spawnSync } = require('node:child_process');
const { Readable } = require('node:stream');
const { pipeline } = require('node:stream/promises');

const ROOT = path.resolve(__dirname, '..');
const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 64 * KiB;
const TMPFS_MAGIC = 0x01021994;

function parseArgs(argv) {
  const options = { dir: undefined, sizeMib: 256, rounds: 3, fragments: [1024, 64], policies: ['fragment', 'commit', 'never'], out: undefined };
  for (const arg of argv) {
    const match = /^--([a-z-]+)=(.*)$/.exec(arg);
    if (!match) throw new Error(`Unknown argument ${arg}`);
    const [, name, value] = match;
    if (name === 'dir') options.dir = path.resolve(value);
    else if (name === 'size-mib') options.sizeMib = positive(name, value);
    else if (name === 'rounds') options.rounds = positive(name, value);
    else if (name === 'fragments') options.fragments = value.split(',').map((v) => positive(name, v));
    else if (name === 'policies') options.policies = value.split(',');
    else if (name === 'out') options.out = path.resolve(value);
    else throw new Error(`Unknown option --${name}`);
  }
  for (const kib of options.fragments) {
    if ((options.sizeMib * MiB) % (kib * KiB) !== 0) throw new Error(`--fragments: ${kib} KiB does not divide the upload size`);
  }
  return options;
}

function positive(name, value) {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`--${name} must be a positive integer, got ${value}`);
  return n;
}

/** The bytes of the upload: one random MiB repeated (the disk sees no difference, memory stays small). */
const PATTERN = randomBytes(MiB);
function chunksOf(start, length) {
  const out = [];
  for (let offset = start; offset < start + length; offset += CHUNK) {
    const from = offset % MiB;
    out.push(PATTERN.subarray(from, from + Math.min(CHUNK, start + length - offset)));
  }
  return out;
}

function flushPageCache() {
  spawnSync('sync', { stdio: 'ignore' });
}

function seconds(start) {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

async function runRaw(dir, size, withFsync) {
  const file = path.join(dir, `raw-${randomUUID()}.bin`);
  flushPageCache();
  const start = process.hrtime.bigint();
  await pipeline(Readable.from(chunksOf(0, size), { objectMode: false }), fs.createWriteStream(file));
  if (withFsync) {
    const handle = await fsp.open(file, 'r+');
    await handle.sync();
    await handle.close();
  }
  const elapsed = seconds(start);
  await fsp.rm(file);
  return elapsed;
}

async function runAdapter(FileSystemStorage, dir, size, fragment, fsync) {
  const directory = path.join(dir, `adapter-${fsync}-${fragment}`);
  const storage = new FileSystemStorage({ directory, fsync });
  const id = `{${randomUUID().toUpperCase()}}`;
  const destination = ['upload.bin'];
  await storage.createSession({ id, destination, urlPath: '/upload.bin', principal: undefined, protocol: '{7df0354d-249b-430f-820d-3d2a9bef4931}', createdAt: Date.now() });
  await storage.updateSession(id, { totalLength: size });
  flushPageCache();
  const start = process.hrtime.bigint();
  let written = 0;
  for (let offset = 0; offset < size; offset += fragment) {
    written = await storage.writeFragment(id, offset, Readable.from(chunksOf(offset, fragment), { objectMode: false }));
  }
  const writeSeconds = seconds(start);
  await storage.commit(id, { overwrite: false });
  const elapsed = seconds(start);
  if (written !== size) throw new Error(`stored ${written} of ${size} bytes`);
  if (fs.statSync(path.join(directory, ...destination)).size !== size) throw new Error('the committed file has the wrong size');
  await fsp.rm(directory, { recursive: true, force: true });
  return { elapsed, writeSeconds };
}

/** Median latency of a 4 KiB write + fsync on this disk, to read the table against. */
async function fsyncLatency(dir) {
  const handle = await fsp.open(path.join(dir, 'latency.bin'), 'w');
  const block = randomBytes(4 * KiB);
  const samples = [];
  for (let i = 0; i < 50; i++) {
    await handle.write(block, 0, block.length, null);
    const start = process.hrtime.bigint();
    await handle.sync();
    samples.push(seconds(start) * 1000);
  }
  await handle.close();
  await fsp.rm(path.join(dir, 'latency.bin'));
  return median(samples);
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function describeDisk(dir) {
  const df = spawnSync('df', ['-hT', dir], { encoding: 'utf8' });
  let tmpfs = false;
  try {
    tmpfs = fs.statfsSync(dir).type === TMPFS_MAGIC;
  } catch {
    // statfs is missing on some platforms; df still tells.
  }
  return { df: df.status === 0 ? df.stdout.trim() : '(df unavailable)', tmpfs };
}

function pad(text, width, right = false) {
  const s = String(text);
  return right ? s.padStart(width) : s.padEnd(width);
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const { FileSystemStorage } = require(path.join(ROOT, 'dist', 'index.js'));
  const base = options.dir ?? ROOT;
  fs.mkdirSync(base, { recursive: true });
  const dir = fs.mkdtempSync(path.join(base, '.bench-fsync-'));
  const size = options.sizeMib * MiB;
  try {
    const disk = describeDisk(dir);
    console.log(`bench/fsync.js: ${options.sizeMib} MiB per upload, ${options.rounds} rounds, node ${process.version}`);
    console.log(`writing in ${dir}\n${disk.df}`);
    if (disk.tmpfs) console.log('WARNING: this is tmpfs: fsync does nothing there, pass --dir=<a folder on a real disk>');
    const latency = await fsyncLatency(dir);
    console.log(`fsync latency (4 KiB write + fsync, median of 50): ${latency.toFixed(2)} ms\n`);

    const scenarios = [
      { name: 'raw createWriteStream', fragment: undefined, run: () => runRaw(dir, size, false).then((elapsed) => ({ elapsed })) },
      { name: 'raw + one fsync at end', fragment: undefined, run: () => runRaw(dir, size, true).then((elapsed) => ({ elapsed })) },
    ];
    for (const kib of options.fragments) {
      for (const policy of options.policies) {
        scenarios.push({
          name: `fsync: '${policy}'`,
          policy,
          fragment: kib * KiB,
          run: () => runAdapter(FileSystemStorage, dir, size, kib * KiB, policy),
        });
      }
    }
    const results = scenarios.map(() => []);
    for (let round = 0; round < options.rounds; round++) {
      // Rotated so that no scenario always runs first or after the same one.
      for (let k = 0; k < scenarios.length; k++) {
        const i = (k + round) % scenarios.length;
        const result = await scenarios[i].run();
        results[i].push(result);
        process.stderr.write(`round ${round + 1}: ${scenarios[i].name}${scenarios[i].fragment ? ` ${scenarios[i].fragment / KiB} KiB` : ''}: ${(options.sizeMib / result.elapsed).toFixed(0)} MiB/s\n`);
      }
    }

    const mibps = (seconds) => options.sizeMib / seconds;
    const baseline = mibps(median(results[0].map((r) => r.elapsed)));
    const rows = scenarios.map((scenario, i) => {
      const rates = results[i].map((r) => mibps(r.elapsed));
      const rate = median(rates);
      const fragments = scenario.fragment ? size / scenario.fragment : undefined;
      return {
        scenario: scenario.name,
        fragment: scenario.fragment ? `${scenario.fragment / KiB} KiB` : '-',
        fragments,
        mibps: rate,
        min: Math.min(...rates),
        max: Math.max(...rates),
        ratio: rate / baseline,
        msPerFragment: fragments ? (median(results[i].map((r) => r.elapsed)) * 1000) / fragments : undefined,
      };
    });

    console.log(
      `${pad('scenario', 24)} ${pad('fragment', 9)} ${pad('MiB/s', 8, true)} ${pad('min-max', 13, true)} ${pad('ratio', 6, true)} ${pad('ms/fragment', 12, true)}`,
    );
    for (const row of rows) {
      console.log(
        `${pad(row.scenario, 24)} ${pad(row.fragment, 9)} ${pad(row.mibps.toFixed(0), 8, true)} ${pad(`${row.min.toFixed(0)}-${row.max.toFixed(0)}`, 13, true)} ${pad(row.ratio.toFixed(2), 6, true)} ${pad(row.msPerFragment === undefined ? '-' : row.msPerFragment.toFixed(3), 12, true)}`,
      );
    }
    console.log('\nratio: to the raw createWriteStream (no fsync); adapter times include the commit.');
    if (options.out) {
      fs.mkdirSync(path.dirname(options.out), { recursive: true });
      fs.writeFileSync(options.out, `${JSON.stringify({ date: new Date().toISOString(), node: process.version, sizeMib: options.sizeMib, rounds: options.rounds, disk, fsyncLatencyMs: latency, rows }, null, 2)}\n`);
      console.log(`results written to ${options.out}`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
