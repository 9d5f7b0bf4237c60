/**
 * memcached's binary protocol: packet framing and validation as a client
 * sends it, and the response packets msproxy writes.
 *
 * Contract: `push()` takes chunks of any size and calls the sink once per
 * request, in stream order: `onPacket` for a request memcached would run,
 * `onError` for one it would refuse, with memcached 1.6's own response
 * (proto_bin.c) and whether the connection then closes. Where memcached
 * skips bytes after an error (an unknown opcode, a value too large), the
 * parser skips the same bytes, so the stream resumes where memcached's does.
 * Packets hold views into the pushed chunks, or a copy when one spans them.
 *
 * What a packet means (its command) is decided in binary-command.ts.
 */

import { SLAB_PIECE_MAX, slabAlloc } from '../net/slab.js';
import { ProtocolError } from './request.js';

export const REQUEST_MAGIC = 0x80;
export const RESPONSE_MAGIC = 0x81;
export const HEADER_LENGTH = 24;
/** memcached's KEY_MAX_LENGTH: binary keys are 16-bit, memcached's are 8-bit. */
const KEY_MAX = 250;
/** Longest SASL mechanism name memcached reads. */
const SASL_MECH_MAX = 32;

export const Op = {
  GET: 0x00,
  SET: 0x01,
  ADD: 0x02,
  REPLACE: 0x03,
  DELETE: 0x04,
  INCREMENT: 0x05,
  DECREMENT: 0x06,
  QUIT: 0x07,
  FLUSH: 0x08,
  GETQ: 0x09,
  NOOP: 0x0a,
  VERSION: 0x0b,
  GETK: 0x0c,
  GETKQ: 0x0d,
  APPEND: 0x0e,
  PREPEND: 0x0f,
  STAT: 0x10,
  SETQ: 0x11,
  ADDQ: 0x12,
  REPLACEQ: 0x13,
  DELETEQ: 0x14,
  INCREMENTQ: 0x15,
  DECREMENTQ: 0x16,
  QUITQ: 0x17,
  FLUSHQ: 0x18,
  APPENDQ: 0x19,
  PREPENDQ: 0x1a,
  TOUCH: 0x1c,
  GAT: 0x1d,
  GATQ: 0x1e,
  SASL_LIST_MECHS: 0x20,
  SASL_AUTH: 0x21,
  SASL_STEP: 0x22,
  GATK: 0x23,
  GATKQ: 0x24,
} as const;

export const Status = {
  OK: 0x0000,
  KEY_ENOENT: 0x0001,
  KEY_EEXISTS: 0x0002,
  E2BIG: 0x0003,
  EINVAL: 0x0004,
  NOT_STORED: 0x0005,
  DELTA_BADVAL: 0x0006,
  AUTH_ERROR: 0x0020,
  AUTH_CONTINUE: 0x0021,
  UNKNOWN_COMMAND: 0x0081,
  ENOMEM: 0x0082,
  NOT_SUPPORTED: 0x0083,
  EINTERNAL: 0x0084,
  ETMPFAIL: 0x0086,
} as const;

/** The body memcached sends with an error status (write_bin_error's texts). */
const STATUS_TEXT: Record<number, string> = {
  [Status.ENOMEM]: 'Out of memory',
  [Status.UNKNOWN_COMMAND]: 'Unknown command',
  [Status.KEY_ENOENT]: 'Not found',
  [Status.EINVAL]: 'Invalid arguments',
  [Status.KEY_EEXISTS]: 'Data exists for key.',
  [Status.E2BIG]: 'Too large.',
  [Status.DELTA_BADVAL]: 'Non-numeric server-side value for incr or decr',
  [Status.NOT_STORED]: 'Not stored.',
  [Status.AUTH_ERROR]: 'Auth failure.',
};

