/**
 * Conditional writes: add, replace, cas, append, prepend, incr, decr, and
 * the meta commands with a mode, a cas or invalidation (ma always).
 *
 * One authority decides: the first trusted replica. Only on success is the
 * resulting item read back from it and copied to the other healthy replicas
 * (item.ts: value, flags and remaining TTL; a delete for md), never a replay
 * of the command. A request that never reached the authority (refused
 * connection, node down) is decided by the next replica; one that may have
 * run (timeout, connection lost) answers SERVER_ERROR and is not retried.
 * The key is held (KeyOrder EXCLUSIVE) until the copy is on the other
 * replicas (sync), so no later command sees a replica without it.
 */

import { serverError } from '../protocol/encoder.js';
import type { Request } from '../protocol/request.js';
import { EXPECT_LINE } from '../protocol/response-parser.js';
import { readItem, storeItem } from './item.js';
import { EXCLUSIVE } from './key-order.js';
import { keyHash } from './meta.js';
import {
  type Success,
  answered,
  classicSuccess,
  isReply,
  metaSuccess,
  notSent,
  type ReplyOrErr,
} from './reply-rules.js';
import { type Done, type Out, type Route, type RouteContext, metaLine } from './route-context.js';
import { plainWrite, quietMeta } from './writes.js';

/** The bytes to send to a given authority (a cas token depends on it). */
type Build = (authority: number) => Buffer | readonly Buffer[];

export function conditionalWrite(
  ctx: RouteContext,
  req: Request,
  build: Build,
  success: Success,
  done: Done,
): void {
  const hash = keyHash(req.key);
  ctx.order.run(EXCLUSIVE, hash, () =>
    decide(ctx, req, hash, ctx.authorities(req.key), 0, build, success, done),
  );
}

/** add, replace, append, prepend, incr, decr: the client's bytes, without noreply. */
export function classicConditional(
  ctx: RouteContext,
  req: Request,
  data: Buffer | readonly Buffer[],
  done: Done,
): void {
  conditionalWrite(ctx, req, () => data, classicSuccess, done);
}

/** cas: the token is turned into the authority's own cas unique. */
export function casWrite(ctx: RouteContext, req: Request, done: Done): void {
  const tail = req.raw.subarray(req.lineLength);
  const build = (authority: number): Buffer[] => [
    Buffer.concat([
      Buffer.from('cas ', 'latin1'),
      req.key,
      Buffer.from(
        ` ${req.flags} ${req.exptime} ${req.bytes} ${ctx.cas.toNode(authority, req.cas)}\r\n`,
        'latin1',
      ),
    ]),
    tail,
  ];
  conditionalWrite(ctx, req, build, classicSuccess, done);
}

/** ms, md, ma: plain ones go everywhere, conditional ones through the authority. */
export function metaWrite(ctx: RouteContext, req: Request, done: Done): void {
  const hasCas = req.hasFlag('C');
  const mode = req.mode;
  const plain =
    !hasCas &&
    ((req.cmd === 'ms' && (mode === 0 || mode === 0x53) /* S */ && !req.hasFlag('I')) ||
      req.cmd === 'md');
  // q is passed on (sendQuiet); only a cas token is rewritten.
  if (plain) return plainWrite(ctx, req, req.raw, metaSuccess, done);
  const build: Build = hasCas
    ? (authority) => metaLine(req, ctx.cas.toNode(authority, req.cas), true)
    : () => req.raw;
  conditionalWrite(ctx, req, build, metaSuccess, done);
}

function decide(
  ctx: RouteContext,
  req: Request,
  hash: number,
  route: Route,
  attempt: number,
  build: Build,
  success: Success,
  done: Done,
): void {
  const authority = route[attempt];
  const release = (out: Out): void => {
    ctx.order.release(EXCLUSIVE, hash);
    ctx.ack(req.key, done, out);
  };
  if (authority === undefined) return release(ctx.unavailable(req));
  const cb = (r: ReplyOrErr): void => {
    if (!isReply(r)) {
      // Never reached the authority: the next replica decides.
      if (notSent(r)) return decide(ctx, req, hash, route, attempt + 1, build, success, done);
      // The command may or may not have run: never replay it elsewhere. The rejoin
      // of the authority makes its copy agree with the other replicas again.
      ctx.missed(authority, req.key);
      return release(ctx.unavailable(req, serverError(`backend failed: ${r.code}`)));
    }
    const out = ctx.clientReply(req, r, authority);
    if (!success(r)) return release(out);
    // Every other healthy replica gets the result, fenced ones too (the copy replaces theirs).
    const targets = ctx.healthy(req.key).filter((n) => n !== authority);
    // Replicas down (or refused before the authority answered) miss the result.
    ctx.missedByDown(req.key);
    if (targets.length === 0) return release(out);
    const deleted = req.cmd === 'md';
    if (ctx.options.ackMode === 'async') {
      // The client is answered now; the key stays held until the copy is made.
      ctx.ack(req.key, done, out);
      return copyResult(ctx, hash, req.key, authority, targets, deleted, () =>
        ctx.order.release(EXCLUSIVE, hash),
      );
    }
    copyResult(ctx, hash, req.key, authority, targets, deleted, () => release(out));
  };
  const data = build(authority);
  if (quietMeta(req)) ctx.sendQuiet(authority, hash, data, cb);
  else ctx.send(authority, hash, data, EXPECT_LINE, cb);
}

/** Copy the authority's current item for `key` to `targets` (or delete it there). */
function copyResult(
  ctx: RouteContext,
  hash: number,
  key: Buffer,
  authority: number,
  targets: Route,
  deleted: boolean,
  cb: () => void,
): void {
  let left = targets.length;
  const one = (t: number, r: ReplyOrErr): void => {
    if (!answered(r)) {
      ctx.stats.replicationFailures++;
      ctx.missed(t, key);
    } else {
      ctx.unfence(t, key);
    }
    if (--left === 0) cb();
  };
  const write = (msg: Buffer): void => {
    for (const t of targets) ctx.via(t, hash, msg, (r) => one(t, r));
  };
  if (deleted) return write(storeItem(key, null));
  readItem(ctx.via, authority, hash, key, (item) => {
    // Cannot read back what the authority holds: the replicas' copies may be stale, drop them.
    if (item === undefined) ctx.stats.replicationFailures++;
    write(storeItem(key, item ?? null));
  });
}
