#!/usr/bin/env -S node --initial-old-space-size=64
// Entry point installed as `msproxy`; the TypeScript build (npm run build, run by `prepare`) lives in dist/.
//
// Why the flag: msproxy's old generation stays near 10 MB while it allocates short-lived buffers
// at a high rate. V8 then starts a full mark-compact whenever its young generation has grown
// close to the old generation's remaining headroom: about 8 per second under a set-only load,
// each a 3-5 ms pause. A 64 MB starting limit gives that headroom and stops them (set100: about
// 9% more req/s and p99 from 7 to 3 ms in the benchmark). V8 reads it only at start-up, and
// NODE_OPTIONS does not accept it, so it is here; `bench/run.mjs` reads it from this line, and
// `workers` inherit it. `node bin/msproxy.js` runs without it.
import { main } from '../dist/cli.js';

main(process.argv).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(err);
    process.exitCode = 1;
  },
);
