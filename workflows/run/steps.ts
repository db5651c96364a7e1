/**
 * The run's host steps: sandbox, execute (with the verifier plan), commit, delivery (remote). In the lean shape
 * (decision 0015) each carries the run's pending events; histories from before run the v2 form.
 */
import { deprecatePatch, patched } from '@temporalio/workflow';
import {
  EGRESS_INDIVIDUAL_ATTEMPTS,
  EGRESS_SUMMARY_MAX_KEYS,
  applyApprovalFloor,
  isRemoteRepoUrl,
  type CommandOutcome,
  type VerifierPlan,
} from '../../contracts';
import type { CommitInput, SandboxHandle } from '../../activities/types';
import {
  VERIFIER_ACTIVITY_BOUND_SECONDS,
  createSandbox,
  createSandboxStep,
  hostActivities,
  hostSteps,
} from './profiles';
import { deliver } from '../lib/delivery';
import { outputPayload, summarize, type RunState } from './state';

/** Creates the run's sandbox and records it; the run is `running` from here. */
export async function prepareSandbox(run: RunState): Promise<SandboxHandle> {
  const { input, request, events, view } = run;
  const network = run.policy.egress === 'none' ? 'none' : (request.network ?? 'none');
  const create = {
    runId: run.runId,
    tenant: run.tenant,
    userId: run.userId,
    workItemId: run.workItem.id,
    repo: request.repo,
    baseRef: input.rerun?.baseCommit ?? request.baseRef,
    network,
    ...(request.egress && network === 'allowlist' ? { egress: request.egress } : {}),
    ...(input.rerun ? { imageId: input.rerun.imageId } : {}),
  };
  const handle = run.lean
    ? await events.carried((carried) => createSandboxStep({ input: create, events: carried }))
    : await createSandbox(create);
  run.sandbox = handle;
  view.branch = handle.branch;
  view.baseCommit = handle.baseCommit;
  view.imageId = handle.imageId;
  events.emit('sandbox.created', {
    sandbox_id: handle.sandboxId,
    host_id: handle.hostId,
    branch: handle.branch,
    base_commit: handle.baseCommit,
    image: handle.image,
    image_id: handle.imageId,
  });
  run.setStatus('running', 'execute');
  return handle;
}

/**
 * Runs the work item's command; on success, the verifier plan (in the lean shape it comes back
 * with the execution, one step). Undefined when the command failed: the run failed at `execute`.
 */
export async function execute(run: RunState, handle: SandboxHandle): Promise<string[] | undefined> {
  const { workItem, request, events, view } = run;
  const timeoutSeconds = run.executeTimeoutSeconds;
  const exec = { sandboxId: handle.sandboxId, argv: workItem.execute, timeoutSeconds };
  const summary = `execute: ${summarize(workItem.execute)}`;
  const planInput = { mood: request.mood, required: workItem.requiredVerifiers, riskTier: workItem.riskTier };
  let execution: CommandOutcome;
  let leanPlan: VerifierPlan | undefined;
  if (run.lean) {
    const steps = hostSteps(handle.hostQueue, timeoutSeconds);
    ({ execution, plan: leanPlan } = await events.carried((carried) =>
      steps.executeStep.executeWithOptions({ summary: `${summary} (+ verifier plan)` }, [
        { input: { exec, plan: planInput }, events: carried },
      ]),
    ));
  } else {
    execution = await hostActivities(handle.hostQueue, timeoutSeconds).execInSandbox.executeWithOptions(
      { summary },
      [exec],
    );
  }
  view.execution = execution;
  events.emit('run.execution.completed', { ...outputPayload(execution), log: execution.log ?? null });
  emitEgress(run, execution);

  if (execution.exitCode !== 0 || execution.timedOut) {
    view.error = {
      code: execution.timedOut ? 'execution_timeout' : 'execution_failed',
      message: execution.timedOut
        ? `the work item's command timed out after ${timeoutSeconds}s`
        : execution.oomKilled
          ? `the work item's command was killed at the sandbox memory limit (exit ${execution.exitCode})`
          : `the work item's command exited with code ${execution.exitCode}`,
    };
    run.outcome = { status: 'failed', stage: 'execute' };
    return undefined;
  }

  run.setStatus('verifying', 'verify');
  if (!run.lean) deprecatePatch('verifier-plan');
  // The plan adds mood profiles and path-scoped verifiers; unknown required ids stay in the
  // list so runVerifier reports each as `error` and the run is discarded, never silently passed.
  const plan =
    leanPlan ??
    (await hostActivities(handle.hostQueue, VERIFIER_ACTIVITY_BOUND_SECONDS).planVerifiers({
      sandboxId: handle.sandboxId,
      ...planInput,
    }));
  view.plan = {
    planId: plan.planId,
    verifierIds: plan.verifierIds,
    unknownRequired: plan.unknownRequired,
    touchedPaths: plan.touchedPaths,
  };
  events.emit('run.verifier.plan', {
    run_id: run.runId,
    plan_id: plan.planId,
    inputs_hash: plan.inputsHash,
    verifier_ids: plan.verifierIds,
    unknown_required: plan.unknownRequired,
    reasons: plan.reasons,
    touched_paths: plan.touchedPaths,
  });
  // The tenant's protected paths and a rerun's floor raise the approval the run needs; a
  // request's mood and risk tier can only add to them.
  if (run.input.approvalFloor && (run.lean || patched('tenant-approval-floor'))) {
    run.approval = applyApprovalFloor(run.approval, run.input.approvalFloor, plan.touchedPaths);
  }
  // Required ids keep the order the request gave them (the run view lists verifiers in it).
  const required = new Set(workItem.requiredVerifiers);
  return [...required, ...plan.verifierIds.filter((id) => !required.has(id))];
}

