/**
 * Wire constants of the BITS upload protocol (bits-protocol.md §4, §8.6).
 */

/** The only upload protocol ever defined, "BITS 1.5 Upload Protocol" (§1, §7). */
export const BITS_PROTOCOL_GUID = '{7df0354d-249b-430f-820d-3d2a9bef4931}';

/** The request packets a client sends, in their wire spelling (§2.2, §3). */
export const PACKET_TYPES = ['Ping', 'Create-Session', 'Fragment', 'Close-Session', 'Cancel-Session'] as const;

/** One of the request packets of §3. */
export type PacketType = (typeof PACKET_TYPES)[number];

/** Header names as they appear on the wire (§4); Node keeps the case we give. */
export const HEADER = {
  packetType: 'BITS-Packet-Type',
  supportedProtocols: 'BITS-Supported-Protocols',
  protocol: 'BITS-Protocol',
  sessionId: 'BITS-Session-Id',
  hostId: 'BITS-Host-Id',
  hostIdFallbackTimeout: 'BITS-Host-Id-Fallback-Timeout',
  receivedContentRange: 'BITS-Received-Content-Range',
  replyUrl: 'BITS-Reply-URL',
  errorCode: 'BITS-Error-Code',
  error: 'BITS-Error',
  errorContext: 'BITS-Error-Context',
  acceptEncoding: 'Accept-Encoding',
  contentLength: 'Content-Length',
  contentRange: 'Content-Range',
  contentEncoding: 'Content-Encoding',
  transferEncoding: 'Transfer-Encoding',
  connection: 'Connection',
} as const;

/** HRESULT values the server sends (§8.6). */
export const HRESULT = {
  E_FAIL: 0x80004005,
  E_ACCESSDENIED: 0x80070005,
  E_INVALIDARG: 0x80070057,
  /** HRESULT_FROM_WIN32(ERROR_DISK_FULL); the spec's printed 0x80070112 is a typo (§15 A17). */
  ERROR_DISK_FULL: 0x80070070,
  /** HRESULT_FROM_WIN32(ERROR_TOO_MANY_SESS): a session limit is reached; 503 makes it transient (§5.4, §9.2). */
  ERROR_TOO_MANY_SESS: 0x80070045,
  BG_E_SESSION_NOT_FOUND: 0x8020001f,
  BG_E_TOO_LARGE: 0x80200020,
} as const;

/** `BITS-Error-Context` values the server sends (§8.4). */
export const ERROR_CONTEXT = {
  /** BG_ERROR_CONTEXT_REMOTE_FILE: the BITS server itself failed. */
  server: 0x5,
  /** BG_ERROR_CONTEXT_REMOTE_APPLICATION: the server application failed. */
  remoteApplication: 0x7,
} as const;

/** One of the {@link ERROR_CONTEXT} values. */
export type ErrorContext = (typeof ERROR_CONTEXT)[keyof typeof ERROR_CONTEXT];

/** Longest header value accepted; Windows enforces 4 KB (§2.2). */
export const MAX_HEADER_VALUE_LENGTH = 4096;

/** Longest session id a client may echo (§4, `BITS-Session-Id`). */
export const MAX_SESSION_ID_LENGTH = 100;

/** Name of the folder storage adapters keep session data in; never a valid upload target (§13). */
export const SESSION_FOLDER_NAME = '.bits-sessions';

/**
 * First path segment of reply URLs below the mount point (§10.5, IIS `BITS-Sessions\Replies\...`);
 * reserved, compared case-insensitively: no upload may target it.
 */
export const REPLY_FOLDER_NAME = 'BITS-Sessions';
