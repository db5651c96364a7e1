/**
 * Self-replacement safety (docs/decisions/0008): workers run as child processes here, so a test can
 * kill one (SIGKILL: a crash in the middle of an image build) or replace one (SIGTERM, then a new
 * worker with another build id: what a deploy of the platform's own worker does). Rebuilds and runs
 * in flight continue on the new worker, replay-safe, and a resumed rebuild deploys once.
 */
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import Docker from 'dockerode';
import type { NatsConnection } from 'nats';
import { parseRebuildId, rebuildWorkflowId, type RunView } from '../../contracts';
import { connectNats, env, git, makeGitRepo, poll, startTestApi, type TestApi } from '../helpers/integration';
import {
  cleanupDocker,
  health,
  makeRebuildFixture,
  rebuildApi,
  type RebuildFixture,
} from '../helpers/rebuild-fixture';
import { readRunEvents } from '../helpers/runs';
import { spawnWorkerProcess, writeWorkflowBundle, type WorkerProcess } from '../helpers/worker-process';

const id = `sw${randomUUID().slice(0, 8)}`;
const docker = new Docker();
let api: TestApi;
let nats: NatsConnection;
let killFx: RebuildFixture;
let swapFx: RebuildFixture;
let rb: ReturnType<typeof rebuildApi>;
let bundlePath: string;
const children = new Set<ChildProcess>();

/** Starts the worker set in a child process with its own build id; resolves once it polls. */
async function spawnWorker(buildId: string, hostId: string, dataDir: string): Promise<WorkerProcess> {
  const w = await spawnWorkerProcess({
    bundlePath,
    hostId,
    dataDir,
    name: buildId,
    // A replaced worker hands its in-flight activities back at once (what this test is about).
    extraEnv: { CHOIROS_BUILD_ID: buildId, CHOIROS_SHUTDOWN_GRACE_SECONDS: '0' },
  });
  children.add(w.proc);
  void w.exited.then(() => children.delete(w.proc));
  return w;
}

/** Build ids stamped on the workflow tasks of an execution, in order, and whether any task failed. */
async function taskBuildIds(
  workflowId: string,
  runId?: string,
): Promise<{ buildIds: string[]; failedTasks: number }> {
  const history = await api.client.workflow.getHandle(workflowId, runId).fetchHistory();
  const buildIds: string[] = [];
  let failedTasks = 0;
  for (const e of history.events ?? []) {
    const attrs = e.workflowTaskCompletedEventAttributes;
    const buildId = attrs?.deploymentVersion?.buildId ?? attrs?.workerVersion?.buildId;
    if (buildId && buildIds[buildIds.length - 1] !== buildId) buildIds.push(buildId);
    if (e.workflowTaskFailedEventAttributes) failedTasks += 1;
  }
  return { buildIds, failedTasks };
}

beforeAll(async () => {
  bundlePath = await writeWorkflowBundle();
  // The api image's build sleeps long enough to be killed in the middle of it.
  killFx = await makeRebuildFixture(id, `kill-${id}`, {}, { SLOW: '15' });
  swapFx = await makeRebuildFixture(id, `swap-${id}`, {}, {}, { workerStartFirst: true });
  api = await startTestApi({
    rebuildTargets: [killFx.target, swapFx.target],
    rebuildTimings: { buildHeartbeatSeconds: 4 },
  });
  nats = await connectNats(env.apiCreds(), 'test-rebuild-swap-reader');
  rb = rebuildApi(api);
}, 180_000);

// A test that fails half-way must not leave its worker polling for the next one.
afterEach(async () => {
  const exits = [...children].map((c) => new Promise((r) => c.once('exit', r)));
  for (const c of children) c.kill('SIGKILL');
  await Promise.all(exits);
});

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await api?.stop();
  await nats?.drain();
  await cleanupDocker(docker, id);
}, 120_000);

test('when the worker is killed during the image build, then the pipeline resumes on another worker and completes with one deploy', async () => {
  const dataDir = await mkdtemp(join(env.workDir(), 'data-kill-'));
  const first = await spawnWorker(`kill-old-${id}`, `kill-${id}`, dataDir);
  const started = await rb.start({ target: killFx.target.name, ref: 'main' });
  expect(started.status).toBe(201);
  const rebuildId = started.body.rebuildId;

  // Build progress (heartbeat details) is visible through the API while the api image builds.
  const building = await poll(
    () => rb.get(rebuildId),
    (r) => r.body.progress?.activity === 'buildImage' && Number(r.body.progress.step) >= 2,
    180_000,
  );
  expect(building.body.stage).toBe('building');
  expect(building.body.progress).toMatchObject({ image: 'api', totalSteps: expect.any(Number) });

  first.proc.kill('SIGKILL');
  await first.exited;
  const second = await spawnWorker(`kill-new-${id}`, `kill-${id}`, dataDir);
  try {
    await rb.waitStage(rebuildId, ['awaiting_approval'], 240_000);
    await rb.decide(rebuildId, 'approve');
    const done = await rb.waitStage(rebuildId, ['completed', 'rolled_back', 'failed'], 120_000);
    expect(done.stage).toBe('completed');
    expect(await health(killFx.ports.api)).toEqual({ status: 200, version: killFx.commits.main });

    // The build was retried (attempt > 1) and the release deployed exactly once.
    const parsed = parseRebuildId(rebuildId)!;
    const history = await api.client.workflow
      .getHandle(rebuildWorkflowId(killFx.target.name), parsed.runId)
      .fetchHistory();
    const scheduled = new Map<string, string>();
    for (const e of history.events ?? []) {
      const s = e.activityTaskScheduledEventAttributes;
      if (s) scheduled.set(String(e.eventId), s.activityType?.name ?? '');
    }
    const buildAttempts = (history.events ?? [])
      .filter(
        (e) =>
          e.activityTaskStartedEventAttributes &&
          scheduled.get(String(e.activityTaskStartedEventAttributes.scheduledEventId)) === 'buildImage',
      )
      .map((e) => e.activityTaskStartedEventAttributes?.attempt ?? 1);
    expect(Math.max(...buildAttempts)).toBeGreaterThan(1);
    const events = await readRunEvents(nats, { tenant: 'acme', userId: 'rm-alice' }, rebuildId);
    expect(
      events.filter((e) => e.event_type === 'rebuild.deploy.service').map((e) => e.payload.service),
    ).toEqual(['api', 'worker']);
    const apiContainers = await docker.listContainers({
      all: true,
      filters: {
        label: [
          `choiros.test=${id}`,
          'choiros.deploy.service=api',
          `choiros.rebuild.target=${killFx.target.name}`,
        ],
      },
    });
    expect(apiContainers).toHaveLength(1);
    expect(apiContainers[0]?.Labels['choiros.deploy.rebuild-id']).toBe(rebuildId);
  } finally {
    second.proc.kill('SIGTERM');
    await second.exited;
  }
}, 600_000);

