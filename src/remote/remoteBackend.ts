import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';
import { z } from 'zod';
import type { Digest } from '../key/hash.js';
import { GETS_MAX_KEYS } from '../protocol/limits.js';
import {
  DAEMON_MAX_BUNDLE_BYTES,
  DEFAULT_LIMITS,
  decodeBinary,
  decodeMemoList,
  encodeBinary,
  FEATURE_MULTI_GET,
  FEATURE_TEAM_MEMOS,
  type Limits,
  parseServerMessage,
  REMOTE_PROTOCOL_VERSION,
  RemoteProtocolError,
  type Scope,
  type ServerMessage,
  type ServerStats,
  splitEntries,
} from '../protocol/remote.js';
import type { CacheBackend, DeleteResult, Lookup, PutResult, ScopeMemoList, StoredEntry } from '../store/backend.js';
import type { EntryRecord } from '../store/record.js';
import { corkForTick, socketOf } from '../util/corkForTick.js';
import { VERSION } from '../version.js';
import { packBundle, unpackBundle } from './bundle.js';
import { CircuitBreaker } from './circuitBreaker.js';
import type { RemoteFailure } from './remoteFailure.js';

/** One team server URL. */
export const REMOTE_URL_RE = /^wss?:\/\/[^\s,]+$/;

/** Splits a `remote` setting into its URLs (comma- or space-separated); throws naming the first bad one. */
export function parseRemoteUrls(text: string): string[] {
  const urls = text.split(/[\s,]+/).filter((u) => u !== '');
  if (urls.length === 0) throw new Error('remote names no URL');
  for (const u of urls) if (!REMOTE_URL_RE.test(u)) throw new Error(`remote URL '${u}' is not a ws:// or wss:// URL`);
  if (new Set(urls).size !== urls.length) throw new Error('remote names a URL twice');
  return urls;
}

const UrlList = z.string().superRefine((text, ctx) => {
  try {
    parseRemoteUrls(text);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
  }
});

export const RemoteOptions = z.object({
  /** One URL, or several (comma- or space-separated) serving the same cache. */
  url: UrlList,
  token: z.string().min(1, 'a token is required'),
  /** PEM file of a CA to trust for wss:// (for a self-signed server certificate). */
  ca: z.string().optional(),
  /** Budget for connecting plus one get: a dead or slow server costs at most this per attempt. */
  timeoutMs: z.number().int().positive().default(300),
  putTimeoutMs: z.number().int().positive().default(15_000),
  breakerThreshold: z.number().int().positive().default(2),
  breakerCooldownMs: z.number().int().positive().default(10_000),
  /** The largest bundle read or put (tests lower it). */
  maxBundleBytes: z.number().int().positive().max(DAEMON_MAX_BUNDLE_BYTES).default(DAEMON_MAX_BUNDLE_BYTES),
});
export type RemoteOptionsInput = z.input<typeof RemoteOptions>;

/** A failed request: nothing usable came back from the server. */
type Failed = { type: 'failed'; failure: 'unavailable' | 'timeout' | 'server' | 'protocol'; error: string };
type Entries = Extract<ServerMessage, { type: 'entries' }>;
type Reply =
  | ServerMessage
  | { type: 'bundle'; bundle: Buffer; entry: EntryRecord; key: string }
  | { type: 'memo-list'; memos: Buffer[]; complete: boolean }
  | { type: 'entry-bundles'; entries: Entries; bundles: Buffer[] }
  | Failed;

/** A team-tier lookup: its errors say which kind of failure they are. */
export type RemoteLookup = Exclude<Lookup, { kind: 'error' }> | { kind: 'error'; error: string; corrupt: boolean; failure: RemoteFailure };
/** A scope's team memos (`complete`: ScopeMemoList), or why not. */
export type ScopeMemos = ({ kind: 'memos' } & ScopeMemoList) | { kind: 'error'; error: string; failure: RemoteFailure };
/** A team-tier put: its errors say which kind of failure they are. */
export type RemotePutResult = Exclude<PutResult, { kind: 'error' }> | { kind: 'error'; error: string; failure: RemoteFailure };

