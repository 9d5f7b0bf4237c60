/**
 * One persistent, pipelined connection to a memcached node.
 *
 * Contract: `send()` writes a request and calls its callback exactly once,
 * with the reply or a BackendError. Replies are matched to requests FIFO.
 * Writes made in one event-loop turn go out together: they are written in
 * setImmediate, after every socket callback of the poll phase, so the
 * requests of all clients read in that turn share one write per connection
 * (process.nextTick would flush after each client's callback instead). Short
 * requests (a get line, a set's command line) are copied into a staging
 * buffer as they come, so a turn's gets are one chunk, not one stream write
 * each; longer pieces (values) are written as they are. A request that waits
 * longer than the request timeout, a reply that cannot be matched, or a
 * socket error destroys the connection and fails everything in flight on it
 * (memcached's proxy does the same in _reset_bad_backend): after any of those
 * no later reply on that socket can be trusted to belong to its request.
 * A destroyed connection is not reused; the owner opens a new one.
 */

import net from 'node:net';
import { BackendError } from '../errors.js';
import { type Expectation, type Reply, ResponseParser } from '../protocol/response-parser.js';
import { rawReadOption } from '../net/raw-read.js';
import { TurnQueue } from '../turn-queue.js';

export type ReplyCallback = (err: BackendError | null, reply: Reply | null) => void;

export interface ConnectionOptions {
  host: string;
  port: number;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  maxValue?: number;
}

export interface ConnectionEvents {
  /** The TCP connection is established. */
  onConnect(conn: BackendConnection): void;
  /** The connection is gone, with the reason; in-flight requests have been failed. */
  onClose(conn: BackendConnection, err: BackendError): void;
  /** One request finished (err null: answered), just before its callback runs. */
  onResult(err: BackendError | null): void;
}

/** Connections with requests queued this turn, flushed together in the check phase. */
const queuedThisTurn = new TurnQueue<BackendConnection>((c) => c.flush());

/** Pieces up to this size are copied into the staging buffer; longer ones are written as is. */
const COPY_MAX = 256;
/**
 * Size of a staging buffer. Its bytes are reused only once the socket has
 * taken every write; while a write is pending, a full buffer is replaced.
 */
const STAGE_SIZE = 64 * 1024;

/** All live connections, swept for timeouts by one shared timer. */
const live = new Set<BackendConnection>();
let sweeper: NodeJS.Timeout | null = null;
const SWEEP_MS = 10;

/**
 * Timers run before the poll phase reads sockets. After msproxy itself stalled
 * (a long GC, a starved CPU), replies that arrived during the stall are still
 * unread when the sweep runs, and every request would look late. So a late
 * request is judged only in the check phase, after this turn's reads: if its
 * reply was in, it is no longer at the head.
 */
function sweep(): void {
  const now = performance.now();
  let late = false;
  for (const c of live) late ||= c.isLate(now);
  if (late)
    setImmediate(() => {
      for (const c of live) c.checkTimeout(now);
    });
}

export class BackendConnection {
  private readonly socket: net.Socket;
  private readonly parser: ResponseParser;
  private readonly options: ConnectionOptions;
  private readonly events: ConnectionEvents;
  // FIFO of callbacks and deadlines, as parallel ring buffers.
  private callbacks: (ReplyCallback | null)[] = new Array<ReplyCallback | null>(64).fill(null);
  private deadlines = new Float64Array(64);
  private head = 0;
  private count = 0;
  private queued = false;
  /** What flush() writes, in order: runs of the staging buffer and long pieces. */
  private readonly out: Buffer[] = [];
  private stage: Buffer | null = null;
  private stageAt = 0;
  /** Start of the staged run not yet in `out`. */
  private runStart = 0;
  private connected = false;
  private closed = false;
  private readonly connectTimer: NodeJS.Timeout;

  constructor(options: ConnectionOptions, events: ConnectionEvents) {
    this.options = options;
    this.events = events;
    this.parser = new ResponseParser(
      {
        onReply: (reply) => this.onReply(reply),
        onDesync: (reason) =>
          this.destroy(new BackendError('MSP_BACKEND_DESYNC', `${this.name}: ${reason}`)),
      },
      options.maxValue === undefined ? {} : { maxValue: options.maxValue },
    );
    this.socket = net.connect({
      host: options.host,
      port: options.port,
      noDelay: true,
      onread: rawReadOption((chunk) => this.parser.push(chunk)),
    });
    this.connectTimer = setTimeout(
      () => this.destroy(new BackendError('MSP_BACKEND_CONNECT', `${this.name}: connect timeout`)),
      options.connectTimeoutMs,
    );
    this.socket.on('connect', () => {
      clearTimeout(this.connectTimer);
      this.connected = true;
      this.events.onConnect(this);
    });
    this.socket.on('error', (err: NodeJS.ErrnoException) => {
      const code = this.connected ? 'MSP_BACKEND_CLOSED' : 'MSP_BACKEND_CONNECT';
      this.destroy(new BackendError(code, `${this.name}: ${err.code ?? err.message}`));
    });
    this.socket.on('close', () =>
      this.destroy(new BackendError('MSP_BACKEND_CLOSED', `${this.name}: connection closed`)),
    );
    live.add(this);
    if (sweeper === null) {
      sweeper = setInterval(sweep, SWEEP_MS);
      sweeper.unref();
    }
  }

