/**
 * readRaw / rawReadOption over real loopback sockets: bytes arrive intact
 * and in order through the callback, chunks survive the shared read buffer,
 * pause()/resume() and 'end' still work, and unsupported sockets are left
 * alone.
 */

import { expect } from 'chai';
import net from 'node:net';
import { rawReadOption, rawReadSupported, readRaw } from '../../src/net/raw-read.js';

const WAIT_MS = 5000;

/** Rejects with `what` if `p` has not settled within `ms`. */
function withDeadline<T>(p: Promise<T>, what: string, ms = WAIT_MS): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

/** Resolves once `cond()` holds; rejects with `what` after `ms`. */
function waitFor(cond: () => boolean, what: string, ms = WAIT_MS): Promise<void> {
  return withDeadline(
    new Promise<void>((resolve) => {
      const poll = (): void => {
        if (cond()) resolve();
        else setTimeout(poll, 2);
      };
      poll();
    }),
    what,
    ms,
  );
}

function once(emitter: NodeJS.EventEmitter, event: string, what: string): Promise<void> {
  return withDeadline(new Promise<void>((resolve) => emitter.once(event, () => resolve())), what);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** `n` bytes of a pattern that does not repeat every 64 KiB or 256 bytes. */
function pattern(n: number, seed = 12345): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

function expectSameBytes(got: Buffer, want: Buffer, what: string): void {
  expect(got.length, `${what}: length`).to.equal(want.length);
  let firstDiff = -1;
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) {
      firstDiff = i;
      break;
    }
  }
  expect(firstDiff, `${what}: first differing byte`).to.equal(-1);
}

let servers: net.Server[] = [];
let sockets: net.Socket[] = [];

function track(s: net.Socket): net.Socket {
  sockets.push(s);
  return s;
}

interface Fixture {
  port: number;
  /** The next accepted socket (in accept order). */
  accepted(): Promise<net.Socket>;
}

/** A listening 127.0.0.1 server; accepted sockets are queued, not touched. */
async function startServer(options: net.ServerOpts): Promise<Fixture> {
  const queue: net.Socket[] = [];
  const waiters: ((s: net.Socket) => void)[] = [];
  const server = net.createServer(options, (s) => {
    track(s);
    s.on('error', () => {});
    const w = waiters.shift();
    if (w !== undefined) w(s);
    else queue.push(s);
  });
  servers.push(server);
  await withDeadline(
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    }),
    'listen',
  );
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    accepted: () => {
      const s = queue.shift();
      if (s !== undefined) return Promise.resolve(s);
      return withDeadline(new Promise<net.Socket>((resolve) => waiters.push(resolve)), 'accept');
    },
  };
}

async function connect(port: number, extra: Partial<net.NetConnectOpts> = {}): Promise<net.Socket> {
  const c = track(net.connect({ port, host: '127.0.0.1', ...extra } as net.NetConnectOpts));
  c.on('error', () => {});
  await once(c, 'connect', 'client connect');
  return c;
}

/** An accepted socket reading through readRaw, with its chunks collected. */
interface RawSide {
  socket: net.Socket;
  chunks: Buffer[];
  dataEvents: number;
  bytes(): Buffer;
}

function attachRaw(socket: net.Socket): RawSide {
  const side: RawSide = {
    socket,
    chunks: [],
    dataEvents: 0,
    bytes: () => Buffer.concat(side.chunks),
  };
  const ok = readRaw(socket, (chunk) => side.chunks.push(chunk));
  expect(ok, 'readRaw on an accepted socket').to.equal(true);
  // Would fire if reads still went through the stream layer.
  socket.on('data', () => {
    side.dataEvents++;
  });
  socket.resume();
  return side;
}

function length(chunks: Buffer[]): number {
  return chunks.reduce((n, c) => n + c.length, 0);
}

