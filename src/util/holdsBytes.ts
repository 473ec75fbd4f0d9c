import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from 'node:fs';

/**
 * Whether the file at `path` is one `accept` takes (given its fstat) and holds exactly `bytes`.
 * False when it cannot be opened; a read error is thrown to the caller. With `noFollow`, a
 * symbolic link at `path` is not followed (and is never accepted).
 */
export function holdsBytes(path: string, bytes: Buffer, accept: (st: Stats) => boolean, noFollow = false): boolean {
  let fd: number;
  try {
    // Without blocking: opening a named pipe would wait for a writer.
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | (noFollow ? constants.O_NOFOLLOW : 0));
  } catch {
    return false;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size !== bytes.length || !accept(st)) return false;
    const got = Buffer.allocUnsafe(bytes.length);
    let off = 0;
    while (off < got.length) {
      const n = readSync(fd, got, off, got.length - off, off);
      if (n === 0) return false;
      off += n;
    }
    return got.equals(bytes);
  } finally {
    closeSync(fd);
  }
}
