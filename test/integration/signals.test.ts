/**
 * Stop signals to msproxy run as its CLI: a second SIGINT or SIGTERM,
 * whichever the first was, ends one process or the primary (and its
 * workers) at once, instead of waiting for the graceful close. SIGHUP
 * reloads the config: see reload.test.ts.
 */

import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { Memcached } from '../helpers/memcached.js';
import { childrenOf, ProxyProcess } from '../helpers/proxy-process.js';
import { MemcacheClient, statsOf } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';

/** Whether process `pid` still exists (a zombie counts as gone). */
function alive(pid: number): boolean {
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'latin1'));
  } catch {
    return false;
  }
}

describe('signals: a second SIGINT or SIGTERM', function () {
  this.timeout(60_000);
  let node: Memcached;
  let proxy: ProxyProcess | null = null;
  let held: MemcacheClient | null = null;
  let workers: number[] = [];

  beforeEach(async function () {
    node = await Memcached.start();
  });

  afterEach(async function () {
    held?.close();
    held = null;
    node.resume();
    await proxy?.stop();
    proxy = null;
    for (const pid of workers.filter(alive)) process.kill(pid, 'SIGKILL');
    workers = [];
    await node.kill();
  });

  /**
   * Start msproxy and begin a graceful close that cannot finish by itself: the node hangs
   * with a client's get in flight, and requests time out only after 20 s, so the close
   * waits for it (up to three request timeouts; the primary waits 10 s for its workers).
   */
  async function closeHeldOpen(workerCount: number, first: NodeJS.Signals): Promise<ProxyProcess> {
    const p = await ProxyProcess.start({
      listen: '127.0.0.1:0',
      nodes: [`127.0.0.1:${node.port}`],
      replicas: 1,
      workers: workerCount,
      timeouts: { requestMs: 20_000 },
      log: { level: 'info' },
    });
    proxy = p;
    if (workerCount > 1) workers = childrenOf(p.pid);
    held = await MemcacheClient.connect(p.port);
    const worker = (await statsOf(held)).get('proxy_worker');
    node.pause();
    held.send('get held\r\n'); // never answered: msproxy is gone first
    // The get is in msproxy, not only in a socket buffer: the worker serving it counted it.
    await until('msproxy to take the held get', 10_000, async () => {
      const c = await MemcacheClient.connect(p.port);
      try {
        const s = await statsOf(c);
        return s.get('proxy_worker') === worker && Number(s.get('cmd_get')) >= 1;
      } finally {
        c.close();
      }
    });
    process.kill(p.pid, first);
    await p.waitLog((l) => l.msg === 'shutting down' && l['signal'] === first, 5000);
    return p;
  }

  /** The exit after the second signal: by that signal, not exit 0 after a graceful close. */
  async function expectEndedBy(p: ProxyProcess, second: NodeJS.Signals): Promise<void> {
    const bound = new Promise<string>((r) => setTimeout(() => r('still running'), 20_000).unref());
    const ended = await Promise.race([p.exit().then(() => 'exited'), bound]);
    expect(ended, `msproxy after ${second}`).to.equal('exited');
    // Killed by it, or (should another thread take it) exit 128 + its number; a graceful close
    // that finished would exit 0, with no signal.
    const code = await p.exit();
    const log = p.logs.map((l) => JSON.stringify(l)).join('\n');
    expect(
      p.exitSignal === second || code === 128 + constants.signals[second],
      `ended by the second signal, not exit ${code}; log:\n${log}`,
    ).to.equal(true);
  }

  const pairs: [NodeJS.Signals, NodeJS.Signals][] = [
    ['SIGINT', 'SIGTERM'],
    ['SIGTERM', 'SIGINT'],
    ['SIGINT', 'SIGINT'],
  ];
  for (const [first, second] of pairs) {
    it(`one process: ${first} then ${second} ends it at once`, async function () {
      const p = await closeHeldOpen(1, first);
      process.kill(p.pid, second);
      await expectEndedBy(p, second);
    });
  }

  for (const [first, second] of [...pairs.slice(0, 2), ['SIGTERM', 'SIGTERM']] as [
    NodeJS.Signals,
    NodeJS.Signals,
  ][]) {
    it(`with workers: ${first} then ${second} to the primary ends it and its workers at once`, async function () {
      const p = await closeHeldOpen(2, first);
      expect(workers, 'worker processes').to.have.length(2);
      process.kill(p.pid, second);
      await expectEndedBy(p, second);
      await until('the workers to be gone', 5000, () => !workers.some(alive));
    });
  }
});
