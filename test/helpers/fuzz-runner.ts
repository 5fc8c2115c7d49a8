/**
 * Drives the BITS_POST differential fuzz: generates streams, runs each on the shimmed and on the
 * plain server, compares, counts, and minimises failures so that they can be replayed.
 */
import type http from 'node:http';
import { bitsPostStats } from '../../lib/server/accept-bits-post';
import { compareObservations, splitTokenEvidence, type Allowance, type Verdict } from './fuzz-compare';
import { generateStream, type GeneratedStream } from './fuzz-generator';
import {
  createFuzzServers,
  listenForFuzz,
  runInMemory,
  runOverTcp,
  toPlainStream,
  type FuzzServers,
  type Observation,
  type TcpTarget,
} from './fuzz-harness';

export type ShimVariant = 'all' | 'first-request';

export interface FuzzFailure {
  readonly index: number;
  readonly variant: ShimVariant;
  readonly mutations: readonly string[];
  /** The stream as sent to the shimmed server, JSON-escaped latin1. */
  readonly stream: string;
  readonly chunks: readonly number[];
  readonly problem: string;
  /** A smaller stream (delivered as one chunk unless `minimalChunks` says otherwise) that still fails. */
  readonly minimal?: string;
  readonly minimalChunks?: readonly number[];
}

export interface FuzzSummary {
  readonly seed: number;
  streams: number;
  wellFormed: number;
  mutated: number;
  /** Streams skipped because mutation produced a literal PROPPATCH (the plain server's stand-in). */
  skipped: number;
  firstRequestStreams: number;
  outcomes: Record<Allowance, number>;
  /** For 'same-failure-other-code': `shim code / plain code` pairs. */
  failureCodes: Record<string, number>;
  /** Connections the shim passed through, by reason (from onPassthrough). */
  passthrough: Record<string, number>;
  /** The same, from bitsPostStats(server).passthrough, summed over the shimmed servers. */
  statsPassthrough: Record<string, number>;
  /** Well-formed, unmutated streams on a connections: 'all' server that passed through (must be 0). */
  wellFormedPassthrough: number;
  wellFormedNotIdentical: number;
  /** Streams that had at least one rewritten BITS_POST delivered as such. */
  bitsDelivered: number;
  hung: number;
  failures: FuzzFailure[];
  durationMs: number;
}

/** Time spent minimising one failing stream (the result is still a failing stream when cut short). */
const MINIMISE_MS = 20_000;
/** Failing streams minimised per run; the others are reported as they are. */
const MINIMISE_COUNT = 2;

/** A connection still open this long after its last byte was delivered counts as hung. */
const HANG_TIMEOUT_MS = 2000;

export function variantFor(index: number): ShimVariant {
  return index % 10 === 9 ? 'first-request' : 'all';
}

function emptySummary(seed: number): FuzzSummary {
  return {
    seed,
    streams: 0,
    wellFormed: 0,
    mutated: 0,
    skipped: 0,
    firstRequestStreams: 0,
    outcomes: {
      identical: 0,
      'passthrough-400': 0,
      'passthrough-upgrade': 0,
      'marker-overhead-431': 0,
      'marker-header-limit': 0,
      'marker-name-stripped': 0,
      'same-failure-other-code': 0,
      'held-line-closed': 0,
      'split-token': 0,
    },
    failureCodes: {},
    passthrough: {},
    statsPassthrough: {},
    wellFormedPassthrough: 0,
    wellFormedNotIdentical: 0,
    bitsDelivered: 0,
    hung: 0,
    failures: [],
    durationMs: 0,
  };
}

function addStats(into: Record<string, number>, server: http.Server): void {
  const stats = bitsPostStats(server);
  if (stats === undefined) return;
  for (const [reason, count] of Object.entries(stats.passthrough)) into[reason] = (into[reason] ?? 0) + (count ?? 0);
}

function subtractStats(into: Record<string, number>, before: Record<string, number>): void {
  for (const [reason, count] of Object.entries(before)) into[reason] = (into[reason] ?? 0) - count;
  for (const reason of Object.keys(into)) if (into[reason] === 0) delete into[reason];
}

/** Runs one stream on a shimmed server and, separately, on the plain server. */
interface Runner {
  shim(bytes: Buffer, chunks: readonly number[], variant: ShimVariant): Promise<Observation>;
  plain(plainBytes: Buffer, chunks: readonly number[]): Promise<Observation>;
}

/** The plain server's stream with every `BITS_POST` but the one at `keep` replaced. */
function plainStreamKeeping(bytes: Buffer, keep: number): Buffer {
  const copy = Buffer.from(toPlainStream(bytes));
  bytes.copy(copy, keep, keep, keep + 9);
  return copy;
}

