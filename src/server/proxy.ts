/**
 * The proxy: a listener, the backend nodes, the ring and the router, wired
 * together from a Config. `start()` resolves once the port is bound;
 * `reconfigure()` applies a reloaded config (see config.ts reloadPlan for
 * what may change); `close()` stops accepting, answers what clients already
 * sent (bounded), then closes clients and backends.
 */

import net from 'node:net';
import type { Level, Logger } from 'pino';
import { BackendNode } from '../backend/node.js';
import { type Config, type NodeConfig, nodeLabel } from '../config.js';
import { EXPECT_LINE } from '../protocol/response-parser.js';
import { Placement } from '../routing/placement.js';
import { type ClusterPeer, LOCAL_GATE, type RejoinGate } from '../routing/rejoin-gate.js';
import { Recovery, type RecoveryOptions } from '../routing/recovery.js';
import { Ring } from '../routing/ring.js';
import { Router, type RouterOptions } from '../routing/router.js';
import { Stats } from '../stats.js';
import { PROTOCOL_VERSION, VERSION } from '../version.js';
import { ClientSession } from './session.js';

const FLUSH_ALL = Buffer.from('flush_all\r\n');
/** Nodes one process can have had (see refusal). */
const MAX_NODES = 255;

/** The ring of `config`'s nodes, each at the index of its BackendNode in `nodes` (by label). */
function ringOf(config: Config, nodes: readonly BackendNode[]): Ring {
  return new Ring(
    config.nodes.map((n) => ({
      label: nodeLabel(n),
      weight: n.weight,
      index: nodes.find((b) => b.label === nodeLabel(n))!.index,
    })),
  );
}

/**
 * Whether going from `a` to `b` moves keys: another ring (names, weights or
 * their order) or another replica count.
 */
function movesKeys(a: Config, b: Config): boolean {
  const ring = (c: Config): string => JSON.stringify(c.nodes.map((n) => [nodeLabel(n), n.weight]));
  return ring(a) !== ring(b) || a.replicas !== b.replicas;
}

/** A node's settings that come from the config as a whole (a reload may change them). */
function nodeSettings(c: Config) {
  return {
    connectTimeoutMs: c.timeouts.connectMs,
    requestTimeoutMs: c.timeouts.requestMs,
    failureThreshold: c.backend.failureThreshold,
    probeMs: c.backend.probeMs,
    probeMaxMs: c.backend.probeMaxMs,
    maxValue: c.limits.itemSizeMax,
  };
}

export class Proxy {
  private current: Config;
  readonly stats = new Stats();
  /** Every node this process has had, by index: a node keeps its index (and state) by name. */
  readonly nodes: BackendNode[];
  readonly placement: Placement;
  readonly router: Router;
  readonly recovery: Recovery;
  private readonly log: Logger;
  private readonly gate: RejoinGate;
  private readonly server: net.Server;
  private readonly sessions = new Map<net.Socket, ClientSession>();
  /** Held by the router and recovery: a reload changes them in place. */
  private readonly routeOptions: RouterOptions;
  private readonly recoveryOptions: RecoveryOptions;

