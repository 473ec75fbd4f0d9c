import { mkdirSync, statfsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { socketDirName } from '../config/cacheDir.js';
import type { Config } from '../config/config.js';
import { assembleDistMemo, DistMemoCollector } from '../dtlto/assembleDistMemo.js';
import { DISTRIBUTE_USAGE, DistributeError, type JobRun, type PlannedDistribution, type PlannedJob, planDistribution, runDistribution, signalName } from '../dtlto/distribution.js';
import { answerFromLog } from '../explain/answerFromLog.js';
import { JobLog, type JobResult } from '../jobLog/jobLog.js';
import { FileDigests } from '../key/fileDigests.js';
import { initHash } from '../key/hash.js';
import { keyedPart } from '../key/manifest.js';
import { distToken } from '../memo/distMemo.js';
import { decodeMemo, memoPath } from '../memo/memoFormat.js';
import { MemoStore } from '../memo/memoStore.js';
import { DenyList, type DenyRecord } from '../pipeline/denyList.js';
import type { JobRequest } from '../pipeline/jobPipeline.js';
import { type JobOutcome, JobPipeline } from '../pipeline/jobPipeline.js';
import { runCompiler } from '../pipeline/runCompiler.js';
import { type DistributeRequest, socketPathFor } from '../protocol/clientFrames.js';
import type { ControlRequest } from '../protocol/control.js';
import type { RemoteBackend } from '../remote/remoteBackend.js';
import { UploadQueue } from '../remote/uploadQueue.js';
import { Counter, Counters, ErrorKind, STATS_KEY, STATS_SUBLEVEL, StatsRecord, type StatsView } from '../stats/counters.js';
import type { CacheBackend } from '../store/backend.js';
import type { LocalStore } from '../store/localStore.js';
import { StoreLockedError } from '../store/metaDb.js';
import { openStoreWithRecovery } from '../store/openWithRecovery.js';
import { readOnly, type TierEvent, tiered } from '../store/policies.js';
import { asOpened } from '../util/asOpened.js';
import { Logger } from '../util/log.js';
import { VERSION } from '../version.js';
import { Lifecycle } from './lifecycle.js';
import { type DistributionReply, runSession } from './session.js';

/** The digest memo saved between runs (toolchain libraries, inputs): cache-schema/file-digests.v1.json. */
const DIGESTS_FILE = 'digests.json';
/** Where in the stats sublevel the read position of the memo hit-notice log is kept. */
const MEMO_LOG_OFFSET_KEY = 'memo-log-offset';

/** A distribution memo waits this long, this many times, for blobs still being written back. */
const DIST_MEMO_BLOB_WAIT_MS = 200;
const DIST_MEMO_BLOB_RETRIES = 10;
/** Store sublevel holding the keys a verify run found wrong (see DenyList). */
const DENY_SUBLEVEL = 'deny';
/** How long a stopping daemon spends adopting the team pack (≈ 1.3 ms per entry here: a kernel's
 * 440 take 0.6 s); the entries left are dropped with the pack and stay in the team cache. */
const PACK_ADOPT_AT_STOP_MS = 15_000;

/**
 * The long-running daemon: one per user per cache directory (LevelDB's lock enforces it). A
 * composition of the lifecycle (socket, timers, pid file), one session per connection, and the
 * job pipeline over the local store or local-then-team tiers.
 */
export class Daemon {
  readonly counters = new Counters();
  readonly socketPath: string;
  /** Resolves once the daemon has fully stopped, with the exit status its process ends with. */
  readonly stopped: Promise<number>;
  private markStopped!: (status: number) => void;
  private readonly startedAt = Date.now();
  private readonly jobLog: JobLog;
  private readonly lifecycle: Lifecycle;
  private readonly remote: RemoteBackend | null = null;
  private readonly uploads: UploadQueue | null = null;
  /** The local store alone, or local then the team tier. */
  private readonly cache: CacheBackend;
  private readonly pipeline: JobPipeline;
  /** The memo directory: notices, removals, `clear`. */
  private readonly memos: MemoStore;
  /**
   * Whether memos are written. Not while `verify` audits hits: every hit must then reach the
   * daemon, so it writes none and removes those of earlier runs when it starts (the client also
   * skips its fast path when it sees `verify` on: client/verifyconf.c).
   */
  private readonly writesMemos: boolean;
  /** The last request behind each memo this daemon wrote (bounded), for the job log of memo hits. */
  private readonly memoRequests = new Map<string, { req: JobRequest; savedMs: number; input: string }>();
  private flushedVersion = -1;
  private memoDrain: Promise<void> = Promise.resolve();
  /** Content digests by stat identity, kept across restarts in DIGESTS_FILE. */
  private readonly files = new FileDigests();
  private savedHashed = -1;
  private lastDigestSave = 0;
  private stopping: Promise<void> | null = null;

  /** `Remote`: the team tier's client class, given when `config.remote` names a team cache. */
  private constructor(
    readonly config: Config,
    readonly store: LocalStore,
    readonly log: Logger,
    private readonly deny: DenyList,
    Remote: typeof RemoteBackend | null,
  ) {
    this.socketPath = socketPathFor(socketDirName(config.dir), process.getuid!());
    this.jobLog = new JobLog(store, config.build_gap_ms);
    this.stopped = new Promise((r) => (this.markStopped = r));
    if (Remote) {
      this.remote = new Remote({
        url: config.remote,
        token: config.remote_token || 'none',
        timeoutMs: config.remote_timeout_ms,
        breakerCooldownMs: config.remote_retry_ms,
        ...(config.remote_ca ? { ca: config.remote_ca } : {}),
      });
      this.uploads = new UploadQueue(
        this.remote,
        config.upload_queue,
        (r) => this.onUpload(r),
        (r) => {
          if (r.kind === 'error') this.log.warn('cannot share a team memo', { error: r.error });
        },
      );
      const team = config.remote_mode === 'read-only' ? readOnly(this.remote) : this.uploads;
      this.cache = tiered(store, team, (e) => this.onTier(e));
    } else this.cache = store;
    const verifyShare = config.verify === 'off' ? 0 : config.verify === 'all' ? 1 : Number(config.verify.slice('sample:'.length));
    this.memos = new MemoStore(config.dir, (d) => store.blobPath(d));
    this.writesMemos = verifyShare === 0;
    const memos = this.memos;
    memos.removeStalePack();
    this.files.load(join(config.dir, DIGESTS_FILE));
    this.pipeline = new JobPipeline({
      files: this.files,
      cache: this.cache,
      counters: this.counters,
      log,
      jobs: config.jobs,
      verifyShare,
      deny,
      ...(this.writesMemos
        ? {
            memo: {
              write: (lookup, memo, unlessNewerThanMs, batch) => memos.write(lookup, memo, unlessNewerThanMs, batch),
              removeKey: (key) => memos.removeKey(key),
              remove: (lookup) => memos.remove(lookup),
              writePack: (pieces, keys) => memos.writePack(pieces, keys),
              removePack: () => memos.removePack(),
              adopted: (lookup, key) => memos.adopted(lookup, key),
              remember: (lookup, req, savedMs, input) => {
                if (this.memoRequests.size >= 20_000) this.memoRequests.clear();
                this.memoRequests.set(lookup, { req, savedMs, input });
              },
            },
          }
        : {}),
      manifestOf: (key) => this.jobLog.manifestOf(key),
      prefetch: !!config.remote && config.remote_prefetch === 'on',
    });
    this.lifecycle = new Lifecycle({
      dir: config.dir,
      socketPath: this.socketPath,
      idleTimeoutS: config.idle_timeout,
      log,
      onConnection: (sock) =>
        runSession(sock, {
          counters: this.counters,
          log: this.log,
          compile: (req, ctx) => this.compile(req, ctx),
          compiled: (req, outcome, startedAt) => this.recordJob(req, outcome, startedAt),
          control: (req) => this.control(req),
          distribute: (req, signal) => this.distribute(req, signal),
        }),
      onIdle: () => void this.stop(),
      onStale: () => void this.stop(EXIT_STALE),
      codeFile: fileURLToPath(import.meta.url),
      flush: async () => {
        await this.flushCounters();
        // Bounded history, pruned once the build is quiet.
        await this.jobLog.pruneIfDue().catch((e: unknown) => this.log.warn('cannot prune the job log', { error: String(e) }));
      },
    });
  }

  private onTier(e: TierEvent): void {
    if (e.tier !== 'remote') return;
    if (e.op === 'delete') {
      const r = e.result;
      if (r.kind === 'error') {
        this.counters.add(Counter.remote_errors);
        this.log.warn('cannot report a bad entry to the team cache', { error: r.error });
      } else if (r.kind === 'refused') this.log.info('team cache did not delete a bad entry', { reason: r.reason });
      return;
    }
    if (e.op !== 'get') return;
    const r = e.result;
    // An entry fetched ahead counts once it is used (src/pipeline/teamPrefetch.ts): packed or claimed.
    if (r.kind === 'hit') {
      if (!e.deferred) this.counters.add(Counter.remote_hits);
    } else if (r.kind === 'miss') this.counters.add(Counter.remote_misses);
    else if (r.kind === 'error' && r.failure === 'skipped') this.counters.add(Counter.remote_skipped);
    else {
      this.counters.add(Counter.remote_errors);
      this.log.warn('team cache get failed', { error: r.error });
    }
  }

  private onUpload(r: { kind: 'stored' | 'refused' | 'error' | 'dropped'; reason?: string; error?: string }): void {
    if (r.kind === 'stored') this.counters.add(Counter.uploads);
    else if (r.kind === 'dropped') this.counters.add(Counter.uploads_dropped);
    else if (r.kind === 'refused') this.counters.add(Counter.uploads_refused);
    else {
      this.counters.add(Counter.remote_errors);
      this.log.warn('upload failed', { error: r.error });
    }
  }

  /** Starts a daemon, or returns 'already-running' when another holds this cache directory. */
  static async start(config: Config): Promise<Daemon | 'already-running'> {
    mkdirSync(config.dir, { recursive: true, mode: 0o700 });
    const log = new Logger(join(config.dir, 'daemon.log'), config.log_level);
    await initHash();
    // Loaded only for a team cache: its WebSocket and tar modules are a tenth of a daemon's start-up,
    // which the first job of a build waits for when the daemon had exited (idle_timeout).
    const Remote = config.remote ? (await import('../remote/remoteBackend.js')).RemoteBackend : null;
    let store: LocalStore;
    try {
      store = await openStoreWithRecovery({ dir: join(config.dir, 'store'), maxBytes: config.max_size, durable: false }, log);
    } catch (e) {
      if (e instanceof StoreLockedError) return 'already-running';
      // A daemon started by a job has no terminal: the client points the user at this log.
      log.error('cannot open the store; the daemon does not start', { error: String(e) });
      throw e;
    }
    let d: Daemon;
    try {
      const deny = await DenyList.load(store.sublevel<DenyRecord>(DENY_SUBLEVEL), (e) => log.warn('cannot read the deny list; starting empty', { error: String(e) }));
      d = new Daemon(config, store, log, deny, Remote);
      const daemon = d;
      store.onMetadataWriteError = (e) => daemon.restartWhenRoom(e);
      await d.restoreCounters();
      if (!d.writesMemos) await d.removeMemos();
      else d.sweepMemosLater();
      await d.lifecycle.start();
    } catch (e) {
      log.error('the daemon does not start', { error: String(e) });
      await store.close();
      throw e;
    }
    log.info('daemon started', { pid: process.pid, socket: d.socketPath, dir: config.dir, jobs: config.jobs });
    return d;
  }

  /**
   * Memos whose blobs are gone, left by earlier processes (each removes only the memos it wrote
   * itself when it evicts), are removed once per daemon, after MEMO_SWEEP_DELAY_MS: not on the
   * first build's path.
   */
  private sweepMemosLater(): void {
    const t = setTimeout(() => {
      const started = performance.now();
      this.memos
        .sweep((key) => this.deny.has(key))
        .then(
          (removed) => this.log.info('memo sweep', { removed, ms: Math.round(performance.now() - started) }),
          (e: unknown) => this.log.warn('memo sweep failed', { error: String(e) }),
        );
    }, MEMO_SWEEP_DELAY_MS);
    t.unref();
  }

  /** `verify` is on: the fast path must find nothing to serve from (memos of earlier runs, a team pack). */
  private async removeMemos(): Promise<void> {
    try {
      await this.memos.clear();
      this.log.info('verify is on: memos removed, none written while it is', { verify: this.config.verify });
    } catch (e) {
      this.log.warn('verify is on but the memos could not all be removed', { error: String(e) });
    }
  }

  private async restoreCounters(): Promise<void> {
    try {
      const raw = await this.store.sublevel(STATS_SUBLEVEL).get(STATS_KEY);
      if (raw !== undefined) {
        const parsed = StatsRecord.safeParse(typeof raw === 'string' ? JSON.parse(raw) : raw);
        if (parsed.success) this.counters.restore(parsed.data);
        else this.log.warn('stored counters invalid; starting from zero', { issues: parsed.error.message });
      }
      const offset = await this.store.sublevel(STATS_SUBLEVEL).get(MEMO_LOG_OFFSET_KEY);
      if (typeof offset === 'string' && /^\d{1,15}$/.test(offset)) this.memos.logOffset = Number(offset);
    } catch (e) {
      this.log.warn('cannot read stored counters', { error: String(e) });
    }
  }

  /**
   * Takes in the native client's hit notices (docs/memo.md): counts them, refreshes their LRU age
   * and records them in the job log, so stats, eviction, explain and reports see every hit. Also
   * removes the memos of entries the store has evicted.
   */
  private drainMemos(): Promise<void> {
    // One after another: a `stats` answer must include every notice an earlier drain took in.
    const run = this.memoDrain.then(() => this.drainMemosOnce());
    this.memoDrain = run.catch(() => {});
    return run;
  }

  private async drainMemosOnce(): Promise<void> {
    const memos = this.memos;
    for (const key of this.store.evictedKeys.splice(0)) await memos.removeKey(key).catch(() => {});
    const notices = await memos.drain().catch((e: unknown) => {
      this.log.warn('cannot read memo hit notices', { error: String(e) });
      return [];
    });
    if (notices.length) this.pipeline.noticed();
    for (const n of notices) {
      this.counters.add(Counter.hits);
      this.counters.add(Counter.memo_hits);
      if (n.pack) this.counters.add(Counter.team_pack_hits);
      void this.cache.touch(n.key).catch(() => {});
      const known = this.memoRequests.get(n.lookup);
      let req = known?.req;
      let output: string | undefined;
      if (known) this.counters.add(Counter.time_saved_ms, known.savedMs);
      if (!req) {
        const memo = (n.pack && this.pipeline.packedMemo(n.lookup)) || (await readFile(memoPath(this.config.dir, n.lookup)).then(decodeMemo, () => null));
        if (!memo || memo.key !== n.key) continue;
        output = memo.outputs[0]!.path;
        req = { compiler: '', args: [], cwd: dirname(output), env: {}, umask: 0o022 };
      }
      await this.jobLog
        .record({
          req,
          startedAt: n.startMs,
          endedAt: n.endMs,
          result: 'hit',
          key: n.key,
          ...(known ? { savedMs: known.savedMs, input: known.input } : {}),
          ...(output ? { output } : {}),
        })
        .catch((e) => this.log.warn('cannot record job', { error: String(e) }));
    }
  }

  /** Saves the digest memo when it grew, at most once a minute unless `force`. */
  private saveDigests(force: boolean): void {
    if (this.files.hashed === this.savedHashed) return;
    if (!force && Date.now() - this.lastDigestSave < 60_000) return;
    try {
      this.files.save(join(this.config.dir, DIGESTS_FILE));
      this.savedHashed = this.files.hashed;
      this.lastDigestSave = Date.now();
    } catch (e) {
      this.log.warn('cannot save the digest memo', { error: String(e) });
    }
  }

  async flushCounters(): Promise<void> {
    await this.drainMemos();
    this.saveDigests(false);
    const c = this.store.counters;
    if (c) {
      // The store counts evictions and corrupt blobs itself; move them into ours.
      if (c.evictions) this.counters.add(Counter.evictions, c.evictions);
      if (c.corruptBlobs) this.counters.add(Counter.corrupt_blobs, c.corruptBlobs);
      c.evictions = 0;
      c.corruptBlobs = 0;
    }
    if (this.counters.version === this.flushedVersion) return;
    const v = this.counters.version;
    try {
      const stats = this.store.sublevel(STATS_SUBLEVEL);
      await stats.put(STATS_KEY, JSON.stringify(this.counters.snapshot()));
      // Counted notices and how far their log was read move together (a crash in between may
      // count a few once more or lose them: counters, never objects).
      await stats.put(MEMO_LOG_OFFSET_KEY, String(this.memos.logOffset));
      this.flushedVersion = v;
    } catch (e) {
      this.log.warn('cannot persist counters', { error: String(e) });
    }
  }

  /** Values of LTOCACHE_VERIFY already warned about (once each per daemon). */
  private readonly verifyWarned = new Set<string>();

  /**
   * A job whose environment sets LTOCACHE_VERIFY other than this daemon's `verify`: its client
   * takes the daemon path, but `verify` is read when the daemon starts, so the build that asked
   * for an audit would get none and no word why.
   */
  private noteJobVerify(env: Record<string, string>): void {
    const v = env.LTOCACHE_VERIFY;
    if (!v || v === this.config.verify || this.verifyWarned.has(v)) return;
    this.verifyWarned.add(v);
    this.log.warn(
      'a job sets LTOCACHE_VERIFY, but this daemon runs with the verify it was started with: stop it (ltocache daemon stop) and the next job starts one with the job setting',
      {
        job_verify: v,
        verify: this.config.verify,
      },
    );
  }

  private async compile(req: JobRequest, ctx: Parameters<JobPipeline['runJob']>[1]): Promise<JobOutcome> {
    this.noteJobVerify(req.env);
    this.lifecycle.jobStarted();
    try {
      return await this.pipeline.runJob(req, ctx);
    } finally {
      this.lifecycle.jobEnded();
    }
  }

  /**
   * A whole DTLTO distribution in this process: the checks of `ltocache distribute`, then every
   * job through the pipeline (a hit is materialized, a miss compiled here under the `jobs` limit)
   * and recorded like a compile. A job the pipeline cannot serve or key runs the compiler here.
   */
  private async distribute(req: DistributeRequest, signal: AbortSignal): Promise<DistributionReply> {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const refuse = (message: string): DistributionReply => ({ exit: 1, stdout: Buffer.alloc(0), stderr: Buffer.from(`ltocache: distribute: ${message}\n`) });
    if (req.args.length !== 1 || req.args[0]!.startsWith('-')) return refuse(DISTRIBUTE_USAGE);
    this.noteJobVerify(req.env);
    const started = performance.now();
    let plan: PlannedDistribution;
    try {
      plan = await planDistribution(req.args[0]!, req.cwd, req.env);
    } catch (e) {
      if (e instanceof DistributeError) return refuse(e.message);
      throw e;
    }
    const planned = performance.now();
    const memos = new DistMemoCollector(plan.jobs.length);
    const linkToken = distToken(req.args[0]!);
    const runOne = async (job: PlannedJob): Promise<JobRun> => {
      if (signal.aborted) return { code: 1, signal: null, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
      const jr: JobRequest = {
        compiler: asOpened(req.cwd, job.argv[0]!),
        args: job.argv.slice(1),
        cwd: req.cwd,
        env: req.env,
        umask: req.umask,
        ...(linkToken ? { linkToken } : {}),
      };
      const startedAt = Date.now();
      const o = await this.compile(jr, { signal, collectMemo: (memo, lookup) => memos.add(job, memo, lookup) });
      if ((o.kind === 'hit' || o.kind === 'miss') && o.manifest) memos.keyed(job, keyedPart(o.manifest));
      this.recordJob(jr, o, startedAt);
      if (o.kind === 'hit') return { code: 0, signal: null, stdout: o.stdout, stderr: o.stderr };
      if (o.kind === 'miss') return { code: o.exitCode, signal: signalName(o.signal), stdout: o.stdout, stderr: o.stderr };
      // Within the pipeline's own bound: misses and these together run `jobs` compilers at most.
      const release = await this.pipeline.compileSlot();
      this.lifecycle.jobStarted();
      try {
        const r = await runCompiler({ ...jr, signal });
        return { code: r.exitCode, signal: signalName(r.signal), stdout: r.stdout, stderr: r.stderr };
      } catch (e) {
        return { code: 127, signal: null, stdout: Buffer.alloc(0), stderr: Buffer.from(`ltocache: cannot execute '${jr.compiler}': ${(e as Error).message}\n`) };
      } finally {
        this.lifecycle.jobEnded();
        release();
      }
    };
    // Hits cost I/O, not CPU, and the pipeline bounds compiles by `jobs` itself.
    const exit = await runDistribution(plan.jobs, {
      cwd: req.cwd,
      parallel: this.config.jobs * 4,
      run: runOne,
      write: (stream, b) => (stream === 'stdout' ? out : err).push(b),
    });
    this.log.info('distribution', { cwd: req.cwd, jobs: plan.jobs.length, exit, plan_ms: Math.round(planned - started), ms: Math.round(performance.now() - started) });
    if (exit === 0 && this.writesMemos) void this.memoizeDistribution(req, plan, memos);
    return { exit, stdout: Buffer.concat(out), stderr: Buffer.concat(err) };
  }

  /**
   * Writes the distribution memo of a link whose every job succeeded (docs/dtlto.md), once every
   * job's memo is in (a miss's after its blobs are stored), or as soon as the pipeline is idle.
   */
  private async memoizeDistribution(req: DistributeRequest, plan: PlannedDistribution, memos: DistMemoCollector): Promise<void> {
    const store = this.memos;
    await Promise.race([memos.complete, this.pipeline.idle()]);
    const r = assembleDistMemo({ cwd: req.cwd, fileArg: req.args[0]!, bytes: plan.bytes, compilerName: plan.compilerName, commonInputs: plan.commonInputs, jobs: memos.jobs() });
    if (r.kind === 'skip') {
      this.log.info('no distribution memo', { cwd: req.cwd, reason: r.reason });
      return;
    }
    try {
      // Team-cache hits are written back to the local store after they are served: give them a
      // moment, so that a teammate's second link is the client's already.
      let w = await store.writeDist(r.lookup, r.memo);
      for (let i = 0; i < DIST_MEMO_BLOB_RETRIES && w === 'no-blob'; i++) {
        await new Promise((res) => setTimeout(res, DIST_MEMO_BLOB_WAIT_MS).unref());
        w = await store.writeDist(r.lookup, r.memo);
      }
      if (w === 'written') this.counters.add(Counter.dist_memos_written);
      else if (w === 'no-blob') this.log.info('no distribution memo', { cwd: req.cwd, reason: 'a blob is not stored' });
    } catch (e) {
      this.counters.error(ErrorKind.memo_write);
      this.log.warn('cannot write distribution memo', { error: String(e) });
    }
  }

  private recordJob(req: JobRequest, o: JobOutcome, startedAt: number): void {
    if ((o.kind === 'uncacheable' || o.kind === 'error') && !o.record) return;
    const result: JobResult = o.kind === 'hit' ? (o.tier === 'remote' ? 'remote-hit' : 'hit') : o.kind;
    const reason = o.kind === 'uncacheable' ? `${o.reason}: ${o.detail}` : o.kind === 'error' ? o.error : undefined;
    void this.jobLog
      .record({
        req,
        startedAt,
        endedAt: Date.now(),
        result,
        key: o.kind === 'uncacheable' ? undefined : o.key,
        manifest: o.kind === 'uncacheable' ? undefined : o.manifest,
        reason,
        savedMs: o.kind === 'hit' ? o.savedMs : undefined,
        bytes: o.kind === 'hit' || o.kind === 'miss' ? o.bytes : undefined,
        output: o.kind === 'uncacheable' ? undefined : o.output,
      })
      .catch((e) => this.log.warn('cannot record job', { error: String(e) }));
  }

  private async control(req: ControlRequest): Promise<unknown> {
    switch (req.op) {
      case 'status':
        return {
          pid: process.pid,
          version: VERSION,
          dir: this.config.dir,
          socket: this.socketPath,
          uptime_ms: Date.now() - this.startedAt,
          active_jobs: this.lifecycle.activeJobs,
          remote: this.remote ? { url: this.config.remote, mode: this.config.remote_mode, circuit_open: this.remote.breaker.open, upload_queue: this.uploads?.length ?? 0 } : null,
        };
      case 'stats':
        await this.flushCounters();
        return await this.statsView();
      case 'zero':
        this.counters.zero();
        await this.flushCounters();
        return { zeroed: true };
      case 'clear':
        this.pipeline.clearMemory();
        await this.memos.clear();
        await this.store.clear();
        return { cleared: true };
      case 'stop':
        setImmediate(() => void this.stop());
        return { stopping: true, pid: process.pid };
      default:
        // Fast-path hits reach the job log through their notices: take them in first.
        await this.drainMemos();
        return answerFromLog(this.jobLog, req);
    }
  }

  /**
   * The store takes no writes after a failed one (a full disk) until it is reopened: the daemon
   * goes on serving hits, and once its file system has room again it stops (EXIT_STALE), so the
   * next job starts a daemon that recovers what was acknowledged and stores again.
   */
  restartWhenRoom(e: Error): void {
    this.log.error('a write to the store metadata failed; no more stores until the disk has room and the daemon restarts', { error: String(e) });
    const dir = join(this.config.dir, 'store');
    const timer = setInterval(() => {
      try {
        const s = statfsSync(dir);
        if (s.bavail * s.bsize < Math.min(ROOM_TO_RESTART, (s.blocks * s.bsize) / 10)) return;
      } catch {
        return;
      }
      clearInterval(timer);
      this.log.info('the disk has room again; restarting to reopen the store');
      void this.stop(EXIT_STALE);
    }, ROOM_CHECK_MS);
    timer.unref();
    void this.stopped.then(() => clearInterval(timer));
  }

  async statsView(): Promise<StatsView> {
    const s = this.store.summary();
    return this.counters.view({ entries: s.entries, store_bytes: s.bytes, max_bytes: this.config.max_size, daemon_running: true });
  }

  /**
   * Stops accepting work, lets running jobs finish (bounded), flushes counters, closes the store.
   * `status`: the exit status `stopped` resolves with (EXIT_STALE when stopping for that).
   */
  stop(status = 0): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info('daemon stopping');
      await this.lifecycle.close();
      // Verify runs and stores in progress, then queued uploads: each waited for, within bounds.
      await within(this.pipeline.idle(), 5000);
      // The team pack's entries go into the store before it closes (bounded; the rest are dropped).
      await this.pipeline.adoptPackNow(PACK_ADOPT_AT_STOP_MS);
      if (this.uploads) await within(this.uploads.idle(), 5000);
      this.remote?.close();
      await this.flushCounters();
      this.saveDigests(true);
      await this.jobLog.flush().catch(() => {});
      await this.store.close().catch(() => {});
      this.lifecycle.removePidFile();
      this.log.info('daemon stopped');
      this.markStopped(status);
    })();
    return this.stopping;
  }
}

const MEMO_SWEEP_DELAY_MS = 60_000;

/** Free space at which a daemon whose store refused writes restarts (or a tenth of its file system). */
const ROOM_TO_RESTART = 64 << 20;
const ROOM_CHECK_MS = 2000;

/**
 * The exit status of a daemon that stopped because its cache directory or its own files were
 * removed or replaced, or a write to its store metadata failed (EX_TEMPFAIL): a service manager restarts it (`Restart=on-failure` in
 * docs/systemd/ltocache.service), where an idle or requested stop (0) stays stopped.
 */
export const EXIT_STALE = 75;

/**
 * The exit status of `daemon run` when a daemon already serves its cache directory (one a job
 * started, say): not a failure to restart (`RestartPreventExitStatus=` in
 * docs/systemd/ltocache.service), and not the usage or configuration error's 2.
 */
export const EXIT_DAEMON_ALREADY_RUNNING = 4;

/** Waits for `p`, or `ms` at most. */
async function within(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}
