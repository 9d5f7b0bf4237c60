/**
 * `workers: 2`: msproxy run as its CLI (node:cluster), in front of three real
 * memcached nodes. Connections reach both workers; every worker puts a key
 * on the same nodes; a node back from a hang serves no reads through any
 * worker until every worker has replayed the writes it missed; a worker that
 * dies is restarted, and its lost outage log makes the node be flushed
 * rather than serve what it missed.
 */

import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { Ring } from '../../src/routing/ring.js';
import { Memcached } from '../helpers/memcached.js';
import { ProxyProcess } from '../helpers/proxy-process.js';
import { MemcacheClient, peek, statsOf } from '../helpers/proxy.js';
import { SessionWorkload, formatViolations, replicaKeys } from '../helpers/sessions.js';
import { until } from '../helpers/wait.js';

const WORKERS = 2;

/** One connection to each worker (by `proxy_worker`), within a bounded number of tries. */
async function oneClientPerWorker(port: number): Promise<MemcacheClient[]> {
  const byWorker: (MemcacheClient | undefined)[] = [];
  const extra: MemcacheClient[] = [];
  for (let tries = 0; tries < 50 && byWorker.filter(Boolean).length < WORKERS; tries++) {
    const c = await MemcacheClient.connect(port);
    const w = Number((await statsOf(c)).get('proxy_worker'));
    if (byWorker[w] === undefined) byWorker[w] = c;
    else extra.push(c);
  }
  for (const c of extra) c.close();
  const got = byWorker.filter((c): c is MemcacheClient => c !== undefined);
  expect(got, 'a connection to every worker').to.have.length(WORKERS);
  return got;
}

let proxy: ProxyProcess | null = null;

/** The running msproxy's log, for an `until` that times out. */
function msproxyLog(): string {
  return `msproxy log:\n${proxy?.logs.map((l) => JSON.stringify(l)).join('\n') ?? ''}`;
}

/** Whether the worker behind `c` serves reads from `node` (up, not waiting for the others). */
async function serves(c: MemcacheClient, node: number): Promise<boolean> {
  const s = await statsOf(c);
  return (
    s.get(`proxy_node_${node}_up`) === '1' && s.get(`proxy_node_${node}_rejoin_waiting`) === '0'
  );
}

