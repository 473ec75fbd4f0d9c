import { createWriteStream, openSync, type WriteStream } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { performance } from 'node:perf_hooks';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { z } from 'zod';
import { initHash } from '../key/hash.js';
import {
  type ClientMessage,
  decodeBinary,
  encodeBinary,
  type ErrorCode,
  parseClientMessage,
  REMOTE_PROTOCOL_VERSION,
  type ServerMessage,
  type ServerStats,
} from '../protocol/remote.js';
import { LocalStore, type StoreSublevel } from '../store/localStore.js';
import type { EntryRecord } from '../store/record.js';
import { packBundle, unpackBundle } from './bundle.js';
import { parseServerOptions, parseTokenList, type ResolvedServerOptions, type ServerOptionsInput } from './serverOptions.js';
import { parseBearer, scopeAllows, type Token, TokenTable } from './tokens.js';

/** WebSocket close codes the server uses; 1009 and 1002/1007 come from `ws` itself. */
export const CLOSE_CODES = {
  /** Server shutting down (after in-flight requests of the connection were answered). */
  goingAway: 1001,
  /** A message exceeded maxPayload (max bundle + 4 bytes); sent by `ws`. */
  tooBig: 1009,
  /** No message and nothing in progress for idleTimeoutMs. */
  idle: 4000,
  /** `hello` named a protocol version this server does not speak (after an `error {code:'version'}`). */
  version: 4001,
  /** maxBadMessages bad messages on this connection. */
  badMessages: 4002,
} as const;

const COUNTERS = [
  'hits',
  'misses',
  'puts',
  'puts_refused',
  'rejected_bundles',
  'bad_messages',
  'auth_failures',
  'evictions',
  'bytes_served',
  'bytes_received',
] as const;
type CounterName = (typeof COUNTERS)[number];

const STATS_SUBLEVEL = 'server-stats';
const STATS_KEY = 'counters';
const PersistedStats = z.object({
  v: z.literal(1),
  counters: z.record(z.string(), z.number().int().nonnegative()),
  since: z.number().int(),
});
type PersistedStats = z.infer<typeof PersistedStats>;

/** A connection pauses reading while it holds more than this many max-size bundles in memory. */
const HELD_BUNDLES = 4;
/** After the grace period, how long closing connections get before they are cut. */
const CLOSE_WAIT_MS = 1000;

type Phase = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

interface PendingPut {
  key: string;
  entry: EntryRecord;
  bundleBytes: number;
  t0: number;
}

interface AccessEntry {
  op: string;
  token: string | null;
  key: string | null;
  result: string;
  bytes: number;
  ms: number;
  remote: string;
}

class Connection {
  hello = false;
  bad = 0;
  /** Request ids in progress, puts awaiting their bundle included. */
  readonly active = new Set<number>();
  readonly awaiting = new Map<number, PendingPut>();
  /** Ids of refused puts whose bundle is still to come and must be dropped. */
  readonly discard = new Set<number>();
  /** Requests the server is working on (not waiting on the peer). */
  working = 0;
  heldBytes = 0;
  lastActivity = Date.now();
  idleTimer: NodeJS.Timeout | null = null;
  closing = false;

  constructor(
    readonly ws: WebSocket,
    readonly token: Token,
    readonly remote: string,
  ) {}
}

