/**
 * The team cache on shared Redis storage, against real `redis-server` processes on loopback:
 * standalone and a 3-master + 3-replica cluster, several servers on one storage, eviction, a
 * master killed mid-run, a server killed under a two-URL client, planted garbage, /metrics, team
 * memos (hashes by scope).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WebSocket } from 'ws';
import { ThinBuild } from '../../src/demo/thinBuild.js';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { encodeTeamMemo } from '../../src/memo/teamMemo.js';
import { decodeBinary, decodeMemoList } from '../../src/protocol/remote.js';
import { RemoteBackend } from '../../src/remote/remoteBackend.js';
import { CacheServer } from '../../src/remote/server/cacheServer.js';
import type { StorageErrorKind } from '../../src/remote/server/serverStorage.js';
import { CHUNK_BYTES, RedisStorage } from '../../src/remote/storage/redisStorage.js';
import type { EntryRecord } from '../../src/store/record.js';
import { CacheEnv, CLIENT, FIXTURE, tempDir } from '../support/env.js';
import { RedisCluster, RedisNode } from '../support/redis.js';
import { TOKENS as PROCESS_TOKENS, ServerProcess } from '../support/server.js';

await initHash();

const SECRETS = { read: 'read-secret-0123456789', write: 'write-secret-0123456789', admin: 'admin-secret-0123456789' };
const TOKENS = [
  { name: 'alice', scope: 'read' as const, secret: SECRETS.read },
  { name: 'ci', scope: 'write' as const, secret: SECRETS.write },
  { name: 'ops', scope: 'admin' as const, secret: SECRETS.admin },
];

let serial = 0;
const newKey = (): string => hashBytes(`redis-job-${process.pid}-${serial++}-${Math.random()}`);

function entry(files: Record<string, Buffer>): { record: EntryRecord; files: Map<string, Buffer> } {
  return {
    record: {
      v: 1,
      outputs: Object.entries(files).map(([name, data]) => ({ name, digest: hashBytes(data), size: data.length })),
      stdout: '',
      stderr: '',
      exitCode: 0,
      compileMs: 100,
      createdAt: 1_700_000_000_000,
    },
    files: new Map(Object.entries(files)),
  };
}

async function startServer(storage: string): Promise<CacheServer> {
  const s = new CacheServer({ storage, port: 0, tokens: TOKENS, accessLog: null, shutdownGraceMs: 500 });
  await s.start();
  return s;
}

function client(url: string, secret = SECRETS.write, timeoutMs = 5000): RemoteBackend {
  return new RemoteBackend({ url, token: secret, timeoutMs, putTimeoutMs: 10_000, breakerThreshold: 3, breakerCooldownMs: 200 });
}

function httpOf(wsUrl: string): string {
  return wsUrl.replace(/^ws/, 'http');
}

/** Parses Prometheus text format strictly enough to catch a malformed line (values as Go's ParseFloat takes them: NaN in any case); returns `name{labels}` → value. */
function parseProm(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || /^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* /.test(line)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$/i.exec(line);
    assert.ok(m, `not Prometheus text: ${JSON.stringify(line)}`);
    out.set(`${m[1]}${m[2] ?? ''}`, Number(m[3]));
  }
  return out;
}

