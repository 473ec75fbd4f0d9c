import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ThinBuild } from '../src/demo/thinBuild.js';
import { CacheEnv, CLI, CLIENT, FIXTURE, tempDir } from '../test/support/env.js';
import { ServerProcess, TOKENS } from '../test/support/server.js';

/**
 * Daemon CPU per remote hit against per local hit, side by side in one run: a teammate uploads
 * every job, then a second daemon with an empty local store serves them from the team server
 * (remote hits, written back locally), then again from its store (local hits). CPU from /proc
 * of the daemon only, so the client, the server and other load hardly count. An untimed first
 * round keeps the daemon's one-time start-up work out of the rows.
 * Usage: node dist/bench/remoteHit.js [--rounds N] [--cpu-prof-dir DIR]
 */
const i = process.argv.indexOf('--rounds');
const ROUNDS = i > 0 ? Number(process.argv[i + 1]) : 40;
const p = process.argv.indexOf('--cpu-prof-dir');
/** With --cpu-prof-dir DIR, the second daemon writes a V8 CPU profile there when it stops. */
const PROFILE_DIR = p > 0 ? process.argv[p + 1]! : null;
const VARIANTS = [[], ['-O1'], ['-O3'], ['-march=x86-64-v2'], ['-O1', '-march=x86-64-v2'], ['-O3', '-march=x86-64-v2']];

/** User and system CPU ms per thread name (comm) of a process. */
function threadCpu(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const raw = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const comm = raw.slice(raw.indexOf('(') + 1, raw.lastIndexOf(')'));
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
  spawn(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`, CLI, 'daemon', 'run', '--background'], { env: bob.env, stdio: 'ignore', detached: true }).unref();
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
  for (let r = 0; r < ROUNDS; r++) {
    bob.cli(['clear']);
    // LevelDB's compaction after the clear runs on the daemon's threads: let it finish first.
    await new Promise((res) => setTimeout(res, 400));
    const v = VARIANTS[r % VARIANTS.length]!;
    let c0 = cpuMs(pid);
    const t0 = threadCpu(pid);
    for (const m of b.modules) job(b, bob.env, m, v);
    // Write-backs finish off the hit path; their CPU is the remote hit's too.
    await new Promise((res) => setTimeout(res, 100));
    remoteCpu += cpuMs(pid) - c0;
    for (const [k, x] of threadCpu(pid)) remoteThreads.set(k, (remoteThreads.get(k) ?? 0) + x - (t0.get(k) ?? 0));
    c0 = cpuMs(pid);
    for (const m of b.modules) job(b, bob.env, m, v);
    localCpu += cpuMs(pid) - c0;
    n += b.modules.length;
  }
  const s = bob.stats();
  console.log(`| daemon CPU (${n} jobs each, /proc, 10 ms ticks) | ms per job |`);
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
  if (s.misses > 0 || s.remote_hits !== n) process.exitCode = 1;
} finally {
  alice.destroy();
  bob.destroy();
  await server.kill('SIGTERM');
}
