/**
 * This member's fences in etcd (`fences/<L>/<hex key>`, value
 * `<member> <stamp>`): puts and deletes queued here and made in batches, one
 * transaction per batch, in order with the gate's other operations. An ack
 * that depends on a fence (a write failed on a node that stays up) waits
 * for it in `holds` until the watch shows it, so no member reads that copy
 * after the client saw the ack. Only this member's own fence is ever
 * deleted: another member's stands until that member trusts the copy.
 */

import type { AckHolds } from './ack-holds.js';

/** Fence puts and deletes per transaction (etcd allows 128 operations in one). */
const FENCE_BATCH = 100;

/** What the board needs of the gate. */
export interface FenceStore {
  /** This member's id (a fence's value starts with it; a new one after a lost lease). */
  memberId(): string;
  /** The value and revision the watch shows at `k` (relative to the prefix). */
  shown(k: string): { value: string; mod: number } | undefined;
  /** Run `op` in order with the gate's other etcd operations (retried if it throws). */
  queue(op: () => Promise<void>): void;
  /** Put (a value) or delete (null) each key in one transaction; its revision. */
  commit(ops: readonly [string, string | null][]): Promise<number>;
}

export class FenceBoard {
  private readonly store: FenceStore;
  private readonly holds: AckHolds;
  /** Changes to make: key -> value to put, or null to delete. */
  private readonly ops = new Map<string, string | null>();
  /** This member's fences put, or to put, that the watch has not shown yet, with their value. */
  private readonly unseen = new Map<string, string>();
  /** A publish operation is queued or running. */
  private draining = false;

  constructor(store: FenceStore, holds: AckHolds) {
    this.store = store;
    this.holds = holds;
  }

  /** Fences of this member that etcd does not show yet. */
  get unpublished(): number {
    return this.unseen.size;
  }

  /** Fence `k` with the stamp `seq`. */
  put(k: string, seq: number): void {
    const value = `${this.store.memberId()} ${seq}`;
    this.unseen.set(k, value);
    this.change(k, value);
  }

  /** This member trusts the copy at `k` again. */
  withdraw(k: string): void {
    const put = this.unseen.get(k);
    if (put !== undefined) {
      // The copy is current again: an ack waiting for the fence has nothing left to wait for.
      this.unseen.delete(k);
      this.holds.release(k);
    }
    const shown = this.store.shown(k)?.value;
    if (put !== undefined || shown?.startsWith(`${this.store.memberId()} `) === true)
      this.change(k, null);
    else this.ops.delete(k);
  }

  /** Run `then` once the fence at `k` is shown (at once if none of this member's is under way). */
  known(k: string, then: () => void): void {
    if (!this.unseen.has(k)) return then();
    this.holds.hold(k, then);
  }

  /** The watch shows a fence at `k`: an ack waiting for this member's put of it may go. */
  shown(k: string): void {
    if (!this.unseen.has(k) || typeof this.ops.get(k) === 'string') return;
    this.unseen.delete(k);
    this.holds.release(k);
  }

  private change(k: string, value: string | null): void {
    this.ops.set(k, value);
    if (this.draining) return;
    this.draining = true;
    this.store.queue(() => this.publish());
  }

  /**
   * Make the queued changes, a batch per transaction, until none is left. A
   * failure leaves the rest queued, and the operation runs again.
   */
  private async publish(): Promise<void> {
    while (this.ops.size > 0) {
      const batch: [string, string | null][] = [];
      for (const op of this.ops) if (batch.push(op) === FENCE_BATCH) break;
      const rev = await this.store.commit(batch);
      for (const [k, v] of batch) {
        if (this.ops.get(k) === v) this.ops.delete(k);
        // The watch may have shown the put before this answer came.
        if (v !== null && (this.store.shown(k)?.mod ?? 0) >= rev) this.shown(k);
      }
    }
    this.draining = false;
  }
}
