// Run-time compilation of the CUDA C kernels with NVRTC (libnvrtc.so.13) through koffi, with
// compiled CUBINs cached on disk by a hash of the source, the options and the NVRTC version
// ($MOHAWK_CACHE/cuda or ~/.cache/mohawk/cuda), so a warm start loads modules without compiling.

import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import koffi, { type LibraryHandle } from 'koffi';
import { CudaError } from './driver.js';

type Fn = (...args: unknown[]) => number;

interface Raw {
  nvrtcVersion: Fn;
  nvrtcCreateProgram: Fn;
  nvrtcCompileProgram: Fn;
  nvrtcGetProgramLogSize: Fn;
  nvrtcGetProgramLog: Fn;
  nvrtcGetCUBINSize: Fn;
  nvrtcGetCUBIN: Fn;
  nvrtcDestroyProgram: Fn;
  nvrtcGetErrorString: (rc: number) => string;
}

const NAMES = ['libnvrtc.so.13', 'libnvrtc.so.12', 'libnvrtc.so'];

function libraryDirs(): string[] {
  const dirs: string[] = [];
  for (const v of ['CUDA_HOME', 'CUDA_PATH']) {
    const root = process.env[v];
    if (root) dirs.push(join(root, 'lib64'), join(root, 'lib'));
  }
  dirs.push('/usr/local/cuda/lib64', '/usr/local/cuda/targets/x86_64-linux/lib', '/usr/lib/x86_64-linux-gnu');
  return dirs;
}

