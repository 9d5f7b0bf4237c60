/**
 * RequestParser against memcached 1.6.18's text protocol.
 *
 * Each case is an input stream and the events memcached's behaviour implies;
 * every case runs through every way of cutting the stream into chunks (whole,
 * byte by byte, two pieces at every boundary, seeded random splits) and must
 * produce exactly the same events each time. Error texts, noreply silencing
 * and where parsing resumes after an error were checked against a real
 * memcached 1.6.18.
 */

import { expect } from 'chai';
import {
  KEY_MAX_LENGTH,
  MAX_LINE,
  RequestParser,
  type RequestParserOptions,
} from '../../src/protocol/request-parser.js';
import {
  allSplits,
  bytes,
  byteByByte,
  type PlainRequest,
  type PlainRequestError,
  type RequestEvent,
  parseRequests,
  randomSplits,
  recordRequests,
  type SplitOptions,
  whole,
} from '../helpers/split.js';

// ---------------------------------------------------------------------------
// Expected-event builders

type Fields = Partial<Omit<PlainRequest, 'cmd' | 'raw'>>;

/** A non-storage request whose raw bytes are `raw` (one line). */
function req(cmd: string, raw: string, f: Fields = {}): PlainRequest {
  const keys = f.keys ?? [];
  return {
    noreply: false,
    flags: 0,
    exptime: 0,
    bytes: 0,
    cas: '0',
    delta: '0',
    args: [],
    forward: raw,
    ...f,
    cmd,
    raw,
    keys,
    wireKeys: f.wireKeys ?? keys,
  };
}

/** A storage request (classic or ms): `line` with its terminator, then `value` and \r\n. */
function store(cmd: string, line: string, value: string, f: Fields = {}): PlainRequest {
  return req(cmd, line + value + '\r\n', { forward: line, bytes: value.length, value, ...f });
}

function err(error: string, silent = false, close = false): PlainRequestError {
  return { error, silent, close };
}

const E = {
  error: err('ERROR'),
  format: err('CLIENT_ERROR bad command line format'),
  formatSilent: err('CLIENT_ERROR bad command line format', true),
  badChunk: err('CLIENT_ERROR bad data chunk'),
  tooLarge: err('SERVER_ERROR object too large for cache'),
  exptime: err('CLIENT_ERROR invalid exptime argument'),
  delta: err('CLIENT_ERROR invalid numeric delta argument'),
  deleteUsage: err('CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]'),
  // memcached closes a long non-get line without a reply (silent); msproxy's own multi-get
  // line limit answers why.
  lineTooLong: err('CLIENT_ERROR line too long', true, true),
  multigetTooLong: err('CLIENT_ERROR line too long', false, true),
  badToken: err('CLIENT_ERROR bad token in command line format'),
  invalidFlag: err('CLIENT_ERROR invalid flag'),
  duplicateFlag: err('CLIENT_ERROR duplicate flag'),
  invalidOrDup: err('CLIENT_ERROR invalid or duplicate flag'),
  decodeKey: err('CLIENT_ERROR error decoding key'),
  opaque: err('CLIENT_ERROR opaque token too long'),
  msMode: err('CLIENT_ERROR invalid mode for ms M token'),
  maMode: err('CLIENT_ERROR invalid mode for ma M token'),
  mLength: err('CLIENT_ERROR incorrect length for M token'),
  mgTooLong: err('CLIENT_ERROR options flags are too long'),
  flagsTooLong: err('CLIENT_ERROR options flags too long'),
};

const MN = req('mn', 'mn\r\n');
const k250 = 'k'.repeat(KEY_MAX_LENGTH);
const k251 = 'k'.repeat(KEY_MAX_LENGTH + 1);
/** 17 meta flag tokens, each valid and distinct: the most a meta command can carry. */
const flags17 = [
  'v',
  'f',
  't',
  's',
  'c',
  'k',
  'h',
  'l',
  'u',
  'O',
  'P',
  'L',
  'I',
  'T1',
  'N1',
  'R1',
  'D1',
];
const opaque = (len: number): string => 'O' + '9'.repeat(len - 1);

interface Case {
  name: string;
  input: string;
  expect: RequestEvent[];
  options?: RequestParserOptions;
  split?: SplitOptions;
}

function run(cases: Case[]): void {
  for (const c of cases) {
    it(c.name, () => {
      const input = bytes(c.input);
      let n = 0;
      for (const split of allSplits(input, c.split)) {
        expect(parseRequests(split.chunks, c.options), split.name).to.deep.equal(c.expect);
        n++;
      }
      expect(n).to.be.greaterThan(0);
    });
  }
}

// ---------------------------------------------------------------------------

describe('RequestParser: retrieval commands', () => {
  run([
    {
      name: 'get with one key',
      input: 'get foo\r\n',
      expect: [req('get', 'get foo\r\n', { keys: ['foo'] })],
    },
    {
      name: 'get with many keys and runs of spaces',
      input: 'get  a   bb c \r\n',
      expect: [req('get', 'get  a   bb c \r\n', { keys: ['a', 'bb', 'c'] })],
    },
    {
      name: 'gets',
      input: 'gets a b\r\n',
      expect: [req('gets', 'gets a b\r\n', { keys: ['a', 'b'] })],
    },
    {
      name: 'gat takes the exptime first',
      input: 'gat 10 a b\r\n',
      expect: [req('gat', 'gat 10 a b\r\n', { keys: ['a', 'b'], exptime: 10 })],
    },
    {
      name: 'gats with a negative exptime',
      input: 'gats -1 a\r\n',
      expect: [req('gats', 'gats -1 a\r\n', { keys: ['a'], exptime: -1 })],
    },
    {
      name: 'gat exptime is truncated to 32 bits like C',
      input: 'gat 4294967297 a\r\n',
      expect: [req('gat', 'gat 4294967297 a\r\n', { keys: ['a'], exptime: 1 })],
    },
    {
      name: 'gat with no keys is a request with zero keys (memcached answers END)',
      input: 'gat 10\r\n',
      expect: [req('gat', 'gat 10\r\n', { exptime: 10 })],
    },
    {
      name: 'gat with a bad exptime',
      input: 'gat x a\r\nget a\r\n',
      expect: [E.exptime, req('get', 'get a\r\n', { keys: ['a'] })],
    },
    {
      name: 'a 250-byte key is accepted',
      input: `get ${k250}\r\n`,
      expect: [req('get', `get ${k250}\r\n`, { keys: [k250] })],
    },
    {
      name: 'a 251-byte key anywhere in a get is refused, and parsing resumes on the next line',
      input: `get a ${k251} b\r\nget b\r\n`,
      expect: [E.format, req('get', 'get b\r\n', { keys: ['b'] })],
    },
    {
      name: 'bare get and get with a trailing space are ERROR',
      input: 'get\r\nget \r\n',
      expect: [E.error, E.error],
    },
    {
      name: 'get has no noreply: the token is a key',
      input: 'get k noreply\r\n',
      expect: [req('get', 'get k noreply\r\n', { keys: ['k', 'noreply'] })],
    },
    {
      name: 'bget is an alias of get',
      input: 'bget k\r\n',
      expect: [req('get', 'bget k\r\n', { keys: ['k'] })],
    },
    {
      name: 'an unknown g command is ERROR',
      input: 'gett k\r\nGET k\r\n',
      expect: [E.error, E.error],
    },
  ]);
});

