import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileCandidates, type Job, parseJob, type Token } from '../../src/key/parseJob.js';
import { tokenizeGnu } from '../../src/key/responseFile.js';
import { tempDir as envTempDir } from '../support/env.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = envTempDir('parse');
  dirs.push(d);
  return d;
}

/** A cwd with nothing in it: parseJob reads only response files. */
const EMPTY = tempDir();

async function job(args: string[], cwd = EMPTY): Promise<Job> {
  const r = await parseJob(args, cwd);
  if (r.kind !== 'job') assert.fail(`expected a job, got uncacheable ${r.reason}: ${r.detail}`);
  return r.job;
}

async function uncacheable(args: string[], cwd = EMPTY): Promise<{ reason: string; detail: string }> {
  const r = await parseJob(args, cwd);
  if (r.kind !== 'uncacheable') assert.fail(`expected uncacheable, got a job: ${JSON.stringify(r.job.outputs)}`);
  return r;
}

const flagsOf = (j: Job): string[] => j.tokens.filter((t) => t.t === 'flag').map((t) => t.v);
const droppedOf = (j: Job): string[] => j.tokens.filter((t) => t.t === 'dropped').map((t) => t.v);
const filesOf = (j: Job): Extract<Token, { t: 'file' }>[] => j.tokens.filter((t): t is Extract<Token, { t: 'file' }> => t.t === 'file');

/** The backend tail kbuild appends to the saved c_flags. */
const tail = (m: string, extra: string[] = []): string[] => [
  '-x',
  'ir',
  '-fno-lto',
  '-Wno-unused-command-line-argument',
  `-fthinlto-index=${m}.o.thinlto.bc`,
  ...extra,
  '-c',
  '-o',
  `${m}.thinlto-native.o`,
  `${m}.o`,
];

