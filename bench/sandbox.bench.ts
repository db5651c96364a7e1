/**
 * `npm run bench:sandbox`: prints sandbox figures (not a test; nothing is asserted).
 * 0. Sandbox-ready with and without the warm pool (decision 0016), alternating: createSandbox
 *    through the real sandbox activities (workspace checked out, lane container there) until the
 *    lane can run its first command (a cold lane is started then, as exec would), p50 and p90; and
 *    the first `true` run in it. Pooled claims are measured at steady state: each waits (not timed)
 *    until the pool has refilled. Also the pool's background refill rate.
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
import { MockActivityEnvironment } from '@temporalio/testing';
import { VerifierCatalog } from '../contracts';
import { LocalArtifactStore } from '../activities/artifacts/local-store';
import { createSandboxActivities, workspacesFor } from '../activities/sandbox/activities';
import { DockerSandboxDriver } from '../activities/sandbox/docker-driver';
import { SandboxPool } from '../activities/sandbox/pool';
import { Workspaces } from '../activities/workspace/workspace';

const run = promisify(execFile);
const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 15);
const WORKTREE_ITERATIONS = Number(process.env.BENCH_WORKTREE_ITERATIONS ?? 5);
const IMAGE = process.env.CHOIROS_SANDBOX_IMAGE ?? 'choiros-sandbox:local';
const POOL_ITERATIONS = Number(process.env.BENCH_POOL_ITERATIONS ?? 30);
const POOL_SIZE = Number(process.env.BENCH_POOL_SIZE ?? 4);

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

const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? 0;
};

/** Section 0: sandbox-ready p50 with and without the warm pool, side by side. */
async function poolBench(docker: Docker, work: string): Promise<void> {
  const repo = join(work, 'pool-repo');
  await mkdir(repo);
  await writeFile(join(repo, 'README.md'), 'hello\n');
  await writeFile(join(repo, 'main.c'), 'int main(void) { return 0; }\n');
  await run('git', ['init', '-q', '-b', 'main'], { cwd: repo });
  await run('git', ['add', '.'], { cwd: repo });
  await run('git', ['-c', 'user.name=b', '-c', 'user.email=b@example.invalid', 'commit', '-qm', 'init'], {
    cwd: repo,
  });
  const driver = new DockerSandboxDriver(docker, {
    image: IMAGE,
    user: '10001:10001',
    memoryBytes: 512 * 1024 * 1024,
    nanoCpus: 1e9,
    pidsLimit: 256,
    tmpfsSizeMb: 64,
  });
  const logger = pino({ level: 'silent' });
  const base = (name: string) => ({
    worktreeRoot: join(work, name, 'worktrees'),
    mirrorRoot: join(work, name, 'mirrors'),
    sandboxUser: '10001:10001',
    workspace: { quotaMb: Number(process.env.CHOIROS_WORKSPACE_QUOTA_MB ?? 1024) },
    logger,
  });
  const pool = new SandboxPool({
    driver,
    workspaces: workspacesFor(base('warm')),
    root: base('warm').worktreeRoot,
    settings: { size: POOL_SIZE, refillConcurrency: 2 },
    logger,
  });
  const actsFor = (name: string, withPool: boolean) =>
    createSandboxActivities({
      ...base(name),
      driver,
      verifiers: new VerifierCatalog([]),
      hostId: 'bench',
      hostQueue: 'bench',
      image: IMAGE,
      artifacts: new LocalArtifactStore(join(work, name, 'artifacts')),
      maxLogBytes: 1024 * 1024,
      ...(withPool ? { pool } : {}),
    });
  const lanes = { cold: actsFor('cold', false), warm: actsFor('warm', true) };
  const act = <A extends unknown[], R>(fn: (...a: A) => Promise<R>, ...args: A): Promise<R> =>
    new MockActivityEnvironment().run(fn, ...args);
  const waitFull = async (): Promise<number> => {
    const t = Date.now();
    while (pool.size < POOL_SIZE) await new Promise((r) => setTimeout(r, 10));
    return Date.now() - t;
  };
  const times = {
    cold: { ready: [] as number[], first: [] as number[] },
    warm: { ready: [] as number[], first: [] as number[] },
  };
  let pooled = 0;
  try {
    const fill = await timed(async () => {
      await pool.start();
      await waitFull();
    });
    console.log(
      `pool fill from empty: ${POOL_SIZE} slots in ${fill.toFixed(0)} ms (${((POOL_SIZE * 1000) / fill).toFixed(1)} slots/s, refill concurrency 2)`,
    );
    for (let i = -1; i < POOL_ITERATIONS; i++) {
      for (const kind of ['cold', 'warm'] as const) {
        if (kind === 'warm') await waitFull(); // steady state: a full pool (the wait is not timed)
        const acts = lanes[kind];
        const runId = `bench-${kind}-${i + 1}-${randomBytes(3).toString('hex')}`;
        const container = `choiros-run-${runId}`;
        const t0 = process.hrtime.bigint();
        await act((x) => acts.createSandbox(x), {
          runId,
          tenant: 'bench',
          userId: 'bench',
          workItemId: 'bench',
          repo,
          baseRef: 'main',
        });
        // Ready when the lane can take its first command: a cold lane is started (as exec does).
        const info = await docker.getContainer(container).inspect();
        if (!info.State.Running) await docker.getContainer(container).start();
        const t1 = process.hrtime.bigint();
        const out = await act((x) => acts.execInSandbox(x), {
          sandboxId: runId,
          argv: ['true'],
          timeoutSeconds: 30,
        });
        const t2 = process.hrtime.bigint();
        if (out.exitCode !== 0) throw new Error(`true exited ${out.exitCode}`);
        if (i >= 0 && kind === 'warm' && info.Config.Labels['choiros.pool']) pooled += 1;
        await act((x) => acts.destroySandbox(x), { sandboxId: runId, repo, keepBranch: false });
        if (i >= 0) {
          times[kind].ready.push(Number(t1 - t0) / 1e6);
          times[kind].first.push(Number(t2 - t0) / 1e6);
        }
      }
    }
  } finally {
    await pool.stop();
  }
  for (const kind of ['cold', 'warm'] as const) {
    const label = kind === 'warm' ? `with the pool (size ${POOL_SIZE})` : 'without the pool';
    const r = times[kind].ready;
    const f = times[kind].first;
    console.log(
      `sandbox-ready ${label}: p50 ${median(r).toFixed(0)} ms, p90 ${quantile(r, 0.9).toFixed(0)} ms; ready + first \`true\`: p50 ${median(f).toFixed(0)} ms over ${r.length}`,
    );
  }
  console.log(
    `pooled lanes: ${pooled}/${POOL_ITERATIONS} served from the pool; ratio ready with/without: ${(median(times.warm.ready) / median(times.cold.ready)).toFixed(2)}`,
  );
}

async function main(): Promise<void> {
  const docker = new Docker();
  const work = await mkdtemp(join(tmpdir(), 'choiros-bench-'));
  try {
    await poolBench(docker, work);
    if (process.env.BENCH_POOL_ONLY === '1') return;
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
