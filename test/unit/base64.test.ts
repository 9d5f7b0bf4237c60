import { expect } from 'chai';
import fc from 'fast-check';
import { decodeKey, encodeKey } from '../../src/protocol/base64.js';

const dec = (s: string): number[] | undefined => {
  const out = decodeKey(Buffer.from(s, 'latin1'));
  return out === undefined ? undefined : [...out];
};

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=';
/** Bytes memcached's base64_decode skips. */
const notAlphabet = fc
  .integer({ min: 0, max: 255 })
  .filter((c) => !ALPHABET.includes(String.fromCharCode(c)));

describe('base64: decodeKey with memcached rules', () => {
  it('decodes plain groups of four', () => {
    expect(decodeKey(Buffer.from('a2V5'))?.toString()).to.equal('key');
    expect(decodeKey(Buffer.from('Zm9vYmFy'))?.toString()).to.equal('foobar');
    expect(dec('AAAA')).to.deep.equal([0, 0, 0]);
    expect(dec('////')).to.deep.equal([255, 255, 255]);
    expect(dec('+/+/')).to.deep.equal([0xfb, 0xff, 0xbf]);
  });

  it('handles padding: AA== is one byte, AAA= two', () => {
    expect(dec('AA==')).to.deep.equal([0]);
    expect(dec('AAA=')).to.deep.equal([0, 0]);
    expect(dec('Zm9vYg==')).to.deep.equal([...Buffer.from('foob')]);
    expect(dec('Zm9vYmE=')).to.deep.equal([...Buffer.from('fooba')]);
  });

  it('counts = anywhere in a group as padding, like memcached', () => {
    // Verified with memcached 1.6.18: ms AA=A ... b and =AAA ... b store the same key as AAA=.
    expect(dec('AA=A')).to.deep.equal([0, 0]);
    expect(dec('=AAA')).to.deep.equal([0, 0]);
  });

  it('fails on three or four padding characters in a group', () => {
    expect(dec('====')).to.equal(undefined);
    expect(dec('A===')).to.equal(undefined);
  });

  it('requires the alphabet characters to come in groups of four', () => {
    expect(dec('')).to.equal(undefined);
    expect(dec('A')).to.equal(undefined);
    expect(dec('AAA')).to.equal(undefined);
    expect(dec('AAAAA')).to.equal(undefined);
    expect(dec('AA==A')).to.equal(undefined);
    expect(dec('AA==AAA')).to.equal(undefined);
  });

  it('skips characters outside the alphabet', () => {
    expect(decodeKey(Buffer.from('a2\x00V5!'))?.toString()).to.equal('key');
    expect(decodeKey(Buffer.from('-a_2.V~5'))?.toString()).to.equal('key');
    expect(dec('A-A_A.A!')).to.deep.equal([0, 0, 0]);
    expect(dec('!!!!')).to.equal(undefined);
    expect(dec('\xff\x80 \t')).to.equal(undefined);
  });

  it('stops after the first padded group', () => {
    expect(dec('AA==AAAA')).to.deep.equal([0]);
    expect(dec('QQ==QkI=')).to.deep.equal([0x41]);
    expect(dec('QUI=QUJD')).to.deep.equal([0x41, 0x42]);
    // A bad group after the padded one is never looked at.
    expect(dec('QQ======')).to.deep.equal([0x41]);
  });

  it('round-trips encodeKey for random buffers', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 400 }), (raw) => {
        const key = Buffer.from(raw);
        const wire = encodeKey(key);
        expect(wire.toString('latin1')).to.equal(key.toString('base64'));
        const back = decodeKey(wire);
        expect(back).to.not.equal(undefined);
        expect(back!.equals(key)).to.equal(true);
      }),
      { numRuns: 500, seed: 1 },
    );
  });

  it('decodes the same with non-alphabet bytes sprinkled in', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 1, maxLength: 100 }),
        fc.array(fc.tuple(fc.nat(), notAlphabet), { maxLength: 20 }),
        (raw, inserts) => {
          const chars = [...encodeKey(Buffer.from(raw))];
          for (const [at, c] of inserts) chars.splice(at % (chars.length + 1), 0, c);
          const back = decodeKey(Buffer.from(chars));
          expect(back).to.not.equal(undefined);
          expect(back!.equals(Buffer.from(raw))).to.equal(true);
        },
      ),
      { numRuns: 300, seed: 2 },
    );
  });

  it('an empty key encodes to nothing, which does not decode', () => {
    expect(encodeKey(Buffer.alloc(0))).to.have.length(0);
    expect(decodeKey(encodeKey(Buffer.alloc(0)))).to.equal(undefined);
  });
});
