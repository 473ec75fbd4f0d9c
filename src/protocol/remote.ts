import { z } from 'zod';
import { DIGEST_RE } from '../key/hash.js';
import { EntryRecord } from '../store/record.js';
import { base64Length, GETS_MAX_KEYS, SCOPE_MAX_MEMOS, TEAM_MEMO_MAX_BYTES } from './limits.js';

/**
 * The team-cache wire contract (websocket), version 1. JSON text messages carry control; each
 * bundle travels as one binary message: a u32 LE request id, then the tar bundle bytes.
 * Authentication happens before the upgrade (`Authorization: Bearer <secret>`), so an
 * unauthenticated peer never reaches these messages. Schemas: cache-schema/remote-protocol.v1.json.
 */
export const REMOTE_PROTOCOL_VERSION = 1;
/** What a server announces in `welcome` when it keeps team memos (`memo` and `scope` messages). */
export const FEATURE_TEAM_MEMOS = 'team-memos';
/** What a server announces in `welcome` when it answers `gets` (several entries in one reply). */
export const FEATURE_MULTI_GET = 'multi-get';

const Id = z.number().int().nonnegative().max(0xffffffff);
const Key = z.string().regex(DIGEST_RE, 'key must be 32 lowercase hex digits');
const BundleBytes = z.number().int().nonnegative();

/** The largest bundle the client reads (`get`, `scope`); absent from clients before it. */
const ClientMaxBundle = z.number().int().positive().optional();

export const ClientMessage = z.discriminatedUnion('type', [
  /** First message on a connection: the protocol version the client speaks. */
  z.object({ type: z.literal('hello'), protocol: z.number().int(), client: z.string().max(200) }),
  /**
   * Look an entry up; answered by `hit` (then its bundle), `miss` or `error`. `maxBundleBytes`:
   * the largest bundle the client reads (a daemon's WebSocket refuses larger messages, closing
   * the connection); an entry whose bundle is larger is answered `miss`, as one over the
   * server's own limit is. Servers from before it ignore the field.
   */
  z.object({ type: z.literal('get'), id: Id, key: Key, maxBundleBytes: ClientMaxBundle }),
  /**
   * Look up to GETS_MAX_KEYS entries at once (only to a server announcing `multi-get`): answered
   * by `entries` (then one binary message) or `error`. `maxBundleBytes` bounds that binary
   * message as a whole.
   */
  z.object({ type: z.literal('gets'), id: Id, keys: z.array(Key).min(1).max(GETS_MAX_KEYS), maxBundleBytes: ClientMaxBundle }),
  /** Store an entry; the bundle follows as a binary message with the same id. Needs write scope. */
  z.object({ type: z.literal('put'), id: Id, key: Key, entry: EntryRecord, bundleBytes: BundleBytes }),
  /** The server's counters and store summary. */
  z.object({ type: z.literal('stats'), id: Id }),
  /** Liveness check. */
  z.object({ type: z.literal('ping'), id: Id }),
  /**
   * The client found this entry wrong (a fresh compile of the job differs): delete it. Answered
   * by `ok` (also when absent) or `error` (`forbidden` for a read token). Needs write scope.
   */
  z.object({ type: z.literal('bad'), id: Id, key: Key }),
  /**
   * Share the team memo (src/memo/teamMemo.ts, base64) of an entry this client stored, under the
   * scope of its command. The server validates it and keeps the newest memo per (scope, lookup).
   * Answered by `ok` or `error` (`bad-message` for an invalid memo). Needs write scope.
   */
  z.object({ type: z.literal('memo'), id: Id, scope: Key, memo: z.string().min(1).max(base64Length(TEAM_MEMO_MAX_BYTES)) }),
  /**
   * The team memos of a scope: answered by `memos` (then one binary message) or `error`.
   * `maxBundleBytes` as for `get`: the list stops before that many bytes of payload.
   */
  z.object({ type: z.literal('scope'), id: Id, scope: Key, maxBundleBytes: ClientMaxBundle }),
  /** Administrative operations. Needs admin scope. */
  z.object({ type: z.literal('admin'), id: Id, op: z.enum(['reset-stats', 'clear']) }),
]);
export type ClientMessage = z.infer<typeof ClientMessage>;

