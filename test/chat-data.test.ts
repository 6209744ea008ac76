// Chat and instruction data: conversations rendered through a Jinja chat template, the target
// mask (only assistant tokens count) from prepare through batches into the stage-3 losses, and
// Parquet inputs (written here with hyparquet-writer) read into the same tokens as JSONL.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { parquetWriteBuffer } from 'hyparquet-writer';
import {
  evalBatches,
  expandParquetInputs,
  prepareTokens,
  RandomWindows,
  TokenDataset,
  type TokenEncoder,
} from '../src/data/index.js';
import { validateConfig } from '../src/distill/config.js';
import { distillationLoss } from '../src/distill/losses.js';
import { runDistill } from '../src/distill/pipeline.js';
import { generateIds } from '../src/generate/generate.js';
import { samplePromptCompletions } from '../src/generate/sample-data.js';
import { ChatTemplate, loadChatTemplate } from '../src/io/chat-template.js';
import { byteTokenizer } from '../src/io/tokenizer.js';
import { saveModel } from '../src/models/load.js';
import { LlamaForCausalLM } from '../src/models/llama.js';
import { tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { assertClose, randn, tinyLlama } from './helpers.js';

/** Tokens = UTF-8 bytes, EOS = 256: the stream and its mask can be read back as text. */
const bytes: TokenEncoder = {
  encode: (text) => Array.from(Buffer.from(text, 'utf8')),
  eosTokenId: 256,
  vocabSize: 257,
};

// a ChatML-like template with an end marker after every message
const CHAT =
  '{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}' +
  '{% if add_generation_prompt %}<|assistant|>\n{% endif %}';
const template = new ChatTemplate(CHAT, { bos_token: '<s>' });

const conv1 = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Name a whale.' },
  { role: 'assistant', content: 'Moby Dick.' },
  { role: 'user', content: 'Another?' },
  { role: 'assistant', content: 'Shamu.' },
];
const conv2 = [
  { role: 'user', content: 'Hi' },
  { role: 'assistant', content: 'Ahoy, ünïcode ✓' },
];

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-chat-'));
}

function readSplit(dir: string, split = 'train'): { ids: number[]; mask: number[] } {
  const s = TokenDataset.open(dir).split(split);
  const ids = new Int32Array(s.length);
  const mask = new Uint8Array(s.length);
  s.read(0, s.length, ids);
  s.readMask(0, s.length, mask);
  return { ids: Array.from(ids), mask: Array.from(mask) };
}

/** The counted tokens as text, one string per run of 1s. */
function countedRuns(ids: number[], mask: number[]): string[] {
  const runs: string[] = [];
  let cur: number[] = [];
  ids.forEach((id, i) => {
    if (mask[i]) cur.push(id);
    else if (cur.length) {
      runs.push(Buffer.from(cur.filter((x) => x < 256)).toString('utf8'));
      cur = [];
    }
  });
  if (cur.length) runs.push(Buffer.from(cur.filter((x) => x < 256)).toString('utf8'));
  return runs;
}

describe('chat templates', () => {
  it('renders like apply_chat_template and cuts the assistant parts out exactly', () => {
    assert.equal(
      template.render(conv2, { addGenerationPrompt: true }),
      '<s><|user|>\nHi<|end|>\n<|assistant|>\nAhoy, ünïcode ✓<|end|>\n<|assistant|>\n',
    );
    const segs = template.segments(conv1);
    assert.equal(segs.map((s) => s.text).join(''), template.render(conv1));
    assert.deepEqual(
      segs.filter((s) => s.assistant).map((s) => s.text),
      ['Moby Dick.<|end|>\n', 'Shamu.<|end|>\n'],
    );
  });

  it('reads chat_template from tokenizer_config.json (string or named list) or chat_template.jinja', () => {
    const dir = tmpDir();
    fs.writeFileSync(
      path.join(dir, 'tokenizer_config.json'),
      JSON.stringify({ bos_token: { content: '<s>' }, chat_template: [{ name: 'default', template: CHAT }] }),
    );
    assert.equal(loadChatTemplate(dir)!.render(conv2), template.render(conv2));
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>' }));
    assert.equal(loadChatTemplate(dir), null);
    fs.writeFileSync(path.join(dir, 'chat_template.jinja'), CHAT);
    assert.equal(loadChatTemplate(dir)!.render(conv1), template.render(conv1));
    assert.throws(() => new ChatTemplate('{% for %}').render([]), /chat template/);
  });
});

