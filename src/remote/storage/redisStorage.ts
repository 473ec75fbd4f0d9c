import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { z } from 'zod';
import { DIGEST_RE, type Digest, hashBytes } from '../../key/hash.js';
import type { DeleteResult, Lookup, PutResult, StoredEntry } from '../../store/backend.js';
import { EntryRecord } from '../../store/record.js';
import { errorMessage } from '../../util/errorMessage.js';
import type { Logger } from '../../util/log.js';
import type { ServerStorage, StorageErrorKind, StorageErrorSink, StorageSummary } from '../server/serverStorage.js';

/** Blobs larger than this are stored as several keys of at most this many bytes. */
export const CHUNK_BYTES = 4 << 20;
/** Every key this cache writes starts with this; `clear` removes these and nothing else. */
export const KEY_PREFIX = 'ltocache:';
/** A storage command that takes longer fails (the request becomes a miss or a failed put). */
const COMMAND_TIMEOUT_MS = 1000;
/**
 * Bound of one storage operation (several commands). A Cluster whose every node is unreachable
 * keeps commands in its own offline queue, where `commandTimeout` does not apply: without this
 * bound a request would never be answered, holding its stream and its bundle.
 */
const OP_TIMEOUT_MS = 3 * COMMAND_TIMEOUT_MS;
const SUMMARY_REFRESH_MS = 5000;
/** summary() older than this starts a refresh (and answers with what it has). */
const SUMMARY_STALE_MS = 1000;

export class StorageUrlError extends Error {
  override name = 'StorageUrlError';
}

export interface RedisTarget {
  mode: 'standalone' | 'cluster';
  tls: boolean;
  nodes: { host: string; port: number }[];
  username?: string;
  password?: string;
  db: number;
}

function hostPort(text: string, url: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:[\]/]+)(?::(\d+))?$/.exec(text);
  const port = m?.[2] === undefined ? 6379 : Number(m[2]);
  if (!m || !(port >= 1 && port <= 65535)) throw new StorageUrlError(`storage URL ${redact(url)}: '${text}' is not HOST[:PORT]`);
  return { host: m[1]!, port };
}

/** The URL with any password replaced by `***`, for logs and errors. */
export function redact(url: string): string {
  return url.replace(/^([a-z+]+:\/\/[^:@/]*:)[^@/]*@/, '$1***@');
}

/**
 * `redis://[USER:PASS@]HOST[:PORT][/DB]`, `rediss://…` (TLS), `redis+cluster://[USER:PASS@]HOST:PORT,HOST:PORT,…`
 * and `rediss+cluster://…`. Throws StorageUrlError (never echoing a password).
 */
export function parseRedisUrl(url: string): RedisTarget {
  const m = /^(redis|rediss|redis\+cluster|rediss\+cluster):\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^/?#]+)(?:\/(\d*))?$/.exec(url);
  if (!m) throw new StorageUrlError(`storage URL ${redact(url)}: expected redis://[USER:PASS@]HOST:PORT[/DB], rediss://… or redis+cluster://HOST:PORT,HOST:PORT,…`);
  const scheme = m[1]!;
  const cluster = scheme.endsWith('+cluster');
  const nodes = m[4]!.split(',').map((h) => hostPort(h, url));
  if (!cluster && nodes.length !== 1) throw new StorageUrlError(`storage URL ${redact(url)}: several hosts need redis+cluster://`);
  const db = m[5] ? Number(m[5]) : 0;
  if (cluster && db !== 0) throw new StorageUrlError(`storage URL ${redact(url)}: a Redis Cluster has only database 0`);
  const dec = (s: string | undefined) => (s ? decodeURIComponent(s) : undefined);
  const username = dec(m[2]);
  const password = dec(m[3]);
  return { mode: cluster ? 'cluster' : 'standalone', tls: scheme.startsWith('rediss'), nodes, db, ...(username ? { username } : {}), ...(password ? { password } : {}) };
}

const entryKey = (key: Digest) => `${KEY_PREFIX}e:${key}`;
/** One hash per scope (field: lookup, value: the team memo); the scope is the hash tag. */
const memoKey = (scope: Digest) => `${KEY_PREFIX}m:{${scope}}`;
/** HSCAN's COUNT hint when a scope holds more memos than one reply may carry. */
const MEMO_SCAN_COUNT = 1000;
/** One key per chunk; the digest is the hash tag, so a blob's chunks share a slot (one MGET reads them all). */
const chunkKeys = (digest: Digest, size: number): string[] => {
  const n = Math.max(1, Math.ceil(size / CHUNK_BYTES));
  return Array.from({ length: n }, (_, i) => `${KEY_PREFIX}b:{${digest}}:${i}`);
};

