/** Small helpers shared by the routes: a key's hash (identity and lane) and meta reply flags. */

/**
 * FNV-1a of the key: the key's identity for KeyOrder, and its lane (which of
 * a node's connections carries it), so one key's requests stay FIFO on a node.
 */
export function keyHash(key: Buffer): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key[i]!, 0x01000193);
  return h >>> 0;
}

/** Return flags of a meta reply line ("HD c12 t-1 f0" or "VA 5 f0 t-1") by letter. */
export function parseMetaFlags(line: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  const parts = line.toString('latin1').split(' ');
  const from = parts[0] === 'VA' ? 2 : 1;
  for (let i = from; i < parts.length; i++) {
    const p = parts[i]!;
    if (p.length > 0) out.set(p[0]!, p.slice(1));
  }
  return out;
}
