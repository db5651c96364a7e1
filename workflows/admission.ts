/**
 * admissionWorkflow: one per tenant, the fairness gate of its runs. A run holds a slot from
 * admission to its end; per-user and per-tenant caps bound the slots, and waiting runs are
 * admitted in arrival order, skipping only those whose own user is at the cap — so one user's
 * backlog never holds back another user's run.
 */
import {
  condition,
  continueAsNew,
  getExternalWorkflowHandle,
  log,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import {
  acquireUpdate,
  admissionStateQuery,
  admittedSignal,
  releaseSignal,
  type AdmissionGrant,
  type AdmissionState,
} from '../contracts';

export interface AdmissionWorkflowInput {
  tenant: string;
  /** State carried across continue-as-new. */
  state?: AdmissionState;
}

/** Idle this long with nothing held or queued, the workflow ends (the next acquire starts it anew). */
const IDLE_END = '10 minutes';
/** Handled requests before continuing as new, to keep the history short. */
const CONTINUE_AFTER = 500;

export async function admissionWorkflow(input: AdmissionWorkflowInput): Promise<void> {
  const state: AdmissionState = input.state ?? { running: [], queued: [], perUser: 1, perTenant: 1 };
  let handled = 0;
  const pendingGrants: string[] = [];

  const usersRunning = (userId: string): number => state.running.filter((r) => r.userId === userId).length;
  const position = (runId: string): number => state.queued.findIndex((q) => q.runId === runId) + 1;

  /** Admits every queued run that fits, in order; a run whose user is at the cap is skipped, not a barrier. */
  const pump = (): void => {
    for (let i = 0; i < state.queued.length && state.running.length < state.perTenant;) {
      const next = state.queued[i];
      if (next && usersRunning(next.userId) < state.perUser) {
        state.queued.splice(i, 1);
        state.running.push(next);
        pendingGrants.push(next.runId);
      } else {
        i += 1;
      }
    }
  };

  setHandler(admissionStateQuery, () => state);
  setHandler(acquireUpdate, (req): AdmissionGrant => {
    handled += 1;
    state.perUser = req.perUser;
    state.perTenant = req.perTenant;
    // A retried acquire (activity retry, worker restart) gets the same answer, never a second slot.
    const caps = { perUser: state.perUser, perTenant: state.perTenant };
    if (state.running.some((r) => r.runId === req.runId)) return { admitted: true, position: 0, ...caps };
    if (!state.queued.some((q) => q.runId === req.runId)) {
      state.queued.push({ runId: req.runId, userId: req.userId });
    }
    pump();
    // Granted within this update: the answer says so; no signal is needed for it.
    const granted = pendingGrants.indexOf(req.runId);
    if (granted >= 0) {
      pendingGrants.splice(granted, 1);
      return { admitted: true, position: 0, ...caps };
    }
    return { admitted: false, position: position(req.runId), ...caps };
  });
  setHandler(releaseSignal, ({ runId }) => {
    handled += 1;
    state.running = state.running.filter((r) => r.runId !== runId);
    state.queued = state.queued.filter((q) => q.runId !== runId);
    pump();
  });

  for (;;) {
    const active = await condition(
      () => pendingGrants.length > 0 || handled >= CONTINUE_AFTER || workflowInfo().continueAsNewSuggested,
      state.running.length === 0 && state.queued.length === 0 ? IDLE_END : '1 day',
    );
    while (pendingGrants.length > 0) {
      const runId = pendingGrants.shift() as string;
      try {
        await getExternalWorkflowHandle(runId).signal(admittedSignal);
        log.info('run admitted', { tenant: input.tenant, runId });
      } catch (err) {
        // The run is gone (terminated without releasing): free its slot for the next one.
        log.warn('admitted run not found; slot freed', { tenant: input.tenant, runId, err });
        state.running = state.running.filter((r) => r.runId !== runId);
        pump();
      }
    }
    if (!active && state.running.length === 0 && state.queued.length === 0) return;
    if (handled >= CONTINUE_AFTER || workflowInfo().continueAsNewSuggested) {
      await condition(() => pendingGrants.length === 0);
      await continueAsNew<typeof admissionWorkflow>({ tenant: input.tenant, state });
    }
  }
}
