import { homedir } from 'node:os';
import { isAbsolute } from 'node:path';

/**
 * The cache directory, resolved exactly as the native client resolves it (client/ltocache.c):
 * LTOCACHE_DIR, else $XDG_CACHE_HOME/ltocache when absolute, else $HOME/.cache/ltocache,
 * trailing slashes stripped. The socket path is derived from this string, so both sides must agree.
 */
export function resolveCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  let dir: string;
  if (env.LTOCACHE_DIR) dir = env.LTOCACHE_DIR;
  else if (env.XDG_CACHE_HOME && isAbsolute(env.XDG_CACHE_HOME)) dir = `${env.XDG_CACHE_HOME}/ltocache`;
  else dir = `${env.HOME || homedir()}/.cache/ltocache`;
  while (dir.length > 1 && dir.endsWith('/')) dir = dir.slice(0, -1);
  if (!isAbsolute(dir)) throw new Error(`LTOCACHE_DIR must be an absolute path, got '${dir}'`);
  return dir;
}