describe('parseJob: the kernel backend shape', () => {
  const kernel = [
    '-Wp,-MMD,fs/.open.thinlto-native.o.d',
    '-nostdinc',
    '-I./arch/x86/include',
    '-I',
    './include',
    '-include',
    './include/linux/kconfig.h',
    '-D__KERNEL__',
    '-D',
    'KBUILD_MODNAME="open"',
    '-std=gnu11',
    '-MD',
    '-O2',
    '-fno-pie',
    '-mcmodel=kernel',
    '-Wframe-larger-than=1024',
    '-mllvm',
    '-import-instr-limit=5',
    '-target',
    'x86_64-linux-gnu',
    ...tail('fs/open'),
  ];

  test('input, index, single obj output', async () => {
    const j = await job(kernel);
    assert.equal(j.input, 'fs/open.o');
    assert.equal(j.index, 'fs/open.o.thinlto.bc');
    assert.deepEqual(j.outputs, [{ role: 'obj', path: 'fs/open.thinlto-native.o' }]);
    assert.deepEqual(j.responseFiles, []);
  });

  test('tokens: flags kept in order, drop list dropped, separate values stay flags', async () => {
    const j = await job(kernel);
    assert.deepEqual(droppedOf(j), [
      '-Wp,-MMD,fs/.open.thinlto-native.o.d',
      '-nostdinc',
      '-I./arch/x86/include',
      '-I ./include',
      '-include ./include/linux/kconfig.h',
      '-D__KERNEL__',
      '-D KBUILD_MODNAME="open"',
      '-std=gnu11',
      '-MD',
    ]);
    assert.deepEqual(flagsOf(j), [
      '-O2',
      '-fno-pie',
      '-mcmodel=kernel',
      '-Wframe-larger-than=1024',
      '-mllvm',
      '-import-instr-limit=5',
      '-target',
      'x86_64-linux-gnu',
      '-x',
      'ir',
      '-fno-lto',
      '-Wno-unused-command-line-argument',
      '-c',
    ]);
    assert.deepEqual(filesOf(j), [
      { t: 'file', v: '-fthinlto-index=', path: 'fs/open.o.thinlto.bc', role: 'index' },
      { t: 'file', v: '', path: 'fs/open.o', role: 'input' },
    ]);
    assert.deepEqual(
      j.tokens.filter((t) => t.t === 'output'),
      [{ t: 'output', v: '-o', path: 'fs/open.thinlto-native.o', role: 'obj' }],
    );
  });

  test('-Xclang -fthinlto-index= is the index', async () => {
    const j = await job(['-O2', '-Xclang', '-fthinlto-index=m.o.thinlto.bc', '-c', '-o', 'm.native.o', 'm.o']);
    assert.equal(j.index, 'm.o.thinlto.bc');
    assert.equal(j.input, 'm.o');
    assert.deepEqual(flagsOf(j), ['-O2', '-Xclang', '-c']);
  });

  test('-oFILE joined', async () => {
    const j = await job(['-fthinlto-index=m.o.thinlto.bc', '-c', '-om.native.o', 'm.o']);
    assert.deepEqual(j.outputs, [{ role: 'obj', path: 'm.native.o' }]);
    assert.deepEqual(
      j.tokens.filter((t) => t.t === 'output'),
      [{ t: 'output', v: '-o=', path: 'm.native.o', role: 'obj' }],
    );
  });

  test('--output and --output= are -o (clang aliases them): the object is theirs, and a second one is another -o', async () => {
    for (const [args, v] of [
      [['--output', 'm.native.o'], '--output'],
      [['--output=m.native.o'], '--output='],
    ] as const) {
      const j = await job(['-fthinlto-index=m.o.thinlto.bc', '-c', ...args, 'm.o']);
      assert.deepEqual(j.outputs, [{ role: 'obj', path: 'm.native.o' }]);
      assert.deepEqual(
        j.tokens.filter((t) => t.t === 'output'),
        [{ t: 'output', v, path: 'm.native.o', role: 'obj' }],
      );
      assert.equal(j.input, 'm.o');
    }
  });

  test('separate-value flags never make their value an input', async () => {
    const j = await job(['-mllvm', '-x', '-target', 'x86_64-linux-gnu', '--param', 'inline-unit-growth=20', ...tail('m')]);
    assert.equal(j.input, 'm.o');
    assert.deepEqual(
      filesOf(j)
        .filter((f) => f.role === 'input')
        .map((f) => f.path),
      ['m.o'],
    );
    assert.deepEqual(flagsOf(j).slice(0, 6), ['-mllvm', '-x', '-target', 'x86_64-linux-gnu', '--param', 'inline-unit-growth=20']);
  });

  test('the drop list: each spelling becomes one dropped token', async () => {
    const cases: [string[], string][] = [
      [['-DX'], '-DX'],
      [['-D', 'X'], '-D X'],
      [['-UY'], '-UY'],
      [['-I', 'dir'], '-I dir'],
      [['-Idir'], '-Idir'],
      [['-include', 'f.h'], '-include f.h'],
      [['-Wp,-MMD,f.d'], '-Wp,-MMD,f.d'],
      [['-Wp,-MD,f.d'], '-Wp,-MD,f.d'],
      [['-MD'], '-MD'],
      [['-MMD'], '-MMD'],
      [['-MF', 'f.d'], '-MF f.d'],
      [['-std=gnu11'], '-std=gnu11'],
      [['-nostdinc'], '-nostdinc'],
    ];
    for (const [flag, dropped] of cases) {
      const j = await job([...flag, ...tail('m')]);
      assert.deepEqual(droppedOf(j), [dropped], flag.join(' '));
      assert.equal(j.input, 'm.o', flag.join(' '));
      assert.equal(j.tokens.length, tail('m').length - 1 /* -o and its value are one token */ + 1, flag.join(' '));
    }
  });

  test('-D without a value is bad-args', async () => {
    const r = await uncacheable([...tail('m'), '-D']);
    assert.equal(r.reason, 'bad-args');
  });

  test('file flags become flag-file tokens', async () => {
    const cases: [string, string, string][] = [
      ['-fbasic-block-sections=list=bbs.txt', '-fbasic-block-sections=list=', 'bbs.txt'],
      ['-fprofile-sample-use=prof.afdo', '-fprofile-sample-use=', 'prof.afdo'],
      ['-fprofile-use=p.profdata', '-fprofile-use=', 'p.profdata'],
      ['-fprofile-instr-use=dir/p.profdata', '-fprofile-instr-use=', 'dir/p.profdata'],
    ];
    for (const [flag, v, path] of cases) {
      const j = await job(['-O2', flag, ...tail('m')]);
      assert.deepEqual(
        filesOf(j).filter((f) => f.role === 'flag-file'),
        [{ t: 'file', v, path, role: 'flag-file' }],
        flag,
      );
      assert.ok(!flagsOf(j).includes(flag), flag);
    }
    // Bare -fprofile-use / -fprofile-instr-use, and -fprofile-use= with an empty value: clang reads ./default.profdata.
    for (const flag of ['-fprofile-use', '-fprofile-instr-use', '-fprofile-use=']) {
      const j = await job([flag, ...tail('m')]);
      assert.deepEqual(
        filesOf(j).filter((f) => f.role === 'flag-file'),
        [{ t: 'file', v: flag, path: 'default.profdata', role: 'flag-file' }],
        flag,
      );
    }
    // Bare -fcodegen-data-use (clang >= 20): ./default.cgdata, read when it exists.
    const cg = await job(['-fcodegen-data-use', ...tail('m')]);
    assert.deepEqual(
      cg.tokens.find((t) => t.v === '-fcodegen-data-use'),
      { t: 'flag', v: '-fcodegen-data-use', reads: 'default.cgdata' },
    );
    // -fbasic-block-sections=all names no file.
    const j = await job(['-fbasic-block-sections=all', ...tail('m')]);
    assert.ok(flagsOf(j).includes('-fbasic-block-sections=all'));
    assert.equal(filesOf(j).filter((f) => f.role === 'flag-file').length, 0);
  });
});

