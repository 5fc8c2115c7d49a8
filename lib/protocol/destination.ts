import { invalidDestination } from '../errors';
import type { Destination } from '../storage/adapter';
import { REPLY_FOLDER_NAME, SESSION_FOLDER_NAME } from './constants';

/** Where a packet's request-target points, below the middleware's mount point. */
export interface Target {
  /** Validated, decoded path segments (bits-protocol.md §3.2 step 2). */
  readonly destination: Destination;
  /** Canonical percent-encoded path below the mount point; sessions are bound to it (§5.6, §15 A18). */
  readonly urlPath: string;
}

const ABSOLUTE_FORM = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/;
const BAD_PERCENT = /%(?![0-9A-Fa-f]{2})/;
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const WINDOWS_RESERVED_CHARS = /[<>:"|?*]/;
const WINDOWS_DEVICE = /^(?:CON|PRN|AUX|NUL|COM[1-9\u00b9\u00b2\u00b3]|LPT[1-9\u00b9\u00b2\u00b3]|CONIN\$|CONOUT\$)$/i;
const MAX_SEGMENT_BYTES = 255;

/**
 * Maps a request-target (`req.url` below the mount point: origin-form, or absolute-form per §2.1)
 * to a destination. The query and fragment are not part of it. Content-Name is never used (§15 A14).
 * Every name that could escape the storage root or mean something else on some file system is
 * refused: dot segments, separators and NUL in any encoding, invalid percent-encoding, drive letters
 * and other Windows-reserved characters and device names, names ending in a dot or space, names
 * over 255 bytes, the session folder, a first segment naming the reply folder `BITS-Sessions`
 * (reply downloads live there, §10.5; any letter case), and directory targets (the mount root, a
 * trailing slash).
 *
 * @throws BitsError `BITS_INVALID_DESTINATION` (400 + E_INVALIDARG, §3.2 step 2) naming the reason.
 */
export function parseDestination(requestTarget: string): Target {
  const withoutAuthority = requestTarget.replace(ABSOLUTE_FORM, '');
  const path = withoutAuthority.split(/[?#]/, 1)[0] ?? '';
  if (!path.startsWith('/')) throw invalidDestination('the request-target is not a path');
  if (path === '/') throw invalidDestination('the mount point itself is a directory, not a file');
  if (path.endsWith('/')) throw invalidDestination('a trailing slash names a directory, not a file');
  const destination = path.slice(1).split('/').map(decodeSegment);
  if (destination[0]?.toLowerCase() === REPLY_FOLDER_NAME.toLowerCase()) {
    throw invalidDestination(`${REPLY_FOLDER_NAME} is reserved for reply downloads`);
  }
  return {
    destination: Object.freeze(destination),
    urlPath: `/${destination.map(encodeURIComponent).join('/')}`,
  };
}

/**
 * Checks a destination an application produced (the `destination` hook) with the rules a URL path
 * gets from {@link parseDestination} (§3.2 step 2): a non-empty array of names, each safe on every
 * file system and none of them the session folder. Returns a frozen copy.
 *
 * @throws BitsError `BITS_INVALID_DESTINATION` (400 + E_INVALIDARG) naming the reason.
 */
export function checkDestination(value: unknown): Destination {
  if (!Array.isArray(value) || value.length === 0) {
    throw invalidDestination('the destination hook must return a non-empty array of names');
  }
  const names: unknown[] = value;
  const destination = names.map((name) => {
    if (typeof name !== 'string' || name === '') throw invalidDestination('the destination hook returned an empty or non-string name');
    checkName(name);
    return name;
  });
  return Object.freeze(destination);
}

/** Decodes one raw path segment and checks the decoded name (§3.2 step 2). */
function decodeSegment(raw: string): string {
  if (raw === '') throw invalidDestination('empty path segment');
  if (raw.includes('\\')) throw invalidDestination('backslash in the path');
  if (BAD_PERCENT.test(raw)) throw invalidDestination('invalid percent-encoding');
  let name: string;
  try {
    name = decodeURIComponent(raw);
  } catch {
    throw invalidDestination('percent-encoding that is not UTF-8');
  }
  checkName(name);
  return name;
}

function checkName(name: string): void {
  if (name.includes('/') || name.includes('\\')) throw invalidDestination('encoded path separator');
  if (CONTROL.test(name)) throw invalidDestination('NUL or control character in a name');
  if (name === '.' || name === '..') throw invalidDestination('dot segment');
  if (WINDOWS_RESERVED_CHARS.test(name)) throw invalidDestination('a name contains one of < > : " | ? *');
  if (name.endsWith('.') || name.endsWith(' ')) throw invalidDestination('a name ends in a dot or space');
  const base = (name.split('.', 1)[0] ?? '').trimEnd();
  if (WINDOWS_DEVICE.test(base)) throw invalidDestination(`${JSON.stringify(name)} is a reserved device name`);
  if (Buffer.byteLength(name, 'utf8') > MAX_SEGMENT_BYTES) throw invalidDestination('a name is longer than 255 bytes');
  if (name.toLowerCase() === SESSION_FOLDER_NAME) throw invalidDestination('the session folder is not a destination');
}
