#!/usr/bin/env node
'use strict';
const fs = require('fs');
const path = require('node:path');
const { promisify } = require('util');

const stat = promisify(fs.stat);

async function walk(dir, depth = 0) {
  const entries = await fs.promises.readdir(dir, { withFileTypes: true });
  let total = 0;
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory() && depth < 2) {
      total += await walk(full, depth + 1);
    } else if (entry.isFile()) {
      total += (await stat(full)).size;
    }
  }
  return total;
}

fs.writeFileSync('/tmp/example.txt', 'hello\nworld\n', 'utf8');
const lines = fs.readFileSync('/tmp/example.txt', 'utf8').split('\n').filter(Boolean);
console.log(`lines: ${lines.length}, ext: ${path.extname('/tmp/example.txt')}`);
walk('/tmp').then((bytes) => console.log(`bytes under /tmp: ${bytes / 1024 | 0} KiB`)).catch(console.error);
