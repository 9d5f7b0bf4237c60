/** msproxy's version, from package.json, and the 1.6-compatible string answered to `version`. */

import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

export const VERSION: string = pkg.version;

/** memcached clients parse "major.minor.patch"; msproxy speaks the 1.6 protocol. */
export function memcachedVersion(): string {
  return `1.6.0-msproxy-${VERSION}`;
}
