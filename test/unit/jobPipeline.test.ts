import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join, resolve } from 'node:path';
import { after, type TestContext, test } from 'node:test';
import { hashBytes, initHash } from '../../src/key/hash.js';
import type { KeyResult, Manifest } from '../../src/key/manifest.js';
import { type Job, parseJob } from '../../src/key/parseJob.js';
import { DenyList, type DenyRecord, type DenyStorage } from '../../src/pipeline/denyList.js';
import { type JobOutcome, JobPipeline, type JobRequest, type PipelineOptions } from '../../src/pipeline/jobPipeline.js';
import { type OutputRedirect, outputRedirect, readOutputSync } from '../../src/pipeline/outputRedirect.js';
import type { CompilerRun, RunOptions } from '../../src/pipeline/runCompiler.js';
import { Counter, Counters } from '../../src/stats/counters.js';
import type { CacheBackend, DeleteResult, Lookup, PutResult, StoredEntry } from '../../src/store/backend.js';
import { LocalStore } from '../../src/store/localStore.js';
import { readOnly, tiered } from '../../src/store/policies.js';
import { tempDir as envTempDir } from '../support/env.js';

/**
 * The job pipeline in process: a fake compiler (writes bytes chosen by the test), a fake keyer
 * (the key of a job is a digest of its input path and a per-input version), and CacheBackend
 * stubs. No LLVM needed: parseJob reads only the argument list.
 */

await initHash();

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = envTempDir('pipeline');
  dirs.push(d);
  return d;
}

const args = (m: string, out = `${m}.native.o`): string[] => ['-O2', '-x', 'ir', '-fno-lto', `-fthinlto-index=${m}.o.thinlto.bc`, '-c', '-o', out, `${m}.o`];
const request = (cwd: string, m: string, out?: string): JobRequest => ({ compiler: '/usr/bin/clang-fake', args: args(m, out), cwd, env: {}, umask: 0o022 });

/** Keys from the input path and a version the test bumps to model an input change. */
class FakeKeyer {
  readonly versions = new Map<string, number>();
  calls = 0;
  readonly keyer = async (job: Job): Promise<KeyResult> => {
    this.calls++;
    return { kind: 'key', key: this.keyOf(job.input), manifest: { input: job.input } as unknown as Manifest };
  };
  keyOf(input: string): string {
    return hashBytes(`${input}@${this.versions.get(input) ?? 0}`);
  }
}

/** Writes `output(input)` to the -o path; `gate` holds every run until the test opens it. */
class FakeCompiler {
  runs: RunOptions[] = [];
  output = (input: string): Buffer => Buffer.from(`object of ${input}`);
  stderr = Buffer.alloc(0);
  exitCode = 0;
  /** Overrides exitCode for run n (0-based), when set. */
  exitOf: ((n: number, o: RunOptions) => number) | null = null;
  gate: Promise<void> = Promise.resolve();
  /** False: the compiler exits as told without writing its output (written elsewhere, say). */
  writes = true;
  readonly run = async (o: RunOptions): Promise<CompilerRun> => {
    const n = this.runs.push(o) - 1;
    await this.gate;
    const out = o.args[o.args.indexOf('-o') + 1]!;
    if (this.writes) fs.writeFileSync(resolve(o.cwd, out), this.output(o.args[o.args.length - 1]!));
    const exitCode = this.exitOf ? this.exitOf(n, o) : this.exitCode;
    return { exitCode, signal: 0, stdout: Buffer.alloc(0), stderr: exitCode ? this.stderr : Buffer.alloc(0), ms: 50 };
  };
}

/** A Map-backed CacheBackend that records every call; `getResult` overrides lookups. */
class StubBackend implements CacheBackend {
  readonly entries = new Map<string, StoredEntry>();
  readonly calls: string[] = [];
  getResult: ((key: string) => Lookup) | null = null;
  putResult: PutResult | null = null;
  constructor(readonly name = 'stub') {}
  async get(key: string): Promise<Lookup> {
    this.calls.push(`get ${key}`);
    if (this.getResult) return this.getResult(key);
    const e = this.entries.get(key);
    return e ? { kind: 'hit', entry: e } : { kind: 'miss' };
  }
  async put(key: string, entry: StoredEntry): Promise<PutResult> {
    this.calls.push(`put ${key}`);
    if (this.putResult) return this.putResult;
    this.entries.set(key, entry);
    return { kind: 'stored' };
  }
  async delete(key: string): Promise<DeleteResult> {
    this.calls.push(`delete ${key}`);
    return this.entries.delete(key) ? { kind: 'deleted' } : { kind: 'absent' };
  }
  async touch(key: string): Promise<void> {
    this.calls.push(`touch ${key}`);
  }
  count(op: string): number {
    return this.calls.filter((c) => c.startsWith(`${op} `)).length;
  }
}

