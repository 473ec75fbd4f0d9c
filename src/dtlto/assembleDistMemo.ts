import type { Digest } from '../key/hash.js';
import { pidHex } from '../key/linkNames.js';
import { type DistMemo, type DistMemoJob, distLookupDigest, distToken, normalizeForToken, TOKEN_BYTE } from '../memo/distMemo.js';
import type { Memo, MemoCheck } from '../memo/memoFormat.js';

/** One job of a finished distribution, as the pipeline memoised it. */
export interface MemoisedJob {
  memo: Memo;
  lookup: Digest;
  /** What the job's key was computed from (the keyed part of its manifest). */
  keyed: unknown;
  /** The job's own inputs in the file, absolute. */
  inputs: readonly string[];
}

export type DistMemoPlan = { kind: 'memo'; lookup: Digest; memo: DistMemo } | { kind: 'skip'; reason: string };

/** A check's values, to tell two jobs' observations of one name apart. */
function observed(c: MemoCheck): string {
  switch (c.kind) {
    case 'stat':
      return `${c.dev}:${c.ino}:${c.size}:${c.mtimeNs}:${c.ctimeNs}`;
    case 'content':
      return `${c.size}:${c.digest}`;
    case 'dir':
      return `${c.dev}:${c.ino}:${c.mtimeNs}:${c.ctimeNs}`;
    case 'env':
      return c.value === null ? '\0unset' : `=${c.value}`;
    default:
      return '';
  }
}

/**
 * The distribution memo of a link whose every job succeeded, or why there is none. It is sound to
 * serve the same memo for another link whose file differs only by the token (docs/dtlto.md):
 * - no job's key material names the token, so renaming it cannot change a key;
 * - every file name holding the token that a key read is re-checked under the new token;
 * - every input the file names with the token is such a checked file (the daemon would refuse a
 *   link whose input is missing);
 * - the compiler is a path, not a name looked up on PATH (the lookup does not cover PATH).
 * Jobs that observed one name differently (a file changed during the link) leave no memo.
 */
export function assembleDistMemo(o: {
  cwd: string;
  fileArg: string;
  bytes: Buffer;
  compilerName: string;
  /** `common.inputs`, absolute. */
  commonInputs: readonly string[];
  jobs: readonly (MemoisedJob | undefined)[];
}): DistMemoPlan {
  const skip = (reason: string): DistMemoPlan => ({ kind: 'skip', reason });
  if (o.jobs.length === 0) return skip('no jobs');
  if (!o.compilerName.includes('/')) return skip('the compiler is looked up on PATH');
  if (o.bytes.includes(1)) return skip('the file holds a 0x01 byte');
  const token = distToken(o.fileArg);
  // Indexes name such inputs, so their bytes, checked by content, differ in every link.
  if (token !== null && o.bytes.includes(`.${pidHex(token)}.o`)) return skip('the link wrote inputs under names with its PID');
  const holdsToken = (s: string) => token !== null && s.includes(`.${token}.`);
  const norm = (s: string) => normalizeForToken(s, token);
  const checks = new Map<string, MemoCheck>();
  const seen = new Map<string, string>();
  const checkedPaths = new Set<string>();
  const jobs: DistMemoJob[] = [];
  for (const [n, j] of o.jobs.entries()) {
    if (!j) return skip(`job ${n} left no memo`);
    if (holdsToken(JSON.stringify(j.keyed))) return skip(`job ${n}: its key names the link's token`);
    for (const c of j.memo.checks) {
      let check = c;
      if (c.kind !== 'env') {
        if (c.path.includes(TOKEN_BYTE)) return skip(`a checked path holds a 0x01 byte`);
        check = { ...c, path: norm(c.path) };
        checkedPaths.add(check.path);
      }
      const id = `${check.kind}\0${check.kind === 'env' ? check.name : check.path}`;
      const values = observed(check);
      const before = seen.get(id);
      if (before === undefined) {
        seen.set(id, values);
        checks.set(id, check);
      } else if (before !== values) return skip(`jobs saw ${id.slice(id.indexOf('\0') + 1)} differently`);
    }
    const outputs = [];
    for (const out of j.memo.outputs) {
      if (out.path.includes(TOKEN_BYTE)) return skip('an output path holds a 0x01 byte');
      outputs.push({ ...out, path: norm(out.path) });
    }
    jobs.push({ key: j.memo.key, lookup: j.lookup, outputs, stdout: j.memo.stdout, stderr: j.memo.stderr });
  }
  for (const input of [...o.commonInputs, ...o.jobs.flatMap((j) => j!.inputs)]) {
    if (holdsToken(input) && !checkedPaths.has(norm(input))) return skip(`input ${input} names the link's token and no key read it`);
  }
  return { kind: 'memo', lookup: distLookupDigest(o.cwd, o.bytes, token), memo: { checks: [...checks.values()], jobs } };
}

/** Gathers a distribution's job memos as the pipeline hands them over (hits at once, misses once stored). */
export class DistMemoCollector {
  private readonly memos: ({ memo: Memo; lookup: Digest } | undefined)[] = [];
  private readonly keys: ({ keyed: unknown; inputs: readonly string[] } | undefined)[] = [];
  private left: number;
  private resolve: () => void = () => {};
  /** Resolves once every job has handed over its memo. */
  readonly complete: Promise<void>;

  constructor(private readonly n: number) {
    this.left = n;
    this.complete = new Promise((r) => {
      this.resolve = r;
    });
    if (n === 0) this.resolve();
  }

  add(job: { n: number }, memo: Memo, lookup: Digest): void {
    if (this.memos[job.n]) return;
    this.memos[job.n] = { memo, lookup };
    if (--this.left === 0) this.resolve();
  }

  keyed(job: { n: number; inputs: readonly string[] }, keyed: unknown): void {
    this.keys[job.n] = { keyed, inputs: job.inputs };
  }

  jobs(): (MemoisedJob | undefined)[] {
    return Array.from({ length: this.n }, (_, i) => {
      const m = this.memos[i];
      const k = this.keys[i];
      return m && k ? { ...m, ...k } : undefined;
    });
  }
}
