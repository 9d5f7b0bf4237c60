/**
 * Binary requests in the one command model, and replies back to binary.
 *
 * A binary request becomes the text command with the same meaning (mostly a
 * meta command: `mg`, `ms`, `md`, `ma`), parsed by the text parser into the
 * Request every route takes, so a binary client gets exactly the routing,
 * replication and consistency rules a text client gets. A binary get of a
 * printable key becomes `gets`, the fast path of a session read. Keys with
 * any other bytes travel base64-encoded (the meta `b` flag), byte-exact.
 *
 * The reply the routes produce (text) is encoded back as memcached's binary
 * response for the request's opcode, with its quiet rules: a quiet get's miss
 * and a quiet write's success are not sent; errors always are.
 */

import { shortLived } from '../net/slab.js';
import { encodeKey } from './base64.js';
import { type BinaryPacket, Op, Status, errorResponse, itemResponse, response } from './binary.js';
import { parseU64 } from './numbers.js';
import { RequestParser } from './request-parser.js';
import { type BinaryOrigin, ProtocolError, Request } from './request.js';
import type { Hit, Out } from './result.js';

/** The largest TTL a meta token takes (memcached reads it as a signed 32-bit number). */
const TTL_MAX = 0x7fffffff;
const NO_VIVIFY = 0xffffffff;
const EMPTY = Buffer.alloc(0);
const DETAILED = Buffer.from('detailed');
const GETS = Buffer.from('gets ');
const MS = Buffer.from('ms ');

