/**
 * msproxy end to end: a Proxy in front of three real memcached 1.6.18 nodes
 * with replicas 2, driven over TCP with the text protocol, and checked
 * against a lone memcached (same bytes in, same bytes out where semantics
 * allow) and against the nodes themselves (where each key lives).
 */

import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { expect } from 'chai';
import { parseConfig } from '../../src/config.js';
import { Ring } from '../../src/routing/ring.js';
import { PROTOCOL_VERSION, VERSION } from '../../src/version.js';
import { Memcached, sleep } from '../helpers/memcached.js';
import { until } from '../helpers/wait.js';
import {
  bytesReadFrom,
  type Cluster,
  MemcacheClient,
  direct,
  inflightOn,
  keysOn,
  peek,
  replyText,
  type SideBySide,
  startCluster,
  startSideBySide,
  statsOf,
} from '../helpers/proxy.js';

const CAS_SHIFT = 56n;
const CAS_MASK = (1n << CAS_SHIFT) - 1n;

/** A token as the proxy would issue it for node `node` (replicas > 1). */
function tokenFor(node: number, cas: bigint): bigint {
  return (BigInt(node + 1) << CAS_SHIFT) | (cas & CAS_MASK);
}

/** Cas tokens differ by design: blank them in VALUE lines and meta c flags. */
function normCas(s: string): string {
  return s
    .replace(/^(VALUE \S+ \d+ \d+) \d+\r$/gm, '$1 <cas>\r')
    .replace(/^((?:VA \d+|HD|EN|NF|NS|EX)(?: \S+)*?) c\d+/gm, '$1 c<cas>');
}

function uniq(prefix: string): string {
  return `${prefix}:${randomBytes(5).toString('hex')}`;
}

function ringOf(c: Cluster): Ring {
  return new Ring(c.nodes.map((n) => ({ label: `127.0.0.1:${n.port}`, weight: 1 })));
}

/** The replica nodes of a key (config indexes, primary first) and the node that is not one. */
function placement(
  c: Cluster,
  key: string | Buffer,
): { primary: number; backup: number; other: number } {
  const order = ringOf(c).order(typeof key === 'string' ? Buffer.from(key, 'latin1') : key);
  return { primary: order[0]!, backup: order[1]!, other: order[2]! };
}

/** Find a key (with a prefix) whose primary and backup are the given nodes. */
function keyOn(c: Cluster, prefix: string, primary: number, backup?: number): string {
  const ring = ringOf(c);
  for (let i = 0; i < 100000; i++) {
    const k = `${prefix}:${i}`;
    const o = ring.order(Buffer.from(k));
    if (o[0] === primary && (backup === undefined || o[1] === backup)) return k;
  }
  throw new Error('no such key');
}

// --------------------------------------------------------------------------

describe('proxy: classic commands answer as memcached does', function () {
  let x: SideBySide;
  let c: Cluster;
  let p: MemcacheClient;
  let d: MemcacheClient;

  before(async function () {
    x = await startSideBySide();
    ({ c, p, d } = x);
  });

  after(async function () {
    await x?.stop();
  });

  /** Run the same bytes against the lone memcached and the proxy. */
  const both = (script: string): Promise<[string, string]> => x.both(script);

  it('set, add, replace, append, prepend and get', async function () {
    const [a, b] = await both(
      'set s:a 5 0 3\r\nabc\r\nget s:a\r\n' +
        'add s:a 0 0 1\r\nx\r\nadd s:b 7 0 2\r\nbb\r\n' +
        'replace s:a 9 0 2\r\nzz\r\nreplace s:none 0 0 1\r\nx\r\n' +
        'append s:a 1 0 2\r\n12\r\nprepend s:a 2 0 2\r\n00\r\n' +
        'append s:none 0 0 1\r\nx\r\nprepend s:none 0 0 1\r\nx\r\n' +
        'set s:empty 0 0 0\r\n\r\nset s:bin 4294967295 0 4\r\n\x00\r\n\xff\r\n' +
        'get s:a\r\nget s:b\r\nget s:none\r\nget s:empty s:bin\r\n',
    );
    expect(b).to.equal(a);
    expect(a).to.contain('VALUE s:a 9 6\r\n00zz12\r\n');
  });

  it('multi-get with repeated keys and misses', async function () {
    await both(
      'set g:1 1 0 1\r\n1\r\nset g:2 2 0 1\r\n2\r\nset g:3 3 0 1\r\n3\r\nset g:4 4 0 1\r\n4\r\n',
    );
    const [a, b] = await both(
      'get g:4 g:x g:1 g:2 g:1 g:y g:3 g:4 g:4\r\nget g:x g:y\r\nbget g:2 g:1\r\n',
    );
    expect(b).to.equal(a);
  });

  it('delete, incr, decr', async function () {
    // Three batches: pipelining reads with writes to the same keys is the ordering suite's subject.
    const batches = [
      'set n:a 0 0 2\r\n10\r\nincr n:a 5\r\ndecr n:a 3\r\ndecr n:a 100\r\nincr n:a 18446744073709551615\r\n' +
        'set n:max 0 0 20\r\n18446744073709551615\r\nincr n:max 2\r\n' +
        'incr n:none 1\r\ndecr n:none 1\r\nset n:t 0 0 3\r\nabc\r\nincr n:t 1\r\nincr n:a abc\r\n',
      'get n:a n:max n:t\r\n',
      'delete n:a\r\ndelete n:a\r\ndelete n:max 0\r\ndelete n:t 5\r\n',
      'get n:a n:max n:t\r\n',
    ];
    for (const script of batches) {
      const [a, b] = await both(script);
      expect(b, script).to.equal(a);
    }
  });

  it('touch and gat', async function () {
    const [a, b] = await both(
      'set t:a 3 0 1\r\na\r\ntouch t:a 1000\r\ntouch t:none 10\r\ntouch t:a abc\r\n' +
        'gat 1000 t:a t:none t:a\r\ngat 0 t:none\r\ngat abc t:a\r\n',
    );
    expect(b).to.equal(a);
  });

  it('gets, gats and cas: same shape, tokens that work', async function () {
    await both('set cs:a 1 0 1\r\na\r\nset cs:b 2 0 1\r\nb\r\n');
    const [a, b] = await both('gets cs:a cs:none cs:b\r\ngats 100 cs:b cs:a\r\n');
    expect(normCas(b)).to.equal(normCas(a));
    expect(b).to.match(/^VALUE cs:a 1 1 \d+\r\na\r\nVALUE cs:b 2 1 \d+\r\nb\r\nEND\r\n/);
    for (const client of [d, p]) {
      const token = /VALUE cs:a 1 1 (\d+)/.exec(await client.command('gets cs:a'))![1]!;
      const stale = `${BigInt(token) ^ 1n}`;
      const out = await client.script(
        `cas cs:a 5 0 2 ${stale}\r\nxx\r\ncas cs:a 5 0 2 ${token}\r\nyy\r\ncas cs:a 5 0 2 ${token}\r\nzz\r\n` +
          `get cs:a\r\ndelete cs:a\r\ncas cs:a 5 0 2 ${token}\r\nqq\r\n`,
      );
      expect(out, client === p ? 'proxy' : 'memcached').to.equal(
        'EXISTS\r\nSTORED\r\nEXISTS\r\nVALUE cs:a 5 2\r\nyy\r\nEND\r\nDELETED\r\nNOT_FOUND\r\n',
      );
    }
  });

  it('errors: unknown commands, bad lines, bad data chunks, long keys', async function () {
    const [a, b] = await both(
      'bogus\r\nget\r\nset e:a 0 0 abc\r\nset e:a 0 0 1\r\nxyz\r\ndelete e:a 5\r\n' +
        'incr e:a -1\r\ntouch\r\nverbosity\r\nflush_all abc\r\ncas e:a 0 0 1\r\nx\r\nset e:b 0 0 -1\r\n',
    );
    expect(b).to.equal(a);
    expect(a).to.match(
      /^ERROR\r\nERROR\r\nCLIENT_ERROR bad command line format\r\nCLIENT_ERROR bad data chunk\r\n/,
    );
    // A get with a key over 250 bytes comes first in its batch: memcached 1.6.18 throws away the
    // replies it has not yet written when it fails such a get, which no proxy should imitate.
    const long = 'k'.repeat(251);
    const [c1, c2] = await both(
      `get ${long}\r\nset ${long} 0 0 1\r\nx\r\nincr ${long} 1\r\ntouch ${long} 1\r\nmg ${long} v\r\n`,
    );
    expect(c2).to.equal(c1);
  });

  it('a set or ms too large for the cache drops the old item everywhere, as memcached does', async function () {
    // memcached unlinks the old item on a too-large set (noreply too) and ms (any mode), but not
    // on add/replace/append/prepend/cas: a client never reads back what it failed to replace.
    const big = 'x'.repeat(1100 * 1024);
    const n = big.length;
    const keys = ['tl:set', 'tl:setq', 'tl:add', 'tl:app', 'tl:ms', 'tl:msa', 'tl:mse'];
    const script =
      keys.map((k) => `set ${k} 0 0 1\r\n1\r\n`).join('') +
      `set tl:set 0 0 ${n}\r\n${big}\r\nset tl:setq 0 0 ${n} noreply\r\n${big}\r\n` +
      `add tl:add 0 0 ${n}\r\n${big}\r\nappend tl:app 0 0 ${n}\r\n${big}\r\n` +
      `ms tl:ms ${n}\r\n${big}\r\nms tl:msa ${n} MA\r\n${big}\r\nms tl:mse ${n} ME\r\n${big}\r\n` +
      `get ${keys.join(' ')}\r\n`;
    const [a, b] = await both(script);
    expect(b).to.equal(a);
    expect(a.endsWith('VALUE tl:add 0 1\r\n1\r\nVALUE tl:app 0 1\r\n1\r\nEND\r\n'), a).to.equal(
      true,
    );
    for (const k of keys) {
      const { primary, backup } = placement(c, k);
      const kept = k === 'tl:add' || k === 'tl:app' ? '1' : null;
      for (const node of [primary, backup]) {
        expect((await peek(c.nodes[node]!, k))?.value ?? null, `${k} on node ${node}`).to.equal(
          kept,
        );
      }
    }
  });

  it("version answers the plain 1.6 protocol version, msproxy's own is in stats", async function () {
    const v = await p.command('version');
    expect(v).to.equal(`VERSION ${PROTOCOL_VERSION}\r\n`);
    expect(v).to.match(/^VERSION 1\.6\.\d+\r\n$/);
    expect(await d.command('version')).to.match(/^VERSION 1\.6\.\d+\r\n$/);
  });

  it('stats answers STAT lines ended by END', async function () {
    const s = await p.command('stats');
    const lines = s.split('\r\n');
    expect(lines.pop()).to.equal('');
    expect(lines.pop()).to.equal('END');
    expect(lines.length).to.be.greaterThan(5);
    for (const l of lines) expect(l).to.match(/^STAT [a-z0-9_]+ \S+$/);
    const names = lines.map((l) => l.split(' ')[1]);
    for (const n of ['pid', 'uptime', 'version', 'curr_connections', 'cmd_get', 'get_hits']) {
      expect(names).to.include(n);
    }
    expect(lines).to.include(`STAT version ${PROTOCOL_VERSION}`);
    expect(lines).to.include(`STAT proxy_version ${VERSION}`);
  });

  it("stats groups: settings are msproxy's own; the rest answer as memcached does", async function () {
    for (const cmd of ['stats bogus', 'stats detail on', 'stats detail off', 'stats reset']) {
      const [a, b] = await both(`${cmd}\r\n`);
      expect(b, cmd).to.equal(a);
    }
    // reset zeroes the counters, as memcached does.
    await p.command('get r:a r:b');
    expect(await p.command('stats')).to.match(/\r\nSTAT cmd_get [1-9]\d*\r\n/);
    expect(await p.command('stats reset')).to.equal('RESET\r\n');
    expect(await p.command('stats')).to.contain('\r\nSTAT cmd_get 0\r\n');
    // Per-node groups are empty through msproxy (ask the nodes).
    expect(await p.command('stats items')).to.equal('END\r\n');
    expect(await p.command('stats slabs')).to.equal('END\r\n');
    expect(await p.command('stats sizes')).to.equal('STAT sizes_status disabled\r\nEND\r\n');
    const lines = (await p.command('stats settings')).split('\r\n');
    expect(lines.slice(-2)).to.deep.equal(['END', '']);
    const rows = new Map(lines.slice(0, -2).map((l) => [l.split(' ')[1]!, l.split(' ')[2]!]));
    expect(rows.get('tcpport')).to.equal(String(c.port));
    expect(rows.get('maxconns')).to.equal('10000');
    const theirs = (await d.command('stats settings')).split('\r\n').map((l) => l.split(' ')[1]);
    for (const name of rows.keys()) {
      if (!name.startsWith('proxy_')) expect(theirs, name).to.include(name);
    }
  });

  it('verbosity and flush_all', async function () {
    // One step at a time: flush_all pipelined with other commands is the ordering suite's subject.
    const steps = [
      'set f:a 0 0 1\r\na\r\nset f:b 0 0 1\r\nb\r\n',
      'verbosity 1\r\nverbosity 0 noreply\r\nget f:a f:b\r\n',
      'flush_all\r\n',
      'get f:a f:b\r\n',
      'set f:c 0 0 1\r\nc\r\n',
      'flush_all 0\r\n',
      'get f:c\r\n',
      'set f:d 0 0 1\r\nd\r\n',
      'flush_all noreply\r\n',
      'get f:d\r\n',
    ];
    let all = '';
    for (const step of steps) {
      const [a, b] = await both(step);
      expect(b, step).to.equal(a);
      all += a;
    }
    expect(all).to.equal(
      'STORED\r\nSTORED\r\nOK\r\nVALUE f:a 0 1\r\na\r\nVALUE f:b 0 1\r\nb\r\nEND\r\nOK\r\nEND\r\nSTORED\r\nOK\r\nEND\r\nSTORED\r\nEND\r\n',
    );
    // flush_all reached every node, not only one.
    for (const n of c.nodes)
      expect((await keysOn(n, ['f:a', 'f:b', 'f:c', 'f:d'])).size).to.equal(0);
  });
});

