/**
 * msproxy under hostile or careless clients: the connection limit
 * (limits.maxClients), the per-client pipeline limit (limits.maxInflight) with
 * a client that never reads, thousands of idle connections, a command that
 * stalls half-sent, oversized keys/values/lines compared byte for byte with a
 * lone memcached, and a seeded fuzz run of valid and corrupted command streams.
 */

import { execSync } from 'node:child_process';
import net from 'node:net';
import { expect } from 'chai';
import { expectedReplies, parseStream, pick, pool, prng, show } from '../helpers/differential.js';
import { EXPECT_QUIET } from '../../src/protocol/response-parser.js';
import { Memcached, sleep } from '../helpers/memcached.js';
import { until } from '../helpers/wait.js';
import {
  bytesReadFrom,
  type Cluster,
  EXPECT_LINE,
  EXPECT_VALUES,
  MemcacheClient,
  keysOn,
  type SideBySide,
  startCluster,
  startSideBySide,
  statsOf,
} from '../helpers/proxy.js';

// ------------------------------------------------------------------ helpers

/** Cas tokens differ by design: blank them in VALUE lines and meta c flags. */
function normCas(s: string): string {
  return s
    .replace(/^(VALUE \S+ \d+ \d+) \d+\r$/gm, '$1 <cas>\r')
    .replace(/^((?:VA \d+|HD|EN|NF|NS|EX)(?: \S+)*?) c\d+/gm, '$1 c<cas>');
}

async function stat(client: MemcacheClient, name: string): Promise<number> {
  const v = (await statsOf(client)).get(name);
  if (v === undefined) throw new Error(`no STAT ${name}`);
  return Number(v);
}

/** A raw socket, connected. */
function rawConnect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', noDelay: true });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

interface Exchange {
  bytes: Buffer;
  /** The server closed the connection (EOF, reset or error). */
  closed: boolean;
}

/**
 * Write `pieces` on a fresh connection (`gapMs`, default 30 ms, apart: a long
 * line then reaches the server as a stream), optionally half-close, and
 * collect the reply until the server closes the connection or `ms` pass.
 */
function exchange(
  port: number,
  pieces: Buffer[],
  options: { end: boolean; ms: number; gapMs?: number },
): Promise<Exchange> {
  const gap = options.gapMs ?? 30;
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let settled = false;
    const s = net.connect({ port, host: '127.0.0.1', noDelay: true });
    const timer = setTimeout(() => finish(false), options.ms);
    function finish(closed: boolean): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ bytes: Buffer.concat(chunks), closed });
    }
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('error', () => finish(true));
    s.on('close', () => finish(true));
    s.on('connect', () => {
      const next = (i: number): void => {
        if (settled) return;
        if (i === pieces.length) {
          if (options.end) s.end();
          return;
        }
        s.write(pieces[i]!, () => setTimeout(() => next(i + 1), i + 1 < pieces.length ? gap : 0));
      };
      next(0);
    });
  });
}

const latin1 = (s: string): Buffer => Buffer.from(s, 'latin1');

// --------------------------------------------------------------------------

describe('limits: maxClients', function () {
  const MAX = 20;
  let c: Cluster;
  const open: MemcacheClient[] = [];

  before(async function () {
    c = await startCluster({ limits: { maxClients: MAX } });
  });

  after(async function () {
    for (const cl of open) cl.close();
    await c?.stop();
  });

  /** Connect and send `version`: a refused connection is closed without an answer. */
  function refused(): Promise<{ closed: boolean; got: string }> {
    return new Promise((resolve) => {
      let got = '';
      const s = net.connect({ port: c.port, host: '127.0.0.1' });
      const timer = setTimeout(() => {
        s.destroy();
        resolve({ closed: false, got });
      }, 3000);
      s.on('connect', () => s.write('version\r\n'));
      s.on('data', (d: Buffer) => (got += d.toString('latin1')));
      s.on('error', () => {});
      s.on('close', () => {
        clearTimeout(timer);
        resolve({ closed: true, got });
      });
    });
  }

  it(`accepts ${MAX} clients, refuses more (counted in rejected_connections), and accepts again once some leave`, async function () {
    for (let i = 0; i < MAX; i++) open.push(await MemcacheClient.connect(c.port));
    for (const [i, cl] of open.entries()) {
      expect(await cl.command(`set mc:${i} 0 0 ${String(i).length}`, String(i))).to.equal(
        'STORED\r\n',
      );
    }
    expect(c.proxy.stats.currConnections).to.equal(MAX);
    const rejectedBefore = await stat(open[0]!, 'rejected_connections');

    const extra = await Promise.all(Array.from({ length: 5 }, () => refused()));
    for (const r of extra)
      expect(r, 'a connection over maxClients').to.deep.equal({ closed: true, got: '' });
    expect(await stat(open[0]!, 'rejected_connections')).to.equal(rejectedBefore + 5);
    expect(c.proxy.stats.rejectedConnections).to.equal(rejectedBefore + 5);
    expect(await stat(open[1]!, 'curr_connections')).to.equal(MAX);

    // The first MAX are unaffected.
    for (const [i, cl] of open.entries()) {
      expect(await cl.command(`get mc:${i}`)).to.equal(
        `VALUE mc:${i} 0 ${String(i).length}\r\n${i}\r\nEND\r\n`,
      );
    }

    // Five leave: five new clients are accepted, the sixth is refused again.
    for (const cl of open.splice(0, 5)) cl.close();
    await until(
      'the proxy sees 5 clients leave',
      3000,
      async () => c.proxy.stats.currConnections === MAX - 5,
    );
    for (let i = 0; i < 5; i++) {
      const cl = await MemcacheClient.connect(c.port);
      open.push(cl);
      expect(await cl.command(`get mc:7`)).to.equal('VALUE mc:7 0 1\r\n7\r\nEND\r\n');
    }
    expect(await refused()).to.deep.equal({ closed: true, got: '' });
    expect(await stat(open[0]!, 'rejected_connections')).to.equal(rejectedBefore + 6);
    expect(await stat(open[0]!, 'curr_connections')).to.equal(MAX);
  });
});

