// A process group: the ranks of a distributed job, found through the launcher's environment,
// met at a TCP rendezvous on rank 0 (MASTER_ADDR:MASTER_PORT), then kept connected in a star
// through rank 0 for the CPU collective, the NCCL id exchange and liveness.
//
// Training code is synchronous, Node sockets are not: the sockets live in a worker thread and the
// main thread blocks on a shared flag (Atomics.wait) until the worker answers on a message port
// (receiveMessageOnPort). A peer whose connection closes without saying goodbye is lost: the
// call in progress (or the next one) fails naming it, and if the main thread is busy elsewhere
// (a long kernel, NCCL) the worker stops the process after a grace period, so no rank waits forever.
//
// Reductions run on rank 0 in rank order, summing in f64: the result is deterministic and the
// same on every rank.

import { receiveMessageOnPort, MessageChannel, Worker, type MessagePort } from 'node:worker_threads';

/** Who this process is in a distributed job. */
export interface DistEnv {
  rank: number;
  worldSize: number;
  localRank: number;
  masterAddr: string;
  masterPort: number;
  /** which variables said so */
  source: 'torchrun' | 'slurm';
}

const DEFAULT_PORT = 29500;

/**
 * Read the launcher's variables: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
 * (torchrun, mohawk's own launcher, most others), else Slurm's SLURM_PROCID, SLURM_NTASKS,
 * SLURM_LOCALID (with MASTER_ADDR set by the batch script). Null outside a distributed job
 * (or with MOHAWK_DIST=0).
 */
export function readDistEnv(env: NodeJS.ProcessEnv = process.env): DistEnv | null {
  if (env.MOHAWK_DIST === '0') return null;
  const int = (name: string, lo: number, hi: number, what: string): number => {
    const raw = env[name];
    const v = Number(raw);
    if (raw === undefined || raw.trim() === '' || !Number.isInteger(v) || v < lo || v > hi)
      throw new Error(`environment: ${name} (${raw ?? 'unset'}) must be ${what}`);
    return v;
  };
  let source: DistEnv['source'];
  let rank: number;
  let worldSize: number;
  let localRank: number;
  if (env.WORLD_SIZE !== undefined) {
    source = 'torchrun';
    worldSize = int('WORLD_SIZE', 1, 1 << 20, 'a positive integer');
    rank = int('RANK', 0, worldSize - 1, `an integer in [0, WORLD_SIZE ${worldSize})`);
    localRank =
      env.LOCAL_RANK !== undefined
        ? int('LOCAL_RANK', 0, worldSize - 1, 'an integer >= 0 below WORLD_SIZE')
        : rank;
  } else if (env.SLURM_NTASKS !== undefined && env.SLURM_PROCID !== undefined) {
    source = 'slurm';
    worldSize = int('SLURM_NTASKS', 1, 1 << 20, 'a positive integer');
    rank = int('SLURM_PROCID', 0, worldSize - 1, `an integer in [0, SLURM_NTASKS ${worldSize})`);
    localRank =
      env.SLURM_LOCALID !== undefined ? int('SLURM_LOCALID', 0, worldSize - 1, 'an integer >= 0') : 0;
  } else return null;
  if (worldSize === 1)
    return { rank: 0, worldSize: 1, localRank, masterAddr: '127.0.0.1', masterPort: 0, source };
  const masterAddr = env.MASTER_ADDR?.trim() || (source === 'torchrun' ? '127.0.0.1' : '');
  if (!masterAddr)
    throw new Error(
      'environment: MASTER_ADDR is unset; under Slurm set it to the first node, e.g. ' +
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
    );
  const masterPort =
    env.MASTER_PORT !== undefined ? int('MASTER_PORT', 1, 65535, 'a TCP port in [1, 65535]') : DEFAULT_PORT;
  return { rank, worldSize, localRank, masterAddr, masterPort, source };
}

