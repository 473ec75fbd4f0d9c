/**
 * The team-cache server (`ltocache serve`) against real `ws` clients over loopback: round trips,
 * persistence across restarts, auth, hostile peers, TLS and graceful SIGTERM of a child process.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { type TestContext, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type ClientOptions, WebSocket } from 'ws';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { withTrailer } from '../../src/memo/memoFormat.js';
import { encodeTeamMemo, type TeamCheck } from '../../src/memo/teamMemo.js';
import { GETS_MAX_KEYS, SCOPE_MAX_MEMOS, TEAM_MEMO_MAX_BYTES } from '../../src/protocol/limits.js';
import { decodeBinary, decodeMemoList, type ErrorCode, encodeBinary, type ServerStats, splitEntries } from '../../src/protocol/remote.js';
import { packBundle, unpackBundle } from '../../src/remote/bundle.js';
import { CacheServer } from '../../src/remote/server/cacheServer.js';
import { CLOSE_CODES } from '../../src/remote/server/closeCodes.js';
import type { ServerOptionsInput } from '../../src/remote/serverOptions.js';
import { DirStorage } from '../../src/remote/storage/dirStorage.js';
import { layoutPaths } from '../../src/store/layout.js';
import type { EntryRecord } from '../../src/store/record.js';
import { tempDir as envTempDir } from '../support/env.js';
import { rawTar } from '../support/rawTar.js';

await initHash();

const TOP = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const CLI = join(TOP, 'dist', 'src', 'cli', 'main.js');

const SECRETS = { read: 'read-secret-0123456789', write: 'write-secret-0123456789', admin: 'admin-secret-0123456789' };
const TOKENS = [
  { name: 'alice', scope: 'read' as const, secret: SECRETS.read },
  { name: 'ci', scope: 'write' as const, secret: SECRETS.write },
  { name: 'ops', scope: 'admin' as const, secret: SECRETS.admin },
];
const TOKENS_TEXT = `# test tokens\n${TOKENS.map((t) => `${t.name} ${t.scope} ${t.secret}`).join('\n')}\n`;

/** Regular files under `dir` (recursively) named `name`. */
function findFiles(dir: string, name: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name === name)
    .map((e) => join(e.parentPath ?? e.path, e.name));
}

function tempDir(t: TestContext, prefix: string): string {
  const d = envTempDir(`serve-${prefix}`);
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

async function startServer(t: TestContext, dir: string, extra: Partial<ServerOptionsInput> = {}): Promise<CacheServer> {
  const s = new CacheServer({ dir, port: 0, tokens: TOKENS, ...extra });
  await s.start();
  t.after(() => s.stop());
  return s;
}

const key = (n: string | number): string => hashBytes(`job-${n}`);

function makeEntry(files: Record<string, Buffer>): { record: EntryRecord; files: Map<string, Buffer> } {
  return {
    record: {
      v: 1,
      outputs: Object.entries(files).map(([name, data]) => ({ name, digest: hashBytes(data), size: data.length })),
      stdout: '',
      stderr: Buffer.from('warning: something\n').toString('base64'),
      exitCode: 0,
      compileMs: 120,
      createdAt: 1_700_000_000_000,
    },
    files: new Map(Object.entries(files)),
  };
}

type Inbound = { kind: 'text'; msg: Record<string, any> } | { kind: 'binary'; id: number; bundle: Buffer };

/** A protocol client written for the test: collects every message, hands them out by predicate. */
class Peer {
  readonly inbox: Inbound[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  private readonly wakers = new Set<() => void>();
  private nextId = 1;

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data, isBinary) => {
      const buf = data as Buffer;
      this.inbox.push(isBinary ? { kind: 'binary', ...decodeBinary(buf) } : { kind: 'text', msg: JSON.parse(buf.toString('utf8')) });
      this.wake();
    });
    ws.on('error', () => {});
    this.closed = new Promise((res) =>
      ws.on('close', (code, reason) => {
        res({ code, reason: reason.toString() });
        this.wake();
      }),
    );
  }

  private wake(): void {
    for (const w of [...this.wakers]) w();
  }

  id(): number {
    return this.nextId++;
  }

  send(msg: unknown): void {
    this.ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg));
  }

  async take(pred: (m: Inbound) => boolean, what: string, ms = 5000): Promise<Inbound> {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.inbox.findIndex(pred);
      if (i >= 0) return this.inbox.splice(i, 1)[0]!;
      if (this.ws.readyState === WebSocket.CLOSED) throw new Error(`connection closed while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; inbox: ${JSON.stringify(this.inbox.map((m) => (m.kind === 'text' ? m.msg : `binary ${m.id}`)))}`);
      await new Promise<void>((res) => {
        const w = () => {
          clearTimeout(timer);
          this.wakers.delete(w);
          res();
        };
        const timer = setTimeout(w, left);
        this.wakers.add(w);
      });
    }
  }

  async text(pred: (m: Record<string, any>) => boolean, what: string, ms?: number): Promise<Record<string, any>> {
    const m = await this.take((x) => x.kind === 'text' && pred(x.msg), what, ms);
    return (m as { msg: Record<string, any> }).msg;
  }

  reply(id: number, ms?: number): Promise<Record<string, any>> {
    return this.text((m) => m.id === id, `reply to request ${id}`, ms);
  }

  /** The next error without a request id. */
  connectionError(): Promise<Record<string, any>> {
    return this.text((m) => m.type === 'error' && m.id === undefined, 'an error without id');
  }

  async hello(protocol = 1): Promise<Record<string, any>> {
    this.send({ type: 'hello', protocol, client: 'server.test' });
    return this.text((m) => m.type === 'welcome' || m.type === 'error', 'welcome');
  }

  async get(k: string): Promise<{ type: string; code?: string; entry?: EntryRecord; bundle?: Buffer }> {
    const id = this.id();
    this.send({ type: 'get', id, key: k });
    const r = await this.reply(id);
    if (r.type !== 'hit') return { type: r.type, code: r.code };
    const b = await this.take((m) => m.kind === 'binary' && m.id === id, `bundle ${id}`);
    const bundle = (b as { bundle: Buffer }).bundle;
    assert.equal(bundle.length, r.bundleBytes);
    return { type: 'hit', entry: r.entry as EntryRecord, bundle };
  }

  sendPut(k: string, entry: EntryRecord, bundle: Buffer, declared = bundle.length): number {
    const id = this.id();
    this.send({ type: 'put', id, key: k, entry, bundleBytes: declared });
    this.ws.send(encodeBinary(id, bundle));
    return id;
  }

  put(k: string, entry: EntryRecord, bundle: Buffer, declared?: number): Promise<Record<string, any>> {
    return this.reply(this.sendPut(k, entry, bundle, declared));
  }

  async stats(): Promise<ServerStats> {
    const id = this.id();
    this.send({ type: 'stats', id });
    return (await this.reply(id)).stats as ServerStats;
  }

  async admin(op: 'reset-stats' | 'clear'): Promise<Record<string, any>> {
    const id = this.id();
    this.send({ type: 'admin', id, op });
    return this.reply(id);
  }

  async bad(k: string): Promise<Record<string, any>> {
    const id = this.id();
    this.send({ type: 'bad', id, key: k });
    return this.reply(id);
  }

  memo(scope: string, memo: Buffer | string): Promise<Record<string, any>> {
    const id = this.id();
    this.send({ type: 'memo', id, scope, memo: typeof memo === 'string' ? memo : memo.toString('base64') });
    return this.reply(id);
  }

  /** A `gets` request: the `entries` reply with each hit's bundle, or the error. */
  async gets(keys: string[], maxBundleBytes?: number): ReturnType<Peer['reply']> {
    const id = this.id();
    this.send({ type: 'gets', id, keys, ...(maxBundleBytes ? { maxBundleBytes } : {}) });
    const r = await this.reply(id);
    if (r.type !== 'entries') return r;
    const b = (await this.take((m) => m.kind === 'binary' && m.id === id, `entries ${id}`)) as { bundle: Buffer };
    return { ...r, bundles: splitEntries(b.bundle, r.hits) };
  }

  /** A `scope` request: the `memos` reply's memos and `complete`, or the error. */
  async scope(scope: string, maxBundleBytes?: number): Promise<{ type: string; code?: string; memos?: Buffer[]; complete?: boolean }> {
    const id = this.id();
    this.send({ type: 'scope', id, scope, ...(maxBundleBytes ? { maxBundleBytes } : {}) });
    const r = await this.reply(id);
    if (r.type !== 'memos') return { type: r.type, code: r.code };
    assert.equal(r.scope, scope);
    const b = (await this.take((m) => m.kind === 'binary' && m.id === id, `memo list ${id}`)) as { bundle: Buffer };
    assert.equal(b.bundle.length, r.bundleBytes);
    return { type: 'memos', memos: decodeMemoList(b.bundle, r.count), complete: r.complete };
  }

  async ping(): Promise<void> {
    const id = this.id();
    this.send({ type: 'ping', id });
    assert.equal((await this.reply(id)).type, 'pong');
  }

  close(): void {
    this.ws.close();
  }
}

