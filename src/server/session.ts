/**
 * One client connection.
 *
 * Contract: every command gets a slot in arrival order; replies are written
 * only from the head of the slot queue, so a client sees replies in request
 * order however the backends interleave (mcrouter's McServerSession and
 * twemproxy's rsp_send_next work the same way). The head is written in the
 * event loop's check phase, so the replies that became ready in one turn go
 * out in one write. A noreply command keeps its slot but writes nothing.
 * Reading from the client pauses while it has `maxInflight` commands
 * unanswered or while its socket must drain, and resumes when neither holds,
 * so a client that pipelines without reading cannot make msproxy buffer
 * without bound.
 *
 * The first byte of a connection decides its protocol, as in memcached:
 * 0x80 is binary, anything else text. A binary request becomes the same
 * Request a text command does (binary-command.ts), and its reply is encoded
 * back as a binary response; everything above holds for both.
 */

import type net from 'node:net';
import type { Logger } from 'pino';
import { type Out, type Router, unlinkRequest } from '../routing/router.js';
import { readRaw } from '../net/raw-read.js';
import type { Users } from '../auth.js';
import {
  type BinaryPacket,
  BinaryParser,
  Op,
  REQUEST_MAGIC,
  Status,
  errorResponse,
  response,
} from '../protocol/binary.js';
import { BinaryCommands, binaryHit, binaryReply, binaryStats } from '../protocol/binary-command.js';
import { encodeHit } from '../protocol/encoder.js';
import { RequestParser } from '../protocol/request-parser.js';
import { ProtocolError, type Request } from '../protocol/request.js';
import { Hit, type Result } from '../protocol/result.js';
import type { Stats } from '../stats.js';
import { TurnQueue } from '../turn-queue.js';

export interface SessionOptions {
  maxInflight: number;
  itemSizeMax: number;
  maxMultigetLine: number;
  /** Where a session logs what an operator should see (a failed authentication). */
  log: Logger;
  /** With auth on, the users a client must authenticate as (SASL PLAIN, or text auth). */
  users: Users | null;
}

const UNAUTHENTICATED = Buffer.from('CLIENT_ERROR unauthenticated\r\n');
const AUTH_FAILURE = Buffer.from('CLIENT_ERROR authentication failure\r\n');
const AUTH_FORMAT = Buffer.from('CLIENT_ERROR bad authentication token format\r\n');
const STORED = Buffer.from('STORED\r\n');

/** Ready replies up to this many bytes (Buffer's pool size) are copied into one buffer (see flush). */
const GATHER_MAX = 4096;
/**
 * Replies queued in msproxy for a client that does not read, beyond which
 * reading from it pauses (above the socket's 16 KiB high-water mark, so a
 * 'drain' always follows).
 */
const PAUSE_AT = 64 * 1024;
/** flush()'s list of pieces to write; always emptied before flush returns. */
const gather: Buffer[] = [];

/** Sessions with replies ready this turn, written together in the check phase. */
const readyThisTurn = new TurnQueue<ClientSession>((s) => s.flushQueuedReplies());

class Slot {
  out: Out = null;
  ready = false;
  /** The reply is `fixed`, whatever the command's own reply (an error with a side effect). */
  hasFixed = false;
  fixed: Out = null;
  /** Close the connection once this slot is written (quit, or a fatal protocol error). */
  close = false;
  next: Slot | null = null;
}

const PLAIN = Buffer.from('PLAIN');
const AUTHENTICATED = Buffer.from('Authenticated');

/** What a session asks of its protocol's parser (text or binary). */
interface Parser {
  push(chunk: Buffer): void;
  pause(): void;
  resume(): void;
  readonly holding: boolean;
}

/** The reply to send for `req`: as the route made it (text), or encoded for a binary client. */
function encoded(req: Request, out: Result): Out {
  const b = req.binary;
  if (out instanceof Hit) return b === null ? encodeHit(out) : binaryHit(b, out);
  if (b === null) return out;
  return b.command === Op.STAT ? binaryStats(b, out) : binaryReply(b, out);
}

