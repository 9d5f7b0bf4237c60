/**
 * What releases a rejoining node for reads, and how fences are shared, when
 * several processes (workers) use the same nodes.
 *
 * Contract: each process keeps its own outage logs (the writes it routed
 * while a node was down). A node is therefore up to date only once every
 * process has replayed its log; until then a process that is done takes
 * writes to the node but serves no reads from it. `ready()` says this process
 * is done; `go` runs once every process is. `down()` and `fenced()` tell the
 * others, so a node taken out of service, or a key whose copy on a node is
 * not trusted, is treated the same everywhere; `complete()` shares whether a
 * node holds every acknowledged write (emptied, then refilled by a re-sync).
 *
 * LOCAL_GATE is the one-process case: ready means go. Workers of one
 * instance share a gate through their primary (server/workers.ts); instances
 * through etcd (coordination/etcd-gate.ts).
 */

export interface RejoinGate {
  /** Whether other processes share the nodes (then a rejoin waits for them all). */
  readonly shared: boolean;
  /** Whether this process runs re-syncs (one process of a group does). */
  readonly resyncs: boolean;
  /** This process took `node` out of service. */
  down(node: number): void;
  /** This process brought `node` up to date; `go` once every process has. */
  ready(node: number, go: () => void): void;
  /**
   * This process stopped trusting `node`'s copy of `key` (a latin1 string):
   * it missed the write stamped `seq` (recovery.ts), which others compare with theirs.
   */
  fenced(node: number, key: string, seq: number): void;
  /** This process trusts `node`'s copy of `key` again: it was fixed or replaced by a write. */
  unfenced(node: number, key: string): void;
  /** `node` needs a re-sync and this process does not run them: ask the one that does. */
  resyncElsewhere(node: number): void;
  /** This process learnt that `node` was emptied (false) or refilled by a re-sync (true). */
  complete(node: number, complete: boolean): void;
  /**
   * Run `then` once the cluster shows `node` out of service, so no other
   * process still reads it (at once when alone, or when that cannot be
   * learnt). A write acknowledged without a replica waits for this.
   */
  downKnown?(node: number, then: () => void): void;
  /** Whether a fence this process published may not be known to the others yet. */
  readonly fencesPending?: boolean;
  /**
   * Run `then` once the other processes can know this process's fence of
   * `key` on `node` (at once if there is none under way, or when that cannot
   * be learnt). A write acknowledged after it failed on a node that stays up
   * waits for this.
   */
  fenceKnown?(node: number, key: string, then: () => void): void;
  /** A reload changed the log level. */
  setLogLevel?(level: string): void;
  /** Stats rows of the gate's own (`stats`). */
  rows?(): [string, string | number][];
  /** Leave the group (the proxy closes). */
  close?(): Promise<void>;
}

/**
 * What a gate does to this process's proxy when the other processes say so
 * (the same for workers and for instances).
 */
export interface ClusterPeer {
  /** Whether this process has `node` in service. */
  isUp(node: number): boolean;
  /** Take `node` out of service (it rejoins as after its own outage). */
  markDown(node: number, reason: string): void;
  /** Another member stopped trusting `node`'s copy of `key` (latin1); `seq`: see `fenced`. */
  fence(node: number, key: string, seq?: number): void;
  /** `node` must be flushed before it serves (a lost outage log). */
  flush(node: number): void;
  /** Refill `node` (this member runs re-syncs). */
  resync(node: number): void;
  /** Another member found `node` emptied (false) or refilled (true). */
  setComplete(node: number, complete: boolean): void;
}

export const LOCAL_GATE: RejoinGate = {
  shared: false,
  resyncs: true,
  down() {},
  ready(_node, go) {
    go();
  },
  fenced() {},
  unfenced() {},
  resyncElsewhere() {},
  complete() {},
};