class MemoryDenyStorage implements DenyStorage {
  readonly map = new Map<string, DenyRecord>();
  async *keys(): AsyncIterable<string> {
    yield* this.map.keys();
  }
  async put(key: string, value: DenyRecord): Promise<void> {
    this.map.set(key, value);
  }
  async del(key: string): Promise<void> {
    this.map.delete(key);
  }
}

const silent = { info() {}, warn() {}, error() {} };

async function setup(opts: Partial<PipelineOptions> & { cache: CacheBackend }, denyStorage: DenyStorage | null = null) {
  const keyer = new FakeKeyer();
  const compiler = new FakeCompiler();
  const counters = new Counters();
  const deny = await DenyList.load(denyStorage);
  const pipeline = new JobPipeline({ counters, log: silent, jobs: 4, deny, keyer: keyer.keyer, runCompiler: compiler.run, ...opts });
  return { keyer, compiler, counters, deny, pipeline };
}

const live = () => ({ signal: new AbortController().signal });

function entryOf(obj: Buffer): StoredEntry {
  return {
    record: { v: 1, outputs: [{ name: 'obj', digest: hashBytes(obj), size: obj.length }], stdout: '', stderr: '', exitCode: 0, compileMs: 7, createdAt: 1 },
    files: new Map([['obj', obj]]),
  };
}

function expectKind<K extends JobOutcome['kind']>(o: JobOutcome, kind: K): Extract<JobOutcome, { kind: K }> {
  assert.equal(o.kind, kind, JSON.stringify({ ...o, stdout: undefined, stderr: undefined }));
  return o as Extract<JobOutcome, { kind: K }>;
}

test('miss → compile → store; then a hit from memory (touching the store) and from the store', async () => {
  const cwd = tempDir();
  const cache = new StubBackend();
  const { pipeline, compiler, counters, keyer } = await setup({ cache });
  const miss = expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'miss');
  assert.equal(miss.exitCode, 0);
  assert.equal(miss.compiledOnClient, false);
  assert.equal(miss.key, keyer.keyOf('a.o'));
  assert.equal(miss.output, 'a.native.o');
  assert.equal(compiler.runs.length, 1);
  await pipeline.idle();
  const stored = cache.entries.get(miss.key);
  assert.ok(stored?.files.get('obj')?.equals(compiler.output('a.o')));
  assert.equal(counters.get('misses'), 1);
  assert.ok(counters.get('bytes_written') > 0);

  fs.rmSync(join(cwd, 'a.native.o'));
  const hot = expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'hit');
  assert.equal(hot.tier, 'memory');
  await pipeline.idle();
  assert.equal(cache.count('touch'), 1, 'a hit from memory records the access in the store');
  assert.ok(fs.readFileSync(join(cwd, 'a.native.o')).equals(compiler.output('a.o')));

  // A fresh pipeline has nothing in memory: the hit comes from the backend.
  const { pipeline: second } = await setup({ cache });
  const fromStore = expectKind(await second.runJob(request(cwd, 'a'), live()), 'hit');
  assert.equal(fromStore.tier, 'local');
  assert.equal(fromStore.savedMs, stored!.record.compileMs);
  assert.equal(counters.get('hits'), 1);
});

test('a compile that fails is served and not stored', async () => {
  const cwd = tempDir();
  const cache = new StubBackend();
  const { pipeline, compiler } = await setup({ cache });
  compiler.exitCode = 1;
  compiler.stderr = Buffer.from('error: boom\n');
  const miss = expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'miss');
  assert.equal(miss.exitCode, 1);
  assert.equal(miss.stderr.toString(), 'error: boom\n');
  await pipeline.idle();
  assert.equal(cache.count('put'), 0);
});

