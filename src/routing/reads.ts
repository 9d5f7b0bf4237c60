/**
 * Reads: get, gets, gat, gats (any number of keys) and mg, under one rule.
 *
 * Each key walks its trusted replicas in ring order:
 * - a hit answers (from a replica after the primary: a failover read);
 * - a failure (transport error, timeout, error reply) moves on to the next
 *   replica with the same request;
 * - a miss looks on the next replicas with `mg v f t c`; an item found there
 *   is served and written back, in add mode, to the replicas that missed it
 *   (read repair);
 * - a key with no hit answers a miss only when every replica that could hold
 *   it answered miss, or the ones that did are known complete
 *   (reply-rules.ts `missIsTrue`); otherwise SERVER_ERROR, and a multi-get
 *   with such a key fails whole (memcached has no per-key error).
 * gat, gats and mg with T also give the other replicas the new TTL.
 *
 * A read holds its keys (KeyOrder READ) until it answers, so a later write
 * waits for its second look and its repair. Every read calls `done` once.
 */

import { DISTRUSTED } from '../errors.js';
import { R, encodeTouch } from '../protocol/encoder.js';
import type { Request } from '../protocol/request.js';
import { Hit } from '../protocol/result.js';
import { EXPECT_LINE, EXPECT_VALUES, type Reply } from '../protocol/response-parser.js';
import { type Item, readItem } from './item.js';
import { READ, Ticket } from './key-order.js';
import { keyHash } from './meta.js';
import { metaMiss, answered, type ReplyOrErr } from './reply-rules.js';
import {
  type Done,
  NO_REPLICA,
  type Out,
  type Route,
  type RouteContext,
  metaLine,
} from './route-context.js';

const CRLF = R.CRLF;

/** get, gets, gat, gats. */
export function classicRead(ctx: RouteContext, req: Request, done: Done): void {
  const keys = req.keys;
  const n = keys.length;
  ctx.stats.cmdGet += n;
  if (req.cmd === 'gat' || req.cmd === 'gats') ctx.stats.cmdTouch += n;
  if (n === 0) return done(R.END);
  if (n === 1 && (req.cmd === 'get' || req.cmd === 'gets')) return readOne(ctx, req, done);
  const hashes = keys.map(keyHash);
  ctx.order.runReads(hashes, () =>
    new Read(ctx, req, hashes, (out) => {
      for (const h of hashes) ctx.order.release(READ, h);
      done(out);
    }).start(),
  );
}

/**
 * A single-key get or gets, the session store's read: a hit on the first
 * replica costs one request and, for get, forwards the node's reply as it
 * came. Anything else (a miss, a failure) carries on as a Read.
 */
function readOne(ctx: RouteContext, req: Request, done: Done): void {
  const hash = keyHash(req.keys[0]!);
  // No closure on the uncontended path: this is every session read.
  if (ctx.order.tryAcquire(READ, hash)) readOneRun(ctx, req, hash, done);
  else ctx.order.wait(new Ticket(READ, () => readOneRun(ctx, req, hash, done)), [hash]);
}

function readOneRun(ctx: RouteContext, req: Request, hash: number, done: Done): void {
  const key = req.keys[0]!;
  const route = ctx.trusted(key);
  const node = route[0];
  if (node === undefined) {
    ctx.order.release(READ, hash);
    return done(ctx.unavailable(req));
  }
  ctx.nodes[node]!.send(hash, req.raw, EXPECT_VALUES, (sent, r) => {
    let err = sent;
    if (err !== null) ctx.countError(err);
    else if (!r!.isError) {
      const values = r!.values!;
      const v = values[0];
      if (!ctx.answers(node, key)) {
        // A write the node missed was logged while this read was in flight: ask the next replica.
        err = DISTRUSTED;
      } else if (v !== undefined && values.length === 1 && v.keyIs(key)) {
        ctx.stats.getHits++;
        const token = v.cas === undefined ? undefined : ctx.cas.out(node, v.cas);
        ctx.order.release(READ, hash);
        return done(new Hit(r!.raw, v, token));
      }
    }
    const release = (out: Out): void => {
      ctx.order.release(READ, hash);
      done(out);
    };
    new Read(ctx, req, [hash], release, route).resume(err ?? r!, node);
  });
}

/** mg: one key, the client's flags shape the reply. */
export function metaRead(ctx: RouteContext, req: Request, done: Done): void {
  ctx.stats.cmdGet++;
  const hash = keyHash(req.key);
  ctx.order.run(READ, hash, () =>
    new Read(ctx, req, [hash], (out) => {
      ctx.order.release(READ, hash);
      done(out);
    }).start(),
  );
}

