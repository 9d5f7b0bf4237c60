/**
 * Authentication on msproxy's port, against real memcached nodes: binary
 * clients with SASL PLAIN, text clients with memcached's text auth, which is
 * checked side by side with a real memcached started with -Y.
 */

import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import memjs from 'memjs';
import { Op } from '../../src/protocol/binary.js';
import { exchange, request, setExtras, show } from '../helpers/binary.js';
import { Memcached } from '../helpers/memcached.js';
import { type Cluster, MemcacheClient, startCluster, statsOf } from '../helpers/proxy.js';

/**
 * Send each piece once the replies to the last one are in (as a client that
 * waits for its answers: memcached -Y answers only the first of several
 * commands pipelined before authentication), and collect the replies until
 * `quietMs` pass with nothing new or the peer closes.
 */
function talk(
  port: number,
  pieces: readonly string[],
  quietMs = 150,
): Promise<{ got: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    let got = '';
    let closed = false;
    let next = 0;
    let timer: NodeJS.Timeout | null = null;
    const done = (): void => {
      if (timer !== null) clearTimeout(timer);
      s.destroy();
      resolve({ got, closed });
    };
    const arm = (): void => {
      if (timer !== null) clearTimeout(timer);
      timer = setTimeout(() => {
        if (next < pieces.length && !closed) {
          s.write(pieces[next++]!);
          arm();
        } else done();
      }, quietMs);
    };
    s.on('data', (d) => {
      got += d.toString('latin1');
      arm();
    });
    s.on('close', () => {
      closed = true;
      done();
    });
    s.on('error', () => {});
    s.on('connect', () => {
      s.write(pieces[next++]!);
      arm();
    });
  });
}

const sasl = (user: string, password: string, opaque: number) =>
  request({ opcode: Op.SASL_AUTH, key: 'PLAIN', value: `\0${user}\0${password}`, opaque });