describe('parseJob: outputs', () => {
  test('-gsplit-dwarf adds X.thinlto-native.dwo beside the object (clang 19: stem of -o)', async () => {
    const j = await job(['-g', '-gsplit-dwarf', ...tail('dir/m')]);
    assert.deepEqual(j.outputs, [
      { role: 'obj', path: 'dir/m.thinlto-native.o' },
      { role: 'dwo', path: 'dir/m.thinlto-native.dwo' },
    ]);
    const k = await job(['-gsplit-dwarf=split', '-fthinlto-index=m.o.thinlto.bc', '-c', '-o', 'out/m', 'm.o']);
    assert.deepEqual(
      k.outputs.map((o) => o.path),
      ['out/m', 'out/m.dwo'],
    );
  });

  test('-gsplit-dwarf=single or -gno-split-dwarf last: no dwo', async () => {
    for (const flags of [['-gsplit-dwarf=single'], ['-gsplit-dwarf', '-gsplit-dwarf=single'], ['-gsplit-dwarf', '-gno-split-dwarf']]) {
      const j = await job(['-g', ...flags, ...tail('m')]);
      assert.deepEqual(j.outputs, [{ role: 'obj', path: 'm.thinlto-native.o' }], flags.join(' '));
    }
    const j = await job(['-g', '-gno-split-dwarf', '-gsplit-dwarf', ...tail('m')]);
    assert.deepEqual(
      j.outputs.map((o) => o.role),
      ['obj', 'dwo'],
    );
  });

  test('-fstack-usage adds .su; -fsave-optimization-record adds .opt.yaml; -foptimization-record-file names it', async () => {
    assert.deepEqual((await job(['-fstack-usage', ...tail('m')])).outputs, [
      { role: 'obj', path: 'm.thinlto-native.o' },
      { role: 'su', path: 'm.thinlto-native.su' },
    ]);
    assert.deepEqual((await job(['-fsave-optimization-record', ...tail('m')])).outputs, [
      { role: 'obj', path: 'm.thinlto-native.o' },
      { role: 'opt-record', path: 'm.thinlto-native.opt.yaml' },
    ]);
    assert.deepEqual((await job(['-fsave-optimization-record=bitstream', ...tail('m')])).outputs[1], {
      role: 'opt-record',
      path: 'm.thinlto-native.opt.bitstream',
    });
    const j = await job(['-fsave-optimization-record', '-foptimization-record-file=rec/m.yaml', ...tail('m')]);
    assert.deepEqual(j.outputs, [
      { role: 'obj', path: 'm.thinlto-native.o' },
      { role: 'opt-record', path: 'rec/m.yaml' },
    ]);
    assert.ok(j.tokens.some((t) => t.t === 'output' && t.role === 'opt-record' && t.path === 'rec/m.yaml'));
  });

  test('the optimisation record is written as clang decides (willEmitRemarks: an option after the last -fno-save-optimization-record)', async () => {
    const records = async (flags: string[]) => (await job([...flags, ...tail('m')])).outputs.filter((o) => o.role === 'opt-record').map((o) => o.path);
    // -foptimization-record-passes= alone writes the record (clang 19 and 22).
    assert.deepEqual(await records(['-foptimization-record-passes=inline']), ['m.thinlto-native.opt.yaml']);
    assert.deepEqual(await records(['-fno-save-optimization-record', '-foptimization-record-passes=inline']), ['m.thinlto-native.opt.yaml']);
    assert.deepEqual(await records(['-foptimization-record-passes=inline', '-fno-save-optimization-record']), []);
    assert.deepEqual(await records(['-fsave-optimization-record', '-fno-save-optimization-record']), []);
    assert.deepEqual(await records(['-foptimization-record-file=rec/m.yaml', '-fno-save-optimization-record']), []);
    // The format is the last one named, even before a plain -fsave-optimization-record.
    assert.deepEqual(await records(['-fsave-optimization-record=bitstream', '-fsave-optimization-record']), ['m.thinlto-native.opt.bitstream']);
    assert.deepEqual(await records(['-foptimization-record-passes=inline', '-fsave-optimization-record=bitstream']), ['m.thinlto-native.opt.bitstream']);
  });

  test('all together, in a fixed order', async () => {
    const j = await job(['-g', '-gsplit-dwarf', '-fstack-usage', '-fsave-optimization-record', ...tail('m')]);
    assert.deepEqual(
      j.outputs.map((o) => `${o.role}:${o.path}`),
      ['obj:m.thinlto-native.o', 'dwo:m.thinlto-native.dwo', 'su:m.thinlto-native.su', 'opt-record:m.thinlto-native.opt.yaml'],
    );
  });

  test('-emit-llvm (in either order with -c) writes no .dwo and no .su', async () => {
    for (const mode of [
      ['-c', '-emit-llvm'],
      ['-emit-llvm', '-c'],
      ['-S', '-emit-llvm'],
    ]) {
      const j = await job(['-g', '-gsplit-dwarf', '-fstack-usage', '-fthinlto-index=m.o.thinlto.bc', ...mode, '-o', 'm.bc', 'm.o']);
      assert.deepEqual(j.outputs, [{ role: 'obj', path: 'm.bc' }], mode.join(' '));
    }
  });

  test('-S -gsplit-dwarf without -c: the .dwo is named after the input, in cwd', async () => {
    const j = await job(['-g', '-gsplit-dwarf', '-fthinlto-index=d/m.o.thinlto.bc', '-S', '-o', 'out/m.s', 'd/m.o']);
    assert.deepEqual(j.outputs, [
      { role: 'obj', path: 'out/m.s' },
      { role: 'dwo', path: 'm.dwo' },
    ]);
    // -S wins over -c, but with -c present the .dwo follows -o.
    const k = await job(['-g', '-gsplit-dwarf', '-fthinlto-index=m.o.thinlto.bc', '-c', '-S', '-o', 'out/m.s', 'm.o']);
    assert.deepEqual(
      k.outputs.map((o) => o.path),
      ['out/m.s', 'out/m.dwo'],
    );
  });

  test('two outputs at one path are uncacheable', async () => {
    const r = await uncacheable(['-fsave-optimization-record', '-foptimization-record-file=m.thinlto-native.o', ...tail('m')]);
    assert.equal(r.reason, 'output');
  });
});

