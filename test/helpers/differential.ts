/**
 * Differential testing of RequestParser against a real memcached.
 *
 * A case is one byte stream. It is fed to a RequestParser, and the parser's
 * events are turned into the reply sequence memcached must produce for the
 * same stream: one exact line per error the parser reports, nothing for silent
 * errors and `noreply` commands, a reply of the right shape per request, and a
 * closed connection where the parser gives up on the stream (or sees `quit`).
 * The stream is then sent to memcached on a fresh connection and memcached's
 * bytes are walked against that sequence with the project's ResponseParser.
 */

import net from 'node:net';
import { RequestParser } from '../../src/protocol/request-parser.js';
import { type Command, type ProtocolError, type Request } from '../../src/protocol/request.js';
import {
  EXPECT_LINE,
  EXPECT_LINES,
  EXPECT_QUIET,
  EXPECT_VALUES,
  type Expectation,
  isErrorLine,
  type Reply,
  ResponseParser,
} from '../../src/protocol/response-parser.js';

export type ParserEvent = { type: 'request'; req: Request } | { type: 'error'; err: ProtocolError };

export interface ParsedStream {
  events: ParserEvent[];
  /** Bytes the parser still holds for an unfinished command. */
  buffered: number;
  closed: boolean;
}

/** Feed `input` to a fresh parser, whole or in chunks of the sizes `chunk()` returns. */
export function parseStream(input: Buffer, chunk?: () => number): ParsedStream {
  const events: ParserEvent[] = [];
  const parser = new RequestParser({
    onRequest: (req) => events.push({ type: 'request', req }),
    onError: (err) => events.push({ type: 'error', err }),
  });
  if (chunk === undefined) {
    parser.push(input);
  } else {
    for (let i = 0; i < input.length;) {
      const n = Math.max(1, chunk());
      parser.push(input.subarray(i, i + n));
      i += n;
    }
  }
  return { events, buffered: parser.buffered, closed: parser.closed };
}

/** One reply memcached owes for the stream, in order. */
export type Expected =
  | { kind: 'error'; text: string; event: number }
  | { kind: 'reply'; req: Request; expect: Expectation; event: number }
  | { kind: 'close'; event: number };

const META_QUIETABLE: ReadonlySet<Command> = new Set(['mg', 'ms', 'md', 'ma']);

function expectationFor(req: Request): Expectation {
  switch (req.cmd) {
    case 'get':
    case 'gets':
    case 'gat':
    case 'gats':
      return EXPECT_VALUES;
    case 'stats':
      return EXPECT_LINES;
    case 'admin': {
      const sub = req.args[1]?.toString('latin1');
      return req.args[0]?.toString('latin1') === 'lru_crawler' &&
        (sub === 'metadump' || sub === 'mgdump')
        ? EXPECT_LINES
        : EXPECT_LINE;
    }
    default:
      return req.noreply && META_QUIETABLE.has(req.cmd) ? EXPECT_QUIET : EXPECT_LINE;
  }
}

/** The replies memcached must send for these parser events; stops at the first close. */
export function expectedReplies(events: ParserEvent[]): Expected[] {
  const out: Expected[] = [];
  for (let i = 0; i < events.length; i++) {
    const ev = events[i]!;
    if (ev.type === 'error') {
      if (ev.err.close) {
        // memcached closes without the parser's own message.
        out.push({ kind: 'close', event: i });
        return out;
      }
      if (!ev.err.silent) out.push({ kind: 'error', text: ev.err.message, event: i });
      continue;
    }
    const req = ev.req;
    if (req.cmd === 'quit') {
      out.push({ kind: 'close', event: i });
      return out;
    }
    if (req.noreply && !META_QUIETABLE.has(req.cmd)) continue; // classic noreply
    out.push({ kind: 'reply', req, expect: expectationFor(req), event: i });
    // Server administration (shutdown, lru_crawler, watch, ...) answers per build and
    // configuration, and some take the connection over: nothing after it is comparable.
    if (req.cmd === 'admin') return out;
  }
  return out;
}

/**
 * A quiet meta command's reply is optional; it is unambiguous only when an
 * `mn` answers before anything else does. Returns why a sequence is
 * ambiguous, or undefined.
 */
export function ambiguity(expected: Expected[]): string | undefined {
  let open = -1;
  for (const e of expected) {
    if (e.kind === 'reply' && e.expect === EXPECT_QUIET) {
      if (open < 0) open = e.event;
      continue;
    }
    if (open < 0) continue;
    if (e.kind === 'reply' && e.req.cmd === 'mn') {
      open = -1;
      continue;
    }
    return `quiet command (event ${open}) is followed by event ${e.event} before any mn`;
  }
  return open >= 0 ? `quiet command (event ${open}) is not followed by mn` : undefined;
}

