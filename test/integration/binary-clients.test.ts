/**
 * Real clients that speak memcached's binary protocol, unchanged, against msproxy in front of
 * real memcached nodes:
 *
 * - PHP sessions through Debian's php-memcached at its defaults (binary protocol, session
 *   locking): many sessions created, read, updated and destroyed by PHP processes, two PHP
 *   processes on one session (the second waits for the first's lock), and a node killed with
 *   every live session still readable (test/fixtures/php-sessions.php).
 * - The npm `memjs` client (binary only): its whole API, each result checked, the same calls
 *   run against a lone memcached for the reference.
 * - pylibmc (libmemcached) with binary=True, and binary=False for contrast: the same script
 *   against msproxy and a lone memcached (test/fixtures/pylibmc-ops.py).
 * - spymemcached (Java, Debian's libspymemcached-java), binary and text, and binary with SASL
 *   PLAIN: the same calls against msproxy and a lone memcached (test/fixtures/SpyOps.java).
 *
 * Every client runs as its own process (or, for memjs, asynchronously in this one): the proxy
 * runs inside the mocha process, so nothing here may block the event loop.
 */

import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import memjs from 'memjs';
import { Memcached } from '../helpers/memcached.js';
import { type Cluster, MemcacheClient, peek, startCluster, statsOf } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';
import { PROTOCOL_VERSION } from '../../src/version.js';

