import { lstatSync } from 'node:fs';
import { readFile, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ConfigFiles } from '../key/configFiles.js';
import { colourIsOurs, withoutColour } from '../key/diagnosticColour.js';
import { FileDigests, statIdentity } from '../key/fileDigests.js';
import { type Digest, hashBytes } from '../key/hash.js';
import { linkRenamer, mentionsLink } from '../key/linkNames.js';
import { buildManifest, type KeyResult, type Manifest } from '../key/manifest.js';
import { checksHold, envCheckHolds, ObservingFiles, untouchedSinceKeyed } from '../key/observed.js';
import { type Job, parseJob } from '../key/parseJob.js';
import { ToolchainIdentifier } from '../key/toolchain.js';
import { encodeMemo, lookupDigest, type Memo, type MemoCheck } from '../memo/memoFormat.js';
import { encodeTeamMemo, scopeDigest, teamMemoOf } from '../memo/teamMemo.js';
import { Counter, type Counters, ErrorKind } from '../stats/counters.js';
import type { CacheBackend, PutResult, StoredEntry } from '../store/backend.js';
import type { TieredLookup } from '../store/policies.js';
import type { EntryRecord } from '../store/record.js';
import { asOpened } from '../util/asOpened.js';
import { readRegularFileSync } from '../util/readRegularFile.js';
import { settledWithin } from '../util/settledWithin.js';
import type { DenyList } from './denyList.js';
import { entryBytes, entryMemo, fromBase64, type Outputs } from './entryMemo.js';
import { HotEntries } from './hotEntries.js';
import { materialize } from './materialize.js';
import { type OutputRedirect, outputRedirect, placeRedirected, readOutputSync, redirectedArgs, redirectedRunOutcome } from './outputRedirect.js';
import { type CompilerRun, type RequesterStored, type RunOptions, runCompiler } from './runCompiler.js';
import { Semaphore, SLOT_STUCK_MS } from './semaphore.js';
import { TeamPrefetch } from './teamPrefetch.js';

/**
 * Memory budget for entries kept hot. Small on purpose: the page cache keeps hot blobs anyway;
 * what this saves is the metadata lookup and the re-hashing of a blob read.
 */
export const HOT_BYTES = 8 << 20;
const BACKEND_FAILURE = /Error running ThinLTO backend|Error loading imported file/;

/** One compiler invocation as the client saw it. */
export interface JobRequest {
  compiler: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
  umask: number;
  /** lld's PID, for a job of a DTLTO distribution (src/key/linkNames.ts). */
  linkToken?: string;
}

export interface JobContext {
  /** Aborted when the requester went away: its outputs are then not wanted. */
  signal: AbortSignal;
  /**
   * Runs the compiler where the request came from, writing the outputs itself. Without it the
   * pipeline runs the compiler. A rejection with a ClientCompileError is counted as its kind.
   * Given `storeMemo` (only when `clientStores`), a requester may also store a clean run as blobs
   * and write that memo with their digests (docs/protocol.md, 'S'); the run then says `stored`.
   */
  compileOnClient?: (storeMemo?: Buffer, colour?: boolean, redirect?: OutputRedirect) => Promise<CompilerRun>;
  /**
   * The requester can run the compiler with the object redirected to a private temp, which it
   * stores from and renames onto the output itself (`redirect` of compileOnClient; docs/store.md
   * "Output races").
   */
  clientRedirects?: boolean;
  /**
   * The requester shows the compiler's diagnostics on a terminal and, told so, runs the compiler
   * it runs with `-fcolor-diagnostics` added (`colour`): clang itself would colour them there, but
   * sees a pipe. What is stored and replayed has the colour taken out (src/key/diagnosticColour.ts).
   */
  colourOnRequest?: boolean;
  /** The requester can store a clean run itself (it must also have compileOnClient). */
  clientStores?: boolean;
  /**
   * Hands a team-cache hit to the requester, which stores the files as blobs, writes the memo
   * and serves itself from it ('H', docs/protocol.md). Resolves with what it stored, or null when
   * it did not (it then runs the compiler itself). Either way the job is the requester's.
   */
  serveOnClient?: (memo: Buffer, files: readonly Buffer[]) => Promise<RequesterStored | null>;
  /**
   * Called at most once, as soon as nothing more is needed from the requester's files: after a
   * compile on the client, once its outputs' bytes are in memory. The requester may exit then (its
   * outputs may change after); hashing, the input re-check and storing go on without it.
   */
  released?: () => void;
  /** Receives this job's memo instead of the memo store (a distribution gathers its jobs' memos
   * into one, docs/dtlto.md): for a hit once it is served, for a miss once its blobs are stored
   * (a team-cache hit's blobs may still be being written back). Never called without a memo
   * store. */
  collectMemo?: (memo: Memo, lookup: Digest) => void;
}

/** A failure of `compileOnClient` that is not the compiler's (the requester broke the exchange). */
export class ClientCompileError extends Error {
  constructor(
    message: string,
    readonly errorKind: ErrorKind,
  ) {
    super(message);
  }
}

interface Keyed {
  key: string;
  /** Absent when the key came from a team memo (docs/team-cache.md "Team memos"): not keyed here. */
  manifest?: Manifest;
  /** The input bitcode's path, as the job names it. */
  input: string;
  /** What the key was computed from, as memo checks (absent when the keyer does not observe). */
  checks?: MemoCheck[];
  /** The same observations when they may not stand in a memo (checks absent): the files' identities
   *  when hashed still tell whether one was written while the compiler ran. */
  observed?: MemoCheck[];
  /** The job's first output path, as given. */
  output: string;
}

