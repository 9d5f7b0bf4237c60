/**
 * ResponseParser: each case is a queue of expectations, the bytes a memcached
 * sends back and the events they must produce, fed through every chunking.
 */

import { expect } from 'chai';
import {
  EXPECT_LINE,
  EXPECT_LINES,
  EXPECT_QUIET,
  EXPECT_VALUES,
  type Expectation,
  isErrorLine,
  type ResponseParserOptions,
} from '../../src/protocol/response-parser.js';
import {
  allSplits,
  byteByByte,
  bytes,
  type PlainDesync,
  type PlainReply,
  type PlainValue,
  parseReplies,
  randomSplits,
  recordReplies,
  type ReplyEvent,
  type SplitOptions,
} from '../helpers/split.js';

// ---------------------------------------------------------------------------
// Expected-event builders

/** A one-line reply. */
function line(text: string): PlainReply {
  return { line: text, raw: text + '\r\n', values: null, lines: null, data: null, absent: false };
}

/** A get reply: VALUE blocks ended by `end` (END, or an error line with no values). */
function values(vs: PlainValue[], end = 'END'): PlainReply {
  return { line: end, raw: '', values: vs, lines: null, data: null, absent: false };
}

function value(key: string, flags: number, data: string, cas: string | null = null): PlainValue {
  return { key, flags, bytes: data.length, cas, data };
}

/** A stats-like reply: lines ended by END. */
function lines(ls: string[], end = 'END'): PlainReply {
  return { line: end, raw: '', values: null, lines: ls, data: null, absent: false };
}

/** A meta VA reply with its data block. */
function va(header: string, data: string): PlainReply {
  return {
    line: header,
    raw: `${header}\r\n${data}\r\n`,
    values: null,
    lines: null,
    data,
    absent: false,
  };
}

const ABSENT: PlainReply = {
  line: '',
  raw: '',
  values: null,
  lines: null,
  data: null,
  absent: true,
};

function desync(reason: string): PlainDesync {
  return { desync: reason };
}

/** Wire form of a VALUE block. */
function block(key: string, flags: number, data: string, cas?: string): string {
  return `VALUE ${key} ${flags} ${data.length}${cas === undefined ? '' : ` ${cas}`}\r\n${data}\r\n`;
}

interface Case {
  name: string;
  expect: Expectation[];
  input: string;
  events: ReplyEvent[];
  options?: ResponseParserOptions;
  split?: SplitOptions;
}

function run(cases: Case[]): void {
  for (const c of cases) {
    it(c.name, () => {
      const input = bytes(c.input);
      let n = 0;
      for (const split of allSplits(input, c.split)) {
        expect(parseReplies(c.expect, split.chunks, c.options), split.name).to.deep.equal(c.events);
        n++;
      }
      expect(n).to.be.greaterThan(0);
    });
  }
}

const L: Expectation = EXPECT_LINE;
const V: Expectation = EXPECT_VALUES;
const S: Expectation = EXPECT_LINES;
const Q: Expectation = EXPECT_QUIET;

// ---------------------------------------------------------------------------

describe('ResponseParser: single-line replies', () => {
  const texts = [
    'STORED',
    'NOT_STORED',
    'EXISTS',
    'NOT_FOUND',
    'DELETED',
    'TOUCHED',
    'OK',
    '0',
    '18446744073709551615',
    'VERSION 1.6.18',
    'ERROR',
    'CLIENT_ERROR bad data chunk',
    'SERVER_ERROR object too large for cache',
    'RESET',
  ];
  run(texts.map((t) => ({ name: t, expect: [L], input: `${t}\r\n`, events: [line(t)] })));
  run([
    {
      name: 'a pipeline of single-line replies, in order',
      expect: texts.map(() => L),
      input: texts.map((t) => `${t}\r\n`).join(''),
      events: texts.map(line),
    },
    {
      name: 'an empty line is a reply too',
      expect: [L],
      input: '\r\n',
      events: [line('')],
    },
  ]);

  it('isError recognises the three error lines', () => {
    const { parser, replies } = recordReplies([L, L, L, L, L, L]);
    parser.push(
      bytes('ERROR\r\nCLIENT_ERROR x\r\nSERVER_ERROR y\r\nSTORED\r\nEXISTS\r\nSERVER\r\n'),
    );
    expect(replies.map((r) => r.isError)).to.deep.equal([true, true, true, false, false, false]);
    expect(isErrorLine(Buffer.from('ERRORS'))).to.equal(true);
    expect(isErrorLine(Buffer.from(''))).to.equal(false);
    expect(isErrorLine(Buffer.from('CLIENT_ERRO'))).to.equal(false);
  });
});