async function metrics(s: CacheServer): Promise<Map<string, number>> {
  const r = await fetch(`${httpOf(s.url)}/metrics`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') ?? '', /^text\/plain/);
  return parseProm(await r.text());
}

/** HTTP status of an upgrade with this Authorization header (or none). */
function upgradeStatus(url: string, auth: string | null): Promise<number> {
  return new Promise((res) => {
    const ws = new WebSocket(url, auth === null ? {} : { headers: { authorization: auth } });
    ws.once('unexpected-response', (_req, r) => {
      res(r.statusCode ?? 0);
      ws.terminate();
    });
    ws.once('open', () => {
      res(101);
      ws.close();
    });
    ws.once('error', () => res(-1));
  });
}

async function assertTokensRefused(url: string): Promise<void> {
  assert.equal(await upgradeStatus(url, null), 401, 'missing token');
  assert.equal(await upgradeStatus(url, 'Bearer wrong-secret-0123456789abcdef'), 401, 'wrong token');
  assert.equal(await upgradeStatus(url, `Basic ${SECRETS.write}`), 401, 'wrong scheme');
}

/** Sends `admin clear` with an admin token and resolves with the reply's type. */
function adminClear(url: string, secret: string): Promise<string> {
  return new Promise((res, rej) => {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${secret}` } });
    ws.once('error', rej);
    ws.on('open', () => ws.send(JSON.stringify({ type: 'hello', protocol: 1, client: 'test' })));
    ws.on('message', (data) => {
      const m = JSON.parse(String(data)) as { type: string };
      if (m.type === 'welcome') return ws.send(JSON.stringify({ type: 'admin', id: 1, op: 'clear' }));
      ws.close();
      res(m.type);
    });
  });
}

/** Sends one request (id 1) after the handshake; resolves with the reply and, for `memos`, the memos of its binary message. */
type TeamReply = { type: string; id?: number; code?: string; count?: number; complete?: boolean };

function teamRequest(url: string, secret: string, msg: Record<string, unknown>): Promise<{ reply: TeamReply; memos?: Buffer[] }> {
  return new Promise((res, rej) => {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${secret}` } });
    let reply: TeamReply | null = null;
    const done = (r: { reply: TeamReply; memos?: Buffer[] }) => {
      ws.close();
      res(r);
    };
    ws.once('error', rej);
    ws.on('open', () => ws.send(JSON.stringify({ type: 'hello', protocol: 1, client: 'test' })));
    ws.on('message', (data, isBinary) => {
      if (isBinary) {
        const b = decodeBinary(data as Buffer);
        return done({ reply: reply!, memos: decodeMemoList(b.bundle, reply!.count!) });
      }
      const m = JSON.parse(String(data)) as TeamReply;
      if (m.type === 'welcome') return ws.send(JSON.stringify({ ...msg, id: 1 }));
      if (m.type === 'memos') reply = m;
      else done({ reply: m });
    });
  });
}

function teamMemo(lookup: string, stdout = ''): Buffer {
  return encodeTeamMemo({
    lookup,
    key: newKey(),
    checks: [{ kind: 'content', path: '/x', size: 1, digest: 'a'.repeat(32) }],
    outputs: [{ role: 'obj', path: '/o.o', digest: 'b'.repeat(32), size: 3 }],
    stdout: Buffer.from(stdout),
    stderr: Buffer.alloc(0),
  });
}

const sortedHex = (bs: readonly Buffer[]) => bs.map((b) => b.toString('hex')).sort();

/**
 * putMemo / scopeMemos of a RedisStorage on `url`: byte-identical, the newest memo per lookup,
 * scopes apart, `max` (HSCAN past it), one hash per scope; clear removes them. No storage error.
 */
