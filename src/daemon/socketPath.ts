import { lstat, mkdir } from 'node:fs/promises';

/**
 * Makes sure the socket directory is private to this user: a real directory (not a link), owned by
 * us, with no group/other permission bits. Anything else is refused, because whoever controls the
 * directory could impersonate the daemon and serve objects.
 */
export async function ensurePrivateDir(dir: string, uid: number): Promise<void> {
  try {
    await mkdir(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  const st = await lstat(dir);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
  if (st.uid !== uid) throw new Error(`${dir} is owned by uid ${st.uid}, not ${uid}; refusing to use it`);
  if ((st.mode & 0o077) !== 0) throw new Error(`${dir} has mode ${(st.mode & 0o777).toString(8)}; it must be 0700`);
}
