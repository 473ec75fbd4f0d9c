import type { Digest } from '../key/hash.js';
import type { Mutex } from '../util/mutex.js';
import { type EntryIndex, lruKey, Mutation } from './entryIndex.js';
import type { ResolvedStoreOptions } from './storeOptions.js';

/** Eviction stops once total bytes are at or below this fraction of maxBytes. */
export const EVICT_TO = 0.9;

/** Why an entry of `totalBytes` is refused: one that eviction to EVICT_TO could not keep. */
export function tooLarge(totalBytes: number, maxBytes: number): string | null {
  return totalBytes > maxBytes * EVICT_TO ? `entry of ${totalBytes} bytes exceeds ${EVICT_TO * 100}% of the cache size (${maxBytes})` : null;
}

/** The last-use order of the index's entries: touches, at most one write per entry and interval, and eviction. */
export class Lru {
  /** Last-use times written to `info` by this process, for touches within the interval. */
  private readonly recentUse = new Map<Digest, number>();
  /** Keys evicted since the owner last emptied this list (the daemon removes their memos). */
  readonly evictedKeys: string[] = [];

  constructor(
    private readonly index: EntryIndex,
    private readonly mutex: Mutex,
    private readonly opts: Pick<ResolvedStoreOptions, 'now' | 'touchIntervalMs' | 'maxBytes'>,
  ) {}

  /**
   * Moves the entry to the young end of the LRU order, at most once per `touchIntervalMs`; an
   * absent key is ignored. Never throws.
   */
  async touch(key: Digest): Promise<void> {
    // Most touches come within the interval of the entry's last use (a build's hits, drained in
    // batches): answered from memory, without reading and validating the entry's bookkeeping.
    const recent = this.recentUse.get(key);
    if (recent !== undefined && this.opts.now() - recent < this.opts.touchIntervalMs) return;
    try {
      const info = this.index.readInfo(key);
      if (info.kind === 'ok' && this.opts.now() - info.value.atime < this.opts.touchIntervalMs) {
        this.noteUse(key, info.value.atime);
        return;
      }
      await this.mutex.run(() => this.touchLocked(key));
    } catch {
      // A lost LRU update only ages the entry; the hit itself is verified.
    }
  }

  /** touch() under the mutex. Throws on a failed write. */
  async touchLocked(key: Digest): Promise<void> {
    const info = this.index.readInfo(key);
    if (info.kind !== 'ok') return;
    const now = this.opts.now();
    if (now - info.value.atime < this.opts.touchIntervalMs) return;
    this.noteUse(key, now);
    await this.index.writeUse(key, info.value, now);
  }

  /** Remembers the last-use time written for `key` (bounded; a forgotten one is read again). */
  noteUse(key: Digest, atime: number): void {
    if (this.recentUse.size >= 100_000) this.recentUse.clear();
    this.recentUse.set(key, atime);
  }

  /** Forgets every remembered last use (the index was cleared). */
  forget(): void {
    this.recentUse.clear();
  }

  /**
   * Above maxBytes, removes least recently used entries until the total is at or below EVICT_TO
   * of it; returns how many entries and bytes went. Call under the mutex.
   */
  async evictIfNeeded(): Promise<{ entries: number; bytes: number }> {
    if (this.index.bytes <= this.opts.maxBytes) return { entries: 0, bytes: 0 };
    const target = Math.floor(this.opts.maxBytes * EVICT_TO);
    const m = new Mutation();
    let evicted = 0;
    for await (const [lk, key] of this.index.lruRows()) {
      if (this.index.bytes + m.bytesDelta <= target) break;
      const info = this.index.readInfo(key);
      if (info.kind !== 'ok' || lruKey(info.value.atime, key) !== lk) {
        this.index.planDropLruRow(m, lk);
        if (info.kind === 'ok') continue;
      }
      if (this.index.planRemove(m, key)) {
        evicted++;
        if (this.evictedKeys.length < 10_000) this.evictedKeys.push(key);
      }
    }
    const before = this.index.bytes;
    await this.index.commit(m);
    return { entries: evicted, bytes: before - this.index.bytes };
  }
}
