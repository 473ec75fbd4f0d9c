import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { type Job, parseJob } from '../../src/key/parseJob.js';
import { tempDir as envTempDir } from '../support/env.js';

const CLANG = process.env.LTOCACHE_TEST_CLANG ?? 'clang-19';
const LLD = process.env.LTOCACHE_TEST_LLD ?? 'ld.lld-19';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = envTempDir('parse');
  dirs.push(d);
  return d;
}

async function job(args: string[], cwd: string): Promise<Job> {
  const r = await parseJob(args, cwd);
  if (r.kind !== 'job') assert.fail(`expected a job, got uncacheable ${r.reason}: ${r.detail}`);
  return r.job;
}

/**
 * Ground truth: run clang-19 on a real backend job for each output-shaping flag set and compare
 * the files it creates with the outputs parseJob predicts. A missing prediction means a hit
 * would not restore a file clang writes.
 */
describe('outputs match what clang-19 writes', () => {
  let base: string | undefined;
  function setup(): string {
    if (base) return base;
    base = tempDir();
    fs.writeFileSync(join(base, 'a.c'), 'extern int bfun(int);\nint afun(int x) { int arr[300]; for (int i = 0; i < 300; i++) arr[i] = bfun(x + i); return arr[x % 300]; }\n');
    fs.writeFileSync(join(base, 'b.c'), 'int bfun(int y) { return y * 3 + 1; }\n');
    for (const m of ['a', 'b']) execFileSync(CLANG, ['-O2', '-g', '-flto=thin', '-c', '-o', `${m}.o`, `${m}.c`], { cwd: base });
    execFileSync(LLD, ['-r', '--thinlto-index-only=list', 'a.o', 'b.o', '-o', 'out.o'], { cwd: base });
    return base;
  }

  const variants: string[][] = [
    ['-c'],
    ['-S'],
    ['-c', '-emit-llvm'],
    ['-g', '-gsplit-dwarf', '-c'],
    ['-g', '-gsplit-dwarf=single', '-c'],
    ['-g', '-gsplit-dwarf', '-gno-split-dwarf', '-c'],
    ['-g', '-gsplit-dwarf', '-S'],
    ['-g', '-gsplit-dwarf', '-c', '-S'],
    ['-g', '-gsplit-dwarf', '-S', '-c'],
    ['-g', '-gsplit-dwarf', '-emit-llvm', '-c'],
    ['-fstack-usage', '-c'],
    ['-fstack-usage', '-S'],
    ['-fstack-usage', '-emit-llvm', '-c'],
    ['-fsave-optimization-record', '-c'],
    ['-fsave-optimization-record', '-foptimization-record-file=rec.yaml', '-c'],
    ['-g', '-gsplit-dwarf', '-fstack-usage', '-fsave-optimization-record', '-c'],
  ];
  for (const v of variants) {
    test(v.join(' '), async () => {
      const src = setup();
      const cwd = tempDir();
      for (const f of ['a.o', 'b.o', 'a.o.thinlto.bc', 'b.o.thinlto.bc']) fs.copyFileSync(join(src, f), join(cwd, f));
      fs.mkdirSync(join(cwd, 'out'));
      const before = new Set(fs.readdirSync(cwd, { recursive: true }) as string[]);
      const args = ['-O2', '-x', 'ir', '-fno-lto', '-fthinlto-index=a.o.thinlto.bc', ...v, '-o', 'out/a.native.o', 'a.o'];
      const r = spawnSync(CLANG, args, { cwd, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const written = (fs.readdirSync(cwd, { recursive: true }) as string[]).filter((f) => !before.has(f)).sort();
      const j = await job(args, cwd);
      assert.deepEqual(j.outputs.map((o) => o.path).sort(), written);
    });
  }
});
