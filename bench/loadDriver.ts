/**
 * Shared load generator (issue 5, "Load"): used by test/e2e/load.test.ts (assertions) and by
 * bench/load.ts (numbers). Nothing here asserts; every run returns a report of what happened.
 *
 * Two loads:
 *
 *  - daemon load: N concurrent clients × M jobs through ONE daemon. Clients speak the real client
 *    frame protocol over the daemon's Unix socket (one connection per job, as the C client does);
 *    one job in `nativeEvery` goes through the real bin/ltocache process instead. Jobs are the
 *    fixture's modules × flag variants; every client writes into its own output directory, and
 *    output names are not keyed, so all clients share the modules × variants keys: the first use
 *    of each misses (identical concurrent jobs compile once), the rest hit.
 *    Every job's exit status, stdout, stderr and object bytes are compared with direct clang.
 *
 *  - team load: D daemons, each with its own cache directory and its own checkout (different
 *    directories), sharing one `ltocache serve`. All D build the same jobs concurrently (round 1:
 *    misses, uploads racing, remote hits), then after a new thin link (round 2: all local hits),
 *    then after `ltocache clear` of every local store (round 3: all remote hits).
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { readFile, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { delimiter, isAbsolute, join, resolve } from 'node:path';
import { askDaemon } from '../src/cli/controlClient.js';
import { ThinBuild } from '../src/demo/thinBuild.js';
import type { JobRecord } from '../src/jobLog/jobLog.js';
import { decodeReply, encodeCompileRequest, FRAME_WAIT, FrameDecoder, MAX_REPLY_PAYLOAD, socketPathFor } from '../src/protocol/clientFrames.js';
import type { StatsView } from '../src/stats/counters.js';
import { CacheEnv, CLI, CLIENT, FIXTURE, tempDir } from '../test/support/env.js';
import { mulberry32 } from '../test/support/prng.js';
import { ServerProcess, TOKENS } from '../test/support/server.js';
import { statFields, TICK_MS } from './procStat.js';

// ---------------------------------------------------------------------------------------------
// Jobs and references

export interface Variant {
  name: string;
  flags: string[];
}

/** -O1/-O2/-O3 × -march=x86-64/-march=x86-64-v2. */
export const DAEMON_VARIANTS: Variant[] = ['-O1', '-O2', '-O3'].flatMap((o) =>
  ['x86-64', 'x86-64-v2'].map((march) => ({ name: `${o.slice(1)}-${march}`, flags: [o, `-march=${march}`] })),
);

/** Two variants for the team load. */
export const TEAM_VARIANTS: Variant[] = [
  { name: 'O2-x86-64', flags: ['-O2', '-march=x86-64'] },
  { name: 'O3-x86-64-v2', flags: ['-O3', '-march=x86-64-v2'] },
];

export interface Reference {
  status: number;
  stdout: Buffer;
  stderr: Buffer;
  obj: Buffer;
}

const refKey = (module: string, variant: Variant) => `${module}|${variant.name}`;

/** Direct clang, once per (module, variant), into `<dir>/ltocache-ref/`. */
export function referenceObjects(b: ThinBuild, variants: Variant[]): Map<string, Reference> {
  const refDir = join(b.dir, 'ltocache-ref');
  mkdirSync(refDir, { recursive: true });
  const refs = new Map<string, Reference>();
  for (const m of b.modules) {
    for (const v of variants) {
      const out = join('ltocache-ref', `${m}.${v.name}.o`);
      const r = spawnSync(b.clang, b.backendArgs(m, v.flags, out), { cwd: b.dir, maxBuffer: 64 << 20 });
      if (r.error) throw r.error;
      if (r.status !== 0) throw new Error(`direct clang failed for ${m} ${v.name}: ${r.stderr.toString()}`);
      refs.set(refKey(m, v), { status: r.status, stdout: r.stdout, stderr: r.stderr, obj: readFileSync(join(b.dir, out)) });
    }
  }
  return refs;
}

