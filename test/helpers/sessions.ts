/**
 * A session-store workload for fault drills.
 *
 * `SessionWorkload.start()` connects N clients (MemcacheClient) to the proxy.
 * Each client owns its own keys (`<prefix>:<client>:<j>`) and loops, one
 * request at a time, until `stop()`: a seeded PRNG picks one of its keys and
 * a set (value `<key>:v<version>:` plus padding), a get or a delete. Because
 * a key has a single writer that waits for every reply, what the proxy
 * acknowledged is exactly known:
 *
 * - acked: the last write answered STORED / DELETED / NOT_FOUND (a delete).
 *   A key never written counts as deleted.
 * - uncertain: writes since then whose outcome is unknown (SERVER_ERROR, a
 *   client-side timeout, a lost connection). Each may or may not have taken
 *   effect; the next acknowledged write clears them.
 *
 * Every get is checked on the fly: it must return the acked value or an
 * uncertain one, and may miss only if "deleted" is one of those. `verify()`
 * reads every key through the proxy after the run, `verifyNode()` reads keys
 * straight from one memcached node. Violations name the key, what was seen
 * and what was acceptable. Latencies are kept for the summary only.
 */

import { performance } from 'node:perf_hooks';
import type { Reply } from '../../src/protocol/response-parser.js';
import { type Memcached, sleep } from './memcached.js';
import { MemcacheClient } from './proxy.js';
import { prng } from './split.js';
import { until, WaitTimeout } from './wait.js';

export interface SessionOptions {
  /** Proxy port. */
  port: number;
  /**
   * Several proxies (msproxy instances behind a load balancer): each client
   * holds a connection to each and sends every request to one picked at
   * random, so a session written through one is read through another. A
   * proxy that cannot be reached is skipped for that request. `port` is
   * then the one `verify()` reads through by default.
   */
  ports?: number[];
  /** Session clients (default 40). */
  clients?: number;
  /** Keys each client owns (default 25). */
  keysPerClient?: number;
  /** PRNG seed (default 1). */
  seed?: number;
  /** Key prefix (default "sess"). */
  prefix?: string;
  /** Operation mix, as weights (default set 50, get 35, delete 15). */
  mix?: { set: number; get: number; delete: number };
  /** Value length range in bytes (default 200-1000). */
  valueBytes?: [number, number];
  /** Hard bound on the run: loops end by themselves after this (default 20 s). */
  maxRunMs?: number;
}

/** What a key holds: a value (with its version), or null for deleted / never written. */
export type SessionState = { version: number; value: string } | null;

export type ViolationKind =
  | 'missing' // acked present, not returned
  | 'stale' // an older version than acked (and not an uncertain one)
  | 'resurrected' // acked deleted, yet returned (and not an uncertain write)
  | 'corrupt' // a value that is none of the versions ever written, or a newer unacked one
  | 'unexpected' // a reply a session store never gets (ERROR, CLIENT_ERROR, NOT_STORED, ...)
  | 'unavailable'; // verify could not read the key at all

export interface Violation {
  kind: ViolationKind;
  key: string;
  /** live: a workload get (or delete); verify: the final read; node: read from one node. */
  phase: 'live' | 'verify' | 'node';
  /** What was acceptable. */
  expected: string;
  /** What was seen. */
  seen: string;
  /** Milliseconds since the workload started. */
  at: number;
}

export interface Counts {
  /** Requests answered or failed (not counting reconnects). */
  requests: number;
  /** SERVER_ERROR replies plus client-side timeouts / lost connections. */
  failed: number;
  serverErrors: number;
  /** Client-side timeouts and lost connections. */
  transportErrors: number;
  reconnects: number;
  sets: number;
  gets: number;
  deletes: number;
  ackedSets: number;
  /** DELETED, or NOT_FOUND for a delete. */
  ackedDeletes: number;
  /** Deletes that actually removed a session (DELETED). */
  deleted: number;
  hits: number;
  misses: number;
  /** Writes left with an unknown outcome. */
  uncertainWrites: number;
}

function zeroCounts(): Counts {
  return {
    requests: 0,
    failed: 0,
    serverErrors: 0,
    transportErrors: 0,
    reconnects: 0,
    sets: 0,
    gets: 0,
    deletes: 0,
    ackedSets: 0,
    ackedDeletes: 0,
    deleted: 0,
    hits: 0,
    misses: 0,
    uncertainWrites: 0,
  };
}

/** Counts accumulated between two snapshots. */
export function countsSince(now: Counts, before: Counts): Counts {
  const out = zeroCounts();
  for (const k of Object.keys(out) as (keyof Counts)[]) out[k] = now[k] - before[k];
  return out;
}

