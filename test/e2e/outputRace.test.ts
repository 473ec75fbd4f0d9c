import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import { socketDirFor } from '../../src/protocol/clientFrames.js';
import { CLANG22, DtltoTree, run as dtltoRun } from '../support/dtlto.js';
import { CacheEnv, CLI, CLIENT, FIXTURE, tempDir } from '../support/env.js';

/**
 * Another process writing a job's output between clang's rename of it and its store (two make
 * jobs or two builds racing on one output): what is stored under the job's key must be the bytes
 * clang wrote, never the other writer's. The real native client, daemon and clang 19.
 */

describe('a second writer racing a miss on its output', () => {
  let cache: CacheEnv;
  let b: ThinBuild;
  let racing: string;
  let good: Buffer;
  let other: Buffer;
  before(() => {
    cache = new CacheEnv('race');
    cache.start();
    b = ThinBuild.fromFixture(FIXTURE, join(tempDir('race-tree'), 'src'));
    b.frontEnd();
    b.thinLink();
    racing = join(b.dir, 'racing-clang.sh');
    // clang, then (while the `race` marker exists) another object renamed over the real output
    // after clang wrote it and before the client or daemon reads it: the widest form of the window.
    writeFileSync(
      racing,
      `#!/bin/sh
${b.clang} "$@"; rc=$?
if [ -e race ]; then cp lonely.direct.o main.thinlto-native.o.race && mv -f main.thinlto-native.o.race main.thinlto-native.o; fi
exit $rc
`,
    );
    chmodSync(racing, 0o755);
    const d = b.backend('main', { out: 'main.direct.o' });
    assert.equal(d.status, 0, d.stderr);
    good = readFileSync(join(b.dir, 'main.direct.o'));
    const l = b.backend('lonely', { out: 'lonely.direct.o' });
    assert.equal(l.status, 0, l.stderr);
    other = readFileSync(join(b.dir, 'lonely.direct.o'));
    assert.ok(!good.equals(other));
  });
  after(() => cache.destroy());

  // Both ways a client's miss is stored: by the daemon after 'D' (the index just written, so no
  // memo and no 'S'), and by the client after 'S' (the index settled when keyed).
  for (const settle of [0, 2100]) {
    test(`the raced miss stores clang's object, and the next identical job is served it (settle ${settle} ms)`, async () => {
      assert.equal(cache.cli(['clear']).status, 0);
      b.thinLink();
      if (settle) await sleep(settle);
      writeFileSync(join(b.dir, 'race'), '');
      const before = cache.stats();
      const r = b.backend('main', { wrapper: [CLIENT], env: cache.env, compiler: racing });
      rmSync(join(b.dir, 'race'));
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stderr, '');
      const mid = cache.stats();
      assert.equal(mid.misses - before.misses, 1);
      const again = b.backend('main', { wrapper: [CLIENT], env: cache.env, compiler: racing });
      assert.equal(again.status, 0, again.stderr);
      const served = readFileSync(join(b.dir, 'main.thinlto-native.o'));
      assert.ok(!served.equals(other), `settle ${settle}: served the other writer's object under this job's key`);
      assert.ok(served.equals(good), `settle ${settle}: served object differs from direct clang`);
      // Redirected to a private temp, the raced miss was stored (as clang wrote it), not refused.
      assert.equal(cache.stats().hits - mid.hits, 1, `settle ${settle}: the raced miss was stored`);
      assert.deepEqual(
        readdirSync(b.dir).filter((f) => f.includes('.ltocache-')),
        [],
      );
    });
  }

  test('spelled -oFILE or --output=FILE, the raced miss is stored as clang wrote it (the argument is replaced whole)', async () => {
    for (const spell of [(o: string) => [`-o${o}`], (o: string) => [`--output=${o}`]]) {
      assert.equal(cache.cli(['clear']).status, 0);
      b.thinLink();
      await sleep(2100);
      const args = b.backendArgs('main');
      const at = args.indexOf('-o');
      args.splice(at, 2, ...spell(args[at + 1]!));
      writeFileSync(join(b.dir, 'race'), '');
      const r = spawnSync(CLIENT, [racing, ...args], { cwd: b.dir, env: cache.env, encoding: 'utf8' });
      rmSync(join(b.dir, 'race'));
      assert.equal(r.status, 0, r.stderr);
      const mid = cache.stats();
      const again = spawnSync(CLIENT, [racing, ...args], { cwd: b.dir, env: cache.env, encoding: 'utf8' });
      assert.equal(again.status, 0, again.stderr);
      assert.equal(cache.stats().hits - mid.hits, 1, args.join(' '));
      assert.ok(readFileSync(join(b.dir, 'main.thinlto-native.o')).equals(good), args.join(' '));
    }
  });

  // `-o` inside a response file: the output is not redirected; a write after clang's exit is
  // detected (the output's change time is later, or it moved while read) and nothing is stored.
  // Whether the store or the writer comes first varies; either way no other object is stored.
  for (const settle of [0, 2100]) {
    test(`-o in a response file, written over from 10 ms after clang's exit: never stored under the job's key (settle ${settle} ms)`, async () => {
      const late = join(b.dir, 'late-racing-clang.sh');
      writeFileSync(
        late,
        `#!/bin/sh
${b.clang} "$@"; rc=$?
if [ -e race ]; then
  : > racing.busy
  (sleep 0.01; i=0; while [ $i -lt 40 ]; do cp lonely.direct.o m.race && mv -f m.race main.thinlto-native.o; i=$((i+1)); done; rm -f racing.busy) </dev/null >/dev/null 2>&1 &
fi
exit $rc
`,
      );
      chmodSync(late, 0o755);
      assert.equal(cache.cli(['clear']).status, 0);
      b.thinLink();
      writeFileSync(join(b.dir, 'main.rsp'), b.backendArgs('main').join('\n'));
      if (settle) await sleep(settle);
      writeFileSync(join(b.dir, 'race'), '');
      const before = cache.stats();
      const r = spawnSync(CLIENT, [late, '@main.rsp'], { cwd: b.dir, env: cache.env, encoding: 'utf8' });
      rmSync(join(b.dir, 'race'));
      assert.equal(r.status, 0, r.stderr);
      while (existsSync(join(b.dir, 'racing.busy'))) await sleep(20);
      assert.equal(cache.stats().misses - before.misses, 1);
      const again = spawnSync(CLIENT, [late, '@main.rsp'], { cwd: b.dir, env: cache.env, encoding: 'utf8' });
      assert.equal(again.status, 0, again.stderr);
      assert.ok(readFileSync(join(b.dir, 'main.thinlto-native.o')).equals(good), `settle ${settle}: the other writer's object was stored`);
    });
  }

  test('an output in a directory that does not exist: clang’s own message and exit status, nothing left behind', () => {
    b.thinLink();
    const direct = b.backend('main', { out: 'no-such-dir/main.o' });
    assert.notEqual(direct.status, 0);
    const r = b.backend('main', { wrapper: [CLIENT], env: cache.env, out: 'no-such-dir/main.o' });
    assert.equal(r.status, direct.status);
    assert.equal(r.stderr, direct.stderr);
    assert.equal(r.stdout, direct.stdout);
    assert.deepEqual(
      readdirSync(b.dir).filter((f) => f.includes('.ltocache-')),
      [],
    );
  });
});

