/**
 * Drives the real native client bin/ltocache against an in-test Unix-socket server built from
 * clientFrames.ts. The server stands in for the daemon only to exercise the client's side of
 * the wire; "the compiler runs" always means the real clang-19.
 */

import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { clientCacheDir, socketDirName } from '../../src/config/cacheDir.js';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { decodeMemo, encodeMemo, lookupDigest, type MemoCheck, memoPath } from '../../src/memo/memoFormat.js';
import {
  type CompileRequest,
  type Done,
  decodeCompileRequest,
  decodeDone,
  decodeStored,
  encodeAck,
  encodeCompileYourself,
  encodeFrame,
  encodeHitStore,
  encodeJson,
  encodePassthrough,
  encodeResult,
  encodeStoreYourself,
  encodeWait,
  FRAME_DONE,
  FRAME_STORED,
  FrameDecoder,
  MAX_DONE_PAYLOAD,
  socketDirFor,
  socketPathFor,
} from '../../src/protocol/clientFrames.js';
import { DAEMON_MALLOC_ARENA_MAX, DAEMON_SEMI_SPACE_MB, MAX_OUTPUT_STREAM } from '../../src/protocol/limits.js';
import { tempDir } from '../support/env.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const client = path.join(root, 'bin', 'ltocache');
const uid = process.getuid!();
const COMPILER = 'clang-19';
const ORIG_PATH = process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin';

let tmp: string;
let recorder: string; // stand-in for $LTOCACHE_NODE: records its arguments, starts nothing
let recorderLog: string;
/** MALLOC_ARENA_MAX as each run of the fake node saw it. */
let arenaLog: string;
let realCompiler: string;

function findOnPath(name: string, searchPath: string): string | undefined {
  for (const dir of searchPath.split(':')) {
    const p = path.join(dir || '.', name);
    try {
      const st = fs.statSync(p);
      if (st.isFile()) {
        fs.accessSync(p, fs.constants.X_OK);
        return path.isAbsolute(p) ? p : path.resolve(p);
      }
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** /tmp/ltocache-<uid> must be a 0700 directory we own; the real daemon uses it too, so it is
 * created if missing and only repaired (chmod) if we own it with a wrong mode. */
function ensureSocketDir(): void {
  const dir = socketDirFor(uid);
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  const st = fs.lstatSync(dir);
  if (!st.isDirectory() || st.uid !== uid) throw new Error(`${dir} is not a directory owned by us`);
  if ((st.mode & 0o777) !== 0o700) fs.chmodSync(dir, 0o700);
}

let seq = 0;
function newCacheDir(): string {
  return path.join(tmp, `cache-${++seq}`);
}

interface RunResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: Buffer;
  ms: number;
}

function run(cmd: string, args: string[], opts: { env: NodeJS.ProcessEnv; cwd?: string; uid?: number; gid?: number; stdoutFd?: number; killAfterMs?: number }): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(cmd, args, {
      env: opts.env,
      cwd: opts.cwd ?? tmp,
      stdio: ['ignore', opts.stdoutFd ?? 'pipe', 'pipe'],
      ...(opts.uid !== undefined ? { uid: opts.uid, gid: opts.gid ?? opts.uid } : {}),
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.killAfterMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err), ms: Date.now() - t0 });
    });
  });
}

function baseEnv(cacheDir: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    PATH: ORIG_PATH,
    HOME: tmp,
    LANG: 'C',
    LTOCACHE_DIR: cacheDir,
    LTOCACHE_NODE: recorder,
    LTOCACHE_START_TIMEOUT_MS: '200',
    ...extra,
  };
}

type Handler = (req: CompileRequest, sock: net.Socket) => void;

interface FakeDaemon {
  connections: number;
  requests: CompileRequest[];
  errors: string[];
  close(): Promise<void>;
}

/** Listens on `socketPath`; for each connection decodes one compile request and hands it to
 * `handler`, which writes whatever reply the test wants. */
async function fakeDaemon(socketPath: string, handler: Handler): Promise<FakeDaemon> {
  fs.rmSync(socketPath, { force: true });
  const state: FakeDaemon = {
    connections: 0,
    requests: [],
    errors: [],
    close: () => new Promise<void>((res) => server.close(() => res())),
  };
  const server = net.createServer((sock) => {
    state.connections++;
    const dec = new FrameDecoder();
    let done = false;
    sock.on('error', () => {});
    sock.on('data', (chunk) => {
      if (done) return;
      try {
        const frames = dec.push(chunk);
        if (frames.length === 0) return;
        done = true;
        const req = decodeCompileRequest(frames[0]!);
        state.requests.push(req);
        handler(req, sock);
      } catch (e) {
        state.errors.push(String(e));
        sock.destroy();
      }
    });
  });
  await new Promise<void>((res, rej) => {
    server.once('error', rej);
    server.listen(socketPath, () => res());
  });
  return state;
}

async function withDaemon<T>(cacheDir: string, handler: Handler, body: (d: FakeDaemon) => Promise<T>): Promise<T> {
  const d = await fakeDaemon(socketPathFor(cacheDir, uid), handler);
  try {
    return await body(d);
  } finally {
    await d.close();
  }
}

const reply =
  (frame: Buffer): Handler =>
  (_req, sock) =>
    sock.end(frame);

/** Answers 'M' (a miss: the client compiles), records the client's 'D' and acknowledges it. */
function compileYourself(dones: Done[]): Handler {
  return (req, sock) => {
    const dec = new FrameDecoder(MAX_DONE_PAYLOAD);
    sock.on('data', (chunk: Buffer) => {
      for (const f of dec.push(chunk)) {
        dones.push(decodeDone(f));
        sock.end(encodeAck());
      }
    });
    sock.write(encodeCompileYourself(req.compileOptions ? { colour: false } : undefined));
  };
}

/** A backend job whose inputs don't exist: clang-19 fails deterministically (exit 1). */
const MISSING_JOB = ['-x', 'ir', '-fthinlto-index=nope.o.thinlto.bc', '-c', '-o', 'nope.native.o', 'nope.o'];