describe('parseJob: uncacheable', () => {
  const cases: [string, string[], string][] = [
    ['no index', ['-O2', '-c', '-o', 'm.native.o', 'm.o'], 'not-backend'],
    ['a front-end compile', ['-O2', '-flto=thin', '-c', '-o', 'm.o', 'm.c'], 'not-backend'],
    ['two inputs', ['-fthinlto-index=m.o.thinlto.bc', '-c', '-o', 'm.native.o', 'm.o', 'n.o'], 'inputs'],
    ['no input', ['-fthinlto-index=m.o.thinlto.bc', '-c', '-o', 'm.native.o'], 'inputs'],
    ['no -o', ['-fthinlto-index=m.o.thinlto.bc', '-c', 'm.o'], 'output'],
    ['-o -', ['-fthinlto-index=m.o.thinlto.bc', '-c', '-o', '-', 'm.o'], 'output'],
    ['-o /dev/null', ['-fthinlto-index=m.o.thinlto.bc', '-c', '-o', '/dev/null', 'm.o'], 'output'],
    ['-o without value', ['-fthinlto-index=m.o.thinlto.bc', '-c', 'm.o', '-o'], 'bad-args'],
    ['two -o', ['-fthinlto-index=m.o.thinlto.bc', '-c', '-o', 'a.o', '-o', 'b.o', 'm.o'], 'multiple-output'],
    ['-o and --output=', ['-fthinlto-index=m.o.thinlto.bc', '-c', '-o', 'a.o', '--output=b.o', 'm.o'], 'multiple-output'],
    ['-o and --output', ['-fthinlto-index=m.o.thinlto.bc', '-c', '-o', 'a.o', '--output', 'b.o', 'm.o'], 'multiple-output'],
    ['-Xclang -o', ['-Xclang', '-o', '-Xclang', 'b.o', ...tail('m')], 'unsupported-flag'],
    ['--rsp-quoting=windows', ['--rsp-quoting=windows', ...tail('m')], 'unsupported-flag'],
    ['-Xclang --config=', ['-Xclang', '--config=x.cfg', ...tail('m')], 'unsupported-flag'],
    ['-E', [...tail('m'), '-E'], 'unsupported-flag'],
    ['-mllvm -lto-embed-bitcode=', ['-mllvm', '-lto-embed-bitcode=post-merge-pre-opt', ...tail('m')], 'unsupported-flag'],
    ['-mllvm= --lto-embed-bitcode=', ['-mllvm=--lto-embed-bitcode=post-merge-pre-opt', ...tail('m')], 'unsupported-flag'],
    ['-mllvm -lto-embed-bitcode VALUE', ['-mllvm', '-lto-embed-bitcode', '-mllvm', 'post-merge-pre-opt', ...tail('m')], 'unsupported-flag'],
    ['-Xclang -mllvm -Xclang -lto-embed-bitcode=', ['-Xclang', '-mllvm', '-Xclang', '-lto-embed-bitcode=post-merge-pre-opt', ...tail('m')], 'unsupported-flag'],
    ['-save-temps', ['-save-temps', ...tail('m')], 'unsupported-flag'],
    ['-save-temps=obj', ['-save-temps=obj', ...tail('m')], 'unsupported-flag'],
    ['-ftime-trace', ['-ftime-trace', ...tail('m')], 'unsupported-flag'],
    ['-ftime-trace=dir', ['-ftime-trace=dir', ...tail('m')], 'unsupported-flag'],
    ['-###', ['-###', ...tail('m')], 'unsupported-flag'],
    ['--config-user-dir=', ['--config-user-dir=/tmp/cfg', ...tail('m')], 'unsupported-flag'],
    ['-fno-integrated-as', ['-fno-integrated-as', ...tail('m')], 'unsupported-flag'],
    ['-no-integrated-as', ['-no-integrated-as', ...tail('m')], 'unsupported-flag'],
    ['-fembed-bitcode=all', ['-fembed-bitcode=all', ...tail('m')], 'unsupported-flag'],
    ['-Xclang -fembed-bitcode=all', ['-Xclang', '-fembed-bitcode=all', ...tail('m')], 'unsupported-flag'],
    ['-Xclang=-ftime-trace=dir', ['-Xclang=-ftime-trace=dir', ...tail('m')], 'unsupported-flag'],
    ['-vfsoverlay F', ['-vfsoverlay', 'ov.yaml', ...tail('m')], 'unsupported-flag'],
    ['-vfsoverlayF', ['-vfsoverlayov.yaml', ...tail('m')], 'unsupported-flag'],
    ['--vfsoverlay F', ['--vfsoverlay', 'ov.yaml', ...tail('m')], 'unsupported-flag'],
    ['-ivfsoverlay F', ['-ivfsoverlay', 'ov.yaml', ...tail('m')], 'unsupported-flag'],
    ['-Xclang -ivfsoverlay -Xclang F', ['-Xclang', '-ivfsoverlay', '-Xclang', 'ov.yaml', ...tail('m')], 'unsupported-flag'],
    ['a Windows target', ['--target=x86_64-pc-windows-msvc', ...tail('m')], 'windows-target'],
    ['a MinGW target (separate)', ['-target', 'x86_64-w64-mingw32', ...tail('m')], 'windows-target'],
    ['-gcodeview', ['-gcodeview', ...tail('m')], 'windows-target'],
    ['--driver-mode=cl', ['--driver-mode=cl', ...tail('m')], 'windows-target'],
    ['--config-system-dir=', ['--config-system-dir=/usr/lib/llvm-19/bin', ...tail('m')], 'unsupported-flag'],
    ['-v', ['-v', ...tail('m')], 'unsupported-flag'],
    ['stdin input', ['-fthinlto-index=m.o.thinlto.bc', '-c', '-o', 'm.native.o', '-'], 'unsupported-flag'],
    ['two -fthinlto-index', ['-fthinlto-index=a.bc', ...tail('m')], 'multiple-index'],
    ['empty -fthinlto-index=', ['-fthinlto-index=', '-c', '-o', 'm.native.o', 'm.o'], 'bad-args'],
    ['no -c, -S or -emit-llvm', ['-fthinlto-index=m.o.thinlto.bc', '-o', 'm.native.o', 'm.o'], 'not-compile'],
    ['-fplugin= without a /', ['-fplugin=libplug.so', ...tail('m')], 'plugin-unresolved'],
    ['-fpass-plugin= without a /', ['-fpass-plugin=LLVMPolly.so', ...tail('m')], 'plugin-unresolved'],
    ['-Xclang -load -Xclang without a /', ['-Xclang', '-load', '-Xclang', 'libplug.so', ...tail('m')], 'plugin-unresolved'],
    ['-Xclang=-load -Xclang= without a /', ['-Xclang=-load', '-O3', '-Xclang=libplug.so', ...tail('m')], 'plugin-unresolved'],
    ['-Xclang -fpass-plugin= without a /', ['-Xclang', '-fpass-plugin=libplug.so', ...tail('m')], 'plugin-unresolved'],
  ];
  for (const [name, args, reason] of cases) {
    test(`${name} → ${reason}`, async () => {
      const r = await uncacheable(args);
      assert.equal(r.reason, reason);
      assert.ok(r.detail.length > 0);
    });
  }

  test('the detail names the flag', async () => {
    const r = await uncacheable(['-save-temps', ...tail('m')]);
    assert.match(r.detail, /-save-temps/);
  });
});

