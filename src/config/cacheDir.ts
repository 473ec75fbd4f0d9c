import { realpathSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute } from 'node:path';

/** Strips trailing slashes, keeping a lone "/". */
export function stripTrailingSlashes(dir: string): string {
  let n = dir.length;
  while (n > 1 && dir[n - 1] === '/') n--;
  return dir.slice(0, n);
}

/**
 * The cache directory rule of the native client (client/daemon_conn.c cache_dir): $LTOCACHE_DIR
 * if non-empty, else $XDG_CACHE_HOME/ltocache if XDG_CACHE_HOME is absolute, else
 * $HOME/.cache/ltocache, trailing slashes stripped. `home` stands in for an empty HOME. The result may be relative.
 */
function cacheDirRule(env: NodeJS.ProcessEnv, home: string | undefined): string | undefined {
  let dir: string;
  if (env.LTOCACHE_DIR) dir = env.LTOCACHE_DIR;
  else if (env.XDG_CACHE_HOME && isAbsolute(env.XDG_CACHE_HOME)) dir = `${env.XDG_CACHE_HOME}/ltocache`;
  else if (env.HOME || home) dir = `${env.HOME || home}/.cache/ltocache`;
  else return undefined;
  return stripTrailingSlashes(dir);
}

/**
 * The cache directory of the daemon and CLI: the native client's rule, with the home directory
 * of the user when HOME is empty. The socket path is derived from this string, so both sides
 * must agree. Throws when the result is not absolute.
 */
export function resolveCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const dir = cacheDirRule(env, homedir())!;
  if (!isAbsolute(dir)) throw new Error(`LTOCACHE_DIR must be an absolute path, got '${dir}'`);
  return dir;
}

/**
 * The cache directory exactly as the native client derives it: undefined when HOME is needed and
 * empty, or when the result is not absolute (the client then never contacts a daemon).
 */
export function clientCacheDir(env: NodeJS.ProcessEnv): string | undefined {
  const dir = cacheDirRule(env, undefined);
  return dir?.startsWith('/') ? dir : undefined;
}

/**
 * What the daemon's socket is named after (socketPathFor): the cache directory's real path, so
 * every spelling of it (`//`, a symbolic link, HOME with a trailing slash) reaches one daemon.
 * While it does not exist: the real path of its longest existing ancestor with the rest appended
 * (empty and `.` components skipped, `..` dropping the one before), which is its real path once
 * made. The native client derives the same (client/daemon_conn.c socket_dir_name).
 */
export function socketDirName(dir: string): string {
  let head = dir;
  let real: string | undefined;
  for (;;) {
    try {
      real = realpathSync.native(head);
      break;
    } catch {
      const slash = head.lastIndexOf('/');
      if (slash < 0 || head === '/') return dir;
      head = slash === 0 ? '/' : head.slice(0, slash);
    }
  }
  const parts = real === '/' ? [] : real.slice(1).split('/');
  for (const c of dir.slice(head.length).split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') parts.pop();
    else parts.push(c);
  }
  return `/${parts.join('/')}`;
}
