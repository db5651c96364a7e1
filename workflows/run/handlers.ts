/** The run's queries and updates: its view, approval decisions and interrupt answers. */
import { log, setHandler } from '@temporalio/workflow';
import {
  answerInterruptUpdate,
  approvalUpdate,
  runViewQuery,
  type ApprovalDecision,
  type InterruptAnswer,
  type InterruptView,
  type RunView,
} from '../../contracts';
import { refusal } from '../lib/failures';
import type { RunState } from './state';

/** Registers every handler; call before the run's first await (they may arrive at once). */
export function registerHandlers(run: RunState): void {
  const { runId, tenant, userId, view, events, interrupts } = run;
  setHandler(runViewQuery, () => run.snapshot());

  setHandler(
    approvalUpdate,
    (d) => {
      const gate = view.approval as NonNullable<RunView['approval']>;
      if (d.decision === 'reject') {
        gate.decision = 'rejected';
        gate.decidedBy = d.actor;
      } else {
        gate.approvals.push({
          ...d.actor,
          at: new Date().toISOString(),
          ...(d.comment ? { comment: d.comment } : {}),
        });
        if (gate.approvals.length >= gate.quorum) {
          gate.decision = 'approved';
          gate.decidedBy = d.actor;
        }
      }
      const outcome =
        gate.decision === 'rejected' ? 'rejected' : gate.decision === 'approved' ? 'approved' : 'pending';
      events.emit(
        'run.approval.decided',
        {
          run_id: runId,
          decision: d.decision,
          approver_user_id: d.actor.userId,
          approver_tenant: d.actor.tenant,
          approver_token_id: d.actor.tokenId ?? null,
          comment: d.comment ?? null,
          approvals: gate.approvals.length,
          quorum: gate.quorum,
          outcome,
        },
        'user',
      );
      log.info('approval decision', { runId, approver: d.actor.userId, decision: d.decision, outcome });
      return { outcome, approvals: gate.approvals.length, quorum: gate.quorum };
    },
    {
      validator: (d: ApprovalDecision) => {
        const gate = view.approval;
        if (view.status !== 'awaiting_approval' || !gate || gate.decision !== undefined)
          throw refusal('not_awaiting_approval', `run ${runId} is ${view.status}, not awaiting approval`);
        if (d.actor.tenant !== tenant) throw refusal('not_found', `run ${runId} does not exist`);
        if (d.decision === 'approve' && gate.requirement === 'independent' && d.actor.userId === userId)
          throw refusal(
            'self_approval_forbidden',
            `run ${runId} needs independent review (${run.approval.reasons.join('; ')}); its author cannot approve it`,
          );
        if (d.decision === 'approve' && gate.approvals.some((a) => a.userId === d.actor.userId))
          throw refusal('already_approved', `${d.actor.userId} already approved run ${runId}`);
      },
    },
  );

  setHandler(
    answerInterruptUpdate,
    (a) => {
      const it = interrupts.find((i) => i.id === a.interruptId) as InterruptView;
      it.status = 'answered';
      it.answer = a.answer;
      it.answeredBy = a.actor;
      events.emit(
        'run.interrupt.answered',
        {
          run_id: runId,
          interrupt_id: it.id,
          answer: a.answer,
          answered_by: a.actor.userId,
          token_id: a.actor.tokenId ?? null,
          comment: a.comment ?? null,
        },
        'user',
      );
      log.info('interrupt answered', { runId, interruptId: it.id, answer: a.answer, by: a.actor.userId });
      return { ...it };
    },
    {
      validator: (a: InterruptAnswer) => {
        const it = interrupts.find((i) => i.id === a.interruptId);
        if (!it || a.actor.tenant !== tenant)
          throw refusal('interrupt_not_found', `run ${runId} has no interrupt ${a.interruptId}`);
        if (it.status !== 'open')
          throw refusal('interrupt_closed', `interrupt ${it.id} is already ${it.status.replace('_', ' ')}`);
        if (!it.options.includes(a.answer))
          throw refusal('invalid_answer', `answer must be one of: ${it.options.join(', ')}`);
      },
    },
  );
}
