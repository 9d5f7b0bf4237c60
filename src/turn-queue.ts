/**
 * Work gathered during one event-loop turn and done once, in its check phase
 * (setImmediate): after every socket callback of the poll phase, so what all
 * of them queued goes out together. process.nextTick would run after each
 * callback instead. Callers add an item at most once per turn (each keeps
 * its own "queued" flag).
 */
export class TurnQueue<T> {
  private items: T[] = [];
  private scheduled = false;
  private readonly run: (item: T) => void;
  private readonly drainNow = (): void => this.drain();

  constructor(run: (item: T) => void) {
    this.run = run;
  }

  add(item: T): void {
    this.items.push(item);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.drainNow);
    }
  }

  private drain(): void {
    this.scheduled = false;
    const list = this.items;
    this.items = [];
    for (const item of list) this.run(item);
  }
}
