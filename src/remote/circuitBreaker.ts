/**
 * Skips a failing dependency for a while: after `threshold` consecutive failures the circuit
 * opens for `cooldownMs` (doubling on each failed probe, up to `maxCooldownMs`); then one probe
 * is let through, and a success closes it again.
 */
export class CircuitBreaker {
  private failures = 0;
  private openUntil = 0;
  private cooldown: number;
  private probing = false;

  constructor(
    private readonly threshold = 2,
    private readonly baseCooldownMs = 10_000,
    private readonly maxCooldownMs = 300_000,
    private readonly now: () => number = Date.now,
  ) {
    this.cooldown = baseCooldownMs;
  }

  /** May a request go through now? */
  allow(): boolean {
    if (this.failures < this.threshold) return true;
    if (this.now() < this.openUntil || this.probing) return false;
    this.probing = true;
    return true;
  }

  success(): void {
    this.failures = 0;
    this.probing = false;
    this.cooldown = this.baseCooldownMs;
  }

  /** The request let through ended without asking the dependency (refused locally): the next may probe. */
  release(): void {
    this.probing = false;
  }

  failure(): void {
    this.failures++;
    if (this.probing) this.cooldown = Math.min(this.cooldown * 2, this.maxCooldownMs);
    this.probing = false;
    if (this.failures >= this.threshold) this.openUntil = this.now() + this.cooldown;
  }

  get open(): boolean {
    return this.failures >= this.threshold && this.now() < this.openUntil;
  }
}