before(() => {
  // LTOCACHE_TEST_PREBUILT_CLIENT=1: test a bin/ltocache built otherwise (e.g. with sanitizers).
  if (!process.env.LTOCACHE_TEST_PREBUILT_CLIENT) execFileSync('sh', [path.join(root, 'client', 'build.sh')], { stdio: 'inherit' });
  tmp = fs.realpathSync(tempDir('client-e2e'));
  recorderLog = path.join(tmp, 'recorder.log');
  recorder = path.join(tmp, 'fake-node.sh');
  arenaLog = path.join(tmp, 'arena.log');
  fs.writeFileSync(recorder, `#!/bin/sh\nprintf '%s\\n' "$*" >> '${recorderLog}'\nprintf '%s\\n' "\${MALLOC_ARENA_MAX-unset}" >> '${arenaLog}'\nprintf 'recorder:%s\\n' "$*"\n`, {
    mode: 0o755,
  });
  fs.writeFileSync(path.join(tmp, 'warn.c'), '#warning "hello from ltocache test"\nint f(void) { return 1; }\n');
  fs.writeFileSync(path.join(tmp, 'warn.rsp'), '-c warn.c -o warn.o\n');
  fs.writeFileSync(path.join(tmp, 'version.rsp'), '--version\n');
  const found = findOnPath(COMPILER, ORIG_PATH);
  assert.ok(found, `${COMPILER} must be on PATH for this test`);
  realCompiler = found;
  ensureSocketDir();
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

function recorded(): string[] {
  try {
    return fs.readFileSync(recorderLog, 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

test('C and TypeScript agree on the socket path (LTOCACHE_PRINT_SOCKET=1)', async () => {
  const cases: NodeJS.ProcessEnv[] = [
    { LTOCACHE_DIR: '/var/cache/ltocache' },
    { LTOCACHE_DIR: '/var/cache/ltocache///' },
    { LTOCACHE_DIR: '/home/ünïcødé/cache dir' },
    { LTOCACHE_DIR: '/' },
    { LTOCACHE_DIR: '', XDG_CACHE_HOME: '/xdg', HOME: '/home/u' },
    { XDG_CACHE_HOME: '/xdg/', HOME: '/home/u' },
    { XDG_CACHE_HOME: 'relative-xdg', HOME: '/home/u/' },
    { HOME: '/root' },
  ];
  // Spellings of one directory: each must name the socket of its real path.
  const realDir = path.join(fs.realpathSync(tmp), 'spelled-cache');
  fs.mkdirSync(realDir, { recursive: true });
  fs.symlinkSync(realDir, path.join(tmp, 'spelled-link'));
  const spellings = [realDir, `${path.dirname(realDir)}//spelled-cache`, `${realDir}/./`, path.join(tmp, 'spelled-link'), `${realDir}/x/..`, `${realDir}/not-made/../sub/./deeper`];
  for (const d of spellings) cases.push({ LTOCACHE_DIR: d });
  for (const env of cases) {
    const r = await run(client, [], { env: { ...env, LTOCACHE_PRINT_SOCKET: '1' } });
    const dir = clientCacheDir(env);
    assert.ok(dir, JSON.stringify(env));
    assert.equal(r.status, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), `${socketPathFor(socketDirName(dir), uid)}\n`, JSON.stringify(env));
  }
  for (const d of spellings.slice(0, 5)) assert.equal(socketDirName(d), realDir, d);
  assert.equal(socketDirName(spellings[5]!), path.join(realDir, 'sub', 'deeper'));
  for (const env of [{ LTOCACHE_DIR: 'rel/dir' }, { HOME: 'h' }, {}] as NodeJS.ProcessEnv[]) {
    assert.equal(clientCacheDir(env), undefined);
    const r = await run(client, [], { env: { ...env, LTOCACHE_PRINT_SOCKET: '1' } });
    assert.equal(r.status, 1, JSON.stringify(env));
  }
});

test("reply 'R': output bytes and exit status are exactly the daemon's", async () => {
  const stdout = Buffer.concat([Buffer.from([0, 1, 2, 255]), Buffer.alloc(3 << 20, 'x'), Buffer.from('end\n')]);
  const stderr = Buffer.from('mm/util.c:1:2: warning: stack frame size (1032) exceeds limit (1024)\n');
  const frame = encodeResult(3, stdout, stderr);
  const cacheDir = newCacheDir();
  // Write the frame in pieces with pauses: the client must reassemble it.
  const handler: Handler = (_req, sock) => {
    sock.write(frame.subarray(0, 2));
    setTimeout(() => sock.write(frame.subarray(2, 1000)), 20);
    setTimeout(() => sock.end(frame.subarray(1000)), 40);
  };
  await withDaemon(cacheDir, handler, async (d) => {
    const r = await run(client, [COMPILER, ...MISSING_JOB], { env: baseEnv(cacheDir) });
    assert.equal(d.connections, 1);
    assert.equal(r.status, 3);
    assert.ok(r.stdout.equals(stdout), 'stdout replayed byte for byte');
    assert.ok(r.stderr.equals(stderr), 'stderr replayed byte for byte');
  });
});

test("reply 'R' to a non-blocking stderr pipe read slowly: every byte arrives and the exit status is the daemon's", async () => {
  // A Node-based driver (`npm run build | tee log`) can leave its children a non-blocking pipe;
  // clang's own output waits when it is full, so the replay must too.
  const stderr = Buffer.alloc(256 << 10, 'warning: remark\n');
  const cacheDir = newCacheDir();
  const fifo = path.join(tmp, `stderr-${seq++}.fifo`);
  execFileSync('mkfifo', [fifo]);
  const rfd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const wfd = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
  await withDaemon(cacheDir, reply(encodeResult(0, Buffer.alloc(0), stderr)), async () => {
    // libuv makes a child's stdio blocking again, so perl (perl-base is essential in Debian) sets
    // O_NONBLOCK on the pipe's description and execs the client.
    const nonblocking = 'use Fcntl; fcntl(STDERR, F_SETFL, fcntl(STDERR, F_GETFL, 0) | O_NONBLOCK) or die; exec @ARGV or die';
    const child = spawn('perl', ['-e', nonblocking, client, COMPILER, ...MISSING_JOB], { env: baseEnv(cacheDir), stdio: ['ignore', 'ignore', wfd] });
    fs.closeSync(wfd);
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    // Not read for a while: the pipe (64 KiB) fills and the client's writes get EAGAIN.
    await new Promise((r) => setTimeout(r, 300));
    const got: Buffer[] = [];
    const buf = Buffer.alloc(1 << 16);
    for (let eof = false; !eof; ) {
      try {
        const n = fs.readSync(rfd, buf);
        if (n === 0) eof = true;
        else got.push(Buffer.from(buf.subarray(0, n)));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    fs.closeSync(rfd);
    assert.equal(await exited, 0);
    assert.ok(Buffer.concat(got).equals(stderr), `${Buffer.concat(got).length} of ${stderr.length} bytes`);
  });
});

test("reply 'R' with signal N: the client dies of signal N (no core); exit 128+N stays an exit", async () => {
  const cacheDir = newCacheDir();
  await withDaemon(cacheDir, reply(encodeResult({ exit: 128 + 15, signal: 15 }, Buffer.from('o'), Buffer.from('e'))), async () => {
    const r = await run(client, [COMPILER, ...MISSING_JOB], { env: baseEnv(cacheDir) });
    assert.equal(r.signal, 'SIGTERM');
    assert.equal(r.stdout.toString(), 'o');
    assert.equal(r.stderr.toString(), 'e');
  });
  await withDaemon(cacheDir, reply(encodeResult({ exit: 139, signal: 11 }, Buffer.alloc(0), Buffer.alloc(0))), async () => {
    const r = await run('sh', ['-c', 'ulimit -c unlimited 2>/dev/null; cd "$1" && exec "$2" clang-19 "@x"', 'sh', tmp, client], { env: baseEnv(cacheDir) });
    assert.equal(r.signal, 'SIGSEGV');
    assert.deepEqual(
      fs.readdirSync(tmp).filter((f) => /^core/.test(f)),
      [],
      'no core file',
    );
  });
  await withDaemon(cacheDir, reply(encodeResult(130, Buffer.alloc(0), Buffer.from('e'))), async () => {
    const r = await run(client, [COMPILER, ...MISSING_JOB], { env: baseEnv(cacheDir) });
    assert.equal(r.signal, null);
    assert.equal(r.status, 130);
  });
});

test('the request carries compiler, cwd, args, umask and env exactly', async () => {
  const cacheDir = newCacheDir();
  const cwd = path.join(tmp, 'work dir');
  fs.mkdirSync(cwd, { recursive: true });
  const args = ['-x', 'ir', '', 'two words', 'ünïcødé ✓', '-fthinlto-index=a b.thinlto.bc', '@x.rsp', '--', '-c'];
  const env = baseEnv(cacheDir, { FOO: 'bar=baz', EMPTY: '', CCC_OVERRIDE_OPTIONS: '#' });
  await withDaemon(cacheDir, reply(encodeResult(0, Buffer.alloc(0), Buffer.alloc(0))), async (d) => {
    const old = process.umask(0o027);
    let p: Promise<RunResult>;
    try {
      p = run(client, [COMPILER, ...args], { env, cwd });
    } finally {
      process.umask(old);
    }
    const r = await p;
    assert.equal(r.status, 0, r.stderr.toString());
    assert.deepEqual(d.errors, []);
    const req = d.requests[0]!;
    assert.equal(req.version, 2);
    assert.equal(req.compiler, realCompiler);
    assert.equal(req.cwd, cwd);
    assert.deepEqual(req.args, args);
    assert.equal(req.umask, 0o027);
    assert.equal(req.stderrTty, false);
    assert.deepEqual({ ...req.env }, env);
  });
});

test('a relative compiler path is sent as an absolute one', async () => {
  const cacheDir = newCacheDir();
  const bin = path.join(tmp, 'relbin');
  fs.mkdirSync(bin, { recursive: true });
  fs.symlinkSync(realCompiler, path.join(bin, 'cc-rel'));
  await withDaemon(cacheDir, reply(encodeResult(0, Buffer.alloc(0), Buffer.alloc(0))), async (d) => {
    const r = await run(client, ['./relbin/cc-rel', ...MISSING_JOB], { env: baseEnv(cacheDir) });
    assert.equal(r.status, 0);
    assert.equal(d.requests[0]!.compiler, `${tmp}/./relbin/cc-rel`); // absolute, not normalised
  });
});

/** The compiler's own result for a command, run directly (argv[0] as the client would give). */
function direct(args: string[], env: NodeJS.ProcessEnv): Promise<RunResult> {
  return run(COMPILER, args, { env });
}

test("reply 'P': the client runs the compiler itself", async () => {
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir);
  const ref = await direct(['@warn.rsp'], env);
  assert.equal(ref.status, 0);
  assert.match(ref.stderr.toString(), /hello from ltocache test/);
  fs.rmSync(path.join(tmp, 'warn.o'));
  await withDaemon(cacheDir, reply(encodePassthrough('not cacheable: test')), async (d) => {
    const r = await run(client, [COMPILER, '@warn.rsp'], { env });
    assert.equal(d.connections, 1);
    assert.equal(r.status, ref.status);
    assert.ok(r.stdout.equals(ref.stdout));
    assert.ok(r.stderr.equals(ref.stderr), r.stderr.toString());
    assert.ok(fs.existsSync(path.join(tmp, 'warn.o')), 'the compiler produced its object');
  });
});

test('broken replies: the compiler runs and its real output and status come through', async () => {
  const partial = encodeResult(0, Buffer.from('PARTIAL-OUT'), Buffer.from('PARTIAL-ERR'));
  const hugeHeader = Buffer.alloc(8);
  hugeHeader.writeUInt32LE(0xffffffff, 0);
  const status300 = Buffer.from(encodeResult(0, Buffer.from('PARTIAL-OUT'), Buffer.alloc(0)));
  status300.writeInt32LE(300, 5);
  const trailing = encodeFrame(Buffer.concat([encodeResult(0, Buffer.from('PARTIAL-OUT'), Buffer.alloc(0)).subarray(4), Buffer.from('x')]));
  const cases: [string, Handler][] = [
    ['garbage', reply(Buffer.from('this is not a frame at all, just garbage bytes'))],
    ['close early', (_req, sock) => sock.destroy()],
    ['close after half a header', reply(partial.subarray(0, 2))],
    ['truncated R frame', reply(partial.subarray(0, partial.length - 3))],
    ['unknown frame type', reply(encodeJson({ hello: 'PARTIAL-OUT' }))],
    ['zero-length frame', reply(Buffer.alloc(4))],
    ['length above 256 MiB', reply(hugeHeader)],
    ['exit status out of range', reply(status300)],
    ['trailing bytes in R', reply(trailing)],
    ['truncated P frame', reply(encodePassthrough('reason').subarray(0, 8))],
  ];
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir);
  const ref = await direct(MISSING_JOB, env);
  assert.equal(ref.status, 1);
  assert.ok(ref.stderr.length > 0);
  for (const [name, handler] of cases) {
    await withDaemon(cacheDir, handler, async (d) => {
      const r = await run(client, [COMPILER, ...MISSING_JOB], { env });
      assert.equal(d.connections, 1, name);
      assert.equal(r.status, ref.status, name);
      assert.ok(r.stdout.equals(ref.stdout), name);
      assert.ok(r.stderr.equals(ref.stderr), `${name}: ${r.stderr.toString()}`);
      assert.doesNotMatch(r.stdout.toString() + r.stderr.toString(), /PARTIAL/, name);
    });
  }
  assert.deepEqual(recorded(), [], 'a listening daemon is never re-spawned');
});

test('no backend job: the daemon is never contacted', async () => {
  const cacheDir = newCacheDir();
  await withDaemon(cacheDir, reply(encodeResult(0, Buffer.from('CONTACTED'), Buffer.alloc(0))), async (d) => {
    const r = await run(client, [COMPILER, '-c', 'warn.c', '-o', 'plain.o'], { env: baseEnv(cacheDir) });
    assert.equal(r.status, 0);
    assert.match(r.stderr.toString(), /hello from ltocache test/);
    assert.ok(fs.existsSync(path.join(tmp, 'plain.o')));
    // -fthinlto-index only counts as a prefix of an argument
    const r2 = await run(client, [COMPILER, '-DX=-fthinlto-index=y', '--version'], { env: baseEnv(cacheDir) });
    assert.equal(r2.status, 0);
    assert.match(r2.stdout.toString(), /clang version/);
    assert.equal(d.connections, 0);
  });
});

test('LTOCACHE_DISABLE: set and not 0 means direct exec', async () => {
  const cacheDir = newCacheDir();
  await withDaemon(cacheDir, reply(encodeResult(0, Buffer.from('CONTACTED'), Buffer.alloc(0))), async (d) => {
    const off = await run(client, [COMPILER, '@version.rsp'], { env: baseEnv(cacheDir, { LTOCACHE_DISABLE: '1' }) });
    assert.match(off.stdout.toString(), /clang version/);
    assert.equal(d.connections, 0);
    const on = await run(client, [COMPILER, '@version.rsp'], { env: baseEnv(cacheDir, { LTOCACHE_DISABLE: '0' }) });
    assert.equal(on.stdout.toString(), 'CONTACTED');
    const empty = await run(client, [COMPILER, '@version.rsp'], { env: baseEnv(cacheDir, { LTOCACHE_DISABLE: '' }) });
    assert.equal(empty.stdout.toString(), 'CONTACTED');
    assert.equal(d.connections, 2);
  });
});

test("a Ctrl-C while a redirected miss waits for the daemon's 'A' ends the client at once, its temp removed", async () => {
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir, { LTOCACHE_SILENCE_TIMEOUT_MS: '30000' });
  const work = fs.mkdtempSync(path.join(tmp, 'redirect-ack-'));
  const rec = path.join(work, 'rec.sh');
  fs.writeFileSync(rec, `#!/bin/sh\nout=; prev=; for a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; done\necho obj > "$out"\n`, { mode: 0o755 });
  const temp = path.join(work, '.x.o.ltocache-out-0123456789ab');
  const redirect = { index: 1, arg: path.basename(temp), temp, output: path.join(work, 'x.o') };
  let done: () => void = () => {};
  const reported = new Promise<void>((r) => (done = r));
  // A daemon that reads 'D' and never answers (stuck, or starved of CPU).
  await withDaemon(
    cacheDir,
    (_req, sock) => {
      const dec = new FrameDecoder(MAX_DONE_PAYLOAD);
      sock.on('data', (chunk: Buffer) => {
        for (const f of dec.push(chunk)) {
          decodeDone(f);
          done();
        }
      });
      sock.write(encodeCompileYourself({ colour: false, redirect }));
    },
    async () => {
      const started = Date.now();
      const child = spawn(client, [rec, '-o', 'x.o', '@x'], { env, cwd: work, stdio: 'ignore' });
      const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await reported;
      assert.ok(fs.existsSync(temp), "at 'D' the object is at the temp");
      child.kill('SIGINT');
      const end = await ended;
      clearTimeout(timer);
      assert.equal(end.signal, 'SIGINT', `ended ${JSON.stringify(end)} after ${Date.now() - started} ms`);
      assert.ok(!fs.existsSync(temp), 'the temp was removed');
      assert.ok(!fs.existsSync(redirect.output));
    },
  );
});

test('an output redirect over an existing output the client may not write: the compiler runs as given, nothing reported', {
  skip: uid !== 0 ? 'needs root to run the client under another uid' : false,
}, async () => {
  // The daemon checks the output with its own credentials when it answers; the client checks it
  // again as clang will see it (its groups may differ from a daemon started earlier, and time passes).
  const other = 4_200_000 + (process.pid % 10_000);
  const sockDir = socketDirFor(other);
  assert.ok(!fs.existsSync(sockDir), sockDir);
  const pub = tempDir('client-ro');
  try {
    fs.chmodSync(pub, 0o755);
    fs.chownSync(pub, other, other);
    fs.copyFileSync(client, path.join(pub, 'ltocache'));
    fs.chmodSync(path.join(pub, 'ltocache'), 0o755);
    const rec = path.join(pub, 'rec.sh');
    fs.writeFileSync(rec, `#!/bin/sh\nprintf '%s\\n' "$@" >> args.log\nout=; prev=; for a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; done\necho obj > "$out"\n`, {
      mode: 0o755,
    });
    const out = path.join(pub, 'x.o');
    fs.writeFileSync(out, 'old\n');
    fs.chownSync(out, other, other);
    fs.chmodSync(out, 0o444);
    const temp = path.join(pub, '.x.o.ltocache-out-0123456789ab');
    const cacheDir = path.join(pub, 'cache');
    const env = { PATH: ORIG_PATH, HOME: pub, LANG: 'C', LTOCACHE_DIR: cacheDir, LTOCACHE_NODE: '/bin/false', LTOCACHE_START_TIMEOUT_MS: '100' };
    fs.mkdirSync(sockDir, { mode: 0o700 });
    fs.chownSync(sockDir, other, other);
    const dones: string[] = [];
    const d = await fakeDaemon(socketPathFor(cacheDir, other), (_req, sock) => {
      const dec = new FrameDecoder(MAX_DONE_PAYLOAD);
      sock.on('data', (chunk: Buffer) => {
        for (const f of dec.push(chunk)) {
          decodeDone(f);
          dones.push(fs.existsSync(temp) ? 'temp' : '-');
          sock.end(encodeAck());
        }
      });
      sock.write(encodeCompileYourself({ colour: false, redirect: { index: 1, arg: path.basename(temp), temp, output: out } }));
    });
    try {
      fs.chmodSync(socketPathFor(cacheDir, other), 0o777);
      const r = await run(path.join(pub, 'ltocache'), [rec, '-o', 'x.o', '@x'], { env, cwd: pub, uid: other });
      assert.equal(d.connections, 1);
      assert.equal(fs.readFileSync(path.join(pub, 'args.log'), 'utf8'), '-o\nx.o\n@x\n', `run as given; stderr: ${r.stderr}`);
      assert.deepEqual(dones, [], 'nothing reported');
      assert.equal(fs.readFileSync(out, 'utf8'), 'old\n', 'the read-only output was replaced');
      assert.deepEqual(
        fs.readdirSync(pub).filter((f) => f.includes('.ltocache-')),
        [],
      );
    } finally {
      await d.close();
    }
  } finally {
    fs.rmSync(sockDir, { recursive: true, force: true });
    fs.rmSync(pub, { recursive: true, force: true });
  }
});

test('relative LTOCACHE_DIR: not contacted, no daemon started', async () => {
  const rel = `rel-cache-${++seq}`;
  // A daemon on the socket an absolutising client would compute.
  await withDaemon(path.join(tmp, rel), reply(encodeResult(0, Buffer.from('CONTACTED'), Buffer.alloc(0))), async (d) => {
    const r = await run(client, [COMPILER, '@version.rsp'], { env: baseEnv(rel) });
    assert.equal(r.status, 0);
    assert.match(r.stdout.toString(), /clang version/);
    assert.equal(d.connections, 0);
  });
  assert.deepEqual(recorded(), []);
});

test('unsafe socket directory (mode 0755, symlink, foreign owner): not contacted', { skip: uid !== 0 ? 'needs root to run the client under another uid' : false }, async () => {
  // The shared /tmp/ltocache-<uid> must not be tampered with, so run the client as another
  // uid whose socket directory this test owns.
  const other = 4_100_000 + (process.pid % 10_000);
  const sockDir = socketDirFor(other);
  if (fs.existsSync(sockDir)) return;
  const pub = tempDir('client-pub');
  const realDir = `${sockDir}.real`;
  try {
    fs.chmodSync(pub, 0o755);
    fs.copyFileSync(client, path.join(pub, 'ltocache'));
    fs.chmodSync(path.join(pub, 'ltocache'), 0o755);
    fs.writeFileSync(path.join(pub, 'version.rsp'), '--version\n', { mode: 0o644 });
    const cacheDir = path.join(pub, 'cache');
    const env = { PATH: ORIG_PATH, HOME: pub, LTOCACHE_DIR: cacheDir, LTOCACHE_NODE: '/bin/false', LTOCACHE_START_TIMEOUT_MS: '100' };
    const go = () => run(path.join(pub, 'ltocache'), [COMPILER, '@version.rsp'], { env, cwd: pub, uid: other });

    fs.mkdirSync(sockDir, { mode: 0o700 });
    fs.chownSync(sockDir, other, other);
    const d = await fakeDaemon(socketPathFor(cacheDir, other), reply(encodeResult(0, Buffer.from('CONTACTED'), Buffer.alloc(0))));
    try {
      fs.chmodSync(socketPathFor(cacheDir, other), 0o777);
      // Positive control: a correct directory is used.
      const ok = await go();
      assert.equal(ok.stdout.toString(), 'CONTACTED', ok.stderr.toString());
      assert.equal(d.connections, 1);

      fs.chmodSync(sockDir, 0o755);
      const open = await go();
      assert.match(open.stdout.toString(), /clang version/);
      assert.equal(d.connections, 1, 'mode 0755: not contacted');

      fs.chmodSync(sockDir, 0o700);
      fs.chownSync(sockDir, 0, 0);
      const foreign = await go();
      assert.match(foreign.stdout.toString(), /clang version/);
      assert.equal(d.connections, 1, 'owned by someone else: not contacted');
    } finally {
      await d.close();
    }

    // A symlink to a correct directory is refused too.
    fs.rmSync(sockDir, { recursive: true, force: true });
    fs.mkdirSync(realDir, { mode: 0o700 });
    fs.chownSync(realDir, other, other);
    fs.symlinkSync(realDir, sockDir);
    const d2 = await fakeDaemon(socketPathFor(cacheDir, other), reply(encodeResult(0, Buffer.from('CONTACTED'), Buffer.alloc(0))));
    try {
      fs.chmodSync(socketPathFor(cacheDir, other), 0o777);
      const sym = await go();
      assert.match(sym.stdout.toString(), /clang version/);
      assert.equal(d2.connections, 0, 'symlinked socket dir: not contacted');
    } finally {
      await d2.close();
    }
  } finally {
    fs.rmSync(sockDir, { recursive: true, force: true });
    fs.rmSync(realDir, { recursive: true, force: true });
    fs.rmSync(pub, { recursive: true, force: true });
  }
});

test('masquerade: a clang-19 symlink finds the real clang-19 further on PATH', async () => {
  const bin1 = path.join(tmp, 'mq1');
  const bin2 = path.join(tmp, 'mq2');
  fs.mkdirSync(bin1);
  fs.mkdirSync(bin2);
  fs.symlinkSync(client, path.join(bin1, COMPILER));
  fs.symlinkSync(path.join(bin1, COMPILER), path.join(bin2, COMPILER)); // another link to the client
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir, { PATH: `${bin1}:${bin2}:${ORIG_PATH}` });

  const v = await run(path.join(bin1, COMPILER), ['--version'], { env });
  assert.equal(v.status, 0, v.stderr.toString());
  assert.match(v.stdout.toString(), /clang version/);
  assert.ok(v.ms < 10_000, 'no recursion');

  // Backend job through the symlink: the daemon is told the real compiler.
  await withDaemon(cacheDir, reply(encodeResult(0, Buffer.from('HIT'), Buffer.alloc(0))), async (d) => {
    const r = await run(path.join(bin2, COMPILER), MISSING_JOB, { env });
    assert.equal(r.stdout.toString(), 'HIT');
    assert.equal(d.requests[0]!.compiler, realCompiler);
    assert.deepEqual(d.requests[0]!.args, MISSING_JOB);
  });
  // ...and a passthrough runs the real compiler, not the client again.
  await withDaemon(cacheDir, reply(encodePassthrough('test')), async (d) => {
    const r = await run(path.join(bin1, COMPILER), ['@version.rsp'], { env });
    assert.equal(r.status, 0);
    assert.match(r.stdout.toString(), /clang version/);
    assert.equal(d.connections, 1);
  });

  // Only links to the client on PATH: a clear error, exit 127.
  const none = await run(path.join(bin1, COMPILER), ['--version'], { env: { ...env, PATH: `${bin1}:${bin2}` } });
  assert.equal(none.status, 127);
  assert.equal(none.stderr.toString(), `ltocache: cannot find compiler '${COMPILER}' on PATH\n`);
});

test('prefix mode with an unknown compiler: exit 127', async () => {
  const r = await run(client, ['no-such-compiler-xyz', '-c', 'x.c'], { env: baseEnv(newCacheDir()) });
  assert.equal(r.status, 127);
  assert.equal(r.stderr.toString(), "ltocache: cannot find compiler 'no-such-compiler-xyz' on PATH\n");
});

const startMarker = (cacheDir: string) => socketPathFor(cacheDir, uid).replace(/\.sock$/, '.startfail');

test('no daemon, and the started one exits without notifying: compile at once, remember the failure', async () => {
  fs.rmSync(recorderLog, { force: true });
  fs.rmSync(arenaLog, { force: true });
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir, { LTOCACHE_START_TIMEOUT_MS: '10000' });
  const ref = await direct(MISSING_JOB, env);
  const r = await run(client, [COMPILER, ...MISSING_JOB], { env });
  assert.equal(r.status, ref.status);
  assert.ok(r.stderr.equals(ref.stderr), r.stderr.toString());
  assert.ok(r.ms < 5000, `did not wait for the 10 s start timeout (${r.ms} ms)`);
  const cli = `${fs.realpathSync(root)}/bin/../dist/src/cli/main.js`; // not normalised by the client
  assert.deepEqual(recorded(), [`--max-semi-space-size=${DAEMON_SEMI_SPACE_MB} ${cli} daemon run --background`]);
  assert.ok(fs.existsSync(startMarker(cacheDir)), 'failed start recorded');
  // The daemon gets the launcher's malloc arena limit; a user's own setting wins.
  assert.deepEqual(fs.readFileSync(arenaLog, 'utf8').split('\n').filter(Boolean), [String(DAEMON_MALLOC_ARENA_MAX)]);
  // Within the memory window, the next job does not try again.
  const again = await run(client, [COMPILER, ...MISSING_JOB], { env });
  assert.equal(again.status, ref.status);
  assert.deepEqual(recorded(), [`--max-semi-space-size=${DAEMON_SEMI_SPACE_MB} ${cli} daemon run --background`], 'no second spawn');
  // A daemon that listens meanwhile is still used.
  await withDaemon(cacheDir, reply(encodeResult(0, Buffer.from('CONTACTED'), Buffer.alloc(0))), async (d) => {
    const used = await run(client, [COMPILER, ...MISSING_JOB], { env });
    assert.equal(used.stdout.toString(), 'CONTACTED');
    assert.equal(d.connections, 1);
  });
});

test("a user's MALLOC_ARENA_MAX reaches the daemon unchanged", async () => {
  fs.rmSync(arenaLog, { force: true });
  const env = baseEnv(newCacheDir(), { LTOCACHE_START_TIMEOUT_MS: '10000', MALLOC_ARENA_MAX: '8' });
  const r = await run(client, [COMPILER, ...MISSING_JOB], { env });
  assert.equal(r.status, (await direct(MISSING_JOB, env)).status);
  assert.deepEqual(fs.readFileSync(arenaLog, 'utf8').split('\n').filter(Boolean), ['8']);
});

const unlimitedHard = spawnSync('sh', ['-c', 'for o in t f v d; do ulimit -H -$o; done'], { encoding: 'utf8' })
  .stdout.trim()
  .split('\n')
  .every((v) => v === 'unlimited');

test("a build's soft limits (ulimit -t, -f, -v, -d) are raised to the hard ones for the daemon it starts; its compiler keeps them", {
  skip: unlimitedHard ? false : 'needs unlimited hard CPU, file-size, address-space and data limits',
}, async () => {
  const limitsLog = path.join(tmp, 'limits.log');
  const fakeNode = path.join(tmp, 'limits-node.sh');
  const show = (to: string) => `for o in t f v d; do printf '%s %s %s\\n' $o "$(ulimit -S -$o)" "$(ulimit -H -$o)"; done >> '${to}'`;
  fs.writeFileSync(fakeNode, `#!/bin/sh\n${show(limitsLog)}\n`, { mode: 0o755 });
  const compilerLog = path.join(tmp, 'limits-compiler.log');
  const compiler = path.join(tmp, 'clang-limits');
  fs.writeFileSync(compiler, `#!/bin/sh\n${show(compilerLog)}\n`, { mode: 0o755 });
  const env = baseEnv(newCacheDir(), { LTOCACHE_NODE: fakeNode, LTOCACHE_START_TIMEOUT_MS: '10000' });
  const soft = { t: 3600, f: 4_000_000, v: 64_000_000, d: 32_000_000 };
  const set = Object.entries(soft)
    .map(([o, v]) => `ulimit -S -${o} ${v}`)
    .join('; ');
  const r = await run('sh', ['-c', `${set}; exec "$@"`, 'sh', client, compiler, ...MISSING_JOB], { env });
  assert.equal(r.status, 0, r.stderr.toString());
  const read = (f: string) =>
    fs
      .readFileSync(f, 'utf8')
      .trim()
      .split('\n')
      .map((l) => l.split(' '));
  const hard = read(compilerLog).map(([o, , h]) => [o, h, h]);
  assert.deepEqual(
    read(compilerLog),
    hard.map(([o, , h]) => [o, String(soft[o as keyof typeof soft]), h]),
    "the compiler runs under the build's limits",
  );
  assert.deepEqual(read(limitsLog), hard, 'the daemon runs under the hard limits');
});

test('LTOCACHE_NODE=/nonexistent: the job completes via clang without waiting the start timeout', async () => {
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir, { LTOCACHE_NODE: '/nonexistent/node' });
  delete env.LTOCACHE_START_TIMEOUT_MS; // the default, 3 s
  const ref = await direct(MISSING_JOB, env);
  const r = await run(client, [COMPILER, ...MISSING_JOB], { env });
  assert.equal(r.status, ref.status);
  assert.ok(r.stderr.equals(ref.stderr), r.stderr.toString());
  assert.ok(r.ms < 2000, `gave up at once (${r.ms} ms), not after the 3 s timeout`);
  assert.ok(fs.existsSync(startMarker(cacheDir)), 'failed start recorded');
});

