/**
 * Key listing with memcached's `lru_crawler metadump`: every key a node
 * holds, streamed, on a connection of its own. Lines are `key=<url-encoded
 * key> exp=... ...`, ended by END; anything else (BUSY while another crawl
 * runs, ERROR without a crawler) means this node cannot list now.
 *
 * `metadump hash` walks the hash table, so it sees every item; `metadump
 * all` walks the LRUs and skips an item that moves between LRU queues as
 * the crawler passes (an item being read, say). A memcached that does not
 * know `hash` (an older 1.6) is listed with `all`.
 */

import net from 'node:net';
import { equals, startsWith } from '../protocol/response-parser.js';

export type ListMode = 'hash' | 'all';
/** A metadump longer than this is cut short (keys are re-listed by the next re-sync). */
const METADUMP_MAX_BYTES = 512 * 1024 * 1024;
const METADUMP_TIMEOUT_MS = 10_000;
/** memcached's longest key. */
const KEY_MAX = 250;

/**
 * The metadump reply as a stream: `push` each chunk as it arrives; each key
 * goes to `onKey` as a view valid only during the call. `push` answers true
 * once END is in, an Error when the listing failed, false for more.
 */
export class MetadumpParser {
  private rest: Buffer = Buffer.alloc(0);
  private readonly decoded = Buffer.allocUnsafe(KEY_MAX);
  private readonly onKey: (key: Buffer) => void;

  constructor(onKey: (key: Buffer) => void) {
    this.onKey = onKey;
  }

  push(chunk: Buffer): boolean | Error {
    let buf = this.rest.length > 0 ? Buffer.concat([this.rest, chunk]) : chunk;
    let nl: number;
    while ((nl = buf.indexOf(0x0a)) >= 0) {
      const line = buf.subarray(0, nl > 0 && buf[nl - 1] === 0x0d ? nl - 1 : nl);
      buf = buf.subarray(nl + 1);
      if (equals(line, 'END')) return true;
      if (startsWith(line, 'key=')) {
        const sp = line.indexOf(0x20);
        const n = percentDecode(line, 4, sp < 0 ? line.length : sp, this.decoded);
        if (n < 0) return new Error('metadump: key longer than memcached allows');
        this.onKey(this.decoded.subarray(0, n));
      } else if (line.length > 0) {
        return new Error(line.toString('latin1'));
      }
    }
    this.rest = Buffer.from(buf);
    return false;
  }
}

/**
 * List the keys of the memcached at `address`. `sockets` tracks the
 * connection while it is open, so a closing proxy can end it.
 */
export function metadump(
  address: string,
  sockets: Set<net.Socket>,
  onKey: (key: Buffer) => void,
  cb: (err: Error | null) => void,
  mode: ListMode = 'hash',
): void {
  const i = address.lastIndexOf(':');
  const socket = net.connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)) });
  sockets.add(socket);
  const parser = new MetadumpParser((key) => {
    keys++;
    onKey(key);
  });
  let total = 0;
  let keys = 0;
  let finished = false;
  const end = (err: Error | null): void => {
    if (finished) return;
    finished = true;
    sockets.delete(socket);
    socket.destroy();
    // An older memcached refuses the hash walk before listing anything: list its LRUs instead.
    if (err !== null && mode === 'hash' && keys === 0 && /^(CLIENT_)?ERROR/.test(err.message)) {
      return metadump(address, sockets, onKey, cb, 'all');
    }
    cb(err);
  };
  socket.setTimeout(METADUMP_TIMEOUT_MS, () => end(new Error('metadump timed out')));
  socket.on('error', (e) => end(e));
  socket.on('close', () => end(new Error('connection closed during metadump')));
  socket.on('connect', () => socket.write(`lru_crawler metadump ${mode}\r\n`));
  socket.on('data', (chunk: Buffer) => {
    if (finished) return;
    total += chunk.length;
    if (total > METADUMP_MAX_BYTES) return end(new Error('metadump too large'));
    const r = parser.push(chunk);
    if (r === true) end(null);
    else if (r !== false) end(r);
  });
}

/**
 * memcached's metadump writes keys URL-encoded (%XX for every byte outside
 * [A-Za-z0-9_.~-]). Decodes `b[from, to)` into `out`: the decoded length, or
 * -1 if it is longer than memcached allows (a listing gone wrong).
 */
export function percentDecode(b: Buffer, from: number, to: number, out: Buffer): number {
  let n = 0;
  for (let i = from; i < to; i++) {
    if (n === KEY_MAX) return -1;
    const c = b[i]!;
    if (c === 0x25 && i + 2 < to) {
      const h = (hexDigit(b[i + 1]!) << 4) | hexDigit(b[i + 2]!);
      if (h >= 0) {
        out[n++] = h;
        i += 2;
        continue;
      }
    }
    out[n++] = c;
  }
  return n;
}

/** Value of a hex digit, or a large negative number (so a pair with it stays negative). */
function hexDigit(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  if (l >= 0x61 && l <= 0x66) return l - 0x61 + 10;
  return -0x1000;
}
