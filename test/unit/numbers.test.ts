import { expect } from 'chai';
import { parseI32, parseU32, parseU64 } from '../../src/protocol/numbers.js';

const b = (s: string): [Buffer, number, number] => {
  const buf = Buffer.from(s, 'latin1');
  return [buf, 0, buf.length];
};

describe('numbers: memcached safe_strto* semantics', () => {
  it('parses plain decimals', () => {
    expect(parseU32(...b('0'))).to.equal(0);
    expect(parseU32(...b('4294967295'))).to.equal(4294967295);
    expect(parseI32(...b('-1'))).to.equal(-1);
    expect(parseU64(...b('18446744073709551615'))).to.equal(18446744073709551615n);
  });

  it('truncates like the C assignment does (memcached 1.6 has no range check)', () => {
    expect(parseU32(...b('4294967296'))).to.equal(0);
    expect(parseU32(...b('4294967297'))).to.equal(1);
    expect(parseI32(...b('2147483648'))).to.equal(-2147483648);
    expect(parseI32(...b('4294967297'))).to.equal(1);
  });

  it('refuses what strto* refuses: no digits, trailing junk, overflow', () => {
    for (const s of ['', '-', '+', 'abc', '1x', '0x10', ' ']) {
      expect(parseU32(...b(s)), s).to.equal(undefined);
      expect(parseI32(...b(s)), s).to.equal(undefined);
      expect(parseU64(...b(s)), s).to.equal(undefined);
    }
    expect(parseU64(...b('18446744073709551616'))).to.equal(undefined);
    expect(parseI32(...b('9223372036854775808'))).to.equal(undefined);
  });

  it('accepts signs, leading white space and a white-space suffix as C does', () => {
    expect(parseU32(...b('+5'))).to.equal(5);
    expect(parseU32(...b('-0'))).to.equal(0);
    expect(parseI32(...b('\t7'))).to.equal(7);
    expect(parseU32(...b('7\t'))).to.equal(7);
    expect(parseU32(...b('7\rjunk'))).to.equal(7);
  });

  it('refuses a negative unsigned value unless it wraps to a small one', () => {
    expect(parseU32(...b('-5'))).to.equal(undefined);
    expect(parseU64(...b('-1'))).to.equal(undefined);
    expect(parseU64(...b('-18446744073709551615'))).to.equal(1n);
  });
});