test('a started daemon that stays silent: the client waits at most the start timeout', async () => {
  const cacheDir = newCacheDir();
  const silent = path.join(tmp, 'silent-node.sh');
  fs.writeFileSync(silent, '#!/bin/sh\nsleep 3\n', { mode: 0o755 });
  const env = baseEnv(cacheDir, { LTOCACHE_NODE: silent, LTOCACHE_START_TIMEOUT_MS: '300' });
  const ref = await direct(MISSING_JOB, env);
  const r = await run(client, [COMPILER, ...MISSING_JOB], { env });
  assert.equal(r.status, ref.status);
  assert.ok(r.ms >= 290, `waited ${r.ms} ms for the daemon`);
  assert.ok(r.ms < 2500, `gave up in time (${r.ms} ms)`);
  // Remembered as a failed start: the next job does not wait out another one.
  assert.ok(fs.existsSync(startMarker(cacheDir)), 'failed start recorded');
  const again = await run(client, [COMPILER, ...MISSING_JOB], { env });
  assert.equal(again.status, ref.status);
  assert.ok(again.ms < 250, `no second wait (${again.ms} ms)`);
});

test('prefix mode hands CLI sub-commands (and no arguments) to node', async () => {
  fs.rmSync(recorderLog, { force: true });
  const cli = `${fs.realpathSync(root)}/bin/../dist/src/cli/main.js`; // not normalised by the client
  const env = baseEnv(newCacheDir());
  const s = await run(client, ['stats', '--json'], { env });
  assert.equal(s.stdout.toString(), `recorder:${cli} stats --json\n`);
  const bare = await run(client, [], { env });
  assert.equal(bare.stdout.toString(), `recorder:${cli}\n`);
  // --version: the client prints its own line (no Node needed), then the CLI adds the rest.
  const v = await run(client, ['--version'], { env });
  const [own, rest] = v.stdout.toString().split(/(?<=\n)/);
  assert.match(own!, /^client {2}\S+ \(protocol \d+\) \/.*\n$/);
  assert.equal(rest, `recorder:${cli} --version\n`);
});

