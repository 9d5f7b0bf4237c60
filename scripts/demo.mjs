#!/usr/bin/env node
// `npm run demo`: three local memcached nodes and msproxy in front of them (replicas 2).
// Stops everything it started on Ctrl-C.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ports = (process.env.MSPROXY_DEMO_NODE_PORTS ?? '21211,21212,21213').split(',').map(Number);
let stopping = false;
const listen = Number(process.env.MSPROXY_DEMO_PORT ?? 22122);
const children = [];
const root = process.getuid?.() === 0 ? ['-u', 'root'] : [];
for (const port of ports) {
  const mc = spawn(
    'memcached',
    ['-l', '127.0.0.1', '-p', String(port), '-U', '0', '-m', '64', ...root],
    {
      stdio: 'inherit',
    },
  );
  mc.on('error', (err) => {
    console.error(
      `cannot start memcached (${err.message}); install it: sudo apt-get install -y memcached`,
    );
    process.exit(1);
  });
  // A port already taken makes memcached exit at once; going on would put the demo in front of
  // whatever else listens there.
  mc.on('exit', (code, signal) => {
    if (stopping) return;
    console.error(
      `memcached on port ${port} exited (${signal ?? code}): is the port taken? ` +
        'Set MSPROXY_DEMO_NODE_PORTS=a,b,c for other ports.',
    );
    stop(1);
  });
  children.push(mc);
}
const config = join(tmpdir(), 'msproxy-demo.json');
writeFileSync(
  config,
  JSON.stringify({
    listen: { host: '127.0.0.1', port: listen },
    nodes: ports.map((port) => ({ host: '127.0.0.1', port })),
    replicas: 2,
  }),
);
// Run through its #! line, as the installed `msproxy` runs (with its node flags).
const proxy = spawn(new URL('../bin/msproxy.js', import.meta.url).pathname, ['--config', config], {
  stdio: 'inherit',
});
children.push(proxy);
// Show it working: write a session through the proxy and read it back.
function tryIt(attempt = 0) {
  const sock = net.connect(listen, '127.0.0.1');
  let reply = '';
  sock.on('connect', () =>
    sock.write('set session:demo 0 3600 5\r\nhello\r\nget session:demo\r\nquit\r\n'),
  );
  sock.on('data', (d) => (reply += d.toString('latin1')));
  sock.on('error', () => attempt < 50 && setTimeout(() => tryIt(attempt + 1), 100));
  sock.on('close', () => {
    if (!reply) return;
    console.log(`
msproxy demo: memcached on ${ports.join(', ')}, msproxy on 127.0.0.1:${listen} (replicas 2, config ${config})

A session written and read through the proxy just now:
${reply.replace(/\r/g, '').trimEnd().replace(/^/gm, '  ')}

Try it yourself from another terminal (Debian: sudo apt-get install -y netcat-openbsd):
  printf 'get session:demo\\r\\n' | nc -q1 127.0.0.1 ${listen}
  printf 'stats\\r\\n' | nc -q1 127.0.0.1 ${listen}
Then kill -9 the memcached on ${ports[0]} or ${ports[1]} and read again: the session is still there.
Ctrl-C stops the demo.
`);
  });
}
setTimeout(tryIt, 300);

function stop(code = 0) {
  if (stopping) return;
  stopping = true;
  for (const c of children) c.kill('SIGTERM');
  process.exit(code);
}
process.on('SIGINT', () => stop());
process.on('SIGTERM', () => stop());
proxy.on('exit', (code) => {
  if (stopping) return;
  if (code) console.error(`msproxy exited with ${code}`);
  stop(code ? 1 : 0);
});
