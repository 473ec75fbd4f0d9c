import { isUtf8 } from 'node:buffer';
import { basename, extname } from 'node:path';
import { asOpened } from '../util/asOpened.js';
import { readRegularFile } from '../util/readRegularFile.js';
import { tokenizeGnu } from './responseFile.js';
import { openedForKey, Uncacheable, type UncacheableReason } from './uncacheable.js';

/** A token of the command line as the key sees it. */
export type Token =
  /**
   * `setting`: the option table says this token never names a file clang reads (no candidates).
   * `plugin`: the token names (by a path with a '/', as written) a shared object clang dlopens
   * (pluginArguments); the libraries it loads are keyed with it.
   * `reads`: a file clang opens because of this token although the token does not spell it (a
   * default name, relative to cwd); keyed by content when it is a regular file, else by absence.
   */
  | { t: 'flag'; v: string; setting?: true; plugin?: string; reads?: string }
  /** A token naming a file whose content the key covers (`path` is as written). */
  | { t: 'file'; v: string; path: string; role: 'input' | 'index' | 'flag-file' | 'maybe-file' }
  /** A token naming an output; only its spelling goes into the key. */
  | { t: 'output'; v: string; path: string; role: string }
  /** A token on the documented drop list (docs/key.md): left out of the key. */
  | { t: 'dropped'; v: string };

export interface Job {
  /** The command's arguments, response files expanded (never the options of config files). */
  argv: string[];
  /** From the command and, when they add to it, the config files clang loads (src/key/configFiles.ts). */
  tokens: Token[];
  /** Response files read, in order, with their content. */
  responseFiles: { path: string; content: Buffer }[];
  /** The config files, and `@file`s inside them, whose options the tokens hold (absolute paths). */
  configFiles?: { path: string; content: Buffer }[];
  input: string;
  index: string;
  /** Outputs clang writes for this job: role → path as written (relative to cwd or absolute). */
  outputs: { role: string; path: string }[];
}

export type ParseResult = { kind: 'job'; job: Job } | { kind: 'uncacheable'; reason: UncacheableReason; detail: string };

const RSP_DEPTH = 16;

/** What the key does with an option (ccache's compopt.cpp): bits of one table entry. */
export const OptFlag = {
  /** The value is the next argument (`-x ir`). */
  SEPARATE: 1,
  /** The value may be joined to the name (`-DX`, `-std=c11`); the entry is then a prefix. */
  JOINED: 2,
  /** Proven not to change a backend object (test/e2e/dropList.test.ts): left out of the key. */
  DROP: 4,
  /** The job cannot be cached (clang writes something else, or elsewhere). */
  UNCACHEABLE: 8,
  /** The joined value names a file whose content the key covers. */
  FILE: 16,
  /** The value (joined, or the next argument with SEPARATE) is a setting clang never opens as a
   * file: kept by spelling, no file candidates are looked up for it. */
  SETTING: 32,
} as const;
const { SEPARATE, JOINED, DROP, UNCACHEABLE, FILE, SETTING } = OptFlag;

/**
 * Every option the key knows. Options not listed are kept in the key by spelling, and any file
 * they may name is found by fileCandidates(). `-o`, `-fthinlto-index=`, `-c`/`-S`/`-emit-llvm` and
 * the flags that add outputs are handled by parseJob itself.
 */
