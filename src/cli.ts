/**
 * `msproxy --config <file>`: validate the config, start the proxy, reload
 * the config on SIGHUP (server/reload.ts), and stop cleanly on SIGINT/SIGTERM
 * (a second one ends it at once). `--check` validates and exits; `msproxy
 * reload --config <file>` signals the running one. With `workers` over 1
 * this process becomes the cluster primary, and each worker it forks runs
 * this same entry point (told apart by MSP_WORKER).
 */

import cluster from 'node:cluster';
import { Command } from 'commander';
import { pino } from 'pino';
import { type Config, ConfigError, loadConfigText, parseConfig } from './config.js';
import { joinCluster } from './coordination/etcd-gate.js';
import { Proxy } from './server/proxy.js';
import { reloadCommand } from './reload-command.js';
import { Reloader, statusRows, writePidFile } from './server/reload.js';
import { onStopSignals, runPrimary, runWorker } from './server/workers.js';
import { VERSION } from './version.js';

export async function main(argv: string[]): Promise<number> {
  // `msproxy reload --config <file>`: a command of its own, beside the server's options.
  if (argv[2] === 'reload') return reload(argv);
  const program = new Command()
    .name('msproxy')
    .description(
      'Session-HA proxy for memcached: replicates every key to R nodes and fails reads over. ' +
        '`msproxy reload --config <file>` makes the running one reload its config.',
    )
    .version(VERSION, '-V, --version')
    .requiredOption('-c, --config <file>', 'JSON config file (see config.example.json)')
    .option('--check', 'validate the config and exit')
    .exitOverride();
  try {
    program.parse(argv);
  } catch (err) {
    const code = (err as { exitCode?: number }).exitCode;
    return code ?? 2;
  }
  const opts = program.opts<{ config: string; check?: boolean }>();
  let config: Config;
  let digest = '';
  try {
    // A cluster worker takes the primary's config, not the file again: a worker restarted
    // after the file was edited would otherwise put keys elsewhere than the others.
    const given = cluster.isWorker ? process.env['MSP_CONFIG'] : undefined;
    if (given !== undefined) config = parseConfig(JSON.parse(given));
    else ({ config, digest } = loadConfigText(opts.config));
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`msproxy: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  if (opts.check) {
    process.stdout.write(
      `msproxy: ${opts.config} is valid (${config.nodes.length} nodes, replicas ${config.replicas}, workers ${config.workers})\n`,
    );
    return 0;
  }
  const worker = process.env['MSP_WORKER'];
  if (cluster.isWorker && worker !== undefined) {
    const index = Number(worker);
    const log = pino({ level: config.log.level, base: { pid: process.pid, worker: index } });
    return runWorker(config, log, index);
  }
  const log = pino({ level: config.log.level, base: { pid: process.pid } });
  writePidFile(config.pidFile);
  if (config.workers > 1) return runPrimary(config, log, opts.config, digest);
  let proxy: Proxy | null = null;
  const reloader = new Reloader(opts.config, config, digest, log, (next) => {
    if (next !== null) proxy?.reconfigure(next);
  });
  reloader.check = (next) => proxy?.refusal(next) ?? [];
  reloader.listen();
  const group = await joinCluster(config, log);
  // A reload while joining is in force from the start.
  const p = new Proxy(reloader.config, log, group ? { gate: group, worker: 0 } : undefined);
  proxy = p;
  p.configRows = () => statusRows(reloader.status);
  group?.bind(p.peer());
  try {
    await p.start();
  } catch (err) {
    log.fatal({ err }, 'cannot listen');
    await group?.close();
    return 1;
  }
  // A second SIGINT or SIGTERM, whichever the first was, ends the process at once.
  await new Promise<void>((resolve) => onStopSignals(log, () => void p.close().then(resolve)));
  return 0;
}

async function reload(argv: string[]): Promise<number> {
  const program = new Command()
    .name('msproxy reload')
    .description('Make the running msproxy reload its config file (SIGHUP), and say what it did.')
    .requiredOption('-c, --config <file>', 'the config file the running msproxy was started with')
    .exitOverride();
  try {
    program.parse(argv.slice(1));
  } catch (err) {
    return (err as { exitCode?: number }).exitCode ?? 2;
  }
  const { config } = program.opts<{ config: string }>();
  return reloadCommand(config, (line) => process.stdout.write(`${line}\n`));
}
