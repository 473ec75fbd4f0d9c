import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ThinBuild } from '../src/demo/thinBuild.js';
import { DAEMON_SEMI_SPACE_MB } from '../src/protocol/limits.js';
import { CacheEnv, CLI, CLIENT, FIXTURE, tempDir } from '../test/support/env.js';
import { ServerProcess, TOKENS } from '../test/support/server.js';

/**
 * Daemon CPU per remote hit against per local hit, side by side in one run: a teammate uploads
 * every job, then a second daemon with an empty local store serves them from the team server
 * (remote hits, written back locally), then again from its store (local hits). CPU from /proc
 * of the daemon only, so the client, the server and other load hardly count. An untimed first
 * round keeps the daemon's one-time start-up work out of the rows; `--warmup N` adds N untimed
 * rounds like the timed ones, so that V8 has compiled the hot code (its optimizing compiler
 * runs on other threads of the daemon, and a daemon does that once in its life, not per hit).
 * Usage: node dist/bench/remoteHit.js [--rounds N] [--warmup N] [--cpu-prof-dir DIR [--cpu-prof-interval µs]]
 */
const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const ROUNDS = arg('--rounds', 40);
const WARMUP = arg('--warmup', 0);
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
      const raw = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const comm = Number(t) === pid ? 'main' : 'other threads';
      const f = raw.slice(raw.lastIndexOf(') ') + 2).split(' ');
      out.set(`${comm} user`, (out.get(`${comm} user`) ?? 0) + Number(f[11]) * 10);
      out.set(`${comm} sys`, (out.get(`${comm} sys`) ?? 0) + Number(f[12]) * 10);
    } catch {
      // The thread ended.
    }
  }
  return out;
}

function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
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
  for (const m of b.modules) job(b, bob.env, m, VARIANTS[0]!);
  const pid = bob.daemonPid()!;
  const remoteThreads = new Map<string, number>();
  let remoteCpu = 0;
  let localCpu = 0;
  let n = 0;
  for (let r = -WARMUP; r < ROUNDS; r++) {
    bob.cli(['clear']);
    // LevelDB's compaction after the clear runs on the daemon's threads: let it finish first.
    await new Promise((res) => setTimeout(res, 400));
    const v = VARIANTS[(r + WARMUP) % VARIANTS.length]!;
    let c0 = cpuMs(pid);
    const t0 = threadCpu(pid);
    for (const m of b.modules) job(b, bob.env, m, v);
    // Write-backs finish off the hit path; their CPU is the remote hit's too.
    await new Promise((res) => setTimeout(res, 100));
    if (r < 0) {
      for (const m of b.modules) job(b, bob.env, m, v);
      continue;
    }
    remoteCpu += cpuMs(pid) - c0;
    for (const [k, x] of threadCpu(pid)) remoteThreads.set(k, (remoteThreads.get(k) ?? 0) + x - (t0.get(k) ?? 0));
    c0 = cpuMs(pid);
    for (const m of b.modules) job(b, bob.env, m, v);
    localCpu += cpuMs(pid) - c0;
    n += b.modules.length;
  }
  const s = bob.stats();
  console.log(`| daemon CPU (${n} jobs each after ${WARMUP} + 1 untimed rounds, /proc, 10 ms ticks) | ms per job |`);
  console.log('|---|---|');
  console.log(`| remote hit (empty local store → team server, written back) | ${(remoteCpu / n).toFixed(2)} |`);
  console.log(`| local hit (the same jobs again) | ${(localCpu / n).toFixed(2)} |`);
  console.log(`| remote hit minus local hit | ${((remoteCpu - localCpu) / n).toFixed(2)} |`);
  console.log(
    `remote hits, daemon CPU by thread (ms per job): ${[...remoteThreads]
      .filter(([, x]) => x > 0)
      .map(([k, x]) => `${k} ${(x / n).toFixed(2)}`)
      .join(', ')}`,
  );
  console.log(`bob: remote_hits=${s.remote_hits} hits=${s.hits} misses=${s.misses} remote_errors=${s.remote_errors}`);
  // Every job of every round was a remote hit, the untimed ones too.
  if (s.misses > 0 || s.remote_hits !== (ROUNDS + WARMUP + 1) * b.modules.length) process.exitCode = 1;
} finally {
  alice.destroy();
  bob.destroy();
  await server.kill('SIGTERM');
}
