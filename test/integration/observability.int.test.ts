/**
 * Metrics and graceful shutdown of the real worker process (worker/process.ts) against the real
 * Temporal dev server, NATS and Docker: `/metrics` scraped during and after a run shows the run
 * counted, its work item, verifier and sandbox, the event flush lag and the Temporal SDK's metrics;
 * the API's histograms are filled; a SIGTERMed worker finishes its in-flight command before exiting.
 */
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { type NatsConnection } from 'nats';
import { freePort } from '../../infra/stack/process';
import { connectNats, env, makeGitRepo, poll, startTestApi, type TestApi } from '../helpers/integration';
import { apiClient, expectGapFree, readRunEvents } from '../helpers/runs';
import { spawnWorkerProcess, writeWorkflowBundle, type WorkerProcess } from '../helpers/worker-process';

let api: TestApi;
let nats: NatsConnection;
let bundlePath: string;
const workers = new Set<WorkerProcess>();
const id = Math.random().toString(36).slice(2, 8);

beforeAll(async () => {
  bundlePath = await writeWorkflowBundle();
  api = await startTestApi();
  nats = await connectNats(env.apiCreds(), 'test-observability');
});

afterAll(async () => {
  for (const w of workers) await w.signal('SIGKILL');
  await api?.stop();
  await nats?.drain();
});

async function startWorker(name: string, extraEnv: Record<string, string>, dataDir: string, hostId: string) {
  const w = await spawnWorkerProcess({ bundlePath, hostId, dataDir, name, extraEnv });
  workers.add(w);
  void w.exited.then(() => workers.delete(w));
  return w;
}

