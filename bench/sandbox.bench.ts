/**
 * `npm run bench:sandbox`: prints sandbox figures (not a test; nothing is asserted).
 * 1. Docker driver create + exec(true) + stop + destroy (a run's lane: the workspace boundary stops
 *    the lane after its command) vs `docker run --rm --network none <image> true`, alternating so
 *    both see the same machine state; medians and their ratio.
 * 2. For a 10,000-file repository, alternating: a run workspace (activities/workspace: host-owned
 *    git dir, checkout, chown and refresh, and as root a loop-mounted quota filesystem) made and
 *    removed, vs the `git worktree add` + remove it replaced; medians and their ratio.
 * Only containers it creates (labelled choiros.managed=true, run id bench-*) are touched.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Docker from 'dockerode';
import pino from 'pino';
import { DockerSandboxDriver } from '../activities/sandbox/docker-driver';
import { Workspaces } from '../activities/workspace/workspace';

const run = promisify(execFile);
const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 15);
const WORKTREE_ITERATIONS = Number(process.env.BENCH_WORKTREE_ITERATIONS ?? 5);
const IMAGE = process.env.CHOIROS_SANDBOX_IMAGE ?? 'choiros-sandbox:local';

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] ?? 0) : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
};

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e6;
}

async function main(): Promise<void> {
  const docker = new Docker();
  const work = await mkdtemp(join(tmpdir(), 'choiros-bench-'));
  try {
    const workspace = join(work, 'ws');
    await mkdir(workspace);
    const driver = new DockerSandboxDriver(docker, {
      image: IMAGE,
      user: '10001:10001',
      memoryBytes: 512 * 1024 * 1024,
      nanoCpus: 1e9,
      pidsLimit: 256,
      tmpfsSizeMb: 64,
    });
    const id = `bench-${randomBytes(4).toString('hex')}`;
    const labels = {
      tenant: 'bench',
      userId: 'bench',
      runId: id,
      workItemId: 'bench',
      lane: 'execution' as const,
    };
    const driverTimes: number[] = [];
    const cliTimes: number[] = [];
    const noStopTimes: number[] = [];
    // One warm-up of each, not counted.
    for (let i = -1; i < ITERATIONS; i++) {
      const name = `choiros-run-${id}-${i + 1}`;
      const d = await timed(async () => {
        await driver.createExecutionSandbox({ name, workspace, labels });
        const o = await driver.exec(name, ['true'], { timeoutMs: 30_000 });
        if (o.exitCode !== 0) throw new Error(`true exited ${o.exitCode}`);
        await driver.stop(name);
        await driver.remove(name);
      });
      // The lifecycle before the workspace boundary stopped the lane: its cost, side by side.
      const n = await timed(async () => {
        await driver.createExecutionSandbox({ name: `${name}-nostop`, workspace, labels });
        const o = await driver.exec(`${name}-nostop`, ['true'], { timeoutMs: 30_000 });
        if (o.exitCode !== 0) throw new Error(`true exited ${o.exitCode}`);
        await driver.remove(`${name}-nostop`);
      });
      const c = await timed(() =>
        run('docker', [
          'run',
          '--rm',
          '--network',
          'none',
          '--label',
          'choiros.managed=true',
          '--label',
          `choiros.run-id=${id}`,
          IMAGE,
          'true',
        ]),
      );
      if (i >= 0) {
        driverTimes.push(d);
        noStopTimes.push(n);
        cliTimes.push(c);
      }
    }
    const md = median(driverTimes);
    const mc = median(cliTimes);
    console.log(`driver create+exec(true)+stop+destroy: median ${md.toFixed(0)} ms over ${ITERATIONS}`);
    console.log(`docker run --rm --network none true: median ${mc.toFixed(0)} ms over ${ITERATIONS}`);
    console.log(`driver create+exec(true)+destroy (no stop): median ${median(noStopTimes).toFixed(0)} ms`);
    console.log(
      `ratio driver/cli: ${(md / mc).toFixed(2)} (without the stop: ${(median(noStopTimes) / mc).toFixed(2)})`,
    );

    // A 10,000-file repository (100 directories of 100 small files), one commit.
    const repo = join(work, 'repo');
    await mkdir(repo);
    for (let d = 0; d < 100; d++) {
      const dir = join(repo, `d${d}`);
      await mkdir(dir);
      await Promise.all(
        Array.from({ length: 100 }, (_, f) => writeFile(join(dir, `f${f}.txt`), `file ${d}/${f}\n`)),
      );
    }
    const g = (...args: string[]) =>
      run('git', ['-c', 'user.name=b', '-c', 'user.email=b@example.invalid', ...args], {
        cwd: repo,
        maxBuffer: 1 << 26,
      });
    await g('init', '-q', '-b', 'main');
    await g('add', '.');
    await g('commit', '-qm', 'init');
    const workspaces = new Workspaces({
      root: join(work, 'worktrees'),
      mirrorRoot: join(work, 'mirrors'),
      sandboxUser: '10001:10001',
      quotaMb: Number(process.env.CHOIROS_WORKSPACE_QUOTA_MB ?? 1024),
      maxEntries: 100_000,
      maxBytes: 512 * 1024 * 1024,
      logger: pino({ level: 'silent' }),
    });
    const wtTimes: number[] = [];
    const wsTimes: number[] = [];
    for (let i = 0; i < WORKTREE_ITERATIONS; i++) {
      const wt = join(work, `wt-${i}`);
      wtTimes.push(
        await timed(async () => {
          await g('worktree', 'add', '-q', '-b', `bench-${i}`, wt, 'main');
          await g('worktree', 'remove', '--force', wt);
        }),
      );
      const runId = `bench-ws-${i}`;
      wsTimes.push(
        await timed(async () => {
          await workspaces.create({ runId, tenant: 'bench', repo, baseRef: 'main' });
          await workspaces.destroy({ runId, tenant: 'bench', repo, keepBranch: false });
        }),
      );
    }
    const mw = median(wtTimes);
    const ms = median(wsTimes);
    console.log(
      `git worktree add+remove, 10,000 files: median ${mw.toFixed(0)} ms over ${WORKTREE_ITERATIONS}`,
    );
    console.log(
      `workspace create+destroy (quota ${workspaces.quotaEnabled ? 'on' : 'off'}), 10,000 files: median ${ms.toFixed(0)} ms over ${WORKTREE_ITERATIONS}`,
    );
    console.log(`ratio workspace/worktree: ${(ms / mw).toFixed(2)}`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
