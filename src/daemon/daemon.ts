import { existsSync, lstatSync, mkdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { readFile, unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { basename, dirname, join, resolve } from 'node:path';
import type { Config } from '../config/config.js';
import { FileDigests } from '../key/fileDigests.js';
import { hashBytes, initHash } from '../key/hash.js';
import { buildManifest, type Manifest } from '../key/manifest.js';
import { type Job, parseJob } from '../key/parseJob.js';
import { ToolchainIdentifier } from '../key/toolchain.js';
import {
  type CompileRequest,
  FrameDecoder,
  ProtocolError,
  decodeCompileRequest,
  decodeDone,
  encodeAck,
  encodeCompileYourself,
  decodeJson,
  encodeJson,
  encodePassthrough,
  encodeResult,
  encodeWait,
  socketDirFor,
  socketPathFor,
} from '../protocol/clientFrames.js';
import { ControlRequest, type ControlResponse } from '../protocol/control.js';
import { FRAME_COMPILE, KEEPALIVE_INTERVAL_MS, MAX_DONE_PAYLOAD, MAX_REQUEST_PAYLOAD } from '../protocol/limits.js';
import type { StoredEntry } from '../store/backend.js';
import { LocalStore, StoreLockedError } from '../store/localStore.js';
import { LayoutError } from '../store/layout.js';
import type { CacheBackend } from '../store/backend.js';
import { readOnly, tiered, type TierEvent, type TieredLookup } from '../store/policies.js';
import { RemoteBackend } from '../remote/remoteBackend.js';
import { UploadQueue } from '../remote/uploadQueue.js';
import { Counters, StatsRecord, type StatsView } from '../stats/counters.js';
import { Logger } from '../util/log.js';
import { materialize } from './materialize.js';
import { type CompilerRun, runCompiler } from './runCompiler.js';
import { Semaphore } from './semaphore.js';
import { ensurePrivateDir } from './socketPath.js';
import { HotEntries } from './hotEntries.js';
import { JobLog, type JobResult, answerFromLog } from './jobLog.js';

export const VERSION = '0.1.0';
const STATS_KEY = 'counters';
/** Memory budget for entries kept hot (HotEntries). */
const HOT_BYTES = 256 << 20;
const BACKEND_FAILURE = /Error running ThinLTO backend|Error loading imported file/;

/** What a finished compile leaves for the jobs waiting on the same key. */
interface Compiled {
  exitCode: number;
  signal: number;
  stdout: Buffer;
  stderr: Buffer;
  ms: number;
  entry: StoredEntry | null;
}

/**
 * The long-running daemon: one per user per cache directory (LevelDB's lock enforces it), a Unix
 * socket in a private directory, hits served from the store, misses compiled under a concurrency
 * limit with identical concurrent jobs compiled once.
 */
export class Daemon {
  readonly counters = new Counters();
  private readonly files = new FileDigests();
  private readonly toolchains = new ToolchainIdentifier(this.files);
  private readonly compiles: Semaphore;
  private readonly inflight = new Map<string, Promise<Compiled>>();
  /** Recently used entries, including results compiled but not yet in the store. */
  private readonly hot = new HotEntries(HOT_BYTES);
  private readonly sockets = new Set<Socket>();
  private server: Server | null = null;
  private activeJobs = 0;
  private idleTimer: NodeJS.Timeout | null = null;
  private flushTimer: NodeJS.Timeout | null = null;
  private flushedVersion = -1;
  private socketWatch: NodeJS.Timeout | null = null;
  private socketIno = -1;
  private rebinding = false;
  /** Share of hits audited by a background compile (config `verify`). */
  private readonly verifyShare: number;
  private stopping: Promise<void> | null = null;
  readonly socketPath: string;
  private readonly startedAt = Date.now();
  private readonly jobLog: JobLog;
  /** The local store alone, or local then the team tier. */
  private readonly cache: CacheBackend;
  private readonly remote: RemoteBackend | null = null;
  private readonly uploads: UploadQueue | null = null;
  /** Resolves once the daemon has fully stopped. */
  readonly stopped: Promise<void>;
  private markStopped!: () => void;

  private constructor(
    readonly config: Config,
    readonly store: LocalStore,
    readonly log: Logger,
  ) {
    this.compiles = new Semaphore(config.jobs);
    this.verifyShare = config.verify === 'off' ? 0 : config.verify === 'all' ? 1 : Number(config.verify.slice('sample:'.length));
    this.socketPath = socketPathFor(config.dir, process.getuid!());
    this.jobLog = new JobLog(store, config.build_gap_ms);
    this.stopped = new Promise((r) => (this.markStopped = r));
    if (config.remote) {
      this.remote = new RemoteBackend({
        url: config.remote,
        token: config.remote_token || 'none',
        timeoutMs: config.remote_timeout_ms,
        breakerCooldownMs: config.remote_retry_ms,
        ...(config.remote_ca ? { ca: config.remote_ca } : {}),
      });
      this.uploads = new UploadQueue(this.remote, config.upload_queue, (r) => this.onUpload(r));
      const team = config.remote_mode === 'read-only' ? readOnly(this.remote) : this.uploads;
      this.cache = tiered(store, team, (e) => this.onTier(e));
    } else this.cache = store;
  }

  private onTier(e: TierEvent): void {
    if (e.tier !== 'remote' || e.op !== 'get') return;
    const r = e.result;
    if (r.kind === 'hit') this.counters.add('remote_hits');
    else if (r.kind === 'miss') this.counters.add('remote_misses');
    else if (this.remote?.breaker.open && r.error.startsWith('team cache skipped')) this.counters.add('remote_skipped');
    else {
      this.counters.add('remote_errors');
      this.log.warn('team cache get failed', { error: r.error });
    }
  }

  private onUpload(r: { kind: 'stored' | 'refused' | 'error' | 'dropped'; reason?: string; error?: string }): void {
    if (r.kind === 'stored') this.counters.add('uploads');
    else if (r.kind === 'dropped') this.counters.add('uploads_dropped');
    else if (r.kind === 'refused') this.counters.add('uploads_refused');
    else {
      this.counters.add('remote_errors');
      this.log.warn('upload failed', { error: r.error });
    }
  }

  /** Starts a daemon, or returns 'already-running' when another holds this cache directory. */
  static async start(config: Config): Promise<Daemon | 'already-running'> {
    mkdirSync(config.dir, { recursive: true, mode: 0o700 });
    const log = new Logger(join(config.dir, 'daemon.log'), config.log_level);
    await initHash();
    let store: LocalStore;
    try {
      store = await openStoreWithRecovery(config, log);
    } catch (e) {
      if (e instanceof StoreLockedError) return 'already-running';
      throw e;
    }
    const d = new Daemon(config, store, log);
    try {
      await d.listen();
    } catch (e) {
      await store.close();
      throw e;
    }
    return d;
  }

  private async listen(): Promise<void> {
    await this.restoreCounters();
    await ensurePrivateDir(socketDirFor(process.getuid!()), process.getuid!());
    await this.bindSocket();
    writeFileSync(join(this.config.dir, 'daemon.pid'), `${process.pid}\n`);
    this.flushTimer = setInterval(() => void this.flushCounters(), 500);
    this.flushTimer.unref();
    this.socketWatch = setInterval(() => void this.checkSocket(), 1000);
    this.socketWatch.unref();
    this.armIdle();
    this.log.info('daemon started', { pid: process.pid, socket: this.socketPath, dir: this.config.dir, jobs: this.config.jobs });
  }

  /** Listens on the socket path; we hold the store lock, so a file already there is a dead daemon's. */
  private async bindSocket(): Promise<void> {
    await unlink(this.socketPath).catch(() => {});
    const server = createServer((s) => this.onConnection(s));
    await new Promise<void>((res, rej) => {
      server.once('error', rej);
      server.listen(this.socketPath, () => res());
    });
    this.server = server;
    this.socketIno = lstatSync(this.socketPath).ino;
  }

  /**
   * A removed (or replaced) socket file would make every client start a daemon that cannot take
   * the lock and then fall back after its start timeout: put the socket back.
   */
  private async checkSocket(): Promise<void> {
    if (this.stopping || this.rebinding) return;
    let ino = -1;
    try {
      ino = lstatSync(this.socketPath).ino;
    } catch {
      // gone
    }
    if (ino === this.socketIno) return;
    this.rebinding = true;
    this.log.warn('socket file removed or replaced; listening again', { socket: this.socketPath });
    const old = this.server;
    try {
      // Close first: closing a listening Unix socket unlinks its path, which must not be the new one.
      old?.close();
      await ensurePrivateDir(socketDirFor(process.getuid!()), process.getuid!());
      await this.bindSocket();
    } catch (e) {
      this.log.error('cannot listen again on the socket', { error: String(e) });
    } finally {
      this.rebinding = false;
    }
  }

  private armIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    if (this.config.idle_timeout > 0 && this.activeJobs === 0) {
      this.idleTimer = setTimeout(() => {
        this.log.info('idle timeout, stopping', { idle_timeout: this.config.idle_timeout });
        void this.stop();
      }, this.config.idle_timeout * 1000);
    }
  }

  private async restoreCounters(): Promise<void> {
    const db = this.store.sublevel('stats');
    try {
      const raw = await db.get(STATS_KEY);
      if (raw !== undefined) {
        const parsed = StatsRecord.safeParse(typeof raw === 'string' ? JSON.parse(raw) : raw);
        if (parsed.success) this.counters.restore(parsed.data);
        else this.log.warn('stored counters invalid; starting from zero', { issues: parsed.error.message });
      }
    } catch (e) {
      this.log.warn('cannot read stored counters', { error: String(e) });
    }
  }

  async flushCounters(): Promise<void> {
    const c = this.store.counters;
    if (c) {
      // The store counts evictions and corrupt blobs itself; move them into ours.
      if (c.evictions) this.counters.add('evictions', c.evictions);
      if (c.corruptBlobs) this.counters.add('corrupt_blobs', c.corruptBlobs);
      c.evictions = 0;
      c.corruptBlobs = 0;
    }
    if (this.counters.version === this.flushedVersion) return;
    const v = this.counters.version;
    try {
      await this.store.sublevel('stats').put(STATS_KEY, JSON.stringify(this.counters.snapshot()));
      this.flushedVersion = v;
    } catch (e) {
      this.log.warn('cannot persist counters', { error: String(e) });
    }
  }

  private onConnection(sock: Socket): void {
    this.sockets.add(sock);
    const abort = new AbortController();
    // The first frame is the request; anything after it is ignored, except the one 'D' frame that
    // answers our 'M', read with a fresh decoder from the moment the 'M' is sent.
    let decoder: FrameDecoder | null = new FrameDecoder(MAX_REQUEST_PAYLOAD);
    let handled = false;
    let waiter: { res: (b: Buffer) => void; rej: (e: Error) => void } | null = null;
    const conn: Conn = {
      sock,
      signal: abort.signal,
      nextFrame: () =>
        new Promise<Buffer>((res, rej) => {
          if (abort.signal.aborted) return rej(new Error('client went away'));
          decoder = new FrameDecoder(MAX_DONE_PAYLOAD);
          waiter = { res, rej };
        }),
    };
    // While a compile request is in progress, 'W' every KEEPALIVE_INTERVAL_MS tells the client
    // we are alive; not while the client compiles (we await its 'D') nor after our answer.
    let keepalive: NodeJS.Timeout | undefined;
    sock.on('close', () => {
      clearInterval(keepalive);
      this.sockets.delete(sock);
      abort.abort();
      const w = waiter;
      waiter = null;
      w?.rej(new Error('client went away'));
    });
    sock.on('error', () => {});
    sock.on('data', (chunk: Buffer) => {
      if (!decoder || (handled && !waiter)) return;
      let frames: Buffer[];
      try {
        frames = decoder.push(chunk);
      } catch (e) {
        this.counters.error('protocol');
        this.log.warn('bad frame from client', { error: (e as Error).message });
        sock.destroy();
        return;
      }
      const frame = frames[0];
      if (!frame) return;
      if (!handled) {
        handled = true;
        decoder = null;
        if (frame[0] === FRAME_COMPILE) {
          keepalive = setInterval(() => {
            if (!waiter && !sock.writableEnded && !sock.destroyed) sock.write(encodeWait());
          }, KEEPALIVE_INTERVAL_MS);
        }
        void this.dispatch(frame, conn);
      } else if (waiter) {
        const w = waiter;
        waiter = null;
        decoder = null;
        w.res(frame);
      }
    });
  }

  private async dispatch(frame: Buffer, conn: Conn): Promise<void> {
    const { sock } = conn;
    const type = frame[0];
    try {
      if (type === 0x43) {
        let req: CompileRequest;
        try {
          req = decodeCompileRequest(frame);
        } catch (e) {
          this.counters.error('protocol');
          this.log.warn('malformed compile request', { error: (e as Error).message });
          sock.end(encodePassthrough(`malformed request: ${(e as Error).message}`));
          return;
        }
        await this.compileJob(req, conn);
      } else if (type === 0x4a) {
        let json: unknown;
        try {
          json = decodeJson(frame);
        } catch (e) {
          // Not UTF-8 or not JSON: the peer's protocol error, not ours (was counted 'internal').
          this.counters.error('protocol');
          sock.end(encodeJson({ ok: false, error: `bad control request: ${(e as Error).message}` } satisfies ControlResponse));
          return;
        }
        const parsed = ControlRequest.safeParse(json);
        const reply: ControlResponse = parsed.success
          ? await this.control(parsed.data).then(
              (result) => ({ ok: true as const, result }),
              (e: Error) => ({ ok: false as const, error: e.message }),
            )
          : { ok: false, error: `bad control request: ${parsed.error.issues.map((i) => i.message).join('; ')}` };
        sock.end(encodeJson(reply));
      } else {
        this.counters.error('protocol');
        sock.destroy();
      }
    } catch (e) {
      this.counters.error('internal');
      this.log.error('request failed', { error: (e as Error).stack ?? String(e) });
      if (!sock.destroyed) sock.end(encodePassthrough('internal error'));
    }
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
          active_jobs: this.activeJobs,
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
        this.hot.clear();
        await this.store.clear();
        return { cleared: true };
      case 'stop':
        setImmediate(() => void this.stop());
        return { stopping: true, pid: process.pid };
      default:
        return answerFromLog(this.jobLog, req);
    }
  }

  async statsView(): Promise<StatsView> {
    const s = await this.store.summary();
    return this.counters.view({ entries: s.entries, store_bytes: s.bytes, max_bytes: this.config.max_size, daemon_running: true });
  }

  private async compileJob(req: CompileRequest, conn: Conn): Promise<void> {
    const { sock, signal } = conn;
    this.activeJobs++;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    const startedAt = Date.now();
    try {
      const outcome = await this.serve(req, conn);
      if (signal.aborted) return;
      if (outcome.kind === 'passthrough') {
        sock.end(encodePassthrough(outcome.reason));
      } else if (outcome.reported) {
        sock.end(encodeAck());
      } else {
        sock.end(encodeResult({ exit: outcome.exitCode, signal: outcome.signal ?? 0 }, outcome.stdout, outcome.stderr));
      }
      if (outcome.kind !== 'passthrough' || outcome.record) {
        void this.jobLog
          .record({ req, startedAt, endedAt: Date.now(), result: outcome.result, key: outcome.key, manifest: outcome.manifest, reason: outcome.kind === 'passthrough' ? outcome.reason : undefined, savedMs: outcome.savedMs, bytes: outcome.bytes, output: outcome.output })
          .catch((e) => this.log.warn('cannot record job', { error: String(e) }));
      }
    } finally {
      this.activeJobs--;
      this.armIdle();
    }
  }

  /** The cache logic of one job. Never throws for a cache problem: the answer is a passthrough. */
  private async serve(req: CompileRequest, conn: Conn): Promise<Outcome> {
    const parsed = await parseJob(req.args, req.cwd);
    if (parsed.kind === 'uncacheable') {
      this.counters.uncacheableFor(parsed.reason);
      return { kind: 'passthrough', reason: `${parsed.reason}: ${parsed.detail}`, result: 'uncacheable', record: parsed.reason !== 'not-backend' };
    }
    const out = await this.serveJob(parsed.job, req, conn);
    return { ...out, output: parsed.job.outputs[0]!.path };
  }

  private async serveJob(job: Job, req: CompileRequest, conn: Conn): Promise<Outcome> {
    const { signal } = conn;
    const keyed = await buildManifest({ files: this.files, toolchains: this.toolchains }, job, req.compiler, req.cwd, req.env);
    if (keyed.kind === 'uncacheable') {
      this.counters.uncacheableFor(keyed.reason);
      this.log.info('uncacheable job', { reason: keyed.reason, detail: keyed.detail, cwd: req.cwd });
      return { kind: 'passthrough', reason: `${keyed.reason}: ${keyed.detail}`, result: 'uncacheable', record: true };
    }
    const { key, manifest } = keyed;
    const served = await this.fromStore(key, manifest, job.outputs, req);
    if (served) return { ...served, key, manifest };

    const running = this.inflight.get(key);
    if (running) {
      const done = await running.catch(() => null);
      if (done?.entry) {
        const ok = await this.place(done.entry, job.outputs, req);
        if (ok) {
          this.counters.add('hits');
          this.counters.add('time_saved_ms', done.ms);
          return { kind: 'result', exitCode: 0, stdout: done.stdout, stderr: done.stderr, result: 'hit', key, manifest, savedMs: done.ms, bytes: entryBytes(done.entry) };
        }
      }
      if (done && done.exitCode !== 0) {
        return { kind: 'result', exitCode: done.exitCode, signal: done.signal, stdout: done.stdout, stderr: done.stderr, result: 'miss', key, manifest };
      }
    }
    // Inputs may change while clang runs (a front end rebuilt meanwhile): store the result only
    // if the key computed again afterwards is still the one it was compiled under.
    const stillCurrent = async () => {
      const again = await buildManifest({ files: this.files, toolchains: this.toolchains }, job, req.compiler, req.cwd, req.env);
      return again.kind === 'key' && again.key === key;
    };
    // A client that can compile on a miss does so (forking clang from the small client is far
    // cheaper than from this process); others get the compile run here.
    const onClient = req.compilesOnMiss ? () => this.compileOnClient(conn) : undefined;
    const p = this.compile(req, job.outputs, key, signal, stillCurrent, onClient);
    this.inflight.set(key, p);
    try {
      const done = await p;
      return { kind: 'result', exitCode: done.exitCode, signal: done.signal, stdout: done.stdout, stderr: done.stderr, result: 'miss', key, manifest, bytes: done.entry ? entryBytes(done.entry) : 0, reported: !!onClient };
    } catch (e) {
      if (signal.aborted) return { kind: 'passthrough', reason: 'client went away', result: 'error', record: false };
      this.counters.error(e instanceof ProtocolError ? 'protocol' : 'compile');
      this.log.warn('compile failed to run', { error: String(e) });
      return { kind: 'passthrough', reason: `cannot run compiler: ${(e as Error).message}`, result: 'error', record: true, key, manifest };
    } finally {
      this.inflight.delete(key);
    }
  }

  private async fromStore(key: string, manifest: Manifest, outputs: { role: string; path: string }[], req: CompileRequest): Promise<Outcome | null> {
    const inMemory = this.hot.get(key);
    const found: TieredLookup = inMemory ? { kind: 'hit', entry: inMemory, tier: 'local' } : await this.cache.get(key);
    if (found.kind === 'error') {
      this.counters.error(found.corrupt ? 'corrupt_entry' : 'store_read');
      this.log.warn('store read failed; compiling', { key, error: found.error });
      return null;
    }
    if (found.kind === 'miss') return null;
    const entry = found.entry;
    if (!(await this.place(entry, outputs, req))) return null;
    if (!inMemory) this.hot.set(key, entry);
    this.maybeVerify(key, manifest, entry, outputs, req);
    this.counters.add('hits');
    this.counters.add('time_saved_ms', entry.record.compileMs);
    const result = found.tier === 'remote' ? 'remote-hit' : 'hit';
    return { kind: 'result', exitCode: 0, stdout: Buffer.from(entry.record.stdout, 'base64'), stderr: Buffer.from(entry.record.stderr, 'base64'), result, savedMs: entry.record.compileMs, bytes: entryBytes(entry) };
  }

  /** Writes a stored entry's files to this job's output paths. False (and counted) when it cannot. */
  private async place(entry: StoredEntry, outputs: { role: string; path: string }[], req: CompileRequest): Promise<boolean> {
    const roles = new Set(entry.record.outputs.map((o) => o.name));
    if (roles.size !== outputs.length || !outputs.every((o) => roles.has(o.role))) {
      this.counters.error('entry_outputs_mismatch');
      return false;
    }
    try {
      await materialize(req.cwd, outputs.map((o) => ({ path: o.path, data: entry.files.get(o.role)! })), req.umask);
      return true;
    } catch (e) {
      this.counters.error('materialize');
      this.log.warn('cannot write outputs; compiling instead', { error: String(e) });
      return false;
    }
  }

  /**
   * The stale-hit audit (`verify`): for the configured share of hits, compile again in the
   * background, to a temp file beside the object, and compare bytes and diagnostics. A mismatch
   * is logged with the manifests, counted, and the entry purged. Jobs whose -o is not a direct
   * argument (inside a response file) or that write more than the object (.dwo embeds the object
   * name) cannot be redirected exactly and are not audited.
   */
  private maybeVerify(key: string, manifest: Manifest, entry: StoredEntry, outputs: { role: string; path: string }[], req: CompileRequest): void {
    if (this.verifyShare <= 0 || Math.random() >= this.verifyShare) return;
    const oi = req.args.indexOf('-o');
    if (outputs.length !== 1 || oi < 0 || req.args[oi + 1] !== outputs[0]!.path) {
      this.counters.add('verify_skipped');
      return;
    }
    const target = resolve(req.cwd, outputs[0]!.path);
    const tmp = join(dirname(target), `.${basename(target)}.ltocache-verify-${process.pid}-${Math.random().toString(36).slice(2)}`);
    const args = [...req.args];
    args[oi + 1] = tmp;
    void (async () => {
      const release = await this.compiles.acquire();
      try {
        const run = await runCompiler({ compiler: req.compiler, args, cwd: req.cwd, env: req.env, umask: req.umask, signal: new AbortController().signal });
        const fresh = await readFile(tmp).catch(() => null);
        this.counters.add('verify_runs');
        const freshErr = run.stderr.toString('latin1').split(tmp).join(outputs[0]!.path);
        const storedErr = Buffer.from(entry.record.stderr, 'base64').toString('latin1');
        const sameObject = fresh !== null && fresh.equals(entry.files.get(outputs[0]!.role)!);
        const sameStderr = freshErr === storedErr;
        if (run.exitCode !== 0 || !sameObject || !sameStderr) {
          this.counters.add('verify_mismatches');
          const stored = await this.jobLog.manifestOf(key).catch(() => undefined);
          this.log.error('verify: a served object differs from a fresh compile; entry purged', {
            key,
            output: target,
            exit: run.exitCode,
            sameObject,
            sameStderr,
            storedManifest: stored ?? null,
            currentManifest: manifest,
          });
          this.hot.delete(key);
          await this.store.delete(key);
        }
      } catch (e) {
        this.counters.error('verify');
        this.log.warn('verify run failed', { key, error: String(e) });
      } finally {
        release();
        await unlink(tmp).catch(() => {});
      }
    })();
  }

  /** Asks the client to run the compiler ('M') and waits for its report ('D'). */
  private async compileOnClient(conn: Conn): Promise<CompilerRun> {
    const started = performance.now();
    const next = conn.nextFrame();
    conn.sock.write(encodeCompileYourself());
    const d = decodeDone(await next);
    return { exitCode: d.exit, signal: d.signal, stdout: d.stdout, stderr: d.stderr, ms: performance.now() - started };
  }

  private async compile(
    req: CompileRequest,
    outputs: { role: string; path: string }[],
    key: string,
    signal: AbortSignal,
    stillCurrent: () => Promise<boolean>,
    onClient?: () => Promise<CompilerRun>,
  ): Promise<Compiled> {
    // The concurrency limit holds wherever clang runs: a client is told to compile only when a
    // slot is free.
    let run: CompilerRun;
    const release = await this.compiles.acquire();
    try {
      if (signal.aborted) throw new Error('client went away');
      run = onClient ? await onClient() : await runCompiler({ compiler: req.compiler, args: req.args, cwd: req.cwd, env: req.env, umask: req.umask, signal });
    } finally {
      release();
    }
    this.counters.add('misses');
    this.counters.add('compile_ms', run.ms);
    if (signal.aborted || run.exitCode !== 0) return { ...run, entry: null };
    let entry: StoredEntry | null = null;
    try {
      const files = new Map<string, Buffer>();
      for (const o of outputs) files.set(o.role, await readFile(resolve(req.cwd, o.path)));
      // clang 19 exits 0 with an empty object when it cannot load an imported module: serve that
      // run as it is, but never store it.
      if (BACKEND_FAILURE.test(run.stderr.toString('latin1')) || files.get('obj')!.length === 0) {
        this.counters.error('backend_failure_exit_0');
        this.log.warn('compiler reported a backend failure with exit 0; not stored', { key });
        return { ...run, entry: null };
      }
      entry = {
        record: {
          v: 1,
          outputs: outputs.map((o) => ({ name: o.role, digest: hashBytes(files.get(o.role)!), size: files.get(o.role)!.length })),
          stdout: run.stdout.toString('base64'),
          stderr: run.stderr.toString('base64'),
          exitCode: 0,
          compileMs: Math.round(run.ms),
          createdAt: Date.now(),
        },
        files,
      };
    } catch (e) {
      // An output we expected is not there (a flag we do not model): serve the run, store nothing.
      this.counters.error('missing_output');
      this.log.warn('expected output missing after compile; not stored', { key, error: String(e) });
      return { ...run, entry: null };
    }
    if (!(await stillCurrent())) {
      this.counters.error('inputs_changed_during_compile');
      this.log.warn('inputs changed while the compiler ran; result served, not stored', { key });
      return { ...run, entry: null };
    }
    const toStore = entry;
    this.hot.set(key, toStore);
    void this.cache.put(key, toStore).then(
      (r) => {
        if (r.kind === 'stored') this.counters.add('bytes_written', [...toStore.files.values()].reduce((n, b) => n + b.length, 0));
        else {
          this.counters.error(r.kind === 'error' ? 'store_write' : 'store_refused');
          this.log.warn('could not store result', { key, result: r });
        }
      },
      (e) => {
        this.counters.error('store_write');
        this.log.warn('could not store result', { key, error: String(e) });
      },
    );
    return { ...run, entry };
  }

  /** Stops accepting work, lets running jobs finish (bounded), flushes counters, closes the store. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info('daemon stopping');
      if (this.idleTimer) clearTimeout(this.idleTimer);
      if (this.flushTimer) clearInterval(this.flushTimer);
      if (this.socketWatch) clearInterval(this.socketWatch);
      await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
      const deadline = Date.now() + 30_000;
      while (this.activeJobs > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      for (const s of this.sockets) s.destroy();
      if (this.uploads) await Promise.race([this.uploads.idle(), new Promise((r) => setTimeout(r, 5000))]);
      this.remote?.close();
      await this.flushCounters();
      await this.jobLog.flush().catch(() => {});
      await this.store.close().catch(() => {});
      try {
        if (readFileSync(join(this.config.dir, 'daemon.pid'), 'utf8').trim() === String(process.pid)) unlinkSync(join(this.config.dir, 'daemon.pid'));
      } catch {
        // no pid file
      }
      this.log.info('daemon stopped');
      this.markStopped();
    })();
    return this.stopping;
  }
}

/**
 * Opens the store; metadata LevelDB that cannot be opened (corrupt, deleted files) is moved aside
 * and re-initialised empty, with a clear log line: the blobs it referenced become orphans that
 * the background sweep removes, and jobs recompile. A locked store (another daemon) and an
 * unknown layout version are not touched.
 */
async function openStoreWithRecovery(config: Config, log: Logger): Promise<LocalStore> {
  const dir = join(config.dir, 'store');
  try {
    return await LocalStore.open({ dir, maxBytes: config.max_size });
  } catch (e) {
    if (e instanceof StoreLockedError || e instanceof LayoutError || !existsSync(join(dir, 'v1', 'meta'))) throw e;
    const aside = join(dir, 'v1', `meta.corrupt-${Date.now()}`);
    log.error('store metadata unreadable; moving it aside and starting with an empty store', { error: String(e), moved_to: aside });
    renameSync(join(dir, 'v1', 'meta'), aside);
    return await LocalStore.open({ dir, maxBytes: config.max_size });
  }
}

type Outcome =
  | { kind: 'passthrough'; reason: string; result: JobResult; record: boolean; key?: string; manifest?: Manifest; savedMs?: number; bytes?: number; output?: string }
  | { kind: 'result'; exitCode: number; signal?: number; stdout: Buffer; stderr: Buffer; result: JobResult; key?: string; manifest?: Manifest; savedMs?: number; bytes?: number; output?: string; reported?: boolean };

/** One client connection: its socket, whether it went away, and the frames it sends after the first. */
interface Conn {
  sock: Socket;
  signal: AbortSignal;
  nextFrame(): Promise<Buffer>;
}

function entryBytes(e: StoredEntry): number {
  return e.record.outputs.reduce((n, o) => n + o.size, 0);
}