// --------------------------------------------------------------------------

describe('proxy: meta commands', function () {
  let x: SideBySide;
  let c: Cluster;
  let p: MemcacheClient;
  let d: MemcacheClient;

  before(async function () {
    x = await startSideBySide();
    ({ c, p, d } = x);
  });

  after(async function () {
    await x?.stop();
  });

  /** Run the same bytes against the lone memcached and the proxy. */
  const both = (script: string): Promise<[string, string]> => x.both(script);

  it('mg, ms, md, ma, mn with v f t k O answer as memcached does', async function () {
    const [a, b] = await both(
      'ms m:1 3 T0 F5\r\nabc\r\nmg m:1 v f t\r\nmg m:1 v f t k O1234\r\nmg m:1 s v\r\nmg m:none v f O2 k\r\n' +
        'ms m:1 2 MA\r\nde\r\nms m:1 2 MP F9\r\nxy\r\nms m:1 1 ME O3 k\r\nz\r\nms m:none 1 MR k\r\nz\r\nmg m:1 v f\r\n' +
        'ms m:2 2\r\n40\r\nma m:2\r\nma m:2 v\r\nma m:2 MD D15 v O7 k\r\nma m:2 v t\r\nma m:none O1 k\r\nma m:none N0 J9 v\r\n' +
        'md m:2 O5 k\r\nmd m:2\r\nmg m:2 v\r\nmn\r\nms m:3 1 I\r\nx\r\nmg m:3 v\r\n',
    );
    expect(b).to.equal(a);
    expect(a).to.contain('VA 3 f5 t-1\r\nabc\r\n');
  });

  it('quiet mode: q hides HD and EN, errors and values still answer, mn answers MN in order', async function () {
    await both('ms q:a 2\r\nqa\r\n');
    const [a, b] = await both(
      'mg q:a v q\r\nmg q:none v q O1 k\r\nmg q:a q k O9\r\nmn\r\n' +
        'ms q:b 2 q\r\nxy\r\nms q:b 2 q ME O4\r\nzz\r\nms q:b 2 MA q\r\n12\r\nmg q:b v q\r\nmn\r\n' +
        'md q:b q\r\nmd q:b q O6\r\nma q:none q O8 k\r\nmg q:b v q\r\nmn\r\nmn\r\n',
    );
    expect(b).to.equal(a);
    expect(b).to.equal(
      'VA 2\r\nqa\r\nHD kq:a O9\r\nMN\r\nNS O4\r\nVA 4\r\nxy12\r\nMN\r\nNF O6\r\nNF O8 kq:none\r\nMN\r\nMN\r\n',
    );
  });

  it('ma with q answers as memcached does (a success is silent even with v; a vivified item answers)', async function () {
    await both('ms mq:n 1\r\n1\r\n');
    const [a, b] = await both(
      'ma mq:n q v\r\nma mq:n q\r\nma mq:viv q N0 J5\r\nma mq:viv2 q N0 J7 v\r\nmg mq:n v\r\nmn\r\n',
    );
    // memcached 1.6.18 answers "HD\r\nVA 1\r\n7\r\nVA 1\r\n3\r\n": a successful ma is silent under q
    // even with v, and an item created by N (autovivify) is answered even under q.
    expect(a).to.equal('HD\r\nVA 1\r\n7\r\nVA 1\r\n3\r\nMN\r\n');
    expect(b).to.equal(a);
  });

  it('base64 keys (b): binary bytes in keys round-trip, k echoes them encoded', async function () {
    const bin = Buffer.from([0x00, 0x01, 0x20, 0xff, 0x0d, 0x0a]).toString('base64');
    const plain = Buffer.from('b64:plain').toString('base64');
    const [a, b] = await both(
      `ms ${bin} 2 b F3\r\nhi\r\nmg ${bin} b v f k\r\nmg ${bin} b k q O1\r\nma ${bin} b\r\n` +
        `ms ${plain} 1 b\r\np\r\nmg ${plain} b v k\r\nget b64:plain\r\n` +
        `md ${bin} b k q\r\nmg ${bin} b v k q\r\nmg ${bin} b v k\r\nmn\r\n`,
    );
    expect(b).to.equal(a);
    expect(b).to.contain(`VA 2 f3 k${bin} b\r\nhi\r\n`);
    // The binary key lives where its decoded bytes hash to.
    const key = Buffer.from([0x00, 0x01, 0x20, 0xff, 0x0d, 0x0a]);
    await p.command(`ms ${bin} 2 b`, 'hi');
    const { primary, backup, other } = placement(c, key);
    expect(await peek(c.nodes[primary]!, key)).to.include({ value: 'hi' });
    expect(await peek(c.nodes[backup]!, key)).to.include({ value: 'hi' });
    expect(await peek(c.nodes[other]!, key)).to.equal(null);
  });

  it('ms ... c returns a cas token that ms ... C accepts (as memcached)', async function () {
    const k = uniq('mc');
    for (const client of [d, p]) {
      const r = await client.command(`ms ${k} 1 c`, 'a');
      const token = /^HD c(\d+)\r\n$/.exec(r)?.[1];
      expect(token, r).to.be.a('string');
      expect(
        await client.command(`ms ${k} 1 C${token}`, 'b'),
        client === p ? 'proxy' : 'memcached',
      ).to.equal('HD\r\n');
      expect(await client.command(`mg ${k} v`)).to.equal('VA 1\r\nb\r\n');
    }
  });

  it('mg ... c returns a token that ms/md C accept; a stale one is EX', async function () {
    const k = uniq('mgc');
    for (const client of [d, p]) {
      await client.command(`ms ${k} 1`, 'a');
      const token = /c(\d+)/.exec(await client.command(`mg ${k} c v`))![1]!;
      const out = await client.script(
        `ms ${k} 1 C${BigInt(token) ^ 1n} O1 k\r\nx\r\nms ${k} 1 C${token}\r\ny\r\nmg ${k} v\r\nmd ${k} C${token} O2\r\n`,
      );
      expect(out, client === p ? 'proxy' : 'memcached').to.equal(
        `EX O1 k${k}\r\nHD\r\nVA 1\r\ny\r\nEX O2\r\n`,
      );
    }
  });

  it('an EX for a token from another node still echoes O and k', async function () {
    const k = uniq('exo');
    await p.command(`ms ${k} 1`, 'a');
    const token = BigInt(/c(\d+)/.exec(await p.command(`mg ${k} c`))![1]!);
    const { other } = placement(c, k);
    const foreign = tokenFor(other, token);
    const missing = uniq('exo-missing');
    const out = await p.script(
      `ms ${k} 1 C${foreign} O12 k\r\nx\r\nmd ${k} C${foreign} O5 k\r\nma ${k} C${foreign} O3 k\r\n` +
        `ma ${missing} C${foreign} O4\r\nms ${missing} 1 C${foreign} q O6\r\nx\r\nmn\r\n`,
    );
    // memcached answers a cas mismatch with the opaque and key echoed ("EX O12 k<key>"),
    // checks the token before the value is numeric, and answers NF for a missing item.
    expect(out).to.equal(`EX O12 k${k}\r\nEX O5 k${k}\r\nEX O3 k${k}\r\nNF O4\r\nNF O6\r\nMN\r\n`);
    expect(await p.command(`mg ${k} v`)).to.equal('VA 1\r\na\r\n');
    // A token of 0 is memcached's own "no compare" for ma: passed on as is.
    await p.command(`ms ${k} 1`, '5');
    expect(await p.command(`ma ${k} C0 v`)).to.equal('VA 1\r\n6\r\n');
  });
});

