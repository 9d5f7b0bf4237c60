/**
 * `coordination.etcd`: every msproxy process (each instance, each worker of
 * one) with the same prefix is one cluster, and this is its RejoinGate: the
 * rules workers.ts keeps for workers, kept by etcd for any number of
 * instances. The keys and the rules read from them are in view.ts.
 *
 * - A node taken out of service here opens an outage in etcd (`down/<L>`)
 *   with a pending ack for every member; every member sees it through its
 *   watch and takes the node out of service too.
 * - A member that replayed its outage log acks; the node serves reads again,
 *   in every member, once every ack is in and the outage is deleted.
 * - A member that leaves (stops, dies, loses its lease) before it acked has
 *   lost its log: the leader flushes the node (the node is then re-synced),
 *   and only its ack after the flush settles the debt.
 * - Fences, a node emptied or refilled, and re-sync requests are keys too.
 *
 * Nothing here is on a request's path: the gate is called when a node
 * changes state, and acts on the watch. A member that cannot reach etcd
 * (detached) keeps serving the nodes it serves, and releases no node for
 * reads until it is back: it cannot prove what the others wrote meanwhile.
 * A member whose lease expired joins again under a new id.
 */

import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import {
  ConsecutiveBreaker,
  ExponentialBackoff,
  circuitBreaker,
  handleWhen,
  retry,
} from 'cockatiel';
import {
  Etcd3,
  type IKeyValue,
  type IOperation,
  type IOptions,
  type Lease,
  type Watcher,
  isRecoverableError,
} from 'etcd3';
import type { Logger } from 'pino';
import { type Config, nodeLabel } from '../config.js';
import { AckHolds } from './ack-holds.js';
import { FenceBoard } from './fences.js';
import type { ClusterPeer, RejoinGate } from '../routing/rejoin-gate.js';
import { ClusterView, PENDING, READY, labelKey } from './view.js';

export interface EtcdOptions {
  endpoints: string[];
  prefix: string;
  leaseTtlSeconds: number;
  timeoutMs: number;
}

/** A fenced key as its etcd key segment holds it (hex of its bytes), back to latin1. */
function unhex(hex: string): string {
  return Buffer.from(hex, 'hex').toString('latin1');
}

