import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ThinBuild } from '../src/demo/thinBuild.js';
import { CacheEnv, CLIENT, FIXTURE, TOP, tempDir } from '../test/support/env.js';
import { processCpuMs } from './procStat.js';

/**
 * Cost of a local hit, fast path (memo, docs/memo.md) and daemon path (LTOCACHE_MEMO=0) side by
 * side in one run, next to /bin/true run the same way. Every row runs N jobs from one shell
 * script (one `sh`, N client processes): wall per job from Node, client CPU per job from the
 * shell's `times` (user + system of its waited-for children), daemon CPU per hit from /proc
 * (`stats` is called before each reading so the fast path's hit notices are drained and counted).
 * The fast path's phases come from a client built with -DLTOCACHE_MEMO_TIMING; syscall counts
 * per job from `strace -f -c` when strace is installed. When the client is built with musl-gcc
 * (client/build.sh's default where installed), a row with the same client built against glibc
 * (`CC_FOR_CLIENT=cc`) shows what the C library's start-up costs per job.
 * Usage: node dist/bench/hitPath.js [--jobs N] [--strace-jobs N]
 */
function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}
const N = arg('--jobs', 600);
const STRACE_N = arg('--strace-jobs', 100);

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** Parses the second line of `times` (children user, children system) into ms. */
function childrenCpuMs(out: string): number {
  const line = out.trim().split('\n').at(-1)!;
  const m = [...line.matchAll(/(\d+)m([\d.]+)s/g)];
  if (m.length !== 2) throw new Error(`cannot parse times output: ${out}`);
  return m.reduce((t, x) => t + (Number(x[1]) * 60 + Number(x[2])) * 1000, 0);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

const cache = new CacheEnv('hitpath');
const work = tempDir('hitpath');
const timingClient = join(TOP, 'bin', 'ltocache-memo-timing');
const glibcClient = join(TOP, 'bin', 'ltocache-glibc');
cache.start();
try {
  const b = ThinBuild.fromFixture(FIXTURE, join(work, 'src'));
  b.frontEnd();
  b.thinLink();
  // Jobs are written with "$LTC" as the client so one script serves every row.
  const lines = (n: number) => Array.from({ length: n }, (_, k) => `"$LTC" ${[b.clang, ...b.backendArgs(b.modules[k % b.modules.length]!)].map(q).join(' ')}`);
  const script = join(work, 'jobs.sh');
  writeFileSync(script, `cd ${q(b.dir)}\n${lines(N).join('\n')}\n`);
  const straceScript = join(work, 'strace-jobs.sh');
  writeFileSync(straceScript, `cd ${q(b.dir)}\n${lines(STRACE_N).join('\n')}\n`);
  const errFile = join(work, 'stderr');

  /** Runs the job script once with client `ltc`; wall and children CPU per job. */
  const runJobs = (ltc: string, extra: Record<string, string> = {}) => {
    const t0 = performance.now();
    const r = spawnSync('sh', ['-c', `. ${q(script)} >/dev/null 2>${q(errFile)}; times`], { env: { ...cache.env, ...extra, LTC: ltc }, encoding: 'utf8' });
    const wall = (performance.now() - t0) / N;
    if (r.status !== 0) throw new Error(`job script failed: ${r.stderr}`);
    return { wall, cpu: childrenCpuMs(r.stdout) / N };
  };
  /** One row through the daemon: hits and fast-path hits counted, daemon CPU per hit. */
  const measure = (ltc: string, extra: Record<string, string> = {}) => {
    const pid = cache.daemonPid()!;
    const s0 = cache.stats();
    const c0 = processCpuMs(pid);
    const r = runJobs(ltc, extra);
    const s1 = cache.stats();
    const daemon = (processCpuMs(pid) - c0) / N;
    return { ...r, daemon, hits: s1.hits - s0.hits, memoHits: s1.memo_hits - s0.memo_hits, misses: s1.misses - s0.misses };
  };

  // Two daemon-path rounds: the first compiles, the second writes memos for hits as well.
  for (let k = 0; k < 2; k++) for (const m of b.modules) spawnSync(CLIENT, [b.clang, ...b.backendArgs(m)], { cwd: b.dir, env: cache.env, stdio: 'ignore' });

  const floor = runJobs('/bin/true');
  const fast = measure(CLIENT);
  const slow = measure(CLIENT, { LTOCACHE_MEMO: '0' });

  const buildClient = (out: string, env: Record<string, string>) => {
    const r = spawnSync('sh', [join(TOP, 'client', 'build.sh')], { env: { ...process.env, ...env, LTOCACHE_CLIENT_OUT: out }, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`client build for ${out} failed: ${r.stderr}`);
  };
  // client/build.sh's rule for the default client.
  const muslBuilt = !process.env.CC_FOR_CLIENT && spawnSync('sh', ['-c', 'command -v musl-gcc'], { stdio: 'ignore' }).status === 0;
  let glibc: ReturnType<typeof measure> | undefined;
  if (muslBuilt) {
    buildClient(glibcClient, { CC_FOR_CLIENT: 'cc' });
    glibc = measure(glibcClient);
  }
  buildClient(timingClient, { LTOCACHE_CLIENT_CFLAGS: '-DLTOCACHE_MEMO_TIMING' });
  const timed = measure(timingClient);
  const phases = new Map<string, number[]>();
  let nchecks = 0;
  for (const l of readFileSync(errFile, 'utf8').split('\n')) {
    if (!l.startsWith('ltocache-memo-timing ')) continue;
    for (const [k, v] of l
      .slice(21)
      .split(' ')
      .map((kv) => kv.split('='))) {
      if (k === 'nchecks') nchecks = Number(v);
      else phases.set(k!, [...(phases.get(k!) ?? []), Number(v) / 1e6]);
    }
  }

  const straceRows: string[] = [];
  const hasStrace = spawnSync('strace', ['-V'], { stdio: 'ignore' }).status === 0;
  if (hasStrace) {
    const count = (ltc: string, extra: Record<string, string> = {}) => {
      const out = join(work, 'strace.out');
      const r = spawnSync('strace', ['-f', '-c', '-o', out, 'sh', '-c', `. ${q(straceScript)} >/dev/null 2>&1`], { env: { ...cache.env, ...extra, LTC: ltc }, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`strace failed: ${r.stderr}`);
      const calls = new Map<string, number>();
      for (const l of readFileSync(out, 'utf8').split('\n')) {
        const f = l.trim().split(/\s+/);
        if (f.length >= 5 && /^\d+$/.test(f[3]!) && f.at(-1) !== 'total') calls.set(f.at(-1)!, Number(f[3]));
      }
      return calls;
    };
    const base = count('/bin/true');
    const per = (c: Map<string, number>) => {
      const d = [...c].map(([k, v]) => [k, (v - (base.get(k) ?? 0)) / STRACE_N] as const).filter(([, v]) => v >= 0.5);
      const total = d.reduce((t, [, v]) => t + v, 0);
      const top = d
        .sort((x, y) => y[1] - x[1])
        .slice(0, 8)
        .map(([k, v]) => `${k} ${v.toFixed(1)}`)
        .join(', ');
      return `${total.toFixed(0)} (${top})`;
    };
    straceRows.push(`| fast path: system calls per job over /bin/true (\`strace -f -c\`, ${STRACE_N} jobs) | ${per(count(CLIENT))} | | | | |`);
    straceRows.push(`| daemon path: client system calls per job over /bin/true | ${per(count(CLIENT, { LTOCACHE_MEMO: '0' }))} | | | | |`);
  }

  const x = (v: number, f: number) => `${(v / f).toFixed(2)}×`;
  const row = (what: string, r: { wall: number; cpu: number }, daemon: string) =>
    `| ${what} | ${r.wall.toFixed(3)} | ${x(r.wall, floor.wall)} | ${r.cpu.toFixed(3)} | ${x(r.cpu, floor.cpu)} | ${daemon} |`;
  console.log(
    `| row (${N} sequential jobs from one sh script, ${b.modules.length} modules) | client wall ms/job | × /bin/true | client CPU ms/job | × /bin/true | daemon CPU ms/hit |`,
  );
  console.log('|---|---|---|---|---|---|');
  console.log(row('/bin/true as the client', floor, '–'));
  console.log(row(`fast path (memo hits ${fast.memoHits}/${N})`, fast, fast.daemon.toFixed(3)));
  console.log(row(`daemon path, \`LTOCACHE_MEMO=0\` (hits ${slow.hits}/${N}, memo hits ${slow.memoHits})`, slow, slow.daemon.toFixed(3)));
  if (glibc) console.log(row(`fast path, the same client built against glibc (memo hits ${glibc.memoHits}/${N})`, glibc, glibc.daemon.toFixed(3)));
  console.log(row(`fast path, client built with \`-DLTOCACHE_MEMO_TIMING\` (memo hits ${timed.memoHits}/${N})`, timed, timed.daemon.toFixed(3)));
  const names: Record<string, string> = {
    lookup: 'lookup digest',
    read: 'memo open + read + parse',
    checks: `checks (${nchecks})`,
    copy: 'blob copy + verify',
    rename: 'rename',
    notice: 'stdout/stderr replay + hit notice',
  };
  let inside = 0;
  for (const [k, v] of phases) {
    inside += mean(v);
    console.log(`| … fast path step: ${names[k] ?? k} (mean / p50, ms) | ${mean(v).toFixed(3)} / ${median(v).toFixed(3)} | ${x(mean(v), floor.wall)} | | | |`);
  }
  if (phases.size)
    console.log(`| … fast path: process start, client set-up, exit (wall − steps) | ${(timed.wall - inside).toFixed(3)} | ${x(timed.wall - inside, floor.wall)} | | | |`);
  for (const r of straceRows) console.log(r);
  if (fast.memoHits !== N || slow.memoHits !== 0 || slow.hits !== N || fast.misses + slow.misses !== 0) {
    console.error(`unexpected counts: fast ${JSON.stringify(fast)} daemon path ${JSON.stringify(slow)}`);
    process.exitCode = 1;
  }
} finally {
  cache.destroy();
  rmSync(timingClient, { force: true });
  rmSync(glibcClient, { force: true });
  rmSync(work, { recursive: true, force: true });
}
