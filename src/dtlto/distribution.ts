import { constants, lstatSync, realpathSync, statSync } from 'node:fs';
import { access, readFile, stat } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { basename, delimiter, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { outputOption, parseJob } from '../key/parseJob.js';
import { DistFile, DTLTO_LIMITS, distFileError } from '../protocol/dtlto.js';
import { asOpened } from '../util/asOpened.js';

/**
 * An LLVM DTLTO distribution (lld's `--thinlto-distributor`): the checks of the distribution file
 * and the run of its jobs, shared by the Node CLI (`ltocache distribute`, each job through the
 * native client) and the daemon (a 'T' request, each job through the job pipeline). What reaches
 * lld (its stdout, stderr and exit status) is the same text on both paths.
 */

export const DISTRIBUTE_USAGE = 'usage: ltocache distribute FILE.json (lld: --thinlto-distributor=…/bin/ltocache --thinlto-distributor-arg=distribute)';

export class DistributeError extends Error {}

export interface PlannedJob {
  n: number;
  argv: string[];
  outputs: string[];
  /** The job's own inputs, absolute as the kernel opens them (asOpened). */
  inputs: string[];
}

export interface PlannedDistribution {
  compiler: string;
  /** `common.args[0]` as the file spells it. */
  compilerName: string;
  jobs: PlannedJob[];
  /** `common.inputs`, absolute as the kernel opens them (asOpened). */
  commonInputs: string[];
  /** The file's bytes, as read (the distribution memo is found by them). */
  bytes: Buffer;
}

// Synchronous file checks: a distribution checks ~2 paths per job, and a thread-pool round trip
// each costs the daemon more CPU than the stat.
function isFile(p: string): boolean {
  try {
    return statSync(p, { throwIfNoEntry: false })?.isFile() ?? false;
  } catch {
    return false;
  }
}

function isSymlink(p: string): boolean {
  try {
    return lstatSync(p, { throwIfNoEntry: false })?.isSymbolicLink() ?? false;
  } catch {
    return false;
  }
}

/** realpath(3): `fs.realpathSync` (the JavaScript one) drops `lnk/..` lexically before it looks. */
function realpathOrNull(p: string): string | null {
  try {
    return realpathSync.native(p);
  } catch {
    return null;
  }
}

export async function executable(p: string): Promise<boolean> {
  try {
    await access(p, constants.X_OK);
    return (await stat(p)).isFile();
  } catch {
    return false;
  }
}

async function findCompiler(name: string, cwd: string, env: NodeJS.ProcessEnv): Promise<string | null> {
  if (name.includes('/')) return (await executable(asOpened(cwd, name))) ? name : null;
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (dir && (await executable(join(dir, name)))) return join(dir, name);
  }
  return null;
}

/** Inside `dir` (not `dir` itself), by path: no `..` escape, not elsewhere when absolute. A name
 *  that only starts with two dots (`..m.1.9.native.o`) is inside. */
export function within(dir: string, abs: string): boolean {
  const rel = relative(dir, abs);
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel);
}

/** `-o X` / `-oX` values in a command line, and their aliases `--output X` / `--output=X`. */
function outputFlags(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const o = outputOption(args[i]!);
    if (o) out.push(o.value ?? args[++i] ?? '');
  }
  return out;
}

/**
 * Reads and checks a distribution file without running or writing anything. Refuses (one line
 * naming the problem): malformed JSON, a missing or mistyped field, sizes over DTLTO_LIMITS, NUL
 * bytes, a missing compiler or input, an output outside the linker output's directory (by `..`,
 * an absolute path elsewhere, or a symlinked directory), an output that is also an input or
 * declared twice, a `-o` (or a derived output such as a `.dwo`) that is not a declared output.
 * Every path is taken as the kernel opens it from `cwd` (asOpened: `lnk/../x` is `x` beside
 * `lnk`'s target), and two paths are one file when they place it in the same real directory
 * under the same name, however they spell it.
 */
