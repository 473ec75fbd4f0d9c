import type { Digest } from '../key/hash.js';
import type { EntryRecord } from './record.js';

/** One cached job: its record plus the output files, by the names the record declares. */
export interface StoredEntry {
  record: EntryRecord;
  files: Map<string, Buffer>;
}

/** A lookup never throws for a miss: a miss is data. `error` carries what went wrong. */
export type Lookup = { kind: 'hit'; entry: StoredEntry } | { kind: 'miss' } | { kind: 'error'; error: string; corrupt: boolean };

export type PutResult = { kind: 'stored' } | { kind: 'refused'; reason: string } | { kind: 'error'; error: string };

export type DeleteResult = { kind: 'deleted' } | { kind: 'absent' } | { kind: 'refused'; reason: string } | { kind: 'error'; error: string };

/**
 * A scope's team memos as the team cache sent them. `complete`: the list holds every memo the
 * cache has for the scope; false when it left some out (a limit) or did not say.
 */
export interface ScopeMemoList {
  memos: Buffer[];
  complete: boolean;
}

export interface PutOptions {
  /**
   * The caller has just checked every file against its record digest (a team-tier hit, verified
   * on arrival): the store may skip hashing them again. Sizes and names are still checked.
   */
  verified?: boolean;
  /**
   * The record is the output of the EntryRecord schema (a team-tier hit parsed on arrival): the
   * store need not validate it again. Names, sizes and the size budget are still checked.
   */
  parsed?: boolean;
}

export interface AdoptOptions {
  /** The entry came from a farther tier (a team-cache hit): adopt it in the nearest tier only. */
  nearestOnly?: boolean;
}

export interface GetOptions {
  /**
   * A composition that copies a hit from a farther tier into a nearer one (tiered) leaves that
   * copy to the caller, which either adopts the entry itself or calls `writeBack`.
   */
  deferWriteBack?: boolean;
  /** Only the nearest tier is asked (a composition that has several). */
  nearestOnly?: boolean;
  /** Fetched ahead of the job that will use it, which may never come: a composition reports the get as `deferred`. */
  ahead?: boolean;
}

/** The storage contract both the local store and the team tier implement. None of these throws. */
export interface CacheBackend {
  readonly name: string;
  get(key: Digest, options?: GetOptions): Promise<Lookup>;
  /** The copy a `deferWriteBack` get left out: the entry into the nearest tier only. */
  writeBack?(key: Digest, entry: StoredEntry): Promise<void>;
  put(key: Digest, entry: StoredEntry, options?: PutOptions): Promise<PutResult>;
  /** Removes the entry, so that no later get serves it. */
  delete(key: Digest): Promise<DeleteResult>;
  /**
   * Records an access for eviction order (a hit served without calling get, e.g. from memory).
   * Cheap: an implementation may rate-limit or batch it, or ignore it when it has no LRU.
   */
  touch(key: Digest): Promise<void>;
  /**
   * Stores an entry whose blob files a trusted writer (the native client, after 'S') already put
   * in the local store's blob directory, content-addressed by the digests in `record`. Refused
   * when a blob is not there with its size. Absent where no such directory exists.
   */
  adopt?(key: Digest, record: EntryRecord, options?: AdoptOptions): Promise<PutResult>;
  /**
   * Shares the team memo (src/memo/teamMemo.ts) of an entry just put, after that put. Best
   * effort; absent on a tier that keeps no team memos.
   */
  shareMemo?(scope: Digest, memo: Buffer): Promise<void>;
  /** The team memos shared under a scope; null when the tier could not answer. */
  scopeMemos?(scope: Digest): Promise<ScopeMemoList | null>;
}