// --------------------------------------------------------------------------

describe('proxy: noreply', function () {
  let c: Cluster;
  let lone: Memcached;
  let p: MemcacheClient;

  before(async function () {
    [c, lone] = await Promise.all([startCluster(), Memcached.start()]);
    p = await MemcacheClient.connect(c.port);
  });

  after(async function () {
    p?.close();
    await Promise.all([c?.stop(), lone?.kill()]);
  });

  it('no reply to any noreply command, yet every write happened on both replicas', async function () {
    expect(await p.command('set nr:a 0 0 1', '1')).to.equal('STORED\r\n');
    const token = /VALUE nr:a 0 1 (\d+)/.exec(await p.command('gets nr:a'))![1]!;
    p.send(
      'set nr:b 1 0 2 noreply\r\nbb\r\n' +
        'add nr:c 2 0 2 noreply\r\ncc\r\n' +
        'add nr:a 0 0 1 noreply\r\nX\r\n' +
        'replace nr:b 3 0 3 noreply\r\nbbb\r\n' +
        'append nr:b 0 0 1 noreply\r\n+\r\n' +
        'prepend nr:b 0 0 1 noreply\r\n-\r\n' +
        `cas nr:a 4 0 2 ${token} noreply\r\naa\r\n` +
        'set nr:n 0 0 2 noreply\r\n10\r\n' +
        'incr nr:n 5 noreply\r\n' +
        'decr nr:n 2 noreply\r\n' +
        'set nr:t 0 2 1 noreply\r\nt\r\n' +
        'touch nr:t 1000 noreply\r\n' +
        'delete nr:c noreply\r\n' +
        'incr nr:b 1 noreply\r\n' +
        'verbosity 1 noreply\r\n',
    );
    await p.expectSilence(300);
    expect(await p.command('get nr:a nr:b nr:c nr:n nr:t')).to.equal(
      'VALUE nr:a 4 2\r\naa\r\nVALUE nr:b 3 5\r\n-bbb+\r\nVALUE nr:n 0 2\r\n13\r\nVALUE nr:t 0 1\r\nt\r\nEND\r\n',
    );
    const want: Record<string, string | null> = {
      'nr:a': 'aa',
      'nr:b': '-bbb+',
      'nr:c': null,
      'nr:n': '13',
      'nr:t': 't',
    };
    for (const [k, v] of Object.entries(want)) {
      const { primary, backup } = placement(c, k);
      for (const n of [primary, backup]) {
        const item = await peek(c.nodes[n]!, k);
        expect(item?.value ?? null, `${k} on node ${n}`).to.equal(v);
        if (k === 'nr:t')
          expect(item!.ttl, 'touch noreply reached the replica').to.be.greaterThan(100);
      }
    }
  });

  it('later replies stay in order around noreply commands', async function () {
    const out = await p.script(
      'set nr:o 0 0 1 noreply\r\n1\r\nget nr:o\r\nincr nr:o 5 noreply\r\nget nr:o\r\n' +
        'delete nr:o noreply\r\nget nr:o\r\nadd nr:o 0 0 1 noreply\r\n9\r\nincr nr:o 1\r\n',
    );
    expect(out).to.equal(
      'VALUE nr:o 0 1\r\n1\r\nEND\r\nVALUE nr:o 0 1\r\n6\r\nEND\r\nEND\r\n10\r\n',
    );
  });

  it('noreply errors are as silent (or not) as memcached makes them', async function () {
    const script =
      'incr nre:x 1 noreply\r\nset nre:x 0 0 1 noreply\r\na\r\nincr nre:x 1 noreply\r\n' +
      'set nre:y 0 0 abc noreply\r\nset nre:z 0 0 1 noreply\r\nabc\r\ndelete nre:x 0 noreply\r\n' +
      'touch nre:x abc noreply\r\nget nre:x nre:z\r\n';
    const d = await direct(lone);
    try {
      expect(await p.script(script)).to.equal(await d.script(script));
    } finally {
      d.close();
    }
  });

  it('flush_all noreply empties every node without answering', async function () {
    await p.command('set nr:f 0 0 1', 'f');
    p.send('flush_all noreply\r\n');
    await p.expectSilence(150);
    expect(await p.command('get nr:f nr:a')).to.equal('END\r\n');
    for (const n of c.nodes) expect(await peek(n, 'nr:f')).to.equal(null);
  });
});

// --------------------------------------------------------------------------

describe('proxy: replication', function () {
  let c: Cluster;
  let p: MemcacheClient;

  before(async function () {
    c = await startCluster();
    p = await MemcacheClient.connect(c.port);
  });

  after(async function () {
    p?.close();
    await c?.stop();
  });

  it('200 random keys each live on exactly the 2 nodes Ring.order names; delete removes both', async function () {
    const keys = Array.from({ length: 200 }, () => `r:${randomBytes(8).toString('base64url')}`);
    const replies = await p.pipeline(
      keys.map((k) => [`set ${k} 0 0 ${k.length}`, k] as [string, string]),
    );
    expect(new Set(replies)).to.deep.equal(new Set(['STORED\r\n']));
    const held = await Promise.all(c.nodes.map((n) => keysOn(n, keys)));
    const ring = ringOf(c);
    const perNode = [0, 0, 0];
    for (const k of keys) {
      const where = held.map((m, i) => (m.get(k) === k ? i : -1)).filter((i) => i >= 0);
      const want = Array.from(ring.order(Buffer.from(k)).slice(0, 2)).sort();
      expect(where, k).to.deep.equal(want);
      for (const i of where) perNode[i]!++;
    }
    for (const n of perNode) expect(n, 'every node holds a share').to.be.greaterThan(60);
    const deleted = await p.pipeline(keys.map((k) => `delete ${k}`));
    expect(new Set(deleted)).to.deep.equal(new Set(['DELETED\r\n']));
    const after = await Promise.all(c.nodes.map((n) => keysOn(n, keys)));
    expect(after.map((m) => m.size)).to.deep.equal([0, 0, 0]);
  });

  it('set carries flags and TTL to both replicas', async function () {
    const k = uniq('rt');
    expect(await p.command(`set ${k} 4242 500 5`, 'hello')).to.equal('STORED\r\n');
    const { primary, backup, other } = placement(c, k);
    for (const n of [primary, backup]) {
      const item = await peek(c.nodes[n]!, k);
      expect(item).to.include({ value: 'hello', flags: 4242 });
      expect(item!.ttl).to.be.within(495, 500);
    }
    expect(await peek(c.nodes[other]!, k)).to.equal(null);
  });

  it('touch, gat and gats give both replicas the new TTL', async function () {
    // touch is a plain write (every replica); gat/gats touch too, so a failover must not
    // find the backup's copy expiring on the old TTL.
    const keys = { touch: uniq('tt'), gat: uniq('tg'), gats: uniq('ts') };
    for (const k of Object.values(keys))
      expect(await p.command(`set ${k} 0 30 1`, 'x')).to.equal('STORED\r\n');
    expect(await p.command(`touch ${keys.touch} 1000`)).to.equal('TOUCHED\r\n');
    expect(await p.command(`gat 1000 ${keys.gat}`)).to.equal(
      `VALUE ${keys.gat} 0 1\r\nx\r\nEND\r\n`,
    );
    expect(await p.command(`gats 1000 ${keys.gats}`)).to.match(
      /^VALUE \S+ 0 1 \d+\r\nx\r\nEND\r\n$/,
    );
    const ttls: Record<string, number[]> = {};
    for (const [cmd, k] of Object.entries(keys)) {
      const { primary, backup } = placement(c, k);
      ttls[cmd] = await Promise.all(
        [primary, backup].map(async (n) => (await peek(c.nodes[n]!, k))!.ttl),
      );
    }
    for (const [cmd, [onPrimary, onBackup]] of Object.entries(ttls)) {
      expect(onPrimary, `${cmd}: primary`).to.be.within(995, 1000);
      expect(onBackup, `${cmd}: backup`).to.be.within(995, 1000);
    }
  });

  it('a touch or delete that finds the item on one replica only brings the other in line', async function () {
    // Replicas that disagree (a copy from another msproxy process raced a delete, say) are
    // fixed like a missed write: from the replica that has the freshest copy.
    const touched = uniq('dt');
    expect(await p.command(`set ${touched} 7 0 3`, 'abc')).to.equal('STORED\r\n');
    const lost = placement(c, touched).backup;
    const m = await direct(c.nodes[lost]!);
    try {
      expect(await m.command(`delete ${touched}`)).to.equal('DELETED\r\n');
    } finally {
      m.close();
    }
    expect(await p.command(`touch ${touched} 900`)).to.equal('TOUCHED\r\n');
    await until(
      'the touched key back on the replica that lacked it',
      3000,
      async () => (await peek(c.nodes[lost]!, touched)) !== null,
    );
    const item = await peek(c.nodes[lost]!, touched);
    expect(item, 'the replica that lacked it has it again').to.include({ value: 'abc', flags: 7 });
    expect(item!.ttl).to.be.within(890, 900);
  });

  it('keys such as __proto__, constructor, a 250-byte key and non-UTF-8 bytes land on their ring nodes', async function () {
    const keys = ['__proto__', 'constructor', 'hasOwnProperty', 'x'.repeat(250), '\xff\xfe\x80'];
    for (const k of keys) {
      expect(await p.command(`set ${k} 3 0 2`, 'ok'), k).to.equal('STORED\r\n');
      expect(await p.command(`get ${k}`), k).to.equal(`VALUE ${k} 3 2\r\nok\r\nEND\r\n`);
      const { primary, backup, other } = placement(c, Buffer.from(k, 'latin1'));
      expect(await peek(c.nodes[primary]!, Buffer.from(k, 'latin1')), k).to.include({
        value: 'ok',
      });
      expect(await peek(c.nodes[backup]!, Buffer.from(k, 'latin1')), k).to.include({ value: 'ok' });
      expect(await peek(c.nodes[other]!, Buffer.from(k, 'latin1')), k).to.equal(null);
    }
    expect(Object.getPrototypeOf({})).to.equal(Object.prototype);
  });
});

