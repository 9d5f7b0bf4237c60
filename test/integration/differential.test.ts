/**
 * Differential test: the same byte streams, valid and invalid, go to a real
 * memcached and to RequestParser; the parser's verdicts (which command, which
 * error, where the stream resumes, when the connection dies) must match
 * memcached's replies. See test/helpers/differential.ts for the rules.
 */

import { spawnSync } from 'node:child_process';
import { expect } from 'chai';
import {
  ambiguity,
  type DiffCase,
  endsQuiet,
  expectedReplies,
  parseStream,
  pick,
  pool,
  prng,
  runCase,
  show,
  showEvents,
} from '../helpers/differential.js';
import { Memcached } from '../helpers/memcached.js';

/** A command (or a few) to put into streams; `$k` is replaced by a key prefix unique to the case. */
interface Piece {
  text: string | ((k: string) => Buffer);
  /** Changes server-wide state (flush_all, verbosity, ...): runs on its own memcached, one case at a time. */
  admin?: boolean;
  /** Not for generated mixes and mutations: huge, or it ends or hijacks the stream. */
  solo?: boolean;
  /**
   * Must start its stream: memcached 1.6.18 discards the replies still queued
   * from earlier commands of the same read (conn_release_items on a get with a
   * key over 250 bytes; conn_closing on a line over 2048 bytes).
   */
  first?: boolean;
  /** Nothing may follow (the stream has no newline at its end). */
  last?: boolean;
}

const P = (text: Piece['text'], opts: Omit<Piece, 'text'> = {}): Piece => ({ text, ...opts });
const A = (text: string, opts: Omit<Piece, 'text'> = {}): Piece =>
  P(text, { admin: true, ...opts });

const K250 = 'a'.repeat(250);
const K251 = 'a'.repeat(251);
const OPAQUE32 = 'O' + 'x'.repeat(32);
const OPAQUE33 = 'O' + 'x'.repeat(33);
const ITEM_LIMIT = 1048516; // largest value for key "k", flags 0 (-I 1m)
const FLAGS_LIMIT = 1048512; // largest value for key "k", flags != 0

const data = (n: number): string =>
  'abcdefghijklmnopqrstuvwxyz'.repeat(Math.ceil(n / 26)).slice(0, n);
const buf = (s: string): Buffer => Buffer.from(s, 'latin1');