test('a clean compile that left its output file as it was (written elsewhere) is served and not stored, counted', async () => {
  const cwd = tempDir();
  const cache = new StubBackend();
  const { pipeline, compiler, counters } = await setup({ cache });
  fs.writeFileSync(join(cwd, 'a.native.o'), 'left from an earlier build');
  compiler.writes = false;
  expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'miss');
  await pipeline.idle();
  assert.equal(cache.count('put'), 0, 'nothing stored');
  assert.equal(counters.snapshot().errors_by_kind.output_not_replaced, 1);
  // Run by the requester, which reports its outputs stored ('E'): refused the same way.
  const { pipeline: p2, counters: c2 } = await setup({ cache });
  const compileOnClient = async (): Promise<CompilerRun> => ({
    exitCode: 0,
    signal: 0,
    stdout: Buffer.alloc(0),
    stderr: Buffer.alloc(0),
    ms: 5,
    stored: { outputs: [{ digest: hashBytes('left from an earlier build'), size: 26 }], memoWritten: false },
  });
  expectKind(await p2.runJob(request(cwd, 'a'), { ...live(), compileOnClient }), 'miss');
  await p2.idle();
  assert.equal(cache.count('put'), 0);
  assert.equal(c2.snapshot().errors_by_kind.output_not_replaced, 1);
  // Written by the compile: stored.
  compiler.writes = true;
  const stored = expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'miss');
  await pipeline.idle();
  assert.equal(cache.entries.get(stored.key)?.files.get('obj')?.toString(), 'object of a.o');
});

test('a miss compiled here writes a private temp: what is stored is its bytes, not those of another process writing the output meanwhile', async () => {
  const cwd = tempDir();
  const cache = new StubBackend();
  const { pipeline, compiler } = await setup({ cache });
  const racing = async (o: RunOptions): Promise<CompilerRun> => {
    const run = await compiler.run(o);
    // Another build's job writes the same output after this compiler wrote its own, before it exits.
    fs.writeFileSync(join(cwd, 'a.native.o'), 'the other build');
    return run;
  };
  const { pipeline: p } = await setup({ cache, runCompiler: racing });
  const miss = expectKind(await p.runJob(request(cwd, 'a'), live()), 'miss');
  await p.idle();
  assert.equal(compiler.runs.length, 1);
  assert.match(compiler.runs[0]!.args[compiler.runs[0]!.args.indexOf('-o') + 1]!, /^\.a\.native\.o\.ltocache-out-[0-9a-f]{12}$/);
  assert.equal(cache.entries.get(miss.key)?.files.get('obj')?.toString(), 'object of a.o');
  // The temp took the output's name after it was read: the job's output is its own object.
  assert.equal(fs.readFileSync(join(cwd, 'a.native.o'), 'utf8'), 'object of a.o');
  assert.deepEqual(fs.readdirSync(cwd), ['a.native.o']);
  void pipeline;
});

test("a miss compiled by the requester with a redirect: the daemon reads the temp, which the requester renames after 'A'", async () => {
  const cwd = tempDir();
  const cache = new StubBackend();
  const { pipeline } = await setup({ cache });
  let given: OutputRedirect | undefined;
  const compileOnClient = async (_memo?: Buffer, _colour?: boolean, redirect?: OutputRedirect): Promise<CompilerRun> => {
    given = redirect;
    fs.writeFileSync(redirect!.temp, 'clang wrote this');
    fs.writeFileSync(redirect!.output, 'the other build');
    return { exitCode: 0, signal: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), ms: 5 };
  };
  const released = () => fs.renameSync(given!.temp, given!.output);
  const miss = expectKind(await pipeline.runJob(request(cwd, 'a'), { ...live(), compileOnClient, clientRedirects: true, released }), 'miss');
  await pipeline.idle();
  assert.deepEqual({ ...given, temp: undefined }, { index: 7, arg: given!.arg, temp: undefined, output: join(cwd, 'a.native.o') });
  assert.equal(given!.temp, join(cwd, given!.arg));
  assert.equal(cache.entries.get(miss.key)?.files.get('obj')?.toString(), 'clang wrote this');
  // Without the capability the requester is sent no redirect.
  let none: OutputRedirect | undefined | null = null;
  const plain = async (_m?: Buffer, _c?: boolean, redirect?: OutputRedirect): Promise<CompilerRun> => {
    none = redirect;
    fs.writeFileSync(join(cwd, 'b.native.o'), 'b');
    return { exitCode: 0, signal: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), ms: 5 };
  };
  expectKind(await pipeline.runJob(request(cwd, 'b'), { ...live(), compileOnClient: plain }), 'miss');
  assert.equal(none, undefined);
});

