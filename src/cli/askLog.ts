import { join } from 'node:path';
import type { Config } from '../config/config.js';
import { answerFromLog } from '../explain/answerFromLog.js';
import { JobLog } from '../jobLog/jobLog.js';
import { initHash } from '../key/hash.js';
import type { ControlRequest } from '../protocol/control.js';
import { LocalStore } from '../store/localStore.js';
import { askDaemon } from './controlClient.js';

/**
 * A job-log question: asked of the running daemon, else answered from the store on disk.
 * Throws with the daemon's message when the daemon answered with a failure.
 */
export async function askLog(config: Config, req: ControlRequest): Promise<unknown> {
  const r = await askDaemon(config.dir, req);
  if (r.kind === 'ok') return r.result;
  if (r.kind === 'failed') throw new Error(r.error);
  await initHash();
  const store = await LocalStore.open({ dir: join(config.dir, 'store'), maxBytes: config.max_size });
  try {
    return await answerFromLog(new JobLog(store, config.build_gap_ms), req);
  } finally {
    await store.close();
  }
}
