import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Config } from '../config/config.js';
import type { BuildSummary } from '../explain/explainJobs.js';
import type { JobRecord } from '../jobLog/jobLog.js';
import { renderReport } from '../report/renderReport.js';
import { askLog } from './askLog.js';
import { currentStats } from './currentStats.js';

const REPORT_USAGE = 'usage: ltocache report -o FILE [--builds N]';
const DEFAULT_BUILDS = 50;

function usage(msg: string): never {
  process.stderr.write(`ltocache: report: ${msg}\n${REPORT_USAGE}\n`);
  process.exit(2);
}

/** `ltocache report -o FILE [--builds N]`: one self-contained HTML page of the cache's recent history. */
export async function runReport(config: Config, args: string[]): Promise<void> {
  let out: string | undefined;
  let limit = DEFAULT_BUILDS;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const v = args[i + 1];
    if (a === '-o' || a === '--output') {
      if (v === undefined) usage(`${a} needs a value`);
      out = v;
      i++;
    } else if (a === '--builds') {
      // The control protocol caps `builds` at 1000.
      if (v === undefined || !/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 1000) usage('--builds needs a number from 1 to 1000');
      limit = Number(v);
      i++;
    } else usage(`unknown argument '${a}'`);
  }
  if (!out) usage('expected -o FILE');
  const stats = await currentStats(config);
  const builds = (await askLog(config, { op: 'builds', limit })) as { summary: BuildSummary; jobs: number }[];
  const lastBuild = (await askLog(config, { op: 'last-build' })) as { jobs: JobRecord[]; summary: BuildSummary };
  const html = renderReport({ generated: new Date().toISOString(), cacheDir: config.dir, stats, builds, lastBuild });
  const path = resolve(out);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, html);
  process.stdout.write(`wrote report of ${builds.length} build${builds.length === 1 ? '' : 's'} to ${path}\n`);
}