const PIECES: Piece[] = [
  // get, gets, gat, gats
  P('get $k\r\n'),
  P('get $ka $kb $kc\r\n'),
  P('set $k 0 0 5\r\nhello\r\nget $k\r\n'),
  P('set $k 7 0 2\r\nhi\r\ngets $k\r\n'),
  P('set $ka 0 0 1\r\nx\r\nget $ka $kb $ka\r\n'),
  P('gets $ka $kb\r\n'),
  P('get\r\n'),
  P('get \r\n'),
  P('gets\r\n'),
  P('get   $k   \r\n'),
  P('gat 0 $k\r\n'),
  P('set $k 0 0 1\r\nx\r\ngat 100 $k\r\n'),
  P('set $k 0 0 1\r\nx\r\ngats 100 $ka $k\r\n'),
  P('gat 0\r\n'),
  P('gat\r\n'),
  P('gats\r\n'),
  P('gat abc $k\r\n'),
  P('gat -1 $k\r\n'),
  P('gat 4294967297 $k\r\n'),
  P('gat +5 $k\r\n'),
  P('gat 5x $k\r\n'),
  P('gats 99999999999999999999 $k\r\n'),
  P(`get ${K250}\r\n`),
  P(`get ${K251}\r\n`, { first: true }),
  P(`get $ka ${K251} $kb\r\n`, { first: true }),
  P(`gat 0 $k ${K251}\r\n`, { first: true }),
  P((k) => buf(`get ${Array.from({ length: 30 }, (_, i) => `${k}${i}`).join(' ')}\r\n`)),
  P((k) => buf(`get ${Array.from({ length: 30 }, (_, i) => `${k}${i}`).join(' ')} ${K251}\r\n`), {
    first: true,
  }),
  P((k) =>
    buf(
      `set ${k}7 0 0 1\r\nx\r\nget ${Array.from({ length: 1000 }, (_, i) => `${k}${i}`).join(' ')}\r\n`,
    ),
  ),
  P((k) => buf(`gets ${Array.from({ length: 2500 }, (_, i) => `${k}${i}`).join(' ')}\r\n`), {
    solo: true,
  }),
  P('bget $k\r\n'),
  P('GET $k\r\n'),
  P('getx $k\r\n'),
  P('get $k\0junk\r\n'),
  P('   get $k\r\n'),
  P('get $k\n'),
  P('get $k\r\r\n'),
  P('get $k\tx\r\n'),

  // storage commands
  P('set $k 0 0 5\r\nhello\r\n'),
  P('set $k 0 0 5 noreply\r\nhello\r\nget $k\r\n'),
  P('set $k 0 0 0\r\n\r\n'),
  P('set $k 4294967295 0 1\r\nx\r\ngets $k\r\n'),
  P('set $k 4294967297 0 1\r\nx\r\nget $k\r\n'),
  P('set $k -1 0 1\r\nx\r\n'),
  P('set $k -0 0 1\r\nx\r\n'),
  P('set $k +5 0 1\r\nx\r\n'),
  P('set $k abc 0 1\r\nx\r\n'),
  P('set $k 0 abc 1\r\nx\r\n'),
  P('set $k 0 -1 1\r\nx\r\nget $k\r\n'),
  P('set $k 0 0 abc\r\nx\r\n'),
  P('set $k 0 0 -1\r\nx\r\n'),
  P('set $k 0 0 +1\r\nx\r\n'),
  P('set $k 0 0 -0\r\n\r\n'),
  P('set $k 0 0 4294967297\r\nx\r\n'),
  // memcached sends SERVER_ERROR only once the 2 GiB are swallowed, so only the silent form is observable.
  P('set $k 0 0 2147483645 noreply\r\n', { solo: true }),
  P('set $k 0 0 2147483646\r\n'),
  P('set $k 0 0 2147483647\r\n'),
  P('set $k 0 0 99999999999999999999\r\n'),
  P('set $k 0 0 1 \r\nx\r\n'),
  P('set $k 0 0\t1\r\nx\r\n'),
  P('set $k 0 0 1\t\r\nx\r\n'),
  P('set $k 0\t 0 1\r\nx\r\n'),
  P('set $k 0 0 \t1\r\nx\r\n'),
  P('set $k\t0 0 1\r\nx\r\n'),
  P('set $k 0 0 1\r\nxy\r\n'),
  P('set $k 0 0 5\r\nhelloXY\r\n'),
  P('set $k 0 0 5\r\nhi\r\n'),
  P('set $k 0 0 5 noreply\r\nhelloXY\r\n'),
  P('set $k 0 0 5\r\nhello\nget $k\r\n'),
  P('set $k 0 0 5\nhello\r\n'),
  P('set $k 0 0 5\nhello\n\n'),
  P('set $k 0 0 5 noreply extra\r\nhello\r\n'),
  P('set $k 0 0 5 extra\r\nhello\r\n'),
  P('set $k 0 0\r\n'),
  P('set $k 0 0 1 2 3 4\r\nx\r\n'),
  P('set\r\n'),
  P('set $k\r\n'),
  P('set $k 0 0 1\0 noreply\r\nx\r\n'),
  P('add $k 0 0 1\r\nx\r\nadd $k 0 0 1\r\ny\r\n'),
  P('replace $k 0 0 1\r\nx\r\n'),
  P('set $k 0 0 1\r\nx\r\nreplace $k 0 0 1\r\ny\r\n'),
  P('append $k 0 0 1\r\nx\r\n'),
  P('set $k 0 0 1\r\nx\r\nappend $k 0 0 2\r\nyz\r\nprepend $k 0 0 1\r\nw\r\nget $k\r\n'),
  P('prepend $k 0 0 1 noreply\r\nx\r\n'),
  P('cas $k 0 0 1 1\r\nx\r\n'),
  P('set $k 0 0 1\r\nx\r\ngets $k\r\ncas $k 0 0 1 999999\r\ny\r\n'),
  P('cas $k 0 0 1\r\nx\r\n'),
  P('cas $k 0 0 1 abc\r\nx\r\n'),
  P('cas $k 0 0 1 -1\r\nx\r\n'),
  P('cas $k 0 0 1 18446744073709551615\r\nx\r\n'),
  P('cas $k 0 0 1 18446744073709551616\r\nx\r\n'),
  P('cas $k 0 0 1 1 noreply\r\nx\r\n'),
  P('cas $k 0 0 1 1 noreply extra\r\nx\r\n'),
  P(`set ${K250} 0 0 1\r\nx\r\n`),
  P(`set ${K251} 0 0 1\r\nx\r\n`),
  P(`set ${K251} 0 0 1 noreply\r\nx\r\n`),
  P(`set k 0 0 ${ITEM_LIMIT}\r\n${data(ITEM_LIMIT)}\r\n`, { solo: true }),
  P(`set k 0 0 ${ITEM_LIMIT + 1}\r\n${data(ITEM_LIMIT + 1)}\r\n`, { solo: true }),
  P(`set k 1 0 ${FLAGS_LIMIT}\r\n${data(FLAGS_LIMIT)}\r\n`, { solo: true }),
  P(`set k 1 0 ${FLAGS_LIMIT + 1}\r\n${data(FLAGS_LIMIT + 1)}\r\n`, { solo: true }),
  P(`add kk 0 0 ${ITEM_LIMIT}\r\n${data(ITEM_LIMIT)}\r\n`, { solo: true }),
  P(`set $k 0 0 2000000\r\n${data(2000000)}\r\n`, { solo: true }),
  P(`set $k 0 0 2000000 noreply\r\n${data(2000000)}\r\n`, { solo: true }),
  P(`set k 0 0 ${ITEM_LIMIT + 1}\r\n${data(ITEM_LIMIT + 1)}XY`, { solo: true }),

  // delete
  P('delete $k\r\n'),
  P('set $k 0 0 1\r\nx\r\ndelete $k\r\n'),
  P('delete $k 0\r\n'),
  P('delete $k noreply\r\n'),
  P('delete $k 0 noreply\r\n'),
  P('delete $k 1\r\n'),
  P('delete $k 1 noreply\r\n'),
  P('delete $k 0 0\r\n'),
  P('delete $k noreply 0\r\n'),
  P('delete $k foo\r\n'),
  P('delete $k 00\r\n'),
  P('delete\r\n'),
  P('delete $k 0 noreply x\r\n'),
  P(`delete ${K251}\r\n`),
  P(`delete ${K251} noreply\r\n`),

  // incr, decr
  P('incr $k 1\r\n'),
  P('set $k 0 0 1\r\n5\r\nincr $k 10\r\ndecr $k 100\r\n'),
  P('set $k 0 0 2\r\nab\r\nincr $k 1\r\n'),
  P('set $k 0 0 2\r\nab\r\ndecr $k 1 noreply\r\n'),
  P('set $k 0 0 20\r\n18446744073709551615\r\nincr $k 1\r\n'),
  P('incr $k -1\r\n'),
  P('incr $k abc\r\n'),
  P('incr $k\r\n'),
  P('decr $k 1 noreply\r\n'),
  P('incr $k 18446744073709551615\r\n'),
  P('incr $k 18446744073709551616\r\n'),
  P('incr $k 1 2\r\n'),
  P('incr $k 1 2 3\r\n'),
  P('incr $k -0\r\n'),
  P('incr $k +1\r\n'),
  P('incr $k abc noreply\r\n'),
  P(`incr ${K251} 1\r\n`),

  // touch
  P('touch $k 0\r\n'),
  P('set $k 0 0 1\r\nx\r\ntouch $k 100\r\n'),
  P('touch $k abc\r\n'),
  P('touch $k\r\n'),
  P('touch $k 0 noreply\r\n'),
  P('touch $k abc noreply\r\n'),
  P('touch $k 1 2 3\r\n'),
  P('touch $k -1\r\n'),
  P(`touch ${K251} 0\r\n`),

  // version, quit, mn, stats
  P('version\r\n'),
  P('version foo\r\n'),
  P('VERSION\r\n'),
  P('version\r\r\n'),
  P('quit\r\n'),
  P('quit foo\r\n'),
  P('mn\r\n'),
  P('mn foo\r\n'),
  P('stats\r\n'),
  P('stats settings\r\n'),
  P('stats items\r\n'),
  P('stats slabs\r\n'),
  P('stats sizes\r\n'),
  P('stats bogus\r\n'),
  P('stats detail\r\n'),

  // unknown commands and odd lines
  P('foo\r\n'),
  P('g\r\n'),
  P('\r\n'),
  P('   \r\n'),
  P('\n'),
  P('\0\r\n'),
  P('mx $k\r\n'),
  P('m\r\n'),
  P('mgg $k\r\n'),
  P('ver\0sion\r\n'),
  P('\0get $k\r\n'),
  P('x'.repeat(3000), { solo: true, first: true, last: true }),
  P(' '.repeat(101) + 'get ' + 'k '.repeat(1500), { solo: true, first: true, last: true }),
  P('x'.repeat(20000) + '\r\n', { solo: true, first: true }),
  P('x'.repeat(3000) + '\r\n', { solo: true, first: true }),
  P(`gat 0 ${'k '.repeat(10000)}\r\n`, { solo: true, first: true }),
  P(`gat 0 ${'k '.repeat(1500)}\r\n`, { solo: true, first: true }),

  // mg
  P('mg $k\r\n'),
  P('mg $k v\r\n'),
  P('set $k 3 0 5\r\nhello\r\nmg $k v f t c s k\r\n'),
  P('mg $k v q\r\nmn\r\n'),
  P('set $k 0 0 1\r\nx\r\nmg $k v q\r\nmn\r\n'),
  P('mg $k k O123 q\r\nmn\r\n'),
  P('set $k 0 0 1\r\nx\r\nmg $k k Oabc\r\n'),
  P('set $k 0 0 1\r\nx\r\nmg $k h l u t\r\n'),
  P('mg $k T30 v\r\n'),
  P('mg $k N30 v\r\n'),
  P('mg $k R30 v\r\n'),
  P('mg $k T\r\n'),
  P('mg $k Tabc\r\n'),
  P('mg $k T-1\r\n'),
  P('mg $k N\r\n'),
  P('mg $k R\r\n'),
  P('mg $k v v\r\n'),
  P('mg $k vv\r\n'),
  P('mg $k x\r\n'),
  P('mg $k E5\r\n'),
  P('mg $k 1\r\n'),
  P('mg $k \x80\r\n'),
  P('mg $k T1 Tabc\r\n'),
  P('mg $k Tabc x\r\n'),
  P(`mg $k ${OPAQUE32}\r\n`),
  P(`mg $k ${OPAQUE33}\r\n`),
  P(`mg $k ${'v '.repeat(17)}\r\n`),
  P(`mg $k ${'v '.repeat(18)}\r\n`),
  P('mg\r\n'),
  P('mg \r\n'),
  P(`mg ${K251}\r\n`),
  P(`mg ${K250} v\r\n`),
  P('mg Zm9vYmFy b v\r\n'),
  P('ms Zm9vYmFy 2 b\r\nhi\r\nmg Zm9vYmFy b v k\r\n'),
  P('mg Zm9 b\r\n'),
  P('mg Zm9vYmFy= b\r\n'),
  P('mg Zg== b v\r\n'),
  P('mg Zm9v!! b k\r\n'),
  P('mg !!!! b\r\n'),
  P('mg ==== b\r\n'),
  P('mg $k v\0 q\r\n'),
  P('mg  $k   v  \r\n'),
  P('mg $k v\n'),
  P('mg $k q\r\nmg $k q\r\nmn\r\n'),

  // ms
  P('ms $k 5\r\nhello\r\n'),
  P('ms $k 5 T0 F5\r\nhello\r\nmg $k v f\r\n'),
  P('ms $k 5 q\r\nhello\r\nmn\r\n'),
  P('ms $k 5 MS\r\nhello\r\n'),
  P('ms $k 5 ME\r\nhello\r\nms $k 5 ME\r\nhello\r\n'),
  P('ms $k 5 MA\r\nhello\r\n'),
  P('ms $k 5 MP\r\nhello\r\n'),
  P('ms $k 5 MR\r\nhello\r\n'),
  P('ms $k 5 Ms\r\nhello\r\n'),
  P('ms $k 5 MX\r\nhello\r\n'),
  P('ms $k 5 M\r\nhello\r\n'),
  P('ms $k 5 MSS\r\nhello\r\n'),
  P('ms $k 5 I\r\nhello\r\n'),
  P('ms $k 5 C123\r\nhello\r\n'),
  P('ms $k 5 C-1\r\nhello\r\n'),
  P('ms $k 5 Cabc\r\nhello\r\n'),
  P('ms $k 5 F4294967297\r\nhello\r\nmg $k f\r\n'),
  P('ms $k 5 Fabc\r\nhello\r\n'),
  P('ms $k 5 F-1\r\nhello\r\n'),
  P('ms $k 5 T-1\r\nhello\r\n'),
  P('ms $k 5 Tabc\r\nhello\r\n'),
  P('ms $k 5 v v\r\nhello\r\n'),
  P('ms $k 5 x\r\nhello\r\n'),
  P(`ms $k 5 ${OPAQUE33}\r\nhello\r\n`),
  P(`ms $k 5 ${OPAQUE32}\r\nhello\r\n`),
  P('ms $k 5 k O12\r\nhello\r\n'),
  P('ms $k 5 N30\r\nhello\r\n'),
  P('ms $k abc\r\nhello\r\n'),
  P('ms $k -1\r\nhello\r\n'),
  P('ms $k\r\nhello\r\n'),
  P('ms\r\n'),
  P('ms $k 4294967297\r\nx\r\n'),
  P('ms $k 0\r\n\r\n'),
  P('ms $k 5\r\nhelloXY\r\n'),
  P('ms $k 5 q\r\nhelloXY\r\nmn\r\n'),
  P(`ms $k 5 ${'v '.repeat(17)}\r\nhello\r\n`),
  P(`ms $k 5 ${'v '.repeat(18)}\r\nhello\r\n`),
  P(`ms ${K251} 5\r\nhello\r\n`),
  P('ms Zm9 2 b\r\nhi\r\n'),
  P('ms Zm9vYmF6 2 b k\r\nhi\r\n'),
  P(`ms k ${ITEM_LIMIT}\r\n${data(ITEM_LIMIT)}\r\n`, { solo: true }),
  P(`ms k ${ITEM_LIMIT + 1}\r\n${data(ITEM_LIMIT + 1)}\r\n`, { solo: true }),
  P(`ms k ${FLAGS_LIMIT} F1\r\n${data(FLAGS_LIMIT)}\r\n`, { solo: true }),
  P(`ms k ${FLAGS_LIMIT + 1} F1\r\n${data(FLAGS_LIMIT + 1)}\r\n`, { solo: true }),

  // md
  P('md $k\r\n'),
  P('set $k 0 0 1\r\nx\r\nmd $k\r\n'),
  P('md $k q\r\nmn\r\n'),
  P('set $k 0 0 1\r\nx\r\nmd $k I T30\r\n'),
  P('md $k C123\r\n'),
  P('md $k x\r\n'),
  P('md $k q q\r\n'),
  P(`md $k ${OPAQUE33}\r\n`),
  P('md !!!! b\r\n'),
  P('md Zm9v b\r\n'),
  P('md\r\n'),
  P(`md ${K251}\r\n`),
  P(`md $k ${'q '.repeat(18)}\r\n`),
  P('md $k Tabc\r\n'),
  P('set $k 0 0 1\r\nx\r\nmd $k k O1\r\n'),

  // ma
  P('ma $k\r\n'),
  P('ma $k N0 J10 v\r\n'),
  P('set $k 0 0 1\r\n5\r\nma $k v\r\n'),
  P('set $k 0 0 1\r\n5\r\nma $k MI D5 v\r\n'),
  P('set $k 0 0 1\r\n5\r\nma $k M+ v\r\n'),
  P('set $k 0 0 1\r\n5\r\nma $k MD v\r\n'),
  P('set $k 0 0 1\r\n5\r\nma $k M- v\r\n'),
  P('ma $k MX\r\n'),
  P('ma $k M\r\n'),
  P('ma $k Mi\r\n'),
  P('ma $k Dabc\r\n'),
  P('ma $k D-1\r\n'),
  P('ma $k J-1 N0\r\n'),
  P('ma $k Jabc\r\n'),
  P('ma $k q\r\nmn\r\n'),
  P('ma $k v v\r\n'),
  P('ma $k x\r\n'),
  P('set $k 0 0 2\r\nab\r\nma $k\r\n'),
  P(`ma $k ${OPAQUE33}\r\n`),
  P('ma $k C1 v\r\n'),
  P('set $k 0 0 1\r\n1\r\nma $k T30 N30 v t k O7\r\n'),

  // me
  P('me $k\r\n'),
  P('set $k 0 0 1\r\nx\r\nme $k\r\n'),
  P('ms Zm9vYmF4 1 b\r\nx\r\nme Zm9vYmF4 b\r\n'),
  P('me Zm9 b\r\n'),
  P('me\r\n'),
  P(`me ${K251}\r\n`),
  P('me $k extra\r\n'),

  // more number and token edge cases
  P('set $k 18446744073709551615 0 1\r\nx\r\nget $k\r\n'),
  P('set $k 18446744073709551616 0 1\r\nx\r\n'),
  P('set $k -4294967295 0 1\r\nx\r\n'),
  P('set $k -18446744073709551615 0 1\r\nx\r\nget $k\r\n'),
  P('set $k 00000000000000000001 0 1\r\nx\r\n'),
  P('set $k 0 9223372036854775807 1\r\nx\r\n'),
  P('set $k 0 9223372036854775808 1\r\nx\r\n'),
  P('set $k 0 -9999999999 1\r\nx\r\n'),
  P('set $k \t0 0 1\r\nx\r\n'),
  P('set $k 0 0 1\x0b\r\nx\r\n'),
  P('set $k 0 0 1\r 5\r\nx\r\n'),
  P('set $k 0 0 1 NOREPLY\r\nx\r\n'),
  P('set $k 0 0 noreply\r\nx\r\n'),
  P('set $k\x01 0 0 1\r\nx\r\n'),
  P('set $k 0 0 1\r\nx\nversion\r\n'),
  P('cas $k 0 0 1 noreply\r\nx\r\n'),
  P('incr $k -18446744073709551615\r\n'),
  P('incr $k noreply\r\n'),
  P(`incr ${K251} abc\r\n`),
  P('touch $k noreply\r\n'),
  P(`touch ${K251} abc\r\n`),
  P('delete $k noreply noreply\r\n'),
  P(`delete ${K251} 1\r\n`),
  P('gat 0 ' + Array.from({ length: 30 }, (_, i) => `$k${i}`).join(' ') + '\r\n'),
  P('get ' + Array.from({ length: 22 }, (_, i) => `$k${i}`).join(' ') + '  \r\n'),
  P('mg $k v1 k2\r\n'),
  P('mg $k O\r\n'),
  P('mg $k I\r\n'),
  P('mg $k P L\r\n'),
  P('mg $k S5\r\n'),
  P(`mg ${K251} !\r\n`),
  P(`mg ${K251} ${'v '.repeat(19)}\r\n`),
  P(`md ${K251} ${'v '.repeat(19)}\r\n`),
  P(`ms ${K251} 5 ${'v '.repeat(19)}\r\nhello\r\n`),
  P(`ms $k abc ${'v '.repeat(19)}\r\nhello\r\n`),
  P('mg $k T99999999999999999999\r\n'),
  P('ms $k 5 c\r\nhello\r\n'),
  P('ms $k 5 S5\r\nhello\r\n'),
  P('ms $k 5 MS q k\r\nhello\r\nmn\r\n'),
  P('me $k bx\r\n'),
  P(`ms aw== ${ITEM_LIMIT} b\r\n${data(ITEM_LIMIT)}\r\n`, { solo: true }),
  P(`ms aw== ${ITEM_LIMIT + 1} b\r\n${data(ITEM_LIMIT + 1)}\r\n`, { solo: true }),
  P(`ms k ${ITEM_LIMIT + 1} q\r\n${data(ITEM_LIMIT + 1)}\r\nmn\r\n`, { solo: true }),
  P(`set kkkkkkkkkk 0 0 ${ITEM_LIMIT - 9}\r\n${data(ITEM_LIMIT - 9)}\r\n`, { solo: true }),
  P(`set kkkkkkkkkk 0 0 ${ITEM_LIMIT - 8}\r\n${data(ITEM_LIMIT - 8)}\r\n`, { solo: true }),
  P(`set k 4294967295 0 ${FLAGS_LIMIT}\r\n${data(FLAGS_LIMIT)}\r\n`, { solo: true }),
  A('verbosity noreply\r\n'),
  A('flush_all 0 0\r\n'),

  // server-wide commands: their own memcached, one case at a time
  A('flush_all\r\n'),
  A('set $k 0 0 1\r\nx\r\nflush_all 0\r\nget $k\r\n'),
  A('flush_all noreply\r\n'),
  A('flush_all 0 noreply\r\n'),
  A('flush_all abc\r\n'),
  A('flush_all -1\r\n'),
  A('flush_all 1 2\r\n'),
  A('flush_all abc noreply\r\n'),
  A('flush_all 0 0 0\r\n'),
  A('verbosity 1\r\n'),
  A('verbosity 1 noreply\r\n'),
  A('verbosity\r\n'),
  A('verbosity abc\r\n'),
  A('verbosity abc noreply\r\n'),
  A('verbosity 1 2 3\r\n'),
  A('verbosity 0\r\n'),
  A('stats detail on\r\n'),
  A('stats detail off\r\n'),
  A('stats detail dump\r\n'),
  A('stats reset\r\n'),
  A('stats cachedump 1 1\r\n'),
  A('slabs automove 0\r\n'),
  A('cache_memlimit 100\r\n'),
  A('lru mode flat\r\n'),
  A('shutdown\r\n'),
  A('misbehave\r\n'),
  A('extstore\r\n'),
  A('refresh_certs\r\n'),
  A('debugtime 1\r\n'),
  A('lru_crawler metadump all\r\n', { solo: true }),
  A('watch\r\n', { solo: true }),
];

