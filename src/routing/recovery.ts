/**
 * Fenced rejoin and re-sync: what keeps a node that comes back from serving
 * stale, deleted or missing sessions.
 *
 * Contract:
 * - Outage log. The router reports every key a node missed: a write routed
 *   while the node was down, or a write (or copy, touch, delete) that failed
 *   on it. Each node's log is a bounded set of keys; past `outageLogMax` it
 *   is dropped and marked overflowed. A flush_all the node missed also marks
 *   it overflowed.
 * - Fenced rejoin. When a down node answers its probe, it does not serve yet.
 *   Each logged key is first brought up to date on it from a healthy replica
 *   (`mg v f t` there, then `ms F T` on the node, or `md` if the replica has
 *   no item), holding the key in KeyOrder so no client command interleaves.
 *   Keys logged meanwhile are replayed too; the node serves again once the
 *   log is empty. An overflowed log takes the safe path instead: the node is
 *   flushed and refills. A node that was hung or partitioned therefore never
 *   serves an old session or a deleted one.
 * - Re-sync. A node that restarted (new pid or boot time: it is empty) or was
 *   flushed is refilled in the background: the other nodes list their keys
 *   (`lru_crawler metadump all`), and each key whose replica set includes the
 *   node is copied with its value, flags and remaining TTL, in add mode (a
 *   newer write already there wins), under KeyOrder, at `resyncRate` keys/s.
 *   After it, the node holds every key again, so losing the other replica
 *   right after a restart loses nothing.
 * - Several processes (workers, see RejoinGate). Each replays its own log;
 *   a node then takes this process's writes but serves no reads here until
 *   every process has replayed (`ready`, then `go`). Fences are shared; only
 *   the process the gate names runs re-syncs.
 */

import net from 'node:net';
import type { Logger } from 'pino';
import type { BackendNode } from '../backend/node.js';
import { encodeMeta, encodeMetaSet } from '../protocol/encoder.js';
import { EXPECT_LINE, type Reply, equals, startsWith } from '../protocol/response-parser.js';
import { EXCLUSIVE, type KeyOrder, Ticket } from './key-order.js';
import { KeySet } from './key-set.js';
import { keyHash, parseMetaFlags } from './meta.js';
import { LOCAL_GATE, type RejoinGate } from './rejoin-gate.js';
import type { Ring } from './ring.js';

export interface RecoveryOptions {
  replicas: number;
  /** Keys an outage log holds before it overflows (the node is then flushed on rejoin). */
  outageLogMax: number;
  /** Re-sync copy rate, keys per second (0: no re-sync). */
  resyncRate: number;
}

type ResyncState = 'idle' | 'running' | 'done' | 'failed';

class NodeRecovery {
  /** Outage log: key -> sequence number of the latest write of it this node missed. */
  missed = new Map<string, number>();
  /**
   * Keys whose copy here may be older than a replica that is down (it missed a
   * later write than that replica did), with that sequence number. Not read
   * here, never the authority, until checked against that replica or replaced
   * by a write.
   */
  fenced = new Map<string, number>();
  overflow = false;
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
}

/** How a fence ended: done, failed on the node being fenced, or failed on another replica. */
type FenceResult = 'ok' | 'node' | 'other';
/** Replay rounds before what is still logged is fenced instead (see replay). */
const REJOIN_ROUNDS = 4;
/** Wait between a probe's answer and the replay (see onProbe). */
const REJOIN_GRACE_MS = 150;
/** Wait before fixing keys a node that is up missed, so a burst is fixed in one round. */
const FIX_DELAY_MS = 20;
/** First and longest wait before a failed re-sync runs again. */
const RESYNC_RETRY_MS = 1000;
const RESYNC_RETRY_MAX_MS = 30_000;
/** Attempts at a copy that a write from another process keeps crossing (see copyItem). */
const COPY_TRIES = 3;
/** Copies in flight during a rejoin or re-sync. */
const WINDOW = 32;
const FLUSH = Buffer.from('flush_all\r\n');
const METADUMP = Buffer.from('lru_crawler metadump all\r\n');
/** Listing attempts per source (a second one while another crawl runs answers BUSY). */
const METADUMP_TRIES = 20;
const METADUMP_RETRY_MS = 250;
/** A metadump longer than this is cut short (keys are re-listed by the next re-sync). */
const METADUMP_MAX_BYTES = 512 * 1024 * 1024;

