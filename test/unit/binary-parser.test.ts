/**
 * BinaryParser: streams of requests, valid and not, fed whole, byte by byte,
 * in two pieces at every boundary and at random; the events (packets with
 * their fields, errors with memcached's response and whether the connection
 * closes) must not depend on the split.
 */

import { expect } from 'chai';
import { BinaryParser, Op, Status } from '../../src/protocol/binary.js';
import type { ProtocolError } from '../../src/protocol/request.js';
import { expExtras, incrExtras, request, responses, setExtras } from '../helpers/binary.js';
import { allSplits } from '../helpers/split.js';

type Event = string;

function parse(chunks: readonly Buffer[], options = {}): Event[] {
  const events: Event[] = [];
  const p = new BinaryParser(
    {
      onPacket: (pk) =>
        events.push(
          `packet op=${pk.opcode} cmd=${pk.command} q=${pk.quiet} opq=${pk.opaque} cas=${pk.cas}` +
            ` ext=${pk.extras.toString('hex')} key=${pk.key.toString('hex')} val=${pk.value.toString('hex')}`,
        ),
      onError: (e: ProtocolError) => {
        const r = e.bytes === null ? [] : responses(e.bytes).packets;
        const what = r.map(
          (x) =>
            `st=${x.status.toString(16)} op=${x.opcode} opq=${x.opaque} body=${x.value.toString()}`,
        );
        events.push(`error close=${e.close} silent=${e.silent} ${what.join(',')}`);
      },
    },
    options,
  );
  for (const c of chunks) p.push(c);
  return events;
}

function check(name: string, input: Buffer, expected: Event[], options = {}): void {
  for (const split of allSplits(input, { maxBoundaries: 400 })) {
    expect(parse(split.chunks, options), `${name} (${split.name})`).to.deep.equal(expected);
  }
}

describe('BinaryParser', function () {
  it('reads every opcode memcached runs, with its fields, at every split', function () {
    const stream = Buffer.concat([
      request({ opcode: Op.GET, key: 'k1', opaque: 1 }),
      request({
        opcode: Op.SETQ,
        key: 'k2',
        extras: setExtras(7, 100),
        value: 'hello',
        opaque: 2,
        // Both halves of the cas field.
        cas: (1n << 56n) + 9n,
      }),
      request({
        opcode: Op.INCREMENT,
        key: 'n',
        extras: incrExtras(5n, 1n, 0xffffffff),
        opaque: 3,
      }),
      request({ opcode: Op.GATKQ, key: 'k3', extras: expExtras(30), opaque: 4 }),
      request({ opcode: Op.APPEND, key: 'k4', value: 'tail', opaque: 5 }),
      request({ opcode: Op.FLUSH, extras: expExtras(10), opaque: 6 }),
      request({ opcode: Op.NOOP, opaque: 7 }),
      request({ opcode: Op.STAT, key: 'settings', opaque: 8 }),
      request({ opcode: Op.DELETE, key: 'a b\r\n', opaque: 9 }),
    ]);
    const events = parse([stream]);
    expect(events).to.have.length(9);
    expect(events[1]).to.equal(
      `packet op=${Op.SETQ} cmd=${Op.SET} q=true opq=2 cas=${(1n << 56n) + 9n} ext=${setExtras(7, 100).toString('hex')}` +
        ` key=${Buffer.from('k2').toString('hex')} val=${Buffer.from('hello').toString('hex')}`,
    );
    expect(events[8]).to.contain(`key=${Buffer.from('a b\r\n').toString('hex')}`);
    check('valid stream', stream, events);
  });

  it('answers what memcached answers to malformed requests, closing where it closes', function () {
    const cases: [string, Buffer, string[]][] = [
      [
        'key longer than the body: unknown command, close',
        request({ opcode: Op.GET, key: 'abc', bodyLength: 2 }),
        [`error close=true silent=false st=81 op=0 opq=0 body=Unknown command`],
      ],
      [
        'get with extras: invalid arguments, close',
        request({ opcode: Op.GET, key: 'k', extras: expExtras(1), opaque: 5 }),
        [`error close=true silent=false st=4 op=0 opq=5 body=Invalid arguments`],
      ],
      [
        'set without extras: invalid arguments, close',
        request({ opcode: Op.SET, key: 'k', value: 'v' }),
        [`error close=true silent=false st=4 op=1 opq=0 body=Invalid arguments`],
      ],
      [
        'a 251-byte key: invalid arguments, close',
        request({ opcode: Op.GET, key: 'k'.repeat(251) }),
        [`error close=true silent=false st=4 op=0 opq=0 body=Invalid arguments`],
      ],
      [
        'bad magic: closed without a reply',
        request({ opcode: Op.NOOP, magic: 0x81 }),
        [`error close=true silent=true `],
      ],
    ];
    for (const [name, input, expected] of cases) {
      // Whatever follows a closing error is never read.
      check(name, Buffer.concat([input, request({ opcode: Op.NOOP, opaque: 99 })]), expected);
    }
  });

  it('skips what memcached skips: an unknown opcode, a value too large', function () {
    // memcached skips the body length again after the extras and key it already read.
    const unknown = request({ opcode: 0x1b, extras: expExtras(1), opaque: 3 });
    const skipped = Buffer.alloc(4, 0x80);
    const next = request({ opcode: Op.NOOP, opaque: 4 });
    check('unknown opcode', Buffer.concat([unknown, skipped, next]), [
      `error close=false silent=false st=81 op=27 opq=3 body=Unknown command`,
      `packet op=10 cmd=10 q=false opq=4 cas=0 ext= key= val=`,
    ]);
    const big = request({
      opcode: Op.SET,
      key: 'k',
      extras: setExtras(0, 0),
      value: Buffer.alloc(2000, 0x61),
      opaque: 5,
    });
    const events = parse([Buffer.concat([big, next])], { itemSizeMax: 1024 });
    expect(events).to.deep.equal([
      `error close=false silent=false st=3 op=1 opq=5 body=Too large.`,
      `packet op=10 cmd=10 q=false opq=4 cas=0 ext= key= val=`,
    ]);
    check('value too large', Buffer.concat([big, next]), events, { itemSizeMax: 1024 });
  });

  it('SASL opcodes are unknown commands while auth is off (their body skipped)', function () {
    const auth = request({ opcode: Op.SASL_AUTH, key: 'PLAIN', value: '\0u\0p', opaque: 1 });
    check('sasl off', Buffer.concat([auth, request({ opcode: Op.NOOP, opaque: 2 })]), [
      `error close=false silent=false st=81 op=33 opq=1 body=Unknown command`,
      `packet op=10 cmd=10 q=false opq=2 cas=0 ext= key= val=`,
    ]);
    expect(Status.AUTH_ERROR).to.equal(0x20);
  });
});
