import type { IncomingMessage } from 'node:http';

/** Properties of an authenticated `req.user` object that name the user, in order of preference. */
const USER_NAME_PROPERTIES = ['id', 'username', 'name'] as const;

/**
 * Who sends a request, when the application gives no `principal` option (bits-protocol.md §5.6,
 * §12): `req.user` when an authentication middleware set it to a string, or its `id`, `username`
 * or `name` property (a string or a finite number) when it is an object; otherwise the client's IP
 * address, `req.socket.remoteAddress`.
 */
export function defaultPrincipal(req: IncomingMessage): string | undefined {
  const { user } = req as IncomingMessage & { user?: unknown };
  if (typeof user === 'string' && user !== '') return user;
  if (typeof user === 'object' && user !== null) {
    const fields = user as Partial<Record<(typeof USER_NAME_PROPERTIES)[number], unknown>>;
    for (const property of USER_NAME_PROPERTIES) {
      const value = fields[property];
      if (typeof value === 'string' && value !== '') return value;
      if (typeof value === 'number' && Number.isFinite(value)) return String(value);
    }
  }
  return req.socket.remoteAddress;
}
