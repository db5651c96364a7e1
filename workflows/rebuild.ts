/** rebuildWorkflow: resolve → verify → build → approve → deploy → health check, rolling back on failure. */
import {
  CancellationScope,
  condition,
  isCancellation,
  log,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
  type ActivityOptions,
} from '@temporalio/workflow';
import {
  SEARCH_ATTRIBUTES,
  TASK_QUEUES,
  rebuildDecisionUpdate,
  rebuildIdOf,
  rebuildViewQuery,
  type RebuildDecision,
  type RebuildStage,
  type RebuildView,
  type RebuildWorkflowInput,
} from '../contracts';
import type { BuildActivities, DeployActivities, DeployResult } from '../activities/images/types';
import { EventLog } from './lib/event-log';
import { describeFailure } from './lib/failures';

const NON_RETRYABLE = ['ref_not_found', 'repo_not_found', 'invalid_rebuild_request', 'build_failed'];

/** One proxy per option profile; `summary` names the step in the Temporal UI's event history. */
function build(summary: string, opts: Partial<ActivityOptions> = {}) {
  return proxyActivities<BuildActivities>({
    taskQueue: TASK_QUEUES.build,
    startToCloseTimeout: '5 minutes',
    retry: { maximumAttempts: 3, nonRetryableErrorTypes: NON_RETRYABLE },
    summary,
    ...opts,
  });
}

function deploy(summary: string, opts: Partial<ActivityOptions> = {}) {
  return proxyActivities<DeployActivities>({
    taskQueue: TASK_QUEUES.build,
    startToCloseTimeout: '5 minutes',
    retry: { maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE },
    summary,
    ...opts,
  });
}