// --------------------------------------------------------------------------

describe('limits: a client that pipelines gets and never reads (maxInflight)', function () {
  const MAX_INFLIGHT = 64;
  const VALUE_BYTES = 500 * 1024;
  const REQUESTS = 20_000;
  /** Growth of the test process (which hosts the proxy) allowed; unbounded would be ~10 GB. */
  const MEMORY_BOUND = 300e6;
  /** Beyond this the run is stopped at once, to protect the machine. */
  const MEMORY_ABORT = 1.5e9;
  let c: Cluster;

  before(async function () {
    c = await startCluster({ limits: { maxInflight: MAX_INFLIGHT } });
  });

  after(async function () {
    await c?.stop();
  });

  it('msproxy stops reading from it: memory stays bounded, it and the others are answered correctly', async function () {
    this.timeout(40_000);
    const value = Buffer.alloc(VALUE_BYTES);
    for (let i = 0; i < value.length; i++) value[i] = 0x61 + (i % 26);
    const reply = Buffer.concat([
      latin1(`VALUE slow:big 0 ${VALUE_BYTES}\r\n`),
      value,
      latin1('\r\nEND\r\n'),
    ]);
    const setup = await MemcacheClient.connect(c.port);
    expect(await setup.command(`set slow:big 0 0 ${VALUE_BYTES}`, value)).to.equal('STORED\r\n');

    const s = c.proxy.stats;
    const before = { cmdGet: s.cmdGet };
    const problems: string[] = [];
    const base = process.memoryUsage().rss;
    let peak = 0;
    let aborted = false;

    const slow = net.connect({ port: c.port, host: '127.0.0.1', noDelay: true });
    slow.pause(); // never read
    slow.on('error', () => {});
    await new Promise((r) => slow.once('connect', r));
    let other: MemcacheClient | undefined;
    const monitor = setInterval(() => {
      const growth = process.memoryUsage().rss - base;
      peak = Math.max(peak, growth);
      if (growth > MEMORY_ABORT && !aborted) {
        aborted = true;
        slow.destroy();
      }
    }, 20);
    try {
      // Pipeline as many gets as the socket takes within 2 s.
      const batch = 'get slow:big\r\n'.repeat(1000);
      const deadline = Date.now() + 2000;
      let written = 0;
      while (written < REQUESTS && Date.now() < deadline && !slow.destroyed) {
        written += 1000;
        if (!slow.write(batch)) {
          await Promise.race([
            new Promise((r) => slow.once('drain', r)),
            sleep(Math.max(0, deadline - Date.now())),
          ]);
        }
      }

      // Meanwhile another client is answered normally, the big key included.
      const peer = await MemcacheClient.connect(c.port);
      other = peer;
      let otherGets = 0;
      for (let i = 0; i < 20; i++) {
        const got = [
          await peer.command(`set slow:o${i} 0 0 2`, `o${i % 10}`).catch((e: Error) => e.message),
          await peer.command(`get slow:o${i}`).catch((e: Error) => e.message),
          await peer.command('get slow:big').catch((e: Error) => e.message),
        ];
        otherGets += 2;
        const want = [
          'STORED\r\n',
          `VALUE slow:o${i} 0 2\r\no${i % 10}\r\nEND\r\n`,
          reply.toString('latin1'),
        ];
        for (let j = 0; j < 3; j++) {
          if (got[j] !== want[j]) {
            problems.push(`other client, round ${i}: got ${show(latin1(got[j]!), 120)}`);
          }
        }
        await sleep(25);
      }
      await sleep(500);

      const dispatched = s.cmdGet - before.cmdGet - otherGets;
      if (aborted) problems.push(`memory grew over ${MEMORY_ABORT / 1e6} MB: run stopped`);
      if (peak > MEMORY_BOUND) {
        problems.push(
          `memory grew by ${Math.round(peak / 1e6)} MB (bound ${MEMORY_BOUND / 1e6} MB)`,
        );
      }
      // maxInflight unanswered, plus what the socket buffers took before they filled up.
      if (dispatched > 4 * MAX_INFLIGHT) {
        problems.push(
          `msproxy dispatched ${dispatched} of the ${written} pipelined gets of a client that reads nothing (maxInflight ${MAX_INFLIGHT})`,
        );
      }
      // No count of backend timeouts: with a 250 ms request timeout, a loaded machine may time
      // out a request or two (and mark a node down) without anything wrong. What matters is
      // checked here: every reply to the other client above, and the slow client's replies below.

      // Read the slow client's first replies: each one the whole value, in order.
      if (!aborted) {
        const check = 200;
        const seen = await new Promise<string | undefined>((resolve) => {
          let off = 0; // bytes of reply stream checked
          const timer = setTimeout(
            () => finish(`only ${Math.floor(off / reply.length)} replies within 10 s`),
            10_000,
          );
          function finish(err?: string): void {
            clearTimeout(timer);
            slow.removeAllListeners('data');
            slow.pause();
            resolve(err);
          }
          slow.on('data', (d: Buffer) => {
            let at = 0;
            while (at < d.length) {
              const inReply = off % reply.length;
              const n = Math.min(d.length - at, reply.length - inReply);
              if (d.compare(reply, inReply, inReply + n, at, at + n) !== 0) {
                const i = Math.floor(off / reply.length);
                return finish(
                  `reply ${i} differs: ${show(d.subarray(at, at + 80))} at byte ${inReply}`,
                );
              }
              off += n;
              at += n;
              if (off >= check * reply.length) return finish();
            }
          });
          slow.resume();
        });
        if (seen !== undefined) problems.push(`slow client, once it reads: ${seen}`);
      }
      slow.destroy();
      expect(problems, problems.join('\n')).to.deep.equal([]);

      // The proxy is fine afterwards.
      await until('the slow client is gone', 5000, async () => s.currConnections === 2);
      await until(
        'no key is held',
        5000,
        async () => (await stat(peer, 'proxy_keys_ordered')) === 0,
      );
      expect(await peer.command('get slow:big')).to.equal(reply.toString('latin1'));
    } finally {
      clearInterval(monitor);
      slow.destroy();
      setup.close();
      other?.close();
    }
  });
});

