/** msproxy's version, from package.json, and the version answered to `version`. */

import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

export const VERSION: string = pkg.version;

/**
 * What `version` answers: the memcached release whose text protocol msproxy
 * speaks. Clients parse this as plain "major.minor.patch" (the npm memcached
 * client takes the last x.y.z in the string, so a suffix such as
 * "-msproxy-0.1.0" would be misread); msproxy's own version is the
 * `proxy_version` stat.
 */
export const PROTOCOL_VERSION = '1.6.18';
