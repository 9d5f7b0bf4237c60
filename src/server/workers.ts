/**
 * `workers: N` (node:cluster): N worker processes share the listening port,
 * each a whole Proxy with the same config, so every worker puts a key on the
 * same nodes. The primary serves no clients. It forks the workers, restarts
 * one that dies (with backoff), stops them all on SIGINT/SIGTERM (SIGHUP is
 * logged and ignored), and runs the RejoinCoordinator, which keeps the
 * workers' view of the nodes in step:
 *
 * - A node that any worker takes out of service is taken out in all of them.
 * - A node that comes back serves reads again only once every worker has
 *   replayed its own outage log (see RejoinGate and Recovery).
 * - A key fenced in one worker is fenced in all, and a node emptied (restarted
 *   or flushed) counts as incomplete in all until its re-sync is done.
 * - A worker that dies while a node is down takes its outage log with it: that
 *   node is flushed on its rejoin (by one worker) instead of replayed.
 *
 * Worker 0 runs the re-syncs. Each worker keeps its own stats, limits and
 * per-key order (see the README's consistency model for what that means).
 */

import cluster, { type Worker } from 'node:cluster';
import { constants } from 'node:os';
import type { Logger } from 'pino';
import { type Config, parseConfig } from '../config.js';
import { joinCluster } from '../coordination/etcd-gate.js';
import type { ClusterPeer, RejoinGate } from '../routing/rejoin-gate.js';
import { VERSION } from '../version.js';
import { Proxy } from './proxy.js';
import { type ConfigStatus, Reloader, statusRows } from './reload.js';

/** Worker -> primary. */
export type ToPrimary =
  | { msp: 'hello' }
  | { msp: 'listening'; host: string; port: number }
  | { msp: 'down'; node: number }
  | { msp: 'ready'; node: number; epoch: number }
  | { msp: 'fence'; node: number; key: string; seq: number }
  /** Got the `flush`: every later ready of the node comes after the flush. */
  | { msp: 'flushing'; node: number }
  /** The node needs a re-sync, which worker 0 runs. */
  | { msp: 'resync'; node: number }
  /**
   * The node may lack writes (false) or was refilled by a re-sync (true).
   * `seen`: how many `complete: false` for the node this worker had been sent
   * (a true that has not seen the latest false is out of date).
   */
  | { msp: 'complete'; node: number; complete: boolean; seen?: number };

/** Primary -> worker. */
export type ToWorker =
  | { msp: 'init'; down: number[]; incomplete: number[] }
  | { msp: 'down'; node: number }
  | { msp: 'go'; node: number; epoch: number }
  | { msp: 'fence'; node: number; key: string; seq: number }
  | { msp: 'flush'; node: number }
  | { msp: 'resync'; node: number }
  | { msp: 'complete'; node: number; complete: boolean }
  /** A reload: the config now in force (JSON, null when unchanged) and its status. */
  | { msp: 'config'; config: string | null; status: ConfigStatus };

/** The worker that runs re-syncs. */
export const RESYNC_WORKER = 0;
/** `flusher` value: a flush is owed but no worker is alive to do it. */
const NOBODY = -1;

/**
 * The primary's side of the rejoin protocol, without any I/O: it is told
 * which workers joined, left or sent what, and calls `send`.
 *
 * Per node it keeps: down or not; while down, the workers that have replayed
 * (with the epoch each one sent, echoed back in `go`); and the worker that
 * owes the node a flush, if any. A node goes down on the first worker's
 * `down`. It comes back when every live worker is ready and no flush is
 * owed. A worker's `ready` for a node that is not down is answered at once:
 * the others serve it already.
 *
 * A flush is owed when a worker dies, before it was ready, while the node
 * is down: its outage log is lost. The lowest live worker is told to flush
 * (or the next to start, if none is alive). Its readies sent before it
 * acknowledged (`flushing`) predate the flush and are ignored; its first
 * ready after it settles the debt. If it dies first, another worker owes it.
 */