// --------------------------------------------------------------------------

describe('limits: thousands of idle connections', function () {
  const IDLE = 2000;
  let c: Cluster;
  const idle: net.Socket[] = [];

  before(async function () {
    // This process holds both ends of every connection. Node raises its soft open-file limit
    // to the hard one at startup, so this reads the hard limit: .ci/run raises it to 8192.
    const limit = execSync('ulimit -n', { shell: '/bin/sh' }).toString().trim();
    if (limit !== 'unlimited' && Number(limit) < 4096) {
      console.warn(`limits: skipping ${IDLE} idle connections: open-file limit ${limit} < 4096`);
      this.skip();
    }
    c = await startCluster({ limits: { maxClients: IDLE + 100 } });
  });

  after(async function () {
    for (const s of idle) s.destroy();
    await c?.stop();
  });

  it(`${IDLE} idle clients cost nothing to a working one, and are counted out when they leave`, async function () {
    this.timeout(30_000);
    const worker = await MemcacheClient.connect(c.port);
    for (let i = 0; i < IDLE; i += 100) {
      idle.push(...(await Promise.all(Array.from({ length: 100 }, () => rawConnect(c.port)))));
    }
    await until(
      `the proxy accepts ${IDLE} idle clients`,
      5000,
      async () => (await stat(worker, 'curr_connections')) >= IDLE + 1,
    );
    const st = await statsOf(worker);
    expect(Number(st.get('curr_connections'))).to.be.at.least(IDLE + 1);
    expect(Number(st.get('rejected_connections'))).to.equal(0);

    const big = 'i'.repeat(100_000);
    expect(
      await worker.script(
        `set idle:a 3 0 2\r\nab\r\nset idle:big 0 0 ${big.length}\r\n${big}\r\nget idle:a idle:none\r\nincr idle:n 1\r\n`,
      ),
    ).to.equal('STORED\r\nSTORED\r\nVALUE idle:a 3 2\r\nab\r\nEND\r\nNOT_FOUND\r\n');
    expect(await worker.command('get idle:big')).to.equal(
      `VALUE idle:big 0 ${big.length}\r\n${big}\r\nEND\r\n`,
    );
    // A few of the idle ones wake up and are answered too.
    for (const s of [idle[0]!, idle[IDLE / 2]!, idle[IDLE - 1]!]) {
      const got = new Promise<string>((resolve) =>
        s.once('data', (d: Buffer) => resolve(d.toString('latin1'))),
      );
      s.write('get idle:a\r\n');
      expect(await Promise.race([got, sleep(3000).then(() => 'no reply within 3 s')])).to.equal(
        'VALUE idle:a 3 2\r\nab\r\nEND\r\n',
      );
    }

    for (const s of idle.splice(0)) s.destroy();
    await until(
      'curr_connections drops back to 1',
      5000,
      async () => (await stat(worker, 'curr_connections')) === 1,
    );
    expect(c.proxy.stats.currConnections).to.equal(1);
    expect(await worker.command('get idle:a')).to.equal('VALUE idle:a 3 2\r\nab\r\nEND\r\n');
    worker.close();
  });
});

// --------------------------------------------------------------------------

describe('limits: a command that stalls half-sent', function () {
  let c: Cluster;

  before(async function () {
    c = await startCluster();
  });

  after(async function () {
    await c?.stop();
  });

  it('blocks nobody else, and completes when the rest arrives', async function () {
    const staller = await MemcacheClient.connect(c.port);
    const lineStaller = await MemcacheClient.connect(c.port);
    const other = await MemcacheClient.connect(c.port);
    const data = 'd'.repeat(100);
    // The command line and 10 bytes of the 100, then nothing more for a while.
    staller.send(`set hs:k 0 0 100\r\n${data.slice(0, 10)}`);
    // A second client stalls inside a command line (no newline yet).
    lineStaller.send('get hs:k hs:');
    // Both stalls are in msproxy, not in a socket buffer, before the other client starts.
    const stalled = `set hs:k 0 0 100\r\n${data.slice(0, 10)}`.length + 'get hs:k hs:'.length;
    await until(
      'msproxy to read both stalled commands',
      2000,
      () => bytesReadFrom(c.proxy, staller, lineStaller) === stalled,
    );

    expect(await other.command('set hs:k 0 0 5', 'other')).to.equal('STORED\r\n');
    expect(await other.command('get hs:k')).to.equal('VALUE hs:k 0 5\r\nother\r\nEND\r\n');
    expect(
      await other.script(
        'set hs:x 1 0 1\r\nx\r\nadd hs:k 0 0 1\r\ny\r\nincr hs:n 1\r\nmg hs:k v\r\ndelete hs:x\r\nget hs:k hs:x\r\n',
      ),
    ).to.equal(
      'STORED\r\nNOT_STORED\r\nNOT_FOUND\r\nVA 5\r\nother\r\nDELETED\r\nVALUE hs:k 0 5\r\nother\r\nEND\r\n',
    );
    expect(c.proxy.stats.backendTimeouts).to.equal(0);

    // The first client finishes its value: STORED, and it is the value now.
    const stored = staller.expectReply(EXPECT_LINE);
    staller.send(data.slice(10) + '\r\n');
    expect((await stored).text).to.equal('STORED');
    const lineDone = lineStaller.expectReply(EXPECT_VALUES);
    lineStaller.send('x\r\n'); // completes "get hs:k hs:x"
    expect((await lineDone).values!.map((v) => v.data.toString('latin1'))).to.deep.equal([data]);
    expect(await other.command('get hs:k')).to.equal(`VALUE hs:k 0 100\r\n${data}\r\nEND\r\n`);
    for (const cl of [staller, lineStaller, other]) cl.close();
  });
});

