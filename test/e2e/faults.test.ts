import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, rmSync, statfsSync, statSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, type TestContext, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Level } from 'level';
import type { ThinBuild } from '../../src/demo/thinBuild.js';
import { FileDigests } from '../../src/key/fileDigests.js';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { socketPathFor } from '../../src/protocol/clientFrames.js';
import type { StatsView } from '../../src/stats/counters.js';
import { layoutPaths, SUBLEVELS } from '../../src/store/layout.js';
import { LocalStore } from '../../src/store/localStore.js';
import { nodeFs, type StoreFs } from '../../src/store/storeOptions.js';
import { processAlive } from '../../src/util/processAlive.js';
import { Direct } from '../support/direct.js';
import { CacheEnv, CLI, CLIENT, runAsync, tempDir } from '../support/env.js';
import { mulberry32 } from '../support/prng.js';
import { ServerProcess, TOKENS } from '../support/server.js';
import { sharedTree } from '../support/sharedTree.js';
import { waitFor } from '../support/waitFor.js';

/**
 * Fault injection (issue 5, "Faults"): the daemon SIGKILLed in the middle of store writes, a full
 * disk, a corrupted or deleted LevelDB, clock jumps, the team server killed during uploads and
 * the socket file removed. Each test drives the real client, daemon and clang 19, counts what it
 * injected, and checks the one invariant that matters: every build succeeds and every object is
 * byte-identical to what clang produces directly. All loopback, all bounded in count and time.
 *
 * Reproduce one: node --test --test-name-pattern='<name>' dist/test/e2e/faults.test.js
 * The SIGKILL test's seed: LTOCACHE_FAULT_SEED (default below), printed as a diagnostic.
 */

await initHash();

const SEED = Number(process.env.LTOCACHE_FAULT_SEED ?? 0x5eed1);

function buildAll(b: ThinBuild, cache: CacheEnv, extra: string[] = []): void {
  for (const m of b.modules) {
    const r = b.backend(m, { wrapper: [CLIENT], extra, env: cache.env });
    assert.equal(r.status, 0, `backend ${m}: ${r.stderr}`);
  }
}

function assertMatchesDirect(b: ThinBuild, direct: Direct, extra: string[] = []): void {
  for (const m of b.modules) {
    assert.ok(readFileSync(join(b.dir, `${m}.thinlto-native.o`)).equals(direct.get(m, extra)), `${m} (${extra.join(' ')}) differs from direct clang`);
  }
}

function delta(a: StatsView, b: StatsView): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of ['hits', 'misses', 'errors', 'uncacheable', 'remote_hits', 'remote_misses', 'remote_errors', 'uploads', 'uploads_dropped'] as const) out[k] = b[k] - a[k];
  return out;
}

/** The keys of every entry in a store's LevelDB (the store must be closed). */
async function entryKeys(storeDir: string): Promise<string[]> {
  const db = new Level<string, string>(layoutPaths(storeDir).meta, { valueEncoding: 'utf8' });
  await db.open();
  try {
    return await db.sublevel<string, string>(SUBLEVELS.entries, { valueEncoding: 'utf8' }).keys().all();
  } finally {
    await db.close();
  }
}

function blobFiles(storeDir: string): string[] {
  const root = layoutPaths(storeDir).blobs;
  if (!existsSync(root)) return [];
  return readdirSync(root).flatMap((s) => readdirSync(join(root, s)).map((f) => join(root, s, f)));
}

/**
 * Starts a daemon in the foreground of a child process (one Node start, where `daemon start`
 * costs two) and resolves with its pid once it listens. A daemon already running is reused.
 */
async function startDaemon(cache: CacheEnv): Promise<number> {
  const running = cache.daemonPid();
  if (running && processAlive(running) && existsSync(socketPathFor(cache.dir, process.getuid!()))) return running;
  const errFile = join(cache.dir, 'daemon-run.stderr');
  const fd = openSync(errFile, 'w');
  const child = spawn(process.execPath, [CLI, 'daemon', 'run'], { env: cache.env, stdio: ['ignore', 'ignore', fd], detached: true });
  closeSync(fd);
  child.unref();
  let exited = false;
  child.on('exit', () => (exited = true));
  const err = () => readFileSync(errFile, 'utf8');
  await waitFor(
    'the daemon to listen',
    () => {
      if (/daemon running/.test(err())) return true;
      // Lost a race with a daemon a client started: use that one.
      if (exited && /already running/.test(err())) return true;
      if (exited) throw new Error(`daemon exited: ${err()}`);
      return false;
    },
    20_000,
    10,
  );
  const pid = cache.daemonPid();
  assert.ok(pid && processAlive(pid), 'daemon running');
  return pid;
}

