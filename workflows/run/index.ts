/**
 * runWorkflow: one bounded attempt at one work item, ending in a verified commit or a clean discard.
 *
 * The steps, in order: review (mood) → admission → [budget: sandbox → execute + plan → verify]
 * → approval → commit → cleanup → final status. A step that ends the run sets its outcome and
 * returns false; a thrown failure or a cancellation ends it in the catch. A new step (e.g. a
 * delivery after the commit) goes into the sequence below.
 *
 * Shapes (decision 0014/0015): new runs take the lean shape (patch `runs-v3`), fewer history
 * events per run; histories recorded before it replay the v2 shape. Pre-v2 histories are retired.
 */
import { CancellationScope, deprecatePatch, isCancellation, log, patched } from '@temporalio/workflow';
import type { RunView, RunWorkflowInput } from '../../contracts';
import type { SandboxHandle } from '../../activities/types';
import { AdmissionTicket } from '../lib/admission-ticket';
import { describeFailure } from '../lib/failures';
import { admitted, approved, reviewed, wallClockBudget } from './gates';
import { registerHandlers } from './handlers';
import { admission, cleanupStepOn, destroyOn } from './profiles';
import { RunState } from './state';
import { commit, emitRemoved, execute, finishInput, prepareSandbox, recordFinish } from './steps';
import { verify } from './verification';

export async function runWorkflow(input: RunWorkflowInput): Promise<RunView> {
  const lean = patched('runs-v3');
  // Histories from before `runs-v2` (no mood engine, admission, approvals...) no longer replay.
  if (!lean) deprecatePatch('runs-v2');
  const run = new RunState(input, lean);
  const { runId, tenant, userId, events, view } = run;
  // Handlers before the first await: queries, updates and signals may arrive at once.
  registerHandlers(run);
  const ticket = new AdmissionTicket({ tenant, userId, runId });

  events.start();
  emitCreated(run);
  const budget = wallClockBudget(run);
  let cancellation: Error | undefined;
  try {
    const ready = (await reviewed(run)) && (await admitted(run, ticket));
    const verified =
      ready &&
      (await budget.run(async () => {
        const handle = await prepareSandbox(run);
        const verifierIds = await execute(run, handle);
        return verifierIds !== undefined && verify(run, handle, verifierIds);
      }));
    if (verified && (await approved(run))) {
      await commit(run, run.sandbox as SandboxHandle);
    }
  } catch (err) {
    if (isCancellation(err) && budget.exceeded()) {
      view.error = {
        code: 'budget_exceeded',
        message: `the run's wall-clock budget of ${run.wallClockSeconds}s ran out during ${view.status}`,
      };
      events.emit('run.failed', { run_id: runId, error: view.error });
      run.outcome = { status: 'failed', stage: view.status };
    } else if (isCancellation(err)) {
      cancellation = err as Error;
      run.outcome = { status: 'cancelled', stage: view.status };
    } else {
      view.error = describeFailure(err);
      events.emit('run.failed', { run_id: runId, error: view.error });
      run.outcome = { status: 'failed', stage: view.status };
    }
  }

  // Destroy always, also on failure and cancellation; the terminal status is set only afterwards,
  // so a client that sees it knows nothing of the run is left on the host.
  const keepBranch = run.outcome.status === 'committed';
  await CancellationScope.nonCancellable(() => cleanup(run, ticket, keepBranch));
  if (!keepBranch) delete view.branch;
  view.finishedAt = new Date().toISOString();
  run.setStatus(run.outcome.status, run.outcome.stage);
  events.emit('run.completed', { run_id: runId, status: view.status, error: view.error ?? null });
  await events.close();
  view.events = { emitted: events.emittedCount, published: events.publishedCount };
  const result = run.snapshot();
  // Rethrown so Temporal records the execution as Canceled, after cleanup and the final flush.
  if (cancellation !== undefined) throw cancellation;
  return result;
}

function emitCreated(run: RunState): void {
  const { input, request, workItem, policy, approval } = run;
  run.events.emit('run.created', {
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
      depends_on: workItem.dependsOn ?? [],
      parent_id: workItem.parentId ?? null,
    },
    rerun_of: input.rerun?.of ?? null,
    image_id: input.rerun?.imageId ?? null,
    graph_id: input.graph?.graphId ?? null,
    ...(input.graph ? { attempt: input.graph.attempt } : {}),
  });
  run.events.emit('run.mood.policy', {
    run_id: run.runId,
    mood: policy.mood,
    summary: policy.summary,
    verifier_reruns: Math.min(policy.verifierReruns, run.maxReruns),
    confirm_runs: policy.confirmRuns,
    flaky_passes: policy.flakyPasses,
    egress: policy.egress,
    approval: approval.requirement,
    interrupt_before_execute: policy.interruptBeforeExecute,
    wall_clock_seconds: run.wallClockSeconds,
  });
}

/** Removes the sandbox (unless the finish step did) and gives the admission slot back, in that order. */
async function cleanup(run: RunState, ticket: AdmissionTicket, keepBranch: boolean): Promise<void> {
  const { runId, tenant, events } = run;
  const handle = run.sandbox;
  if (handle && !run.sandboxRemoved) {
    try {
      if (run.lean) {
        const done = await events.carried((carried) =>
          cleanupStepOn(handle.hostQueue).finishStep.executeWithOptions(
            { summary: 'remove sandbox, release slot' },
            [{ input: finishInput(run, handle, keepBranch), events: carried }],
          ),
        );
        if (done.destroyError) throw new Error(done.destroyError.message);
        recordFinish(run, done);
      } else {
        const removed = await destroyOn(handle.hostQueue).destroySandbox({
          sandboxId: handle.sandboxId,
          tenant,
          repo: run.request.repo,
          keepBranch,
        });
        run.removedParts = removed.removed;
      }
      emitRemoved(run, handle, keepBranch);
    } catch (err) {
      // The host stayed unreachable for the whole cleanup budget: record it; the orphan sweeper finishes the job.
      const error = describeFailure(err);
      log.warn('sandbox cleanup failed', { runId, error });
      events.emit('sandbox.destroy.failed', { sandbox_id: handle.sandboxId, error });
    }
  }
  // The slot goes back (or the queue place is left) only once the sandbox is gone.
  if (!run.holdsAdmission || run.released) return;
  if (run.lean) {
    try {
      await ticket.releaseLean();
    } catch (err) {
      // The local activity's bound ran out: the activity retries for as long as it takes.
      log.warn('admission release by local activity failed; retrying as an activity', { runId, err });
      await admission.releaseAdmission({ tenant, runId });
    }
  } else if (run.admissionBySignal) await ticket.release();
  else await admission.releaseAdmission({ tenant, runId });
}
