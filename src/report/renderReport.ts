import { chromeTrace } from '../explain/chromeTrace.js';
import type { BuildSummary } from '../explain/explainJobs.js';
import type { JobRecord } from '../jobLog/jobLog.js';
import type { StatsView } from '../stats/counters.js';
import { formatBytes } from '../stats/formatStats.js';

/** Everything `ltocache report` shows; gathered by src/cli/report.ts. */
export interface ReportData {
  /** When the report was made (ISO); passed in so rendering stays a pure function. */
  generated: string;
  cacheDir: string;
  stats: StatsView;
  /** Recent builds, newest first, as the control op `builds` answers. */
  builds: { summary: BuildSummary; jobs: number }[];
  /** The last build, as the control op `last-build` answers. */
  lastBuild: { jobs: JobRecord[]; summary: BuildSummary };
}

/**
 * The report as ONE self-contained HTML page: inline CSS, server-rendered inline SVG, the data
 * as an inert JSON block, no script and no external reference (a CSP meta tag forbids any).
 *
 * Test hooks (contract with test/e2e/report.test.ts and anyone scraping the page):
 * - `#stat-<name>[data-value]` for hits, remote_hits, misses, uncacheable, errors, entries,
 *   store_bytes, max_bytes, time_saved_ms, compile_ms, evictions (raw numbers from `stats --json`)
 *   and `#stat-hit_rate` (fraction 0..1, empty when nothing was looked up);
 * - `svg#chart-hit-rate` with one `rect.build-bar[data-hit-rate]` per build, oldest left;
 * - `svg#chart-saved` with one `rect.saved-bar[data-saved-ms]` per build, oldest left;
 * - `svg#chart-timeline` with one `rect.job[data-result][data-slot]` per job of the last build;
 * - `table#miss-causes` with one `tr[data-cause]` per cause kind;
 * - `script#ltocache-data` (type application/json): the data, without per-miss details of
 *   older builds.
 */
