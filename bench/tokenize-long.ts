// Time and memory of encoding one long document (docs/reliability.md):
//   node --expose-gc --import tsx bench/tokenize-long.ts tok512|phi-17m CHARS
// The text is one story sentence repeated (one document, no newline); memory is the growth of the
// resident set around the encode call.

import path from 'node:path';
import { readSentencePieceModel, sentencePieceTokenizerJson } from '../src/io/llama2c.js';
import { HuggingFaceTokenizer, loadTokenizer } from '../src/io/tokenizer.js';

const [kind = 'tok512', chars = '1000000'] = process.argv.slice(2);
const shared = path.resolve(import.meta.dirname, '../../shared/data');
const tok =
  kind === 'tok512'
    ? new HuggingFaceTokenizer(
        sentencePieceTokenizerJson(readSentencePieceModel(path.join(shared, 'stories260K/tok512.model'))),
        {},
      )
    : loadTokenizer(path.join(shared, 'teachers/phi-17m'));
const n = Number(chars);
const sentence =
  'Once upon a time there was a little girl named Lily who liked to play outside in the park. ';
const text = sentence.repeat(Math.ceil(n / sentence.length)).slice(0, n);
(globalThis as { gc?: () => void }).gc?.();
const rss0 = process.memoryUsage().rss;
const t0 = performance.now();
const ids = tok.encode(text, { addBos: false });
const sec = (performance.now() - t0) / 1000;
const mb = (process.memoryUsage().rss - rss0) / 1e6;
console.log(
  `${kind}: ${n} characters -> ${ids.length} tokens in ${sec.toFixed(2)} s, +${mb.toFixed(0)} MB resident`,
);
