import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/** Locates an LLVM 19 tool: env override, then PATH name, then Debian's install dir. */
export function llvmTool(name: 'clang' | 'ld.lld', env: NodeJS.ProcessEnv = process.env): string {
  const override = name === 'clang' ? env.LTOCACHE_TEST_CLANG : env.LTOCACHE_TEST_LLD;
  if (override) return override;
  for (const candidate of [`${name}-19`, `/usr/lib/llvm-19/bin/${name}`]) {
    const r = spawnSync(candidate, ['--version'], { stdio: 'ignore' });
    if (r.status === 0) return candidate;
  }
  throw new Error(`${name} 19 not found (install clang-19 lld-19, or set LTOCACHE_TEST_${name === 'clang' ? 'CLANG' : 'LLD'})`);
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], opts: { cwd: string; env?: NodeJS.ProcessEnv }): RunResult {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  return { status: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
}

function must(r: RunResult, what: string): RunResult {
  if (r.status !== 0) throw new Error(`${what} failed (${r.status}): ${r.stderr}`);
  return r;
}

export interface ThinBuildOptions {
  /** Build directory; the fixture sources are copied here by `ThinBuild.fromFixture`. */
  dir: string;
  clang?: string;
  lld?: string;
  /** Front-end and backend flags (the kernel saves one set and reuses it). */
  cflags?: string[];
}

/**
 * Drives a distributed ThinLTO build of a small C program the way kbuild does: front end per
 * module, a thin link that writes one index per module, one backend job per module, final link.
 */
export class ThinBuild {
  readonly dir: string;
  readonly clang: string;
  readonly lld: string;
  cflags: string[];
  readonly modules: string[];

  constructor(o: ThinBuildOptions) {
    this.dir = o.dir;
    this.clang = o.clang ?? llvmTool('clang');
    this.lld = o.lld ?? llvmTool('ld.lld');
    this.cflags = o.cflags ?? ['-O2', '-Wframe-larger-than=1024'];
    this.modules = readdirSync(o.dir)
      .filter((f) => f.endsWith('.c'))
      .map((f) => f.slice(0, -2))
      .sort();
  }

  static fromFixture(fixtureDir: string, dir: string, o: Omit<ThinBuildOptions, 'dir'> = {}): ThinBuild {
    mkdirSync(dir, { recursive: true });
    cpSync(fixtureDir, dir, { recursive: true });
    return new ThinBuild({ ...o, dir });
  }

  frontEnd(modules = this.modules): void {
    for (const m of modules) must(run(this.clang, [...this.cflags, '-flto=thin', '-c', '-o', `${m}.o`, `${m}.c`], { cwd: this.dir }), `front end ${m}`);
  }

  /** Rewrites every index file, as the kernel's thin link does on every build. */
  thinLink(): void {
    must(run(this.lld, ['-r', '--thinlto-index-only=thinlto.list', ...this.modules.map((m) => `${m}.o`), '-o', 'thinlink.tmp.o'], { cwd: this.dir }), 'thin link');
  }

  /** The kernel's exact backend shape. */
  backendArgs(m: string, extra: string[] = [], out = `${m}.thinlto-native.o`): string[] {
    return [...this.cflags, '-x', 'ir', '-fno-lto', '-Wno-unused-command-line-argument', `-fthinlto-index=${m}.o.thinlto.bc`, ...extra, '-c', '-o', out, `${m}.o`];
  }

  /** Runs one backend job, optionally behind a wrapper (`[bin/ltocache]`). */
  backend(m: string, o: { wrapper?: string[]; extra?: string[]; out?: string; env?: NodeJS.ProcessEnv; compiler?: string } = {}): RunResult {
    const args = this.backendArgs(m, o.extra, o.out);
    const compiler = o.compiler ?? this.clang;
    const [cmd, ...pre] = o.wrapper?.length ? [...o.wrapper, compiler] : [compiler];
    return run(cmd!, [...pre, ...args], { cwd: this.dir, env: o.env ?? process.env });
  }

  link(out = 'prog'): void {
    must(run(this.clang, ['-fuse-ld=lld', ...this.modules.map((m) => `${m}.thinlto-native.o`), '-o', out], { cwd: this.dir }), 'final link');
  }

  runProgram(out = 'prog'): string {
    return must(run(join(this.dir, out), [], { cwd: this.dir }), 'program').stdout;
  }

  copyTo(dir: string): ThinBuild {
    cpSync(this.dir, dir, { recursive: true, preserveTimestamps: true });
    return new ThinBuild({ dir, clang: this.clang, lld: this.lld, cflags: this.cflags });
  }
}
