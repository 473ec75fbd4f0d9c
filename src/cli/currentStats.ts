import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Config } from '../config/config.js';
import { initHash } from '../key/hash.js';
import { Counters, STATS_KEY, STATS_SUBLEVEL, StatsRecord, type StatsView } from '../stats/counters.js';
import { LocalStore } from '../store/localStore.js';
import { StoreLockedError } from '../store/metaDb.js';
import { askDaemon } from './controlClient.js';

/**
 * Counters and store summary as `ltocache stats --json` prints them: asked of the running
 * daemon, else read from the store on disk (never starting a daemon). `zero` resets them first.
 */
export async function currentStats(config: Config, zero = false): Promise<StatsView> {
  if (zero) {
    const z = await askDaemon(config.dir, { op: 'zero' });
    if (z.kind === 'failed') throw new Error(z.error);
  }
  const r = await askDaemon(config.dir, { op: 'stats' });
  if (r.kind === 'ok') return r.result as StatsView;
  if (r.kind === 'failed') throw new Error(r.error);
  try {
    return await offlineStats(config, zero);
  } catch (e) {
    if (e instanceof StoreLockedError) throw new Error('the store is locked by a daemon that does not answer');
    throw e;
  }
}

async function offlineStats(config: Config, zero: boolean): Promise<StatsView> {
  // Asking for statistics must not create a cache directory that was never used.
  if (!existsSync(join(config.dir, 'store'))) return new Counters().view({ entries: 0, store_bytes: 0, max_bytes: config.max_size, daemon_running: false });
  await initHash();
  const store = await LocalStore.open({ dir: join(config.dir, 'store'), maxBytes: config.max_size, sweepOnOpen: false });
  try {
    const counters = new Counters();
    const raw = await store.sublevel(STATS_SUBLEVEL).get(STATS_KEY);
    if (raw !== undefined) {
      const parsed = StatsRecord.safeParse(typeof raw === 'string' ? JSON.parse(raw) : raw);
      if (parsed.success) counters.restore(parsed.data);
    }
    if (zero) {
      counters.zero();
      await store.sublevel(STATS_SUBLEVEL).put(STATS_KEY, JSON.stringify(counters.snapshot()));
    }
    const s = store.summary();
    return counters.view({ entries: s.entries, store_bytes: s.bytes, max_bytes: config.max_size, daemon_running: false });
  } finally {
    await store.close();
  }
}
