/**
 * Run control against the real dev server, NATS, Docker and git: approvals (independent review,
 * quorum, reject, deadline), human interrupts, reruns pinned to the first run's base commit and
 * image, the fairness gate and the wall-clock budget — all through the HTTP API.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import Docker from 'dockerode';
import type { NatsConnection } from 'nats';
import type { InterruptView, RunView } from '../../contracts';
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
import { main as cli } from '../../api/cli/main';
import { apiClient, expectGapFree, readRunEvents, recordHistory, tokenId } from '../helpers/runs';

let api: TestApi;
let worker: TestWorker;
let nats: NatsConnection;
let client: ReturnType<typeof apiClient>;
const docker = new Docker();
const suffix = randomUUID().slice(0, 8);

beforeAll(async () => {
  worker = await startTestWorker('it-control', {
    extraEnv: { CHOIROS_MAX_RUNS_PER_USER: '2' },
    // The tenants people() makes (each test its own), which the worker's grant re-check must know.
    extraTenants: [...PEOPLE, 'other'].map((n) => `${n}-${suffix}`),
  });
  api = await startTestApi();
  client = apiClient(api);
  nats = await connectNats(env.apiCreds(), 'test-control-reader');
});

afterAll(async () => {
  await api?.stop();
  await worker?.stop();
  await nats?.drain();
});

interface RunOpts {
  mood?: string;
  riskTier?: string;
  execute?: string[];
  verifiers?: string[];
  budgets?: Record<string, number>;
  review?: Record<string, unknown>;
}

function runBody(repo: string, o: RunOpts = {}) {
  return {
    repo,
    baseRef: 'main',
    mood: o.mood ?? 'CALM',
    ...(o.budgets ? { budgets: o.budgets } : {}),
    ...(o.review ? { review: o.review } : {}),
    workItem: {
      description: 'write the result file',
      execute: o.execute ?? ['sh', '-c', 'echo done > RESULT.txt'],
      requiredVerifiers: o.verifiers ?? ['V-RESULT-FILE'],
      riskTier: o.riskTier ?? 'low',
    },
  };
}

async function start(token: string, body: unknown): Promise<RunView> {
  const res = await client.call<RunView>('POST', '/v1/runs', { token, body, key: randomUUID() });
  expect(res.status).toBe(201);
  return res.body;
}

const PEOPLE = [
  'appr',
  'ask',
  'budget',
  'deadline',
  'fair',
  'quorum',
  'reject',
  'rerun',
  'rerunv',
  'silent',
] as const;

/** Tokens of one tenant of this test: the author, a reviewer and an outsider from another tenant. */
async function people(name: (typeof PEOPLE)[number]) {
  const tenant = `${name}-${suffix}`;
  return {
    tenant,
    alice: await api.token({ sub: 'alice', tenant }),
    bob: await api.token({ sub: 'bob', tenant, scope: 'runs:read runs:approve' }),
    dave: await api.token({ sub: 'dave', tenant, scope: 'runs:read runs:approve' }),
    outsider: await api.token({ sub: 'carol', tenant: `other-${suffix}`, scope: 'runs:read runs:approve' }),
  };
}

async function leftovers(repoPath: string, runId: string) {
  const containers = await docker.listContainers({
    all: true,
    filters: { label: [`choiros.run-id=${runId}`] },
  });
  return {
    containers: containers.length,
    worktree: existsSync(join(worker.dataDir, 'worktrees', runId)),
    branch: git(repoPath, 'branch', '--list', `choiros/run/${runId}`),
  };
}

