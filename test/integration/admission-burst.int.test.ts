/**
 * Admission under bursts (issue 18, decision 0013) against the real dev server, NATS, git and the
 * local sandbox driver: 300 runs of one tenant at once all commit within the caps, in the fairness
 * order, without retries; the API pushes back with 429 queue_full; a run that is not admitted in
 * time fails with admission_timeout, visibly.
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { defaultPayloadConverter } from '@temporalio/common';
import type { NatsConnection } from 'nats';
import type { EnqueueRequest, RunView } from '../../contracts';
import {
  connectNats,
  env,
  makeGitRepo,
  poll,
  startTestApi,
  startTestWorker,
  type TestApi,
  type TestWorker,
} from '../helpers/integration';
import { apiClient, readRunEvents, recordHistory } from '../helpers/runs';
import { joinOf } from '../helpers/history';
import { waitingRunsQuery } from '../../api/runs/service';

const suffix = randomUUID().slice(0, 8);
const PER_USER = 2;
const PER_TENANT = 6;
const RUNS = 300;
const USERS = 10;

const localDriver = { CHOIROS_SANDBOX_DRIVER: 'local', CHOIROS_LOCAL_DRIVER: 'trusted-dev' };

function runBody(repo: string, execute: string[] = ['sh', '-c', 'echo done > RESULT.txt']) {
  return {
    repo,
    baseRef: 'main',
    mood: 'CALM',
    workItem: { description: 'burst run', execute, requiredVerifiers: ['V-TRUE'], riskTier: 'low' },
  };
}

type HistoryEvent = temporal.api.history.v1.IHistoryEvent;
const EVENT = {
  signaled: 'EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED',
  signalOut: 'EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED',
  taskFailed: 'EVENT_TYPE_WORKFLOW_TASK_FAILED',
  taskTimedOut: 'EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT',
  activityStarted: 'EVENT_TYPE_ACTIVITY_TASK_STARTED',
  activityScheduled: 'EVENT_TYPE_ACTIVITY_TASK_SCHEDULED',
};

/** The proto enum's name of an event's type (histories carry the number). */
function eventTypeName(e: HistoryEvent): string {
  return temporal.api.enums.v1.EventType[e.eventType ?? 0] ?? String(e.eventType);
}

/** Every event of every execution of a workflow id (the continue-as-new chain), oldest first. */
async function chainHistory(client: Client, workflowId: string): Promise<HistoryEvent[]> {
  const runs: { runId: string; start: number }[] = [];
  for await (const w of client.workflow.list({ query: `WorkflowId = '${workflowId}'` })) {
    runs.push({ runId: w.runId, start: w.startTime.getTime() });
  }
  runs.sort((a, b) => a.start - b.start);
  const events: HistoryEvent[] = [];
  for (const r of runs) {
    const h = await client.workflow.getHandle(workflowId, r.runId).fetchHistory();
    events.push(...(h.events ?? []));
  }
  return events;
}