export class RejoinCoordinator {
  private readonly send: (worker: number, msg: ToWorker) => void;
  private readonly live = new Set<number>();
  private readonly down: boolean[];
  private readonly ready: Map<number, number>[];
  /** Per node: the worker that owes a flush (NOBODY: owed, no one alive), or null. */
  private readonly flusher: (number | null)[];
  private readonly flushAcked: boolean[];
  /** Re-syncs asked for while the re-sync worker was not alive. */
  private readonly resyncs = new Set<number>();
  /** Nodes emptied and not yet refilled, as the workers last said (for workers that start). */
  private readonly incomplete = new Set<number>();
  /** Per node: the `complete: false` sent to the re-sync worker since it started. */
  private readonly falsesToResyncer: number[];

  constructor(nodes: number, send: (worker: number, msg: ToWorker) => void) {
    this.send = send;
    this.down = new Array<boolean>(nodes).fill(false);
    this.ready = Array.from({ length: nodes }, () => new Map<number, number>());
    this.flusher = new Array<number | null>(nodes).fill(null);
    this.flushAcked = new Array<boolean>(nodes).fill(false);
    this.falsesToResyncer = new Array<number>(nodes).fill(0);
  }

  /** Whether the group has `node` out of service (for tests and logs). */
  isDown(node: number): boolean {
    return this.down[node]!;
  }

  /** A worker started: it takes the nodes that are down out of service before it listens. */
  join(worker: number): void {
    this.live.add(worker);
    const down: number[] = [];
    this.down.forEach((d, i) => d && down.push(i));
    this.send(worker, { msp: 'init', down, incomplete: [...this.incomplete] });
    this.flusher.forEach((f, node) => f === NOBODY && this.owe(node));
    if (worker === RESYNC_WORKER) {
      // A re-sync the last one did not finish (it died mid-run) runs again here.
      this.falsesToResyncer.fill(0);
      for (const node of this.incomplete) this.resyncs.add(node);
      for (const node of this.resyncs) this.send(worker, { msp: 'resync', node });
      this.resyncs.clear();
    }
  }

  /**
   * A worker is gone. `lostLog`: it died (not a shutdown). For each node that
   * is down and that it had not replayed, its outage log is lost: a flush is owed.
   */
  leave(worker: number, lostLog: boolean): void {
    if (!this.live.delete(worker)) return;
    for (let node = 0; node < this.down.length; node++) {
      const ready = this.ready[node]!;
      const replayed = ready.delete(worker);
      if (!this.down[node]) continue;
      if (this.flusher[node] === worker || (lostLog && !replayed)) this.owe(node);
      this.maybeUp(node);
    }
  }

  /** Tell the lowest live worker to flush `node` (or the next one to start). */
  private owe(node: number): void {
    if (this.live.size === 0) {
      this.flusher[node] = NOBODY;
      return;
    }
    const f = Math.min(...this.live);
    this.flusher[node] = f;
    this.flushAcked[node] = false;
    this.ready[node]!.delete(f);
    this.send(f, { msp: 'flush', node });
  }

  message(worker: number, msg: ToPrimary): void {
    if (!this.live.has(worker)) return;
    if ('node' in msg && !(msg.node >= 0 && msg.node < this.down.length)) return;
    switch (msg.msp) {
      case 'down': {
        this.ready[msg.node]!.delete(worker);
        if (this.down[msg.node]) return;
        this.down[msg.node] = true;
        for (const w of this.live) if (w !== worker) this.send(w, { msp: 'down', node: msg.node });
        return;
      }
      case 'flushing':
        if (this.flusher[msg.node] === worker) this.flushAcked[msg.node] = true;
        return;
      case 'ready':
        if (this.flusher[msg.node] === worker) {
          if (!this.flushAcked[msg.node]) return; // sent before it got the flush
          this.flusher[msg.node] = null;
        }
        if (!this.down[msg.node]) {
          this.send(worker, { msp: 'go', node: msg.node, epoch: msg.epoch });
          return;
        }
        this.ready[msg.node]!.set(worker, msg.epoch);
        return this.maybeUp(msg.node);
      case 'fence':
        for (const w of this.live) if (w !== worker) this.send(w, msg);
        return;
      case 'resync':
        if (this.live.has(RESYNC_WORKER)) this.send(RESYNC_WORKER, msg);
        else this.resyncs.add(msg.node);
        return;
      case 'complete':
        if (msg.complete) {
          // The re-sync worker finished a run before it got a later `false` (a restart another
          // worker saw): that false's own re-sync request follows, and its run answers.
          if (worker === RESYNC_WORKER && msg.seen !== this.falsesToResyncer[msg.node]) return;
          this.incomplete.delete(msg.node);
        } else {
          this.incomplete.add(msg.node);
          if (worker !== RESYNC_WORKER && this.live.has(RESYNC_WORKER)) {
            this.falsesToResyncer[msg.node]!++;
          }
        }
        for (const w of this.live) {
          if (w !== worker)
            this.send(w, { msp: 'complete', node: msg.node, complete: msg.complete });
        }
        return;
      default:
        return;
    }
  }

