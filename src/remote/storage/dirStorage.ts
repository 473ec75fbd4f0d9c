import type { Digest } from '../../key/hash.js';
import type { DeleteResult, Lookup, PutResult, StoredEntry } from '../../store/backend.js';
import { LocalStore } from '../../store/localStore.js';
import type { CounterPersistence, ServerStorage, StorageErrorSink, StorageSummary } from '../server/serverStorage.js';

const COUNTERS_SUBLEVEL = 'server-stats';
const COUNTERS_KEY = 'counters';

/** `--dir`: one server process owning a LocalStore (its LevelDB lock keeps a second one out). */
export class DirStorage implements ServerStorage {
  readonly kind = 'dir';
  readonly describe: string;
  readonly counters: CounterPersistence;

  private constructor(
    private readonly store: LocalStore,
    private readonly maxBytes: number,
    private readonly onError: StorageErrorSink,
    dir: string,
  ) {
    this.describe = dir;
    const db = store.sublevel<unknown>(COUNTERS_SUBLEVEL);
    this.counters = { get: () => db.get(COUNTERS_KEY), put: (v) => db.put(COUNTERS_KEY, v) };
  }

  /** Throws StoreLockedError when another process has the directory open. */
  static async open(dir: string, maxBytes: number, onError: StorageErrorSink): Promise<DirStorage> {
    return new DirStorage(await LocalStore.open({ dir, maxBytes }), maxBytes, onError, dir);
  }

  async get(key: Digest): Promise<Lookup> {
    const c = this.store.counters;
    const blobs = c.corruptBlobs;
    const records = c.corruptRecords;
    const r = await this.store.get(key);
    if (r.kind === 'error') {
      if (c.corruptBlobs > blobs) this.onError(/ is missing/.test(r.error) ? 'missing_blob' : 'corrupt_blob');
      else if (c.corruptRecords > records) this.onError('corrupt_record');
      else this.onError('read');
    }
    return r;
  }

  async put(key: Digest, entry: StoredEntry): Promise<PutResult> {
    const r = await this.store.put(key, entry);
    if (r.kind === 'error') this.onError('write');
    return r;
  }

  async delete(key: Digest): Promise<DeleteResult> {
    const r = await this.store.delete(key);
    if (r.kind === 'error') this.onError('write');
    return r;
  }

  clear(): Promise<void> {
    return this.store.clear();
  }

  summary(): StorageSummary {
    const s = this.store.summary();
    return { entries: s.entries, bytes: s.bytes, maxBytes: this.maxBytes, evictions: this.store.counters.evictions };
  }

  async ready(): Promise<boolean> {
    return true;
  }

  close(): Promise<void> {
    return this.store.close();
  }
}