/** The quiet opcodes and the loud ones they stand for. */
export const QUIET_OF: Record<number, number> = {
  [Op.SETQ]: Op.SET,
  [Op.ADDQ]: Op.ADD,
  [Op.REPLACEQ]: Op.REPLACE,
  [Op.DELETEQ]: Op.DELETE,
  [Op.INCREMENTQ]: Op.INCREMENT,
  [Op.DECREMENTQ]: Op.DECREMENT,
  [Op.QUITQ]: Op.QUIT,
  [Op.FLUSHQ]: Op.FLUSH,
  [Op.APPENDQ]: Op.APPEND,
  [Op.PREPENDQ]: Op.PREPEND,
  [Op.GETQ]: Op.GET,
  [Op.GETKQ]: Op.GETK,
  [Op.GATQ]: Op.GAT,
  [Op.GATKQ]: Op.GATK,
};

/** One request packet, validated for its opcode. */
export interface BinaryPacket {
  /** The opcode as sent (quiet or not). */
  opcode: number;
  /** The loud opcode it stands for (SETQ: SET). */
  command: number;
  quiet: boolean;
  opaque: number;
  cas: bigint;
  extras: Buffer;
  key: Buffer;
  /** The value of set/add/replace/append/prepend, or SASL data. */
  value: Buffer;
}

/** A packet's buffers may be views of the pushed chunk: use them before returning. */
export interface BinarySink {
  onPacket(packet: BinaryPacket): void;
  onError(err: ProtocolError): void;
}

export interface BinaryParserOptions {
  /** memcached -I: larger values get E2BIG (with memcached's own accounting). */
  itemSizeMax?: number;
  /** Whether SASL is on (off: memcached answers its opcodes as unknown). */
  sasl?: boolean;
  /**
   * With SASL on, whether the connection has authenticated; until then only
   * the SASL opcodes and version are read, anything else is refused (and the
   * connection closed), as memcached does.
   */
  authenticated?: () => boolean;
}

/** What memcached answers before a connection has authenticated. */
const OPEN_BEFORE_AUTH = new Set<number>([
  Op.SASL_LIST_MECHS,
  Op.SASL_AUTH,
  Op.SASL_STEP,
  Op.VERSION,
]);

/** memcached's item header and cas field: what counts against -I besides key and value. */
const ITEM_OVERHEAD = 48 + 8;

const ST_HEADER = 0;
const ST_VALUE = 1;
const ST_SWALLOW = 2;
const ST_CLOSED = 3;

/** Response header fields for `response()`. */
export interface ResponseHead {
  opcode: number;
  status: number;
  opaque: number;
  cas?: bigint;
}

/** A response packet: header, then extras, key and value. */
export function response(
  head: ResponseHead,
  extras: Buffer | null = null,
  key: Buffer | null = null,
  value: Buffer | null = null,
): Buffer {
  const el = extras?.length ?? 0;
  const kl = key?.length ?? 0;
  const vl = value?.length ?? 0;
  const out = Buffer.allocUnsafe(HEADER_LENGTH + el + kl + vl);
  out[0] = RESPONSE_MAGIC;
  out[1] = head.opcode;
  out.writeUInt16BE(kl, 2);
  out[4] = el;
  out[5] = 0;
  out.writeUInt16BE(head.status, 6);
  out.writeUInt32BE(el + kl + vl, 8);
  out.writeUInt32BE(head.opaque >>> 0, 12);
  out.writeBigUInt64BE(head.cas ?? 0n, 16);
  let at = HEADER_LENGTH;
  if (extras !== null) at += extras.copy(out, at);
  if (key !== null) at += key.copy(out, at);
  if (value !== null) value.copy(out, at);
  return out;
}

/**
 * A get's hit: header, the flags as extras, the key for getk, and the value
 * (copied in, or as a second piece when large).
 */
