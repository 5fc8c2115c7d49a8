'use strict';
/**
 * The two ways a benchmark script runs: as the driver (`main`), or as one of the server or client
 * processes the driver forks, named by `--child=<mode>` and followed by that child's arguments. A
 * driver or child that fails (throws, or returns a promise that rejects) prints why and exits 1.
 */
function runAsDriverOrChild(main, child) {
  const fail = (error) => {
    console.error(error);
    process.exit(1);
  };
  const childArg = process.argv.find((a) => a.startsWith('--child='));
  const running =
    childArg === undefined
      ? main()
      : child(childArg.slice('--child='.length), process.argv.slice(process.argv.indexOf(childArg) + 1));
  if (running instanceof Promise) running.catch(fail);
}

module.exports = { runAsDriverOrChild };
