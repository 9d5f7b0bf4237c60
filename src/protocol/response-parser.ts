/**
 * Streaming parser for what memcached answers.
 *
 * Contract: the owner calls `expect()` once per request it sends, in send
 * order, saying what shape of reply it waits for; the parser then calls
 * `onReply` once per expectation, in the same order. Bytes that cannot be the
 * awaited reply (a stray reply, a malformed line, an oversized value) end the
 * stream with `onDesync`: after that nothing on the connection can be matched
 * to a request, and the owner must drop it. Values stay views into the
 * received chunks unless they span chunks.
 */

import { parseU32, parseU64 } from './numbers.js';

/** One line: storage, delete, touch, incr/decr, version, meta (VA carries a data block), ... */
export const EXPECT_LINE = 0;
/** VALUE blocks ended by END (get, gets, gat, gats). */
export const EXPECT_VALUES = 1;
/** Lines ended by END (stats and its sub-commands, lru_crawler metadump). */
export const EXPECT_LINES = 2;
/** A quiet meta command: its reply may be absent, which the next MN reveals (MN is not consumed). */
export const EXPECT_QUIET = 3;
export type Expectation =
  typeof EXPECT_LINE | typeof EXPECT_VALUES | typeof EXPECT_LINES | typeof EXPECT_QUIET;

/** A VALUE block of a get reply. */
export class Value {
  constructor(
    /** Header line, data block and its \r\n, as received. */
    readonly raw: Buffer,
    /** The key is raw[6, 6 + keyLength) ("VALUE <key> ..."): no view is made unless asked for. */
    readonly keyLength: number,
    readonly flags: number,
    /** Offset of the data block in `raw`. */
    readonly dataOffset: number,
    readonly bytes: number,
    /** The cas unique of a gets/gats reply. */
    readonly cas: bigint | undefined,
  ) {}

  get data(): Buffer {
    return this.raw.subarray(this.dataOffset, this.dataOffset + this.bytes);
  }

  get key(): Buffer {
    return this.raw.subarray(6, 6 + this.keyLength);
  }

  /** Whether the key is `key`, byte for byte (a view per value was most of a hit's allocations). */
  keyIs(key: Uint8Array): boolean {
    const n = key.length;
    if (n !== this.keyLength) return false;
    const raw = this.raw;
    for (let i = 0; i < n; i++) if (raw[6 + i] !== key[i]) return false;
    return true;
  }
}

export class Reply {
  /** The first line without its \r\n; for a values reply, the END or error line. */
  line: Buffer;
  /**
   * The whole reply as received: always for a single-line or VA reply; for a
   * values reply only when it arrived in one chunk (then it can be forwarded
   * as one write), else empty. Empty for lines replies.
   */
  raw: Buffer;
  /** VALUE blocks of a get reply, in order. */
  values: Value[] | null;
  /** Lines of a stats-like reply (without END). */
  lines: Buffer[] | null;
  /** Offset and length of a VA data block in `raw`. */
  dataOffset: number;
  bytes: number;
  /** The reply of a quiet meta command that had none. */
  absent: boolean;

  constructor(line: Buffer, raw: Buffer) {
    this.line = line;
    this.raw = raw;
    this.values = null;
    this.lines = null;
    this.dataOffset = 0;
    this.bytes = -1;
    this.absent = false;
  }

  get data(): Buffer {
    return this.bytes < 0
      ? EMPTY
      : this.raw.subarray(this.dataOffset, this.dataOffset + this.bytes);
  }

  /** ERROR, CLIENT_ERROR ... or SERVER_ERROR ... */
  get isError(): boolean {
    return isErrorLine(this.line);
  }

  /** The first line as text (for logs and tests). */
  get text(): string {
    return this.line.toString('latin1');
  }
}

const EMPTY = Buffer.alloc(0);
/** The line and bytes of an empty get reply, shared (never written to). */
const END_LINE = Buffer.from('END', 'latin1');
const END_RAW = Buffer.from('END\r\n', 'latin1');
const STORED_RAW = Buffer.from('STORED\r\n', 'latin1');
/**
 * The reply to most writes, shared: the general path would make a Reply and
 * two views for each. Safe to share because a Reply is not changed once
 * complete.
 */
const STORED_REPLY = new Reply(STORED_RAW.subarray(0, 6), STORED_RAW);

