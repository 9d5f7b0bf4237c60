/**
 * Helpers for integration tests: a proxy in front of real memcached nodes,
 * and a small text-protocol client.
 *
 * `startCluster()` starts N memcached processes (test/helpers/memcached.ts)
 * and an in-process Proxy on a free port. `MemcacheClient` speaks the text
 * protocol to a port: `command()` sends one request and reads exactly its
 * reply (ResponseParser decides where it ends), `send()` writes raw bytes,
 * `script()` writes raw bytes followed by `mn` and returns everything
 * answered before the MN (for inputs whose number of replies is the point of
 * the test). Bytes that arrive when no reply is awaited are an error the next
 * call reports, so a reply leaked by a noreply command cannot go unnoticed.
 */

import net from 'node:net';
import { pino } from 'pino';
import { type Config, parseConfig } from '../../src/config.js';
import {
  EXPECT_LINE,
  EXPECT_LINES,
  EXPECT_QUIET,
  EXPECT_VALUES,
  type Expectation,
  type Reply,
  ResponseParser,
} from '../../src/protocol/response-parser.js';
import { joinCluster } from '../../src/coordination/etcd-gate.js';
import { Proxy } from '../../src/server/proxy.js';
import { Memcached, sleep } from './memcached.js';
import { Relay } from './relay.js';

const CALL_TIMEOUT_MS = 2000;

// ------------------------------------------------------------------ cluster

export interface ClusterOptions {
  nodes?: number;
  replicas?: number;
  /** Nodes (by index) the proxy reaches through a Relay (test/helpers/relay.ts). */
  relays?: number[];
  /** Merged over the base config; objects (timeouts, backend, limits, log) are merged one level deep. */
  [key: string]: unknown;
}

export interface Cluster {
  proxy: Proxy;
  port: number;
  /** The memcached nodes, in config order (index = the proxy's node index). */
  nodes: Memcached[];
  config: Config;
  /** The relays in front of the nodes named in `relays`, by node index. */
  relays: Map<number, Relay>;
  /** SIGKILL node i. */
  kill(i: number): Promise<void>;
  /** Replace node i by a fresh, empty memcached on the same port. */
  restart(i: number): Promise<Memcached>;
  /**
   * Stop the proxy and start a new one with the same config, on a new port
   * (`proxy` and `port` change): it knows nothing the old one learned.
   */
  restartProxy(): Promise<void>;
  /** Resolve once the proxy considers node i up (or down), failing after `ms`. */
  waitNode(i: number, up: boolean, ms?: number): Promise<void>;
  stop(): Promise<void>;
}

function merge(
  base: Record<string, unknown>,
  over: Record<string, unknown>,
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    if (isPlainObject(b) && isPlainObject(v)) out[k] = { ...b, ...v };
    else out[k] = v;
  }
  return out;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  const { nodes: count = 3, replicas = 2, relays: relayed = [], ...overrides } = options;
  const nodes = await Promise.all(Array.from({ length: count }, () => Memcached.start()));
  const relays = new Map<number, Relay>();
  try {
    for (const i of relayed) relays.set(i, await Relay.start(nodes[i]!.port));
    const raw = merge(
      {
        listen: { host: '127.0.0.1', port: 0 },
        nodes: nodes.map((n, i) => ({ host: '127.0.0.1', port: relays.get(i)?.port ?? n.port })),
        replicas,
        timeouts: { requestMs: 250, connectMs: 500 },
        // Two lanes per node (the default is one): the tests cover keys split across lanes.
        backend: { connections: 2, probeMs: 50, probeMaxMs: 200 },
        log: { level: 'silent' },
      },
      overrides,
    );
    const config = parseConfig(raw);
    const logger = pino({ level: process.env.MSP_TEST_LOG ?? 'silent' });
    // With coordination.etcd, a member of that cluster (see scripts/soak.ts).
    const start = async (): Promise<Proxy> => {
      const gate = await joinCluster(config, logger);
      const p = new Proxy(config, logger, gate ? { gate, worker: 0 } : undefined);
      gate?.bind(p.peer());
      await p.start();
      return p;
    };
    let proxy = await start();
    const cluster: Cluster = {
      proxy,
      port: proxy.address.port,
      nodes,
      config,
      relays,
      async kill(i) {
        await nodes[i]!.kill();
      },
      async restart(i) {
        const fresh = await nodes[i]!.restart();
        nodes[i] = fresh;
        return fresh;
      },
      async restartProxy() {
        await proxy.close();
        proxy = await start();
        cluster.proxy = proxy;
        cluster.port = proxy.address.port;
      },
      async waitNode(i, up, ms = 3000) {
        const deadline = Date.now() + ms;
        while (proxy.nodes[i]!.isUp !== up) {
          if (Date.now() > deadline) {
            throw new Error(`node ${i} did not go ${up ? 'up' : 'down'} within ${ms} ms`);
          }
          await sleep(10);
        }
      },
      async stop() {
        await proxy.close();
        await Promise.all([...relays.values()].map((r) => r.close()));
        await Promise.all(nodes.map((n) => n.kill()));
      },
    };
    return cluster;
  } catch (err) {
    await Promise.all([...relays.values()].map((r) => r.close()));
    await Promise.all(nodes.map((n) => n.kill()));
    throw err;
  }
}