describe('prepare with messages and maskPrompt', () => {
  const dir = tmpDir();
  const jsonl = path.join(dir, 'chat.jsonl');
  fs.writeFileSync(
    jsonl,
    [
      JSON.stringify({ messages: conv1 }),
      JSON.stringify({ text: 'plain text.' }),
      JSON.stringify({ messages: conv2 }),
    ].join('\n') + '\n',
  );

  it('writes the rendered conversations, and a mask that counts exactly the assistant tokens', () => {
    const out = path.join(dir, 'tok');
    const r = prepareTokens(bytes, {
      inputs: [jsonl],
      out,
      valFraction: 0,
      chat: template,
      maskPrompt: true,
    });
    assert.equal(r.index.splits.train.mask, 'train.mask');
    const { ids, mask } = readSplit(out);
    const text = (xs: number[]) => xs.map((x) => (x === 256 ? '|EOS|' : String.fromCharCode(x))).join('');
    const want = [template.render(conv1), 'plain text.', template.render(conv2)];
    assert.equal(Buffer.from(text(ids), 'latin1').toString('utf8'), want.map((w) => `${w}|EOS|`).join(''));
    // assistant replies with their end markers; the plain-text document whole, with its EOS
    const runs = countedRuns(ids, mask);
    assert.deepEqual(runs, [
      'Moby Dick.<|end|>\n',
      'Shamu.<|end|>\n',
      'plain text.',
      'Ahoy, ünïcode ✓<|end|>\n',
    ]);
    const eosAt = ids.flatMap((id, i) => (id === 256 ? [i] : []));
    assert.deepEqual(
      eosAt.map((i) => mask[i]),
      [0, 1, 0],
      'EOS counts after plain text only',
    );
  });

  it('batches carry the mask of their targets', () => {
    const out = path.join(dir, 'tok');
    const { mask } = readSplit(out);
    const split = TokenDataset.open(out).split('train');
    const T = 16;
    let w = 0;
    for (const b of evalBatches(split, 3, T)) {
      for (let r = 0; r < b.batch; r++, w++)
        assert.deepEqual(
          Array.from(b.targetMask!.subarray(r * T, (r + 1) * T)),
          mask.slice(w * T + 1, w * T + T + 1),
        );
    }
    const rb = new RandomWindows(split, 4, T, 3).next();
    assert.equal(rb.targetMask!.length, 4 * T);
  });

  it('without maskPrompt no mask; messages without a template fail naming the line', () => {
    const out = path.join(dir, 'nomask');
    prepareTokens(bytes, { inputs: [jsonl], out, valFraction: 0, chat: template });
    const s = TokenDataset.open(out).split('train');
    assert.equal(s.hasMask, false);
    assert.equal(new RandomWindows(s, 2, 8).next().targetMask, undefined);
    assert.throws(
      () => prepareTokens(bytes, { inputs: [jsonl], out, valFraction: 0 }),
      /chat\.jsonl:1: .*chat template/,
    );
  });
});

describe('masked distillation loss', () => {
  it('equals KL and cross-entropy over the counted positions only; masked positions get no gradient', () => {
    const rng = new Random(4);
    const [B, T, V] = [2, 5, 7];
    const s = randn(rng, [B, T, V]);
    s.requiresGrad = true;
    const t = randn(rng, [B, T, V]);
    const targets = Array.from({ length: B * T }, () => rng.int(0, V - 1));
    const m = [0, 0, 1, 1, 1, 0, 1, 0, 0, 1];
    const r = distillationLoss(s, t, tensor(targets, [B, T], 'i32'), {
      ceWeight: 0.5,
      mask: tensor(m, [B, T], 'f32'),
    });
    // reference: per-row KL(p || q) and NLL in plain float64, averaged over counted rows
    const sv = s.toArray();
    const tv = t.toArray();
    const logSoftmax = (x: ArrayLike<number>, o: number) => {
      const row = Array.from({ length: V }, (_, v) => x[o + v]);
      const mx = Math.max(...row);
      const lse = mx + Math.log(row.reduce((a, v) => a + Math.exp(v - mx), 0));
      return row.map((v) => v - lse);
    };
    let kl = 0;
    let ce = 0;
    let n = 0;
    for (let i = 0; i < B * T; i++) {
      if (!m[i]) continue;
      const lp = logSoftmax(tv, i * V);
      const lq = logSoftmax(sv, i * V);
      kl += lp.reduce((a, v, k) => a + Math.exp(v) * (v - lq[k]), 0);
      ce -= lq[targets[i]];
      n++;
    }
    assertClose([r.kl.item()], [kl / n], 1e-9, 'masked KL');
    assertClose([r.ce!.item()], [ce / n], 1e-9, 'masked CE');
    assertClose([r.loss.item()], [kl / n + (0.5 * ce) / n], 1e-9, 'total');
    r.loss.backward();
    const g = s.grad!.toArray();
    for (let i = 0; i < B * T; i++) {
      const rowNorm = Math.hypot(...Array.from({ length: V }, (_, v) => g[i * V + v]));
      if (m[i]) assert.ok(rowNorm > 1e-6, `counted position ${i} has a gradient`);
      else assert.equal(rowNorm, 0, `masked position ${i} has no gradient`);
    }
  });
});

