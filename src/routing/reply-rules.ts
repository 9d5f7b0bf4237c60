/**
 * How replica replies combine into the one reply a client sees: pure rules,
 * shared by every route (mcrouter's AllInitialRoute and FailoverRoute are the
 * model).
 *
 * - A plain write answers the best reply: a success from any replica beats a
 *   miss or an error; no reply at all is SERVER_ERROR.
 * - A read answers the first hit. A miss is answered only when every replica
 *   that could hold the item answered miss, or the replicas that answered
 *   miss are known complete (hold every acknowledged write); otherwise it
 *   would be a lie (a session store logs the user out), and the client gets
 *   SERVER_ERROR.
 * - A request that failed before reaching a node may be sent elsewhere; one
 *   that may have run is never replayed.
 */

import type { BackendError } from '../errors.js';
import { type Reply, equals, startsWith } from '../protocol/response-parser.js';

export type ReplyOrErr = Reply | BackendError;
export type Success = (r: Reply) => boolean;

export function isReply(r: ReplyOrErr | undefined): r is Reply {
  return r !== undefined && !(r instanceof Error);
}

/** A reply that is a usable answer: not a transport failure, not an error line. */
export function answered(r: ReplyOrErr): r is Reply {
  return isReply(r) && !r.isError;
}

/** A failure that proves the request never reached the node: safe to send elsewhere. */
export function notSent(e: BackendError): boolean {
  return e.code === 'MSP_BACKEND_CONNECT' || e.code === 'MSP_NODE_DOWN';
}

/** Plain write success: STORED, DELETED, TOUCHED, meta HD (or a suppressed quiet reply). */
export function plainSuccess(r: Reply): boolean {
  const line = r.line;
  return (
    equals(line, 'STORED') || equals(line, 'DELETED') || equals(line, 'TOUCHED') || metaSuccess(r)
  );
}

/** Conditional write success: STORED, or a number for incr/decr. */
export function classicSuccess(r: Reply): boolean {
  const line = r.line;
  if (equals(line, 'STORED')) return true;
  const c = line[0];
  return c !== undefined && c >= 0x30 && c <= 0x39;
}

/** A meta reply's status is success (HD, VA, OK for old servers), or a quiet success (absent). */
export function metaSuccess(r: Reply): boolean {
  if (r.absent) return true;
  const line = r.line;
  return (
    equals(line.subarray(0, 2), 'HD') ||
    startsWith(line, 'VA ') ||
    equals(line.subarray(0, 2), 'OK')
  );
}

/** NOT_FOUND, or a meta NF: the node has no such item. */
export function notFound(r: Reply): boolean {
  return equals(r.line, 'NOT_FOUND') || equals(r.line.subarray(0, 2), 'NF');
}

/** A meta get's miss (EN). */
export function metaMiss(r: Reply): boolean {
  return equals(r.line.subarray(0, 2), 'EN');
}

/**
 * The reply a plain write answers with: the first success, else the first
 * reply of any kind; -1 when no replica answered at all.
 */
export function bestReply(replies: readonly (ReplyOrErr | undefined)[], success: Success): number {
  for (let i = 0; i < replies.length; i++) {
    const r = replies[i];
    if (isReply(r) && success(r)) return i;
  }
  for (let i = 0; i < replies.length; i++) if (isReply(replies[i])) return i;
  return -1;
}

/**
 * Whether a read that found no item may answer a miss. `set` is the key's
 * replica set, `missedOn` the replicas that answered miss, `complete` whether
 * a node is known to hold every acknowledged write (see Recovery).
 */
export function missIsTrue(
  set: ArrayLike<number>,
  missedOn: readonly number[],
  complete: (node: number) => boolean,
): boolean {
  if (missedOn.length === 0) return false;
  let all = true;
  for (let i = 0; i < set.length && all; i++) all = missedOn.includes(set[i]!);
  return all || missedOn.every(complete);
}