// --------------------------------------------------------------------------

describe('limits: oversized keys, values and lines answer as memcached does', function () {
  const MAX_MULTIGET = 4096;
  let x: SideBySide;
  let c: Cluster;
  let lone: Memcached;
  let p: MemcacheClient;
  let d: MemcacheClient;

  before(async function () {
    x = await startSideBySide({ limits: { maxMultigetLine: MAX_MULTIGET } });
    ({ c, lone, p, d } = x);
  });

  after(async function () {
    await x?.stop();
  });

  /** Run the same bytes against the lone memcached and the proxy. */
  const both = (script: string): Promise<[string, string]> => x.both(script);

  it('a 251-byte key is refused by every command, a 250-byte one works', async function () {
    const k251 = 'L'.repeat(251);
    const k250 = 'l'.repeat(250);
    // memcached 1.6.18 drops the replies it has not written yet when it fails a get with a long
    // key (see proxy.test.ts), so such a get opens its own batch.
    for (const script of [
      `get ${k251}\r\n`,
      `gets ${k250} ${k251}\r\n`,
      `set ${k251} 0 0 1\r\nx\r\nadd ${k251} 0 0 1\r\nx\r\nappend ${k251} 0 0 1\r\nx\r\n` +
        `delete ${k251}\r\nincr ${k251} 1\r\ndecr ${k251} 1\r\ntouch ${k251} 10\r\n`,
      `mg ${k251} v\r\nms ${k251} 1\r\nx\r\nmd ${k251} q\r\nma ${k251} N0\r\nmn\r\n`,
      `set ${k250} 5 0 3\r\nabc\r\nget ${k250}\r\nmg ${k250} v f k\r\nincr ${k250} 1\r\ndelete ${k250}\r\nget ${k250}\r\n`,
    ]) {
      const [a, b] = await both(script);
      expect(b, show(latin1(script), 100)).to.equal(a);
    }
  });

  it('keys of 187 to 250 bytes with a control byte answer as memcached and live on both replicas', async function () {
    // msproxy's own meta commands (read fallback, copy to the replicas, unlink) send such a key
    // base64-encoded (b flag): from 187 bytes on that is over memcached's 250-byte limit.
    const big = 'y'.repeat(2_000_000);
    for (const n of [186, 187, 250]) {
      const k = 'c'.repeat(n - 1) + '\x01';
      const [a, b] = await both(
        `get ${k}\r\nadd ${k} 0 0 1\r\n5\r\nincr ${k} 2\r\nappend ${k} 0 0 1\r\nx\r\nget ${k}\r\n`,
      );
      expect(b.replaceAll(k, '<key>'), `key of ${n} bytes`).to.equal(a.replaceAll(k, '<key>'));
      const copies = await Promise.all(c.nodes.map((node) => keysOn(node, [k])));
      expect(
        copies.map((m) => m.get(k) ?? '-').sort(),
        `copies of the ${n}-byte key on the 3 nodes`,
      ).to.deep.equal(['-', '7x', '7x']);
      // A set too large for the cache drops the old item, as on memcached.
      const [a2, b2] = await both(`set ${k} 0 0 ${big.length}\r\n${big}\r\nget ${k}\r\n`);
      expect(b2.replaceAll(k, '<key>'), `key of ${n} bytes`).to.equal(a2.replaceAll(k, '<key>'));
    }
  });

  it('a 2,000,000-byte set, ms, add or append gets SERVER_ERROR object too large and the connection goes on', async function () {
    const n = 2_000_000;
    const big = 'B'.repeat(n);
    const [a, b] = await both(
      `set tl:k 0 0 1\r\n1\r\nset tl:k 0 0 ${n}\r\n${big}\r\nget tl:k\r\n` +
        `set tl:a 0 0 1\r\n1\r\nadd tl:b 0 0 ${n}\r\n${big}\r\nappend tl:a 0 0 ${n}\r\n${big}\r\n` +
        `ms tl:m ${n} T0\r\n${big}\r\nset tl:q 0 0 ${n} noreply\r\n${big}\r\nget tl:a tl:b tl:m tl:q\r\nversion\r\n`,
    );
    expect(b).to.equal(a);
    expect(a).to.match(/^STORED\r\nSERVER_ERROR object too large for cache\r\nEND\r\n/);
  });

  it('values at the size limit: the last size accepted and the first refused are those of memcached', async function () {
    // memcached -I 1m (default) counts key, flags and the item header: find its limit by bisection.
    for (const [key, flags] of [
      ['sz:k', 0],
      ['sz:f', 7],
      ['s'.repeat(250), 0],
    ] as [string, number][]) {
      let lo = 1_040_000;
      let hi = 1_048_576;
      while (lo < hi) {
        const mid = Math.ceil((lo + hi) / 2);
        if ((await d.command(`set ${key} ${flags} 0 ${mid}`, 'v'.repeat(mid))) === 'STORED\r\n')
          lo = mid;
        else hi = mid - 1;
      }
      for (const n of [lo, lo + 1]) {
        const script = `set ${key} ${flags} 0 ${n}\r\n${'v'.repeat(n)}\r\nms ${key} ${n} F${flags}\r\n${'w'.repeat(n)}\r\nmg ${key} s f\r\n`;
        const [a, b] = await both(script);
        expect(b, `key of ${key.length} bytes, flags ${flags}, value of ${n} bytes`).to.equal(a);
      }
    }
  });

  it('a non-get line of 3000 bytes without a newline: both close the connection, with the same bytes', async function () {
    // Two writes, so memcached sees more than 2048 bytes without a newline, as msproxy does.
    const line = latin1('bogus ' + 'a'.repeat(2994));
    const pieces = [line.subarray(0, 2049), line.subarray(2049)];
    const [a, b] = await Promise.all([
      exchange(lone.port, pieces, { end: false, ms: 3000 }),
      exchange(c.port, pieces, { end: false, ms: 3000 }),
    ]);
    expect(a.closed, 'memcached closes').to.equal(true);
    expect(b.closed, 'msproxy closes').to.equal(true);
    expect(show(b.bytes), 'msproxy bytes').to.equal(show(a.bytes));
  });

  it('a 3000-byte set line without a newline closes both; the proxy still serves others', async function () {
    const line = latin1(`set ${'k'.repeat(2990)} 0 0 1`);
    const pieces = [line.subarray(0, 2049), line.subarray(2049)];
    const [a, b] = await Promise.all([
      exchange(lone.port, pieces, { end: false, ms: 3000 }),
      exchange(c.port, pieces, { end: false, ms: 3000 }),
    ]);
    expect([a.closed, b.closed]).to.deep.equal([true, true]);
    expect(await p.command('version')).to.match(/^VERSION /);
  });

  it(`get lines over 2048 bytes work up to maxMultigetLine (${MAX_MULTIGET}); a longer one closes only its connection`, async function () {
    await both('set ml:k0 0 0 2\r\nk0\r\nset ml:k299 0 0 4\r\nk299\r\n');
    const keys = Array.from({ length: 300 }, (_, i) => `ml:k${i}`).join(' ');
    expect(keys.length).to.be.within(2100, MAX_MULTIGET - 10);
    const [a, b] = await both(`get ${keys}\r\ngets ${keys}\r\n`);
    expect(normCas(b)).to.equal(normCas(a));
    expect(a).to.match(/^VALUE ml:k0 0 2\r\nk0\r\nVALUE ml:k299 0 4\r\nk299\r\nEND\r\n/);

    const long = latin1(
      `get ${Array.from({ length: 600 }, (_, i) => `ml:k${i}`).join(' ')}\r\nversion\r\n`,
    );
    const ex = await exchange(c.port, [long], { end: false, ms: 3000 });
    expect(ex.closed, 'a get line over maxMultigetLine closes the connection').to.equal(true);
    expect(ex.bytes.toString('latin1')).to.not.contain('VALUE');
    expect(await p.command('get ml:k0')).to.equal('VALUE ml:k0 0 2\r\nk0\r\nEND\r\n');
  });
});

