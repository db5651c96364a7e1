/**
 * The run's steps in their lean form (decision 0015): each host step carries the run's pending
 * events and publishes them first (best-effort, in order), and short host steps that always follow
 * each other are one activity — execute with its verifier plan, commit with the sandbox's removal
 * and the admission slot's release. The sandbox activities do the work; nothing here is new logic.
 */
import { Context } from '@temporalio/activity';
import { WorkflowNotFoundError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from 'pino';
import { admissionWorkflowId, releaseSignal } from '../../contracts';
import type {
  Carried,
  CarriedResult,
  CommitInput,
  CommitResult,
  DestroyInput,
  FinishStepResult,
  SandboxActivities,
  StepActivities,
} from '../types';

export interface StepDeps {
  sandbox: SandboxActivities;
  /** Publishes carried events best-effort, in order; how many are in the stream. */
  carry: (events: readonly unknown[]) => Promise<number>;
  logger: Logger;
}

export function createStepActivities(deps: StepDeps): StepActivities {
  const carried = async <I, O>(
    { input, events }: Carried<I>,
    step: (input: I) => Promise<O>,
  ): Promise<CarriedResult<O>> => {
    const published = events.length > 0 ? await deps.carry(events) : 0;
    return { value: await step(input), published };
  };

  /**
   * The commit, or the one this run already made: a worker that died after the step removed the
   * workspace (before it answered) leaves the run's branch and no workspace, and the retried step
   * answers with that commit instead of failing a committed run with sandbox_not_found.
   */
  const commitOnce = async (commit: CommitInput, destroy: DestroyInput): Promise<CommitResult> => {
    try {
      return await deps.sandbox.commitSandbox(commit);
    } catch (err) {
      if (!(err instanceof ApplicationFailure && err.type === 'sandbox_not_found') || !destroy.keepBranch)
        throw err;
      const earlier = await deps.sandbox.findCommit({
        sandboxId: destroy.sandboxId,
        ...(destroy.tenant ? { tenant: destroy.tenant } : {}),
        repo: destroy.repo,
      });
      if (!earlier) throw err;
      deps.logger.info(
        { event: 'finish.commit_found', runId: destroy.sandboxId, commit: earlier.commit },
        'retried finish step: the run had committed before its workspace was removed',
      );
      return earlier;
    }
  };

  return {
    createSandboxStep: (c) => carried(c, (input) => deps.sandbox.createSandbox(input)),

    executeStep: (c) =>
      carried(c, async ({ exec, plan }) => {
        const execution = await deps.sandbox.execInSandbox(exec);
        if (execution.exitCode !== 0 || execution.timedOut) return { execution };
        return {
          execution,
          plan: await deps.sandbox.planVerifiers({ ...plan, sandboxId: exec.sandboxId }),
        };
      }),

    verifyStep: (c) => carried(c, (input) => deps.sandbox.runVerifier(input)),

    finishStep: (c) =>
      carried(c, async ({ commit, destroy, release }): Promise<FinishStepResult> => {
        // A failed commit fails the step (retried, then the run fails); the workflow's cleanup
        // still removes the sandbox, since this step did not. After a commit, a failed removal is
        // returned, not thrown: a retry must not commit twice; the cleanup retries the removal.
        const committed = commit ? await commitOnce(commit, destroy) : undefined;
        let removed: string[];
        try {
          ({ removed } = await deps.sandbox.destroySandbox(destroy));
        } catch (err) {
          // Without a commit here, a retry of the whole step is the retry of the removal.
          if (!committed) throw err;
          const cause = err instanceof ApplicationFailure ? err : undefined;
          deps.logger.warn(
            { event: 'finish.destroy_failed', sandboxId: destroy.sandboxId, err },
            'left to the cleanup',
          );
          return {
            ...(committed ? { commit: committed } : {}),
            destroyError: {
              code: cause?.type ?? 'internal',
              message: err instanceof Error ? err.message : String(err),
            },
            released: false,
          };
        }
        let released = false;
        if (release) {
          try {
            await Context.current()
              .client.workflow.getHandle(admissionWorkflowId(release.tenant))
              .signal(releaseSignal, { runId: release.runId });
            released = true;
          } catch (err) {
            // The gate ended (idle) or never started: nothing is held. Else the workflow releases.
            released = err instanceof WorkflowNotFoundError;
            if (!released) deps.logger.warn({ event: 'finish.release_failed', err }, 'left to the workflow');
          }
        }
        return { ...(committed ? { commit: committed } : {}), removed, released };
      }),
  };
}