describe('ResponseParser: get replies', () => {
  run([
    { name: 'a miss: END alone', expect: [V], input: 'END\r\n', events: [values([])] },
    {
      name: 'one value',
      expect: [V],
      input: `${block('k', 5, 'hello')}END\r\n`,
      events: [values([value('k', 5, 'hello')])],
    },
    {
      name: 'several values, with cas, containing \\r\\n, END and VALUE lines',
      expect: [V],
      input: `${block('a', 0, 'x\r\ny', '1')}${block('b', 4294967295, 'END\r\n', '18446744073709551615')}${block('c', 1, 'VALUE c 1 1\r\n', '0')}END\r\n`,
      events: [
        values([
          value('a', 0, 'x\r\ny', '1'),
          value('b', 4294967295, 'END\r\n', '18446744073709551615'),
          value('c', 1, 'VALUE c 1 1\r\n', '0'),
        ]),
      ],
    },
    {
      name: 'an empty value and a binary value',
      expect: [V],
      input: `${block('e', 0, '')}${block('z', 0, '\x00\xff\r\x0a\x0d')}END\r\n`,
      events: [values([value('e', 0, ''), value('z', 0, '\x00\xff\r\n\r')])],
    },
    {
      name: 'a 250-byte key and a 100 KiB value',
      expect: [V],
      input: `${block('k'.repeat(250), 0, 'v'.repeat(102400))}END\r\n`,
      split: { maxBoundaries: 100, pieceSize: 997 },
      events: [values([value('k'.repeat(250), 0, 'v'.repeat(102400))])],
    },
    {
      name: 'a get reply that is an error line',
      expect: [V, V],
      input:
        'SERVER_ERROR out of memory writing get response\r\nCLIENT_ERROR bad command line format\r\n',
      events: [
        values([], 'SERVER_ERROR out of memory writing get response'),
        values([], 'CLIENT_ERROR bad command line format'),
      ],
    },
    {
      name: 'back-to-back get replies',
      expect: [V, V, V],
      input: `${block('a', 0, '1')}END\r\nEND\r\n${block('b', 0, '2', '9')}END\r\n`,
      events: [values([value('a', 0, '1')]), values([]), values([value('b', 0, '2', '9')])],
    },
  ]);
});

describe('ResponseParser: stats-like replies', () => {
  run([
    {
      name: 'STAT lines ended by END',
      expect: [S],
      input: 'STAT pid 1\r\nSTAT version 1.6.18\r\nSTAT rusage_user 0.1\r\nEND\r\n',
      events: [lines(['STAT pid 1', 'STAT version 1.6.18', 'STAT rusage_user 0.1'])],
    },
    { name: 'END alone', expect: [S], input: 'END\r\n', events: [lines([])] },
    {
      name: 'ITEM lines (stats cachedump)',
      expect: [S],
      input: 'ITEM a [1 b; 0 s]\r\nITEM b [2 b; 0 s]\r\nEND\r\n',
      events: [lines(['ITEM a [1 b; 0 s]', 'ITEM b [2 b; 0 s]'])],
    },
    {
      name: 'PREFIX lines (stats detail dump)',
      expect: [S],
      input: 'PREFIX a get 1 hit 0 set 0 del 0\r\nEND\r\n',
      events: [lines(['PREFIX a get 1 hit 0 set 0 del 0'])],
    },
    {
      name: 'lru_crawler metadump key=value lines',
      expect: [S],
      input: 'key=a exp=-1 la=1 cas=2 fetch=no cls=1 size=63\r\nEND\r\n',
      events: [lines(['key=a exp=-1 la=1 cas=2 fetch=no cls=1 size=63'])],
    },
    {
      name: 'single-line answers: RESET, OK, an error',
      expect: [S, S, S],
      input: 'RESET\r\nOK\r\nERROR\r\n',
      events: [line('RESET'), line('OK'), lines([], 'ERROR')],
    },
    {
      name: 'stats then a line reply',
      expect: [S, L],
      input: 'STAT a 1\r\nEND\r\nSTORED\r\n',
      events: [lines(['STAT a 1']), line('STORED')],
    },
  ]);
});

