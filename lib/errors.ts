import {
  DestinationExistsError,
  DestinationIsDirectoryError,
  InvalidDestinationError,
  SessionNotFoundError,
} from './storage/adapter';
import { ERROR_CONTEXT, HEADER, HRESULT, type ErrorContext } from './protocol/constants';

/**
 * Stable codes of every failure the middleware answers with an error Ack. The wire form of each
 * (HTTP status and HRESULT, bits-protocol.md §8.5) is fixed by {@link BITS_ERRORS}.
 */
export type BitsErrorCode =
  | 'BITS_UPLOADS_DISABLED'
  | 'BITS_BAD_REQUEST'
  | 'BITS_LENGTH_REQUIRED'
  | 'BITS_UNKNOWN_PACKET_TYPE'
  | 'BITS_UNSUPPORTED_ENCODING'
  | 'BITS_SESSION_ID_MISSING'
  | 'BITS_PROTOCOL_MISMATCH'
  | 'BITS_INVALID_DESTINATION'
  | 'BITS_DESTINATION_IS_DIRECTORY'
  | 'BITS_DESTINATION_EXISTS'
  | 'BITS_SESSION_NOT_FOUND'
  | 'BITS_INVALID_RANGE'
  | 'BITS_UPLOAD_TOO_LARGE'
  | 'BITS_FRAGMENT_TOO_LARGE'
  | 'BITS_BODY_CONSUMED'
  | 'BITS_DISK_FULL'
  | 'BITS_TOO_MANY_SESSIONS'
  | 'BITS_SHUTTING_DOWN'
  | 'BITS_REFUSED'
  | 'BITS_APPLICATION_ERROR'
  | 'BITS_REPLY_URL_TOO_LONG'
  | 'BITS_INTERNAL';

/** How one error code appears on the wire. */
export interface WireError {
  readonly status: number;
  /** Sent as `BITS-Error-Code` and `BITS-Error`; undefined when the status says it all (§8.3). */
  readonly hresult: number | undefined;
}

/**
 * The one table mapping error codes to the wire (§8.5, §10.5, §15 A7, A10, A11, A12, A17, A20). Two codes
 * carry the application's own status and HRESULT instead of the ones listed (see
 * {@link BitsErrorOptions.wire}): `BITS_REFUSED` (an `onCreateSession` refusal) and
 * `BITS_APPLICATION_ERROR` (a hook that threw, context 0x7, §8.4).
 */
export const BITS_ERRORS: Readonly<Record<BitsErrorCode, WireError>> = Object.freeze({
  BITS_UPLOADS_DISABLED: { status: 501, hresult: HRESULT.E_ACCESSDENIED },
  BITS_BAD_REQUEST: { status: 400, hresult: HRESULT.E_INVALIDARG },
  BITS_LENGTH_REQUIRED: { status: 411, hresult: HRESULT.E_INVALIDARG },
  BITS_UNKNOWN_PACKET_TYPE: { status: 400, hresult: HRESULT.E_INVALIDARG },
  BITS_UNSUPPORTED_ENCODING: { status: 400, hresult: HRESULT.E_INVALIDARG },
  BITS_SESSION_ID_MISSING: { status: 400, hresult: HRESULT.E_INVALIDARG },
  BITS_PROTOCOL_MISMATCH: { status: 400, hresult: HRESULT.E_INVALIDARG },
  BITS_INVALID_DESTINATION: { status: 400, hresult: HRESULT.E_INVALIDARG },
  BITS_DESTINATION_IS_DIRECTORY: { status: 400, hresult: HRESULT.E_INVALIDARG },
  BITS_DESTINATION_EXISTS: { status: 403, hresult: HRESULT.E_ACCESSDENIED },
  BITS_SESSION_NOT_FOUND: { status: 500, hresult: HRESULT.BG_E_SESSION_NOT_FOUND },
  BITS_INVALID_RANGE: { status: 400, hresult: HRESULT.E_INVALIDARG },
  BITS_UPLOAD_TOO_LARGE: { status: 500, hresult: HRESULT.BG_E_TOO_LARGE },
  BITS_FRAGMENT_TOO_LARGE: { status: 413, hresult: undefined },
  BITS_BODY_CONSUMED: { status: 500, hresult: HRESULT.E_FAIL },
  BITS_DISK_FULL: { status: 500, hresult: HRESULT.ERROR_DISK_FULL },
  BITS_TOO_MANY_SESSIONS: { status: 503, hresult: HRESULT.ERROR_TOO_MANY_SESS },
  BITS_SHUTTING_DOWN: { status: 503, hresult: HRESULT.E_FAIL },
  BITS_REFUSED: { status: 403, hresult: HRESULT.E_ACCESSDENIED },
  BITS_APPLICATION_ERROR: { status: 500, hresult: HRESULT.E_FAIL },
  BITS_REPLY_URL_TOO_LONG: { status: 400, hresult: HRESULT.E_INVALIDARG },
  BITS_INTERNAL: { status: 500, hresult: HRESULT.E_FAIL },
});

