import fs from 'node:fs/promises';
import path from 'path';
import { fileURLToPath } from 'url';
import * as util from 'util';
export { default as os } from 'os';

const here = path.dirname(fileURLToPath(import.meta.url));
const target = path.join(here, 'notes.json');

export async function save(data) {
  await fs.writeFile(target, JSON.stringify(data, null, 2));
  return JSON.parse(await fs.readFile(target, 'utf8'));
}

const lazy = await import('node:zlib');
console.log(util.inspect(await save({ a: 1, list: [1, 2, 3] }), { depth: 2 }), typeof lazy.gzipSync);
