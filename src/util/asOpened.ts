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
