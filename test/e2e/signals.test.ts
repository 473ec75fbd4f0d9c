import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../support/env.js';

/**
 * A client killed while the compiler it runs for a miss is at work: the compiler gets the signal
 * too, as it would from the shell, and cleans up after itself (clang removes its temp object),
 * instead of dying by the client's PR_SET_PDEATHSIG SIGKILL.
 */

let b: ThinBuild;
let cache: CacheEnv;
before(() => {
  b = ThinBuild.fromFixture(FIXTURE, join(tempDir('signals-tree'), 'src'));
  b.frontEnd();
  b.thinLink();
  cache = new CacheEnv('signals');
  cache.start();
});
after(() => cache.destroy());

/** A compiler that leaves `<name>.tmp.<pid>` in the build directory while it works (20 s) and
 *  removes it on SIGTERM, as clang does with its temp object (and stops its sleep, which would
 *  otherwise outlive the test); then runs clang. */
function slowCompiler(name: string): string {
  const cc = join(b.dir, `${name}.sh`);
  writeFileSync(
    cc,
    `#!/bin/sh
t="$PWD/${name}.tmp.$$"
trap 'kill $s 2>/dev/null; rm -f "$t"; trap - TERM; kill -TERM $$' TERM
: > "$t"
sleep 20 &
s=$!
wait $s
exec ${b.clang} "$@"
`,
  );
  chmodSync(cc, 0o755);
  return cc;
}

test('SIGTERM to the client during a miss reaches the compiler, which cleans up; the client then dies by SIGTERM', async () => {
  const cc = slowCompiler('slowcc');
  const m = b.modules[0]!;
  const child = spawn(CLIENT, [cc, ...b.backendArgs(m)], { cwd: b.dir, env: cache.env, stdio: 'ignore' });
  const started = Date.now();
  while (!readdirSync(b.dir).some((f) => f.startsWith('slowcc.tmp.')) && Date.now() - started < 20_000) await new Promise((r) => setTimeout(r, 20));
  assert.ok(
    readdirSync(b.dir).some((f) => f.startsWith('slowcc.tmp.')),
    'the compiler started',
  );
  child.kill('SIGTERM');
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((r) => child.on('exit', (c, s) => r([c, s])));
  assert.deepEqual([code, signal], [null, 'SIGTERM']);
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(
    readdirSync(b.dir).filter((f) => f.startsWith('slowcc.tmp.')),
    [],
    "the compiler's temp file is gone: it got SIGTERM, not SIGKILL",
  );
  assert.equal(existsSync(join(b.dir, `${m}.thinlto-native.o`)), false);
});

test('a file size limit reached while a fast-path hit writes its temp: the client dies by SIGXFSZ as clang does, and leaves no temp behind', () => {
  const m = b.modules[1]!;
  const out = `${m}.fsize.o`;
  const args = b.backendArgs(m, [], out);
  // No byte may be written to a regular file: clang's temp object and the client's temp alike.
  // LLVM_DISABLE_SYMBOLIZATION: clang's crash handler would otherwise run llvm-symbolizer through
  // temp files in TMPDIR, which the size limit kills half-made and leaves behind (not keyed).
  const limited = (cmd: string[]) => spawnSync('sh', ['-c', 'ulimit -f 0; exec "$@"', 'sh', ...cmd], { cwd: b.dir, env: { ...cache.env, LLVM_DISABLE_SYMBOLIZATION: '1' } });
  const temps = () => readdirSync(b.dir).filter((f) => f.includes('.ltocache-') || f.endsWith('.tmp'));
  const direct = limited([b.clang, ...args]);
  assert.equal(direct.signal, 'SIGXFSZ', 'clang dies by SIGXFSZ');
  assert.deepEqual(temps(), [], 'clang leaves no temp');
  for (const what of ['miss', 'hit that writes the memo']) assert.equal(spawnSync(CLIENT, [b.clang, ...args], { cwd: b.dir, env: cache.env }).status, 0, what);
  rmSync(join(b.dir, out));
  const r = limited([CLIENT, b.clang, ...args]);
  assert.equal(r.signal, 'SIGXFSZ', `the client dies as clang does; stderr: ${r.stderr}`);
  assert.deepEqual(temps(), [], 'the client leaves no temp');
  assert.equal(existsSync(join(b.dir, out)), false, 'and no object');
});

test('a distribution whose client is killed: the compilers the daemon runs for it get SIGTERM and clean up', async () => {
  // The daemon runs this one for a DTLTO job ('T'), in its own process group.
  const cc = slowCompiler('slowdist');
  const m = b.modules[0]!;
  const out = `${m}.1.4242.native.o`;
  const file = join(b.dir, 'prog.4242.dist-file.json');
  const args = b.backendArgs(m, [], out);
  writeFileSync(file, JSON.stringify({ common: { linker_output: 'prog', args: [cc] }, jobs: [{ args, inputs: [`${m}.o`, `${m}.o.thinlto.bc`], outputs: [out] }] }));
  const child = spawn(CLIENT, ['distribute', file], { cwd: b.dir, env: cache.env, stdio: 'ignore' });
  const temps = () => readdirSync(b.dir).filter((f) => f.startsWith('slowdist.tmp.'));
  const started = Date.now();
  while (!temps().length && Date.now() - started < 20_000) await new Promise((r) => setTimeout(r, 20));
  assert.equal(temps().length, 1, 'the compiler started');
  child.kill('SIGKILL');
  await new Promise((r) => child.on('exit', r));
  const gone = Date.now();
  while (temps().length && Date.now() - gone < 5000) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(temps(), [], "the compiler's temp file is gone: it got SIGTERM, not SIGKILL");
  assert.equal(existsSync(join(b.dir, out)), false);
});
