import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { llvmTool } from '../../src/demo/thinBuild.js';
import { readElf, traceLoader } from '../../src/key/loaderTrace.js';
import { Uncacheable } from '../../src/key/uncacheable.js';
import { OPAQUE_ENV_PREFIX } from '../../src/util/opaqueEnv.js';
import { CacheEnv, CLIENT, tempDir } from '../support/env.js';

/**
 * The libraries the dynamic loader maps into clang decide the code it generates, and so does
 * where the loader finds each: the directories it searched before are part of the memo's checks
 * and of the toolchain's identity. Real clang 19 / lld 19, through the real client and daemon,
 * compared against direct clang.
 */

/** An absolute path: the loader is traced on the file itself. */
const CC = execFileSync('sh', ['-c', `command -v ${llvmTool('clang')}`], { encoding: 'utf8' }).trim();
const LLD = llvmTool('ld.lld');
const PATH = process.env.PATH ?? '/usr/bin:/bin';
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 2200));

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env) {
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8' });
  return { status: r.status ?? 128, stderr: r.stderr };
}

describe("the loader's search", () => {
  const dirs: string[] = [];
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  const scratch = (): string => {
    const d = tempDir('loader-trace');
    dirs.push(d);
    return d;
  };

  test("clang's interpreter is the loader its trace lists", async () => {
    const real = realpathSync(CC);
    const elf = await readElf(real);
    assert.ok(elf?.interp, 'a dynamic executable names its loader');
    const t = await traceLoader(real, [], { PATH });
    assert.equal(t.fallback, false);
    assert.ok(t.libs.includes(elf.interp), `${elf.interp} among ${t.libs.join(', ')}`);
  });

  test('an absent LD_LIBRARY_PATH directory is watched once, as its outermost absent ancestor; no library found is watched', async () => {
    const top = join(scratch(), 'none');
    const t = await traceLoader(realpathSync(CC), [], { PATH, LD_LIBRARY_PATH: join(top, 'a', 'lib') });
    assert.deepEqual(
      t.watched.filter((w) => w.path.startsWith(top)),
      [{ path: top, kind: 'dir', state: '-' }],
    );
    for (const lib of t.libs) assert.ok(!t.watched.some((w) => w.path === lib), lib);
  });

  test('a relative directory on the search is uncacheable (it resolves against the job directory)', async () => {
    const env = (e: unknown) => e instanceof Uncacheable && e.reason === 'environment';
    await assert.rejects(traceLoader(realpathSync(CC), [], { PATH, LD_LIBRARY_PATH: 'lib' }), env);
    await assert.rejects(traceLoader(realpathSync(CC), [], { PATH, LD_LIBRARY_PATH: '/usr/lib::/lib' }), env);
    await assert.rejects(traceLoader(realpathSync(CC), [], { PATH, LD_PRELOAD: 'sub/x.so' }), env);
  });

  test('an empty LD_LIBRARY_PATH element (a trailing colon) is searched from the given directory: its candidates are watched there, not the directory', async () => {
    const cwd = tempDir('loader-cwd');
    const t = await traceLoader(realpathSync(CC), [], { PATH, LD_LIBRARY_PATH: '/usr/lib/nonexistent-ltocache:' }, cwd);
    assert.ok(t.libs.length > 0);
    const inCwd = t.watched.filter((w) => w.path.startsWith(`${cwd}/`));
    assert.ok(
      inCwd.some((w) => w.kind === 'file' && w.state === '-' && /\/lib[^/]*\.so[.\d]*$/.test(w.path)),
      JSON.stringify(inCwd),
    );
    assert.ok(
      inCwd.some((w) => w.path === join(cwd, 'glibc-hwcaps') && w.state === '-'),
      JSON.stringify(inCwd),
    );
    assert.ok(!t.watched.some((w) => w.path === cwd), 'the working directory itself is not watched');
    rmSync(cwd, { recursive: true, force: true });
  });

  test('a loader variable that is not UTF-8 is uncacheable, and a trace that could not run is an error, not an empty list', async () => {
    const env = (e: unknown) => e instanceof Uncacheable && e.reason === 'environment';
    await assert.rejects(traceLoader(realpathSync(CC), [], { PATH, LD_LIBRARY_PATH: `${OPAQUE_ENV_PREFIX}2f6f7074e9` }), env);
    await assert.rejects(traceLoader(realpathSync(CC), [], { PATH: `${OPAQUE_ENV_PREFIX}2fe9` }), env);
    // Before, a program that could not be started read as a static one: no libraries to key.
    await assert.rejects(traceLoader('/nonexistent/clang', [], { PATH }), (e: unknown) => !(e instanceof Uncacheable));
  });

  test("without the loader's account of its search: LD_LIBRARY_PATH, the program's and each library's directory", async () => {
    const d = scratch();
    const ldp = join(d, 'ldp');
    mkdirSync(ldp);
    // A static program ignores LD_DEBUG and prints what a loader without it would.
    writeFileSync(join(d, 'fake.c'), '#include <stdio.h>\nint main(void) { puts("\\tlibfoo.so.1 => /nonexistent-lt/lib/libfoo.so.1 (0x00007f0000000000)"); return 0; }\n');
    const cc = run(CC, ['-static', 'fake.c', '-o', 'fake'], d);
    if (cc.status !== 0) assert.fail(`static link: ${cc.stderr}`);
    await settle();
    const t = await traceLoader(join(d, 'fake'), [], { PATH, LD_LIBRARY_PATH: ldp });
    assert.equal(t.fallback, true);
    assert.deepEqual(
      t.watched.map((w) => [w.path, w.state === '-']).sort(),
      [
        ['/nonexistent-lt/lib', true],
        [d, false],
        [ldp, false],
      ].sort(),
    );
    await assert.rejects(traceLoader(join(d, 'fake'), [], { PATH, LD_LIBRARY_PATH: `${ldp}:` }), (e) => e instanceof Uncacheable && e.reason === 'environment');
  });
});

