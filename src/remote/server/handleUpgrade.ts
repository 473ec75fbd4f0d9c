import type * as http from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import type { RawData, WebSocket } from 'ws';
import { errorMessage } from '../../util/errorMessage.js';
import { parseBearer, type Token } from '../tokens.js';
import { CLOSE_CODES } from './closeCodes.js';
import { Connection, remoteOf } from './connection.js';
import { handleMessage } from './handleMessage.js';
import type { ServerState } from './serverState.js';

/** How long `/readyz` waits for the storage to answer. */
const READY_TIMEOUT_MS = 1000;

/**
 * Plain HTTP, unauthenticated (nothing here names a key or a token): `GET /healthz` (200 while
 * running, else 503), `GET /readyz` (200 when running and the storage answers, else 503),
 * `GET /metrics` (Prometheus text); anything else is told to upgrade.
 */
export function handleHttpRequest(s: ServerState, req: http.IncomingMessage, res: http.ServerResponse): void {
  const path = (req.url ?? '').split('?')[0];
  if (req.method === 'GET' && path === '/healthz') {
    res.writeHead(s.phase === 'running' ? 200 : 503, { 'content-type': 'text/plain' }).end(s.phase === 'running' ? 'ok\n' : 'stopping\n');
    return;
  }
  if (req.method === 'GET' && path === '/readyz') {
    const store = s.store;
    if (s.phase !== 'running' || !store) {
      res.writeHead(503, { 'content-type': 'text/plain' }).end('not running\n');
      return;
    }
    void store.ready(READY_TIMEOUT_MS).then(
      (ok) => res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ready\n' : 'storage unreachable\n'),
      () => res.writeHead(503, { 'content-type': 'text/plain' }).end('storage unreachable\n'),
    );
    return;
  }
  if (req.method === 'GET' && path === '/metrics') {
    s.counters.syncEvictions();
    void s.metrics.text().then(
      (text) => res.writeHead(200, { 'content-type': s.metrics.contentType }).end(text),
      (e) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${errorMessage(e)}\n`),
    );
    return;
  }
  res.writeHead(426, { 'content-type': 'text/plain', upgrade: 'websocket', connection: 'Upgrade' }).end('ltocache team cache: connect with a websocket client\n');
}

function refuseUpgrade(socket: Duplex, status: number, reason: string, extra = ''): void {
  const body = `${reason}\n`;
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\n${extra}Content-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  setTimeout(() => socket.destroy(), 1000).unref();
}

/** Authenticates before the websocket exists: an unauthenticated peer never reaches the protocol. */
export function handleUpgrade(s: ServerState, req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
  socket.on('error', () => {});
  const remote = remoteOf(req.socket);
  const t0 = performance.now();
  const wss = s.wss;
  if (s.phase !== 'running' || !wss) return refuseUpgrade(socket, 503, 'Service Unavailable');
  const secret = parseBearer(req.headers.authorization);
  const token = secret === null ? null : s.tokens.authenticate(secret);
  if (!token) {
    s.counters.bump('auth_failures');
    s.access({ op: 'connect', token: null, key: null, result: secret === null ? 'no-token' : 'bad-token', bytes: 0, ms: performance.now() - t0, remote });
    return refuseUpgrade(socket, 401, 'Unauthorized', 'WWW-Authenticate: Bearer realm="ltocache"\r\n');
  }
  if (s.conns.size + s.upgrading >= s.options.maxClients) {
    s.access({ op: 'connect', token: token.name, key: null, result: 'too-many-clients', bytes: 0, ms: performance.now() - t0, remote });
    return refuseUpgrade(socket, 503, 'Service Unavailable');
  }
  s.upgrading++;
  let handed = false;
  const release = () => {
    if (handed) return;
    handed = true;
    s.upgrading--;
    s.notify();
  };
  socket.once('close', release);
  wss.handleUpgrade(req, socket, head, (ws) => {
    release();
    if (s.phase !== 'running') {
      ws.close(CLOSE_CODES.goingAway, 'server shutting down');
      return;
    }
    attach(s, ws, token, remote, socket);
    s.access({ op: 'connect', token: token.name, key: null, result: 'ok', bytes: 0, ms: performance.now() - t0, remote });
  });
}

function attach(s: ServerState, ws: WebSocket, token: Token, remote: string, socket: Duplex): void {
  const c = new Connection(ws, token, remote);
  s.conns.add(c);
  socket.on('data', () => (c.lastActivity = Date.now()));
  // Lets the kernel notice a vanished peer whose replies are stuck in the send buffer.
  (socket as Partial<Socket>).setKeepAlive?.(true, 60_000);
  ws.on('message', (data: RawData, isBinary: boolean) => {
    c.lastActivity = Date.now();
    try {
      handleMessage(s, c, data as Buffer, isBinary);
    } catch (e) {
      s.options.log.error('unexpected error handling a message', { error: errorMessage(e), token: token.name, remote });
      s.send(c, { type: 'error', code: 'internal', message: 'internal server error' });
    }
  });
  ws.on('error', (e: Error & { code?: string }) => {
    // ws closes the connection itself (1009 for an oversized message, 1002/1007 for bad frames).
    s.counters.bump('bad_messages');
    s.access({ op: 'invalid', token: token.name, key: null, result: e.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' ? 'too-large' : 'bad-frame', bytes: 0, ms: 0, remote });
  });
  ws.on('close', () => {
    s.conns.delete(c);
    if (c.idleTimer) clearTimeout(c.idleTimer);
    for (const [id, p] of c.awaiting) {
      c.active.delete(id);
      s.access({ op: 'put', token: token.name, key: p.key, result: 'aborted', bytes: 0, ms: performance.now() - p.t0, remote });
    }
    c.awaiting.clear();
    c.discard.clear();
    s.notify();
  });
  c.armIdle(s.options.limits.idleTimeoutMs);
}
