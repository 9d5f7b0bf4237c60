/**
 * Helpers for parser tests: ways to cut one input stream into chunks, and
 * recorders that turn parser sink events into plain objects chai can
 * deep-compare.
 *
 * Every chunk handed out is a fresh, unpooled copy (Buffer.alloc), so a parser
 * that wrongly assumes two chunks are adjacent in memory, or keeps a view
 * where it should have copied, shows up as wrong bytes instead of passing by
 * luck.
 */

import type { ProtocolError, Request } from '../../src/protocol/request.js';
import { RequestParser, type RequestParserOptions } from '../../src/protocol/request-parser.js';
import {
  type Expectation,
  type Reply,
  ResponseParser,
  type ResponseParserOptions,
} from '../../src/protocol/response-parser.js';

export interface Split {
  /** Human-readable name of the strategy, for assertion messages. */
  name: string;
  chunks: Buffer[];
}

/** A copy of `src` in its own ArrayBuffer (never the shared allocation pool). */
export function own(src: Buffer | Uint8Array): Buffer {
  const out = Buffer.alloc(src.length);
  out.set(src);
  return out;
}

/** Latin-1 bytes of a string, in their own ArrayBuffer. */
export function bytes(s: string): Buffer {
  return own(Buffer.from(s, 'latin1'));
}

/** Small, fast, seedable PRNG (mulberry32): the same seed gives the same splits. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** (a) The whole input as one chunk. */
export function whole(input: Buffer): Split {
  return { name: 'whole', chunks: [own(input)] };
}

/** (b) One chunk per byte. */
export function byteByByte(input: Buffer): Split {
  const chunks: Buffer[] = [];
  for (let i = 0; i < input.length; i++) chunks.push(own(input.subarray(i, i + 1)));
  return { name: 'byte-by-byte', chunks };
}

/** Cut `input` at the given ascending offsets (each in 1..len-1). */
export function cutAt(input: Buffer, offsets: readonly number[], name?: string): Split {
  const chunks: Buffer[] = [];
  let prev = 0;
  for (const o of offsets) {
    chunks.push(own(input.subarray(prev, o)));
    prev = o;
  }
  chunks.push(own(input.subarray(prev)));
  return { name: name ?? `cut at ${offsets.join(',')}`, chunks };
}

/**
 * (c) Two pieces, split at every boundary i in 1..len-1. For inputs with more
 * than `maxBoundaries` boundaries, every boundary within `maxBoundaries / 4`
 * bytes of either end is kept, plus evenly spaced ones in between and the
 * ones within two bytes of each of the first 256 newlines (the interesting
 * positions of big inputs are line ends and the ends of data blocks);
 * `extra` adds specific boundaries on top.
 */
export function* twoPieces(
  input: Buffer,
  maxBoundaries = Infinity,
  extra: readonly number[] = [],
): Generator<Split> {
  const n = input.length;
  const all = new Set<number>();
  if (n - 1 <= maxBoundaries) {
    for (let i = 1; i < n; i++) all.add(i);
  } else {
    const edge = Math.floor(maxBoundaries / 4);
    for (let i = 1; i <= edge; i++) all.add(i);
    for (let i = n - edge; i < n; i++) all.add(i);
    const middle = maxBoundaries - 2 * edge;
    for (let k = 1; k <= middle; k++) all.add(Math.floor((k * n) / (middle + 1)));
    // Cuts right around line ends matter most: keep those of the first 256 newlines.
    let nl = -1;
    for (let found = 0; found < 256 && (nl = input.indexOf(0x0a, nl + 1)) >= 0; found++) {
      for (let d = -2; d <= 2; d++) if (nl + d >= 1 && nl + d < n) all.add(nl + d);
    }
  }
  for (const i of extra) if (i >= 1 && i < n) all.add(i);
  for (const i of [...all].sort((a, b) => a - b)) yield cutAt(input, [i], `two pieces at ${i}`);
}

/** Fixed-size pieces of `size` bytes (the last one shorter): byte-by-byte's cheaper cousin for big inputs. */
export function pieces(input: Buffer, size: number): Split {
  const offsets: number[] = [];
  for (let o = size; o < input.length; o += size) offsets.push(o);
  return cutAt(input, offsets, `pieces of ${size} bytes`);
}

/** (d) `count` random multi-piece splits from a PRNG seeded with `seed`. */
export function randomSplits(input: Buffer, seed: number, count: number): Split[] {
  const rnd = prng(seed);
  const out: Split[] = [];
  if (input.length < 2) return out;
  for (let r = 0; r < count; r++) {
    const pieces = 2 + Math.floor(rnd() * Math.min(16, input.length - 1));
    const cuts = new Set<number>();
    while (cuts.size < pieces - 1) cuts.add(1 + Math.floor(rnd() * (input.length - 1)));
    const offsets = [...cuts].sort((a, b) => a - b);
    out.push(cutAt(input, offsets, `random split #${r} (seed ${seed}) at ${offsets.join(',')}`));
  }
  return out;
}

export interface SplitOptions {
  /** Seed for the random splits (default 1). */
  seed?: number;
  /** Number of random splits (default 5). */
  random?: number;
  /** Cap on the two-piece boundaries (default: all). */
  maxBoundaries?: number;
  /** Feed fixed-size pieces of this many bytes instead of byte by byte (for megabyte inputs). */
  pieceSize?: number;
  /** Boundaries always tried as two-piece splits. */
  extraBoundaries?: readonly number[];
}

