/**
 * Commands about the proxy or every node rather than a key: flush_all goes
 * to every node that is up (a node that misses it is flushed when it
 * rejoins); stats answers msproxy's own counters and settings.
 */

import { R, encodeLine, encodeStats } from '../protocol/encoder.js';
import type { Request } from '../protocol/request.js';
import { EXPECT_LINE, equals } from '../protocol/response-parser.js';
import { isReply } from './reply-rules.js';
import { type Done, NO_REPLICA, type RouteContext } from './route-context.js';

export interface StatsIdentity {
  /** What `version` answers. */
  version: string;
  /** msproxy's own version. */
  proxyVersion: string;
  /** This process's worker index, and how many there are. */
  worker?: number;
  workers?: number;
  /** What `stats settings` lists: msproxy's own settings, in memcached's names where one fits. */
  settings?: () => readonly (readonly [string, string | number])[];
  /** Rows `stats` adds before the nodes' (the config in force). */
  extra?: () => readonly [string, string | number][];
}

/**
 * `stats` groups memcached knows that describe one node's memory (items,
 * slabs, extstore, cachedump) or connections: a proxy-wide list would mean nothing, so
 * they answer an empty one (ask the nodes themselves).
 */
const NODE_GROUPS = new Set(['items', 'slabs', 'conns', 'extstore', 'cachedump']);
const SIZES_DISABLED = encodeLine('STAT sizes_status disabled');

/** flush_all: every node that is up (the session orders it with the client's other commands). */
export function flushAll(
  ctx: RouteContext,
  req: Request,
  data: Buffer | Buffer[],
  done: Done,
): void {
  const members = ctx.placement.members;
  const up = members.filter((n) => n.isUp);
  if (up.length === 0) return done(req.noreply ? null : NO_REPLICA);
  // A node that misses a flush holds items its replicas dropped: flushed on rejoin.
  for (const n of members) if (!n.isUp) ctx.recovery?.missedFlush(n.index);
  let left = up.length;
  let ok = false;
  for (const n of up) {
    ctx.send(n.index, 0, data, EXPECT_LINE, (r) => {
      if (isReply(r) && equals(r.line, 'OK')) ok = true;
      else ctx.recovery?.missedFlush(n.index);
      if (--left > 0) return;
      if (req.noreply) done(null);
      else done(ok ? R.OK : NO_REPLICA);
    });
  }
}

export function statsReply(ctx: RouteContext, req: Request, id: StatsIdentity): Buffer {
  const sub = req.args[0]?.toString('latin1');
  if (sub === 'reset') {
    ctx.stats.reset();
    return R.RESET;
  }
  if (sub === 'detail') return req.args[1]?.toString('latin1') === 'dump' ? R.END : R.OK;
  if (sub === 'settings') return encodeStats(id.settings?.() ?? []);
  // msproxy keeps no item size histogram; memcached ends this one without END.
  if (sub === 'sizes_enable' || sub === 'sizes_disable') return SIZES_DISABLED;
  if (sub === 'sizes') return encodeStats([['sizes_status', 'disabled']]);
  if (sub !== undefined) return NODE_GROUPS.has(sub) ? R.END : R.ERROR;
  const s = ctx.stats;
  const now = Date.now();
  const rows: [string, string | number][] = [
    ['pid', process.pid],
    ['uptime', Math.floor((now - s.startedAt) / 1000)],
    ['time', Math.floor(now / 1000)],
    ['version', id.version],
    ['curr_connections', s.currConnections],
    ['total_connections', s.totalConnections],
    ['rejected_connections', s.rejectedConnections],
    ['cmd_get', s.cmdGet],
    ['cmd_set', s.cmdSet],
    ['cmd_touch', s.cmdTouch],
    ['cmd_flush', s.cmdFlush],
    ['get_hits', s.getHits],
    ['get_misses', s.getMisses],
    ['auth_cmds', s.authCmds],
    ['auth_errors', s.authErrors],
    ['proxy_version', id.proxyVersion],
    ['proxy_worker', id.worker ?? 0],
    ['proxy_workers', id.workers ?? 1],
    ['proxy_client_errors', s.clientErrors],
    ['proxy_binary_connections', s.binaryConnections],
    ['proxy_failover_reads', s.failoverReads],
    ['proxy_read_repairs', s.readRepairs],
    ['proxy_replication_failures', s.replicationFailures],
    ['proxy_unavailable', s.unavailable],
    ['proxy_backend_timeouts', s.backendTimeouts],
    ['proxy_backend_errors', s.backendErrors],
    ['proxy_keys_ordered', ctx.order.size],
    ['proxy_replicas', ctx.placement.copies],
    ['proxy_nodes', ctx.placement.members.length],
    ['proxy_nodes_up', ctx.placement.members.filter((n) => n.isUp).length],
  ];
  if (id.extra !== undefined) rows.push(...id.extra());
  if (ctx.recovery !== null) rows.push(...ctx.recovery.rows());
  for (const n of ctx.placement.members) {
    rows.push([`proxy_node_${n.index}_address`, n.address]);
    rows.push([`proxy_node_${n.index}_up`, n.isUp ? 1 : 0]);
    rows.push([`proxy_node_${n.index}_requests`, n.requests]);
    rows.push([`proxy_node_${n.index}_errors`, n.errors]);
    rows.push([`proxy_node_${n.index}_down_count`, n.downCount]);
  }
  return encodeStats(rows);
}
