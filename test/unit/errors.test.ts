/** BitsError and the one table mapping codes to the wire (bits-protocol.md §8.5). */
import * as errors from '../../lib/errors';
import {
  DestinationExistsError,
  DestinationIsDirectoryError,
  InvalidDestinationError,
  SessionNotFoundError,
} from '../../lib/storage/adapter';

const { BITS_ERRORS, BitsError, toBitsError } = errors;

test.each([
  ['uploadsDisabled', errors.uploadsDisabled(), 501, 0x80070005],
  ['badRequest', errors.badRequest('x'), 400, 0x80070057],
  ['lengthRequired', errors.lengthRequired('x'), 411, 0x80070057],
  ['unknownPacketType', errors.unknownPacketType('X'), 400, 0x80070057],
  ['unsupportedEncoding', errors.unsupportedEncoding('gzip'), 400, 0x80070057],
  ['sessionIdMissing', errors.sessionIdMissing(), 400, 0x80070057],
  ['protocolMismatch', errors.protocolMismatch(undefined), 400, 0x80070057],
  ['invalidDestination', errors.invalidDestination('x'), 400, 0x80070057],
  ['destinationIsDirectory', errors.destinationIsDirectory(), 400, 0x80070057],
  ['destinationExists', errors.destinationExists(), 403, 0x80070005],
  ['sessionNotFound', errors.sessionNotFound('{X}'), 500, 0x8020001f],
  ['invalidRange', errors.invalidRange('x'), 400, 0x80070057],
  ['uploadTooLarge', errors.uploadTooLarge(10, 8), 500, 0x80200020],
  ['fragmentTooLarge', errors.fragmentTooLarge(6, 4), 413, undefined],
  ['bodyConsumed', errors.bodyConsumed(), 500, 0x80004005],
  ['diskFull', errors.diskFull(new Error('x')), 500, 0x80070070],
  ['internalError', errors.internalError(new Error('x')), 500, 0x80004005],
])('%s → %d %s', (_name, error, status, hresult) => {
  expect(error).toBeInstanceOf(BitsError);
  expect(error).toBeInstanceOf(Error);
  expect(error.status).toBe(status);
  expect(error.hresult).toBe(hresult);
  expect(error.context).toBe(0x5);
  expect(BITS_ERRORS[error.code]).toEqual({ status, hresult });
  expect(error.expose).toBe(status < 500);
  expect(error.stack).toEqual(expect.any(String));
});

test('the table is frozen', () => {
  expect(Object.isFrozen(BITS_ERRORS)).toBe(true);
});

test.each([
  [new SessionNotFoundError('{X}'), 'BITS_SESSION_NOT_FOUND'],
  [new DestinationExistsError(['a']), 'BITS_DESTINATION_EXISTS'],
  [new DestinationIsDirectoryError(['a']), 'BITS_DESTINATION_IS_DIRECTORY'],
  [new InvalidDestinationError(['a'], 'escapes'), 'BITS_INVALID_DESTINATION'],
  [Object.assign(new Error('full'), { code: 'ENOSPC' }), 'BITS_DISK_FULL'],
  [Object.assign(new Error('quota'), { code: 'EDQUOT' }), 'BITS_DISK_FULL'],
  [Object.assign(new Error('x'), { code: 'EACCES' }), 'BITS_INTERNAL'],
  [new Error('x'), 'BITS_INTERNAL'],
  ['a string', 'BITS_INTERNAL'],
  [undefined, 'BITS_INTERNAL'],
])('toBitsError(%p) → %s', (thrown, code) => {
  expect(toBitsError(thrown).code).toBe(code);
});

test('a BitsError passes through unchanged; internal errors keep their cause', () => {
  const error = errors.badRequest('x');
  expect(toBitsError(error)).toBe(error);
  const cause = new Error('disk on fire');
  expect(toBitsError(cause).cause).toBe(cause);
});
