/**
 * A TCP relay in front of a real memcached, for faults a real process cannot
 * produce on cue: a request that never reaches the node (the proxy times it
 * out while the node stays healthy), or an error reply to one request.
 *
 * Every connection to `port` is piped to the target. `intercept(match,
 * action)` makes the relay take the next `times` occurrences of the exact
 * bytes `match` out of what clients send: `drop` swallows them, a string is
 * answered to the client instead of forwarding them. `intercepted` counts
 * what was taken, so a test can prove its fault happened. An injected reply
 * is written at once: use it only while nothing else is in flight on that
 * connection, or replies would change order. `holed` black-holes the path:
 * bytes are swallowed both ways while connections stay open (a partition).
 */

import net from 'node:net';

interface Rule {
  match: Buffer;
  action: 'drop' | Buffer;
  left: number;
}

export class Relay {
  readonly port: number;
  intercepted = 0;
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly rules: Rule[] = [];
  /** While set, nothing passes either way: a black-holed path (connections stay open). */
  holed = false;
  /** See before(). */
  private readonly befores: { match: Buffer; run: () => Promise<void> }[] = [];

  private constructor(server: net.Server) {
    this.server = server;
    this.port = (server.address() as net.AddressInfo).port;
  }

  static async start(targetPort: number): Promise<Relay> {
    let relay: Relay | null = null;
    const server = net.createServer((client) => relay!.pipe(client, targetPort));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', resolve);
    });
    relay = new Relay(server);
    return relay;
  }

  intercept(match: string | Buffer, action: 'drop' | string, times = 1): void {
    this.rules.push({
      match: typeof match === 'string' ? Buffer.from(match, 'latin1') : match,
      action: action === 'drop' ? 'drop' : Buffer.from(action, 'latin1'),
      left: times,
    });
  }

  /**
   * The next time a chunk from a client contains `match`, hold that chunk
   * (and what follows on its connection) until `run` has finished: another
   * process's write, say, lands on the node just before it.
   */
  before(match: string, run: () => Promise<void>): void {
    this.befores.push({ match: Buffer.from(match, 'latin1'), run });
  }

  private pipe(client: net.Socket, targetPort: number): void {
    const upstream = net.connect(targetPort, '127.0.0.1');
    this.sockets.add(client);
    this.sockets.add(upstream);
    const end = (): void => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    upstream.on('data', (chunk) => {
      if (!this.holed) client.write(chunk);
    });
    let held: Promise<void> = Promise.resolve();
    const forward = (data: Buffer): void => {
      held = held.then(() => {
        if (!upstream.destroyed) upstream.write(data);
      });
    };
    client.on('data', (chunk: Buffer) => {
      if (this.holed) return;
      const b = this.befores.findIndex((x) => chunk.includes(x.match));
      if (b >= 0) {
        const { run } = this.befores.splice(b, 1)[0]!;
        held = held.then(run);
      }
      let data = chunk;
      for (const rule of this.rules) {
        let at: number;
        while (rule.left > 0 && (at = data.indexOf(rule.match)) >= 0) {
          rule.left--;
          this.intercepted++;
          data = Buffer.concat([data.subarray(0, at), data.subarray(at + rule.match.length)]);
          if (rule.action !== 'drop') client.write(rule.action);
        }
      }
      if (data.length > 0) forward(data);
    });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