export async function rebuildWorkflow(input: RebuildWorkflowInput): Promise<RebuildView> {
  const { target, request, tenant, userId } = input;
  const rebuildId = rebuildIdOf(target.name, workflowInfo().firstExecutionRunId);
  const events = new EventLog({ runId: rebuildId, tenant, userId, workItemId: target.name });
  const ref = { rebuildId, target };
  const view: RebuildView = {
    rebuildId,
    target: target.name,
    ref: request.ref,
    stage: 'resolving',
    requestedBy: { tenant, userId },
    ...(request.reason ? { reason: request.reason } : {}),
    createdAt: new Date(input.requestedAt).toISOString(),
    verify: [],
    images: [],
    deploy: [],
    stageMs: {},
    events: { emitted: 0, published: 0 },
  };
  const snapshot = (): RebuildView => ({
    ...view,
    events: { emitted: events.emittedCount, published: events.publishedCount },
  });
  let decision: RebuildDecision | undefined;
  /** Distinct approvers so far; the target's approvalQuorum of them approves the rebuild. */
  const approvers: RebuildDecision[] = [];
  const quorum = target.approvalQuorum ?? 1;
  setHandler(rebuildViewQuery, snapshot);
  setHandler(
    rebuildDecisionUpdate,
    (d) => {
      if (d.decision === 'approve') approvers.push(d);
      // A rejection decides at once; approvals decide once the quorum is reached.
      if (d.decision === 'reject' || approvers.length >= quorum) decision = d;
      view.approval = {
        decision: d.decision,
        by: d.userId,
        at: new Date().toISOString(),
        ...(d.reason ? { reason: d.reason } : {}),
      };
      if (quorum > 1) view.approvals = approvers.map((a) => a.userId);
      return snapshot();
    },
    {
      validator: (d: RebuildDecision) => {
        if (view.stage !== 'awaiting_approval' || decision !== undefined)
          throw new Error(`rebuild ${rebuildId} is ${view.stage}, not awaiting approval`);
        if (d.tenant !== tenant) throw new Error('the approver belongs to another tenant');
        // Four eyes here too, not only at the gateway: anyone reaching Temporal goes around it.
        // (The requester may still reject their own request: that only stops it.)
        if (d.decision === 'approve' && d.userId === userId)
          throw new Error('self_approval_forbidden: the requester cannot approve their own rebuild');
        if (d.decision === 'approve' && approvers.some((a) => a.userId === d.userId))
          throw new Error(
            `already_approved: ${d.userId} approved this rebuild already; another approver is needed`,
          );
      },
    },
  );

  let stageStarted = Date.now();
  const setStage = (next: RebuildStage): void => {
    const previous = view.stage;
    view.stageMs[previous] = (view.stageMs[previous] ?? 0) + (Date.now() - stageStarted);
    stageStarted = Date.now();
    view.stage = next;
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.rebuildStage, value: next }]);
    setCurrentDetails(
      `**${next}** · target \`${target.name}\` · ref \`${request.ref}\`${view.commit ? ` · commit \`${view.commit.slice(0, 12)}\`` : ''}`,
    );
    events.emit('rebuild.stage', { rebuild_id: rebuildId, stage: next, previous });
    log.info('rebuild stage', { rebuildId, stage: next, previous });
  };

  events.start();
  events.emit('rebuild.requested', {
    rebuild_id: rebuildId,
    target: target.name,
    ref: request.ref,
    reason: request.reason ?? null,
    approval_timeout_seconds: input.approvalTimeoutSeconds,
  });
  setCurrentDetails(`**resolving** · target \`${target.name}\` · ref \`${request.ref}\``);

  let final: RebuildStage = 'failed';
  let cancellation: Error | undefined;
  try {
    final = await pipeline();
  } catch (err) {
    if (isCancellation(err)) {
      cancellation = err as Error;
      final = 'cancelled';
    } else {
      view.error = describeFailure(err);
      final = view.stage === 'building' && view.error.code === 'build_failed' ? 'build_failed' : 'failed';
    }
  }
  await CancellationScope.nonCancellable(async () => {
    try {
      await build('remove the rebuild worktree', {
        startToCloseTimeout: '2 minutes',
        scheduleToCloseTimeout: '10 minutes',
        retry: { maximumInterval: '30 seconds' },
      }).cleanupRebuild(ref);
    } catch (err) {
      log.warn('rebuild cleanup failed', { rebuildId, error: describeFailure(err) });
    }
  });
  view.finishedAt = new Date().toISOString();
  setStage(final);
  events.emit('rebuild.completed', {
    rebuild_id: rebuildId,
    stage: final,
    commit: view.commit ?? null,
    error: view.error ?? null,
  });
  await events.close();
  view.events = { emitted: events.emittedCount, published: events.publishedCount };
  if (cancellation !== undefined) throw cancellation;
  return view;

  async function pipeline(): Promise<RebuildStage> {
    const { commit } = await build(`resolve ${request.ref} in ${target.name}`, {
      startToCloseTimeout: '1 minute',
    }).resolveRef({ ...ref, ref: request.ref });
    view.commit = commit;
    events.emit('rebuild.resolved', { rebuild_id: rebuildId, ref: request.ref, commit });

    setStage('verifying');
    const results = await Promise.all(
      target.suites.map((s) =>
        build(`verify: suite ${s.name} on ${commit.slice(0, 12)}`, {
          startToCloseTimeout: `${s.timeoutSeconds + 120} seconds`,
          heartbeatTimeout: '60 seconds',
          retry: { maximumAttempts: 2, nonRetryableErrorTypes: NON_RETRYABLE },
        }).runSuite({ ...ref, commit, suite: s.name, owner: { tenant, userId } }),
      ),
    );
    for (const r of results) {
      view.verify.push(r);
      events.emit('rebuild.verify.suite', {
        rebuild_id: rebuildId,
        suite: r.suite,
        passed: r.passed,
        exit_code: r.exitCode,
        timed_out: r.timedOut,
        duration_ms: r.durationMs,
        output_tail: r.outputTail,
      });
    }
    const failed = results.filter((r) => !r.passed);
    if (failed.length > 0) {
      view.error = {
        code: 'verification_failed',
        message: `suite(s) did not pass: ${failed.map((f) => `${f.suite} (exit ${f.exitCode}${f.timedOut ? ', timed out' : ''})`).join(', ')}`,
      };
      return 'verification_failed';
    }

    setStage('building');
    const tags: Record<string, string> = {};
    for (const image of target.images) {
      const built = await build(`build ${image.name}: ${image.image}:${commit.slice(0, 12)}`, {
        startToCloseTimeout: `${input.timings.buildTimeoutSeconds} seconds`,
        heartbeatTimeout: `${input.timings.buildHeartbeatSeconds} seconds`,
        retry: { maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE },
      }).buildImage({ ...ref, commit, image });
      tags[image.name] = built.tag;
      view.images.push({
        name: built.name,
        tag: built.tag,
        imageId: built.imageId,
        durationMs: built.durationMs,
        cachedSteps: built.cachedSteps,
        totalSteps: built.totalSteps,
      });
      events.emit('rebuild.image.built', {
        rebuild_id: rebuildId,
        name: built.name,
        tag: built.tag,
        image_id: built.imageId,
        duration_ms: built.durationMs,
        cached_steps: built.cachedSteps,
        total_steps: built.totalSteps,
      });
      const pushed = await build(`push ${built.tag}`, {
        startToCloseTimeout: '30 minutes',
        heartbeatTimeout: '2 minutes',
      }).pushImage({ ...ref, commit, tag: built.tag });
      if (pushed.remote) {
        const entry = view.images[view.images.length - 1];
        if (entry) entry.pushed = pushed.remote;
        events.emit('rebuild.image.pushed', {
          rebuild_id: rebuildId,
          name: built.name,
          remote: pushed.remote,
        });
      }
    }

    setStage('awaiting_approval');
    const deadline = Date.now() + input.approvalTimeoutSeconds * 1000;
    view.approvalDeadline = new Date(deadline).toISOString();
    events.emit('rebuild.approval.requested', { rebuild_id: rebuildId, deadline });
    const decided = await condition(() => decision !== undefined, input.approvalTimeoutSeconds * 1000);
    const d = decision;
    if (!decided || !d) {
      events.emit('rebuild.approval.decided', {
        rebuild_id: rebuildId,
        decision: 'timeout',
        by: null,
        reason: null,
      });
      view.error = {
        code: 'approval_timed_out',
        message: `no approval within ${input.approvalTimeoutSeconds}s; nothing was deployed`,
      };
      return 'approval_timed_out';
    }
    events.emit('rebuild.approval.decided', {
      rebuild_id: rebuildId,
      decision: d.decision,
      by: d.decision === 'approve' && quorum > 1 ? approvers.map((a) => a.userId).join(',') : d.userId,
      reason: d.reason ?? null,
    });
    if (d.decision === 'reject') {
      view.error = { code: 'rejected', message: `rejected by ${d.userId}; nothing was deployed` };
      return 'rejected';
    }

    setStage('deploying');
    const deployed: DeployResult[] = [];
    for (const service of target.services) {
      const svc = { ...ref, commit, service, images: tags };
      const result = await deploy(
        `deploy ${service.name} (${target.deployer}) → ${commit.slice(0, 12)}`,
      ).deployService(svc);
      deployed.push(result);
      view.deploy.push({
        service: service.name,
        image: result.image,
        ...(result.previousImage ? { previousImage: result.previousImage } : {}),
        changed: result.changed,
      });
      events.emit('rebuild.deploy.service', {
        rebuild_id: rebuildId,
        service: service.name,
        image: result.image,
        previous_image: result.previousImage,
        changed: result.changed,
      });
      const health = await deploy(`health check ${service.name}`, {
        startToCloseTimeout: `${service.health.timeoutSeconds + 60} seconds`,
        heartbeatTimeout: '30 seconds',
        retry: { maximumAttempts: 2 },
      }).checkHealth(svc);
      const entry = view.deploy[view.deploy.length - 1];
      if (entry) entry.healthy = health.healthy;
      events.emit('rebuild.health', {
        rebuild_id: rebuildId,
        service: service.name,
        healthy: health.healthy,
        detail: health.detail,
        duration_ms: health.durationMs,
      });
      if (!health.healthy) {
        view.error = {
          code: 'health_check_failed',
          message: `service ${service.name} is not healthy on ${commit.slice(0, 12)}: ${health.detail}`,
        };
        await rollback(deployed, commit, tags);
        return 'rolled_back';
      }
    }
    for (const service of target.services) {
      await deploy(`forget the previous ${service.name} container`).finalizeService({
        ...ref,
        commit,
        service,
        images: tags,
      });
    }
    return 'completed';
  }

  /** Puts back what ran before, last-deployed service first. */
  async function rollback(
    deployed: DeployResult[],
    commit: string,
    tags: Record<string, string>,
  ): Promise<void> {
    setStage('rolling_back');
    for (const result of [...deployed].reverse()) {
      const service = target.services.find((s) => s.name === result.service);
      if (!service) continue;
      const restored = await deploy(`roll back ${service.name} to ${result.previousImage ?? 'nothing'}`, {
        startToCloseTimeout: `${service.health.timeoutSeconds + 120} seconds`,
      }).rollbackService({ ...ref, commit, service, images: tags, previousImage: result.previousImage });
      const entry = view.deploy.find((e) => e.service === service.name);
      if (entry) entry.rolledBack = true;
      events.emit('rebuild.rollback', {
        rebuild_id: rebuildId,
        service: service.name,
        restored_image: restored.restoredImage,
        healthy: restored.healthy,
      });
    }
  }
}