test("a redirected run that prints the temp name is run again as given; one that fails without naming it is clang's outcome, run once", async () => {
  for (const how of ['fails', 'names the temp'] as const) {
    const cwd = tempDir();
    const cache = new StubBackend();
    const { compiler } = await setup({ cache });
    if (how === 'fails') compiler.exitOf = () => 1;
    compiler.stderr = Buffer.from('error: first\n');
    const named = async (o: RunOptions): Promise<CompilerRun> => {
      const run = await compiler.run(o);
      const out = o.args[o.args.indexOf('-o') + 1]!;
      return how === 'names the temp' && out !== 'a.native.o' ? { ...run, stderr: Buffer.from(`warning: about ${out}\n`) } : run;
    };
    const { pipeline: p } = await setup({ cache, runCompiler: named });
    const miss = expectKind(await p.runJob(request(cwd, 'a'), live()), 'miss');
    await p.idle();
    if (how === 'fails') {
      assert.equal(miss.exitCode, 1);
      assert.equal(miss.stderr.toString(), 'error: first\n');
      assert.equal(compiler.runs.length, 1, 'run once, as clang alone');
      assert.equal(cache.entries.size, 0);
      // The stand-in writes its output before it fails: left at the output's name, as clang alone would leave it.
      assert.deepEqual(fs.readdirSync(cwd), ['a.native.o']);
      continue;
    }
    assert.equal(miss.exitCode, 0, how);
    assert.equal(miss.stderr.length, 0, how);
    assert.deepEqual(
      compiler.runs.map((r) => r.args.includes('a.native.o')),
      [false, true],
      how,
    );
    // The run as given is stored as any output read at its own name.
    assert.equal(cache.entries.get(miss.key)?.files.get('obj')?.toString(), 'object of a.o', how);
    assert.deepEqual(fs.readdirSync(cwd), ['a.native.o'], how);
  }
});

test('which outputs are redirected: one output whose name is not in the bytes, named by exactly one argument', async () => {
  const cwd = tempDir();
  const job = async (a: string[]) => {
    const r = await parseJob(a, cwd);
    assert.equal(r.kind, 'job');
    return (r as Extract<typeof r, { kind: 'job' }>).job;
  };
  const base = ['-x', 'ir', '-fthinlto-index=a.o.thinlto.bc', '-c', 'a.o'];
  for (const [a, index, prefix] of [
    [[...base, '-o', 'out/a.o'], 6, ''],
    [[...base, '-oout/a.o'], 5, '-o'],
    [[...base, '--output=out/a.o'], 5, '--output='],
    [[...base, '--output', 'out/a.o'], 6, ''],
  ] as const) {
    const r = outputRedirect(await job([...a]), a, cwd);
    assert.ok(r, a.join(' '));
    assert.equal(r.index, index);
    assert.match(r.arg, new RegExp(`^${prefix}out/\\.a\\.o\\.ltocache-out-[0-9a-f]{12}$`));
    assert.equal(r.output, join(cwd, 'out/a.o'));
    assert.equal(r.temp, join(cwd, r.arg.slice(prefix.length)));
  }
  fs.writeFileSync(join(cwd, 'a.rsp'), '-o a.native.o');
  assert.equal(outputRedirect(await job([...base, '@a.rsp']), [...base, '@a.rsp'], cwd), null, '-o in a response file');
  assert.equal(outputRedirect(await job([...base, '-gsplit-dwarf', '-o', 'a.native.o']), [...base, '-gsplit-dwarf', '-o', 'a.native.o'], cwd), null, 'two outputs');
  assert.equal(outputRedirect(await job([...base, '--coverage', '-o', 'a.native.o']), [...base, '--coverage', '-o', 'a.native.o'], cwd), null, 'name in the bytes');
  const long = `${'n'.repeat(201)}.o`;
  assert.equal(outputRedirect(await job([...base, '-o', long]), [...base, '-o', long], cwd), null, 'a name too long for the temp');
  // The temp is renamed, read and removed by its absolute path: one past PATH_MAX would be left behind.
  const deep = `/${'d'.repeat(200)}`.repeat(25);
  assert.ok(outputRedirect(await job([...base, '-o', 'a.native.o']), [...base, '-o', 'a.native.o'], deep.slice(0, 3900)));
  assert.ok(!outputRedirect(await job([...base, '-o', 'a.native.o']), [...base, '-o', 'a.native.o'], deep.slice(0, 4080)), 'a temp past PATH_MAX');
  // An existing output clang would not replace by a rename: one it may not write (its error), or
  // one that is not a regular file (written into in place).
  fs.mkdirSync(join(cwd, 'dir.o'));
  assert.equal(outputRedirect(await job([...base, '-o', 'dir.o']), [...base, '-o', 'dir.o'], cwd), null, 'a directory at the output');
  fs.symlinkSync('/dev/null', join(cwd, 'null.o'));
  assert.equal(outputRedirect(await job([...base, '-o', 'null.o']), [...base, '-o', 'null.o'], cwd), null, '/dev/null through a link');
  fs.symlinkSync('nowhere/x.o', join(cwd, 'dangling.o'));
  assert.ok(outputRedirect(await job([...base, '-o', 'dangling.o']), [...base, '-o', 'dangling.o'], cwd), 'a dangling link is replaced, as clang replaces it');
});