describe('approvals', () => {
  test('when a PARANOID run is verified, then it waits for independent review: the author is refused, an outsider gets 404, a reviewer approves and it commits with the approver in its events', async () => {
    const p = await people('appr');
    const repo = await makeGitRepo();
    const run = await start(p.alice, runBody(repo.path, { mood: 'PARANOID' }));
    const waiting = await client.waitStatus(run.runId, p.alice, 'awaiting_approval', 120_000);
    expect(waiting.approval).toMatchObject({ requirement: 'independent', quorum: 1, approvals: [] });
    // PARANOID confirms every pass with an independent second run.
    expect(waiting.verifiers[0]).toMatchObject({
      id: 'V-RESULT-FILE',
      result: 'pass',
      attempts: ['pass', 'pass'],
    });

    const own = await client.call<{ code: string }>('POST', `/v1/runs/${run.runId}/approve`, {
      token: p.alice,
    });
    expect(own.status).toBe(403);
    expect(own.body.code).toBe('self_approval_forbidden');
    const foreign = await client.call('POST', `/v1/runs/${run.runId}/approve`, { token: p.outsider });
    expect(foreign.status).toBe(404);

    const ok = await client.call<{ result: { outcome: string } }>('POST', `/v1/runs/${run.runId}/approve`, {
      token: p.bob,
      body: { comment: 'looks right' },
    });
    expect(ok.status).toBe(200);
    expect(ok.body.result.outcome).toBe('approved');

    const done = await client.waitTerminal(run.runId, p.alice);
    expect(done.status).toBe('committed');
    expect(done.approval).toMatchObject({
      decision: 'approved',
      decidedBy: { userId: 'bob', tenant: p.tenant },
    });
    expect(git(repo.path, 'show', `${done.commit}:RESULT.txt`)).toBe('done');
    expect(git(repo.path, 'rev-parse', 'main')).toBe(repo.head);

    const events = await readRunEvents(nats, { tenant: p.tenant, userId: 'alice' }, run.runId);
    expectGapFree(events);
    const requested = events.find((e) => e.event_type === 'run.approval.requested');
    expect(requested?.payload).toMatchObject({ requirement: 'independent', author: 'alice' });
    const decided = events.filter((e) => e.event_type === 'run.approval.decided');
    expect(decided).toHaveLength(1);
    expect(decided[0]?.source).toBe('user');
    expect(decided[0]?.payload).toMatchObject({
      approver_user_id: 'bob',
      approver_tenant: p.tenant,
      approver_token_id: tokenId(p.bob),
      comment: 'looks right',
      outcome: 'approved',
    });
    await recordHistory(run.runId, 'run-approved-independent');
  });

  test('when the request asks for a quorum of 2, then one approval is pending, the same approver twice is refused, and a second approver commits', async () => {
    const p = await people('quorum');
    const repo = await makeGitRepo();
    const run = await start(p.alice, runBody(repo.path, { review: { quorum: 2 } }));
    await client.waitStatus(run.runId, p.alice, 'awaiting_approval', 120_000);

    const first = await client.call<{ result: { outcome: string; approvals: number; quorum: number } }>(
      'POST',
      `/v1/runs/${run.runId}/approve`,
      { token: p.alice },
    );
    expect(first.status).toBe(200);
    expect(first.body.result).toEqual({ outcome: 'pending', approvals: 1, quorum: 2 });
    const again = await client.call<{ code: string }>('POST', `/v1/runs/${run.runId}/approve`, {
      token: p.alice,
    });
    expect(again.status).toBe(409);
    expect(again.body.code).toBe('already_approved');
    const second = await client.call<{ result: { outcome: string } }>(
      'POST',
      `/v1/runs/${run.runId}/approve`,
      {
        token: p.dave,
      },
    );
    expect(second.body.result.outcome).toBe('approved');
    const done = await client.waitTerminal(run.runId, p.alice);
    expect(done.status).toBe('committed');
    expect(done.approval?.approvals.map((a) => a.userId)).toEqual(['alice', 'dave']);
  });

  test('when a reviewer rejects, then the run is discarded and leaves no branch, worktree or container; approving it afterwards is a 409', async () => {
    const p = await people('reject');
    const repo = await makeGitRepo();
    const run = await start(p.alice, runBody(repo.path, { mood: 'CONTRITE' }));
    await client.waitStatus(run.runId, p.alice, 'awaiting_approval', 120_000);
    // Through the CLI, as a reviewer would.
    const lines: string[] = [];
    const code = await cli(
      ['runs', 'reject', run.runId, '--comment', 'not now', '--api', api.url, '--token', p.bob],
      {},
      (l) => lines.push(l),
    );
    expect(code).toBe(0);
    expect(lines.join('\n')).toContain(`rejected ${run.runId}: rejected`);
    const done = await client.waitTerminal(run.runId, p.alice);
    expect(done).toMatchObject({ status: 'discarded', error: { code: 'approval_rejected' } });
    expect(await leftovers(repo.path, run.runId)).toEqual({ containers: 0, worktree: false, branch: '' });
    const late = await client.call<{ code: string }>('POST', `/v1/runs/${run.runId}/approve`, {
      token: p.bob,
    });
    expect(late.status).toBe(409);
    expect(late.body.code).toBe('not_awaiting_approval');
  });

  test('when nobody approves by the deadline, then the run is discarded (the safe default) and receipt.timeout is emitted', async () => {
    const p = await people('deadline');
    const repo = await makeGitRepo();
    const run = await start(
      p.alice,
      runBody(repo.path, { riskTier: 'medium', budgets: { approvalTimeoutSeconds: 2 } }),
    );
    const done = await client.waitTerminal(run.runId, p.alice);
    expect(done).toMatchObject({ status: 'discarded', error: { code: 'approval_timeout' } });
    expect(done.approval?.decision).toBe('timed_out');
    expect(await leftovers(repo.path, run.runId)).toEqual({ containers: 0, worktree: false, branch: '' });
    const events = await readRunEvents(nats, { tenant: p.tenant, userId: 'alice' }, run.runId);
    expect(events.find((e) => e.event_type === 'receipt.timeout')?.payload).toMatchObject({
      kind: 'approval',
      default_action: 'discard',
    });
  });
});

