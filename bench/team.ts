import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { ThinBuild } from '../src/demo/thinBuild.js';
import type { JobExplanation } from '../src/explain/explainJobs.js';
import { hashBytes, initHash } from '../src/key/hash.js';
import { RemoteBackend } from '../src/remote/remoteBackend.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../test/support/env.js';
import { RedisCluster, RedisNode } from '../test/support/redis.js';
import { ServerProcess, TOKENS } from '../test/support/server.js';

/**
 * Team-cache benchmark, all rows measured side by side in one run on loopback:
 * per-job wall time of a compile, a local hit and a remote hit (each through the real client),
 * then the server's get throughput with 8 concurrent clients and a parallel fetch of a whole build.
 * Then the same get load (8 clients, synthetic entries) against each storage: one server on
 * --dir, one server on a standalone Redis, two servers on a 3+3 Redis Cluster (each client given
 * both URLs). Usage: node dist/bench/team.js [--rounds N] [--seconds S] [--storage-only]
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

/** Entries like the fixture's backend outputs: an object of 8-40 KiB, a third with a .dwo. */
function syntheticEntries(n: number) {
  return Array.from({ length: n }, (_, i) => {
    const files = new Map<string, Buffer>([['obj', randomBytes(8192 + ((i * 7919) % 32768))]]);
    if (i % 3 === 0) files.set('dwo', randomBytes(4096));
    return {
      key: hashBytes(`bench-entry-${i}-${Math.random()}`),
      entry: {
        record: {
          v: 1 as const,
          outputs: [...files].map(([name, d]) => ({ name, digest: hashBytes(d), size: d.length })),
          stdout: '',
          stderr: '',
          exitCode: 0 as const,
          compileMs: 1,
          createdAt: 0,
        },
        files,
      },
    };
  });
}

/** 8 clients, each its own connection(s), gets over `keys` for SECONDS: gets/s, p50, p99, failures. */
async function getLoad(url: string, keys: string[]): Promise<{ rate: number; p50: number; p99: number; failures: number }> {
  const clients = Array.from({ length: 8 }, () => new RemoteBackend({ url, token: TOKENS.read, timeoutMs: 5000 }));
  await Promise.all(clients.map((c) => c.handshake()));
  for (const c of clients) for (const s of c.servers) await s.handshake();
  const { lat, gets, failures, sec } = await timedGets(clients, keys, 13);
  for (const c of clients) c.close();
  return { rate: gets / sec, p50: median(lat), p99: pct(lat, 99), failures };
}

/** Every client gets keys in turn (client ci starting at ci × `stride`) for SECONDS: latencies, hits, failures, elapsed s. */
async function timedGets(clients: RemoteBackend[], keys: string[], stride: number): Promise<{ lat: number[]; gets: number; failures: number; sec: number }> {
  const lat: number[] = [];
  let gets = 0;
  let failures = 0;
  const until = Date.now() + SECONDS * 1000;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    clients.map(async (c, ci) => {
      let i = ci * stride;
      while (Date.now() < until) {
        const t = process.hrtime.bigint();
        const r = await c.get(keys[i++ % keys.length]!);
        lat.push(ms(t));
        if (r.kind === 'hit') gets++;
        else failures++;
      }
    }),
  );
  return { lat, gets, failures, sec: ms(t0) / 1000 };
}

/** The storage rows: the same synthetic entries and load on --dir, Redis and a Redis Cluster. */
async function storageRows(): Promise<[string, string, string][]> {
  const entries = syntheticEntries(96);
  const keys = entries.map((e) => e.key);
  const fill = async (url: string) => {
    const w = new RemoteBackend({ url, token: TOKENS.write, timeoutMs: 5000, putTimeoutMs: 30_000 });
    for (const e of entries) {
      const r = await w.put(e.key, e.entry);
      if (r.kind !== 'stored') throw new Error(`fill ${url}: ${JSON.stringify(r)}`);
    }
    w.close();
  };
  const rows: [string, string, string][] = [];
  const row = (what: string, r: Awaited<ReturnType<typeof getLoad>>, target = '') => {
    rows.push([
      `${what}: gets/s, 8 clients, ${SECONDS} s`,
      `${r.rate.toFixed(0)} gets/s`,
      `p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms, failures ${r.failures}${target}`,
    ]);
    if (r.failures) process.exitCode = 1;
  };
  const dir = new ServerProcess();
  const redis = new RedisNode();
  const cluster = new RedisCluster(3);
  const onRedis = () => new ServerProcess([], redis.url);
  const servers: ServerProcess[] = [dir];
  try {
    const dirUrl = await dir.start();
    await fill(dirUrl);
    row('one server, --dir', await getLoad(dirUrl, keys));
    await redis.start();
    const r = onRedis();
    servers.push(r);
    const redisUrl = await r.start();
    await fill(redisUrl);
    row('one server, Redis standalone', await getLoad(redisUrl, keys));
    await cluster.start();
    const c1 = new ServerProcess([], cluster.url);
    const c2 = new ServerProcess([], cluster.url);
    servers.push(c1, c2);
    const both = `${await c1.start()},${await c2.start()}`;
    await fill(both);
    row('two servers, Redis Cluster 3+3', await getLoad(both, keys), ' (target ≥ 2,000/s)');
  } finally {
    for (const s of servers) await s.kill('SIGTERM');
    await redis.stop();
    await cluster.stop();
  }
  return rows;
}

function printTable(rows: [string, string, string][]): void {
  const w0 = Math.max(...rows.map((r) => r[0].length));
  const w1 = Math.max(...rows.map((r) => r[1].length));
  console.log(`| ${'what'.padEnd(w0)} | ${'median'.padEnd(w1)} | ratio |`);
  console.log(`|${'-'.repeat(w0 + 2)}|${'-'.repeat(w1 + 2)}|---|`);
  for (const [k, v, r] of rows) console.log(`| ${k.padEnd(w0)} | ${v.padEnd(w1)} | ${r} |`);
}

async function main(): Promise<void> {
  if (process.argv.includes('--storage-only')) {
    await initHash();
    console.log(`machine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`);
    printTable(await storageRows());
    return;
  }
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
    const timed = await timedGets(clients, keys, 1);
    const { lat: getLat, gets, sec: tputSec } = timed;
    let { failures } = timed;
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
      [
        `server gets/s, 8 concurrent clients, ${SECONDS} s`,
        `${(gets / tputSec).toFixed(0)} gets/s`,
        `p50 ${median(getLat).toFixed(2)} ms, p99 ${pct(getLat, 99).toFixed(2)} ms (target ≥ 200/s)`,
      ],
      [`parallel fetch of the whole build (${keys.length} entries, 8 clients)`, `${fetchAll.toFixed(1)} ms`, `${((keys.length / fetchAll) * 1000).toFixed(0)} entries/s`],
    ];
    console.log(`machine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`);
    console.log(`jobs: ${b.modules.length} modules × ${ROUNDS} rounds; bob remote_hits=${bs.remote_hits} hits=${bs.hits} misses=${bs.misses}; get failures=${failures}`);
    rows.push(...(await storageRows()));
    printTable(rows);
    if (failures) process.exitCode = 1;
  } finally {
    alice.destroy();
    bob.destroy();
    await server.kill('SIGTERM');
  }
}

await main();
