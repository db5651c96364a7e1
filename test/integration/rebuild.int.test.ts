/**
 * Self-rebuild against a real Docker engine and a real Temporal: a fixture target is verified in
 * sandboxes, its api/worker/sandbox images are built with dockerode, a release manager approves,
 * the docker deployer replaces the running containers and checks their health. Failing suites,
 * rejections, approval timeouts and unhealthy deploys end the pipeline without harm.
 */
import { randomUUID } from 'node:crypto';
import Docker from 'dockerode';
import type { NatsConnection } from 'nats';
import {
  deployedViewSchema,
  rebuildDecisionUpdate,
  rebuildWorkflowId,
  parseRebuildId,
  knownEventSchema,
  SEARCH_ATTRIBUTES,
} from '../../contracts';
import {
  connectNats,
  env,
  poll,
  startTestApi,
  startTestWorker,
  type TestApi,
  type TestWorker,
} from '../helpers/integration';
import {
  cleanupDocker,
  health,
  makeRebuildFixture,
  rebuildApi,
  type RebuildFixture,
} from '../helpers/rebuild-fixture';
import { readRunEvents, recordHistory } from '../helpers/runs';

const id = `rb${randomUUID().slice(0, 8)}`;
const docker = new Docker();
let api: TestApi;
let worker: TestWorker;
let nats: NatsConnection;
let fx: RebuildFixture;
let rb: ReturnType<typeof rebuildApi>;

beforeAll(async () => {
  fx = await makeRebuildFixture(id, `fx-${id}`);
  worker = await startTestWorker(`it-rebuild-${id}`);
  // A second target of the same repository that needs two approvers and deploys nothing.
  const quorumTarget = {
    ...fx.target,
    name: `${fx.target.name}-q`,
    approvalQuorum: 2,
    services: [],
    deployer: 'noop' as const,
  };
  api = await startTestApi({ rebuildTargets: [fx.target, quorumTarget] });
  nats = await connectNats(env.apiCreds(), 'test-rebuild-reader');
  rb = rebuildApi(api);
}, 120_000);

afterAll(async () => {
  await api?.stop();
  await worker?.stop();
  await nats?.drain();
  await cleanupDocker(docker, id);
}, 120_000);

async function imageExists(tag: string): Promise<boolean> {
  return docker
    .getImage(tag)
    .inspect()
    .then(
      () => true,
      () => false,
    );
}

