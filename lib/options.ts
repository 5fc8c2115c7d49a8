import { IncomingMessage } from 'node:http';
import { inspect } from 'node:util';
import type { BitsUploadHooks } from './events';
import { defaultPrincipal } from './protocol/principal';
import { httpNotification, type HttpNotificationOptions } from './reply/http-notification';
import type { ReplyHandler, ReplyUrlOptions } from './reply/types';
import { MAX_REPLY_URL_LENGTH, REPLY_PATH_LENGTH } from './reply/url';
import type { StorageAdapter } from './storage/adapter';
import { FileSystemStorage } from './storage/filesystem';

/**
 * Options of {@link bitsUpload}. Give `storage` or `directory`, not both. The application hooks
 * (`onCreateSession`, `destination`, `onUploadComplete`) are described in {@link BitsUploadHooks};
 * `publicUrl` and `trustForwardedHeaders` (where reply URLs point) in {@link ReplyUrlOptions}.
 */
export interface BitsUploadOptions extends BitsUploadHooks, ReplyUrlOptions {
  /**
   * Where sessions and finished uploads are kept. Defaults to a `FileSystemStorage` of `directory`.
   */
  readonly storage?: StorageAdapter;
  /**
   * Root folder for uploads: shorthand for `storage: new FileSystemStorage({ directory })`.
   * Defaults to none; required unless `storage` is given.
   */
  readonly directory?: string;
  /**
   * Largest whole file, in bytes. A larger upload is refused at its first fragment with
   * `BG_E_TOO_LARGE` (bits-protocol.md §6.2 V4, §15 A10). Defaults to `Number.MAX_SAFE_INTEGER`
   * (unlimited).
   */
  readonly maxUploadSize?: number;
  /**
   * Largest fragment body, in bytes. A larger fragment is answered 413 before its body is read and
   * the client retries with smaller fragments (§6.2 V5, §15 A11). Windows clients send up to 13 MB;
   * values below 16 MiB cost them extra round trips, and values below 5 KB can stall them.
   * Defaults to 16 MiB (16 777 216).
   */
  readonly maxFragmentSize?: number;
  /**
   * Let an upload replace an existing file. When false, Create-Session for an existing file is
   * refused with 403 (§3.2 step 3, §15 A7), and so is the commit if a file appeared meanwhile.
   * Defaults to false.
   */
  readonly allowOverwrites?: boolean;
  /**
   * Idle time in milliseconds after which an open session expires (§5.4, IIS `BITSSessionTimeout`);
   * every stored byte resets it. An expired upload in progress is deleted with its data and its id
   * becomes unknown; an expired complete upload (its file is at the destination, never touched)
   * becomes a tombstone, so that a late Close is still answered 200 (§15 A9).
   * Defaults to 14 days (1 209 600 000).
   */
  readonly sessionTimeout?: number;
  /**
   * How long, in milliseconds, the tombstone of a closed, cancelled or expired session is kept so
   * that a repeated Close or Cancel is answered 200 rather than BG_E_SESSION_NOT_FOUND (§5.4 [REC],
   * §15 A9). Defaults to 24 hours (86 400 000).
   */
  readonly tombstoneTimeout?: number;
  /**
   * Period in milliseconds of the built-in sweeper that removes expired sessions and tombstones
   * (§5.4; IIS cleans up every 12 hours). Its timer does not keep the process alive. `false` turns
   * it off; call `middleware.cleanupExpired()` yourself then. Expired sessions are refused on use
   * either way. Defaults to 1 hour (3 600 000).
   */
  readonly cleanupInterval?: number | false;
  /**
   * Most open sessions (not closed, cancelled or expired) at once. A Create-Session beyond it is
   * answered 503 + ERROR_TOO_MANY_SESS (0x80070045), which the client retries later (§5.4, §9.2).
   * Counted by this middleware in this process (from the storage's records at the first
   * Create-Session, then kept up to date): processes sharing one storage each count their own.
   * Defaults to 10 000.
   */
  readonly maxSessions?: number;
  /**
   * Most open sessions one principal (see `principal`) may have at once, like IIS's
   * `BITSNumberOfSessionsLimit` (§5.4, §13); answered like `maxSessions`. Requests without a
   * principal are only subject to `maxSessions`. Counted per process like `maxSessions`.
   * Defaults to 50.
   */
  readonly maxSessionsPerPrincipal?: number;
  /**
   * Who sends a request. A session is bound to the principal that created it: a packet for it from
   * another principal is answered as for an unknown session (§5.6, §15 A18); the per-principal limit
   * counts by it. Behind a reverse proxy every client has the proxy's address, so give a function
   * that reads the authenticated user (or a client address header your proxy sets).
   * Defaults to `req.user` when it is a string, its `id`, `username` or `name` when it is an object,
   * else `req.socket.remoteAddress`.
   */
  readonly principal?: (req: IncomingMessage) => string | undefined;
  /**
   * Host name or IP address sent as `BITS-Host-Id` on Create-Session, pinning the client to this
   * server of a farm (§11). Defaults to none (no header).
   */
  readonly hostId?: string;
  /**
   * Seconds the client keeps trying the `hostId` host before returning to the original one; sent
   * as `BITS-Host-Id-Fallback-Timeout` whenever `hostId` is set, ignored otherwise (§11).
   * Defaults to 86 400.
   */
  readonly hostIdFallbackTimeout?: number;
  /**
   * Whether uploads are accepted. When false every BITS packet, Ping included, is answered 501 with
   * E_ACCESSDENIED (§3 step 1, §15 A20, TV-17). Defaults to true.
   */
  readonly enabled?: boolean;
  /**
   * Makes the endpoint an upload-reply endpoint (bits-protocol.md §10.1): once an upload is
   * complete, before the final Ack, the handler is called once with the upload and returns the
   * reply (bytes, a file, or a static URL), which the final Ack names in `BITS-Reply-URL` and this
   * middleware serves (§10.5, §10.6). The upload is not placed at its destination unless the
   * reply asks for it (`copyToDestination`). The storage must implement `writeReply` and
   * `readReply`. Defaults to none: a plain upload endpoint that never sends `BITS-Reply-URL`
   * (§15 A23).
   */
  readonly reply?: ReplyHandler;
  /**
   * Makes the endpoint an upload-reply endpoint whose reply comes from a server application over
   * HTTP, like IIS's `BITSServerNotificationType` 1 (`mode: 'reference'`) and 2 (`mode: 'value'`)
   * (bits-protocol.md §10.3-10.4): shorthand for `reply: httpNotification(notification)`; see
   * {@link HttpNotificationOptions}. Give `notification` or `reply`, not both. Defaults to none.
   */
  readonly notification?: HttpNotificationOptions;
}

