import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { WebSocketServer } from 'ws';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { DEFAULT_LIMITS, encodeBinary, encodeMemoList, FEATURE_MULTI_GET, FEATURE_TEAM_MEMOS } from '../../src/protocol/remote.js';
import { packBundle } from '../../src/remote/bundle.js';
import { RemoteBackend, type RemoteLookup } from '../../src/remote/remoteBackend.js';
import type { EntryRecord } from '../../src/store/record.js';

await initHash();

/**
 * A stand-in team server speaking protocol 1, with or without the team-memo feature in its
 * welcome: a server from before team memos must never be sent `memo` or `scope` (it would count
 * them as bad messages and, after a few, close the connection).
 */
async function standIn(features: string[] | undefined): Promise<{ url: string; seen: string[]; close: () => Promise<void> }> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const seen: string[] = [];
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const m = JSON.parse(String(data)) as { type: string; id?: number; scope?: string };
      seen.push(m.type);
      if (m.type === 'hello') ws.send(JSON.stringify({ type: 'welcome', protocol: 1, scope: 'write', limits: DEFAULT_LIMITS, ...(features ? { features } : {}) }));
      else if (m.type === 'memo') ws.send(JSON.stringify({ type: 'ok', id: m.id }));
      else if (m.type === 'scope') {
        const list = encodeMemoList([Buffer.from('a memo')]);
        ws.send(JSON.stringify({ type: 'memos', id: m.id, scope: m.scope, count: 1, bundleBytes: list.length }));
        ws.send(encodeBinary(m.id!, list));
      }
    });
  });
  const { port } = wss.address() as AddressInfo;
  return { url: `ws://127.0.0.1:${port}`, seen, close: () => new Promise((r) => wss.close(() => r())) };
}

const SCOPE = hashBytes(Buffer.from('scope'));

test('a server that does not announce team memos is sent neither memo nor scope', async () => {
  const s = await standIn(undefined);
  const r = new RemoteBackend({ url: s.url, token: 't' });
  try {
    assert.equal((await r.putMemo(SCOPE, Buffer.from('m'))).kind, 'refused');
    assert.deepEqual(await r.scopeMemos(SCOPE), { memos: [], complete: true }, 'a server that keeps no memos has none to leave out');
    assert.deepEqual(s.seen, ['hello']);
  } finally {
    r.close();
    await s.close();
  }
});

test('a server that announces them gets both, and its memo list is read', async () => {
  const s = await standIn([FEATURE_TEAM_MEMOS, 'something-later']);
  const r = new RemoteBackend({ url: s.url, token: 't' });
  try {
    assert.equal((await r.putMemo(SCOPE, Buffer.from('m'))).kind, 'stored');
    const list = await r.scopeMemos(SCOPE);
    assert.deepEqual(list?.memos.map(String), ['a memo']);
    assert.equal(list?.complete, false, 'a reply without `complete` (a server from before it) may have been cut');
    assert.deepEqual(s.seen, ['hello', 'memo', 'scope']);
  } finally {
    r.close();
    await s.close();
  }
});

/**
 * A stand-in that welcomes every connection (two streams each, `scope`) and answers `get` with a
 * miss, `delayMs` later, only while `answering`: until then it is a server whose storage hangs, or
 * a peer gone without a FIN. While `refusing`, it refuses the WebSocket upgrade with HTTP 503.
 */
async function silentStandIn(
  o: { scope?: string; delayMs?: number } = {},
): Promise<{ url: string; connections: () => number; answer: () => void; refuse: (on: boolean) => void; close: () => Promise<void> }> {
  let refusing = false;
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', verifyClient: (_info, cb) => (refusing ? cb(false, 503) : cb(true)) });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  let connections = 0;
  let answering = false;
  wss.on('connection', (ws) => {
    connections++;
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const m = JSON.parse(String(data)) as { type: string; id?: number; key?: string };
      if (m.type === 'hello') ws.send(JSON.stringify({ type: 'welcome', protocol: 1, scope: o.scope ?? 'read', limits: { ...DEFAULT_LIMITS, maxStreams: 2 } }));
      else if (m.type === 'get' && answering) setTimeout(() => ws.send(JSON.stringify({ type: 'miss', id: m.id, key: m.key })), o.delayMs ?? 0);
    });
  });
  const { port } = wss.address() as AddressInfo;
  return {
    url: `ws://127.0.0.1:${port}`,
    connections: () => connections,
    answer: () => {
      answering = true;
    },
    refuse: (on) => {
      refusing = on;
    },
    close: () =>
      new Promise((r) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => r());
      }),
  };
}