afterEach(async function () {
  for (const s of sockets) s.destroy();
  sockets = [];
  const closing = servers.map(
    (server) => new Promise<void>((resolve) => server.close(() => resolve())),
  );
  servers = [];
  await withDeadline(Promise.all(closing), 'servers to close');
});

describe('raw-read', function () {
  it('is supported on this Node.js', function () {
    expect(rawReadSupported).to.equal(true);
  });

  describe('readRaw', function () {
    it('delivers every byte through onChunk, in order, and no data events', async function () {
      const f = await startServer({ pauseOnConnect: true });
      const client = await connect(f.port);
      const side = attachRaw(await f.accepted());

      const want = pattern(200 * 1024);
      // Several writes of uneven sizes, some larger than the 64 KiB read buffer.
      const cuts = [0, 1, 1000, 1000 + 65536, 1000 + 65536 + 70000, 150000, want.length];
      for (let i = 1; i < cuts.length; i++) client.write(want.subarray(cuts[i - 1], cuts[i]));

      await waitFor(() => length(side.chunks) >= want.length, 'all 200 KiB via onChunk');
      for (const c of side.chunks) {
        expect(Buffer.isBuffer(c)).to.equal(true);
        expect(c.length).to.be.within(1, 64 * 1024);
      }
      expectSameBytes(side.bytes(), want, 'bytes via onChunk');
      expect(side.dataEvents, "'data' events").to.equal(0);
    });

    it('hands out copies: a kept chunk survives reads on another socket', async function () {
      const f = await startServer({ pauseOnConnect: true });
      const clientA = await connect(f.port);
      const a = attachRaw(await f.accepted());
      const clientB = await connect(f.port);
      const b = attachRaw(await f.accepted());

      const fromA = Buffer.alloc(4096, 'A');
      clientA.write(fromA);
      await waitFor(() => a.chunks.length > 0, 'first chunk from A');
      const kept = a.chunks[0];
      const keptCopy = Buffer.from(kept);
      expect(
        keptCopy.every((x) => x === 0x41),
        'A chunk holds A bytes',
      ).to.equal(true);

      // The same length again, from B: its read lands in the same shared buffer.
      const fromB = Buffer.alloc(4096, 'B');
      clientB.write(fromB);
      await waitFor(() => length(b.chunks) >= fromB.length, 'B bytes');
      expectSameBytes(b.bytes(), fromB, 'B bytes');

      expectSameBytes(kept, keptCopy, 'kept chunk from A after B read');
      expect(
        kept.every((x) => x === 0x41),
        'kept chunk still all A',
      ).to.equal(true);
      expect(a.dataEvents + b.dataEvents, "'data' events").to.equal(0);
    });

    it('short reads share a slab without overlapping: kept chunks keep their bytes as it rolls over', async function () {
      const f = await startServer({ pauseOnConnect: true });
      const client = await connect(f.port);
      const side = attachRaw(await f.accepted());
      // One write at a time, each awaited, so each arrives as one read. Sizes around the
      // shared-copy limit (16 KiB) and small ones, 300 KiB in all: several 64 KiB slabs.
      const sizes = [1, 7, 8, 9, 16383, 16384, 16385, 65536];
      for (let x = 99; sizes.length < 60;) {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        sizes.push(1 + (x % 9000));
      }
      const sent: Buffer[] = [];
      let total = 0;
      for (let i = 0; i < sizes.length; i++) {
        const b = pattern(sizes[i]!, i + 1);
        sent.push(b);
        total += b.length;
        client.write(b);
        await waitFor(() => length(side.chunks) >= total, `write ${i}`);
      }
      // Every chunk is checked after all the reads: none was overwritten by a later one.
      expectSameBytes(side.bytes(), Buffer.concat(sent), 'all bytes after all reads');
      expect(side.chunks.length, 'one read per write').to.be.at.least(sizes.length);
    });

    it('stops delivering on pause() and delivers again on resume()', async function () {
      const f = await startServer({ pauseOnConnect: true });
      const client = await connect(f.port);
      const side = attachRaw(await f.accepted());

      client.write('first');
      await waitFor(() => length(side.chunks) >= 5, 'first write');
      expect(side.bytes().toString()).to.equal('first');

      side.socket.pause();
      client.write('second');
      await sleep(100);
      expect(side.bytes().toString(), 'nothing delivered while paused').to.equal('first');

      side.socket.resume();
      await waitFor(() => length(side.chunks) >= 11, 'second write after resume');
      expect(side.bytes().toString()).to.equal('firstsecond');
      expect(side.dataEvents, "'data' events").to.equal(0);
    });

    it("still emits 'end', and the server can reply after the client ended", async function () {
      const f = await startServer({ pauseOnConnect: true, allowHalfOpen: true });
      const client = await connect(f.port);
      const received: Buffer[] = [];
      client.on('data', (c: Buffer) => received.push(c));
      const clientEnded = once(client, 'end', "client 'end'");

      const accepted = await f.accepted();
      const serverEnded = once(accepted, 'end', "server-side 'end'");
      const side = attachRaw(accepted);

      client.end('request');
      await serverEnded;
      expect(side.bytes().toString()).to.equal('request');
      expect(side.socket.writable, 'server side still writable (half open)').to.equal(true);

      side.socket.end('reply');
      await clientEnded;
      expect(Buffer.concat(received).toString()).to.equal('reply');
      expect(side.dataEvents, "'data' events").to.equal(0);
    });

    it('returns false and changes nothing for a socket without a handle', function () {
      const s = new net.Socket();
      const slots = s as unknown as Record<symbol, unknown>;
      const before = Object.getOwnPropertySymbols(s).map((k) => [k, slots[k]]);
      let calls = 0;
      let result: boolean | undefined;
      expect(() => {
        result = readRaw(s, () => calls++);
      }).not.to.throw();
      expect(result).to.equal(false);
      const after = Object.getOwnPropertySymbols(s).map((k) => [k, slots[k]]);
      expect(after.length, 'symbol slots').to.equal(before.length);
      after.forEach(([k, v], i) => {
        expect(k, 'slot key').to.equal(before[i][0]);
        expect(v, `slot ${String(k)}`).to.equal(before[i][1]);
      });
      expect(calls).to.equal(0);
      s.destroy();
    });
    it('returns false for a socket that already reads (its bytes would go to data events)', async function () {
      const f = await startServer({}); // no pauseOnConnect: Node starts reading at once
      const c = await connect(f.port);
      const s = await f.accepted();
      const got: Buffer[] = [];
      s.on('data', (d: Buffer) => got.push(d));
      let calls = 0;
      expect(readRaw(s, () => calls++)).to.equal(false);
      c.write('still data events');
      await waitFor(() => Buffer.concat(got).toString() === 'still data events', 'data events');
      expect(calls).to.equal(0);
    });
  });

  describe('rawReadOption', function () {
    it("delivers a server's bytes to the callback via net.connect's onread", async function () {
      const want = pattern(200 * 1024, 777);
      const f = await startServer({});
      const chunks: Buffer[] = [];
      const client = track(
        net.connect({
          port: f.port,
          host: '127.0.0.1',
          onread: rawReadOption((c) => chunks.push(c)),
        }),
      );
      client.on('error', () => {});
      let dataEvents = 0;
      client.on('data', () => {
        dataEvents++;
      });
      const server = await f.accepted();
      server.write(want.subarray(0, 100000));
      server.write(want.subarray(100000));

      await waitFor(() => length(chunks) >= want.length, 'all 200 KiB via onread');
      expectSameBytes(Buffer.concat(chunks), want, 'bytes via onread');
      for (const c of chunks) expect(c.length).to.be.within(1, 64 * 1024);
      expect(dataEvents, "'data' events").to.equal(0);
    });
  });
});
