/**
 * Config reload. SIGHUP makes the process that read the config file (the
 * primary, with `workers`) read it again. A config that does not validate,
 * or that changes what only a restart can (config.ts reloadPlan), changes
 * nothing: the running config stays, and the reason is logged and counted.
 * Otherwise it is applied (Proxy.reconfigure, in every worker) and the
 * config epoch goes up. No client connection is closed and no request fails.
 */

import { readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { type Config, ConfigError, loadConfigText, reloadPlan } from '../config.js';

/** What `stats` shows about the config in force. */
export interface ConfigStatus {
  /** 1 at start, +1 per applied reload. */
  epoch: number;
  /** sha256 of the config file as read. */
  digest: string;
  /** When it was applied (unix seconds). */
  loadedAt: number;
  /** Reloads that changed nothing (invalid, or needing a restart). */
  failures: number;
  /** When the last one failed (unix seconds; 0: never). */
  failedAt: number;
  /** The process to signal for a reload. */
  pid: number;
}

export function statusRows(s: ConfigStatus): [string, string | number][] {
  return [
    ['proxy_config_epoch', s.epoch],
    ['proxy_config_digest', s.digest],
    ['proxy_config_loaded_at', s.loadedAt],
    ['proxy_config_reload_failures', s.failures],
    ['proxy_config_reload_failed_at', s.failedAt],
    ['proxy_reload_pid', s.pid],
  ];
}

const now = (): number => Math.floor(Date.now() / 1000);

export class Reloader {
  private readonly file: string;
  private readonly log: Logger;
  private readonly publish: (config: Config | null, status: ConfigStatus) => void;
  /** Why the running process cannot apply a config now (beyond reloadPlan); set by its owner. */
  check: (next: Config) => string[] = () => [];
  private running: Config;
  readonly status: ConfigStatus;

  /**
   * `apply` puts an accepted config in force, or (null) only shows the new
   * status, in this process and its workers.
   */
  constructor(
    file: string,
    config: Config,
    digest: string,
    log: Logger,
    apply: (config: Config | null, status: ConfigStatus) => void,
  ) {
    this.file = file;
    this.running = config;
    this.log = log;
    this.publish = apply;
    this.status = { epoch: 1, digest, loadedAt: now(), failures: 0, failedAt: 0, pid: process.pid };
  }

  /** The config in force. */
  get config(): Config {
    return this.running;
  }

  /** Reload on every SIGHUP (which would otherwise end the process, outage logs and all). */
  listen(): void {
    process.on('SIGHUP', () => this.reload());
  }

  /** Read the file again and apply it if it can be; returns whether it was. */
  reload(): boolean {
    let next: Config;
    let digest: string;
    try {
      ({ config: next, digest } = loadConfigText(this.file));
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      return this.refuse([err.message]);
    }
    const plan = reloadPlan(this.running, next);
    const refused = plan.refused.length > 0 ? plan.refused : this.check(next);
    if (refused.length > 0) return this.refuse(refused);
    this.running = next;
    const s = this.status;
    s.epoch++;
    s.digest = digest;
    s.loadedAt = now();
    this.publish(next, s);
    this.log.info(
      { file: this.file, epoch: s.epoch, digest: digest.slice(0, 12), changed: plan.changed },
      'config reloaded',
    );
    return true;
  }

  private refuse(reasons: string[]): boolean {
    const s = this.status;
    s.failures++;
    s.failedAt = now();
    this.log.error(
      { file: this.file, epoch: s.epoch, reasons },
      'config reload failed: the running config stays in force',
    );
    this.publish(null, s);
    return false;
  }
}

/** Write this process's pid to `file` (when set), removed when the process exits. */
export function writePidFile(file: string | undefined): void {
  if (file === undefined) return;
  writeFileSync(file, `${process.pid}\n`);
  process.once('exit', () => {
    try {
      // Only our own: a newer msproxy may have taken the file over.
      if (readFileSync(file, 'utf8').trim() === String(process.pid)) unlinkSync(file);
    } catch {
      // already gone
    }
  });
}