function killDaemon(cache: CacheEnv): void {
  const pid = cache.daemonPid();
  if (pid && processAlive(pid)) process.kill(pid, 'SIGKILL');
}

const { tree, cleanup } = sharedTree('faults-tree');

function setup(name: string, extra: Record<string, string> = {}): { cache: CacheEnv; b: ThinBuild; direct: Direct } {
  const cache = new CacheEnv(`faults-${name}`, extra);
  cleanup.push(() => {
    killDaemon(cache);
    cache.destroy();
  });
  const top = tempDir(`faults-${name}`);
  cleanup.push(() => rmSync(top, { recursive: true, force: true }));
  const b = tree().copyTo(join(top, 'src'));
  return { cache, b, direct: new Direct(b) };
}

describe('faults', () => {
  test('SIGKILL of the daemon at random points of 100 store writes: the store stays consistent, every object served is right', { timeout: 150_000 }, async (t: TestContext) => {
    const { cache, b, direct } = setup('sigkill');
    const rand = mulberry32(SEED);
    const variants: string[][] = [[], ['-O1'], ['-O3'], ['-ffunction-sections'], ['-march=x86-64-v3']];
    // Output names are not keyed: a flag that is keyed by its spelling but changes neither the
    // object nor (without diagnostics) stderr makes each of the 100 jobs a store write of its own.
    const distinct = (n: number) => `-fmessage-length=${1000 + n}`;
    const jobs: { m: string; extra: string[]; out: string }[] = [];
    let faults = 0;
    let aimed = 0;
    let rounds = 0;
    const WRITES = 100;
    const timing = { start: 0, rounds: 0, verify: 0, replay: 0 };
    let t0 = Date.now();
    while (jobs.length < WRITES) {
      const pid = await startDaemon(cache);
      timing.start += Date.now() - t0;
      const batch = Math.min(WRITES - jobs.length, 6 + Math.floor(rand() * 7));
      const running: Promise<{ status: number; stderr: string }>[] = [];
      for (let i = 0; i < batch; i++) {
        const n = jobs.length;
        const m = b.modules[n % b.modules.length]!;
        const extra = variants[Math.floor(rand() * variants.length)]!;
        const out = `${m}.w${n}.o`;
        jobs.push({ m, extra, out });
        running.push(runAsync(CLIENT, [b.clang, ...b.backendArgs(m, [...extra, distinct(n)], out)], { cwd: b.dir, env: cache.env }));
      }
      if (rand() < 0.5) {
        // Anywhere: before the first compile, during compiles, after the last reply.
        await sleep(Math.floor(rand() * 900));
      } else {
        // Aimed at a store write: it starts right after a reply.
        await Promise.race(running);
        await sleep(Math.floor(rand() * 15));
        aimed++;
      }
      if (processAlive(pid)) {
        process.kill(pid, 'SIGKILL');
        faults++;
      }
      await waitFor('the killed daemon to exit', () => !processAlive(pid), 5000, 10);
      for (const r of await Promise.all(running)) assert.equal(r.status, 0, r.stderr);
      rounds++;
      timing.rounds += Date.now() - t0;
      t0 = Date.now();
    }
    // A client whose daemon died may have started another one; stop it before opening the store.
    cache.stop();
    killDaemon(cache);
    // The builds themselves were right, whoever answered them.
    for (const j of jobs) assert.ok(readFileSync(join(b.dir, j.out)).equals(direct.get(j.m, j.extra)), `${j.out} differs from direct clang`);

    const storeDir = join(cache.dir, 'store');
    const paths = layoutPaths(storeDir);
    const tmpBefore = existsSync(paths.tmp) ? readdirSync(paths.tmp).length : 0;
    const keys = await entryKeys(storeDir);
    const blobsBefore = blobFiles(storeDir).length;
    const store = await LocalStore.open({ dir: storeDir, sweepOnOpen: false });
    let hits = 0;
    try {
      assert.deepEqual(readdirSync(paths.tmp), [], 'no tmp leftovers after open');
      const known = direct.all();
      for (const k of keys) {
        const r = await store.get(k);
        assert.notEqual(r.kind, 'error', `entry ${k}: ${r.kind === 'error' ? r.error : ''}`);
        if (r.kind !== 'hit') continue;
        hits++;
        const obj = r.entry.files.get('obj')!;
        assert.equal(hashBytes(obj), r.entry.record.outputs.find((o) => o.name === 'obj')!.digest);
        assert.ok(
          known.some((d) => d.equals(obj)),
          `entry ${k} holds an object no direct compile produced`,
        );
      }
      assert.equal(store.counters.corruptBlobs + store.counters.corruptRecords, 0);
    } finally {
      await store.close();
    }
    // Every blob file on disk has the digest it is named by (orphans included).
    for (const f of blobFiles(storeDir)) {
      const name = f.split('/').slice(-2).join('');
      assert.equal(hashBytes(readFileSync(f)), name, `blob ${f} does not hash to its name`);
    }

    timing.verify = Date.now() - t0;
    t0 = Date.now();
    // Served afterwards: every one of the 100 jobs again, outputs removed first.
    for (const j of jobs) rmSync(join(b.dir, j.out), { force: true });
    cache.start();
    const s0 = cache.stats();
    for (let i = 0; i < jobs.length; i += 4) {
      const rs = await Promise.all(
        jobs.slice(i, i + 4).map((j, k) => runAsync(CLIENT, [b.clang, ...b.backendArgs(j.m, [...j.extra, distinct(i + k)], j.out)], { cwd: b.dir, env: cache.env })),
      );
      for (const r of rs) assert.equal(r.status, 0, r.stderr);
    }
    const d = delta(s0, cache.stats());
    for (const j of jobs) assert.ok(readFileSync(join(b.dir, j.out)).equals(direct.get(j.m, j.extra)), `${j.out} served differs from direct clang`);
    assert.equal(d.errors, 0, `errors while serving after the crashes: ${JSON.stringify(d)}`);
    assert.equal(d.hits! + d.misses!, WRITES);
    assert.ok(d.hits! >= hits, `every verified entry hits: ${JSON.stringify(d)}, ${hits} verified`);
    assert.ok(faults >= rounds / 2, `faults injected ${faults} in ${rounds} rounds`);
    timing.replay = Date.now() - t0;
    t.diagnostic(`timing ms: ${JSON.stringify(timing)}`);
    t.diagnostic(
      `seed=${SEED} writes=${WRITES} rounds=${rounds} sigkills=${faults} aimed_after_a_reply=${aimed} entries=${keys.length} verified_hits=${hits} tmp_leftovers_swept=${tmpBefore} ` +
        `blob_files=${blobsBefore} replay_hits=${d.hits} replay_misses=${d.misses} wrong_objects=0 builds_broken=0`,
    );
  });

  describe('disk full while storing', () => {
    let mnt = '';
    let mounted = false;
    before(() => {
      if (process.getuid?.() !== 0) return;
      mnt = tempDir('faults-tmpfs');
      mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', mnt]).status === 0;
    });
    after(() => {
      if (mounted) {
        if (spawnSync('umount', [mnt]).status !== 0) spawnSync('umount', ['-l', mnt]);
      }
      if (mnt) rmSync(mnt, { recursive: true, force: true });
    });

    test('LTOCACHE_DIR on a full 2 MiB tmpfs: jobs succeed with the right object, store_write counted, nothing half-written stays', { timeout: 60_000 }, async (t) => {
      if (!mounted) return t.skip('needs root and a working `mount -t tmpfs` (the fs-seam test below covers ENOSPC without it)');
      const { b, direct } = setup('enospc');
      const cache = new CacheEnv('faults-enospc-env', { LTOCACHE_DIR: join(mnt, 'cache') });
      rmSync(cache.dir, { recursive: true, force: true });
      Object.defineProperty(cache, 'dir', { value: join(mnt, 'cache') });
      cleanup.push(() => killDaemon(cache));
      try {
        cache.start();
        const pid = cache.daemonPid();
        buildAll(b, cache); // stores six entries while there is room
        const filler = join(mnt, 'filler');
        const free = () => {
          const s = statfsSync(mnt);
          return s.bavail * s.bsize;
        };
        // Leave a few KiB: perhaps one blob fits, the rest of the writes hit ENOSPC. The daemon may
        // still be storing the last build (it stores after the clients have exited): if that
        // fills the disk first, the filler's own ENOSPC leaves it as full as intended.
        try {
          writeFileSync(filler, Buffer.alloc(Math.max(0, free() - 6 * 1024)));
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
        }
        const extras: string[][] = [['-O1'], ['-O3']];
        const s0 = cache.stats();
        for (const extra of extras) {
          b.thinLink();
          buildAll(b, cache, extra);
          assertMatchesDirect(b, direct, extra);
        }
        assert.ok(pid && processAlive(pid) && cache.daemonPid() === pid, 'the daemon survives the full disk');
        const s1 = cache.stats();
        const storeErrors = (s1.errors_by_kind.store_write ?? 0) - (s0.errors_by_kind.store_write ?? 0);
        assert.ok(storeErrors >= 1, `store_write errors counted: ${JSON.stringify(s1.errors_by_kind)}`);
        const d = delta(s0, s1);
        assert.equal(d.misses, extras.length * b.modules.length);
        const paths = layoutPaths(join(cache.dir, 'store'));
        const tmpWhileFull = readdirSync(paths.tmp).length;
        cache.stop();
        killDaemon(cache);
        rmSync(filler);
        // The next open: no tmp files, and whatever it serves is right.
        cache.start();
        await sleep(200);
        assert.deepEqual(readdirSync(paths.tmp), [], 'tmp/ empty after the next open');
        const s2 = cache.stats();
        for (const extra of [[], ...extras]) {
          b.thinLink();
          buildAll(b, cache, extra);
          assertMatchesDirect(b, direct, extra);
        }
        const after = delta(s2, cache.stats());
        assert.equal(after.errors, 0, JSON.stringify(after));
        assert.equal(after.hits! + after.misses!, 3 * b.modules.length);
        assert.ok(after.hits! >= b.modules.length, `entries stored before the disk filled still hit: ${JSON.stringify(after)}`);
        t.diagnostic(
          `tmpfs=2MiB jobs_while_full=${extras.length * b.modules.length} store_write_errors=${storeErrors} tmp_files_while_full=${tmpWhileFull} after_reopen hits=${after.hits} misses=${after.misses} wrong_objects=0 builds_broken=0`,
        );
      } finally {
        cache.stop();
        killDaemon(cache);
        await waitFor('daemon exit', () => !(cache.daemonPid() && processAlive(cache.daemonPid()!)), 5000).catch(() => {});
      }
    });

    test('ENOSPC at every step of a store write (fs seam): error result, no tmp leftovers, no dangling entry, store still usable', async (t) => {
      const top = tempDir('faults-seam');
      cleanup.push(() => rmSync(top, { recursive: true, force: true }));
      const dir = join(top, 'store');
      const errno = (code: string) => Object.assign(new Error(`${code}: injected`), { code });
      let failAt = -1;
      let calls = 0;
      const step = async <T>(f: () => Promise<T>): Promise<T> => {
        if (calls++ === failAt) throw errno('ENOSPC');
        return f();
      };
      const seam: Partial<StoreFs> = {
        async open(path, flags) {
          const h = await step(() => nodeFs.open(path, flags));
          return {
            write: (buf, off, len, pos) => step(() => h.write(buf, off, len, pos)),
            sync: () => step(() => h.sync()),
            stat: () => h.stat(),
            close: () => h.close(),
          };
        },
        rename: (a, b) => step(() => nodeFs.rename(a, b)),
        mkdir: (p, o) => step(() => nodeFs.mkdir(p, o)),
      };
      const store = await LocalStore.open({ dir, fs: seam, sweepOnOpen: false });
      const tmp = layoutPaths(dir).tmp;
      let injected = 0;
      let errors = 0;
      try {
        for (let at = 0; ; at++) {
          const data = Buffer.from(`object ${at} `.repeat(200));
          const key = hashBytes(`key ${at}`);
          const entry = {
            record: {
              v: 1 as const,
              outputs: [{ name: 'obj', digest: hashBytes(data), size: data.length }],
              stdout: '',
              stderr: '',
              exitCode: 0 as const,
              compileMs: 1,
              createdAt: 1,
            },
            files: new Map([['obj', data]]),
          };
          calls = 0;
          failAt = at;
          const r = await store.put(key, entry);
          const hit = calls > at;
          failAt = -1;
          assert.deepEqual(readdirSync(tmp), [], `tmp/ empty after a failure at step ${at}`);
          if (r.kind === 'stored') {
            // No injection point left in a put: every step has been failed once.
            assert.equal(hit, false);
            assert.equal((await store.get(key)).kind, 'hit');
            break;
          }
          injected++;
          assert.equal(r.kind, 'error');
          errors++;
          assert.equal((await store.get(key)).kind, 'miss', 'a failed put leaves no entry');
          // The store still works: the same put without a fault.
          assert.deepEqual(await store.put(key, entry), { kind: 'stored' });
          assert.equal((await store.get(key)).kind, 'hit');
        }
      } finally {
        await store.close();
      }
      const reopened = await LocalStore.open({ dir });
      const report = await reopened.sweepDone;
      await reopened.close();
      assert.deepEqual(readdirSync(tmp), []);
      assert.equal(report.brokenEntries, 0);
      assert.ok(injected >= 4, `fault points found: ${injected}`);
      t.diagnostic(`enospc_injection_points=${injected} put_errors=${errors} tmp_leftovers=0 dangling_entries=0 orphans_swept=${report.orphanBlobs}`);
    });
  });

  test('the store LevelDB corrupted or deleted: the daemon re-initialises with a clear log line, builds never break', { timeout: 90_000 }, async (t) => {
    // The memo fast path would serve these jobs without ever reopening the store: this test is about
    // the daemon's recovery, so every job takes the daemon path.
    const { cache, b, direct } = setup('meta', { LTOCACHE_MEMO: '0' });
    const meta = layoutPaths(join(cache.dir, 'store')).meta;
    const logFile = join(cache.dir, 'daemon.log');
    const unreadable = () =>
      existsSync(logFile)
        ? readFileSync(logFile, 'utf8')
            .split('\n')
            .filter((l) => l.includes('store metadata unreadable')).length
        : 0;
    cache.start();
    buildAll(b, cache);
    assertMatchesDirect(b, direct);
    const damage: [string, () => void, boolean][] = [
      ['CURRENT overwritten with garbage', () => writeFileSync(join(meta, 'CURRENT'), 'garbage, not a manifest name\n'), true],
      [
        'MANIFEST overwritten with garbage',
        () => {
          for (const f of readdirSync(meta)) if (f.startsWith('MANIFEST-')) writeFileSync(join(meta, f), Buffer.alloc(4096, 0x5a));
        },
        true,
      ],
      [
        'every .ldb/.log table truncated',
        () => {
          for (const f of readdirSync(meta)) if (/\.(ldb|log)$/.test(f)) writeFileSync(join(meta, f), Buffer.alloc(100, 0xff));
        },
        false,
      ],
      ['meta/ deleted (rm -rf)', () => rmSync(meta, { recursive: true, force: true }), false],
    ];
    let jobs = 0;
    for (const [name, hurt, expectLine] of damage) {
      cache.stop();
      await waitFor('daemon stop', () => !(cache.daemonPid() && processAlive(cache.daemonPid()!)), 10_000);
      const lines = unreadable();
      hurt();
      // No explicit start: the client starts the daemon, as in a real build.
      b.thinLink();
      buildAll(b, cache);
      jobs += b.modules.length;
      assertMatchesDirect(b, direct);
      if (expectLine) assert.equal(unreadable(), lines + 1, `${name}: daemon.log says 'store metadata unreadable'`);
      const s = cache.stats();
      assert.ok(s.daemon_running, name);
      assert.equal(s.hits + s.misses >= b.modules.length, true, `${name}: ${JSON.stringify(s)}`);
      // and the re-initialised store works: a rebuild hits.
      b.thinLink();
      const s0 = cache.stats();
      buildAll(b, cache);
      jobs += b.modules.length;
      assertMatchesDirect(b, direct);
      assert.equal(delta(s0, cache.stats()).hits, b.modules.length, `${name}: rebuild after recovery hits`);
    }

    // Deleted while the daemon runs: LevelDB keeps its open files; builds still succeed.
    const s0 = cache.stats();
    rmSync(meta, { recursive: true, force: true });
    for (const extra of [['-O1'], []]) {
      b.thinLink();
      buildAll(b, cache, extra);
      jobs += b.modules.length;
      assertMatchesDirect(b, direct, extra);
    }
    const d = delta(s0, cache.stats());
    assert.equal(d.hits! + d.misses! + d.uncacheable!, 2 * b.modules.length);
    // Restarted over the damage: builds still right.
    cache.stop();
    killDaemon(cache);
    b.thinLink();
    buildAll(b, cache, ['-O1']);
    jobs += b.modules.length;
    assertMatchesDirect(b, direct, ['-O1']);
    t.diagnostic(`damage_cases=${damage.length + 1} jobs=${jobs} unreadable_log_lines=${unreadable()} wrong_objects=0 builds_broken=0`);
  });

  test('clock jumps: a keyed file with a future mtime changed in place (same size, same mtime) never hits on its old content', { timeout: 60_000 }, async (t) => {
    // The rule itself, in the digest memo: a future timestamp is hashed every time, never memoised.
    const scratch = tempDir('faults-clock');
    cleanup.push(() => rmSync(scratch, { recursive: true, force: true }));
    const f = join(scratch, 'file');
    writeFileSync(f, 'a'.repeat(4096));
    const future = new Date(Date.now() + 3600_000);
    utimesSync(f, future, future);
    const digests = new FileDigests(0n);
    const first = await digests.digest(f);
    writeFileSync(f, 'b'.repeat(4096));
    utimesSync(f, future, future);
    const second = await digests.digest(f);
    assert.equal(digests.memoHits, 0);
    assert.equal(digests.size, 0, 'a future mtime is never memoised');
    assert.notDeepEqual(first, second);
    // Control: a settled file is memoised (so the assertion above means something).
    const past = new Date(Date.now() - 3600_000);
    utimesSync(f, past, past);
    await sleep(20);
    await digests.digest(f);
    await digests.digest(f);
    assert.equal(digests.memoHits, 1);

    // End to end, through the daemon: a -fbasic-block-sections list file named by a flag.
    const { cache, b, direct } = setup('clock');
    cache.start();
    const list = join(b.dir, 'bbs.txt');
    const flag = ['-fbasic-block-sections=list=bbs.txt'];
    const A = '!mathx_sum_squares\n';
    const Bbase = '!str_hash\n!!0\n#';
    const B = Bbase + 'x'.repeat(A.length - Bbase.length - 1) + '\n';
    assert.equal(B.length, A.length);
    const jump = new Date(Date.now() + 24 * 3600_000);
    const setFuture = () => {
      utimesSync(list, jump, jump);
      for (const m of b.modules) {
        utimesSync(join(b.dir, `${m}.o`), jump, jump);
        utimesSync(join(b.dir, `${m}.o.thinlto.bc`), jump, jump);
      }
    };
    writeFileSync(list, A);
    setFuture();
    const s0 = cache.stats();
    buildAll(b, cache, flag);
    const withA = new Map(b.modules.map((m) => [m, readFileSync(join(b.dir, `${m}.thinlto-native.o`))]));
    buildAll(b, cache, flag); // hashed again (not memoised), same content: hits
    const s1 = cache.stats();
    assert.deepEqual(delta(s0, s1).hits, b.modules.length);
    for (const m of b.modules) assert.ok(withA.get(m)!.equals(direct.get(m, flag)), m);
    // Same size, same future mtime, new content.
    writeFileSync(list, B);
    setFuture();
    assert.ok(Math.abs(statSync(list).mtimeMs - jump.getTime()) < 1, 'the same future mtime');
    const directB = new Map(
      b.modules.map((m) => {
        const r = b.backend(m, { extra: flag, out: `${m}.directB.o` });
        assert.equal(r.status, 0, r.stderr);
        return [m, readFileSync(join(b.dir, `${m}.directB.o`))];
      }),
    );
    setFuture();
    buildAll(b, cache, flag);
    const d = delta(s1, cache.stats());
    const changed = b.modules.filter((m) => !directB.get(m)!.equals(withA.get(m)!));
    assert.ok(changed.length >= 1, 'the new list content changes some object');
    for (const m of b.modules) assert.ok(readFileSync(join(b.dir, `${m}.thinlto-native.o`)).equals(directB.get(m)!), `${m}: served the old content's object`);
    assert.equal(d.misses, b.modules.length, `every job keyed by the list misses after its change: ${JSON.stringify(d)}`);
    t.diagnostic(`future_mtime_files=${1 + 2 * b.modules.length + 1} jobs=${3 * b.modules.length} objects_changed_by_new_content=${changed.length} stale_hits=0 wrong_objects=0`);
  });

  test('the team server SIGKILLed during uploads and restarted on the same port: uploads resume, nothing corrupt is served', { timeout: 120_000 }, async (t) => {
    const server = new ServerProcess();
    cleanup.push(() => server.kill().then(() => rmSync(server.dir, { recursive: true, force: true })));
    await server.start();
    const port = server.port;
    const remoteEnv = (tok: string) => ({ LTOCACHE_REMOTE: server.url, LTOCACHE_REMOTE_TOKEN: tok, LTOCACHE_REMOTE_RETRY_MS: '300' });
    const alice = setup('upload-alice', remoteEnv(TOKENS.write));
    alice.cache.start();
    const first = [['-O1'], ['-O3'], ['-Os'], ['-march=x86-64-v3']];
    const second = [
      ['-O1', '-march=x86-64-v2'],
      ['-O2', '-mtune=skylake'],
    ];
    const b = alice.b;
    const runs = first.flatMap((extra) =>
      b.modules.map((m) => runAsync(CLIENT, [b.clang, ...b.backendArgs(m, extra, `${m}${extra.join('')}.o`)], { cwd: b.dir, env: alice.cache.env })),
    );
    await waitFor('a few uploads', () => alice.cache.stats().uploads >= 3, 30_000, 20);
    await server.kill('SIGKILL');
    const atKill = alice.cache.stats().uploads;
    for (const r of await Promise.all(runs)) assert.equal(r.status, 0, r.stderr);
    const queued = first.length * b.modules.length;
    // Every queued upload ends stored, dropped or failed (a failed put counts in remote_errors).
    await waitFor(
      'the upload queue to drain',
      () => {
        const s = alice.cache.stats();
        return s.uploads + s.uploads_dropped + s.remote_errors >= queued;
      },
      30_000,
      200,
    );
    const down = alice.cache.stats();
    assert.ok(down.uploads < queued, `the kill came mid-way: ${down.uploads} of ${queued} uploaded`);
    const lost = queued - down.uploads;
    await server.start(port);
    await sleep(500);
    const before = alice.cache.stats();
    for (const extra of second) {
      b.thinLink();
      buildAll(b, alice.cache, extra);
    }
    await waitFor('uploads after the restart', () => alice.cache.stats().uploads - before.uploads >= second.length * b.modules.length, 30_000, 200);
    const end = alice.cache.stats();

    // A fresh teammate (read token: uploads nothing) asks for everything.
    const frank = setup('upload-frank', remoteEnv(TOKENS.read));
    frank.cache.start();
    const fb = frank.b;
    for (const extra of first) {
      for (const m of fb.modules) {
        const out = `${m}${extra.join('')}.o`;
        const r = await runAsync(CLIENT, [fb.clang, ...fb.backendArgs(m, extra, out)], { cwd: fb.dir, env: frank.cache.env });
        assert.equal(r.status, 0, r.stderr);
        assert.ok(readFileSync(join(fb.dir, out)).equals(alice.direct.get(m, extra)), `${out} from the team cache differs from direct clang`);
      }
    }
    for (const extra of second) {
      buildAll(fb, frank.cache, extra);
      assertMatchesDirect(fb, alice.direct, extra);
    }
    const f = frank.cache.stats();
    assert.equal(f.remote_errors, 0, `nothing corrupt served: ${JSON.stringify(f.errors_by_kind)}`);
    assert.equal(f.errors, 0, JSON.stringify(f.errors_by_kind));
    assert.ok(f.remote_hits >= end.uploads, `every acknowledged upload is served: ${f.remote_hits} hits, ${end.uploads} uploads`);
    assert.ok(f.remote_hits >= second.length * fb.modules.length);
    t.diagnostic(
      `uploads_queued=${queued + second.length * b.modules.length} uploaded_before_kill=${atKill} first_batch: uploaded=${down.uploads} lost=${lost} ` +
        `remote_errors=${down.remote_errors} remote_skipped=${down.remote_skipped} dropped=${down.uploads_dropped} uploaded_after_restart=${end.uploads - before.uploads} ` +
        `fresh_teammate remote_hits=${f.remote_hits} remote_errors=0 wrong_objects=0 builds_broken=0`,
    );
    await server.kill();
  });

  test('a daemon stopped (SIGSTOP): one job waits out the silence timeout, later ones go straight to clang; `daemon stop` says so and stops it', { timeout: 90_000 }, async () => {
    const { cache, b, direct } = setup('silent', { LTOCACHE_SILENCE_TIMEOUT_MS: '2000' });
    cache.start();
    buildAll(b, cache);
    const pid = cache.daemonPid()!;
    process.kill(pid, 'SIGSTOP');
    try {
      const times: number[] = [];
      for (let i = 0; i < 3; i++) {
        b.thinLink();
        const t0 = Date.now();
        const r = b.backend('lonely', { wrapper: [CLIENT], env: { ...cache.env, LTOCACHE_MEMO: '0' } });
        times.push(Date.now() - t0);
        assert.equal(r.status, 0, r.stderr);
        assert.ok(readFileSync(join(b.dir, 'lonely.thinlto-native.o')).equals(direct.get('lonely')));
      }
      assert.ok(times[0]! >= 1900, `the first job waited out the silence: ${times}`);
      assert.ok(times[1]! < 1500 && times[2]! < 1500, `later jobs did not: ${times}`);
      const stop = cache.cli(['daemon', 'stop']);
      assert.equal(stop.status, 0, stop.stderr);
      assert.match(stop.stdout, new RegExp(`daemon \\(pid ${pid}\\) is not answering`));
      await waitFor('the stopped daemon to be gone', () => !processAlive(pid), 10_000);
    } finally {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  });

  test('the socket file removed while the daemon runs: a job right after succeeds, the daemon listens again within 2 s, jobs hit again', { timeout: 60_000 }, async (t) => {
    const { cache, b, direct } = setup('socket', { LTOCACHE_START_TIMEOUT_MS: '5000' });
    cache.start();
    buildAll(b, cache);
    const pid = cache.daemonPid();
    const sock = socketPathFor(cache.dir, process.getuid!());
    assert.ok(existsSync(sock));
    let removals = 0;
    const back: number[] = [];
    for (let i = 0; i < 3; i++) {
      const out = join(b.dir, 'lonely.thinlto-native.o');
      rmSync(out);
      unlinkSync(sock);
      removals++;
      const t0 = Date.now();
      const r = b.backend('lonely', { wrapper: [CLIENT], env: cache.env });
      assert.equal(r.status, 0, r.stderr);
      assert.ok(readFileSync(out).equals(direct.get('lonely')));
      await waitFor('the socket to come back', () => existsSync(sock), 5000, 10);
      back.push(Date.now() - t0);
      assert.ok(Date.now() - t0 < 3000, `socket back after ${Date.now() - t0} ms`);
      assert.equal(cache.daemonPid(), pid, 'the same daemon listens again');
      assert.ok(processAlive(pid!));
    }
    b.thinLink();
    const s0 = cache.stats();
    buildAll(b, cache);
    assert.equal(delta(s0, cache.stats()).hits, b.modules.length);
    assertMatchesDirect(b, direct);
    assert.match(readFileSync(join(cache.dir, 'daemon.log'), 'utf8'), /socket file removed or replaced/);
    t.diagnostic(`socket_removals=${removals} relisten_ms=${back.join(',')} jobs=${removals + 2 * b.modules.length} builds_broken=0`);
  });
});