/** Whether `END\r\n` is at `at` (the caller checked there are 5 bytes). */
function isEnd(b: Buffer, at: number): boolean {
  return (
    b[at] === 0x45 &&
    b[at + 1] === 0x4e &&
    b[at + 2] === 0x44 &&
    b[at + 3] === 0x0d &&
    b[at + 4] === 0x0a
  );
}

export function isErrorLine(line: Buffer): boolean {
  const c = line[0];
  if (c === 0x45 /* E */) return startsWith(line, 'ERROR');
  if (c === 0x43 /* C */) return startsWith(line, 'CLIENT_ERROR');
  if (c === 0x53 /* S */) return startsWith(line, 'SERVER_ERROR');
  return false;
}

/** Whether `buf` begins with the ASCII literal `lit`. */
export function startsWith(buf: Buffer, lit: string): boolean {
  if (buf.length < lit.length) return false;
  for (let i = 0; i < lit.length; i++) if (buf[i] !== lit.charCodeAt(i)) return false;
  return true;
}

/** Whether `buf` is exactly the ASCII literal `lit`. */
export function equals(buf: Buffer, lit: string): boolean {
  return buf.length === lit.length && startsWith(buf, lit);
}

export interface ReplySink {
  onReply(reply: Reply): void;
  onDesync(reason: string): void;
}

export interface ResponseParserOptions {
  /** Longest reply line accepted. */
  maxLine?: number;
  /** Largest value accepted in a VALUE or VA block. */
  maxValue?: number;
}

const ST_LINE = 0;
const ST_DATA = 1;
const ST_DEAD = 2;

const DATA_VALUE = 0;
const DATA_VA = 1;

export class ResponseParser {
  private readonly sink: ReplySink;
  private readonly maxLine: number;
  private readonly maxValue: number;

  // Ring buffer of expectations.
  private queue: Uint8Array = new Uint8Array(64);
  private head = 0;
  private size = 0;

  private state: number = ST_LINE;
  private parts: Buffer[] = [];
  private partsLength = 0;
  private need = 0;
  private dataKind = DATA_VALUE;
  /** The reply being assembled (values/lines replies span several lines). */
  private current: Reply | null = null;
  // The pending VALUE header while its data block is read.
  private vKeyLength = 0;
  private vFlags = 0;
  private vCas: bigint | undefined = undefined;
  private vBytes = 0;
  // Where the line being handled sits in the chunk being parsed (lineAt -1: it is a copy).
  private chunk: Buffer = EMPTY;
  private lineAt = -1;
  private lineEnd = 0;
  /** Start of the values reply in progress in `chunk`, or -1 if it is not all in this chunk. */
  private replyAt = -1;

  constructor(sink: ReplySink, options: ResponseParserOptions = {}) {
    this.sink = sink;
    this.maxLine = options.maxLine ?? 8192;
    this.maxValue = options.maxValue ?? 128 * 1024 * 1024;
  }

  /** Replies still awaited. */
  get pending(): number {
    return this.size;
  }

  get dead(): boolean {
    return this.state === ST_DEAD;
  }

  expect(kind: Expectation): void {
    if (this.size === this.queue.length) {
      const q = new Uint8Array(this.queue.length * 2);
      for (let i = 0; i < this.size; i++) q[i] = this.queue[(this.head + i) % this.queue.length]!;
      this.queue = q;
      this.head = 0;
    }
    this.queue[(this.head + this.size) % this.queue.length] = kind;
    this.size++;
  }

  private peek(): number {
    return this.size === 0 ? -1 : this.queue[this.head]!;
  }

  private complete(reply: Reply): void {
    this.head = (this.head + 1) % this.queue.length;
    this.size--;
    this.current = null;
    this.sink.onReply(reply);
  }

  private desync(reason: string): void {
    this.state = ST_DEAD;
    this.parts = [];
    this.partsLength = 0;
    this.current = null;
    this.sink.onDesync(reason);
  }

  push(chunk: Buffer): void {
    // A reply begun in an earlier chunk cannot be forwarded as a view of this one.
    this.replyAt = -1;
    this.chunk = chunk;
    try {
      this.parse(chunk);
    } finally {
      this.chunk = EMPTY;
    }
  }

