import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { tempDir } from '../support/env.js';

const TOP = resolve(fileURLToPath(import.meta.url), '../../../..');
const dir = tempDir('client-build');

/** client/build.sh into `out` with `env`; its status and stderr. */
function build(out: string, env: NodeJS.ProcessEnv): { status: number | null; stderr: string } {
  const r = spawnSync('sh', [join(TOP, 'client', 'build.sh')], { env: { ...process.env, ...env, LTOCACHE_CLIENT_OUT: out }, encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr };
}

// Builds no other test makes: a break there shows only when the benchmark or a packager needs them.
test('the client builds with -DLTOCACHE_MEMO_TIMING (bench/hitPath.ts), and with plain cc against glibc', () => {
  for (const [name, env] of [
    ['timing', { LTOCACHE_CLIENT_CFLAGS: '-DLTOCACHE_MEMO_TIMING' }],
    ['glibc', { CC_FOR_CLIENT: 'cc' }],
  ] as const) {
    // Named ltocache: under another name the client stands in for the compiler of that name.
    const out = join(dir, name, 'ltocache');
    const r = build(out, env);
    assert.equal(r.status, 0, `${name} build failed:\n${r.stderr}`);
    accessSync(out, constants.X_OK);
    const v = spawnSync(out, ['--version'], { encoding: 'utf8', env: { ...process.env, LTOCACHE_DISABLE: '1' } });
    assert.match(v.stdout, /ltocache/, `${name} client runs`);
  }
});
