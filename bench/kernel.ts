#!/usr/bin/env node
/**
 * Real-kernel benchmark of the ThinLTO backend phase.
 *
 *   node dist/bench/kernel.js --tree DIR [--runs 3] [--json out.json] [--remote] [--remote-cluster]
 *
 * DIR is a Linux tree already built with CONFIG_LTO_CLANG_THIN (see docs/benchmarks.md). Linux
 * 6.12 has no CONFIG_LTO_CLANG_THIN_DIST, so this emulates it the way the later upstream support
 * does it: a thin link over the objects of vmlinux.a (`ld.lld -r --thinlto-index-only`, with the
 * kernel's own ld flags from `.vmlinux.o.cmd`), then one backend job per module with the module's
 * saved c_flags (from `dir/.X.o.cmd`, less CC_FLAGS_LTO and the `-c -o X.o X.c` tail):
 *
 *   clang <saved c_flags> -x ir -fno-lto -Wno-unused-command-line-argument \
 *         -fthinlto-index=X.o.thinlto.bc -c -o X.thinlto-native.o X.o
 *
 * The jobs are written to a Makefile, one rule per job run through `sh` as kbuild does
 * (make → sh → compiler), and `make -j2` of that Makefile is what is timed, with $(CC) set per
 * scenario. Every scenario is measured in the same invocation, `--runs` times, interleaved.
 * Nothing here is timed except the make (or, for the lld rows, the ld.lld) process. Each cold
 * ltocache row also gets a ratio to the direct clang build run just before it in the same run
 * (the warm-daemon cold row has a direct build of its own for that), which drift between rows
 * minutes apart does not blur.
 *
 * Team rows (a daemon with an empty local cache reading from team servers populated beforehand
 * by a writer daemon from the unedited tree): `--remote` runs them against one `ltocache serve
 * --dir`; `--remote-cluster` against two `ltocache serve --storage redis+cluster://…` processes
 * on a Redis Cluster on loopback (test/support/redis.ts: 3 masters + 3 replicas, no persistence,
 * temp dirs), the daemons given both URLs. With both options both sets of rows are measured.
 */
import { type SpawnSyncOptions, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RedisCluster } from '../test/support/redis.js';
import { killChild } from '../test/support/server.js';
import { processCpuMs, threadCpuMs, ticksCpuMs } from './procStat.js';

// ---------------------------------------------------------------------------------------------
// Paths and options

const TOP = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const CLIENT = join(TOP, 'bin', 'ltocache');
const CLI = join(TOP, 'dist', 'src', 'cli', 'main.js');

/** The default edit: one function in mm/util.c that many modules import (kfree_const). */
const KERNEL_EDIT = {
  file: 'mm/util.c',
  from: 'if (!is_kernel_rodata((unsigned long)x))\n\t\tkfree(x);',
  to: 'if (!is_kernel_rodata((unsigned long)x) && x != (const void *)1)\n\t\tkfree(x);',
};

export interface Options {
  tree: string;
  runs: number;
  json: string | null;
  remote: boolean;
  /** Team rows through two `ltocache serve` processes on a Redis Cluster (as well as --remote's, if given). */
  remoteCluster: boolean;
  clang: string;
  lld: string;
  ar: string;
  llvmBin: string;
  make: string;
  jobs: number;
  work: string | null;
  keep: boolean;
  /** Only write the Makefile (and do the thin link) into --work, for profiling by hand. */
  planOnly: boolean;
  ccache: boolean;
  /** The ccache executable (e.g. a build of its master branch: ../shared/anchors/ccache). */
  ccachePath: string;
  edit: { file: string; from: string; to: string };
  /** Run the ltocache daemon with verify=all (every hit recompiled in the background and compared). */
  verify: boolean;
}

const USAGE = `usage: node dist/bench/kernel.js --tree DIR [--runs N] [--json FILE] [--remote] [--remote-cluster]
    [--clang clang-19] [--lld ld.lld-19] [--ar llvm-ar-19] [--llvm-bin /usr/lib/llvm-19/bin]
    [--jobs 2] [--make make] [--work DIR] [--keep] [--no-ccache] [--ccache PATH] [--plan-only (needs --work)]
    [--edit FILE --edit-from STRING --edit-to STRING]   (default: kfree_const in mm/util.c)
    [--verify]   ltocache daemon with verify=all: timings include the audit compiles; reports mismatches
  --remote           team rows: one \`ltocache serve --dir\` populated by a writer daemon, read by an empty one
  --remote-cluster   team rows through a Redis Cluster on loopback (3 masters + 3 replicas, /usr/bin/redis-server)
                     and two \`ltocache serve --storage redis+cluster://…\` on it, the daemons given both URLs;
                     with --remote too, both sets of team rows`;

export function parseArgs(argv: string[]): Options {
  const o: Options = {
    tree: '',
    runs: 3,
    json: null,
    remote: false,
    remoteCluster: false,
    clang: 'clang-19',
    lld: 'ld.lld-19',
    ar: 'llvm-ar-19',
    llvmBin: '/usr/lib/llvm-19/bin',
    make: 'make',
    jobs: 2,
    work: null,
    keep: false,
    planOnly: false,
    ccache: true,
    ccachePath: 'ccache',
    edit: { ...KERNEL_EDIT },
    verify: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      return v;
    };
    switch (a) {
      case '--tree':
        o.tree = resolve(val());
        break;
      case '--runs':
        o.runs = Number(val());
        break;
      case '--json':
        o.json = resolve(val());
        break;
      case '--remote':
        o.remote = true;
        break;
      case '--remote-cluster':
        o.remoteCluster = true;
        break;
      case '--clang':
        o.clang = val();
        break;
      case '--lld':
        o.lld = val();
        break;
      case '--ar':
        o.ar = val();
        break;
      case '--llvm-bin':
        o.llvmBin = val();
        break;
      case '--make':
        o.make = val();
        break;
      case '--jobs':
        o.jobs = Number(val());
        break;
      case '--work':
        o.work = resolve(val());
        break;
      case '--keep':
        o.keep = true;
        break;
      case '--plan-only':
        o.planOnly = true;
        break;
      case '--no-ccache':
        o.ccache = false;
        break;
      case '--ccache':
        o.ccachePath = resolve(val());
        break;
      case '--verify':
        o.verify = true;
        break;
      case '--edit':
        o.edit.file = val();
        break;
      case '--edit-from':
        o.edit.from = val();
        break;
      case '--edit-to':
        o.edit.to = val();
        break;
      case '--help':
      case '-h':
        process.stdout.write(USAGE + '\n');
        return process.exit(0);
      default:
        throw new Error(`unknown argument ${a}\n${USAGE}`);
    }
  }
  if (!o.tree) throw new Error(`--tree is required\n${USAGE}`);
  if (!Number.isInteger(o.runs) || o.runs < 1) throw new Error('--runs must be a positive integer');
  if (!Number.isInteger(o.jobs) || o.jobs < 1) throw new Error('--jobs must be a positive integer');
  if (o.planOnly && !o.work) throw new Error('--plan-only needs --work DIR');
  return o;
}