/** True when the stream ends with a quiet meta command not yet settled by an mn. */
export function endsQuiet(input: Buffer): boolean {
  const exp = expectedReplies(parseStream(input).events);
  return ambiguity(exp)?.endsWith('not followed by mn') ?? false;
}

// ---------------------------------------------------------------------------
// Reply checks

const NON_NUMERIC = 'CLIENT_ERROR cannot increment or decrement non-numeric value';

/**
 * Error replies a command the parser accepted may legitimately get: they
 * depend on the stored data, not on the command bytes. Nothing else is allowed.
 */
export const ALLOWED_ERRORS: Readonly<Partial<Record<Command, readonly string[]>>> = {
  incr: [NON_NUMERIC],
  decr: [NON_NUMERIC],
  ma: [NON_NUMERIC],
};

/** Reply line shapes per command (first line of the reply). */
const SHAPES: Readonly<Partial<Record<Command, RegExp>>> = {
  set: /^(STORED|NOT_STORED|EXISTS|NOT_FOUND)$/,
  add: /^(STORED|NOT_STORED|EXISTS|NOT_FOUND)$/,
  replace: /^(STORED|NOT_STORED|EXISTS|NOT_FOUND)$/,
  append: /^(STORED|NOT_STORED|EXISTS|NOT_FOUND)$/,
  prepend: /^(STORED|NOT_STORED|EXISTS|NOT_FOUND)$/,
  cas: /^(STORED|NOT_STORED|EXISTS|NOT_FOUND)$/,
  delete: /^(DELETED|NOT_FOUND)$/,
  touch: /^(TOUCHED|NOT_FOUND)$/,
  incr: /^(\d+|NOT_FOUND)$/,
  decr: /^(\d+|NOT_FOUND)$/,
  mg: /^(HD|VA \d+|EN)( |$)/,
  ms: /^(HD|NS|EX|NF)( |$)/,
  md: /^(HD|NF|EX)( |$)/,
  ma: /^(HD|VA \d+|NF|NS|EX)( |$)/,
  mn: /^MN$/,
  me: /^(ME \S+ |EN$)/,
  version: /^VERSION \S/,
  verbosity: /^OK$/,
  flush_all: /^OK$/,
  get: /^END$/,
  gets: /^END$/,
  gat: /^END$/,
  gats: /^END$/,
  stats: /^(END|OK|RESET)$/,
};

/** memcached's error lines, plus the "Error ..." form some admin commands answer with. */
function isErrorText(text: string): boolean {
  return isErrorLine(Buffer.from(text, 'latin1')) || text.startsWith('Error ');
}

