/**
 * Unit and property tests for KeyOrder (src/routing/key-order.ts): per-key
 * admission in arrival order, with shared reads, exclusive holders and plain
 * writes that wait for every earlier reader/exclusive but hold nothing.
 */

import { expect } from 'chai';
import fc from 'fast-check';
import {
  EXCLUSIVE,
  type Kind,
  KeyOrder,
  READ,
  Ticket,
  WRITE,
} from '../../src/routing/key-order.js';

const A = 0x1111;
const B = 0x2222;
const C = 0xdeadbeef;

/**
 * Submit a command the way the router does: try at once, else queue a ticket.
 * Appends `name` to `log` when the command starts; returns whether it ran at once.
 */
function submit(
  o: KeyOrder,
  log: string[],
  name: string,
  kind: Kind,
  hashes: readonly number[],
  then?: () => void,
): boolean {
  const run = (): void => {
    log.push(name);
    then?.();
  };
  const now =
    kind === READ && hashes.length !== 1
      ? o.tryAcquireReads(hashes)
      : o.tryAcquire(kind, hashes[0]!);
  if (now) run();
  else o.wait(new Ticket(kind, run), hashes);
  return now;
}

describe('KeyOrder: stripes', () => {
  it('keys whose hashes share the low 16 bits wait for each other as one key', () => {
    const o = new KeyOrder();
    const x = 0x00010042;
    const y = 0xabcd0042; // same stripe as x
    const z = 0x00010043; // another stripe
    const log: string[] = [];
    expect(submit(o, log, 'r-x', READ, [x])).to.equal(true);
    expect(submit(o, log, 'e-y', EXCLUSIVE, [y])).to.equal(false);
    expect(submit(o, log, 'e-z', EXCLUSIVE, [z])).to.equal(true);
    expect(log).to.deep.equal(['r-x', 'e-z']);
    o.release(READ, x);
    expect(log).to.deep.equal(['r-x', 'e-z', 'e-y']);
    o.release(EXCLUSIVE, y);
    o.release(EXCLUSIVE, z);
    expect(o.size).to.equal(0);
  });

  it('a multi-key read with two keys in one stripe holds it twice and releases it twice', () => {
    const o = new KeyOrder();
    const x = 0x00010042;
    const y = 0xabcd0042;
    const log: string[] = [];
    expect(submit(o, log, 'e', EXCLUSIVE, [x])).to.equal(true);
    expect(submit(o, log, 'r-xy', READ, [x, y])).to.equal(false);
    o.release(EXCLUSIVE, x);
    expect(log).to.deep.equal(['e', 'r-xy']);
    expect(submit(o, log, 'w', WRITE, [y])).to.equal(false);
    o.release(READ, x);
    expect(log).to.deep.equal(['e', 'r-xy']);
    o.release(READ, y);
    expect(log).to.deep.equal(['e', 'r-xy', 'w']);
    expect(o.size).to.equal(0);
  });
});

