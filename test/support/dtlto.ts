import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** LLVM 22 (DTLTO needs lld ≥ 21). */
export const CLANG22 = process.env.LTOCACHE_TEST_CLANG22 ?? '/usr/bin/clang-22';
export const LLD22 = process.env.LTOCACHE_TEST_LLD22 ?? '/usr/bin/ld.lld-22';
export const LLVM_AR22 = process.env.LTOCACHE_TEST_LLVM_AR22 ?? '/usr/bin/llvm-ar-22';

/**
 * A plain serial DTLTO distributor: runs `common.args + job.args` for each job, in lld's cwd, one
 * after the other. With $DTLTO_SAVE_INDEX_DIR set it also keeps each job's index as
 * `<dir>/<module basename>.thinlto.bc` (lld deletes its own copies after the link).
 */
export function writeSerialDistributor(path: string): string {
  writeFileSync(
    path,
    `#!${process.execPath}
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const d = JSON.parse(fs.readFileSync(process.argv[process.argv.length - 1], 'utf8'));
const save = process.env.DTLTO_SAVE_INDEX_DIR;
for (const j of d.jobs) {
  const [cmd, ...rest] = [...d.common.args, ...j.args];
  const r = spawnSync(cmd, rest, { stdio: 'inherit' });
  if (r.status !== 0) process.exit(1);
  if (save) {
    const idx = j.args.find((a) => a.startsWith('-fthinlto-index=')).slice('-fthinlto-index='.length);
    fs.copyFileSync(idx, path.join(save, path.basename(j.args[0]) + '.thinlto.bc'));
  }
}
`,
  );
  chmodSync(path, 0o755);
  return path;
}

/** Five modules; main imports from mathx, hashx, table and lonely; table imports sq from mathx. */
export const DTLTO_SOURCES: Record<string, string> = {
  'main.c': `#include <stdio.h>
int sq(int); int cube(int); unsigned fnv(const char *); int table_score(int); int lonely(int);
int main(void) {
  long s = 0;
  for (int i = 1; i <= 10; i++) s += sq(i) + cube(i) % 7;
  printf("sum=%ld hash=%u table=%d lonely=%d\\n", s, fnv("ltocache"), table_score(5), lonely(4));
  return 0;
}
`,
  'mathx.c': 'int sq(int x) { return x * x; }\nint cube(int x) { return x * x * x; }\n',
  'hashx.c': 'unsigned fnv(const char *s) { unsigned h = 2166136261u; while (*s) { h ^= (unsigned char)*s++; h *= 16777619u; } return h; }\n',
  'table.c': 'int sq(int);\nint table_score(int n) { int t = 0; for (int i = 0; i < n; i++) t += sq(i) * 3; return t; }\n',
  'lonely.c': 'int lonely(int x) { return x * 4; }\n',
};

export function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  return { status: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
}

/** A checkout of the DTLTO test program: sources, front end (`-flto=thin -O2`), links. */
export class DtltoTree {
  readonly modules = Object.keys(DTLTO_SOURCES).map((f) => f.slice(0, -2));
  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true });
    for (const [f, text] of Object.entries(DTLTO_SOURCES)) writeFileSync(join(dir, f), text);
  }

  frontEnd(mods = this.modules): void {
    for (const m of mods) {
      const r = run(CLANG22, ['-flto=thin', '-O2', '-c', `${m}.c`, '-o', `${m}.o`], this.dir);
      if (r.status !== 0) throw new Error(`front end ${m}: ${r.stderr}`);
    }
  }

  /** The expected output: the same sources built without LTO. */
  oracle(): string {
    const r = run(CLANG22, ['-O0', ...this.modules.map((m) => `${m}.c`), '-o', 'oracle'], this.dir);
    if (r.status !== 0) throw new Error(r.stderr);
    return run(join(this.dir, 'oracle'), [], this.dir).stdout;
  }

  /** Links with lld's own options (`-Wl,--thinlto-distributor=…`); `objects` default to the modules' .o files. */
  linkLld(distributor: string, distributorArgs: string[], o: { out?: string; env?: NodeJS.ProcessEnv; objects?: string[]; extra?: string[] } = {}) {
    const lld = [
      `--thinlto-distributor=${distributor}`,
      ...distributorArgs.map((a) => `--thinlto-distributor-arg=${a}`),
      `--thinlto-remote-compiler=${CLANG22}`,
      ...(o.extra ?? []),
    ];
    return run(
      CLANG22,
      ['-flto=thin', '-fuse-ld=lld', `--ld-path=${LLD22}`, ...lld.map((a) => `-Wl,${a}`), ...(o.objects ?? this.modules.map((m) => `${m}.o`)), '-o', o.out ?? 'prog'],
      this.dir,
      o.env,
    );
  }

  /** Links with the clang driver's form: `-fthinlto-distributor=… -Xthinlto-distributor=…`. */
  linkDriver(distributor: string, distributorArgs: string[], o: { out?: string; env?: NodeJS.ProcessEnv } = {}) {
    return run(
      CLANG22,
      [
        '-flto=thin',
        '-fuse-ld=lld',
        `--ld-path=${LLD22}`,
        `-fthinlto-distributor=${distributor}`,
        ...distributorArgs.map((a) => `-Xthinlto-distributor=${a}`),
        ...this.modules.map((m) => `${m}.o`),
        '-o',
        o.out ?? 'prog',
      ],
      this.dir,
      o.env,
    );
  }
}
