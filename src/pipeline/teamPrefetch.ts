import { performance } from 'node:perf_hooks';
import type { Digest } from '../key/hash.js';
import { lookupDigest, type Memo, MemoError } from '../memo/memoFormat.js';
import { decodeTeamMemo, type LocalFiles, localise, scopeDigest, teamMemoLookup } from '../memo/teamMemo.js';
import { Counter, type Counters } from '../stats/counters.js';

/** A scope's team memos are asked for again when one of its jobs reaches the daemon this long after the last time. */
export const PREFETCH_REFRESH_MS = 10 * 60_000;
/** How long a job waits for its scope's team memos before it goes the usual way. */
const LIST_WAIT_MS = 1000;
/** Team memos prepared at once in the background (each waits mostly on the team cache). */
const PARALLEL = 8;

/** A team memo that holds here: its entry is in the local store and its memo written. */
export interface Prepared {
  key: Digest;
  memo: Memo;
  /** The entry's output roles, in the memo's output order. */
  roles: string[];
}

export interface PrefetchDeps {
  /** The team memos shared under a scope; null when the team cache could not answer. */
  scopeMemos(scope: Digest): Promise<Buffer[] | null>;
  /** Makes the entry local (fetched from the team cache and written back); false when it could not. */
  fetchEntry(key: Digest): Promise<boolean>;
  writeMemo(lookup: Digest, memo: Memo): Promise<'written' | 'unchanged' | 'no-blob'>;
  files: LocalFiles;
  counters: Counters;
  log: { warn(m: string, f?: Record<string, unknown>): void; info(m: string, f?: Record<string, unknown>): void };
}

interface Item {
  bytes: Buffer;
  result?: Promise<Prepared | null>;
  /** Why it could not be used, once known. */
  why?: string;
}

interface ScopeState {
  at: number;
  /** The scope's memos by lookup, until every one has been prepared (then empty: its memos are on disk). */
  items: Promise<Map<Digest, Item>>;
}

/**
 * Team-cache prefetch (docs/team-cache.md "Prefetch"): the first job of a scope (a compiler and a
 * directory) that reaches the daemon fetches the scope's team memos; each is localised (its
 * checks re-made on this machine's files), its entry fetched and its memo written, in the
 * background, so that the rest of the build is served by the native client alone. A job whose
 * memo is in the list waits for that one memo rather than keying itself.
 */
export class TeamPrefetch {
  private readonly scopes = new Map<Digest, ScopeState>();

  constructor(private readonly d: PrefetchDeps) {}

  /** The prepared team memo of this command, or null (none shared, or it does not hold here). */
  async find(req: { compiler: string; cwd: string; args: readonly string[] }): Promise<Prepared | null> {
    const scope = scopeDigest(req.compiler, req.cwd);
    let s = this.scopes.get(scope);
    if (!s || Date.now() - s.at > PREFETCH_REFRESH_MS) {
      const state: ScopeState = { at: Date.now(), items: Promise.resolve(new Map()) };
      state.items = this.fetch(scope, state);
      this.scopes.set(scope, state);
      s = state;
    }
    let timer: NodeJS.Timeout | undefined;
    const items = await Promise.race([s.items, new Promise<null>((r) => (timer = setTimeout(() => r(null), LIST_WAIT_MS)))]);
    clearTimeout(timer);
    const item = items?.get(lookupDigest(req.compiler, req.cwd, req.args));
    return item ? this.prepare(item) : null;
  }

  /** Forgets every scope fetched (the local store was cleared). Preparations under way finish. */
  forget(): void {
    this.scopes.clear();
  }

  /** Resolves when every scope fetched so far has been prepared (for tests and benchmarks). */
  async idle(): Promise<void> {
    for (const s of this.scopes.values()) await s.items.then((m) => Promise.all([...m.values()].map((i) => i.result)));
  }

  private async fetch(scope: Digest, state: ScopeState): Promise<Map<Digest, Item>> {
    const items = new Map<Digest, Item>();
    const raw = await this.d.scopeMemos(scope).catch(() => null);
    if (!raw?.length) return items;
    for (const bytes of raw) {
      const lookup = teamMemoLookup(bytes);
      if (lookup) items.set(lookup, { bytes });
      else this.d.counters.add(Counter.team_memos_rejected);
    }
    const t0 = performance.now();
    const list = [...items.values()];
    let next = 0;
    const worker = async () => {
      while (next < list.length) await this.prepare(list[next++]!);
    };
    // Once all are prepared the memos are on disk: the list is let go.
    void Promise.all(Array.from({ length: PARALLEL }, worker)).then(() => {
      state.items = Promise.resolve(new Map());
      const unusable = list.filter((i) => i.why);
      this.d.log.info('team prefetch', {
        scope,
        memos: list.length,
        prefetched: list.length - unusable.length,
        ms: Math.round(performance.now() - t0),
        ...(unusable.length ? { first_unusable: unusable[0]!.why } : {}),
      });
    });
    return items;
  }

  private prepare(item: Item): Promise<Prepared | null> {
    item.result ??= this.localiseAndFetch(item).catch((e: unknown) => {
      item.why = `failed: ${String(e)}`;
      this.d.log.warn('team prefetch failed for a memo', { error: String(e) });
      return null;
    });
    return item.result;
  }

  private async localiseAndFetch(item: Item): Promise<Prepared | null> {
    const { counters } = this.d;
    let team: ReturnType<typeof decodeTeamMemo>;
    try {
      team = decodeTeamMemo(item.bytes);
    } catch (e) {
      if (!(e instanceof MemoError)) throw e;
      item.why = e.message;
      counters.add(Counter.team_memos_rejected);
      this.d.log.warn('team memo rejected', { error: e.message });
      return null;
    }
    const local = await localise(team, this.d.files);
    const why =
      'why' in local
        ? local.why
        : !(await this.d.fetchEntry(team.key))
          ? 'entry not in the team cache'
          : (await this.d.writeMemo(team.lookup, local.memo)) === 'no-blob'
            ? 'entry not written back'
            : null;
    if (why || 'why' in local) {
      item.why = why ?? 'unusable';
      counters.add(Counter.team_memos_unusable);
      return null;
    }
    counters.add(Counter.team_memos_prefetched);
    return { key: team.key, memo: local.memo, roles: team.outputs.map((o) => o.role) };
  }
}
