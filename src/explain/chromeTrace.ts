import { basename } from 'node:path';
import type { JobRecord } from '../jobLog/jobLog.js';

/** Trace categories, one per job outcome, with the trace viewer's reserved colour names. */
const CATEGORY: Record<JobRecord['result'], { cat: string; cname: string }> = {
  hit: { cat: 'hit-local', cname: 'good' },
  'remote-hit': { cat: 'hit-remote', cname: 'rail_load' },
  miss: { cat: 'miss', cname: 'terrible' },
  uncacheable: { cat: 'uncacheable', cname: 'grey' },
  error: { cat: 'error', cname: 'black' },
};

export interface TraceEvent {
  name: string;
  ph: 'X' | 'M';
  pid: number;
  tid: number;
  ts?: number;
  dur?: number;
  cat?: string;
  cname?: string;
  args?: Record<string, unknown>;
}

/**
 * The jobs of a build in the Chrome trace-event format (JSON object form), loadable in Perfetto
 * and chrome://tracing: one complete ('X') event per job, on one track per concurrent slot
 * (greedy interval partitioning, so overlapping jobs never share a track).
 */
export function chromeTrace(jobs: JobRecord[]): { traceEvents: TraceEvent[]; displayTimeUnit: 'ms'; otherData: Record<string, unknown> } {
  const sorted = [...jobs].sort((a, b) => a.startedAt - b.startedAt || a.endedAt - b.endedAt);
  const t0 = sorted[0]?.startedAt ?? 0;
  const slotEnds: number[] = [];
  const events: TraceEvent[] = [];
  for (const j of sorted) {
    let slot = slotEnds.findIndex((end) => end <= j.startedAt);
    if (slot < 0) {
      slot = slotEnds.length;
      slotEnds.push(0);
    }
    slotEnds[slot] = Math.max(j.endedAt, j.startedAt + 1);
    const c = CATEGORY[j.result];
    events.push({
      name: basename(j.output),
      ph: 'X',
      pid: 1,
      tid: slot + 1,
      ts: (j.startedAt - t0) * 1000,
      dur: Math.max(1, (j.endedAt - j.startedAt) * 1000),
      cat: c.cat,
      cname: c.cname,
      args: { output: j.output, result: j.result, key: j.key ?? null, bytes: j.bytes ?? 0, saved_ms: j.savedMs ?? 0, ...(j.reason ? { reason: j.reason } : {}) },
    });
  }
  const meta: TraceEvent[] = [{ name: 'process_name', ph: 'M', pid: 1, tid: 0, args: { name: 'ltocache build' } }];
  for (let i = 0; i < slotEnds.length; i++) meta.push({ name: 'thread_name', ph: 'M', pid: 1, tid: i + 1, args: { name: `slot ${i + 1}` } });
  return { traceEvents: [...meta, ...events], displayTimeUnit: 'ms', otherData: { generator: 'ltocache', jobs: jobs.length, started: new Date(t0).toISOString() } };
}
