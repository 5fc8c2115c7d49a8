import http from 'node:http';
import https from 'node:https';
import { acceptBitsPost, type AcceptBitsPostOptions } from './accept-bits-post';

/** Options of {@link createBitsServer}. */
export interface CreateBitsServerOptions {
  /** TLS options (key, cert, ...); when given, an HTTPS server is created. Defaults to plain HTTP. */
  readonly tls?: https.ServerOptions;
  /** Options of the `BITS_POST` support. Defaults to {@link acceptBitsPost}'s defaults. */
  readonly bitsPost?: AcceptBitsPostOptions;
  /**
   * Idle time (ms) a keep-alive connection is kept between packets. BITS clients pause between
   * fragments and re-authenticate on every new connection (bits-protocol.md §2.5).
   * Defaults to 120 000.
   */
  readonly keepAliveTimeout?: number;
  /**
   * Idle time (ms) of a socket in the middle of a request, used instead of Node's whole-request
   * limit, which a 13 MB fragment on a slow link can exceed (bits-protocol.md §2.5).
   * Defaults to 120 000.
   */
  readonly idleTimeout?: number;
}

/**
 * Creates an HTTP or HTTPS server for `listener` (an Express app, a Connect app or any request
 * listener) with `BITS_POST` support and timeouts suited to BITS clients. Call `.listen()` on it.
 */
export function createBitsServer(
  listener: http.RequestListener,
  options: CreateBitsServerOptions = {},
): http.Server | https.Server {
  const server = options.tls === undefined ? http.createServer(listener) : https.createServer(options.tls, listener);
  server.keepAliveTimeout = options.keepAliveTimeout ?? 120_000;
  // Whole-request limit off; the socket idle timeout below catches stalled clients instead.
  server.requestTimeout = 0;
  server.timeout = options.idleTimeout ?? 120_000;
  return acceptBitsPost(server, options.bitsPost);
}
