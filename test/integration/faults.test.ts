/**
 * Fault drills: a session workload (test/helpers/sessions.ts: 40 clients,
 * 1000 sessions, set/get/delete) runs through the proxy while nodes are
 * killed, hung, restarted empty, all hung at once, or while other
 * connections send garbage. Afterwards every session must read back as the
 * last acknowledged write left it (or as a write whose outcome the client
 * never learned), and every get during the run must have been such a state.
 *
 * Set DRILL_LOG=1 to print each drill's counts and latency percentiles.
 */

import net from 'node:net';
import { expect } from 'chai';
import { PROTOCOL_VERSION } from '../../src/version.js';
import { type Memcached, sleep } from '../helpers/memcached.js';
import {
  type Cluster,
  MemcacheClient,
  direct,
  peek,
  startCluster,
  statsAt,
  statsOf,
} from '../helpers/proxy.js';
import {
  type Counts,
  SessionWorkload,
  type Violation,
  countsSince,
  formatViolations,
  keysOnExactly,
  replicaKeys,
} from '../helpers/sessions.js';
import { prng } from '../helpers/split.js';
import { until } from '../helpers/wait.js';

/** The proxy's own `stats`, as a map. */
const proxyStats = statsAt;

function log(what: string, line: string): void {
  if (process.env.DRILL_LOG) console.log(`      [${what}] ${line}`);
}

/** The workload did enough that a clean check means something. */
function expectWork(w: SessionWorkload, c: Counts = w.snapshot()): void {
  const s = w.summary();
  expect(c.ackedSets, `acked sets: ${s}`).to.be.greaterThan(1000);
  expect(c.deleted, `deletes that removed a session: ${s}`).to.be.greaterThan(100);
  expect(c.hits, `gets that returned a session: ${s}`).to.be.greaterThan(500);
  expect(w.presentKeys().length, `sessions present at the end: ${s}`).to.be.greaterThan(300);
}

function expectClean(what: string, vs: Violation[], w: SessionWorkload): void {
  expect(vs, `${what}: ${formatViolations(vs)}\n${w.summary()}`).to.deep.equal([]);
}

/**
 * After the run: each of `nodes` holds, for every session it is a replica of,
 * an acceptable state (with `requirePresent`, sessions acked present too).
 */
async function verifyReplicas(
  c: Cluster,
  w: SessionWorkload,
  nodes: readonly number[],
  requirePresent: boolean,
): Promise<Violation[]> {
  const out: Violation[] = [];
  for (const n of nodes) {
    const keys = replicaKeys(c.proxy.ring, w.keys, n);
    out.push(...(await w.verifyNode(c.nodes[n]!, keys, { requirePresent })));
  }
  return out;
}

// ------------------------------------------------------------ garbage flood

interface FloodResult {
  bytesSent: number;
  bytesReceived: number;
  connections: number;
  /** Connections the proxy closed (overlong lines, as memcached does). */
  closedByProxy: number;
}

/**
 * `n` raw connections sending garbage for `ms`: random bytes, overlong lines
 * without a newline, bad data chunks, oversized sets, malformed commands, and
 * commands sent halfway that stall. Replies are read and dropped. Keys used
 * are `junk:*`, never a session key.
 */
async function flood(port: number, n: number, ms: number, seed: number): Promise<FloodResult> {
  const res: FloodResult = { bytesSent: 0, bytesReceived: 0, connections: 0, closedByProxy: 0 };
  const deadline = Date.now() + ms;

  async function one(index: number): Promise<void> {
    const rnd = prng(seed * 31 + index);
    const int = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1));
    const randomBytes = (len: number): Buffer => {
      const b = Buffer.alloc(len);
      for (let i = 0; i < len; i++) b[i] = Math.floor(rnd() * 256);
      return b;
    };
    while (Date.now() < deadline) {
      const sock = net.connect({ port, host: '127.0.0.1', noDelay: true });
      res.connections++;
      let closed = false;
      let weClosed = false;
      sock.on('data', (d: Buffer) => (res.bytesReceived += d.length));
      sock.on('error', () => {});
      sock.on('close', () => {
        closed = true;
        if (!weClosed) res.closedByProxy++;
      });
      await new Promise<void>((resolve) => {
        sock.once('connect', () => resolve());
        sock.once('close', () => resolve());
      });
      const write = async (b: Buffer | string): Promise<void> => {
        if (closed) return;
        const buf = typeof b === 'string' ? Buffer.from(b, 'latin1') : b;
        res.bytesSent += buf.length;
        if (!sock.write(buf)) {
          await Promise.race([
            new Promise((r) => sock.once('drain', r)),
            new Promise((r) => sock.once('close', r)),
            sleep(200),
          ]);
        }
      };
      const close = (): void => {
        weClosed = true;
        sock.destroy();
      };
      while (!closed && Date.now() < deadline) {
        const kind = int(0, 9);
        if (kind <= 1) {
          await write(randomBytes(int(16, 4096)));
        } else if (kind === 2) {
          // A line far over 2048 bytes with no newline: memcached (and msproxy) close.
          await write(`set junk:${index} 0 0 10 ${'x'.repeat(int(2100, 9000))}`);
          await sleep(int(5, 30));
          if (!closed) await write('z'.repeat(3000));
        } else if (kind === 3) {
          // Bad data chunks: longer, shorter, bad lengths.
          await write(`set junk:${index}:a 0 0 5\r\nabcdefghij\r\n`);
          await write(`set junk:${index}:b 0 0 10\r\nabc\r\nget junk:${index}:b\r\n`);
          await write(`set junk:${index}:c 0 0 -1\r\nset junk:${index}:d 0 0 abc\r\n`);
          await write(`ms junk:${index}:e 3\r\nabcdef\r\nmg junk:${index}:e v\r\n`);
        } else if (kind === 4) {
          // Too large for the cache: memcached swallows the announced bytes.
          await write(`set junk:${index}:big 0 0 99999999\r\n`);
          await write(randomBytes(int(100, 5000)));
          if (rnd() < 0.5) close();
        } else if (kind === 5) {
          // Half a command, then a stall, then the connection is dropped.
          const half = [
            `set junk:${index}:h 0 0 100\r\nabc`,
            `get junk:${index}:h`,
            `ms junk:${index}:h 50 T0\r\n0123`,
            'delete junk:',
            'mg',
          ][int(0, 4)]!;
          await write(half);
          await sleep(int(50, 300));
          close();
        } else if (kind === 6) {
          await write(
            'bogus\r\nget\r\nincr\r\nset\r\n\r\n\r\ntouch junk:x\r\nmg \r\nmn extra\r\n' +
              `get ${'k'.repeat(300)}\r\nset ${'k'.repeat(260)} 0 0 1\r\nx\r\n` +
              `incr junk:${index} abc\r\nverbosity\r\ncas junk:${index} 0 0 1\r\nx\r\n`,
          );
        } else if (kind === 7) {
          // Many empty and whitespace lines, then a burst of bad meta flags.
          await write(
            '\r\n'.repeat(int(1, 200)) +
              ` \t \r\nmg junk:${index} zz\r\nms junk:${index} S1 q q q\r\nx\r\nma junk:${index} D-1\r\n`,
          );
        } else {
          // Random printable junk lines under the line limit.
          const lines: string[] = [];
          for (let i = int(1, 20); i > 0; i--) {
            lines.push(
              randomBytes(int(1, 200))
                .toString('latin1')
                .replace(/[\r\n]/g, '.'),
            );
          }
          await write(lines.join('\r\n') + '\r\n');
        }
        await sleep(int(0, 5));
      }
      if (!closed) close();
      await sleep(int(0, 10));
    }
  }

  await Promise.all(Array.from({ length: n }, (_, i) => one(i)));
  return res;
}