  private maybeUp(node: number): void {
    const ready = this.ready[node]!;
    if (!this.down[node] || this.live.size === 0 || this.flusher[node] !== null) return;
    for (const w of this.live) if (!ready.has(w)) return;
    this.down[node] = false;
    for (const [w, epoch] of ready) this.send(w, { msp: 'go', node, epoch });
    ready.clear();
  }
}

/** A worker's RejoinGate: reports to the primary and waits for its `go`. */
export class WorkerGate implements RejoinGate {
  readonly shared = true;
  readonly resyncs: boolean;
  private readonly post: (msg: ToPrimary) => void;
  private readonly epochs: number[];
  private readonly waiting: ((() => void) | null)[];
  /** Per node: the `complete: false` the primary sent this worker (see ToPrimary). */
  private readonly falses: number[];

  constructor(nodes: number, resyncs: boolean, post: (msg: ToPrimary) => void) {
    this.resyncs = resyncs;
    this.post = post;
    this.epochs = new Array<number>(nodes).fill(0);
    this.waiting = new Array<(() => void) | null>(nodes).fill(null);
    this.falses = new Array<number>(nodes).fill(0);
  }

  down(node: number): void {
    this.waiting[node] = null;
    this.post({ msp: 'down', node });
  }

  ready(node: number, go: () => void): void {
    // A `go` answering an earlier ready (the node went down since) must not release this one.
    const epoch = ++this.epochs[node]!;
    this.waiting[node] = go;
    this.post({ msp: 'ready', node, epoch });
  }

  fenced(node: number, key: string, seq: number): void {
    this.post({ msp: 'fence', node, key, seq });
  }

  /** Each worker fixes its own fences (the others' copies of a fence need no word). */
  unfenced(): void {}

  resyncElsewhere(node: number): void {
    this.post({ msp: 'resync', node });
  }

  complete(node: number, complete: boolean): void {
    this.post({ msp: 'complete', node, complete, seen: this.falses[node] });
  }

  /** The primary said another worker found `node` incomplete (or refilled). */
  remoteComplete(node: number, complete: boolean): void {
    if (!complete) this.falses[node]!++;
  }

  /** The primary said go: run the wait it answers, if it is still the current one. */
  go(node: number, epoch: number): void {
    const go = this.waiting[node];
    if (go === null || go === undefined || epoch !== this.epochs[node]) return;
    this.waiting[node] = null;
    go();
  }
}

function isToPrimary(m: unknown): m is ToPrimary {
  return typeof m === 'object' && m !== null && typeof (m as { msp?: unknown }).msp === 'string';
}

const STOP_GRACE_MS = 10_000;
const RESTART_MIN_MS = 100;
const RESTART_MAX_MS = 10_000;
/** A worker that served this long before dying restarts without backoff. */
const STABLE_MS = 30_000;

/**
 * A worker ignores SIGHUP: its default action would end the process, and
 * the outage logs with it. A terminal's hangup reaches every process of the
 * group; the primary reloads the config and sends it to the workers.
 */
function ignoreHangup(): void {
  process.on('SIGHUP', () => {});
}

/**
 * SIGINT and SIGTERM, whichever comes first: the first one logs "shutting down" and calls
 * `graceful`; a second one of either ends the process at once. `now` runs first (the primary
 * kills its workers), then both listeners are removed and the signal is raised again, so its
 * default action ends the process; failing that, it exits with 128 + the signal's number.
 */