interface Pending {
  resolve: (m: Reply) => void;
  timer: NodeJS.Timeout;
  hit?: { entry: EntryRecord; key: string };
  /** A `memos` reply whose list is the next binary message. */
  memos?: { count: number; complete: boolean };
  /** An `entries` reply whose bundles are the next binary message. */
  entries?: Entries;
}

/** A get waiting in the queue: settled as its own `get` would have been, an exception included. */
interface Waiter {
  resolve: (r: RemoteLookup) => void;
  reject: (e: unknown) => void;
}

function settle(waiting: readonly Waiter[], answer: Promise<RemoteLookup>): void {
  answer.then(
    (r) => {
      for (const w of waiting) w.resolve(r);
    },
    (e: unknown) => {
      for (const w of waiting) w.reject(e);
    },
  );
}

/** Connecting failed; `failure` says how. */
class ConnectError extends Error {
  constructor(
    message: string,
    readonly failure: Failed['failure'],
  ) {
    super(message);
  }
}

/**
 * One team server: a CacheBackend over one websocket connection to `ltocache serve`, with request
 * ids so concurrent gets share it. Best effort: every failure is data (`error`), and a circuit
 * breaker skips the server for a while after repeated failures.
 */
export class RemoteServer implements CacheBackend {
  readonly name = 'remote';
  private readonly o: z.infer<typeof RemoteOptions>;
  private readonly ca: Buffer | undefined;
  private ws: WebSocket | null = null;
  private ready: Promise<{ scope: Scope; limits: Limits }> | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  /**
   * Requests sent on this connection and not answered yet, timed-out ones included: the server
   * counts each until it answers, and refuses one beyond its `maxStreams` (`too-many-streams`,
   * which it also counts as a bad message). A request waits for a free stream instead.
   */
  private readonly streams = new Set<number>();
  private readonly streamWaiters: { go: () => void }[] = [];
  /** When the current connection last brought a message (performance.now()). */
  private heardAt = 0;
  private limits: Limits = DEFAULT_LIMITS;
  readonly breaker: CircuitBreaker;
  scope: Scope | null = null;
  /** The server announced team memos in its welcome (FEATURE_TEAM_MEMOS). */
  teamMemos = false;
  /** The server answers `gets` (FEATURE_MULTI_GET). */
  multiGet = false;
  /** Gets asked in this turn of the event loop, sent together as `gets` (by key: one key asked twice is sent once). */
  private queued = new Map<Digest, Waiter[]>();

  /** `options.url` is a single URL here. */
  constructor(options: RemoteOptionsInput) {
    this.o = RemoteOptions.parse(options);
    if (parseRemoteUrls(this.o.url).length !== 1) throw new Error('RemoteServer takes one URL; RemoteBackend takes several');
    this.ca = this.o.ca ? readFileSync(this.o.ca) : undefined;
    this.breaker = new CircuitBreaker(this.o.breakerThreshold, this.o.breakerCooldownMs);
  }