const PHP_SESSIONS = fileURLToPath(new URL('../fixtures/php-sessions.php', import.meta.url));
const PYLIBMC_OPS = fileURLToPath(new URL('../fixtures/pylibmc-ops.py', import.meta.url));
/** Debian's python3: python3-pylibmc installs for it (a python3 earlier in PATH may not see it). */
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const RUN_MS = 30_000;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run a command to its end (SIGKILL after `ms`), without blocking the event loop. */
function run(cmd: string, args: string[], ms = RUN_MS): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** What a run printed as JSON on its last stdout line; it must have exited 0, warning-free. */
function lastJson(r: Run, what: string): Record<string, unknown> {
  const detail = `${what}: exit ${r.code} ${r.signal ?? ''}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
  expect(r.code, detail).to.equal(0);
  expect(r.stderr, detail).to.equal('');
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>;
}

/** One of msproxy's own counters (`stats` over text): cmd_set, proxy_binary_connections, ... */
async function proxyStat(port: number, name: string): Promise<number> {
  const c = await MemcacheClient.connect(port);
  try {
    const value = (await statsOf(c)).get(name);
    expect(value, `stat ${name}`).to.match(/^\d+$/);
    return Number(value);
  } finally {
    c.close();
  }
}

// ------------------------------------------------------------------ PHP sessions

/** php-memcached's session key prefix (memcached.sess_prefix's default). */
const SESS_PREFIX = 'memc.sess.key.';

function phpArgs(port: number, ...args: string[]): string[] {
  return [
    '-d',
    'display_errors=stderr',
    '-d',
    'error_reporting=-1',
    '-d',
    'session.save_handler=memcached',
    '-d',
    `session.save_path=127.0.0.1:${port}`,
    PHP_SESSIONS,
    ...args,
  ];
}

async function php(port: number, ...args: string[]): Promise<Record<string, unknown>> {
  return lastJson(await run('php', phpArgs(port, ...args)), `php ${args.join(' ')}`);
}

/** `php-sessions.php <mode> <prefix> <from> <to> ...` over [0, n) in `procs` concurrent processes. */
async function phpEach(
  port: number,
  mode: string,
  prefix: string,
  n: number,
  procs: number,
  ...rest: string[]
): Promise<Record<string, unknown>[]> {
  const per = Math.ceil(n / procs);
  const runs: Promise<Record<string, unknown>>[] = [];
  for (let from = 0; from < n; from += per) {
    runs.push(php(port, mode, prefix, String(from), String(Math.min(n, from + per)), ...rest));
  }
  return Promise.all(runs);
}

/** The union of one field (`before`, `sessions`, `destroyed`) over several runs' reports. */
function merged(reports: Record<string, unknown>[], field: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const r of reports) {
    expect(r, JSON.stringify(r)).to.have.property(field);
    Object.assign(out, r[field]);
  }
  return out;
}

/** A PHP process whose stdout JSON lines are collected as they come. */
class PhpProcess {
  readonly lines: Record<string, unknown>[] = [];
  stderr = '';
  readonly child: ChildProcessWithoutNullStreams;
  readonly exited: Promise<number | null>;

  constructor(port: number, args: string[]) {
    this.child = spawn('php', phpArgs(port, ...args));
    this.child.stderr.on('data', (d: Buffer) => (this.stderr += d.toString()));
    createInterface({ input: this.child.stdout }).on('line', (l) =>
      this.lines.push(JSON.parse(l) as Record<string, unknown>),
    );
    this.exited = new Promise((resolve) => this.child.once('close', (code) => resolve(code)));
    // A bound on its life, whatever the test does.
    const timer = setTimeout(() => this.child.kill('SIGKILL'), RUN_MS);
    void this.exited.then(() => clearTimeout(timer));
  }

  event(name: string): Record<string, unknown> | undefined {
    return this.lines.find((l) => l.event === name);
  }

  async waitEvent(name: string, ms = 10_000): Promise<Record<string, unknown>> {
    await until(
      `php event ${name}`,
      ms,
      () => this.event(name) !== undefined || this.child.exitCode !== null,
      () => `lines: ${JSON.stringify(this.lines)}\nstderr: ${this.stderr}`,
    );
    const e = this.event(name);
    expect(e, `lines: ${JSON.stringify(this.lines)}\nstderr: ${this.stderr}`).to.not.equal(
      undefined,
    );
    return e!;
  }
}

/**
 * Two PHP processes on one session: the first starts it (taking its lock) and holds it; the
 * second starts it while the first holds the lock (msproxy has refused its add: cmd_set
 * counted it, and it has not read); only then does the first write v and close, and the second
 * must read the first's write. `whileHeld` runs once the first holds the lock.
 */
async function lockHandoff(
  c: Cluster,
  id: string,
  whileHeld: () => Promise<void> = async () => {},
): Promise<void> {
  const lockKey = `${SESS_PREFIX}lock.${id}`;
  const first = new PhpProcess(c.port, ['hold', id, 'written-by-first']);
  let second: PhpProcess | null = null;
  try {
    const locked = await first.waitEvent('locked');
    expect(locked.session).to.deep.equal([]);
    const holders = c.proxy.ring.order(Buffer.from(lockKey)).slice(0, 2);
    for (const node of holders) {
      expect(await peek(c.nodes[node]!, lockKey), `the lock item on node ${node}`).to.not.equal(
        null,
      );
    }
    await whileHeld();

    const sets = await proxyStat(c.port, 'cmd_set');
    second = new PhpProcess(c.port, ['wait', id]);
    await second.waitEvent('starting');
    await until('the second PHP process to try the lock', 10_000, async () => {
      return (await proxyStat(c.port, 'cmd_set')) > sets;
    });
    expect(second.event('read'), 'the second read while the first held the lock').to.equal(
      undefined,
    );
    expect(first.event('released')).to.equal(undefined);
    first.child.stdin.end('release\n');

    const released = await first.waitEvent('released');
    expect(released).to.include({ closed: true, stdin: true });
    const read = await second.waitEvent('read');
    expect(read, second.stderr).to.deep.equal({
      event: 'read',
      started: true,
      session: { v: 'written-by-first' },
    });
    expect(await first.exited, first.stderr).to.equal(0);
    expect(await second.exited, second.stderr).to.equal(0);
    expect(first.stderr + second.stderr).to.equal('');
    for (const node of c.nodes.filter((n) => n.alive)) {
      expect(await peek(node, lockKey)).to.equal(null);
    }
  } finally {
    first.child.kill('SIGKILL');
    second?.child.kill('SIGKILL');
  }
}

describe('binary clients: PHP sessions (php-memcached defaults: binary protocol, locking)', function () {
  this.timeout(120_000);
  let c: Cluster;
  const prefix = `msp${process.pid}x${Date.now().toString(36)}`;
  const N = 50;
  const DESTROYED = 10;

  before(async function () {
    const m = await run('php', ['-m']);
    // Not a skip: CI installs php-cli and php-memcached (.ci/run).
    expect(
      m.stdout,
      'php with the memcached extension (apt-get install php-cli php-memcached)',
    ).to.match(/^memcached$/m);
    const ini = await run('php', ['-r', 'echo ini_get("memcached.sess_binary_protocol");']);
    expect(ini.stdout, 'memcached.sess_binary_protocol at its default').to.equal('1');
    c = await startCluster({ nodes: 3, replicas: 2 });
  });

  after(async function () {
    await c?.stop();
  });

  it('creates, reads back, updates and destroys 50 sessions, over binary connections', async function () {
    const binaryBefore = await proxyStat(c.port, 'proxy_binary_connections');
    const created = merged(await phpEach(c.port, 'write', prefix, N, 5, '1'), 'before');
    expect(Object.keys(created)).to.have.length(N);
    for (const s of Object.values(created)) expect(s).to.deep.equal([]);
    // php-memcached spoke binary to msproxy: one binary connection per PHP process at least.
    expect(await proxyStat(c.port, 'proxy_binary_connections')).to.be.at.least(binaryBefore + 5);

    // Each session is on both of its replicas, and no lock is left behind.
    for (let i = 0; i < N; i++) {
      const key = `${SESS_PREFIX}${prefix}-${i}`;
      const order = c.proxy.ring.order(Buffer.from(key));
      for (const node of order.slice(0, 2)) {
        expect(await peek(c.nodes[node]!, key), `${key} on node ${node}`).to.not.equal(null);
      }
      for (const node of c.nodes) {
        expect(await peek(node, `${SESS_PREFIX}lock.${prefix}-${i}`)).to.equal(null);
      }
    }

    const read = merged(await phpEach(c.port, 'read', prefix, N, 5), 'sessions');
    for (let i = 0; i < N; i++) {
      expect(read[`${prefix}-${i}`], `${prefix}-${i}`).to.deep.equal({
        user: i,
        round: 1,
        history: [1],
      });
    }

    const updated = merged(await phpEach(c.port, 'write', prefix, N, 5, '2'), 'before');
    for (let i = 0; i < N; i++) {
      expect(updated[`${prefix}-${i}`]).to.deep.equal({ user: i, round: 1, history: [1] });
    }

    const destroyed = merged(await phpEach(c.port, 'destroy', prefix, DESTROYED, 2), 'destroyed');
    expect(Object.values(destroyed)).to.deep.equal(new Array(DESTROYED).fill(true));
    for (let i = 0; i < DESTROYED; i++) {
      for (const node of c.nodes) {
        expect(await peek(node, `${SESS_PREFIX}${prefix}-${i}`)).to.equal(null);
      }
    }

    const after = merged(await phpEach(c.port, 'read', prefix, N, 5), 'sessions');
    for (let i = 0; i < N; i++) {
      expect(after[`${prefix}-${i}`], `${prefix}-${i}`).to.deep.equal(
        i < DESTROYED ? [] : { user: i, round: 2, history: [1, 2] },
      );
    }
  });

  it('makes a second PHP process wait for the first one’s session lock, then see its write', async function () {
    await lockHandoff(c, `${prefix}-locked`);
  });

  it('keeps the session lock exclusive when the lock’s primary node dies while it is held', async function () {
    const other = await startCluster({ nodes: 3, replicas: 2 });
    try {
      const id = `${prefix}-locked-failover`;
      const lockKey = `${SESS_PREFIX}lock.${id}`;
      await lockHandoff(other, id, async () => {
        const primary = other.proxy.ring.order(Buffer.from(lockKey))[0]!;
        await other.kill(primary);
      });
    } finally {
      await other.stop();
    }
  });

  it('reads every live session through PHP after a node is killed, and still writes them', async function () {
    // The node that is primary for the most live sessions: its sessions are read from the backup.
    const live = Array.from({ length: N - DESTROYED }, (_, j) => DESTROYED + j);
    const primaryOf = (i: number): number =>
      c.proxy.ring.order(Buffer.from(`${SESS_PREFIX}${prefix}-${i}`))[0]!;
    const counts = [0, 1, 2].map((node) => live.filter((i) => primaryOf(i) === node).length);
    const victim = counts.indexOf(Math.max(...counts));
    expect(counts[victim]).to.be.greaterThan(0);
    await c.kill(victim);
    // Read at once, without waiting for msproxy to mark the node down.

    const read = merged(await phpEach(c.port, 'read', prefix, N, 5), 'sessions');
    for (let i = 0; i < N; i++) {
      expect(read[`${prefix}-${i}`], `${prefix}-${i}`).to.deep.equal(
        i < DESTROYED ? [] : { user: i, round: 2, history: [1, 2] },
      );
    }
    expect(c.nodes[victim]!.alive).to.equal(false);

    // And the sessions still take writes (lock, write, unlock) with one node down.
    const updated = merged(
      await Promise.all([php(c.port, 'write', prefix, String(DESTROYED), String(N), '3')]),
      'before',
    );
    expect(Object.keys(updated)).to.have.length(live.length);
    const again = merged(await phpEach(c.port, 'read', prefix, N, 5), 'sessions');
    for (const i of live) {
      expect(again[`${prefix}-${i}`]).to.deep.equal({ user: i, round: 3, history: [1, 2, 3] });
    }
  });
});

// ------------------------------------------------------------------ memjs

type MemjsClient = memjs.Client;

/** `version` (opcode 0x0b), which memjs 1.3 has no method for, through its own perform(). */
function memjsVersion(client: MemjsClient): Promise<string> {
  client.incrSeq();
  const seq = client.seq;
  const request = memjs.Utils.makeRequestBuffer(0x0b, '', '', '', seq);
  return new Promise((resolve, reject) =>
    client.perform('', request, seq, (err: Error | null, response?: memjs.Response) =>
      err ? reject(err) : resolve(`${response!.header.status}:${response!.val.toString()}`),
    ),
  );
}

function memjsStats(client: MemjsClient): Promise<Record<string, string>> {
  return new Promise((resolve, reject) =>
    client.stats((err, _server, stats) => (err ? reject(err) : resolve(stats ?? {}))),
  );
}

const text = (b: Buffer | null): string | null => (b === null ? null : b.toString('latin1'));

/** Every memjs call, in order, with its outcome (an error as its message). */
async function memjsCalls(client: MemjsClient, p: string): Promise<[string, unknown][]> {
  const out: [string, unknown][] = [];
  const step = async (name: string, call: () => Promise<unknown>): Promise<void> => {
    try {
      out.push([name, await call()]);
    } catch (e) {
      out.push([name, { error: (e as Error).message }]);
    }
  };
  const allBytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const big = Buffer.alloc(300_000, 'session-data;');
  await step('set', () => client.set(`${p}:a`, 'alpha'));
  await step('get', async () => text((await client.get(`${p}:a`)).value));
  await step('get flags', async () => (await client.get(`${p}:a`)).flags?.readUInt32BE(0));
  await step('get miss', async () => (await client.get(`${p}:missing`)).value);
  await step('set bytes', () => client.set(`${p}:bin`, allBytes));
  await step('get bytes', async () => allBytes.equals((await client.get(`${p}:bin`)).value!));
  await step('set 300 kB', () => client.set(`${p}:big`, big));
  await step('get 300 kB', async () => big.equals((await client.get(`${p}:big`)).value!));
  await step('set key with spaces', () => client.set(`${p}:a key with spaces`, 'spaced'));
  await step('get key with spaces', async () =>
    text((await client.get(`${p}:a key with spaces`)).value),
  );
  await step('add existing', () => client.add(`${p}:a`, 'nope'));
  await step('add new', () => client.add(`${p}:b`, 'beta'));
  await step('get added', async () => text((await client.get(`${p}:b`)).value));
  await step('replace missing', () => client.replace(`${p}:missing`, 'nope'));
  await step('replace existing', () => client.replace(`${p}:b`, 'BETA'));
  await step('get replaced', async () => text((await client.get(`${p}:b`)).value));
  await step('append', () => client.append(`${p}:b`, '-tail'));
  // memjs 1.3.2's prepend sends opcode 0x0e, APPEND (a memjs bug): memcached appends.
  await step('prepend', () => client.prepend(`${p}:b`, '-more'));
  await step('get appended', async () => text((await client.get(`${p}:b`)).value));
  await step('append missing', () => client.append(`${p}:missing`, 'x'));
  await step('prepend missing', () => client.prepend(`${p}:missing`, 'x'));
  await step('delete', () => client.delete(`${p}:b`));
  await step('delete again', () => client.delete(`${p}:b`));
  await step('get deleted', async () => (await client.get(`${p}:b`)).value);
  // memjs always sends an expiration, so a missing counter is created with `initial`.
  await step('increment missing (initial 10)', () =>
    client.increment(`${p}:n`, 5, { initial: 10 }),
  );
  await step('increment 5', () => client.increment(`${p}:n`, 5));
  await step('decrement 3', () => client.decrement(`${p}:n`, 3, {}));
  await step('decrement below zero', () => client.decrement(`${p}:n`, 100, {}));
  await step('get counter', async () => text((await client.get(`${p}:n`)).value));
  await step('increment non-numeric', () => client.increment(`${p}:a`, 1));
  await step('touch', () => client.touch(`${p}:a`, 600));
  await step('touch missing', () => client.touch(`${p}:missing`, 600));
  await step('version', () => memjsVersion(client));
  await step('stats has version, pid, curr_connections', async () => {
    const s = await memjsStats(client);
    return ['version', 'pid', 'curr_connections'].map((k) => typeof s[k]);
  });
  await step('flush', async () => Object.values(await client.flush()));
  await step('get after flush', async () => (await client.get(`${p}:a`)).value);
  await step('get counter after flush', async () => (await client.get(`${p}:n`)).value);
  return out;
}

describe('binary clients: memjs (npm, binary protocol only)', function () {
  this.timeout(60_000);
  let c: Cluster;
  let lone: Memcached;
  let viaProxy: MemjsClient;
  let direct: MemjsClient;
  const quiet = { log: () => {} };

  before(async function () {
    [c, lone] = await Promise.all([startCluster({ nodes: 3, replicas: 2 }), Memcached.start()]);
    const options = { retries: 1, timeout: 2, logger: quiet };
    viaProxy = memjs.Client.create(`127.0.0.1:${c.port}`, options);
    direct = memjs.Client.create(`127.0.0.1:${lone.port}`, options);
  });

  after(async function () {
    viaProxy?.close();
    direct?.close();
    await Promise.all([c?.stop(), lone?.kill()]);
  });

  it('set/get/add/replace/delete/increment/decrement/append/prepend/touch/flush/stats/version, as memcached answers', async function () {
    const binaryBefore = await proxyStat(c.port, 'proxy_binary_connections');
    const results = await memjsCalls(viaProxy, 'memjs');
    const reference = await memjsCalls(direct, 'memjs');
    const expected: [string, unknown][] = [
      ['set', true],
      ['get', 'alpha'],
      ['get flags', 0],
      ['get miss', null],
      ['set bytes', true],
      ['get bytes', true],
      ['set 300 kB', true],
      ['get 300 kB', true],
      ['set key with spaces', true],
      ['get key with spaces', 'spaced'],
      ['add existing', false],
      ['add new', true],
      ['get added', 'beta'],
      ['replace missing', false],
      ['replace existing', true],
      ['get replaced', 'BETA'],
      ['append', true],
      ['prepend', true],
      ['get appended', 'BETA-tail-more'],
      // memcached's binary append/prepend of a missing key: NOT_STORED, an error to memjs.
      ['append missing', { error: 'MemJS APPEND: Item not stored' }],
      ['prepend missing', { error: 'MemJS PREPEND: Item not stored' }],
      ['delete', true],
      ['delete again', false],
      ['get deleted', null],
      ['increment missing (initial 10)', { success: true, value: 10 }],
      ['increment 5', { success: true, value: 15 }],
      ['decrement 3', { success: true, value: 12 }],
      ['decrement below zero', { success: true, value: 0 }],
      // memcached decrements in place: a shorter number is padded with spaces.
      ['get counter', '0 '],
      ['increment non-numeric', { error: 'MemJS INCREMENT: Incr/Decr on non-numeric value' }],
      ['touch', true],
      ['touch missing', false],
      ['version', `0:${PROTOCOL_VERSION}`],
      ['stats has version, pid, curr_connections', ['string', 'string', 'string']],
      ['flush', [true]],
      ['get after flush', null],
      ['get counter after flush', null],
    ];
    // The reference: a lone memcached answers exactly this (its version aside).
    expect(reference.filter(([n]) => n !== 'version')).to.deep.equal(
      expected.filter(([n]) => n !== 'version'),
    );
    expect(results).to.deep.equal(expected);
    expect(await proxyStat(c.port, 'proxy_binary_connections')).to.be.greaterThan(binaryBefore);
  });

  it('writes both replicas of each key, with touch’s TTL on both', async function () {
    expect(await viaProxy.set('memjs:r', 'replicated', { expires: 0 })).to.equal(true);
    expect(await viaProxy.touch('memjs:r', 900)).to.equal(true);
    const order = c.proxy.ring.order(Buffer.from('memjs:r'));
    for (const node of order.slice(0, 2)) {
      const item = await peek(c.nodes[node]!, 'memjs:r');
      expect(item, `node ${node}`).to.include({ value: 'replicated' });
      expect(item!.ttl).to.be.within(1, 900);
    }
    expect(await peek(c.nodes[order[2]!]!, 'memjs:r')).to.equal(null);
    await c.kill(order[0]!);
    expect(text((await viaProxy.get('memjs:r')).value)).to.equal('replicated');
  });
});

// ------------------------------------------------------------------ pylibmc

type PyResult = [string, unknown];

async function pylibmc(port: number, binary: boolean, prefix: string): Promise<PyResult[]> {
  const r = await run(PYTHON, [PYLIBMC_OPS, String(port), binary ? '1' : '0', prefix]);
  return lastJson(r, `pylibmc binary=${binary}`).results as PyResult[];
}

/** The script's results against memcached 1.6 with libmemcached 1.0.18 (Debian's). */
function pylibmcExpected(binary: boolean, p: string): PyResult[] {
  const k = (name: string): string => `${p}:${name}`;
  return [
    ['set', true],
    ['get', 'alpha'],
    ['get miss', null],
    ['set bytes', true],
    ['get bytes', true],
    ['set int', true],
    ['get int', 12345],
    ['set dict', true],
    ['get dict', { roles: ['a', 'b'], user: 7 }],
    ['set_multi', []],
    ['get_multi', { [k('a')]: 'alpha', [k('m1')]: 'one', [k('m2')]: 'two', [k('m3')]: 'three' }],
    ['add existing', false],
    ['add new', true],
    ['get added', 'beta'],
    // libmemcached's binary replace raises NotFound for a missing key; text returns False.
    ['replace missing', binary ? { error: 'NotFound' } : false],
    ['replace existing', true],
    ['get replaced', 'BETA'],
    ['append', true],
    ['prepend', true],
    ['get appended', 'head-BETA-tail'],
    ['append missing', false],
    ['prepend missing', false],
    ['delete', true],
    ['delete again', false],
    ['get deleted', null],
    ['set counter', true],
    ['incr', 11],
    ['incr 5', 16],
    ['decr 3', 13],
    ['decr below zero', 0],
    ['incr missing', { error: 'NotFound' }],
    ['decr missing', { error: 'NotFound' }],
    // Binary: status 0x06 (non-numeric), which libmemcached 1.0.18 does not name.
    ['incr non-numeric', { error: binary ? 'UnknownReadFailure' : 'ClientError' }],
    ['gets', 'alpha'],
    ['gets miss', [null, null]],
    ['gets + cas, then the stale token', ['alpha', true, false, 'alpha-2']],
    ['cas after another write', [false, 'changed']],
    ['cas missing', { error: 'NotFound' }],
    ['delete_multi', true],
    ['get_multi after delete_multi', { [k('m3')]: 'three' }],
    ['noreply: set, append, set, delete, then get both', [true, true, true, true, 'one+', null]],
    ...(binary
      ? ([
          ['set key with spaces', true],
          ['get key with spaces', 'spaced'],
        ] as PyResult[])
      : []),
  ];
}

describe('binary clients: pylibmc (libmemcached), binary=True and binary=False', function () {
  this.timeout(60_000);
  let c: Cluster;
  let lone: Memcached;

  before(async function () {
    const check = await run(PYTHON, ['-c', 'import pylibmc']);
    // Not a skip: CI installs python3-pylibmc (.ci/run).
    expect(
      check.code,
      `${PYTHON} -c 'import pylibmc' (apt-get install python3-pylibmc)\n${check.stderr}`,
    ).to.equal(0);
    [c, lone] = await Promise.all([startCluster({ nodes: 3, replicas: 2 }), Memcached.start()]);
  });

  after(async function () {
    await Promise.all([c?.stop(), lone?.kill()]);
  });

  for (const binary of [true, false]) {
    it(`binary=${binary ? 'True' : 'False'}: set/get/get_multi/add/replace/delete/incr/decr/append/prepend/gets+cas/noreply, as memcached answers`, async function () {
      const p = `py${binary ? 'b' : 't'}`;
      const binaryBefore = await proxyStat(c.port, 'proxy_binary_connections');
      const results = await pylibmc(c.port, binary, p);
      const binaryAfter = await proxyStat(c.port, 'proxy_binary_connections');
      // The reference run against a lone memcached gives the same answers.
      expect(await pylibmc(lone.port, binary, p)).to.deep.equal(pylibmcExpected(binary, p));
      expect(results).to.deep.equal(pylibmcExpected(binary, p));
      // binary=True speaks binary to msproxy (libmemcached reconnects after the non-numeric
      // incr's error, so on more than one connection); binary=False does not.
      if (binary) expect(binaryAfter - binaryBefore).to.be.at.least(1);
      else expect(binaryAfter - binaryBefore).to.equal(0);
      // What the script left is on both replicas of each key.
      for (const [key, value] of [
        [`${p}:a`, 'changed'],
        [`${p}:m3`, 'three'],
      ] as const) {
        const order = c.proxy.ring.order(Buffer.from(key));
        for (const node of order.slice(0, 2)) {
          expect(await peek(c.nodes[node]!, key), `${key} on node ${node}`).to.include({ value });
        }
      }
    });
  }
});

// ------------------------------------------------------------------ spymemcached

const SPY_OPS = fileURLToPath(new URL('../fixtures/SpyOps.java', import.meta.url));
const SPY_JAR = '/usr/share/java/spymemcached.jar';

/** SpyOps.java's lines for one run, with its key prefix replaced by `#` (so runs compare). */
async function spy(
  port: number,
  prefix: string,
  protocol: string,
  auth: string[] = [],
): Promise<string[]> {
  const r = await run(
    'java',
    ['-cp', SPY_JAR, SPY_OPS, String(port), prefix, protocol, ...auth],
    60_000,
  );
  const detail = `spymemcached ${protocol}: exit ${r.code} ${r.signal ?? ''}\n${r.stdout}\n${r.stderr}`;
  expect(r.code, detail).to.equal(0);
  return r.stdout
    .trim()
    .split('\n')
    .map((l) => l.split(prefix).join('#'));
}

describe('binary clients: spymemcached (Java), binary and text, and SASL PLAIN', function () {
  this.timeout(120_000);
  let c: Cluster;
  let authed: Cluster;
  let lone: Memcached;

  before(async function () {
    // Not a skip: CI installs a JDK and libspymemcached-java (.ci/run).
    expect(existsSync(SPY_JAR), `${SPY_JAR} (apt-get install libspymemcached-java)`).to.equal(true);
    const java = await run('java', ['-version']);
    expect(java.code, `java (apt-get install default-jdk-headless)\n${java.stderr}`).to.equal(0);
    const users = join(mkdtempSync(join(tmpdir(), 'msp-spy-')), 'users');
    writeFileSync(users, 'spy:pass word\n');
    [c, authed, lone] = await Promise.all([
      startCluster({ nodes: 3, replicas: 2 }),
      startCluster({ nodes: 2, replicas: 2, auth: { usersFile: users } }),
      Memcached.start(),
    ]);
  });

  after(async function () {
    await Promise.all([c?.stop(), authed?.stop(), lone?.kill()]);
  });

  for (const protocol of ['binary', 'text']) {
    it(`${protocol}: set/get/add/replace/append/prepend/gets+cas/incr/decr/getBulk/touch/gat/delete, as memcached answers`, async function () {
      const binaryBefore = await proxyStat(c.port, 'proxy_binary_connections');
      const [viaProxy, reference] = await Promise.all([
        spy(c.port, `spy${protocol[0]}`, protocol),
        spy(lone.port, `spy${protocol[0]}`, protocol),
      ]);
      expect(viaProxy).to.deep.equal(reference);
      expect(viaProxy).to.include.members(['cas=OK', 'casStale=EXISTS', 'getBig=300000']);
      expect(viaProxy).to.have.length(26);
      const binaryAfter = await proxyStat(c.port, 'proxy_binary_connections');
      if (protocol === 'binary') expect(binaryAfter - binaryBefore).to.be.at.least(1);
      else expect(binaryAfter - binaryBefore).to.equal(0);
    });
  }

  it('binary with SASL PLAIN: the same answers once authenticated, counted in auth_cmds', async function () {
    // The proxy runs in this process; its text stats would need text auth first.
    const authBefore = authed.proxy.stats.authCmds;
    const [viaProxy, reference] = await Promise.all([
      spy(authed.port, 'spya', 'binary', ['spy', 'pass word']),
      spy(lone.port, 'spya', 'binary'),
    ]);
    expect(viaProxy).to.deep.equal(reference);
    expect(authed.proxy.stats.authCmds).to.be.greaterThan(authBefore);
    expect(authed.proxy.stats.authErrors).to.equal(0);
  });
});
