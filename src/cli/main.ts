#!/usr/bin/env node
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { resolveCacheDir } from '../config/cacheDir.js';
import { type Config, ConfigError, type ConfigKey, ConfigShape, loadConfig } from '../config/config.js';
import { chromeTrace } from '../explain/chromeTrace.js';
import { type BuildSummary, formatBuild, formatExplanation, type JobExplanation } from '../explain/explainJobs.js';
import type { JobRecord } from '../jobLog/jobLog.js';
import { DAEMON_MALLOC_ARENA_MAX, DAEMON_SEMI_SPACE_MB } from '../protocol/limits.js';
import { formatStats } from '../stats/formatStats.js';
import { formatPrometheus } from '../stats/prometheus.js';
import { LAYOUT_FILE, LAYOUT_VERSION } from '../store/layout.js';
import { Logger } from '../util/log.js';
import { processAlive } from '../util/processAlive.js';
import { VERSION } from '../version.js';
import { commandUsage, usageText } from './commandTable.js';
import { askDaemon } from './controlClient.js';

// The daemon, the store and the team-cache client are imported where used: `distribute` runs
// once per link, and its start-up time is on the link's critical path.
const USAGE = usageText();

class UsageError extends Error {}

function fail(msg: string, code = 1): never {
  process.stderr.write(`ltocache: ${msg}\n`);
  process.exit(code);
}

const CLI_PATH = fileURLToPath(import.meta.url);

/**
 * The native client's start handshake: it passes the write end of a pipe as fd
 * $LTOCACHE_STARTUP_NOTIFY_FD and waits for one byte, 'R' (listening) or 'L' (another daemon
 * holds this cache dir: connect to that one). EOF without a byte (we exited, or never ran)
 * tells it the start failed, so it compiles at once instead of polling until its timeout.
 */
function startupNotifier(): (byte: 'R' | 'L') => void {
  const fd = Number(process.env.LTOCACHE_STARTUP_NOTIFY_FD);
  delete process.env.LTOCACHE_STARTUP_NOTIFY_FD;
  if (!Number.isInteger(fd) || fd < 3) return () => {};
  return (byte) => {
    try {
      writeSync(fd, byte);
      closeSync(fd);
    } catch {
      // the client gave up waiting
    }
  };
}

/**
 * V8 flags the daemon sets for itself (every launcher gets them; later compilations read them).
 * Without inlining, V8's optimizing compiler spends about a tenth less CPU warming up over a
 * fresh daemon's first few hundred jobs, where its compile threads compete with clang; jobs run
 * no slower once warm (docs/benchmarks.md, "JIT warm-up").
 */
export const DAEMON_V8_FLAGS = ['--no-turbo-inlining'] as const;

async function daemonRun(config: Config, background: boolean): Promise<void> {
  for (const f of DAEMON_V8_FLAGS) setFlagsFromString(f);
  const notify = startupNotifier();
  const { Daemon, EXIT_DAEMON_ALREADY_RUNNING } = await import('../daemon/daemon.js');
  const d = await Daemon.start(config);
  if (d === 'already-running') {
    notify('L');
    if (!background) fail(`a daemon is already running for ${config.dir}`, EXIT_DAEMON_ALREADY_RUNNING);
    return;
  }
  notify('R');
  const stop = () => void d.stop();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('SIGHUP', stop);
  if (!background) process.stderr.write(`ltocache daemon running (pid ${process.pid}), socket ${d.socketPath}\n`);
  process.exit(await d.stopped);
}

/** Starts a detached daemon and waits until it answers. */
export async function startDetached(config: Config, timeoutMs = 15_000): Promise<boolean> {
  const child = spawn(process.execPath, [`--max-semi-space-size=${DAEMON_SEMI_SPACE_MB}`, CLI_PATH, 'daemon', 'run', '--background'], {
    detached: true,
    stdio: 'ignore',
    env: process.env.MALLOC_ARENA_MAX ? process.env : { ...process.env, MALLOC_ARENA_MAX: String(DAEMON_MALLOC_ARENA_MAX) },
  });
  child.unref();
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await askDaemon(config.dir, { op: 'status' }, 2000);
    if (r.kind === 'ok') return true;
    await new Promise((res) => setTimeout(res, 50));
  }
  return false;
}

