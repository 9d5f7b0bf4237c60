/**
 * Fenced rejoin: a node that was down, hung or partitioned never serves an
 * old or a deleted session when it comes back.
 *
 * When a down node answers its probe it does not serve yet. Each key in its
 * outage log is first brought up to date on it (`fence`): the replica that
 * missed the least (the earliest stamp, see Recovery) holds the newest copy,
 * which is copied to the others (item.ts), holding the key so no client
 * command interleaves. Keys logged meanwhile are replayed too; the node
 * serves again once the log is empty. An overflowed log takes the safe path instead: the
 * node is flushed and refills (re-sync). A key whose newest copy may be on a
 * replica that is still down is fenced on the others until it returns.
 *
 * The same replay fixes, in the background, keys a node that stayed up
 * missed (one write timed out, say); until then reads do not use its copy.
 *
 * With several processes (workers, see RejoinGate) each replays its own
 * log; the node then takes this process's writes but serves no reads here
 * until every process has replayed.
 */

import type { BackendNode } from '../backend/node.js';
import { EXPECT_LINE, equals } from '../protocol/response-parser.js';
import { casOf, itemChanged, readItem, storeIfUnchanged } from './item.js';
import { answered } from './reply-rules.js';
import type { RecoveryCore } from './recovery-core.js';
import type { Resync } from './resync.js';

/** How a fence ended: done, failed on the node being fenced, or failed on another replica. */
type FenceResult = 'ok' | 'node' | 'other';
/** Replay rounds before what is still logged is fenced instead (see replay). */
const REJOIN_ROUNDS = 4;
/** Wait between a probe's answer and the replay (see onProbe). */
const REJOIN_GRACE_MS = 150;
/** Wait before fixing keys a node that is up missed, so a burst is fixed in one round. */
const FIX_DELAY_MS = 20;
/** Wait before fixing again what a failed background fix left. */
const FIX_RETRY_MS = 1000;
/** Attempts at a copy that a write from another process keeps crossing (see copyItem). */
const COPY_TRIES = 3;
/** Copies in flight during a replay. */
const WINDOW = 32;
const FLUSH = Buffer.from('flush_all\r\n');

export class Rejoin {
  private readonly core: RecoveryCore;
  private readonly resync: Resync;

  /** `onServing`: a node serves again (a rebalance waiting for it may go on). */
  private readonly onServing: () => void;

  constructor(core: RecoveryCore, resync: Resync, onServing: () => void = () => {}) {
    this.core = core;
    this.resync = resync;
    this.onServing = onServing;
  }

  /** Fix what `node` missed in the background soon, if it is up (a down node waits for its rejoin). */
  fixSoon(node: number): void {
    const s = this.core.state[node]!;
    if (s.fixing || s.rejoining || !this.core.nodes[node]!.isUp) return;
    s.fixing = true;
    this.core.later(() => this.fix(node), FIX_DELAY_MS);
  }

  private fix(node: number): void {
    const s = this.core.state[node]!;
    const target = this.core.nodes[node]!;
    if (this.core.closed || !target.isUp || s.rejoining) {
      s.fixing = false;
      return;
    }
    this.replay(
      target,
      () => {
        s.fixing = false;
        // Whatever is left (the node failed again) is tried again shortly while the node is up.
        if (s.missed.size > 0 && !s.overflow) {
          s.fixing = true;
          this.core.later(() => this.fix(node), FIX_RETRY_MS);
        }
      },
      Infinity,
    );
  }

  /**
   * A down node answered its probe. `restarted` null: its first answer since
   * this process started (see firstContact).
   */
  onProbe(node: BackendNode, restarted: boolean | null): void {
    const s = this.core.state[node.index]!;
    if (this.core.closed) return;
    if (restarted === null) restarted = this.firstContact(node);
    if (s.rejoining) {
      s.reprobe = restarted || s.reprobe === true;
      return;
    }
    s.rejoining = true;
    s.rejoins++;
    // A node that was hung still holds requests msproxy gave up on, buffered on connections it
    // since closed; it runs them as it wakes, possibly on other threads than the probe's. Let
    // them drain first, or one could land after the replay and undo it.
    this.core.later(() => this.rejoin(node, restarted), REJOIN_GRACE_MS);
  }

