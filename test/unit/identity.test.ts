/**
 * Who answers on a node: the identity rows of `stats` (backend/node.ts), how
 * a restart is told from the same process, and the version check.
 */

import { expect } from 'chai';
import {
  type Identity,
  hasMetaCommands,
  identityOf,
  restartedSince,
} from '../../src/backend/node.js';
import { Reply } from '../../src/protocol/response-parser.js';

function statsReply(rows: Record<string, string | number>): Reply {
  const r = new Reply(Buffer.from('END'), Buffer.alloc(0));
  r.lines = Object.entries(rows).map(([k, v]) => Buffer.from(`STAT ${k} ${v}`, 'latin1'));
  return r;
}

const base: Identity = { version: '1.6.18', pid: 100, boot: 1_700_000_000, totalConnections: 50 };

describe('node identity', function () {
  it('reads version, pid, boot time and total connections from stats', function () {
    const id = identityOf(
      statsReply({
        pid: 4242,
        uptime: 30,
        time: 1_700_000_100,
        version: '1.6.18',
        total_connections: 12,
        curr_items: 7,
      }),
    );
    expect(id).to.deep.equal({
      version: '1.6.18',
      pid: 4242,
      boot: 1_700_000_070,
      totalConnections: 12,
    });
  });

  it('is null without pid, uptime or time, or for an error reply', function () {
    expect(identityOf(statsReply({ pid: 1, uptime: 2 }))).to.equal(null);
    expect(identityOf(null)).to.equal(null);
    const err = new Reply(Buffer.from('ERROR'), Buffer.from('ERROR\r\n'));
    expect(identityOf(err)).to.equal(null);
  });

  it('tells a restart (new pid, later boot, fewer connections) from the same process', function () {
    expect(restartedSince(base, { ...base })).to.equal(false);
    // Boot times are whole seconds of two clocks: a second either way is the same process.
    expect(restartedSince(base, { ...base, boot: base.boot + 1 })).to.equal(false);
    expect(restartedSince(base, { ...base, totalConnections: 80 })).to.equal(false);
    expect(restartedSince(base, { ...base, pid: 101 })).to.equal(true);
    expect(restartedSince(base, { ...base, boot: base.boot + 5 })).to.equal(true);
    // pid 1 in a container, restarted within the second: fewer connections give it away.
    expect(restartedSince(base, { ...base, totalConnections: 3 })).to.equal(true);
  });

  it('knows which memcached versions have the meta commands', function () {
    for (const v of ['1.6.0', '1.6.18', '1.10.2', '2.0.0', '']) {
      expect(hasMetaCommands(v), v).to.equal(true);
    }
    for (const v of ['1.5.22', '1.4.39', '0.9']) expect(hasMetaCommands(v), v).to.equal(false);
  });
});
