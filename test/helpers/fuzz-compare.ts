/**
 * Decides whether what the shimmed server showed for one stream is allowed, given what the plain
 * server showed for the same stream (with `BITS_POST` sent as `PROPPATCH`).
 *
 * A verdict lists every allowance it needed; `identical` alone means nothing differed at all.
 * - `identical`: same requests (method, URL, version, raw headers, raw trailers, body, completeness),
 *   same bytes written, same connection fate.
 * - `passthrough-400`: the shim stopped rewriting, so llhttp rejected the next `BITS_POST` with 400
 *   as a plain server would: the shim's requests are a prefix of the plain server's, the plain
 *   server's next request was that `BITS_POST` (or it failed on that message too), and the shim
 *   wrote a prefix of the plain server's responses, then the 400.
 * - `passthrough-upgrade`: the same after an `Upgrade` request, where Node itself ignores every
 *   later parse error (llhttp's upgrade flag stays set), so the `BITS_POST` is dropped silently and
 *   the connection ends normally instead of with a 400.
 * - `marker-overhead-431`: a rewritten request whose head is within the marker's bytes of Node's
 *   `maxHeaderSize` is refused with 431 (documented: `MARKER_OVERHEAD` counts against it); on Node
 *   22, which refuses more than 1000 header lines with 431, so is one with exactly 1000.
 * - `same-failure-other-code`: same requests, same bytes written, same fate, but llhttp named the
 *   failure differently (the marker line sits between the request line and a bad first header,
 *   so for instance an obs-fold there is HPE_INVALID_HEADER_TOKEN instead of HPE_UNEXPECTED_SPACE).
 * - `marker-header-limit`: a rewritten request beyond Node's header-count cap (about 1000 pairs, kept
 *   in batches of 32) loses its last kept header to the marker, which Node counted before the hook
 *   removed it.
 * - `marker-name-stripped`: a restored `BITS_POST` request does not show headers the client sent
 *   under the marker's name (the hook removes every header of that name, not only its own).
 * - `held-line-closed` (TCP only): while the shim withheld a partial `BITS_POST` request line
 *   (waiting for its end), it answered the earlier requests and the connection closed (say, after
 *   `Connection: close`); the plain server, which parses bytes as they arrive, failed on that line
 *   at once and lost those answers. Same requests; the shim's answers are complete and in order.
 * - `split-token` (decided by the runner, which re-runs the plain server): a message boundary fell
 *   inside a `BITS_POST` token, where the PROPPATCH stand-in is not faithful (`BITS|_POST` vs
 *   `PROP|PATCH`); the shim matched a plain server that received that one token unchanged.
 * Anything else is a discrepancy.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { Observation, RequestRecord } from './fuzz-harness';

export const BAD_REQUEST = 'HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n';
export const FIELDS_TOO_LARGE = 'HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n';

/** Bytes of the marker line Node counts against `maxHeaderSize`: its name and value. */
const MARKER_COUNTED = 'BITS-Upload-Method-Shim'.length + 32;
/** Node's cap on `rawHeaders` entries (pairs * 2), checked per batch of 32 pairs. */
const MAX_RAW_HEADERS = 2000;

export type Allowance =
  | 'identical'
  | 'passthrough-400'
  | 'passthrough-upgrade'
  | 'marker-overhead-431'
  | 'marker-header-limit'
  | 'marker-name-stripped'
  | 'same-failure-other-code'
  | 'held-line-closed'
  | 'split-token';

export type Verdict = { readonly ok: true; readonly kinds: readonly Allowance[] } | { readonly ok: false; readonly problem: string };

export function requestKey(r: RequestRecord): string {
  return JSON.stringify([r.method, r.url, r.version, r.rawHeaders, r.rawTrailers, r.bodyLength, r.bodySha, r.complete]);
}

