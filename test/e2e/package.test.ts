import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { processAlive } from '../../src/util/processAlive.js';
import { TOP, tempDir } from '../support/env.js';

/**
 * The package as users get it: `npm pack`, then `npm install -g --prefix P` with npm's defaults
 * (no install scripts run) and a PATH without the checkout's bin/. `ltocache` must be the native
 * client, serve a real backend job (clang-19, lld-19) as a hit the second time, and bring its
 * man page and completions; the arm64 client must be an aarch64 ELF.
 */

const CC = 'clang-19';

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {}) {
  const r = spawnSync(cmd, args, { cwd: opts.cwd ?? TOP, env: opts.env ?? process.env, encoding: 'utf8', input: opts.input ?? '', timeout: 300_000 });
  return { status: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '', error: r.error };
}

function has(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** npm's defaults: no npm_config_* or other npm_* variables inherited from an `npm test` run. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k)) env[k] = v;
  return { ...env, ...extra };
}

/** e_machine of an ELF file (offset 18, little-endian), or -1 if it is not a 64-bit LE ELF. */
function elfMachine(file: string): number {
  const h = readFileSync(file).subarray(0, 20);
  if (h.readUInt32BE(0) !== 0x7f454c46 || h[4] !== 2 || h[5] !== 1) return -1;
  return h.readUInt16LE(18);
}

