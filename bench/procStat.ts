/**
 * What the benchmarks read of a process from /proc (Linux), in one place: CPU time in ticks and
 * in nanoseconds, per process and per thread.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** USER_HZ: sysconf(_SC_CLK_TCK) is 100 on Linux. */
export const TICK_MS = 10;

/**
 * The numeric fields of `/proc/<pid>/stat` (or of one thread's, `/proc/<pid>/task/<tid>/stat`)
 * after the parenthesised command name: index 0 is field 3 (state); utime 11, stime 12, cutime
 * 13, cstime 14.
 */
export function statFields(pid: number | 'self', tid?: number | string): number[] {
  const raw = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8');
  return raw
    .slice(raw.lastIndexOf(')') + 2)
    .split(' ')
    .map(Number);
}

/** User + system CPU ms of a process's threads, or of its waited-for children (`children`), in ticks. */
export function ticksCpuMs(pid: number | 'self', children = false): number {
  const f = statFields(pid);
  return ((f[children ? 13 : 11] ?? 0) + (f[children ? 14 : 12] ?? 0)) * TICK_MS;
}

/** CPU ms of one thread from its schedstat (nanoseconds); NaN when it cannot be read. */
export function threadCpuMs(pid: number, tid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
  } catch {
    return NaN;
  }
}

/**
 * CPU ms of a process: the run time of its threads from `/proc/<pid>/task/<tid>/schedstat`
 * (nanoseconds), so a warm row's few milliseconds are not rounded to 10 ms ticks; without
 * schedstat, user + system in ticks. A thread that has ended is missing from the former: the
 * daemon's and the servers' threads live as long as their process. NaN when the process is gone.
 */
export function processCpuMs(pid: number): number {
  try {
    let ns = 0;
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        // The thread ended between the listing and the read.
      }
    }
    if (Number.isFinite(ns) && ns > 0) return ns / 1e6;
  } catch {
    // No schedstat: ticks below.
  }
  try {
    return ticksCpuMs(pid);
  } catch {
    return NaN;
  }
}