/** Splits what a server wrote into responses (interim ones included). */
export function splitResponses(output: string): string[] {
  const units: string[] = [];
  let pos = 0;
  while (pos < output.length) {
    const headEnd = output.indexOf('\r\n\r\n', pos);
    if (headEnd === -1) {
      units.push(output.slice(pos));
      break;
    }
    const head = output.slice(pos, headEnd + 4);
    const status = Number(head.slice(9, 12));
    let end = headEnd + 4;
    if (status >= 200 && !/\r\nX-Fuzz: HEAD /.test(head)) {
      const length = /\r\ncontent-length: *(\d+)/i.exec(head);
      if (length !== null) {
        end += Number(length[1]);
      } else if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
        const last = output.indexOf('0\r\n\r\n', end);
        end = last === -1 ? output.length : last + 5;
      }
    }
    units.push(output.slice(pos, end));
    pos = end;
  }
  return units;
}

/** True when `at` is 0, the end, or the start of a response in `output`. */
function isResponseBoundary(output: string, at: number): boolean {
  let pos = 0;
  for (const unit of splitResponses(output)) {
    if (pos === at) return true;
    pos += unit.length;
  }
  return pos === at;
}

/** The `X-Fuzz` value the handler writes for a request. */
export function expectedAnswer(r: RequestRecord): string {
  return `${r.method} ${createHash('sha256').update(r.url).digest('hex')} ${r.bodySha} ${r.bodyLength}`;
}

/**
 * True when `output` holds only interim responses and the handler's answers to a prefix of
 * `requests`, in order (a request Node answered itself, such as 417, may lack an answer).
 */
function answersInOrder(output: string, requests: readonly RequestRecord[]): boolean {
  let next = 0;
  for (const unit of splitResponses(output)) {
    if (unit.startsWith('HTTP/1.1 100 ') || unit.startsWith('HTTP/1.1 417 ')) continue;
    const answer = /\r\nX-Fuzz: ([^\r]*)\r\n/.exec(unit);
    if (answer === null) return false;
    while (next < requests.length && expectedAnswer(requests[next] as RequestRecord) !== answer[1]) next++;
    if (next === requests.length) return false;
    next++;
  }
  return true;
}

/** What Node counts against `maxHeaderSize` for a request head: the URL, names and values. */
function countedHeadBytes(r: RequestRecord): number {
  let n = r.url.length;
  for (const s of r.rawHeaders) n += s.length;
  return n;
}

const MARKER_NAME = 'bits-upload-method-shim';

/** Why a restored BITS_POST request may show other headers than the plain server's, or null. */
function explainHeaderDifference(s: RequestRecord, p: RequestRecord): Allowance | null {
  if (p.method !== 'BITS_POST' || s.method !== 'BITS_POST') return null;
  // Node keeps header batches (32 pairs each) until it holds 1000 pairs: the marker shifts them.
  if (p.rawHeaders.length >= MAX_RAW_HEADERS && requestKey({ ...p, rawHeaders: p.rawHeaders.slice(0, -2) }) === requestKey(s)) {
    return 'marker-header-limit';
  }
  const kept: string[] = [];
  for (let i = 0; i + 1 < p.rawHeaders.length; i += 2) {
    if ((p.rawHeaders[i] as string).toLowerCase() === MARKER_NAME) continue;
    kept.push(p.rawHeaders[i] as string, p.rawHeaders[i + 1] as string);
  }
  if (kept.length !== p.rawHeaders.length && requestKey({ ...p, rawHeaders: kept }) === requestKey(s)) return 'marker-name-stripped';
  return null;
}

function sameFate(a: Observation, b: Observation): boolean {
  return a.ended === b.ended && a.destroyed === b.destroyed && a.errorCode === b.errorCode && a.hung === b.hung;
}

function describeFate(o: Observation): string {
  return `ended=${o.ended} destroyed=${o.destroyed} error=${o.errorCode ?? 'none'} hung=${o.hung}`;
}

/** Compares two request lists up to `upTo`; returns the first unexplained difference or null. */
function requestDifference(shim: readonly RequestRecord[], plain: readonly RequestRecord[], upTo: number, notes: Set<Allowance>): string | null {
  for (let i = 0; i < upTo; i++) {
    const s = shim[i] as RequestRecord;
    const p = plain[i] as RequestRecord;
    const sk = requestKey(s);
    const pk = requestKey(p);
    if (sk === pk) continue;
    const explained = explainHeaderDifference(s, p);
    if (explained !== null) {
      notes.add(explained);
      continue;
    }
    return `request ${i} differs:\n  shim:  ${sk.slice(0, 600)}\n  plain: ${pk.slice(0, 600)}`;
  }
  return null;
}