describe('npm pack + npm install -g', () => {
  let tmp: string;
  let prefix: string;
  let pkgDir: string;
  let env: NodeJS.ProcessEnv;
  let work: string;
  /** Installs the packed tarball into `prefix` (again: an upgrade in place). */
  let install: () => void;

  before(() => {
    tmp = tempDir('pkg');
    prefix = join(tmp, 'prefix');
    const b = run('sh', [join(TOP, 'client', 'prebuilt.sh')]);
    assert.equal(b.status, 0, `build:prebuilt: ${b.stderr}`);
    // prepare (npm run build) would rebuild dist/ under the running tests; it is built already.
    const p = run('npm', ['pack', '--ignore-scripts', '--pack-destination', tmp], { env: cleanEnv({}) });
    assert.equal(p.status, 0, p.stderr);
    const tgz = readdirSync(tmp).find((f) => /^ltocache-.*\.tgz$/.test(f));
    assert.ok(tgz, 'no tarball');
    const path = (process.env.PATH ?? '').split(':').filter((d) => d && !d.startsWith(join(TOP, 'bin')) && !d.startsWith(join(TOP, 'node_modules')));
    install = () => {
      const i = run('npm', ['install', '-g', '--no-audit', '--no-fund', '--prefix', prefix, join(tmp, tgz)], { env: cleanEnv({ PATH: path.join(':') }) });
      assert.equal(i.status, 0, `npm install -g: ${i.stderr}`);
    };
    install();
    pkgDir = join(prefix, 'lib', 'node_modules', 'ltocache');
    env = cleanEnv({
      PATH: [join(prefix, 'bin'), ...path].join(':'),
      LTOCACHE_DIR: join(tmp, 'cache'),
      LTOCACHE_IDLE_TIMEOUT: '120',
      LTOCACHE_START_TIMEOUT_MS: '10000',
    });
    work = join(tmp, 'work');
    mkdirSync(work);
    writeFileSync(join(work, 'a.c'), 'int fb(int);\nint fa(int x) { return fb(x) + 1; }\n');
    writeFileSync(join(work, 'b.c'), 'int fb(int x) { return x * 3; }\nint fa(int);\nint main(int argc, char **argv) { (void)argv; return fa(argc); }\n');
  });

  after(() => {
    if (env) run(join(prefix, 'bin', 'ltocache'), ['daemon', 'stop'], { env });
    rmSync(tmp, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  });

  test('ltocache on PATH is the native client and serves a backend job as a hit the second time', () => {
    const which = run('sh', ['-c', 'command -v ltocache'], { env });
    assert.equal(which.stdout.trim(), join(prefix, 'bin', 'ltocache'));
    for (const m of ['a', 'b']) assert.equal(run(CC, ['-O2', '-flto=thin', '-c', `${m}.c`, '-o', `${m}.o`], { cwd: work }).status, 0);
    const link = run('ld.lld-19', ['-r', '--thinlto-index-only=list', 'a.o', 'b.o', '-o', 'x'], { cwd: work });
    assert.equal(link.status, 0, link.stderr);
    const job = ['-O2', '-x', 'ir', '-fno-lto', '-fthinlto-index=a.o.thinlto.bc', '-c', '-o', 'a.native.o', 'a.o'];
    const first = run('ltocache', [CC, ...job], { cwd: work, env });
    assert.equal(first.status, 0, first.stderr);
    // The first run replaced the launcher with the native client: later runs start no shell.
    assert.equal(elfMachine(realpathSync(join(prefix, 'bin', 'ltocache'))), process.arch === 'arm64' ? 183 : 62);
    const cold = readFileSync(join(work, 'a.native.o'));
    rmSync(join(work, 'a.native.o'));
    const second = run('ltocache', [CC, ...job], { cwd: work, env });
    assert.equal(second.status, 0, second.stderr);
    assert.ok(readFileSync(join(work, 'a.native.o')).equals(cold), 'served object differs from the compiled one');
    const stats = run('ltocache', ['stats', '--json'], { env });
    assert.equal(stats.status, 0, stats.stderr);
    const s = JSON.parse(stats.stdout) as { hits: number; misses: number };
    assert.deepEqual([s.hits, s.misses], [1, 1]);
    const human = run('ltocache', ['stats'], { env });
    assert.equal(human.status, 0, human.stderr);
  });

  test('ltocache --version names client, daemon and store layout', () => {
    const v = run('ltocache', ['--version'], { env });
    assert.equal(v.status, 0, v.stderr);
    const version = (JSON.parse(readFileSync(join(TOP, 'package.json'), 'utf8')) as { version: string }).version;
    assert.match(v.stdout, new RegExp(`^client  ${version.replace(/\./g, '\\.')} \\(protocol \\d+\\) `, 'm'));
    assert.match(v.stdout, /^daemon {2}\S+ \(running, pid \d+\)$/m);
    assert.match(v.stdout, /^layout {2}\d+ \(store .* has layout \d+\)$/m);
    assert.doesNotMatch(v.stdout, /older/);
    // A client newer than the running daemon (an upgrade under a live daemon) is told to restart it.
    const newer = run('ltocache-cli', ['--version'], { env: { ...env, LTOCACHE_CLIENT_VERSION: '999.0.0' } });
    assert.equal(newer.status, 0, newer.stderr);
    assert.match(newer.stdout, /the running daemon \(\S+\) is older than the installed client \(999\.0\.0\); restart it: ltocache daemon restart/);
    const restart = run('ltocache', ['daemon', 'restart'], { env });
    assert.equal(restart.status, 0, restart.stderr);
    assert.match(restart.stdout, /daemon stopped\ndaemon started \(pid \d+\)/);
  });

  test('installing over the package stops its running daemon; the next job starts one from the new files', async () => {
    const pidFile = join(tmp, 'cache', 'daemon.pid');
    const old = Number(readFileSync(pidFile, 'utf8'));
    assert.ok(processAlive(old));
    install();
    for (let i = 0; i < 100 && processAlive(old); i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(processAlive(old), false, 'the daemon of the replaced files stopped');
    // Through the daemon (no memo): the client starts the new one, which serves the stored entry.
    rmSync(join(work, 'a.native.o'));
    const job = ['-O2', '-x', 'ir', '-fno-lto', '-fthinlto-index=a.o.thinlto.bc', '-c', '-o', 'a.native.o', 'a.o'];
    const r = run('ltocache', [CC, ...job], { cwd: work, env: { ...env, LTOCACHE_MEMO: '0' } });
    assert.equal(r.status, 0, r.stderr);
    const now = Number(readFileSync(pidFile, 'utf8'));
    assert.notEqual(now, old);
    assert.ok(processAlive(now));
    const s = JSON.parse(run('ltocache', ['stats', '--json'], { env }).stdout) as { hits: number; misses: number };
    assert.deepEqual([s.hits, s.misses], [2, 1], 'the store outlived the daemon: a hit');
  });

  test('the man page is installed and renders', (t) => {
    const page = join(prefix, 'share', 'man', 'man1', 'ltocache.1');
    let r: ReturnType<typeof run>;
    if (has('man')) r = run('man', ['-l', '-P', 'cat', page], { env: { ...env, MANWIDTH: '100' } });
    else if (has('groff')) r = run('groff', ['-man', '-Tutf8', page]);
    else return t.skip('neither man nor groff installed');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /SYNOPSIS/);
    assert.match(r.stdout, /daemon restart/);
  });

  test('bash completion loads and completes commands', () => {
    const f = join(pkgDir, 'docs', 'completions', 'ltocache.bash');
    const r = run('bash', [
      '-c',
      `source '${f}' && COMP_WORDS=(ltocache st) COMP_CWORD=1 && _ltocache && echo "\${COMPREPLY[*]}" && COMP_WORDS=(ltocache daemon re) COMP_CWORD=2 && _ltocache && echo "\${COMPREPLY[*]}"`,
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), ['stats', 'restart']);
  });

  test('zsh completion loads', (t) => {
    if (!has('zsh')) return t.skip('zsh not installed');
    const r = run('zsh', [
      '-fc',
      `fpath=('${join(pkgDir, 'docs', 'completions')}' $fpath); autoload -Uz compinit; compinit -u -d '${join(tmp, 'zcompdump')}'; print -r -- $_comps[ltocache]`,
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), '_ltocache');
  });

  test('fish completion loads and completes commands', (t) => {
    if (!has('fish')) return t.skip('fish not installed');
    const f = join(pkgDir, 'docs', 'completions', 'ltocache.fish');
    const r = run('fish', ['--no-config', '-c', `source '${f}'; complete -C 'ltocache daemon re'`]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), ['restart']);
  });

  test('the arm64 client is an aarch64 ELF and runs under qemu-aarch64', (t) => {
    const arm = join(pkgDir, 'prebuilt', 'linux-arm64', 'ltocache');
    assert.equal(elfMachine(arm), 183);
    assert.equal(elfMachine(join(pkgDir, 'prebuilt', 'linux-x64', 'ltocache')), 62);
    if (!has('qemu-aarch64')) return t.skip('qemu-aarch64 not installed (Debian qemu-user)');
    // The socket-path hook needs no daemon and no Node: both clients must agree.
    const hook = { ...env, LTOCACHE_PRINT_SOCKET: '1' };
    const viaQemu = run('qemu-aarch64', [arm], { env: hook });
    assert.equal(viaQemu.status, 0, viaQemu.stderr);
    assert.equal(viaQemu.stdout, run(join(pkgDir, 'prebuilt', 'linux-x64', 'ltocache'), [], { env: hook }).stdout);
  });

  test('a platform without a prebuilt client gets a message naming build-client, which builds one', () => {
    const bare = join(tmp, 'bare');
    mkdirSync(bare);
    copyFileSync(join(pkgDir, 'client', 'launcher.sh'), join(bare, 'ltocache'));
    const r = run('sh', [join(bare, 'ltocache'), '--version'], { env });
    assert.equal(r.status, 127);
    assert.match(r.stderr, /no prebuilt native client for linux-\w+/);
    assert.match(r.stderr, /ltocache-cli build-client/);
    if (!has('cc')) return;
    const out = join(tmp, 'built-ltocache');
    const b = run('ltocache-cli', ['build-client', '--out', out], { env });
    assert.equal(b.status, 0, b.stderr);
    assert.equal(elfMachine(out), process.arch === 'arm64' ? 183 : 62);
  });
});
