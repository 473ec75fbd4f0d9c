import { type BigIntStats, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { z } from 'zod';
import { DIGEST_RE, type Digest, hashBytes, hashFile } from './hash.js';

interface Memo {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  digest: Digest;
}

/** Files up to this size are read whole, synchronously (bitcode is in the page cache). */
const SMALL = 16n << 20n;
/** The bytes of the files hashed last are kept for `recent` (the asm scan reads them next). */
const RECENT_FILES = 8;

function statOrAbsent(path: string): BigIntStats | undefined {
  try {
    return statSync(path, { bigint: true, throwIfNoEntry: false });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR' || code === 'ENAMETOOLONG' || code === 'ELOOP') return undefined;
    throw e;
  }
}

function hashSmall(path: string): { digest: Digest; size: number; data: Buffer } {
  const data = readFileSync(path);
  return { digest: hashBytes(data), size: data.length, data };
}

/**
 * The digest memo as saved between daemon runs (cache-schema/file-digests.v1.json): each entry
 * is trusted again only while the file's stat identity is exactly the recorded one, as in memory.
 */
export const SavedDigests = z.object({
  v: z.literal(1),
  entries: z.array(
    z.tuple([
      z.string(),
      z.string().regex(/^\d+$/),
      z.string().regex(/^\d+$/),
      z.string().regex(/^\d+$/),
      z.string().regex(/^\d+$/),
      z.string().regex(/^\d+$/),
      z.string().regex(DIGEST_RE),
    ]),
  ),
});
export type SavedDigests = z.infer<typeof SavedDigests>;

/** `stat` following links, bigint: undefined when the path is absent or cannot be reached (any error). */
export function statOrUndefined(path: string): BigIntStats | undefined {
  try {
    return statSync(path, { bigint: true, throwIfNoEntry: false });
  } catch {
    return undefined;
  }
}

/** What stat saw when a digest was taken: the identity the memo re-checks. */
export interface StatIdentity {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

/**
 * The racy-timestamp window (docs/key.md "Memoised file hashes"): a file or directory changed in
 * the same timestamp tick as it was read keeps its stat identity, so an identity stands for what
 * was read only once its mtime and ctime are this much older than the moment of reading.
 */
export const RACY_WINDOW_NS = 2_000_000_000n;

/**
 * Stat identity without the size (device, inode, mtime, ctime): a write, a rename over the path
 * or, for a directory, an entry added or removed changes it.
 */
export function statIdentity(st: { dev: bigint; ino: bigint; mtimeNs: bigint; ctimeNs: bigint }): string {
  return `${st.dev}:${st.ino}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** Whether `st` (mtime, ctime) was settled at `atNs`: both older than `windowNs` (RACY_WINDOW_NS). */
export function settledAt(st: { mtimeNs: bigint; ctimeNs: bigint }, atNs: bigint, windowNs: bigint = RACY_WINDOW_NS): boolean {
  return st.mtimeNs < atNs - windowNs && st.ctimeNs < atNs - windowNs;
}

/** The wall clock in nanoseconds, at millisecond resolution, as file timestamps are compared with it. */
export function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

/**
 * `settled`: the file's timestamps were safely older than the moment hashing began (the
 * racy-timestamp rule), so an unchanged stat identity proves unchanged content.
 */
export type FileDigest = { kind: 'file'; digest: Digest; size: number; stat: StatIdentity; settled: boolean } | { kind: 'absent' } | { kind: 'not-regular' };

/** Anything that answers digest questions: the daemon's FileDigests, or a per-job observer of it. */
export interface DigestSource {
  digest(absPath: string): Promise<FileDigest>;
  /** The bytes that hashed to `digest` at this path, if still held: a reader that needs the
   * content of a file just digested takes it here instead of reading (and hashing) it again. */
  recent?(absPath: string, digest: Digest): Buffer | undefined;
}

/**
 * Content digests memoised by (dev, ino, size, mtime ns, ctime ns). The racy-timestamp rule: a
 * file whose mtime or ctime is not safely older than the moment hashing began may still be written
 * within the same timestamp tick, so it is hashed but not memoised. Future timestamps (clock jumps)
 * fail the same test and are never memoised.
 */
export class FileDigests implements DigestSource {
  private readonly memo = new Map<string, Memo>();
  private readonly recentBytes = new Map<string, { digest: Digest; data: Buffer }>();
  /** Large files being hashed, by path and stat identity: concurrent askers (the first jobs of a
   * fresh daemon, a prefetch's parallel memos) share one pass over a 100 MB library. */
  private readonly hashing = new Map<string, Promise<{ digest: Digest; size: number; startedNs: bigint }>>();
  /** Hashing counters, for tests and stats. */
  hashed = 0;
  memoHits = 0;

  constructor(private readonly racyWindowNs: bigint = RACY_WINDOW_NS) {}

  async digest(absPath: string, attempt = 0): Promise<FileDigest> {
    // Synchronous stat and small reads: these files are in the page cache, and a round trip
    // through the thread pool costs more than the call itself on the hit path.
    const st = statOrAbsent(absPath);
    if (!st) return { kind: 'absent' };
    if (!st.isFile()) return { kind: 'not-regular' };
    const m = this.memo.get(absPath);
    if (m && m.dev === st.dev && m.ino === st.ino && m.size === st.size && m.mtimeNs === st.mtimeNs && m.ctimeNs === st.ctimeNs) {
      this.memoHits++;
      return { kind: 'file', digest: m.digest, size: Number(st.size), stat: identity(st), settled: true };
    }
    let startedNs = nowNs();
    let read: { digest: Digest; size: number; data?: Buffer };
    if (st.size <= SMALL) read = hashSmall(absPath);
    else {
      const id = `${absPath}\0${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
      let p = this.hashing.get(id);
      if (!p) {
        const began = startedNs;
        p = hashFile(absPath)
          .then((r) => ({ ...r, startedNs: began }))
          .finally(() => this.hashing.delete(id));
        this.hashing.set(id, p);
      }
      const shared = await p;
      // The racy-timestamp rule is judged from when that pass began.
      startedNs = shared.startedNs;
      read = shared;
    }
    const { digest, size } = read;
    this.hashed++;
    if (read.data) {
      this.recentBytes.delete(absPath);
      if (this.recentBytes.size >= RECENT_FILES) this.recentBytes.delete(this.recentBytes.keys().next().value as string);
      this.recentBytes.set(absPath, { digest, data: read.data });
    }
    const after = statOrAbsent(absPath);
    const unchanged = !!after && after.size === st.size && after.mtimeNs === st.mtimeNs && after.ctimeNs === st.ctimeNs && after.ino === st.ino;
    const settled = settledAt(st, startedNs, this.racyWindowNs);
    if (unchanged && settled) {
      this.memo.set(absPath, { dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs, digest });
    } else this.memo.delete(absPath);
    if (!unchanged) {
      if (attempt >= 3) throw new Error(`${absPath} keeps changing while it is hashed`);
      return this.digest(absPath, attempt + 1);
    }
    return { kind: 'file', digest, size, stat: identity(st), settled: unchanged && settled };
  }

  recent(absPath: string, digest: Digest): Buffer | undefined {
    const r = this.recentBytes.get(absPath);
    return r?.digest === digest ? r.data : undefined;
  }

  get size(): number {
    return this.memo.size;
  }

  /** Writes the memo atomically (path.tmp + rename); `limit` keeps the file bounded. */
  save(path: string, limit = 200_000): void {
    const entries: SavedDigests['entries'] = [];
    for (const [p, m] of this.memo) {
      if (entries.length >= limit) break;
      entries.push([p, String(m.dev), String(m.ino), String(m.size), String(m.mtimeNs), String(m.ctimeNs), m.digest]);
    }
    const tmp = `${path}.tmp-${process.pid}`;
    try {
      writeFileSync(tmp, JSON.stringify({ v: 1, entries } satisfies SavedDigests), { mode: 0o600 });
      renameSync(tmp, path);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw e;
    }
  }

  /** Loads a saved memo; an unreadable or invalid file is ignored (digests are recomputed). Returns the entries taken. */
  load(path: string): number {
    let parsed: SavedDigests;
    try {
      const r = SavedDigests.safeParse(JSON.parse(readFileSync(path, 'utf8')));
      if (!r.success) return 0;
      parsed = r.data;
    } catch {
      return 0;
    }
    for (const [p, dev, ino, size, mtimeNs, ctimeNs, digest] of parsed.entries) {
      if (!this.memo.has(p)) this.memo.set(p, { dev: BigInt(dev), ino: BigInt(ino), size: BigInt(size), mtimeNs: BigInt(mtimeNs), ctimeNs: BigInt(ctimeNs), digest });
    }
    return parsed.entries.length;
  }
}

function identity(st: BigIntStats): StatIdentity {
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs };
}
