/**
 * MD5 (RFC 1321) of raw bytes, reduced to what ketama needs: the digest's
 * first 32-bit word, little-endian.
 *
 * Why not node:crypto: a key lookup is on every request, and createHash costs
 * about 1.9 µs (an object, a digest Buffer) where this costs about 0.25 µs for
 * a session-sized key. It allocates nothing. Checked against node:crypto for
 * every length across several blocks (test/unit/md5.test.ts).
 */

/** Left-rotate amounts, per round (4 per 16-step round). */
const SHIFT = new Uint8Array([7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21]);
/** K[i] = floor(|sin(i + 1)| * 2^32), as in the RFC. */
const K = new Int32Array(64);
for (let i = 0; i < 64; i++) K[i] = Math.floor(Math.abs(Math.sin(i + 1)) * 2 ** 32) | 0;
/** Message schedule index per step. */
const G = new Uint8Array(64);
for (let i = 0; i < 64; i++) {
  G[i] = i < 16 ? i : i < 32 ? (5 * i + 1) & 15 : i < 48 ? (3 * i + 5) & 15 : (7 * i) & 15;
}
/** One 64-byte block as 16 little-endian words (reused: the hash is synchronous). */
const X = new Int32Array(16);

/** Byte `p` of the padded message: the key, 0x80, zeros (the length is set separately). */
function byteAt(key: Uint8Array, p: number): number {
  if (p < key.length) return key[p]!;
  return p === key.length ? 0x80 : 0;
}

/** The first 4 bytes of md5(key) as a little-endian unsigned integer. */
export function md5Word(key: Uint8Array): number {
  let a0 = 0x67452301;
  let b0 = 0xefcdab89 | 0;
  let c0 = 0x98badcfe | 0;
  let d0 = 0x10325476;
  const len = key.length;
  // Blocks: the key, one 0x80 byte and the 8-byte bit length, rounded up to 64 bytes.
  const blocks = ((len + 8) >>> 6) + 1;
  for (let blk = 0; blk < blocks; blk++) {
    const off = blk << 6;
    if (off + 64 <= len) {
      for (let j = 0; j < 16; j++) {
        const p = off + (j << 2);
        X[j] = key[p]! | (key[p + 1]! << 8) | (key[p + 2]! << 16) | (key[p + 3]! << 24);
      }
    } else {
      for (let j = 0; j < 16; j++) {
        const p = off + (j << 2);
        X[j] =
          byteAt(key, p) |
          (byteAt(key, p + 1) << 8) |
          (byteAt(key, p + 2) << 16) |
          (byteAt(key, p + 3) << 24);
      }
    }
    if (blk === blocks - 1) {
      // Length in bits, as a 64-bit little-endian integer.
      X[14] = len << 3;
      X[15] = Math.floor(len / 0x20000000);
    }
    let a = a0;
    let b = b0;
    let c = c0;
    let d = d0;
    for (let i = 0; i < 64; i++) {
      let f: number;
      if (i < 16) f = (b & c) | (~b & d);
      else if (i < 32) f = (d & b) | (~d & c);
      else if (i < 48) f = b ^ c ^ d;
      else f = c ^ (b | ~d);
      const s = SHIFT[((i >>> 4) << 2) | (i & 3)]!;
      const t = (a + f + K[i]! + X[G[i]!]!) | 0;
      a = d;
      d = c;
      c = b;
      b = (b + ((t << s) | (t >>> (32 - s)))) | 0;
    }
    a0 = (a0 + a) | 0;
    b0 = (b0 + b) | 0;
    c0 = (c0 + c) | 0;
    d0 = (d0 + d) | 0;
  }
  return a0 >>> 0;
}