async function memoRoundTrip(url: string, keysOf: (pattern: string) => string[]): Promise<void> {
  const errors: StorageErrorKind[] = [];
  const s = await RedisStorage.open(url, (k) => errors.push(k), { warn: () => {} });
  try {
    const [a, b] = [newKey(), newKey()];
    const l1 = newKey();
    const binary = (n: number) => Buffer.concat([Buffer.from([0, 255, 13, 10, n]), randomBytes(200)]);
    const [a1, a1b, b1] = [binary(1), binary(2), binary(3)];
    assert.deepEqual(await s.putMemo(a, l1, a1), { kind: 'stored' });
    assert.deepEqual(await s.putMemo(b, l1, b1), { kind: 'stored' });
    assert.deepEqual(await s.putMemo(a, l1, a1b), { kind: 'stored' });
    const many = Array.from({ length: 2500 }, (_, i) => binary(i & 0xff));
    await Promise.all(many.map((m) => s.putMemo(a, newKey(), m)));
    const all = await s.scopeMemos(a, 10_000);
    assert.equal(all.kind, 'memos');
    if (all.kind === 'memos') assert.deepEqual(sortedHex(all.memos), sortedHex([a1b, ...many]), 'the newer memo of l1 replaced the older');
    assert.deepEqual(await s.scopeMemos(b, 10), { kind: 'memos', memos: [b1] });
    assert.deepEqual(await s.scopeMemos(newKey(), 10), { kind: 'memos', memos: [] });
    for (const max of [1, 1000, 2500]) {
      const some = await s.scopeMemos(a, max);
      assert.equal(some.kind, 'memos');
      if (some.kind !== 'memos') continue;
      assert.equal(some.memos.length, max);
      assert.equal(new Set(sortedHex(some.memos)).size, max, 'no memo twice');
      const known = new Set(sortedHex([a1b, ...many]));
      for (const m of some.memos) assert.ok(known.has(m.toString('hex')));
    }
    assert.deepEqual(keysOf(`ltocache:m:{${a}}`), [`ltocache:m:{${a}}`]);
    await s.clear();
    assert.deepEqual(await s.scopeMemos(a, 10), { kind: 'memos', memos: [] });
    assert.deepEqual(await s.scopeMemos(b, 10), { kind: 'memos', memos: [] });
    assert.deepEqual(keysOf('ltocache:m:*'), []);
    assert.deepEqual(errors, []);
  } finally {
    await s.close();
  }
}

async function assertHit(c: RemoteBackend, key: string, e: ReturnType<typeof entry>): Promise<void> {
  const r = await c.get(key);
  assert.equal(r.kind, 'hit', JSON.stringify(r));
  if (r.kind !== 'hit') return;
  for (const [name, data] of e.files) assert.ok(r.entry.files.get(name)?.equals(data), `${name} differs`);
}

