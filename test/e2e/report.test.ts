import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { type Browser, chromium, type Page } from 'playwright-core';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import type { BuildSummary } from '../../src/explain/explainJobs.js';
import type { JobRecord } from '../../src/jobLog/jobLog.js';
import { type ReportData, renderReport } from '../../src/report/renderReport.js';
import { COUNTERS, type StatsView } from '../../src/stats/counters.js';
import { processAlive } from '../../src/util/processAlive.js';
import { CacheEnv, CLIENT, FIXTURE, runAsync, tempDir } from '../support/env.js';

/**
 * `ltocache report`: three builds through the real client and daemon, then the page in headless
 * Chromium: no network, no errors, charts with one mark per build / job, numbers equal to
 * `ltocache stats --json`. Set LTOCACHE_REPORT_SCREENSHOT=FILE to keep a screenshot (docs/report.png).
 */

const CHROMIUM = '/usr/bin/chromium';
const GAP_MS = 600;
const SKIP = existsSync(CHROMIUM) ? false : `${CHROMIUM} not found: install Debian's chromium to run the report test`;

interface Loaded {
  page: Page;
  url: string;
  /** Console errors, page errors and failed requests. */
  problems: string[];
  requests: string[];
}

describe('report', { skip: SKIP }, () => {
  let cache: CacheEnv;
  let b: ThinBuild;
  let work: string;
  let browser: Browser;

  before(async () => {
    cache = new CacheEnv('report', { LTOCACHE_BUILD_GAP_MS: String(GAP_MS) });
    cache.start();
    work = tempDir('report');
    b = ThinBuild.fromFixture(FIXTURE, join(work, 'src'));
    b.frontEnd();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  after(async () => {
    await browser?.close();
    if (cache) {
      // `daemon stop` returns once the socket is closed, but the daemon closes its store after
      // that: wait for the process to exit so removing the cache dir cannot race its last writes.
      const pid = cache.daemonPid();
      cache.stop();
      for (let i = 0; pid && i < 400 && processAlive(pid); i++) await new Promise((r) => setTimeout(r, 25));
      cache.destroy();
    }
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /**
   * One build: idle longer than the build gap first, so the daemon starts a new build; backend
   * jobs run concurrently, as under make -j, so the timeline has several slots.
   */
  async function build(): Promise<void> {
    await new Promise((r) => setTimeout(r, GAP_MS + 200));
    b.thinLink();
    const rs = await Promise.all(b.modules.map((m) => runAsync(CLIENT, [b.clang, ...b.backendArgs(m)], { cwd: b.dir, env: cache.env })));
    for (const r of rs) assert.equal(r.status, 0, r.stderr);
  }

  async function open(file: string): Promise<Loaded> {
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    page.setDefaultTimeout(5000); // every element is there at load: a missing one fails fast
    const problems: string[] = [];
    const requests: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
    page.on('request', (r) => requests.push(r.url()));
    const url = pathToFileURL(file).href;
    await page.goto(url, { waitUntil: 'load' });
    return { page, url, problems, requests };
  }

  const attr = async (page: Page, selector: string, name: string) => page.locator(selector).getAttribute(name);
  const attrs = async (page: Page, selector: string, name: string) => page.locator(selector).evaluateAll((els, n) => els.map((e) => e.getAttribute(n)), name);

  test('cold, warm and edited builds: charts per build and job, numbers equal stats --json', async () => {
    await build(); // cold: every job misses (first-build)
    await build(); // warm: every job hits
    const src = join(b.dir, 'mathx.c');
    writeFileSync(src, readFileSync(src, 'utf8').replace('return x * x;', 'return x * x + 2;'));
    b.frontEnd(['mathx']);
    await build(); // edited: mathx and its importers miss

    // The daemon answers a client before it stores the entry and logs the job: let both settle
    // (on this fresh cache every miss stores one entry), so report and stats see one state.
    const lastBuild = (): BuildSummary => {
      const lb = cache.cli(['explain', '--last-build', '--json']);
      assert.equal(lb.status, 0, lb.stderr);
      return JSON.parse(lb.stdout) as BuildSummary;
    };
    for (const deadline = Date.now() + 15_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 100))) {
      const s = cache.stats();
      if (s.entries === s.misses && lastBuild().jobs === b.modules.length) break;
    }

    const file = join(work, 'out', 'report.html');
    const r = cache.cli(['report', '-o', file]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(r.stdout.includes(file), r.stdout);
    const stats = cache.stats();
    const last = lastBuild();
    assert.equal(last.jobs, b.modules.length);
    assert.equal(stats.entries, stats.misses, 'every miss of a fresh cache stored one entry');
    assert.ok(last.misses > 0 && last.hits > 0, JSON.stringify(last));

    const { page, url, problems, requests } = await open(file);
    try {
      assert.deepEqual(problems, []);
      assert.deepEqual(requests, [url], 'the page must request nothing but itself');

      // Headline counters equal `stats --json` taken right after the report.
      for (const k of ['hits', 'remote_hits', 'misses', 'uncacheable', 'errors', 'entries', 'store_bytes', 'max_bytes', 'time_saved_ms', 'compile_ms', 'evictions'] as const) {
        assert.equal(await attr(page, `#stat-${k}`, 'data-value'), String(stats[k]), k);
      }
      assert.ok(stats.entries > 0 && stats.time_saved_ms > 0 && stats.hits === b.modules.length + last.hits, JSON.stringify(stats));
      assert.equal(Number(await attr(page, '#stat-hit_rate', 'data-value')), stats.hits / (stats.hits + stats.misses));

      // One bar per build, oldest left: cold 0, warm 1, edited in between.
      assert.equal(await page.locator('#chart-hit-rate rect.build-bar').count(), 3);
      const rates = (await attrs(page, '#chart-hit-rate rect.build-bar', 'data-hit-rate')).map(Number);
      assert.deepEqual(rates, [0, 1, +(last.hits / (last.hits + last.misses)).toFixed(6)]);
      const hitsPerBuild = (await attrs(page, '#chart-hit-rate rect.build-bar', 'data-hits')).map(Number);
      assert.equal(
        hitsPerBuild.reduce((x, y) => x + y, 0),
        stats.hits,
        'a fresh cache: the builds add up to the counters',
      );
      assert.equal(await page.locator('#chart-saved rect.saved-bar').count(), 3);
      const saved = (await attrs(page, '#chart-saved rect.saved-bar', 'data-saved-ms')).map(Number);
      assert.equal(saved[0], 0);
      assert.ok(saved[1]! > 0);
      assert.equal(saved[2], last.saved_ms);

      // Timeline of the last build: one rect per job, coloured by result.
      assert.equal(await page.locator('#chart-timeline rect.job').count(), last.jobs);
      const results = await attrs(page, '#chart-timeline rect.job', 'data-result');
      assert.equal(results.filter((x) => x === 'hit').length, last.hits);
      assert.equal(results.filter((x) => x === 'miss').length, last.misses);
      const slots = (await attrs(page, '#chart-timeline rect.job', 'data-slot')).map(Number);
      assert.equal(Number(await attr(page, '#chart-timeline', 'data-slots')), Math.max(...slots));
      const fills = await page.locator('#chart-timeline rect.job').evaluateAll((els) => els.map((e) => `${e.getAttribute('data-result')}=${getComputedStyle(e).fill}`));
      const fillOf = new Map(fills.map((x) => x.split('=') as [string, string]));
      assert.notEqual(fillOf.get('hit'), fillOf.get('miss'), 'hits and misses must look different');

      // Miss causes: the cold build's first-build misses, the edit's input and import causes.
      assert.equal(await page.locator('table#miss-causes').count(), 1);
      assert.equal(await attr(page, '#miss-causes tr[data-cause="first-build"]', 'data-recent'), String(b.modules.length));
      assert.equal(await attr(page, '#miss-causes tr[data-cause="first-build"]', 'data-last'), '0');
      assert.equal(await attr(page, '#miss-causes tr[data-cause="input"]', 'data-last'), String(last.miss_causes.input));
      assert.equal(await attr(page, '#miss-causes tr[data-cause="import-changed"]', 'data-last'), String(last.miss_causes['import-changed']));

      // The embedded data is valid JSON with the same builds.
      const data = JSON.parse((await page.locator('#ltocache-data').textContent()) ?? '') as ReportData;
      assert.equal(data.builds.length, 3);
      assert.equal(data.stats.hits, stats.hits);
      assert.equal(data.lastBuild.jobs.length, last.jobs);

      const shot = process.env.LTOCACHE_REPORT_SCREENSHOT;
      if (shot) await page.screenshot({ path: shot });
    } finally {
      await page.close();
    }
  });

  test('user-controlled text is escaped: no markup, no script, no request', async () => {
    const evil = `/tmp/<img src=x onerror="window.__pwned=1">'&"/</script><script>window.__pwned=2</script>.o`;
    const t = Date.parse('2025-01-02T03:04:05Z');
    const job: JobRecord = { output: evil, cwd: '/tmp', key: 'a'.repeat(32), result: 'miss', reason: '<b>bold</b>', startedAt: t, endedAt: t + 1500 };
    const summary: BuildSummary = {
      jobs: 1,
      hits: 0,
      remote_hits: 0,
      misses: 1,
      uncacheable: 0,
      errors: 0,
      started: new Date(t).toISOString(),
      ended: new Date(t + 1500).toISOString(),
      wall_ms: 1500,
      saved_ms: 0,
      miss_causes: { '<i>kind</i>': 1 },
      top_changed_modules: [{ module: evil, importers_missed: 1 }],
      misses_detail: [
        {
          output: evil,
          result: 'miss',
          at: new Date(t).toISOString(),
          key: null,
          previousKey: null,
          reason: null,
          causes: [{ kind: 'input', detail: `input bitcode ${evil} changed` }],
        },
      ],
    };
    const zeros = Object.fromEntries(COUNTERS.map((c) => [c, 0])) as Record<(typeof COUNTERS)[number], number>;
    const stats: StatsView = {
      ...zeros,
      misses: 1,
      entries: 1,
      store_bytes: 10,
      max_bytes: 100,
      uncacheable_by_reason: { [evil]: 2 },
      errors_by_kind: {},
      since: new Date(t).toISOString(),
      daemon_running: false,
    };
    const html = renderReport({ generated: new Date(t).toISOString(), cacheDir: evil, stats, builds: [{ summary, jobs: 1 }], lastBuild: { jobs: [job], summary } });
    assert.ok(!html.includes('<img') && !html.includes('<i>') && !html.includes('<b>bold'), 'raw markup from data reached the page');
    assert.equal(html.match(/<script/g)?.length, 1, 'only the JSON data block is a script element');

    const file = join(work, 'evil.html');
    writeFileSync(file, html);
    const { page, url, problems, requests } = await open(file);
    try {
      assert.deepEqual(problems, []);
      assert.deepEqual(requests, [url]);
      assert.equal(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned), undefined);
      assert.equal(await attr(page, '#chart-timeline rect.job', 'data-output'), evil);
      assert.ok((await page.locator('#last-misses').textContent())?.includes(evil));
      const data = JSON.parse((await page.locator('#ltocache-data').textContent()) ?? '') as ReportData;
      assert.equal(data.lastBuild.jobs[0]?.output, evil);
      assert.equal(data.cacheDir, evil);
    } finally {
      await page.close();
    }

    // No builds yet: the charts are there, empty, and say so.
    const empty = renderReport({
      generated: new Date(t).toISOString(),
      cacheDir: '/c',
      stats,
      builds: [],
      lastBuild: { jobs: [], summary: { ...summary, jobs: 0, misses: 0, miss_causes: {}, top_changed_modules: [], misses_detail: [] } },
    });
    for (const id of ['chart-hit-rate', 'chart-saved', 'chart-timeline', 'miss-causes']) assert.ok(empty.includes(`id="${id}"`), id);
    assert.ok(!/<rect class="build-bar/.test(empty) && !/<rect class="job /.test(empty));
  });
});
