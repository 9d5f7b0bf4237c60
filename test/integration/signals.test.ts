/**
 * Signals to msproxy run as its CLI: SIGHUP (a closed terminal, or a reload
 * by habit) is logged and ignored, by one process and by a primary with its
 * workers, so the in-memory outage logs survive it.
 */

import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { Memcached, sleep } from '../helpers/memcached.js';
import { ProxyProcess } from '../helpers/proxy-process.js';
import { MemcacheClient, replyText, statsOf } from '../helpers/proxy.js';

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
    await sleep(200);
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