export function itemResponse(
  opcode: number,
  opaque: number,
  cas: bigint,
  flags: number,
  key: Buffer | null,
  value: Buffer,
): Buffer | Buffer[] {
  const kl = key?.length ?? 0;
  const vl = value.length;
  const front = HEADER_LENGTH + 4 + kl;
  // One piece costs less to write than two; a larger value stays a view, the second piece.
  const copy = front + vl <= SLAB_PIECE_MAX;
  const out = copy ? slabAlloc(front + vl) : Buffer.allocUnsafe(front);
  out[0] = RESPONSE_MAGIC;
  out[1] = opcode;
  out.writeUInt16BE(kl, 2);
  out[4] = 4;
  out[5] = 0;
  out.writeUInt16BE(Status.OK, 6);
  out.writeUInt32BE(4 + kl + vl, 8);
  out.writeUInt32BE(opaque >>> 0, 12);
  out.writeBigUInt64BE(cas, 16);
  out.writeUInt32BE(flags >>> 0, HEADER_LENGTH);
  if (key !== null) key.copy(out, HEADER_LENGTH + 4);
  if (!copy) return [out, value];
  value.copy(out, front);
  return out;
}

/** An error response with memcached's text for `status` (or `text`) as its body. */
export function errorResponse(
  opcode: number,
  opaque: number,
  status: number,
  text?: string,
): Buffer {
  return response(
    { opcode, status, opaque },
    null,
    null,
    Buffer.from(text ?? STATUS_TEXT[status] ?? '', 'latin1'),
  );
}

function binaryError(
  opcode: number,
  opaque: number,
  status: number,
  close: boolean,
  unlink: Buffer | null = null,
): ProtocolError {
  const bytes = errorResponse(opcode, opaque, status);
  return new ProtocolError(STATUS_TEXT[status] ?? '', false, close, unlink, bytes);
}

export class BinaryParser {
  private readonly sink: BinarySink;
  private readonly itemSizeMax: number;
  private readonly sasl: boolean;
  private readonly authenticated: () => boolean;
  private state = ST_HEADER;
  /** Bytes of an unfinished header (plus extras and key), or of a value. */
  private parts: Buffer[] = [];
  private partsLength = 0;
  /** The packet waiting for its value. */
  private pending: BinaryPacket | null = null;
  /** Bytes still to read (value) or skip (swallow). */
  private need = 0;
  private stopped = false;
  private held: Buffer[] = [];

  constructor(sink: BinarySink, options: BinaryParserOptions = {}) {
    this.sink = sink;
    this.itemSizeMax = options.itemSizeMax ?? 1024 * 1024;
    this.sasl = options.sasl ?? false;
    this.authenticated = options.authenticated ?? (() => true);
  }

  /** True once the stream is given up (memcached closes the connection). */
  get closed(): boolean {
    return this.state === ST_CLOSED;
  }

  /** Stop before the next request; later bytes are held until `resume()`. */
  pause(): void {
    this.stopped = true;
  }

  resume(): void {
    this.stopped = false;
    while (!this.stopped && this.held.length > 0) this.consume(this.held.shift()!);
  }

  /** Whether bytes are held by pause(). */
  get holding(): boolean {
    return this.held.length > 0;
  }

  push(chunk: Buffer): void {
    if (this.stopped || this.held.length > 0) {
      this.held.push(Buffer.from(chunk));
      return;
    }
    this.consume(chunk);
  }

  private consume(chunk: Buffer): void {
    let pos = 0;
    const len = chunk.length;
    while (pos < len) {
      switch (this.state) {
        case ST_CLOSED:
          return;
        case ST_SWALLOW: {
          const n = Math.min(this.need, len - pos);
          this.need -= n;
          pos += n;
          if (this.need === 0) this.state = ST_HEADER;
          continue;
        }
        case ST_VALUE: {
          const n = Math.min(this.need, len - pos);
          this.stash(chunk.subarray(pos, pos + n));
          this.need -= n;
          pos += n;
          if (this.need > 0) continue;
          const p = this.pending!;
          p.value = this.take();
          this.pending = null;
          this.state = ST_HEADER;
          this.sink.onPacket(p);
          continue;
        }
        default: {
          if (this.stopped) {
            this.held.unshift(Buffer.from(chunk.subarray(pos)));
            return;
          }
          pos = this.header(chunk, pos);
        }
      }
    }
  }

