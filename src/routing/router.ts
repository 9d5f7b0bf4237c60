/**
 * Replication routes: what each command does across a key's replicas, and how
 * their replies combine into the one reply the client sees. The rules are the
 * README's consistency model:
 *
 * - Reads go to the first healthy replica (the primary unless it is down);
 *   a transport failure moves on to the next one; a miss is checked on the
 *   next replica and, if found there, served and written back (read repair).
 * - Plain writes (set, delete, touch, plain ms/md) go to every healthy
 *   replica; the client's reply is the best one (success over miss), and
 *   SERVER_ERROR only when no replica answered.
 * - Conditional writes (add, replace, cas, append, prepend, incr, decr and
 *   conditional meta commands) are decided by one authority, the first
 *   healthy replica. Only on success is the resulting item read back from the
 *   authority (`mg v f t`) and written to the other replicas (`ms F T`):
 *   value, flags and remaining TTL, never a replay of the command.
 * - cas tokens carry the index of the node that issued them (when replicas >
 *   1), so a token is only ever checked against that node: a token from
 *   another node is a clean EXISTS.
 *
 * Every route calls `done` exactly once, with the bytes for the client (null
 * for noreply).
 */

import type { BackendNode } from '../backend/node.js';
import type { BackendError } from '../errors.js';
import {
  R,
  encodeMeta,
  encodeMetaSet,
  encodeStats,
  encodeVersion,
  serverError,
} from '../protocol/encoder.js';
import type { Request } from '../protocol/request.js';
import {
  EXPECT_LINE,
  EXPECT_VALUES,
  type Reply,
  type Value,
  equals,
  startsWith,
} from '../protocol/response-parser.js';
import type { Stats } from '../stats.js';
import type { Ring } from './ring.js';

export type Out = Buffer | Buffer[] | null;
export type Done = (out: Out) => void;

export interface RouterOptions {
  replicas: number;
  ackMode: 'sync' | 'async';
  version: string;
}

const CRLF = R.CRLF;
const SP = Buffer.from(' ');
const CAS_NODE_SHIFT = 56n;
const CAS_MASK = (1n << CAS_NODE_SHIFT) - 1n;
const NO_REPLICA = serverError('no replica available');

type ReplyOrErr = Reply | BackendError;

function isReply(r: ReplyOrErr | undefined): r is Reply {
  return r !== undefined && !(r instanceof Error);
}

/** FNV-1a of the key: picks a connection lane, so one key's requests stay ordered on a node. */
function lane(key: Buffer): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key[i]!, 0x01000193);
  return h >>> 0;
}

/** A meta reply's status is success (HD, VA, OK for old servers). */
function metaSuccess(line: Buffer): boolean {
  return (
    equals(line.subarray(0, 2), 'HD') ||
    startsWith(line, 'VA ') ||
    equals(line.subarray(0, 2), 'OK')
  );
}

export class Router {
  private readonly nodes: readonly BackendNode[];
  private readonly ring: Ring;
  private readonly options: RouterOptions;
  private readonly stats: Stats;
  private readonly encodeCas: boolean;

  constructor(nodes: readonly BackendNode[], ring: Ring, options: RouterOptions, stats: Stats) {
    this.nodes = nodes;
    this.ring = ring;
    this.options = options;
    this.stats = stats;
    this.encodeCas = options.replicas > 1;
  }

  /** Healthy replicas of a key, primary first. */
  private healthy(key: Buffer): number[] {
    const order = this.ring.order(key);
    const out: number[] = [];
    for (let i = 0; i < this.options.replicas; i++) {
      const n = order[i]!;
      if (this.nodes[n]!.isUp) out.push(n);
    }
    return out;
  }

