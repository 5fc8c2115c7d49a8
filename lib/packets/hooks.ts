import { applicationError } from '../errors';

/**
 * Runs an application hook. Whatever it throws (or rejects with) becomes a `BITS_APPLICATION_ERROR`
 * answered with context 0x7 (bits-protocol.md §8.4) and the status and HRESULT the error carries.
 */
export async function callHook<T>(hook: () => T | Promise<T>): Promise<T> {
  try {
    return await hook();
  } catch (error) {
    throw applicationError(error);
  }
}