/** Options of the {@link BitsError} constructor. */
export interface BitsErrorOptions {
  /** Extra response headers for the error Ack. Defaults to none. */
  readonly headers?: Readonly<Record<string, string>>;
  /** Defaults to 0x5, an error of the BITS server itself (§8.4). */
  readonly context?: ErrorContext;
  /** The underlying error, if any. Defaults to none. */
  readonly cause?: unknown;
  /**
   * Status and HRESULT that replace the code's entry in {@link BITS_ERRORS}; only for the codes the
   * application decides (`BITS_REFUSED`, `BITS_APPLICATION_ERROR`). Defaults to the table's entry.
   */
  readonly wire?: WireError;
}

/**
 * A failure answered with an error Ack. `status`, `hresult` and `context` come from the code
 * (§8.5); `expose` tells whether the message is safe to show a client (false for internal faults).
 */
export class BitsError extends Error {
  readonly code: BitsErrorCode;
  readonly status: number;
  readonly hresult: number | undefined;
  readonly context: ErrorContext;
  readonly headers: Readonly<Record<string, string>>;
  readonly expose: boolean;

  constructor(code: BitsErrorCode, message: string, options: BitsErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BitsError';
    this.code = code;
    const wire = options.wire ?? BITS_ERRORS[code];
    this.status = wire.status;
    this.hresult = wire.hresult;
    this.context = options.context ?? ERROR_CONTEXT.server;
    this.headers = Object.freeze({ ...options.headers });
    this.expose = this.status < 500;
  }
}

/** §3 step 1, §15 A20: uploads are disabled (`enabled: false`). */
export function uploadsDisabled(): BitsError {
  return new BitsError('BITS_UPLOADS_DISABLED', 'BITS uploads are disabled for this URL');
}

/** §2, §3 step 3: a malformed request. */
export function badRequest(reason: string): BitsError {
  return new BitsError('BITS_BAD_REQUEST', reason);
}

/** §2.3, §15 A12: no usable Content-Length. */
export function lengthRequired(reason: string): BitsError {
  return new BitsError('BITS_LENGTH_REQUIRED', reason);
}

/** §3.6, TV-13: missing or unknown `BITS-Packet-Type`. */
export function unknownPacketType(value: string | undefined): BitsError {
  return new BitsError(
    'BITS_UNKNOWN_PACKET_TYPE',
    value === undefined ? 'BITS-Packet-Type header missing' : `Unknown BITS-Packet-Type ${JSON.stringify(value)}`,
  );
}

/** §3.3, §6.2 V6: a Content-Encoding other than identity. */
export function unsupportedEncoding(value: string): BitsError {
  return new BitsError(
    'BITS_UNSUPPORTED_ENCODING',
    `Content-Encoding ${JSON.stringify(value)} not supported; only identity`,
  );
}

/** §3 step 4: Fragment, Close-Session or Cancel-Session without `BITS-Session-Id`. */
export function sessionIdMissing(): BitsError {
  return new BitsError('BITS_SESSION_ID_MISSING', 'BITS-Session-Id header missing');
}

