#!/usr/bin/env node
/**
 * Load benchmark (issue 5): the driver of test/e2e/load.test.ts, with numbers.
 *
 *   node dist/bench/load.js [--clients 16] [--jobs 2000] [--native-every 50]
 *                           [--daemons 8] [--parallel 2] [--no-daemon-load] [--no-team-load]
 *                           [--json FILE]
 *
 * Daemon load: --clients concurrent clients × --jobs jobs through one daemon (see
 * bench/loadDriver.ts). Latencies are client-side, per job, for the socket clients (one
 * connection per job, as the C client); native-client jobs (process spawn included) are shown
 * apart. Hit/miss per job comes from the daemon's job log. Team load: --daemons daemons against
 * one `ltocache serve`, three rounds (cold concurrent, after thin link, after clearing the local
 * stores), with the default remote timeout.
 */
import { writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { type JobResult, type LatencySummary, runDaemonLoad, runTeamLoad, summarise } from './loadDriver.js';

interface Options {
  clients: number;
  jobs: number;
  nativeEvery: number;
  daemons: number;
  parallel: number;
  daemonLoad: boolean;
  teamLoad: boolean;
  json: string | null;
}

const USAGE = 'usage: node dist/bench/load.js [--clients 16] [--jobs 2000] [--native-every 50] [--daemons 8] [--parallel 2] [--no-daemon-load] [--no-team-load] [--json FILE]';

function parseArgs(argv: string[]): Options {
  const o: Options = { clients: 16, jobs: 2000, nativeEvery: 50, daemons: 8, parallel: 2, daemonLoad: true, teamLoad: true, json: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const int = () => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 0) throw new Error(`${a} needs a non-negative integer\n${USAGE}`);
      return v;
    };
    if (a === '--clients') o.clients = int();
    else if (a === '--jobs') o.jobs = int();
    else if (a === '--native-every') o.nativeEvery = int();
    else if (a === '--daemons') o.daemons = int();
    else if (a === '--parallel') o.parallel = int();
    else if (a === '--no-daemon-load') o.daemonLoad = false;
    else if (a === '--no-team-load') o.teamLoad = false;
    else if (a === '--json') o.json = argv[++i] ?? null;
    else if (a === '--help' || a === '-h') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}\n${USAGE}`);
  }
  return o;
}

const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : '-');
const lat = (s: LatencySummary) => `n=${s.n} p50 ${f1(s.p50)} / p90 ${f1(s.p90)} / p99 ${f1(s.p99)} / max ${f1(s.max)}`;

function table(rows: [string, string][]): string {
  const w = Math.max(...rows.map((r) => r[0].length));
  return [`| ${'measure'.padEnd(w)} | value |`, `| ${'-'.repeat(w)} | ----- |`, ...rows.map(([k, v]) => `| ${k.padEnd(w)} | ${v} |`)].join('\n');
}

/** Hit/miss per job: the daemon's own classification when matched, else first use = miss. */
function isHit(r: JobResult): boolean {
  return r.result ? r.result === 'hit' || r.result === 'remote-hit' : !r.spec.firstUse;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`;
  process.stdout.write(`machine: ${machine}\n`);
  const out: Record<string, unknown> = { machine, options: o };

  if (o.daemonLoad) {
    let last = 0;
    const r = await runDaemonLoad({
      clients: o.clients,
      jobs: o.jobs,
      nativeEvery: o.nativeEvery,
      jobLog: true,
      progress: (done, total) => {
        if (done - last >= total / 10 || done === total) {
          last = done;
          process.stderr.write(`  daemon load: ${done}/${total}\n`);
        }
      },
    });
    const socket = r.results.filter((x) => !x.spec.native && !x.failure);
    const native = r.results.filter((x) => x.spec.native && !x.failure);
    const hits = summarise(socket.filter(isHit).map((x) => x.ms));
    const misses = summarise(socket.filter((x) => !isHit(x)).map((x) => x.ms));
    const nativeHits = summarise(native.filter(isHit).map((x) => x.ms));
    const daemonSideHits = summarise(socket.filter((x) => isHit(x) && x.daemonMs !== undefined).map((x) => x.daemonMs!));
    const misclassified = r.results.filter((x) => x.result && (x.result === 'miss') !== x.spec.firstUse).length;
    const rows: [string, string][] = [
      ['jobs sent (clients × jobs)', `${r.jobsSent} (${r.clients} × ${r.jobsPerClient}), ${r.nativeJobs} through bin/ltocache`],
      ['failures / wrong objects', `${r.failureCount} / ${r.wrongObjects}`],
      ['daemon hits / misses (stats)', `${r.stats.hits} / ${r.stats.misses} (distinct keys ${r.distinctKeys})`],
      ['wall time', `${(r.wallMs / 1000).toFixed(1)} s`],
      ['throughput', `${(r.jobsSent / (r.wallMs / 1000)).toFixed(0)} jobs/s`],
      ['hit latency, socket client (ms)', lat(hits)],
      ['miss latency, socket client (ms)', lat(misses)],
      ['hit latency, bin/ltocache incl. spawn (ms)', lat(nativeHits)],
      ['hit time inside the daemon, job log (ms)', lat(daemonSideHits)],
      ['daemon peak RSS (sampled VmRSS / VmHWM)', `${(r.peakRssKb / 1024).toFixed(0)} MB / ${(r.hwmKb / 1024).toFixed(0)} MB (${r.rssSamples} samples)`],
      ['daemon fds before / after', `${r.fdsBefore} / ${r.fdsAfter}`],
      ['jobs matched in the job log', `${r.classified} of ${r.jobsSent}; daemon result ≠ planned (first use = miss): ${misclassified}`],
    ];
    process.stdout.write(`\n## daemon load: ${r.clients} clients × ${r.jobsPerClient} jobs, one daemon\n\n${table(rows)}\n`);
    if (r.failures.length) process.stdout.write(`first failures:\n${r.failures.join('\n')}\n`);
    out.daemon = { rows, stats: r.stats, hits, misses, nativeHits, daemonSideHits, failures: r.failures };
  }

  if (o.teamLoad) {
    const r = await runTeamLoad({ daemons: o.daemons, parallel: o.parallel, nativeEvery: 3, jobLog: true });
    const rows: [string, string][] = [];
    for (const round of r.rounds) {
      const ok = round.results.filter((x) => !x.failure);
      const sum = (k: keyof (typeof round.deltas)[number]) => round.deltas.reduce((n, d) => n + d[k], 0);
      rows.push([`${round.name}: jobs, failures, wrong objects`, `${round.jobs}, ${round.failureCount}, ${round.wrongObjects}`]);
      rows.push([`${round.name}: hits / remote hits / misses`, `${sum('hits')} / ${sum('remote_hits')} / ${sum('misses')} (remote errors ${sum('remote_errors')}, skipped ${sum('remote_skipped')})`]);
      rows.push([`${round.name}: throughput`, `${(round.jobs / (round.wallMs / 1000)).toFixed(0)} jobs/s (${(round.wallMs / 1000).toFixed(2)} s)`]);
      const remote = ok.filter((x) => x.result === 'remote-hit' && !x.spec.native).map((x) => x.ms);
      const local = ok.filter((x) => x.result === 'hit' && !x.spec.native).map((x) => x.ms);
      const miss = ok.filter((x) => x.result === 'miss' && !x.spec.native).map((x) => x.ms);
      if (remote.length) rows.push([`${round.name}: remote-hit latency, socket (ms)`, lat(summarise(remote))]);
      if (local.length) rows.push([`${round.name}: local-hit latency, socket (ms)`, lat(summarise(local))]);
      if (miss.length) rows.push([`${round.name}: miss latency, socket (ms)`, lat(summarise(miss))]);
    }
    rows.push(['server after round 1: entries / puts', `${r.serverAfterRound1.entries} / ${r.serverAfterRound1.puts}`]);
    rows.push(['server at end: entries / hits / misses / puts', `${r.server.entries} / ${r.server.hits} / ${r.server.misses} / ${r.server.puts}`]);
    rows.push(['peak RSS: a daemon / the server', `${(r.peakDaemonRssKb / 1024).toFixed(0)} MB / ${(r.peakServerRssKb / 1024).toFixed(0)} MB`]);
    process.stdout.write(`\n## team load: ${r.daemons} daemons, one server, ${r.modules} modules × ${r.variants} variants each, make -j${o.parallel} per daemon\n\n${table(rows)}\n`);
    for (const round of r.rounds) if (round.failures.length) process.stdout.write(`${round.name} failures:\n${round.failures.join('\n')}\n`);
    out.team = { rows, server: r.server, serverAfterRound1: r.serverAfterRound1 };
  }
  if (o.json) writeFileSync(o.json, JSON.stringify(out, null, 2));
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