describe('KeyOrder: single key', () => {
  it('lets reads on the same key run together', () => {
    const o = new KeyOrder();
    expect(o.tryAcquire(READ, A)).to.equal(true);
    expect(o.tryAcquire(READ, A)).to.equal(true);
    expect(o.tryAcquireReads([A])).to.equal(true);
    expect(o.size).to.equal(1);
    o.release(READ, A);
    o.release(READ, A);
    expect(o.size).to.equal(1);
    o.release(READ, A);
    expect(o.size).to.equal(0);
  });

  it('makes a WRITE after a running READ wait until the read releases', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    expect(submit(o, log, 'r1', READ, [A])).to.equal(true);
    expect(submit(o, log, 'r2', READ, [A])).to.equal(true);
    expect(submit(o, log, 'w', WRITE, [A])).to.equal(false);
    expect(log).to.deep.equal(['r1', 'r2']);
    o.release(READ, A);
    expect(log, 'one read still running').to.deep.equal(['r1', 'r2']);
    o.release(READ, A);
    expect(log).to.deep.equal(['r1', 'r2', 'w']);
    expect(o.size, 'a write holds nothing once run').to.equal(0);
  });

  it('makes a READ after a running EXCLUSIVE wait, then hold the key', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    expect(submit(o, log, 'x', EXCLUSIVE, [A])).to.equal(true);
    expect(o.tryAcquire(READ, A)).to.equal(false);
    expect(o.tryAcquireReads([A])).to.equal(false);
    expect(submit(o, log, 'r', READ, [A])).to.equal(false);
    expect(log).to.deep.equal(['x']);
    o.release(EXCLUSIVE, A);
    expect(log).to.deep.equal(['x', 'r']);
    expect(o.size, 'the read now holds the key').to.equal(1);
    expect(o.tryAcquire(EXCLUSIVE, A)).to.equal(false);
    o.release(READ, A);
    expect(o.size).to.equal(0);
  });

  it('makes an EXCLUSIVE after a running READ wait', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    submit(o, log, 'r', READ, [A]);
    expect(submit(o, log, 'x', EXCLUSIVE, [A])).to.equal(false);
    expect(log).to.deep.equal(['r']);
    o.release(READ, A);
    expect(log).to.deep.equal(['r', 'x']);
    expect(o.size).to.equal(1);
    o.release(EXCLUSIVE, A);
    expect(o.size).to.equal(0);
  });

  it('runs a WRITE with nothing in flight at once and keeps no state', () => {
    const o = new KeyOrder();
    expect(o.tryAcquire(WRITE, A)).to.equal(true);
    expect(o.size).to.equal(0);
    expect(o.tryAcquire(WRITE, A)).to.equal(true);
    expect(o.size).to.equal(0);
    // A write that ran does not block later readers or exclusives.
    expect(o.tryAcquire(READ, A)).to.equal(true);
    o.release(READ, A);
    expect(o.tryAcquire(EXCLUSIVE, A)).to.equal(true);
    o.release(EXCLUSIVE, A);
    expect(o.size).to.equal(0);
  });

  it('ignores a release on a key with no state', () => {
    const o = new KeyOrder();
    o.release(READ, A);
    o.release(EXCLUSIVE, B);
    expect(o.size).to.equal(0);
    expect(o.tryAcquire(EXCLUSIVE, A)).to.equal(true);
    expect(o.tryAcquire(READ, A)).to.equal(false);
  });
});

describe('KeyOrder: arrival order (FIFO)', () => {
  it('queues a READ that arrives behind a waiting WRITE, and runs it after the write', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    expect(submit(o, log, 'r1', READ, [A])).to.equal(true);
    expect(submit(o, log, 'w', WRITE, [A])).to.equal(false);
    // Reads are compatible with the running read, but must not overtake the write.
    expect(o.tryAcquire(READ, A)).to.equal(false);
    expect(o.tryAcquireReads([A])).to.equal(false);
    expect(o.tryAcquireReads([B, A])).to.equal(false);
    expect(submit(o, log, 'r2', READ, [A])).to.equal(false);
    expect(log).to.deep.equal(['r1']);
    o.release(READ, A);
    expect(log).to.deep.equal(['r1', 'w', 'r2']);
    expect(o.size).to.equal(1);
    o.release(READ, A);
    expect(o.size).to.equal(0);
  });

  it('queues a WRITE behind a waiting WRITE even though writes hold nothing', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    submit(o, log, 'r', READ, [A]);
    expect(submit(o, log, 'w1', WRITE, [A])).to.equal(false);
    expect(submit(o, log, 'w2', WRITE, [A])).to.equal(false);
    expect(submit(o, log, 'x', EXCLUSIVE, [A])).to.equal(false);
    expect(submit(o, log, 'w3', WRITE, [A])).to.equal(false);
    o.release(READ, A);
    expect(log, 'writes up to the exclusive, which then holds the key').to.deep.equal([
      'r',
      'w1',
      'w2',
      'x',
    ]);
    o.release(EXCLUSIVE, A);
    expect(log).to.deep.equal(['r', 'w1', 'w2', 'x', 'w3']);
    expect(o.size).to.equal(0);
  });

  it('queues a READ behind a waiting EXCLUSIVE while another read runs', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    submit(o, log, 'r1', READ, [A]);
    expect(submit(o, log, 'x', EXCLUSIVE, [A])).to.equal(false);
    expect(submit(o, log, 'r2', READ, [A])).to.equal(false);
    expect(submit(o, log, 'r3', READ, [A])).to.equal(false);
    o.release(READ, A);
    expect(log).to.deep.equal(['r1', 'x']);
    o.release(EXCLUSIVE, A);
    expect(log, 'both reads run together').to.deep.equal(['r1', 'x', 'r2', 'r3']);
    o.release(READ, A);
    expect(o.size).to.equal(1);
    o.release(READ, A);
    expect(o.size).to.equal(0);
  });

  it('runs two EXCLUSIVEs on one key one at a time, in order', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    expect(submit(o, log, 'x1', EXCLUSIVE, [A])).to.equal(true);
    expect(submit(o, log, 'x2', EXCLUSIVE, [A])).to.equal(false);
    expect(submit(o, log, 'x3', EXCLUSIVE, [A])).to.equal(false);
    expect(log).to.deep.equal(['x1']);
    o.release(EXCLUSIVE, A);
    expect(log).to.deep.equal(['x1', 'x2']);
    o.release(EXCLUSIVE, A);
    expect(log).to.deep.equal(['x1', 'x2', 'x3']);
    expect(o.size).to.equal(1);
    o.release(EXCLUSIVE, A);
    expect(o.size).to.equal(0);
  });
});