/** §7, TV-6: no protocol in common. */
export function protocolMismatch(offered: string | undefined): BitsError {
  return new BitsError(
    'BITS_PROTOCOL_MISMATCH',
    offered === undefined
      ? 'BITS-Supported-Protocols header missing'
      : `None of the protocols ${JSON.stringify(offered)} is supported`,
  );
}

/** §3.2 step 2: a URL path that does not map to a safe destination. */
export function invalidDestination(reason: string): BitsError {
  return new BitsError('BITS_INVALID_DESTINATION', `Invalid destination: ${reason}`);
}

/** §3.2 step 2: the destination is a directory. */
export function destinationIsDirectory(): BitsError {
  return new BitsError('BITS_DESTINATION_IS_DIRECTORY', 'The destination is a directory');
}

/** §3.2 step 3, §15 A7, TV-16: a file exists and overwrites are not allowed. */
export function destinationExists(): BitsError {
  return new BitsError('BITS_DESTINATION_EXISTS', 'The destination exists and overwrites are not allowed');
}

/** §0.4, §3 step 4, TV-5: the session is unknown, expired, ended or bound elsewhere. */
export function sessionNotFound(sessionId: string): BitsError {
  return new BitsError('BITS_SESSION_NOT_FOUND', `Unknown upload session ${JSON.stringify(sessionId)}`);
}

/** §6.1-6.2 V1-V3: a missing, malformed or inconsistent Content-Range. */
export function invalidRange(reason: string): BitsError {
  return new BitsError('BITS_INVALID_RANGE', reason);
}

/** §6.2 V4, §15 A10, TV-8: the announced total exceeds `maxUploadSize`. */
export function uploadTooLarge(total: number, limit: number): BitsError {
  return new BitsError('BITS_UPLOAD_TOO_LARGE', `Upload of ${total} bytes exceeds the limit of ${limit} bytes`);
}

/**
 * §6.2 V5, §15 A11, TV-9: the fragment exceeds `maxFragmentSize`. The body is not read, so the
 * connection is closed after the Ack.
 */
export function fragmentTooLarge(length: number, limit: number): BitsError {
  return new BitsError('BITS_FRAGMENT_TOO_LARGE', `Fragment of ${length} bytes exceeds the limit of ${limit} bytes`, {
    headers: { [HEADER.connection]: 'close' },
  });
}

/** §2.5: a body parser mounted before the middleware already read the fragment body. */
export function bodyConsumed(): BitsError {
  return new BitsError(
    'BITS_BODY_CONSUMED',
    'The fragment body was already read by other middleware; mount bitsUpload() before any body parser',
  );
}

/** §8.5, §15 A17: the storage is full. */
export function diskFull(cause: unknown): BitsError {
  return new BitsError('BITS_DISK_FULL', 'Out of storage space', { cause });
}

/**
 * §5.4, §5.7: `maxSessions` or `maxSessionsPerPrincipal` is reached. 503 is transient for the client
 * (§9.2): it retries the Create-Session later.
 */
export function tooManySessions(reason: string): BitsError {
  return new BitsError('BITS_TOO_MANY_SESSIONS', reason);
}

/**
 * `close()` was called: no new sessions (§9.2: 503 is transient, the client comes back later), and
 * once it finished, no packets at all.
 */
export function shuttingDown(): BitsError {
  return new BitsError('BITS_SHUTTING_DOWN', 'The BITS upload endpoint is shutting down');
}

/** §10.5: a reply URL longer than 2,200 characters is answered 400 + E_INVALIDARG. */
export function replyUrlTooLong(length: number, limit: number): BitsError {
  return new BitsError('BITS_REPLY_URL_TOO_LONG', `The reply URL has ${length} characters; at most ${limit} are allowed`);
}

/** What a hook may return or throw to choose the error Ack; see {@link refused}, {@link applicationError}. */
interface ApplicationVerdict {
  readonly status?: unknown;
  readonly errorCode?: unknown;
}

