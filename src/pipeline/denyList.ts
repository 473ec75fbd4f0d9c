/** Why a key is denied, as persisted. */
export interface DenyRecord {
  reason: string;
  at: number;
}

/** Where the deny list persists: a key/value map such as a store sublevel (JSON values). */
export interface DenyStorage {
  keys(): AsyncIterable<string>;
  put(key: string, value: DenyRecord): Promise<void>;
  del(key: string): Promise<void>;
}

/**
 * Keys found wrong by a verify run. A denied key is served from no tier (memory, local, team)
 * until a fresh compile of it has been stored. Kept in memory, written through to `storage` so
 * it survives a restart; a failed write only loses that durability, never the in-memory entry.
 */
export class DenyList {
  private readonly denied = new Set<string>();

  private constructor(private readonly storage: DenyStorage | null) {}

  /** Loads the persisted keys; an unreadable storage starts an empty list (and says why). */
  static async load(storage: DenyStorage | null, onError: (e: unknown) => void = () => {}): Promise<DenyList> {
    const d = new DenyList(storage);
    if (storage) {
      try {
        for await (const k of storage.keys()) d.denied.add(k);
      } catch (e) {
        onError(e);
      }
    }
    return d;
  }

  has(key: string): boolean {
    return this.denied.has(key);
  }

  get size(): number {
    return this.denied.size;
  }

  async add(key: string, reason: string): Promise<void> {
    this.denied.add(key);
    await this.storage?.put(key, { reason, at: Date.now() });
  }

  async remove(key: string): Promise<void> {
    if (!this.denied.delete(key)) return;
    await this.storage?.del(key);
  }
}
