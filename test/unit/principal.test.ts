/** The default principal (bits-protocol.md §5.6, §12): the authenticated user, else the client address. */
import { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { defaultPrincipal } from '../../lib/protocol/principal';

function request(user: unknown, connected = true): IncomingMessage {
  const socket = new Socket();
  if (connected) Object.defineProperty(socket, 'remoteAddress', { value: '192.0.2.7' });
  const req = new IncomingMessage(socket);
  if (user !== undefined) Object.assign(req, { user });
  return req;
}

test.each([
  ['a string user', 'alice', 'alice'],
  ['an object with id', { id: 'u-1', username: 'alice', name: 'Alice' }, 'u-1'],
  ['a numeric id', { id: 42 }, '42'],
  ['an object with username', { username: 'alice', name: 'Alice' }, 'alice'],
  ['an object with name', { name: 'Alice' }, 'Alice'],
  ['an empty id, then username', { id: '', username: 'alice' }, 'alice'],
  ['a non-finite id, then name', { id: Number.NaN, name: 'Alice' }, 'Alice'],
  ['an object without a name', { roles: ['admin'] }, '192.0.2.7'],
  ['an empty string user', '', '192.0.2.7'],
  ['no user', undefined, '192.0.2.7'],
  ['a null user', null, '192.0.2.7'],
])('%s → %s', (_name, user, principal) => {
  expect(defaultPrincipal(request(user))).toBe(principal);
});

test('no user and no address (a socket that never connected) → undefined', () => {
  expect(defaultPrincipal(request(undefined, false))).toBeUndefined();
});