/**
 * `onCreateSession` refused the session (§12: authorisation is decided by the application). The
 * status is the refusal's; the HRESULT its `errorCode`, else E_ACCESSDENIED for 401/403 and E_FAIL
 * otherwise. Context 0x5: the refusal is a decision of the BITS server (§8.4).
 *
 * @throws BitsError `BITS_APPLICATION_ERROR` when the refusal is not one (not an object, a status
 * outside 400-599, an errorCode that is not a 32-bit integer).
 */
export function refused(refusal: unknown): BitsError {
  const { status, errorCode }: ApplicationVerdict = typeof refusal === 'object' && refusal !== null ? refusal : {};
  if (!isErrorStatus(status) || !(errorCode === undefined || isHresult(errorCode))) {
    throw applicationError(
      new TypeError(
        `onCreateSession returned an invalid refusal (status ${String(status)}, errorCode ${String(errorCode)}); ` +
          'a refusal has a status from 400 to 599 and an optional HRESULT errorCode',
      ),
    );
  }
  const fallback = status === 401 || status === 403 ? HRESULT.E_ACCESSDENIED : HRESULT.E_FAIL;
  return new BitsError('BITS_REFUSED', `onCreateSession refused the session with status ${status}`, {
    wire: { status, hresult: errorCode ?? fallback },
  });
}

/**
 * A hook threw (§8.4: an error of the server application, context 0x7; §10.4: the client retries
 * per §9.2). Status from the error's `status` property when it is 400-599, else 500; HRESULT from
 * its numeric `errorCode`, else E_FAIL.
 */
export function applicationError(cause: unknown): BitsError {
  if (cause instanceof BitsError && cause.code === 'BITS_APPLICATION_ERROR') return cause;
  const verdict: ApplicationVerdict = typeof cause === 'object' && cause !== null ? cause : {};
  const status = isErrorStatus(verdict.status) ? verdict.status : 500;
  const hresult = isHresult(verdict.errorCode) ? verdict.errorCode : HRESULT.E_FAIL;
  return new BitsError('BITS_APPLICATION_ERROR', 'The application failed', {
    cause,
    context: ERROR_CONTEXT.remoteApplication,
    wire: { status, hresult },
  });
}

function isErrorStatus(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 400 && value <= 599;
}

/** An HRESULT as a number: any 32-bit value, signed (-2147467259) or unsigned (0x80004005). */
function isHresult(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= -0x8000_0000 && value <= 0xffff_ffff;
}

/** A server fault: answered with E_FAIL. */
export function internalError(cause: unknown): BitsError {
  return new BitsError('BITS_INTERNAL', 'Internal server error', { cause });
}

/** Codes that mean this server or its application failed, reported as `upload-failed` (§8.5). */
const FAULT_CODES: ReadonlySet<BitsErrorCode> = new Set<BitsErrorCode>([
  'BITS_DISK_FULL',
  'BITS_APPLICATION_ERROR',
  'BITS_BODY_CONSUMED',
  'BITS_INTERNAL',
]);

/** True for a fault of the server, its storage or the application, as opposed to a client's mistake or a policy. */
export function isServerFault(error: BitsError): boolean {
  return FAULT_CODES.has(error.code);
}

const DISK_FULL_CODES = new Set(['ENOSPC', 'EDQUOT']);

/** Maps anything thrown while handling a packet to a {@link BitsError}. */
export function toBitsError(error: unknown): BitsError {
  if (error instanceof BitsError) return error;
  if (error instanceof SessionNotFoundError) return sessionNotFound(error.sessionId);
  if (error instanceof DestinationExistsError) return destinationExists();
  if (error instanceof DestinationIsDirectoryError) return destinationIsDirectory();
  if (error instanceof InvalidDestinationError) {
    return new BitsError('BITS_INVALID_DESTINATION', error.message, { cause: error });
  }
  if (isDiskFull(error)) return diskFull(error);
  return internalError(error);
}

function isDiskFull(error: unknown): boolean {
  if (typeof error !== 'object' || error === null || !('code' in error)) return false;
  const { code } = error;
  return typeof code === 'string' && DISK_FULL_CODES.has(code);
}
