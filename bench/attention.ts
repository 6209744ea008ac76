// The tensor-core attention (kernels/attention_tc.cu, lowPrecision) at the teacher's shape and
// a few others, with a per-kernel profile, its largest difference from the f32 oracle at full
// size, and optional tuning variants (ATTN_VARIANTS="BKF=32;FWD_MINB=1;V2=0,BKF=64", see
// attention-tc.ts; V2=x in a variant sets MOHAWK_ATTN_V2=x). The forward of version 2
// (attn_tc_kv16 + attn_tc_fwd2) is the default; the first version (V2=0) always runs beside it.
// Run: node --import tsx bench/attention.ts   (BENCH_OUT=dir also writes attention.json)

import type { AttentionParams } from '../src/backends/backend.js';
import { heldBuffers, openCuda, printTable, TEACHER_ATTENTION, timeMs, type Row } from './gpu-util.js';

const gpu = openCuda();
const rows: Row[] = [];
const { rnd, buf, release } = heldBuffers(gpu);

/** forward FLOPs: two products over the visible half (causal) or all of the score matrix */
const fwdFlops = (p: AttentionParams) =>
  4 * p.batch * p.heads * p.tq * p.tk * p.headDim * (p.causal ? 0.5 : 1);

function setup(p: AttentionParams) {
  const nq = p.batch * p.tq * p.heads * p.headDim;
  const nk = p.batch * p.tk * p.kvHeads * p.headDim;
  const t = {
    q: rnd(nq),
    k: rnd(nk),
    v: rnd(nk),
    g: rnd(nq),
    o: buf(nq),
    lse: buf(p.batch * p.heads * p.tq),
    gq: buf(nq),
    gk: buf(nk),
    gv: buf(nk),
  };
  const fwd = (pp: AttentionParams) => gpu.attention(t.q, t.k, t.v, t.o, t.lse, null, pp);
  const bwd = (pp: AttentionParams) =>
    gpu.attentionBackward(t.q, t.k, t.v, t.o, t.lse, t.g, t.gq, t.gk, t.gv, pp);
  return { t, fwd, bwd };
}

function measure(label: string, p: AttentionParams, profile: boolean): void {
  const { fwd, bwd } = setup(p);
  const msF = timeMs(gpu, () => fwd(p), 10, 2);
  const msFB = timeMs(gpu, () => (fwd(p), bwd(p)), 10, 1);
  const f = fwdFlops(p);
  rows.push({ what: `${label} forward`, ms: msF, rate: `${(f / msF / 1e9).toFixed(1)} TFLOP/s` });
  rows.push({
    what: `${label} forward + backward`,
    ms: msFB,
    rate: `${((3.5 * f) / msFB / 1e9).toFixed(1)} TFLOP/s`,
  });
  if (profile) {
    const { kernels } = gpu.profile(() => (fwd(p), bwd(p)));
    for (const k of kernels) rows.push({ what: `&nbsp;&nbsp;${label}: ${k.name}`, ms: k.ms });
  }
  release();
}

const base: AttentionParams = { ...TEACHER_ATTENTION, lowPrecision: true };

// each variant: its largest differences from the f32 oracle at the teacher's shape (relative to
// max |oracle|), its times and a per-kernel profile
{
  const { t, fwd, bwd } = setup(base);
  const outs = { o: t.o, lse: t.lse, gq: t.gq, gk: t.gk, gv: t.gv };
  const f32 = { ...base, lowPrecision: false };
  fwd(f32);
  bwd(f32);
  const ref = Object.fromEntries(Object.entries(outs).map(([k, b]) => [k, gpu.read(b) as Float32Array]));
  const specs = ['', 'V2=0', ...(process.env.ATTN_VARIANTS ?? '').split(';').filter((x) => x.trim())];
  for (const spec of specs) {
    const parts = spec.split(',').filter((x) => x.trim());
    const v2 = parts.find((x) => x.trim().startsWith('V2='));
    const defines = parts.filter((x) => x !== v2).join(',');
    if (v2) process.env.MOHAWK_ATTN_V2 = v2.split('=')[1].trim();
    if (defines) process.env.MOHAWK_ATTENTION_TC_DEFINES = defines;
    fwd(base);
    bwd(base);
    const errs: string[] = [];
    for (const [k, b] of Object.entries(outs)) {
      const got = gpu.read(b) as Float32Array;
      const r = ref[k];
      let m = 0;
      let worst = 0;
      for (let i = 0; i < r.length; i++) m = Math.max(m, Math.abs(r[i]));
      for (let i = 0; i < r.length; i++) {
        const e = Math.abs(got[i] - r[i]);
        if (!(e <= worst)) worst = e;
      }
      errs.push(`${k} ${(worst / (m || 1)).toExponential(1)}`);
    }
    const label = `bf16 tc${spec ? ` [${spec}]` : ''}, B 4, T 2048, H 32, D 64, causal`;
    const msF = timeMs(gpu, () => fwd(base), 10, 2);
    const msFB = timeMs(gpu, () => (fwd(base), bwd(base)), 10, 1);
    const f = fwdFlops(base);
    rows.push({ what: `${label} forward`, ms: msF, rate: `${(f / msF / 1e9).toFixed(1)} TFLOP/s` });
    rows.push({
      what: `${label} forward + backward`,
      ms: msFB,
      rate: `${((3.5 * f) / msFB / 1e9).toFixed(1)} TFLOP/s`,
      note: `vs f32 oracle: ${errs.join(', ')}`,
    });
    const { kernels } = gpu.profile(() => (fwd(base), bwd(base)));
    for (const k of kernels) rows.push({ what: `&nbsp;&nbsp;${label}: ${k.name}`, ms: k.ms });
    delete process.env.MOHAWK_ATTENTION_TC_DEFINES;
    delete process.env.MOHAWK_ATTN_V2;
  }
  release();
}