describe('ResponseParser: meta replies', () => {
  run([
    ...[
      'HD',
      'HD O123 k',
      'EN',
      'NF',
      'NS',
      'EX',
      'MN',
      'ME k exp=-1 la=1 cas=2 fetch=no cls=1 size=63',
    ].map((t) => ({
      name: t,
      expect: [L],
      input: `${t}\r\n`,
      events: [line(t)],
    })),
    {
      name: 'VA with data',
      expect: [L],
      input: 'VA 3 f0 t-1\r\nabc\r\n',
      events: [va('VA 3 f0 t-1', 'abc')],
    },
    {
      name: 'VA with \\r\\n in the data',
      expect: [L],
      input: 'VA 6\r\nHD\r\n\r\n\r\n',
      events: [va('VA 6', 'HD\r\n\r\n')],
    },
    {
      name: 'VA of zero bytes',
      expect: [L],
      input: 'VA 0 s0\r\n\r\n',
      events: [va('VA 0 s0', '')],
    },
    {
      name: 'a meta pipeline',
      expect: [L, L, L, L],
      input: 'HD\r\nVA 2 O1\r\nhi\r\nEN\r\nMN\r\n',
      events: [line('HD'), va('VA 2 O1', 'hi'), line('EN'), line('MN')],
    },
  ]);
});

describe('ResponseParser: quiet meta commands', () => {
  run([
    {
      name: 'the reply is absent when the next line is MN; MN goes to the mn',
      expect: [Q, L],
      input: 'MN\r\n',
      events: [ABSENT, line('MN')],
    },
    {
      name: 'the reply is present otherwise',
      expect: [Q, L],
      input: 'NS\r\nMN\r\n',
      events: [line('NS'), line('MN')],
    },
    {
      name: 'several quiet commands, some answered',
      expect: [Q, Q, Q, L],
      input: 'EX\r\nMN\r\n',
      events: [line('EX'), ABSENT, ABSENT, line('MN')],
    },
    {
      name: 'all quiet commands silent',
      expect: [Q, Q, L],
      input: 'MN\r\n',
      events: [ABSENT, ABSENT, line('MN')],
    },
    {
      name: 'a quiet VA reply with data',
      expect: [Q, L],
      input: 'VA 2 k\r\nMN\r\nMN\r\n',
      events: [va('VA 2 k', 'MN'), line('MN')],
    },
    {
      name: 'quiet errors are never suppressed',
      expect: [Q, L, Q, L],
      input: 'CLIENT_ERROR bad data chunk\r\nMN\r\nMN\r\n',
      events: [line('CLIENT_ERROR bad data chunk'), line('MN'), ABSENT, line('MN')],
    },
  ]);
});