/** The stamp of the missed write a fence's value (`<member> <stamp>`) names; undefined if none. */
function fenceStamp(value: string): number | undefined {
  const n = Number(value.slice(value.indexOf(' ') + 1));
  return value.includes(' ') && Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

type WatchBackoff = NonNullable<NonNullable<IOptions['faultHandling']>['watchBackoff']>;

/** Wait before an etcd call that failed is tried again. */
const RETRY_MS = 250;
/** Wait between attempts to join while etcd cannot be reached. */
const JOIN_RETRY_MS = 500;

interface Waiter {
  go: () => void;
  /** The flushes this member claimed for the node when it was ready (see claim). */
  flushes: number;
}

export class EtcdGate implements RejoinGate {
  readonly shared = true;
  private readonly client: Etcd3;
  private readonly options: EtcdOptions;
  private readonly log: Logger;
  private readonly labels: readonly string[];
  /** Node index by its label as a key segment (labelKey). */
  private readonly nodeByKey: Map<string, number>;
  private readonly view = new ClusterView();
  private peer: ClusterPeer | null = null;
  /** This member's id (a new one after a lost lease). */
  id = '';
  private lease: Lease | null = null;
  private watcher: Watcher | null = null;
  private leaseOk = false;
  private watchOk = false;
  private closed = false;
  private readonly waiters: (Waiter | null)[];
  /** Acks held until the view shows a node down (`down:<node>`) or a fence (its key). */
  private readonly holds: AckHolds;
  private readonly fences: FenceBoard;
  private readonly flushes: number[];
  /** Per node: the revision of the outage this member opened last (see evaluate). */
  private readonly opened: number[];
  private wasLeader = false;
  /** Operations on etcd, one at a time, in order (see perform). */
  private readonly queue: string[] = [];
  private readonly queued = new Set<string>();
  private readonly events = new Map<string, () => Promise<unknown>>();
  /** Operations done, by the revision they wrote at, until the watch shows it (see pump). */
  private readonly settling = new Map<string, number>();
  private nextEvent = 0;
  private pumping = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private rejoining = false;
  /** Counters for stats. */
  private detaches = 0;
  private flushClaims = 0;

  private constructor(options: EtcdOptions, labels: readonly string[], log: Logger) {
    this.options = options;
    this.labels = labels;
    this.nodeByKey = new Map(labels.map((label, i) => [labelKey(label), i]));
    this.log = log.child({ coordination: 'etcd' });
    this.waiters = labels.map(() => null);
    this.holds = new AckHolds(options.timeoutMs);
    this.fences = new FenceBoard(
      {
        memberId: () => this.id,
        shown: (k) => this.view.get(k),
        queue: (op) => this.event(op),
        commit: async (ops) => {
          const c = this.client;
          const r = await c
            .if(this.key('gen'), 'Version', '>', -1)
            .then(
              ...ops.map(([k, v]) =>
                v === null ? c.delete().key(this.key(k)) : c.put(this.key(k)).value(v),
              ),
            )
            .commit();
          return Number(r.header.revision);
        },
      },
      this.holds,
    );
    this.flushes = labels.map(() => 0);
    this.opened = labels.map(() => 0);
    this.client = new Etcd3({
      hosts: options.endpoints,
      dialTimeout: options.timeoutMs,
      defaultCallOptions: (ctx) =>
        ctx.isStream ? {} : { deadline: Date.now() + options.timeoutMs },
      faultHandling: {
        host: () =>
          circuitBreaker(handleWhen(isRecoverableError), {
            halfOpenAfter: 500,
            breaker: new ConsecutiveBreaker(3),
          }),
        global: retry(handleWhen(isRecoverableError), { maxAttempts: 1 }),
        // etcd3's types name an older cockatiel's backoff; this one has the same shape at run time.
        watchBackoff: new ExponentialBackoff({
          initialDelay: 50,
          maxDelay: 1000,
        }) as unknown as WatchBackoff,
      },
    });
  }

  /**
   * Connect and join the cluster: resolves once this process is a member and
   * knows the cluster's state (retries while etcd cannot be reached, logging
   * why).
   */
  static async join(
    options: EtcdOptions,
    labels: readonly string[],
    log: Logger,
  ): Promise<EtcdGate> {
    const gate = new EtcdGate(options, labels, log);
    for (let attempt = 1; ; attempt++) {
      try {
        await gate.attach();
        return gate;
      } catch (err) {
        if (attempt === 1 || attempt % 20 === 0) {
          gate.log.warn({ err: String(err) }, 'cannot join the cluster through etcd; retrying');
        }
        await new Promise((r) => setTimeout(r, JOIN_RETRY_MS));
      }
    }
  }

  /**
   * Start acting for `peer`: take the nodes the cluster has down out of
   * service, and learn its fences and emptied nodes. Call before listening.
   */
  bind(peer: ClusterPeer): void {
    this.peer = peer;
    this.labels.forEach((label, i) => {
      if (this.view.outage(label) !== undefined) peer.markDown(i, 'down in the cluster');
      if (this.view.incomplete(label) !== undefined) peer.setComplete(i, false);
      for (const [hex, e] of this.view.under(`fences/${labelKey(label)}`)) {
        peer.fence(i, unhex(hex), fenceStamp(e.value));
      }
    });
    this.evaluate();
  }

  get attached(): boolean {
    return this.leaseOk && this.watchOk && !this.closed;
  }

  get resyncs(): boolean {
    return this.attached && this.view.leader() === this.id;
  }

  // -------------------------------------------------------------- RejoinGate

  down(node: number): void {
    this.waiters[node] = null;
    this.evaluate();
  }

  downKnown(node: number, then: () => void): void {
    // Detached, nobody can be told: the ack goes out (a known limit: see the README).
    if (!this.attached || this.view.outage(this.labels[node]!) !== undefined) return then();
    this.holds.hold(`down:${node}`, then);
  }

  get fencesPending(): boolean {
    return this.fences.unpublished > 0;
  }

  fenceKnown(node: number, key: string, then: () => void): void {
    // Detached, nobody can be told: the ack goes out (a known limit: see the README).
    if (!this.attached) return then();
    this.fences.known(this.fenceKey(node, key), then);
  }

  ready(node: number, go: () => void): void {
    this.waiters[node] = { go, flushes: this.flushes[node]! };
    if (!this.attached) {
      this.log.warn(
        { node: this.labels[node] },
        'node answers again, but etcd cannot be reached: it serves no reads here until the ' +
          'cluster confirms every member replayed what it missed',
      );
    }
    this.evaluate();
  }

  fenced(node: number, key: string, seq: number): void {
    this.fences.put(this.fenceKey(node, key), seq);
  }

  unfenced(node: number, key: string): void {
    this.fences.withdraw(this.fenceKey(node, key));
  }

  resyncElsewhere(node: number): void {
    this.putLater(`resync/${labelKey(this.labels[node]!)}`);
  }

  /** The etcd key of a fence of `key` (latin1) on `node`. */
  private fenceKey(node: number, key: string): string {
    return `fences/${labelKey(this.labels[node]!)}/${Buffer.from(key, 'latin1').toString('hex')}`;
  }

  /** Put `k` (with this member's id as its value), in order with the other operations. */
  private putLater(k: string): void {
    this.event(() => this.client.put(this.key(k)).value(this.id).exec());
  }

  complete(node: number, complete: boolean): void {
    const k = `incomplete/${labelKey(this.labels[node]!)}`;
    if (!complete) return this.putLater(k);
    // Refilled: unless the node was found emptied again after this run began (a newer
    // incomplete: its own re-sync follows).
    const seen = this.view.get(k)?.mod ?? 0;
    if (seen === 0) return;
    this.event(async () => {
      await this.client
        .if(this.key(k), 'Mod', '==', seen)
        .then(this.client.delete().key(this.key(k)))
        .commit();
    });
  }

  // ------------------------------------------------------------- membership

  private key(k: string): string {
    return `${this.options.prefix}/${k}`;
  }

  /**
   * Grant a lease, read the state, join as a member and watch from there.
   * Resolves once the watch has shown this member's own join, so the view
   * it starts from includes it.
   */
  private async attach(): Promise<void> {
    this.id = `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
    const lease = this.client.lease(this.options.leaseTtlSeconds, { autoKeepAlive: true });
    let watcher: Watcher | null = null;
    try {
      await lease.grant();
      const { read, joined } = await this.joinTxn(lease);
      watcher = this.client
        .watch()
        .prefix(this.key(''))
        .startRevision(String(read + 1))
        .watcher();
      const w = watcher;
      w.on('data', (res) => {
        for (const ev of res.events) {
          if (ev.type === 'Put') this.applyPut(ev.kv);
          else this.applyDelete(ev.kv);
        }
        if (this.watcher !== w) return; // still joining: bind() acts on the whole view
        this.settled();
        this.evaluate();
      });
      await this.caughtUp(joined);
    } catch (err) {
      await watcher?.cancel().catch(() => {});
      await lease.revoke().catch(() => {});
      throw err;
    }
    this.lease = lease;
    this.watcher = watcher;
    this.leaseOk = true;
    this.watchOk = true;
    lease.on('keepaliveFailed', () => this.setLink('lease', false));
    lease.on('keepaliveSucceeded', () => this.setLink('lease', true));
    lease.on('lost', () => void this.rejoin());
    watcher.on('disconnected', () => this.setLink('watch', false));
    watcher.on('connected', () => this.setLink('watch', true));
    watcher.on('error', () => void this.rejoin());
    this.log.info(
      { member: this.id, members: this.view.members().size, prefix: this.options.prefix },
      'joined the cluster',
    );
  }

  /** Wait until the watch has delivered revision `rev` (bounded by the call timeout). */
  private async caughtUp(rev: number): Promise<void> {
    const deadline = Date.now() + this.options.timeoutMs;
    while (this.view.revision < rev) {
      if (Date.now() > deadline) throw new Error('the watch did not catch up with the join');
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /**
   * Read the state, and become a member: its key, and a pending ack for
   * every outage under way. Returns the revision read at, and the one joined at.
   */
  private async joinTxn(lease: Lease): Promise<{ read: number; joined: number }> {
    for (let tries = 0; tries < 20; tries++) {
      const snapshot = await this.client.getAll().prefix(this.key('')).exec();
      const read = Number(snapshot.header.revision);
      this.view.clear();
      for (const kv of snapshot.kvs) this.applyPut(kv, false);
      this.view.revision = read;
      const ops: IOperation[] = [
        lease.put(this.key(`members/${this.id}`)).value(String(process.pid)),
      ];
      for (const label of this.labels) {
        if (this.view.outage(label) === undefined) continue;
        ops.push(this.client.put(this.key(`acks/${labelKey(label)}/${this.id}`)).value(PENDING));
      }
      ops.push(this.client.put(this.key('gen')).value(this.id));
      const r = await this.client
        .if(this.key('gen'), 'Mod', '==', this.view.get('gen')?.mod ?? 0)
        .then(...ops)
        .commit();
      // Someone changed the state meanwhile: read it again.
      if (r.succeeded) return { read, joined: Number(r.header.revision) };
    }
    throw new Error('could not join: the cluster state kept changing');
  }

  private setLink(which: 'lease' | 'watch', ok: boolean): void {
    const before = this.attached;
    if (which === 'lease') this.leaseOk = ok;
    else this.watchOk = ok;
    if (before === this.attached || this.closed) return;
    if (!this.attached) {
      this.detaches++;
      this.log.warn(
        { member: this.id },
        'etcd cannot be reached: nodes that rejoin serve no reads here until it can',
      );
    } else {
      this.log.info({ member: this.id }, 'etcd reached again');
      this.evaluate();
      this.pump();
    }
  }

  /** The lease expired (or the watch failed for good): join again as a new member. */
  private async rejoin(): Promise<void> {
    if (this.rejoining || this.closed) return;
    this.rejoining = true;
    this.leaseOk = false;
    this.watchOk = false;
    this.detaches++;
    const old = this.id;
    this.log.warn({ member: old }, 'lost the etcd lease: joining the cluster again');
    await this.watcher?.cancel().catch(() => {});
    this.watcher = null;
    this.lease = null;
    while (!this.closed) {
      try {
        await this.attach();
        break;
      } catch {
        await new Promise((r) => setTimeout(r, JOIN_RETRY_MS));
      }
    }
    this.rejoining = false;
    if (this.closed) return;
    // What happened meanwhile: nodes the cluster took down, fences, emptied nodes.
    if (this.peer !== null) this.bind(this.peer);
    this.pump();
  }

  // ------------------------------------------------------------------ watch

  /** Apply a put to the view, and act on it unless `act` is false (a snapshot). */
  /** A watched key without the prefix, its directory, its node (-1: none) and the rest. */
  private split(kv: IKeyValue): { k: string; dir: string; node: number; rest?: string } {
    const k = kv.key.toString().slice(this.options.prefix.length + 1);
    const [dir, l, rest] = k.split('/');
    return { k, dir: dir!, node: l === undefined ? -1 : (this.nodeByKey.get(l) ?? -1), rest };
  }

  private applyPut(kv: IKeyValue, act = true): void {
    const { k, dir, node, rest } = this.split(kv);
    const before = this.view.get(k);
    const entry = {
      value: kv.value.toString(),
      create: Number(kv.create_revision),
      mod: Number(kv.mod_revision),
    };
    this.view.put(k, entry);
    const peer = this.peer;
    if (peer === null || !act || this.watcher === null || node < 0) return;
    switch (dir) {
      case 'down':
        if (before === undefined && entry.value !== this.id) {
          peer.markDown(node, 'down in the cluster');
        }
        return;
      case 'fences':
        if (rest === undefined) return;
        if (entry.value.startsWith(`${this.id} `)) this.fences.shown(k);
        else peer.fence(node, unhex(rest), fenceStamp(entry.value));
        return;
      case 'incomplete':
        if (entry.value === this.id) return; // its own re-sync is under way
        peer.setComplete(node, false);
        if (this.resyncs) peer.resync(node);
        return;
      case 'resync':
        if (this.resyncs) this.takeResync(node);
        return;
      default:
        return;
    }
  }

  private applyDelete(kv: IKeyValue): void {
    const { k, dir, node } = this.split(kv);
    const had = this.view.get(k);
    this.view.delete(k, Number(kv.mod_revision));
    const peer = this.peer;
    if (peer === null || had === undefined || this.watcher === null || node < 0) return;
    if (dir === 'incomplete') peer.setComplete(node, true);
    // An outage ends: evaluate() releases this member's wait for it.
  }

  /** Run a re-sync asked for by another member, and clear the request. */
  private takeResync(node: number): void {
    const k = `resync/${labelKey(this.labels[node]!)}`;
    const e = this.view.get(k);
    if (e === undefined) return;
    this.peer?.resync(node);
    this.event(async () => {
      await this.client
        .if(this.key(k), 'Mod', '==', e.mod)
        .then(this.client.delete().key(this.key(k)))
        .commit();
    });
  }

  // -------------------------------------------------------------- decisions

  /**
   * Compare what the cluster says with this member's nodes, and queue what
   * follows. Level-triggered: called after every change, it asks again for
   * whatever is not done yet.
   */
  private evaluate(): void {
    const peer = this.peer;
    // Detached, nobody can be told: held acks go out (a known limit: see the README).
    if (!this.attached) this.holds.releaseAll();
    this.labels.forEach((label, node) => {
      const known = this.view.outage(label) !== undefined || peer?.isUp(node) === true;
      if (known) this.holds.release(`down:${node}`);
    });
    // Detached, the view may be out of date: nothing is decided, and no node released.
    if (peer === null || this.closed || !this.attached) return;
    const leader = this.view.leader() === this.id;
    if (leader && !this.wasLeader) this.becameLeader();
    this.wasLeader = leader;
    this.labels.forEach((label, node) => {
      const outage = this.view.outage(label);
      const mine = this.view.ack(label, this.id);
      const waiter = this.waiters[node];
      if (outage === undefined ? !peer.isUp(node) : mine === undefined) {
        // Out of service here: out of service everywhere, and this member's log awaited.
        this.schedule(`down:${node}`);
      } else if (waiter !== null && outage === undefined) {
        // The cluster serves it: so may this member, unless its own outage is on the way.
        if (!this.queued.has(`down:${node}`) && this.view.revision >= this.opened[node]!) {
          this.waiters[node] = null;
          waiter.go();
        }
      } else if (waiter !== null && mine !== undefined && mine.value !== READY) {
        if (waiter.flushes === this.flushes[node]) this.schedule(`ack:${node}`);
      }
      if (outage === undefined) return;
      if (leader && this.view.lost(label).length > 0) this.schedule(`claim:${node}`);
      if (this.view.releasable(label)) this.schedule(`release:${node}`);
    });
  }

  private becameLeader(): void {
    this.log.info({ member: this.id }, 'this member runs re-syncs for the cluster');
    this.labels.forEach((label, node) => {
      if (this.view.incomplete(label) !== undefined) this.peer?.resync(node);
      this.takeResync(node);
    });
  }

  // ------------------------------------------------------------- operations

  private schedule(name: string): void {
    if (this.queued.has(name)) return;
    this.queued.add(name);
    this.queue.push(name);
    this.pump();
  }

  /** An operation that must happen once, in order with the others (not re-derived). */
  private event(run: () => Promise<unknown>): void {
    const name = `event:${this.nextEvent++}`;
    this.events.set(name, run);
    this.schedule(name);
  }

  /**
   * Run the queue, one operation at a time. An operation that changed the
   * state stays "queued" until the watch has shown the change, so that
   * evaluate() does not ask for it again from a view that predates it.
   */
  private pump(): void {
    if (this.pumping || this.closed || !this.attached) return;
    this.pumping = true;
    void (async () => {
      while (this.queue.length > 0 && this.attached && !this.closed) {
        const name = this.queue[0]!;
        let rev: number;
        try {
          rev = await this.perform(name);
        } catch (err) {
          this.log.debug({ op: name, err: String(err) }, 'etcd operation failed; retrying');
          this.pumping = false;
          this.retryTimer ??= setTimeout(() => {
            this.retryTimer = null;
            this.pump();
          }, RETRY_MS);
          return;
        }
        this.queue.shift();
        this.events.delete(name);
        if (rev > this.view.revision) this.settling.set(name, rev);
        else this.queued.delete(name);
      }
      this.pumping = false;
    })();
  }

  /** The view now shows what these operations did: they may be asked for again. */
  private settled(): void {
    for (const [name, rev] of this.settling) {
      if (rev > this.view.revision) continue;
      this.settling.delete(name);
      this.queued.delete(name);
    }
  }

  /**
   * Run one queued operation, checking again that it is still wanted.
   * Returns the revision it wrote at, or 0 if it wrote nothing.
   */
  private async perform(name: string): Promise<number> {
    const event = this.events.get(name);
    if (event !== undefined) {
      await event();
      return 0;
    }
    const [what, n] = name.split(':');
    const node = Number(n);
    const label = this.labels[node]!;
    const l = labelKey(label);
    const c = this.client;
    const outage = this.view.outage(label);
    const peer = this.peer!;
    // Every change that adds to what a release waits for rewrites `gen`, and every decision
    // is made on the `gen` it read: a decision from an older view fails.
    const tx = c.if(this.key('gen'), 'Mod', '==', this.view.get('gen')?.mod ?? 0);
    const bump = c.put(this.key('gen')).value(this.id);
    const wrote = (r: { succeeded: boolean; header: { revision: string } }): number =>
      r.succeeded ? Number(r.header.revision) : 0;
    switch (what) {
      case 'down': {
        if (outage === undefined) {
          if (peer.isUp(node)) return 0;
          // A new outage: the log of every member is awaited, this one's included. A member
          // that left meanwhile fails the transaction (it would count as a lost log).
          const members = this.view.members();
          members.set(this.id, 0);
          for (const [m, create] of members) {
            if (m !== this.id) tx.and(this.key(`members/${m}`), 'Create', '==', create);
          }
          const acks = [...members.keys()].map((m) =>
            c.put(this.key(`acks/${l}/${m}`)).value(PENDING),
          );
          const rev = wrote(
            await tx
              .and(this.key(`down/${l}`), 'Create', '==', 0)
              .then(c.put(this.key(`down/${l}`)).value(this.id), ...acks, bump)
              .commit(),
          );
          if (rev > 0) {
            // No ready of this member's counts as "the cluster serves it" until this is seen.
            this.opened[node] = rev;
            this.log.info({ node: label }, 'node down for the cluster');
          }
          return rev;
        }
        if (this.view.ack(label, this.id) !== undefined) return 0;
        return wrote(
          await tx
            .and(this.key(`down/${l}`), 'Create', '==', outage.create)
            .then(c.put(this.key(`acks/${l}/${this.id}`)).value(PENDING), bump)
            .commit(),
        );
      }
      case 'ack': {
        const waiter = this.waiters[node];
        const mine = this.view.ack(label, this.id);
        if (outage === undefined || waiter === null || mine === undefined) return 0;
        if (mine.value === READY || waiter.flushes !== this.flushes[node]) return 0;
        const ops: IOperation[] = [c.put(this.key(`acks/${l}/${this.id}`)).value(READY)];
        // This ready comes after this member's flush of the node: the debt is settled.
        if (this.view.flusher(label)?.value === this.id) {
          ops.push(c.delete().key(this.key(`flush/${l}`)));
        }
        return wrote(
          await tx
            .and(this.key(`down/${l}`), 'Create', '==', outage.create)
            .then(...ops)
            .commit(),
        );
      }
      case 'claim': {
        const lost = this.view.lost(label);
        if (outage === undefined || lost.length === 0 || this.view.leader() !== this.id) return 0;
        // Flush first: a ready this member sends from now on comes after the flush.
        this.flushes[node]!++;
        this.flushClaims++;
        this.log.warn(
          { node: label, lost: lost.length },
          'a member left holding an outage log for this node: it is flushed and re-synced',
        );
        peer.flush(node);
        return wrote(
          await tx
            .and(this.key(`down/${l}`), 'Create', '==', outage.create)
            .then(
              ...lost.map((k) => c.delete().key(this.key(k))),
              c.put(this.key(`flush/${l}`)).value(this.id),
              c.put(this.key(`acks/${l}/${this.id}`)).value(PENDING),
              bump,
            )
            .commit(),
        );
      }
      case 'release': {
        if (outage === undefined || !this.view.releasable(label)) return 0;
        const rev = wrote(
          await tx
            .and(this.key(`down/${l}`), 'Create', '==', outage.create)
            .then(
              c.delete().key(this.key(`down/${l}`)),
              c.delete().prefix(this.key(`acks/${l}/`)),
              bump,
            )
            .commit(),
        );
        if (rev > 0) this.log.info({ node: label }, 'node serves reads again in the cluster');
        return rev;
      }
      default:
        return 0;
    }
  }

  // ------------------------------------------------------------------ stats

  setLogLevel(level: string): void {
    this.log.level = level;
  }

  rows(): [string, string | number][] {
    return [
      ['proxy_coordination', 'etcd'],
      ['proxy_coordination_state', this.attached ? 'attached' : 'detached'],
      ['proxy_coordination_member', this.id],
      ['proxy_coordination_members', this.view.members().size],
      ['proxy_coordination_leader', this.resyncs ? 1 : 0],
      ['proxy_coordination_detaches', this.detaches],
      ['proxy_coordination_flush_claims', this.flushClaims],
      ['proxy_coordination_queue', this.queue.length],
      ['proxy_coordination_unconfirmed_acks', this.holds.unconfirmed],
      ['proxy_coordination_fences_unpublished', this.fences.unpublished],
    ];
  }

  /** Leave the cluster: the lease is revoked, so the others see this member gone at once. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.holds.releaseAll();
    await this.watcher?.cancel().catch(() => {});
    await this.lease?.revoke().catch(() => {});
    this.client.close();
  }
}

/** With `coordination.etcd`, join its cluster (see EtcdGate.join); without, null. */
export async function joinCluster(config: Config, log: Logger): Promise<EtcdGate | null> {
  const etcd = config.coordination?.etcd;
  if (etcd === undefined) return null;
  return EtcdGate.join(etcd, config.nodes.map(nodeLabel), log);
}