class HttpRefused extends Error {
  constructor(readonly status: number) {
    super(`upgrade refused with HTTP ${status}`);
  }
}

function connect(url: string, secret: string | null, opts: ClientOptions = {}): Promise<Peer> {
  return new Promise((res, rej) => {
    const ws = new WebSocket(url, { ...opts, headers: secret === null ? {} : { authorization: `Bearer ${secret}` } });
    const peer = new Peer(ws);
    ws.once('open', () => res(peer));
    ws.once('unexpected-response', (req, r) => {
      req.destroy();
      rej(new HttpRefused(r.statusCode ?? 0));
    });
    ws.once('error', rej);
  });
}

async function open(t: TestContext, url: string, secret: string, opts: ClientOptions = {}): Promise<Peer> {
  const p = await connect(url, secret, opts);
  t.after(() => p.ws.terminate());
  const w = await p.hello();
  assert.equal(w.type, 'welcome', JSON.stringify(w));
  return p;
}

async function assertHit(p: Peer, k: string, expected: { record: EntryRecord; files: Map<string, Buffer> }): Promise<Buffer> {
  const r = await p.get(k);
  assert.equal(r.type, 'hit', `expected a hit for ${k}, got ${r.type} ${r.code ?? ''}`);
  assert.deepEqual(r.entry, expected.record);
  const u = await unpackBundle(r.entry!, r.bundle!, { maxBundleBytes: 1 << 30, maxEntries: 16 });
  assert.equal(u.kind, 'ok');
  if (u.kind === 'ok') for (const [n, d] of expected.files) assert.ok(u.files.get(n)?.equals(d), `file ${n} differs`);
  return r.bundle!;
}

test('put then get round trip, out-of-order gets, stats, access log, restart keeps entries and counters', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t, 'roundtrip');
  const s1 = new CacheServer({ dir, port: 0, tokens: TOKENS });
  await s1.start();
  assert.match(s1.url, /^ws:\/\/127\.0\.0\.1:\d+$/);
  const writer = await connect(s1.url, SECRETS.write);
  const w = await writer.hello();
  assert.deepEqual(w, { type: 'welcome', protocol: 1, scope: 'write', limits: s1.limits, features: ['team-memos', 'multi-get'] });

  const e1 = makeEntry({ obj: randomBytes(300_000), dwo: randomBytes(10_000) });
  const bundle1 = await packBundle(e1.record, e1.files);
  assert.deepEqual(await writer.put(key(1), e1.record, bundle1), { type: 'stored', id: 1, key: key(1) });
  const served = await assertHit(writer, key(1), e1);
  assert.ok(served.equals(bundle1), 'served bundle is byte-identical to the uploaded one');

  // Many gets on one connection, answered as they complete.
  const others = await Promise.all(
    [2, 3, 4].map(async (n) => {
      const e = makeEntry({ obj: randomBytes(1000 * n) });
      assert.equal((await writer.put(key(n), e.record, await packBundle(e.record, e.files))).type, 'stored');
      return e;
    }),
  );
  const ids: number[] = [];
  const keys = [1, 2, 3, 4, 5, 6, 1, 2];
  for (const n of keys) {
    const id = writer.id();
    ids.push(id);
    writer.send({ type: 'get', id, key: key(n) });
  }
  for (const [i, id] of ids.entries()) {
    const r = await writer.reply(id);
    assert.equal(r.type, keys[i]! <= 4 ? 'hit' : 'miss');
    if (r.type === 'hit') await writer.take((m) => m.kind === 'binary' && m.id === id, `bundle ${id}`);
  }

  const st = await writer.stats();
  assert.equal(st.entries, 4);
  assert.ok(st.bytes > 300_000);
  assert.equal(st.puts, 4);
  assert.equal(st.hits, 7);
  assert.equal(st.misses, 2);
  assert.equal(st.connected_clients, 1);
  assert.ok(st.bytes_received > 310_000 && st.bytes_served > 2 * 310_000);
  for (const v of Object.values(st)) if (typeof v === 'number') assert.ok(Number.isInteger(v));

  writer.close();
  await writer.closed;
  await s1.stop();

  const log = readFileSync(join(dir, 'access.log'), 'utf8');
  for (const secret of Object.values(SECRETS)) assert.ok(!log.includes(secret), 'a secret leaked into the access log');
  const lines = log
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const put = lines.find((l) => l.op === 'put');
  assert.deepEqual(Object.keys(put!).sort(), ['bytes', 'key', 'ms', 'op', 'remote', 'result', 'time', 'token']);
  assert.deepEqual({ token: put!.token, key: put!.key, result: put!.result, bytes: put!.bytes }, { token: 'ci', key: key(1), result: 'stored', bytes: bundle1.length });
  assert.match(String(put!.remote), /^127\.0\.0\.1:\d+$/);
  assert.equal(lines.filter((l) => l.op === 'get' && l.result === 'hit').length, 7);

  // Same directory, new process-level server: entry served, counters carried over.
  const s2 = await startServer(t, dir);
  const reader = await open(t, s2.url, SECRETS.read);
  const again = await assertHit(reader, key(1), e1);
  assert.ok(again.equals(bundle1));
  await assertHit(reader, key(3), others[1]!);
  const st2 = await reader.stats();
  assert.equal(st2.entries, 4);
  assert.equal(st2.puts, 4);
  assert.equal(st2.hits, 9);
  assert.equal(st2.misses, 2);
  assert.equal(st2.since, st.since);
});