/** Every strategy, in order: whole, byte by byte (or fixed pieces), two pieces, random. */
export function* allSplits(input: Buffer, options: SplitOptions = {}): Generator<Split> {
  yield whole(input);
  yield options.pieceSize === undefined ? byteByByte(input) : pieces(input, options.pieceSize);
  yield* twoPieces(input, options.maxBoundaries, options.extraBoundaries);
  yield* randomSplits(input, options.seed ?? 1, options.random ?? 5);
}

// ---------------------------------------------------------------------------
// Request parser events

export interface PlainRequest {
  cmd: string;
  keys: string[];
  wireKeys: string[];
  noreply: boolean;
  flags: number;
  exptime: number;
  bytes: number;
  cas: string;
  delta: string;
  /** Only for storage commands and ms. */
  value?: string;
  args: string[];
  raw: string;
  forward: string;
  /** Meta M mode letter; only present when a mode was given. */
  mode?: string;
}

export interface PlainRequestError {
  error: string;
  silent: boolean;
  close: boolean;
}

export type RequestEvent = PlainRequest | PlainRequestError;

const STORAGE = new Set(['set', 'add', 'replace', 'append', 'prepend', 'cas', 'ms']);

const latin1 = (b: Buffer): string => b.toString('latin1');

export function plainRequest(req: Request): PlainRequest {
  const out: PlainRequest = {
    cmd: req.cmd,
    keys: req.keys.map(latin1),
    wireKeys: req.wireKeys.map(latin1),
    noreply: req.noreply,
    flags: req.flags,
    exptime: req.exptime,
    bytes: req.bytes,
    cas: req.cas.toString(),
    delta: req.delta.toString(),
    args: req.args.map(latin1),
    raw: latin1(req.raw),
    forward: latin1(req.raw.subarray(0, req.contentEnd)),
  };
  if (STORAGE.has(req.cmd)) out.value = latin1(req.value);
  if (req.mode !== 0) out.mode = String.fromCharCode(req.mode);
  return out;
}

export function plainRequestError(err: ProtocolError): PlainRequestError {
  return { error: err.message, silent: err.silent, close: err.close };
}

/** A RequestParser whose events are recorded, both as plain objects and as they came. */
export function recordRequests(options?: RequestParserOptions): {
  parser: RequestParser;
  events: RequestEvent[];
  requests: Request[];
} {
  const events: RequestEvent[] = [];
  const requests: Request[] = [];
  const parser = new RequestParser(
    {
      onRequest(req) {
        requests.push(req);
        events.push(plainRequest(req));
      },
      onError(err) {
        events.push(plainRequestError(err));
      },
    },
    options,
  );
  return { parser, events, requests };
}

/** Push `chunks` through a fresh RequestParser and return its events. */
export function parseRequests(
  chunks: readonly Buffer[],
  options?: RequestParserOptions,
): RequestEvent[] {
  const { parser, events } = recordRequests(options);
  for (const c of chunks) parser.push(c);
  return events;
}

// ---------------------------------------------------------------------------
// Response parser events

export interface PlainValue {
  key: string;
  flags: number;
  bytes: number;
  cas: string | null;
  data: string;
}

export interface PlainReply {
  line: string;
  raw: string;
  values: PlainValue[] | null;
  lines: string[] | null;
  data: string | null;
  absent: boolean;
}

export interface PlainDesync {
  desync: string;
}

export type ReplyEvent = PlainReply | PlainDesync;

/**
 * A values reply's `raw` is there only when the reply arrived in one chunk,
 * so it depends on the split: when present it must be exactly the reply's
 * bytes (its VALUE blocks and end line), and it is then shown as '' like an
 * absent one; anything else shows as `raw mismatch: ...` and fails the
 * comparison.
 */
function valuesRaw(r: Reply): string {
  if (r.raw.length === 0) return '';
  const whole = r.values!.map((v) => latin1(v.raw)).join('') + `${r.text}\r\n`;
  return latin1(r.raw) === whole ? '' : `raw mismatch: ${latin1(r.raw)}`;
}

export function plainReply(r: Reply): PlainReply {
  return {
    line: r.text,
    raw: r.values === null ? latin1(r.raw) : valuesRaw(r),
    values:
      r.values === null
        ? null
        : r.values.map((v) => ({
            key: latin1(v.key),
            flags: v.flags,
            bytes: v.bytes,
            cas: v.cas === undefined ? null : v.cas.toString(),
            data: latin1(v.data),
          })),
    lines: r.lines === null ? null : r.lines.map(latin1),
    data: r.bytes < 0 ? null : latin1(r.data),
    absent: r.absent,
  };
}

/** A ResponseParser with `expectations` queued, whose events are recorded. */
export function recordReplies(
  expectations: readonly Expectation[],
  options?: ResponseParserOptions,
): { parser: ResponseParser; events: ReplyEvent[]; replies: Reply[] } {
  const events: ReplyEvent[] = [];
  const replies: Reply[] = [];
  const parser = new ResponseParser(
    {
      onReply(reply) {
        replies.push(reply);
        events.push(plainReply(reply));
      },
      onDesync(reason) {
        events.push({ desync: reason });
      },
    },
    options,
  );
  for (const e of expectations) parser.expect(e);
  return { parser, events, replies };
}

/** Push `chunks` through a fresh ResponseParser expecting `expectations`; return its events. */
export function parseReplies(
  expectations: readonly Expectation[],
  chunks: readonly Buffer[],
  options?: ResponseParserOptions,
): ReplyEvent[] {
  const { parser, events } = recordReplies(expectations, options);
  for (const c of chunks) parser.push(c);
  return events;
}