/** The result of one job, as data: a miss is an outcome, not an exception. */
export type JobOutcome =
  /** Outputs written from a stored or just-compiled entry; stdout/stderr are the stored ones. */
  | (Keyed & {
      kind: 'hit';
      tier: 'memory' | 'local' | 'remote' | 'inflight';
      stdout: Buffer;
      stderr: Buffer;
      savedMs: number;
      bytes: number;
    })
  /** The compiler ran (here, or on the client when `compiledOnClient`), or a shared run failed. */
  | (Keyed & { kind: 'miss'; exitCode: number; signal: number; stdout: Buffer; stderr: Buffer; bytes: number; compiledOnClient: boolean })
  /** Not a job the cache can key; `record` says whether it belongs in the job log. */
  | { kind: 'uncacheable'; reason: string; detail: string; record: boolean }
  /** Nothing served and nothing compiled: the requester must run the compiler itself. */
  | (Partial<Keyed> & { kind: 'error'; error: string; record: boolean });

/** Computes a job's key; `checks` lists what it read, for the memo (docs/memo.md). */
export type Keyer = (job: Job, req: JobRequest) => Promise<KeyResult & { checks?: MemoCheck[]; observed?: MemoCheck[] }>;

/** Where memos go (src/memo/memoStore.ts): written after a hit or a stored miss, removed with a bad key. */
export interface MemoSink {
  /**
   * `unchanged`: this exact memo is already in place; `no-blob`: not written, a blob is not stored
   * yet; `newer`: not written, the memo file in place was written after `unlessNewerThanMs`.
   * `batch`: one of many memos sharing check objects (a team pack's).
   */
  write(lookup: string, memo: Memo, unlessNewerThanMs?: number, batch?: boolean): Promise<'written' | 'unchanged' | 'no-blob' | 'newer'>;
  removeKey(key: string): Promise<void>;
  /** Removes the memo named `lookup`. */
  remove(lookup: string): Promise<void>;
  /** Replaces the team pack (cache-schema/teampack.v1.md), which holds memos of `keys`; removed with any of them. */
  writePack?(pieces: Buffer[], keys: readonly string[]): Promise<void>;
  removePack?(): Promise<void>;
  /** A memo the requester wrote under `lookup` for `key` (removed with the key from now on). */
  adopted?(lookup: string, key: string): void;
  /** The last request seen for a memo, its entry's compile time and its input bitcode path (as
   * the manifest names it), for the job log and `time_saved_ms` of hits served from it. */
  remember?(lookup: string, req: JobRequest, savedMs: number, input: string): void;
}

export interface PipelineOptions {
  /** The local store, or a tiered/readOnly composition of it. `get` may say which tier served. */
  cache: CacheBackend;
  counters: Counters;
  log: { info(m: string, f?: Record<string, unknown>): void; warn(m: string, f?: Record<string, unknown>): void; error(m: string, f?: Record<string, unknown>): void };
  /** Concurrent compiles, wherever they run. */
  jobs: number;
  /** How long a compile slot, or a compile of the same key, is waited on before it counts as stuck (SLOT_STUCK_MS). */
  slotStuckMs?: number;
  /** Share of hits audited by a background recompile (0 … 1). */
  verifyShare?: number;
  deny: DenyList;
  hotBytes?: number;
  /** Computes the key; defaults to the manifest of src/key. */
  keyer?: Keyer;
  runCompiler?: (o: RunOptions) => Promise<CompilerRun>;
  /** The manifest a key was stored under, for the verify mismatch log. */
  manifestOf?: (key: string) => Promise<unknown>;
  random?: () => number;
  memo?: MemoSink;
  /** The content-digest memo of the default keyer (the daemon saves and reloads it). */
  files?: FileDigests;
  /**
   * Share team memos of stored misses, and fetch a scope's team memos when its first job
   * arrives (docs/team-cache.md "Team memos"). Needs `memo` and a cache with team memos.
   */
  prefetch?: boolean;
}

/** What a finished compile leaves for the jobs waiting on the same key. */
interface Compiled extends CompilerRun {
  /** The entry, files in memory; null when not stored, or stored by the requester (`adopted`). */
  entry: StoredEntry | null;
  /** Stored in the local store by the requester: waiting jobs look it up there. */
  adopted?: boolean;
}

const ZERO_DIGEST = '0'.repeat(32);
const NO_OUTPUT = Buffer.alloc(0);

/**
 * parse → key → lookup → compile → store, for one job at a time and many concurrently: identical
 * concurrent jobs compile once, compiles are bounded by `jobs`, hits may be audited (`verify`).
 * Knows no transport; reaches storage only through CacheBackend.
 */
export class JobPipeline {
  private readonly compiles: Semaphore;
  /** How long a compile slot, or another command's compile of the same key, is waited on before it counts as stuck. */
  private readonly slotStuckMs: number;
  private readonly inflight = new Map<string, Promise<Compiled>>();
  /** Recently used entries, including results compiled but not yet in the store. */
  private readonly hot: HotEntries;
  private readonly keyer: Keyer;
  private readonly run: (o: RunOptions) => Promise<CompilerRun>;
  private readonly verifyShare: number;
  private readonly random: () => number;
  private readonly background = new Set<Promise<void>>();
  private readonly prefetch: TeamPrefetch | null = null;
  /** Starts identifying a job's toolchain, for the default keyer (a no-op for another). */
  private readonly warmToolchain: (req: JobRequest) => void = () => {};

