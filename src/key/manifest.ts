import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { asOpened } from '../util/asOpened.js';
import { isOpaque } from '../util/opaqueEnv.js';
import { type AsmScan, directivesInText, scanBitcodeAsm } from './asmFiles.js';
import type { ConfigFiles } from './configFiles.js';
import { type DigestSource, statOrUndefined } from './fileDigests.js';
import { DIGEST_RE, HASH_ALGORITHM, hashBytes } from './hash.js';
import { PID_PLACEHOLDER, type Renamer } from './linkNames.js';
import { readModuleTable, renamedIndexDigest } from './moduleTable.js';
import { asksNative, nativeCpu } from './nativeCpu.js';
import type { ObservingFiles } from './observed.js';
import { fileCandidates, type Job, parseJob } from './parseJob.js';
import type { ToolchainIdentifier } from './toolchain.js';
import { openedForKey, Uncacheable, type UncacheableReason } from './uncacheable.js';

const digest = z.string().regex(DIGEST_RE);
const FileRef = z.object({ path: z.string(), digest });

/**
 * Set (clang tests them for presence, so even empty), each makes a job uncacheable
 * (`environment`): under the `CC_*` ones clang logs its cc1 command, diagnostics or process
 * statistics to stderr, stdout or a file, which a hit would not reproduce; `.secure_log_unique`
 * appends to `AS_SECURE_LOG_FILE`; `CCC_OVERRIDE_OPTIONS` edits the command line, and a flag it
 * adds may name a file the key never reads; `LD_AUDIT` loads libraries into clang that can rebind
 * any symbol it calls; under `FORCE_CLANG_DIAGNOSTICS_CRASH` clang fails every compile (status 1,
 * crash diagnostics on stderr) where a hit would succeed.
 */
export const UNCACHEABLE_ENV = [
  'CCC_OVERRIDE_OPTIONS',
  'AS_SECURE_LOG_FILE',
  'CC_PRINT_OPTIONS',
  'CC_PRINT_OPTIONS_FILE',
  'CC_LOG_DIAGNOSTICS',
  'CC_LOG_DIAGNOSTICS_FILE',
  'CC_PRINT_PROC_STAT',
  'CC_PRINT_PROC_STAT_FILE',
  'CC_PRINT_HEADERS',
  'CC_PRINT_HEADERS_FILE',
  'CC_PRINT_INTERNAL_STAT',
  'CC_PRINT_INTERNAL_STAT_FILE',
  'LD_AUDIT',
  'FORCE_CLANG_DIAGNOSTICS_CRASH',
] as const;

/**
 * Environment variables that can change a backend job's output (docs/key.md). UNCACHEABLE_ENV's
 * are among them only to be recorded unset in every memo: set, there is no key.
 */
export const KEY_ENV = [
  'CLANG_NO_DEFAULT_CONFIG',
  'LD_LIBRARY_PATH',
  'LD_PRELOAD',
  'COMPILER_PATH',
  // The minimum OS version and SDK an Apple target's object records.
  'MACOSX_DEPLOYMENT_TARGET',
  'IPHONEOS_DEPLOYMENT_TARGET',
  'TVOS_DEPLOYMENT_TARGET',
  'WATCHOS_DEPLOYMENT_TARGET',
  'XROS_DEPLOYMENT_TARGET',
  'SDKROOT',
  // The producer string of the bitcode an `-emit-llvm` job writes.
  'LLVM_OVERRIDE_PRODUCER',
  ...UNCACHEABLE_ENV,
] as const;

/**
 * The job as clang runs it: the options of the config files it loads before the command's own,
 * parsed again; the config files and the `@file`s in them are keyed and checked like response
 * files. Anything the parse refuses in them makes the job uncacheable for that reason. Expanding
 * the result again gives the same job (its `argv` stays the command's).
 */
