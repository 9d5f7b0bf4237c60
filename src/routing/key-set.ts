/**
 * KeySet: an exact, append-only set of byte strings, kept compact for the
 * millions of keys a re-sync lists.
 *
 * Contract:
 * - `add(bytes)` copies the bytes in (the caller may reuse its buffer) and
 *   tells whether they were new. Keys are numbered from 0 in the order they
 *   were first added; `at(i)` is a view of key `i`, valid for the set's life
 *   (stored bytes are never moved or overwritten).
 * - Memory per key is its length plus about 22 bytes: the bytes sit in 1 MiB
 *   chunks, and positions, lengths, hashes and the open-addressing table are
 *   typed arrays. A Set of strings plus a Buffer per key cost about ten times
 *   that, and kept a million objects alive for the garbage collector to trace.
 * - Keys longer than 65535 bytes are refused (memcached's are at most 250).
 */

const CHUNK = 1 << 20;
const MAX_KEY = 0xffff;

export class KeySet {
  private chunks: Buffer[] = [];
  /** Bytes used of the last chunk. */
  private used = 0;
  /** Position of key i: chunk index * CHUNK + offset. */
  private pos = new Float64Array(1024);
  private len = new Uint16Array(1024);
  private hashes = new Uint32Array(1024);
  /** Open addressing, linear probing: key index + 1, 0 for a free slot. Kept at most half full. */
  private table = new Uint32Array(2048);
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** Add `bytes`; true when it was not in the set yet. */
  add(bytes: Uint8Array): boolean {
    const n = bytes.length;
    if (n > MAX_KEY) throw new RangeError(`key of ${n} bytes`);
    const h = hashOf(bytes);
    const mask = this.table.length - 1;
    let slot = h & mask;
    for (;;) {
      const e = this.table[slot]!;
      if (e === 0) break;
      if (this.hashes[e - 1] === h && this.equalsAt(e - 1, bytes)) return false;
      slot = (slot + 1) & mask;
    }
    if (this.chunks.length === 0 || this.used + n > CHUNK) {
      this.chunks.push(Buffer.allocUnsafeSlow(CHUNK));
      this.used = 0;
    }
    const i = this.count;
    if (i === this.pos.length) this.growKeys();
    this.chunks[this.chunks.length - 1]!.set(bytes, this.used);
    this.pos[i] = (this.chunks.length - 1) * CHUNK + this.used;
    this.len[i] = n;
    this.hashes[i] = h;
    this.used += n;
    this.count = i + 1;
    this.table[slot] = i + 1;
    if (this.count * 2 > this.table.length) this.rehash();
    return true;
  }

  /** Key `i` (0 <= i < size), as a view of the stored bytes. */
  at(i: number): Buffer | undefined {
    if (i < 0 || i >= this.count) return undefined;
    const p = this.pos[i]!;
    const c = Math.floor(p / CHUNK);
    const o = p - c * CHUNK;
    return this.chunks[c]!.subarray(o, o + this.len[i]!);
  }

  private equalsAt(i: number, bytes: Uint8Array): boolean {
    const n = this.len[i]!;
    if (n !== bytes.length) return false;
    const p = this.pos[i]!;
    const c = Math.floor(p / CHUNK);
    const chunk = this.chunks[c]!;
    const o = p - c * CHUNK;
    for (let j = 0; j < n; j++) if (chunk[o + j] !== bytes[j]) return false;
    return true;
  }

  private growKeys(): void {
    const cap = this.pos.length * 2;
    const pos = new Float64Array(cap);
    pos.set(this.pos);
    this.pos = pos;
    const len = new Uint16Array(cap);
    len.set(this.len);
    this.len = len;
    const hashes = new Uint32Array(cap);
    hashes.set(this.hashes);
    this.hashes = hashes;
  }

  private rehash(): void {
    const table = new Uint32Array(this.table.length * 2);
    const mask = table.length - 1;
    for (let i = 0; i < this.count; i++) {
      let slot = this.hashes[i]! & mask;
      while (table[slot] !== 0) slot = (slot + 1) & mask;
      table[slot] = i + 1;
    }
    this.table = table;
  }
}

/** FNV-1a, then murmur3's finalizer so the low bits (the table index) mix well. */
function hashOf(b: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b[i]!, 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