// --------------------------------------------------------------------------

describe('proxy: conditional writes replicate the resulting item', function () {
  let c: Cluster;
  let p: MemcacheClient;

  before(async function () {
    c = await startCluster();
    p = await MemcacheClient.connect(c.port);
  });

  after(async function () {
    p?.close();
    await c?.stop();
  });

  /**
   * Both replicas hold the same bytes and flags, equal to `value` (after trimming the space
   * padding memcached leaves when decr shortens a number); the third node holds nothing.
   */
  async function replicas(k: string, value: string | null, flags = 0): Promise<void> {
    const { primary, backup, other } = placement(c, k);
    const items = await Promise.all([primary, backup].map((n) => peek(c.nodes[n]!, k)));
    if (value === null) {
      expect(items, k).to.deep.equal([null, null]);
    } else {
      expect(items[1], `${k}: backup equals primary`).to.deep.equal(items[0]);
      expect(items[0]?.value.trimEnd(), k).to.equal(value);
      expect(items[0]?.flags, k).to.equal(flags);
    }
    expect(await peek(c.nodes[other]!, k), `${k} on the non-replica`).to.equal(null);
  }

  /** Write straight to the backup, so a replica write from the proxy would show. */
  async function markBackup(k: string, value: string): Promise<void> {
    const b = await direct(c.nodes[placement(c, k).backup]!);
    try {
      expect(await b.command(`set ${k} 77 0 ${value.length}`, value)).to.equal('STORED\r\n');
    } finally {
      b.close();
    }
  }

  async function onBackup(k: string): Promise<string | null> {
    return (await peek(c.nodes[placement(c, k).backup]!, k))?.value ?? null;
  }

  it('add, replace, append, prepend', async function () {
    const k = uniq('cw');
    expect(await p.command(`add ${k} 3 0 2`, 'v1')).to.equal('STORED\r\n');
    await replicas(k, 'v1', 3);
    expect(await p.command(`replace ${k} 9 0 2`, 'v2')).to.equal('STORED\r\n');
    await replicas(k, 'v2', 9);
    expect(await p.command(`append ${k} 0 0 2`, '>>')).to.equal('STORED\r\n');
    await replicas(k, 'v2>>', 9);
    expect(await p.command(`prepend ${k} 0 0 2`, '<<')).to.equal('STORED\r\n');
    await replicas(k, '<<v2>>', 9);
  });

  it('incr and decr', async function () {
    const k = uniq('cn');
    expect(await p.command(`set ${k} 7 0 2`, '10')).to.equal('STORED\r\n');
    expect(await p.command(`incr ${k} 95`)).to.equal('105\r\n');
    await replicas(k, '105', 7);
    expect(await p.command(`decr ${k} 100`)).to.equal('5\r\n');
    await replicas(k, '5', 7);
    expect(await p.command(`decr ${k} 100`)).to.equal('0\r\n');
    await replicas(k, '0', 7);
  });

  it('cas', async function () {
    const k = uniq('cc');
    await p.command(`set ${k} 1 0 3`, 'old');
    const token = /VALUE \S+ 1 3 (\d+)/.exec(await p.command(`gets ${k}`))![1]!;
    expect(await p.command(`cas ${k} 8 0 3 ${token}`, 'new')).to.equal('STORED\r\n');
    await replicas(k, 'new', 8);
  });

  it('the remaining TTL goes with the copied item', async function () {
    const k = uniq('ct');
    expect(await p.command(`add ${k} 5 300 1`, 'a')).to.equal('STORED\r\n');
    expect(await p.command(`append ${k} 0 0 1`, 'b')).to.equal('STORED\r\n');
    const { primary, backup } = placement(c, k);
    for (const n of [primary, backup]) {
      const item = await peek(c.nodes[n]!, k);
      expect(item).to.include({ value: 'ab', flags: 5 });
      expect(item!.ttl, `ttl on node ${n}`).to.be.within(295, 300);
    }
  });

  it('conditional meta commands: ms ME/MA/MP/MR, ma, ms C, md C', async function () {
    const k = uniq('cm');
    expect(await p.command(`ms ${k} 2 ME F4`, 'ab')).to.equal('HD\r\n');
    await replicas(k, 'ab', 4);
    expect(await p.command(`ms ${k} 2 MA`, 'cd')).to.equal('HD\r\n');
    expect(await p.command(`ms ${k} 2 MP`, 'zz')).to.equal('HD\r\n');
    await replicas(k, 'zzabcd', 4);
    expect(await p.command(`ms ${k} 2 MR F6`, '41')).to.equal('HD\r\n');
    await replicas(k, '41', 6);
    expect(await p.command(`ma ${k} D9 v`)).to.equal('VA 2\r\n50\r\n');
    await replicas(k, '50', 6);
    const token = /c(\d+)/.exec(await p.command(`mg ${k} c`))![1]!;
    expect(await p.command(`ms ${k} 3 C${token} F2`, 'cas')).to.equal('HD\r\n');
    await replicas(k, 'cas', 2);
    const token2 = /c(\d+)/.exec(await p.command(`mg ${k} c`))![1]!;
    expect(await p.command(`md ${k} C${token2}`)).to.equal('HD\r\n');
    await replicas(k, null);
  });

  it('NOT_STORED, EXISTS and NOT_FOUND change nothing on the replicas', async function () {
    // add on an existing key
    const a = uniq('nx');
    await p.command(`set ${a} 0 0 2`, 'v1');
    await markBackup(a, 'marker');
    expect(await p.command(`add ${a} 0 0 1`, 'x')).to.equal('NOT_STORED\r\n');
    expect(await p.command(`ms ${a} 1 ME`, 'x')).to.equal('NS\r\n');
    expect(await onBackup(a)).to.equal('marker');

    // replace, append, prepend, incr, decr on a key the primary does not have
    const m = uniq('nm');
    await markBackup(m, '55');
    expect(await p.command(`replace ${m} 0 0 1`, 'x')).to.equal('NOT_STORED\r\n');
    expect(await p.command(`append ${m} 0 0 1`, 'x')).to.equal('NOT_STORED\r\n');
    expect(await p.command(`prepend ${m} 0 0 1`, 'x')).to.equal('NOT_STORED\r\n');
    expect(await p.command(`incr ${m} 1`)).to.equal('NOT_FOUND\r\n');
    expect(await p.command(`decr ${m} 1`)).to.equal('NOT_FOUND\r\n');
    expect(await p.command(`ma ${m}`)).to.equal('NF\r\n');
    expect(await p.command(`ms ${m} 1 MR`, 'x')).to.equal('NS\r\n');
    expect(await onBackup(m)).to.equal('55');
    expect(await peek(c.nodes[placement(c, m).primary]!, m)).to.equal(null);

    // cas with a stale token, and on a key the primary lost
    const s = uniq('ns');
    await p.command(`set ${s} 0 0 2`, 'v1');
    const token = /VALUE \S+ 0 2 (\d+)/.exec(await p.command(`gets ${s}`))![1]!;
    await p.command(`set ${s} 0 0 2`, 'v2');
    await markBackup(s, 'marker');
    expect(await p.command(`cas ${s} 0 0 1 ${token}`, 'x')).to.equal('EXISTS\r\n');
    expect(await p.command(`ms ${s} 1 C${token}`, 'x')).to.equal('EX\r\n');
    expect(await onBackup(s)).to.equal('marker');
    const pr = await direct(c.nodes[placement(c, s).primary]!);
    await pr.command(`delete ${s}`);
    pr.close();
    expect(await p.command(`cas ${s} 0 0 1 ${token}`, 'x')).to.equal('NOT_FOUND\r\n');
    expect(await onBackup(s)).to.equal('marker');
  });
});

// --------------------------------------------------------------------------

