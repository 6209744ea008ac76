// Line charts as self-contained SVG text: axes with round tick values, one polyline per series
// (NaN points break the line), optional log-scale y, vertical markers (stage boundaries) and a
// legend. No dependencies: a report opens in any browser, and nothing native is needed to draw.

export interface Series {
  name: string;
  /** (x, y) points; a non-finite y breaks the line */
  points: [number, number][];
  color?: string;
  /** draw a dot at every point (sparse series such as per-stage validation) */
  dots?: boolean;
  dashed?: boolean;
}

export interface ChartOptions {
  title: string;
  xLabel?: string;
  yLabel?: string;
  series: Series[];
  width?: number;
  height?: number;
  /** log10 y axis (ignored when a value is <= 0) */
  logY?: boolean;
  /** vertical dashed lines with a label, e.g. where each stage begins */
  markers?: { x: number; label: string }[];
}

export const PALETTE = [
  '#1f77b4',
  '#d62728',
  '#2ca02c',
  '#ff7f0e',
  '#9467bd',
  '#8c564b',
  '#e377c2',
  '#17becf',
];

function esc(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);
}

/** Round tick values covering [lo, hi], about `n` of them. */
export function niceTicks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

/** A tick label; `step` (the distance between ticks) sets the digits so neighbours differ. */
export function fmtTick(v: number, step = 0): string {
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (step > 0 && a < 1e4 && step < a / 50) {
    const digits = Math.max(0, -Math.floor(Math.log10(step)) + 1);
    return String(+v.toFixed(Math.min(digits, 8)));
  }
  if (a >= 1e9) return `${+(v / 1e9).toPrecision(3)}B`;
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`;
  if (a < 1e-3) return v.toExponential(1);
  return String(+v.toPrecision(3));
}

/** One chart as an <svg> element (no XML prolog, so it also embeds in HTML). */
export function lineChart(o: ChartOptions): string {
  const W = o.width ?? 640;
  const H = o.height ?? 300;
  const m = { l: 64, r: 16, t: 28, b: 44 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const pts = o.series.flatMap((s) => s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)));
  const logY = !!o.logY && pts.length > 0 && pts.every(([, y]) => y > 0);
  const fy = (y: number) => (logY ? Math.log10(y) : y);
  let x0 = Math.min(...pts.map(([x]) => x), ...(o.markers ?? []).map((k) => k.x));
  let x1 = Math.max(...pts.map(([x]) => x), ...(o.markers ?? []).map((k) => k.x));
  let y0 = Math.min(...pts.map(([, y]) => fy(y)));
  let y1 = Math.max(...pts.map(([, y]) => fy(y)));
  if (!Number.isFinite(x0)) [x0, x1] = [0, 1];
  if (!Number.isFinite(y0)) [y0, y1] = [0, 1];
  if (x1 === x0) [x0, x1] = [x0 - 1, x1 + 1];
  if (y1 === y0) [y0, y1] = [y0 - (Math.abs(y0) || 1) * 0.1, y1 + (Math.abs(y1) || 1) * 0.1];
  const pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  const sx = (x: number) => m.l + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number) => m.t + ph - ((fy(y) - y0) / (y1 - y0)) * ph;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="17" text-anchor="middle" font-size="13" font-weight="bold">${esc(o.title)}</text>`,
  );
  // grid and ticks
  const yTicks = logY
    ? niceTicks(Math.floor(y0), Math.ceil(y1), Math.min(6, Math.ceil(y1) - Math.floor(y0) + 1))
        .filter((e) => Number.isInteger(e) && e >= y0 && e <= y1)
        .map((e) => 10 ** e)
    : niceTicks(y0, y1);
  const yTickList =
    logY && yTicks.length < 2 ? niceTicks(10 ** y0, 10 ** y1, 4).filter((v) => v > 0) : yTicks;
  // decades on a log axis label themselves; a narrow range needs the digits of its step
  const yStep = yTickList === yTicks && logY ? 0 : Math.abs((yTickList[1] ?? 0) - yTickList[0]);
  for (const v of yTickList) {
    const y = sy(v);
    if (y < m.t - 0.5 || y > m.t + ph + 0.5) continue;
    out.push(
      `<line x1="${m.l}" x2="${m.l + pw}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="#e5e5e5"/>`,
      `<text x="${m.l - 6}" y="${(y + 4).toFixed(1)}" text-anchor="end">${fmtTick(v, yStep)}</text>`,
    );
  }
  for (const v of niceTicks(x0, x1, 6)) {
    const x = sx(v);
    out.push(
      `<line x1="${x.toFixed(1)}" x2="${x.toFixed(1)}" y1="${m.t}" y2="${m.t + ph}" stroke="#f0f0f0"/>`,
      `<text x="${x.toFixed(1)}" y="${m.t + ph + 16}" text-anchor="middle">${fmtTick(v)}</text>`,
    );
  }
  out.push(`<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`);
  if (o.xLabel)
    out.push(`<text x="${m.l + pw / 2}" y="${H - 8}" text-anchor="middle">${esc(o.xLabel)}</text>`);
  if (o.yLabel)
    out.push(
      `<text transform="translate(14 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}${logY ? ' (log)' : ''}</text>`,
    );
  for (const k of o.markers ?? []) {
    const x = sx(k.x).toFixed(1);
    out.push(
      `<line x1="${x}" x2="${x}" y1="${m.t}" y2="${m.t + ph}" stroke="#777" stroke-dasharray="4 3"/>`,
      `<text x="${+x + 3}" y="${m.t + 11}" fill="#555">${esc(k.label)}</text>`,
    );
  }
  // series
  o.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    let path = '';
    let pen = false;
    for (const [x, y] of s.points) {
      if (!Number.isFinite(y) || !Number.isFinite(x) || (logY && y <= 0)) {
        pen = false;
        continue;
      }
      path += `${pen ? 'L' : 'M'}${sx(x).toFixed(1)} ${sy(y).toFixed(1)}`;
      pen = true;
    }
    if (path)
      out.push(
        `<path d="${path}" fill="none" stroke="${color}" stroke-width="1.5"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`,
      );
    if (s.dots)
      for (const [x, y] of s.points)
        if (Number.isFinite(x) && Number.isFinite(y) && !(logY && y <= 0))
          out.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="${color}"/>`);
  });
  // legend
  let lx = m.l + 8;
  const ly = m.t + ph - 8;
  if (o.series.length > 1 || o.series[0]?.name)
    o.series.forEach((s, i) => {
      const color = s.color ?? PALETTE[i % PALETTE.length];
      out.push(
        `<line x1="${lx}" x2="${lx + 14}" y1="${ly - 4}" y2="${ly - 4}" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="4 2"' : ''}/>`,
        `<text x="${lx + 18}" y="${ly}">${esc(s.name)}</text>`,
      );
      lx += 26 + 6.2 * s.name.length;
    });
  out.push('</svg>');
  return out.join('\n');
}