describe('a burst of one tenant', () => {
  let api: TestApi;
  let worker: TestWorker;
  let client: ReturnType<typeof apiClient>;

  beforeAll(async () => {
    worker = await startTestWorker(`it-burst-${suffix}`, {
      extraEnv: {
        ...localDriver,
        CHOIROS_MAX_RUNS_PER_USER: String(PER_USER),
        CHOIROS_MAX_RUNS_PER_TENANT: String(PER_TENANT),
      },
      // The tenants of this block's tests (the worker re-checks repository grants).
      extraTenants: [`burst-${suffix}`, `full-${suffix}`],
    });
    api = await startTestApi();
    client = apiClient(api);
  });

  afterAll(async () => {
    await api?.stop();
    await worker?.stop();
  });

  test(`when ${RUNS} runs of one tenant from ${USERS} users are submitted at once, then every run commits, the caps hold, the queue drains in fairness order and admission never retries`, async () => {
    const tenant = `burst-${suffix}`;
    const repo = await makeGitRepo();
    const tokens = await Promise.all(
      Array.from({ length: USERS }, (_, u) => api.token({ sub: `u${u}`, tenant })),
    );
    const t0 = performance.now();
    const started = await Promise.all(
      Array.from({ length: RUNS }, (_, i) =>
        client.call<RunView>('POST', '/v1/runs', {
          token: tokens[i % USERS] as string,
          body: runBody(repo.path),
          key: `burst-${i}`,
        }),
      ),
    );
    expect(started.map((s) => s.status)).toEqual(Array(RUNS).fill(201));
    const submittedS = (performance.now() - t0) / 1000;

    const views = await Promise.all(
      started.map((s) => api.client.workflow.getHandle(s.body.runId).result() as Promise<RunView>),
    );
    const drainedS = (performance.now() - t0) / 1000;
    expect(views.filter((v) => v.status !== 'committed').map((v) => [v.runId, v.status, v.error])).toEqual(
      [],
    );

    // The gate's own record: what it was asked (enqueue, release) and what it answered (admitted).
    const gate = await chainHistory(api.client, `admission-${tenant}`);
    const names = gate.map(eventTypeName);
    const userOf = new Map(views.map((v) => [v.runId, v.userId]));

    // The fairness rule as a reference: on each request, admit every waiting run that fits, in
    // arrival order, skipping only runs whose own user is at the cap.
    const waiting: string[] = [];
    const held = new Set<string>();
    const expected: string[] = [];
    const actual: string[] = [];
    const running = new Map<string, number>();
    let runningNow = 0;
    let peakTenant = 0;
    let peakUser = 0;
    const heldBy = (u: string): number => [...held].filter((r) => userOf.get(r) === u).length;
    const admitFitting = (): void => {
      for (let i = 0; i < waiting.length && held.size < PER_TENANT;) {
        const r = waiting[i] as string;
        if (heldBy(userOf.get(r) as string) < PER_USER) {
          waiting.splice(i, 1);
          held.add(r);
          expected.push(r);
        } else i += 1;
      }
    };
    // Each run's own record of its join: a lean run (decision 0015) asks the gate by query and is
    // admitted at its enqueue without an `admitted` signal; queued, it learns its position the same way.
    let enqueueRetries = 0;
    let queued = 0;
    let aQueuedRun: string | undefined;
    const admittedAtJoin = new Set<string>();
    const askedAgain = new Set<string>();
    const enqueued = new Set<string>();
    for (let i = 0; i < views.length; i += 25) {
      await Promise.all(
        views.slice(i, i + 25).map(async (v) => {
          const h = await api.client.workflow.getHandle(v.runId).fetchHistory();
          const events = h.events ?? [];
          const join = joinOf(events);
          enqueueRetries += join.retries;
          if (join.admittedAtJoin === true) admittedAtJoin.add(v.runId);
          if (join.admittedAtJoin === 'bySignal') askedAgain.add(v.runId);
          const waited =
            join.admittedAtJoin === false ||
            events.some((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'queued');
          if (waited) {
            queued += 1;
            aQueuedRun ??= v.runId;
          }
        }),
      );
    }
    const admit = (runId: string): void => {
      actual.push(runId);
      const u = userOf.get(runId) as string;
      running.set(u, (running.get(u) ?? 0) + 1);
      runningNow += 1;
      peakTenant = Math.max(peakTenant, runningNow);
      peakUser = Math.max(peakUser, running.get(u) ?? 0);
    };
    gate.forEach((e, i) => {
      if (names[i] === EVENT.signaled) {
        const a = e.workflowExecutionSignaledEventAttributes;
        const payload = a?.input?.payloads?.[0];
        const arg = payload ? defaultPayloadConverter.fromPayload<EnqueueRequest>(payload) : undefined;
        // A second enqueue of a run (it could not get its answer by query) asks for signals only.
        const firstEnqueue = a?.signalName === 'enqueue' && arg !== undefined && !enqueued.has(arg.runId);
        if (firstEnqueue) {
          enqueued.add(arg.runId);
          waiting.push(arg.runId);
        }
        if (a?.signalName === 'release' && arg) {
          held.delete(arg.runId);
          const u = userOf.get(arg.runId) as string;
          running.set(u, (running.get(u) ?? 0) - 1);
          runningNow -= 1;
        }
        const before = expected.length;
        admitFitting();
        // Admitted by the gate's answer to this very enqueue: the run's join says so (no signal
        // went out). A run that asked again got its `admitted` later, but held the slot from here.
        if (firstEnqueue && arg) {
          const now = expected.slice(before).includes(arg.runId);
          if (admittedAtJoin.has(arg.runId) || (askedAgain.has(arg.runId) && now)) admit(arg.runId);
        }
      }
      if (names[i] === EVENT.signalOut) {
        const a = e.signalExternalWorkflowExecutionInitiatedEventAttributes;
        const runId = a?.workflowExecution?.workflowId as string;
        if (a?.signalName !== 'admitted' || actual.includes(runId)) return;
        admit(runId);
      }
    });
    expect(new Set(actual).size).toBe(RUNS);
    expect(peakTenant).toBeLessThanOrEqual(PER_TENANT);
    expect(peakUser).toBeLessThanOrEqual(PER_USER);
    // The order, among runs whose admission moment the gate's record shows exactly.
    const exact = (order: string[]): string[] => order.filter((r) => !askedAgain.has(r));
    expect(exact(actual)).toEqual(exact(expected));

    // No spinning: the gate's workflow tasks did not fail, and no run retried joining the queue.
    const failedTasks = names.filter((n) => n === EVENT.taskFailed || n === EVENT.taskTimedOut).length;
    // Why, for the summary line (a continue-as-new that raced new signals is UNHANDLED_COMMAND).
    const causes = gate
      .map((e) => e.workflowTaskFailedEventAttributes?.cause)
      .filter((c): c is temporal.api.enums.v1.WorkflowTaskFailedCause => c !== undefined && c !== null)
      .map((c) => temporal.api.enums.v1.WorkflowTaskFailedCause[c]);
    expect(failedTasks).toBeLessThanOrEqual(3);
    expect(enqueueRetries).toBe(0);
    // Queueing really happened (all but the first few waited), so the order above says something.
    expect(queued).toBeGreaterThan(RUNS - PER_TENANT * 2);
    process.stdout.write(
      `[burst] ${askedAgain.size} runs asked the gate again by signal (query not answered in time)\n`,
    );
    process.stdout.write(
      `[burst] ${RUNS} runs, ${USERS} users, caps ${PER_USER}/${PER_TENANT}: submitted in ${submittedS.toFixed(1)} s, all committed in ${drainedS.toFixed(1)} s (${(RUNS / drainedS).toFixed(2)} runs/s); ${queued} queued; peak running ${peakTenant} (per user ${peakUser}); gate ${gate.length} events, ${failedTasks} failed workflow tasks ${JSON.stringify(causes)}; ${enqueueRetries} enqueue retries\n`,
    );
    // run-queued-admitted-by-signal.json stays the v2 history (decision 0014); this is the lean one.
    await recordHistory(aQueuedRun as string, 'run-queued-lean');
  }, 600_000);

  test("when a tenant's waiting runs reach the bound, then POST /v1/runs answers 429 queue_full with Retry-After, a retry of a started run is still answered, and there is room again once they leave", async () => {
    const tenant = `full-${suffix}`;
    const repo = await makeGitRepo();
    const bounded = await startTestApi({ maxQueuedPerTenant: 3 });
    const token = await bounded.token({ sub: 'alice', tenant });
    const client = apiClient(bounded);
    const slow = runBody(repo.path, ['sh', '-c', 'sleep 30; echo done > RESULT.txt']);
    const keys = Array.from({ length: 5 }, (_, i) => `full-${i}`);
    const runs: RunView[] = [];
    try {
      // Two run (the per-user cap), three wait: the bound of 3 is reached. Each start waits until
      // the visibility store shows it settled (running or queued), so `created` never counts twice.
      for (const [k, key] of keys.entries()) {
        const res = await client.call<RunView>('POST', '/v1/runs', { token, body: slow, key });
        expect(res.status).toBe(201);
        runs.push(res.body);
        await poll(
          async () => [
            (await api.client.workflow.count(waitingRunsQuery(tenant))).count,
            (await api.client.workflow.count(`ChoirTenant = '${tenant}' AND ChoirRunStatus = 'created'`))
              .count,
          ],
          ([waiting, created]) => created === 0 && waiting === Math.max(0, k - 1),
          60_000,
        );
      }
      const res = await fetch(`${bounded.url}/v1/runs`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          'idempotency-key': 'full-extra',
        },
        body: JSON.stringify(slow),
      });
      expect(res.status).toBe(429);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(res.headers.get('retry-after')).toBe('7');
      expect(await res.json()).toMatchObject({ status: 429, code: 'queue_full' });
      // The same request again for a run that exists is that run, not a refusal.
      const again = await client.call<RunView>('POST', '/v1/runs', { token, body: slow, key: keys[4] });
      expect(again.status).toBe(201);
      expect(again.body.runId).toBe(runs[4]?.runId);

      // Cancelled runs leave the queue: there is room again.
      await Promise.all(runs.map((r) => client.call('POST', `/v1/runs/${r.runId}/cancel`, { token })));
      await Promise.all(runs.map((r) => client.waitTerminal(r.runId, token)));
      await poll(
        () => api.client.workflow.count(`ChoirTenant = '${tenant}' AND ExecutionStatus = 'Running'`),
        (c) => c.count === 0,
        60_000,
      );
      const fast = await client.call<RunView>('POST', '/v1/runs', {
        token,
        body: runBody(repo.path),
        key: 'full-after',
      });
      expect(fast.status).toBe(201);
      expect((await client.waitTerminal(fast.body.runId, token)).status).toBe('committed');
      await recordHistory(`admission-${tenant}`, 'admission-signals');
    } finally {
      // Also when a check failed: no sandbox outlives the test.
      await Promise.all(runs.map((r) => client.call('POST', `/v1/runs/${r.runId}/cancel`, { token })));
      await Promise.all(runs.map((r) => client.waitTerminal(r.runId, token).catch(() => undefined)));
      await bounded.stop();
    }
  });
});

