/**
 * Warm sandbox pool (decision 0016) against the real Docker engine, git and quota filesystems: each
 * pool container serves one run and is gone after it, the pool refills with new containers, a
 * pooled lane is hardened exactly as a cold one, stale images are never handed out, a cancelled run
 * returns nothing to the pool, and a stopped or killed worker leaves no pool containers behind.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdtemp, readFile, readdir, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { WorkflowFailedError } from '@temporalio/client';
import Docker from 'dockerode';
import pino from 'pino';
import { VerifierCatalog, type RunView } from '../../contracts';
import { LocalArtifactStore } from '../../activities/artifacts/local-store';
import {
  createSandboxActivities,
  workspacesFor,
  type SandboxDeps,
} from '../../activities/sandbox/activities';
import { DockerSandboxDriver, LABELS } from '../../activities/sandbox/docker-driver';
import { LEASE_STALE_MS, SHARED_LANE, SandboxPool } from '../../activities/sandbox/pool';
import { HOST_LABEL, sweepOrphans } from '../../activities/sandbox/sweeper';
import { createStepActivities } from '../../activities/steps/activities';
import type { SandboxActivities } from '../../activities/types';
import {
  env,
  git,
  makeGitRepo,
  poll,
  startTestApi,
  startTestWorker,
  type TestApi,
  type TestWorker,
} from '../helpers/integration';

const docker = new Docker();
const suffix = randomBytes(4).toString('hex');
const hostId = `it-pool-${suffix}`;
const silent = pino({ level: 'silent' });
const owner = { tenant: 'acme', userId: 'alice', workItemId: `wi-${suffix}` };
const pools: SandboxPool[] = [];
const TENANT_SECRETS: Record<string, Record<string, string>> = { globex: { GLOBEX_TOKEN: 'globex-secret' } };
const testImages: string[] = [];

function run<A extends unknown[], R>(fn: (...a: A) => Promise<R>, ...args: A): Promise<R> {
  return new MockActivityEnvironment().run(fn, ...args);
}

function driverFor(image: string): DockerSandboxDriver {
  return new DockerSandboxDriver(docker, {
    image,
    user: '10001:10001',
    memoryBytes: 128 * 1024 * 1024,
    nanoCpus: 1e9,
    pidsLimit: 64,
    tmpfsSizeMb: 16,
    executionEnv: { CHOIROS_IT_PLATFORM: 'platform' },
    extraLabels: { [HOST_LABEL]: hostId },
  });
}

/** Sandbox activities and a pool of `size` over one data dir, as the worker wires them. */
async function stack(size: number, image = env.sandboxImage(), lanes: Record<string, number> = {}) {
  const dataDir = await mkdtemp(join(env.workDir(), 'data-pool-'));
  const driver = driverFor(image);
  const base = {
    worktreeRoot: join(dataDir, 'worktrees'),
    mirrorRoot: join(dataDir, 'mirrors'),
    sandboxUser: '10001:10001',
    workspace: { quotaMb: 64, maxEntries: 1000, maxBytes: 4 * 1024 * 1024 },
    logger: silent,
  };
  const pool = new SandboxPool({
    driver,
    workspaces: workspacesFor(base),
    root: base.worktreeRoot,
    settings: { size, lanes, refillConcurrency: 2 },
    laneEnv: (tenant) => TENANT_SECRETS[tenant] ?? {},
    logger: silent,
  });
  pools.push(pool);
  const deps: SandboxDeps = {
    ...base,
    driver,
    verifiers: new VerifierCatalog([]),
    hostId,
    hostQueue: `choiros-sandbox-${hostId}`,
    image,
    artifacts: new LocalArtifactStore(join(dataDir, 'artifacts')),
    maxLogBytes: 1024 * 1024,
    tenantSecrets: TENANT_SECRETS,
    pool,
  };
  const acts: SandboxActivities = createSandboxActivities(deps);
  return { dataDir, root: base.worktreeRoot, driver, pool, acts };
}