export interface JoinOptions {
  rank: number;
  worldSize: number;
  masterAddr: string;
  masterPort: number;
  /** seconds to wait for every rank at the rendezvous (default $MOHAWK_RENDEZVOUS_TIMEOUT or 300) */
  rendezvousTimeoutSec?: number;
  /** seconds one collective call may wait for the other ranks (default $MOHAWK_COLLECTIVE_TIMEOUT or 1800) */
  callTimeoutSec?: number;
  /** bytes rank 0 hands every rank at the rendezvous (the NCCL unique id) */
  blob?: Uint8Array;
  /**
   * milliseconds after losing a peer before the worker thread stops this process (default 3000;
   * -1: never, the loss only surfaces as an error from the next call)
   */
  abortGraceMs?: number;
}

type Reply = { ok: true; data?: Uint8Array; blob?: Uint8Array } | { ok: false; error: string };

function envSeconds(name: string, fallback: number): number {
  const v = Number(process.env[name]);
  return process.env[name] !== undefined && v > 0 ? v : fallback;
}

/** The ranks of a job, connected through rank 0. Every method blocks until the answer is there. */
export class ProcessGroup {
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly flag: Int32Array;
  private readonly callTimeoutMs: number;
  private seq = 0;
  private closed = false;
  /** what rank 0 handed out at the rendezvous */
  readonly blob: Uint8Array;

