import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadConfig } from '../../src/config/config.js';
import { CLI, CLIENT, tempDir } from '../support/env.js';

function cli(args: string[], env: Record<string, string>): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr };
}

test('a daemon a job starts with an invalid configuration says why in daemon.log (its stderr is /dev/null)', () => {
  const dir = tempDir('clierr');
  try {
    writeFileSync(join(dir, 'ltocache.conf'), 'jobs = 0\n');
    const r = cli(['daemon', 'run', '--background'], { LTOCACHE_DIR: dir });
    assert.equal(r.status, 2);
    const log = readFileSync(join(dir, 'daemon.log'), 'utf8');
    assert.match(log, /"level":"error".*daemon not started.*jobs: must be at least 1/);
    // A foreground run and other commands report on stderr and leave the log alone.
    rmSync(join(dir, 'daemon.log'));
    assert.equal(cli(['daemon', 'run'], { LTOCACHE_DIR: dir }).status, 2);
    assert.match(cli(['stats'], { LTOCACHE_DIR: dir }).stderr, /ltocache\.conf: jobs: must be at least 1 \(got '0'\)/);
    assert.equal(existsSync(join(dir, 'daemon.log')), false);
    // No cache directory yet: nothing is created for the log.
    const missing = join(dir, 'not-yet');
    assert.equal(cli(['daemon', 'run', '--background'], { LTOCACHE_DIR: missing, LTOCACHE_JOBS: '0' }).status, 2);
    assert.equal(existsSync(missing), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("COMMAND --help prints that command's usage; a stray argument to clear is refused and the store kept", () => {
  const dir = tempDir('clierr');
  try {
    const help = spawnSync(process.execPath, [CLI, 'stats', '--help'], { env: { ...process.env, LTOCACHE_DIR: dir }, encoding: 'utf8' });
    assert.equal(help.status, 0);
    assert.match(help.stdout, /^usage:\n {2}ltocache stats \[--json\]/);
    assert.ok(!help.stdout.includes('ltocache daemon'), help.stdout);
    assert.match(spawnSync(process.execPath, [CLI, 'build-client', '--help'], { encoding: 'utf8' }).stdout, /ltocache-cli build-client/);
    // `ltocache -h` through the native client: a command, not a compiler named -h.
    const h = spawnSync(CLIENT, ['-h'], { env: { ...process.env, LTOCACHE_DIR: dir }, encoding: 'utf8' });
    assert.equal(h.status, 0, h.stderr);
    assert.match(h.stdout, /^usage:\n {2}ltocache <compiler>/);
    const serve = spawnSync(process.execPath, [CLI, 'serve', '--help'], { encoding: 'utf8' });
    assert.equal(serve.status, 0);
    assert.match(serve.stdout, /--storage URL/);
    writeFileSync(join(dir, 'keep'), '');
    for (const args of [
      ['clear', '--all'],
      ['config', 'show', 'extra'],
      ['demo', 'now'],
      ['--version', 'x'],
    ]) {
      const r = cli(args, { LTOCACHE_DIR: dir });
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /unexpected argument|expected 'config show'/);
    }
    assert.equal(existsSync(join(dir, 'keep')), true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('output to a reader that went away (ltocache stats | head -1) ends quietly, without a stack trace', async () => {
  const c = spawn(process.execPath, [CLI, 'help'], { stdio: ['ignore', 'pipe', 'pipe'] });
  c.stdout.destroy(); // the read end closed before the CLI (still starting) writes
  let err = '';
  c.stderr.on('data', (d: Buffer) => (err += d));
  const status = await new Promise<number | null>((r) => c.on('close', r));
  assert.equal(err, '');
  assert.equal(status, 0);
});

test('a daemon that fails to start after opening its store says why in daemon.log', async () => {
  const dir = tempDir('clierr');
  try {
    const { Daemon } = await import('../../src/daemon/daemon.js');
    const { config } = loadConfig({ LTOCACHE_DIR: dir });
    // A CA file that went away after the configuration was checked.
    await assert.rejects(Daemon.start({ ...config, remote: 'ws://127.0.0.1:1', remote_ca: join(dir, 'gone.pem') }));
    assert.match(readFileSync(join(dir, 'daemon.log'), 'utf8'), /"level":"error","msg":"the daemon does not start".*gone\.pem/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