/** `b`, or a copy of it if it is a view of a larger buffer. */
function ownBytes(b: Buffer): Buffer {
  if (b.buffer.byteLength === b.length) return b;
  const own = Buffer.allocUnsafeSlow(b.length);
  b.copy(own);
  return own;
}

export class ClientSession {
  private readonly socket: net.Socket;
  private readonly router: Router;
  private readonly stats: Stats;
  private parser: Parser;
  private readonly options: SessionOptions;
  private readonly maxInflight: number;
  private head: Slot | null = null;
  private tail: Slot | null = null;
  private inflight = 0;
  private draining = false;
  private paused = false;
  private resumeScheduled = false;
  private closed = false;
  /** The client ended its side, or msproxy is stopping: answer what was read, then close. */
  private closing = false;
  /** msproxy is stopping: a command not yet read in full will not be. */
  private stopping = false;
  /** In readyThisTurn, waiting for the check phase. */
  private flushQueued = false;
  /** Commands dispatched to the router and not yet answered. */
  private running = 0;
  /** A flush_all is running. */
  private barrier = false;
  /** Commands waiting behind a barrier: request, slot, request, slot, ... */
  private held: (Request | Slot)[] = [];
  /** No byte read yet: the first one decides the protocol. */
  private sniffing = true;
  /** Whether the client may run commands (always, without auth). */
  private authenticated: boolean;

  constructor(socket: net.Socket, router: Router, stats: Stats, options: SessionOptions) {
    this.socket = socket;
    this.router = router;
    this.stats = stats;
    this.options = options;
    this.authenticated = options.users === null;
    this.maxInflight = options.maxInflight;
    this.parser = new RequestParser(
      {
        onRequest: (req) => this.onRequest(req),
        onError: (err) => this.onProtocolError(err),
      },
      { itemSizeMax: options.itemSizeMax, maxMultigetLine: options.maxMultigetLine },
    );
    socket.setNoDelay(true);
    const onChunk = (chunk: Buffer): void => {
      if (this.closing) return;
      if (this.sniffing) {
        if (chunk.length === 0) return;
        this.sniffing = false;
        if (chunk[0] === REQUEST_MAGIC) this.speakBinary();
      }
      this.parser.push(chunk);
    };
    if (!readRaw(socket, onChunk)) socket.on('data', onChunk);
    socket.on('drain', () => {
      this.draining = false;
      this.updateFlow();
    });
    socket.on('error', () => this.onClose());
    socket.on('close', () => this.onClose());
    socket.on('end', () => {
      // The client finished sending; answer what it asked, then close.
      this.closing = true;
      if (this.head === null && (this.stopping || !this.parser.holding)) socket.end();
    });
    // The server accepts paused (see readRaw): reading starts here.
    socket.resume();
  }

  /** The connection speaks binary: requests come from a binary parser from now on. */
  private speakBinary(): void {
    this.stats.binaryConnections++;
    const commands = new BinaryCommands(this.options.itemSizeMax);
    this.parser = new BinaryParser(
      {
        onPacket: (p) => {
          if (p.command >= Op.SASL_LIST_MECHS && p.command <= Op.SASL_STEP) {
            return this.fill(this.reserve(), this.sasl(p));
          }
          const req = commands.request(p);
          if (req instanceof ProtocolError) this.onProtocolError(req);
          else this.onRequest(req);
        },
        onError: (err) => this.onProtocolError(err),
      },
      {
        itemSizeMax: this.options.itemSizeMax,
        sasl: this.options.users !== null,
        authenticated: () => this.authenticated,
      },
    );
  }

  /** A SASL request: PLAIN is the one mechanism (what memcached's PLAIN-only setups offer). */
  private sasl(p: BinaryPacket): Buffer {
    const head = { opcode: p.opcode, status: Status.OK, opaque: p.opaque };
    if (p.command === Op.SASL_LIST_MECHS) return response(head, null, null, PLAIN);
    this.stats.authCmds++;
    // PLAIN's message: [authzid] NUL authcid NUL password.
    const parts = p.value.toString('utf8').split('\0');
    const ok =
      p.command === Op.SASL_AUTH &&
      p.key.equals(PLAIN) &&
      parts.length === 3 &&
      this.options.users!.check(parts[1]!, parts[2]!);
    if (!ok) return this.authFailed('binary', errorResponse(p.opcode, p.opaque, Status.AUTH_ERROR));
    this.authenticated = true;
    return response(head, null, null, AUTHENTICATED);
  }

