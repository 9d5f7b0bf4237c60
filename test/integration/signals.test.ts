/**
 * Signals to msproxy run as its CLI: SIGHUP (a closed terminal, or a reload
 * by habit) is logged and ignored, by one process and by a primary with its
 * workers, so the in-memory outage logs survive it. A second SIGINT or
 * SIGTERM, whichever the first was, ends one process or the primary (and its
 * workers) at once, instead of waiting for the graceful close.
 */

import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { Memcached, sleep } from '../helpers/memcached.js';
import { ProxyProcess } from '../helpers/proxy-process.js';
import { MemcacheClient, replyText, statsOf } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';

const WARNING = 'SIGHUP: config reload is not supported; restart msproxy to apply a new config';

/** The PIDs of `pid`'s child processes (a primary's workers). */
function childrenOf(pid: number): number[] {
  return readFileSync(`/proc/${pid}/task/${pid}/children`, 'latin1')
    .trim()
    .split(/\s+/)
    .filter(Boolean)
    .map(Number);
}

/** `version` on a new connection; returns the worker that answered `stats`. */
async function answers(port: number): Promise<number> {
  const c = await MemcacheClient.connect(port);
  try {
    expect(replyText(await c.request('version'))).to.match(/^VERSION \d+\.\d+\.\d+\r\n$/);
    return Number((await statsOf(c)).get('proxy_worker'));
  } finally {
    c.close();
  }
}

describe('signals: SIGHUP', function () {
  this.timeout(30_000);
  let node: Memcached;
  let proxy: ProxyProcess | null = null;

  beforeEach(async function () {
    node = await Memcached.start();
  });

  afterEach(async function () {
    await proxy?.stop();
    proxy = null;
    await node.kill();
  });

  const config = (workers: number): Record<string, unknown> => ({
    listen: '127.0.0.1:0',
    nodes: [`127.0.0.1:${node.port}`],
    replicas: 1,
    workers,
    log: { level: 'info' },
  });

  it('one process logs a warning and keeps serving', async function () {
    proxy = await ProxyProcess.start(config(1));
    process.kill(proxy.pid, 'SIGHUP');
    const line = await proxy.waitLog((l) => l.msg === WARNING, 3000);
    expect(line['level'], 'warn').to.equal(40);
    await answers(proxy.port);
    // A second one too (a listener registered with `once` would let it kill).
    process.kill(proxy.pid, 'SIGHUP');
    const p = proxy;
    await until(
      'the second warning',
      3000,
      () => p.logs.filter((l) => l.msg === WARNING).length === 2,
    );
    await answers(proxy.port);
    expect(proxy.logs.filter((l) => l.msg === WARNING)).to.have.length(2);
    expect(await proxy.stop(), 'exit code after SIGTERM').to.equal(0);
  });

  it('with workers: the primary logs it once, no worker dies, both keep serving', async function () {
    proxy = await ProxyProcess.start(config(2));
    const workers = childrenOf(proxy.pid);
    expect(workers, 'worker processes').to.have.length(2);
    // What a terminal's hangup does: every process of the group gets it.
    for (const pid of [proxy.pid, ...workers]) process.kill(pid, 'SIGHUP');
    await proxy.waitLog((l) => l.msg === WARNING, 3000);
    await sleep(300);
    expect(proxy.logs.filter((l) => l.msg === WARNING)).to.have.length(1);
    expect(proxy.logs.filter((l) => l.msg === 'worker died')).to.deep.equal([]);
    expect(childrenOf(proxy.pid)).to.have.members(workers);
    const seen = new Set<number>();
    for (let tries = 0; tries < 50 && seen.size < 2; tries++) seen.add(await answers(proxy.port));
    expect([...seen].sort()).to.deep.equal([0, 1]);
    expect(await proxy.stop(), 'exit code after SIGTERM').to.equal(0);
  });
});

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