  private parse(chunk: Buffer): void {
    let pos = 0;
    const len = chunk.length;
    while (pos < len) {
      if (this.state === ST_LINE) {
        if (this.partsLength === 0 && this.current === null) {
          const expect = this.peek();
          if (expect === EXPECT_VALUES) {
            const end = this.wholeValues(chunk, pos);
            if (end > 0) {
              pos = end;
              continue;
            }
          } else if (expect === EXPECT_LINE && isStored(chunk, pos)) {
            pos += 8;
            this.complete(STORED_REPLY);
            continue;
          }
        }
        const nl = chunk.indexOf(0x0a, pos);
        if (nl < 0) {
          this.stash(chunk.subarray(pos));
          // A trailing \r may be the start of the terminator: it does not count.
          const partial = this.partsLength - (chunk[len - 1] === 0x0d ? 1 : 0);
          if (partial > this.maxLine) this.desync('reply line too long');
          return;
        }
        let line: Buffer;
        let lineStart = -1; // position of the line in this chunk, when it is a view
        if (this.partsLength === 0) {
          line = chunk.subarray(pos, nl + 1);
          lineStart = pos;
        } else {
          this.stash(chunk.subarray(pos, nl + 1));
          line = this.take();
        }
        pos = nl + 1;
        if (line.length < 2 || line[line.length - 2] !== 0x0d) {
          this.desync('reply line not ended by \\r\\n');
          return;
        }
        if (line.length - 2 > this.maxLine) {
          this.desync('reply line too long');
          return;
        }
        this.lineAt = lineStart;
        this.lineEnd = pos;
        this.onLine(line);
        if ((this.state as number) === ST_DATA) {
          // Read the data block straight from this chunk when it is all here.
          const avail = len - pos;
          if (avail >= this.need) {
            const raw =
              lineStart >= 0
                ? chunk.subarray(lineStart, pos + this.need)
                : Buffer.concat([line, chunk.subarray(pos, pos + this.need)]);
            pos += this.need;
            this.onData(raw, line.length);
          } else {
            this.stash(lineStart >= 0 ? chunk.subarray(lineStart) : line);
            if (lineStart < 0) this.stash(chunk.subarray(pos));
            this.need -= avail;
            this.headerLength = line.length;
            return;
          }
        } else if ((this.state as number) === ST_DEAD) {
          return;
        }
      } else if (this.state === ST_DATA) {
        const avail = len - pos;
        if (avail >= this.need) {
          this.stash(chunk.subarray(pos, pos + this.need));
          pos += this.need;
          this.onData(this.take(), this.headerLength);
        } else {
          this.stash(chunk.subarray(pos));
          this.need -= avail;
          return;
        }
      } else {
        return;
      }
    }
  }

  private headerLength = 0;

  /**
   * The common get or gets reply, whole in `chunk` at `pos`: VALUE blocks,
   * then END. Completes it and returns where it ends, or returns 0 (and
   * consumes nothing) to leave anything else (a split or malformed reply, an
   * error) to the general path, which gives the same result for these.
   * Why: the general path costs two line searches, three header searches
   * and three views per value, and this reply is most of what msproxy reads.
   */
  private wholeValues(chunk: Buffer, pos: number): number {
    const len = chunk.length;
    const start = pos;
    let values: Value[] | null = null;
    while (pos + 5 <= len) {
      if (isEnd(chunk, pos)) {
        const r =
          values === null
            ? new Reply(END_LINE, END_RAW)
            : new Reply(END_LINE, chunk.subarray(start, pos + 5));
        r.values = values ?? [];
        this.complete(r);
        return pos + 5;
      }
      const next = this.wholeValue(chunk, pos);
      if (next === null) return 0;
      (values ??= []).push(next);
      pos += next.raw.length;
    }
    return 0;
  }

