/**
 * What the parts of recovery share (rejoin.ts, resync.ts, recovery.ts): each
 * node's recovery state, the nodes and ring, per-key order, the rejoin gate,
 * and timers and sockets that end when the proxy closes.
 *
 * Per node, the state holds its outage log (the keys it missed, each with the
 * stamp of the latest write of it the node missed, see Recovery), its fences
 * (keys whose copy there may be older than a replica that is down), and
 * whether it is complete: known to hold every acknowledged write for keys
 * outside its log and fences. A node is complete until it restarts empty or
 * is flushed, and again once a re-sync run refilled it.
 */

import type net from 'node:net';
import type { Logger } from 'pino';
import type { BackendNode } from '../backend/node.js';
import { EXPECT_LINE } from '../protocol/response-parser.js';
import type { Via } from './item.js';
import { EXCLUSIVE, type KeyOrder } from './key-order.js';
import type { RejoinGate } from './rejoin-gate.js';
import { keyHash } from './meta.js';
import type { Placement } from './placement.js';

export interface RecoveryOptions {
  /** Keys an outage log holds before it overflows (the node is then flushed on rejoin). */
  outageLogMax: number;
  /** Re-sync copy rate, keys per second (0: no re-sync). */
  resyncRate: number;
}

export type ResyncState = 'idle' | 'running' | 'done' | 'failed';

/** First wait before a failed re-sync runs again. */
export const RESYNC_RETRY_MS = 1000;

export class NodeRecovery {
  /** Outage log: key (latin1) -> stamp of the latest write of it this node missed. */
  missed = new Map<string, number>();
  /**
   * Keys whose copy here may be older than a replica that is down (it missed a
   * later write than that replica did), with that stamp. Not read
   * here, never the authority, until checked against that replica or replaced
   * by a write.
   */
  fenced = new Map<string, number>();
  overflow = false;
  /** Holds every acknowledged write outside its log and fences (see the module comment). */
  complete = true;
  rejoining = false;
  /**
   * Shared gate only: this process replayed its log and writes reach the node
   * again, but other processes may not have replayed theirs: no reads here.
   */
  waiting = false;
  /**
   * A probe answered while a rejoin ran (shared gate: the node went down again
   * during its catch-up replay), and whether it saw a restart: rejoin again after.
   */
  reprobe: boolean | null = null;
  /** A background fix of keys missed by a node that is up is scheduled or running. */
  fixing = false;
  rejoins = 0;
  replayed = 0;
  flushes = 0;
  resync: ResyncState = 'idle';
  resyncRun = 0;
  resyncScanned = 0;
  resyncCopied = 0;
  resyncFailed = 0;
  /** Delay before retrying a failed re-sync; doubles per failure, reset by a finished one. */
  resyncRetryMs = RESYNC_RETRY_MS;
  /** A re-sync was asked for while one ran (the node may have lost what it copied): run again. */
  resyncAgain = false;
  /**
   * Keys whose copy failed in a run that listed every key: what its retry
   * copies, instead of listing and copying everything again.
   */
  resyncRetryKeys: Buffer[] | null = null;

  /** The latest write of `ks` this node is known to have missed (0: none). */
  lastMissed(ks: string): number {
    return Math.max(this.missed.get(ks) ?? 0, this.fenced.get(ks) ?? 0);
  }
}

export class RecoveryCore {
  readonly nodes: readonly BackendNode[];
  readonly placement: Placement;
  readonly order: KeyOrder;
  readonly options: RecoveryOptions;
  readonly log: Logger;
  readonly gate: RejoinGate;
  readonly state: NodeRecovery[];
  readonly sockets = new Set<net.Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  closed = false;
  /** Sends to a node whether or not it serves (a rejoining node does not yet). */
  readonly direct: Via = (node, hash, data, cb) =>
    this.nodes[node]!.sendDirect(hash, data, EXPECT_LINE, (err, r) => cb(err ?? r!));
  /** Sends to a node only while it is up. */
  readonly routed: Via = (node, hash, data, cb) =>
    this.nodes[node]!.send(hash, data, EXPECT_LINE, (err, r) => cb(err ?? r!));

  constructor(
    nodes: readonly BackendNode[],
    placement: Placement,
    order: KeyOrder,
    options: RecoveryOptions,
    log: Logger,
    gate: RejoinGate,
  ) {
    this.nodes = nodes;
    this.placement = placement;
    this.order = order;
    this.options = options;
    this.log = log;
    this.gate = gate;
    this.state = nodes.map(() => new NodeRecovery());
  }

  /** The key's replica set, primary first (during a move, old and new: see Placement). */
  replicaSet(key: Buffer): Uint16Array {
    return this.placement.replicaSet(key);
  }

  /** The replicas of a key that hold every acknowledged write (during a move, the old ones). */
  owners(key: Buffer): Uint16Array {
    return this.placement.owners(key);
  }

  /** The nodes of the placement in force (a retired node is not one). */
  get members(): readonly BackendNode[] {
    return this.placement.members;
  }

  /** A node was added to the proxy's list (a reload): it gets its recovery state. */
  added(): void {
    while (this.state.length < this.nodes.length) this.state.push(new NodeRecovery());
  }

  /** Whether `node`'s copy of `ks` may be read: not fenced, and no missed write pending there. */
  trusts(node: number, ks: string): boolean {
    const s = this.state[node]!;
    return !s.waiting && !s.fenced.has(ks) && !s.missed.has(ks);
  }

  /** Don't trust `node`'s copy of `ks` until write `seq` of it is there; tell other processes. */
  fenceKey(node: number, ks: string, seq: number): void {
    const f = this.state[node]!.fenced;
    if ((f.get(ks) ?? 0) >= seq) return;
    f.set(ks, seq);
    this.gate.fenced(node, ks, seq);
  }

  /** `node`'s copy of `ks` is trusted again (fixed, or replaced by a write). */
  unfenceKey(node: number, ks: string): void {
    if (this.state[node]!.fenced.delete(ks)) this.gate.unfenced(node, ks);
  }

  /**
   * `node` may lack acknowledged writes (it restarted empty, was flushed, or
   * its past is unknown): it is complete again only after a re-sync.
   */
  incomplete(node: number): void {
    const s = this.state[node]!;
    if (!s.complete) return;
    s.complete = false;
    this.gate.complete(node, false);
  }

  /**
   * Run `run` holding `key` alone (KeyOrder EXCLUSIVE); the result it ends
   * with releases the key and goes to `cb`. `run` gets the key's hash (its lane).
   */
  holding<T>(
    key: Buffer,
    cb: (result: T) => void,
    run: (hash: number, end: (r: T) => void) => void,
  ): void {
    const hash = keyHash(key);
    this.order.run(EXCLUSIVE, hash, () =>
      run(hash, (result) => {
        this.order.release(EXCLUSIVE, hash);
        cb(result);
      }),
    );
  }

  later(fn: () => void, ms: number): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  close(): void {
    this.closed = true;
    for (const s of this.sockets) s.destroy();
    for (const t of this.timers) clearTimeout(t);
  }
}