test('gets: several entries in one reply, misses, later past the bundle limit, counted per key; bounds', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t, 'gets');
  const s = await startServer(t, dir);
  const writer = await open(t, s.url, SECRETS.write);
  const small = [1, 2, 3].map((n) => makeEntry({ obj: randomBytes(20_000 + n) }));
  const big = makeEntry({ obj: randomBytes(300_000), dwo: randomBytes(500) });
  for (const [i, e] of [...small, big].entries()) assert.equal((await writer.put(key(`g${i}`), e.record, await packBundle(e.record, e.files))).type, 'stored');
  const reader = await open(t, s.url, SECRETS.read);
  const before = await reader.stats();

  const r = await reader.gets([key('g3'), key('nothing'), key('g0'), key('g1')]);
  assert.equal(r.type, 'entries', JSON.stringify(r));
  assert.deepEqual(
    r.hits.map((h: { key: string }) => h.key),
    [key('g3'), key('g0'), key('g1')],
  );
  assert.deepEqual(r.misses, [key('nothing')]);
  assert.deepEqual(r.later, []);
  for (const [i, e] of [big, small[0]!, small[1]!].entries()) {
    assert.deepEqual(r.hits[i].entry, e.record);
    const u = await unpackBundle(e.record, r.bundles[i], { maxBundleBytes: 1 << 30, maxEntries: 16 });
    assert.ok(u.kind === 'ok' && [...e.files].every(([n, d]) => u.files.get(n)?.equals(d)));
  }

  // Two small bundles fit in 50 kB, the third does not: asked again later. The big one does not
  // fit on its own: a miss, as for `get`.
  const limited = await reader.gets([key('g0'), key('g3'), key('g1'), key('g2')], 50_000);
  assert.deepEqual(
    limited.hits.map((h: { key: string }) => h.key),
    [key('g0'), key('g1')],
  );
  assert.deepEqual(limited.misses, [key('g3')]);
  assert.deepEqual(limited.later, [key('g2')]);
  const after = await reader.stats();
  assert.equal(after.hits - before.hits, 5);
  assert.equal(after.misses - before.misses, 2);

  // A blob the storage cannot read (a directory in its place: EISDIR, not corruption): `later`
  // in a gets, an `internal` error for its own get; the other key is served.
  const unreadable = small[2]!.record.outputs[0]!.digest;
  const [blobFile] = findFiles(dir, unreadable.slice(2));
  assert.ok(blobFile, 'the blob file is found');
  rmSync(blobFile);
  mkdirSync(blobFile);
  const failing = await reader.gets([key('g2'), key('g0')]);
  assert.deepEqual([failing.hits.map((h: { key: string }) => h.key), failing.misses, failing.later], [[key('g0')], [], [key('g2')]]);
  assert.deepEqual(await reader.get(key('g2')), { type: 'error', code: 'internal' });

  // More keys than a request may name, or none: a bad message answered by id; the connection goes on.
  for (const keys of [Array.from({ length: GETS_MAX_KEYS + 1 }, (_, i) => key(i)), []]) {
    const bad = await reader.gets(keys);
    assert.deepEqual([bad.type, bad.code], ['error', 'bad-message']);
  }
  await reader.ping();
  const stats = await reader.stats();
  assert.equal(stats.hits - before.hits, 6);
  // Stopped first: the access log is written through a stream, and closing it flushes it.
  await s.stop();
  const log = readFileSync(join(dir, 'access.log'), 'utf8');
  assert.equal(log.split('\n').filter((l) => l.includes('"op":"get"') && l.includes('"result":"hit"')).length, 6);
  assert.equal(log.split('\n').filter((l) => l.includes('"op":"get"') && l.includes('"result":"error"')).length, 1);
});