test('a connection that answered nothing for a whole timeout is dropped: the next request connects afresh', async () => {
  const s = await silentStandIn();
  const r = new RemoteBackend({ url: s.url, token: 't', timeoutMs: 300, breakerThreshold: 100 });
  try {
    // Both streams go to requests the server never answers.
    const [a, b] = await Promise.all([r.get(hashBytes('a')), r.get(hashBytes('b'))]);
    assert.equal(a.kind, 'error');
    assert.equal(b.kind, 'error');
    s.answer();
    // On the old connection this request would wait out its timeout for a stream that never frees.
    assert.deepEqual(await r.get(hashBytes('c')), { kind: 'miss' });
    assert.equal(s.connections(), 2);
  } finally {
    r.close();
    await s.close();
  }
});

test('a server that answers something meanwhile keeps its connection', async () => {
  const s = await silentStandIn();
  const r = new RemoteBackend({ url: s.url, token: 't', timeoutMs: 300, breakerThreshold: 100 });
  try {
    const stuck = r.get(hashBytes('a'));
    await new Promise((go) => setTimeout(go, 100));
    s.answer();
    assert.deepEqual(await r.get(hashBytes('b')), { kind: 'miss' });
    // The first request was sent before the server went on answering: it times out, but the
    // server has been heard from since, so the connection stays.
    assert.equal((await stuck).kind, 'error');
    assert.deepEqual(await r.get(hashBytes('c')), { kind: 'miss' });
    assert.equal(s.connections(), 1);
  } finally {
    r.close();
    await s.close();
  }
});

test("a request refused before it reaches the server gives the breaker's probe back", async () => {
  const s = await silentStandIn({ scope: 'write' });
  const r = new RemoteBackend({ url: s.url, token: 't', timeoutMs: 200, breakerThreshold: 2, breakerCooldownMs: 100, maxBundleBytes: 1024 });
  try {
    for (const k of ['a', 'b']) assert.equal((await r.get(hashBytes(k))).kind, 'error');
    assert.equal((await r.get(hashBytes('c'))).kind, 'error', 'open: skipped');
    await new Promise((go) => setTimeout(go, 150));
    // The probe after the cool-down is a put of a bundle larger than a daemon reads: refused here.
    const big = randomBytes(4096);
    const put = await r.put(hashBytes('big'), {
      record: { v: 1, outputs: [{ name: 'obj', digest: hashBytes(big), size: big.length }], stdout: '', stderr: '', exitCode: 0, compileMs: 1, createdAt: 0 },
      files: new Map([['obj', big]]),
    });
    assert.equal(put.kind, 'refused');
    s.answer();
    // The next request probes: before the fix the probe stayed taken and every request was skipped.
    assert.deepEqual(await r.get(hashBytes('d')), { kind: 'miss' });
    assert.equal(r.breaker.open, false);
  } finally {
    r.close();
    await s.close();
  }
});

test("a refused connection's handshake timer does not fail requests on the next connection", async () => {
  const s = await silentStandIn({ scope: 'write', delayMs: 600 });
  const r = new RemoteBackend({ url: s.url, token: 't', timeoutMs: 3000, putTimeoutMs: 300, breakerThreshold: 100 });
  try {
    s.refuse(true);
    assert.equal((await r.putMemo(hashBytes('scope'), Buffer.from('m'))).kind, 'error', 'HTTP 503');
    s.refuse(false);
    s.answer();
    // Answered 600 ms later, on a new connection: the refused one's 300 ms timer fires meanwhile.
    assert.deepEqual(await r.get(hashBytes('a')), { kind: 'miss' });
  } finally {
    r.close();
    await s.close();
  }
});

/** An entry of `data` as the team cache stores it, and its bundle. */
async function entryOf(data: Buffer): Promise<{ record: EntryRecord; bundle: Buffer }> {
  const record: EntryRecord = { v: 1, outputs: [{ name: 'obj', digest: hashBytes(data), size: data.length }], stdout: '', stderr: '', exitCode: 0, compileMs: 1, createdAt: 0 };
  return { record, bundle: await packBundle(record, new Map([['obj', data]])) };
}

type GetsReply = { hits: { key: string; entry: EntryRecord; bundleBytes: number }[]; misses: string[]; later: string[]; payload: Buffer };

