/**
 * Replication routes: what each command does across a key's replicas, and how
 * their replies combine into the one reply the client sees. The rules are the
 * README's consistency model:
 *
 * - Reads go to the first healthy replica (the primary unless it is down);
 *   a transport failure moves on to the next one; a miss is checked on the
 *   next replica and, if found there, served and written back (read repair).
 *   gat/gats and mg with T also give the other replicas the new TTL.
 * - Plain writes (set, delete, touch, plain ms/md) go to every healthy
 *   replica; the client's reply is the best one (success over miss), and
 *   SERVER_ERROR only when no replica answered.
 * - Conditional writes (add, replace, cas, append, prepend, incr, decr and
 *   conditional meta commands) are decided by one authority, the first
 *   healthy replica. Only on success is the resulting item read back from the
 *   authority (`mg v f t`) and written to the other replicas (`ms F T`):
 *   value, flags and remaining TTL, never a replay of the command. A request
 *   that never reached the authority (refused connection, node down) is
 *   decided by the next replica instead.
 * - cas tokens carry the index of the node that issued them (when replicas >
 *   1), so a token is only ever checked against that node: a token from
 *   another node is sent as a cas unique no item has, which memcached answers
 *   EXISTS (or NOT_FOUND), exactly as for any stale token.
 * - Commands on one key take effect in arrival order (see KeyOrder); every
 *   request for a key uses that key's lane (connection) on each node.
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
  metaKey,
  serverError,
} from '../protocol/encoder.js';
import { Request } from '../protocol/request.js';
import {
  EXPECT_LINE,
  EXPECT_QUIET,
  EXPECT_VALUES,
  type Expectation,
  type Reply,
  type Value,
  equals,
  startsWith,
} from '../protocol/response-parser.js';
import type { Stats } from '../stats.js';
import { EXCLUSIVE, KeyOrder, type Kind, READ, Ticket, WRITE } from './key-order.js';
import { keyHash, parseMetaFlags } from './meta.js';
import type { Recovery } from './recovery.js';
import type { Ring } from './ring.js';

export type Out = Buffer | Buffer[] | null;
/** Nodes to use for a key, in order; may be shared with the ring: never changed. */
type Route = Uint16Array;
export type Done = (out: Out) => void;

export interface RouterOptions {
  replicas: number;
  ackMode: 'sync' | 'async';
  /** What `version` answers. */
  version: string;
  /** msproxy's own version, for stats. */
  proxyVersion: string;
  /** This process's worker index, and how many there are (stats only). */
  worker?: number;
  workers?: number;
}

const CRLF = R.CRLF;
const SP = Buffer.from(' ');
const MN = Buffer.from('mn\r\n');
const CAS_NODE_SHIFT = 56n;
const CAS_MASK = (1n << CAS_NODE_SHIFT) - 1n;
const NO_REPLICA = serverError('no replica available');
/**
 * A cas unique no item has (memcached's counter starts at 1 and would need
 * 2^64 writes to get there); sent for a token another node issued, so the
 * node answers EXISTS/NOT_FOUND exactly as for any stale token.
 */
const CAS_NEVER = (1n << 64n) - 1n;

type ReplyOrErr = Reply | BackendError;
type Success = (r: Reply) => boolean;

function isReply(r: ReplyOrErr | undefined): r is Reply {
  return r !== undefined && !(r instanceof Error);
}

/** A failure that proves the request never reached the node: safe to send elsewhere. */
function notSent(e: BackendError): boolean {
  return e.code === 'MSP_BACKEND_CONNECT' || e.code === 'MSP_NODE_DOWN';
}

function noop(): void {}

/** A plain `md` of `key` on every replica (how msproxy mirrors memcached's unlink on a failed set). */
export function unlinkRequest(key: Buffer): Request {
  const raw = encodeMeta('md', key, '');
  const req = new Request('md', raw, raw.length);
  req.keys = [key];
  req.wireKeys = [metaKey(key).token];
  return req;
}

export class Router {
  private readonly nodes: readonly BackendNode[];
  private readonly ring: Ring;
  private readonly options: RouterOptions;
  private readonly stats: Stats;
  private readonly encodeCas: boolean;
  readonly order = new KeyOrder();
  /** Outage logs for fenced rejoin; null when not wired (unit use). */
  recovery: Recovery | null = null;

