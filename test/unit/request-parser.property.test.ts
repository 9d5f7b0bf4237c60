/**
 * Property tests for RequestParser:
 * (a) random valid command streams parse back to exactly what generated
 *     them, however the stream is chunked;
 * (b) random garbage never makes push() throw, and gives the same events
 *     whole, byte by byte and split at random.
 */

import { expect } from 'chai';
import fc from 'fast-check';
import {
  byteByByte,
  cutAt,
  own,
  type PlainRequest,
  parseRequests,
  type RequestEvent,
  whole,
} from '../helpers/split.js';

// ---------------------------------------------------------------------------
// A model of one valid command: its bytes and the event it must produce.

interface Generated {
  bytes: Buffer;
  event: PlainRequest;
}

const latin1 = (b: Uint8Array): string => Buffer.from(b).toString('latin1');

/** Printable bytes other than space: what a classic key can be made of. */
const keyByte = fc.integer({ min: 0x21, max: 0x7e });
const key = fc
  .oneof(
    { weight: 4, arbitrary: fc.array(keyByte, { minLength: 1, maxLength: 12 }) },
    { weight: 1, arbitrary: fc.array(keyByte, { minLength: 200, maxLength: 250 }) },
  )
  .map((a) => Buffer.from(a).toString('latin1'));

/** Raw bytes of a binary key (any byte), short enough that its base64 fits in 250. */
const binaryKey = fc.uint8Array({ minLength: 1, maxLength: 186 });

const value = fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map(latin1),
  fc
    .array(fc.constantFrom('\r\n', '\r', '\n', 'a', ' ', '\x00', 'END', 'get k', 'VALUE'), {
      maxLength: 12,
    })
    .map((a) => a.join('')),
);

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const i32 = fc.integer({ min: -0x80000000, max: 0x7fffffff });
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const sep = fc.constantFrom(' ', ' ', ' ', '  ');
const eol = fc.constantFrom('\r\n', '\r\n', '\n');

/**
 * Serialize tokens with the given separators, leading spaces and line end.
 * With `noreply`, the last token is a classic `noreply` and `contentEnd` is
 * where the token before it ends (what `forward` keeps); otherwise it is the
 * end of the line.
 */
function line(
  tokens: string[],
  seps: string[],
  end: string,
  lead: string,
  noreply: boolean,
): { text: string; contentEnd: number } {
  let text = lead;
  let contentEnd = -1;
  tokens.forEach((t, i) => {
    if (i > 0) {
      if (noreply && i === tokens.length - 1) contentEnd = text.length;
      text += seps[i % seps.length]!;
    }
    text += t;
  });
  text += end;
  return { text, contentEnd: contentEnd < 0 ? text.length : contentEnd };
}

function base(cmd: string, raw: string, forward: string): PlainRequest {
  return {
    cmd,
    keys: [],
    wireKeys: [],
    noreply: false,
    flags: 0,
    exptime: 0,
    bytes: 0,
    cas: '0',
    delta: '0',
    args: [],
    raw,
    forward,
  };
}

const framing = fc.record({
  seps: fc.array(sep, { minLength: 1, maxLength: 4 }),
  end: eol,
  lead: fc.constantFrom('', '', '', ' ', '   '),
});

function finish(
  cmd: string,
  tokens: string[],
  f: { seps: string[]; end: string; lead: string },
  fields: Partial<PlainRequest>,
  data?: string,
): Generated {
  const l = line(
    tokens,
    f.seps,
    f.end,
    f.lead,
    fields.noreply === true && !tokens[0]!.startsWith('m'),
  );
  const raw = data === undefined ? l.text : l.text + data + '\r\n';
  const event: PlainRequest = { ...base(cmd, raw, raw.slice(0, l.contentEnd)), ...fields };
  if (event.wireKeys.length === 0) event.wireKeys = event.keys;
  if (data !== undefined) {
    event.value = data;
    event.bytes = data.length;
    if (l.contentEnd === l.text.length) event.forward = l.text;
  }
  return { bytes: Buffer.from(raw, 'latin1'), event };
}

const storage: fc.Arbitrary<Generated> = fc
  .record({
    cmd: fc.constantFrom('set', 'add', 'replace', 'append', 'prepend', 'cas'),
    key,
    flags: u32,
    exptime: i32,
    data: value,
    cas: u64,
    noreply: fc.boolean(),
    f: framing,
  })
  .map(({ cmd, key, flags, exptime, data, cas, noreply, f }) => {
    const tokens = [cmd, key, String(flags), String(exptime), String(data.length)];
    if (cmd === 'cas') tokens.push(String(cas));
    if (noreply) tokens.push('noreply');
    return finish(
      cmd,
      tokens,
      f,
      { keys: [key], flags, exptime, cas: cmd === 'cas' ? String(cas) : '0', noreply },
      data,
    );
  });