  constructor(private readonly o: PipelineOptions) {
    this.slotStuckMs = o.slotStuckMs ?? SLOT_STUCK_MS;
    this.compiles = new Semaphore(o.jobs, this.slotStuckMs, (n) => {
      this.counters.add(Counter.compile_slots_reclaimed, n);
      this.o.log.warn('compile slots taken back from clients silent for too long (stopped?)', { slots: n, ms: this.slotStuckMs });
    });
    this.hot = new HotEntries(o.hotBytes ?? HOT_BYTES);
    this.verifyShare = o.verifyShare ?? 0;
    this.random = o.random ?? Math.random;
    this.run = o.runCompiler ?? runCompiler;
    const files = o.files ?? new FileDigests();
    const memo = o.memo;
    const cache = o.cache;
    if (o.prefetch && memo && cache.scopeMemos && cache.writeBack && !this.verifyShare) {
      this.prefetch = new TeamPrefetch({
        scopeMemos: (scope) => cache.scopeMemos!(scope),
        getEntry: (key) => (o.deny.has(key) ? Promise.resolve({ kind: 'miss' }) : cache.get(key, { deferWriteBack: true, ahead: true })),
        isLocal: async (key) => (await cache.get(key, { nearestOnly: true })).kind === 'hit',
        files,
        counters: o.counters,
        log: o.log,
        ...(memo.writePack && memo.removePack && cache.writeBack
          ? {
              pack: {
                write: (pieces, keys) => memo.writePack!(pieces, keys),
                remove: () => memo.removePack!(),
                adopt: async ({ lookup, memo: m, entry, packedAtMs }) => {
                  if (o.deny.has(m.key)) return;
                  await cache.writeBack!(m.key, entry);
                  // A memo file written since the pack (the job compiled anew) knows better.
                  if ((await memo.write(lookup, m, packedAtMs, true)) === 'written') o.counters.add(Counter.memos_written);
                },
              },
            }
          : {}),
      });
    }
    if (o.keyer) this.keyer = o.keyer;
    else {
      const toolchains = new ToolchainIdentifier(files);
      const configs = new ConfigFiles();
      // A failure here is the job's keyer's to report when it identifies the toolchain itself.
      this.warmToolchain = (req) => void toolchains.identify(req.compiler, req.env).catch(() => {});
      this.keyer = async (job, req) => {
        const observe = new ObservingFiles(files);
        const rename = req.linkToken === undefined ? undefined : (linkRenamer(req.linkToken) ?? undefined);
        const r = await buildManifest({ files, toolchains, configs, observe }, job, req.compiler, req.cwd, req.env, rename);
        if (r.kind !== 'key') return r;
        const seen = observe.checks();
        // Without checks the job is served and stored as usual, with no memo (and re-keyed after its
        // compile). A key holding this machine's CPU (-march=native) gets none: a memo checks files,
        // and a cache directory shared by machines (an NFS home) would serve it on another CPU.
        return o.memo && observe.memoable() && !r.manifest.native ? { ...r, checks: seen } : { ...r, observed: seen };
      };
    }
  }

  private get counters(): Counters {
    return this.o.counters;
  }

  /** A compile slot for a compile the pipeline does not run itself (a job it cannot key): `jobs` bounds them all. */
  compileSlot(): Promise<() => void> {
    return this.compiles.acquire();
  }

  /** Fast-path hits were noticed: the build goes on, so the team pack is kept a while longer. */
  noticed(): void {
    this.prefetch?.touch();
  }

  /** The memo of `lookup` in the team pack, while its entries are held. */
  packedMemo(lookup: string): Memo | undefined {
    return this.prefetch?.packedMemo(lookup);
  }

  /** Adopts the team pack now, if one is held (the daemon stops), within `ms`; see TeamPrefetch.adoptNow. */
  adoptPackNow(ms: number): Promise<void> {
    return this.prefetch?.adoptNow(ms) ?? Promise.resolve();
  }

  /** Forgets the entries held in memory (the store was cleared). */
  clearMemory(): void {
    this.hot.clear();
    // The entries a scope's memos named are gone with the store: the next job of a scope fetches again.
    this.prefetch?.forget();
  }

  /** Resolves when the background work started so far (verify runs, stores) has ended. */
  async idle(): Promise<void> {
    while (this.background.size) await Promise.all([...this.background]);
  }

  private spawn(p: Promise<void>): void {
    this.background.add(p);
    void p.finally(() => this.background.delete(p));
  }