describe('ResponseParser: desync', () => {
  run([
    {
      name: 'a reply with no expectation',
      expect: [],
      input: 'STORED\r\n',
      events: [desync('unexpected reply: STORED')],
    },
    {
      name: 'one reply too many; nothing after the desync is reported',
      expect: [L],
      input: 'STORED\r\nSTORED\r\nSTORED\r\n',
      events: [line('STORED'), desync('unexpected reply: STORED')],
    },
    {
      name: 'VALUE where a single line is expected',
      expect: [L, L],
      input: `${block('k', 0, 'x')}END\r\n`,
      events: [desync('unexpected reply: VALUE k 0 1')],
    },
    {
      name: 'END where a single line is expected',
      expect: [L],
      input: 'END\r\n',
      events: [desync('unexpected reply: END')],
    },
    {
      name: 'STAT where a single line is expected',
      expect: [L],
      input: 'STAT a b\r\n',
      events: [desync('unexpected reply: STAT a b')],
    },
    {
      name: 'a quiet reply MN with nothing after it',
      expect: [Q],
      input: 'MN\r\n',
      events: [ABSENT, desync('unexpected reply: MN')],
    },
    ...[
      ['no flags or length', 'VALUE k\r\n'],
      ['no length', 'VALUE k 0\r\n'],
      ['an empty key', 'VALUE  0 1\r\nx\r\n'],
      ['bad flags', 'VALUE k x 1\r\nx\r\n'],
      ['negative flags', 'VALUE k -1 1\r\nx\r\n'],
      ['bad length', 'VALUE k 0 1x\r\nx\r\n'],
      ['negative length', 'VALUE k 0 -1\r\n'],
      ['an empty length', 'VALUE k 0 \r\n'],
      ['bad cas', 'VALUE k 0 1 x\r\nx\r\n'],
      ['a cas with a trailing letter', 'VALUE k 0 1 12x\r\nx\r\n'],
      ['an empty cas', 'VALUE k 0 1 \r\nx\r\n'],
      ['a cas over 2^64 - 1', 'VALUE k 0 1 18446744073709551616\r\nx\r\nEND\r\n'],
      ['a length over maxValue', 'VALUE k 0 1001\r\n'],
    ].map(([what, input]) => ({
      name: `malformed VALUE header: ${what}`,
      expect: [V],
      input: input!,
      options: { maxValue: 1000 },
      events: [desync('bad VALUE line')],
    })),
    {
      name: 'a value data block not ended by \\r\\n',
      expect: [V],
      input: 'VALUE k 0 1\r\nab\r\nEND\r\n',
      events: [desync('data block not ended by \\r\\n')],
    },
    {
      name: 'a VA data block not ended by \\r\\n',
      expect: [L, L],
      input: 'VA 1\r\nabc\r\nHD\r\n',
      events: [desync('data block not ended by \\r\\n')],
    },
    { name: 'a bad VA length', expect: [L], input: 'VA x\r\n', events: [desync('bad VA line')] },
    {
      name: 'a VA length over maxValue',
      expect: [L],
      input: 'VA 11\r\n',
      options: { maxValue: 10 },
      events: [desync('bad VA line')],
    },
    {
      name: 'a line not ended by \\r\\n',
      expect: [L, L],
      input: 'STORED\nSTORED\r\n',
      events: [desync('reply line not ended by \\r\\n')],
    },
    {
      name: 'a line in a get reply that is neither VALUE nor END',
      expect: [V],
      input: `${block('k', 0, 'x')}STORED\r\n`,
      events: [desync('unexpected line in get reply: STORED')],
    },
    {
      name: 'an error line after values in a get reply',
      expect: [V],
      input: `${block('k', 0, 'x')}SERVER_ERROR out of memory\r\n`,
      events: [desync('unexpected line in get reply: SERVER_ERROR out of memory')],
    },
    {
      name: 'an overlong line',
      expect: [L],
      input: `${'x'.repeat(101)}\r\n`,
      options: { maxLine: 100 },
      events: [desync('reply line too long')],
    },
    {
      // The one-pass reading of a whole get reply must end the stream for it too.
      name: 'an overlong VALUE line in a whole get reply',
      expect: [V],
      input: `VALUE kk 42 1\r\nd\r\nEND\r\n`,
      options: { maxLine: 10 },
      events: [desync('reply line too long')],
    },
    {
      name: 'an overlong line with no end yet',
      expect: [L],
      input: 'STORED'.repeat(20),
      options: { maxLine: 100 },
      events: [desync('reply line too long')],
    },
    {
      name: 'an overlong line (default 8192)',
      expect: [L, L],
      input: `HD ${'x'.repeat(8190)}\r\nHD\r\n`,
      split: { maxBoundaries: 200 },
      events: [desync('reply line too long')],
    },
    {
      // The parser promises the same events for any chunking; whole, this is accepted.
      name: 'a line of exactly maxLine bytes gives the same result for every chunking',
      expect: [L],
      input: `${'x'.repeat(100)}\r\n`,
      options: { maxLine: 100 },
      events: [line('x'.repeat(100))],
    },
  ]);

  it('is dead after a desync and ignores what follows', () => {
    const { parser, events } = recordReplies([L]);
    expect(parser.dead).to.equal(false);
    parser.push(bytes('VALUE k 0 1\r\n'));
    expect(parser.dead).to.equal(true);
    parser.push(bytes('x\r\nSTORED\r\n'));
    expect(events).to.deep.equal([desync('unexpected reply: VALUE k 0 1')]);
  });
});