function remoteOf(socket: Duplex & { remoteAddress?: string; remotePort?: number }): string {
  const a = socket.remoteAddress ?? '?';
  return `${a.includes(':') ? `[${a}]` : a}:${socket.remotePort ?? 0}`;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The request id of a rejected text message, when it carries a usable one. */
function idOf(text: string): number | undefined {
  try {
    const v = (JSON.parse(text) as { id?: unknown } | null)?.id;
    return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The team-cache server: a websocket endpoint (over http or https) in front of a LocalStore.
 * Authentication happens in the HTTP upgrade; each connection then speaks protocol v1
 * (src/protocol/remote.ts). Nothing a peer sends can throw out of a handler: every failure is an
 * `error` message, a counter, and at worst the closing of that one connection.
 */
export class CacheServer {
  readonly options: ResolvedServerOptions;
  /** Resolves when stop() has finished (store closed). */
  readonly stopped: Promise<void>;

  private phase: Phase = 'new';
  private tokens: TokenTable;
  private store: LocalStore | null = null;
  private statsDb: StoreSublevel<PersistedStats> | null = null;
  private server: http.Server | https.Server | null = null;
  private wss: WebSocketServer | null = null;
  private accessLog: WriteStream | null = null;
  private readonly conns = new Set<Connection>();
  /** Upgrades authenticated but not yet handed a websocket. */
  private upgrading = 0;
  /** Store operations and sends in progress; stop() waits for them before closing the store. */
  private readonly work = new Set<Promise<unknown>>();
  private counters = Object.fromEntries(COUNTERS.map((c) => [c, 0])) as Record<CounterName, number>;
  private since = Date.now();
  private storeEvictionsSeen = 0;
  private statsDirty = false;
  private statsWrite: Promise<void> = Promise.resolve();
  private flushTimer: NodeJS.Timeout | null = null;
  private starting: Promise<void> | null = null;
  private stopping: Promise<void> | null = null;
  private resolveStopped!: () => void;
  private boundPort = 0;
  private readonly waiters = new Set<() => void>();

  /** Validates the options (throws ServerOptionsError); start() does the I/O. */
  constructor(options: ServerOptionsInput) {
    this.options = parseServerOptions(options);
    this.tokens = new TokenTable(this.options.tokens);
    this.stopped = new Promise((res) => (this.resolveStopped = res));
  }

  get port(): number {
    return this.boundPort;
  }

  /** ws:// or wss:// URL of the bound address. */
  get url(): string {
    const h = this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host;
    return `${this.options.tls ? 'wss' : 'ws'}://${h}:${this.boundPort}`;
  }

  get limits() {
    return this.options.limits;
  }

  /** Replaces the accepted tokens; open connections keep the scope they were admitted with. */
  setTokens(tokens: Token[]): void {
    this.tokens = new TokenTable(parseTokenList(tokens));
  }

  /**
   * Opens the store (throws StoreLockedError if another process has it), loads the persisted
   * counters, opens the access log and listens. On failure everything opened is closed again.
   */
  start(): Promise<void> {
    if (this.phase !== 'new') return Promise.reject(new Error('CacheServer.start() may be called once'));
    this.phase = 'starting';
    this.starting = this.doStart();
    return this.starting;
  }

  private async doStart(): Promise<void> {
    const o = this.options;
    try {
      await initHash();
      this.store = await LocalStore.open({ dir: o.dir, maxBytes: o.maxBytes });
      await this.loadStats();
      if (o.accessLog) {
        const fd = openSync(o.accessLog, 'a', 0o640);
        this.accessLog = createWriteStream(o.accessLog, { fd });
        this.accessLog.on('error', (e) => {
          o.log.warn('access log write failed; access logging stopped', { error: message(e) });
          this.accessLog = null;
        });
      }
      this.wss = new WebSocketServer({
        noServer: true,
        maxPayload: Math.max(o.limits.maxBundleBytes + 4, o.limits.maxMessageBytes),
        perMessageDeflate: false,
        clientTracking: false,
      });
      const server = o.tls ? https.createServer({ cert: o.tls.cert, key: o.tls.key }) : http.createServer();
      this.server = server;
      server.on('request', (req, res) => this.onRequest(req, res));
      server.on('upgrade', (req, socket, head) => this.onUpgrade(req, socket, head));
      await new Promise<void>((res, rej) => {
        server.once('error', rej);
        server.listen(o.port, o.host, () => {
          server.off('error', rej);
          res();
        });
      });
      server.on('error', (e) => o.log.error('server socket error', { error: message(e) }));
      this.boundPort = (server.address() as AddressInfo).port;
    } catch (e) {
      await this.closeResources();
      this.phase = 'stopped';
      this.resolveStopped();
      throw e;
    }
    this.phase = 'running';
    this.flushTimer = setInterval(() => void this.flushStats(false), o.statsFlushMs);
    this.flushTimer.unref();
    o.log.info('team cache listening', { url: this.url, dir: o.dir, tokens: this.tokens.size });
  }

  /**
   * Graceful stop: stops accepting connections, refuses new requests with `shutting-down`, lets
   * requests in progress finish (puts whose bundle is still arriving included) for up to
   * shutdownGraceMs, closes each connection with 1001 once it is idle, cuts the rest, then
   * persists the counters and closes the store. Idempotent.
   */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  /** The counters plus store figures, as the `stats` message carries them. */
  stats(): ServerStats {
    this.syncEvictions();
    const s = this.store?.summary() ?? { entries: 0, bytes: 0 };
    return {
      entries: s.entries,
      bytes: s.bytes,
      max_bytes: this.options.maxBytes,
      ...this.counters,
      connected_clients: this.conns.size,
      since: new Date(this.since).toISOString(),
    };
  }

  private async doStop(): Promise<void> {
    await this.starting?.catch(() => {});
    if (this.phase !== 'running') {
      this.phase = 'stopped';
      this.resolveStopped();
      return;
    }
    this.phase = 'stopping';
    const o = this.options;
    o.log.info('team cache stopping', { connections: this.conns.size });
    const server = this.server;
    const listenerClosed = server ? new Promise<void>((res) => server.close(() => res())) : Promise.resolve();
    server?.closeIdleConnections();
    for (const c of this.conns) if (c.active.size === 0) this.closeConn(c, CLOSE_CODES.goingAway, 'server shutting down');
    await this.waitFor(() => this.conns.size === 0 && this.upgrading === 0, o.shutdownGraceMs);
    for (const c of this.conns) this.closeConn(c, CLOSE_CODES.goingAway, 'server shutting down');
    await this.waitFor(() => this.conns.size === 0, CLOSE_WAIT_MS);
    for (const c of this.conns) c.ws.terminate();
    server?.closeAllConnections();
    await this.waitFor(() => this.work.size === 0, o.shutdownGraceMs);
    await Promise.race([listenerClosed, new Promise((r) => setTimeout(r, CLOSE_WAIT_MS).unref())]);
    await this.closeResources();
    this.phase = 'stopped';
    o.log.info('team cache stopped');
    this.resolveStopped();
  }

  private async closeResources(): Promise<void> {
    if (this.flushTimer) clearInterval(this.flushTimer);
    this.flushTimer = null;
    if (this.store) {
      await this.flushStats(true).catch((e) => this.options.log.warn('could not persist counters', { error: message(e) }));
      await this.store.close().catch((e) => this.options.log.warn('store close failed', { error: message(e) }));
      this.store = null;
      this.statsDb = null;
    }
    this.wss?.close();
    if (this.server?.listening) await new Promise<void>((res) => this.server!.close(() => res()));
    const log = this.accessLog;
    this.accessLog = null;
    if (log) await new Promise<void>((res) => log.end(() => res()));
  }

  /** Resolves when `done()` holds (re-checked whenever a request or connection ends) or after `ms`. */
  private waitFor(done: () => boolean, ms: number): Promise<void> {
    if (done()) return Promise.resolve();
    return new Promise((res) => {
      const check = () => {
        if (!done()) return;
        finish();
      };
      const finish = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
        res();
      };
      const timer = setTimeout(finish, ms);
      this.waiters.add(check);
    });
  }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }

  // ---- counters -------------------------------------------------------------------------

  private bump(name: CounterName, n = 1): void {
    if (n === 0) return;
    this.counters[name] += n;
    this.statsDirty = true;
  }

  private syncEvictions(): void {
    const seen = this.store?.counters.evictions ?? this.storeEvictionsSeen;
    if (seen > this.storeEvictionsSeen) this.bump('evictions', seen - this.storeEvictionsSeen);
    this.storeEvictionsSeen = seen;
  }

  private async loadStats(): Promise<void> {
    this.statsDb = this.store!.sublevel<PersistedStats>(STATS_SUBLEVEL);
    let raw: unknown;
    try {
      raw = await this.statsDb.get(STATS_KEY);
    } catch (e) {
      this.options.log.warn('persisted counters unreadable; starting from zero', { error: message(e) });
      return;
    }
    const r = PersistedStats.safeParse(raw);
    if (!r.success) {
      if (raw !== undefined) this.options.log.warn('persisted counters invalid; starting from zero');
      return;
    }
    for (const c of COUNTERS) this.counters[c] = r.data.counters[c] ?? 0;
    this.since = r.data.since;
  }

  /** Writes the counters if they changed (or `force`); writes are serialised. */
  private flushStats(force: boolean): Promise<void> {
    this.syncEvictions();
    const db = this.statsDb;
    if (!db || (!this.statsDirty && !force)) return this.statsWrite;
    this.statsDirty = false;
    const value: PersistedStats = { v: 1, counters: { ...this.counters }, since: this.since };
    this.statsWrite = this.statsWrite.then(() =>
      db.put(STATS_KEY, value).catch((e: unknown) => {
        this.statsDirty = true;
        this.options.log.warn('could not persist counters', { error: message(e) });
      }),
    );
    return this.statsWrite;
  }

  private resetStats(): Promise<void> {
    this.syncEvictions();
    for (const c of COUNTERS) this.counters[c] = 0;
    this.since = Date.now();
    return this.flushStats(true);
  }

  // ---- access log -----------------------------------------------------------------------

  private access(e: AccessEntry): void {
    if (!this.accessLog) return;
    const line = { time: new Date().toISOString(), token: e.token, op: e.op, key: e.key, result: e.result, bytes: e.bytes, ms: Math.round(e.ms * 10) / 10, remote: e.remote };
    this.accessLog.write(JSON.stringify(line) + '\n');
  }

  // ---- HTTP -----------------------------------------------------------------------------

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (req.method === 'GET' && req.url === '/healthz') {
      res.writeHead(this.phase === 'running' ? 200 : 503, { 'content-type': 'text/plain' }).end(this.phase === 'running' ? 'ok\n' : 'stopping\n');
      return;
    }
    res.writeHead(426, { 'content-type': 'text/plain', upgrade: 'websocket', connection: 'Upgrade' }).end('ltocache team cache: connect with a websocket client\n');
  }

  private refuseUpgrade(socket: Duplex, status: number, reason: string, extra = ''): void {
    const body = `${reason}\n`;
    socket.end(
      `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\n${extra}Content-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
    setTimeout(() => socket.destroy(), 1000).unref();
  }

  /** Authenticates before the websocket exists: an unauthenticated peer never reaches the protocol. */
  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => {});
    const remote = remoteOf(req.socket);
    const t0 = performance.now();
    if (this.phase !== 'running' || !this.wss) return this.refuseUpgrade(socket, 503, 'Service Unavailable');
    const secret = parseBearer(req.headers.authorization);
    const token = secret === null ? null : this.tokens.authenticate(secret);
    if (!token) {
      this.bump('auth_failures');
      this.access({ op: 'connect', token: null, key: null, result: secret === null ? 'no-token' : 'bad-token', bytes: 0, ms: performance.now() - t0, remote });
      return this.refuseUpgrade(socket, 401, 'Unauthorized', 'WWW-Authenticate: Bearer realm="ltocache"\r\n');
    }
    if (this.conns.size + this.upgrading >= this.options.maxClients) {
      this.access({ op: 'connect', token: token.name, key: null, result: 'too-many-clients', bytes: 0, ms: performance.now() - t0, remote });
      return this.refuseUpgrade(socket, 503, 'Service Unavailable');
    }
    this.upgrading++;
    let handed = false;
    const release = () => {
      if (handed) return;
      handed = true;
      this.upgrading--;
      this.notify();
    };
    socket.once('close', release);
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      release();
      if (this.phase !== 'running') {
        ws.close(CLOSE_CODES.goingAway, 'server shutting down');
        return;
      }
      this.attach(ws, token, remote, socket);
      this.access({ op: 'connect', token: token.name, key: null, result: 'ok', bytes: 0, ms: performance.now() - t0, remote });
    });
  }

  // ---- connections ----------------------------------------------------------------------

  private attach(ws: WebSocket, token: Token, remote: string, socket: Duplex): void {
    const c = new Connection(ws, token, remote);
    this.conns.add(c);
    socket.on('data', () => (c.lastActivity = Date.now()));
    // Lets the kernel notice a vanished peer whose replies are stuck in the send buffer.
    (socket as Partial<Socket>).setKeepAlive?.(true, 60_000);
    ws.on('message', (data: RawData, isBinary: boolean) => {
      c.lastActivity = Date.now();
      try {
        this.onMessage(c, data as Buffer, isBinary);
      } catch (e) {
        this.options.log.error('unexpected error handling a message', { error: message(e), token: token.name, remote });
        this.send(c, { type: 'error', code: 'internal', message: 'internal server error' });
      }
    });
    ws.on('error', (e: Error & { code?: string }) => {
      // ws closes the connection itself (1009 for an oversized message, 1002/1007 for bad frames).
      this.bump('bad_messages');
      this.access({ op: 'invalid', token: token.name, key: null, result: e.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' ? 'too-large' : 'bad-frame', bytes: 0, ms: 0, remote });
    });
    ws.on('close', () => {
      this.conns.delete(c);
      if (c.idleTimer) clearTimeout(c.idleTimer);
      for (const [id, p] of c.awaiting) {
        c.active.delete(id);
        this.access({ op: 'put', token: token.name, key: p.key, result: 'aborted', bytes: 0, ms: performance.now() - p.t0, remote });
      }
      c.awaiting.clear();
      c.discard.clear();
      this.notify();
    });
    this.armIdle(c, this.options.limits.idleTimeoutMs);
  }

  private armIdle(c: Connection, ms: number): void {
    c.idleTimer = setTimeout(() => {
      const idle = this.options.limits.idleTimeoutMs;
      const quiet = Date.now() - c.lastActivity;
      if (c.working > 0 || quiet < idle) return this.armIdle(c, c.working > 0 ? idle : idle - quiet);
      this.closeConn(c, CLOSE_CODES.idle, 'idle timeout');
    }, Math.max(10, ms));
  }

  private closeConn(c: Connection, code: number, reason: string): void {
    if (c.closing) return;
    c.closing = true;
    if (c.idleTimer) clearTimeout(c.idleTimer);
    c.ws.close(code, reason);
  }

  private send(c: Connection, msg: ServerMessage, binary?: Buffer): Promise<void> {
    if (c.ws.readyState !== WebSocket.OPEN) return Promise.resolve();
    const p = new Promise<void>((res) => {
      if (binary) {
        c.ws.send(JSON.stringify(msg));
        c.ws.send(binary, { binary: true }, () => res());
      } else c.ws.send(JSON.stringify(msg), () => res());
    }).then(() => {
      c.lastActivity = Date.now();
    });
    return this.track(p);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.work.add(p);
    p.finally(() => {
      this.work.delete(p);
      this.notify();
    }).catch(() => {});
    return p;
  }

  private hold(c: Connection, bytes: number): void {
    c.heldBytes += bytes;
    const budget = HELD_BUNDLES * this.options.limits.maxBundleBytes;
    if (c.heldBytes > budget && !c.ws.isPaused) c.ws.pause();
    else if (c.heldBytes <= budget && c.ws.isPaused) c.ws.resume();
  }

  /** Counts a bad message; closes the connection after maxBadMessages of them. */
  private bad(c: Connection, id: number | undefined, code: ErrorCode, text: string, op = 'invalid', key: string | null = null): void {
    this.bump('bad_messages');
    c.bad++;
    const usable = id !== undefined && !c.active.has(id) ? id : undefined;
    this.send(c, usable === undefined ? { type: 'error', code, message: text } : { type: 'error', id: usable, code, message: text });
    this.access({ op, token: c.token.name, key, result: code, bytes: 0, ms: 0, remote: c.remote });
    if (c.bad >= this.options.maxBadMessages) this.closeConn(c, CLOSE_CODES.badMessages, 'too many bad messages');
  }

  private begin(c: Connection, id: number): void {
    c.active.add(id);
    c.working++;
  }

  private end(c: Connection, id: number): void {
    c.active.delete(id);
    c.working--;
    c.lastActivity = Date.now();
    if (this.phase === 'stopping' && c.active.size === 0) this.closeConn(c, CLOSE_CODES.goingAway, 'server shutting down');
    this.notify();
  }

  // ---- messages -------------------------------------------------------------------------

  private onMessage(c: Connection, data: Buffer, isBinary: boolean): void {
    if (c.closing) return;
    if (isBinary) return this.onBinary(c, data);
    const max = this.options.limits.maxMessageBytes;
    if (data.length > max) {
      // Not parsed whole; the id and type are read from the start so the sender can match the error.
      const head = data.subarray(0, 256).toString('utf8');
      const id = Number(/"id"\s*:\s*(\d{1,10})[,}\s]/.exec(head)?.[1] ?? NaN);
      const known = Number.isInteger(id) && id <= 0xffffffff && !c.active.has(id) ? id : undefined;
      if (known !== undefined && c.hello && /^\s*\{\s*"type"\s*:\s*"put"/.test(head)) this.discardLater(c, known);
      return this.bad(c, known, 'too-large', `text message of ${data.length} bytes exceeds the limit of ${max}`);
    }
    const text = data.toString('utf8');
    let msg: ClientMessage;
    try {
      msg = parseClientMessage(text);
    } catch (e) {
      return this.bad(c, idOf(text), 'bad-message', message(e));
    }
    if (!c.hello) {
      if (msg.type !== 'hello') return this.bad(c, idOf(text), 'bad-message', `the first message must be hello, got ${msg.type}`);
      if (msg.protocol !== REMOTE_PROTOCOL_VERSION) {
        this.access({ op: 'hello', token: c.token.name, key: null, result: 'version', bytes: 0, ms: 0, remote: c.remote });
        this.send(c, { type: 'error', code: 'version', message: `protocol ${msg.protocol} is not supported; this server speaks ${REMOTE_PROTOCOL_VERSION}` });
        return this.closeConn(c, CLOSE_CODES.version, 'unsupported protocol version');
      }
      c.hello = true;
      this.access({ op: 'hello', token: c.token.name, key: null, result: 'welcome', bytes: 0, ms: 0, remote: c.remote });
      this.send(c, { type: 'welcome', protocol: REMOTE_PROTOCOL_VERSION, scope: c.token.scope, limits: this.options.limits });
      return;
    }
    if (msg.type === 'hello') return this.bad(c, undefined, 'bad-message', 'hello was already received on this connection');
    const id = msg.id;
    if (c.active.has(id)) return this.bad(c, undefined, 'bad-message', `request id ${id} is already in use`, msg.type);
    // A refused put whose bundle never came: the client has moved on and reuses the id.
    c.discard.delete(id);
    const key = msg.type === 'get' || msg.type === 'put' || msg.type === 'bad' ? msg.key : null;
    const op = msg.type === 'admin' ? `admin:${msg.op}` : msg.type;
    const refuse = (code: ErrorCode, text: string, result: string = code) => {
      if (msg.type === 'put') this.discardLater(c, id);
      this.send(c, { type: 'error', id, code, message: text });
      this.access({ op, token: c.token.name, key, result, bytes: 0, ms: 0, remote: c.remote });
    };
    if (this.phase !== 'running') return refuse('shutting-down', 'the server is shutting down');
    if (c.active.size >= this.options.limits.maxStreams) {
      if (msg.type === 'put') this.discardLater(c, id);
      return this.bad(c, id, 'too-many-streams', `more than ${this.options.limits.maxStreams} requests in progress on this connection`, op, key);
    }
    switch (msg.type) {
      case 'get':
        return this.onGet(c, id, msg.key);
      case 'put': {
        if (!scopeAllows(c.token.scope, 'write')) {
          this.bump('puts_refused');
          return refuse('forbidden', `token '${c.token.name}' has ${c.token.scope} scope; put needs write`);
        }
        const lim = this.options.limits;
        if (msg.bundleBytes > lim.maxBundleBytes) {
          this.bump('rejected_bundles');
          return refuse('too-large', `bundle of ${msg.bundleBytes} bytes exceeds the limit of ${lim.maxBundleBytes}`);
        }
        if (msg.entry.outputs.length > lim.maxEntries) {
          this.bump('rejected_bundles');
          return refuse('bad-bundle', `entry declares ${msg.entry.outputs.length} outputs; the limit is ${lim.maxEntries}`);
        }
        c.active.add(id);
        c.awaiting.set(id, { key: msg.key, entry: msg.entry, bundleBytes: msg.bundleBytes, t0: performance.now() });
        return;
      }
      case 'stats':
        this.send(c, { type: 'stats', id, stats: this.stats() });
        this.access({ op, token: c.token.name, key: null, result: 'ok', bytes: 0, ms: 0, remote: c.remote });
        return;
      case 'ping':
        this.send(c, { type: 'pong', id });
        this.access({ op, token: c.token.name, key: null, result: 'ok', bytes: 0, ms: 0, remote: c.remote });
        return;
      case 'admin':
        if (!scopeAllows(c.token.scope, 'admin')) return refuse('forbidden', `token '${c.token.name}' has ${c.token.scope} scope; admin ${msg.op} needs admin`);
        return this.onAdmin(c, id, msg.op, op);
      case 'bad':
        if (!scopeAllows(c.token.scope, 'write')) return refuse('forbidden', `token '${c.token.name}' has ${c.token.scope} scope; bad needs write`);
        return this.onBad(c, id, msg.key, op);
    }
  }

  private discardLater(c: Connection, id: number): void {
    // Bounded: a peer that never sends the bundles only gets unknown-id for them later.
    if (c.discard.size < 4 * this.options.limits.maxStreams) c.discard.add(id);
  }

  private onGet(c: Connection, id: number, key: string): void {
    this.begin(c, id);
    const t0 = performance.now();
    const run = async () => {
      let result = 'miss';
      let bytes = 0;
      try {
        const r = await this.store!.get(key);
        if (r.kind === 'hit') {
          const bundle = await packBundle(r.entry.record, r.entry.files);
          if (bundle.length <= this.options.limits.maxBundleBytes) {
            this.bump('hits');
            this.bump('bytes_served', bundle.length);
            result = 'hit';
            bytes = bundle.length;
            this.hold(c, bundle.length);
            await this.send(c, { type: 'hit', id, key, entry: r.entry.record, bundleBytes: bundle.length }, encodeBinary(id, bundle));
            this.hold(c, -bundle.length);
            return;
          }
          result = 'miss-too-large';
        } else if (r.kind === 'error') {
          if (!r.corrupt) {
            result = 'error';
            this.options.log.warn('store read failed', { key, error: r.error });
            await this.send(c, { type: 'error', id, code: 'internal', message: 'the server could not read its store' });
            return;
          }
          // A corrupt entry has been dropped: for the client it is a miss.
          this.options.log.warn('corrupt entry dropped', { key, error: r.error });
        }
        this.bump('misses');
        await this.send(c, { type: 'miss', id, key });
      } catch (e) {
        result = 'error';
        this.options.log.error('get failed', { key, error: message(e) });
        await this.send(c, { type: 'error', id, code: 'internal', message: 'internal server error' });
      } finally {
        this.access({ op: 'get', token: c.token.name, key, result, bytes, ms: performance.now() - t0, remote: c.remote });
        this.end(c, id);
      }
    };
    void this.track(run());
  }

  private onBinary(c: Connection, data: Buffer): void {
    if (!c.hello) return this.bad(c, undefined, 'bad-message', 'the first message must be hello, got a binary message');
    if (data.length < 4) return this.bad(c, undefined, 'bad-message', 'binary message shorter than its 4-byte request id');
    const { id, bundle } = decodeBinary(data);
    if (c.discard.delete(id)) return;
    const p = c.awaiting.get(id);
    if (!p) return this.bad(c, id, 'unknown-id', `no put with id ${id} is waiting for its bundle`);
    c.awaiting.delete(id);
    c.working++;
    this.bump('bytes_received', bundle.length);
    this.hold(c, bundle.length);
    const run = async () => {
      let result = 'stored';
      try {
        const reject = async (code: ErrorCode, text: string, counter: CounterName = 'rejected_bundles') => {
          result = code;
          this.bump(counter);
          await this.send(c, { type: 'error', id, code, message: text });
        };
        if (bundle.length !== p.bundleBytes) return await reject('bad-bundle', `bundle is ${bundle.length} bytes; the put declared ${p.bundleBytes}`);
        const u = await unpackBundle(p.entry, bundle, this.options.limits);
        if (u.kind === 'rejected') return await reject('bad-bundle', u.reason);
        const r = await this.store!.put(p.key, { record: p.entry, files: u.files });
        if (r.kind === 'refused') return await reject('bad-bundle', r.reason);
        if (r.kind === 'error') {
          result = 'error';
          this.options.log.warn('store write failed', { key: p.key, error: r.error });
          return await this.send(c, { type: 'error', id, code: 'internal', message: 'the server could not write its store' });
        }
        this.bump('puts');
        await this.send(c, { type: 'stored', id, key: p.key });
      } catch (e) {
        result = 'error';
        this.options.log.error('put failed', { key: p.key, error: message(e) });
        await this.send(c, { type: 'error', id, code: 'internal', message: 'internal server error' });
      } finally {
        this.hold(c, -bundle.length);
        this.access({ op: 'put', token: c.token.name, key: p.key, result, bytes: bundle.length, ms: performance.now() - p.t0, remote: c.remote });
        this.end(c, id);
      }
    };
    void this.track(run());
  }

  private onAdmin(c: Connection, id: number, what: 'reset-stats' | 'clear', op: string): void {
    this.begin(c, id);
    const t0 = performance.now();
    const run = async () => {
      let result = 'ok';
      try {
        if (what === 'reset-stats') await this.resetStats();
        else await this.store!.clear();
        this.options.log.info(`admin ${what}`, { token: c.token.name, remote: c.remote });
        await this.send(c, { type: 'ok', id });
      } catch (e) {
        result = 'error';
        this.options.log.error(`admin ${what} failed`, { error: message(e) });
        await this.send(c, { type: 'error', id, code: 'internal', message: `admin ${what} failed` });
      } finally {
        this.access({ op, token: c.token.name, key: null, result, bytes: 0, ms: performance.now() - t0, remote: c.remote });
        this.end(c, id);
      }
    };
    void this.track(run());
  }

  /** A client's verify found the entry wrong: delete it, so no client is served it again. */
  private onBad(c: Connection, id: number, key: string, op: string): void {
    this.begin(c, id);
    const t0 = performance.now();
    const run = async () => {
      let result = 'ok';
      try {
        const r = await this.store!.delete(key);
        if (r.kind === 'error' || r.kind === 'refused') throw new Error(r.kind === 'error' ? r.error : r.reason);
        result = r.kind;
        this.options.log.warn('entry reported bad by a client', { key, result, token: c.token.name, remote: c.remote });
        await this.send(c, { type: 'ok', id });
      } catch (e) {
        result = 'error';
        this.options.log.error('bad report failed', { key, error: message(e) });
        await this.send(c, { type: 'error', id, code: 'internal', message: 'deleting the entry failed' });
      } finally {
        this.access({ op, token: c.token.name, key, result, bytes: 0, ms: performance.now() - t0, remote: c.remote });
        this.end(c, id);
      }
    };
    void this.track(run());
  }
}
