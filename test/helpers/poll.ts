/** Polling instead of sleeping: tests wait for a condition, never for a fixed time. */

/** Polls `fn` until `until(value)` holds; fails with the last value after `timeoutMs`. */
export async function poll<T>(
  fn: () => Promise<T>,
  until: (v: T) => boolean,
  timeoutMs = 60_000,
  intervalMs = 250,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  for (;;) {
    last = await fn();
    if (until(last)) return last;
    if (Date.now() > deadline) throw new Error(`poll timed out; last value: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
