/**
 * Recovery: what keeps a node that comes back from serving stale, deleted or
 * missing sessions, and what the routes ask of it.
 *
 * - Outage log. The routes report every key a node missed: a write routed
 *   while the node was down, or a write (or copy, touch, delete) that failed
 *   on it. Each node's log is a bounded set of keys; past `outageLogMax` it
 *   is dropped and marked overflowed (the node is then flushed on rejoin). A
 *   flush_all the node missed does the same. A node that is up gets its
 *   missed keys fixed in the background at once.
 * - Trust. Reads and authorities skip a node's copy of a key that is in its
 *   log or fenced there (`trusts`), and a miss counts as true only on a node
 *   that is complete (`complete`).
 * - Fenced rejoin (rejoin.ts) and re-sync (resync.ts).
 * - Several processes (workers, see RejoinGate): each replays its own log;
 *   fences, and a node's completeness, are shared; only the process the gate
 *   names runs re-syncs.
 */

import type { Logger } from 'pino';
import type { BackendNode } from '../backend/node.js';
import type { KeyOrder } from './key-order.js';
import { RecoveryCore, type RecoveryOptions, type ResyncState } from './recovery-core.js';
import { LOCAL_GATE, type RejoinGate } from './rejoin-gate.js';
import { Rejoin } from './rejoin.js';
import { Resync } from './resync.js';
import type { Placement } from './placement.js';
import { type MoveHooks, Rebalance, type RebalanceState } from './rebalance.js';

export type { RecoveryOptions, ResyncState } from './recovery-core.js';

export class Recovery {
  private readonly core: RecoveryCore;
  private readonly rejoin: Rejoin;
  private readonly resyncer: Resync;
  private readonly rebalancer: Rebalance;
  /**
   * Stamps the misses, in order (see Rejoin's fence): a hybrid clock, never
   * less than the previous stamp plus one nor than the wall clock in 1/1024 ms,
   * so stamps from different processes (sharing fences) compare as their
   * writes happened, to within the clocks' agreement.
   */
  private seq = 0;

  constructor(
    nodes: readonly BackendNode[],
    placement: Placement,
    order: KeyOrder,
    options: RecoveryOptions,
    log: Logger,
    gate: RejoinGate = LOCAL_GATE,
  ) {
    this.core = new RecoveryCore(nodes, placement, order, options, log, gate);
    this.resyncer = new Resync(this.core);
    this.rebalancer = new Rebalance(this.core, this.resyncer);
    this.rejoin = new Rejoin(this.core, this.resyncer, () => this.rebalancer.nodeBack());
  }

  // ------------------------------------------------------------ outage log

  /** `node` missed a write of `key`: it must be brought up to date before it serves it again. */
  missed(node: number, key: Buffer): void {
    const core = this.core;
    const s = core.state[node]!;
    if (s.overflow) return;
    this.seq = Math.max(this.seq + 1, Date.now() * 1024);
    s.missed.set(key.toString('latin1'), this.seq);
    if (s.missed.size > core.options.outageLogMax) {
      core.log.warn({ node: core.nodes[node]!.label }, 'outage log overflowed');
      return this.missedFlush(node);
    }
    // A node that is still up (one write timed out, say) is fixed in the background now;
    // a node that is down is fixed by its rejoin. Until the fix, the other processes must not
    // read its copy either: the miss is a fence for them (the ack waits for it, see ack).
    if (core.nodes[node]!.isUp && core.gate.fenceKnown !== undefined) {
      core.gate.fenced(node, key.toString('latin1'), this.seq);
    }
    this.rejoin.fixSoon(node);
  }

  /** `node` missed a flush_all: everything on it may be stale. */
  missedFlush(node: number): void {
    const s = this.core.state[node]!;
    s.missed = new Map();
    s.overflow = true;
    // Only a rejoin can fence this (by flushing): take a node that is up out of service.
    this.core.nodes[node]!.markDownNow('missed a flush or too many writes');
  }

