/**
 * A run's side of its tenant's fairness gate (decision 0013): join the queue by signal-with-start,
 * wait for the gate's `queued` / `admitted` signals within a bound, give the slot back by signal.
 */
import {
  ActivityFailure,
  ApplicationFailure,
  condition,
  getExternalWorkflowHandle,
  isCancellation,
  log,
  proxyActivities,
  proxyLocalActivities,
  setHandler,
} from '@temporalio/workflow';
import {
  TASK_QUEUES,
  admissionWorkflowId,
  admittedSignal,
  queuedSignal,
  releaseSignal,
  type AdmissionTerms,
  type QueuedNotice,
} from '../../contracts';
import type { AdmissionActivities } from '../../activities/types';
import type { EventLog } from './event-log';

// Joining the queue is one signal-with-start; a gate unreachable for minutes fails the run visibly.
const { enqueueAdmission } = proxyActivities<AdmissionActivities>({
  taskQueue: TASK_QUEUES.orchestration,
  startToCloseTimeout: '30 seconds',
  scheduleToCloseTimeout: '5 minutes',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '20 seconds' },
});

// The lean join (decision 0015): signal-with-start and the gate's answer by query in one local
// activity (one marker), and the release as one too. A burst queues local activities in the worker
// before they start; 60 s per attempt keeps a slow join from being retried (the scheduleToClose
// bound is the activity's). A join longer than a workflow task heartbeats the task meanwhile.
const local = proxyLocalActivities<AdmissionActivities>({
  startToCloseTimeout: '60 seconds',
  scheduleToCloseTimeout: '5 minutes',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '20 seconds' },
});

export interface AdmissionOwner {
  tenant: string;
  userId: string;
  runId: string;
}

/** Registers the gate's signals at construction: build it before the run's first await. */
export class AdmissionTicket {
  /** Set by the gate's `admitted` signal (on the old update path too). */
  admitted = false;
  private notice: QueuedNotice | undefined;

  constructor(private readonly owner: AdmissionOwner) {
    setHandler(admittedSignal, () => {
      this.admitted = true;
    });
    setHandler(queuedSignal, (notice) => {
      this.notice = notice;
    });
  }

  /**
   * Joins the queue and waits, at most the worker's configured bound, for `admitted`; `onQueued`
   * runs once when the gate says the run must wait and returns the run's `onAdmitted` callback.
   * Past the bound, or with the gate unreachable, it throws `admission_timeout` or
   * `admission_unavailable` — never a silent `created`.
   */
  async join(onQueued: (notice: QueuedNotice) => (waitedMs: number) => void): Promise<void> {
    const asked = Date.now();
    let terms;
    try {
      terms = await enqueueAdmission(this.owner);
    } catch (err) {
      throw unavailable(err);
    }
    await this.bySignal(asked, terms, onQueued);
  }

  /** Waits for the gate's `queued` / `admitted` signals, at most `maxWaitSeconds` since `asked`. */
  private async bySignal(
    asked: number,
    terms: AdmissionTerms,
    onQueued: (notice: QueuedNotice) => (waitedMs: number) => void,
  ): Promise<void> {
    const waitMs = terms.maxWaitSeconds * 1000;
    const timedOut = (): ApplicationFailure =>
      ApplicationFailure.create({
        type: 'admission_timeout',
        message: `not admitted within ${terms.maxWaitSeconds}s${this.notice ? ` (queued at position ${this.notice.position})` : ''}; the tenant's runs kept every slot (caps ${terms.perUser} per user, ${terms.perTenant} per tenant)`,
        nonRetryable: true,
      });
    if (!(await condition(() => this.admitted || this.notice !== undefined, waitMs))) throw timedOut();
    if (this.admitted) return;
    const queuedAt = Date.now();
    const onAdmitted = onQueued(this.notice as QueuedNotice);
    if (!(await condition(() => this.admitted, Math.max(1, waitMs - (queuedAt - asked))))) throw timedOut();
    onAdmitted(Date.now() - queuedAt);
  }

  /**
   * The lean join (decision 0015): one local activity enqueues, carrying the run's pending events,
   * and learns from the gate at once whether the run holds a slot. Admitted, no signal and no timer
   * is spent; queued, the run waits for `admitted` within the same bound as `join`.
   */
  async joinLean(
    events: EventLog,
    onQueued: (notice: QueuedNotice) => (waitedMs: number) => void,
  ): Promise<void> {
    const asked = Date.now();
    let answer;
    try {
      answer = await events.carried(async (batch) => {
        const a = await local.joinAdmission({ ...this.owner, events: batch });
        return { value: a, published: a.published };
      });
    } catch (err) {
      throw unavailable(err);
    }
    if (answer.admitted === true || this.admitted) return;
    // The gate could not answer the query in time (a burst): it signals, as for `join`.
    if (answer.admitted === 'bySignal') return this.bySignal(asked, answer, onQueued);
    const { perUser, perTenant, maxWaitSeconds } = answer;
    this.notice = { position: answer.position, perUser, perTenant };
    const queuedAt = Date.now();
    const onAdmitted = onQueued(this.notice);
    const left = Math.max(1, maxWaitSeconds * 1000 - (queuedAt - asked));
    if (!(await condition(() => this.admitted, left))) {
      throw ApplicationFailure.create({
        type: 'admission_timeout',
        message: `not admitted within ${maxWaitSeconds}s (queued at position ${answer.position}); the tenant's runs kept every slot (caps ${perUser} per user, ${perTenant} per tenant)`,
        nonRetryable: true,
      });
    }
    onAdmitted(Date.now() - queuedAt);
  }

  /** The lean release: one local activity; a gate that has ended holds nothing. */
  async releaseLean(): Promise<void> {
    await local.releaseAdmission({ tenant: this.owner.tenant, runId: this.owner.runId });
  }

  /** Gives the slot back (or leaves the queue); a gate that has ended holds nothing. */
  async release(): Promise<void> {
    const { tenant, runId } = this.owner;
    try {
      await getExternalWorkflowHandle(admissionWorkflowId(tenant)).signal(releaseSignal, { runId });
    } catch (err) {
      log.info('admission gate not running; nothing to release', { runId, tenant, err });
    }
  }
}

/** The gate could not be reached within the join's bound: the run fails visibly. */
function unavailable(err: unknown): unknown {
  if (isCancellation(err)) return err;
  const cause = err instanceof ActivityFailure && err.cause ? err.cause : err;
  return ApplicationFailure.create({
    type: 'admission_unavailable',
    message: `the tenant's admission gate could not be reached: ${cause instanceof Error ? cause.message : String(cause)}`,
    nonRetryable: true,
  });
}