describe("proxy: one client's pipelined commands take effect in order", function () {
  let c: Cluster;
  let lone: Memcached;
  let p: MemcacheClient;

  before(async function () {
    [c, lone] = await Promise.all([startCluster(), Memcached.start()]);
    p = await MemcacheClient.connect(c.port);
  });

  after(async function () {
    p?.close();
    await Promise.all([c?.stop(), lone?.kill()]);
  });

  async function replicasOf(k: string): Promise<(string | null)[]> {
    const { primary, backup } = placement(c, k);
    return Promise.all(
      [primary, backup].map(async (n) => (await peek(c.nodes[n]!, k))?.value ?? null),
    );
  }

  it('a get that misses does not see a set pipelined after it', async function () {
    const k = uniq('og');
    const m = uniq('om');
    const script = `get ${k}\r\nset ${k} 0 0 1\r\nx\r\nmg ${m} v\r\nms ${m} 1\r\ny\r\n`;
    const d = await direct(lone);
    const want = await d.script(script);
    d.close();
    expect(want).to.equal('END\r\nSTORED\r\nEN\r\nHD\r\n');
    expect(await p.script(script)).to.equal(want);
  });

  it('a write pipelined after a conditional one is not overtaken by its copy on the backup', async function () {
    // memcached applies one connection's commands in order: the key ends deleted / holding 9.
    const del = uniq('po');
    const set = uniq('ps');
    const out = await p.script(
      `set ${del} 0 0 1\r\n1\r\nincr ${del} 1\r\ndelete ${del}\r\n` +
        `set ${set} 0 0 1\r\n5\r\nincr ${set} 1\r\nset ${set} 0 0 1\r\n9\r\n`,
    );
    expect(out).to.equal('STORED\r\n2\r\nDELETED\r\nSTORED\r\n6\r\nSTORED\r\n');
    await sleep(50);
    expect(await replicasOf(del), `${del} on primary and backup`).to.deep.equal([null, null]);
    expect(await replicasOf(set), `${set} on primary and backup`).to.deep.equal(['9', '9']);
    expect(await p.command(`get ${del} ${set}`)).to.equal(`VALUE ${set} 0 1\r\n9\r\nEND\r\n`);
  });

  it('a multi-get is not overtaken by a delete pipelined after it to one of its other keys', async function () {
    // White box: the router spreads a node's requests over its connections by FNV-1a of the
    // key (router.ts keyHash()). Keys a and b share a primary but not a lane. If "get a b" went
    // on a's lane only, "delete b" would travel on another connection, and the 100 gets queued
    // before it on a's connection would make memcached (20 requests per event) turn to the
    // other connection and run the delete first. A race: 40 rounds.
    const lane = (key: string): number => {
      let h = 0x811c9dc5;
      for (const ch of Buffer.from(key)) h = Math.imul(h ^ ch, 0x01000193);
      return (h >>> 0) % c.config.backend.connections;
    };
    const wrong: string[] = [];
    for (let t = 0; t < 40; t++) {
      const a = keyOn(c, `ol${t}a`, 0);
      let b = '';
      for (let i = 0; b === ''; i++) {
        const k = keyOn(c, `ol${t}b${i}`, 0);
        if (lane(k) !== lane(a)) b = k;
      }
      await p.command(`set ${a} 0 0 1`, 'a');
      await p.command(`set ${b} 0 0 1`, 'b');
      const out = await p.script(`get ${a}\r\n`.repeat(100) + `get ${a} ${b}\r\ndelete ${b}\r\n`);
      const one = `VALUE ${a} 0 1\r\na\r\n`;
      const want = `${one}END\r\n`.repeat(100) + `${one}VALUE ${b} 0 1\r\nb\r\nEND\r\nDELETED\r\n`;
      if (out !== want) wrong.push(`${a} ${b}: ${JSON.stringify(out.slice(-80))}`);
    }
    expect(wrong, wrong.slice(0, 3).join('\n')).to.deep.equal([]);
  });

  it("a read repair does not undo another client's delete sent while the read looked further", async function () {
    // The key is only on its backup, as after the primary restarted empty. Client A's get misses
    // on the primary and looks on the backup, which is paused; client B's delete arrives then.
    // The read must finish (and repair) before the delete goes out, or the repair would put the
    // deleted item back on the primary (a logged-out session logged back in).
    const k = uniq('rr');
    const { primary, backup } = placement(c, k);
    const b = await direct(c.nodes[backup]!);
    await b.command(`set ${k} 0 0 2`, 'v0');
    b.close();
    const other = await MemcacheClient.connect(c.port);
    try {
      const repairs = c.proxy.stats.readRepairs;
      // Paused for well under the 250 ms request timeout, so the backup is not marked down.
      c.nodes[backup]!.pause();
      let read: Promise<string>;
      let deleted: Promise<string>;
      try {
        read = p.command(`get ${k}`);
        // The primary's miss is back; the get's look at the backup waits there.
        await until('the get waiting on the backup', 150, () => inflightOn(c.proxy, backup) > 0);
        const before = bytesReadFrom(c.proxy, other);
        deleted = other.command(`delete ${k}`);
        // The delete is in msproxy while the read is still looking.
        await until(
          'msproxy to read the delete',
          150,
          () => bytesReadFrom(c.proxy, other) === before + `delete ${k}\r\n`.length,
        );
      } finally {
        c.nodes[backup]!.resume();
      }
      expect(await read).to.equal(`VALUE ${k} 0 2\r\nv0\r\nEND\r\n`);
      expect(await deleted).to.equal('DELETED\r\n');
      // The read found it on the backup and repaired the primary (the race this is about).
      expect(c.proxy.stats.readRepairs - repairs, 'read repairs').to.equal(1);
      // Nothing still on its way to the primary that a peek could overtake.
      await until(
        'the primary to have nothing in flight',
        2000,
        () => inflightOn(c.proxy, primary) === 0,
      );
      expect(await peek(c.nodes[primary]!, k), 'primary').to.equal(null);
      expect(await peek(c.nodes[backup]!, k), 'backup').to.equal(null);
      expect(await p.command(`get ${k}`)).to.equal('END\r\n');
    } finally {
      other.close();
    }
  });

  it('flush_all is ordered with the keyed commands around it', async function () {
    // Repeated, as which backend connection runs first is a race. Nothing is pipelined after
    // the get, so this does not depend on the get-miss case above.
    const wrong: string[] = [];
    const keys: string[] = [];
    for (let i = 0; i < 30; i++) {
      const k = `of:${i}`;
      keys.push(k);
      const out = await p.script(`set ${k} 0 0 1\r\na\r\nflush_all\r\nget ${k}\r\n`);
      if (out !== 'STORED\r\nOK\r\nEND\r\n') wrong.push(`${k}: ${JSON.stringify(out)}`);
    }
    await sleep(50);
    const left = await Promise.all(
      c.nodes.map(async (n, i) =>
        [...(await keysOn(n, keys)).keys()].map((k) => `${k} on node ${i}`),
      ),
    );
    expect(left.flat(), 'flushed keys still on a node').to.deep.equal([]);
    expect(wrong, wrong.slice(0, 3).join('\n')).to.deep.equal([]);
  });
});

describe('proxy: multi-get across nodes', function () {
  let c: Cluster;
  let p: MemcacheClient;

  before(async function () {
    c = await startCluster();
    p = await MemcacheClient.connect(c.port);
  });

  after(async function () {
    p?.close();
    await c?.stop();
  });

  it('merges replies from every node in the client key order, with repeats and misses', async function () {
    // Two keys per primary node, so the request really is split three ways.
    const keys = [0, 1, 2].flatMap((n) => [keyOn(c, `mg${n}a`, n), keyOn(c, `mg${n}b`, n)]);
    for (const [i, k] of keys.entries()) await p.command(`set ${k} ${i} 0 ${k.length}`, k);
    const ask = [
      keys[5]!,
      'mg:miss1',
      keys[0]!,
      keys[2]!,
      keys[0]!,
      keys[4]!,
      'mg:miss2',
      keys[1]!,
      keys[3]!,
      keys[5]!,
      keys[5]!,
    ];
    const want =
      ask
        .filter((k) => keys.includes(k))
        .map((k) => `VALUE ${k} ${keys.indexOf(k)} ${k.length}\r\n${k}\r\n`)
        .join('') + 'END\r\n';
    expect(await p.command(`get ${ask.join(' ')}`)).to.equal(want);
    const gets = await p.command(`gets ${ask.join(' ')}`);
    expect(normCas(gets)).to.equal(want.replace(/^(VALUE \S+ \d+ \d+)\r$/gm, '$1 <cas>\r'));
    // gets tokens carry the node that issued each value.
    for (const m of gets.matchAll(/^VALUE (\S+) \d+ \d+ (\d+)\r$/gm)) {
      expect(Number(BigInt(m[2]!) >> CAS_SHIFT) - 1, m[1]).to.equal(placement(c, m[1]!).primary);
    }
    expect(await p.command('get mg:miss1 mg:miss2 mg:miss1')).to.equal('END\r\n');
  });
});

// --------------------------------------------------------------------------

describe('proxy: pipelining', function () {
  let c: Cluster;

  before(async function () {
    c = await startCluster();
  });

  after(async function () {
    await c?.stop();
  });

  async function pipelined(ops: number, withIncr: boolean): Promise<void> {
    const run = async (id: number): Promise<void> => {
      const client = await MemcacheClient.connect(c.port);
      try {
        const model = new Map<string, string>();
        const cmds: (string | [string, string])[] = [];
        const want: string[] = [];
        let seed = id * 7919 + 1;
        const rnd = (n: number): number => {
          seed = (seed * 1103515245 + 12345) & 0x7fffffff;
          return seed % n;
        };
        for (let j = 0; j < 500; j++) {
          const k = `pl${id}:${rnd(25)}`;
          const op = rnd(withIncr ? 4 : 3);
          const cur = model.get(k);
          if (op === 0) {
            const v = rnd(2) === 0 ? String(rnd(1000)) : `v${id}.${j}`;
            cmds.push([`set ${k} 0 0 ${v.length}`, v]);
            want.push('STORED\r\n');
            model.set(k, v);
          } else if (op === 1) {
            cmds.push(`get ${k}`);
            want.push(
              cur === undefined ? 'END\r\n' : `VALUE ${k} 0 ${cur.length}\r\n${cur}\r\nEND\r\n`,
            );
          } else if (op === 2) {
            cmds.push(`delete ${k}`);
            want.push(cur === undefined ? 'NOT_FOUND\r\n' : 'DELETED\r\n');
            model.delete(k);
          } else {
            cmds.push(`incr ${k} 3`);
            if (cur === undefined) want.push('NOT_FOUND\r\n');
            else if (!/^\d+$/.test(cur))
              want.push('CLIENT_ERROR cannot increment or decrement non-numeric value\r\n');
            else {
              const v = String(BigInt(cur) + 3n);
              want.push(`${v}\r\n`);
              model.set(k, v);
            }
          }
        }
        const got = await client.pipeline(cmds);
        for (let j = 0; j < want.length; j++) {
          if (got[j] !== want[j]) {
            expect(got[j], `client ${id} reply ${j} to ${JSON.stringify(cmds[j])}`).to.equal(
              want[j],
            );
          }
        }
      } finally {
        client.close();
      }
    };
    await Promise.all(Array.from({ length: 20 }, (_, i) => run(i + ops * 100)));
  }

  it('20 clients each pipelining 500 mixed commands (set/get/delete/incr) get every reply in order', async function () {
    await pipelined(4, true);
  });

  it('20 clients each pipelining 500 plain commands (set/get/delete) get every reply in order', async function () {
    await pipelined(3, false);
  });
});

// --------------------------------------------------------------------------

