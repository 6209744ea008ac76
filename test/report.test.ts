// Run logs and plots: SVG charts put points where their values say, the CSV holds exactly the
// JSONL metrics, the report follows a run as it grows, and `mohawk plot` draws a run directory.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { metricsCsv, readRun, RunReporter, writeRunReport } from '../src/distill/report.js';
import { lineChart, niceTicks } from '../src/util/svg-plot.js';

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-report-'));
}

/** The M/L commands of every <path> in an SVG, as [x, y, isMove]. */
function pathPoints(svg: string): [number, number, boolean][][] {
  return [...svg.matchAll(/<path d="([^"]+)"/g)].map((m) =>
    [...m[1].matchAll(/([ML])([-\d.]+) ([-\d.]+)/g)].map((c): [number, number, boolean] => [
      +c[2],
      +c[3],
      c[1] === 'M',
    ]),
  );
}

function parseCsv(text: string): Record<string, string>[] {
  const [head, ...rows] = text.trim().split('\n');
  const cols = head.split(',');
  return rows.map((r) => Object.fromEntries(r.split(',').map((v, i) => [cols[i], v])));
}

const step = (i: number, extra: Record<string, number> = {}) => ({
  step: i,
  loss: 2 / i,
  lr: 0.001 * Math.min(1, i / 2),
  grad_norm: 1 + i,
  tokens: 100 * i,
  tokens_per_s: 1000 + i,
  elapsed_s: 0.5 * i,
  ...extra,
});

function writeJsonl(file: string, rows: object[]): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r) + '\n').join(''));
}