test('auth: refused upgrades, read scope, write scope, admin scope', { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t, 'auth');
  const s = await startServer(t, dir);
  for (const [secret, why] of [
    [null, 'no token'],
    ['not-a-known-secret-at-all', 'wrong token'],
    [SECRETS.write.slice(0, -1), 'prefix of a token'],
  ] as const) {
    await assert.rejects(connect(s.url, secret), (e: unknown) => {
      assert.ok(e instanceof HttpRefused, `${why}: ${String(e)}`);
      assert.equal(e.status, 401);
      return true;
    });
  }
  // Another scheme, and a client that does not listen for 'unexpected-response' sees an error.
  const basic = new WebSocket(s.url, { headers: { authorization: `Basic ${SECRETS.admin}` } });
  const err = await new Promise<Error>((res) => basic.on('error', res));
  assert.match(err.message, /401/);

  const admin = await open(t, s.url, SECRETS.admin);
  assert.equal((await admin.stats()).auth_failures, 4);

  const writer = await open(t, s.url, SECRETS.write);
  const e = makeEntry({ obj: randomBytes(5000) });
  const bundle = await packBundle(e.record, e.files);
  assert.equal((await writer.put(key('a'), e.record, bundle)).type, 'stored');

  const reader = await connect(s.url, SECRETS.read);
  t.after(() => reader.ws.terminate());
  assert.equal((await reader.hello()).scope, 'read');
  await assertHit(reader, key('a'), e);
  const refused = await reader.put(key('b'), e.record, bundle);
  assert.equal(refused.type, 'error');
  assert.equal(refused.code, 'forbidden');
  // The refused put's bundle was dropped silently: the next reply is the pong, not an unknown-id error.
  await reader.ping();
  assert.equal(reader.inbox.length, 0, JSON.stringify(reader.inbox));
  assert.equal((await reader.get(key('b'))).type, 'miss');
  assert.equal((await reader.admin('clear')).code, 'forbidden');

  const st = await reader.stats();
  assert.equal(st.puts_refused, 1);
  assert.equal(st.puts, 1);
  assert.equal(st.entries, 1);

  assert.equal((await writer.admin('reset-stats')).code, 'forbidden');
  assert.equal((await writer.admin('clear')).code, 'forbidden');
  assert.equal((await writer.stats()).puts, 1);

  // Replaced tokens (SIGHUP in `serve`): the old secret is refused, open connections stay.
  s.setTokens([...TOKENS.filter((x) => x.name !== 'alice'), { name: 'bob', scope: 'read', secret: 'bob-secret-0123456789' }]);
  await assert.rejects(connect(s.url, SECRETS.read), HttpRefused);
  const bob = await open(t, s.url, 'bob-secret-0123456789');
  await bob.ping();
  await reader.ping();
  assert.throws(() => s.setTokens([]), /at least one token/);

  assert.equal((await admin.admin('reset-stats')).type, 'ok');
  const zeroed = await admin.stats();
  for (const c of ['hits', 'misses', 'puts', 'puts_refused', 'auth_failures', 'bad_messages', 'rejected_bundles', 'bytes_served'] as const) assert.equal(zeroed[c], 0, c);
  assert.equal(zeroed.entries, 1);
  assert.equal(zeroed.connected_clients, 4);
  assert.equal((await admin.admin('clear')).type, 'ok');
  assert.equal((await admin.stats()).entries, 0);
  assert.equal((await reader.get(key('a'))).type, 'miss');
});

test("bad: a write token's report deletes the entry; a read token's is refused", { timeout: 30_000 }, async (t) => {
  const s = await startServer(t, tempDir(t, 'bad'));
  const writer = await open(t, s.url, SECRETS.write);
  const reader = await open(t, s.url, SECRETS.read);
  const e = makeEntry({ obj: randomBytes(3000) });
  assert.equal((await writer.put(key('bad'), e.record, await packBundle(e.record, e.files))).type, 'stored');
  const refused = await reader.bad(key('bad'));
  assert.equal(refused.type, 'error');
  assert.equal(refused.code, 'forbidden');
  await assertHit(reader, key('bad'), e);
  assert.equal((await writer.bad(key('bad'))).type, 'ok');
  assert.equal((await reader.get(key('bad'))).type, 'miss');
  assert.equal((await writer.bad(key('never-stored'))).type, 'ok', 'an absent entry is not an error');
  assert.equal((await writer.stats()).entries, 0);
});

/** A valid team memo of `lookup`; `stdout` makes memos of one lookup differ (and sets the size). */
function teamMemo(lookup: string, stdout = '', checks: TeamCheck[] = [{ kind: 'content', path: '/x', size: 1, digest: 'a'.repeat(32) }]): Buffer {
  return encodeTeamMemo({
    lookup,
    key: key(`k-${lookup}`),
    checks,
    outputs: [{ role: 'obj', path: '/o.o', digest: 'b'.repeat(32), size: 3 }],
    stdout: Buffer.from(stdout),
    stderr: Buffer.alloc(0),
  });
}