/** Load a CUDA library by soname from the loader path, then from the usual CUDA folders. */
export function loadCudaLibrary(names: string[], what: string): { lib: LibraryHandle; path: string } {
  const tried: string[] = [];
  const candidates = [...names, ...libraryDirs().flatMap((d) => names.map((n) => join(d, n)))];
  for (const path of candidates) {
    if (path.includes('/') && !existsSync(path)) continue;
    try {
      return { lib: koffi.load(path), path };
    } catch (e) {
      tried.push(`${path}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  throw new CudaError(
    `cuda backend: ${what} was not found (looked for ${names.join(', ')} on the loader path and in ` +
      `${libraryDirs().join(', ')}; set CUDA_HOME or LD_LIBRARY_PATH)` +
      (tried.length ? `\n  ${tried.join('\n  ')}` : ''),
  );
}

export class Nvrtc {
  readonly version: string;
  readonly path: string;
  private readonly raw: Raw;
  readonly cacheDir: string | null;
  /** compile statistics for describe() and benchmarks */
  compiled = 0;
  cacheHits = 0;
  compileMs = 0;

  constructor() {
    const { lib, path } = loadCudaLibrary(NAMES, 'NVRTC (the CUDA run-time compiler)');
    this.path = path;
    const f = (decl: string): Fn => lib.func(decl) as Fn;
    this.raw = {
      nvrtcVersion: f('int nvrtcVersion(_Out_ int *major, _Out_ int *minor)'),
      nvrtcCreateProgram: f(
        'int nvrtcCreateProgram(_Out_ uint64_t *prog, const char *src, const char *name, int numHeaders, const char **headers, const char **includeNames)',
      ),
      nvrtcCompileProgram: f('int nvrtcCompileProgram(uint64_t prog, int numOptions, const char **options)'),
      nvrtcGetProgramLogSize: f('int nvrtcGetProgramLogSize(uint64_t prog, _Out_ size_t *size)'),
      nvrtcGetProgramLog: f('int nvrtcGetProgramLog(uint64_t prog, _Out_ uint8_t *log)'),
      nvrtcGetCUBINSize: f('int nvrtcGetCUBINSize(uint64_t prog, _Out_ size_t *size)'),
      nvrtcGetCUBIN: f('int nvrtcGetCUBIN(uint64_t prog, _Out_ uint8_t *cubin)'),
      nvrtcDestroyProgram: f('int nvrtcDestroyProgram(_Inout_ uint64_t *prog)'),
      nvrtcGetErrorString: lib.func('const char *nvrtcGetErrorString(int result)') as (rc: number) => string,
    };
    const major = [0];
    const minor = [0];
    this.check('nvrtcVersion', this.raw.nvrtcVersion(major, minor));
    this.version = `${major[0]}.${minor[0]}`;
    const root = process.env.MOHAWK_CACHE ?? join(homedir(), '.cache', 'mohawk');
    this.cacheDir = process.env.MOHAWK_CUDA_CACHE === 'off' ? null : join(root, 'cuda');
  }

  private check(call: string, rc: number): void {
    if (rc !== 0)
      throw new CudaError(`cuda: ${call} failed: ${this.raw.nvrtcGetErrorString(rc)} (nvrtcResult ${rc})`);
  }

  private cacheFile(source: string, name: string, options: string[]): string | null {
    if (!this.cacheDir) return null;
    const key = createHash('sha256')
      .update(`${this.version}\0${options.join('\0')}\0${source}`)
      .digest('hex')
      .slice(0, 24);
    return join(this.cacheDir, `${name.replace(/[^\w.-]/g, '_')}-${key}.cubin`);
  }

  private cached(file: string | null): Uint8Array | null {
    if (!file || !existsSync(file)) return null;
    try {
      const image = readFileSync(file);
      this.cacheHits++;
      return image;
    } catch {
      return null; // unreadable cache entry: compile again
    }
  }

  private store(file: string | null, image: Uint8Array): void {
    if (!file) return;
    try {
      mkdirSync(this.cacheDir!, { recursive: true });
      const tmp = `${file}.${process.pid}.tmp`;
      writeFileSync(tmp, image);
      renameSync(tmp, file);
    } catch {
      // a read-only cache folder only costs the next start a compile
    }
  }

  /** Compile `source` to a CUBIN for the options' -arch (cached on disk). */
  compile(source: string, name: string, options: string[]): Uint8Array {
    const file = this.cacheFile(source, name, options);
    const hit = this.cached(file);
    if (hit) return hit;
    const t0 = performance.now();
    const prog = this.create(source, name);
    try {
      this.finish(prog, name, options, this.raw.nvrtcCompileProgram(prog, options.length, options));
      const image = this.cubin(prog, name);
      this.compileMs += performance.now() - t0;
      this.compiled++;
      this.store(file, image);
      return image;
    } finally {
      this.raw.nvrtcDestroyProgram([prog]);
    }
  }

  /** The same, with the compilation on a worker thread, so several modules compile at once. */
  async compileAsync(source: string, name: string, options: string[]): Promise<Uint8Array> {
    const file = this.cacheFile(source, name, options);
    const hit = this.cached(file);
    if (hit) return hit;
    const t0 = performance.now();
    const prog = this.create(source, name);
    try {
      const compile = this.raw.nvrtcCompileProgram as unknown as {
        async: (...args: unknown[]) => void;
      };
      const rc = await new Promise<number>((resolve, reject) =>
        compile.async(prog, options.length, options, (err: unknown, res: number) =>
          err ? reject(err) : resolve(res),
        ),
      );
      this.finish(prog, name, options, rc);
      const image = this.cubin(prog, name);
      this.compileMs += performance.now() - t0;
      this.compiled++;
      this.store(file, image);
      return image;
    } finally {
      this.raw.nvrtcDestroyProgram([prog]);
    }
  }

  private create(source: string, name: string): number {
    const prog = [0];
    this.check(`nvrtcCreateProgram(${name})`, this.raw.nvrtcCreateProgram(prog, source, name, 0, null, null));
    return prog[0];
  }

  private finish(prog: number, name: string, options: string[], rc: number): void {
    if (rc !== 0) {
      throw new CudaError(
        `cuda: nvrtcCompileProgram(${name}, ${options.join(' ')}) failed: ${this.raw.nvrtcGetErrorString(rc)}\n${this.log(prog)}`,
      );
    }
  }

  private cubin(prog: number, name: string): Uint8Array {
    const size = [0];
    this.check(`nvrtcGetCUBINSize(${name})`, this.raw.nvrtcGetCUBINSize(prog, size));
    const image = new Uint8Array(Number(size[0]));
    this.check(`nvrtcGetCUBIN(${name})`, this.raw.nvrtcGetCUBIN(prog, image));
    return image;
  }

  private log(prog: number): string {
    const size = [0];
    if (this.raw.nvrtcGetProgramLogSize(prog, size) !== 0) return '(no log)';
    const buf = new Uint8Array(Math.max(1, Number(size[0])));
    if (this.raw.nvrtcGetProgramLog(prog, buf) !== 0) return '(no log)';
    return Buffer.from(buf).toString('utf8').replace(/\0+$/, '');
  }
}