describe('redis standalone', () => {
  const redis = new RedisNode();
  let server: CacheServer;
  before(async () => {
    await redis.start();
    server = await startServer(redis.url);
  });
  after(async () => {
    await server?.stop();
    await redis.stop();
  });

  test('round trip, dedup of blobs, large blobs chunked, a read token cannot put, tokens refused', async () => {
    const c = client(server.url);
    const reader = client(server.url, SECRETS.read);
    try {
      const shared = randomBytes(100_000);
      const e1 = entry({ obj: randomBytes(50_000), dwo: shared });
      const e2 = entry({ obj: randomBytes(60_000), dwo: shared });
      const k1 = newKey();
      const k2 = newKey();
      assert.equal((await c.get(k1)).kind, 'miss');
      assert.equal((await c.put(k1, e1)).kind, 'stored');
      assert.equal((await c.put(k2, e2)).kind, 'stored');
      await assertHit(c, k1, e1);
      await assertHit(reader, k2, e2);
      const blobs = redis.cli('--scan', '--pattern', 'ltocache:b:*').split('\n').filter(Boolean);
      assert.equal(blobs.length, 3, `three distinct blobs, the shared one once: ${blobs.join(' ')}`);
      const big = entry({ obj: randomBytes(2 * CHUNK_BYTES + 12345) });
      const kb = newKey();
      assert.equal((await c.put(kb, big)).kind, 'stored');
      const chunks = redis.cli('--scan', '--pattern', `ltocache:b:{${big.record.outputs[0]!.digest}}:*`).split('\n').filter(Boolean);
      assert.equal(chunks.length, 3);
      await assertHit(reader, kb, big);
      assert.equal((await reader.put(newKey(), entry({ obj: randomBytes(10) }))).kind, 'refused');
      await assertTokensRefused(server.url);
      const st = await c.stats();
      assert.equal(typeof st.entries, 'number');
    } finally {
      c.close();
      reader.close();
    }
  });

  test('garbage, truncated and missing values planted in Redis are misses, dropped and counted', async () => {
    const c = client(server.url);
    try {
      const before = await metrics(server);
      const errs = (m: Map<string, number>, kind: string) =>
        (m.get(`ltocache_server_storage_errors_total{kind="${kind}"}`) ?? 0) - (before.get(`ltocache_server_storage_errors_total{kind="${kind}"}`) ?? 0);
      const kGarbage = newKey();
      redis.cli('set', `ltocache:e:${kGarbage}`, '{"v":1,"outputs":"nope"');
      const kTrunc = newKey();
      const eTrunc = entry({ obj: randomBytes(30_000) });
      assert.equal((await c.put(kTrunc, eTrunc)).kind, 'stored');
      const blobKey = `ltocache:b:{${eTrunc.record.outputs[0]!.digest}}:0`;
      redis.cli('setrange', blobKey, '0', 'XXXX'); // same size, wrong digest
      const kShort = newKey();
      const eShort = entry({ obj: randomBytes(20_000) });
      assert.equal((await c.put(kShort, eShort)).kind, 'stored');
      redis.cli('set', `ltocache:b:{${eShort.record.outputs[0]!.digest}}:0`, 'truncated');
      const kMissing = newKey();
      const eMissing = entry({ obj: randomBytes(10_000) });
      assert.equal((await c.put(kMissing, eMissing)).kind, 'stored');
      redis.cli('del', `ltocache:b:{${eMissing.record.outputs[0]!.digest}}:0`);
      // A record that names an intact blob with another size: the record is corrupt, not the blob,
      // which another entry shares.
      const kShared = newKey();
      const eShared = entry({ obj: randomBytes(12_000) });
      assert.equal((await c.put(kShared, eShared)).kind, 'stored');
      const kWrongSize = newKey();
      const o = eShared.record.outputs[0]!;
      redis.cli('set', `ltocache:e:${kWrongSize}`, JSON.stringify({ ...eShared.record, outputs: [{ ...o, size: o.size + 1 }] }));
      for (const k of [kGarbage, kTrunc, kShort, kMissing, kWrongSize]) assert.equal((await c.get(k)).kind, 'miss', k);
      // Dropped: the records are gone, and so is each corrupt blob (a put rewrites it whole).
      for (const k of [kGarbage, kTrunc, kShort, kMissing, kWrongSize]) assert.equal(redis.cli('exists', `ltocache:e:${k}`), '0');
      assert.equal(redis.cli('exists', blobKey), '0');
      await assertHit(c, kShared, eShared);
      const m = await metrics(server);
      assert.equal(errs(m, 'corrupt_record'), 2);
      assert.equal(errs(m, 'corrupt_blob'), 2);
      assert.equal(errs(m, 'missing_blob'), 1);
      assert.equal((await c.put(kTrunc, eTrunc)).kind, 'stored');
      await assertHit(c, kTrunc, eTrunc);
    } finally {
      c.close();
    }
  });

  test('/metrics parses and its counters match the requests; /healthz and /readyz', async () => {
    const s = await startServer(redis.url);
    const c = client(s.url);
    try {
      const e = entry({ obj: randomBytes(40_000) });
      const k = newKey();
      assert.equal((await c.put(k, e)).kind, 'stored');
      for (let i = 0; i < 3; i++) await assertHit(c, k, e);
      for (let i = 0; i < 2; i++) assert.equal((await c.get(newKey())).kind, 'miss');
      await assertTokensRefused(s.url);
      const m = await metrics(s);
      assert.equal(m.get('ltocache_server_hits_total'), 3);
      assert.equal(m.get('ltocache_server_misses_total'), 2);
      assert.equal(m.get('ltocache_server_puts_total'), 1);
      assert.equal(m.get('ltocache_server_auth_failures_total'), 3);
      assert.equal(m.get('ltocache_server_requests_total{type="get",result="hit"}'), 3);
      assert.equal(m.get('ltocache_server_requests_total{type="get",result="miss"}'), 2);
      assert.equal(m.get('ltocache_server_requests_total{type="put",result="stored"}'), 1);
      assert.equal(m.get('ltocache_server_request_duration_seconds_count{type="get"}'), 5);
      assert.ok((m.get('ltocache_server_bytes_served_total') ?? 0) > 3 * 40_000);
      assert.ok((m.get('ltocache_server_bytes_received_total') ?? 0) > 40_000);
      assert.equal(m.get('ltocache_server_open_connections'), 1);
      assert.equal(m.get('ltocache_server_storage_info{storage="redis"}'), 1);
      assert.equal((await fetch(`${httpOf(s.url)}/healthz`)).status, 200);
      assert.equal((await fetch(`${httpOf(s.url)}/readyz`)).status, 200);
    } finally {
      c.close();
      await s.stop();
    }
  });

  test('/readyz turns 503 while Redis is down and 200 again after; gets are misses meanwhile', async () => {
    const r = new RedisNode();
    await r.start();
    const s = await startServer(r.url);
    const c = client(s.url);
    try {
      const e = entry({ obj: randomBytes(1000) });
      const k = newKey();
      assert.equal((await c.put(k, e)).kind, 'stored');
      const port = r.port;
      await r.kill();
      assert.equal((await fetch(`${httpOf(s.url)}/readyz`)).status, 503);
      assert.equal((await fetch(`${httpOf(s.url)}/healthz`)).status, 200);
      assert.equal((await c.get(k)).kind, 'miss');
      await r.start(port);
      const deadline = Date.now() + 10_000;
      while ((await fetch(`${httpOf(s.url)}/readyz`)).status !== 200) {
        assert.ok(Date.now() < deadline, 'readyz did not recover');
        await new Promise((res) => setTimeout(res, 200));
      }
      assert.equal((await c.put(k, e)).kind, 'stored');
      await assertHit(c, k, e);
      assert.ok(((await metrics(s)).get('ltocache_server_storage_errors_total{kind="unavailable"}') ?? 0) >= 1);
    } finally {
      c.close();
      await s.stop();
      await r.stop();
    }
  });
});

