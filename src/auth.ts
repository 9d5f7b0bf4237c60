/**
 * Client authentication: the users file, as memcached's `-Y` file (one
 * `user:password` per line), and the credential check. Passwords are
 * compared in constant time (as SHA-256 digests, so their length does not
 * show either) and never logged.
 */

import { createHash, timingSafeEqual } from 'node:crypto';

/** Why a users file was refused, with the 1-based line it is about (0: the file). */
export class UsersFileError extends Error {
  constructor(
    readonly line: number,
    message: string,
  ) {
    super(message);
    this.name = 'UsersFileError';
  }
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/** The digest compared when the user does not exist, so that case takes as long as the others. */
const NOBODY = digest('');

export class Users {
  private readonly digests: Map<string, Buffer>;

  private constructor(digests: Map<string, Buffer>) {
    this.digests = digests;
  }

  get size(): number {
    return this.digests.size;
  }

  /**
   * Parse a users file: `user:password` per line (the password is what follows
   * the first colon); empty lines and lines starting with `#` are skipped.
   */
  static parse(text: string): Users {
    const digests = new Map<string, Buffer>();
    text.split('\n').forEach((raw, i) => {
      const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
      if (line.length === 0 || line.startsWith('#')) return;
      const colon = line.indexOf(':');
      if (colon < 0) throw new UsersFileError(i + 1, 'expected user:password');
      const user = line.slice(0, colon);
      if (user.length === 0) throw new UsersFileError(i + 1, 'empty user name');
      if (/\s/.test(user)) throw new UsersFileError(i + 1, 'a user name cannot hold white space');
      if (digests.has(user)) throw new UsersFileError(i + 1, `user ${user} is listed twice`);
      digests.set(user, digest(line.slice(colon + 1)));
    });
    if (digests.size === 0) throw new UsersFileError(0, 'no users');
    return new Users(digests);
  }

  /** Whether `user` exists and `password` is theirs. */
  check(user: string, password: string): boolean {
    const known = this.digests.get(user);
    const same = timingSafeEqual(digest(password), known ?? NOBODY);
    return same && known !== undefined;
  }
}