const RESYNC = ['version\r\n', 'get $kz\r\n'];

function render(p: Piece, key: string): Buffer {
  return typeof p.text === 'string' ? buf(p.text.replaceAll('$k', key)) : p.text(key);
}

/** Append an mn when the piece leaves a quiet meta command unsettled. */
function settled(b: Buffer): Buffer {
  return endsQuiet(b) ? Buffer.concat([b, buf('mn\r\n')]) : b;
}

interface Case extends DiffCase {
  admin: boolean;
}

function label(kind: string, n: number, input: Buffer): string {
  return `${kind} ${String(n).padStart(3, '0')}: ${show(input, 60)}`;
}

/** (1) Every piece alone, followed by a command that shows where the stream resumes. */
function handCases(): Case[] {
  return PIECES.map((p, i) => {
    const key = `d${String(i).padStart(4, '0')}_`;
    const parts = [settled(render(p, key))];
    if (!p.last) parts.push(buf(RESYNC[i % 2]!.replaceAll('$k', key)));
    const input = Buffer.concat(parts);
    return { name: label('hand', i, input), input, admin: p.admin === true };
  });
}

const FLAG_CHARS = [
  ...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz',
  ...'!0+-=_~',
  '\x7f',
  '\xff',
];

/** Every flag character on every keyed meta command: bare, with a number, with junk, duplicated. */
function flagSweep(): Case[] {
  const out: Case[] = [];
  for (const cmd of ['mg', 'md', 'ma', 'ms']) {
    for (const f of FLAG_CHARS) {
      const key = `f${out.length}_`;
      const lines = [`${f}`, `${f}5`, `${f}x`, `${f} ${f}1`].map((flags) => {
        const line = cmd === 'ms' ? `ms ${key} 2 ${flags}\r\nhi\r\n` : `${cmd} ${key} ${flags}\r\n`;
        return settled(buf(line));
      });
      const input = Buffer.concat([...lines, buf('version\r\n')]);
      out.push({ name: label(`flags ${cmd}`, out.length, input), input, admin: false });
    }
  }
  return out;
}

