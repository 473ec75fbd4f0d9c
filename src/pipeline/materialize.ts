import { closeSync, fchmodSync, fstatSync, openSync, readSync, renameSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { tempSuffix } from '../util/tempSuffix.js';

/**
 * Puts each output at its path atomically: a temp file in the same directory, the mode clang
 * would have given it under the client's umask, then rename. Make never sees a partial object.
 * When the file already there has exactly these bytes and that mode (a warm rebuild), only its
 * times are updated: replacing it would cost an unlink of the old inode for the same result.
 */
export async function materialize(cwd: string, outputs: { path: string; data: Buffer }[], umask: number): Promise<void> {
  const mode = 0o666 & ~umask;
  for (const o of outputs) {
    const target = resolve(cwd, o.path);
    if (sameFile(target, o.data, mode)) {
      const now = new Date();
      utimesSync(target, now, now);
      continue;
    }
    const tmp = join(dirname(target), `.${basename(target)}.ltocache-${tempSuffix()}`);
    // Synchronous on purpose: objects are small and these calls cost less than thread-pool hops.
    const fd = openSync(tmp, 'wx', 0o600);
    try {
      writeFileSync(fd, o.data);
      fchmodSync(fd, mode);
      closeSync(fd);
      renameSync(tmp, target);
    } catch (e) {
      try {
        closeSync(fd);
      } catch {
        // already closed
      }
      rmSync(tmp, { force: true });
      throw e;
    }
  }
}

/** Is `path` a regular file, not hard-linked elsewhere, with exactly `data` and `mode`? */
function sameFile(path: string, data: Buffer, mode: number): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return false;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size !== data.length || (st.mode & 0o7777) !== mode || st.nlink !== 1) return false;
    const buf = Buffer.allocUnsafe(data.length);
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) return false;
      off += n;
    }
    return buf.equals(data);
  } finally {
    closeSync(fd);
  }
}
