import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { basename, join } from 'node:path';
import { writeSerialDistributor } from '../test/support/dtlto.js';
import { CacheEnv, CLIENT, TOP, tempDir } from '../test/support/env.js';
import { ServerProcess, TOKENS } from '../test/support/server.js';

/**
 * DTLTO benchmark on a real multi-file C++ program: LevelDB 1.20 + snappy (the sources shipped
 * under node_modules/classic-level/deps) and a small driver program, front ends compiled once with
 * `clang++-22 -flto=thin -O2`. All rows side by side in one run: lld in-process ThinLTO cold/warm
 * (--thinlto-cache-dir), DTLTO with a plain serial distributor, DTLTO through ltocache cold, warm,
 * after a one-function edit (hits against the ideal, from the indexes before and after), and warm
 * from a team server with an empty local cache. Every ltocache link's executable is compared with
 * the serial distributor's for the same sources.
 * Usage: node dist/bench/dtlto.js [--runs N]
 */

const CLANGXX = process.env.LTOCACHE_BENCH_CLANGXX ?? '/usr/bin/clang++-22';
const CLANG = process.env.LTOCACHE_BENCH_CLANG ?? '/usr/bin/clang-22';
const LLD = process.env.LTOCACHE_BENCH_LLD ?? '/usr/bin/ld.lld-22';
const RUNS = (() => {
  const i = process.argv.indexOf('--runs');
  return i > 0 ? Number(process.argv[i + 1]) : 3;
})();
const DEPS = join(TOP, 'node_modules', 'classic-level', 'deps');
const LDB = 'leveldb/leveldb-1.20';
const CFLAGS = [
  '-flto=thin',
  '-O2',
  '-std=c++11',
  '-pthread',
  '-fno-builtin-memcmp',
  '-DLEVELDB_PLATFORM_POSIX=1',
  '-DOS_LINUX=1',
  '-DSNAPPY=1',
  '-DHAVE_CONFIG_H=1',
  `-I${LDB}`,
  `-I${LDB}/include`,
  '-Isnappy/linux',
  '-Isnappy/snappy',
  '-w',
];
/** The one-function edit: Status::ToString's "OK" (util/status.cc). */
const EDIT = { file: `${LDB}/util/status.cc`, from: 'return "OK";', to: 'return "OK.";' };

const MAIN = `#include <cstdio>
#include <string>
#include "leveldb/db.h"
#include "leveldb/write_batch.h"
int main(int argc, char **argv) {
  leveldb::Options o;
  o.create_if_missing = true;
  o.compression = leveldb::kSnappyCompression;
  leveldb::DB *db;
  leveldb::Status s = leveldb::DB::Open(o, argv[1], &db);
  if (!s.ok()) { std::fprintf(stderr, "%s\\n", s.ToString().c_str()); return 1; }
  for (int i = 0; i < 20000; i++) {
    leveldb::WriteBatch b;
    b.Put("key" + std::to_string(i), std::string(100, 'a' + i % 26) + std::to_string(i * 7));
    db->Write(leveldb::WriteOptions(), &b);
  }
  unsigned long sum = 0;
  leveldb::Iterator *it = db->NewIterator(leveldb::ReadOptions());
  for (it->SeekToFirst(); it->Valid(); it->Next()) sum = sum * 31 + it->value().size() + (unsigned char)it->key()[3];
  delete it;
  delete db;
  std::printf("records ok, checksum=%lu\\n", sum);
  return 0;
}
`;

/** The library's sources as its own gyp file lists them for POSIX, the snappy sources, the driver. */
function sources(dir: string): string[] {
  const gyp = readFileSync(join(dir, 'leveldb', 'leveldb.gyp'), 'utf8');
  const ldb = [...gyp.matchAll(/"leveldb-<\(ldbversion\)\/([^"]+\.cc)"/g)].map((m) => `${LDB}/${m[1]}`);
  return ['main.cc', 'snappy/snappy/snappy.cc', 'snappy/snappy/snappy-sinksource.cc', 'snappy/snappy/snappy-stubs-internal.cc', ...new Set(ldb)];
}

const obj = (src: string) => src.replace(/\.cc$/, '.o');

function sh(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): { ms: number; stderr: string } {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', maxBuffer: 64 << 20 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.slice(0, 6).join(' ')}… failed (${r.status}): ${r.stderr}`);
  return { ms, stderr: r.stderr };
}

