/**
 * Re-sync: a node that restarted empty (new pid or boot time) or was flushed
 * is refilled in the background, so losing its partner right after loses
 * nothing.
 *
 * The other nodes list their keys (metadump.ts); each key whose replica set
 * includes the node is copied to it from its freshest trusted replica, with
 * value, flags and remaining TTL, in add mode (a newer write already there
 * wins), under KeyOrder, at `resyncRate` keys/s. The keys are listed twice:
 * memcached's crawler skips an item that is in use as it passes, or moving
 * between LRU queues. A run ends `done` (the node is complete again) or
 * `failed` (a listing or a copy failed, or a node was down that may hold the
 * only other copy of some keys), and a failed run runs again later.
 */

import { CopyPass, type KeyList } from './copy-pass.js';
import { itemChanged, copyable, readItem, storeItem } from './item.js';
import { KeySet } from './key-set.js';
import { parseMetaFlags } from './meta.js';
import { metadump } from './metadump.js';
import { answered } from './reply-rules.js';
import { RESYNC_RETRY_MS, type RecoveryCore, type ResyncState } from './recovery-core.js';
import { encodeMeta } from '../protocol/encoder.js';
import { startsWith } from '../protocol/response-parser.js';

const RESYNC_RETRY_MAX_MS = 30_000;
/** Listing attempts per source (a second one while another crawl runs answers BUSY). */
const METADUMP_TRIES = 20;
const METADUMP_RETRY_MS = 250;

export class Resync {
  private readonly core: RecoveryCore;

  constructor(core: RecoveryCore) {
    this.core = core;
  }

