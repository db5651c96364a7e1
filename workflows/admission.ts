/**
 * admissionWorkflow: one per tenant, the fairness gate of its runs. A run holds a slot from
 * admission to its end; per-user and per-tenant caps bound the slots, and waiting runs are
 * admitted in arrival order, skipping only those whose own user is at the cap — so one user's
 * backlog never holds back another user's run.
 *
 * Runs join by the `enqueue` signal (signal-with-start) and are answered by `queued` and
 * `admitted` signals, sent in batches, one batch per workflow task (decision 0013). The `acquire`
 * update is kept for runs that started before that change.
 */
import {
  condition,
  continueAsNew,
  getExternalWorkflowHandle,
  log,
  patched,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import {
  acquireUpdate,
  admissionStateQuery,
  admittedSignal,
  enqueueSignal,
  queuedSignal,
  releaseSignal,
  runAdmissionQuery,
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
/** History events before continuing as new (each answer sent costs two events). */
const CONTINUE_AFTER_EVENTS = 4000;
/** Signals sent at once; far below the server's bound on a workflow's pending external signals (2000). */
const SEND_BATCH = 100;

interface Notice {
  runId: string;
  /** Absent: `admitted`; present: `queued` at this position. */
  position?: number;
}

export async function admissionWorkflow(input: AdmissionWorkflowInput): Promise<void> {
  const state: AdmissionState = input.state ?? { running: [], queued: [], perUser: 1, perTenant: 1 };
  // Answers go out in parallel batches; before this, one signal per workflow task.
  const batched = patched('admission-signals');
  let handled = 0;
  const pendingGrants: string[] = [];
  /** Runs that joined by `enqueue` and wait: each is told its position once. */
  const pendingQueued: string[] = [];
  /** Runs that joined with `answerByQuery` and may still ask for signals instead (kept across continue-as-new). */
  const byQuery = new Set<string>(state.byQuery ?? []);

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
  const carry = (): AdmissionState => (byQuery.size > 0 ? { ...state, byQuery: [...byQuery] } : state);
  setHandler(runAdmissionQuery, (runId) => {
    const caps = { perUser: state.perUser, perTenant: state.perTenant };
    if (state.running.some((r) => r.runId === runId)) return { state: 'admitted', ...caps };
    const at = position(runId);
    return at > 0 ? { state: 'queued', position: at, ...caps } : { state: 'unknown' };
  });
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
  setHandler(enqueueSignal, (req) => {
    handled += 1;
    state.perUser = req.perUser;
    state.perTenant = req.perTenant;
    const known =
      state.running.some((r) => r.runId === req.runId) || state.queued.some((q) => q.runId === req.runId);
    // A run that asked by query and could not get its answer asks again without the flag: it gets
    // the signals after all (only runs that joined with the flag are in `byQuery`).
    if (known && !req.answerByQuery && byQuery.delete(req.runId)) {
      if (state.running.some((r) => r.runId === req.runId)) pendingGrants.push(req.runId);
      else pendingQueued.push(req.runId);
      return;
    }
    // A repeated enqueue (the activity retried after its signal landed) changes nothing.
    if (known) return;
    state.queued.push({ runId: req.runId, userId: req.userId });
    pump();
    if (req.answerByQuery) {
      byQuery.add(req.runId);
      // The run asks by query right away (decision 0015): admitted now, it needs no signal, and
      // queued, it knows its position; only a later admission is signalled. Data-driven, so
      // replay of gates from before is unchanged (their requests never carry the flag).
      const granted = pendingGrants.indexOf(req.runId);
      if (granted >= 0) pendingGrants.splice(granted, 1);
      return;
    }
    if (state.queued.some((q) => q.runId === req.runId)) pendingQueued.push(req.runId);
  });
  setHandler(releaseSignal, ({ runId }) => {
    handled += 1;
    byQuery.delete(runId);
    state.running = state.running.filter((r) => r.runId !== runId);
    state.queued = state.queued.filter((q) => q.runId !== runId);
    pump();
  });

  const pending = (): boolean => pendingGrants.length > 0 || pendingQueued.length > 0;
  const continueDue = (): boolean =>
    handled >= CONTINUE_AFTER ||
    workflowInfo().continueAsNewSuggested ||
    (batched && workflowInfo().historyLength >= CONTINUE_AFTER_EVENTS);

  /** The run is gone (terminated without releasing): free its slot (or its queue place) for the next one. */
  const gone = (runId: string, err: unknown): void => {
    byQuery.delete(runId);
    log.warn('run not found; slot freed', { tenant: input.tenant, runId, err });
    state.running = state.running.filter((r) => r.runId !== runId);
    state.queued = state.queued.filter((q) => q.runId !== runId);
    pump();
  };

  /** One batch of answers, sent in parallel: a burst costs a few workflow tasks, not one per run. */
  const sendBatch = async (): Promise<void> => {
    const notices: Notice[] = [];
    while (notices.length < SEND_BATCH && pendingGrants.length > 0) {
      notices.push({ runId: pendingGrants.shift() as string });
    }
    while (notices.length < SEND_BATCH && pendingQueued.length > 0) {
      const runId = pendingQueued.shift() as string;
      const at = position(runId);
      // Admitted before its notice went out: the `admitted` signal says all.
      if (at > 0) notices.push({ runId, position: at });
    }
    const caps = { perUser: state.perUser, perTenant: state.perTenant };
    await Promise.all(
      notices.map(async ({ runId, position: at }) => {
        try {
          const run = getExternalWorkflowHandle(runId);
          await (at === undefined
            ? run.signal(admittedSignal)
            : run.signal(queuedSignal, { position: at, ...caps }));
        } catch (err) {
          gone(runId, err);
        }
      }),
    );
    log.info('admission answers sent', { tenant: input.tenant, answers: notices.length });
  };

  for (;;) {
    const active = await condition(
      () => pending() || continueDue(),
      state.running.length === 0 && state.queued.length === 0 ? IDLE_END : '1 day',
    );
    // An execution from before the patch keeps its old loop, unless runs already enqueue by signal.
    if (batched || pendingQueued.length > 0) {
      while (pending()) await sendBatch();
    } else {
      while (pendingGrants.length > 0) {
        const runId = pendingGrants.shift() as string;
        try {
          await getExternalWorkflowHandle(runId).signal(admittedSignal);
          log.info('run admitted', { tenant: input.tenant, runId });
        } catch (err) {
          gone(runId, err);
        }
      }
    }
    if (!active && state.running.length === 0 && state.queued.length === 0) return;
    if (continueDue()) {
      await condition(() => !pending());
      await continueAsNew<typeof admissionWorkflow>({ tenant: input.tenant, state: carry() });
    }
  }
}
