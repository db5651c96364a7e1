/**
 * The whole foundation path against real services: an authenticated HTTP request starts a Temporal
 * workflow, a worker runs the work item in a Docker container and verifies it in a second,
 * network-less container, events land in NATS JetStream, and the API reports the result.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import Docker from 'dockerode';
import { type NatsConnection } from 'nats';
import { SEARCH_ATTRIBUTES, knownEventSchema, type RunView } from '../../contracts';
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

let api: TestApi;
let worker: TestWorker;
let nats: NatsConnection;
const docker = new Docker();

beforeAll(async () => {
  worker = await startTestWorker('it-run');
  api = await startTestApi();
  nats = await connectNats(env.apiCreds(), 'test-reader');
});

afterAll(async () => {
  await api?.stop();
  await worker?.stop();
  await nats?.drain();
});

async function post(body: unknown, opts: { token?: string; key?: string } = {}): Promise<Response> {
  return fetch(`${api.url}/v1/runs`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${opts.token ?? (await api.token())}`,
      ...(opts.key ? { 'idempotency-key': opts.key } : {}),
    },
    body: JSON.stringify(body),
  });
}

async function getRun(runId: string, token?: string): Promise<{ status: number; body: RunView }> {
  const res = await fetch(`${api.url}/v1/runs/${runId}`, {
    headers: { authorization: `Bearer ${token ?? (await api.token())}` },
  });
  return { status: res.status, body: (await res.json()) as RunView };
}

async function waitTerminal(runId: string, recordAs?: string): Promise<RunView> {
  const { body } = await poll(
    () => getRun(runId),
    (r) =>
      ['committed', 'discarded', 'failed', 'cancelled'].includes(r.body.status) &&
      r.body.events.published === r.body.events.emitted,
    120_000,
  );
  if (recordAs) await recordHistory(runId, recordAs);
  return body;
}

async function managedContainers(runId: string): Promise<number> {
  const list = await docker.listContainers({ all: true, filters: { label: [`choiros.run-id=${runId}`] } });
  return list.length;
}

function request(repo: string, execute: string[], verifiers: string[]) {
  return {
    repo,
    baseRef: 'main',
    mood: 'CALM',
    workItem: {
      description: 'write the result file',
      execute,
      requiredVerifiers: verifiers,
      riskTier: 'low',
    },
  };
}

describe('a run through the API', () => {
  test('when the work item writes a file and its verifiers pass, then the run commits on its branch and every event is in JetStream', async () => {
    const repo = await makeGitRepo();
    const body = request(
      repo.path,
      ['sh', '-c', 'echo done > RESULT.txt'],
      ['V-RESULT-FILE', 'V-README-INTACT', 'V-CANNOT-WRITE', 'V-NO-NETWORK'],
    );
    const res = await post(body, { key: 'happy-1' });
    expect(res.status).toBe(201);
    const started = (await res.json()) as RunView;
    expect(started.runId).toMatch(/^run-[0-9a-f]{32}$/);
    expect(res.headers.get('location')).toBe(`/v1/runs/${started.runId}`);

    // The same Idempotency-Key is the same run.
    const again = (await (await post(body, { key: 'happy-1' })).json()) as RunView;
    expect(again.runId).toBe(started.runId);

    const view = await waitTerminal(started.runId, 'run-committed');
    expect(view.status).toBe('committed');
    // The 201 was answered from the start call alone (decision 0021): it is the run's first view.
    expect(started.status).toBe('created');
    const firstView = (({ runId, tenant, userId, mood, repo, baseRef, workItem, createdAt }: RunView) => ({
      runId,
      tenant,
      userId,
      mood,
      repo,
      baseRef,
      workItem,
      createdAt,
    }))(view);
    expect(started).toMatchObject(firstView);
    expect(again).toMatchObject(firstView);
    expect(view.execution?.exitCode).toBe(0);
    expect(view.verifiers.map((v) => [v.id, v.result, v.exitCode])).toEqual([
      ['V-RESULT-FILE', 'pass', 0],
      ['V-README-INTACT', 'pass', 0],
      ['V-CANNOT-WRITE', 'pass', 0],
      ['V-NO-NETWORK', 'pass', 0],
    ]);
    expect(view.baseCommit).toBe(repo.head);
    expect(view.branch).toBe(`choiros/run/${started.runId}`);
    expect(view.startedAt).toBeDefined();
    expect(view.finishedAt).toBeDefined();

    // The branch holds exactly the change; the base branch is untouched.
    expect(git(repo.path, 'rev-parse', 'main')).toBe(repo.head);
    expect(git(repo.path, 'rev-parse', `${view.branch}^`)).toBe(repo.head);
    expect(git(repo.path, 'rev-parse', view.branch!)).toBe(view.commit);
    expect(git(repo.path, 'diff', '--name-only', `main..${view.branch}`)).toBe('RESULT.txt');
    expect(git(repo.path, 'show', `${view.branch}:RESULT.txt`)).toBe('done');

    // Sandbox gone: no container, no worktree.
    expect(await managedContainers(started.runId)).toBe(0);
    expect(existsSync(join(worker.dataDir, 'worktrees', started.runId))).toBe(false);
    expect(git(repo.path, 'worktree', 'list')).not.toContain(started.runId);

    // Events: complete, gap-free, in order, deterministic ids, on the user's subject prefix.
    const events = await readRunEvents(nats, { tenant: 'acme', userId: 'alice' }, started.runId);
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
    expect(events.length).toBe(view.events.emitted);
    expect(
      events.every(
        (e) => e.id === `${started.runId}:${e.seq}` && e.user_id === 'alice' && e.tenant === 'acme',
      ),
    ).toBe(true);
    const types = events.map((e) => e.event_type);
    expect(types[0]).toBe('run.created');
    expect(types).toEqual(
      expect.arrayContaining([
        'sandbox.created',
        'run.execution.completed',
        'receipt.verifier.attestations',
        'receipt.commit',
        'sandbox.destroyed',
      ]),
    );
    expect(types[types.length - 1]).toBe('run.completed');
    // Every event matches the published schema of its type.
    for (const e of events)
      expect([e.event_type, knownEventSchema.safeParse(e).error?.issues ?? []]).toEqual([e.event_type, []]);
    const statuses = events.filter((e) => e.event_type === 'note.status').map((e) => e.payload.status);
    expect(statuses).toEqual(['running', 'verifying', 'committed']);

    // Visible in Temporal with the project's search attributes.
    const desc = await api.client.workflow.getHandle(started.runId).describe();
    expect(desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.userId)).toBe('alice');
    expect(desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.tenant)).toBe('acme');
    expect(desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.runStatus)).toBe('committed');
    expect(desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.mood)).toBe('CALM');
    expect(desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.repo)).toBe(repo.path);
    // The verified identity travels with the work: token id in the memo, scopes in the input.
    expect(desc.memo?.startedByTokenId).toEqual(expect.stringMatching(/^[0-9a-f-]{36}$/));
    const found = await poll(
      async () => {
        const ids: string[] = [];
        for await (const w of api.client.workflow.list({
          query: `ChoirUserId = 'alice' AND ChoirRunStatus = 'committed'`,
        }))
          ids.push(w.workflowId);
        return ids;
      },
      (ids) => ids.includes(started.runId),
      30_000,
    );
    expect(found).toContain(started.runId);
  });

  test('when a verifier fails, then the run is discarded and leaves no branch, worktree or container', async () => {
    const repo = await makeGitRepo();
    const res = await post(
      request(repo.path, ['sh', '-c', 'echo done > RESULT.txt'], ['V-RESULT-FILE', 'V-FAILS']),
    );
    expect(res.status).toBe(201);
    const { runId } = (await res.json()) as RunView;
    const view = await waitTerminal(runId, 'run-discarded');
    expect(view.status).toBe('discarded');
    const failing = view.verifiers.find((v) => v.id === 'V-FAILS');
    expect(failing).toMatchObject({ result: 'fail', exitCode: 3 });
    expect(failing?.outputTail).toContain('verifier says no');
    expect(view.error?.code).toBe('verification_failed');
    expect(view.branch).toBeUndefined();
    expect(git(repo.path, 'branch', '--list', `choiros/run/${runId}`)).toBe('');
    expect(git(repo.path, 'rev-parse', 'main')).toBe(repo.head);
    expect(await managedContainers(runId)).toBe(0);
    expect(existsSync(join(worker.dataDir, 'worktrees', runId))).toBe(false);
    const events = await readRunEvents(nats, { tenant: 'acme', userId: 'alice' }, runId);
    expect(events.map((e) => e.event_type)).toContain('run.discarded');
  });

  test('when the work item command exits non-zero, then the run fails without running verifiers', async () => {
    const repo = await makeGitRepo();
    const res = await post(request(repo.path, ['sh', '-c', 'echo broken >&2; exit 7'], ['V-RESULT-FILE']));
    const { runId } = (await res.json()) as RunView;
    const view = await waitTerminal(runId, 'run-execution-failed');
    expect(view.status).toBe('failed');
    expect(view.execution).toMatchObject({ exitCode: 7 });
    expect(view.execution?.outputTail).toContain('broken');
    expect(view.verifiers).toEqual([]);
    expect(view.error?.code).toBe('execution_failed');
    expect(git(repo.path, 'branch', '--list', `choiros/run/${runId}`)).toBe('');
  });

  test('when the repository does not exist, then the run fails with repo_not_found and no retry storm', async () => {
    // Under the tenant's grant (a missing path is judged as written), so the worker is the one to find it missing.
    const res = await post(request(join(env.workDir(), 'nonexistent-repo'), ['true'], ['V-RESULT-FILE']));
    expect(res.status).toBe(201);
    const { runId } = (await res.json()) as RunView;
    const view = await waitTerminal(runId, 'run-repo-not-found');
    expect(view.status).toBe('failed');
    expect(view.error?.code).toBe('repo_not_found');
    // Non-retryable: createSandbox ran exactly once.
    const history = await api.client.workflow.getHandle(runId).fetchHistory();
    const attempts = (history.events ?? [])
      .map((e) => e.activityTaskStartedEventAttributes?.attempt)
      .filter((a): a is number => typeof a === 'number');
    expect(attempts.length).toBeGreaterThan(0);
    expect(attempts.filter((a) => a !== 1)).toEqual([]);
  });

  test('when the same Idempotency-Key comes with a different body, then 422 names the conflict', async () => {
    const repo = await makeGitRepo();
    const first = await post(request(repo.path, ['true'], ['V-README-INTACT']), { key: 'conflict-1' });
    expect(first.status).toBe(201);
    const second = await post(request(repo.path, ['false'], ['V-README-INTACT']), { key: 'conflict-1' });
    expect(second.status).toBe(422);
    expect(second.headers.get('content-type')).toContain('application/problem+json');
    expect(((await second.json()) as { code: string }).code).toBe('idempotency_key_reused');
    await waitTerminal(((await first.json()) as RunView).runId);
  });

  test('when another user asks for a run, then it answers 404 as if it did not exist', async () => {
    const repo = await makeGitRepo();
    const { runId } = (await (
      await post(request(repo.path, ['true'], ['V-README-INTACT']))
    ).json()) as RunView;
    const bob = await api.token({ sub: 'bob', tenant: 'acme' });
    const other = await getRun(runId, bob);
    expect(other.status).toBe(404);
    const otherTenant = await getRun(runId, await api.token({ sub: 'alice', tenant: 'globex' }));
    expect(otherTenant.status).toBe(404);
    await waitTerminal(runId);
  });

  test('when a token may only write, then it can start and cancel its run (answers need no read scope)', async () => {
    const repo = await makeGitRepo();
    const writer = await api.token({ scope: 'runs:write' });
    const res = await post(request(repo.path, ['sleep', '30'], ['V-README-INTACT']), {
      token: writer,
      key: 'write-only-1',
    });
    expect(res.status).toBe(201);
    const { runId } = (await res.json()) as RunView;
    const cancel = await fetch(`${api.url}/v1/runs/${runId}/cancel`, {
      method: 'POST',
      headers: { authorization: `Bearer ${writer}` },
    });
    expect(cancel.status).toBe(202);
    expect((await waitTerminal(runId)).status).toBe('cancelled');
    // Reading still needs runs:read.
    expect((await getRun(runId, writer)).status).toBe(403);
  });

  test('when the services are up, then /readyz reports both ready', async () => {
    const res = await fetch(`${api.url}/readyz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({
      status: 'ready',
      checks: { temporal: { ok: true }, nats: { ok: true } },
    });
  });
});

describe('idempotency under concurrency', () => {
  test('when the same request with the same key arrives 8 times at once, then one workflow runs and all answers name it', async () => {
    const repo = await makeGitRepo();
    const body = request(repo.path, ['sh', '-c', 'echo done > RESULT.txt'], ['V-RESULT-FILE']);
    const token = await api.token();
    const answers = await Promise.all(
      Array.from({ length: 8 }, () => post(body, { token, key: 'concurrent-1' })),
    );
    expect(answers.map((a) => a.status)).toEqual(Array(8).fill(201));
    const ids = new Set(await Promise.all(answers.map(async (a) => ((await a.json()) as RunView).runId)));
    expect(ids.size).toBe(1);
    const [runId] = [...ids];
    await waitTerminal(runId!);
    const executions = await poll(
      async () => {
        const found: string[] = [];
        for await (const w of api.client.workflow.list({ query: `WorkflowId = '${runId}'` }))
          found.push(w.runId);
        return found;
      },
      (f) => f.length > 0,
      30_000,
    );
    expect(executions).toHaveLength(1);
    // And once it has finished, the same key still answers with that run (a lost response is recoverable).
    const late = await post(body, { token, key: 'concurrent-1' });
    expect(((await late.json()) as RunView).runId).toBe(runId);
  });
});

describe('listing and cross-user access', () => {
  test('when runs are listed, then each caller sees only their own (tenant admins their tenant), filtered and paginated', async () => {
    const repo = await makeGitRepo();
    const alice = await api.token({ sub: 'lister', tenant: 'acme' });
    const ids: string[] = [];
    for (const key of ['list-1', 'list-2']) {
      const res = await post(request(repo.path, ['sh', '-c', 'echo done > RESULT.txt'], ['V-RESULT-FILE']), {
        token: alice,
        key,
      });
      const id = ((await res.json()) as RunView).runId;
      ids.push(id);
      // Distinct start and close times: the dev server's SQLite visibility pages by time, and
      // runs that start and close within the same instant can come back on two pages.
      await poll(
        () => getRun(id, alice),
        (r) => r.body.finishedAt !== undefined,
        120_000,
      );
      await new Promise((r) => setTimeout(r, 1100));
    }
    const list = async (token: string, qs: string) =>
      (await (
        await fetch(`${api.url}/v1/runs?${qs}`, { headers: { authorization: `Bearer ${token}` } })
      ).json()) as {
        runs: { runId: string; userId: string; status: string }[];
        nextPageToken?: string;
      };
    const mine = await poll(
      () => list(alice, 'status=committed'),
      (l) => ids.every((id) => l.runs.some((r) => r.runId === id)),
      30_000,
    );
    expect(mine.runs.every((r) => r.userId === 'lister' && r.status === 'committed')).toBe(true);
    // Pages over a stable set (closed runs) do not overlap.
    const page1 = await list(alice, 'status=committed&pageSize=1');
    expect(page1.runs).toHaveLength(1);
    expect(page1.nextPageToken).toBeDefined();
    const page2 = await list(alice, `status=committed&pageSize=1&pageToken=${page1.nextPageToken}`);
    expect(page2.runs).toHaveLength(1);
    expect(page2.runs[0]?.runId).not.toBe(page1.runs[0]?.runId);
    const bob = await list(await api.token({ sub: 'bob', tenant: 'acme' }), 'pageSize=100');
    expect(bob.runs.some((r) => ids.includes(r.runId))).toBe(false);
    const admin = await list(
      await api.token({ sub: 'root', tenant: 'acme', scope: 'runs:read tenant:admin' }),
      'userId=lister&pageSize=100',
    );
    expect(ids.every((id) => admin.runs.some((r) => r.runId === id))).toBe(true);
    const otherTenantAdmin = await list(
      await api.token({ sub: 'root', tenant: 'globex', scope: 'runs:read tenant:admin' }),
      'pageSize=100',
    );
    expect(otherTenantAdmin.runs.some((r) => ids.includes(r.runId))).toBe(false);
  });

  test('when another user or tenant touches a run on any route, then 404 every time', async () => {
    const repo = await makeGitRepo();
    const res = await post(request(repo.path, ['sleep', '2'], ['V-README-INTACT']));
    const { runId } = (await res.json()) as RunView;
    for (const intruder of [
      await api.token({ sub: 'bob', tenant: 'acme' }),
      await api.token({ sub: 'alice', tenant: 'globex' }),
    ]) {
      const h = { authorization: `Bearer ${intruder}` };
      expect((await fetch(`${api.url}/v1/runs/${runId}`, { headers: h })).status).toBe(404);
      expect((await fetch(`${api.url}/v1/runs/${runId}/events`, { headers: h })).status).toBe(404);
      expect((await fetch(`${api.url}/v1/runs/${runId}/cancel`, { method: 'POST', headers: h })).status).toBe(
        404,
      );
    }
    // A tenant admin may read but not cancel someone else's run.
    const admin = {
      authorization: `Bearer ${await api.token({ sub: 'root', tenant: 'acme', scope: 'runs:read runs:write tenant:admin' })}`,
    };
    expect((await fetch(`${api.url}/v1/runs/${runId}`, { headers: admin })).status).toBe(200);
    expect(
      (await fetch(`${api.url}/v1/runs/${runId}/cancel`, { method: 'POST', headers: admin })).status,
    ).toBe(404);
    expect((await waitTerminal(runId)).status).toBe('committed');
  });
});
