import type { Digest } from '../../key/hash.js';
import type { DeleteResult, Lookup, PutResult, StoredEntry } from '../../store/backend.js';

/**
 * Kinds of storage failure, the `kind` label of `ltocache_server_storage_errors_total`.
 * `unavailable`: the storage could not be reached or did not answer in time. `missing_blob`: an
 * entry names a blob the storage no longer has (evicted, lost). `corrupt_blob`: a blob of the wrong
 * size or digest. `corrupt_record`: an entry record that is not a valid record. `read` / `write`:
 * any other failure of a read or a write.
 */
export const STORAGE_ERROR_KINDS = ['unavailable', 'missing_blob', 'corrupt_blob', 'corrupt_record', 'read', 'write'] as const;
export type StorageErrorKind = (typeof STORAGE_ERROR_KINDS)[number];

export interface StorageSummary {
  /** Entries, or for storages that cannot count them cheaply, keys (entries plus blob chunks). */
  entries: number;
  bytes: number;
  /** The storage's own size bound (0 when it has none). */
  maxBytes: number;
  /** Entries or keys the storage evicted to stay within its bound, since this process started. */
  evictions: number;
}

/** Where the server keeps its counters between restarts; a shared storage has none (each process counts its own). */
export interface CounterPersistence {
  get(): Promise<unknown>;
  put(value: unknown): Promise<void>;
}

/**
 * What the request handlers of `ltocache serve` need from where entries live. None of these
 * throws. Contracts every implementation keeps:
 * - get returns a hit only with every output present and re-checked against its record digest;
 *   a missing or corrupt blob makes the entry a miss (`error` with `corrupt: true`), never a
 *   partial entry, and reports the kind through `onError`;
 * - put makes an entry visible only after all its blobs are stored (blobs first, the record last);
 * - an `error` with `corrupt: false` from get is a failure of the storage itself (unreachable,
 *   timed out), not a statement about the entry.
 */
export interface ServerStorage {
  /** `dir` or `redis`: the `storage` label of the metrics and the start-up log line. */
  readonly kind: 'dir' | 'redis';
  /** Where it is, for logs, with no password in it. */
  readonly describe: string;
  get(key: Digest): Promise<Lookup>;
  put(key: Digest, entry: StoredEntry): Promise<PutResult>;
  delete(key: Digest): Promise<DeleteResult>;
  /** Keeps `memo` as the team memo of (scope, lookup), replacing an older one. */
  putMemo(scope: Digest, lookup: Digest, memo: Buffer): Promise<{ kind: 'stored' } | { kind: 'error'; error: string }>;
  /** The scope's team memos, newest-first where the storage knows the order, at most `max`. */
  scopeMemos(scope: Digest, max: number): Promise<{ kind: 'memos'; memos: Buffer[] } | { kind: 'error'; error: string }>;
  /** Removes every entry, blob and team memo of this cache (nothing else the storage holds). Throws on failure. */
  clear(): Promise<void>;
  /** Cheap: cached figures, refreshed in the background where counting costs a round trip. */
  summary(): StorageSummary;
  /** True when the storage answers now (a PING for Redis); bounded by `timeoutMs`. */
  ready(timeoutMs: number): Promise<boolean>;
  readonly counters: CounterPersistence | null;
  close(): Promise<void>;
}

export type StorageErrorSink = (kind: StorageErrorKind) => void;