/** Absolute path of a compiler as the C client sends it: PATH lookup for a bare name. */
export function absoluteCompiler(name: string, env: NodeJS.ProcessEnv = process.env): string {
  if (name.includes('/')) return resolve(name);
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    const p = join(dir || '.', name);
    try {
      if (statSync(p).isFile()) return isAbsolute(p) ? p : resolve(p);
    } catch {
      // next
    }
  }
  throw new Error(`${name} not found on PATH`);
}

/** The C client sends its whole environment; keep what the wire format can carry. */
function wireEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && k && !k.includes('=') && !k.includes('\0') && !v.includes('\0') && k !== '__proto__') out[k] = v;
  return out;
}

// ---------------------------------------------------------------------------------------------
// One job

export interface JobSpec {
  /** Client (daemon load) or daemon (team load) index. */
  client: number;
  seq: number;
  module: string;
  variant: Variant;
  /** Output path relative to the checkout. */
  out: string;
  native: boolean;
  /** The first use of this key by this client (an expected miss in the daemon load). */
  firstUse: boolean;
}

export interface JobResult {
  spec: JobSpec;
  /** Client-side latency: connect → reply (socket), or spawn → exit (native). */
  ms: number;
  /** Wall-clock start (Date.now()), to line jobs up with the daemon's job log. */
  startedAt: number;
  /** Set when the job failed in any way; `wrongObject` when the failure is the object bytes. */
  failure?: string;
  wrongObject?: boolean;
  /** Daemon's own classification (job log), when it could be matched. */
  result?: JobRecord['result'];
  /** Daemon-side duration (job log endedAt - startedAt, ms resolution). */
  daemonMs?: number;
}

/** The first 20 failure texts, how many jobs failed, and how many of those got a wrong object. */
function failureSummary(results: JobResult[]): { failures: string[]; failureCount: number; wrongObjects: number } {
  const failed = results.filter((r) => r.failure);
  return { failures: failed.slice(0, 20).map((r) => r.failure!), failureCount: failed.length, wrongObjects: failed.filter((r) => r.wrongObject).length };
}

export interface JobContext {
  b: ThinBuild;
  env: NodeJS.ProcessEnv;
  socket: string;
  compilerAbs: string;
  refs: Map<string, Reference>;
  timeoutMs: number;
  /** Encoded compile frames, per (out path): identical on every repetition. */
  frames: Map<string, Buffer>;
}

export function jobContext(b: ThinBuild, cache: CacheEnv, refs: Map<string, Reference>, timeoutMs = 120_000): JobContext {
  return { b, env: cache.env, socket: socketPathFor(cache.dir, process.getuid!()), compilerAbs: absoluteCompiler(b.clang, cache.env), refs, timeoutMs, frames: new Map() };
}

type Reply = { exit: number; stdout: Buffer; stderr: Buffer } | { error: string };

/** One compile request on a fresh connection, exactly like the C client (no fallback here). */
function socketCompile(socket: string, frame: Buffer, timeoutMs: number): Promise<Reply> {
  return new Promise((res) => {
    const sock = connect(socket);
    const decoder = new FrameDecoder(MAX_REPLY_PAYLOAD);
    let done = false;
    const finish = (r: Reply) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      res(r);
    };
    const timer = setTimeout(() => finish({ error: `no reply within ${timeoutMs} ms` }), timeoutMs);
    sock.on('connect', () => sock.write(frame));
    sock.on('error', (e) => finish({ error: `socket: ${e.message}` }));
    sock.on('close', () => finish({ error: 'daemon closed the connection without a reply' }));
    sock.on('data', (chunk: Buffer) => {
      try {
        // 'W' keepalives say the daemon is still working: skip them.
        const payload = decoder.push(chunk).find((f) => !(f.length === 1 && f[0] === FRAME_WAIT));
        if (!payload) return;
        const reply = decodeReply(payload);
        finish(
          reply.kind === 'result'
            ? { exit: reply.exit, stdout: reply.stdout, stderr: reply.stderr }
            : { error: reply.kind === 'passthrough' ? `passthrough: ${reply.reason}` : `unexpected ${reply.kind}` },
        );
      } catch (e) {
        finish({ error: `bad reply: ${(e as Error).message}` });
      }
    });
  });
}

