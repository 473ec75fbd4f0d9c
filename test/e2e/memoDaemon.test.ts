import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CacheEnv, CLIENT, tempDir } from '../support/env.js';
import { waitFor } from '../support/waitFor.js';

/**
 * The memo fast path end to end: the real daemon writes memos, the real client serves from them
 * without the daemon, and every change the key would see sends the job back to the daemon.
 * Real clang 19 / lld 19; every served object is compared with direct clang.
 */

const CC = 'clang-19';
const FLAGS = ['-O2', '--target=x86_64-linux-gnu'];
const SOURCES: Record<string, string> = {
  'a.c': 'asm(".pushsection .rodata\\n.incbin \\"blob.dat\\"\\n.popsection\\n");\nint fa(int x) { return x * 3 + 1; }\n',
  'b.c': 'int fa(int);\nint fb(int x) { return fa(x) + 2; }\n',
  'blob.dat': 'one\n',
};
const MODULES = ['a', 'b'];

function run(cmd: string, args: string[], cwd: string, env?: NodeJS.ProcessEnv) {
  const r = spawnSync(cmd, args, { cwd, env: env ?? process.env, encoding: 'utf8' });
  return { status: r.status ?? 128, stderr: r.stderr };
}

function backendArgs(m: string, out = `${m}.native.o`): string[] {
  return [...FLAGS, '-x', 'ir', '-fno-lto', `-fthinlto-index=${m}.o.thinlto.bc`, '-c', '-o', out, `${m}.o`];
}

function memoFiles(cacheDir: string): string[] {
  const dir = join(cacheDir, 'memo');
  const out: string[] = [];
  for (const shard of readdirSync(dir)) if (/^[0-9a-f]{2}$/.test(shard)) for (const f of readdirSync(join(dir, shard))) out.push(join(dir, shard, f));
  return out;
}