describe('team memos on redis standalone', () => {
  test('putMemo / scopeMemos round trip; memo and scope through a server', async () => {
    const r = new RedisNode();
    await r.start();
    const s = await startServer(r.url);
    try {
      await memoRoundTrip(r.url, (pattern) => r.cli('--scan', '--pattern', pattern).split('\n').filter(Boolean));
      const scope = newKey();
      const m = teamMemo(newKey(), 'through the server');
      assert.deepEqual((await teamRequest(s.url, SECRETS.write, { type: 'memo', scope, memo: m.toString('base64') })).reply, { type: 'ok', id: 1 });
      assert.equal(r.cli('type', `ltocache:m:{${scope}}`), 'hash');
      const got = await teamRequest(s.url, SECRETS.read, { type: 'scope', scope });
      assert.equal(got.reply.count, 1);
      assert.equal(got.reply.complete, true);
      assert.ok(got.memos![0]!.equals(m));
      const m2 = await metrics(s);
      assert.equal(m2.get('ltocache_server_memos_stored_total'), 1);
      assert.equal(m2.get('ltocache_server_memos_served_total'), 1);
      assert.equal(m2.get('ltocache_server_rejected_memos_total'), 0);
    } finally {
      await s.stop();
      await r.stop();
    }
  });
});

describe('redis eviction', () => {
  test('under a small maxmemory with allkeys-lru only whole entries are served', async () => {
    const r = new RedisNode(['--maxmemory', '4mb', '--maxmemory-policy', 'allkeys-lru', '--maxmemory-samples', '10']);
    await r.start();
    const s = await startServer(r.url);
    const c = client(s.url);
    try {
      const written: [string, ReturnType<typeof entry>][] = [];
      for (let i = 0; i < 80; i++) {
        const e = entry({ obj: randomBytes(60_000), dwo: randomBytes(40_000) });
        const k = newKey();
        const p = await c.put(k, e);
        assert.ok(p.kind === 'stored' || p.kind === 'error', JSON.stringify(p));
        written.push([k, e]);
      }
      let hits = 0;
      let misses = 0;
      for (const [k, e] of written) {
        const g = await c.get(k);
        assert.ok(g.kind === 'hit' || g.kind === 'miss', JSON.stringify(g));
        if (g.kind === 'hit') {
          hits++;
          for (const [name, data] of e.files) assert.ok(g.entry.files.get(name)?.equals(data));
        } else misses++;
      }
      assert.ok(hits > 0, 'some entries survive');
      assert.ok(misses > 0, 'some entries were evicted');
      assert.ok(Number(/evicted_keys:(\d+)/.exec(r.cli('info', 'stats'))![1]) > 0);
    } finally {
      c.close();
      await s.stop();
      await r.stop();
    }
  });
});