/** Options after {@link resolveOptions}: every default applied, validated, frozen. */
export interface ResolvedOptions extends BitsUploadHooks {
  readonly storage: StorageAdapter;
  readonly maxUploadSize: number;
  readonly maxFragmentSize: number;
  readonly allowOverwrites: boolean;
  readonly sessionTimeout: number;
  readonly tombstoneTimeout: number;
  readonly cleanupInterval: number | false;
  readonly maxSessions: number;
  readonly maxSessionsPerPrincipal: number;
  readonly principal: (req: IncomingMessage) => string | undefined;
  readonly hostId: string | undefined;
  readonly hostIdFallbackTimeout: number;
  readonly enabled: boolean;
  readonly reply: ReplyHandler | undefined;
  /** `publicUrl` without a trailing slash. */
  readonly publicUrl: string | undefined;
  readonly trustForwardedHeaders: boolean;
}

/** Defaults of {@link BitsUploadOptions}. */
export const DEFAULT_OPTIONS = Object.freeze({
  maxUploadSize: Number.MAX_SAFE_INTEGER,
  maxFragmentSize: 16 * 1024 * 1024,
  allowOverwrites: false,
  sessionTimeout: 14 * 24 * 60 * 60 * 1000,
  tombstoneTimeout: 24 * 60 * 60 * 1000,
  cleanupInterval: 60 * 60 * 1000,
  maxSessions: 10_000,
  maxSessionsPerPrincipal: 50,
  hostIdFallbackTimeout: 86_400,
  enabled: true,
  trustForwardedHeaders: false,
});

