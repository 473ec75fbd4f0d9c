import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../support/env.js';

/**
 * The client started with standard descriptors closed, as clang may be (`2>&-`): it must end as
 * clang does (LLVM reopens them on /dev/null), and nothing of its own may land on them.
 */

let b: ThinBuild;
const caches: CacheEnv[] = [];
before(() => {
  b = ThinBuild.fromFixture(FIXTURE, join(tempDir('stdfds-tree'), 'src'));
  b.frontEnd();
  b.thinLink();
});
after(() => {
  for (const c of caches) c.destroy();
});

/** Runs `cmd args` from sh with the descriptors in `close` closed. */
function closed(close: string, cmd: string[], env: NodeJS.ProcessEnv): { status: number | null; signal: string | null } {
  const r = spawnSync('sh', ['-c', `exec ${close}; exec "$@"`, 'sh', ...cmd], { cwd: b.dir, env, stdio: ['pipe', 'pipe', 'pipe'] });
  return { status: r.status, signal: r.signal };
}

// -Wframe-larger-than=1: every function draws a backend warning, so stderr is never empty.
const WARN = ['-Wframe-larger-than=1'];

test('stderr closed and a diagnostic to replay: exit 0 like clang, on a miss, a fast-path hit and a daemon-path hit', () => {
  const m = b.modules[0]!;
  const direct = closed('2>&-', [b.clang, ...b.backendArgs(m, WARN, `${m}.direct.o`)], process.env);
  assert.equal(direct.status, 0, 'clang itself ends 0 with stderr closed');
  const want = readFileSync(join(b.dir, `${m}.direct.o`));
  const cache = new CacheEnv('stdfds');
  caches.push(cache);
  cache.start();
  for (const [what, env] of [
    ['miss', cache.env],
    ['fast-path hit', cache.env],
    ['daemon-path hit', { ...cache.env, LTOCACHE_MEMO: '0' }],
  ] as const) {
    const r = closed('2>&-', [CLIENT, b.clang, ...b.backendArgs(m, WARN)], env);
    assert.deepEqual(r, { status: 0, signal: null }, what);
    assert.ok(readFileSync(join(b.dir, `${m}.thinlto-native.o`)).equals(want), `${what}: the object is clang's`);
  }
  const s = cache.stats();
  assert.equal(s.misses, 1);
  assert.equal(s.hits, 2);
});

/** Runs `cmd args` with stderr a pipe whose reader is gone by the time the command writes. */
function brokenStderr(cmd: string[], env: NodeJS.ProcessEnv): Promise<{ status: number | null; signal: string | null }> {
  return new Promise((done) => {
    const c = spawn('sh', ['-c', 'sleep 0.2; exec "$@"', 'sh', ...cmd], { cwd: b.dir, env, stdio: ['ignore', 'ignore', 'pipe'] });
    c.stderr!.destroy();
    c.on('exit', (status, signal) => done({ status, signal }));
  });
}

test('stderr a pipe nobody reads and a diagnostic to write: 74 and no object, like clang, on a fast-path hit, a daemon-path hit and a miss', async () => {
  const m = b.modules[0]!;
  const obj = join(b.dir, `${m}.thinlto-native.o`);
  rmSync(obj, { force: true });
  const direct = await brokenStderr([b.clang, ...b.backendArgs(m, WARN)], process.env);
  assert.deepEqual(direct, { status: 74, signal: null }, 'clang ends with EX_IOERR');
  assert.equal(existsSync(obj), false, 'and leaves no object');
  const cache = new CacheEnv('stdfds-epipe');
  caches.push(cache);
  cache.start();
  const warm = spawnSync(CLIENT, [b.clang, ...b.backendArgs(m, WARN)], { cwd: b.dir, env: cache.env });
  assert.equal(warm.status, 0);
  for (const [what, env] of [
    ['fast-path hit', cache.env],
    ['daemon-path hit', { ...cache.env, LTOCACHE_MEMO: '0' }],
    ['miss', { ...cache.env, LTOCACHE_MEMO: '0' }],
  ] as const) {
    if (what === 'miss') spawnSync(CLIENT, ['clear'], { env: cache.env });
    rmSync(obj, { force: true });
    const r = await brokenStderr([CLIENT, b.clang, ...b.backendArgs(m, WARN)], env);
    assert.deepEqual(r, direct, what);
    assert.equal(existsSync(obj), false, `${what}: no object`);
  }
});

test('stdin and stdout closed when the client starts the daemon: the start is seen, not taken for a failure', () => {
  const cache = new CacheEnv('stdfds-start');
  caches.push(cache);
  const sock = spawnSync(CLIENT, ['clang'], { env: { ...cache.env, LTOCACHE_PRINT_SOCKET: '1' }, encoding: 'utf8' }).stdout.trim();
  assert.match(sock, /\.sock$/);
  const marker = sock.replace(/\.sock$/, '.startfail');
  const m = b.modules[1]!;
  const r = closed('0<&- 1>&-', [CLIENT, b.clang, ...b.backendArgs(m)], cache.env);
  assert.deepEqual(r, { status: 0, signal: null });
  assert.equal(existsSync(marker), false, 'no start failure recorded');
  assert.notEqual(cache.daemonPid(), null);
  assert.equal(cache.stats().misses, 1, 'the job went through the daemon it started');
});
