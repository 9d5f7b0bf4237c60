/**
 * The one wait-for-condition of the tests: poll `check` until it holds, or
 * throw at the deadline with what was awaited (and `detail()`, e.g. a log).
 */

/** What `until` throws at its deadline (callers that tolerate a timeout catch only this). */
export class WaitTimeout extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WaitTimeout';
  }
}

const POLL_MS = 10;

/**
 * Resolve once `check()` (sync or async) returns true, polling every 10 ms;
 * throw a WaitTimeout naming `what` if it has not within `ms`. An error
 * thrown by `check` propagates at once.
 */
export async function until(
  what: string,
  ms: number,
  check: () => boolean | Promise<boolean>,
  detail?: () => string,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) {
      const more = detail?.() ?? '';
      throw new WaitTimeout(
        `timed out after ${ms} ms waiting for ${what}${more ? `\n${more}` : ''}`,
      );
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
