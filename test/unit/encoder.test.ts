import { expect } from 'chai';
import fc from 'fast-check';
import {
  clientError,
  encodeLine,
  encodeMeta,
  encodeMetaSet,
  encodeHit,
  encodeStats,
  encodeValue,
  encodeValues,
  encodeVersion,
  metaKey,
  R,
  serverError,
} from '../../src/protocol/encoder.js';
import { itemResponse } from '../../src/protocol/binary.js';
import { EXPECT_LINES, EXPECT_VALUES, type Value } from '../../src/protocol/response-parser.js';
import { Hit } from '../../src/protocol/result.js';
import { responses } from '../helpers/binary.js';
import { bytes, parseRequests, recordReplies, recordRequests } from '../helpers/split.js';

const s = (b: Buffer): string => b.toString('latin1');

/** VALUE blocks as the ResponseParser would hand them over. */
function parseValues(wire: string): Value[] {
  const { parser, replies } = recordReplies([EXPECT_VALUES]);
  parser.push(bytes(wire));
  expect(replies).to.have.length(1);
  return replies[0]!.values!;
}

describe('encoder: fixed replies and lines', () => {
  it('pre-encodes every fixed reply with \\r\\n', () => {
    const expected: Record<string, string> = {
      END: 'END\r\n',
      ERROR: 'ERROR\r\n',
      STORED: 'STORED\r\n',
      NOT_STORED: 'NOT_STORED\r\n',
      EXISTS: 'EXISTS\r\n',
      NOT_FOUND: 'NOT_FOUND\r\n',
      DELETED: 'DELETED\r\n',
      TOUCHED: 'TOUCHED\r\n',
      OK: 'OK\r\n',
      RESET: 'RESET\r\n',
      MN: 'MN\r\n',
      HD: 'HD\r\n',
      EN: 'EN\r\n',
      NF: 'NF\r\n',
      NS: 'NS\r\n',
      EX: 'EX\r\n',
      CRLF: '\r\n',
    };
    expect(Object.keys(R).sort()).to.deep.equal(Object.keys(expected).sort());
    for (const [name, text] of Object.entries(expected)) {
      expect(s(R[name as keyof typeof R]), name).to.equal(text);
    }
  });

  it('encodes error, version and arbitrary lines', () => {
    expect(s(encodeLine('HD O1'))).to.equal('HD O1\r\n');
    expect(s(clientError('bad data chunk'))).to.equal('CLIENT_ERROR bad data chunk\r\n');
    expect(s(serverError('out of memory'))).to.equal('SERVER_ERROR out of memory\r\n');
    expect(s(encodeVersion('1.6.18'))).to.equal('VERSION 1.6.18\r\n');
    expect(s(encodeLine('caf\xe9'))).to.equal('caf\xe9\r\n');
    expect(encodeLine('caf\xe9')).to.have.length(6);
  });
});

describe('encoder: encodeStats', () => {
  it('writes STAT lines then END', () => {
    const out = encodeStats([
      ['pid', 123],
      ['version', '1.6.18'],
      ['total_items', 18446744073709551615n],
      ['rusage_user', 0.5],
    ]);
    expect(s(out)).to.equal(
      'STAT pid 123\r\nSTAT version 1.6.18\r\nSTAT total_items 18446744073709551615\r\nSTAT rusage_user 0.5\r\nEND\r\n',
    );
  });

  it('is just END for no stats, and takes any iterable', () => {
    expect(s(encodeStats([]))).to.equal('END\r\n');
    const m = new Map<string, number>([
      ['a', 1],
      ['b', 2],
    ]);
    expect(s(encodeStats(m))).to.equal('STAT a 1\r\nSTAT b 2\r\nEND\r\n');
  });

  it('parses back as a stats reply', () => {
    const { parser, replies } = recordReplies([EXPECT_LINES]);
    parser.push(
      encodeStats([
        ['curr_connections', 10],
        ['threads', 4],
      ]),
    );
    expect(replies[0]!.lines!.map(s)).to.deep.equal(['STAT curr_connections 10', 'STAT threads 4']);
  });
});