describe('parseJob: options that write, print or run what a hit would not reproduce', () => {
  // Each measured with clang 19 and 22 (test/e2e/manifest.test.ts "writes, prints or runs").
  const refused: [string, string[]][] = [
    ['-ftime-report', ['-ftime-report']],
    ['-ftime-report=per-pass', ['-ftime-report=per-pass']],
    ['-ftime-report-json', ['-ftime-report-json']],
    ['-Xclang -ftime-report', ['-Xclang', '-ftime-report']],
    ['-Xclang=-ftime-report=per-pass-run', ['-Xclang=-ftime-report=per-pass-run']],
    ['-save-stats', ['-save-stats']],
    ['-save-stats=obj', ['-save-stats=obj']],
    ['--save-stats=cwd', ['--save-stats=cwd']],
    ['-Xclang -stats-file=F', ['-Xclang', '-stats-file=m.stats.json']],
    ['-Xclang -stats-file-timers', ['-Xclang', '-stats-file-timers']],
    ['--save-temps', ['--save-temps']],
    ['--save-temps=obj', ['--save-temps=obj']],
    ['--verbose', ['--verbose']],
    ['-dumpdir D', ['-dumpdir', 'aux/', '-gsplit-dwarf']],
    ['-gen-cdb-fragment-path D', ['-gen-cdb-fragment-path', 'cdb']],
    ['-serialize-diagnostics F', ['-serialize-diagnostics', 'm.dia']],
    ['--serialize-diagnostics F', ['--serialize-diagnostics', 'm.dia']],
    ['-Xclang -serialize-diagnostic-file -Xclang F', ['-Xclang', '-serialize-diagnostic-file', '-Xclang', 'm.dia']],
    ['-Xclang -diagnostic-log-file -Xclang F', ['-Xclang', '-diagnostic-log-file', '-Xclang', 'm.log']],
    ['-Xclang -split-dwarf-output -Xclang F', ['-Xclang', '-split-dwarf-output', '-Xclang', 'x.dwo', '-Xclang', '-split-dwarf-file', '-Xclang', 'x.dwo']],
    ['-Xclang -stack-usage-file -Xclang F', ['-Xclang', '-stack-usage-file', '-Xclang', 'x.su']],
    ['-Xclang -opt-record-file -Xclang F', ['-Xclang', '-opt-record-file', '-Xclang', 'x.yaml']],
    ['-Xclang -as-secure-log-file -Xclang F', ['-Xclang', '-as-secure-log-file', '-Xclang', 'log']],
    ['-mllvm -info-output-file=F', ['-mllvm', '-info-output-file=info.txt']],
    ['-mllvm --info-output-file -mllvm F', ['-mllvm', '--info-output-file', '-mllvm', 'info.txt']],
    ['-mllvm=-info-output-file=F', ['-mllvm=-info-output-file=info.txt']],
    ['-Xclang -mllvm -Xclang -info-output-file=F', ['-Xclang', '-mllvm', '-Xclang', '-info-output-file=info.txt']],
    ['-mllvm -ir-dump-directory=D', ['-mllvm', '-ir-dump-directory=dumps', '-mllvm', '-print-after-all']],
    ['-mllvm -opt-bisect-print-ir-path=F', ['-mllvm', '-opt-bisect-print-ir-path=b.ll', '-mllvm', '-opt-bisect-limit=3']],
    ['-mllvm -polly-dump-after', ['-mllvm', '-polly', '-mllvm', '-polly-dump-after']],
    ['-mllvm -polly-dump-before-file=F', ['-mllvm', '-polly', '-mllvm', '-polly-dump-before-file=p.ll']],
    ['-mllvm -polly-import', ['-mllvm', '-polly', '-mllvm', '-polly-import']],
    ['-mllvm -polly-import-jscop-dir=D', ['-mllvm', '-polly', '-mllvm', '-polly-import-jscop-dir=schedules']],
    ['-mllvm -polly-print-import-jscop', ['-mllvm', '-polly', '-mllvm', '-polly-print-import-jscop']],
    ['-mllvm -polly-export', ['-mllvm', '-polly', '-mllvm', '-polly-export']],
    ['-mllvm -polly-dot-only', ['-mllvm', '-polly', '-mllvm', '-polly-dot-only']],
    ['-mllvm -polly-show', ['-mllvm', '-polly', '-mllvm', '-polly-show']],
    ['-mllvm -attributor-dump-dep-graph', ['-mllvm', '-attributor-enable=all', '-mllvm', '-attributor-dump-dep-graph']],
    ['-mllvm -attributor-depgraph-dot-filename-prefix=P', ['-mllvm', '-attributor-depgraph-dot-filename-prefix=dg']],
    ['-mllvm -exec-on-ir-change=P', ['-mllvm', '-exec-on-ir-change=./record-ir']],
    ['-mllvm -print-changed=dot-cfg', ['-mllvm', '-print-changed=dot-cfg']],
    ['-mllvm -print-changed=dot-cfg-quiet', ['-mllvm', '-print-changed=dot-cfg-quiet']],
    ['-mllvm -print-changed=diff', ['-mllvm', '-print-changed=diff']],
    ['-mllvm -print-changed=cdiff-quiet', ['-mllvm', '-print-changed=cdiff-quiet']],
    ['-mllvm -print-changed-diff-path=P', ['-mllvm', '-print-changed-diff-path=/bin/true']],
    ['-mllvm -view-bfi-func-name=F', ['-mllvm', '-view-bfi-func-name=f', '-mllvm', '-view-block-freq-propagation-dags=fraction']],
    ['-mllvm -pgo-view-counts=graph', ['-mllvm', '-pgo-view-counts=graph']],
    ['-mllvm -regalloc-evict-interactive-channel-base=B', ['-mllvm', '-regalloc-enable-advisor=release', '-mllvm', '-regalloc-evict-interactive-channel-base=ch']],
    ['-mllvm -inliner-interactive-channel-base=B', ['-mllvm', '-inliner-interactive-channel-base=ch']],
    ['-mllvm -debug-pass=Executions', ['-mllvm', '-debug-pass=Executions']],
    ['-mllvm --debug-pass=Details', ['-mllvm', '--debug-pass=Details']],
    ['-mllvm -debug-pass -mllvm V', ['-mllvm', '-debug-pass', '-mllvm', 'Structure']],
    ['-Xclang -mdebug-pass -Xclang V', ['-Xclang', '-mdebug-pass', '-Xclang', 'Executions']],
    ['-mllvm -print-inst-addrs', ['-mllvm', '-print-after=instcombine', '-mllvm', '-print-inst-addrs']],
    ['-mllvm -print-mi-addrs=true', ['-mllvm', '-print-after-all', '-mllvm', '-print-mi-addrs=true']],
    // Expanded by LLVM's option parser or by cc1, after the driver: options the key never reads.
    ['-mllvm=@F', ['-mllvm=@llvm.opts']],
    ['-Xclang=@F', ['-Xclang=@cc1.opts']],
    ['-Xclang=-mllvm -Xclang=@F', ['-Xclang=-mllvm', '-Xclang=@llvm.opts']],
  ];
  for (const [name, flags] of refused) {
    test(`${name} → unsupported-flag`, async () => {
      const r = await uncacheable([...flags, ...tail('m')]);
      assert.equal(r.reason, 'unsupported-flag');
    });
  }

  test('LLVM options that print the same text on every run stay cacheable', async () => {
    for (const flags of [
      ['-mllvm', '-print-after=instcombine'],
      ['-mllvm', '-print-changed'],
      ['-mllvm', '-print-changed=quiet'],
      ['-mllvm', '-opt-bisect-limit=3'],
      ['-mllvm', '-debug-pass=Structure'],
      ['-mllvm', '-debug-pass=Arguments'],
      ['-mllvm', '-polly', '-mllvm', '-polly-report'],
      ['-mllvm', '-attributor-enable=all', '-mllvm', '-attributor-print-dep'],
      ['-Rpass=inline'],
      ['-fsave-optimization-record'],
      ['-fstack-usage'],
      ['-Xclang', '-dependency-file', '-Xclang', 'm.d'],
    ])
      await job([...flags, ...tail('m')]);
  });
});