/** Every method a storage adapter must have (lib/storage/adapter.ts). */
export const REQUIRED_STORAGE_METHODS = Object.freeze([
  'createSession',
  'getSession',
  'updateSession',
  'writeFragment',
  'inspectDestination',
  'commit',
  'endSession',
  'deleteSession',
  'listSessions',
  'readData',
] as const satisfies readonly (keyof StorageAdapter)[]);

/** The storage methods an endpoint that produces replies needs besides the required ones (§10). */
export const REPLY_STORAGE_METHODS = Object.freeze(['writeReply', 'readReply'] as const satisfies readonly (keyof StorageAdapter)[]);

const KNOWN_OPTIONS: readonly (keyof BitsUploadOptions)[] = [
  'storage',
  'directory',
  'maxUploadSize',
  'maxFragmentSize',
  'allowOverwrites',
  'sessionTimeout',
  'tombstoneTimeout',
  'cleanupInterval',
  'maxSessions',
  'maxSessionsPerPrincipal',
  'principal',
  'hostId',
  'hostIdFallbackTimeout',
  'enabled',
  'onCreateSession',
  'destination',
  'onUploadComplete',
  'reply',
  'notification',
  'publicUrl',
  'trustForwardedHeaders',
];

/** §11: an RFC 1738 host name, an IPv4 address or an IPv6 address, at most 300 characters. */
const HOST_ID = /^[A-Za-z0-9._\-:[\]]{1,300}$/;
const MAX_DWORD = 0xffff_ffff;
/** Longest delay `setInterval` honours (2^31 - 1 ms, about 24.8 days). */
const MAX_TIMER_DELAY = 0x7fff_ffff;

/**
 * Validates and completes the options once, when the middleware is created: a string is the
 * `directory` shorthand, `undefined` values are dropped, defaults are applied and the result is
 * frozen. The caller's object is never changed.
 *
 * @throws TypeError naming the option, showing the bad value and saying how to fix it; also when
 * the middleware itself is passed to `app.use` (`app.use(bitsUpload)`), which calls it with
 * `(req, res, next)`.
 */
export function resolveOptions(input: unknown, argumentCount = 1): ResolvedOptions {
  if (looksLikeRequest(input)) {
    throw new TypeError(
      'bitsUpload was called as a middleware with (req, res, next). Call it to create the middleware: ' +
        "app.use('/uploads', bitsUpload('./uploads')), not app.use(bitsUpload).",
    );
  }
  if (argumentCount > 1) {
    throw new TypeError(`bitsUpload takes one argument (a directory or an options object), got ${argumentCount}.`);
  }
  const raw = typeof input === 'string' ? { directory: input } : input;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new TypeError(
      `bitsUpload expects a directory path or an options object, got ${show(input)}. ` +
        "Example: bitsUpload('./uploads') or bitsUpload({ storage: new MemoryStorage() }).",
    );
  }
  const given = Object.fromEntries(
    Object.entries(raw).filter(([, value]) => value !== undefined),
  ) as Partial<Record<string, unknown>>;
  for (const key of Object.keys(given)) {
    if (!(KNOWN_OPTIONS as readonly string[]).includes(key)) {
      throw new TypeError(`bitsUpload: unknown option "${key}". Known options: ${KNOWN_OPTIONS.join(', ')}.`);
    }
  }
  const storage = resolveStorage(given.storage, given.directory);
  const reply = replyOption(given.reply, given.notification);
  if (reply !== undefined) requireReplyStorage(storage, given.notification === undefined ? 'reply' : 'notification');
  return Object.freeze({
    storage,
    maxUploadSize: integerOption('maxUploadSize', given.maxUploadSize, 0, Number.MAX_SAFE_INTEGER, 'bytes'),
    maxFragmentSize: integerOption('maxFragmentSize', given.maxFragmentSize, 1, Number.MAX_SAFE_INTEGER, 'bytes'),
    allowOverwrites: booleanOption('allowOverwrites', given.allowOverwrites),
    sessionTimeout: integerOption('sessionTimeout', given.sessionTimeout, 1, Number.MAX_SAFE_INTEGER, 'milliseconds'),
    tombstoneTimeout: integerOption('tombstoneTimeout', given.tombstoneTimeout, 1, Number.MAX_SAFE_INTEGER, 'milliseconds'),
    cleanupInterval:
      given.cleanupInterval === false
        ? false
        : integerOption('cleanupInterval', given.cleanupInterval, 1, MAX_TIMER_DELAY, 'milliseconds, or false'),
    maxSessions: integerOption('maxSessions', given.maxSessions, 1, Number.MAX_SAFE_INTEGER, 'sessions'),
    maxSessionsPerPrincipal: integerOption(
      'maxSessionsPerPrincipal',
      given.maxSessionsPerPrincipal,
      1,
      Number.MAX_SAFE_INTEGER,
      'sessions',
    ),
    principal: functionOption('principal', given.principal) ?? defaultPrincipal,
    hostId: optionalHostId(given.hostId),
    hostIdFallbackTimeout: integerOption('hostIdFallbackTimeout', given.hostIdFallbackTimeout, 0, MAX_DWORD, 'seconds'),
    enabled: booleanOption('enabled', given.enabled),
    onCreateSession: functionOption('onCreateSession', given.onCreateSession),
    destination: functionOption('destination', given.destination),
    onUploadComplete: functionOption('onUploadComplete', given.onUploadComplete),
    reply,
    publicUrl: optionalPublicUrl(given.publicUrl),
    trustForwardedHeaders: booleanOption('trustForwardedHeaders', given.trustForwardedHeaders),
  });
}

