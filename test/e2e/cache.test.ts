import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { EXIT_DAEMON_ALREADY_RUNNING } from '../../src/daemon/daemon.js';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import { processAlive } from '../../src/util/processAlive.js';
import { CacheEnv, CLI, CLIENT, FIXTURE, removeWhileWritten, runAsync, tempDir } from '../support/env.js';

/**
 * End-to-end: the real native client, the real daemon, real clang 19 / lld 19, on the fixture
 * program in distributed ThinLTO mode.
 */

function objects(b: ThinBuild, out = (m: string) => `${m}.thinlto-native.o`): Map<string, Buffer> {
  return new Map(b.modules.map((m) => [m, readFileSync(join(b.dir, out(m)))]));
}

/** Direct clang for every module (no cache), into `<m>.direct.o`, returning the bytes. */
function directObjects(b: ThinBuild, extra: string[] = [], compiler?: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const m of b.modules) {
    const r = b.backend(m, { extra, out: `${m}.direct.o`, ...(compiler ? { compiler } : {}) });
    assert.equal(r.status, 0, r.stderr);
    out.set(m, readFileSync(join(b.dir, `${m}.direct.o`)));
  }
  return out;
}

function buildAll(b: ThinBuild, cache: CacheEnv, extra: string[] = [], compiler?: string): void {
  for (const m of b.modules) {
    const r = b.backend(m, { wrapper: [CLIENT], extra, env: cache.env, ...(compiler ? { compiler } : {}) });
    assert.equal(r.status, 0, `backend ${m}: ${r.stderr}`);
  }
}

function assertSameObjects(actual: Map<string, Buffer>, expected: Map<string, Buffer>): void {
  for (const [m, bytes] of expected) assert.ok(actual.get(m)?.equals(bytes), `${m}: served object differs from direct clang`);
}

function delta(cache: CacheEnv, fn: () => void): { hits: number; misses: number; errors: number; uncacheable: number } {
  const a = cache.stats();
  fn();
  const b = cache.stats();
  return { hits: b.hits - a.hits, misses: b.misses - a.misses, errors: b.errors - a.errors, uncacheable: b.uncacheable - a.uncacheable };
}