export const OPTIONS: ReadonlyMap<string, number> = new Map([
  // With `-x ir` input clang runs no preprocessor: these only affect a front-end run.
  ['-D', SEPARATE | JOINED | DROP],
  ['-U', SEPARATE | JOINED | DROP],
  ['-I', SEPARATE | JOINED | DROP],
  ['-include', SEPARATE | DROP],
  ['-imacros', SEPARATE | DROP],
  ['-isystem', SEPARATE | DROP],
  ['-iquote', SEPARATE | DROP],
  ['-idirafter', SEPARATE | DROP],
  ['-MF', SEPARATE | DROP],
  ['-MT', SEPARATE | DROP],
  ['-MQ', SEPARATE | DROP],
  ['-MD', DROP],
  ['-MMD', DROP],
  ['-MP', DROP],
  ['-nostdinc', DROP],
  ['-std=', JOINED | DROP],
  ['-Wp,-MD,', JOINED | DROP],
  ['-Wp,-MMD,', JOINED | DROP],
  // Kept; the separate value is a setting (a language, a target, a feature), never a file.
  ...['-x', '-target', '-arch', '-triple', '-aux-triple', '-target-cpu', '-target-feature', '-mfloat-abi', '-mcode-object-version'].map(
    (o) => [o, SEPARATE | SETTING] as [string, number],
  ),
  // Kept; the joined value is a setting clang never opens. `-W<warning>` covers `-Werror=X` and
  // `-Wframe-larger-than=N`; the pass-through forms below it stay candidates (longer prefixes win).
  ...[
    '-W',
    '--target=',
    '-march=',
    '-mtune=',
    '-mcpu=',
    '-mcmodel=',
    '-mstack-alignment=',
    '-mpreferred-stack-boundary=',
    '-mstack-protector-guard=',
    '-mstack-protector-guard-reg=',
    '-mstack-protector-guard-offset=',
    '-mindirect-branch=',
    '-mfunction-return=',
    '-mharden-sls=',
    '-mregparm=',
    '-falign-functions=',
    '-falign-loops=',
    '-falign-jumps=',
    '-falign-labels=',
    '-fcf-protection=',
    '-ftrivial-auto-var-init=',
    '-fstrict-flex-arrays=',
    '-fzero-call-used-regs=',
    '-fpatchable-function-entry=',
    '-fsanitize=',
    '-fvisibility=',
    '-flto=',
    '-fmacro-prefix-map=',
    '-ffile-prefix-map=',
    '-fdebug-prefix-map=',
  ].map((o) => [o, JOINED | SETTING] as [string, number]),
  ...['-Wa,', '-Wl,', '-Wp,'].map((o) => [o, JOINED] as [string, number]),
  // Kept, with a separate value that is never taken as an input.
  ...[
    '-mllvm',
    '-Xclang',
    '-isysroot',
    '-Xlinker',
    '-Xassembler',
    '-Xpreprocessor',
    '-Xopenmp-target',
    '-resource-dir',
    '--param',
    '-z',
    '-L',
    '-l',
    '-u',
    '-T',
    '-F',
    '-B',
    '-main-file-name',
    '-Xcuda-ptxas',
    '-Xcuda-fatbinary',
    '--sysroot',
    '-gcc-toolchain',
    '--gcc-toolchain',
    '-dependency-file',
  ].map((o) => [o, SEPARATE] as [string, number]),
  // Joined values naming a file the backend reads.
  ...[
    '-fbasic-block-sections=list=',
    '-fprofile-sample-use=',
    '-fprofile-use=',
    '-fprofile-instr-use=',
    '-fsanitize-ignorelist=',
    '-fsanitize-blacklist=',
    '-fprofile-list=',
    '-fxray-always-instrument=',
    '-fxray-never-instrument=',
    '-fxray-attr-list=',
  ].map((o) => [o, JOINED | FILE] as [string, number]),
  // A config file: a path, or a name clang looks up in its config directories. Keyed by content
  // where clang says it found it (src/key/configFiles.ts), not as a file under the build directory.
  ['--config', SEPARATE | SETTING],
  ['--config=', JOINED | SETTING],
  // Not a cacheable backend object.
  ...['-E', '-M', '-MM', '-###', '-v', '-fsyntax-only', '-fdriver-only', '--analyze', '-', '-working-directory'].map((o) => [o, UNCACHEABLE] as [string, number]),
  // An external assembler (found through PATH, -B, the GCC install) the key does not identify.
  ...['-fno-integrated-as', '-no-integrated-as'].map((o) => [o, UNCACHEABLE] as [string, number]),
  // The embedded bitcode carries the command line, the index path in it, which is not keyed.
  ['-fembed-bitcode', JOINED | UNCACHEABLE],
  ...['-save-temps', '-ftime-trace', '-ccc-', '-fcrash-diagnostics', '-fmodules-cache-path', '-fproc-stat-report', '-fdump-', '-MJ', '-working-directory='].map(
    (o) => [o, JOINED | UNCACHEABLE] as [string, number],
  ),
  // Timings on stderr, or as JSON there (clang 22's `-ftime-report-json`): no two runs print the
  // same, and a hit would replay another run's.
  ['-ftime-report', JOINED | UNCACHEABLE],
  // Files written besides the outputs parseJob models, which a hit would not write: statistics
  // (`-save-stats[=obj|cwd]` writes `<input stem>.stats`, cc1's `-stats-file=`), temporaries
  // (`--save-temps`), serialised diagnostics, cc1's diagnostic log, and cc1's own names for the
  // split DWARF file, the stack usage file and the optimisation record.
  ...['-save-stats', '--save-stats', '-stats-file', '--save-temps'].map((o) => [o, JOINED | UNCACHEABLE] as [string, number]),
  ...[
    '-serialize-diagnostics',
    '--serialize-diagnostics',
    '-serialize-diagnostic-file',
    '-diagnostic-log-file',
    '-split-dwarf-output',
    '-stack-usage-file',
    '-opt-record-file',
  ].map((o) => [o, UNCACHEABLE] as [string, number]),
  // Where auxiliary outputs go (`-dumpdir D -gsplit-dwarf` writes `D<input stem>.dwo`, not the
  // .dwo beside the object), and a compilation database fragment under a random name in a directory.
  ...['-dumpdir', '-gen-cdb-fragment-path'].map((o) => [o, UNCACHEABLE] as [string, number]),
  // cc1's form of AS_SECURE_LOG_FILE (manifest.ts UNCACHEABLE_ENV): `.secure_log_unique` appends to it.
  ['-as-secure-log-file', UNCACHEABLE],
  // cc1's `-debug-pass`: `Executions` prints timestamps and addresses (see LLVM_SIDE_EFFECTS).
  ['-mdebug-pass', UNCACHEABLE],
  // `-v`'s alias: the driver prints cc1's command line, with the index path and cwd the key leaves out.
  ['--verbose', UNCACHEABLE],
  // A VFS overlay maps the paths clang opens (the input among them) to files the key never reads.
  ...['-ivfsoverlay', '-vfsoverlay', '--vfsoverlay'].map((o) => [o, JOINED | UNCACHEABLE] as [string, number]),
  // Directories clang searches for default config files (`clang.cfg`, `<triple>-clang.cfg`, …)
  // and `--config=` names: the key lists only the compiler's own config directories.
  ...['--config-user-dir=', '--config-system-dir='].map((o) => [o, JOINED | UNCACHEABLE] as [string, number]),
]);

