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
  runAdmissionQuery,
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
  /** How long joinAdmission waits for the gate's answer by query before it asks for signals (default 1500). */
  queryDeadlineMs?: number;
  /** Publishes a run's carried events best-effort, in order; how many are in the stream (joinAdmission). */
  carry?: (events: readonly unknown[]) => Promise<number>;
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

    async joinAdmission({ events, ...input }) {
      const published = deps.carry ? await deps.carry(events) : 0;
      const client = Context.current().client;
      const caps = deps.capsFor(input.tenant);
      const terms = { ...caps, maxWaitSeconds: deps.maxWaitSeconds };
      await client.workflow.signalWithStart(WORKFLOW_TYPES.admission, {
        workflowId: admissionWorkflowId(input.tenant),
        taskQueue: TASK_QUEUES.orchestration,
        args: [{ tenant: input.tenant }],
        signal: enqueueSignal,
        signalArgs: [{ runId: input.runId, userId: input.userId, ...caps, answerByQuery: true }],
        staticSummary: `fairness gate of tenant ${input.tenant}`,
      });
      // Queries see every event before them (the server holds a query behind a pending workflow
      // task), so the gate has handled this enqueue. A busy gate refuses queries it cannot buffer:
      // then the run asks for the signals instead (a repeated enqueue without the flag), once.
      const gate = client.workflow.getHandle(admissionWorkflowId(input.tenant));
      let answer;
      try {
        // Aborted, not deadlined: the client retries a refused query, and an abort ends the retries too.
        answer = await client.withAbortSignal(AbortSignal.timeout(deps.queryDeadlineMs ?? 1_500), () =>
          gate.query(runAdmissionQuery, input.runId),
        );
      } catch (err) {
        deps.logger.info(
          { event: 'admission.join.by_signal', runId: input.runId, tenant: input.tenant, err },
          'the gate did not answer the query; it will signal',
        );
        await gate.signal(enqueueSignal, { runId: input.runId, userId: input.userId, ...caps });
        return { ...terms, admitted: 'bySignal' as const, published, events };
      }
      deps.logger.debug(
        { event: 'admission.join', runId: input.runId, tenant: input.tenant, state: answer.state },
        'run joined the gate',
      );
      if (answer.state === 'admitted') return { ...terms, admitted: true as const, published, events };
      if (answer.state === 'queued')
        return { ...terms, admitted: false as const, position: answer.position, published, events };
      throw new Error(`the gate of tenant ${input.tenant} does not know run ${input.runId} yet`);
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
