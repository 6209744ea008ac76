// The training loop shared by every MOHAWK stage and the from-scratch baseline.
//
// One optimizer step = `accum` micro-batches (batchTokens / tokens per micro-batch). Each
// micro-batch's loss runs in its own memory scope and is back-propagated with weight 1/accum, so
// the gradient is that of the mean loss over the step's batch. Then: the global gradient norm
// (one host read), a skip when the loss or gradient is not finite, clipping, the scheduled lr,
// the fused AdamW update. Checkpoints carry everything a resumed run needs to continue exactly:
// weights, optimizer moments, step and token counts, the data position and the caller's RNG.

import fs from 'node:fs';
import path from 'node:path';
import type { Collective } from '../backends/collective.js';
import { add, noGrad, scale, scope, square, sum, tensor, Tensor } from '../tensor/index.js';
import type { BatchSource, TokenBatch } from '../data/batches.js';
import type { Random, RandomState } from '../util/random.js';
import { AdamW, type AdamWConfig } from './optimizer.js';
import { applyFreezing, firstNonFinite, namedParams, type NamedParams, type ParamsLike } from './params.js';
import { checkSchedule, lrFactor, type ScheduleConfig } from './schedule.js';
import {
  loadCheckpoint,
  OPTIMIZER_FILE,
  readLatest,
  readState,
  stepDirName,
  writeCheckpoint,
} from './checkpoint.js';
import {
  broadcastParams,
  GradReducer,
  rankMicroBatches,
  reduceStepStats,
  type DataParallel,
} from './distributed.js';
import { fullOptimizerState, optimizerShardName, ShardedAdamW } from './zero.js';
import { MetricsLog, Progress, fmtCount, type ProgressOptions, type StepMetrics } from './metrics.js';
import { DeviceStep, type CudaGraphMode } from './step.js';
import { isCompleteCheckpoint } from './checkpoint.js';

export interface LossContext {
  /** 0-based index of the optimizer step */
  step: number;
  /** 0-based micro-batch within the step, of `accum` */
  micro: number;
  accum: number;
}

/**
 * A loss whose gradients the loss function has already accumulated into the parameters' .grad,
 * weighted by 1 / accum (a loss that back-propagates piece by piece, e.g. one layer at a time,
 * so that the pieces' activations are never held together); `value` is the scalar loss.
 */
export interface BackpropagatedLoss {
  /**
   * the loss value: a number, or a one-element tensor left on the device (nothing is read to the
   * host, so the step can be captured as a graph)
   */
  value: number | Tensor;
}

