/**
 * Unit tests for KeySet (src/routing/key-set.ts), the re-sync's compact set
 * of listed keys: checked against a plain Set of the same keys.
 */

import { expect } from 'chai';
import { KeySet } from '../../src/routing/key-set.js';
import { prng } from '../helpers/split.js';

describe('KeySet', function () {
  it('agrees with a Set over 200k random keys with repeats (32-bit hashes collide at that size)', function () {
    const rnd = prng(7);
    const set = new KeySet();
    const model = new Set<string>();
    const order: string[] = [];
    for (let n = 0; n < 200_000; n++) {
      // Short keys from a small alphabet repeat often; long ones carry any byte.
      const len = rnd() < 0.5 ? 1 + Math.floor(rnd() * 3) : Math.floor(rnd() * 251);
      const k = Buffer.alloc(len);
      for (let i = 0; i < len; i++) k[i] = len <= 3 ? 0x61 + Math.floor(rnd() * 20) : rnd() * 256;
      const s = k.toString('latin1');
      const isNew = !model.has(s);
      if (isNew) {
        model.add(s);
        order.push(s);
      }
      expect(set.add(k), `add #${n}`).to.equal(isNew);
    }
    expect(set.size).to.equal(model.size);
    for (let i = 0; i < order.length; i++) {
      if (set.at(i)!.toString('latin1') !== order[i]) expect.fail(`key ${i} differs`);
    }
    expect(set.at(order.length)).to.equal(undefined);
    expect(set.at(-1)).to.equal(undefined);
  });

  it('copies what it adds: the caller may reuse its buffer, and stored keys never move', function () {
    const set = new KeySet();
    const scratch = Buffer.alloc(250);
    const views: Buffer[] = [];
    // 250-byte keys fill more than four 1 MiB chunks; none may straddle two.
    for (let n = 0; n < 20_000; n++) {
      scratch.fill(0x20 + (n % 90));
      scratch.writeUInt32BE(n, 0);
      expect(set.add(scratch)).to.equal(true);
      views.push(set.at(n)!);
    }
    for (let n = 0; n < 20_000; n++) {
      scratch.fill(0x20 + (n % 90));
      scratch.writeUInt32BE(n, 0);
      if (!views[n]!.equals(scratch) || !set.at(n)!.equals(scratch)) expect.fail(`key ${n}`);
      expect(set.add(scratch)).to.equal(false);
    }
  });

  it('holds the empty key and keys that differ only in length', function () {
    const set = new KeySet();
    expect(set.add(Buffer.alloc(0))).to.equal(true);
    expect(set.add(Buffer.from('a'))).to.equal(true);
    expect(set.add(Buffer.from('aa'))).to.equal(true);
    expect(set.add(Buffer.alloc(0))).to.equal(false);
    expect(set.add(Buffer.from('a'))).to.equal(false);
    expect([0, 1, 2].map((i) => set.at(i)!.toString())).to.deep.equal(['', 'a', 'aa']);
  });

  it('refuses a key longer than 65535 bytes', function () {
    expect(() => new KeySet().add(Buffer.alloc(65536))).to.throw(RangeError);
  });
});
