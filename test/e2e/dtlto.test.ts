import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import type { BuildSummary, JobExplanation } from '../../src/explain/explainJobs.js';
import { DistFile, DTLTO_LIMITS } from '../../src/protocol/dtlto.js';
import { CLANG22, DtltoTree, LLVM_AR22, run, writeSerialDistributor } from '../support/dtlto.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../support/env.js';
import { ServerProcess, TOKENS } from '../support/server.js';

/**
 * LLVM DTLTO (lld 22's --thinlto-distributor) through `bin/ltocache distribute`: the real native
 * client, daemon, clang-22 and lld-22 on a five-module program with cross-module inlining.
 */

type Delta = { hits: number; misses: number; errors: number; uncacheable: number };

function delta(cache: CacheEnv, fn: () => void): Delta {
  const a = cache.stats();
  fn();
  const b = cache.stats();
  return { hits: b.hits - a.hits, misses: b.misses - a.misses, errors: b.errors - a.errors, uncacheable: b.uncacheable - a.uncacheable };
}

function ok(r: { status: number; stderr: string }, what: string): void {
  assert.equal(r.status, 0, `${what}: ${r.stderr}`);
}

describe('DTLTO through ltocache (lld 22)', () => {
  let cache: CacheEnv;
  let t: DtltoTree;
  let serial: string;
  let expected: string;
  const lldForm = (env: NodeJS.ProcessEnv, o: { out?: string; objects?: string[]; extra?: string[] } = {}) => t.linkLld(CLIENT, ['distribute'], { env, ...o });
  /** A serial link to `prog.serial`, saving each job's index under `saveDir`. */
  const serialLink = (saveDir: string) => {
    mkdirSync(saveDir, { recursive: true });
    ok(t.linkLld(serial, [], { out: 'prog.serial', env: { ...process.env, DTLTO_SAVE_INDEX_DIR: saveDir } }), 'serial link');
    return readFileSync(join(t.dir, 'prog.serial'));
  };

  before(() => {
    cache = new CacheEnv('dtlto', { LTOCACHE_BUILD_GAP_MS: '1500' });
    cache.start();
    t = new DtltoTree(join(tempDir('dtlto-tree'), 'proj'));
    serial = writeSerialDistributor(join(tempDir('dtlto-serial'), 'serial-distributor'));
    t.frontEnd();
    expected = t.oracle();
    assert.match(expected, /^sum=\d+ hash=\d+ table=\d+ lonely=16\n$/);
  });
  after(() => cache.destroy());

  test('cold link: every job misses; the program runs; byte-identical to a plain serial distributor', () => {
    const d = delta(cache, () => ok(lldForm(cache.env), 'link'));
    assert.deepEqual(d, { hits: 0, misses: t.modules.length, errors: 0, uncacheable: 0 });
    assert.equal(run(join(t.dir, 'prog'), [], t.dir).stdout, expected);
    const cached = readFileSync(join(t.dir, 'prog'));
    assert.ok(serialLink(join(t.dir, 'idx0')).equals(cached), 'executable differs from the serial distributor link');
    // lld removed its per-link files; nothing else was left beside the output.
    assert.deepEqual(
      readdirSync(t.dir).filter((f) => /\.native\.o|dist-file|ltocache-/.test(f)),
      [],
    );
  });

  test('relink: every job hits, no compile; stats, explain --last-build, explain INPUT and trace cover the jobs', async () => {
    await sleep(1700);
    const d = delta(cache, () => ok(lldForm(cache.env), 'relink'));
    assert.deepEqual(d, { hits: t.modules.length, misses: 0, errors: 0, uncacheable: 0 });
    assert.ok(readFileSync(join(t.dir, 'prog')).equals(readFileSync(join(t.dir, 'prog.serial'))));
    const last = cache.cli(['explain', '--last-build', '--json']);
    ok(last, 'explain --last-build');
    const s = JSON.parse(last.stdout) as BuildSummary;
    assert.equal(s.jobs, t.modules.length);
    assert.equal(s.hits, t.modules.length);
    const e = cache.cli(['explain', join(t.dir, 'main.o'), '--json']);
    ok(e, 'explain main.o');
    assert.equal((JSON.parse(e.stdout) as JobExplanation).result, 'hit');
    const traceFile = join(t.dir, 'trace.json');
    const tr = cache.cli(['trace', '--last-build', '-o', traceFile]);
    ok(tr, 'trace');
    assert.match(tr.stdout, new RegExp(`wrote ${t.modules.length} jobs`));
    rmSync(traceFile);
    // The report counts the links as builds: the relink is the last bar, all hits.
    const reportFile = join(t.dir, 'report.html');
    ok(cache.cli(['report', '-o', reportFile]), 'report');
    const html = readFileSync(reportFile, 'utf8');
    rmSync(reportFile);
    assert.equal(/id="stat-hits" data-value="(\d+)"/.exec(html)?.[1], String(cache.stats().hits));
    const bars = [...html.matchAll(/class="build-bar[^"]*"[^>]*data-hits="(\d+)" data-misses="(\d+)"/g)].map((m) => [Number(m[1]), Number(m[2])]);
    assert.ok(bars.length >= 2, `${bars.length} builds in the report`);
    assert.deepEqual(bars.at(-1), [t.modules.length, 0]);
  });

  test("the warm relink is the daemon's alone: no Node process for the distributor (LTOCACHE_NODE=/nonexistent), byte-identical", () => {
    const env = { ...cache.env, LTOCACHE_NODE: '/nonexistent' };
    const d = delta(cache, () => ok(lldForm(env, { out: 'prog.native' }), 'relink without node'));
    assert.deepEqual(d, { hits: t.modules.length, misses: 0, errors: 0, uncacheable: 0 });
    assert.ok(readFileSync(join(t.dir, 'prog.native')).equals(readFileSync(join(t.dir, 'prog.serial'))));
    rmSync(join(t.dir, 'prog.native'));
  });

  test('a relink is served whole from the distribution memo while the daemon is stopped and cannot start; counted once it is back', () => {
    const s0 = cache.stats();
    assert.ok(s0.dist_memos_written >= 1, `a distribution memo was written: ${JSON.stringify(s0)}`);
    // With the fast path off, the daemon serves the relink (the memo stays unused).
    const viaDaemon = delta(cache, () => ok(lldForm({ ...cache.env, LTOCACHE_MEMO: '0' }), 'relink, fast path off'));
    assert.deepEqual(viaDaemon, { hits: t.modules.length, misses: 0, errors: 0, uncacheable: 0 });
    assert.equal(cache.stats().memo_hits, s0.memo_hits);
    cache.stop();
    const noDaemon = { ...cache.env, LTOCACHE_NODE: '/nonexistent/node', LTOCACHE_START_TIMEOUT_MS: '300' };
    rmSync(join(t.dir, 'prog'));
    ok(lldForm(noDaemon), 'relink with no daemon and none able to start');
    assert.ok(readFileSync(join(t.dir, 'prog')).equals(readFileSync(join(t.dir, 'prog.serial'))), 'executable differs from the serial link');
    assert.equal(run(join(t.dir, 'prog'), [], t.dir).stdout, expected);
    assert.equal(existsSync(join(cache.dir, 'daemon.pid')), false, 'no daemon was started');
    assert.deepEqual(
      readdirSync(t.dir).filter((f) => /\.native\.o|dist-file|ltocache-/.test(f)),
      [],
      'nothing left beside the output',
    );
    cache.start(); // drains the notices
    const s = cache.stats();
    assert.equal(s.memo_hits - s0.memo_hits, t.modules.length, `each job counted once: ${JSON.stringify(s)}`);
    assert.match(cache.cli(['stats']).stdout, new RegExp(`by the client alone +${s.memo_hits} \\(memos written: \\d+ jobs, ${s.dist_memos_written} DTLTO links\\)`));
    assert.equal(s.hits - s0.hits, 2 * t.modules.length);
    assert.equal(s.misses, s0.misses);
  });

  test('with no daemon and none able to start, the link still succeeds through the Node CLI, byte-identical', () => {
    const top = tempDir('dtlto-nodaemon');
    // A regular file where the store directory goes: every daemon start fails.
    writeFileSync(join(top, 'store'), '');
    const env = { ...process.env, LTOCACHE_DIR: top, LTOCACHE_START_TIMEOUT_MS: '10000' };
    ok(lldForm(env, { out: 'prog.nodaemon' }), 'link without a daemon');
    assert.ok(readFileSync(join(t.dir, 'prog.nodaemon')).equals(readFileSync(join(t.dir, 'prog.serial'))));
    assert.equal(existsSync(join(top, 'daemon.pid')), false);
    rmSync(join(t.dir, 'prog.nodaemon'));
  });

  test('with no daemon and no Node, the link fails at once with a clear message', () => {
    const top = tempDir('dtlto-nonode');
    const env = { ...process.env, LTOCACHE_DIR: top, LTOCACHE_NODE: '/nonexistent', LTOCACHE_START_TIMEOUT_MS: '10000' };
    const started = Date.now();
    const r = lldForm(env, { out: 'prog.nonode' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /ltocache: cannot run '\/nonexistent'/);
    assert.ok(Date.now() - started < 8000, `took ${Date.now() - started} ms`);
    assert.equal(existsSync(join(t.dir, 'prog.nonode')), false);
  });

  test('after a one-function edit only the jobs whose index or input changed compile; explain names the cause', async () => {
    const before = join(t.dir, 'idx0');
    const src = join(t.dir, 'mathx.c');
    writeFileSync(src, readFileSync(src, 'utf8').replace('return x * x;', 'return x * x + 1;'));
    const inputsBefore = new Map(t.modules.map((m) => [m, readFileSync(join(t.dir, `${m}.o`))]));
    t.frontEnd(['mathx']);
    const expectedAfter = t.oracle();
    assert.notEqual(expectedAfter, expected);
    const serialBytes = serialLink(join(t.dir, 'idx1'));
    const changed = t.modules.filter(
      (m) =>
        !readFileSync(join(before, `${m}.o.thinlto.bc`)).equals(readFileSync(join(t.dir, 'idx1', `${m}.o.thinlto.bc`))) ||
        !inputsBefore.get(m)!.equals(readFileSync(join(t.dir, `${m}.o`))),
    );
    assert.ok(changed.includes('mathx') && changed.includes('main') && changed.includes('table'), `changed: ${changed}`);
    assert.ok(!changed.includes('hashx') && !changed.includes('lonely'), `changed: ${changed}`);
    await sleep(1700);
    const d = delta(cache, () => ok(lldForm(cache.env), 'link after edit'));
    assert.deepEqual(d, { hits: t.modules.length - changed.length, misses: changed.length, errors: 0, uncacheable: 0 });
    assert.ok(readFileSync(join(t.dir, 'prog')).equals(serialBytes), 'executable differs from the serial distributor link');
    assert.equal(run(join(t.dir, 'prog'), [], t.dir).stdout, expectedAfter);
    const e = JSON.parse(cache.cli(['explain', join(t.dir, 'table.o'), '--json']).stdout) as JobExplanation;
    assert.equal(e.result, 'miss');
    assert.ok(e.causes.length > 0 && !e.causes.some((c) => c.kind === 'first-build'), JSON.stringify(e.causes));
    expected = expectedAfter;
  });

  test('kbuild-style jobs on clang 19 share the daemon with DTLTO on clang 22', () => {
    const k = ThinBuild.fromFixture(FIXTURE, join(tempDir('dtlto-kbuild'), 'src'));
    k.frontEnd();
    k.thinLink();
    const run19 = () => {
      for (const m of k.modules) ok(k.backend(m, { wrapper: [CLIENT], env: cache.env }), `clang-19 backend ${m}`);
    };
    assert.deepEqual(delta(cache, run19), { hits: 0, misses: k.modules.length, errors: 0, uncacheable: 0 });
    k.thinLink();
    assert.deepEqual(delta(cache, run19), { hits: k.modules.length, misses: 0, errors: 0, uncacheable: 0 });
    assert.deepEqual(
      delta(cache, () => ok(lldForm(cache.env), 'DTLTO relink')),
      { hits: t.modules.length, misses: 0, errors: 0, uncacheable: 0 },
    );
  });

  test('the clang driver form (-fthinlto-distributor= -Xthinlto-distributor=distribute): misses, then hits, identical to serial', () => {
    const cold = delta(cache, () => ok(t.linkDriver(CLIENT, ['distribute'], { env: cache.env, out: 'prog.driver' }), 'driver link'));
    assert.equal(cold.misses + cold.hits, t.modules.length);
    assert.equal(cold.errors + cold.uncacheable, 0);
    const warm = delta(cache, () => ok(t.linkDriver(CLIENT, ['distribute'], { env: cache.env, out: 'prog.driver' }), 'driver relink'));
    assert.deepEqual(warm, { hits: t.modules.length, misses: 0, errors: 0, uncacheable: 0 });
    const mine = readFileSync(join(t.dir, 'prog.driver'));
    ok(t.linkDriver(serial, [], { out: 'prog.driver' }), 'serial driver link');
    assert.ok(readFileSync(join(t.dir, 'prog.driver')).equals(mine));
    assert.equal(run(join(t.dir, 'prog.driver'), [], t.dir).stdout, expected);
  });

  test('an input given by absolute path in another tree works', () => {
    const lib = join(tempDir('dtlto-lib'), 'lib');
    mkdirSync(lib);
    copyFileSync(join(t.dir, 'lonely.o'), join(lib, 'lonely.o'));
    const objects = [...t.modules.filter((m) => m !== 'lonely').map((m) => `${m}.o`), join(lib, 'lonely.o')];
    ok(lldForm(cache.env, { objects, out: 'prog.abs' }), 'link with an absolute input');
    assert.equal(run(join(t.dir, 'prog.abs'), [], t.dir).stdout, expected);
    const mine = readFileSync(join(t.dir, 'prog.abs'));
    ok(t.linkLld(serial, [], { objects, out: 'prog.abs' }), 'serial');
    assert.ok(readFileSync(join(t.dir, 'prog.abs')).equals(mine));
  });

  test('-o lnk/../prog with lnk a symbolic link to a directory elsewhere: the files are where the kernel opens them, as for a serial link; the relink hits (daemon, distribution memo, Node CLI)', async () => {
    const far = join(tempDir('dtlto-far'), 'far');
    mkdirSync(join(far, 'inner'), { recursive: true });
    symlinkSync(join(far, 'inner'), join(t.dir, 'lnk'));
    const out = 'lnk/../prog.far';
    const leftovers = () => readdirSync(far).filter((f) => /\.native\.o|dist-file|ltocache-/.test(f));
    try {
      const memos0 = cache.stats().dist_memos_written;
      const first = delta(cache, () => ok(lldForm(cache.env, { out }), 'link through lnk/..'));
      assert.equal(first.hits + first.misses, t.modules.length, JSON.stringify(first));
      assert.equal(first.errors + first.uncacheable, 0, JSON.stringify(first));
      assert.equal(existsSync(join(t.dir, 'prog.far')), false, 'written where path.resolve puts it');
      const mine = readFileSync(join(far, 'prog.far'));
      assert.equal(run(join(far, 'prog.far'), [], t.dir).stdout, t.oracle());
      assert.deepEqual(leftovers(), []);
      ok(t.linkLld(serial, [], { out: 'lnk/../prog.far.serial' }), 'serial link through lnk/..');
      assert.ok(readFileSync(join(far, 'prog.far.serial')).equals(mine), 'executable differs from the serial link');

      const memoWritten = Date.now() + 5_000;
      while (cache.stats().dist_memos_written === memos0 && Date.now() < memoWritten) await sleep(100);
      assert.equal(cache.stats().dist_memos_written, memos0 + 1, 'a distribution memo was written');
      const viaDaemon = delta(cache, () => ok(lldForm({ ...cache.env, LTOCACHE_MEMO: '0' }, { out }), 'relink, fast path off'));
      assert.deepEqual(viaDaemon, { hits: t.modules.length, misses: 0, errors: 0, uncacheable: 0 });
      assert.ok(readFileSync(join(far, 'prog.far')).equals(mine));
      const m0 = cache.stats().memo_hits;
      rmSync(join(far, 'prog.far'));
      ok(lldForm(cache.env, { out }), 'relink from the distribution memo');
      assert.equal(cache.stats().memo_hits - m0, t.modules.length, 'served by the client');
      assert.ok(readFileSync(join(far, 'prog.far')).equals(mine));
      rmSync(join(far, 'prog.far'));
      ok(lldForm({ ...cache.env, LTOCACHE_DISABLE: '1' }, { out }), 'link through the Node CLI');
      assert.ok(readFileSync(join(far, 'prog.far')).equals(mine));
      assert.deepEqual(leftovers(), []);
    } finally {
      rmSync(join(t.dir, 'lnk'));
    }
  });

  test('modules from a static archive, which lld writes out under names with its PID: the relink hits, byte-identical to a serial link', () => {
    const members = ['mathx', 'hashx', 'table'];
    rmSync(join(t.dir, 'libparts.a'), { force: true });
    ok(run(LLVM_AR22, ['rcs', 'libparts.a', ...members.map((m) => `${m}.o`)], t.dir), 'llvm-ar');
    const objects = [...t.modules.filter((m) => !members.includes(m)).map((m) => `${m}.o`), 'libparts.a'];
    const first = delta(cache, () => ok(lldForm(cache.env, { objects, out: 'prog.ar' }), 'archive link'));
    assert.equal(first.hits + first.misses, t.modules.length);
    assert.equal(first.errors + first.uncacheable, 0);
    const again = delta(cache, () => ok(lldForm(cache.env, { objects, out: 'prog.ar' }), 'archive relink'));
    assert.deepEqual(again, { hits: t.modules.length, misses: 0, errors: 0, uncacheable: 0 });
    const mine = readFileSync(join(t.dir, 'prog.ar'));
    ok(t.linkLld(serial, [], { objects, out: 'prog.ar' }), 'serial archive link');
    assert.ok(readFileSync(join(t.dir, 'prog.ar')).equals(mine), 'executable differs from the serial link');
    assert.equal(run(join(t.dir, 'prog.ar'), [], t.dir).stdout, expected);
  });

  test("a failing job fails the link with clang's message and names the job", () => {
    const r = lldForm(cache.env, { out: 'prog.fail', extra: ['--thinlto-remote-compiler-arg=-march=no-such-cpu'] });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /unknown target CPU 'no-such-cpu'/);
    assert.match(r.stderr, /ltocache distribute: job \d+ \(.*\.native\.o\) failed: the compiler exited with status 1/);
    assert.equal(existsSync(join(t.dir, 'prog.fail')), false);
    // The same through the Node CLI (the fallback): the same line for the first job (how many
    // others started before the failure stopped the queue depends on the parallelism).
    const viaNode = lldForm({ ...cache.env, LTOCACHE_DISABLE: '1' }, { out: 'prog.fail', extra: ['--thinlto-remote-compiler-arg=-march=no-such-cpu'] });
    const mine = (e: string) =>
      e
        .split('\n')
        .filter((l) => l.startsWith('ltocache distribute:'))
        .map((l) => l.replace(/\.\d+\.\d+\.native\.o/g, '.N.native.o').replace(/\S+\.dist-file\.json|\d+\.native/g, ''));
    assert.notEqual(viaNode.status, 0);
    assert.match(viaNode.stderr, /unknown target CPU 'no-such-cpu'/);
    assert.equal(mine(viaNode.stderr)[0], mine(r.stderr)[0]);
    assert.match(mine(r.stderr)[0] ?? '', /^ltocache distribute: job 0 /);
  });

  test('the schema accepts the file lld 22 writes, with unknown fields', () => {
    const capture = join(tempDir('dtlto-capture'), 'capture');
    const saved = join(dirname(capture), 'dist-file.json');
    writeFileSync(capture, `#!/bin/sh\nfor a; do last="$a"; done\ncp "$last" ${saved}\nexit 1\n`);
    chmodSync(capture, 0o755);
    assert.notEqual(t.linkLld(capture, ['distribute'], { out: 'prog.capture' }).status, 0);
    const raw = JSON.parse(readFileSync(saved, 'utf8')) as { common: Record<string, unknown>; jobs: Record<string, unknown>[] };
    const parsed = DistFile.parse(raw);
    assert.equal(parsed.jobs.length, t.modules.length);
    assert.equal(parsed.common.args[0], CLANG22);
    assert.equal(parsed.common.linker_output, 'prog.capture');
    for (const j of parsed.jobs) assert.match(j.outputs[0]!, /^\w+\.\d+\.\d+\.native\.o$/);
    DistFile.parse({ ...raw, future: 1, common: { ...raw.common, extra: [] }, jobs: raw.jobs.map((j) => ({ ...j, priority: 3 })) });
  });

  test('a job that exits 0 without writing its declared output fails the distribution', () => {
    const dir = join(tempDir('dtlto-nowrite'), 'build');
    mkdirSync(dir);
    copyFileSync(join(t.dir, 'hashx.o'), join(dir, 'hashx.o'));
    writeFileSync(join(dir, 'hashx.o.thinlto.bc'), readFileSync(join(t.dir, 'idx1', 'hashx.o.thinlto.bc')));
    const liar = join(dir, '..', 'liar-cc');
    writeFileSync(liar, '#!/bin/sh\nexit 0\n');
    chmodSync(liar, 0o755);
    const file = join(dir, 'prog.1.dist-file.json');
    writeFileSync(
      file,
      JSON.stringify({
        common: { linker_output: 'prog', args: [liar, '-c', '-O2'], inputs: [] },
        jobs: [{ args: ['hashx.o', '-fthinlto-index=hashx.o.thinlto.bc', '-o', 'hashx.1.1.native.o'], inputs: ['hashx.o', 'hashx.o.thinlto.bc'], outputs: ['hashx.1.1.native.o'] }],
      }),
    );
    const r = run(CLIENT, ['distribute', file], dir, cache.env);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /job 0 did not write its declared output hashx\.1\.1\.native\.o/);
  });

  describe('hostile or malformed distribution files are refused before anything runs', () => {
    let dir: string;
    let outside: string;
    let marker: string;
    let wrapper: string;
    before(() => {
      const top = tempDir('dtlto-hostile');
      dir = join(top, 'build');
      outside = join(top, 'outside');
      mkdirSync(dir);
      mkdirSync(outside);
      for (const m of ['main', 'mathx']) copyFileSync(join(t.dir, `${m}.o`), join(dir, `${m}.o`));
      writeFileSync(join(dir, 'main.o.thinlto.bc'), readFileSync(join(t.dir, 'idx1', 'main.o.thinlto.bc')));
      symlinkSync(outside, join(dir, 'escape'));
      marker = join(top, 'compiler-ran');
      wrapper = join(top, 'cc');
      writeFileSync(wrapper, `#!/bin/sh\ntouch ${marker}\nexec ${CLANG22} "$@"\n`);
      chmodSync(wrapper, 0o755);
    });
    const good = () => ({
      common: { linker_output: 'prog', args: [wrapper, '-c', '-O2'], inputs: [] as string[] },
      jobs: [
        { args: ['main.o', '-fthinlto-index=main.o.thinlto.bc', '-o', 'main.1.9.native.o'], inputs: ['main.o', 'main.o.thinlto.bc', 'mathx.o'], outputs: ['main.1.9.native.o'] },
      ],
    });
    const listing = () => [...readdirSync(dir), '|', ...readdirSync(outside)].join(' ');

    const cases: [string, (f: ReturnType<typeof good>) => unknown, RegExp][] = [
      ['not JSON', () => '{"common": ', /not valid JSON/],
      ['a missing field', (f) => ({ ...f, jobs: [{ args: f.jobs[0]!.args, inputs: f.jobs[0]!.inputs }] }), /jobs\[0\]\.outputs: missing/],
      ['a missing compiler', (f) => ({ ...f, common: { ...f.common, args: ['/nonexistent/clang-22', '-c'] } }), /compiler \/nonexistent\/clang-22 \(common\.args\[0\]\) not found/],
      ['a missing input', (f) => ({ ...f, jobs: [{ ...f.jobs[0]!, inputs: ['main.o', 'gone.o'] }] }), /input gone\.o does not exist/],
      [
        'an output escaping through ..',
        (f) => ({ ...f, jobs: [{ ...f.jobs[0]!, args: ['main.o', '-fthinlto-index=main.o.thinlto.bc', '-o', '../outside/x.o'], outputs: ['../outside/x.o'] }] }),
        /output \.\.\/outside\/x\.o is outside the linker output's directory/,
      ],
      [
        'an output given as an absolute path elsewhere',
        (f) => ({ ...f, jobs: [{ ...f.jobs[0]!, args: ['main.o', '-fthinlto-index=main.o.thinlto.bc', '-o', join(outside, 'y.o')], outputs: [join(outside, 'y.o')] }] }),
        /is outside the linker output's directory/,
      ],
      [
        'an output through a symbolic link to another directory',
        (f) => ({ ...f, jobs: [{ ...f.jobs[0]!, args: ['main.o', '-fthinlto-index=main.o.thinlto.bc', '-o', 'escape/w.o'], outputs: ['escape/w.o'] }] }),
        /output escape\/w\.o resolves outside the linker output's directory \(through a symbolic link\)/,
      ],
      [
        'an output through a symbolic link and .. (escape/../x.o opens x.o beside the link target)',
        (f) => ({ ...f, jobs: [{ ...f.jobs[0]!, args: ['main.o', '-fthinlto-index=main.o.thinlto.bc', '-o', 'escape/../x.o'], outputs: ['escape/../x.o'] }] }),
        /output escape\/\.\.\/x\.o resolves outside the linker output's directory \(through a symbolic link\)/,
      ],
      [
        'an output that is an input spelt through a symbolic link and ..',
        (f) => ({ ...f, jobs: [{ ...f.jobs[0]!, args: ['main.o', '-fthinlto-index=main.o.thinlto.bc', '-o', 'escape/../build/mathx.o'], outputs: ['escape/../build/mathx.o'] }] }),
        /output escape\/\.\.\/build\/mathx\.o is also an input/,
      ],
      [
        'two outputs naming one file, one through a symbolic link and ..',
        (f) => {
          const other = {
            ...f.jobs[0]!,
            args: ['main.o', '-fthinlto-index=main.o.thinlto.bc', '-o', 'escape/../build/main.1.9.native.o'],
            outputs: ['escape/../build/main.1.9.native.o'],
          };
          return { ...f, jobs: [f.jobs[0]!, other] };
        },
        /jobs\[1\]: output escape\/\.\.\/build\/main\.1\.9\.native\.o is written twice/,
      ],
      [
        'an output that is also an input',
        (f) => ({ ...f, jobs: [{ ...f.jobs[0]!, args: ['main.o', '-fthinlto-index=main.o.thinlto.bc', '-o', 'mathx.o'], outputs: ['mathx.o'] }] }),
        /output mathx\.o is also an input/,
      ],
      [
        'a -o that is not a declared output',
        (f) => ({ ...f, jobs: [{ ...f.jobs[0]!, args: ['main.o', '-fthinlto-index=main.o.thinlto.bc', '-o', '../outside/z.o'] }] }),
        /-o \.\.\/outside\/z\.o is not one of the job's declared outputs/,
      ],
      [
        'a --output= (an alias of -o) that is not a declared output',
        (f) => ({ ...f, jobs: [{ ...f.jobs[0]!, args: [...f.jobs[0]!.args, '--output=../outside/y.o'] }] }),
        /-o \.\.\/outside\/y\.o is not one of the job's declared outputs/,
      ],
      [
        'a -o inside a response file that is not a declared output',
        (f) => {
          writeFileSync(join(dir, 'out.rsp'), '-o ../outside/r.o');
          return { ...f, jobs: [{ ...f.jobs[0]!, args: ['main.o', '-fthinlto-index=main.o.thinlto.bc', '@out.rsp'] }] };
        },
        /clang would write \.\.\/outside\/r\.o outside the linker output's directory/,
      ],
      [
        'an optimisation record written over an input',
        (f) => ({ ...f, jobs: [{ ...f.jobs[0]!, args: [...f.jobs[0]!.args, '-fsave-optimization-record', '-foptimization-record-file=mathx.o'] }] }),
        /derived output mathx\.o is also an input/,
      ],
      [
        'an optimisation record at a symbolic link to a file elsewhere (clang writes through it)',
        (f) => {
          rmSync(join(dir, 'rec.yaml'), { force: true });
          symlinkSync(join(outside, 'victim.yaml'), join(dir, 'rec.yaml'));
          return { ...f, jobs: [{ ...f.jobs[0]!, args: [...f.jobs[0]!.args, '-fsave-optimization-record', '-foptimization-record-file=rec.yaml'] }] };
        },
        /derived output rec\.yaml is a symbolic link/,
      ],
      [
        'two jobs writing one optimisation record',
        (f) => {
          const job = { ...f.jobs[0]!, args: [...f.jobs[0]!.args, '-fsave-optimization-record', '-foptimization-record-file=remarks.yaml'] };
          const other = {
            ...job,
            args: [...job.args.map((a) => (a === '-o' || a !== 'main.1.9.native.o' ? a : 'main.2.9.native.o'))],
            outputs: ['main.2.9.native.o'],
          };
          return { ...f, jobs: [job, other] };
        },
        /jobs\[1\]: derived output remarks\.yaml is written twice/,
      ],
      ['a NUL byte', (f) => ({ ...f, jobs: [{ ...f.jobs[0]!, args: ['main.o\u0000', ...f.jobs[0]!.args.slice(1)] }] }), /jobs\[0\]\.args\[0\]: contains a NUL byte/],
      ['too many jobs', (f) => ({ ...f, jobs: Array.from({ length: DTLTO_LIMITS.maxJobs + 1 }, () => f.jobs[0]) }), /jobs: Too big/i],
      ['too many arguments', (f) => ({ ...f, common: { ...f.common, args: [wrapper, ...Array.from({ length: DTLTO_LIMITS.maxArgs }, () => '-O2')] } }), /common\.args: Too big/i],
    ];
    for (const [name, make, message] of cases) {
      test(name, () => {
        const file = join(dir, 'prog.9.dist-file.json');
        const v = make(good());
        writeFileSync(file, typeof v === 'string' ? v : JSON.stringify(v));
        const seen = listing();
        const r = run(CLIENT, ['distribute', file], dir, cache.env);
        rmSync(file);
        assert.notEqual(r.status, 0);
        assert.match(r.stderr, message);
        assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
        assert.equal(existsSync(marker), false, 'the compiler ran');
        assert.equal(listing(), seen.replace(' prog.9.dist-file.json', ''), 'something was written');
      });
    }

    test('the daemon and the Node CLI (LTOCACHE_DISABLE=1) refuse a malformed file with the same line', () => {
      const file = join(dir, 'prog.9.dist-file.json');
      writeFileSync(file, '{"common": ');
      const viaDaemon = run(CLIENT, ['distribute', file], dir, cache.env);
      const viaNode = run(CLIENT, ['distribute', file], dir, { ...cache.env, LTOCACHE_DISABLE: '1' });
      const viaDaemonNoNode = run(CLIENT, ['distribute', file], dir, { ...cache.env, LTOCACHE_NODE: '/nonexistent' });
      rmSync(file);
      assert.match(viaDaemon.stderr, /^ltocache: distribute: .*not valid JSON/);
      assert.equal(viaNode.stderr, viaDaemon.stderr);
      assert.equal(viaDaemonNoNode.stderr, viaDaemon.stderr);
      assert.equal(viaNode.status, viaDaemon.status);
      assert.notEqual(viaDaemon.status, 0);
    });

    test('the same file, well formed, runs (the cases above differ from it only in what they break)', () => {
      const file = join(dir, 'prog.9.dist-file.json');
      writeFileSync(file, JSON.stringify(good()));
      const r = run(CLIENT, ['distribute', file], dir, cache.env);
      ok(r, 'distribute');
      assert.ok(existsSync(join(dir, 'main.1.9.native.o')));
      assert.ok(existsSync(marker));
    });
  });
});