describe('workers: 2 (node:cluster)', function () {
  this.timeout(60_000);
  let nodes: Memcached[] = [];
  let clients: MemcacheClient[] = [];
  let ring: Ring;

  beforeEach(async function () {
    nodes = await Promise.all([0, 1, 2].map(() => Memcached.start()));
    ring = new Ring(nodes.map((n) => ({ label: `127.0.0.1:${n.port}`, weight: 1 })));
    proxy = await ProxyProcess.start(config());
    clients = await oneClientPerWorker(proxy.port);
  });

  /** The config in front of `nodes`, with `extra` merged in. */
  function config(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      listen: '127.0.0.1:0',
      nodes: nodes.map((n) => `127.0.0.1:${n.port}`),
      replicas: 2,
      workers: WORKERS,
      timeouts: { requestMs: 250, connectMs: 500 },
      backend: { probeMs: 50, probeMaxMs: 200 },
      log: { level: 'info' },
      ...extra,
    };
  }

  afterEach(async function () {
    for (const c of clients) c.close();
    for (const n of nodes) if (n.alive) n.resume();
    if (proxy) expect(await proxy.stop(), 'exit code').to.equal(0);
    await Promise.all(nodes.map((n) => n.kill()));
    proxy = null;
  });

  /** `count` keys whose replicas include `node`. */
  function keysOn(node: number, count: number, prefix: string): string[] {
    const out: string[] = [];
    for (let i = 0; out.length < count && i < 100_000; i++) {
      const k = `${prefix}:${i}`;
      if (ring.replicas(Buffer.from(k), 2).includes(node)) out.push(k);
    }
    return out;
  }

  /**
   * `keys` set to v0, then node X hung and the keys set to v1 through worker a
   * only: worker a's outage log holds them, worker b (told X is down) has none.
   */
  async function missedThroughA(
    a: MemcacheClient,
    b: MemcacheClient,
    X: number,
    keys: string[],
  ): Promise<void> {
    await a.pipeline(keys.map((k) => [`set ${k} 0 0 2`, 'v0'] as [string, string]));
    nodes[X]!.pause();
    const acks = await a.pipeline(keys.map((k) => [`set ${k} 0 0 2`, 'v1'] as [string, string]));
    expect(
      acks.every((r) => r === 'STORED\r\n'),
      acks.join(''),
    ).to.equal(true);
    await until(
      'worker b to take node X out of service',
      3000,
      async () => {
        return (await statsOf(b)).get(`proxy_node_${X}_up`) === '0';
      },
      msproxyLog,
    );
  }

  it('serves from every worker, and every worker writes a key to the same two nodes', async function () {
    const [a, b] = clients as [MemcacheClient, MemcacheClient];
    const pids = await Promise.all(clients.map(async (c) => (await statsOf(c)).get('pid')));
    expect(new Set(pids).size, 'two processes').to.equal(2);
    expect(pids).to.not.include(String(proxy!.pid));
    for (let i = 0; i < 60; i++) {
      const [w, r] = i % 2 === 0 ? [a, b] : [b, a];
      expect(await w.command(`set k${i} ${i} 0 3`, `v${String(i).padStart(2, '0')}`)).to.equal(
        'STORED\r\n',
      );
      expect(await r.command(`get k${i}`)).to.equal(
        `VALUE k${i} ${i} 3\r\nv${String(i).padStart(2, '0')}\r\nEND\r\n`,
      );
      const on = ring.replicas(Buffer.from(`k${i}`), 2);
      for (let n = 0; n < nodes.length; n++) {
        const item = await peek(nodes[n]!, `k${i}`);
        expect(item !== null, `k${i} on node ${n}`).to.equal(on.includes(n));
      }
    }
  });

  it('a node back from a hang serves reads through no worker until every worker has replayed', async function () {
    const [a, b] = clients as [MemcacheClient, MemcacheClient];
    const X = 0;
    const keys = keysOn(X, 200, 'hang');
    await missedThroughA(a, b, X, keys);
    nodes[X]!.resume();
    // Read every key through worker b until both workers serve X again, and a while after.
    let reads = 0;
    const stale: string[] = [];
    let servingSince = 0;
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      const r = await b.request(`get ${keys.join(' ')}`);
      for (const v of r.values ?? []) {
        reads++;
        if (v.data.toString() !== 'v1') stale.push(`${v.key.toString()}=${v.data.toString()}`);
      }
      if (servingSince === 0 && (await serves(a, X)) && (await serves(b, X))) {
        servingSince = Date.now();
      }
      if (servingSince > 0 && Date.now() - servingSince > 300) break;
    }
    expect(servingSince, 'both workers serve node X again').to.be.greaterThan(0);
    expect(stale, 'values read through worker b').to.deep.equal([]);
    expect(reads).to.be.greaterThan(keys.length);
    // Worker a's replay brought node X itself up to date.
    for (const k of keys) expect((await peek(nodes[X]!, k))?.value, k).to.equal('v1');
  });

  it('sessions across both workers survive a hang, a restart-empty with re-sync, then losing the partner', async function () {
    const [w0] = clients as [MemcacheClient, MemcacheClient];
    const w = await SessionWorkload.start({ port: proxy!.port, seed: 707 });
    try {
      await w.run(700);
      nodes[2]!.pause();
      await w.run(1500);
      nodes[2]!.resume();
      for (const c of clients)
        await until('node 2 serves again', 10_000, () => serves(c, 2), msproxyLog);
      // Node 0 restarts empty: worker 0 re-syncs it; then its partner node 1 dies.
      const runs = Number((await statsOf(w0)).get('proxy_node_0_resyncs'));
      nodes[0] = await nodes[0]!.restart();
      await until(
        're-sync of node 0 by worker 0',
        20_000,
        async () => {
          const s = await statsOf(w0);
          if (s.get('proxy_node_0_resync') === 'failed') throw new Error('re-sync failed');
          return (
            Number(s.get('proxy_node_0_resyncs')) > runs && s.get('proxy_node_0_resync') === 'done'
          );
        },
        msproxyLog,
      );
      await nodes[1]!.kill();
      await w.run(1000);
      await w.stop();
      const final = await w.verify();
      const onNode0 = await w.verifyNode(nodes[0]!, replicaKeys(ring, w.keys, 0), {
        requirePresent: true,
      });
      expect(w.snapshot().ackedSets, w.summary()).to.be.greaterThan(1000);
      expect(w.violations, `during the run: ${formatViolations(w.violations)}`).to.deep.equal([]);
      expect(final, `final read: ${formatViolations(final)}`).to.deep.equal([]);
      expect(onNode0, `on node 0: ${formatViolations(onNode0)}`).to.deep.equal([]);
      // Only worker 0 re-syncs.
      const others = await Promise.all(clients.slice(1).map(statsOf));
      for (const s of others) expect(s.get('proxy_node_0_resyncs')).to.equal('0');
    } finally {
      await w.stop();
    }
  });

  it('a re-sync cut short by worker 0 dying is run again by the worker that replaces it', async function () {
    // The same proxy with a slow re-sync, so that it is still running when worker 0 dies.
    for (const c of clients) c.close();
    expect(await proxy!.stop(), 'exit code').to.equal(0);
    proxy = await ProxyProcess.start(config({ recovery: { resyncRate: 200 } }));
    clients = await oneClientPerWorker(proxy.port);
    const [w0, w1] = clients as [MemcacheClient, MemcacheClient];
    const keys = keysOn(0, 400, 'cut');
    const acks = await w1.pipeline(keys.map((k) => [`set ${k} 0 0 2`, 'v1'] as [string, string]));
    expect(new Set(acks)).to.deep.equal(new Set(['STORED\r\n']));
    nodes[0] = await nodes[0]!.restart();
    await until(
      'worker 0 re-syncing node 0',
      10_000,
      async () => (await statsOf(w0)).get('proxy_node_0_resync') === 'running',
      msproxyLog,
    );
    process.kill(Number((await statsOf(w0)).get('pid')), 'SIGKILL');
    await w0.waitClose();
    await until(
      'node 0 complete again, as worker 1 sees it',
      20_000,
      async () => (await statsOf(w1)).get('proxy_node_0_complete') === '1',
      msproxyLog,
    );
    const missing: string[] = [];
    for (const k of keys) if ((await peek(nodes[0]!, k))?.value !== 'v1') missing.push(k);
    expect(missing, 'sessions node 0 did not get back').to.deep.equal([]);
  });

  it('a worker killed with SIGKILL is restarted; the other keeps serving', async function () {
    const [a, b] = clients as [MemcacheClient, MemcacheClient];
    const victim = Number((await statsOf(a)).get('pid'));
    expect(await b.command('set survivor 0 0 2', 'ok')).to.equal('STORED\r\n');
    process.kill(victim, 'SIGKILL');
    await a.waitClose();
    expect(await b.command('get survivor')).to.equal('VALUE survivor 0 2\r\nok\r\nEND\r\n');
    await proxy!.waitLog((l) => l.msg === 'worker died', 5000);
    // New connections reach a new worker 0 (another pid) once it listens.
    await until(
      'a restarted worker',
      10_000,
      async () => {
        const c = await MemcacheClient.connect(proxy!.port);
        try {
          const s = await statsOf(c);
          return s.get('proxy_worker') === '0' && Number(s.get('pid')) !== victim;
        } finally {
          c.close();
        }
      },
      msproxyLog,
    );
  });

  it('a worker that dies while a node is down: that node is flushed, never stale', async function () {
    const [a, b] = clients as [MemcacheClient, MemcacheClient];
    const X = 1;
    const keys = keysOn(X, 100, 'lost');
    await missedThroughA(a, b, X, keys);
    // Worker a dies with the only log of what node X missed.
    process.kill(Number((await statsOf(a)).get('pid')), 'SIGKILL');
    await a.waitClose();
    nodes[X]!.resume();
    await until('worker b to serve node X again', 15_000, () => serves(b, X), msproxyLog);
    const r = await b.request(`get ${keys.join(' ')}`);
    const seen = (r.values ?? []).map((v) => v.data.toString());
    expect(seen).to.have.length(keys.length);
    expect(
      seen.filter((v) => v !== 'v1'),
      'stale values',
    ).to.deep.equal([]);
    expect(Number((await statsOf(b)).get(`proxy_node_${X}_rejoin_flushes`))).to.equal(1);
  });
});

