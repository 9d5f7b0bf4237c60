/**
 * Configuration: the JSON file's schema, its defaults, and validation errors
 * that name the field and the reason.
 */

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIPv6 } from 'node:net';
import { z } from 'zod';
import { Users, UsersFileError } from './auth.js';
import { hashedLabel } from './routing/ring.js';

const HOST_PORT = /^(.+):(\d{1,5})$/;

function splitHostPort(s: string): { host: string; port: number } | undefined {
  const m = HOST_PORT.exec(s);
  if (!m) return undefined;
  const host = m[1]!.replace(/^\[(.*)\]$/, '$1');
  return { host, port: Number(m[2]) };
}

const port = z.number().int().min(1).max(65535);
/** The listen port may be 0: the kernel picks one (tests, socket activation). */
const listenPort = z.number().int().min(0).max(65535);
const host = z.string().min(1);

/** "host:port" or {host, port}. */
const address = z.preprocess(
  (v) => (typeof v === 'string' ? (splitHostPort(v) ?? v) : v),
  z.strictObject(
    { host, port: listenPort },
    {
      error: (iss) =>
        typeof iss.input === 'string' ? `expected "host:port", got "${iss.input}"` : undefined,
    },
  ),
);

const node = z.preprocess(
  (v) => (typeof v === 'string' ? (splitHostPort(v) ?? v) : v),
  z.strictObject(
    {
      host,
      port,
      /** Label hashed onto the ring instead of host:port (as twemproxy's server names). */
      name: z.string().min(1).optional(),
      weight: z.number().int().min(1).max(1000).default(1),
    },
    {
      error: (iss) =>
        typeof iss.input === 'string' ? `expected "host:port", got "${iss.input}"` : undefined,
    },
  ),
);

const duration = z.number().int().min(1);

