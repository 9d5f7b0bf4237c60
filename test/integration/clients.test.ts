/**
 * Real memcached clients against msproxy: libmemcached's memccapable
 * conformance run, and the npm `memcached` package's whole API.
 */

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { expect } from 'chai';
import Memcached from 'memcached';
import { Memcached as MemcachedServer } from '../helpers/memcached.js';
import { type Cluster, startCluster } from '../helpers/proxy.js';
import { PROTOCOL_VERSION, VERSION } from '../../src/version.js';

const MEMCCAPABLE = '/usr/bin/memccapable';

interface CapableRun {
  code: number | null;
  signal: string | null;
  output: string;
  /** Test name -> "pass" | "fail" | "skip" ... */
  results: Map<string, string>;
}

function memccapable(port: number): Promise<CapableRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(MEMCCAPABLE, ['-h', '127.0.0.1', '-p', String(port), '-a'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      const results = new Map<string, string>();
      for (const m of output.matchAll(/^(.+?)\s+\[(\w+)\]\s*$/gm)) results.set(m[1]!.trim(), m[2]!);
      resolve({ code, signal, output, results });
    });
  });
}

describe('clients: memccapable -a (libmemcached-tools)', function () {
  let cluster: Cluster;
  let lone: MemcachedServer;

  before(async function () {
    if (!existsSync(MEMCCAPABLE)) {
      this.skip();
      return;
    }
    [cluster, lone] = await Promise.all([startCluster(), MemcachedServer.start()]);
  });

  after(async function () {
    await Promise.all([cluster?.stop(), lone?.kill()]);
  });

  it('passes through the proxy every ascii test it passes against memcached itself', async function () {
    // Against a plain memcached 1.6.18 every one of memccapable's 27 ascii tests passes, so the
    // proxy must pass them all. Should a test fail directly on some other memcached build, the
    // proxy is held to the same per-test result instead.
    const [base, viaProxy] = [await memccapable(lone.port), await memccapable(cluster.port)];
    expect(base.results.size, base.output).to.be.greaterThan(20);
    const failedDirectly = [...base.results].filter(([, r]) => r !== 'pass').map(([n]) => n);
    if (failedDirectly.length === 0) {
      expect(viaProxy.code, viaProxy.output).to.equal(0);
      expect(
        [...viaProxy.results].filter(([, r]) => r !== 'pass'),
        viaProxy.output,
      ).to.deep.equal([]);
      expect(viaProxy.output, viaProxy.output).to.match(/All tests passed/);
    }
    expect(Object.fromEntries(viaProxy.results), viaProxy.output).to.deep.equal(
      Object.fromEntries(base.results),
    );
  });
});

// ------------------------------------------------------------------ npm memcached

type Cb<T> = (err: unknown, value: T) => void;

function call<T>(fn: (cb: Cb<T>) => void): Promise<T> {
  return new Promise((resolve, reject) =>
    fn((err, value) => (err ? reject(err as Error) : resolve(value))),
  );
}