/**
 * A stand-in announcing `multi-get` (or not): it records every request and answers `gets` with
 * what `answer` builds from the keys asked, and `get` from `entries` (a miss for any other key).
 */
async function multiGetStandIn(
  entries: Map<string, { record: EntryRecord; bundle: Buffer }>,
  answer: (keys: string[]) => GetsReply,
  features = [FEATURE_MULTI_GET],
): Promise<{ url: string; seen: { type: string; keys?: string[]; key?: string }[]; close: () => Promise<void> }> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const seen: { type: string; keys?: string[]; key?: string }[] = [];
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const m = JSON.parse(String(data)) as { type: string; id: number; key?: string; keys?: string[] };
      seen.push({ type: m.type, ...(m.keys ? { keys: m.keys } : {}), ...(m.key ? { key: m.key } : {}) });
      if (m.type === 'hello') ws.send(JSON.stringify({ type: 'welcome', protocol: 1, scope: 'read', limits: DEFAULT_LIMITS, features }));
      else if (m.type === 'get') {
        const e = entries.get(m.key!);
        if (!e) ws.send(JSON.stringify({ type: 'miss', id: m.id, key: m.key }));
        else {
          ws.send(JSON.stringify({ type: 'hit', id: m.id, key: m.key, entry: e.record, bundleBytes: e.bundle.length }));
          ws.send(encodeBinary(m.id, e.bundle));
        }
      } else if (m.type === 'gets') {
        const { payload, ...lists } = answer(m.keys!);
        ws.send(JSON.stringify({ type: 'entries', id: m.id, ...lists }));
        ws.send(encodeBinary(m.id, payload));
      }
    });
  });
  const { port } = wss.address() as AddressInfo;
  return { url: `ws://127.0.0.1:${port}`, seen, close: () => new Promise((r) => wss.close(() => r())) };
}

/** The honest answer: hits in the order asked, the rest misses; `later` for the keys listed there. */
function honest(entries: Map<string, { record: EntryRecord; bundle: Buffer }>, later: string[] = []): (keys: string[]) => GetsReply {
  return (keys) => {
    const r: GetsReply = { hits: [], misses: [], later: [], payload: Buffer.alloc(0) };
    const bundles: Buffer[] = [];
    for (const k of keys) {
      const e = entries.get(k);
      if (later.includes(k)) r.later.push(k);
      else if (!e) r.misses.push(k);
      else {
        r.hits.push({ key: k, entry: e.record, bundleBytes: e.bundle.length });
        bundles.push(e.bundle);
      }
    }
    r.payload = Buffer.concat(bundles);
    return r;
  };
}

function allProtocolErrors(got: RemoteLookup[]): void {
  for (const g of got) assert.equal(g.kind === 'error' && g.failure, 'protocol');
}

const fileOf = (r: RemoteLookup): Buffer | undefined => (r.kind === 'hit' ? r.entry.files.get('obj') : undefined);

test('gets made together go to a multi-get server as one request: hits, misses, and later ones asked alone; a lone get stays a get', async () => {
  const datas = [randomBytes(5000), randomBytes(70_000), randomBytes(10)];
  const entries = new Map<string, { record: EntryRecord; bundle: Buffer }>();
  for (const [i, d] of datas.entries()) entries.set(hashBytes(`k${i}`), await entryOf(d));
  const s = await multiGetStandIn(entries, honest(entries, [hashBytes('k1')]));
  const r = new RemoteBackend({ url: s.url, token: 't' });
  try {
    // The first get connects, and learns the feature from the welcome.
    assert.deepEqual(await r.get(hashBytes('absent')), { kind: 'miss' });
    const keys = [hashBytes('k0'), hashBytes('k1'), hashBytes('k2'), hashBytes('absent2'), hashBytes('k0')];
    const got = await Promise.all(keys.map((k) => r.get(k)));
    assert.ok(fileOf(got[0]!)?.equals(datas[0]!));
    assert.ok(fileOf(got[1]!)?.equals(datas[1]!), 'a later key is fetched by a get of its own');
    assert.ok(fileOf(got[2]!)?.equals(datas[2]!));
    assert.deepEqual(got[3], { kind: 'miss' });
    assert.ok(fileOf(got[4]!)?.equals(datas[0]!), 'a key asked twice is answered twice');
    // Connected now: a key asked alone still goes as `get`.
    assert.ok(fileOf(await r.get(hashBytes('k2')))?.equals(datas[2]!));
    assert.deepEqual(
      s.seen.map((m) => m.type),
      ['hello', 'get', 'gets', 'get', 'get'],
    );
    assert.deepEqual(s.seen[2]!.keys, [hashBytes('k0'), hashBytes('k1'), hashBytes('k2'), hashBytes('absent2')], 'each key once, in the order asked');
    assert.equal(s.seen[3]!.key, hashBytes('k1'));
  } finally {
    r.close();
    await s.close();
  }
});

