/**
 * ClientSession's writes, against a stand-in socket and router: replies go
 * out as the views the router gave (no copy) while the client keeps up, and
 * as copies of just their bytes once bytes are queued for it, so a client
 * that stops reading holds its own replies, not the 64 KiB read slabs
 * (raw-read.ts) they are views of.
 */

import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { expect } from 'chai';
import { pino } from 'pino';
import type { Request } from '../../src/protocol/request.js';
import type { Done, Router } from '../../src/routing/router.js';
import { ClientSession } from '../../src/server/session.js';
import { Stats } from '../../src/stats.js';

/** What ClientSession uses of a socket; `writableLength` is set by the test. */
class FakeSocket extends EventEmitter {
  writableLength = 0;
  destroyed = false;
  readonly written: Buffer[] = [];
  corked = 0;
  setNoDelay(): void {}
  pause(): void {}
  resume(): void {}
  cork(): void {
    this.corked++;
  }
  uncork(): void {}
  write(b: Buffer): boolean {
    this.written.push(b);
    return true;
  }
  end(): void {}
  destroy(): void {
    this.destroyed = true;
  }
}

/** A 64 KiB "slab" whose slices the router answers with, as backend reads are. */
const slab = Buffer.alloc(64 * 1024, 0x78);

/** Answers `get <n>` with `n` bytes of the slab, at an offset of its own. */
function fakeRouter(): Router {
  let at = 0;
  return {
    execute(req: Request, done: Done): void {
      const n = Number(req.keys[0]!.toString('latin1'));
      const view = slab.subarray(at, at + n);
      view.fill(0x61 + (at % 26));
      at += n;
      done(view);
    },
  } as unknown as Router;
}

async function session(behind: boolean): Promise<FakeSocket> {
  const sock = new FakeSocket();
  sock.writableLength = behind ? 1 : 0;
  new ClientSession(sock as unknown as net.Socket, fakeRouter(), new Stats(), {
    maxInflight: 1000,
    itemSizeMax: 1024 * 1024,
    maxMultigetLine: 64 * 1024,
    users: null,
    log: pino({ level: 'silent' }),
  });
  return sock;
}

/** Let the session write what is ready (it writes in the check phase). */
async function turn(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
}

function isView(b: Buffer): boolean {
  return b.buffer === slab.buffer;
}

describe('ClientSession: what it writes', () => {
  it('a client that keeps up gets the views as they are: one reply, or several corked', async () => {
    const sock = await session(false);
    sock.emit('data', Buffer.from('get 31\r\n'));
    await turn();
    expect(sock.written).to.have.length(1);
    expect(isView(sock.written[0]!), 'the reply is the view itself').to.equal(true);

    sock.emit('data', Buffer.from('get 3000\r\nget 3000\r\n'));
    await turn();
    expect(sock.written).to.have.length(3);
    expect(sock.corked).to.equal(1);
    expect(sock.written.slice(1).every(isView), 'corked views').to.equal(true);
  });

  it('a client that is behind gets copies of just the bytes, in order', async () => {
    const sock = await session(true);
    sock.emit('data', Buffer.from('get 31\r\n'));
    await turn();
    expect(sock.written).to.have.length(1);
    const one = sock.written[0]!;
    expect(one.length).to.equal(31);
    expect(one.buffer.byteLength, 'its own bytes').to.equal(31);
    expect(one.equals(slab.subarray(0, 31))).to.equal(true);

    // Past the 4 KiB at which replies are otherwise written corked, as views.
    sock.emit('data', Buffer.from('get 3000\r\nget 5000\r\n'));
    await turn();
    expect(sock.written).to.have.length(2);
    const two = sock.written[1]!;
    expect(two.length).to.equal(8000);
    expect(two.buffer.byteLength, 'its own bytes').to.equal(8000);
    expect(two.equals(slab.subarray(31, 31 + 8000)), 'both replies, in order').to.equal(true);
  });

  it('short replies ready together are gathered into one buffer either way', async () => {
    for (const behind of [false, true]) {
      const sock = await session(behind);
      sock.emit('data', Buffer.from('get 10\r\nget 20\r\nget 30\r\n'));
      await turn();
      expect(sock.written, `behind ${behind}`).to.have.length(1);
      const b = sock.written[0]!;
      expect(isView(b)).to.equal(false);
      expect(b.length).to.equal(60);
    }
  });
});
