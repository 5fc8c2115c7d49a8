/**
 * Differential fuzz of acceptBitsPost (bits-protocol.md §2.5): the shim must never make a server
 * see a request boundary, a request or a body that a plain server would not.
 *
 * Every stream (structured HTTP/1.1 messages, pipelined, often mutated, split into random chunks)
 * runs on a shimmed server and on a plain server; the plain server receives `PROPPATCH` wherever
 * the stream says `BITS_POST` (same length, a method llhttp knows), and its view is mapped back.
 * The shimmed server must show the same requests (method, URL, raw headers and trailers, body),
 * write the same bytes and end the connection the same way; the only tolerated differences are
 * listed and explained in test/helpers/fuzz-compare.ts (mainly: after the shim passed a connection
 * through, llhttp refuses the next BITS_POST with 400, exactly as a plain server would).
 *
 * Environment:
 *   BITS_FUZZ_STREAMS      in-memory streams (default 100000)
 *   BITS_FUZZ_TCP_STREAMS  streams over real TCP on 127.0.0.1 (default 500)
 *   BITS_FUZZ_SEED         seed (default 0xb175; "random" picks one, printed)
 *   BITS_FUZZ_ONLY         run only this in-memory stream index (replay)
 *   BITS_FUZZ_REPLAY       a literal stream, JSON-encoded latin1, to run instead of the fuzz, with
 *   BITS_FUZZ_CHUNKS       its chunk sizes as a JSON array (default: one chunk) and
 *   BITS_FUZZ_VARIANT      'all' (default) or 'first-request'
 */
import { FramingTracker } from '../../lib/server/framing-tracker';
import {
  formatFailures,
  formatSummary,
  replayInMemory,
  runInMemoryFuzz,
  runTcpFuzz,
  startTcpTargets,
  stopTcpTargets,
  type FuzzSummary,
  type ShimVariant,
} from '../helpers/fuzz-runner';
import { generateStream } from '../helpers/fuzz-generator';
import { createFuzzServers, runInMemory, toPlainStream } from '../helpers/fuzz-harness';

function envInteger(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new Error(`${name} must be a non-negative integer, got ${raw}`);
  return value;
}

function chooseSeed(): number {
  const raw = process.env.BITS_FUZZ_SEED;
  if (raw === 'random') return Math.floor(Math.random() * 0x7fffffff);
  return envInteger('BITS_FUZZ_SEED', 0xb175);
}

const SEED = chooseSeed();
const STREAMS = envInteger('BITS_FUZZ_STREAMS', 100_000);
const TCP_STREAMS = envInteger('BITS_FUZZ_TCP_STREAMS', 500);
const ONLY = process.env.BITS_FUZZ_ONLY === undefined ? undefined : envInteger('BITS_FUZZ_ONLY', 0);
const REPLAY = process.env.BITS_FUZZ_REPLAY;
/** TCP streams use indexes from here, so that they are not the in-memory ones again. */
const TCP_OFFSET = 10_000_000;

const replayHint = `BITS_FUZZ_SEED=${SEED} BITS_FUZZ_ONLY={index} npx jest test/server/differential-fuzz.test.ts -t 'in memory'`;

function failIfDifferent(summary: FuzzSummary, hint: string): void {
  if (summary.failures.length === 0) return;
  throw new Error(`${summary.failures.length} stream(s) differ (seed ${summary.seed}):\n\n${formatFailures(summary, hint)}`);
}

const fuzzTest = REPLAY === undefined ? test : test.skip;

