/**
 * Binary-protocol clients (memjs, PHP sessions with binary on, ...), against
 * msproxy run as its CLI in front of real memcached nodes: a connection that
 * starts with a binary request header gets one binary "not supported"
 * response and is closed, logged once; text clients are not affected.
 */

import { expect } from 'chai';
import net from 'node:net';
import { Memcached, sleep } from '../helpers/memcached.js';
import { ProxyProcess } from '../helpers/proxy-process.js';
import { MemcacheClient, replyText, statsOf } from '../helpers/proxy.js';

const MESSAGE = 'msproxy speaks the memcached text protocol only';
const WAIT_MS = 3000;

/** A binary-protocol request: 24-byte header (opcode, opaque), then extras and key. */
function binaryRequest(opcode: number, key: string, opaque: number, extras = 0): Buffer {
  const k = Buffer.from(key, 'latin1');
  const b = Buffer.alloc(24 + extras + k.length);
  b[0] = 0x80;
  b[1] = opcode;
  b.writeUInt16BE(k.length, 2);
  b[4] = extras;
  b.writeUInt32BE(extras + k.length, 8);
  b.writeUInt32BE(opaque, 12);
  k.copy(b, 24 + extras);
  return b;
}

/**
 * Connect, run `send`, and collect what the proxy answers until it closes
 * the connection (failing after WAIT_MS). Also returns the local port, to
 * find the log line.
 */
async function exchange(
  port: number,
  send: (s: net.Socket) => Promise<void>,
): Promise<{ got: Buffer; localPort: number }> {
  const s = net.connect({ port, host: '127.0.0.1', noDelay: true });
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  const closed = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      s.destroy();
      reject(
        new Error(`still open after ${WAIT_MS} ms; got ${Buffer.concat(chunks).toString('hex')}`),
      );
    }, WAIT_MS);
    s.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    s.once('error', reject);
  });
  await new Promise<void>((resolve) => s.once('connect', () => resolve()));
  const localPort = s.localPort!;
  await send(s);
  await closed;
  return { got: Buffer.concat(chunks), localPort };
}

/** The exact refusal for a request with this opcode and opaque. */
function expectRefusal(got: Buffer, opcode: number, opaque: number): void {
  expect(got.length, `reply ${got.toString('hex')}`).to.equal(24 + MESSAGE.length);
  expect(got[0], 'magic').to.equal(0x81);
  expect(got[1], 'opcode').to.equal(opcode);
  expect(got.readUInt16BE(2), 'key length').to.equal(0);
  expect(got[4], 'extras length').to.equal(0);
  expect(got[5], 'data type').to.equal(0);
  expect(got.readUInt16BE(6), 'status').to.equal(0x0083);
  expect(got.readUInt32BE(8), 'total body length').to.equal(MESSAGE.length);
  expect(got.readUInt32BE(12), 'opaque').to.equal(opaque);
  expect(got.readBigUInt64BE(16), 'cas').to.equal(0n);
  expect(got.toString('latin1', 24)).to.equal(MESSAGE);
}

for (const workers of [1, 2]) {
  describe(`binary-protocol clients (workers: ${workers})`, function () {
    this.timeout(30_000);
    let nodes: Memcached[] = [];
    let proxy: ProxyProcess;
    let text: MemcacheClient;

    before(async function () {
      nodes = await Promise.all([0, 1].map(() => Memcached.start()));
      proxy = await ProxyProcess.start({
        listen: '127.0.0.1:0',
        nodes: nodes.map((n) => `127.0.0.1:${n.port}`),
        replicas: 2,
        workers,
        log: { level: 'info' },
      });
      text = await MemcacheClient.connect(proxy.port);
      expect(replyText(await text.request('set bk 0 0 2', 'v1'))).to.equal('STORED\r\n');
    });

    after(async function () {
      text?.close();
      if (proxy) expect(await proxy.stop()).to.equal(0);
      await Promise.all(nodes.map((n) => n.kill()));
    });

    /** The warn line logged for the connection from `localPort`, within WAIT_MS. */
    function refusalLog(localPort: number): Promise<Record<string, unknown>> {
      return proxy.waitLog(
        (l) => l['remotePort'] === localPort && String(l.msg).startsWith('binary protocol'),
        WAIT_MS,
      );
    }

    it('a binary get gets "not supported" with its opcode and opaque, and is closed', async function () {
      const { got, localPort } = await exchange(proxy.port, async (s) => {
        s.write(binaryRequest(0x00, 'bk', 0xdeadbeef));
      });
      expectRefusal(got, 0x00, 0xdeadbeef);
      const line = await refusalLog(localPort);
      expect(line['level'], 'warn').to.equal(40);
      expect(line['remoteAddress']).to.equal('127.0.0.1');
      expect(line['opcode']).to.equal(0);
      expect(proxy.logs.filter((l) => l['remotePort'] === localPort)).to.have.length(1);
    });

    it('the same, with the header sent one byte at a time (a set, with extras)', async function () {
      const req = binaryRequest(0x01, 'bk', 0x01020304, 8);
      const { got, localPort } = await exchange(proxy.port, async (s) => {
        for (const b of req) {
          if (s.destroyed) return;
          s.write(Buffer.of(b));
          await sleep(2);
        }
      });
      expectRefusal(got, 0x01, 0x01020304);
      await refusalLog(localPort);
      expect(proxy.logs.filter((l) => l['remotePort'] === localPort)).to.have.length(1);
    });

    it('a header cut short is not answered, and closes when the client ends', async function () {
      const { got } = await exchange(proxy.port, async (s) => {
        s.write(binaryRequest(0x00, 'bk', 7).subarray(0, 10));
        await sleep(100);
        s.end();
      });
      expect(got.length).to.equal(0);
    });

    it('text clients are unaffected, before and after', async function () {
      expect(replyText(await text.request('get bk'))).to.equal('VALUE bk 0 2\r\nv1\r\nEND\r\n');
      const fresh = await MemcacheClient.connect(proxy.port);
      try {
        expect(replyText(await fresh.request('version'))).to.match(/^VERSION /);
        expect(replyText(await fresh.request('get bk'))).to.equal('VALUE bk 0 2\r\nv1\r\nEND\r\n');
        if (workers === 1) {
          // One process: its counters saw every connection above.
          expect((await statsOf(fresh)).get('proxy_binary_refused')).to.equal('2');
        }
      } finally {
        fresh.close();
      }
    });
  });
}
