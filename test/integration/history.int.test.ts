/**
 * History size of a minimal committed run (`true`, one verifier) through the API: a structural
 * count of its Temporal history events, so the lean run shape (decision 0015) cannot regress.
 */
import { temporal } from '@temporalio/proto';
import { type NatsConnection } from 'nats';
import {
  connectNats,
  env,
  makeGitRepo,
  startTestApi,
  startTestWorker,
  type TestApi,
  type TestWorker,
} from '../helpers/integration';
import { apiClient, expectGapFree, readRunEvents, recordHistory } from '../helpers/runs';

/** The budget of issue 17: a minimal committed run fits in this many history events. */
const MAX_HISTORY_EVENTS = 40;

let api: TestApi;
let worker: TestWorker;
let nats: NatsConnection;

beforeAll(async () => {
  worker = await startTestWorker('it-history');
  api = await startTestApi();
  nats = await connectNats(env.apiCreds(), 'history-test-reader');
});

afterAll(async () => {
  await api?.stop();
  await worker?.stop();
  await nats?.drain();
});

test(`when a minimal run commits, then its history has at most ${MAX_HISTORY_EVENTS} events and every event is in JetStream once`, async () => {
  const repo = await makeGitRepo();
  const client = apiClient(api);
  const token = await api.token({ sub: 'hist', tenant: 'acme' });
  const started = await client.call<{ runId: string }>('POST', '/v1/runs', {
    token,
    body: {
      repo: repo.path,
      baseRef: 'main',
      mood: 'CALM',
      workItem: { description: 'history: nothing to do', execute: ['true'], requiredVerifiers: ['V-TRUE'] },
    },
  });
  expect(started.status).toBe(201);
  const runId = started.body.runId;
  const view = await client.waitTerminal(runId, token);
  expect(view.status).toBe('committed');
  await recordHistory(runId, 'run-minimal');

  const history = await api.client.workflow.getHandle(runId).fetchHistory();
  const events = history.events ?? [];
  // Printed for docs/benchmarks.md ("History events per run").
  const byType: Record<string, number> = {};
  for (const e of events) {
    const type = (temporal.api.enums.v1.EventType[e.eventType ?? 0] ?? 'UNKNOWN').replace('EVENT_TYPE_', '');
    byType[type] = (byType[type] ?? 0) + 1;
  }
  process.stdout.write(`minimal run ${runId}: ${events.length} history events ${JSON.stringify(byType)}\n`);
  expect(events.length).toBeLessThanOrEqual(MAX_HISTORY_EVENTS);

  // The lean shape keeps the event guarantees: gap-free, each once, in order.
  const published = await readRunEvents(nats, { tenant: 'acme', userId: 'hist' }, runId);
  expectGapFree(published);
  expect(published).toHaveLength(view.events.emitted);
  expect(published.at(-1)?.event_type).toBe('run.completed');
});