describe('distributed ThinLTO through ltocache', () => {
  let cache: CacheEnv;
  let b: ThinBuild;
  before(() => {
    cache = new CacheEnv('core');
    cache.start();
    b = ThinBuild.fromFixture(FIXTURE, join(tempDir('tree'), 'src'));
    b.frontEnd();
  });
  after(() => cache.destroy());

  test('cold build misses, rebuild after a new thin link hits, objects equal direct clang, program runs', () => {
    b.thinLink();
    const cold = delta(cache, () => buildAll(b, cache));
    assert.deepEqual(cold, { hits: 0, misses: b.modules.length, errors: 0, uncacheable: 0 });
    const first = objects(b);
    b.thinLink();
    const warm = delta(cache, () => buildAll(b, cache));
    assert.deepEqual(warm, { hits: b.modules.length, misses: 0, errors: 0, uncacheable: 0 });
    const direct = directObjects(b);
    assertSameObjects(first, direct);
    assertSameObjects(objects(b), direct);
    b.link();
    assert.equal(b.runProgram(), 'sum=385 hash=2317759140 table=492 lonely=16 frame=-1024\n');
  });

  test('a hit writes the object atomically with the mode clang gives under the umask', () => {
    const obj = join(b.dir, 'lonely.thinlto-native.o');
    rmSync(obj);
    const r = b.backend('lonely', { wrapper: ['sh', '-c', 'umask 027; exec "$@"', 'sh', CLIENT], env: cache.env });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(statSync(obj).mode & 0o777, 0o640);
    const leftovers = readdirSync(b.dir).filter((f) => f.includes('.ltocache-'));
    assert.deepEqual(leftovers, []);
  });

  test('editing a function: importers of it and the edited module miss, the rest hit, all equal direct clang', () => {
    const before = new Map(b.modules.map((m) => [m, { index: readFileSync(join(b.dir, `${m}.o.thinlto.bc`)), input: readFileSync(join(b.dir, `${m}.o`)) }]));
    const src = join(b.dir, 'mathx.c');
    writeFileSync(src, readFileSync(src, 'utf8').replace('return x * x;', 'return x * x + 1;'));
    b.frontEnd(['mathx']);
    b.thinLink();
    // The ideal: a job can hit only if neither its index nor its input bitcode changed.
    const changed = b.modules.filter((m) => {
      const old = before.get(m)!;
      return !old.index.equals(readFileSync(join(b.dir, `${m}.o.thinlto.bc`))) || !old.input.equals(readFileSync(join(b.dir, `${m}.o`)));
    });
    assert.ok(changed.includes('mathx') && changed.includes('main') && changed.includes('table'), `changed: ${changed}`);
    assert.ok(!changed.includes('lonely') && !changed.includes('strx'), `changed: ${changed}`);
    const d = delta(cache, () => buildAll(b, cache));
    assert.equal(d.misses, changed.length);
    assert.equal(d.hits, b.modules.length - changed.length);
    assertSameObjects(objects(b), directObjects(b));
    b.link();
    assert.match(b.runProgram(), /^sum=395 /);
  });

  for (const [name, extra] of [
    ['-O level', ['-O1']],
    ['-march', ['-march=x86-64-v3']],
    ['-mtune', ['-mtune=skylake']],
  ] as const) {
    test(`changing ${name} misses and matches direct clang`, () => {
      b.thinLink();
      const d = delta(cache, () => buildAll(b, cache, [...extra]));
      assert.deepEqual(d, { hits: 0, misses: b.modules.length, errors: 0, uncacheable: 0 });
      assertSameObjects(objects(b), directObjects(b, [...extra]));
    });
  }

  test('changing the content of a -fbasic-block-sections=list= file (same path) misses', () => {
    const list = join(b.dir, 'bbs.txt');
    const flag = ['-fbasic-block-sections=list=bbs.txt'];
    writeFileSync(list, '!mathx_sum_squares\n');
    b.thinLink();
    const first = delta(cache, () => buildAll(b, cache, flag));
    assert.equal(first.misses, b.modules.length);
    const withFirst = directObjects(b, flag);
    assertSameObjects(objects(b), withFirst);
    writeFileSync(list, '!mathx_sum_squares\n!!0\n!str_hash\n!!0\n!table_score\n!!0\n');
    const second = delta(cache, () => buildAll(b, cache, flag));
    assert.equal(second.misses, b.modules.length);
    assert.equal(second.hits, 0);
    const withSecond = directObjects(b, flag);
    assertSameObjects(objects(b), withSecond);
    assert.ok(
      b.modules.some((m) => !withFirst.get(m)!.equals(withSecond.get(m)!)),
      'the list content should change some object',
    );
  });

  test('another compiler (a wrapper script) misses and matches direct clang', () => {
    const wrapper = join(b.dir, 'clang-wrapper.sh');
    writeFileSync(wrapper, `#!/bin/sh\nexec ${b.clang} "$@"\n`);
    chmodSync(wrapper, 0o755);
    b.thinLink();
    const d = delta(cache, () => buildAll(b, cache, [], wrapper));
    assert.deepEqual(d, { hits: 0, misses: b.modules.length, errors: 0, uncacheable: 0 });
    assertSameObjects(objects(b), directObjects(b, [], wrapper));
    const again = delta(cache, () => buildAll(b, cache, [], wrapper));
    assert.equal(again.hits, b.modules.length);
  });

  test('touch without a content change hits', () => {
    b.thinLink();
    buildAll(b, cache);
    const future = new Date(Date.now() + 5000);
    for (const m of b.modules) {
      utimesSync(join(b.dir, `${m}.o`), future, future);
      utimesSync(join(b.dir, `${m}.o.thinlto.bc`), future, future);
    }
    const d = delta(cache, () => buildAll(b, cache));
    assert.deepEqual(d, { hits: b.modules.length, misses: 0, errors: 0, uncacheable: 0 });
  });

  test('the same tree copied to another directory hits', () => {
    const copy = b.copyTo(join(tempDir('copy'), 'elsewhere'));
    copy.thinLink();
    const d = delta(cache, () => buildAll(copy, cache));
    assert.deepEqual(d, { hits: b.modules.length, misses: 0, errors: 0, uncacheable: 0 });
    assertSameObjects(objects(copy), directObjects(copy));
  });

  test('a backend warning is replayed byte for byte on a hit', () => {
    b.thinLink();
    const direct = b.backend('frame', { out: 'frame.direct.o' });
    assert.match(direct.stderr, /stack frame size \(\d+\) exceeds limit \(1024\) in function 'frame_work'/);
    rmSync(join(b.dir, 'frame.thinlto-native.o'), { force: true });
    const hit = delta(cache, () => {
      const r = b.backend('frame', { wrapper: [CLIENT], env: cache.env });
      assert.equal(r.status, 0);
      assert.equal(r.stderr, direct.stderr);
    });
    assert.equal(hit.hits, 1);
    // and on a miss (the store emptied first)
    assert.equal(cache.cli(['clear']).status, 0);
    const miss = delta(cache, () => {
      const r = b.backend('frame', { wrapper: [CLIENT], env: cache.env, out: 'frame.other.o' });
      assert.equal(r.stderr, direct.stderr);
    });
    assert.equal(miss.misses, 1);
  });

  test("a failing backend job gives clang's exit code and stderr and stores nothing", () => {
    const extra = ['-march=no-such-cpu'];
    const direct = b.backend('lonely', { extra, out: 'lonely.direct.o' });
    assert.notEqual(direct.status, 0);
    const entries = cache.stats().entries;
    for (let i = 0; i < 2; i++) {
      const r = b.backend('lonely', { wrapper: [CLIENT], extra, env: cache.env });
      assert.equal(r.status, direct.status);
      assert.equal(r.stderr, direct.stderr);
    }
    const s = cache.stats();
    assert.equal(s.entries, entries);
  });

  test('another output name, with the index copied under another name, hits and equals direct clang', () => {
    b.thinLink();
    buildAll(b, cache);
    const d = delta(cache, () => {
      for (const m of b.modules) {
        copyFileSync(join(b.dir, `${m}.o.thinlto.bc`), join(b.dir, `${m}.1.777.native.o.thinlto.bc`));
        const args = b.backendArgs(m, [], `${m}.1.777.native.o`).map((a) => (a === `-fthinlto-index=${m}.o.thinlto.bc` ? `-fthinlto-index=${m}.1.777.native.o.thinlto.bc` : a));
        assert.ok(args.includes(`-fthinlto-index=${m}.1.777.native.o.thinlto.bc`), args.join(' '));
        const r = spawnSync(CLIENT, [b.clang, ...args], { cwd: b.dir, env: cache.env, encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
      }
    });
    assert.deepEqual(d, { hits: b.modules.length, misses: 0, errors: 0, uncacheable: 0 });
    assertSameObjects(
      objects(b, (m) => `${m}.1.777.native.o`),
      directObjects(b),
    );
  });

  test('with -gsplit-dwarf another output name misses (the object records the .dwo name)', () => {
    const extra = ['-g', '-gsplit-dwarf'];
    b.thinLink();
    buildAll(b, cache, extra);
    const d = delta(cache, () => {
      for (const m of b.modules) {
        const r = b.backend(m, { wrapper: [CLIENT], extra, env: cache.env, out: `${m}.renamed.o` });
        assert.equal(r.status, 0, r.stderr);
      }
    });
    assert.deepEqual(d, { hits: 0, misses: b.modules.length, errors: 0, uncacheable: 0 });
    for (const m of b.modules) {
      const served = readFileSync(join(b.dir, `${m}.renamed.o`));
      const r = b.backend(m, { extra, out: `${m}.renamed.o` });
      assert.equal(r.status, 0, r.stderr);
      assert.ok(served.equals(readFileSync(join(b.dir, `${m}.renamed.o`))), `${m}: served object differs from direct clang`);
    }
  });

  /**
   * Builds with `extra` (under which clang writes a .dwo beside each object), removes every output,
   * and builds again after a new thin link; each served object and .dwo must equal direct clang's.
   * Returns both builds' counts.
   */
  function splitDwarfRebuild(extra: string[]): { cold: ReturnType<typeof delta>; warm: ReturnType<typeof delta> } {
    b.thinLink();
    const cold = delta(cache, () => buildAll(b, cache, extra));
    const dwo = (m: string) => join(b.dir, `${m}.thinlto-native.dwo`);
    for (const m of b.modules) {
      rmSync(dwo(m));
      rmSync(join(b.dir, `${m}.thinlto-native.o`));
    }
    b.thinLink();
    const warm = delta(cache, () => buildAll(b, cache, extra));
    const served = new Map(b.modules.map((m) => [m, { o: readFileSync(join(b.dir, `${m}.thinlto-native.o`)), dwo: readFileSync(dwo(m)) }]));
    for (const m of b.modules) {
      const r = b.backend(m, { extra, out: `${m}.thinlto-native.o` });
      assert.equal(r.status, 0, r.stderr);
      assert.ok(served.get(m)!.o.equals(readFileSync(join(b.dir, `${m}.thinlto-native.o`))), `${m}.o`);
      assert.ok(served.get(m)!.dwo.equals(readFileSync(dwo(m))), `${m}.dwo`);
    }
    return { cold, warm };
  }

  test('-gsplit-dwarf restores both the object and the .dwo', () => {
    assert.equal(splitDwarfRebuild(['-g', '-gsplit-dwarf']).warm.hits, b.modules.length);
  });

  test('options from a clang config file count as the command line: its -gsplit-dwarf output is restored, an edit to it misses', () => {
    const cfg = join(tempDir('cfg'), 'split.cfg');
    writeFileSync(cfg, '# debug info beside the object\n-g -gsplit-dwarf\n');
    const extra = [`--config=${cfg}`];
    const { cold, warm } = splitDwarfRebuild(extra);
    assert.equal(cold.uncacheable, 0);
    assert.deepEqual(warm, { hits: b.modules.length, misses: 0, errors: 0, uncacheable: 0 });
    // The config file edited in place: every job compiles again (the fast path checks it too).
    writeFileSync(cfg, '-g\n');
    b.thinLink();
    const edited = delta(cache, () => buildAll(b, cache, extra));
    assert.deepEqual(edited, { hits: 0, misses: b.modules.length, errors: 0, uncacheable: 0 });
  });

  test('a corrupted blob is detected, recompiled and counted as an error', () => {
    b.thinLink();
    buildAll(b, cache, ['-O3']);
    // Restart, so the entries are read from disk rather than served from the daemon's memory.
    cache.stop();
    const blobs = join(cache.dir, 'store', 'v1', 'blobs');
    let flipped = 0;
    for (const d of readdirSync(blobs)) {
      for (const f of readdirSync(join(blobs, d))) {
        const p = join(blobs, d, f);
        const bytes = readFileSync(p);
        if (!bytes.length) continue;
        const at = bytes.length >> 1;
        bytes[at] = bytes[at]! ^ 0xff;
        writeFileSync(p, bytes);
        flipped++;
      }
    }
    assert.ok(flipped > 0);
    cache.start();
    b.thinLink();
    const d = delta(cache, () => buildAll(b, cache, ['-O3']));
    assert.ok(d.errors >= 1, `errors counted: ${JSON.stringify(d)}`);
    // Entries sharing a deduplicated blob may hit once a recompile has rewritten that blob.
    assert.ok(d.misses >= 1);
    assert.equal(d.misses + d.hits, b.modules.length);
    assertSameObjects(objects(b), directObjects(b, ['-O3']));
    assert.ok((cache.stats().errors_by_kind.corrupt_entry ?? 0) >= 1);
  });

  test('two clients with the same job at once compile once', async () => {
    const log = join(b.dir, 'compiles.log');
    const slow = join(b.dir, 'slow-clang.sh');
    writeFileSync(slow, `#!/bin/sh\necho run >> ${log}\nsleep 0.5\nexec ${b.clang} "$@"\n`);
    chmodSync(slow, 0o755);
    b.thinLink();
    const args = b.backendArgs('table');
    const before = cache.stats();
    const rs = await Promise.all([0, 1].map(() => runAsync(CLIENT, [slow, ...args], { cwd: b.dir, env: cache.env })));
    for (const r of rs) assert.equal(r.status, 0, r.stderr);
    const compiles = readFileSync(log, 'utf8').trim().split('\n').length;
    const after = cache.stats();
    assert.equal(after.misses - before.misses, 1);
    assert.equal(after.hits - before.hits, 1);
    assert.equal(compiles, 1, 'the compiler ran once for two identical concurrent jobs');
    assert.ok(readFileSync(join(b.dir, 'table.thinlto-native.o')).equals(directObjects(b, [], slow).get('table')!));
  });

  test("a job waiting on an identical compile gets keepalives ('W'): it outlasts the client's silence timeout", async () => {
    const log = join(b.dir, 'compiles-w.log');
    const slow = join(b.dir, 'slower-clang.sh');
    writeFileSync(slow, `#!/bin/sh\necho run >> ${log}\nsleep 4\nexec ${b.clang} "$@"\n`);
    chmodSync(slow, 0o755);
    b.thinLink();
    const args = b.backendArgs('lonely');
    const env = { ...cache.env, LTOCACHE_SILENCE_TIMEOUT_MS: '2500' };
    const before = cache.stats();
    const first = runAsync(CLIENT, [slow, ...args], { cwd: b.dir, env });
    await new Promise((r) => setTimeout(r, 300));
    const second = runAsync(CLIENT, [slow, ...args], { cwd: b.dir, env });
    for (const r of await Promise.all([first, second])) assert.equal(r.status, 0, r.stderr);
    const after = cache.stats();
    assert.equal(readFileSync(log, 'utf8').trim().split('\n').length, 1, 'the waiting client did not give up and compile');
    assert.equal(after.hits - before.hits, 1);
  });

  test('an input that changes while clang runs: the result is served but not stored (no stale hit later)', () => {
    const list = join(b.dir, 'race.txt');
    const flag = ['-fbasic-block-sections=list=race.txt'];
    const mutating = join(b.dir, 'mutating-clang.sh');
    // Stands in for a file rewritten by another process after the key was computed.
    writeFileSync(mutating, `#!/bin/sh\nif [ -e mutate ]; then printf '!str_hash\\n!!0\\n' > race.txt; fi\nexec ${b.clang} "$@"\n`);
    chmodSync(mutating, 0o755);
    writeFileSync(list, '!mathx_sum_squares\n');
    writeFileSync(join(b.dir, 'mutate'), '');
    b.thinLink();
    const before = cache.stats();
    const r = b.backend('strx', { wrapper: [CLIENT], extra: flag, env: cache.env, compiler: mutating });
    assert.equal(r.status, 0, r.stderr);
    const after1 = cache.stats();
    assert.equal(after1.misses - before.misses, 1);
    assert.equal((after1.errors_by_kind.inputs_changed_during_compile ?? 0) - (before.errors_by_kind.inputs_changed_during_compile ?? 0), 1);
    assert.equal(after1.entries, before.entries, 'nothing stored under the old key');
    rmSync(join(b.dir, 'mutate'));
    writeFileSync(list, '!mathx_sum_squares\n');
    const r2 = b.backend('strx', { wrapper: [CLIENT], extra: flag, env: cache.env, compiler: mutating });
    assert.equal(r2.status, 0, r2.stderr);
    assert.equal(cache.stats().misses - after1.misses, 1, 'the original content is compiled, not served from the raced run');
    const direct = b.backend('strx', { extra: flag, out: 'strx.direct.o', compiler: mutating });
    assert.equal(direct.status, 0);
    assert.ok(readFileSync(join(b.dir, 'strx.thinlto-native.o')).equals(readFileSync(join(b.dir, 'strx.direct.o'))));
  });

  test('an index rewritten in place while clang runs, then given its bytes back (lld truncates, then writes): never stored', async () => {
    const rewriting = join(b.dir, 'rewriting-clang.sh');
    // Plays a second thin link over the same objects: clang reads the index while it is empty
    // (clang 19 then compiles without imports, silently, exit 0), and the link writes the same
    // bytes again before the compile ends, so the content checks afterwards all pass.
    writeFileSync(
      rewriting,
      `#!/bin/sh
if [ -e truncate ]; then cp main.o.thinlto.bc idx.save; : > main.o.thinlto.bc; ${b.clang} "$@"; rc=$?; cat idx.save > main.o.thinlto.bc; exit $rc; fi
exec ${b.clang} "$@"
`,
    );
    chmodSync(rewriting, 0o755);
    b.thinLink();
    const direct = () => {
      const d = b.backend('main', { out: 'main.direct.o', compiler: rewriting });
      assert.equal(d.status, 0);
      return readFileSync(join(b.dir, 'main.direct.o'));
    };
    const good = direct();
    // Both ways a miss is stored: by the daemon (the index just written, so no memo and no 'S'),
    // and by the client after 'S' (the index settled past the racy window when keyed).
    for (const settle of [0, 2100]) {
      assert.equal(cache.cli(['clear']).status, 0);
      b.thinLink();
      if (settle) await new Promise((r) => setTimeout(r, settle));
      writeFileSync(join(b.dir, 'truncate'), '');
      const before = cache.stats();
      const r = b.backend('main', { wrapper: [CLIENT], env: cache.env, compiler: rewriting });
      rmSync(join(b.dir, 'truncate'));
      assert.equal(r.status, 0, r.stderr);
      assert.ok(!readFileSync(join(b.dir, 'main.thinlto-native.o')).equals(good), `settle ${settle}: the raced run compiled without imports`);
      const after = cache.stats();
      assert.equal((after.errors_by_kind.inputs_changed_during_compile ?? 0) - (before.errors_by_kind.inputs_changed_during_compile ?? 0), 1, `settle ${settle}`);
      assert.equal(after.entries, before.entries, `settle ${settle}: nothing stored`);
      const again = b.backend('main', { wrapper: [CLIENT], env: cache.env, compiler: rewriting });
      assert.equal(again.status, 0, again.stderr);
      assert.ok(readFileSync(join(b.dir, 'main.thinlto-native.o')).equals(good), `settle ${settle}: compiled again, not served from the raced run`);
    }
    assert.ok(direct().equals(good));
  });

  test('paths with `..` after a symbolic link: the key and the memo look at the files clang opens, not at the lexically normal ones', () => {
    // The real tree is elsewhere; the build directory reaches it as `sub/..` (sub -> real/inner)
    // and holds stale copies of the objects at the lexically normal paths.
    const real = ThinBuild.fromFixture(FIXTURE, join(tempDir('dotdot-real'), 'src'));
    real.frontEnd();
    mkdirSync(join(real.dir, 'inner'));
    const view = tempDir('dotdot-view');
    symlinkSync(join(real.dir, 'inner'), join(view, 'sub'));
    for (const m of real.modules) copyFileSync(join(real.dir, `${m}.o`), join(view, `${m}.o`));
    const thinLink = () => {
      const r = spawnSync(real.lld, ['-r', '--thinlto-index-only=list', ...real.modules.map((m) => `sub/../${m}.o`), '-o', 'tl.o'], { cwd: view, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
    };
    const args = (out: string) => [...real.cflags, '-x', 'ir', '-fno-lto', '-fthinlto-index=sub/../main.o.thinlto.bc', '-c', '-o', out, 'sub/../main.o'];
    const direct = () => {
      const r = spawnSync(real.clang, args('direct.o'), { cwd: view, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      return readFileSync(join(view, 'direct.o'));
    };
    const viaCache = () => {
      const r = spawnSync(CLIENT, [real.clang, ...args('out.o')], { cwd: view, env: cache.env, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      return readFileSync(join(view, 'out.o'));
    };
    thinLink();
    assert.ok(viaCache().equals(direct()));
    const before = cache.stats();
    assert.ok(viaCache().equals(direct()));
    assert.equal(cache.stats().hits - before.hits, 1, 'cacheable, and served');
    // A module main imports from changes in the real tree only.
    writeFileSync(join(real.dir, 'mathx.c'), readFileSync(join(real.dir, 'mathx.c'), 'utf8').replace('return x * x;', 'return x * x + 7;'));
    real.frontEnd(['mathx']);
    thinLink();
    const now = direct();
    const served = viaCache();
    assert.ok(served.equals(now), 'the object clang makes now, not the stored one');
  });

  test('response files and outputs the daemon cannot read as clang does (a named pipe, /dev/fd/N): clang runs as is, nothing hangs', async () => {
    b.thinLink();
    const args = b.backendArgs('main');
    const fifo = join(b.dir, 'args.fifo');
    const withDeadline = <T>(p: Promise<T>, what: string) =>
      Promise.race([p, new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`${what}: no answer in 30 s`)), 30_000))]);
    const direct = b.backend('main', { out: 'main.direct.o' });
    assert.equal(direct.status, 0);
    const good = readFileSync(join(b.dir, 'main.direct.o'));
    // A named pipe as a response file: its data is clang's to read, once.
    spawnSync('mkfifo', [fifo]);
    const writer = spawn('sh', ['-c', `printf '%s\n' "$*" > ${fifo}`, 'sh', ...args.slice(0, -3), '-o', 'via-fifo.o', 'main.o'], { cwd: b.dir });
    const r = await withDeadline(runAsync(CLIENT, [b.clang, `@${fifo}`], { cwd: b.dir, env: cache.env }), 'a named pipe as a response file');
    writer.kill();
    assert.equal(r.status, 0, r.stderr);
    assert.ok(readFileSync(join(b.dir, 'via-fifo.o')).equals(good));
    // /dev/fd/N: the client's descriptor, which the daemon's own fd N is not.
    writeFileSync(join(b.dir, 'args.rsp'), [...args.slice(0, -3), '-o', 'via-fd.o', 'main.o'].join(' '));
    const viaFd = await withDeadline(runAsync('sh', ['-c', `exec ${CLIENT} ${b.clang} @/dev/fd/9 9< args.rsp`], { cwd: b.dir, env: cache.env }), '@/dev/fd/9');
    assert.equal(viaFd.status, 0, viaFd.stderr);
    assert.ok(readFileSync(join(b.dir, 'via-fd.o')).equals(good));
    // A named pipe as the output: clang writes into it; the daemon never opens it.
    const outFifo = join(b.dir, 'out.fifo');
    spawnSync('mkfifo', [outFifo]);
    const reader = runAsync('sh', ['-c', `cat ${outFifo} > from-fifo.o`], { cwd: b.dir });
    const o = await withDeadline(runAsync(CLIENT, [b.clang, ...args.slice(0, -3), '-o', outFifo, 'main.o'], { cwd: b.dir, env: cache.env }), 'a named pipe as the output');
    assert.equal(o.status, 0, o.stderr);
    await withDeadline(reader, 'the pipe reader');
    assert.ok(readFileSync(join(b.dir, 'from-fifo.o')).equals(good));
    const stats = await withDeadline(runAsync(process.execPath, [CLI, 'stats', '--json'], { cwd: b.dir, env: cache.env }), 'stats after a pipe output');
    assert.equal(stats.status, 0, 'the daemon still answers');
  });

  test('the cache directory under another spelling (a symbolic link, `//`) reaches the same daemon at once', () => {
    b.thinLink();
    const first = b.backend('strx', { wrapper: [CLIENT], env: cache.env });
    assert.equal(first.status, 0, first.stderr);
    const pid = cache.daemonPid();
    const link = join(tempDir('cache-link'), 'to-cache');
    symlinkSync(cache.dir, link);
    const slashes = cache.dir.replace(/\/([^/]*)$/, '//$1');
    for (const spelled of [link, slashes, `${cache.dir}/.`]) {
      const env = { ...cache.env, LTOCACHE_DIR: spelled, LTOCACHE_MEMO: '0' };
      const before = cache.stats();
      const t0 = Date.now();
      const r = b.backend('strx', { wrapper: [CLIENT], env });
      assert.equal(r.status, 0, r.stderr);
      assert.ok(Date.now() - t0 < 2500, `${spelled}: answered without waiting out a daemon start (${Date.now() - t0} ms)`);
      assert.equal(cache.stats().hits - before.hits, 1, `${spelled}: a hit from the one daemon`);
      assert.equal(cache.daemonPid(), pid);
      const viaCli = spawnSync(process.execPath, [CLI, 'stats', '--json'], { env, encoding: 'utf8' });
      assert.equal(viaCli.status, 0, viaCli.stderr);
      assert.equal((JSON.parse(viaCli.stdout) as { hits: number }).hits, cache.stats().hits, `${spelled}: the CLI reaches it too`);
    }
  });

  test('an environment variable that is not UTF-8: cached as usual unless the key reads it; never a refused request', () => {
    b.thinLink();
    /** The job with `assign` (shell syntax, raw bytes through printf) in its environment. */
    const job = (assign: string) => {
      const args = b
        .backendArgs('strx')
        .map((a) => `'${a}'`)
        .join(' ');
      const r = spawnSync('sh', ['-c', `export ${assign}; exec ${CLIENT} ${b.clang} ${args}`], { cwd: b.dir, env: cache.env, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      return readFileSync(join(b.dir, 'strx.thinlto-native.o'));
    };
    const direct = b.backend('strx', { out: 'strx.direct.o' });
    assert.equal(direct.status, 0);
    const good = readFileSync(join(b.dir, 'strx.direct.o'));
    const before = cache.stats();
    // Nothing reads it: the memo serves the second run (the first may be one too).
    assert.ok(job(`LEGACY_LATIN1=$(printf 'caf\\351')`).equals(good));
    const mid = cache.stats();
    assert.ok(job(`LEGACY_LATIN1=$(printf 'caf\\351')`).equals(good));
    const a = cache.stats();
    assert.equal(a.errors_by_kind.protocol ?? 0, before.errors_by_kind.protocol ?? 0, 'not a refused request');
    assert.equal(a.memo_hits - mid.memo_hits, 1);
    // A variable whose being set makes a job uncacheable, set to bytes that are not UTF-8.
    job(`CCC_OVERRIDE_OPTIONS=$(printf '\\351')`);
    const c = cache.stats();
    assert.equal((c.uncacheable_by_reason.environment ?? 0) - (a.uncacheable_by_reason.environment ?? 0), 1);
    // A keyed variable, or one the loader reads (a library directory named in Latin-1): the driver
    // runs the key makes could not carry it, so the job is uncacheable, never keyed without it.
    for (const assign of [`SDKROOT=$(printf '/sdk\\351')`, `LD_LIBRARY_PATH=$(printf '/opt/lib\\351')`]) {
      const before = cache.stats();
      assert.ok(job(assign).equals(good), assign);
      const after = cache.stats();
      assert.equal((after.uncacheable_by_reason.environment ?? 0) - (before.uncacheable_by_reason.environment ?? 0), 1, assign);
      assert.equal(after.hits, before.hits, assign);
    }
  });

  test('a client that goes away (Ctrl-C) gets its compiler killed', async (t) => {
    const pidFile = join(b.dir, 'slow.pid');
    const slow = join(b.dir, 'very-slow-clang.sh');
    // The compiler is the shell (its pid is what must die); its sleep, an orphan once the shell is
    // killed, is stopped when the test ends so that it does not outlive the run.
    const sleepPidFile = join(b.dir, 'slow-sleep.pid');
    t.after(() => {
      try {
        process.kill(Number(readFileSync(sleepPidFile, 'utf8')), 'SIGKILL');
      } catch {
        // never started, or gone
      }
    });
    writeFileSync(slow, `#!/bin/sh\necho $$ > ${pidFile}\nsleep 60 &\necho $! > ${sleepPidFile}\nwait $!\nexec ${b.clang} "$@"\n`);
    chmodSync(slow, 0o755);
    const child = spawn(CLIENT, [slow, ...b.backendArgs('strx', ['-O1'], 'strx.interrupted.o')], { cwd: b.dir, env: cache.env, stdio: 'ignore' });
    const deadline = Date.now() + 10_000;
    while (!existsSync(pidFile) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const pid = Number(readFileSync(pidFile, 'utf8'));
    assert.ok(pid > 0);
    child.kill('SIGINT');
    const alive = () => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    const until = Date.now() + 5000;
    while (alive() && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    assert.equal(alive(), false, 'the compiler outlived its client');
    assert.equal(existsSync(join(b.dir, 'strx.interrupted.o')), false);
  });

  test('the daemon killed with SIGKILL mid-build: the build succeeds, the restarted daemon serves a consistent store', async () => {
    b.thinLink();
    const outs = (i: number) => (m: string) => `${m}.par${i}.o`;
    const jobs: Promise<{ status: number; stderr: string }>[] = [];
    for (let i = 0; i < 4; i++) {
      for (const m of b.modules) {
        jobs.push(runAsync(CLIENT, [b.clang, ...b.backendArgs(m, ['-O1'], outs(i)(m))], { cwd: b.dir, env: cache.env }));
      }
    }
    await new Promise((r) => setTimeout(r, 150));
    const pid = cache.daemonPid();
    assert.ok(pid);
    process.kill(pid, 'SIGKILL');
    const results = await Promise.all(jobs);
    for (const r of results) assert.equal(r.status, 0, r.stderr);
    const direct = directObjects(b, ['-O1']);
    for (let i = 0; i < 4; i++) assertSameObjects(objects(b, outs(i)), direct);
    // The next job starts a new daemon; what it serves must be right.
    b.thinLink();
    for (let i = 0; i < 4; i++) {
      for (const m of b.modules) {
        const r = b.backend(m, { wrapper: [CLIENT], extra: ['-O1'], out: outs(i)(m), env: cache.env });
        assert.equal(r.status, 0, r.stderr);
      }
      assertSameObjects(objects(b, outs(i)), direct);
    }
    const s = cache.stats();
    assert.ok(s.daemon_running);
  });
});

/** The fixture built up to its thin link in a new tree; runs its first backend job through the client for `cache`, asserting it succeeds. */
function firstJob(cache: CacheEnv, prefix: string): () => void {
  const b = ThinBuild.fromFixture(FIXTURE, join(tempDir(`${prefix}-tree`), 'src'));
  b.frontEnd();
  b.thinLink();
  const m = b.modules[0]!;
  return () => {
    const r = b.backend(m, { wrapper: [CLIENT], env: cache.env });
    assert.equal(r.status, 0, r.stderr);
  };
}

test('a client with no daemon running starts one through the start handshake and is served by it', () => {
  const cache = new CacheEnv('handshake');
  try {
    firstJob(cache, 'handshake')();
    const s = cache.stats();
    assert.ok(s.daemon_running);
    assert.equal(s.misses, 1, 'the first job went through the daemon it started');
    assert.equal(existsSync(join('/tmp', `ltocache-${process.getuid!()}`)), true);
  } finally {
    cache.destroy();
  }
});

test("a daemon whose cache directory is removed stops; the next job's daemon makes the directory again and stores", async () => {
  const cache = new CacheEnv('dir-removed');
  try {
    const job = firstJob(cache, 'dir-removed');
    job();
    const pid = cache.daemonPid();
    assert.ok(pid);
    await removeWhileWritten(cache.dir);
    // Without this, every later job would miss into a store no path reaches, for as long as
    // builds kept the daemon busy.
    for (let i = 0; i < 100 && processAlive(pid); i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(processAlive(pid), false, 'the daemon stopped');
    job();
    assert.ok(existsSync(join(cache.dir, 'store')), 'the new daemon made the directory again');
    assert.notEqual(cache.daemonPid(), pid);
    job();
    const s = cache.stats();
    assert.equal(s.misses, 1, 'the job after the removal stored its result');
    assert.equal(s.hits, 1);
  } finally {
    cache.destroy();
  }
});

test('`daemon run` ends with status 75 when its cache directory is replaced (a service manager restarts it), 0 when told to stop', async () => {
  const runUntilExit = async (act: (dir: string) => void): Promise<number | null> => {
    const parent = tempDir('daemon-run-status');
    const dir = join(parent, 'cache');
    const env = { ...process.env, LTOCACHE_DIR: dir, LTOCACHE_IDLE_TIMEOUT: '0' };
    const child = spawn(process.execPath, [CLI, 'daemon', 'run'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    // It says it is running on stderr once it listens.
    await new Promise<void>((r) => child.stderr.on('data', (d: Buffer) => d.toString().includes('daemon running') && r()));
    act(dir);
    const late = new Promise<'late'>((r) => setTimeout(() => r('late'), 10_000).unref());
    const code = await Promise.race([exited, late]);
    if (code === 'late') child.kill('SIGKILL');
    rmSync(parent, { recursive: true, force: true });
    return code === 'late' ? -1 : code;
  };
  assert.equal(await runUntilExit((dir) => renameSync(dir, `${dir}.old`)), 75);
  assert.equal(await runUntilExit((dir) => spawnSync(process.execPath, [CLI, 'daemon', 'stop'], { env: { ...process.env, LTOCACHE_DIR: dir } })), 0);
  // A second `daemon run` for a directory a daemon serves (one a job started, say) ends with a
  // status of its own, which a service unit does not restart (docs/systemd/ltocache.service).
  let second: ReturnType<typeof spawnSync> | undefined;
  assert.equal(
    await runUntilExit((dir) => {
      second = spawnSync(process.execPath, [CLI, 'daemon', 'run'], { env: { ...process.env, LTOCACHE_DIR: dir, LTOCACHE_IDLE_TIMEOUT: '0' }, encoding: 'utf8' });
      spawnSync(process.execPath, [CLI, 'daemon', 'stop'], { env: { ...process.env, LTOCACHE_DIR: dir } });
    }),
    0,
  );
  assert.equal(second?.status, EXIT_DAEMON_ALREADY_RUNNING, String(second?.stderr));
  assert.match(String(second?.stderr), /already running/);
  const unit = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'docs', 'systemd', 'ltocache.service'), 'utf8');
  assert.match(unit, new RegExp(`^RestartPreventExitStatus=.*\\b${EXIT_DAEMON_ALREADY_RUNNING}\\b`, 'm'));
});