  execute(req: Request, done: Done): void {
    switch (req.cmd) {
      case 'get':
      case 'gets':
      case 'gat':
      case 'gats':
        return this.read(req, done);
      case 'set':
      case 'delete':
      case 'touch':
        if (req.cmd === 'set') this.stats.cmdSet++;
        if (req.cmd === 'touch') this.stats.cmdTouch++;
        return this.writeAll(req, this.forward(req), done);
      case 'add':
      case 'replace':
      case 'append':
      case 'prepend':
      case 'incr':
      case 'decr':
        if (req.cmd !== 'incr' && req.cmd !== 'decr') this.stats.cmdSet++;
        return this.conditional(req, this.forward(req), done);
      case 'cas':
        this.stats.cmdSet++;
        return this.cas(req, done);
      case 'ms':
        this.stats.cmdSet++;
        return this.metaWrite(req, done);
      case 'md':
        return this.metaWrite(req, done);
      case 'ma':
        return this.metaWrite(req, done);
      case 'mg':
        return this.metaGet(req, done);
      case 'me':
        return this.first(req, done);
      case 'mn':
        return done(R.MN);
      case 'flush_all':
        this.stats.cmdFlush++;
        return this.flushAll(req, done);
      case 'version':
        return done(encodeVersion(this.options.version));
      case 'verbosity':
        return done(req.noreply ? null : R.OK);
      case 'stats':
        return done(this.statsReply(req));
      case 'quit':
        return done(null);
      case 'admin':
        return done(
          serverError(
            `msproxy does not forward ${req.args[0]?.toString('latin1') ?? 'this command'}`,
          ),
        );
    }
  }

  // ---------------------------------------------------------------- helpers

  /** The bytes to forward: the client's own, minus `noreply`/`q` (the proxy always waits for the reply). */
  private forward(req: Request): Buffer | Buffer[] {
    if (!req.noreply) return req.raw;
    if (req.cmd.startsWith('m')) return this.metaLine(req, null);
    const line = req.raw.subarray(0, req.contentEnd);
    if (req.lineLength === req.raw.length) return [line, CRLF];
    return [line, CRLF, req.raw.subarray(req.lineLength)];
  }

  /**
   * Rebuild a meta command line without `q`, optionally replacing the C token.
   * The data block (ms) is appended unchanged.
   */
  private metaLine(req: Request, cas: bigint | null): Buffer[] {
    const out: Buffer[] = [Buffer.from(req.cmd, 'latin1'), SP, req.wireKeys[0]!];
    if (req.cmd === 'ms') out.push(SP, Buffer.from(String(req.bytes), 'latin1'));
    for (const t of req.args) {
      if (t[0] === 0x71 /* q */) continue;
      if (t[0] === 0x43 /* C */ && cas !== null) {
        out.push(SP, Buffer.from(`C${cas}`, 'latin1'));
        continue;
      }
      out.push(SP, t);
    }
    out.push(CRLF);
    if (req.cmd === 'ms') out.push(req.raw.subarray(req.lineLength));
    return out;
  }

  private send(
    node: number,
    key: Buffer,
    data: Buffer | readonly Buffer[],
    expect: typeof EXPECT_LINE | typeof EXPECT_VALUES,
    cb: (r: ReplyOrErr) => void,
  ): void {
    this.nodes[node]!.send(lane(key), data, expect, (err, reply) => {
      if (err !== null) {
        if (err.code === 'MSP_BACKEND_TIMEOUT') this.stats.backendTimeouts++;
        else if (err.code !== 'MSP_NODE_DOWN') this.stats.backendErrors++;
        cb(err);
      } else {
        cb(reply!);
      }
    });
  }

  /** Token a client sees for cas unique `cas` issued by `node`. */
  private casOut(node: number, cas: bigint): bigint {
    if (!this.encodeCas) return cas;
    return (BigInt(node + 1) << CAS_NODE_SHIFT) | (cas & CAS_MASK);
  }

  /** The node a client's cas token belongs to (-1 if none) and the node's own cas unique. */
  private casIn(token: bigint): { node: number; cas: bigint } {
    if (!this.encodeCas) return { node: -1, cas: token };
    return { node: Number(token >> CAS_NODE_SHIFT) - 1, cas: token & CAS_MASK };
  }

  // ------------------------------------------------------------------ reads