  /**
   * Refill `node` from the other nodes, in the background. `retry`: only
   * these keys, whose copy failed in the last run.
   */
  run(node: number, retry: Buffer[] | null = null): void {
    const core = this.core;
    const s = core.state[node]!;
    if (core.closed || core.options.resyncRate <= 0) return;
    if (s.resync === 'running') {
      // The node may have restarted or been flushed after some copies: run again once this ends.
      if (retry === null) s.resyncAgain = true;
      return;
    }
    if (!core.gate.resyncs) return core.gate.resyncElsewhere(node);
    s.resync = 'running';
    s.resyncRun++;
    s.resyncRetryKeys = null;
    const run = s.resyncRun;
    s.resyncScanned = 0;
    s.resyncCopied = 0;
    s.resyncFailed = 0;
    core.log.info({ node: core.nodes[node]!.label, keys: retry?.length }, 'resync started');
    if (retry !== null) return this.copyAll(node, run, retry, false, null);
    const seen = new KeySet();
    this.listKeys(node, seen, (incomplete) => {
      if (s.resyncRun !== run || s.resync !== 'running') return;
      const listed = seen.size;
      this.copyAll(node, run, keysOf(seen, 0, listed, []), incomplete, (failed) =>
        // The second listing finds what the crawler skipped the first time (and keys written
        // since, which the node already has: add-mode copies leave them alone). Keys whose
        // copy failed are tried once more with them.
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
    const core = this.core;
    const s = core.state[node]!;
    const target = core.nodes[node]!;
    const sources = core.members.filter((n) => n.index !== node && n.isUp);
    let listed = 0;
    let incomplete = sources.length < core.members.filter((n) => n.index !== node).length;
    if (sources.length === 0) return cb(true);
    // Keys are looked at as they stream in, and only this node's are kept: a source's whole
    // listing is never held.
    const onKey = (k: Buffer): void => {
      s.resyncScanned++;
      if (core.replicaSet(k).includes(node)) seen.add(k);
    };
    for (const src of sources) {
      this.listRetry(src.address, onKey, (err) => {
        if (err !== null) {
          incomplete = true;
          core.log.warn(
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
   * metadump, retried with backoff: memcached runs one crawler request at a
   * time and answers another with BUSY (two nodes re-syncing from one source).
   * Keys of a failed attempt have been given to `onKey` too: they exist.
   */
  listRetry(
    address: string,
    onKey: (key: Buffer) => void,
    cb: (err: Error | null) => void,
    tries = METADUMP_TRIES,
  ): void {
    this.metadump(address, onKey, (err) => {
      if (err === null || tries <= 1 || this.core.closed) return cb(err);
      this.core.later(() => this.listRetry(address, onKey, cb, tries - 1), METADUMP_RETRY_MS);
    });
  }

  /** One listing of a node's keys (a method, so a test can stand in for it). */
  private metadump(
    address: string,
    onKey: (key: Buffer) => void,
    cb: (err: Error | null) => void,
  ): void {
    metadump(address, this.core.sockets, onKey, cb);
  }

  /**
   * Copy `keys` to `node` at the configured rate (see CopyPass). `incomplete`:
   * a source could not list its keys, so the node may still lack some. A pass
   * with a complete listing continues with `next` (given the keys whose copy
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
    const core = this.core;
    const s = core.state[node]!;
    const current = (): boolean => s.resyncRun === run && s.resync === 'running';
    const pass = new CopyPass(core, keys, (key, cb) => this.copy(node, key, cb), {
      live: () => current() && core.nodes[node]!.isUp,
      copied: (ok) => {
        if (!current()) return;
        if (ok) s.resyncCopied++;
        else s.resyncFailed++;
      },
      onEnd: (failed) => {
        if (!incomplete && next !== null) return next(failed);
        this.finish(
          node,
          run,
          incomplete || failed.length > 0 ? 'failed' : 'done',
          incomplete,
          failed,
        );
      },
      // The node went down (or a newer run took over: finish ignores this one then).
      onStop: (failed) => this.finish(node, run, 'failed', incomplete, failed),
    });
    pass.pump();
  }

  /** The run of `node` numbered `run` ends in `state` (unless a newer run took over). */
  private finish(
    node: number,
    run: number,
    state: ResyncState,
    incomplete: boolean,
    failedKeys: Buffer[],
  ): void {
    const core = this.core;
    const s = core.state[node]!;
    if (s.resyncRun !== run || s.resync !== 'running') return;
    s.resync = state;
    const fields = {
      node: core.nodes[node]!.label,
      copied: s.resyncCopied,
      failed: s.resyncFailed,
    };
    core.log.info({ ...fields, state, scanned: s.resyncScanned }, 'resync finished');
    if (s.resyncAgain) {
      s.resyncAgain = false;
      return this.run(node);
    }
    if (state === 'done') {
      s.resyncRetryMs = RESYNC_RETRY_MS;
      s.complete = true;
      core.gate.complete(node, true);
      return;
    }
    // Only copies failed: the retry copies just those keys. A listing failed: it lists again.
    // A run that failed only because a node was down runs again when a node comes back
    // (rejoin), not on a timer; but if that node came back while this run went on, its
    // rejoin found the run still going, so it runs again now.
    if (!incomplete && failedKeys.length > 0) s.resyncRetryKeys = failedKeys;
    if (s.resyncFailed > 0 || core.members.every((n) => n.isUp)) this.retry(node, run);
  }

  /**
   * A failed re-sync left keys uncopied (a source could not list them, or a
   * copy failed): run it again later, once the node is up, so a partner lost
   * after a bad moment does not take those keys with it.
   */
  private retry(node: number, run: number): void {
    const core = this.core;
    const s = core.state[node]!;
    const delay = s.resyncRetryMs;
    s.resyncRetryMs = Math.min(delay * 2, RESYNC_RETRY_MAX_MS);
    core.later(() => {
      // A newer run (a restart seen meanwhile) supersedes this retry.
      if (core.closed || s.resyncRun !== run || s.resync !== 'failed') return;
      if (core.nodes[node]!.isUp) this.run(node, s.resyncRetryKeys);
      else this.retry(node, run);
    }, delay);
  }

  /**
   * Copy `key` to `node` from its freshest trusted replica, add-mode (a newer
   * write already there wins). KeyOrder keeps this process's own commands
   * out of the way; a write from another process (a worker, another msproxy)
   * is not. A set of it is safe (the add loses to it or replaces an older
   * value); a delete that reached `node` before the copy would be undone by
   * it. So the source is read again after the copy: if its item changed, the
   * copy is taken back (a delete that only succeeds if nothing replaced it).
   */
  copy(node: number, key: Buffer, cb: (ok: boolean) => void): void {
    const core = this.core;
    core.holding(key, cb, (hash, finish: (ok: boolean) => void) => {
      const source = this.source(key, node);
      if (source < 0) return finish(false);
      const routed = core.routed;
      readItem(routed, source, hash, key, (item) => {
        if (item === undefined) return finish(false);
        if (!copyable(item)) return finish(true); // gone since it was listed
        routed(node, hash, storeItem(key, item, ' ME c'), (r2) => {
          if (!answered(r2)) return finish(false);
          if (!startsWith(r2.line, 'HD')) return finish(true); // a newer write is there
          const copied = parseMetaFlags(r2.line).get('c');
          itemChanged(routed, source, hash, key, item, (changed) => {
            if (changed === undefined) return finish(false);
            // The source changed under the copy: take it back unless a write replaced it too.
            if (!changed || copied === undefined) return finish(true);
            // HD: taken back; EX or NF: a write replaced or removed it meanwhile.
            routed(node, hash, encodeMeta('md', key, `C${copied}`), (r4) => finish(answered(r4)));
          });
        });
      });
    });
  }

  /**
   * A trusted replica of `key` that is up, other than `node` (its copy is
   * current), or -1: a complete one first (one being refilled may lack the
   * key). During a move, an old replica: a new one may lack the key.
   */
  private source(key: Buffer, node: number): number {
    const core = this.core;
    const ks = key.toString('latin1');
    let fallback = -1;
    for (const n of core.owners(key)) {
      if (n === node || !core.nodes[n]!.isUp || !core.trusts(n, ks)) continue;
      if (core.state[n]!.complete) return n;
      if (fallback < 0) fallback = n;
    }
    return fallback;
  }
}

/** Keys `from` to `to` of `set`, then `more`. */
export function keysOf(set: KeySet, from: number, to: number, more: readonly Buffer[]): KeyList {
  const n = to - from;
  return {
    length: n + more.length,
    at: (i) => (i < n ? set.at(from + i) : more[i - n]),
  };
}
