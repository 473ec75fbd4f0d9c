import { type BigIntStats, readFileSync } from 'node:fs';
import type { MemoCheck } from '../memo/memoFormat.js';
import { MEMO_CONTENT_CHECK_MAX_BYTES } from '../protocol/limits.js';
import { type DigestSource, type FileDigest, nowNs, settledAt, statOrUndefined } from './fileDigests.js';
import { hashBytes } from './hash.js';

/**
 * A per-job view of the daemon's digest source that remembers every path the key builder looked
 * at and what it saw, as the checks a memo needs (docs/memo.md "Which check the daemon writes").
 * Paths are absolute. The last observation of a path wins.
 */
export class ObservingFiles implements DigestSource {
  private readonly seen = new Map<string, MemoCheck>();
  private readonly env = new Map<string, string | null>();
  private readonly byContent = new Set<string>();
  private readonly results = new Map<string, FileDigest>();
  /** A directory observed within the racy window of its last change (see memoable). */
  private unsettledDir = false;

  constructor(private readonly inner: DigestSource) {}

  async digest(absPath: string): Promise<FileDigest> {
    // One look per path and job: the key and the asm scan both ask for every imported module,
    // and what the job's key and memo record is one observation of each file anyway.
    let d = this.results.get(absPath);
    if (!d) {
      d = await this.inner.digest(absPath);
      this.results.set(absPath, d);
    }
    // Recorded again on a repeat: the path may have been marked rewritten in between.
    if (d.kind === 'absent') this.seen.set(absPath, { kind: 'absent', path: absPath });
    else if (d.kind === 'not-regular') {
      // A directory's listing check already says it is not a regular file, and more.
      if (this.seen.get(absPath)?.kind !== 'dir') this.seen.set(absPath, { kind: 'notreg', path: absPath });
    } else if (d.settled && !this.byContent.has(absPath)) this.seen.set(absPath, { kind: 'stat', path: absPath, ...d.stat, digest: d.digest });
    else this.seen.set(absPath, { kind: 'content', path: absPath, size: d.size, digest: d.digest, at: { ...d.stat, settled: d.settled } });
    return d;
  }

  recent(absPath: string, digest: string): Buffer | undefined {
    return this.inner.recent?.(absPath, digest);
  }

  /**
   * A file that builds rewrite with the same bytes (the index, which every thin link writes again;
   * response files): checked by content, since a stat identity would never match again.
   */
  rewritten(absPath: string): void {
    this.byContent.add(absPath);
  }

  /**
   * A directory whose entries were listed (an added file changes its mtime), or its absence.
   * `known` is a stat the caller already took of it (undefined: absent).
   */
  directory(absPath: string, known?: { st: BigIntStats | undefined }): void {
    const st = known ? known.st : statOrUndefined(absPath);
    if (!st) this.seen.set(absPath, { kind: 'absent', path: absPath });
    else if (!st.isDirectory()) this.seen.set(absPath, { kind: 'notreg', path: absPath });
    else {
      if (!settledAt(st, nowNs())) this.unsettledDir = true;
      this.seen.set(absPath, { kind: 'dir', path: absPath, dev: st.dev, ino: st.ino, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs });
    }
  }

  /**
   * Whether the checks may stand for this job in a memo. Not when a directory was observed within
   * the racy window of its last change: an entry added in the same timestamp tick leaves its
   * identity as it was, and a directory has no content check to fall back on (a file has). Nor
   * when a file other than a rewritten one (the index) is larger than MEMO_CONTENT_CHECK_MAX_BYTES
   * and was not settled (a toolchain installed or unpacked just now): its content check would
   * cost every hit of the memo a hash of it, for as long as the memo lasts. The job's next run
   * goes through the daemon, whose memo then checks the settled file by stat identity.
   */
  memoable(): boolean {
    if (this.unsettledDir) return false;
    for (const c of this.seen.values()) if (c.kind === 'content' && c.size > MEMO_CONTENT_CHECK_MAX_BYTES && !this.byContent.has(c.path)) return false;
    return true;
  }

  /** An environment variable the key read (undefined = unset). */
  environment(name: string, value: string | undefined): void {
    this.env.set(name, value ?? null);
  }

  checks(): MemoCheck[] {
    const envChecks: MemoCheck[] = [...this.env].map(([name, value]) => ({ kind: 'env', name, value }));
    return [...envChecks, ...this.seen.values()];
  }
}

/** Whether an environment check holds for a job's environment. */
export function envCheckHolds(c: Extract<MemoCheck, { kind: 'env' }>, env: Record<string, string>): boolean {
  return (env[c.name] ?? null) === c.value;
}

/**
 * The first file the key read whose stat identity is no longer the one it had when it was hashed,
 * or null. After a compile this tells whether clang may have read other bytes than the key's: a
 * file rewritten in place while clang ran and then given its old bytes back (lld truncates and
 * rewrites every index on each thin link) passes a content check, never this one.
 * Any write after the hash sets a later ctime, provided a timestamp tick (≤ 10 ms with the Linux
 * coarse clock) is shorter than the time from keying to clang opening its inputs (≥ 10 ms: the
 * client's fork and clang's start-up). Timestamps in whole seconds (a coarse file system) give no
 * such proof for a file that was not settled when hashed: that file counts as moved, as does a
 * check without its identity.
 */
export function untouchedSinceKeyed(checks: readonly MemoCheck[]): string | null {
  for (const c of checks) {
    if (c.kind !== 'content' && c.kind !== 'stat') continue;
    const at = c.kind === 'stat' ? { ...c, settled: true } : c.at;
    if (!at || (!at.settled && at.mtimeNs % 1_000_000_000n === 0n && at.ctimeNs % 1_000_000_000n === 0n)) return c.path;
    const st = statOrUndefined(c.path);
    if (!st || st.dev !== at.dev || st.ino !== at.ino || st.size !== at.size || st.mtimeNs !== at.mtimeNs || st.ctimeNs !== at.ctimeNs) return c.path;
  }
  return null;
}

/**
 * Whether every observation still holds now (the same test the native client applies to a memo):
 * then the key computed from them is unchanged, without computing it again. `env` is the job's.
 */
export function checksHold(checks: readonly MemoCheck[], env: Record<string, string>): boolean {
  for (const c of checks) {
    if (c.kind === 'env') {
      if (!envCheckHolds(c, env)) return false;
      continue;
    }
    const st = statOrUndefined(c.path);
    switch (c.kind) {
      case 'absent':
        if (st) return false;
        break;
      case 'notreg':
        if (!st || st.isFile()) return false;
        break;
      case 'stat':
        if (!st?.isFile() || st.dev !== c.dev || st.ino !== c.ino || st.size !== c.size || st.mtimeNs !== c.mtimeNs || st.ctimeNs !== c.ctimeNs) return false;
        break;
      case 'dir':
        if (!st?.isDirectory() || st.dev !== c.dev || st.ino !== c.ino || st.mtimeNs !== c.mtimeNs || st.ctimeNs !== c.ctimeNs) return false;
        break;
      case 'content': {
        if (!st?.isFile() || Number(st.size) !== c.size) return false;
        let data: Buffer;
        try {
          data = readFileSync(c.path);
        } catch {
          return false;
        }
        if (hashBytes(data) !== c.digest) return false;
        break;
      }
    }
  }
  return true;
}
