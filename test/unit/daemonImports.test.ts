import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

/**
 * A daemon without a team cache does not load the team tier's modules: a build whose daemon had
 * exited waits for its start, and `ws` and `tar-stream` were a tenth of it.
 */
test('importing the daemon loads neither ws nor tar-stream', () => {
  const daemon = fileURLToPath(new URL('../../src/daemon/daemon.js', import.meta.url));
  const script = `await import(${JSON.stringify(daemon)});
const { createRequire } = await import('node:module');
const loaded = Object.keys(createRequire(import.meta.url).cache);
console.log(JSON.stringify(loaded.filter((p) => /node_modules\\/(ws|tar-stream)\\//.test(p))));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), []);
  // The check itself sees CommonJS modules loaded from node_modules: the team tier's client does load ws.
  const remote = fileURLToPath(new URL('../../src/remote/remoteBackend.js', import.meta.url));
  const r2 = spawnSync(process.execPath, ['--input-type=module', '-e', script.replace(JSON.stringify(daemon), JSON.stringify(remote))], { encoding: 'utf8' });
  assert.equal(r2.status, 0, r2.stderr);
  assert.ok((JSON.parse(r2.stdout) as string[]).some((p) => p.includes('/ws/')));
});
