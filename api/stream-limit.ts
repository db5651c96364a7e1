/** Concurrent event streams (SSE and gRPC WatchRun together) per principal: one more is a 429. */
import { AppError, type Principal } from '../contracts';

export class StreamLimiter {
  private readonly open = new Map<string, number>();

  /** `limitFor` answers a principal's cap (the tenant's `caps.eventStreamsPerPrincipal`, or the platform's). */
  constructor(private readonly limitFor: (p: Principal) => number) {}

  /**
   * Counts one open stream of `p`, or throws `429 rate_limited` at the cap. Call the returned
   * function exactly once when the stream ends.
   */
  acquire(p: Principal): () => void {
    const key = `${p.tenant}\0${p.userId}`;
    const n = this.open.get(key) ?? 0;
    const limit = this.limitFor(p);
    if (n >= limit)
      throw new AppError(
        'rate_limited',
        `at most ${limit} event streams may be open at once per principal; close one first`,
        { headers: { 'Retry-After': '5' } },
      );
    this.open.set(key, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.open.get(key) ?? 1) - 1;
      if (left <= 0) this.open.delete(key);
      else this.open.set(key, left);
    };
  }
}
