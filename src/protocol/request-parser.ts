/**
 * Streaming parser for the memcached text protocol as a client sends it,
 * meta commands included.
 *
 * Contract: `push()` takes chunks of any size and calls the sink once per
 * command, in stream order: `onRequest` for a valid command, `onError` for one
 * memcached would refuse. Acceptance rules, error texts and where the stream
 * resumes after an error follow memcached 1.6's proto_text.c, so a client sees
 * the same thing through msproxy as directly. Requests hold views into the
 * pushed chunks; bytes are copied only when a command spans chunks.
 */

import { SHARED_COPY_MAX } from '../net/raw-read.js';
import { decodeKey } from './base64.js';
import { parseI32, parseU32, parseU64 } from './numbers.js';
import { type Command, ProtocolError, Request } from './request.js';

export interface RequestSink {
  onRequest(req: Request): void;
  onError(err: ProtocolError): void;
}

export interface RequestParserOptions {
  /** memcached -I: the largest item; larger values get SERVER_ERROR object too large for cache. */
  itemSizeMax?: number;
  /** Longest get/gets line accepted (memcached has no bound; a proxy needs one). */
  maxMultigetLine?: number;
}

/** memcached's KEY_MAX_LENGTH. */
export const KEY_MAX_LENGTH = 250;
/** A line with no newline within this many bytes is garbage, unless it is a get/gets. */
export const MAX_LINE = 2048;
/** memcached's MAX_TOKENS: the tokenizer stops splitting after 23 tokens. */
const MAX_TOKENS = 24;
/** memcached's MFLAG_MAX_OPT_LENGTH and MFLAG_MAX_OPAQUE_LENGTH. */
const META_MAX_TOKENS = 20;
const META_MAX_OPAQUE = 32;
/** memcached's item header (64-bit build) plus the cas field: what counts against -I besides key and value. */
const ITEM_OVERHEAD = 48 + 8;
const INT_MAX = 0x7fffffff;

/** Pieces up to this size may be views of a shared slab: copied when kept (see kept()). */
const SHARE_MAX = Math.max(SHARED_COPY_MAX, Buffer.poolSize >>> 1);

/**
 * `b` to hold beyond this read: a short read is a view of a shared slab
 * (raw-read.ts; Buffer's pool for 'data' reads), and a piece of it kept for a
 * client that sits on half a command, or is paused, would keep the whole
 * slab. Such a piece is copied, so it keeps just its bytes.
 */
function kept(b: Buffer): Buffer {
  if (b.length > SHARE_MAX || b.buffer.byteLength === b.length) return b;
  const own = Buffer.allocUnsafeSlow(b.length);
  b.copy(own);
  return own;
}
const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;

const ST_LINE = 0;
const ST_DATA = 1;
const ST_SWALLOW = 2;
const ST_CLOSED = 3;

const ERR = {
  error: 'ERROR',
  format: 'CLIENT_ERROR bad command line format',
  badChunk: 'CLIENT_ERROR bad data chunk',
  tooLarge: 'SERVER_ERROR object too large for cache',
  exptime: 'CLIENT_ERROR invalid exptime argument',
  delta: 'CLIENT_ERROR invalid numeric delta argument',
  deleteUsage: 'CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]',
  lineTooLong: 'CLIENT_ERROR line too long',
  mgFlagsTooLong: 'CLIENT_ERROR options flags are too long',
  flagsTooLong: 'CLIENT_ERROR options flags too long',
  opaque: 'CLIENT_ERROR opaque token too long',
  invalidOrDup: 'CLIENT_ERROR invalid or duplicate flag',
  msMode: 'CLIENT_ERROR invalid mode for ms M token',
  maMode: 'CLIENT_ERROR invalid mode for ma M token',
} as const;

/** stats sub-commands memcached 1.6 answers (besides detail and cachedump, checked apart). */
const STATS_SUBCOMMANDS = [
  'reset',
  'settings',
  'conns',
  'extstore',
  'items',
  'slabs',
  'sizes',
  'sizes_enable',
  'sizes_disable',
];

type StorageCmd = 'set' | 'add' | 'replace' | 'append' | 'prepend' | 'cas';

/** Compare bytes [s, e) of buf with an ASCII literal. */
function is(buf: Buffer, s: number, e: number, lit: string): boolean {
  if (e - s !== lit.length) return false;
  for (let i = 0; i < lit.length; i++) if (buf[s + i] !== lit.charCodeAt(i)) return false;
  return true;
}

