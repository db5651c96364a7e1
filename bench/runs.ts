/**
 * `npm run bench:runs`: runs on one Temporal dev server, loopback only, bounded in count and time.
 *  1. Start latency: `POST /v1/runs` through the gateway (auth, validation, grant check, one start
 *     call; decision 0021) vs `client.workflow.start` of runWorkflow with the equivalent input,
 *     memo and search attributes — alternating, p50/p95 of each and their ratio. As in production,
 *     the gateway (api/main.ts) and the worker (worker/main.ts) run as processes of their own; the
 *     bench's process is the caller of both paths.
 *  2. Throughput: N minimal runs (local driver, execute `true`, one trivial verifier) started at
 *     once, time until all have committed: runs/s and per-run latency.
 *  3. A work graph of N independent minimal items (parallelism 8): items/s.
 * Prints, per run, history events and sandbox-ready time, and the worker's peak RSS.
 * Starts its own Temporal dev server, nats-server and worker (CHOIROS_TEMPORAL_BIN,
 * CHOIROS_NATS_SERVER_BIN: `npm run provision`); nothing else is touched.
 */
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import {
  TASK_QUEUES,
  WORKFLOW_TYPES,
  canonicalJson,
  runRequestSchema,
  runStartMetadata,
  sha256Hex,
  type RunView,
  type RunWorkflowInput,
  type WorkGraphView,
  type TenantsConfig,
} from '../contracts';
import { writeTenantsConfig } from '../tenancy';
import { DEV_AUDIENCE, loadOrCreateDevKey, mintDevToken, serveDevIssuer } from '../infra/dev-issuer/issuer';
import { startEntry, waitFor } from '../infra/stack/process';
import { historyShape, pct, postJson, startApiProcess, startBenchStack } from './util';

const STARTS = Number(process.env.BENCH_STARTS ?? 30);
const WARMUP_STARTS = Number(process.env.BENCH_WARMUP_STARTS ?? 20);
const CONCURRENT = Number(process.env.BENCH_CONCURRENT_RUNS ?? 40);
const GRAPH_ITEMS = Number(process.env.BENCH_GRAPH_ITEMS ?? 40);
const DEADLINE_MS = Number(process.env.BENCH_DEADLINE_SECONDS ?? 300) * 1000;

const VERIFIERS = `version: 1
verifiers:
  - { id: V-TRUE, description: always passes, argv: ['true'], timeoutSeconds: 30 }
`;

