// llama2.c import: the legacy (v0) checkpoint .bin and its tokenizer (.bin or SentencePiece
// .model) -> a Hugging Face style Llama directory that loads like any HF model.
//
// Checkpoint: 7 x int32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len; a negative vocab_size means an unshared classifier follows), then float32 weights:
// token embedding (V, dim), rms_att (L, dim), wq (L, dim, dim), wk, wv (L, kv_dim, dim),
// wo (L, dim, dim), rms_ffn (L, dim), w1 (L, hidden, dim), w2 (L, dim, hidden), w3 (L, hidden, dim),
// rms_final (dim), two RoPE tables (seq_len, head_size / 2) each, [wcls (V, dim)].
//
// llama2.c rotates adjacent pairs (2i, 2i+1) while HF Llama rotates halves (i, i + hs/2), so
// the rows of wq and wk are permuted per head: new row j * hs/2 + i = old row 2i + j.

import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../util/fs.js';
import { writeSafetensors, type WriteEntry } from './safetensors.js';

export interface Llama2cHeader {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
  sharedClassifier: boolean;
}

function fail(file: string, msg: string): never {
  throw new Error(`${file}: ${msg}`);
}

export function readLlama2cCheckpoint(file: string): {
  header: Llama2cHeader;
  tensors: Map<string, Float32Array>;
} {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch {
    fail(file, 'cannot read the checkpoint');
  }
  if (buf.length < 28) fail(file, `is ${buf.length} bytes, shorter than the 28-byte header`);
  const h = new Int32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + 28));
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, rawVocab, seqLen] = Array.from(h);
  const names = ['dim', 'hidden_dim', 'n_layers', 'n_heads', 'n_kv_heads', 'vocab_size', 'seq_len'];
  [dim, hiddenDim, nLayers, nHeads, nKvHeads, Math.abs(rawVocab), seqLen].forEach((v, i) => {
    if (!(v > 0 && v < 1 << 24))
      fail(
        file,
        `header field ${names[i]} = ${v} is not a plausible size (is this a v0 llama2.c checkpoint?)`,
      );
  });
  if (dim % nHeads !== 0) fail(file, `n_heads (${nHeads}) must divide dim (${dim})`);
  if (nHeads % nKvHeads !== 0) fail(file, `n_kv_heads (${nKvHeads}) must divide n_heads (${nHeads})`);
  const header: Llama2cHeader = {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize: Math.abs(rawVocab),
    seqLen,
    sharedClassifier: rawVocab > 0,
  };
  const hs = dim / nHeads;
  const kvDim = hs * nKvHeads;
  const V = header.vocabSize;
  const floats = new Float32Array(
    buf.buffer.slice(buf.byteOffset + 28, buf.byteOffset + 28 + Math.floor((buf.length - 28) / 4) * 4),
  );
  const sizes: [string, number][] = [
    ['tok', V * dim],
    ['rms_att', nLayers * dim],
    ['wq', nLayers * dim * dim],
    ['wk', nLayers * kvDim * dim],
    ['wv', nLayers * kvDim * dim],
    ['wo', nLayers * dim * dim],
    ['rms_ffn', nLayers * dim],
    ['w1', nLayers * hiddenDim * dim],
    ['w2', nLayers * dim * hiddenDim],
    ['w3', nLayers * hiddenDim * dim],
    ['rms_final', dim],
    ['freq_real', (seqLen * hs) / 2],
    ['freq_imag', (seqLen * hs) / 2],
  ];
  if (!header.sharedClassifier) sizes.push(['wcls', V * dim]);
  const total = sizes.reduce((a, [, n]) => a + n, 0);
  if (floats.length !== total) {
    fail(
      file,
      `holds ${floats.length} floats after the header; the header implies ${total} (truncated, or not a v0 checkpoint)`,
    );
  }
  const raw = new Map<string, Float32Array>();
  let off = 0;
  for (const [n, s] of sizes) {
    raw.set(n, floats.subarray(off, off + s));
    off += s;
  }
  const tensors = new Map<string, Float32Array>();
  const per = (name: string, l: number, size: number) => raw.get(name)!.slice(l * size, (l + 1) * size);
  tensors.set('model.embed_tokens.weight', raw.get('tok')!.slice());
  for (let l = 0; l < nLayers; l++) {
    const p = `model.layers.${l}`;
    tensors.set(`${p}.input_layernorm.weight`, per('rms_att', l, dim));
    tensors.set(`${p}.self_attn.q_proj.weight`, unInterleaveRows(per('wq', l, dim * dim), nHeads, hs, dim));
    tensors.set(
      `${p}.self_attn.k_proj.weight`,
      unInterleaveRows(per('wk', l, kvDim * dim), nKvHeads, hs, dim),
    );
    tensors.set(`${p}.self_attn.v_proj.weight`, per('wv', l, kvDim * dim));
    tensors.set(`${p}.self_attn.o_proj.weight`, per('wo', l, dim * dim));
    tensors.set(`${p}.post_attention_layernorm.weight`, per('rms_ffn', l, dim));
    tensors.set(`${p}.mlp.gate_proj.weight`, per('w1', l, hiddenDim * dim));
    tensors.set(`${p}.mlp.down_proj.weight`, per('w2', l, dim * hiddenDim));
    tensors.set(`${p}.mlp.up_proj.weight`, per('w3', l, hiddenDim * dim));
  }
  tensors.set('model.norm.weight', raw.get('rms_final')!.slice());
  if (!header.sharedClassifier) tensors.set('lm_head.weight', raw.get('wcls')!.slice());
  return { header, tensors };
}