describe('parseJob: plugins', () => {
  const pluginsOf = (j: Job): [string, string][] => j.tokens.flatMap((t): [string, string][] => (t.t === 'flag' && t.plugin !== undefined ? [[t.v, t.plugin]] : []));

  test('every spelling clang hands to dlopen marks the token naming the file', async () => {
    const j = await job([
      '-fplugin=./p1.so',
      '-fpass-plugin=/opt/p2.so',
      '-Xclang',
      '-fpass-plugin=sub/p3.so',
      '-Xclang=-fpass-plugin=sub/p4.so',
      // cc1's -load takes the next -Xclang value, wherever it stands.
      '-Xclang',
      '-load',
      '-O2',
      '-Xclang',
      'sub/p5.so',
      '-Xclang=-load',
      '-Xclang=sub/p6.so',
      '-Xclang',
      '-add-plugin',
      '-Xclang',
      'print-fns',
      '-fplugin-arg-print-fns-x',
      ...tail('m'),
    ]);
    assert.deepEqual(pluginsOf(j), [
      ['-fplugin=./p1.so', './p1.so'],
      ['-fpass-plugin=/opt/p2.so', '/opt/p2.so'],
      ['-fpass-plugin=sub/p3.so', 'sub/p3.so'],
      ['-Xclang=-fpass-plugin=sub/p4.so', 'sub/p4.so'],
      ['sub/p5.so', 'sub/p5.so'],
      ['-Xclang=sub/p6.so', 'sub/p6.so'],
    ]);
  });

  test("-load's value is taken whatever it looks like; the value after it is not a plugin", async () => {
    const j = await job(['-Xclang', '-load', '-Xclang', './-load', '-Xclang', '-load-x', ...tail('m')]);
    assert.deepEqual(pluginsOf(j), [['./-load', './-load']]);
    const r = await uncacheable(['-Xclang', '-load', '-Xclang', '-load', '-Xclang', './x.so', ...tail('m')]);
    assert.equal(r.reason, 'plugin-unresolved');
  });
});

