import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ThinBuild } from '../src/demo/thinBuild.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../test/support/env.js';

/**
 * Cost of a local hit, measured side by side in one run: the daemon's CPU time per hit (from
 * /proc, so other load on the machine does not inflate it much) and the wall time of the whole
 * client process per job, next to spawning /bin/true the same way.
 * Usage: node dist/bench/hitPath.js [--jobs N]
 */
const i = process.argv.indexOf('--jobs');
const N = i > 0 ? Number(process.argv[i + 1]) : 600;

function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

const cache = new CacheEnv('hitpath');
cache.start();
try {
  const b = ThinBuild.fromFixture(FIXTURE, join(tempDir('hitpath'), 'src'));
  b.frontEnd();
  b.thinLink();
  const job = (m: string) => spawnSync(CLIENT, [b.clang, ...b.backendArgs(m)], { cwd: b.dir, env: cache.env, stdio: 'ignore' });
  for (const m of b.modules) job(m);
  for (const m of b.modules) job(m);
  const pid = cache.daemonPid()!;
  const c0 = cpuMs(pid);
  const t0 = performance.now();
  for (let k = 0; k < N; k++) job(b.modules[k % b.modules.length]!);
  const wall = (performance.now() - t0) / N;
  const cpu = (cpuMs(pid) - c0) / N;
  const t1 = performance.now();
  for (let k = 0; k < N; k++) spawnSync('/bin/true', [], { cwd: b.dir, stdio: 'ignore' });
  const floor = (performance.now() - t1) / N;
  const s = cache.stats();
  console.log(`| what (${N} sequential hits) | ms per job |`);
  console.log('|---|---|');
  console.log(`| daemon CPU per hit | ${cpu.toFixed(3)} |`);
  console.log(`| wall per hit, bin/ltocache spawned from node | ${wall.toFixed(3)} |`);
  console.log(`| wall per /bin/true spawned the same way | ${floor.toFixed(3)} |`);
  console.log(`hits=${s.hits} misses=${s.misses}`);
} finally {
  cache.destroy();
}