/**
 * The shim stopped early: its requests must be a prefix of the plain server's, the plain server's
 * next request must satisfy `nextOk`, and the shim's responses must be a prefix of the plain
 * server's, followed by `terminal` and a failure. With `terminal` null the shim must instead have
 * ended the connection normally, having dropped the rest (and then the plain server must have had
 * a next request).
 */
function earlyStop(
  shim: Observation,
  plain: Observation,
  terminal: string | null,
  nextOk: (next: RequestRecord) => boolean,
  loose: boolean,
  notes: Set<Allowance>,
): string | null {
  const m = shim.requests.length;
  if (m > plain.requests.length) return `shim delivered ${m} requests, plain only ${plain.requests.length}`;
  const difference = requestDifference(shim.requests, plain.requests, m, notes);
  if (difference !== null) return difference;
  const next = plain.requests[m];
  if (next !== undefined) {
    if (!nextOk(next)) return `plain request ${m} (${next.method} ${next.url.slice(0, 80)}) was not one the shim may refuse`;
  } else if (terminal === null || (plain.errorCode === null && !plain.hung)) {
    return 'plain server ended cleanly after the same requests, yet the shim stopped early';
  }
  if (shim.hung) return 'shim connection hung';
  if (terminal === null) {
    if (shim.errorCode !== null || !shim.ended) return `shim did not end normally: ${describeFate(shim)}`;
  } else {
    if (shim.ended || shim.errorCode === null) return `shim did not just fail: ${describeFate(shim)}`;
    if (!shim.output.endsWith(terminal)) return `shim output does not end with ${JSON.stringify(terminal)}`;
  }
  const before = shim.output.slice(0, shim.output.length - (terminal ?? '').length);
  if (plain.output.startsWith(before) && isResponseBoundary(plain.output, before.length)) return null;
  // The plain server failed later and so lost responses the shim, having stopped first, could write.
  if (plain.errorCode !== null && answersInOrder(before, shim.requests)) return null;
  if (loose) {
    // Over TCP the plain server may itself have lost responses to a later failure.
    const plainUnits = splitResponses(plain.output);
    const plainKept = plainUnits.filter((u) => u.includes('\r\nX-Fuzz: ') || u.startsWith('HTTP/1.1 100')).join('');
    if (before.startsWith(plainKept) && isResponseBoundary(before, plainKept.length)) return null;
  }
  return "shim responses before it stopped are not a prefix of the plain server's";
}

/** Loose output equality for TCP: responses lost to a later failure on either side are tolerated. */
function looseOutputEqual(shim: Observation, plain: Observation): boolean {
  if (shim.output === plain.output) return true;
  if (shim.errorCode === null || plain.errorCode === null) return false;
  const s = splitResponses(shim.output);
  const p = splitResponses(plain.output);
  const sTerminal = s[s.length - 1] ?? '';
  const pTerminal = p[p.length - 1] ?? '';
  const sBody = (sTerminal.includes('X-Fuzz') ? s : s.slice(0, -1)).join('');
  const pBody = (pTerminal.includes('X-Fuzz') ? p : p.slice(0, -1)).join('');
  return sBody.startsWith(pBody) || pBody.startsWith(sBody);
}

/**
 * Evidence that leaving one token unreplaced (`kept`) removed a split-token artefact of the
 * default plain run rather than a real request: at the first request where the two plain runs
 * differ, the default run did not have a `BITS_POST` (it had `PATCH`, or nothing where the kept run
 * has `POST`). A token at a true message start would show a `BITS_POST` there instead.
 */
export function splitTokenEvidence(plain: Observation, kept: Observation): boolean {
  let j = 0;
  while (j < plain.requests.length && j < kept.requests.length && requestKey(plain.requests[j] as RequestRecord) === requestKey(kept.requests[j] as RequestRecord)) j++;
  if (j === plain.requests.length && j === kept.requests.length) return false;
  return plain.requests[j]?.method !== 'BITS_POST';
}

