/** Signal/query/update definitions of the workflows, importable by workflows, API and tests alike. */
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { Actor, InterruptView, RunView } from './run';
import type { WorkGraphView } from './work-graph';

/** Current view of a run; answered by the run workflow at any time. */
export const runViewQuery = defineQuery<RunView>('runView');

/** An approve or reject decision, by a verified identity. */
export interface ApprovalDecision {
  decision: 'approve' | 'reject';
  actor: Actor;
  comment?: string;
}

export interface ApprovalResult {
  /** `pending` while the quorum is not reached yet. */
  outcome: 'approved' | 'rejected' | 'pending';
  approvals: number;
  quorum: number;
}

/**
 * Approval by update: the validator refuses (with an ApplicationFailure whose type is an error
 * code) a run that is not waiting, the author's own approval where review must be independent and
 * a second approval by the same user; nothing refused enters the history.
 */
export const approvalUpdate = defineUpdate<ApprovalResult, [ApprovalDecision]>('decideApproval');

export interface InterruptAnswer {
  interruptId: string;
  answer: string;
  actor: Actor;
  comment?: string;
}

/** Answers an open human interrupt; refused when unknown, closed, or not one of its options. */
export const answerInterruptUpdate = defineUpdate<InterruptView, [InterruptAnswer]>('answerInterrupt');

/** Sent by the admission workflow when a queued run may start. */
export const admittedSignal = defineSignal<[]>('admitted');

/** A run asks its tenant's admission workflow for a slot (fairness caps). */
export interface AdmissionRequest {
  runId: string;
  userId: string;
  /** Caps as configured on the worker that asked; the latest request's caps apply. */
  perUser: number;
  perTenant: number;
}

/** The answer to an acquire: admitted at once, or queued at a position (1 = next). */
export interface AdmissionGrant {
  admitted: boolean;
  position: number;
  /** The caps in force. */
  perUser: number;
  perTenant: number;
}

/** Acquire by update (with start): the run learns at once whether it waits. */
export const acquireUpdate = defineUpdate<AdmissionGrant, [AdmissionRequest]>('acquire');
export const releaseSignal = defineSignal<[{ runId: string }]>('release');

export interface AdmissionState {
  running: { runId: string; userId: string }[];
  queued: { runId: string; userId: string }[];
  perUser: number;
  perTenant: number;
  /** Runs that joined asking by query (decision 0015) and may still ask for signals. */
  byQuery?: string[];
}

export const admissionStateQuery = defineQuery<AdmissionState>('admissionState');

/**
 * A run joins its tenant's queue (decision 0013): sent by signal-with-start, so any number of runs
 * may enqueue at once (signals have no in-flight limit, unlike updates). The gate answers with
 * `queued` (when the run must wait) and `admitted` signals to the run's workflow.
 */
export interface EnqueueRequest {
  runId: string;
  userId: string;
  /** Caps as configured on the worker that asked; the latest request's caps apply. */
  perUser: number;
  perTenant: number;
  /**
   * The run learns its answer by `runAdmissionQuery` right after enqueueing (decision 0015): the
   * gate sends it no `admitted` signal when it is admitted by this very request, and no `queued`
   * notice; only a later admission (after waiting) is signalled. Absent on runs from before.
   * A second `enqueue` of the same run without the flag (its query could not be answered, e.g.
   * a busy gate's query buffer was full) asks for the signals after all.
   */
  answerByQuery?: boolean;
}

export const enqueueSignal = defineSignal<[EnqueueRequest]>('enqueue');

/** What a run learns when it enqueues: the caps and how long it may wait (the worker's configuration). */
export interface AdmissionTerms {
  perUser: number;
  perTenant: number;
  maxWaitSeconds: number;
}

/** Sent by the gate to a run that must wait: its place in the queue (1 = next) and the caps in force. */
export interface QueuedNotice {
  position: number;
  perUser: number;
  perTenant: number;
}

export const queuedSignal = defineSignal<[QueuedNotice]>('queued');

/** One run's place at its tenant's gate: holding a slot, waiting at a position, or unknown to it. */
export type RunAdmission =
  | { state: 'admitted'; perUser: number; perTenant: number }
  | { state: 'queued'; position: number; perUser: number; perTenant: number }
  | { state: 'unknown' };

export const runAdmissionQuery = defineQuery<RunAdmission, [string]>('runAdmission');

/** Status of a work graph. */
export const workGraphViewQuery = defineQuery<WorkGraphView>('workGraphView');
