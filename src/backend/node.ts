/**
 * A memcached node: a few persistent connections shared by all clients, and
 * its health.
 *
 * Contract: `send()` always calls back once. While the node is down it fails
 * at once with NODE_DOWN, so routes can skip it without waiting. A node goes
 * down after `failureThreshold` consecutive transport failures (a refused
 * connection counts at once: nothing listens there); while down, a probe
 * with exponential backoff and jitter connects and asks `version`, and the
 * node serves again only after it answered. Each state change is logged
 * once.
 */

import type { Logger } from 'pino';
import { BackendError, NODE_DOWN } from '../errors.js';
import type { Expectation } from '../protocol/response-parser.js';
import { EXPECT_LINE } from '../protocol/response-parser.js';
import { BackendConnection, type ReplyCallback } from './connection.js';

export interface NodeOptions {
  index: number;
  host: string;
  port: number;
  label: string;
  connections: number;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  failureThreshold: number;
  probeMs: number;
  probeMaxMs: number;
  maxValue: number;
}

export interface NodeEvents {
  onUp(node: BackendNode): void;
  onDown(node: BackendNode, reason: string): void;
}

const VERSION = Buffer.from('version\r\n');

export class BackendNode {
  readonly index: number;
  readonly label: string;
  private readonly options: NodeOptions;
  private readonly log: Logger;
  private readonly events: NodeEvents;
  private readonly conns: (BackendConnection | null)[];
  private up = true;
  private failures = 0;
  private probeDelay: number;
  private probeTimer: NodeJS.Timeout | null = null;
  private probeConn: BackendConnection | null = null;
  private stopped = false;
  /** Counters for stats. */
  requests = 0;
  errors = 0;
  downCount = 0;

  constructor(options: NodeOptions, log: Logger, events: NodeEvents) {
    this.index = options.index;
    this.label = options.label;
    this.options = options;
    this.log = log;
    this.events = events;
    this.conns = new Array<BackendConnection | null>(options.connections).fill(null);
    this.probeDelay = options.probeMs;
  }

  get address(): string {
    return `${this.options.host}:${this.options.port}`;
  }

  get isUp(): boolean {
    return this.up;
  }

  /**
   * Send one request. `lane` picks the connection: requests for one key use
   * one lane, so their order on this node is their send order.
   */
  send(
    lane: number,
    data: Buffer | readonly Buffer[],
    expect: Expectation,
    cb: ReplyCallback,
  ): void {
    if (!this.up || this.stopped) {
      queueMicrotask(() => cb(NODE_DOWN, null));
      return;
    }
    this.requests++;
    const conn = this.connection(lane % this.conns.length);
    conn.send(data, expect, (err, reply) => {
      if (err !== null) this.onFailure(err);
      else this.failures = 0;
      cb(err, reply);
    });
  }

  /** The connection index a lane maps to: requests on one lane share it. */
  laneOf(lane: number): number {
    return lane % this.conns.length;
  }

  private connection(i: number): BackendConnection {
    let conn = this.conns[i]!;
    if (conn === null || conn.isClosed) {
      conn = this.open();
      this.conns[i] = conn;
    }
    return conn;
  }

  private open(): BackendConnection {
    const o = this.options;
    return new BackendConnection(
      {
        host: o.host,
        port: o.port,
        connectTimeoutMs: o.connectTimeoutMs,
        requestTimeoutMs: o.requestTimeoutMs,
        maxValue: o.maxValue,
      },
      {
        onConnect: () => {},
        onClose: (conn, err) => {
          const i = this.conns.indexOf(conn);
          if (i >= 0) this.conns[i] = null;
          // A refused or reset connection with nothing in flight still says the node is gone.
          if (err.code === 'MSP_BACKEND_CONNECT') this.onFailure(err, true);
        },
      },
    );
  }

  private onFailure(err: BackendError, immediate = false): void {
    this.errors++;
    if (!this.up) return;
    this.failures++;
    if (immediate || this.failures >= this.options.failureThreshold) {
      this.markDown(err.message);
    }
  }

  private markDown(reason: string): void {
    if (!this.up || this.stopped) return;
    this.up = false;
    this.downCount++;
    this.log.warn({ node: this.label, address: this.address, reason }, 'node down');
    for (let i = 0; i < this.conns.length; i++) {
      const c = this.conns[i];
      this.conns[i] = null;
      // CLOSED, not NODE_DOWN: what was in flight may have run on the node.
      c?.destroy(new BackendError('MSP_BACKEND_CLOSED', `${this.address}: node marked down`));
    }
    this.probeDelay = this.options.probeMs;
    this.scheduleProbe();
    this.events.onDown(this, reason);
  }

  private scheduleProbe(): void {
    if (this.stopped) return;
    const jitter = 0.5 + Math.random();
    this.probeTimer = setTimeout(() => this.probe(), Math.round(this.probeDelay * jitter));
    this.probeDelay = Math.min(this.probeDelay * 2, this.options.probeMaxMs);
  }

  private probe(): void {
    this.probeTimer = null;
    if (this.stopped || this.up) return;
    const conn = this.open();
    this.probeConn = conn;
    conn.send(VERSION, EXPECT_LINE, (err, reply) => {
      this.probeConn = null;
      if (err === null && reply !== null && reply.text.startsWith('VERSION ')) {
        this.conns[0] = conn;
        this.markUp();
      } else {
        conn.destroy(new BackendError('MSP_BACKEND_CLOSED', 'probe done'));
        this.scheduleProbe();
      }
    });
  }

  private markUp(): void {
    this.up = true;
    this.failures = 0;
    this.log.info({ node: this.label, address: this.address }, 'node up');
    this.events.onUp(this);
  }

  /** Close every connection and stop probing. */
  close(): void {
    this.stopped = true;
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeConn?.destroy(new BackendError('MSP_BACKEND_CLOSED', 'proxy shutting down'));
    for (const c of this.conns) {
      c?.destroy(new BackendError('MSP_BACKEND_CLOSED', 'proxy shutting down'));
    }
  }
}
