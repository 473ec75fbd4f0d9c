import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import { z } from 'zod';
import type { Digest } from '../key/hash.js';
import {
  DEFAULT_LIMITS,
  type Limits,
  REMOTE_PROTOCOL_VERSION,
  RemoteProtocolError,
  type Scope,
  type ServerMessage,
  type ServerStats,
  decodeBinary,
  encodeBinary,
  parseServerMessage,
} from '../protocol/remote.js';
import type { CacheBackend, DeleteResult, Lookup, PutResult, StoredEntry } from '../store/backend.js';
import type { EntryRecord } from '../store/record.js';
import { packBundle, unpackBundle } from './bundle.js';
import { CircuitBreaker } from './circuitBreaker.js';
import type { RemoteFailure } from './remoteFailure.js';
import { VERSION } from '../version.js';

export const RemoteOptions = z.object({
  url: z.string().regex(/^wss?:\/\/[^\s]+$/, 'remote must be a ws:// or wss:// URL'),
  token: z.string().min(1, 'a token is required'),
  /** PEM file of a CA to trust for wss:// (for a self-signed server certificate). */
  ca: z.string().optional(),
  /** Budget for connecting plus one get: a dead or slow server costs at most this per attempt. */
  timeoutMs: z.number().int().positive().default(300),
  putTimeoutMs: z.number().int().positive().default(15_000),
  breakerThreshold: z.number().int().positive().default(2),
  breakerCooldownMs: z.number().int().positive().default(10_000),
});
export type RemoteOptionsInput = z.input<typeof RemoteOptions>;

/** A failed request: nothing usable came back from the server. */
type Failed = { type: 'failed'; failure: 'unavailable' | 'timeout' | 'server' | 'protocol'; error: string };
type Reply = ServerMessage | { type: 'bundle'; bundle: Buffer; entry: EntryRecord } | Failed;

/** A team-tier lookup: its errors say which kind of failure they are. */
export type RemoteLookup = Exclude<Lookup, { kind: 'error' }> | { kind: 'error'; error: string; corrupt: boolean; failure: RemoteFailure };
/** A team-tier put: its errors say which kind of failure they are. */
export type RemotePutResult = Exclude<PutResult, { kind: 'error' }> | { kind: 'error'; error: string; failure: RemoteFailure };

interface Pending {
  resolve: (m: Reply) => void;
  timer: NodeJS.Timeout;
  hit?: { entry: EntryRecord; key: string };
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
 * The team tier: a CacheBackend over one websocket connection to `ltocache serve`, with request
 * ids so concurrent gets share it. Best effort: every failure is data (`error`), and a circuit
 * breaker skips the server for a while after repeated failures.
 */
export class RemoteBackend implements CacheBackend {
  readonly name = 'remote';
  private readonly o: z.infer<typeof RemoteOptions>;
  private readonly ca: Buffer | undefined;
  private ws: WebSocket | null = null;
  private ready: Promise<{ scope: Scope; limits: Limits }> | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private limits: Limits = DEFAULT_LIMITS;
  readonly breaker: CircuitBreaker;
  scope: Scope | null = null;

  constructor(options: RemoteOptionsInput) {
    this.o = RemoteOptions.parse(options);
    this.ca = this.o.ca ? readFileSync(this.o.ca) : undefined;
    this.breaker = new CircuitBreaker(this.o.breakerThreshold, this.o.breakerCooldownMs);
  }

