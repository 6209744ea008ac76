// Loading a Phi-1.5-shaped checkpoint (1.4B parameters, random weights, written by mohawk's
// saveModel: f32 sharded at 5GB, and bf16) on the CPU backend: wall time and peak host memory
// (VmHWM) of a fresh process per case, with the bytes the model itself holds.
// Run: node --import tsx bench/load.ts [--dir DIR] [--layers N] [--keep]
//      (needs about 8.5 GB of disk in DIR and 6 GB of memory; BENCH_OUT=dir also writes load.json)

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildModel, loadModel, saveModel } from '../src/models/load.js';
import { getBackend, noGrad } from '../src/tensor/index.js';

const { values, positionals } = parseArgs({
  options: {
    dir: { type: 'string', default: path.join(os.tmpdir(), 'mohawk-bench-load') },
    layers: { type: 'string', default: '24' },
    keep: { type: 'boolean', default: false },
    'linear-bf16': { type: 'boolean', default: false },
  },
  allowPositionals: true,
});

/** Phi-1.5's shape (microsoft/phi-1_5 config.json) */
function phi15(layers: number): Record<string, unknown> {
  return {
    architectures: ['PhiForCausalLM'],
    model_type: 'phi',
    hidden_size: 2048,
    intermediate_size: 8192,
    num_hidden_layers: layers,
    num_attention_heads: 32,
    num_key_value_heads: 32,
    partial_rotary_factor: 0.5,
    rope_theta: 10000,
    hidden_act: 'gelu_new',
    layer_norm_eps: 1e-5,
    max_position_embeddings: 2048,
    vocab_size: 51200,
    tie_word_embeddings: false,
    bos_token_id: 50256,
    eos_token_id: 50256,
  };
}

function vmHwmBytes(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : process.memoryUsage().rss;
}

/** write f32 and bf16 copies of one random model */
function write(dir: string, layers: number): { params: number } {
  const model = buildModel(phi15(layers), 'config.json', { deferInit: true });
  let s = 0x9e3779b9;
  noGrad(() => {
    for (const p of model.parameters()) {
      const chunk = new Float32Array(Math.min(p.size, 1 << 22));
      for (let at = 0; at < p.size; at += chunk.length) {
        const n = Math.min(chunk.length, p.size - at);
        for (let i = 0; i < n; i++) {
          // xorshift32 -> uniform(-0.05, 0.05): nonzero bytes, so no file region is a hole
          s ^= s << 13;
          s ^= s >>> 17;
          s ^= s << 5;
          chunk[i] = ((s >>> 0) / 4294967296 - 0.5) * 0.1;
        }
        p.backend.write(p.buffer, n === chunk.length ? chunk : chunk.subarray(0, n), at);
      }
    }
  });
  const params = model.numParameters();
  saveModel(path.join(dir, 'f32'), model, null);
  saveModel(path.join(dir, 'bf16'), model, null, {}, { dtype: 'bf16' });
  model.dispose();
  return { params };
}

if (positionals[0] === 'write') {
  const t0 = performance.now();
  const { params } = write(positionals[1], Number(values.layers));
  console.log(JSON.stringify({ params, seconds: (performance.now() - t0) / 1000 }));
} else if (positionals[0] === 'load') {
  // one case in a fresh process: the peak is this load's alone
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const { model } = loadModel(positionals[1], {
    tokenizer: false,
    linearDtype: values['linear-bf16'] ? 'bf16' : undefined,
  });
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  const modelBytes = getBackend().memoryStats().liveBytes;
  console.log(
    JSON.stringify({
      seconds,
      cpuSeconds,
      peakBytes: vmHwmBytes(),
      modelBytes,
      params: model.numParameters(),
    }),
  );
} else {
  const dir = values.dir!;
  fs.mkdirSync(dir, { recursive: true });
  const child = (args: string[]) => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', import.meta.filename, ...args], {
      encoding: 'utf8',
      maxBuffer: 1 << 20,
    });
    if (r.status !== 0) throw new Error(`${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout.trim().split('\n').pop()!);
  };
  // each step in its own process, so that the peak of one is not the leftover of another
  const { params, seconds: writeSeconds } = child(['write', dir, '--layers', values.layers!]);
  const du = (d: string) => fs.readdirSync(d).reduce((a, f) => a + fs.statSync(path.join(d, f)).size, 0);
  const cases: [string, string, string[]][] = [
    ['f32 file -> f32 model', 'f32', []],
    ['bf16 file -> f32 model', 'bf16', []],
    ['bf16 file -> bf16 linear weights (frozen teacher)', 'bf16', ['--linear-bf16']],
  ];
  const rows = [];
  for (const [label, sub, extra] of cases) {
    const m = child(['load', path.join(dir, sub), ...extra]);
    rows.push({
      case: label,
      fileBytes: du(path.join(dir, sub)),
      files: fs.readdirSync(path.join(dir, sub)).length,
      ...m,
    });
  }
  const gb = (b: number) => (b / 2 ** 30).toFixed(2);
  console.log(`Phi-1.5 shape, ${params} parameters; written (f32 + bf16) in ${writeSeconds.toFixed(1)} s`);
  console.log(
    'case                                                file GiB  load s  CPU s  peak RSS GiB  model GiB',
  );
  for (const r of rows)
    console.log(
      `${r.case.padEnd(50)}  ${gb(r.fileBytes).padStart(8)}  ${r.seconds.toFixed(1).padStart(6)}  ${r.cpuSeconds.toFixed(1).padStart(5)}  ${gb(r.peakBytes).padStart(12)}  ${gb(r.modelBytes).padStart(9)}`,
    );
  const json = { params, writeSeconds, rows };
  console.log(JSON.stringify(json));
  if (process.env.BENCH_OUT)
    fs.writeFileSync(path.join(process.env.BENCH_OUT, 'load.json'), JSON.stringify(json, null, 2));
  if (!values.keep) fs.rmSync(dir, { recursive: true, force: true });
}