describe('a run that is not admitted in time', () => {
  let api: TestApi;
  let worker: TestWorker;
  let nats: NatsConnection;

  beforeAll(async () => {
    worker = await startTestWorker(`it-admit-timeout-${suffix}`, {
      extraEnv: {
        ...localDriver,
        CHOIROS_MAX_RUNS_PER_TENANT: '1',
        CHOIROS_ADMISSION_TIMEOUT_SECONDS: '4',
      },
      extraTenants: [`late-${suffix}`],
    });
    api = await startTestApi();
    nats = await connectNats(env.apiCreds(), 'test-admission-reader');
  });

  afterAll(async () => {
    await api?.stop();
    await worker?.stop();
    await nats?.drain();
  });

  test('when the only slot stays taken past CHOIROS_ADMISSION_TIMEOUT_SECONDS, then the waiting run fails with admission_timeout in its view and a run.failed event, and leaves the queue', async () => {
    const tenant = `late-${suffix}`;
    const client = apiClient(api);
    const repo = await makeGitRepo();
    const alice = await api.token({ sub: 'alice', tenant });
    const bob = await api.token({ sub: 'bob', tenant });
    const first = await client.call<RunView>('POST', '/v1/runs', {
      token: alice,
      body: runBody(repo.path, ['sh', '-c', 'sleep 12; echo done > RESULT.txt']),
      key: 'late-1',
    });
    await client.waitStatus(first.body.runId, alice, 'running', 60_000);
    const second = await client.call<RunView>('POST', '/v1/runs', {
      token: bob,
      body: runBody(repo.path),
      key: 'late-2',
    });
    const queued = await client.waitStatus(second.body.runId, bob, 'queued', 30_000);
    expect(queued.queuePosition).toBe(1);
    const done = await client.waitTerminal(second.body.runId, bob, 60_000);
    expect(done).toMatchObject({ status: 'failed', error: { code: 'admission_timeout' } });
    expect(done.error?.message).toContain('not admitted within 4s');
    const events = await readRunEvents(nats, { tenant, userId: 'bob' }, second.body.runId);
    const types = events.map((e) => e.event_type);
    expect(types).toContain('run.queued');
    expect(types).not.toContain('sandbox.created');
    expect(events.find((e) => e.event_type === 'run.failed')?.payload).toMatchObject({
      error: { code: 'admission_timeout' },
    });
    // It left the queue: the gate holds only the first run, and that one still commits.
    expect((await client.waitTerminal(first.body.runId, alice, 60_000)).status).toBe('committed');
    await recordHistory(second.body.runId, 'run-admission-timeout');
  });
});
