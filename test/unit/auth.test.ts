/** The users file (memcached's -Y format) and the credential check, and their config errors. */

import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Users, UsersFileError } from '../../src/auth.js';
import { ConfigError, parseConfig } from '../../src/config.js';

function file(text: string): string {
  const f = join(mkdtempSync(join(tmpdir(), 'msp-users-')), 'users');
  writeFileSync(f, text);
  return f;
}

const base = { listen: '127.0.0.1:0', nodes: ['127.0.0.1:11211'], replicas: 1 };

describe('auth: users file', function () {
  it('reads user:password lines (the password may hold colons and spaces)', function () {
    const u = Users.parse('# comment\r\nalice:s3cret\r\n\nbob:a:b c\n');
    expect(u.size).to.equal(2);
    expect(u.check('alice', 's3cret')).to.equal(true);
    expect(u.check('bob', 'a:b c')).to.equal(true);
    expect(u.check('alice', 's3cret ')).to.equal(false);
    expect(u.check('alice', 'S3cret')).to.equal(false);
    expect(u.check('carol', 's3cret'), 'unknown user').to.equal(false);
    expect(u.check('', ''), 'no user').to.equal(false);
  });

  it('refuses a malformed file, naming the line', function () {
    const bad: [string, number, string][] = [
      ['alice:x\nbob\n', 2, 'expected user:password'],
      [':pw\n', 1, 'empty user name'],
      ['a b:pw\n', 1, 'white space'],
      ['a:1\na:2\n', 2, 'listed twice'],
      ['# nothing\n\n', 0, 'no users'],
    ];
    for (const [text, line, reason] of bad) {
      expect(() => Users.parse(text), text).to.throw(UsersFileError, reason);
      try {
        Users.parse(text);
      } catch (e) {
        expect((e as UsersFileError).line, text).to.equal(line);
      }
    }
  });

  it('is a config error naming the file and line, or the missing file', function () {
    const f = file('alice:x\nnocolon\n');
    expect(() => parseConfig({ ...base, auth: { usersFile: f } })).to.throw(
      ConfigError,
      `config: auth.usersFile: ${f}:2: expected user:password`,
    );
    expect(() => parseConfig({ ...base, auth: { usersFile: '/nonexistent/users' } })).to.throw(
      ConfigError,
      'config: auth.usersFile: cannot read /nonexistent/users',
    );
    const ok = parseConfig({ ...base, auth: { usersFile: file('alice:x\n') } });
    expect(ok.users?.check('alice', 'x')).to.equal(true);
    expect(parseConfig(base).users).to.equal(null);
  });
});
