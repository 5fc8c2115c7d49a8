'use strict';
// Writes dist/index.mjs, the ESM entry: it re-exports the CommonJS build by name and makes
// bitsUpload the default export, so `import bitsUpload from 'bits-upload'` works as documented.
const fs = require('node:fs');
const path = require('node:path');

const dist = path.join(__dirname, '..', 'dist');
const names = Object.keys(require(path.join(dist, 'index.js'))).filter((name) => name !== 'default');
const lines = [
  "import cjs from './index.js';",
  `export const { ${names.join(', ')} } = cjs;`,
  `export default ${names.includes('bitsUpload') ? 'cjs.bitsUpload' : 'cjs'};`,
  '',
];
fs.writeFileSync(path.join(dist, 'index.mjs'), lines.join('\n'));
