import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { WebSocketServer } from 'ws';
import { hashBytes, initHash } from '../../src/key/hash.js';
import { DEFAULT_LIMITS, encodeBinary, encodeMemoList, FEATURE_TEAM_MEMOS } from '../../src/protocol/remote.js';
import { RemoteBackend } from '../../src/remote/remoteBackend.js';

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
    assert.deepEqual(await r.scopeMemos(SCOPE), []);
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
    const memos = await r.scopeMemos(SCOPE);
    assert.deepEqual(memos?.map(String), ['a memo']);
    assert.deepEqual(s.seen, ['hello', 'memo', 'scope']);
  } finally {
    r.close();
    await s.close();
  }
});

/**
 * A stand-in that welcomes every connection (two streams each) and answers `get` with a miss only
 * while `answering`: until then it is a server whose storage hangs, or a peer gone without a FIN.
 */
async function silentStandIn(): Promise<{ url: string; connections: () => number; answer: () => void; close: () => Promise<void> }> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  let connections = 0;
  let answering = false;
  wss.on('connection', (ws) => {
    connections++;
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const m = JSON.parse(String(data)) as { type: string; id?: number; key?: string };
      if (m.type === 'hello') ws.send(JSON.stringify({ type: 'welcome', protocol: 1, scope: 'read', limits: { ...DEFAULT_LIMITS, maxStreams: 2 } }));
      else if (m.type === 'get' && answering) ws.send(JSON.stringify({ type: 'miss', id: m.id, key: m.key }));
    });
  });
  const { port } = wss.address() as AddressInfo;
  return {
    url: `ws://127.0.0.1:${port}`,
    connections: () => connections,
    answer: () => {
      answering = true;
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