export interface TrainOptions<B extends TokenBatch> {
  /** every parameter of the model (all are saved in checkpoints); which ones train is decided below */
  params: ParamsLike;
  /** a scalar loss (mean over the micro-batch's tokens), computed inside a scope per micro-batch */
  lossFn: (batch: B, ctx: LossContext) => Tensor | BackpropagatedLoss;
  data: BatchSource<B>;
  /** tokens to train on; steps = floor(budgetTokens / batchTokens) */
  budgetTokens: number;
  /** tokens per optimizer step, a multiple of the micro-batch's batch * seqLen (default: one micro-batch) */
  batchTokens?: number;
  optimizer: AdamWConfig;
  schedule: ScheduleConfig;
  /** clip the global gradient norm to this (default 1; 0 turns clipping off) */
  maxGradNorm?: number;
  /** parameter-name patterns (globs or /regex/, see params.ts) that do not train */
  freeze?: string[];
  /** when given, only parameters matching one of these train */
  trainable?: string[];
  /** skipped steps (non-finite loss or gradient) tolerated; the next one stops the run (default 10) */
  maxNonFinite?: number;
  /** where checkpoints go; none are written without it */
  checkpointDir?: string;
  /** steps between checkpoints (default: only at the end) */
  checkpointEvery?: number;
  /** step directories kept (default 2) */
  keepCheckpoints?: number;
  /** continue from checkpointDir's latest checkpoint when there is one (default true) */
  resume?: boolean;
  /** add files (config.json ...) to each checkpoint directory before it is committed */
  beforeCommit?: (tmpDir: string, step: number) => void;
  /** JSONL metrics, one line per step */
  metricsFile?: string;
  /** the caller's generator (dropout seeds ...), saved in checkpoints and restored on resume */
  rng?: Random;
  /** run evalFn every evalEvery steps and at the end; its figures join that step's metrics */
  evalEvery?: number;
  evalFn?: (step: number) => Record<string, number>;
  onStep?: (m: StepMetrics) => void;
  /** checked after every step: true writes a checkpoint and returns (stopped: true) */
  shouldStop?: () => boolean;
  /** a loss above max(riseFactor x its first value, first + 1) is warned about once (default 3) */
  riseFactor?: number;
  /** where warnings go (default: the progress stream, else stderr) */
  warn?: (line: string) => void;
  /** the status line on stderr (default on) */
  progress?: boolean | ProgressOptions;
  /** names this run in messages and checkpoints (e.g. "stage1") */
  label?: string;
  /**
   * data parallel over the collective's ranks (distributed.ts): each rank computes its block of
   * every step's micro-batches; metrics, progress and the model checkpoint come from rank 0
   */
  dataParallel?: DataParallel;
  /**
   * capture the step as graphs and replay them (step.ts): 'auto' (default) on the CUDA backend
   * when the loss is graph-safe, 'on' also on the CPU (its recorder), 'off' never. The first step
   * of a session runs eagerly, the second captures; a loss that cannot be captured falls back to
   * eager with one progress note. Data-parallel runs stay eager.
   */
  cudaGraph?: CudaGraphMode;
}

export interface TrainResult {
  /** steps completed, including those of earlier sessions */
  steps: number;
  totalSteps: number;
  tokens: number;
  skipped: number;
  /** the last finite step loss */
  loss: number;
  elapsedSec: number;
  /** the last checkpoint written or resumed from */
  checkpoint: string | null;
  /** the step this session resumed from */
  resumedFrom: number | null;
  /** stopped early by shouldStop */
  stopped: boolean;
  /** this session's metrics */
  history: StepMetrics[];
  /** kernels (nodes) of the captured step's two graphs when steps replayed them, else null */
  graphs: { gradients: number; update: number } | null;
}

/** What state.json holds besides the tensors. */
export interface TrainState {
  version: 1;
  label?: string;
  step: number;
  total_steps: number;
  tokens: number;
  batch_tokens: number;
  micro_tokens: number;
  skipped: number;
  elapsed_s: number;
  last_loss: number | null;
  /** the first finite step loss of the run (for the rising-loss warning) */
  first_loss?: number | null;
  schedule: ScheduleConfig;
  lr: number;
  data: unknown;
  rng: RandomState | null;
}

export class NonFiniteError extends Error {}

/** The weights left the finite numbers: the run stops before anything is saved. */
export class DivergenceError extends NonFiniteError {}

function checkPositiveInt(v: number | undefined, what: string): void {
  if (v !== undefined && !(Number.isInteger(v) && v > 0))
    throw new Error(`train: ${what} (${v}) must be a positive integer`);
}

/** Sum of squares of every gradient, as one host read; per parameter on request. */
function gradSquares(params: NamedParams, each: boolean): { total: number; per: [string, number][] } {
  return noGrad(() =>
    scope(() => {
      let acc: Tensor | null = null;
      const per: [string, number][] = [];
      for (const [name, p] of params) {
        if (!p.grad) continue;
        const s = sum(square(p.grad));
        if (each) per.push([name, s.item()]);
        acc = acc ? add(acc, s) : s;
      }
      return { total: acc ? acc.item() : 0, per };
    }),
  );
}

