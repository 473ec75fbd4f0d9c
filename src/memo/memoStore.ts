import { lstatSync, mkdirSync, renameSync, rmSync, type Stats, statSync, writeFileSync } from 'node:fs';
import { lstat, open, readdir, rename, rm, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { type Digest, hashBytes } from '../key/hash.js';
import { MEMO_MAX_BYTES } from '../protocol/limits.js';
import { holdsBytes } from '../util/holdsBytes.js';
import { tempSuffix } from '../util/tempSuffix.js';
import { DIST_MEMO_MAGIC, type DistMemo, decodeDistMemo, encodeDistMemo } from './distMemo.js';
import { decodeMemo, encodeMemo, type Memo, type MemoOutput, memoDir, memoPath, noticeLogPath } from './memoFormat.js';
import { teamPackPath } from './teamPack.js';

/** A regular file of `size` bytes, mode 0600, ours: what the client accepts as a memo. */
function privateFile(st: Stats, size: number): boolean {
  return st.isFile() && st.size === size && (st.mode & 0o777) === 0o600 && st.uid === process.getuid?.();
}

/**
 * Whether the memo at `path` is already these bytes (a memo written before a restart): reading a
 * small file costs less than writing and renaming it again.
 */
function sameFile(path: string, bytes: Buffer): boolean {
  try {
    return holdsBytes(path, bytes, (st) => privateFile(st, bytes.length), true);
  } catch {
    return false;
  }
}

/** Where a memo's blobs are: the local store's content-addressed files. */
export type BlobPath = (digest: Digest) => string;

/** `pack`: the client served the hit from the team pack (a `P` line), not from a memo file (`H`). */
export type MemoNotice = { key: string; lookup: Digest; startMs: number; endMs: number; pack: boolean };

/**
 * The daemon's side of the memo (docs/memo.md): writes memos atomically into private directories,
 * removes them by key (a `verify` mismatch, a denied key) or all at once (`clear`), and drains the
 * client's hit notices.
 */
export class MemoStore {
  private readonly byKey = new Map<string, Set<Digest>>();
  /** Content digest of the memo this process last wrote for each lookup (bounded). */
  private readonly written = new Map<Digest, Digest>();
  /** Bytes of the live notice log already read. */
  logOffset = 0;
  /** Bytes of the log renamed aside already read, while it waits for its last appends. */
  private asideOffset: number | null = null;
  private ready = false;
  /** The drain in progress, if any (drains run one after another). */
  private draining: Promise<void> = Promise.resolve();
  /** Keys of the memos in the team pack this process wrote last: removing one removes the pack. */
  private packKeys = new Set<string>();
  /** Shard directories made by this process (`clear` removes them). */
  private readonly shards = new Set<string>();

  constructor(
    private readonly cacheDir: string,
    private readonly blobPath: BlobPath,
  ) {}

  /** Synchronous: at most 257 calls per process, each cheaper than a thread-pool round trip. */
  private ensureDirs(shard: string): void {
    if (this.shards.has(shard)) return;
    this.ensureMemoDir();
    mkdirSync(shard, { recursive: true, mode: 0o700 });
    this.shards.add(shard);
  }

  private ensureMemoDir(): void {
    if (this.ready) return;
    mkdirSync(memoDir(this.cacheDir), { recursive: true, mode: 0o700 });
    this.ready = true;
  }

  /**
   * Replaces the team pack (cache-schema/teampack.v1.md) with these pieces (encodeTeamPack's),
   * atomically: a client sees the old pack or the new one whole, never a partial one. `keys`
   * are the keys its memos name: removing any of them (removeKey) removes the pack.
   */
  async writePack(pieces: Buffer[], keys: readonly string[] = []): Promise<void> {
    const path = teamPackPath(this.cacheDir);
    const tmp = `${path}.tmp-${tempSuffix()}`;
    const create = () => open(tmp, 'wx', 0o600);
    this.ensureMemoDir();
    let fh: Awaited<ReturnType<typeof open>> | undefined;
    try {
      try {
        fh = await create();
      } catch (e) {
        // The memo directory was removed behind our back: make it again, once.
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        this.ready = false;
        this.ensureMemoDir();
        fh = await create();
      }
      const want = pieces.reduce((n, p) => n + p.length, 0);
      const { bytesWritten } = await fh.writev(pieces);
      if (bytesWritten !== want) throw new Error(`team pack: wrote ${bytesWritten} of ${want} bytes`);
      await fh.close();
      fh = undefined;
      await rename(tmp, path);
      this.packKeys = new Set(keys);
    } catch (e) {
      await fh?.close().catch(() => {});
      await rm(tmp, { force: true });
      throw e;
    }
  }

  /** Removes a pack left by an earlier process, which holds memos of keys this one cannot remove by key. */
  removeStalePack(): void {
    rmSync(teamPackPath(this.cacheDir), { force: true });
  }

  async removePack(): Promise<void> {
    this.packKeys.clear();
    await unlink(teamPackPath(this.cacheDir)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
    });
  }

  /**
   * Writes the memo for a command unless one of its blobs is not in the local store yet (the
   * client would only fall back), the same memo is already in place, or (given
   * `unlessNewerThanMs`) the memo file in place was written after that time. `batch`: one of many
   * memos sharing check objects (a team pack's), see encodeMemo.
   */
  async write(lookup: Digest, memo: Memo, unlessNewerThanMs?: number, batch = false): Promise<'written' | 'unchanged' | 'no-blob' | 'newer'> {
    if (unlessNewerThanMs !== undefined) {
      const st = lstatSync(memoPath(this.cacheDir, lookup), { throwIfNoEntry: false });
      if (st?.isFile() && st.mtimeMs > unlessNewerThanMs) return 'newer';
    }
    return this.writeBytes(lookup, memo.outputs, () => encodeMemo(memo, batch), [memo.key]);
  }

  /** Writes a distribution memo (docs/dtlto.md); removed with any of its jobs' keys. */
  async writeDist(lookup: Digest, memo: DistMemo): Promise<'written' | 'unchanged' | 'no-blob'> {
    return this.writeBytes(
      lookup,
      memo.jobs.flatMap((j) => j.outputs),
      () => encodeDistMemo(memo),
      memo.jobs.map((j) => j.key),
    );
  }

  private async writeBytes(lookup: Digest, outputs: readonly MemoOutput[], encode: () => Buffer, keys: readonly string[]): Promise<'written' | 'unchanged' | 'no-blob'> {
    // Synchronous file calls: a few small files, and each thread-pool round trip would cost the
    // daemon's one thread more than the call itself.
    for (const o of outputs) {
      const st = statSync(this.blobPath(o.digest), { throwIfNoEntry: false });
      if (!st?.isFile() || st.size !== o.size) return 'no-blob';
    }
    const path = memoPath(this.cacheDir, lookup);
    const bytes = encode();
    // A daemon-path hit of a command whose memo is already these bytes, private and ours (the
    // client skipped it by choice, `LTOCACHE_MEMO=0`, or raced us) needs no second write.
    const digest = hashBytes(bytes);
    if (this.written.get(lookup) === digest ? this.inPlace(path, bytes.length) : sameFile(path, bytes)) {
      this.remember(lookup, digest, keys);
      return 'unchanged';
    }
    this.ensureDirs(dirname(path));
    const tmp = `${path}.tmp-${tempSuffix()}`;
    try {
      try {
        writeFileSync(tmp, bytes, { mode: 0o600, flag: 'wx' });
      } catch (e) {
        // The shard directory was removed behind our back: make it again, once.
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        this.shards.delete(dirname(path));
        this.ensureDirs(dirname(path));
        writeFileSync(tmp, bytes, { mode: 0o600, flag: 'wx' });
      }
      renameSync(tmp, path);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw e;
    }
    this.remember(lookup, digest, keys);
    return 'written';
  }

  private inPlace(path: string, size: number): boolean {
    const st = statSync(path, { throwIfNoEntry: false });
    return !!st && privateFile(st, size);
  }

  private remember(lookup: Digest, digest: Digest, keys: readonly string[]): void {
    if (this.written.size >= 50_000) this.written.clear();
    this.written.set(lookup, digest);
    for (const key of keys) {
      let set = this.byKey.get(key);
      if (!set) this.byKey.set(key, (set = new Set()));
      set.add(lookup);
    }
  }

  /** A memo the client wrote itself after a miss (docs/protocol.md, 'S'): removed with its key. */
  adopted(lookup: Digest, key: string): void {
    this.written.delete(lookup);
    let set = this.byKey.get(key);
    if (!set) this.byKey.set(key, (set = new Set()));
    set.add(lookup);
  }

  async remove(lookup: Digest): Promise<void> {
    this.written.delete(lookup);
    await unlink(memoPath(this.cacheDir, lookup)).catch(() => {});
  }

  /** Removes every memo this daemon wrote for a key; others written before a restart name the same key and are found by their blobs' absence or removed by `clear`. */
  async removeKey(key: string): Promise<void> {
    if (this.packKeys.has(key)) await this.removePack();
    const set = this.byKey.get(key);
    this.byKey.delete(key);
    for (const lookup of set ?? []) await this.remove(lookup);
  }

  /**
   * Removes what no client can use: memos that do not parse or name a blob the store no longer has
   * (their entries evicted or cleared under an earlier process, whose key-to-memo map went with it:
   * left alone, `memo/` would grow with every command ever run), memos of a key `denied` (a
   * `verify` mismatch under an earlier process), and temps older than
   * STALE_TEMP_MS (a writer killed mid-write, the team pack's included). A shard at a time,
   * yielding between shards. A memo rewritten while it is looked at is left alone. Returns how
   * many files were removed.
   */
  async sweep(denied: (key: string) => boolean = () => false, now = Date.now()): Promise<number> {
    const dir = memoDir(this.cacheDir);
    let removed = 0;
    const staleTemp = (name: string, path: string) => name.includes('.tmp-') && (lstatSync(path, { throwIfNoEntry: false })?.mtimeMs ?? now) < now - STALE_TEMP_MS;
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (name.startsWith('team.pack') && staleTemp(name, join(dir, name)) && (await unlinked(join(dir, name)))) removed++;
      if (!/^[0-9a-f]{2}$/.test(name)) continue;
      for (const file of await readdir(join(dir, name)).catch(() => [] as string[])) {
        const path = join(dir, name, file);
        if (staleTemp(file, path)) {
          if (await unlinked(path)) removed++;
        } else if (/^[0-9a-f]{30}$/.test(file) && !(await this.usable(path, denied))) {
          this.written.delete(`${name}${file}`);
          removed++;
        }
      }
      await new Promise((r) => setImmediate(r));
    }
    return removed;
  }

  /** Whether the memo at `path` parses, has all its blobs and no denied key; if not, it is removed (unless it was replaced meanwhile). */
  private async usable(path: string, denied: (key: string) => boolean): Promise<boolean> {
    let fh: Awaited<ReturnType<typeof open>> | undefined;
    let ino: number;
    let bytes: Buffer;
    try {
      fh = await open(path, 'r');
      const st = await fh.stat();
      if (!st.isFile() || st.size > MEMO_MAX_BYTES) return true;
      ino = st.ino;
      bytes = await fh.readFile();
    } catch {
      return true;
    } finally {
      await fh?.close().catch(() => {});
    }
    let jobs: readonly { key: string; outputs: readonly MemoOutput[] }[] = [];
    try {
      jobs = bytes.subarray(0, DIST_MEMO_MAGIC.length).equals(DIST_MEMO_MAGIC) ? decodeDistMemo(bytes).jobs : [decodeMemo(bytes)];
    } catch {}
    const blobHeld = (o: MemoOutput) => statSync(this.blobPath(o.digest), { throwIfNoEntry: false })?.size === o.size;
    if (jobs.length && jobs.every((j) => !denied(j.key) && j.outputs.every(blobHeld))) return true;
    if (lstatSync(path, { throwIfNoEntry: false })?.ino !== ino) return true;
    return !(await unlinked(path));
  }

  async clear(): Promise<void> {
    this.byKey.clear();
    this.written.clear();
    this.shards.clear();
    const dir = memoDir(this.cacheDir);
    for (const n of await readdir(dir).catch(() => [] as string[])) {
      if (/^[0-9a-f]{2}$/.test(n)) await rm(join(dir, n), { recursive: true, force: true });
    }
    await this.removePack();
  }

  /**
   * Reads the notices appended since the last call; `logOffset` (persisted by the owner) says how
   * far the log has been read, so a restarted daemon does not count a notice twice. The live log
   * is never truncated under the clients' appends: past ROTATE_BYTES it is renamed aside and what
   * was still appended to it is read at the next drain. Malformed lines are skipped (a torn append
   * loses one counter, never an object).
   */
  drain(): Promise<MemoNotice[]> {
    // One drain at a time: two overlapping reads from the same offset would count notices twice.
    const run = this.draining.then(() => this.drainOnce());
    this.draining = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  private async drainOnce(): Promise<MemoNotice[]> {
    const path = noticeLogPath(this.cacheDir);
    const aside = `${path}.old`;
    const out: MemoNotice[] = [];
    if (this.asideOffset !== null) {
      const r = await readFrom(aside, this.asideOffset);
      if (r) out.push(...parseNotices(r.text));
      await unlink(aside).catch(() => {});
      this.asideOffset = null;
    }
    const st = await lstat(path).catch(() => null);
    if (!st?.isFile()) return out;
    if (st.size < this.logOffset) this.logOffset = 0;
    const r = await readFrom(path, this.logOffset);
    if (r) {
      this.logOffset += r.consumed;
      out.push(...parseNotices(r.text));
    }
    if (this.logOffset >= ROTATE_BYTES) {
      await rename(path, aside).then(
        () => {
          this.asideOffset = this.logOffset;
          this.logOffset = 0;
        },
        () => {},
      );
    }
    return out;
  }
}