  private read(req: Request, done: Done): void {
    const keys = req.keys;
    const n = keys.length;
    this.stats.cmdGet += n;
    if (req.cmd === 'gat' || req.cmd === 'gats') this.stats.cmdTouch += n;
    if (n === 0) return done(R.END);
    const withCas = req.cmd === 'gets' || req.cmd === 'gats';
    const results: (Buffer | Buffer[] | null)[] = new Array<Buffer | Buffer[] | null>(n).fill(null);
    const routes = keys.map((k) => this.healthy(k));
    let outstanding = 0;
    let finished = false;
    // A key no replica could answer for: a miss would be a lie (a session store would log the
    // user out), so the whole reply is an error, as memcached has no per-key error in a get.
    let unavailable = false;
    const markUnavailable = (): void => {
      unavailable = true;
    };
    const finish = (): void => {
      if (finished || outstanding > 0) return;
      finished = true;
      if (unavailable) {
        this.stats.unavailable++;
        return done(NO_REPLICA);
      }
      const out: Buffer[] = [];
      for (const r of results) {
        if (r === null) continue;
        if (Buffer.isBuffer(r)) out.push(r);
        else out.push(...r);
      }
      out.push(R.END);
      done(out);
    };

    // attempt[i]: index into routes[i] of the node being asked.
    const fetch = (indices: number[], attempt: number): void => {
      // Group by the node at this attempt.
      const groups = new Map<number, number[]>();
      for (const i of indices) {
        const node = routes[i]![attempt];
        if (node === undefined) {
          unavailable = true; // every replica failed or is down
          continue;
        }
        let g = groups.get(node);
        if (g === undefined) groups.set(node, (g = []));
        g.push(i);
      }
      for (const [node, group] of groups) {
        outstanding++;
        const data =
          attempt === 0 && group.length === n && !req.noreply ? req.raw : this.readLine(req, group);
        const primaryRead = attempt === 0;
        this.send(node, keys[group[0]!]!, data, EXPECT_VALUES, (r) => {
          outstanding--;
          if (!isReply(r) || r.isError) {
            // Transport failure or an error reply: ask the next replica.
            fetch(group, attempt + 1);
            finish();
            return;
          }
          const values = r.values!;
          let p = 0;
          const missed: number[] = [];
          for (const i of group) {
            const v = values[p];
            if (v !== undefined && v.key.equals(keys[i]!)) {
              p++;
              results[i] = withCas ? this.rewriteValueCas(v, node) : v.raw;
              this.stats.getHits++;
              if (!primaryRead) this.stats.failoverReads++;
            } else {
              missed.push(i);
            }
          }
          for (const i of missed) {
            this.fallback(req, i, routes[i]!, attempt + 1, results, withCas, false, {
              start: () => outstanding++,
              done: () => {
                outstanding--;
                finish();
              },
              unavailable: markUnavailable,
            });
          }
          finish();
        });
      }
    };
    fetch(
      Array.from({ length: n }, (_, i) => i),
      0,
    );
    finish();
  }

  /** `get k1 k2 ...` (or gets/gat/gats) for a subset of the client's keys. */
  private readLine(req: Request, group: number[]): Buffer[] {
    const out: Buffer[] = [Buffer.from(req.cmd, 'latin1')];
    if (req.cmd === 'gat' || req.cmd === 'gats') out.push(Buffer.from(` ${req.exptime}`, 'latin1'));
    for (const i of group) out.push(SP, req.keys[i]!);
    out.push(CRLF);
    return out;
  }

  private rewriteValueCas(v: Value, node: number): Buffer | Buffer[] {
    if (!this.encodeCas || v.cas === undefined) return v.raw;
    const head = `VALUE ${v.key.toString('latin1')} ${v.flags} ${v.bytes} ${this.casOut(node, v.cas)}\r\n`;
    return [Buffer.from(head, 'latin1'), v.raw.subarray(v.dataOffset)];
  }