// --------------------------------------------------------------------------
// Fuzz: random command streams, valid and corrupted.

/** A key of 250 bytes with a control byte: memcached takes it, its base64 form is too long. */
const LONG_CONTROL_KEY = 'fz:' + 'p'.repeat(245) + '\x01z';
const POOL = ['fz:a', 'fz:b', 'fz:c', 'fz:d', 'fz:e', 'fz:\x7f', LONG_CONTROL_KEY];
const MODES = ['MS', 'ME', 'MA', 'MP', 'MR'];
const EXPTIMES = ['0', '0', '1000', '-1', '2592001'];

interface Gen {
  rnd: () => number;
  /** A key for the next command. */
  key: () => string;
  /** Only flags whose output is the same through msproxy as on one memcached. */
  comparable: boolean;
}

interface Cmd {
  bytes: Buffer;
  /** noreply or q: the reply may be absent. */
  quiet: boolean;
}

function randInt(rnd: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rnd() * (hi - lo + 1));
}

function randValue(rnd: () => number, comparable: boolean): Buffer {
  const r = rnd();
  if (r < 0.35) return latin1(String(randInt(rnd, 0, 1_000_000)));
  // memcached 1.6.18 itself answers incr/decr/ma on a stored number of 2^63 or more with
  // "non-numeric" now and then under load (its check for a '-' sign looks past the item's
  // bytes), also without msproxy: such values are not compared.
  if (r < 0.4) return latin1(comparable ? '4294967296' : '18446744073709551615');
  if (r < 0.45) return Buffer.alloc(0);
  const n = r < 0.95 ? randInt(rnd, 1, 40) : randInt(rnd, 1000, 5000);
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++)
    out[i] = rnd() < 0.7 ? randInt(rnd, 0x61, 0x7a) : randInt(rnd, 0, 255);
  // memcached 1.6.18 runs strtoull over an item's bytes in place: for a value that is all
  // whitespace (\t \n \v \f \r space) incr/decr/ma read on past the item into whatever memory
  // follows and answer a random number. That is memcached's bug, not one to compare.
  if (out.every((b) => b === 0x20 || (b >= 0x09 && b <= 0x0d))) out[n - 1] = 0x78;
  return out;
}

function metaFlags(
  g: Gen,
  options: readonly string[],
  count: number,
): { text: string; quiet: boolean } {
  const chosen = new Set<string>();
  for (let i = 0; i < count; i++) chosen.add(pick(g.rnd, options));
  const quiet = chosen.has('q');
  const parts = [...chosen].map((f) => (f === 'O' ? `O${randInt(g.rnd, 0, 99999)}` : f));
  return { text: parts.length > 0 ? ' ' + parts.join(' ') : '', quiet };
}