test('a redirected run ended by a signal is not run again: its outcome is the one served', async () => {
  const cwd = tempDir();
  const cache = new StubBackend();
  const { compiler } = await setup({ cache });
  // Killed from outside (the OOM killer, `kill -9`) after writing nothing about the temp.
  const killed = async (o: RunOptions): Promise<CompilerRun> => ({ ...(await compiler.run(o)), exitCode: 137, signal: 9 });
  const { pipeline } = await setup({ cache, runCompiler: killed });
  const miss = expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'miss');
  await pipeline.idle();
  assert.equal(miss.signal, 9);
  assert.equal(compiler.runs.length, 1, 'run once, as clang alone');
  assert.equal(cache.entries.size, 0);
  // What it wrote before it was killed is at the output's name, where it would be without the redirect.
  assert.deepEqual(fs.readdirSync(cwd), ['a.native.o']);
});

test('an output read at its own name is refused when it changed after the compiler ended or while read', () => {
  const f = join(tempDir(), 'x.o');
  fs.writeFileSync(f, 'object');
  assert.equal(readOutputSync(f, Date.now() - 10_000), 'raced');
  assert.equal(readOutputSync(f, Date.now())?.toString(), 'object');
  assert.equal(readOutputSync(f, null)?.toString(), 'object');
  assert.equal(readOutputSync(tempDir(), null), null);
});

test('identical concurrent jobs are compiled once', async () => {
  const cache = new StubBackend();
  const { pipeline, compiler, counters } = await setup({ cache });
  let open!: () => void;
  compiler.gate = new Promise((r) => (open = r));
  const cwds = [tempDir(), tempDir(), tempDir()];
  const running = cwds.map((cwd) => pipeline.runJob(request(cwd, 'a'), live()));
  await new Promise((r) => setTimeout(r, 50));
  open();
  const outcomes = await Promise.all(running);
  assert.equal(compiler.runs.length, 1);
  assert.deepEqual(outcomes.map((o) => (o.kind === 'hit' ? `hit:${o.tier}` : o.kind)).sort(), ['hit:inflight', 'hit:inflight', 'miss']);
  for (const cwd of cwds) assert.ok(fs.readFileSync(join(cwd, 'a.native.o')).equals(compiler.output('a.o')));
  assert.equal(counters.get('misses'), 1);
  assert.equal(counters.get('hits'), 2);
});

