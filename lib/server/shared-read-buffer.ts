import type { Socket } from 'node:net';

/**
 * Reading tracked connections into one shared, reused buffer.
 *
 * A connection kept off Node's native parser path normally gets a freshly allocated 64 KiB buffer
 * for every read, and every read goes through the Readable machinery: at memory speed that
 * allocation and the garbage it leaves cost about a fifth of a large upload's throughput. Node's
 * `onread` mode (documented for `net.connect`, used internally through `useUserBuffer`) reads into
 * a caller's buffer instead, which is what Node's own parser does on its fast path with its static
 * buffer. Every read is handed to the HTTP parser synchronously (llhttp copies body bytes and saves
 * header fragments before `execute` returns), so one buffer serves every connection, the way the
 * native path shares one. A piece that cannot be handed to the parser at once (the socket is paused
 * or has bytes queued, or an upgrade gave it to another owner) is copied, and so are the bytes Node
 * hands to listeners (see `detach`), so nothing ever keeps a view of the shared buffer.
 */

const SHARED_BUFFER_SIZE = 64 * 1024;
let shared: Buffer | undefined;

interface UserBufferHandle {
  useUserBuffer?: (buffer: Uint8Array) => void;
  constructor: { name: string };
}

interface ReadableInternals {
  flowing: boolean | null;
  length: number;
  sync: boolean;
}

interface UserBufferSocket extends Socket {
  _handle?: UserBufferHandle | null;
  _readableState?: ReadableInternals;
  /** Node's HTTP parser while it owns the socket; null once an upgrade or CONNECT handed it over. */
  parser?: unknown;
}

/** The socket symbols of Node's `onread` mode, found once on the first socket seen. */
let symbols: { buffer: symbol; callback: symbol } | null | undefined;

function findSymbols(socket: Socket): { buffer: symbol; callback: symbol } | null {
  const own = Object.getOwnPropertySymbols(socket);
  const buffer = own.find((s) => s.description === 'kBuffer');
  const callback = own.find((s) => s.description === 'kBufferCb');
  return buffer !== undefined && callback !== undefined ? { buffer, callback } : null;
}

/**
 * Switches a plain TCP or pipe connection to reading into the shared buffer; `onRead` gets a view of
 * each read and returns false to stop reading (backpressure). Returns false, changing nothing, when
 * the connection cannot use it (TLS, whose decrypted reads may re-enter; a Node without the mode).
 */
export function readIntoSharedBuffer(socket: Socket, onRead: (view: Buffer) => boolean): boolean {
  const handle = (socket as UserBufferSocket)._handle;
  const kind = handle?.constructor.name;
  if (!handle || typeof handle.useUserBuffer !== 'function' || (kind !== 'TCP' && kind !== 'Pipe')) return false;
  symbols ??= findSymbols(socket);
  if (symbols === null) return false;
  shared ??= Buffer.allocUnsafeSlow(SHARED_BUFFER_SIZE);
  const buffer = shared;
  handle.useUserBuffer(buffer);
  const target = socket as unknown as Record<symbol, unknown>;
  target[symbols.buffer] = buffer;
  target[symbols.callback] = (nread: number): boolean => onRead(buffer.subarray(0, nread));
  return true;
}

/** True when `chunk` is a view of the shared read buffer (valid only until the next read). */
export function isSharedView(chunk: Uint8Array): boolean {
  return shared !== undefined && chunk.buffer === shared.buffer;
}

/** `chunk` itself, or a copy of it when it is a view of the shared read buffer. */
export function detach<T extends Uint8Array>(chunk: T): T | Buffer {
  return isSharedView(chunk) ? Buffer.from(chunk) : chunk;
}

/**
 * Pushes a piece of a read into the socket's Readable side. A view of the shared buffer goes as is
 * only when Readable emits it synchronously to a single 'data' listener while Node's HTTP parser
 * owns the socket (flowing, nothing queued, not inside `_read`); otherwise it would be queued, or
 * kept by someone else (an upgraded socket's new owner), and overwritten by the next read, so a
 * copy goes.
 */
export function pushPiece(socket: Socket, push: (chunk: Buffer) => boolean, piece: Buffer): boolean {
  if (!isSharedView(piece)) return push(piece);
  const { _readableState: state, parser } = socket as UserBufferSocket;
  const direct =
    parser != null &&
    state !== undefined &&
    state.flowing === true &&
    state.length === 0 &&
    !state.sync &&
    socket.listenerCount('data') === 1;
  return push(direct ? piece : Buffer.from(piece));
}