function genCommand(g: Gen): Cmd {
  const { rnd } = g;
  const noreply = rnd() < 0.12;
  const nr = noreply ? ' noreply' : '';
  const line = (s: string, quiet = false, data?: Buffer): Cmd => ({
    bytes:
      data === undefined
        ? latin1(s + '\r\n')
        : Buffer.concat([latin1(s + '\r\n'), data, latin1('\r\n')]),
    quiet,
  });
  const k = g.key();
  switch (
    pick(rnd, [
      'get',
      'gets',
      'gat',
      'store',
      'store',
      'cas',
      'delete',
      'incr',
      'touch',
      'mg',
      'mg',
      'ms',
      'ms',
      'md',
      'ma',
      'mn',
    ])
  ) {
    case 'get':
    case 'gets': {
      const keys = Array.from({ length: randInt(rnd, 1, 3) }, () => g.key());
      return line(`${rnd() < 0.5 ? 'get' : 'gets'} ${keys.join(' ')}`);
    }
    case 'gat':
      return line(`${rnd() < 0.5 ? 'gat' : 'gats'} ${pick(rnd, EXPTIMES)} ${k}`);
    case 'store': {
      const v = randValue(rnd, g.comparable);
      const cmd = pick(rnd, ['set', 'set', 'add', 'replace', 'append', 'prepend']);
      return line(
        `${cmd} ${k} ${randInt(rnd, 0, 2 ** 32 - 1)} ${pick(rnd, EXPTIMES)} ${v.length}${nr}`,
        noreply,
        v,
      );
    }
    case 'cas': {
      // A token no item has, through msproxy (wrong node byte) and on memcached (never issued).
      const token = (BigInt(randInt(rnd, 0x40, 0xff)) << 56n) | BigInt(randInt(rnd, 0, 2 ** 30));
      const v = randValue(rnd, g.comparable);
      return line(`cas ${k} 0 0 ${v.length} ${token}${nr}`, noreply, v);
    }
    case 'delete':
      return line(`delete ${k}${nr}`, noreply);
    case 'incr': {
      const delta =
        rnd() < 0.8 || g.comparable ? String(randInt(rnd, 0, 1000)) : '18446744073709551615';
      return line(`${rnd() < 0.5 ? 'incr' : 'decr'} ${k} ${delta}${nr}`, noreply);
    }
    case 'touch':
      return line(`touch ${k} ${pick(rnd, EXPTIMES)}${nr}`, noreply);
    case 'mg': {
      const opts = g.comparable
        ? ['v', 'f', 'k', 's', 'c', 'O', 'q']
        : ['v', 'f', 'k', 's', 'c', 'O', 'q', 't'];
      const f = metaFlags(g, opts, randInt(rnd, 0, 4));
      return line(`mg ${k}${f.text}`, f.quiet);
    }
    case 'ms': {
      const v = randValue(rnd, g.comparable);
      const f = metaFlags(g, ['F', 'T', 'M', 'q', 'O', 'k', 'c'], randInt(rnd, 0, 4));
      const text = f.text
        .replace(/(^| )F(?= |$)/, `$1F${randInt(rnd, 0, 2 ** 32 - 1)}`)
        .replace(/(^| )T(?= |$)/, `$1T${pick(rnd, EXPTIMES)}`)
        .replace(/(^| )M(?= |$)/, `$1${pick(rnd, MODES)}`);
      return line(`ms ${k} ${v.length}${text}`, f.quiet, v);
    }
    case 'md': {
      const f = metaFlags(g, ['q', 'O', 'k'], randInt(rnd, 0, 2));
      return line(`md ${k}${f.text}`, f.quiet);
    }
    case 'ma': {
      const opts = g.comparable
        ? ['N', 'J', 'D', 'M', 'v', 'q', 'O', 'k']
        : ['N', 'J', 'D', 'M', 'v', 'q', 'O', 'k', 't'];
      const f = metaFlags(g, opts, randInt(rnd, 0, 4));
      const text = f.text
        .replace(/(^| )N(?= |$)/, `$1N${pick(rnd, ['0', '1000'])}`)
        .replace(/(^| )J(?= |$)/, `$1J${randInt(rnd, 0, 100)}`)
        .replace(/(^| )D(?= |$)/, `$1D${randInt(rnd, 0, 100)}`)
        .replace(/(^| )M(?= |$)/, `$1${pick(rnd, ['MI', 'MD', 'M+', 'M-'])}`);
      return line(`ma ${k}${text}`, f.quiet);
    }
    default:
      return line('mn');
  }
}

const INTERESTING = [...' \r\n\0\t019-+qvkbOTNMx'].map((ch) => ch.charCodeAt(0));

/** One random corruption of a stream. */
function corrupt(rnd: () => number, b: Buffer): Buffer {
  const pos = randInt(rnd, 0, b.length);
  switch (randInt(rnd, 0, 6)) {
    case 0: {
      // Random bytes inserted.
      const n = randInt(rnd, 1, 8);
      const ins = Buffer.from(
        Array.from({ length: n }, () =>
          rnd() < 0.5 ? randInt(rnd, 0, 255) : pick(rnd, INTERESTING),
        ),
      );
      return Buffer.concat([b.subarray(0, pos), ins, b.subarray(pos)]);
    }
    case 1:
      // Truncated.
      return b.subarray(0, pos);
    case 2: {
      // A byte flipped.
      const out = Buffer.from(b);
      if (out.length > 0) out[Math.min(pos, out.length - 1)]! ^= 1 << randInt(rnd, 0, 7);
      return out;
    }
    case 3: {
      // A number replaced by a bad one.
      const text = b.toString('latin1');
      const nums = [...text.matchAll(/(?<= )\d+(?=[ \r])/g)];
      if (nums.length === 0) return Buffer.concat([b, latin1('bogus\r\n')]);
      const m = pick(rnd, nums);
      const bad = pick(rnd, [
        'abc',
        '-1',
        '4294967296',
        '18446744073709551616',
        '1x',
        '99999999999',
        '',
        '0x10',
        ' ',
      ]);
      return latin1(text.slice(0, m.index) + bad + text.slice(m.index! + m[0].length));
    }
    case 4: {
      // A data block whose declared length is wrong.
      const text = b.toString('latin1');
      const heads = [
        ...text.matchAll(
          /^(?:set|add|replace|append|prepend|cas) \S+ \d+ \S+ (\d+)|^ms \S+ (\d+)/gm,
        ),
      ];
      if (heads.length === 0) return Buffer.concat([b, latin1('set fz:a 0 0 3\r\nabcdef\r\n')]);
      const m = pick(rnd, heads);
      const numText = m[1] ?? m[2]!;
      const at = m.index! + m[0].length - numText.length;
      const n = Math.max(0, Number(numText) + pick(rnd, [-3, -1, 1, 2, 7, 5_000_000]));
      return latin1(text.slice(0, at) + n + text.slice(at + numText.length));
    }
    case 5:
      // A garbage line.
      return Buffer.concat([
        b.subarray(0, pos),
        Buffer.from(Array.from({ length: randInt(rnd, 1, 30) }, () => randInt(rnd, 0, 255))),
        latin1('\r\n'),
        b.subarray(pos),
      ]);
    default:
      // An oversized key.
      return Buffer.concat([
        b,
        latin1(`${pick(rnd, ['get', 'mg', 'delete'])} ${'z'.repeat(randInt(rnd, 251, 300))}\r\n`),
      ]);
  }
}