async function withConfigFiles(configs: ConfigFiles, job: Job, compiler: string, cwd: string, env: Record<string, string>, toolchain: Manifest['toolchain']): Promise<Job> {
  const x = await configs.expand({ compiler, argv: job.argv, tokens: job.tokens, cwd, env, configDigests: toolchain.configs });
  if (!x.files.length) return job;
  // A default config from a directory the toolchain does not list could be joined by another
  // there that no memo check would notice: only listed or named files are followed.
  const named = new Set<string>();
  for (let i = 0; i < job.argv.length; i++) {
    const a = job.argv[i]!;
    if (a.startsWith('--config=')) named.add(asOpened(cwd, a.slice('--config='.length)));
    else if (a === '--config' && i + 1 < job.argv.length) named.add(asOpened(cwd, job.argv[i + 1]!));
  }
  const listed = new Set(toolchain.configs.map((c) => c.path));
  const unwatched = x.loaded.find((p) => !listed.has(p) && !named.has(p));
  if (unwatched) throw new Uncacheable('config-file', `clang loads ${unwatched}, from a directory the toolchain's identity does not list`);
  const again = await parseJob([...x.head, ...job.argv], cwd);
  if (again.kind === 'uncacheable') throw new Uncacheable(again.reason, `${again.detail} (with the options of ${x.files[0]!.path})`);
  return { ...again.job, argv: job.argv, responseFiles: job.responseFiles, configFiles: x.files };
}

/**
 * Why a job may run under clang config files, or null when it cannot. A config file's options
 * count as the command's own (flags that add outputs such as `-gsplit-dwarf`, or name files), so
 * such a job is keyed on the command as clang expands it (withConfigFiles), or is uncacheable
 * (`config-file`) without a ConfigFiles to expand it. Default configs count unless
 * `--no-default-config` or `CLANG_NO_DEFAULT_CONFIG` turns them off; `toolchain.configs` lists
 * every `*.cfg` in the directories clang searches, not only the ones it picks.
 */
function configInEffect(job: Job, toolchain: Manifest['toolchain'], env: Record<string, string>): string | null {
  let noDefault = (env.CLANG_NO_DEFAULT_CONFIG ?? '') !== '';
  for (const t of job.tokens) {
    if (t.v === '--config' || t.v.startsWith('--config=')) return `${t.v} names a clang config file`;
    if (t.v === '--no-default-config') noDefault = true;
  }
  if (!noDefault && toolchain.configs.length) return `clang loads default config files from ${toolchain.configs[0]!.path}`;
  return null;
}

/**
 * Dropped flags clang does not mention with `-x ir`. The others draw "argument unused during
 * compilation" (an error under -Werror): the replayed stderr would be another command's, so they
 * are keyed unless that warning is off (unusedArgumentWarningOff).
 */
const SILENT_DROPS = /^(-D|-std=|-nostdinc$)/;

/** Whether the job turns "argument unused during compilation" off (the kernel passes -Wno-unused-command-line-argument). */
function unusedArgumentWarningOff(job: Job): boolean {
  let off = false;
  for (const t of job.tokens) {
    if (t.t !== 'flag') continue;
    if (t.v === '-Qunused-arguments' || t.v === '-w') return true;
    if (t.v === '-Wno-unused-command-line-argument') off = true;
    else if (t.v === '-Wunused-command-line-argument' || t.v === '-Werror=unused-command-line-argument' || t.v === '-Weverything') off = false;
  }
  return off;
}

/**
 * Flags under which an output's name changes the bytes written: the object records the `.dwo`
 * name (`-gsplit-dwarf`, `-split-dwarf-file`/`-output` through -Xclang), coverage and profile
 * instrumentation record data-file names derived from it. With any of them present (or any output
 * besides the object) the output names stay keyed.
 */
export const OUTPUT_NAME_MATTERS =
  /^(-gsplit-dwarf|-split-dwarf|-fprofile-arcs|-ftest-coverage|--coverage|-coverage|-fprofile-generate|-fprofile-instr-generate|-fcs-profile-generate|-fmemory-profile)/;

/**
 * Flags under which the output is IR (`-emit-llvm`, and cc1's `-emit-llvm…` actions behind
 * -Xclang): textual IR starts with `; ModuleID = '<input path>'`, so a module's path reaches the
 * bytes written and the renaming of src/key/linkNames.ts does not apply.
 */
const WRITES_IR = /^-emit-llvm/;

/** True when the job's modules keep their names in the key whatever the renamer says: its output
 *  names are keyed, or it writes IR (WRITES_IR). */
export function moduleNamesKeyed(job: Job): boolean {
  return outputNamesKeyed(job) || job.tokens.some((t) => (t.t === 'flag' || t.t === 'dropped') && WRITES_IR.test(t.v));
}