test('the socket fd does not leak into the compiler', async () => {
  const cacheDir = newCacheDir();
  await withDaemon(cacheDir, reply(encodePassthrough('test')), async (d) => {
    const r = await run(client, ['/bin/sh', '-c', 'ls -l /proc/$$/fd', '@x'], { env: baseEnv(cacheDir) });
    assert.equal(d.connections, 1);
    assert.equal(r.status, 0, r.stderr.toString());
    // fds 0-2 are the test's pipes (Node uses socket pairs); beyond them, no socket may be
    // open (other inherited fds, e.g. from the test harness, are not ours to judge).
    const extra = r.stdout
      .toString()
      .split('\n')
      .filter((l) => /socket:/.test(l))
      .filter((l) => Number(/ (\d+) -> /.exec(l)?.[1]) > 2);
    assert.deepEqual(extra, []);
  });
});

test('inherited SIGCHLD=SIG_IGN: a compile on a miss reports success, and clang inherits SIG_IGN', async () => {
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir);
  fs.writeFileSync(path.join(tmp, 'ok.c'), 'int ok(void) { return 42; }\n');
  fs.writeFileSync(path.join(tmp, 'ok.rsp'), '-c ok.c -o ok.o\n');
  const ref = await direct(['-c', 'ok.c', '-o', 'ok-ref.o'], env);
  assert.equal(ref.status, 0);
  const ignoring = (argv: string[]) => ['-c', 'import signal, os, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])', ...argv];
  const dones: Done[] = [];
  await withDaemon(cacheDir, compileYourself(dones), async () => {
    const r = await run('python3', ignoring([client, COMPILER, '@ok.rsp']), { env });
    assert.equal(r.status, 0, r.stderr.toString());
    assert.equal(dones[0]?.exit, 0);
    assert.ok(fs.readFileSync(path.join(tmp, 'ok.o')).equals(fs.readFileSync(path.join(tmp, 'ok-ref.o'))), 'the right object');
    // The compiler sees the disposition we inherited (SigIgn bit 17 = SIGCHLD), on a miss...
    const shown = await run('python3', ignoring([client, '/bin/grep', '-h', 'SigIgn', '/proc/self/status', '@x']), { env });
    assert.ok((BigInt('0x' + /SigIgn:\s*([0-9a-f]+)/.exec(shown.stdout.toString())![1]) >> 16n) & 1n, shown.stdout.toString());
  });
  // ...and on a direct exec.
  await withDaemon(cacheDir, reply(encodePassthrough('test')), async () => {
    const shown = await run('python3', ignoring([client, '/bin/grep', '-h', 'SigIgn', '/proc/self/status', '@x']), { env });
    assert.ok((BigInt('0x' + /SigIgn:\s*([0-9a-f]+)/.exec(shown.stdout.toString())![1]) >> 16n) & 1n, shown.stdout.toString());
  });
});

