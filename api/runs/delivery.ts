/**
 * Delivery retries (`POST /v1/runs/{id}/delivery`, decision 0019): a committed run whose push
 * failed is delivered again by a `deliveryWorkflow` on the host whose mirror holds the branch. The
 * run view shows the latest retry's result.
 */
import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { Logger } from 'pino';
import {
  AppError,
  TASK_QUEUES,
  WORKFLOW_TYPES,
  deliveryWorkflowId,
  hostSandboxQueue,
  type DeliveryView,
  type Principal,
  type RunView,
} from '../../contracts';
import type { DeliveryWorkflowInput, DeliveryWorkflowResult } from '../../workflows/delivery';
import { requireRepoGrant, type RepoGate } from '../repo-grants';

/** The result of the run's latest finished delivery retry, if any. */
async function latestRetry(client: Client, runId: string): Promise<DeliveryWorkflowResult | undefined> {
  const handle = client.workflow.getHandle(deliveryWorkflowId(runId));
  try {
    const desc = await handle.describe();
    if (desc.status.name !== 'COMPLETED') return undefined;
    return (await handle.result()) as DeliveryWorkflowResult;
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return undefined;
    throw err;
  }
}

/** The view with the latest retry's delivery in place of a failed one (reads nothing otherwise). */
export async function withLatestDelivery(client: Client, view: RunView): Promise<RunView> {
  if (view.delivery?.status !== 'failed') return view;
  const latest = await latestRetry(client, view.runId);
  return latest ? { ...view, delivery: latest.delivery } : view;
}

/**
 * Retries a failed delivery and answers its result: `not_delivered` (409) for a run with nothing
 * to deliver, the current delivery when it already succeeded, `conflict` while another retry runs.
 */
export async function retryDelivery(opts: {
  client: Client;
  logger: Logger;
  repoAccess: RepoGate;
  principal: Principal;
  view: RunView;
}): Promise<DeliveryView> {
  const { client, view } = opts;
  if (view.status !== 'committed' || !view.delivery || !view.commit || !view.branch || !view.baseCommit)
    throw new AppError('not_delivered', `run ${view.runId} has no committed branch of a remote repository`);
  const latest = await latestRetry(client, view.runId);
  const current = latest?.delivery ?? view.delivery;
  if (current.status !== 'failed') return current;
  if (!current.hostId)
    throw new AppError('not_delivered', `run ${view.runId} did not record the host that holds its branch`);
  // Grants can be withdrawn: a push is a use of the repository like a run.
  await requireRepoGrant(opts.repoAccess, opts.principal.tenant, view.repo);
  const input: DeliveryWorkflowInput = {
    runId: view.runId,
    tenant: view.tenant,
    userId: view.userId,
    workItemId: view.workItem.id,
    repo: view.repo,
    baseRef: view.baseRef,
    branch: view.branch,
    commit: view.commit,
    hostQueue: hostSandboxQueue(current.hostId),
    hostId: current.hostId,
    attempt: current.attempt + 1,
    startSeq: latest?.eventSeq ?? view.events.emitted,
    receipts: {
      description: view.workItem.description,
      baseCommit: view.baseCommit,
      verifiers: view.verifiers,
      changedPaths: view.plan?.touchedPaths ?? [],
    },
  };
  let handle;
  try {
    handle = await client.workflow.start(WORKFLOW_TYPES.delivery, {
      workflowId: deliveryWorkflowId(view.runId),
      taskQueue: TASK_QUEUES.orchestration,
      args: [input],
      workflowIdReusePolicy: 'ALLOW_DUPLICATE',
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError)
      throw new AppError('conflict', `a delivery retry of run ${view.runId} is already running`);
    throw err;
  }
  opts.logger.info(
    { event: 'run.delivery.retry', runId: view.runId, attempt: input.attempt, userId: opts.principal.userId },
    'delivery retry started',
  );
  return ((await handle.result()) as DeliveryWorkflowResult).delivery;
}