  /** Never throws for a cache problem: the outcome says what happened. */
  async runJob(req: JobRequest, ctx: JobContext): Promise<JobOutcome> {
    const parsed = await parseJob(req.args, req.cwd);
    if (parsed.kind === 'uncacheable') {
      this.counters.uncacheableFor(parsed.reason);
      return { kind: 'uncacheable', reason: parsed.reason, detail: parsed.detail, record: parsed.reason !== 'not-backend' };
    }
    if (this.prefetch && !ctx.collectMemo) {
      const served = await this.fromTeamMemo(parsed.job, req, ctx);
      if (served) return served;
    }
    const keyed = await this.keyer(parsed.job, req);
    if (keyed.kind === 'uncacheable') {
      this.counters.uncacheableFor(keyed.reason);
      this.o.log.info('uncacheable job', { reason: keyed.reason, detail: keyed.detail, cwd: req.cwd });
      return { kind: 'uncacheable', reason: keyed.reason, detail: keyed.detail, record: true };
    }
    // Under config files, the job as clang runs it: their options may add outputs.
    const job = keyed.job ?? parsed.job;
    const k: Keyed = {
      key: keyed.key,
      manifest: keyed.manifest,
      input: job.input,
      output: job.outputs[0]!.path,
      ...(keyed.checks ? { checks: keyed.checks } : {}),
      ...(keyed.observed ? { observed: keyed.observed } : {}),
    };
    const served = await this.lookup(k, job, req, ctx);
    if (served) return served;

    const running = this.inflight.get(k.key);
    if (running) {
      // Bounded: the other command's client may be stopped mid-compile; then this one compiles.
      const done = await settledWithin(
        running.catch(() => null),
        this.slotStuckMs,
      );
      if (done?.adopted) {
        const again = await this.lookup(k, job, req, ctx);
        if (again) return again.kind === 'hit' ? { ...again, tier: 'inflight' } : again;
      }
      if (done?.entry && (await this.place(done.entry, job.outputs, req))) {
        this.counters.add(Counter.hits);
        this.counters.add(Counter.time_saved_ms, done.ms);
        return { ...k, kind: 'hit', tier: 'inflight', stdout: done.stdout, stderr: done.stderr, savedMs: done.ms, bytes: entryBytes(done.entry) };
      }
      // A failure is not shared: it may be the other command's own (its output directory, a
      // signal), and the key leaves output names and directories out. This job compiles itself.
    }
    // Inputs may change while clang runs (a front end rebuilt meanwhile): store the result only
    // if the key computed again afterwards is still the one it was compiled under.
    const untouched = () => {
      const seen = k.checks ?? k.observed;
      const moved = seen ? untouchedSinceKeyed(seen) : null;
      if (moved) this.o.log.warn('a file hashed for the key was written while the compiler ran', { key: k.key, path: moved });
      return moved === null;
    };
    const stillCurrent = async () => {
      // What the key was computed from, re-checked by stat identity (content for files written
      // just before), so the key is normally computed once. A check can fail without a key change
      // (a config directory that is also the output directory): then the key is computed again.
      if (k.checks && checksHold(k.checks, req.env)) return true;
      const again = await this.keyer(parsed.job, req);
      if (again.kind !== 'key' || again.key !== k.key) return false;
      if (again.checks) k.checks = again.checks;
      return true;
    };
    const storeMemo = ctx.clientStores && ctx.compileOnClient ? this.storeMemo(k, job.outputs, req, ctx) : undefined;
    const redirect = !ctx.compileOnClient || ctx.clientRedirects ? outputRedirect(job, req.args, req.cwd) : null;
    const p = this.compile(
      req,
      job.outputs,
      k.key,
      redirect,
      ctx,
      !!ctx.colourOnRequest && colourIsOurs(job),
      { untouched, stillCurrent },
      async (entry) => {
        await this.writeMemo(k, entry, job.outputs, req, undefined, ctx.collectMemo);
        if (!ctx.collectMemo) this.share(k, entry.record, job.outputs, req);
      },
      // The client made the same check before it stored (client/storeback.c), with states taken
      // around the compile: a look from here, whenever 'E' is read, could find the files deleted
      // or rewritten by the build since, and lose a store for nothing.
      storeMemo && { memo: storeMemo, adopt: (run) => this.adopt(k, job.outputs, req, run) },
    );
    this.inflight.set(k.key, p);
    try {
      const done = await p;
      return {
        ...k,
        kind: 'miss',
        exitCode: done.exitCode,
        signal: done.signal,
        stdout: done.stdout,
        stderr: done.stderr,
        bytes: done.entry ? entryBytes(done.entry) : 0,
        compiledOnClient: !!ctx.compileOnClient,
      };
    } catch (e) {
      if (ctx.signal.aborted) return { kind: 'error', error: 'client went away', record: false };
      this.counters.error(e instanceof ClientCompileError ? e.errorKind : ErrorKind.compile);
      this.o.log.warn('compile failed to run', { error: String(e) });
      return { ...k, kind: 'error', error: `cannot run compiler: ${(e as Error).message}`, record: true };
    } finally {
      this.inflight.delete(k.key);
    }
  }

  /**
   * A job whose team memo holds here: its key and checks are the localised memo's, so the job
   * is looked up without being keyed (a team-cache hit is handed to the client, which stores it
   * and writes the memo). Null when there is none, it does not describe this job's outputs or
   * environment, or no tier has the entry: the job then goes the usual way.
   */
  private async fromTeamMemo(job: Job, req: JobRequest, ctx: JobContext): Promise<JobOutcome | null> {
    // While the scope's memos are fetched, the toolchain is hashed: the claim's checks need its
    // libraries' digests (hundreds of MB), and so does the job's own key if the claim fails.
    const t = await this.prefetch!.claim(req, () => this.warmToolchain(req));
    if (!t) return null;
    const { memo } = t;
    const same = job.outputs.length === t.roles.length && job.outputs.every((o, i) => o.role === t.roles[i] && asOpened(req.cwd, o.path) === memo.outputs[i]!.path);
    const envHolds = memo.checks.every((c) => c.kind !== 'env' || envCheckHolds(c, req.env));
    if (!same || !envHolds) {
      this.counters.add(Counter.team_memos_unusable);
      return null;
    }
    const k: Keyed = { key: memo.key, checks: memo.checks, input: job.input, output: job.outputs[0]!.path };
    const served = await this.lookup(k, job, req, ctx, t.entry);
    if (served?.kind === 'hit') {
      this.counters.add(Counter.team_memo_hits);
      if (served.tier === 'remote') this.prefetch!.fromTeam(req);
    } else this.counters.add(Counter.team_memos_unusable);
    return served;
  }

  /** Queues the team memo of a miss just stored, for teammates' prefetch. */
  private share(k: Keyed, record: EntryRecord, outputs: Outputs, req: JobRequest): void {
    const cache = this.o.cache;
    // A key with the host's CPU in it holds on this machine only: its memo checks no CPU.
    if (!this.prefetch || !cache.shareMemo || !k.checks || !k.manifest || k.manifest.native || this.o.deny.has(k.key)) return;
    const memo = entryMemo(k.key, k.checks, record, outputs, req.cwd);
    if (!memo) return;
    const team = teamMemoOf(
      lookupDigest(req.compiler, req.cwd, req.args),
      memo,
      outputs.map((o) => o.role),
    );
    if (!team) return;
    let bytes: Buffer;
    try {
      bytes = encodeTeamMemo(team);
    } catch {
      return;
    }
    this.counters.add(Counter.team_memos_shared);
    void cache.shareMemo(scopeDigest(req.compiler, k.manifest.toolchain.realpath, req.cwd), bytes);
  }

