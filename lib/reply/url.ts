import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { badRequest, replyUrlTooLong } from '../errors';
import type { ResolvedOptions } from '../options';
import { REPLY_FOLDER_NAME } from '../protocol/constants';
import { sessionKey } from '../protocol/session-id';

/** §10.5: a reply URL longer than this is an error (400 + E_INVALIDARG). */
export const MAX_REPLY_URL_LENGTH = 2200;

/** Second and last segments of a reply path, as IIS names them (§10.5 [WIRE 4.2]). */
const REPLIES_FOLDER = 'Replies';
const REPLY_FILE = 'responsefile.bin';

/** What {@link replyUrl} needs of the options. */
export type ReplyUrlSettings = Pick<ResolvedOptions, 'publicUrl' | 'trustForwardedHeaders'>;

/** A request-target that names a reply download. */
export interface ReplyPathMatch {
  /** The canonical session id, or undefined when the id part cannot be one we issued. */
  readonly sessionId: string | undefined;
}

const ABSOLUTE_FORM = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/;
/** RFC 3986 host (IP literal, or a registered name / IPv4 address) with an optional port. */
const HOST = /^(?:\[[0-9A-Za-z:.%_~-]+\]|[0-9A-Za-z._~%-]+)(?::\d{1,5})?$/;
/** One `name=value` pair of a `Forwarded` element (RFC 7239 §4), value a token or quoted string. */
const FORWARDED_PAIR = /[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^;,"]*?)[ \t]*(;|,|$)/y;

/**
 * Path of a session's reply below the mount point (§10.5): the IIS layout
 * `/BITS-Sessions/Replies/<id>/responsefile.bin`, with the braced id percent-encoded as the
 * Windows client requests it (`%7B...%7D`, [WIRE 4.2]).
 */
export function replyPath(sessionId: string): string {
  return `/${REPLY_FOLDER_NAME}/${REPLIES_FOLDER}/${encodeURIComponent(sessionId)}/${REPLY_FILE}`;
}

/** Length of {@link replyPath} for a braced GUID, the only ids the middleware issues (§5.1). */
export const REPLY_PATH_LENGTH = replyPath('{00000000-0000-0000-0000-000000000000}').length;

/**
 * Recognises the path of a reply download (§10.6) in a request-target below the mount point:
 * `/BITS-Sessions/Replies/<id>/responsefile.bin`, names compared case-insensitively, segments
 * percent-decoded, query ignored. Undefined for every other target.
 */
export function matchReplyPath(requestTarget: string): ReplyPathMatch | undefined {
  const path = requestTarget.replace(ABSOLUTE_FORM, '').split(/[?#]/, 1)[0] ?? '';
  const segments = path.split('/').map(decodeSegment);
  if (segments.length !== 5 || segments[0] !== '') return undefined;
  const [, folder, replies, id, file] = segments;
  if (
    folder?.toLowerCase() !== REPLY_FOLDER_NAME.toLowerCase() ||
    replies?.toLowerCase() !== REPLIES_FOLDER.toLowerCase() ||
    file?.toLowerCase() !== REPLY_FILE
  ) {
    return undefined;
  }
  return { sessionId: id === undefined ? undefined : sessionKey(id) };
}

/**
 * The absolute URL of a session's stored reply (§10.5 [REC]: absolute, forward slashes), served
 * by the same middleware: `<base>` + {@link replyPath}. `<base>` is `publicUrl` when set; otherwise
 * the request's scheme (`https` on a TLS socket), its `Host` and the mount path, where
 * `trustForwardedHeaders` lets `Forwarded` (`proto`, `host`) and then `X-Forwarded-Proto` /
 * `X-Forwarded-Host` replace scheme and host.
 *
 * @throws BitsError `BITS_BAD_REQUEST` (400) when the request has no usable Host;
 * `BITS_REPLY_URL_TOO_LONG` (400 + E_INVALIDARG) when the URL exceeds 2,200 characters (§10.5).
 */
export function replyUrl(req: IncomingMessage, sessionId: string, settings: ReplyUrlSettings): string {
  const base = settings.publicUrl ?? requestBase(req, settings.trustForwardedHeaders);
  return checkReplyUrlLength(`${base}${replyPath(sessionId)}`);
}

/**
 * Returns `url` if it has at most 2,200 characters (§10.5).
 *
 * @throws BitsError `BITS_REPLY_URL_TOO_LONG` (400 + E_INVALIDARG) otherwise.
 */
export function checkReplyUrlLength(url: string): string {
  if (url.length > MAX_REPLY_URL_LENGTH) throw replyUrlTooLong(url.length, MAX_REPLY_URL_LENGTH);
  return url;
}

/**
 * The path the middleware is mounted at, without a trailing slash: Express's `req.baseUrl`, else
 * what Connect (and Express) cut off the front of `req.originalUrl` to make `req.url`; empty for
 * a plain `node:http` handler.
 */
export function mountPath(req: IncomingMessage): string {
  const { baseUrl, originalUrl } = req as IncomingMessage & { baseUrl?: unknown; originalUrl?: unknown };
  const url = req.url ?? '';
  let prefix = '';
  if (typeof baseUrl === 'string') prefix = baseUrl;
  else if (typeof originalUrl === 'string' && originalUrl.endsWith(url)) prefix = originalUrl.slice(0, originalUrl.length - url.length);
  return prefix.replace(ABSOLUTE_FORM, '').replace(/\/+$/, '');
}

/** Scheme, host and mount path of the request (§10.5). */
function requestBase(req: IncomingMessage, trustForwarded: boolean): string {
  const forwarded = trustForwarded ? forwardedOrigin(req) : {};
  const scheme = forwarded.proto ?? ((req.socket as Partial<TLSSocket>).encrypted === true ? 'https' : 'http');
  const host = forwarded.host ?? req.headers.host;
  if (host === undefined || !HOST.test(host)) {
    throw badRequest(`The Host header ${JSON.stringify(host ?? null)} cannot name the reply URL`);
  }
  return `${scheme}://${host}${mountPath(req)}`;
}

/** Scheme and host a trusted proxy reports; a field it does not set, or sets to garbage, is left out. */
function forwardedOrigin(req: IncomingMessage): { proto?: string; host?: string } {
  const standard = parseForwarded(headerValue(req, 'forwarded'));
  const proto = [standard.get('proto'), firstListItem(headerValue(req, 'x-forwarded-proto'))]
    .map((value) => value?.toLowerCase())
    .find((value) => value === 'http' || value === 'https');
  const host = [standard.get('host'), firstListItem(headerValue(req, 'x-forwarded-host'))].find(
    (value) => value !== undefined && HOST.test(value),
  );
  return { ...(proto !== undefined && { proto }), ...(host !== undefined && { host }) };
}

/**
 * Parameters of the first element of a `Forwarded` header (RFC 7239 §4): the one the proxy nearest
 * the client added. Names are lower-cased, quoted values unquoted; parsing stops at the first
 * malformed pair.
 */
export function parseForwarded(value: string | undefined): Map<string, string> {
  const params = new Map<string, string>();
  if (value === undefined) return params;
  FORWARDED_PAIR.lastIndex = 0;
  for (let match = FORWARDED_PAIR.exec(value); match !== null; match = FORWARDED_PAIR.exec(value)) {
    const [, name = '', raw = '', separator] = match;
    const unquoted = raw.startsWith('"') ? raw.slice(1, -1).replace(/\\(.)/g, '$1') : raw;
    if (!params.has(name.toLowerCase())) params.set(name.toLowerCase(), unquoted);
    if (separator !== ';') break;
  }
  return params;
}

/** A request header as one string (repeats joined by Node with `, `). */
function headerValue(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}

/** The first item of a comma-separated header value, trimmed; undefined when empty. */
function firstListItem(value: string | undefined): string | undefined {
  const item = value?.split(',', 1)[0]?.trim();
  return item === '' ? undefined : item;
}

/** A percent-decoded path segment, or the raw one when it is not valid percent-encoding. */
function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}
