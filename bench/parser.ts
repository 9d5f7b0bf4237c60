/**
 * Micro-benchmark of the request and response parsers: requests/s and MB/s
 * for get-heavy and set-heavy streams with 1-4 KiB values, fed in 64 KiB
 * chunks as a socket would deliver them. Run: npm run bench:parser
 */

import { performance } from 'node:perf_hooks';
import { RequestParser } from '../src/protocol/request-parser.js';
import { EXPECT_LINE, EXPECT_VALUES, ResponseParser } from '../src/protocol/response-parser.js';

const CHUNK = 64 * 1024;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function stream(getRatio: number, count: number): { bytes: Buffer; gets: number } {
  const rand = rng(42);
  const parts: Buffer[] = [];
  let gets = 0;
  for (let i = 0; i < count; i++) {
    const key = `session:${Math.floor(rand() * 100000)}`;
    if (rand() < getRatio) {
      parts.push(Buffer.from(`get ${key}\r\n`));
      gets++;
    } else {
      const len = 1024 + Math.floor(rand() * 3072);
      parts.push(
        Buffer.from(`set ${key} 0 3600 ${len}\r\n`),
        Buffer.alloc(len, 0x61),
        Buffer.from('\r\n'),
      );
    }
  }
  return { bytes: Buffer.concat(parts), gets };
}

function chunks(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += CHUNK) out.push(buf.subarray(i, i + CHUNK));
  return out;
}

function measure(name: string, bytes: number, requests: number, run: () => void): void {
  for (let i = 0; i < 3; i++) run(); // warm up
  const rounds = 10;
  const t0 = performance.now();
  for (let i = 0; i < rounds; i++) run();
  const s = (performance.now() - t0) / 1000;
  const rps = (requests * rounds) / s;
  const mbs = (bytes * rounds) / s / 1e6;
  console.log(
    `${name.padEnd(28)} ${(rps / 1e6).toFixed(2).padStart(6)} M req/s ${mbs.toFixed(0).padStart(6)} MB/s`,
  );
}

const N = 200_000;
for (const [name, ratio] of [
  ['get90 requests', 0.9],
  ['set100 requests', 0],
] as const) {
  const { bytes } = stream(ratio, N);
  const cs = chunks(bytes);
  let seen = 0;
  measure(name, bytes.length, N, () => {
    const p = new RequestParser({ onRequest: () => seen++, onError: () => {} });
    for (const c of cs) p.push(c);
  });
  if (seen === 0) throw new Error('parser saw nothing');
}

// Replies: get hits with 1-4 KiB values, and STORED lines.
{
  const rand = rng(7);
  const parts: Buffer[] = [];
  for (let i = 0; i < N; i++) {
    const len = 1024 + Math.floor(rand() * 3072);
    parts.push(
      Buffer.from(`VALUE session:${i} 0 ${len}\r\n`),
      Buffer.alloc(len, 0x62),
      Buffer.from('\r\nEND\r\n'),
    );
  }
  const bytes = Buffer.concat(parts);
  const cs = chunks(bytes);
  measure('get-hit replies', bytes.length, N, () => {
    const p = new ResponseParser({
      onReply: () => {},
      onDesync: (r) => {
        throw new Error(r);
      },
    });
    for (let i = 0; i < N; i++) p.expect(EXPECT_VALUES);
    for (const c of cs) p.push(c);
  });
}
{
  const bytes = Buffer.from('STORED\r\n'.repeat(N));
  const cs = chunks(bytes);
  measure('STORED replies', bytes.length, N, () => {
    const p = new ResponseParser({
      onReply: () => {},
      onDesync: (r) => {
        throw new Error(r);
      },
    });
    for (let i = 0; i < N; i++) p.expect(EXPECT_LINE);
    for (const c of cs) p.push(c);
  });
}
