/**
 * Real memcached processes for tests.
 *
 * Each instance is started with `-p -1` and MEMCACHED_PORT_FILENAME so the
 * kernel picks a free port, is waited on until it answers `version`, and is
 * stopped by its PID. Every process started here is tracked and killed when
 * the test process exits, so a failing test cannot leak a memcached.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** What pause() sleeps on between looks at the stopped process (1 ms at a time). */
const PAUSE_WAIT = new Int32Array(new SharedArrayBuffer(4));

export interface MemcachedOptions {
  /** Extra command line arguments, e.g. ['-I', '2m']. */
  args?: string[];
  /** Memory in MiB (-m); default 64. */
  memoryMb?: number;
  /** Reuse this port instead of picking a free one (for restart-on-same-port tests). */
  port?: number;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export class Memcached {
  private constructor(
    readonly port: number,
    readonly pid: number,
    private readonly child: ChildProcess,
    readonly options: MemcachedOptions,
  ) {}

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  static async start(options: MemcachedOptions = {}): Promise<Memcached> {
    const dir = mkdtempSync(join(tmpdir(), 'msproxy-mc-'));
    const portFile = join(dir, 'ports');
    const args = [
      '-l',
      '127.0.0.1',
      '-p',
      String(options.port ?? -1),
      '-U',
      '0',
      '-m',
      String(options.memoryMb ?? 64),
      '-t',
      '1',
      ...(process.getuid?.() === 0 ? ['-u', 'root'] : []),
      ...(options.args ?? []),
    ];
    const child = spawn('memcached', args, {
      env: { ...process.env, MEMCACHED_PORT_FILENAME: portFile },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    running.add(child);
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('exit', () => running.delete(child));
    try {
      const port = options.port ?? (await waitForPortFile(portFile, child, () => stderr));
      await waitUntilAnswers(port, child, () => stderr);
      return new Memcached(port, child.pid!, child, options);
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** SIGKILL, as a crash would. */
  async kill(): Promise<void> {
    await this.signal('SIGKILL');
  }

  /** SIGTERM, falling back to SIGKILL after 2 s. */
  async stop(): Promise<void> {
    if (!this.alive) return;
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 2000);
    await this.signal('SIGTERM');
    clearTimeout(timer);
  }

  /**
   * Freeze the process (TCP stays open, nothing is answered). Returns once every thread is
   * stopped: a signal takes effect when each thread next runs, and on a loaded machine a
   * worker thread could otherwise still answer a request sent right after.
   */
  pause(): void {
    process.kill(this.pid, 'SIGSTOP');
    const deadline = Date.now() + 2000;
    while (!this.stopped() && Date.now() < deadline) Atomics.wait(PAUSE_WAIT, 0, 0, 1);
  }

  /** Whether every thread of the process is stopped (Linux /proc; true where it cannot tell). */
  private stopped(): boolean {
    try {
      for (const t of readdirSync(`/proc/${this.pid}/task`)) {
        const stat = readFileSync(`/proc/${this.pid}/task/${t}/stat`, 'latin1');
        const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
        if (state !== 'T' && state !== 't') return false;
      }
      return true;
    } catch {
      return true;
    }
  }

  resume(): void {
    process.kill(this.pid, 'SIGCONT');
  }

  /** Start a fresh, empty memcached on the same port. */
  async restart(): Promise<Memcached> {
    await this.stop();
    return Memcached.start({ ...this.options, port: this.port });
  }

  private signal(sig: NodeJS.Signals): Promise<void> {
    if (!this.alive) return Promise.resolve();
    return new Promise((resolve) => {
      this.child.once('exit', () => resolve());
      process.kill(this.pid, sig);
    });
  }
}

async function waitForPortFile(
  file: string,
  child: ChildProcess,
  stderr: () => string,
): Promise<number> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`memcached exited: ${stderr()}`);
    try {
      const m = /TCP INET: (\d+)/.exec(readFileSync(file, 'utf8'));
      if (m) return Number(m[1]);
    } catch {
      // not written yet
    }
    await sleep(10);
  }
  throw new Error(`memcached did not report its port: ${stderr()}`);
}

async function waitUntilAnswers(
  port: number,
  child: ChildProcess,
  stderr: () => string,
): Promise<void> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`memcached exited: ${stderr()}`);
    if (await answersVersion(port)) return;
    await sleep(20);
  }
  throw new Error(`memcached on port ${port} did not answer: ${stderr()}`);
}

function answersVersion(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    const timer = setTimeout(() => done(false), 500);
    let buf = '';
    function done(ok: boolean): void {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    }
    sock.on('connect', () => sock.write('version\r\n'));
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      // A memcached started with -Y (text auth) refuses version until a client authenticates.
      if (buf.includes('\r\n'))
        done(buf.startsWith('VERSION ') || buf.startsWith('CLIENT_ERROR unauthenticated'));
    });
    sock.on('error', () => done(false));
  });
}

/** A loopback port nothing listens on now (the kernel's pick), for a process to bind right after. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
