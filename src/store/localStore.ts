import type { AbstractSublevel } from 'abstract-level';
import { Level } from 'level';
import { z } from 'zod';
import { DIGEST_RE, type Digest, hashBytes, initHash } from '../key/hash.js';
import type { CacheBackend, DeleteResult, Lookup, PutOptions, PutResult, StoredEntry } from './backend.js';
import { BlobStore } from './blobStore.js';
import { layoutPaths, prepareLayout, SUBLEVELS } from './layout.js';
import { EntryRecord } from './record.js';
import { parseStoreOptions, type ResolvedStoreOptions, type StoreOptionsInput } from './storeOptions.js';

type Db = Level<string, string>;
type Sub = AbstractSublevel<Db, string | Buffer | Uint8Array, string, string>;
type BatchOp = { type: 'put'; sublevel: Sub; key: string; value: string } | { type: 'del'; sublevel: Sub; key: string };

/** Unreferenced blob files younger than this survive the start-up sweep (see sweep). */
export const ORPHAN_GRACE_MS = 10 * 60_000;

/** A sublevel of the store's LevelDB handed to other components; values are JSON. */
export type StoreSublevel<V> = AbstractSublevel<Db, string | Buffer | Uint8Array, string, V>;

/** Bookkeeping kept beside each record. `blobs` lists distinct digests, so refs can be released even if the record is unreadable. */
const EntryInfo = z.object({
  atime: z.number().int().nonnegative(),
  /** Bytes of the record JSON; blob bytes are accounted once per blob in `refs`. */
  bytes: z.number().int().nonnegative(),
  blobs: z.array(z.object({ digest: z.string().regex(DIGEST_RE), size: z.number().int().nonnegative() })),
});
type EntryInfo = z.infer<typeof EntryInfo>;

/** `n` = number of entries referencing the blob. */
const BlobRef = z.object({ n: z.number().int().positive(), size: z.number().int().nonnegative() });
type BlobRef = z.infer<typeof BlobRef>;

const NUMBER = z.number().int().nonnegative();

/** Eviction stops once total bytes are at or below this fraction of maxBytes. */
const EVICT_TO = 0.9;

export class StoreLockedError extends Error {
  override name = 'StoreLockedError';
  constructor(
    readonly dir: string,
    cause: unknown,
  ) {
    super(`cache store ${dir} is in use by another process (its LevelDB lock is held)`, { cause });
  }
}

export interface StoreCounters {
  /** Entries dropped on read: a blob missing, truncated or with the wrong digest. */
  corruptBlobs: number;
  /** Entries dropped on read because the record failed validation. */
  corruptRecords: number;
  evictions: number;
  evictedBytes: number;
  putErrors: number;
  /** Files removed from tmp/ at open. */
  tmpSwept: number;
  /** Found by the background sweep. */
  orphanBlobsSwept: number;
  brokenEntriesSwept: number;
}

export interface SweepReport {
  orphanBlobs: number;
  brokenEntries: number;
  /** Set when the sweep stopped on an I/O error; the store stays usable. */
  error?: string;
}

export interface StoreSummary {
  entries: number;
  /** Distinct blob bytes plus record bytes: what maxBytes bounds. */
  bytes: number;
}

type Read<T> = { kind: 'absent' } | { kind: 'invalid'; detail: string } | { kind: 'ok'; value: T };

/**
 * Point reads of the store's LevelDB are synchronous: a key is in the memtable or a cached block
 * (a few µs), while an asynchronous get costs a thread-pool round trip of ~40 µs of CPU across
 * two threads. A read that misses the caches blocks the event loop for one block read.
 */
