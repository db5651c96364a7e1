/** Heartbeating on a clock, for activity steps that can go quiet for a long time. */
import { Context } from '@temporalio/activity';

/**
 * Runs `fn` while the activity heartbeats `details()` at once and then every `intervalMs`, so a
 * lost worker is noticed within the heartbeat timeout even when the step itself reports nothing
 * (a long Dockerfile RUN, a health check, creating a sandbox). The SDK throttles what it sends.
 */
export async function heartbeatWhile<T>(
  details: () => unknown,
  intervalMs: number,
  fn: () => Promise<T>,
): Promise<T> {
  const ctx = Context.current();
  ctx.heartbeat(details());
  const beat = setInterval(() => ctx.heartbeat(details()), intervalMs);
  try {
    return await fn();
  } finally {
    clearInterval(beat);
  }
}