function startsWith(buf: Buffer, s: number, lit: string): boolean {
  if (buf.length - s < lit.length) return false;
  for (let i = 0; i < lit.length; i++) if (buf[s + i] !== lit.charCodeAt(i)) return false;
  return true;
}

export class RequestParser {
  private readonly sink: RequestSink;
  private readonly itemSizeMax: number;
  private readonly maxMultigetLine: number;

  private state: number = ST_LINE;
  /** Bytes of an unfinished line, or of an unfinished command with its data block. */
  private parts: Buffer[] = [];
  private partsLength = 0;
  /** The storage request waiting for its data block. */
  private pending: Request | null = null;
  /** Bytes still to read (data block) or skip (swallow). */
  private need = 0;
  /** Whether the unfinished line is a get/gets, once it is long enough to matter. */
  private partialIsMultiget: boolean | undefined = undefined;
  private stopped = false;
  /** Bytes not parsed yet because of pause(), in order. */
  private held: Buffer[] = [];

  // Token boundaries of the current line; grown for long multi-gets.
  private starts = new Int32Array(64);
  private ends = new Int32Array(64);
  private count = 0;

  constructor(sink: RequestSink, options: RequestParserOptions = {}) {
    this.sink = sink;
    this.itemSizeMax = options.itemSizeMax ?? 1024 * 1024;
    this.maxMultigetLine = options.maxMultigetLine ?? 1024 * 1024;
  }

  /** True once the parser has given up on the stream (memcached would close the connection). */
  get closed(): boolean {
    return this.state === ST_CLOSED;
  }

  /** Bytes held for an unfinished command. */
  get buffered(): number {
    return this.partsLength;
  }

