import { badRequest, lengthRequired, unknownPacketType } from '../errors';
import { HEADER, MAX_HEADER_VALUE_LENGTH, PACKET_TYPES, type PacketType } from './constants';

/** The parts of an incoming request the protocol reads; an `IncomingMessage` has them all. */
export interface RequestHead {
  readonly httpVersion: string;
  readonly url?: string | undefined;
  readonly rawHeaders: readonly string[];
}

/** A `BITS_POST` request that passed the syntax checks of bits-protocol.md §3 step 3. */
export interface BitsRequest {
  readonly packetType: PacketType;
  /** Declared body length. */
  readonly contentLength: number;
  /** The request-target below the mount point; mapped to a destination by the packets that need one. */
  readonly url: string;
  /** `BITS-Session-Id` as sent. */
  readonly sessionId: string | undefined;
  /** `BITS-Supported-Protocols` as sent (§7). */
  readonly supportedProtocols: string | undefined;
  /** `Content-Range` as sent (§6.1). */
  readonly contentRange: string | undefined;
  /** `Content-Encoding` as sent (§6.2 V6). */
  readonly contentEncoding: string | undefined;
}

const PACKET_TYPE_BY_NAME = new Map<string, PacketType>(PACKET_TYPES.map((type) => [type.toLowerCase(), type]));
const DECIMAL = /^\d+$/;

/**
 * Checks the request syntax (§3 step 3) in this order: HTTP/1.1 (§2.1), header values of at most
 * 4 KB (§2.2), a known packet type, compared case-insensitively (§2.2, §3.6, §15 A15), a
 * Content-Length and no Transfer-Encoding (§2.3), and no body except on Fragment (§2.3).
 *
 * @throws BitsError 400 (`BITS_BAD_REQUEST`, `BITS_UNKNOWN_PACKET_TYPE`) or 411 (`BITS_LENGTH_REQUIRED`).
 */
export function parseRequest(head: RequestHead): BitsRequest {
  if (head.httpVersion !== '1.1') throw badRequest(`HTTP/${head.httpVersion} request; BITS requires HTTP/1.1`);
  const headers = collectHeaders(head.rawHeaders);
  const rawType = singleHeader(headers, HEADER.packetType);
  const packetType = rawType === undefined ? undefined : PACKET_TYPE_BY_NAME.get(rawType.toLowerCase());
  if (packetType === undefined) throw unknownPacketType(rawType);
  const contentLength = parseContentLength(headers);
  if (contentLength > 0 && packetType !== 'Fragment') throw badRequest(`A ${packetType} packet must not have a body`);
  return {
    packetType,
    contentLength,
    url: head.url ?? '',
    sessionId: singleHeader(headers, HEADER.sessionId),
    supportedProtocols: singleHeader(headers, HEADER.supportedProtocols),
    contentRange: singleHeader(headers, HEADER.contentRange),
    contentEncoding: singleHeader(headers, HEADER.contentEncoding),
  };
}

/** Header values by lower-case name, in order; rejects values over 4 KB (§2.2). */
function collectHeaders(rawHeaders: readonly string[]): Map<string, string[]> {
  const headers = new Map<string, string[]>();
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = (rawHeaders[i] ?? '').toLowerCase();
    const value = (rawHeaders[i + 1] ?? '').trim();
    if (value.length > MAX_HEADER_VALUE_LENGTH) {
      throw badRequest(`The ${rawHeaders[i]} header value exceeds ${MAX_HEADER_VALUE_LENGTH} bytes`);
    }
    const values = headers.get(name);
    if (values === undefined) headers.set(name, [value]);
    else values.push(value);
  }
  return headers;
}

/** The one value of a header (repeats allowed only with the same value), or undefined. */
function singleHeader(headers: Map<string, string[]>, name: string): string | undefined {
  const values = headers.get(name.toLowerCase());
  if (values === undefined) return undefined;
  const first = values[0];
  if (values.some((value) => value !== first)) throw badRequest(`Conflicting ${name} headers`);
  return first;
}

/** §2.3, §15 A12: Content-Length is required; chunked bodies are refused like a missing length. */
function parseContentLength(headers: Map<string, string[]>): number {
  if (headers.has(HEADER.transferEncoding.toLowerCase())) {
    throw lengthRequired('Transfer-Encoding is not accepted on BITS_POST; send Content-Length');
  }
  const value = singleHeader(headers, HEADER.contentLength);
  if (value === undefined) throw lengthRequired('Content-Length header missing');
  const length = DECIMAL.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(length)) throw badRequest(`Invalid Content-Length ${JSON.stringify(value)}`);
  return length;
}