/** Flag tokens that each make memcached's flag pre-parse fail (b fails on the key used here). */
const BAD_FLAGS = [
  'b',
  'Nx',
  'Tx',
  'Rx',
  'Fx',
  'Cx',
  'Mxx',
  'Jx',
  'Dx',
  'Ox' + 'x'.repeat(32),
  '!',
];

/** Every ordered pair of failing flags: which error text wins. */
function flagPairSweep(): Case[] {
  const out: Case[] = [];
  for (const cmd of ['mg', 'md', 'ma', 'ms']) {
    for (const a of BAD_FLAGS) {
      const key = `p${out.length}_`; // '_' is not base64: the b flag fails to decode it
      const lines = BAD_FLAGS.filter((b) => b !== a).map((b) =>
        cmd === 'ms' ? `ms ${key} 2 ${a} ${b}\r\nhi\r\n` : `${cmd} ${key} ${a} ${b}\r\n`,
      );
      const input = buf([...lines, 'version\r\n'].join(''));
      out.push({ name: label(`flag pairs ${cmd}`, out.length, input), input, admin: false });
    }
  }
  return out;
}

const CLASSIC_ARGS: Record<string, string[]> = {
  get: ['$k', '$ka', '$kb'],
  gets: ['$k', '$ka', '$kb'],
  bget: ['$k', '$ka'],
  gat: ['0', '$k', '$ka'],
  gats: ['0', '$k', '$ka'],
  set: ['$k', '0', '0', '1'],
  add: ['$k', '0', '0', '1'],
  replace: ['$k', '0', '0', '1'],
  append: ['$k', '0', '0', '1'],
  prepend: ['$k', '0', '0', '1'],
  cas: ['$k', '0', '0', '1', '1'],
  delete: ['$k', '0'],
  incr: ['$k', '1'],
  decr: ['$k', '1'],
  touch: ['$k', '0'],
  stats: ['settings'],
  version: [],
  mn: [],
  me: ['$k'],
  flush_all: ['0'],
  verbosity: ['1'],
};
const STORAGE = new Set(['set', 'add', 'replace', 'append', 'prepend', 'cas']);
const SERVER_WIDE = new Set(['flush_all', 'verbosity']);