describe('ResponseParser: expectations queue and memory', () => {
  it('keeps expectation order while its ring buffer wraps and grows', () => {
    const { parser, events } = recordReplies([]);
    for (let i = 0; i < 60; i++) parser.expect(i % 3 === 0 ? V : L);
    let wire = '';
    for (let i = 0; i < 50; i++) wire += i % 3 === 0 ? 'END\r\n' : `${i}\r\n`;
    parser.push(bytes(wire));
    expect(parser.pending).to.equal(10);
    // Grow the queue while its head is in the middle.
    for (let i = 60; i < 200; i++) parser.expect(i % 3 === 0 ? V : L);
    expect(parser.pending).to.equal(150);
    wire = '';
    for (let i = 50; i < 200; i++) wire += i % 3 === 0 ? 'END\r\n' : `${i}\r\n`;
    for (const split of [byteByByte(bytes(wire))]) for (const c of split.chunks) parser.push(c);
    expect(parser.pending).to.equal(0);
    expect(events).to.have.length(200);
    events.forEach((e, i) => {
      expect(e, String(i)).to.deep.equal(i % 3 === 0 ? values([]) : line(String(i)));
    });
  });

  it('a values reply that arrives in one chunk is kept whole as one view, else not at all', () => {
    const wire = `STORED\r\n${block('a', 0, 'x1')}${block('b', 5, 'yy')}END\r\nEND\r\n${block('c', 1, 'z')}END\r\n`;
    const input = bytes(wire);
    const whole = [
      `${block('a', 0, 'x1')}${block('b', 5, 'yy')}END\r\n`,
      'END\r\n',
      `${block('c', 1, 'z')}END\r\n`,
    ];
    const { parser, replies } = recordReplies([L, V, V, V]);
    parser.push(input);
    expect(replies.slice(1).map((r) => r.raw.toString('latin1'))).to.deep.equal(whole);
    // Replies with values are views of the input; an empty one may be the shared END bytes.
    for (const r of replies) {
      if ((r.values?.length ?? 0) > 0) expect(r.raw.buffer).to.equal(input.buffer);
    }
    // Split at every byte: a reply cut by the split has no raw, one that is not keeps it.
    for (let cut = 1; cut < input.length; cut++) {
      const rec = recordReplies([L, V, V, V]);
      rec.parser.push(input.subarray(0, cut));
      rec.parser.push(input.subarray(cut));
      let at = 8; // after STORED\r\n
      whole.forEach((w, i) => {
        const r = rec.replies[i + 1]!;
        const inOne = cut <= at || cut >= at + w.length;
        expect(r.raw.toString('latin1'), `cut ${cut}, reply ${i}`).to.equal(inOne ? w : '');
        at += w.length;
      });
    }
  });

  it('values and VA data are zero-copy views when fed whole', () => {
    // (STORED itself is one shared reply: see the test after this one.)
    const input = bytes(`DELETED\r\n${block('key', 3, 'hello', '7')}END\r\nVA 2 f1\r\nhi\r\n`);
    const { parser, replies } = recordReplies([L, V, L]);
    parser.push(input);
    expect(replies).to.have.length(3);
    const stored = replies[0]!;
    expect(stored.raw.buffer).to.equal(input.buffer);
    expect(stored.line.buffer).to.equal(input.buffer);
    const v = replies[1]!.values![0]!;
    expect(v.raw.buffer).to.equal(input.buffer);
    expect(v.raw.byteOffset).to.equal(input.byteOffset + 9);
    expect(v.raw.toString()).to.equal('VALUE key 3 5 7\r\nhello\r\n');
    expect(v.data.buffer).to.equal(input.buffer);
    expect(v.data.toString()).to.equal('hello');
    expect(v.key.buffer).to.equal(input.buffer);
    const vaReply = replies[2]!;
    expect(vaReply.raw.buffer).to.equal(input.buffer);
    expect(vaReply.data.buffer).to.equal(input.buffer);
    expect(vaReply.data.toString()).to.equal('hi');
  });

  it('Value.keyIs matches its key byte for byte, on the one-pass and the general path', () => {
    const keys = ['k', 'key', 'kez', 'ke', 'keyy', 'K', '\u00ffk'];
    const input = Buffer.concat([
      Buffer.from(`${block('key', 0, 'v')}`, 'latin1'),
      Buffer.from(`${block('\u00ffk', 1, 'vv')}`, 'latin1'),
      bytes('END\r\n'),
    ]);
    for (const split of [
      [input],
      ...byteByByte(input).chunks.map((_, i) => [input.subarray(0, i), input.subarray(i)]),
    ]) {
      const { parser, replies } = recordReplies([V]);
      for (const c of split) parser.push(c);
      const [a, b] = replies[0]!.values!;
      for (const k of keys) {
        const kb = Buffer.from(k, 'latin1');
        expect(a!.keyIs(kb), k).to.equal(k === 'key');
        expect(b!.keyIs(kb), k).to.equal(k === '\u00ffk');
      }
      expect(a!.key.toString('latin1')).to.equal('key');
      expect(b!.key.toString('latin1')).to.equal('\u00ffk');
    }
  });

  it('STORED is one shared reply, the same as the general path gives, at every split', () => {
    const input = bytes('STORED\r\nSTORED\r\nSTOREDX\r\nSTORED\r\n');
    for (const split of [
      { name: 'whole', chunks: [input] },
      byteByByte(input),
      ...randomSplits(input, 7, 10),
    ]) {
      const { parser, replies } = recordReplies([L, L, L, L]);
      for (const c of split.chunks) parser.push(c);
      expect(
        replies.map((r) => r.text),
        split.name,
      ).to.deep.equal(['STORED', 'STORED', 'STOREDX', 'STORED']);
      for (const r of [replies[0]!, replies[1]!, replies[3]!]) {
        expect(r.raw.toString('latin1'), split.name).to.equal('STORED\r\n');
        expect(r.isError).to.equal(false);
        expect(r.values).to.equal(null);
      }
    }
    // Fed whole, the STORED replies are one object (no allocation per reply).
    const { parser, replies } = recordReplies([L, L]);
    parser.push(bytes('STORED\r\nSTORED\r\n'));
    expect(replies[0]).to.equal(replies[1]);
  });

  it('when a value spans chunks, its key and data are views into its own raw copy', () => {
    const input = bytes(
      `${block('key', 3, 'hello\r\nworld', '7')}${block('k2', 0, 'x')}END\r\nVA 5\r\nabcde\r\n`,
    );
    for (const split of [byteByByte(input), ...randomSplits(input, 11, 20)]) {
      const { parser, replies } = recordReplies([V, L]);
      for (const c of split.chunks) parser.push(c);
      expect(replies, split.name).to.have.length(2);
      for (const v of replies[0]!.values!) {
        expect(v.key.buffer, split.name).to.equal(v.raw.buffer);
        expect(v.data.buffer, split.name).to.equal(v.raw.buffer);
        expect(v.raw.toString('latin1'), split.name).to.equal(
          block(
            v.key.toString(),
            v.flags,
            v.data.toString(),
            v.cas === undefined ? undefined : String(v.cas),
          ),
        );
      }
      const r = replies[1]!;
      expect(r.data.buffer).to.equal(r.raw.buffer);
      expect(r.line.buffer).to.equal(r.raw.buffer);
      expect(r.text).to.equal('VA 5');
    }
  });
});
