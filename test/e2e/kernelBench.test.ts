import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Report } from '../../bench/kernel.js';
import { llvmTool } from '../../src/demo/thinBuild.js';
import { FIXTURE, runAsync, TOP, tempDir } from '../support/env.js';

/**
 * Smoke test of bench/kernel.ts: the same script, on a tree of the kernel's shape built from the
 * fixture program (dir/.X.o.cmd files with savedcmd_ lines, a thin vmlinux.a, a lib/lib.a, a
 * .vmlinux.o.cmd), so that the benchmark cannot rot while the real kernel tree is never in CI.
 */

const LAYOUT: Record<string, string> = {
  'init/main': 'main',
  'mm/mathx': 'mathx',
  'kernel/table': 'table',
  'kernel/frame': 'frame',
  'drivers/base/lonely': 'lonely',
  'lib/strx': 'strx',
};
const IN_LIB = new Set(['lib/strx']);

function llvmAr(): string {
  for (const c of ['llvm-ar-19', '/usr/lib/llvm-19/bin/llvm-ar']) if (spawnSync(c, ['--version'], { stdio: 'ignore' }).status === 0) return c;
  throw new Error('llvm-ar 19 not found');
}

function must(cmd: string, args: string[], cwd: string): void {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8' });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
}

/** Builds the kernel-shaped tree: front end through the saved commands, thin archives, .cmd files. */
function buildTree(tree: string, clang: string, lld: string, ar: string): void {
  mkdirSync(join(tree, 'include'), { recursive: true });
  copyFileSync(join(FIXTURE, 'prog.h'), join(tree, 'include', 'prog.h'));
  for (const [obj, src] of Object.entries(LAYOUT)) {
    const dir = dirname(obj);
    const base = obj.slice(dir.length + 1);
    mkdirSync(join(tree, dir), { recursive: true });
    copyFileSync(join(FIXTURE, `${src}.c`), join(tree, `${obj}.c`));
    const cmd =
      `${clang} -Wp,-MMD,${dir}/.${base}.o.d -Iinclude -O2 -Wframe-larger-than=1024 ` +
      `-DKBUILD_MODFILE='"${obj}"' -DKBUILD_BASENAME='"${base}"' -DKBUILD_MODNAME='"${base}"' -D__KBUILD_MODNAME=kmod_${base} ` +
      `-flto=thin -fsplit-lto-unit -fvisibility=hidden -c -o ${obj}.o ${obj}.c`;
    must('sh', ['-c', cmd], tree);
    rmSync(join(tree, dir, `.${base}.o.d`), { force: true });
    writeFileSync(join(tree, dir, `.${base}.o.cmd`), `savedcmd_${obj}.o := ${cmd}\n\nsource_${obj}.o := ${obj}.c\n`);
  }
  const core = Object.keys(LAYOUT)
    .filter((o) => !IN_LIB.has(o))
    .map((o) => `${o}.o`);
  must(ar, ['cDPrST', 'vmlinux.a', ...core], tree);
  must(ar, ['cDPrST', 'lib/lib.a', ...[...IN_LIB].map((o) => `${o}.o`)], tree);
  writeFileSync(
    join(tree, '.vmlinux.o.cmd'),
    `savedcmd_vmlinux.o := ${lld} -m elf_x86_64 -z noexecstack -mllvm -import-instr-limit=5 --thinlto-cache-dir=.thinlto-cache -r -o vmlinux.o --whole-archive vmlinux.a --no-whole-archive --start-group lib/lib.a --end-group\n`,
  );
}