/** (heads * hs, cols) rows reordered from adjacent pairs to halves, per head */
export function unInterleaveRows(w: Float32Array, heads: number, hs: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < hs / 2; i++)
      for (let j = 0; j < 2; j++) {
        const src = (h * hs + 2 * i + j) * cols;
        const dst = (h * hs + j * (hs / 2) + i) * cols;
        out.set(w.subarray(src, src + cols), dst);
      }
  return out;
}

export interface SentencePieceVocab {
  pieces: string[];
  scores: number[];
}

/** llama2.c's tokenizer.bin: int32 max_token_length, then (float32 score, int32 len, bytes) per token */
export function readLlama2cTokenizerBin(file: string, vocabSize: number): SentencePieceVocab {
  const buf = fs.readFileSync(file);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let off = 4;
  const pieces: string[] = [];
  const scores: number[] = [];
  const dec = new TextDecoder('utf-8');
  for (let i = 0; i < vocabSize; i++) {
    if (off + 8 > buf.length) fail(file, `ends after ${i} of ${vocabSize} tokens`);
    scores.push(dv.getFloat32(off, true));
    const len = dv.getInt32(off + 4, true);
    off += 8;
    if (len < 0 || len > 1 << 16) fail(file, `token ${i} has a bad length ${len}`);
    if (off + len > buf.length) fail(file, `ends inside token ${i} of ${vocabSize}`);
    let s = dec.decode(buf.subarray(off, off + len));
    off += len;
    // llama2.c wrote BOS/EOS as "\n<s>\n" and replaced the SentencePiece space marker by ' '
    if (s === '\n<s>\n') s = '<s>';
    else if (s === '\n</s>\n') s = '</s>';
    pieces.push(s.replaceAll(' ', '\u2581'));
  }
  return { pieces, scores };
}

