import { spawn, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ThinBuild } from '../src/demo/thinBuild.js';
import { DAEMON_SEMI_SPACE_MB } from '../src/protocol/limits.js';
import { CacheEnv, CLI, CLIENT, FIXTURE, tempDir } from '../test/support/env.js';
import { ServerProcess, TOKENS } from '../test/support/server.js';
import { processCpuMs, statFields, TICK_MS } from './procStat.js';

/**
 * Daemon CPU per remote hit and per miss, with the client storing (the default: 'H' for a
 * team-cache hit, 'S' for a miss, docs/protocol.md) and with the daemon storing
 * (`LTOCACHE_MEMO=0`), side by side in one run, rounds alternating the two. A teammate uploads
 * every job; a second daemon with an empty local store then serves them from the team server
 * (remote hits, written back locally), then again from its store (local hits); a third daemon
 * with no team cache compiles them (misses; its store cleared every round). CPU from /proc of
 * the daemon only, so the client, the server and other load hardly count. An untimed first
 * round keeps the daemon's one-time start-up work out of the rows; `--warmup N` (default 150)
 * adds N untimed rounds like the timed ones, so that V8 has compiled the hot code (its optimizing
 * compiler runs on other threads of the daemon, and a daemon does that once in its life, not per
 * hit).
 * Usage: node dist/bench/remoteHit.js [--rounds N] [--warmup N] [--cpu-prof-dir DIR [--cpu-prof-interval µs]]
 */
const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const ROUNDS = arg('--rounds', 40);
/** V8 needs ≈ 1,000 jobs through a daemon before its cost per job stops falling
 * (docs/benchmarks.md, "JIT warm-up"); each round sends it 24 jobs, 12 of them remote hits. */
const WARMUP = arg('--warmup', 150);
const p = process.argv.indexOf('--cpu-prof-dir');
/** With --cpu-prof-dir DIR, the second daemon writes a V8 CPU profile there when it stops. */
const PROFILE_DIR = p > 0 ? process.argv[p + 1]! : null;
/** Its sampling interval: V8's default of 1000 µs gives few samples of a hit of a few ms. */
const PROFILE_INTERVAL_US = arg('--cpu-prof-interval', 1000);
const VARIANTS = [[], ['-O1'], ['-O3'], ['-march=x86-64-v2'], ['-O1', '-march=x86-64-v2'], ['-O3', '-march=x86-64-v2']];

/**
 * User and system CPU ms of a process's main (event loop) thread and of its other threads
 * together: Node 20 names them all `node` (V8's compiler and GC helpers, the thread pool,
 * LevelDB's compaction), so their names tell nothing.
 */
function threadCpu(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const f = statFields(pid, t);
      const comm = Number(t) === pid ? 'main' : 'other threads';
      out.set(`${comm} user`, (out.get(`${comm} user`) ?? 0) + f[11]! * TICK_MS);
      out.set(`${comm} sys`, (out.get(`${comm} sys`) ?? 0) + f[12]! * TICK_MS);
    } catch {
      // The thread ended.
    }
  }
  return out;
}

