/**
 * The daemon's side of the team server's limits, against a real server: a burst of concurrent
 * requests waits for a free stream (`maxStreams`) instead of being refused, and bundles larger
 * than a daemon reads are neither put nor sent to it (a server may allow larger ones).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { type TestContext, test } from 'node:test';
import { WebSocket } from 'ws';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { encodeTeamMemo } from '../../src/memo/teamMemo.js';
import type { Limits } from '../../src/protocol/remote.js';
import { RemoteBackend } from '../../src/remote/remoteBackend.js';
import { CacheServer } from '../../src/remote/server/cacheServer.js';
import type { StoredEntry } from '../../src/store/backend.js';
import { tempDir } from '../support/env.js';

await initHash();

const SECRET = 'write-secret-0123456789';

function entry(n: number, size = 3000): StoredEntry {
  const obj = randomBytes(size + n);
  return {
    record: { v: 1, outputs: [{ name: 'obj', digest: hashBytes(obj), size: obj.length }], stdout: '', stderr: '', exitCode: 0, compileMs: 10, createdAt: 1_700_000_000_000 },
    files: new Map([['obj', obj]]),
  };
}

/**
 * A real server with `limits` in a fresh directory, a writer client (a daemon's bounds) and a
 * reader that reads bundles of at most 64 KiB (a daemon's 64 MiB, scaled down); all stopped and
 * removed after the test.
 */