/**
 * Compares; when the difference may come from a message boundary inside a `BITS_POST` token,
 * re-runs the plain server with each token left as sent in turn, and accepts a match for which the
 * plain runs show that the token was split (see splitTokenEvidence).
 */
async function judge(
  run: Runner,
  bytes: Buffer,
  chunks: readonly number[],
  variant: ShimVariant,
  loose: boolean,
): Promise<{ verdict: Verdict; shim: Observation; plain: Observation }> {
  const [shim, plain] = await Promise.all([run.shim(bytes, chunks, variant), run.plain(toPlainStream(bytes), chunks)]);
  const verdict = compareObservations(shim, plain, loose);
  // A boundary inside a token shows up as a plain `PATCH` request or an `ATCH` parse error, and after
  // an Upgrade request (where Node restarts parsing at the next piece, wherever it falls) as almost
  // anything; so every failing stream gets the retries, and splitTokenEvidence keeps them honest.
  if (verdict.ok || !bytes.includes('BITS_POST')) return { verdict, shim, plain };
  for (let at = bytes.indexOf('BITS_POST'), tries = 0; at !== -1 && tries < 4096; at = bytes.indexOf('BITS_POST', at + 1), tries++) {
    const kept = await run.plain(plainStreamKeeping(bytes, at), chunks);
    const second = compareObservations(shim, kept, loose);
    if (second.ok && splitTokenEvidence(plain, kept)) {
      const kinds = second.kinds.filter((k) => k !== 'identical');
      return { verdict: { ok: true, kinds: ['split-token', ...kinds] }, shim, plain };
    }
  }
  return { verdict, shim, plain };
}

function inMemoryRunner(servers: FuzzServers): Runner {
  return {
    shim: (bytes, chunks, variant) =>
      runInMemory(variant === 'all' ? servers.shim : servers.firstRequest, false, bytes, chunks, HANG_TIMEOUT_MS),
    plain: (plainBytes, chunks) => runInMemory(servers.plain, true, plainBytes, chunks, HANG_TIMEOUT_MS),
  };
}

async function fails(run: Runner, bytes: Buffer, chunks: readonly number[], variant: ShimVariant, loose: boolean): Promise<boolean> {
  return !(await judge(run, bytes, chunks, variant, loose)).verdict.ok;
}

/** Delta-debugging over bytes, delivering the stream in one chunk (or one byte at a time). */
async function minimise(run: Runner, bytes: Buffer, variant: ShimVariant): Promise<{ bytes: Buffer; chunks: number[] } | null> {
  const deadline = Date.now() + MINIMISE_MS;
  const plans: Array<(b: Buffer) => number[]> = [(b) => (b.length === 0 ? [] : [b.length]), (b) => Array.from({ length: b.length }, () => 1)];
  for (const plan of plans) {
    if (!(await fails(run, bytes, plan(bytes), variant, false))) continue;
    let current = bytes;
    let budget = 30000;
    for (let size = Math.max(1, current.length >> 1); size >= 1 && budget > 0; size = size === 1 ? 0 : size >> 1) {
      let progress = true;
      while (progress && budget > 0 && Date.now() < deadline) {
        progress = false;
        for (let at = 0; at < current.length && budget > 0 && Date.now() < deadline; at += size) {
          const candidate = Buffer.concat([current.subarray(0, at), current.subarray(at + size)]);
          budget--;
          if (candidate.includes('PROPPATCH')) continue;
          if (await fails(run, candidate, plan(candidate), variant, false)) {
            current = candidate;
            progress = true;
            at -= size;
          }
        }
      }
    }
    return { bytes: current, chunks: plan(current) };
  }
  return null;
}

export interface InMemoryOptions {
  readonly seed: number;
  readonly count: number;
  /** Run only this stream index (replay). */
  readonly only?: number;
  /** Stop collecting failures after this many. */
  readonly maxFailures?: number;
  /** Streams run at once (default 8): hides the wait for connections that never close. */
  readonly concurrency?: number;
  /** Minimise failing streams (default true). */
  readonly minimise?: boolean;
  /** Called with every accepted verdict (for investigating allowances). */
  readonly onAllowed?: (index: number, kinds: readonly Allowance[], shim: Observation, plain: Observation) => void;
}

