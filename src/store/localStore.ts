import type { AbstractSublevel } from 'abstract-level';
import { z } from 'zod';
import { DIGEST_RE, type Digest, hashBytes, initHash } from '../key/hash.js';
import { errorMessage } from '../util/errorMessage.js';
import { Mutex } from '../util/mutex.js';
import type { CacheBackend, DeleteResult, Lookup, PutOptions, PutResult, StoredEntry } from './backend.js';
import { BlobStore } from './blobStore.js';
import { EntryIndex, Mutation } from './entryIndex.js';
import { layoutPaths, prepareLayout, SUBLEVELS } from './layout.js';
import { load, type SweepReport, sweep } from './load.js';
import { Lru, tooLarge } from './lru.js';
import { type Db, openMetaDb, refuseWritesAfterFailure } from './metaDb.js';
import { EntryRecord } from './record.js';
import { parseStoreOptions, type ResolvedStoreOptions, type StoreOptionsInput } from './storeOptions.js';

/** A sublevel of the store's LevelDB handed to other components; values are JSON. */
export type StoreSublevel<V> = AbstractSublevel<Db, string | Buffer | Uint8Array, string, V>;

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

export interface StoreSummary {
  entries: number;
  /** Distinct blob bytes plus record bytes: what maxBytes bounds. */
  bytes: number;
}

function badKey(key: unknown): string {
  return `malformed cache key ${JSON.stringify(String(key).slice(0, 40))}: expected 32 lowercase hex characters`;
}

/** The data of an adopted blob: never written (commitPut rewrites only after a deletion, and an
 * adoption checks presence under the same mutex). */
const NO_DATA = Buffer.alloc(0);

const DONE = Promise.resolve();

interface CheckedEntry {
  record: EntryRecord;
  recordJson: string;
  recordBytes: number;
  blobs: { digest: Digest; size: number; data: Buffer }[];
  totalBytes: number;
}

