import { resolve } from 'node:path';

const DOT_DOT = /(^|\/)\.\.(\/|$)/;

/**
 * `p` (relative to `cwd`, or absolute) as an absolute path that the kernel resolves to the same
 * file clang opens under `p` from `cwd`, now and whenever it is looked at again. Lexical
 * normalisation (path.resolve) is exact except for a `..` after a symbolic link (`sub/../x`
 * with `sub -> /elsewhere/inner` opens `/elsewhere/x`, not `cwd/x`): a path with a `..`
 * component keeps its components as written, so each later stat follows the link as clang would.
 * `cwd` must be the physical working directory (getcwd), as the client sends it.
 */
export function asOpened(cwd: string, p: string): string {
  if (!DOT_DOT.test(p)) return resolve(cwd, p);
  if (p.startsWith('/')) return p;
  return cwd.endsWith('/') ? `${cwd}${p}` : `${cwd}/${p}`;
}

const PROCESS_PATH = /^\/(proc\/|dev\/(fd(\/|$)|stdin$|stdout$|stderr$))/;

/**
 * Whether an absolute path (as asOpened gives it) names a file through the process that opens
 * it: `/dev/fd/N`, `/dev/stdin` and the like, anything under `/proc`. The daemon opening such a
 * path reads its own descriptors, not the requesting client's (`clang @<(gen-flags)` passes
 * `@/dev/fd/63`), so a job naming one is never keyed.
 */
export function namesProcessFile(abs: string): boolean {
  return PROCESS_PATH.test(abs) || PROCESS_PATH.test(resolve(abs));
}