describe('a second writer racing a DTLTO job the daemon compiles', () => {
  let cache: CacheEnv;
  let t: DtltoTree;
  before(() => {
    cache = new CacheEnv('race-dtlto');
    cache.start();
    t = new DtltoTree(join(tempDir('race-dtlto-tree'), 'proj'));
    t.frontEnd();
    const l = dtltoRun(CLANG22, ['-O2', '-c', 'lonely.c', '-o', 'other.o'], t.dir);
    assert.equal(l.status, 0, l.stderr);
  });
  after(() => cache.destroy());

  test("the raced job stores clang's object; the relink is served it and the program runs", () => {
    // clang, then (while `race` exists) another object renamed over main's real output (its name
    // with a redirect undone) before the compiler exits.
    const racing = join(t.dir, 'racing-clang.sh');
    writeFileSync(
      racing,
      `#!/bin/sh
${CLANG22} "$@"; rc=$?
out=; prev=; for a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; done
name=$(basename "$out" | sed 's/^\\.\\(.*\\)\\.ltocache-out-[0-9a-f]*$/\\1/')
real=$(dirname "$out")/$name
case "$name" in main.*) [ -e race ] && cp other.o "$real.race" && mv -f "$real.race" "$real";; esac
exit $rc
`,
    );
    chmodSync(racing, 0o755);
    const link = (out: string) => t.linkLld(CLIENT, ['distribute'], { env: cache.env, out, extra: [`--thinlto-remote-compiler=${racing}`] });
    writeFileSync(join(t.dir, 'race'), '');
    link('prog.raced');
    rmSync(join(t.dir, 'race'));
    const before = cache.stats();
    const r = link('prog');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(cache.stats().hits - before.hits, t.modules.length, 'the relink was served from the raced link');
    assert.equal(dtltoRun(join(t.dir, 'prog'), [], t.dir).stdout, t.oracle());
  });
});