describe('Parquet inputs', () => {
  it('a text column and a messages column (list of structs or JSON strings) give the tokens of the same JSONL', async () => {
    const dir = tmpDir();
    const src = path.join(dir, 'src');
    fs.mkdirSync(src);
    fs.writeFileSync(
      path.join(src, 'a.parquet'),
      new Uint8Array(
        parquetWriteBuffer({
          columnData: [
            { name: 'messages', data: [conv1, conv2] },
            { name: 'id', data: [1, 2] },
          ],
        }),
      ),
    );
    fs.writeFileSync(
      path.join(src, 'b.parquet'),
      new Uint8Array(
        parquetWriteBuffer({ columnData: [{ name: 'body', data: ['first doc', 'second doc'] }] }),
      ),
    );
    fs.writeFileSync(
      path.join(src, 'c.parquet'),
      new Uint8Array(
        parquetWriteBuffer({ columnData: [{ name: 'messages', data: [JSON.stringify(conv2)] }] }),
      ),
    );
    const inputs = await expandParquetInputs([src], path.join(dir, 'cache'), { text: 'body' });
    assert.equal(inputs.length, 3);
    const out = path.join(dir, 'tok');
    prepareTokens(bytes, {
      inputs,
      out,
      valFraction: 0,
      chat: template,
      maskPrompt: true,
      jsonlField: 'text',
    });
    const jsonl = path.join(dir, 'same.jsonl');
    fs.writeFileSync(
      jsonl,
      [
        { messages: conv1 },
        { messages: conv2 },
        { text: 'first doc' },
        { text: 'second doc' },
        { messages: conv2 },
      ]
        .map((x) => JSON.stringify(x))
        .join('\n'),
    );
    const ref = path.join(dir, 'ref');
    prepareTokens(bytes, { inputs: [jsonl], out: ref, valFraction: 0, chat: template, maskPrompt: true });
    assert.deepEqual(readSplit(out), readSplit(ref));
    await assert.rejects(
      expandParquetInputs([path.join(src, 'b.parquet')], path.join(dir, 'cache2')),
      /no "text" or "messages" column \(columns: body\)/,
    );
  });
});

function tinyTeacher(): LlamaForCausalLM {
  return tinyLlama({ maxPositionEmbeddings: 512 }, true);
}

