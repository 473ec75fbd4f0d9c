import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import type { BuildSummary, JobExplanation } from '../../src/explain/explainJobs.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../support/env.js';

/** `ltocache explain` and `trace` on the core scenarios, against the real daemon and clang. */

const GAP_MS = 600;

describe('explain and trace', () => {
  let cache: CacheEnv;
  let b: ThinBuild;
  before(() => {
    cache = new CacheEnv('explain', { LTOCACHE_BUILD_GAP_MS: String(GAP_MS) });
    cache.start();
    b = ThinBuild.fromFixture(FIXTURE, join(tempDir('explain'), 'src'));
    b.frontEnd();
  });
  after(() => cache.destroy());

  async function build(extra: string[] = [], env: NodeJS.ProcessEnv = cache.env, compiler?: string): Promise<void> {
    await new Promise((r) => setTimeout(r, GAP_MS + 200));
    b.thinLink();
    for (const m of b.modules) {
      const r = b.backend(m, { wrapper: [CLIENT], extra, env, ...(compiler ? { compiler } : {}) });
      assert.equal(r.status, 0, r.stderr);
    }
  }

  function explain(m: string): JobExplanation {
    const r = cache.cli(['explain', join(b.dir, `${m}.thinlto-native.o`), '--json']);
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as JobExplanation;
  }

  function lastBuild(): BuildSummary {
    const r = cache.cli(['explain', '--last-build', '--json']);
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as BuildSummary;
  }

  const kinds = (e: JobExplanation) => e.causes.map((c) => c.kind);

  test('cold build: first build; warm: hits with no causes', async () => {
    await build();
    assert.deepEqual(kinds(explain('main')), ['first-build']);
    assert.equal(lastBuild().miss_causes['first-build'], b.modules.length);
    await build();
    const e = explain('main');
    assert.equal(e.result, 'hit');
    assert.deepEqual(e.causes, []);
    const s = lastBuild();
    assert.equal(s.jobs, b.modules.length);
    assert.equal(s.hits, b.modules.length);
    assert.equal(s.misses, 0);
  });

  test('edited function: the edited module misses on its input, importers on the imported module, named', async () => {
    const src = join(b.dir, 'mathx.c');
    writeFileSync(src, readFileSync(src, 'utf8').replace('return x * x;', 'return x * x + 2;'));
    b.frontEnd(['mathx']);
    await build();
    assert.ok(kinds(explain('mathx')).includes('input'));
    for (const importer of ['main', 'table']) {
      const e = explain(importer);
      assert.equal(e.result, 'miss');
      const imp = e.causes.find((c) => c.kind === 'import-changed');
      assert.ok(imp && 'module' in imp && imp.module === 'mathx.o', `${importer}: ${JSON.stringify(e.causes)}`);
      assert.ok(!kinds(e).includes('input'));
    }
    assert.equal(explain('lonely').result, 'hit');
    const s = lastBuild();
    assert.equal(s.misses, 3);
    assert.deepEqual(s.top_changed_modules[0], { module: 'mathx.o', importers_missed: 2 });
    assert.equal(s.miss_causes['import-changed'], 2);
    assert.equal(s.miss_causes.input, 1);
  });

  test('-O level change is reported as that flag, changed', async () => {
    const saved = b.cflags;
    b.cflags = saved.map((f) => (f === '-O2' ? '-O1' : f));
    await build();
    b.cflags = saved;
    const e = explain('strx');
    const c = e.causes.find((x) => x.kind === 'flag-changed');
    assert.ok(c && 'flag' in c && c.flag === '-O', JSON.stringify(e.causes));
    assert.match(c.detail, /-O2 → -O1/);
  });

  test('-march added, then changed', async () => {
    await build(['-march=x86-64-v2']);
    const added = explain('strx').causes.find((x) => x.kind === 'flag-added');
    assert.ok(added && 'flag' in added && added.flag === '-march=x86-64-v2', JSON.stringify(explain('strx').causes));
    await build(['-march=x86-64-v3']);
    const changed = explain('strx').causes.find((x) => x.kind === 'flag-changed');
    assert.ok(changed && 'flag' in changed && changed.flag === '-march=', JSON.stringify(explain('strx').causes));
  });

  test('a flag-named file whose content changed is named', async () => {
    writeFileSync(join(b.dir, 'bbs.txt'), '!str_hash\n');
    await build(['-fbasic-block-sections=list=bbs.txt']);
    writeFileSync(join(b.dir, 'bbs.txt'), '!str_hash\n!!0\n');
    await build(['-fbasic-block-sections=list=bbs.txt']);
    const e = explain('strx');
    assert.deepEqual(kinds(e), ['flag-file']);
    assert.ok(e.causes[0] && 'file' in e.causes[0] && e.causes[0].file === 'bbs.txt');
  });

  test("under -fsanitize=, an edited ignorelist in the resource directory's share/ is a toolchain cause", async () => {
    const share = join(b.dir, 'res', 'share');
    mkdirSync(share, { recursive: true });
    writeFileSync(join(share, 'asan_ignorelist.txt'), 'fun:one\n');
    const args = ['-fsanitize=address', '-resource-dir', 'res'];
    await build(args);
    writeFileSync(join(share, 'asan_ignorelist.txt'), 'fun:two\n');
    await build(args);
    const e = explain('strx');
    assert.deepEqual(kinds(e), ['toolchain'], JSON.stringify(e.causes));
  });

  test('toolchain and environment changes are reported as such', async () => {
    await build();
    const wrapper = join(b.dir, 'cc.sh');
    writeFileSync(wrapper, `#!/bin/sh\nexec ${b.clang} "$@"\n`);
    chmodSync(wrapper, 0o755);
    await build([], cache.env, wrapper);
    assert.deepEqual(kinds(explain('strx')), ['toolchain']);
    // A keyed variable clang ignores for this (Linux) target.
    await build([], { ...cache.env, MACOSX_DEPLOYMENT_TARGET: '11.0' }, wrapper);
    const e = explain('strx');
    assert.deepEqual(kinds(e), ['environment']);
    assert.ok(e.causes[0] && 'variable' in e.causes[0] && e.causes[0].variable === 'MACOSX_DEPLOYMENT_TARGET');
  });

  test('trace: a valid Chrome trace with one slice per job of the last build', async () => {
    await build(['-O3']);
    // Into a directory not made yet, as report -o writes.
    const out = join(b.dir, 'traces', 'build.json');
    const r = cache.cli(['trace', '--last-build', '-o', out]);
    assert.equal(r.status, 0, r.stderr);
    const t = JSON.parse(readFileSync(out, 'utf8')) as { traceEvents: Record<string, unknown>[]; displayTimeUnit: string };
    assert.ok(Array.isArray(t.traceEvents));
    const slices = t.traceEvents.filter((e) => e.ph === 'X');
    assert.equal(slices.length, b.modules.length);
    const cats = new Set(['hit-local', 'hit-remote', 'miss', 'uncacheable', 'error']);
    const byTrack = new Map<number, { ts: number; dur: number }[]>();
    for (const e of slices) {
      assert.equal(typeof e.name, 'string');
      assert.ok(typeof e.ts === 'number' && e.ts >= 0);
      assert.ok(typeof e.dur === 'number' && e.dur > 0);
      assert.equal(e.pid, 1);
      assert.ok(Number.isInteger(e.tid));
      assert.ok(cats.has(e.cat as string), String(e.cat));
      const args = e.args as Record<string, unknown>;
      assert.match(String(args.key), /^[0-9a-f]{32}$/);
      assert.equal(typeof args.bytes, 'number');
      assert.equal(typeof args.saved_ms, 'number');
      byTrack.set(e.tid as number, [...(byTrack.get(e.tid as number) ?? []), { ts: e.ts, dur: e.dur }]);
    }
    assert.deepEqual(new Set(slices.map((e) => e.name)), new Set(b.modules.map((m) => `${m}.thinlto-native.o`)));
    for (const list of byTrack.values()) {
      list.sort((x, y) => x.ts - y.ts);
      for (let i = 1; i < list.length; i++) assert.ok(list[i]!.ts >= list[i - 1]!.ts + list[i - 1]!.dur - 1, 'slices on one track overlap');
    }
    const names = t.traceEvents.filter((e) => e.ph === 'M' && e.name === 'thread_name');
    assert.equal(names.length, byTrack.size);
  });
});
