import { DIGEST_RE, type Digest } from '../../key/hash.js';
import type { DeleteResult, Lookup, PutResult, StoredEntry } from '../../store/backend.js';
import { LocalStore, type StoreSublevel } from '../../store/localStore.js';
import { errorMessage } from '../../util/errorMessage.js';
import type { CounterPersistence, ServerStorage, StorageErrorSink, StorageSummary } from '../server/serverStorage.js';

const COUNTERS_SUBLEVEL = 'server-stats';
const COUNTERS_KEY = 'counters';
/** Team memos, keyed `SCOPE` + `LOOKUP` (64 hex digits), so a scope's memos are one key range. */
const MEMOS_SUBLEVEL = 'team-memos';
/** The sublevel's own encoding is JSON; team memos are stored as their bytes. */
const BINARY = { valueEncoding: 'buffer' } as const;
/** Per scope, as text "AT BYTES": when it was last written or read (ms) and the bytes of its memos. */
const MEMO_SCOPES_SUBLEVEL = 'team-memo-scopes';
const TEXT = { valueEncoding: 'utf8' } as const;
/** Team memos take at most this share of `--max-size` on top of the entries; past it, the scopes
 * least recently written or read go whole (a scope without its memos only costs keying). */
export const MEMO_BUDGET_SHARE = 1 / 8;
/** The memo budget of a small store. */
const MEMO_BUDGET_MIN = 4 << 20;

interface ScopeUse {
  at: number;
  bytes: number;
}

/** A parsed number that is a count, or 0 (NaN, negative, infinite). */
function countOrZero(n: number | undefined): number {
  return n !== undefined && Number.isFinite(n) && n > 0 ? n : 0;
}

/** `--dir`: one server process owning a LocalStore (its LevelDB lock keeps a second one out). */
export class DirStorage implements ServerStorage {
  readonly kind = 'dir';
  readonly describe: string;
  readonly counters: CounterPersistence;
  private readonly memos: StoreSublevel<Buffer>;
  private readonly scopes: StoreSublevel<string>;
  /** Every scope holding memos, loaded at open. */
  private readonly scopeUse = new Map<Digest, ScopeUse>();
  private memoBytes = 0;
  /** Memo writes and scope evictions, one at a time: each reads and adjusts the accounting. */
  private memoQueue: Promise<unknown> = Promise.resolve();

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
    this.scopes = store.sublevel<string>(MEMO_SCOPES_SUBLEVEL);
  }

  /** Throws StoreLockedError when another process has the directory open. */
  static async open(dir: string, maxBytes: number, onError: StorageErrorSink): Promise<DirStorage> {
    const s = new DirStorage(await LocalStore.open({ dir, maxBytes }), maxBytes, onError, dir);
    await s.loadScopes();
    return s;
  }

  /** The scopes' accounting; a record that does not parse counts as an old, empty scope. */
  private async loadScopes(): Promise<void> {
    for await (const [scope, text] of this.scopes.iterator(TEXT)) {
      const [at, bytes] = String(text).split(' ').map(Number);
      const u = { at: countOrZero(at), bytes: countOrZero(bytes) };
      this.scopeUse.set(scope, u);
      this.memoBytes += u.bytes;
    }
    if (this.scopeUse.size) return;
    // Memos kept before scopes were accounted: counted once, as old scopes.
    for await (const [key, memo] of this.memos.iterator(BINARY)) {
      const scope = key.slice(0, 32);
      const u = this.scopeUse.get(scope) ?? { at: 0, bytes: 0 };
      u.bytes += (memo as Buffer).length;
      this.scopeUse.set(scope, u);
      this.memoBytes += (memo as Buffer).length;
    }
    for (const [scope, u] of this.scopeUse) await this.scopes.put(scope, `${u.at} ${u.bytes}`, TEXT);
  }

  /** Bytes of team memos kept at most. */
  get memoBudget(): number {
    return Math.max(MEMO_BUDGET_MIN, Math.floor(this.maxBytes * MEMO_BUDGET_SHARE));
  }

  private serialMemo<T>(f: () => Promise<T>): Promise<T> {
    const run = this.memoQueue.then(f);
    this.memoQueue = run.catch(() => {});
    return run;
  }

  private async useScope(scope: Digest, delta: number): Promise<void> {
    const u = this.scopeUse.get(scope) ?? { at: 0, bytes: 0 };
    u.at = Date.now();
    u.bytes = Math.max(0, u.bytes + delta);
    this.memoBytes += delta;
    this.scopeUse.set(scope, u);
    await this.scopes.put(scope, `${u.at} ${u.bytes}`, TEXT);
  }

  /** Drops the least recently used scopes, other than `keep`, while the memos are over budget. */
  private async evictScopes(keep: Digest): Promise<void> {
    while (this.memoBytes > this.memoBudget) {
      let oldest: Digest | null = null;
      for (const [scope, u] of this.scopeUse) if (scope !== keep && (oldest === null || u.at < this.scopeUse.get(oldest)!.at)) oldest = scope;
      if (oldest === null) return;
      await this.memos.clear({ gte: oldest, lt: `${oldest}g` });
      await this.scopes.del(oldest);
      this.memoBytes -= this.scopeUse.get(oldest)!.bytes;
      this.scopeUse.delete(oldest);
    }
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
    if (memo.length > this.memoBudget) return { kind: 'error', error: 'team memo larger than the memo budget' };
    return this.serialMemo(async () => {
      try {
        const key = `${scope}${lookup}`;
        const before = ((await this.memos.get(key, BINARY)) as Buffer | undefined)?.length ?? 0;
        await this.memos.put(key, memo, BINARY);
        await this.useScope(scope, memo.length - before);
        await this.evictScopes(scope);
        return { kind: 'stored' } as const;
      } catch (e) {
        this.onError('write');
        return { kind: 'error', error: `local store: ${errorMessage(e)}` } as const;
      }
    });
  }

  /** In lookup order: LevelDB keeps no time order of the scope's memos. */
  async scopeMemos(scope: Digest, max: number): Promise<{ kind: 'memos'; memos: Buffer[] } | { kind: 'error'; error: string }> {
    if (!DIGEST_RE.test(scope)) return { kind: 'error', error: 'malformed scope' };
    if (max <= 0) return { kind: 'memos', memos: [] };
    try {
      const memos = await this.memos.values({ gte: scope, lt: `${scope}g`, limit: max, ...BINARY }).all();
      // A scope in use is the last to go.
      if (memos.length) await this.serialMemo(() => this.useScope(scope, 0));
      return { kind: 'memos', memos: memos as Buffer[] };
    } catch (e) {
      this.onError('read');
      return { kind: 'error', error: `local store: ${errorMessage(e)}` };
    }
  }

  /** The store keeps the sublevels it handed out, so the team memos are cleared here. */
  async clear(): Promise<void> {
    await this.store.clear();
    await this.serialMemo(async () => {
      await this.memos.clear();
      await this.scopes.clear();
      this.scopeUse.clear();
      this.memoBytes = 0;
    });
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
