/**
 * Soak: a long session workload through msproxy while nodes fail, outside
 * `npm test`. Three memcached nodes, replicas 2, 40 session clients; every
 * cycle picks the next fault:
 *
 *   kill -9 a node, then restart it empty;
 *   hang a node (SIGSTOP) for `--hang` seconds, then SIGCONT;
 *   restart a node empty, wait for its re-sync, then kill another and restart it;
 *   hang every node for 2 s;
 *   with one instance: add a fourth node by reload, wait for the rebalance,
 *   kill an original node and restart it empty, then retire the fourth node
 *   by reload and wait for that rebalance.
 *
 * Per phase it prints failed requests (and when the last one failed) and the
 * latency clients saw (p50, p99, max, and how many took over 200 ms); at the end every
 * acknowledged session is read back: none missing, none stale, no deleted one
 * back. Exit status 1 on any violation.
 *
 * With `--instances N` (N > 1), N msproxy instances coordinated through a
 * real etcd (started on free ports) front the same nodes, and every request
 * goes to one of them picked at random, as behind a load balancer; the final
 * read goes through each instance.
 *
 *   npm run soak -- --minutes 10 --hang 10 [--instances 3]
 */

import { pino } from 'pino';
import { parseConfig } from '../src/config.js';
import { joinCluster } from '../src/coordination/etcd-gate.js';
import { Proxy } from '../src/server/proxy.js';
import { Etcd } from '../test/helpers/etcd.js';
import { type Cluster, startCluster } from '../test/helpers/proxy.js';
import { Memcached, sleep } from '../test/helpers/memcached.js';
import {
  SessionWorkload,
  countsSince,
  formatViolations,
  percentile,
} from '../test/helpers/sessions.js';

const args = process.argv.slice(2);
const opt = (name: string, def: number): number => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const MINUTES = opt('minutes', 5);
const HANG_S = opt('hang', 10);
const INSTANCES = opt('instances', 1);

/**
 * Run `body` as one measured phase and print its requests, failures (with the
 * last failure's time into the phase) and the latency clients saw in it.
 */
async function phase(w: SessionWorkload, what: string, body: () => Promise<void>): Promise<void> {
  const before = w.snapshot();
  const lat0 = w.latencies.length;
  const fail0 = w.failureTimes.length;
  const t0 = w.elapsed;
  await body();
  const ms = w.elapsed - t0;
  const c = countsSince(w.snapshot(), before);
  const lat = w.latencies.slice(lat0).sort((a, b) => a - b);
  const fails = w.failureTimes.slice(fail0);
  const pct = c.requests > 0 ? ((100 * c.failed) / c.requests).toFixed(2) : '0';
  const slow = lat.filter((x) => x > 200).length;
  const last = fails.length > 0 ? `, last at +${Math.round(fails[fails.length - 1]! - t0)} ms` : '';
  const f = (x: number): string => (x < 10 ? x.toFixed(2) : x.toFixed(0));
  console.log(
    `+${(t0 / 1000).toFixed(1).padStart(6)} s ${what.padEnd(40)} ${String(c.requests).padStart(7)} req in ${(ms / 1000).toFixed(1)} s, ` +
      `failed ${c.failed} (${pct}%${last}); latency ms p50 ${f(percentile(lat, 50))} ` +
      `p99 ${f(percentile(lat, 99))} max ${f(lat[lat.length - 1] ?? NaN)}, >200 ms: ${slow}`,
  );
}

async function waitUntil(what: string, ms: number, check: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(20);
  }
}

/** The instances in front of the nodes: `c.proxy`, and with --instances the others. */
let proxies: Proxy[] = [];
let etcd: Etcd | null = null;

/** Restart node `n` empty and wait until the re-sync this starts has finished. */
async function restartAndResync(c: Cluster, n: number): Promise<void> {
  const runs = (): number => proxies.reduce((sum, p) => sum + p.recovery.resyncRuns(n), 0);
  const before = runs();
  await c.restart(n);
  // The state alone could still say 'done' from an earlier run; one instance runs it, and
  // every instance learns the node is complete again.
  await waitUntil(
    're-sync',
    60_000,
    () => runs() > before && proxies.every((p) => p.recovery.complete(n)),
  );
}

/** Apply `config` to the instance as a reload does, and wait until its rebalance is done. */
async function resize(p: Proxy, config: unknown): Promise<void> {
  const next = parseConfig(config);
  const refused = p.refusal(next);
  if (refused.length > 0) throw new Error(`reload refused: ${refused.join('; ')}`);
  p.reconfigure(next);
  await waitUntil('rebalance', 120_000, () => p.recovery.rebalanceState === 'done');
}