export const Scope = z.enum(['read', 'write', 'admin']);
export type Scope = z.infer<typeof Scope>;

export const Limits = z.object({
  maxMessageBytes: z.number().int().positive(),
  maxBundleBytes: z.number().int().positive(),
  maxEntries: z.number().int().positive(),
  maxStreams: z.number().int().positive(),
  idleTimeoutMs: z.number().int().positive(),
});
export type Limits = z.infer<typeof Limits>;

export const ErrorCode = z.enum(['version', 'bad-message', 'forbidden', 'bad-bundle', 'too-large', 'too-many-streams', 'unknown-id', 'internal', 'shutting-down']);
export type ErrorCode = z.infer<typeof ErrorCode>;

export const ServerStats = z.object({
  entries: z.number().int(),
  bytes: z.number().int(),
  max_bytes: z.number().int(),
  hits: z.number().int(),
  misses: z.number().int(),
  puts: z.number().int(),
  puts_refused: z.number().int(),
  rejected_bundles: z.number().int(),
  bad_messages: z.number().int(),
  auth_failures: z.number().int(),
  connected_clients: z.number().int(),
  evictions: z.number().int(),
  bytes_served: z.number().int(),
  bytes_received: z.number().int(),
  memos_stored: z.number().int(),
  memos_served: z.number().int(),
  rejected_memos: z.number().int(),
  since: z.string(),
});
export type ServerStats = z.infer<typeof ServerStats>;

export const ServerMessage = z.discriminatedUnion('type', [
  /**
   * Reply to `hello`: the version spoken, this token's scope, the limits the server enforces and
   * the optional messages it understands (`team-memos`: `memo` and `scope`). A client sends an
   * optional message only to a server that names it: one from before it would count it bad.
   */
  z.object({ type: z.literal('welcome'), protocol: z.number().int(), scope: Scope, limits: Limits, features: z.array(z.string().max(64)).max(64).optional() }),
  /** Entry found; its bundle (bundleBytes long) follows as a binary message with the same id. */
  z.object({ type: z.literal('hit'), id: Id, key: Key, entry: EntryRecord, bundleBytes: BundleBytes }),
  /**
   * Reply to `gets`: every key asked is in exactly one list. `hits`' bundles follow as one binary
   * message with the same id, concatenated in this order (each `bundleBytes` long); `misses` are
   * absent (or corrupt, or over the bundle limit on their own); `later` did not fit in this
   * reply's bundle limit and are to be asked again.
   */
  z.object({
    type: z.literal('entries'),
    id: Id,
    hits: z.array(z.object({ key: Key, entry: EntryRecord, bundleBytes: BundleBytes })).max(GETS_MAX_KEYS),
    misses: z.array(Key).max(GETS_MAX_KEYS),
    later: z.array(Key).max(GETS_MAX_KEYS),
  }),
  /** Entry not found. */
  z.object({ type: z.literal('miss'), id: Id, key: Key }),
  /** A put was verified and stored. */
  z.object({ type: z.literal('stored'), id: Id, key: Key }),
  /** Reply to `stats`. */
  z.object({ type: z.literal('stats'), id: Id, stats: ServerStats }),
  /**
   * Reply to `scope`: `count` team memos (at most SCOPE_MAX_MEMOS) follow as one binary message
   * with the same id, `bundleBytes` long: each a u32 LE length, then the memo. `complete`: true
   * when the list holds every memo the server has for the scope, none left out by the count limit
   * or the bundle limit. A stored value the server does not send because it is empty or over
   * TEAM_MEMO_MAX_BYTES does not make it false (no client would accept it). Absent from servers
   * before it: a client takes such a list as possibly cut, so a command missing from it is not
   * known to lack a team memo.
   */
  z.object({
    type: z.literal('memos'),
    id: Id,
    scope: Key,
    count: z.number().int().nonnegative().max(SCOPE_MAX_MEMOS),
    bundleBytes: BundleBytes,
    complete: z.boolean().optional(),
  }),
  /** Reply to `ping`. */
  z.object({ type: z.literal('pong'), id: Id }),
  /** An admin operation or a `bad` report completed. */
  z.object({ type: z.literal('ok'), id: Id }),
  /** A request failed (`id` present) or the connection is being refused (`id` absent). */
  z.object({ type: z.literal('error'), id: Id.optional(), code: ErrorCode, message: z.string() }),
]);
export type ServerMessage = z.infer<typeof ServerMessage>;