  /**
   * `gate` and `worker`: set when this is one worker of several (see workers.ts);
   * alone, a node serves as soon as this process has fenced it.
   */
  constructor(
    config: Config,
    log: Logger,
    group: { gate: RejoinGate; worker: number } = { gate: LOCAL_GATE, worker: 0 },
  ) {
    this.current = config;
    this.log = log;
    this.gate = group.gate;
    this.nodes = config.nodes.map((n, index) => this.newNode(n, index, config));
    this.placement = new Placement(ringOf(config, this.nodes), config.replicas, this.nodes);
    this.routeOptions = {
      ackMode: config.ackMode,
      version: PROTOCOL_VERSION,
      proxyVersion: VERSION,
      worker: group.worker,
      workers: config.workers,
      settings: () => this.settings(),
      extra: () => this.configRows(),
    };
    this.router = new Router(this.nodes, this.placement, this.routeOptions, this.stats);
    this.recoveryOptions = {
      outageLogMax: config.recovery.outageLogMax,
      resyncRate: config.recovery.resyncRate,
    };
    this.recovery = new Recovery(
      this.nodes,
      this.placement,
      this.router.order,
      this.recoveryOptions,
      log,
      group.gate,
    );
    this.router.recovery = this.recovery;
    // allowHalfOpen: a client may shut down its sending side and still read the replies.
    // pauseOnConnect: the session sets up how it reads (readRaw) before the first read.
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) =>
      this.accept(socket),
    );
    this.server.maxConnections = config.limits.maxClients;
    this.server.on('drop', () => this.stats.rejectedConnections++);
  }

  private newNode(n: NodeConfig, index: number, config: Config): BackendNode {
    return new BackendNode(
      {
        index,
        host: n.host,
        port: n.port,
        label: nodeLabel(n),
        connections: config.backend.connections,
        ...nodeSettings(config),
      },
      this.log,
      {
        onUp: () => {},
        onDown: (node) => this.recovery.onDown(node.index),
        onProbe: (node, restarted) => this.recovery.onProbe(node, restarted),
        onRestart: (node) => this.recovery.restarted(node.index),
      },
    );
  }

  /** The ring in force (the one keys move to during a move). */
  get ring(): Ring {
    return this.placement.targetRing;
  }

  /** The config in force (the last one applied). */
  get config(): Config {
    return this.current;
  }

  /** Why this process cannot apply `next` now (reloadPlan checked the rest): none if it can. */
  refusal(next: Config): string[] {
    if (movesKeys(this.current, next) && this.recovery.moving) {
      return ['a rebalance is under way (proxy_rebalance): reload again once it is done'];
    }
    const added = next.nodes.filter((n) => this.indexOf(nodeLabel(n)) < 0).length;
    // A cas token names its node in 8 bits (cas-token.ts).
    if (this.nodes.length + added > MAX_NODES) {
      return [`more than ${MAX_NODES} nodes since start: restart msproxy to add more`];
    }
    return [];
  }

  /**
   * Apply a reloaded config that reloadPlan and `refusal` accepted: log
   * level, timeouts, failure and probe settings, ack mode, recovery
   * settings, limits and users; nodes re-addressed (replace) and placement
   * changes (move). Requests in flight finish under the settings they started
   * with; client limits and authentication apply to connections accepted from now.
   */
  reconfigure(next: Config): void {
    const before = this.current;
    this.current = next;
    this.log.level = next.log.level as Level;
    this.gate.setLogLevel?.(next.log.level);
    this.server.maxConnections = next.limits.maxClients;
    this.routeOptions.ackMode = next.ackMode;
    this.recoveryOptions.outageLogMax = next.recovery.outageLogMax;
    this.recoveryOptions.resyncRate = next.recovery.resyncRate;
    for (const n of this.placement.members) n.reconfigure(nodeSettings(next));
    this.replace(before, next);
    if (movesKeys(before, next)) this.move(before, next);
  }

  /**
   * A node whose name stays but whose address changed is another memcached:
   * what it holds cannot be vouched for. It goes out of service, and is
   * flushed and refilled (its rejoin) once the new address answers.
   */
  private replace(before: Config, next: Config): void {
    for (const n of next.nodes) {
      const i = this.indexOf(nodeLabel(n));
      const old = before.nodes.find((o) => nodeLabel(o) === nodeLabel(n));
      if (i < 0 || old === undefined || (old.host === n.host && old.port === n.port)) continue;
      this.nodes[i]!.readdress(n.host, n.port);
      this.recovery.joining(i);
    }
  }

  /** The index of the node named `label` in the placement in force, or -1. */
  private indexOf(label: string): number {
    return this.placement.members.find((n) => n.label === label)?.index ?? -1;
  }

  /**
   * Move to the ring and replica count of `next` (Placement and Rebalance):
   * new nodes join (flushed, then refilled), every node of either ring takes
   * writes meanwhile, and the nodes that left are flushed and closed at the end.
   */
  private move(before: Config, next: Config): void {
    const old = this.placement.members;
    const targets = next.nodes.map((n) => {
      const i = this.indexOf(nodeLabel(n));
      if (i >= 0) return this.nodes[i]!;
      const node = this.newNode(n, this.nodes.length, next);
      this.nodes.push(node);
      this.recovery.added();
      this.recovery.joining(node.index);
      return node;
    });
    const leaving = old.filter((n) => !targets.includes(n));
    const added = targets.filter((n) => !old.includes(n));
    this.log.warn(
      {
        nodes: targets.map((n) => n.label),
        replicas: next.replicas,
        added: added.map((n) => n.label),
        leaving: leaving.map((n) => n.label),
        wasReplicas: before.replicas,
      },
      'placement changes: moving keys',
    );
    this.placement.begin(ringOf(next, targets), next.replicas, [...old, ...added]);
    this.router.placementChanged();
    this.recovery.rebalance({
      targets: targets.map((n) => n.index),
      losers: old.filter((n) => targets.includes(n)).map((n) => n.index),
      commit: () => this.placement.commit(targets),
      retire: (done) => this.retire(leaving, done),
    });
  }

  /** Flush the nodes that left the ring (an old copy must never come back), then close them. */
  private retire(leaving: readonly BackendNode[], done: () => void): void {
    let left = leaving.length;
    if (left === 0) return done();
    for (const n of leaving) {
      n.sendDirect(0, FLUSH_ALL, EXPECT_LINE, (err) => {
        if (err !== null)
          this.log.warn({ node: n.label, err: err.message }, 'retired node not flushed');
        n.close();
        this.recovery.retired(n.index);
        this.log.info({ node: n.label, address: n.address }, 'node retired');
        if (--left === 0) done();
      });
    }
  }

  /** Rows `stats` adds about the config in force (set by whoever reloads it). */
  configRows: () => [string, string | number][] = () => [];

  private accept(socket: net.Socket): void {
    const stats = this.stats;
    stats.currConnections++;
    stats.totalConnections++;
    socket.once('close', () => {
      stats.currConnections--;
      this.sessions.delete(socket);
    });
    const session = new ClientSession(socket, this.router, stats, {
      maxInflight: this.config.limits.maxInflight,
      itemSizeMax: this.config.limits.itemSizeMax,
      maxMultigetLine: this.config.limits.maxMultigetLine,
      log: this.log,
      users: this.config.users,
    });
    this.sessions.set(socket, session);
  }

  /** `stats settings`: memcached's names for what msproxy has of its own, then msproxy's. */
  private settings(): [string, string | number][] {
    const c = this.config;
    const bound = this.server.address() as net.AddressInfo | null;
    const auth = c.users !== null ? 'yes' : 'no';
    return [
      ['maxconns', c.limits.maxClients],
      ['tcpport', bound?.port ?? c.listen.port],
      ['udpport', 0],
      ['inter', c.listen.host],
      ['num_threads', c.workers],
      ['cas_enabled', 'yes'],
      ['binding_protocol', 'auto-negotiate'],
      ['auth_enabled_sasl', auth],
      ['auth_enabled_ascii', auth],
      ['item_size_max', c.limits.itemSizeMax],
      ['flush_enabled', 'yes'],
      ['proxy_replicas', c.replicas],
      ['proxy_ack_mode', c.ackMode],
      ['proxy_nodes', c.nodes.length],
      ['proxy_max_inflight', c.limits.maxInflight],
      ['proxy_request_timeout_ms', c.timeouts.requestMs],
    ];
  }

  /** What the other processes (workers, or instances through etcd) act on. */
  peer(): ClusterPeer {
    return {
      isUp: (node) => this.nodes[node]!.isUp,
      markDown: (node, reason) => this.nodes[node]!.markDownNow(reason),
      fence: (node, key, seq) => this.recovery.remoteFence(node, key, seq),
      flush: (node) => this.recovery.missedFlush(node),
      resync: (node) => this.recovery.resync(node),
      setComplete: (node, complete) => this.recovery.remoteComplete(node, complete),
    };
  }

  /** The bound address (useful with port 0). */
  get address(): { host: string; port: number } {
    const a = this.server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  start(): Promise<void> {
    const { host, port } = this.config.listen;
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host, port, backlog: 1024 }, () => {
        this.server.off('error', reject);
        // Connect to every node now: learns who each one is (a later restart is then noticed).
        for (const n of this.nodes) n.start();
        this.log.info(
          {
            listen: `${this.address.host}:${this.address.port}`,
            nodes: this.nodes.length,
            replicas: this.config.replicas,
            version: VERSION,
          },
          'msproxy listening',
        );
        resolve();
      });
    });
  }

  /**
   * Stop: accept no more clients, let each client's commands already read be
   * answered (for at most `graceMs`; by default three request timeouts, so a
   * read that fails over still finishes), then close every connection.
   */
  async close(graceMs = Math.max(1000, 3 * this.config.timeouts.requestMs)): Promise<void> {
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    if (graceMs > 0 && this.sessions.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      const grace = new Promise<void>((r) => (timer = setTimeout(r, graceMs)));
      const drained = Promise.all([...this.sessions.values()].map((s) => s.shutdown()));
      await Promise.race([drained, grace]);
      clearTimeout(timer);
    }
    for (const s of this.sessions.keys()) s.destroy();
    this.recovery.close();
    for (const n of this.nodes) n.close();
    await Promise.all([closed, this.gate.close?.()]);
  }
}
