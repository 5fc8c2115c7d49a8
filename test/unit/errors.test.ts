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
  ['tooManySessions', errors.tooManySessions('x'), 503, 0x80070045],
  ['shuttingDown', errors.shuttingDown(), 503, 0x80004005],
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

describe('application verdicts (§8.4, §12)', () => {
  test.each([
    [{ status: 403 }, 403, 0x80070005],
    [{ status: 401 }, 401, 0x80070005],
    [{ status: 429 }, 429, 0x80004005],
    [{ status: 503, errorCode: 0x80070045 }, 503, 0x80070045],
    [{ status: 400, errorCode: -2147024809 }, 400, -2147024809],
  ])('refused(%o) → %d, %d, context 0x5', (refusal, status, hresult) => {
    const error = errors.refused(refusal);
    expect(error).toMatchObject({ code: 'BITS_REFUSED', status, hresult, context: 0x5 });
  });

  test.each([[{ status: 399 }], [{ status: 600 }], [{ status: '403' }], [{ status: 403, errorCode: 2 ** 32 }], [null], ['x']])(
    'refused(%p) is a failing hook',
    (refusal) => {
      expect(() => errors.refused(refusal)).toThrow(expect.objectContaining({ code: 'BITS_APPLICATION_ERROR', status: 500, context: 0x7 }));
    },
  );

  test.each([
    [Object.assign(new Error('x'), { status: 503 }), 503, 0x80004005],
    [Object.assign(new Error('x'), { status: 404, errorCode: 0x80070002 }), 404, 0x80070002],
    [Object.assign(new Error('x'), { status: 200 }), 500, 0x80004005],
    [Object.assign(new Error('x'), { status: 503.5 }), 500, 0x80004005],
    [new Error('x'), 500, 0x80004005],
    ['a string', 500, 0x80004005],
  ])('applicationError(%p) → %d, %d, context 0x7', (cause, status, hresult) => {
    const error = errors.applicationError(cause);
    expect(error).toMatchObject({ code: 'BITS_APPLICATION_ERROR', status, hresult, context: 0x7, cause });
    expect(errors.applicationError(error)).toBe(error);
  });

  test('the application decides the wire form; the table keeps the defaults', () => {
    expect(BITS_ERRORS.BITS_REFUSED).toEqual({ status: 403, hresult: 0x80070005 });
    expect(BITS_ERRORS.BITS_APPLICATION_ERROR).toEqual({ status: 500, hresult: 0x80004005 });
  });
});

test.each([
  ['BITS_DISK_FULL', errors.diskFull(new Error('x')), true],
  ['BITS_INTERNAL', errors.internalError(new Error('x')), true],
  ['BITS_BODY_CONSUMED', errors.bodyConsumed(), true],
  ['BITS_APPLICATION_ERROR', errors.applicationError(new Error('x')), true],
  ['BITS_SESSION_NOT_FOUND', errors.sessionNotFound('{X}'), false],
  ['BITS_UPLOAD_TOO_LARGE', errors.uploadTooLarge(2, 1), false],
  ['BITS_TOO_MANY_SESSIONS', errors.tooManySessions('x'), false],
  ['BITS_SHUTTING_DOWN', errors.shuttingDown(), false],
  ['BITS_REFUSED', errors.refused({ status: 403 }), false],
  ['BITS_BAD_REQUEST', errors.badRequest('x'), false],
])('isServerFault(%s) → %s', (_code, error, fault) => {
  expect(errors.isServerFault(error)).toBe(fault);
});
