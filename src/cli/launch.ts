// `--nproc N` / `--gpus N`: start N worker processes of the same command on this machine (one per
// GPU), with the variables a torchrun-style launcher sets (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT), and supervise them: rank 0 keeps the terminal (progress, results),
// the others' lines come prefixed with their rank; when one worker fails the others are stopped
// (SIGTERM, then SIGKILL after 5 s) and the job fails naming the rank, instead of waiting.

import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import readline from 'node:readline';

export interface LaunchOptions {
  nproc: number;
  /** the command line for every worker, after `mohawk` (the launch flags removed) */
  argv: string[];
  /** extra environment for worker i (e.g. its GPU) */
  env?: (rank: number) => NodeJS.ProcessEnv;
  /** where supervisor messages go (default stderr) */
  log?: (line: string) => void;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Run the workers to the end; resolves 0 when all succeed, rejects naming the first that failed. */
export async function launchWorkers(o: LaunchOptions): Promise<number> {
  const log = o.log ?? ((l: string) => process.stderr.write(l + '\n'));
  if (!(Number.isInteger(o.nproc) && o.nproc >= 1))
    throw new Error(`--nproc/--gpus (${o.nproc}) must be a positive integer`);
  const port = process.env.MASTER_PORT ? Number(process.env.MASTER_PORT) : await freePort();
  const children: ChildProcess[] = [];
  let failure: string | null = null;
  let killTimer: NodeJS.Timeout | null = null;
  const stopAll = (why: string): void => {
    if (failure) return;
    failure = why;
    log(`mohawk: ${why}; stopping the other workers`);
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    killTimer = setTimeout(() => {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }, 5000);
    killTimer.unref();
  };
  const onSignal = (sig: NodeJS.Signals): void => stopAll(`received ${sig}`);
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    const exits = Array.from({ length: o.nproc }, (_, rank) => {
      const child = spawn(process.execPath, [...process.execArgv, process.argv[1], ...o.argv], {
        env: {
          ...process.env,
          MOHAWK_DIST: undefined,
          RANK: String(rank),
          WORLD_SIZE: String(o.nproc),
          LOCAL_RANK: String(rank),
          LOCAL_WORLD_SIZE: String(o.nproc),
          MASTER_ADDR: '127.0.0.1',
          MASTER_PORT: String(port),
          ...o.env?.(rank),
        },
        stdio: rank === 0 ? ['inherit', 'inherit', 'inherit'] : ['ignore', 'pipe', 'pipe'],
      });
      children.push(child);
      for (const s of [child.stdout, child.stderr])
        if (s)
          readline
            .createInterface({ input: s })
            .on('line', (l) => process.stderr.write(`[rank ${rank}] ${l}\n`));
      log(`mohawk: rank ${rank}: pid ${child.pid}`);
      return new Promise<void>((resolve) => {
        child.on('error', (e) => {
          stopAll(`rank ${rank} could not start (${e.message})`);
          resolve();
        });
        child.on('exit', (code, signal) => {
          if (code !== 0)
            stopAll(
              `rank ${rank} (pid ${child.pid}) ${signal ? `was killed by ${signal}` : `exited with code ${code}`}`,
            );
          resolve();
        });
      });
    });
    await Promise.all(exits);
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    if (killTimer) clearTimeout(killTimer);
  }
  if (failure) throw new Error(`distributed job failed: ${failure}`);
  return 0;
}