/** True when the job's output names are part of its key (see OUTPUT_NAME_MATTERS). */
export function outputNamesKeyed(job: Job): boolean {
  if (job.outputs.length !== 1) return true;
  return job.tokens.some((t) => (t.t === 'flag' || t.t === 'dropped') && OUTPUT_NAME_MATTERS.test(t.v));
}

/** Key manifest, version 1 (cache-schema/key-manifest.v1.json). Everything in it is keyed except `names` and `dropped`. */
export const Manifest = z.object({
  v: z.literal(1),
  hash: z.literal(HASH_ALGORITHM),
  toolchain: z.object({
    driver: z.string(),
    realpath: z.string(),
    digest,
    libs: z.array(FileRef),
    configs: z.array(FileRef),
    /** PATH, keyed only when the compiler is a script: the programs it runs are found through it. */
    searchPath: z.string().optional(),
    /** The distribution's release files clang's driver reads (os-release, …) that exist; absent in manifests from before it was keyed. */
    system: z.array(FileRef).optional(),
  }),
  /** Every argument in order, after response-file expansion; files named by it with their content. */
  args: z.array(
    z.object({
      a: z.string(),
      files: z.array(FileRef).optional(),
      output: z.string().optional(),
    }),
  ),
  responseFiles: z.array(FileRef),
  input: FileRef,
  /** `path` is absent: the index's name does not change the bytes (its content and modules do); it is under `names`. */
  index: z.object({
    path: z.string().optional(),
    digest,
    /** The index's module string table: each module the backend reads, with the index's hash and the file's content. */
    modules: z.array(z.object({ path: z.string(), moduleHash: z.string(), digest })),
  }),
  /**
   * Files read by `.incbin`/`.include` in asm carried by the input or an imported module (or by a
   * file so included), resolved as the integrated assembler does: the name as written, relative to
   * cwd. `digest` is absent when no such file exists (the compile then fails; the key still changes
   * when it appears). Omitted when there are none.
   */
  asm: z.array(z.object({ directive: z.enum(['incbin', 'include']), name: z.string(), digest: digest.optional() })).optional(),
  /**
   * Files clang reads from a resource directory's `share/` without being told: the sanitizers'
   * default ignorelists (`asan_ignorelist.txt`, …), which a backend job opens under
   * `-fsanitize=`. Present only when an argument starts with `-fsanitize=`: every regular file of
   * `share/` in every resource directory the job may use (see sanitizerResources).
   */
  resources: z.array(FileRef).optional(),
  /**
   * What `-march=native` (`-mcpu=`, `-mtune=`) resolves to on the machine that keyed the job: the
   * cc1 CPU options of `clang -###` (see nativeCpu). Present only for such jobs; their memos are
   * never shared with teammates (the check would be this machine's CPU).
   */
  native: z.array(z.string()).optional(),
  env: z.record(z.string(), z.string()),
  /** Each output's role; its path only when output names are keyed (outputNamesKeyed), else it is under `names`. */
  outputs: z.array(z.object({ role: z.string(), path: z.string().optional() })),
  /** Names that do not change the bytes (the index path; output paths when unkeyed): recorded for explanations, not keyed. */
  names: z.object({ index: z.string(), outputs: z.array(z.object({ role: z.string(), path: z.string() })) }).optional(),
  /** Arguments on the documented drop list: recorded for explanations, not keyed. */
  dropped: z.array(z.string()),
});
export type Manifest = z.infer<typeof Manifest>;

export type KeyResult =
  /** `job`: the job as clang runs it under its config files, when they add to it (its outputs are the ones to store). */
  { kind: 'key'; key: string; manifest: Manifest; job?: Job } | { kind: 'uncacheable'; reason: UncacheableReason; detail: string };

/**
 * Parts of manifests shared between jobs (a toolchain description is one object reused by every
 * job with that compiler) are serialised once. Manifests are never mutated after they are built.
 */
const canonicalMemo = new WeakMap<object, string>();

