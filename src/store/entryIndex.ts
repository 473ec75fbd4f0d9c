import { z } from 'zod';
import { DIGEST_RE, type Digest } from '../key/hash.js';
import type { BlobStore } from './blobStore.js';
import { SUBLEVELS } from './layout.js';
import { type BatchOp, type Db, type Read, readJson, type Sub } from './metaDb.js';
import { EntryRecord } from './record.js';

/** Bookkeeping kept beside each record. `blobs` lists distinct digests, so refs can be released even if the record is unreadable. */
export const EntryInfo = z.object({
  atime: z.number().int().nonnegative(),
  /** Bytes of the record JSON; blob bytes are accounted once per blob in `refs`. */
  bytes: z.number().int().nonnegative(),
  blobs: z.array(z.object({ digest: z.string().regex(DIGEST_RE), size: z.number().int().nonnegative() })),
});
export type EntryInfo = z.infer<typeof EntryInfo>;

/** `n` = number of entries referencing the blob. */
const BlobRef = z.object({ n: z.number().int().positive(), size: z.number().int().nonnegative() });
type BlobRef = z.infer<typeof BlobRef>;

const NUMBER = z.number().int().nonnegative();

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

/** The key of an entry's row in the `lru` sublevel (layout.ts SUBLEVELS.lru). */
export function lruKey(atime: number, key: string): string {
  return `${String(atime).padStart(15, '0')}:${key}`;
}

/** Metadata changes gathered for one LevelDB batch; `refs` holds the new count of every touched blob. */
export class Mutation {
  readonly ops: BatchOp[] = [];
  readonly refs = new Map<Digest, { n: number; size: number }>();
  readonly removed = new Set<string>();
  bytesDelta = 0;
  entriesDelta = 0;
}

/** An entry as the index stores it: its record's JSON and the distinct blobs the record names. */
export interface IndexedEntry {
  recordJson: string;
  recordBytes: number;
  blobs: readonly { digest: Digest; size: number }[];
}

/**
 * The entries in the store's LevelDB (records, bookkeeping, last-use rows, blob reference counts)
 * and their totals. Every method that writes, and every deletion of a blob file, runs under the
 * store's mutex: a blob's count and its file change together, one Mutation per LevelDB batch.
 */
export class EntryIndex {
  private readonly entries: Sub;
  private readonly info: Sub;
  private readonly lru: Sub;
  private readonly refs: Sub;
  private readonly meta: Sub;
  private committedBytes = 0;
  private committedEntries = 0;

  constructor(
    private readonly db: Db,
    private readonly blobs: BlobStore,
  ) {
    const sub = (name: string): Sub => db.sublevel<string, string>(name, { valueEncoding: 'utf8' });
    this.entries = sub(SUBLEVELS.entries);
    this.info = sub(SUBLEVELS.info);
    this.lru = sub(SUBLEVELS.lru);
    this.refs = sub(SUBLEVELS.refs);
    this.meta = sub(SUBLEVELS.meta);
  }

  /** Distinct blob bytes plus record bytes, as committed: what maxBytes bounds. */
  get bytes(): number {
    return this.committedBytes;
  }

  get entryCount(): number {
    return this.committedEntries;
  }

  readRecord(key: string): Read<EntryRecord> {
    return readJson(this.entries, key, EntryRecord);
  }

  readInfo(key: string): Read<EntryInfo> {
    return readJson(this.info, key, EntryInfo);
  }

  /** The keys of every record, in key order. */
  keys(): AsyncIterable<string> {
    return this.entries.keys();
  }

  /** `[lruKey, key]` rows, least recently used first. Rows may be stale (see lruKey of the entry's info). */
  lruRows(): AsyncIterable<[string, string]> {
    return this.lru.iterator();
  }

  /** Moves `key`'s last use from `info.atime` to `now`. */
  async writeUse(key: string, info: EntryInfo, now: number): Promise<void> {
    await this.db.batch([
      { type: 'del', sublevel: this.lru, key: lruKey(info.atime, key) },
      { type: 'put', sublevel: this.lru, key: lruKey(now, key), value: key },
      { type: 'put', sublevel: this.info, key, value: JSON.stringify({ ...info, atime: now }) },
    ] as BatchOp[]);
  }

