import { randomBytes } from 'node:crypto';
import { chmod, open, rename, unlink } from 'node:fs/promises';
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
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(o.data);
      await fh.close();
      await chmod(tmp, mode);
      await rename(tmp, target);
    } catch (e) {
      await fh.close().catch(() => {});
      await unlink(tmp).catch(() => {});
      throw e;
    }
  }
}