function unavailable(e: unknown): boolean {
  return /timed? ?out|Connection is closed|ECONNREFUSED|ECONNRESET|EPIPE|CLUSTERDOWN|TRYAGAIN|MaxRetriesPerRequest|Failed to refresh slots|None of startup nodes|offline queue|LOADING|MASTERDOWN|Stream isn't writeable/i.test(
    errorMessage(e),
  );
}

/**
 * Evictions since this process started, from each master's `evicted_keys`: a node's count from
 * its first sighting on, adding what it grew by; one that went down was reset (a restart, or a
 * replica promoted in a failover) and counts again from zero.
 */
export class EvictionCount {
  private readonly seen = new Map<string, number>();
  total = 0;

  update(node: string, evicted: number): void {
    const last = this.seen.get(node);
    if (last !== undefined) this.total += evicted >= last ? evicted - last : evicted;
    this.seen.set(node, evicted);
  }
}

const Info = z.object({ dbsize: z.number(), used: z.number(), max: z.number(), evicted: z.number() });
type Info = z.infer<typeof Info>;

function infoField(text: string, name: string): number {
  const m = new RegExp(`^${name}:(\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

/**
 * Entries in Redis or a Redis Cluster, shared by any number of server processes (no state here
 * beyond connections). Layout: `ltocache:e:KEY` holds the record JSON; `ltocache:b:{DIGEST}:I`
 * holds chunk I of a blob, content-addressed and so shared by every entry with that output.
 * Eviction is Redis's own (maxmemory + allkeys-lru): an evicted blob or record makes the entries
 * using it misses. `ltocache:m:{SCOPE}` is a hash of the scope's team memos by lookup, evicted
 * as a whole.
 */
export class RedisStorage implements ServerStorage {
  readonly kind = 'redis';
  readonly describe: string;
  readonly counters = null;
  private readonly client: Redis | Cluster;
  private readonly target: RedisTarget;
  private info: Info = { dbsize: 0, used: 0, max: 0, evicted: 0 };
  private readonly evictions = new EvictionCount();
  private timer: NodeJS.Timeout | null = null;
  private refreshedAt = 0;
  private refreshing = false;

  private constructor(
    url: string,
    private readonly onError: StorageErrorSink,
    private readonly log: Pick<Logger, 'warn'>,
  ) {
    this.target = parseRedisUrl(url);
    this.describe = redact(url);
    const t = this.target;
    // Auto-pipelining: the commands of concurrent requests issued in one tick share one write.
    const common: RedisOptions = {
      commandTimeout: COMMAND_TIMEOUT_MS,
      connectTimeout: 2000,
      maxRetriesPerRequest: 1,
      ...(t.username ? { username: t.username } : {}),
      ...(t.password ? { password: t.password } : {}),
      ...(t.tls ? { tls: {} } : {}),
    };
    if (t.mode === 'cluster') {
      this.client = new Cluster(t.nodes, {
        redisOptions: common,
        enableAutoPipelining: true,
        scaleReads: 'master',
        retryDelayOnFailover: 100,
        retryDelayOnClusterDown: 100,
        retryDelayOnTryAgain: 100,
        slotsRefreshTimeout: 1000,
        clusterRetryStrategy: (times) => Math.min(100 * times, 2000),
      });
    } else {
      this.client = new Redis({
        ...common,
        enableAutoPipelining: true,
        host: t.nodes[0]!.host,
        port: t.nodes[0]!.port,
        db: t.db,
        retryStrategy: (times) => Math.min(50 * times, 1000),
      });
    }
    // Reconnection is ioredis's job; its errors arrive here and are already failed commands.
    this.client.on('error', () => {});
    (this.client as Cluster).on?.('node error', () => {});
  }

  /** Connects and checks the storage answers; throws (with the password redacted) if it does not. */
  static async open(url: string, onError: StorageErrorSink, log: Pick<Logger, 'warn'>): Promise<RedisStorage> {
    const s = new RedisStorage(url, onError, log);
    const deadline = Date.now() + 10_000;
    let last = '';
    while (Date.now() < deadline) {
      try {
        await s.bounded(() => s.client.ping());
        await s.refresh();
        s.timer = setInterval(() => void s.refresh().catch(() => {}), SUMMARY_REFRESH_MS);
        s.timer.unref();
        return s;
      } catch (e) {
        last = errorMessage(e);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    s.client.disconnect();
    throw new Error(`storage ${s.describe} is not reachable: ${last}`);
  }

  /** `op`'s result, or a rejection (a timeout, counted unavailable) after OP_TIMEOUT_MS; `op` is not cancelled. */
  private bounded<T>(op: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out: no answer from ${this.describe} within ${OP_TIMEOUT_MS} ms`)), OP_TIMEOUT_MS);
    });
    return Promise.race([op(), late]).finally(() => clearTimeout(timer));
  }

  private fail(e: unknown, kind: 'read' | 'write'): StorageErrorKind {
    const k: StorageErrorKind = unavailable(e) ? 'unavailable' : kind;
    this.onError(k);
    return k;
  }

  async get(key: Digest): Promise<Lookup> {
    if (!DIGEST_RE.test(key)) return { kind: 'error', corrupt: false, error: `malformed cache key` };
    try {
      return await this.bounded(() => this.read(key));
    } catch (e) {
      this.fail(e, 'read');
      return { kind: 'error', corrupt: false, error: `redis: ${errorMessage(e)}` };
    }
  }

  private async read(key: Digest): Promise<Lookup> {
    const raw = await this.client.get(entryKey(key));
    if (raw === null) return { kind: 'miss' };
    let record: EntryRecord;
    try {
      record = EntryRecord.parse(JSON.parse(raw));
    } catch (e) {
      return await this.drop(key, 'corrupt_record', `record is invalid: ${errorMessage(e).slice(0, 200)}`, []);
    }
    const distinct = new Map(record.outputs.map((o) => [o.digest, o.size]));
    const read = await Promise.all(
      [...distinct].map(async ([digest, size]) => {
        const keys = chunkKeys(digest, size);
        const parts = await this.client.mgetBuffer(...keys);
        if (parts.some((p) => p === null)) return { digest, keys, problem: 'missing_blob' as const };
        const data = parts.length === 1 ? parts[0]! : Buffer.concat(parts as Buffer[]);
        // Intact (it hashes to its digest) but not the size the record says: the record is what is
        // corrupt, and the blob stays for the other entries that share it.
        if (hashBytes(data) === digest && data.length !== size) return { digest, keys, problem: 'corrupt_record' as const };
        if (data.length !== size || hashBytes(data) !== digest) return { digest, keys, problem: 'corrupt_blob' as const };
        return { digest, keys, data };
      }),
    );
    const bad = read.filter((r) => !('data' in r));
    if (bad.length > 0) {
      const b = bad[0] as { digest: string; problem: 'missing_blob' | 'corrupt_blob' | 'corrupt_record' };
      const corruptKeys = bad.flatMap((r) => ('problem' in r && r.problem === 'corrupt_blob' ? r.keys : []));
      const what = { missing_blob: 'is missing', corrupt_blob: 'is corrupt', corrupt_record: 'has another size than the record says' }[b.problem];
      return await this.drop(key, b.problem, `blob ${b.digest} ${what}`, corruptKeys);
    }
    const byDigest = new Map(read.map((r) => [r.digest, (r as { data: Buffer }).data]));
    return { kind: 'hit', entry: { record, files: new Map(record.outputs.map((o) => [o.name, byDigest.get(o.digest)!])) } };
  }

  /** Counts the problem and deletes the entry (and corrupt blob chunks, so a later put rewrites them). */
  private async drop(key: Digest, kind: StorageErrorKind, why: string, corruptKeys: string[]): Promise<Lookup> {
    this.onError(kind);
    await Promise.all([entryKey(key), ...corruptKeys].map((k) => this.client.del(k))).catch(() => {});
    return { kind: 'error', corrupt: true, error: `redis: entry ${key} dropped: ${why}` };
  }

  async put(key: Digest, entry: StoredEntry): Promise<PutResult> {
    if (!DIGEST_RE.test(key)) return { kind: 'refused', reason: 'malformed cache key' };
    const parsed = EntryRecord.safeParse(entry?.record);
    if (!parsed.success) return { kind: 'refused', reason: `invalid record: ${z.prettifyError(parsed.error)}` };
    const record = parsed.data;
    const blobs = new Map<Digest, Buffer>();
    for (const o of record.outputs) {
      const data = entry.files.get(o.name);
      if (!data) return { kind: 'refused', reason: `output ${o.name} has no file` };
      if (data.length !== o.size) return { kind: 'refused', reason: `output ${o.name} has ${data.length} bytes, record says ${o.size}` };
      if (hashBytes(data) !== o.digest) return { kind: 'refused', reason: `output ${o.name} does not hash to its record digest` };
      blobs.set(o.digest, data);
    }
    try {
      await this.bounded(async () => {
        await Promise.all(
          [...blobs].map(async ([digest, data]) => {
            const keys = chunkKeys(digest, data.length);
            // Deduplicated: a blob whose every chunk is there is not sent again.
            if ((await this.client.exists(...keys)) === keys.length) return;
            await Promise.all(keys.map((k, i) => this.client.set(k, data.subarray(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES))));
          }),
        );
        // Last: the entry becomes visible only once every blob it names is stored.
        await this.client.set(entryKey(key), JSON.stringify(record));
      });
      return { kind: 'stored' };
    } catch (e) {
      this.fail(e, 'write');
      return { kind: 'error', error: `redis: ${errorMessage(e)}` };
    }
  }

  /** Deletes the record; its blobs stay for the other entries sharing them and age out by LRU. */
  async delete(key: Digest): Promise<DeleteResult> {
    if (!DIGEST_RE.test(key)) return { kind: 'refused', reason: 'malformed cache key' };
    try {
      return (await this.bounded(() => this.client.del(entryKey(key)))) > 0 ? { kind: 'deleted' } : { kind: 'absent' };
    } catch (e) {
      this.fail(e, 'write');
      return { kind: 'error', error: `redis: ${errorMessage(e)}` };
    }
  }

  async putMemo(scope: Digest, lookup: Digest, memo: Buffer): Promise<{ kind: 'stored' } | { kind: 'error'; error: string }> {
    if (!DIGEST_RE.test(scope) || !DIGEST_RE.test(lookup)) return { kind: 'error', error: 'malformed scope or lookup' };
    try {
      await this.bounded(() => this.client.hset(memoKey(scope), lookup, memo));
      return { kind: 'stored' };
    } catch (e) {
      this.fail(e, 'write');
      return { kind: 'error', error: `redis: ${errorMessage(e)}` };
    }
  }

  /** In no particular order (a hash keeps none). */
  async scopeMemos(scope: Digest, max: number): Promise<{ kind: 'memos'; memos: Buffer[] } | { kind: 'error'; error: string }> {
    if (!DIGEST_RE.test(scope)) return { kind: 'error', error: 'malformed scope' };
    if (max <= 0) return { kind: 'memos', memos: [] };
    const key = memoKey(scope);
    try {
      return await this.bounded(() => this.memosOf(key, max));
    } catch (e) {
      this.fail(e, 'read');
      return { kind: 'error', error: `redis: ${errorMessage(e)}` };
    }
  }

  private async memosOf(key: string, max: number): Promise<{ kind: 'memos'; memos: Buffer[] }> {
    const n = await this.client.hlen(key);
    if (n === 0) return { kind: 'memos', memos: [] };
    // The hash may grow between HLEN and HGETALL: the slice keeps the bound.
    if (n <= max) return { kind: 'memos', memos: Object.values(await this.client.hgetallBuffer(key)).slice(0, max) };
    // HSCAN may return a field twice: collected by field.
    const got = new Map<string, Buffer>();
    let cursor = '0';
    do {
      const [next, flat] = await this.client.hscanBuffer(key, cursor, 'COUNT', MEMO_SCAN_COUNT);
      cursor = next.toString('latin1');
      for (let i = 0; i + 1 < flat.length && got.size < max; i += 2) got.set(flat[i]!.toString('latin1'), flat[i + 1]!);
    } while (cursor !== '0' && got.size < max);
    return { kind: 'memos', memos: [...got.values()] };
  }

  private masters(): Redis[] {
    return this.client instanceof Cluster ? this.client.nodes('master') : [this.client];
  }

  async clear(): Promise<void> {
    for (const node of this.masters()) {
      let cursor = '0';
      do {
        const [next, keys] = await node.scan(cursor, 'MATCH', `${KEY_PREFIX}*`, 'COUNT', 1000);
        cursor = next;
        // One key per command: on a cluster node, keys of different slots cannot share a command.
        if (keys.length) await Promise.all(keys.map((k) => node.unlink(k)));
      } while (cursor !== '0');
    }
  }

  private async refresh(): Promise<void> {
    const sums = { dbsize: 0, used: 0, max: 0, evicted: 0 };
    for (const node of this.masters()) {
      const [size, text] = await this.bounded(() => Promise.all([node.dbsize(), node.info()]));
      sums.dbsize += size;
      sums.used += infoField(text, 'used_memory');
      sums.max += infoField(text, 'maxmemory');
      sums.evicted += infoField(text, 'evicted_keys');
      this.evictions.update(`${node.options.host}:${node.options.port}`, infoField(text, 'evicted_keys'));
    }
    this.info = sums;
    this.refreshedAt = Date.now();
  }

  summary(): StorageSummary {
    if (Date.now() - this.refreshedAt > SUMMARY_STALE_MS && !this.refreshing) {
      this.refreshing = true;
      void this.refresh()
        .catch(() => {})
        .finally(() => (this.refreshing = false));
    }
    return { entries: this.info.dbsize, bytes: this.info.used, maxBytes: this.info.max, evictions: this.evictions.total };
  }

  async ready(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    try {
      const ping = Promise.all(this.masters().map((n) => n.ping()));
      const ok = await Promise.race([ping.then((r) => r.length > 0), new Promise<boolean>((res) => (timer = setTimeout(() => res(false), timeoutMs)))]);
      return ok;
    } catch (e) {
      this.log.warn('storage not ready', { storage: this.describe, error: errorMessage(e) });
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.bounded(() => this.client.quit()).catch(() => this.client.disconnect());
  }
}
