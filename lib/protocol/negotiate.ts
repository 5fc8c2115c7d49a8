import { protocolMismatch } from '../errors';
import { BITS_PROTOCOL_GUID } from './constants';

const SUPPORTED = [BITS_PROTOCOL_GUID];

/**
 * Picks the protocol for a Create-Session (bits-protocol.md §7, §15 A19): the entries of
 * `BITS-Supported-Protocols` are split on commas and whitespace, empty items ignored, compared
 * case-insensitively with or without braces; the first supported one in the client's order wins and
 * is answered as the canonical lower-case braced GUID.
 *
 * @throws BitsError `BITS_PROTOCOL_MISMATCH` when the header is missing, empty or names nothing we
 * support (TV-6).
 */
export function negotiateProtocol(offered: string | undefined): string {
  for (const entry of (offered ?? '').split(/[\s,]+/)) {
    if (entry === '') continue;
    const lower = entry.toLowerCase();
    const braced = lower.startsWith('{') ? lower : `{${lower}}`;
    if (SUPPORTED.includes(braced)) return braced;
  }
  throw protocolMismatch(offered);
}
