import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { StoreFs } from './storeOptions.js';

/**
 * On-disk layout under the store directory:
 *   LAYOUT                     the layout version, decimal, one line
 *   v1/blobs/<2 hex>/<30 hex>  content-addressed output files
 *   v1/tmp/                    half-written files; emptied at every open
 *   v1/meta/                   LevelDB (sublevels below)
 */
export const LAYOUT_VERSION = 1;
export const LAYOUT_FILE = 'LAYOUT';

/** LevelDB sublevel names of layout 1. `app` holds the sublevels handed out by LocalStore.sublevel(). */
export const SUBLEVELS = {
  /** key → EntryRecord JSON */
  entries: 'entries',
  /** key → EntryInfo JSON (last use, accounted bytes, referenced blobs) */
  info: 'info',
  /** `<15-digit last-use ms>:<key>` → key, ascending = least recently used first */
  lru: 'lru',
  /** digest → { n: referencing entries, size } */
  refs: 'refs',
  /** totals: `bytes`, `entries` */
  meta: 'meta',
  app: 'app',
} as const;

export interface LayoutPaths {
  root: string;
  blobs: string;
  tmp: string;
  meta: string;
}

export function layoutPaths(dir: string): LayoutPaths {
  const root = join(dir, `v${LAYOUT_VERSION}`);
  return { root, blobs: join(root, 'blobs'), tmp: join(root, 'tmp'), meta: join(root, 'meta') };
}

/**
 * A step from layout `from` to layout `from + 1`. It runs before the LevelDB lock is taken,
 * so it must be idempotent (a crash mid-way re-runs it) and must not touch data of layout `to`
 * that another process could be using.
 */
export interface Migration {
  from: number;
  run(dir: string, fs: StoreFs): Promise<void>;
}

/** Every supported upgrade, one per older version. Layout 1 is the first; nothing to migrate yet. */
export const MIGRATIONS: readonly Migration[] = [];

export class LayoutError extends Error {
  override name = 'LayoutError';
}

export interface PrepareLayoutOptions {
  fs: StoreFs;
  /** Overridable for tests of the migration chain. */
  version?: number;
  migrations?: readonly Migration[];
}

/**
 * Makes `dir` hold a store of the current layout: initialises an empty or missing dir, runs the
 * migration chain for an older one. Throws LayoutError, deleting nothing, for a newer layout,
 * an unreadable LAYOUT, or a non-empty dir without a LAYOUT.
 */
export async function prepareLayout(dir: string, opts: PrepareLayoutOptions): Promise<void> {
  const { fs } = opts;
  const version = opts.version ?? LAYOUT_VERSION;
  const migrations = opts.migrations ?? MIGRATIONS;
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });

  let found = await readLayout(dir, fs);
  if (found === undefined) {
    const strays = (await fs.readdir(dir)).filter((n) => !n.startsWith(`${LAYOUT_FILE}.tmp-`));
    if (strays.length > 0) {
      throw new LayoutError(`${dir} has no ${LAYOUT_FILE} file but is not empty (${strays.slice(0, 3).join(', ')}…); ` + 'refusing to initialise a cache over foreign files');
    }
    await writeLayout(dir, fs, version);
    return;
  }
  if (found > version) {
    throw new LayoutError(
      `${dir} has layout ${found}, written by a newer ltocache; this build supports layout ${version}. ` + 'Nothing was changed: use a newer ltocache or another cache directory',
    );
  }
  while (found < version) {
    const step = migrations.find((m) => m.from === found);
    if (!step) throw new LayoutError(`${dir} has layout ${found}, and no migration from it exists`);
    await step.run(dir, fs);
    found += 1;
    await writeLayout(dir, fs, found);
  }
}

async function readLayout(dir: string, fs: StoreFs): Promise<number | undefined> {
  let text: string;
  try {
    text = (await fs.readFile(join(dir, LAYOUT_FILE))).toString('utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  const m = /^\s*([0-9]{1,6})\s*$/.exec(text);
  if (!m?.[1]) {
    throw new LayoutError(`${join(dir, LAYOUT_FILE)} is not a layout version (expected a number, found ${JSON.stringify(text.slice(0, 40))})`);
  }
  return Number(m[1]);
}

/** tmp + fsync + rename: a crash leaves the old LAYOUT or the new one, never a partial one. */
async function writeLayout(dir: string, fs: StoreFs, version: number): Promise<void> {
  const tmp = join(dir, `${LAYOUT_FILE}.tmp-${randomBytes(6).toString('hex')}`);
  const data = Buffer.from(`${version}\n`);
  try {
    const fh = await fs.open(tmp, 'wx');
    try {
      await fh.write(data, 0, data.length, 0);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, join(dir, LAYOUT_FILE));
  } catch (e) {
    await fs.unlink(tmp).catch(() => {});
    throw e;
  }
}