/** A temp this old is a writer's that was killed (a memo is written in microseconds, a team pack in well under a second). */
const STALE_TEMP_MS = 60 * 60 * 1000;

async function unlinked(path: string): Promise<boolean> {
  return unlink(path).then(
    () => true,
    () => false,
  );
}

const ROTATE_BYTES = 1 << 20;
/** At most this much of the log is read per drain; the rest waits for the next. */
const MAX_READ = 4 << 20;

/** Reads whole lines from `offset`: the text and how many bytes it spans. Null if unreadable. */
async function readFrom(path: string, offset: number): Promise<{ text: string; consumed: number } | null> {
  let fh: Awaited<ReturnType<typeof open>> | undefined;
  try {
    fh = await open(path, 'r');
    const size = (await fh.stat()).size;
    const n = Math.max(0, Math.min(size - offset, MAX_READ));
    if (n === 0) return { text: '', consumed: 0 };
    const buf = Buffer.alloc(n);
    const { bytesRead } = await fh.read(buf, 0, n, offset);
    const text = buf.toString('latin1', 0, bytesRead);
    const end = text.lastIndexOf('\n') + 1;
    return { text: text.slice(0, end), consumed: end };
  } catch {
    return null;
  } finally {
    await fh?.close().catch(() => {});
  }
}

function parseNotices(text: string): MemoNotice[] {
  const out: MemoNotice[] = [];
  for (const line of text.split('\n')) {
    const m = /^([HP]) ([0-9a-f]{32}) ([0-9a-f]{32}) (\d{1,15}) (\d{1,15})$/.exec(line);
    if (m) out.push({ key: m[2]!, lookup: m[3]!, startMs: Number(m[4]), endMs: Number(m[5]), pack: m[1] === 'P' });
  }
  return out;
}