/** The real bin/ltocache, prefix mode, collecting raw bytes. */
function nativeCompile(compiler: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<Reply> {
  return new Promise((res) => {
    const c = spawn(CLIENT, [compiler, ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.stdout.on('data', (d: Buffer) => out.push(d));
    c.stderr.on('data', (d: Buffer) => err.push(d));
    c.on('error', (e) => {
      clearTimeout(timer);
      res({ error: `spawn: ${e.message}` });
    });
    c.on('close', (code, sig) => {
      clearTimeout(timer);
      res({ exit: code ?? (sig ? 128 : 1), stdout: Buffer.concat(out), stderr: Buffer.concat(err) });
    });
  });
}

/** Runs one job and checks everything against the direct-clang reference. */
export async function runJob(spec: JobSpec, ctx: JobContext): Promise<JobResult> {
  const { b } = ctx;
  const args = b.backendArgs(spec.module, spec.variant.flags, spec.out);
  const target = join(b.dir, spec.out);
  // A hit that wrote nothing must not pass because an earlier job left the right object behind.
  await unlink(target).catch(() => {});
  const startedAt = Date.now();
  const t0 = performance.now();
  let reply: Reply;
  if (spec.native) {
    // As a build would call it: `ltocache clang-19 ...`, the client finds the compiler on PATH.
    reply = await nativeCompile(b.clang, args, b.dir, ctx.env, ctx.timeoutMs);
  } else {
    let frame = ctx.frames.get(spec.out);
    if (!frame) {
      frame = encodeCompileRequest({ version: 2, stderrTty: false, umask: 0o022, compiler: ctx.compilerAbs, cwd: b.dir, args, env: wireEnv(ctx.env) });
      ctx.frames.set(spec.out, frame);
    }
    reply = await socketCompile(ctx.socket, frame, ctx.timeoutMs);
  }
  const ms = performance.now() - t0;
  const result: JobResult = { spec, ms, startedAt };
  const ref = ctx.refs.get(refKey(spec.module, spec.variant))!;
  const what = `${spec.native ? 'native' : 'socket'} job ${spec.client}/${spec.seq} ${spec.out}`;
  if ('error' in reply) {
    result.failure = `${what}: ${reply.error}`;
    return result;
  }
  if (reply.exit !== ref.status) result.failure = `${what}: exit ${reply.exit}, direct clang ${ref.status}; stderr: ${reply.stderr.toString().slice(0, 500)}`;
  else if (!reply.stderr.equals(ref.stderr))
    result.failure = `${what}: stderr differs from direct clang: ${JSON.stringify(reply.stderr.toString().slice(0, 300))} vs ${JSON.stringify(ref.stderr.toString().slice(0, 300))}`;
  else if (!reply.stdout.equals(ref.stdout)) result.failure = `${what}: stdout differs from direct clang`;
  else {
    const obj = await readFile(target).catch(() => null);
    if (!obj) result.failure = `${what}: no object written`;
    else if (!obj.equals(ref.obj)) {
      result.failure = `${what}: object (${obj.length} bytes) differs from direct clang (${ref.obj.length} bytes)`;
      result.wrongObject = true;
    }
  }
  return result;
}

/** Runs `specs` in order with `parallel` workers (a client is one worker; make -jN is N). */
async function runQueue(specs: JobSpec[], ctx: JobContext, parallel: number, sink: JobResult[], onJob?: () => void): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < specs.length) {
      const spec = specs[next++]!;
      sink.push(await runJob(spec, ctx));
      onJob?.();
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, specs.length) }, worker));
}

