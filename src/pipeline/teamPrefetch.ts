import { realpathSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { Digest } from '../key/hash.js';
import { encodeMemo, lookupDigest, type Memo, type MemoCheck, MemoError } from '../memo/memoFormat.js';
import { type LocalFiles, localise, scopeDigest, type TeamCheck, TeamMemoDecoder, teamMemoKey, teamMemoLookup } from '../memo/teamMemo.js';
import { encodeTeamPack } from '../memo/teamPack.js';
import { Counter, type Counters } from '../stats/counters.js';
import type { ScopeMemoList, StoredEntry } from '../store/backend.js';
import type { TieredLookup } from '../store/policies.js';
import { settledWithin } from '../util/settledWithin.js';
import { entryBytes, entryMemo } from './entryMemo.js';

/** A scope's team memos are asked for again when one of its jobs reaches the daemon this long after the last time. */
export const PREFETCH_REFRESH_MS = 10 * 60_000;
/** How long a job waits for its scope's team memos before it goes the usual way. */
const LIST_WAIT_MS = 1000;
/** Entries fetched ahead of the jobs that will claim them at once, and memos checked at once. */
const AHEAD_PARALLEL = 32;
/** Entries are fetched ahead while the memos that failed their checks outnumber those that held by at most this. */
const FETCH_SLACK = 32;
/** Bytes of entries one fetch ahead takes at most (held in memory until the pack is adopted). */
export const AHEAD_BYTES = 64 << 20;
/** For this long after fetching ahead began, a job of the scope whose entry it has not reached
 * yet waits for it; later ones fetch their own (a build that needs few of a scope's entries is not
 * held up by a long batch). */
export const AHEAD_WAIT_MS = 2000;
/** This long after a job last asked, the build is taken as over: the scopes' memo lists (up to a
 * bundle's 64 MiB each) are let go; the next job fetches again. */
const IDLE_MS = 30_000;
/** This long after the last job or fast-path hit, the team pack's entries are adopted. */
export const ADOPT_IDLE_MS = 2000;

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

/** An entry fetched ahead and put in the team pack, with this machine's memo for it. */
export interface PackedEntry {
  lookup: Digest;
  memo: Memo;
  entry: StoredEntry;
  /** When the pack holding it was written (ms since the epoch). */
  packedAtMs?: number;
}

export interface PrefetchDeps {
  /** The team memos shared under a scope; null when the team cache could not answer. */
  scopeMemos(scope: Digest): Promise<ScopeMemoList | null>;
  /** Looks an entry up in every tier, leaving a team-tier hit unwritten (the claimer decides). */
  getEntry(key: Digest): Promise<TieredLookup>;
  /** Whether the local store has the entry. */
  isLocal?(key: Digest): Promise<boolean>;
  /** The team pack file (cache-schema/teampack.v1.md); without it, entries fetched ahead stay in memory only. */
  pack?: {
    /** Replaces the pack with these bytes, holding memos of these keys. */
    write(pieces: Buffer[], keys: readonly string[]): Promise<void>;
    remove(): Promise<void>;
    /** Writes a packed entry into the local store and its memo file. */
    adopt(p: PackedEntry): Promise<void>;
  };
  /** Quiet time before the pack is adopted (default ADOPT_IDLE_MS). */
  adoptAfterMs?: number;
  /** How long jobs wait for fetching ahead (default AHEAD_WAIT_MS). */
  aheadWaitMs?: number;
  /** How many more memos may fail their checks than hold before fetching ahead stops (default FETCH_SLACK). */
  fetchSlack?: number;
  files: LocalFiles;
  counters: Counters;
  log: { warn(m: string, f?: Record<string, unknown>): void; info(m: string, f?: Record<string, unknown>): void };
}

/** When a fetch ahead began (performance.now()) and, in ms after that, when its phases ended. */
interface BatchPhases {
  t0: number;
  first: number;
  fetched: number;
  checked: number;
}

interface Item {
  bytes: Buffer;
  /** The entry, once fetching it ahead has begun. */
  entry?: Promise<TieredLookup>;
  claimed?: boolean;
  /** Its entry went into the team pack (and was counted as a team-cache hit there). */
  packed?: boolean;
}

interface ScopeState {
  at: number;
  /** The first claim of this fetch has looked whether this machine lacks the scope's entries. */
  probed?: boolean;
  /** Fetching the scope's entries ahead: begun, and ended (pack written) when settled. */
  ahead?: Promise<void>;
  /** Until when (ms) jobs wait for fetching ahead rather than fetch their own entry. */
  waitUntil?: number;
  /** The scope's team memos by lookup, each taken out by the first job that claims it. */
  items: Promise<Map<Digest, Item>>;
  /**
   * The same map once the team cache has answered with every memo it has for the scope (not when
   * it could not answer, nor when its list may have been cut: a memo missing from it may be there).
   */
  answered?: Map<Digest, Item>;
  /** Lookups of the memos claimed (taken out of `items`). */
  claimed: Set<Digest>;
}

/**
 * Team memos (docs/team-cache.md "Team memos"): the first job of a scope (a compiler and a
 * directory) that reaches the daemon fetches the scope's team memos in one request. A job whose
 * command has one claims it: the memo is localised (its checks made again on this machine's
 * files) and, if every check holds, gives the job's key and checks without keying it here.
 *
 * Once the first claimed memo's entry is not in the local store (or a claimed memo's entry came
 * from the team cache), the entries of the scope's other memos that hold here are fetched ahead
 * and written, with their memos, into one team pack file the native client serves from
 * (docs/team-cache.md "Team memos", steps 4 and 5); jobs of the scope that reach the daemon
 * meanwhile wait for them. When the build is over the pack's entries are adopted: written into
 * the local store with memo files of their own, and the pack removed.
 */
export class TeamPrefetch {
  private readonly scopes = new Map<Digest, ScopeState>();
  /** The entries of the pack written last by lookup (each fast-path hit of the pack asks for its memo), until adopted or dropped. */
  private packed = new Map<Digest, PackedEntry>();
  private adopting: Promise<void> = Promise.resolve();
  /** Pack writes, one at a time: two scopes fetched ahead at once must not replace each other's pack unadopted. */
  private packing: Promise<void> = Promise.resolve();
  private idleTimer: NodeJS.Timeout | null = null;
  private adoptTimer: NodeJS.Timeout | null = null;

  constructor(private readonly d: PrefetchDeps) {}

  /**
   * This command's team memo, localised, or null (none shared, or it does not hold here).
   * `fetching` is called when this claim asks the team cache for the scope's memos: the wait for
   * them is the moment to start work every memo's checks will need (the toolchain's identity).
   */
  async claim(req: { compiler: string; cwd: string; args: readonly string[] }, fetching?: () => void): Promise<Localised | null> {
    this.touch();
    const scope = scopeOf(req);
    if (!scope) return null;
    let s = this.scopes.get(scope);
    if (!s || Date.now() - s.at > PREFETCH_REFRESH_MS) {
      const fresh: ScopeState = { at: Date.now(), items: Promise.resolve(new Map()), claimed: new Set() };
      fresh.items = this.fetch(scope, fresh);
      s = fresh;
      this.scopes.set(scope, s);
      fetching?.();
    }
    const items = await settledWithin(s.items, LIST_WAIT_MS);
    if (!items?.size) return null;
    const lookup = lookupDigest(req.compiler, req.cwd, req.args);
    let item = items.get(lookup);
    if (!item) return null;
    // A first claim whose entry is not here: this machine lacks the scope's entries, so they are
    // fetched ahead at once, with this job's among them.
    if (!s.probed && !s.ahead && this.d.isLocal) {
      s.probed = true;
      const key = teamMemoKey(item.bytes);
      if (key && !(await this.d.isLocal(key).catch(() => true))) this.startAhead(scope, s);
    }
    // Its entry is likely on its way with the rest: one wait here instead of a fetch of its own.
    const patience = (s.waitUntil ?? 0) - Date.now();
    if (s.ahead && !item.entry && patience > 0) {
      await settledWithin(s.ahead, patience);
      item = items.get(lookup);
      if (!item) return null;
    }
    items.delete(lookup);
    s.claimed.add(lookup);
    item.claimed = true;
    const local = await this.localise(item.bytes);
    if (!local || !item.entry) return local;
    // Fetched ahead and now used: counted as a team-cache hit here (the fetch was not), unless the pack holds it.
    if (!item.packed) void item.entry.then((r) => r.kind === 'hit' && r.tier === 'remote' && this.d.counters.add(Counter.remote_hits));
    return { ...local, entry: item.entry };
  }

  /**
   * A claimed memo's entry came from the team cache: this machine lacks the scope's entries, so
   * the rest are fetched ahead of their jobs and packed (once per fetch of the scope's memos).
   */
  fromTeam(req: { compiler: string; cwd: string }): void {
    const scope = scopeOf(req);
    if (!scope) return;
    const s = this.scopes.get(scope);
    if (s) this.startAhead(scope, s);
  }

  private startAhead(scope: Digest, s: ScopeState): void {
    if (s.ahead) return;
    s.waitUntil = Date.now() + (this.d.aheadWaitMs ?? AHEAD_WAIT_MS);
    s.ahead = s.items
      .then((items) => this.fetchAhead([...items], () => this.scopes.get(scope) === s))
      .catch((e: unknown) => this.d.log.warn('cannot fetch team entries ahead', { error: String(e) }));
  }

  /**
   * True when the team cache answered this command's scope with its complete list and no memo for
   * it, and none was claimed: its entry may be there (a team-cache hit) while its memo is not, as
   * after an upgrade that changed the rules memos are named under. Then this daemon's own memo is
   * worth sharing. False after a list the server cut or did not say was complete: the memo may be
   * among those left out, and sharing it again would be a wasted upload.
   */
  lacks(req: { compiler: string; cwd: string; args: readonly string[] }): boolean {
    const scope = scopeOf(req);
    const s = scope ? this.scopes.get(scope) : undefined;
    if (!s?.answered) return false;
    const lookup = lookupDigest(req.compiler, req.cwd, req.args);
    return !s.answered.has(lookup) && !s.claimed.has(lookup);
  }

  /** The build goes on (a fast-path hit was noticed): the pack is not adopted yet. */
  touch(): void {
    if (this.idleTimer) this.idleTimer.refresh();
    else {
      this.idleTimer = setTimeout(() => {
        this.idleTimer = null;
        this.scopes.clear();
      }, IDLE_MS);
      this.idleTimer.unref();
    }
    this.adoptTimer?.refresh();
  }

  /** Forgets every scope fetched and the pack's entries, unadopted (the local store was cleared). */
  forget(): void {
    this.scopes.clear();
    this.dropPack();
  }

  /** The memo of `lookup` in the pack, while its entries are held. */
  packedMemo(lookup: Digest): Memo | undefined {
    return this.packed.get(lookup)?.memo;
  }

  /** Resolves when the pack's adoption, if one is under way, has ended. */
  adopted(): Promise<void> {
    return this.adopting;
  }

  /**
   * The daemon stops: the pack's entries are adopted now rather than after the quiet time (a CI
   * job that stops the daemon right after its build keeps them in the cache directory it saves).
   * Past `ms` the rest is dropped with the file, and the entries stay in the team cache.
   */
  async adoptNow(ms: number): Promise<void> {
    if (!this.packed.size) return this.adopting;
    let timer: NodeJS.Timeout | undefined;
    const late = await Promise.race([this.adoptPack().then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), ms)))]);
    clearTimeout(timer);
    if (late) {
      this.d.log.warn('daemon stopping: team pack not fully adopted in time; the rest is dropped', { ms });
      this.dropPack();
      await this.adopting;
    }
  }

  /** Lets go of the pack's entries, unadopted; the file goes with them. */
  dropPack(): void {
    if (this.adoptTimer) clearTimeout(this.adoptTimer);
    this.adoptTimer = null;
    if (!this.packed.size) return;
    this.packed = new Map();
    void this.d.pack?.remove().catch(() => {});
  }

  private async fetch(scope: Digest, s: ScopeState): Promise<Map<Digest, Item>> {
    const t0 = performance.now();
    const items = new Map<Digest, Item>();
    const raw = await this.d.scopeMemos(scope).catch(() => null);
    if (raw?.complete) s.answered = items;
    if (!raw?.memos.length) return items;
    for (const bytes of raw.memos) {
      const lookup = teamMemoLookup(bytes);
      if (lookup) items.set(lookup, { bytes });
      else this.d.counters.add(Counter.team_memos_rejected);
    }
    this.d.log.info('team memos fetched', { scope, memos: items.size, ms: Math.round(performance.now() - t0) });
    return items;
  }

  /**
   * Fetches the entries the memos name ahead of the jobs that will claim them (up to AHEAD_BYTES),
   * then writes those it got into the team pack, each with this machine's memo.
   *
   * Fetching and checking go side by side: the first memo's checks wait for this machine's
   * toolchain to be hashed (some 100 ms for clang's libraries on an empty cache), and the
   * fetches go on meanwhile. An entry whose memo then does not hold here was fetched for nothing;
   * once more memos fail than hold (by FETCH_SLACK), no further entries are fetched.
   */
  private async fetchAhead(list: [Digest, Item][], current: () => boolean): Promise<void> {
    const t0 = performance.now();
    // One look at each file for the whole batch: the toolchain's files recur in every memo.
    const seen = new Map<TeamCheck | string, MemoCheck | { why: string }>();
    const decoder = new TeamMemoDecoder();
    const checked = new Map<Digest, Localised>();
    let bytes = 0;
    let held = 0;
    let failed = 0;
    let fetchNext = 0;
    let checkNext = 0;
    /** For the log: when the first memo held (the toolchain hashed), the last entry arrived and the last memo was checked (ms after t0). */
    const phases: BatchPhases = { t0, first: 0, fetched: 0, checked: 0 };
    const slack = this.d.fetchSlack ?? FETCH_SLACK;
    const fetching = () => fetchNext < list.length && bytes < AHEAD_BYTES && current() && failed <= held + slack;
    const fetcher = async () => {
      while (fetching()) {
        const [, item] = list[fetchNext++]!;
        // The memo's key is read from its bytes before it is decoded; the memo that holds names the same.
        const key = teamMemoKey(item.bytes);
        if (item.claimed || !key) continue;
        item.entry = this.d.getEntry(key).catch((e: Error): TieredLookup => ({ kind: 'error', error: e.message, corrupt: false }));
        const r = await item.entry;
        if (r.kind === 'hit') bytes += entryBytes(r.entry);
        phases.fetched = performance.now() - t0;
      }
    };
    const checker = async () => {
      while (checkNext < list.length && current()) {
        const [lookup, item] = list[checkNext++]!;
        if (item.claimed) continue;
        // Only entries whose memos hold here go into the pack (the claim localises again: files
        // may change in between).
        const local = await this.check(item.bytes, seen, decoder);
        if ('memo' in local) {
          if (!held) phases.first = performance.now() - t0;
          held++;
          checked.set(lookup, local);
        } else failed++;
        phases.checked = performance.now() - t0;
      }
    };
    await Promise.all([...Array.from({ length: AHEAD_PARALLEL }, fetcher), ...Array.from({ length: AHEAD_PARALLEL }, checker)]);
    const packed: PackedEntry[] = [];
    let teamHits = 0;
    for (const [lookup, item] of list) {
      const local = checked.get(lookup);
      if (!local || !item.entry || item.claimed) continue;
      const r = await item.entry;
      if (r.kind !== 'hit') continue;
      const roles = local.roles.map((role, i) => ({ role, path: local.memo.outputs[i]!.path }));
      const memo = r.entry.record.outputs.length === roles.length ? entryMemo(local.memo.key, local.memo.checks, r.entry.record, roles, '/') : null;
      if (!memo) continue;
      packed.push({ lookup, memo, entry: r.entry });
      item.packed = true;
      if (r.tier === 'remote') teamHits++;
    }
    if (!packed.length || !current() || !this.d.pack) return;
    const run = this.packing.then(() => this.writePack(packed, bytes, current, teamHits, phases));
    this.packing = run.catch(() => {});
    await run;
  }

  /**
   * Adopts the pack held (another scope's), then writes `packed` as the pack. `teamHits`: how many
   * of its entries came from the team cache, counted as its hits once the pack is written.
   */
  private async writePack(packed: PackedEntry[], bytes: number, current: () => boolean, teamHits: number, phases: BatchPhases): Promise<void> {
    const { t0 } = phases;
    const pack = this.d.pack!;
    await this.adoptPack();
    if (!current()) return;
    const blobs = packed.flatMap((p) => p.entry.record.outputs.map((o) => ({ digest: o.digest, bytes: p.entry.files.get(o.name)! })));
    let pieces: Buffer[];
    try {
      pieces = encodeTeamPack(
        packed.map((p) => ({ lookup: p.lookup, memo: encodeMemo(p.memo, true) })),
        blobs,
      );
    } catch (e) {
      this.d.log.warn('cannot make a team pack', { error: String(e) });
      return;
    }
    if (!current()) return;
    const encodedMs = performance.now() - t0;
    await pack.write(
      pieces,
      packed.map((p) => p.memo.key),
    );
    // Forgotten while it was written (`clear`): the file may have landed after the clear removed
    // the old one, and nothing of it may serve.
    if (!current()) {
      await pack.remove().catch(() => {});
      return;
    }
    const packedAtMs = Date.now();
    for (const p of packed) p.packedAtMs = packedAtMs;
    this.packed = new Map(packed.map((p) => [p.lookup, p]));
    this.d.counters.add(Counter.team_pack_entries, packed.length);
    this.d.counters.add(Counter.remote_hits, teamHits);
    this.d.log.info('team pack written', {
      entries: packed.length,
      bytes,
      ms: Math.round(performance.now() - t0),
      firstHeldMs: Math.round(phases.first),
      fetchedMs: Math.round(phases.fetched),
      checkedMs: Math.round(phases.checked),
      encodedMs: Math.round(encodedMs),
    });
    this.adoptTimer = setTimeout(() => void this.adoptPack(), this.d.adoptAfterMs ?? ADOPT_IDLE_MS);
    this.adoptTimer.unref();
  }

  /** Writes the pack's entries into the local store with memo files of their own, then removes the pack. */
  private adoptPack(): Promise<void> {
    const run = this.adopting.then(async () => {
      if (this.adoptTimer) clearTimeout(this.adoptTimer);
      this.adoptTimer = null;
      const list = this.packed;
      if (!list.size || !this.d.pack) return;
      const t0 = performance.now();
      let n = 0;
      for (const p of list.values()) {
        // Dropped meanwhile (cleared, a key denied): nothing more goes into the store from it.
        if (this.packed !== list) return;
        try {
          await this.d.pack.adopt(p);
          n++;
        } catch (e) {
          this.d.log.warn('cannot adopt a team pack entry', { key: p.memo.key, error: String(e) });
        }
      }
      if (this.packed !== list) return;
      this.packed = new Map();
      await this.d.pack.remove().catch(() => {});
      this.d.counters.add(Counter.team_pack_adopted, n);
      this.d.log.info('team pack adopted', { entries: n, ms: Math.round(performance.now() - t0) });
    });
    this.adopting = run.catch(() => {});
    return this.adopting;
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

  private async check(bytes: Buffer, seen?: Map<TeamCheck | string, MemoCheck | { why: string }>, decoder = new TeamMemoDecoder()): Promise<Localised | { why: string }> {
    let team: ReturnType<TeamMemoDecoder['decode']>;
    try {
      team = decoder.decode(bytes);
    } catch (e) {
      if (!(e instanceof MemoError)) throw e;
      this.d.log.warn('team memo rejected', { error: e.message });
      return { why: 'invalid' };
    }
    const local = await localise(team, this.d.files, undefined, seen);
    if ('why' in local) return local;
    return { memo: local.memo, roles: team.outputs.map((o) => o.role) };
  }
}