  /**
   * Whether an acknowledged write may have to wait for the other processes
   * (see afterKnown): never alone, and with several only while a node is out
   * of service here or a fence of this process is not yet known. Cheap: it
   * comes first on every write.
   */
  get confirming(): boolean {
    const { gate, members } = this.core;
    if (gate.downKnown === undefined) return false;
    return gate.fencesPending === true || !members.every((n) => n.isUp);
  }

  /**
   * Run `then` (the ack of a write of `key`) once every other process knows
   * what this one knows of the key's replicas: those out of service here are
   * out of service there (RejoinGate.downKnown), and the copies a write
   * missed on a node still up are fenced there (fenceKnown). So no other
   * process reads a copy that missed the write after the client saw the ack.
   */
  afterKnown(key: Buffer, then: () => void): void {
    const { gate, nodes } = this.core;
    const ks = key.toString('latin1');
    let left = 1;
    const one = (): void => {
      if (--left === 0) then();
    };
    for (const n of this.core.replicaSet(key)) {
      left++;
      if (!nodes[n]!.isUp) gate.downKnown!(n, one);
      else if (gate.fenceKnown !== undefined) gate.fenceKnown(n, ks, one);
      else one();
    }
    one();
  }

  // ------------------------------------------------------------------ trust

  /**
   * Whether any node that is up has a copy not to trust (fenced or pending
   * keys, or waiting for other processes): the routes check `trusts` only then.
   */
  get anyDistrusted(): boolean {
    const { state, nodes } = this.core;
    for (let i = 0; i < state.length; i++) {
      const s = state[i]!;
      if (s.fenced.size > 0 || s.waiting || (s.missed.size > 0 && nodes[i]!.isUp)) return true;
    }
    return false;
  }

  /**
   * Whether `node`'s copy of `key` may be read, or decide a conditional write:
   * not fenced, no missed write of it pending there, not waiting for other
   * processes to replay.
   */
  trusts(node: number, key: Buffer): boolean {
    const s = this.core.state[node]!;
    if (s.waiting) return false;
    if (s.fenced.size === 0 && s.missed.size === 0) return true;
    return this.core.trusts(node, key.toString('latin1'));
  }

  /** Whether `node` holds every acknowledged write outside its log and fences. */
  complete(node: number): boolean {
    return this.core.state[node]!.complete;
  }

  /**
   * A write replaced `node`'s copy of `key` whole: it can be trusted again,
   * and nothing it missed before is owed to it.
   */
  unfence(node: number, key: Buffer): void {
    const s = this.core.state[node]!;
    if (s.fenced.size === 0 && s.missed.size === 0) return;
    const ks = key.toString('latin1');
    this.core.unfenceKey(node, ks);
    // Only while the node is up: a rejoin's replay decides for a node that is down.
    if (this.core.nodes[node]!.isUp && !s.rejoining && s.missed.delete(ks)) {
      this.core.gate.unfenced(node, ks);
    }
  }

  /**
   * Another process fenced `ks` on `node` after it missed the write stamped
   * `seq` there (its stamps compare with ours). Unknown (an older peer): the
   * copy counts as older than any.
   */
  remoteFence(node: number, ks: string, seq = Number.MAX_SAFE_INTEGER): void {
    const f = this.core.state[node]!.fenced;
    if ((f.get(ks) ?? 0) < seq) f.set(ks, seq);
  }

  /** Another process learnt whether `node` is complete (emptied, or refilled by its re-sync). */
  remoteComplete(node: number, complete: boolean): void {
    const s = this.core.state[node]!;
    s.complete = complete;
    // Emptied while this process re-syncs it: what was copied so far may be gone.
    if (!complete && s.resync === 'running') s.resyncAgain = true;
  }

  // ------------------------------------------------------- rejoin and resync

  /** A down node answered its probe (`restarted` null: its first answer since start). */
  onProbe(node: BackendNode, restarted: boolean | null): void {
    this.rejoin.onProbe(node, restarted);
  }