class KeyState {
  acked: SessionState = null;
  uncertain: SessionState[] = [];
  /** Next version to write (every attempt gets its own). */
  next = 1;

  /** The states a read may observe. */
  acceptable(): SessionState[] {
    return [this.acked, ...this.uncertain];
  }
}

function describe(s: SessionState): string {
  return s === null ? 'deleted' : `v${s.version}`;
}

/** "v3" for a session value of `key`, or a short quote of whatever it is. */
function describeValue(key: string, value: string): string {
  const v = versionOf(key, value);
  return v === null ? `garbage ${JSON.stringify(value.slice(0, 60))}` : `v${v}`;
}

function versionOf(key: string, value: string): number | null {
  const prefix = `${key}:v`;
  if (!value.startsWith(prefix)) return null;
  const end = value.indexOf(':', prefix.length);
  if (end < 0) return null;
  const n = Number(value.slice(prefix.length, end));
  return Number.isInteger(n) ? n : null;
}

/**
 * Judge a read of `key` against its state: null if acceptable, else the
 * violation kind. `value` null is a miss.
 */
function judge(
  key: string,
  st: KeyState,
  value: string | null,
  missCounts: boolean,
): ViolationKind | null {
  const ok = st.acceptable();
  if (value === null) {
    if (!missCounts || ok.includes(null)) return null;
    return 'missing';
  }
  if (ok.some((s) => s !== null && s.value === value)) return null;
  const v = versionOf(key, value);
  if (v === null) return 'corrupt';
  if (st.acked === null) return 'resurrected';
  if (v < st.acked.version) return 'stale';
  return 'corrupt';
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

const PAD_ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';

export class SessionWorkload {
  readonly keys: string[];
  /** Violations seen by the workload's own gets and deletes. */
  readonly violations: Violation[] = [];
  /** Per-request latency in ms (for summaries only), in completion order. */
  readonly latencies: number[] = [];
  /** When each failed request ended, in ms since the start (SERVER_ERROR or transport). */
  readonly failureTimes: number[] = [];
  /** SERVER_ERROR replies by command and text, with their counts. */
  readonly errors = new Map<string, number>();
  private readonly options: Required<SessionOptions>;
  private readonly state = new Map<string, KeyState>();
  private readonly counts: Counts = zeroCounts();
  private readonly pad: string;
  private readonly started = performance.now();
  private readonly deadline: number;
  private stopping = false;
  private loops: Promise<void>[] = [];
  private readonly clients: (MemcacheClient | null)[] = [];

  private constructor(options: SessionOptions) {
    this.options = {
      clients: 40,
      keysPerClient: 25,
      seed: 1,
      prefix: 'sess',
      mix: { set: 50, get: 35, delete: 15 },
      valueBytes: [200, 1000],
      maxRunMs: 20000,
      ports: [options.port],
      ...options,
    };
    this.deadline = this.started + this.options.maxRunMs;
    this.keys = [];
    for (let c = 0; c < this.options.clients; c++) {
      for (let j = 0; j < this.options.keysPerClient; j++) {
        const key = `${this.options.prefix}:${c}:${j}`;
        this.keys.push(key);
        this.state.set(key, new KeyState());
      }
    }
    const rnd = prng(this.options.seed ^ 0x5eed);
    let pad = '';
    while (pad.length < 2 * this.options.valueBytes[1]) {
      pad += PAD_ALPHABET[Math.floor(rnd() * PAD_ALPHABET.length)];
    }
    this.pad = pad;
  }

  /** Connect every client and start its loop. */
  static async start(options: SessionOptions): Promise<SessionWorkload> {
    const w = new SessionWorkload(options);
    const n = w.options.clients;
    const ports = w.options.ports;
    const conns = await Promise.all(
      Array.from({ length: n * ports.length }, (_, i) =>
        MemcacheClient.connect(ports[i % ports.length]!),
      ),
    );
    w.clients.push(...conns);
    w.loops = Array.from({ length: n }, (_, i) => w.loop(i));
    return w;
  }

  /** Milliseconds since the start. */
  get elapsed(): number {
    return performance.now() - this.started;
  }

  get stopped(): boolean {
    return this.stopping;
  }

  /** A copy of the counters so far. */
  snapshot(): Counts {
    return { ...this.counts };
  }

  /** The acked state and the uncertain alternatives of a key. */
  stateOf(key: string): { acked: SessionState; uncertain: SessionState[] } {
    const st = this.state.get(key)!;
    return { acked: st.acked, uncertain: [...st.uncertain] };
  }

  /** Keys whose acked state is a stored session. */
  presentKeys(): string[] {
    return this.keys.filter((k) => this.state.get(k)!.acked !== null);
  }

  /** Let the loops run for `ms` more (or until they stop by themselves). */
  async run(ms: number): Promise<void> {
    const until = performance.now() + ms;
    while (!this.stopping && performance.now() < until && performance.now() < this.deadline) {
      await sleep(Math.min(20, Math.max(1, until - performance.now())));
    }
  }

  /** Stop the loops (each finishes its current request) and close the clients. */
  async stop(): Promise<void> {
    this.stopping = true;
    // A request ends within the client's own 2 s timeout; a reconnect loop checks `stopping`.
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, 5000);
    });
    await Promise.race([Promise.all(this.loops), bound]);
    clearTimeout(timer);
    for (let i = 0; i < this.clients.length; i++) {
      this.clients[i]?.close();
      this.clients[i] = null;
    }
  }

  /** One line: counts, latency percentiles, violations. */
  summary(): string {
    const c = this.counts;
    const lat = [...this.latencies].sort((a, b) => a - b);
    const ms = (x: number): string => `${x.toFixed(2)} ms`;
    return (
      `requests ${c.requests} (sets ${c.sets}, gets ${c.gets}, deletes ${c.deletes}); ` +
      `acked sets ${c.ackedSets}, acked deletes ${c.ackedDeletes} (${c.deleted} removed); ` +
      `hits ${c.hits}, misses ${c.misses}; failed ${c.failed} (SERVER_ERROR ${c.serverErrors}, ` +
      `transport ${c.transportErrors}, reconnects ${c.reconnects}), uncertain writes ${c.uncertainWrites}; ` +
      `latency p50 ${ms(percentile(lat, 50))}, p99 ${ms(percentile(lat, 99))}, max ${ms(lat[lat.length - 1] ?? NaN)}; ` +
      `live violations ${this.violations.length}` +
      (this.errors.size > 0
        ? `; errors: ${[...this.errors].map(([e, n]) => `${n}x ${e}`).join(', ')}`
        : '')
    );
  }

  // ------------------------------------------------------------------ loop

  private async loop(index: number): Promise<void> {
    const o = this.options;
    const rnd = prng((o.seed * 7919 + index * 104729) >>> 0);
    const total = o.mix.set + o.mix.get + o.mix.delete;
    const [minBytes, maxBytes] = o.valueBytes;
    const ports = o.ports.length;
    while (!this.stopping && performance.now() < this.deadline) {
      // One proxy: the same stream of choices as ever (no draw for the port).
      const slot = index * ports + (ports > 1 ? Math.floor(rnd() * ports) : 0);
      let client = this.clients[slot];
      if (client === null || client === undefined) {
        client = await this.reconnect(slot);
        if (client === null && ports > 1 && !this.stopping) {
          await sleep(20);
          continue;
        }
        if (client === null) break;
      }
      const key = `${o.prefix}:${index}:${Math.floor(rnd() * o.keysPerClient)}`;
      const st = this.state.get(key)!;
      const pick = rnd() * total;
      let ok: boolean;
      if (pick < o.mix.set) {
        const version = st.next++;
        const head = `${key}:v${version}:`;
        const len = Math.max(head.length, minBytes + Math.floor(rnd() * (maxBytes - minBytes + 1)));
        const off = Math.floor(rnd() * (this.pad.length - len));
        const value = head + this.pad.slice(off, off + len - head.length);
        ok = await this.doSet(client, key, st, { version, value });
      } else if (pick < o.mix.set + o.mix.get) {
        ok = await this.doGet(client, key, st);
      } else {
        ok = await this.doDelete(client, key, st);
      }
      if (!ok) {
        // A timeout or lost connection: this client's stream cannot be trusted any more.
        client.close();
        this.clients[slot] = null;
      }
    }
  }

  /** Connect the client's slot again; with several proxies, one try (another may serve). */
  private async reconnect(slot: number): Promise<MemcacheClient | null> {
    const ports = this.options.ports;
    while (!this.stopping && performance.now() < this.deadline) {
      try {
        const c = await MemcacheClient.connect(ports[slot % ports.length]!);
        if (this.stopping) {
          c.close();
          return null;
        }
        this.counts.reconnects++;
        this.clients[slot] = c;
        return c;
      } catch {
        if (ports.length > 1) return null;
        await sleep(50);
      }
    }
    return null;
  }

  /** Send one request; null for a client-side timeout or a lost connection. */
  private async call(client: MemcacheClient, line: string, data?: string): Promise<Reply | null> {
    const t0 = performance.now();
    this.counts.requests++;
    try {
      const r = await client.request(line, data);
      this.latencies.push(performance.now() - t0);
      return r;
    } catch {
      this.latencies.push(performance.now() - t0);
      this.failureTimes.push(this.elapsed);
      this.counts.failed++;
      this.counts.transportErrors++;
      return null;
    }
  }

  private serverError(op: string, r: Reply): boolean {
    if (!r.text.startsWith('SERVER_ERROR')) return false;
    this.failureTimes.push(this.elapsed);
    this.counts.failed++;
    this.counts.serverErrors++;
    const what = `${op}: ${r.text}`;
    this.errors.set(what, (this.errors.get(what) ?? 0) + 1);
    return true;
  }

  /** A violation seen by the workload itself. */
  private record(kind: ViolationKind, key: string, seen: string): void {
    this.violations.push(this.violation(kind, 'live', key, seen));
  }

  private unknown(st: KeyState, attempted: SessionState): void {
    this.counts.uncertainWrites++;
    if (attempted !== null || !st.uncertain.includes(null)) st.uncertain.push(attempted);
  }

  private acked(st: KeyState, now: SessionState): void {
    st.acked = now;
    st.uncertain = [];
  }

  private async doSet(
    client: MemcacheClient,
    key: string,
    st: KeyState,
    next: { version: number; value: string },
  ): Promise<boolean> {
    this.counts.sets++;
    const r = await this.call(client, `set ${key} 0 0 ${next.value.length}`, next.value);
    if (r === null) {
      this.unknown(st, next);
      return false;
    }
    if (r.text === 'STORED') {
      this.counts.ackedSets++;
      this.acked(st, next);
    } else {
      if (!this.serverError('set', r)) this.record('unexpected', key, `set answered ${r.text}`);
      this.unknown(st, next);
    }
    return true;
  }

  private async doDelete(client: MemcacheClient, key: string, st: KeyState): Promise<boolean> {
    this.counts.deletes++;
    const r = await this.call(client, `delete ${key}`);
    if (r === null) {
      this.unknown(st, null);
      return false;
    }
    if (r.text === 'DELETED') {
      this.counts.ackedDeletes++;
      this.counts.deleted++;
      this.acked(st, null);
    } else if (r.text === 'NOT_FOUND') {
      // Nothing was there: fine if "deleted" was a state the key could be in.
      if (!st.acceptable().includes(null)) this.record('missing', key, 'delete: NOT_FOUND');
      this.counts.ackedDeletes++;
      this.acked(st, null);
    } else {
      if (!this.serverError('delete', r))
        this.record('unexpected', key, `delete answered ${r.text}`);
      this.unknown(st, null);
    }
    return true;
  }

  private async doGet(client: MemcacheClient, key: string, st: KeyState): Promise<boolean> {
    this.counts.gets++;
    const r = await this.call(client, `get ${key}`);
    if (r === null) return false;
    if (r.values === null || r.text !== 'END') {
      if (!this.serverError('get', r)) this.record('unexpected', key, `get answered ${r.text}`);
      return true;
    }
    const v = r.values[0];
    if (r.values.length > 1 || (v !== undefined && v.key.toString('latin1') !== key)) {
      this.record('unexpected', key, `get answered ${JSON.stringify(r.values.length)} values`);
      return true;
    }
    const value = v === undefined ? null : v.data.toString('latin1');
    if (value === null) this.counts.misses++;
    else this.counts.hits++;
    const kind = judge(key, st, value, true);
    if (kind !== null) {
      this.record(kind, key, value === null ? 'miss' : describeValue(key, value));
    }
    return true;
  }

  // ---------------------------------------------------------------- checks

  private violation(
    kind: ViolationKind,
    phase: Violation['phase'],
    key: string,
    seen: string,
  ): Violation {
    const st = this.state.get(key)!;
    const expected = st.acceptable().map(describe).join(' or ');
    return { kind, key, phase, expected, seen, at: Math.round(this.elapsed) };
  }

  private judgeAll(
    phase: Violation['phase'],
    keys: readonly string[],
    got: Map<string, string>,
    missCounts: boolean,
  ): Violation[] {
    const out: Violation[] = [];
    for (const key of keys) {
      const value = got.get(key) ?? null;
      const kind = judge(key, this.state.get(key)!, value, missCounts);
      if (kind !== null) {
        out.push(
          this.violation(kind, phase, key, value === null ? 'miss' : describeValue(key, value)),
        );
      }
    }
    return out;
  }

  /**
   * After `stop()`: read every key through the proxy (multi-gets of `batch`
   * keys; a SERVER_ERROR is retried for up to `retryMs`) and return every key
   * whose value is not an acceptable state. `port`: read through another
   * proxy than the one the workload ran on (another msproxy instance).
   */
  async verify(
    options: { batch?: number; retryMs?: number; port?: number } = {},
  ): Promise<Violation[]> {
    const batch = options.batch ?? 100;
    const retryMs = options.retryMs ?? 3000;
    const port = options.port ?? this.options.port;
    if (!this.stopping) throw new Error('verify() before stop()');
    const got = new Map<string, string>();
    const unavailable: Violation[] = [];
    let client = await MemcacheClient.connect(port);
    try {
      for (let i = 0; i < this.keys.length; i += batch) {
        const keys = this.keys.slice(i, i + batch);
        let why = '';
        try {
          await until(`a read of keys ${i}..${i + keys.length - 1}`, retryMs, async () => {
            let r: Reply;
            try {
              r = await client.request(`get ${keys.join(' ')}`);
            } catch (e) {
              why = (e as Error).message;
              client.close();
              client = await MemcacheClient.connect(port);
              return false;
            }
            if (r.values === null || r.text !== 'END') {
              why = r.text;
              return false;
            }
            for (const v of r.values) got.set(v.key.toString('latin1'), v.data.toString('latin1'));
            return true;
          });
        } catch (e) {
          if (!(e instanceof WaitTimeout)) throw e;
          for (const k of keys) unavailable.push(this.violation('unavailable', 'verify', k, why));
        }
      }
    } finally {
      client.close();
    }
    const failed = new Set(unavailable.map((v) => v.key));
    const judged = this.judgeAll(
      'verify',
      this.keys.filter((k) => !failed.has(k)),
      got,
      true,
    );
    return [...unavailable, ...judged];
  }

  /**
   * After `stop()`: read `keys` straight from one memcached node and return
   * those it holds in a state that is not acceptable (older than acked, or
   * present though deleted). With `requirePresent`, a key acked present that
   * the node lacks is a violation too (`missing`).
   */
  async verifyNode(
    node: Memcached,
    keys: readonly string[],
    options: { requirePresent?: boolean } = {},
  ): Promise<Violation[]> {
    if (!this.stopping) throw new Error('verifyNode() before stop()');
    const c = await MemcacheClient.connect(node.port);
    const got = new Map<string, string>();
    try {
      for (let i = 0; i < keys.length; i += 100) {
        const r = await c.request(`get ${keys.slice(i, i + 100).join(' ')}`);
        if (r.values === null || r.text !== 'END')
          throw new Error(`node ${node.address} answered ${r.text}`);
        for (const v of r.values) got.set(v.key.toString('latin1'), v.data.toString('latin1'));
      }
    } finally {
      c.close();
    }
    return this.judgeAll('node', keys, got, options.requirePresent ?? false);
  }
}

