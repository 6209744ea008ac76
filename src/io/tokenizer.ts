// Tokenizers: Hugging Face tokenizer.json (byte-level BPE as in GPT-2/Phi, SentencePiece-style
// BPE with byte fallback as in Llama) through @huggingface/tokenizers, and a built-in
// byte-level tokenizer written as a genuine tokenizer.json so that it loads the same way.

import fs from 'node:fs';
import path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { checkTokenizerJson } from './tokenizer-checks.js';
import { chooseCut, encodeInPieces, LONG_TEXT, type CutKind } from './long-text.js';

export interface Tokenizer {
  /** token ids of `text`; BOS prepended when `addBos` (default: the tokenizer's own setting) */
  encode(text: string, opts?: { addBos?: boolean }): number[];
  /** text of `ids`; special tokens left out unless `skipSpecialTokens: false` (as transformers' decode) */
  decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): string;
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  /** whether encode() prepends BOS by default (from tokenizer_config.json / the post-processor) */
  readonly addBos: boolean;
  /** write tokenizer.json and tokenizer_config.json into dir */
  save(dir: string): void;
}

type Json = Record<string, unknown>;

const SUPPORTED_MODELS = ['BPE'];

function readJson(file: string): Json {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new Error(`${file}: cannot read`);
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v as Json;
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string')
    return (v as Json).content as string;
  return null;
}

export class HuggingFaceTokenizer implements Tokenizer {
  private readonly tok: HfTokenizer;
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly addBos: boolean;

  constructor(
    private readonly json: Json,
    private readonly config: Json,
    file = 'tokenizer.json',
  ) {
    const model = json.model as Json | undefined;
    if (!model || typeof model !== 'object') throw new Error(`${file}: model is missing`);
    if (!SUPPORTED_MODELS.includes(model.type as string)) {
      throw new Error(
        `${file}: model.type ${JSON.stringify(model.type)} is not supported (supported: ${SUPPORTED_MODELS.join(', ')})`,
      );
    }
    checkTokenizerJson(json, file);
    try {
      this.tok = new HfTokenizer(json, config);
      // the post-processor runs on every encode: a broken one fails here, naming the file
      this.tok.encode('a b', { add_special_tokens: true });
      this.tok.encode('a b', { add_special_tokens: false });
    } catch (e) {
      throw new Error(`${file}: cannot build the tokenizer (${(e as Error).message})`, { cause: e });
    }
    const vocab = this.tok.get_vocab(true);
    let maxId = -1;
    for (const id of vocab.values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
    const idOf = (key: string): number | null => {
      const c = tokenContent(config[key]);
      return c === null ? null : (this.tok.token_to_id(c) ?? null);
    };
    this.bosTokenId = idOf('bos_token');
    this.eosTokenId = idOf('eos_token');
    // BOS by default: tokenizer_config's add_bos_token, else whether the post-processor adds it
    if (typeof config.add_bos_token === 'boolean')
      this.addBos = config.add_bos_token && this.bosTokenId !== null;
    else if (this.bosTokenId !== null) {
      const probe = this.tok.encode('a', { add_special_tokens: true }).ids;
      this.addBos =
        probe[0] === this.bosTokenId &&
        this.tok.encode('a', { add_special_tokens: false }).ids[0] !== this.bosTokenId;
    } else this.addBos = false;
  }

  static fromDir(dir: string): HuggingFaceTokenizer {
    const file = path.join(dir, 'tokenizer.json');
    if (!fs.existsSync(file)) throw new Error(`${dir}: tokenizer.json not found`);
    const cfgFile = path.join(dir, 'tokenizer_config.json');
    const config = fs.existsSync(cfgFile) ? readJson(cfgFile) : {};
    return new HuggingFaceTokenizer(readJson(file), config, file);
  }

  /** how long texts are cut into pieces (chosen on the first long text; see long-text.ts) */
  private cut: CutKind | undefined;

  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    const raw = (t: string): number[] => this.tok.encode(t, { add_special_tokens: false }).ids;
    let ids: number[];
    if (text.length <= LONG_TEXT) ids = raw(text);
    else {
      if (this.cut === undefined) this.cut = chooseCut(raw);
      ids = encodeInPieces(text, raw, this.cut);
    }
    return (opts.addBos ?? this.addBos) && this.bosTokenId !== null ? [this.bosTokenId, ...ids] : ids;
  }

  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return ''; // the package rejects an empty list
    return this.tok.decode(ids, {
      skip_special_tokens: opts.skipSpecialTokens ?? true,
      clean_up_tokenization_spaces: false,
    });
  }

  save(dir: string): void {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(this.json));
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(this.config, null, 2));
  }
}

/** GPT-2's reversible map from bytes to printable characters (the byte-level alphabet). */
export function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const out = new Array<string>(256);
  bs.forEach((b, i) => (out[b] = String.fromCodePoint(cs[i])));
  return out;
}

export const BYTE_EOS = '<|endoftext|>';

/**
 * A byte-level tokenizer: 256 byte tokens (ids = byte values) and <|endoftext|> = 256 as BOS and
 * EOS, expressed as an HF byte-level BPE tokenizer.json without merges.
 */
export function byteTokenizer(opts: { addBos?: boolean } = {}): HuggingFaceTokenizer {
  const alphabet = bytesToUnicode();
  const vocab: Record<string, number> = {};
  alphabet.forEach((ch, b) => (vocab[ch] = b));
  vocab[BYTE_EOS] = 256;
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false };
  const json: Json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [
      {
        id: 256,
        content: BYTE_EOS,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      },
    ],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: null,
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
  const config: Json = {
    bos_token: BYTE_EOS,
    eos_token: BYTE_EOS,
    add_bos_token: opts.addBos ?? true,
    model_max_length: 1 << 20,
  };
  return new HuggingFaceTokenizer(json, config, '(built-in byte tokenizer)');
}

export function loadTokenizer(dir: string): Tokenizer {
  return HuggingFaceTokenizer.fromDir(dir);
}
