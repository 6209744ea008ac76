// Files that must never be seen half-written: written to a temporary file beside the target,
// flushed to the disk (fsync), renamed over the target, and the directory entry flushed too. A
// kill or a full disk at any moment leaves either the old file or the new one, never a cut one.

import fs from 'node:fs';
import path from 'node:path';

/** Write `data` to `file` atomically (temp file, fsync, rename, fsync of the directory). */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  const tmp = `${file}.tmp-${process.pid}`;
  let fd: number | null = null;
  try {
    fd = fs.openSync(tmp, 'w');
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    let off = 0;
    while (off < bytes.length) off += fs.writeSync(fd, bytes, off, bytes.length - off);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(tmp, file);
  } catch (e) {
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw new Error(`${file}: cannot write (${(e as Error).message})`, { cause: e });
  }
  fsyncDir(path.dirname(file));
}

/** JSON (two-space indent, trailing newline) written atomically. */
export function writeJsonAtomic(file: string, value: unknown): void {
  writeFileAtomic(file, JSON.stringify(value, null, 2) + '\n');
}

/** Flush a file already on disk (e.g. before renaming the directory holding it). */
export function fsyncFile(file: string): void {
  const fd = fs.openSync(file, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Flush a directory's entries (renames into it); some file systems refuse, which is harmless. */
export function fsyncDir(dir: string): void {
  let fd: number | null = null;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // not supported here (e.g. some network or Windows file systems)
  } finally {
    if (fd !== null) fs.closeSync(fd);
  }
}

/**
 * Read and parse a JSON file; null when it is absent. A file that exists but does not parse
 * (cut short, empty) throws an error naming it.
 */
export function readJsonFile<T>(file: string): T | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`${file}: cannot read (${(e as Error).message})`, { cause: e });
  }
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}
