import { z } from 'zod';

/** Integer counters, persisted across restarts. Names are the `stats --json` field names. */
export const COUNTERS = [
  'hits',
  'misses',
  'uncacheable',
  'errors',
  'remote_hits',
  'remote_misses',
  'remote_errors',
  'uploads',
  'uploads_dropped',
  'uploads_refused',
  'remote_skipped',
  'bytes_written',
  'time_saved_ms',
  'compile_ms',
  'evictions',
  'corrupt_blobs',
  'verify_runs',
  'verify_mismatches',
  'verify_skipped',
] as const;
export type CounterName = (typeof COUNTERS)[number];

export const StatsRecord = z.object({
  v: z.literal(1),
  counters: z.record(z.string(), z.number().int().nonnegative()),
  uncacheable_by_reason: z.record(z.string(), z.number().int().nonnegative()),
  errors_by_kind: z.record(z.string(), z.number().int().nonnegative()),
  since: z.number().int(),
});
export type StatsRecord = z.infer<typeof StatsRecord>;

/** The shape `ltocache stats --json` prints: counters at the top level, breakdowns nested. */
export interface StatsView extends Record<CounterName, number> {
  entries: number;
  store_bytes: number;
  max_bytes: number;
  uncacheable_by_reason: Record<string, number>;
  errors_by_kind: Record<string, number>;
  since: string;
  daemon_running: boolean;
}

/** In-memory counters; `snapshot()`/`restore()` move them to and from storage. */
export class Counters {
  private c = new Map<CounterName, number>();
  private uncacheable = new Map<string, number>();
  private errorKinds = new Map<string, number>();
  since = Date.now();
  /** Bumped on every change, so a flusher can tell whether anything is new. */
  version = 0;

  add(name: CounterName, n = 1): void {
    if (n === 0) return;
    this.c.set(name, (this.c.get(name) ?? 0) + Math.round(n));
    this.version++;
  }
  get(name: CounterName): number {
    return this.c.get(name) ?? 0;
  }
  uncacheableFor(reason: string): void {
    this.add('uncacheable');
    this.uncacheable.set(reason, (this.uncacheable.get(reason) ?? 0) + 1);
  }
  error(kind: string): void {
    this.add('errors');
    this.errorKinds.set(kind, (this.errorKinds.get(kind) ?? 0) + 1);
  }
  zero(): void {
    this.c.clear();
    this.uncacheable.clear();
    this.errorKinds.clear();
    this.since = Date.now();
    this.version++;
  }
  snapshot(): StatsRecord {
    return {
      v: 1,
      counters: Object.fromEntries(this.c),
      uncacheable_by_reason: Object.fromEntries(this.uncacheable),
      errors_by_kind: Object.fromEntries(this.errorKinds),
      since: this.since,
    };
  }
  restore(r: StatsRecord): void {
    this.c = new Map(Object.entries(r.counters).filter(([k]) => (COUNTERS as readonly string[]).includes(k)) as [CounterName, number][]);
    this.uncacheable = new Map(Object.entries(r.uncacheable_by_reason));
    this.errorKinds = new Map(Object.entries(r.errors_by_kind));
    this.since = r.since;
  }
  view(extra: { entries: number; store_bytes: number; max_bytes: number; daemon_running: boolean }): StatsView {
    const out = {} as Record<CounterName, number>;
    for (const n of COUNTERS) out[n] = this.get(n);
    return {
      ...out,
      ...extra,
      uncacheable_by_reason: Object.fromEntries(this.uncacheable),
      errors_by_kind: Object.fromEntries(this.errorKinds),
      since: new Date(this.since).toISOString(),
    };
  }
}