test('when the worker is replaced while a run and the rebuild are in flight, then both complete on the new build, replay-safe', async () => {
  const dataDir = await mkdtemp(join(env.workDir(), 'data-swap-'));
  const hostId = `swap-${id}`;
  const oldBuild = `old-${id}`;
  const newBuild = `new-${id}`;
  const old = await spawnWorker(oldBuild, hostId, dataDir);

  // A run started before the rebuild, still executing when the worker is swapped.
  const repo = await makeGitRepo();
  const runRes = await fetch(`${api.url}/v1/runs`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${await api.token()}` },
    body: JSON.stringify({
      repo: repo.path,
      baseRef: 'main',
      mood: 'CALM',
      workItem: {
        description: 'a long run across the swap',
        execute: ['sh', '-c', 'sleep 25; echo done > RESULT.txt'],
        requiredVerifiers: ['V-RESULT-FILE'],
        riskTier: 'low',
      },
    }),
  });
  expect(runRes.status).toBe(201);
  const runId = ((await runRes.json()) as RunView).runId;
  const getRun = async (): Promise<RunView> =>
    (await (
      await fetch(`${api.url}/v1/runs/${runId}`, {
        headers: { authorization: `Bearer ${await api.token()}` },
      })
    ).json()) as RunView;
  await poll(getRun, (v) => v.status === 'running', 60_000);

  const started = await rb.start({ target: swapFx.target.name, ref: 'main' });
  expect(started.status).toBe(201);
  const rebuildId = started.body.rebuildId;
  await poll(
    () => rb.get(rebuildId),
    (r) => ['building', 'awaiting_approval'].includes(r.body.stage),
    120_000,
  );
  expect((await getRun()).status).toBe('running');

  // The swap: the old worker is stopped the way a deploy stops a container, a new build takes over.
  old.proc.kill('SIGTERM');
  await old.exited;
  const next = await spawnWorker(newBuild, hostId, dataDir);
  try {
    await rb.waitStage(rebuildId, ['awaiting_approval'], 180_000);
    await rb.decide(rebuildId, 'approve');
    const done = await rb.waitStage(rebuildId, ['completed', 'rolled_back', 'failed'], 120_000);
    expect(done.stage).toBe('completed');
    expect(await health(swapFx.ports.api)).toEqual({ status: 200, version: swapFx.commits.main });
    // The worker service was started beside the old one (start-first) and the old one is gone.
    const worker = await docker.getContainer(`choiros-swap-${id}-worker`).inspect();
    expect(worker.State.Running).toBe(true);
    expect(worker.Config.Labels?.['choiros.rebuild.commit']).toBe(swapFx.commits.main);
    await expect(docker.getContainer(`choiros-swap-${id}-worker-prev`).inspect()).rejects.toMatchObject({
      statusCode: 404,
    });

    const run = await poll(
      getRun,
      (v) => ['committed', 'discarded', 'failed', 'cancelled'].includes(v.status),
      180_000,
    );
    expect({ status: run.status, error: run.error }).toEqual({ status: 'committed', error: undefined });
    expect(git(repo.path, 'show', `${run.branch ?? ''}:RESULT.txt`)).toBe('done');

    // Both executions were driven by the old build first and the new build after the swap, and
    // no workflow task failed (a non-deterministic change would fail tasks on the new build).
    const runTasks = await taskBuildIds(runId);
    expect(runTasks).toEqual({ buildIds: [oldBuild, newBuild], failedTasks: 0 });
    const rebuildTasks = await taskBuildIds(
      rebuildWorkflowId(swapFx.target.name),
      parseRebuildId(rebuildId)!.runId,
    );
    expect(rebuildTasks).toEqual({ buildIds: [oldBuild, newBuild], failedTasks: 0 });
  } finally {
    next.proc.kill('SIGTERM');
    await next.exited;
  }
}, 600_000);
