import { type BigIntStats, realpathSync, statSync } from 'node:fs';
import { open, readdir, realpath } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { type DigestSource, nowNs, settledAt, statIdentity, statOrUndefined } from './fileDigests.js';
import type { Digest } from './hash.js';
import { LOADER_ENV, readElf, traceLoader, type Watched, watchState } from './loaderTrace.js';
import type { ObservingFiles } from './observed.js';
import { Uncacheable } from './uncacheable.js';

export interface Toolchain {
  /** The name the compiler was invoked as: clang picks its driver mode from it. */
  driver: string;
  realpath: string;
  digest: Digest;
  /** Every shared library the dynamic loader maps for it, with content digests. */
  libs: { path: string; digest: Digest }[];
  /** Clang configuration files (*.cfg) that could be loaded implicitly. */
  configs: { path: string; digest: Digest }[];
  /** PATH, for a compiler that is a script (it finds the programs it runs through PATH). */
  searchPath?: string;
  /** The distribution's release files clang's driver reads (DISTRO_FILES) that exist, with content digests. */
  system: { path: string; digest: Digest }[];
}

/** Config files clang may load by a fixed path (clang 22 names /etc/clang.cfg). */
const CONFIG_FILES = ['/etc/clang.cfg'];
/** The loader's cache: where it finds libraries that no RPATH or LD_LIBRARY_PATH names. */
const LD_SO_CACHE = '/etc/ld.so.cache';
/** Libraries glibc's loader maps into every program, before the program's own. */
const LD_SO_PRELOAD = '/etc/ld.so.preload';
/**
 * Files clang's driver reads to tell the Linux distribution (clang/lib/Driver/Distro.cpp), whose
 * answer changes defaults that reach the object (on Gentoo, no `-faddrsig`): keyed by content when
 * present, by absence when not.
 */
export const DISTRO_FILES = [
  '/etc/os-release',
  '/usr/lib/os-release',
  '/etc/lsb-release',
  '/etc/redhat-release',
  '/etc/debian_version',
  '/etc/SuSE-release',
  '/etc/gentoo-release',
] as const;

/** Stat identity of a directory (an entry added or removed changes its mtime), or '-' if absent. */
function dirState(st: BigIntStats | undefined): string {
  return st ? statIdentity(st) : '-';
}

/** LLVM major versions named by a compiler's paths: `clang-22`, `/usr/lib/llvm-22/bin/clang`. */
export function llvmMajors(...paths: string[]): string[] {
  const out = new Set<string>();
  for (const p of paths) for (const m of p.matchAll(/(?:clang|llvm)-?(\d+)(?:[./]|$)/g)) out.add(m[1]!);
  return [...out];
}

/**
 * Directories clang may load `*.cfg` files from: the executable's directory (as invoked and
 * resolved), `<llvm prefix>/etc` of the resolved executable, `/etc/clang`, and per LLVM major
 * version `/etc/clang<major>`, `/etc/clang-<major>`, `/usr/lib/llvm-<major>/etc`.
 */
export function configDirs(compiler: string, real: string): string[] {
  const majors = llvmMajors(basename(compiler), real);
  return [
    ...new Set([
      dirname(real),
      dirname(compiler),
      join(dirname(dirname(real)), 'etc'),
      '/etc/clang',
      ...majors.flatMap((v) => [`/etc/clang${v}`, `/etc/clang-${v}`, `/usr/lib/llvm-${v}/etc`]),
    ]),
  ];
}

/** A toolchain's identity and what its memo entry rests on besides its memo key. */
interface Identified {
  t: Toolchain;
  /** Where the loader searched without success (loaderTrace.ts). */
  watched: Watched[];
}

/** The libraries a plugin maps, with digests, and where the loader searched for them without success. */
interface PluginLibraries {
  libs: { path: string; digest: Digest }[];
  watched: Watched[];
}

/** Plugin memo entries kept at most (each rebuild of a plugin adds one). */
const MAX_PLUGIN_MEMO = 1000;