/** A plugin option with its value joined: the driver's, or cc1's behind `-Xclang`. */
const PLUGIN_JOINED = /^-f(pass-)?plugin=/;

/**
 * The arguments that name a compiler plugin, by index in `argv`, with the name: `-fplugin=F`,
 * `-fpass-plugin=F`, and behind `-Xclang`/`-Xclang=` (whose values form cc1's command line, in
 * order, wherever they stand) `-fpass-plugin=F` and `-load F`. clang hands each to dlopen.
 */
function pluginArguments(argv: readonly string[]): Map<number, string> {
  const out = new Map<number, string>();
  let load = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    let at = i;
    let v: string | undefined;
    if (a === '-Xclang') v = argv[(at = ++i)];
    else if (a.startsWith('-Xclang=')) v = a.slice('-Xclang='.length);
    else {
      const m = PLUGIN_JOINED.exec(a);
      if (m) out.set(i, a.slice(m[0].length));
      continue;
    }
    if (v === undefined) break;
    const m = PLUGIN_JOINED.exec(v);
    if (load) out.set(at, v);
    else if (m) out.set(at, v.slice(m[0].length));
    load = !load && v === '-load';
  }
  return out;
}

/**
 * A Windows (COFF) target, CodeView debug info or clang-cl's driver mode: the object's build-info
 * record then holds the backend's command line (the index path, flags the key drops) and its
 * directory, none of which the key covers.
 */
function windowsTarget(a: string, next: string | undefined): boolean {
  const triple = a.startsWith('--target=') ? a.slice('--target='.length) : a === '-target' || a === '-triple' ? next : undefined;
  if (triple !== undefined && /windows|win32|mingw|cygwin|msvc/i.test(triple)) return true;
  return a === '-gcodeview' || a === '--driver-mode=cl';
}

/**
 * Joined-value options by their first BUCKET characters, longest first so the most specific
 * prefix wins; the shorter ones apart.
 */
const BUCKET = 3;
const JOINED_BY_START = new Map<string, [string, number][]>();
const SHORT_JOINED: [string, number][] = [];
for (const entry of [...OPTIONS].filter(([, f]) => f & JOINED).sort((a, b) => b[0].length - a[0].length)) {
  if (entry[0].length < BUCKET) SHORT_JOINED.push(entry);
  else {
    const start = entry[0].slice(0, BUCKET);
    const list = JOINED_BY_START.get(start);
    if (list) list.push(entry);
    else JOINED_BY_START.set(start, [entry]);
  }
}

