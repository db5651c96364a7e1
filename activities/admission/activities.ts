/**
 * Admission activities: a run joins its tenant's fairness queue (signal-with-start; decision 0013),
 * or, for runs from before that, asks by update-with-start; and gives its slot back.
 */
import { Context } from '@temporalio/activity';
import { WithStartWorkflowOperation, WorkflowNotFoundError } from '@temporalio/client';
import type { Logger } from 'pino';
import {
  TASK_QUEUES,
  WORKFLOW_TYPES,
  acquireUpdate,
  admissionWorkflowId,
  enqueueSignal,
  releaseSignal,
  type AdmissionGrant,
  type AdmissionTerms,
} from '../../contracts';
import type { AdmissionActivities } from '../types';

export interface AdmissionDeps {
  /** Concurrent runs per user and per tenant, for one tenant (the tenants file's caps, or the platform defaults). */
  capsFor(tenant: string): { perUser: number; perTenant: number };
  /** Longest a run waits for admission before it fails with `admission_timeout`. */
  maxWaitSeconds: number;
  logger: Logger;
}

export function createAdmissionActivities(deps: AdmissionDeps): AdmissionActivities {
  return {
    async enqueueAdmission(input): Promise<AdmissionTerms> {
      const client = Context.current().client;
      // Signals have no in-flight limit (updates have 10 per workflow): a burst only queues.
      await client.workflow.signalWithStart(WORKFLOW_TYPES.admission, {
        workflowId: admissionWorkflowId(input.tenant),
        taskQueue: TASK_QUEUES.orchestration,
        args: [{ tenant: input.tenant }],
        signal: enqueueSignal,
        signalArgs: [{ runId: input.runId, userId: input.userId, ...deps.capsFor(input.tenant) }],
        staticSummary: `fairness gate of tenant ${input.tenant}`,
      });
      deps.logger.debug(
        { event: 'admission.enqueue', runId: input.runId, tenant: input.tenant },
        'run enqueued',
      );
      return { ...deps.capsFor(input.tenant), maxWaitSeconds: deps.maxWaitSeconds };
    },

    async requestAdmission(input): Promise<AdmissionGrant> {
      const client = Context.current().client;
      const start = new WithStartWorkflowOperation(WORKFLOW_TYPES.admission, {
        workflowId: admissionWorkflowId(input.tenant),
        taskQueue: TASK_QUEUES.orchestration,
        args: [{ tenant: input.tenant }],
        workflowIdConflictPolicy: 'USE_EXISTING',
        staticSummary: `fairness gate of tenant ${input.tenant}`,
      });
      const grant = await client.workflow.executeUpdateWithStart(acquireUpdate, {
        args: [{ runId: input.runId, userId: input.userId, ...deps.capsFor(input.tenant) }],
        startWorkflowOperation: start,
      });
      deps.logger.info(
        { event: 'admission.request', runId: input.runId, tenant: input.tenant, ...grant },
        grant.admitted ? 'run admitted' : 'run queued',
      );
      return grant;
    },

    async releaseAdmission(input): Promise<void> {
      const client = Context.current().client;
      try {
        await client.workflow.getHandle(admissionWorkflowId(input.tenant)).signal(releaseSignal, {
          runId: input.runId,
        });
      } catch (err) {
        // The gate ended (idle) or never started: nothing is held.
        if (!(err instanceof WorkflowNotFoundError)) throw err;
      }
    },
  };
}