/** Each classic command with 0-7 arguments, plain and with the last one replaced by noreply. */
function tokenSweep(): Case[] {
  const out: Case[] = [];
  for (const [cmd, defaults] of Object.entries(CLASSIC_ARGS)) {
    for (const noreply of [false, true]) {
      const key = `t${out.length}_`;
      const lines: string[] = [];
      for (let n = 0; n <= 7; n++) {
        const args = Array.from({ length: n }, (_, i) => defaults[i] ?? 'x');
        if (noreply && n > 0) args[n - 1] = 'noreply';
        const line = [cmd, ...args].join(' ') + '\r\n';
        lines.push(STORAGE.has(cmd) ? `${line}x\r\n` : line);
      }
      const input = buf([...lines, 'version\r\n'].join('').replaceAll('$k', key));
      out.push({
        name: label(`tokens ${cmd}${noreply ? ' noreply' : ''}`, out.length, input),
        input,
        admin: SERVER_WIDE.has(cmd),
      });
    }
  }
  return out;
}

/**
 * A generated stream the comparison can use: quiet commands settled, and the
 * parser neither waiting for a data block nor still swallowing a refused one
 * at the end (memcached sends the replies queued before a swallow only once
 * the swallow is over, so those streams cannot be observed).
 */
function usable(input: Buffer): boolean {
  const parsed = parseStream(input);
  if (parsed.buffered > 0 || ambiguity(expectedReplies(parsed.events)) !== undefined) return false;
  if (parsed.closed) return true;
  const probe = parseStream(Buffer.concat([input, buf('version\r\n')]));
  return probe.events.length === parsed.events.length + 1;
}