  /** `ahead`: the entry's lookup made ahead of the job (a team-tier hit is then not written back yet). */
  private async lookup(k: Keyed, job: Job, req: JobRequest, ctx: Pick<JobContext, 'collectMemo' | 'serveOnClient'>, ahead?: Promise<TieredLookup>): Promise<JobOutcome | null> {
    const { key } = k;
    const { outputs } = job;
    const collect = ctx.collectMemo;
    if (this.o.deny.has(key)) return null;
    const inMemory = this.hot.get(key);
    const defer = !!ctx.serveOnClient && !!this.o.cache.writeBack;
    let found: TieredLookup = inMemory ? { kind: 'hit', entry: inMemory } : ahead ? await ahead : await this.o.cache.get(key, defer ? { deferWriteBack: true } : undefined);
    // Fetched ahead and gone wrong since (a failover): asked again now.
    if (found.kind !== 'hit' && ahead && !inMemory) found = await this.o.cache.get(key, defer ? { deferWriteBack: true } : undefined);
    if (found.kind === 'error') {
      this.counters.error(found.corrupt ? ErrorKind.corrupt_entry : ErrorKind.store_read);
      this.o.log.warn('store read failed; compiling', { key, error: found.error });
      return null;
    }
    if (found.kind === 'miss') return null;
    const entry = found.entry;
    // A verify mismatch may have landed while the lookup ran (then nothing is written back).
    if (this.o.deny.has(key)) return null;
    // A team-cache hit of a job keyed here whose scope has no team memo for it (the memos were
    // named under older rules, or their sharer did not share): shared now, so that the next
    // machine is served without keying, as when the entry was first stored.
    if (found.tier === 'remote' && !collect && k.manifest && this.prefetch?.lacks(req)) this.share(k, entry.record, outputs, req);
    if (defer && found.tier === 'remote') {
      if (await this.handOver(k, entry, outputs, req, ctx.serveOnClient!)) {
        this.counters.add(Counter.hits);
        this.counters.add(Counter.time_saved_ms, entry.record.compileMs);
        return {
          ...k,
          kind: 'hit',
          tier: 'remote',
          stdout: fromBase64(entry.record.stdout),
          stderr: fromBase64(entry.record.stderr),
          savedMs: entry.record.compileMs,
          bytes: entryBytes(entry),
        };
      }
      this.spawn(this.o.cache.writeBack!(key, entry));
    } else if (ahead && found.tier === 'remote') this.spawn(this.o.cache.writeBack!(key, entry));
    if (!(await this.place(entry, outputs, req))) return null;
    // A hit from memory never reaches the store: without this its LRU age would be its last
    // store read, and the most used entries would be evicted first.
    if (inMemory) this.spawn(this.o.cache.touch(key).catch(() => {}));
    else this.hot.set(key, entry);
    const stdout = fromBase64(entry.record.stdout);
    const stderr = fromBase64(entry.record.stderr);
    this.spawn(this.writeMemo(k, entry, outputs, req, { stdout, stderr }, collect));
    this.maybeVerify(k, entry, outputs, req, job);
    this.counters.add(Counter.hits);
    this.counters.add(Counter.time_saved_ms, entry.record.compileMs);
    const tier = inMemory ? 'memory' : found.tier === 'remote' ? 'remote' : 'local';
    return {
      ...k,
      kind: 'hit',
      tier,
      stdout,
      stderr,
      savedMs: entry.record.compileMs,
      bytes: entryBytes(entry),
    };
  }

  /** Writes a stored entry's files to this job's output paths. False (and counted) when it cannot. */
  private async place(entry: StoredEntry, outputs: Outputs, req: JobRequest): Promise<boolean> {
    const roles = new Set(entry.record.outputs.map((o) => o.name));
    if (roles.size !== outputs.length || !outputs.every((o) => roles.has(o.role))) {
      this.counters.error(ErrorKind.entry_outputs_mismatch);
      return false;
    }
    try {
      await materialize(
        req.cwd,
        outputs.map((o) => ({ path: o.path, data: entry.files.get(o.role)! })),
        req.umask,
      );
      return true;
    } catch (e) {
      this.counters.error(ErrorKind.materialize);
      this.o.log.warn('cannot write outputs; compiling instead', { error: String(e) });
      return false;
    }
  }

