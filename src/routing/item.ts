/**
 * One item read from a node and written to another: the one way msproxy
 * moves data between replicas (read repair, a conditional write's copy, a
 * rejoin's replay, a re-sync's refill). The item is read with `mg <key> v f
 * t c` (value, client flags, remaining TTL, cas) and written with `ms <key>
 * F<flags> T<ttl>` (or removed with `md` when the source has none), so a copy
 * keeps flags and expiry exactly and never replays the client's command.
 */

import { encodeMeta, encodeMetaSet } from '../protocol/encoder.js';
import { type Reply, startsWith } from '../protocol/response-parser.js';
import { parseMetaFlags } from './meta.js';
import type { ReplyOrErr } from './reply-rules.js';
import { answered } from './reply-rules.js';

export interface Item {
  data: Buffer;
  flags: number;
  /** Remaining TTL as memcached reports it: -1 never expires, 0 expires within the second. */
  ttl: number;
  /** The item's cas unique on the node it was read from. */
  cas: string | undefined;
}

/** Sends one request to a node and calls back with its one reply or failure. */
export type Via = (
  node: number,
  hash: number,
  data: Buffer | readonly Buffer[],
  cb: (r: ReplyOrErr) => void,
) => void;

/** The item of an `mg ... v f t c` reply, or null for a miss (EN). */
export function itemOf(r: Reply): Item | null {
  if (!startsWith(r.line, 'VA ')) return null;
  const meta = parseMetaFlags(r.line);
  return {
    data: r.data,
    flags: Number(meta.get('f') ?? '0'),
    ttl: Number(meta.get('t') ?? '-1'),
    cas: meta.get('c'),
  };
}

/** Whether a copy of `item` would still hold anything (it is there and not expiring now). */
export function copyable(item: Item | null): item is Item {
  return item !== null && item.ttl !== 0;
}

/**
 * Read `key`'s item on `node`: the item, null for none, undefined when the
 * node could not answer. `touch` (` T<ttl>`) also gives it a new TTL.
 */
export function readItem(
  via: Via,
  node: number,
  hash: number,
  key: Buffer,
  cb: (item: Item | null | undefined) => void,
  touch = '',
): void {
  via(node, hash, encodeMeta('mg', key, `v f t c${touch}`), (r) =>
    cb(answered(r) ? itemOf(r) : undefined),
  );
}

/**
 * The request that makes a node hold `item` for `key` exactly (`extra` adds
 * meta flags, ` ME` for add mode), or removes it there when there is none.
 */
export function storeItem(key: Buffer, item: Item | null, extra = ''): Buffer {
  if (!copyable(item)) return encodeMeta('md', key, '');
  return encodeMetaSet(key, item.data, item.flags, item.ttl < 0 ? 0 : item.ttl, extra);
}

/**
 * The cas of `key`'s item on `node`: null when it has none, undefined when
 * the node could not answer.
 */
export function casOf(
  via: Via,
  node: number,
  hash: number,
  key: Buffer,
  cb: (cas: string | null | undefined) => void,
): void {
  via(node, hash, encodeMeta('mg', key, 'c'), (r) => {
    if (!answered(r)) return cb(undefined);
    cb(startsWith(r.line, 'HD') ? (parseMetaFlags(r.line).get('c') ?? null) : null);
  });
}

/**
 * Like storeItem, but only if the node's own item is still the one it held
 * when read (`cas`; null: it had none): `ms ... C<cas>`, an add (`ME`), or
 * `md ... C<cas>`. A write that reached the node since wins (EX, NS). Null
 * when there is nothing to do (no item on either side).
 */
export function storeIfUnchanged(
  key: Buffer,
  item: Item | null,
  cas: string | null,
): Buffer | null {
  if (!copyable(item)) return cas === null ? null : encodeMeta('md', key, `C${cas}`);
  return storeItem(key, item, cas === null ? ' ME' : ` C${cas}`);
}

/**
 * Whether `node` still holds the same item as `item` (read with its cas):
 * true if it changed (or is gone, or appeared), false if not, undefined if
 * the node could not answer. A copy is checked this way because a write
 * from another process can cross it.
 */
export function itemChanged(
  via: Via,
  node: number,
  hash: number,
  key: Buffer,
  item: Item | null,
  cb: (changed: boolean | undefined) => void,
): void {
  casOf(via, node, hash, key, (now) => {
    if (now === undefined) return cb(undefined);
    cb(item === null ? now !== null : now !== item.cas);
  });
}
