/**
 * Micro-benchmark of msproxy's own JavaScript per request, without sockets:
 * client bytes go through the request parser and the router to in-process
 * nodes, whose replies (real memcached reply bytes, one chunk per batch, as a
 * connection reads them) go through the response parser and back to the
 * client's done callback. Reports ns per request for get90 and set100
 * streams. Run: npm run bench:pipeline
 */

import { performance } from 'node:perf_hooks';
import type { BackendNode } from '../src/backend/node.js';
import type { ReplyCallback } from '../src/backend/connection.js';
import { RequestParser } from '../src/protocol/request-parser.js';
import type { Request } from '../src/protocol/request.js';
import {
  type Expectation,
  EXPECT_VALUES,
  ResponseParser,
} from '../src/protocol/response-parser.js';
import { Placement } from '../src/routing/placement.js';
import { Ring } from '../src/routing/ring.js';
import { Router } from '../src/routing/router.js';
import { Stats } from '../src/stats.js';

const KEYS = 100000;
const VALUE = Buffer.alloc(1024, 0x61);

/** A node that answers from memory: every get hits, every set is STORED. */
class MemNode {
  readonly isUp = true;
  private readonly cbs: ReplyCallback[] = [];
  private readonly out: Buffer[] = [];
  private readonly parser: ResponseParser;
  constructor(readonly index: number) {
    this.parser = new ResponseParser({
      onReply: (r) => this.cbs.shift()!(null, r),
      onDesync: (why) => {
        throw new Error(why);
      },
    });
  }
  laneOf(): number {
    return 0;
  }
  send(
    _lane: number,
    data: Buffer | readonly Buffer[],
    expect: Expectation,
    cb: ReplyCallback,
  ): void {
    const line = Buffer.isBuffer(data) ? data : data[0]!;
    this.cbs.push(cb);
    this.parser.expect(expect);
    if (expect === EXPECT_VALUES) {
      if (line.length !== current.line) throw new Error('unexpected request');
      this.out.push(current.hit!);
    } else {
      this.out.push(STORED);
    }
  }
  /** Deliver this batch's replies as one chunk. */
  flush(): void {
    if (this.out.length === 0) return;
    const chunk = Buffer.concat(this.out);
    this.out.length = 0;
    this.parser.push(chunk);
  }
}

const STORED = Buffer.from('STORED\r\n');
interface Case {
  bytes: Buffer;
  /** Length of the get line; the hit reply for it. */
  line: number;
  hit: Buffer | null;
}
let current: Case = { bytes: STORED, line: 0, hit: null };

function requests(getRatio: number, count: number): Case[] {
  let s = 42;
  const rand = (): number => ((s = (s * 1664525 + 1013904223) >>> 0), s / 2 ** 32);
  const out: Case[] = [];
  for (let i = 0; i < count; i++) {
    const key = `session:${Math.floor(rand() * KEYS)}`;
    if (rand() < getRatio) {
      const line = Buffer.from(`get ${key}\r\n`);
      const hit = Buffer.concat([
        Buffer.from(`VALUE ${key} 0 ${VALUE.length}\r\n`),
        VALUE,
        Buffer.from('\r\nEND\r\n'),
      ]);
      out.push({ bytes: line, line: line.length, hit });
    } else {
      const bytes = Buffer.concat([
        Buffer.from(`set ${key} 0 0 ${VALUE.length}\r\n`),
        VALUE,
        Buffer.from('\r\n'),
      ]);
      out.push({ bytes, line: 0, hit: null });
    }
  }
  return out;
}

function run(name: string, getRatio: number): void {
  const nodes = [0, 1, 2].map((i) => new MemNode(i));
  const ring = new Ring(nodes.map((_, i) => ({ label: `127.0.0.1:${11211 + i}`, weight: 1 })));
  const members = nodes as unknown as BackendNode[];
  const router = new Router(
    members,
    new Placement(ring, 2, members),
    { ackMode: 'sync', version: '1.6', proxyVersion: '0' },
    new Stats(),
  );
  let answered = 0;
  const done = (): void => {
    answered++;
  };
  const parser = new RequestParser({
    onRequest: (req: Request) => router.execute(req, done),
    onError: (e) => {
      throw new Error(e.message);
    },
  });
  const reqs = requests(getRatio, 20000);
  const BATCH = 50; // requests read per event-loop turn (one read each, like 50 clients)
  const pass = (): void => {
    for (let i = 0; i < reqs.length; i += BATCH) {
      // Fresh copies, as a socket read hands over new memory each time.
      for (let j = i; j < i + BATCH && j < reqs.length; j++) {
        current = reqs[j]!;
        parser.push(Buffer.from(current.bytes));
      }
      for (const n of nodes) n.flush();
    }
  };
  for (let i = 0; i < 5; i++) pass();
  answered = 0;
  const rounds = 20;
  const t0 = performance.now();
  for (let i = 0; i < rounds; i++) pass();
  const ms = performance.now() - t0;
  if (answered !== rounds * reqs.length) throw new Error(`answered ${answered}`);
  console.log(`${name.padEnd(8)} ${((ms * 1e6) / answered).toFixed(0).padStart(5)} ns/request`);
}

const only = process.argv[2];
for (const [name, ratio] of [
  ['get90', 0.9],
  ['get100', 1],
  ['set100', 0],
] as const) {
  if (only === undefined || only === name) run(name, ratio);
}
