import type { StatsView } from './counters.js';

/** 1536 → "1.5 KiB": binary units, one decimal. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}

/** The human table of `ltocache stats`. */
export function formatStats(s: StatsView): string {
  const lookups = s.hits + s.misses;
  const rate = lookups ? ((100 * s.hits) / lookups).toFixed(1) + ' %' : '-';
  const rows: [string, string][] = [
    ['daemon', s.daemon_running ? 'running' : 'not running'],
    ['since', s.since],
    ['hits', `${s.hits}  (${rate} of cacheable jobs)`],
    ['  from team cache', String(s.remote_hits)],
    ['  by the client alone', `${s.memo_hits} (memos written: ${s.memos_written} jobs, ${s.dist_memos_written} DTLTO links)`],
    ['misses', String(s.misses)],
    ['  stored by the client', String(s.misses_stored_by_client)],
    ['uncacheable', String(s.uncacheable)],
    ...Object.entries(s.uncacheable_by_reason).map(([k, v]) => [`  ${k}`, String(v)] as [string, string]),
    ['errors', String(s.errors)],
    ...Object.entries(s.errors_by_kind).map(([k, v]) => [`  ${k}`, String(v)] as [string, string]),
    ['compile time saved', seconds(s.time_saved_ms)],
    ['compile time spent', seconds(s.compile_ms)],
    ['bytes written', formatBytes(s.bytes_written)],
    ['entries', String(s.entries)],
    ['store size', `${formatBytes(s.store_bytes)} of ${formatBytes(s.max_bytes)}`],
    ['evictions', String(s.evictions)],
    ['team cache misses', String(s.remote_misses)],
    ['team cache errors', String(s.remote_errors)],
    ['uploads', `${s.uploads} (${s.uploads_dropped} dropped)`],
    ['verified hits', `${s.verify_runs} (${s.verify_mismatches} mismatches)`],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  const lines = rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`);
  if (s.verify_mismatches > 0) lines.push('', `WARNING: ${s.verify_mismatches} served object(s) differed from a fresh compile; see the daemon log.`);
  return lines.join('\n');
}
