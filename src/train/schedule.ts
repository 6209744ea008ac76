// Learning-rate schedules as pure functions of (step, total steps): the multiplier of the peak
// lr at 0-based step s. Pure, so a resumed run needs only the step to continue the schedule.
//
// - constant: linear warmup, then 1.
// - cosine: linear warmup, then a half cosine from 1 down to minLrRatio.
// - wsd (warmup-stable-decay, as in the MOHAWK paper): linear warmup, constant, then a decay
//   (linear, cosine or 1 - sqrt) to minLrRatio over the last decayFraction of the steps.
// Warmup step s runs at (s + 1) / W; the last step runs at minLrRatio.

export type ScheduleKind = 'constant' | 'cosine' | 'wsd';

export interface ScheduleConfig {
  kind: ScheduleKind;
  /** warmup steps; or warmupFraction of the total */
  warmupSteps?: number;
  warmupFraction?: number;
  /** the multiplier the decay ends at (cosine and wsd) */
  minLrRatio?: number;
  /** wsd: fraction of the total steps spent decaying (default 0.2) */
  decayFraction?: number;
  /** wsd: the decay's shape (default linear) */
  decayShape?: 'linear' | 'cosine' | 'sqrt';
}

export function checkSchedule(c: ScheduleConfig, where = 'schedule'): void {
  const bad = (f: string, v: unknown, want: string): never => {
    throw new Error(`${where}: ${f} (${JSON.stringify(v)}) must be ${want}`);
  };
  if (!['constant', 'cosine', 'wsd'].includes(c.kind)) bad('kind', c.kind, 'one of constant, cosine, wsd');
  if (c.warmupSteps !== undefined && !(Number.isInteger(c.warmupSteps) && c.warmupSteps >= 0))
    bad('warmupSteps', c.warmupSteps, 'an integer >= 0');
  if (c.warmupFraction !== undefined && !(c.warmupFraction >= 0 && c.warmupFraction <= 1))
    bad('warmupFraction', c.warmupFraction, 'in [0, 1]');
  if (c.warmupSteps !== undefined && c.warmupFraction !== undefined)
    bad('warmupSteps', c.warmupSteps, 'left out when warmupFraction is given');
  if (c.minLrRatio !== undefined && !(c.minLrRatio >= 0 && c.minLrRatio <= 1))
    bad('minLrRatio', c.minLrRatio, 'in [0, 1]');
  if (c.decayFraction !== undefined && !(c.decayFraction >= 0 && c.decayFraction <= 1))
    bad('decayFraction', c.decayFraction, 'in [0, 1]');
  if (c.decayShape !== undefined && !['linear', 'cosine', 'sqrt'].includes(c.decayShape))
    bad('decayShape', c.decayShape, 'one of linear, cosine, sqrt');
}

export function warmupSteps(c: ScheduleConfig, total: number): number {
  const w = c.warmupSteps ?? Math.round((c.warmupFraction ?? 0) * total);
  return Math.min(w, total);
}

/** The lr multiplier at 0-based step `step` of `total`. */
export function lrFactor(c: ScheduleConfig, step: number, total: number): number {
  const w = warmupSteps(c, total);
  if (step < w) return (step + 1) / w;
  const min = c.minLrRatio ?? 0;
  switch (c.kind) {
    case 'constant':
      return 1;
    case 'cosine': {
      // progress 1/len at the first step after warmup, 1 at the last
      const len = total - w;
      const p = Math.min(1, (step - w + 1) / len);
      return min + (1 - min) * 0.5 * (1 + Math.cos(Math.PI * p));
    }
    case 'wsd': {
      const decay = Math.min(total - w, Math.round((c.decayFraction ?? 0.2) * total));
      const start = total - decay;
      if (step < start) return 1;
      const p = Math.min(1, (step - start + 1) / decay);
      const shape = c.decayShape ?? 'linear';
      const f =
        shape === 'linear'
          ? 1 - p
          : shape === 'cosine'
            ? 0.5 * (1 + Math.cos(Math.PI * p))
            : 1 - Math.sqrt(p);
      return min + (1 - min) * f;
    }
  }
}