const retrieval: fc.Arbitrary<Generated> = fc
  .record({
    cmd: fc.constantFrom('get', 'gets', 'gat', 'gats'),
    keys: fc.array(key, { minLength: 1, maxLength: 6 }),
    exptime: i32,
    f: framing,
  })
  .map(({ cmd, keys, exptime, f }) => {
    const touch = cmd === 'gat' || cmd === 'gats';
    const tokens = touch ? [cmd, String(exptime), ...keys] : [cmd, ...keys];
    return finish(cmd, tokens, f, { keys, exptime: touch ? exptime : 0 });
  });

const keyed: fc.Arbitrary<Generated> = fc
  .record({
    cmd: fc.constantFrom('delete', 'incr', 'decr', 'touch'),
    key,
    delta: u64,
    exptime: i32,
    hold: fc.boolean(),
    noreply: fc.boolean(),
    f: framing,
  })
  .map(({ cmd, key, delta, exptime, hold, noreply, f }) => {
    const tokens = [cmd, key];
    const fields: Partial<PlainRequest> = { keys: [key], noreply };
    if (cmd === 'delete') {
      if (hold) tokens.push('0');
    } else if (cmd === 'touch') {
      tokens.push(String(exptime));
      fields.exptime = exptime;
    } else {
      tokens.push(String(delta));
      fields.delta = String(delta);
    }
    if (noreply) tokens.push('noreply');
    return finish(cmd, tokens, f, fields);
  });

/** A meta key: plain, or binary with the b flag. */
const metaKey = fc.oneof(
  key.map((k) => ({ wire: k, key: k, b: false })),
  binaryKey.map((raw) => ({
    wire: Buffer.from(raw).toString('base64'),
    key: latin1(raw),
    b: true,
  })),
);

interface MetaFlag {
  token: string;
  apply?: (e: Partial<PlainRequest>) => void;
}

const opaqueFlag = fc
  .stringMatching(/^[A-Za-z0-9]{0,31}$/)
  .map((s): MetaFlag => ({ token: `O${s}` }));
const plain = (letter: string): fc.Arbitrary<MetaFlag> => fc.constant({ token: letter });
const qFlag: fc.Arbitrary<MetaFlag> = fc.constant({ token: 'q', apply: (e) => (e.noreply = true) });
const tFlag = i32.map((n): MetaFlag => ({ token: `T${n}`, apply: (e) => (e.exptime = n) }));
const cFlag = u64.map((n): MetaFlag => ({ token: `C${n}`, apply: (e) => (e.cas = String(n)) }));
const nFlag = i32.map((n): MetaFlag => ({ token: `N${n}` }));

/** At most one flag of each letter, in random order. */
function flagSet(options: fc.Arbitrary<MetaFlag>[]): fc.Arbitrary<MetaFlag[]> {
  return fc.tuple(...options.map((o) => fc.option(o, { nil: undefined }))).chain((fs) =>
    fc.shuffledSubarray(
      fs.filter((x): x is MetaFlag => x !== undefined),
      { minLength: 0 },
    ),
  );
}

function meta(
  cmd: string,
  k: { wire: string; key: string; b: boolean },
  middle: string[],
  flags: MetaFlag[],
  f: { seps: string[]; end: string; lead: string },
  data?: string,
): Generated {
  const all = k.b ? [...flags, { token: 'b' }] : flags;
  const fields: Partial<PlainRequest> = {
    keys: [k.key],
    wireKeys: [k.wire],
    args: all.map((x) => x.token),
  };
  for (const x of all) x.apply?.(fields);
  return finish(cmd, [cmd, k.wire, ...middle, ...all.map((x) => x.token)], f, fields, data);
}

const mg: fc.Arbitrary<Generated> = fc
  .record({
    k: metaKey,
    flags: flagSet([
      plain('v'),
      plain('f'),
      plain('t'),
      plain('s'),
      plain('c'),
      plain('k'),
      plain('h'),
      plain('l'),
      plain('u'),
      qFlag,
      opaqueFlag,
      tFlag,
      nFlag,
      i32.map((n) => ({ token: `R${n}` })),
    ]),
    f: framing,
  })
  .map(({ k, flags, f }) => meta('mg', k, [], flags, f));

const ms: fc.Arbitrary<Generated> = fc
  .record({
    k: metaKey,
    data: value,
    flags: flagSet([
      u32.map((n): MetaFlag => ({ token: `F${n}`, apply: (e) => (e.flags = n) })),
      tFlag,
      cFlag,
      fc
        .constantFrom('E', 'A', 'P', 'R', 'S')
        .map((m): MetaFlag => ({ token: `M${m}`, apply: (e) => (e.mode = m) })),
      qFlag,
      plain('k'),
      plain('I'),
      opaqueFlag,
    ]),
    f: framing,
  })
  .map(({ k, data, flags, f }) => meta('ms', k, [String(data.length)], flags, f, data));

const md: fc.Arbitrary<Generated> = fc
  .record({
    k: metaKey,
    flags: flagSet([qFlag, cFlag, plain('k'), plain('I'), opaqueFlag, tFlag]),
    f: framing,
  })
  .map(({ k, flags, f }) => meta('md', k, [], flags, f));