/** Start the other instances, each a member of the cluster in etcd (see --instances). */
async function startInstances(c: Cluster): Promise<void> {
  const log = pino({ level: process.env.MSP_TEST_LOG ?? 'silent' });
  for (let i = 1; i < INSTANCES; i++) {
    const config = parseConfig({ ...c.config, listen: { host: '127.0.0.1', port: 0 } });
    const gate = (await joinCluster(config, log))!;
    const p = new Proxy(config, log, { gate, worker: 0 });
    gate.bind(p.peer());
    await p.start();
    proxies.push(p);
  }
}

async function main(): Promise<void> {
  let coordination = {};
  if (INSTANCES > 1) {
    etcd = await Etcd.start();
    coordination = {
      coordination: { etcd: { endpoints: [etcd.endpoint], prefix: '/msproxy/soak' } },
    };
  }
  const c: Cluster = await startCluster({ recovery: { resyncRate: 20000 }, ...coordination });
  proxies = [c.proxy];
  await startInstances(c);
  const ports = proxies.map((p) => p.address.port);
  const deadline = Date.now() + MINUTES * 60_000;
  const w = await SessionWorkload.start({
    port: c.port,
    ports,
    maxRunMs: MINUTES * 60_000 + 120_000,
  });
  // Placement changes by reload are for one instance (workers and etcd refuse them).
  const spare = INSTANCES === 1 ? await Memcached.start() : null;
  const kinds = spare === null ? 4 : 5;
  let cycle = 0;
  try {
    await phase(w, 'warm-up', () => w.run(3000));
    while (Date.now() < deadline) {
      const n = cycle % 3;
      const other = (n + 1) % 3;
      switch (cycle % kinds) {
        case 0:
          await phase(w, `kill -9 node ${n}`, async () => {
            await c.kill(n);
            await w.run(3000);
          });
          await phase(w, `restart node ${n} empty, re-sync`, async () => {
            await restartAndResync(c, n);
            await w.run(1000);
          });
          break;
        case 1:
          await phase(w, `hang node ${n} for ${HANG_S} s`, async () => {
            c.nodes[n]!.pause();
            try {
              await w.run(HANG_S * 1000);
            } finally {
              c.nodes[n]!.resume();
            }
          });
          await phase(w, `resume node ${n}, rejoin`, async () => {
            await waitUntil('rejoin', 30_000, () => proxies.every((p) => p.nodes[n]!.isUp));
            await w.run(1000);
          });
          break;
        case 2:
          await phase(w, `restart node ${n} empty, re-sync`, () => restartAndResync(c, n));
          await phase(w, `then kill node ${other}`, async () => {
            await c.kill(other);
            await w.run(3000);
          });
          await phase(w, `restart node ${other} empty, re-sync`, () => restartAndResync(c, other));
          break;
        case 4: {
          const base = c.config;
          const grown = {
            ...base,
            nodes: [...base.nodes, { host: '127.0.0.1', port: spare!.port }],
          };
          await phase(w, 'add a fourth node (reload), rebalance', async () => {
            await resize(c.proxy, grown);
            await w.run(500);
          });
          await phase(w, `then kill node ${n}`, async () => {
            await c.kill(n);
            await w.run(3000);
          });
          await phase(w, `restart node ${n} empty, re-sync`, () => restartAndResync(c, n));
          await phase(w, 'retire the fourth node (reload), rebalance', async () => {
            await resize(c.proxy, base);
            await w.run(500);
          });
          break;
        }
        default:
          await phase(w, 'hang every node for 2 s', async () => {
            for (const m of c.nodes) m.pause();
            try {
              await w.run(2000);
            } finally {
              for (const m of c.nodes) m.resume();
            }
            await waitUntil('all up', 30_000, () =>
              proxies.every((p) => p.nodes.every((x) => x.isUp)),
            );
            await w.run(1000);
          });
      }
      cycle++;
    }
  } finally {
    await w.stop();
  }
  const violations = [...w.violations];
  for (const port of ports) violations.push(...(await w.verify({ port })));
  console.log(w.summary());
  for (const p of proxies.slice(1)) await p.close();
  await c.stop();
  await spare?.kill();
  await etcd?.stop();
  if (violations.length > 0) {
    console.log(`VIOLATIONS ${violations.length}:\n${formatViolations(violations)}`);
    process.exit(1);
  }
  console.log(
    `soak: ${cycle} fault cycles through ${INSTANCES} instance(s), no session lost, stale or resurrected`,
  );
  process.exit(0);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(2);
});