describe('RequestParser: storage commands', () => {
  run([
    {
      name: 'set with flags, exptime and a value',
      input: 'set k 5 10 3\r\nabc\r\n',
      expect: [store('set', 'set k 5 10 3\r\n', 'abc', { keys: ['k'], flags: 5, exptime: 10 })],
    },
    ...(['add', 'replace', 'append', 'prepend'] as const).map((cmd) => ({
      name: cmd,
      input: `${cmd} key 0 0 2\r\nhi\r\n`,
      expect: [store(cmd, `${cmd} key 0 0 2\r\n`, 'hi', { keys: ['key'] })],
    })),
    {
      name: 'cas carries its unique',
      input: 'cas k 1 2 1 18446744073709551615\r\na\r\n',
      expect: [
        store('cas', 'cas k 1 2 1 18446744073709551615\r\n', 'a', {
          keys: ['k'],
          flags: 1,
          exptime: 2,
          cas: '18446744073709551615',
        }),
      ],
    },
    {
      name: 'set noreply: forward stops before " noreply"',
      input: 'set k 0 0 1 noreply\r\na\r\n',
      expect: [
        store('set', 'set k 0 0 1 noreply\r\n', 'a', {
          keys: ['k'],
          noreply: true,
          forward: 'set k 0 0 1',
        }),
      ],
    },
    {
      name: 'cas noreply',
      input: 'cas k 0 0 1 7 noreply\r\na\r\n',
      expect: [
        store('cas', 'cas k 0 0 1 7 noreply\r\n', 'a', {
          keys: ['k'],
          cas: '7',
          noreply: true,
          forward: 'cas k 0 0 1 7',
        }),
      ],
    },
    {
      name: 'noreply followed by trailing spaces',
      input: 'append k 0 0 1   noreply  \r\na\r\n',
      expect: [
        store('append', 'append k 0 0 1   noreply  \r\n', 'a', {
          keys: ['k'],
          noreply: true,
          forward: 'append k 0 0 1',
        }),
      ],
    },
    {
      name: 'a 7th token that is not noreply is ignored',
      input: 'set k 0 0 1 foo\r\na\r\n',
      expect: [store('set', 'set k 0 0 1 foo\r\n', 'a', { keys: ['k'] })],
    },
    {
      name: 'values may contain \\r\\n and look like commands',
      input: 'set k 0 0 12\r\nget x\r\nEND\r\n\r\nget k\r\n',
      expect: [
        store('set', 'set k 0 0 12\r\n', 'get x\r\nEND\r\n', { keys: ['k'] }),
        req('get', 'get k\r\n', { keys: ['k'] }),
      ],
    },
    {
      name: 'an empty value',
      input: 'set k 0 0 0\r\n\r\n',
      expect: [store('set', 'set k 0 0 0\r\n', '', { keys: ['k'] })],
    },
    {
      name: 'binary bytes in a value',
      input: 'set k 0 0 4\r\n\x00\xff\n\r\r\n',
      expect: [store('set', 'set k 0 0 4\r\n', '\x00\xff\n\r', { keys: ['k'] })],
    },
    {
      name: 'flags 4294967297 is accepted as 1, bytes 4294967297 as 1',
      input: 'set k 4294967297 0 4294967297\r\na\r\n',
      expect: [store('set', 'set k 4294967297 0 4294967297\r\n', 'a', { keys: ['k'], flags: 1 })],
    },
    {
      name: 'negative exptime and the largest flags',
      input: 'set k 4294967295 -1 1\r\na\r\n',
      expect: [
        store('set', 'set k 4294967295 -1 1\r\n', 'a', {
          keys: ['k'],
          flags: 4294967295,
          exptime: -1,
        }),
      ],
    },
    {
      name: 'bad flags: format error, then the data line is parsed as a command',
      input: 'set k x 0 1\r\na\r\n',
      expect: [E.format, E.error],
    },
    { name: 'negative flags', input: 'set k -1 0 1\r\na\r\n', expect: [E.format, E.error] },
    { name: 'bad exptime', input: 'set k 0 1x 1\r\na\r\n', expect: [E.format, E.error] },
    { name: 'bad length', input: 'set k 0 0 1x\r\na\r\n', expect: [E.format, E.error] },
    {
      name: 'negative length: format error, nothing swallowed',
      input: 'set k 0 0 -1\r\nget k\r\n',
      expect: [E.format, req('get', 'get k\r\n', { keys: ['k'] })],
    },
    {
      name: 'bad number with noreply is silent',
      input: 'set k x 0 1 noreply\r\nget k\r\n',
      expect: [E.formatSilent, req('get', 'get k\r\n', { keys: ['k'] })],
    },
    { name: 'cas with a bad unique', input: 'cas k 0 0 1 x\r\na\r\n', expect: [E.format, E.error] },
    {
      name: 'cas with a negative unique',
      input: 'cas k 0 0 1 -1\r\na\r\n',
      expect: [E.format, E.error],
    },
    { name: 'cas without its unique is ERROR', input: 'cas k 0 0 1\r\n', expect: [E.error] },
    { name: 'set with too few tokens is ERROR', input: 'set k 0 0\r\n', expect: [E.error] },
    {
      name: 'set with too many tokens is ERROR even with noreply, and the data line too',
      input: 'set k 0 0 1 noreply extra\r\na\r\n',
      expect: [E.error, E.error],
    },
    {
      name: 'bad data chunk: the block is consumed, the leftover "\\n" is ERROR',
      input: 'set k 0 0 3\r\nabcd\r\n',
      expect: [E.badChunk, E.error],
    },
    {
      name: 'bad data chunk with noreply: the chunk error is silent, the ERROR is not',
      input: 'set k 0 0 3 noreply\r\nabcd\r\nmn\r\n',
      expect: [err('CLIENT_ERROR bad data chunk', true), E.error, MN],
    },
    {
      name: 'key too long: no swallow, the data line is then parsed as a command',
      input: `set ${k251} 0 0 1\r\na\r\nget k\r\n`,
      expect: [E.format, E.error, req('get', 'get k\r\n', { keys: ['k'] })],
    },
    {
      name: 'key too long with noreply: silent, the data line still gives ERROR',
      input: `set ${k251} 0 0 1 noreply\r\na\r\nmn\r\n`,
      expect: [E.formatSilent, E.error, MN],
    },
    {
      name: 'a data line that is itself a command runs after a refused set',
      input: `set ${k251} 0 0 7\r\nget abc\r\n`,
      expect: [E.format, req('get', 'get abc\r\n', { keys: ['abc'] })],
    },
    {
      name: 'a 250-byte key in a storage command is fine',
      input: `set ${k250} 0 0 1\r\na\r\n`,
      expect: [store('set', `set ${k250} 0 0 1\r\n`, 'a', { keys: [k250] })],
    },
  ]);

  // memcached -I 1024: key "k", flags 0 -> at most 1024 - 56 - 1 - 1 - 2 = 964 bytes.
  const small = { itemSizeMax: 1024 };
  const v964 = 'v'.repeat(964);
  const v965 = 'v'.repeat(965);
  run([
    {
      name: 'too large (small -I): swallowed, the next command is parsed right after the block',
      input: `set k 0 0 965\r\n${v965}\r\nget k\r\n`,
      options: small,
      expect: [E.tooLarge, req('get', 'get k\r\n', { keys: ['k'] })],
    },
    {
      name: 'too large with noreply is silent and still swallowed',
      input: `set k 0 0 965 noreply\r\n${v965}\r\nmn\r\n`,
      options: small,
      expect: [err('SERVER_ERROR object too large for cache', true), MN],
    },
    {
      name: 'too large swallows even a data block containing command lines',
      input: `set k 0 0 965\r\n${'get x\r\n'.repeat(137)}123456\r\nget k\r\n`,
      options: small,
      expect: [E.tooLarge, req('get', 'get k\r\n', { keys: ['k'] })],
    },
    {
      name: 'largest value that fits (small -I)',
      input: `set k 0 0 964\r\n${v964}\r\n`,
      options: small,
      expect: [store('set', 'set k 0 0 964\r\n', v964, { keys: ['k'] })],
    },
    {
      name: 'non-zero flags cost 4 bytes (small -I)',
      input: `set k 1 0 961\r\n${'v'.repeat(961)}\r\nset k 1 0 960\r\n${'v'.repeat(960)}\r\n`,
      options: small,
      expect: [
        E.tooLarge,
        store('set', 'set k 1 0 960\r\n', 'v'.repeat(960), { keys: ['k'], flags: 1 }),
      ],
    },
  ]);

  // The real -I 1m limits, verified against memcached 1.6.18.
  const big: SplitOptions = { pieceSize: 4093, maxBoundaries: 48, random: 2 };
  const limit = (key: string, flags: number, n: number, fits: boolean): Case => {
    const line = `set ${key} ${flags} 0 ${n}\r\n`;
    const value = 'x'.repeat(n);
    return {
      name: `${key.length}-byte key, flags ${flags}, ${n} bytes ${fits ? 'fits' : 'is too large'} in 1 MiB`,
      input: `${line}${value}\r\nmn\r\n`,
      split: big,
      expect: [fits ? store('set', line, value, { keys: [key], flags }) : E.tooLarge, MN],
    };
  };
  run([
    limit('k', 0, 1048516, true),
    limit('k', 0, 1048517, false),
    limit('k', 1, 1048512, true),
    limit('k', 1, 1048513, false),
    limit(k250, 0, 1048267, true),
    limit(k250, 0, 1048268, false),
  ]);
});