test('team memos: stored with a write token, served byte-identical to a read token; invalid memos rejected and counted; bounds; /metrics', { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t, 'memos');
  const s1 = new CacheServer({ dir, port: 0, tokens: TOKENS });
  await s1.start();
  let stopped = false;
  t.after(() => (stopped ? undefined : s1.stop()));
  const writer = await open(t, s1.url, SECRETS.write);
  const reader = await open(t, s1.url, SECRETS.read);
  const scope = hashBytes('scope-1');
  const other = hashBytes('scope-2');
  const sorted = (bs: Buffer[] | undefined) => (bs ?? []).map((b) => b.toString('hex')).sort();

  const m1 = teamMemo(key('l1'), 'first');
  const m1b = teamMemo(key('l1'), 'second, newer');
  const m2 = teamMemo(key('l2'));
  const o1 = teamMemo(key('l1'), 'other scope');
  for (const [sc, m] of [
    [scope, m1],
    [scope, m2],
    [other, o1],
    [scope, m1b],
  ] as const)
    assert.deepEqual(await writer.memo(sc, m), { type: 'ok', id: writer.id() - 1 });
  const got = await reader.scope(scope);
  assert.equal(got.type, 'memos');
  assert.deepEqual(sorted(got.memos), sorted([m1b, m2]), 'byte-identical, the newer memo of l1 replacing the older');
  assert.equal(got.complete, true);
  assert.deepEqual(sorted((await reader.scope(other)).memos), sorted([o1]));
  assert.deepEqual(await reader.scope(hashBytes('never used')), { type: 'memos', memos: [], complete: true });

  const refused = await reader.memo(scope, teamMemo(key('l3')));
  assert.deepEqual({ type: refused.type, code: refused.code }, { type: 'error', code: 'forbidden' });

  // Invalid memos: each answered bad-message and counted; the connection stays usable.
  const body = Buffer.from(m2.subarray(0, m2.length - 32));
  body[0]! ^= 0xff;
  const wrongTrailer = Buffer.from(m2);
  wrongTrailer[wrongTrailer.length - 1] = wrongTrailer[wrongTrailer.length - 1] === 0x30 ? 0x31 : 0x30;
  const invalid: [string, Buffer | string][] = [
    ['garbage base64', '!!!! not base64 at all ~~~~'],
    ['truncated', m2.subarray(0, m2.length - 7)],
    ['wrong trailer digest', wrongTrailer],
    ['wrong magic', withTrailer(body)],
    ['no content check', teamMemo(key('l4'), '', [{ kind: 'absent', path: '/nothing' }])],
  ];
  for (const [what, m] of invalid) {
    const r = await writer.memo(scope, m);
    assert.deepEqual({ type: r.type, code: r.code }, { type: 'error', code: 'bad-message' }, what);
  }
  await writer.ping();
  assert.equal((await writer.memo(scope, teamMemo(key('l5')))).type, 'ok');
  assert.equal((await reader.scope(scope)).memos?.length, 3);

  const st = await reader.stats();
  assert.deepEqual({ stored: st.memos_stored, served: st.memos_served, rejected: st.rejected_memos, bad: st.bad_messages }, { stored: 5, served: 2 + 1 + 3, rejected: 5, bad: 0 });

  const metrics = await (await fetch(`${s1.url.replace(/^ws/, 'http')}/metrics`)).text();
  for (const line of [
    'ltocache_server_memos_stored_total 5',
    'ltocache_server_memos_served_total 6',
    'ltocache_server_rejected_memos_total 5',
    'ltocache_server_requests_total{type="memo",result="stored"} 5',
    'ltocache_server_requests_total{type="memo",result="forbidden"} 1',
    'ltocache_server_requests_total{type="memo",result="bad-message"} 5',
    'ltocache_server_requests_total{type="scope",result="ok"} 4',
  ])
    assert.ok(metrics.split('\n').includes(line), `/metrics lacks ${line}`);

  writer.close();
  reader.close();
  stopped = true;
  await s1.stop();
  const log = readFileSync(join(dir, 'access.log'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(
    log.filter((l) => l.op === 'memo' && l.result === 'stored').map((l) => l.key),
    [scope, scope, other, scope, scope],
  );
  assert.equal(log.filter((l) => l.op === 'scope' && l.key === scope).length, 2);

  // Kept across a restart; a payload bound of three of the largest memo (four of the others exceed it) serves three; counters carry over.
  assert.ok(3 * (4 + m1b.length) < 4 * (4 + m2.length));
  const s2 = await startServer(t, dir, { limits: { maxBundleBytes: 3 * (4 + m1b.length) } });
  const w2 = await open(t, s2.url, SECRETS.write);
  for (let i = 6; i < 10; i++) assert.equal((await w2.memo(scope, teamMemo(key(`l${i}`)))).type, 'ok');
  const bounded = await w2.scope(scope);
  assert.equal(bounded.memos?.length, 3);
  assert.equal(bounded.complete, false, 'cut by the bundle limit');
  const all = [m1b, m2, ...[5, 6, 7, 8, 9].map((i) => teamMemo(key(`l${i}`)))];
  for (const m of bounded.memos!) assert.ok(all.some((x) => x.equals(m)));
  assert.deepEqual(sorted((await w2.scope(other)).memos), sorted([o1]));
  const st2 = await w2.stats();
  assert.deepEqual({ stored: st2.memos_stored, served: st2.memos_served, rejected: st2.rejected_memos }, { stored: 9, served: 6 + 3 + 1, rejected: 5 });

  const admin = await open(t, s2.url, SECRETS.admin);
  assert.equal((await admin.admin('clear')).type, 'ok');
  assert.deepEqual(await w2.scope(scope), { type: 'memos', memos: [], complete: true });
});

test('a scope reply says whether it holds every memo: cut by the bundle or count limit it is not; values no client would accept do not count', { timeout: 120_000 }, async (t) => {
  const dir = tempDir(t, 'memos-complete');
  const scope = hashBytes('scope-complete');
  const full = hashBytes('scope-full');
  const memos = [1, 2, 3].map((i) => teamMemo(key(`c${i}`)));
  // Planted straight into the storage: the server refuses such values in a `memo` request.
  const planted = await DirStorage.open(dir, 1 << 30, () => {});
  try {
    for (const [i, m] of memos.entries()) assert.equal((await planted.putMemo(scope, hashBytes(`c${i}`), m)).kind, 'stored');
    assert.equal((await planted.putMemo(scope, hashBytes('empty'), Buffer.alloc(0))).kind, 'stored');
    assert.equal((await planted.putMemo(scope, hashBytes('huge'), Buffer.alloc(TEAM_MEMO_MAX_BYTES + 1))).kind, 'stored');
    for (let i = 0; i < SCOPE_MAX_MEMOS; i++) await planted.putMemo(full, hashBytes(`full-${i}`), Buffer.from(`memo ${i}`));
  } finally {
    await planted.close();
  }
  const s = await startServer(t, dir);
  const writer = await open(t, s.url, SECRETS.write);
  const reader = await open(t, s.url, SECRETS.read);
  const sorted = (bs: Buffer[] | undefined) => (bs ?? []).map((b) => b.toString('hex')).sort();

  const all = await reader.scope(scope);
  assert.deepEqual(sorted(all.memos), sorted(memos), 'the empty and the oversized value are not sent');
  assert.equal(all.complete, true, 'values no client would accept do not make the list incomplete');
  const cut = await reader.scope(scope, 2 * (4 + memos[0]!.length));
  assert.equal(cut.memos?.length, 2);
  assert.equal(cut.complete, false, "cut by the client's bundle limit");
  assert.equal((await reader.scope(scope, 3 * (4 + memos[0]!.length))).complete, true, 'exactly fits');

  const atLimit = await reader.scope(full);
  assert.equal(atLimit.memos?.length, SCOPE_MAX_MEMOS);
  assert.equal(atLimit.complete, true, 'as many as the count limit: all of them');
  assert.equal((await writer.memo(full, teamMemo(key('one more')))).type, 'ok');
  const over = await reader.scope(full);
  assert.equal(over.memos?.length, SCOPE_MAX_MEMOS);
  assert.equal(over.complete, false, 'cut by the count limit');
});

test('hostile peers are rejected and counted; a well-behaved client is unaffected', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t, 'hostile');
  const maxBundleBytes = 64 << 10;
  const s = await startServer(t, dir, { limits: { maxMessageBytes: 4096, maxBundleBytes, maxStreams: 4, maxEntries: 3 } });

  const seed = makeEntry({ obj: randomBytes(2000) });
  const writer = await open(t, s.url, SECRETS.write);
  assert.equal((await writer.put(key('seed'), seed.record, await packBundle(seed.record, seed.files))).type, 'stored');
  const good = await open(t, s.url, SECRETS.read);
  const stillServed = async () => {
    await assertHit(good, key('seed'), seed);
  };
  const base = await good.stats();
  let badMessages = 0;
  let rejectedBundles = 0;

  // --- text messages -------------------------------------------------------------------
  const textCases: [string, string, ErrorCode, boolean][] = [
    ['malformed JSON', '{"type":"get","id":1,', 'bad-message', false],
    ['not an object', '[1,2,3]', 'bad-message', false],
    ['unknown type', JSON.stringify({ type: 'delete', id: 7, key: key(1) }), 'bad-message', true],
    ['missing key', JSON.stringify({ type: 'get', id: 8 }), 'bad-message', true],
    ['malformed key', JSON.stringify({ type: 'get', id: 9, key: '../../etc/passwd' }), 'bad-message', true],
    ['negative id', JSON.stringify({ type: 'ping', id: -1 }), 'bad-message', false],
    ['put without entry', JSON.stringify({ type: 'put', id: 10, key: key(1), bundleBytes: 10 }), 'bad-message', true],
    ['oversized text message', JSON.stringify({ pad: 'x'.repeat(5000) }), 'too-large', false],
    ['oversized request', JSON.stringify({ type: 'ping', id: 11, pad: 'x'.repeat(5000) }), 'too-large', true],
  ];
  for (const [name, text, code, withId] of textCases) {
    const p = await open(t, s.url, SECRETS.write);
    p.send(text);
    const r = await p.text((m) => m.type === 'error', name);
    assert.equal(r.code, code, `${name}: ${JSON.stringify(r)}`);
    assert.equal(r.id !== undefined, withId, `${name}: id ${r.id}`);
    assert.ok(typeof r.message === 'string' && r.message.length > 0);
    badMessages++;
    await p.ping();
    p.close();
    await stillServed();
  }

  // --- binary messages -----------------------------------------------------------------
  {
    const p = await open(t, s.url, SECRETS.write);
    p.ws.send(encodeBinary(4242, Buffer.from('stray')));
    const r = await p.reply(4242);
    assert.equal(r.code, 'unknown-id');
    assert.equal(r.id, 4242);
    p.ws.send(Buffer.from([1, 2]));
    assert.equal((await p.text((m) => m.type === 'error', 'short binary')).code, 'bad-message');
    badMessages += 2;
    await p.ping();
    p.close();
    await stillServed();
  }
  {
    const p = await open(t, s.url, SECRETS.write);
    p.ws.send(Buffer.alloc(maxBundleBytes + 100));
    const c = await p.closed;
    assert.equal(c.code, CLOSE_CODES.tooBig);
    badMessages++;
    await stillServed();
  }

  {
    const p = await open(t, s.url, SECRETS.write);
    p.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false });
    assert.equal((await p.closed).code, 1007);
    badMessages++;
  }
  {
    // Raw bytes that are not WebSocket frames, after a valid upgrade.
    const sock = netConnect(s.port, '127.0.0.1');
    sock.on('error', () => {});
    sock.write(
      `GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n` +
        `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nAuthorization: Bearer ${SECRETS.write}\r\n\r\n`,
    );
    let got = '';
    sock.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (got.includes('\r\n\r\n')) sock.write(randomBytes(64).fill(0x0f, 0, 1));
    });
    await new Promise((res) => sock.on('close', res));
    assert.match(got, /^HTTP\/1\.1 101 /);
    badMessages++;
    await stillServed();
  }

  // --- bundles -------------------------------------------------------------------------
  const obj = randomBytes(3000);
  const good1 = makeEntry({ obj });
  const validBundle = await packBundle(good1.record, good1.files);
  const bundleCases: [string, EntryRecord, Buffer, number?][] = [
    ['a ../x name', good1.record, await rawTar([{ name: '../x', data: obj }])],
    ['an absolute name', good1.record, await rawTar([{ name: '/tmp/obj', data: obj }])],
    ['a symlink entry', good1.record, await rawTar([{ name: 'obj', type: 'symlink', linkname: '/etc/passwd' }])],
    [
      'a directory entry',
      good1.record,
      await rawTar([
        { name: 'obj', type: 'directory' },
        { name: 'obj', data: obj },
      ]),
    ],
    [
      'an extra undeclared file',
      good1.record,
      await rawTar([
        { name: 'obj', data: obj },
        { name: 'extra', data: Buffer.from('x') },
      ]),
    ],
    ['a declared file missing', makeEntry({ obj, dwo: Buffer.from('d') }).record, validBundle],
    [
      'a duplicated file',
      good1.record,
      await rawTar([
        { name: 'obj', data: obj },
        { name: 'obj', data: obj },
      ]),
    ],
    ['a wrong size', good1.record, await rawTar([{ name: 'obj', data: obj.subarray(0, 2900) }])],
    ['a wrong content hash', { ...good1.record, outputs: [{ ...good1.record.outputs[0]!, digest: hashBytes('something else') }] }, validBundle],
    ['bytes not matching the declared digest', good1.record, await rawTar([{ name: 'obj', data: Buffer.concat([obj.subarray(0, 100), Buffer.from('X'), obj.subarray(101)]) }])],
    ['a truncated tar', good1.record, validBundle.subarray(0, 1500)],
    ['garbage instead of a tar', good1.record, randomBytes(4096)],
    ['a length differing from bundleBytes', good1.record, validBundle, validBundle.length + 1],
    ['more outputs than maxEntries', makeEntry({ a: Buffer.from('1'), b: Buffer.from('2'), c: Buffer.from('3'), d: Buffer.from('4') }).record, validBundle],
  ];
  const p = await open(t, s.url, SECRETS.write);
  for (const [name, record, bundle, declared] of bundleCases) {
    const r = await p.put(key(`bad-${name}`), record, bundle, declared);
    assert.equal(r.type, 'error', `${name}: ${JSON.stringify(r)}`);
    assert.equal(r.code, 'bad-bundle', `${name}: ${JSON.stringify(r)}`);
    rejectedBundles++;
    assert.equal((await good.get(key(`bad-${name}`))).type, 'miss', name);
    await stillServed();
  }
  const big = await p.put(key('too-big'), good1.record, validBundle, maxBundleBytes + 1);
  assert.equal(big.code, 'too-large');
  rejectedBundles++;
  // A put whose record makes the text message too large: the error names its id, the bundle is dropped.
  const chatty = makeEntry({ obj });
  chatty.record.stderr = Buffer.from('w'.repeat(6000)).toString('base64');
  const tooChatty = await p.put(key('chatty'), chatty.record, validBundle);
  assert.equal(tooChatty.code, 'too-large');
  badMessages++;
  await p.ping();
  assert.equal(p.inbox.length, 0, JSON.stringify(p.inbox));
  // After all that, the same connection still stores a good bundle.
  assert.equal((await p.put(key('fine'), good1.record, validBundle)).type, 'stored');

  // --- too many streams ----------------------------------------------------------------
  const pending: number[] = [];
  for (let i = 0; i < 4; i++) {
    const id = p.id();
    pending.push(id);
    p.send({ type: 'put', id, key: key(`stream-${i}`), entry: good1.record, bundleBytes: validBundle.length });
  }
  const overGet = p.id();
  p.send({ type: 'get', id: overGet, key: key('seed') });
  assert.equal((await p.reply(overGet)).code, 'too-many-streams');
  const overPut = p.sendPut(key('stream-x'), good1.record, validBundle);
  assert.equal((await p.reply(overPut)).code, 'too-many-streams');
  badMessages += 2;
  for (const id of pending) p.ws.send(encodeBinary(id, validBundle));
  for (const id of pending) assert.equal((await p.reply(id)).type, 'stored');
  await p.ping();
  assert.equal(p.inbox.length, 0, `the over-limit put's bundle must be dropped: ${JSON.stringify(p.inbox)}`);
  assert.equal((await good.get(key('stream-x'))).type, 'miss');

  const st = await good.stats();
  assert.equal(st.bad_messages - base.bad_messages, badMessages);
  assert.equal(st.rejected_bundles - base.rejected_bundles, rejectedBundles);
  assert.equal(st.entries, 1 + 1 + 4, 'seed, fine and the four streamed puts; nothing else stored');
  assert.equal(good.ws.readyState, WebSocket.OPEN);
  await stillServed();
});