const server = new ServerProcess();
const url = await server.start();
const alice = new CacheEnv('rh-alice', { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: TOKENS.write });
const bob = new CacheEnv('rh-bob', { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: TOKENS.read, LTOCACHE_REMOTE_TIMEOUT_MS: '2000' });
alice.start();
if (PROFILE_DIR) {
  // The V8 flags the launcher gives a daemon (src/cli/main.ts), so that GC behaves the same.
  spawn(
    process.execPath,
    [
      `--max-semi-space-size=${DAEMON_SEMI_SPACE_MB}`,
      '--cpu-prof',
      `--cpu-prof-dir=${PROFILE_DIR}`,
      `--cpu-prof-interval=${PROFILE_INTERVAL_US}`,
      CLI,
      'daemon',
      'run',
      '--background',
    ],
    {
      env: bob.env,
      stdio: 'ignore',
      detached: true,
    },
  ).unref();
  for (let k = 0; k < 100 && bob.daemonPid() === null; k++) await new Promise((r) => setTimeout(r, 100));
  await new Promise((r) => setTimeout(r, 500));
} else bob.start();
try {
  const a = ThinBuild.fromFixture(FIXTURE, join(tempDir('rh-a'), 'src'));
  const b = ThinBuild.fromFixture(FIXTURE, join(tempDir('rh-b'), 'src'));
  for (const t of [a, b]) {
    t.frontEnd();
    t.thinLink();
  }
  const job = (t: ThinBuild, env: NodeJS.ProcessEnv, m: string, v: string[]) => {
    const r = spawnSync(CLIENT, [t.clang, ...t.backendArgs(m, v)], { cwd: t.dir, env, stdio: ['ignore', 'ignore', 'pipe'] });
    if (r.status !== 0) throw new Error(`${m}: ${r.stderr}`);
  };
  for (const v of VARIANTS) for (const m of a.modules) job(a, alice.env, m, v);
  const total = a.modules.length * VARIANTS.length;
  for (let k = 0; k < 200 && alice.stats().uploads < total; k++) await new Promise((r) => setTimeout(r, 100));
  // One untimed round first: what a daemon does once in its life (identifying the toolchain,
  // hashing its binaries, connecting to the server) is no part of a remote hit's cost.
  const carol = new CacheEnv('rh-carol');
  carol.start();
  const c = ThinBuild.fromFixture(FIXTURE, join(tempDir('rh-c'), 'src'));
  c.frontEnd();
  c.thinLink();
  /** The two ways of storing: by the client (default), by the daemon. */
  const MODES = [
    { name: 'stored by the client', env: {} },
    { name: 'stored by the daemon (LTOCACHE_MEMO=0)', env: { LTOCACHE_MEMO: '0' } },
  ];
  // One untimed round first: what a daemon does once in its life (identifying the toolchain,
  // hashing its binaries, connecting to the server) is no part of a remote hit's cost.
  for (const m of b.modules) job(b, bob.env, m, VARIANTS[0]!);
  for (const m of c.modules) job(c, carol.env, m, VARIANTS[0]!);
  const pid = bob.daemonPid()!;
  const carolPid = carol.daemonPid()!;
  const rows = new Map<string, { cpu: number; n: number; threads: Map<string, number> }>();
  const add = (row: string, cpu: number, n: number, t0?: Map<string, number>, t1?: Map<string, number>) => {
    const r = rows.get(row) ?? { cpu: 0, n: 0, threads: new Map<string, number>() };
    r.cpu += cpu;
    r.n += n;
    if (t0 && t1) for (const [k, x] of t1) r.threads.set(k, (r.threads.get(k) ?? 0) + x - (t0.get(k) ?? 0));
    rows.set(row, r);
  };
  for (let r = -WARMUP; r < ROUNDS; r++) {
    const v = VARIANTS[(r + WARMUP) % VARIANTS.length]!;
    const order = r % 2 === 0 ? MODES : [...MODES].reverse();
    for (const mode of order) {
      const bobEnv = { ...bob.env, ...mode.env };
      bob.cli(['clear']);
      carol.cli(['clear']);
      // LevelDB's compaction after the clear runs on the daemon's threads: let it finish first.
      await new Promise((res) => setTimeout(res, 400));
      let c0 = processCpuMs(pid);
      let t0 = threadCpu(pid);
      for (const m of b.modules) job(b, bobEnv, m, v);
      // Write-backs finish off the hit path; their CPU is the remote hit's too.
      await new Promise((res) => setTimeout(res, 100));
      if (r >= 0) add(`remote hit, ${mode.name}`, processCpuMs(pid) - c0, b.modules.length, t0, threadCpu(pid));
      c0 = processCpuMs(pid);
      for (const m of b.modules) job(b, bobEnv, m, v);
      if (r >= 0) add(`local hit after it, ${mode.name}`, processCpuMs(pid) - c0, b.modules.length);
      const carolEnv = { ...carol.env, ...mode.env };
      c0 = processCpuMs(carolPid);
      t0 = threadCpu(carolPid);
      for (const m of c.modules) job(c, carolEnv, m, v);
      await new Promise((res) => setTimeout(res, 100));
      if (r >= 0) add(`miss, ${mode.name}`, processCpuMs(carolPid) - c0, c.modules.length, t0, threadCpu(carolPid));
    }
  }
  const s = bob.stats();
  const n = rows.values().next().value?.n ?? 0;
  console.log(`| daemon CPU (${n} jobs per row after ${WARMUP} + 1 untimed rounds, /proc, 10 ms ticks) | ms per job | main thread | other threads |`);
  console.log('|---|---:|---:|---:|');
  for (const [name, r] of rows) {
    const main = (r.threads.get('main user') ?? 0) + (r.threads.get('main sys') ?? 0);
    const other = (r.threads.get('other threads user') ?? 0) + (r.threads.get('other threads sys') ?? 0);
    const split = r.threads.size ? `${(main / r.n).toFixed(2)} | ${(other / r.n).toFixed(2)}` : '— | —';
    console.log(`| ${name} | ${(r.cpu / r.n).toFixed(2)} | ${split} |`);
  }
  const ratio = (a: string, b: string) => (rows.get(b)!.cpu > 0 ? (rows.get(a)!.cpu / rows.get(b)!.cpu).toFixed(2) : '-');
  console.log(
    `client storing / daemon storing: remote hit ${ratio(`remote hit, ${MODES[0]!.name}`, `remote hit, ${MODES[1]!.name}`)} ×, miss ${ratio(`miss, ${MODES[0]!.name}`, `miss, ${MODES[1]!.name}`)} ×`,
  );
  const cs = carol.stats();
  console.log(
    `bob: remote_hits=${s.remote_hits} hits=${s.hits} memo_hits=${s.memo_hits} misses=${s.misses} remote_errors=${s.remote_errors}; carol: misses=${cs.misses} stored by the client=${cs.misses_stored_by_client}`,
  );
  carol.destroy();
  // Every remote round's jobs were remote hits, the untimed ones too.
  if (s.misses > 0 || s.remote_hits !== (2 * (ROUNDS + WARMUP) + 1) * b.modules.length) process.exitCode = 1;
} finally {
  alice.destroy();
  bob.destroy();
  await server.kill('SIGTERM');
}
