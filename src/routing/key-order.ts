/**
 * Per-key admission order, shared by every client of one proxy process.
 *
 * Contract: commands on one key take effect in the order msproxy received
 * them. Each node's connection for a key (its lane) is FIFO, so commands that
 * are fully sent at once (plain writes, reads that hit) stay ordered on their
 * own. What breaks order are the commands with a second round trip decided by
 * the first one's reply:
 *
 * - a read that misses goes on to the next replica (failover, read repair);
 *   a write sent meanwhile could be seen by that second look, or a delete
 *   could be undone by the repair;
 * - a conditional write copies the authority's item to the other replicas
 *   after the authority answered; a write sent meanwhile could reach a
 *   replica before that copy and be overwritten by it.
 *
 * So a key has reader and exclusive holders: reads share the key with other
 * reads, a conditional write holds it alone, and a plain write waits until no
 * read or conditional write that came before it is still running (it holds
 * nothing once sent: lane FIFO orders everything after it). A command that
 * must wait is queued per key; a multi-key read takes its keys one by one in
 * queue order, which cannot deadlock because every queue is in arrival order.
 *
 * Keys are identified by the low 16 bits of their 32-bit hash (a stripe):
 * two keys in one stripe only wait for each other as if they were one key,
 * which is slower but never wrong. A fixed table of stripes, each entry made
 * once and kept, costs no map lookup and no allocation per command.
 */

export const READ = 0;
export const WRITE = 1;
export const EXCLUSIVE = 2;
export type Kind = typeof READ | typeof WRITE | typeof EXCLUSIVE;

/** A command waiting for its keys. */
export class Ticket {
  /** Keys not yet acquired. */
  pending = 0;
  /** The key of a WRITE (writes have one). */
  hash = 0;
  constructor(
    readonly kind: Kind,
    readonly run: () => void,
  ) {}
}

class Entry {
  reads = 0;
  exclusive = 0;
  /**
   * Admitted WRITEs whose run() has not been called yet. They hold nothing, so
   * without this a command arriving from inside an earlier ticket's run() (a
   * reply that completes synchronously and lets the client's next command in)
   * would find the key free and overtake them.
   */
  starting = 0;
  queue: Ticket[] = [];
}

const STRIPES = 1 << 16;
const MASK = STRIPES - 1;

function idle(e: Entry): boolean {
  return e.reads === 0 && e.exclusive === 0 && e.starting === 0 && e.queue.length === 0;
}

export class KeyOrder {
  private readonly table = new Array<Entry | undefined>(STRIPES).fill(undefined);

  /** Stripes currently held or waited for (for stats and tests; a scan, not for hot paths). */
  get size(): number {
    let n = 0;
    for (const e of this.table) if (e !== undefined && !idle(e)) n++;
    return n;
  }

  private entry(hash: number): Entry {
    let e = this.table[hash & MASK];
    if (e === undefined) this.table[hash & MASK] = e = new Entry();
    return e;
  }

  /**
   * Acquire `hash` for a command of `kind` if nothing before it is in the way.
   * Returns false when it must wait; the caller then uses `wait`.
   */
  tryAcquire(kind: Kind, hash: number): boolean {
    const e = this.table[hash & MASK];
    if (e === undefined || idle(e)) {
      if (kind === WRITE) return true;
      const n = e ?? this.entry(hash);
      if (kind === READ) n.reads = 1;
      else n.exclusive = 1;
      return true;
    }
    if (e.queue.length > 0 || e.starting > 0 || !admits(e, kind)) return false;
    if (kind === READ) e.reads++;
    else if (kind === EXCLUSIVE) e.exclusive++;
    return true;
  }

  /** Acquire every hash for a read, all or none. */
  tryAcquireReads(hashes: readonly number[]): boolean {
    for (const h of hashes) {
      const e = this.table[h & MASK];
      if (e !== undefined && (e.queue.length > 0 || e.starting > 0 || e.exclusive > 0)) {
        return false;
      }
    }
    for (const h of hashes) this.tryAcquire(READ, h);
    return true;
  }

  /** Queue a command on its keys; `ticket.run` is called once it holds all of them. */
  wait(ticket: Ticket, hashes: readonly number[]): void {
    ticket.pending = hashes.length;
    if (ticket.kind === WRITE) ticket.hash = hashes[0]!;
    for (const h of hashes) this.entry(h).queue.push(ticket);
    // Keys with no one ahead can be taken at once.
    const ready: Ticket[] = [];
    for (const h of hashes) this.pump(h, ready);
    this.runReady(ready);
  }

  /** Release a key held by a command of `kind` (READ or EXCLUSIVE). */
  release(kind: Kind, hash: number): void {
    const e = this.table[hash & MASK];
    if (e === undefined) return;
    if (kind === READ) e.reads--;
    else if (kind === EXCLUSIVE) e.exclusive--;
    // Nobody waits (the usual case): nothing to admit.
    if (e.queue.length === 0 && e.starting === 0) return;
    const ready: Ticket[] = [];
    this.pump(hash, ready);
    this.runReady(ready);
  }

  /**
   * Run admitted tickets in admission order. Commands that arrive meanwhile
   * queue behind them (see Entry.starting) and are let in afterwards.
   */
  private runReady(ready: Ticket[]): void {
    if (ready.length === 0) return;
    for (const t of ready) t.run();
    const again: Ticket[] = [];
    for (const t of ready) {
      if (t.kind !== WRITE) continue;
      const e = this.table[t.hash & MASK];
      if (e === undefined) continue;
      e.starting--;
      this.pump(t.hash, again);
    }
    this.runReady(again);
  }

  /** Admit queued commands at the head of `hash`'s queue; collect those now holding every key. */
  private pump(hash: number, ready: Ticket[]): void {
    const e = this.table[hash & MASK];
    // Admitted writes not yet run go first; runReady pumps again after them.
    if (e === undefined || e.starting > 0) return;
    while (e.queue.length > 0) {
      const t = e.queue[0]!;
      if (!admits(e, t.kind)) break;
      e.queue.shift();
      if (t.kind === READ) e.reads++;
      else if (t.kind === EXCLUSIVE) e.exclusive++;
      else e.starting++;
      if (--t.pending === 0) ready.push(t);
    }
  }
}

function admits(e: Entry, kind: Kind): boolean {
  if (kind === READ) return e.exclusive === 0;
  return e.reads === 0 && e.exclusive === 0;
}