test('the store stays within max size: LRU evictions are counted and persisted', { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t, 'evict');
  const s = await startServer(t, dir, { maxBytes: 200_000 });
  const p = await open(t, s.url, SECRETS.write);
  for (let i = 0; i < 10; i++) {
    const e = makeEntry({ obj: randomBytes(40_000) });
    assert.equal((await p.put(key(`ev-${i}`), e.record, await packBundle(e.record, e.files))).type, 'stored');
  }
  const st = await p.stats();
  assert.ok(st.bytes <= 200_000, `bytes ${st.bytes}`);
  assert.ok(st.evictions >= 5, `evictions ${st.evictions}`);
  assert.equal(st.entries + st.evictions, 10);
  assert.equal((await p.get(key('ev-0'))).type, 'miss');
  p.close();
  await s.stop();
  const s2 = await startServer(t, dir, { maxBytes: 200_000 });
  const q = await open(t, s2.url, SECRETS.read);
  assert.equal((await q.stats()).evictions, st.evictions);
});

test('handshake and connection limits: version, hello first, bad-message limit, idle timeout, id reuse', { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t, 'limits');
  const s = await startServer(t, dir, { limits: { idleTimeoutMs: 600 } });

  const v = await connect(s.url, SECRETS.read);
  const r = await v.hello(2);
  assert.deepEqual({ type: r.type, code: r.code, id: r.id }, { type: 'error', code: 'version', id: undefined });
  assert.equal((await v.closed).code, CLOSE_CODES.version);

  const early = await connect(s.url, SECRETS.read);
  t.after(() => early.ws.terminate());
  early.send({ type: 'get', id: 1, key: key(1) });
  assert.equal((await early.reply(1)).code, 'bad-message');
  early.ws.send(encodeBinary(1, Buffer.from('x')));
  assert.equal((await early.connectionError()).code, 'bad-message');
  assert.equal((await early.hello()).type, 'welcome');
  early.send({ type: 'hello', protocol: 1, client: 'again' });
  assert.equal((await early.connectionError()).code, 'bad-message');

  // Reusing the id of a request in progress is refused without naming the id.
  const writer = await open(t, s.url, SECRETS.write);
  const e = makeEntry({ obj: randomBytes(100) });
  writer.send({ type: 'put', id: 50, key: key(50), entry: e.record, bundleBytes: 10 });
  writer.send({ type: 'ping', id: 50 });
  assert.match((await writer.connectionError()).message, /request id 50 is already in use/);

  const noisy = await open(t, s.url, SECRETS.read);
  const keepAlive = setInterval(() => void early.ping().catch(() => {}), 150);
  t.after(() => clearInterval(keepAlive));
  for (let i = 0; i < 10; i++) noisy.send('nonsense');
  const c = await noisy.closed;
  assert.equal(c.code, CLOSE_CODES.badMessages);
  assert.equal(noisy.inbox.filter((m) => m.kind === 'text' && m.msg.code === 'bad-message').length, 10);

  // Idle connections are closed; one that keeps pinging is not.
  const idle = await open(t, s.url, SECRETS.read);
  const t0 = Date.now();
  assert.equal((await idle.closed).code, CLOSE_CODES.idle);
  assert.ok(Date.now() - t0 >= 500, 'closed before the idle timeout');
  assert.equal(early.ws.readyState, WebSocket.OPEN);
  clearInterval(keepAlive);

  const st = await (await open(t, s.url, SECRETS.admin)).stats();
  assert.equal(st.bad_messages, 2 + 1 + 1 + 10);
});

