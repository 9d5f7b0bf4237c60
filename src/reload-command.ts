/**
 * `msproxy reload --config <file>`: check the file, then signal the running
 * msproxy (SIGHUP) to reload it, and report what it did. The process is the
 * one in `pidFile` when the config names one, else the one the listener's
 * `stats` names (`proxy_reload_pid`). The outcome is read from `stats`
 * (`proxy_config_epoch` up: applied; `proxy_config_reload_failures` up:
 * refused, the reason is in msproxy's log); where `stats` cannot be read
 * (auth on), only the signal is reported.
 */

import { readFileSync } from 'node:fs';
import net from 'node:net';
import { type Config, ConfigError, loadConfig } from './config.js';

const STATS_TIMEOUT_MS = 2000;
const OUTCOME_TIMEOUT_MS = 5000;

/** `stats` of the msproxy listening at the config's address, or null if it cannot be read. */
export function readStats(config: Config): Promise<Map<string, string> | null> {
  const { host, port } = config.listen;
  const target = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return new Promise((resolve) => {
    const socket = net.connect({ host: target, port });
    let text = '';
    const finish = (v: Map<string, string> | null): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => finish(null), STATS_TIMEOUT_MS);
    socket.on('connect', () => socket.write('stats\r\n'));
    socket.on('error', () => finish(null));
    socket.on('close', () => finish(null));
    socket.on('data', (chunk) => {
      text += chunk.toString('latin1');
      if (!text.endsWith('END\r\n')) {
        if (!text.startsWith('STAT ') && text.includes('\r\n')) finish(null); // auth, an error
        return;
      }
      const rows = new Map<string, string>();
      for (const line of text.split('\r\n')) {
        const [tag, name, ...value] = line.split(' ');
        if (tag === 'STAT' && name !== undefined) rows.set(name, value.join(' '));
      }
      finish(rows);
    });
  });
}

function pidFrom(file: string): number {
  const pid = Number(readFileSync(file, 'utf8').trim());
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new Error(`${file} holds no pid`);
  return pid;
}

export async function reloadCommand(file: string, out: (line: string) => void): Promise<number> {
  let config: Config;
  try {
    config = loadConfig(file);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    out(`msproxy: ${err.message}\nmsproxy: not reloaded: the running config stays in force`);
    return 2;
  }
  const before = await readStats(config);
  let pid: number;
  try {
    if (config.pidFile !== undefined) pid = pidFrom(config.pidFile);
    else if (before?.get('proxy_reload_pid') !== undefined)
      pid = Number(before.get('proxy_reload_pid'));
    else {
      out(
        `msproxy: cannot find the running msproxy: no pidFile in the config, and no answer to ` +
          `stats at ${config.listen.host}:${config.listen.port}`,
      );
      return 1;
    }
    process.kill(pid, 'SIGHUP');
  } catch (err) {
    out(`msproxy: cannot signal the running msproxy: ${(err as Error).message}`);
    return 1;
  }
  if (before === null) {
    out(`msproxy: sent SIGHUP to ${pid}; its log says whether the config was applied`);
    return 0;
  }
  const epoch = before.get('proxy_config_epoch');
  const failures = before.get('proxy_config_reload_failures');
  const deadline = Date.now() + OUTCOME_TIMEOUT_MS;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    const now = await readStats(config);
    if (now === null) continue;
    if (now.get('proxy_config_epoch') !== epoch) {
      out(`msproxy: reloaded ${file} (config epoch ${now.get('proxy_config_epoch')})`);
      return 0;
    }
    if (now.get('proxy_config_reload_failures') !== failures) {
      out(`msproxy: reload refused; the running config stays in force (the reason is in its log)`);
      return 1;
    }
  }
  out(`msproxy: sent SIGHUP to ${pid}, but saw no outcome within ${OUTCOME_TIMEOUT_MS} ms`);
  return 1;
}