const ms = (x: number): string => `${x.toFixed(1)} ms`;

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  const started = performance.now();
  const deadline = (): void => {
    if (performance.now() - started > DEADLINE_MS) throw new Error(`bench exceeded ${DEADLINE_MS / 1000}s`);
  };
  const stack = await startBenchStack('bench:runs', VERIFIERS);
  const { work, temporal, nats: natsServer, repo, verifiersFile, cleanups } = stack;
  try {
    // The worker: the real worker set with the local driver, re-checking the API's grants.
    const tenants: TenantsConfig = { version: 1, tenants: { bench: { repos: [`${dirname(repo)}/`] } } };
    // A worker process of its own, as in production: the gateway's event loop is not the worker's.
    const tenantsFile = await writeTenantsConfig(join(work, 'tenants.yaml'), tenants);
    const worker = startEntry({
      name: 'worker',
      entry: 'worker/main.ts',
      logFile: join(work, 'worker.log'),
      env: {
        ...process.env,
        CHOIROS_TENANTS_FILE: tenantsFile,
        TEMPORAL_ADDRESS: temporal.address,
        NATS_URL: natsServer.url,
        NATS_CREDS: natsServer.workerCredsFile,
        CHOIROS_DATA_DIR: join(work, 'data'),
        CHOIROS_VERIFIERS_FILE: verifiersFile,
        CHOIROS_SANDBOX_DRIVER: 'local',
        CHOIROS_LOCAL_DRIVER: 'trusted-dev',
        CHOIROS_HOST_ID: 'bench',
        CHOIROS_SWEEP_INTERVAL_SECONDS: '0',
        CHOIROS_METRICS_PORT: '0',
        LOG_LEVEL: 'info',
      },
    });
    cleanups.unshift(() => worker.stop(30_000));
    await waitFor(
      'worker',
      async () => (await readFile(worker.logFile, 'utf8')).includes('"worker.started"'),
      { timeoutMs: 180_000, proc: worker },
    );

    // The gateway: the real API process (as in production, its own event loop), real token
    // verification against a dev issuer on loopback. The bench's client starts directly.
    const key = await loadOrCreateDevKey(join(work, 'issuer'));
    const issuer = await serveDevIssuer({ key, host: '127.0.0.1', port: 0 });
    cleanups.unshift(() => issuer.close());
    const { url: api } = await startApiProcess(stack, {
      issuer: issuer.issuer,
      audience: DEV_AUDIENCE,
      tenantsFile,
    });
    const connection = await Connection.connect({ address: temporal.address });
    cleanups.unshift(() => connection.close());
    const client = new Client({ connection });
    const token = await mintDevToken(
      key,
      { issuer: issuer.issuer, audience: DEV_AUDIENCE },
      { sub: 'bench', tenant: 'bench' },
    );

    const body = {
      repo,
      baseRef: 'main',
      mood: 'CALM',
      workItem: { description: 'bench: nothing to do', execute: ['true'], requiredVerifiers: ['V-TRUE'] },
    };
    const viaApi = async (i: number): Promise<{ ms: number; runId: string }> => {
      const t = performance.now();
      const res = await postJson(
        `${api}/v1/runs`,
        { authorization: `Bearer ${token}`, 'idempotency-key': `api-${i}` },
        body,
      );
      const view = res.body as RunView;
      if (res.status !== 201)
        throw new Error(`POST /v1/runs answered ${res.status}: ${JSON.stringify(view)}`);
      return { ms: performance.now() - t, runId: view.runId };
    };
    const request = runRequestSchema.parse(body);
    const direct = async (i: number): Promise<{ ms: number; runId: string }> => {
      const t = performance.now();
      const runId = `run-direct-${i}-${Date.now()}`;
      const requestHash = sha256Hex(canonicalJson(request));
      const input: RunWorkflowInput = {
        runId,
        tenant: 'bench',
        userId: 'bench',
        request: { ...request, workItem: { ...request.workItem, id: `wi-${i}` } },
        requestHash,
        requestedAt: Date.now(),
      };
      await client.workflow.start(WORKFLOW_TYPES.run, {
        workflowId: runId,
        taskQueue: TASK_QUEUES.orchestration,
        args: [input],
        ...runStartMetadata(input),
        // What the gateway also sends (api/runs/service.ts): the UI's summary and details.
        staticSummary: `bench: ${request.workItem.description}`,
        staticDetails: `repo ${request.repo} @ ${request.baseRef}, mood ${request.mood}, execute \`${request.workItem.execute.join(' ')}\`, verifiers ${request.workItem.requiredVerifiers.join(', ')}`,
      });
      return { ms: performance.now() - t, runId };
    };
    const waitAll = async (ids: string[]): Promise<RunView[]> =>
      Promise.all(ids.map((id) => client.workflow.getHandle(id).result() as Promise<RunView>));

    // Warm-up, not counted: first connections, the worker's bundle, and the gateway's request path
    // compiled by V8 as in a serving process (BENCH_WARMUP_STARTS of each, alternating).
    const warm: string[] = [];
    for (let i = 0; i < WARMUP_STARTS; i++) {
      warm.push((await viaApi(-1 - i)).runId, (await direct(-1 - i)).runId);
    }
    await waitAll(warm);

    // 1. Start latency, alternating so both paths see the same load.
    const apiMs: number[] = [];
    const directMs: number[] = [];
    const ids: string[] = [];
    for (let i = 0; i < STARTS; i++) {
      deadline();
      const a = await viaApi(i);
      const d = await direct(i);
      apiMs.push(a.ms);
      directMs.push(d.ms);
      ids.push(a.runId, d.runId);
    }
    const startRuns = await waitAll(ids);
    console.log(`\n1. start latency (${STARTS} each, alternating; runs executed meanwhile)`);
    console.log(`   POST /v1/runs            p50 ${ms(pct(apiMs, 50))}  p95 ${ms(pct(apiMs, 95))}`);
    console.log(`   client.workflow.start    p50 ${ms(pct(directMs, 50))}  p95 ${ms(pct(directMs, 95))}`);
    console.log(
      `   ratio API / direct       p50 ${(pct(apiMs, 50) / pct(directMs, 50)).toFixed(2)}×  p95 ${(pct(apiMs, 95) / pct(directMs, 95)).toFixed(2)}×`,
    );
    console.log(
      `   (all ${startRuns.length} committed: ${startRuns.every((r) => r.status === 'committed')})`,
    );

    // 2. N minimal runs at once.
    deadline();
    const workerRss = async (): Promise<number> =>
      Number(/^VmRSS:\s+(\d+)/m.exec(await readFile(`/proc/${worker.pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
    let peakRss = await workerRss();
    const rssTimer = setInterval(() => {
      void workerRss().then(
        (r) => (peakRss = Math.max(peakRss, r)),
        () => undefined,
      );
    }, 250);
    cleanups.unshift(async () => clearInterval(rssTimer));
    const t0 = performance.now();
    const batch = await Promise.all(Array.from({ length: CONCURRENT }, (_, i) => direct(1000 + i)));
    const finishedAt: number[] = [];
    const views = await Promise.all(
      batch.map(async (b) => {
        const v = (await client.workflow.getHandle(b.runId).result()) as RunView;
        finishedAt.push(performance.now() - t0);
        return v;
      }),
    );
    const elapsed = (performance.now() - t0) / 1000;
    const committed = views.filter((v) => v.status === 'committed').length;
    console.log(`\n2. ${CONCURRENT} minimal runs started at once (local driver, execute true, V-TRUE)`);
    console.log(
      `   all finished in ${elapsed.toFixed(1)} s: ${(CONCURRENT / elapsed).toFixed(2)} runs/s (${committed} committed)`,
    );
    console.log(`   time to finish per run   p50 ${ms(pct(finishedAt, 50))}  p95 ${ms(pct(finishedAt, 95))}`);
    const history = await historyShape(
      client,
      batch.map((b) => b.runId),
    );
    console.log(
      `   history events per run   p50 ${pct(history.events, 50)}  max ${Math.max(...history.events)}`,
    );
    console.log(
      `   sandbox ready            p50 ${ms(pct(history.sandboxReadyMs, 50))}  p95 ${ms(pct(history.sandboxReadyMs, 95))} (sandbox step scheduled → completed)`,
    );
    console.log(`   worker peak RSS          ${(peakRss / 1048576).toFixed(0)} MiB (the worker process)`);

    // 3. A work graph of independent minimal items.
    deadline();
    const g0 = performance.now();
    const res = await fetch(`${api}/v1/work-graphs`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        'idempotency-key': 'bench-graph',
      },
      body: JSON.stringify({
        repo,
        parallelism: 8,
        items: Array.from({ length: GRAPH_ITEMS }, (_, i) => ({
          id: `i${i}`,
          description: 'bench item',
          execute: ['sh', '-c', `echo ${i} > i${i}.txt`],
          requiredVerifiers: ['V-TRUE'],
        })),
      }),
    });
    const graph = (await res.json()) as WorkGraphView;
    if (res.status !== 201)
      throw new Error(`POST /v1/work-graphs answered ${res.status}: ${JSON.stringify(graph)}`);
    const result = (await client.workflow.getHandle(graph.graphId).result()) as WorkGraphView;
    const gElapsed = (performance.now() - g0) / 1000;
    console.log(
      `\n3. work graph of ${GRAPH_ITEMS} independent items, parallelism 8 (each merged into the graph branch)`,
    );
    console.log(
      `   ${result.status} in ${gElapsed.toFixed(1)} s: ${(GRAPH_ITEMS / gElapsed).toFixed(2)} items/s (${result.counts.committed ?? 0} committed)`,
    );
  } finally {
    await stack.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