describe('proxy: client connections', function () {
  let c: Cluster;
  let lone: Memcached;

  before(async function () {
    [c, lone] = await Promise.all([startCluster(), Memcached.start()]);
  });

  after(async function () {
    await Promise.all([c?.stop(), lone?.kill()]);
  });

  it('a client that disconnects mid-request does not disturb another', async function () {
    const other = await MemcacheClient.connect(c.port);
    await other.command('set dc:k 0 0 3', 'old');
    const pending = other.pipeline(
      Array.from(
        { length: 50 },
        (_, i) => [`set dc:o${i} 0 0 1`, String(i % 10)] as [string, string],
      ),
    );
    for (let i = 0; i < 5; i++) {
      const quitter = await MemcacheClient.connect(c.port);
      quitter.send('get dc:k\r\nset dc:k 0 0 10\r\nabc');
      await sleep(5);
      quitter.close();
    }
    expect(new Set(await pending)).to.deep.equal(new Set(['STORED\r\n']));
    expect(await other.command('get dc:k dc:o7')).to.equal(
      'VALUE dc:k 0 3\r\nold\r\nVALUE dc:o7 0 1\r\n7\r\nEND\r\n',
    );
    const { primary, backup } = placement(c, 'dc:k');
    for (const n of [primary, backup])
      expect(await peek(c.nodes[n]!, 'dc:k')).to.include({ value: 'old' });
    other.close();
  });

  it('quit closes the connection after the earlier replies, as memcached does', async function () {
    const script = 'set q:a 0 0 1\r\n1\r\nget q:a\r\nquit\r\nget q:a\r\n';
    const run = (port: number): Promise<string> =>
      new Promise<string>((resolve, reject) => {
        let out = '';
        const s = net.connect(port, '127.0.0.1', () => s.write(script));
        const timer = setTimeout(() => {
          s.destroy();
          reject(new Error(`port ${port}: connection not closed; got ${JSON.stringify(out)}`));
        }, 2000);
        s.on('data', (b: Buffer) => (out += b.toString('latin1')));
        s.on('close', () => {
          clearTimeout(timer);
          resolve(out);
        });
        s.on('error', reject);
      });
    const [a, b] = [await run(lone.port), await run(c.port)];
    expect(a).to.equal('STORED\r\nVALUE q:a 0 1\r\n1\r\nEND\r\n');
    expect(b).to.equal(a);
  });

  it('a client that half-closes after a slow request still gets the reply', async function () {
    const k = keyOn(c, 'hc', 0);
    const setup = await MemcacheClient.connect(c.port);
    await setup.command(`set ${k} 0 0 2`, 'hc');
    setup.close();
    c.nodes[0]!.pause(); // the primary: the read fails over after the request timeout
    try {
      const cl = await MemcacheClient.connect(c.port);
      const reply = cl.request(`get ${k}`);
      cl.end();
      expect(replyText(await reply)).to.equal(`VALUE ${k} 0 2\r\nhc\r\nEND\r\n`);
      await cl.waitClose();
    } finally {
      c.nodes[0]!.resume();
    }
  });
});

// --------------------------------------------------------------------------

describe('failover: a primary killed with SIGKILL', function () {
  let c: Cluster;
  let p: MemcacheClient;

  before(async function () {
    c = await startCluster();
    p = await MemcacheClient.connect(c.port);
  });

  after(async function () {
    p?.close();
    await c?.stop();
  });

  it('its keys are still read, written and cas-ed through the proxy', async function () {
    const keys = Array.from({ length: 10 }, (_, i) => keyOn(c, `kp${i}`, 1));
    for (const k of keys) expect(await p.command(`set ${k} 2 0 2`, 'v1')).to.equal('STORED\r\n');
    await c.kill(1);
    const k = keys[0]!;
    expect(await p.command(`get ${k}`)).to.equal(`VALUE ${k} 2 2\r\nv1\r\nEND\r\n`);
    expect(await p.command(`get ${keys.join(' ')}`)).to.equal(
      keys.map((x) => `VALUE ${x} 2 2\r\nv1\r\n`).join('') + 'END\r\n',
    );
    expect(await p.command(`set ${k} 3 0 2`, 'v2')).to.equal('STORED\r\n');
    expect(await p.command(`get ${k}`)).to.equal(`VALUE ${k} 3 2\r\nv2\r\nEND\r\n`);
    const gets = await p.command(`gets ${k}`);
    const token = /^VALUE \S+ 3 2 (\d+)\r\n/.exec(gets)?.[1];
    expect(token, gets).to.be.a('string');
    expect(await p.command(`cas ${k} 4 0 2 ${token}`, 'v3')).to.equal('STORED\r\n');
    expect(await p.command(`cas ${k} 4 0 2 ${token}`, 'v4')).to.equal('EXISTS\r\n');
    expect(await p.command(`mg ${k} v f`)).to.equal('VA 2 f4\r\nv3\r\n');
    const { backup } = placement(c, k);
    expect(await peek(c.nodes[backup]!, k)).to.include({ value: 'v3', flags: 4 });
  });

  it('every kind of write succeeds while the node is down', async function () {
    await c.waitNode(1, false);
    const k = keyOn(c, 'kw', 1);
    const out = await p.script(
      `set ${k} 0 0 1\r\n5\r\nadd ${k} 0 0 1\r\nx\r\nreplace ${k} 0 0 2\r\n10\r\nincr ${k} 5\r\ndecr ${k} 1\r\n` +
        `append ${k} 0 0 1\r\n0\r\nprepend ${k} 0 0 1\r\n1\r\ntouch ${k} 100\r\nget ${k}\r\ndelete ${k}\r\nadd ${k} 0 0 1\r\nz\r\n` +
        `ms ${k} 1 MA\r\ny\r\nma ${k} N0 J1\r\nmd ${k}\r\nget ${k}\r\n`,
    );
    expect(out).to.equal(
      `STORED\r\nNOT_STORED\r\nSTORED\r\n15\r\n14\r\nSTORED\r\nSTORED\r\nTOUCHED\r\nVALUE ${k} 0 4\r\n1140\r\nEND\r\n` +
        'DELETED\r\nSTORED\r\nHD\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\nHD\r\nEND\r\n',
    );
  });
});

describe('failover: a node restarted empty on the same port', function () {
  let c: Cluster;
  let p: MemcacheClient;

  before(async function () {
    // No background re-sync here (faults.test.ts covers it): the node stays empty until read.
    c = await startCluster({ recovery: { resyncRate: 0 } });
    p = await MemcacheClient.connect(c.port);
  });

  after(async function () {
    p?.close();
    await c?.stop();
  });

  it('reads still return every key and repair the restarted primary', async function () {
    const keys = Array.from({ length: 120 }, (_, i) => `rr:${i}`);
    const replies = await p.pipeline(
      keys.map((k) => [`set ${k} 6 0 ${k.length}`, k] as [string, string]),
    );
    expect(new Set(replies)).to.deep.equal(new Set(['STORED\r\n']));
    await c.restart(2);
    await c.waitNode(2, true);
    expect((await keysOn(c.nodes[2]!, keys)).size, 'the restarted node is empty').to.equal(0);
    // get for half the keys, mg for the other half: both read paths repair.
    const got = await p.pipeline(keys.map((k, i) => (i % 2 === 0 ? `get ${k}` : `mg ${k} v f`)));
    keys.forEach((k, i) => {
      expect(got[i], k).to.equal(
        i % 2 === 0
          ? `VALUE ${k} 6 ${k.length}\r\n${k}\r\nEND\r\n`
          : `VA ${k.length} f6\r\n${k}\r\n`,
      );
    });
    const primaryHere = keys.filter((k) => placement(c, k).primary === 2);
    expect(primaryHere.length).to.be.greaterThan(10);
    await until('read repair of the restarted primary', 2000, async () => {
      const held = await keysOn(c.nodes[2]!, primaryHere);
      return primaryHere.every((k) => held.get(k) === k);
    });
    for (const k of primaryHere.slice(0, 5))
      expect(await peek(c.nodes[2]!, k)).to.deep.include({ value: k, flags: 6 });
    // A multi-get of everything still answers every key.
    expect(await p.command(`get ${keys.join(' ')}`)).to.equal(
      keys.map((k) => `VALUE ${k} 6 ${k.length}\r\n${k}\r\n`).join('') + 'END\r\n',
    );
  });
});

describe('failover: a session lock taken with add', function () {
  let c: Cluster;
  let p: MemcacheClient;

  before(async function () {
    c = await startCluster();
    p = await MemcacheClient.connect(c.port);
  });

  after(async function () {
    p?.close();
    await c?.stop();
  });

  it('stays exclusive when its authority is killed', async function () {
    const lock = keyOn(c, 'lock', 0, 1);
    expect(await p.command(`add ${lock} 0 0 5`, 'owner')).to.equal('STORED\r\n');
    await c.kill(0);
    const answers: string[] = [];
    await until('an add answered other than SERVER_ERROR', 1500, async () => {
      const r = await p.command(`add ${lock} 0 0 5`, 'thief');
      answers.push(r);
      return !r.startsWith('SERVER_ERROR');
    });
    expect(answers, 'never STORED').to.not.include('STORED\r\n');
    expect(answers[answers.length - 1]).to.equal('NOT_STORED\r\n');
    expect(await p.command(`get ${lock}`)).to.equal(`VALUE ${lock} 0 5\r\nowner\r\nEND\r\n`);
  });

  it('the first add after the authority dies answers NOT_STORED, not an error', async function () {
    // A refused connection means the add never reached the dead node: the backup can decide it.
    const lock = keyOn(c, 'lock2', 1, 2);
    expect(await p.command(`add ${lock} 0 0 5`, 'owner')).to.equal('STORED\r\n');
    await c.kill(1);
    expect(await p.command(`add ${lock} 0 0 5`, 'thief')).to.equal('NOT_STORED\r\n');
  });
});

describe('cas tokens across nodes', function () {
  let c: Cluster;
  let p: MemcacheClient;

  before(async function () {
    c = await startCluster();
    p = await MemcacheClient.connect(c.port);
  });

  after(async function () {
    p?.close();
    await c?.stop();
  });

  it("a token carrying another node's index is a clean EXISTS and writes nothing", async function () {
    const k = uniq('tk');
    await p.command(`set ${k} 1 0 2`, 'v1');
    const token = BigInt(/VALUE \S+ 1 2 (\d+)/.exec(await p.command(`gets ${k}`))![1]!);
    const { primary, backup, other } = placement(c, k);
    expect(Number(token >> CAS_SHIFT) - 1).to.equal(primary);
    // The backup's own cas unique for the item: valid there, but the backup is not the authority.
    const b = await direct(c.nodes[backup]!);
    const backupCas = BigInt(/c(\d+)/.exec(await b.command(`mg ${k} c`))![1]!);
    b.close();
    for (const forged of [
      tokenFor(backup, backupCas),
      tokenFor(other, token),
      tokenFor(backup, token),
      token & CAS_MASK,
    ]) {
      expect(await p.command(`cas ${k} 2 0 2 ${forged}`, 'XX'), String(forged)).to.equal(
        'EXISTS\r\n',
      );
      expect(await p.command(`ms ${k} 2 C${forged}`, 'XX'), String(forged)).to.equal('EX\r\n');
    }
    for (const n of [primary, backup])
      expect(await peek(c.nodes[n]!, k)).to.deep.include({ value: 'v1', flags: 1 });
    expect(await p.command(`cas ${k} 2 0 2 ${token}`, 'v2')).to.equal('STORED\r\n');
  });

  it('a token issued by the backup while the primary was down is EXISTS once the primary is back', async function () {
    const k = keyOn(c, 'tb', 0);
    const { backup } = placement(c, k);
    await p.command(`set ${k} 0 0 2`, 'v1');
    await c.kill(0);
    const gets = await p.command(`gets ${k}`);
    const token = BigInt(/VALUE \S+ 0 2 (\d+)/.exec(gets)![1]!);
    expect(Number(token >> CAS_SHIFT) - 1, 'issued by the backup').to.equal(backup);
    await c.restart(0);
    await c.waitNode(0, true);
    expect(await p.command(`set ${k} 0 0 2`, 'v2')).to.equal('STORED\r\n');
    expect(await p.command(`cas ${k} 0 0 2 ${token}`, 'v3')).to.equal('EXISTS\r\n');
    for (const n of [0, backup]) expect(await peek(c.nodes[n]!, k)).to.include({ value: 'v2' });
  });
});

