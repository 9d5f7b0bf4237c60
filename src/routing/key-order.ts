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
 * which is slower but never wrong. A fixed table of stripe counters costs no
 * map lookup and no allocation per command; only stripes with commands
 * waiting have a queue.
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

const STRIPES = 1 << 16;
const MASK = STRIPES - 1;

// A stripe's counters, four Int32 at stripe * 4 in one typed array.
/** Reads holding the stripe. */
const READS = 0;
/** Conditional writes (or recovery copies) holding it. */
const HELD = 1;
/**
 * Admitted WRITEs whose run() has not been called yet. They hold nothing, so
 * without this a command arriving from inside an earlier ticket's run() (a
 * reply that completes synchronously and lets the client's next command in)
 * would find the key free and overtake them.
 */
const STARTING = 2;
/** Tickets queued on the stripe (their list is in `queues`). */
const QUEUED = 3;

/**
 * Why typed counters and a map of queues, not an object per stripe: every
 * request touches its key's stripe, at random among 65536; one array slot
 * is one memory access, where an object is a pointer and then the object,
 * and 65536 long-lived objects are work for every full GC.
 */
export class KeyOrder {
  private readonly counts = new Int32Array(STRIPES * 4);
  /** Waiting tickets of the stripes that have any, in arrival order. */
  private readonly queues = new Map<number, Ticket[]>();

  /** Stripes currently held or waited for (for stats and tests; a scan, not for hot paths). */
  get size(): number {
    const c = this.counts;
    let n = 0;
    for (let b = 0; b < c.length; b += 4) {
      if (c[b] !== 0 || c[b + 1] !== 0 || c[b + 2] !== 0 || c[b + 3] !== 0) n++;
    }
    return n;
  }

  /**
   * Acquire `hash` for a command of `kind` if nothing before it is in the way.
   * Returns false when it must wait; the caller then uses `wait`.
   */
  tryAcquire(kind: Kind, hash: number): boolean {
    const c = this.counts;
    const b = (hash & MASK) << 2;
    if (c[b + QUEUED]! > 0 || c[b + STARTING]! > 0 || !admits(c, b, kind)) return false;
    if (kind === READ) c[b + READS]!++;
    else if (kind === EXCLUSIVE) c[b + HELD]!++;
    return true;
  }

  /** Acquire every hash for a read, all or none. */
  tryAcquireReads(hashes: readonly number[]): boolean {
    const c = this.counts;
    for (const h of hashes) {
      const b = (h & MASK) << 2;
      if (c[b + QUEUED]! > 0 || c[b + STARTING]! > 0 || c[b + HELD]! > 0) return false;
    }
    for (const h of hashes) c[((h & MASK) << 2) + READS]!++;
    return true;
  }

  /**
   * Run `run` once `hash` admits a command of `kind`: at once when nothing is
   * in the way, else when its turn comes. A READ or EXCLUSIVE holds the key
   * until `release`; a WRITE holds nothing once run.
   */
  run(kind: Kind, hash: number, run: () => void): void {
    if (this.tryAcquire(kind, hash)) run();
    else this.wait(new Ticket(kind, run), [hash]);
  }

  /** Run `run` once every hash admits a read (each is then held until released). */
  runReads(hashes: readonly number[], run: () => void): void {
    if (this.tryAcquireReads(hashes)) run();
    else this.wait(new Ticket(READ, run), hashes);
  }

  /** Queue a command on its keys; `ticket.run` is called once it holds all of them. */
  wait(ticket: Ticket, hashes: readonly number[]): void {
    ticket.pending = hashes.length;
    if (ticket.kind === WRITE) ticket.hash = hashes[0]!;
    for (const h of hashes) {
      const stripe = h & MASK;
      let q = this.queues.get(stripe);
      if (q === undefined) this.queues.set(stripe, (q = []));
      q.push(ticket);
      this.counts[(stripe << 2) + QUEUED]!++;
    }
    // Keys with no one ahead can be taken at once.
    const ready: Ticket[] = [];
    for (const h of hashes) this.pump(h, ready);
    this.runReady(ready);
  }

  /** Release a key held by a command of `kind` (READ or EXCLUSIVE). */
  release(kind: Kind, hash: number): void {
    const c = this.counts;
    const b = (hash & MASK) << 2;
    // A release without a hold (a bug elsewhere) must not leave a negative count behind.
    if (kind === READ) {
      if (c[b + READS]! > 0) c[b + READS]!--;
    } else if (kind === EXCLUSIVE) {
      if (c[b + HELD]! > 0) c[b + HELD]!--;
    }
    // Nobody waits (the usual case): nothing to admit.
    if (c[b + QUEUED] === 0 && c[b + STARTING] === 0) return;
    const ready: Ticket[] = [];
    this.pump(hash, ready);
    this.runReady(ready);
  }

  /**
   * Run admitted tickets in admission order. Commands that arrive meanwhile
   * queue behind them (see STARTING) and are let in afterwards.
   */
  private runReady(ready: Ticket[]): void {
    if (ready.length === 0) return;
    for (const t of ready) t.run();
    const again: Ticket[] = [];
    for (const t of ready) {
      if (t.kind !== WRITE) continue;
      this.counts[((t.hash & MASK) << 2) + STARTING]!--;
      this.pump(t.hash, again);
    }
    this.runReady(again);
  }

  /** Admit queued commands at the head of `hash`'s queue; collect those now holding every key. */
  private pump(hash: number, ready: Ticket[]): void {
    const c = this.counts;
    const stripe = hash & MASK;
    const b = stripe << 2;
    // Admitted writes not yet run go first; runReady pumps again after them.
    if (c[b + STARTING]! > 0) return;
    const q = this.queues.get(stripe);
    if (q === undefined) return;
    while (q.length > 0) {
      const t = q[0]!;
      if (!admits(c, b, t.kind)) break;
      q.shift();
      c[b + QUEUED]!--;
      if (t.kind === READ) c[b + READS]!++;
      else if (t.kind === EXCLUSIVE) c[b + HELD]!++;
      else c[b + STARTING]!++;
      if (--t.pending === 0) ready.push(t);
    }
    if (q.length === 0) this.queues.delete(stripe);
  }
}

function admits(c: Int32Array, b: number, kind: Kind): boolean {
  if (kind === READ) return c[b + HELD] === 0;
  return c[b + READS] === 0 && c[b + HELD] === 0;
}
