import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { ConfigFiles, tokenizeConfigFile } from '../../src/key/configFiles.js';
import { FileDigests } from '../../src/key/fileDigests.js';
import { hashFile, initHash } from '../../src/key/hash.js';
import { linkRenamer, PID_PLACEHOLDER } from '../../src/key/linkNames.js';
import { buildManifest, canonicalJson, type KeyContext, type KeyResult, keyOf, Manifest } from '../../src/key/manifest.js';
import { readIndexParts } from '../../src/key/moduleTable.js';
import { checksHold, ObservingFiles } from '../../src/key/observed.js';
import { parseJob } from '../../src/key/parseJob.js';
import { configDirs, ToolchainIdentifier } from '../../src/key/toolchain.js';
import { tempDir as envTempDir } from '../support/env.js';

await initHash();

const CLANG_NAME = process.env.LTOCACHE_TEST_CLANG ?? 'clang-19';
const LLD = process.env.LTOCACHE_TEST_LLD ?? 'ld.lld-19';
/** The compiler as the client reports it: an absolute path (identify() takes realpath of it). */
const CLANG = execFileSync('sh', ['-c', `command -v ${CLANG_NAME}`], { encoding: 'utf8' }).trim();

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = envTempDir('manifest');
  dirs.push(d);
  return d;
}

/** a.c calls bfun() from b.c, so a's index imports from b.o. Built once, copied per test. */
const TEMPLATE = tempDir();
fs.writeFileSync(join(TEMPLATE, 'a.c'), 'extern int bfun(int);\nint afun(int x) { return bfun(x) + bfun(x + 1); }\n');
fs.writeFileSync(join(TEMPLATE, 'b.c'), 'int bfun(int y) { return y * 3 + 1; }\n');
for (const m of ['a', 'b']) execFileSync(CLANG, ['-O2', '-flto=thin', '-c', '-o', `${m}.o`, `${m}.c`], { cwd: TEMPLATE });
execFileSync(LLD, ['-r', '--thinlto-index-only=list', 'a.o', 'b.o', '-o', 'out.o'], { cwd: TEMPLATE });

function tree(): string {
  const d = tempDir();
  fs.cpSync(TEMPLATE, d, { recursive: true });
  return d;
}

const BASE = ['-O2', '-fno-pie', '-x', 'ir', '-fno-lto', '-Wno-unused-command-line-argument', '-fthinlto-index=a.o.thinlto.bc', '-c', '-o', 'a.thinlto-native.o', 'a.o'];
const ENV = { PATH: process.env.PATH ?? '/usr/bin:/bin' };

const files = new FileDigests();
const ctx = { files, toolchains: new ToolchainIdentifier(files) };

async function keyed(cwd: string, args: string[] = BASE, env: Record<string, string> = ENV, compiler = CLANG, c: KeyContext = ctx): Promise<KeyResult> {
  const p = await parseJob(args, cwd);
  if (p.kind !== 'job') assert.fail(`parseJob: ${p.reason}: ${p.detail}`);
  return buildManifest(c, p.job, compiler, cwd, env);
}

async function key(cwd: string, args: string[] = BASE, env: Record<string, string> = ENV, compiler = CLANG): Promise<{ key: string; manifest: Manifest }> {
  const r = await keyed(cwd, args, env, compiler);
  if (r.kind !== 'key') assert.fail(`expected a key, got ${r.reason}: ${r.detail}`);
  return r;
}

/** Inverts the bits of one byte. */
const flip = (b: Buffer, i: number, mask = 0xff): void => {
  b.writeUInt8(b.readUInt8(i) ^ mask, i);
};

const digestOf = async (p: string): Promise<string> => (await hashFile(p)).digest;

describe('the manifest of a real backend job', () => {
  test('validates against the schema and records what the job reads', async () => {
    const d = tree();
    const { key: k, manifest: m } = await key(d);
    assert.deepEqual(Manifest.parse(JSON.parse(JSON.stringify(m))), m);
    assert.match(k, /^[0-9a-f]{32}$/);
    assert.equal(m.v, 1);
    assert.equal(m.hash, 'xxh64x2-128');
    assert.deepEqual(m.input, { path: 'a.o', digest: await digestOf(join(d, 'a.o')) });
    assert.equal(m.index.path, undefined, 'the index name is not keyed');
    assert.deepEqual(m.names, { index: 'a.o.thinlto.bc', outputs: [{ role: 'obj', path: 'a.thinlto-native.o' }] });
    assert.equal(m.index.digest, await digestOf(join(d, 'a.o.thinlto.bc')));
    const mods = [...m.index.modules].sort((x, y) => x.path.localeCompare(y.path));
    assert.deepEqual(
      mods.map((x) => x.path),
      ['a.o', 'b.o'],
    );
    assert.equal(mods[0]!.digest, await digestOf(join(d, 'a.o')));
    assert.equal(mods[1]!.digest, await digestOf(join(d, 'b.o')));
    for (const x of mods) assert.match(x.moduleHash, /^[0-9a-f]{40}$/);
    assert.notEqual(mods[1]!.moduleHash, '0'.repeat(40));
    assert.deepEqual(m.outputs, [{ role: 'obj' }]);
    assert.deepEqual(m.env, {});
    assert.deepEqual(m.dropped, []);
    assert.deepEqual(m.responseFiles, []);
    assert.deepEqual(
      m.args.map((a) => a.a),
      ['-O2', '-fno-pie', '-x', 'ir', '-fno-lto', '-Wno-unused-command-line-argument', '-fthinlto-index=', '-c', '-o', ''],
    );
    assert.deepEqual(m.args[6], { a: '-fthinlto-index=' });
    assert.deepEqual(m.args[8], { a: '-o' });
    assert.deepEqual(m.args[9], { a: '', files: [{ path: 'a.o', digest: m.input.digest }] });
  });

  test('the toolchain: driver name, resolved executable, libLLVM', async () => {
    const { manifest: m } = await key(tree());
    assert.equal(m.toolchain.driver, CLANG.split('/').pop());
    assert.equal(m.toolchain.realpath, fs.realpathSync(CLANG));
    assert.equal(m.toolchain.digest, await digestOf(fs.realpathSync(CLANG)));
    const llvm = m.toolchain.libs.find((l) => /libLLVM[.-]/.test(l.path));
    assert.ok(llvm, `libLLVM among ${m.toolchain.libs.map((l) => l.path).join(', ')}`);
    assert.equal(llvm.digest, await digestOf(llvm.path));
  });

  test("the toolchain's config directories follow its LLVM version", async () => {
    const major = /clang version (\d+)\./.exec(execFileSync(CLANG, ['--version'], { encoding: 'utf8' }))![1]!;
    const dirs = configDirs(CLANG, fs.realpathSync(CLANG));
    for (const d of [`/etc/clang${major}`, `/usr/lib/llvm-${major}/etc`, '/etc/clang', fs.realpathSync(CLANG).replace(/\/[^/]+$/, '')])
      assert.ok(dirs.includes(d), `${d} among ${dirs.join(', ')}`);
  });

  test('a toolchain is memoised, and a job gets memo checks, only once the directories they rest on have settled', async () => {
    // The compiler as a symlink in a directory made just now: clang looks for config files there,
    // and one added in the same timestamp tick as the listing would leave its identity as it was.
    const bin = tempDir();
    const cc = join(bin, CLANG.split('/').pop()!);
    fs.symlinkSync(fs.realpathSync(CLANG), cc);
    const d = tree();
    const f = new FileDigests();
    const toolchains = new ToolchainIdentifier(f);
    const p = await parseJob(BASE, d);
    if (p.kind !== 'job') assert.fail(p.detail);
    const keyOnce = async (): Promise<ObservingFiles> => {
      const observe = new ObservingFiles(f);
      const r = await buildManifest({ files: f, toolchains, observe }, p.job, cc, d, ENV);
      assert.equal(r.kind, 'key');
      return observe;
    };
    const fresh = await keyOnce();
    await keyOnce();
    assert.equal(toolchains.computed, 2, 'not memoised while a config directory changed just now');
    assert.equal(fresh.memoable(), false);
    assert.ok(fresh.checks().some((c) => c.kind === 'dir' && c.path === bin));
    await new Promise((r) => setTimeout(r, 2200));
    const settled = await keyOnce();
    await keyOnce();
    assert.equal(toolchains.computed, 3, 'memoised once settled');
    assert.equal(settled.memoable(), true);
  });

  test('a library that appears in an LD_LIBRARY_PATH directory fails the memo and changes the key', async () => {
    const ldp = tempDir();
    const d = tree();
    const env = { ...ENV, LD_LIBRARY_PATH: ldp };
    const f = new FileDigests();
    const toolchains = new ToolchainIdentifier(f);
    const p = await parseJob(BASE, d);
    if (p.kind !== 'job') assert.fail(p.detail);
    const keyOnce = async (): Promise<{ r: KeyResult; observe: ObservingFiles }> => {
      const observe = new ObservingFiles(f);
      return { r: await buildManifest({ files: f, toolchains, observe }, p.job, CLANG, d, env), observe };
    };
    await new Promise((r) => setTimeout(r, 2200));
    const first = await keyOnce();
    if (first.r.kind !== 'key') assert.fail(first.r.detail);
    const checks = first.observe.checks();
    assert.ok(
      checks.some((c) => c.kind === 'dir' && c.path === ldp),
      'the directory the loader searched first is a check',
    );
    assert.equal(checksHold(checks, env), true);
    // One of libLLVM's own dependencies, found through ld.so.cache: a copy is harmless to clang.
    const lib = first.r.manifest.toolchain.libs.find((l) => /\/lib(zstd|z|xml2|edit|ffi)\.so\.\d+$/.test(l.path));
    if (!lib) assert.fail(`no system library among ${first.r.manifest.toolchain.libs.map((l) => l.path).join(', ')}`);
    const shadow = join(ldp, lib.path.split('/').pop()!);
    fs.copyFileSync(lib.path, shadow);
    assert.equal(checksHold(checks, env), false, 'the memo no longer holds');
    // Changed just now: a library added in the same timestamp tick would leave its identity as it was.
    const racy = await keyOnce();
    assert.equal(racy.r.kind === 'uncacheable' && racy.r.reason, 'racy-input');
    await new Promise((r) => setTimeout(r, 2200));
    const second = await keyOnce();
    if (second.r.kind !== 'key') assert.fail(second.r.detail);
    assert.ok(second.r.manifest.toolchain.libs.some((l) => l.path === shadow));
    assert.notEqual(second.r.key, first.r.key);
  });

  test("the distribution's release files clang's driver reads are part of the toolchain, present or absent", async () => {
    const d = tree();
    // The real list, on this machine.
    if (fs.existsSync('/etc/os-release')) assert.ok((await key(d)).manifest.toolchain.system?.some((x) => x.path === '/etc/os-release'));
    const etc = tempDir();
    const rel = join(etc, 'os-release');
    const gentoo = join(etc, 'gentoo-release');
    fs.writeFileSync(rel, 'ID=debian\n');
    const f = new FileDigests();
    const c = { files: f, toolchains: new ToolchainIdentifier(f, [rel, gentoo]) };
    const first = await keyed(d, BASE, ENV, CLANG, c);
    if (first.kind !== 'key') assert.fail(first.detail);
    assert.deepEqual(first.manifest.toolchain.system, [{ path: rel, digest: await digestOf(rel) }]);
    const observe = new ObservingFiles(f);
    const p = await parseJob(BASE, d);
    if (p.kind !== 'job') assert.fail(p.detail);
    await buildManifest({ ...c, observe }, p.job, CLANG, d, ENV);
    const checked = new Set(observe.checks().map((x) => ('path' in x ? x.path : x.name)));
    assert.ok(checked.has(rel) && checked.has(gentoo), 'both are checks of the memo');
    fs.writeFileSync(rel, 'ID=gentoo-ish\n');
    const second = await keyed(d, BASE, ENV, CLANG, c);
    assert.ok(second.kind === 'key' && second.key !== first.key, 'an edited release file changes the key');
    fs.writeFileSync(gentoo, '');
    const third = await keyed(d, BASE, ENV, CLANG, c);
    assert.ok(third.kind === 'key' && third.key !== (second as { key: string }).key, 'a release file appearing changes the key');
  });

  test('keys are deterministic, across contexts and across directories', async () => {
    const d = tree();
    const k1 = (await key(d)).key;
    assert.equal((await key(d)).key, k1);
    const fresh = new FileDigests();
    const r = await keyed(d, BASE, ENV, CLANG, { files: fresh, toolchains: new ToolchainIdentifier(fresh) });
    assert.equal(r.kind === 'key' && r.key, k1);
    // The same tree under another absolute path: every path in the manifest is relative to cwd.
    const other = tempDir();
    const moved = join(other, 'deeper', 'build');
    fs.cpSync(d, moved, { recursive: true });
    const m2 = await key(moved);
    assert.equal(m2.key, k1);
    assert.ok(!JSON.stringify(m2.manifest.args).includes(moved));
  });

  test('keyOf leaves `dropped` out and is 128 bits of hex', async () => {
    const { key: k, manifest: m } = await key(tree());
    assert.equal(keyOf(m), k);
    assert.equal(keyOf({ ...m, dropped: ['-DANYTHING'] }), k);
    assert.equal(keyOf({ ...m, names: { index: 'elsewhere.bc', outputs: [{ role: 'obj', path: 'x.o' }] } }), k);
    assert.notEqual(keyOf({ ...m, env: { CCC_OVERRIDE_OPTIONS: 'x' } }), k);
  });
});

