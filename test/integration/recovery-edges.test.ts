/**
 * Recovery edge cases found in review, against real memcached behind a relay:
 * a background fix that fails is retried, a later successful write clears the
 * node's log entry, reads in flight behind a write that failed on their node
 * do not serve what it held before, and commands answered without any node
 * do not count as proxy_unavailable.
 */

import { expect } from 'chai';
import {
  type Cluster,
  MemcacheClient,
  direct,
  keyOnReplicas,
  peek,
  sleep,
  startCluster,
  statsOf,
} from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';

const NO_REPLICA = 'SERVER_ERROR no replica available\r\n';

describe('recovery edges: failed fixes, stats without nodes', function () {
  this.timeout(20000);
  let c: Cluster | null = null;
  let client: MemcacheClient | null = null;

  const paused: import('../helpers/memcached.js').Memcached[] = [];
  afterEach(async () => {
    for (const n of paused) n.resume();
    paused.length = 0;
    client?.close();
    client = null;
    await c?.stop();
    c = null;
  });

  async function stat(name: string): Promise<string | undefined> {
    return (await statsOf(client!)).get(name);
  }

  /** The cas of `key`'s item on node `i`, read there directly (a copy is made only if unchanged). */
  async function casOn(i: number, key: string): Promise<string> {
    const d = await direct(c!.nodes[i]!);
    try {
      const line = await d.command(`mg ${key} c`);
      return /\bc(\d+)/.exec(line)![1]!;
    } finally {
      d.close();
    }
  }

  it('a background fix that fails on the node is retried, and a later write that succeeds there clears the log', async function () {
    c = await startCluster({ nodes: 2, relays: [0] });
    client = await MemcacheClient.connect(c.port);
    const k = keyOnReplicas(c, 'stuck', [0, 1]);
    expect(await client.command(`set ${k} 0 0 2`, 'v1')).to.equal('STORED\r\n');
    const cas = await casOn(0, k);
    const relay = c.relays.get(0)!;
    relay.intercept(`set ${k} 0 0 2\r\nv2\r\n`, 'SERVER_ERROR out of memory storing object\r\n');
    // The background fix's copy to node 0 (ms ... F0 T0, if its item is still v1's) gets an
    // error reply too.
    relay.intercept(
      `ms ${k} 2 F0 T0 C${cas}\r\nv2\r\n`,
      'SERVER_ERROR out of memory storing object\r\n',
    );
    expect(await client.command(`set ${k} 0 0 2`, 'v2')).to.equal('STORED\r\n');
    await until('the fix attempt', 3000, () => relay.intercepted === 2);
    // Node 0 answers everything normally from now on; the key is written again on both nodes.
    expect(await client.command(`set ${k} 0 0 2`, 'v3')).to.equal('STORED\r\n');
    expect((await peek(c.nodes[0]!, k))?.value).to.equal('v3');
    expect((await peek(c.nodes[1]!, k))?.value).to.equal('v3');
    await sleep(1500);
    expect(
      await stat('proxy_node_0_outage_log'),
      'node 0 still has the key pending, 1.5 s later',
    ).to.equal('0');
  });

  it('with the partner gone, the up-to-date copy on a node whose fix once failed is served', async function () {
    c = await startCluster({ nodes: 2, relays: [0] });
    client = await MemcacheClient.connect(c.port);
    const k = keyOnReplicas(c, 'stuck', [0, 1]);
    expect(await client.command(`set ${k} 0 0 2`, 'v1')).to.equal('STORED\r\n');
    const cas = await casOn(0, k);
    const relay = c.relays.get(0)!;
    relay.intercept(`set ${k} 0 0 2\r\nv2\r\n`, 'SERVER_ERROR out of memory storing object\r\n');
    relay.intercept(
      `ms ${k} 2 F0 T0 C${cas}\r\nv2\r\n`,
      'SERVER_ERROR out of memory storing object\r\n',
    );
    expect(await client.command(`set ${k} 0 0 2`, 'v2')).to.equal('STORED\r\n');
    await until('the fix attempt', 3000, () => relay.intercepted === 2);
    expect(await client.command(`set ${k} 0 0 2`, 'v3')).to.equal('STORED\r\n');
    await sleep(500);
    await c.kill(1);
    await c.waitNode(1, false).catch(() => {});
    expect((await peek(c.nodes[0]!, k))?.value).to.equal('v3');
    expect(await client.command(`get ${k}`)).to.equal(`VALUE ${k} 0 2\r\nv3\r\nEND\r\n`);
  });

  it("a fix's copy does not overwrite a write that reached the node after its item was read", async function () {
    c = await startCluster({ nodes: 2, relays: [0] });
    client = await MemcacheClient.connect(c.port);
    const k = keyOnReplicas(c, 'crossed', [0, 1]);
    expect(await client.command(`set ${k} 0 0 2`, 'v1')).to.equal('STORED\r\n');
    const relay = c.relays.get(0)!;
    relay.intercept(`set ${k} 0 0 2\r\nv2\r\n`, 'SERVER_ERROR out of memory storing object\r\n');
    // Just before the fix's copy of v2 reaches node 0, another process (one that had node 1
    // down, say) writes v9 there: the newer write must stand.
    let crossed = false;
    relay.before(`ms ${k} 2 F0 T0`, async () => {
      const d = await direct(c!.nodes[0]!);
      expect(await d.command(`set ${k} 0 0 2`, 'v9')).to.equal('STORED\r\n');
      d.close();
      crossed = true;
    });
    expect(await client.command(`set ${k} 0 0 2`, 'v2')).to.equal('STORED\r\n');
    await until(
      'the fix copied',
      3000,
      async () => crossed && (await stat('proxy_node_0_outage_log')) === '0',
    );
    expect((await peek(c.nodes[0]!, k))?.value).to.equal('v9');
  });

  it("another process's fence ranks by the stamp of the write it missed: the copy that missed the older write is kept", async function () {
    c = await startCluster({ nodes: 2, relays: [1] });
    client = await MemcacheClient.connect(c.port);
    const k = keyOnReplicas(c, 'stamped', [0, 1]);
    expect(await client.command(`set ${k} 0 0 2`, 'v1')).to.equal('STORED\r\n');
    // Node 1 misses v2 here (it never gets it); node 0, another process says, missed one of
    // its writes 10 s ago. The fix of node 1 waits until its path is open again.
    const relay = c.relays.get(1)!;
    relay.holed = true;
    expect(await client.command(`set ${k} 0 0 2`, 'v2')).to.equal('STORED\r\n');
    c.proxy.peer().fence(0, k, (Date.now() - 10_000) * 1024);
    relay.holed = false;
    await until('node 1 fixed and serving', 5000, async () => {
      const s = await statsOf(client!);
      return (
        s.get('proxy_node_1_up') === '1' &&
        s.get('proxy_node_1_outage_log') === '0' &&
        s.get('proxy_node_0_fenced_keys') === '0'
      );
    });
    expect((await peek(c.nodes[0]!, k))?.value).to.equal('v2');
    expect((await peek(c.nodes[1]!, k))?.value).to.equal('v2');
    expect(await client.command(`get ${k}`)).to.equal(`VALUE ${k} 0 2\r\nv2\r\nEND\r\n`);
  });

  it('a delete that misses only on a copy not trusted answers SERVER_ERROR, not NOT_FOUND', async function () {
    c = await startCluster({ nodes: 2 });
    client = await MemcacheClient.connect(c.port);
    const k = keyOnReplicas(c, 'untrusted', [0, 1]);
    expect(await client.command(`set ${k} 0 0 2`, 'v1')).to.equal('STORED\r\n');
    // Node 1's copy is gone and not trusted (another process fenced it); node 0 then hangs.
    const d = await direct(c.nodes[1]!);
    expect(await d.command(`md ${k}`)).to.equal('HD\r\n');
    d.close();
    c.proxy.peer().fence(1, k, Date.now() * 1024);
    c.nodes[0]!.pause();
    paused.push(c.nodes[0]!);
    // The item may be on node 0: node 1's miss proves nothing.
    expect(await client.command(`delete ${k}`)).to.equal(NO_REPLICA);
    expect(await client.command(`touch ${k} 100`)).to.equal(NO_REPLICA);
  });

  it('reads pipelined behind a write that failed on their node read the write from the other replica', async function () {
    c = await startCluster({ nodes: 2, relays: [0] });
    client = await MemcacheClient.connect(c.port);
    const k = keyOnReplicas(c, 'ryw', [0, 1]);
    const k2 = keyOnReplicas(c, 'ryw2', [0, 1]);
    expect(await client.command(`set ${k} 0 0 2`, 'v1')).to.equal('STORED\r\n');
    expect(await client.command(`set ${k2} 0 0 2`, 'w1')).to.equal('STORED\r\n');
    const relay = c.relays.get(0)!;
    relay.intercept(`set ${k} 0 0 2\r\nv2\r\n`, 'SERVER_ERROR out of memory storing object\r\n');
    // Every read is on node 0's lane behind the set, sent before its error reply came back.
    const replies = await client.pipeline([
      [`set ${k} 0 0 2`, 'v2'],
      `get ${k}`,
      `gets ${k}`,
      `mg ${k} v`,
      `get ${k2} ${k}`,
    ]);
    expect(relay.intercepted, 'the set failed on node 0').to.equal(1);
    expect(replies[0]).to.equal('STORED\r\n');
    expect(replies[1]).to.equal(`VALUE ${k} 0 2\r\nv2\r\nEND\r\n`);
    expect(replies[2]).to.match(new RegExp(`^VALUE ${k} 0 2 \\d+\r\nv2\r\nEND\r\n$`));
    expect(replies[3]).to.equal('VA 2\r\nv2\r\n');
    expect(replies[4]).to.equal(`VALUE ${k2} 0 2\r\nw1\r\nVALUE ${k} 0 2\r\nv2\r\nEND\r\n`);
    // The background fix brings node 0 in line.
    await until('node 0 fixed', 3000, async () => (await peek(c!.nodes[0]!, k))?.value === 'v2');
  });

  it('flush_all with every node down, and me with no replica, do not count proxy_unavailable', async function () {
    c = await startCluster({ nodes: 2 });
    client = await MemcacheClient.connect(c.port);
    await c.kill(0);
    await c.kill(1);
    await until('both down', 3000, async () => {
      await client!.command('get x');
      return !c!.proxy.nodes[0]!.isUp && !c!.proxy.nodes[1]!.isUp;
    });
    const before = Number(await stat('proxy_unavailable'));
    expect(await client.command('flush_all')).to.equal(NO_REPLICA);
    expect(await client.command('me x')).to.equal(NO_REPLICA);
    expect(Number(await stat('proxy_unavailable'))).to.equal(before);
  });
});