describe('RequestParser: delete, incr/decr, touch', () => {
  run([
    {
      name: 'delete',
      input: 'delete k\r\n',
      expect: [req('delete', 'delete k\r\n', { keys: ['k'] })],
    },
    {
      name: 'delete with hold time 0',
      input: 'delete k 0\r\n',
      expect: [req('delete', 'delete k 0\r\n', { keys: ['k'] })],
    },
    {
      name: 'delete noreply',
      input: 'delete k noreply\r\n',
      expect: [
        req('delete', 'delete k noreply\r\n', { keys: ['k'], noreply: true, forward: 'delete k' }),
      ],
    },
    {
      name: 'delete 0 noreply',
      input: 'delete k 0 noreply\r\n',
      expect: [
        req('delete', 'delete k 0 noreply\r\n', {
          keys: ['k'],
          noreply: true,
          forward: 'delete k 0',
        }),
      ],
    },
    {
      name: 'delete with a non-zero hold time: usage error',
      input: 'delete k 1\r\n',
      expect: [E.deleteUsage],
    },
    { name: 'delete 0 with junk: usage error', input: 'delete k 0 x\r\n', expect: [E.deleteUsage] },
    {
      name: 'delete usage error with noreply is silent',
      input: 'delete k 1 noreply\r\n',
      expect: [err(E.deleteUsage.error, true)],
    },
    {
      name: 'delete with no key / too many tokens is ERROR',
      input: 'delete\r\ndelete a b c d\r\n',
      expect: [E.error, E.error],
    },
    { name: 'delete with a 251-byte key', input: `delete ${k251}\r\n`, expect: [E.format] },
    {
      name: 'incr',
      input: 'incr k 5\r\n',
      expect: [req('incr', 'incr k 5\r\n', { keys: ['k'], delta: '5' })],
    },
    {
      name: 'decr with the largest delta',
      input: 'decr k 18446744073709551615\r\n',
      expect: [
        req('decr', 'decr k 18446744073709551615\r\n', {
          keys: ['k'],
          delta: '18446744073709551615',
        }),
      ],
    },
    {
      name: 'incr noreply',
      input: 'incr k 1 noreply\r\n',
      expect: [
        req('incr', 'incr k 1 noreply\r\n', {
          keys: ['k'],
          delta: '1',
          noreply: true,
          forward: 'incr k 1',
        }),
      ],
    },
    {
      name: 'invalid deltas',
      input: 'incr k x\r\nincr k -1\r\ndecr k 18446744073709551616\r\n',
      expect: [E.delta, E.delta, E.delta],
    },
    {
      name: 'invalid delta with noreply is silent',
      input: 'incr k x noreply\r\n',
      expect: [err(E.delta.error, true)],
    },
    { name: 'incr with a missing delta is ERROR', input: 'incr k\r\n', expect: [E.error] },
    { name: 'incr with a 251-byte key', input: `incr ${k251} 1\r\n`, expect: [E.format] },
    {
      name: 'touch',
      input: 'touch k 10\r\n',
      expect: [req('touch', 'touch k 10\r\n', { keys: ['k'], exptime: 10 })],
    },
    {
      name: 'touch noreply',
      input: 'touch k -1 noreply\r\n',
      expect: [
        req('touch', 'touch k -1 noreply\r\n', {
          keys: ['k'],
          exptime: -1,
          noreply: true,
          forward: 'touch k -1',
        }),
      ],
    },
    { name: 'touch with a bad exptime', input: 'touch k x\r\n', expect: [E.exptime] },
    {
      name: 'touch with a bad exptime and noreply',
      input: 'touch k x noreply\r\n',
      expect: [err(E.exptime.error, true)],
    },
    { name: 'touch without exptime is ERROR', input: 'touch k\r\n', expect: [E.error] },
  ]);
});