  /**
   * A text command before authentication: memcached's text auth takes a
   * `set` whose data is `<user> <password>`; anything else is refused.
   */
  private textAuth(req: Request): Buffer {
    if (req.cmd !== 'set') return UNAUTHENTICATED;
    this.stats.authCmds++;
    const tokens = req.value.toString('utf8').split(' ');
    if (tokens.length < 2) return this.authFailed('text', AUTH_FORMAT);
    if (!this.options.users!.check(tokens[0]!, tokens[1]!))
      return this.authFailed('text', AUTH_FAILURE);
    this.authenticated = true;
    return STORED;
  }

  private authFailed(protocol: string, reply: Buffer): Buffer {
    this.stats.authErrors++;
    // Who tried, never with what.
    this.options.log.warn(
      { remoteAddress: this.socket.remoteAddress, remotePort: this.socket.remotePort, protocol },
      'authentication failed',
    );
    return reply;
  }

  private reserve(): Slot {
    const slot = new Slot();
    if (this.tail === null) this.head = slot;
    else this.tail.next = slot;
    this.tail = slot;
    this.inflight++;
    if (this.inflight >= this.maxInflight) this.updateFlow();
    return slot;
  }

  private onRequest(req: Request): void {
    const slot = this.reserve();
    if (!this.authenticated && req.binary === null) return this.fill(slot, this.textAuth(req));
    if (req.cmd === 'quit') {
      slot.close = true;
      this.closing = true;
      const b = req.binary;
      const bye =
        b === null || b.quiet ? null : response({ opcode: b.opcode, status: 0, opaque: b.opaque });
      this.fill(slot, bye);
      return;
    }
    this.submit(req, slot);
  }

  private submit(req: Request, slot: Slot): void {
    if (this.held.length > 0 || this.barrier || (req.cmd === 'flush_all' && this.running > 0)) {
      this.held.push(req, slot);
      return;
    }
    this.dispatch(req, slot);
  }

  /**
   * Keyed commands are ordered per key by the router. flush_all touches every
   * key, so it is a barrier for this client: it starts once everything before
   * it has been answered, and nothing after it starts before it is answered.
   */
  private dispatch(req: Request, slot: Slot): void {
    this.running++;
    const barrier = req.cmd === 'flush_all';
    if (barrier) this.barrier = true;
    this.router.execute(req, (out) => {
      this.running--;
      if (barrier) this.barrier = false;
      this.fill(slot, slot.hasFixed ? slot.fixed : encoded(req, out));
      if (this.held.length > 0) this.dispatchHeld();
    });
  }

  private dispatchHeld(): void {
    while (this.held.length > 0 && !this.barrier && !this.closed) {
      const req = this.held[0] as Request;
      if (req.cmd === 'flush_all' && this.running > 0) return;
      const slot = this.held[1] as Slot;
      this.held.splice(0, 2);
      this.dispatch(req, slot);
    }
  }

  private onProtocolError(err: ProtocolError): void {
    this.stats.clientErrors++;
    const slot = this.reserve();
    if (err.close) {
      slot.close = true;
      this.closing = true;
    }
    // Before text auth, memcached reads no command: whatever it was, it is refused.
    if (!this.authenticated && err.bytes === null && !err.close)
      return this.fill(slot, UNAUTHENTICATED);
    const reply = err.silent ? null : err.reply;
    if (err.unlink === null) return this.fill(slot, reply);
    // memcached drops the old item with this error: delete it on the replicas, then answer.
    slot.hasFixed = true;
    slot.fixed = reply;
    this.submit(unlinkRequest(err.unlink), slot);
  }

  private fill(slot: Slot, out: Out): void {
    slot.out = out;
    slot.ready = true;
    if (slot === this.head && !this.flushQueued) {
      // Written in the check phase, with every reply that becomes ready in this poll phase
      // (a pipeline's answers come back from several nodes): one write instead of several.
      this.flushQueued = true;
      readyThisTurn.add(this);
    }
  }