export class RemoteProtocolError extends Error {}

/** Parses a text message into a schema, with one clear error for any malformation. */
function parseText<T>(schema: z.ZodType<T>, data: string, who: string): T {
  let json: unknown;
  try {
    json = JSON.parse(data);
  } catch {
    throw new RemoteProtocolError(`${who}: message is not JSON`);
  }
  const r = schema.safeParse(json);
  if (!r.success) {
    const i = r.error.issues[0];
    throw new RemoteProtocolError(`${who}: invalid message${i ? ` at ${i.path.join('.') || '(root)'}: ${i.message}` : ''}`);
  }
  return r.data;
}

export const parseClientMessage = (data: string): ClientMessage => parseText(ClientMessage, data, 'client');
export const parseServerMessage = (data: string): ServerMessage => parseText(ServerMessage, data, 'server');

/** Binary message: u32 LE request id, then the bundle. */
export function encodeBinary(id: number, bundle: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32LE(id, 0);
  return Buffer.concat([head, bundle]);
}

export function decodeBinary(data: Buffer): { id: number; bundle: Buffer } {
  if (data.length < 4) throw new RemoteProtocolError('binary message shorter than its 4-byte id');
  return { id: data.readUInt32LE(0), bundle: data.subarray(4) };
}

/** The binary message of a `memos` reply: each memo as a u32 LE length, then its bytes. */
export function encodeMemoList(memos: readonly Buffer[]): Buffer {
  const parts: Buffer[] = [];
  for (const m of memos) {
    const head = Buffer.alloc(4);
    head.writeUInt32LE(m.length, 0);
    parts.push(head, m);
  }
  return Buffer.concat(parts);
}

/** Splits a `memos` payload; throws RemoteProtocolError unless it holds exactly `count` memos, each within the limit. */
export function decodeMemoList(data: Buffer, count: number): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  while (at < data.length) {
    if (data.length - at < 4) throw new RemoteProtocolError('memo list: truncated length');
    const n = data.readUInt32LE(at);
    at += 4;
    if (n > TEAM_MEMO_MAX_BYTES || n > data.length - at) throw new RemoteProtocolError(`memo list: memo of ${n} bytes does not fit`);
    out.push(data.subarray(at, at + n));
    at += n;
  }
  if (out.length !== count) throw new RemoteProtocolError(`memo list: ${out.length} memos, ${count} announced`);
  return out;
}

/**
 * Splits the binary message of an `entries` reply into its hits' bundles; throws
 * RemoteProtocolError unless the lengths add up to exactly the payload.
 */
export function splitEntries(data: Buffer, hits: readonly { bundleBytes: number }[]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const h of hits) {
    if (h.bundleBytes > data.length - at) throw new RemoteProtocolError(`entries: bundle of ${h.bundleBytes} bytes does not fit`);
    out.push(data.subarray(at, at + h.bundleBytes));
    at += h.bundleBytes;
  }
  if (at !== data.length) throw new RemoteProtocolError(`entries: ${data.length - at} bytes after the last bundle`);
  return out;
}

/**
 * The largest bundle a daemon reads: its WebSocket refuses any larger message (closing the
 * connection), which bounds what a server, hostile or configured with a larger `maxBundleBytes`,
 * can make it buffer. It neither puts nor asks for a larger bundle.
 */
export const DAEMON_MAX_BUNDLE_BYTES = 64 << 20;

/** Defaults both ends use unless configured otherwise. */
export const DEFAULT_LIMITS: Limits = {
  maxMessageBytes: 1 << 20,
  maxBundleBytes: DAEMON_MAX_BUNDLE_BYTES,
  maxEntries: 16,
  maxStreams: 32,
  idleTimeoutMs: 120_000,
};