describe('RequestParser: other classic commands', () => {
  run([
    { name: 'flush_all', input: 'flush_all\r\n', expect: [req('flush_all', 'flush_all\r\n')] },
    {
      name: 'flush_all with a delay',
      input: 'flush_all 10\r\n',
      expect: [req('flush_all', 'flush_all 10\r\n', { exptime: 10 })],
    },
    {
      name: 'flush_all noreply',
      input: 'flush_all noreply\r\n',
      expect: [req('flush_all', 'flush_all noreply\r\n', { noreply: true, forward: 'flush_all' })],
    },
    {
      name: 'flush_all delay noreply',
      input: 'flush_all 10 noreply\r\n',
      expect: [
        req('flush_all', 'flush_all 10 noreply\r\n', {
          exptime: 10,
          noreply: true,
          forward: 'flush_all 10',
        }),
      ],
    },
    { name: 'flush_all with a bad delay', input: 'flush_all x\r\n', expect: [E.exptime] },
    {
      name: 'flush_all with a bad delay and noreply',
      input: 'flush_all x noreply\r\n',
      expect: [err(E.exptime.error, true)],
    },
    {
      name: 'flush_all with too many tokens is ERROR',
      input: 'flush_all 1 2 3\r\n',
      expect: [E.error],
    },
    {
      name: 'verbosity',
      input: 'verbosity 1\r\n',
      expect: [req('verbosity', 'verbosity 1\r\n', { flags: 1 })],
    },
    {
      name: 'verbosity noreply',
      input: 'verbosity 1 noreply\r\n',
      expect: [
        req('verbosity', 'verbosity 1 noreply\r\n', {
          flags: 1,
          noreply: true,
          forward: 'verbosity 1',
        }),
      ],
    },
    {
      name: '"verbosity noreply" is a silent format error',
      input: 'verbosity noreply\r\n',
      expect: [E.formatSilent],
    },
    { name: 'verbosity with a bad level', input: 'verbosity x\r\n', expect: [E.format] },
    {
      name: 'verbosity with no level / too many is ERROR',
      input: 'verbosity\r\nverbosity 1 2 3\r\n',
      expect: [E.error, E.error],
    },
    { name: 'version', input: 'version\r\n', expect: [req('version', 'version\r\n')] },
    {
      name: 'version ignores arguments',
      input: 'version foo\r\n',
      expect: [req('version', 'version foo\r\n', { args: ['foo'] })],
    },
    { name: 'quit', input: 'quit\r\n', expect: [req('quit', 'quit\r\n')] },
    { name: 'stats', input: 'stats\r\n', expect: [req('stats', 'stats\r\n')] },
    {
      name: 'stats with arguments',
      input: 'stats cachedump 1 2\r\n',
      expect: [req('stats', 'stats cachedump 1 2\r\n', { args: ['cachedump', '1', '2'] })],
    },
    ...[
      'slabs reassign 1 2',
      'slabs automove 1',
      'lru_crawler metadump all',
      'lru_crawler crawl 1,2',
      'shutdown',
      'cache_memlimit 100',
      'watch fetchers',
      'lru mode flat',
    ].map((line) => ({
      name: `admin: ${line}`,
      input: `${line}\r\n`,
      expect: [req('admin', `${line}\r\n`, { args: line.split(' ') })],
    })),
    {
      name: 'unknown commands are ERROR',
      input: 'foo bar\r\nsets k\r\nincrement k 1\r\n',
      expect: [E.error, E.error, E.error],
    },
    { name: 'an empty line is ERROR', input: '\r\n', expect: [E.error] },
    { name: 'a lone \\n is ERROR', input: '\n', expect: [E.error] },
    {
      name: 'a one-character line is ERROR',
      input: 'x\r\nm\r\n\r\r\n',
      expect: [E.error, E.error, E.error],
    },
    {
      name: '\\n-only line endings (the data block still ends with \\r\\n)',
      input: 'get a\nset b 0 0 1\nx\r\ndelete b noreply\n',
      expect: [
        req('get', 'get a\n', { keys: ['a'] }),
        store('set', 'set b 0 0 1\n', 'x', { keys: ['b'] }),
        req('delete', 'delete b noreply\n', { keys: ['b'], noreply: true, forward: 'delete b' }),
      ],
    },
    {
      name: 'a data block ended by a bare \\n is a bad chunk',
      input: 'set a 0 0 1\nx\nget a\n',
      expect: [E.badChunk, E.error],
    },
    {
      name: 'a NUL byte ends the command line',
      input: 'get a\x00b c\r\n',
      expect: [req('get', 'get a\x00b c\r\n', { keys: ['a'] })],
    },
    {
      name: 'a NUL byte after the length of a set',
      input: 'set k 0 0 1\x00junk\r\na\r\n',
      expect: [store('set', 'set k 0 0 1\x00junk\r\n', 'a', { keys: ['k'] })],
    },
    { name: 'a NUL byte first makes an empty command', input: '\x00get k\r\n', expect: [E.error] },
    {
      name: 'leading spaces are skipped',
      input: '   get a\r\n  set k 0 0 1\r\na\r\n',
      expect: [
        req('get', '   get a\r\n', { keys: ['a'] }),
        store('set', '  set k 0 0 1\r\n', 'a', { keys: ['k'] }),
      ],
    },
    {
      name: 'tabs and \\r inside the line are part of keys',
      input: 'get a\tb c\rd\r\n',
      expect: [req('get', 'get a\tb c\rd\r\n', { keys: ['a\tb', 'c\rd'] })],
    },
    {
      name: 'only one \\r before \\n is stripped',
      input: 'get a\r\r\n',
      expect: [req('get', 'get a\r\r\n', { keys: ['a\r'] })],
    },
    {
      name: 'a pipeline of mixed commands',
      input: 'get a\r\nset b 1 2 3\r\nxyz\r\nbogus\r\ndelete b\r\nincr c 1\r\n',
      expect: [
        req('get', 'get a\r\n', { keys: ['a'] }),
        store('set', 'set b 1 2 3\r\n', 'xyz', { keys: ['b'], flags: 1, exptime: 2 }),
        E.error,
        req('delete', 'delete b\r\n', { keys: ['b'] }),
        req('incr', 'incr c 1\r\n', { keys: ['c'], delta: '1' }),
      ],
    },
  ]);
});

