/**
 * What every route shares: the nodes, the ring, per-key order, the recovery
 * state, counters, and the few things each route asks of them: which
 * replicas of a key to use, how to send to a node, how to record a write a
 * node missed, and how a node's reply becomes the client's.
 */

import type { BackendNode } from '../backend/node.js';
import type { BackendError } from '../errors.js';
import { serverError } from '../protocol/encoder.js';
import type { Request } from '../protocol/request.js';
import type { Out, Result } from '../protocol/result.js';
import {
  EXPECT_LINE,
  EXPECT_QUIET,
  type Expectation,
  type Reply,
} from '../protocol/response-parser.js';
import type { Stats } from '../stats.js';
import { CasTokens } from './cas-token.js';
import type { Via } from './item.js';
import { storeItem } from './item.js';
import type { Item } from './item.js';
import { KeyOrder } from './key-order.js';
import type { Recovery } from './recovery.js';
import { type ReplyOrErr, metaMiss, missIsTrue } from './reply-rules.js';
import type { Placement } from './placement.js';

export type { Out } from '../protocol/result.js';
/** How a route answers: text reply bytes, or a single-key hit the client's protocol encodes. */
export type Done = (out: Result) => void;
/** Nodes to use for a key, in order; may be shared with the ring: never changed. */
export type Route = Uint16Array;

export interface RouteOptions {
  ackMode: 'sync' | 'async';
}

export const NO_REPLICA = serverError('no replica available');
const MN = Buffer.from('mn\r\n');
const SP = Buffer.from(' ');
const CRLF = Buffer.from('\r\n');

function noop(): void {}

export class RouteContext {
  readonly nodes: readonly BackendNode[];
  readonly placement: Placement;
  readonly options: RouteOptions;
  readonly stats: Stats;
  readonly order = new KeyOrder();
  readonly cas: CasTokens;
  /** Outage logs and fences; null when not wired (unit use). */
  recovery: Recovery | null = null;
  /** Sends a line request to a node through its route (see item.ts). */
  readonly via: Via = (node, hash, data, cb) => this.send(node, hash, data, EXPECT_LINE, cb);

  constructor(
    nodes: readonly BackendNode[],
    placement: Placement,
    options: RouteOptions,
    stats: Stats,
  ) {
    this.nodes = nodes;
    this.placement = placement;
    this.options = options;
    this.stats = stats;
    this.cas = new CasTokens(placement.copies);
  }

  /**
   * The key's replica set, primary first, whatever their health (shared:
   * never changed). During a move: the old replicas, then the new (Placement).
   */
  replicaSet(key: Buffer): Route {
    return this.placement.replicaSet(key);
  }

  /**
   * Whether a key some replicas answered a miss for (`missedOn`) may be
   * answered as a miss: by reply-rules' `missIsTrue`, over the replicas that
   * hold every acknowledged write (during a move, the old ones only).
   */
  missTrue(key: Buffer, missedOn: readonly number[]): boolean {
    const owners = this.placement.owners(key);
    const on = this.placement.moving ? missedOn.filter((n) => owners.includes(n)) : missedOn;
    return missIsTrue(owners, on, this.complete);
  }

  /**
   * Whether a write routed to `route` (the healthy part of the key's set)
   * left replicas out, which must then be logged (missedByDown).
   */
  leftOut(route: Route): boolean {
    return route.length < this.placement.copies || this.placement.moving;
  }

  /**
   * Healthy replicas of a key, primary first. When all are up (almost always)
   * this is the ring's shared replica set, so a lookup allocates nothing.
   */
  healthy(key: Buffer): Route {
    const set = this.replicaSet(key);
    for (let i = 0; i < set.length; i++) {
      if (!this.nodes[set[i]!]!.isUp) return set.filter((n) => this.nodes[n]!.isUp);
    }
    return set;
  }

  /**
   * Healthy replicas whose copy of the key can be trusted (see Recovery's
   * `trusts`): reads and authorities use these.
   */
  trusted(key: Buffer): Route {
    const route = this.healthy(key);
    const rec = this.recovery;
    // Hot path: every copy is trusted almost always, and then no second array is needed.
    if (rec === null || !rec.anyDistrusted) return route;
    for (let i = 0; i < route.length; i++) {
      if (!rec.trusts(route[i]!, key)) return route.filter((n) => rec.trusts(n, key));
    }
    return route;
  }

  /**
   * The replicas that may decide a conditional write, in order: the trusted
   * ones, and during a move only the old replicas (a new one may not have
   * the key yet, and would decide as if it did not exist).
   */
  authorities(key: Buffer): Route {
    const route = this.trusted(key);
    if (!this.placement.moving) return route;
    const owners = this.placement.owners(key);
    return route.filter((n) => owners.includes(n));
  }