export function onStopSignals(
  log: Logger,
  graceful: (signal: NodeJS.Signals) => void,
  now: () => void = () => {},
): void {
  let stopping = false;
  const handle = (signal: NodeJS.Signals): void => {
    if (!stopping) {
      stopping = true;
      log.info({ signal }, 'shutting down');
      graceful(signal);
      return;
    }
    log.warn({ signal }, 'second signal: exiting at once');
    now();
    process.removeAllListeners('SIGINT');
    process.removeAllListeners('SIGTERM');
    process.kill(process.pid, signal);
    // Should that not end it first (the signal is handled by another thread), exit as a shell
    // reports a death by the signal.
    process.exit(128 + (constants.signals[signal] ?? 0));
  };
  process.on('SIGINT', handle);
  process.on('SIGTERM', handle);
}

/**
 * The primary: fork `config.workers` workers and supervise them until
 * SIGINT/SIGTERM (a second one ends it at once, see onStopSignals). Resolves with the exit
 * code (1 if a worker cannot start).
 */
/**
 * The primary of `workers`: forks them, restarts one that dies, relays what
 * they tell each other, and reloads the config (`file`) on SIGHUP for them all.
 */
export function runPrimary(
  config: Config,
  log: Logger,
  file: string,
  digest: string,
): Promise<number> {
  /** The config in force: what a worker forked from now on runs. */
  let current = config;
  const reloader = new Reloader(file, config, digest, log, (next, status) => {
    if (next !== null) current = next;
    for (const w of slots) {
      if (w?.isConnected()) {
        w.send({ msp: 'config', config: next && JSON.stringify(next), status } as ToWorker);
      }
    }
  });
  reloader.listen();
  const n = config.workers;
  const slots = new Array<Worker | null>(n).fill(null);
  const restarts = new Array<number>(n).fill(0);
  const coordinator = new RejoinCoordinator(config.nodes.length, (i, msg) => {
    const w = slots[i];
    if (w && w.isConnected()) w.send(msg);
  });
  let stopping = false;
  let listening = 0;
  /** Restarts waiting for their backoff (cleared on stop, or they would keep the primary up). */
  const pending = new Set<NodeJS.Timeout>();
  let exitCode = 0;
  let resolveDone: (code: number) => void = () => {};
  const done = new Promise<number>((r) => (resolveDone = r));

  const stopAll = (code: number): void => {
    if (stopping) return;
    stopping = true;
    exitCode = code;
    for (const t of pending) clearTimeout(t);
    pending.clear();
    const alive = slots.filter((w): w is Worker => w !== null);
    if (alive.length === 0) return resolveDone(code);
    for (const w of alive) w.process.kill('SIGTERM');
    setTimeout(() => {
      for (const w of slots) w?.process.kill('SIGKILL');
    }, STOP_GRACE_MS).unref();
  };

  const fork = (i: number): void => {
    // Workers run the primary's config (see cli.ts), not the file as it may be now.
    const w = cluster.fork({
      MSP_WORKER: String(i),
      MSP_CONFIG: JSON.stringify(current),
      MSP_CONFIG_STATUS: JSON.stringify(reloader.status),
    });
    slots[i] = w;
    let servingSince = 0;
    w.on('message', (msg: unknown) => {
      if (!isToPrimary(msg)) return;
      if (msg.msp === 'hello') return coordinator.join(i);
      if (msg.msp === 'listening') {
        servingSince = Date.now();
        if (++listening === n) {
          log.info(
            {
              listen: `${msg.host}:${msg.port}`,
              nodes: config.nodes.length,
              replicas: config.replicas,
              workers: n,
              version: VERSION,
            },
            'msproxy listening',
          );
        }
        return;
      }
      coordinator.message(i, msg);
    });
    w.on('exit', (code, signal) => {
      if (slots[i] === w) slots[i] = null;
      coordinator.leave(i, !stopping);
      if (stopping) {
        if (slots.every((s) => s === null)) resolveDone(exitCode);
        return;
      }
      if (servingSince === 0 && listening < n) {
        // It never served (a bad port, say): the next one would fail the same way.
        log.fatal({ worker: i, code, signal }, 'worker could not start');
        return stopAll(1);
      }
      if (servingSince > 0 && Date.now() - servingSince > STABLE_MS) restarts[i] = 0;
      const delay = Math.min(RESTART_MIN_MS * 2 ** restarts[i]!, RESTART_MAX_MS);
      restarts[i]!++;
      log.error({ worker: i, code, signal, restartInMs: delay }, 'worker died');
      const t = setTimeout(() => {
        pending.delete(t);
        if (!stopping) fork(i);
      }, delay);
      pending.add(t);
    });
  };

  for (let i = 0; i < n; i++) fork(i);
  // A second signal kills the workers still closing and ends the primary at once.
  onStopSignals(
    log,
    () => stopAll(0),
    () => {
      for (const w of slots) w?.process.kill('SIGKILL');
    },
  );
  return done;
}