  /** `node` was taken out of service. */
  onDown(node: number): void {
    this.core.state[node]!.waiting = false;
    this.core.gate.down(node);
  }

  /** `node` restarted (a new process, empty): it is refilled. */
  restarted(node: number): void {
    this.core.incomplete(node);
    this.resync(node);
  }

  /** Refill `node` from the other nodes in the background (see Resync). */
  resync(node: number): void {
    this.resyncer.run(node);
  }

  // ------------------------------------------------------------- placement

  /** Nodes were added to the proxy's list (a reload): each gets its recovery state. */
  added(): void {
    this.core.added();
  }

  /**
   * `node` is new to the ring (or came back to it): what it holds cannot be
   * vouched for, so it is out of service until it has been flushed (its
   * rejoin), then refilled by its re-sync; writes skip it meanwhile.
   */
  joining(node: number): void {
    this.core.nodes[node]!.markDownNow('new in the ring: flushed and refilled before it serves');
    this.missedFlush(node);
    this.core.state[node]!.fenced = new Map();
    this.core.incomplete(node);
  }

  /** A reload moved the keys (Placement.begin): copy them, then end the move (Rebalance). */
  rebalance(hooks: MoveHooks): void {
    this.rebalancer.start(hooks);
  }

  /** The rebalance's state (stats `proxy_rebalance`). */
  get rebalanceState(): RebalanceState {
    return this.rebalancer.state;
  }

  /** Whether a move is under way (a reload that changes placement must wait for it). */
  get moving(): boolean {
    return this.rebalancer.active;
  }

  /** A node left the ring for good: forget its recovery state. */
  retired(node: number): void {
    const s = this.core.state[node]!;
    s.missed = new Map();
    s.fenced = new Map();
    s.overflow = false;
  }

  // ------------------------------------------------------------------ stats

  rows(): [string, string | number][] {
    const r = this.rebalancer;
    const out: [string, string | number][] = [
      ['proxy_rebalance', r.state],
      ['proxy_rebalance_scanned', r.scanned],
      ['proxy_rebalance_copied', r.copied],
      ['proxy_rebalance_failed', r.failed],
      ['proxy_rebalance_deleted', r.deleted],
    ];
    for (const { index: i } of this.core.members) {
      const s = this.core.state[i]!;
      out.push([`proxy_node_${i}_outage_log`, s.overflow ? 'overflow' : s.missed.size]);
      out.push([`proxy_node_${i}_fenced_keys`, s.fenced.size]);
      out.push([`proxy_node_${i}_complete`, s.complete ? 1 : 0]);
      out.push([`proxy_node_${i}_rejoins`, s.rejoins]);
      out.push([`proxy_node_${i}_rejoin_waiting`, s.waiting ? 1 : 0]);
      out.push([`proxy_node_${i}_rejoin_replayed`, s.replayed]);
      out.push([`proxy_node_${i}_rejoin_flushes`, s.flushes]);
      out.push([`proxy_node_${i}_resync`, s.resync]);
      out.push([`proxy_node_${i}_resyncs`, s.resyncRun]);
      out.push([`proxy_node_${i}_resync_scanned`, s.resyncScanned]);
      out.push([`proxy_node_${i}_resync_copied`, s.resyncCopied]);
      out.push([`proxy_node_${i}_resync_failed`, s.resyncFailed]);
    }
    const gate = this.core.gate.rows?.();
    if (gate !== undefined) out.push(...gate);
    return out;
  }

  /** Re-sync state of a node (for tests and stats). */
  resyncState(node: number): ResyncState {
    return this.core.state[node]!.resync;
  }

  /** Re-syncs of a node started so far (tells a finished new run from an old one). */
  resyncRuns(node: number): number {
    return this.core.state[node]!.resyncRun;
  }

  close(): void {
    this.core.close();
  }
}
