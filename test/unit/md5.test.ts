import { createHash, randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { md5Word } from '../../src/routing/md5.js';

function reference(b: Uint8Array): number {
  return createHash('md5').update(b).digest().readUInt32LE(0);
}

describe('md5Word', function () {
  it('matches node:crypto for every length from 0 to 300 bytes (block and padding edges)', function () {
    for (let len = 0; len <= 300; len++) {
      for (let r = 0; r < 4; r++) {
        const b = randomBytes(len);
        expect(md5Word(b), `length ${len}: ${b.toString('hex')}`).to.equal(reference(b));
      }
    }
  });

  it('matches the RFC 1321 test suite', function () {
    const cases: [string, string][] = [
      ['', 'd41d8cd98f00b204e9800998ecf8427e'],
      ['a', '0cc175b9c0f1b6a831c399e269772661'],
      ['abc', '900150983cd24fb0d6963f7d28e17f72'],
      ['message digest', 'f96b697d7cb7938d525a2f31aaf161d0'],
      ['abcdefghijklmnopqrstuvwxyz', 'c3fcd3d76192e4007dfb496cca67e13b'],
      [
        '12345678901234567890123456789012345678901234567890123456789012345678901234567890',
        '57edf4a22be3c955ac49da2e2107b67a',
      ],
    ];
    for (const [msg, hex] of cases) {
      expect(md5Word(Buffer.from(msg, 'latin1')), msg).to.equal(
        Buffer.from(hex, 'hex').readUInt32LE(0),
      );
    }
  });

  it('hashes bytes (high bytes, NUL, a subarray view) exactly', function () {
    const big = Buffer.from([0, 0xff, 0xfe, 0x80, 0x7f, 0x00, 0xc3, 0xa9, 0xff]);
    for (let i = 0; i < big.length; i++) {
      for (let j = i; j <= big.length; j++) {
        const view = big.subarray(i, j);
        expect(md5Word(view), view.toString('hex')).to.equal(reference(view));
      }
    }
  });
});