/**
 * Identifies a compiler by content: its resolved executable, the libraries it loads (most of
 * LLVM lives in libLLVM.so, so the executable alone does not pin code generation) and implicit
 * config files. Memoised by the executable's identity and the loader environment, and used from
 * the memo only while every directory the loader searched before finding each library is as it
 * was.
 */
export class ToolchainIdentifier {
  private readonly memo = new Map<string, Promise<Identified>>();
  private readonly plugins = new Map<string, Promise<PluginLibraries>>();
  /** The dynamic loader of each toolchain (its executable's PT_INTERP; null: none). */
  private readonly loaders = new WeakMap<Toolchain, string | null>();
  /** Identities computed rather than taken from the memo, for tests. */
  computed = 0;

  /** `distroFiles`: the release files to key (DISTRO_FILES; tests name their own). */
  constructor(
    private readonly files: DigestSource,
    private readonly distroFiles: readonly string[] = DISTRO_FILES,
  ) {}

  /**
   * `observe` (a job's observer) learns everything the identity rests on: the compiler as given,
   * its libraries and configs, the config directories, the loader cache and preload list, every
   * directory the loader searched without success (or the outermost absent one above it), PATH
   * for a script.
   */
  async identify(compiler: string, env: Record<string, string>, observe?: ObservingFiles, cwd?: string): Promise<Toolchain> {
    const real = realpathSync.native(compiler);
    // An empty or relative LD_LIBRARY_PATH element is searched from clang's working directory (a
    // trailing ':' is a common slip): then the job's directory is part of the identity.
    const from = env.LD_LIBRARY_PATH?.split(':').some((d) => !d.startsWith('/')) ? cwd : undefined;
    const st = statSync(real, { bigint: true });
    const dirs = configDirs(compiler, real);
    // One stat per directory serves both the memo key and the job's observations.
    const dirStats = dirs.map(statOrUndefined);
    const loaderCache = statOrUndefined(LD_SO_CACHE);
    const preload = statOrUndefined(LD_SO_PRELOAD);
    // A config file added next to the compiler, or a new loader cache, changes the identity too.
    const memoKey = JSON.stringify([
      compiler,
      real,
      String(st.dev),
      String(st.ino),
      String(st.size),
      String(st.mtimeNs),
      String(st.ctimeNs),
      env.PATH ?? '',
      ...LOADER_ENV.map((k) => env[k] ?? ''),
      ...dirStats.map(dirState),
      ...CONFIG_FILES.map((f) => dirState(statOrUndefined(f))),
      ...this.distroFiles.map((f) => dirState(statOrUndefined(f))),
      dirState(loaderCache),
      dirState(preload),
      from ?? '',
    ]);
    // The identities stand for what was read only once settled: a config file added in the same
    // timestamp tick as the listing leaves its directory's identity as it was.
    const at = nowNs();
    const settled = [st, loaderCache, preload, ...dirStats].every((d) => !d || settledAt(d, at));
    let p = settled ? this.memo.get(memoKey) : undefined;
    if (!p) {
      p = this.compute(compiler, real, env, from);
      if (settled) {
        this.memo.set(memoKey, p);
        p.catch(() => this.memo.delete(memoKey));
      }
    }
    const { t, watched } = await p;
    const files = observe ?? this.files;
    // A library that appears earlier on the loader's search leaves the memo key as it was but
    // changes the directory it appears in (or one that was absent): recompute when any moved.
    const watchedStats = watched.map((w) => statOrUndefined(w.path));
    if (watched.some((w, i) => watchState(watchedStats[i]) !== w.state)) {
      this.memo.delete(memoKey);
      return this.identify(compiler, env, observe, cwd);
    }
    // Libraries, configs and the executable itself can change under a memo key that did not
    // (in place within a timestamp tick): re-check their digests (memoised by stat, so this is
    // cheap) and recompute when any moved.
    for (const f of [{ path: real, digest: t.digest }, ...t.libs, ...t.configs, ...t.system]) {
      const d = await files.digest(f.path);
      if (d.kind !== 'file' || d.digest !== f.digest) {
        this.memo.delete(memoKey);
        return this.identify(compiler, env, observe, cwd);
      }
    }
    if (observe) {
      await observe.digest(compiler);
      await observe.digest(LD_SO_CACHE);
      await observe.digest(LD_SO_PRELOAD);
      for (const [i, dir] of dirs.entries()) observe.directory(dir, { st: dirStats[i] });
      for (const [i, w] of watched.entries()) {
        if (w.kind === 'dir') observe.directory(w.path, { st: watchedStats[i] });
        else await observe.digest(w.path);
      }
      for (const f of CONFIG_FILES) await observe.digest(f);
      for (const f of this.distroFiles) await observe.digest(f);
      if (t.searchPath !== undefined) observe.environment('PATH', env.PATH);
    }
    return t;
  }