// ------------------------------------------------------------------- client

/** The shape of reply a command line awaits. */
export function expectationFor(line: string | Buffer): Expectation {
  const text = typeof line === 'string' ? line : line.toString('latin1', 0, 64);
  const cmd = /^\s*(\S+)/.exec(text)?.[1] ?? '';
  if (cmd === 'get' || cmd === 'gets' || cmd === 'gat' || cmd === 'gats' || cmd === 'bget') {
    return EXPECT_VALUES;
  }
  if (cmd === 'stats') return EXPECT_LINES;
  return EXPECT_LINE;
}

/** A reply as the bytes it was received as (latin1). */
export function replyText(r: Reply): string {
  if (r.absent) return '';
  if (r.values !== null) {
    return (
      r.values.map((v) => v.raw.toString('latin1')).join('') + r.line.toString('latin1') + '\r\n'
    );
  }
  if (r.lines !== null) {
    return (
      r.lines.map((l) => l.toString('latin1') + '\r\n').join('') +
      r.line.toString('latin1') +
      '\r\n'
    );
  }
  return r.raw.toString('latin1');
}

interface Waiter {
  resolve(r: Reply): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
  what: string;
}

interface RawWaiter {
  until(buf: Buffer): number;
  resolve(b: Buffer): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

export class MemcacheClient {
  readonly socket: net.Socket;
  private parser: ResponseParser;
  private readonly waiters: Waiter[] = [];
  private raw: RawWaiter | null = null;
  private rawBuf: Buffer = Buffer.alloc(0);
  private error: Error | null = null;
  private ended = false;
  private readonly endWaiters: (() => void)[] = [];

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.parser = this.newParser();
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => {
      this.ended = true;
      for (const w of this.endWaiters.splice(0)) w();
      this.fail(new Error('connection closed'));
    });
  }

  static connect(port: number, host = '127.0.0.1'): Promise<MemcacheClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host, noDelay: true });
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new MemcacheClient(s));
      });
      s.once('error', reject);
    });
  }

  private newParser(): ResponseParser {
    return new ResponseParser(
      {
        onReply: (r) => {
          const w = this.waiters.shift()!;
          clearTimeout(w.timer);
          w.resolve(r);
        },
        onDesync: (reason) => this.fail(new Error(`reply stream desync: ${reason}`)),
      },
      { maxLine: 1 << 20 },
    );
  }

  private onData(chunk: Buffer): void {
    if (this.raw !== null) {
      this.rawBuf = Buffer.concat([this.rawBuf, chunk]);
      const end = this.raw.until(this.rawBuf);
      if (end < 0) return;
      const w = this.raw;
      this.raw = null;
      clearTimeout(w.timer);
      const got = this.rawBuf.subarray(0, end);
      const rest = this.rawBuf.subarray(end);
      this.rawBuf = Buffer.alloc(0);
      w.resolve(got);
      if (rest.length > 0) this.onData(rest);
      return;
    }
    // With nothing awaited, the parser desyncs on the first byte: stray replies are errors.
    this.parser.push(chunk);
  }

  private fail(err: Error): void {
    if (this.error === null) this.error = err;
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new Error(`${w.what}: ${err.message}`));
    }
    if (this.raw !== null) {
      const w = this.raw;
      this.raw = null;
      clearTimeout(w.timer);
      w.reject(
        new Error(`${err.message}; received: ${JSON.stringify(this.rawBuf.toString('latin1'))}`),
      );
    }
  }

  /** Whether the server has closed the connection. */
  get closed(): boolean {
    return this.ended;
  }

  /** Resolve when the connection closes (reject after `ms`). */
  waitClose(ms = CALL_TIMEOUT_MS): Promise<void> {
    if (this.ended) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`connection still open after ${ms} ms`)), ms);
      this.endWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Write raw bytes; no reply is awaited. */
  send(bytes: string | Buffer): void {
    this.socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
  }

  /** Await one more reply of the given shape (for a request already written). */
  expectReply(expect: Expectation, what = 'reply'): Promise<Reply> {
    if (this.error !== null) return Promise.reject(new Error(`${what}: ${this.error.message}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        // The stream is no longer in step with the expectations: nothing after this can be trusted.
        this.fail(new Error(`no complete reply within ${CALL_TIMEOUT_MS} ms`));
        reject(new Error(`${what}: no complete reply within ${CALL_TIMEOUT_MS} ms`));
      }, CALL_TIMEOUT_MS);
      const w: Waiter = { resolve, reject, timer, what };
      this.waiters.push(w);
      this.parser.expect(expect);
    });
  }

  /**
   * Send one command (a line without its \r\n, plus `data` for storage
   * commands) and return its parsed reply.
   */
  request(line: string, data?: string | Buffer, expect = expectationFor(line)): Promise<Reply> {
    const p = this.expectReply(expect, JSON.stringify(line));
    const parts: Buffer[] = [Buffer.from(line + '\r\n', 'latin1')];
    if (data !== undefined) {
      parts.push(
        typeof data === 'string' ? Buffer.from(data, 'latin1') : data,
        Buffer.from('\r\n'),
      );
    }
    this.send(Buffer.concat(parts));
    return p;
  }

  /** Send one command and return its full reply as a latin1 string. */
  async command(line: string, data?: string | Buffer): Promise<string> {
    return replyText(await this.request(line, data));
  }

  /**
   * Write several commands at once and return their replies in order. A meta
   * command with the q flag may have no reply (''); end such a batch with mn.
   */
  async pipeline(commands: readonly (string | [string, string | Buffer])[]): Promise<string[]> {
    const parts: Buffer[] = [];
    const pending: Promise<Reply>[] = [];
    for (const c of commands) {
      const [line, data] = typeof c === 'string' ? [c, undefined] : c;
      const quiet = /^m[gsda] /.test(line) && / q( |$)/.test(line);
      pending.push(
        this.expectReply(quiet ? EXPECT_QUIET : expectationFor(line), JSON.stringify(line)),
      );
      parts.push(Buffer.from(line + '\r\n', 'latin1'));
      if (data !== undefined) {
        parts.push(
          typeof data === 'string' ? Buffer.from(data, 'latin1') : data,
          Buffer.from('\r\n'),
        );
      }
    }
    this.send(Buffer.concat(parts));
    return (await Promise.all(pending)).map(replyText);
  }

  /** Read raw bytes until `until` returns the end offset (>= 0) of what to take. */
  readRaw(until: (buf: Buffer) => number, ms = CALL_TIMEOUT_MS): Promise<Buffer> {
    if (this.error !== null) return Promise.reject(this.error);
    if (this.waiters.length > 0) throw new Error('readRaw while parsed replies are awaited');
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.raw = null;
        reject(
          new Error(
            `no complete raw reply within ${ms} ms; received: ${JSON.stringify(this.rawBuf.toString('latin1'))}`,
          ),
        );
      }, ms);
      this.raw = { until, resolve, reject, timer };
    });
  }

  /**
   * Send raw bytes followed by `mn\r\n` and return everything answered before
   * the last MN, as a latin1 string. Whatever the bytes make the server answer
   * (errors included) is returned verbatim. `mn` lines inside the script are
   * counted, so the reply is complete only at its own final MN (scripts must
   * not store values that are themselves an "MN" line).
   */
  async script(bytes: string | Buffer): Promise<string> {
    const buf = typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes;
    const text = buf.toString('latin1');
    const want = (text.match(/(?<=^|\n)mn\r?\n/g) ?? []).length + 1;
    const p = this.readRaw((got) => {
      const s = got.toString('latin1');
      let seen = 0;
      let at = -1;
      while ((at = s.indexOf('MN\r\n', at + 1)) >= 0) {
        if (at === 0 || s[at - 1] === '\n') {
          if (++seen === want) return at + 4;
        }
      }
      return -1;
    });
    this.send(Buffer.concat([buf, Buffer.from('mn\r\n')]));
    const out = (await p).toString('latin1');
    return out.slice(0, out.length - 4);
  }

  /** Fail if anything arrives within `ms` (for noreply). */
  async expectSilence(ms: number): Promise<void> {
    if (this.error !== null) throw this.error;
    if (this.waiters.length > 0) throw new Error('expectSilence while replies are awaited');
    let got: Buffer | null = null;
    const timer = setTimeout(() => {}, ms);
    this.raw = {
      until: (buf) => {
        got = buf;
        return buf.length;
      },
      resolve: () => {},
      reject: () => {},
      timer,
    };
    await sleep(ms);
    clearTimeout(timer);
    if (this.raw?.timer === timer) this.raw = null;
    if (got !== null)
      throw new Error(
        `expected silence, got ${JSON.stringify((got as Buffer).toString('latin1'))}`,
      );
  }

  close(): void {
    this.socket.destroy();
  }

  /** Half-close: no more requests, but replies may still be read. */
  end(): void {
    this.socket.end();
  }
}

/** A key whose replicas are `nodes`, in ring order (primary first), searched by number. */
export function keyOnReplicas(c: Cluster, prefix: string, nodes: readonly number[]): string {
  for (let i = 0; i < 100000; i++) {
    const k = `${prefix}:${i}`;
    const o = c.proxy.ring.order(Buffer.from(k));
    if (nodes.every((n, j) => o[j] === n)) return k;
  }
  throw new Error(`no key on ${nodes.join(',')}`);
}

/** A client connected to one memcached node directly. */
/** A `stats` reply (msproxy's or memcached's) as a map of name to value. */
export async function statsOf(client: MemcacheClient): Promise<Map<string, string>> {
  const r = await client.request('stats');
  const out = new Map<string, string>();
  for (const l of r.lines ?? []) {
    const [, name, ...value] = l.toString('latin1').split(' ');
    if (name !== undefined) out.set(name, value.join(' '));
  }
  return out;
}

export function direct(node: Memcached): Promise<MemcacheClient> {
  return MemcacheClient.connect(node.port);
}

export interface Item {
  value: string;
  flags: number;
  /** Remaining TTL in seconds, -1 for none. */
  ttl: number;
}

/** Read a key straight from one node with `mg <key> [b] v f t` (null on a miss). */
export async function peek(node: Memcached, key: string | Buffer): Promise<Item | null> {
  const c = await direct(node);
  try {
    return await peekWith(c, key);
  } finally {
    c.close();
  }
}

export async function peekWith(c: MemcacheClient, key: string | Buffer): Promise<Item | null> {
  const raw = typeof key === 'string' ? Buffer.from(key, 'latin1') : key;
  // base64 only when the key cannot be a token as it is (a 250-byte key would not fit encoded).
  const binary = raw.some((b) => b <= 0x20 || b === 0x7f);
  const k = binary ? `${raw.toString('base64')} b` : raw.toString('latin1');
  const r = await c.request(`mg ${k} v f t`);
  if (r.text === 'EN') return null;
  const m = /^VA \d+ (.*)$/.exec(r.text);
  if (!m) throw new Error(`unexpected mg reply ${r.text}`);
  const flags = /(?:^| )f(\d+)/.exec(m[1]!);
  const ttl = /(?:^| )t(-?\d+)/.exec(m[1]!);
  return { value: r.data.toString('latin1'), flags: Number(flags?.[1]), ttl: Number(ttl?.[1]) };
}

/** Which of the given keys a node holds, with a few multi-gets. */
export async function keysOn(
  node: Memcached,
  keys: readonly string[],
): Promise<Map<string, string>> {
  const c = await direct(node);
  try {
    const out = new Map<string, string>();
    for (let i = 0; i < keys.length; i += 100) {
      const r = await c.request(`get ${keys.slice(i, i + 100).join(' ')}`);
      for (const v of r.values!) out.set(v.key.toString('latin1'), v.data.toString('latin1'));
    }
    return out;
  } finally {
    c.close();
  }
}

export { EXPECT_LINE, EXPECT_LINES, EXPECT_QUIET, EXPECT_VALUES, sleep };

/**
 * A cluster behind the proxy and a lone memcached, with one client on each:
 * `both(script)` sends the same bytes to the lone memcached and to the proxy
 * and returns their answers, in that order.
 */
export interface SideBySide {
  c: Cluster;
  lone: Memcached;
  /** Client of the proxy. */
  p: MemcacheClient;
  /** Client of the lone memcached. */
  d: MemcacheClient;
  both(script: string): Promise<[string, string]>;
  stop(): Promise<void>;
}

export async function startSideBySide(options: ClusterOptions = {}): Promise<SideBySide> {
  const [c, lone] = await Promise.all([startCluster(options), Memcached.start()]);
  const [p, d] = await Promise.all([MemcacheClient.connect(c.port), direct(lone)]);
  return {
    c,
    lone,
    p,
    d,
    async both(script) {
      return [await d.script(script), await p.script(script)];
    },
    async stop() {
      p.close();
      d.close();
      await Promise.all([c.stop(), lone.kill()]);
    },
  };
}

/**
 * Bytes an in-process msproxy has read from these clients' connections (a peek at its
 * sessions): a test that needs a command to be in msproxy waits on it, instead of a sleep.
 */
export function bytesReadFrom(proxy: Proxy, ...clients: MemcacheClient[]): number {
  const sessions = (proxy as unknown as { sessions: Map<net.Socket, unknown> }).sessions;
  const ports = new Set(clients.map((c) => c.socket.localPort));
  let n = 0;
  for (const socket of sessions.keys()) if (ports.has(socket.remotePort)) n += socket.bytesRead;
  return n;
}

/** Requests msproxy has sent to node `node` and awaits replies for (a peek at its connections). */
export function inflightOn(proxy: Proxy, node: number): number {
  const conns = (proxy.nodes[node] as unknown as { conns: ({ inflight: number } | null)[] }).conns;
  return conns.reduce((n, conn) => n + (conn?.inflight ?? 0), 0);
}

/**
 * `stats` of the msproxy (or memcached) at `port`, on a connection of its own; with `group`,
 * `stats <group>` after it on the same connection (so from one worker), merged in.
 */
export async function statsAt(port: number, group = ''): Promise<Map<string, string>> {
  const c = await MemcacheClient.connect(port);
  try {
    const rows = await statsOf(c);
    if (group === '') return rows;
    const text = replyText(await c.request(`stats ${group}`));
    for (const line of text.split('\r\n')) {
      const [tag, name, value] = line.split(' ');
      if (tag === 'STAT') rows.set(name!, value!);
    }
    return rows;
  } finally {
    c.close();
  }
}