  /**
   * A node that was down or hung when this process started answers for the
   * first time. What it missed while msproxy was not running (or was running
   * with the log that died with it) is unknown: it may hold sessions since
   * changed or deleted, or be empty. When every other node answered at start
   * and is up, they hold every key's other copy, so this node is flushed at
   * its rejoin and refilled, as after an outage log overflow. Otherwise a
   * flush could take the last copy of some keys (their other node is not up,
   * or was itself unreachable at start), so the node is taken as it is, its
   * outage log replayed, but not complete: a miss there is not taken as true
   * until a re-sync has refilled it (it may have restarted empty meanwhile).
   * Returns `restarted` for the rejoin.
   */
  private firstContact(node: BackendNode): boolean {
    const core = this.core;
    const others = core.members.every((n) => n === node || (n.isUp && n.answeredAtStart));
    if (!others) {
      core.log.warn(
        { node: node.label },
        'node answers for the first time since msproxy started, and not every other node ' +
          'answered at start and is up: served as it is, and re-synced',
      );
      core.incomplete(node.index);
      return false;
    }
    core.log.warn(
      { node: node.label },
      'node answers for the first time since msproxy started: it is flushed and re-synced, ' +
        'as what it missed before is unknown',
    );
    const s = core.state[node.index]!;
    s.missed = new Map();
    s.overflow = true;
    return false;
  }

  private rejoin(node: BackendNode, restarted: boolean): void {
    const core = this.core;
    const s = core.state[node.index]!;
    if (core.closed) return;
    const done = (ok: boolean, reason: string, refill: boolean): void => {
      if (!ok) {
        s.rejoining = false;
        return node.probeLater(reason);
      }
      if (!core.gate.shared) {
        s.rejoining = false;
        node.markUp();
        return this.serving(node.index, refill);
      }
      // Other processes have logs of their own: take writes again (so this log stops
      // growing), keep reads off the node, and wait until every process has replayed.
      s.waiting = true;
      node.markUp();
      this.replay(
        node,
        (caughtUp) => {
          s.rejoining = false;
          if (!node.isUp) {
            // Taken down during the replay (here or in another worker): rejoin again.
            const again = s.reprobe;
            s.reprobe = null;
            if (again !== null) this.onProbe(node, again || refill);
            return;
          }
          if (!caughtUp) return node.markDownNow('rejoin replay failed');
          core.gate.ready(node.index, () => {
            if (!s.waiting || !node.isUp) return;
            s.waiting = false;
            core.log.info({ node: node.label }, 'node serves reads again (every worker replayed)');
            this.serving(node.index, refill);
          });
        },
        Infinity,
      );
    };
    // Alone, replay with the node out of service; shared, `done` replays with writes let through.
    const catchUp = (refill: boolean): void => {
      if (refill) core.incomplete(node.index);
      if (core.gate.shared) return done(true, '', refill);
      this.replay(node, (ok) => done(ok, 'replay failed', refill));
    };
    if (s.overflow) {
      // Too much was missed to replay: empty the node and let it refill.
      node.sendDirect(0, FLUSH, EXPECT_LINE, (err, r) => {
        if (err !== null || r === null || !equals(r.line, 'OK')) {
          return done(false, 'flush failed', false);
        }
        s.overflow = false;
        s.missed = new Map();
        s.fenced = new Map();
        s.flushes++;
        core.log.warn({ node: node.label }, 'node flushed on rejoin (outage log overflowed)');
        catchUp(true);
      });
      return;
    }
    catchUp(restarted);
  }

  /** `node` serves again (after its rejoin): fix what waited for it, refill it if it was empty. */
  private serving(node: number, refill: boolean): void {
    const core = this.core;
    this.refixFenced();
    // A re-sync cut short by the node going down has keys still to copy: it runs again too.
    const s = core.state[node]!;
    const unfinished = s.resync === 'failed' || !s.complete;
    if ((refill || unfinished) && core.options.resyncRate > 0) this.resync.run(node);
    // A source is back: a re-sync that could not list its keys can now finish.
    core.state.forEach((o, i) => {
      if (i !== node && o.resync === 'failed' && core.nodes[i]!.isUp) this.resync.run(i);
    });
    this.onServing();
  }

