/**
 * The pure parts of routing: how replica replies combine (reply-rules.ts),
 * the cas-token codec (cas-token.ts), an item read and its copy request
 * (item.ts), and the metadump stream parser (metadump.ts), which is fed
 * through every split of its input.
 */

import net from 'node:net';
import { expect } from 'chai';
import { BackendError } from '../../src/errors.js';
import { Reply, Value } from '../../src/protocol/response-parser.js';
import { CAS_NEVER, CasTokens } from '../../src/routing/cas-token.js';
import { itemOf, storeItem } from '../../src/routing/item.js';
import { MetadumpParser, metadump } from '../../src/routing/metadump.js';
import {
  bestReply,
  classicSuccess,
  metaMiss,
  metaSuccess,
  missIsTrue,
  notFound,
  notSent,
  plainSuccess,
} from '../../src/routing/reply-rules.js';
import { allSplits, bytes } from '../helpers/split.js';

/** A Reply as the response parser builds it, from one reply's bytes. */
function reply(text: string): Reply {
  const raw = bytes(text);
  const eol = raw.indexOf('\r\n');
  const r = new Reply(raw.subarray(0, eol), raw);
  const m = /^VA (\d+)/.exec(text);
  if (m) {
    r.dataOffset = eol + 2;
    r.bytes = Number(m[1]);
  }
  return r;
}

const timeout = new BackendError('MSP_BACKEND_TIMEOUT', 'timed out');
const refused = new BackendError('MSP_BACKEND_CONNECT', 'refused');

describe('reply rules', function () {
  it('success, miss and not-found by command family', function () {
    for (const ok of ['STORED', 'DELETED', 'TOUCHED', 'HD', 'HD c5', 'VA 1', 'OK']) {
      expect(plainSuccess(reply(`${ok}\r\n`)), ok).to.equal(true);
    }
    for (const no of [
      'NOT_STORED',
      'EXISTS',
      'NOT_FOUND',
      'NS',
      'EX',
      'NF',
      'EN',
      'SERVER_ERROR x',
    ]) {
      expect(plainSuccess(reply(`${no}\r\n`)), no).to.equal(false);
    }
    expect(classicSuccess(reply('STORED\r\n'))).to.equal(true);
    expect(classicSuccess(reply('42\r\n')), 'incr result').to.equal(true);
    expect(classicSuccess(reply('NOT_FOUND\r\n'))).to.equal(false);
    expect(classicSuccess(reply('CLIENT_ERROR cannot increment\r\n'))).to.equal(false);
    const absent = reply('HD\r\n');
    absent.absent = true;
    expect(metaSuccess(absent), 'a quiet success').to.equal(true);
    expect(metaSuccess(reply('NS\r\n'))).to.equal(false);
    expect(notFound(reply('NOT_FOUND\r\n'))).to.equal(true);
    expect(notFound(reply('NF\r\n'))).to.equal(true);
    expect(notFound(reply('DELETED\r\n'))).to.equal(false);
    expect(metaMiss(reply('EN\r\n'))).to.equal(true);
    expect(metaMiss(reply('HD\r\n'))).to.equal(false);
  });

  it('a request is resent elsewhere only when it never reached the node', function () {
    expect(notSent(refused)).to.equal(true);
    expect(notSent(new BackendError('MSP_NODE_DOWN', 'down'))).to.equal(true);
    expect(notSent(timeout), 'a timeout may have run').to.equal(false);
    expect(notSent(new BackendError('MSP_BACKEND_CLOSED', 'closed'))).to.equal(false);
  });

  it('a plain write answers the first success, else the first reply, else nothing', function () {
    const stored = reply('STORED\r\n');
    const notStored = reply('NOT_STORED\r\n');
    expect(bestReply([notStored, stored], plainSuccess)).to.equal(1);
    expect(bestReply([timeout, stored], plainSuccess)).to.equal(1);
    expect(bestReply([timeout, notStored], plainSuccess)).to.equal(1);
    expect(bestReply([notStored, timeout], plainSuccess)).to.equal(0);
    expect(bestReply([timeout, undefined, refused], plainSuccess)).to.equal(-1);
    expect(bestReply([], plainSuccess)).to.equal(-1);
  });

  it('a miss is true when every replica missed, or the ones that did are complete', function () {
    const all = (): boolean => true;
    const none = (): boolean => false;
    const only = (n: number) => (x: number) => x === n;
    expect(missIsTrue([0, 1], [0, 1], none), 'both missed').to.equal(true);
    expect(missIsTrue([0, 1], [1, 0], none), 'in any order').to.equal(true);
    expect(missIsTrue([0, 1], [1], all), 'the one that answered is complete').to.equal(true);
    expect(missIsTrue([0, 1], [1], only(0)), 'the one that answered is not').to.equal(false);
    expect(missIsTrue([0, 1, 2], [0, 1], only(0)), 'one of two is not').to.equal(false);
    expect(missIsTrue([0, 1, 2], [0, 1], all)).to.equal(true);
    expect(missIsTrue([0, 1], [], all), 'nobody answered').to.equal(false);
    expect(missIsTrue([3], [3], none), 'one replica').to.equal(true);
  });
});

