/**
 * Config validation (src/config.ts): nodes listed twice, by ring label or by
 * address, and replicas against the number of nodes.
 */

import { expect } from 'chai';
import { ConfigError, changedFields, parseConfig, reloadPlan } from '../../src/config.js';

function withNodes(nodes: unknown[]): unknown {
  return { listen: '127.0.0.1:0', nodes, replicas: 2 };
}

/** The error text parseConfig throws for `nodes`. */
function refusal(nodes: unknown[]): string {
  try {
    parseConfig(withNodes(nodes));
  } catch (err) {
    expect(err).to.be.instanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error(`accepted ${JSON.stringify(nodes)}`);
}

describe('config: nodes listed twice', function () {
  it('refuses a duplicate ring label', function () {
    expect(refusal(['a:1', 'b:2', 'a:1'])).to.equal(
      'config: nodes[2]: duplicate node a:1 (same as nodes[0])',
    );
  });

  it('refuses one address under two labels, naming both entries', function () {
    expect(refusal(['127.0.0.1:41211', { host: '127.0.0.1', port: 41211, name: 'x' }])).to.equal(
      'config: nodes[1]: duplicate address 127.0.0.1:41211 "x" (same memcached as nodes[0], 127.0.0.1:41211)',
    );
  });

  it('compares hosts without case', function () {
    expect(refusal(['Cache-A:11211', { host: 'cache-a', port: 11211, name: 'b' }])).to.equal(
      'config: nodes[1]: duplicate address cache-a:11211 "b" (same memcached as nodes[0], Cache-A:11211)',
    );
  });

  it('takes localhost for 127.0.0.1 and for ::1', function () {
    expect(refusal(['127.0.0.1:5000', 'localhost:5000'])).to.equal(
      'config: nodes[1]: duplicate address localhost:5000 (same memcached as nodes[0], 127.0.0.1:5000)',
    );
    expect(refusal(['localhost:5000', '[::1]:5000'])).to.equal(
      'config: nodes[1]: duplicate address [::1]:5000 (same memcached as nodes[0], localhost:5000)',
    );
  });

  it('accepts the same host on other ports, and 127.0.0.1 beside ::1', function () {
    const c = parseConfig(
      withNodes(['127.0.0.1:5000', '127.0.0.1:5001', '[::1]:5000', { host: 'a', port: 1 }]),
    );
    expect(c.nodes.map((n) => `${n.host} ${n.port}`)).to.deep.equal([
      '127.0.0.1 5000',
      '127.0.0.1 5001',
      '::1 5000',
      'a 1',
    ]);
  });

  it('reports every duplicate, one line each', function () {
    expect(
      refusal(['a:1', 'b:2', { host: 'A', port: 1, name: 'n' }, 'b:2']).split('\n'),
    ).to.deep.equal([
      'config: nodes[2]: duplicate address A:1 "n" (same memcached as nodes[0], a:1)',
      'config: nodes[3]: duplicate node b:2 (same as nodes[1])',
    ]);
  });
});

describe('config: one address, other spellings', function () {
  for (const [a, b] of [
    ['::1', '0:0:0:0:0:0:0:1'],
    ['127.0.0.1', '::ffff:127.0.0.1'],
    ['localhost', 'LOCALHOST.'],
    ['127.0.0.1', '127.1'],
    ['cache-a.example', 'Cache-A.example.'],
  ]) {
    it(`takes ${a} and ${b} for one memcached`, function () {
      expect(
        refusal([
          { host: a, port: 11311 },
          { host: b, port: 11311 },
        ]),
      ).to.match(/^config: nodes\[1\]: duplicate address /);
    });
  }

  it('keeps distinct addresses apart', function () {
    expect(() =>
      parseConfig(withNodes(['10.0.0.1:1', '10.0.0.2:1', '[::2]:1', '::ffff:10.0.0.3:1'])),
    ).not.to.throw();
  });
});

describe('config: replicas', function () {
  it('says that replicas defaults to 2 when one node is given without it', function () {
    let message = '';
    try {
      parseConfig({ listen: '127.0.0.1:0', nodes: ['127.0.0.1:11211'] });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).to.equal(
      'config: replicas: replicas (2; 2 when not set) cannot exceed the number of nodes (1)',
    );
  });
});

describe('config: nodes whose ring points would coincide', function () {
  // The ring hashes a node's label as hashring does: "host" alone when the label reads
  // "host:11211", the whole label otherwise. Two nodes hashing one string get the same 160
  // points, and the one listed later is never a key's primary.
  it('refuses host:11211 beside a node named host', function () {
    expect(
      refusal([
        { host: '10.0.0.1', port: 11211, name: 'cache-a' },
        { host: 'cache-a', port: 11211 },
        '10.0.0.3:11211',
      ]),
    ).to.equal(
      'config: nodes[1]: ring label collision: cache-a:11211 is hashed onto the ring as "cache-a", as nodes[0] (10.0.0.1:11211 "cache-a") is; their ring points would coincide (give one a distinct name)',
    );
  });

  it('still calls a name spelled as another node’s host:port a duplicate node', function () {
    expect(
      refusal(['cache-b:11311', { host: '10.0.0.2', port: 11211, name: 'cache-b:11311' }]),
    ).to.equal('config: nodes[1]: duplicate node cache-b:11311 (same as nodes[0])');
  });

  it('refuses a name ending in :11211 beside a node named as its host', function () {
    expect(
      refusal([
        { host: '10.0.0.1', port: 5000, name: 'x' },
        { host: '10.0.0.2', port: 5000, name: 'x:11211' },
      ]),
    ).to.equal(
      'config: nodes[1]: ring label collision: 10.0.0.2:5000 "x:11211" is hashed onto the ring as "x", as nodes[0] (10.0.0.1:5000 "x") is; their ring points would coincide (give one a distinct name)',
    );
  });

  it('accepts labels that hash apart: host:11211 beside host:11212 and a name host-1', function () {
    const c = parseConfig(
      withNodes([
        'cache-a:11211',
        'cache-a:11212',
        { host: '10.0.0.1', port: 11211, name: 'cache-a-1' },
        { host: '10.0.0.2', port: 11211, name: 'cache-a:11212x' },
      ]),
    );
    expect(c.nodes).to.have.length(4);
  });
});

describe('config: what a reload may change', function () {
  const base = {
    listen: '127.0.0.1:11311',
    nodes: ['127.0.0.1:11211', { host: '127.0.0.1', port: 11212, name: 'b' }],
  };

  it('lists the fields that differ, defaults filled in, as dotted paths', function () {
    const a = parseConfig(base);
    expect(changedFields(a, parseConfig(base))).to.deep.equal([]);
    // Writing a default out changes nothing.
    expect(changedFields(a, parseConfig({ ...base, replicas: 2 }))).to.deep.equal([]);
    const b = parseConfig({
      ...base,
      timeouts: { requestMs: 300 },
      log: { level: 'warn' },
      limits: { maxInflight: 8 },
    });
    expect(changedFields(a, b).sort()).to.deep.equal([
      'limits.maxInflight',
      'log.level',
      'timeouts.requestMs',
    ]);
    expect(reloadPlan(a, b).refused).to.deep.equal([]);
  });

  it('refuses what only a restart can change, and placement with workers or coordination', function () {
    const a = parseConfig(base);
    const refused = (over: Record<string, unknown>): string[] =>
      reloadPlan(a, parseConfig({ ...base, ...over })).refused;
    expect(refused({ listen: '127.0.0.1:11312' })).to.deep.equal([
      'listen.port changes only with a restart',
    ]);
    expect(refused({ workers: 2 })).to.deep.equal(['workers changes only with a restart']);
    expect(refused({ backend: { connections: 2 } })).to.deep.equal([
      'backend.connections changes only with a restart',
    ]);
    expect(refused({ pidFile: '/run/msproxy.pid' })).to.deep.equal([
      'pidFile changes only with a restart',
    ]);
    expect(
      refused({ coordination: { etcd: { endpoints: ['http://127.0.0.1:2379'], prefix: '/m' } } }),
    ).to.deep.equal(['coordination changes only with a restart']);
    // One process moves keys itself (Rebalance); workers and instances would have to agree.
    expect(refused({ replicas: 1 })).to.deep.equal([]);
    const workers = parseConfig({ ...base, workers: 2 });
    expect(
      reloadPlan(workers, parseConfig({ ...base, workers: 2, replicas: 1 })).refused,
    ).to.deep.equal(['replicas: changes only with a restart with workers or coordination']);
    // A node's weight, name or address is placement: the nodes compare whole.
    for (const nodes of [
      ['127.0.0.1:11211', { host: '127.0.0.1', port: 11212, name: 'b', weight: 2 }],
      ['127.0.0.1:11211', { host: '127.0.0.1', port: 11213, name: 'b' }],
      ['127.0.0.1:11211'],
    ]) {
      expect(changedFields(a, parseConfig({ ...base, nodes, replicas: 1 }))).to.include('nodes');
      expect(
        reloadPlan(workers, parseConfig({ ...base, workers: 2, nodes, replicas: 1 })).refused,
      ).to.include('nodes: changes only with a restart with workers or coordination');
    }
  });
});