// the Phi teacher's layer as the stage-3 step runs it: rotary embedding on 32 of 64 dimensions,
// output in bf16; inside the attention (the default) against two rope passes before it
{
  const p: AttentionParams = { ...base };
  const ro = { rotaryDim: 32, theta: 10000, interleaved: false, positionOffset: 0 };
  const nq = p.batch * p.tq * p.heads * p.headDim;
  const nk = p.batch * p.tk * p.kvHeads * p.headDim;
  const t = {
    q: rnd(nq),
    k: rnd(nk),
    v: rnd(nk),
    qr: buf(nq),
    kr: buf(nk),
    lse: buf(p.batch * p.heads * p.tq),
  };
  const o16 = gpu.alloc('bf16', nq);
  const rp = { ...ro, batch: p.batch, headDim: p.headDim, inverse: false };
  const separate = () => {
    gpu.rope(t.q, t.qr, { ...rp, seqLen: p.tq, heads: p.heads });
    gpu.rope(t.k, t.kr, { ...rp, seqLen: p.tk, heads: p.kvHeads });
    gpu.attention(t.qr, t.kr, t.v, o16, t.lse, null, p);
  };
  const inside = () => gpu.attention(t.q, t.k, t.v, o16, t.lse, null, { ...p, rope: ro });
  const f = fwdFlops(p);
  for (const [label, fn] of [
    ['rope 32/64 inside, bf16 out', inside],
    ['rope 32/64 by two rope passes, bf16 out', separate],
  ] as const) {
    const ms = timeMs(gpu, fn, 10, 2);
    rows.push({
      what: `bf16 tc, ${label}, B 4, T 2048, H 32, D 64, causal forward`,
      ms,
      rate: `${(f / ms / 1e9).toFixed(1)} TFLOP/s`,
    });
    const { kernels } = gpu.profile(fn);
    for (const k of kernels) rows.push({ what: `&nbsp;&nbsp;${label}: ${k.name}`, ms: k.ms });
  }
  gpu.free(o16);
  release();
}

// the first version of the forward beside the default at the Llama-3 teacher's shape (GQA 4:1)
process.env.MOHAWK_ATTN_V2 = '0';
measure('bf16 tc [V2=0], B 4, T 2048, H 32, kv 8, D 64, causal', { ...base, kvHeads: 8 }, false);
delete process.env.MOHAWK_ATTN_V2;

measure(
  'bf16 tc, B 4, T 2048, H 16, D 128, causal',
  { ...base, heads: 16, kvHeads: 16, headDim: 128, scale: 1 / Math.sqrt(128) },
  true,
);
measure(
  'bf16 tc, B 4, T 2048, H 32, D 80, causal',
  { ...base, headDim: 80, scale: 1 / Math.sqrt(80) },
  false,
);
measure('bf16 tc, B 4, T 2048, H 32, kv 8, D 64, causal', { ...base, kvHeads: 8 }, true);
measure('bf16 tc, B 4, T 2048, H 32, D 64, not causal', { ...base, causal: false }, false);
measure(
  'bf16 tc, decode B 1, tq 1, tk 8192, H 32, D 64 (one row sees all keys)',
  { ...base, batch: 1, tq: 1, tk: 8192, causal: false },
  false,
);

printTable('tensor-core attention', gpu, rows, 'attention');
