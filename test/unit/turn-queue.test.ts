import { expect } from 'chai';
import { TurnQueue } from '../../src/turn-queue.js';

describe('TurnQueue', function () {
  it('runs what one turn added once, in order, after the turn and its nextTicks', async function () {
    const log: string[] = [];
    const q = new TurnQueue<string>((x) => log.push(x));
    q.add('a');
    q.add('b');
    process.nextTick(() => log.push('tick'));
    log.push('sync');
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(log).to.deep.equal(['sync', 'tick', 'a', 'b']);
  });

  it('an item added while draining waits for the next turn', async function () {
    const log: string[] = [];
    const q: TurnQueue<string> = new TurnQueue<string>((x) => {
      log.push(x);
      if (x === 'first') q.add('again');
    });
    q.add('first');
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(log).to.deep.equal(['first']);
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(log).to.deep.equal(['first', 'again']);
  });
});