/**
 * Stops a daemon and removes its cache directory. `ltocache daemon stop` returns once the socket
 * stops answering, while the daemon may still be draining uploads and closing LevelDB (writing into
 * the directory): wait for the process itself to exit before removing anything.
 */
export async function destroyCache(cache: CacheEnv, waitMs = 45_000): Promise<void> {
  const pid = cache.daemonPid();
  cache.stop();
  const deadline = Date.now() + waitMs;
  const alive = (p: number) => {
    try {
      return !/^State:\s+Z/m.test(readFileSync(`/proc/${p}/status`, 'utf8'));
    } catch {
      return false;
    }
  };
  while (pid && Date.now() < deadline && alive(pid)) {
    await new Promise((r) => setTimeout(r, 50));
  }
  rmSync(cache.dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
}

// ---------------------------------------------------------------------------------------------
// Process sampling

export interface ProcSample {
  rssKb: number;
  hwmKb: number;
  fds: number;
  /** CPU time of the process itself (user + system), ms. */
  cpuMs: number;
  /** CPU time of its waited-for children (the daemon's compilers), ms. */
  childCpuMs: number;
}

export function procSample(pid: number): ProcSample | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0);
    let fds = -1;
    try {
      fds = readdirSync(`/proc/${pid}/fd`).length;
    } catch {
      // not ours to read
    }
    const f = statFields(pid);
    const cpuMs = ((f[11] ?? 0) + (f[12] ?? 0)) * TICK_MS;
    const childCpuMs = ((f[13] ?? 0) + (f[14] ?? 0)) * TICK_MS;
    return { rssKb: kb('VmRSS'), hwmKb: kb('VmHWM'), fds, cpuMs, childCpuMs };
  } catch {
    return null;
  }
}

/** Samples VmRSS of some processes every `everyMs` until stopped; keeps the peak of each. */
export class RssSampler {
  readonly peakKb = new Map<number, number>();
  /** VmRSS over time of the first process: [ms since start, kB]. */
  readonly timeline: [number, number][] = [];
  private readonly t0 = performance.now();
  samples = 0;
  private timer: NodeJS.Timeout;
  constructor(
    private readonly pids: number[],
    everyMs = 200,
  ) {
    this.sample();
    this.timer = setInterval(() => this.sample(), everyMs);
  }
  private sample(): void {
    this.samples++;
    for (const pid of this.pids) {
      const s = procSample(pid);
      if (!s) continue;
      this.peakKb.set(pid, Math.max(this.peakKb.get(pid) ?? 0, s.rssKb));
      if (pid === this.pids[0]) this.timeline.push([performance.now() - this.t0, s.rssKb]);
    }
  }
  stop(): void {
    this.sample();
    clearInterval(this.timer);
  }
  /** The largest peak among the sampled processes. */
  get maxKb(): number {
    return Math.max(0, ...this.peakKb.values());
  }
}

// ---------------------------------------------------------------------------------------------
// Statistics helpers