describe('response files', () => {
  test('@rsp expands in place and is recorded with its content', async () => {
    const cwd = tempDir();
    fs.writeFileSync(join(cwd, 'flags.rsp'), '-O2 -mcmodel=kernel\n-DFOO=1\n');
    const j = await job(['@flags.rsp', ...tail('m')], cwd);
    assert.deepEqual(flagsOf(j).slice(0, 2), ['-O2', '-mcmodel=kernel']);
    assert.deepEqual(droppedOf(j), ['-DFOO=1']);
    assert.deepEqual(j.responseFiles, [{ path: 'flags.rsp', content: Buffer.from('-O2 -mcmodel=kernel\n-DFOO=1\n') }]);
  });

  test('the whole job in a response file', async () => {
    const cwd = tempDir();
    fs.writeFileSync(join(cwd, 'job.rsp'), tail('m').join(' '));
    const j = await job(['@job.rsp'], cwd);
    assert.equal(j.input, 'm.o');
    assert.equal(j.index, 'm.o.thinlto.bc');
    assert.deepEqual(j.outputs, [{ role: 'obj', path: 'm.thinlto-native.o' }]);
  });

  test('nested response files resolve relative to cwd, in order', async () => {
    const cwd = tempDir();
    fs.mkdirSync(join(cwd, 'r'));
    fs.writeFileSync(join(cwd, 'r/outer.rsp'), '-O1 @r/inner.rsp -O3');
    fs.writeFileSync(join(cwd, 'r/inner.rsp'), '-O2');
    const j = await job(['@r/outer.rsp', ...tail('m')], cwd);
    assert.deepEqual(flagsOf(j).slice(0, 3), ['-O1', '-O2', '-O3']);
    assert.deepEqual(
      j.responseFiles.map((r) => r.path),
      ['r/outer.rsp', 'r/inner.rsp'],
    );
  });

  test('quoted arguments and escapes', async () => {
    const cwd = tempDir();
    fs.writeFileSync(join(cwd, 'q.rsp'), `"-fprofile-sample-use=my prof.txt" -o 'out dir/m.native.o' -fthinlto-index=m.o.thinlto.bc -c my\\ input.o`);
    const j = await job(['@q.rsp'], cwd);
    assert.equal(j.input, 'my input.o');
    assert.deepEqual(j.outputs, [{ role: 'obj', path: 'out dir/m.native.o' }]);
    assert.deepEqual(
      filesOf(j).find((f) => f.role === 'flag-file'),
      { t: 'file', v: '-fprofile-sample-use=', path: 'my prof.txt', role: 'flag-file' },
    );
  });

  test('unreadable response file → rsp-unreadable', async () => {
    const r = await uncacheable(['@nope.rsp', ...tail('m')]);
    assert.equal(r.reason, 'rsp-unreadable');
    assert.match(r.detail, /nope\.rsp/);
    const cwd = tempDir();
    fs.mkdirSync(join(cwd, 'adir.rsp'));
    assert.equal((await uncacheable(['@adir.rsp', ...tail('m')], cwd)).reason, 'rsp-unreadable');
  });

  test('a response file that is not UTF-8 → rsp-unreadable (a lossy decode would name files clang does not open)', async () => {
    const cwd = tempDir();
    fs.writeFileSync(join(cwd, 'latin1.rsp'), Buffer.concat([Buffer.from('-fprofile-sample-use=caf'), Buffer.from([0xe9]), Buffer.from('.prof')]));
    const r = await uncacheable(['@latin1.rsp', ...tail('m')], cwd);
    assert.equal(r.reason, 'rsp-unreadable');
    assert.match(r.detail, /not valid UTF-8/);
  });

  test('a nested unreadable response file → rsp-unreadable', async () => {
    const cwd = tempDir();
    fs.writeFileSync(join(cwd, 'outer.rsp'), '-O2 @missing.rsp');
    assert.equal((await uncacheable(['@outer.rsp', ...tail('m')], cwd)).reason, 'rsp-unreadable');
  });

  test('self-recursion hits the depth cap → rsp-depth', async () => {
    const cwd = tempDir();
    fs.writeFileSync(join(cwd, 'loop.rsp'), '-O2 @loop.rsp');
    const r = await uncacheable(['@loop.rsp', ...tail('m')], cwd);
    assert.equal(r.reason, 'rsp-depth');
  });

  test('16 levels of nesting are fine, 17 are not', async () => {
    const cwd = tempDir();
    for (let i = 0; i < 17; i++) fs.writeFileSync(join(cwd, `r${i}.rsp`), i === 16 ? '-O2' : `@r${i + 1}.rsp`);
    // @r1.rsp reaches r16 through 16 files; @r0.rsp needs 17.
    const ok = await job(['@r1.rsp', ...tail('m')], cwd);
    assert.equal(ok.responseFiles.length, 16);
    assert.equal((await uncacheable(['@r0.rsp', ...tail('m')], cwd)).reason, 'rsp-depth');
  });

  test('a lone @ is an argument, not a response file', async () => {
    const r = await uncacheable(['@', ...tail('m')]);
    assert.equal(r.reason, 'inputs');
  });
});