test('TLS: wss round trip with the CA; a client without it fails', { timeout: 60_000 }, async (t) => {
  if (spawnSync('openssl', ['version']).error) {
    t.skip('openssl is not installed: TLS test skipped');
    return;
  }
  const dir = tempDir(t, 'tls');
  const gen = spawnSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-days',
      '2',
      '-keyout',
      'k.pem',
      '-out',
      'c.pem',
    ],
    { cwd: dir, encoding: 'utf8' },
  );
  assert.equal(gen.status, 0, gen.stderr);
  const cert = readFileSync(join(dir, 'c.pem'));
  const s = await startServer(t, join(dir, 'store'), { tls: { cert, key: readFileSync(join(dir, 'k.pem')) } });
  assert.match(s.url, /^wss:\/\/127\.0\.0\.1:\d+$/);

  const p = await open(t, s.url, SECRETS.write, { ca: cert });
  const e = makeEntry({ obj: randomBytes(50_000) });
  const bundle = await packBundle(e.record, e.files);
  assert.equal((await p.put(key('tls'), e.record, bundle)).type, 'stored');
  assert.ok((await assertHit(p, key('tls'), e)).equals(bundle));

  await assert.rejects(connect(s.url, SECRETS.write), /self[- ]signed|unable to verify|certificate/i);
  await assert.rejects(connect(s.url.replace('wss:', 'ws:'), SECRETS.write));
  await p.ping();
});

/** `ltocache serve ARGS` as a child process. */
function spawnServe(t: TestContext, args: string[]): { child: ChildProcess; url: Promise<string>; exit: Promise<number | null>; stderr: () => string } {
  const child = spawn(process.execPath, [CLI, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const url = new Promise<string>((res, rej) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^listening on (wss?:\/\/\S+)$/m.exec(out);
      if (m) res(m[1]!);
    });
    child.on('exit', (code) => rej(new Error(`serve exited (${code}) before listening: ${err}`)));
  });
  const exit = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  return { child, url, exit, stderr: () => err };
}

