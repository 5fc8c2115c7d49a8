import type { IncomingMessage } from 'node:http';
import { constantTimeEqual, markBitsPost, removeRequestHeaders } from './method-marker';

/**
 * A reverse proxy that forwards `BITS_POST` as `POST` and names the original verb in a header it
 * always overwrites (nginx: `proxy_method` plus `proxy_set_header`). Requests are trusted only when
 * they come from one of `addresses` and/or carry `secret`; at least one of the two is required.
 */
export interface TrustedProxyOptions {
  /** Header holding the original method; its value must be `BITS_POST`. Defaults to `x-bits-original-method`. */
  readonly header?: string;
  /** Proxy addresses (exact IPs, IPv4-mapped IPv6 is normalised) or a predicate. Defaults to any address. */
  readonly addresses?: readonly string[] | ((address: string) => boolean);
  /** Shared secret the proxy sends in `secretHeader`. Defaults to none. */
  readonly secret?: string;
  /** Header carrying the secret. Defaults to `x-bits-proxy-secret`. */
  readonly secretHeader?: string;
}

/** What the proxy check concluded about one request. */
export type ProxyCheck = 'none' | 'accepted' | 'rejected';

/** A validated trusted-proxy policy. */
export interface TrustedProxy {
  check(req: IncomingMessage): ProxyCheck;
}

/** Validates the options once and returns the per-request check. */
export function createTrustedProxy(options: TrustedProxyOptions): TrustedProxy {
  const header = (options.header ?? 'x-bits-original-method').toLowerCase();
  const secretHeader = (options.secretHeader ?? 'x-bits-proxy-secret').toLowerCase();
  const { addresses, secret } = options;
  if (addresses === undefined && secret === undefined) {
    throw new TypeError(
      'acceptBitsPost: trustedProxy needs `addresses`, `secret` or both; otherwise any client could send the header',
    );
  }
  if (secret !== undefined && (typeof secret !== 'string' || secret.length < 16)) {
    throw new TypeError('acceptBitsPost: trustedProxy.secret must be a string of at least 16 characters');
  }
  if (addresses !== undefined && typeof addresses !== 'function' && !Array.isArray(addresses)) {
    throw new TypeError('acceptBitsPost: trustedProxy.addresses must be an array of IP strings or a function');
  }
  const allowed =
    addresses === undefined
      ? () => true
      : typeof addresses === 'function'
        ? addresses
        : (address: string) => (addresses as readonly string[]).includes(address);
  const remove = [header, secretHeader];
  return {
    check(req) {
      const announced = req.headers[header];
      const presented = req.headers[secretHeader];
      if (announced === undefined && presented === undefined) return 'none';
      let verdict: ProxyCheck = 'none';
      if (req.method === 'POST' && announced === 'BITS_POST') {
        const address = normaliseAddress(req.socket.remoteAddress ?? '');
        const secretOk =
          secret === undefined || (typeof presented === 'string' && constantTimeEqual(presented, secret));
        verdict = allowed(address) && secretOk ? 'accepted' : 'rejected';
      }
      // The secret must never reach the application (request loggers), whatever the method.
      if (verdict === 'accepted') markBitsPost(req, remove);
      else removeRequestHeaders(req, remove);
      return verdict;
    },
  };
}

function normaliseAddress(address: string): string {
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}