export class Recovery {
  private readonly nodes: readonly BackendNode[];
  private readonly ring: Ring;
  private readonly order: KeyOrder;
  private readonly options: RecoveryOptions;
  private readonly log: Logger;
  private readonly gate: RejoinGate;
  private readonly state: NodeRecovery[];
  private closed = false;
  private readonly sockets = new Set<net.Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Numbers the misses, in order (see fence). */
  private seq = 0;

  constructor(
    nodes: readonly BackendNode[],
    ring: Ring,
    order: KeyOrder,
    options: RecoveryOptions,
    log: Logger,
    gate: RejoinGate = LOCAL_GATE,
  ) {
    this.nodes = nodes;
    this.ring = ring;
    this.order = order;
    this.options = options;
    this.log = log;
    this.gate = gate;
    this.state = nodes.map(() => new NodeRecovery());
  }

  // ------------------------------------------------------------ outage log

  /** `node` missed a write of `key`: it must be brought up to date before it serves again. */
  missed(node: number, key: Buffer): void {
    const s = this.state[node]!;
    if (s.overflow) return;
    s.missed.set(key.toString('latin1'), ++this.seq);
    if (s.missed.size > this.options.outageLogMax) {
      this.log.warn({ node: this.nodes[node]!.label }, 'outage log overflowed');
      return this.missedFlush(node);
    }
    // A node that is still up (one write timed out, say) is fixed in the background now;
    // a node that is down is fixed by its rejoin.
    if (!s.fixing && !s.rejoining && this.nodes[node]!.isUp) {
      s.fixing = true;
      this.later(() => this.fix(node), FIX_DELAY_MS);
    }
  }

  private fix(node: number): void {
    const s = this.state[node]!;
    const target = this.nodes[node]!;
    if (this.closed || !target.isUp || s.rejoining) {
      s.fixing = false;
      return;
    }
    this.replay(
      target,
      () => {
        // Whatever is left (the node failed again) waits for the next miss or the rejoin.
        s.fixing = false;
      },
      Infinity,
    );
  }

  /** `node` missed a flush_all: everything on it may be stale. */
  missedFlush(node: number): void {
    const s = this.state[node]!;
    s.missed = new Map();
    s.overflow = true;
    // Only a rejoin can fence this (by flushing): take a node that is up out of service.
    this.nodes[node]!.markDownNow('missed a flush or too many writes');
  }

  // ----------------------------------------------------------------- rejoin

  /**
   * A down node answered its probe. `restarted` null: its first answer since
   * this process started (see firstContact).
   */
  onProbe(node: BackendNode, restarted: boolean | null): void {
    const s = this.state[node.index]!;
    if (this.closed) return;
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
    this.later(() => this.rejoin(node, restarted), REJOIN_GRACE_MS);
  }

  /**
   * A node that was down or hung when this process started answers for the
   * first time. What it missed while msproxy was not running (or was running
   * with the log that died with it) is unknown: it may hold sessions since
   * changed or deleted, or be empty. When every other node answered at start
   * and is up, they hold every key's other copy, so this node is flushed at
   * its rejoin and refilled, as after an outage log overflow. Otherwise a
   * flush could take the last copy of some keys (their other node is not up,
   * or was itself unreachable at start), so the node is taken as it is.
   * Returns `restarted` for the rejoin.
   */
  private firstContact(node: BackendNode): boolean {
    const others = this.nodes.every((n) => n === node || (n.isUp && n.answeredAtStart));
    if (!others) {
      this.log.warn(
        { node: node.label },
        'node answers for the first time since msproxy started, and not every other node ' +
          'answered at start and is up: served as it is',
      );
      return false;
    }
    this.log.warn(
      { node: node.label },
      'node answers for the first time since msproxy started: it is flushed and re-synced, ' +
        'as what it missed before is unknown',
    );
    const s = this.state[node.index]!;
    s.missed = new Map();
    s.overflow = true;
    return false;
  }

