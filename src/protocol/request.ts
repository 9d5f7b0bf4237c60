/**
 * The request model shared by the parser, the router and the backends.
 *
 * A Request is what one client command line (plus its data block) means. All
 * Buffers in it are views into the bytes the client sent; `raw` is exactly
 * those bytes, so a command can be forwarded without re-encoding it.
 */

export type Command =
  | 'get'
  | 'gets'
  | 'gat'
  | 'gats'
  | 'set'
  | 'add'
  | 'replace'
  | 'append'
  | 'prepend'
  | 'cas'
  | 'delete'
  | 'incr'
  | 'decr'
  | 'touch'
  | 'mg'
  | 'ms'
  | 'md'
  | 'ma'
  | 'mn'
  | 'me'
  | 'flush_all'
  | 'version'
  | 'stats'
  | 'verbosity'
  | 'quit'
  /** Server administration memcached knows (slabs, lru_crawler, watch, ...): per node, not per key. */
  | 'admin';

export const EMPTY = Buffer.alloc(0);

/** What a Request that came in binary needs to be answered in binary (binary-command.ts). */
export interface BinaryOrigin {
  opcode: number;
  /** The loud opcode it stands for (SET for SETQ). */
  command: number;
  quiet: boolean;
  opaque: number;
  /** The key as sent (getk and gatk return it; stat's is its group). */
  key: Buffer;
}
/** `args` of a command without any (never pushed to: see the parser). */
const NO_ARGS: Buffer[] = [];

export class Request {
  cmd: Command;
  /** The exact bytes received: command line, and the data block for storage commands. */
  raw: Buffer;
  /** Length of the command line in `raw`, terminator included. */
  lineLength: number;
  /**
   * End of the command content in `raw` without the `noreply` token (and the
   * spaces before it), for forwarding without `noreply`. Equal to the end of
   * the content when there is no `noreply`.
   */
  contentEnd: number;
  /** Routing keys: raw key bytes (base64-decoded for meta commands with `b`). */
  keys: Buffer[];
  /** Keys as they appear on the wire (differs from `keys` only with the meta `b` flag). */
  wireKeys: Buffer[];
  /** Classic `noreply`, or meta `q`. */
  noreply: boolean;
  flags: number;
  exptime: number;
  /** Data block length for storage commands (without the trailing \r\n). */
  bytes: number;
  /** cas unique for `cas`, C flag for meta commands; 0n when absent. */
  cas: bigint;
  /** Delta for incr/decr. */
  delta: bigint;
  /** Meta command flag tokens (views), or other arguments for stats/admin/flush_all/verbosity. */
  args: Buffer[];
  /** Meta flags present, one bit per letter: A-Z in the low 26 bits of `upper`, a-z in `lower`. */
  upper: number;
  lower: number;
  /** Meta `M` mode character code, 0 when absent. */
  mode: number;
  /** Set when the command came in binary: how to answer it. */
  binary: BinaryOrigin | null;

  constructor(cmd: Command, raw: Buffer, lineLength: number) {
    this.cmd = cmd;
    this.raw = raw;
    this.lineLength = lineLength;
    this.contentEnd = lineLength;
    this.keys = [];
    // The same array: they differ only for meta commands with `b`, whose parser sets both.
    this.wireKeys = this.keys;
    this.noreply = false;
    this.flags = 0;
    this.exptime = 0;
    this.bytes = 0;
    this.cas = 0n;
    this.delta = 0n;
    // Shared until a command has arguments: the parser gives those their own array.
    this.args = NO_ARGS;
    this.upper = 0;
    this.lower = 0;
    this.mode = 0;
    this.binary = null;
  }

  /** First key (every keyed command has at least one). */
  get key(): Buffer {
    return this.keys[0] ?? EMPTY;
  }

  /** The data block of a storage command, without its trailing \r\n. */
  get value(): Buffer {
    return this.raw.subarray(this.lineLength, this.lineLength + this.bytes);
  }

  /** Whether meta flag `letter` (one ASCII letter) was given. */
  hasFlag(letter: string): boolean {
    const c = letter.charCodeAt(0);
    if (c >= 0x41 && c <= 0x5a) return (this.upper & (1 << (c - 0x41))) !== 0;
    if (c >= 0x61 && c <= 0x7a) return (this.lower & (1 << (c - 0x61))) !== 0;
    return false;
  }

  /** The value of meta flag `letter` (token without its letter), or undefined. */
  flagValue(letter: string): Buffer | undefined {
    if (!this.hasFlag(letter)) return undefined;
    const c = letter.charCodeAt(0);
    for (const t of this.args) if (t[0] === c) return t.subarray(1);
    return undefined;
  }
}

/**
 * A client error the parser answers itself. `silent` is memcached's noreply
 * rule: a classic command with `noreply` gets no error line either. `close`
 * means memcached would drop the connection.
 */
export class ProtocolError {
  constructor(
    readonly message: string,
    readonly silent: boolean,
    readonly close: boolean,
    /**
     * A key whose stored item memcached drops along with this error: a `set`
     * or `ms` too large for the cache unlinks the old value, so a client never
     * reads back the value it just tried to replace.
     */
    readonly unlink: Buffer | null = null,
    /** The reply's bytes when they are not the message as a line (a binary response). */
    readonly bytes: Buffer | null = null,
  ) {}

  get reply(): Buffer {
    return this.bytes ?? Buffer.from(this.message + '\r\n', 'latin1');
  }
}