const ma: fc.Arbitrary<Generated> = fc
  .record({
    k: metaKey,
    flags: flagSet([
      u64.map((n): MetaFlag => ({ token: `D${n}`, apply: (e) => (e.delta = String(n)) })),
      u64.map((n): MetaFlag => ({ token: `J${n}` })),
      nFlag,
      fc
        .constantFrom('I', '+', 'D', '-')
        .map((m): MetaFlag => ({ token: `M${m}`, apply: (e) => (e.mode = m) })),
      qFlag,
      cFlag,
      plain('k'),
      plain('t'),
      plain('v'),
      opaqueFlag,
    ]),
    f: framing,
  })
  .map(({ k, flags, f }) => meta('ma', k, [], flags, f));

const simple: fc.Arbitrary<Generated> = fc
  .record({
    cmd: fc.constantFrom('mn', 'version', 'stats', 'quit'),
    args: fc.array(fc.constantFrom('slabs', 'items', 'settings', 'x'), { maxLength: 2 }),
    f: framing,
  })
  .map(({ cmd, args, f }) => {
    // stats takes one known sub-command (memcached answers ERROR to others); the rest take anything.
    const a =
      cmd === 'quit' ? [] : cmd === 'stats' ? args.filter((x) => x !== 'x').slice(0, 1) : args;
    return finish(cmd, [cmd, ...a], f, { args: a });
  });

const command = fc.oneof(storage, retrieval, keyed, mg, ms, md, ma, simple);

/** Cut points for a stream of length n: sorted, distinct, within 1..n-1. */
const cuts = (n: number): fc.Arbitrary<number[]> =>
  n < 2
    ? fc.constant([])
    : fc
        .uniqueArray(fc.integer({ min: 1, max: n - 1 }), { maxLength: Math.min(24, n - 1) })
        .map((a) => a.sort((x, y) => x - y));

describe('RequestParser properties', () => {
  it('random valid command streams parse back to what generated them, under any chunking', () => {
    fc.assert(
      fc.property(
        fc.array(command, { minLength: 1, maxLength: 8 }).chain((cmds) => {
          const input = Buffer.concat(cmds.map((c) => c.bytes));
          return fc.tuple(fc.constant(cmds), fc.constant(input), cuts(input.length));
        }),
        ([cmds, input, offsets]) => {
          const expected = cmds.map((c) => c.event);
          expect(parseRequests(whole(input).chunks)).to.deep.equal(expected);
          expect(parseRequests(cutAt(input, offsets).chunks)).to.deep.equal(expected);
        },
      ),
      { numRuns: 1000, seed: 20240601 },
    );
  });

  it('random valid command streams parse the same byte by byte', () => {
    fc.assert(
      fc.property(fc.array(command, { minLength: 1, maxLength: 4 }), (cmds) => {
        const input = own(Buffer.concat(cmds.map((c) => c.bytes)));
        expect(parseRequests(byteByByte(input).chunks)).to.deep.equal(cmds.map((c) => c.event));
      }),
      { numRuns: 300, seed: 7 },
    );
  });

  const fragments = [
    'get ',
    'gets ',
    'gat ',
    'set ',
    'add ',
    'cas ',
    'delete ',
    'incr ',
    'touch ',
    'flush_all',
    'verbosity ',
    'stats',
    'version',
    'mg ',
    'ms ',
    'md ',
    'ma ',
    'mn',
    'me ',
    'k',
    'key ',
    ' ',
    '  ',
    '0 ',
    '1 ',
    '3 ',
    '5',
    '-1 ',
    '4294967297 ',
    '99999999999999999999 ',
    'noreply',
    ' noreply',
    '\r\n',
    '\r\n',
    '\n',
    '\r',
    '\x00',
    '\t',
    'b ',
    'q ',
    'v ',
    'k ',
    'O123 ',
    'T10 ',
    'F5 ',
    'C7 ',
    'MS ',
    'Mz ',
    'a2V5 ',
    '!!!! ',
    'AA== ',
    'abc',
    'hello\r\n',
    'END\r\n',
    '\xff',
  ];
  const garbage = fc.oneof(
    fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
    fc
      .array(fc.constantFrom(...fragments), { maxLength: 60 })
      .map((a) => Buffer.from(a.join(''), 'latin1')),
  );

  it('garbage never makes push() throw and gives the same events however it is chunked', () => {
    fc.assert(
      fc.property(
        garbage.chain((g) => fc.tuple(fc.constant(g), cuts(g.length))),
        ([input, offsets]) => {
          let all: RequestEvent[] = [];
          expect(() => (all = parseRequests(whole(input).chunks))).not.to.throw();
          expect(parseRequests(byteByByte(input).chunks)).to.deep.equal(all);
          expect(parseRequests(cutAt(input, offsets).chunks)).to.deep.equal(all);
          // Also with the small item size and multiget limits a deployment could choose.
          const options = { itemSizeMax: 64, maxMultigetLine: 3000 };
          const small = parseRequests(whole(input).chunks, options);
          expect(parseRequests(cutAt(input, offsets).chunks, options)).to.deep.equal(small);
        },
      ),
      { numRuns: 1500, seed: 42 },
    );
  });
});