describe('human interrupts', () => {
  test('when a DEFERENTIAL run asks before executing, then a wrong answer is refused, the owner answers proceed through the API, and after approval it commits', async () => {
    const p = await people('ask');
    const repo = await makeGitRepo();
    const run = await start(p.alice, runBody(repo.path, { mood: 'DEFERENTIAL' }));
    const asked = await poll(
      async () => (await client.getRun(run.runId, p.alice)).body,
      (v) => v.interrupts?.[0]?.status === 'open',
    );
    const it = asked.interrupts?.[0] as InterruptView;
    expect(it).toMatchObject({
      kind: 'REQUEST_REVIEW',
      options: ['proceed', 'abort'],
      defaultAction: 'abort',
    });
    expect(asked.status).toBe('created');

    const path = `/v1/runs/${run.runId}/interrupts/${it.id}/answer`;
    const wrong = await client.call<{ code: string }>('POST', path, {
      token: p.alice,
      body: { answer: 'maybe' },
    });
    expect(wrong.status).toBe(400);
    expect(wrong.body.code).toBe('invalid_answer');
    const unknown = await client.call('POST', `/v1/runs/${run.runId}/interrupts/int-9/answer`, {
      token: p.alice,
      body: { answer: 'proceed' },
    });
    expect(unknown.status).toBe(404);
    const answered = await client.call<InterruptView>('POST', path, {
      token: p.alice,
      body: { answer: 'proceed' },
    });
    expect(answered.status).toBe(200);
    expect(answered.body).toMatchObject({
      status: 'answered',
      answer: 'proceed',
      answeredBy: { userId: 'alice' },
    });
    const twice = await client.call<{ code: string }>('POST', path, {
      token: p.alice,
      body: { answer: 'abort' },
    });
    expect(twice.status).toBe(409);
    expect(twice.body.code).toBe('interrupt_closed');

    await client.waitStatus(run.runId, p.alice, 'awaiting_approval', 120_000);
    expect((await client.call('POST', `/v1/runs/${run.runId}/approve`, { token: p.alice })).status).toBe(200);
    const done = await client.waitTerminal(run.runId, p.alice);
    expect(done.status).toBe('committed');
    const events = await readRunEvents(nats, { tenant: p.tenant, userId: 'alice' }, run.runId);
    expect(events.find((e) => e.event_type === 'run.interrupt.answered')?.payload).toMatchObject({
      interrupt_id: it.id,
      answer: 'proceed',
      answered_by: 'alice',
      token_id: tokenId(p.alice),
    });
    await recordHistory(run.runId, 'run-interrupt-approved');
  });

  test('when an interrupt is not answered by its deadline, then its default (abort) runs, receipt.timeout is emitted and no sandbox was made', async () => {
    const p = await people('silent');
    const repo = await makeGitRepo();
    const run = await start(
      p.alice,
      runBody(repo.path, { mood: 'DEFERENTIAL', budgets: { interruptTimeoutSeconds: 2 } }),
    );
    const done = await client.waitTerminal(run.runId, p.alice);
    expect(done).toMatchObject({ status: 'discarded', error: { code: 'interrupt_declined' } });
    expect(done.interrupts?.[0]).toMatchObject({ status: 'timed_out', answer: 'abort' });
    const events = await readRunEvents(nats, { tenant: p.tenant, userId: 'alice' }, run.runId);
    expect(events.map((e) => e.event_type)).not.toContain('sandbox.created');
    expect(events.find((e) => e.event_type === 'receipt.timeout')?.payload).toMatchObject({
      kind: 'interrupt',
      default_action: 'abort',
    });
  });
});

