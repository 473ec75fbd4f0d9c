import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ThinBuild } from '../src/demo/thinBuild.js';
import { hashBytes, initHash } from '../src/key/hash.js';
import { LocalStore } from '../src/store/localStore.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../test/support/env.js';

/**
 * Daemon memory (issue 9 targets: ≤ 100 MB idle, ≤ 150 MB with 100,000 entries). VmRSS and
 * VmHWM from /proc/<pid>/status: idle on a fresh cache; then on a cache holding a synthetic
 * store (small distinct blobs, put in-process before the daemon starts) after start, after
 * `stats`, after hits through the daemon path (LTOCACHE_MEMO=0) on the fixture program, after
 * `clear`.
 * Usage: node dist/bench/memory.js [--entries N] [--hits N]
 */
function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}
const ENTRIES = arg('--entries', 100_000);
const HITS = arg('--hits', 2000);
const PARALLEL = 32;

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

function mem(pid: number): { rss: number; hwm: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)![1]);
  return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
}

/** Fills `dir` (a cache directory) with `n` entries of one 1–4 KiB blob each, all distinct. */
async function fill(dir: string, n: number): Promise<number> {
  await initHash();
  const t0 = performance.now();
  const store = await LocalStore.open({ dir: join(dir, 'store'), durable: false, sweepOnOpen: false });
  try {
    const one = async (k: number) => {
      const data = Buffer.alloc(1024 + (k % 3073), k % 251);
      data.writeUInt32LE(k, 0);
      const digest = hashBytes(data);
      const record = { v: 1 as const, outputs: [{ name: 'obj', digest, size: data.length }], stdout: '', stderr: '', exitCode: 0 as const, compileMs: 10, createdAt: Date.now() };
      const r = await store.put(hashBytes(`synthetic-key-${k}`), { record, files: new Map([['obj', data]]) });
      if (r.kind !== 'stored') throw new Error(`put ${k}: ${JSON.stringify(r)}`);
    };
    for (let k = 0; k < n; k += PARALLEL) await Promise.all(Array.from({ length: Math.min(PARALLEL, n - k) }, (_, j) => one(k + j)));
  } finally {
    await store.close();
  }
  return (performance.now() - t0) / 1000;
}

const rows: string[] = [];
const row = (what: string, m: { rss: number; hwm: number }, target = '') => rows.push(`| ${what} | ${m.rss.toFixed(0)} | ${m.hwm.toFixed(0)} | ${target} |`);

const idle = new CacheEnv('memory-idle');
try {
  idle.start();
  await sleep(2000);
  row('idle: fresh empty cache, 2 s after start', mem(idle.daemonPid()!), '≤ 100 MB');
} finally {
  idle.destroy();
}

const cache = new CacheEnv('memory');
const work = tempDir('memory');
try {
  const fillSeconds = await fill(cache.dir, ENTRIES);
  cache.start();
  const pid = cache.daemonPid()!;
  row(`${ENTRIES.toLocaleString('en')} entries: just after start`, mem(pid));
  await sleep(2000);
  row(`${ENTRIES.toLocaleString('en')} entries: 2 s after start`, mem(pid), '≤ 150 MB');
  const s = cache.stats();
  row(`after \`stats\` (entries ${s.entries ?? '?'})`, mem(pid), '≤ 150 MB');

  const b = ThinBuild.fromFixture(FIXTURE, join(work, 'src'));
  b.frontEnd();
  b.thinLink();
  for (const m of b.modules) spawnSync(CLIENT, [b.clang, ...b.backendArgs(m)], { cwd: b.dir, env: cache.env, stdio: 'ignore' });
  const script = join(work, 'jobs.sh');
  const lines = Array.from({ length: HITS }, (_, k) => [CLIENT, b.clang, ...b.backendArgs(b.modules[k % b.modules.length]!)].map(q).join(' '));
  writeFileSync(script, `cd ${q(b.dir)}\n${lines.join('\n')}\n`);
  const h0 = cache.stats().hits;
  const r = spawnSync('sh', [script], { env: { ...cache.env, LTOCACHE_MEMO: '0' }, stdio: 'ignore' });
  if (r.status !== 0) throw new Error('hit script failed');
  const hits = cache.stats().hits - h0;
  row(`after ${hits} hits through the daemon path (${b.modules.length} fixture jobs, \`LTOCACHE_MEMO=0\`)`, mem(pid), '≤ 150 MB');
  const c = cache.cli(['clear']);
  if (c.status !== 0) throw new Error(`clear failed: ${c.stderr}`);
  row('after `clear`', mem(pid));
  await sleep(2000);
  row('2 s after `clear`', mem(pid));

  console.log('| daemon | VmRSS MB | VmHWM MB | target |');
  console.log('|---|---|---|---|');
  for (const l of rows) console.log(l);
  console.log(`synthetic store: ${ENTRIES} entries (one 1–4 KiB blob each) put in ${fillSeconds.toFixed(1)} s in-process (${PARALLEL} puts in flight)`);
} finally {
  cache.destroy();
  rmSync(work, { recursive: true, force: true });
}