/** Why `reply` does not fit `req`, or undefined. */
export function checkReply(req: Request, reply: Reply): string | undefined {
  if (reply.absent) return undefined; // only quiet commands can have none (EXPECT_QUIET)
  if (req.cmd === 'admin') return undefined; // the parser only recognises it; the server decides
  const text = reply.text;
  if (isErrorText(text)) {
    if (ALLOWED_ERRORS[req.cmd]?.includes(text)) return undefined;
    return `memcached refused a command the parser accepted (${req.cmd})`;
  }
  const shape = SHAPES[req.cmd];
  if (shape !== undefined && !shape.test(text)) {
    return `reply does not fit ${req.cmd}`;
  }
  if (reply.values !== null) {
    // Every VALUE must be for a key the parser saw on the line.
    const keys = new Set(req.keys.map((k) => k.toString('latin1')));
    for (const v of reply.values) {
      const k = v.key.toString('latin1');
      if (!keys.has(k)) return `VALUE for key ${JSON.stringify(k)} the parser did not see`;
    }
    if (reply.values.length > req.keys.length) return 'more VALUEs than keys';
  }
  if (META_QUIETABLE.has(req.cmd)) {
    // Returned k and O flags must echo what the parser extracted.
    const tokens = text.split(' ');
    const from = tokens[0] === 'VA' ? 2 : 1;
    for (const t of tokens.slice(from)) {
      if (t.startsWith('O')) {
        const o = req.flagValue('O');
        if (o === undefined || t !== 'O' + o.toString('latin1')) {
          return `opaque ${JSON.stringify(t)} does not match the parser's O flag`;
        }
      } else if (t.startsWith('k')) {
        // With b, memcached re-encodes the decoded key rather than echoing the wire bytes.
        const key = req.hasFlag('b')
          ? req.key.toString('base64')
          : (req.wireKeys[0] ?? Buffer.alloc(0)).toString('latin1');
        const want = 'k' + key;
        if (t !== want) return `key ${JSON.stringify(t)} does not match the parser's key`;
      }
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// Talking to memcached

export interface Exchange {
  bytes: Buffer;
  /** 'open', or how memcached ended the connection. */
  end: string;
  timedOut: boolean;
}

export interface ExchangeLimits {
  /** Quiet time after the last awaited reply, to catch extra bytes. */
  silenceMs: number;
  /** Bound on the whole exchange. */
  limitMs: number;
}

export const DEFAULT_LIMITS: ExchangeLimits = { silenceMs: 150, limitMs: 3000 };

/**
 * Send `input` on a fresh connection and collect what comes back, pushing it
 * into `rp` as it arrives. Ends at EOF, or `silenceMs` after `rp` has every
 * awaited reply (or gave up), or at `limitMs`. With `waitForClose` only EOF
 * (or the bound) ends it while `rp` is in step.
 */
export function exchange(
  port: number,
  input: Buffer,
  rp: ResponseParser,
  waitForClose: boolean,
  limits: ExchangeLimits = DEFAULT_LIMITS,
): Promise<Exchange> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let end = 'open';
    let settled = false;
    let silence: NodeJS.Timeout | undefined;
    const sock = net.connect(port, '127.0.0.1');
    const limit = setTimeout(() => finish(true), limits.limitMs);

    function finish(timedOut: boolean): void {
      if (settled) return;
      settled = true;
      clearTimeout(limit);
      clearTimeout(silence);
      sock.destroy();
      resolve({ bytes: Buffer.concat(chunks), end, timedOut });
    }
    function maybeQuiet(): void {
      if (rp.dead || (rp.pending === 0 && !waitForClose)) {
        clearTimeout(silence);
        silence = setTimeout(() => finish(false), limits.silenceMs);
      }
    }
    sock.on('connect', () => {
      // memcached closes on more than 2048 bytes without a newline, but only if they arrive
      // before the newline does. Deliver long lines in two writes so it sees them as the
      // parser does, independently of how the kernel happens to batch one write.
      const pieces = splitLongLines(input);
      const next = (i: number): void => {
        if (settled) return;
        if (i === pieces.length - 1) sock.write(pieces[i]!, () => maybeQuiet());
        else sock.write(pieces[i]!, () => setTimeout(() => next(i + 1), 30));
      };
      next(0);
    });
    sock.on('data', (d: Buffer) => {
      chunks.push(d);
      rp.push(d);
      maybeQuiet();
    });
    sock.on('end', () => {
      end = 'eof';
      finish(false);
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      // A reset or a failed write: memcached closed on us.
      if (end === 'open') end = `closed (${err.code ?? err.message})`;
      finish(false);
    });
    sock.on('close', () => {
      if (end === 'open') end = 'closed';
      finish(false);
    });
  });
}

/** Cut `input` 2049 bytes into every line longer than 2049 bytes. */
export function splitLongLines(input: Buffer): Buffer[] {
  const pieces: Buffer[] = [];
  let from = 0;
  let lineStart = 0;
  while (lineStart < input.length) {
    let nl = input.indexOf(0x0a, lineStart);
    if (nl < 0) nl = input.length;
    if (nl - lineStart > 2049) {
      pieces.push(input.subarray(from, lineStart + 2049));
      from = lineStart + 2049;
    }
    lineStart = nl + 1;
  }
  pieces.push(input.subarray(from));
  return pieces;
}

// ---------------------------------------------------------------------------
// One case

export interface DiffCase {
  name: string;
  input: Buffer;
}

export interface DiffOutcome {
  /** Undefined when memcached and the parser agree. */
  failure?: string;
}

