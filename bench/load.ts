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
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { ThinBuild } from '../src/demo/thinBuild.js';
import { JobLog } from '../src/jobLog/jobLog.js';
import { FileDigests } from '../src/key/fileDigests.js';
import { hashBytes, initHash } from '../src/key/hash.js';
import { buildManifest } from '../src/key/manifest.js';
import { parseJob } from '../src/key/parseJob.js';
import { ToolchainIdentifier } from '../src/key/toolchain.js';
import { materialize } from '../src/pipeline/materialize.js';
import { decodeCompileRequest, encodeCompileRequest, encodeResult } from '../src/protocol/clientFrames.js';
import { LocalStore } from '../src/store/localStore.js';
import { CacheEnv, FIXTURE, tempDir } from '../test/support/env.js';
import {
  absoluteCompiler,
  destroyCache,
  type JobResult,
  type JobSpec,
  jobContext,
  type LatencySummary,
  procSample,
  referenceObjects,
  runDaemonLoad,
  runJob,
  runTeamLoad,
  summarise,
} from './loadDriver.js';

interface Options {
  clients: number;
  jobs: number;
  nativeEvery: number;
  daemons: number;
  parallel: number;
  daemonLoad: boolean;
  teamLoad: boolean;
  breakdown: boolean;
  json: string | null;
}

const USAGE =
  'usage: node dist/bench/load.js [--clients 16] [--jobs 2000] [--native-every 50] [--daemons 8] [--parallel 2] [--no-daemon-load] [--no-team-load] [--hit-breakdown] [--json FILE]';

