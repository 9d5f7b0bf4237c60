#!/usr/bin/env node
/**
 * Side-by-side benchmark: msproxy (replicas 2) vs twemproxy (nutcracker, when
 * installed) vs a direct memcached, same load, interleaved rounds.
 *
 *   npm run bench                 # all workloads, 3 rounds of 5 s each
 *   npm run bench -- --rounds 5 --seconds 10 --workloads get90,set100
 *
 * The proxies and their memcached nodes are pinned to core 0, the load
 * generator (bench/loadgen.c, built with gcc) to core 1. Each round runs every
 * workload, and each workload every target once, in a rotated order (A B C,
 * B C A, C A B), so drift cancels out.
 * Reported per workload and target: median req/s, p50/p99 latency, CPU µs per
 * request of the proxy process (of memcached itself for direct), and ratios.
 * Then: p50 added over direct at a fixed 30k req/s, and msproxy's RSS with 10k
 * idle client connections. The load generator checks every value it reads.
 *
 *   npm run bench -- --unpinned --workers 2
 *
 * adds msproxy with `workers: 2` as one more target (its CPU is summed over
 * the primary and the workers); --unpinned runs everything without taskset,
 * so the workers (and everything else) can use every core.
 *
 *   npm run bench -- --workloads get90,bget90
 *
 * bget90 is get90 over the binary protocol; twemproxy, which speaks only
 * text to clients, sits it out.
 *
 *   npm run bench -- --baseline ../msproxy-before
 *
 * adds another checkout's msproxy (built there, in front of the same nodes)
 * as the target `baseline`, so a change is measured against the code before
 * it in one run, with a ratio column against it.
 *
 *   npm run bench -- --etcd --workloads get90
 *
 * adds msproxy with `coordination.etcd` (a member of a cluster in a real etcd,
 * started on free ports) as the target `msproxy-etcd`, and a second plain
 * msproxy started after it, `msproxy-same`. It prints msproxy-etcd's req/s
 * against plain msproxy per workload, beside msproxy-same's against msproxy:
 * two identical processes in one run differ by that much, so a gap between
 * the ratios, not a ratio below 1, is what coordination costs.
 */

import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const ROUNDS = Number(opt('rounds', 3));
const SECONDS = Number(opt('seconds', 5));
const WORKLOADS = opt('workloads', 'get90,mget10,pipe10,set100').split(',');
const KEYS = Number(opt('keys', 100000));
const CONNS = Number(opt('conns', 100));
const IDLE = Number(opt('idle', 10000));
const WORKERS = Number(opt('workers', 1));
const UNPINNED = args.includes('--unpinned');
const BASELINE = opt('baseline', null);
const ETCD = args.includes('--etcd');

const WORKLOAD_ARGS = {
  get90: ['--get-ratio', '0.9'],
  mget10: ['--get-ratio', '1', '--mget', '10'],
  pipe10: ['--get-ratio', '0.9', '--depth', '10'],
  set100: ['--get-ratio', '0'],
  // get90 over the binary protocol (twemproxy does not speak it to clients).
  bget90: ['--get-ratio', '0.9', '--binary'],
};
const BINARY_WORKLOADS = new Set(['bget90']);

