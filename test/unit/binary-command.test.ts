/**
 * BinaryCommands: the Requests built directly from a binary packet (the
 * session write) must be exactly what the text parser makes of the packet's
 * text command, field for field, so every route sees one command model.
 */

import { expect } from 'chai';
import { BinaryCommands } from '../../src/protocol/binary-command.js';
import { type BinaryPacket, Op, QUIET_OF } from '../../src/protocol/binary.js';
import { ProtocolError, type Request } from '../../src/protocol/request.js';

function packet(
  opcode: number,
  key: string,
  value: string,
  flags: number,
  exp: number,
  cas: bigint,
): BinaryPacket {
  const extras = Buffer.alloc(8);
  extras.writeUInt32BE(flags, 0);
  extras.writeUInt32BE(exp, 4);
  const command = QUIET_OF[opcode] ?? opcode;
  return {
    opcode,
    command,
    quiet: command !== opcode,
    opaque: 7,
    cas,
    extras,
    key: Buffer.from(key, 'latin1'),
    value: Buffer.from(value, 'latin1'),
  };
}

/** Every field a route may read, as plain values. */
function fields(r: Request): unknown {
  const hex = (b: Buffer): string => b.toString('hex');
  return {
    cmd: r.cmd,
    raw: hex(r.raw),
    lineLength: r.lineLength,
    contentEnd: r.contentEnd,
    keys: r.keys.map(hex),
    wireKeys: r.wireKeys.map(hex),
    value: hex(r.value),
    noreply: r.noreply,
    flags: r.flags,
    exptime: r.exptime,
    bytes: r.bytes,
    cas: r.cas,
    delta: r.delta,
    args: r.args.map(hex),
    upper: r.upper,
    lower: r.lower,
    mode: r.mode,
    binary: r.binary,
  };
}

describe('BinaryCommands', function () {
  it('builds set, add and replace Requests exactly as the text parser makes them', function () {
    const direct = new BinaryCommands(1024 * 1024);
    const text = new BinaryCommands(1024 * 1024);
    const ops = [Op.SET, Op.ADD, Op.REPLACE, Op.SETQ, Op.ADDQ, Op.REPLACEQ];
    const keys = ['k', 'x:12345', '~'.repeat(250), '!#$%&()*+,-./:;<=>?@[\\]^_`{|}'];
    const values = ['', 'v', 'a\r\nb c', 'x'.repeat(20000)];
    let n = 0;
    for (const op of ops) {
      for (const key of keys) {
        for (const flags of [0, 1, 0xffffffff]) {
          for (const exp of [0, 60, 0x7fffffff, 0x80000000, 0xffffffff]) {
            for (const cas of [0n, 1n, (1n << 64n) - 1n]) {
              for (const value of values) {
                const p = packet(op, key, value, flags, exp, cas);
                const want = text.viaText(p);
                const got = direct.request(p);
                expect(want).to.not.be.instanceOf(ProtocolError);
                expect(got).to.not.be.instanceOf(ProtocolError);
                const what = `op ${op} key ${key.length} flags ${flags} exp ${exp} cas ${cas} value ${value.length}`;
                expect(fields(got as Request), what).to.deep.equal(fields(want as Request));
                n++;
              }
            }
          }
        }
      }
    }
    expect(n).to.equal(6 * 4 * 3 * 5 * 3 * 4);
  });
});