test('a server without multi-get is sent one get per key', async () => {
  const d = randomBytes(100);
  const entries = new Map([[hashBytes('k'), await entryOf(d)]]);
  const s = await multiGetStandIn(entries, honest(entries), [FEATURE_TEAM_MEMOS]);
  const r = new RemoteBackend({ url: s.url, token: 't' });
  try {
    await r.get(hashBytes('first'));
    const got = await Promise.all([r.get(hashBytes('k')), r.get(hashBytes('x'))]);
    assert.ok(fileOf(got[0]!)?.equals(d));
    assert.deepEqual(got[1], { kind: 'miss' });
    assert.deepEqual(
      s.seen.map((m) => m.type),
      ['hello', 'get', 'get', 'get'],
    );
  } finally {
    r.close();
    await s.close();
  }
});

test('a malformed entries reply is an error for every key asked, never a hit; a corrupt bundle only for its own key', async () => {
  const a = randomBytes(3000);
  const b = randomBytes(3000);
  const entries = new Map([
    [hashBytes('a'), await entryOf(a)],
    [hashBytes('b'), await entryOf(b)],
  ]);
  const cases: [string, (keys: string[]) => GetsReply, (got: RemoteLookup[]) => void][] = [
    ['a key not asked', (keys) => ({ ...honest(entries)(keys), misses: [hashBytes('stranger')] }), allProtocolErrors],
    [
      'a key left out',
      (keys) => {
        const h = honest(entries)(keys);
        return { ...h, hits: h.hits.slice(0, 1), payload: h.payload.subarray(0, h.hits[0]!.bundleBytes) };
      },
      allProtocolErrors,
    ],
    [
      'bundle lengths that do not add up',
      (keys) => {
        const h = honest(entries)(keys);
        return { ...h, payload: Buffer.concat([h.payload, Buffer.from('x')]) };
      },
      allProtocolErrors,
    ],
    [
      "one hit's bundle with another's bytes",
      (keys) => {
        const h = honest(entries)(keys);
        const bad = Buffer.from(h.payload);
        bad[600] = bad[600]! ^ 0xff;
        return { ...h, payload: bad };
      },
      (got) => {
        assert.equal(got[0]!.kind === 'error' && got[0]!.corrupt, true);
        assert.ok(fileOf(got[1]!)?.equals(b));
      },
    ],
  ];
  for (const [what, answer, check] of cases) {
    const s = await multiGetStandIn(entries, answer);
    const r = new RemoteBackend({ url: s.url, token: 't', breakerThreshold: 100 });
    try {
      await r.get(hashBytes('first'));
      const got = await Promise.all([r.get(hashBytes('a')), r.get(hashBytes('b'))]);
      assert.equal(s.seen.filter((m) => m.type === 'gets').length, 1, what);
      check(got);
    } finally {
      r.close();
      await s.close();
    }
  }
});

test("a hit that names another key than the get's is an error, never that entry", async () => {
  const d = randomBytes(2000);
  const other = await entryOf(d);
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const m = JSON.parse(String(data)) as { type: string; id: number };
      if (m.type === 'hello') ws.send(JSON.stringify({ type: 'welcome', protocol: 1, scope: 'read', limits: DEFAULT_LIMITS }));
      else if (m.type === 'get') {
        ws.send(JSON.stringify({ type: 'hit', id: m.id, key: hashBytes('other'), entry: other.record, bundleBytes: other.bundle.length }));
        ws.send(encodeBinary(m.id, other.bundle));
      }
    });
  });
  const { port } = wss.address() as AddressInfo;
  const r = new RemoteBackend({ url: `ws://127.0.0.1:${port}`, token: 't' });
  try {
    const got = await r.get(hashBytes('asked'));
    assert.equal(got.kind === 'error' && got.failure, 'protocol');
  } finally {
    r.close();
    await new Promise((res) => wss.close(() => res(undefined)));
  }
});