  private connect(deadline: number): Promise<{ scope: Scope; limits: Limits }> {
    if (this.ready) return this.ready;
    const p = new Promise<{ scope: Scope; limits: Limits }>((resolve, reject) => {
      const ws = new WebSocket(this.o.url, {
        headers: { authorization: `Bearer ${this.o.token}` },
        handshakeTimeout: Math.max(1, deadline - Date.now()),
        maxPayload: this.o.maxBundleBytes + 4,
        ...(this.ca ? { ca: this.ca } : {}),
      });
      this.ws = ws;
      let welcomed = false;
      const fail = (why: string, failure: Failed['failure'] = 'unavailable') => {
        clearTimeout(timer);
        if (!welcomed) reject(new ConnectError(why, failure));
        this.drop(ws, why, failure);
      };
      const timer = setTimeout(() => fail('handshake timed out', 'timeout'), Math.max(1, deadline - Date.now()));
      ws.on('unexpected-response', (_req, res) => fail(`server refused the connection: HTTP ${res.statusCode}`));
      ws.on('error', (e) => fail(e.message));
      ws.on('close', () => fail('connection closed'));
      ws.on('open', () => ws.send(JSON.stringify({ type: 'hello', protocol: REMOTE_PROTOCOL_VERSION, client: `ltocache-daemon/${VERSION}` })));
      ws.on('message', (data, isBinary) => {
        if (this.ws === ws) this.heardAt = performance.now();
        // ws hands out Buffers (binaryType nodebuffer): used as they are, not copied.
        const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
        if (isBinary) return this.onBinary(buf);
        let msg: ServerMessage;
        try {
          msg = parseServerMessage(buf.toString('utf8'));
        } catch (e) {
          return fail((e as Error).message, 'protocol');
        }
        if (!welcomed) {
          if (msg.type === 'welcome' && msg.protocol === REMOTE_PROTOCOL_VERSION) {
            welcomed = true;
            clearTimeout(timer);
            this.limits = msg.limits;
            this.scope = msg.scope;
            this.teamMemos = msg.features?.includes(FEATURE_TEAM_MEMOS) ?? false;
            this.multiGet = msg.features?.includes(FEATURE_MULTI_GET) ?? false;
            resolve({ scope: msg.scope, limits: msg.limits });
          } else if (msg.type === 'error') fail(`server: ${msg.message}`);
          else fail(`unexpected ${msg.type} before welcome`, 'protocol');
          return;
        }
        this.onText(msg);
      });
    });
    this.ready = p;
    p.catch(() => {
      if (this.ready === p) this.ready = null;
    });
    return p;
  }

