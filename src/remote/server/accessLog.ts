import { createWriteStream, openSync, type WriteStream } from 'node:fs';
import type { ErrorCode } from '../../protocol/remote.js';
import { errorMessage } from '../../util/errorMessage.js';
import type { Logger } from '../../util/log.js';

/** What the access log records as a request's outcome: an `error` code sent, or one of these. */
export type AccessResult =
  | ErrorCode
  | 'ok'
  | 'welcome'
  | 'hit'
  | 'miss'
  | 'miss-too-large'
  | 'stored'
  | 'aborted'
  | 'error'
  | 'no-token'
  | 'bad-token'
  | 'too-many-clients'
  | 'bad-frame';

export interface AccessEntry {
  op: string;
  token: string | null;
  key: string | null;
  result: AccessResult;
  bytes: number;
  ms: number;
  remote: string;
}

/** One JSON line per connection attempt and request; stops (with a warning) on a write error. */
export class AccessLog {
  private out: WriteStream | null = null;

  /** Opens `path` for appending (created 0640); without a path nothing is logged. */
  constructor(path: string | null | undefined, log: Pick<Logger, 'warn'>) {
    if (!path) return;
    const fd = openSync(path, 'a', 0o640);
    this.out = createWriteStream(path, { fd });
    this.out.on('error', (e) => {
      log.warn('access log write failed; access logging stopped', { error: errorMessage(e) });
      this.out = null;
    });
  }

  write(e: AccessEntry): void {
    if (!this.out) return;
    const line = { time: new Date().toISOString(), token: e.token, op: e.op, key: e.key, result: e.result, bytes: e.bytes, ms: Math.round(e.ms * 10) / 10, remote: e.remote };
    this.out.write(JSON.stringify(line) + '\n');
  }

  close(): Promise<void> {
    const out = this.out;
    this.out = null;
    return out ? new Promise<void>((res) => out.end(() => res())) : Promise.resolve();
  }
}
