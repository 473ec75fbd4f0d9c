import type { StoredEntry } from '../store/backend.js';

/**
 * Recently served or compiled entries, kept in memory up to a byte budget (least recently used
 * out first). A warm rebuild asks for the same keys again right away; serving them from here skips
 * the metadata lookup, the blob reads and their re-hashing. Entries enter only after their bytes
 * were verified (read from the store, or just written by clang), and leave when the store purges
 * them (verify mismatch, clear).
 */
export class HotEntries {
  private readonly map = new Map<string, { entry: StoredEntry; bytes: number }>();
  private bytes = 0;

  constructor(private readonly budget: number) {}

  get(key: string): StoredEntry | undefined {
    const e = this.map.get(key);
    if (!e) return undefined;
    this.map.delete(key);
    this.map.set(key, e);
    return e.entry;
  }

  set(key: string, entry: StoredEntry): void {
    const bytes = [...entry.files.values()].reduce((n, b) => n + b.length, 0) + entry.record.stderr.length + entry.record.stdout.length;
    if (bytes > this.budget / 4) return;
    this.delete(key);
    this.map.set(key, { entry, bytes });
    this.bytes += bytes;
    for (const [k, v] of this.map) {
      if (this.bytes <= this.budget) break;
      this.map.delete(k);
      this.bytes -= v.bytes;
    }
  }

  delete(key: string): void {
    const e = this.map.get(key);
    if (!e) return;
    this.map.delete(key);
    this.bytes -= e.bytes;
  }

  clear(): void {
    this.map.clear();
    this.bytes = 0;
  }
}