interface Stream {
  name: string;
  input: Buffer;
  kind: 'compare' | 'valid' | 'corrupt';
  /** Commands, mn included, for valid streams; -1 when some may have no reply. */
  replies: number;
  /** The commands (without the final mn), for the memcached reference of a compare stream. */
  cmds: Buffer[];
  /** Where the stream is cut into separate writes. */
  cuts: number[];
}

function genStreams(count: number, seed: number): Stream[] {
  const rnd = prng(seed);
  const out: Stream[] = [];
  for (let i = 0; i < count; i++) {
    const r = rnd();
    const kind: Stream['kind'] = r < 0.35 ? 'compare' : r < 0.6 ? 'valid' : 'corrupt';
    const short = `fzc:${seed.toString(16)}:${i}`;
    const own = rnd() < 0.8 ? short : (short + 'q'.repeat(250)).slice(0, 248) + '\x02z';
    const g: Gen = {
      rnd,
      key: kind === 'compare' ? () => own : () => pick(rnd, POOL),
      comparable: kind === 'compare',
    };
    const cmds = Array.from({ length: randInt(rnd, 1, 12) }, () => genCommand(g));
    let input: Buffer = Buffer.concat(cmds.map((cm) => cm.bytes));
    if (kind === 'corrupt') {
      input = corrupt(rnd, input);
      if (rnd() < 0.3) input = corrupt(rnd, input);
    }
    input = Buffer.concat([input, latin1('mn\r\n')]);
    const quiet = cmds.some((cm) => cm.quiet);
    out.push({
      name: `fuzz #${i} (${kind}, seed ${seed})`,
      input,
      kind,
      replies: kind === 'corrupt' || quiet ? -1 : cmds.length + 1,
      cmds: cmds.map((cm) => cm.bytes),
      cuts: Array.from({ length: randInt(rnd, 0, 3) }, () =>
        randInt(rnd, 1, input.length - 1),
      ).sort((a, b) => a - b),
    });
  }
  return out;
}

const REPLY_LINE =
  /^(?:END|STORED|NOT_STORED|EXISTS|NOT_FOUND|DELETED|TOUCHED|OK|ERROR|RESET|MN|\d+|(?:CLIENT_ERROR|SERVER_ERROR|VERSION) [\s\S]*|(?:HD|EN|NF|NS|EX)(?: [^ ]+)*|ME [^ ]+[\s\S]*)$/;

/** Walk a reply stream: the number of replies, or why it is not a sequence of memcached replies. */
function walkReplies(buf: Buffer): {
  replies: number;
  lastLine: string;
  mns: number;
  error?: string;
} {
  let pos = 0;
  let replies = 0;
  let mns = 0;
  let lastLine = '';
  const block = (n: number, what: string): string | undefined => {
    if (pos + n + 2 > buf.length) return `${what}: data block of ${n} bytes cut short`;
    if (buf[pos + n] !== 0x0d || buf[pos + n + 1] !== 0x0a)
      return `${what}: data block not ended by \\r\\n`;
    pos += n + 2;
    return undefined;
  };
  while (pos < buf.length) {
    const nl = buf.indexOf('\r\n', pos, 'latin1');
    if (nl < 0)
      return {
        replies,
        lastLine,
        mns,
        error: `unterminated line at byte ${pos}: ${show(buf.subarray(pos), 80)}`,
      };
    const line = buf.toString('latin1', pos, nl);
    lastLine = line;
    pos = nl + 2;
    let m: RegExpExecArray | null;
    if ((m = /^VALUE [^ ]+ \d+ (\d+)(?: \d+)?$/.exec(line))) {
      const err = block(Number(m[1]), line);
      if (err !== undefined) return { replies, lastLine, mns, error: err };
    } else if ((m = /^VA (\d+)(?: [^ ]+)*$/.exec(line))) {
      const err = block(Number(m[1]), line);
      if (err !== undefined) return { replies, lastLine, mns, error: err };
      replies++;
    } else if (/^STAT [^ ]+ [\s\S]*$/.test(line)) {
      // part of a stats reply, ended by END
    } else if (REPLY_LINE.test(line)) {
      replies++;
      if (line === 'MN') mns++;
    } else {
      return { replies, lastLine, mns, error: `not a reply line: ${show(latin1(line), 100)}` };
    }
  }
  return { replies, lastLine, mns };
}

/**
 * memcached's answer to `cmds` sent one at a time (each followed by mn, whose
 * MN is then cut off) on one connection. The reference for a compare stream:
 * memcached 1.6.18 itself answers some pipelines differently from the same
 * commands one by one (incr/decr/ma rewrite a number in place, padded with
 * spaces, only when no earlier pipelined reply still holds the item), and
 * msproxy, which runs a conditional command only once the key's earlier ones
 * are answered, always sees the one-by-one case.
 */
