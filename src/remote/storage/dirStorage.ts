import { DIGEST_RE, type Digest } from '../../key/hash.js';
import type { DeleteResult, Lookup, PutResult, StoredEntry } from '../../store/backend.js';
import { LocalStore, type StoreSublevel } from '../../store/localStore.js';
import type { CounterPersistence, ServerStorage, StorageErrorSink, StorageSummary } from '../server/serverStorage.js';

const COUNTERS_SUBLEVEL = 'server-stats';
const COUNTERS_KEY = 'counters';
/** Team memos, keyed `SCOPE` + `LOOKUP` (64 hex digits), so a scope's memos are one key range. */
const MEMOS_SUBLEVEL = 'team-memos';
/** The sublevel's own encoding is JSON; team memos are stored as their bytes. */
const BINARY = { valueEncoding: 'buffer' } as const;

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** `--dir`: one server process owning a LocalStore (its LevelDB lock keeps a second one out). */
export class DirStorage implements ServerStorage {
  readonly kind = 'dir';
  readonly describe: string;
  readonly counters: CounterPersistence;
  private readonly memos: StoreSublevel<Buffer>;

  private constructor(
    private readonly store: LocalStore,
    private readonly maxBytes: number,
    private readonly onError: StorageErrorSink,
    dir: string,
  ) {
    this.describe = dir;
    const db = store.sublevel<unknown>(COUNTERS_SUBLEVEL);
    this.counters = { get: () => db.get(COUNTERS_KEY), put: (v) => db.put(COUNTERS_KEY, v) };
    this.memos = store.sublevel<Buffer>(MEMOS_SUBLEVEL);
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

  async putMemo(scope: Digest, lookup: Digest, memo: Buffer): Promise<{ kind: 'stored' } | { kind: 'error'; error: string }> {
    if (!DIGEST_RE.test(scope) || !DIGEST_RE.test(lookup)) return { kind: 'error', error: 'malformed scope or lookup' };
    try {
      await this.memos.put(`${scope}${lookup}`, memo, BINARY);
      return { kind: 'stored' };
    } catch (e) {
      this.onError('write');
      return { kind: 'error', error: `local store: ${message(e)}` };
    }
  }

  /** In lookup order: LevelDB keeps no time order of the scope's memos. */
  async scopeMemos(scope: Digest, max: number): Promise<{ kind: 'memos'; memos: Buffer[] } | { kind: 'error'; error: string }> {
    if (!DIGEST_RE.test(scope)) return { kind: 'error', error: 'malformed scope' };
    if (max <= 0) return { kind: 'memos', memos: [] };
    try {
      const memos = await this.memos.values({ gte: scope, lt: `${scope}g`, limit: max, ...BINARY }).all();
      return { kind: 'memos', memos: memos as Buffer[] };
    } catch (e) {
      this.onError('read');
      return { kind: 'error', error: `local store: ${message(e)}` };
    }
  }

  /** The store keeps the sublevels it handed out, so the team memos are cleared here. */
  async clear(): Promise<void> {
    await this.store.clear();
    await this.memos.clear();
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