  /** One `VALUE <key> <flags> <bytes>\r\n<data>\r\n` whole at `pos` (see wholeValues), or null. */
  private wholeValue(chunk: Buffer, pos: number): Value | null {
    const len = chunk.length;
    if (pos + 13 > len || chunk[pos] !== 0x56 || chunk[pos + 5] !== 0x20) return null;
    if (chunk[pos + 1] !== 0x41 || chunk[pos + 2] !== 0x4c || chunk[pos + 3] !== 0x55) return null;
    if (chunk[pos + 4] !== 0x45) return null;
    const k0 = pos + 6;
    const limit = Math.min(len, k0 + 251);
    let i = k0;
    while (i < limit && chunk[i]! > 0x20) i++;
    if (i === k0 || i >= limit || chunk[i] !== 0x20) return null;
    const k1 = i;
    // Flags and length read as parseValueHeader reads them, once their digits are found here.
    i = digitsEnd(chunk, k1 + 1, Math.min(len, k1 + 11));
    if (i === k1 + 1 || i >= len || chunk[i] !== 0x20) return null;
    const flags = parseU32(chunk, k1 + 1, i);
    if (flags === undefined) return null;
    const b0 = i + 1;
    i = digitsEnd(chunk, b0, Math.min(len, b0 + 10));
    if (i === b0 || i >= len) return null;
    const bytes = parseLength(chunk, b0, i);
    if (bytes > this.maxValue) return null;
    let cas: bigint | undefined;
    if (chunk[i] === 0x20) {
      // gets: the cas unique, as parseValueHeader reads it.
      const c0 = i + 1;
      i = digitsEnd(chunk, c0, Math.min(len, c0 + 20));
      if (i === c0) return null;
      cas = parseU64(chunk, c0, i);
      if (cas === undefined) return null;
    }
    if (i + 1 >= len || chunk[i] !== 0x0d || chunk[i + 1] !== 0x0a) return null;
    const header = i + 2 - pos;
    if (header - 2 > this.maxLine) return null; // the general path ends the stream for it
    const dataEnd = i + 2 + bytes;
    if (dataEnd + 2 > len || chunk[dataEnd] !== 0x0d || chunk[dataEnd + 1] !== 0x0a) return null;
    const raw = chunk.subarray(pos, dataEnd + 2);
    return new Value(raw, k1 - pos - 6, flags, header, bytes, cas);
  }

  private stash(b: Buffer): void {
    if (b.length === 0) return;
    this.parts.push(b);
    this.partsLength += b.length;
  }