describe('reruns', () => {
  test('when a run is rerun after main moved on, then the new run uses exactly the first run base commit and image, in the mood asked, linked to it', async () => {
    const p = await people('rerun');
    const repo = await makeGitRepo();
    const first = await start(p.alice, runBody(repo.path));
    const one = await client.waitTerminal(first.runId, p.alice);
    expect(one.status).toBe('committed');
    git(
      repo.path,
      '-c',
      'user.name=T',
      '-c',
      'user.email=t@example.invalid',
      'commit',
      '--allow-empty',
      '-qm',
      'moved',
    );
    const movedHead = git(repo.path, 'rev-parse', 'main');
    expect(movedHead).not.toBe(one.baseCommit);

    const erin = await api.token({ sub: 'erin', tenant: p.tenant });
    const other = await client.call('POST', `/v1/runs/${first.runId}/rerun`, { token: erin, body: {} });
    expect(other.status).toBe(404);
    const res = await client.call<RunView>('POST', `/v1/runs/${first.runId}/rerun`, {
      token: p.alice,
      body: { mood: 'SKEPTICAL' },
      key: 'rerun-1',
    });
    expect(res.status).toBe(201);
    expect(res.body.runId).not.toBe(first.runId);
    const again = await client.call<RunView>('POST', `/v1/runs/${first.runId}/rerun`, {
      token: p.alice,
      body: { mood: 'SKEPTICAL' },
      key: 'rerun-1',
    });
    expect(again.body.runId).toBe(res.body.runId);

    const two = await client.waitTerminal(res.body.runId, p.alice);
    expect(two).toMatchObject({ status: 'committed', mood: 'SKEPTICAL', rerunOf: first.runId });
    expect(two.baseCommit).toBe(one.baseCommit);
    expect(two.imageId).toBe(one.imageId);
    expect(git(repo.path, 'rev-parse', `${two.commit}^`)).toBe(one.baseCommit);
    const events = await readRunEvents(nats, { tenant: p.tenant, userId: 'alice' }, two.runId);
    expect(events[0]?.payload).toMatchObject({ rerun_of: first.runId, image_id: one.imageId });
  });
});

