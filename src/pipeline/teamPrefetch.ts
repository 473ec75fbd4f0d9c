import { realpathSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { Digest } from '../key/hash.js';
import { lookupDigest, type Memo, MemoError } from '../memo/memoFormat.js';
import { decodeTeamMemo, type LocalFiles, localise, scopeDigest, teamMemoLookup } from '../memo/teamMemo.js';
import { Counter, type Counters } from '../stats/counters.js';
import type { TieredLookup } from '../store/policies.js';

/** A scope's team memos are asked for again when one of its jobs reaches the daemon this long after the last time. */
export const PREFETCH_REFRESH_MS = 10 * 60_000;
/** How long a job waits for its scope's team memos before it goes the usual way. */
const LIST_WAIT_MS = 1000;
/** Entries fetched ahead of the jobs that will claim them, at once. */
const AHEAD_PARALLEL = 4;
/** Bytes of entries fetched ahead and not claimed yet, at most. */
export const AHEAD_BYTES = 64 << 20;
/** This long after a job last asked, the build is taken as over: entries fetched ahead and the
 * scopes' memo lists (up to a bundle's 64 MiB each) are let go; the next job fetches again. */
const IDLE_MS = 30_000;

/** A command's scope here (scopeDigest), or null when its compiler cannot be resolved. */
export function scopeOf(req: { compiler: string; cwd: string }): Digest | null {
  try {
    return scopeDigest(req.compiler, realpathSync.native(req.compiler), req.cwd);
  } catch {
    return null;
  }
}

/** A team memo made this machine's: every check held here when it was localised. */
export interface Localised {
  memo: Memo;
  /** The entry's output roles, in the memo's output order. */
  roles: string[];
  /** The entry's lookup, when it was fetched ahead (a team-tier hit not yet written back). */
  entry?: Promise<TieredLookup>;
}

export interface PrefetchDeps {
  /** The team memos shared under a scope; null when the team cache could not answer. */
  scopeMemos(scope: Digest): Promise<Buffer[] | null>;
  /** Looks an entry up in every tier, leaving a team-tier hit unwritten (the claimer decides). */
  getEntry(key: Digest): Promise<TieredLookup>;
  files: LocalFiles;
  counters: Counters;
  log: { warn(m: string, f?: Record<string, unknown>): void; info(m: string, f?: Record<string, unknown>): void };
}

interface Item {
  bytes: Buffer;
  /** The entry, once fetching it ahead has begun. */
  entry?: Promise<TieredLookup>;
  /** Its bytes while held unclaimed. */
  held?: number;
  claimed?: boolean;
}

interface ScopeState {
  at: number;
  /** Fetching entries ahead has begun. */
  ahead?: boolean;
  /** The scope's team memos by lookup, each taken out by the first job that claims it. */
  items: Promise<Map<Digest, Item>>;
}

/**
 * Team memos (docs/team-cache.md "Team memos"): the first job of a scope (a compiler and a
 * directory) that reaches the daemon fetches the scope's team memos in one request. A job whose
 * command has one claims it: the memo is localised (its checks made again on this machine's
 * files) and, if every check holds, gives the job's key and checks without keying it here.
 */
export class TeamPrefetch {
  private readonly scopes = new Map<Digest, ScopeState>();
  /** Bytes of entries fetched ahead and not claimed. */
  private heldBytes = 0;
  private readonly heldItems = new Set<Item>();
  /** Fetchers waiting for held bytes to fall under AHEAD_BYTES. */
  private waiting: (() => void)[] = [];
  private idleTimer: NodeJS.Timeout | null = null;

  constructor(private readonly d: PrefetchDeps) {}

  /** This command's team memo, localised, or null (none shared, or it does not hold here). */
  async claim(req: { compiler: string; cwd: string; args: readonly string[] }): Promise<Localised | null> {
    this.touchIdle();
    const scope = scopeOf(req);
    if (!scope) return null;
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
    const item = items.get(lookup);
    if (!item) return null;
    items.delete(lookup);
    item.claimed = true;
    this.release(item);
    const local = await this.localise(item.bytes);
    return local && item.entry ? { ...local, entry: item.entry } : local;
  }

  /**
   * A claimed memo's entry came from the team cache: this machine lacks the scope's entries, so
   * the rest are fetched ahead of their jobs (once per fetch of the scope's memos).
   */
  fromTeam(req: { compiler: string; cwd: string }): void {
    const scope = scopeOf(req);
    if (!scope) return;
    const s = this.scopes.get(scope);
    if (!s || s.ahead) return;
    s.ahead = true;
    void s.items.then((items) => this.fetchAhead([...items.values()], () => this.scopes.get(scope) === s));
  }

  /** Forgets every scope fetched and every entry held (the local store was cleared, or the build is over). */
  forget(): void {
    this.scopes.clear();
    for (const i of [...this.heldItems]) {
      this.release(i);
      i.entry = undefined;
    }
  }

  private release(item: Item): void {
    if (item.held === undefined) return;
    this.heldBytes -= item.held;
    item.held = undefined;
    this.heldItems.delete(item);
    for (const w of this.waiting.splice(0)) w();
  }

  /** Lets go of what the build needed once it seems over. */
  private touchIdle(): void {
    if (this.idleTimer) this.idleTimer.refresh();
    else {
      this.idleTimer = setTimeout(() => {
        this.idleTimer = null;
        this.forget();
      }, IDLE_MS);
      this.idleTimer.unref();
    }
  }

  private async fetch(scope: Digest): Promise<Map<Digest, Item>> {
    const t0 = performance.now();
    const items = new Map<Digest, Item>();
    const raw = await this.d.scopeMemos(scope).catch(() => null);
    if (!raw?.length) return items;
    for (const bytes of raw) {
      const lookup = teamMemoLookup(bytes);
      if (lookup) items.set(lookup, { bytes });
      else this.d.counters.add(Counter.team_memos_rejected);
    }
    this.d.log.info('team memos fetched', { scope, memos: items.size, ms: Math.round(performance.now() - t0) });
    return items;
  }

  /**
   * Fetches the entries the memos name ahead of the jobs that will claim them, so that a job does
   * not wait for the team cache; at most AHEAD_BYTES held unclaimed.
   */
  private async fetchAhead(list: Item[], current: () => boolean): Promise<void> {
    let next = 0;
    const worker = async () => {
      // Stops once the scope is forgotten (cleared, refreshed, or the build is over).
      while (next < list.length && current()) {
        const item = list[next++]!;
        if (item.claimed) continue;
        while (this.heldBytes > AHEAD_BYTES) await new Promise<void>((r) => this.waiting.push(r));
        // Only entries whose memos hold here: a memo of an edited job would fetch for nothing.
        // (The claim localises again: files may change in between.)
        const local = await this.check(item.bytes);
        if (!('memo' in local) || item.claimed) continue;
        const key = local.memo.key;
        item.entry = this.d.getEntry(key).catch((e: Error): TieredLookup => ({ kind: 'error', error: e.message, corrupt: false }));
        const r = await item.entry;
        if (r.kind === 'hit' && !item.claimed) {
          item.held = [...r.entry.files.values()].reduce((n, b) => n + b.length, 0);
          this.heldBytes += item.held;
          this.heldItems.add(item);
        }
      }
    };
    await Promise.all(Array.from({ length: AHEAD_PARALLEL }, worker));
  }

  /** The claim's localisation: counted and logged when the memo is invalid or does not hold. */
  private async localise(bytes: Buffer): Promise<Localised | null> {
    const r = await this.check(bytes);
    if ('memo' in r) return r;
    if (r.why === 'invalid') this.d.counters.add(Counter.team_memos_rejected);
    else {
      this.d.counters.add(Counter.team_memos_unusable);
      this.d.log.info('team memo does not hold here', { why: r.why });
    }
    return null;
  }

  private async check(bytes: Buffer): Promise<Localised | { why: string }> {
    let team: ReturnType<typeof decodeTeamMemo>;
    try {
      team = decodeTeamMemo(bytes);
    } catch (e) {
      if (!(e instanceof MemoError)) throw e;
      this.d.log.warn('team memo rejected', { error: e.message });
      return { why: 'invalid' };
    }
    const local = await localise(team, this.d.files);
    if ('why' in local) return local;
    return { memo: local.memo, roles: team.outputs.map((o) => o.role) };
  }
}
