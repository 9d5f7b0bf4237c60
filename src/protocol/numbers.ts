/**
 * Numeric token parsing with memcached 1.6's exact acceptance rules.
 *
 * memcached reads numbers with strtol/strtoul/strtoull and then stores the
 * result into a narrower C type without a range check. So `flags` of
 * 4294967297 is accepted as 1 and `bytes` of 4294967297 as 1: the proxy must
 * agree, or it would read a different data block length than the backend.
 * Each function returns `undefined` where memcached answers with an error.
 */

const UINT64_MAX = (1n << 64n) - 1n;
const INT64_MAX = (1n << 63n) - 1n;
const INT64_MIN = -(1n << 63n);

/** C isspace() in the "C" locale. */
function isCSpace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d);
}

interface Scan {
  negative: boolean;
  magnitude: bigint;
  /** Index just past the last digit, or -1 when no digit was found. */
  end: number;
}

/** strto*-style scan: leading white space, an optional sign, decimal digits. */
function scan(buf: Buffer, start: number, end: number): Scan | undefined {
  let i = start;
  while (i < end && isCSpace(buf[i]!)) i++;
  let negative = false;
  if (i < end && (buf[i] === 0x2b || buf[i] === 0x2d)) {
    negative = buf[i] === 0x2d;
    i++;
  }
  const digitsStart = i;
  let small = 0;
  while (i < end && buf[i]! >= 0x30 && buf[i]! <= 0x39) {
    // Accumulate in a double while exact, switch to bigint only for long runs.
    if (i - digitsStart < 15) small = small * 10 + (buf[i]! - 0x30);
    i++;
  }
  if (i === digitsStart) return undefined; // strto* saw no number: endptr == str
  const magnitude =
    i - digitsStart <= 15 ? BigInt(small) : BigInt(buf.toString('latin1', digitsStart, i));
  // safe_strto*: the character after the number must be white space or the token end.
  if (i < end && !isCSpace(buf[i]!)) return undefined;
  return { negative, magnitude, end: i };
}

/** Fast path for the overwhelmingly common token: 1-9 plain digits. */
function plainDigits(buf: Buffer, start: number, end: number): number {
  const len = end - start;
  if (len === 0 || len > 9) return -1;
  let n = 0;
  for (let i = start; i < end; i++) {
    const d = buf[i]! - 0x30;
    if (d < 0 || d > 9) return -1;
    n = n * 10 + d;
  }
  return n;
}

/** memcached safe_strtoul: unsigned 32-bit result (truncated from unsigned long). */
export function parseU32(buf: Buffer, start: number, end: number): number | undefined {
  const fast = plainDigits(buf, start, end);
  if (fast >= 0) return fast;
  const v = strtoul64(buf, start, end);
  if (v === undefined) return undefined;
  return Number(v & 0xffffffffn);
}

/** memcached safe_strtol: signed 32-bit result (truncated from long). */
export function parseI32(buf: Buffer, start: number, end: number): number | undefined {
  const fast = plainDigits(buf, start, end);
  if (fast >= 0) return fast;
  const s = scan(buf, start, end);
  if (s === undefined) return undefined;
  const v = s.negative ? -s.magnitude : s.magnitude;
  if (v > INT64_MAX || v < INT64_MIN) return undefined; // ERANGE
  return Number(BigInt.asIntN(32, v));
}

/** memcached safe_strtoull: unsigned 64-bit. */
export function parseU64(buf: Buffer, start: number, end: number): bigint | undefined {
  const fast = plainDigits(buf, start, end);
  if (fast >= 0) return BigInt(fast);
  return strtoul64(buf, start, end);
}

/**
 * strtoul/strtoull on LP64 plus memcached's sign check: "-5" wraps to a huge
 * value that is negative as signed and contains '-', so it is refused; "-0"
 * and negations that wrap to a small value are accepted, as in C.
 */
function strtoul64(buf: Buffer, start: number, end: number): bigint | undefined {
  const s = scan(buf, start, end);
  if (s === undefined) return undefined;
  if (s.magnitude > UINT64_MAX) return undefined; // ERANGE
  const v = s.negative ? (UINT64_MAX + 1n - s.magnitude) & UINT64_MAX : s.magnitude;
  // memcached looks for the '-' with strchr over the whole token.
  if (v > INT64_MAX && buf.subarray(start, end).includes(0x2d)) return undefined;
  return v;
}