/** The configured team cache, for a command that asks it with our token. */
async function teamCache(config: Config) {
  if (!config.remote) fail('no remote configured (set remote in the config file or LTOCACHE_REMOTE)', 2);
  const { RemoteBackend } = await import('../remote/remoteBackend.js');
  return new RemoteBackend({ url: config.remote, token: config.remote_token || 'none', timeoutMs: 5000, ...(config.remote_ca ? { ca: config.remote_ca } : {}) });
}

/** `stats --remote --zero`, `clear --remote`: an admin operation on every team server (an admin token). */
async function remoteAdmin(config: Config, op: 'reset-stats' | 'clear'): Promise<void> {
  const remote = await teamCache(config);
  try {
    await remote.admin(op);
    process.stdout.write(op === 'clear' ? `cleared team cache ${config.remote}\n` : `team cache statistics zeroed (${config.remote})\n`);
  } catch (e) {
    fail(`team cache ${(e as Error).message}`);
  } finally {
    remote.close();
  }
}

/** `stats --remote`: the team server's own counters, asked with our token. */
async function remoteStats(config: Config, json: boolean): Promise<void> {
  const remote = await teamCache(config);
  try {
    const s = await remote.stats(5000);
    if (json) process.stdout.write(JSON.stringify(s) + '\n');
    else {
      const w = Math.max(...Object.keys(s).map((k) => k.length));
      process.stdout.write(
        `team cache ${config.remote}\n` +
          Object.entries(s)
            .map(([k, v]) => `${k.padEnd(w)}  ${v}`)
            .join('\n') +
          '\n',
      );
    }
  } catch (e) {
    fail(`team cache ${config.remote}: ${(e as Error).message}`);
  } finally {
    remote.close();
  }
}

async function stats(config: Config, args: string[]): Promise<void> {
  const json = args.includes('--json');
  const prometheus = args.includes('--prometheus');
  const zero = args.includes('--zero');
  const unknown = args.filter((a) => a !== '--json' && a !== '--zero' && a !== '--remote' && a !== '--prometheus');
  if (unknown.length) throw new UsageError(`stats: unknown option ${unknown[0]}`);
  if (json && prometheus) throw new UsageError('stats: --json and --prometheus exclude each other');
  if (args.includes('--remote')) {
    if (prometheus) throw new UsageError('stats: for the team server in Prometheus format, scrape its /metrics');
    if (zero) {
      if (json) throw new UsageError('stats: --remote --zero prints no statistics (no --json)');
      return remoteAdmin(config, 'reset-stats');
    }
    return remoteStats(config, json);
  }
  const { currentStats } = await import('./currentStats.js');
  const view = await currentStats(config, zero);
  if (zero && !json && !prometheus) {
    process.stdout.write('statistics zeroed\n');
    return;
  }
  process.stdout.write(prometheus ? formatPrometheus(view) : json ? JSON.stringify(view) + '\n' : formatStats(view) + '\n');
}

async function clear(config: Config, args: string[]): Promise<void> {
  if (args.length && (args.length > 1 || args[0] !== '--remote')) throw new UsageError(`clear: unexpected argument '${args.find((a) => a !== '--remote') ?? args[1]}'`);
  if (args.length) return remoteAdmin(config, 'clear');
  const r = await askDaemon(config.dir, { op: 'clear' });
  if (r.kind === 'failed') fail(r.error);
  if (r.kind === 'unreachable') {
    const { initHash } = await import('../key/hash.js');
    const { LocalStore } = await import('../store/localStore.js');
    const { MemoStore } = await import('../memo/memoStore.js');
    await initHash();
    const store = await LocalStore.open({ dir: join(config.dir, 'store'), maxBytes: config.max_size });
    // The memos too: a team pack carries its own blobs and would go on serving.
    await new MemoStore(config.dir, (d) => store.blobPath(d)).clear();
    await store.clear();
    await store.close();
  }
  process.stdout.write(`cleared ${config.dir}\n`);
}

function configShow(env: NodeJS.ProcessEnv): void {
  const { config, origins } = loadConfig(env);
  const rows: [string, string, string][] = [
    ['dir', config.dir, env.LTOCACHE_DIR ? 'env LTOCACHE_DIR' : 'default'],
    ['config_file', config.configFile, env.LTOCACHE_CONFIG ? 'env LTOCACHE_CONFIG' : 'default'],
  ];
  for (const k of Object.keys(ConfigShape) as ConfigKey[]) {
    let v = String(config[k]);
    if (k === 'remote_token' && v) v = '(set, hidden)';
    const o = origins[k];
    rows.push([k, v, o === 'env' ? `env LTOCACHE_${k.toUpperCase()}` : o === 'file' ? `file ${config.configFile}` : 'default']);
  }
  const w0 = Math.max(...rows.map((r) => r[0].length));
  const w1 = Math.max(...rows.map((r) => r[1].length));
  for (const [k, v, o] of rows) process.stdout.write(`${k.padEnd(w0)}  ${v.padEnd(w1)}  ${o}\n`);
}

