#!/usr/bin/env node
// Entry point installed as `msproxy`; the TypeScript build (npm run build, run by `prepare`) lives in dist/.
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
