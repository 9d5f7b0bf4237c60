/**
 * Base64 for meta-command keys (`b` flag), with memcached's decoding rules:
 * characters outside the alphabet are skipped, the alphabet characters must
 * come in groups of four, decoding stops after the first padded group, and
 * an empty result is a failure.
 */

const DECODE = new Int16Array(256).fill(-1);
{
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  for (let i = 0; i < alphabet.length; i++) DECODE[alphabet.charCodeAt(i)] = i;
  DECODE[0x3d] = 0; // '=' decodes as zero bits and counts as padding
}

/** Decode like memcached's base64_decode; undefined where it returns 0. */
export function decodeKey(src: Buffer): Buffer | undefined {
  let count = 0;
  for (let i = 0; i < src.length; i++) if (DECODE[src[i]!]! >= 0) count++;
  if (count === 0 || count % 4 !== 0) return undefined;
  const out = Buffer.allocUnsafe((count / 4) * 3);
  const block = [0, 0, 0, 0];
  let n = 0;
  let pos = 0;
  let pad = 0;
  for (let i = 0; i < src.length; i++) {
    const c = src[i]!;
    const v = DECODE[c]!;
    if (v < 0) continue;
    if (c === 0x3d) pad++;
    block[n++] = v;
    if (n === 4) {
      out[pos++] = ((block[0]! << 2) | (block[1]! >> 4)) & 0xff;
      out[pos++] = ((block[1]! << 4) | (block[2]! >> 2)) & 0xff;
      out[pos++] = ((block[2]! << 6) | block[3]!) & 0xff;
      n = 0;
      if (pad > 0) {
        if (pad > 2) return undefined;
        pos -= pad;
        break;
      }
    }
  }
  return pos === 0 ? undefined : out.subarray(0, pos);
}

export function encodeKey(key: Buffer): Buffer {
  return Buffer.from(key.toString('base64'), 'latin1');
}