// --------------------------------------------------------------------------

describe('fault drills: a session workload through node failures', function () {
  let c: Cluster | undefined;
  let w: SessionWorkload | undefined;
  /** Nodes stopped with SIGSTOP and not resumed yet (resumed before the cluster is stopped). */
  const paused = new Set<number>();

  afterEach(async function () {
    await w?.stop();
    for (const i of paused) {
      try {
        c?.nodes[i]!.resume();
      } catch {
        // already gone
      }
    }
    paused.clear();
    await c?.stop();
    c = undefined;
    w = undefined;
  });

  function pause(i: number): void {
    c!.nodes[i]!.pause();
    paused.add(i);
  }

  function resume(i: number): void {
    c!.nodes[i]!.resume();
    paused.delete(i);
  }

  it('kill -9 of one node mid-run: no session lost, stale or resurrected', async function () {
    this.timeout(30000);
    c = await startCluster();
    w = await SessionWorkload.start({ port: c.port, seed: 101 });
    await w.run(700);
    const atKill = w.snapshot();
    await c.kill(1);
    await w.run(1500);
    const afterKill = countsSince(w.snapshot(), atKill);
    await w.stop();
    const final = await w.verify();
    const survivors = await verifyReplicas(c, w, [0, 2], true);
    log('kill -9', w.summary());
    expect(c.proxy.nodes[1]!.isUp, 'the killed node is marked down').to.equal(false);
    // At most 1% of the requests after the kill fail (reads and plain writes fail over).
    expect(afterKill.failed, w.summary()).to.be.at.most(afterKill.requests / 100);
    expectWork(w);
    expectClean('gets during the run', w.violations, w);
    expectClean('final read of every session', final, w);
    expectClean('sessions held by the surviving nodes', survivors, w);
  });

  it('SIGSTOP of one node for 1.5 s: fenced rejoin, the node holds no stale or deleted session', async function () {
    this.timeout(30000);
    const i = 2;
    c = await startCluster();
    w = await SessionWorkload.start({ port: c.port, seed: 202 });
    await w.run(700);
    const atPause = w.snapshot();
    pause(i);
    await w.run(1500);
    const whilePaused = countsSince(w.snapshot(), atPause);
    expect(c.proxy.nodes[i]!.isUp, 'the hung node is marked down').to.equal(false);
    resume(i);
    await c.waitNode(i, true, 5000);
    await w.run(1000);
    await w.stop();
    const final = await w.verify();
    const mine = replicaKeys(c.proxy.ring, w.keys, i);
    const onNode = await w.verifyNode(c.nodes[i]!, mine, { requirePresent: true });
    const stats = await proxyStats(c.port);
    log('SIGSTOP', w.summary());
    log(
      'SIGSTOP',
      `while paused: acked sets ${whilePaused.ackedSets}, deletes ${whilePaused.deleted}; ` +
        `rejoins ${stats.get(`proxy_node_${i}_rejoins`)}, replayed ${stats.get(`proxy_node_${i}_rejoin_replayed`)}, ` +
        `flushes ${stats.get(`proxy_node_${i}_rejoin_flushes`)}; node ${i} replica keys ${mine.length}`,
    );
    expectWork(w);
    // A hung node costs each client at most one failed request (those in flight when it hung).
    expect(whilePaused.failed, w.summary()).to.be.at.most(40);
    expect(whilePaused.ackedSets, 'writes acked while the node was hung').to.be.greaterThan(200);
    expect(whilePaused.deleted, 'deletes acked while the node was hung').to.be.greaterThan(20);
    expect(mine.length).to.be.greaterThan(400);
    expectClean('gets during the run', w.violations, w);
    expectClean('final read of every session', final, w);
    expectClean(`sessions held by the rejoined node ${i}`, onNode, w);
    expect(Number(stats.get(`proxy_node_${i}_rejoins`)), 'rejoins').to.be.at.least(1);
    expect(Number(stats.get(`proxy_node_${i}_rejoin_replayed`)), 'keys replayed').to.be.greaterThan(
      0,
    );
    expect(stats.get(`proxy_node_${i}_up`)).to.equal('1');
  });

  it('a node restarted empty is re-synced, so killing its partner next loses nothing', async function () {
    this.timeout(30000);
    const i = 0;
    const j = 1;
    c = await startCluster({ recovery: { resyncRate: 20000 } });
    w = await SessionWorkload.start({ port: c.port, seed: 303 });
    await w.run(700);
    await c.restart(i);
    const cl = c;
    await until(`re-sync of node ${i} done`, 10000, () => {
      const s = cl.proxy.recovery.resyncState(i);
      if (s === 'failed') throw new Error(`re-sync of node ${i} failed`);
      return s === 'done' && cl.proxy.nodes[i]!.isUp;
    });
    const stats = await proxyStats(c.port);
    await c.kill(j);
    await w.run(1000);
    await w.stop();
    const final = await w.verify();
    // The sessions whose only two copies were the restarted node and the killed one.
    const pair = keysOnExactly(c.proxy.ring, w.keys, [i, j]);
    const pairPresent = pair.filter((k) => w!.stateOf(k).acked !== null);
    const pairBad = final.filter((v) => pair.includes(v.key));
    const onNode = await w.verifyNode(c.nodes[i]!, replicaKeys(c.proxy.ring, w.keys, i), {
      requirePresent: true,
    });
    log('restart+kill', w.summary());
    log(
      'restart+kill',
      `resync copied ${stats.get(`proxy_node_${i}_resync_copied`)}, scanned ${stats.get(`proxy_node_${i}_resync_scanned`)}, ` +
        `failed ${stats.get(`proxy_node_${i}_resync_failed`)}; sessions on {${i},${j}} only: ${pair.length}, present ${pairPresent.length}`,
    );
    expectWork(w);
    expect(Number(stats.get(`proxy_node_${i}_resync_copied`)), 'keys re-synced').to.be.greaterThan(
      50,
    );
    expect(pairPresent.length, `sessions on {${i},${j}} only`).to.be.greaterThan(50);
    expectClean(`sessions on {${i},${j}} only`, pairBad, w);
    expectClean('gets during the run', w.violations, w);
    expectClean('final read of every session', final, w);
    expectClean(`sessions held by the re-synced node ${i}`, onNode, w);
  });

  it('all nodes hung for 1 s then back: SERVER_ERROR meanwhile, then every session as acked', async function () {
    this.timeout(30000);
    c = await startCluster();
    w = await SessionWorkload.start({ port: c.port, seed: 404 });
    await w.run(700);
    const atPause = w.snapshot();
    for (const i of [0, 1, 2]) pause(i);
    await w.run(1000);
    const outage = countsSince(w.snapshot(), atPause);
    for (const i of [0, 1, 2]) resume(i);
    for (const i of [0, 1, 2]) await c.waitNode(i, true, 5000);
    const atReturn = w.snapshot();
    await w.run(1000);
    const after = countsSince(w.snapshot(), atReturn);
    await w.stop();
    const final = await w.verify();
    const replicas = await verifyReplicas(c, w, [0, 1, 2], true);
    log('all hung', w.summary());
    log(
      'all hung',
      `outage: requests ${outage.requests}, SERVER_ERROR ${outage.serverErrors}, transport ${outage.transportErrors}; ` +
        `after return: requests ${after.requests}, acked sets ${after.ackedSets}, failed ${after.failed}`,
    );
    expectWork(w);
    expect(outage.serverErrors, 'SERVER_ERROR replies while every node was hung').to.be.greaterThan(
      0,
    );
    expect(after.ackedSets, 'writes acked after the nodes came back').to.be.greaterThan(200);
    expect(after.hits, 'gets that hit after the nodes came back').to.be.greaterThan(100);
    expect(after.failed, `failed requests after every node was back: ${w.summary()}`).to.equal(0);
    expectClean('gets during the run', w.violations, w);
    expectClean('final read of every session', final, w);
    expectClean('sessions held by each node', replicas, w);
  });

  it('a flood of bad input on other connections: no failed request, no violation', async function () {
    this.timeout(30000);
    c = await startCluster();
    w = await SessionWorkload.start({ port: c.port, seed: 505 });
    await w.run(300);
    const before = w.snapshot();
    const [garbage] = await Promise.all([flood(c.port, 10, 1500, 505), w.run(1500)]);
    const during = countsSince(w.snapshot(), before);
    await w.run(300);
    await w.stop();
    const final = await w.verify();
    const fresh = await MemcacheClient.connect(c.port);
    let version: string;
    try {
      version = await fresh.command('version');
    } finally {
      fresh.close();
    }
    log('garbage', w.summary());
    log(
      'garbage',
      `flood: ${garbage.connections} connections, ${garbage.bytesSent} bytes sent, ` +
        `${garbage.bytesReceived} received, ${garbage.closedByProxy} closed by the proxy; ` +
        `workload meanwhile: ${during.requests} requests`,
    );
    expectWork(w);
    expect(garbage.bytesSent, 'garbage sent').to.be.greaterThan(200_000);
    expect(garbage.bytesReceived, 'error replies to the garbage').to.be.greaterThan(0);
    expect(garbage.closedByProxy, 'connections closed for overlong lines').to.be.greaterThan(0);
    expect(during.requests, 'workload requests during the flood').to.be.greaterThan(1000);
    expect(w.snapshot().failed, `failed requests: ${w.summary()}`).to.equal(0);
    expectClean('gets during the run', w.violations, w);
    expectClean('final read of every session', final, w);
    expect(version).to.equal(`VERSION ${PROTOCOL_VERSION}\r\n`);
  });
});