export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export interface LatencySummary {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export function summarise(ms: number[]): LatencySummary {
  const s = [...ms].sort((a, b) => a - b);
  return {
    n: s.length,
    p50: percentile(s, 50),
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    max: s.length ? s[s.length - 1]! : NaN,
    mean: s.length ? s.reduce((a, b) => a + b, 0) / s.length : NaN,
  };
}

/**
 * Matches results with the daemon's job log (op `last-build`): for one output path, a client's
 * jobs are sequential, so the i-th recorded job on a path is the client's i-th job on it.
 * Returns how many results got a daemon-side classification.
 */
export async function annotateFromJobLog(cacheDir: string, checkout: string, results: JobResult[], since: number): Promise<number> {
  const r = await askDaemon(cacheDir, { op: 'last-build' }, 120_000);
  if (r.kind !== 'ok') return 0;
  const jobs = ((r.result as { jobs: JobRecord[] }).jobs ?? []).filter((j) => j.startedAt >= since);
  const byPath = new Map<string, JobRecord[]>();
  for (const j of jobs) {
    const list = byPath.get(j.output) ?? [];
    list.push(j);
    byPath.set(j.output, list);
  }
  for (const list of byPath.values()) list.sort((a, b) => a.startedAt - b.startedAt);
  const mine = new Map<string, JobResult[]>();
  for (const res of results) {
    const p = resolve(checkout, res.spec.out);
    const list = mine.get(p) ?? [];
    list.push(res);
    mine.set(p, list);
  }
  let matched = 0;
  for (const [p, list] of mine) {
    const recs = byPath.get(p) ?? [];
    if (recs.length !== list.length) continue;
    list.sort((a, b) => a.startedAt - b.startedAt || a.spec.seq - b.spec.seq);
    list.forEach((res, i) => {
      res.result = recs[i]!.result;
      res.daemonMs = recs[i]!.endedAt - recs[i]!.startedAt;
      matched++;
    });
  }
  return matched;
}

// ---------------------------------------------------------------------------------------------
// Daemon load

export interface DaemonLoadOptions {
  clients: number;
  jobs: number;
  /** One job in this many goes through the real bin/ltocache (0: none). */
  nativeEvery: number;
  variants?: Variant[];
  seed?: number;
  /** Extra daemon environment (LTOCACHE_*). */
  env?: Record<string, string>;
  /** Match results with the daemon's job log (exact hit/miss per job, daemon-side time). */
  jobLog?: boolean;
  /** Node options for the daemon (e.g. --cpu-prof): it is then started here, in the foreground
   * of a detached `node <nodeArgs> main.js daemon run`, instead of by `ltocache daemon start`. */
  nodeArgs?: string[];
  /** With nodeArgs: file receiving the daemon's stdout and stderr (e.g. for --trace-gc). */
  daemonOutput?: string;
  /** Keep the cache directory and daemon (caller destroys `cache`). */
  keep?: boolean;
  progress?: (done: number, total: number) => void;
}

export interface DaemonLoadReport {
  clients: number;
  jobsPerClient: number;
  jobsSent: number;
  nativeJobs: number;
  distinctKeys: number;
  wallMs: number;
  failures: string[];
  failureCount: number;
  wrongObjects: number;
  results: JobResult[];
  stats: StatsView;
  daemonPid: number;
  peakRssKb: number;
  hwmKb: number;
  rssSamples: number;
  fdsBefore: number;
  fdsAfter: number;
  /** Daemon CPU (its own, and its compilers') over the run, ms. */
  daemonCpuMs: number;
  compilerCpuMs: number;
  /** This process's CPU over the run, bin/ltocache children included, ms. */
  driverCpuMs: number;
  /** Daemon VmRSS over the run: [ms, kB]. */
  rssTimeline: [number, number][];
  /** Temp files the daemon left in output directories (`.<name>.ltocache-*`). */
  leftovers: number;
  /** Results classified from the job log (0 unless `jobLog`). */
  classified: number;
  cache: CacheEnv;
  checkout: string;
}

/** Plans one client's jobs: first uses spread over the run (offset per client), the rest repeats. */
export function planClient(client: number, clients: number, jobs: number, modules: string[], variants: Variant[], nativeEvery: number, seed: number): JobSpec[] {
  const rand = mulberry32(seed * 7919 + client);
  const combos = modules.flatMap((module) => variants.map((variant) => ({ module, variant })));
  for (let i = combos.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [combos[i], combos[j]] = [combos[j]!, combos[i]!];
  }
  const n = Math.min(combos.length, jobs);
  const step = jobs / n;
  const offset = (client / Math.max(1, clients)) * step;
  const intro = combos.slice(0, n).map((_, k) => Math.min(jobs - 1, k === 0 ? 0 : Math.floor(k * step + offset)));
  const specs: JobSpec[] = [];
  let introduced = 0;
  const dir = `load-out/c${String(client).padStart(2, '0')}`;
  for (let i = 0; i < jobs; i++) {
    let c: { module: string; variant: Variant };
    let firstUse = false;
    if (introduced < n && (i >= intro[introduced]! || i === 0)) {
      c = combos[introduced++]!;
      firstUse = true;
    } else c = combos[Math.floor(rand() * introduced)]!;
    const native = nativeEvery > 0 && (i + client * 3) % nativeEvery === nativeEvery - 1;
    specs.push({ client, seq: i, module: c.module, variant: c.variant, out: `${dir}/${c.module}.${c.variant.name}.o`, native, firstUse });
  }
  return specs;
}

export async function runDaemonLoad(o: DaemonLoadOptions): Promise<DaemonLoadReport> {
  const variants = o.variants ?? DAEMON_VARIANTS;
  const cache = new CacheEnv('load', { LTOCACHE_IDLE_TIMEOUT: '600', ...(o.env ?? {}) });
  const tree = tempDir('load-tree');
  try {
    const b = ThinBuild.fromFixture(FIXTURE, join(tree, 'src'));
    b.frontEnd();
    b.thinLink();
    const refs = referenceObjects(b, variants);
    if (o.nodeArgs?.length) {
      const fd = o.daemonOutput ? openSync(o.daemonOutput, 'w') : 'ignore';
      const child = spawn(process.execPath, [...o.nodeArgs, CLI, 'daemon', 'run'], { env: cache.env, detached: true, stdio: ['ignore', fd, fd] });
      if (typeof fd === 'number') closeSync(fd);
      child.unref();
      await waitFor('daemon pid file', () => cache.daemonPid() !== null, 30_000);
    }
    cache.start();
    const pid = cache.daemonPid();
    if (!pid) throw new Error('daemon did not write its pid file');
    const ctx = jobContext(b, cache, refs);
    const plans = Array.from({ length: o.clients }, (_, c) => planClient(c, o.clients, o.jobs, b.modules, variants, o.nativeEvery, o.seed ?? 1));
    for (let c = 0; c < o.clients; c++) mkdirSync(join(b.dir, 'load-out', `c${String(c).padStart(2, '0')}`), { recursive: true });
    const total = o.clients * o.jobs;
    const results: JobResult[] = [];
    const before = procSample(pid);
    const driverBefore = procSample(process.pid);
    const fdsBefore = before?.fds ?? -1;
    const sampler = new RssSampler([pid]);
    let done = 0;
    const since = Date.now();
    const t0 = performance.now();
    try {
      await Promise.all(plans.map((specs) => runQueue(specs, ctx, 1, results, () => o.progress?.(++done, total))));
    } finally {
      sampler.stop();
    }
    const wallMs = performance.now() - t0;
    const after = procSample(pid);
    const driverAfter = procSample(process.pid);
    const stats = cache.stats();
    const classified = o.jobLog ? await annotateFromJobLog(cache.dir, b.dir, results, since) : 0;
    let leftovers = 0;
    for (let c = 0; c < o.clients; c++) leftovers += readdirSync(join(b.dir, 'load-out', `c${String(c).padStart(2, '0')}`)).filter((f) => f.includes('.ltocache-')).length;
    return {
      clients: o.clients,
      jobsPerClient: o.jobs,
      jobsSent: results.length,
      nativeJobs: results.filter((r) => r.spec.native).length,
      distinctKeys: new Set(results.map((r) => refKey(r.spec.module, r.spec.variant))).size,
      wallMs,
      ...failureSummary(results),
      results,
      stats,
      daemonPid: pid,
      peakRssKb: sampler.maxKb,
      hwmKb: after?.hwmKb ?? 0,
      rssSamples: sampler.samples,
      fdsBefore,
      fdsAfter: after?.fds ?? -1,
      daemonCpuMs: (after?.cpuMs ?? 0) - (before?.cpuMs ?? 0),
      compilerCpuMs: (after?.childCpuMs ?? 0) - (before?.childCpuMs ?? 0),
      rssTimeline: sampler.timeline,
      driverCpuMs: (driverAfter ? driverAfter.cpuMs + driverAfter.childCpuMs : 0) - (driverBefore ? driverBefore.cpuMs + driverBefore.childCpuMs : 0),
      leftovers,
      classified,
      cache,
      checkout: b.dir,
    };
  } finally {
    if (!o.keep) {
      await destroyCache(cache);
      rmSync(tree, { recursive: true, force: true });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Team load: D daemons, one server

export interface TeamLoadOptions {
  daemons: number;
  /** Concurrent jobs per daemon (make -jN). */
  parallel: number;
  nativeEvery: number;
  variants?: Variant[];
  /** Daemon remote timeout (LTOCACHE_REMOTE_TIMEOUT_MS); the default config value when unset. */
  remoteTimeoutMs?: number;
  jobLog?: boolean;
}

export interface TeamRound {
  name: string;
  jobs: number;
  wallMs: number;
  results: JobResult[];
  failures: string[];
  failureCount: number;
  wrongObjects: number;
  /** Per-daemon stats deltas over the round. */
  deltas: { hits: number; misses: number; remote_hits: number; remote_misses: number; remote_errors: number; remote_skipped: number; errors: number; uploads: number }[];
  classified: number;
}

export interface TeamLoadReport {
  daemons: number;
  modules: number;
  variants: number;
  rounds: TeamRound[];
  /** `stats --remote --json` after all rounds. */
  server: Record<string, number>;
  serverAfterRound1: Record<string, number>;
  uploadsAfterRound1: number;
  peakDaemonRssKb: number;
  peakServerRssKb: number;
}

const DELTA_KEYS = ['hits', 'misses', 'remote_hits', 'remote_misses', 'remote_errors', 'remote_skipped', 'errors', 'uploads'] as const;

async function waitFor(what: string, fn: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

export async function runTeamLoad(o: TeamLoadOptions): Promise<TeamLoadReport> {
  const variants = o.variants ?? TEAM_VARIANTS;
  const server = new ServerProcess();
  const caches: CacheEnv[] = [];
  const trees: string[] = [];
  try {
    const url = await server.start();
    const extra: Record<string, string> = { LTOCACHE_REMOTE: url, LTOCACHE_REMOTE_TOKEN: TOKENS.write, LTOCACHE_REMOTE_RETRY_MS: '300', LTOCACHE_IDLE_TIMEOUT: '600' };
    if (o.remoteTimeoutMs) extra.LTOCACHE_REMOTE_TIMEOUT_MS = String(o.remoteTimeoutMs);
    const builds: ThinBuild[] = [];
    for (let d = 0; d < o.daemons; d++) {
      const cache = new CacheEnv(`team${d}`, extra);
      caches.push(cache);
      cache.start();
      trees.push(tempDir(`load-checkout${d}`));
      const b = ThinBuild.fromFixture(FIXTURE, join(trees[d]!, `dev${d}`, 'linux'));
      b.frontEnd();
      b.thinLink();
      builds.push(b);
    }
    const refs = referenceObjects(builds[0]!, variants);
    const ctxs = builds.map((b, d) => jobContext(b, caches[d]!, refs));
    const pids = caches.map((c) => c.daemonPid()!);
    const sampler = new RssSampler(pids);
    const serverSampler = new RssSampler([server.child!.pid!]);
    const combos = builds[0]!.modules.flatMap((module) => variants.map((variant) => ({ module, variant })));
    const plan = (d: number, round: number): JobSpec[] => {
      const shift = Math.floor((d * combos.length) / o.daemons);
      return combos.map((_, i) => {
        const c = combos[(i + shift) % combos.length]!;
        const seq = round * 1000 + i;
        return {
          client: d,
          seq,
          module: c.module,
          variant: c.variant,
          out: `${c.module}.${c.variant.name}.thinlto-native.o`,
          native: o.nativeEvery > 0 && (i + d) % o.nativeEvery === 0,
          firstUse: round === 0,
        };
      });
    };
    const rounds: TeamRound[] = [];
    const runRound = async (name: string, round: number): Promise<TeamRound> => {
      const before = caches.map((c) => c.stats());
      const since = Date.now();
      const perDaemon: JobResult[][] = caches.map(() => []);
      const t0 = performance.now();
      await Promise.all(caches.map((_, d) => runQueue(plan(d, round), ctxs[d]!, o.parallel, perDaemon[d]!)));
      const wallMs = performance.now() - t0;
      const afterStats = caches.map((c) => c.stats());
      let classified = 0;
      if (o.jobLog) for (let d = 0; d < caches.length; d++) classified += await annotateFromJobLog(caches[d]!.dir, builds[d]!.dir, perDaemon[d]!, since);
      const results = perDaemon.flat();
      const deltas = afterStats.map((a, d) => Object.fromEntries(DELTA_KEYS.map((k) => [k, a[k] - before[d]![k]])) as TeamRound['deltas'][number]);
      const r: TeamRound = {
        name,
        jobs: results.length,
        wallMs,
        results,
        ...failureSummary(results),
        deltas,
        classified,
      };
      rounds.push(r);
      return r;
    };
    const remoteStats = (): Record<string, number> => {
      const r = caches[0]!.cli(['stats', '--remote', '--json']);
      if (r.status !== 0) throw new Error(`stats --remote failed: ${r.stderr}`);
      return JSON.parse(r.stdout) as Record<string, number>;
    };

    // Round 1: every daemon cold, all at once: misses, racing uploads, remote hits.
    const r1 = await runRound('round 1: cold, concurrent (misses, racing uploads, remote hits)', 0);
    const stored = r1.deltas.reduce((n, d) => n + d.misses, 0);
    let uploadsAfterRound1 = 0;
    await waitFor(
      'round-1 uploads',
      () => {
        const s = caches.map((c) => c.stats());
        uploadsAfterRound1 = s.reduce((n, x) => n + x.uploads, 0);
        // Every stored miss is one upload attempt: it ends stored, refused, dropped or failed.
        const settled = s.reduce((n, x) => n + x.uploads + x.uploads_refused + x.uploads_dropped + x.remote_errors, 0);
        return settled >= stored;
      },
      60_000,
    );
    const serverAfterRound1 = remoteStats();

    // Round 2: a new thin link (index files rewritten, same content): all local hits.
    for (const b of builds) b.thinLink();
    await runRound('round 2: after thin link (local hits)', 1);

    // Round 3: every local store cleared: all remote hits.
    for (const c of caches) {
      const r = c.cli(['clear']);
      if (r.status !== 0) throw new Error(`clear failed: ${r.stderr}`);
    }
    for (const b of builds) b.thinLink();
    await runRound('round 3: local stores cleared (remote hits)', 2);

    sampler.stop();
    serverSampler.stop();
    return {
      daemons: o.daemons,
      modules: builds[0]!.modules.length,
      variants: variants.length,
      rounds,
      server: remoteStats(),
      serverAfterRound1,
      uploadsAfterRound1,
      peakDaemonRssKb: sampler.maxKb,
      peakServerRssKb: serverSampler.maxKb,
    };
  } finally {
    await Promise.all(caches.map((c) => destroyCache(c)));
    await server.kill();
    for (const t of [...trees, server.dir]) rmSync(t, { recursive: true, force: true });
  }
}

/** Whether a path holds any daemon temp file (used by tests). */
export function hasTempLeftovers(dir: string): boolean {
  return existsSync(dir) && readdirSync(dir).some((f) => f.includes('.ltocache-'));
}