/**
 * A worker: wait for the primary's view of the nodes, serve until told to
 * stop (or the primary is gone). Resolves with the exit code.
 */
export async function runWorker(config: Config, log: Logger, index: number): Promise<number> {
  try {
    return await serveAsWorker(config, log, index);
  } finally {
    // The IPC channel would keep this process alive after its proxy closed.
    if (process.connected) process.disconnect();
  }
}

async function serveAsWorker(config: Config, log: Logger, index: number): Promise<number> {
  ignoreHangup();
  const post = (msg: ToPrimary): void => {
    if (process.connected) process.send!(msg);
  };
  // With etcd, each worker is a member of the cluster of its own; the primary only supervises.
  const group = await joinCluster(config, log);
  const gate = new WorkerGate(config.nodes.length, index === RESYNC_WORKER, post);
  let peer: ClusterPeer | null = null;
  const early: ToWorker[] = [];
  const apply = (msg: ToWorker): void => {
    const p = peer!;
    switch (msg.msp) {
      case 'down':
        return p.markDown(msg.node, 'down in another worker');
      case 'go':
        return gate.go(msg.node, msg.epoch);
      case 'fence':
        return p.fence(msg.node, msg.key, msg.seq);
      case 'flush':
        post({ msp: 'flushing', node: msg.node });
        return p.flush(msg.node);
      case 'resync':
        return p.resync(msg.node);
      case 'complete':
        gate.remoteComplete(msg.node, msg.complete);
        return p.setComplete(msg.node, msg.complete);
      default:
        return;
    }
  };
  const status = JSON.parse(process.env['MSP_CONFIG_STATUS'] ?? 'null') as ConfigStatus | null;
  let proxy: Proxy | null = null;
  /** A reload that came before the proxy was built: applied once it is. */
  let earlyConfig: string | null = null;
  const reconfigure = (msg: { config: string | null; status: ConfigStatus }): void => {
    if (status !== null) Object.assign(status, msg.status);
    if (msg.config === null) return;
    if (proxy === null) {
      earlyConfig = msg.config;
      return;
    }
    try {
      proxy.reconfigure(parseConfig(JSON.parse(msg.config)));
    } catch (err) {
      // The primary read the same files a moment ago: only a users file changed since fails.
      log.error({ err: String(err) }, 'config reload failed in this worker');
    }
  };
  const init = new Promise<{ down: number[]; incomplete: number[] }>((resolve) => {
    process.on('message', (msg: ToWorker) => {
      if (msg?.msp === 'init') return resolve(msg);
      if (msg?.msp === 'config') return reconfigure(msg);
      if (group !== null) return;
      if (peer === null) early.push(msg);
      else apply(msg);
    });
  });
  post({ msp: 'hello' });
  const { down, incomplete } = await init;
  proxy = new Proxy(config, log, { gate: group ?? gate, worker: index });
  if (status !== null) proxy.configRows = () => statusRows(status);
  if (earlyConfig !== null && status !== null) reconfigure({ config: earlyConfig, status });
  peer = proxy.peer();
  if (group !== null) {
    group.bind(peer);
  } else {
    for (const node of down) peer.markDown(node, 'down in the other workers');
    for (const node of incomplete) peer.setComplete(node, false);
    for (const msg of early.splice(0)) apply(msg);
  }
  try {
    await proxy.start();
  } catch (err) {
    log.fatal({ err }, 'cannot listen');
    await group?.close();
    return 1;
  }
  post({ msp: 'listening', ...proxy.address });
  const p = proxy;
  await new Promise<void>((resolve) => {
    let stopping = false;
    // `on`, not `once`: a signal to the whole group (systemd, Ctrl-C) and the primary's own
    // SIGTERM both arrive; a second one must not kill the worker mid-close.
    const stop = (): void => {
      if (stopping) return;
      stopping = true;
      void p.close().then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    // The primary is gone (killed): nobody would restart or coordinate this worker.
    process.once('disconnect', stop);
  });
  return 0;
}