  /**
   * Whether `node`'s answer for `key` still counts when it arrives. A write
   * the node missed (an error reply) may have been logged after the read
   * was sent: its lane is FIFO, so that write's reply came first, and the
   * read must not serve what the node held before it.
   */
  answers(node: number, key: Buffer): boolean {
    const rec = this.recovery;
    return rec === null || !rec.anyDistrusted || rec.trusts(node, key);
  }

  /** Whether a miss on `node` is known to be true (it holds every acknowledged write). */
  readonly complete = (node: number): boolean => this.recovery?.complete(node) ?? true;

  send(
    node: number,
    hash: number,
    data: Buffer | readonly Buffer[],
    expect: Expectation,
    cb: (r: ReplyOrErr) => void,
  ): void {
    this.nodes[node]!.send(hash, data, expect, (err, reply) => {
      if (err !== null) {
        this.countError(err);
        cb(err);
      } else {
        cb(reply!);
      }
    });
  }

  /** Count a transport failure (a node known down is not one). */
  countError(err: BackendError): void {
    if (err.code === 'MSP_BACKEND_TIMEOUT') this.stats.backendTimeouts++;
    else if (err.code !== 'MSP_NODE_DOWN') this.stats.backendErrors++;
  }

  /**
   * Send a quiet meta command as the client sent it, followed by `mn`: the
   * node itself decides which reply its `q` suppresses (absent reply).
   */
  sendQuiet(
    node: number,
    hash: number,
    data: Buffer | readonly Buffer[],
    cb: (r: ReplyOrErr) => void,
  ): void {
    this.send(node, hash, data, EXPECT_QUIET, cb);
    this.send(node, hash, MN, EXPECT_LINE, noop);
  }

  /** A write of `key` failed (or may have failed) on `node`. */
  missed(node: number, key: Buffer): void {
    this.recovery?.missed(node, key);
  }

  /** A write of `key` is being made without the replicas that are down: log it for them. */
  missedByDown(key: Buffer): void {
    const rec = this.recovery;
    if (rec === null) return;
    const set = this.replicaSet(key);
    for (let i = 0; i < set.length; i++) if (!this.nodes[set[i]!]!.isUp) rec.missed(set[i]!, key);
  }

  /**
   * Answer `out` once every process knows what this one knows of the
   * replicas of `key` (Recovery's afterKnown): an ack never outruns the news.
   */
  ack(key: Buffer, done: Done, out: Out): void {
    const rec = this.recovery;
    if (rec === null || !rec.confirming) return done(out);
    rec.afterKnown(key, () => done(out));
  }

  /** A write replaced `node`'s copy of `key` whole: it can be trusted again. */
  unfence(node: number, key: Buffer): void {
    this.recovery?.unfence(node, key);
  }

  /**
   * Write a found item back to a replica that missed it, in add mode (a
   * newer write that got there first wins). Sent before the read releases
   * its key, so a later write to the key lands after it.
   */
  repair(node: number, hash: number, key: Buffer, item: Item): void {
    if (item.ttl === 0) return;
    this.stats.readRepairs++;
    this.via(node, hash, storeItem(key, item, ' ME'), noop);
  }

  /** What a client gets when no replica could serve `req` (nothing for a classic noreply). */
  unavailable(req: Request, reply: Buffer = NO_REPLICA): Out {
    this.stats.unavailable++;
    return req.noreply && !req.cmd.startsWith('m') ? null : reply;
  }

  /**
   * The reply bytes for the client: nothing for noreply or a reply a quiet
   * meta command suppressed, else the node's reply with its cas token (meta
   * `c`) rewritten to name `node`.
   */
  clientReply(req: Request, r: Reply, node: number): Out {
    if (r.absent) return null;
    if (req.noreply) {
      if (!req.cmd.startsWith('m')) return null;
      // mg with q: only a miss is suppressed (ms/md/ma were sent quiet, the node decided).
      if (req.cmd === 'mg' && metaMiss(r)) return null;
    }
    if (!this.cas.encoding || !req.cmd.startsWith('m') || !req.hasFlag('c')) return r.raw;
    return this.cas.meta(r, node);
  }
}

/**
 * A meta command line rebuilt with its C token replaced by `cas` (when not
 * null), and without `q` unless `quiet`. The data block (ms) is appended
 * unchanged.
 */
export function metaLine(req: Request, cas: bigint | null = null, quiet = false): Buffer[] {
  const out: Buffer[] = [Buffer.from(req.cmd, 'latin1'), SP, req.wireKeys[0]!];
  if (req.cmd === 'ms') out.push(SP, Buffer.from(String(req.bytes), 'latin1'));
  for (const t of req.args) {
    if (t[0] === 0x71 /* q */ && !quiet) continue;
    if (t[0] === 0x43 /* C */ && cas !== null) {
      out.push(SP, Buffer.from(`C${cas}`, 'latin1'));
      continue;
    }
    out.push(SP, t);
  }
  out.push(CRLF);
  if (req.cmd === 'ms') out.push(req.raw.subarray(req.lineLength));
  return out;
}