  private rejoin(node: BackendNode, restarted: boolean): void {
    const s = this.state[node.index]!;
    if (this.closed) return;
    const done = (ok: boolean, reason: string, refill: boolean): void => {
      if (!ok) {
        s.rejoining = false;
        return node.probeLater(reason);
      }
      if (!this.gate.shared) {
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
          this.gate.ready(node.index, () => {
            if (!s.waiting || !node.isUp) return;
            s.waiting = false;
            this.log.info({ node: node.label }, 'node serves reads again (every worker replayed)');
            this.serving(node.index, refill);
          });
        },
        Infinity,
      );
    };
    // Alone, replay with the node out of service; shared, `done` replays with writes let through.
    const catchUp = (refill: boolean): void => {
      if (this.gate.shared) return done(true, '', refill);
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
        this.log.warn({ node: node.label }, 'node flushed on rejoin (outage log overflowed)');
        catchUp(true);
      });
      return;
    }
    catchUp(restarted);
  }

  /** `node` serves again (after its rejoin): fix what waited for it, refill it if it was empty. */
  private serving(node: number, refill: boolean): void {
    this.refixFenced();
    // A re-sync cut short by the node going down has keys still to copy: it runs again too.
    const unfinished = this.state[node]!.resync === 'failed';
    if ((refill || unfinished) && this.options.resyncRate > 0) this.resync(node);
    // A source is back: a re-sync that could not list its keys can now finish.
    this.state.forEach((o, i) => {
      if (i !== node && o.resync === 'failed' && this.nodes[i]!.isUp) this.resync(i);
    });
  }

  /** `node` was taken out of service. */
  onDown(node: number): void {
    this.state[node]!.waiting = false;
    this.gate.down(node);
  }

  /**
   * Bring every logged key up to date on `node`, until the log is empty.
   * Calls back false (with the unfinished keys back in the log) if the node fails.
   */
  private replay(node: BackendNode, cb: (ok: boolean) => void, rounds = REJOIN_ROUNDS): void {
    const s = this.state[node.index]!;
    const pending = [...s.missed];
    s.missed.clear();
    if (pending.length === 0) return cb(true);
    let next = 0;
    let active = 0;
    let failed = false;
    // Back into the log, unless a later miss of the key was logged meanwhile.
    const keep = (ks: string, seq: number): void => {
      if ((s.missed.get(ks) ?? 0) < seq) s.missed.set(ks, seq);
    };
    const one = (ks: string, seq: number, res: FenceResult): void => {
      active--;
      if (res === 'ok') s.replayed++;
      else if (res === 'other') {
        // Another replica failed: this node's copy cannot be checked now. Fenced, it does not
        // hold up the rejoin; the next node-up or miss fixes it.
        this.fenceKey(node.index, ks, seq);
      } else {
        failed = true;
        keep(ks, seq);
      }
      pump();
    };
    const end = (): void => {
      if (failed) {
        // This node failed: every key not known fixed stays in the log.
        for (let i = next; i < pending.length; i++) keep(pending[i]![0], pending[i]![1]);
        return cb(false);
      }
      if (s.overflow) return cb(false); // overflowed meanwhile: the next probe flushes
      if (s.missed.size === 0) return cb(true);
      // Keys logged while this round ran: another round. Under a steady write load that may
      // never end, so after a few rounds the rest is fenced and fixed in the background.
      if (rounds > 1) return this.replay(node, cb, rounds - 1);
      for (const [ks, seq] of s.missed) this.fenceKey(node.index, ks, seq);
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
   * Make the replicas of `key` agree after `node` missed write number `seq`.
   * Each replica's last missed write (its log or fence entry) says how fresh
   * it is: one that missed only earlier writes received every acknowledged
   * write after them. So the up replica with the lowest number holds the
   * newest copy; it is copied to the others that are up. If a replica that is
   * down missed less still, the copies that are up may be older than it:
   * they are fenced until it returns (or a write replaces them).
   */
  private fence(node: number, key: Buffer, seq: number, cb: (res: FenceResult) => void): void {
    const hash = keyHash(key);
    this.exclusive(hash, (release) => {
      const finish = (res: FenceResult): void => {
        release();
        cb(res);
      };
      const ks = key.toString('latin1');
      const order = this.ring.order(key);
      let best = node;
      let bestSeq = Math.max(seq, this.lastMissed(node, ks));
      let downBest = Infinity;
      const up: number[] = [];
      for (let i = 0; i < this.options.replicas; i++) {
        const n = order[i]!;
        if (n === node) continue;
        const m = this.lastMissed(n, ks);
        if (!this.nodes[n]!.isUp) {
          downBest = Math.min(downBest, m);
          continue;
        }
        up.push(n);
        // On a tie both missed the same write (its outcome was unknown): either copy will do.
        if (m <= bestSeq) {
          best = n;
          bestSeq = m;
        }
      }
      const targets = [node, ...up].filter((n) => n !== best);
      const settle = (ok: boolean, failedNode = -1): void => {
        if (!ok) return finish(failedNode === node ? 'node' : 'other');
        for (const n of [node, ...up]) {
          this.state[n]!.fenced.delete(ks);
          // A replica down that missed less may hold newer: fence every copy that is up.
          if (downBest < bestSeq) this.fenceKey(n, ks, bestSeq);
        }
        finish('ok');
      };
      if (targets.length === 0) return settle(true);
      this.copyItem(best, targets, key, hash, settle);
    });
  }

  /** The latest write of `ks` that `node` is known to have missed (0: none). */
  private lastMissed(node: number, ks: string): number {
    const st = this.state[node]!;
    return Math.max(st.missed.get(ks) ?? 0, st.fenced.get(ks) ?? 0);
  }

  /**
   * Copy `key` from `from` to `to` exactly (value, flags, remaining TTL), or
   * delete it there if `from` has no item. Uses sendDirect: either side may be
   * a node that is not serving yet. A write from another process (a worker,
   * another msproxy) may cross the copy: land on `to` before it and on `from`
   * after the read, leaving `to` older. So `from` is read again afterwards;
   * if its item changed, the copy is made again (a few times at most: past
   * that, writes are reaching every replica anyway).
   */
  private copyItem(
    from: number,
    to: number[],
    key: Buffer,
    hash: number,
    cb: (ok: boolean, failedNode?: number) => void,
    tries = COPY_TRIES,
  ): void {
    const src = this.nodes[from]!;
    src.sendDirect(hash, encodeMeta('mg', key, 'v f t c'), EXPECT_LINE, (err, r) => {
      if (err !== null || r === null || r.isError) return cb(false, from);
      const item = itemOf(r);
      const msg =
        item === null
          ? encodeMeta('md', key, '')
          : encodeMetaSet(key, item.data, item.flags, item.ttl);
      let left = to.length;
      let failed = -1;
      const verify = (): void => {
        src.sendDirect(hash, encodeMeta('mg', key, 'c'), EXPECT_LINE, (e3, r3) => {
          if (e3 !== null || r3 === null || r3.isError) return cb(false, from);
          if (unchanged(item, r3) || tries <= 1) return cb(true);
          this.copyItem(from, to, key, hash, cb, tries - 1);
        });
      };
      for (const t of to) {
        this.nodes[t]!.sendDirect(hash, msg, EXPECT_LINE, (e2, r2) => {
          if (e2 !== null || r2 === null || r2.isError) failed = t;
          if (--left > 0) return;
          if (failed >= 0) return cb(false, failed);
          verify();
        });
      }
    });
  }

  /** The freshest healthy replica of `key` other than `node` (not fenced for it), or -1. */
  private source(key: Buffer, node: number): number {
    const ks = key.toString('latin1');
    const order = this.ring.order(key);
    let best = -1;
    let bestSeq = Infinity;
    for (let i = 0; i < this.options.replicas; i++) {
      const n = order[i]!;
      if (n === node || !this.nodes[n]!.isUp || this.state[n]!.fenced.has(ks)) continue;
      const m = this.lastMissed(n, ks);
      if (m < bestSeq) {
        best = n;
        bestSeq = m;
      }
    }
    return best;
  }

  // ---------------------------------------------------------------- fencing

  /** Don't trust `node`'s copy of `ks` until write `seq` of it is there; tell other processes. */
  private fenceKey(node: number, ks: string, seq: number): void {
    const f = this.state[node]!.fenced;
    if ((f.get(ks) ?? 0) >= seq) return;
    f.set(ks, seq);
    this.gate.fenced(node, ks);
  }

  /**
   * Another process fenced `ks` on `node`. Its sequence numbers are not ours, so
   * the copy counts as older than any: the next fix copies it from another replica.
   */
  remoteFence(node: number, ks: string): void {
    this.state[node]!.fenced.set(ks, Number.MAX_SAFE_INTEGER);
  }

  /** Whether any node has a fenced key (or waits for other processes before serving reads). */
  get anyFenced(): boolean {
    const st = this.state;
    for (let i = 0; i < st.length; i++) if (st[i]!.fenced.size > 0 || st[i]!.waiting) return true;
    return false;
  }

  /** Whether `node`'s copy of `key` is not to be trusted (read elsewhere, never the authority). */
  isFenced(node: number, key: Buffer): boolean {
    const s = this.state[node]!;
    return s.waiting || (s.fenced.size > 0 && s.fenced.has(key.toString('latin1')));
  }

  /** A write replaced `node`'s copy of `key` whole: it can be trusted again. */
  unfence(node: number, key: Buffer): void {
    const f = this.state[node]!.fenced;
    if (f.size > 0) f.delete(key.toString('latin1'));
  }

  /** A node came back: keys fenced elsewhere may have a source again. */
  private refixFenced(): void {
    this.state.forEach((s, i) => {
      if (s.fenced.size === 0) return;
      for (const [k, seq] of s.fenced) if ((s.missed.get(k) ?? 0) < seq) s.missed.set(k, seq);
      if (this.nodes[i]!.isUp && !s.fixing && !s.rejoining) {
        s.fixing = true;
        this.later(() => this.fix(i), FIX_DELAY_MS);
      }
    });
  }

  private exclusive(hash: number, run: (release: () => void) => void): void {
    const release = (): void => this.order.release(EXCLUSIVE, hash);
    if (this.order.tryAcquire(EXCLUSIVE, hash)) run(release);
    else this.order.wait(new Ticket(EXCLUSIVE, () => run(release)), [hash]);
  }

  // ----------------------------------------------------------------- resync

  /**
   * Refill `node` (restarted empty, or flushed) from the other nodes, in the
   * background. `retry`: only these keys, whose copy failed in the last run.
   */
  resync(node: number, retry: Buffer[] | null = null): void {
    const s = this.state[node]!;
    if (this.closed || this.options.resyncRate <= 0) return;
    if (s.resync === 'running') {
      // The node may have restarted or been flushed after some copies: run again once this ends.
      if (retry === null) s.resyncAgain = true;
      return;
    }
    if (!this.gate.resyncs) return this.gate.resyncElsewhere(node);
    s.resync = 'running';
    s.resyncRun++;
    s.resyncRetryKeys = null;
    const run = s.resyncRun;
    s.resyncScanned = 0;
    s.resyncCopied = 0;
    s.resyncFailed = 0;
    const target = this.nodes[node]!;
    this.log.info({ node: target.label, keys: retry?.length }, 'resync started');
    if (retry !== null) return this.copyAll(node, run, retry, false, null);
    const seen = new KeySet();
    this.listKeys(node, seen, (incomplete) => {
      if (s.resyncRun !== run || s.resync !== 'running') return;
      const listed = seen.size;
      this.copyAll(node, run, keysOf(seen, 0, listed, []), incomplete, (failed) =>
        // memcached's crawler skips items that are locked or in use as it passes them, and can
        // miss one that moves between LRU queues meanwhile: a second listing finds those (and
        // keys written since, which the node already has: add-mode copies leave them alone).
        // Keys whose copy failed are tried once more with them.
        this.listKeys(node, seen, (incomplete2) => {
          if (s.resyncRun !== run || s.resync !== 'running') return;
          this.copyAll(node, run, keysOf(seen, listed, seen.size, failed), incomplete2, null);
        }),
      );
    });
  }

  /**
   * List the keys whose replica sets include `node`, as the other nodes that
   * are up hold them, into `seen`: the new ones are those added by this call.
   * `incomplete`: a listing failed or a node is down (it may hold the only
   * other copy of some keys).
   */
  private listKeys(node: number, seen: KeySet, cb: (incomplete: boolean) => void): void {
    const s = this.state[node]!;
    const target = this.nodes[node]!;
    const sources = this.nodes.filter((n) => n.index !== node && n.isUp);
    let listed = 0;
    let incomplete = sources.length < this.nodes.length - 1;
    if (sources.length === 0) return cb(true);
    // Keys are looked at as they stream in, and only this node's are kept: a source's whole
    // listing is never held.
    const onKey = (k: Buffer): void => {
      s.resyncScanned++;
      const order = this.ring.order(k);
      for (let i = 0; i < this.options.replicas; i++) {
        if (order[i] === node) {
          seen.add(k);
          return;
        }
      }
    };
    for (const src of sources) {
      this.metadumpRetry(src.address, METADUMP_TRIES, onKey, (err) => {
        if (err !== null) {
          incomplete = true;
          this.log.warn(
            { node: target.label, source: src.label, err: err.message },
            'resync: cannot list keys',
          );
          s.resyncFailed++;
        }
        if (++listed === sources.length) cb(incomplete);
      });
    }
  }

  /**
   * Copy `keys` to `node` at the configured rate. `incomplete`: a source could
   * not list its keys, so the node may still lack some. A pass with a
   * complete listing continues with `next` (given the keys whose copy
   * failed) when there is one; otherwise the run ends: `done` if every copy
   * went through, else `failed`, and retried later.
   */
  private copyAll(
    node: number,
    run: number,
    keys: KeyList,
    incomplete: boolean,
    next: ((failed: Buffer[]) => void) | null,
  ): void {
    const s = this.state[node]!;
    const target = this.nodes[node]!;
    let at = 0;
    let active = 0;
    let scheduled = false;
    // Set once the pass has ended: the rate-limit timer may still call pump() after that.
    let ended = false;
    const failedKeys: Buffer[] = [];
    const started = Date.now();
    const finish = (state: ResyncState): void => {
      ended = true;
      if (s.resyncRun !== run || s.resync !== 'running') return;
      s.resync = state;
      const fields = { node: target.label, copied: s.resyncCopied, failed: s.resyncFailed };
      this.log.info({ ...fields, state, scanned: s.resyncScanned }, 'resync finished');
      if (s.resyncAgain) {
        s.resyncAgain = false;
        return this.resync(node);
      }
      if (state === 'done') {
        s.resyncRetryMs = RESYNC_RETRY_MS;
        return;
      }
      // Only copies failed: the retry copies just those keys. A listing failed: it lists again.
      // A run that failed only because a node was down runs again when a node comes back
      // (rejoin), not on a timer; but if that node came back while this run went on, its
      // rejoin found the run still going, so it runs again now.
      if (!incomplete && failedKeys.length > 0) s.resyncRetryKeys = failedKeys;
      if (s.resyncFailed > 0 || this.nodes.every((n) => n.isUp)) this.retryResync(node, run);
    };
    // A copy with no source left (its other replicas went down) fails at once, inside refill():
    // as in replay(), its callback must not start the next copy from within the loop below.
    let pumping = false;
    const pump = (): void => {
      if (pumping || ended || this.closed || s.resyncRun !== run || s.resync !== 'running') return;
      if (!target.isUp) return finish('failed');
      // Rate limit: at most resyncRate keys per second since the start (plus one window).
      const allowed =
        Math.floor(((Date.now() - started) / 1000) * this.options.resyncRate) + WINDOW;
      pumping = true;
      while (active < WINDOW && at < keys.length && at < allowed) {
        active++;
        const key = keys.at(at++)!;
        this.refill(node, key, (ok) => {
          active--;
          // A copy of a run that has ended (its node went down, say) counts for no later run.
          if (ended || s.resyncRun !== run) return;
          if (ok) s.resyncCopied++;
          else {
            s.resyncFailed++;
            // Its own copy: a view would keep the whole listing alive until the retry.
            failedKeys.push(Buffer.from(key));
          }
          pump();
        });
      }
      pumping = false;
      if (at >= keys.length) {
        if (active > 0) return;
        if (!incomplete && next !== null) {
          ended = true;
          return next(failedKeys);
        }
        finish(incomplete || failedKeys.length > 0 ? 'failed' : 'done');
        return;
      }
      if (at >= allowed && !scheduled) {
        scheduled = true;
        this.later(() => {
          scheduled = false;
          pump();
        }, 10);
      }
    };
    pump();
  }

  /**
   * A failed re-sync left keys uncopied (a source could not list them, or a
   * copy failed): run it again later, once the node is up, so a partner lost
   * after a bad moment does not take those keys with it.
   */
  private retryResync(node: number, run: number): void {
    const s = this.state[node]!;
    const delay = s.resyncRetryMs;
    s.resyncRetryMs = Math.min(delay * 2, RESYNC_RETRY_MAX_MS);
    this.later(() => {
      // A newer run (a restart seen meanwhile) supersedes this retry.
      if (this.closed || s.resyncRun !== run || s.resync !== 'failed') return;
      if (this.nodes[node]!.isUp) this.resync(node, s.resyncRetryKeys);
      else this.retryResync(node, run);
    }, delay);
  }

  /**
   * Copy `key` to `node` from a healthy replica, add-mode (a newer write
   * already there wins). KeyOrder keeps this process's own commands out of
   * the way; a write from another process (a worker, another msproxy) is
   * not. A set of it is safe (the add loses to it or replaces an older
   * value); a delete that reached `node` before the copy would be undone by
   * it. So the source is read again after the copy: if its item changed, the
   * copy is taken back (a delete that only succeeds if nothing replaced it).
   */
  private refill(node: number, key: Buffer, cb: (ok: boolean) => void): void {
    const hash = keyHash(key);
    this.exclusive(hash, (release) => {
      const finish = (ok: boolean): void => {
        release();
        cb(ok);
      };
      const source = this.source(key, node);
      if (source < 0) return finish(false);
      const src = this.nodes[source]!;
      const dst = this.nodes[node]!;
      src.send(hash, encodeMeta('mg', key, 'v f t c'), EXPECT_LINE, (err, r) => {
        if (err !== null || r === null || r.isError) return finish(false);
        const item = itemOf(r);
        if (item === null) return finish(true); // gone since it was listed
        const msg = encodeMetaSet(key, item.data, item.flags, item.ttl, ' ME c');
        dst.send(hash, msg, EXPECT_LINE, (e2, r2) => {
          if (e2 !== null || r2 === null || r2.isError) return finish(false);
          if (!startsWith(r2.line, 'HD')) return finish(true); // a newer write is there
          const copied = parseMetaFlags(r2.line).get('c');
          src.send(hash, encodeMeta('mg', key, 'c'), EXPECT_LINE, (e3, r3) => {
            if (e3 !== null || r3 === null || r3.isError) return finish(false);
            if (unchanged(item, r3)) return finish(true);
            // The source changed under the copy: take it back unless a write replaced it too.
            if (copied === undefined) return finish(true);
            // HD: taken back; EX or NF: a write replaced or removed it meanwhile.
            dst.send(hash, encodeMeta('md', key, `C${copied}`), EXPECT_LINE, (e4, r4) =>
              finish(e4 === null && r4 !== null && !r4.isError),
            );
          });
        });
      });
    });
  }

  /**
   * metadump, retried with backoff: memcached runs one crawler request at a
   * time and answers another with BUSY (two nodes re-syncing from one source).
   * Keys of a failed attempt have been given to `onKey` too: they exist.
   */
  private metadumpRetry(
    address: string,
    tries: number,
    onKey: (key: Buffer) => void,
    cb: (err: Error | null) => void,
  ): void {
    this.metadump(address, onKey, (err) => {
      if (err === null || tries <= 1 || this.closed) return cb(err);
      this.later(() => this.metadumpRetry(address, tries - 1, onKey, cb), METADUMP_RETRY_MS);
    });
  }

  /**
   * List a node's keys with `lru_crawler metadump all` on a connection of its
   * own, giving each to `onKey` as a view that is valid only during the call.
   */
  private metadump(
    address: string,
    onKey: (key: Buffer) => void,
    cb: (err: Error | null) => void,
  ): void {
    const i = address.lastIndexOf(':');
    const socket = net.connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)) });
    this.sockets.add(socket);
    let rest = Buffer.alloc(0);
    let total = 0;
    let finished = false;
    const decoded = Buffer.allocUnsafe(KEY_MAX);
    const end = (err: Error | null): void => {
      if (finished) return;
      finished = true;
      this.sockets.delete(socket);
      socket.destroy();
      cb(err);
    };
    socket.setTimeout(10000, () => end(new Error('metadump timed out')));
    socket.on('error', (e) => end(e));
    socket.on('close', () => end(new Error('connection closed during metadump')));
    socket.on('connect', () => socket.write(METADUMP));
    socket.on('data', (chunk: Buffer) => {
      if (finished) return;
      total += chunk.length;
      if (total > METADUMP_MAX_BYTES) return end(new Error('metadump too large'));
      let buf = rest.length > 0 ? Buffer.concat([rest, chunk]) : chunk;
      let nl: number;
      while ((nl = buf.indexOf(0x0a)) >= 0) {
        const line = buf.subarray(0, nl > 0 && buf[nl - 1] === 0x0d ? nl - 1 : nl);
        buf = buf.subarray(nl + 1);
        if (equals(line, 'END')) return end(null);
        if (startsWith(line, 'key=')) {
          const sp = line.indexOf(0x20);
          const n = percentDecode(line, 4, sp < 0 ? line.length : sp, decoded);
          if (n < 0) return end(new Error('metadump: key longer than memcached allows'));
          onKey(decoded.subarray(0, n));
        } else if (line.length > 0) {
          // BUSY, ERROR (no lru crawler), CLIENT_ERROR ...: this memcached cannot list keys.
          return end(new Error(line.toString('latin1')));
        }
      }
      rest = Buffer.from(buf);
    });
  }

  private later(fn: () => void, ms: number): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  // ------------------------------------------------------------------ stats

  rows(): [string, string | number][] {
    const out: [string, string | number][] = [];
    this.state.forEach((s, i) => {
      out.push([`proxy_node_${i}_outage_log`, s.overflow ? 'overflow' : s.missed.size]);
      out.push([`proxy_node_${i}_fenced_keys`, s.fenced.size]);
      out.push([`proxy_node_${i}_rejoins`, s.rejoins]);
      out.push([`proxy_node_${i}_rejoin_waiting`, s.waiting ? 1 : 0]);
      out.push([`proxy_node_${i}_rejoin_replayed`, s.replayed]);
      out.push([`proxy_node_${i}_rejoin_flushes`, s.flushes]);
      out.push([`proxy_node_${i}_resync`, s.resync]);
      out.push([`proxy_node_${i}_resyncs`, s.resyncRun]);
      out.push([`proxy_node_${i}_resync_scanned`, s.resyncScanned]);
      out.push([`proxy_node_${i}_resync_copied`, s.resyncCopied]);
      out.push([`proxy_node_${i}_resync_failed`, s.resyncFailed]);
    });
    return out;
  }

  /** Re-sync state of a node (for tests and stats). */
  resyncState(node: number): ResyncState {
    return this.state[node]!.resync;
  }

  /** Re-syncs of a node started so far (tells a finished new run from an old one). */
  resyncRuns(node: number): number {
    return this.state[node]!.resyncRun;
  }

  close(): void {
    this.closed = true;
    for (const s of this.sockets) s.destroy();
    for (const t of this.timers) clearTimeout(t);
  }
}

