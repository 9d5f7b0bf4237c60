/**
 * The read and write rules at their edges, each against real memcached
 * nodes (a relay stands in only where a node must lose or fail one request
 * while staying healthy):
 *
 * - a key with a missed write pending on a node that stays in service is
 *   not read from that node until it is fixed;
 * - a miss is answered only when every replica answered miss, or those that
 *   did are known complete;
 * - mg fails over exactly as get does.
 */

import { expect } from 'chai';
import {
  type Cluster,
  MemcacheClient,
  direct,
  keyOnReplicas,
  peek,
  startCluster,
  statsOf,
} from '../helpers/proxy.js';
import type { Memcached } from '../helpers/memcached.js';
import { until } from '../helpers/wait.js';

const NO_REPLICA = 'SERVER_ERROR no replica available\r\n';

describe('consistency: pending fixes, the miss rule, one read rule for get and mg', function () {
  this.timeout(20000);
  let c: Cluster | null = null;
  let client: MemcacheClient | null = null;
  /** Nodes stopped with SIGSTOP, resumed before the cluster stops. */
  const paused: Memcached[] = [];

  afterEach(async () => {
    client?.close();
    client = null;
    for (const n of paused) n.resume();
    paused.length = 0;
    await c?.stop();
    c = null;
  });

  /** Whether the proxy knows node i as the process running there now. */
  function seenRestarted(i: number): boolean {
    return c!.proxy.nodes[i]!.identity?.pid === c!.nodes[i]!.pid && c!.proxy.nodes[i]!.isUp;
  }

  async function stat(name: string): Promise<string | undefined> {
    return (await statsOf(client!)).get(name);
  }

  describe('a write that fails on a node that stays in service', function () {
    for (const [what, action] of [
      ['times out', 'drop'],
      ['gets an error reply', 'SERVER_ERROR out of memory storing object\r\n'],
    ] as const) {
      it(`a delete that ${what} there is not undone by a read from it before its fix`, async function () {
        c = await startCluster({ nodes: 2, relays: [0] });
        client = await MemcacheClient.connect(c.port);
        const k = keyOnReplicas(c, 'pend-del', [0, 1]);
        expect(await client.command(`set ${k} 0 0 2`, 'v1')).to.equal('STORED\r\n');
        c.relays.get(0)!.intercept(`delete ${k}\r\n`, action);
        expect(await client.command(`delete ${k}`)).to.equal('DELETED\r\n');
        expect(c.relays.get(0)!.intercepted, 'the delete never reached node 0').to.equal(1);
        expect(c.proxy.nodes[0]!.isUp, 'node 0 is still in service').to.equal(true);
        // The logout must hold at once, before the background fix of node 0.
        expect(await client.command(`get ${k}`)).to.equal('END\r\n');
        expect(await client.command(`mg ${k} v`)).to.equal('EN\r\n');
        // The fix then brings node 0 in line.
        await until(
          'the fix of node 0',
          3000,
          async () => (await stat('proxy_node_0_outage_log')) === '0',
        );
        expect(await peek(c.nodes[0]!, k)).to.equal(null);
      });
    }

    it('a set that times out there is not read back old from it before its fix', async function () {
      c = await startCluster({ nodes: 2, relays: [0] });
      client = await MemcacheClient.connect(c.port);
      const k = keyOnReplicas(c, 'pend-set', [0, 1]);
      expect(await client.command(`set ${k} 0 0 2`, 'v1')).to.equal('STORED\r\n');
      c.relays.get(0)!.intercept(`set ${k} 0 0 2\r\nv2\r\n`, 'drop');
      expect(await client.command(`set ${k} 0 0 2`, 'v2')).to.equal('STORED\r\n');
      expect(c.relays.get(0)!.intercepted).to.equal(1);
      expect(c.proxy.nodes[0]!.isUp).to.equal(true);
      expect(await client.command(`get ${k}`)).to.equal(`VALUE ${k} 0 2\r\nv2\r\nEND\r\n`);
      // Nor does it decide a conditional write on its old copy.
      expect(await client.command(`append ${k} 0 0 1`, '!')).to.equal('STORED\r\n');
      expect(await client.command(`get ${k}`)).to.equal(`VALUE ${k} 0 3\r\nv2!\r\nEND\r\n`);
      await until(
        'the fix of node 0',
        3000,
        async () => (await stat('proxy_node_0_outage_log')) === '0',
      );
      expect((await peek(c.nodes[0]!, k))?.value).to.equal('v2!');
    });
  });

  describe('a miss is answered only when it is known true', function () {
    it('primary down, the other replica restarted empty and not re-synced: SERVER_ERROR, not a miss', async function () {
      // No re-sync: the restarted node stays incomplete.
      c = await startCluster({ nodes: 2, recovery: { resyncRate: 0 } });
      client = await MemcacheClient.connect(c.port);
      const k = keyOnReplicas(c, 'lie', [0, 1]);
      const k2 = keyOnReplicas(c, 'lie2', [1, 0]);
      expect(await client.command(`set ${k} 0 0 1`, 'a')).to.equal('STORED\r\n');
      expect(await client.command(`set ${k2} 0 0 1`, 'b')).to.equal('STORED\r\n');
      expect(await stat('proxy_node_1_complete')).to.equal('1');
      const probe = keyOnReplicas(c, 'probe', [1, 0]); // never written: reading it repairs nothing
      await c.restart(1);
      await until('node 1 seen restarted', 5000, async () => {
        await client!.command(`get ${probe}`); // traffic to node 1, so msproxy reconnects
        return seenRestarted(1);
      });
      expect(await stat('proxy_node_1_complete')).to.equal('0');
      await c.kill(0);
      // Both keys' only copy was on node 0; node 1 is empty and cannot prove the misses.
      expect(await client.command(`get ${k}`)).to.equal(NO_REPLICA);
      expect(await client.command(`gets ${k2}`)).to.equal(NO_REPLICA);
      expect(await client.command(`get ${k} ${k2}`)).to.equal(NO_REPLICA);
      expect(await client.command(`mg ${k} v`)).to.equal(NO_REPLICA);
      expect(await client.command(`gat 100 ${k}`)).to.equal(NO_REPLICA);
    });

    it('once its re-sync is done the node is complete: keys are there, and a true miss is a miss', async function () {
      c = await startCluster({ nodes: 2, recovery: { resyncRate: 100000 } });
      client = await MemcacheClient.connect(c.port);
      const k = keyOnReplicas(c, 'full', [0, 1]);
      expect(await client.command(`set ${k} 0 0 1`, 'a')).to.equal('STORED\r\n');
      const runs = c.proxy.recovery.resyncRuns(1);
      await c.restart(1);
      await until('node 1 re-synced and complete', 8000, async () => {
        await client!.command(`get ${k}`);
        const s = await statsOf(client!);
        return (
          c!.proxy.recovery.resyncRuns(1) > runs &&
          s.get('proxy_node_1_resync') === 'done' &&
          s.get('proxy_node_1_complete') === '1'
        );
      });
      await c.kill(0);
      expect(await client.command(`get ${k}`)).to.equal(`VALUE ${k} 0 1\r\na\r\nEND\r\n`);
      const absent = keyOnReplicas(c, 'never-written', [0, 1]);
      expect(await client.command(`get ${absent}`)).to.equal('END\r\n');
      expect(await client.command(`mg ${absent} v`)).to.equal('EN\r\n');
    });
  });

  describe('mg fails over as get does', function () {
    it('primary misses (restarted empty) and the other replica hangs: both SERVER_ERROR', async function () {
      c = await startCluster({ nodes: 2, recovery: { resyncRate: 0 } });
      client = await MemcacheClient.connect(c.port);
      const k = keyOnReplicas(c, 'hang', [0, 1]);
      expect(await client.command(`set ${k} 0 0 1`, 'a')).to.equal('STORED\r\n');
      const probe = keyOnReplicas(c, 'probe', [0, 1]); // never written: reading it repairs nothing
      await c.restart(0);
      await until('node 0 seen restarted', 5000, async () => {
        await client!.command(`get ${probe}`);
        return seenRestarted(0);
      });
      expect(await stat('proxy_node_0_complete')).to.equal('0');
      expect(await peek(c.nodes[0]!, k)).to.equal(null);
      c.nodes[1]!.pause();
      paused.push(c.nodes[1]!);
      expect(await client.command(`get ${k}`)).to.equal(NO_REPLICA);
      expect(await client.command(`mg ${k} v`)).to.equal(NO_REPLICA);
    });

    it('an error reply from the primary fails mg over to the next replica', async function () {
      c = await startCluster({ nodes: 2, relays: [0] });
      client = await MemcacheClient.connect(c.port);
      const k = keyOnReplicas(c, 'err', [0, 1]);
      expect(await client.command(`set ${k} 5 0 2`, 'hi')).to.equal('STORED\r\n');
      c.relays.get(0)!.intercept(`mg ${k} s v f\r\n`, 'SERVER_ERROR out of memory\r\n');
      expect(await client.command(`mg ${k} s v f`)).to.equal('VA 2 s2 f5\r\nhi\r\n');
      expect(c.relays.get(0)!.intercepted).to.equal(1);
      c.relays.get(0)!.intercept(`get ${k}\r\n`, 'SERVER_ERROR out of memory\r\n');
      expect(await client.command(`get ${k}`)).to.equal(`VALUE ${k} 5 2\r\nhi\r\nEND\r\n`);
      expect(c.relays.get(0)!.intercepted).to.equal(2);
    });

    it('mg and get look past the second replica, and repair the ones that missed', async function () {
      c = await startCluster({ nodes: 3, replicas: 3 });
      client = await MemcacheClient.connect(c.port);
      const k = keyOnReplicas(c, 'third', [0, 1, 2]);
      const k2 = keyOnReplicas(c, 'third2', [0, 1, 2]);
      const d2 = await direct(c.nodes[2]!);
      expect(await d2.command(`set ${k} 3 0 4`, 'only')).to.equal('STORED\r\n');
      expect(await d2.command(`set ${k2} 3 0 4`, 'also')).to.equal('STORED\r\n');
      d2.close();
      expect(await client.command(`mg ${k} v f`)).to.equal('VA 4 f3\r\nonly\r\n');
      expect(await client.command(`get ${k2}`)).to.equal(`VALUE ${k2} 3 4\r\nalso\r\nEND\r\n`);
      for (const i of [0, 1]) {
        await until(
          `read repair on node ${i}`,
          2000,
          async () => (await peek(c!.nodes[i]!, k)) !== null,
        );
        expect((await peek(c.nodes[i]!, k))?.value).to.equal('only');
        expect((await peek(c.nodes[i]!, k2))?.value).to.equal('also');
      }
    });
  });
});