describe('KeyOrder: multi-key reads', () => {
  it('acquires all keys or none', () => {
    const o = new KeyOrder();
    expect(o.tryAcquire(EXCLUSIVE, B)).to.equal(true);
    expect(o.tryAcquireReads([A, B])).to.equal(false);
    expect(o.size, 'A was not taken').to.equal(1);
    expect(o.tryAcquire(EXCLUSIVE, A)).to.equal(true);
    o.release(EXCLUSIVE, A);
    o.release(EXCLUSIVE, B);
    expect(o.size).to.equal(0);
    expect(o.tryAcquireReads([A, B, C])).to.equal(true);
    expect(o.size).to.equal(3);
    for (const h of [A, B, C]) expect(o.tryAcquire(EXCLUSIVE, h)).to.equal(false);
    for (const h of [A, B, C]) o.release(READ, h);
    expect(o.size).to.equal(0);
  });

  it('makes a WRITE arriving after a waiting multi-key read wait until that read ran and released', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    expect(submit(o, log, 'xb', EXCLUSIVE, [B])).to.equal(true);
    expect(submit(o, log, 'rab', READ, [A, B])).to.equal(false);
    expect(submit(o, log, 'wa', WRITE, [A])).to.equal(false);
    expect(submit(o, log, 'xa', EXCLUSIVE, [A])).to.equal(false);
    expect(log).to.deep.equal(['xb']);
    o.release(EXCLUSIVE, B);
    expect(log, 'the read ran; the write still waits for it').to.deep.equal(['xb', 'rab']);
    o.release(READ, B);
    expect(log, 'the read still holds A').to.deep.equal(['xb', 'rab']);
    o.release(READ, A);
    expect(log).to.deep.equal(['xb', 'rab', 'wa', 'xa']);
    o.release(EXCLUSIVE, A);
    expect(o.size).to.equal(0);
  });

  it('does not let a multi-key read overtake a waiting command on one of its keys', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    submit(o, log, 'ra', READ, [A]);
    submit(o, log, 'wa', WRITE, [A]);
    expect(submit(o, log, 'rab', READ, [B, A])).to.equal(false);
    // B is free: the waiting read may hold it, so a later exclusive on B waits.
    expect(submit(o, log, 'xb', EXCLUSIVE, [B])).to.equal(false);
    expect(log).to.deep.equal(['ra']);
    o.release(READ, A);
    expect(log).to.deep.equal(['ra', 'wa', 'rab']);
    o.release(READ, A);
    expect(log).to.deep.equal(['ra', 'wa', 'rab']);
    o.release(READ, B);
    expect(log).to.deep.equal(['ra', 'wa', 'rab', 'xb']);
    o.release(EXCLUSIVE, B);
    expect(o.size).to.equal(0);
  });

  it('handles duplicate hashes: acquired twice, released twice', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    expect(submit(o, log, 'raa', READ, [A, A])).to.equal(true);
    expect(submit(o, log, 'w', WRITE, [A])).to.equal(false);
    o.release(READ, A);
    expect(log, 'one hold left').to.deep.equal(['raa']);
    expect(o.size).to.equal(1);
    o.release(READ, A);
    expect(log).to.deep.equal(['raa', 'w']);
    expect(o.size).to.equal(0);
  });

  it('handles duplicate hashes in a waiting read: runs once, released twice', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    submit(o, log, 'x', EXCLUSIVE, [A]);
    expect(submit(o, log, 'raa', READ, [A, A, B])).to.equal(false);
    expect(submit(o, log, 'x2', EXCLUSIVE, [A])).to.equal(false);
    o.release(EXCLUSIVE, A);
    expect(log).to.deep.equal(['x', 'raa']);
    o.release(READ, A);
    o.release(READ, B);
    expect(log, 'one hold on A left').to.deep.equal(['x', 'raa']);
    o.release(READ, A);
    expect(log).to.deep.equal(['x', 'raa', 'x2']);
    o.release(EXCLUSIVE, A);
    expect(o.size).to.equal(0);
  });
});