describe('auth: users file on, SASL PLAIN for binary, text auth for text', function () {
  this.timeout(20000);
  let c: Cluster;
  let mc: Memcached;

  before(async () => {
    const users = join(mkdtempSync(join(tmpdir(), 'msp-auth-')), 'users');
    writeFileSync(users, 'alice:wonder land\nbob:builder\n');
    // memcached's text auth reads the password as one token: give it one without a space.
    const mcUsers = join(mkdtempSync(join(tmpdir(), 'msp-auth-')), 'users');
    writeFileSync(mcUsers, 'bob:builder\n');
    c = await startCluster({ nodes: 2, auth: { usersFile: users } });
    mc = await Memcached.start({ args: ['-Y', mcUsers] });
  });
  after(async () => {
    await c.stop();
    await mc.kill();
  });

  it('text: answers as memcached -Y does, before and after authenticating', async function () {
    const scripts = [
      ['get k\r\n', 'version\r\n', 'quit\r\n'],
      ['set x 0 0 10\r\nbob wrong!\r\n', 'get k\r\n'],
      ['set x 0 0 8\r\nnopasswd\r\n', 'set y 0 0 4\r\n', 'b b\r\n'],
      ['set auth 0 0 11\r\nbob builder\r\n', 'set k 0 0 2\r\nhi\r\nget k\r\ndelete k\r\n'],
    ];
    for (const script of scripts) {
      const [a, b] = await Promise.all([talk(mc.port, script), talk(c.port, script)]);
      expect(a.got, 'memcached answered').to.not.equal('');
      expect(b.got, JSON.stringify(script)).to.equal(a.got);
      expect(b.closed).to.equal(a.closed);
    }
  });

  it('binary: only SASL and version before auth; anything else is refused and the connection closed', async function () {
    const r = await exchange(
      c.port,
      [
        request({ opcode: Op.SASL_LIST_MECHS, opaque: 1 }),
        request({ opcode: Op.VERSION, opaque: 2 }),
        request({ opcode: Op.GET, key: 'k', opaque: 3 }),
        request({ opcode: Op.NOOP, opaque: 4 }),
      ],
      { expect: 3 },
    );
    expect(r.packets.map((p) => show(p))).to.deep.equal([
      'op=20 st=0 opq=1 ext= key="" val="PLAIN"',
      'op=b st=0 opq=2 ext= key="" val="1.6.18"',
      'op=0 st=20 opq=3 ext= key="" val="Auth failure."',
    ]);
    expect(r.closed).to.equal(true);
  });

  it('binary: a wrong password fails and is counted; the right one lets commands through', async function () {
    const before = await MemcacheClient.connect(c.port);
    await before.command('set auth 0 0 11', 'bob builder');
    const errors0 = Number((await statsOf(before)).get('auth_errors'));
    const r = await exchange(
      c.port,
      [
        sasl('alice', 'wonder', 1),
        sasl('nobody', 'wonder land', 2),
        request({ opcode: Op.SASL_STEP, key: 'PLAIN', value: 'x', opaque: 3 }),
        sasl('alice', 'wonder land', 4),
        request({ opcode: Op.SET, key: 'bk', extras: setExtras(1, 0), value: 'v', opaque: 5 }),
        request({ opcode: Op.GET, key: 'bk', opaque: 6 }),
      ],
      { expect: 6 },
    );
    expect(r.packets.map((p) => show(p))).to.deep.equal([
      'op=21 st=20 opq=1 ext= key="" val="Auth failure."',
      'op=21 st=20 opq=2 ext= key="" val="Auth failure."',
      'op=22 st=20 opq=3 ext= key="" val="Auth failure."',
      'op=21 st=0 opq=4 ext= key="" val="Authenticated"',
      'op=1 st=0 opq=5 ext= key="" val="" cas=*',
      'op=0 st=0 opq=6 ext=00000001 key="" val="v" cas=*',
    ]);
    const after = await statsOf(before);
    expect(Number(after.get('auth_errors')) - errors0).to.equal(3);
    before.close();
  });

  it('memjs authenticates with SASL PLAIN; a wrong password gets no data', async function () {
    const opts = { retries: 0, timeout: 2, logger: { log: () => {} } };
    const good = memjs.Client.create(`127.0.0.1:${c.port}`, {
      ...opts,
      username: 'alice',
      password: 'wonder land',
    });
    const bad = memjs.Client.create(`127.0.0.1:${c.port}`, {
      ...opts,
      username: 'alice',
      password: 'nope',
    });
    try {
      expect(await good.set('memjs-auth', 'yes', {})).to.equal(true);
      expect((await good.get('memjs-auth')).value?.toString()).to.equal('yes');
      let refused: unknown = null;
      try {
        await bad.get('memjs-auth');
      } catch (e) {
        refused = e;
      }
      // memjs rejects with its message as a string.
      expect(String(refused), 'a wrong password must not read').to.match(/authentication failed/i);
    } finally {
      good.close();
      bad.close();
    }
  });

  it('pylibmc (binary=True) authenticates with SASL; a wrong password raises', async function () {
    const python = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
    const script = [
      'import json, sys, pylibmc',
      'def client(pw):',
      '    return pylibmc.Client(["127.0.0.1:" + sys.argv[1]], binary=True, username="bob", password=pw)',
      'out = {}',
      'ok = client("builder")',
      'out["set"] = ok.set("py-auth", "yes")',
      'out["get"] = ok.get("py-auth")',
      'try:',
      '    client("wrong").get("py-auth")',
      '    out["wrong"] = "no error"',
      'except pylibmc.Error as e:',
      '    out["wrong"] = type(e).__name__',
      'print(json.dumps(out))',
    ].join('\n');
    const out = await new Promise<string>((resolve, reject) =>
      execFile(
        python,
        ['-c', script, String(c.port)],
        { timeout: 20_000 },
        (err, stdout, stderr) =>
          err === null ? resolve(stdout) : reject(new Error(`${err.message}\n${stderr}`)),
      ),
    );
    const r = JSON.parse(out.trim().split('\n').pop()!) as Record<string, unknown>;
    expect(r.set).to.equal(true);
    expect(r.get).to.equal('yes');
    expect(r.wrong).to.not.equal('no error');
  });
});
