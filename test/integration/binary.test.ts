/**
 * The binary protocol on msproxy's port, against real memcached nodes:
 * memccapable -b (libmemcached's conformance tests), a differential test
 * (the same request streams, valid and malformed, to a lone memcached and to
 * msproxy, with the same responses required, cas values aside), keys of any
 * bytes, pipelines of quiet commands, and the replication rules for binary
 * clients (both replicas written, reads fail over, cas tokens).
 */

import { execFile } from 'node:child_process';
import { expect } from 'chai';
import { Op } from '../../src/protocol/binary.js';
import {
  type Response,
  exchange,
  expExtras,
  incrExtras,
  request,
  type RequestSpec,
  setExtras,
  show,
} from '../helpers/binary.js';
import { Memcached } from '../helpers/memcached.js';
import { type Cluster, keyOnReplicas, peek, startCluster } from '../helpers/proxy.js';

function memccapable(port: number): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(
      'memccapable',
      ['-b', '-t', '2', '-h', '127.0.0.1', '-p', String(port)],
      { timeout: 60_000 },
      (err, stdout, stderr) =>
        resolve({ code: err === null ? 0 : Number(err.code ?? 1), out: stdout + stderr }),
    );
  });
}

/** Responses as text, cas values shown only as zero or not. */
const shown = (rs: Response[]): string[] => rs.map((r) => show(r));