/**
 * Attempts through the egress proxy (policy allowlist), allowed or denied, are events: at most the
 * first EGRESS_INDIVIDUAL_ATTEMPTS plus one summary that counts all of them, so a flood of
 * attempts cannot grow events or history. Histories from before `egress-summary` had every attempt.
 */
function emitEgress(run: RunState, execution: CommandOutcome): void {
  if (!run.lean) deprecatePatch('egress-events');
  const bounded = run.lean || patched('egress-summary');
  const attempts = execution.egress ?? [];
  for (const a of bounded ? attempts.slice(0, EGRESS_INDIVIDUAL_ATTEMPTS) : attempts) {
    run.events.emit('sandbox.egress', {
      run_id: run.runId,
      host: a.host,
      port: a.port,
      allowed: a.allowed,
      reason: a.reason,
      at: a.at,
      ...(bounded ? { address: a.address ?? null } : {}),
    });
  }
  const summary = execution.egressSummary;
  if (bounded && summary) {
    run.events.emit('sandbox.egress.summary', {
      run_id: run.runId,
      total: summary.total,
      allowed: summary.allowed,
      denied: summary.denied,
      rate_limited: summary.rateLimited,
      individual: Math.min(summary.individual, EGRESS_INDIVIDUAL_ATTEMPTS),
      destinations: summary.destinations.slice(0, EGRESS_SUMMARY_MAX_KEYS),
      other: summary.other,
      reasons: summary.reasons,
      complete: summary.complete,
    });
  }
}

/**
 * Commits the verified (and approved) work on the run branch. In the lean shape the same step
 * removes the sandbox (keeping the branch) and gives the admission slot back.
 */
export async function commit(run: RunState, handle: SandboxHandle): Promise<void> {
  const { runId, userId, tenant, workItem, view, events } = run;
  const message: CommitInput = {
    sandboxId: handle.sandboxId,
    message: `choiros run ${runId}: ${workItem.description.split('\n')[0]?.slice(0, 72) ?? ''}`,
    authorName: userId,
    authorEmail: `${userId}@${tenant}.choiros.invalid`,
  };
  let result;
  if (run.lean) {
    const finish = hostSteps(handle.hostQueue, VERIFIER_ACTIVITY_BOUND_SECONDS).finishStep;
    const done = await events.carried((carried) =>
      finish.executeWithOptions({ summary: 'commit, remove sandbox, release slot' }, [
        { input: { commit: message, ...finishInput(run, handle, true) }, events: carried },
      ]),
    );
    result = done.commit as NonNullable<typeof done.commit>;
    recordFinish(run, done);
  } else {
    result = await hostActivities(handle.hostQueue, VERIFIER_ACTIVITY_BOUND_SECONDS).commitSandbox(message);
  }
  view.commit = result.commit;
  view.branch = result.branch;
  events.emit('receipt.commit', {
    run_id: runId,
    branch: result.branch,
    commit: result.commit,
    base_commit: handle.baseCommit,
    changed_paths: result.changedPaths,
    verifier_ids: view.verifiers.map((o) => o.id),
  });
  run.outcome = { status: 'committed', stage: 'commit' };
  if (run.sandboxRemoved) emitRemoved(run, handle, true);
  await deliverCommit(run, handle, result);
}

/**
 * Remote repositories: the committed branch is pushed back to the origin (decision 0019), from
 * the mirror on the host that made it. A failed push fails the delivery step only, never the
 * verified commit; `POST /v1/runs/{id}/delivery` retries it.
 */
async function deliverCommit(
  run: RunState,
  handle: SandboxHandle,
  result: { branch: string; commit: string; changedPaths: string[] },
): Promise<void> {
  const { request, view } = run;
  if (!isRemoteRepoUrl(request.repo) || !patched('remote-delivery')) return;
  view.delivery = await deliver(
    {
      runId: run.runId,
      tenant: run.tenant,
      repo: request.repo,
      baseRef: request.baseRef,
      branch: result.branch,
      commit: result.commit,
      hostQueue: handle.hostQueue,
      hostId: handle.hostId,
      attempt: 1,
      receipts: {
        description: run.workItem.description,
        baseCommit: handle.baseCommit,
        verifiers: view.verifiers,
        changedPaths: result.changedPaths,
      },
    },
    run.events,
  );
}

/** The finish step's removal and release, as its input. */
export function finishInput(run: RunState, handle: SandboxHandle, keepBranch: boolean) {
  return {
    destroy: { sandboxId: handle.sandboxId, tenant: run.tenant, repo: run.request.repo, keepBranch },
    ...(run.holdsAdmission && !run.released ? { release: { tenant: run.tenant, runId: run.runId } } : {}),
  };
}

/** Notes what a finish step did: the sandbox gone (with what was removed), the slot back. */
export function recordFinish(run: RunState, done: { removed?: string[]; released: boolean }): void {
  if (done.removed) {
    run.sandboxRemoved = true;
    run.removedParts = done.removed;
  }
  if (done.released) run.released = true;
}

export function emitRemoved(run: RunState, handle: SandboxHandle, keepBranch: boolean): void {
  run.events.emit('sandbox.destroyed', {
    sandbox_id: handle.sandboxId,
    removed: run.removedParts,
    kept_branch: keepBranch,
  });
}