/** Canonical JSON: object keys sorted, so equal manifests give equal keys. */
export function canonicalJson(v: unknown): string {
  if (!v || typeof v !== 'object') return JSON.stringify(v);
  const memo = canonicalMemo.get(v);
  if (memo !== undefined) return memo;
  let out: string;
  if (Array.isArray(v)) out = `[${v.map(canonicalJson).join(',')}]`;
  else {
    const o = v as Record<string, unknown>;
    out = `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  if (out.length > 512) canonicalMemo.set(v, out);
  return out;
}

/** The manifest without its unkeyed part (`dropped`, `names`): what the key is computed from. */
export function keyedPart(m: Manifest): Omit<Manifest, 'dropped' | 'names'> {
  const { dropped: _dropped, names: _names, ...keyed } = m;
  return keyed;
}

/** The cache key: 128 bits of SHA-256 over the canonical manifest without its unkeyed part. */
export function keyOf(m: Manifest): string {
  return createHash('sha256')
    .update('ltocache-key-v1\0')
    .update(canonicalJson(keyedPart(m)))
    .digest('hex')
    .slice(0, 32);
}

export interface KeyContext {
  files: DigestSource;
  toolchains: ToolchainIdentifier;
  /** Expands the config files a job runs under; without it such a job is uncacheable. */
  configs?: ConfigFiles;
  /** When given, every file, directory and environment entry the key reads is recorded in it (for the memo). */
  observe?: ObservingFiles;
}

/**
 * Builds the manifest of a parsed job: every input's content, the toolchain and the environment.
 * `rename` gives the names of the job's modules in the key (src/key/linkNames.ts); it applies only
 * where they are not keyed anyway (moduleNamesKeyed).
 */
export async function buildManifest(ctx: KeyContext, parsed: Job, compiler: string, cwd: string, env: Record<string, string>, rename?: Renamer): Promise<KeyResult> {
  try {
    const files = ctx.observe ?? ctx.files;
    const need = async (path: string, what: string) => {
      const d = await files.digest(openedForKey(cwd, path, what));
      if (d.kind !== 'file') throw new Uncacheable('missing-file', `${what} ${path} is not a readable regular file`);
      return d.digest;
    };
    // clang-cl by name: a Windows target by default (see windowsTarget in parseJob).
    if (/(^|\/)clang-cl(-[0-9.]+)?(\.exe)?$/i.test(compiler)) throw new Uncacheable('windows-target', `${compiler}: clang-cl targets Windows`);
    for (const k of UNCACHEABLE_ENV) if (env[k] !== undefined) throw new Uncacheable('environment', `${k} is set`);
    // A keyed variable whose value is not UTF-8: the driver runs the key makes could not carry it.
    for (const k of [...KEY_ENV, 'PATH']) if (isOpaque(env[k])) throw new Uncacheable('environment', `${k} is not valid UTF-8`);
    const toolchain = await ctx.toolchains.identify(compiler, env, ctx.observe, cwd);
    let job = parsed;
    const config = configInEffect(parsed, toolchain, env);
    if (config) {
      if (!ctx.configs) throw new Uncacheable('config-file', config);
      job = await withConfigFiles(ctx.configs, parsed, compiler, cwd, env, toolchain);
    }
    const outputsAbs = new Set(job.outputs.map((o) => openedForKey(cwd, o.path, 'output')));
    // A named pipe, a device or a socket is written by clang as it is; a hit would replace it.
    for (const abs of outputsAbs) {
      const st = statOrUndefined(abs);
      if (st && !st.isFile()) throw new Uncacheable('output', `output ${abs} exists and is not a regular file`);
    }
    const namesKeyed = outputNamesKeyed(job);
    const named = rename && !moduleNamesKeyed(job) ? rename : (p: string) => p;
    const dropsQuiet = unusedArgumentWarningOff(job);
    const args: Manifest['args'] = [];
    const dropped: string[] = [];
    let input: Manifest['input'] | undefined;
    let index: Manifest['index'] | undefined;
    let indexPath = '';
    let imported: string[] = [];
    for (const tok of job.tokens) {
      switch (tok.t) {
        case 'dropped':
          if (dropsQuiet || SILENT_DROPS.test(tok.v)) dropped.push(tok.v);
          else args.push({ a: tok.v });
          break;
        case 'output':
          args.push(namesKeyed ? { a: tok.v, output: tok.path } : { a: tok.v });
          break;
        case 'file': {
          if (tok.role === 'index') ctx.observe?.rewritten(asOpened(cwd, tok.path));
          const d = await need(tok.path, tok.role === 'input' ? 'input' : tok.role === 'index' ? 'index file' : `file named by ${tok.v}`);
          // The index's content is keyed under `index`; its name is not.
          if (tok.role === 'index') args.push({ a: tok.v });
          else args.push({ a: tok.v, files: [{ path: tok.role === 'input' ? named(tok.path) : tok.path, digest: d }] });
          if (tok.role === 'input') input = { path: named(tok.path), digest: d };
          if (tok.role === 'index') {
            indexPath = tok.path;
            const part = await indexPart(files, cwd, tok.path, d, need, named);
            index = { digest: part.digest, modules: part.modules };
            imported = part.opened;
          }
          break;
        }
        case 'flag': {
          const named: { path: string; digest: string }[] = [];
          for (const c of [...(tok.setting ? [] : fileCandidates(tok.v)), ...(tok.reads !== undefined ? [tok.reads] : [])]) {
            const abs = openedForKey(cwd, c, `file named by ${tok.v}`);
            if (outputsAbs.has(abs)) continue;
            const d = await files.digest(abs);
            if (d.kind === 'file') named.push({ path: c, digest: d.digest });
            else if (d.kind === 'not-regular') {
              const special = unkeyableSpecialFile(abs);
              if (special) throw new Uncacheable('missing-file', `${c}, named by ${tok.v}, is ${special}: what clang would read from it cannot be keyed`);
            }
          }
          // The libraries a plugin loads change the code it generates as much as the plugin does.
          if (tok.plugin !== undefined)
            for (const l of await ctx.toolchains.pluginLibraries(toolchain, tok.plugin, cwd, env, ctx.observe))
              named.push({ path: l.path.startsWith(`${cwd}/`) ? l.path.slice(cwd.length + 1) : l.path, digest: l.digest });
          args.push(named.length ? { a: tok.v, files: named } : { a: tok.v });
          break;
        }
      }
    }
    if (!input || !index) throw new Uncacheable('bad-args', 'job has no input or no index');
    const asm = await asmFiles(ctx, job, cwd, [job.input, ...imported]);
    const resources = await sanitizerResources(ctx, job, cwd, toolchain.realpath);
    const native = asksNative(job) ? await nativeCpu(job, compiler, toolchain.digest, cwd, env) : undefined;
    const keyEnv: Record<string, string> = {};
    for (const k of KEY_ENV) {
      if (env[k] !== undefined) keyEnv[k] = env[k]!;
      ctx.observe?.environment(k, env[k]);
    }
    const manifest: Manifest = {
      v: 1,
      hash: HASH_ALGORITHM,
      toolchain,
      args,
      responseFiles: await Promise.all(
        [...job.responseFiles, ...(job.configFiles ?? [])].map(async (r) => {
          ctx.observe?.rewritten(asOpened(cwd, r.path));
          return { path: r.path, digest: await need(r.path, 'response file') };
        }),
      ),
      input,
      index,
      ...(asm.length ? { asm } : {}),
      ...(resources ? { resources } : {}),
      ...(native ? { native } : {}),
      env: keyEnv,
      outputs: namesKeyed ? job.outputs : job.outputs.map((o) => ({ role: o.role })),
      names: { index: indexPath, outputs: job.outputs },
      dropped,
    };
    return { kind: 'key', key: keyOf(manifest), manifest, ...(job !== parsed ? { job } : {}) };
  } catch (e) {
    if (e instanceof Uncacheable) return { kind: 'uncacheable', reason: e.reason, detail: e.detail };
    return { kind: 'uncacheable', reason: 'key-error', detail: (e as Error).message };
  }
}

function listDir(path: string): string[] {
  try {
    return readdirSync(path).sort();
  } catch {
    return [];
  }
}

/**
 * The `resources` of a job that turns a sanitizer on (undefined for any other job, whose key
 * stays as it was). Resource directories: each `-resource-dir`'s value, and every version
 * directory of `<prefix>/lib/clang/` beside the resolved executable (the driver's default; all
 * versions present, since which one it picks is not ours to guess). None found (a wrapper script,
 * an unusual layout): uncacheable. The directories listed are observed, so a file added to
 * `share/` changes the memo's checks as well as the key.
 */
async function sanitizerResources(ctx: KeyContext, job: Job, cwd: string, realpath: string): Promise<Manifest['resources']> {
  if (!job.tokens.some((t) => t.t === 'flag' && t.v.startsWith('-fsanitize='))) return undefined;
  const dirs = new Set<string>();
  for (const [i, t] of job.tokens.entries()) {
    if (t.t !== 'flag') continue;
    if (t.v.startsWith('-resource-dir=')) dirs.add(asOpened(cwd, t.v.slice('-resource-dir='.length)));
    const next = job.tokens[i + 1];
    if (t.v === '-resource-dir' && next?.t === 'flag') dirs.add(asOpened(cwd, next.v));
  }
  const clangLib = join(dirname(dirname(realpath)), 'lib', 'clang');
  ctx.observe?.directory(clangLib);
  for (const v of listDir(clangLib)) dirs.add(join(clangLib, v));
  if (dirs.size === 0) throw new Uncacheable('sanitizer-resources-unknown', `-fsanitize= and no resource directory found beside ${realpath}`);
  const files = ctx.observe ?? ctx.files;
  const out: NonNullable<Manifest['resources']> = [];
  for (const dir of [...dirs].sort()) {
    const share = join(dir, 'share');
    ctx.observe?.directory(share);
    for (const name of listDir(share)) {
      const d = await files.digest(join(share, name));
      if (d.kind === 'file') out.push({ path: join(share, name), digest: d.digest });
    }
  }
  return out;
}

/** Module tables by index digest: the thin link rewrites every index, mostly with equal bytes. */
const tables = new Map<string, ReturnType<typeof readModuleTable>>();

function indexBytes(files: DigestSource, cwd: string, indexPath: string, indexDigest: string): Buffer {
  const bytes = files.recent?.(asOpened(cwd, indexPath), indexDigest) ?? readFileSync(asOpened(cwd, indexPath));
  if (hashBytes(bytes) !== indexDigest) throw new Uncacheable('racy-index', `index ${indexPath} changed while it was read`);
  return bytes;
}

/**
 * The index's part of the key, and the modules' paths as the backend opens them (`opened`). When
 * `named` renames a module, the index is keyed by renamedIndexDigest under the same renaming; an
 * index that digest cannot be taken of keeps its names and its content digest.
 */
async function indexPart(
  files: DigestSource,
  cwd: string,
  indexPath: string,
  indexDigest: string,
  need: (p: string, what: string) => Promise<string>,
  named: Renamer,
): Promise<Manifest['index'] & { opened: string[] }> {
  let bytes: Buffer | undefined;
  const read = () => (bytes ??= indexBytes(files, cwd, indexPath, indexDigest));
  let table = tables.get(indexDigest);
  if (!table) {
    table = readModuleTable(read());
    if (tables.size >= 20_000) tables.clear();
    tables.set(indexDigest, table);
  }
  if (table.kind !== 'ok') throw new Uncacheable('bad-index', `index ${indexPath}: ${table.reason}`);
  // A path that spells the placeholder already would share its name in the key with a renamed one.
  const spellsPlaceholder = table.modules.some((m) => m.path.includes(PID_PLACEHOLDER));
  const renamed = !spellsPlaceholder && table.modules.some((m) => named(m.path) !== m.path);
  const digest = renamed ? renamedIndexDigest(read(), named) : indexDigest;
  const keep = digest === null || spellsPlaceholder;
  const modules: Manifest['index']['modules'] = [];
  for (const m of table.modules) modules.push({ path: keep ? m.path : named(m.path), moduleHash: m.hash, digest: await need(m.path, 'imported module') });
  return { digest: digest ?? indexDigest, modules, opened: table.modules.map((m) => m.path) };
}

/** Asm scans by content digest: a module's asm does not change unless its bytes do. */
const asmScans = new Map<string, AsmScan>();
const MAX_ASM_FILES = 256;
const MAX_INCLUDE_DEPTH = 16;
/** Flags that could give the integrated assembler a search path (then a name not found relative
 *  to cwd could resolve elsewhere). */
const ASM_SEARCH_FLAG = /^(-Wa,|-Xassembler$|-I|-i(system|quote|dirafter|prefix|withprefix|sysroot)|--sysroot)/;

async function scanOnce(files: DigestSource, absPath: string, digest: string, kind: 'bitcode' | 'text', what: string): Promise<AsmScan> {
  const k = `${kind}:${digest}`;
  const hit = asmScans.get(k);
  if (hit) return hit;
  let bytes = files.recent?.(absPath, digest);
  if (!bytes) {
    bytes = readFileSync(absPath);
    if (hashBytes(bytes) !== digest) throw new Uncacheable('racy-input', `${what} changed while it was read`);
  }
  const scan = kind === 'bitcode' ? scanBitcodeAsm(bytes) : directivesInText(bytes.toString('latin1'));
  if (asmScans.size >= 50_000) asmScans.clear();
  asmScans.set(k, scan);
  return scan;
}

/**
 * Resolves every `.incbin`/`.include` in the asm of the given bitcode files, following included
 * files. Anything that cannot be resolved with certainty makes the job uncacheable.
 */
async function asmFiles(ctx: KeyContext, job: Job, cwd: string, bitcode: string[]): Promise<NonNullable<Manifest['asm']>> {
  const out: NonNullable<Manifest['asm']> = [];
  const seen = new Set<string>();
  const searchFlag = job.tokens.find((t) => t.t === 'flag' && ASM_SEARCH_FLAG.test(t.v));
  const visit = async (scan: AsmScan, from: string, depth: number): Promise<void> => {
    if (scan.kind === 'unsure') throw new Uncacheable('asm-include-unresolved', `${from}: ${scan.detail}`);
    for (const ref of scan.refs) {
      const k = `${ref.directive}\0${ref.name}`;
      if (seen.has(k)) continue;
      seen.add(k);
      if (seen.size > MAX_ASM_FILES) throw new Uncacheable('asm-include-unresolved', `more than ${MAX_ASM_FILES} files read by asm directives`);
      const d = await (ctx.observe ?? ctx.files).digest(openedForKey(cwd, ref.name, `.${ref.directive} in ${from}`));
      if (d.kind === 'not-regular') throw new Uncacheable('asm-include-unresolved', `.${ref.directive} "${ref.name}" in ${from} is not a regular file`);
      if (d.kind === 'absent') {
        if (searchFlag)
          throw new Uncacheable('asm-include-unresolved', `.${ref.directive} "${ref.name}" in ${from} is not relative to cwd and ${searchFlag.v} may add a search path`);
        out.push({ directive: ref.directive, name: ref.name });
        continue;
      }
      out.push({ directive: ref.directive, name: ref.name, digest: d.digest });
      if (ref.directive === 'include') {
        if (depth >= MAX_INCLUDE_DEPTH) throw new Uncacheable('asm-include-unresolved', `.include nested deeper than ${MAX_INCLUDE_DEPTH}`);
        await visit(await scanOnce(ctx.observe ?? ctx.files, asOpened(cwd, ref.name), d.digest, 'text', `file ${ref.name}`), ref.name, depth + 1);
      }
    }
  };
  for (const path of new Set(bitcode)) {
    const d = await (ctx.observe ?? ctx.files).digest(asOpened(cwd, path));
    if (d.kind !== 'file') throw new Uncacheable('missing-file', `bitcode ${path} is not a readable regular file`);
    await visit(await scanOnce(ctx.observe ?? ctx.files, asOpened(cwd, path), d.digest, 'bitcode', `bitcode ${path}`), path, 0);
  }
  return out;
}

/**
 * What `abs` (links followed) is when it is a file whose content the key cannot take: a named pipe
 * or a socket (whatever its writer sends when clang reads), a device other than the null device
 * (a terminal, /dev/urandom, a disk). Null for a directory (no file's content), the null device
 * (always empty) and anything gone.
 */
function unkeyableSpecialFile(abs: string): string | null {
  try {
    const st = statSync(abs, { throwIfNoEntry: false });
    if (!st) return null;
    if (st.isFIFO()) return 'a named pipe';
    if (st.isSocket()) return 'a socket';
    if (st.isCharacterDevice()) return st.rdev === nullDeviceNumber() ? null : 'a character device';
    if (st.isBlockDevice()) return 'a block device';
    return null;
  } catch {
    return null;
  }
}

let nullDevice: number | undefined;
/** The device number of /dev/null (-1 where there is none: no device is then taken for it). */
function nullDeviceNumber(): number {
  if (nullDevice === undefined) {
    const st = statSync('/dev/null', { throwIfNoEntry: false });
    nullDevice = st?.isCharacterDevice() ? st.rdev : -1;
  }
  return nullDevice;
}
