/**
 * One pass of background copies (a re-sync's, a rebalance's): at most
 * WINDOW in flight, and at most `rate` keys per second since the pass
 * started (plus one window). It ends once: `onEnd` with the keys whose copy
 * failed, or `onStop` as soon as `live()` says the pass is no longer wanted
 * (its node went down, a newer run took over).
 */

import type { RecoveryCore } from './recovery-core.js';

/** Copies in flight. */
const WINDOW = 32;

/** Keys a pass copies, by position. An array is one. */
export interface KeyList {
  readonly length: number;
  at(i: number): Buffer | undefined;
}

export interface PassHooks {
  /** Whether the pass should go on; false ends it (onStop). */
  live(): boolean;
  /** One key's copy ended (counters). */
  copied(ok: boolean): void;
  onEnd(failed: Buffer[]): void;
  onStop(failed: Buffer[]): void;
}

export class CopyPass {
  private readonly core: RecoveryCore;
  private readonly keys: KeyList;
  private readonly copy: (key: Buffer, cb: (ok: boolean) => void) => void;
  private readonly hooks: PassHooks;
  private readonly started = Date.now();
  private at = 0;
  private active = 0;
  private scheduled = false;
  /** Set once the pass has ended: the rate-limit timer may still call pump() after that. */
  private ended = false;
  /**
   * A copy with no source left fails at once, inside copy(): its callback
   * must not start the next copy from within pump's loop.
   */
  private pumping = false;
  /** Own copies of the keys whose copy failed (a view would keep the whole listing alive). */
  private readonly failed: Buffer[] = [];

  constructor(
    core: RecoveryCore,
    keys: KeyList,
    copy: (key: Buffer, cb: (ok: boolean) => void) => void,
    hooks: PassHooks,
  ) {
    this.core = core;
    this.keys = keys;
    this.copy = copy;
    this.hooks = hooks;
  }

  pump(): void {
    const core = this.core;
    if (this.pumping || this.ended || core.closed) return;
    if (!this.hooks.live()) {
      this.ended = true;
      return this.hooks.onStop(this.failed);
    }
    const allowed =
      Math.floor(((Date.now() - this.started) / 1000) * core.options.resyncRate) + WINDOW;
    this.pumping = true;
    while (this.active < WINDOW && this.at < this.keys.length && this.at < allowed) {
      this.active++;
      const key = this.keys.at(this.at++)!;
      this.copy(key, (ok) => this.copied(key, ok));
    }
    this.pumping = false;
    if (this.at >= this.keys.length) {
      if (this.active > 0) return;
      this.ended = true;
      return this.hooks.onEnd(this.failed);
    }
    if (this.at >= allowed && !this.scheduled) {
      this.scheduled = true;
      core.later(() => {
        this.scheduled = false;
        this.pump();
      }, 10);
    }
  }

  private copied(key: Buffer, ok: boolean): void {
    this.active--;
    // A copy of a pass that has ended counts for no later run.
    if (this.ended) return;
    this.hooks.copied(ok);
    if (!ok) this.failed.push(Buffer.from(key));
    this.pump();
  }
}
