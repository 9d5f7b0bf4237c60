/**
 * Ring lookups: the bucketed find() agrees with a plain binary search for
 * every point, its neighbours, bucket edges, the ends of the hash space and
 * random hashes, for rings of several sizes.
 */

import { expect } from 'chai';
import { hashedLabel, Ring } from '../../src/routing/ring.js';

interface Internals {
  points: Uint32Array;
  find(h: number): number;
}

/** First point at or after h, wrapping to 0: the definition, by linear scan. */
function reference(points: Uint32Array, h: number): number {
  for (let i = 0; i < points.length; i++) if (points[i]! >= h) return i;
  return 0;
}

describe('Ring.find', function () {
  for (const n of [1, 2, 3, 7, 40]) {
    it(`matches the definition on a ring of ${n} node(s)`, function () {
      const ring = new Ring(
        Array.from({ length: n }, (_, i) => ({ label: `10.0.0.${i}:11211`, weight: 1 })),
      );
      const r = ring as unknown as Internals;
      const hashes: number[] = [0, 1, 0xffffffff, 0xfffffffe, 2 ** 31];
      for (const p of r.points) hashes.push(p, p - 1, p + 1);
      for (let b = 0; b < 4096; b++) hashes.push(b * 2 ** 20, b * 2 ** 20 - 1);
      let s = 7;
      for (let i = 0; i < 20000; i++) {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        hashes.push(s);
      }
      for (const h of hashes) {
        if (h < 0 || h > 0xffffffff) continue;
        expect(r.find(h), `hash ${h}`).to.equal(reference(r.points, h));
      }
    });
  }
});

describe('Ring labels', function () {
  it('hashes host alone for a label host:11211, the whole label otherwise', function () {
    expect(hashedLabel('cache-a:11211')).to.equal('cache-a');
    expect(hashedLabel('cache-a:11212')).to.equal('cache-a:11212');
    expect(hashedLabel('cache-a')).to.equal('cache-a');
    expect(hashedLabel('x:11211:y')).to.equal('x');
    expect(hashedLabel('::1:11211')).to.equal('::1:11211');
  });

  it('gives two labels hashed as one string the same points, so it refuses them', function () {
    // What the check prevents: "cache-a" and "cache-a:11211" alone would own one set of points.
    const a = new Ring([{ label: 'cache-a', weight: 1 }]) as unknown as Internals;
    const b = new Ring([{ label: 'cache-a:11211', weight: 1 }]) as unknown as Internals;
    expect([...a.points]).to.deep.equal([...b.points]);
    expect(
      () =>
        new Ring([
          { label: 'cache-a', weight: 1 },
          { label: 'cache-b', weight: 1 },
          { label: 'cache-a:11211', weight: 1 },
        ]),
    ).to.throw('ring labels cache-a and cache-a:11211 are both hashed as "cache-a"');
  });
});
