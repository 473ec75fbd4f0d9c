/**
 * How long a compile slot may be held while a job waits for one before it is taken back. A
 * client stopped mid-compile (Ctrl-Z, a debugger, a frozen cgroup) holds its slot with no end,
 * and every other build using the daemon would wait on it; a compile that really runs this long
 * only lets one more run beside it.
 */
export const SLOT_STUCK_MS = 10_000;

interface Holder {
  since: number;
}

interface Waiter {
  grant: (h: Holder) => void;
  timer?: NodeJS.Timeout;
}

/** Counting semaphore for the compile concurrency limit, with slots of stuck holders taken back. */
export class Semaphore {
  private readonly waiters: Waiter[] = [];
  private readonly holders = new Set<Holder>();

  constructor(
    private readonly limit: number,
    private readonly stuckMs = SLOT_STUCK_MS,
    /** Told how many slots were just taken back. */
    private readonly onReclaim?: (n: number) => void,
  ) {}

  /** Resolves with the slot's release; a release after the slot was taken back does nothing. */
  async acquire(): Promise<() => void> {
    const h = this.holders.size < this.limit ? this.hold() : await this.wait();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (this.holders.delete(h)) this.grantFree();
    };
  }

  get active(): number {
    return this.holders.size;
  }

  private hold(): Holder {
    const h = { since: Date.now() };
    this.holders.add(h);
    return h;
  }

  private wait(): Promise<Holder> {
    return new Promise((grant) => {
      const w: Waiter = { grant };
      this.waiters.push(w);
      this.arm(w);
    });
  }

  private arm(w: Waiter): void {
    w.timer = setTimeout(() => this.reclaim(w), this.stuckMs);
  }

  private grantFree(): void {
    while (this.waiters.length && this.holders.size < this.limit) {
      const w = this.waiters.shift()!;
      clearTimeout(w.timer);
      w.grant(this.hold());
    }
  }

  /** `w` has waited stuckMs: slots held at least that long are taken back. */
  private reclaim(w: Waiter): void {
    const cutoff = Date.now() - this.stuckMs;
    let n = 0;
    for (const h of [...this.holders]) {
      if (h.since > cutoff) continue;
      this.holders.delete(h);
      n++;
    }
    if (n) this.onReclaim?.(n);
    this.grantFree();
    if (this.waiters.includes(w)) this.arm(w);
  }
}
