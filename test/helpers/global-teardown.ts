/** Stops every service the integration global setup started, newest first, and removes its work dir. */
import { readFile, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { removeRunDir } from '../../activities/workspace/workspace';

export default async function globalTeardown(): Promise<void> {
  const stack = globalThis.__choirosTestStack;
  if (!stack) return;
  await stack.stopEnv?.();
  for (const p of [...stack.processes].reverse()) await p.stop(p.name === 'dockerd' ? 20_000 : 10_000);
  const work = process.env.CHOIROS_TEST_WORK_DIR;
  if (work && process.env.CHOIROS_TEST_KEEP !== '1') {
    // A worker killed mid-run (crash tests) leaves its run's tree filesystem mounted: unmount every
    // run directory under the work dir the way the sweeper would, then remove the rest.
    const mounts = (await readFile('/proc/self/mountinfo', 'utf8').catch(() => ''))
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((m) => m.startsWith(`${work}/`) && m.endsWith('/tree'));
    for (const tree of mounts) await removeRunDir(dirname(tree)).catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}
