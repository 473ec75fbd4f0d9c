import { errorMessage } from '../util/errorMessage.js';
import type { Mutex } from '../util/mutex.js';
import type { BlobStore } from './blobStore.js';
import type { EntryIndex } from './entryIndex.js';

/** Unreferenced blob files younger than this survive the start-up sweep (see sweep). */
export const ORPHAN_GRACE_MS = 10 * 60_000;

export interface SweepReport {
  orphanBlobs: number;
  brokenEntries: number;
  /** Set when the sweep stopped on an I/O error; the store stays usable. */
  error?: string;
}

/**
 * What an open does once it holds the LevelDB lock: finishes a clear a crash interrupted, reads
 * the totals, empties tmp/. Returns how many files tmp/ held.
 */
export async function load(index: EntryIndex, blobs: BlobStore): Promise<number> {
  if (await index.clearInterrupted()) await index.clear();
  await index.readTotals();
  return await blobs.sweepTmp();
}

export interface SweepContext {
  index: EntryIndex;
  blobs: BlobStore;
  mutex: Mutex;
  now: () => number;
  /** True once the store is closing: the sweep stops at its next item. */
  stopped: () => boolean;
}

/**
 * Background start-up sweep, one item per mutex turn so jobs interleave: entries whose record
 * is invalid or whose blobs are missing, then blob files no entry references. Never rejects.
 */
export async function sweep(c: SweepContext): Promise<SweepReport> {
  const report: SweepReport = { orphanBlobs: 0, brokenEntries: 0 };
  try {
    for await (const key of c.index.keys()) {
      if (c.stopped()) return report;
      if (await c.mutex.run(() => dropIfBroken(c, key))) report.brokenEntries++;
    }
    // A blob placed by a client for an adoption still on its way (docs/protocol.md, 'S') keeps
    // its temp file's mtime, which may be from before the sweep began: only orphans older than
    // ORPHAN_GRACE_MS go (the others at a later start).
    const before = c.now() - ORPHAN_GRACE_MS;
    for await (const digests of c.blobs.shards()) {
      if (c.stopped()) return report;
      report.orphanBlobs += await c.mutex.run(() => c.index.dropUnreferenced(digests, before));
    }
  } catch (e) {
    if (!c.stopped()) report.error = errorMessage(e);
  }
  return report;
}

async function dropIfBroken(c: SweepContext, key: string): Promise<boolean> {
  const found = c.index.readRecord(key);
  if (found.kind === 'absent') return false;
  if (found.kind === 'ok') {
    let intact = true;
    for (const o of found.value.outputs) intact &&= await c.blobs.present(o.digest, o.size);
    if (intact) return false;
  }
  await c.index.remove(key);
  return true;
}
