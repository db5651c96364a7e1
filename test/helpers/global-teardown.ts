/** Stops every service the integration global setup started, newest first, and removes its work dir. */
import { rm } from 'node:fs/promises';

export default async function globalTeardown(): Promise<void> {
  const stack = globalThis.__choirosTestStack;
  if (!stack) return;
  await stack.stopEnv?.();
  for (const p of [...stack.processes].reverse()) await p.stop(p.name === 'dockerd' ? 20_000 : 10_000);
  const work = process.env.CHOIROS_TEST_WORK_DIR;
  if (work && process.env.CHOIROS_TEST_KEEP !== '1') await rm(work, { recursive: true, force: true });
}
