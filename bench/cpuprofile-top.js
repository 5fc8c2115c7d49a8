#!/usr/bin/env node
'use strict';
/**
 * Top self-time functions of a V8 .cpuprofile (node --cpu-prof), as a markdown table.
 *
 *   node bench/cpuprofile-top.js <file.cpuprofile> [top=20]
 *
 * Self time of a node = its hit count × the mean sampling interval; nodes with the same function,
 * file and line are merged. Also prints the share of time under the shim's functions (inclusive).
 */
const fs = require('node:fs');
const path = require('node:path');

function summarise(file, top = 20) {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8'));
  const { nodes, samples, timeDeltas, startTime, endTime } = profile;
  const byId = new Map(nodes.map((n) => [n.id, n]));
  // Self time per node from the samples and their time deltas (more exact than hitCount).
  const self = new Map();
  for (let i = 0; i < samples.length; i++) {
    const delta = timeDeltas[i + 1] ?? 0;
    self.set(samples[i], (self.get(samples[i]) ?? 0) + delta);
  }
  const total = endTime - startTime;
  const keyOf = (n) => {
    const f = n.callFrame;
    const where = f.url ? `${path.basename(f.url)}:${f.lineNumber + 1}` : '';
    return `${f.functionName || '(anonymous)'} ${where}`.trim();
  };
  const merged = new Map();
  for (const [id, us] of self) {
    const key = keyOf(byId.get(id));
    merged.set(key, (merged.get(key) ?? 0) + us);
  }
  const idle = [...merged].filter(([k]) => k.startsWith('(idle)')).reduce((a, [, v]) => a + v, 0);
  const busy = total - idle;
  const rows = [...merged].filter(([k]) => !k.startsWith('(idle)')).sort((a, b) => b[1] - a[1]).slice(0, top);

  // Inclusive time under functions of dist/server (the shim), counted once per sample stack.
  const parent = new Map();
  for (const n of nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const underShim = new Map();
  const isShim = (n) => /dist[\\/]server[\\/]/.test(n.callFrame.url);
  const shimOf = (id) => {
    if (underShim.has(id)) return underShim.get(id);
    const n = byId.get(id);
    const p = parent.get(id);
    const value = isShim(n) || (p !== undefined && shimOf(p));
    underShim.set(id, value);
    return value;
  };
  let shimUs = 0;
  for (const [id, us] of self) if (shimOf(id)) shimUs += us;

  // Self time by where the code lives.
  const categoryOf = (n) => {
    const { url, functionName } = n.callFrame;
    if (/dist[\\/]server[\\/]/.test(url)) return 'shim (dist/server, self)';
    if (/^node:_http|^node:http/.test(url)) return 'node http (JS; includes llhttp execute() when called from JS)';
    if (/^node:internal\/streams|^node:stream/.test(url)) return 'node streams';
    if (/^node:net|stream_base_commons/.test(url)) return 'node net / stream_base';
    if (/^node:/.test(url)) return 'other node internals';
    if (url) return 'application (bench handler)';
    if (functionName === '(garbage collector)') return 'garbage collector';
    if (functionName === '(program)') return '(program): native code outside JS frames, e.g. native llhttp on the fast path';
    if (functionName === '(idle)') return 'idle';
    return 'native called from JS (writev, ...)';
  };
  const categories = new Map();
  for (const [id, us] of self) {
    const c = categoryOf(byId.get(id));
    if (c !== 'idle') categories.set(c, (categories.get(c) ?? 0) + us);
  }

  const lines = [
    `profile ${(total / 1e6).toFixed(2)} s, busy ${(busy / 1e6).toFixed(2)} s; inclusive under dist/server/*: ` +
      `${(shimUs / 1e3).toFixed(0)} ms = ${((100 * shimUs) / Math.max(1, busy)).toFixed(1)}% of busy ` +
      '(the shim wraps socket.push, so on its JS data path the whole request handling runs under it)',
    '',
    '| self ms | % busy | category |',
    '|---:|---:|---|',
  ];
  for (const [c, us] of [...categories].sort((a, b) => b[1] - a[1])) {
    lines.push(`| ${(us / 1e3).toFixed(1)} | ${((100 * us) / Math.max(1, busy)).toFixed(1)} | ${c} |`);
  }
  lines.push('', '| self ms | % busy | function |', '|---:|---:|---|');
  for (const [key, us] of rows) lines.push(`| ${(us / 1e3).toFixed(1)} | ${((100 * us) / Math.max(1, busy)).toFixed(1)} | ${key} |`);
  return lines.join('\n');
}

module.exports = summarise;

if (require.main === module) {
  const [file, top] = process.argv.slice(2);
  if (!file) {
    console.error('usage: node bench/cpuprofile-top.js <file.cpuprofile> [top]');
    process.exit(2);
  }
  console.log(summarise(file, Number(top ?? 20)));
}