  /** Read a header with its extras and key from `pos`; returns where the chunk is consumed to. */
  private header(chunk: Buffer, pos: number): number {
    // The first byte decides at once: memcached closes on a bad magic as soon as it reads it.
    const first = this.partsLength > 0 ? this.parts[0]![0]! : chunk[pos]!;
    if (first !== REQUEST_MAGIC) {
      this.state = ST_CLOSED;
      this.parts = [];
      this.partsLength = 0;
      this.sink.onError(new ProtocolError('bad magic', true, true));
      return chunk.length;
    }
    const avail = this.partsLength + chunk.length - pos;
    if (avail < HEADER_LENGTH) {
      this.stash(chunk.subarray(pos));
      return chunk.length;
    }
    // The header's fields, read in place when it is whole in this chunk.
    const head =
      this.partsLength === 0
        ? chunk
        : Buffer.concat([...this.parts, chunk.subarray(pos, pos + HEADER_LENGTH)]);
    const at = this.partsLength === 0 ? pos : 0;
    const keyLength = head.readUInt16BE(at + 2);
    const extLength = head[at + 4]!;
    const bodyLength = head.readUInt32BE(at + 8);
    // memcached reads the extras and key before it looks at the request.
    const prefix = HEADER_LENGTH + extLength + keyLength;
    if (avail < prefix) {
      this.stash(chunk.subarray(pos));
      return chunk.length;
    }
    let whole: Buffer;
    if (this.partsLength === 0) {
      whole = chunk.subarray(pos, pos + prefix);
      pos += prefix;
    } else {
      const missing = prefix - this.partsLength;
      this.stash(chunk.subarray(pos, pos + missing));
      pos += missing;
      whole = this.take();
    }
    this.dispatch(whole, keyLength, extLength, bodyLength);
    return this.state === ST_VALUE ? this.valueFrom(chunk, pos) : pos;
  }

  /**
   * What memcached's dispatch_bin_command does with a request whose header,
   * extras and key are in: the checks, in its order.
   */
  private dispatch(h: Buffer, keyLength: number, extLength: number, bodyLength: number): void {
    const opcode = h[1]!;
    const opaque = h.readUInt32BE(12);
    if (keyLength > bodyLength || keyLength + extLength > bodyLength) {
      return this.fail(opcode, opaque, Status.UNKNOWN_COMMAND, true);
    }
    const command = QUIET_OF[opcode] ?? opcode;
    if (this.sasl && !this.authenticated() && !OPEN_BEFORE_AUTH.has(command)) {
      return this.fail(opcode, opaque, Status.AUTH_ERROR, true);
    }
    if (keyLength > KEY_MAX) return this.fail(opcode, opaque, Status.EINVAL, true);
    const packet: BinaryPacket = {
      opcode,
      command,
      quiet: command !== opcode,
      opaque,
      // Most requests carry no cas: no BigInt for them.
      cas: h.readUInt32BE(16) === 0 && h.readUInt32BE(20) === 0 ? 0n : h.readBigUInt64BE(16),
      extras: extLength === 0 ? EMPTY : h.subarray(HEADER_LENGTH, HEADER_LENGTH + extLength),
      key: h.subarray(HEADER_LENGTH + extLength, HEADER_LENGTH + extLength + keyLength),
      value: EMPTY,
    };
    const none = extLength === 0 && keyLength === 0 && bodyLength === 0;
    let valid: boolean;
    let valueLength = 0;
    switch (command) {
      case Op.VERSION:
      case Op.NOOP:
      case Op.QUIT:
      case Op.SASL_LIST_MECHS:
        valid = none;
        break;
      case Op.FLUSH:
        valid = keyLength === 0 && bodyLength === extLength && (extLength === 0 || extLength === 4);
        break;
      case Op.SET:
      case Op.ADD:
      case Op.REPLACE:
        valid = extLength === 8 && keyLength !== 0 && bodyLength >= keyLength + 8;
        valueLength = bodyLength - keyLength - extLength;
        break;
      case Op.GET:
      case Op.GETK:
      case Op.DELETE:
        valid = extLength === 0 && bodyLength === keyLength && keyLength > 0;
        break;
      case Op.INCREMENT:
      case Op.DECREMENT:
        valid = keyLength > 0 && extLength === 20 && bodyLength === keyLength + extLength;
        break;
      case Op.APPEND:
      case Op.PREPEND:
        valid = keyLength > 0 && extLength === 0;
        valueLength = bodyLength - keyLength;
        break;
      case Op.STAT:
        valid = extLength === 0;
        break;
      case Op.SASL_AUTH:
      case Op.SASL_STEP:
        valid = extLength === 0 && keyLength !== 0;
        valueLength = bodyLength - keyLength;
        break;
      case Op.TOUCH:
      case Op.GAT:
      case Op.GATK:
        valid = extLength === 4 && keyLength !== 0;
        break;
      default:
        // Unknown: memcached skips `bodyLength` bytes after the extras and key it already read.
        return this.fail(opcode, opaque, Status.UNKNOWN_COMMAND, false, bodyLength);
    }
    if (!valid) return this.fail(opcode, opaque, Status.EINVAL, true);
    if (command === Op.SASL_LIST_MECHS || command === Op.SASL_AUTH || command === Op.SASL_STEP) {
      if (!this.sasl) {
        return this.fail(opcode, opaque, Status.UNKNOWN_COMMAND, false, bodyLength - keyLength);
      }
      if (command !== Op.SASL_LIST_MECHS && keyLength > SASL_MECH_MAX) {
        return this.fail(opcode, opaque, Status.EINVAL, false, valueLength);
      }
    }
    if (
      (command === Op.SET || command === Op.ADD || command === Op.REPLACE) &&
      !this.fits(keyLength, valueLength)
    ) {
      // memcached drops the old value of a set it cannot store, so it is never read back.
      const unlink = command === Op.SET ? Buffer.from(packet.key) : null;
      return this.fail(opcode, opaque, Status.E2BIG, false, valueLength, unlink);
    }
    if ((command === Op.APPEND || command === Op.PREPEND) && !this.fits(keyLength, valueLength)) {
      return this.fail(opcode, opaque, Status.E2BIG, false, valueLength);
    }
    // The packet's views are used before push() returns (see BinarySink).
    if (valueLength === 0) return this.sink.onPacket(packet);
    this.pending = packet;
    this.need = valueLength;
    this.state = ST_VALUE;
  }