/** Whether a key can be a classic text token as it is (printable ASCII, no space). */
function printable(key: Buffer): boolean {
  for (let i = 0; i < key.length; i++) {
    const c = key[i]!;
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return true;
}

/** Stats groups memcached answers only in text (binary: "not found"). */
const TEXT_ONLY_GROUPS = ['conns', 'cachedump'];

/** Whether a stat key names a group binary stat may ask for: printable ASCII and spaces. */
function statGroup(key: Buffer): boolean {
  const first = key.toString('latin1').split(' ', 1)[0]!;
  if (TEXT_ONLY_GROUPS.includes(first)) return false;
  for (let i = 0; i < key.length; i++) {
    const c = key[i]!;
    if (c < 0x20 || c >= 0x7f) return false;
  }
  return true;
}

/** The key as a meta command token: itself, or base64 (then `b` goes among the flags). */
function keyToken(key: Buffer): string {
  return printable(key) ? key.toString('latin1') : encodeKey(key).toString('latin1');
}

/** The meta flag a key written by keyToken needs: ` b` for base64. */
function keyFlag(key: Buffer): string {
  return printable(key) ? '' : ' b';
}

/** `<key>[ b]` for mg, md and ma, whose flags follow the key. */
function metaKeyToken(key: Buffer): string {
  return keyToken(key) + keyFlag(key);
}

function ttl(n: number): number {
  return Math.min(n, TTL_MAX);
}

/**
 * Turns binary packets into Requests: the text command for each, through a
 * text parser of its own (fed one whole command at a time).
 */
export class BinaryCommands {
  private readonly itemSizeMax: number;
  private parser: RequestParser;
  private parsed: Request | null = null;

  constructor(itemSizeMax: number) {
    // The binary parser has applied -I already; the text form adds a few bytes of its own.
    this.itemSizeMax = itemSizeMax + 64;
    this.parser = this.textParser();
  }

  private textParser(): RequestParser {
    return new RequestParser(
      {
        onRequest: (req) => {
          this.parsed = req;
        },
        onError: () => {},
      },
      { itemSizeMax: this.itemSizeMax },
    );
  }

  /**
   * The Request for `p`, or the binary error memcached would answer. `p`'s
   * buffers may be views: what the Request keeps is copied here.
   */
  request(p: BinaryPacket): Request | ProtocolError {
    const c = p.command;
    if ((c === Op.GET || c === Op.GETK) && printable(p.key)) return this.gets(p);
    if ((c === Op.SET || c === Op.ADD || c === Op.REPLACE) && printable(p.key)) return this.set(p);
    return this.viaText(p);
  }

  /**
   * The Request for `p` through the text command with its meaning: every
   * packet's reference, which the direct builders (gets, set) match field
   * for field (see the unit tests).
   */
  viaText(p: BinaryPacket): Request | ProtocolError {
    const text = this.text(p);
    if (text === null) {
      return new ProtocolError(
        '',
        false,
        false,
        null,
        errorResponse(p.opcode, p.opaque, Status.UNKNOWN_COMMAND),
      );
    }
    this.parsed = null;
    this.parser.push(text);
    const req = this.parsed as Request | null;
    if (req === null) {
      // Whatever the text parser made of it, it starts afresh for the next one.
      this.parser = this.textParser();
      // A stats group the text parser refuses is one memcached does not have.
      const status = p.command === Op.STAT ? Status.KEY_ENOENT : Status.EINVAL;
      return new ProtocolError('', false, false, null, errorResponse(p.opcode, p.opaque, status));
    }
    req.binary = origin(p);
    return req;
  }

  /**
   * A get of a printable key, the session read: `gets <key>` built directly
   * (what the text parser would make of it: its key and its bytes).
   */
  private gets(p: BinaryPacket): Request {
    const k = p.key;
    const raw = Buffer.allocUnsafe(k.length + 7);
    GETS.copy(raw, 0);
    k.copy(raw, 5);
    raw[raw.length - 2] = 0x0d;
    raw[raw.length - 1] = 0x0a;
    const req = new Request('gets', raw, raw.length);
    req.keys.push(raw.subarray(5, 5 + k.length));
    req.binary = origin(p);
    return req;
  }

  /**
   * A set, add or replace of a printable key, the session write: the `ms`
   * Request the text parser would make of `text(p)`, built directly (its
   * bytes, key, flag tokens and values).
   */
  private set(p: BinaryPacket): Request {
    const k = p.key;
    const v = p.value;
    const tokens = setTokens(p);
    const tail = ` ${v.length} ${tokens.join(' ')}\r\n`;
    const lineLength = 3 + k.length + tail.length;
    const size = lineLength + v.length + 2;
    const raw = shortLived(size);
    MS.copy(raw, 0);
    k.copy(raw, 3);
    raw.write(tail, 3 + k.length, 'latin1');
    v.copy(raw, lineLength);
    raw[size - 2] = 0x0d;
    raw[size - 1] = 0x0a;
    const req = new Request('ms', raw, lineLength);
    const key = raw.subarray(3, 3 + k.length);
    req.wireKeys = [key];
    req.keys = [key];
    req.args = [];
    let at = 3 + k.length + 1 + String(v.length).length + 1;
    for (const t of tokens) {
      req.args.push(raw.subarray(at, at + t.length));
      const c = t.charCodeAt(0);
      if (c >= 0x61) req.lower |= 1 << (c - 0x61);
      else req.upper |= 1 << (c - 0x41);
      at += t.length + 1;
    }
    req.flags = p.extras.readUInt32BE(0);
    req.exptime = ttl(p.extras.readUInt32BE(4));
    const mode = tokens.find((t) => t[0] === 'M');
    if (mode !== undefined) req.mode = mode.charCodeAt(1);
    req.cas = p.cas;
    req.bytes = v.length;
    req.binary = origin(p);
    return req;
  }

  /** The text command that means what `p` means, or null for one msproxy does not run. */
  private text(p: BinaryPacket): Buffer | null {
    const cas = p.cas !== 0n ? ` C${p.cas}` : '';
    switch (p.command) {
      case Op.GET:
      case Op.GETK:
        // A printable key never gets here: request() builds its gets directly.
        return line(`mg ${metaKeyToken(p.key)} v f c`);
      case Op.GAT:
      case Op.GATK:
        return line(`mg ${metaKeyToken(p.key)} T${ttl(p.extras.readUInt32BE(0))} v f c`);
      case Op.TOUCH:
        return line(`mg ${metaKeyToken(p.key)} T${ttl(p.extras.readUInt32BE(0))} f c`);
      case Op.SET:
      case Op.ADD:
      case Op.REPLACE:
        return store(
          `ms ${keyToken(p.key)} ${p.value.length}${keyFlag(p.key)} ${setTokens(p).join(' ')}`,
          p.value,
        );
      case Op.APPEND:
      case Op.PREPEND: {
        const mode = p.command === Op.APPEND ? 'MA' : 'MP';
        return store(
          `ms ${keyToken(p.key)} ${p.value.length}${keyFlag(p.key)} ${mode}${cas} c`,
          p.value,
        );
      }
      case Op.DELETE:
        return line(`md ${metaKeyToken(p.key)}${cas}`);
      case Op.INCREMENT:
      case Op.DECREMENT: {
        const delta = p.extras.readBigUInt64BE(0);
        const initial = p.extras.readBigUInt64BE(8);
        const exp = p.extras.readUInt32BE(16);
        const vivify = exp === NO_VIVIFY ? '' : ` N${ttl(exp)} J${initial}`;
        const mode = p.command === Op.DECREMENT ? ' MD' : '';
        return line(`ma ${metaKeyToken(p.key)}${vivify} D${delta}${mode}${cas} v c`);
      }
      case Op.FLUSH: {
        const delay = p.extras.length === 4 ? p.extras.readUInt32BE(0) : 0;
        return line(delay > 0 ? `flush_all ${delay}` : 'flush_all');
      }
      case Op.NOOP:
        return line('mn');
      case Op.VERSION:
        return line('version');
      case Op.QUIT:
        return line('quit');
      case Op.STAT:
        // A group is words ("detail on"); a key with other bytes names no group: "not found",
        // as are the groups memcached has only in text.
        if (p.key.length === 0) return line('stats');
        return line(`stats ${statGroup(p.key) ? p.key.toString('latin1') : '-'}`);
      default:
        return null;
    }
  }
}

/**
 * The flag tokens of the `ms` for a set, add or replace: client flags, TTL,
 * the mode (add, replace), the cas, and `c` (a binary store returns its cas).
 */
function setTokens(p: BinaryPacket): string[] {
  const tokens = [`F${p.extras.readUInt32BE(0)}`, `T${ttl(p.extras.readUInt32BE(4))}`];
  // memcached stores any update with a cas as a cas (add and replace too).
  if (p.cas !== 0n) tokens.push(`C${p.cas}`);
  else if (p.command === Op.ADD) tokens.push('ME');
  else if (p.command === Op.REPLACE) tokens.push('MR');
  tokens.push('c');
  return tokens;
}

function origin(p: BinaryPacket): BinaryOrigin {
  // Only getk, gatk and stat answer with their key: the others need no copy of it.
  const c = p.command;
  const keep = c === Op.GETK || c === Op.GATK || c === Op.STAT;
  return {
    opcode: p.opcode,
    command: c,
    quiet: p.quiet,
    opaque: p.opaque,
    key: keep ? Buffer.from(p.key) : EMPTY,
  };
}

function line(text: string): Buffer {
  return Buffer.from(text + '\r\n', 'latin1');
}

function store(head: string, value: Buffer): Buffer {
  // The command lives as long as its writes to the nodes: a slab piece, not a pool buffer each.
  const out = shortLived(head.length + 2 + value.length + 2);
  let at = out.write(head, 0, 'latin1');
  at += out.write('\r\n', at, 'latin1');
  at += value.copy(out, at);
  out.write('\r\n', at, 'latin1');
  return out;
}

// ------------------------------------------------------------------ replies

/** The text reply as one buffer (it is small, or one piece, almost always). */
function flat(out: Out): Buffer {
  if (out === null) return EMPTY;
  return Buffer.isBuffer(out) ? out : Buffer.concat(out);
}

const STORES = new Set<number>([Op.SET, Op.ADD, Op.REPLACE, Op.APPEND, Op.PREPEND]);
const C_FLAG = Buffer.from(' c');

/** The `c` flag of a meta reply's first line, or 0 (digits only, as memcached writes it). */
function casFlag(reply: Buffer): bigint {
  const eol = reply.indexOf(0x0d);
  const at = reply.indexOf(C_FLAG);
  if (at < 0 || (eol >= 0 && at > eol)) return 0n;
  let end = at + 2;
  while (end < reply.length && reply[end]! >= 0x30 && reply[end]! <= 0x39) end++;
  return parseU64(reply, at + 2, end) ?? 0n;
}

/**
 * The client flags (`f`) of a meta reply line, or 0. Each flag token starts
 * with its letter, after the status (and a VA's size, which is digits), so
 * ` f` can only start that flag.
 */
function clientFlags(line: string): number {
  const at = line.indexOf(' f');
  if (at < 0) return 0;
  const end = line.indexOf(' ', at + 2);
  return Number(line.slice(at + 2, end < 0 ? line.length : end));
}

function flagsExtra(flags: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** A get's hit, for a request that came in binary: its response packet. */
export function binaryHit(o: BinaryOrigin, h: Hit): Buffer | Buffer[] {
  const v = h.value;
  return itemResponse(
    o.opcode,
    o.opaque,
    h.token ?? v.cas ?? 0n,
    v.flags,
    o.command === Op.GETK ? o.key : null,
    v.data,
  );
}

/**
 * The binary response for a request that came in binary, from the text
 * reply its route produced (null: nothing to send).
 */
export function binaryReply(o: BinaryOrigin, out: Out): Out {
  if (Buffer.isBuffer(out) && STORES.has(o.command) && out[0] === 0x48 && out[1] === 0x44) {
    // HD: the store happened (the common write), read in place.
    return o.quiet
      ? null
      : response({ opcode: o.opcode, status: Status.OK, opaque: o.opaque, cas: casFlag(out) });
  }
  const buf = flat(out);
  const eol = buf.indexOf('\r\n');
  const first = buf.toString('latin1', 0, eol < 0 ? buf.length : eol);
  const head = { opcode: o.opcode, status: Status.OK, opaque: o.opaque };
  const fail = (status: number, text?: string): Buffer =>
    errorResponse(o.opcode, o.opaque, status, text);
  const err = errorStatus(first);
  if (err !== null) return fail(err.status, err.text);
  switch (o.command) {
    case Op.GET:
    case Op.GETK:
    case Op.GAT:
    case Op.GATK:
    case Op.TOUCH: {
      const withKey = o.command === Op.GETK || o.command === Op.GATK;
      let hit: { flags: number; cas: bigint; value: Buffer } | null = null;
      if (first.startsWith('VALUE ')) {
        // VALUE <key> <flags> <bytes> <cas>
        const parts = first.split(' ');
        const bytes = Number(parts[3]);
        hit = {
          flags: Number(parts[2]),
          cas: BigInt(parts[4] ?? '0'),
          value: buf.subarray(eol + 2, eol + 2 + bytes),
        };
      } else if (first.startsWith('VA ') || first.startsWith('HD')) {
        const bytes = first.startsWith('VA ') ? Number(first.split(' ')[1]) : 0;
        hit = {
          flags: clientFlags(first),
          cas: casFlag(buf),
          value: buf.subarray(eol + 2, eol + 2 + bytes),
        };
      }
      if (hit === null) {
        if (o.quiet) return null;
        // getk's miss carries the key; get's is memcached's "Not found".
        if (withKey) return response({ ...head, status: Status.KEY_ENOENT }, null, o.key);
        return fail(Status.KEY_ENOENT);
      }
      return response(
        { ...head, cas: hit.cas },
        flagsExtra(hit.flags),
        withKey ? o.key : null,
        o.command === Op.TOUCH ? null : hit.value,
      );
    }
    case Op.SET:
    case Op.ADD:
    case Op.REPLACE:
    case Op.APPEND:
    case Op.PREPEND: {
      if (first.startsWith('HD')) {
        if (o.quiet) return null;
        return response({ ...head, cas: casFlag(buf) });
      }
      if (first.startsWith('EX')) return fail(Status.KEY_EEXISTS);
      if (first.startsWith('NF')) return fail(Status.KEY_ENOENT);
      // NS: what memcached's binary store answers for a store that did not happen.
      if (o.command === Op.ADD) return fail(Status.KEY_EEXISTS);
      if (o.command === Op.REPLACE) return fail(Status.KEY_ENOENT);
      return fail(Status.NOT_STORED);
    }
    case Op.DELETE:
      if (first.startsWith('HD')) return o.quiet ? null : response(head);
      if (first.startsWith('EX')) return fail(Status.KEY_EEXISTS);
      return fail(Status.KEY_ENOENT);
    case Op.INCREMENT:
    case Op.DECREMENT: {
      if (first.startsWith('VA ')) {
        if (o.quiet) return null;
        const bytes = Number(first.split(' ')[1]);
        const value = Buffer.allocUnsafe(8);
        value.writeBigUInt64BE(BigInt(buf.toString('latin1', eol + 2, eol + 2 + bytes)), 0);
        return response({ ...head, cas: casFlag(buf) }, null, null, value);
      }
      if (first.startsWith('EX')) return fail(Status.KEY_EEXISTS);
      if (first.startsWith('NS')) return fail(Status.NOT_STORED);
      return fail(Status.KEY_ENOENT);
    }
    case Op.FLUSH:
    case Op.NOOP:
    case Op.QUIT:
      return o.quiet ? null : response(head);
    case Op.VERSION:
      return response(head, null, null, Buffer.from(first.slice('VERSION '.length), 'latin1'));
    default:
      return fail(Status.UNKNOWN_COMMAND);
  }
}

/**
 * An error line as a binary status and body text, or null for a reply that
 * is not an error.
 */
function errorStatus(first: string): { status: number; text?: string } | null {
  if (first === 'ERROR') return { status: Status.UNKNOWN_COMMAND };
  if (first.startsWith('CLIENT_ERROR ')) {
    if (first.includes('non-numeric')) return { status: Status.DELTA_BADVAL };
    return { status: Status.EINVAL };
  }
  if (first.startsWith('SERVER_ERROR ')) {
    const text = first.slice('SERVER_ERROR '.length);
    if (text === 'object too large for cache') return { status: Status.E2BIG };
    if (text.startsWith('out of memory')) return { status: Status.ENOMEM };
    // No replica could answer, or one failed mid-command: try again later.
    return { status: Status.ETMPFAIL, text };
  }
  return null;
}

/**
 * `stats` (with or without a group) as binary stat packets: one per STAT
 * line, then an empty one.
 */
export function binaryStats(o: BinaryOrigin, out: Out): Buffer {
  const head = { opcode: o.opcode, status: Status.OK, opaque: o.opaque };
  const text = flat(out).toString('latin1');
  const packets: Buffer[] = [];
  if (o.key.toString('latin1') === 'detail dump') {
    // memcached sends the dump (its text, END included) as one stat named "detailed".
    packets.push(response(head, null, DETAILED, Buffer.from(text, 'latin1')));
  }
  for (const l of text.split('\r\n')) {
    if (!l.startsWith('STAT ')) continue;
    const sp = l.indexOf(' ', 5);
    const name = l.slice(5, sp < 0 ? l.length : sp);
    const value = sp < 0 ? '' : l.slice(sp + 1);
    packets.push(response(head, null, Buffer.from(name, 'latin1'), Buffer.from(value, 'latin1')));
  }
  // memcached's sizes_enable and sizes_disable answer their one STAT line with no END.
  if (!text.startsWith('STAT ') || text.endsWith('END\r\n')) packets.push(response(head));
  return Buffer.concat(packets);
}
