import { WebSocket, type WebSocketServer } from 'ws';
import type { ServerMessage, ServerStats } from '../../protocol/remote.js';
import { corkForTick, socketOf } from '../../util/corkForTick.js';
import type { ResolvedServerOptions } from '../serverOptions.js';
import type { TokenTable } from '../tokens.js';
import type { AccessEntry, AccessLog } from './accessLog.js';
import type { Connection } from './connection.js';
import { ServerCounters } from './serverCounters.js';
import { ServerMetrics } from './serverMetrics.js';
import type { ServerStorage } from './serverStorage.js';

export type Phase = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

/** A connection pauses reading while it holds more than this many max-size bundles in memory. */
const HELD_BUNDLES = 4;

/**
 * What the connection and request handlers share with the server's lifecycle: the phase, the
 * store, the connections, the work in progress (stop() waits for it) and the counters.
 */
export class ServerState {
  phase: Phase = 'new';
  store: ServerStorage | null = null;
  wss: WebSocketServer | null = null;
  accessLog: AccessLog | null = null;
  readonly counters: ServerCounters;
  readonly metrics: ServerMetrics;
  readonly conns = new Set<Connection>();
  /** Upgrades authenticated but not yet handed a websocket. */
  upgrading = 0;
  /** Store operations and sends in progress; stop() waits for them before closing the store. */
  readonly work = new Set<Promise<unknown>>();
  private readonly waiters = new Set<() => void>();

  constructor(
    readonly options: ResolvedServerOptions,
    public tokens: TokenTable,
  ) {
    this.metrics = new ServerMetrics(
      () => (options.storage ? 'redis' : 'dir'),
      () => this.conns.size,
      () => this.store?.summary() ?? null,
    );
    this.counters = new ServerCounters(options.log, (name, n) => this.metrics.event(name, n));
  }

  /** Logs a request or connection attempt and counts it in the metrics. */
  access(e: AccessEntry): void {
    this.metrics.request(e.op, e.result, e.ms);
    this.accessLog?.write(e);
  }

  /** The counters plus store figures, as the `stats` message carries them. */
  stats(): ServerStats {
    this.counters.syncEvictions();
    const s = this.store?.summary() ?? { entries: 0, bytes: 0, maxBytes: this.options.maxBytes };
    return {
      entries: s.entries,
      bytes: s.bytes,
      max_bytes: s.maxBytes,
      ...this.counters.values,
      connected_clients: this.conns.size,
      since: new Date(this.counters.since).toISOString(),
    };
  }

  /** Sends a text message, then `binary` when given; resolves once written (or at once if the socket is not open). */
  send(c: Connection, msg: ServerMessage, binary?: Buffer): Promise<void> {
    if (c.ws.readyState !== WebSocket.OPEN) return Promise.resolve();
    const p = new Promise<void>((res) => {
      corkForTick(socketOf(c.ws));
      if (binary) {
        c.ws.send(JSON.stringify(msg));
        c.ws.send(binary, { binary: true }, () => res());
      } else c.ws.send(JSON.stringify(msg), () => res());
    }).then(() => {
      c.lastActivity = Date.now();
    });
    return this.track(p);
  }

  track<T>(p: Promise<T>): Promise<T> {
    this.work.add(p);
    p.finally(() => {
      this.work.delete(p);
      this.notify();
    }).catch(() => {});
    return p;
  }

  hold(c: Connection, bytes: number): void {
    c.hold(bytes, HELD_BUNDLES * this.options.limits.maxBundleBytes);
  }

  /** Resolves when `done()` holds (re-checked whenever a request or connection ends) or after `ms`. */
  waitFor(done: () => boolean, ms: number): Promise<void> {
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

  notify(): void {
    for (const w of [...this.waiters]) w();
  }
}
