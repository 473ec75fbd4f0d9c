import { spawnSync } from 'node:child_process';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { ThinBuild } from '../src/demo/thinBuild.js';
import type { JobExplanation } from '../src/explain/explainJobs.js';
import { initHash } from '../src/key/hash.js';
import { RemoteBackend } from '../src/remote/remoteBackend.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../test/support/env.js';
import { ServerProcess, TOKENS } from '../test/support/server.js';

/**
 * Team-cache benchmark, all rows measured side by side in one run on loopback:
 * per-job wall time of a compile, a local hit and a remote hit (each through the real client),
 * then the server's get throughput with 8 concurrent clients and a parallel fetch of a whole build.
 * Usage: node dist/bench/team.js [--rounds N] [--seconds S]
 */

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const ROUNDS = arg('--rounds', 10);
const SECONDS = arg('--seconds', 5);
const VARIANTS = [[], ['-O1'], ['-O3'], ['-march=x86-64-v2']];

function ms(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e6;
}
function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)]! : NaN;
}
function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
}

function timeJob(b: ThinBuild, m: string, extra: string[], wrapper: string[] | undefined, env: NodeJS.ProcessEnv): number {
  const args = b.backendArgs(m, extra, `${m}.v${VARIANTS.findIndex((v) => v.join() === extra.join())}.o`);
  const [cmd, ...pre] = wrapper ? [...wrapper, b.clang] : [b.clang];
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd!, [...pre, ...args], { cwd: b.dir, env, stdio: ['ignore', 'ignore', 'pipe'] });
  const t = ms(t0);
  if (r.status !== 0) throw new Error(`${m}: ${r.stderr}`);
  return t;
}

async function main(): Promise<void> {
  await initHash();
  const server = new ServerProcess();
  const url = await server.start();
  const env = (c: CacheEnv) => ({ ...c.env });
  const alice = new CacheEnv('bench-alice', { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: TOKENS.write });
  const bob = new CacheEnv('bench-bob', { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: TOKENS.read, LTOCACHE_REMOTE_TIMEOUT_MS: '2000' });
  alice.start();
  bob.start();
  try {
    const a = ThinBuild.fromFixture(FIXTURE, join(tempDir('bench-a'), 'src'));
    const b = ThinBuild.fromFixture(FIXTURE, join(tempDir('bench-b'), 'src'));
    a.frontEnd();
    b.frontEnd();
    a.thinLink();
    b.thinLink();
    const compile: number[] = [];
    const local: number[] = [];
    const remote: number[] = [];
    // Alice compiles every job once (and uploads).
    for (const v of VARIANTS) for (const m of a.modules) timeJob(a, m, v, [CLIENT], env(alice));
    for (let i = 0; i < 100 && alice.stats().uploads < a.modules.length * VARIANTS.length; i++) await new Promise((r) => setTimeout(r, 100));
    const keys: string[] = [];
    for (const v of VARIANTS) {
      for (const m of a.modules) {
        const e = JSON.parse(alice.cli(['explain', join(a.dir, `${m}.v${VARIANTS.indexOf(v)}.o`), '--json']).stdout) as JobExplanation;
        keys.push(e.key!);
      }
    }
    for (let r = 0; r < ROUNDS; r++) {
      const v = VARIANTS[r % VARIANTS.length]!;
      bob.cli(['clear']);
      for (const m of b.modules) {
        compile.push(timeJob(b, m, v, undefined, process.env));
        remote.push(timeJob(b, m, v, [CLIENT], env(bob)));
        local.push(timeJob(b, m, v, [CLIENT], env(bob)));
      }
    }
    const bs = bob.stats();
    // Server throughput: 8 concurrent clients, each its own connection, gets for SECONDS.
    const clients = Array.from({ length: 8 }, () => new RemoteBackend({ url, token: TOKENS.read, timeoutMs: 5000 }));
    await Promise.all(clients.map((c) => c.handshake()));
    const getLat: number[] = [];
    let gets = 0;
    let failures = 0;
    const until = Date.now() + SECONDS * 1000;
    const t0 = process.hrtime.bigint();
    await Promise.all(
      clients.map(async (c, ci) => {
        let i = ci;
        while (Date.now() < until) {
          const t = process.hrtime.bigint();
          const r = await c.get(keys[i++ % keys.length]!);
          getLat.push(ms(t));
          if (r.kind === 'hit') gets++;
          else failures++;
        }
      }),
    );
    const tputSec = ms(t0) / 1000;
    // A whole build fetched in parallel (every entry once, 8 clients).
    const t1 = process.hrtime.bigint();
    let next = 0;
    await Promise.all(
      clients.map(async (c) => {
        while (next < keys.length) {
          const r = await c.get(keys[next++]!);
          if (r.kind !== 'hit') failures++;
        }
      }),
    );
    const fetchAll = ms(t1);
    for (const c of clients) c.close();
    const rows: [string, string, string][] = [
      ['compile (clang-19 direct), per job', `${median(compile).toFixed(1)} ms`, '1.00×'],
      ['local hit (bin/ltocache → daemon), per job', `${median(local).toFixed(1)} ms`, `${(median(local) / median(compile)).toFixed(2)}× of compile`],
      ['remote hit (empty local cache → server), per job', `${median(remote).toFixed(1)} ms`, `${(median(remote) / median(local)).toFixed(2)}× of local hit (target ≤ 3×)`],
      [`server gets/s, 8 concurrent clients, ${SECONDS} s`, `${(gets / tputSec).toFixed(0)} gets/s`, `p50 ${median(getLat).toFixed(2)} ms, p99 ${pct(getLat, 99).toFixed(2)} ms (target ≥ 200/s)`],
      [`parallel fetch of the whole build (${keys.length} entries, 8 clients)`, `${fetchAll.toFixed(1)} ms`, `${((keys.length / fetchAll) * 1000).toFixed(0)} entries/s`],
    ];
    const w0 = Math.max(...rows.map((r) => r[0].length));
    const w1 = Math.max(...rows.map((r) => r[1].length));
    console.log(`machine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`);
    console.log(`jobs: ${b.modules.length} modules × ${ROUNDS} rounds; bob remote_hits=${bs.remote_hits} hits=${bs.hits} misses=${bs.misses}; get failures=${failures}`);
    console.log(`| ${'what'.padEnd(w0)} | ${'median'.padEnd(w1)} | ratio |`);
    console.log(`|${'-'.repeat(w0 + 2)}|${'-'.repeat(w1 + 2)}|---|`);
    for (const [k, v, r] of rows) console.log(`| ${k.padEnd(w0)} | ${v.padEnd(w1)} | ${r} |`);
    if (failures) process.exitCode = 1;
  } finally {
    alice.destroy();
    bob.destroy();
    await server.kill('SIGTERM');
  }
}

await main();