/** Run one case against memcached on `port`. */
export async function runCase(
  port: number,
  c: DiffCase,
  limits: ExchangeLimits = DEFAULT_LIMITS,
): Promise<DiffOutcome> {
  const parsed = parseStream(c.input);
  const expected = expectedReplies(parsed.events);
  const context = (mc: string): string =>
    `\n  input:     ${show(c.input)}\n  memcached: ${mc}\n  parser:    ${showEvents(parsed.events)}`;
  if (parsed.buffered > 0) {
    return { failure: `bad case: the parser is waiting for more bytes${context('(not sent)')}` };
  }
  const amb = ambiguity(expected);
  if (amb !== undefined) return { failure: `bad case: ${amb}${context('(not sent)')}` };

  const replies: Reply[] = [];
  let desync: string | undefined;
  const rp = new ResponseParser({
    onReply: (r) => replies.push(r),
    onDesync: (reason) => (desync = reason),
  });
  const awaited = expected.filter((e) => e.kind !== 'close');
  for (const e of awaited) rp.expect(e.kind === 'error' ? EXPECT_LINE : e.expect);
  const expectClose = expected.some((e) => e.kind === 'close');

  const ex = await exchange(port, c.input, rp, expectClose, limits);
  const closed = ex.end !== 'open';

  const problems: string[] = [];
  // After an admin command nothing is compared (see expectedReplies): its own reply is enough.
  const last = awaited[awaited.length - 1];
  const endsWithAdmin = last?.kind === 'reply' && last.req.cmd === 'admin';
  if (endsWithAdmin && replies.length === awaited.length) desync = undefined;
  // Bytes memcached sent after the last awaited reply without a newline.
  if (!endsWithAdmin && !rp.dead && rp.pending === 0) {
    const before = replies.length;
    rp.expect(EXPECT_LINE);
    rp.push(Buffer.from('\r\n'));
    const sentinel = replies[before];
    if (rp.dead || sentinel === undefined || sentinel.text !== '') {
      problems.push('memcached sent bytes after the last expected reply');
    }
    replies.length = before;
  }
  for (let i = 0; i < Math.min(replies.length, awaited.length); i++) {
    const e = awaited[i]!;
    const r = replies[i]!;
    if (e.kind === 'error') {
      if (r.absent || r.raw.length === 0 || r.bytes >= 0 || r.text !== e.text) {
        problems.push(
          `reply ${i}: parser expects ${JSON.stringify(e.text)} (event ${e.event}), memcached sent ${JSON.stringify(r.absent ? '(nothing before MN)' : r.text)}`,
        );
      }
    } else if (e.kind === 'reply') {
      const why = checkReply(e.req, r);
      if (why !== undefined) {
        problems.push(
          `reply ${i}: ${why}: memcached sent ${JSON.stringify(r.text)} for event ${e.event}`,
        );
      }
    }
  }
  if (desync !== undefined)
    problems.push(`memcached's bytes do not fit the expected replies: ${desync}`);
  if (replies.length < awaited.length && desync === undefined) {
    const next = awaited[replies.length]!;
    problems.push(
      `memcached sent ${replies.length} of ${awaited.length} expected replies; missing the one for event ${next.event}` +
        (ex.timedOut ? ' (timed out)' : ''),
    );
  }
  if (expectClose && !closed)
    problems.push('the parser gives up on the stream but memcached kept the connection open');
  if (!expectClose && closed && !endsWithAdmin)
    problems.push(`memcached closed the connection (${ex.end}) but the parser did not expect it`);

  if (problems.length === 0) return {};
  return {
    failure:
      problems.join('\n') +
      context(`${show(ex.bytes)} [${ex.end}${ex.timedOut ? ', timed out' : ''}]`),
  };
}

/** Run `fn` over `items` with at most `limit` at a time. */
export async function pool<T>(
  items: T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

// ---------------------------------------------------------------------------
// Formatting

/** JSON-escaped latin1, with the middle of long buffers elided. */
export function show(buf: Buffer, max = 300): string {
  if (buf.length <= max) return JSON.stringify(buf.toString('latin1'));
  const head = buf.subarray(0, (max * 2) / 3);
  const tail = buf.subarray(buf.length - max / 3);
  return `${JSON.stringify(head.toString('latin1'))} … ${buf.length - head.length - tail.length} bytes … ${JSON.stringify(tail.toString('latin1'))}`;
}

export function showEvent(ev: ParserEvent): string {
  if (ev.type === 'error') {
    const e = ev.err;
    return `error ${JSON.stringify(e.message)}${e.silent ? ' silent' : ''}${e.close ? ' close' : ''}`;
  }
  const r = ev.req;
  const parts: string[] = [r.cmd];
  if (r.keys.length > 0) {
    const keys = r.keys.slice(0, 3).map((k) => show(k, 40));
    parts.push(`keys=[${keys.join(',')}${r.keys.length > 3 ? `,… ${r.keys.length} keys` : ''}]`);
  }
  if (r.bytes > 0) parts.push(`bytes=${r.bytes}`);
  if (r.args.length > 0) parts.push(`args=[${r.args.map((a) => show(a, 40)).join(',')}]`);
  if (r.noreply) parts.push('noreply');
  return parts.join(' ');
}

export function showEvents(events: ParserEvent[]): string {
  return events.length === 0
    ? '(no events)'
    : events.map((e, i) => `${i}: ${showEvent(e)}`).join('; ');
}

// ---------------------------------------------------------------------------
// Deterministic randomness

/** The seeded PRNG the split helpers use. */
export { prng } from './split.js';

export function pick<T>(rnd: () => number, items: readonly T[]): T {
  return items[Math.floor(rnd() * items.length)]!;
}