// --------------------------------------------------------------------------

describe('proxy: every node down', function () {
  let c: Cluster;
  let p: MemcacheClient;
  let commands: (string | [string, string])[] = [];
  const base: (string | [string, string])[] = [
    'get ad:a',
    'gets ad:a ad:b',
    'gat 10 ad:a',
    ['set ad:a 0 0 1', 'x'],
    ['add ad:a 0 0 1', 'x'],
    ['replace ad:a 0 0 1', 'x'],
    ['append ad:a 0 0 1', 'x'],
    ['cas ad:a 0 0 1 TOKEN', 'x'],
    'delete ad:a',
    'incr ad:a 1',
    'decr ad:a 1',
    'touch ad:a 10',
    'mg ad:a v',
    ['ms ad:a 1', 'x'],
    ['ms ad:a 1 CTOKEN', 'x'],
    'md ad:a',
    'ma ad:a',
    'flush_all',
  ];

  before(async function () {
    c = await startCluster();
    p = await MemcacheClient.connect(c.port);
    await p.command('set ad:a 0 0 1', 'a');
    // A token the key's primary could have issued, so the cas is not refused as foreign.
    const token = String(tokenFor(placement(c, 'ad:a').primary, 1n));
    commands = base.map((x) => (typeof x === 'string' ? x : [x[0].replace('TOKEN', token), x[1]]));
  });

  after(async function () {
    p?.close();
    await c?.stop();
  });

  function check(replies: string[]): void {
    replies.forEach((r, i) =>
      expect(r, JSON.stringify(commands[i])).to.match(/^SERVER_ERROR [^\r\n]*\r\n$/),
    );
  }

  it('requests right after the crash get SERVER_ERROR within a second', async function () {
    await Promise.all([0, 1, 2].map((i) => c.kill(i)));
    const t0 = Date.now();
    const replies = await p.pipeline([...commands, 'version', 'mn']);
    expect(Date.now() - t0).to.be.lessThan(1000);
    expect(replies.pop()).to.equal('MN\r\n');
    expect(replies.pop()).to.equal(`VERSION ${PROTOCOL_VERSION}\r\n`);
    check(replies);
  });

  it('once the nodes are known down, every request still gets SERVER_ERROR at once', async function () {
    for (const i of [0, 1, 2]) await c.waitNode(i, false);
    const fresh = await MemcacheClient.connect(c.port);
    try {
      const t0 = Date.now();
      const replies = await fresh.pipeline(commands);
      expect(Date.now() - t0).to.be.lessThan(1000);
      check(replies);
    } finally {
      fresh.close();
    }
  });

  it('serves again once the nodes are back', async function () {
    for (const i of [0, 1, 2]) await c.restart(i);
    for (const i of [0, 1, 2]) await c.waitNode(i, true);
    expect(await p.command('set ad:a 0 0 1', 'b')).to.equal('STORED\r\n');
    expect(await p.command('get ad:a')).to.equal('VALUE ad:a 0 1\r\nb\r\nEND\r\n');
  });
});

// --------------------------------------------------------------------------

describe('ack mode async', function () {
  let c: Cluster;
  let p: MemcacheClient;

  before(async function () {
    c = await startCluster({ ackMode: 'async' });
    p = await MemcacheClient.connect(c.port);
  });

  after(async function () {
    p?.close();
    await c?.stop();
  });

  async function onReplicas(k: string): Promise<(string | null)[]> {
    const { primary, backup } = placement(c, k);
    return Promise.all(
      [primary, backup].map(async (n) => (await peek(c.nodes[n]!, k))?.value ?? null),
    );
  }

  it('answers writes and completes them on every replica', async function () {
    const s = uniq('as');
    const a = uniq('aa');
    const i = uniq('ai');
    expect(
      await p.script(
        `set ${s} 0 0 1\r\n1\r\nadd ${a} 0 0 1\r\n2\r\nset ${i} 0 0 1\r\n5\r\nincr ${i} 3\r\n`,
      ),
    ).to.equal('STORED\r\nSTORED\r\nSTORED\r\n8\r\n');
    for (const [k, v] of [
      [s, '1'],
      [a, '2'],
      [i, '8'],
    ] as const) {
      await until(`${k} on both replicas`, 2000, async () =>
        (await onReplicas(k)).every((x) => x === v),
      );
    }
  });

  it('a write after a conditional one still lands after its background copy', async function () {
    const k = uniq('ao');
    expect(
      await p.script(`add ${k} 0 0 1\r\n1\r\nincr ${k} 1\r\nset ${k} 0 0 1\r\n9\r\n`),
    ).to.equal('STORED\r\n2\r\nSTORED\r\n');
    // The background copy of the incr has been sent: once no node has a request in flight,
    // nothing can still overwrite the set.
    await until('every node to have nothing in flight', 2000, () =>
      c.nodes.every((_, i) => inflightOn(c.proxy, i) === 0),
    );
    expect(await onReplicas(k)).to.deep.equal(['9', '9']);
  });
});

describe('config: listen port 0', function () {
  it('parseConfig accepts listen port 0 (Proxy.address reports the bound port)', function () {
    const config = parseConfig({
      listen: { host: '127.0.0.1', port: 0 },
      nodes: ['127.0.0.1:11211'],
      replicas: 1,
    });
    expect(config.listen.port).to.equal(0);
  });
});

// --------------------------------------------------------------------------

/** One reply as collectReplies parsed it: its VALUE blocks, its last line and its exact text. */
interface WireReply {
  values: { key: string; flags: number; data: string }[];
  line: string;
  text: string;
  /** The bytes did not parse: nothing after this reply can be trusted. */
  bad: boolean;
}

/**
 * The reply starting at `at` (VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n ... then
 * a line: END, STORED, an error, ...), or null while it is incomplete.
 */
function parseReplyAt(buf: Buffer, at: number): { reply: WireReply; next: number } | null {
  const values: WireReply['values'] = [];
  const bad = (why: string): { reply: WireReply; next: number } => ({
    reply: { values, line: why, text: buf.toString('latin1', at, at + 300), bad: true },
    next: buf.length,
  });
  let p = at;
  for (;;) {
    const eol = buf.indexOf('\r\n', p, 'latin1');
    if (eol < 0) return null;
    const line = buf.toString('latin1', p, eol);
    if (!line.startsWith('VALUE ')) {
      const text = buf.toString('latin1', at, eol + 2);
      return { reply: { values, line, text, bad: false }, next: eol + 2 };
    }
    const m = /^VALUE (\S+) (\d+) (\d+)(?: \d+)?$/.exec(line);
    if (m === null) return bad(`malformed VALUE line ${JSON.stringify(line.slice(0, 300))}`);
    const end = eol + 2 + Number(m[3]);
    if (buf.length < end + 2) return null;
    if (buf[end] !== 0x0d || buf[end + 1] !== 0x0a) return bad('data block not ended by \\r\\n');
    values.push({ key: m[1]!, flags: Number(m[2]), data: buf.toString('latin1', eol + 2, end) });
    p = end + 2;
  }
}

/**
 * Write `bytes` in one socket write and parse replies as they arrive until `want`
 * of them are complete (or one does not parse), failing after `ms`.
 */
async function collectReplies(
  client: MemcacheClient,
  bytes: Buffer,
  want: number,
  ms = 5000,
): Promise<WireReply[]> {
  const replies: WireReply[] = [];
  let at = 0;
  // readRaw hands back everything received since it was called, so parsing resumes at `at`.
  const done = client.readRaw((buf) => {
    while (replies.length < want) {
      const r = parseReplyAt(buf, at);
      if (r === null) return -1;
      replies.push(r.reply);
      at = r.next;
      if (r.reply.bad) return buf.length;
    }
    return at;
  }, ms);
  client.send(bytes);
  try {
    await done;
  } catch (err) {
    const last = replies.at(-1);
    throw new Error(
      `${replies.length} of ${want} replies within ${ms} ms` +
        (last === undefined ? '' : ` (last: ${clip(last.text)})`) +
        `: ${String(err).slice(0, 300)}`,
      { cause: err },
    );
  }
  return replies;
}

function clip(s: string): string {
  return JSON.stringify(
    s.length > 240 ? `${s.slice(0, 160)}...(${s.length} bytes)...${s.slice(-40)}` : s,
  );
}

/** Compare replies one by one; the first difference fails with the command it answers. */
function expectReplies(got: WireReply[], want: readonly string[], what: readonly string[]): void {
  for (let i = 0; i < want.length; i++) {
    const g = got[i];
    if (g === undefined) expect.fail(`no reply ${i} (to ${what[i]}), ${got.length} in all`);
    if (g.bad || g.text !== want[i]) {
      expect.fail(
        `reply ${i} (to ${what[i]}) is ${clip(g.bad ? g.line : g.text)}, expected ${clip(want[i]!)}`,
      );
    }
  }
  expect(got.length, 'replies').to.equal(want.length);
}

/** `n` bytes naming `tag`, so a value delivered for the wrong request shows. */
function valueNamed(tag: string, n: number): string {
  const unit = `${tag}.`;
  return unit.repeat(Math.ceil(n / unit.length)).slice(0, n);
}