  /**
   * The stale-hit audit (`verify`): for the configured share of hits, compile again in the
   * background, to a temp file beside the object, and compare bytes and diagnostics. A mismatch
   * is logged with the manifests and counted; the key is denied (no tier serves it until a fresh
   * compile is stored) and deleted from every tier that accepts it. Jobs whose -o is not a direct
   * argument (inside a response file) or that write more than the object (.dwo embeds the object
   * name) cannot be redirected exactly and are not audited.
   */
  private maybeVerify(k: Keyed, entry: StoredEntry, outputs: Outputs, req: JobRequest, job: Job): void {
    if (this.verifyShare <= 0 || this.random() >= this.verifyShare) return;
    const oi = req.args.indexOf('-o');
    if (outputs.length !== 1 || oi < 0 || req.args[oi + 1] !== outputs[0]!.path) {
      this.counters.add(Counter.verify_skipped);
      return;
    }
    const { key } = k;
    const target = asOpened(req.cwd, outputs[0]!.path);
    const tmp = join(dirname(target), `.${basename(target)}.ltocache-verify-${process.pid}-${Math.random().toString(36).slice(2)}`);
    const args = [...req.args];
    args[oi + 1] = tmp;
    this.spawn(
      (async () => {
        const release = await this.compiles.acquire();
        try {
          const run = await this.run({ compiler: req.compiler, args, cwd: req.cwd, env: req.env, umask: req.umask, signal: new AbortController().signal });
          const fresh = await readFile(tmp).catch(() => null);
          const freshErr = run.stderr.toString('latin1').split(tmp).join(outputs[0]!.path);
          const storedErr = Buffer.from(entry.record.stderr, 'base64').toString('latin1');
          const sameObject = fresh?.equals(entry.files.get(outputs[0]!.role)!);
          const sameStderr = freshErr === storedErr;
          if (run.exitCode === 0 && sameObject && sameStderr) {
            this.counters.add(Counter.verify_runs);
            return;
          }
          // The audit compiled the inputs as they are now; if they changed since the hit (a build
          // went on editing), the comparison says nothing about the entry.
          const now = await this.keyer(job, req).catch(() => null);
          if (now?.kind !== 'key' || now.key !== key) {
            this.counters.add(Counter.verify_skipped);
            this.o.log.info('verify: inputs changed since the hit; not compared', { key, output: target });
            return;
          }
          this.counters.add(Counter.verify_runs);
          this.counters.add(Counter.verify_mismatches);
          this.hot.delete(key);
          await this.o.memo?.removeKey(key).catch(() => {});
          await this.o.deny.add(key, 'verify mismatch').catch((e: unknown) => this.o.log.warn('cannot persist the deny list', { key, error: String(e) }));
          const stored = this.o.manifestOf ? await this.o.manifestOf(key).catch(() => undefined) : undefined;
          const deleted = await this.o.cache.delete(key);
          this.o.log.error('verify: a served object differs from a fresh compile; entry purged', {
            key,
            output: target,
            exit: run.exitCode,
            sameObject,
            sameStderr,
            storedManifest: stored ?? null,
            currentManifest: k.manifest,
            delete: deleted,
          });
        } catch (e) {
          this.counters.error(ErrorKind.verify);
          this.o.log.warn('verify run failed', { key, error: String(e) });
        } finally {
          release();
          await unlink(tmp).catch(() => {});
        }
      })(),
    );
  }