describe('tokenizeGnu', () => {
  const cases: [string, string[]][] = [
    ['', []],
    ['  \n\t ', []],
    ['-O2 -c', ['-O2', '-c']],
    ['-O2\n-c\r\n-g\t-x', ['-O2', '-c', '-g', '-x']],
    ['"a b" c', ['a b', 'c']],
    ["'a b' c", ['a b', 'c']],
    ['a"b c"d', ['ab cd']],
    ['"it\'s"', ["it's"]],
    [`'say "hi"'`, ['say "hi"']],
    ['a\\ b', ['a b']],
    ['a\\\\b', ['a\\b']],
    ['"a\\"b"', ['a"b']],
    // As llvm::cl::TokenizeGNUCommandLine (checked against clang-19 -###): backslash escapes
    // inside single quotes too, and an empty quoted argument is dropped.
    ["'x\\y'", ['xy']],
    ['a "" b', ['a', 'b']],
    ["-DE='' x", ['-DE=', 'x']],
    // Only space, tab, CR and LF separate: clang keeps \v and U+00A0 inside an argument.
    ['a\vb c', ['a\vb', 'c']],
    ['a\u00a0b', ['a\u00a0b']],
    ['trailing\\', ['trailing\\']],
    ['"unterminated arg', ['unterminated arg']],
  ];
  for (const [text, want] of cases) {
    test(JSON.stringify(text), () => assert.deepEqual(tokenizeGnu(text), want));
  }
});

describe('fileCandidates', () => {
  test('a value is a candidate itself; each suffix after = or , is one, and so is each element of a comma list', () => {
    assert.deepEqual(fileCandidates('data.txt'), ['data.txt']);
    assert.deepEqual(fileCandidates('-some-opt=data.txt'), ['data.txt']);
    assert.deepEqual(fileCandidates('-a=b,c'), ['b,c', 'b', 'c']);
    assert.deepEqual(fileCandidates('x=y=z'), ['x=y=z', 'y=z', 'z']);
    assert.deepEqual(fileCandidates('f.txt,3'), ['f.txt,3', 'f.txt', '3']);
    assert.deepEqual(fileCandidates('-a=b,,c'), ['b,,c', 'b', ',c', 'c']);
    assert.deepEqual(fileCandidates('-O2'), []);
    assert.deepEqual(fileCandidates('-f='), []);
    assert.deepEqual(fileCandidates('-Wl,--gc-sections'), ['--gc-sections']);
    assert.deepEqual(fileCandidates('-Wp,-MMD,dir/.a.o.d'), ['-MMD,dir/.a.o.d', '-MMD', 'dir/.a.o.d']);
  });
});

test('option table: every entry is reachable (none shadowed by another) and flag bits are consistent', async () => {
  const { OPTIONS, OptFlag, lookupOption } = await import('../../src/key/parseJob.js');
  for (const [name, flags] of OPTIONS) {
    assert.equal(lookupOption(name)?.name, name, `${name} resolves to itself`);
    if (flags & OptFlag.JOINED) assert.equal(lookupOption(`${name}x`)?.name, name, `${name}x resolves to ${name}`);
    if (flags & OptFlag.FILE) assert.ok(flags & OptFlag.JOINED, `${name}: a file-naming entry takes a joined value`);
    assert.ok(!(flags & OptFlag.DROP && flags & OptFlag.UNCACHEABLE), `${name}: dropped and uncacheable at once`);
    if (flags & OptFlag.SETTING) {
      assert.ok(!(flags & (OptFlag.FILE | OptFlag.DROP | OptFlag.UNCACHEABLE)), `${name}: a setting is kept and names no file`);
      assert.ok(flags & (OptFlag.JOINED | OptFlag.SEPARATE), `${name}: a setting has a value`);
    }
  }
});

test('option table: lookupOption finds what trying every joined prefix, longest first, finds', async () => {
  const { OPTIONS, OptFlag, lookupOption } = await import('../../src/key/parseJob.js');
  const joined = [...OPTIONS].filter(([, f]) => f & OptFlag.JOINED).sort((a, b) => b[0].length - a[0].length);
  const scan = (a: string) => {
    const exact = OPTIONS.get(a);
    if (exact !== undefined) return { name: a, flags: exact };
    for (const [name, flags] of joined) if (a.length > name.length && a.startsWith(name)) return { name, flags, joined: a.slice(name.length) };
    return undefined;
  };
  const args = new Set<string>(['', '-', '--', 'x', 'foo.o', '@rsp', '-Wl,--gc-sections', '-mllvm=-x', '-fthinlto-index=a.bc', '-I', '-Iinclude']);
  for (const name of OPTIONS.keys()) {
    // The name, cut short, with a joined value, with an `=` value, and with another name's tail.
    for (const a of [name, name.slice(0, -1), `${name}x`, `${name}=1`, `${name}${name}`, `${name.slice(0, 2)}zz`]) args.add(a);
  }
  let joinedHits = 0;
  for (const a of args) {
    const want = scan(a);
    assert.deepEqual(lookupOption(a), want, a);
    if (want?.joined !== undefined) joinedHits++;
  }
  assert.ok(joinedHits > 100, `${joinedHits} arguments resolved by a joined prefix`);
});