describe('RequestParser: line length', () => {
  const longStats = `stats ${'x'.repeat(3000)}\r\n`;
  const keys = Array.from({ length: 250 }, (_, i) => `key:${String(i).padStart(15, '0')}`);
  const longGet = `get ${keys.join(' ')}\r\n`;
  const split: SplitOptions = { maxBoundaries: 400 };
  run([
    {
      name: 'a line over 2048 bytes that is not get/gets closes the stream; nothing after it is parsed',
      input: `${longStats}get k\r\n`,
      split,
      expect: [E.lineTooLong],
    },
    {
      name: 'an endless line (no newline yet) closes the stream too',
      input: `set k 0 0 1 ${'y'.repeat(3000)}`,
      split,
      expect: [E.lineTooLong],
    },
    {
      name: 'a long get line (5000 bytes of keys) is accepted',
      input: `${longGet}get k\r\n`,
      split,
      expect: [req('get', longGet, { keys }), req('get', 'get k\r\n', { keys: ['k'] })],
    },
    {
      name: 'a long gets line after leading spaces is accepted',
      input: `  gets ${keys.join(' ')}\r\n`,
      split,
      expect: [req('gets', `  gets ${keys.join(' ')}\r\n`, { keys })],
    },
    {
      name: 'a long get line after more than 100 leading spaces is refused',
      input: `${' '.repeat(101)}${longGet}`,
      split,
      expect: [E.lineTooLong],
    },
    {
      name: 'a long gat line is refused (only get/gets may be long)',
      input: `gat 0 ${keys.join(' ')}\r\n`,
      split,
      expect: [E.lineTooLong],
    },
    {
      name: 'a get line longer than maxMultigetLine is refused, with a reason',
      input: longGet,
      options: { maxMultigetLine: 4096 },
      split,
      expect: [E.multigetTooLong],
    },
    {
      name: `a line of exactly ${MAX_LINE} bytes plus \\n is accepted`,
      input: `version ${'x'.repeat(MAX_LINE - 8)}\n`,
      split,
      expect: [
        req('version', `version ${'x'.repeat(MAX_LINE - 8)}\n`, {
          args: ['x'.repeat(MAX_LINE - 8)],
        }),
      ],
    },
    {
      // The parser promises the same events for any chunking; whole, this
      // line is accepted (as memcached does when it reads it in one go).
      name: `a line of exactly ${MAX_LINE} bytes plus \\r\\n gives the same result for every chunking`,
      input: `version ${'x'.repeat(MAX_LINE - 8)}\r\n`,
      split,
      expect: [
        req('version', `version ${'x'.repeat(MAX_LINE - 8)}\r\n`, {
          args: ['x'.repeat(MAX_LINE - 8)],
        }),
      ],
    },
  ]);

  // Content of exactly 4096 bytes: 20 keys of 200 bytes and one of 72.
  const edgeKeys = [
    ...Array.from({ length: 20 }, (_, i) => String(i).padEnd(200, 'k')),
    'e'.repeat(72),
  ];
  const edgeGet = `get ${edgeKeys.join(' ')}\r\n`;
  run([
    {
      name: 'a get line of exactly maxMultigetLine bytes plus \\r\\n gives the same result for every chunking',
      input: edgeGet,
      options: { maxMultigetLine: 4096 },
      split,
      expect: [req('get', edgeGet, { keys: edgeKeys })],
    },
  ]);

  it('reports closed once it gave up, and holds no bytes', () => {
    const { parser, events } = recordRequests();
    parser.push(bytes('stats '));
    expect(parser.closed).to.equal(false);
    expect(parser.buffered).to.equal(6);
    parser.push(bytes('x'.repeat(3000)));
    expect(parser.closed).to.equal(true);
    expect(parser.buffered).to.equal(0);
    parser.push(bytes('\r\nget k\r\n'));
    expect(events).to.deep.equal([E.lineTooLong]);
  });
});

