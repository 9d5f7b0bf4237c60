/**
 * Where each key lives: its replica set on the ring, and, while a reload
 * moves keys from one ring (or replica count) to another, on both.
 *
 * During a move the old placement holds every acknowledged write (writes
 * reach both), the new one only what writes, read repairs and the rebalance
 * (rebalance.ts) put there so far. So a key's replica set is the union, old
 * replicas first: reads and conditional writes are decided by a copy that
 * is known current, writes reach every node of either placement, and a miss
 * counts as true only on the old replicas (`owners`). Once the rebalance has
 * copied every key to its new replicas, `commit()` ends the move.
 *
 * Outside a move the sets are the ring's own shared arrays, so a lookup
 * allocates nothing (the move's unions are built per lookup).
 */

import type { BackendNode } from '../backend/node.js';
import type { Ring } from './ring.js';

export class Placement {
  private ring: Ring;
  private replicas: number;
  private prior: { ring: Ring; replicas: number } | null = null;
  /** The nodes of the ring(s) in force, by index (a retired node is not one). */
  members: readonly BackendNode[];

  constructor(ring: Ring, replicas: number, members: readonly BackendNode[]) {
    this.ring = ring;
    this.replicas = replicas;
    this.members = members;
  }

  /** The ring keys are moving to (or are on, outside a move). */
  get targetRing(): Ring {
    return this.ring;
  }

  get moving(): boolean {
    return this.prior !== null;
  }

  /** Copies of each key once any move is done. */
  get copies(): number {
    return this.replicas;
  }

  /** Every node a key's copies belong on now, primary first (shared: never change it). */
  replicaSet(key: Uint8Array): Uint16Array {
    const set = this.ring.replicas(key, this.replicas);
    const prior = this.prior;
    if (prior === null) return set;
    const old = prior.ring.replicas(key, prior.replicas);
    let extra = 0;
    for (let i = 0; i < set.length; i++) if (!old.includes(set[i]!)) extra++;
    if (extra === 0) return old;
    const out = new Uint16Array(old.length + extra);
    out.set(old);
    let n = old.length;
    for (let i = 0; i < set.length; i++) if (!old.includes(set[i]!)) out[n++] = set[i]!;
    return out;
  }

  /** The replicas that hold every acknowledged write of a key: the old ones during a move. */
  owners(key: Uint8Array): Uint16Array {
    const prior = this.prior;
    return prior === null
      ? this.ring.replicas(key, this.replicas)
      : prior.ring.replicas(key, prior.replicas);
  }

  /** The key's replicas once the move is done. */
  target(key: Uint8Array): Uint16Array {
    return this.ring.replicas(key, this.replicas);
  }

  /** Start moving to `ring` with `replicas` copies; `members`: every node of either ring. */
  begin(ring: Ring, replicas: number, members: readonly BackendNode[]): void {
    if (this.prior !== null) throw new Error('a move is already under way');
    this.prior = { ring: this.ring, replicas: this.replicas };
    this.ring = ring;
    this.replicas = replicas;
    this.members = members;
  }

  /** The move is done: only the new placement is left. `members`: the new ring's nodes. */
  commit(members: readonly BackendNode[]): void {
    this.prior = null;
    this.members = members;
  }
}