export async function planDistribution(file: string, cwd: string, env: NodeJS.ProcessEnv): Promise<PlannedDistribution> {
  let text: string;
  let bytes: Buffer;
  try {
    const st = await stat(asOpened(cwd, file));
    if (st.size > DTLTO_LIMITS.maxFileBytes) throw new DistributeError(`${file}: ${st.size} bytes; the limit is ${DTLTO_LIMITS.maxFileBytes}`);
    bytes = await readFile(asOpened(cwd, file));
    text = bytes.toString('utf8');
  } catch (e) {
    if (e instanceof DistributeError) throw e;
    throw new DistributeError(`cannot read ${file}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new DistributeError(`${file}: not valid JSON: ${(e as Error).message}`);
  }
  const parsed = DistFile.safeParse(raw);
  if (!parsed.success) throw new DistributeError(`${file}: ${distFileError(parsed.error)}`);
  const d = parsed.data;

  const compilerName = d.common.args[0]!;
  // lld writes an empty compiler when the link gave no --thinlto-remote-compiler (the clang driver always gives one).
  if (compilerName === '') throw new DistributeError('no compiler: common.args[0] is empty (give lld --thinlto-remote-compiler=PATH, e.g. /usr/bin/clang-22)');
  const compiler = await findCompiler(compilerName, cwd, env);
  if (!compiler) throw new DistributeError(`compiler ${compilerName} (common.args[0]) not found or not executable`);

  const linkerDir = dirname(asOpened(cwd, d.common.linker_output));
  const linkerDirReal = realpathOrNull(linkerDir);
  if (linkerDirReal === null) throw new DistributeError(`the linker output's directory ${linkerDir} does not exist`);
  const realDirs = new Map<string, string | null>();
  const realDir = (dir: string): string | null => {
    let real = realDirs.get(dir);
    if (real === undefined) {
      real = realpathOrNull(dir);
      realDirs.set(dir, real);
    }
    return real;
  };
  /** The file `p` names, as `<real path of its directory>/<last component>`; null when that
   *  directory does not exist or `p` ends in `.`, `..` or `/` (a directory, never a job's file). */
  const placed = (p: string): string | null => {
    const opened = asOpened(cwd, p);
    const name = basename(opened);
    if (name === '.' || name === '..' || opened.endsWith('/')) return null;
    const real = realDir(dirname(opened));
    return real === null ? null : join(real, name);
  };
  /** Lexically (path.resolve) in the linker output's directory: tells a plain `..` or absolute
   *  path elsewhere from a symbolic link leading out, for the message. */
  const linkerDirLexical = dirname(resolve(cwd, d.common.linker_output));
  const outside = (p: string, at: string): string | null => {
    if (within(linkerDirReal, at)) return null;
    return within(linkerDirLexical, resolve(cwd, p))
      ? "resolves outside the linker output's directory (through a symbolic link)"
      : `is outside the linker output's directory ${linkerDirReal}`;
  };
  const inputs = new Set<string>();
  const checked = new Set<string>();
  const addInputs = async (list: string[], where: string) => {
    for (const p of list) {
      if (checked.has(p)) continue;
      const at = isFile(asOpened(cwd, p)) ? placed(p) : null;
      if (at === null) throw new DistributeError(`${where}: input ${p} does not exist or is not a regular file`);
      checked.add(p);
      inputs.add(at);
    }
  };
  const commonInputs = (d.common.inputs ?? []).map((p) => asOpened(cwd, p));
  await addInputs(d.common.inputs ?? [], 'common.inputs');
  for (const [n, j] of d.jobs.entries()) await addInputs(j.inputs, `jobs[${n}]`);
  for (const p of [d.common.linker_output, file]) {
    const at = placed(p);
    if (at !== null) inputs.add(at);
  }

  const outputs = new Set<string>();
  /** Every file a job writes, declared or derived: in the linker output's real directory or below
   *  it, not an input, once. Returns where it is (`placed`). */
  const claimOutput = (n: number, o: string, what: string): string => {
    const at = placed(o);
    if (at === null) {
      if (realDir(dirname(asOpened(cwd, o))) === null) throw new DistributeError(`jobs[${n}]: the directory of ${what} ${o} does not exist`);
      throw new DistributeError(`jobs[${n}]: ${what} ${o} does not name a file`);
    }
    const why = outside(o, at);
    if (why !== null) throw new DistributeError(`jobs[${n}]: ${what} ${o} ${why}`);
    // clang replaces a symbolic link at `-o` (it renames a temp onto it), but writes an
    // optimisation record or the like through one, wherever it points.
    if (what === 'derived output' && isSymlink(asOpened(cwd, o))) throw new DistributeError(`jobs[${n}]: ${what} ${o} is a symbolic link`);
    if (inputs.has(at)) throw new DistributeError(`jobs[${n}]: ${what} ${o} is also an input`);
    if (outputs.has(at)) throw new DistributeError(`jobs[${n}]: ${what} ${o} is written twice`);
    outputs.add(at);
    return at;
  };
  const jobs: PlannedJob[] = [];
  for (const [n, j] of d.jobs.entries()) {
    const declared = new Set<string>();
    for (const o of j.outputs) declared.add(claimOutput(n, o, 'output'));
    const args = [...d.common.args.slice(1), ...j.args];
    for (const o of outputFlags(args)) {
      const at = placed(o);
      if (at === null || !declared.has(at)) throw new DistributeError(`jobs[${n}]: -o ${o} is not one of the job's declared outputs`);
    }
    // Outputs clang derives from -o (.dwo, .su, optimisation records) must stay beside the declared ones.
    const p = await parseJob(args, cwd);
    if (p.kind === 'job') {
      for (const o of p.job.outputs) {
        const at = placed(o.path);
        if (at !== null && outside(o.path, at) !== null) throw new DistributeError(`jobs[${n}]: clang would write ${o.path} outside the linker output's directory`);
        // Also a -o inside a response file.
        if (o.role === 'obj' && (at === null || !declared.has(at))) throw new DistributeError(`jobs[${n}]: -o ${o.path} is not one of the job's declared outputs`);
        // A derived output (an optimisation record, a .dwo) passes the declared outputs' checks.
        if (at === null || !declared.has(at)) claimOutput(n, o.path, 'derived output');
      }
    }
    jobs.push({ n, argv: [compiler, ...args], outputs: j.outputs, inputs: j.inputs.map((p) => asOpened(cwd, p)) });
  }
  return { compiler, compilerName, jobs, commonInputs, bytes };
}

/** How one job ended: `signal` is the name of the signal that killed the compiler, if one did. */
export interface JobRun {
  code: number | null;
  signal: string | null;
  stdout: Buffer;
  stderr: Buffer;
}

/** The name of signal `n` (SIGKILL), or null for 0. */
export function signalName(n: number): string | null {
  if (!n) return null;
  const e = Object.entries(osConstants.signals).find(([, v]) => v === n);
  return e ? e[0] : `signal ${n}`;
}

export interface RunDistributionOptions {
  cwd: string;
  /** Jobs started at once. */
  parallel: number;
  run(job: PlannedJob): Promise<JobRun>;
  /** Receives each job's stdout and stderr whole, in job order, then the distributor's own lines. */
  write(stream: 'stdout' | 'stderr', b: Buffer): void;
}

/**
 * Runs a planned distribution; resolves with the exit status for lld (0: every job succeeded and
 * wrote its outputs). After a failure no further job starts. Output is written whole per job and
 * in job order, so parallel jobs never interleave their diagnostics and two runs read the same.
 */
export async function runDistribution(jobs: PlannedJob[], o: RunDistributionOptions): Promise<number> {
  let next = 0;
  let flushed = 0;
  const done: (JobRun | undefined)[] = [];
  const failed: { job: PlannedJob; r: JobRun }[] = [];
  const flush = () => {
    for (let r = done[flushed]; r; r = done[++flushed]) {
      if (r.stdout.length) o.write('stdout', r.stdout);
      if (r.stderr.length) o.write('stderr', r.stderr);
    }
  };
  const worker = async () => {
    while (next < jobs.length && failed.length === 0) {
      const job = jobs[next++]!;
      const r = await o.run(job);
      done[job.n] = r;
      flush();
      if (r.code !== 0) failed.push({ job, r });
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(o.parallel, jobs.length)) }, worker));
  if (failed.length) {
    for (const { job, r } of failed.sort((a, b) => a.job.n - b.job.n)) {
      const how = r.signal ? `was killed by ${r.signal}` : `exited with status ${r.code}`;
      o.write('stderr', Buffer.from(`ltocache distribute: job ${job.n} (${job.outputs.join(', ')}) failed: the compiler ${how}: ${job.argv.join(' ')}\n`));
    }
    return 1;
  }
  for (const job of jobs) {
    for (const out of job.outputs) {
      if (!isFile(asOpened(o.cwd, out))) {
        o.write('stderr', Buffer.from(`ltocache distribute: job ${job.n} did not write its declared output ${out}\n`));
        return 1;
      }
    }
  }
  return 0;
}
