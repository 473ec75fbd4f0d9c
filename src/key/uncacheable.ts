import { asOpened, namesProcessFile } from '../util/asOpened.js';

/**
 * Why a job is not cached. Stable names: they are the keys of `stats --json`
 * `uncacheable_by_reason` and appear in the job log (docs/key.md lists them).
 */
export const UNCACHEABLE_REASONS = [
  'not-backend',
  'inputs',
  'output',
  'not-compile',
  'unsupported-flag',
  'multiple-index',
  'multiple-output',
  'bad-args',
  'rsp-unreadable',
  'rsp-depth',
  'missing-file',
  'process-file',
  'bad-index',
  'racy-index',
  'racy-input',
  'asm-include-unresolved',
  'sanitizer-resources-unknown',
  'native-cpu-unknown',
  'windows-target',
  'config-file',
  'plugin-unresolved',
  'environment',
  'key-error',
] as const;
export type UncacheableReason = (typeof UNCACHEABLE_REASONS)[number];

/** Thrown inside the key builders only; they turn it into `{ kind: 'uncacheable' }` data. */
export class Uncacheable extends Error {
  constructor(
    readonly reason: UncacheableReason,
    readonly detail: string,
  ) {
    super(detail);
  }
}

/** `path` (from `cwd`) as the daemon looks at it (asOpened); `process-file` when it would name
 *  the daemon's own files instead of the requester's (`what` names it in the detail). */
export function openedForKey(cwd: string, path: string, what: string): string {
  const abs = asOpened(cwd, path);
  if (namesProcessFile(abs)) throw new Uncacheable('process-file', `${what} ${path} names a file through the process that opens it`);
  return abs;
}