describe('encoder: encodeValues and encodeValue', () => {
  it('writes the received VALUE blocks as they are, skips nulls, then one END', () => {
    const a = parseValues('VALUE a 1 3 9\r\nabc\r\nEND\r\n')[0]!;
    const [b, c] = parseValues('VALUE b 0 0\r\n\r\nVALUE c 2 4\r\nx\r\ny\r\nEND\r\n');
    const out = encodeValues([a, null, b!, null, c!]);
    expect(out).to.have.length(4);
    expect(out[0]).to.equal(a.raw); // the very same buffer: no copy
    expect(out[1]).to.equal(b!.raw);
    expect(out[2]).to.equal(c!.raw);
    expect(out[3]).to.equal(R.END);
    expect(s(Buffer.concat(out))).to.equal(
      'VALUE a 1 3 9\r\nabc\r\nVALUE b 0 0\r\n\r\nVALUE c 2 4\r\nx\r\ny\r\nEND\r\n',
    );
  });

  it('is END alone for no values', () => {
    expect(encodeValues([])).to.deep.equal([R.END]);
    expect(encodeValues([null, null])).to.deep.equal([R.END]);
  });

  it('builds a VALUE block, with or without cas', () => {
    expect(s(encodeValue(Buffer.from('k'), 5, Buffer.from('hello')))).to.equal(
      'VALUE k 5 5\r\nhello\r\n',
    );
    expect(s(encodeValue(Buffer.from('k'), 0, Buffer.from('a\r\nb'), 0n))).to.equal(
      'VALUE k 0 4 0\r\na\r\nb\r\n',
    );
    expect(
      s(encodeValue(Buffer.from('k'), 4294967295, Buffer.alloc(0), 18446744073709551615n)),
    ).to.equal('VALUE k 4294967295 0 18446744073709551615\r\n\r\n');
  });

  it('encodeValue round-trips through the ResponseParser', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0x21, max: 0xff }), { minLength: 1, maxLength: 250 }),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.uint8Array({ maxLength: 200 }),
        fc.option(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), { nil: undefined }),
        (keyBytes, flags, data, cas) => {
          const key = Buffer.from(keyBytes);
          const wire = Buffer.concat([encodeValue(key, flags, Buffer.from(data), cas), R.END]);
          const { parser, replies } = recordReplies([EXPECT_VALUES]);
          parser.push(wire);
          const v = replies[0]!.values![0]!;
          expect(v.key.equals(key)).to.equal(true);
          expect(v.flags).to.equal(flags);
          expect(v.data.equals(Buffer.from(data))).to.equal(true);
          expect(v.cas).to.equal(cas);
          // Merging it with encodeValues gives the same bytes back.
          expect(Buffer.concat(encodeValues([v])).equals(wire)).to.equal(true);
        },
      ),
      { numRuns: 200, seed: 5 },
    );
  });
});

