/**
 * The cluster's shared state as etcd holds it, mirrored from a snapshot and
 * the watch that follows it, and the rules read from it. No I/O here.
 *
 * Keys, under the cluster's prefix (L: a node's ring label, URL-encoded):
 *
 * - `members/<id>`: one per process (an instance, or one worker of one),
 *   bound to its lease. Gone when the process stops or its lease expires.
 *   The member created first is the leader: it runs re-syncs and settles
 *   lost outage logs.
 * - `gen`: rewritten by every change that adds what a release must wait for
 *   (a member, an outage, a pending ack), so a release computed from an older
 *   view fails its transaction instead of leaving someone out.
 * - `down/<L>`: the node is out of service in the whole cluster. Its create
 *   revision names the outage.
 * - `acks/<L>/<member>`: `pending` (that member may hold an outage log for
 *   the node) or `ready` (it replayed its log). One per member live during
 *   the outage. A pending ack whose member is gone is a lost log.
 * - `flush/<L>`: the member that flushes the node, for a lost log.
 * - `incomplete/<L>`: the node may lack acknowledged writes until a re-sync
 *   refills it; its mod revision tells a stale "refilled" from a current one.
 * - `fences/<L>/<hex key>`: the node's copy of a key is not to be read until
 *   fixed (see RejoinGate). Value: the member, and the stamp of the write the
 *   copy missed (recovery.ts), which ranks it against the other copies.
 * - `resync/<L>`: a member that does not run re-syncs asks the leader for one.
 */

/** One key's value and revisions, as etcd reports them. */
export interface Entry {
  readonly value: string;
  readonly create: number;
  readonly mod: number;
}

export type AckState = 'pending' | 'ready';

export const PENDING: AckState = 'pending';
export const READY: AckState = 'ready';

/** The node label as one key segment. */
export function labelKey(label: string): string {
  return encodeURIComponent(label);
}

export class ClusterView {
  /** Keys relative to the prefix (no leading slash). */
  private readonly kv = new Map<string, Entry>();
  /** The latest revision applied. */
  revision = 0;

  get(key: string): Entry | undefined {
    return this.kv.get(key);
  }

  put(key: string, entry: Entry): void {
    this.kv.set(key, entry);
    if (entry.mod > this.revision) this.revision = entry.mod;
  }

  delete(key: string, revision: number): void {
    this.kv.delete(key);
    if (revision > this.revision) this.revision = revision;
  }

  clear(): void {
    this.kv.clear();
    this.revision = 0;
  }

  /** Entries under `dir/` (without that part of the key), in key order. */
  under(dir: string): [string, Entry][] {
    const p = `${dir}/`;
    const out: [string, Entry][] = [];
    for (const [k, e] of this.kv) if (k.startsWith(p)) out.push([k.slice(p.length), e]);
    return out.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }

  /** Live members, by id, with the revision each joined at. */
  members(): Map<string, number> {
    return new Map(this.under('members').map(([id, e]) => [id, e.create]));
  }

  /** The member that joined first (ties cannot happen: one create per revision and key). */
  leader(): string | null {
    let best: string | null = null;
    let at = Infinity;
    for (const [id, create] of this.members()) {
      if (create < at) {
        best = id;
        at = create;
      }
    }
    return best;
  }

  outage(label: string): Entry | undefined {
    return this.kv.get(`down/${labelKey(label)}`);
  }

  /** The acks of the node's current outage, by member. */
  acks(label: string): Map<string, Entry> {
    return new Map(this.under(`acks/${labelKey(label)}`));
  }

  ack(label: string, member: string): Entry | undefined {
    return this.kv.get(`acks/${labelKey(label)}/${member}`);
  }

  flusher(label: string): Entry | undefined {
    return this.kv.get(`flush/${labelKey(label)}`);
  }

  incomplete(label: string): Entry | undefined {
    return this.kv.get(`incomplete/${labelKey(label)}`);
  }

  /**
   * Outage logs of the node that no live member can replay: pending acks of
   * members that are gone, and a flush claimed by a member that is gone.
   * Returns the keys to settle (the acks, and the claim), empty when none.
   */
  lost(label: string): string[] {
    const members = this.members();
    const l = labelKey(label);
    const out: string[] = [];
    for (const [id, e] of this.acks(label)) {
      if (e.value === PENDING && !members.has(id)) out.push(`acks/${l}/${id}`);
    }
    const f = this.flusher(label);
    if (f !== undefined && !members.has(f.value)) out.push(`flush/${l}`);
    return out;
  }

  /**
   * Whether the node's outage may end: every live member replayed its log
   * (so did every member that left: a lost log is settled by a flush first),
   * and no flush is owed.
   */
  releasable(label: string): boolean {
    if (this.outage(label) === undefined || this.flusher(label) !== undefined) return false;
    const acks = this.acks(label);
    for (const e of acks.values()) if (e.value !== READY) return false;
    for (const id of this.members().keys()) if (!acks.has(id)) return false;
    return true;
  }
}
