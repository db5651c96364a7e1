/**
 * Tracing end to end: the real API and worker entry points (api/main.ts, worker/main.ts) run as child
 * processes exporting OTLP/HTTP to a collector of the test's own. One run started with POST /v1/runs
 * is one trace: the API's HTTP span → StartWorkflow → RunWorkflow → StartActivity → RunActivity for
 * each of the run's activities, across both services; the API's log lines carry its trace id; spans
 * still buffered at SIGTERM are flushed by the drain; and the traced history replays deterministically.
 */
import { writeTenantsFile } from '../../tenancy';
import { randomUUID } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { WORKFLOW_TYPES, approvalUpdate, type RunView } from '../../contracts';
import {
  DEV_AUDIENCE,
  loadOrCreateDevKey,
  mintDevToken,
  serveDevIssuer,
  type DevIssuerKey,
} from '../../infra/dev-issuer/issuer';
import { ROOT, env, makeGitRepo, workflowBundle, type TestApi } from '../helpers/integration';
import { startOtlpCollector, type CollectedSpan, type OtlpCollector } from '../helpers/otlp-collector';
import { apiClient, recordHistory } from '../helpers/runs';
import { workflowTracingOptions } from '../../worker/tracing';
import { freePort } from '../../infra/stack/process';
import { spawnService, spawnWorkerProcess, type ServiceProcess } from '../helpers/worker-process';

const hostId = `it-otel-${randomUUID().slice(0, 8)}`;
const API_VERSION = 'otel-it-api';
const WORKER_BUILD = 'otel-it-worker';
const children: ServiceProcess[] = [];
let collector: OtlpCollector;
let issuer: Awaited<ReturnType<typeof serveDevIssuer>>;
let devKey: DevIssuerKey;
let connection: Connection;

/** The test's environment without OpenTelemetry settings of its own, plus the collector's. */
function tracedEnv(): NodeJS.ProcessEnv {
  return {
    ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('OTEL_'))),
    OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
    // Nothing is exported on a timer or a full batch during the test (the status polls make many
    // spans): every span arrives through the SIGTERM flush.
    OTEL_BSP_SCHEDULE_DELAY: '600000',
    OTEL_BSP_MAX_QUEUE_SIZE: '100000',
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '100000',
  };
}

beforeAll(async () => {
  collector = await startOtlpCollector();
  devKey = await loadOrCreateDevKey(await mkdtemp(join(env.workDir(), 'issuer-')));
  issuer = await serveDevIssuer({ key: devKey, host: '127.0.0.1', port: 0 });
  connection = await Connection.connect({ address: env.temporalAddress() });
});

afterAll(async () => {
  for (const c of children) await c.signal('SIGKILL');
  await issuer?.close();
  await connection?.close();
  await collector?.close();
});

function spanOf(spans: CollectedSpan[], pred: (s: CollectedSpan) => boolean, what: string): CollectedSpan {
  const found = spans.filter(pred);
  if (found.length !== 1) {
    const names = spans.map((s) => `${s.name} [${String(s.resource['service.name'])}]`).join(', ');
    throw new Error(`expected one ${what}, found ${found.length} among: ${names}`);
  }
  return found[0] as CollectedSpan;
}

/** Span names from `span` up to the trace's root, following parent span ids. */
function ancestry(trace: CollectedSpan[], span: CollectedSpan): string[] {
  const byId = new Map(trace.map((s) => [s.spanId, s]));
  const chain = [span.name];
  let cur: CollectedSpan | undefined = span;
  while (cur?.parentSpanId) {
    cur = byId.get(cur.parentSpanId);
    chain.push(cur ? cur.name : '<missing parent>');
  }
  return chain;
}