/**
 * Checks that `storage` can keep replies (`writeReply`, `readReply`), which `option` needs (§10).
 *
 * @throws TypeError naming the option and the missing methods.
 */
export function requireReplyStorage(storage: object, option: string): void {
  const missing = REPLY_STORAGE_METHODS.filter(
    (method) => typeof (storage as Partial<Record<string, unknown>>)[method] !== 'function',
  );
  if (missing.length > 0) {
    throw new TypeError(
      `bitsUpload: option "${option}" needs a storage that keeps replies, but "storage" lacks ${missing.join(', ')}. ` +
        'FileSystemStorage and MemoryStorage have them; see StorageAdapter.writeReply and readReply.',
    );
  }
}

/** Names of the required storage methods `storage` lacks. */
export function missingStorageMethods(storage: object): string[] {
  return REQUIRED_STORAGE_METHODS.filter(
    (method) => typeof (storage as Partial<Record<string, unknown>>)[method] !== 'function',
  );
}

function resolveStorage(storage: unknown, directory: unknown): StorageAdapter {
  if (storage !== undefined && directory !== undefined) {
    throw new TypeError(
      'bitsUpload: give either option "storage" or option "directory", not both. ' +
        '"directory" is shorthand for storage: new FileSystemStorage({ directory }).',
    );
  }
  if (storage === undefined) {
    if (typeof directory !== 'string' || directory.trim() === '') {
      throw new TypeError(
        `bitsUpload: option "directory" must be a non-empty path, got ${show(directory)}. ` +
          "Example: bitsUpload('./uploads'), or pass a storage adapter as option \"storage\".",
      );
    }
    return new FileSystemStorage({ directory });
  }
  if (typeof storage !== 'object' || storage === null) {
    throw new TypeError(
      `bitsUpload: option "storage" must be a storage adapter object, got ${show(storage)}. ` +
        'Use new FileSystemStorage({ directory }) or new MemoryStorage().',
    );
  }
  const missing = missingStorageMethods(storage);
  if (missing.length > 0) {
    throw new TypeError(
      `bitsUpload: option "storage" lacks the required method${missing.length > 1 ? 's' : ''} ` +
        `${missing.join(', ')}. A storage adapter implements every method of StorageAdapter.`,
    );
  }
  for (const name of ['recover', 'close'] as const) {
    const method = (storage as Partial<Record<typeof name, unknown>>)[name];
    if (method !== undefined && typeof method !== 'function') {
      throw new TypeError(
        `bitsUpload: option "storage" has a "${name}" that is not a method, got ${show(method)}. ` +
          `${name} is optional: implement it as a method or leave it out.`,
      );
    }
  }
  return storage as StorageAdapter;
}

type IntegerOption =
  | 'maxUploadSize'
  | 'maxFragmentSize'
  | 'sessionTimeout'
  | 'tombstoneTimeout'
  | 'cleanupInterval'
  | 'maxSessions'
  | 'maxSessionsPerPrincipal'
  | 'hostIdFallbackTimeout';