test('serve: SIGTERM during a large put lets it finish, exits 0; an abandoned upload leaves nothing', { timeout: 120_000 }, async (t) => {
  const dir = tempDir(t, 'sigterm');
  const store = join(dir, 'store');
  const tokensFile = join(dir, 'tokens');
  writeFileSync(tokensFile, TOKENS_TEXT, { mode: 0o600 });
  const args = ['--listen', '127.0.0.1:0', '--dir', store, '--tokens', tokensFile, '--max-bundle', '64M'];

  const big = makeEntry({ obj: randomBytes(40 << 20), dwo: randomBytes(1 << 20) });
  const bundle = await packBundle(big.record, big.files);
  const frame = encodeBinary(1, bundle);
  const half = frame.length >> 1;

  // 1. The upload is half sent when SIGTERM arrives; the server waits for the rest and stores it.
  {
    const srv = spawnServe(t, args);
    const url = await srv.url;
    assert.match(url, /^ws:\/\/127\.0\.0\.1:(?!0\b)\d+$/);
    const p = await open(t, url, SECRETS.write);
    p.send({ type: 'put', id: 1, key: key('big'), entry: big.record, bundleBytes: bundle.length });
    await new Promise<void>((res, rej) => p.ws.send(frame.subarray(0, half), { binary: true, fin: false }, (e) => (e ? rej(e) : res())));
    await new Promise((r) => setTimeout(r, 200));
    srv.child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    // The listener is gone while the old connection is still served.
    await assert.rejects(connect(url, SECRETS.read));
    p.ws.send(frame.subarray(half), { binary: true, fin: true });
    assert.deepEqual(await p.reply(1, 20_000), { type: 'stored', id: 1, key: key('big') });
    assert.equal((await p.closed).code, CLOSE_CODES.goingAway);
    assert.equal(await srv.exit, 0, srv.stderr());
  }

  // 2. The client vanishes mid-upload after SIGTERM: exit 0 promptly, nothing of it stored.
  {
    const srv = spawnServe(t, args);
    const p = await open(t, await srv.url, SECRETS.write);
    const other = makeEntry({ obj: randomBytes(8 << 20) });
    const otherBundle = await packBundle(other.record, other.files);
    const f = encodeBinary(2, otherBundle);
    p.send({ type: 'put', id: 2, key: key('abandoned'), entry: other.record, bundleBytes: otherBundle.length });
    await new Promise<void>((res, rej) => p.ws.send(f.subarray(0, f.length >> 1), { binary: true, fin: false }, (e) => (e ? rej(e) : res())));
    await new Promise((r) => setTimeout(r, 200));
    const t0 = Date.now();
    srv.child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 100));
    p.ws.terminate();
    assert.equal(await srv.exit, 0, srv.stderr());
    assert.ok(Date.now() - t0 < 8000, 'shutdown waited for an upload whose client had gone');
  }

  assert.deepEqual(readdirSync(layoutPaths(store).tmp), [], 'no half-written files left');
  const s = await startServer(t, store);
  const p = await open(t, s.url, SECRETS.read);
  const served = await assertHit(p, key('big'), big);
  assert.ok(served.equals(bundle));
  assert.equal((await p.get(key('abandoned'))).type, 'miss');
  const st = await p.stats();
  assert.equal(st.entries, 1);
  assert.equal(st.puts, 1);
});

test('serve: argument and start-up errors', { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t, 'args');
  const tokensFile = join(dir, 'tokens');
  writeFileSync(tokensFile, `ci write ${SECRETS.write}\nbroken line\n`, { mode: 0o600 });
  const run = (args: string[]) => spawnSync(process.execPath, [CLI, 'serve', ...args], { encoding: 'utf8', timeout: 20_000 });
  let r = run(['--tokens', tokensFile]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /one of --dir and --storage is required/);
  r = run(['--dir', join(dir, 's'), '--storage', 'redis://127.0.0.1:1', '--tokens', tokensFile]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--dir and --storage exclude each other/);
  const goodTokens = join(dir, 'good-tokens');
  writeFileSync(goodTokens, `ci write ${SECRETS.write}\n`, { mode: 0o600 });
  r = run(['--storage', 'redis://u:hunter2pass@h:1,b:2', '--tokens', goodTokens]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /storage must be redis:\/\//);
  assert.ok(!r.stderr.includes('hunter2pass'));
  r = run(['--dir', join(dir, 's'), '--tokens', tokensFile, '--listen', 'nope']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--listen must be HOST:PORT/);
  r = run(['--dir', join(dir, 's'), '--tokens', tokensFile, '--tls-cert', 'x.pem']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--tls-cert and --tls-key go together/);
  r = run(['--dir', join(dir, 's'), '--tokens', tokensFile, '--listen', '127.0.0.1:0']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /tokens:2: expected 'NAME SCOPE SECRET'/);
  assert.ok(!r.stderr.includes(SECRETS.write));
});

test('CLI: clear --remote and stats --remote --zero need an admin token and act on the server', { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t, 'cli-admin');
  const s = await startServer(t, dir);
  const writer = await connect(s.url, SECRETS.write);
  await writer.hello();
  const e = makeEntry({ obj: randomBytes(1000) });
  assert.equal((await writer.put(key('admin-cli'), e.record, await packBundle(e.record, e.files))).type, 'stored');
  writer.close();
  // Asynchronous: the server runs in this process.
  const cli = (args: string[], secret: string) =>
    new Promise<{ status: number | null; out: string }>((res) => {
      const env = { ...process.env, LTOCACHE_DIR: join(dir, 'client'), LTOCACHE_REMOTE: s.url, LTOCACHE_REMOTE_TOKEN: secret };
      const c = spawn(process.execPath, [CLI, ...args], { env });
      let out = '';
      c.stdout.on('data', (d: Buffer) => (out += d));
      c.stderr.on('data', (d: Buffer) => (out += d));
      c.on('close', (status) => res({ status, out }));
    });
  let r = await cli(['clear', '--remote'], SECRETS.write);
  assert.equal(r.status, 1);
  assert.match(r.out, /forbidden/);
  assert.equal(s.stats().entries, 1);
  r = await cli(['clear', '--remote'], SECRETS.admin);
  assert.equal(r.status, 0, r.out);
  assert.match(r.out, /cleared team cache/);
  assert.equal(s.stats().entries, 0);
  assert.ok(s.stats().puts > 0);
  r = await cli(['stats', '--remote', '--zero'], SECRETS.admin);
  assert.equal(r.status, 0, r.out);
  assert.equal(s.stats().puts, 0);
});
