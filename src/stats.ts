/**
 * msproxy's own counters, answered to `stats` in memcached's STAT format.
 * Names follow memcached where the meaning is the same (cmd_get, get_hits,
 * curr_connections, ...); proxy-specific ones are prefixed with `proxy_`.
 */

export class Stats {
  readonly startedAt = Date.now();
  currConnections = 0;
  totalConnections = 0;
  rejectedConnections = 0;
  cmdGet = 0;
  cmdSet = 0;
  cmdTouch = 0;
  cmdFlush = 0;
  getHits = 0;
  getMisses = 0;
  clientErrors = 0;
  /** Authentication attempts (SASL auth and step, text auth), and those that failed. */
  authCmds = 0;
  authErrors = 0;
  /** Connections that spoke memcached's binary protocol. */
  binaryConnections = 0;
  /** Reads answered by a replica other than the primary. */
  failoverReads = 0;
  /** Items written back to a primary that missed them. */
  readRepairs = 0;
  /** Replica writes that failed while the client's write succeeded elsewhere. */
  replicationFailures = 0;
  /** Requests answered with SERVER_ERROR because no replica could serve them. */
  unavailable = 0;
  backendTimeouts = 0;
  backendErrors = 0;

  /** `stats reset`: every counter back to 0, as memcached does; gauges (connections now) stay. */
  reset(): void {
    const current = this.currConnections;
    Object.assign(this, new Stats(), { startedAt: this.startedAt, currConnections: current });
  }
}
