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

import type { Reply, Value } from '../protocol/response-parser.js';

const NODE_SHIFT = 56n;
const MASK = (1n << NODE_SHIFT) - 1n;
/**
 * A cas unique no item has (memcached's counter starts at 1 and would need
 * 2^64 writes to get there).
 */
export const CAS_NEVER = (1n << 64n) - 1n;

export class CasTokens {
  /** Whether tokens carry their node (more than one replica). */
  readonly encoding: boolean;

  constructor(replicas: number) {
    this.encoding = replicas > 1;
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
    const head = `VALUE ${v.key.toString('latin1')} ${v.flags} ${v.bytes} ${this.out(node, v.cas)}\r\n`;
    return [Buffer.from(head, 'latin1'), v.raw.subarray(v.dataOffset)];
  }

  /** A meta reply with its `c<cas>` return flag as `node`'s token. */
  meta(r: Reply, node: number): Buffer | Buffer[] {
    if (!this.encoding) return r.raw;
    const parts = r.line.toString('latin1').split(' ');
    let changed = false;
    const from = parts[0] === 'VA' ? 2 : 1;
    for (let i = from; i < parts.length; i++) {
      const p = parts[i]!;
      if (p[0] === 'c' && /^c\d+$/.test(p)) {
        parts[i] = `c${this.out(node, BigInt(p.slice(1)))}`;
        changed = true;
      }
    }
    if (!changed) return r.raw;
    const head = Buffer.from(parts.join(' ') + '\r\n', 'latin1');
    return r.bytes < 0 ? head : [head, r.raw.subarray(r.dataOffset)];
  }
}