/** Runs `count` streams in memory, `concurrency` connections at a time (default 8). */
export async function runInMemoryFuzz(options: InMemoryOptions): Promise<FuzzSummary> {
  const servers = createFuzzServers(false);
  const run = inMemoryRunner(servers);
  const summary = emptySummary(options.seed);
  const maxFailures = options.maxFailures ?? 5;
  const started = Date.now();
  const first = options.only ?? 0;
  const last = options.only === undefined ? options.count : options.only + 1;
  // Node builds a stack trace for every connection it aborts; none is ever looked at here.
  const stackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    let next = first;
    const worker = async (): Promise<void> => {
      while (next < last) {
        const index = next++;
        const stream = generateStream(options.seed, index);
        await runOne(run, stream, index, variantFor(index), summary, maxFailures, false, options.minimise ?? true, options.onAllowed);
      }
    };
    await Promise.all(Array.from({ length: options.concurrency ?? 8 }, worker));
  } finally {
    Error.stackTraceLimit = stackTraceLimit;
  }
  summary.failures.sort((a, b) => a.index - b.index);
  addStats(summary.statsPassthrough, servers.shim);
  addStats(summary.statsPassthrough, servers.firstRequest);
  summary.durationMs = Date.now() - started;
  return summary;
}

/** Replays one literal stream (for BITS_FUZZ_REPLAY). */
export async function replayInMemory(
  bytes: Buffer,
  chunks: readonly number[],
  variant: ShimVariant,
): Promise<{ verdict: Verdict; shim: Observation; plain: Observation }> {
  return judge(inMemoryRunner(createFuzzServers(false)), bytes, chunks, variant, false);
}

async function runOne(
  run: Runner,
  stream: GeneratedStream,
  index: number,
  variant: ShimVariant,
  summary: FuzzSummary,
  maxFailures: number,
  loose: boolean,
  shouldMinimise: boolean,
  onAllowed?: InMemoryOptions['onAllowed'],
): Promise<void> {
  if (stream.bytes.includes('PROPPATCH')) {
    summary.skipped++;
    return;
  }
  summary.streams++;
  const wellFormed = stream.mutations.length === 0;
  if (wellFormed) summary.wellFormed++;
  else summary.mutated++;
  if (variant === 'first-request') summary.firstRequestStreams++;
  const { verdict, shim, plain } = await judge(run, stream.bytes, stream.chunks, variant, loose);
  if (shim.hung || plain.hung) summary.hung++;
  if (shim.passthrough !== null) {
    summary.passthrough[shim.passthrough] = (summary.passthrough[shim.passthrough] ?? 0) + 1;
    if (wellFormed && variant === 'all') summary.wellFormedPassthrough++;
  }
  if (shim.requests.some((r) => r.method === 'BITS_POST')) summary.bitsDelivered++;
  if (verdict.ok) {
    for (const kind of verdict.kinds) summary.outcomes[kind]++;
    onAllowed?.(index, verdict.kinds, shim, plain);
    if (verdict.kinds.includes('same-failure-other-code')) {
      const pair = `${shim.errorCode ?? ''} / ${plain.errorCode ?? ''}`;
      summary.failureCodes[pair] = (summary.failureCodes[pair] ?? 0) + 1;
    }
    // split-token is an artefact of the PROPPATCH stand-in (a body ending in `BITS_` before a POST
    // request), possible in well-formed streams too; anything else must not happen to them.
    if (wellFormed && variant === 'all' && verdict.kinds.some((k) => k !== 'identical' && k !== 'split-token')) {
      summary.wellFormedNotIdentical++;
    }
    return;
  }
  if (summary.failures.length >= maxFailures) {
    summary.failures.push({ index, variant, mutations: stream.mutations, stream: '(not kept)', chunks: [], problem: '(not kept)' });
    return;
  }
  const failure: FuzzFailure = {
    index,
    variant,
    mutations: stream.mutations,
    stream: JSON.stringify(stream.bytes.toString('latin1')),
    chunks: stream.chunks,
    problem: verdict.problem,
  };
  const minimal = loose || !shouldMinimise || summary.failures.length >= MINIMISE_COUNT ? null : await minimise(run, stream.bytes, variant);
  summary.failures.push(
    minimal === null ? failure : { ...failure, minimal: JSON.stringify(minimal.bytes.toString('latin1')), minimalChunks: minimal.chunks.length > 1 ? minimal.chunks : [] },
  );
}

export interface TcpOptions {
  readonly seed: number;
  readonly count: number;
  /** Stream indexes start here, so that TCP streams differ from the in-memory ones. */
  readonly offset: number;
  /** Streams run at once (each on its own connections). */
  readonly concurrency: number;
}

export interface TcpTargets {
  readonly plain: TcpTarget;
  readonly shim: TcpTarget;
  readonly firstRequest: TcpTarget;
}

