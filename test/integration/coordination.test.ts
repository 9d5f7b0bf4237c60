/**
 * `coordination.etcd`: several msproxy processes (the CLI) in front of three
 * real memcached nodes, coordinated through a real etcd. Each drill ends by
 * reading every acknowledged session back through every instance: none
 * missing, stale or resurrected.
 */

import { expect } from 'chai';
import { Etcd } from '../helpers/etcd.js';
import { Memcached, sleep } from '../helpers/memcached.js';
import { ProxyProcess } from '../helpers/proxy-process.js';
import { MemcacheClient, statsOf } from '../helpers/proxy.js';
import { Relay } from '../helpers/relay.js';
import { SessionWorkload, formatViolations } from '../helpers/sessions.js';
import { until } from '../helpers/wait.js';

/** Set each of `keys` to `value` through `port`, each on a connection of its own, at once. */
function setEach(
  port: number,
  keys: readonly string[],
  value: string,
): { replies: Promise<string>[]; answered: () => number } {
  let answered = 0;
  const replies = keys.map(async (k) => {
    const c = await MemcacheClient.connect(port);
    try {
      return await c.command(`set ${k} 0 0 ${value.length}`, value);
    } finally {
      answered++;
      c.close();
    }
  });
  return { replies, answered: () => answered };
}

