import { closeSync, constants, fstatSync, openSync, readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';

/**
 * The bytes of `path` when it is a regular file, else null. Opened without blocking and checked
 * before anything is read: a named pipe's data is its reader's (clang's), and opening one would
 * wait for a writer.
 */
export async function readRegularFile(path: string): Promise<Buffer | null> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    if (!(await fh.stat()).isFile()) return null;
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

/** readRegularFile, synchronously (a file just written, in the page cache). */
export function readRegularFileSync(path: string): Buffer | null {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    if (!fstatSync(fd).isFile()) return null;
    return readFileSync(fd);
  } finally {
    closeSync(fd);
  }
}