  /**
   * Stop before the next command: the rest of the current chunk and later
   * chunks are held until `resume()`. How a client session enforces its
   * in-flight limit inside one large read.
   */
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
      this.held.push(kept(chunk));
      return;
    }
    this.consume(chunk);
  }

  private consume(chunk: Buffer): void {
    let pos = 0;
    const len = chunk.length;
    while (pos < len) {
      if (this.state === ST_LINE) {
        if (this.stopped) {
          this.held.unshift(kept(chunk.subarray(pos)));
          return;
        }
        if (this.partsLength === 0 && chunk[pos] === 0x67 /* g */) {
          const end = this.plainGet(chunk, pos);
          if (end > 0) {
            pos = end;
            continue;
          }
        }
        const nl = chunk.indexOf(LF, pos);
        if (nl < 0) {
          this.stash(chunk.subarray(pos));
          this.checkPartialLine();
          return;
        }
        let line: Buffer;
        let lineInChunk: boolean;
        if (this.partsLength === 0) {
          line = chunk.subarray(pos, nl + 1);
          lineInChunk = true;
        } else {
          this.stash(chunk.subarray(pos, nl + 1));
          line = this.takeParts();
          lineInChunk = false;
        }
        pos = nl + 1;
        this.onLine(line);
        if ((this.state as number) === ST_DATA) {
          // Keep the line and the data block together so `raw` stays one view when it can.
          const avail = len - pos;
          if (avail >= this.need) {
            const raw = lineInChunk
              ? chunk.subarray(pos - line.length, pos + this.need)
              : Buffer.concat([line, chunk.subarray(pos, pos + this.need)]);
            pos += this.need;
            this.finishData(raw);
          } else {
            this.stash(lineInChunk ? chunk.subarray(pos - line.length) : line);
            if (!lineInChunk) this.stash(chunk.subarray(pos));
            this.need -= avail;
            return;
          }
        }
      } else if (this.state === ST_DATA) {
        const avail = len - pos;
        if (avail >= this.need) {
          this.stash(chunk.subarray(pos, pos + this.need));
          pos += this.need;
          this.finishData(this.takeParts());
        } else {
          this.stash(chunk.subarray(pos));
          this.need -= avail;
          return;
        }
      } else if (this.state === ST_SWALLOW) {
        const n = Math.min(this.need, len - pos);
        pos += n;
        this.need -= n;
        if (this.need === 0) this.state = ST_LINE;
      } else {
        return; // closed: ignore the rest of the stream
      }
    }
  }

  /**
   * `get <key>\r\n` whole at `pos`, the session store's read: emitted
   * without the general tokenizer, returning where it ends. Returns 0 for
   * anything else (other spacing, several keys, a split line), which the
   * general path then parses to the same request or error.
   */
  private plainGet(chunk: Buffer, pos: number): number {
    if (chunk[pos + 1] !== 0x65 || chunk[pos + 2] !== 0x74 || chunk[pos + 3] !== SP) return 0;
    const k0 = pos + 4;
    const limit = Math.min(chunk.length, k0 + KEY_MAX_LENGTH + 1);
    let i = k0;
    while (i < limit && chunk[i]! > SP) i++;
    const klen = i - k0;
    if (klen === 0 || klen > KEY_MAX_LENGTH || i + 1 >= chunk.length) return 0;
    if (chunk[i] !== CR || chunk[i + 1] !== LF) return 0;
    const end = i + 2;
    const req = new Request('get', chunk.subarray(pos, end), end - pos);
    req.keys.push(chunk.subarray(k0, i));
    this.sink.onRequest(req);
    return end;
  }

  private stash(b: Buffer): void {
    if (b.length === 0) return;
    b = kept(b);
    this.parts.push(b);
    this.partsLength += b.length;
  }

  private takeParts(): Buffer {
    this.partialIsMultiget = undefined;
    const out =
      this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.partsLength);
    this.parts = [];
    this.partsLength = 0;
    return out;
  }

  /**
   * memcached closes a connection that sends more than 2 KiB without a newline,
   * unless the line is a get/gets (after at most 100 leading spaces).
   */
  private checkPartialLine(): void {
    // A trailing \r may be the start of the line's terminator: it does not count as content.
    const last = this.parts[this.parts.length - 1]!;
    const content = this.partsLength - (last[last.length - 1] === CR ? 1 : 0);
    if (content <= MAX_LINE) return;
    if (this.partialIsMultiget === undefined) {
      // Only the first bytes matter; avoid re-copying a long line on every chunk.
      let head = this.parts[0]!;
      if (head.length < 110 && this.parts.length > 1) {
        head = Buffer.concat(this.parts.slice(0, 110));
      }
      this.partialIsMultiget = this.isMultigetLine(head);
    }
    if (this.partialIsMultiget && content <= this.maxMultigetLine) return;
    // memcached closes a long non-get line without a word; msproxy's own multi-get limit says why.
    this.fail(ERR.lineTooLong, !this.partialIsMultiget, true);
  }

  private isMultigetLine(line: Buffer): boolean {
    let i = 0;
    while (i < line.length && line[i] === SP) i++;
    if (i > 100) return false;
    return startsWith(line, i, 'get ') || startsWith(line, i, 'gets ');
  }

  private fail(
    message: string,
    silent: boolean,
    close = false,
    unlink: Buffer | null = null,
  ): void {
    if (close) {
      this.state = ST_CLOSED;
      this.parts = [];
      this.partsLength = 0;
    }
    this.sink.onError(new ProtocolError(message, silent, close, unlink));
  }

  /** Split [0, end) on spaces, like memcached's tokenizer (but without its token cap). */
  private tokenize(line: Buffer, end: number): void {
    let n = 0;
    let s = -1;
    for (let i = 0; i < end; i++) {
      if (line[i] === SP) {
        if (s >= 0) {
          this.addToken(n++, s, i);
          s = -1;
        }
      } else if (s < 0) {
        s = i;
      }
    }
    if (s >= 0) this.addToken(n++, s, end);
    this.count = n;
  }

  private addToken(n: number, s: number, e: number): void {
    if (n === this.starts.length) {
      const starts = new Int32Array(n * 2);
      const ends = new Int32Array(n * 2);
      starts.set(this.starts);
      ends.set(this.ends);
      this.starts = starts;
      this.ends = ends;
    }
    this.starts[n] = s;
    this.ends[n] = e;
  }

  private tok(line: Buffer, i: number): Buffer {
    return line.subarray(this.starts[i]!, this.ends[i]!);
  }

  private tokIs(line: Buffer, i: number, lit: string): boolean {
    return i < this.count && is(line, this.starts[i]!, this.ends[i]!, lit);
  }

  private tokLength(i: number): number {
    return this.ends[i]! - this.starts[i]!;
  }

  /**
   * memcached's token count: real tokens (at most 23) plus the terminal one.
   * Commands other than get never see tokens past the 23rd.
   */
  private get ntokens(): number {
    return Math.min(this.count, MAX_TOKENS - 1) + 1;
  }

  /** memcached's set_noreply_maybe: the last visible token is "noreply". */
  private noreplyToken(line: Buffer): boolean {
    const last = Math.min(this.count, MAX_TOKENS - 1) - 1;
    return last >= 0 && is(line, this.starts[last]!, this.ends[last]!, 'noreply');
  }

  private onLine(line: Buffer): void {
    // memcached strips "\n" and a "\r" before it (only when the line has more than one byte).
    let end = line.length - 1;
    if (end > 1 && line[end - 1] === CR) end--;
    if (end > MAX_LINE) {
      const multiget = this.isMultigetLine(line);
      if (end > this.maxMultigetLine || !multiget) {
        this.fail(ERR.lineTooLong, !multiget, true);
        return;
      }
    }
    // The line is handled as a C string: a NUL ends it.
    const nul = line.indexOf(0);
    if (nul >= 0 && nul < end) end = nul;
    this.tokenize(line, end);

    if (this.count === 0 || this.tokLength(0) < 2) {
      this.fail(ERR.error, false);
      return;
    }
    const s = this.starts[0]!;
    const e = this.ends[0]!;
    const c0 = line[s]!;
    if (c0 === 0x6d /* m */ && e - s === 2) {
      this.onMeta(line, line[s + 1]!);
      return;
    }
    switch (c0) {
      case 0x67 /* g */:
        if (is(line, s, e, 'get')) return this.onGet(line, 'get');
        if (is(line, s, e, 'gets')) return this.onGet(line, 'gets');
        if (is(line, s, e, 'gat')) return this.onGet(line, 'gat');
        if (is(line, s, e, 'gats')) return this.onGet(line, 'gats');
        break;
      case 0x73 /* s */:
        if (is(line, s, e, 'set')) return this.onStorage(line, 'set');
        if (is(line, s, e, 'stats')) return this.onStats(line);
        if (is(line, s, e, 'shutdown') || is(line, s, e, 'slabs')) return this.emitAdmin(line);
        break;
      case 0x61 /* a */:
        if (is(line, s, e, 'add')) return this.onStorage(line, 'add');
        if (is(line, s, e, 'append')) return this.onStorage(line, 'append');
        break;
      case 0x63 /* c */:
        if (is(line, s, e, 'cas')) return this.onStorage(line, 'cas');
        if (is(line, s, e, 'cache_memlimit')) return this.emitAdmin(line);
        break;
      case 0x69 /* i */:
        if (is(line, s, e, 'incr')) return this.onArith(line, 'incr');
        break;
      case 0x64 /* d */:
        if (is(line, s, e, 'delete')) return this.onDelete(line);
        if (is(line, s, e, 'decr')) return this.onArith(line, 'decr');
        break;
      case 0x74 /* t */:
        if (is(line, s, e, 'touch')) return this.onTouch(line);
        break;
      default:
        if (is(line, s, e, 'replace')) return this.onStorage(line, 'replace');
        if (is(line, s, e, 'prepend')) return this.onStorage(line, 'prepend');
        // An ancient alias of get that memcached still accepts.
        if (is(line, s, e, 'bget')) return this.onGet(line, 'get');
        if (is(line, s, e, 'flush_all')) return this.onFlushAll(line);
        if (is(line, s, e, 'version')) return this.emitArgs(line, 'version', 1);
        if (is(line, s, e, 'quit')) return this.emitArgs(line, 'quit', 1);
        if (is(line, s, e, 'verbosity')) return this.onVerbosity(line);
        if (
          is(line, s, e, 'lru_crawler') ||
          is(line, s, e, 'watch') ||
          is(line, s, e, 'lru') ||
          is(line, s, e, 'extstore') ||
          is(line, s, e, 'refresh_certs')
        ) {
          return this.emitAdmin(line);
        }
    }
    this.fail(ERR.error, false);
  }

  private newRequest(cmd: Command, line: Buffer): Request {
    const req = new Request(cmd, line, line.length);
    return req;
  }

  private emitArgs(line: Buffer, cmd: Command, from: number): void {
    const req = this.newRequest(cmd, line);
    req.args = [];
    for (let i = from; i < this.count; i++) req.args.push(this.tok(line, i));
    this.sink.onRequest(req);
  }

  private emitAdmin(line: Buffer): void {
    this.emitArgs(line, 'admin', 0);
  }

  /** Mark `noreply` on a request and note where the content ends without it. */
  private setNoreply(req: Request): void {
    const last = Math.min(this.count, MAX_TOKENS - 1) - 1;
    req.noreply = true;
    req.contentEnd = last > 0 ? this.ends[last - 1]! : 0;
  }

  private onGet(line: Buffer, cmd: 'get' | 'gets' | 'gat' | 'gats'): void {
    if (this.ntokens < 3) {
      this.fail(ERR.error, false);
      return;
    }
    let first = 1;
    const req = this.newRequest(cmd, line);
    if (cmd === 'gat' || cmd === 'gats') {
      const exptime = parseI32(line, this.starts[1]!, this.ends[1]!);
      if (exptime === undefined) {
        this.fail(ERR.exptime, false);
        return;
      }
      req.exptime = exptime;
      first = 2;
    }
    for (let i = first; i < this.count; i++) {
      if (this.tokLength(i) > KEY_MAX_LENGTH) {
        this.fail(ERR.format, false);
        return;
      }
      const key = this.tok(line, i);
      req.keys.push(key);
    }
    req.wireKeys = req.keys;
    this.sink.onRequest(req);
  }

  private onStorage(line: Buffer, cmd: StorageCmd): void {
    const isCas = cmd === 'cas';
    const nt = this.ntokens;
    if (isCas ? nt !== 7 && nt !== 8 : nt !== 6 && nt !== 7) {
      this.fail(ERR.error, false);
      return;
    }
    const noreply = this.noreplyToken(line);
    if (this.tokLength(1) > KEY_MAX_LENGTH) {
      this.fail(ERR.format, noreply);
      return;
    }
    const flags = parseU32(line, this.starts[2]!, this.ends[2]!);
    const exptime =
      flags === undefined ? undefined : parseI32(line, this.starts[3]!, this.ends[3]!);
    const vlen = exptime === undefined ? undefined : parseI32(line, this.starts[4]!, this.ends[4]!);
    if (vlen === undefined) {
      this.fail(ERR.format, noreply);
      return;
    }
    let cas = 0n;
    if (isCas) {
      const c = parseU64(line, this.starts[5]!, this.ends[5]!);
      if (c === undefined) {
        this.fail(ERR.format, noreply);
        return;
      }
      cas = c;
    }
    if (vlen < 0 || vlen > INT_MAX - 2) {
      this.fail(ERR.format, noreply);
      return;
    }
    if (!this.fits(this.tokLength(1), flags!, vlen)) {
      this.swallow(vlen + 2);
      // memcached unlinks the old item for set only (add/replace/append/prepend/cas keep it).
      this.fail(ERR.tooLarge, noreply, false, cmd === 'set' ? this.tok(line, 1) : null);
      return;
    }
    const req = this.newRequest(cmd, line);
    const key = this.tok(line, 1);
    req.keys.push(key);
    req.wireKeys = req.keys;
    req.flags = flags!;
    req.exptime = exptime!;
    req.bytes = vlen;
    req.cas = cas;
    if (noreply) this.setNoreply(req);
    this.expectData(req);
  }

  /** memcached's item_size_ok for the default slab settings. */
  private fits(nkey: number, flags: number, vlen: number): boolean {
    return ITEM_OVERHEAD + nkey + 1 + vlen + 2 + (flags !== 0 ? 4 : 0) <= this.itemSizeMax;
  }

  private swallow(n: number): void {
    this.state = ST_SWALLOW;
    this.need = n;
  }

  private expectData(req: Request): void {
    this.pending = req;
    this.state = ST_DATA;
    this.need = req.bytes + 2;
  }

  private finishData(raw: Buffer): void {
    const req = this.pending!;
    this.pending = null;
    this.state = ST_LINE;
    const lineLength = raw.length - req.bytes - 2;
    if (raw[raw.length - 2] !== CR || raw[raw.length - 1] !== LF) {
      // memcached consumed the block and refuses it; meta sets always show the error.
      this.fail(ERR.badChunk, req.cmd === 'ms' ? false : req.noreply);
      return;
    }
    // The request's views were taken from the line; rebase them onto `raw` if it is a new copy.
    if (raw.buffer !== req.raw.buffer || raw.byteOffset !== req.raw.byteOffset) {
      rebase(req, raw);
    }
    req.raw = raw;
    req.lineLength = lineLength;
    this.sink.onRequest(req);
  }

  private onDelete(line: Buffer): void {
    const nt = this.ntokens;
    if (nt < 3 || nt > 5) {
      this.fail(ERR.error, false);
      return;
    }
    let noreply = false;
    if (nt > 3) {
      const holdIsZero = this.tokIs(line, 2, '0');
      noreply = this.noreplyToken(line);
      const valid = (nt === 4 && (holdIsZero || noreply)) || (nt === 5 && holdIsZero && noreply);
      if (!valid) {
        this.fail(ERR.deleteUsage, noreply);
        return;
      }
    }
    if (this.tokLength(1) > KEY_MAX_LENGTH) {
      this.fail(ERR.format, noreply);
      return;
    }
    const req = this.newRequest('delete', line);
    req.keys.push(this.tok(line, 1));
    req.wireKeys = req.keys;
    if (noreply) this.setNoreply(req);
    this.sink.onRequest(req);
  }

  private onArith(line: Buffer, cmd: 'incr' | 'decr'): void {
    const nt = this.ntokens;
    if (nt !== 4 && nt !== 5) {
      this.fail(ERR.error, false);
      return;
    }
    const noreply = this.noreplyToken(line);
    if (this.tokLength(1) > KEY_MAX_LENGTH) {
      this.fail(ERR.format, noreply);
      return;
    }
    const delta = parseU64(line, this.starts[2]!, this.ends[2]!);
    if (delta === undefined) {
      this.fail(ERR.delta, noreply);
      return;
    }
    const req = this.newRequest(cmd, line);
    req.keys.push(this.tok(line, 1));
    req.wireKeys = req.keys;
    req.delta = delta;
    if (noreply) this.setNoreply(req);
    this.sink.onRequest(req);
  }

  private onTouch(line: Buffer): void {
    const nt = this.ntokens;
    if (nt !== 4 && nt !== 5) {
      this.fail(ERR.error, false);
      return;
    }
    const noreply = this.noreplyToken(line);
    if (this.tokLength(1) > KEY_MAX_LENGTH) {
      this.fail(ERR.format, noreply);
      return;
    }
    const exptime = parseI32(line, this.starts[2]!, this.ends[2]!);
    if (exptime === undefined) {
      this.fail(ERR.exptime, noreply);
      return;
    }
    const req = this.newRequest('touch', line);
    req.keys.push(this.tok(line, 1));
    req.wireKeys = req.keys;
    req.exptime = exptime;
    if (noreply) this.setNoreply(req);
    this.sink.onRequest(req);
  }

  private onFlushAll(line: Buffer): void {
    const nt = this.ntokens;
    if (nt < 2 || nt > 4) {
      this.fail(ERR.error, false);
      return;
    }
    const noreply = this.noreplyToken(line);
    const req = this.newRequest('flush_all', line);
    if (nt !== (noreply ? 3 : 2)) {
      const delay = parseI32(line, this.starts[1]!, this.ends[1]!);
      if (delay === undefined) {
        this.fail(ERR.exptime, noreply);
        return;
      }
      req.exptime = delay;
    }
    if (noreply) this.setNoreply(req);
    this.sink.onRequest(req);
  }

  /** memcached's process_stat: which sub-commands exist and their argument errors. */
  private onStats(line: Buffer): void {
    const nt = this.ntokens;
    if (nt > 2) {
      if (this.tokIs(line, 1, 'detail')) {
        if (
          nt < 4 ||
          !(this.tokIs(line, 2, 'on') || this.tokIs(line, 2, 'off') || this.tokIs(line, 2, 'dump'))
        ) {
          this.fail('CLIENT_ERROR usage: stats detail on|off|dump', false);
          return;
        }
      } else if (this.tokIs(line, 1, 'cachedump')) {
        if (nt < 5) {
          this.fail('CLIENT_ERROR bad command line', false);
          return;
        }
        const id = parseU32(line, this.starts[2]!, this.ends[2]!);
        if (id === undefined || parseU32(line, this.starts[3]!, this.ends[3]!) === undefined) {
          this.fail(ERR.format, false);
          return;
        }
        if (id >= 64) {
          this.fail('CLIENT_ERROR Illegal slab id', false);
          return;
        }
      } else if (!STATS_SUBCOMMANDS.some((sub) => this.tokIs(line, 1, sub))) {
        this.fail(ERR.error, false);
        return;
      }
    }
    this.emitArgs(line, 'stats', 1);
  }

  private onVerbosity(line: Buffer): void {
    const nt = this.ntokens;
    if (nt !== 3 && nt !== 4) {
      this.fail(ERR.error, false);
      return;
    }
    const noreply = this.noreplyToken(line);
    const level = parseU32(line, this.starts[1]!, this.ends[1]!);
    if (level === undefined) {
      this.fail(ERR.format, noreply);
      return;
    }
    const req = this.newRequest('verbosity', line);
    req.flags = level;
    if (noreply) this.setNoreply(req);
    this.sink.onRequest(req);
  }

  private onMeta(line: Buffer, c1: number): void {
    switch (c1) {
      case 0x67 /* g */:
        return this.onMetaKeyed(line, 'mg', ERR.mgFlagsTooLong);
      case 0x73 /* s */:
        return this.onMetaSet(line);
      case 0x64 /* d */:
        return this.onMetaKeyed(line, 'md', ERR.flagsTooLong);
      case 0x61 /* a */:
        return this.onMetaKeyed(line, 'ma', ERR.flagsTooLong);
      case 0x6e /* n */:
        return this.emitArgs(line, 'mn', 1);
      case 0x65 /* e */:
        return this.onMetaDebug(line);
      default:
        this.fail(ERR.error, false);
    }
  }

  /** mg, md and ma: `<cmd> <key> <flag>*`. */
  private onMetaKeyed(line: Buffer, cmd: 'mg' | 'md' | 'ma', tooLong: string): void {
    const nt = this.ntokens;
    if (nt < 3) {
      this.fail(ERR.error, false);
      return;
    }
    if (this.tokLength(1) > KEY_MAX_LENGTH) {
      this.fail(ERR.format, false);
      return;
    }
    if (nt > META_MAX_TOKENS) {
      this.fail(tooLong, false);
      return;
    }
    const req = this.newRequest(cmd, line);
    const err = this.metaFlags(line, req, 2);
    if (err !== undefined) {
      // md and ma report every flag problem with one text.
      this.fail(cmd === 'mg' ? err : ERR.invalidOrDup, false);
      return;
    }
    if (cmd === 'ma' && req.mode !== 0 && !isArithMode(req.mode)) {
      this.fail(ERR.maMode, false);
      return;
    }
    if (this.opaqueTooLong(req)) {
      this.fail(ERR.opaque, false);
      return;
    }
    this.sink.onRequest(req);
  }

  /** ms: `ms <key> <datalen> <flag>*` and a data block. */
  private onMetaSet(line: Buffer): void {
    const nt = this.ntokens;
    if (nt < 3) {
      this.fail(ERR.error, false);
      return;
    }
    if (this.tokLength(1) > KEY_MAX_LENGTH || nt === 3) {
      this.fail(ERR.format, false);
      return;
    }
    if (nt > META_MAX_TOKENS) {
      this.fail(ERR.flagsTooLong, false);
      return;
    }
    const vlen = parseI32(line, this.starts[2]!, this.ends[2]!);
    if (vlen === undefined || vlen < 0 || vlen > INT_MAX - 2) {
      this.fail(ERR.format, false);
      return;
    }
    // From here on memcached knows the length and swallows the block after an error.
    const req = this.newRequest('ms', line);
    let err = this.metaFlags(line, req, 3);
    if (err === undefined) {
      if (req.mode !== 0 && !isSetMode(req.mode)) err = ERR.msMode;
      else if (this.opaqueTooLong(req)) err = ERR.opaque;
      else if (!this.fits(req.keys[0]!.length, req.flags, vlen)) err = ERR.tooLarge;
    }
    if (err !== undefined) {
      this.swallow(vlen + 2);
      // A too-large ms unlinks the old item whatever its mode, as memcached 1.6.18 does.
      this.fail(err, false, false, err === ERR.tooLarge ? req.keys[0]! : null);
      return;
    }
    req.bytes = vlen;
    this.expectData(req);
  }

  private onMetaDebug(line: Buffer): void {
    const nt = this.ntokens;
    if (nt < 3 || this.tokLength(1) > KEY_MAX_LENGTH) {
      this.fail(ERR.format, false);
      return;
    }
    const req = this.newRequest('me', line);
    const wire = this.tok(line, 1);
    req.wireKeys = [wire];
    req.keys = [wire];
    req.args = [];
    for (let i = 2; i < this.count; i++) req.args.push(this.tok(line, i));
    if (nt >= 4 && this.tokIs(line, 2, 'b')) {
      const key = decodeKey(wire);
      if (key === undefined) {
        this.fail(ERR.format, false);
        return;
      }
      req.keys = [key];
      req.lower |= 1 << (0x62 - 0x61);
    }
    this.sink.onRequest(req);
  }

  private opaqueTooLong(req: Request): boolean {
    if ((req.upper & (1 << (0x4f - 0x41))) === 0) return false;
    for (const t of req.args) if (t[0] === 0x4f && t.length > META_MAX_OPAQUE) return true;
    return false;
  }

  /**
   * memcached's _meta_flag_preparse: sets the key, flag bits and values on
   * `req`, and returns the error text memcached would answer, if any.
   */
  private metaFlags(line: Buffer, req: Request, from: number): string | undefined {
    const wire = this.tok(line, 1);
    req.wireKeys = [wire];
    req.keys = [wire];
    req.args = [];
    let error: string | undefined;
    const last = Math.min(this.count, MAX_TOKENS - 1);
    for (let i = from; i < last; i++) {
      const s = this.starts[i]!;
      const e = this.ends[i]!;
      const o = line[s]!;
      req.args.push(line.subarray(s, e));
      if (o >= 127 || this.seen(req, o)) return 'CLIENT_ERROR duplicate flag';
      this.mark(req, o);
      switch (o) {
        case 0x62 /* b */: {
          const key = decodeKey(wire);
          if (key === undefined) error = 'CLIENT_ERROR error decoding key';
          else req.keys = [key];
          break;
        }
        case 0x4e /* N */:
        case 0x52 /* R */:
        case 0x54 /* T */: {
          const v = parseI32(line, s + 1, e);
          if (v === undefined) error = 'CLIENT_ERROR bad token in command line format';
          else if (o === 0x54) req.exptime = v;
          break;
        }
        case 0x46 /* F */: {
          const v = parseU32(line, s + 1, e);
          // memcached only flags the error here, keeping an earlier flag's error text.
          if (v === undefined) error ??= ERR.format;
          else req.flags = v;
          break;
        }
        case 0x43 /* C */: {
          const v = parseU64(line, s + 1, e);
          if (v === undefined) error = 'CLIENT_ERROR bad token in command line format';
          else req.cas = v;
          break;
        }
        case 0x4d /* M */:
          if (e - s !== 2) error = 'CLIENT_ERROR incorrect length for M token';
          else req.mode = line[s + 1]!;
          break;
        case 0x4a /* J */:
          if (parseU64(line, s + 1, e) === undefined) {
            error = 'CLIENT_ERROR invalid numeric initial value';
          }
          break;
        case 0x44 /* D */: {
          const v = parseU64(line, s + 1, e);
          if (v === undefined) error = 'CLIENT_ERROR invalid numeric delta value';
          else req.delta = v;
          break;
        }
        case 0x71 /* q */:
          req.noreply = true;
          break;
        case 0x4f /* O */:
        case 0x50 /* P */:
        case 0x4c /* L */:
        case 0x6b /* k */:
        case 0x73 /* s */:
        case 0x74 /* t */:
        case 0x63 /* c */:
        case 0x66 /* f */:
        case 0x76 /* v */:
        case 0x68 /* h */:
        case 0x75 /* u */:
        case 0x6c /* l */:
        case 0x49 /* I */:
          break;
        default:
          return 'CLIENT_ERROR invalid flag';
      }
    }
    return error;
  }

  private seen(req: Request, o: number): boolean {
    if (o >= 0x41 && o <= 0x5a) return (req.upper & (1 << (o - 0x41))) !== 0;
    if (o >= 0x61 && o <= 0x7a) return (req.lower & (1 << (o - 0x61))) !== 0;
    // Other characters are tracked in a per-line set; they are always invalid anyway.
    return false;
  }

  private mark(req: Request, o: number): void {
    if (o >= 0x41 && o <= 0x5a) req.upper |= 1 << (o - 0x41);
    else if (o >= 0x61 && o <= 0x7a) req.lower |= 1 << (o - 0x61);
  }
}

function isSetMode(m: number): boolean {
  // E(add) A(append) P(prepend) R(replace) S(set)
  return m === 0x45 || m === 0x41 || m === 0x50 || m === 0x52 || m === 0x53;
}

function isArithMode(m: number): boolean {
  // I and + increment, D and - decrement
  return m === 0x49 || m === 0x2b || m === 0x44 || m === 0x2d;
}

/** Re-point a request's key and argument views from its line onto a copied `raw`. */
function rebase(req: Request, raw: Buffer): void {
  const base = req.raw;
  const move = (b: Buffer): Buffer => {
    if (b.buffer !== base.buffer) return b; // a decoded key, not a view of the line
    const off = b.byteOffset - base.byteOffset;
    if (off < 0 || off + b.length > base.length) return b;
    return raw.subarray(off, off + b.length);
  };
  const sameKeys = req.keys === req.wireKeys;
  req.wireKeys = req.wireKeys.map(move);
  req.keys = sameKeys ? req.wireKeys : req.keys.map(move);
  req.args = req.args.map(move);
}