  /**
   * The libraries clang maps when it dlopens `plugin` (a path with a '/', as written, relative to
   * `cwd`), with digests: the plugin's DT_NEEDED closure as the loader resolves it under the job's
   * environment. The loader is clang's own (its PT_INTERP), run in the job's directory with the
   * plugin as its program under LD_TRACE_LOADED_OBJECTS=1, as `ldd` does, and its search is watched
   * as the toolchain's is. A needed library the loader does not find must be one clang has mapped
   * already (a toolchain library by that name), or the job is uncacheable. Memoised by the
   * plugin's identity and the loader environment; `observe` learns the libraries and the search.
   */
  async pluginLibraries(toolchain: Toolchain, plugin: string, cwd: string, env: Record<string, string>, observe?: ObservingFiles): Promise<{ path: string; digest: Digest }[]> {
    const abs = plugin.startsWith('/') ? plugin : `${cwd}/${plugin}`;
    const st = statOrUndefined(abs);
    if (!st?.isFile()) throw new Uncacheable('missing-file', `plugin ${plugin} is not a regular file`);
    const interp = await this.loaderOf(toolchain);
    if (!interp) throw new Uncacheable('plugin-unresolved', `${toolchain.realpath} names no dynamic loader to list the libraries of plugin ${plugin}`);
    const loaderCache = statOrUndefined(LD_SO_CACHE);
    const preload = statOrUndefined(LD_SO_PRELOAD);
    const memoKey = JSON.stringify([interp, abs, statIdentity(st), String(st.size), ...LOADER_ENV.map((k) => env[k] ?? ''), dirState(loaderCache), dirState(preload)]);
    const at = nowNs();
    const settled = [st, loaderCache, preload].every((d) => !d || settledAt(d, at));
    let p = settled ? this.plugins.get(memoKey) : undefined;
    if (!p) {
      p = this.tracePlugin(interp, plugin, cwd, env, toolchain);
      if (settled) {
        if (this.plugins.size >= MAX_PLUGIN_MEMO) this.plugins.clear();
        this.plugins.set(memoKey, p);
        p.catch(() => this.plugins.delete(memoKey));
      }
    }
    const { libs, watched } = await p;
    const files = observe ?? this.files;
    const watchedStats = watched.map((w) => statOrUndefined(w.path));
    let moved = watched.some((w, i) => watchState(watchedStats[i]) !== w.state);
    for (const l of libs) {
      if (moved) break;
      const d = await files.digest(l.path);
      moved = d.kind !== 'file' || d.digest !== l.digest;
    }
    if (moved) {
      this.plugins.delete(memoKey);
      return this.pluginLibraries(toolchain, plugin, cwd, env, observe);
    }
    if (observe)
      for (const [i, w] of watched.entries()) {
        if (w.kind === 'dir') observe.directory(w.path, { st: watchedStats[i] });
        else await observe.digest(w.path);
      }
    return libs;
  }

