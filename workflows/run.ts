/** runWorkflow: one bounded attempt at one work item, ending in a verified commit or a clean discard. */
import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  isCancellation,
  log,
  patched,
  proxyActivities,
  setHandler,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import {
  SEARCH_ATTRIBUTES,
  TASK_QUEUES,
  runViewQuery,
  type CommandOutcome,
  type RunStatus,
  type RunView,
  type RunWorkflowInput,
  type VerifierOutcome,
} from '../contracts';
import type { SandboxActivities, SandboxHandle } from '../activities/types';
import { EventLog } from './lib/event-log';

/** Failure types a retry cannot fix; the run fails at once with that code. */
const NON_RETRYABLE = ['repo_not_found', 'ref_not_found', 'sandbox_image_missing', 'invalid_sandbox_request'];

const { createSandbox } = proxyActivities<SandboxActivities>({
  taskQueue: TASK_QUEUES.sandbox,
  startToCloseTimeout: '3 minutes',
  retry: { maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE },
});

/** Activities pinned to the host that holds the sandbox (worker-specific task queue pattern). */
function hostActivities(hostQueue: string, timeoutSeconds: number) {
  return proxyActivities<SandboxActivities>({
    taskQueue: hostQueue,
    // The activity enforces the command's own timeout; this bound only catches a lost worker.
    startToCloseTimeout: `${timeoutSeconds + 120} seconds`,
    scheduleToStartTimeout: '5 minutes',
    heartbeatTimeout: '30 seconds',
    retry: { maximumAttempts: 3, nonRetryableErrorTypes: NON_RETRYABLE },
  });
}

/** Cleanup keeps retrying while the host may come back, then gives up to the orphan sweeper. */
function destroyOn(hostQueue: string) {
  return proxyActivities<SandboxActivities>({
    taskQueue: hostQueue,
    startToCloseTimeout: '2 minutes',
    scheduleToCloseTimeout: '30 minutes',
    retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds' },
  });
}

const EXECUTE_TIMEOUT_SECONDS = 600;
const VERIFIER_ACTIVITY_BOUND_SECONDS = 3600;