describe('RequestParser: meta commands', () => {
  run([
    {
      name: 'mg with no flags',
      input: 'mg k\r\n',
      expect: [req('mg', 'mg k\r\n', { keys: ['k'] })],
    },
    {
      name: 'mg with flags; q sets noreply',
      input: 'mg k v f t s c k h l u O123 q\r\n',
      expect: [
        req('mg', 'mg k v f t s c k h l u O123 q\r\n', {
          keys: ['k'],
          noreply: true,
          args: ['v', 'f', 't', 's', 'c', 'k', 'h', 'l', 'u', 'O123', 'q'],
        }),
      ],
    },
    {
      name: 'mg with T, N and R',
      input: 'mg k T30 N5 R-1 v\r\n',
      expect: [
        req('mg', 'mg k T30 N5 R-1 v\r\n', {
          keys: ['k'],
          exptime: 30,
          args: ['T30', 'N5', 'R-1', 'v'],
        }),
      ],
    },
    {
      name: 'mg b: the base64 key is decoded into keys, wireKeys keeps the token',
      input: 'mg a2V5 b k v\r\n',
      expect: [
        req('mg', 'mg a2V5 b k v\r\n', {
          keys: ['key'],
          wireKeys: ['a2V5'],
          args: ['b', 'k', 'v'],
        }),
      ],
    },
    {
      name: 'mg b with a binary key',
      input: 'mg AP8KIA== v b\r\n',
      expect: [
        req('mg', 'mg AP8KIA== v b\r\n', {
          keys: ['\x00\xff\n '],
          wireKeys: ['AP8KIA=='],
          args: ['v', 'b'],
        }),
      ],
    },
    {
      name: 'mg b with an undecodable key',
      input: 'mg !!!! b\r\nmg k b\r\n',
      expect: [E.decodeKey, E.decodeKey],
    },
    { name: 'mg bad T', input: 'mg k Tx\r\n', expect: [E.badToken] },
    {
      name: 'mg bad N, R, C',
      input: 'mg k Nx\r\nmg k R\r\nmg k C-1\r\n',
      expect: [E.badToken, E.badToken, E.badToken],
    },
    { name: 'mg bad F', input: 'mg k Fx\r\n', expect: [E.format] },
    {
      name: 'mg bad J and D',
      input: 'mg k Jx\r\nmg k Dx\r\n',
      expect: [
        err('CLIENT_ERROR invalid numeric initial value'),
        err('CLIENT_ERROR invalid numeric delta value'),
      ],
    },
    {
      name: 'mg M of the wrong length',
      input: 'mg k M\r\nmg k MII\r\n',
      expect: [E.mLength, E.mLength],
    },
    {
      name: 'mg duplicate flag',
      input: 'mg k v v\r\nmg k q O1 O2\r\n',
      expect: [E.duplicateFlag, E.duplicateFlag],
    },
    {
      name: 'mg invalid flag',
      input: 'mg k !\r\nmg k z\r\nmg k v \xff\r\n',
      expect: [E.invalidFlag, E.invalidFlag, E.duplicateFlag],
    },
    {
      name: 'mg: an invalid flag wins over an earlier value error',
      input: 'mg k Tx !\r\n',
      expect: [E.invalidFlag],
    },
    {
      name: 'mg opaque: 32 bytes with the O is fine, 33 is too long',
      input: `mg k ${opaque(32)}\r\nmg k ${opaque(33)}\r\n`,
      expect: [req('mg', `mg k ${opaque(32)}\r\n`, { keys: ['k'], args: [opaque(32)] }), E.opaque],
    },
    {
      name: 'mg: 17 flags fit, 18 are too many',
      input: `mg k ${flags17.join(' ')}\r\nmg k ${flags17.join(' ')} E\r\n`,
      expect: [
        req('mg', `mg k ${flags17.join(' ')}\r\n`, {
          keys: ['k'],
          exptime: 1,
          delta: '1',
          args: flags17,
        }),
        E.mgTooLong,
      ],
    },
    {
      name: 'mg key length: 250 fine, 251 refused',
      input: `mg ${k250} v\r\nmg ${k251} v\r\n`,
      expect: [req('mg', `mg ${k250} v\r\n`, { keys: [k250], args: ['v'] }), E.format],
    },
    { name: 'mg with no key is ERROR', input: 'mg\r\nmg \r\n', expect: [E.error, E.error] },
    { name: 'an unknown meta command is ERROR', input: 'mz k\r\n', expect: [E.error] },
    {
      name: 'ms with every value flag',
      input: 'ms k 3 F5 T10 C99 ME q k O1 I\r\nabc\r\n',
      expect: [
        store('ms', 'ms k 3 F5 T10 C99 ME q k O1 I\r\n', 'abc', {
          keys: ['k'],
          flags: 5,
          exptime: 10,
          cas: '99',
          mode: 'E',
          noreply: true,
          forward: 'ms k 3 F5 T10 C99 ME q k O1 I\r\n',
          args: ['F5', 'T10', 'C99', 'ME', 'q', 'k', 'O1', 'I'],
        }),
      ],
    },
    ...['E', 'A', 'P', 'R', 'S'].map((m) => ({
      name: `ms mode M${m}`,
      input: `ms k 1 M${m}\r\nz\r\n`,
      expect: [
        store('ms', `ms k 1 M${m}\r\n`, 'z', {
          keys: ['k'],
          mode: m,
          args: [`M${m}`],
          forward: `ms k 1 M${m}\r\n`,
        }),
      ],
    })),
    {
      name: 'ms b with a data block containing \\r\\n',
      input: 'ms a2V5 4 b\r\n\r\n\r\n\r\n',
      expect: [
        store('ms', 'ms a2V5 4 b\r\n', '\r\n\r\n', {
          keys: ['key'],
          wireKeys: ['a2V5'],
          args: ['b'],
          forward: 'ms a2V5 4 b\r\n',
        }),
      ],
    },
    {
      name: 'ms F takes 32-bit flags like set',
      input: 'ms k 1 F4294967297\r\nz\r\n',
      expect: [
        store('ms', 'ms k 1 F4294967297\r\n', 'z', {
          keys: ['k'],
          flags: 1,
          args: ['F4294967297'],
          forward: 'ms k 1 F4294967297\r\n',
        }),
      ],
    },
    // ms errors before the length is known: nothing is swallowed.
    { name: 'ms with no length', input: 'ms k\r\n', expect: [E.format] },
    { name: 'ms with no key is ERROR', input: 'ms\r\n', expect: [E.error] },
    {
      name: 'ms with a bad length: no swallow',
      input: 'ms k x\r\na\r\nmn\r\n',
      expect: [E.format, E.error, MN],
    },
    {
      name: 'ms with a negative length: no swallow',
      input: 'ms k -1\r\nmn\r\n',
      expect: [E.format, MN],
    },
    {
      name: 'ms with a 251-byte key: no swallow',
      input: `ms ${k251} 1\r\na\r\nmn\r\n`,
      expect: [E.format, E.error, MN],
    },
    {
      name: 'ms with too many tokens: no swallow',
      input: `ms k 1 ${Array.from({ length: 17 }, (_, i) => `O${i}`).join(' ')}\r\na\r\nmn\r\n`,
      expect: [E.flagsTooLong, E.error, MN],
    },
    // ms errors once the length is known: the data block is swallowed.
    ...(
      [
        ['invalid flag', 'ms k 1 !', E.invalidFlag],
        ['duplicate flag', 'ms k 1 T1 T2', E.duplicateFlag],
        ['bad T', 'ms k 1 Tx', E.badToken],
        ['bad C', 'ms k 1 Cx', E.badToken],
        ['bad F', 'ms k 1 Fx', E.format],
        ['undecodable b key', 'ms !!!! 1 b', E.decodeKey],
        ['invalid mode', 'ms k 1 Mx', E.msMode],
        ['lower-case mode', 'ms k 1 Ms', E.msMode],
        ['M of the wrong length', 'ms k 1 MSS', E.mLength],
        ['opaque too long', `ms k 1 ${opaque(33)}`, E.opaque],
      ] as const
    ).map(([what, line, e]) => ({
      name: `ms ${what}: the block is swallowed`,
      input: `${line}\r\nz\r\nmn\r\n`,
      expect: [e, MN],
    })),
    {
      name: 'ms too large: swallowed (small -I)',
      input: `ms k 1000\r\n${'get k\r\n'.repeat(142)}123456\r\nmn\r\n`,
      options: { itemSizeMax: 1024 },
      expect: [E.tooLarge, MN],
    },
    {
      name: 'ms opaque too long wins over too large',
      input: `ms k 1000 ${opaque(40)}\r\n${'z'.repeat(1000)}\r\nmn\r\n`,
      options: { itemSizeMax: 1024 },
      expect: [E.opaque, MN],
    },
    {
      name: 'ms bad data chunk is never silent, even with q',
      input: 'ms k 1 q\r\nabc\r\nmn\r\n',
      expect: [E.badChunk, E.error, MN],
    },
    {
      name: 'md',
      input: 'md k q C5 k O7\r\n',
      expect: [
        req('md', 'md k q C5 k O7\r\n', {
          keys: ['k'],
          noreply: true,
          cas: '5',
          args: ['q', 'C5', 'k', 'O7'],
        }),
      ],
    },
    {
      name: 'md b',
      input: 'md a2V5 b\r\n',
      expect: [req('md', 'md a2V5 b\r\n', { keys: ['key'], wireKeys: ['a2V5'], args: ['b'] })],
    },
    {
      name: 'md reports every flag problem as "invalid or duplicate flag"',
      input: 'md k !\r\nmd k q q\r\nmd k Cx\r\nmd !!!! b\r\n',
      expect: [E.invalidOrDup, E.invalidOrDup, E.invalidOrDup, E.invalidOrDup],
    },
    { name: 'md opaque too long', input: `md k ${opaque(33)}\r\n`, expect: [E.opaque] },
    { name: 'md with a 251-byte key', input: `md ${k251}\r\n`, expect: [E.format] },
    {
      name: 'md with too many tokens',
      input: `md k ${flags17.join(' ')} E\r\n`,
      expect: [E.flagsTooLong],
    },
    { name: 'md with no key is ERROR', input: 'md\r\n', expect: [E.error] },
    {
      name: 'ma with delta, initial value, autovivify and mode',
      input: 'ma k D5 J10 N0 MD q\r\n',
      expect: [
        req('ma', 'ma k D5 J10 N0 MD q\r\n', {
          keys: ['k'],
          delta: '5',
          mode: 'D',
          noreply: true,
          args: ['D5', 'J10', 'N0', 'MD', 'q'],
        }),
      ],
    },
    ...['I', '+', 'D', '-'].map((m) => ({
      name: `ma mode M${m}`,
      input: `ma k M${m}\r\n`,
      expect: [req('ma', `ma k M${m}\r\n`, { keys: ['k'], mode: m, args: [`M${m}`] })],
    })),
    {
      name: 'ma invalid modes (including lower case)',
      input: 'ma k Mx\r\nma k Mi\r\n',
      expect: [E.maMode, E.maMode],
    },
    {
      name: 'ma flag problems are all "invalid or duplicate flag"',
      input: 'ma k D-1\r\nma k J-1\r\nma k q q\r\nma k !\r\n',
      expect: [E.invalidOrDup, E.invalidOrDup, E.invalidOrDup, E.invalidOrDup],
    },
    { name: 'ma opaque too long', input: `ma k ${opaque(40)}\r\n`, expect: [E.opaque] },
    { name: 'mn', input: 'mn\r\n', expect: [MN] },
    {
      name: 'mn ignores its arguments',
      input: 'mn foo bar\r\n',
      expect: [req('mn', 'mn foo bar\r\n', { args: ['foo', 'bar'] })],
    },
    { name: 'me', input: 'me k\r\n', expect: [req('me', 'me k\r\n', { keys: ['k'] })] },
    {
      name: 'me b decodes the key',
      input: 'me a2V5 b\r\n',
      expect: [req('me', 'me a2V5 b\r\n', { keys: ['key'], wireKeys: ['a2V5'], args: ['b'] })],
    },
    {
      name: 'me with another argument does not decode',
      input: 'me a2V5 x\r\n',
      expect: [req('me', 'me a2V5 x\r\n', { keys: ['a2V5'], args: ['x'] })],
    },
    {
      name: 'me with no key, a bad b key, a long key',
      input: `me\r\nme !!!! b\r\nme ${k251}\r\n`,
      expect: [E.format, E.format, E.format],
    },
    {
      // memcached 1.6.18: a bad F does not replace the error text of an earlier bad flag value.
      name: 'mg: a bad F after a bad T reports the T error (as memcached)',
      input: 'mg k Tx Fx\r\n',
      expect: [E.badToken],
    },
    {
      name: 'mg: a bad F after an undecodable b key reports the decoding error (as memcached)',
      input: 'mg !!!! b Fx\r\n',
      expect: [E.decodeKey],
    },
    {
      name: 'ms: a bad F after a bad T reports the T error (as memcached); the block is swallowed',
      input: 'ms k 1 Tx Fx\r\nz\r\nmn\r\n',
      expect: [E.badToken, MN],
    },
  ]);

  it('records meta flags for hasFlag/flagValue', () => {
    const { parser, requests } = recordRequests();
    parser.push(bytes('mg k O123 T30 v\r\n'));
    expect(requests).to.have.length(1);
    const r = requests[0]!;
    expect(r.hasFlag('O')).to.equal(true);
    expect(r.hasFlag('v')).to.equal(true);
    expect(r.hasFlag('T')).to.equal(true);
    expect(r.hasFlag('q')).to.equal(false);
    expect(r.hasFlag('V')).to.equal(false);
    expect(r.flagValue('O')?.toString()).to.equal('123');
    expect(r.flagValue('T')?.toString()).to.equal('30');
    expect(r.flagValue('v')?.toString()).to.equal('');
    expect(r.flagValue('q')).to.equal(undefined);
  });
});