function parseArgs(argv: string[]): Options {
  const o: Options = { clients: 16, jobs: 2000, nativeEvery: 50, daemons: 8, parallel: 2, daemonLoad: true, teamLoad: true, breakdown: false, json: null };
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
    else if (a === '--hit-breakdown') o.breakdown = true;
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

/**
 * Where a hit's time goes, without concurrency: each step of Daemon.serve for a local hit, run in
 * this process N times in a row on the same job (the daemon's memos warm, as in a long build), then
 * the same job N times through a real daemon, one connection at a time.
 */
async function hitBreakdown(n: number): Promise<[string, string][]> {
  await initHash();
  const tree = tempDir('breakdown-tree');
  const b = ThinBuild.fromFixture(FIXTURE, join(tree, 'src'));
  b.frontEnd();
  b.thinLink();
  const m = 'main';
  const variant = { name: 'O2-x86-64', flags: ['-O2', '-march=x86-64'] };
  const refs = referenceObjects(b, [variant]);
  const obj = refs.get(`${m}|${variant.name}`)!;
  mkdirSync(join(b.dir, 'out'), { recursive: true });
  const out = `out/${m}.o`;
  const args = b.backendArgs(m, variant.flags, out);
  const compiler = absoluteCompiler(b.clang);
  const env = Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined && !e[0].includes('=')));
  const frame = encodeCompileRequest({ version: 2, stderrTty: false, umask: 0o022, compiler, cwd: b.dir, args, env }).subarray(4);
  const files = new FileDigests();
  const toolchains = new ToolchainIdentifier(files);
  const storeDir = tempDir('breakdown-store');
  const store = await LocalStore.open({ dir: storeDir, maxBytes: 1 << 30 });
  const jobLog = new JobLog(store);
  const rows: [string, string][] = [];
  try {
    const parsed = await parseJob(args, b.dir);
    if (parsed.kind !== 'job') throw new Error('not a backend job');
    const keyed = await buildManifest({ files, toolchains }, parsed.job, compiler, b.dir, env);
    if (keyed.kind !== 'key') throw new Error(`uncacheable: ${keyed.reason}`);
    await store.put(keyed.key, {
      record: {
        v: 1,
        outputs: [{ name: 'obj', digest: hashBytes(obj.obj), size: obj.obj.length }],
        stdout: '',
        stderr: obj.stderr.toString('base64'),
        exitCode: 0,
        compileMs: 50,
        createdAt: Date.now(),
      },
      files: new Map([['obj', obj.obj]]),
    });
    // The digest memo refuses files younger than 2 s (racy timestamps): let them settle.
    await new Promise((r) => setTimeout(r, 2500));
    const steps: [string, () => Promise<unknown> | unknown][] = [
      ['decode request (zod)', () => decodeCompileRequest(frame)],
      ['parseJob', () => parseJob(args, b.dir)],
      ['toolchain identify (realpath + stat of exe and every lib)', () => toolchains.identify(compiler, env)],
      ['buildManifest (incl. toolchain, digests, index module table)', () => buildManifest({ files, toolchains }, parsed.job, compiler, b.dir, env)],
      ['store get (LevelDB get, blob read + verify)', () => store.get(keyed.key)],
      ['materialize (temp file, write, chmod, rename)', () => materialize(b.dir, [{ path: out, data: obj.obj }], 0o022)],
      ['encode reply', () => encodeResult(0, Buffer.alloc(0), obj.stderr)],
      [
        'job log record (3 puts, batched)',
        () =>
          jobLog.record({
            req: decodeCompileRequest(frame),
            startedAt: Date.now(),
            endedAt: Date.now(),
            result: 'hit',
            key: keyed.key,
            manifest: keyed.manifest,
            savedMs: 50,
            bytes: obj.obj.length,
            output: out,
          }),
      ],
    ];
    let sum = 0;
    let cpuSum = 0;
    for (const [name, fn] of steps) {
      for (let i = 0; i < 50; i++) await fn();
      const t: number[] = [];
      const cpu0 = process.cpuUsage();
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        await fn();
        t.push(performance.now() - t0);
      }
      const cpu = process.cpuUsage(cpu0);
      const cpuUs = (cpu.user + cpu.system) / n;
      const s = summarise(t);
      if (!name.startsWith('toolchain')) {
        sum += s.mean;
        cpuSum += cpuUs;
      }
      rows.push([name, `mean ${(s.mean * 1000).toFixed(0)} µs, p50 ${(s.p50 * 1000).toFixed(0)} µs, p99 ${(s.p99 * 1000).toFixed(0)} µs; CPU ${cpuUs.toFixed(0)} µs`]);
    }
    await jobLog.flush();
    rows.push(['sum of the steps (toolchain counted inside buildManifest)', `mean ${(sum * 1000).toFixed(0)} µs; CPU ${cpuSum.toFixed(0)} µs`]);
  } finally {
    await store.close();
    rmSync(storeDir, { recursive: true, force: true });
  }
  // The same job through a real daemon, sequentially: one miss, then n hits.
  const cache = new CacheEnv('breakdown');
  try {
    cache.start();
    const ctx = jobContext(b, cache, refs);
    const spec = (seq: number): JobSpec => ({ client: 0, seq, module: m, variant, out: 'out/daemon.o', native: false, firstUse: seq === 0 });
    const first = await runJob(spec(0), ctx);
    if (first.failure) throw new Error(first.failure);
    const pid = cache.daemonPid()!;
    const t: number[] = [];
    const cpu0 = procSample(pid)!.cpuMs;
    for (let i = 1; i <= n; i++) {
      const r = await runJob(spec(i), ctx);
      if (r.failure) throw new Error(r.failure);
      t.push(r.ms);
    }
    const cpu = procSample(pid)!.cpuMs - cpu0;
    const s = summarise(t);
    rows.push([
      'whole hit through the daemon, 1 client, socket (client-side)',
      `mean ${(s.mean * 1000).toFixed(0)} µs, p50 ${(s.p50 * 1000).toFixed(0)} µs, p99 ${(s.p99 * 1000).toFixed(0)} µs`,
    ]);
    rows.push(['daemon CPU per hit (user + system, /proc/<pid>/stat)', `${((cpu * 1000) / n).toFixed(0)} µs`]);
  } finally {
    await destroyCache(cache);
    rmSync(tree, { recursive: true, force: true });
  }
  return rows;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`;
  process.stdout.write(`machine: ${machine}\n`);
  const out: Record<string, unknown> = { machine, options: o };

  if (o.breakdown) {
    const rows = await hitBreakdown(2000);
    process.stdout.write(`\n## one local hit, step by step (no concurrency, 2000 repetitions)\n\n${table(rows)}\n`);
    out.breakdown = rows;
  }

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
      [
        'daemon VmRSS at 10% / 50% / 90% / 100% of the run',
        [0.1, 0.5, 0.9, 1].map((q) => `${((r.rssTimeline[Math.min(r.rssTimeline.length - 1, Math.floor(q * r.rssTimeline.length))]?.[1] ?? 0) / 1024).toFixed(0)}`).join(' / ') +
          ' MB',
      ],
      [
        'daemon CPU: itself / its clang runs',
        `${(r.daemonCpuMs / 1000).toFixed(1)} s (${((r.daemonCpuMs * 1000) / r.jobsSent).toFixed(0)} µs per job) / ${(r.compilerCpuMs / 1000).toFixed(1)} s (${(r.compilerCpuMs / Math.max(1, r.stats.misses)).toFixed(0)} ms per miss)`,
      ],
      ['load driver CPU (this process + bin/ltocache children)', `${(r.driverCpuMs / 1000).toFixed(1)} s (${((r.driverCpuMs * 1000) / r.jobsSent).toFixed(0)} µs per job)`],
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
      rows.push([
        `${round.name}: hits / remote hits / misses`,
        `${sum('hits')} / ${sum('remote_hits')} / ${sum('misses')} (remote errors ${sum('remote_errors')}, skipped ${sum('remote_skipped')})`,
      ]);
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
    process.stdout.write(
      `\n## team load: ${r.daemons} daemons, one server, ${r.modules} modules × ${r.variants} variants each, make -j${o.parallel} per daemon\n\n${table(rows)}\n`,
    );
    for (const round of r.rounds) if (round.failures.length) process.stdout.write(`${round.name} failures:\n${round.failures.join('\n')}\n`);
    out.team = { rows, server: r.server, serverAfterRound1: r.serverAfterRound1 };
  }
  if (o.json) writeFileSync(o.json, JSON.stringify(out, null, 2));
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