export const configSchema = z
  .strictObject({
    listen: address,
    nodes: z.array(node).min(1),
    /** Copies of each key: 1 is plain sharding, 2 a primary and a backup. */
    replicas: z.number().int().min(1).default(2),
    /**
     * Processes serving clients (node:cluster): each runs the whole proxy on the same
     * port. 1 runs no cluster at all.
     */
    workers: z.number().int().min(1).max(64).default(1),
    /** sync: answer once every reachable replica answered; async: answer with the authority's reply. */
    ackMode: z.enum(['sync', 'async']).default('sync'),
    timeouts: z
      .strictObject({
        connectMs: duration.default(1000),
        requestMs: duration.default(250),
      })
      .default({ connectMs: 1000, requestMs: 250 }),
    backend: z
      .strictObject({
        /**
         * Persistent connections per node, shared by all clients. One batches the most
         * requests per write; more spread one node's load over its memcached threads.
         */
        connections: z.number().int().min(1).max(64).default(1),
        /** Consecutive failures that mark a node down. */
        failureThreshold: z.number().int().min(1).default(2),
        /** First probe delay of a down node; doubles up to probeMaxMs, with jitter. */
        probeMs: duration.default(100),
        probeMaxMs: duration.default(500),
      })
      .default({ connections: 1, failureThreshold: 2, probeMs: 100, probeMaxMs: 500 }),
    recovery: z
      .strictObject({
        /** Keys a down node's outage log holds; past it the node is flushed on rejoin. */
        outageLogMax: z.number().int().min(0).default(100000),
        /** Keys per second copied to a node that restarted empty (0: no re-sync). */
        resyncRate: z.number().int().min(0).default(5000),
      })
      .default({ outageLogMax: 100000, resyncRate: 5000 }),
    limits: z
      .strictObject({
        maxClients: z.number().int().min(1).default(10000),
        /** Requests a client may have in flight before msproxy stops reading from it. */
        maxInflight: z.number().int().min(1).default(1024),
        /** Largest item, as memcached's -I. */
        itemSizeMax: z
          .number()
          .int()
          .min(1024)
          .max(1024 * 1024 * 1024)
          .default(1024 * 1024),
        /** Longest get/gets command line. */
        maxMultigetLine: z
          .number()
          .int()
          .min(2048)
          .default(1024 * 1024),
      })
      .default({
        maxClients: 10000,
        maxInflight: 1024,
        itemSizeMax: 1024 * 1024,
        maxMultigetLine: 1024 * 1024,
      }),
    /**
     * Client authentication, off when absent: binary clients use SASL PLAIN, text clients
     * memcached's text auth, with the users of `usersFile` (memcached's -Y format).
     */
    auth: z.strictObject({ usersFile: z.string().min(1) }).optional(),
    /**
     * Several msproxy instances (and the workers of each) in front of the same nodes act as
     * one cluster through etcd: one view of which nodes serve, shared fences, one re-sync.
     * Off when absent.
     */
    coordination: z
      .strictObject({
        etcd: z.strictObject({
          endpoints: z.array(z.url({ protocol: /^https?$/ })).min(1),
          /** Every instance with the same prefix is one cluster. */
          prefix: z
            .string()
            .regex(
              /^\/[^\s]*[^/\s]$/,
              'expected an absolute key prefix such as "/msproxy/sessions"',
            ),
          /** How long an instance that stopped renewing its lease (died, cut off) stays a member. */
          leaseTtlSeconds: z.number().int().min(1).max(60).default(3),
          /** A call to etcd that takes longer counts as failed. */
          timeoutMs: duration.default(2000),
        }),
      })
      .optional(),
    /**
     * File msproxy writes its pid to while it runs (removed on exit): what `msproxy reload`
     * signals. Without it, `msproxy reload` asks the listener's `stats`.
     */
    pidFile: z.string().min(1).optional(),
    log: z
      .strictObject({
        level: z
          .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
          .default('info'),
      })
      .default({ level: 'info' }),
  })
  .superRefine((c, ctx) => {
    if (c.replicas > c.nodes.length) {
      ctx.addIssue({
        code: 'custom',
        path: ['replicas'],
        message: `replicas (${c.replicas}; 2 when not set) cannot exceed the number of nodes (${c.nodes.length})`,
      });
    }
    const seen = new Map<string, number>();
    const hashed = new Map<string, number>();
    const at = new Map<string, number>();
    c.nodes.forEach((n, i) => {
      const label = nodeLabel(n);
      const prev = seen.get(label);
      if (prev !== undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['nodes', i],
          message: `duplicate node ${label} (same as nodes[${prev}])`,
        });
      }
      seen.set(label, i);
      // Other labels hashed as one string ("cache-a:11211" and a node named "cache-a") get
      // the same ring points: the later one would never be a key's primary.
      const h = hashedLabel(label);
      const twin = prev === undefined ? hashed.get(h) : undefined;
      if (twin !== undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['nodes', i],
          message: `ring label collision: ${describe(n)} is hashed onto the ring as "${h}", as nodes[${twin}] (${describe(c.nodes[twin]!)}) is; their ring points would coincide (give one a distinct name)`,
        });
      }
      if (!hashed.has(h)) hashed.set(h, i);
      // Two labels on one memcached would put both replicas of many keys on that one process.
      const keys = addressKeys(n);
      const same = prev === undefined ? keys.find((k) => at.has(k)) : undefined;
      if (same !== undefined) {
        const j = at.get(same)!;
        ctx.addIssue({
          code: 'custom',
          path: ['nodes', i],
          message: `duplicate address ${describe(n)} (same memcached as nodes[${j}], ${describe(c.nodes[j]!)})`,
        });
      }
      for (const k of keys) if (!at.has(k)) at.set(k, i);
    });
  });

/** A node for an error message: its address, and its name if it has one. */
function describe(n: { host: string; port: number; name?: string | undefined }): string {
  const address = `${n.host.includes(':') ? `[${n.host}]` : n.host}:${n.port}`;
  return n.name === undefined ? address : `${address} "${n.name}"`;
}

/**
 * What a node's address is compared by to find one memcached listed twice:
 * the host without case, and the port. Names are not resolved, except that
 * `localhost` matches both `127.0.0.1` and `::1` (it may resolve to either);
 * those two do not match each other.
 */
function addressKeys(n: { host: string; port: number }): string[] {
  const host = canonicalHost(n.host);
  if (host === 'localhost') return [`127.0.0.1 ${n.port}`, `::1 ${n.port}`];
  return [`${host} ${n.port}`];
}

/**
 * One spelling per address: lower case, no trailing dot, IPv4 in dotted
 * quads (`127.1` is 127.0.0.1), IPv6 compressed, and IPv4-mapped IPv6
 * (`::ffff:127.0.0.1`) as its IPv4 address. The WHATWG URL parser does the
 * numeric forms.
 */
