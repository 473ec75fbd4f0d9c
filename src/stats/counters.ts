import { z } from 'zod';

/** Where the daemon persists its counters: this key of this sublevel of the local store. */
export const STATS_SUBLEVEL = 'stats';
export const STATS_KEY = 'counters';

/**
 * Integer counters, persisted across restarts. The values are the `stats --json` field names and
 * the persisted names: never rename one.
 */
export const Counter = {
  hits: 'hits',
  misses: 'misses',
  uncacheable: 'uncacheable',
  errors: 'errors',
  remote_hits: 'remote_hits',
  remote_misses: 'remote_misses',
  remote_errors: 'remote_errors',
  uploads: 'uploads',
  uploads_dropped: 'uploads_dropped',
  uploads_refused: 'uploads_refused',
  remote_skipped: 'remote_skipped',
  bytes_written: 'bytes_written',
  time_saved_ms: 'time_saved_ms',
  compile_ms: 'compile_ms',
  evictions: 'evictions',
  corrupt_blobs: 'corrupt_blobs',
  verify_runs: 'verify_runs',
  verify_mismatches: 'verify_mismatches',
  verify_skipped: 'verify_skipped',
  /** Hits the native client served from a memo without the daemon (also counted in `hits`). */
  memo_hits: 'memo_hits',
  memos_written: 'memos_written',
  /** Distribution memos written (docs/dtlto.md): a relink the native client can serve whole. */
  dist_memos_written: 'dist_memos_written',
  /** Misses whose outputs the native client stored itself (docs/protocol.md, 'S'; also in `misses`). */
  misses_stored_by_client: 'misses_stored_by_client',
  /** Team memos of stored misses sent to the team cache (docs/team-cache.md "Team memos"). */
  team_memos_shared: 'team_memos_shared',
  /** Hits whose key came from a teammate's team memo, without keying the job here (also in `hits`). */
  team_memo_hits: 'team_memo_hits',
  /** Team memos claimed by a job that did not serve it: a check failed here, or no tier had the entry. */
  team_memos_unusable: 'team_memos_unusable',
  /** Team memos fetched that were not valid team memos. */
  team_memos_rejected: 'team_memos_rejected',
  /** Entries written into a team pack (docs/team-cache.md "Team memos", step 4): fetched ahead with their memos in one file. */
  team_pack_entries: 'team_pack_entries',
  /** Hits the native client served from a team pack without the daemon (also in `hits` and `memo_hits`). */
  team_pack_hits: 'team_pack_hits',
  /** Team pack entries written into the local store and given memo files once the build was over. */
  team_pack_adopted: 'team_pack_adopted',
  /** Compile slots taken back from holders that kept them SLOT_STUCK_MS while a job waited (a client stopped mid-compile). */
  compile_slots_reclaimed: 'compile_slots_reclaimed',
} as const;
export type CounterName = (typeof Counter)[keyof typeof Counter];
/** Every counter, in `stats` display order. */
export const COUNTERS: readonly CounterName[] = Object.values(Counter);

/**
 * Kinds of `errors`, the keys of `errors_by_kind`. The values are persisted and printed: never
 * rename one.
 */
export const ErrorKind = {
  /** A malformed frame or request from a client. */
  protocol: 'protocol',
  /** A bug: an exception escaped a request handler. */
  internal: 'internal',
  /** A stored entry failed verification on read and was dropped. */
  corrupt_entry: 'corrupt_entry',
  store_read: 'store_read',
  store_write: 'store_write',
  store_refused: 'store_refused',
  /** A stored entry's outputs are not the ones this job writes. */
  entry_outputs_mismatch: 'entry_outputs_mismatch',
  /** A hit's outputs could not be written to the job's paths. */
  materialize: 'materialize',
  /** The compiler could not be run. */
  compile: 'compile',
  /** clang exited 0 but reported a backend failure or wrote an empty object. */
  backend_failure_exit_0: 'backend_failure_exit_0',
  missing_output: 'missing_output',
  /** clang exited 0 and an output file is the one that was there before it ran: not stored. */
  output_not_replaced: 'output_not_replaced',
  inputs_changed_during_compile: 'inputs_changed_during_compile',
  /** An output not redirected to a private temp was written by another process after the compiler ended: not stored. */
  output_written_after_compile: 'output_written_after_compile',
  /** A DTLTO job's stdout or stderr names a file of its link (lld's PID): not stored. */
  output_names_link: 'output_names_link',
  /** A memo could not be written (the next run goes through the daemon). */
  memo_write: 'memo_write',
  /** A verify recompile could not be run. */
  verify: 'verify',
} as const;
export type ErrorKind = (typeof ErrorKind)[keyof typeof ErrorKind];

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
    this.add(Counter.uncacheable);
    this.uncacheable.set(reason, (this.uncacheable.get(reason) ?? 0) + 1);
  }
  error(kind: ErrorKind): void {
    this.add(Counter.errors);
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