export function compareObservations(shim: Observation, plain: Observation, loose = false): Verdict {
  const n = shim.requests.length;
  const sameCount = n === plain.requests.length;
  const notes = new Set<Allowance>();
  const requestsDiffer = sameCount
    ? requestDifference(shim.requests, plain.requests, n, notes)
    : `shim delivered ${n} requests, plain ${plain.requests.length}`;
  const outputSame = loose ? looseOutputEqual(shim, plain) : shim.output === plain.output;
  const fateSame = loose ? shim.errorCode === plain.errorCode && shim.hung === plain.hung : sameFate(shim, plain);
  const allowed = (kind: Allowance | null, extra: Set<Allowance> = notes): Verdict => {
    const kinds = kind === null ? [...extra] : [kind, ...extra];
    return { ok: true, kinds: kinds.length === 0 ? ['identical'] : kinds };
  };
  if (requestsDiffer === null && outputSame && fateSame) return allowed(null);
  const isBits = (next: RequestRecord): boolean => next.method === 'BITS_POST';
  // The shim passed the connection through: llhttp refused a BITS_POST exactly as a plain server would.
  if (shim.passthrough !== null && shim.errorCode === 'HPE_INVALID_METHOD') {
    const stopNotes = new Set<Allowance>();
    if (earlyStop(shim, plain, BAD_REQUEST, isBits, loose, stopNotes) === null) return allowed('passthrough-400', stopNotes);
  }
  // After an Upgrade request Node ignores parse errors: the unrewritten BITS_POST vanishes silently.
  // (The shim passed through for that Upgrade header, or earlier for another reason.)
  const upgraded = shim.requests.some((r) => r.rawHeaders.some((h, i) => i % 2 === 0 && h.toLowerCase() === 'upgrade'));
  if (shim.passthrough !== null && upgraded && shim.errorCode === null) {
    const stopNotes = new Set<Allowance>();
    if (earlyStop(shim, plain, null, isBits, loose, stopNotes) === null) return allowed('passthrough-upgrade', stopNotes);
  }
  // Over TCP a withheld partial BITS_POST line can outlive the connection (see held-line-closed).
  if (
    loose &&
    requestsDiffer === null &&
    (shim.passthrough === null || shim.passthrough === 'end-of-stream') &&
    shim.errorCode === null &&
    shim.ended &&
    !shim.hung &&
    plain.errorCode !== null &&
    answersInOrder(shim.output, shim.requests) &&
    splitResponses(shim.output).filter((u) => u.includes('\r\nX-Fuzz: ')).length === shim.requests.filter((r) => r.complete).length
  ) {
    const kept = splitResponses(plain.output).filter((u) => u.includes('\r\nX-Fuzz: ') || u.startsWith('HTTP/1.1 100')).join('');
    if (shim.output.startsWith(kept)) return allowed('held-line-closed');
  }
  const bothFailedAlike =
    shim.errorCode !== null &&
    plain.errorCode !== null &&
    shim.ended === plain.ended &&
    shim.destroyed === plain.destroyed &&
    shim.hung === plain.hung;
  if (requestsDiffer === null && outputSame && bothFailedAlike) return allowed('same-failure-other-code');
  // The marker pushed a rewritten request head over maxHeaderSize.
  if (shim.errorCode === 'HPE_HEADER_OVERFLOW') {
    const limit = http.maxHeaderSize;
    // Over the byte limit, or (Node 22) at the header-count limit, where the marker is one too many.
    const overflows = (next: RequestRecord): boolean =>
      isBits(next) && (countedHeadBytes(next) + MARKER_COUNTED >= limit - 64 || next.rawHeaders.length >= MAX_RAW_HEADERS);
    const stopNotes = new Set<Allowance>();
    if (earlyStop(shim, plain, FIELDS_TOO_LARGE, overflows, loose, stopNotes) === null) return allowed('marker-overhead-431', stopNotes);
  }

  const problems: string[] = [];
  if (requestsDiffer !== null) problems.push(requestsDiffer);
  if (!outputSame) problems.push(`output differs:\n  shim:  ${JSON.stringify(shim.output.slice(0, 1500))}\n  plain: ${JSON.stringify(plain.output.slice(0, 1500))}`);
  if (!fateSame) problems.push(`fate differs: shim ${describeFate(shim)}; plain ${describeFate(plain)}`);
  problems.push(`shim passthrough: ${shim.passthrough ?? 'none'}`);
  return { ok: false, problem: problems.join('\n') };
}
