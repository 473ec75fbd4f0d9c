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
});
export type JobRecord = z.infer<typeof JobRecord>;

const OutputHistory = z.object({ last: JobRecord, previous: JobRecord.optional() });

/** Jobs separated by more than this much idle time belong to different builds. */
export const BUILD_GAP_MS = 10_000;
const MAX_LOG = 50_000;

interface Recorded {
  req: CompileRequest;
  startedAt: number;
  endedAt: number;
  result: JobResult;
  key?: string | undefined;
  manifest?: Manifest | undefined;
  reason?: string | undefined;
  savedMs?: number | undefined;
}

/**
 * What the daemon remembers about jobs, for `explain` and traces: the manifest of every key,
 * the last two jobs per output path, and a time-ordered log. Writes are batched.
 */
export class JobLog {
  private pending: { type: 'put'; sublevel: string; key: string; value: string }[] = [];
  private timer: NodeJS.Timeout | null = null;
  private seq = 0;
  private readonly lastByOutput = new Map<string, JobRecord>();
  private written = 0;

  constructor(private readonly store: LocalStore) {}

  async record(r: Recorded): Promise<void> {
    const obj = r.req.args[r.req.args.indexOf('-o') + 1];
    const output = obj ? resolve(r.req.cwd, obj) : r.req.cwd;
    const rec: JobRecord = { output, cwd: r.req.cwd, key: r.key, result: r.result, reason: r.reason, startedAt: r.startedAt, endedAt: r.endedAt, savedMs: r.savedMs };
    if (r.key && r.manifest) this.pending.push({ type: 'put', sublevel: 'manifests', key: r.key, value: JSON.stringify(r.manifest) });
    let previous = this.lastByOutput.get(output);
    if (!previous) {
      const stored = await this.getJson('outputs', output, OutputHistory);
      previous = stored?.last;
    }
    this.lastByOutput.set(output, rec);
    if (this.lastByOutput.size > 100_000) this.lastByOutput.clear();
    this.pending.push({ type: 'put', sublevel: 'outputs', key: output, value: JSON.stringify({ last: rec, previous }) });
    this.pending.push({ type: 'put', sublevel: 'log', key: `${String(r.startedAt).padStart(15, '0')}-${String(this.seq++).padStart(9, '0')}`, value: JSON.stringify(rec) });
    this.timer ??= setTimeout(() => void this.flush(), 200);
  }

  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const ops = this.pending;
    this.pending = [];
    if (!ops.length) return;
    const bySub = new Map<string, typeof ops>();
    for (const op of ops) bySub.set(op.sublevel, [...(bySub.get(op.sublevel) ?? []), op]);
    for (const [name, list] of bySub) {
      await this.store.sublevel(name).batch(list.map((o) => ({ type: 'put' as const, key: o.key, value: o.value })));
    }
    this.written += ops.length;
    if (this.written > 10_000) {
      this.written = 0;
      await this.prune();
    }
  }

  private async prune(): Promise<void> {
    const log = this.store.sublevel('log');
    const keys: string[] = [];
    for await (const k of log.keys({ reverse: true })) keys.push(String(k));
    const old = keys.slice(MAX_LOG);
    if (old.length) await log.batch(old.map((key) => ({ type: 'del' as const, key })));
  }

  private async getJson<T>(sublevel: string, key: string, schema: z.ZodType<T>): Promise<T | undefined> {
    const raw = await this.store.sublevel(sublevel).get(key);
    if (raw === undefined) return undefined;
    const parsed = schema.safeParse(typeof raw === 'string' ? JSON.parse(raw) : raw);
    return parsed.success ? parsed.data : undefined;
  }

  async manifestOf(key: string | undefined): Promise<Manifest | undefined> {
    return key ? this.getJson('manifests', key, Manifest) : undefined;
  }

  /** The last two jobs for an output path, with their manifests. */
  async explainRecord(path: string): Promise<unknown> {
    await this.flush();
    const h = await this.getJson('outputs', resolve(path), OutputHistory);
    if (!h) return null;
    return { last: h.last, previous: h.previous ?? null, lastManifest: (await this.manifestOf(h.last.key)) ?? null, previousManifest: (await this.manifestOf(h.previous?.key)) ?? null };
  }

  /** The jobs of the last build: going back from the newest job until a gap of BUILD_GAP_MS. */
  async lastBuild(): Promise<JobRecord[]> {
    await this.flush();
    const out: JobRecord[] = [];
    let earliestStart = Infinity;
    for await (const v of this.store.sublevel('log').values({ reverse: true })) {
      const parsed = JobRecord.safeParse(typeof v === 'string' ? JSON.parse(v) : v);
      if (!parsed.success) continue;
      const r = parsed.data;
      if (out.length && r.endedAt < earliestStart - BUILD_GAP_MS) break;
      out.push(r);
      earliestStart = Math.min(earliestStart, r.startedAt);
    }
    return out.reverse();
  }
}
