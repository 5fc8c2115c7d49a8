import { v4 as uuidv4 } from 'uuid';
import { MAX_SESSION_ID_LENGTH } from './constants';

const GUID = /^\{?([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})\}?$/;
const ECHOABLE = /^[\x21-\x7e]+$/;

/** A new session id: a random (v4) GUID, upper case, in braces, like IIS (bits-protocol.md §5.1). */
export function newSessionId(): string {
  return `{${uuidv4().toUpperCase()}}`;
}

/**
 * The canonical form of a session id a client echoed, matched case-insensitively (§5.1), or
 * undefined when it cannot be one we issued. Only canonical ids ever reach the storage adapter.
 */
export function sessionKey(echoed: string): string | undefined {
  const match = GUID.exec(echoed);
  const guid = match?.[1];
  return guid === undefined ? undefined : `{${guid.toUpperCase()}}`;
}

/**
 * The request's `BITS-Session-Id` value if it may be sent back as is (§4: Acks echo the request
 * value): visible ASCII, at most 100 characters. Undefined otherwise.
 */
export function echoableSessionId(echoed: string | undefined): string | undefined {
  if (echoed === undefined || echoed.length > MAX_SESSION_ID_LENGTH || !ECHOABLE.test(echoed)) return undefined;
  return echoed;
}