  private take(): Buffer {
    const out =
      this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.partsLength);
    this.parts = [];
    this.partsLength = 0;
    return out;
  }

  /** `line` includes its \r\n. */
  private onLine(line: Buffer): void {
    let expect = this.peek();
    // A values line needs no view without its \r\n (one allocation fewer per VALUE).
    if (expect === EXPECT_VALUES) return this.onValuesLine(line);
    const text = line.subarray(0, line.length - 2);
    // A quiet command whose reply was suppressed: the MN belongs to the next expectation.
    while (expect === EXPECT_QUIET && equals(text, 'MN')) {
      const r = new Reply(EMPTY, EMPTY);
      r.absent = true;
      this.complete(r);
      expect = this.peek();
    }
    if (expect < 0) {
      this.desync(`unexpected reply: ${text.toString('latin1', 0, 60)}`);
      return;
    }
    switch (expect) {
      case EXPECT_LINE:
      case EXPECT_QUIET:
        return this.onSingle(text, line);
      case EXPECT_VALUES:
        return this.onValuesLine(line);
      default:
        return this.onLinesLine(text, line);
    }
  }

  private onSingle(text: Buffer, line: Buffer): void {
    if (startsWith(text, 'VA ')) {
      const bytes = parseLength(text, 3, text.length);
      if (bytes < 0 || bytes > this.maxValue) {
        this.desync('bad VA line');
        return;
      }
      this.current = new Reply(text, line);
      this.startData(DATA_VA, bytes);
      return;
    }
    if (startsWith(text, 'VALUE ') || equals(text, 'END') || startsWith(text, 'STAT ')) {
      this.desync(`unexpected reply: ${text.toString('latin1', 0, 60)}`);
      return;
    }
    this.complete(new Reply(text, line));
  }

  /** `line` includes its \r\n. */
  private onValuesLine(line: Buffer): void {
    if (startsWith(line, 'VALUE ')) {
      if (!this.parseValueHeader(line, line.length - 2)) {
        this.desync('bad VALUE line');
        return;
      }
      if (this.current === null) {
        this.current = new Reply(EMPTY, EMPTY);
        this.current.values = [];
        this.replyAt = this.lineAt;
      }
      this.startData(DATA_VALUE, this.vBytes);
      return;
    }
    if (equals(line, 'END\r\n') || (this.current === null && isErrorLine(line))) {
      const text = line.subarray(0, line.length - 2);
      let r = this.current;
      if (r === null) {
        r = new Reply(EMPTY, EMPTY);
        r.values = [];
        this.replyAt = this.lineAt;
      }
      r.line = text;
      if (this.replyAt >= 0 && this.lineAt >= 0) {
        r.raw = this.chunk.subarray(this.replyAt, this.lineEnd);
      }
      this.replyAt = -1;
      this.complete(r);
      return;
    }
    this.desync(
      `unexpected line in get reply: ${line.toString('latin1', 0, Math.min(60, line.length - 2))}`,
    );
  }

  private onLinesLine(text: Buffer, line: Buffer): void {
    if (equals(text, 'END') || (this.current === null && isErrorLine(text))) {
      const r = this.current ?? new Reply(EMPTY, EMPTY);
      r.line = text;
      r.lines ??= [];
      this.complete(r);
      return;
    }
    if (this.current === null) {
      // Single-line answers to stats sub-commands (RESET, OK) and to admin commands.
      if (
        !startsWith(text, 'STAT ') &&
        !startsWith(text, 'ITEM ') &&
        !startsWith(text, 'PREFIX ') &&
        !text.includes(0x3d) // lru_crawler metadump lines are key=value pairs
      ) {
        this.complete(new Reply(text, line));
        return;
      }
      this.current = new Reply(EMPTY, EMPTY);
      this.current.lines = [];
    }
    this.current.lines!.push(text);
  }

  /** `VALUE <key> <flags> <bytes> [<cas>]` in line[0, end). */
  private parseValueHeader(line: Buffer, end: number): boolean {
    const k0 = 6;
    const k1 = line.indexOf(0x20, k0);
    if (k1 <= k0 || k1 >= end) return false;
    const f1 = line.indexOf(0x20, k1 + 1);
    if (f1 < 0 || f1 >= end) return false;
    let b1 = line.indexOf(0x20, f1 + 1);
    const hasCas = b1 >= 0 && b1 < end;
    if (!hasCas) b1 = end;
    const flags = parseU32(line, k1 + 1, f1);
    const bytes = parseLength(line, f1 + 1, b1);
    if (flags === undefined || bytes < 0 || bytes > this.maxValue) return false;
    let cas: bigint | undefined;
    if (hasCas) {
      cas = parseU64(line, b1 + 1, end);
      if (cas === undefined) return false;
    }
    this.vKeyLength = k1 - k0;
    this.vFlags = flags;
    this.vBytes = bytes;
    this.vCas = cas;
    return true;
  }

  private startData(kind: number, bytes: number): void {
    this.state = ST_DATA;
    this.dataKind = kind;
    this.need = bytes + 2;
  }

  /** `raw` is the header line plus data block plus \r\n. */
  private onData(raw: Buffer, headerLength: number): void {
    this.state = ST_LINE;
    if (raw[raw.length - 2] !== 0x0d || raw[raw.length - 1] !== 0x0a) {
      this.desync('data block not ended by \\r\\n');
      return;
    }
    const bytes = raw.length - headerLength - 2;
    if (this.dataKind === DATA_VA) {
      const r = this.current!;
      r.raw = raw;
      r.line = raw.subarray(0, headerLength - 2);
      r.dataOffset = headerLength;
      r.bytes = bytes;
      this.complete(r);
      return;
    }
    this.current!.values!.push(
      new Value(raw, this.vKeyLength, this.vFlags, headerLength, bytes, this.vCas),
    );
  }
}

/** Whether `STORED\r\n` is whole in `b` at `pos`. */
function isStored(b: Buffer, pos: number): boolean {
  return (
    pos + 8 <= b.length &&
    b[pos] === 0x53 &&
    b[pos + 1] === 0x54 &&
    b[pos + 2] === 0x4f &&
    b[pos + 3] === 0x52 &&
    b[pos + 4] === 0x45 &&
    b[pos + 5] === 0x44 &&
    b[pos + 6] === 0x0d &&
    b[pos + 7] === 0x0a
  );
}

/** The end of the run of decimal digits in b[from, limit). */
function digitsEnd(b: Buffer, from: number, limit: number): number {
  let i = from;
  while (i < limit && b[i]! >= 0x30 && b[i]! <= 0x39) i++;
  return i;
}

/** A plain decimal length in text[from, end), ending there or at a space; -1 if malformed. */
function parseLength(text: Buffer, from: number, end: number): number {
  let n = 0;
  let i = from;
  for (; i < end && text[i] !== 0x20; i++) {
    const d = text[i]! - 0x30;
    if (d < 0 || d > 9 || i - from > 10) return -1;
    n = n * 10 + d;
  }
  return i === from ? -1 : n;
}
