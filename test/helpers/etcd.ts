/**
 * A real etcd (Debian's etcd-server) for tests: one member on free loopback
 * ports, with its data in a temporary directory. `start()` resolves once
 * /health answers; `kill()` and `stop()` end it by its PID; `restart()`
 * starts it again on the same ports and data, as after a crash. Every
 * process started here is killed when the test process exits.
 */

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { freePort, sleep } from './memcached.js';

const START_MS = 15_000;

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export class Etcd {
  private child: ChildProcess | null = null;
  private output = '';

  private constructor(
    readonly clientPort: number,
    private readonly peerPort: number,
    private readonly dir: string,
  ) {}

  /** The client URL, for `coordination.etcd.endpoints`. */
  get endpoint(): string {
    return `http://127.0.0.1:${this.clientPort}`;
  }

  get pid(): number {
    return this.child?.pid ?? 0;
  }

  get alive(): boolean {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Stop it answering (SIGSTOP), as a hung or overloaded etcd; `resume()` undoes it. */
  pause(): void {
    this.child?.kill('SIGSTOP');
  }

  resume(): void {
    this.child?.kill('SIGCONT');
  }

  /** The keys under `prefix`, read through the v3 API. */
  async keys(prefix: string): Promise<string[]> {
    const client = new Etcd3({ hosts: this.endpoint });
    try {
      return await client.getAll().prefix(prefix).keys();
    } finally {
      client.close();
    }
  }

  /** Whether an `etcd` binary is on the PATH. */
  static installed(): boolean {
    return spawnSync('etcd', ['--version'], { stdio: 'ignore' }).status === 0;
  }

  static async start(): Promise<Etcd> {
    for (let attempt = 0; ; attempt++) {
      const e = new Etcd(
        await freePort(),
        await freePort(),
        mkdtempSync(join(tmpdir(), 'msproxy-etcd-')),
      );
      try {
        await e.launch();
        return e;
      } catch (err) {
        // Another process may have taken a port between the pick and the bind.
        e.remove();
        if (attempt >= 2) throw err;
      }
    }
  }

  private async launch(): Promise<void> {
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const child = spawn(
      'etcd',
      [
        '--name',
        'test',
        '--data-dir',
        join(this.dir, 'data'),
        '--listen-client-urls',
        this.endpoint,
        '--advertise-client-urls',
        this.endpoint,
        '--listen-peer-urls',
        peer,
        '--initial-advertise-peer-urls',
        peer,
        '--initial-cluster',
        `test=${peer}`,
        '--logger',
        'zap',
        '--log-level',
        'error',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    this.output = '';
    running.add(child);
    child.once('exit', () => running.delete(child));
    const keep = (d: Buffer): void => {
      this.output = (this.output + d.toString()).slice(-4000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    const deadline = Date.now() + START_MS;
    while (Date.now() < deadline) {
      if (!this.alive) throw new Error(`etcd exited: ${this.output}`);
      if (await this.healthy()) return;
      await sleep(50);
    }
    child.kill('SIGKILL');
    throw new Error(`etcd did not become healthy: ${this.output}`);
  }

  private healthy(): Promise<boolean> {
    return new Promise((resolve) => {
      const req = http.get(`${this.endpoint}/health`, { timeout: 500 }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve(res.statusCode === 200 && body.includes('"true"')));
      });
      req.on('error', () => resolve(false));
      req.on('timeout', () => {
        req.destroy();
        resolve(false);
      });
    });
  }

  private signal(sig: NodeJS.Signals): Promise<void> {
    const child = this.child;
    if (child === null || !this.alive) return Promise.resolve();
    return new Promise((resolve) => {
      child.once('exit', () => resolve());
      process.kill(child.pid!, sig);
    });
  }

  /** SIGKILL, as a crash would (the data stays for restart()). */
  kill(): Promise<void> {
    return this.signal('SIGKILL');
  }

  /** Start again on the same ports and data. */
  restart(): Promise<void> {
    return this.launch();
  }

  /** SIGTERM (SIGKILL after 5 s), and remove the data. */
  async stop(): Promise<void> {
    const timer = setTimeout(() => this.child?.kill('SIGKILL'), 5000);
    await this.signal('SIGTERM');
    clearTimeout(timer);
    this.remove();
  }

  private remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