function canonicalHost(raw: string): string {
  let host = raw.toLowerCase();
  if (host.endsWith('.')) host = host.slice(0, -1);
  let parsed: string;
  try {
    parsed = new URL(`http://${isIPv6(host) ? `[${host}]` : host}`).hostname;
  } catch {
    return host;
  }
  if (!parsed.startsWith('[')) return parsed;
  const v6 = parsed.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(v6);
  if (mapped === null) return v6;
  const hi = Number.parseInt(mapped[1]!, 16);
  const lo = Number.parseInt(mapped[2]!, 16);
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

export type Config = z.output<typeof configSchema> & {
  /** The users of auth.usersFile, loaded with the config; null without auth. */
  users: Users | null;
};
export type NodeConfig = Config['nodes'][number];

/**
 * The ring label of a node: its name, or host:port. The ring hashes "host" alone for a label
 * "host:11211", as libmemcached does (see hashedLabel in routing/ring.ts).
 */
export function nodeLabel(n: { host: string; port: number; name?: string | undefined }): string {
  if (n.name !== undefined) return n.name;
  return `${n.host}:${n.port}`;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Validate a parsed JSON value; errors read "config: <field>: <reason>". */
export function parseConfig(value: unknown): Config {
  const r = configSchema.safeParse(value);
  if (r.success) {
    // Not enumerable: a config handed to workers as JSON carries the file name, not the users
    // (each worker reads the file itself).
    return Object.defineProperty({ ...r.data }, 'users', {
      value: loadUsers(r.data.auth?.usersFile),
      enumerable: false,
    }) as Config;
  }
  const lines = r.error.issues.map((i) => {
    const path = i.path.length
      ? i.path
          .map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))
          .join('')
          .replace(/^\./, '')
      : '(root)';
    return `config: ${path}: ${i.message}`;
  });
  throw new ConfigError(lines.join('\n'));
}

/** The users file, read and checked now, so a bad one is a config error naming file and line. */
function loadUsers(file: string | undefined): Users | null {
  if (file === undefined) return null;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`config: auth.usersFile: cannot read ${file}: ${(err as Error).message}`);
  }
  try {
    return Users.parse(text);
  } catch (err) {
    if (!(err instanceof UsersFileError)) throw err;
    const where = err.line > 0 ? `${file}:${err.line}` : file;
    throw new ConfigError(`config: auth.usersFile: ${where}: ${err.message}`);
  }
}

export function loadConfig(file: string): Config {
  return loadConfigText(file).config;
}

/** The config in `file`, and the sha256 of the file's bytes (what `proxy_config_digest` shows). */
export function loadConfigText(file: string): { config: Config; digest: string } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`config: cannot read ${file}: ${(err as Error).message}`);
  }
  return { config: parseConfigText(file, text), digest: digestOf(text) };
}

export function digestOf(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function parseConfigText(file: string, text: string): Config {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`config: ${file} is not valid JSON: ${(err as Error).message}`);
  }
  return parseConfig(json);
}

/**
 * Settings a reload cannot change in a running process: the listener and the
 * process layout, the etcd cluster and the connection pools.
 */
const RESTART_ONLY = ['listen', 'workers', 'coordination', 'backend.connections', 'pidFile'];

/** Dotted paths of the fields that differ between two configs (their JSON values). */
export function changedFields(a: Config, b: Config): string[] {
  const out: string[] = [];
  const walk = (x: unknown, y: unknown, path: string): void => {
    const plain = (v: unknown): v is Record<string, unknown> =>
      typeof v === 'object' && v !== null && !Array.isArray(v);
    if (plain(x) && plain(y) && path !== 'nodes') {
      for (const k of new Set([...Object.keys(x), ...Object.keys(y)])) {
        walk(x[k], y[k], path === '' ? k : `${path}.${k}`);
      }
    } else if (JSON.stringify(x) !== JSON.stringify(y)) {
      out.push(path);
    }
  };
  walk(a, b, '');
  return out;
}

/**
 * What a reload from `running` to `next` would change, and the changes it
 * cannot make (each with the reason), in which case it makes none.
 */
export function reloadPlan(
  running: Config,
  next: Config,
): { changed: string[]; refused: string[] } {
  const changed = changedFields(running, next);
  const refused: string[] = [];
  for (const f of changed) {
    if (RESTART_ONLY.some((r) => f === r || f.startsWith(`${r}.`))) {
      refused.push(`${f} changes only with a restart`);
    } else if (
      (f === 'nodes' || f === 'replicas') &&
      (running.workers > 1 || running.coordination !== undefined)
    ) {
      // Every process must move keys together: not yet done across workers or instances.
      refused.push(`${f}: changes only with a restart with workers or coordination`);
    }
  }
  return { changed, refused };
}
