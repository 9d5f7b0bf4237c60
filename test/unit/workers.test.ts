/**
 * The rejoin protocol between cluster workers, without processes: the
 * primary's RejoinCoordinator and a worker's WorkerGate.
 */

import { expect } from 'chai';
import {
  RejoinCoordinator,
  type ToPrimary,
  type ToWorker,
  WorkerGate,
} from '../../src/server/workers.js';

function coordinator(nodes = 2): { c: RejoinCoordinator; sent: [number, ToWorker][] } {
  const sent: [number, ToWorker][] = [];
  const c = new RejoinCoordinator(nodes, (w, m) => sent.push([w, m]));
  return { c, sent };
}

describe('RejoinCoordinator', function () {
  it('sends a joining worker the nodes that are down', function () {
    const { c, sent } = coordinator(3);
    c.join(0);
    c.message(0, { msp: 'down', node: 2 });
    c.join(1);
    expect(sent).to.deep.equal([
      [0, { msp: 'init', down: [], incomplete: [] }],
      [1, { msp: 'init', down: [2], incomplete: [] }],
    ]);
  });

  it('takes a node down everywhere on the first down, once', function () {
    const { c, sent } = coordinator();
    for (const w of [0, 1, 2]) c.join(w);
    sent.length = 0;
    c.message(1, { msp: 'down', node: 0 });
    c.message(0, { msp: 'down', node: 0 });
    c.message(2, { msp: 'down', node: 0 });
    expect(sent).to.deep.equal([
      [0, { msp: 'down', node: 0 }],
      [2, { msp: 'down', node: 0 }],
    ]);
    expect(c.isDown(0)).to.equal(true);
    expect(c.isDown(1)).to.equal(false);
  });

  it('releases a node only when every live worker is ready, echoing each epoch', function () {
    const { c, sent } = coordinator();
    for (const w of [0, 1, 2]) c.join(w);
    c.message(0, { msp: 'down', node: 1 });
    sent.length = 0;
    c.message(0, { msp: 'ready', node: 1, epoch: 4 });
    c.message(2, { msp: 'ready', node: 1, epoch: 1 });
    expect(sent).to.deep.equal([]);
    expect(c.isDown(1)).to.equal(true);
    c.message(1, { msp: 'ready', node: 1, epoch: 7 });
    expect(c.isDown(1)).to.equal(false);
    expect(sent).to.have.deep.members([
      [0, { msp: 'go', node: 1, epoch: 4 }],
      [2, { msp: 'go', node: 1, epoch: 1 }],
      [1, { msp: 'go', node: 1, epoch: 7 }],
    ]);
  });

  it('a worker that fails the node again after its ready must be ready again', function () {
    const { c, sent } = coordinator();
    c.join(0);
    c.join(1);
    c.message(0, { msp: 'down', node: 0 });
    c.message(0, { msp: 'ready', node: 0, epoch: 1 });
    c.message(0, { msp: 'down', node: 0 });
    sent.length = 0;
    c.message(1, { msp: 'ready', node: 0, epoch: 1 });
    expect(sent).to.deep.equal([]);
    c.message(0, { msp: 'ready', node: 0, epoch: 2 });
    expect(sent).to.have.deep.members([
      [1, { msp: 'go', node: 0, epoch: 1 }],
      [0, { msp: 'go', node: 0, epoch: 2 }],
    ]);
  });

  it('answers a ready for a node that is not down at once', function () {
    const { c, sent } = coordinator();
    c.join(0);
    c.join(1);
    sent.length = 0;
    c.message(1, { msp: 'ready', node: 0, epoch: 3 });
    expect(sent).to.deep.equal([[1, { msp: 'go', node: 0, epoch: 3 }]]);
  });

  it('a worker that dies while a node is down: one other worker flushes that node', function () {
    const { c, sent } = coordinator();
    for (const w of [0, 1, 2]) c.join(w);
    c.message(2, { msp: 'down', node: 1 });
    c.message(1, { msp: 'ready', node: 1, epoch: 1 });
    sent.length = 0;
    c.leave(0, true);
    // Worker 1 was ready, but its replay did not cover worker 0's log: it flushes first.
    expect(sent).to.deep.equal([[1, { msp: 'flush', node: 1 }]]);
    sent.length = 0;
    c.message(2, { msp: 'ready', node: 1, epoch: 1 });
    // A ready worker 1 sent before it got the flush does not count.
    c.message(1, { msp: 'ready', node: 1, epoch: 2 });
    expect(sent).to.deep.equal([]);
    c.message(1, { msp: 'flushing', node: 1 });
    c.message(1, { msp: 'ready', node: 1, epoch: 3 });
    expect(c.isDown(1)).to.equal(false);
    expect(sent).to.have.deep.members([
      [2, { msp: 'go', node: 1, epoch: 1 }],
      [1, { msp: 'go', node: 1, epoch: 3 }],
    ]);
  });

  it('a flush owed is passed on if the flusher dies, and kept for the next worker if none is alive', function () {
    const { c, sent } = coordinator();
    for (const w of [0, 1, 2]) c.join(w);
    c.message(0, { msp: 'down', node: 0 });
    c.leave(0, true);
    c.message(1, { msp: 'flushing', node: 0 });
    sent.length = 0;
    c.leave(1, true);
    expect(sent).to.deep.equal([[2, { msp: 'flush', node: 0 }]]);
    sent.length = 0;
    c.leave(2, true);
    expect(sent).to.deep.equal([]);
    c.join(1);
    expect(sent).to.deep.equal([
      [1, { msp: 'init', down: [0], incomplete: [] }],
      [1, { msp: 'flush', node: 0 }],
    ]);
    c.message(1, { msp: 'flushing', node: 0 });
    c.message(1, { msp: 'ready', node: 0, epoch: 1 });
    expect(c.isDown(0)).to.equal(false);
  });

  it('a worker that had replayed owes no flush when it dies; one that never joined is ignored', function () {
    const { c, sent } = coordinator();
    for (const w of [0, 1, 2]) c.join(w);
    c.message(0, { msp: 'down', node: 0 });
    c.message(0, { msp: 'ready', node: 0, epoch: 1 });
    sent.length = 0;
    c.leave(0, true);
    c.leave(5, true);
    expect(sent).to.deep.equal([]);
    c.message(1, { msp: 'ready', node: 0, epoch: 1 });
    c.message(2, { msp: 'ready', node: 0, epoch: 1 });
    expect(c.isDown(0)).to.equal(false);
  });

  it('relays a re-sync to worker 0, or keeps it until worker 0 starts', function () {
    const { c, sent } = coordinator();
    c.join(0);
    c.join(1);
    sent.length = 0;
    c.message(1, { msp: 'resync', node: 1 });
    expect(sent).to.deep.equal([[0, { msp: 'resync', node: 1 }]]);
    c.leave(0, false);
    sent.length = 0;
    c.message(1, { msp: 'resync', node: 0 });
    expect(sent).to.deep.equal([]);
    c.join(0);
    expect(sent).to.deep.equal([
      [0, { msp: 'init', down: [], incomplete: [] }],
      [0, { msp: 'resync', node: 0 }],
    ]);
  });

  it('shares completeness, and drops a refill that predates a later emptying', function () {
    const { c, sent } = coordinator(2);
    for (const w of [0, 1, 2]) c.join(w);
    sent.length = 0;
    // Worker 1 saw node 1 restart: every other worker learns it is incomplete.
    c.message(1, { msp: 'complete', node: 1, complete: false });
    expect(sent).to.deep.equal([
      [0, { msp: 'complete', node: 1, complete: false }],
      [2, { msp: 'complete', node: 1, complete: false }],
    ]);
    sent.length = 0;
    // Worker 0 ends a run it started before it heard of that: out of date, not passed on.
    c.message(0, { msp: 'complete', node: 1, complete: true, seen: 0 });
    expect(sent).to.deep.equal([]);
    c.join(3);
    expect(sent).to.deep.equal([[3, { msp: 'init', down: [], incomplete: [1] }]]);
    sent.length = 0;
    c.message(0, { msp: 'complete', node: 1, complete: true, seen: 1 });
    expect(sent).to.deep.equal([
      [1, { msp: 'complete', node: 1, complete: true }],
      [2, { msp: 'complete', node: 1, complete: true }],
      [3, { msp: 'complete', node: 1, complete: true }],
    ]);
    sent.length = 0;
    c.join(4);
    expect(sent).to.deep.equal([[4, { msp: 'init', down: [], incomplete: [] }]]);
  });

  it('a re-sync worker that dies mid-run: its successor re-syncs every incomplete node', function () {
    const { c, sent } = coordinator(3);
    c.join(0);
    c.join(1);
    c.message(0, { msp: 'complete', node: 2, complete: false });
    c.leave(0, true);
    sent.length = 0;
    c.join(0);
    expect(sent).to.deep.equal([
      [0, { msp: 'init', down: [], incomplete: [2] }],
      [0, { msp: 'resync', node: 2 }],
    ]);
    // The new worker 0 counts only what it was sent: its refill is current.
    sent.length = 0;
    c.message(0, { msp: 'complete', node: 2, complete: true, seen: 0 });
    expect(sent).to.deep.equal([[1, { msp: 'complete', node: 2, complete: true }]]);
  });

  it('ignores a message naming a node it does not have', function () {
    const { c, sent } = coordinator(2);
    c.join(0);
    c.join(1);
    sent.length = 0;
    c.message(0, { msp: 'down', node: 7 });
    c.message(0, { msp: 'ready', node: -1, epoch: 1 });
    expect(sent).to.deep.equal([]);
  });

  it('a worker that stops (no lost log) releases a node the others are ready for', function () {
    const { c, sent } = coordinator();
    c.join(0);
    c.join(1);
    c.message(0, { msp: 'down', node: 0 });
    c.message(1, { msp: 'ready', node: 0, epoch: 1 });
    sent.length = 0;
    c.leave(0, false);
    expect(sent).to.deep.equal([[1, { msp: 'go', node: 0, epoch: 1 }]]);
    // A departed worker's late messages are ignored.
    sent.length = 0;
    c.message(0, { msp: 'down', node: 0 });
    expect(c.isDown(0)).to.equal(false);
    expect(sent).to.deep.equal([]);
  });

  it('a node that is up is not flushed when a worker dies', function () {
    const { c, sent } = coordinator();
    c.join(0);
    c.join(1);
    sent.length = 0;
    c.leave(1, true);
    expect(sent).to.deep.equal([]);
  });

  it('relays a fence to every other worker', function () {
    const { c, sent } = coordinator();
    for (const w of [0, 1, 2]) c.join(w);
    sent.length = 0;
    c.message(1, { msp: 'fence', node: 0, key: 'k\u00ff', seq: 7 });
    expect(sent).to.deep.equal([
      [0, { msp: 'fence', node: 0, key: 'k\u00ff', seq: 7 }],
      [2, { msp: 'fence', node: 0, key: 'k\u00ff', seq: 7 }],
    ]);
  });
});

