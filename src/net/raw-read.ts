/**
 * Socket reads without the Readable stream layer.
 *
 * Contract: `readRaw(socket, onChunk)` makes the socket deliver each read to
 * `onChunk` as a Buffer the callee may keep (a copy of the bytes read), in
 * place of 'data' events. pause()/resume() still stop and start reading;
 * 'end', 'error' and 'close' are unchanged. Returns false, and changes
 * nothing, where this Node.js cannot do it: callers then listen to 'data'.
 *
 * Why: a stream read costs a 64 KiB allocation shrunk to the bytes read, an
 * ArrayBuffer and its GC bookkeeping, and the Readable push/emit path. Node's
 * `onread` option reads into one buffer instead, and a copy of a short
 * read comes from a shared slab (SHARED_COPY_MAX). Node offers `onread` only to sockets it
 * connects itself; an accepted socket gets it through the same three fields
 * the option sets (found on a probe socket, not hard-coded), before its first
 * read (the server must use `pauseOnConnect`).
 *
 * All sockets share one read buffer: a read fills it and its callback runs
 * before the next read on any socket.
 */

import net from 'node:net';
import { SLAB_PIECE_MAX, shortLived } from './slab.js';

interface Fields {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

interface UserBufferHandle {
  useUserBuffer(buf: Uint8Array): void;
  reading: boolean;
}

type Slots = Record<symbol, unknown>;

const READ_SIZE = 64 * 1024;
const scratch = Buffer.allocUnsafe(READ_SIZE);

/**
 * Reads up to this size are copied into a shared slab (slab.ts); longer ones
 * get a buffer of their own. Whoever keeps a short piece of a read for long
 * should copy it (see RequestParser's stash), or it keeps the whole slab.
 */
export const SHARED_COPY_MAX = SLAB_PIECE_MAX;

/** A copy of the first `n` bytes of the shared read buffer. */
function copyRead(n: number): Buffer {
  const own = shortLived(n);
  scratch.copy(own, 0, 0, n);
  return own;
}

function findFields(): Fields | null {
  try {
    // `onread` is missing from @types/node's constructor options (it is in net.connect's).
    const options = { onread: { buffer: Buffer.alloc(1), callback: () => true } };
    const probe = new net.Socket(options as net.SocketConstructorOpts);
    const byName = new Map<string, symbol>();
    for (const s of Object.getOwnPropertySymbols(probe)) {
      if (s.description !== undefined) byName.set(s.description, s);
    }
    probe.destroy();
    const buffer = byName.get('kBuffer');
    const callback = byName.get('kBufferCb');
    const generator = byName.get('kBufferGen');
    if (buffer === undefined || callback === undefined || generator === undefined) return null;
    // The option must have set them the way readRaw will.
    const slots = probe as unknown as Slots;
    if (!Buffer.isBuffer(slots[buffer]) || typeof slots[callback] !== 'function') return null;
    return { buffer, callback, generator };
  } catch {
    return null;
  }
}

const fields = findFields();

/** Whether readRaw works on this Node.js. */
export const rawReadSupported = fields !== null;

/**
 * Deliver the socket's reads to `onChunk` (see the module comment). Call it
 * before the socket's first read: on an accepted socket of a server created
 * with `pauseOnConnect`, then `resume()` it.
 */
export function readRaw(socket: net.Socket, onChunk: (chunk: Buffer) => void): boolean {
  const handle = (socket as unknown as { _handle?: Partial<UserBufferHandle> | null })._handle;
  if (fields === null || handle == null || typeof handle.useUserBuffer !== 'function') {
    return false;
  }
  // Bytes already read (or a read under way) would go to 'data' listeners, not to onChunk.
  if (socket.readableLength > 0 || handle.reading === true) return false;
  const slots = socket as unknown as Slots;
  const { buffer, callback } = rawReadOption(onChunk);
  slots[fields.buffer] = buffer;
  slots[fields.generator] = null;
  slots[fields.callback] = callback;
  handle.useUserBuffer(buffer);
  return true;
}

/** The `onread` option of net.connect that does what readRaw does. */
export function rawReadOption(onChunk: (chunk: Buffer) => void): {
  buffer: Buffer;
  callback: (n: number, buf: Uint8Array) => boolean;
} {
  return {
    buffer: scratch,
    // The read is always in `scratch` (the buffer given here).
    callback: (n: number): boolean => {
      onChunk(copyRead(n));
      // false would stop reading: readers pause with socket.pause() instead.
      return true;
    },
  };
}