describe('cas tokens', function () {
  const tokens = new CasTokens(2);

  it('carry their node in the top byte, and go back only to it', function () {
    const t = tokens.out(2, 12345n);
    expect(t >> 56n).to.equal(3n);
    expect(tokens.toNode(2, t)).to.equal(12345n);
    expect(tokens.toNode(1, t), 'another node: a cas no item has').to.equal(CAS_NEVER);
    expect(tokens.toNode(1, 0n), '0 keeps its meaning').to.equal(0n);
    expect(tokens.toNode(0, 77n), 'a token no node issued').to.equal(CAS_NEVER);
    const big = (1n << 56n) - 1n;
    expect(tokens.toNode(0, tokens.out(0, big))).to.equal(big);
  });

  it('pass through unchanged with one replica', function () {
    const one = new CasTokens(1);
    expect(one.encoding).to.equal(false);
    expect(one.out(3, 99n)).to.equal(99n);
    expect(one.toNode(5, 99n)).to.equal(99n);
  });

  it('rewrite a gets VALUE line and a meta c flag, and nothing else', function () {
    const raw = bytes('VALUE k 5 2 99\r\nhi\r\n');
    const v = new Value(raw, 1, 5, 16, 2, 99n);
    const out = tokens.value(v, 0);
    expect(Buffer.concat(out as Buffer[]).toString('latin1')).to.equal(
      `VALUE k 5 2 ${tokens.out(0, 99n)}\r\nhi\r\n`,
    );
    const va = tokens.meta(reply('VA 2 f5 c99 t-1\r\nhi\r\n'), 1);
    expect(Buffer.concat(va as Buffer[]).toString('latin1')).to.equal(
      `VA 2 f5 c${tokens.out(1, 99n)} t-1\r\nhi\r\n`,
    );
    const hd = tokens.meta(reply('HD c7 Oabc\r\n'), 0);
    expect((hd as Buffer).toString('latin1')).to.equal(`HD c${tokens.out(0, 7n)} Oabc\r\n`);
    const plain = reply('HD Oc1\r\n');
    expect(tokens.meta(plain, 0), 'an opaque that starts with c is not a cas').to.equal(plain.raw);
    const last = tokens.meta(reply('HD t-1 c12\r\n'), 2);
    expect((last as Buffer).toString('latin1')).to.equal(`HD t-1 c${tokens.out(2, 12n)}\r\n`);
    const notDigits = reply('HD c12x kc3\r\n');
    expect(tokens.meta(notDigits, 0), 'c followed by more than digits').to.equal(notDigits.raw);
  });
});

