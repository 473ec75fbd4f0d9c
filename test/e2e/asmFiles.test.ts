import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CacheEnv, CLIENT, tempDir } from '../support/env.js';

/**
 * Files read by the integrated assembler (`.incbin`, `.include`) are inputs no flag names: the
 * bitcode and the index stay byte-identical when they change. Real clang 19 / lld 19, compared
 * against direct clang after every edit.
 */

const CC = 'clang-19';
const FLAGS = ['-O2', '--target=x86_64-linux-gnu'];

// `fa` carries inline asm that includes inc.s (which embeds deep.dat) and is imported into b;
// a's module asm embeds blob.dat; d hides its .incbin's operand behind a macro argument, e its
// directive name (the macro builds `.incbin` from `.\dir` with dir = incbin).
const SOURCES: Record<string, string> = {
  'a.c': [
    'asm(".pushsection .rodata\\n.global blob\\nblob:\\n.incbin \\"blob.dat\\"\\n.popsection\\n");',
    'int fa(int x) { asm volatile(".pushsection .data\\n.include \\"inc.s\\"\\n.popsection\\n"); return x + 1; }',
    '',
  ].join('\n'),
  'b.c': 'int fa(int);\nint main(int argc, char **argv) { (void)argv; return fa(argc); }\n',
  'd.c': 'asm(".macro emb f\\n.incbin \\"\\\\f\\"\\n.endm\\n.pushsection .rodata\\nemb blob.dat\\n.popsection\\n");\nint fd(void) { return 4; }\n',
  'e.c': 'asm(".macro ldfile dir, f\\n.\\\\dir \\"\\\\f\\"\\n.endm\\n.pushsection .rodata\\nldfile incbin, blob.dat\\n.popsection\\n");\nint fe(void) { return 5; }\n',
  'inc.s': '.incbin "deep.dat"\n',
  'blob.dat': 'blob-one\n',
  'deep.dat': 'deep-one\n',
};
const MODULES = ['a', 'b', 'd', 'e'];

function run(cmd: string, args: string[], cwd: string, env?: NodeJS.ProcessEnv) {
  const r = spawnSync(cmd, args, { cwd, env: env ?? process.env, encoding: 'utf8' });
  return { status: r.status ?? 128, stderr: r.stderr };
}

function backendArgs(m: string, out: string): string[] {
  return [...FLAGS, '-x', 'ir', '-fno-lto', '-Wno-unused-command-line-argument', `-fthinlto-index=${m}.o.thinlto.bc`, '-c', '-o', out, `${m}.o`];
}

describe('assembler-read files are in the key', () => {
  let cache: CacheEnv;
  let dir: string;
  before(() => {
    cache = new CacheEnv('asm');
    cache.start();
    dir = tempDir('asm');
    for (const [f, text] of Object.entries(SOURCES)) writeFileSync(join(dir, f), text);
    for (const m of MODULES) assert.equal(run(CC, [...FLAGS, '-flto=thin', '-c', `${m}.c`, '-o', `${m}.o`], dir).status, 0);
  });
  after(() => {
    cache.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Thin link, then every backend job through ltocache and directly; returns stats deltas and objects. */
  function build() {
    const link = run('ld.lld-19', ['-r', '--thinlto-index-only=list', ...MODULES.map((m) => `${m}.o`), '-o', 'out.o'], dir);
    assert.equal(link.status, 0, link.stderr);
    const s0 = cache.stats();
    const served = new Map<string, Buffer>();
    for (const m of MODULES) {
      const r = run(CLIENT, [CC, ...backendArgs(m, `${m}.native.o`)], dir, cache.env);
      assert.equal(r.status, 0, `${m}: ${r.stderr}`);
      served.set(m, readFileSync(join(dir, `${m}.native.o`)));
    }
    const s1 = cache.stats();
    for (const m of MODULES) {
      const r = run(CC, backendArgs(m, `${m}.direct.o`), dir);
      assert.equal(r.status, 0, r.stderr);
      assert.ok(served.get(m)!.equals(readFileSync(join(dir, `${m}.direct.o`))), `${m}: served object differs from direct clang`);
    }
    const unresolved = (s: typeof s0) => s.uncacheable_by_reason['asm-include-unresolved'] ?? 0;
    return { hits: s1.hits - s0.hits, misses: s1.misses - s0.misses, unresolved: unresolved(s1) - unresolved(s0), served };
  }

  test('cold misses, warm hits, .incbin operand or name hidden by a macro is uncacheable with its own reason', () => {
    const cold = build();
    assert.deepEqual([cold.hits, cold.misses, cold.unresolved], [0, 2, 2]);
    const warm = build();
    assert.deepEqual([warm.hits, warm.misses, warm.unresolved], [2, 0, 2]);
  });

  test('editing a .incbin file of module asm (bitcode and index unchanged) recompiles', () => {
    const before = build();
    const bitcode = readFileSync(join(dir, 'a.o'));
    writeFileSync(join(dir, 'blob.dat'), 'blob-two\n');
    const edited = build();
    assert.ok(readFileSync(join(dir, 'a.o')).equals(bitcode), 'the front end output did not change');
    assert.ok(!edited.served.get('a')!.equals(before.served.get('a')!), 'the object embeds the new blob');
    assert.ok(!edited.served.get('e')!.equals(before.served.get('e')!), 'e embeds the new blob through its macro-built .incbin');
    assert.ok(edited.misses >= 1, 'a missed');
  });

  test('editing a file .include-d by inline asm imported from another module recompiles the importer', () => {
    const before = build();
    writeFileSync(join(dir, 'deep.dat'), 'deep-two\n');
    const edited = build();
    assert.ok(!edited.served.get('b')!.equals(before.served.get('b')!), 'b imported fa and embeds deep.dat');
    assert.equal(edited.misses, 2);
    assert.equal(edited.hits, 0);
  });
});