  private connect(deadline: number): Promise<{ scope: Scope; limits: Limits }> {
    if (this.ready) return this.ready;
    const p = new Promise<{ scope: Scope; limits: Limits }>((resolve, reject) => {
      const ws = new WebSocket(this.o.url, {
        headers: { authorization: `Bearer ${this.o.token}` },
        handshakeTimeout: Math.max(1, deadline - Date.now()),
        maxPayload: DEFAULT_LIMITS.maxBundleBytes + 4,
        ...(this.ca ? { ca: this.ca } : {}),
      });
      this.ws = ws;
      let welcomed = false;
      const fail = (why: string, failure: Failed['failure'] = 'unavailable') => {
        if (!welcomed) reject(new ConnectError(why, failure));
        this.drop(ws, why, failure);
      };
      const timer = setTimeout(() => fail('handshake timed out', 'timeout'), Math.max(1, deadline - Date.now()));
      ws.on('unexpected-response', (_req, res) => fail(`server refused the connection: HTTP ${res.statusCode}`));
      ws.on('error', (e) => fail(e.message));
      ws.on('close', () => fail('connection closed'));
      ws.on('open', () => ws.send(JSON.stringify({ type: 'hello', protocol: REMOTE_PROTOCOL_VERSION, client: `ltocache-daemon/${VERSION}` })));
      ws.on('message', (data, isBinary) => {
        const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
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
    if (this.ws === ws) {
      this.ws = null;
      this.ready = null;
    }
    try {
      ws.terminate();
    } catch {
      // already closed
    }
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.resolve({ type: 'failed', failure, error: why });
    }
  }

  private onText(msg: ServerMessage): void {
    if (!('id' in msg) || msg.id === undefined) {
      if (msg.type === 'error' && this.ws) this.drop(this.ws, `server: ${msg.message}`, 'server');
      return;
    }
    const p = this.pending.get(msg.id);
    if (!p) return;
    if (msg.type === 'hit') {
      p.hit = { entry: msg.entry, key: msg.key };
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
    const p = this.pending.get(id);
    if (!p?.hit) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    p.resolve({ type: 'bundle', bundle, entry: p.hit.entry });
  }

  private async request(build: (id: number) => { text: string; binary?: Buffer }, timeoutMs: number): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    try {
      await this.connect(deadline);
    } catch (e) {
      return { type: 'failed', failure: e instanceof ConnectError ? e.failure : 'unavailable', error: (e as Error).message };
    }
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return { type: 'failed', failure: 'unavailable', error: 'not connected' };
    const id = this.nextId++ >>> 0;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        resolve({ type: 'failed', failure: 'timeout', error: `no answer within ${timeoutMs} ms` });
      }, Math.max(1, deadline - Date.now()));
      this.pending.set(id, { resolve, timer });
      const { text, binary } = build(id);
      ws.send(text);
      if (binary) ws.send(encodeBinary(id, binary));
    });
  }

  async get(key: Digest): Promise<RemoteLookup> {
    if (!this.breaker.allow()) return { kind: 'error', failure: 'skipped', error: 'team cache skipped: circuit open after failures', corrupt: false };
    const r = await this.request((id) => ({ text: JSON.stringify({ type: 'get', id, key }) }), this.o.timeoutMs);
    if (r.type === 'failed') {
      this.breaker.failure();
      return { kind: 'error', failure: r.failure, error: r.error, corrupt: false };
    }
    this.breaker.success();
    if (r.type === 'miss') return { kind: 'miss' };
    if (r.type === 'bundle') {
      const u = await unpackBundle(r.entry, r.bundle, this.limits);
      if (u.kind === 'rejected') return { kind: 'error', failure: 'bad-bundle', error: `bundle from server rejected: ${u.reason}`, corrupt: true };
      return { kind: 'hit', entry: { record: r.entry, files: u.files } };
    }
    if (r.type === 'error') return { kind: 'error', failure: 'server', error: `server: ${r.code}: ${r.message}`, corrupt: false };
    return { kind: 'error', failure: 'protocol', error: `unexpected reply ${r.type}`, corrupt: false };
  }

  async put(key: Digest, entry: StoredEntry): Promise<RemotePutResult> {
    if (this.scope === 'read') return { kind: 'refused', reason: 'token has read scope' };
    if (!this.breaker.allow()) return { kind: 'error', failure: 'skipped', error: 'team cache skipped: circuit open after failures' };
    let bundle: Buffer;
    try {
      bundle = await packBundle(entry.record, entry.files);
    } catch (e) {
      return { kind: 'error', failure: 'local', error: (e as Error).message };
    }
    // Within the limits the server announced, or it would count the put as a bad message.
    const probe = JSON.stringify({ type: 'put', id: 0xffffffff, key, entry: entry.record, bundleBytes: bundle.length });
    if (Buffer.byteLength(probe) > this.limits.maxMessageBytes || bundle.length > this.limits.maxBundleBytes) {
      return { kind: 'refused', reason: `entry exceeds the server's limits (${this.limits.maxMessageBytes} B message, ${this.limits.maxBundleBytes} B bundle)` };
    }
    const r = await this.request((id) => ({ text: JSON.stringify({ type: 'put', id, key, entry: entry.record, bundleBytes: bundle.length }), binary: bundle }), this.o.putTimeoutMs);
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

  close(): void {
    if (this.ws) this.drop(this.ws, 'closed');
  }
}