/** me (debug): answered by the first trusted replica that answers. */
export function metaDebug(ctx: RouteContext, req: Request, done: Done): void {
  const hash = keyHash(req.key);
  ctx.order.run(READ, hash, () => {
    const route = ctx.trusted(req.key);
    const release = (out: Out): void => {
      ctx.order.release(READ, hash);
      done(out);
    };
    const attempt = (a: number): void => {
      const node = route[a];
      if (node === undefined) return release(NO_REPLICA);
      ctx.send(node, hash, req.raw, EXPECT_LINE, (r) =>
        answered(r) ? release(r.raw) : attempt(a + 1),
      );
    };
    attempt(0);
  });
}

/** One read request walking its keys' replicas (see the module comment). */
class Read {
  private readonly ctx: RouteContext;
  private readonly req: Request;
  private readonly hashes: readonly number[];
  private readonly done: (out: Out) => void;
  private readonly meta: boolean;
  private readonly withCas: boolean;
  private readonly routes: Route[];
  /** Per key: the bytes answered for it (null: nothing yet, or a miss). */
  private readonly results: Out[];
  /** Per key: the replicas that answered miss, once one has. */
  private readonly missedOn: (number[] | undefined)[];
  /** mg: the first miss as its node answered it (EN, in the client's own form). */
  private miss: Reply | null = null;
  /** A key no replica could answer for: the whole reply is SERVER_ERROR. */
  private failed = false;
  private outstanding = 0;
  private finished = false;

  constructor(
    ctx: RouteContext,
    req: Request,
    hashes: readonly number[],
    done: (out: Out) => void,
    route?: Route,
  ) {
    this.ctx = ctx;
    this.req = req;
    this.hashes = hashes;
    this.done = done;
    this.meta = req.cmd === 'mg';
    this.withCas = req.cmd === 'gets' || req.cmd === 'gats';
    const n = req.keys.length;
    this.routes = route !== undefined ? [route] : req.keys.map((k) => ctx.trusted(k));
    this.results = new Array<Out>(n).fill(null);
    this.missedOn = new Array<number[] | undefined>(n);
  }

  start(): void {
    this.touchOthers();
    const all: number[] = [];
    for (let i = 0; i < this.req.keys.length; i++) all.push(i);
    this.fetch(all, 0);
    this.finish();
  }

  /** Carry on a single-key read whose first replica (`node`) answered `r` with no hit. */
  resume(r: ReplyOrErr, node: number): void {
    if (answered(r)) {
      this.missedOn[0] = [node];
      this.look(0, 1);
    } else {
      this.fetch([0], 1);
    }
    this.finish();
  }

  /** gat, gats, mg with T: the replicas not read from get the new TTL too. */
  private touchOthers(): void {
    const req = this.req;
    const ttl =
      req.cmd === 'gat' || req.cmd === 'gats'
        ? req.exptime
        : this.meta
          ? req.flagValue('T')
          : undefined;
    if (ttl === undefined) return;
    const ctx = this.ctx;
    req.keys.forEach((key, i) => {
      const route = this.routes[i]!;
      if (ctx.leftOut(route)) ctx.missedByDown(key);
      if (route.length < 2) return;
      const msg = encodeTouch(key, ttl);
      for (let a = 1; a < route.length; a++) {
        const node = route[a]!;
        this.outstanding++;
        ctx.send(node, this.hashes[i]!, msg, EXPECT_LINE, (r) => {
          if (!answered(r)) {
            ctx.stats.replicationFailures++;
            ctx.missed(node, key);
          }
          this.outstanding--;
          this.finish();
        });
      }
    });
  }

  /**
   * Ask the replica at `attempt` of each key in `indices` with the client's
   * own request form, one request per (node, lane).
   */
  private fetch(indices: readonly number[], attempt: number): void {
    // Few groups (at most nodes x lanes): a linear scan beats a Map here.
    const ids: number[] = [];
    const groups: number[][] = [];
    for (const i of indices) {
      const node = this.routes[i]![attempt];
      if (node === undefined) {
        this.end(i);
        continue;
      }
      const id = node * 65536 + this.ctx.nodes[node]!.laneOf(this.hashes[i]!);
      const at = ids.indexOf(id);
      if (at >= 0) groups[at]!.push(i);
      else {
        ids.push(id);
        groups.push([i]);
      }
    }
    for (const group of groups) this.fetchGroup(group, attempt);
  }

