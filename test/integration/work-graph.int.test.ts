/**
 * Work graphs end to end against the real Temporal dev server, NATS and git: a diamond whose middle
 * items run concurrently and whose last item sees every dependency's change; a failing item retried
 * in a stricter mood that then blocks its dependant; a cycle refused by the API; a 200-item graph
 * that continues as new with gap-free events; and a cancelled graph that leaves nothing behind
 * (Docker driver). The local driver keeps the rest fast.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import Docker from 'dockerode';
import { type NatsConnection } from 'nats';
import {
  SEARCH_ATTRIBUTES,
  TASK_QUEUES,
  WORKFLOW_TYPES,
  workGraphRequestSchema,
  type WorkGraphWorkflowInput,
  knownEventSchema,
  type EventEnvelope,
  type RunView,
  type WorkGraphRequestInput,
  type WorkGraphView,
} from '../../contracts';
import {
  connectNats,
  env,
  git,
  makeGitRepo,
  poll,
  startTestApi,
  startTestWorker,
  type TestApi,
  type TestWorker,
} from '../helpers/integration';
import { readRunEvents, recordHistory } from '../helpers/runs';
import { readSse } from '../helpers/sse';

let api: TestApi;
let nats: NatsConnection;
const docker = new Docker();

beforeAll(async () => {
  api = await startTestApi();
  nats = await connectNats(env.apiCreds(), 'test-graph-reader');
});

afterAll(async () => {
  await api?.stop();
  await nats?.drain();
});

async function postGraph(body: unknown, key: string): Promise<Response> {
  return fetch(`${api.url}/v1/work-graphs`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${await api.token()}`,
      'idempotency-key': key,
    },
    body: JSON.stringify(body),
  });
}

async function startGraph(body: WorkGraphRequestInput, key: string): Promise<WorkGraphView> {
  const res = await postGraph(body, key);
  const view = (await res.json()) as WorkGraphView;
  expect([res.status, view]).toEqual([201, expect.objectContaining({ graphId: expect.any(String) })]);
  return view;
}

async function getJson<T>(path: string): Promise<{ status: number; body: T }> {
  const res = await fetch(`${api.url}${path}`, { headers: { authorization: `Bearer ${await api.token()}` } });
  return { status: res.status, body: (await res.json()) as T };
}

const getGraph = async (graphId: string): Promise<WorkGraphView> =>
  (await getJson<WorkGraphView>(`/v1/work-graphs/${graphId}`)).body;
const getRun = async (runId: string): Promise<RunView> => (await getJson<RunView>(`/v1/runs/${runId}`)).body;

async function waitGraph(graphId: string, timeoutMs: number, recordAs?: string): Promise<WorkGraphView> {
  // Polls a compact projection, so a timeout reports the counts rather than every item.
  await poll(
    async () => {
      const v = await getGraph(graphId);
      return { status: v.status, counts: v.counts, continuedAsNew: v.continuedAsNew };
    },
    (v) => v.status !== 'running',
    timeoutMs,
    1000,
  );
  const view = await getGraph(graphId);
  if (recordAs) {
    const desc = await api.client.workflow.getHandle(graphId).describe();
    await recordHistory(graphId, recordAs, desc.runId);
  }
  return view;
}

function item(id: string, dependsOn: string[], execute: string[], requiredVerifiers = ['V-TRUE']) {
  return { id, description: `graph item ${id}`, execute, requiredVerifiers, dependsOn };
}

const writes = (file: string, sleepSeconds = 0): string[] => [
  'sh',
  '-c',
  `${sleepSeconds > 0 ? `sleep ${sleepSeconds}; ` : ''}echo ${file} > ${file}`,
];

const lastRun = (v: WorkGraphView, id: string) => {
  const runs = v.items.find((i) => i.id === id)?.runs ?? [];
  return runs[runs.length - 1];
};

function expectGapFree(events: EventEnvelope[], graphId: string): void {
  expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
  expect(events.every((e) => e.id === `${graphId}:${e.seq}` && e.run_id === graphId)).toBe(true);
  for (const e of events)
    expect([e.event_type, knownEventSchema.safeParse(e).error?.issues ?? []]).toEqual([e.event_type, []]);
}

describe('work graphs (local driver)', () => {
  let worker: TestWorker;
  beforeAll(async () => {
    worker = await startTestWorker('it-graph', {
      extraEnv: { CHOIROS_SANDBOX_DRIVER: 'local', CHOIROS_LOCAL_DRIVER: 'trusted-dev' },
    });
  });
  afterAll(async () => {
    await worker?.stop();
  });

  test('when a diamond graph runs, then B and C overlap, all commit, D starts from A+B+C and the graph branch holds them all', async () => {
    const repo = await makeGitRepo();
    const started = await startGraph(
      {
        repo: repo.path,
        parallelism: 4,
        items: [
          item('A', [], writes('a.txt')),
          item('B', ['A'], writes('b.txt', 2)),
          item('C', ['A'], writes('c.txt', 2)),
          item('D', ['B', 'C'], writes('d.txt'), ['V-DIAMOND-JOINED']),
        ],
      },
      'diamond-1',
    );
    expect(started.graphId).toMatch(/^graph-[0-9a-f]{32}$/);
    // The status query answers while the graph runs.
    expect(['running', 'completed']).toContain(started.status);

    const view = await waitGraph(started.graphId, 90_000, 'work-graph-diamond');
    expect(view.status).toBe('completed');
    expect(view.items.map((i) => [i.id, i.status, i.runs.length])).toEqual([
      ['A', 'committed', 1],
      ['B', 'committed', 1],
      ['C', 'committed', 1],
      ['D', 'committed', 1],
    ]);
    expect(view.counts).toEqual({ committed: 4 });

    const runs = Object.fromEntries(
      await Promise.all(['A', 'B', 'C', 'D'].map(async (id) => [id, await getRun(lastRun(view, id)!.runId)])),
    ) as Record<string, RunView>;
    for (const [id, r] of Object.entries(runs)) {
      expect([id, r.status, r.workItem.id]).toEqual([id, 'committed', id]);
      const d = await api.client.workflow.getHandle(r.runId).describe();
      expect(d.parentExecution?.workflowId).toBe(started.graphId);
    }
    // B and C ran at the same time: each started before the other finished.
    const t = (s?: string) => Date.parse(s ?? '');
    expect(t(runs.B!.startedAt)).toBeLessThan(t(runs.C!.finishedAt));
    expect(t(runs.C!.startedAt)).toBeLessThan(t(runs.B!.finishedAt));
    // D began after both, from the graph branch holding A, B and C (its verifier checked that too).
    expect(t(runs.D!.startedAt)).toBeGreaterThan(Math.max(t(runs.B!.finishedAt), t(runs.C!.finishedAt)));
    expect(runs.D!.verifiers.map((v) => [v.id, v.result])).toEqual([['V-DIAMOND-JOINED', 'pass']]);
    const files = (ref: string) => git(repo.path, 'ls-tree', '--name-only', ref).split('\n').sort();
    expect(files(runs.D!.branch!)).toEqual(['README.md', 'a.txt', 'b.txt', 'c.txt', 'd.txt']);
    expect(git(repo.path, 'diff', '--name-only', `${runs.D!.baseCommit!}..${runs.D!.branch!}`)).toBe('d.txt');
    const integration = `choiros/graph/${started.graphId}`;
    expect(view.integrationBranch).toBe(integration);
    expect(git(repo.path, 'rev-parse', integration)).toBe(view.integrationCommit);
    expect(files(integration)).toEqual(['README.md', 'a.txt', 'b.txt', 'c.txt', 'd.txt']);
    for (const id of ['A', 'B', 'C', 'D'])
      expect(git(repo.path, 'merge-base', '--is-ancestor', runs[id]!.commit!, integration)).toBe('');
    // The base branch is untouched, and no worktree is left.
    expect(git(repo.path, 'rev-parse', 'main')).toBe(repo.head);
    expect(git(repo.path, 'worktree', 'list').split('\n')).toHaveLength(1);

    // Visible in Temporal: the graph's status attribute follows it; the runs carry the run attributes.
    const desc = await api.client.workflow.getHandle(started.graphId).describe();
    expect(desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.runStatus)).toBe('completed');
    const child = await api.client.workflow.getHandle(runs.B!.runId).describe();
    expect(child.typedSearchAttributes.get(SEARCH_ATTRIBUTES.userId)).toBe('alice');
    expect(child.typedSearchAttributes.get(SEARCH_ATTRIBUTES.runStatus)).toBe('committed');
    expect(child.parentExecution?.workflowId).toBe(started.graphId);

    const events = await poll(
      () => readRunEvents(nats, { tenant: 'acme', userId: 'alice' }, started.graphId),
      (e) => e[e.length - 1]?.event_type === 'graph.completed',
      10_000,
    );
    expectGapFree(events, started.graphId);
    expect(events[0]?.event_type).toBe('graph.created');
    expect(events[events.length - 1]?.payload).toMatchObject({
      status: 'completed',
      counts: { committed: 4 },
    });
    expect(events.filter((e) => e.event_type === 'workitem.started')).toHaveLength(4);

    // The same events through the gateway's SSE, which ends after graph.completed; resumable.
    const auth = { authorization: `Bearer ${await api.token()}` };
    const sse = await readSse(`${api.url}/v1/work-graphs/${started.graphId}/events`, auth);
    expect(sse.status).toBe(200);
    expect(sse.frames.map((f) => f.id)).toEqual(events.map((e) => e.id));
    const resumed = await readSse(`${api.url}/v1/work-graphs/${started.graphId}/events`, {
      ...auth,
      'last-event-id': events[events.length - 3]!.id,
    });
    expect(resumed.frames.map((f) => f.event)).toEqual(events.slice(-2).map((e) => e.event_type));
    const bob = await readSse(`${api.url}/v1/work-graphs/${started.graphId}/events`, {
      authorization: `Bearer ${await api.token({ sub: 'bob' })}`,
    });
    expect(bob.status).toBe(404);
  });

  test('when B keeps failing, then it is retried once in SKEPTICAL (a mood transition event), D is blocked by B and the graph fails', async () => {
    const repo = await makeGitRepo();
    const started = await startGraph(
      {
        repo: repo.path,
        mood: 'CALM',
        maxAttempts: 2,
        items: [
          item('A', [], writes('a.txt')),
          item('B', ['A'], writes('b.txt'), ['V-FAILS']),
          item('C', ['A'], writes('c.txt')),
          item('D', ['B', 'C'], writes('d.txt')),
        ],
      },
      'diamond-failing-1',
    );
    const view = await waitGraph(started.graphId, 90_000, 'work-graph-blocked');
    expect(view.status).toBe('failed');
    const byId = Object.fromEntries(view.items.map((i) => [i.id, i]));
    expect([byId.A?.status, byId.B?.status, byId.C?.status, byId.D?.status]).toEqual([
      'committed',
      'failed',
      'committed',
      'blocked',
    ]);
    expect(byId.B?.runs.map((r) => [r.mood, r.status])).toEqual([
      ['CALM', 'discarded'],
      ['SKEPTICAL', 'discarded'],
    ]);
    expect(byId.B?.error?.code).toBe('verification_failed');
    expect(byId.D?.blockedBy).toEqual(['B']);
    expect(byId.D?.runs).toEqual([]);
    const second = await getRun(byId.B!.runs[1]!.runId);
    expect([second.mood, second.status]).toEqual(['SKEPTICAL', 'discarded']);

    const events = await poll(
      () => readRunEvents(nats, { tenant: 'acme', userId: 'alice' }, started.graphId),
      (e) => e[e.length - 1]?.event_type === 'graph.completed',
      10_000,
    );
    expectGapFree(events, started.graphId);
    const of = (type: string) => events.filter((e) => e.event_type === type).map((e) => e.payload);
    expect(of('workitem.retry')).toEqual([
      expect.objectContaining({ item_id: 'B', attempt: 2, from_mood: 'CALM', to_mood: 'SKEPTICAL' }),
    ]);
    expect(of('run.mood.transition')).toEqual([
      expect.objectContaining({
        from: 'CALM',
        to: 'SKEPTICAL',
        item_id: 'B',
        run_id: byId.B!.runs[0]!.runId,
      }),
    ]);
    expect(of('workitem.blocked')).toEqual([{ graph_id: started.graphId, item_id: 'D', blocked_by: ['B'] }]);
    expect(of('graph.completed')).toEqual([expect.objectContaining({ status: 'failed' })]);
    // Failed runs leave no branch; committed ones and the graph branch stay.
    const branches = git(repo.path, 'branch', '--format=%(refname:short)').split('\n').sort();
    expect(branches).toEqual(
      [
        'main',
        `choiros/graph/${started.graphId}`,
        `choiros/run/${byId.A!.runs[0]!.runId}`,
        `choiros/run/${byId.C!.runs[0]!.runId}`,
      ].sort(),
    );
  });

  test('when two items change the same file differently, then the second merge is a merge_conflict that fails its item and the graph', async () => {
    const repo = await makeGitRepo();
    const started = await startGraph(
      {
        repo: repo.path,
        parallelism: 2,
        maxAttempts: 1,
        items: [
          item('X', [], ['sh', '-c', 'echo x > same.txt']),
          item('Y', [], ['sh', '-c', 'echo y > same.txt']),
        ],
      },
      'conflict-1',
    );
    const view = await waitGraph(started.graphId, 60_000);
    expect(view.status).toBe('failed');
    const [winner, loser] = [...view.items].sort((a) => (a.status === 'committed' ? -1 : 1));
    expect([winner?.status, loser?.status, loser?.error?.code]).toEqual([
      'committed',
      'failed',
      'merge_conflict',
    ]);
    // The loser's run did commit on its own branch; only the graph branch refused it.
    expect(loser?.runs.map((r) => r.status)).toEqual(['committed']);
    expect(loser?.error?.message).toContain('same.txt');
    const integration = `choiros/graph/${started.graphId}`;
    expect(git(repo.path, 'show', `${integration}:same.txt`)).toBe(winner?.id === 'X' ? 'x' : 'y');
  });

  test('when the repository does not exist, then the graph fails with repo_not_found before any run', async () => {
    const started = await startGraph(
      { repo: join(env.workDir(), 'no-such-repo-graph'), items: [item('A', [], writes('a.txt'))] },
      'no-repo-1',
    );
    const view = await waitGraph(started.graphId, 60_000);
    expect([view.status, view.error?.code, view.items[0]?.status, view.items[0]?.runs]).toEqual([
      'failed',
      'repo_not_found',
      'cancelled',
      [],
    ]);
    const events = await poll(
      () => readRunEvents(nats, { tenant: 'acme', userId: 'alice' }, started.graphId),
      (e) => e[e.length - 1]?.event_type === 'graph.completed',
      10_000,
    );
    expect(events.map((e) => e.event_type)).toEqual(['graph.created', 'graph.completed']);
  });

  test('when a graph with a cycle is posted, then 400 dependency_cycle names the cycle and nothing starts', async () => {
    const repo = await makeGitRepo();
    const res = await postGraph(
      {
        repo: repo.path,
        items: [
          item('a', ['c'], writes('a.txt')),
          item('b', ['a'], writes('b.txt')),
          item('c', ['b'], writes('c.txt')),
        ],
      },
      'cycle-1',
    );
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    const body = (await res.json()) as { code: string; detail: string };
    expect(body.code).toBe('dependency_cycle');
    expect(body.detail).toMatch(/^dependency cycle: ([abc]) → [abc] → [abc] → \1$/);
    expect(git(repo.path, 'branch', '--format=%(refname:short)')).toBe('main');
  });

  test('when a graph continues as new (workflow started directly with a small bound), then the next run carries the item states and the event numbering', async () => {
    const repo = await makeGitRepo();
    const request = workGraphRequestSchema.parse({
      repo: repo.path,
      parallelism: 1,
      items: ['p', 'q', 'r'].map((id) => item(id, [], writes(`${id}.txt`))),
    });
    const graphId = `graph-can-${Date.now()}`;
    const input: WorkGraphWorkflowInput = {
      graphId,
      tenant: 'acme',
      userId: 'alice',
      repo: request.repo,
      baseRef: request.baseRef,
      mood: request.mood,
      parallelism: request.parallelism,
      maxAttempts: request.maxAttempts,
      items: request.items,
      requestHash: 'direct',
      requestedAt: Date.now(),
      continueAsNewAfter: 2,
    };
    const handle = await api.client.workflow.start(WORKFLOW_TYPES.workGraph, {
      workflowId: graphId,
      taskQueue: TASK_QUEUES.orchestration,
      args: [input],
      memo: { requestHash: 'direct', requestedAt: input.requestedAt },
      typedSearchAttributes: [
        { key: SEARCH_ATTRIBUTES.tenant, value: 'acme' },
        { key: SEARCH_ATTRIBUTES.userId, value: 'alice' },
        { key: SEARCH_ATTRIBUTES.runStatus, value: 'running' },
      ],
    });
    const view = (await handle.result()) as WorkGraphView;
    expect([view.status, view.continuedAsNew, view.counts]).toEqual(['completed', 1, { committed: 3 }]);
    const latest = await api.client.workflow.getHandle(graphId).describe();
    expect(latest.runId).not.toBe(handle.firstExecutionRunId);
    // Memo and search attributes went along (the API finds and authorises the graph by them).
    expect(latest.typedSearchAttributes.get(SEARCH_ATTRIBUTES.userId)).toBe('alice');
    expect(latest.typedSearchAttributes.get(SEARCH_ATTRIBUTES.runStatus)).toBe('completed');
    expect(latest.memo).toMatchObject({ requestHash: 'direct' });
    const events = await poll(
      () => readRunEvents(nats, { tenant: 'acme', userId: 'alice' }, graphId),
      (e) => e[e.length - 1]?.event_type === 'graph.completed',
      10_000,
    );
    expectGapFree(events, graphId);
    expect(events.filter((e) => e.event_type === 'workitem.completed').map((e) => e.payload.item_id)).toEqual(
      ['p', 'q', 'r'],
    );
    await recordHistory(graphId, 'work-graph-continue-as-new', handle.firstExecutionRunId);
    await recordHistory(graphId, 'work-graph-continued', latest.runId);
  });

  test('when a graph of 200 items runs, then it continues as new at least once, the status query answers throughout and its events stay gap-free', async () => {
    const repo = await makeGitRepo();
    const ids = Array.from({ length: 200 }, (_, i) => `f${String(i).padStart(3, '0')}`);
    const started = await startGraph(
      {
        repo: repo.path,
        parallelism: 8,
        items: ids.map((id) => item(id, [], writes(`${id}.txt`))),
      },
      'big-1',
    );
    const firstRunId = (await api.client.workflow.getHandle(started.graphId).describe()).runId;
    // Mid-flight the query answers with progress.
    const midway = await poll(
      async () => {
        const v = await getGraph(started.graphId);
        return { items: v.items.length, counts: v.counts };
      },
      (v) => (v.counts.committed ?? 0) >= 20,
      120_000,
      1000,
    );
    expect(midway.items).toBe(200);

    const view = await waitGraph(started.graphId, 330_000);
    expect(view.status).toBe('completed');
    expect(view.counts).toEqual({ committed: 200 });
    expect(view.continuedAsNew).toBeGreaterThanOrEqual(1);
    const desc = await api.client.workflow.getHandle(started.graphId).describe();
    expect(desc.runId).not.toBe(firstRunId);
    expect(desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.userId)).toBe('alice');
    const files = git(repo.path, 'ls-tree', '--name-only', `choiros/graph/${started.graphId}`).split('\n');
    expect(files).toHaveLength(201);

    const events = await poll(
      () => readRunEvents(nats, { tenant: 'acme', userId: 'alice' }, started.graphId),
      (e) => e[e.length - 1]?.event_type === 'graph.completed',
      20_000,
    );
    expectGapFree(events, started.graphId);
    expect(events.filter((e) => e.event_type === 'graph.created')).toHaveLength(1);
    expect(events.filter((e) => e.event_type === 'workitem.completed')).toHaveLength(200);
  }, 400_000);
});

describe('work graphs (Docker driver)', () => {
  let worker: TestWorker;
  beforeAll(async () => {
    worker = await startTestWorker('it-graph-docker');
  });
  afterAll(async () => {
    await worker?.stop();
  });

  test('when a running graph is cancelled, then its runs are cancelled and no worktree, run branch or container is left', async () => {
    const repo = await makeGitRepo();
    const started = await startGraph(
      {
        repo: repo.path,
        parallelism: 2,
        items: [
          item('X', [], writes('x.txt', 120)),
          item('Y', [], writes('y.txt', 120)),
          item('Z', ['X'], writes('z.txt')),
        ],
      },
      'cancel-1',
    );
    // Both runs are executing (their containers exist).
    const running = await poll(
      () => getGraph(started.graphId),
      (v) => v.items.filter((i) => i.runs.length === 1).length === 2,
      60_000,
    );
    const runIds = running.items.flatMap((i) => i.runs.map((r) => r.runId));
    await poll(
      async () => Promise.all(runIds.map((id) => getRun(id))),
      (rs) => rs.every((r) => r.status === 'running'),
      60_000,
    );
    const cancel = await fetch(`${api.url}/v1/work-graphs/${started.graphId}/cancel`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await api.token()}` },
    });
    expect(cancel.status).toBe(202);

    const view = await waitGraph(started.graphId, 60_000, 'work-graph-cancelled');
    expect(view.status).toBe('cancelled');
    expect(view.items.map((i) => [i.id, i.status])).toEqual([
      ['X', 'cancelled'],
      ['Y', 'cancelled'],
      ['Z', 'cancelled'],
    ]);
    for (const id of runIds) expect((await getRun(id)).status).toBe('cancelled');
    for (const id of runIds) {
      const containers = await docker.listContainers({
        all: true,
        filters: { label: [`choiros.run-id=${id}`] },
      });
      expect([id, containers]).toEqual([id, []]);
    }
    const worktrees = join(worker.dataDir, 'worktrees');
    expect(existsSync(worktrees) ? readdirSync(worktrees) : []).toEqual([]);
    expect(git(repo.path, 'worktree', 'list').split('\n')).toHaveLength(1);
    expect(git(repo.path, 'branch', '--format=%(refname:short)').split('\n').sort()).toEqual(
      ['main', `choiros/graph/${started.graphId}`].sort(),
    );
    const desc = await api.client.workflow.getHandle(started.graphId).describe();
    expect(desc.status.name).toBe('CANCELLED');
  });
});