function integerOption(
  name: IntegerOption,
  value: unknown,
  min: number,
  max: number,
  unit: string,
): number {
  if (value === undefined) return DEFAULT_OPTIONS[name];
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new TypeError(
      `bitsUpload: option "${name}" must be an integer from ${min} to ${max} (${unit}), got ${show(value)}. ` +
        `Omit it for the default of ${DEFAULT_OPTIONS[name]}.`,
    );
  }
  return value;
}

function booleanOption(name: 'allowOverwrites' | 'enabled' | 'trustForwardedHeaders', value: unknown): boolean {
  if (value === undefined) return DEFAULT_OPTIONS[name];
  if (typeof value !== 'boolean') {
    throw new TypeError(
      `bitsUpload: option "${name}" must be true or false, got ${show(value)}. ` +
        `Omit it for the default of ${DEFAULT_OPTIONS[name]}.`,
    );
  }
  return value;
}

type FunctionOption = 'principal' | 'onCreateSession' | 'destination' | 'onUploadComplete' | 'reply';

/** A function option as given (its type is the caller's promise), or undefined when not given. */
function functionOption<K extends FunctionOption>(name: K, value: unknown): NonNullable<BitsUploadOptions[K]> | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'function') {
    throw new TypeError(
      `bitsUpload: option "${name}" must be a function, got ${show(value)}. Omit it for the default.`,
    );
  }
  return value as NonNullable<BitsUploadOptions[K]>;
}

/** `reply`, or the {@link httpNotification} handler of `notification` (§10.3); not both. */
function replyOption(reply: unknown, notification: unknown): ReplyHandler | undefined {
  if (notification === undefined) return functionOption('reply', reply);
  if (reply !== undefined) {
    throw new TypeError(
      'bitsUpload: give either option "notification" or option "reply", not both. ' +
        '"notification" is shorthand for reply: httpNotification(notification).',
    );
  }
  try {
    return httpNotification(notification as HttpNotificationOptions);
  } catch (error) {
    if (!(error instanceof TypeError)) throw error;
    throw new TypeError(`bitsUpload: option "notification" is invalid: ${error.message}`);
  }
}

function optionalHostId(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !HOST_ID.test(value)) {
    throw new TypeError(
      `bitsUpload: option "hostId" must be a host name or IP address of at most 300 characters, got ${show(value)}. ` +
        "Example: hostId: 'node7.example.com'; omit it to send no BITS-Host-Id.",
    );
  }
  return value;
}

/** Longest `publicUrl` that keeps reply URLs within 2,200 characters (§10.5). */
const MAX_PUBLIC_URL_LENGTH = MAX_REPLY_URL_LENGTH - REPLY_PATH_LENGTH;

/**
 * §10.5: the public base URL of the mount point, an absolute `http:` or `https:` URL without
 * credentials, query or fragment, short enough for reply URLs of at most 2,200 characters.
 * Returned as origin and path without a trailing slash.
 */
function optionalPublicUrl(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  let url: URL | undefined;
  try {
    url = typeof value === 'string' ? new URL(value) : undefined;
  } catch {
    url = undefined;
  }
  const usable =
    url !== undefined &&
    (url.protocol === 'http:' || url.protocol === 'https:') &&
    url.username === '' &&
    url.password === '' &&
    !/[?#]/.test(String(value));
  const normalized = url === undefined ? '' : `${url.origin}${url.pathname.replace(/\/+$/, '')}`;
  if (!usable || normalized.length > MAX_PUBLIC_URL_LENGTH) {
    throw new TypeError(
      `bitsUpload: option "publicUrl" must be an absolute http: or https: URL of the mount point without ` +
        `credentials, query or fragment, at most ${MAX_PUBLIC_URL_LENGTH} characters, got ${show(value)}. ` +
        "Example: publicUrl: 'https://bits.example.com/uploads'; omit it to build reply URLs from each request.",
    );
  }
  return normalized;
}

function looksLikeRequest(value: unknown): boolean {
  if (value instanceof IncomingMessage) return true;
  if (typeof value !== 'object' || value === null) return false;
  const candidate = value as { method?: unknown; headers?: unknown };
  return typeof candidate.method === 'string' && typeof candidate.headers === 'object';
}

function show(value: unknown): string {
  return inspect(value, { depth: 0, breakLength: Infinity });
}
