/**
 * The consistent-hash ring: md5 ketama, placement-compatible with
 * libmemcached and twemproxy (160 points per node at equal weights, node
 * label "host:port", or "host" alone for port 11211, or the node's name).
 *
 * hashring builds the continuum; lookups are done here on raw key bytes, so
 * any key (invalid UTF-8, `__proto__`) hashes exactly as the bytes a client
 * sent, and no lookup touches hashring's object-keyed cache. A lookup is an
 * md5 of the key (md5.ts, no allocation) and a binary search; the replica
 * order is computed once per continuum point, so there is no per-key cache
 * to size or thrash. The ring never changes when a node goes down: callers
 * skip down nodes in the replica list.
 */

import HashRing from 'hashring';
import { md5Word } from './md5.js';

export interface RingNode {
  /** Label hashed onto the ring. */
  label: string;
  weight: number;
  /** The node's index in the proxy's node list (default: its position in this ring's). */
  index?: number;
}

/**
 * The string the ring hashes for a label (as "<string>-<i>" for its i-th group of points),
 * as hashring does with 'default port' 11211 (and libmemcached for port 11211): the part
 * before the first ':' when the part after it reads as 11211, the whole label otherwise. So
 * "cache-a:11211" and "cache-a" hash alike; an IPv6 "::1:11211" is hashed whole. Two labels
 * hashed as one string get the same points.
 */
export function hashedLabel(label: string): string {
  const parts = label.split(':');
  return Number(parts[1]) === 11211 ? parts[0]! : label;
}

/** Hash bits below the bucket index (4096 buckets). */
const BUCKET_SHIFT = 20;

export class Ring {
  /** Continuum point values, ascending. */
  private readonly points: Uint32Array;
  /** Node index owning each point. */
  private readonly owners: Uint16Array;
  /**
   * For each of 4096 equal slices of the hash space, the index of its first
   * point (points.length when none is left): a lookup then scans a point or
   * two instead of a binary search's dozen unpredictable branches.
   */
  private readonly buckets: Uint32Array;
  private readonly nodeCount: number;
  /** One more than the largest node index. */
  private readonly indexSpan: number;
  /** Replica order starting at each point, filled in on first use. */
  private readonly orders: (Uint16Array | undefined)[];
  /** The first `setSize` entries of each point's order (see replicas). */
  private readonly sets: (Uint16Array | undefined)[];
  private setSize = 0;

  constructor(nodes: readonly RingNode[]) {
    if (nodes.length === 0) throw new Error('ring needs at least one node');
    const servers: Record<string, number> = Object.create(null);
    const index = new Map<string, number>();
    const hashed = new Map<string, string>();
    nodes.forEach((n, i) => {
      if (index.has(n.label)) throw new Error(`duplicate ring label ${n.label}`);
      const h = hashedLabel(n.label);
      const other = hashed.get(h);
      if (other !== undefined)
        throw new Error(`ring labels ${other} and ${n.label} are both hashed as "${h}"`);
      hashed.set(h, n.label);
      servers[n.label] = n.weight;
      index.set(n.label, n.index ?? i);
    });
    // 'default port' 11211 makes hashring hash "host-i" for such nodes, as libmemcached does.
    const ring = new HashRing(servers as unknown as string[], 'md5', {
      'max cache size': 1,
      'default port': 11211,
    });
    // connection-parse collects per-label vnode counts in a plain object, so a label such as
    // `__proto__` or `constructor` reads an inherited value there and gets no points. msproxy
    // sets no per-node vnodes: rebuild the continuum with a prototype-free, empty table.
    const internal = ring as unknown as {
      vnodes: Record<string, number>;
      ring: { value: number; server: string }[];
      continuum(): void;
    };
    internal.vnodes = Object.create(null) as Record<string, number>;
    internal.ring = [];
    internal.continuum();
    const continuum = internal.ring;
    this.points = new Uint32Array(continuum.length);
    this.owners = new Uint16Array(continuum.length);
    continuum.forEach((p, i) => {
      this.points[i] = p.value;
      this.owners[i] = index.get(p.server)!;
    });
    // The first point at or after the start of each bucket of the hash space.
    this.buckets = new Uint32Array(1 << (32 - BUCKET_SHIFT));
    for (let b = 0; b < this.buckets.length; b++)
      this.buckets[b] = this.search(b * 2 ** BUCKET_SHIFT);
    this.nodeCount = nodes.length;
    this.indexSpan = Math.max(...index.values()) + 1;
    this.orders = new Array<Uint16Array | undefined>(continuum.length).fill(undefined);
    this.sets = new Array<Uint16Array | undefined>(continuum.length).fill(undefined);
  }

  /** ketama hash of raw key bytes: the first 4 bytes of md5, little-endian. */
  static hash(key: Uint8Array): number {
    return md5Word(key);
  }

  /** Index of the first point at or after `h`, wrapping to 0. */
  private find(h: number): number {
    // Start from the first point of h's bucket: usually it, or the one after it, is the answer.
    let i = this.buckets[h >>> BUCKET_SHIFT]!;
    const points = this.points;
    while (i < points.length && points[i]! < h) i++;
    return i === points.length ? 0 : i;
  }

  /** Index of the first point at or after `h`, or points.length: a binary search (for buckets). */
  private search(h: number): number {
    let lo = 0;
    let hi = this.points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.points[mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * All nodes in ring order from the key's point: the primary first, then the
   * next distinct nodes. Callers take the first R as the replica set. The
   * array is shared: read it, never change it.
   */
  order(key: Uint8Array): Uint16Array {
    const start = this.find(md5Word(key));
    return this.orders[start] ?? this.orderAt(start);
  }

  private orderAt(start: number): Uint16Array {
    const out = new Uint16Array(this.nodeCount);
    const seen = new Uint8Array(this.indexSpan);
    let n = 0;
    for (let i = 0; i < this.points.length && n < this.nodeCount; i++) {
      const owner = this.owners[(start + i) % this.points.length]!;
      if (seen[owner] === 0) {
        seen[owner] = 1;
        out[n++] = owner;
      }
    }
    this.orders[start] = out;
    return out;
  }

  /**
   * The key's first `r` nodes in ring order: its replica set, primary first.
   * Shared like `order()`: read it, never change it.
   */
  replicas(key: Uint8Array, r: number): Uint16Array {
    if (r !== this.setSize) {
      this.sets.fill(undefined);
      this.setSize = r;
    }
    const start = this.find(md5Word(key));
    let set = this.sets[start];
    if (set === undefined) {
      set = (this.orders[start] ?? this.orderAt(start)).subarray(0, r);
      this.sets[start] = set;
    }
    return set;
  }

  /** The primary node of a key. */
  primary(key: Uint8Array): number {
    return this.order(key)[0]!;
  }
}