  /** A node came back: keys fenced elsewhere may have a source again. */
  private refixFenced(): void {
    this.core.state.forEach((s, i) => {
      if (s.fenced.size === 0) return;
      for (const [k, seq] of s.fenced) if ((s.missed.get(k) ?? 0) < seq) s.missed.set(k, seq);
      this.fixSoon(i);
    });
  }

  /**
   * Bring every logged key up to date on `node`, until the log is empty.
   * A key stays in the log until it is fixed, so reads keep off the node's
   * copy meanwhile. Calls back false if the node fails (what is not fixed
   * stays logged).
   */
  private replay(node: BackendNode, cb: (ok: boolean) => void, rounds = REJOIN_ROUNDS): void {
    const core = this.core;
    const s = core.state[node.index]!;
    const pending = [...s.missed];
    if (pending.length === 0) return cb(true);
    let next = 0;
    let active = 0;
    let failed = false;
    // Out of the log, unless a later miss of the key was logged meanwhile.
    const settled = (ks: string, seq: number): boolean =>
      s.missed.get(ks) === seq && s.missed.delete(ks);
    const one = (ks: string, seq: number, res: FenceResult): void => {
      active--;
      if (res === 'ok') {
        s.replayed++;
        // Fixed: the fence a miss on a node that is up published goes, unless one stands.
        if (settled(ks, seq) && !s.fenced.has(ks)) core.gate.unfenced(node.index, ks);
      } else if (res === 'other') {
        // Another replica failed: this node's copy cannot be checked now. Fenced, it does not
        // hold up the rejoin; the next node-up or miss fixes it.
        core.fenceKey(node.index, ks, seq);
        settled(ks, seq);
      } else {
        failed = true;
      }
      pump();
    };
    const end = (): void => {
      if (failed || s.overflow) return cb(false); // overflowed meanwhile: the next probe flushes
      if (s.missed.size === 0) return cb(true);
      // Keys logged while this round ran: another round. Under a steady write load that may
      // never end, so after a few rounds the rest is fenced and fixed in the background.
      if (rounds > 1) return this.replay(node, cb, rounds - 1);
      for (const [ks, seq] of s.missed) core.fenceKey(node.index, ks, seq);
      s.missed.clear();
      cb(true);
    };
    // A key whose partners are all down is settled at once, inside fence(). Its callback must
    // not start the next key from within this loop, or a long log of such keys overflows the
    // stack: the loop goes on instead. The round ends when nothing is in flight and nothing
    // more will start, which happens once.
    let pumping = false;
    const pump = (): void => {
      if (pumping) return;
      pumping = true;
      while (!failed && active < WINDOW && next < pending.length) {
        const [ks, seq] = pending[next++]!;
        active++;
        this.fence(node.index, Buffer.from(ks, 'latin1'), seq, (res) => one(ks, seq, res));
      }
      pumping = false;
      if (active === 0) end();
    };
    pump();
  }

