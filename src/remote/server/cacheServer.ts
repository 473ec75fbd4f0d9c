import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import { initHash } from '../../key/hash.js';
import type { ServerStats } from '../../protocol/remote.js';
import { errorMessage } from '../../util/errorMessage.js';
import { parseServerOptions, parseTokenList, type ResolvedServerOptions, type ServerOptionsInput } from '../serverOptions.js';
import { openStorage } from '../storage/openStorage.js';
import { type Token, TokenTable } from '../tokens.js';
import { AccessLog } from './accessLog.js';
import { CLOSE_CODES } from './closeCodes.js';
import { handleHttpRequest, handleUpgrade } from './handleUpgrade.js';
import { ServerState } from './serverState.js';

/** After the grace period, how long closing connections get before they are cut. */
const CLOSE_WAIT_MS = 1000;

/**
 * The team-cache server: a websocket endpoint (over http or https) in front of a ServerStorage
 * (a `--dir` LocalStore, or Redis shared with other server processes).
 * Authentication happens in the HTTP upgrade; each connection then speaks protocol v1
 * (src/protocol/remote.ts). Nothing a peer sends can throw out of a handler: every failure is an
 * `error` message, a counter, and at worst the closing of that one connection.
 */
export class CacheServer {
  readonly options: ResolvedServerOptions;
  /** Resolves when stop() has finished (store closed). */
  readonly stopped: Promise<void>;

  private readonly s: ServerState;
  private server: http.Server | https.Server | null = null;
  private flushTimer: NodeJS.Timeout | null = null;
  private starting: Promise<void> | null = null;
  private stopping: Promise<void> | null = null;
  private resolveStopped!: () => void;
  private boundPort = 0;

  /** Validates the options (throws ServerOptionsError); start() does the I/O. */
  constructor(options: ServerOptionsInput) {
    this.options = parseServerOptions(options);
    this.s = new ServerState(this.options, new TokenTable(this.options.tokens));
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
    this.s.tokens = new TokenTable(parseTokenList(tokens));
  }

  /**
   * Opens the storage (throws StoreLockedError if another process has the directory, or an Error
   * when Redis does not answer), loads the persisted
   * counters, opens the access log and listens. On failure everything opened is closed again.
   */
  start(): Promise<void> {
    if (this.s.phase !== 'new') return Promise.reject(new Error('CacheServer.start() may be called once'));
    this.s.phase = 'starting';
    this.starting = this.doStart();
    return this.starting;
  }

  private async doStart(): Promise<void> {
    const o = this.options;
    const s = this.s;
    try {
      await initHash();
      s.store = await openStorage(o, (kind) => s.metrics.storageError(kind), o.log);
      await s.counters.load(s.store);
      s.accessLog = new AccessLog(o.accessLog, o.log);
      s.wss = new WebSocketServer({
        noServer: true,
        maxPayload: Math.max(o.limits.maxBundleBytes + 4, o.limits.maxMessageBytes),
        perMessageDeflate: false,
        clientTracking: false,
      });
      const server = o.tls ? https.createServer({ cert: o.tls.cert, key: o.tls.key }) : http.createServer();
      this.server = server;
      server.on('request', (req, res) => handleHttpRequest(s, req, res));
      server.on('upgrade', (req, socket, head) => handleUpgrade(s, req, socket, head));
      await new Promise<void>((res, rej) => {
        server.once('error', rej);
        server.listen(o.port, o.host, () => {
          server.off('error', rej);
          res();
        });
      });
      server.on('error', (e) => o.log.error('server socket error', { error: errorMessage(e) }));
      this.boundPort = (server.address() as AddressInfo).port;
    } catch (e) {
      await this.closeResources();
      s.phase = 'stopped';
      this.resolveStopped();
      throw e;
    }
    s.phase = 'running';
    this.flushTimer = setInterval(() => void s.counters.flush(false), o.statsFlushMs);
    this.flushTimer.unref();
    o.log.info('team cache listening', { url: this.url, storage: s.store!.kind, at: s.store!.describe, tokens: s.tokens.size });
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
    return this.s.stats();
  }

  private async doStop(): Promise<void> {
    await this.starting?.catch(() => {});
    const s = this.s;
    if (s.phase !== 'running') {
      s.phase = 'stopped';
      this.resolveStopped();
      return;
    }
    s.phase = 'stopping';
    const o = this.options;
    o.log.info('team cache stopping', { connections: s.conns.size });
    const server = this.server;
    const listenerClosed = server ? new Promise<void>((res) => server.close(() => res())) : Promise.resolve();
    server?.closeIdleConnections();
    for (const c of s.conns) if (c.active.size === 0) c.close(CLOSE_CODES.goingAway, 'server shutting down');
    await s.waitFor(() => s.conns.size === 0 && s.upgrading === 0, o.shutdownGraceMs);
    for (const c of s.conns) c.close(CLOSE_CODES.goingAway, 'server shutting down');
    await s.waitFor(() => s.conns.size === 0, CLOSE_WAIT_MS);
    for (const c of s.conns) c.ws.terminate();
    server?.closeAllConnections();
    await s.waitFor(() => s.work.size === 0, o.shutdownGraceMs);
    await Promise.race([listenerClosed, new Promise((r) => setTimeout(r, CLOSE_WAIT_MS).unref())]);
    await this.closeResources();
    s.phase = 'stopped';
    o.log.info('team cache stopped');
    this.resolveStopped();
  }

  private async closeResources(): Promise<void> {
    const s = this.s;
    if (this.flushTimer) clearInterval(this.flushTimer);
    this.flushTimer = null;
    if (s.store) {
      await s.counters.flush(true).catch((e) => this.options.log.warn('could not persist counters', { error: errorMessage(e) }));
      await s.store.close().catch((e) => this.options.log.warn('store close failed', { error: errorMessage(e) }));
      s.store = null;
      s.counters.detach();
    }
    s.wss?.close();
    if (this.server?.listening) await new Promise<void>((res) => this.server!.close(() => res()));
    const log = s.accessLog;
    s.accessLog = null;
    if (log) await log.close();
  }
}
