import { performance } from 'node:perf_hooks';
import { type ClientMessage, decodeBinary, type ErrorCode, FEATURE_MULTI_GET, FEATURE_TEAM_MEMOS, parseClientMessage, REMOTE_PROTOCOL_VERSION } from '../../protocol/remote.js';
import { errorMessage } from '../../util/errorMessage.js';
import { scopeAllows } from '../tokens.js';
import type { AccessResult } from './accessLog.js';
import { CLOSE_CODES } from './closeCodes.js';
import type { Connection } from './connection.js';
import { handleAdmin, handleBad, handleBundle, handleGet, handleGets, handleMemo, handleScope } from './requestHandlers.js';
import type { ServerState } from './serverState.js';

/** The request id of a rejected text message, when it carries a usable one. */
function idOf(text: string): number | undefined {
  try {
    const v = (JSON.parse(text) as { id?: unknown } | null)?.id;
    return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Counts a bad message; closes the connection after maxBadMessages of them. */
function bad(s: ServerState, c: Connection, id: number | undefined, code: ErrorCode, text: string, op = 'invalid', key: string | null = null): void {
  s.counters.bump('bad_messages');
  c.bad++;
  const usable = id !== undefined && !c.active.has(id) ? id : undefined;
  s.send(c, usable === undefined ? { type: 'error', code, message: text } : { type: 'error', id: usable, code, message: text });
  s.access({ op, token: c.token.name, key, result: code, bytes: 0, ms: 0, remote: c.remote });
  if (c.bad >= s.options.maxBadMessages) c.close(CLOSE_CODES.badMessages, 'too many bad messages');
}

function discardLater(s: ServerState, c: Connection, id: number): void {
  // Bounded: a peer that never sends the bundles only gets unknown-id for them later.
  if (c.discard.size < 4 * s.options.limits.maxStreams) c.discard.add(id);
}

/**
 * One websocket message of an authenticated connection: the hello handshake, size and stream
 * limits, scope checks, then the request handler. Every rejection is an `error` message.
 */
export function handleMessage(s: ServerState, c: Connection, data: Buffer, isBinary: boolean): void {
  if (c.closing) return;
  if (isBinary) return onBinary(s, c, data);
  const max = s.options.limits.maxMessageBytes;
  if (data.length > max) {
    // Not parsed whole; the id and type are read from the start so the sender can match the error.
    const head = data.subarray(0, 256).toString('utf8');
    const id = Number(/"id"\s*:\s*(\d{1,10})[,}\s]/.exec(head)?.[1] ?? NaN);
    const known = Number.isInteger(id) && id <= 0xffffffff && !c.active.has(id) ? id : undefined;
    if (known !== undefined && c.hello && /^\s*\{\s*"type"\s*:\s*"put"/.test(head)) discardLater(s, c, known);
    return bad(s, c, known, 'too-large', `text message of ${data.length} bytes exceeds the limit of ${max}`);
  }
  const text = data.toString('utf8');
  let msg: ClientMessage;
  try {
    msg = parseClientMessage(text);
  } catch (e) {
    return bad(s, c, idOf(text), 'bad-message', errorMessage(e));
  }
  if (!c.hello) {
    if (msg.type !== 'hello') return bad(s, c, idOf(text), 'bad-message', `the first message must be hello, got ${msg.type}`);
    if (msg.protocol !== REMOTE_PROTOCOL_VERSION) {
      s.access({ op: 'hello', token: c.token.name, key: null, result: 'version', bytes: 0, ms: 0, remote: c.remote });
      s.send(c, { type: 'error', code: 'version', message: `protocol ${msg.protocol} is not supported; this server speaks ${REMOTE_PROTOCOL_VERSION}` });
      return c.close(CLOSE_CODES.version, 'unsupported protocol version');
    }
    c.hello = true;
    s.access({ op: 'hello', token: c.token.name, key: null, result: 'welcome', bytes: 0, ms: 0, remote: c.remote });
    s.send(c, { type: 'welcome', protocol: REMOTE_PROTOCOL_VERSION, scope: c.token.scope, limits: s.options.limits, features: [FEATURE_TEAM_MEMOS, FEATURE_MULTI_GET] });
    return;
  }
  if (msg.type === 'hello') return bad(s, c, undefined, 'bad-message', 'hello was already received on this connection');
  const id = msg.id;
  if (c.active.has(id)) return bad(s, c, undefined, 'bad-message', `request id ${id} is already in use`, msg.type);
  // A refused put whose bundle never came: the client has moved on and reuses the id.
  c.discard.delete(id);
  // The access log's `key` of a team memo request is its scope.
  const key = msg.type === 'get' || msg.type === 'put' || msg.type === 'bad' ? msg.key : msg.type === 'memo' || msg.type === 'scope' ? msg.scope : null;
  const op = msg.type === 'admin' ? `admin:${msg.op}` : msg.type;
  const refuse = (code: ErrorCode, text: string, result: AccessResult = code) => {
    if (msg.type === 'put') discardLater(s, c, id);
    s.send(c, { type: 'error', id, code, message: text });
    s.access({ op, token: c.token.name, key, result, bytes: 0, ms: 0, remote: c.remote });
  };
  if (s.phase !== 'running') return refuse('shutting-down', 'the server is shutting down');
  if (c.active.size >= s.options.limits.maxStreams) {
    if (msg.type === 'put') discardLater(s, c, id);
    return bad(s, c, id, 'too-many-streams', `more than ${s.options.limits.maxStreams} requests in progress on this connection`, op, key);
  }
  switch (msg.type) {
    case 'get':
      return handleGet(s, c, id, msg.key, msg.maxBundleBytes);
    case 'gets':
      return handleGets(s, c, id, msg.keys, msg.maxBundleBytes);
    case 'put': {
      if (!scopeAllows(c.token.scope, 'write')) {
        s.counters.bump('puts_refused');
        return refuse('forbidden', `token '${c.token.name}' has ${c.token.scope} scope; put needs write`);
      }
      const lim = s.options.limits;
      if (msg.bundleBytes > lim.maxBundleBytes) {
        s.counters.bump('rejected_bundles');
        return refuse('too-large', `bundle of ${msg.bundleBytes} bytes exceeds the limit of ${lim.maxBundleBytes}`);
      }
      if (msg.entry.outputs.length > lim.maxEntries) {
        s.counters.bump('rejected_bundles');
        return refuse('bad-bundle', `entry declares ${msg.entry.outputs.length} outputs; the limit is ${lim.maxEntries}`);
      }
      c.active.add(id);
      c.awaiting.set(id, { key: msg.key, entry: msg.entry, bundleBytes: msg.bundleBytes, t0: performance.now() });
      return;
    }
    case 'stats':
      s.send(c, { type: 'stats', id, stats: s.stats() });
      s.access({ op, token: c.token.name, key: null, result: 'ok', bytes: 0, ms: 0, remote: c.remote });
      return;
    case 'ping':
      s.send(c, { type: 'pong', id });
      s.access({ op, token: c.token.name, key: null, result: 'ok', bytes: 0, ms: 0, remote: c.remote });
      return;
    case 'bad':
      if (!scopeAllows(c.token.scope, 'write')) return refuse('forbidden', `token '${c.token.name}' has ${c.token.scope} scope; bad needs write`);
      return handleBad(s, c, id, msg.key, op);
    case 'memo':
      if (!scopeAllows(c.token.scope, 'write')) return refuse('forbidden', `token '${c.token.name}' has ${c.token.scope} scope; memo needs write`);
      return handleMemo(s, c, id, msg.scope, msg.memo, op);
    case 'scope':
      return handleScope(s, c, id, msg.scope, op, msg.maxBundleBytes);
    case 'admin':
      if (!scopeAllows(c.token.scope, 'admin')) return refuse('forbidden', `token '${c.token.name}' has ${c.token.scope} scope; admin ${msg.op} needs admin`);
      return handleAdmin(s, c, id, msg.op, op);
  }
}

/** A binary message: the bundle of a put, framed by its 4-byte request id. */
function onBinary(s: ServerState, c: Connection, data: Buffer): void {
  if (!c.hello) return bad(s, c, undefined, 'bad-message', 'the first message must be hello, got a binary message');
  if (data.length < 4) return bad(s, c, undefined, 'bad-message', 'binary message shorter than its 4-byte request id');
  const { id, bundle } = decodeBinary(data);
  if (c.discard.delete(id)) return;
  const p = c.awaiting.get(id);
  if (!p) return bad(s, c, id, 'unknown-id', `no put with id ${id} is waiting for its bundle`);
  c.awaiting.delete(id);
  handleBundle(s, c, id, p, bundle);
}