export async function startTcpTargets(): Promise<TcpTargets> {
  const servers = createFuzzServers(true);
  return {
    plain: await listenForFuzz(servers.plain, true),
    shim: await listenForFuzz(servers.shim, false),
    firstRequest: await listenForFuzz(servers.firstRequest, false),
  };
}

export async function stopTcpTargets(targets: TcpTargets): Promise<void> {
  for (const target of [targets.plain, targets.shim, targets.firstRequest]) {
    target.server.closeAllConnections();
    await new Promise<void>((resolve) => target.server.close(() => resolve()));
  }
}

/**
 * Runs `count` streams over real TCP. Most streams leave in one write; one in four is written
 * chunk by chunk with pauses, so the server reads it in several pieces.
 */
export async function runTcpFuzz(targets: TcpTargets, options: TcpOptions): Promise<FuzzSummary> {
  const summary = emptySummary(options.seed);
  const before: Record<string, number> = {};
  addStats(before, targets.shim.server);
  addStats(before, targets.firstRequest.server);
  const started = Date.now();
  let next = options.offset;
  const end = options.offset + options.count;
  const worker = async (): Promise<void> => {
    while (next < end) {
      const index = next++;
      const stream = generateStream(options.seed, index);
      const spread = index % 4 === 3 && stream.chunks.length <= 64;
      const variant = variantFor(index);
      const run: Runner = {
        shim: (bytes, chunks, v) => runOverTcp(v === 'all' ? targets.shim : targets.firstRequest, bytes, chunks, spread, HANG_TIMEOUT_MS),
        plain: (plainBytes, chunks) => runOverTcp(targets.plain, plainBytes, chunks, spread, HANG_TIMEOUT_MS),
      };
      // Loose: Node's native parser runs response handlers between parser callbacks, the
      // JavaScript data path (every shimmed connection) only after the whole read; so responses
      // to requests before a parse error in the same read are written by one and lost by the other.
      await runOne(run, stream, index, variant, summary, 5, true, false);
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  addStats(summary.statsPassthrough, targets.shim.server);
  addStats(summary.statsPassthrough, targets.firstRequest.server);
  subtractStats(summary.statsPassthrough, before);
  summary.durationMs = Date.now() - started;
  return summary;
}

function sortedEntries(record: Record<string, number>): string {
  const entries = Object.entries(record).filter(([, n]) => n !== 0);
  if (entries.length === 0) return '    (none)';
  return entries
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([name, n]) => `    ${String(n).padStart(7)}  ${name}`)
    .join('\n');
}

/** A human-readable report of a run. */
export function formatSummary(title: string, summary: FuzzSummary): string {
  const passthroughStreams = Object.values(summary.passthrough).reduce((a, b) => a + b, 0);
  return [
    `${title}: seed ${summary.seed}, ${summary.streams} streams in ${(summary.durationMs / 1000).toFixed(1)} s`,
    `  well-formed ${summary.wellFormed}, mutated ${summary.mutated}, skipped ${summary.skipped} (literal PROPPATCH), first-request mode ${summary.firstRequestStreams}`,
    `  streams with a BITS_POST delivered: ${summary.bitsDelivered}; streams where Node waited for input that never came: ${summary.hung}`,
    `  differences: ${summary.failures.length}`,
    `  well-formed streams passed through: ${summary.wellFormedPassthrough}; well-formed streams not identical: ${summary.wellFormedNotIdentical}`,
    '  outcomes (a stream can need several allowances):',
    sortedEntries(summary.outcomes),
    `  passthrough, ${passthroughStreams} connections, by reason (onPassthrough):`,
    sortedEntries(summary.passthrough),
    '  same failure, other llhttp code (shim / plain):',
    sortedEntries(summary.failureCodes),
  ].join('\n');
}

/** Everything needed to replay failures. */
export function formatFailures(summary: FuzzSummary, replayHint: string): string {
  return summary.failures
    .map((f) => {
      if (f.problem === '(not kept)') return `stream ${f.index} (${f.variant}, ${f.mutations.join(', ') || 'well-formed'}): also differs`;
      return [
        `stream ${f.index} (${f.variant}; mutations: ${f.mutations.join(', ') || 'none'}) differs:`,
        f.problem,
        `replay: ${replayHint.replace('{index}', String(f.index))}`,
        `stream (JSON, latin1): ${f.stream}`,
        `chunks: ${JSON.stringify(f.chunks)}`,
        ...(f.minimal === undefined
          ? []
          : [`minimal stream (JSON, latin1): ${f.minimal}`, `minimal chunks: ${JSON.stringify(f.minimalChunks ?? [])} (empty: one chunk)`]),
      ].join('\n');
    })
    .join('\n\n');
}
