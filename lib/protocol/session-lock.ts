/**
 * Serialises work per session (bits-protocol.md §5.6): tasks for one key run one after another,
 * tasks for different keys run in parallel. A key's entry is removed as soon as its queue is idle,
 * so the map never outgrows the sessions currently busy.
 */
export class SessionLocks {
  private readonly tails = new Map<string, Promise<void>>();

  /** Runs `task` once every earlier task for `key` has settled; resolves or rejects like it. */
  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const result = previous.then(task);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }

  /** Number of keys with queued or running work. */
  get size(): number {
    return this.tails.size;
  }
}
