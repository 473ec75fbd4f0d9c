import type { Digest } from '../key/hash.js';
import type { RemoteFailure } from '../remote/remoteFailure.js';
import type { AdoptOptions, CacheBackend, DeleteResult, GetOptions, Lookup, PutResult, StoredEntry } from './backend.js';
import type { EntryRecord } from './record.js';

/** Never writes: puts and deletes are refused, reads and touches pass through. */
export function readOnly(b: CacheBackend): CacheBackend {
  return {
    name: `read-only(${b.name})`,
    get: (k, o) => b.get(k, o),
    touch: (k) => b.touch(k),
    ...(b.scopeMemos ? { scopeMemos: (scope: Digest) => b.scopeMemos!(scope) } : {}),
    put: async () => ({ kind: 'refused', reason: 'read-only' }),
    delete: async () => ({ kind: 'refused', reason: 'read-only' }),
  };
}

/**
 * A lookup or put result as a tier reports it. Errors of the team tier carry `failure`
 * (RemoteBackend sets it on every error); the local tier leaves it out.
 */
export type TierLookup = Lookup & { failure?: RemoteFailure };
export type TierPutResult = PutResult & { failure?: RemoteFailure };

export type TierEvent =
  /** `deferred`: an entry fetched ahead (GetOptions.ahead); whoever uses it counts the hit. */
  | { tier: 'local' | 'remote'; op: 'get'; result: TierLookup; deferred?: true }
  | { tier: 'local' | 'remote'; op: 'put'; result: TierPutResult }
  | { tier: 'local' | 'remote'; op: 'delete'; result: DeleteResult };

/** The answer of a tiered lookup says which tier served it, and for a team-tier error which failure it was. */
export type TieredLookup = TierLookup & { tier?: 'local' | 'remote' };

export interface Tiered extends CacheBackend {
  get(key: Digest, options?: GetOptions): Promise<TieredLookup>;
  writeBack(key: Digest, entry: StoredEntry): Promise<void>;
}

/**
 * Local first, then the team tier. A remote hit (files verified and record parsed by the remote backend) is
 * written back locally before it is returned; a put goes to both (the remote one is expected to
 * be queued, so it returns at once). Every tier outcome is reported to `observe`.
 */
export function tiered(local: CacheBackend, remote: CacheBackend & { get(key: Digest): Promise<TierLookup> }, observe: (e: TierEvent) => void = () => {}): Tiered {
  // Remote hits being written back: the write is not awaited by the hit (a small blob's file may
  // be written before the hit returns, when the store writes it synchronously), and a lookup of
  // the same key meanwhile is answered from here.
  const writingBack = new Map<Digest, { entry: StoredEntry; done: Promise<void> }>();
  const writeBack = (key: Digest, entry: StoredEntry): Promise<void> => {
    // The team tier checked every file against its digest and parsed the record on arrival:
    // neither is done again.
    const done = local
      .put(key, entry, { verified: true, parsed: true })
      .then(
        (back) => observe({ tier: 'local', op: 'put', result: back }),
        (e: Error) => observe({ tier: 'local', op: 'put', result: { kind: 'error', error: e.message } }),
      )
      .finally(() => writingBack.delete(key));
    writingBack.set(key, { entry, done });
    return done;
  };
  return {
    name: `tiered(${local.name}, ${remote.name})`,
    async get(key, options) {
      const pending = writingBack.get(key);
      if (pending) return { kind: 'hit', entry: pending.entry, tier: 'local' };
      const l = await local.get(key);
      observe({ tier: 'local', op: 'get', result: l });
      if (l.kind === 'hit') return { ...l, tier: 'local' };
      if (options?.nearestOnly) return l;
      const r = await remote.get(key);
      observe(options?.ahead ? { tier: 'remote', op: 'get', result: r, deferred: true } : { tier: 'remote', op: 'get', result: r });
      if (r.kind !== 'hit') return l.kind === 'error' ? l : r;
      if (!options?.deferWriteBack) void writeBack(key, r.entry);
      return { ...r, tier: 'remote' };
    },
    writeBack,
    /** Both tiers; the answer is the local one, as for put. */
    async delete(key) {
      // A write-back finishing after the local delete would bring the entry back.
      await writingBack.get(key)?.done;
      const [l, r] = await Promise.all([local.delete(key), remote.delete(key)]);
      observe({ tier: 'local', op: 'delete', result: l });
      observe({ tier: 'remote', op: 'delete', result: r });
      return l;
    },
    touch: (key) => local.touch(key),
    ...(remote.shareMemo ? { shareMemo: (scope: Digest, memo: Buffer) => remote.shareMemo!(scope, memo) } : {}),
    ...(remote.scopeMemos ? { scopeMemos: (scope: Digest) => remote.scopeMemos!(scope) } : {}),
    ...(local.adopt
      ? {
          /** Local adoption; the team tier gets the files read back from the local blobs. */
          async adopt(key: Digest, record: EntryRecord, options?: AdoptOptions) {
            const l = await local.adopt!(key, record);
            observe({ tier: 'local', op: 'put', result: l });
            if (l.kind !== 'stored' || options?.nearestOnly) return l;
            const found = await local.get(key);
            if (found.kind === 'hit') {
              const r = await remote.put(key, found.entry);
              observe({ tier: 'remote', op: 'put', result: r });
            }
            return l;
          },
        }
      : {}),
    async put(key: Digest, entry: StoredEntry) {
      const l = await local.put(key, entry);
      observe({ tier: 'local', op: 'put', result: l });
      const r = await remote.put(key, entry);
      observe({ tier: 'remote', op: 'put', result: r });
      return l;
    },
  };
}