/** The table entry for an argument: an exact name, else the longest joined prefix with a value. */
export function lookupOption(a: string): { name: string; flags: number; joined?: string } | undefined {
  const exact = OPTIONS.get(a);
  if (exact !== undefined) return { name: a, flags: exact };
  // Only the prefixes that start as the argument does: a kernel job has some 120 arguments, and
  // trying every joined prefix on each would cost more than the rest of parsing the job.
  for (const list of [JOINED_BY_START.get(a.slice(0, BUCKET)), SHORT_JOINED]) {
    if (list) for (const [name, flags] of list) if (a.length > name.length && a.startsWith(name)) return { name, flags, joined: a.slice(name.length) };
  }
  return undefined;
}

async function expand(args: string[], cwd: string, depth: number, rsp: Job['responseFiles']): Promise<string[]> {
  const out: string[] = [];
  for (const a of args) {
    if (a.startsWith('@') && a.length > 1) {
      if (depth >= RSP_DEPTH) throw new Uncacheable('rsp-depth', `response files nested deeper than ${RSP_DEPTH}`);
      const path = a.slice(1);
      const abs = openedForKey(cwd, path, 'response file');
      let content: Buffer | null;
      try {
        content = await readRegularFile(abs);
      } catch {
        throw new Uncacheable('rsp-unreadable', `cannot read response file ${path}`);
      }
      if (!content) throw new Uncacheable('rsp-unreadable', `response file ${path} is not a regular file`);
      // A lossy decode would name other files than clang opens (it reads the bytes as they are).
      if (!isUtf8(content)) throw new Uncacheable('rsp-unreadable', `response file ${path} is not valid UTF-8`);
      rsp.push({ path, content });
      out.push(...(await expand(tokenizeGnu(content.toString('utf8')), cwd, depth + 1, rsp)));
    } else out.push(a);
  }
  return out;
}

/** Where clang 19 puts the split DWARF file for `-c -o X.ext`: X.dwo beside the object. */
function dwoPathFor(obj: string): string {
  const ext = extname(obj);
  return (ext ? obj.slice(0, -ext.length) : obj) + '.dwo';
}

function replaceExt(p: string, newExt: string): string {
  const ext = extname(p);
  return (ext ? p.slice(0, -ext.length) : p) + newExt;
}

/**
 * An argument naming the object output: `-o X`, `-oX`, and clang's aliases `--output X` and
 * `--output=X`. `name` is the key's spelling of it; `value` is absent when the path is the next
 * argument.
 */
export function outputOption(a: string): { name: string; value?: string } | null {
  if (a === '-o' || a === '--output') return { name: a };
  if (a.startsWith('--output=')) return { name: '--output=', value: a.slice('--output='.length) };
  if (a.startsWith('-o') && a.length > 2 && !a.startsWith('-ob')) return { name: '-o=', value: a.slice(2) };
  return null;
}

/**
 * LLVM's `-lto-embed-bitcode=` (an `-mllvm` value, joined to `-mllvm=` or on its own after
 * `-mllvm`, or behind -Xclang): `post-merge-pre-opt` writes cc1's command line into the object's
 * `.llvmcmd`, with `-fthinlto-index=<path>`, `-main-file-name` and `-fdebug-compilation-dir=<cwd>`,
 * none of them keyed (measured with clang 22). Every value is refused, as `-fembed-bitcode` is.
 */
const EMBEDS_COMMAND_LINE = /(^|=)--?lto-embed-bitcode(=|$)/;