/** Front ends, two at a time. */
async function frontEnds(dir: string, srcs: string[]): Promise<void> {
  const { spawn } = await import('node:child_process');
  let next = 0;
  const worker = async () => {
    while (next < srcs.length) {
      const s = srcs[next++]!;
      await new Promise<void>((res, rej) => {
        const c = spawn(CLANGXX, [...CFLAGS, '-c', s, '-o', obj(s)], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
        let err = '';
        c.stderr.on('data', (d: Buffer) => (err += d.toString()));
        c.on('close', (code) => (code === 0 ? res() : rej(new Error(`${s}: ${err}`))));
      });
    }
  };
  await Promise.all(Array.from({ length: Math.min(2, cpus().length) }, worker));
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const root = tempDir('bench-dtlto');
  const dir = join(root, 'src');
  mkdirSync(dir);
  cpSync(join(DEPS, 'leveldb'), join(dir, 'leveldb'), { recursive: true });
  cpSync(join(DEPS, 'snappy'), join(dir, 'snappy'), { recursive: true });
  writeFileSync(join(dir, 'main.cc'), MAIN);
  const srcs = sources(dir);
  const objs = srcs.map(obj);
  process.stderr.write(`front ends: ${srcs.length} files…\n`);
  await frontEnds(dir, srcs);
  const serial = writeSerialDistributor(join(root, 'serial-distributor'));
  const link = (extra: string[], env: NodeJS.ProcessEnv = process.env, out = 'prog') =>
    sh(CLANGXX, ['-flto=thin', '-fuse-ld=lld', `--ld-path=${LLD}`, '-O2', '-pthread', ...extra.map((a) => `-Wl,${a}`), ...objs, '-o', out], dir, env);
  const dtlto = (distributor: string, args: string[]) => [
    `--thinlto-distributor=${distributor}`,
    ...args.map((a) => `--thinlto-distributor-arg=${a}`),
    `--thinlto-remote-compiler=${CLANG}`,
  ];
  const runProg = () => {
    const db = join(root, `db-${Math.random().toString(36).slice(2)}`);
    const r = spawnSync(join(dir, 'prog'), [db], { encoding: 'utf8' });
    rmSync(db, { recursive: true, force: true });
    if (r.status !== 0 || !/records ok/.test(r.stdout)) throw new Error(`program failed: ${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  const bytes = () => readFileSync(join(dir, 'prog'));
  const rows: { what: string; ms: number; jobs?: string }[] = [];
  let mismatches = 0;
  let comparisons = 0;
  const compare = (ref: Buffer) => {
    comparisons++;
    if (!bytes().equals(ref)) mismatches++;
  };

  // lld in-process ThinLTO with its own cache.
  const lldCache = join(root, 'lld-cache');
  rows.push({ what: 'lld in-process ThinLTO, cold (--thinlto-cache-dir empty)', ms: link([`--thinlto-cache-dir=${lldCache}`]).ms });
  const warmLld = median(Array.from({ length: RUNS }, () => link([`--thinlto-cache-dir=${lldCache}`]).ms));
  rows.push({ what: 'lld in-process ThinLTO, warm', ms: warmLld });
  runProg();

  // DTLTO, plain serial distributor (the byte reference), saving the indexes.
  const idx0 = join(root, 'idx0');
  mkdirSync(idx0);
  rows.push({ what: 'DTLTO, plain serial distributor', ms: link(dtlto(serial, []), { ...process.env, DTLTO_SAVE_INDEX_DIR: idx0 }).ms });
  const ref0 = bytes();
  const out0 = runProg();

  // DTLTO through ltocache, with a team server: alice uploads, bob has an empty local cache.
  const server = new ServerProcess();
  const url = await server.start();
  const alice = new CacheEnv('bench-dtlto-alice', { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: TOKENS.write });
  const bob = new CacheEnv('bench-dtlto-bob', { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: TOKENS.read, LTOCACHE_REMOTE_TIMEOUT_MS: '2000' });
  alice.start();
  bob.start();
  try {
    const jobsOf = (c: CacheEnv, fn: () => number) => {
      const a = c.stats();
      const ms = fn();
      const b = c.stats();
      return { ms, hits: b.hits - a.hits, misses: b.misses - a.misses, remote: b.remote_hits - a.remote_hits, memoHits: b.memo_hits - a.memo_hits };
    };
    const ltocache = dtlto(CLIENT, ['distribute']);
    const cold = jobsOf(alice, () => link(ltocache, alice.env).ms);
    compare(ref0);
    if (runProg() !== out0) throw new Error('program output differs');
    const n = cold.misses + cold.hits;
    rows.push({ what: 'DTLTO through ltocache, cold', ms: cold.ms, jobs: `${cold.hits}/${n} hits` });
    // The first relink may still find the daemon storing the cold link's objects: untimed.
    jobsOf(alice, () => link(ltocache, alice.env).ms);
    compare(ref0);
    const warm = Array.from({ length: RUNS }, () => jobsOf(alice, () => link(ltocache, alice.env).ms));
    for (const _ of warm) compare(ref0);
    const fast = Math.min(...warm.map((w) => w.memoHits));
    rows.push({
      what: 'DTLTO through ltocache, warm (distribution memo: the client serves every job)',
      ms: median(warm.map((w) => w.ms)),
      jobs: `${Math.min(...warm.map((w) => w.hits))}/${n} hits, ${fast} by the client`,
    });
    const daemonPath = { ...alice.env, LTOCACHE_MEMO: '0' };
    const warmDaemon = Array.from({ length: RUNS }, () => jobsOf(alice, () => link(ltocache, daemonPath).ms));
    for (const _ of warmDaemon) compare(ref0);
    rows.push({
      what: '  the same, fast path off (LTOCACHE_MEMO=0: every job through the daemon)',
      ms: median(warmDaemon.map((w) => w.ms)),
      jobs: `${Math.min(...warmDaemon.map((w) => w.hits))}/${n} hits`,
    });
    // The fixed cost of a distributor run: bin/ltocache → daemon ('T') → reply, a file with no jobs.
    const empty = join(dir, 'empty.dist-file.json');
    writeFileSync(empty, JSON.stringify({ common: { linker_output: 'prog', args: [CLANG], inputs: [] }, jobs: [] }));
    rows.push({
      what: '  of which: `ltocache distribute` fixed cost alone (client → daemon → reply, a file with no jobs)',
      ms: median(Array.from({ length: RUNS }, () => sh(CLIENT, ['distribute', empty], dir, daemonPath).ms)),
    });
    const deadline = Date.now() + 60_000;
    while (alice.stats().uploads < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    const team = jobsOf(bob, () => link(ltocache, bob.env).ms);
    compare(ref0);
    rows.push({ what: 'DTLTO through ltocache, warm from the team server, empty local cache', ms: team.ms, jobs: `${team.remote}/${n} remote hits` });

    // One-function edit: the ideal is the jobs whose index and input bitcode are unchanged.
    const editFile = join(dir, EDIT.file);
    const text = readFileSync(editFile, 'utf8');
    if (!text.includes(EDIT.from)) throw new Error(`edit anchor not found in ${EDIT.file}`);
    const inputsBefore = new Map(objs.map((o) => [o, readFileSync(join(dir, o))]));
    writeFileSync(editFile, text.replace(EDIT.from, EDIT.to));
    await frontEnds(dir, [EDIT.file]);
    const idx1 = join(root, 'idx1');
    mkdirSync(idx1);
    link(dtlto(serial, []), { ...process.env, DTLTO_SAVE_INDEX_DIR: idx1 });
    const ref1 = bytes();
    const unchanged = objs.filter((o) => {
      const i = `${basename(o)}.thinlto.bc`;
      return existsSync(join(idx0, i)) && readFileSync(join(idx0, i)).equals(readFileSync(join(idx1, i))) && inputsBefore.get(o)!.equals(readFileSync(join(dir, o)));
    }).length;
    const edited = jobsOf(alice, () => link(ltocache, alice.env).ms);
    compare(ref1);
    runProg();
    rows.push({ what: `DTLTO through ltocache, after a one-function edit (${EDIT.file})`, ms: edited.ms, jobs: `${edited.hits}/${n} hits (ideal ${unchanged})` });
  } finally {
    alice.destroy();
    bob.destroy();
    await server.kill();
  }

  const base = rows.find((r) => r.what === 'lld in-process ThinLTO, warm')!.ms;
  const lines = [
    `LevelDB 1.20 + snappy + a driver: ${srcs.length} C++ modules, clang++-22 -flto=thin -O2; lld 22; warm rows are the median of ${RUNS} links; ${cpus().length} cores.`,
    '',
    '| link | wall | × lld in-process warm | jobs |',
    '|---|---|---|---|',
    ...rows.map((r) => `| ${r.what} | ${(r.ms / 1000).toFixed(3)} s | ${(r.ms / base).toFixed(2)}× | ${r.jobs ?? ''} |`),
    '',
    `Byte mismatches against the serial distributor's executable: ${mismatches} of ${comparisons} ltocache links.`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
  rmSync(root, { recursive: true, force: true });
}

await main();
