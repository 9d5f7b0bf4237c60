/**
 * Binary-protocol packets for tests: requests to send, and responses read
 * back one packet at a time.
 */

import net from 'node:net';

export interface RequestSpec {
  opcode: number;
  key?: string | Buffer;
  extras?: Buffer;
  value?: string | Buffer;
  opaque?: number;
  cas?: bigint;
  /** Override the body length field (for malformed requests). */
  bodyLength?: number;
  magic?: number;
}

const buf = (b: string | Buffer | undefined): Buffer =>
  b === undefined ? Buffer.alloc(0) : typeof b === 'string' ? Buffer.from(b, 'latin1') : b;

export function request(spec: RequestSpec): Buffer {
  const key = buf(spec.key);
  const extras = spec.extras ?? Buffer.alloc(0);
  const value = buf(spec.value);
  const out = Buffer.alloc(24 + extras.length + key.length + value.length);
  out[0] = spec.magic ?? 0x80;
  out[1] = spec.opcode;
  out.writeUInt16BE(key.length, 2);
  out[4] = extras.length;
  out.writeUInt32BE(spec.bodyLength ?? extras.length + key.length + value.length, 8);
  out.writeUInt32BE(spec.opaque ?? 0, 12);
  out.writeBigUInt64BE(spec.cas ?? 0n, 16);
  extras.copy(out, 24);
  key.copy(out, 24 + extras.length);
  value.copy(out, 24 + extras.length + key.length);
  return out;
}

/** Extras of set/add/replace: flags, expiration. */
export function setExtras(flags: number, exp: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(flags, 0);
  b.writeUInt32BE(exp, 4);
  return b;
}

/** Extras of incr/decr: delta, initial, expiration. */
export function incrExtras(delta: bigint, initial: bigint, exp: number): Buffer {
  const b = Buffer.alloc(20);
  b.writeBigUInt64BE(delta, 0);
  b.writeBigUInt64BE(initial, 8);
  b.writeUInt32BE(exp, 16);
  return b;
}

/** A 4-byte expiration (touch, gat, flush). */
export function expExtras(exp: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(exp, 0);
  return b;
}

export interface Response {
  magic: number;
  opcode: number;
  status: number;
  opaque: number;
  cas: bigint;
  extras: Buffer;
  key: Buffer;
  value: Buffer;
}

/** Split a byte stream into response packets (and what trails an incomplete one). */
export function responses(bytes: Buffer): { packets: Response[]; rest: Buffer } {
  const packets: Response[] = [];
  let at = 0;
  while (bytes.length - at >= 24) {
    const kl = bytes.readUInt16BE(at + 2);
    const el = bytes[at + 4]!;
    const bl = bytes.readUInt32BE(at + 8);
    if (bytes.length - at < 24 + bl) break;
    const body = bytes.subarray(at + 24, at + 24 + bl);
    packets.push({
      magic: bytes[at]!,
      opcode: bytes[at + 1]!,
      status: bytes.readUInt16BE(at + 6),
      opaque: bytes.readUInt32BE(at + 12),
      cas: bytes.readBigUInt64BE(at + 16),
      extras: body.subarray(0, el),
      key: body.subarray(el, el + kl),
      value: body.subarray(el + kl),
    });
    at += 24 + bl;
  }
  return { packets, rest: bytes.subarray(at) };
}

/** A response as text for comparisons; `cas` false leaves the cas out. */
export function show(r: Response, cas = false): string {
  const v = r.value.toString('latin1');
  return (
    `op=${r.opcode.toString(16)} st=${r.status.toString(16)} opq=${r.opaque}` +
    ` ext=${r.extras.toString('hex')} key=${JSON.stringify(r.key.toString('latin1'))}` +
    ` val=${JSON.stringify(v.length > 80 ? v.slice(0, 80) + `...(${v.length})` : v)}` +
    (cas ? ` cas=${r.cas}` : r.cas !== 0n ? ' cas=*' : '')
  );
}

/**
 * Send `bytes` to `port` and collect what comes back until the peer closes,
 * or until `quietMs` pass with nothing new once at least `expect` packets
 * are in (bounded by `limitMs`). `closed` says whether the peer closed.
 */
export function exchange(
  port: number,
  bytes: Buffer | Buffer[],
  options: { expect?: number; quietMs?: number; limitMs?: number } = {},
): Promise<{ packets: Response[]; rest: Buffer; closed: boolean }> {
  const { expect = 0, quietMs = 100, limitMs = 3000 } = options;
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1', noDelay: true });
    const chunks: Buffer[] = [];
    let closed = false;
    let quiet: NodeJS.Timeout | null = null;
    const finish = (): void => {
      clearTimeout(limit);
      if (quiet !== null) clearTimeout(quiet);
      s.destroy();
      resolve({ ...responses(Buffer.concat(chunks)), closed });
    };
    const limit = setTimeout(finish, limitMs);
    const rearm = (): void => {
      if (quiet !== null) clearTimeout(quiet);
      if (responses(Buffer.concat(chunks)).packets.length >= expect)
        quiet = setTimeout(finish, quietMs);
    };
    s.on('data', (c: Buffer) => {
      chunks.push(c);
      rearm();
    });
    s.on('close', () => {
      closed = true;
      finish();
    });
    s.on('error', () => {});
    s.on('connect', () => {
      for (const b of Array.isArray(bytes) ? bytes : [bytes]) s.write(b);
      rearm();
    });
  });
}