test("a job waiting on the same key's compile compiles itself when that compile fails: the failure may be the other command's own", async () => {
  const cache = new StubBackend();
  const { pipeline, compiler } = await setup({ cache });
  let open!: () => void;
  compiler.gate = new Promise((r) => (open = r));
  // The first command fails for a reason of its own (its output directory, an OOM kill): the key
  // leaves the output name and the directory out, so the second command has the same key.
  const [first, second] = [tempDir(), tempDir()];
  compiler.exitOf = (_, o) => (o.cwd === first ? 1 : 0);
  compiler.stderr = Buffer.from("error: unable to open output file 'elsewhere/a.native.o'\n");
  const a = pipeline.runJob(request(first, 'a'), live());
  await new Promise((r) => setTimeout(r, 20));
  const b = pipeline.runJob(request(second, 'a', 'b.native.o'), live());
  await new Promise((r) => setTimeout(r, 20));
  open();
  const [ra, rb] = await Promise.all([a, b]);
  assert.equal(expectKind(ra, 'miss').exitCode, 1);
  const mb = expectKind(rb, 'miss');
  assert.equal(mb.exitCode, 0, `the second command compiled itself: ${mb.stderr}`);
  assert.equal(mb.stderr.length, 0);
  // The first command's redirected run failed without naming its temp: that is its outcome, run once.
  assert.deepEqual(
    compiler.runs.map((r) => r.cwd),
    [first, second],
  );
  assert.ok(fs.readFileSync(join(second, 'b.native.o')).equals(compiler.output('a.o')));
});

test('the client compiles when it offers to, under the same concurrency limit', async () => {
  const cwd = tempDir();
  const cache = new StubBackend();
  const { pipeline, compiler } = await setup({ cache, jobs: 1 });
  let clientRuns = 0;
  const compileOnClient = async (): Promise<CompilerRun> => {
    clientRuns++;
    fs.writeFileSync(join(cwd, 'a.native.o'), 'from the client');
    return { exitCode: 0, signal: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), ms: 5 };
  };
  const miss = expectKind(await pipeline.runJob(request(cwd, 'a'), { ...live(), compileOnClient }), 'miss');
  assert.equal(miss.compiledOnClient, true);
  assert.equal(clientRuns, 1);
  assert.equal(compiler.runs.length, 0);
  await pipeline.idle();
  assert.equal(cache.entries.get(miss.key)?.files.get('obj')?.toString(), 'from the client');
});

test('compiles run outside the pipeline share its bound: with every slot taken, a miss waits', async () => {
  const cache = new StubBackend();
  const { pipeline, compiler } = await setup({ cache });
  // jobs = 4 (setup): a distribution's direct runs hold all four.
  const held = await Promise.all(Array.from({ length: 4 }, () => pipeline.compileSlot()));
  const miss = pipeline.runJob(request(tempDir(), 'a'), live());
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(compiler.runs.length, 0, 'no fifth compiler');
  held[0]!();
  assert.equal(expectKind(await miss, 'miss').exitCode, 0);
  assert.equal(compiler.runs.length, 1);
  for (const r of held.slice(1)) r();
});

test('a client stopped mid-compile holds its slot and its key only for the stuck time: other jobs, and the same job, go on', async () => {
  const cwd = tempDir();
  const cache = new StubBackend();
  const { pipeline, compiler, counters } = await setup({ cache, jobs: 1, slotStuckMs: 100 });
  // The requester of `a` takes the only slot and never reports (stopped).
  const stopped = pipeline.runJob(request(cwd, 'a'), { ...live(), compileOnClient: () => new Promise<CompilerRun>(() => {}) });
  await new Promise((r) => setTimeout(r, 10));
  const t0 = Date.now();
  const other = expectKind(await pipeline.runJob(request(cwd, 'b'), live()), 'miss');
  assert.ok(Date.now() - t0 >= 90, 'waited the stuck time first');
  assert.equal(other.exitCode, 0);
  assert.equal(counters.get(Counter.compile_slots_reclaimed), 1);
  // The same command again: it does not wait on the stopped compile for ever, it compiles itself.
  const same = expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'miss');
  assert.equal(same.exitCode, 0);
  assert.deepEqual(
    compiler.runs.map((r) => r.args.at(-1)),
    ['b.o', 'a.o'],
  );
  await pipeline.idle();
  void stopped;
});