describe('BITS_POST shim: differential fuzz against a plain server', () => {
  beforeAll(() => {
    console.log(`BITS_POST differential fuzz: seed ${SEED} (set BITS_FUZZ_SEED to replay)`);
  });

  fuzzTest('the oracle works: well-formed streams parse cleanly on the plain server', async () => {
    // Without this, a generator bug could make both servers fail alike and the fuzz prove nothing.
    const servers = createFuzzServers(false);
    let checked = 0;
    let clean = 0;
    for (let index = 0; checked < 300; index++) {
      const stream = generateStream(SEED, index);
      if (stream.mutations.length > 0 || stream.bytes.includes('Connection: close') || stream.bytes.includes('HTTP/1.0')) continue;
      checked++;
      const plain = await runInMemory(servers.plain, true, toPlainStream(stream.bytes), stream.chunks, 2000);
      if (plain.errorCode === null && !plain.hung && plain.requests.length === stream.messages) clean++;
    }
    // A handful may fail only because the PROPPATCH stand-in itself misleads the plain server: a
    // body ending in `BITS_` right before a `POST` request reads `PROPP|ATCH` (see split-token).
    expect(checked - clean).toBeLessThanOrEqual(checked / 100);
  });

  fuzzTest(
    `in memory: ${ONLY === undefined ? `${STREAMS} streams` : `stream ${ONLY}`}, shimmed server equals plain server`,
    async () => {
      const summary = await runInMemoryFuzz({ seed: SEED, count: STREAMS, ...(ONLY === undefined ? {} : { only: ONLY }) });
      console.log(formatSummary('in memory', summary));
      failIfDifferent(summary, replayHint);
      expect(summary.streams + summary.skipped).toBe(ONLY === undefined ? STREAMS : 1);
      // Unmutated, well-formed streams are framed with certainty: no passthrough, nothing tolerated.
      expect(summary.wellFormedPassthrough).toBe(0);
      expect(summary.wellFormedNotIdentical).toBe(0);
      // onPassthrough and bitsPostStats(server).passthrough agree.
      expect(summary.statsPassthrough).toEqual(summary.passthrough);
      if (ONLY === undefined && STREAMS >= 20_000) {
        // The fuzz reaches what it is meant to: rewrites, passthroughs for many reasons, refusals.
        expect(summary.bitsDelivered).toBeGreaterThan(STREAMS / 4);
        expect(summary.outcomes['passthrough-400']).toBeGreaterThan(STREAMS / 100);
        expect(Object.keys(summary.passthrough).length).toBeGreaterThanOrEqual(15);
      }
    },
    900_000,
  );

  fuzzTest(
    `over TCP: ${TCP_STREAMS} streams on 127.0.0.1 (native socket handles)`,
    async () => {
      const targets = await startTcpTargets();
      try {
        const summary = await runTcpFuzz(targets, { seed: SEED, count: TCP_STREAMS, offset: TCP_OFFSET, concurrency: 8 });
        console.log(formatSummary('over TCP', summary));
        // The same index replays in memory (where read timing cannot interfere) with replayHint.
        failIfDifferent(summary, replayHint);
        expect(summary.streams + summary.skipped).toBe(TCP_STREAMS);
        expect(summary.wellFormedPassthrough).toBe(0);
        expect(summary.statsPassthrough).toEqual(summary.passthrough);
      } finally {
        await stopTcpTargets(targets);
      }
    },
    300_000,
  );

  fuzzTest('the fuzz can fail: a tracker that ignores Content-Length is caught', async () => {
    // Sabotage: end every message at its headers, as if it had no Content-Length. The tracker then
    // looks for request lines inside bodies, which is exactly the desync the fuzz must catch.
    interface TrackerInternals {
      endOfHeaders(this: TrackerInternals): void;
      endOfMessage(this: TrackerInternals): void;
      chunked: boolean;
    }
    const proto = FramingTracker.prototype as unknown as TrackerInternals;
    const original = proto.endOfHeaders;
    proto.endOfHeaders = function endOfHeadersIgnoringLength(this: TrackerInternals): void {
      if (this.chunked) Reflect.apply(original, this, []);
      else this.endOfMessage();
    };
    try {
      const summary = await runInMemoryFuzz({ seed: SEED, count: 3000, maxFailures: 3, minimise: false });
      expect(summary.failures.length).toBeGreaterThan(0);
    } finally {
      proto.endOfHeaders = original;
    }
  }, 120_000);
});

const replayTest = REPLAY === undefined ? test.skip : test;

replayTest('replay of BITS_FUZZ_REPLAY', async () => {
  const bytes = Buffer.from(JSON.parse(REPLAY ?? '""') as string, 'latin1');
  const chunks = process.env.BITS_FUZZ_CHUNKS === undefined ? [bytes.length] : (JSON.parse(process.env.BITS_FUZZ_CHUNKS) as number[]);
  const variant: ShimVariant = process.env.BITS_FUZZ_VARIANT === 'first-request' ? 'first-request' : 'all';
  const { verdict, shim, plain } = await replayInMemory(bytes, chunks, variant);
  console.log(JSON.stringify({ verdict, shim, plain }, null, 2));
  expect(verdict.ok).toBe(true);
});