describe('memo fast path with the real daemon', () => {
  let cache: CacheEnv;
  let dir: string;
  /** No daemon can start (when none runs, a job the fast path does not serve is compiled by clang
   *  directly; when one runs, it serves the job). Fast-path hits are told apart by their notices. */
  let noDaemon: NodeJS.ProcessEnv;

  before(() => {
    cache = new CacheEnv('memo');
    noDaemon = { ...cache.env, LTOCACHE_NODE: '/nonexistent/node', LTOCACHE_START_TIMEOUT_MS: '300' };
    cache.start();
    dir = tempDir('memo');
    for (const [f, text] of Object.entries(SOURCES)) writeFileSync(join(dir, f), text);
    for (const m of MODULES) assert.equal(run(CC, [...FLAGS, '-flto=thin', '-c', `${m}.c`, '-o', `${m}.o`], dir).status, 0);
    // Front-end outputs older than the racy window, as in a real rebuild: STAT checks apply.
    const old = new Date(Date.now() - 60_000);
    for (const m of MODULES) utimesSync(join(dir, `${m}.o`), old, old);
    utimesSync(join(dir, 'blob.dat'), old, old);
    // utimes sets ctime to now: let it age past the racy window, so these inputs get STAT checks
    // (a file changed within the window is checked by content, which a touch does not fail).
    spawnSync('sleep', ['2.2']);
  });
  after(() => {
    cache.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  function thinLink(cwd = dir): void {
    const r = run('ld.lld-19', ['-r', '--thinlto-index-only=list', ...MODULES.map((m) => `${m}.o`), '-o', 'out.o'], cwd);
    assert.equal(r.status, 0, r.stderr);
  }

  /** Runs every backend job through the client with `env`, checks each object against direct clang. */
  function jobs(env: NodeJS.ProcessEnv, cwd = dir): void {
    for (const m of MODULES) {
      rmSync(join(cwd, `${m}.native.o`), { force: true });
      const r = run(CLIENT, [CC, ...backendArgs(m)], cwd, env);
      assert.equal(r.status, 0, `${m}: ${r.stderr}`);
      assert.equal(run(CC, backendArgs(m, `${m}.direct.o`), cwd).status, 0);
      assert.ok(readFileSync(join(cwd, `${m}.native.o`)).equals(readFileSync(join(cwd, `${m}.direct.o`))), `${m}: object differs from direct clang`);
    }
  }

  /** Fast-path hits as the running daemon counts them (it drains the notices on `stats`). */
  function memoHits(): number {
    return cache.stats().memo_hits;
  }

  /** Notice lines not drained yet (while no daemon runs). */
  function notices(): number {
    try {
      return readFileSync(join(cache.dir, 'memo', 'hits.log'), 'latin1')
        .split('\n')
        .filter(Boolean).length;
    } catch {
      return 0;
    }
  }

  test('a warmed job is served by the fast path while the daemon is stopped and cannot start', () => {
    thinLink();
    jobs(cache.env); // cold: misses, memos written after the store
    thinLink();
    // Index files older than the racy window when keyed (late jobs of a long build) must still be
    // checked by content: the next thin link rewrites them with the same bytes.
    const old = new Date(Date.now() - 60_000);
    for (const m of MODULES) utimesSync(join(dir, `${m}.o.thinlto.bc`), old, old);
    spawnSync('sleep', ['2.2']);
    jobs({ ...cache.env, LTOCACHE_MEMO: '0' }); // daemon-path hits; memos written again
    assert.equal(memoFiles(cache.dir).length, 2);
    cache.stop();
    const before = notices();
    thinLink();
    jobs(noDaemon);
    assert.equal(notices() - before, 2, 'both jobs served from memos');
    const s0 = cache.stats(); // no daemon: the stored counters
    cache.start(); // drains the notices
    const s = cache.stats();
    assert.equal(s.memo_hits - s0.memo_hits, 2, `memo hits counted once the daemon is back: ${JSON.stringify(s)}`);
    cache.stop();
    cache.start();
    assert.equal(cache.stats().memo_hits, s.memo_hits, 'a restarted daemon does not count them again');
  });

  test('changes the key sees send the job back: content edit of an .incbin file, touch, env, tree elsewhere', () => {
    cache.start();
    thinLink();
    jobs(cache.env);
    let n = memoHits();
    // The .incbin file changes; bitcode and index do not. No daemon: clang must run, not the memo.
    writeFileSync(join(dir, 'blob.dat'), 'two\n');
    jobs(noDaemon);
    assert.equal(memoHits(), n, 'no fast-path hit after the .incbin file changed');
    // touch of an input (same content): STAT check fails, the daemon path serves and rewrites the memo.
    jobs(cache.env);
    const t = new Date();
    utimesSync(join(dir, 'b.o'), t, t);
    n = memoHits();
    jobs(noDaemon);
    assert.equal(memoHits(), n + 1, 'a was served by its memo, b (touched) was not');
    // A keyed environment variable.
    jobs(cache.env);
    n = memoHits();
    jobs({ ...noDaemon, CCC_OVERRIDE_OPTIONS: '+-O1' });
    assert.equal(memoHits(), n, 'no fast-path hit with CCC_OVERRIDE_OPTIONS set');
    // The tree copied elsewhere: another cwd is another command.
    const copy = tempDir('memo-copy');
    cpSync(dir, copy, { recursive: true });
    n = memoHits();
    jobs(noDaemon, copy);
    assert.equal(memoHits(), n, 'no fast-path hit in another directory');
    rmSync(copy, { recursive: true, force: true });
  });

  test('a corrupt or evicted blob, or a memo with the wrong mode, falls back', () => {
    jobs(cache.env);
    // This tree's memos, named as the client names them.
    const memos = MODULES.map((m) => {
      const r = spawnSync(CLIENT, [CC, ...backendArgs(m)], { cwd: dir, env: { ...cache.env, LTOCACHE_PRINT_LOOKUP: '1' }, encoding: 'utf8' });
      const lookup = r.stdout.trim();
      assert.match(lookup, /^[0-9a-f]{32}$/);
      return join(cache.dir, 'memo', lookup.slice(0, 2), lookup.slice(2));
    });
    let n = memoHits();
    jobs(noDaemon);
    assert.equal(memoHits(), n + 2);
    // Corrupt every blob in place (same size): the copy verifies the digest and falls back.
    const blobs = join(cache.dir, 'store', 'v1', 'blobs');
    const saved = new Map<string, Buffer>();
    for (const shard of readdirSync(blobs))
      for (const f of readdirSync(join(blobs, shard))) {
        const p = join(blobs, shard, f);
        const data = readFileSync(p);
        saved.set(p, data);
        const bad = Buffer.from(data);
        bad[bad.length >> 1] = (bad[bad.length >> 1] ?? 0) ^ 0xff;
        writeFileSync(p, bad);
      }
    n = memoHits();
    jobs(noDaemon);
    assert.equal(memoHits(), n, 'no fast-path hit from a corrupt blob');
    for (const [p, data] of saved) writeFileSync(p, data);
    // A memo that others could write is not trusted.
    for (const m of memos) chmodSync(m, 0o666);
    n = memoHits();
    jobs(noDaemon);
    assert.equal(memoHits(), n, 'no fast-path hit from a group/other-writable memo');
    // The daemon served those jobs and writes the memos again, private, after its answer.
    const deadline = Date.now() + 10_000;
    while (memos.some((m) => (statSync(m).mode & 0o777) !== 0o600) && Date.now() < deadline) spawnSync('sleep', ['0.05']);
    for (const m of memos) assert.equal(statSync(m).mode & 0o777, 0o600);
  });

  test("a cold job is stored by the client ('S'): its entry is in the store and its memo serves the next run without the daemon", () => {
    const fresh = new CacheEnv('memo-storeback');
    try {
      fresh.start();
      thinLink();
      jobs(fresh.env);
      const s = fresh.stats();
      assert.equal(s.misses, 2);
      assert.equal(s.misses_stored_by_client, 2, `both misses stored by the client: ${JSON.stringify(s)}`);
      assert.equal(s.memos_written, 2);
      assert.equal(s.entries, 2);
      assert.equal(memoFiles(fresh.dir).length, 2);
      // A daemon-path hit reads the entries the client's blobs back (digests verified on read).
      thinLink();
      jobs({ ...fresh.env, LTOCACHE_MEMO: '0' });
      assert.equal(fresh.stats().hits, 2);
      fresh.stop();
      const log = join(fresh.dir, 'memo', 'hits.log');
      const before = readFileSync(log, { encoding: 'latin1', flag: 'a+' }).split('\n').filter(Boolean).length;
      thinLink();
      jobs({ ...fresh.env, LTOCACHE_NODE: '/nonexistent/node', LTOCACHE_START_TIMEOUT_MS: '300' });
      assert.equal(readFileSync(log, 'latin1').split('\n').filter(Boolean).length - before, 2, 'both served from the memos the client wrote');
    } finally {
      fresh.destroy();
    }
  });

  test('with verify on, the fast path serves nothing and a daemon removes the memos when it starts', async () => {
    cache.start();
    thinLink();
    jobs(cache.env);
    assert.ok(memoFiles(cache.dir).length >= 2);
    cache.stop();
    const conf = join(cache.dir, 'ltocache.conf');
    const served = (env: NodeJS.ProcessEnv, config?: string): number => {
      if (config === undefined) rmSync(conf, { force: true });
      else writeFileSync(conf, config);
      const before = notices();
      thinLink();
      jobs(env);
      return notices() - before;
    };
    // No daemon can start: a job the fast path does not serve is compiled by clang directly.
    assert.equal(served({ ...noDaemon, LTOCACHE_VERIFY: 'all' }), 0, 'LTOCACHE_VERIFY=all');
    assert.equal(served({ ...noDaemon, LTOCACHE_VERIFY: 'sample:0.1' }), 0, 'LTOCACHE_VERIFY=sample');
    assert.equal(served(noDaemon, '# audit\r\nverify = all   # every hit\r\n'), 0, 'verify = all in the config file');
    assert.equal(served(noDaemon, 'verify = off\nverify = "all"\n'), 0, 'the last line wins');
    assert.equal(served(noDaemon, 'verify=\n'), 0, 'a malformed line is a doubt');
    assert.equal(served({ ...noDaemon, LTOCACHE_CONFIG: join(dir, 'missing.conf') }), 0, 'LTOCACHE_CONFIG naming a missing file');
    assert.equal(served({ ...noDaemon, LTOCACHE_VERIFY: 'off' }, 'verify = all\n'), 2, 'the environment wins over the file');
    assert.equal(served(noDaemon, 'verify_later = all\n# verify = all\nverify = "off"\n'), 2, 'off, other keys and comments');
    assert.equal(served(noDaemon), 2, 'no config file');
    // A daemon started with verify on removes every memo: hits reach it and are audited.
    writeFileSync(conf, 'verify = all\n');
    const runs0 = cache.stats().verify_runs;
    cache.start();
    assert.equal(memoFiles(cache.dir).length, 0);
    const hits0 = cache.stats().hits;
    thinLink();
    jobs(cache.env);
    await waitFor('the audits', () => cache.stats().verify_runs - runs0 >= 2);
    const s = cache.stats();
    assert.equal(s.hits - hits0, 2);
    assert.equal(s.verify_runs - runs0, 2, `every hit audited: ${JSON.stringify(s)}`);
    assert.equal(s.verify_mismatches, 0);
    assert.equal(memoFiles(cache.dir).length, 0, 'no memo written while verify is on');
    cache.stop();
    rmSync(conf);
    // Verify off again: the daemon's hits write memos again.
    cache.start();
    thinLink();
    jobs(cache.env);
    assert.equal(memoFiles(cache.dir).length, 2);
  });

  test('clear removes the memos, and the team pack, with or without a daemon', () => {
    cache.start();
    assert.ok(memoFiles(cache.dir).length > 0);
    assert.equal(cache.cli(['clear']).status, 0);
    assert.equal(memoFiles(cache.dir).length, 0);
    // No daemon: the store is cleared in place, and the memos with it. A team pack left by a daemon
    // that was killed before adopting it carries its own blobs: it must go too.
    thinLink();
    jobs(cache.env);
    assert.ok(memoFiles(cache.dir).length > 0);
    cache.stop();
    const pack = join(cache.dir, 'memo', 'team.pack');
    writeFileSync(pack, 'a team pack');
    const r = cache.cli(['clear']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(memoFiles(cache.dir).length, 0);
    assert.equal(existsSync(pack), false);
  });
});