test("compile on a miss: exit 130 is an exit, a SIGSEGV death is a SIGSEGV death ('D' carries both apart)", async () => {
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir);
  const dones: Done[] = [];
  await withDaemon(cacheDir, compileYourself(dones), async () => {
    const exit130 = await run(client, ['/bin/sh', '-c', 'echo out; echo err >&2; exit 130', '@x'], { env });
    assert.equal(exit130.signal, null);
    assert.equal(exit130.status, 130);
    assert.equal(exit130.stdout.toString(), 'out\n');
    assert.deepEqual({ exit: dones[0]!.exit, signal: dones[0]!.signal }, { exit: 130, signal: 0 });
    const segv = await run('sh', ['-c', 'ulimit -c 0; exec "$@"', 'sh', client, '/bin/sh', '-c', 'kill -SEGV $$', '@x'], { env });
    assert.equal(segv.signal, 'SIGSEGV');
    assert.deepEqual({ exit: dones[1]!.exit, signal: dones[1]!.signal }, { exit: 139, signal: 11 });
  });
});

test('output at MAX_OUTPUT_STREAM is reported; one byte more passes through unreported, intact', async () => {
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir);
  for (const n of [MAX_OUTPUT_STREAM, MAX_OUTPUT_STREAM + 1]) {
    const dones: Done[] = [];
    await withDaemon(cacheDir, compileYourself(dones), async () => {
      const r = await run(client, ['/bin/sh', '-c', `head -c ${n} /dev/zero; echo e >&2`, '@x'], { env });
      assert.equal(r.status, 0, r.stderr.toString());
      assert.equal(r.stdout.length, n);
      assert.equal(r.stderr.toString(), 'e\n');
      if (n === MAX_OUTPUT_STREAM) assert.equal(dones[0]?.stdout.length, n, 'reported in full');
      else assert.deepEqual(dones, [], 'not reported');
    });
  }
});

