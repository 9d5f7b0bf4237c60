/**
 * The router: takes each client command, whatever protocol it came in on,
 * to its route. The routes are the README's consistency model, one room each:
 *
 * - reads.ts: get, gets, gat, gats, mg, me (failover, read repair, the miss rule);
 * - writes.ts: plain writes to every healthy replica (set, delete, touch, plain ms/md);
 * - conditional.ts: writes one authority decides, then copied (add, cas, incr, ma, ...);
 * - local-commands.ts: flush_all, stats; version, verbosity, mn and quit are answered here.
 *
 * They share a RouteContext (replica choice, sends, outage logging); how
 * replica replies combine is in reply-rules.ts, cas tokens in cas-token.ts.
 * Commands on one key take effect in arrival order (KeyOrder), and every
 * request for a key uses that key's lane (connection) on each node.
 *
 * Every route calls `done` exactly once, with the bytes for the client (null
 * for noreply).
 */

import type { BackendNode } from '../backend/node.js';
import { R, encodeMeta, encodeVersion, metaKey, serverError } from '../protocol/encoder.js';
import { Request } from '../protocol/request.js';
import type { Stats } from '../stats.js';
import { casWrite, classicConditional, metaWrite } from './conditional.js';
import type { KeyOrder } from './key-order.js';
import { type StatsIdentity, flushAll, statsReply } from './local-commands.js';
import { classicRead, metaDebug, metaRead } from './reads.js';
import type { Recovery } from './recovery.js';
import { plainSuccess } from './reply-rules.js';
import type { Placement } from './placement.js';
import { type Done, RouteContext, type RouteOptions } from './route-context.js';
import { plainWrite } from './writes.js';

export type { Done, Out } from './route-context.js';
export type RouterOptions = RouteOptions & StatsIdentity;

const CRLF = R.CRLF;

/** A plain `md` of `key` on every replica (how msproxy mirrors memcached's unlink on a failed set). */
export function unlinkRequest(key: Buffer): Request {
  const raw = encodeMeta('md', key, '');
  const req = new Request('md', raw, raw.length);
  req.keys = [key];
  req.wireKeys = [metaKey(key).token];
  return req;
}

/** The bytes to forward for a classic command: the client's own, minus `noreply`. */
function forward(req: Request): Buffer | Buffer[] {
  if (!req.noreply) return req.raw;
  const line = req.raw.subarray(0, req.contentEnd);
  if (req.lineLength === req.raw.length) return [line, CRLF];
  return [line, CRLF, req.raw.subarray(req.lineLength)];
}

export class Router {
  private readonly ctx: RouteContext;
  private readonly id: StatsIdentity;

  constructor(
    nodes: readonly BackendNode[],
    placement: Placement,
    options: RouterOptions,
    stats: Stats,
  ) {
    this.ctx = new RouteContext(nodes, placement, options, stats);
    this.id = options;
  }

  /** Per-key admission order, shared with recovery's copies. */
  get order(): KeyOrder {
    return this.ctx.order;
  }

  /** A reload moved keys: cas tokens name their node from now on if there are replicas. */
  placementChanged(): void {
    this.ctx.cas.placementChanged(this.ctx.placement.copies);
  }

  set recovery(recovery: Recovery | null) {
    this.ctx.recovery = recovery;
  }

  execute(req: Request, done: Done): void {
    const ctx = this.ctx;
    const stats = ctx.stats;
    switch (req.cmd) {
      case 'get':
      case 'gets':
      case 'gat':
      case 'gats':
        return classicRead(ctx, req, done);
      case 'mg':
        return metaRead(ctx, req, done);
      case 'me':
        return metaDebug(ctx, req, done);
      case 'set':
      case 'delete':
      case 'touch':
        if (req.cmd === 'set') stats.cmdSet++;
        if (req.cmd === 'touch') stats.cmdTouch++;
        return plainWrite(ctx, req, forward(req), plainSuccess, done);
      case 'add':
      case 'replace':
      case 'append':
      case 'prepend':
        stats.cmdSet++;
        return classicConditional(ctx, req, forward(req), done);
      case 'incr':
      case 'decr':
        return classicConditional(ctx, req, forward(req), done);
      case 'cas':
        stats.cmdSet++;
        return casWrite(ctx, req, done);
      case 'ms':
        stats.cmdSet++;
        return metaWrite(ctx, req, done);
      case 'md':
      case 'ma':
        return metaWrite(ctx, req, done);
      case 'mn':
        return done(R.MN);
      case 'flush_all':
        stats.cmdFlush++;
        return flushAll(ctx, req, forward(req), done);
      case 'version':
        return done(encodeVersion(this.id.version));
      case 'verbosity':
        return done(req.noreply ? null : R.OK);
      case 'stats':
        return done(statsReply(ctx, req, this.id));
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
}
