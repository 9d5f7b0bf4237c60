/**
 * Config reload, run as an operator does it: msproxy as its own process in
 * front of real memcached nodes, the config file edited, then SIGHUP or
 * `msproxy reload --config <file>`. A reload applies what may change in a
 * running process and says so in `stats`; a config that is invalid, or
 * changes what needs a restart, changes nothing and is counted. SIGHUP
 * never ends a process, and no client connection or request is lost to it.
 */

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { Memcached, freePort, sleep } from '../helpers/memcached.js';
import { type LogLine, childrenOf, ProxyProcess } from '../helpers/proxy-process.js';
import { MemcacheClient, replyText, statsAt } from '../helpers/proxy.js';
import { SessionWorkload, formatViolations } from '../helpers/sessions.js';
import { until } from '../helpers/wait.js';

const MAIN = fileURLToPath(new URL('../helpers/msproxy-main.ts', import.meta.url));

/** Run `msproxy reload` with `args`; its exit code and output. */
function reloadCli(args: string[]): Promise<{ code: number; out: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx/esm', MAIN, 'reload', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code: code ?? 1, out })));
}

describe('config reload', function () {
  this.timeout(60_000);
  let nodes: Memcached[] = [];
  let proxy: ProxyProcess | null = null;

  beforeEach(async function () {
    nodes = await Promise.all([0, 1, 2].map(() => Memcached.start()));
  });

  afterEach(async function () {
    await proxy?.stop();
    proxy = null;
    await Promise.all(nodes.map((n) => n.kill()));
  });

  function config(over: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      listen: '127.0.0.1:0',
      nodes: nodes.map((n, i) => ({ host: '127.0.0.1', port: n.port, name: `node${i}` })),
      replicas: 2,
      log: { level: 'info' },
      ...over,
    };
  }

  /** The config file edited: `over` replaces fields of the one it started with. */
  function pinned(p: ProxyProcess, over: Record<string, unknown> = {}): Record<string, unknown> {
    return config({ ...started.get(p), ...over });
  }

  const started = new Map<ProxyProcess, Record<string, unknown>>();
  async function launch(over: Record<string, unknown> = {}): Promise<ProxyProcess> {
    const p = await ProxyProcess.start(config(over));
    started.set(p, over);
    return p;
  }

  it('SIGHUP applies a new config: settings, log level, epoch and digest; clients stay connected', async function () {
    const p = (proxy = await launch());
    p.writeConfig(pinned(p));
    process.kill(p.pid, 'SIGHUP');
    await p.waitLog((l) => l.msg === 'config reloaded', 5000);
    const held = await MemcacheClient.connect(p.port);
    try {
      expect(replyText(await held.request('set k 0 0 2', 'v1'))).to.equal('STORED\r\n');
      const before = await statsAt(p.port);
      expect(before.get('proxy_config_epoch')).to.equal('2');
      expect(before.get('proxy_config_reload_failures')).to.equal('0');
      expect(before.get('proxy_reload_pid')).to.equal(String(p.pid));
      p.writeConfig(
        pinned(p, {
          log: { level: 'warn' },
          timeouts: { requestMs: 400, connectMs: 900 },
          limits: { maxInflight: 64 },
          ackMode: 'async',
        }),
      );
      process.kill(p.pid, 'SIGHUP');
      await until('epoch 3', 5000, async () => {
        return (await statsAt(p.port)).get('proxy_config_epoch') === '3';
      });
      const after = await statsAt(p.port);
      expect(after.get('proxy_config_digest')).to.match(/^[0-9a-f]{64}$/);
      expect(after.get('proxy_config_digest')).to.not.equal(before.get('proxy_config_digest'));
      const settings = await statsAt(p.port, 'settings');
      expect(settings.get('proxy_request_timeout_ms')).to.equal('400');
      expect(settings.get('proxy_max_inflight')).to.equal('64');
      expect(settings.get('proxy_ack_mode')).to.equal('async');
      // The new level is in force at once: this reload's own line (info) is not logged.
      expect(p.logs.filter((l) => l.msg === 'config reloaded')).to.have.length(1);
      p.writeConfig(pinned(p, { timeouts: { requestMs: 400, connectMs: 900 } }));
      process.kill(p.pid, 'SIGHUP');
      const line = await p.waitLog((l) => l.msg === 'config reloaded' && l['epoch'] === 4, 5000);
      expect(line['changed']).to.include.members(['log.level', 'limits.maxInflight', 'ackMode']);
      // The connection opened before the reloads still works.
      expect(replyText(await held.request('get k'))).to.equal('VALUE k 0 2\r\nv1\r\nEND\r\n');
    } finally {
      held.close();
    }
    expect(await p.stop(), 'exit code after SIGTERM').to.equal(0);
  });

  it('an invalid config, or one that needs a restart, changes nothing and is counted', async function () {
    const p = (proxy = await launch({ timeouts: { requestMs: 300 } }));
    const digest = (await statsAt(p.port)).get('proxy_config_digest');
    const attempts: [string | Record<string, unknown>, RegExp][] = [
      ['{ "listen": ', /not valid JSON/],
      [pinned(p, { replicas: 0, timeouts: { requestMs: 999 } }), /replicas/],
      [pinned(p, { listen: '127.0.0.1:1', timeouts: { requestMs: 999 } }), /listen.port/],
      [pinned(p, { workers: 2, timeouts: { requestMs: 999 } }), /workers changes only/],
      [
        pinned(p, { backend: { connections: 2 }, timeouts: { requestMs: 999 } }),
        /backend.connections changes only/,
      ],
    ];
    for (const [i, [text, reason]] of attempts.entries()) {
      p.writeConfig(text);
      process.kill(p.pid, 'SIGHUP');
      await until(`failure ${i + 1} counted`, 5000, async () => {
        const s = await statsAt(p.port);
        return s.get('proxy_config_reload_failures') === String(i + 1);
      });
      const failed = (): LogLine[] =>
        p.logs.filter((l) => String(l.msg).startsWith('config reload failed'));
      await until('the failure logged', 5000, () => failed().length === i + 1);
      const line = failed().pop()!;
      expect(line['level'], 'logged as an error').to.equal(50);
      expect(JSON.stringify(line['reasons'])).to.match(reason);
    }
    const s = await statsAt(p.port);
    expect(s.get('proxy_config_epoch')).to.equal('1');
    expect(s.get('proxy_config_digest')).to.equal(digest);
    expect(Number(s.get('proxy_config_reload_failed_at'))).to.be.greaterThan(0);
    expect((await statsAt(p.port, 'settings')).get('proxy_request_timeout_ms')).to.equal('300');
  });

  it('with workers: the primary reloads once and every worker applies it; no worker dies', async function () {
    const p = (proxy = await launch({ workers: 2 }));
    const workers = childrenOf(p.pid);
    expect(workers).to.have.length(2);
    p.writeConfig(pinned(p, { workers: 2, timeouts: { requestMs: 450 } }));
    // What a terminal's hangup does: every process of the group gets it.
    for (const pid of [p.pid, ...workers]) process.kill(pid, 'SIGHUP');
    await p.waitLog((l) => l.msg === 'config reloaded', 5000);
    await sleep(300);
    expect(p.logs.filter((l) => l.msg === 'config reloaded')).to.have.length(1);
    expect(p.logs.filter((l) => l.msg === 'worker died')).to.deep.equal([]);
    expect(childrenOf(p.pid)).to.have.members(workers);
    // Each worker, as its own connections reach it, runs the new config.
    const seen = new Set<string>();
    for (let tries = 0; tries < 60 && seen.size < 2; tries++) {
      const s = await statsAt(p.port, 'settings');
      expect(s.get('proxy_config_epoch'), `worker ${s.get('proxy_worker')}`).to.equal('2');
      expect(s.get('proxy_reload_pid')).to.equal(String(p.pid));
      if (s.get('proxy_request_timeout_ms') === '450') seen.add(s.get('proxy_worker')!);
    }
    expect([...seen].sort()).to.deep.equal(['0', '1']);
    expect(await p.stop(), 'exit code after SIGTERM').to.equal(0);
  });

  it('msproxy reload --config: signals the running process and reports what it did', async function () {
    const dir = mkdtempSync(join(tmpdir(), 'msproxy-pid-'));
    const pidFile = join(dir, 'msproxy.pid');
    const p = (proxy = await launch({ pidFile, listen: `127.0.0.1:${await freePort()}` }));
    expect(readFileSync(pidFile, 'utf8').trim()).to.equal(String(p.pid));
    p.writeConfig(pinned(p, { pidFile, timeouts: { requestMs: 333 } }));
    const ok = await reloadCli(['--config', p.file]);
    expect(ok.out).to.match(/reloaded .* \(config epoch 2\)/);
    expect(ok.code).to.equal(0);
    p.writeConfig(pinned(p, { pidFile, workers: 2 }));
    const refused = await reloadCli(['--config', p.file]);
    expect(refused.out).to.match(/reload refused/);
    expect(refused.code).to.equal(1);
    p.writeConfig('{');
    const invalid = await reloadCli(['--config', p.file]);
    expect(invalid.out).to.match(/not valid JSON[\s\S]*not reloaded/);
    expect(invalid.code).to.equal(2);
    expect((await statsAt(p.port)).get('proxy_config_reload_failures')).to.equal('1');
    expect(p.logs.filter((l) => l.msg === 'config reloaded')).to.have.length(1);
    expect(await p.stop()).to.equal(0);
    expect(() => readFileSync(pidFile), 'pid file removed on exit').to.throw();
    // Without a pid file, the listener's stats name the process.
    proxy = await launch({ listen: `127.0.0.1:${await freePort()}` });
    proxy.writeConfig(pinned(proxy, { timeouts: { requestMs: 334 } }));
    const viaStats = await reloadCli(['--config', proxy.file]);
    expect(viaStats.out).to.match(/config epoch 2/);
    expect(viaStats.code).to.equal(0);
  });

  it('a session workload through SIGHUPs with alternating configs: 0 errors, 0 dropped connections', async function () {
    const p = (proxy = await launch({ workers: 2 }));
    const a = pinned(p, { workers: 2, timeouts: { requestMs: 250 }, log: { level: 'info' } });
    const b = pinned(p, {
      workers: 2,
      timeouts: { requestMs: 400 },
      limits: { maxInflight: 256 },
      log: { level: 'warn' },
    });
    const w = await SessionWorkload.start({ port: p.port, clients: 20, keysPerClient: 10 });
    const reloads = 10;
    for (let i = 0; i < reloads; i++) {
      p.writeConfig(i % 2 === 0 ? b : a);
      process.kill(p.pid, 'SIGHUP');
      await w.run(200);
    }
    await w.run(300);
    await w.stop();
    const counts = w.snapshot();
    expect(counts.failed, `failed requests: ${[...w.errors]}`).to.equal(0);
    expect(counts.transportErrors, 'dropped connections').to.equal(0);
    expect(w.violations, formatViolations(w.violations)).to.deep.equal([]);
    const v = await w.verify({ port: p.port });
    expect(v, formatViolations(v)).to.deep.equal([]);
    await until('every reload applied', 5000, async () => {
      return (await statsAt(p.port)).get('proxy_config_epoch') === String(reloads + 1);
    });
    expect(p.logs.filter((l) => l.msg === 'worker died')).to.deep.equal([]);
  });
});