  private async compile(
    req: JobRequest,
    outputs: Outputs,
    key: string,
    /** The object is written to a private temp and read from there (docs/store.md "Output races"). */
    redirect: OutputRedirect | null,
    ctx: JobContext,
    /** The requester runs the compiler with colour added (JobContext.colourOnRequest). */
    colour: boolean,
    /**
     * `untouched`: no file hashed for the key was written since (one written while clang ran may
     * have been read in between, even if it has its old bytes again: not provable from content);
     * asked before the requester is let go, while the build cannot have moved on. `stillCurrent`:
     * the key's other observations hold, or the key computed again is unchanged.
     */
    current: { untouched: () => boolean; stillCurrent: () => Promise<boolean> },
    stored: (entry: StoredEntry) => Promise<void>,
    byClient?: { memo: Buffer; adopt: (run: CompilerRun & { stored: NonNullable<CompilerRun['stored']> }) => Promise<boolean> },
  ): Promise<Compiled> {
    const { signal } = ctx;
    // The concurrency limit holds wherever clang runs: a client is told to compile only when a
    // slot is free.
    let run: CompilerRun & { object?: Buffer };
    const release = await this.compiles.acquire();
    let before: (string | null)[] = [];
    // Where each output is read: the requester renames a redirected object into place only
    // once it has been read (after 'A').
    const paths = outputs.map((o, i) => (i === 0 && redirect && ctx.compileOnClient ? redirect.temp : asOpened(req.cwd, o.path)));
    try {
      if (signal.aborted) throw new Error('client went away');
      before = paths.map(fileIdentity);
      run = ctx.compileOnClient ? await ctx.compileOnClient(byClient?.memo, colour, redirect ?? undefined) : await this.runHere(req, redirect, signal);
    } finally {
      release();
    }
    // The compiler's run ended no later than this: an output changed after it was written by another.
    const endedMs = Date.now();
    // Stored, replayed and shared as the command itself would print them to a pipe.
    if (colour) run = { ...run, stderr: withoutColour(run.stderr) };
    this.counters.add(Counter.misses);
    this.counters.add(Counter.compile_ms, run.ms);
    // A file at an output path that is still the one there before the compile was not written by
    // it (an output redirected by a flag the key does not model): never stored.
    const stale = run.exitCode === 0 ? outputs.find((_, i) => !(i === 0 && run.object) && before[i] !== null && fileIdentity(paths[i]!) === before[i]) : undefined;
    if (stale) {
      this.counters.error(ErrorKind.output_not_replaced);
      this.o.log.warn('the compiler left an output as it was before it ran; not stored', { key, output: stale.path });
      if (run.stored) await this.dropClientMemo(req, run.stored);
      ctx.released?.();
      return { ...run, entry: null };
    }
    // Output naming the temp is about the temp, not clang's about the output: the requester runs
    // the compiler again as given, unless a signal or output it passed on already kept it from that.
    if (redirect && redirectedRunOutcome(run, redirect) === 'redo') {
      this.o.log.warn('the redirected compile printed the temp name; not stored', { key });
      ctx.released?.();
      return { ...run, entry: null };
    }
    // Stored by the requester, which has gone: the entry is committed even though the
    // connection has closed.
    if (run.stored && byClient) return { ...run, entry: null, adopted: await byClient.adopt({ ...run, stored: run.stored }) };
    if (signal.aborted || run.exitCode !== 0) {
      ctx.released?.();
      return { ...run, entry: null };
    }
    let entry: StoredEntry;
    let untouched = false;
    try {
      const files = new Map<string, Buffer>();
      // Synchronous: the outputs were just written and are in the page cache; a thread-pool round
      // trip per file costs the daemon more CPU than the read.
      try {
        for (const [i, o] of outputs.entries()) {
          // A redirected object is read from a name no other process writes.
          const bytes = i === 0 && run.object ? run.object : readOutputSync(paths[i]!, paths[i] === redirect?.temp ? null : endedMs);
          if (bytes === 'raced') {
            this.counters.error(ErrorKind.output_written_after_compile);
            this.o.log.warn('an output was written by another process after the compiler ended; not stored', { key, output: o.path });
            return { ...run, entry: null };
          }
          if (!bytes) throw new Error(`${o.path} is not a regular file`);
          files.set(o.role, bytes);
        }
        untouched = current.untouched();
      } finally {
        ctx.released?.();
      }
      // Another link would replay names of this one's files.
      if (req.linkToken !== undefined && (mentionsLink(run.stdout, req.linkToken) || mentionsLink(run.stderr, req.linkToken))) {
        this.counters.error(ErrorKind.output_names_link);
        this.o.log.warn("the compiler's output names files of this link; not stored", { key });
        return { ...run, entry: null };
      }
      // clang 19 exits 0 with an empty object when it cannot load an imported module: serve that
      // run as it is, but never store it.
      if (BACKEND_FAILURE.test(run.stderr.toString('latin1')) || files.get('obj')!.length === 0) {
        this.counters.error(ErrorKind.backend_failure_exit_0);
        this.o.log.warn('compiler reported a backend failure with exit 0; not stored', { key });
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
      this.counters.error(ErrorKind.missing_output);
      this.o.log.warn('expected output missing after compile; not stored', { key, error: String(e) });
      return { ...run, entry: null };
    }
    if (!untouched || !(await current.stillCurrent())) {
      this.counters.error(ErrorKind.inputs_changed_during_compile);
      this.o.log.warn('inputs changed while the compiler ran; result served, not stored', { key });
      return { ...run, entry: null };
    }
    this.hot.set(key, entry);
    this.spawn(this.store(key, entry).then((ok) => (ok ? stored(entry) : undefined)));
    return { ...run, entry };
  }

  /**
   * Runs the compiler here. Redirected, a run that stands (redirectedRunOutcome) has its object
   * read from the private temp, which is then renamed onto the output: a write to the output by
   * another process cannot be what is stored. A run to redo (or a temp that cannot be read or
   * placed) is run again as given, for clang's own outcome; that run is not redirected. Any other
   * run is clang's outcome as it is, with what it left at the temp placed at the output.
   */
  private async runHere(req: JobRequest, redirect: OutputRedirect | null, signal: AbortSignal): Promise<CompilerRun & { object?: Buffer }> {
    const base = { compiler: req.compiler, cwd: req.cwd, env: req.env, umask: req.umask, signal };
    if (!redirect) return this.run({ ...base, args: req.args });
    const run = await this.run({ ...base, args: redirectedArgs(req.args, redirect) });
    const outcome = redirectedRunOutcome(run, redirect);
    if (outcome === 'stands') {
      try {
        const object = readRegularFileSync(redirect.temp);
        if (object && placeRedirected(redirect)) return { ...run, object };
      } catch {
        // as given, below
      }
    }
    if (outcome === 'as-is') placeRedirected(redirect);
    await unlink(redirect.temp).catch(() => {});
    return signal.aborted || outcome === 'as-is' ? run : this.run({ ...base, args: req.args });
  }

  /** A fresh compile's entry is in the store: its bytes are counted and a denied key may be served again. */
  private async newlyStored(key: string, bytes: number): Promise<void> {
    this.counters.add(Counter.bytes_written, bytes);
    if (this.o.deny.has(key)) await this.o.deny.remove(key).catch((e: unknown) => this.o.log.warn('cannot update the deny list', { key, error: String(e) }));
  }

  /** Stores a fresh compile; once stored, a denied key may be served again. True when stored. */
  private async store(key: string, entry: StoredEntry): Promise<boolean> {
    try {
      const r = await this.o.cache.put(key, entry);
      if (r.kind === 'stored') {
        await this.newlyStored(key, entryBytes(entry));
        return true;
      }
      this.counters.error(r.kind === 'error' ? ErrorKind.store_write : ErrorKind.store_refused);
      this.o.log.warn('could not store result', { key, result: r });
    } catch (e) {
      this.counters.error(ErrorKind.store_write);
      this.o.log.warn('could not store result', { key, error: String(e) });
    }
    return false;
  }

  /**
   * A team-cache hit handed to the requester ('H'): it writes the blobs (the write-back) and the
   * memo, and serves itself from them. False, with nothing sent, when no memo can be made for
   * it; the caller then writes back and serves as for any hit. True once handed over, whatever
   * the requester then did: without its report, the write-back is done here.
   */
  private async handOver(k: Keyed, entry: StoredEntry, outputs: Outputs, req: JobRequest, serve: NonNullable<JobContext['serveOnClient']>): Promise<boolean> {
    if (!this.o.memo || !k.checks || !this.o.cache.adopt) return false;
    const made = entry.record.outputs.length === outputs.length ? entryMemo(k.key, k.checks, entry.record, outputs, req.cwd) : null;
    if (!made) return false;
    const memoOutputs = made.outputs;
    let memo: Buffer;
    try {
      memo = encodeMemo(made);
    } catch {
      return false;
    }
    const stored = await serve(
      memo,
      outputs.map((o) => entry.files.get(o.role)!),
    );
    const same = stored?.outputs.length === memoOutputs.length && stored.outputs.every((s, i) => s.digest === memoOutputs[i]!.digest && s.size === memoOutputs[i]!.size);
    const r = same ? await this.o.cache.adopt(k.key, entry.record, { nearestOnly: true }).catch((e: Error): PutResult => ({ kind: 'error', error: e.message })) : null;
    if (r?.kind === 'stored') {
      if (!this.takeClientMemo(k, req, stored!, entry.record.compileMs)) this.spawn(this.writeMemo(k, entry, outputs, req));
      return true;
    }
    await this.dropClientMemo(req, stored);
    this.spawn(this.o.cache.writeBack!(k.key, entry).then(() => this.writeMemo(k, entry, outputs, req)));
    return true;
  }

  /**
   * The memo a requester that stores its own clean run writes (docs/protocol.md, 'S'): this
   * job's, with zero output digests the requester fills in. Only where writeMemo would write one
   * and the cache can adopt blobs the requester wrote.
   */
  private storeMemo(k: Keyed, outputs: Outputs, req: JobRequest, ctx: JobContext): Buffer | undefined {
    if (!this.o.memo || !k.checks || !this.o.cache.adopt || ctx.collectMemo || this.o.deny.has(k.key)) return undefined;
    try {
      return encodeMemo({
        key: k.key,
        checks: k.checks,
        outputs: outputs.map((o) => ({ path: asOpened(req.cwd, o.path), digest: ZERO_DIGEST, size: 0 })),
        stdout: NO_OUTPUT,
        stderr: NO_OUTPUT,
      });
    } catch {
      // Over a memo limit: the requester reports with 'D' and the pipeline stores as before.
      return undefined;
    }
  }

  /**
   * Commits the entry of a run the requester stored itself; its memo is kept only if the entry
   * is. The requester re-checked every input after the compile, so the key still holds.
   */
  private async adopt(k: Keyed, outputs: Outputs, req: JobRequest, run: CompilerRun & { stored: NonNullable<CompilerRun['stored']> }): Promise<boolean> {
    const { stored } = run;
    const record: EntryRecord = {
      v: 1,
      outputs: outputs.map((o, i) => ({ name: o.role, digest: stored.outputs[i]?.digest ?? '', size: stored.outputs[i]?.size ?? 0 })),
      stdout: '',
      stderr: '',
      exitCode: 0,
      compileMs: Math.round(run.ms),
      createdAt: Date.now(),
    };
    const r =
      stored.outputs.length === outputs.length
        ? await this.o.cache.adopt!(k.key, record).catch((e: Error): PutResult => ({ kind: 'error', error: e.message }))
        : ({ kind: 'refused', reason: `${stored.outputs.length} outputs reported, ${outputs.length} expected` } as const);
    if (r.kind !== 'stored') {
      this.counters.error(r.kind === 'error' ? ErrorKind.store_write : ErrorKind.store_refused);
      this.o.log.warn('could not store the result the client stored', { key: k.key, result: r });
      await this.dropClientMemo(req, stored);
      return false;
    }
    this.counters.add(Counter.misses_stored_by_client);
    await this.newlyStored(k.key, entryBytes({ record }));
    if (!this.takeClientMemo(k, req, stored, record.compileMs)) await this.writeMemo(k, { record, files: new Map() }, outputs, req);
    this.share(k, record, outputs, req);
    return true;
  }

  /**
   * The memo the requester reported writing ('E'), now that the entry it names is stored: it is
   * removed with the key from here on, and its request is remembered for the hits it serves.
   * False when the requester wrote none.
   */
  private takeClientMemo(k: Keyed, req: JobRequest, stored: Pick<RequesterStored, 'memoWritten'>, savedMs: number): boolean {
    if (!stored.memoWritten) return false;
    const sink = this.o.memo!;
    const lookup = lookupDigest(req.compiler, req.cwd, req.args);
    sink.adopted?.(lookup, k.key);
    this.counters.add(Counter.memos_written);
    sink.remember?.(lookup, req, savedMs, k.input);
    return true;
  }

  /** The memo the requester reported writing for an entry that was not stored: it must not stay. */
  private async dropClientMemo(req: JobRequest, stored: Pick<RequesterStored, 'memoWritten'> | null): Promise<void> {
    if (stored?.memoWritten) await this.o.memo!.remove(lookupDigest(req.compiler, req.cwd, req.args)).catch(() => {});
  }

  /**
   * Writes the memo the native client checks before it asks us (docs/memo.md). Only for a key
   * computed with observed inputs, a whole entry, and a key not denied; a failure only costs the
   * next run of this command a trip through the daemon.
   */
  private async writeMemo(
    k: Keyed,
    entry: StoredEntry,
    outputs: Outputs,
    req: JobRequest,
    decoded?: { stdout: Buffer; stderr: Buffer },
    collect?: JobContext['collectMemo'],
  ): Promise<void> {
    const sink = this.o.memo;
    if (!sink || !k.checks || this.o.deny.has(k.key)) return;
    const made = entryMemo(k.key, k.checks, entry.record, outputs, req.cwd);
    if (!made) return;
    const lookup = lookupDigest(req.compiler, req.cwd, req.args);
    try {
      const memo: Memo = decoded ? { ...made, ...decoded } : made;
      if (collect) {
        sink.remember?.(lookup, req, entry.record.compileMs, k.input);
        collect(memo, lookup);
        return;
      }
      const r = await sink.write(lookup, memo);
      if (r !== 'no-blob') {
        if (r === 'written') this.counters.add(Counter.memos_written);
        sink.remember?.(lookup, req, entry.record.compileMs, k.input);
      }
    } catch (e) {
      this.counters.error(ErrorKind.memo_write);
      this.o.log.warn('cannot write memo', { key: k.key, error: String(e) });
    }
  }
}

/** A file's identity (device, inode, mtime, ctime), or null when there is none. A compile that
 * writes a file (clang renames a temp file over it) always changes it. */
function fileIdentity(path: string): string | null {
  try {
    const st = lstatSync(path, { bigint: true, throwIfNoEntry: false });
    return st ? statIdentity(st) : null;
  } catch {
    return null;
  }
}
