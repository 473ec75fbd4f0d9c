import { randomBytes } from 'node:crypto';
import { closeSync, fchmodSync, openSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

/**
 * Puts each output at its path atomically: a temp file in the same directory, the mode clang
 * would have given it under the client's umask, then rename. Make never sees a partial object.
 */
export async function materialize(cwd: string, outputs: { path: string; data: Buffer }[], umask: number): Promise<void> {
  const mode = 0o666 & ~umask;
  for (const o of outputs) {
    const target = resolve(cwd, o.path);
    const tmp = join(dirname(target), `.${basename(target)}.ltocache-${randomBytes(6).toString('hex')}`);
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