  /** Called once per queued turn by readyThisTurn. */
  flushQueuedReplies(): void {
    this.flushQueued = false;
    this.flush();
  }

  /**
   * Write every ready slot at the head of the queue, in order, as one write:
   * small replies ready together (pipelined STORED lines, short values) up to
   * GATHER_MAX bytes are copied into one pooled buffer, which costs less than
   * a stream write per piece; larger ones go out corked, piece by piece
   * (copying those measured slower than the writev they save).
   */
  private flush(): void {
    if (this.closed) return;
    const sock = this.socket;
    const parts = gather;
    let size = 0;
    let close = false;
    while (this.head !== null && this.head.ready) {
      const slot = this.head;
      this.head = slot.next;
      if (this.head === null) this.tail = null;
      this.inflight--;
      const out = slot.out;
      if (out !== null) {
        if (Buffer.isBuffer(out)) {
          parts.push(out);
          size += out.length;
        } else {
          for (const b of out) {
            parts.push(b);
            size += b.length;
          }
        }
      }
      if (slot.close) {
        close = true;
        break;
      }
    }
    // A client that is behind (bytes already queued for it) keeps what is written now until it
    // reads. Replies are views of backend reads, which share 64 KiB slabs (raw-read.ts), so
    // such a client gets copies: it holds its own bytes, not every slab a reply came in.
    const behind = sock.writableLength > 0;
    if (parts.length === 1) {
      const one = parts[0]!;
      parts.length = 0;
      sock.write(behind ? ownBytes(one) : one);
    } else if (parts.length > 1 && (size <= GATHER_MAX || behind)) {
      const buf = size <= GATHER_MAX ? Buffer.allocUnsafe(size) : Buffer.allocUnsafeSlow(size);
      let at = 0;
      for (const b of parts) at += b.copy(buf, at);
      parts.length = 0;
      sock.write(buf);
    } else if (parts.length > 1) {
      const list = parts.splice(0);
      sock.cork();
      for (const b of list) sock.write(b);
      sock.uncork();
    }
    // write() says false for any write over the stream's 16 KiB mark, even one the kernel took
    // at once; pausing on that would stop and restart reading for every large reply. What
    // counts is what is still queued here. Past PAUSE_AT a 'drain' is sure to follow.
    if (sock.writableLength > PAUSE_AT) this.draining = true;
    if (close || (this.closing && this.head === null && (this.stopping || !this.parser.holding))) {
      this.closed = true;
      this.head = this.tail = null;
      sock.end();
      return;
    }
    this.updateFlow();
  }

  private updateFlow(): void {
    if (this.closed) return;
    const shouldPause = this.draining || this.inflight >= this.maxInflight;
    if (shouldPause && !this.paused) {
      this.paused = true;
      // The parser stops too: one read can hold thousands of commands.
      this.parser.pause();
      this.socket.pause();
    } else if (!shouldPause && this.paused) {
      this.paused = false;
      this.socket.resume();
      // Resumed outside the reply callback that got here, so commands are not dispatched
      // from inside another command's completion.
      if (!this.resumeScheduled) {
        this.resumeScheduled = true;
        setImmediate(() => {
          this.resumeScheduled = false;
          if (!this.paused && !this.closed) this.parser.resume();
        });
      }
    }
  }

  /**
   * msproxy is stopping: read no more commands, answer the ones already read,
   * then close. Resolves once the last reply is written (or the socket closed).
   */
  shutdown(): Promise<void> {
    const sock = this.socket;
    return new Promise((resolve) => {
      if (sock.destroyed || sock.writableFinished) return resolve();
      sock.once('finish', resolve);
      sock.once('close', resolve);
      this.closing = true;
      this.stopping = true;
      if (!this.closed && this.head === null) {
        this.closed = true;
        sock.end();
      }
    });
  }

  private onClose(): void {
    if (this.closed && this.socket.destroyed) return;
    this.closed = true;
    // Replies still pending are dropped when they arrive; the backends are unaffected.
    this.head = this.tail = null;
    this.socket.destroy();
  }
}