describe('workers: the CLI', function () {
  this.timeout(30_000);

  /** Two workers in front of one node, logging at info (the CLI's own lines are asserted). */
  const cliConfig = (port: number): Record<string, unknown> => ({
    listen: '127.0.0.1:0',
    nodes: [`127.0.0.1:${port}`],
    replicas: 1,
    workers: 2,
    log: { level: 'info' },
  });

  it('the installed entry point runs node with its GC flag, in the primary and in every worker', async function () {
    // bin/msproxy.js is run as the system runs `msproxy`: through its `#!/usr/bin/env -S node ...`
    // line. The flag must reach node (a broken #! line would not start at all, or start without it),
    // and node:cluster must pass it on to the workers.
    const node = await Memcached.start();
    const config = cliConfig(node.port);
    const p = await ProxyProcess.start(config, true);
    try {
      const argv = (pid: number): string[] =>
        readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').filter(Boolean);
      const primary = argv(p.pid);
      expect(primary).to.include('--initial-old-space-size=64');
      expect(primary.some((a) => a.endsWith('bin/msproxy.js'))).to.equal(true);
      const kids = readFileSync(`/proc/${p.pid}/task/${p.pid}/children`, 'latin1')
        .trim()
        .split(/\s+/)
        .filter(Boolean)
        .map(Number);
      expect(kids, 'worker processes').to.have.length(2);
      for (const k of kids) expect(argv(k)).to.include('--initial-old-space-size=64');
    } finally {
      expect(await p.stop()).to.equal(0);
      await node.kill();
    }
  });

  it('--check reports the workers; a port in use makes the primary exit 1', async function () {
    const node = await Memcached.start();
    const config = cliConfig(node.port);
    const check = ProxyProcess.spawn(config, ['--check']);
    expect(await check.exit()).to.equal(0);
    expect(check.logs.map((l) => l.msg).join('\n')).to.match(/workers 2/);
    const first = await ProxyProcess.start(config);
    try {
      const second = ProxyProcess.spawn({ ...config, listen: `127.0.0.1:${first.port}` });
      expect(await second.exit()).to.equal(1);
      await second.waitLog((l) => l.msg === 'worker could not start', 1000);
    } finally {
      expect(await first.stop()).to.equal(0);
      await node.kill();
    }
  });
});