async function daemonCmd(config: Config, args: string[]): Promise<void> {
  const sub = args[0];
  if (sub === 'run') return daemonRun(config, args.includes('--background'));
  if (sub === 'start') {
    const st = await askDaemon(config.dir, { op: 'status' }, 2000);
    if (st.kind === 'ok') {
      process.stdout.write(`daemon already running (pid ${(st.result as { pid: number }).pid})\n`);
      return;
    }
    if (!(await startDetached(config))) fail(`daemon did not start; see ${join(config.dir, 'daemon.log')}`);
    const now = await askDaemon(config.dir, { op: 'status' });
    process.stdout.write(`daemon started (pid ${now.kind === 'ok' ? (now.result as { pid: number }).pid : '?'})\n`);
    return;
  }
  if (sub === 'restart') {
    await daemonCmd(config, ['stop']);
    return daemonCmd(config, ['start']);
  }
  if (sub === 'stop') {
    const r = await askDaemon(config.dir, { op: 'stop' }, 5000);
    if (r.kind !== 'ok') {
      const stuck = silentDaemon(config.dir);
      if (stuck === null) {
        process.stdout.write('daemon not running\n');
        return;
      }
      // Alive but silent (stopped by a debugger or Ctrl-Z, or hung): jobs wait out their silence
      // timeout until it is gone, and a new daemon cannot take the store.
      process.stdout.write(`daemon (pid ${stuck}) is not answering; sending SIGTERM\n`);
      if (!(await killWithin(stuck, 'SIGTERM', 5000)) && !(await killWithin(stuck, 'SIGKILL', 5000))) fail(`daemon (pid ${stuck}) is still running`);
      process.stdout.write('daemon stopped\n');
      return;
    }
    // Stopped means the process is gone (its store closed), not just the socket.
    const pid =
      (r.result as { pid?: number } | undefined)?.pid ??
      (await askDaemon(config.dir, { op: 'status' }, 1000).then((x) => (x.kind === 'ok' ? (x.result as { pid: number }).pid : undefined)));
    const deadline = Date.now() + 40_000;
    while (Date.now() < deadline) {
      const gone = pid === undefined ? (await askDaemon(config.dir, { op: 'status' }, 1000)).kind === 'unreachable' : !processAlive(pid);
      if (gone) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    process.stdout.write('daemon stopped\n');
    return;
  }
  if (sub === 'status') {
    const r = await askDaemon(config.dir, { op: 'status' }, 5000);
    if (r.kind !== 'ok') {
      process.stdout.write('daemon not running\n');
      process.exit(3);
    }
    const s = r.result as { pid: number; uptime_ms: number; socket: string; dir: string; active_jobs: number };
    process.stdout.write(`daemon running: pid ${s.pid}, up ${(s.uptime_ms / 1000).toFixed(0)} s, ${s.active_jobs} job(s) active\ncache dir ${s.dir}\nsocket    ${s.socket}\n`);
    return;
  }
  throw new UsageError(`daemon: expected start, stop, restart, status or run, got '${sub ?? ''}'`);
}

function takeOption(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  if (v === undefined) throw new UsageError(`${name} needs a value`);
  args.splice(i, 2);
  return v;
}

async function explain(config: Config, args: string[]): Promise<void> {
  const { askLog } = await import('./askLog.js');
  const json = args.includes('--json');
  const rest = args.filter((a) => a !== '--json');
  if (rest[0] === '--last-build' && rest.length === 1) {
    const r = (await askLog(config, { op: 'last-build' })) as { summary: BuildSummary };
    process.stdout.write(json ? JSON.stringify(r.summary) + '\n' : formatBuild(r.summary) + '\n');
    return;
  }
  if (rest.length !== 1 || rest[0]!.startsWith('-')) throw new UsageError('explain: expected PATH or --last-build');
  const e = (await askLog(config, { op: 'explain', path: resolve(rest[0]!) })) as JobExplanation | null;
  if (!e) fail(`no job recorded for ${resolve(rest[0]!)}`);
  process.stdout.write(json ? JSON.stringify(e) + '\n' : formatExplanation(e) + '\n');
}

async function trace(config: Config, args: string[]): Promise<void> {
  const rest = [...args];
  const out = takeOption(rest, '-o');
  if (rest.length !== 1 || rest[0] !== '--last-build' || !out) throw new UsageError('trace: expected --last-build -o FILE');
  const { askLog } = await import('./askLog.js');
  const r = (await askLog(config, { op: 'last-build' })) as { jobs: JobRecord[] };
  mkdirSync(dirname(resolve(out)), { recursive: true });
  writeFileSync(out, JSON.stringify(chromeTrace(r.jobs)) + '\n');
  process.stdout.write(`wrote ${r.jobs.length} jobs to ${out}\n`);
}

/** Orders dotted numeric versions; a non-numeric part compares as 0. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.+-]/).map((x) => Number(x) || 0);
  const pb = b.split(/[.+-]/).map((x) => Number(x) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length, 3); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d) return Math.sign(d);
  }
  return 0;
}

/**
 * `ltocache --version`. Through the native client, the client has already printed its own line
 * and passes its version as LTOCACHE_CLIENT_VERSION; the daemon it would talk to is compared
 * with that. Called as ltocache-cli, the comparison is with this CLI's version.
 */
async function versions(config: Config): Promise<void> {
  const client = process.env.LTOCACHE_CLIENT_VERSION;
  const installed = client ?? VERSION;
  const out: string[] = [];
  if (client === undefined) out.push(`cli     ${VERSION} ${CLI_PATH}`);
  const st = await askDaemon(config.dir, { op: 'status' }, 2000);
  let older: string | undefined;
  if (st.kind === 'ok') {
    const d = st.result as { pid: number; version?: string };
    const v = d.version ?? 'unknown';
    out.push(`daemon  ${v} (running, pid ${d.pid})`);
    if (v === 'unknown' || compareVersions(v, installed) < 0) older = v;
  } else out.push(`daemon  ${VERSION} (not running; the next backend job starts this version)`);
  const layoutFile = join(config.dir, 'store', LAYOUT_FILE);
  let found: string | undefined;
  try {
    found = readFileSync(layoutFile, 'utf8').trim();
  } catch {
    // no store yet
  }
  out.push(`layout  ${LAYOUT_VERSION} (${found === undefined ? `no store yet in ${config.dir}` : `store ${join(config.dir, 'store')} has layout ${found}`})`);
  if (older !== undefined) out.push(`ltocache: the running daemon (${older}) is older than the installed client (${installed}); restart it: ltocache daemon restart`);
  process.stdout.write(out.join('\n') + '\n');
}

/**
 * `ltocache-cli build-client [--out PATH]`: compiles the native client from the packaged source
 * (client/build.sh: CC_FOR_CLIENT, else musl-gcc when installed, else cc) for a platform without a prebuilt one. The default
 * output is the package's `ltocache` (package.json bin), so the command on PATH becomes it.
 */
async function buildClient(args: string[]): Promise<void> {
  const rest = [...args];
  const outOpt = takeOption(rest, '--out');
  if (rest.length) throw new UsageError(`build-client: unknown argument '${rest[0]}'`);
  const top = resolve(dirname(CLI_PATH), '../../..');
  const pkg = JSON.parse(readFileSync(join(top, 'package.json'), 'utf8')) as { bin?: Record<string, string> };
  const out = resolve(outOpt ?? join(top, pkg.bin?.ltocache ?? 'bin/ltocache'));
  const r = spawnSync('sh', [join(top, 'client', 'build.sh')], { stdio: 'inherit', env: { ...process.env, LTOCACHE_CLIENT_OUT: out } });
  if (r.status !== 0) fail(`building the client failed (a C compiler is needed: set CC_FOR_CLIENT or install cc)`);
  process.stdout.write(`built ${out}\n`);
}

export async function main(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === 'help' || cmd === '--help' || cmd === '-h') {
    process.stdout.write(USAGE + '\n');
    return;
  }
  // `serve` and `distribute` answer --help themselves (serve's options; lld never passes it).
  if (cmd !== 'serve' && cmd !== 'distribute' && (rest.includes('--help') || rest[0] === '-h')) {
    const help = commandUsage(cmd);
    if (help === undefined) throw new UsageError(`unknown command '${cmd}'`);
    process.stdout.write(help + '\n');
    return;
  }
  // A stray word after a command that takes none is refused, not ignored (clear checks its own: `clear --all` must not empty the store).
  if (['demo', '--version', 'version'].includes(cmd) && rest.length) throw new UsageError(`${cmd}: unexpected argument '${rest[0]}'`);
  if (cmd === '--version' || cmd === 'version') return versions(loadConfig(process.env).config);
  if (cmd === 'build-client') return buildClient(rest);
  if (cmd === 'config') {
    if (rest[0] !== 'show' || rest.length > 1) throw new UsageError("config: expected 'config show'");
    return configShow(process.env);
  }
  if (cmd === 'serve') return (await import('./serve.js')).runServe(rest);
  const { config } = loadConfig(process.env);
  switch (cmd) {
    case 'daemon':
      return daemonCmd(config, rest);
    case 'stats':
      return stats(config, rest);
    case 'clear':
      return clear(config, rest);
    case 'explain':
      return explain(config, rest);
    case 'report':
      return (await import('./report.js')).runReport(config, rest);
    case 'trace':
      return trace(config, rest);
    case 'distribute': {
      const { runDistribute, DistributeError } = await import('./distribute.js');
      try {
        return await runDistribute(config, rest);
      } catch (e) {
        if (e instanceof DistributeError) fail(`distribute: ${e.message}`);
        throw e;
      }
    }
    case 'demo': {
      const { runDemo } = await import('../demo/demo.js');
      return runDemo(config);
    }
    default:
      throw new UsageError(`unknown command '${cmd}'`);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === (await import('node:fs')).realpathSync(process.argv[1])) {
  // A reader that stopped reading (`ltocache stats | head -1`) ends a command's output, without a
  // stack trace; a server or daemon whose stdout went away goes on serving.
  const serving = process.argv[2] === 'serve' || process.argv[2] === 'daemon';
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
    if (!serving) process.exit(0);
  });
  main(process.argv.slice(2)).catch((e) => {
    if (e instanceof UsageError) fail(`${e.message}\n${USAGE}`, 2);
    if (e instanceof ConfigError) {
      if (process.argv[2] === 'daemon' && process.argv[3] === 'run' && process.argv.includes('--background')) logStartFailure(e.message);
      fail(e.message, 2);
    }
    fail(process.env.LTOCACHE_DEBUG ? ((e as Error).stack ?? String(e)) : ((e as Error).message ?? String(e)));
  });
}