test('pass-through output that cannot be written (stdout on /dev/full) is not a success', async () => {
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir);
  const full = fs.openSync('/dev/full', 'w');
  try {
    for (const n of [MAX_OUTPUT_STREAM + 1, 10]) {
      await withDaemon(cacheDir, compileYourself([]), async () => {
        const r = await run(client, ['/bin/sh', '-c', `head -c ${n} /dev/zero`, '@x'], { env, stdoutFd: full });
        assert.equal(r.status, 1, `${n} bytes undelivered: ${r.stderr.toString()}`);
      });
    }
  } finally {
    fs.closeSync(full);
  }
});

test('a daemon that accepts and never answers: after the silence timeout the client compiles', async () => {
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir, { LTOCACHE_SILENCE_TIMEOUT_MS: '500' });
  const ref = await direct(MISSING_JOB, env);
  await withDaemon(
    cacheDir,
    () => {},
    async (d) => {
      const r = await run(client, [COMPILER, ...MISSING_JOB], { env, killAfterMs: 20_000 });
      assert.equal(d.connections, 1);
      assert.equal(r.status, ref.status);
      assert.ok(r.stderr.equals(ref.stderr), r.stderr.toString());
      // Remembered: the next job does not ask the silent daemon and pay the timeout again.
      const silent = socketPathFor(socketDirName(cacheDir), uid).replace(/\.sock$/, '.silent');
      assert.ok(fs.existsSync(silent));
      const t0 = Date.now();
      const again = await run(client, [COMPILER, ...MISSING_JOB], { env, killAfterMs: 20_000 });
      assert.equal(d.connections, 1, 'not asked again');
      assert.ok(Date.now() - t0 < 400, `straight to the compiler (${Date.now() - t0} ms)`);
      assert.equal(again.status, ref.status);
      fs.rmSync(silent);
    },
  );
  // Keepalives ('W') reset the silence timer: an answer after 1.5 s of them is used.
  const keepalive: Handler = (_req, sock) => {
    const t = setInterval(() => sock.write(encodeWait()), 200);
    setTimeout(() => {
      clearInterval(t);
      sock.end(encodeResult(0, Buffer.from('AFTER-WAIT'), Buffer.alloc(0)));
    }, 1500);
  };
  await withDaemon(cacheDir, keepalive, async () => {
    const r = await run(client, [COMPILER, ...MISSING_JOB], { env, killAfterMs: 20_000 });
    assert.equal(r.status, 0);
    assert.equal(r.stdout.toString(), 'AFTER-WAIT');
  });
});

/** Runs `script` in a private mount namespace with /proc unmounted, or returns null if this
 * host cannot (not root, no unshare). */
async function withoutProc(script: string, args: string[], env: NodeJS.ProcessEnv): Promise<RunResult | null> {
  const probe = await run('unshare', ['-m', 'sh', '-c', 'umount -l /proc && test ! -e /proc/self/exe'], { env });
  if (probe.status !== 0) return null;
  return run('unshare', ['-m', 'bash', '-c', `umount -l /proc && ${script}`, 'bash', ...args], { env, killAfterMs: 15_000 });
}

test('no /proc: masquerade finds the real compiler, never itself; the CLI path still resolves', { skip: uid !== 0 ? 'needs root for unshare -m' : false }, async (t) => {
  const bin1 = path.join(tmp, 'np1');
  const bin3 = path.join(tmp, 'np3');
  fs.mkdirSync(bin1);
  fs.mkdirSync(bin3);
  fs.symlinkSync(client, path.join(bin1, COMPILER));
  fs.copyFileSync(client, path.join(bin3, COMPILER)); // a copy: another inode
  fs.chmodSync(path.join(bin3, COMPILER), 0o755);
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir, { PATH: `${bin1}:${ORIG_PATH}` });
  const v = await withoutProc('exec "$1" --version', [path.join(bin1, COMPILER)], env);
  if (!v) return t.skip('cannot unmount /proc in a private mount namespace here');
  assert.equal(v.status, 0, v.stderr.toString());
  assert.match(v.stdout.toString(), /clang version/);
  // argv[0] naming the real compiler: the self check from argv[0] is wrong, the exec guard
  // catches the exec of ourselves and moves on.
  const env3 = baseEnv(cacheDir, { PATH: `${bin3}:${ORIG_PATH}` });
  const g = await withoutProc('exec -a "$1" "$2" --version', [realCompiler, path.join(bin3, COMPILER)], env3);
  assert.equal(g!.status, 0, g!.stderr.toString());
  assert.match(g!.stdout.toString(), /clang version/);
  // A backend job through the masquerade link reaches the daemon with the real compiler.
  await withDaemon(cacheDir, reply(encodeResult(0, Buffer.from('HIT'), Buffer.alloc(0))), async (d) => {
    const r = await withoutProc('cd "$1" && exec "$2" "$@"', [tmp, path.join(bin1, COMPILER), ...MISSING_JOB], env);
    assert.equal(r!.stdout.toString(), 'HIT', r!.stderr.toString());
    assert.equal(d.requests[0]!.compiler, realCompiler);
    assert.equal(d.requests[0]!.env.LTOCACHE_EXEC_GUARD, undefined);
  });
  fs.rmSync(recorderLog, { force: true });
  const cli = `${fs.realpathSync(root)}/bin/../dist/src/cli/main.js`;
  const s = await withoutProc('exec "$1" stats', [client], env);
  assert.equal(s!.stdout.toString(), `recorder:${cli} stats\n`, s!.stderr.toString());
});

