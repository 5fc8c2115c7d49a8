import { randomBytes, timingSafeEqual } from 'node:crypto';
import { METHODS, type IncomingMessage } from 'node:http';

/**
 * The private header the framing tracker inserts after a rewritten `BITS_POST` request line.
 * Its value is a random nonce of this process, so no client can forge it; the server hook removes
 * it before any listener sees the request (bits-protocol.md §2.5).
 */
export const MARKER_NAME = 'BITS-Upload-Method-Shim';
const MARKER_KEY = MARKER_NAME.toLowerCase();
const NONCE = randomBytes(16).toString('hex');

/** The whole marker line as the tracker inserts it. */
export const MARKER_LINE = Buffer.from(`${MARKER_NAME}: ${NONCE}\r\n`, 'latin1');

/**
 * Bytes the shim adds to a request head: the marker line minus the 5 bytes of `BITS_` it removes.
 * They count against the server's `maxHeaderSize`.
 */
export const MARKER_OVERHEAD = MARKER_LINE.length - 'BITS_'.length;

/** True when the running Node parses `BITS_POST` natively, so no shim is needed. */
export const NATIVE_BITS_POST = METHODS.includes('BITS_POST');

const verifiedRequests = new WeakSet<IncomingMessage>();

/**
 * True when `req` really arrived as a `BITS_POST`: parsed natively, restored by the shim, or
 * announced by a trusted proxy. A `req.method` set by other code (say, a method-override
 * middleware) does not count.
 */
export function isBitsPost(req: IncomingMessage): boolean {
  return req.method === 'BITS_POST' && (NATIVE_BITS_POST || verifiedRequests.has(req));
}

/** Marks `req` as a verified `BITS_POST` and removes the named headers from every view of it. */
export function markBitsPost(req: IncomingMessage, removeHeaders: readonly string[]): void {
  removeRequestHeaders(req, removeHeaders);
  req.method = 'BITS_POST';
  verifiedRequests.add(req);
}

/** Removes headers (lower-case names) from `req.headers`, `req.headersDistinct` and `req.rawHeaders`. */
export function removeRequestHeaders(req: IncomingMessage, names: readonly string[]): void {
  // Build the lazy header views now: they are computed from rawHeaders with a count taken at parse time.
  const headers = req.headers;
  const distinct = req.headersDistinct;
  for (const name of names) {
    delete headers[name];
    delete distinct[name];
  }
  const raw = req.rawHeaders;
  let kept = 0;
  for (let i = 0; i < raw.length; i += 2) {
    if (names.includes((raw[i] as string).toLowerCase())) continue;
    raw[kept++] = raw[i] as string;
    raw[kept++] = raw[i + 1] as string;
  }
  raw.length = kept;
}

/** Outcome of looking for the shim's marker on a request. */
export type MarkerCheck = 'none' | 'restored' | 'forged';

/**
 * Restores `BITS_POST` on a request the tracker rewrote. Only a first header with this process's
 * nonce, on a POST, counts; anything else that looks like the marker is reported as forged.
 */
export function restoreMarkedRequest(req: IncomingMessage): MarkerCheck {
  const raw = req.rawHeaders;
  if (raw[0] !== MARKER_NAME) return 'none';
  const value = raw[1] ?? '';
  if (req.method !== 'POST' || !constantTimeEqual(value, NONCE)) return 'forged';
  markBitsPost(req, [MARKER_KEY]);
  return 'restored';
}

/** Compares two strings without leaking where they differ. */
export function constantTimeEqual(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}