describe('encoder: meta commands', () => {
  it('metaKey passes printable keys through and base64s keys a token cannot hold', () => {
    const plain = Buffer.from('user:42~\x80\xff');
    const m = metaKey(plain);
    expect(m.binary).to.equal(false);
    expect(m.token).to.equal(plain);
    for (const bad of ['a b', 'a\r\nb', '\x00', 'x\ny']) {
      const k = metaKey(Buffer.from(bad, 'latin1'));
      expect(k.binary, JSON.stringify(bad)).to.equal(true);
      expect(s(k.token)).to.equal(Buffer.from(bad, 'latin1').toString('base64'));
    }
    // Other control bytes stay raw, as a classic command carries them: base64 would push a
    // 187-250 byte key past memcached's 250-byte token limit.
    for (const raw of ['a\tb', '\x7f', 'x\x1f', 'k'.repeat(249) + '\x01']) {
      const k = metaKey(Buffer.from(raw, 'latin1'));
      expect(k.binary, JSON.stringify(raw)).to.equal(false);
      expect(s(k.token)).to.equal(raw);
    }
  });

  it('encodeMetaSet writes length, flags and TTL, plus extra flags', () => {
    expect(s(encodeMetaSet(Buffer.from('k'), Buffer.from('abc'), 5, 10))).to.equal(
      'ms k 3 F5 T10\r\nabc\r\n',
    );
    expect(s(encodeMetaSet(Buffer.from('k'), Buffer.from('a\r\n'), 0, -1, ' C99 MS q'))).to.equal(
      'ms k 3 F0 T-1 C99 MS q\r\na\r\n\r\n',
    );
  });

  it('encodeMetaSet gives a binary key base64 and the b flag', () => {
    const out = encodeMetaSet(Buffer.from('a b'), Buffer.from('xy'), 1, 0);
    expect(s(out)).to.equal('ms YSBi 2 b F1 T0\r\nxy\r\n');
  });

  it('encodeMeta builds mg/md/ma lines', () => {
    expect(s(encodeMeta('mg', Buffer.from('k'), 'v f t c'))).to.equal('mg k v f t c\r\n');
    expect(s(encodeMeta('md', Buffer.from('k'), ''))).to.equal('md k\r\n');
    expect(s(encodeMeta('ma', Buffer.from('k'), 'D5 MD'))).to.equal('ma k D5 MD\r\n');
    expect(s(encodeMeta('mg', Buffer.from('\x00\x01'), 'v'))).to.equal('mg AAE= b v\r\n');
    expect(s(encodeMeta('md', Buffer.from(' '), ''))).to.equal('md IA== b\r\n');
  });

  it('what encodeMetaSet and encodeMeta write parses back to the same key, flags, TTL and value', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 1, maxLength: 186 }),
        fc.uint8Array({ maxLength: 100 }),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: -0x80000000, max: 0x7fffffff }),
        (keyBytes, data, flags, ttl) => {
          const key = Buffer.from(keyBytes);
          const { parser, requests, events } = recordRequests();
          parser.push(encodeMetaSet(key, Buffer.from(data), flags, ttl, ' q'));
          parser.push(encodeMeta('mg', key, 'v f'));
          parser.push(encodeMeta('md', key, 'q'));
          expect(events.filter((e) => 'error' in e)).to.deep.equal([]);
          expect(requests.map((r) => r.cmd)).to.deep.equal(['ms', 'mg', 'md']);
          for (const r of requests) expect(r.key.equals(key)).to.equal(true);
          const [set, get, del] = requests;
          expect(set!.flags).to.equal(flags);
          expect(set!.exptime).to.equal(ttl);
          expect(set!.noreply).to.equal(true);
          expect(set!.value.equals(Buffer.from(data))).to.equal(true);
          expect(get!.hasFlag('v') && get!.hasFlag('f')).to.equal(true);
          expect(del!.noreply).to.equal(true);
        },
      ),
      { numRuns: 200, seed: 9 },
    );
  });

  it('a 250-byte printable key is sent as is', () => {
    const key = Buffer.from('k'.repeat(250));
    const events = parseRequests([encodeMeta('mg', key, 'v')]);
    expect(events).to.have.length(1);
    expect(events[0]).to.include({ cmd: 'mg' });
    expect((events[0] as { keys: string[] }).keys).to.deep.equal(['k'.repeat(250)]);
  });
});

describe('encoder: a single-key hit in each protocol', () => {
  const wire = 'VALUE k 7 5 42\r\nhello\r\nEND\r\n';
  const v = (): Value => parseValues(wire)[0]!;
  const flat = (out: Buffer | Buffer[]): string =>
    s(Buffer.isBuffer(out) ? out : Buffer.concat(out));

  it('text: the node reply as it came when the token is its cas, else a new VALUE line', () => {
    const reply = bytes(wire);
    expect(encodeHit(new Hit(reply, v(), 42n))).to.equal(reply);
    expect(encodeHit(new Hit(reply, v(), undefined))).to.equal(reply);
    expect(flat(encodeHit(new Hit(reply, v(), 1n << 56n)))).to.equal(
      `VALUE k 7 5 ${1n << 56n}\r\nhello\r\nEND\r\n`,
    );
    // A reply that came in pieces is rebuilt from the value.
    expect(flat(encodeHit(new Hit(Buffer.alloc(0), v(), undefined)))).to.equal(wire);
  });

  it('binary: header, flags, key for getk, value; large values as a second piece', () => {
    for (const size of [5, 20000]) {
      const value = Buffer.alloc(size, 0x61);
      for (const key of [null, Buffer.from('kk')]) {
        const out = itemResponse(0x0c, 77, (3n << 56n) | 9n, 0xfffffffe, key, value);
        expect(Buffer.isBuffer(out), `size ${size}`).to.equal(size < 1000);
        const bytesOut = Buffer.isBuffer(out) ? out : Buffer.concat(out);
        const { packets, rest } = responses(bytesOut);
        expect(rest.length).to.equal(0);
        expect(packets).to.have.length(1);
        const p = packets[0]!;
        expect([p.magic, p.opcode, p.status, p.opaque, p.cas]).to.deep.equal([
          0x81,
          0x0c,
          0,
          77,
          (3n << 56n) | 9n,
        ]);
        expect(p.extras.readUInt32BE(0)).to.equal(0xfffffffe);
        expect(s(p.key)).to.equal(key === null ? '' : 'kk');
        expect(p.value.equals(value)).to.equal(true);
      }
    }
  });
});
