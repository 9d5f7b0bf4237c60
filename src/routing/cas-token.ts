/**
 * cas tokens across replicas. Each node numbers its items' cas uniques on its
 * own, so a token is only meaningful on the node that issued it. With more
 * than one replica, the token a client sees carries that node's index (plus
 * one) in its top byte; a token sent back is compared only on its own node.
 * A token from another node (the authority changed between `gets` and `cas`)
 * is sent as a cas unique no item has, so memcached itself answers EXISTS
 * (or NOT_FOUND), exactly as for any stale token. With one replica tokens
 * pass through unchanged.
 */

import { encodeValueWithCas } from '../protocol/encoder.js';
import { parseU64 } from '../protocol/numbers.js';
import type { Reply, Value } from '../protocol/response-parser.js';

const NODE_SHIFT = 56n;
const MASK = (1n << NODE_SHIFT) - 1n;
/**
 * A cas unique no item has (memcached's counter starts at 1 and would need
 * 2^64 writes to get there).
 */
export const CAS_NEVER = (1n << 64n) - 1n;
const C_FLAG = Buffer.from(' c');

export class CasTokens {
  /** Whether tokens carry their node (more than one replica, at start or since). */
  encoding: boolean;

  constructor(replicas: number) {
    this.encoding = replicas > 1;
  }

  /**
   * The replica count changed: past one, tokens carry their node from now
   * on (a token issued before names none, and fails a cas once, EXISTS).
   */
  placementChanged(replicas: number): void {
    if (replicas > 1) this.encoding = true;
  }

  /** Token a client sees for cas unique `cas` issued by `node`. */
  out(node: number, cas: bigint): bigint {
    if (!this.encoding) return cas;
    return (BigInt(node + 1) << NODE_SHIFT) | (cas & MASK);
  }

  /**
   * The cas unique to send to `node` for a client's token: the token's own
   * value if `node` issued it, else one that matches no item. 0 passes as is:
   * memcached gives it a meaning of its own (ma: no compare).
   */
  toNode(node: number, token: bigint): bigint {
    if (!this.encoding || token === 0n) return token;
    if (Number(token >> NODE_SHIFT) - 1 !== node) return CAS_NEVER;
    return token & MASK;
  }

  /** A gets/gats VALUE block with its cas unique as `node`'s token. */
  value(v: Value, node: number): Buffer | Buffer[] {
    if (!this.encoding || v.cas === undefined) return v.raw;
    return encodeValueWithCas(v, this.out(node, v.cas));
  }

  /** A meta reply with its `c<cas>` return flag as `node`'s token. */
  meta(r: Reply, node: number): Buffer | Buffer[] {
    if (!this.encoding) return r.raw;
    const line = r.line;
    // The flags follow the status (and a VA's size, digits): ` c<digits>` can only be the cas.
    let head = '';
    let copied = 0;
    let from = 0;
    for (;;) {
      const at = line.indexOf(C_FLAG, from);
      if (at < 0) break;
      const d0 = at + 2;
      let d1 = d0;
      while (d1 < line.length && line[d1]! >= 0x30 && line[d1]! <= 0x39) d1++;
      from = d0;
      if (d1 === d0 || (d1 < line.length && line[d1] !== 0x20)) continue;
      const cas = parseU64(line, d0, d1);
      if (cas === undefined) continue;
      head += line.toString('latin1', copied, d0) + String(this.out(node, cas));
      copied = d1;
    }
    if (copied === 0) return r.raw;
    const out = Buffer.from(head + line.toString('latin1', copied) + '\r\n', 'latin1');
    return r.bytes < 0 ? out : [out, r.raw.subarray(r.dataOffset)];
  }
}