  /**
   * Make the replicas of `key` agree after `node` missed the write stamped
   * `seq`. Each replica's last missed write (its log or fence entry, this
   * process's or another's) says how fresh it is: one that missed only
   * earlier writes received every acknowledged write after them. So the up
   * replica with the earliest stamp holds the newest copy; it is copied to
   * the others that are up. If a replica that is down missed less still, the
   * copies that are up may be older than it: they are fenced until it returns
   * (or a write replaces them). So are the copies older than a best one that
   * waits for other processes (RejoinGate). Only a copy known to hold every
   * acknowledged write but the ones it missed can be the best: a complete
   * replica, and during a move one of the old placement. A node being
   * refilled, or new to the key, may lack it without having missed a write.
   */
  private fence(node: number, key: Buffer, seq: number, cb: (res: FenceResult) => void): void {
    const core = this.core;
    core.holding(key, cb, (hash, finish: (res: FenceResult) => void) => {
      const ks = key.toString('latin1');
      const owners = core.owners(key);
      const vouched = (n: number): boolean => core.state[n]!.complete && owners.includes(n);
      let best = vouched(node) ? node : -1;
      let bestSeq = best < 0 ? Infinity : Math.max(seq, core.state[node]!.lastMissed(ks));
      let downBest = Infinity;
      const up: number[] = [];
      for (const n of core.replicaSet(key)) {
        if (n === node) continue;
        const m = core.state[n]!.lastMissed(ks);
        if (!core.nodes[n]!.isUp) {
          if (vouched(n)) downBest = Math.min(downBest, m);
          continue;
        }
        up.push(n);
        // On a tie both missed the same write (its outcome was unknown): either copy will do.
        if (vouched(n) && m <= bestSeq) {
          best = n;
          bestSeq = m;
        }
      }
      // No copy that can be vouched for is up: nothing to copy from. The node's copy is
      // fenced, as when a partner fails, and fixed when one comes back.
      if (best < 0) return finish('other');
      const targets = [node, ...up].filter((n) => n !== best);
      // A node still waiting for other processes to replay may lack their writes, which
      // reached the other replicas and which this process knows nothing of yet: copied over
      // them, it would undo those. The copies older than it (by what this process knows) are
      // fenced instead, everywhere, and fixed once it serves again.
      if (targets.length > 0 && core.state[best]!.waiting) {
        for (const t of targets) {
          const m = core.state[t]!.lastMissed(ks);
          if (m > bestSeq) core.fenceKey(t, ks, m);
        }
        return finish('ok');
      }
      const settle = (ok: boolean, failedNode = -1): void => {
        if (!ok) return finish(failedNode === node ? 'node' : 'other');
        for (const n of [node, ...up]) {
          core.unfenceKey(n, ks);
          // A replica down that missed less may hold newer: fence every copy that is up.
          if (downBest < bestSeq) core.fenceKey(n, ks, bestSeq);
        }
        finish('ok');
      };
      if (targets.length === 0) return settle(true);
      this.copyItem(best, targets, key, hash, settle);
    });
  }

  /**
   * Copy `key` from `from` to `to` exactly, or delete it there if `from` has
   * no item. Sent direct: either side may be a node that is not serving yet.
   * A write from another process (a worker, another msproxy) may cross the
   * copy. One that reaches `to` after its item was read here wins: the copy
   * is made only if `to`'s item is unchanged (its cas), as the write may
   * have reached only `to` (`from` down in that process, which logged it).
   * One that lands on `to` before the copy and on `from` after the read
   * would leave `to` older: so `from` is read again afterwards, and if its
   * item changed the copy is made again (a few times at most: past that,
   * writes are reaching every replica anyway).
   */
  private copyItem(
    from: number,
    to: readonly number[],
    key: Buffer,
    hash: number,
    cb: (ok: boolean, failedNode?: number) => void,
    tries = COPY_TRIES,
  ): void {
    const direct = this.core.direct;
    const cas: (string | null)[] = [];
    let left = to.length;
    let failed = -1;
    // Each side's answer arrives once; when the last is in, `next` runs (or the copy fails).
    const gather = (next: () => void) => (): void => {
      if (--left > 0) return;
      if (failed >= 0) return cb(false, failed);
      left = to.length;
      next();
    };
    const copy = (): void =>
      readItem(direct, from, hash, key, (item) => {
        if (item === undefined) return cb(false, from);
        const check = gather(() =>
          itemChanged(direct, from, hash, key, item, (changed) => {
            if (changed === undefined) return cb(false, from);
            if (!changed || tries <= 1) return cb(true);
            this.copyItem(from, to, key, hash, cb, tries - 1);
          }),
        );
        to.forEach((t, i) => {
          const msg = storeIfUnchanged(key, item, cas[i]!);
          if (msg === null) return check();
          // EX, NS or NF: a write reached `t` since its item was read; it stands.
          direct(t, hash, msg, (r) => {
            if (!answered(r)) failed = t;
            check();
          });
        });
      });
    const read = gather(copy);
    to.forEach((t, i) =>
      casOf(direct, t, hash, key, (c) => {
        if (c === undefined) failed = t;
        else cas[i] = c;
        read();
      }),
    );
  }
}