/** (2) Random concatenations of 3-8 pieces. */
function mixCases(count: number, admin: boolean, seed: number): Case[] {
  const rnd = prng(seed);
  const candidates = PIECES.filter((p) => !p.solo && !p.last && (admin || !p.admin));
  const starters = PIECES.filter((p) => p.first && !p.solo && (admin || !p.admin));
  const out: Case[] = [];
  let tries = 0;
  while (out.length < count && tries++ < count * 20) {
    const n = 3 + Math.floor(rnd() * 6);
    const chosen: Piece[] = [];
    if (starters.length > 0 && rnd() < 0.15) chosen.push(pick(rnd, starters));
    while (chosen.length < n) {
      const p = pick(rnd, candidates);
      if (!p.first) chosen.push(p);
    }
    if (admin && !chosen.some((p) => p.admin))
      chosen.push(
        pick(
          rnd,
          candidates.filter((p) => p.admin),
        ),
      );
    const id = `${admin ? 'x' : 'm'}${String(out.length).padStart(3, '0')}`;
    const parts = chosen.map((p, j) => settled(render(p, `${id}p${j}_`)));
    parts.push(buf('version\r\n'));
    const input = Buffer.concat(parts);
    if (!usable(input)) continue;
    out.push({ name: label(admin ? 'admin mix' : 'mix', out.length, input), input, admin });
  }
  return out;
}