async function oneByOne(port: number, cmds: Buffer[]): Promise<Buffer> {
  const sock = await rawConnect(port);
  let buf = Buffer.alloc(0);
  let wake: (() => void) | null = null;
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    wake?.();
  });
  sock.on('error', () => wake?.());
  const out: Buffer[] = [];
  try {
    for (const cmd of cmds) {
      buf = Buffer.alloc(0);
      const want = cmd.equals(latin1('mn\r\n')) ? 2 : 1;
      sock.write(Buffer.concat([cmd, latin1('mn\r\n')]));
      const deadline = Date.now() + 3000;
      for (;;) {
        const w = walkReplies(buf);
        if (w.error === undefined && w.mns === want && w.lastLine === 'MN') break;
        if (Date.now() > deadline || sock.destroyed) {
          throw new Error(`memcached: no complete reply to ${show(cmd)}: ${show(buf)}`);
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 50);
        });
        wake = null;
      }
      out.push(buf.subarray(0, buf.length - 4));
    }
    return Buffer.concat([...out, latin1('MN\r\n')]);
  } finally {
    sock.destroy();
  }
}

/** Replies the project's parser says the stream owes: [at least, at most]. */
function replyBounds(input: Buffer): [number, number] | undefined {
  const exp = expectedReplies(parseStream(input).events);
  let min = 0;
  let optional = 0;
  for (const e of exp) {
    if (e.kind === 'error') min++;
    else if (e.kind === 'reply') {
      if (e.req.cmd === 'admin') return undefined;
      if (e.expect === EXPECT_QUIET) optional++;
      else min++;
    } else optional++; // msproxy may say why it closes (CLIENT_ERROR line too long)
  }
  return [min, min + optional];
}

describe('fuzz: random valid and corrupted command streams through msproxy', function () {
  const STREAMS = process.env.FZ_N
    ? Array.from({ length: 10 }, (_, i) =>
        genStreams(Number(process.env.FZ_N), Number(process.env.FZ_SEED) + i),
      ).flat()
    : genStreams(300, 0x11a175);
  let c: Cluster;
  let lone: Memcached;

  before(async function () {
    [c, lone] = await Promise.all([
      startCluster({ limits: { maxInflight: 16 } }),
      Memcached.start(),
    ]);
  });

  after(async function () {
    await Promise.all([c?.stop(), lone?.kill()]);
  });

  it(`${STREAMS.length} streams (${STREAMS.filter((s) => s.kind === 'compare').length} compared with memcached, ${STREAMS.filter((s) => s.kind === 'corrupt').length} corrupted): well-formed replies, one per command, no crash`, async function () {
    this.timeout(30_000);
    const failures: string[] = [];
    const run = async (s: Stream): Promise<void> => {
      // Half-close after the stream: msproxy answers what it parsed, then closes.
      const pieces = [0, ...s.cuts, s.input.length]
        .slice(1)
        .map((end, j, ends) => s.input.subarray(j === 0 ? 0 : ends[j - 1], end));
      const ex = await exchange(c.port, pieces, { end: true, ms: 5000, gapMs: 1 });
      const why: string[] = [];
      if (!ex.closed) why.push('msproxy did not close the half-closed connection within 5 s');
      const walk = walkReplies(ex.bytes);
      if (walk.error !== undefined) why.push(walk.error);
      // Every node is up and answers: msproxy has no reason for an error of its own.
      const own = /SERVER_ERROR (?:no replica available|backend failed[^\r]*)/.exec(
        ex.bytes.toString('latin1'),
      );
      if (own !== null) why.push(`msproxy answered ${JSON.stringify(own[0])}`);
      if (s.replies >= 0) {
        if (walk.replies !== s.replies)
          why.push(`${walk.replies} replies to ${s.replies} commands`);
        if (walk.lastLine !== 'MN') why.push(`last reply ${JSON.stringify(walk.lastLine)}, not MN`);
      } else if (walk.error === undefined) {
        const bounds = replyBounds(s.input);
        if (bounds !== undefined && (walk.replies < bounds[0] || walk.replies > bounds[1])) {
          why.push(`${walk.replies} replies, the parser's model owes ${bounds[0]}..${bounds[1]}`);
        }
      }
      if (s.kind === 'compare') {
        const mc = await oneByOne(lone.port, s.cmds);
        const a = normCas(mc.toString('latin1'));
        const b = normCas(ex.bytes.toString('latin1'));
        if (a !== b) why.push(`memcached answers ${show(latin1(a))}`);
      }
      if (why.length > 0) {
        failures.push(
          `${s.name}: ${why.join('; ')}\n  input: ${show(s.input)}\n  msproxy: ${show(ex.bytes)}`,
        );
      }
    };
    for (let i = 0; i < STREAMS.length; i += 50) {
      await pool(STREAMS.slice(i, i + 50), 10, run);
      // Still alive and answering on a fresh connection.
      const probe = await MemcacheClient.connect(c.port);
      expect(await probe.command('version'), `after stream ${i + 49}`).to.match(
        /^VERSION 1\.6\.\d+\r\n$/,
      );
      probe.close();
    }
    expect(failures, failures.slice(0, 5).join('\n')).to.deep.equal([]);

    const probe = await MemcacheClient.connect(c.port);
    await until(
      'no key is held after the fuzz run',
      3000,
      async () => (await stat(probe, 'proxy_keys_ordered')) === 0,
    );
    await until(
      'every fuzz connection is counted out',
      3000,
      async () => (await stat(probe, 'curr_connections')) === 1,
    );
    // Client input, however bad, never disturbs msproxy's backend connections.
    const st = await statsOf(probe);
    const backend = ['proxy_backend_timeouts', 'proxy_backend_errors', 'proxy_unavailable']
      .concat(['proxy_node_0_down_count'])
      .concat(['proxy_node_1_down_count', 'proxy_node_2_down_count', 'proxy_replication_failures'])
      .map((name) => `${name} ${st.get(name)}`);
    expect(backend).to.deep.equal(backend.map((b) => b.replace(/ \S+$/, ' 0')));
    expect(await stat(probe, 'proxy_nodes_up')).to.equal(3);
    expect(await probe.command('set fz:after 0 0 2', 'ok')).to.equal('STORED\r\n');
    expect(await probe.command('get fz:after')).to.equal('VALUE fz:after 0 2\r\nok\r\nEND\r\n');
    probe.close();
  });
});
