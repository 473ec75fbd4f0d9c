import type { Digest } from '../key/hash.js';
import type { CacheBackend, DeleteResult, PutResult, ScopeMemoList, StoredEntry } from '../store/backend.js';

/**
 * Background uploads: `put` enqueues and returns at once; a single worker drains the queue into
 * the wrapped backend. When the queue is full the entry is dropped (a cache is allowed to forget).
 */
export class UploadQueue implements CacheBackend {
  readonly name: string;
  /** Entries, and team memos queued after the entry they describe (one worker keeps the order). */
  private readonly queue: ({ key: Digest; entry: StoredEntry } | { key: Digest; memo: Buffer })[] = [];
  private running = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly target: CacheBackend & { putMemo?(scope: Digest, memo: Buffer): Promise<PutResult> },
    private readonly capacity: number,
    private readonly onResult: (r: PutResult | { kind: 'dropped' }) => void,
    private readonly onMemo?: (r: PutResult) => void,
  ) {
    this.name = `queued(${target.name})`;
  }

  get(key: Digest) {
    return this.target.get(key);
  }
  touch(key: Digest) {
    return this.target.touch(key);
  }
  async scopeMemos(scope: Digest): Promise<ScopeMemoList | null> {
    return (await this.target.scopeMemos?.(scope)) ?? null;
  }

  /** Drops queued uploads of the key (they are what was found bad), then deletes it at once. */
  delete(key: Digest): Promise<DeleteResult> {
    for (let i = this.queue.length - 1; i >= 0; i--) if (this.queue[i]!.key === key && 'entry' in this.queue[i]!) this.queue.splice(i, 1);
    return this.target.delete(key);
  }

  async put(key: Digest, entry: StoredEntry): Promise<PutResult> {
    if (this.queue.length >= this.capacity) {
      this.onResult({ kind: 'dropped' });
      return { kind: 'refused', reason: 'upload queue full' };
    }
    this.queue.push({ key, entry });
    if (!this.running) void this.drain();
    return { kind: 'stored' };
  }

  /** Queues a team memo behind the uploads queued so far; dropped silently when the queue is full. */
  async shareMemo(scope: Digest, memo: Buffer): Promise<void> {
    if (!this.target.putMemo || this.queue.length >= this.capacity) return;
    this.queue.push({ key: scope, memo });
    if (!this.running) void this.drain();
  }

  private async drain(): Promise<void> {
    this.running = true;
    while (this.queue.length) {
      const job = this.queue.shift()!;
      let r: PutResult;
      try {
        r = 'memo' in job ? await this.target.putMemo!(job.key, job.memo) : await this.target.put(job.key, job.entry);
      } catch (e) {
        r = { kind: 'error', error: (e as Error).message };
      }
      if ('memo' in job) this.onMemo?.(r);
      else this.onResult(r);
    }
    this.running = false;
    for (const w of this.idleWaiters.splice(0)) w();
  }

  get length(): number {
    return this.queue.length;
  }

  /** Resolves when the queue is empty (for shutdown and tests). */
  idle(): Promise<void> {
    if (!this.running && !this.queue.length) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }
}