/** A key whose primary is `a` and backup `b`. */
function keyOn(c: Cluster, prefix: string, a: number, b: number): string {
  for (let i = 0; i < 100000; i++) {
    const k = `${prefix}:${i}`;
    const o = c.proxy.ring.order(Buffer.from(k));
    if (o[0] === a && o[1] === b) return k;
  }
  throw new Error(`no key on ${a},${b}`);
}

/** The live re-sync behind a proxy's Recovery (tests patch its listing and its copies). */
function resyncOf(c: Cluster): Record<string, unknown> {
  return (c.proxy.recovery as unknown as { resyncer: Record<string, unknown> }).resyncer;
}

/** Re-sync's key listing of one node (patched by tests to leave keys out or hold a listing). */
type Listing = (
  address: string,
  onKey: (key: Buffer) => void,
  cb: (err: Error | null) => void,
) => void;

/** Replace the live Recovery's key listing by `wrap(real)`. */
function patchListing(c: Cluster, wrap: (real: Listing) => Listing): void {
  const rs = resyncOf(c) as unknown as { metadump: Listing };
  rs.metadump = wrap(rs.metadump.bind(rs));
}

/** A check for `until`: the latest re-sync of `node`, begun after run `after`, is in `state`. */
function resyncIs(c: Cluster, node: number, after: number, state: string): () => boolean {
  return () => {
    const r = c.proxy.recovery;
    return r.resyncRuns(node) > after && r.resyncState(node) === state;
  };
}

