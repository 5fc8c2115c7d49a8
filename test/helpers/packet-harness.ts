/**
 * Drives packets through the middleware's pipeline (`processPacket`) without sockets, against a
 * {@link StubStorage}, in the vocabulary of bits-protocol.md §16, and records the events.
 */
import { EventEmitter } from 'node:events';
import { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { Readable } from 'node:stream';
import type { BitsUploadEvents } from '../../lib/events';
import { UploadRuntime } from '../../lib/lifecycle/runtime';
import { processPacket } from '../../lib/middleware';
import { resolveOptions, type BitsUploadOptions, type ResolvedOptions } from '../../lib/options';
import type { Ack } from '../../lib/protocol/ack';
import { StubStorage } from './stub-storage';

/** The upload URL of the test vectors, below the mount point. */
export const URL_PATH = '/report.bin';

/** One packet to send. */
export interface Packet {
  /** `BITS-Packet-Type`; omitted when undefined. */
  readonly type?: string;
  readonly sessionId?: string;
  readonly range?: string;
  /** Body; a Readable is passed through as it is. Defaults to empty. */
  readonly body?: string | Buffer | Readable;
  /** Content-Length; computed from a string or Buffer body unless given; null leaves it out. */
  readonly contentLength?: number | null;
  /** More headers, as name/value pairs in order. */
  readonly headers?: Readonly<Record<string, string>>;
  readonly url?: string;
  readonly httpVersion?: string;
  /** `req.user`, as an authentication middleware would set it. Defaults to none. */
  readonly user?: unknown;
}

/** One event the middleware emitted: its name and its argument. */
export type RecordedEvent = {
  [K in keyof BitsUploadEvents]: { readonly name: K; readonly payload: BitsUploadEvents[K][0] };
}[keyof BitsUploadEvents];

/** Every event the middleware emits. */
export const EVENT_NAMES: readonly (keyof BitsUploadEvents)[] = [
  'session-created',
  'progress',
  'upload-completed',
  'session-closed',
  'session-cancelled',
  'session-expired',
  'upload-failed',
];

/**
 * An `IncomingMessage` as Node would deliver it for a request (no socket behind it): method,
 * version, URL and headers; `user` is set when given.
 */
export function fakeRequest(url: string, rawHeaders: readonly string[], httpVersion = '1.1', user?: unknown): IncomingMessage {
  const message = new IncomingMessage(new Socket());
  message.method = 'BITS_POST';
  message.httpVersion = httpVersion;
  message.url = url;
  message.rawHeaders = [...rawHeaders];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    message.headers[(rawHeaders[i] ?? '').toLowerCase()] = rawHeaders[i + 1];
  }
  if (user !== undefined) Object.assign(message, { user });
  return message;
}

export class PacketHarness {
  readonly storage: StubStorage;
  readonly options: ResolvedOptions;
  readonly emitter = new EventEmitter<BitsUploadEvents>();
  readonly runtime: UploadRuntime;
  /** Every event, in order. */
  readonly events: RecordedEvent[] = [];
  /** The time requests are made at. */
  now = 1_700_000_000_000;

  constructor(options: Omit<BitsUploadOptions, 'storage' | 'directory'> = {}, storage = new StubStorage()) {
    this.storage = storage;
    this.options = resolveOptions({ storage: this.storage, ...options });
    this.storage.now = () => this.now;
    this.runtime = new UploadRuntime(this.options, this.emitter);
    for (const name of EVENT_NAMES) {
      this.emitter.on(name, (payload: BitsUploadEvents[typeof name][0]) => {
        this.events.push({ name, payload } as RecordedEvent);
      });
    }
  }

  /** The session locks the pipeline uses. */
  get locks(): UploadRuntime['locks'] {
    return this.runtime.locks;
  }

  /** Names of the events so far. */
  eventNames(): string[] {
    return this.events.map((event) => event.name);
  }

  /** Payloads of one event, in order. */
  eventsOf<K extends keyof BitsUploadEvents>(name: K): BitsUploadEvents[K][0][] {
    return this.events.filter((event) => event.name === name).map((event) => event.payload as BitsUploadEvents[K][0]);
  }

  /** A harness on the same storage with fresh memory, as after a restart of the process. */
  restart(options: Omit<BitsUploadOptions, 'storage' | 'directory'> = {}): PacketHarness {
    const next = new PacketHarness(options, this.storage);
    next.now = this.now;
    return next;
  }

  send(packet: Packet): Promise<Ack> {
    const body = packet.body ?? '';
    const rawHeaders: string[] = [];
    const add = (name: string, value: string | undefined): void => {
      if (value !== undefined) rawHeaders.push(name, value);
    };
    add('Host', 'bits.example.test');
    add('BITS-Packet-Type', packet.type);
    add('BITS-Session-Id', packet.sessionId);
    add('Content-Range', packet.range);
    const length =
      packet.contentLength === undefined
        ? body instanceof Readable
          ? undefined
          : Buffer.byteLength(body, 'latin1')
        : packet.contentLength;
    if (length !== null && length !== undefined) add('Content-Length', String(length));
    for (const [name, value] of Object.entries(packet.headers ?? {})) add(name, value);
    const stream =
      body instanceof Readable ? body : Readable.from([typeof body === 'string' ? Buffer.from(body, 'latin1') : body]);
    const message = fakeRequest(packet.url ?? URL_PATH, rawHeaders, packet.httpVersion ?? '1.1', packet.user);
    return processPacket({ message, body: stream }, this.runtime, this.now);
  }

  ping(): Promise<Ack> {
    return this.send({ type: 'Ping' });
  }

  /** Create-Session with the BITS 1.5 protocol; returns the Ack. */
  create(url?: string, protocols = '{7df0354d-249b-430f-820d-3d2a9bef4931}', more: Partial<Packet> = {}): Promise<Ack> {
    return this.send({ type: 'Create-Session', url, ...more, headers: { 'BITS-Supported-Protocols': protocols, ...more.headers } });
  }

  /** Create-Session that must succeed; returns the session id. */
  async session(url?: string, more: Partial<Packet> = {}): Promise<string> {
    const ack = await this.create(url, undefined, more);
    const id = ack.headers['BITS-Session-Id'];
    if (ack.status !== 200 || id === undefined) throw new Error(`Create-Session failed: ${JSON.stringify(ack)}`);
    return id;
  }

  fragment(
    sessionId: string,
    range: string | undefined,
    body: string | Buffer | Readable,
    more: Partial<Packet> = {},
  ): Promise<Ack> {
    return this.send({ type: 'Fragment', sessionId, range, body, ...more });
  }

  close(sessionId: string, url?: string, more: Partial<Packet> = {}): Promise<Ack> {
    return this.send({ type: 'Close-Session', sessionId, url, ...more });
  }

  cancel(sessionId: string, url?: string, more: Partial<Packet> = {}): Promise<Ack> {
    return this.send({ type: 'Cancel-Session', sessionId, url, ...more });
  }
}

/** Error headers "X/Y" of §16: both names with the same code, and the context. */
export function errorHeaders(code: string, context = '0x5'): Record<string, string> {
  return { 'BITS-Error-Code': code, 'BITS-Error': code, 'BITS-Error-Context': context };
}