describe('what changes the key', () => {
  test('input content', async () => {
    const d = tree();
    const k0 = (await key(d)).key;
    const a = fs.readFileSync(join(d, 'a.o'));
    flip(a, a.length - 1);
    fs.writeFileSync(join(d, 'a.o'), a);
    assert.notEqual((await key(d)).key, k0);
  });

  test('index content, module table unchanged', async () => {
    const d = tree();
    const before = await key(d);
    const idx = fs.readFileSync(join(d, 'a.o.thinlto.bc'));
    const parts = readIndexParts(idx);
    assert.equal(parts.kind, 'ok');
    if (parts.kind !== 'ok') return;
    const s = parts.summaries[0]!;
    assert.ok(s.end - s.start >= 8, 'a summary body to alter');
    flip(idx, Math.floor((s.start + s.end) / 2), 0x01);
    fs.writeFileSync(join(d, 'a.o.thinlto.bc'), idx);
    const after = await key(d);
    assert.deepEqual(after.manifest.index.modules, before.manifest.index.modules);
    assert.notEqual(after.manifest.index.digest, before.manifest.index.digest);
    assert.notEqual(after.key, before.key);
  });

  test('an imported module (b.o) with other bytes of the same length, index untouched', async () => {
    const d = tree();
    const before = await key(d);
    const b = fs.readFileSync(join(d, 'b.o'));
    flip(b, b.length - 1);
    fs.writeFileSync(join(d, 'b.o'), b);
    const after = await key(d);
    assert.equal(after.manifest.index.digest, before.manifest.index.digest);
    assert.equal(after.manifest.input.digest, before.manifest.input.digest);
    assert.notEqual(after.key, before.key);
  });

  test('a flag, and the order of two flags', async () => {
    const d = tree();
    const k0 = (await key(d)).key;
    assert.notEqual(
      (
        await key(
          d,
          BASE.map((a) => (a === '-O2' ? '-O3' : a)),
        )
      ).key,
      k0,
    );
    assert.notEqual((await key(d, ['-Wframe-larger-than=1024', ...BASE])).key, k0);
    const swapped = ['-fno-pie', '-O2', ...BASE.slice(2)];
    assert.notEqual((await key(d, swapped)).key, k0);
  });

  test('the content of a flag-named file at the same path', async () => {
    const d = tree();
    const args = ['-fprofile-sample-use=prof.txt', ...BASE];
    fs.writeFileSync(join(d, 'prof.txt'), 'bfun:100:10\n');
    const before = await key(d, args);
    assert.deepEqual(before.manifest.args[0], { a: '-fprofile-sample-use=', files: [{ path: 'prof.txt', digest: await digestOf(join(d, 'prof.txt')) }] });
    fs.writeFileSync(join(d, 'prof.txt'), 'bfun:900:90\n');
    assert.notEqual((await key(d, args)).key, before.key);
    // Absent: the job is uncacheable rather than keyed without it.
    fs.rmSync(join(d, 'prof.txt'));
    const r = await keyed(d, args);
    assert.equal(r.kind === 'uncacheable' && r.reason, 'missing-file');
  });

  test('bare -fprofile-use: the content of ./default.profdata', async () => {
    const d = tree();
    const args = ['-fprofile-use', ...BASE];
    fs.writeFileSync(join(d, 'default.profdata'), 'profile one');
    const before = await key(d, args);
    assert.deepEqual(before.manifest.args[0], { a: '-fprofile-use', files: [{ path: 'default.profdata', digest: await digestOf(join(d, 'default.profdata')) }] });
    fs.writeFileSync(join(d, 'default.profdata'), 'profile two');
    assert.notEqual((await key(d, args)).key, before.key);
  });

  test('-fprofile-use= with an empty value: the content of ./default.profdata, which clang reads then', async () => {
    const d = tree();
    const args = ['-fprofile-use=', ...BASE];
    fs.writeFileSync(join(d, 'default.profdata'), 'profile one');
    const before = await key(d, args);
    assert.deepEqual(before.manifest.args[0], { a: '-fprofile-use=', files: [{ path: 'default.profdata', digest: await digestOf(join(d, 'default.profdata')) }] });
    fs.writeFileSync(join(d, 'default.profdata'), 'profile two');
    assert.notEqual((await key(d, args)).key, before.key);
    // The driver names that file to cc1 (clang 19), or reads it itself and fails on this one (clang 22).
    const driver = spawnSync(CLANG, ['-###', ...args], { cwd: d, encoding: 'utf8' }).stderr;
    assert.match(driver, /"-fprofile-instrument-use-path=default\.profdata"|reading profile default\.profdata/);
  });

  test('bare -fcodegen-data-use: ./default.cgdata keyed by content, and by absence', async () => {
    const d = tree();
    const args = ['-fcodegen-data-use', ...BASE];
    const absent = await key(d, args);
    assert.deepEqual(absent.manifest.args[0], { a: '-fcodegen-data-use' });
    fs.writeFileSync(join(d, 'default.cgdata'), 'codegen data one');
    const one = await key(d, args);
    assert.deepEqual(one.manifest.args[0], { a: '-fcodegen-data-use', files: [{ path: 'default.cgdata', digest: await digestOf(join(d, 'default.cgdata')) }] });
    assert.notEqual(one.key, absent.key);
    fs.writeFileSync(join(d, 'default.cgdata'), 'codegen data two');
    assert.notEqual((await key(d, args)).key, one.key);
    // clang 22's driver names that file to LLVM; clang 19 does not know the flag (and fails the job).
    const driver = spawnSync(CLANG, ['-###', ...args], { cwd: d, encoding: 'utf8' }).stderr;
    assert.match(driver, /"-codegen-data-use-path=default\.cgdata"|unknown argument: '-fcodegen-data-use'/);
  });

  test('a VFS overlay (-vfsoverlay, -Xclang -ivfsoverlay) remaps the input to a file the key never reads: uncacheable', async () => {
    const d = tree();
    // b.o's bytes under a.o's name: clang compiles those.
    fs.writeFileSync(join(d, 'ov.yaml'), JSON.stringify({ version: 0, roots: [{ type: 'file', name: join(d, 'a.o'), 'external-contents': join(d, 'b.o') }] }));
    const compile = (extra: string[], out: string) => {
      execFileSync(CLANG, [...extra, ...BASE.slice(0, -3), '-o', out, 'a.o'], { cwd: d });
      return fs.readFileSync(join(d, out));
    };
    const plain = compile([], 'plain.o');
    for (const extra of [
      ['-vfsoverlay', 'ov.yaml'],
      ['-Xclang', '-ivfsoverlay', '-Xclang', 'ov.yaml'],
    ]) {
      assert.notDeepEqual(compile(extra, 'over.o'), plain, `${extra.join(' ')} changes the object`);
      const p = await parseJob([...extra, ...BASE], d);
      assert.equal(p.kind === 'uncacheable' && p.reason, 'unsupported-flag', extra.join(' '));
    }
  });

  test('-fbasic-block-sections=list= file content', async () => {
    const d = tree();
    const args = ['-fbasic-block-sections=list=bbs.txt', ...BASE];
    fs.writeFileSync(join(d, 'bbs.txt'), '!afun\n');
    const k0 = (await key(d, args)).key;
    fs.writeFileSync(join(d, 'bbs.txt'), '!bfun\n');
    assert.notEqual((await key(d, args)).key, k0);
  });

  test("a response file's content", async () => {
    const d = tree();
    const args = ['@flags.rsp', ...BASE.slice(1)];
    fs.writeFileSync(join(d, 'flags.rsp'), '-O2 -DX');
    const before = await key(d, args);
    assert.deepEqual(before.manifest.responseFiles, [{ path: 'flags.rsp', digest: await digestOf(join(d, 'flags.rsp')) }]);
    assert.deepEqual(before.manifest.dropped, ['-DX']);
    // Same expanded flags as the plain job; the response file itself is keyed on top.
    assert.deepEqual(before.manifest.args, (await key(d)).manifest.args);
    fs.writeFileSync(join(d, 'flags.rsp'), '-O3 -DX');
    assert.notEqual((await key(d, args)).key, before.key);
    // Even a change only to dropped flags inside it changes the key (the file is keyed whole).
    fs.writeFileSync(join(d, 'flags.rsp'), '-O2 -DY');
    const k3 = (await key(d, args)).key;
    assert.notEqual(k3, before.key);
  });

  test('variables under which clang logs, writes a file or edits its command line make the job uncacheable, even empty', async () => {
    const d = tree();
    for (const [name, value] of [
      ['CCC_OVERRIDE_OPTIONS', '+-O0'],
      ['CC_PRINT_OPTIONS', '1'],
      ['CC_LOG_DIAGNOSTICS', ''],
      ['CC_PRINT_PROC_STAT', '1'],
      ['AS_SECURE_LOG_FILE', join(d, 'secure.log')],
      ['LD_AUDIT', '/nonexistent/audit.so'],
      ['FORCE_CLANG_DIAGNOSTICS_CRASH', ''],
    ] as const) {
      const r = await keyed(d, BASE, { ...ENV, [name]: value });
      assert.equal(r.kind === 'uncacheable' && r.reason, 'environment', `${name}: ${JSON.stringify(r)}`);
    }
    // Unset, each is a check of the memo: setting one later sends the job back to the daemon.
    const observe = new ObservingFiles(files);
    assert.equal((await keyed(d, BASE, ENV, CLANG, { ...ctx, observe })).kind, 'key');
    const envChecks = observe.checks().filter((c) => c.kind === 'env');
    for (const name of ['CCC_OVERRIDE_OPTIONS', 'CC_PRINT_OPTIONS', 'AS_SECURE_LOG_FILE', 'FORCE_CLANG_DIAGNOSTICS_CRASH'])
      assert.ok(
        envChecks.some((c) => c.kind === 'env' && c.name === name && c.value === null),
        name,
      );
  });

  test('without a config expander, a job under a clang config file is uncacheable', async () => {
    const d = tree();
    fs.writeFileSync(join(d, 'my.cfg'), '-O1\n');
    for (const args of [
      ['--config=my.cfg', ...BASE],
      ['--config', 'my.cfg', ...BASE],
    ]) {
      const r = await keyed(d, args);
      assert.equal(r.kind === 'uncacheable' && r.reason, 'config-file', JSON.stringify(r));
    }
  });

  /** A compiler of its own (a copy of clang's executable, its libraries beside it) that loads default config files from its directory. */
  function ownCompiler(): { cc: string; bin: string; c: KeyContext & { configs: ConfigFiles } } {
    const root = tempDir();
    const bin = join(root, 'bin');
    fs.mkdirSync(bin);
    const real = fs.realpathSync(CLANG);
    const cc = join(bin, 'clang');
    fs.copyFileSync(real, cc);
    fs.chmodSync(cc, 0o755);
    fs.symlinkSync(join(real, '..', '..', 'lib'), join(root, 'lib'));
    const f = new FileDigests();
    return { cc, bin, c: { files: f, toolchains: new ToolchainIdentifier(f), configs: new ConfigFiles() } };
  }

  test('a named config file is expanded as clang does: its @file relative to its directory, keyed and checked', async () => {
    const d = tree();
    fs.mkdirSync(join(d, 'c'));
    fs.writeFileSync(join(d, 'c', 'my.cfg'), '# flags\n@inner.rsp -I<CFGDIR>/inc\n');
    fs.writeFileSync(join(d, 'c', 'inner.rsp'), '-ffunction-sections\n');
    const configs = new ConfigFiles();
    const c = { ...ctx, configs };
    const observe = new ObservingFiles(files);
    const r = await keyed(d, ['--config=c/my.cfg', ...BASE], ENV, CLANG, { ...c, observe });
    if (r.kind !== 'key') assert.fail(JSON.stringify(r));
    assert.deepEqual(
      r.job?.tokens.slice(0, 2).map((t) => t.v),
      ['-ffunction-sections', `-I${join(d, 'c')}/inc`],
      'the options of the config come first, expanded',
    );
    assert.equal(r.manifest.args[0]?.a, '-ffunction-sections');
    assert.deepEqual(
      r.manifest.responseFiles.map((f) => f.path),
      [join(d, 'c', 'my.cfg'), join(d, 'c', 'inner.rsp')],
    );
    // Both files are checks of the memo: an edit to either sends the job back to the daemon.
    const checked = observe.checks().map((k) => ('path' in k ? k.path : ''));
    for (const f of ['my.cfg', 'inner.rsp']) assert.ok(checked.includes(join(d, 'c', f)), f);
    // The separate spelling names the same file; clang is asked once per spelling, not per job.
    const sep = await keyed(d, ['--config', 'c/my.cfg', ...BASE], ENV, CLANG, c);
    assert.equal(sep.kind, 'key');
    const asked = configs.asked;
    fs.copyFileSync(join(d, 'a.o'), join(d, 'a2.o'));
    fs.copyFileSync(join(d, 'a.o.thinlto.bc'), join(d, 'a2.o.thinlto.bc'));
    const other = BASE.map((a) => a.replace('a.o', 'a2.o').replace('a.thinlto', 'a2.thinlto'));
    assert.equal((await keyed(d, ['--config=c/my.cfg', ...other], ENV, CLANG, c)).kind, 'key');
    assert.equal(configs.asked, asked, 'another job of the same shape does not ask clang again');
    // An edit to the included file changes the key.
    fs.writeFileSync(join(d, 'c', 'inner.rsp'), '-fdata-sections\n');
    const edited = await keyed(d, ['--config=c/my.cfg', ...BASE], ENV, CLANG, c);
    assert.ok(edited.kind === 'key' && edited.key !== r.key);
  });

  test('a default config file clang loads counts as part of the command: an output it adds is the job output too', async () => {
    const d = tree();
    const { cc, bin, c } = ownCompiler();
    fs.writeFileSync(join(bin, 'clang.cfg'), '-gsplit-dwarf\n');
    const r = await keyed(d, BASE, ENV, cc, c);
    if (r.kind !== 'key') assert.fail(JSON.stringify(r));
    assert.deepEqual(
      r.job?.outputs.map((o) => o.role),
      ['obj', 'dwo'],
    );
    assert.deepEqual(r.job?.argv, BASE, 'the command as given');
    // Keyed again from the expanded job (verify, a re-key): the same key.
    const again = await buildManifest(c, r.job!, cc, d, ENV);
    assert.ok(again.kind === 'key' && again.key === r.key, JSON.stringify(again));
    // An option clang 19 and 22 read differently, or a config inside a config: uncacheable.
    for (const text of ['$-O3\n', '--config=other.cfg\n']) {
      fs.writeFileSync(join(bin, 'clang.cfg'), text);
      const u = await keyed(d, BASE, ENV, cc, c);
      assert.equal(u.kind === 'uncacheable' && u.reason, 'config-file', `${text}: ${JSON.stringify(u)}`);
    }
    // Turned off, by flag or by variable, the default config is not read, and clang is not asked.
    const asked = c.configs.asked;
    assert.equal((await keyed(d, ['--no-default-config', ...BASE], ENV, cc, c)).kind, 'key');
    assert.equal((await keyed(d, BASE, { ...ENV, CLANG_NO_DEFAULT_CONFIG: '1' }, cc, c)).kind, 'key');
    assert.equal(c.configs.asked, asked);
  });

  test('a config file clang loads from a directory the toolchain does not list is not followed: uncacheable', async () => {
    const d = tree();
    const elsewhere = join(tempDir(), 'x86_64-pc-linux-gnu-clang.cfg');
    fs.writeFileSync(elsewhere, '-O1\n');
    // The answer of a clang built with a user config directory (CLANG_CONFIG_FILE_USER_DIR) that
    // the toolchain's identity does not list: real clang's answer, with that file added.
    const configs = new ConfigFiles(async (compiler, args, cwd, env) => {
      const r = spawnSync(compiler, ['-###', ...args], { cwd, env, encoding: 'utf8' });
      return { code: r.status ?? -1, stderr: `Configuration file: ${elsewhere}\n${r.stderr}` };
    });
    fs.writeFileSync(join(d, 'my.cfg'), '-O2\n');
    const r = await keyed(d, ['--config=./my.cfg', ...BASE], ENV, CLANG, { ...ctx, configs });
    assert.equal(r.kind === 'uncacheable' && r.reason, 'config-file', JSON.stringify(r));
    assert.match(r.kind === 'uncacheable' ? r.detail : '', /does not list/);
  });

  test('a config file splits into the arguments clang reads from it', () => {
    const d = tempDir();
    const text = '# comment -DNO=1\n  -DA=1 \\\n-DB=2\n"-DQ=a b" \'-DR=c d\' -DS=e\\ f\r\n\t# indented\n-DT=x#y -DU="p q"r\n';
    fs.writeFileSync(join(d, 'x.cfg'), text);
    fs.writeFileSync(join(d, 't.c'), 'int t;\n');
    const r = spawnSync(CLANG, ['--config=./x.cfg', '-###', '-c', 't.c'], { cwd: d, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const cc1 = r.stderr.split('\n').find((l) => l.includes('"-cc1"'))!;
    const fromClang = [...cc1.matchAll(/"-D" "((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]!.replace(/\\(.)/g, '$1')).filter((v) => !v.startsWith('__'));
    const ours = tokenizeConfigFile(text).map((a) => a.slice(2));
    assert.deepEqual(ours, fromClang);
    assert.deepEqual(ours, ['A=1', 'B=2', 'Q=a b', 'R=c d', 'S=e f', 'T=x#y', 'U=p qr']);
  });

  test('a config file named without a directory is the one clang finds in its config directories', async () => {
    const d = tree();
    const { cc, bin, c } = ownCompiler();
    fs.writeFileSync(join(bin, 'extra.cfg'), '-ffunction-sections\n');
    for (const args of [
      ['--config=extra.cfg', '--no-default-config', ...BASE],
      ['--config', 'extra.cfg', '--no-default-config', ...BASE],
    ]) {
      const r = await keyed(d, args, ENV, cc, c);
      if (r.kind !== 'key') assert.fail(JSON.stringify(r));
      assert.deepEqual(
        r.manifest.responseFiles.map((f) => f.path),
        [join(bin, 'extra.cfg')],
      );
      assert.equal(r.job?.tokens[0]?.v, '-ffunction-sections');
      // A file of that name in the build directory is not what clang reads: it changes nothing.
      fs.writeFileSync(join(d, 'extra.cfg'), '-fdata-sections\n');
      const decoy = await keyed(d, args, ENV, cc, c);
      assert.ok(decoy.kind === 'key' && decoy.key === r.key, JSON.stringify(decoy));
      fs.rmSync(join(d, 'extra.cfg'));
    }
  });

  test('a Gentoo-style default config, including others by @file, is followed through each file', async () => {
    const d = tree();
    const { cc, bin, c } = ownCompiler();
    fs.writeFileSync(join(bin, 'x86_64-pc-linux-gnu-clang.cfg'), '# This file is used to deploy defaults\n@gentoo-runtimes.cfg\n@gentoo-common.cfg\n');
    fs.writeFileSync(join(bin, 'gentoo-runtimes.cfg'), '--rtlib=libgcc\n--unwindlib=libgcc\n-fuse-ld=bfd\n');
    fs.writeFileSync(join(bin, 'gentoo-common.cfg'), '-ffunction-sections\n');
    const r = await keyed(d, BASE, ENV, cc, c);
    if (r.kind !== 'key') assert.fail(JSON.stringify(r));
    assert.deepEqual(
      r.manifest.responseFiles.map((f) => f.path.slice(bin.length + 1)),
      ['x86_64-pc-linux-gnu-clang.cfg', 'gentoo-runtimes.cfg', 'gentoo-common.cfg'],
    );
    assert.ok(r.manifest.args.some((a) => a.a === '-ffunction-sections'));
    // clang compiles the job under them, and an edit to an included file changes the key.
    const run = spawnSync(cc, [...BASE.slice(0, -3), '-o', 'a.cfg.o', 'a.o'], { cwd: d, encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    fs.writeFileSync(join(bin, 'gentoo-common.cfg'), '-fdata-sections\n');
    const edited = await keyed(d, BASE, ENV, cc, c);
    assert.ok(edited.kind === 'key' && edited.key !== r.key);
  });

  test('a config file beside a symlink to clang is not loaded (clang looks beside its real path): keyed as the command', async () => {
    const d = tree();
    const bin = tempDir();
    const cc = join(bin, CLANG.split('/').pop()!);
    fs.symlinkSync(fs.realpathSync(CLANG), cc);
    fs.writeFileSync(join(bin, 'clang.cfg'), '-gsplit-dwarf\n');
    const f = new FileDigests();
    const c = { files: f, toolchains: new ToolchainIdentifier(f), configs: new ConfigFiles() };
    const r = await keyed(d, BASE, ENV, cc, c);
    assert.ok(r.kind === 'key' && !r.job, JSON.stringify(r));
    assert.equal(c.configs.asked, 1);
  });

  test('the compiler: a wrapper script vs clang itself', async () => {
    const d = tree();
    const wrapper = join(tempDir(), 'cc-wrapper');
    fs.writeFileSync(wrapper, `#!/bin/sh\nexec ${CLANG} "$@"\n`, { mode: 0o755 });
    const direct = await key(d);
    const wrapped = await key(d, BASE, ENV, wrapper);
    assert.equal(wrapped.manifest.toolchain.realpath, wrapper);
    assert.notEqual(wrapped.key, direct.key);
    // Another wrapper with other content at the same path: another key.
    fs.writeFileSync(wrapper, `#!/bin/sh\nexec ${CLANG} -O1 "$@"\n`, { mode: 0o755 });
    assert.notEqual((await key(d, BASE, ENV, wrapper)).key, wrapped.key);
    // Through a script, which resource directory clang uses is not known: a sanitizer job is uncacheable.
    const san = await keyed(d, ['-fsanitize=address', ...BASE], ENV, wrapper);
    assert.equal(san.kind === 'uncacheable' && san.reason, 'sanitizer-resources-unknown');
  });

  test('-march=native keys what the driver resolves native to on this machine; no answer is uncacheable', async () => {
    const d = tree();
    assert.equal((await key(d)).manifest.native, undefined, 'other jobs keep their keys');
    const r = await key(d, ['-march=native', ...BASE]);
    const own = spawnSync(CLANG, ['-march=native', '-###', '-x', 'c', '-c', '/dev/null', '-o', '/dev/null'], { encoding: 'utf8' }).stderr;
    const cpu = /"-target-cpu" "([^"]+)"/.exec(own)?.[1];
    assert.ok(cpu, own);
    assert.ok(r.manifest.native?.includes(`-target-cpu ${cpu}`), JSON.stringify(r.manifest.native));
    assert.ok(
      r.manifest.native!.some((w) => w.startsWith('-target-feature ')),
      'the CPU features are keyed too',
    );
    assert.ok((await key(d, ['-mtune=native', ...BASE])).manifest.native!.some((w) => w.startsWith('-tune-cpu ')));
    // A driver that answers with another CPU gives that CPU to the key; one that names none: uncacheable.
    const fake = join(tempDir(), 'clang-fake-cpu');
    fs.writeFileSync(fake, `#!/bin/sh\nfor a; do [ "$a" = "-###" ] && { echo ' "/x/clang" "-cc1" "-target-cpu" "othercpu"' >&2; exit 0; }; done\nexec ${CLANG} "$@"\n`, {
      mode: 0o755,
    });
    assert.deepEqual((await key(d, ['-march=native', ...BASE], ENV, fake)).manifest.native, ['-target-cpu othercpu']);
    const mute = join(tempDir(), 'clang-mute');
    fs.writeFileSync(mute, `#!/bin/sh\nfor a; do [ "$a" = "-###" ] && exit 0; done\nexec ${CLANG} "$@"\n`, { mode: 0o755 });
    const u = await keyed(d, ['-march=native', ...BASE], ENV, mute);
    assert.equal(u.kind === 'uncacheable' && u.reason, 'native-cpu-unknown');
  });

  test('a flag whose =suffix names an existing file records its digest', async () => {
    const d = tree();
    const args = ['-mllvm', '-some-opt=data.txt', ...BASE];
    fs.writeFileSync(join(d, 'data.txt'), 'one');
    const before = await key(d, args);
    assert.deepEqual(before.manifest.args[0], { a: '-mllvm' });
    assert.deepEqual(before.manifest.args[1], { a: '-some-opt=data.txt', files: [{ path: 'data.txt', digest: await digestOf(join(d, 'data.txt')) }] });
    fs.writeFileSync(join(d, 'data.txt'), 'two');
    assert.notEqual((await key(d, args)).key, before.key);
    // Absent: the flag is keyed by its spelling alone.
    fs.rmSync(join(d, 'data.txt'));
    const r = await key(d, args);
    assert.deepEqual(r.manifest.args[1], { a: '-some-opt=data.txt' });
  });

  test('a setting (-Werror=X, --target=T, -x ir) is keyed by spelling; a pass-through value (-Wa,F) still names its file', async () => {
    const d = tree();
    for (const f of ['return-type', 'x86_64-linux-gnu', 'ir', 'generic', 'data.s']) fs.writeFileSync(join(d, f), f);
    const args = ['-Werror=return-type', '--target=x86_64-linux-gnu', '-mtune=generic', '-Wa,data.s', ...BASE];
    const r = await key(d, args);
    assert.deepEqual(r.manifest.args.slice(0, 4), [
      { a: '-Werror=return-type' },
      { a: '--target=x86_64-linux-gnu' },
      { a: '-mtune=generic' },
      { a: '-Wa,data.s', files: [{ path: 'data.s', digest: await digestOf(join(d, 'data.s')) }] },
    ]);
    assert.ok(
      r.manifest.args.some((x) => x.a === 'ir' && x.files === undefined),
      '-x ir: the language is no file',
    );
    // Editing a file that only shares a setting's name changes nothing; the pass-through file does.
    fs.writeFileSync(join(d, 'return-type'), 'edited');
    fs.writeFileSync(join(d, 'ir'), 'edited');
    assert.equal((await key(d, args)).key, r.key);
    fs.writeFileSync(join(d, 'data.s'), 'edited');
    assert.notEqual((await key(d, args)).key, r.key);
  });

  test("-fsanitize= keys the resource directory's share/ files (the ignorelists clang opens unasked); other jobs do not", async () => {
    const d = tree();
    const plain = await key(d);
    assert.equal(plain.manifest.resources, undefined);
    // The driver's default resource directory, beside the resolved executable.
    const asan = await key(d, ['-fsanitize=address', ...BASE]);
    const shared = (asan.manifest.resources ?? []).map((r) => r.path);
    assert.ok(
      shared.some((p) => p.endsWith('/share/asan_ignorelist.txt')),
      `asan_ignorelist.txt keyed: ${shared.join(', ')}`,
    );
    // A -resource-dir of our own: its share/ is keyed, and editing a file there changes the key.
    const res = join(d, 'res');
    fs.mkdirSync(join(res, 'share'), { recursive: true });
    fs.writeFileSync(join(res, 'share', 'asan_ignorelist.txt'), 'fun:one\n');
    const args = ['-fsanitize=address', '-resource-dir', 'res', ...BASE];
    const before = await key(d, args);
    assert.ok(before.manifest.resources!.some((r) => r.path === join(res, 'share', 'asan_ignorelist.txt')));
    fs.writeFileSync(join(res, 'share', 'asan_ignorelist.txt'), 'fun:two\n');
    assert.notEqual((await key(d, args)).key, before.key);
    fs.writeFileSync(join(res, 'share', 'cfi_ignorelist.txt'), 'fun:x\n');
    assert.ok(
      (await key(d, args)).manifest.resources!.some((r) => r.path.endsWith('cfi_ignorelist.txt')),
      'a file added to share/ is keyed',
    );
  });

  test('a file named as the first element of a comma list is keyed by content', async () => {
    const d = tree();
    const args = ['-mllvm', '-some-opt=data.txt,3', ...BASE];
    fs.writeFileSync(join(d, 'data.txt'), 'one');
    const before = await key(d, args);
    assert.deepEqual(before.manifest.args[1], { a: '-some-opt=data.txt,3', files: [{ path: 'data.txt', digest: await digestOf(join(d, 'data.txt')) }] });
    fs.writeFileSync(join(d, 'data.txt'), 'two');
    assert.notEqual((await key(d, args)).key, before.key);
  });

  test('a flag naming a named pipe, a socket or a device other than /dev/null: uncacheable (what clang reads from it is not keyed); a directory is no file', async () => {
    const d = tree();
    execFileSync('mkfifo', [join(d, 'data.fifo')]);
    const fifo = await keyed(d, ['-mllvm', '-some-opt=data.fifo', ...BASE]);
    assert.equal(fifo.kind === 'uncacheable' && fifo.reason, 'missing-file');
    const server = createServer().listen(join(d, 'data.sock'));
    await once(server, 'listening');
    try {
      const sock = await keyed(d, ['-mllvm', '-some-opt=data.sock', ...BASE]);
      assert.equal(sock.kind === 'uncacheable' && sock.reason, 'missing-file');
    } finally {
      server.close();
    }
    for (const device of ['/dev/zero', '/dev/urandom']) {
      const r = await keyed(d, ['-mllvm', `-some-opt=${device}`, ...BASE]);
      assert.equal(r.kind === 'uncacheable' && r.reason, 'missing-file', device);
      assert.match(r.kind === 'uncacheable' ? r.detail : '', /a character device/);
    }
    // The null device, under its own name and through a link: always empty, nothing to key.
    fs.symlinkSync('/dev/null', join(d, 'null.link'));
    for (const name of ['/dev/null', 'null.link']) assert.deepEqual((await key(d, ['-mllvm', `-some-opt=${name}`, ...BASE])).manifest.args[1], { a: `-some-opt=${name}` });
    fs.mkdirSync(join(d, 'data.dir'));
    const dir = await key(d, ['-mllvm', '-some-opt=data.dir', ...BASE]);
    assert.deepEqual(dir.manifest.args[1], { a: '-some-opt=data.dir' });
  });

  test("a flag naming the job's own output does not hash it", async () => {
    const d = tree();
    fs.writeFileSync(join(d, 'a.thinlto-native.o'), 'stale output');
    const args = ['-mllvm', '-x=a.thinlto-native.o', ...BASE];
    const r = await key(d, args);
    assert.deepEqual(r.manifest.args[1], { a: '-x=a.thinlto-native.o' });
    fs.writeFileSync(join(d, 'a.thinlto-native.o'), 'another stale output');
    assert.equal((await key(d, args)).key, r.key);
  });
});

describe('names that do not change the bytes', () => {
  test('another output name and the index copied under another name: same key', async () => {
    const d = tree();
    const k0 = (await key(d)).key;
    fs.copyFileSync(join(d, 'a.o.thinlto.bc'), join(d, 'a.1.4242.native.o.thinlto.bc'));
    const args = BASE.map((a) => (a === '-fthinlto-index=a.o.thinlto.bc' ? '-fthinlto-index=a.1.4242.native.o.thinlto.bc' : a === 'a.thinlto-native.o' ? 'a.1.4242.native.o' : a));
    const r = await key(d, args);
    assert.equal(r.key, k0);
    assert.deepEqual(r.manifest.names, { index: 'a.1.4242.native.o.thinlto.bc', outputs: [{ role: 'obj', path: 'a.1.4242.native.o' }] });
    // Absolute names elsewhere too.
    const abs = BASE.map((a) =>
      a === '-fthinlto-index=a.o.thinlto.bc' ? `-fthinlto-index=${join(d, 'a.1.4242.native.o.thinlto.bc')}` : a === 'a.thinlto-native.o' ? join(tempDir(), 'x.o') : a,
    );
    assert.equal((await key(d, abs)).key, k0);
  });

  for (const flags of [
    ['-g', '-gsplit-dwarf'],
    ['-fprofile-arcs'],
    ['-ftest-coverage'],
    ['--coverage'],
    ['-fprofile-generate'],
    ['-fprofile-instr-generate=x.profraw'],
    ['-fcs-profile-generate'],
    ['-Xclang', '-split-dwarf-file', '-Xclang', 'a.dwo'],
  ]) {
    test(`${flags.join(' ')}: the output name stays keyed`, async () => {
      const d = tree();
      const one = await key(d, [...flags, ...BASE]);
      assert.ok(one.manifest.outputs.every((o) => o.path !== undefined));
      const other = await key(d, [...flags, ...BASE.map((a) => (a === 'a.thinlto-native.o' ? 'other.native.o' : a))]);
      assert.notEqual(other.key, one.key);
    });
  }
});

describe('archive members in a DTLTO link (src/key/linkNames.ts)', () => {
  /** A link's directory under lld's PID `pid`: b.o written out as lld names an archive member, and its index. */
  const link = (pid: string): { d: string; member: string } => {
    const d = tree();
    const member = `lib.a(b.o at 8).2.${BigInt(pid).toString(16).toUpperCase()}.o`;
    fs.copyFileSync(join(d, 'b.o'), join(d, member));
    execFileSync(LLD, ['-r', '--thinlto-index-only=list', 'a.o', member, '-o', 'out.o'], { cwd: d });
    return { d, member };
  };
  const memberJob = (member: string, mode: string[]) => [
    '-O2',
    '-fno-pie',
    '-x',
    'ir',
    '-fno-lto',
    '-Wno-unused-command-line-argument',
    `-fthinlto-index=${member}.thinlto.bc`,
    ...mode,
    '-o',
    'member.out',
    member,
  ];
  async function renamedKey(l: { d: string; member: string }, pid: string, mode: string[]): Promise<string> {
    const p = await parseJob(memberJob(l.member, mode), l.d);
    if (p.kind !== 'job') assert.fail(`parseJob: ${p.reason}`);
    const r = await buildManifest(ctx, p.job, CLANG, l.d, ENV, linkRenamer(pid)!);
    if (r.kind !== 'key') assert.fail(`${r.reason}: ${r.detail}`);
    return r.key;
  }

  test('an object keys the member under another PID alike; IR, which names its module by path, does not', async () => {
    const x = link('4711');
    const y = link('4712');
    assert.equal(await renamedKey(x, '4711', ['-c']), await renamedKey(y, '4712', ['-c']));
    execFileSync(CLANG, memberJob(x.member, ['-S', '-emit-llvm']), { cwd: x.d });
    assert.ok(fs.readFileSync(join(x.d, 'member.out'), 'latin1').includes(`; ModuleID = '${x.member}'`), 'textual IR names the module by its path');
    for (const mode of [
      ['-S', '-emit-llvm'],
      ['-c', '-emit-llvm'],
      ['-S', '-Xclang', '-emit-llvm'],
    ])
      assert.notEqual(await renamedKey(x, '4711', mode), await renamedKey(y, '4712', mode), mode.join(' '));
  });

  test('a module whose path spells the placeholder keeps every name: renamed, another path would read the same', async () => {
    /** a.o, importing from b.o and c.o, linked with them under `bName` and `cName`; a.o's key. */
    const aKey = async (pid: string, bName: string, cName: string) => {
      const d = tree();
      fs.writeFileSync(join(d, 'a.c'), 'extern int bfun(int), cfun(int);\nint afun(int x) { return bfun(x) + cfun(x); }\n');
      fs.writeFileSync(join(d, 'c.c'), 'int cfun(int y) { return y - 4; }\n');
      for (const m of ['a', 'c']) execFileSync(CLANG, ['-O2', '-flto=thin', '-c', '-o', `${m}.o`, `${m}.c`], { cwd: d });
      fs.copyFileSync(join(d, 'b.o'), join(d, bName));
      fs.copyFileSync(join(d, 'c.o'), join(d, cName));
      execFileSync(LLD, ['-r', '--thinlto-index-only=list', 'a.o', bName, cName, '-o', 'out.o'], { cwd: d });
      const p = await parseJob(BASE, d);
      if (p.kind !== 'job') assert.fail(p.reason);
      const r = await buildManifest(ctx, p.job, CLANG, d, ENV, linkRenamer(pid)!);
      if (r.kind !== 'key') assert.fail(`${r.reason}: ${r.detail}`);
      return r;
    };
    // Renamed, each index would list lib.a(b.o at 8).2.<lld-pid>.o and lib.a(c.o at 99).3.<lld-pid>.o,
    // with the same contents: the second link's b.o spells that name itself.
    const one = await aKey('4711', 'lib.a(b.o at 8).2.1267.o', 'lib.a(c.o at 99).3.1267.o');
    const two = await aKey('4712', `lib.a(b.o at 8).2.${PID_PLACEHOLDER}.o`, 'lib.a(c.o at 99).3.1268.o');
    assert.equal(one.manifest.index.modules.length, 3);
    assert.notEqual(one.key, two.key);
    assert.deepEqual(
      two.manifest.index.modules.map((m) => m.path),
      ['a.o', `lib.a(b.o at 8).2.${PID_PLACEHOLDER}.o`, 'lib.a(c.o at 99).3.1268.o'],
    );
  });
});

describe('what does not change the key', () => {
  test('a -D flag (dropped, but recorded)', async () => {
    const d = tree();
    const k0 = (await key(d)).key;
    const r = await key(d, ['-DFOO=1', '-D', 'BAR', ...BASE]);
    assert.equal(r.key, k0);
    assert.deepEqual(r.manifest.dropped, ['-DFOO=1', '-D BAR']);
  });

  test('a dropped flag clang warns about is keyed unless that warning is off: its stderr (and its exit under -Werror) differ', async () => {
    const d = tree();
    const loud = BASE.filter((a) => a !== '-Wno-unused-command-line-argument');
    // What clang does: -I draws "argument unused during compilation", -D does not.
    const run = (extra: string[]) => spawnSync(CLANG, ['-Werror', ...extra, ...loud.slice(0, -3), '-o', 'w.o', 'a.o'], { cwd: d, encoding: 'utf8' });
    assert.equal(run([]).status, 0);
    const withI = run(['-I', 'inc']);
    assert.notEqual(withI.status, 0);
    assert.match(withI.stderr, /argument unused during compilation: '-I inc'/);
    assert.equal(run(['-DFOO=1']).status, 0);
    const k0 = (await key(d, loud)).key;
    const keyedI = await key(d, ['-I', 'inc', ...loud]);
    assert.notEqual(keyedI.key, k0, '-I is keyed when clang may warn about it');
    assert.deepEqual(keyedI.manifest.dropped, []);
    assert.equal((await key(d, ['-DFOO=1', ...loud])).key, k0, '-D draws no warning: still dropped');
    // The warning off (the kernel's flags; -Qunused-arguments; -w): dropped as before.
    for (const off of [['-Wno-unused-command-line-argument'], ['-Qunused-arguments'], ['-w']]) {
      const base = (await key(d, [...off, ...loud])).key;
      assert.equal((await key(d, [...off, '-I', 'inc', ...loud])).key, base, off.join(' '));
    }
    // Turned back on after being turned off: keyed.
    const on = ['-Wno-unused-command-line-argument', '-Wunused-command-line-argument'];
    assert.notEqual((await key(d, [...on, '-I', 'inc', ...loud])).key, (await key(d, [...on, ...loud])).key);
  });

  test('clang-cl by name is uncacheable (a Windows target: the object records its command line)', async () => {
    const r = await keyed(tree(), BASE, ENV, '/usr/bin/clang-cl-19');
    assert.equal(r.kind === 'uncacheable' && r.reason, 'windows-target');
  });

  test('clang fails every compile under FORCE_CLANG_DIAGNOSTICS_CRASH, set even empty: no hit may succeed for it', () => {
    const d = tree();
    // TMPDIR: where clang writes its crash reproducer (a-XXXXXX.o, .sh); ENV alone would leave it in /tmp.
    const r = spawnSync(CLANG, BASE, { cwd: d, env: { ...ENV, TMPDIR: d, FORCE_CLANG_DIAGNOSTICS_CRASH: '' }, encoding: 'utf8' });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /FORCE_CLANG_DIAGNOSTICS_CRASH/);
  });

  test('LLVM_OVERRIDE_PRODUCER changes the bitcode an -emit-llvm job writes, and the key', async () => {
    const d = tree();
    const args = [...BASE.slice(0, -4), '-emit-llvm', '-c', '-o', 'a.bc', 'a.o'];
    const bitcode = (env: Record<string, string>) => {
      execFileSync(CLANG, args, { cwd: d, env });
      return fs.readFileSync(join(d, 'a.bc'));
    };
    const producer = { ...ENV, LLVM_OVERRIDE_PRODUCER: 'another producer' };
    assert.notDeepEqual(bitcode(producer), bitcode(ENV));
    const k0 = (await key(d, args)).key;
    const k1 = await key(d, args, producer);
    assert.notEqual(k1.key, k0);
    assert.equal(k1.manifest.env.LLVM_OVERRIDE_PRODUCER, 'another producer');
  });

  test('Apple deployment targets and SDKROOT in the environment', async () => {
    const d = tree();
    const k0 = (await key(d)).key;
    for (const v of ['MACOSX_DEPLOYMENT_TARGET', 'IPHONEOS_DEPLOYMENT_TARGET', 'SDKROOT']) assert.notEqual((await key(d, BASE, { ...ENV, [v]: '14.0' })).key, k0, v);
  });

  test('an unrelated environment variable', async () => {
    const d = tree();
    const k0 = (await key(d)).key;
    const r = await key(d, BASE, { ...ENV, FOO: '1', HOME: '/nowhere' });
    assert.equal(r.key, k0);
    assert.deepEqual(r.manifest.env, {});
  });

  test('touching the input (mtime only)', async () => {
    const d = tree();
    const k0 = (await key(d)).key;
    const hashedBefore = files.hashed;
    const later = new Date(Date.now() + 5000);
    fs.utimesSync(join(d, 'a.o'), later, later);
    assert.equal((await key(d)).key, k0);
    assert.ok(files.hashed > hashedBefore, 'the touched file was hashed again');
  });
});

describe('uncacheable', () => {
  test('-mllvm -lto-embed-bitcode=post-merge-pre-opt: the object embeds the index path, which is not keyed', async () => {
    const d = tree();
    fs.copyFileSync(join(d, 'a.o.thinlto.bc'), join(d, 'a.1.4242.native.o.thinlto.bc'));
    const flags = ['-mllvm', '-lto-embed-bitcode=post-merge-pre-opt'];
    const other = BASE.map((a) => (a === '-fthinlto-index=a.o.thinlto.bc' ? '-fthinlto-index=a.1.4242.native.o.thinlto.bc' : a));
    execFileSync(CLANG, [...flags, ...BASE], { cwd: d });
    const one = fs.readFileSync(join(d, 'a.thinlto-native.o'));
    execFileSync(CLANG, [...flags, ...other], { cwd: d });
    assert.ok(!fs.readFileSync(join(d, 'a.thinlto-native.o')).equals(one), 'the object names the index');
    assert.ok(one.includes('-fthinlto-index=a.o.thinlto.bc'));
    const p = await parseJob([...flags, ...BASE], d);
    assert.equal(p.kind === 'uncacheable' && p.reason, 'unsupported-flag');
  });

  test('options under which clang writes, prints or runs what a hit would not reproduce', async () => {
    /** Files under `d`, relative, but the object and the inputs the template holds. */
    const listed = (d: string): Set<string> => new Set((fs.readdirSync(d, { recursive: true }) as string[]).filter((f) => fs.statSync(join(d, f)).isFile()));
    type Run = { status: number | null; stderr: string; added: string[]; dir: string };
    const cases: { flags: string[]; proof: (r: Run) => boolean; env?: (d: string) => Record<string, string> }[] = [
      // Timings: no two runs print the same.
      { flags: ['-ftime-report'], proof: (r) => /Wall Time/.test(r.stderr) },
      { flags: ['-Xclang', '-ftime-report=per-pass'], proof: (r) => /Wall Time/.test(r.stderr) },
      // clang 22 only (clang 19: unknown argument).
      { flags: ['-ftime-report-json'], proof: (r) => /"time\./.test(r.stderr) || (r.status !== 0 && /unknown argument/.test(r.stderr)) },
      // clang 22 alone (clang 19: unknown argument): the timers on stderr without a stats file.
      { flags: ['-Xclang', '-stats-file-timers'], proof: (r) => /Wall Time/.test(r.stderr) || (r.status !== 0 && /unknown argument/.test(r.stderr)) },
      // A file beside the object.
      { flags: ['-save-stats'], proof: (r) => r.added.some((f) => f.endsWith('.stats')) },
      { flags: ['--save-stats=obj'], proof: (r) => r.added.some((f) => f.endsWith('.stats')) },
      { flags: ['-Xclang', '-stats-file=s.json'], proof: (r) => r.added.includes('s.json') },
      { flags: ['--save-temps'], proof: (r) => r.added.some((f) => f.endsWith('.bc')) },
      { flags: ['-serialize-diagnostics', 'd.dia'], proof: (r) => r.added.includes('d.dia') },
      { flags: ['--serialize-diagnostics', 'd.dia'], proof: (r) => r.added.includes('d.dia') },
      { flags: ['-Xclang', '-serialize-diagnostic-file', '-Xclang', 'd.dia'], proof: (r) => r.added.includes('d.dia') },
      { flags: ['-Xclang', '-diagnostic-log-file', '-Xclang', 'd.log'], proof: (r) => r.added.includes('d.log') },
      { flags: ['-Xclang', '-split-dwarf-output', '-Xclang', 'x.dwo', '-Xclang', '-split-dwarf-file', '-Xclang', 'x.dwo'], proof: (r) => r.added.includes('x.dwo') },
      { flags: ['-Xclang', '-stack-usage-file', '-Xclang', 'x.su'], proof: (r) => r.added.includes('x.su') },
      { flags: ['-Xclang', '-opt-record-file', '-Xclang', 'x.yaml'], proof: (r) => r.added.includes('x.yaml') },
      // Not the .dwo parseJob names (a.thinlto-native.dwo), and a JSON file under a random name.
      { flags: ['-dumpdir', 'tmp/', '-gsplit-dwarf'], proof: (r) => r.added.includes('tmp/a.dwo') },
      { flags: ['-gen-cdb-fragment-path', 'tmp'], proof: (r) => r.added.some((f) => /^tmp\/a\.o\.[0-9a-f]+\.json$/.test(f)) },
      { flags: ['-ftime-report', '-mllvm', '-info-output-file=info.txt'], proof: (r) => r.added.includes('info.txt') },
      { flags: ['-mllvm', '-ir-dump-directory=dumps', '-mllvm', '-print-after=instcombine'], proof: (r) => r.added.some((f) => f.startsWith('dumps/')) },
      { flags: ['-mllvm', '-opt-bisect-limit=3', '-mllvm', '-opt-bisect-print-ir-path=b.ll'], proof: (r) => r.added.includes('b.ll') },
      { flags: ['-mllvm', '-polly', '-mllvm', '-polly-dump-after'], proof: (r) => r.added.some((f) => f.endsWith('-after.ll')) },
      { flags: ['-mllvm', '-print-changed=dot-cfg'], proof: (r) => r.added.includes('passes.html') },
      { flags: ['-mllvm', '-attributor-enable=all', '-mllvm', '-attributor-dump-dep-graph'], proof: (r) => r.added.includes('dep_graph_0.dot') },
      // The cc1 command line, with the index path the key leaves out.
      { flags: ['--verbose'], proof: (r) => r.stderr.includes('-fthinlto-index=a.o.thinlto.bc') },
      // Timestamps and addresses (ASLR): two runs print different text.
      { flags: ['-mllvm', '-debug-pass=Executions'], proof: (r) => /^\[\d{4}-\d\d-\d\d \d\d:\d\d:[\d.]+\] 0x[0-9a-f]+ /m.test(r.stderr) },
      { flags: ['-Xclang', '-mdebug-pass', '-Xclang', 'Executions'], proof: (r) => /^\[\d{4}-\d\d-\d\d \d\d:\d\d:[\d.]+\] 0x[0-9a-f]+ /m.test(r.stderr) },
      // clang 22 only (clang 19: unknown option).
      {
        flags: ['-mllvm', '-print-after=instcombine', '-mllvm', '-print-inst-addrs'],
        proof: (r) => / ; 0x[0-9a-f]+$/m.test(r.stderr) || (r.status !== 0 && /Unknown command line argument/.test(r.stderr)),
      },
      // A program the key does not identify (`diff` from PATH by default).
      { flags: ['-mllvm', '-print-changed=diff', '-mllvm', '-print-changed-diff-path=./differ'], proof: (r) => r.added.includes('differ-ran') },
      { flags: ['-mllvm', '-exec-on-ir-change=./differ'], proof: (r) => r.added.includes('differ-ran') },
      // A DOT file under a random name in TMPDIR, named on stderr; then a viewer is looked for in PATH.
      {
        flags: ['-mllvm', '-view-bfi-func-name=afun', '-mllvm', '-view-block-freq-propagation-dags=fraction'],
        env: (d) => ({ PATH: join(d, 'no-viewers') }),
        proof: (r) => r.added.some((f) => f.startsWith('tmp/BlockFrequencyDAGs-')) && r.stderr.includes(join(r.dir, 'tmp', 'BlockFrequencyDAGs-')),
      },
    ];
    for (const c of cases) {
      const d = tree();
      fs.mkdirSync(join(d, 'tmp'));
      fs.writeFileSync(join(d, 'differ'), '#!/bin/sh\necho ran >> "$(dirname "$0")/differ-ran"\n', { mode: 0o755 });
      const before = listed(d);
      // Temporary files (DOT files, IR snapshots for diffs) stay in the test's directory.
      const r = spawnSync(CLANG, [...c.flags, ...BASE], { cwd: d, env: { ...process.env, TMPDIR: join(d, 'tmp'), ...c.env?.(d) }, encoding: 'utf8' });
      const added = [...listed(d)].filter((f) => !before.has(f) && f !== 'a.thinlto-native.o');
      assert.ok(
        c.proof({ status: r.status, stderr: r.stderr, added, dir: d }),
        `${c.flags.join(' ')}: status ${r.status}, added ${added.join(', ')}, stderr ${r.stderr.slice(0, 300)}`,
      );
      const p = await parseJob([...c.flags, ...BASE], d);
      assert.equal(p.kind === 'uncacheable' && p.reason, 'unsupported-flag', c.flags.join(' '));
    }
  });

  test('the optimisation record clang writes is the one parseJob names (-foptimization-record-passes= alone writes it)', async () => {
    for (const flags of [
      ['-foptimization-record-passes=inline'],
      ['-foptimization-record-passes=inline', '-fno-save-optimization-record'],
      ['-fsave-optimization-record', '-fno-save-optimization-record'],
      ['-fno-save-optimization-record', '-fsave-optimization-record'],
      ['-foptimization-record-file=rec.yaml', '-fno-save-optimization-record'],
    ]) {
      const d = tree();
      const before = new Set(fs.readdirSync(d));
      execFileSync(CLANG, [...flags, ...BASE], { cwd: d });
      const written = fs.readdirSync(d).filter((f) => !before.has(f) && f !== 'a.thinlto-native.o');
      const p = await parseJob([...flags, ...BASE], d);
      if (p.kind !== 'job') assert.fail(`${flags.join(' ')}: ${p.reason}`);
      assert.deepEqual(
        p.job.outputs.filter((o) => o.role !== 'obj').map((o) => o.path),
        written,
        flags.join(' '),
      );
    }
  });

  test('-mllvm -polly-import: Polly reads a schedule from a .jscop file in cwd, which the key does not name', async () => {
    const d = tempDir();
    fs.writeFileSync(
      join(d, 'a.c'),
      'void afun(int *restrict A, int *restrict B) { for (int i = 0; i < 1024; i++) for (int j = 0; j < 1024; j++) A[i * 1024 + j] += B[j * 1024 + i]; }\n',
    );
    fs.writeFileSync(join(d, 'b.c'), 'int bfun(int y) { return y; }\n');
    for (const m of ['a', 'b']) execFileSync(CLANG, ['-O3', '-flto=thin', '-c', '-o', `${m}.o`, `${m}.c`], { cwd: d });
    execFileSync(LLD, ['-r', '--thinlto-index-only=list', 'a.o', 'b.o', '-o', 'out.o'], { cwd: d });
    const backend = (flags: string[]) => execFileSync(CLANG, ['-mllvm', '-polly', ...flags, ...BASE.map((a) => (a === '-O2' ? '-O3' : a))], { cwd: d, stdio: 'pipe' });
    const jscops = () => fs.readdirSync(d).filter((f) => f.endsWith('.jscop'));
    backend(['-mllvm', '-polly-export']);
    assert.equal(jscops().length, 1, 'the loop nest is a SCoP, exported to cwd');
    const jscop = join(d, jscops()[0]!);
    const flags = ['-mllvm', '-polly-import'];
    backend(flags);
    const tiled = fs.readFileSync(join(d, 'a.thinlto-native.o'));
    const j = JSON.parse(fs.readFileSync(jscop, 'utf8'));
    j.statements[0].schedule = '{ Stmt1[i0, i1] -> [i1, i0] }';
    fs.writeFileSync(jscop, JSON.stringify(j));
    backend(flags);
    assert.ok(!fs.readFileSync(join(d, 'a.thinlto-native.o')).equals(tiled), 'another schedule, another object');
    for (const f of [flags, ['-mllvm', '-polly-export']]) {
      const p = await parseJob(['-mllvm', '-polly', ...f, ...BASE], d);
      assert.equal(p.kind === 'uncacheable' && p.reason, 'unsupported-flag', f.join(' '));
    }
  });

  test('a response file joined to -mllvm= or -Xclang= is expanded by clang after the driver: its options are not keyed', async () => {
    const d = tree();
    const run = (flags: string[]) => spawnSync(CLANG, [...flags, ...BASE], { cwd: d, encoding: 'utf8' });
    const plain = run([]);
    assert.equal(plain.status, 0, plain.stderr);
    const object = fs.readFileSync(join(d, 'a.thinlto-native.o'));
    // LLVM's option parser reads it: 256-byte function alignment changes the object.
    fs.writeFileSync(join(d, 'llvm.opts'), '-align-all-functions=8\n');
    for (const flags of [['-mllvm=@llvm.opts'], ['-Xclang=-mllvm', '-Xclang=@llvm.opts']]) {
      assert.equal(run(flags).status, 0);
      assert.ok(!fs.readFileSync(join(d, 'a.thinlto-native.o')).equals(object), `${flags.join(' ')}: the options in the file apply`);
      const p = await parseJob([...flags, ...BASE], d);
      assert.equal(p.kind === 'uncacheable' && p.reason, 'unsupported-flag', flags.join(' '));
    }
    // cc1 reads it: its options are cc1's.
    fs.writeFileSync(join(d, 'cc1.opts'), '-ftime-report\n');
    assert.match(run(['-Xclang=@cc1.opts']).stderr, /Wall Time/);
    const p = await parseJob(['-Xclang=@cc1.opts', ...BASE], d);
    assert.equal(p.kind === 'uncacheable' && p.reason, 'unsupported-flag');
  });

  test('an index naming a module that does not exist → missing-file', async () => {
    const d = tree();
    fs.rmSync(join(d, 'b.o'));
    const r = await keyed(d);
    assert.equal(r.kind, 'uncacheable');
    if (r.kind !== 'uncacheable') return;
    assert.equal(r.reason, 'missing-file');
    assert.match(r.detail, /b\.o/);
  });

  test('a missing input → missing-file', async () => {
    const d = tree();
    const r = await keyed(
      d,
      BASE.map((a) => (a === 'a.o' ? 'nope.o' : a)),
    );
    assert.equal(r.kind === 'uncacheable' && r.reason, 'missing-file');
  });

  test('a corrupt index → bad-index', async () => {
    const d = tree();
    const junk = Buffer.alloc(300);
    let x = 12345;
    for (let i = 0; i < junk.length; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      junk[i] = x >>> 24;
    }
    fs.writeFileSync(join(d, 'a.o.thinlto.bc'), junk);
    const r = await keyed(d);
    assert.equal(r.kind === 'uncacheable' && r.reason, 'bad-index');
  });

  test('a directory where the index should be → missing-file', async () => {
    const d = tree();
    fs.rmSync(join(d, 'a.o.thinlto.bc'));
    fs.mkdirSync(join(d, 'a.o.thinlto.bc'));
    const r = await keyed(d);
    assert.equal(r.kind === 'uncacheable' && r.reason, 'missing-file');
  });
});

describe('canonicalJson', () => {
  test('sorts keys at every level, keeps array order, drops undefined', () => {
    assert.equal(canonicalJson({ b: 1, a: { d: undefined, c: [3, { z: 1, y: 'é' }, 1] } }), '{"a":{"c":[3,{"y":"é","z":1},1]},"b":1}');
    assert.equal(canonicalJson({ a: 1, b: 2 }), canonicalJson({ b: 2, a: 1 }));
    assert.equal(canonicalJson([]), '[]');
    assert.equal(canonicalJson({}), '{}');
    assert.equal(canonicalJson('a"b'), '"a\\"b"');
    assert.equal(canonicalJson(null), 'null');
    assert.equal(canonicalJson({ x: null }), '{"x":null}');
  });
});
