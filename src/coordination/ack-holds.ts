/**
 * Client acknowledgements held until the cluster knows what they depend on:
 * a node out of service, or a fence published. Each subject's waits are
 * released together, by `release` once the watch shows the subject, or by
 * the timeout: past it the acks go out anyway and are counted
 * (`unconfirmed`), since a client must not wait on a slow etcd for longer
 * than a node's own timeout.
 */
export class AckHolds {
  private readonly waits = new Map<string, (() => void)[]>();
  private readonly timeoutMs: number;
  /** Acks released by the timeout. */
  unconfirmed = 0;

  constructor(timeoutMs: number) {
    this.timeoutMs = timeoutMs;
  }

  /** Whether an ack waits for `subject`. */
  holds(subject: string): boolean {
    return this.waits.has(subject);
  }

  /** Run `then` once `subject` is released. */
  hold(subject: string, then: () => void): void {
    const list = this.waits.get(subject);
    if (list !== undefined) {
      list.push(then);
      return;
    }
    const fresh = [then];
    this.waits.set(subject, fresh);
    setTimeout(() => {
      // The same list still waiting: released by the timeout, not by the news.
      if (this.waits.get(subject) !== fresh) return;
      this.unconfirmed += fresh.length;
      this.release(subject);
    }, this.timeoutMs).unref();
  }

  release(subject: string): void {
    const list = this.waits.get(subject);
    if (list === undefined) return;
    this.waits.delete(subject);
    for (const then of list) then();
  }

  /** Release every subject for which `which` holds (all of them by default). */
  releaseAll(which: (subject: string) => boolean = () => true): void {
    for (const subject of [...this.waits.keys()]) if (which(subject)) this.release(subject);
  }
}