  /**
   * A key the replica at `attempt - 1` did not have: look on the next replicas
   * with `mg v f t c` and, if found, serve it and write it back to the nodes
   * before it that missed (add-mode, so a concurrent newer write wins).
   */
  private fallback(
    req: Request,
    i: number,
    route: number[],
    attempt: number,
    results: (Buffer | Buffer[] | null)[],
    withCas: boolean,
    failed: boolean,
    track: { start(): void; done(): void; unavailable(): void },
  ): void {
    const key = req.keys[i]!;
    const node = route[attempt];
    if (node === undefined) {
      // Every replica after the one that missed also missed: a miss. If one of them could not
      // answer, it might hold the item (e.g. the primary restarted empty): not a miss.
      if (failed) track.unavailable();
      else this.stats.getMisses++;
      return;
    }
    track.start();
    const touch = req.cmd === 'gat' || req.cmd === 'gats' ? ` T${req.exptime}` : '';
    this.send(node, key, encodeMeta('mg', key, `v f t c${touch}`), EXPECT_LINE, (r) => {
      if (isReply(r) && startsWith(r.line, 'VA ')) {
        const meta = parseMetaFlags(r.line);
        const flags = Number(meta.get('f') ?? '0');
        const ttl = Number(meta.get('t') ?? '-1');
        const cas = BigInt(meta.get('c') ?? '0');
        const data = r.data;
        const head = `VALUE ${key.toString('latin1')} ${flags} ${data.length}${withCas ? ` ${this.casOut(node, cas)}` : ''}\r\n`;
        results[i] = [Buffer.from(head, 'latin1'), data, CRLF];
        this.stats.getHits++;
        this.stats.failoverReads++;
        if (ttl !== 0) {
          for (let a = 0; a < attempt; a++) this.repair(route[a]!, key, data, flags, ttl);
        }
      } else {
        // A miss, a transport failure or an error: try the replica after it.
        // Start that before finishing this one, so the reply is not sent early.
        const miss = isReply(r) && equals(r.line.subarray(0, 2), 'EN');
        this.fallback(req, i, route, attempt + 1, results, withCas, failed || !miss, track);
      }
      track.done();
    });
  }

  private repair(node: number, key: Buffer, data: Buffer, flags: number, ttl: number): void {
    this.stats.readRepairs++;
    const msg = encodeMetaSet(key, data, flags, ttl < 0 ? 0 : ttl, ' ME');
    this.send(node, key, msg, EXPECT_LINE, () => {});
  }

  // ----------------------------------------------------------------- writes

  /** Plain write: every healthy replica; the best reply wins. */
  private writeAll(
    req: Request,
    data: Buffer | Buffer[],
    done: Done,
    success = plainSuccess,
  ): void {
    const route = this.healthy(req.key);
    if (route.length === 0) {
      this.stats.unavailable++;
      return done(NO_REPLICA);
    }
    const replies: (ReplyOrErr | undefined)[] = new Array<ReplyOrErr | undefined>(route.length);
    let left = route.length;
    let answered = false;
    const answer = (): void => {
      answered = true;
      let chosen: Reply | undefined;
      for (const r of replies) {
        if (isReply(r) && success(r.line)) {
          chosen = r;
          break;
        }
      }
      if (chosen === undefined)
        for (const r of replies)
          if (isReply(r)) {
            chosen = r;
            break;
          }
      if (chosen === undefined) {
        this.stats.unavailable++;
        return done(req.noreply ? null : NO_REPLICA);
      }
      done(this.clientReply(req, chosen));
    };
    route.forEach((node, idx) => {
      this.send(node, req.key, data, EXPECT_LINE, (r) => {
        replies[idx] = r;
        left--;
        if ((!isReply(r) || r.isError) && route.length > 1) this.stats.replicationFailures++;
        if (answered) return;
        if (left === 0) return answer();
        // async: answer as soon as the authority answered successfully.
        if (this.options.ackMode === 'async' && idx === 0 && isReply(r)) answer();
      });
    });
  }