  /** Requests sent from now on time out after `ms` (those in flight keep their deadline). */
  setRequestTimeout(ms: number): void {
    this.options.requestTimeoutMs = ms;
  }

  get name(): string {
    return `${this.options.host}:${this.options.port}`;
  }

  get isConnected(): boolean {
    return this.connected && !this.closed;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Requests awaiting a reply. */
  get inflight(): number {
    return this.count;
  }

  /** Write one request (`data` is its exact bytes) and await a reply of shape `expect`. */
  send(data: Buffer | readonly Buffer[], expect: Expectation, cb: ReplyCallback): void {
    if (this.closed) {
      const err = new BackendError('MSP_BACKEND_CLOSED', `${this.name}: connection closed`);
      queueMicrotask(() => cb(err, null));
      return;
    }
    if (!this.queued) {
      this.queued = true;
      queuedThisTurn.add(this);
    }
    if (Buffer.isBuffer(data)) {
      this.queue(data);
    } else {
      for (const b of data) this.queue(b);
    }
    this.parser.expect(expect);
    this.push(cb, performance.now() + this.options.requestTimeoutMs);
  }

  /** Whether the oldest request in flight has passed its deadline at `now`. */
  isLate(now: number): boolean {
    return this.count > 0 && this.deadlines[this.head]! <= now;
  }

  /** Called by the shared sweeper. */
  checkTimeout(now: number): void {
    if (this.isLate(now)) {
      this.destroy(
        new BackendError(
          'MSP_BACKEND_TIMEOUT',
          `${this.name}: no reply within ${this.options.requestTimeoutMs} ms`,
        ),
      );
    }
  }

  /** Close the connection, failing whatever is in flight with `err`. */
  destroy(err: BackendError): void {
    if (this.closed) return;
    this.closed = true;
    live.delete(this);
    clearTimeout(this.connectTimer);
    this.socket.destroy();
    // The owner hears first, so a node that is now down is seen as down by the callbacks below.
    this.events.onClose(this, err);
    while (this.count > 0) {
      const cb = this.shift();
      this.events.onResult(err);
      cb(err, null);
    }
  }

  /** Write what this turn queued. */
  flush(): void {
    this.queued = false;
    this.endRun();
    const out = this.out;
    if (out.length === 0) return;
    if (this.closed) {
      out.length = 0;
      return;
    }
    if (out.length === 1) {
      this.socket.write(out[0]!);
    } else {
      this.socket.cork();
      for (const b of out) this.socket.write(b);
      this.socket.uncork();
    }
    out.length = 0;
    // Taken by the kernel at once (the usual case): the staged bytes are no longer needed, so the
    // buffer is used again. A new one per 64 KiB would live long enough to reach the old
    // generation and leave it to the full GC (three times as many under get90).
    if (this.socket.writableLength === 0) this.stageAt = this.runStart = 0;
  }

  private queue(b: Buffer): void {
    const n = b.length;
    if (n > COPY_MAX) {
      this.endRun();
      this.out.push(b);
      return;
    }
    let stage = this.stage;
    if (stage === null || this.stageAt + n > stage.length) {
      this.endRun();
      stage = this.stage = Buffer.allocUnsafeSlow(STAGE_SIZE);
      this.stageAt = this.runStart = 0;
    }
    const at = this.stageAt;
    // A loop beats a native copy call for a few dozen bytes.
    for (let i = 0; i < n; i++) stage[at + i] = b[i]!;
    this.stageAt = at + n;
  }

  /** Close the staged run: it goes out as one chunk, its bytes untouched until the write is done. */
  private endRun(): void {
    if (this.stageAt > this.runStart) {
      this.out.push(this.stage!.subarray(this.runStart, this.stageAt));
      this.runStart = this.stageAt;
    }
  }

  private onReply(reply: Reply): void {
    const cb = this.shift();
    this.events.onResult(null);
    cb(null, reply);
  }

  private push(cb: ReplyCallback, deadline: number): void {
    const cap = this.callbacks.length;
    if (this.count === cap) {
      const callbacks = new Array<ReplyCallback | null>(cap * 2).fill(null);
      const deadlines = new Float64Array(cap * 2);
      for (let i = 0; i < this.count; i++) {
        callbacks[i] = this.callbacks[(this.head + i) % cap]!;
        deadlines[i] = this.deadlines[(this.head + i) % cap]!;
      }
      this.callbacks = callbacks;
      this.deadlines = deadlines;
      this.head = 0;
    }
    const at = (this.head + this.count) % this.callbacks.length;
    this.callbacks[at] = cb;
    this.deadlines[at] = deadline;
    this.count++;
  }

  private shift(): ReplyCallback {
    const cb = this.callbacks[this.head]!;
    this.callbacks[this.head] = null;
    this.head = (this.head + 1) % this.callbacks.length;
    this.count--;
    return cb;
  }
}