/** Answers 'S' with `memo`; records what the client sends back ('E', or 'D', which it acknowledges). */
function storeYourself(memo: Buffer, got: Buffer[]): Handler {
  return (req, sock) => {
    const dec = new FrameDecoder(MAX_DONE_PAYLOAD);
    sock.on('data', (chunk: Buffer) => {
      for (const f of dec.push(chunk)) {
        got.push(f);
        if (f[0] === FRAME_DONE) sock.end(encodeAck());
      }
    });
    sock.write(encodeStoreYourself(memo, req.compileOptions ? { colour: false } : undefined));
  };
}

test("'S': a clean run is stored by the client (blob, memo) and reported with 'E'; any doubt reports with 'D'", async () => {
  await initHash();
  const ZERO = '0'.repeat(32);
  const KEY = 'ab'.repeat(16);
  const input = path.join(tmp, 'store-input.bc');
  fs.writeFileSync(input, 'index bytes');
  const inputCheck: MemoCheck = { kind: 'content', path: input, size: 11, digest: hashBytes('index bytes') };
  const out = path.join(tmp, 'stored.o');
  const memoOf = (checks: MemoCheck[]) => encodeMemo({ key: KEY, checks, outputs: [{ path: out, digest: ZERO, size: 0 }], stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) });
  /** The job: a "compiler" writing `script`'s output; a backend job to the client (-fthinlto-index=). */
  const job = (script: string) => ['/bin/sh', '-c', script, out, '-fthinlto-index=store-input.bc'];
  const prepared = () => {
    const cacheDir = newCacheDir();
    // What the daemon makes when it opens the store.
    for (const d of ['tmp', 'blobs']) fs.mkdirSync(path.join(cacheDir, 'store', 'v1', d), { recursive: true });
    return cacheDir;
  };
  const blobs = (cacheDir: string) => fs.readdirSync(path.join(cacheDir, 'store', 'v1', 'blobs'), { recursive: true }).filter((f) => String(f).length === 33);

  // Stored: the blob holds the output's bytes, the memo is the template with the digest filled in.
  {
    const cacheDir = prepared();
    const got: Buffer[] = [];
    const args = job('printf obj-bytes > "$0"');
    await withDaemon(cacheDir, storeYourself(memoOf([inputCheck]), got), async () => {
      const r = await run(client, args, { env: baseEnv(cacheDir) });
      assert.equal(r.status, 0, r.stderr.toString());
    });
    assert.equal(got.length, 1);
    assert.equal(got[0]![0], FRAME_STORED);
    const digest = hashBytes('obj-bytes');
    assert.deepEqual(decodeStored(got[0]!), { memoWritten: true, outputs: [{ digest, size: 9 }] });
    assert.equal(fs.readFileSync(path.join(cacheDir, 'store', 'v1', 'blobs', digest.slice(0, 2), digest.slice(2)), 'latin1'), 'obj-bytes');
    assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'store', 'v1', 'tmp')), [], 'no temp left');
    const memoFile = memoPath(cacheDir, lookupDigest('/bin/sh', tmp, args.slice(1)));
    assert.equal(fs.statSync(memoFile).mode & 0o777, 0o600);
    const memo = decodeMemo(fs.readFileSync(memoFile));
    assert.equal(memo.key, KEY);
    assert.deepEqual(memo.outputs, [{ path: out, digest, size: 9 }]);
    assert.deepEqual(memo.checks, [inputCheck]);
  }
  // Blobs stored, memo not: a memo directory others may read is not ours to write into.
  {
    const cacheDir = prepared();
    fs.mkdirSync(path.join(cacheDir, 'memo'), { mode: 0o755 });
    fs.chmodSync(path.join(cacheDir, 'memo'), 0o755);
    const got: Buffer[] = [];
    await withDaemon(cacheDir, storeYourself(memoOf([inputCheck]), got), async () => {
      assert.equal((await run(client, job('printf obj-bytes > "$0"'), { env: baseEnv(cacheDir) })).status, 0);
    });
    assert.equal(got[0]![0], FRAME_STORED);
    assert.equal(decodeStored(got[0]!).memoWritten, false);
    assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'memo')), []);
  }
  // Each doubt: 'D' with the run's real status and output, nothing stored.
  const doubts: [string, Buffer, string, number][] = [
    ['an input changed while the compiler ran', memoOf([{ ...inputCheck, digest: hashBytes('other bytes') }]), 'printf obj > "$0"', 0],
    // The same bytes again, as lld rewrites an index: the content check passes, the identity does not.
    ['an input rewritten in place while the compiler ran', memoOf([inputCheck]), `c=$(cat '${input}'); : > '${input}'; printf %s "$c" > '${input}'; printf obj > "$0"`, 0],
    ['stderr is not empty', memoOf([inputCheck]), 'printf obj > "$0"; echo warning >&2', 0],
    ['the output is empty', memoOf([inputCheck]), ': > "$0"', 0],
    ['no output written', memoOf([inputCheck]), 'rm -f "$0"', 0],
    ['the compiler failed', memoOf([inputCheck]), 'printf obj > "$0"; exit 3', 3],
    ['a truncated memo', memoOf([inputCheck]).subarray(0, 40), 'printf obj > "$0"', 0],
    ['a memo with a wrong trailer', Buffer.concat([memoOf([inputCheck]).subarray(0, -1), Buffer.from('x')]), 'printf obj > "$0"', 0],
  ];
  for (const [what, memo, script, status] of doubts) {
    const cacheDir = prepared();
    const got: Buffer[] = [];
    await withDaemon(cacheDir, storeYourself(memo, got), async () => {
      const r = await run(client, job(script), { env: baseEnv(cacheDir) });
      assert.equal(r.status, status, `${what}: ${r.stderr}`);
    });
    assert.equal(got.length, 1, what);
    assert.equal(got[0]![0], FRAME_DONE, `${what}: reported with 'D'`);
    assert.equal(decodeDone(got[0]!).exit, status, what);
    assert.deepEqual(blobs(cacheDir), [], `${what}: no blob`);
    assert.ok(!fs.existsSync(path.join(cacheDir, 'memo')), `${what}: no memo`);
  }
});

test("'H': a team-cache hit is stored by the client (blob, memo), reported with 'E' and served from the memo; a bad payload compiles instead", async () => {
  await initHash();
  const KEY = 'cd'.repeat(16);
  const input = path.join(tmp, 'hit-input.bc');
  fs.writeFileSync(input, 'index');
  const out = path.join(tmp, 'hit.o');
  const bytes = Buffer.from('object from the team');
  const memoFor = (data: Buffer, stderr = '') =>
    encodeMemo({
      key: KEY,
      checks: [{ kind: 'content', path: input, size: 5, digest: hashBytes('index') }],
      outputs: [{ path: out, digest: hashBytes(data), size: data.length }],
      stdout: Buffer.alloc(0),
      stderr: Buffer.from(stderr),
    });
  // The "compiler" writes other bytes: whatever it leaves shows whether it ran.
  const args = ['/bin/sh', '-c', 'printf compiled > "$0"', out, '-fthinlto-index=hit-input.bc'];
  const hitStore =
    (frame: Buffer, got: Buffer[]): Handler =>
    (_req, sock) => {
      const dec = new FrameDecoder(MAX_DONE_PAYLOAD);
      sock.on('data', (chunk: Buffer) => got.push(...dec.push(chunk)));
      sock.write(frame);
    };
  const prepared = () => {
    const cacheDir = newCacheDir();
    for (const d of ['tmp', 'blobs']) fs.mkdirSync(path.join(cacheDir, 'store', 'v1', d), { recursive: true });
    return cacheDir;
  };
  {
    const cacheDir = prepared();
    const got: Buffer[] = [];
    fs.rmSync(out, { force: true });
    await withDaemon(cacheDir, hitStore(encodeHitStore(memoFor(bytes, 'warning: kept\n'), [bytes]), got), async () => {
      const r = await run(client, args, { env: baseEnv(cacheDir) });
      assert.equal(r.status, 0, r.stderr.toString());
      assert.equal(r.stderr.toString(), 'warning: kept\n', 'the stored stderr is replayed');
    });
    assert.ok(fs.readFileSync(out).equals(bytes), 'served from the memo');
    assert.equal(got.length, 1);
    assert.deepEqual(decodeStored(got[0]!), { memoWritten: true, outputs: [{ digest: hashBytes(bytes), size: bytes.length }] });
    const d = hashBytes(bytes);
    assert.ok(fs.readFileSync(path.join(cacheDir, 'store', 'v1', 'blobs', d.slice(0, 2), d.slice(2))).equals(bytes));
    assert.ok(fs.readFileSync(memoPath(cacheDir, lookupDigest('/bin/sh', tmp, args.slice(1)))).equals(memoFor(bytes, 'warning: kept\n')));
    assert.ok(!fs.existsSync(path.join(cacheDir, 'memo', 'hits.log')), 'no notice: the daemon counted this hit');
  }
  // Bytes that do not match the memo, a short payload, trailing bytes: nothing stored, the compiler runs.
  const bad: [string, Buffer][] = [
    ['bytes not matching the digest', encodeHitStore(memoFor(bytes), [Buffer.from('object from the tean')])],
    ['a missing output', encodeHitStore(memoFor(bytes), [])],
    ['trailing bytes', encodeHitStore(memoFor(bytes), [bytes, Buffer.from('x')])],
    ['a truncated memo', encodeHitStore(memoFor(bytes).subarray(0, 30), [bytes])],
  ];
  for (const [what, frame] of bad) {
    const cacheDir = prepared();
    const got: Buffer[] = [];
    fs.rmSync(out, { force: true });
    await withDaemon(cacheDir, hitStore(frame, got), async () => {
      assert.equal((await run(client, args, { env: baseEnv(cacheDir) })).status, 0, what);
    });
    assert.equal(fs.readFileSync(out, 'latin1'), 'compiled', `${what}: the compiler ran`);
    assert.deepEqual(got, [], `${what}: nothing reported`);
    assert.ok(!fs.existsSync(path.join(cacheDir, 'memo')), `${what}: no memo`);
  }
});