/** The pool's idle containers on the engine: name → id. */
async function idleContainers(poolId: string): Promise<Map<string, string>> {
  const list = await docker.listContainers({ all: true, filters: { label: [`${LABELS.pool}=${poolId}`] } });
  return new Map(
    list
      .map((c) => [(c.Names[0] ?? '').replace(/^\//, ''), c.Id] as const)
      .filter(([n]) => n.startsWith('choiros-pool-')),
  );
}

const full = (pool: SandboxPool, size: number) =>
  poll(
    async () => ({ ready: pool.size, idle: (await idleContainers(pool.id)).size }),
    (s) => s.ready === size && s.idle === size,
    60_000,
  );

const containerId = (name: string): Promise<string | undefined> =>
  docker
    .getContainer(name)
    .inspect()
    .then(
      (i) => i.Id,
      () => undefined,
    );

afterAll(async () => {
  for (const p of pools) await p.stop();
  for (const image of testImages)
    await docker
      .getImage(image)
      .remove({ force: true })
      .catch(() => undefined);
  // Nothing this file's pools made is left on the engine.
  const left = await docker.listContainers({ all: true, filters: { label: [`${HOST_LABEL}=${hostId}`] } });
  expect(left.map((c) => c.Names)).toEqual([]);
});

describe('a pool container serves one run', () => {
  test('when N runs claim sandboxes, then they get N distinct pool containers, each gone after its run, and the pool refills with new ones', async () => {
    const s = await stack(2);
    await s.pool.start();
    await full(s.pool, 2);
    const seen = new Set((await idleContainers(s.pool.id)).values());
    const repo = await makeGitRepo({ 'README.md': 'hello\n' });
    const used: string[] = [];
    for (let i = 0; i < 4; i++) {
      // Waits for a ready slot each time: the refill, not a cold create, serves every run here.
      await full(s.pool, 2);
      for (const id of (await idleContainers(s.pool.id)).values()) seen.add(id);
      const runId = `pool-${suffix}-${i}`;
      const handle = await run((x) => s.acts.createSandbox(x), {
        runId,
        ...owner,
        repo: repo.path,
        baseRef: 'main',
      });
      expect(handle.branch).toBe(`choiros/run/${runId}`);
      const id = await containerId(`choiros-run-${runId}`);
      expect(id).toBeDefined();
      // It was one of the pool's idle containers, made and started before the run existed.
      expect(seen.has(id ?? '')).toBe(true);
      expect(used).not.toContain(id);
      used.push(id ?? '');
      // It is no longer the pool's: not under its idle name, not in its idle list.
      expect([...(await idleContainers(s.pool.id)).values()]).not.toContain(id);

      const out = await run((x) => s.acts.execInSandbox(x), {
        sandboxId: runId,
        argv: ['sh', '-c', `cat README.md && echo ${i} > RESULT.txt && id -u && ls -A /workspace`],
        timeoutSeconds: 30,
      });
      expect(out.exitCode).toBe(0);
      // The run's checkout is what the pooled lane sees, as the sandbox user.
      expect(out.outputTail).toContain('hello');
      expect(out.outputTail).toContain('10001');
      const plan = await run((x) => s.acts.planVerifiers(x), {
        sandboxId: runId,
        mood: 'CALM' as const,
        required: [],
        riskTier: 'low' as const,
      });
      expect(plan.touchedPaths).toEqual(['RESULT.txt']);
      // Released once its command is done (a run waiting for approval holds no container).
      expect(await containerId(`choiros-run-${runId}`)).toBeUndefined();
      expect(
        await docker
          .getContainer(id ?? '')
          .inspect()
          .catch((e: { statusCode?: number }) => e.statusCode),
      ).toBe(404);
      const commit = await run((x) => s.acts.commitSandbox(x), {
        sandboxId: runId,
        message: `run ${i}`,
        authorName: 'Alice',
        authorEmail: 'alice@example.invalid',
      });
      expect(commit.changedPaths).toEqual(['RESULT.txt']);
      expect(git(repo.path, 'show', `${commit.commit}:RESULT.txt`)).toBe(String(i));
      await run((x) => s.acts.destroySandbox(x), { sandboxId: runId, repo: repo.path, keepBranch: false });
      expect(existsSync(join(s.root, runId))).toBe(false);
      // The slot's name (a link to the run's directory) went with it.
      expect(await links(join(s.root, '.pool'))).toEqual([]);
    }
    expect(new Set(used).size).toBe(4);
    // Refilled with containers no run has had.
    const after = await full(s.pool, 2);
    expect(after.idle).toBe(2);
    for (const id of (await idleContainers(s.pool.id)).values()) expect(used).not.toContain(id);
  });

  test('when the same slot is adopted twice, then the second adoption fails (the rename is atomic on the engine)', async () => {
    const s = await stack(1);
    await s.pool.start();
    await full(s.pool, 1);
    const slot = s.pool.claim(SHARED_LANE, await s.driver.imageId(), true);
    expect(slot).toBeDefined();
    if (!slot) return;
    // The claim is synchronous: the next claim in this process does not see the slot.
    expect(s.pool.claim(SHARED_LANE, await s.driver.imageId(), true)?.slot).not.toBe(slot.slot);
    expect(await s.driver.adoptPoolSandbox(slot.container, `choiros-run-adopt-a-${suffix}`)).toBe(true);
    expect(await s.driver.adoptPoolSandbox(slot.container, `choiros-run-adopt-b-${suffix}`)).toBe(false);
    expect(await containerId(`choiros-run-adopt-b-${suffix}`)).toBeUndefined();
    await s.driver.remove(`choiros-run-adopt-a-${suffix}`);
    await s.pool.release(slot);
  });

  test('when a run needs its tenant secrets and its tenant has no pool lane, then its lane is made for it and the pool keeps its slots', async () => {
    const s = await stack(1);
    await s.pool.start();
    await full(s.pool, 1);
    const before = [...(await idleContainers(s.pool.id)).values()];
    const repo = await makeGitRepo();
    const runId = `pool-globex-${suffix}`;
    await run((x) => s.acts.createSandbox(x), {
      runId,
      tenant: 'globex',
      userId: 'bob',
      workItemId: 'wi',
      repo: repo.path,
      baseRef: 'main',
    });
    const info = await docker.getContainer(`choiros-run-${runId}`).inspect();
    expect(before).not.toContain(info.Id);
    expect(info.Config.Labels[LABELS.runId]).toBe(runId);
    expect(info.Config.Env).toContain('GLOBEX_TOKEN=globex-secret');
    expect([...(await idleContainers(s.pool.id)).values()]).toEqual(before);
    await run((x) => s.acts.destroySandbox(x), { sandboxId: runId, repo: repo.path, keepBranch: false });
  });
});

describe('tenant lanes', () => {
  test("when a tenant with secrets has a pool lane, then its run gets that lane's container, with its secrets, and no other tenant does", async () => {
    const s = await stack(1, env.sandboxImage(), { globex: 1 });
    await s.pool.start();
    await poll(
      async () => [s.pool.idleIn(SHARED_LANE), s.pool.idleIn('globex')].join(','),
      (v) => v === '1,1',
      60_000,
    );
    const lanes = await docker.listContainers({
      all: true,
      filters: { label: [`${LABELS.pool}=${s.pool.id}`, `${LABELS.poolLane}=globex`] },
    });
    expect(lanes).toHaveLength(1);
    const globexLane = lanes[0]?.Id ?? '';
    const repo = await makeGitRepo();
    // A tenant without secrets draws from the shared lane, never from globex's.
    const acmeRun = `pool-lane-acme-${suffix}`;
    await run((x) => s.acts.createSandbox(x), { runId: acmeRun, ...owner, repo: repo.path, baseRef: 'main' });
    const acme = await docker.getContainer(`choiros-run-${acmeRun}`).inspect();
    expect(acme.Id).not.toBe(globexLane);
    expect(acme.Config.Env.join('\n')).not.toContain('GLOBEX_TOKEN');
    const globexRun = `pool-lane-globex-${suffix}`;
    await run((x) => s.acts.createSandbox(x), {
      runId: globexRun,
      tenant: 'globex',
      userId: 'bob',
      workItemId: 'wi',
      repo: repo.path,
      baseRef: 'main',
    });
    const globex = await docker.getContainer(`choiros-run-${globexRun}`).inspect();
    expect(globex.Id).toBe(globexLane);
    expect(globex.Config.Env).toContain('GLOBEX_TOKEN=globex-secret');
    const out = await run((x) => s.acts.execInSandbox(x), {
      sandboxId: globexRun,
      argv: ['sh', '-c', 'echo "token=$GLOBEX_TOKEN"'],
      timeoutSeconds: 30,
    });
    expect(out.outputTail).toBe('token=globex-secret\n');
    for (const runId of [acmeRun, globexRun]) {
      await run((x) => s.acts.destroySandbox(x), { sandboxId: runId, repo: repo.path, keepBranch: false });
    }
  });
});

describe('hardening', () => {
  test('when a lane comes from the pool, then its container config is exactly a cold lane’s but for name, labels and mount source', async () => {
    const s = await stack(1);
    const repo = await makeGitRepo();
    // A cold lane: the pool is not started, so it has nothing to give.
    const cold = `pool-cold-${suffix}`;
    await run((x) => s.acts.createSandbox(x), { runId: cold, ...owner, repo: repo.path, baseRef: 'main' });
    await s.pool.start();
    await full(s.pool, 1);
    const warm = `pool-warm-${suffix}`;
    await run((x) => s.acts.createSandbox(x), { runId: warm, ...owner, repo: repo.path, baseRef: 'main' });
    const a = await docker.getContainer(`choiros-run-${cold}`).inspect();
    const b = await docker.getContainer(`choiros-run-${warm}`).inspect();
    expect(b.Config.Labels[LABELS.pool]).toBe(s.pool.id);
    const shape = (i: Docker.ContainerInspectInfo) => ({
      image: i.Image,
      user: i.Config.User,
      env: i.Config.Env,
      cmd: i.Config.Cmd,
      workingDir: i.Config.WorkingDir,
      networkDisabled: (i.Config as { NetworkDisabled?: boolean }).NetworkDisabled ?? false,
      host: {
        ...i.HostConfig,
        Binds: (i.HostConfig.Binds ?? []).map((bind) => bind.replace(/^[^:]+:/, '<tree>:')),
      },
    });
    expect(shape(b)).toEqual(shape(a));
    expect(a.HostConfig).toMatchObject({
      NetworkMode: 'none',
      CapDrop: ['ALL'],
      SecurityOpt: ['no-new-privileges'],
      ReadonlyRootfs: true,
      PidsLimit: 64,
      Memory: 128 * 1024 * 1024,
    });
    // The pooled lane's /workspace is the run's tree (its quota filesystem), not the slot's.
    const out = await run((x) => s.acts.execInSandbox(x), {
      sandboxId: warm,
      argv: ['sh', '-c', 'cat README.md; touch /probe 2>&1; df -m /workspace | tail -1'],
      timeoutSeconds: 30,
    });
    expect(out.outputTail).toContain('hello');
    expect(out.outputTail).toMatch(/Read-only file system/);
    expect(out.outputTail).toMatch(/\s6\d\s/); // the 64 MiB quota filesystem
    // A retried command (after a worker or engine restart) starts the stopped lane again: the bind
    // is resolved anew from the slot's old path, which leads to the run's tree.
    expect((await docker.getContainer(`choiros-run-${warm}`).inspect()).State.Running).toBe(false);
    await run((x) => s.acts.execInSandbox(x), {
      sandboxId: warm,
      argv: ['sh', '-c', 'echo 1 > A'],
      timeoutSeconds: 30,
    });
    const again = await run((x) => s.acts.execInSandbox(x), {
      sandboxId: warm,
      argv: ['sh', '-c', 'cat A README.md'],
      timeoutSeconds: 30,
    });
    expect(again.outputTail).toBe('1\nhello\n');
    expect(await readFile(join(s.root, warm, 'tree', 'A'), 'utf8')).toBe('1\n');
    for (const runId of [cold, warm]) {
      await run((x) => s.acts.destroySandbox(x), { sandboxId: runId, repo: repo.path, keepBranch: false });
    }
  });
});

describe('images', () => {
  test('when the sandbox image is rebuilt, then pool containers of the old image are not handed out and the pool refills on the new one', async () => {
    const tag = `choiros-pool-it-${suffix}:latest`;
    testImages.push(tag);
    execFileSync('docker', ['tag', env.sandboxImage(), tag]);
    const s = await stack(2, tag);
    await s.pool.start();
    await full(s.pool, 2);
    const old = [...(await idleContainers(s.pool.id)).values()];
    const oldImage = await s.driver.imageId();
    // A rebuild: the tag now names another image.
    execFileSync('docker', ['build', '-q', '-t', tag, '-'], {
      input: `FROM ${env.sandboxImage()}\nLABEL choiros.it.pool="${suffix}"\n`,
    });
    const newImage = await s.driver.imageId();
    expect(newImage).not.toBe(oldImage);
    testImages.push(newImage);
    const repo = await makeGitRepo();
    const runId = `pool-img-${suffix}`;
    await run((x) => s.acts.createSandbox(x), { runId, ...owner, repo: repo.path, baseRef: 'main' });
    const info = await docker.getContainer(`choiros-run-${runId}`).inspect();
    expect(old).not.toContain(info.Id);
    expect(info.Image).toBe(newImage);
    await run((x) => s.acts.destroySandbox(x), { sandboxId: runId, repo: repo.path, keepBranch: false });
    // The stale ones are removed; the refill runs the new image.
    await poll(
      async () => Promise.all(old.map((id) => containerId(id))),
      (ids) => ids.every((id) => id === undefined),
      30_000,
    );
    await full(s.pool, 2);
    for (const id of (await idleContainers(s.pool.id)).values()) {
      expect((await docker.getContainer(id).inspect()).Image).toBe(newImage);
    }
  });
});

describe('worker shutdown and restart', () => {
  test('when a pool stops, then its containers and slots are gone; when a worker dies, then the next pool and the sweeper remove what it left', async () => {
    const s = await stack(2);
    await s.pool.start();
    await full(s.pool, 2);
    await s.pool.stop();
    expect((await idleContainers(s.pool.id)).size).toBe(0);
    expect(await readdir(join(s.root, '.pool'))).toEqual([]);

    // A worker killed with its pool full: nothing removed, the lease goes stale.
    // Another worker's pool over the same data dir (a restart).
    const poolOfAnotherWorker = (): SandboxPool => {
      const p = new SandboxPool({
        driver: s.driver,
        workspaces: workspacesFor({
          worktreeRoot: s.root,
          mirrorRoot: join(s.dataDir, 'mirrors'),
          sandboxUser: '10001:10001',
          workspace: { quotaMb: 64 },
          logger: silent,
        }),
        root: s.root,
        settings: { size: 2, refillConcurrency: 2 },
        logger: silent,
      });
      pools.push(p);
      return p;
    };
    const dead = poolOfAnotherWorker();
    await dead.start();
    await full(dead, 2);
    dead.abandon();
    const past = new Date(Date.now() - 2 * LEASE_STALE_MS);
    await utimes(join(s.root, '.pool', `${dead.id}.lease`), past, past);
    const slotsOf = async (p: SandboxPool) =>
      (await readdir(join(s.root, '.pool'))).filter((e) => e.startsWith(`${p.id}-`) || e === `${p.id}.lease`);
    expect(await slotsOf(dead)).toHaveLength(3);

    // The next worker's pool removes them at start.
    const next = poolOfAnotherWorker();
    await next.start();
    expect((await idleContainers(dead.id)).size).toBe(0);
    expect(await slotsOf(dead)).toEqual([]);
    expect(await readFileMounts()).not.toContain(`/.pool/${dead.id}-`);
    await full(next, 2);
    // One of its containers was claimed by a run this host never heard of.
    const claimed = next.claim(SHARED_LANE, await s.driver.imageId(), true);
    const orphanRun = `pool-orphan-${suffix}`;
    expect(await s.driver.adoptPoolSandbox(claimed?.container ?? '', `choiros-run-${orphanRun}`)).toBe(true);

    // And the orphan sweeper removes a dead pool's leftovers too, keeping live pools'.
    next.abandon();
    await utimes(join(s.root, '.pool', `${next.id}.lease`), past, past);
    const swept = await sweepOrphans({
      docker,
      hostId,
      worktreeRoot: s.root,
      graceMs: 0,
      runState: () => Promise.resolve('unknown'),
      logger: silent,
      pools: { driver: s.driver },
    });
    // The claimed one is known by its run's name and removed as that run's orphan.
    expect(swept.containers).toEqual([`choiros-run-${orphanRun}`]);
    expect(swept.pool.containers.length).toBeGreaterThanOrEqual(1);
    await poll(
      async () => ({ idle: (await idleContainers(next.id)).size, slots: await slotsOf(next) }),
      (l) => l.idle === 0 && l.slots.length === 0,
      30_000,
    );
  });
});

/** Symbolic links in a directory (a claimed slot's name while its run's directory exists). */
async function links(dir: string): Promise<string[]> {
  return (await readdir(dir, { withFileTypes: true })).filter((e) => e.isSymbolicLink()).map((e) => e.name);
}

async function readFileMounts(): Promise<string> {
  return execFileSync('cat', ['/proc/self/mountinfo'], { encoding: 'utf8' });
}

describe('through the API, with a worker whose pool is on', () => {
  let api: TestApi;
  let worker: TestWorker;

  beforeAll(async () => {
    worker = await startTestWorker(hostId, { extraEnv: { CHOIROS_SANDBOX_POOL_SIZE: '2' } });
    api = await startTestApi();
  });

  afterAll(async () => {
    await api?.stop();
    await worker?.stop();
  });

  async function startRun(repo: string, execute: string[], mood = 'CALM'): Promise<string> {
    const res = await fetch(`${api.url}/v1/runs`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${await api.token()}`,
        'idempotency-key': `pool-${randomBytes(8).toString('hex')}`,
      },
      body: JSON.stringify({
        repo,
        baseRef: 'main',
        mood,
        workItem: {
          description: 'pool test',
          execute,
          requiredVerifiers: ['V-RESULT-FILE'],
          riskTier: 'low',
        },
      }),
    });
    expect(res.status).toBe(201);
    return ((await res.json()) as RunView).runId;
  }

  const getRun = async (runId: string): Promise<RunView> =>
    (await (
      await fetch(`${api.url}/v1/runs/${runId}`, {
        headers: { authorization: `Bearer ${await api.token()}` },
      })
    ).json()) as RunView;

  /** The worker's pool: its containers carry its root label. */
  const workerPool = async () => {
    const root = join(worker.dataDir, 'worktrees');
    const list = await docker.listContainers({
      all: true,
      filters: { label: [`${LABELS.poolRoot}=${root}`] },
    });
    return list.map((c) => ({ name: (c.Names[0] ?? '').replace(/^\//, ''), id: c.Id }));
  };

  test('when a run commits, then its lane was a pool container and nothing of it stays', async () => {
    await poll(workerPool, (l) => l.length === 2, 60_000);
    const idle = (await workerPool()).map((c) => c.id);
    const repo = await makeGitRepo();
    const runId = await startRun(repo.path, ['sh', '-c', 'echo ok > RESULT.txt']);
    const view = await poll(
      () => getRun(runId),
      (v) => ['committed', 'discarded', 'failed', 'cancelled'].includes(v.status),
      120_000,
    );
    expect(view.status).toBe('committed');
    expect(git(repo.path, 'show', `choiros/run/${runId}:RESULT.txt`)).toBe('ok');
    await poll(
      workerPool,
      (l) => l.length === 2 && l.every((c) => c.name.startsWith('choiros-pool-')),
      60_000,
    );
    // One of the idle containers served it and is gone; the pool holds a new one in its place.
    const now = (await workerPool()).map((c) => c.id);
    expect(idle.filter((id) => !now.includes(id))).toHaveLength(1);
  });

  test('when a run waits for approval, then it holds no container (its lane is gone, the pool is whole)', async () => {
    await poll(workerPool, (l) => l.length === 2, 60_000);
    const repo = await makeGitRepo();
    // PARANOID needs an independent review after its verifiers pass.
    const runId = await startRun(repo.path, ['sh', '-c', 'echo ok > RESULT.txt'], 'PARANOID');
    const view = await poll(
      () => getRun(runId),
      (v) => ['awaiting_approval', 'committed', 'discarded', 'failed', 'cancelled'].includes(v.status),
      120_000,
    );
    expect(view.status).toBe('awaiting_approval');
    expect(await containerId(`choiros-run-${runId}`)).toBeUndefined();
    const runContainers = await docker.listContainers({ all: true, filters: { name: [runId] } });
    expect(runContainers.map((c) => c.Names)).toEqual([]);
    // Its tree is kept for the commit; only containers are released.
    expect(existsSync(join(worker.dataDir, 'worktrees', runId, 'tree'))).toBe(true);
    await poll(
      workerPool,
      (l) => l.length === 2 && l.every((c) => c.name.startsWith('choiros-pool-')),
      60_000,
    );
    await api.client.workflow.getHandle(runId).cancel();
    const poolDir = join(worker.dataDir, 'worktrees', '.pool');
    await poll(
      async () => ({
        dir: existsSync(join(worker.dataDir, 'worktrees', runId)),
        links: await links(poolDir),
      }),
      (s) => !s.dir && s.links.length === 0,
      30_000,
    );
  });

  test('when a run is cancelled mid-execute, then nothing of it is left and the pool holds only fresh containers', async () => {
    await poll(workerPool, (l) => l.length === 2, 60_000);
    const idle = new Set((await workerPool()).map((c) => c.id));
    const repo = await makeGitRepo();
    const runId = await startRun(repo.path, ['sh', '-c', 'echo dirty > /workspace/DIRTY; sleep 600']);
    const lane = `choiros-run-${runId}`;
    const laneId = await poll(
      async () => {
        const top = await docker
          .getContainer(lane)
          .top()
          .catch(() => ({ Processes: [] as string[][] }));
        const busy = (top as { Processes: string[][] }).Processes.some((p) =>
          p.join(' ').includes('sleep 600'),
        );
        return busy ? await containerId(lane) : undefined;
      },
      (id) => id !== undefined,
      60_000,
    );
    // The run's command runs in a pool container.
    expect(idle.has(laneId ?? '')).toBe(true);

    await api.client.workflow.getHandle(runId).cancel();
    await expect(api.client.workflow.getHandle(runId).result()).rejects.toBeInstanceOf(WorkflowFailedError);
    const worktree = join(worker.dataDir, 'worktrees', runId);
    await poll(
      async () => ({ lane: await containerId(laneId ?? ''), worktree: existsSync(worktree) }),
      (s) => s.lane === undefined && !s.worktree,
      30_000,
    );
    expect((await getRun(runId)).status).toBe('cancelled');
    await poll(
      workerPool,
      (l) => l.length === 2 && l.every((c) => c.name.startsWith('choiros-pool-')),
      60_000,
    );
    const poolDir = join(worker.dataDir, 'worktrees', '.pool');
    for (const c of await workerPool()) {
      expect(c.id).not.toBe(laneId);
      const info = await docker.getContainer(c.id).inspect();
      // Never used: no command was ever executed in it, and its tree is empty.
      expect(info.ExecIDs ?? []).toEqual([]);
      expect(info.State.Running).toBe(true);
      const slot = c.name.replace('choiros-pool-', '');
      expect((await lstat(join(poolDir, slot))).isDirectory()).toBe(true);
      expect((await readdir(join(poolDir, slot, 'tree'))).filter((e) => e !== 'lost+found')).toEqual([]);
    }
    // No slot link is left over for the cancelled run (destroy removes it after the directory).
    await poll(
      () => links(poolDir),
      (l) => l.length === 0,
      10_000,
    );
  });
});

describe('the finish step, retried', () => {
  test('when a worker died after the finish step committed and removed the workspace, then the retry answers with that commit instead of failing the run', async () => {
    const s = await stack(0);
    const steps = createStepActivities({ sandbox: s.acts, carry: async () => 0, logger: silent });
    const repo = await makeGitRepo({ 'README.md': 'hello\n' });
    const runId = `finish-${suffix}`;
    await run((x) => s.acts.createSandbox(x), { runId, ...owner, repo: repo.path, baseRef: 'main' });
    const out = await run((x) => s.acts.execInSandbox(x), {
      sandboxId: runId,
      argv: ['sh', '-c', 'echo done > RESULT.txt'],
      timeoutSeconds: 30,
    });
    expect(out.exitCode).toBe(0);
    const finish = {
      input: {
        commit: { sandboxId: runId, message: 'm', authorName: 'alice', authorEmail: 'alice@acme.invalid' },
        destroy: { sandboxId: runId, tenant: 'acme', repo: repo.path, keepBranch: true },
      },
      events: [],
    };
    const first = await run((x) => steps.finishStep(x), finish);
    expect(first.value.commit?.changedPaths).toEqual(['RESULT.txt']);
    expect(first.value.removed).toContain('worktree');
    // The same step again, as Temporal retries it when the worker died before answering.
    const again = await run((x) => steps.finishStep(x), finish);
    expect(again.value.commit).toEqual(first.value.commit);
    expect(again.value.removed).toEqual([]);
    expect(git(repo.path, 'rev-parse', `choiros/run/${runId}`)).toBe(first.value.commit?.commit);

    // Without the run's branch (a discarded run), a missing workspace still fails the commit.
    const other = `finish-none-${suffix}`;
    await expect(
      run((x) => steps.finishStep(x), {
        ...finish,
        input: {
          commit: { ...finish.input.commit, sandboxId: other },
          destroy: { ...finish.input.destroy, sandboxId: other },
        },
      }),
    ).rejects.toMatchObject({ type: 'sandbox_not_found' });
  });
});