describe('bench/kernel on a kernel-shaped fixture tree', () => {
  let root: string;
  let tree: string;
  let report: Report;
  let stdout: string;
  /** Modification times of the bitcode objects the edit does not rebuild, before the bench. */
  let mtimes: Map<string, number>;

  before(async () => {
    root = tempDir('kbench');
    tree = join(root, 'linux');
    const clang = llvmTool('clang');
    const lld = llvmTool('ld.lld');
    const ar = llvmAr();
    buildTree(tree, clang, lld, ar);
    const untouched = Object.keys(LAYOUT).filter((m) => m !== 'mm/mathx');
    mtimes = new Map(untouched.map((m) => [m, statSync(join(tree, `${m}.o`)).mtimeMs]));
    const json = join(root, 'report.json');
    const r = await runAsync(
      process.execPath,
      [
        join(TOP, 'dist', 'bench', 'kernel.js'),
        '--tree',
        tree,
        '--runs',
        '1',
        '--json',
        json,
        '--remote',
        '--clang',
        clang,
        '--lld',
        lld,
        '--ar',
        ar,
        '--edit',
        'mm/mathx.c',
        '--edit-from',
        'return x * x;',
        '--edit-to',
        'return x * x + 1;',
      ],
      { cwd: root },
    );
    assert.equal(r.status, 0, `kernel bench failed:\n${r.stderr}\n${r.stdout}`);
    stdout = r.stdout;
    report = JSON.parse(readFileSync(json, 'utf8')) as Report;
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  test('prints one table with every scenario and finds every bitcode module', () => {
    assert.equal(report.jobs, Object.keys(LAYOUT).length);
    assert.match(stdout, /\| scenario \| wall min \| wall median \|/);
    const names = report.rows.map((r) => r.name);
    for (const want of [
      /^floor/,
      /^no cache/,
      /^ltocache cold$/,
      /^ltocache warm$/,
      /^ltocache after edit$/,
      /^ltocache cold, daemon already warm/,
      /^lld in-process ThinLTO cache, cold$/,
      /^lld in-process ThinLTO cache, warm$/,
      /team server, warm/,
      /team server, after edit/,
    ]) {
      assert.ok(
        names.some((n) => want.test(n)),
        `no row ${want} in ${names.join(', ')}`,
      );
      assert.ok(
        stdout.split('\n').some((l) => l.startsWith('| ') && want.test(l.slice(2).split(' | ')[0]!)),
        `row ${want} not printed`,
      );
    }
    // Each cold row is paired with the direct build run just before it, and only those are.
    const paired = report.rows.filter((r) => r.pairedRatio !== null).map((r) => r.name);
    assert.deepEqual(paired, ['ltocache cold', 'ltocache cold, daemon already warm (store cleared, inputs touched)']);
    const before = report.rows.find((r) => r.name === 'no cache, just before the next row')!.samples[0]!;
    const again = report.rows.find((r) => r.name.startsWith('ltocache cold, daemon already warm'))!;
    assert.equal(again.samples[0]!.pairedNoCacheMs, before.wallMs);
    assert.equal(again.pairedRatio, again.samples[0]!.wallMs / before.wallMs);
  });

  test('ltocache objects are byte-identical to direct clang and warm hits every job', () => {
    assert.equal(report.totalMismatches, 0);
    assert.ok(report.noCacheDeterministic);
    assert.ok(report.stderrAllMatch, 'replayed stderr differs');
    const row = (name: string) => report.rows.find((r) => r.name === name)!;
    assert.equal(row('ltocache cold').samples[0]!.hits, 0);
    assert.equal(row('ltocache warm').samples[0]!.hits, report.jobs);
    // A cleared store and touched inputs: every job is a miss again in the same daemon.
    const again = report.rows.find((r) => r.name.startsWith('ltocache cold, daemon already warm'))!.samples[0]!;
    assert.equal(again.hits, 0);
    assert.equal(again.misses, report.jobs);
    assert.equal(row('lld in-process ThinLTO cache, warm').samples[0]!.hits, report.jobs);
  });

  test('after the edit ltocache hits exactly the ideal, locally and from the team server', () => {
    // the edited module and at least one importer of the edited function change; lib/strx does not
    assert.ok(report.changedJobs.includes('mm/mathx.o') && report.changedJobs.length >= 2, `changed: ${report.changedJobs}`);
    assert.ok(!report.changedJobs.includes('lib/strx.o'), `changed: ${report.changedJobs}`);
    assert.equal(report.ideal, report.jobs - report.changedJobs.length);
    const edit = report.rows.find((r) => r.name === 'ltocache after edit')!.samples[0]!;
    assert.equal(edit.hits, report.ideal);
    const teamWarm = report.rows.find((r) => /team server, warm/.test(r.name))!.samples[0]!;
    assert.equal(teamWarm.hits, report.jobs);
    assert.equal(teamWarm.remoteHits, report.jobs);
    const teamEdit = report.rows.find((r) => /team server, after edit/.test(r.name))!.samples[0]!;
    assert.equal(teamEdit.hits, report.ideal);
    assert.equal(teamEdit.remoteHits, report.ideal);
  });

  test('the tree is left as it was found', () => {
    assert.equal(readFileSync(join(tree, 'mm/mathx.c'), 'utf8'), readFileSync(join(FIXTURE, 'mathx.c'), 'utf8'));
    // The "daemon already warm" row touches every input, then puts their times back.
    // Node sets times from a double, to about a microsecond.
    for (const [m, t] of mtimes) assert.ok(Math.abs(statSync(join(tree, `${m}.o`)).mtimeMs - t) < 0.01, `${m}.o modification time`);
  });
});
