/**
 * A memcached node: a few persistent connections shared by all clients, and
 * its health.
 *
 * Contract: `send()` always calls back once. While the node is down it fails
 * at once with NODE_DOWN, so routes can skip it without waiting. A node goes
 * down after `failureThreshold` consecutive transport failures (a refused
 * connection counts at once: nothing listens there); while down, a probe
 * with exponential backoff and jitter connects and asks `stats`. An answer
 * does not bring the node back by itself: the owner (`onProbe`) first fences
 * it (brings what it missed up to date, through `sendDirect`) and then calls
 * `markUp()`. Each state change is logged once.
 *
 * Every new connection asks `stats` before anything else, so a node that
 * restarted (new pid, later boot time, fewer total connections) is noticed
 * even if no request failed meanwhile (`onRestart`).
 */

import type { Logger } from 'pino';
import { BackendError, NODE_DOWN } from '../errors.js';
import type { Expectation, Reply } from '../protocol/response-parser.js';
import { EXPECT_LINES } from '../protocol/response-parser.js';
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
  /**
   * A probe was answered; call `markUp()` once the node may serve. `restarted`:
   * it lost its data; null: this is the first answer since msproxy started
   * (the node was down or hung then), so what it holds is unknown.
   */
  onProbe(node: BackendNode, restarted: boolean | null): void;
  /** A node that was up turned out to have restarted (it is empty). */
  onRestart(node: BackendNode): void;
}

/** Who a memcached process is, from its `stats`. */
export interface Identity {
  /** memcached's version string ("1.6.18"), or "" when not reported. */
  version: string;
  pid: number;
  /** Server time minus uptime, in seconds. */
  boot: number;
  totalConnections: number;
}

const STATS = Buffer.from('stats\r\n');
/** Delay before reopening a connection the node closed. */
const RECONNECT_MS = 10;

/** Parse the identity rows of a `stats` reply. */
export function identityOf(reply: Reply | null): Identity | null {
  if (reply === null || reply.lines === null) return null;
  let pid = -1;
  let uptime = -1;
  let time = -1;
  let total = -1;
  let version = '';
  for (const l of reply.lines) {
    const t = l.toString('latin1').split(' ');
    if (t[1] === 'pid') pid = Number(t[2]);
    else if (t[1] === 'version') version = t[2] ?? '';
    else if (t[1] === 'uptime') uptime = Number(t[2]);
    else if (t[1] === 'time') time = Number(t[2]);
    else if (t[1] === 'total_connections') total = Number(t[2]);
  }
  if (pid < 0 || uptime < 0 || time < 0) return null;
  return { version, pid, boot: time - uptime, totalConnections: total };
}

/** Whether a memcached version string is 1.6 or later (meta commands, as msproxy needs). */
export function hasMetaCommands(version: string): boolean {
  const m = /^(\d+)\.(\d+)/.exec(version);
  if (m === null) return true; // not reported: assume a current server
  const major = Number(m[1]);
  return major > 1 || (major === 1 && Number(m[2]) >= 6);
}

