import type { AbstractSublevel } from 'abstract-level';
import { Level } from 'level';
import { z } from 'zod';
import { errorMessage } from '../util/errorMessage.js';

/** The store's LevelDB (layout.ts `meta/`): string keys, values as encoded by each sublevel. */
export type Db = Level<string, string>;
export type Sub = AbstractSublevel<Db, string | Buffer | Uint8Array, string, string>;
export type BatchOp = { type: 'put'; sublevel: Sub; key: string; value: string } | { type: 'del'; sublevel: Sub; key: string };

export class StoreLockedError extends Error {
  override name = 'StoreLockedError';
  constructor(
    readonly dir: string,
    cause: unknown,
  ) {
    super(`cache store ${dir} is in use by another process (its LevelDB lock is held)`, { cause });
  }
}

/** Opens the LevelDB at `path`, the metadata of the store in `dir`; StoreLockedError when another process holds its lock. */
export async function openMetaDb(dir: string, path: string): Promise<Db> {
  const db: Db = new Level<string, string>(path, { valueEncoding: 'utf8' });
  try {
    await db.open();
  } catch (e) {
    const cause = (e as { cause?: { code?: string } }).cause;
    if (cause?.code === 'LEVEL_LOCKED') throw new StoreLockedError(dir, e);
    throw e;
  }
  return db;
}

export type Read<T> = { kind: 'absent' } | { kind: 'invalid'; detail: string } | { kind: 'ok'; value: T };

/**
 * Point reads of the store's LevelDB are synchronous: a key is in the memtable or a cached block
 * (a few µs), while an asynchronous get costs a thread-pool round trip of ~40 µs of CPU across
 * two threads. A read that misses the caches blocks the event loop for one block read.
 */
export function readJson<T>(sub: Sub, key: string, schema: z.ZodType<T>): Read<T> {
  const raw = sub.getSync(key);
  if (raw === undefined) return { kind: 'absent' };
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (e) {
    return { kind: 'invalid', detail: `not JSON (${errorMessage(e)})` };
  }
  const r = schema.safeParse(parsed);
  return r.success ? { kind: 'ok', value: r.data } : { kind: 'invalid', detail: z.prettifyError(r.error) };
}

/** The root-level write methods of abstract-level: every write, sublevels' included, ends in one. */
const WRITE_METHODS = ['_put', '_del', '_batch', '_clear'] as const;

/**
 * Makes `db` refuse every write after its first failed one, calling `failed` once with that
 * error. LevelDB's log writer advances its block offset even when an append fails (a full
 * disk): records written after it are misaligned, and the recovery at the next open drops them,
 * acknowledged entries, refcounts and totals included. Refusing keeps the log a clean prefix of
 * what was acknowledged; a reopen recovers it and takes writes again.
 */
export function refuseWritesAfterFailure(db: Db, failed: (e: Error) => void): void {
  let first: Error | null = null;
  const methods = db as unknown as Record<(typeof WRITE_METHODS)[number], (...args: unknown[]) => Promise<unknown>>;
  for (const name of WRITE_METHODS) {
    const write = methods[name].bind(db);
    methods[name] = async (...args: unknown[]) => {
      if (first) throw new Error(`store metadata takes no writes until it is reopened, after: ${first.message}`, { cause: first });
      try {
        return await write(...args);
      } catch (e) {
        if (!first) {
          first = e instanceof Error ? e : new Error(String(e));
          failed(first);
        }
        throw e;
      }
    };
  }
}