function readJson<T>(sub: Sub, key: string, schema: z.ZodType<T>): Read<T> {
  const raw = sub.getSync(key);
  if (raw === undefined) return { kind: 'absent' };
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (e) {
    return { kind: 'invalid', detail: `not JSON (${message(e)})` };
  }
  const r = schema.safeParse(parsed);
  return r.success ? { kind: 'ok', value: r.data } : { kind: 'invalid', detail: z.prettifyError(r.error) };
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A stored ref (JSON), or none when absent or unreadable: the count starts again from zero. */
function parseRef(raw: string | undefined, size: number): BlobRef {
  if (raw === undefined) return { n: 0, size };
  try {
    const r = BlobRef.safeParse(JSON.parse(raw));
    return r.success ? r.data : { n: 0, size };
  } catch {
    return { n: 0, size };
  }
}

function lruKey(atime: number, key: string): string {
  return `${String(atime).padStart(15, '0')}:${key}`;
}

function badKey(key: unknown): string {
  return `malformed cache key ${JSON.stringify(String(key).slice(0, 40))}: expected 32 lowercase hex characters`;
}

/** The root-level write methods of abstract-level: every write, sublevels' included, ends in one. */
const WRITE_METHODS = ['_put', '_del', '_batch', '_clear'] as const;

/**
 * Makes `db` refuse every write after its first failed one, calling `failed` once with that
 * error. LevelDB's log writer advances its block offset even when an append fails (a full
 * disk): records written after it are misaligned, and the recovery at the next open drops them,
 * acknowledged entries, refcounts and totals included. Refusing keeps the log a clean prefix of
 * what was acknowledged; a reopen recovers it and takes writes again.
 */
function refuseWritesAfterFailure(db: Db, failed: (e: Error) => void): void {
  let first: Error | null = null;
  const methods = db as unknown as Record<(typeof WRITE_METHODS)[number], (...args: unknown[]) => Promise<unknown>>;
  for (const name of WRITE_METHODS) {
    const write = methods[name].bind(db);
    methods[name] = async (...args: unknown[]) => {
      if (first) throw new Error(`store metadata takes no writes until it is reopened, after: ${first.message}`, { cause: first });
      try {
        return await write(...args);
      } catch (e) {
        if (!first) {
          first = e instanceof Error ? e : new Error(String(e));
          failed(first);
        }
        throw e;
      }
    };
  }
}

/** Runs async sections one at a time, in call order. */
class Mutex {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn);
    this.tail = result.catch(() => {});
    return result;
  }
}

/** The data of an adopted blob: never written (commitPut rewrites only after a deletion, and an
 * adoption checks presence under the same mutex). */
const NO_DATA = Buffer.alloc(0);

/** Metadata changes gathered for one LevelDB batch; `refs` holds the new count of every touched blob. */
class Mutation {
  readonly ops: BatchOp[] = [];
  readonly refs = new Map<Digest, { n: number; size: number }>();
  readonly removed = new Set<string>();
  bytesDelta = 0;
  entriesDelta = 0;
}

interface CheckedEntry {
  record: EntryRecord;
  recordJson: string;
  recordBytes: number;
  blobs: { digest: Digest; size: number; data: Buffer }[];
  totalBytes: number;
}

/**
 * The on-disk cache: records and bookkeeping in LevelDB, outputs as deduplicated blob files.
 * get/put/delete/touch never throw. Invariant: every entry in LevelDB points at blobs that were complete
 * and fsynced before the entry was written; blob files are only deleted under the mutex.
 */
export class LocalStore implements CacheBackend {
  readonly name = 'local';
  readonly counters: StoreCounters = {
    corruptBlobs: 0,
    corruptRecords: 0,
    evictions: 0,
    evictedBytes: 0,
    putErrors: 0,
    tmpSwept: 0,
    orphanBlobsSwept: 0,
    brokenEntriesSwept: 0,
  };
  /** Resolves (never rejects) when the start-up sweep of orphan blobs and broken entries ends. */
  sweepDone: Promise<SweepReport> = Promise.resolve({ orphanBlobs: 0, brokenEntries: 0 });

  private readonly mutex = new Mutex();
  private readonly entries: Sub;
  private readonly info: Sub;
  private readonly lru: Sub;
  private readonly refs: Sub;
  private readonly meta: Sub;
  private readonly blobs: BlobStore;
  private readonly appSublevels = new Map<string, StoreSublevel<unknown>>();
  /** Last-use times written to `info` by this process, for touches within the interval. */
  private readonly recentUse = new Map<Digest, number>();
  /** Keys evicted since the owner last emptied this list (the daemon removes their memos). */
  readonly evictedKeys: string[] = [];
  /**
   * Called once, at the first LevelDB write that fails: from then on every write is refused until
   * the store is reopened (refuseWritesAfterFailure). The owner reopens it by restarting.
   */
  onMetadataWriteError: ((e: Error) => void) | null = null;
  private bytes = 0;
  private entryCount = 0;
  private closing = false;