/** Whether `now` is a different (restarted) process than `before`. */
export function restartedSince(before: Identity, now: Identity): boolean {
  return (
    now.pid !== before.pid ||
    Math.abs(now.boot - before.boot) > 1 ||
    (before.totalConnections >= 0 && now.totalConnections < before.totalConnections)
  );
}

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
  private reconnectTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  /** The process last seen on this node, once known. */
  identity: Identity | null = null;
  /**
   * The node answered the first `stats` of this process before ever failing:
   * it was serving when msproxy started, so its contents are taken as they
   * are (see Recovery's firstContact for a node that was not).
   */
  answeredAtStart = false;
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
    this.sendDirect(lane, data, expect, cb);
  }

  /** Send whether or not the node is up (fencing a node before it serves again). */
  sendDirect(
    lane: number,
    data: Buffer | readonly Buffer[],
    expect: Expectation,
    cb: ReplyCallback,
  ): void {
    if (this.stopped) {
      queueMicrotask(() => cb(NODE_DOWN, null));
      return;
    }
    this.requests++;
    this.connection(lane % this.conns.length).send(data, expect, cb);
  }

  /** Open the first connection (which learns the node's identity). */
  start(): void {
    if (this.up && !this.stopped) this.connection(0);
  }

  private reconnectSoon(): void {
    if (this.reconnectTimer !== null || !this.up || this.stopped) return;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.start();
    }, RECONNECT_MS);
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
    const conn = this.connect();
    // First on the connection: who answers here? A restart empties the node.
    conn.send(STATS, EXPECT_LINES, (err, reply) => {
      if (err !== null) {
        // The first stats of this process failed: the node is down or hung. Out of service now
        // (one failure would otherwise not reach failureThreshold), so that its first answer
        // comes through a probe, which tells the owner what it holds is unknown.
        if (this.identity === null) this.markDown(err.message);
        return;
      }
      const id = identityOf(reply);
      if (id === null) return;
      const before = this.identity;
      this.identity = id;
      if (before === null && this.downCount === 0) this.answeredAtStart = true;
      if (!hasMetaCommands(id.version) && before?.version !== id.version) {
        this.log.error(
          { node: this.label, address: this.address, version: id.version },
          'memcached older than 1.6: replication and re-sync need its meta commands',
        );
      }
      if (before !== null && restartedSince(before, id) && this.up) {
        this.log.warn({ node: this.label, address: this.address, pid: id.pid }, 'node restarted');
        this.events.onRestart(this);
      }
    });
    return conn;
  }

  private connect(): BackendConnection {
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
        // Every request on the node's connections (the first `stats` too) counts for its health.
        onResult: (err) => {
          if (err !== null) this.onFailure(err);
          else this.failures = 0;
        },
        onClose: (conn, err) => {
          const i = this.conns.indexOf(conn);
          if (i >= 0) this.conns[i] = null;
          // A refused or reset connection with nothing in flight still says the node is gone.
          if (err.code === 'MSP_BACKEND_CONNECT') this.onFailure(err, true);
          // The node closed a connection (killed, restarting, or closing idle clients): look
          // again at once rather than at the next request. A refused reconnect marks it down; a
          // new process is noticed by the stats every connection starts with.
          else if (err.code === 'MSP_BACKEND_CLOSED' && i >= 0) this.reconnectSoon();
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

  /** Take the node out of service now; it serves again after a probe and its rejoin. */
  /**
   * A reload's new settings: timeouts, failure threshold, probe delays and
   * the largest value. Requests in flight keep their deadline; a connection
   * opened before keeps its value limit.
   */
  reconfigure(o: Omit<NodeOptions, 'index' | 'host' | 'port' | 'label' | 'connections'>): void {
    Object.assign(this.options, o);
    for (const c of this.conns) c?.setRequestTimeout(o.requestTimeoutMs);
  }

  /**
   * Point the node at another memcached (a reload gave its name a new
   * address): out of service now; its probe then asks the new address.
   */
  readdress(host: string, port: number): void {
    const was = this.address;
    this.options.host = host;
    this.options.port = port;
    this.probeConn?.destroy(new BackendError('MSP_BACKEND_CLOSED', 'node readdressed'));
    this.markDown(`address changed from ${was}`);
  }

  markDownNow(reason: string): void {
    this.markDown(reason);
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
    const conn = this.connect();
    this.probeConn = conn;
    conn.send(STATS, EXPECT_LINES, (err, reply) => {
      this.probeConn = null;
      const id = err === null ? identityOf(reply) : null;
      if (id === null) {
        conn.destroy(new BackendError('MSP_BACKEND_CLOSED', 'probe done'));
        this.scheduleProbe();
        return;
      }
      const before = this.identity;
      this.identity = id;
      this.conns[0]?.destroy(new BackendError('MSP_BACKEND_CLOSED', 'replaced by probe'));
      this.conns[0] = conn;
      this.events.onProbe(this, before === null ? null : restartedSince(before, id));
    });
  }

  /** The fencing of a probed node failed: stay down and probe again later. */
  probeLater(reason: string): void {
    if (this.stopped || this.up) return;
    this.log.warn({ node: this.label, address: this.address, reason }, 'node rejoin failed');
    this.scheduleProbe();
  }

  /** Serve again (after the owner fenced the node). */
  markUp(): void {
    if (this.up || this.stopped) return;
    this.up = true;
    this.failures = 0;
    this.log.info({ node: this.label, address: this.address }, 'node up');
    this.events.onUp(this);
  }

  /** Close every connection and stop probing. */
  close(): void {
    this.stopped = true;
    if (this.probeTimer) clearTimeout(this.probeTimer);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.probeConn?.destroy(new BackendError('MSP_BACKEND_CLOSED', 'proxy shutting down'));
    for (const c of this.conns) {
      c?.destroy(new BackendError('MSP_BACKEND_CLOSED', 'proxy shutting down'));
    }
  }
}