/** Keys whose first `replicas` ring nodes include `node` (ring: e.g. `proxy.ring`). */
export function replicaKeys(
  ring: { order(key: Buffer): ArrayLike<number> },
  keys: readonly string[],
  node: number,
  replicas = 2,
): string[] {
  return keys.filter((k) => {
    const order = ring.order(Buffer.from(k, 'latin1'));
    for (let i = 0; i < replicas; i++) if (order[i] === node) return true;
    return false;
  });
}

/** Keys whose replica set (first `replicas` ring nodes) is exactly `nodes`, in any order. */
export function keysOnExactly(
  ring: { order(key: Buffer): ArrayLike<number> },
  keys: readonly string[],
  nodes: readonly number[],
): string[] {
  return keys.filter((k) => {
    const order = ring.order(Buffer.from(k, 'latin1'));
    const set = Array.from({ length: nodes.length }, (_, i) => order[i]!);
    return nodes.every((n) => set.includes(n));
  });
}

/** The first few violations, one per line, for assertion messages. */
export function formatViolations(vs: readonly Violation[], max = 8): string {
  if (vs.length === 0) return 'no violations';
  const byKind = new Map<string, number>();
  for (const v of vs) byKind.set(v.kind, (byKind.get(v.kind) ?? 0) + 1);
  const head = [...byKind].map(([k, n]) => `${k} ${n}`).join(', ');
  const lines = vs
    .slice(0, max)
    .map(
      (v) =>
        `  ${v.phase} ${v.kind} ${v.key}: saw ${v.seen}, expected ${v.expected} (t=${v.at} ms)`,
    );
  return `${vs.length} violations (${head}):\n${lines.join('\n')}${vs.length > max ? '\n  ...' : ''}`;
}