  private constructor(
    private readonly opts: ResolvedStoreOptions,
    private readonly db: Db,
    tmpDir: string,
    blobsDir: string,
  ) {
    refuseWritesAfterFailure(db, (e) => this.onMetadataWriteError?.(e));
    const sub = (name: string): Sub => db.sublevel<string, string>(name, { valueEncoding: 'utf8' });
    this.entries = sub(SUBLEVELS.entries);
    this.info = sub(SUBLEVELS.info);
    this.lru = sub(SUBLEVELS.lru);
    this.refs = sub(SUBLEVELS.refs);
    this.meta = sub(SUBLEVELS.meta);
    this.blobs = new BlobStore(blobsDir, tmpDir, opts.fs, opts.durable);
  }

  /**
   * Validates options, prepares the layout, takes the LevelDB lock and empties tmp/.
   * Throws StoreOptionsError, LayoutError, or StoreLockedError when another process has the store open.
   */
  static async open(options: StoreOptionsInput): Promise<LocalStore> {
    await initHash();
    const opts = parseStoreOptions(options);
    await prepareLayout(opts.dir, { fs: opts.fs });
    const paths = layoutPaths(opts.dir);
    for (const p of [paths.blobs, paths.tmp, paths.meta]) await opts.fs.mkdir(p, { recursive: true, mode: 0o700 });

    const db: Db = new Level<string, string>(paths.meta, { valueEncoding: 'utf8' });
    try {
      await db.open();
    } catch (e) {
      const cause = (e as { cause?: { code?: string } }).cause;
      if (cause?.code === 'LEVEL_LOCKED') throw new StoreLockedError(opts.dir, e);
      throw e;
    }
    const store = new LocalStore(opts, db, paths.tmp, paths.blobs);
    try {
      if ((await store.meta.get('clearing')) !== undefined) await store.clearLocked();
      store.bytes = await store.readNumber('bytes');
      store.entryCount = await store.readNumber('entries');
      store.counters.tmpSwept = await store.blobs.sweepTmp();
    } catch (e) {
      await db.close();
      throw e;
    }
    if (opts.sweepOnOpen) store.sweepDone = store.sweep();
    return store;
  }

  async get(key: Digest): Promise<Lookup> {
    if (!DIGEST_RE.test(key)) return { kind: 'error', corrupt: false, error: badKey(key) };
    try {
      const found = readJson(this.entries, key, EntryRecord);
      if (found.kind === 'absent') return { kind: 'miss' };
      if (found.kind === 'ok') {
        const files = await this.readBlobs(found.value);
        if (files.ok) {
          await this.touch(key);
          return { kind: 'hit', entry: { record: found.value, files: files.files } };
        }
      }
      // Something is wrong, or an eviction raced with the read: decide under the mutex.
      return await this.mutex.run(() => this.getLocked(key));
    } catch (e) {
      return { kind: 'error', corrupt: false, error: `local store: ${message(e)}` };
    }
  }

  /** Refuses (never throws) a malformed key, a record failing validation, or files not matching it. */
  async put(key: Digest, entry: StoredEntry, options: PutOptions = {}): Promise<PutResult> {
    if (!DIGEST_RE.test(key)) return { kind: 'refused', reason: badKey(key) };
    const checked = this.check(entry, options.verified === true, options.parsed === true);
    if (typeof checked === 'string') return { kind: 'refused', reason: checked };
    try {
      // Blob I/O outside the mutex; commitPut writes again under it if a blob file was deleted
      // meanwhile (any deletion counts: the generation is taken before the first write).
      const removals = this.blobs.removals;
      for (const b of checked.blobs) await this.blobs.write(b.digest, b.data);
      await this.mutex.run(() => this.commitPut(key, checked, removals));
      return { kind: 'stored' };
    } catch (e) {
      this.counters.putErrors++;
      await this.mutex.run(() => this.dropUnreferenced(checked.blobs.map((b) => b.digest))).catch(() => {});
      return { kind: 'error', error: `local store: ${message(e)}` };
    }
  }

