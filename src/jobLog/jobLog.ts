import { resolve } from 'node:path';
import { z } from 'zod';
import { Manifest } from '../key/manifest.js';
import type { CompileRequest } from '../protocol/clientFrames.js';
import type { LocalStore } from '../store/localStore.js';

export type JobResult = 'hit' | 'remote-hit' | 'miss' | 'uncacheable' | 'error';

export const JobRecord = z.object({
  output: z.string(),
  cwd: z.string(),
  key: z.string().optional(),
  result: z.enum(['hit', 'remote-hit', 'miss', 'uncacheable', 'error']),
  reason: z.string().optional(),
  startedAt: z.number(),
  endedAt: z.number(),
  savedMs: z.number().optional(),
  bytes: z.number().optional(),
  /** Key of the previous job for the same output path, for explaining this one. */
  prevKey: z.string().optional(),
});
export type JobRecord = z.infer<typeof JobRecord>;

/** An output's or input's history. Earlier versions also stored the job before `last` as `previous`: its key is `last.prevKey`, and the field is dropped when read. */
const OutputHistory = z.object({ last: JobRecord });

/** Default idle time that separates two builds (config `build_gap_ms`). */
export const BUILD_GAP_MS = 10_000;
const MAX_LOG = 50_000;
/** Records written between two prunes. */
const PRUNE_EVERY = 10_000;
/** A prune waits for this long without a record (a build in progress is not slowed). */
export const PRUNE_QUIET_MS = 30_000;

interface Recorded {
  /** Only where the job ran and its arguments are kept. */
  req: Pick<CompileRequest, 'cwd' | 'args'>;
  startedAt: number;
  endedAt: number;
  result: JobResult;
  key?: string | undefined;
  manifest?: Manifest | undefined;
  reason?: string | undefined;
  savedMs?: number | undefined;
  bytes?: number | undefined;
  /** The object path as the job named it, when the job could be parsed. */
  output?: string | undefined;
  /** The input bitcode path as the manifest names it, when there is no manifest (a memo hit). */
  input?: string | undefined;
}

/** Best-effort output of a job that could not be parsed (for the log only). */
function outputOf(args: string[]): string | undefined {
  const i = args.indexOf('-o');
  if (i >= 0) return args[i + 1];
  return args.find((a) => a.startsWith('-o') && a.length > 2)?.slice(2);
}

/**
 * What the daemon remembers about jobs, for `explain` and traces: the manifest of every key,
 * the last job per output and per input path (its record names the key of the job before), and
 * a time-ordered log. Writes are batched. Bounded: the log keeps its newest `maxLog` records, and
 * output and input histories older than its oldest record go with the manifests no kept record
 * names (pruneIfDue).
 */
export class JobLog {
  private pending: { sublevel: string; key: string; json: string }[] = [];
  private timer: NodeJS.Timeout | null = null;
  private seq = 0;
  private readonly lastByOutput = new Map<string, JobRecord>();
  private readonly lastByInput = new Map<string, JobRecord>();
  private readonly manifestsWritten = new Set<string>();
  private written = 0;
  /** Due at start (a daemon's life may be shorter than PRUNE_EVERY records), then every PRUNE_EVERY. */
  private pruneDue = true;
  private pruning = false;
  private lastRecordAt = 0;

  constructor(
    private readonly store: LocalStore,
    private readonly buildGapMs = BUILD_GAP_MS,
    private readonly maxLog = MAX_LOG,
  ) {}

