/**
 * Rebalance: a reload changed where keys live (Placement.begin). Every key
 * is copied to the replicas it gained, then the move ends, then the copies
 * left on nodes that no longer hold their key are deleted.
 *
 * - Copy: the members that are up list their keys (metadump, twice: see
 *   resync.ts); each key whose new replica set has a node its old set lacks
 *   is copied there from an old replica, as re-sync copies (Resync.copy: add
 *   mode, value, flags, remaining TTL, under KeyOrder, at `resyncRate`). A
 *   node new to the ring is emptied and refilled by its own re-sync instead
 *   (Recovery.joining): its content cannot be vouched for.
 * - Commit: once every listing was complete, every copy went through, and
 *   every node of the new placement is up and complete, the move ends
 *   (`commit`): only the new replica sets are used from then on.
 * - Clean-up: each node of the old placement lists its keys again (twice)
 *   and deletes those it no longer holds, each under KeyOrder; nodes that
 *   left the ring are flushed and closed (`retire`). So a later resize that
 *   gives a key back to a node never finds an old copy there to serve.
 *
 * A run that fails (a node down, a listing or a copy failed) ends `failed`
 * and runs again later, from the phase it was in; the move stays under way
 * meanwhile, so nothing is lost whatever fails in between.
 */

import { CopyPass, type KeyList } from './copy-pass.js';
import { encodeMeta } from '../protocol/encoder.js';
import { KeySet } from './key-set.js';
import { answered } from './reply-rules.js';
import { RESYNC_RETRY_MS, type RecoveryCore } from './recovery-core.js';
import { type Resync, keysOf } from './resync.js';

export type RebalanceState = 'idle' | 'running' | 'done' | 'failed';

const RETRY_MAX_MS = 30_000;
/** How often the commit looks again whether the new nodes are refilled. */
const READY_POLL_MS = 100;

/** What the proxy does at the move's two turns. */
export interface MoveHooks {
  /** The new placement's nodes: the move ends once each is up and complete. */
  readonly targets: readonly number[];
  /** The old placement's nodes that stay in the ring: they lose keys, cleaned up after commit. */
  readonly losers: readonly number[];
  /** End the move: the new placement alone is used from now on. */
  commit(): void;
  /** The nodes that left the ring: flushed and closed (after the clean-up). */
  retire(done: () => void): void;
}

export class Rebalance {
  private readonly core: RecoveryCore;
  private readonly resync: Resync;
  private hooks: MoveHooks | null = null;
  private run = 0;
  private committed = false;
  private retryMs = RESYNC_RETRY_MS;
  private waitingLogged = false;
  state: RebalanceState = 'idle';
  scanned = 0;
  copied = 0;
  failed = 0;
  deleted = 0;

  constructor(core: RecoveryCore, resync: Resync) {
    this.core = core;
    this.resync = resync;
  }

  /** Whether a move is under way (from begin until its clean-up is done). */
  get active(): boolean {
    return this.hooks !== null;
  }

  /** Start moving keys: the placement has begun the move. */
  start(hooks: MoveHooks): void {
    this.hooks = hooks;
    this.committed = false;
    this.retryMs = RESYNC_RETRY_MS;
    this.scanned = this.copied = this.failed = this.deleted = 0;
    this.core.log.info({ losers: hooks.losers.length }, 'rebalance started');
    this.again();
  }

  /** A node serves again: a run that failed for want of it may finish now. */
  nodeBack(): void {
    if (this.state === 'failed') this.again();
  }

  private again(): void {
    const run = ++this.run;
    this.state = 'running';
    if (this.committed) this.cleanUp(run);
    else this.copyAll(run);
  }

  private current(run: number): boolean {
    return this.run === run && this.state === 'running' && !this.core.closed;
  }

  // ------------------------------------------------------------------- copy

  private copyAll(run: number): void {
    const seen = new KeySet();
    const members = this.core.members.map((n) => n.index);
    const moved = (k: Buffer): boolean => this.gained(k, false).length > 0;
    this.list(run, members, seen, moved, (ok) => {
      const first = seen.size;
      this.pass(run, keysOf(seen, 0, first, []), (ok2) =>
        // The second listing finds what the crawler skipped the first time.
        this.list(run, members, seen, moved, (ok3) =>
          this.pass(run, keysOf(seen, first, seen.size, []), (ok4) => {
            if (ok && ok2 && ok3 && ok4) this.whenReady(run);
            else this.fail(run, 'a listing or a copy failed, or a node was down');
          }),
        ),
      );
    });
  }

  /** Copy `keys` to the replicas each gained; `cb(ok)`. */
  private pass(run: number, keys: KeyList, cb: (ok: boolean) => void): void {
    if (!this.current(run)) return;
    const pass = new CopyPass(this.core, keys, (key, done) => this.copyKey(key, done), {
      live: () => this.current(run),
      copied: (ok) => {
        if (ok) this.copied++;
        else this.failed++;
      },
      onEnd: (failed) => cb(failed.length === 0),
      onStop: () => {},
    });
    pass.pump();
  }

  /**
   * Copy `key` to each node its new replica set has and its old one lacks.
   * A node that is not complete (new to the ring, refilling) is left to its
   * own re-sync.
   */
  private copyKey(key: Buffer, cb: (ok: boolean) => void): void {
    const gained = this.gained(key, true);
    if (gained.length === 0) return cb(true);
    let left = gained.length;
    let ok = true;
    for (const n of gained) {
      this.resync.copy(n, key, (r) => {
        ok &&= r;
        if (--left === 0) cb(ok);
      });
    }
  }