  /** The reply bytes for the client, honouring noreply / quiet meta. */
  private clientReply(req: Request, r: Reply): Out {
    if (req.noreply) {
      if (!req.cmd.startsWith('m')) return null;
      // Quiet meta: only the nominal reply is dropped.
      const nominal =
        req.cmd === 'mg'
          ? equals(r.line.subarray(0, 2), 'EN')
          : equals(r.line.subarray(0, 2), 'HD');
      if (nominal) return null;
    }
    return r.raw;
  }

  /**
   * Conditional write: the authority decides; on success the resulting item
   * is copied to the other healthy replicas.
   */
  private conditional(
    req: Request,
    data: Buffer | Buffer[],
    done: Done,
    isSuccess = classicSuccess,
  ): void {
    const route = this.healthy(req.key);
    const authority = route[0];
    if (authority === undefined) {
      this.stats.unavailable++;
      return done(NO_REPLICA);
    }
    this.send(authority, req.key, data, EXPECT_LINE, (r) => {
      if (!isReply(r)) {
        // The command may or may not have run: never replay it elsewhere.
        this.stats.unavailable++;
        return done(
          req.noreply && !req.cmd.startsWith('m') ? null : serverError(`backend failed: ${r.code}`),
        );
      }
      const reply = this.rewriteReplyCas(req, r, authority);
      if (!isSuccess(r.line) || route.length === 1)
        return done(this.clientReplyBytes(req, r, reply));
      const deleted = req.cmd === 'md';
      if (this.options.ackMode === 'async') {
        done(this.clientReplyBytes(req, r, reply));
        this.copy(req.key, authority, route.slice(1), deleted, () => {});
      } else {
        this.copy(req.key, authority, route.slice(1), deleted, () =>
          done(this.clientReplyBytes(req, r, reply)),
        );
      }
    });
  }

  private clientReplyBytes(req: Request, r: Reply, rewritten: Buffer | Buffer[]): Out {
    const base = this.clientReply(req, r);
    return base === null ? null : rewritten;
  }

  /** Copy the authority's current item for `key` to `targets` (or delete it there). */
  private copy(
    key: Buffer,
    authority: number,
    targets: number[],
    deleted: boolean,
    cb: () => void,
  ): void {
    let left = targets.length;
    const one = (r: ReplyOrErr): void => {
      if (!isReply(r) || r.isError) this.stats.replicationFailures++;
      if (--left === 0) cb();
    };
    const del = (): void => {
      for (const t of targets) this.send(t, key, encodeMeta('md', key, ''), EXPECT_LINE, one);
    };
    if (deleted) return del();
    this.send(authority, key, encodeMeta('mg', key, 'v f t'), EXPECT_LINE, (r) => {
      if (!isReply(r)) {
        // Cannot read back what the authority holds: the replicas' copies may be stale, drop them.
        this.stats.replicationFailures++;
        return del();
      }
      if (!startsWith(r.line, 'VA ')) return del(); // gone (expired or evicted) since
      const meta = parseMetaFlags(r.line);
      const ttl = Number(meta.get('t') ?? '-1');
      if (ttl === 0) return del();
      const msg = encodeMetaSet(key, r.data, Number(meta.get('f') ?? '0'), ttl < 0 ? 0 : ttl);
      for (const t of targets) this.send(t, key, msg, EXPECT_LINE, one);
    });
  }

  private cas(req: Request, done: Done): void {
    const { node, cas } = this.casIn(req.cas);
    const route = this.healthy(req.key);
    if (route.length === 0) {
      this.stats.unavailable++;
      return done(NO_REPLICA);
    }
    if (this.encodeCas && route[0] !== node) {
      // The token was issued by another node (or none): it cannot match the authority's item.
      return done(req.noreply ? null : R.EXISTS);
    }
    const line = Buffer.concat([
      Buffer.from('cas ', 'latin1'),
      req.key,
      Buffer.from(` ${req.flags} ${req.exptime} ${req.bytes} ${cas}\r\n`, 'latin1'),
    ]);
    this.conditional(req, [line, req.raw.subarray(req.lineLength)], done);
  }

