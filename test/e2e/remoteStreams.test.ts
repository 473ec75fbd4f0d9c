/**
 * The daemon's side of the team server's per-connection request limit (`maxStreams`, announced
 * in the welcome): a burst of concurrent gets and puts (a make -j64 with an empty local cache, an
 * upload queue draining) waits for a free stream instead of being refused with
 * `too-many-streams`, which would fail gets and count against the circuit breaker.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { RemoteBackend } from '../../src/remote/remoteBackend.js';
import { CacheServer } from '../../src/remote/server/cacheServer.js';
import type { StoredEntry } from '../../src/store/backend.js';

await initHash();

const SECRET = 'write-secret-0123456789';

function entry(n: number): StoredEntry {
  const obj = randomBytes(3000 + n);
  return {
    record: { v: 1, outputs: [{ name: 'obj', digest: hashBytes(obj), size: obj.length }], stdout: '', stderr: '', exitCode: 0, compileMs: 10, createdAt: 1_700_000_000_000 },
    files: new Map([['obj', obj]]),
  };
}

test('more concurrent requests than the server allows per connection queue for a stream; none is refused', { timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ltocache-streams-'));
  const s = new CacheServer({ dir, port: 0, tokens: [{ name: 'w', scope: 'write', secret: SECRET }], limits: { maxStreams: 2 } });
  await s.start();
  const r = new RemoteBackend({ url: s.url, token: SECRET, timeoutMs: 20_000 });
  t.after(async () => {
    r.close();
    await s.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const N = 24;
  const entries = Array.from({ length: N }, (_, i) => entry(i));
  const keys = entries.map((_, i) => hashBytes(`job-${i}`));
  const puts = await Promise.all(entries.map((e, i) => r.put(keys[i]!, e)));
  assert.deepEqual(
    puts.map((p) => p.kind),
    Array(N).fill('stored'),
    JSON.stringify(puts.filter((p) => p.kind !== 'stored')),
  );
  const gets = await Promise.all(keys.map((k) => r.get(k)));
  for (const [i, g] of gets.entries()) {
    assert.equal(g.kind, 'hit', `get ${i}: ${JSON.stringify(g)}`);
    if (g.kind === 'hit') assert.ok(g.entry.files.get('obj')!.equals(entries[i]!.files.get('obj')!));
  }
  const st = await r.stats();
  assert.equal(st.bad_messages, 0, 'no request was refused as over the limit');
  assert.equal(r.breaker.open, false);
});