/** true when any rank says so (every rank gets the same answer) */
function agree(c: Collective | null, flag: boolean): boolean {
  if (!c) return flag;
  return noGrad(() =>
    scope(() => {
      const t = tensor(Float32Array.of(flag ? 1 : 0), [1], 'f32');
      c.allReduce(t.buffer, 'sum');
      return t.item() > 0;
    }),
  );
}

function zeroGrads(params: NamedParams): void {
  for (const [, p] of params) {
    p.grad?.dispose();
    p.grad = null;
  }
}

export function train<B extends TokenBatch>(o: TrainOptions<B>): TrainResult {
  const label = o.label ?? 'train';
  const fail = (msg: string): never => {
    throw new Error(`${label}: ${msg}`);
  };
  if (!(Number.isFinite(o.budgetTokens) && o.budgetTokens > 0))
    fail(`budgetTokens (${o.budgetTokens}) must be > 0`);
  checkPositiveInt(o.batchTokens, 'batchTokens');
  checkPositiveInt(o.checkpointEvery, 'checkpointEvery');
  checkPositiveInt(o.evalEvery, 'evalEvery');
  checkSchedule(o.schedule, `${label}: schedule`);
  const maxGradNorm = o.maxGradNorm ?? 1;
  if (!(maxGradNorm >= 0)) fail(`maxGradNorm (${maxGradNorm}) must be >= 0`);
  const maxNonFinite = o.maxNonFinite ?? 10;

  const all = namedParams(o.params);
  const wasTrainable = all.map(([, t]) => t.requiresGrad);
  const trained = applyFreezing(all, { freeze: o.freeze, trainable: o.trainable });
  if (!trained.length) fail('no parameter is trainable (check freeze / trainable patterns)');
  zeroGrads(all);
  const dp = o.dataParallel && o.dataParallel.collective.worldSize > 1 ? o.dataParallel : null;
  const coll = dp?.collective ?? null;
  const isRoot = !coll || coll.rank === 0;
  const sharded = o.dataParallel?.zero
    ? new ShardedAdamW(trained, o.optimizer, o.dataParallel.collective, o.dataParallel.bucketBytes)
    : null;
  const optimizer = sharded ?? new AdamW(trained, o.optimizer);
  // unsharded data parallel: the gradients are summed while the step's last backward runs
  // (also at world size 1 when a collective is given: the same path, for tests)
  // the gradients leave in buckets as the backward finishes them: all-reduced (plain), or
  // reduce-scattered into the owners' rows (ZeRO); in the step's last micro-batch, or in every
  // one under ZeRO-2 (its full gradients never outlive a micro-batch)
  const zero2 = sharded !== null && o.dataParallel?.zero === 2;
  const reducer = o.dataParallel
    ? new GradReducer(
        o.dataParallel.collective,
        trained,
        o.dataParallel.bucketBytes,
        sharded?.gradientBuckets() ?? null,
      )
    : null;
  // which parameters got a gradient on this rank this step (ZeRO-2: over its micro-batches)
  const orInto = (acc: boolean[] | undefined, had: boolean[]): boolean[] =>
    acc ? acc.map((h, i) => h || had[i]) : had;
  let metrics: MetricsLog | null = null;
  let progress: Progress | null = null;
  let deviceStep: DeviceStep<B> | null = null;
  try {
    // ---- resume ----
    let step = 0;
    let tokens = 0;
    let skipped = 0;
    let elapsedBase = 0;
    let lastLoss = NaN;
    let firstLoss = NaN;
    let riseWarned = false;
    let resumedFrom: number | null = null;
    let checkpoint: string | null = null;
    let saved: TrainState | null = null;
    const latest = o.checkpointDir ? readLatest(o.checkpointDir, o.warn) : null;
    if (latest && o.resume === false)
      fail(
        `${o.checkpointDir} already holds a checkpoint (step ${latest.step}); resume, or remove the directory`,
      );
    if (latest) {
      saved = readState<TrainState>(latest.path);
      if (sharded) {
        loadCheckpoint(latest.path, all);
        sharded.load(latest.path);
      } else if (optimizer instanceof AdamW && !fs.existsSync(path.join(latest.path, OPTIMIZER_FILE))) {
        // written by a sharded (ZeRO-1) run: assemble the full moments
        loadCheckpoint(latest.path, all);
        const st = fullOptimizerState(latest.path, trained);
        try {
          optimizer.loadStateDict(st.tensors, st.steps, st.source);
        } finally {
          for (const t of st.tensors.values()) t.dispose();
        }
      } else loadCheckpoint(latest.path, all, optimizer as AdamW);
      o.data.restore(saved.data);
      if (o.rng && saved.rng) o.rng.setState(saved.rng);
      step = saved.step;
      tokens = saved.tokens;
      skipped = saved.skipped;
      elapsedBase = saved.elapsed_s;
      lastLoss = saved.last_loss ?? NaN;
      firstLoss = saved.first_loss ?? NaN;
      resumedFrom = step;
      checkpoint = latest.path;
    }

    // the first micro-batch sets the tokens per micro-batch
    let pending: B | null = o.data.next();
    const microTokens = pending.batch * pending.seqLen;
    const batchTokens = o.batchTokens ?? microTokens;
    if (batchTokens % microTokens !== 0)
      fail(
        `batchTokens (${batchTokens}) must be a multiple of the micro-batch's ${pending.batch} x ${pending.seqLen} tokens`,
      );
    const accum = batchTokens / microTokens;
    const [myFirst, myEnd] = coll ? rankMicroBatches(accum, coll.rank, coll.worldSize, label) : [0, accum];
    if (coll) broadcastParams(coll, all);
    const totalSteps = Math.floor(o.budgetTokens / batchTokens);
    if (totalSteps < 1)
      fail(`budgetTokens (${o.budgetTokens}) is less than one step of ${batchTokens} tokens`);
    if (saved) {
      const same = (what: string, a: unknown, b: unknown): void => {
        if (JSON.stringify(a) !== JSON.stringify(b))
          fail(
            `${checkpoint}: made with ${what} ${JSON.stringify(a)}, this run has ${JSON.stringify(b)}; use a new checkpoint directory`,
          );
      };
      same('total_steps', saved.total_steps, totalSteps);
      same('batch_tokens', saved.batch_tokens, batchTokens);
      same('micro_tokens', saved.micro_tokens, microTokens);
      same('schedule', saved.schedule, o.schedule);
    }

    if (o.metricsFile && isRoot) metrics = new MetricsLog(o.metricsFile, resumedFrom ?? null);
    if (o.progress !== false && isRoot) {
      progress = new Progress(totalSteps, totalSteps * batchTokens, {
        label,
        ...(typeof o.progress === 'object' ? o.progress : {}),
      });
      progress.note(
        `${label}: ${trained.length}/${all.length} parameter tensors train, ${totalSteps} steps of ${fmtCount(batchTokens)} tokens` +
          ` (${accum} x ${pending.batch} x ${pending.seqLen})` +
          (coll
            ? ` over ${coll.worldSize} ranks (${coll.kind}${sharded ? `, ZeRO-${zero2 ? 2 : 1}` : ''})`
            : '') +
          (resumedFrom !== null ? `, resumed at step ${resumedFrom} from ${checkpoint}` : ''),
      );
    }

    const save = (): void => {
      if (!o.checkpointDir) return;
      const state: TrainState = {
        version: 1,
        label: o.label,
        step,
        total_steps: totalSteps,
        tokens,
        batch_tokens: batchTokens,
        micro_tokens: microTokens,
        skipped,
        elapsed_s: elapsedBase + (performance.now() - t0) / 1000,
        last_loss: Number.isFinite(lastLoss) ? lastLoss : null,
        first_loss: Number.isFinite(firstLoss) ? firstLoss : null,
        schedule: o.schedule,
        lr: o.optimizer.lr,
        data: o.data.state(),
        rng: o.rng ? o.rng.getState() : null,
      };
      // a sharded optimizer writes shards, also at world size 1
      const group = coll ?? (sharded ? o.dataParallel!.collective : null);
      if (!group) {
        checkpoint = writeCheckpoint(o.checkpointDir, {
          params: all,
          optimizer: optimizer as AdamW,
          step,
          state,
          keep: o.keepCheckpoints,
          beforeCommit: o.beforeCommit ? (dir) => o.beforeCommit!(dir, step) : undefined,
        });
      } else {
        // data parallel: optimizer shards from their owners (into a side directory), rank 0
        // moves them into its temporary checkpoint and commits it; the barriers keep every rank
        // in step with the commit
        const side = path.join(o.checkpointDir, `${stepDirName(step)}.shards`);
        const shardName = optimizerShardName(group.rank, group.worldSize);
        if (sharded && !isRoot) {
          fs.mkdirSync(side, { recursive: true });
          sharded.saveShard(path.join(side, shardName));
        }
        group.barrier();
        if (isRoot)
          writeCheckpoint(o.checkpointDir, {
            params: all,
            optimizer: sharded ? undefined : (optimizer as AdamW),
            step,
            state,
            keep: o.keepCheckpoints,
            beforeCommit: (dir) => {
              if (sharded) {
                sharded.saveShard(path.join(dir, shardName));
                for (const n of fs.existsSync(side) ? fs.readdirSync(side) : [])
                  fs.renameSync(path.join(side, n), path.join(dir, n));
                fs.rmSync(side, { recursive: true, force: true });
              }
              o.beforeCommit?.(dir, step);
            },
          });
        group.barrier();
        checkpoint = path.join(o.checkpointDir, stepDirName(step));
      }
    };
    const warn = o.warn ?? ((line: string) => (progress ? progress.note(line) : console.error(line)));
    // whether the loss now stands far above its start (a checkpoint written then may be poisoned)
    const rise = o.riseFactor ?? 3;
    const risen = (): boolean =>
      firstLoss >= 0 && Number.isFinite(lastLoss) && lastLoss > Math.max(rise * firstLoss, firstLoss + 1);
    // the last checkpoint written while the loss was sane (kept on disk), for divergence messages
    let goodCheckpoint: string | null = checkpoint;
    const lastGood = (): string => {
      if (!checkpoint) return 'No checkpoint was written in this run.';
      if (goodCheckpoint === checkpoint) return `The last good checkpoint is ${checkpoint}.`;
      const kept = goodCheckpoint && isCompleteCheckpoint(goodCheckpoint);
      return (
        `The last checkpoint, ${checkpoint}, was written with the loss far above its start and may be damaged` +
        (kept ? `; the last good checkpoint is ${goodCheckpoint}.` : '; no earlier one is kept.')
      );
    };

    // without data parallelism the step runs on the device, eagerly or as captured graphs
    if (!o.dataParallel) {
      deviceStep = new DeviceStep<B>({
        lossFn: o.lossFn,
        trained,
        optimizer: optimizer as AdamW,
        accum,
        backend: trained[0][1].backend,
        mode: o.cudaGraph ?? 'auto',
        rng: o.rng,
        note: warn,
        label,
      });
    } else if (o.cudaGraph === 'on') warn(`${label}: CUDA graphs off: data-parallel steps run eagerly`);

    const t0 = performance.now();
    const history: StepMetrics[] = [];
    let stopped = false;
    while (step < totalSteps) {
      const ts = performance.now();
      let lossSum = 0;
      let bad: string | null = null;
      // the divergence check's answer when the device step gave it
      let broken: string | null | undefined;
      let hadGrad: boolean[] | undefined;
      for (let micro = 0; micro < accum && !deviceStep; micro++) {
        const batch: B = pending ?? o.data.next();
        pending = null;
        const mine = micro >= myFirst && micro < myEnd;
        // ZeRO-2 communicates every micro-batch: also a lost one (zeros), as the other ranks do
        if (bad && mine && zero2) hadGrad = orInto(hadGrad, reducer!.finish());
        if (bad) continue; // the step is lost; keep the data position in step with an unbroken run
        if (!mine) continue; // another rank's micro-batch
        // this rank's last micro-batch (ZeRO-2: each) sends the gradients as its backward finishes them
        const overlap = reducer && (zero2 || micro === myEnd - 1) ? reducer : null;
        const body = (): number =>
          scope(() => {
            const loss = o.lossFn(batch, { step, micro, accum });
            if (!(loss instanceof Tensor))
              return typeof loss.value === 'number' ? loss.value : loss.value.item();
            if (loss.size !== 1) fail(`lossFn returned shape [${loss.shape}], expected a scalar`);
            const val = loss.item();
            if (Number.isFinite(val)) {
              if (!loss.requiresGrad) fail('the loss does not depend on any trainable parameter');
              (accum === 1 ? loss : scale(loss, 1 / accum)).backward(undefined, { freeGraph: true });
            }
            return val;
          });
        const v = overlap ? overlap.during(body) : body();
        if (zero2) hadGrad = orInto(hadGrad, reducer!.finish());
        if (Number.isFinite(v)) lossSum += v;
        else bad = `loss is ${v} (micro-batch ${micro})`;
      }
      let gradNorm = NaN;
      let hasGrad: boolean[] = [];
      if (deviceStep) {
        const batches: B[] = [];
        for (let micro = 0; micro < accum; micro++) {
          batches.push(pending ?? o.data.next());
          pending = null;
        }
        const st = deviceStep.gradients(batches, step);
        st.losses.forEach((v, micro) => {
          if (bad) return;
          if (Number.isFinite(v)) lossSum += v;
          else bad = `loss is ${v} (micro-batch ${micro})`;
        });
        if (!bad) {
          gradNorm = Math.sqrt(st.sumSquares);
          if (!Number.isFinite(gradNorm)) {
            const first = gradSquares(trained, true).per.find(([, sq]) => !Number.isFinite(sq));
            bad = `gradient norm is ${gradNorm}${first ? ` (first in ${first[0]})` : ''}`;
          }
        }
      } else if (o.dataParallel) {
        // every rank starts all buckets, also in a step it cannot use (the others wait for them)
        if (reducer && !zero2) hadGrad = reducer.finish();
        const st = reduceStepStats(o.dataParallel.collective, lossSum, bad !== null, trained, hadGrad);
        lossSum = st.lossSum;
        hasGrad = st.hasGrad;
        if (st.anyBad && !bad) bad = 'non-finite loss on another rank';
      }
      if (!bad && sharded) {
        gradNorm = Math.sqrt(sharded.finishGrads(hasGrad));
        if (!Number.isFinite(gradNorm)) bad = `gradient norm is ${gradNorm}`;
      } else if (!bad && !deviceStep) {
        if (reducer)
          // a parameter no rank has a gradient for keeps none (the optimizer skips it)
          trained.forEach(([, p], i) => {
            if (hasGrad[i]) return;
            p.grad?.dispose();
            p.grad = null;
          });
        // the one-process step's norm (fused: the optimizer's row sums, its decay flags too)
        const adamW = optimizer as AdamW;
        gradNorm = Math.sqrt(adamW.fused ? adamW.gradSquaresHost() : gradSquares(trained, false).total);
        if (!Number.isFinite(gradNorm)) {
          const first = gradSquares(trained, true).per.find(([, s]) => !Number.isFinite(s));
          bad = `gradient norm is ${gradNorm}${first ? ` (first in ${first[0]})` : ''}`;
        }
      }
      const lr = o.optimizer.lr * lrFactor(o.schedule, step, totalSteps);
      if (bad) {
        skipped++;
        if (!deviceStep) zeroGrads(trained); // the device step zeroes them in place at its start
        sharded?.dropGrads();
        progress?.note(`${label}: step ${step + 1} skipped: ${bad}`);
        if (skipped > maxNonFinite) {
          throw new NonFiniteError(
            `${label}: stopping at step ${step + 1}: ${skipped} steps had a non-finite loss or gradient ` +
              `(limit ${maxNonFinite}); last: ${bad}. Lower the learning rate or check the data` +
              (checkpoint ? `; the last checkpoint is ${checkpoint}` : ''),
          );
        }
      } else if (deviceStep) {
        const coef = maxGradNorm > 0 && gradNorm > maxGradNorm ? maxGradNorm / (gradNorm + 1e-6) : 1;
        broken = deviceStep.update(lr, coef) ? firstNonFinite(trained) : null;
      } else {
        const coef = maxGradNorm > 0 && gradNorm > maxGradNorm ? maxGradNorm / (gradNorm + 1e-6) : 1;
        if (sharded) {
          if (coef !== 1) sharded.scaleGrads(coef);
          sharded.step(lr);
        } else {
          // the one-process step's update (step.ts): the same arithmetic, the scale in the kernel
          (optimizer as AdamW).prepareDeviceStep(lr, coef);
          (optimizer as AdamW).deviceStep({ squaresReady: true });
        }
        zeroGrads(trained);
      }
      if (!bad) {
        lastLoss = lossSum / accum;
        if (!Number.isFinite(firstLoss)) firstLoss = lastLoss;
        if (!riseWarned && risen()) {
          riseWarned = true;
          warn(
            `${label}: warning: loss ${lastLoss.toPrecision(4)} at step ${step + 1} is far above its start ` +
              `(${firstLoss.toPrecision(4)}); the run may be diverging (lr ${lr.toExponential(2)})`,
          );
        }
      }
      // non-finite weights never recover: stop before anything (metrics, a checkpoint) records them
      if (broken === undefined) broken = firstNonFinite(trained);
      if (broken) {
        throw new DivergenceError(
          `${label}: diverged at step ${step + 1}: ${broken} is not finite ` +
            (bad ? `(the step was skipped: ${bad})` : `after the update (lr ${lr.toExponential(2)})`) +
            `; nothing was saved from this step. ${lastGood()}` +
            ' Lower the learning rate or tighten the gradient clip.',
        );
      }
      step++;
      tokens += batchTokens;
      const stepSec = (performance.now() - ts) / 1000;
      const m: StepMetrics = {
        step,
        loss: bad ? NaN : lossSum / accum,
        lr,
        grad_norm: gradNorm,
        tokens,
        tokens_per_s: batchTokens / Math.max(stepSec, 1e-9),
        elapsed_s: elapsedBase + (performance.now() - t0) / 1000,
      };
      if (bad) m.skipped = true;
      if (o.evalFn && ((o.evalEvery && step % o.evalEvery === 0) || step === totalSteps)) {
        Object.assign(
          m,
          noGrad(() => scope(() => o.evalFn!(step))),
        );
      }
      history.push(m);
      metrics?.write(m);
      progress?.update(m, batchTokens, stepSec, skipped);
      o.onStep?.(m);
      if (agree(coll, o.shouldStop?.() ?? false) && step < totalSteps) {
        stopped = true;
        save();
        break;
      }
      if (step === totalSteps || (o.checkpointEvery && step % o.checkpointEvery === 0)) {
        save();
        if (!risen()) goodCheckpoint = checkpoint;
      }
    }
    progress?.done();
    return {
      steps: step,
      totalSteps,
      tokens,
      skipped,
      loss: lastLoss,
      elapsedSec: elapsedBase + (performance.now() - t0) / 1000,
      checkpoint,
      resumedFrom,
      stopped,
      history,
      graphs: deviceStep?.graphs ? deviceStep.nodes : null,
    };
  } finally {
    deviceStep?.dispose();
    progress?.done();
    metrics?.close();
    optimizer.dispose();
    reducer?.dispose();
    zeroGrads(all);
    all.forEach(([, t], i) => (t.requiresGrad = wasTrainable[i]));
  }
}