export function renderReport(data: ReportData): string {
  const s = data.stats;
  const builds = [...data.builds].reverse(); // oldest first: newest on the right of the charts
  const last = data.lastBuild;
  const embedded = {
    generated: data.generated,
    cacheDir: data.cacheDir,
    stats: s,
    builds: builds.map((b) => ({ jobs: b.jobs, summary: { ...b.summary, misses_detail: undefined } })),
    lastBuild: last,
  };
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ltocache">
<title>ltocache report — ${esc(data.cacheDir)}</title>
<style>${CSS}</style>
</head>
<body>
<header>
  <h1>ltocache report</h1>
  <p class="muted">cache <code>${esc(data.cacheDir)}</code> · generated ${esc(localTime(data.generated))} · counters since ${esc(localTime(s.since))} · daemon ${s.daemon_running ? 'running' : 'not running'}</p>
</header>
<main>
${headline(s)}
<div class="grid2">
  <section class="card">
    <h2>Hit rate per build</h2>
    <p class="muted">hits ÷ (hits + misses) of each build, oldest left, newest right (${builds.length} build${builds.length === 1 ? '' : 's'})</p>
    ${hitRateChart(builds)}
  </section>
  <section class="card">
    <h2>Compile time saved per build</h2>
    <p class="muted">backend compile time that hits replaced; ${esc(duration(num(s.time_saved_ms)))} in total</p>
    ${savedChart(builds)}
  </section>
</div>
<section class="card">
  <h2>Last build timeline</h2>
  <p class="muted">${lastBuildLine(last.summary)}</p>
  ${timeline(last.jobs)}
</section>
<div class="grid2">
  <section class="card">
    <h2>Top miss causes</h2>
    <p class="muted">misses by cause kind (a miss with several kinds counts once per kind)</p>
    ${missCauses(last.summary, builds)}
  </section>
  <section class="card">
    <h2>Store</h2>
    ${storePanel(s)}
  </section>
</div>
${missesTable(last.summary)}
<section class="card">
  <h2>Recent builds</h2>
  ${buildsTable(builds)}
</section>
</main>
<footer class="muted">ltocache · this page is self-contained: it loads nothing from anywhere. The data it shows is in the <code>ltocache-data</code> JSON block of its source.</footer>
<script type="application/json" id="ltocache-data">${jsonForScript(embedded)}</script>
</body>
</html>
`;
}

// ---------------------------------------------------------------------------------------------
// Formatting. Every string that reaches the page goes through esc(); numbers through num().

/** Escapes text for HTML element content and double- or single-quoted attribute values. */
export function esc(v: unknown): string {
  return String(v).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** A finite number, or 0: values come from a daemon or a store and are not trusted for markup. */
function num(v: unknown): number {
  const n = Number(v);
  return Number.isFinite(n) ? n : 0;
}

/** JSON that cannot end its <script> element or open a comment inside it. */
function jsonForScript(v: unknown): string {
  return JSON.stringify(v)
    .replace(/</g, '\\u003c')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

function duration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
  return `${Math.floor(ms / 3_600_000)} h ${Math.round((ms % 3_600_000) / 60_000)} min`;
}

function pct(fraction: number): string {
  return `${(100 * fraction).toFixed(fraction === 0 || fraction === 1 ? 0 : 1)} %`;
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

/** `YYYY-MM-DD HH:MM:SS` in the local time zone of whoever runs `ltocache report`. */
function localTime(iso: string | null | undefined): string {
  if (!iso) return '-';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

/** A short axis label for a build start, as precise as the spread of the builds needs. */
function shortTime(iso: string | null, spanMs: number): string {
  const full = localTime(iso);
  if (full === '-') return '-';
  if (spanMs < 3_600_000) return full.slice(11); // HH:MM:SS
  if (spanMs < 86_400_000) return full.slice(11, 16); // HH:MM
  return full.slice(5, 10); // MM-DD
}

/** A round step (1, 2 or 5 × 10^k) giving about `ticks` intervals over [0, range]. */
function niceStep(range: number, ticks: number): number {
  if (!(range > 0)) return 1;
  const raw = range / ticks;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function rateOf(hits: number, misses: number): number | null {
  return hits + misses > 0 ? hits / (hits + misses) : null;
}

// ---------------------------------------------------------------------------------------------
// Sections.

function stat(name: string, value: number | null, text: string): string {
  return `<span id="stat-${name}" data-value="${value === null ? '' : num(value)}">${esc(text)}</span>`;
}

function headline(s: StatsView): string {
  const hits = num(s.hits);
  const misses = num(s.misses);
  const rate = rateOf(hits, misses);
  const card = (cls: string, label: string, value: string, sub: string) =>
    `<div class="kpi ${cls}"><div class="label">${label}</div><div class="value">${value}</div><div class="sub">${sub}</div></div>`;
  return `<section class="kpis">
  ${card('k-rate', 'hit rate', stat('hit_rate', rate, rate === null ? '–' : pct(rate)), 'of cacheable jobs')}
  ${card('k-hit', 'hits', stat('hits', hits, String(hits)), `${stat('remote_hits', num(s.remote_hits), String(num(s.remote_hits)))} from the team cache`)}
  ${card('k-miss', 'misses', stat('misses', misses, String(misses)), 'compiled and stored')}
  ${card('k-unc', 'uncacheable', stat('uncacheable', num(s.uncacheable), String(num(s.uncacheable))), 'passed through')}
  ${card('k-err', 'errors', stat('errors', num(s.errors), String(num(s.errors))), 'fell back to the compiler')}
  ${card('k-saved', 'time saved', stat('time_saved_ms', num(s.time_saved_ms), duration(num(s.time_saved_ms))), `${stat('compile_ms', num(s.compile_ms), duration(num(s.compile_ms)))} spent compiling`)}
  ${card('k-store', 'entries', stat('entries', num(s.entries), String(num(s.entries))), `${stat('store_bytes', num(s.store_bytes), formatBytes(num(s.store_bytes)))} of ${stat('max_bytes', num(s.max_bytes), formatBytes(num(s.max_bytes)))}`)}
</section>`;
}

function emptyChart(id: string, w: number, h: number, message: string): string {
  return `<svg id="${id}" class="chart" viewBox="0 0 ${w} ${h}" role="img" aria-label="${esc(message)}"><text class="empty" x="${w / 2}" y="${h / 2}" text-anchor="middle">${esc(message)}</text></svg>`;
}

interface BarLayout {
  x: (i: number) => number;
  bw: number;
  labels: string;
}

/** Horizontal layout shared by the per-build charts: slots, bar width, sparse x labels. */
function barLayout(builds: ReportData['builds'], left: number, plotW: number, baseY: number): BarLayout {
  const n = builds.length;
  const slot = plotW / n;
  const bw = Math.min(48, Math.max(2, slot * 0.7));
  const x = (i: number) => left + slot * i + (slot - bw) / 2;
  const starts = builds.map((b) => (b.summary.started ? Date.parse(b.summary.started) : NaN)).filter((t) => !Number.isNaN(t));
  const span = starts.length ? Math.max(...starts) - Math.min(...starts) : 0;
  const every = Math.ceil(n / 10);
  let labels = '';
  builds.forEach((b, i) => {
    if ((n - 1 - i) % every !== 0) return; // always label the newest build
    labels += `<text class="tick" x="${f(x(i) + bw / 2)}" y="${baseY + 16}" text-anchor="middle">${esc(shortTime(b.summary.started, span))}</text>`;
  });
  return { x, bw, labels };
}

function buildTitle(b: ReportData['builds'][number]): string {
  const s = b.summary;
  const rate = rateOf(num(s.hits), num(s.misses));
  return `${localTime(s.started)}: ${num(s.jobs)} jobs, ${num(s.hits)} hits, ${num(s.misses)} misses, ${num(s.uncacheable)} uncacheable, ${num(s.errors)} errors; hit rate ${rate === null ? '-' : pct(rate)}; saved ${duration(num(s.saved_ms))}`;
}

function hitRateChart(builds: ReportData['builds']): string {
  const W = 560;
  const H = 240;
  if (!builds.length) return emptyChart('chart-hit-rate', W, H, 'no builds recorded yet');
  const L = 44;
  const R = 10;
  const T = 22;
  const B = 28;
  const plotH = H - T - B;
  const baseY = T + plotH;
  const { x, bw, labels } = barLayout(builds, L, W - L - R, baseY);
  let out = '';
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    const y = f(baseY - p * plotH);
    out += `<line class="grid" x1="${L}" x2="${W - R}" y1="${y}" y2="${y}"/><text class="tick" x="${L - 6}" y="${y}" dy="0.32em" text-anchor="end">${p * 100}%</text>`;
  }
  const showValues = builds.length <= 16;
  builds.forEach((b, i) => {
    const hits = num(b.summary.hits);
    const misses = num(b.summary.misses);
    const rate = rateOf(hits, misses);
    const h = rate === null ? 0 : rate * plotH;
    const bx = f(x(i));
    const title = `<title>${esc(buildTitle(b))}</title>`;
    out += `<rect class="bar-track" x="${bx}" y="${T}" width="${f(bw)}" height="${plotH}">${title}</rect>`;
    out += `<rect class="build-bar${rate === null ? ' no-lookups' : ''}" x="${bx}" y="${f(baseY - h)}" width="${f(bw)}" height="${f(h)}" data-build="${i}" data-started="${esc(b.summary.started ?? '')}" data-hits="${hits}" data-misses="${misses}" data-hit-rate="${rate === null ? '' : +rate.toFixed(6)}">${title}</rect>`;
    if (showValues) out += `<text class="val" x="${f(x(i) + bw / 2)}" y="${f(baseY - h - 5)}" text-anchor="middle">${rate === null ? '–' : Math.round(rate * 100) + '%'}</text>`;
  });
  out += `<line class="axis" x1="${L}" x2="${W - R}" y1="${baseY}" y2="${baseY}"/>` + labels;
  return `<svg id="chart-hit-rate" class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="hit rate per build">${out}</svg>`;
}

function savedChart(builds: ReportData['builds']): string {
  const W = 560;
  const H = 240;
  if (!builds.length) return emptyChart('chart-saved', W, H, 'no builds recorded yet');
  const L = 56;
  const R = 10;
  const T = 22;
  const B = 28;
  const plotH = H - T - B;
  const baseY = T + plotH;
  const max = Math.max(...builds.map((b) => num(b.summary.saved_ms)));
  const step = niceStep(max, 4);
  const top = Math.max(step, Math.ceil(max / step) * step);
  const { x, bw, labels } = barLayout(builds, L, W - L - R, baseY);
  let out = '';
  for (let v = 0; v <= top + step / 2; v += step) {
    const y = f(baseY - (v / top) * plotH);
    out += `<line class="grid" x1="${L}" x2="${W - R}" y1="${y}" y2="${y}"/><text class="tick" x="${L - 6}" y="${y}" dy="0.32em" text-anchor="end">${esc(axisTime(v, top))}</text>`;
  }
  builds.forEach((b, i) => {
    const ms = num(b.summary.saved_ms);
    const h = (ms / top) * plotH;
    out += `<rect class="saved-bar" x="${f(x(i))}" y="${f(baseY - h)}" width="${f(bw)}" height="${f(h)}" data-build="${i}" data-saved-ms="${ms}"><title>${esc(buildTitle(b))}</title></rect>`;
  });
  out += `<line class="axis" x1="${L}" x2="${W - R}" y1="${baseY}" y2="${baseY}"/>` + labels;
  return `<svg id="chart-saved" class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="compile time saved per build">${out}</svg>`;
}

/** Axis labels in one unit chosen from the axis' top value. */
function axisTime(ms: number, top: number): string {
  if (top < 2000) return `${+ms.toFixed(0)} ms`;
  if (top < 120_000) return `${+(ms / 1000).toFixed(1)} s`;
  if (top < 7_200_000) return `${+(ms / 60_000).toFixed(1)} min`;
  return `${+(ms / 3_600_000).toFixed(1)} h`;
}

function missCauses(lastSummary: BuildSummary, builds: ReportData['builds']): string {
  const recent = new Map<string, number>();
  for (const b of builds) for (const [k, n] of Object.entries(b.summary.miss_causes ?? {})) recent.set(k, (recent.get(k) ?? 0) + num(n));
  const lastCauses = lastSummary.miss_causes ?? {};
  const kinds = new Set([...recent.keys(), ...Object.keys(lastCauses)]);
  if (!kinds.size) return `<table id="miss-causes" class="data"><tbody><tr><td class="muted">no misses in the recorded builds</td></tr></tbody></table>`;
  const rows = [...kinds]
    .map((k) => ({ k, last: num(lastCauses[k]), recent: recent.get(k) ?? 0 }))
    .sort((a, b) => b.recent - a.recent || b.last - a.last || a.k.localeCompare(b.k));
  const max = Math.max(1, ...rows.map((r) => r.recent));
  const body = rows
    .map(
      (r) =>
        `<tr data-cause="${esc(r.k)}" data-last="${r.last}" data-recent="${r.recent}"><td><code>${esc(r.k)}</code><div class="desc">${esc(CAUSE_TEXT[r.k] ?? '')}</div></td><td class="num">${r.last}</td><td class="num">${r.recent}</td><td class="barcell"><div class="hbar" style="width:${f((100 * r.recent) / max)}%"></div></td></tr>`,
    )
    .join('');
  let modules = '';
  if (lastSummary.top_changed_modules?.length) {
    modules = `<h3>Changed modules that made importers miss (last build)</h3><table id="changed-modules" class="data"><thead><tr><th>module</th><th class="num">importers missed</th></tr></thead><tbody>${lastSummary.top_changed_modules
      .map((m) => `<tr><td><code>${esc(m.module)}</code></td><td class="num">${num(m.importers_missed)}</td></tr>`)
      .join('')}</tbody></table>`;
  }
  return `<table id="miss-causes" class="data"><thead><tr><th>cause</th><th class="num">last build</th><th class="num">last ${builds.length} build${builds.length === 1 ? '' : 's'}</th><th></th></tr></thead><tbody>${body}</tbody></table>${modules}`;
}

/** One line per cause kind of src/explain/explainMiss.ts, for readers who have not read it. */
const CAUSE_TEXT: Record<string, string> = {
  'first-build': 'no earlier job for the output (cold)',
  toolchain: 'compiler, its libraries or configuration changed',
  input: 'the module’s own bitcode changed',
  'index-own-hash': 'the index records a new hash for the module',
  'import-added': 'the module now imports from another one',
  'import-removed': 'the module no longer imports from another one',
  'import-changed': 'a module it imports from changed',
  'index-summary': 'the thin-link index changed its decisions',
  'flag-added': 'a compiler flag was added',
  'flag-removed': 'a compiler flag was removed',
  'flag-changed': 'a compiler flag changed value',
  'flag-file': 'a file named by a flag changed',
  'response-file': 'a response file changed',
  environment: 'an environment variable the compiler reads changed',
  'output-path': 'input or output paths changed',
  'not-stored': 'same key as before, but the entry is gone',
};

function storePanel(s: StatsView): string {
  const used = num(s.store_bytes);
  const max = num(s.max_bytes);
  const frac = max > 0 ? Math.min(1, used / max) : 0;
  // A non-empty store shows at least a sliver, so an almost-empty meter does not read as unused.
  const shown = used > 0 ? Math.max(0.006, frac) : 0;
  // [label, HTML]: every value below is escaped or numeric.
  const rows: [string, string][] = [
    ['entries', String(num(s.entries))],
    ['size', esc(`${formatBytes(used)} of ${formatBytes(max)} (${pct(frac)})`)],
    ['evictions', stat('evictions', num(s.evictions), String(num(s.evictions)))],
    ['bytes written', esc(formatBytes(num(s.bytes_written)))],
    ['team cache', `${num(s.remote_hits)} hits, ${num(s.remote_misses)} misses, ${num(s.remote_errors)} errors, ${num(s.uploads)} uploads`],
    ['verified hits', `${num(s.verify_runs)} (${num(s.verify_mismatches)} mismatches)`],
  ];
  const breakdown = (title: string, m: Record<string, number> | undefined) => {
    const e = Object.entries(m ?? {}).sort((a, b) => num(b[1]) - num(a[1]));
    return e.length ? `<h3>${title}</h3><table class="data">${e.map(([k, v]) => `<tr><td><code>${esc(k)}</code></td><td class="num">${num(v)}</td></tr>`).join('')}</table>` : '';
  };
  return `<div class="meter" title="${esc(pct(frac))} of max_size"><div class="fill" style="width:${f(100 * shown)}%"></div></div>
    <table class="data kv"><tbody>${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${v}</td></tr>`).join('')}</tbody></table>
    ${breakdown('Uncacheable jobs by reason', s.uncacheable_by_reason)}${breakdown('Errors by kind', s.errors_by_kind)}`;
}

function lastBuildLine(s: BuildSummary): string {
  if (!num(s.jobs)) return 'no build recorded yet';
  return esc(
    `${num(s.jobs)} jobs from ${localTime(s.started)} to ${localTime(s.ended)} (${duration(num(s.wall_ms))} wall): ${num(s.hits)} hits (${num(s.remote_hits)} from the team cache), ${num(s.misses)} misses, ${num(s.uncacheable)} uncacheable, ${num(s.errors)} errors; ${duration(num(s.saved_ms))} saved. One row per concurrent slot, as in ltocache trace.`,
  );
}

const RESULTS: { result: JobRecord['result']; label: string }[] = [
  { result: 'hit', label: 'hit' },
  { result: 'remote-hit', label: 'hit (team cache)' },
  { result: 'miss', label: 'miss' },
  { result: 'uncacheable', label: 'uncacheable' },
  { result: 'error', label: 'error' },
];

function timeline(jobs: JobRecord[]): string {
  const W = 1100;
  if (!jobs.length) return emptyChart('chart-timeline', W, 80, 'no jobs in the last build');
  // Same slots as the Chrome trace, so the page and `ltocache trace` agree.
  const events = chromeTrace(jobs).traceEvents.filter((e) => e.ph === 'X');
  const slots = Math.max(...events.map((e) => e.tid));
  const totalMs = Math.max(1, ...events.map((e) => ((e.ts ?? 0) + (e.dur ?? 0)) / 1000));
  const L = 64;
  const R = 12;
  const T = 8;
  const rowH = slots > 32 ? 10 : 20;
  const gap = slots > 32 ? 2 : 4;
  const plotW = W - L - R;
  const plotH = slots * (rowH + gap);
  const H = T + plotH + 28;
  const sx = (ms: number) => L + (ms / totalMs) * plotW;
  let out = '';
  for (let s = 1; s <= slots; s++) {
    const y = T + (s - 1) * (rowH + gap);
    out += `<text class="tick" x="${L - 8}" y="${f(y + rowH / 2)}" dy="0.32em" text-anchor="end">slot ${s}</text><rect class="lane" x="${L}" y="${y}" width="${plotW}" height="${rowH}"/>`;
  }
  const step = niceStep(totalMs, 10);
  for (let v = 0; v <= totalMs + 1e-9; v += step) {
    const x = f(sx(v));
    out += `<line class="grid vgrid" x1="${x}" x2="${x}" y1="${T}" y2="${T + plotH}"/><text class="tick" x="${x}" y="${T + plotH + 16}" text-anchor="middle">${esc(axisTime(v, totalMs))}</text>`;
  }
  for (const e of events) {
    const args = (e.args ?? {}) as Record<string, unknown>;
    const result = String(args.result);
    const startMs = (e.ts ?? 0) / 1000;
    const durMs = (e.dur ?? 0) / 1000;
    const y = T + (e.tid - 1) * (rowH + gap);
    const w = Math.max(1.5, (durMs / totalMs) * plotW);
    const tip = `${String(args.output)}\n${result} · ${duration(durMs)} at +${duration(startMs)}${num(args.saved_ms) ? ` · saved ${duration(num(args.saved_ms))}` : ''}${args.reason ? `\n${String(args.reason)}` : ''}`;
    out += `<rect class="job r-${esc(result)}" x="${f(sx(startMs))}" y="${y}" width="${f(w)}" height="${rowH}" rx="2" data-result="${esc(result)}" data-slot="${e.tid}" data-output="${esc(args.output)}"><title>${esc(tip)}</title></rect>`;
  }
  out += `<line class="axis" x1="${L}" x2="${W - R}" y1="${T + plotH}" y2="${T + plotH}"/>`;
  const counts = new Map<string, number>();
  for (const j of jobs) counts.set(j.result, (counts.get(j.result) ?? 0) + 1);
  const legend = RESULTS.map((r) => `<span class="lg"><i class="sw r-${r.result}"></i>${esc(r.label)} <b>${counts.get(r.result) ?? 0}</b></span>`).join('');
  return `<div class="legend">${legend}</div><svg id="chart-timeline" class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="last build timeline" data-slots="${slots}" data-jobs="${events.length}">${out}</svg>`;
}

const MAX_MISS_ROWS = 200;

function missesTable(s: BuildSummary): string {
  const detail = s.misses_detail ?? [];
  if (!detail.length) return '';
  const rows = detail
    .slice(0, MAX_MISS_ROWS)
    .map(
      (e) =>
        `<tr><td><code>${esc(e.output)}</code></td><td>${e.causes.length ? e.causes.map((c) => `<div><code class="kind">${esc(c.kind)}</code> ${esc(c.detail)}</div>`).join('') : `<span class="muted">${esc(e.reason ?? 'no recorded cause')}</span>`}</td></tr>`,
    )
    .join('');
  const more = detail.length > MAX_MISS_ROWS ? `<p class="muted">… and ${detail.length - MAX_MISS_ROWS} more; see <code>ltocache explain --last-build</code>.</p>` : '';
  return `<section class="card"><h2>Misses in the last build</h2><table id="last-misses" class="data"><thead><tr><th>output</th><th>why</th></tr></thead><tbody>${rows}</tbody></table>${more}</section>`;
}

function buildsTable(builds: ReportData['builds']): string {
  if (!builds.length) return '<p class="muted">no builds recorded yet</p>';
  const rows = [...builds]
    .reverse()
    .map((b) => {
      const s = b.summary;
      const rate = rateOf(num(s.hits), num(s.misses));
      return `<tr><td>${esc(localTime(s.started))}</td><td class="num">${num(s.jobs)}</td><td class="num">${num(s.hits)}</td><td class="num">${num(s.misses)}</td><td class="num">${num(s.uncacheable)}</td><td class="num">${num(s.errors)}</td><td class="num">${rate === null ? '–' : esc(pct(rate))}</td><td class="num">${esc(duration(num(s.wall_ms)))}</td><td class="num">${esc(duration(num(s.saved_ms)))}</td></tr>`;
    })
    .join('');
  return `<table id="builds" class="data"><thead><tr><th>started</th><th class="num">jobs</th><th class="num">hits</th><th class="num">misses</th><th class="num">uncacheable</th><th class="num">errors</th><th class="num">hit rate</th><th class="num">wall</th><th class="num">saved</th></tr></thead><tbody>${rows}</tbody></table>`;
}

/** Compact coordinates for SVG attributes. */
function f(n: number): string {
  return String(Math.round(n * 10) / 10);
}

const CSS = `
:root{--bg:#f5f6f8;--card:#fff;--fg:#1f2328;--muted:#636c76;--line:#d0d7de;--grid:#eaeef2;--track:#eef1f4;
--hit:#2da44e;--remote:#0969da;--miss:#cf222e;--unc:#8c959f;--err:#24292f;--saved:#8250df;--accent:#1f6feb}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--card:#161b22;--fg:#e6edf3;--muted:#8d96a0;--line:#30363d;--grid:#21262d;--track:#1c2128;
--hit:#3fb950;--remote:#4493f8;--miss:#f85149;--unc:#6e7681;--err:#d1d7e0;--saved:#a371f7;--accent:#4493f8}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans","DejaVu Sans",sans-serif}
header{padding:20px 28px 8px}
h1{margin:0 0 4px;font-size:22px}
h2{margin:0 0 2px;font-size:16px}
h3{margin:16px 0 6px;font-size:13px;color:var(--muted);font-weight:600}
main{padding:8px 28px 16px;display:flex;flex-direction:column;gap:16px;max-width:1400px}
footer{padding:0 28px 24px;font-size:12px}
code{font-family:ui-monospace,"SFMono-Regular","DejaVu Sans Mono",Menlo,monospace;font-size:12.5px;word-break:break-all}
.muted{color:var(--muted)}
p.muted{margin:0 0 10px;font-size:12.5px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:16px}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px}
.kpi{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px;border-top:3px solid var(--line)}
.kpi .label{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.kpi .value{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums;margin:2px 0}
.kpi .sub{font-size:12px;color:var(--muted)}
.k-rate{border-top-color:var(--accent)}.k-hit{border-top-color:var(--hit)}.k-miss{border-top-color:var(--miss)}
.k-unc{border-top-color:var(--unc)}.k-err{border-top-color:var(--err)}.k-saved{border-top-color:var(--saved)}.k-store{border-top-color:var(--remote)}
svg.chart{width:100%;height:auto;display:block;font-size:11px}
svg .grid{stroke:var(--grid);stroke-width:1}
svg .vgrid{stroke:var(--line);stroke-dasharray:2 3}
svg .axis{stroke:var(--line);stroke-width:1}
svg .tick{fill:var(--muted)}
svg .val{fill:var(--fg);font-weight:600}
svg .empty{fill:var(--muted);font-size:14px}
svg .bar-track{fill:var(--track)}
svg .build-bar{fill:var(--hit)}
svg .saved-bar{fill:var(--saved)}
svg .lane{fill:var(--track)}
.r-hit{fill:var(--hit);background:var(--hit)}
.r-remote-hit{fill:var(--remote);background:var(--remote)}
.r-miss{fill:var(--miss);background:var(--miss)}
.r-uncacheable{fill:var(--unc);background:var(--unc)}
.r-error{fill:var(--err);background:var(--err)}
svg rect.job{stroke:var(--card);stroke-width:.6}
svg rect.job:hover,svg rect.build-bar:hover,svg rect.saved-bar:hover{opacity:.8}
.legend{display:flex;flex-wrap:wrap;gap:14px;margin:0 0 8px;font-size:12.5px}
.lg{display:inline-flex;align-items:center;gap:6px}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px}
table.data{border-collapse:collapse;width:100%;font-size:13px}
table.data th,table.data td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--grid);vertical-align:top}
table.data thead th{font-size:12px;color:var(--muted);font-weight:600;border-bottom:1px solid var(--line)}
table.data .num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{font-weight:500;color:var(--muted);width:35%}
.desc{font-size:11.5px;color:var(--muted)}
.barcell{width:30%}
.hbar{height:10px;border-radius:2px;background:var(--miss);opacity:.75;margin-top:4px}
.meter{height:12px;border-radius:6px;background:var(--track);overflow:hidden;margin:6px 0 10px;border:1px solid var(--line)}
.meter .fill{height:100%;background:var(--remote)}
code.kind{color:var(--miss)}
#last-misses td:first-child{width:40%}
`;
