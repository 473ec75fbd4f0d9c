import { closeSync, fchmodSync, openSync, renameSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { asOpened } from '../util/asOpened.js';
import { holdsBytes } from '../util/holdsBytes.js';
import { replacedByRename } from '../util/replacedByRename.js';
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
    // Where clang would not rename over the output, neither does a hit: the job compiles instead.
    if (!replacedByRename(target)) throw new Error(`output ${target} is not a regular file this user may write`);
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
