import { z } from 'zod';
import { errorMessage } from '../../util/errorMessage.js';
import type { Logger } from '../../util/log.js';
import type { CounterPersistence, ServerStorage } from './serverStorage.js';

export const COUNTERS = [
  'hits',
  'misses',
  'puts',
  'puts_refused',
  'rejected_bundles',
  'bad_messages',
  'auth_failures',
  'evictions',
  'bytes_served',
  'bytes_received',
  'memos_stored',
  'memos_served',
  'rejected_memos',
] as const;
export type CounterName = (typeof COUNTERS)[number];

const PersistedStats = z.object({
  v: z.literal(1),
  counters: z.record(z.string(), z.number().int().nonnegative()),
  since: z.number().int(),
});
type PersistedStats = z.infer<typeof PersistedStats>;

/**
 * The server's counters, persisted where the storage keeps them (a `--dir` store's `server-stats`
 * sublevel; a shared storage keeps none, so each process counts from its start): loaded at start,
 * written when changed (serialised writes) and at stop. Evictions are the storage's own count,
 * folded in whenever the counters are read or written.
 */
export class ServerCounters {
  readonly values = Object.fromEntries(COUNTERS.map((c) => [c, 0])) as Record<CounterName, number>;
  since = Date.now();
  private store: ServerStorage | null = null;
  private db: CounterPersistence | null = null;
  private storeEvictionsSeen = 0;
  private dirty = false;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    private readonly log: Pick<Logger, 'warn'>,
    private readonly onBump: (name: CounterName, n: number) => void = () => {},
  ) {}

  bump(name: CounterName, n = 1): void {
    if (n === 0) return;
    this.values[name] += n;
    this.dirty = true;
    this.onBump(name, n);
  }

  syncEvictions(): void {
    const seen = this.store?.summary().evictions ?? this.storeEvictionsSeen;
    if (seen > this.storeEvictionsSeen) this.bump('evictions', seen - this.storeEvictionsSeen);
    this.storeEvictionsSeen = seen;
  }

  /** Attaches to the store and loads what it persisted; unreadable or invalid counters start from zero. */
  async load(store: ServerStorage): Promise<void> {
    this.store = store;
    this.db = store.counters;
    if (!this.db) return;
    let raw: unknown;
    try {
      raw = await this.db.get();
    } catch (e) {
      this.log.warn('persisted counters unreadable; starting from zero', { error: errorMessage(e) });
      return;
    }
    const r = PersistedStats.safeParse(raw);
    if (!r.success) {
      if (raw !== undefined) this.log.warn('persisted counters invalid; starting from zero');
      return;
    }
    for (const c of COUNTERS) this.values[c] = r.data.counters[c] ?? 0;
    this.since = r.data.since;
  }

  /** Writes the counters if they changed (or `force`); writes are serialised. */
  flush(force: boolean): Promise<void> {
    this.syncEvictions();
    const db = this.db;
    if (!db || (!this.dirty && !force)) return this.writing;
    this.dirty = false;
    const value: PersistedStats = { v: 1, counters: { ...this.values }, since: this.since };
    this.writing = this.writing.then(() =>
      db.put(value).catch((e: unknown) => {
        this.dirty = true;
        this.log.warn('could not persist counters', { error: errorMessage(e) });
      }),
    );
    return this.writing;
  }

  reset(): Promise<void> {
    this.syncEvictions();
    for (const c of COUNTERS) this.values[c] = 0;
    this.since = Date.now();
    return this.flush(true);
  }

  /** Forgets the store (it is about to close); later flushes write nothing. */
  detach(): void {
    this.store = null;
    this.db = null;
  }
}
