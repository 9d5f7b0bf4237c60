/**
 * Short-lived buffers carved from shared 64 KiB slabs, for bytes that are
 * written or parsed soon and then dropped: a socket read's copy, a reply
 * msproxy builds.
 *
 * Why not Buffer's own 8 KiB pool: at 1-4 KiB a buffer (session values) it
 * needs a new ArrayBuffer every few calls, and each is an external
 * allocation for V8 to track and sweep. A slab stays alive while any piece
 * of it does: whoever keeps a piece for long copies it.
 */

/** The largest piece a slab gives; larger buffers are the caller's own. */
export const SLAB_PIECE_MAX = 16 * 1024;
const SLAB_SIZE = 64 * 1024;
let slab = Buffer.allocUnsafeSlow(SLAB_SIZE);
let slabAt = 0;

/** `n` (at most SLAB_PIECE_MAX) uninitialised bytes from the current slab. */
export function slabAlloc(n: number): Buffer {
  if (slabAt + n > SLAB_SIZE) {
    slab = Buffer.allocUnsafeSlow(SLAB_SIZE);
    slabAt = 0;
  }
  const at = slabAt;
  slabAt = (at + n + 7) & ~7; // 8-byte aligned, as Buffer's pool does
  return slab.subarray(at, at + n);
}

/** `n` uninitialised bytes: a slab piece, or a buffer of their own when over SLAB_PIECE_MAX. */
export function shortLived(n: number): Buffer {
  return n <= SLAB_PIECE_MAX ? slabAlloc(n) : Buffer.allocUnsafeSlow(n);
}
