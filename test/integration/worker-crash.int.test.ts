/**
 * Durability: the worker process is SIGKILLed in the middle of a run's command and a new one is
 * started on the same host; the run completes, every step's outcome is recorded once and the run's
 * events are gap- and duplicate-free. The workers are real child processes (worker/main.ts).
 */
import { existsSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import Docker from 'dockerode';
import type { NatsConnection } from 'nats';
import type { RunView } from '../../contracts';
import { connectNats, env, git, makeGitRepo, poll, startTestApi, type TestApi } from '../helpers/integration';
import { apiClient, expectGapFree, readRunEvents } from '../helpers/runs';
import { spawnWorkerProcess, type WorkerProcess } from '../helpers/worker-process';

let api: TestApi;
let nats: NatsConnection;
const docker = new Docker();
const hostId = `it-crash-${randomUUID().slice(0, 8)}`;
let dataDir: string;
const children: WorkerProcess[] = [];

/** Starts worker/main.ts (the production entry point) as its own process group; resolves once it polls. */
async function startWorkerProcess(): Promise<WorkerProcess> {
  const w = await spawnWorkerProcess({
    hostId,
    dataDir,
    name: `crash-${children.length}`,
    extraTenants: [`crash-${hostId.slice(-8)}`],
  });
  children.push(w);
  return w;
}

beforeAll(async () => {
  dataDir = await mkdtemp(join(env.workDir(), `data-${hostId}-`));
  api = await startTestApi();
  nats = await connectNats(env.apiCreds(), 'test-crash-reader');
});

afterAll(async () => {
  for (const c of children) await c.signal('SIGTERM');
  await api?.stop();
  await nats?.drain();
});

test('when the worker is SIGKILLed mid-command and started again, then the run commits, each step is recorded once and its events are gap- and duplicate-free', async () => {
  const client = apiClient(api);
  const token = await api.token({ sub: 'alice', tenant: `crash-${hostId.slice(-8)}` });
  const repo = await makeGitRepo();
  const first = await startWorkerProcess();

  const res = await client.call<RunView>('POST', '/v1/runs', {
    token,
    key: randomUUID(),
    body: {
      repo: repo.path,
      workItem: {
        description: 'survive a crash',
        execute: ['sh', '-c', 'sleep 5; echo done > RESULT.txt'],
        requiredVerifiers: ['V-RESULT-FILE'],
      },
    },
  });
  expect(res.status).toBe(201);
  const runId = res.body.runId;
  await client.waitStatus(runId, token, 'running', 90_000);
  await poll(
    async () => {
      const top = await docker
        .getContainer(`choiros-run-${runId}`)
        .top()
        .catch(() => ({ Processes: [] as string[][] }));
      return (top as { Processes: string[][] }).Processes.some((p) => p.join(' ').includes('sleep 5'));
    },
    (yes) => yes,
    30_000,
  );

  await first.signal('SIGKILL');
  await startWorkerProcess();

  // The lost execute attempt is retried after its heartbeat timeout (30 s) on the new worker.
  const done = await client.waitTerminal(runId, token, 180_000);
  expect(done.status).toBe('committed');
  expect(git(repo.path, 'show', `${done.commit}:RESULT.txt`)).toBe('done');

  const history = await api.client.workflow.getHandle(runId).fetchHistory();
  const scheduled = new Map<string, string>();
  const completed: string[] = [];
  for (const e of history.events ?? []) {
    const s = e.activityTaskScheduledEventAttributes;
    if (s) scheduled.set(String(e.eventId), s.activityType?.name ?? '');
    const c = e.activityTaskCompletedEventAttributes;
    if (c) completed.push(scheduled.get(String(c.scheduledEventId)) ?? '?');
  }
  const count = (name: string): number => completed.filter((n) => n === name).length;
  // The lean run shape (decision 0015): execute returns the plan; commit, removal and release are one step.
  for (const step of ['createSandboxStep', 'executeStep', 'verifyStep', 'finishStep']) {
    expect({ step, completions: count(step) }).toEqual({ step, completions: 1 });
  }

  const events = await readRunEvents(nats, { tenant: `crash-${hostId.slice(-8)}`, userId: 'alice' }, runId);
  expectGapFree(events);
  expect(new Set(events.map((e) => e.id)).size).toBe(events.length);
  for (const type of [
    'run.created',
    'sandbox.created',
    'run.execution.completed',
    'receipt.verifier.attestations',
    'receipt.commit',
    'sandbox.destroyed',
    'run.completed',
  ]) {
    expect({ type, n: events.filter((e) => e.event_type === type).length }).toEqual({ type, n: 1 });
  }
  const containers = await docker.listContainers({
    all: true,
    filters: { label: [`choiros.run-id=${runId}`] },
  });
  expect(containers).toHaveLength(0);
  expect(existsSync(join(dataDir, 'worktrees', runId))).toBe(false);
});