/**
 * LLVM options (after `-mllvm`, joined to `-mllvm=`, behind `-Xclang`; with their value joined or
 * as the next `-mllvm`) under which a backend job writes files a hit would not write, prints what
 * another run would not, or runs or reads what the key does not identify (measured with clang 19
 * and 22): `-info-output-file=` (timers and statistics), `-ir-dump-directory=` (a file per IR
 * dump), `-opt-bisect-print-ir-path=`, `-polly-dump-before`/`-after[-file]`
 * (`<module>-<function>-after.ll`), `-print-changed=dot-cfg…` (`passes.html` and DOT files) and
 * `=diff…`/`=cdiff…` (run `diff` found through PATH, or `-print-changed-diff-path=`), the
 * `…view-…` options (`-view-bfi-func-name=`, `-pgo-view-counts=`, …: a DOT file under a random name
 * in TMPDIR, named on stderr, then a viewer program), and the ML advisors'
 * `…-interactive-channel-base=B` (read `B.in`, which another process writes), Polly's
 * `-polly-import` (reads `<function>___<region>.jscop` from `-polly-import-jscop-dir`, cwd by
 * default: a new schedule there compiles another object) and its `-polly-export`, `-polly-dot…`,
 * `-polly-show…` (write `.jscop` and `.dot` files, or view them), the Attributor's
 * `-attributor-dump-dep-graph` (`dep_graph_<n>.dot` in cwd, or under
 * `-attributor-depgraph-dot-filename-prefix=`), `-exec-on-ir-change=P` (runs P on the IR after
 * every pass that changes it).
 * Printing what no other run prints: `-debug-pass=Executions` (timestamps and pass addresses),
 * `=Details` (freed analyses in pointer order), and with no joined value (its value, in the next
 * `-mllvm`, unseen here), clang 22's `-print-inst-addrs`/`-print-mi-addrs` (addresses in IR and MIR
 * dumps); `-debug-pass=Structure` and `=Arguments` print the same text on every run.
 */
const LLVM_SIDE_EFFECTS =
  /(^|=)--?((info-output-file|ir-dump-directory|opt-bisect-print-ir-path|polly-dump-(before|after)(-file)?|print-changed-(diff|dot)-path|([a-z0-9]+-)*interactive-channel-base|([a-z0-9]+-)*view-[a-z0-9-]*|print-changed=(c?diff|dot-cfg)[a-z-]*|print-(inst|mi)-addrs|polly-(print-)?(import|export|dot|show)[a-z-]*|attributor-(dump-dep-graph|depgraph-dot-filename-prefix)|exec-on-ir-change)(=|$)|debug-pass(=(Executions|Details))?$)/;

/**
 * Reads a backend command line (arguments after the compiler) into the parts the key needs.
 * Knows only the shape of a backend job; anything it cannot place safely is uncacheable.
 */