describe('coordination through etcd: several instances', function () {
  this.timeout(90_000);
  let etcd: Etcd;
  let nodes: Memcached[] = [];
  let relays: Relay[] = [];
  let proxies: ProxyProcess[] = [];
  let cluster = 0;

  before(async function () {
    // Without etcd (Debian's etcd-server) there is nothing to coordinate through; CI installs it.
    if (!Etcd.installed()) this.skip();
    etcd = await Etcd.start();
  });

  after(async function () {
    await etcd?.stop();
  });

  beforeEach(async function () {
    cluster++;
    nodes = await Promise.all([0, 1, 2].map(() => Memcached.start()));
  });

  afterEach(async function () {
    await Promise.all(proxies.map((p) => p.stop()));
    proxies = [];
    for (const n of nodes) if (n.alive) n.resume();
    await Promise.all(nodes.map((n) => n.stop()));
    await Promise.all(relays.map((r) => r.close()));
    relays = [];
    if (!etcd.alive) await etcd.restart();
  });

  /** The config of one instance; `ports` replaces the nodes' ports (a relay on one path). */
  function config(ports = nodes.map((n) => n.port)): Record<string, unknown> {
    return {
      listen: '127.0.0.1:0',
      nodes: ports.map((port, i) => ({ host: '127.0.0.1', port, name: `node${i}` })),
      replicas: 2,
      timeouts: { requestMs: 250, connectMs: 500 },
      backend: { probeMs: 50, probeMaxMs: 200 },
      recovery: { resyncRate: 20000 },
      log: { level: 'info' },
      coordination: {
        etcd: {
          endpoints: [etcd.endpoint],
          prefix: `/msproxy/test${cluster}`,
          leaseTtlSeconds: 2,
        },
      },
    };
  }

  /** config() with etcd calls and leases long enough for etcd to be paused a while. */
  function patient(ports?: number[]): Record<string, unknown> {
    const c = config(ports);
    const etcdOpts = (c['coordination'] as { etcd: Record<string, unknown> }).etcd;
    Object.assign(etcdOpts, { timeoutMs: 10_000, leaseTtlSeconds: 10 });
    return c;
  }

  /** Instance a, which reaches node1 through a relay (to black-hole), and b, which reaches it directly. */
  async function relayedPair(
    cfg: (ports?: number[]) => Record<string, unknown>,
  ): Promise<{ relay: Relay; a: ProxyProcess; b: ProxyProcess }> {
    const relay = await Relay.start(nodes[1]!.port);
    relays.push(relay);
    const a = await ProxyProcess.start(cfg(nodes.map((n, i) => (i === 1 ? relay.port : n.port))));
    proxies.push(a);
    const b = await ProxyProcess.start(cfg());
    proxies.push(b);
    return { relay, a, b };
  }

  async function start(n: number, cfg = config): Promise<ProxyProcess[]> {
    for (let i = 0; i < n; i++) proxies.push(await ProxyProcess.start(cfg()));
    return proxies;
  }

  function logs(): string {
    return proxies
      .map((p, i) => `instance ${i}:\n${p.logs.map((l) => JSON.stringify(l)).join('\n')}`)
      .join('\n');
  }

  async function stats(p: ProxyProcess): Promise<Map<string, string>> {
    const c = await MemcacheClient.connect(p.port);
    try {
      return await statsOf(c);
    } finally {
      c.close();
    }
  }

  /** Whether `p` serves reads from `node` (up, not waiting for the other members). */
  async function serves(p: ProxyProcess, node: number): Promise<boolean> {
    const s = await stats(p);
    return (
      s.get(`proxy_node_${node}_up`) === '1' && s.get(`proxy_node_${node}_rejoin_waiting`) === '0'
    );
  }

  /** A session workload whose every request goes to one of `ps` at random. */
  function spread(ps: ProxyProcess[]): Promise<SessionWorkload> {
    const ports = ps.map((p) => p.port);
    return SessionWorkload.start({ port: ports[0]!, ports, clients: 30, keysPerClient: 10 });
  }

  async function expectClean(w: SessionWorkload, what: string): Promise<void> {
    for (const [i, p] of proxies.entries()) {
      if (p.exitSignal !== null) continue;
      const v = await w.verify({ port: p.port });
      expect(v, `${what}, read through instance ${i}:\n${formatViolations(v)}`).to.deep.equal([]);
    }
  }

  it('every instance joins, and a node down for one is down for all within a moment', async function () {
    const [a, b] = await start(2);
    const s = await stats(a!);
    expect(s.get('proxy_coordination')).to.equal('etcd');
    expect(s.get('proxy_coordination_state')).to.equal('attached');
    expect(s.get('proxy_coordination_members')).to.equal('2');
    const leaders = [s, await stats(b!)].map((x) => x.get('proxy_coordination_leader'));
    expect(leaders.sort()).to.deep.equal(['0', '1']);
    // Only a takes traffic; b learns of the hang from the cluster, not from its own requests.
    const w = await SessionWorkload.start({ port: a!.port, clients: 10, keysPerClient: 10 });
    await w.run(300);
    nodes[1]!.pause();
    await until('b takes node1 out of service', 10_000, async () => !(await serves(b, 1)), logs);
    await w.stop();
    expect(
      b!.logs.some((l) => l.msg === 'node down' && l['reason'] === 'down in the cluster'),
      logs(),
    ).to.equal(true);
    nodes[1]!.resume();
    await until(
      'node1 serves again through both',
      15_000,
      async () => (await serves(a!, 1)) && (await serves(b, 1)),
      logs,
    );
    await expectClean(w, 'after the hang');
  });

  it('a hang with traffic through one instance: reads through another see no logout undone', async function () {
    const [a] = await start(2);
    const w = await SessionWorkload.start({ port: a!.port, clients: 30, keysPerClient: 10 });
    await w.run(1000);
    nodes[0]!.pause();
    await w.run(2500);
    await w.stop();
    expect(w.snapshot().deletes, 'deletes acknowledged during the hang').to.be.greaterThan(0);
    nodes[0]!.resume();
    // At once, while node0 is back and rejoining: through every instance, then again.
    await expectClean(w, 'right after the node returned');
    await sleep(1000);
    await expectClean(w, 'a second later');
    await until(
      'node0 serves again through both',
      15_000,
      async () => (await serves(proxies[0]!, 0)) && (await serves(proxies[1]!, 0)),
      logs,
    );
    await expectClean(w, 'once it serves again');
  });

  it('a hang with traffic spread over three instances, each session read through any of them', async function () {
    const ps = await start(3);
    const w = await spread(ps);
    await w.run(1000);
    nodes[2]!.pause();
    await w.run(2500);
    nodes[2]!.resume();
    await w.run(1500);
    await w.stop();
    expect(w.violations, formatViolations(w.violations)).to.deep.equal([]);
    await expectClean(w, 'after the hang');
    await until(
      'node2 serves again through all',
      15_000,
      async () => {
        for (const p of ps) if (!(await serves(p, 2))) return false;
        return true;
      },
      logs,
    );
    await expectClean(w, 'once it serves again');
  });

  it('a partial partition: the node one instance cannot reach serves reads through none', async function () {
    const relay = await Relay.start(nodes[1]!.port);
    relays.push(relay);
    // a reaches node1 through the relay; b directly.
    const a = await ProxyProcess.start(
      config(nodes.map((n, i) => (i === 1 ? relay.port : n.port))),
    );
    proxies.push(a);
    const [, b] = await start(1).then(() => proxies);
    const w = await spread([a, b!]);
    await w.run(1000);
    relay.holed = true;
    await until('b takes node1 out of service', 10_000, async () => !(await serves(b, 1)), logs);
    await w.run(2500);
    // b reaches node1 all along, and still serves no reads from it: a has not replayed.
    const sb = await stats(b!);
    expect(sb.get('proxy_node_1_up'), 'b writes to node1 (it reaches it)').to.equal('1');
    expect(sb.get('proxy_node_1_rejoin_waiting'), 'b waits for a before reading node1').to.equal(
      '1',
    );
    relay.holed = false;
    await w.run(1500);
    await w.stop();
    expect(w.violations, formatViolations(w.violations)).to.deep.equal([]);
    await expectClean(w, 'after the partition healed');
    await until(
      'node1 serves again through both',
      15_000,
      async () => (await serves(a, 1)) && (await serves(b, 1)),
      logs,
    );
    await expectClean(w, 'once it serves again');
  });

  it('a write acknowledged without a node is answered only once etcd shows the node down', async function () {
    const { relay, a, b } = await relayedPair(patient);
    const keys = Array.from({ length: 20 }, (_, i) => `held:${i}`);
    const ca = await MemcacheClient.connect(a.port);
    try {
      for (const k of keys) expect(await ca.command(`set ${k} 0 0 2`, 'v1')).to.equal('STORED\r\n');
      // a loses node1 while nobody can learn it from etcd.
      etcd.pause();
      relay.holed = true;
      const held = setEach(a.port, keys, 'v2');
      const sets = held.replies;
      await until('a takes node1 out of service', 10_000, async () => {
        return (await stats(a)).get('proxy_node_1_up') === '0';
      });
      await sleep(300);
      // Keys without node1 are answered; the ones it holds wait (b could still read node1).
      expect(held.answered(), 'sets answered while etcd is paused').to.be.lessThan(keys.length);
      etcd.resume();
      expect(await Promise.all(sets)).to.deep.equal(keys.map(() => 'STORED\r\n'));
      expect((await stats(a)).get('proxy_coordination_unconfirmed_acks')).to.equal('0');
      await until('b takes node1 out of service', 10_000, async () => !(await serves(b, 1)));
      const cb = await MemcacheClient.connect(b.port);
      try {
        for (const k of keys) {
          expect(await cb.command(`get ${k}`)).to.equal(`VALUE ${k} 0 2\r\nv2\r\nEND\r\n`);
        }
      } finally {
        cb.close();
      }
    } finally {
      etcd.resume();
      ca.close();
    }
  });

  it('a write that fails on a node that stays up is answered only once the others distrust that copy', async function () {
    // One failed request does not take a node out of service here: it stays up in a.
    const lenient = (ports?: number[]): Record<string, unknown> => {
      const c = patient(ports);
      c['backend'] = { probeMs: 50, probeMaxMs: 200, failureThreshold: 1000 };
      return c;
    };
    const { relay, a, b } = await relayedPair(lenient);
    const keys = Array.from({ length: 20 }, (_, i) => `fenced:${i}`);
    const ca = await MemcacheClient.connect(a.port);
    const cb = await MemcacheClient.connect(b.port);
    const direct = await Promise.all(nodes.map((n) => MemcacheClient.connect(n.port)));
    try {
      for (const k of keys) expect(await ca.command(`set ${k} 0 0 2`, 'v1')).to.equal('STORED\r\n');
      // The writes time out on node1 through a, while etcd can learn nothing.
      etcd.pause();
      relay.holed = true;
      const held = setEach(a.port, keys, 'v2');
      const sets = held.replies;
      await sleep(800);
      const sa = await stats(a);
      expect(sa.get('proxy_node_1_up'), 'node1 stays up in a').to.equal('1');
      expect(Number(sa.get('proxy_coordination_fences_unpublished'))).to.be.greaterThan(0);
      // b reads node1, which missed them: the sets that missed it are not answered yet.
      expect(held.answered(), 'sets answered while etcd is paused').to.be.lessThan(keys.length);
      etcd.resume();
      expect(await Promise.all(sets)).to.deep.equal(keys.map(() => 'STORED\r\n'));
      // Still holed: node1 keeps the old copies, and b does not read them.
      for (const k of keys) {
        expect(await cb.command(`get ${k}`), k).to.equal(`VALUE ${k} 0 2\r\nv2\r\nEND\r\n`);
      }
      expect((await stats(a)).get('proxy_coordination_unconfirmed_acks')).to.equal('0');
      relay.holed = false;
      // a fixes node1, then withdraws its fences.
      await until('a fixed node1 and withdrew its fences', 10_000, async () => {
        const s = await stats(a);
        return (
          s.get('proxy_node_1_outage_log') === '0' &&
          s.get('proxy_coordination_fences_unpublished') === '0' &&
          s.get('proxy_coordination_queue') === '0'
        );
      });
      const left = await etcd.keys(`/msproxy/test${cluster}/fences/`);
      expect(left, 'fences left in etcd').to.deep.equal([]);
      for (const k of keys) {
        expect(await cb.command(`get ${k}`), k).to.equal(`VALUE ${k} 0 2\r\nv2\r\nEND\r\n`);
        // Two copies, both current, node1's among them where it holds one: no v1 anywhere.
        const copies = await Promise.all(direct.map((d) => d.command(`get ${k}`)));
        const v2 = copies.filter((r) => r === `VALUE ${k} 0 2\r\nv2\r\nEND\r\n`).length;
        expect(copies.filter((r) => r === 'END\r\n').length + v2, `${k}: ${copies}`).to.equal(3);
        expect(v2, `${k}: ${copies}`).to.equal(2);
      }
    } finally {
      for (const d of direct) d.close();
      etcd.resume();
      ca.close();
      cb.close();
    }
  });

  it('an instance killed with SIGKILL during an outage: its lost log makes the node be flushed', async function () {
    const [a, b] = await start(2);
    const w = await SessionWorkload.start({ port: a!.port, clients: 30, keysPerClient: 10 });
    await w.run(1000);
    nodes[0]!.pause();
    await w.run(2000);
    a!.child.kill('SIGKILL');
    await w.stop();
    await a!.exit();
    nodes[0]!.resume();
    await expectClean(w, 'right after the node returned');
    await until('b serves node0 again', 20_000, async () => serves(b!, 0), logs);
    const s = await stats(b!);
    expect(s.get('proxy_coordination_flush_claims'), logs()).to.equal('1');
    expect(Number(s.get('proxy_node_0_rejoin_flushes')), 'node0 flushed').to.be.greaterThan(0);
    await until(
      'node0 re-synced',
      20_000,
      async () => (await stats(b!)).get('proxy_node_0_resync') === 'done',
      logs,
    );
    await expectClean(w, 'after the flush and re-sync');
    // The node itself holds nothing the proxy would not: no session older than acked.
    const onNode = await w.verifyNode(nodes[0]!, w.keys);
    expect(onNode, formatViolations(onNode)).to.deep.equal([]);
  });

  it('etcd killed during an outage: no instance reads the returning node until etcd is back', async function () {
    const [a, b] = await start(2);
    const w = await spread([a!, b!]);
    await w.run(1000);
    nodes[0]!.pause();
    await until('b takes node0 out of service', 10_000, async () => !(await serves(b!, 0)), logs);
    await w.run(1000);
    await etcd.kill();
    nodes[0]!.resume();
    await w.run(2000);
    for (const p of [a!, b!]) {
      await until(
        'the instance sees etcd gone and node0 replayed',
        10_000,
        async () => {
          const s = await stats(p);
          return (
            s.get('proxy_coordination_state') === 'detached' &&
            s.get('proxy_node_0_up') === '1' &&
            s.get('proxy_node_0_rejoin_waiting') === '1'
          );
        },
        logs,
      );
    }
    await w.run(500);
    await etcd.restart();
    await until(
      'node0 serves again through both',
      20_000,
      async () => (await serves(a!, 0)) && (await serves(b!, 0)),
      logs,
    );
    await w.run(1000);
    await w.stop();
    expect(w.violations, formatViolations(w.violations)).to.deep.equal([]);
    await expectClean(w, 'after etcd came back');
  });

  it('a rolling restart of the instances under load', async function () {
    const ps = await start(2);
    const w = await spread(ps);
    await w.run(1000);
    for (let i = 0; i < 2; i++) {
      await ps[i]!.stop();
      // The same port again, as a service manager restarts it.
      const c = config();
      c['listen'] = `127.0.0.1:${ps[i]!.port}`;
      ps[i] = await ProxyProcess.start(c);
      await w.run(1000);
    }
    await w.stop();
    expect(w.violations, formatViolations(w.violations)).to.deep.equal([]);
    await expectClean(w, 'after the rolling restart');
    const s = await stats(ps[0]!);
    expect(s.get('proxy_coordination_members')).to.equal('2');
  });

  it('three instances: a node restarted empty, then its partner killed, loses no session', async function () {
    const ps = await start(3);
    const w = await spread(ps);
    await w.run(1000);
    nodes[0] = await nodes[0]!.restart();
    await w.run(500);
    // The cluster refills node0 (one re-sync, by the leader), then node1 dies.
    await until(
      'node0 re-synced',
      20_000,
      async () => {
        for (const p of ps) {
          const s = await stats(p);
          if (s.get('proxy_node_0_complete') !== '1') return false;
        }
        return true;
      },
      logs,
    );
    const runs = await Promise.all(
      ps.map(async (p) => Number((await stats(p)).get('proxy_node_0_resyncs'))),
    );
    expect(
      runs.filter((r) => r > 0),
      'one instance runs the re-sync',
    ).to.have.length(1);
    await w.run(500);
    await nodes[1]!.kill();
    await w.run(1000);
    await w.stop();
    expect(
      w.violations.filter((v) => v.kind !== 'unavailable'),
      formatViolations(w.violations),
    ).to.deep.equal([]);
    await expectClean(w, 'after losing node1');
  });

  it('with workers: every worker of every instance is a member of the one cluster', async function () {
    const a = await ProxyProcess.start({ ...config(), workers: 2 });
    proxies.push(a);
    const [, b] = await start(1).then(() => proxies);
    expect((await stats(b!)).get('proxy_coordination_members'), logs()).to.equal('3');
    const w = await SessionWorkload.start({ port: a.port, clients: 30, keysPerClient: 10 });
    await w.run(1000);
    nodes[1]!.pause();
    await w.run(2500);
    await w.stop();
    nodes[1]!.resume();
    await expectClean(w, 'right after the node returned');
    await until('node1 serves again through b', 15_000, async () => serves(b, 1), logs);
    await expectClean(w, 'once it serves again');
  });

  it('three instances: every node hangs at once, then all come back in a different order in each', async function () {
    // Each instance takes a node's writes again on its own probe: for a moment one writes a key
    // to one replica only and another to the other. The fixes must rank those writes as they
    // happened, and a delete must not answer NOT_FOUND from a copy not yet trusted.
    const ps = await start(3);
    const ports = ps.map((p) => p.port);
    const w = await SessionWorkload.start({
      port: ports[0]!,
      ports,
      clients: 40,
      keysPerClient: 25,
    });
    await w.run(1500);
    for (const n of nodes) n.pause();
    await sleep(2000);
    for (const n of nodes) n.resume();
    await w.run(2500);
    await w.stop();
    expect(w.violations, formatViolations(w.violations)).to.deep.equal([]);
    await expectClean(w, 'after the hang');
  });
});
