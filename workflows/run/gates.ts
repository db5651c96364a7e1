/** The run's gates: the review before execution, admission, the wall-clock budget and the approval. */
import { CancellationScope, condition, patched, sleep } from '@temporalio/workflow';
import type { InterruptView, RunView } from '../../contracts';
import type { AdmissionTicket } from '../lib/admission-ticket';
import { DEFAULT_APPROVAL_TIMEOUT_SECONDS, DEFAULT_INTERRUPT_TIMEOUT_SECONDS, admission } from './profiles';
import { summarize, type RunState } from './state';

/** Asks a human a typed question; on the deadline the default action is taken and `receipt.timeout` emitted. */
export async function ask(
  run: RunState,
  kind: InterruptView['kind'],
  question: string,
  options: string[],
  defaultAction: string,
): Promise<string> {
  const timeoutSeconds = run.budgets.interruptTimeoutSeconds ?? DEFAULT_INTERRUPT_TIMEOUT_SECONDS;
  const it: InterruptView = {
    id: `int-${run.interrupts.length + 1}`,
    kind,
    question,
    options,
    defaultAction,
    deadline: new Date(Date.now() + timeoutSeconds * 1000).toISOString(),
    status: 'open',
  };
  run.interrupts.push(it);
  run.events.emit('run.interrupt.requested', {
    run_id: run.runId,
    interrupt_id: it.id,
    kind,
    question,
    options,
    default_action: defaultAction,
    deadline: it.deadline,
  });
  if (!(await condition(() => it.status !== 'open', timeoutSeconds * 1000))) {
    it.status = 'timed_out';
    it.answer = defaultAction;
    run.events.emit('receipt.timeout', {
      run_id: run.runId,
      kind: 'interrupt',
      id: it.id,
      deadline: it.deadline,
      default_action: defaultAction,
    });
  }
  return it.answer ?? defaultAction;
}

/** The mood's review before execution (CAUTIOUS moods ask); false when the run was discarded there. */
export async function reviewed(run: RunState): Promise<boolean> {
  if (!run.policy.interruptBeforeExecute) return true;
  const { input, request, workItem } = run;
  const answer = await ask(
    run,
    'REQUEST_REVIEW',
    `Run \`${summarize(workItem.execute)}\` on ${request.repo} @ ${input.rerun?.baseCommit ?? request.baseRef}?`,
    ['proceed', 'abort'],
    'abort',
  );
  if (answer === 'proceed') return true;
  run.discard('review', 'interrupt_declined', `the pre-execution review answered ${answer}`);
  return false;
}

/** Waits for a slot at the tenant's fairness gate (decision 0013; lean join: decision 0015). */
export async function admitted(run: RunState, ticket: AdmissionTicket): Promise<true> {
  const { runId, tenant, userId, view, events } = run;
  run.holdsAdmission = true;
  const onQueued = (notice: { position: number; perUser: number; perTenant: number }) => {
    view.queuePosition = notice.position;
    run.setStatus('queued', 'admission');
    events.emit('run.queued', { run_id: runId, per_user: notice.perUser, per_tenant: notice.perTenant });
    return (waitedMs: number) => events.emit('run.admitted', { run_id: runId, waited_ms: waitedMs });
  };
  if (run.lean) {
    await ticket.joinLean(events, onQueued);
  } else if (patched('admission-signals')) {
    run.admissionBySignal = true;
    await ticket.join(onQueued);
  } else {
    // Histories from before decision 0013: admission by update.
    const grant = await admission.requestAdmission({ tenant, userId, runId });
    if (!grant.admitted && !ticket.admitted) {
      const queuedAt = Date.now();
      view.queuePosition = grant.position;
      run.setStatus('queued', 'admission');
      events.emit('run.queued', { run_id: runId, per_user: grant.perUser, per_tenant: grant.perTenant });
      await condition(() => ticket.admitted);
      events.emit('run.admitted', { run_id: runId, waited_ms: Date.now() - queuedAt });
    }
  }
  return true;
}

/**
 * Runs the budgeted part of the run: past the wall-clock budget it is cancelled and
 * `exceeded()` says so. In the lean shape the timer is left to expire instead of being
 * cancelled (a cancel is a history event); firing after the work settled it does nothing.
 */
export function wallClockBudget(run: RunState) {
  let exceeded = false;
  return {
    exceeded: () => exceeded,
    async run(fn: () => Promise<boolean>): Promise<boolean> {
      const work = new CancellationScope();
      const budget = new CancellationScope();
      let settled = false;
      const timer = budget
        .run(() => sleep(run.wallClockSeconds * 1000))
        .then(
          () => {
            if (settled) return;
            exceeded = true;
            work.cancel();
          },
          () => undefined,
        );
      try {
        return await work.run(fn);
      } finally {
        settled = true;
        if (!run.lean) {
          budget.cancel();
          await timer;
        }
      }
    },
  };
}

/** The commit gate: approval by update when mood, risk tier or request asks for it; the deadline discards. */
export async function approved(run: RunState): Promise<boolean> {
  const { approval, view, events, runId, userId } = run;
  if (approval.requirement === 'none') return true;
  const timeoutSeconds = run.budgets.approvalTimeoutSeconds ?? DEFAULT_APPROVAL_TIMEOUT_SECONDS;
  const gate: NonNullable<RunView['approval']> = {
    requirement: approval.requirement,
    quorum: approval.quorum,
    reasons: approval.reasons,
    deadline: new Date(Date.now() + timeoutSeconds * 1000).toISOString(),
    approvals: [],
  };
  view.approval = gate;
  run.setStatus('awaiting_approval', 'approval');
  events.emit('run.approval.requested', {
    run_id: runId,
    requirement: approval.requirement,
    quorum: approval.quorum,
    reasons: approval.reasons,
    deadline: gate.deadline,
    author: userId,
  });
  if (!(await condition(() => gate.decision !== undefined, timeoutSeconds * 1000))) {
    gate.decision = 'timed_out';
    events.emit('receipt.timeout', {
      run_id: runId,
      kind: 'approval',
      id: 'approval',
      deadline: gate.deadline,
      default_action: 'discard',
    });
  }
  if (gate.decision === 'approved') return true;
  const rejected = gate.decision === 'rejected';
  run.discard(
    'approval',
    rejected ? 'approval_rejected' : 'approval_timeout',
    rejected
      ? `rejected by ${gate.decidedBy?.userId ?? 'a reviewer'}`
      : `no approval by ${gate.deadline}; discarded (the safe default)`,
  );
  return false;
}