describe('redis cluster (3 masters + 3 replicas)', () => {
  const cluster = new RedisCluster(3);
  const servers: ServerProcess[] = [];
  let urls: string[] = [];
  before(async () => {
    await cluster.start();
    for (let i = 0; i < 2; i++) servers.push(new ServerProcess([], cluster.url));
    urls = await Promise.all(servers.map((s) => s.start()));
  });
  after(async () => {
    for (const s of servers) await s.kill('SIGKILL');
    await cluster.stop();
  });

  test('a writer on one server, a reader on the other; large blobs across slots; tokens refused', async () => {
    const w = client(urls[0]!, PROCESS_TOKENS.write);
    const rd = client(urls[1]!, PROCESS_TOKENS.read);
    try {
      const shared = randomBytes(70_000);
      const es = Array.from({ length: 12 }, () => entry({ obj: randomBytes(30_000), dwo: shared }));
      const ks = es.map(() => newKey());
      for (let i = 0; i < es.length; i++) assert.equal((await w.put(ks[i]!, es[i]!)).kind, 'stored');
      for (let i = 0; i < es.length; i++) await assertHit(rd, ks[i]!, es[i]!);
      const big = entry({ obj: randomBytes(CHUNK_BYTES + 1) });
      const kb = newKey();
      assert.equal((await w.put(kb, big)).kind, 'stored');
      await assertHit(rd, kb, big);
      for (const u of urls) await assertTokensRefused(u);
      // admin clear empties every master of this cache's keys, and only those.
      const m0 = cluster.mastersNow()[0]!;
      m0.cli('-c', 'set', 'other-app-key', 'kept');
      assert.equal(await adminClear(urls[1]!, PROCESS_TOKENS.admin), 'ok');
      for (const k of ks) assert.equal((await rd.get(k)).kind, 'miss');
      for (const m of cluster.mastersNow()) assert.equal(m.cli('--scan', '--pattern', 'ltocache:*'), '');
      assert.equal(m0.cli('-c', 'get', 'other-app-key'), 'kept');
    } finally {
      w.close();
      rd.close();
    }
  });

  test('team memos: putMemo / scopeMemos over the cluster; a memo stored through one server is served by the other', async () => {
    await memoRoundTrip(cluster.url, (pattern) =>
      cluster
        .mastersNow()
        .flatMap((n) => n.cli('--scan', '--pattern', pattern).split('\n'))
        .filter(Boolean),
    );
    const scope = newKey();
    const ms = [teamMemo(newKey(), 'one'), teamMemo(newKey(), 'two')];
    for (const m of ms) assert.equal((await teamRequest(urls[0]!, PROCESS_TOKENS.write, { type: 'memo', scope, memo: m.toString('base64') })).reply.type, 'ok');
    const got = await teamRequest(urls[1]!, PROCESS_TOKENS.read, { type: 'scope', scope });
    assert.equal(got.reply.count, 2);
    assert.deepEqual(sortedHex(got.memos!), sortedHex(ms));
    const refused = await teamRequest(urls[1]!, PROCESS_TOKENS.read, { type: 'memo', scope, memo: ms[0]!.toString('base64') });
    assert.equal(refused.reply.code, 'forbidden');
  });

  test('a master killed mid-run: hits or misses only, never a wrong object; recovers without restarts', async () => {
    const cs = urls.map((u) => client(u, PROCESS_TOKENS.write));
    try {
      const written: [string, ReturnType<typeof entry>][] = [];
      for (let i = 0; i < 30; i++) {
        const e = entry({ obj: randomBytes(20_000) });
        const k = newKey();
        assert.equal((await cs[i % 2]!.put(k, e)).kind, 'stored');
        written.push([k, e]);
      }
      // Let the replicas catch up before the kill: WAIT only covers the calling connection's own
      // writes, so compare each master's replication offset with its replica's acknowledged one.
      const deadline = Date.now() + 20_000;
      for (const m of cluster.mastersNow()) {
        for (;;) {
          const info = m.cli('info', 'replication');
          const master = Number(/master_repl_offset:(\d+)/.exec(info)?.[1] ?? NaN);
          const replica = Number(/slave0:[^\n]*offset=(\d+)/.exec(info)?.[1] ?? NaN);
          if (replica >= master || Date.now() > deadline) break;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      const victim = cluster.mastersNow()[0]!;
      let stop = false;
      const seen = { hit: 0, miss: 0, other: [] as string[] };
      const runner = async (c: RemoteBackend) => {
        let i = 0;
        while (!stop) {
          const [k, e] = written[i++ % written.length]!;
          const g = await c.get(k);
          if (g.kind === 'hit') {
            seen.hit++;
            for (const [name, data] of e.files) assert.ok(g.entry.files.get(name)?.equals(data), 'wrong object served');
          } else if (g.kind === 'miss') seen.miss++;
          else seen.other.push(JSON.stringify(g));
        }
      };
      const runs = cs.map(runner);
      await new Promise((r) => setTimeout(r, 300));
      await victim.kill('SIGKILL');
      await cluster.waitOk(30_000);
      await new Promise((r) => setTimeout(r, 1500));
      stop = true;
      await Promise.all(runs);
      assert.deepEqual(seen.other, [], 'no errors, only hits and misses');
      assert.ok(seen.hit > 0);
      // Recovered: every slot takes writes again, and reads are hits, through both servers.
      for (let i = 0; i < 20; i++) {
        const e = entry({ obj: randomBytes(5_000) });
        const k = newKey();
        const deadline = Date.now() + 10_000;
        let p = await cs[i % 2]!.put(k, e);
        while (p.kind !== 'stored' && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 200));
          p = await cs[i % 2]!.put(k, e);
        }
        assert.equal(p.kind, 'stored', JSON.stringify(p));
        await assertHit(cs[(i + 1) % 2]!, k, e);
      }
      let hits = 0;
      for (const [k, e] of written) {
        const g = await cs[0]!.get(k);
        assert.ok(g.kind === 'hit' || g.kind === 'miss');
        if (g.kind === 'hit') {
          hits++;
          for (const [name, data] of e.files) assert.ok(g.entry.files.get(name)?.equals(data));
        }
      }
      assert.ok(hits >= written.length * 0.9, `entries replicated before the kill survive it: ${hits}/${written.length}`);
    } finally {
      for (const c of cs) c.close();
    }
  });

  test('one server killed: a client with both URLs moves to the other', async () => {
    const both = client(`${urls[0]} ${urls[1]}`, PROCESS_TOKENS.write, 1000);
    const w = client(urls[1]!, PROCESS_TOKENS.write);
    try {
      const es = Array.from({ length: 16 }, () => entry({ obj: randomBytes(8_000) }));
      const ks = es.map(() => newKey());
      for (let i = 0; i < es.length; i++) assert.equal((await w.put(ks[i]!, es[i]!)).kind, 'stored');
      for (let i = 0; i < es.length; i++) await assertHit(both, ks[i]!, es[i]!);
      // Load is spread: both servers were asked.
      assert.ok(
        both.servers.every((s) => s.scope !== null),
        'both servers connected',
      );
      await servers[0]!.kill('SIGKILL');
      for (let i = 0; i < es.length; i++) await assertHit(both, ks[i]!, es[i]!);
      const k = newKey();
      const e = entry({ obj: randomBytes(1000) });
      assert.equal((await both.put(k, e)).kind, 'stored');
      await assertHit(w, k, e);
    } finally {
      both.close();
      w.close();
    }
  });

  // Last: it stops the cluster.
  test('every node gone: storage operations still answer, within their bound', { timeout: 30_000 }, async () => {
    const errors: StorageErrorKind[] = [];
    const s = await RedisStorage.open(cluster.url, (k) => errors.push(k), { warn: () => {} });
    try {
      const k = newKey();
      const e = entry({ obj: randomBytes(1000) });
      assert.equal((await s.put(k, e)).kind, 'stored');
      await cluster.stop();
      const t0 = Date.now();
      // Queued by the Cluster client while it reconnects, with no timeout of their own.
      const [got, put, memos] = await Promise.all([s.get(k), s.put(newKey(), e), s.scopeMemos(newKey(), 10)]);
      assert.equal(got.kind, 'error');
      assert.equal(put.kind, 'error');
      assert.equal(memos.kind, 'error');
      assert.ok(Date.now() - t0 < 8000, `answered after ${Date.now() - t0} ms`);
      assert.ok(errors.includes('unavailable'), errors.join(','));
    } finally {
      await s.close();
    }
  });
});

