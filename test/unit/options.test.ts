/** resolveOptions: defaults, validation with helpful TypeErrors, frozen result (style.md habit 1). */
import { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { DEFAULT_OPTIONS, missingStorageMethods, REQUIRED_STORAGE_METHODS, resolveOptions } from '../../lib/options';
import { defaultPrincipal } from '../../lib/protocol/principal';
import { FileSystemStorage } from '../../lib/storage/filesystem';
import { StubStorage } from '../helpers/stub-storage';

const storage = new StubStorage();

test('defaults', () => {
  expect(resolveOptions({ storage })).toEqual({
    storage,
    maxUploadSize: Number.MAX_SAFE_INTEGER,
    maxFragmentSize: 16 * 1024 * 1024,
    allowOverwrites: false,
    sessionTimeout: 14 * 24 * 60 * 60 * 1000,
    tombstoneTimeout: 24 * 60 * 60 * 1000,
    cleanupInterval: 60 * 60 * 1000,
    maxSessions: 10_000,
    maxSessionsPerPrincipal: 50,
    principal: defaultPrincipal,
    hostId: undefined,
    hostIdFallbackTimeout: 86_400,
    enabled: true,
    onCreateSession: undefined,
    destination: undefined,
    onUploadComplete: undefined,
    reply: undefined,
    publicUrl: undefined,
    trustForwardedHeaders: false,
  });
  expect(DEFAULT_OPTIONS.maxFragmentSize).toBe(16_777_216);
});

test('the result is frozen and the input untouched', () => {
  const input = { storage, maxUploadSize: 10, hostId: undefined };
  const resolved = resolveOptions(input);
  expect(Object.isFrozen(resolved)).toBe(true);
  expect(input).toEqual({ storage, maxUploadSize: 10, hostId: undefined });
});

test('every option is taken over', () => {
  const principal = (): string => 'alice';
  const onCreateSession = (): undefined => undefined;
  const destination = (requested: readonly string[]): readonly string[] => requested;
  const onUploadComplete = (): void => undefined;
  const reply = (): string => 'reply';
  expect(
    resolveOptions({
      storage,
      maxUploadSize: 0,
      maxFragmentSize: 1,
      allowOverwrites: true,
      sessionTimeout: 1,
      tombstoneTimeout: 2,
      cleanupInterval: false,
      maxSessions: 3,
      maxSessionsPerPrincipal: 4,
      principal,
      hostId: 'node7',
      hostIdFallbackTimeout: 0,
      enabled: false,
      onCreateSession,
      destination,
      onUploadComplete,
      reply,
      publicUrl: 'https://bits.example.test/uploads/',
      trustForwardedHeaders: true,
    }),
  ).toEqual({
    storage,
    maxUploadSize: 0,
    maxFragmentSize: 1,
    allowOverwrites: true,
    sessionTimeout: 1,
    tombstoneTimeout: 2,
    cleanupInterval: false,
    maxSessions: 3,
    maxSessionsPerPrincipal: 4,
    principal,
    hostId: 'node7',
    hostIdFallbackTimeout: 0,
    enabled: false,
    onCreateSession,
    destination,
    onUploadComplete,
    reply,
    publicUrl: 'https://bits.example.test/uploads',
    trustForwardedHeaders: true,
  });
  expect(resolveOptions({ storage, cleanupInterval: 2 ** 31 - 1 }).cleanupInterval).toBe(2 ** 31 - 1);
});

test.each(['node7', 'bits.example.test', '10.0.0.7', '[2001:db8::7]', 'a'.repeat(300)])('hostId %s is accepted', (hostId) => {
  expect(resolveOptions({ storage, hostId }).hostId).toBe(hostId);
});

describe('directory shorthand', () => {
  test('a string is a FileSystemStorage of that directory', () => {
    const resolved = resolveOptions('./uploads-test-unused');
    expect(resolved.storage).toBeInstanceOf(FileSystemStorage);
    expect((resolved.storage as FileSystemStorage).directory).toMatch(/uploads-test-unused$/);
  });

  test('{ directory } is the same, with other options', () => {
    const resolved = resolveOptions({ directory: './uploads-test-unused', maxUploadSize: 5 });
    expect(resolved.storage).toBeInstanceOf(FileSystemStorage);
    expect(resolved.maxUploadSize).toBe(5);
  });
});

describe('TypeErrors name the option, show the value and say the fix', () => {
  test.each([
    ['nothing', undefined, /expects a directory path or an options object, got undefined/],
    ['null', null, /got null/],
    ['a number', 42, /got 42/],
    ['an array', ['./uploads'], /got \[ '\.\/uploads' \]/],
    ['an empty directory', '', /option "directory" must be a non-empty path, got ''/],
    ['a blank directory', { directory: '  ' }, /"directory"/],
    ['a numeric directory', { directory: 5 }, /"directory" must be a non-empty path, got 5/],
    ['no storage and no directory', {}, /"directory" must be a non-empty path, got undefined.*"storage"/],
    ['both storage and directory', { storage, directory: './x' }, /either option "storage" or option "directory", not both/],
    ['a storage that is not an object', { storage: 'fs' }, /"storage" must be a storage adapter object, got 'fs'/],
    ['an unknown option', { storage, maxFileSize: 5 }, /unknown option "maxFileSize".*Known options: storage, directory/],
    ['negative maxUploadSize', { storage, maxUploadSize: -1 }, /"maxUploadSize" must be an integer from 0 to 9007199254740991 \(bytes\), got -1\. Omit it/],
    ['fractional maxUploadSize', { storage, maxUploadSize: 1.5 }, /"maxUploadSize".*got 1\.5/],
    ['maxUploadSize above 2^53', { storage, maxUploadSize: 2 ** 53 }, /"maxUploadSize"/],
    ['string maxUploadSize', { storage, maxUploadSize: '10' }, /"maxUploadSize".*got '10'/],
    ['Infinity maxUploadSize', { storage, maxUploadSize: Infinity }, /"maxUploadSize".*got Infinity/],
    ['zero maxFragmentSize', { storage, maxFragmentSize: 0 }, /"maxFragmentSize" must be an integer from 1 /],
    ['NaN maxFragmentSize', { storage, maxFragmentSize: Number.NaN }, /"maxFragmentSize".*got NaN/],
    ['zero sessionTimeout', { storage, sessionTimeout: 0 }, /"sessionTimeout".*\(milliseconds\)/],
    ['string allowOverwrites', { storage, allowOverwrites: 'yes' }, /"allowOverwrites" must be true or false, got 'yes'/],
    ['numeric enabled', { storage, enabled: 0 }, /"enabled" must be true or false, got 0/],
    ['empty hostId', { storage, hostId: '' }, /"hostId" must be a host name or IP address/],
    ['hostId with a space', { storage, hostId: 'a b' }, /"hostId".*got 'a b'/],
    ['hostId with CRLF', { storage, hostId: 'a\r\nX: y' }, /"hostId"/],
    ['hostId of 301 characters', { storage, hostId: 'a'.repeat(301) }, /"hostId"/],
    ['numeric hostId', { storage, hostId: 7 }, /"hostId".*got 7/],
    ['fallback above a DWORD', { storage, hostId: 'h', hostIdFallbackTimeout: 2 ** 32 }, /"hostIdFallbackTimeout".*\(seconds\)/],
    ['zero tombstoneTimeout', { storage, tombstoneTimeout: 0 }, /"tombstoneTimeout" must be an integer from 1 .*\(milliseconds\), got 0/],
    ['string tombstoneTimeout', { storage, tombstoneTimeout: '1d' }, /"tombstoneTimeout".*got '1d'/],
    ['cleanupInterval true', { storage, cleanupInterval: true }, /"cleanupInterval" must be an integer from 1 to 2147483647 \(milliseconds, or false\), got true/],
    ['cleanupInterval beyond a timer', { storage, cleanupInterval: 2 ** 31 }, /"cleanupInterval"/],
    ['zero cleanupInterval', { storage, cleanupInterval: 0 }, /"cleanupInterval"/],
    ['zero maxSessions', { storage, maxSessions: 0 }, /"maxSessions" must be an integer from 1 .*\(sessions\), got 0. Omit it for the default of 10000/],
    ['fractional maxSessionsPerPrincipal', { storage, maxSessionsPerPrincipal: 2.5 }, /"maxSessionsPerPrincipal".*got 2\.5.*default of 50/],
    ['a principal that is a string', { storage, principal: 'user' }, /"principal" must be a function, got 'user'/],
    ['an onCreateSession that is an object', { storage, onCreateSession: {} }, /"onCreateSession" must be a function, got \{\}/],
    ['a destination that is an array', { storage, destination: ['a'] }, /"destination" must be a function/],
    ['an onUploadComplete that is true', { storage, onUploadComplete: true }, /"onUploadComplete" must be a function, got true/],
    ['a storage whose recover is not a method', { storage: Object.assign(new StubStorage(), { recover: 1 }) }, /"storage" has a "recover" that is not a method, got 1/],
  ])('%s', (_name, input, message) => {
    expect(() => resolveOptions(input)).toThrow(TypeError);
    expect(() => resolveOptions(input)).toThrow(message);
  });

  test('a storage missing methods lists every missing one', () => {
    const partial = { createSession: async () => undefined, getSession: 'no' };
    expect(() => resolveOptions({ storage: partial })).toThrow(
      /"storage" lacks the required methods getSession, updateSession, writeFragment, inspectDestination, commit, endSession, deleteSession, listSessions, readData/,
    );
    const withoutCommit = Object.fromEntries(
      REQUIRED_STORAGE_METHODS.filter((method) => method !== 'commit').map((method) => [method, () => undefined]),
    );
    expect(() => resolveOptions({ storage: withoutCommit })).toThrow(/lacks the required method commit\. /);
  });

  test('app.use(bitsUpload): called with (req, res, next)', () => {
    const req = new IncomingMessage(new Socket());
    expect(() => resolveOptions(req, 3)).toThrow(/called as a middleware with \(req, res, next\).*not app\.use\(bitsUpload\)/);
    expect(() => resolveOptions({ method: 'GET', headers: {} }, 3)).toThrow(/app\.use\(bitsUpload\)/);
  });

  test('more than one argument', () => {
    expect(() => resolveOptions('./uploads', 2)).toThrow(/takes one argument/);
  });
});

test('hostIdFallbackTimeout without hostId is validated and otherwise ignored', () => {
  expect(resolveOptions({ storage, hostIdFallbackTimeout: 60 })).toMatchObject({ hostId: undefined, hostIdFallbackTimeout: 60 });
  expect(() => resolveOptions({ storage, hostIdFallbackTimeout: -1 })).toThrow(/"hostIdFallbackTimeout"/);
});

test('missingStorageMethods checks every required method', () => {
  expect(missingStorageMethods(storage)).toEqual([]);
  expect(missingStorageMethods({})).toEqual([...REQUIRED_STORAGE_METHODS]);
});