describe('sample-data from prompts', () => {
  const teacher = tinyTeacher();
  const tok = byteTokenizer();

  it('each prompt is continued as generate() continues it (seed + i), batched', () => {
    const prompts = ['The whale', 'a', 'Call me Ishmael', 'x', 'sea'].map((t) => tok.encode(t));
    for (const temperature of [0, 0.9]) {
      const got = samplePromptCompletions(teacher, prompts, {
        maxNewTokens: 9,
        batch: 2,
        seed: 5,
        temperature,
      });
      const want = prompts.map((p, i) =>
        generateIds(teacher, p, { maxNewTokens: 9, seed: 5 + i, temperature }),
      );
      assert.deepEqual(got, want, `temperature ${temperature}`);
    }
    const some = samplePromptCompletions(teacher, prompts, {
      maxNewTokens: 9,
      batch: 1,
      tokens: 10,
      temperature: 0,
    });
    assert.ok(some.length < prompts.length, 'the token budget stops taking prompts');
  });

  it('mohawk sample-data --prompts FILE.parquet answers the conversations through the chat template', () => {
    const dir = tmpDir();
    const model = path.join(dir, 'teacher');
    saveModel(model, teacher, tok);
    const cfgFile = path.join(model, 'tokenizer_config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, chat_template: CHAT }));
    const convs = [conv2, conv1.slice(0, 2)];
    fs.writeFileSync(
      path.join(dir, 'prompts.parquet'),
      new Uint8Array(parquetWriteBuffer({ columnData: [{ name: 'messages', data: convs }] })),
    );
    const out = path.join(dir, 'answers.jsonl');
    const root = path.resolve(import.meta.dirname, '..');
    const run = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        path.join(root, 'src/cli/main.ts'),
        'sample-data',
        '--model',
        model,
        '--prompts',
        path.join(dir, 'prompts.parquet'),
        '--out',
        out,
        '--max-new-tokens',
        '12',
        '--temperature',
        '0',
      ],
      { encoding: 'utf8', cwd: root },
    );
    assert.equal(run.status, 0, run.stderr);
    const lines = fs
      .readFileSync(out, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { messages: { role: string; content: string }[] });
    assert.equal(lines.length, 2);
    const tpl = new ChatTemplate(CHAT, { bos_token: '<|endoftext|>' });
    lines.forEach((l, i) => {
      // the trailing assistant turn of a prompt is dropped and answered anew
      const prompt = convs[i].at(-1)!.role === 'assistant' ? convs[i].slice(0, -1) : convs[i];
      assert.deepEqual(l.messages.slice(0, -1), prompt);
      const ids = tok.encode(tpl.render(prompt, { addGenerationPrompt: true }), { addBos: false });
      const want = tok.decode(generateIds(teacher, ids, { maxNewTokens: 12, temperature: 0 }));
      assert.deepEqual(l.messages.at(-1), { role: 'assistant', content: want });
    });
  });
});

describe('distill on chat data', () => {
  it('data.maskPrompt: the run tokenizes conversations with a mask, trains stage 3 on it, and keeps its report', () => {
    const dir = tmpDir();
    const teacherDir = path.join(dir, 'teacher');
    const tok = byteTokenizer();
    saveModel(teacherDir, tinyTeacher(), tok);
    const cfgFile = path.join(teacherDir, 'tokenizer_config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, chat_template: CHAT }));
    const lines = (n: number) =>
      Array.from({ length: n }, (_, i) => JSON.stringify({ messages: i % 2 ? conv1 : conv2 })).join('\n') +
      '\n';
    fs.writeFileSync(path.join(dir, 'train.jsonl'), lines(12));
    fs.writeFileSync(path.join(dir, 'val.jsonl'), lines(2));
    const out = path.join(dir, 'run');
    const config = {
      teacher: teacherDir,
      out,
      student: { chunkSize: 16 },
      data: {
        train: [path.join(dir, 'train.jsonl')],
        val: [path.join(dir, 'val.jsonl')],
        valTokens: 128,
        maskPrompt: true,
      },
      stages: [{ stage: 3, tokens: 512, batchTokens: 128, microBatch: 4, seqLen: 32 }],
    };
    const r = runDistill(validateConfig(config, 'test'), { progress: false, log: () => {} });
    assert.equal(r.stages[0].steps, 4);
    const ds = TokenDataset.open(path.join(out, 'data'));
    assert.equal(ds.split('train').hasMask, true);
    const csv = fs.readFileSync(path.join(out, 'metrics.csv'), 'utf8').trim().split('\n');
    assert.equal(csv.length, 1 + 4);
    assert.ok(fs.existsSync(path.join(out, 'stage1-kd', 'metrics.csv')));
    assert.match(fs.readFileSync(path.join(out, 'report.html'), 'utf8'), /validation perplexity/);
    // a prepared directory without a mask is refused under maskPrompt
    const plain = path.join(dir, 'plain');
    prepareTokens(bytes, {
      inputs: [path.join(dir, 'train.jsonl')],
      out: plain,
      valFraction: 0.2,
      chat: template,
    });
    assert.throws(
      () =>
        runDistill(
          validateConfig(
            { ...config, out: path.join(dir, 'run2'), data: { train: [plain], maskPrompt: true } },
            'test',
          ),
          {
            progress: false,
            log: () => {},
          },
        ),
      /maskPrompt is set but the prepared data has no mask/,
    );
  });
});