describe('KeyOrder: independent keys', () => {
  it('never makes commands on different keys wait for each other', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    expect(submit(o, log, 'xa', EXCLUSIVE, [A])).to.equal(true);
    expect(submit(o, log, 'xb', EXCLUSIVE, [B])).to.equal(true);
    expect(submit(o, log, 'rc', READ, [C])).to.equal(true);
    expect(submit(o, log, 'wa', WRITE, [A])).to.equal(false);
    // A waiting command on A does not affect B or C.
    expect(submit(o, log, 'wc', WRITE, [C])).to.equal(false);
    expect(submit(o, log, 'w4', WRITE, [4])).to.equal(true);
    expect(submit(o, log, 'r5', READ, [5, 6])).to.equal(true);
    expect(log).to.deep.equal(['xa', 'xb', 'rc', 'w4', 'r5']);
    o.release(EXCLUSIVE, B);
    expect(log, 'releasing B does not run anything on A').to.deep.equal([
      'xa',
      'xb',
      'rc',
      'w4',
      'r5',
    ]);
    o.release(READ, C);
    expect(log.at(-1)).to.equal('wc');
    o.release(EXCLUSIVE, A);
    expect(log.at(-1)).to.equal('wa');
    o.release(READ, 5);
    o.release(READ, 6);
    expect(o.size).to.equal(0);
  });
});

describe('KeyOrder: re-entrancy', () => {
  it('survives a run() that releases its own hold synchronously', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    submit(o, log, 'x1', EXCLUSIVE, [A]);
    submit(o, log, 'x2', EXCLUSIVE, [A], () => {
      o.release(EXCLUSIVE, A);
      log.push('x2 released');
    });
    submit(o, log, 'x3', EXCLUSIVE, [A]);
    submit(o, log, 'r', READ, [A]);
    o.release(EXCLUSIVE, A);
    expect(log).to.deep.equal(['x1', 'x2', 'x3', 'x2 released']);
    expect(o.tryAcquire(READ, A)).to.equal(false);
    o.release(EXCLUSIVE, A);
    expect(log.at(-1)).to.equal('r');
    o.release(READ, A);
    expect(o.size).to.equal(0);
  });

  it('survives a run() that releases and then acquires again', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    submit(o, log, 'r1', READ, [A]);
    submit(o, log, 'x', EXCLUSIVE, [A], () => {
      o.release(EXCLUSIVE, A);
      // r2 was queued behind x: it now holds A, so x's second turn waits.
      submit(o, log, 'x again', EXCLUSIVE, [A]);
    });
    submit(o, log, 'r2', READ, [A]);
    o.release(READ, A);
    expect(log).to.deep.equal(['r1', 'x', 'r2']);
    expect(o.size).to.equal(1);
    o.release(READ, A);
    expect(log).to.deep.equal(['r1', 'x', 'r2', 'x again']);
    o.release(EXCLUSIVE, A);
    expect(o.size).to.equal(0);
  });

  it('survives runs that release every key of a multi-key read synchronously', () => {
    const o = new KeyOrder();
    const log: string[] = [];
    submit(o, log, 'xa', EXCLUSIVE, [A]);
    submit(o, log, 'xb', EXCLUSIVE, [B]);
    submit(o, log, 'rab', READ, [A, B], () => {
      o.release(READ, A);
      o.release(READ, B);
    });
    submit(o, log, 'wb', WRITE, [B]);
    submit(o, log, 'xa2', EXCLUSIVE, [A], () => o.release(EXCLUSIVE, A));
    o.release(EXCLUSIVE, A);
    expect(log).to.deep.equal(['xa', 'xb']);
    o.release(EXCLUSIVE, B);
    expect(log).to.deep.equal(['xa', 'xb', 'rab', 'xa2', 'wb']);
    expect(o.size).to.equal(0);
  });

  it('does not let a command submitted from inside run() overtake an earlier admitted write', () => {
    // w1 and w2 are admitted by the same release; a command that arrives while
    // w1 runs is later than w2 and must start after it (whatever its kind).
    const outcome = (kind: Kind): string[] => {
      const o = new KeyOrder();
      const log: string[] = [];
      submit(o, log, 'r', READ, [A]);
      submit(o, log, 'w1', WRITE, [A], () => {
        submit(o, log, 'late', kind, [A]);
      });
      submit(o, log, 'w2', WRITE, [A]);
      o.release(READ, A);
      if (kind !== WRITE && log.includes('late')) o.release(kind, A);
      log.push(`size ${o.size}`);
      return log;
    };
    const expected = ['r', 'w1', 'w2', 'late', 'size 0'];
    expect({
      write: outcome(WRITE),
      read: outcome(READ),
      exclusive: outcome(EXCLUSIVE),
    }).to.deep.equal({ write: expected, read: expected, exclusive: expected });
  });
});