/** Re-sync's copy of one key to a re-syncing node (patched by tests to make copies fail). */
type Refill = (node: number, key: Buffer, cb: (ok: boolean) => void) => void;

/** Replace the live Recovery's re-sync copy by `wrap(real)`. */
function patchRefill(c: Cluster, wrap: (real: Refill) => Refill): void {
  const rs = resyncOf(c) as unknown as { copy: Refill };
  rs.copy = wrap(rs.copy.bind(rs));
}

/**
 * `n` keys whose only two copies are on nodes `a` and `b` (either one
 * primary). Their bytes are the latin1 of the string, as MemcacheClient sends them.
 */
function keysOnPair(c: Cluster, prefix: string, a: number, b: number, n: number): string[] {
  const keys: string[] = [];
  for (let i = 0; keys.length < n && i < 1_000_000; i++) {
    const k = `${prefix}:${i}`;
    const o = c.proxy.ring.order(Buffer.from(k, 'latin1'));
    if ((o[0] === a && o[1] === b) || (o[0] === b && o[1] === a)) keys.push(k);
  }
  return keys;
}

/** Node `node` itself holds every one of `keys` with value `value` (two bytes, set by the test). */
async function expectAllOn(node: Memcached, keys: string[], value = 'v1'): Promise<void> {
  const client = await direct(node);
  try {
    const got = await client.pipeline(keys.map((k) => `get ${k}`));
    const missing = keys.filter((k, i) => got[i] !== `VALUE ${k} 0 2\r\n${value}\r\nEND\r\n`);
    expect(missing, 'sessions the node did not get back').to.deep.equal([]);
  } finally {
    client.close();
  }
}