  async record(r: Recorded): Promise<void> {
    this.lastRecordAt = Date.now();
    const output = resolve(r.req.cwd, r.output ?? outputOf(r.req.args) ?? '.');
    // A key's manifest is the same on every job with that key (but for unkeyed `dropped`
    // arguments): write it once per daemon lifetime, not on every hit.
    if (r.key && r.manifest && !this.manifestsWritten.has(r.key)) {
      if (this.manifestsWritten.size >= 100_000) this.manifestsWritten.clear();
      this.manifestsWritten.add(r.key);
      this.pending.push({ sublevel: 'manifests', key: r.key, json: JSON.stringify(r.manifest) });
    }
    // The input bitcode identifies a job whose output name changes on every build (DTLTO puts
    // the linker's PID in it): without an earlier job for the output, the one for the input is
    // the previous job.
    const inputPath = r.manifest?.input.path ?? r.input;
    const input = inputPath ? resolve(r.req.cwd, inputPath) : undefined;
    let previous = this.lastByOutput.get(output);
    if (!previous) previous = (await this.getJson('outputs', output, OutputHistory))?.last;
    if (!previous && input) previous = this.lastByInput.get(input) ?? (await this.getJson('inputs', input, OutputHistory))?.last;
    const rec: JobRecord = {
      output,
      cwd: r.req.cwd,
      key: r.key,
      result: r.result,
      reason: r.reason,
      startedAt: r.startedAt,
      endedAt: r.endedAt,
      savedMs: r.savedMs,
      bytes: r.bytes,
      prevKey: previous?.key,
    };
    // One serialisation per record: the histories embed it (a hit drained from a notice costs
    // little else).
    const json = JSON.stringify(rec);
    // The job before is named by its key (`prevKey`), not stored again: a third of a hit's bytes.
    const history = `{"last":${json}}`;
    this.lastByOutput.set(output, rec);
    if (this.lastByOutput.size > 100_000) this.lastByOutput.clear();
    this.pending.push({ sublevel: 'outputs', key: output, json: history });
    if (input) {
      this.lastByInput.set(input, rec);
      if (this.lastByInput.size > 100_000) this.lastByInput.clear();
      this.pending.push({ sublevel: 'inputs', key: input, json: history });
    }
    this.pending.push({ sublevel: 'log', key: `${String(r.startedAt).padStart(15, '0')}-${String(this.seq++).padStart(9, '0')}`, json });
    // Best effort: a failed write (a full disk) loses these records, never the daemon (an
    // unhandled rejection here used to kill it).
    this.timer ??= setTimeout(() => void this.flush().catch(() => {}), 200);
  }

  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const ops = this.pending;
    this.pending = [];
    if (!ops.length) return;
    await this.store.putJsonTexts(ops);
    this.written += ops.length;
    if (this.written > PRUNE_EVERY) {
      this.written = 0;
      this.pruneDue = true;
    }
  }

  /** Prunes (see the class) when due and no record came for PRUNE_QUIET_MS; the daemon calls it now and then. */
  async pruneIfDue(now = Date.now()): Promise<void> {
    if (!this.pruneDue || this.pruning || now - this.lastRecordAt < PRUNE_QUIET_MS) return;
    this.pruning = true;
    try {
      await this.flush();
      await this.prune();
      this.pruneDue = false;
    } finally {
      this.pruning = false;
    }
  }

  private async prune(): Promise<void> {
    const log = this.store.sublevel('log');
    const keys: string[] = [];
    for await (const k of log.keys({ reverse: true })) keys.push(String(k));
    await deleteKeys(log, keys.slice(this.maxLog));
    // What the kept records need: their keys' and previous keys' manifests, and the histories of
    // outputs and inputs since the oldest of them.
    const keep = new Set<string>();
    let oldest = Number.POSITIVE_INFINITY;
    for await (const v of log.values()) {
      const r = JobRecord.safeParse(parseOrNull(v));
      if (!r.success) continue;
      oldest = Math.min(oldest, r.data.startedAt);
      for (const k of [r.data.key, r.data.prevKey]) if (k) keep.add(k);
    }
    for (const name of ['outputs', 'inputs']) {
      const sub = this.store.sublevel(name);
      const old: string[] = [];
      for await (const [k, v] of sub.iterator()) {
        const h = OutputHistory.safeParse(parseOrNull(v));
        if (!h.success || h.data.last.startedAt < oldest) old.push(String(k));
        else for (const key of [h.data.last.key, h.data.last.prevKey]) if (key) keep.add(key);
      }
      await deleteKeys(sub, old);
    }
    const manifests = this.store.sublevel('manifests');
    const unused: string[] = [];
    for await (const k of manifests.keys()) if (!keep.has(String(k))) unused.push(String(k));
    await deleteKeys(manifests, unused);
    for (const k of unused) this.manifestsWritten.delete(k);
  }

  /** How many keys one of the log's sublevels holds (tests). */
  async count(sublevel: 'log' | 'outputs' | 'inputs' | 'manifests'): Promise<number> {
    let n = 0;
    for await (const _ of this.store.sublevel(sublevel).keys()) n++;
    return n;
  }

  private async getJson<T>(sublevel: string, key: string, schema: z.ZodType<T>): Promise<T | undefined> {
    // Synchronous once open (getSync does not wait for a deferred open): a small read from
    // LevelDB's cache costs less than a thread-pool round trip.
    const sub = this.store.sublevel(sublevel);
    const raw = sub.status === 'open' ? sub.getSync(key) : await sub.get(key);
    if (raw === undefined) return undefined;
    const parsed = schema.safeParse(typeof raw === 'string' ? JSON.parse(raw) : raw);
    return parsed.success ? parsed.data : undefined;
  }

  async manifestOf(key: string | undefined): Promise<Manifest | undefined> {
    return key ? this.getJson('manifests', key, Manifest) : undefined;
  }

  /** The last job recorded for an output path (absolute), else for an input bitcode path. */
  async lastJobFor(path: string): Promise<JobRecord | undefined> {
    await this.flush();
    return (await this.getJson('outputs', resolve(path), OutputHistory))?.last ?? (await this.getJson('inputs', resolve(path), OutputHistory))?.last;
  }

  /** The jobs of the last build. */
  async lastBuild(): Promise<JobRecord[]> {
    return (await this.builds(1))[0] ?? [];
  }

  /**
   * Recent builds, newest first. A build is a burst of jobs: going back in time, a job whose end
   * is more than the build gap before the earliest start seen so far begins an older build.
   */
  async builds(limit: number): Promise<JobRecord[][]> {
    await this.flush();
    const builds: JobRecord[][] = [];
    let cur: JobRecord[] = [];
    let earliestStart = Infinity;
    for await (const v of this.store.sublevel('log').values({ reverse: true })) {
      const parsed = JobRecord.safeParse(typeof v === 'string' ? JSON.parse(v) : v);
      if (!parsed.success) continue;
      const r = parsed.data;
      if (cur.length && r.endedAt < earliestStart - this.buildGapMs) {
        builds.push(cur.reverse());
        if (builds.length >= limit) return builds;
        cur = [];
        earliestStart = Infinity;
      }
      cur.push(r);
      earliestStart = Math.min(earliestStart, r.startedAt);
    }
    if (cur.length && builds.length < limit) builds.push(cur.reverse());
    return builds;
  }
}

function parseOrNull(v: unknown): unknown {
  if (typeof v !== 'string') return v;
  try {
    return JSON.parse(v);
  } catch {
    return null;
  }
}

/** Deletes `keys` in batches of a few thousand. */
async function deleteKeys(sub: ReturnType<LocalStore['sublevel']>, keys: readonly string[]): Promise<void> {
  for (let i = 0; i < keys.length; i += 5000) await sub.batch(keys.slice(i, i + 5000).map((key) => ({ type: 'del' as const, key })));
}