/**
 * The on-disk cache: records and bookkeeping in LevelDB (EntryIndex), outputs as deduplicated
 * blob files (BlobStore), last-use order and eviction (Lru), open-time load and start-up sweep
 * (load.ts). get/put/delete/touch never throw. Invariant: every entry in LevelDB points at blobs
 * that were complete and fsynced before the entry was written; blob files are only deleted under
 * the mutex.
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
  private readonly blobs: BlobStore;
  private readonly index: EntryIndex;
  private readonly lru: Lru;
  private readonly appSublevels = new Map<string, StoreSublevel<unknown>>();
  /**
   * Called once, at the first LevelDB write that fails: from then on every write is refused until
   * the store is reopened (refuseWritesAfterFailure). The owner reopens it by restarting.
   */
  onMetadataWriteError: ((e: Error) => void) | null = null;
  private closing = false;

  private constructor(
    private readonly opts: ResolvedStoreOptions,
    private readonly db: Db,
    tmpDir: string,
    blobsDir: string,
  ) {
    refuseWritesAfterFailure(db, (e) => this.onMetadataWriteError?.(e));
    this.blobs = new BlobStore(blobsDir, tmpDir, opts.fs, opts.durable);
    this.index = new EntryIndex(db, this.blobs);
    this.lru = new Lru(this.index, this.mutex, opts);
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

    const db = await openMetaDb(opts.dir, paths.meta);
    const store = new LocalStore(opts, db, paths.tmp, paths.blobs);
    try {
      store.counters.tmpSwept = await load(store.index, store.blobs);
    } catch (e) {
      await db.close();
      throw e;
    }
    if (opts.sweepOnOpen) store.sweepDone = store.sweep();
    return store;
  }

  /** Keys evicted since the owner last emptied this list (the daemon removes their memos). */
  get evictedKeys(): string[] {
    return this.lru.evictedKeys;
  }

  async get(key: Digest): Promise<Lookup> {
    if (!DIGEST_RE.test(key)) return { kind: 'error', corrupt: false, error: badKey(key) };
    try {
      const found = this.index.readRecord(key);
      if (found.kind === 'absent') return { kind: 'miss' };
      if (found.kind === 'ok') {
        const files = await this.readBlobs(found.value);
        if (files.ok) {
          await this.lru.touch(key);
          return { kind: 'hit', entry: { record: found.value, files: files.files } };
        }
      }
      // Something is wrong, or an eviction raced with the read: decide under the mutex.
      return await this.mutex.run(() => this.getLocked(key));
    } catch (e) {
      return { kind: 'error', corrupt: false, error: `local store: ${errorMessage(e)}` };
    }
  }

  /**
   * Moves the entry to the young end of the LRU order, at most once per `touchIntervalMs`; an
   * absent or malformed key is ignored. Never throws.
   */
  touch(key: Digest): Promise<void> {
    return DIGEST_RE.test(key) ? this.lru.touch(key) : DONE;
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
      await this.mutex.run(() => this.index.dropUnreferenced(checked.blobs.map((b) => b.digest))).catch(() => {});
      return { kind: 'error', error: `local store: ${errorMessage(e)}` };
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
    const oversize = tooLarge(totalBytes, this.opts.maxBytes);
    if (oversize) return { kind: 'refused', reason: oversize };
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
      return { kind: 'error', error: `local store: ${errorMessage(e)}` };
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
      return await this.mutex.run(async () => ({ kind: (await this.index.remove(key)) ? 'deleted' : 'absent' }));
    } catch (e) {
      return { kind: 'error', error: `local store: ${errorMessage(e)}` };
    }
  }

  /**
   * Empties the cache (entries, bookkeeping, blobs), keeping the layout and the sublevels
   * handed out by sublevel(). Survives a crash mid-way: the next open finishes it.
   */
  async clear(): Promise<void> {
    await this.mutex.run(async () => {
      this.lru.forget();
      await this.index.clear();
    });
  }

  summary(): StoreSummary {
    return { entries: this.index.entryCount, bytes: this.index.bytes };
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
    return tooLarge(totalBytes, this.opts.maxBytes) ?? { record, recordJson, recordBytes, blobs: [...blobs.values()], totalBytes };
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
    const found = this.index.readRecord(key);
    if (found.kind === 'absent') return { kind: 'miss' };
    if (found.kind === 'invalid') {
      await this.index.remove(key);
      this.counters.corruptRecords++;
      return { kind: 'error', corrupt: true, error: `local store: record ${key} is invalid, dropped: ${found.detail}` };
    }
    const files = await this.readBlobs(found.value);
    if (files.ok) {
      await this.lru.touchLocked(key);
      return { kind: 'hit', entry: { record: found.value, files: files.files } };
    }
    // A bad blob file must go too: a later put of the same digest would otherwise keep it.
    for (const b of files.bad) if (b.problem !== 'missing') await this.blobs.remove(b.digest);
    await this.index.remove(key);
    this.counters.corruptBlobs++;
    return {
      kind: 'error',
      corrupt: true,
      error: `local store: entry ${key} dropped: ${files.bad.map((b) => b.detail).join('; ')}`,
    };
  }

  /** `removals`: the blob store's deletion count before the blobs were written outside the mutex. */
  private async commitPut(key: Digest, c: CheckedEntry, removals: number): Promise<void> {
    for (const b of c.blobs) {
      // The pre-mutex write may have been undone by a concurrent deletion; rewrite if so.
      if (this.blobs.removals !== removals) await this.blobs.write(b.digest, b.data);
    }
    const m = new Mutation();
    const now = this.opts.now();
    this.index.planPut(m, key, c, now);
    await this.index.commit(m);
    this.lru.noteUse(key, now);
    try {
      const evicted = await this.lru.evictIfNeeded();
      this.counters.evictions += evicted.entries;
      this.counters.evictedBytes += evicted.bytes;
    } catch {
      // The entry is stored; the next put retries the eviction.
    }
  }

  private async sweep(): Promise<SweepReport> {
    const report = await sweep({ index: this.index, blobs: this.blobs, mutex: this.mutex, now: this.opts.now, stopped: () => this.closing });
    this.counters.brokenEntriesSwept += report.brokenEntries;
    this.counters.orphanBlobsSwept += report.orphanBlobs;
    return report;
  }
}