/** A SentencePiece .model (protobuf ModelProto): pieces (field 1) with piece (1) and score (2). */
export function readSentencePieceModel(file: string): SentencePieceVocab {
  const buf = fs.readFileSync(file);
  const pieces: string[] = [];
  const scores: number[] = [];
  const dec = new TextDecoder('utf-8');
  const varint = (b: Uint8Array, p: { i: number }): number => {
    let r = 0;
    let shift = 0;
    for (;;) {
      if (p.i >= b.length) fail(file, 'truncated protobuf varint');
      const byte = b[p.i++];
      r += (byte & 0x7f) * 2 ** shift;
      if (!(byte & 0x80)) return r;
      shift += 7;
    }
  };
  // every length is checked against the bytes left, so a cut or corrupted file names itself
  const need = (b: Uint8Array, p: { i: number }, n: number, what: string) => {
    if (p.i + n > b.length)
      fail(
        file,
        `truncated or corrupt: ${what} of ${n} bytes at byte ${p.i} runs past the end (${b.length})`,
      );
  };
  const skip = (b: Uint8Array, p: { i: number }, wire: number) => {
    if (wire === 0) varint(b, p);
    else if (wire === 1) {
      need(b, p, 8, 'a fixed64 field');
      p.i += 8;
    } else if (wire === 2) {
      const len = varint(b, p);
      need(b, p, len, 'a length-delimited field');
      p.i += len;
    } else if (wire === 5) {
      need(b, p, 4, 'a fixed32 field');
      p.i += 4;
    } else fail(file, `unsupported protobuf wire type ${wire} at byte ${p.i}`);
  };
  const p = { i: 0 };
  let trainerVocab: number | null = null;
  while (p.i < buf.length) {
    const key = varint(buf, p);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (field === 1 && wire === 2) {
      const len = varint(buf, p);
      need(buf, p, len, `piece ${pieces.length}`);
      const sub = buf.subarray(p.i, p.i + len);
      p.i += len;
      const q = { i: 0 };
      let piece = '';
      let score = 0;
      while (q.i < sub.length) {
        const k = varint(sub, q);
        const f = Math.floor(k / 8);
        const w = k & 7;
        if (f === 1 && w === 2) {
          const l = varint(sub, q);
          need(sub, q, l, `the text of piece ${pieces.length}`);
          piece = dec.decode(sub.subarray(q.i, q.i + l));
          q.i += l;
        } else if (f === 2 && w === 5) {
          need(sub, q, 4, `the score of piece ${pieces.length}`);
          score = new DataView(sub.buffer, sub.byteOffset + q.i, 4).getFloat32(0, true);
          q.i += 4;
        } else skip(sub, q, w);
      }
      pieces.push(piece);
      scores.push(score);
    } else if (field === 2 && wire === 2) {
      // trainer_spec: its vocab_size (field 4) says how many pieces a whole file holds
      const len = varint(buf, p);
      need(buf, p, len, 'trainer_spec');
      const sub = buf.subarray(p.i, p.i + len);
      p.i += len;
      const q = { i: 0 };
      while (q.i < sub.length) {
        const k = varint(sub, q);
        if (k === 4 << 3) trainerVocab = varint(sub, q);
        else skip(sub, q, k & 7);
      }
    } else skip(buf, p, wire);
  }
  if (trainerVocab === null)
    fail(
      file,
      `no trainer_spec after ${pieces.length} pieces: the file is truncated or not a SentencePiece model`,
    );
  if (trainerVocab !== pieces.length)
    fail(
      file,
      `holds ${pieces.length} pieces but its trainer_spec.vocab_size is ${trainerVocab} (truncated?)`,
    );
  if (pieces.length === 0) fail(file, 'holds no SentencePiece pieces');
  return { pieces, scores };
}

/**
 * An HF tokenizer.json for a SentencePiece BPE vocabulary with byte fallback (Llama style):
 * merges are every pair of pieces whose concatenation is a piece, ranked by that piece's score.
 */