  /** Adds to `m` the entry `e` under `key`, last used at `now`, in place of any entry there. Call under the mutex. */
  planPut(m: Mutation, key: string, e: IndexedEntry, now: number): void {
    // A key a lookup just found absent is read again here: under the mutex it is the truth, and
    // a concurrent put of the same key may have committed since (synchronous reads, cheap).
    this.planRemove(m, key);
    for (const b of e.blobs) this.addRef(m, b.digest, b.size, +1);
    const info: EntryInfo = { atime: now, bytes: e.recordBytes, blobs: e.blobs.map((b) => ({ digest: b.digest, size: b.size })) };
    m.ops.push(
      { type: 'put', sublevel: this.entries, key, value: e.recordJson },
      { type: 'put', sublevel: this.info, key, value: JSON.stringify(info) },
      { type: 'put', sublevel: this.lru, key: lruKey(now, key), value: key },
    );
    m.bytesDelta += e.recordBytes;
    m.entriesDelta += 1;
  }

  /** Adds the removal of `key` to `m`; false if there was nothing to remove. Call under the mutex. */
  planRemove(m: Mutation, key: string): boolean {
    if (m.removed.has(key)) return false;
    const record = this.entries.getSync(key);
    const info = this.readInfo(key);
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

  /** Adds to `m` the deletion of an `lru` row that no entry's info names. */
  planDropLruRow(m: Mutation, lk: string): void {
    m.ops.push({ type: 'del', sublevel: this.lru, key: lk });
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

  /** Writes `m` in one batch, then deletes the blobs it left unreferenced. Call under the mutex. */
  async commit(m: Mutation): Promise<void> {
    if (m.ops.length === 0 && m.refs.size === 0) return;
    const bytes = Math.max(0, this.committedBytes + m.bytesDelta);
    const entries = Math.max(0, this.committedEntries + m.entriesDelta);
    const ops = [...m.ops];
    for (const [digest, ref] of m.refs) {
      ops.push(ref.n > 0 ? { type: 'put', sublevel: this.refs, key: digest, value: JSON.stringify(ref) } : { type: 'del', sublevel: this.refs, key: digest });
    }
    ops.push({ type: 'put', sublevel: this.meta, key: 'bytes', value: String(bytes) }, { type: 'put', sublevel: this.meta, key: 'entries', value: String(entries) });
    await this.db.batch(ops);
    this.committedBytes = bytes;
    this.committedEntries = entries;
    for (const [digest, ref] of m.refs) {
      // A failed unlink leaves an orphan for the next start-up sweep.
      if (ref.n === 0) await this.blobs.remove(digest).catch(() => {});
    }
  }

  /** Removes the entry and the blobs only it referenced; false if there was none. Call under the mutex. */
  async remove(key: string): Promise<boolean> {
    const m = new Mutation();
    const existed = this.planRemove(m, key);
    await this.commit(m);
    return existed;
  }

  /**
   * Deletes those of `digests` no entry references, with `olderThanMs` only those modified before
   * it; returns how many. Call under the mutex.
   */
  async dropUnreferenced(digests: Digest[], olderThanMs?: number): Promise<number> {
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

  /**
   * Removes every entry and blob, keeping the sublevels of other components. Marked `clearing`
   * first, so that a crash mid-way leaves clearInterrupted() true for the next open. Call under the mutex.
   */
  async clear(): Promise<void> {
    await this.meta.put('clearing', '1');
    for (const s of [this.entries, this.info, this.lru, this.refs]) await s.clear();
    // No entry is left: the totals say so even if removing the files fails below (else every
    // later put would add to the old totals, and eviction would take the new entries).
    this.committedBytes = 0;
    this.committedEntries = 0;
    await this.blobs.removeAll();
    await this.meta.clear();
  }

  async clearInterrupted(): Promise<boolean> {
    return (await this.meta.get('clearing')) !== undefined;
  }

  /** Reads the committed totals; an absent or unreadable one counts as 0. */
  async readTotals(): Promise<void> {
    this.committedBytes = await this.readNumber('bytes');
    this.committedEntries = await this.readNumber('entries');
  }

  private async readNumber(key: string): Promise<number> {
    const raw = await this.meta.get(key);
    const r = NUMBER.safeParse(raw === undefined ? 0 : Number(raw));
    return r.success ? r.data : 0;
  }
}