/**
 * A daemon a job starts has its stdio on /dev/null: a configuration it cannot start with goes to
 * the daemon log it would have written (only into an existing cache directory, which the daemon
 * creates itself with its own permissions), else the jobs compile uncached with no word why.
 */
function logStartFailure(message: string): void {
  let dir: string;
  try {
    dir = resolveCacheDir(process.env);
    if (!statSync(dir).isDirectory()) return;
  } catch {
    return;
  }
  new Logger(join(dir, 'daemon.log')).error('daemon not started: the configuration is invalid; jobs compile without the cache', { error: message });
}

/**
 * The pid in the cache directory's daemon.pid when that process is alive and is an ltocache
 * daemon (its command line says so: a pid reused by another program is never signalled), else null.
 */
function silentDaemon(dir: string): number | null {
  let pid: number;
  try {
    pid = Number(readFileSync(join(dir, 'daemon.pid'), 'utf8').trim());
  } catch {
    return null;
  }
  if (!Number.isInteger(pid) || pid <= 1 || !processAlive(pid)) return null;
  let argv: string[];
  try {
    argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return null;
  }
  const i = argv.indexOf('daemon');
  return i > 0 && argv[i + 1] === 'run' && argv.slice(0, i).some((a) => a.endsWith('/cli/main.js')) ? pid : null;
}

/** Sends `signal` to `pid`; true once the process is gone within `ms`. */
async function killWithin(pid: number, signal: NodeJS.Signals, ms: number): Promise<boolean> {
  try {
    process.kill(pid, signal);
    // A stopped process (SIGSTOP, a debugger's stop) acts on a SIGTERM only once continued.
    if (signal === 'SIGTERM') process.kill(pid, 'SIGCONT');
  } catch {
    return !processAlive(pid);
  }
  for (const deadline = Date.now() + ms; Date.now() < deadline; await new Promise((r) => setTimeout(r, 50))) if (!processAlive(pid)) return true;
  return !processAlive(pid);
}