const INTERESTING = [...' \r\n\0\t019-+qvkbOTNMx=F'].map((c) => c.charCodeAt(0));

function mutate(rnd: () => number, b: Buffer): Buffer {
  const pos = Math.floor(rnd() * b.length);
  const byte = rnd() < 0.4 ? Math.floor(rnd() * 256) : pick(rnd, INTERESTING);
  switch (Math.floor(rnd() * 4)) {
    case 0: {
      const out = Buffer.from(b);
      out[pos] = byte;
      return out;
    }
    case 1: {
      const out = Buffer.from(b);
      out[pos] = out[pos]! ^ (1 << Math.floor(rnd() * 8));
      return out;
    }
    case 2:
      return Buffer.concat([b.subarray(0, pos), Buffer.from([byte]), b.subarray(pos)]);
    default:
      return Buffer.concat([b.subarray(0, pos), b.subarray(pos + 1)]);
  }
}

const mutationStats = { tried: 0, notCrlf: 0, unchanged: 0, waiting: 0 };

/** (3) One or two byte mutations of a piece, then a resync command. */
function mutationCases(count: number, seed: number): Case[] {
  const rnd = prng(seed);
  const bases = PIECES.filter((p) => !p.solo && !p.admin && !p.last);
  const out: Case[] = [];
  const seen = new Set<string>();
  while (out.length < count && mutationStats.tried < count * 50) {
    mutationStats.tried++;
    const key = `u${String(out.length).padStart(4, '0')}_`;
    const base = render(pick(rnd, bases), key);
    if (base.length > 400) continue;
    let m = mutate(rnd, base);
    if (rnd() < 0.3) m = mutate(rnd, m);
    if (m.length < 2 || m[m.length - 2] !== 0x0d || m[m.length - 1] !== 0x0a) {
      mutationStats.notCrlf++;
      continue;
    }
    if (m.equals(base) || seen.has(m.toString('latin1'))) {
      mutationStats.unchanged++;
      continue;
    }
    const input = Buffer.concat([settled(m), buf('version\r\n')]);
    if (!usable(input)) {
      mutationStats.waiting++;
      continue;
    }
    seen.add(m.toString('latin1'));
    out.push({ name: label('mutation', out.length, input), input, admin: false });
  }
  return out;
}

