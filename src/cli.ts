/**
 * `msproxy --config <file>`: validate the config, start the proxy, and stop
 * cleanly on SIGINT/SIGTERM (a second one ends it at once). SIGHUP is logged and ignored (see
 * ignoreHangup). `--check` validates and exits. With `workers` over 1 this
 * process becomes the cluster primary, and each worker it forks runs this
 * same entry point (told apart by MSP_WORKER).
 */

import cluster from 'node:cluster';
import { Command } from 'commander';
import { pino } from 'pino';
import { ConfigError, loadConfig, parseConfig } from './config.js';
import { joinCluster } from './coordination/etcd-gate.js';
import { Proxy } from './server/proxy.js';
import { ignoreHangup, onStopSignals, runPrimary, runWorker } from './server/workers.js';
import { VERSION } from './version.js';

export async function main(argv: string[]): Promise<number> {
  const program = new Command()
    .name('msproxy')
    .description(
      'Session-HA proxy for memcached: replicates every key to R nodes and fails reads over.',
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
  let config;
  try {
    // A cluster worker takes the primary's config, not the file again: a worker restarted
    // after the file was edited would otherwise put keys elsewhere than the others.
    const given = cluster.isWorker ? process.env['MSP_CONFIG'] : undefined;
    config = given !== undefined ? parseConfig(JSON.parse(given)) : loadConfig(opts.config);
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
  if (config.workers > 1) return runPrimary(config, log);
  ignoreHangup(log);
  const group = await joinCluster(config, log);
  const proxy = new Proxy(config, log, group ? { gate: group, worker: 0 } : undefined);
  group?.bind(proxy.peer());
  try {
    await proxy.start();
  } catch (err) {
    log.fatal({ err }, 'cannot listen');
    await group?.close();
    return 1;
  }
  // A second SIGINT or SIGTERM, whichever the first was, ends the process at once.
  await new Promise<void>((resolve) => onStopSignals(log, () => void proxy.close().then(resolve)));
  return 0;
}