// ---------------------------------------------------------------------------
// Property: a model of every command's arrival, start and holds.

const KEYS = 3;

interface ArriveOp {
  t: 'arrive';
  kind: Kind;
  keys: number[];
  /** run() releases every hold synchronously. */
  releaseInRun: boolean;
}
interface ReleaseOp {
  t: 'release';
  pick: number;
  keyPick: number;
  all: boolean;
}
type Op = ArriveOp | ReleaseOp;

const keyArb = fc.integer({ min: 0, max: KEYS - 1 });
const rarely = fc.oneof(
  { weight: 4, arbitrary: fc.constant(false) },
  { weight: 1, arbitrary: fc.constant(true) },
);
const arriveArb: fc.Arbitrary<ArriveOp> = fc.oneof(
  fc.record({
    t: fc.constant('arrive' as const),
    kind: fc.constantFrom<Kind>(READ, WRITE, EXCLUSIVE),
    keys: keyArb.map((k) => [k]),
    releaseInRun: rarely,
  }),
  fc.record({
    t: fc.constant('arrive' as const),
    kind: fc.constant<Kind>(READ),
    keys: fc.array(keyArb, { minLength: 1, maxLength: 4 }),
    releaseInRun: rarely,
  }),
);
const releaseArb: fc.Arbitrary<ReleaseOp> = fc.record({
  t: fc.constant('release' as const),
  pick: fc.nat(),
  keyPick: fc.nat(),
  all: fc.boolean(),
});
const opsArb = fc.array(fc.oneof(arriveArb, releaseArb), { minLength: 1, maxLength: 60 });

interface Cmd {
  id: number;
  kind: Kind;
  keys: number[];
  releaseInRun: boolean;
  starts: number;
  /** Keys still held (one entry per hold), once started. */
  holds: number[];
}