describe('fencing and re-sync edge cases', function () {
  let c: Cluster;
  let p: MemcacheClient;
  const paused = new Set<number>();

  /** Store `n` sessions (value v1) whose only two copies are on nodes `a` and `b`, through `p`. */
  async function storeOnPair(prefix: string, a: number, b: number, n: number): Promise<string[]> {
    const keys = keysOnPair(c, prefix, a, b, n);
    const stored = await p.pipeline(keys.map((k) => [`set ${k} 0 0 2`, 'v1'] as [string, string]));
    expect(new Set(stored)).to.deep.equal(new Set(['STORED\r\n']));
    return keys;
  }

  afterEach(async function () {
    p?.close();
    for (const i of paused) c.nodes[i]!.resume();
    paused.clear();
    await c?.stop();
  });

  it('a node that rejoins while its partner is down never serves what it missed', async function () {
    this.timeout(30000);
    c = await startCluster();
    p = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    const k = keyOn(c, 'stag', A, B);
    const d = keyOn(c, 'stagdel', A, B);
    expect(await p.command(`set ${k} 0 0 2`, 'v1')).to.equal('STORED\r\n');
    expect(await p.command(`set ${d} 0 0 2`, 'v1')).to.equal('STORED\r\n');
    // A hangs; writes go on to B (the first ones time out on A and mark it down).
    c.nodes[A]!.pause();
    paused.add(A);
    for (let t = 0; t < 20 && c.proxy.nodes[A]!.isUp; t++) {
      await p.command(`set ${k} 0 0 2`, 'v2');
      await sleep(20);
    }
    await c.waitNode(A, false);
    expect(await p.command(`set ${k} 0 0 2`, 'v3')).to.equal('STORED\r\n');
    expect(await p.command(`delete ${d}`)).to.equal('DELETED\r\n');
    // B hangs too, and A comes back while B is still down: A cannot be checked for k and d.
    c.nodes[B]!.pause();
    paused.add(B);
    for (let t = 0; t < 20 && c.proxy.nodes[B]!.isUp; t++) {
      await p.command(`get ${k}`).catch(() => '');
    }
    await c.waitNode(B, false, 3000);
    c.nodes[A]!.resume();
    paused.delete(A);
    await c.waitNode(A, true, 3000);
    // Only B has the newest copies: an error, never A's old value or the deleted session.
    expect(await p.command(`get ${k}`)).to.equal('SERVER_ERROR no replica available\r\n');
    expect(await p.command(`get ${d}`)).to.equal('SERVER_ERROR no replica available\r\n');
    const stats = await p.command('stats');
    expect(stats).to.match(new RegExp(`STAT proxy_node_${A}_fenced_keys [1-9]`));
    // B returns: A is brought up to date from it, and both agree.
    c.nodes[B]!.resume();
    paused.delete(B);
    await c.waitNode(B, true, 3000);
    await until(
      'A brought up to date from B',
      3000,
      async () => (await peek(c.nodes[A]!, k))?.value === 'v3',
    );
    expect(await p.command(`get ${k}`)).to.equal(`VALUE ${k} 0 2\r\nv3\r\nEND\r\n`);
    expect(await p.command(`get ${d}`)).to.equal('END\r\n');
    expect((await peek(c.nodes[A]!, k))?.value).to.equal('v3');
    expect(await peek(c.nodes[A]!, d)).to.equal(null);
    expect(await p.command('stats')).to.match(new RegExp(`STAT proxy_node_${A}_fenced_keys 0\r\n`));
  });

  it('a re-sync run while a replica is down ends failed and runs again once it is back', async function () {
    this.timeout(30000);
    c = await startCluster({ recovery: { resyncRate: 100000 } });
    p = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    // Sessions whose only copies are on A and B.
    const keys = await storeOnPair('retry', A, B, 200);
    // B hangs and is marked down; then A restarts empty: only B could refill it, and B is down.
    c.nodes[B]!.pause();
    paused.add(B);
    const onB = keys.find((k) => c.proxy.ring.order(Buffer.from(k))[0] === B)!;
    for (let t = 0; t < 20 && c.proxy.nodes[B]!.isUp; t++) {
      await p.command(`get ${onB}`).catch(() => '');
    }
    await c.waitNode(B, false);
    const runs = c.proxy.recovery.resyncRuns(A);
    await c.restart(A);
    await until('a re-sync of A that fails', 5000, resyncIs(c, A, runs, 'failed'));
    // B returns (its copies are current: nothing was written meanwhile); A's re-sync runs again.
    const failedRuns = c.proxy.recovery.resyncRuns(A);
    c.nodes[B]!.resume();
    paused.delete(B);
    await c.waitNode(B, true, 3000);
    await until('the retried re-sync of A', 5000, resyncIs(c, A, failedRuns, 'done'));
    // A holds every one of them itself now, so losing B loses nothing.
    await expectAllOn(c.nodes[A]!, keys);
    await c.kill(B);
    await c.waitNode(B, false, 3000);
    const answers = await p.pipeline(keys.map((k) => `get ${k}`));
    expect(answers.filter((a, i) => a !== `VALUE ${keys[i]} 0 2\r\nv1\r\nEND\r\n`)).to.deep.equal(
      [],
    );
  });

  it("a re-sync lists the keys twice: one memcached's crawler skipped the first time is copied too", async function () {
    this.timeout(30000);
    c = await startCluster({ recovery: { resyncRate: 100000 } });
    p = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    const keys = await storeOnPair('twice', A, B, 100);
    // The crawler skips an item in use as it passes (or one moving between LRU queues): here
    // the first listing of every source leaves out the first five keys.
    const skipped = new Set(keys.slice(0, 5));
    let listings = 0;
    patchListing(c, (real) => (address, onKey, cb) => {
      const n = ++listings;
      real(
        address,
        (k) => (n > 2 || !skipped.has(k.toString('latin1')) ? onKey(k) : undefined),
        cb,
      );
    });
    const runs = c.proxy.recovery.resyncRuns(A);
    await c.restart(A);
    await until('the re-sync of A', 5000, () => {
      const r = c.proxy.recovery;
      if (r.resyncRuns(A) > runs && r.resyncState(A) === 'failed') throw new Error('failed');
      return r.resyncRuns(A) > runs && r.resyncState(A) === 'done';
    });
    expect(listings, 'listings: two sources, twice').to.equal(4);
    await expectAllOn(c.nodes[A]!, keys);
  });

  it('a key whose copy keeps failing ends the run failed; the retry copies just that key', async function () {
    this.timeout(30000);
    c = await startCluster({ recovery: { resyncRate: 100000 } });
    p = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    const keys = await storeOnPair('copyfail', A, B, 50);
    // The first two copies of one key fail (as a timeout or an error reply on either node
    // would): in the first pass, and again when the second pass tries it once more.
    let failures = 0;
    patchRefill(c, (real) => (node, key, cb) => {
      if (key.toString('latin1') === keys[7] && failures < 2) {
        failures++;
        return cb(false);
      }
      real(node, key, cb);
    });
    const runs = c.proxy.recovery.resyncRuns(A);
    await c.restart(A);
    await until('a re-sync of A that fails', 5000, resyncIs(c, A, runs, 'failed'));
    expect(failures).to.equal(2);
    const failedRuns = c.proxy.recovery.resyncRuns(A);
    await until('the re-sync of A, run again', 8000, resyncIs(c, A, failedRuns, 'done'));
    const stats = await proxyStats(c.port);
    expect(stats.get(`proxy_node_${A}_resync_copied`), 'the retry copied one key').to.equal('1');
    expect(stats.get(`proxy_node_${A}_resync_scanned`), 'and listed nothing').to.equal('0');
    await expectAllOn(c.nodes[A]!, keys);
  });

  it('a re-sync that listed while another node was down runs again if that node is back by its end', async function () {
    this.timeout(30000);
    c = await startCluster({ recovery: { resyncRate: 100000 } });
    p = await MemcacheClient.connect(c.port);
    const [A, B, C] = [0, 1, 2];
    const keys = await storeOnPair('backmid', A, C, 100);
    // B is down when A's re-sync lists its keys (so the run cannot be complete), and is back
    // before the run ends: B's rejoin finds A's run still going.
    let release: (() => void) | null = null;
    let listings = 0;
    patchListing(c, (real) => (address, onKey, cb) => {
      if (++listings === 1) release = () => real(address, onKey, cb);
      else real(address, onKey, cb);
    });
    await c.kill(B);
    await c.waitNode(B, false, 3000);
    const runs = c.proxy.recovery.resyncRuns(A);
    await c.restart(A);
    await until('the first listing of the re-sync of A', 5000, () => release !== null);
    await c.restart(B);
    await c.waitNode(B, true, 5000);
    release!();
    await until('a complete re-sync of A', 10000, resyncIs(c, A, runs + 1, 'done'));
    await expectAllOn(c.nodes[A]!, keys);
  });

  it('a node that restarts again during its re-sync is re-synced again', async function () {
    this.timeout(30000);
    c = await startCluster({ recovery: { resyncRate: 100000 } });
    p = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    const keys = await storeOnPair('again', A, B, 100);
    // Hold the second listing (calls 3 and 4: two sources) until A has restarted again.
    let listings = 0;
    const held: (() => void)[] = [];
    patchListing(c, (real) => (address, onKey, cb) => {
      listings++;
      if (listings === 3 || listings === 4) held.push(() => real(address, onKey, cb));
      else real(address, onKey, cb);
    });
    const runs = c.proxy.recovery.resyncRuns(A);
    await c.restart(A);
    await until('the second listing of the first re-sync', 5000, () => held.length === 2);
    expect(c.proxy.recovery.resyncState(A)).to.equal('running');
    // A restarts again: the copies of the first pass are gone.
    const pid = c.proxy.nodes[A]!.identity?.pid;
    await c.restart(A);
    await until('msproxy sees the restart', 5000, () => {
      const id = c.proxy.nodes[A]!.identity;
      return id !== null && id.pid !== pid && c.proxy.nodes[A]!.isUp;
    });
    for (const release of held) release();
    await until('a later re-sync of A', 8000, resyncIs(c, A, runs + 1, 'done'));
    await expectAllOn(c.nodes[A]!, keys);
  });

  it('two nodes restarted at once both re-sync fully (a BUSY key listing is retried)', async function () {
    this.timeout(30000);
    c = await startCluster({ recovery: { resyncRate: 100000 } });
    p = await MemcacheClient.connect(c.port);
    const C = 2;
    const pairs: string[][] = [[], []];
    for (let n = 0; pairs[0]!.length < 300 || pairs[1]!.length < 300; n++) {
      const k = `rs:${n}`;
      const o = c.proxy.ring.order(Buffer.from(k));
      for (const x of [0, 1]) {
        const shared = (o[0] === x && o[1] === C) || (o[0] === C && o[1] === x);
        if (shared && pairs[x]!.length < 300) pairs[x]!.push(k);
      }
    }
    const all = [...pairs[0]!, ...pairs[1]!];
    const stored = await p.pipeline(all.map((k) => [`set ${k} 0 0 2`, 'v1'] as [string, string]));
    expect(new Set(stored)).to.deep.equal(new Set(['STORED\r\n']));
    // Filler on the shared source makes its key listing slow enough for the two to overlap.
    const filler = await direct(c.nodes[C]!);
    let bulk = '';
    for (let n = 0; n < 20000; n++) {
      bulk += `set filler:${n}:${'y'.repeat(150)} 0 0 50 noreply\r\n${'x'.repeat(50)}\r\n`;
    }
    filler.send(bulk);
    // memcached answers in order: once `stats` is answered, every filler set is stored.
    const items = Number((await statsOf(filler)).get('curr_items'));
    expect(items, 'items on the shared source').to.be.at.least(20000);
    filler.close();
    await Promise.all([c.restart(0), c.restart(1)]);
    const fin = (i: number): boolean => c.proxy.recovery.resyncState(i) === 'done';
    await until('both re-syncs done', 15000, () => fin(0) && fin(1));
    expect([0, 1].map((i) => c.proxy.recovery.resyncState(i))).to.deep.equal(['done', 'done']);
    await c.kill(C);
    await c.waitNode(C, false, 3000);
    const lost = all.filter((k) => k !== '');
    const answers = await p.pipeline(lost.map((k) => `get ${k}`));
    const missing = lost.filter((k, i) => answers[i] !== `VALUE ${k} 0 2\r\nv1\r\nEND\r\n`);
    expect(missing, 'sessions lost once the shared source died').to.deep.equal([]);
  });

  it('a node hung across a proxy restart is flushed and re-synced: no stale or deleted session', async function () {
    this.timeout(30000);
    c = await startCluster({ recovery: { resyncRate: 100000 } });
    p = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    const keys = await storeOnPair('cold', A, B, 200);
    const probe = keyOn(c, 'coldprobe', A, B);
    // A hangs and is marked down; half the sessions change, half are logged out.
    c.nodes[A]!.pause();
    paused.add(A);
    for (let t = 0; t < 20 && c.proxy.nodes[A]!.isUp; t++) await p.command(`get ${probe}`);
    await c.waitNode(A, false);
    const changed = keys.filter((_, i) => i % 2 === 0);
    const deleted = keys.filter((_, i) => i % 2 === 1);
    const sets = await p.pipeline(changed.map((k) => [`set ${k} 0 0 2`, 'v2'] as [string, string]));
    expect(new Set(sets)).to.deep.equal(new Set(['STORED\r\n']));
    const dels = await p.pipeline(deleted.map((k) => `delete ${k}`));
    expect(new Set(dels)).to.deep.equal(new Set(['DELETED\r\n']));
    // msproxy restarts while A still hangs: the new process never saw what A missed.
    p.close();
    await c.restartProxy();
    p = await MemcacheClient.connect(c.port);
    for (let t = 0; t < 20 && c.proxy.nodes[A]!.isUp; t++) await p.command(`get ${probe}`);
    await c.waitNode(A, false);
    const runs = c.proxy.recovery.resyncRuns(A);
    c.nodes[A]!.resume();
    paused.delete(A);
    await c.waitNode(A, true, 5000);
    const got = await p.pipeline(keys.map((k) => `get ${k}`));
    const wrong = keys.filter((k, i) => {
      const want = i % 2 === 0 ? `VALUE ${k} 0 2\r\nv2\r\nEND\r\n` : 'END\r\n';
      return got[i] !== want;
    });
    expect(wrong, 'sessions read stale or resurrected').to.deep.equal([]);
    await until('the re-sync of A', 10000, resyncIs(c, A, runs, 'done'));
    // A itself holds the new values and none of the deleted sessions.
    await expectAllOn(c.nodes[A]!, changed, 'v2');
    const onA = await direct(c.nodes[A]!);
    try {
      const left = await onA.pipeline(deleted.map((k) => `get ${k}`));
      expect(
        left.filter((r) => r !== 'END\r\n'),
        'deleted sessions on A',
      ).to.deep.equal([]);
    } finally {
      onA.close();
    }
  });

  it('a node hung at msproxy start is flushed when it answers, even if no client needed it meanwhile', async function () {
    this.timeout(30000);
    c = await startCluster({ recovery: { resyncRate: 100000 } });
    p = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    const keys = await storeOnPair('quiet', A, B, 100);
    const probe = keyOn(c, 'quietprobe', A, B);
    c.nodes[A]!.pause();
    paused.add(A);
    for (let t = 0; t < 20 && c.proxy.nodes[A]!.isUp; t++) await p.command(`get ${probe}`);
    await c.waitNode(A, false);
    const dels = await p.pipeline(keys.map((k) => `delete ${k}`));
    expect(new Set(dels)).to.deep.equal(new Set(['DELETED\r\n']));
    p.close();
    // msproxy restarts while A hangs, and no client asks anything of A: only the start-up
    // stats fails, one failure of failureThreshold's two.
    await c.restartProxy();
    await c.waitNode(A, false);
    c.nodes[A]!.resume();
    paused.delete(A);
    await c.waitNode(A, true, 5000);
    p = await MemcacheClient.connect(c.port);
    const got = await p.pipeline(keys.map((k) => `get ${k}`));
    expect(
      keys.filter((_, i) => got[i] !== 'END\r\n'),
      'deleted sessions read back',
    ).to.deep.equal([]);
  });

  it('every node hung across a proxy restart: each is served as it is, and no session is lost', async function () {
    this.timeout(30000);
    c = await startCluster({ recovery: { resyncRate: 100000 } });
    p = await MemcacheClient.connect(c.port);
    const [B, C] = [1, 2];
    const keys = await storeOnPair('blip', B, C, 200);
    p.close();
    // Every node hangs (a network blip) while msproxy restarts, then they come back one by
    // one. No node answered at start, so none can vouch for another: a flush of B or C would
    // take the only other copy of their shared keys.
    for (const i of [0, 1, 2]) {
      c.nodes[i]!.pause();
      paused.add(i);
    }
    await c.restartProxy();
    for (const i of [0, 1, 2]) await c.waitNode(i, false);
    for (const i of [0, 1, 2]) {
      c.nodes[i]!.resume();
      paused.delete(i);
      await c.waitNode(i, true, 5000);
    }
    p = await MemcacheClient.connect(c.port);
    const flushes = new Map(c.proxy.recovery.rows());
    expect([0, 1, 2].map((i) => flushes.get(`proxy_node_${i}_rejoin_flushes`))).to.deep.equal([
      0, 0, 0,
    ]);
    const got = await p.pipeline(keys.map((k) => `get ${k}`));
    const lost = keys.filter((k, i) => got[i] !== `VALUE ${k} 0 2\r\nv1\r\nEND\r\n`);
    expect(lost, 'sessions lost').to.deep.equal([]);
  });

  it('a node first seen while its partner hangs is served as it is, but its misses are no logout until it is re-synced', async function () {
    this.timeout(30000);
    c = await startCluster({ recovery: { resyncRate: 100000 } });
    p = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    const keys = await storeOnPair('firstseen', A, B, 50);
    p.close();
    // A dies and msproxy restarts while B hangs: neither answers at start.
    await c.kill(A);
    c.nodes[B]!.pause();
    paused.add(B);
    await c.restartProxy();
    await c.waitNode(A, false);
    await c.waitNode(B, false);
    // A comes back empty while B still hangs: B cannot vouch for it, so it is not flushed,
    // but nothing says it holds every session either.
    await c.restart(A);
    await c.waitNode(A, true, 5000);
    const complete = (n: number): unknown =>
      new Map(c.proxy.recovery.rows()).get(`proxy_node_${n}_complete`);
    expect(complete(A)).to.equal(0);
    p = await MemcacheClient.connect(c.port);
    const got = await p.pipeline(keys.map((k) => `get ${k}`));
    expect(
      keys.filter((_, i) => got[i] === 'END\r\n'),
      'sessions answered as a miss',
    ).to.deep.equal([]);
    expect(new Set(got)).to.deep.equal(new Set(['SERVER_ERROR no replica available\r\n']));
    // B answers: A is refilled from it and counts as complete again.
    c.nodes[B]!.resume();
    paused.delete(B);
    await c.waitNode(B, true, 5000);
    await until('A complete again', 10000, () => complete(A) === 1);
    await expectAllOn(c.nodes[A]!, keys);
    const again = await p.pipeline(keys.map((k) => `get ${k}`));
    const lost = keys.filter((k, i) => again[i] !== `VALUE ${k} 0 2\r\nv1\r\nEND\r\n`);
    expect(lost, 'sessions lost').to.deep.equal([]);
  });

  it('a node restarted empty while msproxy was down is re-synced, so killing its partner loses nothing', async function () {
    this.timeout(30000);
    c = await startCluster({ recovery: { resyncRate: 100000 } });
    p = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    const keys = await storeOnPair('coldkill', A, B, 200);
    // A dies; msproxy restarts; A comes back empty: the new process never knew A's old pid.
    await c.kill(A);
    p.close();
    await c.restartProxy();
    p = await MemcacheClient.connect(c.port);
    await c.waitNode(A, false);
    const runs = c.proxy.recovery.resyncRuns(A);
    await c.restart(A);
    await c.waitNode(A, true, 5000);
    await until('the re-sync of A', 10000, resyncIs(c, A, runs, 'done'));
    await expectAllOn(c.nodes[A]!, keys);
    await c.kill(B);
    await c.waitNode(B, false, 3000);
    const got = await p.pipeline(keys.map((k) => `get ${k}`));
    const lost = keys.filter((k, i) => got[i] !== `VALUE ${k} 0 2\r\nv1\r\nEND\r\n`);
    expect(lost, 'sessions lost with B').to.deep.equal([]);
  });

  it('a stall of msproxy itself past the request timeout fails no request whose reply came in', async function () {
    this.timeout(30000);
    c = await startCluster({ nodes: 1, replicas: 1 });
    p = await MemcacheClient.connect(c.port);
    expect(await p.command('set stall 0 0 2', 'v1')).to.equal('STORED\r\n');
    // Right after the get goes out to memcached, this process (msproxy's event loop) is busy
    // for three request timeouts, as in a long GC or on a starved CPU; memcached answers
    // meanwhile. The timeout sweep then runs before the reply is read.
    const node = c.proxy.nodes[0]!;
    const send = node.send.bind(node);
    let stalls = 0;
    node.send = (lane, data, expect, cb) => {
      send(lane, data, expect, cb);
      if (stalls++ > 0) return;
      setImmediate(() => {
        const until = performance.now() + 3 * c.config.timeouts.requestMs;
        while (performance.now() < until);
      });
    };
    expect(await p.command('get stall')).to.equal('VALUE stall 0 2\r\nv1\r\nEND\r\n');
    expect(stalls, 'the get went through the patched send').to.equal(1);
    expect(node.errors, 'requests msproxy gave up on').to.equal(0);
    expect(node.isUp).to.equal(true);
  });

  it('stopping msproxy answers the commands it already read, then closes', async function () {
    this.timeout(30000);
    c = await startCluster();
    p = await MemcacheClient.connect(c.port);
    const idle = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    const k = keyOn(c, 'drain', A, B);
    expect(await p.command(`set ${k} 0 0 2`, 'v1')).to.equal('STORED\r\n');
    // A get is in flight to A (hung for a moment) when msproxy is told to stop.
    c.nodes[A]!.pause();
    paused.add(A);
    const pending = p.command(`get ${k}`);
    await sleep(30);
    const stopped = c.proxy.close();
    await sleep(50);
    c.nodes[A]!.resume();
    paused.delete(A);
    expect(await pending).to.equal(`VALUE ${k} 0 2\r\nv1\r\nEND\r\n`);
    await stopped;
    await until('both connections closed', 3000, () => p.closed && idle.closed);
    const refused = await MemcacheClient.connect(c.port).then(
      (late) => (late.close(), false),
      () => true,
    );
    expect(refused, 'a new connection after the stop is refused').to.equal(true);
  });

  it('a re-sync copies keys of any bytes (the key listing is URL-encoded)', async function () {
    this.timeout(30000);
    c = await startCluster({ recovery: { resyncRate: 100000 } });
    p = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    // '%', an escape-like '%41' and '%zz', bytes above 0x7f, and the characters metadump keeps.
    const keys = await storeOnPair('sess:\u00e4%41%zz+/\u00ff~_.-', A, B, 100);
    const runs = c.proxy.recovery.resyncRuns(A);
    await c.restart(A);
    await until('the re-sync of A', 5000, resyncIs(c, A, runs, 'done'));
    await expectAllOn(c.nodes[A]!, keys);
  });

  it('a rejoin while the partner is down settles a long outage log, key by key, without recursing', async function () {
    this.timeout(60000);
    c = await startCluster();
    p = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    const probe = keyOn(c, 'longlog', A, B);
    c.nodes[A]!.pause();
    paused.add(A);
    for (let t = 0; t < 20 && c.proxy.nodes[A]!.isUp; t++) {
      await p.command(`set ${probe} 0 0 2`, 'v1');
      await sleep(20);
    }
    await c.waitNode(A, false);
    // A misses 20000 writes; then B hangs, and A comes back while B is down. No key of the log
    // can be checked against its partner, so each settles at once (it is fenced on A).
    const keys = await storeOnPair('longlog', A, B, 20000);
    c.nodes[B]!.pause();
    paused.add(B);
    for (let t = 0; t < 20 && c.proxy.nodes[B]!.isUp; t++) await p.command(`get ${probe}`);
    await c.waitNode(B, false, 3000);
    c.nodes[A]!.resume();
    paused.delete(A);
    await c.waitNode(A, true, 5000);
    const fencedOnA = (): number =>
      Number(new Map(c.proxy.recovery.rows()).get(`proxy_node_${A}_fenced_keys`));
    expect(fencedOnA(), 'keys fenced on A').to.be.at.least(keys.length);
    // B returns: A is brought up to date from it.
    c.nodes[B]!.resume();
    paused.delete(B);
    await c.waitNode(B, true, 3000);
    await until('A no longer fenced', 20000, () => fencedOnA() === 0);
    await expectAllOn(c.nodes[A]!, keys);
  });

  it('a re-sync whose copies all fail at once (no source left) ends failed without recursing', async function () {
    this.timeout(60000);
    c = await startCluster({ recovery: { resyncRate: 10_000_000 } });
    p = await MemcacheClient.connect(c.port);
    const [A, B] = [0, 1];
    const keys = await storeOnPair('nosource', A, B, 20000);
    // As when the only other replica went down after the listing: refill() finds no source and
    // fails inside the call.
    let failing = true;
    let failures = 0;
    patchRefill(c, (real) => (node, key, cb) => {
      if (!failing) return real(node, key, cb);
      failures++;
      cb(false);
    });
    const runs = c.proxy.recovery.resyncRuns(A);
    await c.restart(A);
    await until('a re-sync of A that fails', 10000, resyncIs(c, A, runs, 'failed'));
    expect(failures, 'every key failed, in both passes').to.be.at.least(2 * keys.length);
    // The source is back: the retry copies the failed keys.
    failing = false;
    const failedRuns = c.proxy.recovery.resyncRuns(A);
    await until('the re-sync of A, run again', 10000, resyncIs(c, A, failedRuns, 'done'));
    await expectAllOn(c.nodes[A]!, keys);
  });
});
