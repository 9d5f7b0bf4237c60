/**
 * msproxy as its own process (the CLI, from the TypeScript sources), for
 * what an in-process Proxy cannot show: `workers` (node:cluster forks the
 * entry point), signals, exit codes.
 *
 * `ProxyProcess.start()` writes the config to a temporary file, runs
 * `node --import tsx/esm test/helpers/msproxy-main.ts --config <file>` and
 * resolves once the log says "msproxy listening" (the primary's line, with
 * `workers`, when there are workers), with the port it bound. Log lines
 * are kept as parsed JSON. `stop()` sends SIGTERM to the PID it started and
 * waits for the exit (SIGKILL after a bound).
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('./msproxy-main.ts', import.meta.url));
/** The installed entry point (needs the build in dist/, which `npm ci` makes). */
const BIN = fileURLToPath(new URL('../../bin/msproxy.js', import.meta.url));
const START_MS = 15_000;
const STOP_MS = 15_000;

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export type LogLine = Record<string, unknown> & { msg?: string };

export class ProxyProcess {
  readonly logs: LogLine[] = [];
  port = 0;
  private exitCode: number | null = null;
  /** The signal that ended it, when one did (the exit code reads 128 then). */
  exitSignal: NodeJS.Signals | null = null;
  private readonly exited: Promise<number>;

  /** `file`: the config file it was started with (a reload test rewrites it). */
  private constructor(
    readonly child: ChildProcess,
    readonly file: string,
  ) {
    running.add(child);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        running.delete(child);
        this.exitSignal = signal;
        this.exitCode = code ?? (signal ? 128 : 1);
        resolve(this.exitCode);
      });
    });
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        this.logs.push(JSON.parse(line) as LogLine);
      } catch {
        this.logs.push({ msg: line });
      }
    });
    child.stderr!.on('data', (d: Buffer) => this.logs.push({ msg: d.toString() }));
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Replace its config file (JSON of `config`, or raw text), as an operator edits it. */
  writeConfig(config: unknown): void {
    writeFileSync(this.file, typeof config === 'string' ? config : JSON.stringify(config));
  }

  /**
   * Run the CLI with `config` (an object, written to a file) and extra
   * arguments. With `bin`, run bin/msproxy.js itself as an executable, as
   * the installed `msproxy` command runs (through its `#!` line).
   */
  static spawn(config: unknown, args: string[] = [], bin = false): ProxyProcess {
    const dir = mkdtempSync(join(tmpdir(), 'msproxy-cfg-'));
    const file = join(dir, 'config.json');
    writeFileSync(file, JSON.stringify(config));
    const stdio: ['ignore', 'pipe', 'pipe'] = ['ignore', 'pipe', 'pipe'];
    const child = bin
      ? spawn(BIN, ['--config', file, ...args], { stdio })
      : spawn(process.execPath, ['--import', 'tsx/esm', MAIN, '--config', file, ...args], {
          stdio,
        });
    return new ProxyProcess(child, file);
  }

  /** Spawn and wait until it listens (throws with its log if it exits or takes too long). */
  static async start(config: unknown, bin = false): Promise<ProxyProcess> {
    const p = ProxyProcess.spawn(config, [], bin);
    const workers = (config as { workers?: number }).workers ?? 1;
    const line = await p.waitLog(
      (l) => l.msg === 'msproxy listening' && (workers === 1 || l['workers'] === workers),
      START_MS,
    );
    p.port = Number(String(line['listen']).split(':').pop());
    return p;
  }

  /** The first log line matching `match` (already logged or to come), within `ms`. */
  async waitLog(match: (l: LogLine) => boolean, ms: number): Promise<LogLine> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.logs.find(match);
      if (found) return found;
      if (this.exitCode !== null || Date.now() > deadline) {
        throw new Error(
          `msproxy ${this.exitCode !== null ? `exited (${this.exitCode})` : 'timed out'}; log:\n` +
            this.logs.map((l) => JSON.stringify(l)).join('\n'),
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** The exit code, once it exits. */
  exit(): Promise<number> {
    return this.exited;
  }

  async stop(): Promise<number> {
    if (this.exitCode !== null) return this.exitCode;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), STOP_MS);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** The PIDs of `pid`'s child processes (a primary's workers). */
export function childrenOf(pid: number): number[] {
  return readFileSync(`/proc/${pid}/task/${pid}/children`, 'latin1')
    .trim()
    .split(/\s+/)
    .filter(Boolean)
    .map(Number);
}
