/**
 * Resizing a live cluster by reload, as an operator does it: msproxy as its
 * own process in front of real memcached nodes, the config file edited,
 * SIGHUP. Each drill moves keys under a session workload, waits for the
 * rebalance to finish, then loses one of the original nodes with no reads
 * in between, and reads every acknowledged session back: none missing,
 * stale or resurrected.
 */

import { expect } from 'chai';
import { Memcached, sleep } from '../helpers/memcached.js';
import { ProxyProcess } from '../helpers/proxy-process.js';
import { MemcacheClient, replyText, statsAt } from '../helpers/proxy.js';
import { SessionWorkload, formatViolations } from '../helpers/sessions.js';
import { until } from '../helpers/wait.js';

/** Items a memcached node holds. */
async function itemsOn(node: Memcached): Promise<number> {
  return Number((await statsAt(node.port)).get('curr_items'));
}

describe('resize by reload: nodes added, retired, replaced; replicas changed', function () {
  this.timeout(120_000);
  let nodes: Memcached[] = [];
  let proxy: ProxyProcess | null = null;

  beforeEach(async function () {
    // Three in the ring, and a fourth to add or to replace one with.
    nodes = await Promise.all([0, 1, 2, 3].map(() => Memcached.start()));
  });

  afterEach(async function () {
    await proxy?.stop();
    proxy = null;
    for (const n of nodes) if (n.alive) n.resume();
    await Promise.all(nodes.map((n) => n.kill()));
  });

  /** A config of nodes `which` (indexes into `nodes`, named node<i>, or as given). */
  function config(
    which: (number | { name: string; node: number })[],
    over: Record<string, unknown> = {},
  ): Record<string, unknown> {
    return {
      listen: '127.0.0.1:0',
      nodes: which.map((w) => {
        const [name, i] = typeof w === 'number' ? [`node${w}`, w] : [w.name, w.node];
        return { host: '127.0.0.1', port: nodes[i]!.port, name };
      }),
      replicas: 2,
      timeouts: { requestMs: 250, connectMs: 500 },
      backend: { probeMs: 50, probeMaxMs: 200 },
      recovery: { resyncRate: 20000 },
      log: { level: 'info' },
      ...over,
    };
  }

  function logs(): string {
    return (proxy?.logs ?? []).map((l) => JSON.stringify(l)).join('\n');
  }

  /** Edit the config file and SIGHUP; resolves once the new epoch is in force. */
  async function reload(p: ProxyProcess, cfg: Record<string, unknown>): Promise<void> {
    const epoch = Number((await statsAt(p.port)).get('proxy_config_epoch'));
    p.writeConfig(cfg);
    process.kill(p.pid, 'SIGHUP');
    await until(
      `config epoch ${epoch + 1}`,
      5000,
      async () => Number((await statsAt(p.port)).get('proxy_config_epoch')) === epoch + 1,
      logs,
    );
  }

  async function rebalanced(p: ProxyProcess, ms = 30_000): Promise<Map<string, string>> {
    await until(
      'the rebalance is done',
      ms,
      async () => (await statsAt(p.port)).get('proxy_rebalance') === 'done',
      logs,
    );
    return statsAt(p.port);
  }

  /** Lose node `i` (SIGKILL), and read every acknowledged session back through the proxy. */
  async function loseAndVerify(p: ProxyProcess, w: SessionWorkload, i: number): Promise<void> {
    await nodes[i]!.kill();
    const v = await w.verify({ port: p.port });
    expect(v, `after losing node${i}:\n${formatViolations(v)}`).to.deep.equal([]);
  }

  async function sessions(p: ProxyProcess): Promise<SessionWorkload> {
    const w = await SessionWorkload.start({ port: p.port, clients: 40, keysPerClient: 50 });
    await w.run(1500);
    return w;
  }

  it('a node added under load: every session survives losing an original node', async function () {
    const p = (proxy = await ProxyProcess.start(config([0, 1, 2])));
    const w = await sessions(p);
    await reload(p, config([0, 1, 2, 3]));
    const moving = await statsAt(p.port);
    expect(['running', 'done']).to.include(moving.get('proxy_rebalance'));
    const s = await rebalanced(p);
    await w.run(500);
    await w.stop();
    expect(w.violations, formatViolations(w.violations)).to.deep.equal([]);
    expect(w.snapshot().failed, `failed requests: ${[...w.errors]}`).to.equal(0);
    expect(Number(s.get('proxy_rebalance_scanned'))).to.be.greaterThan(0);
    expect(Number(s.get('proxy_node_3_resync_copied')), 'node3 refilled').to.be.greaterThan(0);
    expect(s.get('proxy_node_3_up')).to.equal('1');
    expect(s.get('proxy_nodes')).to.equal('4');
    await loseAndVerify(p, w, 0);
  });

  it('a node retired while still running: it is emptied, and losing another loses nothing', async function () {
    const p = (proxy = await ProxyProcess.start(config([0, 1, 2, 3])));
    const w = await sessions(p);
    await reload(p, config([0, 1, 2]));
    const s = await rebalanced(p);
    await w.run(500);
    await w.stop();
    expect(w.violations, formatViolations(w.violations)).to.deep.equal([]);
    expect(w.snapshot().failed, `failed requests: ${[...w.errors]}`).to.equal(0);
    expect(s.get('proxy_nodes')).to.equal('3');
    expect(s.has('proxy_node_3_up'), 'the retired node is gone from stats').to.equal(false);
    expect(await itemsOn(nodes[3]!), 'the retired node was flushed').to.equal(0);
    await loseAndVerify(p, w, 0);
  });

  it('a node replaced by a new address under the same name: refilled, then its partner lost', async function () {
    const p = (proxy = await ProxyProcess.start(config([0, 1, 2])));
    const w = await sessions(p);
    // node1 now lives on the fourth memcached.
    await reload(p, config([0, { name: 'node1', node: 3 }, 2]));
    await until(
      'node1 at its new address, refilled',
      30_000,
      async () => {
        const s = await statsAt(p.port);
        return (
          s.get('proxy_node_1_address') === `127.0.0.1:${nodes[3]!.port}` &&
          s.get('proxy_node_1_up') === '1' &&
          s.get('proxy_node_1_complete') === '1' &&
          s.get('proxy_node_1_resync') === 'done'
        );
      },
      logs,
    );
    await w.run(500);
    await w.stop();
    expect(w.violations, formatViolations(w.violations)).to.deep.equal([]);
    expect(w.snapshot().failed, `failed requests: ${[...w.errors]}`).to.equal(0);
    // The old node1 is out of the picture: losing it and node0 loses nothing.
    await nodes[1]!.kill();
    await loseAndVerify(p, w, 0);
  });

  it('replicas raised from 2 to 3 and lowered back: every key has 3 copies, then 2', async function () {
    const p = (proxy = await ProxyProcess.start(config([0, 1, 2])));
    const w = await sessions(p);
    await reload(p, config([0, 1, 2], { replicas: 3 }));
    await rebalanced(p);
    await w.run(300);
    await w.stop();
    const present = w.presentKeys().length;
    // Every node holds every session now.
    for (const i of [0, 1, 2]) expect(await itemsOn(nodes[i]!), `node${i}`).to.equal(present);
    await reload(p, config([0, 1, 2], { replicas: 2 }));
    await rebalanced(p);
    const copies = (await Promise.all([0, 1, 2].map((i) => itemsOn(nodes[i]!)))).reduce(
      (a, b) => a + b,
    );
    expect(copies, 'two copies of each session once lowered').to.equal(2 * present);
    expect(w.violations, formatViolations(w.violations)).to.deep.equal([]);
    await loseAndVerify(p, w, 0);
  });

  it('a reload during a node outage, and an outage during the rebalance: nothing lost, stale or resurrected', async function () {
    const p = (proxy = await ProxyProcess.start(
      config([0, 1, 2], { recovery: { resyncRate: 400 } }),
    ));
    const w = await sessions(p);
    nodes[1]!.pause();
    await w.run(1000);
    await reload(p, config([0, 1, 2, 3], { recovery: { resyncRate: 400 } }));
    await w.run(500);
    nodes[1]!.resume();
    await w.run(1000);
    // The rebalance copies slowly: a hang in the middle of it.
    expect((await statsAt(p.port)).get('proxy_rebalance')).to.equal('running');
    nodes[2]!.pause();
    await w.run(1500);
    nodes[2]!.resume();
    await w.run(500);
    await rebalanced(p, 60_000);
    await w.run(300);
    await w.stop();
    expect(w.violations, formatViolations(w.violations)).to.deep.equal([]);
    await loseAndVerify(p, w, 0);
  });

  it('a reload that moves keys while a rebalance runs is refused; the running one finishes', async function () {
    const p = (proxy = await ProxyProcess.start(
      config([0, 1, 2], { recovery: { resyncRate: 300 } }),
    ));
    const w = await sessions(p);
    await w.stop();
    await reload(p, config([0, 1, 2, 3], { recovery: { resyncRate: 300 } }));
    p.writeConfig(config([0, 1, 3], { recovery: { resyncRate: 300 } }));
    process.kill(p.pid, 'SIGHUP');
    await until('the second reload refused', 5000, async () => {
      return (await statsAt(p.port)).get('proxy_config_reload_failures') === '1';
    });
    const line = await p.waitLog((l) => String(l.msg).startsWith('config reload failed'), 2000);
    expect(JSON.stringify(line['reasons'])).to.match(/rebalance is under way/);
    await rebalanced(p, 60_000);
    const c = await MemcacheClient.connect(p.port);
    try {
      expect(replyText(await c.request('version'))).to.match(/^VERSION /);
    } finally {
      c.close();
    }
    await sleep(10);
    await loseAndVerify(p, w, 1);
  });
});