/** Charts stacked vertically into one SVG document. */
export function stackCharts(svgs: string[], width = 640, height = 300): string {
  const body = svgs.map(
    (s, i) =>
      `<g transform="translate(0 ${i * height})">${s.replace(/^<svg[^>]*>/, '').replace(/<\/svg>$/, '')}</g>`,
  );
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height * svgs.length}" ` +
    `viewBox="0 0 ${width} ${height * svgs.length}" font-family="sans-serif" font-size="11">\n${body.join('\n')}\n</svg>\n`
  );
}

/** A grid of cells colored from red (0) to green (1), value printed in each: rows x columns. */
export function heatmap(o: {
  title: string;
  rows: string[];
  cols: string[];
  /** values[r][c] in [0, 1], or null for a cell not measured */
  values: (number | null)[][];
  rowLabel?: string;
  colLabel?: string;
}): string {
  const cw = 64;
  const ch = 28;
  const m = { l: 90, t: 40, r: 16, b: 40 };
  const W = Math.max(m.l + cw * o.cols.length + m.r, 40 + 7.5 * o.title.length);
  const H = m.t + ch * o.rows.length + m.b;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="17" text-anchor="middle" font-size="13" font-weight="bold">${esc(o.title)}</text>`,
  ];
  const color = (v: number) => {
    const r = Math.round(215 - 170 * v);
    const g = Math.round(60 + 140 * v);
    return `rgb(${r},${g},80)`;
  };
  o.rows.forEach((row, r) => {
    out.push(`<text x="${m.l - 6}" y="${m.t + r * ch + ch / 2 + 4}" text-anchor="end">${esc(row)}</text>`);
    o.cols.forEach((_, c) => {
      const v = o.values[r]?.[c] ?? null;
      const x = m.l + c * cw;
      const y = m.t + r * ch;
      out.push(
        `<rect x="${x}" y="${y}" width="${cw - 2}" height="${ch - 2}" fill="${v === null ? '#ddd' : color(v)}"/>`,
        `<text x="${x + cw / 2 - 1}" y="${y + ch / 2 + 4}" text-anchor="middle">${v === null ? 'n/a' : v.toFixed(2)}</text>`,
      );
    });
  });
  o.cols.forEach((col, c) =>
    out.push(`<text x="${m.l + c * cw + cw / 2 - 1}" y="${m.t - 6}" text-anchor="middle">${esc(col)}</text>`),
  );
  if (o.colLabel)
    out.push(
      `<text x="${m.l + (cw * o.cols.length) / 2}" y="${H - 12}" text-anchor="middle">${esc(o.colLabel)}</text>`,
    );
  if (o.rowLabel)
    out.push(
      `<text transform="translate(14 ${m.t + (ch * o.rows.length) / 2}) rotate(-90)" text-anchor="middle">${esc(o.rowLabel)}</text>`,
    );
  out.push('</svg>');
  return out.join('\n') + '\n';
}
