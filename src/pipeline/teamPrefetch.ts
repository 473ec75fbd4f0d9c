import { performance } from 'node:perf_hooks';
import type { Digest } from '../key/hash.js';
import { lookupDigest, type Memo, MemoError } from '../memo/memoFormat.js';
import { decodeTeamMemo, type LocalFiles, localise, scopeDigest, teamMemoLookup } from '../memo/teamMemo.js';
import { Counter, type Counters } from '../stats/counters.js';

/** A scope's team memos are asked for again when one of its jobs reaches the daemon this long after the last time. */
export const PREFETCH_REFRESH_MS = 10 * 60_000;
/** How long a job waits for its scope's team memos before it goes the usual way. */
const LIST_WAIT_MS = 1000;

/** A team memo made this machine's: every check held here when it was localised. */
export interface Localised {
  memo: Memo;
  /** The entry's output roles, in the memo's output order. */
  roles: string[];
}

export interface PrefetchDeps {
  /** The team memos shared under a scope; null when the team cache could not answer. */
  scopeMemos(scope: Digest): Promise<Buffer[] | null>;
  files: LocalFiles;
  counters: Counters;
  log: { warn(m: string, f?: Record<string, unknown>): void; info(m: string, f?: Record<string, unknown>): void };
}

interface ScopeState {
  at: number;
  /** The scope's team memos by lookup, each taken out by the first job that claims it. */
  items: Promise<Map<Digest, Buffer>>;
}

/**
 * Team memos (docs/team-cache.md "Team memos"): the first job of a scope (a compiler and a
 * directory) that reaches the daemon fetches the scope's team memos in one request. A job whose
 * command has one claims it: the memo is localised (its checks made again on this machine's
 * files) and, if every check holds, gives the job's key and checks without keying it here.
 */
export class TeamPrefetch {
  private readonly scopes = new Map<Digest, ScopeState>();

  constructor(private readonly d: PrefetchDeps) {}

  /** This command's team memo, localised, or null (none shared, or it does not hold here). */
  async claim(req: { compiler: string; cwd: string; args: readonly string[] }): Promise<Localised | null> {
    const scope = scopeDigest(req.compiler, req.cwd);
    let s = this.scopes.get(scope);
    if (!s || Date.now() - s.at > PREFETCH_REFRESH_MS) {
      s = { at: Date.now(), items: this.fetch(scope) };
      this.scopes.set(scope, s);
    }
    let timer: NodeJS.Timeout | undefined;
    const items = await Promise.race([s.items, new Promise<null>((r) => (timer = setTimeout(() => r(null), LIST_WAIT_MS)))]);
    clearTimeout(timer);
    if (!items?.size) return null;
    const lookup = lookupDigest(req.compiler, req.cwd, req.args);
    const bytes = items.get(lookup);
    if (!bytes) return null;
    items.delete(lookup);
    return this.localise(bytes);
  }

  /** Forgets every scope fetched (the local store was cleared). */
  forget(): void {
    this.scopes.clear();
  }

  private async fetch(scope: Digest): Promise<Map<Digest, Buffer>> {
    const t0 = performance.now();
    const items = new Map<Digest, Buffer>();
    const raw = await this.d.scopeMemos(scope).catch(() => null);
    if (!raw?.length) return items;
    for (const bytes of raw) {
      const lookup = teamMemoLookup(bytes);
      if (lookup) items.set(lookup, bytes);
      else this.d.counters.add(Counter.team_memos_rejected);
    }
    this.d.log.info('team memos fetched', { scope, memos: items.size, ms: Math.round(performance.now() - t0) });
    return items;
  }

  private async localise(bytes: Buffer): Promise<Localised | null> {
    const { counters } = this.d;
    let team: ReturnType<typeof decodeTeamMemo>;
    try {
      team = decodeTeamMemo(bytes);
    } catch (e) {
      if (!(e instanceof MemoError)) throw e;
      counters.add(Counter.team_memos_rejected);
      this.d.log.warn('team memo rejected', { error: e.message });
      return null;
    }
    const local = await localise(team, this.d.files);
    if ('why' in local) {
      counters.add(Counter.team_memos_unusable);
      this.d.log.info('team memo does not hold here', { lookup: team.lookup, why: local.why });
      return null;
    }
    return { memo: local.memo, roles: team.outputs.map((o) => o.role) };
  }
}
