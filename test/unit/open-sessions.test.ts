/** The open-session index behind maxSessions and maxSessionsPerPrincipal (bits-protocol.md §5.4). */
import { OpenSessions } from '../../lib/lifecycle/open-sessions';
import type { SessionRecord } from '../../lib/storage/adapter';

const limits = { maxSessions: 3, maxSessionsPerPrincipal: 2 };

function record(id: string, principal: string | undefined, state: SessionRecord['state'] = 'receiving'): SessionRecord {
  return {
    id,
    destination: ['x'],
    urlPath: '/x',
    principal,
    protocol: '{7df0354d-249b-430f-820d-3d2a9bef4931}',
    totalLength: undefined,
    receivedLength: 0,
    state,
    createdAt: 0,
    updatedAt: 0,
    sha256: undefined,
    delivered: false,
    reply: undefined,
  };
}

async function* list(...records: SessionRecord[]): AsyncIterable<SessionRecord> {
  yield* records;
}

const isOpen = (r: SessionRecord): boolean => r.state === 'receiving' || r.state === 'complete';

test('admit counts in total and per principal; remove gives the place back and forgets empty principals', () => {
  const index = new OpenSessions(limits);
  index.admit('a1', 'alice', 0);
  index.admit('a2', 'alice', 0);
  expect(() => index.admit('a3', 'alice', 0)).toThrow(expect.objectContaining({ code: 'BITS_TOO_MANY_SESSIONS', status: 503 }));
  index.admit('n1', undefined, 0);
  expect(() => index.admit('b1', 'bob', 0)).toThrow(/3 sessions are open, the limit is 3/);
  expect(index.size).toBe(3);
  index.remove('a1');
  index.remove('a1');
  index.remove('never');
  expect(index.size).toBe(2);
  expect(index.countOf('alice')).toBe(1);
  index.remove('a2');
  expect(index.countOf('alice')).toBe(0);
  index.admit('b1', 'bob', 0);
});

test('load keeps the open records, once', async () => {
  const index = new OpenSessions(limits);
  const records = jest.fn(() => list(record('a', 'alice'), record('b', 'alice', 'complete'), record('c', 'alice', 'closed')));
  await index.load(records, isOpen);
  await index.load(records, isOpen);
  expect(records).toHaveBeenCalledTimes(1);
  expect(index.size).toBe(2);
  expect(index.countOf('alice')).toBe(2);
});

test('a failed load is retried; clear() forgets everything and loads again', async () => {
  const index = new OpenSessions(limits);
  const failing = async function* (): AsyncIterable<SessionRecord> {
    yield record('a', 'alice');
    throw new Error('unreadable');
  };
  await expect(index.load(failing, isOpen)).rejects.toThrow('unreadable');
  expect(index.size).toBe(0);
  await index.load(() => list(record('a', 'alice')), isOpen);
  expect(index.size).toBe(1);
  index.clear();
  expect(index.size).toBe(0);
  await index.load(() => list(record('b', 'bob')), isOpen);
  expect(index.countOf('bob')).toBe(1);
});

test('mayHaveExpired looks at the last progress known of each open session; refresh updates it', () => {
  const index = new OpenSessions({ maxSessions: 10, maxSessionsPerPrincipal: 10 });
  index.admit('a1', 'alice', 1_000);
  index.admit('a2', 'alice', 5_000);
  expect(index.mayHaveExpired(5_000, 3_000)).toBe(true);
  index.refresh('a1', 4_000);
  expect(index.mayHaveExpired(5_000, 3_000)).toBe(false);
  index.refresh('gone', 0);
  expect(index.mayHaveExpired(5_000, 3_000)).toBe(false);
  index.remove('a1');
  index.remove('a2');
  expect(index.mayHaveExpired(1_000_000, 3_000)).toBe(false);
});
