import type { Logger } from '../../util/log.js';
import type { ServerStorage, StorageErrorSink } from '../server/serverStorage.js';
import { DirStorage } from './dirStorage.js';
import { RedisStorage } from './redisStorage.js';

/** A `--dir` directory or a `--storage` Redis URL (exactly one is set; the options have checked that). */
export function openStorage(where: { dir: string | null; storage: string | null; maxBytes: number }, onError: StorageErrorSink, log: Pick<Logger, 'warn'>): Promise<ServerStorage> {
  if (where.storage) return RedisStorage.open(where.storage, onError, log);
  return DirStorage.open(where.dir!, where.maxBytes, onError);
}
