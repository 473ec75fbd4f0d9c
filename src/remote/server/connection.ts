import type { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import type { EntryRecord } from '../../store/record.js';
import type { Token } from '../tokens.js';
import { CLOSE_CODES } from './closeCodes.js';

/** A put whose bundle is still to come. */
export interface PendingPut {
  key: string;
  entry: EntryRecord;
  bundleBytes: number;
  t0: number;
}

/** One authenticated websocket and the requests in progress on it. */
export class Connection {
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

  /** Closes once; later calls are no-ops. */
  close(code: number, reason: string): void {
    if (this.closing) return;
    this.closing = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.ws.close(code, reason);
  }

  /**
   * Closes the connection after `idleMs` with no message and no request being worked on; and one
   * whose peer reads nothing: `idleMs` with no message from it, no answer of ours flushed to the
   * socket, and answers waiting to go out (they hold their bundles until then).
   */
  armIdle(idleMs: number, ms = idleMs): void {
    this.idleTimer = setTimeout(
      () => {
        const quiet = Date.now() - this.lastActivity;
        if (quiet >= idleMs && this.working > 0 && this.ws.bufferedAmount > 0) {
          this.close(CLOSE_CODES.idle, 'peer reads nothing');
          // The close frame cannot go out either.
          this.ws.terminate();
          return;
        }
        if (this.working > 0 || quiet < idleMs) return this.armIdle(idleMs, this.working > 0 ? idleMs : idleMs - quiet);
        this.close(CLOSE_CODES.idle, 'idle timeout');
      },
      Math.max(10, ms),
    );
  }

  /** Accounts bundle bytes held in memory; reading pauses while they exceed `budget`. */
  hold(bytes: number, budget: number): void {
    this.heldBytes += bytes;
    if (this.heldBytes > budget && !this.ws.isPaused) this.ws.pause();
    else if (this.heldBytes <= budget && this.ws.isPaused) this.ws.resume();
  }
}

/** `host:port` of the peer, IPv6 hosts bracketed. */
export function remoteOf(socket: Duplex & { remoteAddress?: string; remotePort?: number }): string {
  const a = socket.remoteAddress ?? '?';
  return `${a.includes(':') ? `[${a}]` : a}:${socket.remotePort ?? 0}`;
}