describe('fairness', () => {
  test("when a user is at the per-user cap of 2, then their third run waits as queued while another user's run starts at once", async () => {
    const p = await people('fair');
    const erin = await api.token({ sub: 'erin', tenant: p.tenant });
    const repo = await makeGitRepo();
    const slow = runBody(repo.path, { execute: ['sh', '-c', 'sleep 8; echo done > RESULT.txt'] });
    const a1 = await start(p.alice, slow);
    const a2 = await start(p.alice, slow);
    await poll(
      async () => [
        (await client.getRun(a1.runId, p.alice)).body.status,
        (await client.getRun(a2.runId, p.alice)).body.status,
      ],
      (s) => s.every((x) => x === 'running'),
      60_000,
    );
    const a3 = await start(p.alice, slow);
    const queued = await client.waitStatus(a3.runId, p.alice, 'queued', 30_000);
    expect(queued.queuePosition).toBe(1);

    const e1 = await start(erin, runBody(repo.path, { execute: ['sh', '-c', 'echo done > RESULT.txt'] }));
    const erinRun = await client.waitTerminal(e1.runId, erin);
    expect(erinRun.status).toBe('committed');
    // Erin's run went through while Alice's third was still waiting.
    expect((await client.getRun(a3.runId, p.alice)).body.status).toBe('queued');

    const finals = await Promise.all([a1, a2, a3].map((r) => client.waitTerminal(r.runId, p.alice)));
    expect(finals.map((f) => f.status)).toEqual(['committed', 'committed', 'committed']);
    const third = await readRunEvents(nats, { tenant: p.tenant, userId: 'alice' }, a3.runId);
    const types = third.map((e) => e.event_type);
    expect(types).toContain('run.queued');
    expect(types.indexOf('run.admitted')).toBeGreaterThan(types.indexOf('run.queued'));
    expect(types.indexOf('sandbox.created')).toBeGreaterThan(types.indexOf('run.admitted'));
    const statuses = third.filter((e) => e.event_type === 'note.status').map((e) => e.payload.status);
    expect(statuses.slice(0, 2)).toEqual(['queued', 'running']);
    await recordHistory(a3.runId, 'run-queued-then-admitted');
    await recordHistory(`admission-${p.tenant}`, 'admission-fairness');
  });
});

describe('mood strictness and budgets', () => {
  test('when a CALM run has a failing verifier, then the verifier is rerun once in a fresh container before the run is discarded', async () => {
    const p = await people('rerunv');
    const repo = await makeGitRepo();
    const run = await start(p.alice, runBody(repo.path, { verifiers: ['V-FAILS'] }));
    const done = await client.waitTerminal(run.runId, p.alice);
    expect(done.status).toBe('discarded');
    expect(done.verifiers[0]).toMatchObject({
      id: 'V-FAILS',
      result: 'fail',
      attempts: ['fail', 'fail'],
      flaky: false,
    });
    const events = await readRunEvents(nats, { tenant: p.tenant, userId: 'alice' }, run.runId);
    expect(events.filter((e) => e.event_type === 'run.verifier.rerun')).toHaveLength(1);
    expect(events.find((e) => e.event_type === 'run.mood.policy')?.payload).toMatchObject({
      mood: 'CALM',
      verifier_reruns: 1,
    });
  });

  test('when the command outlives the wall-clock budget, then the run fails with budget_exceeded and nothing is left', async () => {
    const p = await people('budget');
    const repo = await makeGitRepo();
    const run = await start(
      p.alice,
      runBody(repo.path, { execute: ['sleep', '300'], budgets: { wallClockSeconds: 10 } }),
    );
    const done = await client.waitTerminal(run.runId, p.alice, 90_000);
    expect(done).toMatchObject({ status: 'failed', error: { code: 'budget_exceeded' } });
    expect(await leftovers(repo.path, run.runId)).toEqual({ containers: 0, worktree: false, branch: '' });
  });
});