  constructor(nodes: readonly BackendNode[], ring: Ring, options: RouterOptions, stats: Stats) {
    this.nodes = nodes;
    this.ring = ring;
    this.options = options;
    this.stats = stats;
    this.encodeCas = options.replicas > 1;
  }

  /**
   * Healthy replicas of a key, primary first. When all are up (almost always)
   * this is the ring's shared replica set, so a lookup allocates nothing.
   */
  private healthy(key: Buffer): Route {
    const set = this.ring.replicas(key, this.options.replicas);
    for (let i = 0; i < set.length; i++) {
      if (!this.nodes[set[i]!]!.isUp) return set.filter((n) => this.nodes[n]!.isUp);
    }
    return set;
  }

  /**
   * Healthy replicas whose copy of the key can be trusted: without those a
   * rejoin fenced for it (see Recovery). Reads and authorities use these.
   */
  private trusted(key: Buffer): Route {
    const route = this.healthy(key);
    const rec = this.recovery;
    // Hot path: nothing is fenced almost always, and then no second array is needed.
    if (rec === null || !rec.anyFenced) return route;
    return route.filter((n) => !rec.isFenced(n, key));
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
        return this.plain(req, this.forward(req), plainSuccess, done);
      case 'add':
      case 'replace':
      case 'append':
      case 'prepend':
      case 'incr':
      case 'decr': {
        if (req.cmd !== 'incr' && req.cmd !== 'decr') this.stats.cmdSet++;
        const data = this.forward(req);
        return this.conditional(req, () => data, classicSuccess, done);
      }
      case 'cas':
        this.stats.cmdSet++;
        return this.cas(req, done);
      case 'ms':
        this.stats.cmdSet++;
        return this.metaWrite(req, done);
      case 'md':
      case 'ma':
        return this.metaWrite(req, done);
      case 'mg':
        return this.metaGet(req, done);
      case 'me':
        return this.metaDebug(req, done);
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

  /** A write of `key` is being made without the replicas that are down: log it for them. */
  private missedByDown(key: Buffer): void {
    const rec = this.recovery;
    if (rec === null) return;
    const order = this.ring.order(key);
    for (let i = 0; i < this.options.replicas; i++) {
      const n = order[i]!;
      if (!this.nodes[n]!.isUp) rec.missed(n, key);
    }
  }

  /** A write of `key` failed (or may have failed) on `node`. */
  private missed(node: number, key: Buffer): void {
    this.recovery?.missed(node, key);
  }

  /** Run `run` once the key allows a command of `kind` (KeyOrder). */
  private admit(kind: Kind, hash: number, run: () => void): void {
    if (this.order.tryAcquire(kind, hash)) run();
    else this.order.wait(new Ticket(kind, run), [hash]);
  }

  /** The bytes to forward for a classic command: the client's own, minus `noreply`. */
  private forward(req: Request): Buffer | Buffer[] {
    if (!req.noreply) return req.raw;
    const line = req.raw.subarray(0, req.contentEnd);
    if (req.lineLength === req.raw.length) return [line, CRLF];
    return [line, CRLF, req.raw.subarray(req.lineLength)];
  }

  /**
   * A meta command line rebuilt with the C token replaced by `cas`; with
   * `quiet` false, also without `q`. The data block (ms) is appended unchanged.
   */
  private metaLine(req: Request, cas: bigint | null, quiet: boolean): Buffer[] {
    const out: Buffer[] = [Buffer.from(req.cmd, 'latin1'), SP, req.wireKeys[0]!];
    if (req.cmd === 'ms') out.push(SP, Buffer.from(String(req.bytes), 'latin1'));
    for (const t of req.args) {
      if (t[0] === 0x71 /* q */ && !quiet) continue;
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
    hash: number,
    data: Buffer | readonly Buffer[],
    expect: Expectation,
    cb: (r: ReplyOrErr) => void,
  ): void {
    this.nodes[node]!.send(hash, data, expect, (err, reply) => {
      if (err !== null) {
        this.countError(err);
        cb(err);
      } else {
        cb(reply!);
      }
    });
  }

  private countError(err: BackendError): void {
    if (err.code === 'MSP_BACKEND_TIMEOUT') this.stats.backendTimeouts++;
    else if (err.code !== 'MSP_NODE_DOWN') this.stats.backendErrors++;
  }

  /**
   * Send a quiet meta command as the client sent it, followed by `mn`: the
   * node itself decides which reply its `q` suppresses (absent reply).
   */
  private sendQuiet(
    node: number,
    hash: number,
    data: Buffer | readonly Buffer[],
    cb: (r: ReplyOrErr) => void,
  ): void {
    this.send(node, hash, data, EXPECT_QUIET, cb);
    this.send(node, hash, MN, EXPECT_LINE, noop);
  }

  /** A meta write whose `q` is passed on to the nodes. */
  private static quietMeta(req: Request): boolean {
    return req.noreply && (req.cmd === 'ms' || req.cmd === 'md' || req.cmd === 'ma');
  }

  /** Token a client sees for cas unique `cas` issued by `node`. */
  private casOut(node: number, cas: bigint): bigint {
    if (!this.encodeCas) return cas;
    return (BigInt(node + 1) << CAS_NODE_SHIFT) | (cas & CAS_MASK);
  }

  /**
   * The cas unique to send to `node` for a client's token: the token's own
   * value if `node` issued it, else one that matches no item. 0 passes as is:
   * memcached gives it a meaning of its own (ma: no compare).
   */
  private casFor(node: number, token: bigint): bigint {
    if (!this.encodeCas || token === 0n) return token;
    if (Number(token >> CAS_NODE_SHIFT) - 1 !== node) return CAS_NEVER;
    return token & CAS_MASK;
  }

  // ------------------------------------------------------------------ reads

  private read(req: Request, done: Done): void {
    const keys = req.keys;
    const n = keys.length;
    this.stats.cmdGet += n;
    if (req.cmd === 'gat' || req.cmd === 'gats') this.stats.cmdTouch += n;
    if (n === 0) return done(R.END);
    if (n === 1 && (req.cmd === 'get' || req.cmd === 'gets')) return this.readOne(req, done);
    const hashes = keys.map(keyHash);
    const release = (out: Out): void => {
      for (const h of hashes) this.order.release(READ, h);
      done(out);
    };
    const run = (): void => this.readRun(req, hashes, release);
    if (this.order.tryAcquireReads(hashes)) run();
    else this.order.wait(new Ticket(READ, run), hashes);
  }

  /**
   * A single-key get or gets, the session store's read: a hit on the first
   * replica costs one request and, for get, forwards the node's reply as it
   * came. Anything else (a miss, a failure) carries on in readRun.
   */
  private readOne(req: Request, done: Done): void {
    const hash = keyHash(req.keys[0]!);
    if (this.order.tryAcquire(READ, hash)) this.readOneRun(req, hash, done);
    else this.order.wait(new Ticket(READ, () => this.readOneRun(req, hash, done)), [hash]);
  }

  private readOneRun(req: Request, hash: number, done: Done): void {
    const key = req.keys[0]!;
    const route = this.trusted(key);
    const node = route[0];
    if (node === undefined) {
      this.order.release(READ, hash);
      this.stats.unavailable++;
      return done(NO_REPLICA);
    }
    this.nodes[node]!.send(hash, req.raw, EXPECT_VALUES, (err, r) => {
      let missed = false;
      if (err !== null) {
        this.countError(err);
      } else if (!r!.isError) {
        const values = r!.values!;
        const v = values[0];
        if (v !== undefined && values.length === 1 && v.keyIs(key)) {
          this.stats.getHits++;
          let out: Out;
          if (req.cmd === 'gets' && this.encodeCas) {
            const rewritten = this.rewriteValueCas(v, node);
            out = Buffer.isBuffer(rewritten) ? [rewritten, R.END] : [...rewritten, R.END];
          } else {
            out = r!.raw.length > 0 ? r!.raw : [v.raw, R.END];
          }
          this.order.release(READ, hash);
          return done(out);
        }
        missed = true;
      }
      const release = (out: Out): void => {
        this.order.release(READ, hash);
        done(out);
      };
      this.readRun(req, [hash], release, { route, attempt: 1, missed });
    });
  }

  /**
   * A read of every key in `req`. `from` continues a single-key read whose
   * replica `attempt - 1` missed (`missed`) or failed.
   */
  private readRun(
    req: Request,
    hashes: number[],
    done: Done,
    from?: { route: Route; attempt: number; missed: boolean },
  ): void {
    const keys = req.keys;
    const n = keys.length;
    const withCas = req.cmd === 'gets' || req.cmd === 'gats';
    const touch = req.cmd === 'gat' || req.cmd === 'gats';
    const results: (Buffer | Buffer[] | null)[] = new Array<Buffer | Buffer[] | null>(n).fill(null);
    const routes = from === undefined ? keys.map((k) => this.trusted(k)) : [from.route];
    let outstanding = 0;
    let finished = false;
    // A key no replica could answer for: a miss would be a lie (a session store would log the
    // user out), so the whole reply is an error, as memcached has no per-key error in a get.
    let unavailable = false;
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
    const track = {
      start: (): void => {
        outstanding++;
      },
      done: (): void => {
        outstanding--;
        finish();
      },
      unavailable: (): void => {
        unavailable = true;
      },
    };

    if (touch) {
      // The replicas not read from get the new TTL too, or the copy a failover would
      // serve expires on the old schedule.
      for (let i = 0; i < n; i++) {
        const route = routes[i]!;
        if (route.length < this.options.replicas) this.missedByDown(keys[i]!);
        if (route.length < 2) continue;
        const msg = Buffer.concat([
          Buffer.from('touch ', 'latin1'),
          keys[i]!,
          Buffer.from(` ${req.exptime}\r\n`, 'latin1'),
        ]);
        for (let a = 1; a < route.length; a++) {
          outstanding++;
          const node = route[a]!;
          this.send(node, hashes[i]!, msg, EXPECT_LINE, (r) => {
            if (!isReply(r) || r.isError) {
              this.stats.replicationFailures++;
              this.missed(node, keys[i]!);
            }
            track.done();
          });
        }
      }
    }

    // Ask the replica at `attempt` of each key in `indices`, one request per (node, lane).
    const fetch = (indices: number[], attempt: number): void => {
      // Few groups (at most nodes x lanes): a linear scan beats a Map here.
      const ids: number[] = [];
      const groups: number[][] = [];
      for (const i of indices) {
        const node = routes[i]![attempt];
        if (node === undefined) {
          unavailable = true; // every replica failed or is down
          continue;
        }
        const id = node * 65536 + this.nodes[node]!.laneOf(hashes[i]!);
        const at = ids.indexOf(id);
        if (at >= 0) groups[at]!.push(i);
        else {
          ids.push(id);
          groups.push([i]);
        }
      }
      for (const group of groups) {
        const node = routes[group[0]!]![attempt]!;
        outstanding++;
        const data =
          attempt === 0 && group.length === n && !req.noreply ? req.raw : this.readLine(req, group);
        const primaryRead = attempt === 0;
        this.send(node, hashes[group[0]!]!, data, EXPECT_VALUES, (r) => {
          outstanding--;
          if (!isReply(r) || r.isError) {
            // Transport failure or an error reply: ask the next replica.
            fetch(group, attempt + 1);
            finish();
            return;
          }
          const values = r.values!;
          let p = 0;
          for (const i of group) {
            const v = values[p];
            if (v !== undefined && v.keyIs(keys[i]!)) {
              p++;
              results[i] = withCas ? this.rewriteValueCas(v, node) : v.raw;
              this.stats.getHits++;
              if (!primaryRead) this.stats.failoverReads++;
            } else {
              this.fallback(
                req,
                i,
                hashes[i]!,
                routes[i]!,
                attempt + 1,
                results,
                withCas,
                false,
                track,
              );
            }
          }
          finish();
        });
      }
    };
    if (from === undefined) {
      fetch(
        Array.from({ length: n }, (_, i) => i),
        0,
      );
    } else if (from.missed) {
      this.fallback(req, 0, hashes[0]!, from.route, from.attempt, results, withCas, false, track);
    } else {
      fetch([0], from.attempt);
    }
    finish();
  }

  /**
   * `get k1 k2 ...` (or gets/gat/gats) for a subset of the client's keys, as
   * one buffer: copying a few short keys costs less than a write per key.
   */
  private readLine(req: Request, group: number[]): Buffer {
    const touch = req.cmd === 'gat' || req.cmd === 'gats';
    const head = touch ? `${req.cmd} ${req.exptime}` : req.cmd;
    let size = head.length + 2;
    for (const i of group) size += 1 + req.keys[i]!.length;
    const out = Buffer.allocUnsafe(size);
    let at = out.write(head, 0, 'latin1');
    for (const i of group) {
      out[at++] = 0x20;
      at += req.keys[i]!.copy(out, at);
    }
    out[at++] = 0x0d;
    out[at] = 0x0a;
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
   * before it that missed (add-mode, so a newer write that got there first wins).
   */
  private fallback(
    req: Request,
    i: number,
    hash: number,
    route: Route,
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
    this.send(node, hash, encodeMeta('mg', key, `v f t c${touch}`), EXPECT_LINE, (r) => {
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
          for (let a = 0; a < attempt; a++) this.repair(route[a]!, hash, key, data, flags, ttl);
        }
      } else {
        // A miss, a transport failure or an error: try the replica after it.
        // Start that before finishing this one, so the reply is not sent early.
        const miss = isReply(r) && equals(r.line.subarray(0, 2), 'EN');
        this.fallback(req, i, hash, route, attempt + 1, results, withCas, failed || !miss, track);
      }
      track.done();
    });
  }

  /**
   * Write a found item back to a replica that missed it. Sent before the read
   * releases its key, so a later write to the key lands after it.
   */
  private repair(
    node: number,
    hash: number,
    key: Buffer,
    data: Buffer,
    flags: number,
    ttl: number,
  ): void {
    this.stats.readRepairs++;
    const msg = encodeMetaSet(key, data, flags, ttl < 0 ? 0 : ttl, ' ME');
    this.send(node, hash, msg, EXPECT_LINE, noop);
  }

  // ----------------------------------------------------------------- writes

  /** Plain write: every healthy replica; the best reply wins. */
  private plain(req: Request, data: Buffer | Buffer[], success: Success, done: Done): void {
    const hash = keyHash(req.key);
    this.admit(WRITE, hash, () => this.writeAll(req, hash, data, success, done));
  }

  private writeAll(
    req: Request,
    hash: number,
    data: Buffer | Buffer[],
    success: Success,
    done: Done,
  ): void {
    const route = this.healthy(req.key);
    if (route.length === 0) {
      this.stats.unavailable++;
      return done(req.noreply && !req.cmd.startsWith('m') ? null : NO_REPLICA);
    }
    if (route.length < this.options.replicas) this.missedByDown(req.key);
    const replies: (ReplyOrErr | undefined)[] = new Array<ReplyOrErr | undefined>(route.length);
    let left = route.length;
    let answered = false;
    const answer = (): void => {
      answered = true;
      let chosen = -1;
      for (let i = 0; i < replies.length && chosen < 0; i++) {
        const r = replies[i];
        if (isReply(r) && success(r)) chosen = i;
      }
      for (let i = 0; i < replies.length && chosen < 0; i++) if (isReply(replies[i])) chosen = i;
      if (chosen < 0) {
        this.stats.unavailable++;
        return done(req.noreply && !req.cmd.startsWith('m') ? null : NO_REPLICA);
      }
      done(this.clientReply(req, replies[chosen] as Reply, route[chosen]!));
    };
    const quiet = Router.quietMeta(req);
    // A set or delete replaces a node's copy whole (touch does not).
    const replaces = req.cmd !== 'touch';
    route.forEach((node, idx) => {
      const cb = (r: ReplyOrErr): void => {
        replies[idx] = r;
        left--;
        if (!isReply(r) || r.isError) this.missed(node, req.key);
        else if (replaces && success(r)) this.recovery?.unfence(node, req.key);
        if ((!isReply(r) || r.isError) && route.length > 1) this.stats.replicationFailures++;
        if (left === 0 && req.cmd !== 'set' && route.length > 1)
          this.disagreed(req, route, replies);
        if (answered) return;
        if (left === 0) return answer();
        // async: answer as soon as the authority answered successfully.
        if (this.options.ackMode === 'async' && idx === 0 && isReply(r) && success(r)) answer();
      };
      if (quiet) this.sendQuiet(node, hash, data, cb);
      else this.send(node, hash, data, EXPECT_LINE, cb);
    });
  }

  /**
   * A delete or touch found the item on one replica and not on another: the
   * replicas disagreed (a copy landed after a delete that raced it, say, from
   * another msproxy process). The ones without it are fixed like a missed
   * write: brought in line with the freshest replica.
   */
  private disagreed(req: Request, route: Route, replies: (ReplyOrErr | undefined)[]): void {
    let found = false;
    for (const r of replies) if (isReply(r) && !r.isError && !notFound(r)) found = true;
    if (!found) return;
    for (let i = 0; i < replies.length; i++) {
      const r = replies[i];
      if (isReply(r) && notFound(r)) this.missed(route[i]!, req.key);
    }
  }

  /**
   * The reply bytes for the client: nothing for noreply or a reply a quiet
   * meta command suppressed, else the node's reply with its cas token (meta
   * `c`) rewritten to name `node`.
   */
  private clientReply(req: Request, r: Reply, node: number): Out {
    if (r.absent) return null;
    if (req.noreply) {
      if (!req.cmd.startsWith('m')) return null;
      // mg with q: only a miss is suppressed (ms/md/ma were sent quiet, the node decided).
      if (req.cmd === 'mg' && equals(r.line.subarray(0, 2), 'EN')) return null;
    }
    if (!this.encodeCas || !req.cmd.startsWith('m') || !req.hasFlag('c')) return r.raw;
    return rewriteMetaCas(r, (cas) => this.casOut(node, cas));
  }

  /**
   * Conditional write: the authority decides; on success the resulting item
   * is copied to the other healthy replicas. `build` gives the bytes for a
   * given authority (a cas token depends on it).
   */
  private conditional(
    req: Request,
    build: (authority: number) => Buffer | Buffer[],
    success: Success,
    done: Done,
  ): void {
    const hash = keyHash(req.key);
    this.admit(EXCLUSIVE, hash, () => {
      this.decide(req, hash, this.trusted(req.key), 0, build, success, done);
    });
  }

  private decide(
    req: Request,
    hash: number,
    route: Route,
    attempt: number,
    build: (authority: number) => Buffer | Buffer[],
    success: Success,
    done: Done,
  ): void {
    const authority = route[attempt];
    const release = (out: Out): void => {
      this.order.release(EXCLUSIVE, hash);
      done(out);
    };
    if (authority === undefined) {
      this.stats.unavailable++;
      return release(req.noreply && !req.cmd.startsWith('m') ? null : NO_REPLICA);
    }
    const cb = (r: ReplyOrErr): void => {
      if (!isReply(r)) {
        // Never reached the authority: the next replica decides.
        if (notSent(r)) return this.decide(req, hash, route, attempt + 1, build, success, done);
        // The command may or may not have run: never replay it elsewhere. The rejoin
        // of the authority makes its copy agree with the other replicas again.
        this.missed(authority, req.key);
        this.stats.unavailable++;
        return release(
          req.noreply && !req.cmd.startsWith('m') ? null : serverError(`backend failed: ${r.code}`),
        );
      }
      const out = this.clientReply(req, r, authority);
      // Every other healthy replica gets the result, fenced ones too (the copy replaces theirs).
      const targets = this.healthy(req.key).filter((n) => n !== authority);
      if (!success(r)) return release(out);
      // Replicas down (or refused before the authority answered) miss the result.
      this.missedByDown(req.key);
      if (targets.length === 0) return release(out);
      const deleted = req.cmd === 'md';
      if (this.options.ackMode === 'async') {
        done(out);
        this.copy(hash, req.key, authority, targets, deleted, () =>
          this.order.release(EXCLUSIVE, hash),
        );
      } else {
        this.copy(hash, req.key, authority, targets, deleted, () => release(out));
      }
    };
    const data = build(authority);
    if (Router.quietMeta(req)) this.sendQuiet(authority, hash, data, cb);
    else this.send(authority, hash, data, EXPECT_LINE, cb);
  }

  /** Copy the authority's current item for `key` to `targets` (or delete it there). */
  private copy(
    hash: number,
    key: Buffer,
    authority: number,
    targets: Route,
    deleted: boolean,
    cb: () => void,
  ): void {
    let left = targets.length;
    const one = (t: number, r: ReplyOrErr): void => {
      if (!isReply(r) || r.isError) {
        this.stats.replicationFailures++;
        this.missed(t, key);
      } else {
        this.recovery?.unfence(t, key);
      }
      if (--left === 0) cb();
    };
    const del = (): void => {
      for (const t of targets) {
        this.send(t, hash, encodeMeta('md', key, ''), EXPECT_LINE, (r) => one(t, r));
      }
    };
    if (deleted) return del();
    this.send(authority, hash, encodeMeta('mg', key, 'v f t'), EXPECT_LINE, (r) => {
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
      for (const t of targets) this.send(t, hash, msg, EXPECT_LINE, (r2) => one(t, r2));
    });
  }

  private cas(req: Request, done: Done): void {
    const tail = req.raw.subarray(req.lineLength);
    const build = (authority: number): Buffer[] => [
      Buffer.concat([
        Buffer.from('cas ', 'latin1'),
        req.key,
        Buffer.from(
          ` ${req.flags} ${req.exptime} ${req.bytes} ${this.casFor(authority, req.cas)}\r\n`,
          'latin1',
        ),
      ]),
      tail,
    ];
    this.conditional(req, build, classicSuccess, done);
  }

  /** ms, md, ma: plain ones go everywhere, conditional ones through the authority. */
  private metaWrite(req: Request, done: Done): void {
    const hasCas = req.hasFlag('C');
    const mode = req.mode;
    const plain =
      !hasCas &&
      ((req.cmd === 'ms' && (mode === 0 || mode === 0x53) /* S */ && !req.hasFlag('I')) ||
        req.cmd === 'md');
    // q is passed on (sendQuiet); only a cas token is rewritten.
    if (plain) return this.plain(req, req.raw, metaSuccess, done);
    const build = hasCas
      ? (authority: number): Buffer | Buffer[] =>
          this.metaLine(req, this.casFor(authority, req.cas), true)
      : (): Buffer => req.raw;
    this.conditional(req, build, metaSuccess, done);
  }

  // ------------------------------------------------------------------ other

  /** mg: a read, with failover and read repair; the client's flags shape the reply. */
  private metaGet(req: Request, done: Done): void {
    this.stats.cmdGet++;
    const hash = keyHash(req.key);
    this.admit(READ, hash, () =>
      this.metaGetRun(req, hash, (out) => {
        this.order.release(READ, hash);
        done(out);
      }),
    );
  }

  private metaGetRun(req: Request, hash: number, done: Done): void {
    const route = this.trusted(req.key);
    // q is emulated here (only EN is suppressed), so the fallback can tell a miss.
    const data = req.noreply ? this.metaLine(req, null, false) : req.raw;
    const ttl = req.flagValue('T');
    if (ttl !== undefined && route.length < this.options.replicas) this.missedByDown(req.key);
    let touching = 0;
    let answer: Out | undefined;
    const finish = (out: Out): void => {
      answer = out;
      if (touching === 0) done(out);
    };
    if (ttl !== undefined && route.length > 1) {
      // mg with T touches: the other replicas get the new TTL too.
      const msg = Buffer.concat([
        Buffer.from('touch ', 'latin1'),
        req.key,
        Buffer.from(` ${ttl.toString('latin1')}\r\n`, 'latin1'),
      ]);
      for (let a = 1; a < route.length; a++) {
        touching++;
        const node = route[a]!;
        this.send(node, hash, msg, EXPECT_LINE, (r) => {
          if (!isReply(r) || r.isError) this.missed(node, req.key);
          if (--touching === 0 && answer !== undefined) done(answer);
        });
      }
    }
    const attempt = (a: number): void => {
      const node = route[a];
      if (node === undefined) {
        this.stats.unavailable++;
        return finish(NO_REPLICA);
      }
      this.send(node, hash, data, EXPECT_LINE, (r) => {
        if (!isReply(r)) return attempt(a + 1);
        const miss = equals(r.line.subarray(0, 2), 'EN');
        const next = route[a + 1];
        if (miss && next !== undefined) {
          // Look further; repair this node if a later replica has it.
          return this.send(next, hash, encodeMeta('mg', req.key, 'v f t'), EXPECT_LINE, (f) => {
            if (isReply(f) && startsWith(f.line, 'VA ')) {
              const meta = parseMetaFlags(f.line);
              const t = Number(meta.get('t') ?? '-1');
              if (t !== 0)
                this.repair(node, hash, req.key, f.data, Number(meta.get('f') ?? '0'), t);
              this.stats.failoverReads++;
              // Answer in the client's own format from the replica that has it.
              return this.send(next, hash, data, EXPECT_LINE, (g) => {
                if (!isReply(g)) return finish(this.clientReply(req, r, node));
                this.stats.getHits++;
                finish(this.clientReply(req, g, next));
              });
            }
            this.stats.getMisses++;
            finish(this.clientReply(req, r, node));
          });
        }
        if (miss) this.stats.getMisses++;
        else if (!r.isError) this.stats.getHits++;
        finish(this.clientReply(req, r, node));
      });
    };
    attempt(0);
  }

  /** me (debug): answered by the first healthy replica that answers. */
  private metaDebug(req: Request, done: Done): void {
    const hash = keyHash(req.key);
    this.admit(READ, hash, () => {
      const route = this.trusted(req.key);
      const release = (out: Out): void => {
        this.order.release(READ, hash);
        done(out);
      };
      const attempt = (a: number): void => {
        const node = route[a];
        if (node === undefined) return release(NO_REPLICA);
        this.send(node, hash, req.raw, EXPECT_LINE, (r) =>
          isReply(r) ? release(r.raw) : attempt(a + 1),
        );
      };
      attempt(0);
    });
  }

  /** flush_all: every node that is up (the session orders it with the client's other commands). */
  private flushAll(req: Request, done: Done): void {
    const up = this.nodes.filter((n) => n.isUp);
    if (up.length === 0) return done(req.noreply ? null : NO_REPLICA);
    // A node that misses a flush holds items its replicas dropped: flushed on rejoin.
    for (const n of this.nodes) if (!n.isUp) this.recovery?.missedFlush(n.index);
    const data = this.forward(req);
    let left = up.length;
    let ok = false;
    for (const n of up) {
      this.send(n.index, 0, data, EXPECT_LINE, (r) => {
        if (isReply(r) && equals(r.line, 'OK')) ok = true;
        else this.recovery?.missedFlush(n.index);
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
      ['proxy_version', this.options.proxyVersion],
      ['proxy_worker', this.options.worker ?? 0],
      ['proxy_workers', this.options.workers ?? 1],
      ['proxy_client_errors', s.clientErrors],
      ['proxy_binary_refused', s.binaryRefused],
      ['proxy_failover_reads', s.failoverReads],
      ['proxy_read_repairs', s.readRepairs],
      ['proxy_replication_failures', s.replicationFailures],
      ['proxy_unavailable', s.unavailable],
      ['proxy_backend_timeouts', s.backendTimeouts],
      ['proxy_backend_errors', s.backendErrors],
      ['proxy_keys_ordered', this.order.size],
      ['proxy_replicas', this.options.replicas],
      ['proxy_nodes', this.nodes.length],
      ['proxy_nodes_up', this.nodes.filter((n) => n.isUp).length],
    ];
    if (this.recovery !== null) rows.push(...this.recovery.rows());
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

/** Plain write success: STORED, DELETED, TOUCHED, meta HD (or a suppressed quiet reply). */
function plainSuccess(r: Reply): boolean {
  const line = r.line;
  return (
    equals(line, 'STORED') || equals(line, 'DELETED') || equals(line, 'TOUCHED') || metaSuccess(r)
  );
}

/** NOT_FOUND, or a meta NF: the node has no such item. */
function notFound(r: Reply): boolean {
  return equals(r.line, 'NOT_FOUND') || equals(r.line.subarray(0, 2), 'NF');
}

/** Conditional write success: STORED, or a number for incr/decr. */
function classicSuccess(r: Reply): boolean {
  const line = r.line;
  if (equals(line, 'STORED')) return true;
  const c = line[0];
  return c !== undefined && c >= 0x30 && c <= 0x39;
}

/** A meta reply's status is success (HD, VA, OK for old servers), or a quiet success (absent). */
function metaSuccess(r: Reply): boolean {
  if (r.absent) return true;
  const line = r.line;
  return (
    equals(line.subarray(0, 2), 'HD') ||
    startsWith(line, 'VA ') ||
    equals(line.subarray(0, 2), 'OK')
  );
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
