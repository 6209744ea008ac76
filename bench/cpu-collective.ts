// The CPU collective's all-reduce: W local processes (this script re-run with RANK set), f32
// buffers of several sizes, median time per call and the bytes per second each rank sends.
// Run: node --import tsx bench/cpu-collective.ts [--world 2] [--sizes 1e3,1e5,1e6,4e6]

import { spawn } from 'node:child_process';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { ProcessGroup, readDistEnv } from '../src/backends/group.js';

const env = readDistEnv();
if (!env) {
  const { values } = parseArgs({
    options: {
      world: { type: 'string', default: '2' },
      sizes: { type: 'string', default: '1e3,1e5,1e6,4e6' },
    },
  });
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const world = Number(values.world);
  await Promise.all(
    Array.from({ length: world }, (_, r) => {
      const p = spawn(process.execPath, [...process.execArgv, process.argv[1], values.sizes!], {
        env: { ...process.env, RANK: String(r), WORLD_SIZE: String(world), MASTER_PORT: String(port) },
        stdio: ['ignore', r === 0 ? 'inherit' : 'ignore', 'inherit'],
      });
      return new Promise((resolve) => p.on('exit', resolve));
    }),
  );
} else {
  const g = ProcessGroup.join(env);
  const sizes = process.argv[2].split(',').map(Number);
  if (env.rank === 0)
    console.log(
      `world ${env.worldSize}\n| f32 elements | ms per all-reduce (median) | MB/s per rank |\n| ---: | ---: | ---: |`,
    );
  for (const n of sizes) {
    const x = new Float32Array(n).fill(env.rank);
    g.allReduce(x);
    const times: number[] = [];
    for (let i = 0; i < (n >= 1e6 ? 5 : 20); i++) {
      const t0 = performance.now();
      g.allReduce(x);
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    const ms = times[times.length >> 1];
    if (env.rank === 0)
      console.log(`| ${n} | ${ms.toFixed(2)} | ${((n * 4) / 1e6 / (ms / 1000)).toFixed(0)} |`);
  }
  g.close();
}