  /** Answer a request with `status` and go on as memcached does: close, or skip its body. */
  private fail(
    opcode: number,
    opaque: number,
    status: number,
    close: boolean,
    swallow = 0,
    unlink: Buffer | null = null,
  ): void {
    if (close) this.state = ST_CLOSED;
    else if (swallow > 0) {
      this.state = ST_SWALLOW;
      this.need = swallow;
    }
    this.sink.onError(binaryError(opcode, opaque, status, close, unlink));
  }

  /**
   * After a header that expects a value: the packet at once when its whole
   * value is in `chunk` at `pos` (views, used before push() returns), else
   * its key and extras get their own bytes while the value arrives.
   */
  private valueFrom(chunk: Buffer, pos: number): number {
    const p = this.pending!;
    if (this.partsLength === 0 && chunk.length - pos >= this.need) {
      const end = pos + this.need;
      p.value = chunk.subarray(pos, end);
      this.pending = null;
      this.need = 0;
      this.state = ST_HEADER;
      this.sink.onPacket(p);
      return end;
    }
    p.key = Buffer.from(p.key);
    p.extras = Buffer.from(p.extras);
    return pos;
  }

  /** Whether an item of this key and value fits memcached's -I (its own accounting). */
  private fits(keyLength: number, valueLength: number): boolean {
    return keyLength + 1 + valueLength + 2 + ITEM_OVERHEAD <= this.itemSizeMax;
  }

  private stash(b: Buffer): void {
    if (b.length === 0) return;
    this.parts.push(Buffer.from(b));
    this.partsLength += b.length;
  }

  /** The stashed bytes as one buffer, emptying the stash. */
  private take(): Buffer {
    const out = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts);
    this.parts = [];
    this.partsLength = 0;
    return out;
  }
}

const EMPTY = Buffer.alloc(0);