  /** ms, md, ma: plain ones go everywhere, conditional ones through the authority. */
  private metaWrite(req: Request, done: Done): void {
    const hasCas = req.hasFlag('C');
    let data: Buffer | Buffer[] = this.forward(req);
    if (hasCas) {
      const { node, cas } = this.casIn(req.cas);
      const route = this.healthy(req.key);
      if (this.encodeCas && route[0] !== node) {
        // A failure status is never suppressed by q.
        return done(R.EX);
      }
      data = this.metaLine(req, cas);
    }
    const mode = req.mode;
    const plain =
      (req.cmd === 'ms' && !hasCas && (mode === 0 || mode === 0x53) /* S */ && !req.hasFlag('I')) ||
      (req.cmd === 'md' && !hasCas);
    if (plain) return this.writeAll(req, data, done, metaSuccess);
    return this.conditional(req, data, done, metaSuccess);
  }

  private rewriteReplyCas(req: Request, r: Reply, node: number): Buffer | Buffer[] {
    if (!this.encodeCas || !req.cmd.startsWith('m') || !req.hasFlag('c')) return r.raw;
    return rewriteMetaCas(r, (cas) => this.casOut(node, cas));
  }

  // ------------------------------------------------------------------ other

  /** mg: a read, with failover and read repair; the client's flags shape the reply. */
  private metaGet(req: Request, done: Done): void {
    this.stats.cmdGet++;
    const route = this.healthy(req.key);
    const data = this.forward(req);
    const attempt = (a: number): void => {
      const node = route[a];
      if (node === undefined) {
        this.stats.unavailable++;
        return done(NO_REPLICA);
      }
      this.send(node, req.key, data, EXPECT_LINE, (r) => {
        if (!isReply(r)) return attempt(a + 1);
        const miss = equals(r.line.subarray(0, 2), 'EN');
        if (miss && route[a + 1] !== undefined) {
          // Look further; repair this node if a later replica has it.
          return this.send(
            route[a + 1]!,
            req.key,
            encodeMeta('mg', req.key, 'v f t'),
            EXPECT_LINE,
            (f) => {
              if (isReply(f) && startsWith(f.line, 'VA ')) {
                const meta = parseMetaFlags(f.line);
                const ttl = Number(meta.get('t') ?? '-1');
                if (ttl !== 0)
                  this.repair(node, req.key, f.data, Number(meta.get('f') ?? '0'), ttl);
                this.stats.failoverReads++;
                // Answer in the client's own format from the replica that has it.
                return this.send(route[a + 1]!, req.key, data, EXPECT_LINE, (g) => {
                  if (!isReply(g)) return done(this.clientReply(req, r));
                  this.stats.getHits++;
                  done(this.clientReplyBytes(req, g, this.rewriteReplyCas(req, g, route[a + 1]!)));
                });
              }
              this.stats.getMisses++;
              done(this.clientReply(req, r));
            },
          );
        }
        if (miss) this.stats.getMisses++;
        else if (!r.isError) this.stats.getHits++;
        done(this.clientReplyBytes(req, r, this.rewriteReplyCas(req, r, node)));
      });
    };
    attempt(0);
  }

  /** Commands answered by one node (me): the first healthy replica. */
  private first(req: Request, done: Done): void {
    const node = this.healthy(req.key)[0];
    if (node === undefined) return done(NO_REPLICA);
    this.send(node, req.key, req.raw, EXPECT_LINE, (r) => done(isReply(r) ? r.raw : NO_REPLICA));
  }

  private flushAll(req: Request, done: Done): void {
    const up = this.nodes.filter((n) => n.isUp);
    if (up.length === 0) return done(req.noreply ? null : NO_REPLICA);
    const data = this.forward(req);
    let left = up.length;
    let ok = false;
    for (const n of up) {
      this.send(n.index, req.raw, data, EXPECT_LINE, (r) => {
        if (isReply(r) && equals(r.line, 'OK')) ok = true;
        if (--left === 0) done(req.noreply ? null : ok ? R.OK : NO_REPLICA);
      });
    }
  }