describe('RequestParser: memory', () => {
  it('a storage command fed whole is a zero-copy view of the input chunk', () => {
    const input = bytes('get a\r\nset key 0 0 5\r\nhello\r\n');
    const { parser, requests } = recordRequests();
    parser.push(input);
    expect(requests).to.have.length(2);
    const set = requests[1]!;
    expect(set.raw.buffer).to.equal(input.buffer);
    expect(set.raw.byteOffset).to.equal(input.byteOffset + 7);
    expect(set.raw.length).to.equal(input.length - 7);
    expect(set.value.buffer).to.equal(input.buffer);
    expect(set.value.toString()).to.equal('hello');
    expect(set.key.buffer).to.equal(input.buffer);
    expect(set.key.byteOffset).to.equal(input.byteOffset + 11);
    expect(requests[0]!.raw.buffer).to.equal(input.buffer);
  });

  it('an ms fed whole is zero-copy too, its args included', () => {
    const input = bytes('ms k 2 T5 F1\r\nhi\r\n');
    const { parser, requests } = recordRequests();
    parser.push(input);
    const r = requests[0]!;
    expect(r.raw.buffer).to.equal(input.buffer);
    for (const a of r.args) expect(a.buffer).to.equal(input.buffer);
  });

  it('when a command spans chunks, keys and args are views into its own raw copy', () => {
    const input = bytes(
      'set key 0 0 5 noreply\r\nhello\r\nms a2V5 2 b T5\r\nhi\r\nms kk 2 T6\r\nho\r\n',
    );
    const splits = [byteByByte(input), ...randomSplits(input, 7, 20)];
    for (const split of splits) {
      const { parser, requests } = recordRequests();
      for (const c of split.chunks) parser.push(c);
      expect(requests, split.name).to.have.length(3);
      for (const r of requests) {
        const inRaw = (b: Buffer): boolean =>
          b.buffer === r.raw.buffer &&
          b.byteOffset >= r.raw.byteOffset &&
          b.byteOffset + b.length <= r.raw.byteOffset + r.raw.length;
        for (const k of r.wireKeys)
          expect(inRaw(k), `${split.name}: wire key of ${r.cmd}`).to.equal(true);
        for (const a of r.args) expect(inRaw(a), `${split.name}: arg of ${r.cmd}`).to.equal(true);
        expect(inRaw(r.value), split.name).to.equal(true);
      }
      expect(requests[0]!.key.toString()).to.equal('key');
      expect(requests[1]!.key.toString()).to.equal('key');
      expect(requests[1]!.wireKeys[0]!.toString()).to.equal('a2V5');
      expect(requests[2]!.args.map(String)).to.deep.equal(['T6']);
    }
  });

  it('every chunking yields the same requests as feeding whole', () => {
    const input = bytes('get a b\r\nset k 0 0 2\r\nab\r\nmg k v\r\n');
    const expected = parseRequests(whole(input).chunks);
    expect(expected).to.have.length(3);
    for (const split of allSplits(input, { random: 20, seed: 99 })) {
      expect(parseRequests(split.chunks), split.name).to.deep.equal(expected);
    }
  });
});