  private async tracePlugin(interp: string, plugin: string, cwd: string, env: Record<string, string>, toolchain: Toolchain): Promise<PluginLibraries> {
    // The loader takes a leading '-' for one of its options.
    const trace = await traceLoader(interp, [plugin.startsWith('-') ? `./${plugin}` : plugin], env, cwd);
    if (!trace.ok) throw new Uncacheable('plugin-unresolved', `the loader cannot list the libraries of plugin ${plugin}`);
    // clang maps a needed library by its soname when it has one of that name loaded already.
    const mapped = new Set(toolchain.libs.map((l) => basename(l.path)));
    const lost = trace.missing.find((n) => !mapped.has(n));
    if (lost !== undefined) throw new Uncacheable('plugin-unresolved', `plugin ${plugin} needs ${lost}, which the loader does not find`);
    const digests = await Promise.all(trace.libs.map((path) => this.files.digest(path)));
    const libs: PluginLibraries['libs'] = [];
    for (const [i, d] of digests.entries()) if (d.kind === 'file') libs.push({ path: trace.libs[i]!, digest: d.digest });
    return { libs, watched: trace.watched };
  }

  private async loaderOf(t: Toolchain): Promise<string | null> {
    let interp = this.loaders.get(t);
    if (interp === undefined) {
      const target = await loaderTarget(t.realpath);
      interp = target.binary ? ((await readElf(target.binary).catch(() => null))?.interp ?? null) : null;
      this.loaders.set(t, interp);
    }
    return interp;
  }

  /** Those of `paths` that are regular files, with their digests, in order. */
  private async present(paths: readonly string[]): Promise<{ path: string; digest: Digest }[]> {
    const out: { path: string; digest: Digest }[] = [];
    for (const path of paths) {
      const d = await this.files.digest(path);
      if (d.kind === 'file') out.push({ path, digest: d.digest });
    }
    return out;
  }

  private async compute(compiler: string, real: string, env: Record<string, string>, cwd?: string): Promise<Identified> {
    this.computed++;
    // All at once: a fresh daemon's first jobs wait for this, and the libraries (libLLVM alone is
    // over 100 MB) are read through the thread pool while earlier ones are hashed.
    const selfDigest = this.files.digest(real);
    selfDigest.catch(() => {}); // awaited below; not left unhandled if listing the libraries fails first
    const target = await loaderTarget(real);
    const trace = target.binary ? await traceLoader(target.binary, [], env, cwd) : { libs: [], watched: [] };
    const paths = trace.libs;
    const [self, ...digests] = await Promise.all([selfDigest, ...paths.map((path) => this.files.digest(path))]);
    if (self!.kind !== 'file') throw new Error(`compiler ${real} is not a regular file`);
    const libs: Toolchain['libs'] = [];
    for (const [i, d] of digests.entries()) if (d.kind === 'file') libs.push({ path: paths[i]!, digest: d.digest });
    const configs: Toolchain['configs'] = [];
    for (const dir of configDirs(compiler, real)) {
      let names: string[] = [];
      try {
        names = (await readdir(dir)).filter((n) => n.endsWith('.cfg')).sort();
      } catch {
        continue;
      }
      for (const n of names) {
        const d = await this.files.digest(join(dir, n));
        if (d.kind === 'file') configs.push({ path: join(dir, n), digest: d.digest });
      }
    }
    configs.push(...(await this.present(CONFIG_FILES)));
    const system = await this.present(this.distroFiles);
    const t: Toolchain = { driver: basename(compiler), realpath: real, digest: self.digest, libs, configs, system };
    if (target.script) t.searchPath = env.PATH ?? '';
    return { t, watched: trace.watched };
  }
}

/**
 * The binary whose libraries to list: the executable itself when it is ELF, the interpreter of a
 * `#!` script (the script is never run to find out), nothing for anything else.
 */
async function loaderTarget(exe: string): Promise<{ binary: string | null; script: boolean }> {
  const fh = await open(exe, 'r');
  try {
    const head = Buffer.alloc(256);
    const { bytesRead } = await fh.read(head, 0, 256, 0);
    const bytes = head.subarray(0, bytesRead);
    if (bytes.subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) return { binary: exe, script: false };
    if (bytes[0] === 0x23 && bytes[1] === 0x21) {
      const line = bytes.toString('latin1').slice(2).split('\n')[0]!.trim();
      const interp = line.split(/\s+/)[0];
      return { binary: interp ? await realpath(interp).catch(() => null) : null, script: true };
    }
    return { binary: null, script: true };
  } finally {
    await fh.close();
  }
}