  private drop(ws: WebSocket, why: string, failure: Failed['failure'] = 'unavailable'): void {
    try {
      ws.terminate();
    } catch {
      // already closed
    }
    // A connection dropped before: every request on it was failed then, and those pending now
    // (and the streams they hold) are the current connection's.
    if (this.ws !== ws) return;
    this.ws = null;
    this.ready = null;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.resolve({ type: 'failed', failure, error: why });
    }
    // A new connection starts with every stream free; the waiters find this one gone (and free
    // the stream they were given).
    this.streams.clear();
    for (const w of this.streamWaiters.splice(0)) w.go();
  }

  /** Whether the text message `text` builds would exceed the server's limit, with the widest id. */
  private overTextLimit(text: (id: number) => string): boolean {
    return Buffer.byteLength(text(0xffffffff)) > this.limits.maxMessageBytes;
  }

  /**
   * A request gave up (no answer, or no free stream) after the server had sent nothing since
   * `since`: the connection is taken as dead and dropped, so the next request connects afresh. A
   * peer gone without a FIN, or a server whose storage hangs, answers nothing; its requests keep
   * their streams, and once they hold all of them every later request would wait out its timeout
   * on this connection for as long as the daemon runs. A server that answers anything meanwhile is
   * slow, not gone, and keeps the connection.
   */
  private stalled(ws: WebSocket | null, since: number): void {
    if (ws && this.ws === ws && this.heardAt < since) this.drop(ws, `nothing from the server for ${Math.round(performance.now() - since)} ms with requests outstanding`, 'timeout');
  }

  /** The request `id` has its final answer: its stream is free for the next waiter. */
  private answered(id: number): void {
    if (this.streams.delete(id)) this.streamWaiters.shift()?.go();
  }

  /**
   * Takes a stream for request `id` as soon as fewer than the server's maxStreams requests are in
   * flight (taken at once, not after an await, so concurrent requests cannot all see the same free
   * one); false at the deadline.
   */
  private takeStream(id: number, deadline: number): Promise<boolean> {
    if (this.streams.size < this.limits.maxStreams && !this.streamWaiters.length) {
      this.streams.add(id);
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const w = {
        go: () => {
          clearTimeout(timer);
          this.streams.add(id);
          resolve(true);
        },
      };
      const timer = setTimeout(
        () => {
          const i = this.streamWaiters.indexOf(w);
          if (i >= 0) this.streamWaiters.splice(i, 1);
          resolve(false);
        },
        Math.max(1, deadline - Date.now()),
      );
      this.streamWaiters.push(w);
    });
  }

  private onText(msg: ServerMessage): void {
    if (!('id' in msg) || msg.id === undefined) {
      if (msg.type === 'error' && this.ws) this.drop(this.ws, `server: ${msg.message}`, 'server');
      return;
    }
    // 'hit', 'memos' and 'entries' are followed by their bundles; any other answer is the last one.
    if (msg.type !== 'hit' && msg.type !== 'memos' && msg.type !== 'entries') this.answered(msg.id);
    const p = this.pending.get(msg.id);
    if (!p) return;
    if (msg.type === 'hit') {
      p.hit = { entry: msg.entry, key: msg.key };
      return;
    }
    if (msg.type === 'memos') {
      // A server from before `complete` may have cut the list without saying so.
      p.memos = { count: msg.count, complete: msg.complete === true };
      return;
    }
    if (msg.type === 'entries') {
      p.entries = msg;
      return;
    }
    this.pending.delete(msg.id);
    clearTimeout(p.timer);
    p.resolve(msg);
  }

  private onBinary(buf: Buffer): void {
    let id: number;
    let bundle: Buffer;
    try {
      ({ id, bundle } = decodeBinary(buf));
    } catch {
      return;
    }
    this.answered(id);
    const p = this.pending.get(id);
    if (!p?.hit && !p?.memos && !p?.entries) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (p.hit) return p.resolve({ type: 'bundle', bundle, entry: p.hit.entry, key: p.hit.key });
    try {
      if (p.entries) p.resolve({ type: 'entry-bundles', entries: p.entries, bundles: splitEntries(bundle, p.entries.hits) });
      else p.resolve({ type: 'memo-list', memos: decodeMemoList(bundle, p.memos!.count), complete: p.memos!.complete });
    } catch (e) {
      p.resolve({ type: 'failed', failure: 'protocol', error: (e as Error).message });
    }
  }

  private async request(build: (id: number) => { text: string; binary?: Buffer }, timeoutMs: number): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    try {
      await this.connect(deadline);
    } catch (e) {
      return { type: 'failed', failure: e instanceof ConnectError ? e.failure : 'unavailable', error: (e as Error).message };
    }
    const id = this.nextId++ >>> 0;
    const waitFrom = performance.now();
    const waitingOn = this.ws;
    if (!(await this.takeStream(id, deadline))) {
      this.stalled(waitingOn, waitFrom);
      return { type: 'failed', failure: 'timeout', error: `no free stream on the connection within ${timeoutMs} ms` };
    }
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      this.answered(id);
      return { type: 'failed', failure: 'unavailable', error: 'not connected' };
    }
    const sentAt = performance.now();
    return new Promise((resolve) => {
      const timer = setTimeout(
        () => {
          this.pending.delete(id);
          resolve({ type: 'failed', failure: 'timeout', error: `no answer within ${timeoutMs} ms` });
          this.stalled(ws, sentAt);
        },
        Math.max(1, deadline - Date.now()),
      );
      this.pending.set(id, { resolve, timer });
      const { text, binary } = build(id);
      corkForTick(socketOf(ws));
      ws.send(text);
      if (binary) ws.send(encodeBinary(id, binary));
    });
  }

  /** Connects if needed, so that the welcome's features are known; the failure, if it could not. */
  private async connected(timeoutMs: number): Promise<{ kind: 'error'; failure: RemoteFailure; error: string } | null> {
    try {
      await this.connect(Date.now() + timeoutMs);
      return null;
    } catch (e) {
      this.breaker.failure();
      return { kind: 'error', failure: e instanceof ConnectError ? e.failure : 'unavailable', error: (e as Error).message };
    }
  }

  /**
   * Gets made in one turn of the event loop on an open connection to a `multi-get` server go out
   * together as `gets` requests (GETS_MAX_KEYS keys each); otherwise each is its own `get`.
   */
  async get(key: Digest): Promise<RemoteLookup> {
    if (!this.breaker.allow()) return { kind: 'error', failure: 'skipped', error: 'team cache skipped: circuit open after failures', corrupt: false };
    if (!this.multiGet || this.ws?.readyState !== WebSocket.OPEN) return this.getOne(key);
    return new Promise((resolve, reject) => {
      if (!this.queued.size) setImmediate(() => this.flushGets());
      const waiting = this.queued.get(key);
      if (waiting) waiting.push({ resolve, reject });
      else this.queued.set(key, [{ resolve, reject }]);
    });
  }

  /** A key asked alone goes as `get`: its reply is smaller and comes as soon as that one entry is read. */
  private flushGets(): void {
    const all = [...this.queued];
    this.queued = new Map();
    if (all.length === 1) {
      const [key, waiting] = all[0]!;
      return settle(waiting, this.getOne(key));
    }
    for (let i = 0; i < all.length; i += GETS_MAX_KEYS) {
      const part = new Map(all.slice(i, i + GETS_MAX_KEYS));
      const answers = this.getMany([...part.keys()]);
      for (const [key, waiting] of part)
        settle(
          waiting,
          answers.then((m) => m.get(key)!),
        );
    }
  }

  /** One `gets` request: an answer for every key, `later` ones by a `get` of their own. */
  private async getMany(keys: Digest[]): Promise<Map<Digest, RemoteLookup | Promise<RemoteLookup>>> {
    const all = (r: RemoteLookup) => new Map(keys.map((k) => [k, r]));
    const r = await this.request((id) => ({ text: JSON.stringify({ type: 'gets', id, keys, maxBundleBytes: this.o.maxBundleBytes }) }), this.o.timeoutMs);
    if (r.type === 'failed') {
      this.breaker.failure();
      return all({ kind: 'error', failure: r.failure, error: r.error, corrupt: false });
    }
    this.breaker.success();
    if (r.type !== 'entry-bundles') {
      const error = r.type === 'error' ? `server: ${r.code}: ${r.message}` : `unexpected reply ${r.type}`;
      return all({ kind: 'error', failure: r.type === 'error' ? 'server' : 'protocol', error, corrupt: false });
    }
    const { hits, misses, later } = r.entries;
    const named = [...hits.map((h) => h.key), ...misses, ...later];
    if (named.length !== keys.length || new Set(named).size !== keys.length || !named.every((k) => keys.includes(k))) {
      return all({ kind: 'error', failure: 'protocol', error: 'entries: the reply does not name each key asked once', corrupt: false });
    }
    const out = new Map<Digest, RemoteLookup | Promise<RemoteLookup>>();
    for (const k of misses) out.set(k, { kind: 'miss' });
    for (const [i, h] of hits.entries()) out.set(h.key, await this.unpacked(h.entry, r.bundles[i]!));
    for (const k of later) out.set(k, this.getOne(k));
    return out;
  }

  private async unpacked(entry: EntryRecord, bundle: Buffer): Promise<RemoteLookup> {
    const u = await unpackBundle(entry, bundle, this.limits);
    if (u.kind === 'rejected') return { kind: 'error', failure: 'bad-bundle', error: `bundle from server rejected: ${u.reason}`, corrupt: true };
    return { kind: 'hit', entry: { record: entry, files: u.files } };
  }

  private async getOne(key: Digest): Promise<RemoteLookup> {
    const r = await this.request((id) => ({ text: JSON.stringify({ type: 'get', id, key, maxBundleBytes: this.o.maxBundleBytes }) }), this.o.timeoutMs);
    if (r.type === 'failed') {
      this.breaker.failure();
      return { kind: 'error', failure: r.failure, error: r.error, corrupt: false };
    }
    this.breaker.success();
    if (r.type === 'miss') return { kind: 'miss' };
    // The record names no key: a hit filed under another key would be served as this one's.
    if (r.type === 'bundle' && r.key !== key) return { kind: 'error', failure: 'protocol', error: `hit for key ${r.key}, asked ${key}`, corrupt: false };
    if (r.type === 'bundle') return this.unpacked(r.entry, r.bundle);
    if (r.type === 'error') return { kind: 'error', failure: 'server', error: `server: ${r.code}: ${r.message}`, corrupt: false };
    return { kind: 'error', failure: 'protocol', error: `unexpected reply ${r.type}`, corrupt: false };
  }

  async put(key: Digest, entry: StoredEntry): Promise<RemotePutResult> {
    if (this.scope === 'read') return { kind: 'refused', reason: 'token has read scope' };
    if (entry.record.outputs.length > this.limits.maxEntries)
      return { kind: 'refused', reason: `entry of ${entry.record.outputs.length} outputs exceeds the server's ${this.limits.maxEntries}` };
    if (!this.breaker.allow()) return { kind: 'error', failure: 'skipped', error: 'team cache skipped: circuit open after failures' };
    // Every way out below that does not ask the server releases the breaker's probe (else it
    // would stay taken, and the team cache skipped until the daemon restarts).
    let bundle: Buffer;
    try {
      bundle = await packBundle(entry.record, entry.files);
    } catch (e) {
      this.breaker.release();
      return { kind: 'error', failure: 'local', error: (e as Error).message };
    }
    // Within the limits the server announced, or it would count the put as a bad message; and
    // within what a daemon reads, or teammates' gets of it would only ever be misses.
    const text = (id: number) => JSON.stringify({ type: 'put', id, key, entry: entry.record, bundleBytes: bundle.length });
    if (this.overTextLimit(text) || bundle.length > this.limits.maxBundleBytes) {
      this.breaker.release();
      return { kind: 'refused', reason: `entry exceeds the server's limits (${this.limits.maxMessageBytes} B message, ${this.limits.maxBundleBytes} B bundle)` };
    }
    if (bundle.length > this.o.maxBundleBytes) {
      this.breaker.release();
      return { kind: 'refused', reason: `bundle of ${bundle.length} bytes exceeds the ${this.o.maxBundleBytes} bytes a daemon reads` };
    }
    const r = await this.request((id) => ({ text: text(id), binary: bundle }), this.o.putTimeoutMs);
    if (r.type === 'failed') {
      this.breaker.failure();
      return { kind: 'error', failure: r.failure, error: r.error };
    }
    this.breaker.success();
    if (r.type === 'stored') return { kind: 'stored' };
    if (r.type === 'error' && r.code === 'forbidden') return { kind: 'refused', reason: r.message };
    if (r.type === 'error') return { kind: 'error', failure: 'server', error: `server: ${r.code}: ${r.message}` };
    return { kind: 'error', failure: 'protocol', error: `unexpected reply ${r.type}` };
  }

  /** Shares the team memo of an entry this daemon stored (write scope needed). */
  async putMemo(scope: Digest, memo: Buffer): Promise<RemotePutResult> {
    if (this.scope === 'read') return { kind: 'refused', reason: 'token has read scope' };
    if (!this.breaker.allow()) return { kind: 'error', failure: 'skipped', error: 'team cache skipped: circuit open after failures' };
    const connected = await this.connected(this.o.putTimeoutMs);
    if (connected) return connected;
    if (!this.teamMemos) {
      // It welcomed us: it is up.
      this.breaker.success();
      return { kind: 'refused', reason: 'the server keeps no team memos' };
    }
    const text = (id: number) => JSON.stringify({ type: 'memo', id, scope, memo: memo.toString('base64') });
    // Over the server's text limit it would be refused and counted as a bad message (and enough
    // of those close the connection).
    if (this.overTextLimit(text)) {
      this.breaker.release();
      return { kind: 'refused', reason: `memo exceeds the server's ${this.limits.maxMessageBytes} B message limit` };
    }
    const r = await this.request((id) => ({ text: text(id) }), this.o.putTimeoutMs);
    if (r.type === 'failed') {
      this.breaker.failure();
      return { kind: 'error', failure: r.failure, error: r.error };
    }
    this.breaker.success();
    if (r.type === 'ok') return { kind: 'stored' };
    if (r.type === 'error' && r.code === 'forbidden') return { kind: 'refused', reason: r.message };
    if (r.type === 'error') return { kind: 'error', failure: 'server', error: `server: ${r.code}: ${r.message}` };
    return { kind: 'error', failure: 'protocol', error: `unexpected reply ${r.type}` };
  }

  /** The team memos of a scope (any scope of token). */
  async fetchScope(scope: Digest, timeoutMs: number): Promise<ScopeMemos> {
    if (!this.breaker.allow()) return { kind: 'error', failure: 'skipped', error: 'team cache skipped: circuit open after failures' };
    const connected = await this.connected(timeoutMs);
    if (connected) return connected;
    if (!this.teamMemos) {
      this.breaker.success();
      // It keeps no team memos: it has none to leave out.
      return { kind: 'memos', memos: [], complete: true };
    }
    const r = await this.request((id) => ({ text: JSON.stringify({ type: 'scope', id, scope, maxBundleBytes: this.o.maxBundleBytes }) }), timeoutMs);
    if (r.type === 'failed') {
      this.breaker.failure();
      return { kind: 'error', failure: r.failure, error: r.error };
    }
    this.breaker.success();
    if (r.type === 'memo-list') return { kind: 'memos', memos: r.memos, complete: r.complete };
    // A server from before team memos answers `bad-message`.
    if (r.type === 'error') return { kind: 'error', failure: 'server', error: `server: ${r.code}: ${r.message}` };
    return { kind: 'error', failure: 'protocol', error: `unexpected reply ${r.type}` };
  }

  /** Reports the entry bad to the server, which deletes it (write scope needed). */
  async delete(key: Digest): Promise<DeleteResult> {
    if (this.scope === 'read') return { kind: 'refused', reason: 'token has read scope' };
    if (!this.breaker.allow()) return { kind: 'error', error: 'team cache skipped: circuit open after failures' };
    const r = await this.request((id) => ({ text: JSON.stringify({ type: 'bad', id, key }) }), this.o.putTimeoutMs);
    if (r.type === 'failed') {
      this.breaker.failure();
      return { kind: 'error', error: r.error };
    }
    this.breaker.success();
    if (r.type === 'ok') return { kind: 'deleted' };
    if (r.type === 'error' && r.code === 'forbidden') return { kind: 'refused', reason: r.message };
    return { kind: 'error', error: r.type === 'error' ? `server: ${r.code}: ${r.message}` : `unexpected reply ${r.type}` };
  }

  /** The server keeps its own LRU from the gets it serves. */
  async touch(): Promise<void> {}

  /** The server's own statistics (any scope). */
  async stats(timeoutMs = 5000): Promise<ServerStats> {
    const r = await this.request((id) => ({ text: JSON.stringify({ type: 'stats', id }) }), timeoutMs);
    if (r.type === 'stats') return r.stats;
    throw new RemoteProtocolError(r.type === 'failed' ? r.error : r.type === 'error' ? `${r.code}: ${r.message}` : `unexpected reply ${r.type}`);
  }

  /** Scope granted to our token (connects if needed). */
  async handshake(timeoutMs = 5000): Promise<Scope> {
    return (await this.connect(Date.now() + timeoutMs)).scope;
  }

  /** An admin operation (an admin token): zero the server's counters, or empty its store. */
  async admin(op: 'reset-stats' | 'clear', timeoutMs = 5000): Promise<void> {
    const r = await this.request((id) => ({ text: JSON.stringify({ type: 'admin', id, op }) }), timeoutMs);
    if (r.type === 'ok') return;
    throw new RemoteProtocolError(r.type === 'failed' ? r.error : r.type === 'error' ? `${r.code}: ${r.message}` : `unexpected reply ${r.type}`);
  }

  close(): void {
    if (this.ws) this.drop(this.ws, 'closed');
  }
}