describe('tokens on the directory storage', () => {
  test('wrong or missing tokens are refused', async () => {
    const s = new CacheServer({ dir: tempDir('redis-team-dir'), port: 0, tokens: TOKENS, accessLog: null });
    await s.start();
    try {
      await assertTokensRefused(s.url);
      const m = await metrics(s);
      assert.equal(m.get('ltocache_server_auth_failures_total'), 3);
      assert.equal(m.get('ltocache_server_storage_info{storage="dir"}'), 1);
      assert.equal((await fetch(`${httpOf(s.url)}/readyz`)).status, 200);
    } finally {
      await s.stop();
    }
  });
});

describe('daemons with two server URLs on one Redis', () => {
  const redis = new RedisNode();
  const servers: ServerProcess[] = [];
  const caches: CacheEnv[] = [];
  before(async () => {
    await redis.start();
    servers.push(new ServerProcess([], redis.url), new ServerProcess([], redis.url));
    for (const s of servers) await s.start();
  });
  after(async () => {
    for (const c of caches) c.destroy();
    for (const s of servers) await s.kill();
    await redis.stop();
  });

  test('one server killed: the daemons move to the other URL; hits stay byte-identical', async () => {
    const remote = `${servers[0]!.url},${servers[1]!.url}`;
    const mate = (name: string) => {
      const cache = new CacheEnv(name, {
        LTOCACHE_REMOTE: remote,
        LTOCACHE_REMOTE_TOKEN: PROCESS_TOKENS.write,
        LTOCACHE_REMOTE_RETRY_MS: '300',
        LTOCACHE_REMOTE_TIMEOUT_MS: '2000',
      });
      caches.push(cache);
      cache.start();
      const b = ThinBuild.fromFixture(FIXTURE, join(tempDir(`redis-checkout-${name}`), name, 'src'));
      b.frontEnd();
      b.thinLink();
      return { cache, b };
    };
    const build = (m: { cache: CacheEnv; b: ThinBuild }) => {
      for (const mod of m.b.modules) {
        const r = m.b.backend(mod, { wrapper: [CLIENT], env: m.cache.env });
        assert.equal(r.status, 0, `backend ${mod}: ${r.stderr}`);
      }
    };
    const alice = mate('alice');
    build(alice);
    const deadline = Date.now() + 15_000;
    while (alice.cache.stats().uploads < alice.b.modules.length) {
      assert.ok(Date.now() < deadline, 'uploads');
      await new Promise((r) => setTimeout(r, 100));
    }
    await servers[0]!.kill('SIGKILL');
    const bob = mate('bob');
    build(bob);
    const s = bob.cache.stats();
    assert.equal(s.remote_hits, bob.b.modules.length, JSON.stringify(s));
    assert.equal(s.misses, 0);
    for (const mod of bob.b.modules) {
      const r = bob.b.backend(mod, { out: `${mod}.direct.o` });
      assert.equal(r.status, 0, r.stderr);
      assert.ok(readFileSync(join(bob.b.dir, `${mod}.direct.o`)).equals(readFileSync(join(bob.b.dir, `${mod}.thinlto-native.o`))), `${mod} differs from direct clang`);
    }
  });
});