describe('through the client and the daemon', () => {
  let cache: CacheEnv;
  let dir: string;
  before(() => {
    cache = new CacheEnv('loader');
    cache.start();
    dir = tempDir('loader');
    writeFileSync(join(dir, 'a.c'), 'int helper(int);\nint main(int argc, char **argv) { (void)argv; return helper(argc) + 1; }\n');
    writeFileSync(join(dir, 'b.c'), 'int helper(int x) { int s = 0; for (int i = 0; i < x; i++) s += i * x; return s; }\n');
    for (const m of ['a', 'b']) assert.equal(run(CC, ['-O2', '-flto=thin', '-c', `${m}.c`, '-o', `${m}.o`], dir).status, 0);
    assert.equal(run(LLD, ['-r', '--thinlto-index-only=list', 'a.o', 'b.o', '-o', 'tl.o'], dir).status, 0);
  });
  after(() => {
    cache.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  const args = (extra: string[], out: string): string[] => ['-O2', ...extra, '-x', 'ir', '-fno-lto', '-fthinlto-index=b.o.thinlto.bc', '-c', '-o', out, 'b.o'];

  /** The job through ltocache: the stats it moved and the object it left. */
  function cached(env: Record<string, string>, extra: string[] = []) {
    const a = cache.stats();
    const r = run(CLIENT, [CC, ...args(extra, 'b.native.o')], dir, { ...cache.env, ...env });
    assert.equal(r.status, 0, r.stderr);
    const b = cache.stats();
    return {
      hits: b.hits - a.hits,
      misses: b.misses - a.misses,
      uncacheable: b.uncacheable - a.uncacheable,
      object: readFileSync(join(dir, 'b.native.o')),
    };
  }

  function direct(env: Record<string, string>, extra: string[] = []): Buffer {
    const r = run(CC, args(extra, 'b.direct.o'), dir, { ...process.env, ...env });
    assert.equal(r.status, 0, r.stderr);
    return readFileSync(join(dir, 'b.direct.o'));
  }

  test('a library that appears in an LD_LIBRARY_PATH directory: the next job misses', async () => {
    const ldp = join(dir, 'ldp');
    mkdirSync(ldp);
    const env = { LD_LIBRARY_PATH: ldp };
    await settle();
    assert.equal(cached(env).misses, 1);
    assert.equal(cached(env).hits, 1);
    // One of libLLVM's own dependencies, found through ld.so.cache: a copy is harmless to clang.
    const lib = (await traceLoader(realpathSync(CC), [], { PATH })).libs.find((l) => /\/lib(zstd|z|xml2|edit|ffi)\.so\.\d+$/.test(l));
    if (!lib) assert.fail("no system library among clang's");
    copyFileSync(lib, join(ldp, lib.slice(dirname(lib).length + 1)));
    await settle();
    const after = cached(env);
    assert.deepEqual([after.hits, after.misses], [0, 1]);
    assert.ok(after.object.equals(direct(env)));
  });

  test('LD_LIBRARY_PATH with a trailing colon: cached, and a library that appears in the job directory makes the next job miss', async () => {
    const env = { LD_LIBRARY_PATH: `${join(dir, 'none')}:` };
    await settle();
    assert.equal(cached(env).uncacheable, 0);
    assert.equal(cached(env).hits, 1);
    const lib = (await traceLoader(realpathSync(CC), [], { PATH })).libs.find((l) => /\/lib(zstd|z|xml2|edit|ffi)\.so\.\d+$/.test(l));
    if (!lib) assert.fail("no system library among clang's");
    const copy = join(dir, lib.slice(dirname(lib).length + 1));
    copyFileSync(lib, copy);
    try {
      await settle();
      const after = cached(env);
      assert.deepEqual([after.hits, after.misses], [0, 1]);
      assert.ok(after.object.equals(direct(env)));
    } finally {
      rmSync(copy);
    }
  });

  /**
   * plug/plugin.so needs libhelper.so (RUNPATH $ORIGIN), whose constructor sets an LLVM option
   * that changes the code: h4.so aligns functions to 4 bytes, h8.so to 8.
   */
  let plug: string | undefined;
  async function plugin(): Promise<string> {
    if (plug) return plug;
    const d = join(dir, 'plug');
    mkdirSync(d);
    writeFileSync(
      join(d, 'helper.c'),
      'void LLVMParseCommandLineOptions(int argc, const char *const *argv, const char *Overview);\n' +
        '__attribute__((constructor)) static void init(void) {\n' +
        '  const char *argv[] = {"plug", "-align-all-functions=" ALIGN};\n' +
        '  LLVMParseCommandLineOptions(2, argv, 0);\n}\n',
    );
    writeFileSync(join(d, 'main.c'), 'int plug_marker;\n');
    for (const [so, align] of [
      ['h4.so', '4'],
      ['h8.so', '8'],
    ] as const)
      assert.equal(run(CC, ['-shared', '-fPIC', `-DALIGN="${align}"`, 'helper.c', '-o', so], d).status, 0);
    copyFileSync(join(d, 'h4.so'), join(d, 'libhelper.so'));
    assert.equal(run(CC, ['-shared', '-fPIC', 'main.c', '-o', 'plugin.so', '-L.', '-lhelper', '-Wl,-rpath,$ORIGIN'], d).status, 0);
    await settle();
    return (plug = d);
  }

  test("a library a plugin loads changes: the next job misses and gets clang's object", async () => {
    const d = await plugin();
    const flag = ['-fplugin=plug/plugin.so'];
    const first = cached({}, flag);
    assert.equal(first.misses, 1);
    assert.equal(cached({}, flag).hits, 1);
    const before = direct({}, flag);
    assert.ok(first.object.equals(before));
    copyFileSync(join(d, 'h8.so'), join(d, 'libhelper.so'));
    const after = cached({}, flag);
    assert.deepEqual([after.hits, after.misses], [0, 1]);
    const now = direct({}, flag);
    assert.ok(!now.equals(before), 'the library changes the object');
    assert.ok(after.object.equals(now));
  });

  test('a plugin named without a / is found by the loader, not the key: uncacheable (plugin-unresolved)', async () => {
    const env = { LD_LIBRARY_PATH: await plugin() };
    const flag = ['-fplugin=libhelper.so'];
    const a = cache.stats().uncacheable_by_reason['plugin-unresolved'] ?? 0;
    const r = cached(env, flag);
    assert.deepEqual([r.hits, r.misses, r.uncacheable], [0, 0, 1]);
    assert.equal((cache.stats().uncacheable_by_reason['plugin-unresolved'] ?? 0) - a, 1);
    assert.ok(r.object.equals(direct(env, flag)));
  });
});