test('a daemon that does not know flag bit 2 refuses it by name: the client asks again without it', async () => {
  const cacheDir = newCacheDir();
  const seen: number[] = [];
  const handler: Handler = (req, sock) => {
    seen.push(req.storesOnMiss ? 1 : 0);
    // What a daemon from before bit 2 answers (its decoder's message after "malformed request: ").
    if (req.storesOnMiss) sock.end(encodePassthrough('malformed request: unknown flag bits 0x6'));
    else sock.end(encodeResult(0, Buffer.from('served\n'), Buffer.alloc(0)));
  };
  await withDaemon(cacheDir, handler, async () => {
    const r = await run(client, [COMPILER, ...MISSING_JOB], { env: baseEnv(cacheDir) });
    assert.equal(r.status, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), 'served\n');
  });
  assert.deepEqual(seen, [1, 0]);
  // Any other passthrough is final: the compiler runs (and fails on the missing input).
  const seen2: number[] = [];
  await withDaemon(
    cacheDir,
    (req, sock) => {
      seen2.push(req.storesOnMiss ? 1 : 0);
      sock.end(encodePassthrough('uncacheable: not a backend job'));
    },
    async () => {
      assert.equal((await run(client, [COMPILER, ...MISSING_JOB], { env: baseEnv(cacheDir) })).status, 1);
    },
  );
  assert.deepEqual(seen2, [1]);
});

test("an output redirect in 'M': clang writes the temp, the daemon sees it at 'D', the client renames it after 'A'; a run that names the temp is exec'ed again as given", async () => {
  const cacheDir = newCacheDir();
  const env = baseEnv(cacheDir);
  const work = fs.mkdtempSync(path.join(tmp, 'redirect-'));
  const rec = path.join(work, 'rec.sh');
  // Records its arguments, writes "obj <n>" to the -o path, names it on stderr when told to fail.
  fs.writeFileSync(
    rec,
    `#!/bin/sh\nprintf '%s\\n' "$@" >> args.log\nout=; prev=; for a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; done\n` +
      `if [ -e fail ]; then echo "error: cannot write $out" >&2; exit 3; fi\nif [ -e fails ]; then echo "error: backend" >&2; exit 4; fi\necho obj > "$out"\nif [ -e die ]; then kill -KILL $$; fi\n`,
    { mode: 0o755 },
  );
  const temp = path.join(work, '.x.o.ltocache-out-0123456789ab');
  const redirect = { index: 1, arg: '.x.o.ltocache-out-0123456789ab', temp, output: path.join(work, 'x.o') };
  const answer =
    (r: typeof redirect, seen: string[]): Handler =>
    (_req, sock) => {
      const dec = new FrameDecoder(MAX_DONE_PAYLOAD);
      sock.on('data', (chunk: Buffer) => {
        for (const f of dec.push(chunk)) {
          decodeDone(f);
          seen.push(`${fs.existsSync(temp) ? 'temp' : '-'} ${fs.existsSync(redirect.output) ? 'output' : '-'}`);
          sock.end(encodeAck());
        }
      });
      sock.write(encodeCompileYourself({ colour: false, redirect: r }));
    };
  const log = () => fs.readFileSync(path.join(work, 'args.log'), 'utf8');
  const seen: string[] = [];
  await withDaemon(cacheDir, answer(redirect, seen), async () => {
    const ok = await run(client, [rec, '-o', 'x.o', '@x'], { env, cwd: work });
    assert.equal(ok.status, 0, ok.stderr.toString());
    assert.deepEqual(seen, ['temp -'], "at 'D' the object is at the temp only");
    assert.equal(log(), '-o\n.x.o.ltocache-out-0123456789ab\n@x\n');
    assert.equal(fs.readFileSync(redirect.output, 'utf8'), 'obj\n');
    assert.ok(!fs.existsSync(temp));
    // A run that fails without naming the temp is clang's outcome: run once, nothing reported.
    fs.rmSync(path.join(work, 'args.log'));
    fs.writeFileSync(path.join(work, 'fails'), '');
    const plainFail = await run(client, [rec, '-o', 'x.o', '@x'], { env, cwd: work });
    assert.equal(plainFail.status, 4);
    assert.equal(plainFail.stderr.toString(), 'error: backend\n');
    assert.equal(log(), '-o\n.x.o.ltocache-out-0123456789ab\n@x\n', 'run once');
    assert.deepEqual(seen, ['temp -', '- output'], "reported with 'D', the output as the last run left it");
    fs.rmSync(path.join(work, 'fails'));
    // A run that names the temp is thrown away: the compiler runs again as given, and that is what the build sees.
    fs.rmSync(path.join(work, 'args.log'));
    fs.writeFileSync(path.join(work, 'fail'), '');
    const failed = await run(client, [rec, '-o', 'x.o', '@x'], { env, cwd: work });
    assert.equal(failed.status, 3);
    assert.equal(failed.stderr.toString(), 'error: cannot write x.o\n');
    assert.equal(log(), '-o\n.x.o.ltocache-out-0123456789ab\n@x\n-o\nx.o\n@x\n');
    assert.deepEqual(seen, ['temp -', '- output'], 'nothing reported for the run thrown away');
    fs.rmSync(path.join(work, 'fail'));
    // A run killed by a signal sent to the compiler alone (the OOM killer, `kill -9`) that named
    // nothing of ours is clang's outcome: not run again, what it wrote at the temp moved to the
    // output (where it would be without the redirect), and we end as it did.
    fs.rmSync(path.join(work, 'args.log'));
    fs.rmSync(redirect.output);
    fs.writeFileSync(path.join(work, 'die'), '');
    const killed = await run(client, [rec, '-o', 'x.o', '@x'], { env, cwd: work });
    assert.equal(killed.signal, 'SIGKILL', `status ${killed.status}`);
    assert.equal(log(), '-o\n.x.o.ltocache-out-0123456789ab\n@x\n', 'run once');
    assert.deepEqual(seen, ['temp -', '- output', '- output'], "reported with 'D', the temp already moved");
    assert.equal(fs.readFileSync(redirect.output, 'utf8'), 'obj\n');
    fs.rmSync(path.join(work, 'die'));
  });
  // An index past the arguments: the compiler is exec'ed as given, nothing reported.
  fs.rmSync(path.join(work, 'args.log'));
  await withDaemon(cacheDir, answer({ ...redirect, index: 3 }, seen), async () => {
    const r = await run(client, [rec, '-o', 'x.o', '@x'], { env, cwd: work });
    assert.equal(r.status, 0, r.stderr.toString());
    assert.equal(log(), '-o\nx.o\n@x\n');
    assert.deepEqual(seen, ['temp -', '- output', '- output']);
  });
  assert.deepEqual(
    fs.readdirSync(work).filter((f) => f.includes('.ltocache-')),
    [],
  );
});