test('uncacheable jobs are data, not errors', async () => {
  const cache = new StubBackend();
  const { pipeline, counters } = await setup({ cache });
  const o = expectKind(await pipeline.runJob({ ...request(tempDir(), 'a'), args: ['-c', 'x.c', '-o', 'x.o'] }, live()), 'uncacheable');
  assert.equal(o.reason, 'not-backend');
  assert.equal(o.record, false);
  assert.equal(counters.get('uncacheable'), 1);
  assert.equal(cache.calls.length, 0);
});

test('a store read error or a corrupt entry → compile; a store write error is counted, the job still served', async () => {
  const cwd = tempDir();
  const cache = new StubBackend();
  const { pipeline, compiler, counters } = await setup({ cache });
  cache.getResult = () => ({ kind: 'error', error: 'disk on fire', corrupt: false });
  cache.putResult = { kind: 'error', error: 'disk still on fire' };
  expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'miss');
  await pipeline.idle();
  cache.getResult = () => ({ kind: 'error', error: 'bad blob', corrupt: true });
  expectKind(await pipeline.runJob(request(cwd, 'b'), live()), 'miss');
  await pipeline.idle();
  assert.equal(compiler.runs.length, 2);
  assert.deepEqual(counters.snapshot().errors_by_kind, { store_read: 1, corrupt_entry: 1, store_write: 2 });
});

test('a compile that cannot run is an error outcome, counted', async () => {
  const cwd = tempDir();
  const { pipeline, compiler, counters } = await setup({ cache: new StubBackend() });
  compiler.gate = Promise.reject(new Error('ENOENT clang'));
  compiler.gate.catch(() => {});
  const o = expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'error');
  assert.match(o.error, /cannot run compiler: ENOENT clang/);
  assert.equal(o.record, true);
  assert.deepEqual(counters.snapshot().errors_by_kind, { compile: 1 });
});

test('tiered: a remote hit is served as remote and written back locally; puts go to both tiers', async () => {
  const cwd = tempDir();
  const local = new StubBackend('local');
  const remote = new StubBackend('remote');
  const { pipeline, keyer } = await setup({ cache: tiered(local, remote) });
  remote.entries.set(keyer.keyOf('a.o'), entryOf(Buffer.from('remote object')));
  const hit = expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'hit');
  assert.equal(hit.tier, 'remote');
  assert.equal(fs.readFileSync(join(cwd, 'a.native.o'), 'utf8'), 'remote object');
  await new Promise((r) => setTimeout(r, 10));
  assert.ok(local.entries.has(keyer.keyOf('a.o')), 'written back');

  expectKind(await pipeline.runJob(request(cwd, 'b'), live()), 'miss');
  await pipeline.idle();
  assert.ok(local.entries.has(keyer.keyOf('b.o')));
  assert.ok(remote.entries.has(keyer.keyOf('b.o')));
});

test('readOnly: reads pass through, puts are refused and counted', async () => {
  const cwd = tempDir();
  const inner = new StubBackend();
  const { pipeline, counters, keyer } = await setup({ cache: readOnly(inner) });
  inner.entries.set(keyer.keyOf('a.o'), entryOf(Buffer.from('stored')));
  expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'hit');
  expectKind(await pipeline.runJob(request(cwd, 'b'), live()), 'miss');
  await pipeline.idle();
  assert.equal(inner.count('put'), 0);
  assert.deepEqual(counters.snapshot().errors_by_kind, { store_refused: 1 });
});