describe('SVG charts', () => {
  it('ticks are round and cover the range', () => {
    assert.deepEqual(niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
    assert.deepEqual(niceTicks(3, 97, 4), [25, 50, 75]);
    const t = niceTicks(26.55, 26.57, 4);
    assert.ok(t.length >= 3 && t.every((v, i) => i === 0 || v > t[i - 1]));
  });

  it('points land where their values say; a NaN breaks the line; log scale is logarithmic', () => {
    const W = 500;
    const H = 300;
    const svg = lineChart({
      title: 't',
      width: W,
      height: H,
      series: [
        {
          name: 'a',
          points: [
            [0, 1],
            [1, 2],
            [2, NaN],
            [3, 4],
            [4, 5],
          ],
        },
      ],
    });
    const [p] = pathPoints(svg);
    assert.equal(p.length, 4);
    assert.deepEqual(
      p.map((q) => q[2]),
      [true, false, true, false],
      'a NaN starts a new segment',
    );
    // x linear: x(1) - x(0) is a quarter of x(4) - x(0)
    assert.ok(Math.abs(p[1][0] - p[0][0] - (p[3][0] - p[0][0]) / 4) < 0.2);
    // y linear and pointing up: equal steps in value, equal steps in pixels
    assert.ok(p[1][1] < p[0][1]);
    assert.ok(Math.abs(p[0][1] - p[1][1] - (p[2][1] - p[3][1])) < 0.2);
    const logSvg = lineChart({
      title: 't',
      logY: true,
      series: [
        {
          name: 'a',
          points: [
            [0, 1],
            [1, 10],
            [2, 100],
          ],
        },
      ],
    });
    const [q] = pathPoints(logSvg);
    assert.ok(Math.abs(q[0][1] - q[1][1] - (q[1][1] - q[2][1])) < 0.2, 'decades are equally spaced');
    assert.match(logSvg, />10<\/text>/);
  });
});

describe('run reports', () => {
  function fakeRun(): string {
    const dir = tmpDir();
    writeJsonl(
      path.join(dir, 'stage1-matrix', 'metrics.jsonl'),
      [1, 2, 3].map((i) => step(i)),
    );
    fs.writeFileSync(
      path.join(dir, 'stage1-matrix', 'done.json'),
      JSON.stringify({ tokens: 300, valPpl: 40, valKl: 1.5, loss: 0.6 }),
    );
    writeJsonl(
      path.join(dir, 'stage3-kd', 'metrics.jsonl'),
      [1, 2].map((i) => step(i, { val_kl: 0.1 * i })),
    );
    return dir;
  }

  it('the CSV holds the JSONL metrics; stages follow each other on the run token axis', () => {
    const dir = fakeRun();
    const out = writeRunReport(dir);
    assert.equal(out, path.join(dir, 'report.html'));
    const rows = parseCsv(fs.readFileSync(path.join(dir, 'metrics.csv'), 'utf8'));
    assert.equal(rows.length, 5);
    assert.deepEqual(
      rows.map((r) => [r.part, Number(r.run_tokens), Number(r.loss)]),
      [
        ['stage1-matrix', 100, 2],
        ['stage1-matrix', 200, 1],
        ['stage1-matrix', 300, 2 / 3],
        ['stage3-kd', 400, 2],
        ['stage3-kd', 500, 1],
      ],
    );
    assert.equal(rows[4].val_kl, '0.2');
    assert.equal(rows[0].val_kl, '');
    const perStage = parseCsv(fs.readFileSync(path.join(dir, 'stage3-kd', 'metrics.csv'), 'utf8'));
    assert.deepEqual(
      perStage.map((r) => Number(r.grad_norm)),
      [2, 3],
    );
    const html = fs.readFileSync(out, 'utf8');
    assert.equal(
      (html.match(/<svg /g) ?? []).length,
      2 + 3 + 2,
      'a loss chart per stage, lr, grad norm, tokens/s, ppl, KL',
    );
    assert.match(html, /http-equiv="refresh"/, 'a run without results.json is in progress');
    fs.writeFileSync(
      path.join(dir, 'results.json'),
      JSON.stringify({ teacherPpl: 20, initialPpl: 60, initialKl: 2 }),
    );
    assert.doesNotMatch(fs.readFileSync(writeRunReport(dir), 'utf8'), /http-equiv="refresh"/);
    const svg = writeRunReport(dir, path.join(dir, 'all.svg'));
    assert.equal((fs.readFileSync(svg, 'utf8').match(/<svg /g) ?? []).length, 1);
  });

  it('follows a growing run: a half-written line is skipped, new steps appear at the next write', () => {
    const dir = fakeRun();
    const file = path.join(dir, 'stage3-kd', 'metrics.jsonl');
    fs.appendFileSync(file, '{"step":3,"loss":0.');
    const reporter = new RunReporter(dir, 3600);
    reporter.tick();
    assert.equal(readRun(dir).parts[1].metrics.length, 2);
    fs.writeFileSync(file, [1, 2, 3, 4].map((i) => JSON.stringify(step(i)) + '\n').join(''));
    reporter.tick(); // within the interval: not rewritten
    assert.equal(parseCsv(fs.readFileSync(path.join(dir, 'metrics.csv'), 'utf8')).length, 5);
    reporter.flush();
    assert.equal(parseCsv(fs.readFileSync(path.join(dir, 'metrics.csv'), 'utf8')).length, 7);
  });

  it('CSV cells with commas or quotes are quoted', () => {
    assert.equal(
      metricsCsv([{ step: 1, note: 'a,"b"' }])
        .split('\n')[1]
        .endsWith(',"a,""b"""'),
      true,
    );
  });

  it('mohawk plot RUN_DIR --out FILE.svg --json', () => {
    const dir = fakeRun();
    const root = path.resolve(import.meta.dirname, '..');
    const out = path.join(dir, 'pic.svg');
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', path.join(root, 'src/cli/main.ts'), 'plot', dir, '--out', out, '--json'],
      { encoding: 'utf8', cwd: root },
    );
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { report: string; parts: { name: string; steps: number }[] };
    assert.equal(j.report, out);
    assert.deepEqual(
      j.parts.map((x) => [x.name, x.steps]),
      [
        ['stage1-matrix', 3],
        ['stage3-kd', 2],
      ],
    );
    assert.ok(fs.statSync(out).size > 1000);
    const bad = spawnSync(
      process.execPath,
      ['--import', 'tsx', path.join(root, 'src/cli/main.ts'), 'plot', tmpDir()],
      {
        encoding: 'utf8',
        cwd: root,
      },
    );
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /no metrics\.jsonl/);
  });
});
