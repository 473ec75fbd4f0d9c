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
