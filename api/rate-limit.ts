/** Per-principal token buckets: a burst, then a steady rate; excess requests get 429 with Retry-After. */
import { AppError, type Principal } from '../contracts';
export interface RateLimiterOptions {
  /** Sustained requests per minute per principal. */
  perMinute: number;
  /** Requests allowed at once before the rate applies. */
  burst: number;
  now?: () => number;
  /** Buckets idle this long are forgotten (bounded memory). */
  idleMs?: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private lastSweep = 0;

  constructor(private readonly opts: RateLimiterOptions) {}

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  /** Takes one token for `key`; returns 0 when allowed, else the seconds until a token is free. */
  take(key: string): number {
    const now = this.now();
    this.sweep(now);
    const ratePerMs = this.opts.perMinute / 60_000;
    const b = this.buckets.get(key) ?? { tokens: this.opts.burst, at: now };
    b.tokens = Math.min(this.opts.burst, b.tokens + (now - b.at) * ratePerMs);
    b.at = now;
    this.buckets.set(key, b);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - b.tokens) / ratePerMs / 1000));
  }

  private sweep(now: number): void {
    const idle = this.opts.idleMs ?? 10 * 60_000;
    if (now - this.lastSweep < idle) return;
    this.lastSweep = now;
    for (const [k, b] of this.buckets) if (now - b.at > idle) this.buckets.delete(k);
  }
}

/** Takes a token for the principal (HTTP and gRPC alike); throws 429 `rate_limited` with Retry-After when none is left. */
export function enforceRateLimit(
  limiter: RateLimiter | undefined,
  p: Principal,
  onLimited?: () => void,
): void {
  const wait = limiter?.take(`${p.tenant}/${p.userId}`) ?? 0;
  if (wait === 0) return;
  onLimited?.();
  throw new AppError('rate_limited', `too many requests; retry in ${wait}s`, {
    headers: { 'Retry-After': String(wait) },
  });
}
