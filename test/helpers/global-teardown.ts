/** Stops every service the integration global setup started, newest first. */
export default async function globalTeardown(): Promise<void> {
  const stack = globalThis.__choirosTestStack;
  if (!stack) return;
  await stack.stopEnv?.();
  for (const p of [...stack.processes].reverse()) await p.stop(p.name === 'dockerd' ? 20_000 : 10_000);
}
