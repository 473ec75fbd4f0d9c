import { homedir } from 'node:os';
import { isAbsolute } from 'node:path';

/** Strips trailing slashes, keeping a lone "/". */
export function stripTrailingSlashes(dir: string): string {
  let n = dir.length;
  while (n > 1 && dir[n - 1] === '/') n--;
  return dir.slice(0, n);
}

/**
 * The cache directory rule of the native client (client/ltocache.c): $LTOCACHE_DIR if non-empty,
 * else $XDG_CACHE_HOME/ltocache if XDG_CACHE_HOME is absolute, else $HOME/.cache/ltocache,
 * trailing slashes stripped. `home` stands in for an empty HOME. The result may be relative.
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
