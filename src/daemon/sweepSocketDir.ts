import { lstat, readdir, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { SILENT_MARKER_SUFFIX, START_FAILURE_MARKER_SUFFIX } from '../protocol/limits.js';

/** Entries of the socket directory younger than this are left alone: a daemon may be between its
 * socket's bind and listen, and a marker is only read for START_FAILURE_MEMORY_S anyway. */
export const SWEEP_MIN_AGE_MS = 60 * 60_000;
/** Entries looked at per sweep, so that a directory grown huge costs a start a bounded time. */
const SWEEP_MAX_ENTRIES = 10_000;
const NAME = new RegExp(`^[0-9a-f]{16}(\\.sock|${[START_FAILURE_MARKER_SUFFIX, SILENT_MARKER_SUFFIX].map((x) => x.replace('.', '\\.')).join('|')})$`);

export interface SweepResult {
  removed: string[];
}

/**
 * Removes what dead daemons and old failed starts left in the socket directory (one per cache
 * directory ever used: a test suite or a CI fleet of cache directories leaves thousands): the
 * clients' `.startfail`/`.silent` markers older than SWEEP_MIN_AGE_MS, and sockets that old on
 * which nothing listens (a daemon that was killed). A socket that accepts a connection is kept,
 * whatever its age; so is anything not named as ltocache names its files, `ownSocket`, and every
 * entry whose identity changed between the look and the unlink. Never throws.
 */
export async function sweepSocketDir(dir: string, ownSocket: string, now = Date.now()): Promise<SweepResult> {
  const removed: string[] = [];
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return { removed };
  }
  for (const name of names.slice(0, SWEEP_MAX_ENTRIES)) {
    const m = NAME.exec(name);
    const path = join(dir, name);
    if (!m || path === ownSocket) continue;
    const st = await lstat(path).catch(() => null);
    if (!st || now - st.mtimeMs < SWEEP_MIN_AGE_MS) continue;
    const isSocket = m[1] === '.sock';
    if (isSocket ? !st.isSocket() : !st.isFile()) continue;
    if (isSocket && (await listening(path))) continue;
    const again = await lstat(path).catch(() => null);
    if (!again || again.ino !== st.ino || again.mtimeMs !== st.mtimeMs) continue;
    if (
      await unlink(path).then(
        () => true,
        () => false,
      )
    )
      removed.push(name);
  }
  return { removed };
}

/** Whether a process accepts connections on the Unix socket `path` (only ECONNREFUSED says no). */
function listening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code !== 'ECONNREFUSED'));
  });
}