  /**
   * put() of an entry whose blobs a trusted writer already stored under their digests (the native
   * client after 'S', docs/protocol.md): the files are not read or hashed again, only checked
   * for presence and size, under the mutex so that no deletion can come between.
   */
  async adopt(key: Digest, record: EntryRecord): Promise<PutResult> {
    if (!DIGEST_RE.test(key)) return { kind: 'refused', reason: badKey(key) };
    const parsed = EntryRecord.safeParse(record);
    if (!parsed.success) return { kind: 'refused', reason: `invalid record: ${z.prettifyError(parsed.error)}` };
    const names = new Set(parsed.data.outputs.map((o) => o.name));
    if (names.size !== parsed.data.outputs.length) return { kind: 'refused', reason: 'record lists an output name twice' };
    const blobs = [...new Map(parsed.data.outputs.map((o) => [o.digest, { digest: o.digest, size: o.size, data: NO_DATA }])).values()];
    const recordJson = JSON.stringify(parsed.data);
    const recordBytes = Buffer.byteLength(recordJson);
    const totalBytes = blobs.reduce((n, b) => n + b.size, recordBytes);
    if (totalBytes > this.opts.maxBytes * EVICT_TO) {
      return { kind: 'refused', reason: `entry of ${totalBytes} bytes exceeds ${EVICT_TO * 100}% of the cache size (${this.opts.maxBytes})` };
    }
    try {
      return await this.mutex.run(async () => {
        for (const b of blobs) {
          if (!(await this.blobs.present(b.digest, b.size))) return { kind: 'refused', reason: `blob ${b.digest} is not in the store with ${b.size} bytes` };
        }
        await this.commitPut(key, { record: parsed.data, recordJson, recordBytes, blobs, totalBytes }, this.blobs.removals);
        return { kind: 'stored' };
      });
    } catch (e) {
      this.counters.putErrors++;
      return { kind: 'error', error: `local store: ${message(e)}` };
    }
  }

  /** Where a blob's file is: the native client reads blobs here (docs/memo.md). */
  blobPath(digest: Digest): string {
    return this.blobs.pathOf(digest);
  }

  /** Removes one entry and the blobs only it referenced. */
  async delete(key: Digest): Promise<DeleteResult> {
    if (!DIGEST_RE.test(key)) return { kind: 'refused', reason: badKey(key) };
    try {
      return await this.mutex.run(async () => {
        const m = new Mutation();
        const existed = this.planRemove(m, key);
        await this.commit(m);
        return { kind: existed ? 'deleted' : 'absent' };
      });
    } catch (e) {
      return { kind: 'error', error: `local store: ${message(e)}` };
    }
  }

  /**
   * Empties the cache (entries, bookkeeping, blobs), keeping the layout and the sublevels
   * handed out by sublevel(). Survives a crash mid-way: the next open finishes it.
   */
  async clear(): Promise<void> {
    await this.mutex.run(() => this.clearLocked());
  }

  summary(): StoreSummary {
    return { entries: this.entryCount, bytes: this.bytes };
  }

