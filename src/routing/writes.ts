/**
 * Plain writes: set, delete, touch, and ms/md without a mode, cas or
 * invalidation. They go to every healthy replica; the client gets the best
 * reply (reply-rules.ts `bestReply`: a success from any replica beats a
 * miss), and SERVER_ERROR only when no replica answered. A replica that is
 * down, or on which the write failed, gets the key in its outage log. A
 * delete or touch that finds the item on some replicas and not on others
 * brings those others in line like a missed write; one that finds it on
 * none answers NOT_FOUND only if that is known true. With a replica down,
 * the answer waits until every process knows it is (RouteContext.ack).
 *
 * A plain write holds nothing once sent (KeyOrder WRITE): each node's lane
 * for the key is FIFO, so everything after it stays in order.
 */

import type { Request } from '../protocol/request.js';
import { EXPECT_LINE, type Reply } from '../protocol/response-parser.js';
import { WRITE } from './key-order.js';
import { keyHash } from './meta.js';
import {
  type ReplyOrErr,
  type Success,
  answered,
  bestReply,
  isReply,
  notFound,
} from './reply-rules.js';
import type { Done, Route, RouteContext } from './route-context.js';

/** A meta write whose `q` is passed on to the nodes (the node decides what it hides). */
export function quietMeta(req: Request): boolean {
  return req.noreply && (req.cmd === 'ms' || req.cmd === 'md' || req.cmd === 'ma');
}

export function plainWrite(
  ctx: RouteContext,
  req: Request,
  data: Buffer | readonly Buffer[],
  success: Success,
  done: Done,
): void {
  const hash = keyHash(req.key);
  ctx.order.run(WRITE, hash, () => writeAll(ctx, req, hash, data, success, done));
}

function writeAll(
  ctx: RouteContext,
  req: Request,
  hash: number,
  data: Buffer | readonly Buffer[],
  success: Success,
  done: Done,
): void {
  const route = ctx.healthy(req.key);
  if (route.length === 0) return done(ctx.unavailable(req));
  if (ctx.leftOut(route)) ctx.missedByDown(req.key);
  const replies = new Array<ReplyOrErr | undefined>(route.length);
  let left = route.length;
  let answeredClient = false;
  const answer = (): void => {
    answeredClient = true;
    const chosen = bestReply(replies, success);
    if (chosen < 0) return done(ctx.unavailable(req));
    const reply = replies[chosen] as Reply;
    const out =
      notFound(reply) && !missProven(ctx, req, route, replies)
        ? ctx.unavailable(req)
        : ctx.clientReply(req, reply, route[chosen]!);
    ctx.ack(req.key, done, out);
  };
  const quiet = quietMeta(req);
  // A set or delete replaces a node's copy whole (touch does not).
  const replaces = req.cmd !== 'touch';
  route.forEach((node, idx) => {
    const cb = (r: ReplyOrErr): void => {
      replies[idx] = r;
      left--;
      if (!answered(r)) {
        ctx.missed(node, req.key);
        if (route.length > 1) ctx.stats.replicationFailures++;
      } else if (replaces && success(r)) ctx.unfence(node, req.key);
      if (left === 0 && req.cmd !== 'set' && route.length > 1) disagreed(ctx, req, route, replies);
      if (answeredClient) return;
      if (left === 0) return answer();
      // async: answer as soon as the authority answered successfully.
      if (ctx.options.ackMode === 'async' && idx === 0 && isReply(r) && success(r)) answer();
    };
    if (quiet) ctx.sendQuiet(node, hash, data, cb);
    else ctx.send(node, hash, data, EXPECT_LINE, cb);
  });
}

/**
 * Whether a delete or touch that found no item may say so (NOT_FOUND): by
 * the rule reads follow (reply-rules.ts `missIsTrue`), counting only the
 * replicas whose copy may be read. A miss on a copy not trusted (a node
 * another process has not replayed, a key it missed) proves nothing: the
 * item may be on a replica out of the route. The write still took effect
 * where it went, and is logged for the others; the client gets SERVER_ERROR.
 */
function missProven(
  ctx: RouteContext,
  req: Request,
  route: Route,
  replies: readonly (ReplyOrErr | undefined)[],
): boolean {
  const missedOn: number[] = [];
  for (let i = 0; i < replies.length; i++) {
    const r = replies[i];
    if (isReply(r) && notFound(r) && ctx.answers(route[i]!, req.key)) missedOn.push(route[i]!);
  }
  return ctx.missTrue(req.key, missedOn);
}

/**
 * A delete or touch found the item on one replica and not on another: the
 * replicas disagreed (a copy landed after a delete that raced it, say, from
 * another msproxy process, or one replica evicted it). The ones without it
 * are fixed like a missed write: brought in line with the freshest replica.
 * Only a copy that may be read counts as found: one not trusted (a node
 * another process has not replayed yet) may be what the others deleted.
 */
function disagreed(
  ctx: RouteContext,
  req: Request,
  route: Route,
  replies: readonly (ReplyOrErr | undefined)[],
): void {
  let found = false;
  for (let i = 0; i < replies.length; i++) {
    const r = replies[i];
    if (isReply(r) && !r.isError && !notFound(r) && ctx.answers(route[i]!, req.key)) found = true;
  }
  if (!found) return;
  for (let i = 0; i < replies.length; i++) {
    const r = replies[i];
    if (isReply(r) && notFound(r)) ctx.missed(route[i]!, req.key);
  }
}