export async function runWorkflow(input: RunWorkflowInput): Promise<RunView> {
  const { runId, tenant, userId, request } = input;
  const workItem = request.workItem;
  const events = new EventLog({ runId, tenant, userId, workItemId: workItem.id });

  const view: RunView = {
    runId,
    status: 'created',
    tenant,
    userId,
    mood: request.mood,
    repo: request.repo,
    baseRef: request.baseRef,
    workItem: { id: workItem.id, description: workItem.description, riskTier: workItem.riskTier },
    verifiers: [],
    createdAt: new Date(input.requestedAt).toISOString(),
    events: { emitted: 0, published: 0 },
  };
  const snapshot = (): RunView => ({
    ...view,
    events: { emitted: events.emittedCount, published: events.publishedCount },
  });
  setHandler(runViewQuery, snapshot);

  const setStatus = (next: RunStatus, stage: string): void => {
    const previous = view.status;
    view.status = next;
    if (next === 'running' && !view.startedAt) view.startedAt = new Date().toISOString();
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.runStatus, value: next }]);
    events.emit('note.status', { run_id: runId, status: next, previous, mood: view.mood, stage });
    log.info('run status', { runId, workItemId: workItem.id, status: next, previous, stage });
  };

  events.start();
  events.emit('run.created', {
    repo: request.repo,
    base_ref: request.baseRef,
    mood: request.mood,
    work_item: {
      id: workItem.id,
      description: workItem.description,
      execute: workItem.execute,
      required_verifiers: workItem.requiredVerifiers,
      risk_tier: workItem.riskTier,
      acceptance_criteria: workItem.acceptanceCriteria,
    },
  });

  let sandbox: SandboxHandle | undefined;
  let cancellation: Error | undefined;
  // Decided by the steps below, applied after cleanup.
  let outcome: { status: RunStatus; stage: string } = { status: 'failed', stage: 'created' };
  try {
    sandbox = await createSandbox({
      runId,
      tenant,
      userId,
      workItemId: workItem.id,
      repo: request.repo,
      baseRef: request.baseRef,
      network: request.network ?? 'none',
      ...(request.egress ? { egress: request.egress } : {}),
    });
    view.branch = sandbox.branch;
    view.baseCommit = sandbox.baseCommit;
    events.emit('sandbox.created', {
      sandbox_id: sandbox.sandboxId,
      host_id: sandbox.hostId,
      branch: sandbox.branch,
      base_commit: sandbox.baseCommit,
      image: sandbox.image,
      image_id: sandbox.imageId,
    });

    setStatus('running', 'execute');
    const exec = hostActivities(sandbox.hostQueue, EXECUTE_TIMEOUT_SECONDS);
    const execution: CommandOutcome = await exec.execInSandbox({
      sandboxId: sandbox.sandboxId,
      argv: workItem.execute,
      timeoutSeconds: EXECUTE_TIMEOUT_SECONDS,
    });
    view.execution = execution;
    events.emit('run.execution.completed', { ...outputPayload(execution), log: execution.log ?? null });
    if (patched('egress-events')) {
      // Every attempt through the egress proxy (policy allowlist), allowed or denied, is an event.
      for (const a of execution.egress ?? []) {
        events.emit('sandbox.egress', {
          run_id: runId,
          host: a.host,
          port: a.port,
          allowed: a.allowed,
          reason: a.reason,
          at: a.at,
        });
      }
    }

    if (execution.exitCode !== 0 || execution.timedOut) {
      view.error = {
        code: execution.timedOut ? 'execution_timeout' : 'execution_failed',
        message: execution.timedOut
          ? `the work item's command timed out after ${EXECUTE_TIMEOUT_SECONDS}s`
          : execution.oomKilled
            ? `the work item's command was killed at the sandbox memory limit (exit ${execution.exitCode})`
            : `the work item's command exited with code ${execution.exitCode}`,
      };
      outcome = { status: 'failed', stage: 'execute' };
    } else {
      setStatus('verifying', 'verify');
      const verify = hostActivities(sandbox.hostQueue, VERIFIER_ACTIVITY_BOUND_SECONDS);
      const handle = sandbox;
      let verifierIds = workItem.requiredVerifiers;
      if (patched('verifier-plan')) {
        // The plan adds mood profiles and path-scoped verifiers; unknown required ids stay in the
        // list so runVerifier reports each as `error` and the run is discarded, never silently passed.
        const plan = await verify.planVerifiers({
          sandboxId: handle.sandboxId,
          mood: request.mood,
          required: workItem.requiredVerifiers,
          riskTier: workItem.riskTier,
        });
        view.plan = {
          planId: plan.planId,
          verifierIds: plan.verifierIds,
          unknownRequired: plan.unknownRequired,
          touchedPaths: plan.touchedPaths,
        };
        events.emit('run.verifier.plan', {
          run_id: runId,
          plan_id: plan.planId,
          inputs_hash: plan.inputsHash,
          verifier_ids: plan.verifierIds,
          unknown_required: plan.unknownRequired,
          reasons: plan.reasons,
          touched_paths: plan.touchedPaths,
        });
        // Required ids keep the order the request gave them (the run view lists verifiers in it).
        const required = new Set(workItem.requiredVerifiers);
        verifierIds = [
          ...new Set(workItem.requiredVerifiers),
          ...plan.verifierIds.filter((id) => !required.has(id)),
        ];
      }
      const outcomes: VerifierOutcome[] = await Promise.all(
        verifierIds.map((verifierId) =>
          verify.runVerifier({
            sandboxId: handle.sandboxId,
            verifierId,
            owner: { tenant, userId, workItemId: workItem.id },
          }),
        ),
      );
      for (const result of outcomes) {
        view.verifiers.push(result);
        events.emit('receipt.verifier.attestations', {
          run_id: runId,
          attestation: {
            verifier_id: result.id,
            result: result.result,
            ...outputPayload(result),
            artifact_hash: result.log?.digest ?? null,
            report_hash: result.reportDigest ?? null,
          },
        });
      }
      // The exit code is a floor: anything but an explicit pass of every verifier discards.
      const failed = outcomes.filter((o) => o.result !== 'pass');
      if (failed.length === 0 && outcomes.length > 0) {
        const commit = await verify.commitSandbox({
          sandboxId: sandbox.sandboxId,
          message: `choiros run ${runId}: ${workItem.description.split('\n')[0]?.slice(0, 72) ?? ''}`,
          authorName: userId,
          authorEmail: `${userId}@${tenant}.choiros.invalid`,
        });
        view.commit = commit.commit;
        view.branch = commit.branch;
        events.emit('receipt.commit', {
          run_id: runId,
          branch: commit.branch,
          commit: commit.commit,
          base_commit: sandbox.baseCommit,
          changed_paths: commit.changedPaths,
          verifier_ids: outcomes.map((o) => o.id),
        });
        outcome = { status: 'committed', stage: 'commit' };
      } else {
        view.error = {
          code: 'verification_failed',
          message:
            outcomes.length === 0
              ? 'no verifier ran, so nothing was verified'
              : `verifier(s) did not pass: ${failed.map((f) => `${f.id}=${f.result}`).join(', ')}`,
        };
        events.emit('run.discarded', {
          run_id: runId,
          reason: 'verification_failed',
          failed: failed.map((f) => f.id),
        });
        outcome = { status: 'discarded', stage: 'verify' };
      }
    }
  } catch (err) {
    if (isCancellation(err)) {
      cancellation = err as Error;
      outcome = { status: 'cancelled', stage: view.status };
    } else {
      view.error = describeFailure(err);
      events.emit('run.failed', { run_id: runId, error: view.error });
      outcome = { status: 'failed', stage: view.status };
    }
  }

  // Destroy always, also on failure and cancellation; the terminal status is set only afterwards,
  // so a client that sees it knows nothing of the run is left on the host.
  const keepBranch = outcome.status === 'committed';
  if (sandbox) {
    const handle = sandbox;
    await CancellationScope.nonCancellable(async () => {
      try {
        const removed = await destroyOn(handle.hostQueue).destroySandbox({
          sandboxId: handle.sandboxId,
          repo: request.repo,
          keepBranch,
        });
        events.emit('sandbox.destroyed', {
          sandbox_id: handle.sandboxId,
          removed: removed.removed,
          kept_branch: keepBranch,
        });
      } catch (err) {
        // The host stayed unreachable for the whole cleanup budget: record it; the orphan sweeper finishes the job.
        const error = describeFailure(err);
        log.warn('sandbox cleanup failed', { runId, error });
        events.emit('sandbox.destroy.failed', { sandbox_id: handle.sandboxId, error });
      }
    });
  }
  if (!keepBranch) delete view.branch;
  view.finishedAt = new Date().toISOString();
  setStatus(outcome.status, outcome.stage);
  events.emit('run.completed', { run_id: runId, status: view.status, error: view.error ?? null });
  await events.close();
  view.events = { emitted: events.emittedCount, published: events.publishedCount };
  // Rethrown so Temporal records the execution as Canceled, after cleanup and the final flush.
  if (cancellation !== undefined) throw cancellation;
  return view;
}

/** A command's outcome in event-payload form (the same fields for the work item and each verifier). */
function outputPayload(o: CommandOutcome) {
  return {
    exit_code: o.exitCode,
    timed_out: o.timedOut,
    duration_ms: o.durationMs,
    output_sha256: o.outputSha256,
    output_bytes: o.outputBytes,
    output_tail: o.outputTail,
    oom_killed: o.oomKilled ?? false,
  };
}

function describeFailure(err: unknown): { code: string; message: string } {
  let cause: unknown = err;
  if (cause instanceof ActivityFailure && cause.cause) cause = cause.cause;
  if (cause instanceof ApplicationFailure) {
    return { code: cause.type ?? 'activity_failed', message: cause.message };
  }
  if (cause instanceof Error) return { code: 'internal', message: cause.message };
  return { code: 'internal', message: String(cause) };
}