describe('DTLTO: two checkouts in different directories share one team server', () => {
  const server = new ServerProcess();
  const caches: CacheEnv[] = [];
  after(async () => {
    for (const c of caches) c.destroy();
    await server.kill();
  });

  test('A links and uploads; B (empty local cache, another directory) gets every job from the team server, byte-identical', async () => {
    const url = await server.start();
    const mk = (name: string) => {
      const c = new CacheEnv(`dtlto-${name}`, { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: TOKENS.write });
      caches.push(c);
      c.start();
      const tree = new DtltoTree(join(tempDir(`dtlto-${name}`), name, 'src', 'proj'));
      tree.frontEnd();
      return { c, tree };
    };
    const a = mk('alice');
    const b = mk('bob');
    ok(a.tree.linkLld(CLIENT, ['distribute'], { env: a.c.env }), 'alice link');
    const deadline = Date.now() + 15_000;
    while (a.c.stats().uploads < a.tree.modules.length) {
      if (Date.now() > deadline) throw new Error('uploads did not finish');
      await sleep(100);
    }
    ok(b.tree.linkLld(CLIENT, ['distribute'], { env: b.c.env }), 'bob link');
    const s = b.c.stats();
    assert.equal(s.remote_hits, b.tree.modules.length);
    assert.equal(s.misses, 0);
    const mine = readFileSync(join(b.tree.dir, 'prog'));
    renameSync(join(b.tree.dir, 'prog'), join(b.tree.dir, 'prog.cached'));
    ok(b.tree.linkLld(writeSerialDistributor(join(b.tree.dir, 'serial')), []), 'serial');
    assert.ok(readFileSync(join(b.tree.dir, 'prog')).equals(mine));
    assert.equal(run(join(b.tree.dir, 'prog'), [], b.tree.dir).stdout, b.tree.oracle());
    // B's link from the team cache left a distribution memo once the write-backs were done: its
    // next link is served by the client.
    const memoWritten = Date.now() + 5_000;
    while (b.c.stats().dist_memos_written < 1 && Date.now() < memoWritten) await sleep(100);
    const before = b.c.stats();
    ok(b.tree.linkLld(CLIENT, ['distribute'], { env: b.c.env }), 'bob relink');
    const after = b.c.stats();
    assert.equal(after.memo_hits - before.memo_hits, b.tree.modules.length, `served by the client: ${JSON.stringify(after)}`);
    assert.ok(readFileSync(join(b.tree.dir, 'prog')).equals(mine));
  });
});