describe('self-rebuild pipeline', () => {
  test('when a rebuild asks for a run branch, or a ref outside the target refs, then 403 ref_not_allowed and nothing starts', async () => {
    for (const ref of ['choiros/run/run-0123', 'refs/heads/choiros/run/run-0123', 'feature/x']) {
      const res = await rb.start({ target: fx.target.name, ref });
      expect([ref, res.status, res.body.code]).toEqual([ref, 403, 'ref_not_allowed']);
    }
  });

  test('when a rebuild of main is approved by a second release manager (the requester may not), then verify → build (sha-tagged images) → deploy → the new containers answer with the new version → completed', async () => {
    const started = await rb.start({ target: fx.target.name, ref: 'main', reason: 'first release' });
    expect(started.status).toBe(201);
    const rebuildId = started.body.rebuildId;
    expect(parseRebuildId(rebuildId)?.target).toBe(fx.target.name);

    const waiting = await rb.waitStage(rebuildId, ['awaiting_approval', 'failed', 'build_failed']);
    expect(waiting.stage).toBe('awaiting_approval');
    expect(waiting.commit).toBe(fx.commits.main);
    expect(waiting.verify.map((v) => [v.suite, v.passed])).toEqual([
      ['unit', true],
      ['lint', true],
    ]);
    expect(waiting.images.map((i) => i.tag)).toEqual([
      `choiros-fx-${id}-api:${fx.commits.main}`,
      `choiros-fx-${id}-worker:${fx.commits.main}`,
      `choiros-fx-${id}-sandbox:${fx.commits.main}`,
    ]);
    for (const image of waiting.images) expect(await imageExists(image.tag)).toBe(true);
    // Nothing is deployed before approval.
    expect(await health(fx.ports.api)).toBeUndefined();

    // A second request for the same target while this one runs: 409 naming the running rebuild.
    const second = await rb.start({ target: fx.target.name, ref: 'v2' });
    expect(second.status).toBe(409);
    expect(second.body.code).toBe('rebuild_in_progress');
    expect(second.body.detail).toContain(rebuildId);
    // Another tenant's release manager does not operate the platform: its rebuild scopes count for nothing.
    const foreign = await fetch(`${api.url}/v1/rebuilds`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${await api.token({ sub: 'rm-carol', tenant: 'globex', scope: 'rebuild:write' })}`,
        'content-type': 'application/json',
      },
      body: JSON.stringify({ target: fx.target.name, ref: 'v2' }),
    });
    const foreignBody = (await foreign.json()) as { code: string; detail: string };
    expect([foreign.status, foreignBody.code]).toEqual([403, 'forbidden']);
    expect(foreignBody.detail).not.toContain(rebuildId);
    const foreignRead = await fetch(`${api.url}/v1/rebuilds/${rebuildId}`, {
      headers: {
        authorization: `Bearer ${await api.token({ sub: 'rm-carol', tenant: 'globex', scope: 'rebuild:write rebuild:approve' })}`,
      },
    });
    expect(foreignRead.status).toBe(403);

    // Without rebuild:approve, no approval.
    const writer = await api.token({ sub: 'bob', tenant: 'acme', scope: 'rebuild:write' });
    const denied = await fetch(`${api.url}/v1/rebuilds/${rebuildId}/approve`, {
      method: 'POST',
      headers: { authorization: `Bearer ${writer}` },
    });
    expect(denied.status).toBe(403);

    // Four eyes: the requester's own approval is refused, whatever their scopes.
    const own = await rb.decideAsRequester(rebuildId, 'approve');
    expect([own.status, own.body.code]).toEqual([403, 'self_approval_forbidden']);

    // …and by the workflow itself, for a caller that goes around the gateway to Temporal.
    const handle = api.client.workflow.getHandle(rebuildWorkflowId(fx.target.name));
    await expect(
      handle.executeUpdate(rebuildDecisionUpdate, {
        args: [{ decision: 'approve', tenant: 'acme', userId: 'rm-alice' }],
      }),
    ).rejects.toMatchObject({ cause: { message: expect.stringMatching(/^self_approval_forbidden/) } });

    const approved = await rb.decide(rebuildId, 'approve', 'looks good');
    expect(approved.status).toBe(200);
    expect(approved.body.approval).toMatchObject({ decision: 'approve', by: 'rm-bob' });

    const done = await rb.waitStage(rebuildId, ['completed', 'rolled_back', 'failed']);
    expect(done.stage).toBe('completed');
    expect(done.deploy.map((d) => [d.service, d.changed, d.healthy])).toEqual([
      ['api', true, true],
      ['worker', true, true],
    ]);
    expect(await health(fx.ports.api)).toEqual({ status: 200, version: fx.commits.main });
    expect(await health(fx.ports.worker)).toEqual({ status: 200, version: fx.commits.main });
    // The deployed api got the new sandbox image's tag through its environment template.
    const apiContainer = await docker.getContainer(`choiros-fx-${id}-api`).inspect();
    expect(apiContainer.Config.Env).toContain(
      `CHOIROS_SANDBOX_IMAGE=choiros-fx-${id}-sandbox:${fx.commits.main}`,
    );
    expect(apiContainer.HostConfig.PortBindings?.['8080/tcp']).toEqual([
      { HostIp: '127.0.0.1', HostPort: String(fx.ports.api) },
    ]);

    // Every stage is an event, each valid against the published schema.
    const events = await readRunEvents(nats, { tenant: 'acme', userId: 'rm-alice' }, rebuildId);
    for (const e of events) expect(knownEventSchema.safeParse(e).success).toBe(true);
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
    const stages = events.filter((e) => e.event_type === 'rebuild.stage').map((e) => e.payload.stage);
    expect(stages).toEqual(['verifying', 'building', 'awaiting_approval', 'deploying', 'completed']);
    expect(events.map((e) => e.event_type)).toEqual(
      expect.arrayContaining([
        'rebuild.requested',
        'rebuild.resolved',
        'rebuild.verify.suite',
        'rebuild.image.built',
        'rebuild.approval.requested',
        'rebuild.approval.decided',
        'rebuild.deploy.service',
        'rebuild.health',
        'rebuild.completed',
      ]),
    );

    // Visible to release managers in the Temporal UI: search attributes and a summary.
    const parsed = parseRebuildId(rebuildId)!;
    const desc = await api.client.workflow
      .getHandle(rebuildWorkflowId(fx.target.name), parsed.runId)
      .describe();
    expect(desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.rebuildStage)).toBe('completed');
    expect(desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.rebuildTarget)).toBe(fx.target.name);
    await recordHistory(rebuildWorkflowId(fx.target.name), 'rebuild-completed', parsed.runId);

    // `choiros rebuilds status --target`: what the target runs now, from its last completed rebuild.
    const deployed = await poll(
      async () => {
        const res = await fetch(`${api.url}/v1/rebuild-targets/${fx.target.name}/deployed`, {
          headers: { authorization: `Bearer ${await rb.approverToken()}` },
        });
        return deployedViewSchema.parse(await res.json());
      },
      (d) => d.rebuildId === rebuildId,
      30_000,
    );
    const idOf = (tag: string): string | undefined => done.images.find((i) => i.tag === tag)?.imageId;
    expect(deployed).toMatchObject({ target: fx.target.name, commit: fx.commits.main });
    expect(deployed.services).toEqual(
      done.deploy.map((d) => ({ service: d.service, image: d.image, imageId: idOf(d.image) })),
    );
    expect(deployed.services.map((s) => s.imageId)).toEqual([
      expect.stringMatching(/^sha256:/),
      expect.stringMatching(/^sha256:/),
    ]);
  });

  test('when a target needs two approvers, then one approval leaves it waiting, the same approver twice is 409, and a second approver lets it through', async () => {
    const started = await rb.start({ target: `${fx.target.name}-q`, ref: 'main' });
    expect(started.status).toBe(201);
    const rebuildId = started.body.rebuildId;
    await rb.waitStage(rebuildId, ['awaiting_approval']);
    const first = await rb.decide(rebuildId, 'approve');
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ stage: 'awaiting_approval', approvals: ['rm-bob'] });
    const again = await rb.decide(rebuildId, 'approve');
    expect([again.status, again.body.code]).toEqual([409, 'already_approved']);
    const own = await rb.decideAsRequester(rebuildId, 'approve');
    expect([own.status, own.body.code]).toEqual([403, 'self_approval_forbidden']);
    const second = await rb.decideAs(rebuildId, 'approve', 'rm-dave');
    expect(second.status).toBe(200);
    const done = await rb.waitStage(rebuildId, ['completed', 'failed', 'rolled_back']);
    expect(done).toMatchObject({ stage: 'completed', approvals: ['rm-bob', 'rm-dave'] });
  });

  test('when a verifier suite fails, then the pipeline stops before any build and nothing is deployed', async () => {
    const started = await rb.start({ target: fx.target.name, ref: 'broken' });
    expect(started.status).toBe(201);
    const view = await rb.waitStage(started.body.rebuildId, [
      'verification_failed',
      'completed',
      'failed',
      'awaiting_approval',
    ]);
    expect(view.stage).toBe('verification_failed');
    expect(view.verify.find((v) => v.suite === 'unit')).toMatchObject({ passed: false, exitCode: 1 });
    expect(view.images).toEqual([]);
    expect(view.error?.code).toBe('verification_failed');
    for (const image of fx.target.images)
      expect(await imageExists(`${image.image}:${fx.commits.broken}`)).toBe(false);
    const events = await readRunEvents(nats, { tenant: 'acme', userId: 'rm-alice' }, view.rebuildId);
    expect(events.some((e) => e.event_type === 'rebuild.image.built')).toBe(false);
    expect(await health(fx.ports.api)).toEqual({ status: 200, version: fx.commits.main });
  });

  test('when the approver rejects, then nothing is deployed and the previous version keeps answering', async () => {
    const started = await rb.start({ target: fx.target.name, ref: 'v2' });
    const rebuildId = started.body.rebuildId;
    await rb.waitStage(rebuildId, ['awaiting_approval']);
    const rejected = await rb.decide(rebuildId, 'reject', 'not today');
    expect(rejected.status).toBe(200);
    const view = await rb.waitStage(rebuildId, ['rejected', 'completed', 'failed']);
    expect(view.stage).toBe('rejected');
    expect(view.deploy).toEqual([]);
    // A decision after the end is refused.
    const late = await rb.decide(rebuildId, 'approve');
    expect(late.status).toBe(409);
    expect(late.body.code).toBe('rebuild_not_awaiting_approval');
    expect(await health(fx.ports.api)).toEqual({ status: 200, version: fx.commits.main });
  });

  test('when no one approves before the deadline, then the pipeline ends approval_timed_out and deploys nothing', async () => {
    const started = await rb.start({ target: fx.target.name, ref: 'v2', approvalTimeoutSeconds: 2 });
    const view = await rb.waitStage(started.body.rebuildId, ['approval_timed_out', 'completed', 'failed']);
    expect(view.stage).toBe('approval_timed_out');
    expect(view.deploy).toEqual([]);
    // The v2 images were built by the rejected rebuild already: reused, not rebuilt.
    expect(view.images).toHaveLength(3);
    const events = await readRunEvents(nats, { tenant: 'acme', userId: 'rm-alice' }, view.rebuildId);
    expect(events.find((e) => e.event_type === 'rebuild.approval.decided')?.payload.decision).toBe('timeout');
    expect(await health(fx.ports.worker)).toEqual({ status: 200, version: fx.commits.main });
  });

  test('when the deployed version fails its health check, then it is rolled back and the previous version answers again', async () => {
    const started = await rb.start({ target: fx.target.name, ref: 'unhealthy' });
    const rebuildId = started.body.rebuildId;
    await rb.waitStage(rebuildId, ['awaiting_approval']);
    await rb.decide(rebuildId, 'approve');
    const view = await rb.waitStage(rebuildId, ['rolled_back', 'completed', 'failed']);
    expect(view.stage).toBe('rolled_back');
    expect(view.error?.code).toBe('health_check_failed');
    expect(view.deploy).toEqual([
      expect.objectContaining({
        service: 'api',
        changed: true,
        healthy: false,
        rolledBack: true,
        previousImage: `choiros-fx-${id}-api:${fx.commits.main}`,
      }),
    ]);
    expect(await health(fx.ports.api)).toEqual({ status: 200, version: fx.commits.main });
    expect(await health(fx.ports.worker)).toEqual({ status: 200, version: fx.commits.main });
    const events = await readRunEvents(nats, { tenant: 'acme', userId: 'rm-alice' }, rebuildId);
    expect(events.find((e) => e.event_type === 'rebuild.rollback')?.payload).toMatchObject({
      service: 'api',
      restored_image: `choiros-fx-${id}-api:${fx.commits.main}`,
      healthy: true,
    });
    await recordHistory(
      rebuildWorkflowId(fx.target.name),
      'rebuild-rolled-back',
      parseRebuildId(rebuildId)!.runId,
    );
  });
});