// ---------------------------------------------------------------------------------------------
// Shell words

/** Splits the first command of a shell command line into words (quotes, backslashes; stops at ; && || |). */
export function shellWords(line: string): string[] {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new Error(`unterminated ' in: ${line}`);
      cur += line.slice(i + 1, end);
      i = end;
      inWord = true;
    } else if (c === '"') {
      inWord = true;
      for (i++; i < line.length && line[i] !== '"'; i++) {
        if (line[i] === '\\' && i + 1 < line.length && '$`"\\\n'.includes(line[i + 1]!)) i++;
        cur += line[i];
      }
      if (i >= line.length) throw new Error(`unterminated " in: ${line}`);
    } else if (c === '\\') {
      if (i + 1 < line.length) cur += line[++i];
      inWord = true;
    } else if (c === ' ' || c === '\t' || c === '\n') {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
    } else if (c === ';' || c === '|' || (c === '&' && line[i + 1] === '&')) {
      break;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (inWord) words.push(cur);
  return words;
}

export function shellQuote(w: string): string {
  return /^[A-Za-z0-9_\-+=.,/:@%]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`;
}

/** A shell word as it must appear in a Makefile recipe. */
function makeWord(w: string): string {
  return shellQuote(w).replace(/\$/g, '$$$$');
}

/** The value of the `savedcmd_…` (or older `cmd_…`) line of a kbuild `.cmd` file. */
export function savedCommand(cmdFile: string): string {
  for (const line of readFileSync(cmdFile, 'utf8').split('\n')) {
    const m = /^(?:savedcmd|cmd)_\S+\s*:=\s*(.*)$/.exec(line);
    if (m) return m[1]!;
  }
  throw new Error(`${cmdFile}: no savedcmd_ line`);
}

/** CC_FLAGS_LTO of a CONFIG_LTO_CLANG_THIN kernel: what kbuild's THIN_DIST filters out of c_flags. */
const CC_FLAGS_LTO = new Set(['-flto=thin', '-flto', '-fsplit-lto-unit', '-fvisibility=hidden']);

/** Saved c_flags of one object: its front-end command less the compiler, CC_FLAGS_LTO and `-c -o X.o X.c`. */
export function savedCFlags(frontEnd: string[], obj: string): string[] {
  const words = frontEnd.slice(1);
  const out: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    if (CC_FLAGS_LTO.has(w) || w === '-c') continue;
    if (w === '-o') {
      i++;
      continue;
    }
    out.push(w);
  }
  const src = out[out.length - 1];
  if (!src || src.startsWith('-') || !/\.(c|S|s|i)$/.test(src)) throw new Error(`${obj}: cannot find the source operand at the end of its saved command`);
  out.pop();
  return out;
}

// ---------------------------------------------------------------------------------------------
// Processes and measurement

interface Timed {
  wallMs: number;
  /** CPU of the waited-for process tree (utime+stime of children, 10 ms ticks). */
  cpuMs: number;
  status: number;
  stderr: string;
}

/**
 * Waits (≤ 20 s) until the daemon has adopted its team pack, which it does once the build has
 * been quiet for 2 s, and records the daemon CPU that took in the row's last sample.
 */
function awaitAdoption(cache: Ltocache, r: Row): void {
  const pid = cache.pid();
  const sample = r.samples.at(-1);
  if (!pid || !sample) return;
  const c0 = processCpuMs(pid);
  let st = cache.stats();
  const want = st.team_pack_entries ?? 0;
  if (!want) return;
  const until = Date.now() + 20_000;
  while ((st.team_pack_adopted ?? 0) < want && Date.now() < until) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
    st = cache.stats();
  }
  sample.adoption = { entries: st.team_pack_adopted ?? 0, daemonCpuMs: processCpuMs(pid) - c0 };
}

function timed(cmd: string, args: string[], opts: SpawnSyncOptions): Timed {
  const cpu0 = ticksCpuMs('self', true);
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { ...opts, stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 256 << 20 });
  const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const cpuMs = ticksCpuMs('self', true) - cpu0;
  if (r.error) throw r.error;
  return { wallMs, cpuMs, status: r.status ?? 128, stderr: r.stderr?.toString() ?? '' };
}

function must(cmd: string, args: string[], opts: SpawnSyncOptions & { what?: string } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 << 20, ...opts });
  if (r.error) throw new Error(`${opts.what ?? cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${opts.what ?? cmd} failed (${r.status}): ${String(r.stderr).slice(0, 4000)}`);
  return String(r.stdout);
}

function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

function fileSha(path: string): string | null {
  try {
    return sha(readFileSync(path));
  } catch {
    return null;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
}

function log(msg: string): void {
  process.stderr.write(`[kernel-bench] ${msg}\n`);
}

/** The environment without anything that would steer make, ltocache or ccache from outside. */
function baseEnv(o: Options): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('LTOCACHE_') || k.startsWith('CCACHE_') || k === 'MAKEFLAGS' || k === 'MFLAGS' || k === 'MAKELEVEL' || k === 'CCC_OVERRIDE_OPTIONS') continue;
    env[k] = v;
  }
  env.PATH = `${o.llvmBin}:${env.PATH ?? '/usr/bin:/bin'}`;
  env.LC_ALL = 'C';
  return env;
}

// ---------------------------------------------------------------------------------------------
// The job list

export interface Job {
  /** Input bitcode, relative to the tree. */
  input: string;
  index: string;
  output: string;
  flags: string[];
}

interface LinkPlan {
  /** ld flags of vmlinux.o other than its inputs, output and cache. */
  flags: string[];
  /** The original command line's words after the linker name (for the lld in-process rows). */
  original: string[];
  objects: string[];
  libMembers: string[];
}

function isBitcode(path: string): boolean {
  try {
    const fd = openSync(path, 'r');
    const b = Buffer.alloc(4);
    try {
      readSync(fd, b, 0, 4, 0);
    } finally {
      closeSync(fd);
    }
    return b.equals(Buffer.from([0x42, 0x43, 0xc0, 0xde]));
  } catch {
    return false;
  }
}

function archiveMembers(o: Options, tree: string, archive: string): string[] {
  const names = must(o.ar, ['t', archive], { cwd: tree, what: `${o.ar} t ${archive}` })
    .split('\n')
    .filter(Boolean);
  return names.map((m) => {
    const rel = join(dirname(archive), m);
    return existsSync(join(tree, rel)) ? rel : m;
  });
}

/** Reads the vmlinux.o link command (or assumes the plain one) and expands its archives. */
function linkPlan(o: Options): LinkPlan {
  const cmdFile = join(o.tree, '.vmlinux.o.cmd');
  const words = existsSync(cmdFile) ? shellWords(savedCommand(cmdFile)) : ['ld.lld', '-r', '-o', 'vmlinux.o', '--whole-archive', 'vmlinux.a', '--no-whole-archive'];
  const flags: string[] = [];
  const objects: string[] = [];
  const libMembers: string[] = [];
  let whole = false;
  for (let i = 1; i < words.length; i++) {
    const w = words[i]!;
    if (w === '-o') {
      i++;
      continue;
    }
    if (w.startsWith('--thinlto-cache-dir') || w.startsWith('-Map') || w.startsWith('--thinlto-jobs')) continue;
    if (w === '--whole-archive') whole = true;
    else if (w === '--no-whole-archive') whole = false;
    else if (w === '--start-group' || w === '--end-group') continue;
    else if (w.endsWith('.a')) (whole ? objects : libMembers).push(...archiveMembers(o, o.tree, w));
    else if (w.endsWith('.o')) objects.push(w);
    else flags.push(w);
  }
  return { flags, original: words.slice(1), objects, libMembers };
}

interface ThinLinkResult {
  modules: string[];
  ms: number;
}

/** `ld.lld -r --thinlto-index-only`: rewrites every X.o.thinlto.bc, returns the module list. */
function thinLink(o: Options, plan: LinkPlan, work: string): ThinLinkResult {
  const rsp = join(work, 'vmlinux.thinlink.rsp');
  const lines = [...plan.objects];
  if (plan.libMembers.length) lines.push('--start-lib', ...plan.libMembers, '--end-lib');
  writeFileSync(rsp, lines.map(shellQuote).join('\n') + '\n');
  const list = join(work, 'vmlinux.thinlto-index');
  const t0 = process.hrtime.bigint();
  must(o.lld, [...plan.flags, `--thinlto-index-only=${list}`, `@${rsp}`, '-o', join(work, 'thinlink.tmp.o')], { cwd: o.tree, what: 'thin link' });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const modules = readFileSync(list, 'utf8').split('\n').filter(Boolean);
  return { modules, ms };
}

function jobsFor(o: Options, modules: string[]): Job[] {
  const jobs: Job[] = [];
  for (const m of modules) {
    if (!isBitcode(join(o.tree, m))) continue;
    const index = `${m}.thinlto.bc`;
    if (!existsSync(join(o.tree, index))) throw new Error(`thin link wrote no ${index}`);
    const cmdFile = join(o.tree, dirname(m), `.${basename(m)}.cmd`);
    const flags = savedCFlags(shellWords(savedCommand(cmdFile)), m);
    jobs.push({ input: m, index, output: m.replace(/\.o$/, '') + '.thinlto-native.o', flags });
  }
  return jobs;
}

function writeMakefile(path: string, jobs: Job[]): void {
  const lines = [
    '# Generated by bench/kernel.ts: one distributed ThinLTO backend job per rule, run through sh as kbuild does.',
    'CC ?= clang',
    '.PHONY: all ' + jobs.map((j) => makeWord(j.output)).join(' '),
    'all: ' + jobs.map((j) => makeWord(j.output)).join(' '),
    '',
  ];
  for (const j of jobs) {
    lines.push(`${makeWord(j.output)}:`);
    lines.push(
      `\t@set -e; echo '  BE      $@'; $(CC) ${j.flags.map(makeWord).join(' ')} -x ir -fno-lto -Wno-unused-command-line-argument -fthinlto-index=${makeWord(j.index)} -c -o ${makeWord(j.output)} ${makeWord(j.input)}`,
    );
  }
  writeFileSync(path, lines.join('\n') + '\n');
}

// ---------------------------------------------------------------------------------------------
// ltocache daemons, the team server

class Ltocache {
  readonly env: NodeJS.ProcessEnv;
  constructor(
    readonly dir: string,
    base: NodeJS.ProcessEnv,
    extra: Record<string, string> = {},
  ) {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    this.env = { ...base, LTOCACHE_DIR: dir, LTOCACHE_IDLE_TIMEOUT: '3600', LTOCACHE_START_TIMEOUT_MS: '20000', ...extra };
  }
  cli(args: string[]): string {
    return must(process.execPath, [CLI, ...args], { env: this.env, what: `ltocache ${args.join(' ')}` });
  }
  start(): void {
    this.cli(['daemon', 'start']);
  }
  /** Stops the daemon and waits for its process to exit (it still writes the store after its socket closes). */
  stop(): void {
    const pid = this.pid();
    spawnSync(process.execPath, [CLI, 'daemon', 'stop'], { env: this.env, stdio: 'ignore' });
    if (pid === null) return;
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      let state = 'Z';
      try {
        const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
        state = st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3);
      } catch {
        // gone
      }
      if (state === 'Z') return;
      spawnSync('sleep', ['0.05']);
    }
    log(`daemon ${pid} of ${this.dir} did not exit`);
  }
  stats(): Record<string, number> {
    return JSON.parse(this.cli(['stats', '--json'])) as Record<string, number>;
  }
  pid(): number | null {
    const f = join(this.dir, 'daemon.pid');
    return existsSync(f) ? Number(readFileSync(f, 'utf8').trim()) : null;
  }
  destroy(): void {
    this.stop();
    rmSync(this.dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  }
}

interface TeamServer {
  url: string;
  pid: number;
  /** SIGTERM, and SIGKILL if it has not exited 10 s later; resolves once it has exited. */
  stop(): Promise<void>;
}

/** The team rows' server side: the URL(s) the daemons are given, the processes whose CPU is counted. */
interface Team {
  /** Row names: `${label}, warm (empty local cache)` and `${label}, after edit (empty local cache)`. */
  label: string;
  /** LTOCACHE_REMOTE: one URL, or several comma-separated. */
  url: string;
  /** Server-side processes whose CPU the rows report as "+ server". */
  pids: number[];
  note?: string;
}

const TEAM_TOKENS = { write: 'bench-writer-0123456789abcdef0123', read: 'bench-reader-0123456789abcdef0123', admin: 'bench-admin-0123456789abcdef01234' };

/** Writes the team tokens file (one file for every server of a cache) and returns its path. */
function writeTeamTokens(path: string): string {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `ci write ${TEAM_TOKENS.write}\ndev read ${TEAM_TOKENS.read}\nops admin ${TEAM_TOKENS.admin}\n`, { mode: 0o600 });
  return path;
}

/**
 * One `ltocache serve` on a loopback port: on `storage` (a redis… URL) or else on DIR/data, made
 * empty first (a --work directory kept from an earlier run would hold its entries and memos, and
 * the writer row would find them instead of populating it); its log is DIR/serve.log.
 */
async function startServer(dir: string, tokens: string, base: NodeJS.ProcessEnv, storage?: string): Promise<TeamServer> {
  mkdirSync(dir, { recursive: true });
  if (!storage) rmSync(join(dir, 'data'), { recursive: true, force: true });
  const logPath = join(dir, 'serve.log');
  const fd = openSync(logPath, 'w');
  // Output to a file, never a pipe: this process blocks in spawnSync while the server runs.
  const store = storage ? ['--storage', storage] : ['--dir', join(dir, 'data')];
  const child = spawn(process.execPath, [CLI, 'serve', '--listen', '127.0.0.1:0', ...store, '--tokens', tokens], { stdio: ['ignore', fd, fd], env: base });
  closeSync(fd);
  const stop = async (): Promise<void> => {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), 10_000)));
    const how = await Promise.race([killChild(child, 'SIGTERM'), late]);
    clearTimeout(timer);
    if (how === 'late') await killChild(child, 'SIGKILL');
  };
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const m = /listening on (wss?:\/\/\S+)/.exec(readFileSync(logPath, 'utf8'));
    if (m) return { url: m[1]!, pid: child.pid!, stop };
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  await killChild(child, 'SIGKILL');
  throw new Error(`team server did not start: ${readFileSync(logPath, 'utf8').slice(0, 2000)}`);
}

/**
 * The --remote-cluster backend: a Redis Cluster on loopback and two `ltocache serve` on it (one
 * tokens file). Whatever has started is registered in `cleanup` before anything can fail.
 */
async function startClusterTeam(work: string, base: NodeJS.ProcessEnv, cleanup: (() => Promise<void>)[]): Promise<Team> {
  const cluster = new RedisCluster(3);
  cleanup.push(() => cluster.stop());
  await cluster.start();
  log(`redis cluster ${cluster.url}`);
  const tokens = writeTeamTokens(join(work, 'cluster-servers', 'tokens'));
  const servers: TeamServer[] = [];
  for (const i of [1, 2]) {
    const s = await startServer(join(work, 'cluster-servers', `serve-${i}`), tokens, base, cluster.url);
    cleanup.push(() => s.stop());
    servers.push(s);
  }
  const redisPids = cluster.nodes.map((n) => n.child!.pid!);
  return {
    label: 'ltocache + team (2 servers, Redis Cluster)',
    url: servers.map((s) => s.url).join(','),
    pids: [...servers.map((s) => s.pid), ...redisPids],
    note: `LTOCACHE_REMOTE names both servers (${servers.length} × ltocache serve --storage redis+cluster://, Redis Cluster of 3 masters + 3 replicas on loopback); server CPU = both ltocache serve + the ${redisPids.length} redis-server processes`,
  };
}

// ---------------------------------------------------------------------------------------------
// Scenarios

interface Sample {
  wallMs: number;
  cpuMs: number;
  daemonCpuMs?: number;
  /** The daemon's main thread alone (its JavaScript): the part that cannot spread over more cores. */
  daemonMainCpuMs?: number;
  serverCpuMs?: number;
  hits?: number;
  /** Hits the native client served from a memo, without the daemon. */
  memoHits?: number;
  misses?: number;
  remoteHits?: number;
  /** Hits whose key came from a teammate's team memo (not keyed by this daemon). */
  teamMemoHits?: number;
  /** Hits the native client served from a team pack (also in memoHits). */
  teamPackHits?: number;
  ideal?: number;
  mismatches?: number;
  stderrMatches?: boolean;
  /** Team rows: the team pack's adoption once the build was quiet (not in daemonCpuMs). */
  adoption?: { entries: number; daemonCpuMs: number };
  /** Wall of the direct clang build run just before this one, on the same inputs (cold rows). */
  pairedNoCacheMs?: number;
}

interface Row {
  name: string;
  jobs: number;
  samples: Sample[];
  note?: string;
}

export interface Report {
  machine: Record<string, string | number>;
  command: string;
  jobs: number;
  makeJobs: number;
  thinLinkMs: number[];
  rows: {
    name: string;
    jobs: number;
    wallMinMs: number;
    wallMedianMs: number;
    ratio: number | null;
    /** Median over runs of wall / the wall of the direct build run just before it; null unpaired. */
    pairedRatio: number | null;
    hits: string;
    cpuMedianMs: number;
    daemonCpuMedianMs: number | null;
    daemonMainCpuMedianMs: number | null;
    serverCpuMedianMs: number | null;
    mismatches: number | null;
    note?: string;
    samples: Sample[];
  }[];
  totalMismatches: number;
  changedJobs: string[];
  ideal: number;
  noCacheDeterministic: boolean;
  stderrAllMatch: boolean;
  /** With --verify: hits audited by a background compile, and how many differed. */
  verify: { hits: number; runs: number; mismatches: number } | null;
}

function machine(o: Options, jobs: number): Record<string, string | number> {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? cpus()[0]?.model ?? 'unknown';
  const uname = spawnSync('uname', ['-r'], { encoding: 'utf8' }).stdout.trim();
  const clangV = spawnSync(o.clang, ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0] ?? '';
  const lldV = spawnSync(o.lld, ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0] ?? '';
  const ccacheV = o.ccache ? ((spawnSync(o.ccachePath, ['--version'], { encoding: 'utf8' }).stdout ?? '').split('\n')[0] ?? '') : '';
  const release = existsSync(join(o.tree, 'include/config/kernel.release')) ? readFileSync(join(o.tree, 'include/config/kernel.release'), 'utf8').trim() : 'n/a';
  const nproc = spawnSync('nproc', [], { encoding: 'utf8' }).stdout.trim();
  return {
    nproc,
    cpu: model,
    memory_gib: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    host_kernel: uname,
    tree_kernel: release,
    clang: clangV,
    lld: lldV,
    ccache: ccacheV || 'not used',
    node: process.version,
    jobs,
  };
}

function ccacheStats(ccache: string, env: NodeJS.ProcessEnv): Record<string, number> {
  const out = must(ccache, ['--print-stats'], { env });
  const s: Record<string, number> = {};
  for (const line of out.split('\n')) {
    const [k, v] = line.split('\t');
    if (k && v !== undefined) s[k] = Number(v);
  }
  return s;
}

function lldCacheEntries(dir: string): number {
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.startsWith('llvmcache-')).length : 0;
}