function valueReply(key: string, flags: number, value: string): string {
  return `VALUE ${key} ${flags} ${value.length}\r\n${value}\r\nEND\r\n`;
}

describe('proxy: backend write staging (short pieces copied, long ones queued, order kept)', function () {
  // One connection per node, so every request for a node goes through one staging buffer; a
  // request timeout long enough for a few MB pipelined at once.
  let c: Cluster;
  let s: MemcacheClient;
  /** Keys read in every mixed pipeline, set in before(); primary node 0, backup node 1. */
  const anchors: { key: string; flags: number; value: string }[] = [];

  /** Counters that move when a backend stream goes wrong, even if a replica hides it. */
  const WATCHED = [
    'get_misses',
    'proxy_failover_reads',
    'proxy_read_repairs',
    'proxy_replication_failures',
    'proxy_unavailable',
    'proxy_backend_timeouts',
    'proxy_backend_errors',
  ];
  async function counters(): Promise<Record<string, string | undefined>> {
    const st = await statsOf(s);
    return Object.fromEntries(WATCHED.map((n) => [n, st.get(n)]));
  }
  /** A replica may hide a corrupted request (failover): the counters must not have moved. */
  async function expectCountersUnchanged(
    before: Record<string, string | undefined>,
  ): Promise<void> {
    const after = await counters();
    expect(JSON.stringify(after), 'proxy stats moved').to.equal(JSON.stringify(before));
  }

  /**
   * Run `check` with `n` fresh clients; then each client's next reply must be its own (nothing
   * extra arrived) and the counters must not have moved.
   */
  async function withClients(
    n: number,
    check: (clients: MemcacheClient[]) => Promise<void>,
  ): Promise<void> {
    const before = await counters();
    const clients = await Promise.all(
      Array.from({ length: n }, () => MemcacheClient.connect(c.port)),
    );
    try {
      await check(clients);
      for (const cl of clients) expect(await cl.command('mn')).to.equal('MN\r\n');
    } finally {
      for (const cl of clients) cl.close();
    }
    await expectCountersUnchanged(before);
  }

  before(async function () {
    c = await startCluster({ backend: { connections: 1 }, timeouts: { requestMs: 3000 } });
    s = await MemcacheClient.connect(c.port);
    for (let i = 0; i < 4; i++) {
      const key = keyOn(c, `stg:anchor${i}`, 0, 1);
      const value = valueNamed(`anchor${i}`, [3, 40, 250, 900][i]!);
      anchors.push({ key, flags: 100 + i, value });
      expect(await s.command(`set ${key} ${100 + i} 0 ${value.length}`, value)).to.equal(
        'STORED\r\n',
      );
    }
  });

  after(async function () {
    s?.close();
    await c?.stop();
  });

  /**
   * One client's pipeline mixing requests that are staged and requests that are not, all for
   * keys on nodes 0 and 1: per value size, a set and a get of its key, a get of an anchor, a
   * noreply set (forwarded in three pieces: line, CRLF, data) and a get of its key, another
   * anchor. Sizes straddle the copy limit for the set request as a whole (255-257 bytes) and
   * for the noreply set's data piece (value 254/255 + CRLF).
   */
  function mixedPipeline(id: string): { script: Buffer; want: string[]; what: string[] } {
    const sizes = [0, 1, 200, 253, 254, 255, 256, 257, 300, 5000, 70000];
    const parts: string[] = [];
    const want: string[] = [];
    const what: string[] = [];
    const steps = sizes.map((n) => ({ n, whole: 0 }));
    for (const whole of [255, 256, 257]) steps.push({ n: -1, whole });
    steps.forEach((step, i) => {
      const sk = keyOn(c, `stg:${id}:s${i}`, 0, 1);
      const nk = keyOn(c, `stg:${id}:n${i}`, 0, 1);
      const flags = i * 7 + 1;
      let n = step.n;
      if (n < 0) {
        // The size that makes the whole set request exactly `whole` bytes.
        for (n = 0; `set ${sk} ${flags} 0 ${n}\r\n`.length + n + 2 !== step.whole; n++) {
          if (n > 256) throw new Error('no such size');
        }
      }
      const v = valueNamed(`${id}s${i}`, n);
      const w = valueNamed(`${id}n${i}`, n);
      const a = anchors[i % anchors.length]!;
      const b = anchors[(i + 1) % anchors.length]!;
      parts.push(`set ${sk} ${flags} 0 ${n}\r\n${v}\r\n`);
      want.push('STORED\r\n');
      what.push(`set ${sk} (${n} bytes)`);
      parts.push(`get ${a.key}\r\n`);
      want.push(valueReply(a.key, a.flags, a.value));
      what.push(`get ${a.key}`);
      parts.push(`get ${sk}\r\n`);
      want.push(valueReply(sk, flags, v));
      what.push(`get ${sk}`);
      parts.push(`set ${nk} ${flags + 1} 0 ${n} noreply\r\n${w}\r\n`);
      parts.push(`get ${b.key}\r\n`);
      want.push(valueReply(b.key, b.flags, b.value));
      what.push(`get ${b.key}`);
      parts.push(`get ${nk}\r\n`);
      want.push(valueReply(nk, flags + 1, w));
      what.push(`get ${nk} (after a noreply set of ${n} bytes)`);
    });
    return { script: Buffer.from(parts.join(''), 'latin1'), want, what };
  }

  it('4000 gets pipelined in one write get every value in order (staging buffers roll over mid-turn)', async function () {
    // Keys of 40-230 bytes (get lines up to 236 bytes, all staged) with primary node 0: one
    // client turn puts over 64 KiB of get lines on that node's one connection.
    const ring = ringOf(c);
    const keys: string[] = [];
    for (let i = 0; keys.length < 4000; i++) {
      const head = `stg:roll:${i}:`;
      const k = head + valueNamed(String(i % 97), 40 + ((i * 37) % 191) - head.length);
      if (ring.order(Buffer.from(k, 'latin1'))[0] === 0) keys.push(k);
    }
    const values = keys.map((_, i) => valueNamed(`v${i}`, 5 + ((i * 13) % 60)));
    const flagsOf = (i: number): number => (i * 31) % 65536;
    // Stored straight on both replicas, so the proxy's writes play no part before the gets.
    for (let node = 0; node < c.nodes.length; node++) {
      const d = await direct(c.nodes[node]!);
      try {
        for (let i = 0; i < keys.length; i += 500) {
          const batch: [string, string][] = [];
          for (let j = i; j < Math.min(i + 500, keys.length); j++) {
            if (!ring.order(Buffer.from(keys[j]!, 'latin1')).slice(0, 2).includes(node)) continue;
            batch.push([`set ${keys[j]} ${flagsOf(j)} 0 ${values[j]!.length}`, values[j]!]);
          }
          const got = await d.pipeline(batch);
          expect(
            got.filter((r) => r !== 'STORED\r\n'),
            `node ${node} sets ${i}..`,
          ).to.deep.equal([]);
        }
      } finally {
        d.close();
      }
    }

    await withClients(1, async ([client]) => {
      const script = Buffer.from(keys.map((k) => `get ${k}\r\n`).join(''), 'latin1');
      expect(script.length).to.be.greaterThan(4 * 64 * 1024);
      const got = await collectReplies(client!, script, keys.length);
      expectReplies(
        got,
        keys.map((k, i) => valueReply(k, flagsOf(i), values[i]!)),
        keys.map((k) => `get ${k}`),
      );
    });
  });

  it('sets of values around the copy limit, noreply sets and gets in one write keep their order', async function () {
    await withClients(1, async ([client]) => {
      const { script, want, what } = mixedPipeline('one');
      const got = await collectReplies(client!, script, want.length);
      expectReplies(got, want, what);
    });
  });

  it('requests staged while an earlier write to the node is still pending keep their bytes', async function () {
    // Node 0 is stopped, so 900 KB values fill its socket and the proxy's writes to it stay
    // pending across turns; each turn also stages short requests for that node. Reusing the
    // staging buffer while a write still holds it would send node 0 overwritten bytes.
    const node0 = c.nodes[0]!;
    await withClients(1, async ([client]) => {
      node0.pause();
      let paused = true;
      try {
        const turns: Buffer[] = [];
        const want: string[] = [];
        const what: string[] = [];
        for (let t = 0; t < 8; t++) {
          const parts: string[] = [];
          const bk = keyOn(c, `stg:pend:${t}:big`, 0, 1);
          const big = valueNamed(`big${t}`, 900 * 1024);
          parts.push(`set ${bk} ${t} 0 ${big.length}\r\n${big}\r\n`);
          want.push('STORED\r\n');
          what.push(`set ${bk} (900 KB)`);
          for (let i = 0; i < 20; i++) {
            const k = keyOn(c, `stg:pend:${t}:${i}`, 0, 1);
            const v = valueNamed(`t${t}i${i}`, 10 + i);
            parts.push(`set ${k} ${i} 0 ${v.length}\r\n${v}\r\n`, `get ${k}\r\n`);
            want.push('STORED\r\n', valueReply(k, i, v));
            what.push(`set ${k}`, `get ${k}`);
          }
          parts.push(`get ${bk}\r\n`);
          want.push(valueReply(bk, t, big));
          what.push(`get ${bk}`);
          turns.push(Buffer.from(parts.join(''), 'latin1'));
        }
        const replies = collectReplies(client!, turns[0]!, want.length, 20000);
        // Later writes arrive in later proxy turns, while node 0's socket is still full.
        for (const turn of turns.slice(1)) {
          await new Promise((r) => setTimeout(r, 30));
          client!.send(turn);
        }
        await new Promise((r) => setTimeout(r, 100));
        node0.resume();
        paused = false;
        expectReplies(await replies, want, what);
      } finally {
        if (paused) node0.resume();
      }
    });
  });

  it('20 clients writing such a pipeline at once each get their own replies in their order', async function () {
    await withClients(20, async (clients) => {
      const mixes = clients.map((_, i) => mixedPipeline(`c${i}`));
      // Every client's bytes are written before any reply can be read: one proxy turn (or a few)
      // stages the requests of many clients together.
      const replies = await Promise.all(
        clients.map((cl, i) => collectReplies(cl, mixes[i]!.script, mixes[i]!.want.length, 10000)),
      );
      replies.forEach((got, i) =>
        expectReplies(
          got,
          mixes[i]!.want,
          mixes[i]!.what.map((w) => `client ${i}: ${w}`),
        ),
      );
    });
  });
});
