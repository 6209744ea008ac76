// A status line on stderr for long scoring runs: rewritten in place on a terminal, a plain line
// every 10 s otherwise (logs stay readable), and a final line when a part is done.

function duration(sec: number): string {
  if (!Number.isFinite(sec) || sec < 0) return '?';
  const s = Math.round(sec);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

let lastPrint = 0;
let dirty = false;

/**
 * `label: done/total unit (pct), N tok/s, ETA` since `t0` (ms, Date.now()); `final` ends the line
 * with the elapsed time.
 */
export function progressLine(
  label: string,
  done: number,
  total: number,
  tokens: number,
  t0: number,
  unit: string,
  final = false,
): void {
  const tty = !!process.stderr.isTTY;
  const now = Date.now();
  const sec = (now - t0) / 1000;
  if (final) {
    if (dirty && tty) process.stderr.write('\r\x1b[K');
    process.stderr.write(`${label}: done in ${duration(sec)}\n`);
    dirty = false;
    lastPrint = 0;
    return;
  }
  if (now - lastPrint < (tty ? 200 : 10000) && done < total) return;
  lastPrint = now;
  const rate = tokens / Math.max(sec, 1e-9);
  const eta = (sec / Math.max(done, 1)) * (total - done);
  const line = `${label}: ${done}/${total} ${unit} (${((100 * done) / total).toFixed(1)}%)  ${Math.round(rate)} tok/s  ETA ${duration(eta)}`;
  if (tty) {
    process.stderr.write(`\r\x1b[K${line}`);
    dirty = true;
  } else process.stderr.write(line + '\n');
}