export async function runBench(o: Options): Promise<Report | null> {
  const base = baseEnv(o);
  const work = o.work ?? mkdtempSync(join(tmpdir(), 'ltocache-kbench-'));
  mkdirSync(work, { recursive: true });
  log(`work dir ${work}`);
  /** Stops the team servers and the Redis Cluster; run last first, in the outer finally. */
  const cleanup: (() => Promise<void>)[] = [];
  const caches: Ltocache[] = [];
  try {
    // ---- job list (not timed)
    const plan = linkPlan(o);
    log(`vmlinux.a: ${plan.objects.length} objects, libraries: ${plan.libMembers.length} members`);
    const first = thinLink(o, plan, work);
    const jobs = jobsFor(o, first.modules);
    if (jobs.length === 0) throw new Error('no bitcode modules: is the tree built with CONFIG_LTO_CLANG_THIN?');
    const makefile = join(work, 'backend.mk');
    writeMakefile(makefile, jobs);
    log(`${jobs.length} backend jobs, Makefile ${makefile}`);
    if (o.planOnly) {
      writeFileSync(
        join(work, 'thinlink.sh'),
        `cd ${shellQuote(o.tree)} && exec ${[o.lld, ...plan.flags, `--thinlto-index-only=${join(work, 'vmlinux.thinlto-index')}`, `@${join(work, 'vmlinux.thinlink.rsp')}`, '-o', join(work, 'thinlink.tmp.o')].map(shellQuote).join(' ')}\n`,
      );
      log(`plan only: make -rR -j${o.jobs} -f ${makefile} CC=… in ${o.tree}; thin link: sh ${join(work, 'thinlink.sh')}`);
      return null;
    }
    const thinLinkMs: number[] = [first.ms];
    const relink = (): void => {
      const r = thinLink(o, plan, work);
      thinLinkMs.push(r.ms);
      if (r.modules.join('\n') !== first.modules.join('\n')) throw new Error('the thin link changed the module list');
    };

    const make = (cc: string, env: NodeJS.ProcessEnv): Timed => {
      for (const j of jobs) rmSync(join(o.tree, j.output), { force: true });
      const t = timed(o.make, ['-rR', '-s', '--no-print-directory', `-j${o.jobs}`, '-f', makefile, `CC=${cc}`], { cwd: o.tree, env });
      if (t.status !== 0) throw new Error(`make with CC=${cc} failed (${t.status}): ${t.stderr.slice(0, 4000)}`);
      return t;
    };
    const outputs = (): Map<string, string | null> => new Map(jobs.map((j) => [j.output, fileSha(join(o.tree, j.output))]));
    const mismatches = (got: Map<string, string | null>, want: Map<string, string | null>): number =>
      jobs.filter((j) => !got.get(j.output) || got.get(j.output) !== want.get(j.output)).length;
    const sortedLines = (s: string): string =>
      s
        .split('\n')
        .filter((l) => l && !l.startsWith('  BE '))
        .sort()
        .join('\n');
    const inputs = (): Map<string, string> => new Map(jobs.map((j) => [j.input, `${fileSha(join(o.tree, j.input))}:${fileSha(join(o.tree, j.index))}`]));

    // ---- the edit (prepared, checked, not timed)
    const editPath = join(o.tree, o.edit.file);
    const editObj = o.edit.file.replace(/\.c$/, '.o');
    const original = readFileSync(editPath, 'utf8');
    if (original.split(o.edit.from).length !== 2) throw new Error(`${o.edit.file}: the edit's text must occur exactly once`);
    const edited = original.replace(o.edit.from, o.edit.to);
    const editCmd = savedCommand(join(o.tree, dirname(editObj), `.${basename(editObj)}.cmd`));
    const objBackup = join(work, 'edit-backup.o');
    copyFileSync(join(o.tree, editObj), objBackup);
    const depFile = join(o.tree, dirname(editObj), `.${basename(editObj)}.d`);
    const depExisted = existsSync(depFile);
    const applyEdit = (): void => {
      writeFileSync(editPath, edited);
      must('sh', ['-c', editCmd], { cwd: o.tree, env: base, what: `front end of ${editObj}` });
      if (!depExisted) rmSync(depFile, { force: true });
      relink();
    };
    const revertEdit = (): void => {
      writeFileSync(editPath, original);
      copyFileSync(objBackup, join(o.tree, editObj));
      relink();
    };
    const before = inputs();
    let changedJobs: string[] = [];
    let ideal = 0;
    let afterRef: Map<string, string | null> | null = null;
    let afterStderr = '';
    try {
      // ---- rows
      const rows = new Map<string, Row>();
      const row = (name: string, note?: string): Row => {
        let r = rows.get(name);
        if (!r) rows.set(name, (r = { name, jobs: jobs.length, samples: [], ...(note ? { note } : {}) }));
        return r;
      };
      let ref: Map<string, string | null> | null = null;
      let refStderr = '';
      let noCacheDeterministic = true;
      /** Wall of the last direct clang build, which a cold row run right after it is paired with. */
      let noCacheJustBefore: number | undefined;
      const pairLast = (name: string): void => {
        const last = row(name).samples.at(-1);
        if (last && noCacheJustBefore !== undefined) last.pairedNoCacheMs = noCacheJustBefore;
        noCacheJustBefore = undefined;
      };
      const verifyTotals = { hits: 0, runs: 0, mismatches: 0 };
      let stderrAllMatch = true;
      const ccacheOk = o.ccache && spawnSync(o.ccachePath, ['--version'], { stdio: 'ignore' }).status === 0;
      if (o.ccache && !ccacheOk) log('ccache not found: its rows are skipped');

      const ltoRun = (
        name: string,
        cache: Ltocache,
        want: () => Map<string, string | null>,
        wantStderr: () => string,
        idealHits?: number,
        serverPids: number[] = [],
        extraEnv: NodeJS.ProcessEnv = {},
      ): void => {
        const s0 = cache.stats();
        const pid = cache.pid();
        const d0 = pid ? processCpuMs(pid) : NaN;
        const m0 = pid ? threadCpuMs(pid, pid) : NaN;
        const serverCpu = (): number => serverPids.reduce((n, p) => n + processCpuMs(p), 0);
        const v0 = serverCpu();
        const t = make(`${CLIENT} ${o.clang}`, { ...cache.env, ...extraEnv });
        // stats drains the fast path's hit notices: that work is the daemon's share of those hits.
        const s1 = cache.stats();
        const d1 = pid ? processCpuMs(pid) : NaN;
        const m1 = pid ? threadCpuMs(pid, pid) : NaN;
        const v1 = serverCpu();
        const got = outputs();
        const mm = mismatches(got, want());
        const se = sortedLines(t.stderr) === wantStderr();
        stderrAllMatch &&= se;
        const sample: Sample = {
          wallMs: t.wallMs,
          cpuMs: t.cpuMs,
          daemonCpuMs: d1 - d0,
          daemonMainCpuMs: m1 - m0,
          hits: s1.hits! - s0.hits!,
          memoHits: (s1.memo_hits ?? 0) - (s0.memo_hits ?? 0),
          misses: s1.misses! - s0.misses!,
          remoteHits: s1.remote_hits! - s0.remote_hits!,
          teamMemoHits: (s1.team_memo_hits ?? 0) - (s0.team_memo_hits ?? 0),
          teamPackHits: (s1.team_pack_hits ?? 0) - (s0.team_pack_hits ?? 0),
          mismatches: mm,
          stderrMatches: se,
        };
        if (idealHits !== undefined) sample.ideal = idealHits;
        if (serverPids.length) sample.serverCpuMs = v1 - v0;
        row(name).samples.push(sample);
        const errs = (s1.errors ?? 0) - (s0.errors ?? 0);
        const unc = (s1.uncacheable ?? 0) - (s0.uncacheable ?? 0);
        log(
          `${name}: ${(t.wallMs / 1000).toFixed(3)} s, ${sample.hits} hits (${sample.remoteHits} remote), ${sample.misses} misses, ${errs} errors, ${unc} uncacheable, ${mm} mismatches${se ? '' : ', STDERR DIFFERS'}`,
        );
      };

      // Team servers: --remote's on --dir, --remote-cluster's on a Redis Cluster; each populated
      // once by a writer cache from the unedited tree (not timed).
      const teams: Team[] = [];
      if (o.remote) {
        const server = await startServer(join(work, 'server'), writeTeamTokens(join(work, 'server', 'tokens')), base);
        cleanup.push(() => server.stop());
        teams.push({ label: 'ltocache + team server', url: server.url, pids: [server.pid] });
      }
      if (o.remoteCluster) teams.push(await startClusterTeam(work, base, cleanup));
      for (const team of teams) {
        log(`${team.label}: ${team.url}`);
        const writer = new Ltocache(join(work, 'cache-writer'), base, { LTOCACHE_REMOTE: team.url, LTOCACHE_REMOTE_TOKEN: TEAM_TOKENS.write });
        caches.push(writer);
        writer.start();
        make(`${CLIENT} ${o.clang}`, writer.env);
        writer.stop();
        const ws = writer.stats();
        log(`${team.label} populated: ${ws.uploads} uploads of ${ws.misses} compiles (${ws.uploads_dropped} dropped, ${ws.uploads_refused} refused, ${ws.remote_errors} errors)`);
        writer.destroy();
      }

      for (let run = 1; run <= o.runs; run++) {
        log(`---- run ${run} of ${o.runs}`);
        relink();
        // floor
        {
          const t = make('/bin/true', base);
          row('floor (/bin/true as the compiler)').samples.push({ wallMs: t.wallMs, cpuMs: t.cpuMs });
        }
        // no cache
        {
          const t = make(o.clang, base);
          const got = outputs();
          if (!ref) {
            ref = got;
            refStderr = sortedLines(t.stderr);
          } else if (mismatches(got, ref) !== 0) noCacheDeterministic = false;
          row(`no cache (${o.clang} direct)`).samples.push({ wallMs: t.wallMs, cpuMs: t.cpuMs });
          log(`no cache: ${(t.wallMs / 1000).toFixed(3)} s`);
          noCacheJustBefore = t.wallMs;
        }
        const wantRef = () => ref!;
        const wantRefStderr = () => refStderr;
        // ltocache cold / warm / after edit
        const cache = new Ltocache(join(work, `cache-${run}`), base, o.verify ? { LTOCACHE_VERIFY: 'all' } : {});
        caches.push(cache);
        cache.start();
        ltoRun('ltocache cold', cache, wantRef, wantRefStderr);
        pairLast('ltocache cold');
        relink();
        ltoRun('ltocache warm', cache, wantRef, wantRefStderr);
        relink();
        ltoRun('ltocache warm, daemon path (LTOCACHE_MEMO=0)', cache, wantRef, wantRefStderr, undefined, undefined, { LTOCACHE_MEMO: '0' });
        // ccache cold / warm
        if (ccacheOk) {
          const cdir = join(work, `ccache-${run}`);
          rmSync(cdir, { recursive: true, force: true });
          const env = { ...base, CCACHE_DIR: cdir };
          must(o.ccachePath, ['-z'], { env });
          for (const name of ['ccache cold', 'ccache warm']) {
            if (name === 'ccache warm') relink();
            const s0 = ccacheStats(o.ccachePath, env);
            const t = make(`${o.ccachePath} ${o.clang}`, env);
            const s1 = ccacheStats(o.ccachePath, env);
            const hit = (s: Record<string, number>) => (s.direct_cache_hit ?? 0) + (s.preprocessed_cache_hit ?? 0);
            const mm = mismatches(outputs(), ref!);
            // A ccache without `-fthinlto-index` support (before 4.13) declines every job.
            const unsupported = (s1.unsupported_source_language ?? 0) - (s0.unsupported_source_language ?? 0);
            row(name, unsupported > 0 ? `ccache counted ${unsupported} of these jobs as "unsupported_source_language" (-x ir)` : undefined).samples.push({
              wallMs: t.wallMs,
              cpuMs: t.cpuMs,
              hits: hit(s1) - hit(s0),
              mismatches: mm,
            });
            log(`${name}: ${(t.wallMs / 1000).toFixed(3)} s, ${hit(s1) - hit(s0)} hits, unsupported_source_language +${unsupported}`);
          }
          rmSync(cdir, { recursive: true, force: true });
        }
        // lld in-process ThinLTO with its cache, cold / warm
        const lcache = join(work, `lld-cache-${run}`);
        rmSync(lcache, { recursive: true, force: true });
        const lldRun = (name: string): void => {
          const n0 = lldCacheEntries(lcache);
          const t = timed(
            o.lld,
            [
              ...plan.original.filter((w, i, a) => !w.startsWith('--thinlto-cache-dir') && !w.startsWith('--thinlto-jobs') && w !== '-o' && a[i - 1] !== '-o'),
              `--thinlto-cache-dir=${lcache}`,
              `--thinlto-jobs=${o.jobs}`,
              '-o',
              join(work, 'lld-vmlinux.o'),
            ],
            { cwd: o.tree, env: base },
          );
          if (t.status !== 0) throw new Error(`${name} failed: ${t.stderr.slice(0, 4000)}`);
          const added = lldCacheEntries(lcache) - n0;
          row(name, 'thin link + backends in one ld.lld process; hits = modules − new cache entries').samples.push({ wallMs: t.wallMs, cpuMs: t.cpuMs, hits: jobs.length - added });
          log(`${name}: ${(t.wallMs / 1000).toFixed(3)} s, ${added} new cache entries`);
        };
        lldRun('lld in-process ThinLTO cache, cold');
        lldRun('lld in-process ThinLTO cache, warm');

        // the edit
        applyEdit();
        if (run === 1) {
          const after = inputs();
          changedJobs = jobs.filter((j) => before.get(j.input) !== after.get(j.input)).map((j) => j.input);
          ideal = jobs.length - changedJobs.length;
          log(`after the edit ${changedJobs.length} jobs changed (index or input): ${changedJobs.join(' ')}`);
        }
        // Reference objects for the edited tree: direct clang, once (not timed, not a row).
        const wantAfter = () => afterRef!;
        const wantAfterStderr = () => afterStderr;
        if (!afterRef) {
          const t = make(o.clang, base);
          afterRef = outputs();
          afterStderr = sortedLines(t.stderr);
          relink();
        }
        ltoRun('ltocache after edit', cache, wantAfter, wantAfterStderr, ideal);
        lldRun('lld in-process ThinLTO cache, after edit');
        if (o.verify) {
          // The audit compiles run in the background: wait until every hit has been compared.
          const deadline = Date.now() + 600_000;
          let st = cache.stats();
          while (st.verify_runs! + (st.verify_skipped ?? 0) < st.hits! && Date.now() < deadline) {
            spawnSync('sleep', ['0.5']);
            st = cache.stats();
          }
          verifyTotals.hits += st.hits!;
          verifyTotals.runs += st.verify_runs!;
          verifyTotals.mismatches += st.verify_mismatches!;
          log(`verify=all: ${st.verify_runs} of ${st.hits} hits recompiled and compared, ${st.verify_mismatches} mismatches`);
        }
        // The same daemon again, its store cleared and every bitcode input touched (so it and every
        // index is hashed again, as after a clean rebuild): what a miss costs once the daemon's
        // one-time start-up (V8 compiling its hot code, identifying the toolchain) is behind it.
        // The inputs' times are put back afterwards: the tree is the user's.
        cache.cli(['clear']);
        const times = jobs.map((j) => statSync(join(o.tree, j.input)));
        const now = new Date();
        for (const j of jobs) utimesSync(join(o.tree, j.input), now, now);
        relink();
        // Rows minutes apart drift on a shared machine: a direct build on the same touched inputs
        // right before gives this row a ratio of its own.
        {
          const t = make(o.clang, base);
          row(`no cache, just before the next row`).samples.push({ wallMs: t.wallMs, cpuMs: t.cpuMs });
          noCacheJustBefore = t.wallMs;
          relink();
        }
        ltoRun('ltocache cold, daemon already warm (store cleared, inputs touched)', cache, wantAfter, wantAfterStderr);
        pairLast('ltocache cold, daemon already warm (store cleared, inputs touched)');
        // In seconds as numbers: a Date would round them to milliseconds.
        for (const [i, j] of jobs.entries()) utimesSync(join(o.tree, j.input), times[i]!.atimeMs / 1000, times[i]!.mtimeMs / 1000);
        cache.destroy();
        rmSync(lcache, { recursive: true, force: true });

        // team cache: a new, empty local cache reading from the server(s) (populated from the unedited tree)
        for (const [t, team] of teams.entries()) {
          revertEdit();
          const devEnv = { LTOCACHE_REMOTE: team.url, LTOCACHE_REMOTE_TOKEN: TEAM_TOKENS.read, LTOCACHE_REMOTE_MODE: 'read-only' };
          const dev = new Ltocache(join(work, `cache-dev-${run}-${t}`), base, devEnv);
          caches.push(dev);
          dev.start();
          row(`${team.label}, warm (empty local cache)`, team.note);
          ltoRun(`${team.label}, warm (empty local cache)`, dev, wantRef, wantRefStderr, undefined, team.pids);
          awaitAdoption(dev, row(`${team.label}, warm (empty local cache)`));
          dev.destroy();
          const dev2 = new Ltocache(join(work, `cache-dev2-${run}-${t}`), base, devEnv);
          caches.push(dev2);
          dev2.start();
          applyEdit();
          ltoRun(`${team.label}, after edit (empty local cache)`, dev2, wantAfter, wantAfterStderr, ideal, team.pids);
          awaitAdoption(dev2, row(`${team.label}, after edit (empty local cache)`));
          dev2.destroy();
        }
        revertEdit();
      }

      // ---- the table
      const noCache = rows.get(`no cache (${o.clang} direct)`)!;
      const noCacheMedian = median(noCache.samples.map((s) => s.wallMs));
      const outRows = [...rows.values()].map((r) => {
        const walls = r.samples.map((s) => s.wallMs);
        const hitsList = r.samples.map((s) => s.hits);
        const hitsStr =
          hitsList[0] === undefined
            ? '—'
            : [
                ...new Set(
                  hitsList.map(
                    (h, i) =>
                      `${h}${r.samples[i]!.remoteHits ? ` (${r.samples[i]!.remoteHits} remote)` : ''}${r.samples[i]!.memoHits ? ` (${r.samples[i]!.memoHits} memo)` : ''}${r.samples[i]!.teamMemoHits ? ` (${r.samples[i]!.teamMemoHits} team memo)` : ''}${r.samples[i]!.teamPackHits ? ` (${r.samples[i]!.teamPackHits} team pack)` : ''}`,
                  ),
                ),
              ].join(', ') + (r.samples[0]!.ideal !== undefined ? ` (ideal ${r.samples[0]!.ideal})` : '');
        const mmList = r.samples.map((s) => s.mismatches).filter((x): x is number => x !== undefined);
        const dcpu = r.samples.map((s) => s.daemonCpuMs).filter((x): x is number => x !== undefined && !Number.isNaN(x));
        const vcpu = r.samples.map((s) => s.serverCpuMs).filter((x): x is number => x !== undefined && !Number.isNaN(x));
        const mcpu = r.samples.map((s) => s.daemonMainCpuMs).filter((x): x is number => x !== undefined && !Number.isNaN(x));
        const paired = r.samples.flatMap((s) => (s.pairedNoCacheMs ? [s.wallMs / s.pairedNoCacheMs] : []));
        return {
          name: r.name,
          jobs: r.jobs,
          wallMinMs: Math.min(...walls),
          wallMedianMs: median(walls),
          ratio: r === noCache ? 1 : median(walls) / noCacheMedian,
          pairedRatio: paired.length ? median(paired) : null,
          hits: hitsStr,
          cpuMedianMs: median(r.samples.map((s) => s.cpuMs)),
          daemonCpuMedianMs: dcpu.length ? median(dcpu) : null,
          daemonMainCpuMedianMs: mcpu.length ? median(mcpu) : null,
          serverCpuMedianMs: vcpu.length ? median(vcpu) : null,
          mismatches: mmList.length ? mmList.reduce((a, b) => a + b, 0) : null,
          ...(r.note ? { note: r.note } : {}),
          samples: r.samples,
        };
      });
      const ltoRows = outRows.filter((r) => r.name.startsWith('ltocache'));
      return {
        machine: machine(o, jobs.length),
        command: `node dist/bench/kernel.js ${process.argv.slice(2).join(' ')}`,
        jobs: jobs.length,
        makeJobs: o.jobs,
        thinLinkMs,
        rows: outRows,
        totalMismatches: ltoRows.reduce((n, r) => n + (r.mismatches ?? 0), 0),
        changedJobs,
        ideal,
        noCacheDeterministic,
        stderrAllMatch,
        verify: o.verify ? verifyTotals : null,
      };
    } finally {
      // Leave the tree as it was found.
      if (readFileSync(editPath, 'utf8') !== original) {
        writeFileSync(editPath, original);
        copyFileSync(objBackup, join(o.tree, editObj));
      }
      for (const j of jobs) rmSync(join(o.tree, j.output), { force: true });
    }
  } finally {
    for (const c of caches) c.destroy();
    for (const stop of cleanup.reverse()) await stop().catch((e: Error) => log(`cleanup: ${e.message}`));
    if (!o.keep && !o.work) rmSync(work, { recursive: true, force: true });
  }
}