async function setUp(t: TestContext, limits: Partial<Limits>): Promise<{ s: CacheServer; writer: RemoteBackend; reader: RemoteBackend }> {
  const dir = tempDir('limits');
  const s = new CacheServer({ dir, port: 0, tokens: [{ name: 'w', scope: 'write', secret: SECRET }], limits });
  await s.start();
  const writer = new RemoteBackend({ url: s.url, token: SECRET, timeoutMs: 20_000 });
  const reader = new RemoteBackend({ url: s.url, token: SECRET, timeoutMs: 20_000, maxBundleBytes: 64 << 10 });
  t.after(async () => {
    writer.close();
    reader.close();
    await s.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return { s, writer, reader };
}

test('more concurrent requests than the server allows per connection queue for a stream; none is refused', { timeout: 60_000 }, async (t) => {
  const { writer: r } = await setUp(t, { maxStreams: 2 });
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

test('an entry larger than a daemon reads is a miss for it, not a closed connection; it does not put one', { timeout: 60_000 }, async (t) => {
  // The server takes bundles up to 1 MiB, the reader reads 64 KiB.
  const { writer, reader } = await setUp(t, { maxBundleBytes: 1 << 20, maxEntries: 1 });
  const big = entry(0, 200 << 10);
  const small = entry(0, 10 << 10);
  const [bigKey, smallKey, refusedKey] = ['big', 'small', 'refused'].map((n) => hashBytes(n));
  assert.equal((await writer.put(bigKey!, big)).kind, 'stored');
  assert.equal((await writer.put(smallKey!, small)).kind, 'stored');
  // An entry of more outputs than the server takes is refused here, not sent to be rejected.
  const two = entry(2);
  two.record.outputs.push({ ...two.record.outputs[0]!, name: 'dwo' });
  two.files.set('dwo', two.files.get('obj')!);
  const tooMany = await writer.put(hashBytes('two'), two);
  assert.equal(tooMany.kind, 'refused', JSON.stringify(tooMany));
  const refused = await reader.put(refusedKey!, entry(1, 100 << 10));
  assert.equal(refused.kind, 'refused');
  assert.match(refused.kind === 'refused' ? refused.reason : '', /a daemon reads/);
  const [tooBig, fine] = await Promise.all([reader.get(bigKey!), reader.get(smallKey!)]);
  assert.equal(tooBig.kind, 'miss', JSON.stringify(tooBig));
  assert.equal(fine.kind, 'hit', JSON.stringify(fine));
  assert.equal((await writer.get(bigKey!)).kind, 'hit', 'a client that reads it gets it');
  assert.equal((await reader.get(refusedKey!)).kind, 'miss', 'the refused put sent nothing');
  const st = await reader.stats();
  assert.equal(st.bad_messages, 0);
  assert.equal(st.rejected_bundles, 0, 'nothing was sent to be rejected');
  assert.equal(reader.breaker.open, false);
});

function teamMemo(n: number, padding: number): Buffer {
  return encodeTeamMemo({
    lookup: hashBytes(`lookup-${n}`),
    key: hashBytes(`key-${n}`),
    checks: [{ kind: 'content', path: `/tree/m${n}.o`, size: 1, digest: hashBytes(`m${n}`) }],
    outputs: [{ role: 'obj', path: `/tree/m${n}.native.o`, digest: hashBytes(`o${n}`), size: 3 }],
    stdout: Buffer.from('x'.repeat(padding)),
    stderr: Buffer.alloc(0),
  });
}

test('a team memo list stops short of what a daemon reads; a memo over the text limit is refused before it is sent', { timeout: 60_000 }, async (t) => {
  const { writer, reader } = await setUp(t, { maxBundleBytes: 1 << 20, maxMessageBytes: 16 << 10 });
  const scope = hashBytes('scope');
  const memos = Array.from({ length: 20 }, (_, i) => teamMemo(i, 10_000));
  for (const m of memos) assert.equal((await writer.putMemo(scope, m)).kind, 'stored');
  // 27 KB of base64 in a 16 KiB message: refused here, never sent.
  const big = await writer.putMemo(scope, teamMemo(99, 20_000));
  assert.equal(big.kind, 'refused', JSON.stringify(big));
  const all = await writer.scopeMemos(scope);
  assert.equal(all?.memos.length, 20, 'a client reading 64 MiB gets all 20 (about 200 KB)');
  assert.equal(all?.complete, true);
  const list = await reader.scopeMemos(scope);
  assert.ok(list, 'the list came');
  const got = list.memos;
  assert.ok(got.length > 0 && got.length < 20, `${got.length} memos`);
  assert.equal(list.complete, false, 'the list says it was cut');
  assert.ok(got.reduce((n, m) => n + 4 + m.length, 4) <= 64 << 10);
  for (const m of got) assert.ok(memos.some((x) => x.equals(m)));
  const st = await reader.stats();
  assert.equal(st.bad_messages, 0);
  assert.equal(reader.breaker.open, false);
  assert.equal(writer.breaker.open, false);
});

test('a peer that reads nothing is closed after the idle timeout, and its answers are let go', { timeout: 60_000 }, async (t) => {
  const { s, writer } = await setUp(t, { idleTimeoutMs: 500 });
  const e = entry(0, 1 << 20);
  const key = hashBytes('an entry for a peer that reads nothing');
  assert.equal((await writer.put(key, e)).kind, 'stored');
  writer.close();
  for (let i = 0; i < 100 && s.stats().connected_clients > 0; i++) await new Promise((r) => setTimeout(r, 20));
  const ws = new WebSocket(s.url, { headers: { authorization: `Bearer ${SECRET}` } });
  t.after(() => ws.terminate());
  ws.on('error', () => {});
  await new Promise((r) => ws.once('open', r));
  const welcome = new Promise((r) => ws.once('message', r));
  ws.send(JSON.stringify({ type: 'hello', protocol: 1, client: 'a peer that stops reading' }));
  await welcome;
  // Far more answer bytes (32 MiB) than the loopback socket buffers take, then nothing read.
  ws.pause();
  for (let i = 1; i <= 32; i++) ws.send(JSON.stringify({ type: 'get', id: i, key }));
  for (let i = 0; i < 50 && s.stats().connected_clients === 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(s.stats().connected_clients, 1);
  const t0 = Date.now();
  while (s.stats().connected_clients > 0 && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 50));
  assert.equal(s.stats().connected_clients, 0, 'closed: it would otherwise hold 32 answers for as long as it lives');
});
