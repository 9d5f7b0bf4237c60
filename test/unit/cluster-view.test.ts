/**
 * ClusterView: the rules read from the cluster's etcd keys (leader, lost
 * outage logs, when an outage may end), on hand-built states.
 */

import { expect } from 'chai';
import { ClusterView, PENDING, READY, labelKey } from '../../src/coordination/view.js';

/** A view holding `keys` (value, created at the given revision). */
function view(keys: Record<string, readonly [string, number]>): ClusterView {
  const v = new ClusterView();
  for (const [k, [value, rev]] of Object.entries(keys)) v.put(k, { value, create: rev, mod: rev });
  return v;
}

describe('ClusterView', function () {
  it('the leader is the member that joined first, whatever the key order', function () {
    const v = view({ 'members/zz': ['1', 3], 'members/aa': ['1', 7], 'members/mm': ['1', 5] });
    expect(v.leader()).to.equal('zz');
    v.delete('members/zz', 9);
    expect(v.leader()).to.equal('mm');
    expect(v.revision).to.equal(9);
    expect(new ClusterView().leader()).to.equal(null);
  });

  it('a node label becomes one key segment', function () {
    expect(labelKey('10.0.0.1:11211')).to.equal('10.0.0.1%3A11211');
    expect(labelKey('cache/a b')).to.equal('cache%2Fa%20b');
    const v = view({ [`down/${labelKey('cache/a')}`]: ['m1', 4] });
    expect(v.outage('cache/a')?.create).to.equal(4);
    expect(v.outage('cache')).to.equal(undefined);
  });

  describe('an outage', function () {
    const base = {
      'members/a': ['1', 2],
      'members/b': ['1', 3],
      'down/n1': ['a', 10],
    } as Record<string, readonly [string, number]>;

    it('ends once every live member acked ready, and no flush is owed', function () {
      const v = view({ ...base, 'acks/n1/a': [READY, 10], 'acks/n1/b': [PENDING, 10] });
      expect(v.releasable('n1')).to.equal(false);
      v.put('acks/n1/b', { value: READY, create: 10, mod: 12 });
      expect(v.releasable('n1')).to.equal(true);
      v.put('flush/n1', { value: 'a', create: 13, mod: 13 });
      expect(v.releasable('n1'), 'a flush owed').to.equal(false);
    });

    it('waits for a live member that has no ack at all', function () {
      const v = view({ ...base, 'acks/n1/a': [READY, 10] });
      expect(v.releasable('n1')).to.equal(false);
      expect(v.lost('n1')).to.deep.equal([]);
    });

    it('a member gone with a pending ack is a lost log; gone after acking ready is not', function () {
      const v = view({
        'members/b': ['1', 3],
        'down/n1': ['a', 10],
        'acks/n1/a': [PENDING, 10],
        'acks/n1/b': [READY, 10],
        'acks/n1/c': [READY, 10],
      });
      expect(v.lost('n1')).to.deep.equal(['acks/n1/a']);
      expect(v.releasable('n1')).to.equal(false);
    });

    it('a flush claimed by a member that is gone is owed again', function () {
      const v = view({ ...base, 'acks/n1/a': [READY, 10], 'acks/n1/b': [READY, 10] });
      v.put('flush/n1', { value: 'c', create: 11, mod: 11 });
      expect(v.lost('n1')).to.deep.equal(['flush/n1']);
      v.put('flush/n1', { value: 'b', create: 11, mod: 12 });
      expect(v.lost('n1')).to.deep.equal([]);
    });

    it('no outage: nothing to release, nothing lost', function () {
      const v = view({ 'members/a': ['1', 2], 'acks/n1/x': [PENDING, 1] });
      expect(v.releasable('n1')).to.equal(false);
      expect(v.outage('n1')).to.equal(undefined);
    });
  });

  it('under() lists one directory, without its prefix, in key order', function () {
    const v = view({
      'fences/n1/6b32': ['a', 5],
      'fences/n1/6b31': ['a', 6],
      'fences/n10/00': ['a', 7],
    });
    expect(v.under('fences/n1').map(([k]) => k)).to.deep.equal(['6b31', '6b32']);
  });
});
