import fs, { type FileHandle } from 'node:fs/promises';
import createDebug from 'debug';

const debug = createDebug('bits-upload:storage:fs');

/**
 * Makes new, renamed or removed entries of a folder durable with `fsync` of the folder, sharing one
 * `fsync` among callers that ask at the same time (a group commit). A caller needs an `fsync` that
 * starts after its change; one already running may have started before it, so callers that arrive
 * meanwhile wait for the next one, which then covers all of them. Many sessions created or
 * committed at once thus cost one `fsync` of the sessions folder or the destination folder per
 * round, not one each.
 *
 * Best effort: folders cannot be flushed everywhere (Windows), so a failure is only logged.
 */
export class DirectorySync {
  /** Per folder with an `fsync` running: the callers waiting for the next one. */
  readonly #waiting = new Map<string, (() => void)[]>();

  /** Resolves once an `fsync` of `dir` that started after this call has ended. */
  sync(dir: string): Promise<void> {
    return new Promise((resolve) => {
      const waiting = this.#waiting.get(dir);
      if (waiting !== undefined) {
        waiting.push(resolve);
        return;
      }
      this.#waiting.set(dir, []);
      void this.#run(dir, [resolve]);
    });
  }

  async #run(dir: string, first: (() => void)[]): Promise<void> {
    for (let callers = first; callers.length > 0; ) {
      await syncDirectory(dir);
      for (const resolve of callers) resolve();
      callers = this.#waiting.get(dir) ?? [];
      this.#waiting.set(dir, []);
    }
    this.#waiting.delete(dir);
  }
}

async function syncDirectory(dir: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await fs.open(dir, 'r');
    await handle.sync();
  } catch (error) {
    debug('cannot fsync folder %s: %s', dir, error instanceof Error ? error.message : String(error));
  } finally {
    await handle?.close().catch(() => undefined);
  }
}
