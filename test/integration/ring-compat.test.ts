/**
 * The ring places keys as twemproxy (nutcracker) does with `hash: md5` and
 * `distribution: ketama`: the same memcached nodes behind nutcracker and
 * behind our Ring must agree on every key's primary. Plus the ring's own
 * invariants for awkward keys.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Ring } from '../../src/routing/ring.js';
import { Memcached, freePort, sleep } from '../helpers/memcached.js';
import { MemcacheClient, keysOn } from '../helpers/proxy.js';

const NUTCRACKER = '/usr/sbin/nutcracker';

async function connectWithRetry(
  port: number,
  ms: number,
  log: () => string,
): Promise<MemcacheClient> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await MemcacheClient.connect(port);
    } catch (err) {
      if (Date.now() > deadline) {
        throw new Error(`nutcracker did not listen: ${(err as Error).message}\n${log()}`, {
          cause: err,
        });
      }
      await sleep(20);
    }
  }
}

describe('ring: placement compatible with twemproxy md5/ketama', function () {
  let nodes: Memcached[] = [];
  let child: ChildProcess | null = null;
  let dir = '';
  let port = 0;

  before(async function () {
    if (!existsSync(NUTCRACKER)) {
      this.skip();
      return;
    }
    nodes = await Promise.all([Memcached.start(), Memcached.start(), Memcached.start()]);
    dir = mkdtempSync(join(tmpdir(), 'msproxy-nc-'));
    port = await freePort();
    const statsPort = await freePort();
    const conf = join(dir, 'nutcracker.yml');
    writeFileSync(
      conf,
      [
        'pool:',
        `  listen: 127.0.0.1:${port}`,
        '  hash: md5',
        '  distribution: ketama',
        '  auto_eject_hosts: false',
        '  timeout: 2000',
        '  servers:',
        ...nodes.map((n) => `    - 127.0.0.1:${n.port}:1`),
        '',
      ].join('\n'),
    );
    const logfile = join(dir, 'nutcracker.log');
    child = spawn(
      NUTCRACKER,
      ['-c', conf, '-o', logfile, '-s', String(statsPort), '-a', '127.0.0.1'],
      {
        stdio: 'ignore',
      },
    );
    const log = (): string => (existsSync(logfile) ? readFileSync(logfile, 'utf8') : '(no log)');
    const c = await connectWithRetry(port, 5000, log);
    c.close();
  });

  after(async function () {
    if (child !== null && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      process.kill(child.pid!, 'SIGKILL');
      await exited;
    }
    await Promise.all(nodes.map((n) => n.kill()));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('names the same primary as nutcracker for 300 keys', async function () {
    const keys = Array.from({ length: 300 }, (_, i) => `nc:${i}:${randomBytes(6).toString('hex')}`);
    const c = await MemcacheClient.connect(port);
    try {
      const replies = await c.pipeline(
        keys.map((k) => [`set ${k} 0 0 ${k.length}`, k] as [string, string]),
      );
      expect(
        replies.every((r) => r === 'STORED\r\n'),
        replies.join(''),
      ).to.equal(true);
    } finally {
      c.close();
    }
    const held = await Promise.all(nodes.map((n) => keysOn(n, keys)));
    const ring = new Ring(nodes.map((n) => ({ label: `127.0.0.1:${n.port}`, weight: 1 })));
    const mismatches: string[] = [];
    for (const k of keys) {
      const where = held.map((m, i) => (m.has(k) ? i : -1)).filter((i) => i >= 0);
      expect(where, `key ${k} on exactly one node`).to.have.length(1);
      const ours = ring.order(Buffer.from(k))[0];
      if (ours !== where[0])
        mismatches.push(`${k}: nutcracker node ${where[0]}, ring node ${ours}`);
    }
    expect(mismatches, mismatches.slice(0, 10).join('\n')).to.deep.equal([]);
  });
});

describe('ring: awkward keys and determinism', function () {
  const labels = ['10.0.0.1:11211', '10.0.0.2:11212', '10.0.0.3:11213'].map((label) => ({
    label,
    weight: 1,
  }));

  it('routes __proto__, constructor, invalid UTF-8 and 250-byte keys stably without touching Object.prototype', function () {
    const protoBefore = Object.getOwnPropertyNames(Object.prototype).sort();
    const keys = [
      Buffer.from('__proto__'),
      Buffer.from('constructor'),
      Buffer.from('toString'),
      Buffer.from('hasOwnProperty'),
      Buffer.from([0xff, 0xfe]),
      Buffer.from([0xfe, 0xff]),
      Buffer.alloc(250, 0x61),
      Buffer.alloc(250, 0xff),
    ];
    const a = new Ring(labels);
    const b = new Ring(labels);
    for (const k of keys) {
      const first = Array.from(a.order(k));
      expect(first.slice().sort(), `order of ${k.toString('hex')} is a permutation`).to.deep.equal([
        0, 1, 2,
      ]);
      // Again, and from a second ring after another key.
      expect(Array.from(a.order(k)), k.toString('hex')).to.deep.equal(first);
      expect(Array.from(b.order(k)), k.toString('hex')).to.deep.equal(first);
      expect(Array.from(b.order(Buffer.from('other'))).length).to.equal(3);
      expect(Array.from(b.order(k)), k.toString('hex')).to.deep.equal(first);
      expect(a.primary(k)).to.equal(first[0]);
    }
    // The bytes are hashed, not a string decoding of them: 0xff 0xfe and its U+FFFD-replaced form differ.
    expect(Ring.hash(Buffer.from([0xff, 0xfe]))).to.not.equal(
      Ring.hash(Buffer.from(Buffer.from([0xff, 0xfe]).toString('utf8'))),
    );
    expect(Object.getOwnPropertyNames(Object.prototype).sort()).to.deep.equal(protoBefore);
    const plain: Record<string, unknown> = {};
    expect(Object.getPrototypeOf(plain)).to.equal(Object.prototype);
    expect(Object.keys(plain)).to.deep.equal([]);
    expect((plain as { polluted?: unknown }).polluted).to.equal(undefined);
  });

  it('a node label such as __proto__ or constructor builds a normal ring', function () {
    const ring = new Ring([
      { label: '__proto__', weight: 1 },
      { label: 'constructor', weight: 1 },
      { label: 'hasOwnProperty', weight: 1 },
    ]);
    const seen = new Set<number>();
    for (let i = 0; i < 300; i++) seen.add(ring.primary(Buffer.from(`k${i}`)));
    expect([...seen].sort()).to.deep.equal([0, 1, 2]);
    expect(Object.getPrototypeOf({})).to.equal(Object.prototype);
  });

  it('two rings from the same labels agree on 10k random keys', function () {
    const a = new Ring(labels);
    const b = new Ring(labels.map((l) => ({ ...l })));
    const counts = [0, 0, 0];
    for (let i = 0; i < 10000; i++) {
      const k = randomBytes(1 + (i % 64));
      const oa = Array.from(a.order(k));
      const ob = Array.from(b.order(k));
      if (oa.join() !== ob.join()) expect(ob, k.toString('hex')).to.deep.equal(oa);
      counts[oa[0]!]!++;
    }
    // ketama with equal weights: every node owns a fair share.
    for (const c of counts) expect(c).to.be.within(2000, 4700);
  });

  it('replicas(key, r) is the first r nodes of order(key), for any r', function () {
    const ring = new Ring(labels);
    for (let i = 0; i < 2000; i++) {
      const k = randomBytes(1 + (i % 40));
      const r = 1 + (i % 4); // 4 > node count: all of them
      const want = Array.from(ring.order(k)).slice(0, r);
      expect(Array.from(ring.replicas(k, r)), `${k.toString('hex')} r=${r}`).to.deep.equal(want);
      // Asked again with the same r: the same (shared) answer.
      expect(Array.from(ring.replicas(k, r))).to.deep.equal(want);
    }
  });
});