test('when a run is started through the API with tracing on, then one trace links the HTTP request, the workflow and its activities across api and worker, and the API logs carry its trace id', async () => {
  const dataDir = await mkdtemp(join(env.workDir(), `data-${hostId}-`));
  const bundle = workflowBundle(); // for the replay at the end, built while the services start
  const worker = await spawnWorkerProcess({
    hostId,
    dataDir,
    name: 'otel',
    baseEnv: tracedEnv(),
    extraEnv: { CHOIROS_BUILD_ID: WORKER_BUILD },
    extraTenants: [`otel-${hostId.slice(-8)}`],
  });
  children.push(worker);
  const port = await freePort();
  const api = await spawnService({
    entry: 'api/main.ts',
    name: 'api-otel',
    readyEvent: 'api.started',
    env: {
      ...tracedEnv(),
      TEMPORAL_ADDRESS: env.temporalAddress(),
      NATS_URL: env.natsUrl(),
      NATS_CREDS: env.apiCreds() ?? '',
      CHOIROS_VERIFIERS_FILE: join(ROOT, 'test/fixtures/verifiers.yaml'),
      // This test's tenant, with the test work dir (where makeGitRepo creates repositories) granted.
      CHOIROS_TENANTS_FILE: await writeTenantsFile(
        join(env.workDir(), `tenants-${hostId}.yaml`),
        [`otel-${hostId.slice(-8)}`],
        [`${env.workDir()}/`],
      ),
      AUTH_ISSUER: issuer.issuer,
      AUTH_AUDIENCE: DEV_AUDIENCE,
      API_HOST: '127.0.0.1',
      API_PORT: String(port),
      GRPC_PORT: '0',
      CHOIROS_VERSION: API_VERSION,
      LOG_LEVEL: 'info',
    },
  });
  children.push(api);
  expect(api.lines.some((l) => l.includes('"event":"otel.started"'))).toBe(true);

  const testApi: Pick<TestApi, 'url' | 'client' | 'issuer' | 'token' | 'stop'> = {
    url: `http://127.0.0.1:${port}`,
    client: new Client({ connection }),
    issuer: issuer.issuer,
    token: (claims = {}) =>
      mintDevToken(
        devKey,
        { issuer: issuer.issuer, audience: DEV_AUDIENCE },
        { sub: 'alice', tenant: `otel-${hostId.slice(-8)}`, ...claims },
      ),
    stop: async () => undefined,
  };
  const client = apiClient(testApi);
  const token = await testApi.token();
  const repo = await makeGitRepo();
  const res = await client.call<RunView>('POST', '/v1/runs', {
    token,
    key: randomUUID(),
    body: {
      repo: repo.path,
      // The owner's approval is an update: its own trace, from the API into the workflow.
      review: { required: true },
      workItem: {
        description: 'traced run',
        execute: ['sh', '-c', 'echo done > RESULT.txt'],
        requiredVerifiers: ['V-RESULT-FILE'],
      },
    },
  });
  expect(res.status).toBe(201);
  const runId = res.body.runId;
  await client.waitStatus(runId, token, 'awaiting_approval', 150_000);
  const approved = await client.call('POST', `/v1/runs/${runId}/approve`, { token, body: {} });
  expect(approved.status).toBe(200);
  const done = await client.waitTerminal(runId, token, 150_000);
  expect(done.status).toBe('committed');
  await recordHistory(runId, 'run-traced-approved');

  // The drain flushes: nothing was exported on a timer (OTEL_BSP_SCHEDULE_DELAY), so every span
  // below reached the collector through the SIGTERM shutdown of each process.
  expect(collector.spans).toHaveLength(0);
  expect(await worker.signal('SIGTERM')).toBe(0);
  expect(await api.signal('SIGTERM')).toBe(0);
  expect(collector.rejected).toEqual([]);

  const spans = collector.spans;
  const http = spanOf(
    spans,
    (s) => s.name === 'POST /v1/runs' && s.attributes['choiros.run_id'] === runId,
    'HTTP span of POST /v1/runs',
  );
  expect(http).toMatchObject({
    kind: 2,
    attributes: { 'http.request.method': 'POST', 'http.route': '/v1/runs', 'http.response.status_code': 201 },
    resource: { 'service.name': 'choiros-api', 'service.version': API_VERSION },
  });
  expect(http.parentSpanId).toBeUndefined();
  const trace = spans.filter((s) => s.traceId === http.traceId);

  const start = spanOf(trace, (s) => s.name === `StartWorkflow:${WORKFLOW_TYPES.run}`, 'StartWorkflow span');
  expect(start.parentSpanId).toBe(http.spanId);
  expect(start.resource['service.name']).toBe('choiros-api');

  const run = spanOf(trace, (s) => s.name === `RunWorkflow:${WORKFLOW_TYPES.run}`, 'RunWorkflow span');
  expect(run.parentSpanId).toBe(start.spanId);
  expect(run.resource).toMatchObject({ 'service.name': 'choiros-worker', 'service.version': WORKER_BUILD });

  // The lean run shape's host steps (decision 0015).
  for (const activity of ['createSandboxStep', 'executeStep', 'verifyStep', 'finishStep']) {
    const exec = spanOf(trace, (s) => s.name === `RunActivity:${activity}`, `RunActivity:${activity}`);
    expect(exec.resource['service.name']).toBe('choiros-worker');
    expect(exec.attributes.temporalWorkflowId).toBe(runId);
    expect(ancestry(trace, exec)).toEqual([
      `RunActivity:${activity}`,
      `StartActivity:${activity}`,
      `RunWorkflow:${WORKFLOW_TYPES.run}`,
      `StartWorkflow:${WORKFLOW_TYPES.run}`,
      'POST /v1/runs',
    ]);
  }
  expect(new Set(trace.map((s) => s.resource['service.name']))).toEqual(
    new Set(['choiros-api', 'choiros-worker']),
  );

  // The approval: HTTP span → StartWorkflowUpdate (api) → HandleUpdate in the workflow (worker).
  const approve = spanOf(
    spans,
    (s) =>
      s.attributes['http.route'] === '/v1/runs/:runId/approve' && s.attributes['choiros.run_id'] === runId,
    'HTTP span of the approval',
  );
  expect(approve.name).toBe('POST /v1/runs/:runId/approve');
  expect(approve.traceId).not.toBe(http.traceId);
  const updateTrace = spans.filter((s) => s.traceId === approve.traceId);
  const handle = spanOf(
    updateTrace,
    (s) => s.name === `HandleUpdate:${approvalUpdate.name}`,
    'HandleUpdate span',
  );
  expect(handle.resource['service.name']).toBe('choiros-worker');
  expect(ancestry(updateTrace, handle)).toEqual([
    `HandleUpdate:${approvalUpdate.name}`,
    `StartWorkflowUpdate:${approvalUpdate.name}`,
    'POST /v1/runs/:runId/approve',
  ]);

  // Log lines of the request carry its trace (and the run id).
  const apiLogs = api.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  const runStart = apiLogs.find((l) => l.event === 'run.start' && l.runId === runId);
  expect(runStart).toMatchObject({ trace_id: http.traceId, span_id: http.spanId });
  const access = apiLogs.find((l) => l.event === 'http.request' && l.runId === runId && l.method === 'POST');
  expect(access).toMatchObject({ trace_id: http.traceId, span_id: http.spanId });
  // The worker's activity log lines carry the trace of the run, with the span of their activity.
  const activitySpans = new Set(trace.filter((s) => s.name.startsWith('RunActivity:')).map((s) => s.spanId));
  const workerLogs = worker.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  const traced = workerLogs.filter((l) => l.trace_id === http.traceId);
  if (traced.length === 0)
    throw new Error(`no worker log line with the trace id:\n${worker.lines.join('\n')}`);
  for (const l of traced) expect(activitySpans.has(String(l.span_id))).toBe(true);

  // The history written with the tracing interceptors replays on the same code.
  const history = await testApi.client.workflow.getHandle(runId).fetchHistory();
  await Worker.runReplayHistory(
    { workflowBundle: await bundle, replayName: runId, ...workflowTracingOptions(undefined) },
    history,
    runId,
  );
}, 420_000);