  private fetchGroup(group: number[], attempt: number): void {
    const node = this.routes[group[0]!]![attempt]!;
    const req = this.req;
    this.outstanding++;
    if (this.meta) {
      // q is emulated (only EN is suppressed), so a miss can be told and looked further for.
      const data = req.noreply ? metaLine(req) : req.raw;
      return this.ctx.send(node, this.hashes[0]!, data, EXPECT_LINE, (r) => {
        this.outstanding--;
        if (!answered(r) || !this.ctx.answers(node, req.key)) this.fetch(group, attempt + 1);
        else if (metaMiss(r)) {
          this.miss ??= r;
          (this.missedOn[0] ??= []).push(node);
          this.look(0, attempt + 1);
        } else this.hit(0, attempt, this.ctx.clientReply(req, r, node));
        this.finish();
      });
    }
    const data = attempt === 0 && group.length === req.keys.length ? req.raw : readLine(req, group);
    this.ctx.send(node, this.hashes[group[0]!]!, data, EXPECT_VALUES, (r) => {
      this.outstanding--;
      if (!answered(r)) {
        this.fetch(group, attempt + 1);
        return this.finish();
      }
      const values = r.values!;
      let p = 0;
      let again: number[] | null = null;
      for (const i of group) {
        const key = req.keys[i]!;
        const v = values[p];
        const found = v !== undefined && v.keyIs(key);
        if (found) p++;
        if (!this.ctx.answers(node, key)) (again ??= []).push(i);
        else if (found) this.hit(i, attempt, this.withCas ? this.ctx.cas.value(v, node) : v.raw);
        else {
          (this.missedOn[i] ??= []).push(node);
          this.look(i, attempt + 1);
        }
      }
      if (again !== null) this.fetch(again, attempt + 1);
      this.finish();
    });
  }

  private hit(i: number, attempt: number, out: Out): void {
    this.results[i] = out;
    this.ctx.stats.getHits++;
    if (attempt > 0) this.ctx.stats.failoverReads++;
  }

  /**
   * Key `i` missed on a replica before `attempt`: look on the replica at
   * `attempt` with `mg v f t c`; if it has the item, serve it and repair the
   * replicas that missed.
   */
  private look(i: number, attempt: number): void {
    const node = this.routes[i]![attempt];
    if (node === undefined) return this.end(i);
    const ctx = this.ctx;
    const req = this.req;
    const key = req.keys[i]!;
    const hash = this.hashes[i]!;
    const touch = req.cmd === 'gat' || req.cmd === 'gats' ? ` T${req.exptime}` : '';
    this.outstanding++;
    readItem(
      ctx.via,
      node,
      hash,
      key,
      (item) => {
        this.outstanding--;
        if (item === undefined || !ctx.answers(node, key)) this.look(i, attempt + 1);
        else if (item === null) {
          this.missedOn[i]!.push(node);
          this.look(i, attempt + 1);
        } else {
          for (const m of this.missedOn[i]!) ctx.repair(m, hash, key, item);
          if (this.meta) this.serveMeta(node, attempt);
          else this.hit(i, attempt, this.valueBlock(key, item, node));
        }
        this.finish();
      },
      touch,
    );
  }

  /** mg found on `node` after a miss: answer in the client's own form from there. */
  private serveMeta(node: number, attempt: number): void {
    const req = this.req;
    this.outstanding++;
    const data = req.noreply ? metaLine(req) : req.raw;
    this.ctx.send(node, this.hashes[0]!, data, EXPECT_LINE, (r) => {
      this.outstanding--;
      if (answered(r) && !metaMiss(r) && this.ctx.answers(node, req.key)) {
        this.hit(0, attempt, this.ctx.clientReply(req, r, node));
      } else this.look(0, attempt + 1);
      this.finish();
    });
  }

  private valueBlock(key: Buffer, item: Item, node: number): Buffer[] {
    const cas = this.withCas ? ` ${this.ctx.cas.out(node, BigInt(item.cas ?? '0'))}` : '';
    const head = `VALUE ${key.toString('latin1')} ${item.flags} ${item.data.length}${cas}\r\n`;
    return [Buffer.from(head, 'latin1'), item.data, CRLF];
  }

  /** Key `i` has no replica left to ask and no hit: a miss if that is known true. */
  private end(i: number): void {
    const ctx = this.ctx;
    const missedOn = this.missedOn[i];
    if (missedOn !== undefined && ctx.missTrue(this.req.keys[i]!, missedOn)) {
      ctx.stats.getMisses++;
      if (this.meta) this.results[i] = ctx.clientReply(this.req, this.miss!, missedOn[0]!);
    } else {
      this.failed = true;
    }
  }

  private finish(): void {
    if (this.finished || this.outstanding > 0) return;
    this.finished = true;
    if (this.failed) return this.done(this.ctx.unavailable(this.req));
    if (this.meta) return this.done(this.results[0]!);
    const out: Buffer[] = [];
    for (const r of this.results) {
      if (r === null) continue;
      if (Buffer.isBuffer(r)) out.push(r);
      else out.push(...r);
    }
    out.push(R.END);
    this.done(out);
  }
}

/**
 * `get k1 k2 ...` (or gets/gat/gats) for a subset of the client's keys, as
 * one buffer: copying a few short keys costs less than a write per key.
 */
function readLine(req: Request, group: readonly number[]): Buffer {
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
