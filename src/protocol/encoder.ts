/**
 * Encoding of everything msproxy writes itself: fixed replies, error lines,
 * merged multi-get replies, VERSION and STAT lists, the meta commands it
 * uses to copy items between replicas, and the one binary-protocol reply it
 * sends (to refuse a binary client).
 */

import { encodeKey } from './base64.js';
import type { Value } from './response-parser.js';
import type { Hit } from './result.js';

const CRLF = Buffer.from('\r\n');

function fixed(text: string): Buffer {
  return Buffer.from(text + '\r\n', 'latin1');
}

/** Pre-encoded replies: no allocation on the hot path. */
export const R = {
  END: fixed('END'),
  ERROR: fixed('ERROR'),
  STORED: fixed('STORED'),
  NOT_STORED: fixed('NOT_STORED'),
  EXISTS: fixed('EXISTS'),
  NOT_FOUND: fixed('NOT_FOUND'),
  DELETED: fixed('DELETED'),
  TOUCHED: fixed('TOUCHED'),
  OK: fixed('OK'),
  RESET: fixed('RESET'),
  MN: fixed('MN'),
  HD: fixed('HD'),
  EN: fixed('EN'),
  NF: fixed('NF'),
  NS: fixed('NS'),
  EX: fixed('EX'),
  CRLF,
} as const;

export function encodeLine(text: string): Buffer {
  return fixed(text);
}

export function clientError(message: string): Buffer {
  return fixed(`CLIENT_ERROR ${message}`);
}

export function serverError(message: string): Buffer {
  return fixed(`SERVER_ERROR ${message}`);
}

export function encodeVersion(version: string): Buffer {
  return fixed(`VERSION ${version}`);
}

/** STAT lines ended by END, as memcached answers `stats`. */
export function encodeStats(stats: Iterable<readonly [string, string | number | bigint]>): Buffer {
  let out = '';
  for (const [name, value] of stats) out += `STAT ${name} ${value}\r\n`;
  out += 'END\r\n';
  return Buffer.from(out, 'latin1');
}

/**
 * A get reply from VALUE blocks collected from several backends: each block
 * is written as received, then one END. Returned as pieces for a corked writev.
 */
export function encodeValues(values: readonly (Value | null)[]): Buffer[] {
  const out: Buffer[] = [];
  for (const v of values) if (v !== null) out.push(v.raw);
  out.push(R.END);
  return out;
}

/** A VALUE block with `token` as its cas: a new header line, then the block's data as received. */
export function encodeValueWithCas(v: Value, token: bigint): Buffer[] {
  const head = `VALUE ${v.key.toString('latin1')} ${v.flags} ${v.bytes} ${token}\r\n`;
  return [Buffer.from(head, 'latin1'), v.raw.subarray(v.dataOffset)];
}

/** A hit as a text get/gets reply: the node's reply as it came, unless the cas token differs. */
export function encodeHit(h: Hit): Buffer | Buffer[] {
  const v = h.value;
  if (h.token !== undefined && h.token !== v.cas) return [...encodeValueWithCas(v, h.token), R.END];
  return h.reply.length > 0 ? h.reply : [v.raw, R.END];
}

/** A VALUE block built from parts (for replies the proxy assembles itself). */
export function encodeValue(key: Buffer, flags: number, data: Buffer, cas?: bigint): Buffer {
  const head = `VALUE ${key.toString('latin1')} ${flags} ${data.length}${cas === undefined ? '' : ` ${cas}`}\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), data, CRLF]);
}

/**
 * How a key is written in a meta command: as is, or base64 with the `b` flag
 * when it has a byte a token cannot hold (space, LF, NUL). Other control
 * bytes stay raw, as classic commands carry them: base64 would make a key of
 * 187+ bytes longer than memcached's 250-byte token limit.
 */
export function metaKey(key: Buffer): { token: Buffer; binary: boolean } {
  for (let i = 0; i < key.length; i++) {
    const c = key[i]!;
    if (c === 0x20 || c === 0x0a || c === 0x00) return { token: encodeKey(key), binary: true };
  }
  return { token: key, binary: false };
}

/**
 * `ms <key> <len> [b] F<flags> T<ttl> [C<cas>] [M<mode>] [q]` plus the data
 * block: writes an item exactly (value, client flags, remaining TTL).
 */
export function encodeMetaSet(
  key: Buffer,
  data: Buffer,
  flags: number,
  ttl: number,
  extra = '',
): Buffer {
  const k = metaKey(key);
  const head = ` ${data.length}${k.binary ? ' b' : ''} F${flags} T${ttl}${extra}\r\n`;
  return Buffer.concat([
    Buffer.from('ms ', 'latin1'),
    k.token,
    Buffer.from(head, 'latin1'),
    data,
    CRLF,
  ]);
}

/** `<cmd> <key> [b] <flags...>` for mg/md/ma built by the proxy. */
export function encodeMeta(cmd: 'mg' | 'md' | 'ma', key: Buffer, flags: string): Buffer {
  const k = metaKey(key);
  const tail = `${k.binary ? ' b' : ''}${flags ? ' ' + flags : ''}\r\n`;
  return Buffer.concat([Buffer.from(cmd + ' ', 'latin1'), k.token, Buffer.from(tail, 'latin1')]);
}

/** `touch <key> <ttl>`: a new TTL for a classic key (one a text command line can carry). */
export function encodeTouch(key: Buffer, ttl: number | Buffer): Buffer {
  const t = typeof ttl === 'number' ? String(ttl) : ttl.toString('latin1');
  return Buffer.concat([Buffer.from('touch ', 'latin1'), key, Buffer.from(` ${t}\r\n`, 'latin1')]);
}