  private constructor(
    readonly rank: number,
    readonly worldSize: number,
    o: JoinOptions,
  ) {
    const rendezvousMs = 1000 * (o.rendezvousTimeoutSec ?? envSeconds('MOHAWK_RENDEZVOUS_TIMEOUT', 300));
    this.callTimeoutMs = 1000 * (o.callTimeoutSec ?? envSeconds('MOHAWK_COLLECTIVE_TIMEOUT', 1800));
    const shared = new SharedArrayBuffer(4);
    this.flag = new Int32Array(shared);
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: {
        rank,
        world: worldSize,
        addr: o.masterAddr,
        port: o.masterPort,
        timeoutMs: rendezvousMs,
        abortGraceMs: o.abortGraceMs ?? 3000,
        flag: shared,
        mport: port2,
        blob: o.blob ?? null,
      },
      transferList: [port2],
    });
    this.worker.unref();
    const r = this.wait(rendezvousMs + 5000, 'the rendezvous');
    if (!r.ok) {
      this.shutdown();
      throw new Error(r.error);
    }
    this.blob = r.blob ?? new Uint8Array(0);
  }

  /** Meet the other ranks at masterAddr:masterPort (blocks; throws naming the missing ranks on timeout). */
  static join(o: JoinOptions): ProcessGroup {
    if (!(Number.isInteger(o.worldSize) && o.worldSize >= 1))
      throw new Error(`process group: world size (${o.worldSize}) must be a positive integer`);
    if (!(Number.isInteger(o.rank) && o.rank >= 0 && o.rank < o.worldSize))
      throw new Error(`process group: rank (${o.rank}) must be in [0, ${o.worldSize})`);
    return new ProcessGroup(o.rank, o.worldSize, o);
  }

  private wait(timeoutMs: number, what: string): Reply {
    const r = Atomics.wait(this.flag, 0, 0, timeoutMs);
    if (r === 'timed-out')
      return {
        ok: false,
        error: `process group: rank ${this.rank}: ${what} timed out after ${Math.round(timeoutMs / 1000)} s waiting for the other ranks`,
      };
    Atomics.store(this.flag, 0, 0);
    const got = receiveMessageOnPort(this.port);
    if (!got)
      return { ok: false, error: `process group: rank ${this.rank}: no answer from the worker thread` };
    return got.message as Reply;
  }

  private call(op: string, data: Float32Array | Float64Array | null, extra: object = {}): Uint8Array {
    if (this.closed) throw new Error(`process group: rank ${this.rank}: ${op} after close`);
    const seq = this.seq++;
    const bytes = data ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(0);
    this.port.postMessage({
      type: 'op',
      op,
      seq,
      dtype: data instanceof Float64Array ? 'f64' : 'f32',
      data: bytes,
      ...extra,
    });
    const r = this.wait(this.callTimeoutMs, `${op} (call ${seq})`);
    if (!r.ok) throw new Error(r.error);
    return r.data ?? new Uint8Array(0);
  }

  private static typed<T extends Float32Array | Float64Array>(like: T, b: Uint8Array): T {
    const Ctor = (like instanceof Float64Array ? Float64Array : Float32Array) as unknown as new (
      buf: ArrayBufferLike,
      off: number,
      len: number,
    ) => T;
    const es = like.BYTES_PER_ELEMENT;
    if (b.byteOffset % es !== 0) b = b.slice();
    return new Ctor(b.buffer, b.byteOffset, b.byteLength / es);
  }

  /** The sum (or mean) over ranks of x, in a new array (same on every rank). */
  allReduce<T extends Float32Array | Float64Array>(x: T, op: 'sum' | 'avg' = 'sum'): T {
    if (this.worldSize === 1) return x.slice() as T;
    return ProcessGroup.typed(x, this.call('allReduce', x, { avg: op === 'avg' }));
  }

  /** Every rank's x (all the same length) in rank order. */
  allGather<T extends Float32Array | Float64Array>(x: T): T {
    if (this.worldSize === 1) return x.slice() as T;
    return ProcessGroup.typed(x, this.call('allGather', x));
  }

  /** root's x, on every rank (x has the same length everywhere). */
  broadcast<T extends Float32Array | Float64Array>(x: T, root: number): T {
    if (!(Number.isInteger(root) && root >= 0 && root < this.worldSize))
      throw new Error(`process group: broadcast root (${root}) must be in [0, ${this.worldSize})`);
    if (this.worldSize === 1) return x.slice() as T;
    return ProcessGroup.typed(x, this.call('broadcast', x, { root }));
  }

  barrier(): void {
    if (this.worldSize > 1) this.call('barrier', null);
  }

  /** Say goodbye to the peers and stop the worker thread. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.port.postMessage({ type: 'close' });
    this.wait(15000, 'close');
    this.shutdown();
  }

  private shutdown(): void {
    this.closed = true;
    this.port.close();
    void this.worker.terminate();
  }
}

// The worker thread (plain JavaScript, evaluated as a script: no loader, no imports of ours).
// Frames: u32 header bytes, u32 payload bytes, JSON header, payload.
const WORKER_SOURCE = String.raw`
const { workerData } = require('node:worker_threads');
const net = require('node:net');
const fs = require('node:fs');
const { rank, world, addr, port, timeoutMs, abortGraceMs, flag, mport, blob } = workerData;
const flagArr = new Int32Array(flag);
const peers = new Map();
let failed = null;
let closing = false;

function reply(msg) {
  mport.postMessage(msg);
  Atomics.store(flagArr, 0, 1);
  Atomics.notify(flagArr, 0);
}

function send(peer, header, payload) {
  const h = Buffer.from(JSON.stringify(header));
  const pre = Buffer.alloc(8);
  pre.writeUInt32LE(h.length, 0);
  pre.writeUInt32LE(payload ? payload.byteLength : 0, 4);
  peer.sock.write(pre);
  peer.sock.write(h);
  if (payload && payload.byteLength) peer.sock.write(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength));
}

function fatal(msg) {
  if (failed) return;
  failed = msg;
  for (const p of peers.values()) for (const w of p.waiters.splice(0)) w.reject(new Error(msg));
  // rank 0 tells the others what went wrong before it goes
  if (rank === 0) for (const p of peers.values()) { try { if (!p.sock.destroyed) send(p, { t: 'error', why: msg }); } catch {} }
  if (abortGraceMs >= 0 && !closing)
    setTimeout(() => {
      try { fs.writeSync(2, '\nmohawk: rank ' + rank + ': ' + msg + '; stopping\n'); } catch {}
      process.kill(process.pid, 'SIGTERM');
    }, abortGraceMs).unref();
}

function attach(sock, peer, onFirst) {
  sock.setNoDelay(true);
  let chunks = [];
  let have = 0;
  let need = 8;
  let sizes = null;
  sock.on('data', (c) => {
    chunks.push(c);
    have += c.length;
    while (have >= need) {
      const all = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, have);
      if (!sizes) {
        sizes = [all.readUInt32LE(0), all.readUInt32LE(4)];
        const rest = all.subarray(8);
        chunks = [rest];
        have = rest.length;
        need = sizes[0] + sizes[1];
        continue;
      }
      const h = JSON.parse(all.subarray(0, sizes[0]).toString());
      const p = new Uint8Array(sizes[1]);
      p.set(all.subarray(sizes[0], need));
      const rest = all.subarray(need);
      chunks = [rest];
      have = rest.length;
      need = 8;
      sizes = null;
      if (h.t === 'bye') { peer.bye = true; continue; }
      if (peer.rank < 0) { onFirst(h, p); continue; }
      if (h.t === 'error' && rank !== 0) { fatal(h.why); continue; }
      const w = peer.waiters.shift();
      if (w) w.resolve({ h, p }); else peer.frames.push({ h, p });
    }
  });
  const gone = (why) => {
    if (peer.bye || closing) return;
    if (peer.rank < 0) return;
    fatal('lost rank ' + peer.rank + ': ' + why + ' (the process stopped or crashed)');
  };
  sock.on('close', () => gone('connection closed'));
  sock.on('error', (e) => gone(e.code || e.message));
}

function newPeer(sock, r) {
  return { sock, rank: r, frames: [], waiters: [], bye: false };
}

function recv(peer) {
  if (peer.frames.length) return Promise.resolve(peer.frames.shift());
  if (failed) return Promise.reject(new Error(failed));
  return new Promise((resolve, reject) => peer.waiters.push({ resolve, reject }));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const where = addr + ':' + port;
const secs = Math.round(timeoutMs / 1000);

async function rendezvousRoot() {
  const server = net.createServer();
  const loopback = addr === 'localhost' || addr.startsWith('127.') || addr === '::1';
  await new Promise((resolve, reject) => {
    server.once('error', (e) => reject(new Error('rendezvous: rank 0 cannot listen on ' + where + ' (' + (e.code || e.message) + ')')));
    server.listen({ port, host: loopback ? addr : undefined }, resolve);
  });
  return await new Promise((resolve, reject) => {
    const pending = new Set();
    const stop = (msg) => {
      clearTimeout(timer);
      server.close();
      for (const p of [...peers.values(), ...pending]) { try { send(p, { t: 'reject', why: msg }); p.sock.end(); } catch {} }
      reject(new Error(msg));
    };
    const timer = setTimeout(() => {
      const missing = [];
      for (let r = 1; r < world; r++) if (!peers.has(r)) missing.push(r);
      stop('rendezvous at ' + where + ': rank(s) ' + missing.join(', ') + ' did not arrive within ' + secs + ' s (world size ' + world + ')');
    }, timeoutMs);
    server.on('connection', (sock) => {
      const peer = newPeer(sock, -1);
      pending.add(peer);
      attach(sock, peer, (h) => {
        pending.delete(peer);
        if (h.t !== 'hello') return stop('rendezvous at ' + where + ': unexpected first message ' + JSON.stringify(h.t));
        if (h.world !== world) return stop('rendezvous at ' + where + ': rank ' + h.rank + ' has world size ' + h.world + ', rank 0 has ' + world);
        if (!(Number.isInteger(h.rank) && h.rank > 0 && h.rank < world)) return stop('rendezvous at ' + where + ': a peer claims rank ' + h.rank + ' (expected 1..' + (world - 1) + ')');
        if (peers.has(h.rank)) return stop('rendezvous at ' + where + ': two processes claim rank ' + h.rank);
        peer.rank = h.rank;
        peers.set(h.rank, peer);
        if (peers.size === world - 1) {
          clearTimeout(timer);
          server.close();
          for (const p of peers.values()) send(p, { t: 'welcome' }, blob || new Uint8Array(0));
          resolve(blob || new Uint8Array(0));
        }
      });
    });
  });
}

async function rendezvousPeer() {
  const deadline = Date.now() + timeoutMs;
  let sock = null;
  let last = '';
  while (!sock) {
    try {
      sock = await new Promise((resolve, reject) => {
        const s = net.connect({ host: addr, port });
        s.once('connect', () => { s.removeAllListeners('error'); resolve(s); });
        s.once('error', reject);
      });
    } catch (e) {
      last = e.code || e.message;
      if (Date.now() > deadline) throw new Error('rendezvous: rank ' + rank + ' could not reach rank 0 at ' + where + ' within ' + secs + ' s (' + last + ')');
      await sleep(200);
    }
  }
  const peer = newPeer(sock, 0);
  peers.set(0, peer);
  attach(sock, peer, () => {});
  send(peer, { t: 'hello', rank, world });
  const timer = setTimeout(() => fatal('rendezvous at ' + where + ': rank 0 did not welcome rank ' + rank + ' within ' + secs + ' s (other ranks missing?)'), Math.max(0, deadline - Date.now()));
  try {
    const { h, p } = await recv(peer);
    if (h.t === 'reject') throw new Error(h.why);
    if (h.t !== 'welcome') throw new Error('rendezvous at ' + where + ': unexpected answer ' + JSON.stringify(h.t));
    return p;
  } finally {
    clearTimeout(timer);
  }
}

function view(dtype, bytes) {
  return dtype === 'f64' ? new Float64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8)
    : new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

function combine(m, parts) {
  if (m.op === 'barrier') return new Uint8Array(0);
  if (m.op === 'broadcast') return parts[m.root];
  if (m.op === 'allGather') {
    const out = new Uint8Array(parts.reduce((a, p) => a + p.byteLength, 0));
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.byteLength; }
    return out;
  }
  // allReduce: sum in f64 in rank order (deterministic), then the mean when asked
  const n = m.data.byteLength / (m.dtype === 'f64' ? 8 : 4);
  const acc = new Float64Array(n);
  for (const p of parts) {
    const v = view(m.dtype, p);
    for (let i = 0; i < n; i++) acc[i] += v[i];
  }
  if (m.avg) for (let i = 0; i < n; i++) acc[i] /= world;
  const out = m.dtype === 'f64' ? acc : Float32Array.from(acc);
  return new Uint8Array(out.buffer);
}

async function runOp(m) {
  if (failed) throw new Error(failed);
  const tag = m.op + '#' + m.seq;
  const bytes = m.data.byteLength;
  if (rank === 0) {
    const parts = [m.data];
    for (let r = 1; r < world; r++) {
      const { h, p } = await recv(peers.get(r));
      if (h.tag !== tag || h.bytes !== bytes) {
        const msg = 'collective mismatch: rank ' + r + ' called ' + h.tag + ' with ' + h.bytes + ' bytes, rank 0 called ' + tag + ' with ' + bytes + ' bytes';
        fatal(msg);
        throw new Error(msg);
      }
      parts.push(p);
    }
    const out = combine(m, parts);
    for (const q of peers.values()) send(q, { t: 'result', tag }, out);
    return out;
  }
  const peer = peers.get(0);
  send(peer, { t: 'part', tag, bytes }, m.data);
  const { p } = await recv(peer);
  return p;
}

async function main() {
  let got;
  try {
    got = world === 1 ? (blob || new Uint8Array(0)) : rank === 0 ? await rendezvousRoot() : await rendezvousPeer();
  } catch (e) {
    closing = true;
    reply({ ok: false, error: e.message });
    return;
  }
  reply({ ok: true, blob: got });
  let chain = Promise.resolve();
  mport.on('message', (m) => {
    chain = chain.then(async () => {
      if (m.type === 'close') {
        closing = true;
        // wait until what is written has left (a large last result may still be queued)
        await Promise.all([...peers.values()].map((p) => new Promise((resolve) => {
          setTimeout(resolve, 10000).unref();
          if (failed || p.sock.destroyed) { p.sock.destroy(); return resolve(); }
          try { send(p, { t: 'bye' }); p.sock.end(resolve); } catch { resolve(); }
        })));
        reply({ ok: true });
        return;
      }
      try {
        reply({ ok: true, data: await runOp(m) });
      } catch (e) {
        reply({ ok: false, error: 'rank ' + rank + ': ' + m.op + ': ' + e.message });
      }
    });
  });
}
main();
`;
