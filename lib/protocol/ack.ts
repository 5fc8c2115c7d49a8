import type { ServerResponse } from 'node:http';
import type { BitsError } from '../errors';
import { HEADER } from './constants';

/**
 * A description of one Ack (bits-protocol.md §3): the status and the headers beyond the two every
 * Ack carries (`BITS-Packet-Type: Ack`, `Content-Length: 0`), which {@link writeAck} adds.
 */
export interface Ack {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
}

/** Formats an HRESULT as `0x` plus 8 upper-case hex digits (§8.2, §15 A2). */
export function formatHresult(value: number): string {
  return `0x${(value >>> 0).toString(16).toUpperCase().padStart(8, '0')}`;
}

/** Formats an error context as `0x5` / `0x7` (§8.2, §15 A2). */
export function formatContext(value: number): string {
  return `0x${value.toString(16).toUpperCase()}`;
}

/** A success Ack (status 200 unless given). */
export function ack(headers: Readonly<Record<string, string>> = {}, status = 200): Ack {
  return { status, headers };
}

/**
 * The Ack for an error: status, then both error header names with the same value (§8.1, §15 A1) and
 * the context, only when the code has an HRESULT (§8.3); `sessionId` is echoed when given (§4).
 */
export function errorAck(error: BitsError, sessionId?: string): Ack {
  const headers: Record<string, string> = {};
  if (sessionId !== undefined) headers[HEADER.sessionId] = sessionId;
  if (error.hresult !== undefined) {
    const code = formatHresult(error.hresult);
    headers[HEADER.errorCode] = code;
    headers[HEADER.error] = code;
    headers[HEADER.errorContext] = formatContext(error.context);
  }
  return { status: error.status, headers: { ...headers, ...error.headers } };
}

/** True when the Ack tells the client that the connection closes after it. */
export function closesConnection(ackToSend: Ack): boolean {
  return Object.entries(ackToSend.headers).some(
    ([name, value]) => name.toLowerCase() === 'connection' && value.toLowerCase() === 'close',
  );
}

/** The same Ack with `Connection: close` added. */
export function withConnectionClose(ackToSend: Ack): Ack {
  return { status: ackToSend.status, headers: { ...ackToSend.headers, [HEADER.connection]: 'close' } };
}

/** Headers every Ack has with a fixed value. */
const FIXED_HEADERS = new Set([HEADER.packetType.toLowerCase(), HEADER.contentLength.toLowerCase()]);

/**
 * Writes an Ack: `BITS-Packet-Type: Ack` first, the Ack's headers, an explicit `Content-Length: 0`,
 * no body and so never chunked (§0.5, §2.3). The only place a response is written.
 */
export function writeAck(res: ServerResponse, ackToSend: Ack): void {
  const headers: Record<string, string> = { [HEADER.packetType]: 'Ack' };
  for (const [name, value] of Object.entries(ackToSend.headers)) {
    if (!FIXED_HEADERS.has(name.toLowerCase())) headers[name] = value;
  }
  headers[HEADER.contentLength] = '0';
  res.writeHead(ackToSend.status, headers);
  res.end();
}
