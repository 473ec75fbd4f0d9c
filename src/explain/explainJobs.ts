import { relative } from 'node:path';
import type { JobLog, JobRecord } from '../jobLog/jobLog.js';
import { type Cause, explainMiss } from './explainMiss.js';

export interface JobExplanation {
  output: string;
  result: JobRecord['result'];
  at: string;
  key: string | null;
  previousKey: string | null;
  reason: string | null;
  causes: Cause[];
}

/** Explains one recorded job: a hit has no causes; a miss is diffed against the previous job. */
export async function explainJob(log: JobLog, job: JobRecord): Promise<JobExplanation> {
  const base = {
    output: job.output,
    result: job.result,
    at: new Date(job.startedAt).toISOString(),
    key: job.key ?? null,
    previousKey: job.prevKey ?? null,
    reason: job.reason ?? null,
  };
  if (job.result !== 'miss') return { ...base, causes: [] };
  const cur = await log.manifestOf(job.key);
  if (!cur) return { ...base, causes: [] };
  if (job.prevKey && job.prevKey === job.key) {
    return {
      ...base,
      causes: [{ kind: 'not-stored', detail: 'same key as the previous job: the entry was evicted, found corrupt, or the previous compile failed and was not stored' }],
    };
  }
  const prev = job.prevKey ? await log.manifestOf(job.prevKey) : undefined;
  if (job.prevKey && !prev) return { ...base, causes: [{ kind: 'not-stored', detail: 'the previous manifest is no longer recorded' }] };
  return { ...base, causes: explainMiss(prev, cur) };
}

export interface BuildSummary {
  jobs: number;
  hits: number;
  remote_hits: number;
  misses: number;
  uncacheable: number;
  errors: number;
  started: string | null;
  ended: string | null;
  wall_ms: number;
  saved_ms: number;
  /** Misses grouped by cause kind (a miss with several causes counts once per kind). */
  miss_causes: Record<string, number>;
  /** Changed imported modules, by how many importers missed because of them. */
  top_changed_modules: { module: string; importers_missed: number }[];
  misses_detail: JobExplanation[];
}

/** Summarises a build (a burst of jobs, see BUILD_GAP_MS in jobLog/jobLog.ts). */
export async function summariseBuild(log: JobLog, jobs: JobRecord[], cwdForNames?: string): Promise<BuildSummary> {
  const s: BuildSummary = {
    jobs: jobs.length,
    hits: 0,
    remote_hits: 0,
    misses: 0,
    uncacheable: 0,
    errors: 0,
    started: null,
    ended: null,
    wall_ms: 0,
    saved_ms: 0,
    miss_causes: {},
    top_changed_modules: [],
    misses_detail: [],
  };
  if (!jobs.length) return s;
  const start = Math.min(...jobs.map((j) => j.startedAt));
  const end = Math.max(...jobs.map((j) => j.endedAt));
  s.started = new Date(start).toISOString();
  s.ended = new Date(end).toISOString();
  s.wall_ms = end - start;
  const modules = new Map<string, number>();
  for (const j of jobs) {
    if (j.result === 'hit' || j.result === 'remote-hit') {
      s.hits++;
      if (j.result === 'remote-hit') s.remote_hits++;
      s.saved_ms += j.savedMs ?? 0;
    } else if (j.result === 'miss') {
      s.misses++;
      const e = await explainJob(log, j);
      s.misses_detail.push(e);
      for (const k of new Set(e.causes.map((c) => c.kind))) s.miss_causes[k] = (s.miss_causes[k] ?? 0) + 1;
      for (const c of e.causes) if (c.kind === 'import-changed') modules.set(c.module, (modules.get(c.module) ?? 0) + 1);
    } else if (j.result === 'uncacheable') s.uncacheable++;
    else s.errors++;
  }
  s.top_changed_modules = [...modules]
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .slice(0, 10)
    .map(([module, n]) => ({ module: cwdForNames ? relative(cwdForNames, module) || module : module, importers_missed: n }));
  return s;
}

export function formatExplanation(e: JobExplanation): string {
  const lines = [`${e.output}: ${e.result === 'remote-hit' ? 'hit (team cache)' : e.result} at ${e.at}`];
  if (e.key) lines.push(`  key ${e.key}${e.previousKey ? ` (previous ${e.previousKey})` : ''}`);
  if (e.reason) lines.push(`  ${e.reason}`);
  for (const c of e.causes) lines.push(`  - ${c.detail}`);
  return lines.join('\n');
}

export function formatBuild(s: BuildSummary): string {
  const lines = [
    `last build: ${s.jobs} jobs from ${s.started ?? '-'} to ${s.ended ?? '-'} (${(s.wall_ms / 1000).toFixed(2)} s)`,
    `  hits ${s.hits} (team cache ${s.remote_hits}), misses ${s.misses}, uncacheable ${s.uncacheable}, errors ${s.errors}, compile time saved ${(s.saved_ms / 1000).toFixed(2)} s`,
  ];
  if (s.misses) {
    lines.push('misses by cause:');
    for (const [k, n] of Object.entries(s.miss_causes).sort((a, b) => b[1] - a[1])) lines.push(`  ${String(n).padStart(5)}  ${k}`);
  }
  if (s.top_changed_modules.length) {
    lines.push('changed modules that made importers miss:');
    for (const m of s.top_changed_modules) lines.push(`  ${String(m.importers_missed).padStart(5)}  ${m.module}`);
  }
  return lines.join('\n');
}