/** A scope's memos can be megabytes: more time than one get. */
const SCOPE_TIMEOUT_MS = 5000;

/** Failures after which the next server is asked: the server, not the entry, was the problem. */
const FAIL_OVER: ReadonlySet<RemoteFailure> = new Set(['skipped', 'unavailable', 'timeout', 'server', 'protocol']);

/** FNV-1a over `a` then `b`, then murmur3's finalizer (FNV alone leaves the high bits biased): the rendezvous score of a server for a key. */
function score(a: string, b: string): number {
  let h = 0x811c9dc5;
  for (const s of [a, b]) for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * The team tier over one or more servers of the same cache. Each key has a preferred order of
 * servers (rendezvous hashing: load spreads evenly, and a key keeps its server while the others
 * come and go); a request goes to the first whose circuit breaker is closed and moves to the
 * next when that one fails. A miss or a hit ends the search.
 */
export class RemoteBackend implements CacheBackend {
  readonly name = 'remote';
  readonly servers: readonly RemoteServer[];
  private readonly urls: string[];

  constructor(options: RemoteOptionsInput) {
    const o = RemoteOptions.parse(options);
    this.urls = parseRemoteUrls(o.url);
    this.servers = this.urls.map((url) => new RemoteServer({ ...options, url }));
  }

  /** The servers in the key's preferred order. */
  order(key: string): RemoteServer[] {
    if (this.servers.length === 1) return [this.servers[0]!];
    return this.servers
      .map((s, i) => ({ s, w: score(this.urls[i]!, key) }))
      .sort((x, y) => y.w - x.w)
      .map((x) => x.s);
  }

  /** Open when every server's circuit is open. */
  get breaker(): { readonly open: boolean } {
    const servers = this.servers;
    return {
      get open() {
        return servers.every((s) => s.breaker.open);
      },
    };
  }

  /** The scope a connected server granted (servers of one cache share their tokens). */
  get scope(): Scope | null {
    for (const s of this.servers) if (s.scope) return s.scope;
    return null;
  }

  private async each<R extends { kind: string }>(key: string, op: (s: RemoteServer) => Promise<R>, retry: (r: R) => boolean): Promise<R> {
    let last: R | undefined;
    for (const s of this.order(key)) {
      const r = await op(s);
      if (!retry(r)) return r;
      // A skipped server is only the answer when every server was skipped.
      if (!last || !(r.kind === 'error' && (r as { failure?: string }).failure === 'skipped')) last = r;
    }
    return last!;
  }

  get(key: Digest): Promise<RemoteLookup> {
    return this.each(
      key,
      (s) => s.get(key),
      (r) => r.kind === 'error' && FAIL_OVER.has(r.failure),
    );
  }

  put(key: Digest, entry: StoredEntry): Promise<RemotePutResult> {
    return this.each(
      key,
      (s) => s.put(key, entry),
      (r) => r.kind === 'error' && FAIL_OVER.has(r.failure),
    );
  }

  delete(key: Digest): Promise<DeleteResult> {
    return this.each(
      key,
      (s) => s.delete(key),
      (r) => r.kind === 'error',
    );
  }

  putMemo(scope: Digest, memo: Buffer): Promise<RemotePutResult> {
    return this.each(
      scope,
      (s) => s.putMemo(scope, memo),
      (r) => r.kind === 'error' && FAIL_OVER.has(r.failure),
    );
  }

  fetchScope(scope: Digest, timeoutMs = SCOPE_TIMEOUT_MS): Promise<ScopeMemos> {
    return this.each(
      scope,
      (s) => s.fetchScope(scope, timeoutMs),
      (r) => r.kind === 'error' && FAIL_OVER.has(r.failure),
    );
  }

  /** CacheBackend's view: the memos, or null on any failure. */
  async scopeMemos(scope: Digest): Promise<ScopeMemoList | null> {
    const r = await this.fetchScope(scope);
    return r.kind === 'memos' ? { memos: r.memos, complete: r.complete } : null;
  }

  async touch(): Promise<void> {}

  /** The first server that answers. */
  async stats(timeoutMs = 5000): Promise<ServerStats> {
    let err: unknown;
    for (const s of this.servers) {
      try {
        return await s.stats(timeoutMs);
      } catch (e) {
        err = e;
      }
    }
    throw err;
  }

  /**
   * An admin operation on every server: each counts for itself, and servers of one cache over
   * separate directories each hold a copy. The first failure, naming its server, once all were asked.
   */
  async admin(op: 'reset-stats' | 'clear', timeoutMs = 5000): Promise<void> {
    const results = await Promise.allSettled(this.servers.map((s) => s.admin(op, timeoutMs)));
    const i = results.findIndex((r) => r.status === 'rejected');
    if (i >= 0) throw new Error(`${this.urls[i]}: ${((results[i] as PromiseRejectedResult).reason as Error).message}`);
  }

  /** Scope granted by the first server that accepts the token. */
  async handshake(timeoutMs = 5000): Promise<Scope> {
    let err: unknown;
    for (const s of this.servers) {
      try {
        return await s.handshake(timeoutMs);
      } catch (e) {
        err = e;
      }
    }
    throw err;
  }

  close(): void {
    for (const s of this.servers) s.close();
  }
}