describe('RequestParser: pause and resume', function () {
  it('stops before the next command, holds the rest, and resumes where it stopped', () => {
    const seen: string[] = [];
    const parser: RequestParser = new RequestParser({
      onRequest(req) {
        seen.push(req.raw.toString('latin1'));
        // Pause after the second command, as a session at its in-flight limit does.
        if (seen.length === 2) parser.pause();
      },
      onError() {
        seen.push('error');
      },
    });
    const stream = 'get a\r\nset b 0 0 1\r\nx\r\nget c\r\ndelete d\r\n';
    parser.push(Buffer.from(stream.slice(0, 30)));
    expect(seen).to.deep.equal(['get a\r\n', 'set b 0 0 1\r\nx\r\n']);
    expect(parser.holding).to.equal(true);
    // Bytes arriving while paused wait behind the held ones.
    parser.push(Buffer.from(stream.slice(30)));
    expect(seen.length).to.equal(2);
    parser.resume();
    expect(seen).to.deep.equal(['get a\r\n', 'set b 0 0 1\r\nx\r\n', 'get c\r\n', 'delete d\r\n']);
    expect(parser.holding).to.equal(false);
  });

  it('a pause inside a data block takes effect after the block', () => {
    const seen: string[] = [];
    const parser = new RequestParser({
      onRequest(req) {
        seen.push(req.cmd);
      },
      onError() {
        seen.push('error');
      },
    });
    parser.push(Buffer.from('set k 0 0 5\r\nab'));
    parser.pause();
    parser.push(Buffer.from('cde\r\nget k\r\n'));
    expect(seen).to.deep.equal([]);
    parser.resume();
    expect(seen).to.deep.equal(['set', 'get']);
  });
});

describe('RequestParser: memory', () => {
  it('keeps a copy of just the bytes of an unfinished command, not the pooled read it came in', () => {
    const parser = new RequestParser({ onRequest: () => {}, onError: () => {} });
    // Buffer's pool serves short reads: this chunk is a view of a larger slab.
    const chunk = Buffer.allocUnsafe(12);
    chunk.write('get half-a-k', 'latin1');
    expect(chunk.buffer.byteLength).to.be.greaterThan(chunk.length);
    parser.push(chunk);
    const parts = (parser as unknown as { parts: Buffer[] }).parts;
    expect(parts).to.have.length(1);
    expect(parts[0]!.toString('latin1')).to.equal('get half-a-k');
    expect(parts[0]!.buffer.byteLength).to.equal(12);
  });

  it('copies an unfinished value of a read up to 16 KiB out of the 64 KiB slab raw reads share', () => {
    for (const size of [10 * 1024, 16 * 1024]) {
      const parser = new RequestParser({ onRequest: () => {}, onError: () => {} });
      // A read as raw-read.ts hands it out: a view of a shared 64 KiB slab.
      const slab = Buffer.alloc(64 * 1024);
      const chunk = slab.subarray(100, 100 + size);
      chunk.write('set k 0 0 20000\r\n', 'latin1');
      parser.push(chunk);
      const parts = (parser as unknown as { parts: Buffer[] }).parts;
      const kept = parts.reduce((n, p) => n + p.length, 0);
      expect(kept, `${size}: the command so far, header included`).to.equal(size);
      for (const p of parts) expect(p.buffer.byteLength, `${size}: kept bytes`).to.equal(p.length);
    }
  });

  it('holds its own copy of a short read that arrives while paused', () => {
    const got: string[] = [];
    const parser = new RequestParser({
      onRequest: (r) => got.push(r.cmd),
      onError: () => {},
    });
    parser.pause();
    const slab = Buffer.alloc(64 * 1024);
    const chunk = slab.subarray(10, 10 + 20);
    chunk.write('get a\r\nget b\r\nmn\r\n', 'latin1');
    parser.push(chunk);
    expect(parser.holding).to.equal(true);
    const held = (parser as unknown as { held: Buffer[] }).held;
    for (const h of held) expect(h.buffer.byteLength, 'held bytes').to.equal(h.length);
    parser.resume();
    expect(got).to.deep.equal(['get', 'get', 'mn']);
  });
});