test('verify mismatch: the key is denied in every tier and deleted from both until a fresh compile is stored', async () => {
  const cwd = tempDir();
  const local = new StubBackend('local');
  const remote = new StubBackend('remote');
  const storage = new MemoryDenyStorage();
  const { pipeline, compiler, counters, keyer, deny } = await setup({ cache: tiered(local, remote), verifyShare: 1 }, storage);
  const key = keyer.keyOf('a.o');
  const wrong = entryOf(Buffer.from('a stale object'));
  local.entries.set(key, wrong);
  remote.entries.set(key, wrong);

  const served = expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'hit');
  assert.equal(served.tier, 'local');
  await pipeline.idle();
  assert.equal(counters.get('verify_runs'), 1);
  assert.equal(counters.get('verify_mismatches'), 1);
  assert.ok(deny.has(key));
  assert.ok(storage.map.has(key), 'the deny list is persisted');
  assert.equal(local.count('delete'), 1);
  assert.equal(remote.count('delete'), 1, 'the team tier is told');
  assert.deepEqual(
    fs.readdirSync(cwd).filter((f) => f.includes('verify')),
    [],
    'the verify temp file is removed',
  );

  // A tier that still has it (another client uploaded it again) is not asked while denied.
  remote.entries.set(key, wrong);
  const before = remote.count('get') + local.count('get');
  let open!: () => void;
  compiler.gate = new Promise((r) => (open = r));
  const recompile = pipeline.runJob(request(cwd, 'a'), live());
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(remote.count('get') + local.count('get'), before, 'no tier is read for a denied key');
  open();
  const fresh = expectKind(await recompile, 'miss');
  assert.equal(fresh.key, key);
  await pipeline.idle();
  assert.ok(fs.readFileSync(join(cwd, 'a.native.o')).equals(compiler.output('a.o')));
  assert.equal(deny.has(key), false, 'a stored fresh compile lifts the denial');
  assert.equal(storage.map.has(key), false);
  assert.ok(remote.entries.get(key)?.files.get('obj')?.equals(compiler.output('a.o')), 'the fresh compile replaced the team entry');

  // Served again, and this time it verifies.
  expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'hit');
  await pipeline.idle();
  assert.equal(counters.get('verify_mismatches'), 1);
});

test('verify: an audit whose inputs changed since the hit is skipped, not a mismatch', async () => {
  const cwd = tempDir();
  const local = new StubBackend('local');
  const { pipeline, compiler, counters, keyer, deny } = await setup({ cache: local, verifyShare: 1 });
  const key = keyer.keyOf('a.o');
  local.entries.set(key, entryOf(compiler.output('a.o')));
  let open!: () => void;
  compiler.gate = new Promise((r) => (open = r));
  expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'hit');
  // The build goes on: the input changes while the audit compiles, which then sees other bytes.
  keyer.versions.set('a.o', 1);
  compiler.output = (input) => Buffer.from(`edited object of ${input}`);
  open();
  await pipeline.idle();
  assert.equal(counters.get('verify_mismatches'), 0);
  assert.equal(counters.get('verify_skipped'), 1);
  assert.equal(counters.get('verify_runs'), 0);
  assert.equal(deny.has(key), false, 'the entry is not purged');
  assert.equal(local.count('delete'), 0);
});

test('a persisted denial survives a restart: the denied key is compiled, not served', async () => {
  const cwd = tempDir();
  const storage = new MemoryDenyStorage();
  const cache = new StubBackend();
  const { keyer } = await setup({ cache });
  const key = keyer.keyOf('a.o');
  cache.entries.set(key, entryOf(Buffer.from('a stale object')));
  await storage.put(key, { reason: 'verify mismatch', at: 1 });
  const { pipeline, compiler } = await setup({ cache }, storage);
  expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'miss');
  assert.equal(compiler.runs.length, 1);
  assert.equal(cache.count('get'), 0);
});

test('LRU: an entry served from memory is touched, so eviction takes the unused ones first', async (t: TestContext) => {
  const cwd = tempDir();
  let now = 1_000;
  const store = await LocalStore.open({ dir: tempDir(), maxBytes: 35_000, now: () => now, touchIntervalMs: 0 });
  t.after(() => store.close());
  const { pipeline, compiler, keyer } = await setup({ cache: store });
  compiler.output = (input) => Buffer.alloc(10_000, input.charCodeAt(0));
  for (const m of ['a', 'b', 'c']) {
    now += 1_000;
    expectKind(await pipeline.runJob(request(cwd, m), live()), 'miss');
    await pipeline.idle();
  }
  for (let i = 0; i < 3; i++) {
    now += 1_000;
    assert.equal(expectKind(await pipeline.runJob(request(cwd, 'a'), live()), 'hit').tier, 'memory');
    await pipeline.idle();
  }
  now += 1_000;
  expectKind(await pipeline.runJob(request(cwd, 'd'), live()), 'miss');
  await pipeline.idle();
  assert.equal(store.counters.evictions, 1);
  const present = async (m: string) => (await store.get(keyer.keyOf(`${m}.o`))).kind === 'hit';
  assert.equal(await present('a'), true, 'the entry used most survives');
  assert.equal(await present('b'), false, 'the least recently used one is evicted');
});
