import type { Hash } from 'node:crypto';
import { finished, Transform, type Readable, type TransformCallback } from 'node:stream';

/**
 * The stream an adapter reads a fragment's new bytes from (bits-protocol.md §6.3). It drops the
 * first `skip` body bytes, which the session already holds (case B, overlap), without buffering,
 * and fails when the body holds fewer or more bytes than declared, so a body cut short is never
 * taken for a whole one (§6.3, last bullets). When given a `hash`, every byte handed on is also fed
 * to it, so the upload's SHA-256 is computed as the bytes stream in (§6.4).
 */
export class FragmentBody extends Transform {
  private received = 0;
  private passed = 0;
  private ended = false;

  constructor(
    private readonly skip: number,
    private readonly length: number,
    private readonly hash?: Hash,
  ) {
    super();
  }

  /** Bytes handed on to the adapter so far. */
  get forwarded(): number {
    return this.passed;
  }

  /** True once exactly the declared number of body bytes went through. */
  get complete(): boolean {
    return this.ended;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const start = Math.min(chunk.length, Math.max(0, this.skip - this.received));
    this.received += chunk.length;
    if (this.received > this.length) {
      callback(new Error(`Fragment body longer than its Content-Length of ${this.length} bytes`));
      return;
    }
    if (start === chunk.length) {
      callback();
      return;
    }
    const piece = start === 0 ? chunk : chunk.subarray(start);
    this.passed += piece.length;
    this.hash?.update(piece);
    callback(null, piece);
  }

  override _flush(callback: TransformCallback): void {
    if (this.received < this.length) {
      callback(new Error(`Fragment body ended after ${this.received} of ${this.length} bytes`));
      return;
    }
    this.ended = true;
    callback();
  }
}

/** A fragment body being read from a request, and how to stop reading it. */
export interface FragmentBodyReader {
  readonly body: FragmentBody;
  /** Stops feeding `body` from the request; the rest of the request stays unread. */
  detach(): void;
}

/**
 * Feeds `source` (the request) into a new {@link FragmentBody}, hashing what it hands on into
 * `hash` if given. A request that errors or closes early (client abort) destroys the body with that
 * error, which the adapter sees (§6.3).
 */
export function readFragmentBody(source: Readable, skip: number, length: number, hash?: Hash): FragmentBodyReader {
  const body = new FragmentBody(skip, length, hash);
  const stopWatching = finished(source, { writable: false }, (error) => {
    if (error) body.destroy(error);
  });
  source.pipe(body);
  return {
    body,
    detach() {
      stopWatching();
      source.unpipe(body);
    },
  };
}