export async function parseJob(args: string[], cwd: string): Promise<ParseResult> {
  const responseFiles: Job['responseFiles'] = [];
  try {
    // Response files are split the GNU way here; under Windows quoting clang would split them
    // into other arguments (and other file names) than the key sees.
    const quoting = args.filter((a) => a.startsWith('--rsp-quoting=')).pop();
    if (quoting !== undefined && quoting !== '--rsp-quoting=posix') throw new Uncacheable('unsupported-flag', `${quoting}: response files are read with POSIX quoting only`);
    const argv = await expand(args, cwd, 0, responseFiles);
    const embeds = argv.find((a) => EMBEDS_COMMAND_LINE.test(a));
    if (embeds !== undefined) throw new Uncacheable('unsupported-flag', `${embeds}: the object may embed cc1's command line, with names the key leaves out`);
    // The driver expands `@file` arguments (as expand() does), but not one joined to `-mllvm=` or
    // `-Xclang=`: cc1 or LLVM's option parser expands it, into options the key never reads.
    const joinedResponseFile = argv.find((a) => /^-(mllvm|Xclang)=@/.test(a));
    if (joinedResponseFile !== undefined) throw new Uncacheable('unsupported-flag', `${joinedResponseFile}: a response file clang expands after the driver, unread by the key`);
    const effect = argv.find((a) => LLVM_SIDE_EFFECTS.test(a));
    if (effect !== undefined) throw new Uncacheable('unsupported-flag', `${effect}: LLVM writes, prints or runs what a hit would not reproduce`);
    const plugins = pluginArguments(argv);
    const tokens: Token[] = [];
    const positional: string[] = [];
    let index: string | undefined;
    let output: string | undefined;
    let hasC = false;
    let hasS = false;
    let emitLlvm = false;
    let splitDwarf = false;
    // As clang's willEmitRemarks: a record is written when one of its options comes after the last
    // -fno-save-optimization-record; -foptimization-record-passes= alone is one of them.
    let optRecord = false;
    let optRecordFormat = 'yaml';
    let optRecordFile: string | undefined;
    let stackUsage = false;
    for (let i = 0; i < argv.length; i++) {
      const a = argv[i]!;
      const opt = lookupOption(a);
      if (opt && opt.flags & UNCACHEABLE) throw new Uncacheable('unsupported-flag', `flag ${a} is not cacheable`);
      if (windowsTarget(a, argv[i + 1]))
        throw new Uncacheable(
          'windows-target',
          `${a}${a === '-target' || a === '-triple' ? ` ${argv[i + 1]}` : ''}: a COFF object with CodeView records the job's command line and directory`,
        );
      if (a === '-Xclang' && argv[i + 1]?.startsWith('-fthinlto-index=')) {
        tokens.push({ t: 'flag', v: a });
        continue;
      }
      if (a.startsWith('-fthinlto-index=')) {
        if (index !== undefined) throw new Uncacheable('multiple-index', 'more than one -fthinlto-index=');
        index = a.slice('-fthinlto-index='.length);
        tokens.push({ t: 'file', v: '-fthinlto-index=', path: index, role: 'index' });
        continue;
      }
      const out = outputOption(a);
      if (out) {
        if (output !== undefined) throw new Uncacheable('multiple-output', 'more than one -o');
        const v = out.value ?? argv[++i];
        if (v === undefined) throw new Uncacheable('bad-args', `${a} without a value`);
        output = v;
        tokens.push({ t: 'output', v: out.name, path: v, role: 'obj' });
        continue;
      }
      // An output or a config file handed to cc1 or the driver behind the key's back.
      if ((a === '-Xclang' || a === '-Xclang=') && /^(-o|--output|--config)/.test(argv[i + 1] ?? ''))
        throw new Uncacheable('unsupported-flag', `-Xclang ${argv[i + 1]} is not cacheable`);
      // cc1 takes these spellings as the driver does (a VFS overlay, -fembed-bitcode, -ftime-trace=):
      // what makes a driver option uncacheable makes it so behind -Xclang.
      const cc1 = a === '-Xclang' ? argv[i + 1] : a.startsWith('-Xclang=') ? a.slice('-Xclang='.length) : undefined;
      if (cc1 !== undefined && (lookupOption(cc1)?.flags ?? 0) & UNCACHEABLE) throw new Uncacheable('unsupported-flag', `-Xclang ${cc1} is not cacheable`);
      if (a === '-c') hasC = true;
      else if (a === '-S') hasS = true;
      else if (a === '-emit-llvm') emitLlvm = true;
      if (a === '-gsplit-dwarf' || a === '-gsplit-dwarf=split') splitDwarf = true;
      if (a === '-gsplit-dwarf=single' || a === '-gno-split-dwarf') splitDwarf = false;
      if (a === '-fstack-usage') stackUsage = true;
      if (a === '-fsave-optimization-record' || /^-f(save-optimization-record|optimization-record-(passes|file))=/.test(a)) optRecord = true;
      else if (a === '-fno-save-optimization-record') optRecord = false;
      // The format is the last one named, whatever follows it.
      if (a.startsWith('-fsave-optimization-record=')) optRecordFormat = a.slice('-fsave-optimization-record='.length);
      if (a.startsWith('-foptimization-record-file=')) {
        optRecordFile = a.slice('-foptimization-record-file='.length);
        tokens.push({ t: 'output', v: '-foptimization-record-file=', path: optRecordFile, role: 'opt-record' });
        continue;
      }
      if (opt && opt.flags & DROP) {
        if (opt.joined !== undefined || !(opt.flags & SEPARATE)) {
          tokens.push({ t: 'dropped', v: a });
          continue;
        }
        const v = argv[++i];
        if (v === undefined) throw new Uncacheable('bad-args', `${a} without a value`);
        tokens.push({ t: 'dropped', v: `${a} ${v}` });
        continue;
      }
      // Without a value clang reads ./default.profdata (its content changes a CS-PGO backend object);
      // so it does for `-fprofile-use=` with an empty one (the driver appends the name to the empty path).
      if (a === '-fprofile-use' || a === '-fprofile-instr-use' || a === '-fprofile-use=') {
        tokens.push({ t: 'file', v: a, path: 'default.profdata', role: 'flag-file' });
        continue;
      }
      // clang ≥ 20 reads ./default.cgdata for the bare flag, and goes on without it when it is absent.
      if (a === '-fcodegen-data-use') {
        tokens.push({ t: 'flag', v: a, reads: 'default.cgdata' });
        continue;
      }
      if (opt && opt.flags & FILE && opt.joined !== undefined) {
        tokens.push({ t: 'file', v: opt.name, path: opt.joined, role: 'flag-file' });
        continue;
      }
      if (opt && opt.flags & SEPARATE && opt.joined === undefined) {
        const v = argv[++i];
        if (v === undefined) throw new Uncacheable('bad-args', `${a} without a value`);
        tokens.push({ t: 'flag', v: a });
        const plugin = plugins.get(i);
        tokens.push(plugin !== undefined ? { t: 'flag', v, plugin } : opt.flags & SETTING ? { t: 'flag', v, setting: true } : { t: 'flag', v });
        continue;
      }
      if (a.startsWith('-')) {
        const plugin = plugins.get(i);
        tokens.push(
          plugin !== undefined ? { t: 'flag', v: a, plugin } : opt && opt.flags & SETTING && opt.joined !== undefined ? { t: 'flag', v: a, setting: true } : { t: 'flag', v: a },
        );
        continue;
      }
      positional.push(a);
      tokens.push({ t: 'file', v: '', path: a, role: 'input' });
    }
    if (index === undefined) throw new Uncacheable('not-backend', 'no -fthinlto-index=');
    if (index === '') throw new Uncacheable('bad-args', 'empty -fthinlto-index=');
    if (positional.length !== 1) throw new Uncacheable('inputs', `expected exactly one input, got ${positional.length}`);
    // As clang 19: -S wins over -c whatever their order; -emit-llvm (either order) makes the output
    // bitcode or IR text, and then no .dwo or .su is written.
    const mode = hasS ? 'S' : hasC ? 'c' : emitLlvm ? 'emit-llvm' : undefined;
    if (!mode) throw new Uncacheable('not-compile', 'neither -c, -S nor -emit-llvm');
    // dlopen finds a name without a '/' by the loader's search (LD_LIBRARY_PATH, libLLVM's
    // RUNPATH, ld.so.cache), never relative to cwd.
    for (const name of plugins.values())
      if (!name.includes('/')) throw new Uncacheable('plugin-unresolved', `plugin '${name}' is named without a '/': the loader's search finds it, not the key`);
    if (output === undefined || output === '-' || output === '/dev/null') throw new Uncacheable('output', 'no -o FILE (or output to stdout)');
    const outputs: Job['outputs'] = [{ role: 'obj', path: output }];
    // Without -c (plain -S) clang names the .dwo after the input's stem, in cwd (SplitDebugName).
    if (splitDwarf && !emitLlvm) outputs.push({ role: 'dwo', path: hasC ? dwoPathFor(output) : replaceExt(basename(positional[0]!), '.dwo') });
    if (stackUsage && !emitLlvm) outputs.push({ role: 'su', path: replaceExt(output, '.su') });
    if (optRecord) outputs.push({ role: 'opt-record', path: optRecordFile ?? replaceExt(output, `.opt.${optRecordFormat}`) });
    const seen = new Set<string>();
    for (const o of outputs) {
      const abs = asOpened(cwd, o.path);
      if (seen.has(abs)) throw new Uncacheable('output', `two outputs at ${o.path}`);
      seen.add(abs);
    }
    return { kind: 'job', job: { argv, tokens, responseFiles, input: positional[0]!, index, outputs } };
  } catch (e) {
    if (e instanceof Uncacheable) return { kind: 'uncacheable', reason: e.reason, detail: e.detail };
    throw e;
  }
}

/**
 * An unknown flag or value might name a file that changes the output (`-mllvm -foo=FILE`,
 * `-foo=FILE,N`): the key builder stats these candidates and hashes the ones that are regular
 * files. Candidates: the token itself unless it starts with '-', every suffix after a '=' or ',',
 * and every element of a comma list (from a '=' or ',' to the next ',').
 */
export function fileCandidates(v: string): string[] {
  const out = new Set<string>();
  const add = (from: number) => {
    const rest = v.slice(from);
    out.add(rest);
    const comma = rest.indexOf(',');
    if (comma >= 0) out.add(rest.slice(0, comma));
  };
  if (!v.startsWith('-')) add(0);
  for (let i = 0; i < v.length; i++) if (v[i] === '=' || v[i] === ',') add(i + 1);
  return [...out].filter((p) => p.length > 0 && p.length < 4096);
}
