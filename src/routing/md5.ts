/**
 * MD5 (RFC 1321) of raw bytes, reduced to what ketama needs: the digest's
 * first 32-bit word, little-endian.
 *
 * Why not node:crypto: a key lookup is on every request, and createHash costs
 * about 1.9 µs (an object, a digest Buffer) where this costs about 0.15 µs for
 * a session-sized key. It allocates nothing. Checked against node:crypto for
 * every length across several blocks (test/unit/md5.test.ts).
 */

/** One 64-byte block as 16 little-endian words (reused: the hash is synchronous). */
const X = new Int32Array(16);
/** The chaining state between blocks: a, b, c, d. */
const H = new Int32Array(4);

/**
 * Fold block X into H: the RFC's 64 steps unrolled, with its constants
 * (K[i] = floor(|sin(i + 1)| * 2^32) as signed 32-bit integers, the shifts,
 * the message word of each step) written in place. A loop with table
 * lookups and a branch per step costs about twice as much, and this runs on
 * every request.
 */
function compress(): void {
  const x0 = X[0]!,
    x1 = X[1]!,
    x2 = X[2]!,
    x3 = X[3]!,
    x4 = X[4]!,
    x5 = X[5]!,
    x6 = X[6]!,
    x7 = X[7]!;
  const x8 = X[8]!,
    x9 = X[9]!,
    x10 = X[10]!,
    x11 = X[11]!,
    x12 = X[12]!,
    x13 = X[13]!,
    x14 = X[14]!,
    x15 = X[15]!;
  let a = H[0]!;
  let b = H[1]!;
  let c = H[2]!;
  let d = H[3]!;
  a = (a + ((b & c) | (~b & d)) + x0 + -680876936) | 0;
  a = (b + ((a << 7) | (a >>> 25))) | 0;
  d = (d + ((a & b) | (~a & c)) + x1 + -389564586) | 0;
  d = (a + ((d << 12) | (d >>> 20))) | 0;
  c = (c + ((d & a) | (~d & b)) + x2 + 606105819) | 0;
  c = (d + ((c << 17) | (c >>> 15))) | 0;
  b = (b + ((c & d) | (~c & a)) + x3 + -1044525330) | 0;
  b = (c + ((b << 22) | (b >>> 10))) | 0;
  a = (a + ((b & c) | (~b & d)) + x4 + -176418897) | 0;
  a = (b + ((a << 7) | (a >>> 25))) | 0;
  d = (d + ((a & b) | (~a & c)) + x5 + 1200080426) | 0;
  d = (a + ((d << 12) | (d >>> 20))) | 0;
  c = (c + ((d & a) | (~d & b)) + x6 + -1473231341) | 0;
  c = (d + ((c << 17) | (c >>> 15))) | 0;
  b = (b + ((c & d) | (~c & a)) + x7 + -45705983) | 0;
  b = (c + ((b << 22) | (b >>> 10))) | 0;
  a = (a + ((b & c) | (~b & d)) + x8 + 1770035416) | 0;
  a = (b + ((a << 7) | (a >>> 25))) | 0;
  d = (d + ((a & b) | (~a & c)) + x9 + -1958414417) | 0;
  d = (a + ((d << 12) | (d >>> 20))) | 0;
  c = (c + ((d & a) | (~d & b)) + x10 + -42063) | 0;
  c = (d + ((c << 17) | (c >>> 15))) | 0;
  b = (b + ((c & d) | (~c & a)) + x11 + -1990404162) | 0;
  b = (c + ((b << 22) | (b >>> 10))) | 0;
  a = (a + ((b & c) | (~b & d)) + x12 + 1804603682) | 0;
  a = (b + ((a << 7) | (a >>> 25))) | 0;
  d = (d + ((a & b) | (~a & c)) + x13 + -40341101) | 0;
  d = (a + ((d << 12) | (d >>> 20))) | 0;
  c = (c + ((d & a) | (~d & b)) + x14 + -1502002290) | 0;
  c = (d + ((c << 17) | (c >>> 15))) | 0;
  b = (b + ((c & d) | (~c & a)) + x15 + 1236535329) | 0;
  b = (c + ((b << 22) | (b >>> 10))) | 0;
  a = (a + ((b & d) | (c & ~d)) + x1 + -165796510) | 0;
  a = (b + ((a << 5) | (a >>> 27))) | 0;
  d = (d + ((a & c) | (b & ~c)) + x6 + -1069501632) | 0;
  d = (a + ((d << 9) | (d >>> 23))) | 0;
  c = (c + ((d & b) | (a & ~b)) + x11 + 643717713) | 0;
  c = (d + ((c << 14) | (c >>> 18))) | 0;
  b = (b + ((c & a) | (d & ~a)) + x0 + -373897302) | 0;
  b = (c + ((b << 20) | (b >>> 12))) | 0;
  a = (a + ((b & d) | (c & ~d)) + x5 + -701558691) | 0;
  a = (b + ((a << 5) | (a >>> 27))) | 0;
  d = (d + ((a & c) | (b & ~c)) + x10 + 38016083) | 0;
  d = (a + ((d << 9) | (d >>> 23))) | 0;
  c = (c + ((d & b) | (a & ~b)) + x15 + -660478335) | 0;
  c = (d + ((c << 14) | (c >>> 18))) | 0;
  b = (b + ((c & a) | (d & ~a)) + x4 + -405537848) | 0;
  b = (c + ((b << 20) | (b >>> 12))) | 0;
  a = (a + ((b & d) | (c & ~d)) + x9 + 568446438) | 0;
  a = (b + ((a << 5) | (a >>> 27))) | 0;
  d = (d + ((a & c) | (b & ~c)) + x14 + -1019803690) | 0;
  d = (a + ((d << 9) | (d >>> 23))) | 0;
  c = (c + ((d & b) | (a & ~b)) + x3 + -187363961) | 0;
  c = (d + ((c << 14) | (c >>> 18))) | 0;
  b = (b + ((c & a) | (d & ~a)) + x8 + 1163531501) | 0;
  b = (c + ((b << 20) | (b >>> 12))) | 0;
  a = (a + ((b & d) | (c & ~d)) + x13 + -1444681467) | 0;
  a = (b + ((a << 5) | (a >>> 27))) | 0;
  d = (d + ((a & c) | (b & ~c)) + x2 + -51403784) | 0;
  d = (a + ((d << 9) | (d >>> 23))) | 0;
  c = (c + ((d & b) | (a & ~b)) + x7 + 1735328473) | 0;
  c = (d + ((c << 14) | (c >>> 18))) | 0;
  b = (b + ((c & a) | (d & ~a)) + x12 + -1926607734) | 0;
  b = (c + ((b << 20) | (b >>> 12))) | 0;
  a = (a + (b ^ c ^ d) + x5 + -378558) | 0;
  a = (b + ((a << 4) | (a >>> 28))) | 0;
  d = (d + (a ^ b ^ c) + x8 + -2022574463) | 0;
  d = (a + ((d << 11) | (d >>> 21))) | 0;
  c = (c + (d ^ a ^ b) + x11 + 1839030562) | 0;
  c = (d + ((c << 16) | (c >>> 16))) | 0;
  b = (b + (c ^ d ^ a) + x14 + -35309556) | 0;
  b = (c + ((b << 23) | (b >>> 9))) | 0;
  a = (a + (b ^ c ^ d) + x1 + -1530992060) | 0;
  a = (b + ((a << 4) | (a >>> 28))) | 0;
  d = (d + (a ^ b ^ c) + x4 + 1272893353) | 0;
  d = (a + ((d << 11) | (d >>> 21))) | 0;
  c = (c + (d ^ a ^ b) + x7 + -155497632) | 0;
  c = (d + ((c << 16) | (c >>> 16))) | 0;
  b = (b + (c ^ d ^ a) + x10 + -1094730640) | 0;
  b = (c + ((b << 23) | (b >>> 9))) | 0;
  a = (a + (b ^ c ^ d) + x13 + 681279174) | 0;
  a = (b + ((a << 4) | (a >>> 28))) | 0;
  d = (d + (a ^ b ^ c) + x0 + -358537222) | 0;
  d = (a + ((d << 11) | (d >>> 21))) | 0;
  c = (c + (d ^ a ^ b) + x3 + -722521979) | 0;
  c = (d + ((c << 16) | (c >>> 16))) | 0;
  b = (b + (c ^ d ^ a) + x6 + 76029189) | 0;
  b = (c + ((b << 23) | (b >>> 9))) | 0;
  a = (a + (b ^ c ^ d) + x9 + -640364487) | 0;
  a = (b + ((a << 4) | (a >>> 28))) | 0;
  d = (d + (a ^ b ^ c) + x12 + -421815835) | 0;
  d = (a + ((d << 11) | (d >>> 21))) | 0;
  c = (c + (d ^ a ^ b) + x15 + 530742520) | 0;
  c = (d + ((c << 16) | (c >>> 16))) | 0;
  b = (b + (c ^ d ^ a) + x2 + -995338651) | 0;
  b = (c + ((b << 23) | (b >>> 9))) | 0;
  a = (a + (c ^ (b | ~d)) + x0 + -198630844) | 0;
  a = (b + ((a << 6) | (a >>> 26))) | 0;
  d = (d + (b ^ (a | ~c)) + x7 + 1126891415) | 0;
  d = (a + ((d << 10) | (d >>> 22))) | 0;
  c = (c + (a ^ (d | ~b)) + x14 + -1416354905) | 0;
  c = (d + ((c << 15) | (c >>> 17))) | 0;
  b = (b + (d ^ (c | ~a)) + x5 + -57434055) | 0;
  b = (c + ((b << 21) | (b >>> 11))) | 0;
  a = (a + (c ^ (b | ~d)) + x12 + 1700485571) | 0;
  a = (b + ((a << 6) | (a >>> 26))) | 0;
  d = (d + (b ^ (a | ~c)) + x3 + -1894986606) | 0;
  d = (a + ((d << 10) | (d >>> 22))) | 0;
  c = (c + (a ^ (d | ~b)) + x10 + -1051523) | 0;
  c = (d + ((c << 15) | (c >>> 17))) | 0;
  b = (b + (d ^ (c | ~a)) + x1 + -2054922799) | 0;
  b = (c + ((b << 21) | (b >>> 11))) | 0;
  a = (a + (c ^ (b | ~d)) + x8 + 1873313359) | 0;
  a = (b + ((a << 6) | (a >>> 26))) | 0;
  d = (d + (b ^ (a | ~c)) + x15 + -30611744) | 0;
  d = (a + ((d << 10) | (d >>> 22))) | 0;
  c = (c + (a ^ (d | ~b)) + x6 + -1560198380) | 0;
  c = (d + ((c << 15) | (c >>> 17))) | 0;
  b = (b + (d ^ (c | ~a)) + x13 + 1309151649) | 0;
  b = (c + ((b << 21) | (b >>> 11))) | 0;
  a = (a + (c ^ (b | ~d)) + x4 + -145523070) | 0;
  a = (b + ((a << 6) | (a >>> 26))) | 0;
  d = (d + (b ^ (a | ~c)) + x11 + -1120210379) | 0;
  d = (a + ((d << 10) | (d >>> 22))) | 0;
  c = (c + (a ^ (d | ~b)) + x2 + 718787259) | 0;
  c = (d + ((c << 15) | (c >>> 17))) | 0;
  b = (b + (d ^ (c | ~a)) + x9 + -343485551) | 0;
  b = (c + ((b << 21) | (b >>> 11))) | 0;
  H[0] = (H[0]! + a) | 0;
  H[1] = (H[1]! + b) | 0;
  H[2] = (H[2]! + c) | 0;
  H[3] = (H[3]! + d) | 0;
}

/** The first 4 bytes of md5(key) as a little-endian unsigned integer. */
export function md5Word(key: Uint8Array): number {
  H[0] = 0x67452301;
  H[1] = 0xefcdab89 | 0;
  H[2] = 0x98badcfe | 0;
  H[3] = 0x10325476;
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
      // The key's tail (whole words, then the last bytes), then 0x80, then zeros. A short key is
      // one such block.
      let j = 0;
      let p = off;
      for (; p + 4 <= len; p += 4) {
        X[j++] = key[p]! | (key[p + 1]! << 8) | (key[p + 2]! << 16) | (key[p + 3]! << 24);
      }
      if (p <= len) {
        // 0-3 key bytes and the 0x80 that follows them share this word.
        let w = 0x80 << ((len - p) << 3);
        for (let q = len - 1; q >= p; q--) w |= key[q]! << ((q - p) << 3);
        X[j++] = w;
      }
      while (j < 16) X[j++] = 0;
    }
    if (blk === blocks - 1) {
      // Length in bits, as a 64-bit little-endian integer.
      X[14] = len << 3;
      X[15] = Math.floor(len / 0x20000000);
    }
    compress();
  }
  return H[0]! >>> 0;
}