  private statsReply(req: Request): Buffer {
    const sub = req.args[0]?.toString('latin1');
    if (sub === 'reset') return R.RESET;
    if (sub === 'detail') return req.args[1]?.toString('latin1') === 'dump' ? R.END : R.OK;
    // Per-node sub-commands (settings, items, slabs, ...) have no proxy-wide meaning: empty list.
    if (sub !== undefined) return R.END;
    const s = this.stats;
    const now = Date.now();
    const rows: [string, string | number][] = [
      ['pid', process.pid],
      ['uptime', Math.floor((now - s.startedAt) / 1000)],
      ['time', Math.floor(now / 1000)],
      ['version', this.options.version],
      ['curr_connections', s.currConnections],
      ['total_connections', s.totalConnections],
      ['rejected_connections', s.rejectedConnections],
      ['cmd_get', s.cmdGet],
      ['cmd_set', s.cmdSet],
      ['cmd_touch', s.cmdTouch],
      ['cmd_flush', s.cmdFlush],
      ['get_hits', s.getHits],
      ['get_misses', s.getMisses],
      ['proxy_client_errors', s.clientErrors],
      ['proxy_failover_reads', s.failoverReads],
      ['proxy_read_repairs', s.readRepairs],
      ['proxy_replication_failures', s.replicationFailures],
      ['proxy_unavailable', s.unavailable],
      ['proxy_backend_timeouts', s.backendTimeouts],
      ['proxy_backend_errors', s.backendErrors],
      ['proxy_replicas', this.options.replicas],
      ['proxy_nodes', this.nodes.length],
      ['proxy_nodes_up', this.nodes.filter((n) => n.isUp).length],
    ];
    for (const n of this.nodes) {
      rows.push([`proxy_node_${n.index}_address`, n.address]);
      rows.push([`proxy_node_${n.index}_up`, n.isUp ? 1 : 0]);
      rows.push([`proxy_node_${n.index}_requests`, n.requests]);
      rows.push([`proxy_node_${n.index}_errors`, n.errors]);
      rows.push([`proxy_node_${n.index}_down_count`, n.downCount]);
    }
    return encodeStats(rows);
  }
}

/** Plain write success: STORED, DELETED, TOUCHED, meta HD. */
function plainSuccess(line: Buffer): boolean {
  return (
    equals(line, 'STORED') ||
    equals(line, 'DELETED') ||
    equals(line, 'TOUCHED') ||
    metaSuccess(line)
  );
}

/** Conditional write success: STORED, or a number for incr/decr. */
function classicSuccess(line: Buffer): boolean {
  if (equals(line, 'STORED')) return true;
  const c = line[0];
  return c !== undefined && c >= 0x30 && c <= 0x39;
}

/** Return flags of a meta reply line ("HD c12 t-1 f0" or "VA 5 f0 t-1") by letter. */
export function parseMetaFlags(line: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  const parts = line.toString('latin1').split(' ');
  const from = parts[0] === 'VA' ? 2 : 1;
  for (let i = from; i < parts.length; i++) {
    const p = parts[i]!;
    if (p.length > 0) out.set(p[0]!, p.slice(1));
  }
  return out;
}

/** Replace the c<cas> token of a meta reply line. */
function rewriteMetaCas(r: Reply, map: (cas: bigint) => bigint): Buffer | Buffer[] {
  const line = r.line.toString('latin1');
  const parts = line.split(' ');
  let changed = false;
  const from = parts[0] === 'VA' ? 2 : 1;
  for (let i = from; i < parts.length; i++) {
    const p = parts[i]!;
    if (p[0] === 'c' && /^c\d+$/.test(p)) {
      parts[i] = `c${map(BigInt(p.slice(1)))}`;
      changed = true;
    }
  }
  if (!changed) return r.raw;
  const head = Buffer.from(parts.join(' ') + '\r\n', 'latin1');
  return r.bytes < 0 ? head : [head, r.raw.subarray(r.dataOffset)];
}
