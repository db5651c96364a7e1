/** Activity option profiles of the run workflow: which queue, how long, how often a step is retried. */
import { proxyActivities } from '@temporalio/workflow';
import { TASK_QUEUES } from '../../contracts';
import type { AdmissionActivities, SandboxActivities, StepActivities } from '../../activities/types';

/** Failure types a retry cannot fix; the run fails at once with that code. */
export const NON_RETRYABLE = [
  'repo_not_found',
  'ref_not_found',
  'sandbox_image_missing',
  'invalid_sandbox_request',
];

export const EXECUTE_TIMEOUT_SECONDS = 600;
export const VERIFIER_ACTIVITY_BOUND_SECONDS = 3600;
export const DEFAULT_APPROVAL_TIMEOUT_SECONDS = 24 * 3600;
export const DEFAULT_INTERRUPT_TIMEOUT_SECONDS = 3600;

/** Sandbox creation on any host; it heartbeats its phase every 5 s, so a lost worker is retried. */
const createOptions = {
  taskQueue: TASK_QUEUES.sandbox,
  startToCloseTimeout: '3 minutes',
  heartbeatTimeout: '30 seconds',
  retry: { maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE },
} as const;

export const { createSandbox } = proxyActivities<SandboxActivities>(createOptions);
export const { createSandboxStep } = proxyActivities<StepActivities>(createOptions);

// The gate is another workflow on the same service: retry while Temporal is reachable at all.
export const admission = proxyActivities<AdmissionActivities>({
  taskQueue: TASK_QUEUES.orchestration,
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '20 seconds' },
});

/** Pinned to the host that holds the sandbox (worker-specific task queue pattern). */
function hostOptions(hostQueue: string, timeoutSeconds: number) {
  return {
    taskQueue: hostQueue,
    // The activity enforces the command's own timeout; this bound only catches a lost worker.
    startToCloseTimeout: `${timeoutSeconds + 120} seconds`,
    scheduleToStartTimeout: '5 minutes',
    heartbeatTimeout: '30 seconds',
    retry: { maximumAttempts: 3, nonRetryableErrorTypes: NON_RETRYABLE },
  } as const;
}

/** Cleanup keeps retrying while the host may come back, then gives up to the orphan sweeper. */
function cleanupOptions(hostQueue: string) {
  return {
    taskQueue: hostQueue,
    startToCloseTimeout: '2 minutes',
    scheduleToCloseTimeout: '30 minutes',
    retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds' },
  } as const;
}

export const hostActivities = (hostQueue: string, timeoutSeconds: number) =>
  proxyActivities<SandboxActivities>(hostOptions(hostQueue, timeoutSeconds));
export const hostSteps = (hostQueue: string, timeoutSeconds: number) =>
  proxyActivities<StepActivities>(hostOptions(hostQueue, timeoutSeconds));
export const destroyOn = (hostQueue: string) => proxyActivities<SandboxActivities>(cleanupOptions(hostQueue));
export const cleanupStepOn = (hostQueue: string) =>
  proxyActivities<StepActivities>(cleanupOptions(hostQueue));
