/**
 * The CLI entry point run from TypeScript sources (tests spawn it with
 * `node --import tsx/esm`); cluster workers re-run it the same way.
 */
import { main } from '../../src/cli.js';

main(process.argv).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  },
);
