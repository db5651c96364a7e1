/**
 * Delivery of a committed branch back to its remote origin (decision 0019) and, when the tenant
 * has a forge, a pull request with the run's receipts (decision 0020). A permanent failure fails
 * the delivery step only: the verified commit stands, and `POST /v1/runs/{id}/delivery` retries.
 */
import { ActivityFailure, ApplicationFailure, proxyActivities } from '@temporalio/workflow';
import { pullRequestBody, type DeliveryView, type VerifierOutcome } from '../../contracts';
import type { DeliveryActivities } from '../../activities/delivery/types';
import type { EventLog } from './event-log';

/** Failures a retry cannot fix: the step fails at once with that code. */
const FINAL = [
  'repo_auth_failed',
  'repo_not_found',
  'delivery_conflict',
  'not_delivered',
  'invalid_sandbox_request',
];

/** Delivery activities on the host that holds the mirror, retried with backoff while the origin may come back. */
function onHost(hostQueue: string) {
  return proxyActivities<DeliveryActivities>({
    taskQueue: hostQueue,
    startToCloseTimeout: '15 minutes',
    scheduleToStartTimeout: '5 minutes',
    retry: {
      initialInterval: '2 seconds',
      backoffCoefficient: 2,
      maximumInterval: '1 minute',
      maximumAttempts: 5,
      nonRetryableErrorTypes: FINAL,
    },
  });
}

export interface DeliveryRequest {
  /** The run (or graph) whose events record the delivery. */
  runId: string;
  tenant: string;
  repo: string;
  baseRef: string;
  branch: string;
  commit: string;
  hostQueue: string;
  /** The host of hostQueue, recorded in the view so a retry finds the mirror. */
  hostId?: string;
  /** 1 for the delivery after the commit, higher for retries through the API. */
  attempt: number;
  /** For the pull request body. */
  receipts: {
    description: string;
    baseCommit: string;
    verifiers: readonly VerifierOutcome[];
    changedPaths: readonly string[];
  };
}

function failureOf(err: unknown): { code: string; message: string } {
  const cause = err instanceof ActivityFailure && err.cause ? err.cause : err;
  if (cause instanceof ApplicationFailure)
    return { code: cause.type ?? 'delivery_failed', message: cause.message };
  return { code: 'delivery_failed', message: cause instanceof Error ? cause.message : String(cause) };
}

/** Pushes the branch (then opens a pull request when a forge is configured); never throws for a failed push. */
export async function deliver(req: DeliveryRequest, events: EventLog): Promise<DeliveryView> {
  const remoteRef = `refs/heads/${req.branch}`;
  const acts = onHost(req.hostQueue);
  let view: DeliveryView;
  let forge = false;
  try {
    const pushed = await acts.deliverBranch.executeWithOptions({ summary: `deliver ${req.branch}` }, [
      { tenant: req.tenant, repo: req.repo, branch: req.branch, commit: req.commit },
    ]);
    forge = pushed.forge;
    view = {
      status: pushed.status,
      remoteRef: pushed.remoteRef,
      commit: pushed.commit,
      attempt: req.attempt,
      at: new Date().toISOString(),
      ...(req.hostId ? { hostId: req.hostId } : {}),
    };
  } catch (err) {
    view = {
      status: 'failed',
      remoteRef,
      commit: req.commit,
      attempt: req.attempt,
      at: new Date().toISOString(),
      ...(req.hostId ? { hostId: req.hostId } : {}),
      error: failureOf(err),
    };
  }
  events.emit('receipt.delivery', {
    run_id: req.runId,
    remote_ref: view.remoteRef,
    commit: view.commit,
    result: view.status,
    attempt: req.attempt,
    error: view.error ?? null,
  });
  if (view.status !== 'failed' && forge) {
    try {
      const pr = await acts.openPullRequest({
        tenant: req.tenant,
        repo: req.repo,
        head: req.branch,
        baseRef: req.baseRef,
        title: `ChoirOS ${req.runId}: ${req.receipts.description.split('\n')[0]?.slice(0, 120) ?? ''}`,
        body: pullRequestBody({ runId: req.runId, commit: req.commit, ...req.receipts }),
      });
      view.pullRequest = { url: pr.url, number: pr.number, forge: pr.forge };
      events.emit('receipt.pull_request', {
        run_id: req.runId,
        forge: pr.forge,
        head: req.branch,
        base: req.baseRef,
        url: pr.url,
        number: pr.number,
        error: null,
      });
    } catch (err) {
      events.emit('receipt.pull_request', {
        run_id: req.runId,
        forge: 'github',
        head: req.branch,
        base: req.baseRef,
        url: null,
        number: null,
        error: failureOf(err),
      });
    }
  }
  return view;
}
