import type { Digest } from '../key/hash.js';
import type { EntryRecord } from './record.js';

/** One cached job: its record plus the output files, by the names the record declares. */
export interface StoredEntry {
  record: EntryRecord;
  files: Map<string, Buffer>;
}

/** A lookup never throws for a miss: a miss is data. `error` carries what went wrong. */
export type Lookup =
  | { kind: 'hit'; entry: StoredEntry }
  | { kind: 'miss' }
  | { kind: 'error'; error: string; corrupt: boolean };

export type PutResult =
  | { kind: 'stored' }
  | { kind: 'refused'; reason: string }
  | { kind: 'error'; error: string };

/** The storage contract both the local store and the team tier implement. */
export interface CacheBackend {
  readonly name: string;
  get(key: Digest): Promise<Lookup>;
  put(key: Digest, entry: StoredEntry): Promise<PutResult>;
  has(key: Digest): Promise<boolean>;
}
