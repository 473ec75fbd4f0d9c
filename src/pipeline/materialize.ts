import { accessSync, closeSync, constants, fchmodSync, openSync, renameSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { statOrUndefined } from '../key/fileDigests.js';
import { asOpened } from '../util/asOpened.js';
import { holdsBytes } from '../util/holdsBytes.js';
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
    const target = asOpened(cwd, o.path);
    // clang refuses an existing output it may not write (its error, status 1), and writes into
    // one that is not a regular file (a FIFO, /dev/null through a symlink) in place; a rename would
    // replace either, so the job compiles instead.
    const existing = statOrUndefined(target);
    if (existing && !existing.isFile()) throw new Error(`output ${target} is not a regular file`);
    if (existing) accessSync(target, constants.W_OK);
    // Already there: a regular file with this mode, no other hard link, exactly these bytes.
    if (holdsBytes(target, o.data, (st) => (st.mode & 0o7777) === mode && st.nlink === 1)) {
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