/** The value of one sample of a Prometheus text exposition (labels must match exactly the given ones). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^([^{\s]+)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const got: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) got[k!] = v!;
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return undefined;
}

const scrape = async (url: string): Promise<string> => {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  return res.text();
};

const runRequest = (repo: string, execute: string) => ({
  repo,
  baseRef: 'main',
  mood: 'CALM',
  workItem: {
    description: 'observability',
    execute: ['sh', '-c', execute],
    requiredVerifiers: ['V-RESULT-FILE'],
    riskTier: 'low',
  },
});

test('worker and API /metrics count a run: during it a sandbox and a started run, after it the outcome, durations and flush lag', async () => {
  const hostId = `obs-${id}`;
  const dataDir = await mkdtemp(join(env.workDir(), 'data-obs-'));
  const metricsPort = await freePort();
  const worker = await startWorker('obs', { CHOIROS_METRICS_PORT: String(metricsPort) }, dataDir, hostId);
  expect(worker.metricsPort).toBe(metricsPort);
  const workerMetrics = `http://127.0.0.1:${metricsPort}/metrics`;
  const client = apiClient(api);
  const token = await api.token({ sub: `obs-${id}` });
  const repo = await makeGitRepo();

  const before = await scrape(workerMetrics);
  expect(sample(before, 'choiros_runs_started_total')).toBe(0);
  expect(sample(before, 'choiros_sandboxes_active')).toBe(0);

  const started = await client.call<{ runId: string }>('POST', '/v1/runs', {
    token,
    body: runRequest(repo.path, 'sleep 4; echo done > RESULT.txt'),
  });
  expect(started.status).toBe(201);
  const runId = started.body.runId;

  // During the run: one sandbox on this host and the run counted as started, not completed.
  // (The workspace's directory exists from the start of its creation, the counter once it is made.)
  const during = await poll(
    () => scrape(workerMetrics),
    (t) => sample(t, 'choiros_sandboxes_active') === 1 && sample(t, 'choiros_sandboxes_created_total') === 1,
    60_000,
  );
  expect(sample(during, 'choiros_runs_started_total')).toBe(1);
  expect(sample(during, 'choiros_runs_completed_total', { status: 'committed' })).toBeUndefined();
  expect(sample(during, 'choiros_sandboxes_created_total')).toBe(1);

  const view = await client.waitTerminal(runId, token);
  expect(view.status).toBe('committed');
  const events = await readRunEvents(nats, { tenant: 'acme', userId: `obs-${id}` }, runId);
  expectGapFree(events);

  const after = await poll(
    () => scrape(workerMetrics),
    (t) => sample(t, 'choiros_sandboxes_active') === 0,
    30_000,
  );
  expect(sample(after, 'choiros_runs_started_total')).toBe(1);
  expect(sample(after, 'choiros_runs_completed_total', { status: 'committed' })).toBe(1);
  expect(sample(after, 'choiros_sandboxes_destroyed_total')).toBe(1);
  expect(sample(after, 'choiros_work_item_duration_seconds_count', { outcome: 'ok' })).toBe(1);
  // The command slept 4 s: its observed duration is at least that.
  expect(sample(after, 'choiros_work_item_duration_seconds_sum', { outcome: 'ok' })).toBeGreaterThanOrEqual(
    4,
  );
  expect(
    sample(after, 'choiros_verifier_duration_seconds_count', { verifier: 'V-RESULT-FILE', result: 'pass' }),
  ).toBe(1);
  // Every event of the run was published once by this worker, each with a flush lag observation.
  expect(sample(after, 'choiros_events_published_total', { duplicate: 'false' })).toBe(events.length);
  expect(sample(after, 'choiros_event_flush_lag_seconds_count')).toBe(events.length);
  // Process and Temporal SDK metrics are on the same endpoint.
  expect(sample(after, 'choiros_worker_process_resident_memory_bytes')).toBeGreaterThan(0);
  expect(after).toMatch(/^temporal_\w+/m);
  expect(after).toContain('temporal_activity_execution_latency');

  // The API: its request histogram by route and status, and the run start counted.
  const apiText = await scrape(`${api.url}/metrics`);
  expect(
    sample(apiText, 'choiros_api_request_duration_seconds_count', {
      method: 'POST',
      route: '/v1/runs',
      status: '201',
    }),
  ).toBe(1);
  expect(
    sample(apiText, 'choiros_api_request_duration_seconds_bucket', {
      method: 'POST',
      route: '/v1/runs',
      status: '201',
      le: '+Inf',
    }),
  ).toBe(1);
  expect(
    sample(apiText, 'choiros_api_request_duration_seconds_count', {
      method: 'GET',
      route: '/v1/runs/:runId',
      status: '200',
    }),
  ).toBeGreaterThanOrEqual(1);
  expect(sample(apiText, 'choiros_api_run_starts_total', { mood: 'CALM' })).toBe(1);

  expect(await worker.signal('SIGTERM')).toBe(0);
}, 240_000);

test('a SIGTERMed worker stops taking tasks, finishes its in-flight command, exits 0; a new worker completes the run', async () => {
  const hostId = `drain-${id}`;
  const dataDir = await mkdtemp(join(env.workDir(), 'data-drain-'));
  const old = await startWorker('drain-old', { CHOIROS_SHUTDOWN_GRACE_SECONDS: '60' }, dataDir, hostId);
  const client = apiClient(api);
  const token = await api.token({ sub: `drain-${id}` });
  const repo = await makeGitRepo();
  const started = await client.call<{ runId: string }>('POST', '/v1/runs', {
    token,
    body: runRequest(repo.path, 'sleep 8; echo done > RESULT.txt'),
  });
  expect(started.status).toBe(201);
  const runId = started.body.runId;
  const handle = api.client.workflow.getHandle(runId);
  // Wait until the command runs on the old worker: executeStep (execute + plan, decision 0015) has heartbeated from it. Pending alone
  // is not enough — a scheduled activity no worker has picked up yet is pending too, and a SIGTERM
  // then leaves the old worker nothing in flight to finish.
  const pendingExec = await poll(
    async () =>
      (await handle.describe()).raw.pendingActivities?.find(
        (a) => a.activityType?.name === 'executeStep' && (a.heartbeatDetails?.payloads?.length ?? 0) > 0,
      ),
    (a) => a !== undefined,
    60_000,
  );
  expect(pendingExec?.lastWorkerIdentity).toMatch(new RegExp(`^${old.pid}@`));
  // The old worker exits on its own (0) once the command it was running has finished.
  expect(await old.signal('SIGTERM')).toBe(0);
  const history = await handle.fetchHistory();
  const execScheduled = history.events?.find(
    (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'executeStep',
  );
  const execCompleted = history.events?.find(
    (e) =>
      e.activityTaskCompletedEventAttributes &&
      String(e.activityTaskCompletedEventAttributes.scheduledEventId) === String(execScheduled?.eventId),
  );
  expect(execCompleted?.activityTaskCompletedEventAttributes?.identity).toMatch(new RegExp(`^${old.pid}@`));
  const execStarted = history.events?.find(
    (e) =>
      e.activityTaskStartedEventAttributes &&
      String(e.activityTaskStartedEventAttributes.scheduledEventId) === String(execScheduled?.eventId),
  );
  expect(execStarted?.activityTaskStartedEventAttributes?.attempt).toBe(1);

  // The rest of the run (verify, commit, destroy) needs a worker on this host again.
  await startWorker('drain-new', {}, dataDir, hostId);
  const view = await client.waitTerminal(runId, token);
  expect(view.status).toBe('committed');
  expectGapFree(await readRunEvents(nats, { tenant: 'acme', userId: `drain-${id}` }, runId));
}, 240_000);
