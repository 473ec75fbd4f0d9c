import { existsSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { LayoutError } from './layout.js';
import { LocalStore } from './localStore.js';
import { StoreLockedError } from './metaDb.js';
import type { StoreOptionsInput } from './storeOptions.js';

/**
 * Errors of the machine, not of the store's data (a full disk, no file descriptors, no
 * permission, a read-only file system): the store is left as it is, and the open fails.
 */
const ENVIRONMENTAL = /ENOSPC|No space left|EMFILE|ENFILE|Too many open files|EACCES|EPERM|Permission denied|EROFS|Read-only file system|ENOMEM|Cannot allocate memory/i;

/** An error's message with its causes', for matching. */
function messages(e: unknown): string {
  const parts: string[] = [];
  for (let c: unknown = e, i = 0; c && i < 5; c = (c as { cause?: unknown }).cause, i++) {
    parts.push(String((c as { message?: unknown }).message ?? c), String((c as { code?: unknown }).code ?? ''));
  }
  return parts.join(' ');
}

/**
 * Opens the store; metadata LevelDB that cannot be opened for a reason of its own (corrupt or
 * deleted files) is moved aside as `meta.corrupt-<ms>` (older such copies removed) and
 * re-initialised empty, with a clear log line: the blobs it referenced become orphans the
 * background sweep removes, and jobs recompile. A locked store (another daemon), an unknown layout
 * version and errors of the machine (ENVIRONMENTAL) leave it untouched and are thrown.
 */
export async function openStoreWithRecovery(
  options: StoreOptionsInput & { dir: string },
  log: { error(m: string, f?: Record<string, unknown>): void },
  open: (o: StoreOptionsInput) => Promise<LocalStore> = (o) => LocalStore.open(o),
): Promise<LocalStore> {
  const v1 = join(options.dir, 'v1');
  try {
    return await open(options);
  } catch (e) {
    if (e instanceof StoreLockedError || e instanceof LayoutError || !existsSync(join(v1, 'meta')) || ENVIRONMENTAL.test(messages(e))) throw e;
    const aside = join(v1, `meta.corrupt-${Date.now()}`);
    log.error('store metadata unreadable; moving it aside and starting with an empty store', { error: String(e), moved_to: aside });
    for (const n of readdirSync(v1)) if (n.startsWith('meta.corrupt-')) rmSync(join(v1, n), { recursive: true, force: true });
    renameSync(join(v1, 'meta'), aside);
    return await open(options);
  }
}