export function formatReport(r: Report): string {
  const s = (ms: number) => (ms / 1000).toFixed(3);
  const lines: string[] = [];
  lines.push(
    `${r.jobs} backend jobs, make -j${r.makeJobs}; ${r.rows[0]?.samples.length ?? 0} runs per row; wall in seconds (min / median); ratio = median / median of no cache; paired = median over runs of the row's wall / the wall of the direct build run just before it`,
  );
  lines.push('');
  lines.push('| scenario | wall min | wall median | jobs | hits | vs no cache | paired | CPU make tree (median) | daemon CPU (median) | byte mismatches |');
  lines.push('|---|---:|---:|---:|---|---:|---:|---:|---:|---:|');
  for (const row of r.rows) {
    lines.push(
      `| ${row.name} | ${s(row.wallMinMs)} | ${s(row.wallMedianMs)} | ${row.jobs} | ${row.hits} | ${row.ratio === null ? '—' : row.ratio.toFixed(3)} | ${row.pairedRatio === null ? '—' : row.pairedRatio.toFixed(3)} | ${s(row.cpuMedianMs)} | ${row.daemonCpuMedianMs === null ? '—' : s(row.daemonCpuMedianMs) + (row.serverCpuMedianMs === null ? '' : ` (+ server ${s(row.serverCpuMedianMs)})`)} | ${row.mismatches === null ? '—' : row.mismatches} |`,
    );
  }
  lines.push('');
  // Per-job costs. Client CPU = make-tree CPU above the floor's (make and sh are in both), per job.
  const floor = r.rows.find((x) => x.name.startsWith('floor'));
  const perJob = r.rows.filter((x) => x.name.startsWith('ltocache') && x.daemonCpuMedianMs !== null);
  if (floor && perJob.length) {
    // The main thread runs the daemon's JavaScript, one job after another; its other threads (V8's
    // compiler and collector helpers, libuv's pool, LevelDB's compaction) can use other cores.
    lines.push('| per job | client CPU above floor | daemon CPU | of it, main thread | daemon-bound job rate (cores model: 1 / daemon CPU per job) | main-thread-bound job rate |');
    lines.push('|---|---:|---:|---:|---:|---:|');
    const rate = (ms: number) => (ms > 0 ? `${Math.round(1000 / ms).toLocaleString('en-US')} jobs/s` : '∞');
    for (const row of perJob) {
      const client = (row.cpuMedianMs - floor.cpuMedianMs) / row.jobs;
      const daemon = row.daemonCpuMedianMs! / row.jobs;
      const main = row.daemonMainCpuMedianMs === null ? null : row.daemonMainCpuMedianMs / row.jobs;
      lines.push(
        `| ${row.name} | ${client.toFixed(3)} ms | ${daemon.toFixed(3)} ms | ${main === null ? '—' : `${main.toFixed(3)} ms`} | ${rate(daemon)} | ${main === null ? '—' : rate(main)} |`,
      );
    }
    lines.push('');
  }
  lines.push(`thin link (not in any make row; in the lld rows): median ${s(median(r.thinLinkMs))} s over ${r.thinLinkMs.length}`);
  lines.push(`after the edit: ${r.changedJobs.length} of ${r.jobs} jobs changed index or input, ideal hits ${r.ideal}: ${r.changedJobs.join(' ')}`);
  if (r.verify) lines.push(`verify=all: ${r.verify.runs} of ${r.verify.hits} hits recompiled in the background and compared byte for byte; mismatches: ${r.verify.mismatches}`);
  lines.push(
    `byte mismatches of ltocache objects vs direct clang: ${r.totalMismatches}; direct clang deterministic across runs: ${r.noCacheDeterministic ? 'yes' : 'NO'}; stderr of ltocache runs equal to direct clang's (sorted lines): ${r.stderrAllMatch ? 'yes' : 'NO'}`,
  );
  for (const row of r.rows) if (row.note) lines.push(`- ${row.name}: ${row.note}`);
  for (const row of r.rows) {
    const a = row.samples.flatMap((x) => (x.adoption ? [x.adoption] : []));
    if (!a.length) continue;
    const ms = median(a.map((x) => x.daemonCpuMs));
    const n = median(a.map((x) => x.entries));
    lines.push(
      `- ${row.name}: team pack adopted once the build was quiet (not in the row's daemon CPU): median ${n} entries, ${ms.toFixed(0)} ms of daemon CPU (${n ? (ms / n).toFixed(2) : '—'} ms per entry)`,
    );
  }
  lines.push('');
  lines.push(
    'machine: ' +
      Object.entries(r.machine)
        .map(([k, v]) => `${k}=${v}`)
        .join('; '),
  );
  return lines.join('\n');
}

async function main(): Promise<void> {
  let o: Options;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n`);
    process.exit(2);
  }
  if (!existsSync(CLIENT) || !existsSync(CLI)) throw new Error('build first: npm run build');
  if (!statSync(o.tree).isDirectory()) throw new Error(`${o.tree}: not a directory`);
  const report = await runBench(o);
  if (!report) return;
  process.stdout.write(formatReport(report) + '\n');
  if (o.json) writeFileSync(o.json, JSON.stringify(report, null, 2) + '\n');
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e: Error) => {
    process.stderr.write(`kernel bench: ${e.stack ?? e.message}\n`);
    process.exit(1);
  });
}