/** Replays `ops` against a KeyOrder and a model; throws on the first violation. */
function check(ops: readonly Op[], make = (): KeyOrder => new KeyOrder()): void {
  const o = make();
  const cmds: Cmd[] = [];

  const releaseOne = (c: Cmd, i: number): void => {
    const [k] = c.holds.splice(i, 1);
    o.release(c.kind, k!);
  };
  const releaseAll = (c: Cmd): void => {
    while (c.holds.length > 0) releaseOne(c, 0);
  };

  const start = (c: Cmd): void => {
    const tag = `command #${c.id} (kind ${c.kind}, keys ${c.keys.join(',')})`;
    expect(c.starts, `${tag} started twice`).to.equal(0);
    for (const k of new Set(c.keys)) {
      for (const d of cmds) {
        if (d === c || !d.keys.includes(k)) continue;
        const conflict = c.kind !== READ || d.kind !== READ;
        const dHolds = d.starts > 0 && d.holds.includes(k);
        // (a) mutual exclusion among running holders.
        if (c.kind === EXCLUSIVE && dHolds) {
          expect.fail(`${tag} started while #${d.id} (kind ${d.kind}) holds key ${k}`);
        }
        if (c.kind === READ && d.kind === EXCLUSIVE && dHolds) {
          expect.fail(`${tag} started while exclusive #${d.id} holds key ${k}`);
        }
        // (b) a write waits for every earlier reader/exclusive on its key.
        if (c.kind === WRITE && d.id < c.id && d.kind !== WRITE) {
          expect(
            d.starts > 0 && !dHolds,
            `${tag} started before earlier #${d.id} released ${k}`,
          ).to.equal(true);
        }
        // (c) conflicting commands on one key start in arrival order.
        if (conflict && d.id < c.id) {
          expect(d.starts, `${tag} overtook earlier #${d.id} on key ${k}`).to.equal(1);
        }
        if (conflict && d.id > c.id) {
          expect(d.starts, `later #${d.id} started before ${tag} on key ${k}`).to.equal(0);
        }
      }
    }
    c.starts++;
    c.holds = c.kind === WRITE ? [] : [...c.keys];
    if (c.releaseInRun) releaseAll(c);
  };

  const expectedSize = (): number => {
    const live = new Set<number>();
    for (const c of cmds) {
      if (c.starts === 0) for (const k of c.keys) live.add(k);
      for (const k of c.holds) live.add(k);
    }
    return live.size;
  };

  for (const op of ops) {
    if (op.t === 'arrive') {
      const c: Cmd = {
        id: cmds.length,
        kind: op.kind,
        keys: op.keys,
        releaseInRun: op.releaseInRun,
        starts: 0,
        holds: [],
      };
      cmds.push(c);
      const now =
        op.kind === READ && op.keys.length > 1
          ? o.tryAcquireReads(op.keys)
          : o.tryAcquire(op.kind, op.keys[0]!);
      if (now) start(c);
      else o.wait(new Ticket(c.kind, () => start(c)), c.keys);
    } else {
      const running = cmds.filter((c) => c.holds.length > 0);
      if (running.length > 0) {
        const c = running[op.pick % running.length]!;
        if (op.all) releaseAll(c);
        else releaseOne(c, op.keyPick % c.holds.length);
      }
    }
    expect(o.size, 'size between operations').to.equal(expectedSize());
  }

  // (d) drain: release everything still running until nothing runs.
  for (let round = 0; ; round++) {
    expect(round, 'drain did not settle').to.be.below(10_000);
    const c = cmds.find((x) => x.holds.length > 0);
    if (c === undefined) break;
    releaseAll(c);
  }
  for (const c of cmds) expect(c.starts, `command #${c.id} start count`).to.equal(1);
  expect(o.size).to.equal(0);
}

describe('KeyOrder: model-checked random schedules', () => {
  it('keeps exclusion, write ordering and arrival order, and drains to size 0', () => {
    fc.assert(
      fc.property(opsArb, (ops) => {
        check(ops);
      }),
      { numRuns: 2000 },
    );
  });

  // The checker must be able to fail: mutants of KeyOrder are refused.
  class WritesNeverWait extends KeyOrder {
    override tryAcquire(kind: Kind, hash: number): boolean {
      return kind === WRITE || super.tryAcquire(kind, hash);
    }
  }
  /** Lets a blocked single-key read run anyway, holding nothing (released as a phantom). */
  class ReadsNeverWait extends KeyOrder {
    private readonly phantom = new Map<number, number>();
    override tryAcquire(kind: Kind, hash: number): boolean {
      if (super.tryAcquire(kind, hash)) return true;
      if (kind !== READ) return false;
      this.phantom.set(hash, (this.phantom.get(hash) ?? 0) + 1);
      return true;
    }
    override release(kind: Kind, hash: number): void {
      const n = this.phantom.get(hash) ?? 0;
      if (kind === READ && n > 0) {
        if (n === 1) this.phantom.delete(hash);
        else this.phantom.set(hash, n - 1);
        return;
      }
      super.release(kind, hash);
    }
  }
  for (const Mutant of [WritesNeverWait, ReadsNeverWait]) {
    it(`refuses a broken implementation (${Mutant.name})`, () => {
      let failure: unknown;
      try {
        fc.assert(
          fc.property(opsArb, (ops) => {
            check(ops, () => new Mutant());
          }),
          { numRuns: 2000 },
        );
      } catch (e) {
        failure = e;
      }
      expect(failure, 'the property must fail').to.be.instanceOf(Error);
      // fast-check keeps the checker's own error as the cause.
      expect(String((failure as Error).cause)).to.match(/overtook|started (while|before)/);
    });
  }
});