describe('clients: npm memcached', function () {
  let cluster: Cluster;
  let mc: Memcached;

  before(async function () {
    cluster = await startCluster();
    mc = new Memcached(`127.0.0.1:${cluster.port}`, { retries: 0, timeout: 2000, poolSize: 4 });
  });

  after(async function () {
    mc?.end();
    await cluster?.stop();
  });

  it('set, get, getMulti, add, replace, append, prepend, del, touch', async function () {
    expect(await call<boolean>((cb) => mc.set('npm:a', 'alpha', 0, cb))).to.equal(true);
    expect(await call<boolean>((cb) => mc.set('npm:json', { x: [1, 2] }, 0, cb))).to.equal(true);
    expect(await call<boolean>((cb) => mc.set('npm:num', 42, 0, cb))).to.equal(true);
    expect(
      await call<boolean>((cb) => mc.set('npm:buf', Buffer.from([0, 1, 2, 255]), 0, cb)),
    ).to.equal(true);
    expect(await call<unknown>((cb) => mc.get('npm:a', cb))).to.equal('alpha');
    expect(await call<unknown>((cb) => mc.get('npm:json', cb))).to.deep.equal({ x: [1, 2] });
    expect(await call<unknown>((cb) => mc.get('npm:num', cb))).to.equal(42);
    expect(
      Buffer.from((await call<Buffer>((cb) => mc.get('npm:buf', cb))) as Buffer),
    ).to.deep.equal(Buffer.from([0, 1, 2, 255]));
    expect(await call<unknown>((cb) => mc.get('npm:none', cb))).to.equal(undefined);

    const multi = await call<Record<string, unknown>>((cb) =>
      mc.getMulti(['npm:a', 'npm:none', 'npm:json', 'npm:num'], cb),
    );
    expect(multi).to.deep.equal({ 'npm:a': 'alpha', 'npm:json': { x: [1, 2] }, 'npm:num': 42 });

    expect(await call<boolean>((cb) => mc.add('npm:b', 'beta', 0, cb))).to.equal(true);
    const dup = await call<boolean>((cb) => mc.add('npm:b', 'again', 0, cb)).catch(
      (e: Error & { notStored?: boolean }) => e,
    );
    expect(dup).to.be.instanceOf(Error);
    expect((dup as { notStored?: boolean }).notStored).to.equal(true);

    expect(await call<boolean>((cb) => mc.replace('npm:b', 'BETA', 0, cb))).to.equal(true);
    const missing = await call<boolean>((cb) => mc.replace('npm:zz', 'x', 0, cb)).catch(
      (e: Error) => e,
    );
    expect(missing).to.be.instanceOf(Error);

    expect(await call<boolean>((cb) => mc.append('npm:b', '>', cb))).to.equal(true);
    expect(await call<boolean>((cb) => mc.prepend('npm:b', '<', cb))).to.equal(true);
    expect(await call<unknown>((cb) => mc.get('npm:b', cb))).to.equal('<BETA>');

    // touch's typed callback has no result argument; the client passes true on TOUCHED.
    expect(
      await call<unknown>((cb) => mc.touch('npm:b', 1000, cb as (err: unknown) => void)),
    ).to.equal(true);
    expect(await call<boolean>((cb) => mc.del('npm:b', cb))).to.equal(true);
    expect(await call<boolean>((cb) => mc.del('npm:b', cb))).to.equal(false);
    expect(await call<unknown>((cb) => mc.get('npm:b', cb))).to.equal(undefined);
  });

  it('incr and decr', async function () {
    await call<boolean>((cb) => mc.set('npm:n', '10', 0, cb));
    expect(await call<number | boolean>((cb) => mc.incr('npm:n', 5, cb))).to.equal(15);
    expect(await call<number | boolean>((cb) => mc.decr('npm:n', 20, cb))).to.equal(0);
    expect(await call<number | boolean>((cb) => mc.incr('npm:nothing', 1, cb))).to.equal(false);
  });

  it('gets and cas', async function () {
    await call<boolean>((cb) => mc.set('npm:c', 'one', 0, cb));
    const got = await call<{ [key: string]: unknown; cas: string }>((cb) => mc.gets('npm:c', cb));
    expect(got['npm:c']).to.equal('one');
    expect(got.cas).to.match(/^\d+$/);
    expect(await call<boolean>((cb) => mc.cas('npm:c', 'two', got.cas, 0, cb))).to.equal(true);
    // The same token again: the item changed since.
    expect(await call<boolean>((cb) => mc.cas('npm:c', 'three', got.cas, 0, cb))).to.equal(false);
    expect(await call<unknown>((cb) => mc.get('npm:c', cb))).to.equal('two');
  });

  it('version reports the 1.6 protocol version msproxy answers', async function () {
    const [v] = await call<{ version: string; major: string; minor: string; bugfix: string }[]>(
      (cb) => mc.version(cb),
    );
    // The client takes the last x.y.z of the line, so msproxy answers a plain one.
    expect(v, JSON.stringify(v)).to.include({ version: PROTOCOL_VERSION, major: '1', minor: '6' });
  });

  it('stats parses msproxy STAT lines', async function () {
    const [s] = await call<Record<string, unknown>[]>((cb) => mc.stats(cb));
    expect(s).to.include({
      server: `127.0.0.1:${cluster.port}`,
      proxy_nodes: 3,
      proxy_replicas: 2,
    });
    expect(s!['cmd_get']).to.be.a('number');
    expect(s!['version']).to.equal(PROTOCOL_VERSION);
    expect(s!['proxy_version']).to.equal(VERSION);
  });

  it('flush', async function () {
    await call<boolean>((cb) => mc.set('npm:f', 'f', 0, cb));
    const r = await call<boolean[]>((cb) => mc.flush(cb));
    expect(r).to.deep.equal([true]);
    expect(await call<unknown>((cb) => mc.get('npm:f', cb))).to.equal(undefined);
  });
});