describe('item copy', function () {
  it('reads value, flags, TTL and cas from an mg reply, and a miss as null', function () {
    const item = itemOf(reply('VA 3 f7 t120 c55\r\nabc\r\n'))!;
    expect(item.data.toString()).to.equal('abc');
    expect([item.flags, item.ttl, item.cas]).to.deep.equal([7, 120, '55']);
    expect(itemOf(reply('EN\r\n'))).to.equal(null);
    expect(itemOf(reply('VA 0 t-1\r\n\r\n'))).to.deep.include({ flags: 0, ttl: -1 });
  });

  it('writes the item exactly, or deletes it when there is none or it is expiring', function () {
    const item = itemOf(reply('VA 3 f7 t120 c55\r\nabc\r\n'))!;
    const k = Buffer.from('k');
    expect(storeItem(k, item).toString()).to.equal('ms k 3 F7 T120\r\nabc\r\n');
    expect(storeItem(k, { ...item, ttl: -1 }, ' ME').toString()).to.equal(
      'ms k 3 F7 T0 ME\r\nabc\r\n',
    );
    expect(storeItem(k, null).toString()).to.equal('md k\r\n');
    expect(storeItem(k, { ...item, ttl: 0 }).toString()).to.equal('md k\r\n');
    expect(storeItem(Buffer.from('a b'), null).toString(), 'a key with a space').to.equal(
      `md ${Buffer.from('a b').toString('base64')} b\r\n`,
    );
  });
});

describe('metadump', function () {
  const listing =
    'key=plain exp=-1 la=1 cas=1 fetch=no cls=1 size=60\n' +
    'key=a%20b%0D%0A%25 exp=-1 la=1 cas=2 fetch=no cls=1 size=60\n' +
    'key=%E2%82%AC exp=5 la=1 cas=3 fetch=no cls=1 size=60\n' +
    'END\r\n';

  it('parses keys (URL-decoded) and END at every split', function () {
    const expected = ['plain', 'a b\r\n%', '\u20ac'];
    for (const split of allSplits(bytes(listing))) {
      const keys: string[] = [];
      const p = new MetadumpParser((k) => keys.push(Buffer.from(k).toString('utf8')));
      let r: boolean | Error = false;
      for (const chunk of split.chunks) {
        expect(r, split.name).to.equal(false);
        r = p.push(chunk);
      }
      expect(r, split.name).to.equal(true);
      expect(keys, split.name).to.deep.equal(expected);
    }
  });

  it('ends with the error a node answers instead (BUSY, ERROR)', function () {
    for (const line of ['BUSY currently processing crawler request', 'ERROR']) {
      const r = new MetadumpParser(() => {}).push(bytes(`${line}\r\n`));
      expect(r).to.be.instanceOf(Error);
      expect((r as Error).message).to.equal(line);
    }
    const long = `key=${'x'.repeat(251)} exp=-1\n`;
    expect(new MetadumpParser(() => {}).push(bytes(long))).to.be.instanceOf(Error);
  });

  it('lists with the hash walk, and with the LRU walk where a node refuses it', async function () {
    const asked: string[] = [];
    const server = net.createServer((s) => {
      s.on('data', (d) => {
        const line = d.toString('latin1').trim();
        asked.push(line);
        if (line.endsWith('hash')) s.end('CLIENT_ERROR bad command line format\r\n');
        else s.end('key=k1 exp=-1\nkey=k2 exp=-1\nEND\r\n');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as net.AddressInfo).port;
      const keys: string[] = [];
      const err = await new Promise<Error | null>((resolve) =>
        metadump(`127.0.0.1:${port}`, new Set(), (k) => keys.push(k.toString()), resolve),
      );
      expect(err).to.equal(null);
      expect(keys).to.deep.equal(['k1', 'k2']);
      expect(asked).to.deep.equal(['lru_crawler metadump hash', 'lru_crawler metadump all']);
    } finally {
      server.close();
    }
  });
});