export function sentencePieceTokenizerJson(v: SentencePieceVocab): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  v.pieces.forEach((p, i) => (vocab[p] = i));
  const special = new Set(['<unk>', '<s>', '</s>']);
  const isNormal = (p: string) => !special.has(p) && !/^<0x[0-9A-F]{2}>$/.test(p);
  const merges: [string, string, number, number, number][] = [];
  v.pieces.forEach((piece, id) => {
    if (!isNormal(piece)) return;
    const chars = [...piece];
    for (let k = 1; k < chars.length; k++) {
      const a = chars.slice(0, k).join('');
      const b = chars.slice(k).join('');
      if (a in vocab && b in vocab && isNormal(a) && isNormal(b))
        merges.push([a, b, v.scores[id], vocab[a], vocab[b]]);
    }
  });
  merges.sort((x, y) => y[2] - x[2] || x[3] - y[3] || x[4] - y[4]);
  const added = [...special]
    .filter((s) => s in vocab)
    .map((s) => ({
      id: vocab[s],
      content: s,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    }));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '\u2581' },
        { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [vocab['<s>']], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: merges.map(([a, b]) => [a, b]),
    },
  };
}

/** Convert a llama2.c checkpoint + tokenizer into an HF-style Llama directory. */
export function convertLlama2c(checkpoint: string, tokenizerFile: string, outDir: string): Llama2cHeader {
  const { header, tensors } = readLlama2cCheckpoint(checkpoint);
  const vocab = tokenizerFile.endsWith('.model')
    ? readSentencePieceModel(tokenizerFile)
    : readLlama2cTokenizerBin(tokenizerFile, header.vocabSize);
  if (vocab.pieces.length !== header.vocabSize) {
    fail(
      tokenizerFile,
      `has ${vocab.pieces.length} tokens, the checkpoint's vocab_size is ${header.vocabSize}`,
    );
  }
  fs.mkdirSync(outDir, { recursive: true });
  const hs = header.dim / header.nHeads;
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: header.vocabSize,
    hidden_size: header.dim,
    intermediate_size: header.hiddenDim,
    num_hidden_layers: header.nLayers,
    num_attention_heads: header.nHeads,
    num_key_value_heads: header.nKvHeads,
    head_dim: hs,
    hidden_act: 'silu',
    rms_norm_eps: 1e-5,
    rope_parameters: { rope_theta: 10000.0, rope_type: 'default' },
    max_position_embeddings: header.seqLen,
    tie_word_embeddings: header.sharedClassifier,
    attention_bias: false,
    mlp_bias: false,
    bos_token_id: 1,
    eos_token_id: 2,
    dtype: 'float32',
  };
  writeFileAtomic(path.join(outDir, 'config.json'), JSON.stringify(config, null, 2) + '\n');
  const entries = new Map<string, WriteEntry>();
  const shapeOf = (name: string, n: number): number[] => {
    if (name.endsWith('norm.weight')) return [n];
    if (name === 'model.embed_tokens.weight' || name === 'lm_head.weight')
      return [header.vocabSize, header.dim];
    if (name.includes('k_proj') || name.includes('v_proj')) return [header.nKvHeads * hs, header.dim];
    if (name.includes('gate_proj') || name.includes('up_proj')) return [header.hiddenDim, header.dim];
    if (name.includes('down_proj')) return [header.dim, header.hiddenDim];
    return [header.dim, header.dim];
  };
  for (const [name, data] of tensors) {
    entries.set(name, {
      dtype: 'F32',
      shape: shapeOf(name, data.length),
      bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    });
  }
  writeSafetensors(path.join(outDir, 'model.safetensors'), entries, {
    format: 'pt',
    converted_from: path.basename(checkpoint),
  });
  writeFileAtomic(path.join(outDir, 'tokenizer.json'), JSON.stringify(sentencePieceTokenizerJson(vocab)));
  const tokenizerConfig = {
    bos_token: '<s>',
    eos_token: '</s>',
    unk_token: '<unk>',
    add_bos_token: true,
    add_eos_token: false,
    model_max_length: header.seqLen,
  };
  writeFileAtomic(
    path.join(outDir, 'tokenizer_config.json'),
    JSON.stringify(tokenizerConfig, null, 2) + '\n',
  );
  writeFileAtomic(
    path.join(outDir, 'generation_config.json'),
    JSON.stringify({ bos_token_id: 1, eos_token_id: 2 }, null, 2) + '\n',
  );
  return header;
}