  /**
   * A JSON-valued sublevel for other components' data (stats, manifests) in this LevelDB. One
   * object per name for the store's life: callers ask for it on every flush, and making one
   * costs more than the writes of a small flush.
   */
  sublevel<V>(name: string): StoreSublevel<V> {
    let sub = this.appSublevels.get(name);
    if (!sub) {
      if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/.test(name)) throw new Error(`invalid sublevel name ${JSON.stringify(name)}`);
      sub = this.db.sublevel<string, unknown>([SUBLEVELS.app, name], { valueEncoding: 'json' });
      this.appSublevels.set(name, sub);
    }
    return sub as StoreSublevel<V>;
  }

  /**
   * Puts JSON texts into sublevels handed out by sublevel(), in one batch. Each value is stored
   * as the text it is (read back as the value it encodes), not encoded once more.
   */
  async putJsonTexts(ops: readonly { sublevel: string; key: string; json: string }[]): Promise<void> {
    if (!ops.length) return;
    await this.db.batch(ops.map((o) => ({ type: 'put' as const, sublevel: this.sublevel(o.sublevel), key: o.key, value: o.json, valueEncoding: 'utf8' })) as never);
  }

  /** Stops the sweep, waits for queued mutations, releases the lock. Idempotent. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    await this.sweepDone;
    await this.mutex.run(async () => {});
    await this.db.close();
  }

  private check(entry: StoredEntry, verified: boolean, trusted: boolean): CheckedEntry | string {
    let record: EntryRecord;
    if (trusted && entry?.record) record = entry.record;
    else {
      const parsed = EntryRecord.safeParse(entry?.record);
      if (!parsed.success) return `invalid record: ${z.prettifyError(parsed.error)}`;
      record = parsed.data;
    }
    const names = new Set(record.outputs.map((o) => o.name));
    if (names.size !== record.outputs.length) return 'record lists an output name twice';
    if (!(entry.files instanceof Map)) return 'files must be a Map';
    for (const n of entry.files.keys()) if (!names.has(n)) return `file ${JSON.stringify(n)} is not in the record`;
    const blobs = new Map<Digest, { digest: Digest; size: number; data: Buffer }>();
    for (const o of record.outputs) {
      const data = entry.files.get(o.name);
      if (!data) return `output ${o.name} has no file`;
      if (data.length !== o.size) return `output ${o.name} has ${data.length} bytes, record says ${o.size}`;
      if (!verified && hashBytes(data) !== o.digest) return `output ${o.name} does not hash to its record digest`;
      blobs.set(o.digest, { digest: o.digest, size: o.size, data });
    }
    const recordJson = JSON.stringify(record);
    const recordBytes = Buffer.byteLength(recordJson);
    let totalBytes = recordBytes;
    for (const b of blobs.values()) totalBytes += b.size;
    if (totalBytes > this.opts.maxBytes * EVICT_TO) {
      return `entry of ${totalBytes} bytes exceeds ${EVICT_TO * 100}% of the cache size (${this.opts.maxBytes})`;
    }
    return { record, recordJson, recordBytes, blobs: [...blobs.values()], totalBytes };
  }

  private async readBlobs(record: EntryRecord): Promise<{ ok: true; files: Map<string, Buffer> } | { ok: false; bad: { digest: Digest; problem: string; detail: string }[] }> {
    const distinct = new Map(record.outputs.map((o) => [o.digest, o.size]));
    const checks = await Promise.all([...distinct].map(async ([d, size]) => [d, await this.blobs.read(d, size)] as const));
    const bad = checks.flatMap(([digest, c]) => (c.ok ? [] : [{ digest, problem: c.problem, detail: c.detail }]));
    if (bad.length > 0) return { ok: false, bad };
    const data = new Map(checks.map(([d, c]) => [d, c.ok ? c.data : Buffer.alloc(0)]));
    return { ok: true, files: new Map(record.outputs.map((o) => [o.name, data.get(o.digest) ?? Buffer.alloc(0)])) };
  }

  private async getLocked(key: Digest): Promise<Lookup> {
    const found = readJson(this.entries, key, EntryRecord);
    if (found.kind === 'absent') return { kind: 'miss' };
    const m = new Mutation();
    if (found.kind === 'invalid') {
      this.planRemove(m, key);
      await this.commit(m);
      this.counters.corruptRecords++;
      return { kind: 'error', corrupt: true, error: `local store: record ${key} is invalid, dropped: ${found.detail}` };
    }
    const files = await this.readBlobs(found.value);
    if (files.ok) {
      await this.touchLocked(key);
      return { kind: 'hit', entry: { record: found.value, files: files.files } };
    }
    // A bad blob file must go too: a later put of the same digest would otherwise keep it.
    for (const b of files.bad) if (b.problem !== 'missing') await this.blobs.remove(b.digest);
    this.planRemove(m, key);
    await this.commit(m);
    this.counters.corruptBlobs++;
    return {
      kind: 'error',
      corrupt: true,
      error: `local store: entry ${key} dropped: ${files.bad.map((b) => b.detail).join('; ')}`,
    };
  }

  /**
   * Moves the entry to the young end of the LRU order, at most once per `touchIntervalMs`; an
   * absent key is ignored. Never throws.
   */
  async touch(key: Digest): Promise<void> {
    if (!DIGEST_RE.test(key)) return;
    // Most touches come within the interval of the entry's last use (a build's hits, drained in
    // batches): answered from memory, without reading and validating the entry's bookkeeping.
    const recent = this.recentUse.get(key);
    if (recent !== undefined && this.opts.now() - recent < this.opts.touchIntervalMs) return;
    try {
      const info = readJson(this.info, key, EntryInfo);
      if (info.kind === 'ok' && this.opts.now() - info.value.atime < this.opts.touchIntervalMs) {
        this.noteUse(key, info.value.atime);
        return;
      }
      await this.mutex.run(() => this.touchLocked(key));
    } catch {
      // A lost LRU update only ages the entry; the hit itself is verified.
    }
  }

  /** Remembers the last-use time written for `key` (bounded; a forgotten one is read again). */
  private noteUse(key: Digest, atime: number): void {
    if (this.recentUse.size >= 100_000) this.recentUse.clear();
    this.recentUse.set(key, atime);
  }

  private async touchLocked(key: Digest): Promise<void> {
    const info = readJson(this.info, key, EntryInfo);
    if (info.kind !== 'ok') return;
    const now = this.opts.now();
    if (now - info.value.atime < this.opts.touchIntervalMs) return;
    this.noteUse(key, now);
    await this.db.batch([
      { type: 'del', sublevel: this.lru, key: lruKey(info.value.atime, key) },
      { type: 'put', sublevel: this.lru, key: lruKey(now, key), value: key },
      { type: 'put', sublevel: this.info, key, value: JSON.stringify({ ...info.value, atime: now }) },
    ] as BatchOp[]);
  }

  /** `removals`: the blob store's deletion count before the blobs were written outside the mutex. */
  private async commitPut(key: Digest, c: CheckedEntry, removals: number): Promise<void> {
    const m = new Mutation();
    // A key a lookup just found absent is read again here: under the mutex it is the truth, and
    // a concurrent put of the same key may have committed since (synchronous reads, cheap).
    this.planRemove(m, key);
    for (const b of c.blobs) {
      // The pre-mutex write may have been undone by a concurrent deletion; rewrite if so.
      if (this.blobs.removals !== removals) await this.blobs.write(b.digest, b.data);
      this.addRef(m, b.digest, b.size, +1);
    }
    const now = this.opts.now();
    const info: EntryInfo = { atime: now, bytes: c.recordBytes, blobs: c.blobs.map((b) => ({ digest: b.digest, size: b.size })) };
    m.ops.push(
      { type: 'put', sublevel: this.entries, key, value: c.recordJson },
      { type: 'put', sublevel: this.info, key, value: JSON.stringify(info) },
      { type: 'put', sublevel: this.lru, key: lruKey(now, key), value: key },
    );
    m.bytesDelta += c.recordBytes;
    m.entriesDelta += 1;
    await this.commit(m);
    this.noteUse(key, now);
    try {
      await this.evictIfNeeded();
    } catch {
      // The entry is stored; the next put retries the eviction.
    }
  }

  private async evictIfNeeded(): Promise<void> {
    if (this.bytes <= this.opts.maxBytes) return;
    const target = Math.floor(this.opts.maxBytes * EVICT_TO);
    const m = new Mutation();
    let evicted = 0;
    for await (const [lk, key] of this.lru.iterator()) {
      if (this.bytes + m.bytesDelta <= target) break;
      const info = readJson(this.info, key, EntryInfo);
      if (info.kind !== 'ok' || lruKey(info.value.atime, key) !== lk) {
        m.ops.push({ type: 'del', sublevel: this.lru, key: lk });
        if (info.kind === 'ok') continue;
      }
      if (this.planRemove(m, key)) {
        evicted++;
        if (this.evictedKeys.length < 10_000) this.evictedKeys.push(key);
      }
    }
    const before = this.bytes;
    await this.commit(m);
    this.counters.evictions += evicted;
    this.counters.evictedBytes += before - this.bytes;
  }

  /** Adds the removal of `key` to `m`; false if there was nothing to remove. Call under the mutex. */
  private planRemove(m: Mutation, key: string): boolean {
    if (m.removed.has(key)) return false;
    const record = this.entries.getSync(key);
    const info = readJson(this.info, key, EntryInfo);
    if (record === undefined && info.kind === 'absent') return false;
    m.removed.add(key);
    m.ops.push({ type: 'del', sublevel: this.entries, key }, { type: 'del', sublevel: this.info, key });
    if (record !== undefined) m.entriesDelta -= 1;
    if (info.kind === 'ok') {
      m.ops.push({ type: 'del', sublevel: this.lru, key: lruKey(info.value.atime, key) });
      m.bytesDelta -= info.value.bytes;
      for (const b of info.value.blobs) this.addRef(m, b.digest, b.size, -1);
    }
    return true;
  }

  /** A blob's count as `m` leaves it (read from LevelDB the first time `m` touches it), plus `delta`. */
  private addRef(m: Mutation, digest: Digest, size: number, delta: 1 | -1): void {
    let cur = m.refs.get(digest);
    if (!cur) cur = parseRef(this.refs.getSync(digest), size);
    const n = Math.max(0, cur.n + delta);
    if (cur.n === 0 && n > 0) m.bytesDelta += size;
    if (cur.n > 0 && n === 0) m.bytesDelta -= cur.size;
    m.refs.set(digest, { n, size: n > 0 && cur.n === 0 ? size : cur.size });
  }

  /** Writes `m` in one batch, then deletes the blobs it left unreferenced. */
  private async commit(m: Mutation): Promise<void> {
    if (m.ops.length === 0 && m.refs.size === 0) return;
    const bytes = Math.max(0, this.bytes + m.bytesDelta);
    const entries = Math.max(0, this.entryCount + m.entriesDelta);
    const ops = [...m.ops];
    for (const [digest, ref] of m.refs) {
      ops.push(ref.n > 0 ? { type: 'put', sublevel: this.refs, key: digest, value: JSON.stringify(ref) } : { type: 'del', sublevel: this.refs, key: digest });
    }
    ops.push({ type: 'put', sublevel: this.meta, key: 'bytes', value: String(bytes) }, { type: 'put', sublevel: this.meta, key: 'entries', value: String(entries) });
    await this.db.batch(ops);
    this.bytes = bytes;
    this.entryCount = entries;
    for (const [digest, ref] of m.refs) {
      // A failed unlink leaves an orphan for the next start-up sweep.
      if (ref.n === 0) await this.blobs.remove(digest).catch(() => {});
    }
  }

  /**
   * Deletes those of `digests` no entry references, with `olderThanMs` only those modified before
   * it; returns how many. Call under the mutex.
   */
  private async dropUnreferenced(digests: Digest[], olderThanMs?: number): Promise<number> {
    const refs = await this.refs.getMany(digests);
    let dropped = 0;
    for (const [i, d] of digests.entries()) {
      if (refs[i] !== undefined) continue;
      if (olderThanMs !== undefined && (await this.blobs.modifiedMs(d)) >= olderThanMs) continue;
      await this.blobs.remove(d);
      dropped++;
    }
    return dropped;
  }

  private async clearLocked(): Promise<void> {
    this.recentUse.clear();
    await this.meta.put('clearing', '1');
    for (const s of [this.entries, this.info, this.lru, this.refs]) await s.clear();
    // No entry is left: the totals say so even if removing the files fails below (else every
    // later put would add to the old totals, and eviction would take the new entries).
    this.bytes = 0;
    this.entryCount = 0;
    await this.blobs.removeAll();
    await this.meta.clear();
  }

  private async readNumber(key: string): Promise<number> {
    const raw = await this.meta.get(key);
    const r = NUMBER.safeParse(raw === undefined ? 0 : Number(raw));
    return r.success ? r.data : 0;
  }

  /**
   * Background start-up sweep, one item per mutex turn so jobs interleave: entries whose record
   * is invalid or whose blobs are missing, then blob files no entry references.
   */
  private async sweep(): Promise<SweepReport> {
    const report: SweepReport = { orphanBlobs: 0, brokenEntries: 0 };
    try {
      for await (const key of this.entries.keys()) {
        if (this.closing) return report;
        if (await this.mutex.run(() => this.dropIfBroken(key))) report.brokenEntries++;
      }
      // A blob placed by a client for an adoption still on its way (docs/protocol.md, 'S') keeps
      // its temp file's mtime, which may be from before the sweep began: only orphans older than
      // ORPHAN_GRACE_MS go (the others at a later start).
      const before = this.opts.now() - ORPHAN_GRACE_MS;
      for await (const digests of this.blobs.shards()) {
        if (this.closing) return report;
        report.orphanBlobs += await this.mutex.run(() => this.dropUnreferenced(digests, before));
      }
    } catch (e) {
      if (!this.closing) report.error = message(e);
    } finally {
      this.counters.brokenEntriesSwept += report.brokenEntries;
      this.counters.orphanBlobsSwept += report.orphanBlobs;
    }
    return report;
  }

  private async dropIfBroken(key: string): Promise<boolean> {
    const found = readJson(this.entries, key, EntryRecord);
    if (found.kind === 'absent') return false;
    if (found.kind === 'ok') {
      let intact = true;
      for (const o of found.value.outputs) intact &&= await this.blobs.present(o.digest, o.size);
      if (intact) return false;
    }
    const m = new Mutation();
    this.planRemove(m, key);
    await this.commit(m);
    return true;
  }
}