  /** The nodes `key` gained (in its new replica set, not in its old); `complete` ones only. */
  private gained(key: Buffer, complete: boolean): number[] {
    const { placement, state } = this.core;
    const owners = placement.owners(key);
    const out: number[] = [];
    for (const n of placement.target(key)) {
      if (!owners.includes(n) && (!complete || state[n]!.complete)) out.push(n);
    }
    return out;
  }

  /** End the move once every node of the new placement is up and complete. */
  private whenReady(run: number): void {
    if (!this.current(run)) return;
    const core = this.core;
    const behind = this.hooks!.targets.map((i) => core.nodes[i]!).filter((n) => {
      const s = core.state[n.index]!;
      return !n.isUp || !s.complete || s.rejoining || s.waiting;
    });
    if (behind.length > 0) {
      if (!this.waitingLogged) {
        this.waitingLogged = true;
        core.log.info(
          { nodes: behind.map((n) => n.label) },
          'rebalance: keys copied; waiting for nodes to be up and refilled',
        );
      }
      return core.later(() => this.whenReady(run), READY_POLL_MS);
    }
    this.waitingLogged = false;
    this.committed = true;
    this.hooks!.commit();
    core.log.info({ copied: this.copied, scanned: this.scanned }, 'rebalance: move committed');
    this.cleanUp(run);
  }

  // --------------------------------------------------------------- clean-up

  /** Delete, on each node of the old placement, the keys it no longer holds. */
  private cleanUp(run: number): void {
    const losers = this.hooks!.losers;
    let left = losers.length;
    let ok = true;
    const finish = (): void => {
      if (!this.current(run)) return;
      if (!ok) return this.fail(run, 'a clean-up listing or delete failed');
      this.hooks!.retire(() => {
        if (!this.current(run)) return;
        this.state = 'done';
        this.hooks = null;
        this.core.log.info(
          { copied: this.copied, deleted: this.deleted, failed: this.failed },
          'rebalance finished',
        );
      });
    };
    if (left === 0) return finish();
    for (const node of losers) {
      this.cleanNode(run, node, (r) => {
        ok &&= r;
        if (--left === 0) finish();
      });
    }
  }

  private cleanNode(run: number, node: number, cb: (ok: boolean) => void): void {
    const seen = new KeySet();
    const left = (k: Buffer): boolean => !this.core.placement.replicaSet(k).includes(node);
    this.list(run, [node], seen, left, (ok) => {
      const first = seen.size;
      this.deleteAll(run, node, keysOf(seen, 0, first, []), (ok2) =>
        this.list(run, [node], seen, left, (ok3) =>
          this.deleteAll(run, node, keysOf(seen, first, seen.size, []), (ok4) =>
            cb(ok && ok2 && ok3 && ok4),
          ),
        ),
      );
    });
  }

  private deleteAll(run: number, node: number, keys: KeyList, cb: (ok: boolean) => void): void {
    if (!this.current(run)) return;
    const core = this.core;
    const pass = new CopyPass(
      core,
      keys,
      (key, done) => {
        if (core.placement.replicaSet(key).includes(node)) return done(true);
        core.holding(key, done, (hash, end: (ok: boolean) => void) =>
          core.direct(node, hash, encodeMeta('md', key, ''), (r) => {
            if (answered(r)) this.deleted++;
            end(answered(r));
          }),
        );
      },
      {
        live: () => this.current(run) && core.nodes[node]!.isUp,
        copied: (ok) => {
          if (!ok) this.failed++;
        },
        onEnd: (failed) => cb(failed.length === 0),
        onStop: () => cb(false),
      },
    );
    pass.pump();
  }

  // ----------------------------------------------------------------- common

  /**
   * List the keys of `nodes` that `keep` wants into `seen`; `cb(false)` if
   * one is down or its listing failed.
   */
  private list(
    run: number,
    nodes: readonly number[],
    seen: KeySet,
    keep: (key: Buffer) => boolean,
    cb: (ok: boolean) => void,
  ): void {
    if (!this.current(run)) return;
    const core = this.core;
    const up = nodes.filter((n) => core.nodes[n]!.isUp);
    let ok = up.length === nodes.length;
    let left = up.length;
    if (left === 0) return cb(ok);
    for (const n of up) {
      this.resync.listRetry(
        core.nodes[n]!.address,
        (k) => {
          this.scanned++;
          if (keep(k)) seen.add(k);
        },
        (err) => {
          if (err !== null) {
            ok = false;
            core.log.warn(
              { node: core.nodes[n]!.label, err: err.message },
              'rebalance: cannot list keys',
            );
          }
          if (--left === 0) cb(ok);
        },
      );
    }
  }

  private fail(run: number, reason: string): void {
    if (!this.current(run)) return;
    this.state = 'failed';
    const delay = this.retryMs;
    this.retryMs = Math.min(delay * 2, RETRY_MAX_MS);
    this.core.log.warn({ reason, retryInMs: delay }, 'rebalance failed; it runs again');
    this.core.later(() => {
      if (this.run === run && this.state === 'failed') this.again();
    }, delay);
  }
}