describe('binary protocol', function () {
  this.timeout(30000);
  let c: Cluster;
  let lone: Memcached;

  before(async () => {
    c = await startCluster({ nodes: 3 });
    lone = await Memcached.start();
  });
  after(async () => {
    await c.stop();
    await lone.kill();
  });

  it('passes memccapable -b (all 27 binary tests), as memcached does', async function () {
    const direct = await memccapable(lone.port);
    expect(direct.out, direct.out).to.contain('All tests passed');
    const proxied = await memccapable(c.port);
    expect(proxied.code, proxied.out).to.equal(0);
    expect(proxied.out).to.contain('All tests passed');
    expect(proxied.out.match(/\[pass\]/g)?.length).to.equal(27);
  });

  describe('answers as memcached answers (differential)', function () {
    let n = 0;
    /** Send `specs` (keys get a unique prefix) to both; expect the same responses. */
    async function same(
      name: string,
      specs: (RequestSpec | Buffer)[],
      expectPackets: number,
    ): Promise<Response[]> {
      const prefix = `b${n++}_`;
      const bytes = specs.map((s) =>
        Buffer.isBuffer(s)
          ? s
          : request({ ...s, key: s.key === undefined ? undefined : prefix + String(s.key) }),
      );
      const [a, b] = await Promise.all([
        exchange(lone.port, bytes, { expect: expectPackets }),
        exchange(c.port, bytes, { expect: expectPackets }),
      ]);
      const withPrefix = (rs: Response[]): string[] =>
        shown(rs).map((t) => t.split(prefix).join('#'));
      expect(withPrefix(b.packets), `${name}: msproxy vs memcached`).to.deep.equal(
        withPrefix(a.packets),
      );
      expect(b.closed, `${name}: closed`).to.equal(a.closed);
      expect(a.packets.length, `${name}: packets`).to.equal(expectPackets);
      return b.packets;
    }

    const set = (
      key: string,
      value: string,
      flags = 0,
      op: number = Op.SET,
      opaque = 1,
    ): RequestSpec => ({
      opcode: op,
      key,
      extras: setExtras(flags, 0),
      value,
      opaque,
    });

    it('get, getk, getq, getkq: hits and misses', async function () {
      await same(
        'gets',
        [
          set('a', 'hello', 42),
          { opcode: Op.GET, key: 'a', opaque: 2 },
          { opcode: Op.GETK, key: 'a', opaque: 3 },
          { opcode: Op.GET, key: 'zz', opaque: 4 },
          { opcode: Op.GETK, key: 'zz', opaque: 5 },
          { opcode: Op.GETQ, key: 'zz', opaque: 6 },
          { opcode: Op.GETKQ, key: 'zz', opaque: 7 },
          { opcode: Op.GETQ, key: 'a', opaque: 8 },
          { opcode: Op.GETKQ, key: 'a', opaque: 9 },
          { opcode: Op.NOOP, opaque: 10 },
        ],
        8,
      );
    });

    it('a hundred getkq and a noop: hits only, in order, then the noop', async function () {
      const specs: RequestSpec[] = [];
      for (let i = 0; i < 100; i += 3) specs.push({ ...set(`k${i}`, `v${i}`), opcode: Op.SETQ });
      for (let i = 0; i < 100; i++) specs.push({ opcode: Op.GETKQ, key: `k${i}`, opaque: i });
      specs.push({ opcode: Op.NOOP, opaque: 1000 });
      const got = await same('getkq x100', specs, 35);
      expect(got.at(-1)!.opcode).to.equal(Op.NOOP);
    });

    it('add, replace, append, prepend and their quiet forms', async function () {
      await same(
        'stores',
        [
          set('r', 'x', 0, Op.REPLACE, 1),
          set('a', 'one', 3, Op.ADD, 2),
          set('a', 'two', 0, Op.ADD, 3),
          set('a', 'three', 5, Op.REPLACE, 4),
          { opcode: Op.APPEND, key: 'a', value: '+t', opaque: 5 },
          { opcode: Op.PREPEND, key: 'a', value: 'p+', opaque: 6 },
          { opcode: Op.APPEND, key: 'missing', value: 'x', opaque: 7 },
          { opcode: Op.PREPENDQ, key: 'missing', value: 'x', opaque: 8 },
          { ...set('a', 'again', 0, Op.ADDQ, 9) },
          { ...set('a', 'quiet', 9, Op.SETQ, 10) },
          { ...set('q', 'x', 0, Op.REPLACEQ, 11) },
          { opcode: Op.APPENDQ, key: 'a', value: '!', opaque: 12 },
          { opcode: Op.GET, key: 'a', opaque: 13 },
        ],
        11,
      );
    });

    it('delete, incr, decr (initial value, no-create, non-numeric), touch, gat', async function () {
      await same(
        'counters',
        [
          { opcode: Op.INCREMENT, key: 'n', extras: incrExtras(5n, 10n, 0), opaque: 1 },
          { opcode: Op.INCREMENT, key: 'n', extras: incrExtras(5n, 10n, 0), opaque: 2 },
          { opcode: Op.DECREMENT, key: 'n', extras: incrExtras(100n, 0n, 0), opaque: 3 },
          { opcode: Op.INCREMENT, key: 'none', extras: incrExtras(1n, 0n, 0xffffffff), opaque: 4 },
          { opcode: Op.DECREMENTQ, key: 'n', extras: incrExtras(1n, 0n, 0), opaque: 5 },
          {
            opcode: Op.INCREMENTQ,
            key: 'none2',
            extras: incrExtras(1n, 0n, 0xffffffff),
            opaque: 6,
          },
          set('s', 'abc', 0, Op.SET, 7),
          { opcode: Op.INCREMENT, key: 's', extras: incrExtras(1n, 0n, 0), opaque: 8 },
          {
            opcode: Op.INCREMENT,
            key: 'n',
            extras: incrExtras(18446744073709551615n, 0n, 0),
            opaque: 9,
          },
          { opcode: Op.TOUCH, key: 's', extras: expExtras(100), opaque: 10 },
          { opcode: Op.TOUCH, key: 'zz', extras: expExtras(100), opaque: 11 },
          { opcode: Op.GAT, key: 's', extras: expExtras(100), opaque: 12 },
          { opcode: Op.GATK, key: 's', extras: expExtras(100), opaque: 13 },
          { opcode: Op.GATQ, key: 'zz', extras: expExtras(100), opaque: 14 },
          { opcode: Op.GATKQ, key: 's', extras: expExtras(100), opaque: 15 },
          { opcode: Op.DELETE, key: 's', opaque: 16 },
          { opcode: Op.DELETE, key: 's', opaque: 17 },
          { opcode: Op.DELETEQ, key: 's', opaque: 18 },
          { opcode: Op.DELETEQ, key: 'n', opaque: 19 },
          { opcode: Op.NOOP, opaque: 20 },
        ],
        17,
      );
    });

    it('version, noop, flush, flushq, verbosity (unknown to memcached), quitq', async function () {
      await same(
        'admin',
        [
          { opcode: Op.VERSION, opaque: 1 },
          { opcode: Op.NOOP, opaque: 2 },
          // memcached skips the body length again after the extras: 4 bytes of filler.
          { opcode: 0x1b, extras: expExtras(1), opaque: 3 },
          Buffer.from('fill'),
          { opcode: Op.FLUSHQ, opaque: 4 },
          { opcode: Op.NOOP, opaque: 5 },
          { opcode: Op.QUITQ, opaque: 6 },
          { opcode: Op.NOOP, opaque: 7 },
        ],
        4,
      );
      await same(
        'quit',
        [
          { opcode: Op.QUIT, opaque: 1 },
          { opcode: Op.NOOP, opaque: 2 },
        ],
        1,
      );
    });

    it("stat groups: settings are msproxy's own, per-node groups are empty, others not found", async function () {
      await same('an unknown group', [{ opcode: Op.STAT, key: 'bogus', opaque: 1 }], 1);
      // Groups whose answer does not depend on the items stored: as memcached answers them.
      for (const group of ['detail on', 'detail off', 'detail dump', 'conns', 'cachedump 1 1']) {
        const ask = request({ opcode: Op.STAT, key: group, opaque: 3 });
        const [a, b] = await Promise.all([
          exchange(lone.port, ask, { expect: 1 }),
          exchange(c.port, ask, { expect: 1 }),
        ]);
        expect(shown(b.packets), group).to.deep.equal(shown(a.packets));
      }
      const stat = async (group: string): Promise<Response[]> =>
        (await exchange(c.port, request({ opcode: Op.STAT, key: group, opaque: 9 }), { expect: 1 }))
          .packets;
      const settings = await stat('settings');
      const rows = new Map(settings.map((r) => [r.key.toString(), r.value.toString()]));
      expect(settings.at(-1)!.key.length, 'ends with an empty packet').to.equal(0);
      expect(settings.every((r) => r.status === 0 && r.opaque === 9)).to.equal(true);
      expect(rows.get('tcpport')).to.equal(String(c.port));
      expect(rows.get('binding_protocol')).to.equal('auto-negotiate');
      expect(rows.get('item_size_max')).to.equal(String(1024 * 1024));
      expect(rows.get('proxy_replicas')).to.equal('2');
      // Every name not msproxy's own is one memcached uses for the same setting.
      const theirs = new Set(
        (
          await exchange(lone.port, request({ opcode: Op.STAT, key: 'settings' }), { expect: 1 })
        ).packets.map((r) => r.key.toString()),
      );
      for (const name of rows.keys()) {
        if (name !== '' && !name.startsWith('proxy_')) expect(theirs, name).to.include(name);
      }
      for (const group of ['items', 'slabs', 'detail on', 'reset']) {
        expect(shown(await stat(group)), group).to.deep.equal([
          'op=10 st=0 opq=9 ext= key="" val=""',
        ]);
      }
      expect(shown(await stat('sizes'))).to.deep.equal([
        'op=10 st=0 opq=9 ext= key="sizes_status" val="disabled"',
        'op=10 st=0 opq=9 ext= key="" val=""',
      ]);
      // No size histogram to turn on; memcached sends this one with no empty packet after it.
      expect(shown(await stat('sizes_enable'))).to.deep.equal([
        'op=10 st=0 opq=9 ext= key="sizes_status" val="disabled"',
      ]);
    });

    it('malformed requests: the same answer, and the connection closes where memcached closes it', async function () {
      const noop = request({ opcode: Op.NOOP, opaque: 77 });
      await same(
        'bad magic mid-stream',
        [{ opcode: Op.NOOP, opaque: 1 }, request({ opcode: Op.NOOP, magic: 0x81 }), noop],
        1,
      );
      await same(
        'key longer than body',
        [request({ opcode: Op.GET, key: 'abc', bodyLength: 2 }), noop],
        1,
      );
      await same(
        'extras of the wrong length',
        [{ opcode: Op.GET, key: 'k', extras: expExtras(1), opaque: 3 }, noop],
        1,
      );
      await same('incr without extras', [{ opcode: Op.INCREMENT, key: 'k', opaque: 4 }, noop], 1);
      await same('a 251-byte key', [{ opcode: Op.GET, key: 'k'.repeat(251), opaque: 5 }, noop], 1);
      await same('unknown opcode', [{ opcode: 0x42, value: 'junk', opaque: 6 }, noop], 2);
      await same(
        'a value over the item size, then the stream goes on',
        [
          set('big', 'x'.repeat(1024 * 1024 + 10), 0, Op.SET, 7),
          { opcode: Op.GET, key: 'big', opaque: 8 },
          noop,
        ],
        3,
      );
    });

    it('a header split across reads is read whole', async function () {
      const prefix = `split${n++}_`;
      const bytes = request({
        opcode: Op.SET,
        key: `${prefix}k`,
        extras: setExtras(1, 0),
        value: 'v',
        opaque: 9,
      });
      const pieces = [
        bytes.subarray(0, 5),
        bytes.subarray(5, 23),
        bytes.subarray(23, 30),
        bytes.subarray(30),
      ];
      const r = await exchange(c.port, pieces, { expect: 1 });
      expect(shown(r.packets)).to.deep.equal(['op=1 st=0 opq=9 ext= key="" val="" cas=*']);
    });
  });

  it('keys of any bytes are stored byte-exact, and text clients see the same item', async function () {
    const keys = [
      'a b',
      'line\r\nbreak',
      'nul\0byte',
      'tab\there',
      '\u00ff\u00fe',
      'get x\r\nset y 0 0 1',
    ];
    for (const key of keys) {
      const r = await exchange(
        c.port,
        [
          request({ opcode: Op.SET, key, extras: setExtras(3, 0), value: 'V', opaque: 1 }),
          request({ opcode: Op.GETK, key, opaque: 2 }),
        ],
        { expect: 2 },
      );
      expect(shown(r.packets), JSON.stringify(key)).to.deep.equal([
        'op=1 st=0 opq=1 ext= key="" val="" cas=*',
        `op=c st=0 opq=2 ext=00000003 key=${JSON.stringify(key)} val="V" cas=*`,
      ]);
      // Each replica holds exactly that key, not another command's.
      const set = c.proxy.ring.replicas(Buffer.from(key, 'latin1'), 2);
      for (const i of set)
        expect((await peek(c.nodes[i]!, Buffer.from(key, 'latin1')))?.value).to.equal('V');
    }
  });

  it('binary writes reach both replicas, reads fail over, and cas tokens work across them', async function () {
    const cluster = await startCluster({ nodes: 2 });
    try {
      const key = keyOnReplicas(cluster, 'bincas', [0, 1]);
      const r1 = await exchange(
        cluster.port,
        [request({ opcode: Op.SET, key, extras: setExtras(0, 0), value: 'one', opaque: 1 })],
        { expect: 1 },
      );
      const cas = r1.packets[0]!.cas;
      expect(cas).to.not.equal(0n);
      for (const node of cluster.nodes) expect((await peek(node, key))?.value).to.equal('one');
      // A stale cas is refused, the current one accepted.
      const r2 = await exchange(
        cluster.port,
        [
          request({
            opcode: Op.SET,
            key,
            extras: setExtras(0, 0),
            value: 'two',
            opaque: 2,
            cas: cas + 1n,
          }),
          request({ opcode: Op.SET, key, extras: setExtras(0, 0), value: 'two', opaque: 3, cas }),
        ],
        { expect: 2 },
      );
      expect(r2.packets.map((p) => p.status)).to.deep.equal([0x0002, 0]);
      await cluster.kill(0);
      const r3 = await exchange(cluster.port, [request({ opcode: Op.GET, key, opaque: 4 })], {
        expect: 1,
      });
      expect(shown(r3.packets)).to.deep.equal([
        'op=0 st=0 opq=4 ext=00000000 key="" val="two" cas=*',
      ]);
    } finally {
      await cluster.stop();
    }
  });
});