describe('an existing output its user may not write', () => {
  // Root may write any file: the client, the daemon and clang run as another user.
  const uid = 4243;
  let top = '';
  after(() => {
    if (!top) return;
    spawnSync(process.execPath, [CLI, 'daemon', 'stop'], { env: { ...process.env, LTOCACHE_DIR: join(top, 'cache') }, uid, gid: uid });
    rmSync(socketDirFor(uid), { recursive: true, force: true });
    rmSync(top, { recursive: true, force: true });
  });

  test("a miss is not redirected over it: clang's own error and status, the file left as it was", {
    skip: process.getuid?.() !== 0 && 'needs root to run as another user',
  }, (t) => {
    top = tempDir('race-readonly');
    const b = ThinBuild.fromFixture(FIXTURE, join(top, 'src'));
    b.frontEnd();
    b.thinLink();
    const own = (p: string) => {
      chownSync(p, uid, uid);
      if (lstatSync(p).isDirectory()) for (const n of readdirSync(p)) own(join(p, n));
    };
    own(top);
    const env = { ...process.env, HOME: top, LTOCACHE_DIR: join(top, 'cache'), LTOCACHE_IDLE_TIMEOUT: '120', LTOCACHE_START_TIMEOUT_MS: '10000' };
    const as = (cmd: string, args: string[]) => {
      const r = spawnSync(cmd, args, { cwd: b.dir, env, uid, gid: uid, encoding: 'utf8' });
      return { status: r.status, stdout: r.stdout, stderr: r.stderr };
    };
    if (as('test', ['-x', CLIENT]).status !== 0 || as('test', ['-r', CLI]).status !== 0) return t.skip('the checkout is not reachable by another user');
    assert.equal(as(process.execPath, [CLI, 'daemon', 'start']).status, 0);
    const readOnly = () => {
      rmSync(join(b.dir, 'ro.o'), { force: true });
      writeFileSync(join(b.dir, 'ro.o'), 'old\n');
      chownSync(join(b.dir, 'ro.o'), uid, uid);
      chmodSync(join(b.dir, 'ro.o'), 0o444);
    };
    readOnly();
    const args = b.backendArgs('main', [], 'ro.o');
    const direct = as(b.clang, args);
    assert.equal(direct.status, 1, direct.stderr);
    assert.match(direct.stderr, /unable to open output file 'ro\.o'/);
    readOnly();
    const r = as(CLIENT, [b.clang, ...args]);
    assert.deepEqual(r, direct);
    assert.equal(readFileSync(join(b.dir, 'ro.o'), 'utf8'), 'old\n', 'the read-only output was replaced');
    assert.equal(statSync(join(b.dir, 'ro.o')).mode & 0o777, 0o444);
    assert.deepEqual(
      readdirSync(b.dir).filter((f) => f.includes('.ltocache-')),
      [],
    );
  });
});
