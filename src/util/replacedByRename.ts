import { accessSync, constants, statSync } from 'node:fs';

/**
 * Whether clang, given `path` as its output now, writes it through a temp of its own renamed over
 * it: the output is absent, or a regular file this user may write. Clang refuses an existing output
 * it may not write (its error, status 1: a rename would replace a read-only file) and writes into
 * one that is not a regular file (a FIFO, /dev/null through a symlink) in place. Whoever puts a
 * file there by rename in clang's stead must ask this first.
 */
export function replacedByRename(path: string): boolean {
  try {
    // Absent (a miss's usual case) without an exception: an Error with its stack costs more than the stat.
    const st = statSync(path, { throwIfNoEntry: false });
    if (!st) return true;
    if (!st.isFile()) return false;
    accessSync(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}