const HAND = handCases();
const MIXES = [...mixCases(200, false, 0x5eed1), ...mixCases(20, true, 0x5eed2)];
const MUTATIONS = mutationCases(600, 0x5eed3);
const SWEEPS = [...flagSweep(), ...flagPairSweep(), ...tokenSweep()];
const CASES: Case[] = [...HAND, ...SWEEPS, ...MIXES, ...MUTATIONS];

function memcachedInstalled(): boolean {
  const r = spawnSync('memcached', ['-V'], { stdio: 'ignore' });
  return r.error === undefined;
}

describe('differential: RequestParser against memcached', function () {
  const failures = new Map<string, string | undefined>();
  let main: Memcached | undefined;
  let admin: Memcached | undefined;

  before(async function () {
    if (!memcachedInstalled()) this.skip();
    this.timeout(120_000);
    [main, admin] = await Promise.all([Memcached.start(), Memcached.start()]);
    const run = (mc: Memcached) => async (c: Case) => {
      failures.set(c.name, (await runCase(mc.port, c)).failure);
    };
    await Promise.all([
      pool(
        CASES.filter((c) => !c.admin),
        12,
        run(main),
      ),
      pool(
        CASES.filter((c) => c.admin),
        1,
        run(admin),
      ),
    ]);
  });

  after(async () => {
    await Promise.all([main?.stop(), admin?.stop()]);
  });

  const m = mutationStats;
  it(`has enough cases: ${HAND.length} hand-written, ${SWEEPS.length} sweeps, ${MIXES.length} mixes, ${MUTATIONS.length} mutations (of ${m.tried} tried: ${m.notCrlf} not ending in CRLF, ${m.unchanged} duplicates, ${m.waiting} left the parser waiting, swallowing or ambiguous)`, () => {
    expect(CASES.length).to.be.at.least(150);
    expect(new Set(CASES.map((c) => c.name)).size).to.equal(CASES.length);
  });

  for (const c of CASES) {
    it(c.name, () => {
      expect(failures.has(c.name), 'case did not run').to.equal(true);
      const failure = failures.get(c.name);
      if (failure !== undefined) expect.fail(failure);
    });
  }

  it('parser verdicts do not depend on how the stream is chunked', () => {
    const rnd = prng(0xc4c4);
    const bad: string[] = [];
    for (const c of CASES) {
      const whole = showEvents(parseStream(c.input).events);
      const max = c.input.length > 100_000 ? 70_000 : 8;
      const split = showEvents(parseStream(c.input, () => 1 + Math.floor(rnd() * max)).events);
      if (split !== whole) bad.push(`${c.name}\n  whole: ${whole}\n  split: ${split}`);
    }
    if (bad.length > 0) expect.fail(bad.join('\n'));
  });
});
