import { COUNTERS, type StatsView } from './counters.js';

/** Counters that are byte or millisecond totals get their unit in the metric name. */
const NAMES: Partial<Record<string, string>> = {
  bytes_written: 'ltocache_daemon_written_bytes_total',
  time_saved_ms: 'ltocache_daemon_time_saved_milliseconds_total',
  compile_ms: 'ltocache_daemon_compile_milliseconds_total',
};

function label(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

/**
 * `ltocache stats --prometheus`: the daemon's counters in the Prometheus text format (0.0.4), the
 * format the team server's `/metrics` speaks. The counters are the persisted ones: they count
 * since `ltocache_daemon_since_seconds` (a `stats --zero` starts them again).
 */
export function formatPrometheus(s: StatsView): string {
  const out: string[] = [];
  const metric = (name: string, type: 'counter' | 'gauge', help: string, samples: [string, number][]) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, v] of samples) out.push(`${name}${labels} ${v}`);
  };
  for (const c of COUNTERS) {
    metric(NAMES[c] ?? `ltocache_daemon_${c}_total`, 'counter', `The daemon's ${c} counter (stats --json: ${c}).`, [['', s[c]]]);
  }
  metric(
    'ltocache_daemon_uncacheable_by_reason_total',
    'counter',
    'Uncacheable jobs, by reason.',
    Object.entries(s.uncacheable_by_reason).map(([k, v]) => [`{reason="${label(k)}"}`, v]),
  );
  metric(
    'ltocache_daemon_errors_by_kind_total',
    'counter',
    'Errors, by kind.',
    Object.entries(s.errors_by_kind).map(([k, v]) => [`{kind="${label(k)}"}`, v]),
  );
  metric('ltocache_daemon_store_entries', 'gauge', 'Entries in the local store.', [['', s.entries]]);
  metric('ltocache_daemon_store_bytes', 'gauge', 'Bytes in the local store.', [['', s.store_bytes]]);
  metric('ltocache_daemon_store_max_bytes', 'gauge', 'The local store size bound.', [['', s.max_bytes]]);
  metric('ltocache_daemon_up', 'gauge', '1 when the daemon answered, 0 when these figures were read from its store.', [['', s.daemon_running ? 1 : 0]]);
  metric('ltocache_daemon_since_seconds', 'gauge', 'When the counters started (Unix time).', [['', Math.floor(Date.parse(s.since) / 1000)]]);
  return `${out.join('\n')}\n`;
}