describe('WorkerGate', function () {
  it('reports down, ready and fences, and runs the go that answers the current ready only', function () {
    const posted: ToPrimary[] = [];
    const gate = new WorkerGate(2, false, (m) => posted.push(m));
    expect(gate.shared).to.equal(true);
    expect(gate.resyncs).to.equal(false);
    let released = 0;
    gate.down(1);
    gate.ready(1, () => released++);
    gate.down(1);
    gate.ready(1, () => (released += 10));
    gate.fenced(0, 'abc', 42);
    expect(posted).to.deep.equal([
      { msp: 'down', node: 1 },
      { msp: 'ready', node: 1, epoch: 1 },
      { msp: 'down', node: 1 },
      { msp: 'ready', node: 1, epoch: 2 },
      { msp: 'fence', node: 0, key: 'abc', seq: 42 },
    ]);
    gate.go(1, 1); // answers the first ready: the node went down since
    expect(released).to.equal(0);
    gate.go(1, 2);
    expect(released).to.equal(10);
    gate.go(1, 2); // once
    expect(released).to.equal(10);
  });

  it('says, with a refill, how many emptyings it had heard of', function () {
    const posted: ToPrimary[] = [];
    const gate = new WorkerGate(2, true, (m) => posted.push(m));
    gate.remoteComplete(1, false);
    gate.remoteComplete(1, true);
    gate.remoteComplete(1, false);
    gate.complete(1, true);
    gate.complete(0, false);
    expect(posted).to.deep.equal([
      { msp: 'complete', node: 1, complete: true, seen: 2 },
      { msp: 'complete', node: 0, complete: false, seen: 0 },
    ]);
  });

  it('a down cancels a pending ready', function () {
    const gate = new WorkerGate(1, true, () => {});
    let released = false;
    gate.ready(0, () => (released = true));
    gate.down(0);
    gate.go(0, 1);
    expect(released).to.equal(false);
  });
});
