/**
 * What a route answers a client with: the reply's bytes in the text
 * protocol, or a single-key read's hit, which the client's protocol encodes
 * itself (text: the VALUE block; binary: a response packet). The hit is the
 * session read's hot path: a binary get is encoded straight from the node's
 * reply, with no text reply built and parsed again.
 */

import type { Value } from './response-parser.js';

/** A reply in the text protocol, as pieces to write in order (null: nothing). */
export type Out = Buffer | Buffer[] | null;

/** One key's hit from one node. */
export class Hit {
  constructor(
    /** The node's whole reply (VALUE block and END) when it came in one piece, else empty. */
    readonly reply: Buffer,
    readonly value: Value,
    /** The cas token the client sees, for a command that returns one; undefined for get. */
    readonly token: bigint | undefined,
  ) {}
}

export type Result = Out | Hit;