const children = new Set();
function cleanup() {
  for (const c of children) {
    try {
      process.kill(c.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

function which(cmd) {
  for (const d of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin'])) {
    if (existsSync(join(d, cmd))) return join(d, cmd);
  }
  return null;
}

const taskset = UNPINNED ? null : which('taskset');
/** `cmd` pinned to `core` (null: not pinned). */
function pinned(core, cmd, argv) {
  return taskset && core !== null ? [taskset, ['-c', String(core), cmd, ...argv]] : [cmd, argv];
}

function start(core, cmd, argv, opts = {}) {
  const [c, a] = pinned(core, cmd, argv);
  const child = spawn(c, a, { stdio: ['ignore', 'ignore', 'pipe'], ...opts });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  child.stderrText = () => err;
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitPort(port, what, ms = 10000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.on('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`${what} did not listen on ${port}`);
}

async function memcached(mem = 1024) {
  const port = await freePort();
  const child = start(0, 'memcached', [
    '-p',
    String(port),
    '-U',
    '0',
    '-m',
    String(mem),
    '-t',
    '1',
    '-u',
    'root',
    '-c',
    '20000',
  ]);
  await waitPort(port, 'memcached');
  return { port, child };
}

/** CPU seconds (user + system) of a process so far. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

/** Child process ids (Linux), for proxies that fork workers. */
function childPids(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/** A per-process measure summed over a process and its live children. */
function tree(pid, measure) {
  return childPids(pid).reduce((total, k) => total + tree(k, measure), measure(pid));
}

/** CPU seconds of a process and its children that are still alive (workers). */
function treeCpu(pid) {
  return tree(pid, cpuSeconds);
}

function rssMB(pid) {
  return tree(pid, (p) => {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  });
}

/** The node flags of bin/msproxy.js's `#!/usr/bin/env -S node ...` line, so the benchmark runs msproxy as installed. */
function binNodeFlags(checkout = root) {
  const first = readFileSync(join(checkout, 'bin', 'msproxy.js'), 'utf8').split('\n', 1)[0];
  const m = /^#!\S*env -S node(.*)$/.exec(first);
  if (!m) throw new Error(`bin/msproxy.js: unexpected first line ${first}`);
  return m[1].trim().split(/\s+/).filter(Boolean);
}

function loadgen(bin, port, extra) {
  return new Promise((resolve, reject) => {
    const [c, a] = pinned(1, bin, ['--port', String(port), ...extra]);
    const child = spawn(c, a, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), (SECONDS + 120) * 1000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      children.delete(child);
      try {
        const r = JSON.parse(out.trim().split('\n').pop());
        if (code !== 0) r.failed = `exit ${code}: ${err.trim()}`;
        resolve(r);
      } catch {
        reject(new Error(`loadgen failed (${code}): ${err}${out}`));
      }
    });
  });
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main() {
  if (!which('memcached'))
    throw new Error('memcached is not installed (apt-get install memcached)');
  if (!which('gcc')) throw new Error('gcc is needed to build bench/loadgen.c');
  const build = join(root, 'bench', '.build');
  mkdirSync(build, { recursive: true });
  const bin = join(build, 'loadgen');
  execFileSync('gcc', ['-O2', '-o', bin, join(root, 'bench', 'loadgen.c')]);
  // Always rebuild: a stale dist/ would benchmark old code.
  execFileSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit' });

  const dir = mkdtempSync(join(tmpdir(), 'msproxy-bench-'));
  const nodes = await Promise.all([memcached(), memcached(), memcached()]);
  const lone = await memcached();
  const targets = [];

  const config = {
    nodes: nodes.map((n) => ({ host: '127.0.0.1', port: n.port })),
    replicas: 2,
    limits: { maxClients: IDLE + 1000 },
    log: { level: 'warn' },
  };
  /**
   * msproxy (from `checkout`) on a free port with `config` and `extra`, pinned to core 0, as
   * the target `name`.
   */
  const msproxyTarget = async (name, prefix, extra = {}, checkout = root) => {
    const port = await freePort();
    const file = join(dir, `${name}.json`);
    writeFileSync(
      file,
      JSON.stringify({ ...config, listen: { host: '127.0.0.1', port }, ...extra }),
    );
    const child = start(
      0,
      process.execPath,
      [...binNodeFlags(checkout), join(checkout, 'bin', 'msproxy.js'), '--config', file],
      { env: { ...process.env, UV_THREADPOOL_SIZE: '1' } },
    );
    // With etcd it listens once it joined the cluster.
    await waitPort(port, name, 20000);
    return { name, port, pid: child.pid, prefix };
  };
  const msproxy = await msproxyTarget('msproxy', 'm:');
  targets.push(msproxy);
  if (WORKERS > 1) {
    targets.push(await msproxyTarget(`msproxy-w${WORKERS}`, 'w:', { workers: WORKERS }));
    // The port answers once the first worker listens: give the others a moment.
    await new Promise((r) => setTimeout(r, 1000));
  }

  if (ETCD) {
    // One etcd member, unpinned: it only sees the instance join (nothing per request).
    const client = await freePort();
    const peer = await freePort();
    start(null, which('etcd') ?? 'etcd', [
      '--data-dir',
      join(dir, 'etcd'),
      '--listen-client-urls',
      `http://127.0.0.1:${client}`,
      '--advertise-client-urls',
      `http://127.0.0.1:${client}`,
      '--listen-peer-urls',
      `http://127.0.0.1:${peer}`,
      '--initial-advertise-peer-urls',
      `http://127.0.0.1:${peer}`,
      '--initial-cluster',
      `default=http://127.0.0.1:${peer}`,
      '--log-level',
      'error',
      '--logger',
      'zap',
    ]);
    await waitPort(client, 'etcd');
    targets.push(
      await msproxyTarget('msproxy-etcd', 'e:', {
        coordination: {
          etcd: { endpoints: [`http://127.0.0.1:${client}`], prefix: '/msproxy/bench' },
        },
      }),
    );
    targets.push(await msproxyTarget('msproxy-same', 's:'));
  }

  if (BASELINE !== null) {
    const base = join(process.cwd(), BASELINE);
    execFileSync('npm', ['run', 'build'], { cwd: base, stdio: 'inherit' });
    targets.push(await msproxyTarget('baseline', 'b:', {}, base));
  }

  const nutcracker = which('nutcracker');
  if (nutcracker) {
    const tport = await freePort();
    const yml = [
      'bench:',
      `  listen: 127.0.0.1:${tport}`,
      '  hash: md5',
      '  distribution: ketama',
      '  auto_eject_hosts: false',
      '  server_connections: 1',
      '  servers:',
      ...nodes.map((n) => `    - 127.0.0.1:${n.port}:1`),
    ].join('\n');
    writeFileSync(join(dir, 'nutcracker.yml'), yml + '\n');
    const tw = start(0, nutcracker, [
      '-c',
      join(dir, 'nutcracker.yml'),
      '-s',
      String(await freePort()),
    ]);
    await waitPort(tport, 'nutcracker');
    targets.push({ name: 'twemproxy', port: tport, pid: tw.pid, prefix: 't:' });
  } else {
    console.log('nutcracker (twemproxy) is not installed: comparing with direct memcached only');
  }
  targets.push({ name: 'direct', port: lone.port, pid: lone.child.pid, prefix: 'd:' });

  console.log(
    `# msproxy bench: ${ROUNDS} rounds x ${SECONDS} s, ${CONNS} connections, ${KEYS} keys, values 1-4 KiB`,
  );
  console.log(
    `# pinning: ${taskset ? 'proxies + memcached on core 0, load generator on core 1' : UNPINNED ? 'none (--unpinned)' : 'taskset not found, no pinning'}`,
  );
  for (const t of targets) {
    await loadgen(bin, t.port, [
      '--preload',
      '--seconds',
      '0.2',
      '--keys',
      String(KEYS),
      '--prefix',
      t.prefix,
      '--conns',
      '1',
    ]);
  }

  /** One timed run of the load generator against target `t` (the same base load for all). */
  const drive = (t, extra) =>
    loadgen(bin, t.port, [
      '--seconds',
      String(SECONDS),
      '--keys',
      String(KEYS),
      '--conns',
      String(CONNS),
      '--prefix',
      t.prefix,
      ...extra,
    ]);

  /** The targets that run workload `w` (twemproxy speaks no binary to clients). */
  const runs = (w) => targets.filter((t) => !(BINARY_WORKLOADS.has(w) && t.name === 'twemproxy'));
  const results = {};
  for (const w of WORKLOADS) results[w] = Object.fromEntries(runs(w).map((t) => [t.name, []]));
  // Rounds outside, workloads inside: drift over the run falls on every workload alike, so
  // ratios between workloads (bget90 / get90) compare like with like.
  for (let r = 0; r < ROUNDS; r++) {
    for (const w of WORKLOADS) {
      const ts = runs(w);
      const order = ts.map((_, i) => ts[(i + r) % ts.length]);
      for (const t of order) {
        const cpu0 = treeCpu(t.pid);
        const res = await drive(t, ['--seed', String(r + 1), ...WORKLOAD_ARGS[w]]);
        const cpu = treeCpu(t.pid) - cpu0;
        res.cpu_us = (cpu * 1e6) / Math.max(1, res.requests);
        results[w][t.name].push(res);
        if (res.failed) console.log(`! ${w} ${t.name}: ${res.failed}`);
      }
    }
  }

  const has = (n) => targets.some((t) => t.name === n);
  const lines = [];
  lines.push(
    `| workload | target | req/s | p50 µs | p99 µs | CPU µs/req | vs twemproxy | vs direct |${has('baseline') ? ' vs baseline |' : ''}`,
  );
  lines.push(`|---|---|---|---|---|---|---|---|${has('baseline') ? '---|' : ''}`);
  for (const w of WORKLOADS) {
    const med = {};
    for (const t of runs(w)) {
      const rs = results[w][t.name];
      med[t.name] = {
        rps: median(rs.map((x) => x.rps)),
        p50: median(rs.map((x) => x.p50_us)),
        p99: median(rs.map((x) => x.p99_us)),
        cpu: median(rs.map((x) => x.cpu_us)),
        bad: rs.reduce((a, x) => a + x.errors + x.bad_values, 0),
      };
    }
    for (const t of runs(w)) {
      const m = med[t.name];
      const vsT = med.twemproxy ? (m.rps / med.twemproxy.rps).toFixed(2) + '×' : 'n/a';
      const vsD = (m.rps / med.direct.rps).toFixed(2) + '×';
      const vsB = has('baseline') ? ` ${(m.rps / med.baseline.rps).toFixed(3)}× |` : '';
      lines.push(
        `| ${w} | ${t.name} | ${Math.round(m.rps).toLocaleString('en-US')} | ${m.p50} | ${m.p99} | ${m.cpu.toFixed(1)} | ${vsT} | ${vsD} |${vsB}${m.bad ? ` errors: ${m.bad}` : ''}`,
      );
    }
  }
  console.log(lines.join('\n'));
  if (ETCD) {
    for (const w of WORKLOADS) {
      const rps = (t) => median(results[w][t].map((x) => x.rps));
      const vs = (t) => (rps(t) / rps('msproxy')).toFixed(3);
      console.log(
        `${w} req/s against msproxy, same run: msproxy-etcd (coordination on) ${vs('msproxy-etcd')}×, ` +
          `msproxy-same (identical, the noise) ${vs('msproxy-same')}×`,
      );
    }
  }
  if (results.get90 && results.bget90) {
    const rps = (w) => median(results[w].msproxy.map((x) => x.rps));
    console.log(
      `\nmsproxy bget90 / get90 (binary vs text, same run): ${(rps('bget90') / rps('get90')).toFixed(2)}×`,
    );
  }

  // p50 added over direct at a fixed 30k req/s (get90).
  const fixed = {};
  for (let r = 0; r < ROUNDS; r++) {
    for (const t of targets) {
      const res = await drive(t, [
        '--rate',
        '30000',
        '--seed',
        String(r + 7),
        ...WORKLOAD_ARGS.get90,
      ]);
      (fixed[t.name] ??= []).push(res.p50_us);
    }
  }
  const fp = Object.fromEntries(Object.entries(fixed).map(([k, v]) => [k, median(v)]));
  console.log(
    `\nget90 at a fixed 30k req/s, p50: ${Object.entries(fp)
      .map(([k, v]) => `${k} ${v} µs`)
      .join(', ')}; msproxy adds ${fp.msproxy - fp.direct} µs over direct`,
  );

  // RSS with IDLE idle client connections.
  const before = rssMB(msproxy.pid);
  const socks = [];
  for (let i = 0; i < IDLE; i++) {
    socks.push(
      await new Promise((resolve, reject) => {
        const s = net.connect(msproxy.port, '127.0.0.1', () => resolve(s));
        s.on('error', reject);
      }),
    );
  }
  await sleep(1000);
  const after = rssMB(msproxy.pid);
  for (const s of socks) s.destroy();
  console.log(
    `msproxy RSS: ${before.toFixed(0)} MB before, ${after.toFixed(0)} MB with ${IDLE} idle client connections`,
  );
}

main()
  .then(() => {
    cleanup();
    process.exit(0);
  })
  .catch((err) => {
    console.error(err);
    cleanup();
    process.exit(1);
  });