/** Value, flags and remaining TTL of an `mg v f t` reply, or null for a miss / expired item. */
function itemOf(
  r: Reply,
): { data: Buffer; flags: number; ttl: number; cas: string | undefined } | null {
  if (!startsWith(r.line, 'VA ')) return null;
  const meta = parseMetaFlags(r.line);
  const ttl = Number(meta.get('t') ?? '-1');
  if (ttl === 0) return null;
  return {
    data: r.data,
    flags: Number(meta.get('f') ?? '0'),
    ttl: ttl < 0 ? 0 : ttl,
    cas: meta.get('c'),
  };
}

/**
 * Whether the answer to a later `mg <key> c` shows the same item as `item`
 * (read before with `c`): the same cas, or still no item.
 */
function unchanged(item: { cas: string | undefined } | null, r: Reply): boolean {
  const now = startsWith(r.line, 'HD') ? parseMetaFlags(r.line).get('c') : undefined;
  return item === null ? now === undefined : now === item.cas;
}

/** memcached's longest key. */
const KEY_MAX = 250;

/**
 * memcached's metadump writes keys URL-encoded (%XX for every byte outside
 * [A-Za-z0-9_.~-]). Decodes `b[from, to)` into `out`: the decoded length, or
 * -1 if it is longer than memcached allows (a listing gone wrong).
 */
function percentDecode(b: Buffer, from: number, to: number, out: Buffer): number {
  let n = 0;
  for (let i = from; i < to; i++) {
    if (n === KEY_MAX) return -1;
    const c = b[i]!;
    if (c === 0x25 && i + 2 < to) {
      const h = (hexDigit(b[i + 1]!) << 4) | hexDigit(b[i + 2]!);
      if (h >= 0) {
        out[n++] = h;
        i += 2;
        continue;
      }
    }
    out[n++] = c;
  }
  return n;
}

/** Value of a hex digit, or a large negative number (so a pair with it stays negative). */
function hexDigit(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  if (l >= 0x61 && l <= 0x66) return l - 0x61 + 10;
  return -0x1000;
}

/** Keys a re-sync pass copies, by position. An array is one. */
interface KeyList {
  readonly length: number;
  at(i: number): Buffer | undefined;
}

/** Keys `from` to `to` of `set`, then `more`. */
function keysOf(set: KeySet, from: number, to: number, more: readonly Buffer[]): KeyList {
  const n = to - from;
  return {
    length: n + more.length,
    at: (i) => (i < n ? set.at(from + i) : more[i - n]),
  };
}
