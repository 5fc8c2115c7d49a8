import { createHash, type Hash } from 'node:crypto';
import createDebug from 'debug';
import type { StorageAdapter } from '../storage/adapter';

const debug = createDebug('bits-upload:hash');

/** A running SHA-256 covering bytes `0 .. offset - 1` of an upload. */
interface HashState {
  hash: Hash;
  offset: number;
}

/** The hash a fragment's new bytes are fed into while they are stored, and how to conclude. */
export interface HashTee {
  /** Feed exactly the bytes handed to the adapter, in order. */
  readonly hash: Hash;
  /**
   * Concludes the fragment: when the adapter made every fed byte durable (`durable` equals the
   * write offset plus `fed`), the state moves on; otherwise (fewer durable bytes, a failed write:
   * `durable` undefined) it stays at the checkpoint taken before the fragment, and the bytes it then
   * misses are read back from the storage before the next use.
   */
  settle(fed: number, durable: number | undefined): void;
}

/**
 * The SHA-256 of each upload in progress, computed while its bytes stream to the storage, so that a
 * completed upload carries its hash without a second read of the file (bits-protocol.md §6.4).
 * One state per open session, dropped when the upload completes, ends or expires.
 *
 * When the memory state is missing or behind the stored bytes (after a restart, or after an adapter
 * made only part of a fragment durable), the missing range is read back once with
 * `storage.readData()` before the state is used again: after a restart the bytes stored before it
 * are read once, at the session's next fragment or at its completion.
 *
 * Callers hold the session lock (§5.6), so one state is never used twice at once.
 */
export class UploadHashes {
  readonly #states = new Map<string, HashState>();

  constructor(private readonly storage: StorageAdapter) {}

  /** Number of sessions with a state in memory. */
  get size(): number {
    return this.#states.size;
  }

  /**
   * Before storing a fragment's new bytes at `offset`: a copy of the state to feed them into, while
   * the state itself stays as it was (the checkpoint). Bytes a stream still pushes into the copy
   * after {@link HashTee.settle} are never counted.
   */
  async tee(id: string, offset: number): Promise<HashTee> {
    const state = await this.#covering(id, offset);
    const running = state.hash.copy();
    return {
      hash: running,
      settle(fed, durable) {
        if (durable === offset + fed) {
          state.hash = running.copy();
          state.offset = durable;
        } else {
          debug('session %s: %s of %d hashed bytes durable; hash stays at offset %d', id, durable ?? 'none', fed, offset);
        }
      },
    };
  }

  /** SHA-256 (hex) of the upload's first `size` bytes, all of them stored. The state is kept. */
  async digest(id: string, size: number): Promise<string> {
    const state = await this.#covering(id, size);
    return state.hash.copy().digest('hex');
  }

  /** Drops the state of a session that completed, ended or expired. */
  forget(id: string): void {
    this.#states.delete(id);
  }

  /** Drops every state (shutdown). */
  clear(): void {
    this.#states.clear();
  }

  /** The state of `id` covering exactly bytes `0 .. offset - 1`, caught up from the storage if needed. */
  async #covering(id: string, offset: number): Promise<HashState> {
    let state = this.#states.get(id);
    if (state === undefined || state.offset > offset) {
      state = { hash: createHash('sha256'), offset: 0 };
      this.#states.set(id, state);
    }
    if (state.offset < offset) {
      try {
        await this.#catchUp(id, state, offset);
      } catch (error) {
        this.#states.delete(id);
        throw error;
      }
    }
    return state;
  }

  async #catchUp(id: string, state: HashState, offset: number): Promise<void> {
    debug('session %s: reading stored bytes %d-%d to hash them', id, state.offset, offset - 1);
    const data = await this.storage.readData(id, state.offset);
    let read = 0;
    for await (const chunk of data as AsyncIterable<Uint8Array>) {
      state.hash.update(chunk);
      read += chunk.byteLength;
    }
    if (state.offset + read !== offset) {
      throw new Error(`Storage returned ${read} bytes of session ${id} from offset ${state.offset}; expected ${offset - state.offset}`);
    }
    state.offset = offset;
  }
}
