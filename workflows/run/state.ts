/** A run's state in the workflow: its view, its events, its status and how it ends. */
import { log, upsertSearchAttributes } from '@temporalio/workflow';
import {
  SEARCH_ATTRIBUTES,
  approvalPolicy,
  moodPolicy,
  type CommandOutcome,
  type InterruptView,
  type RunStatus,
  type RunView,
  type RunWorkflowInput,
} from '../../contracts';
import type { SandboxHandle } from '../../activities/types';
import { EventLog } from '../lib/event-log';
import { EXECUTE_TIMEOUT_SECONDS } from './profiles';

/** How a run ends, decided by the steps and applied after cleanup. */
export interface Outcome {
  status: RunStatus;
  stage: string;
}

/**
 * Statuses written to the run's search attribute in the lean shape (decision 0015); each upsert
 * is a history event. `verifying` is a short phase of `running` that lists and filters do not need.
 */
const LEAN_UPSERTED: ReadonlySet<RunStatus> = new Set<RunStatus>([
  'queued',
  'running',
  'awaiting_approval',
  'committed',
  'discarded',
  'failed',
  'cancelled',
]);

export class RunState {
  readonly runId: string;
  readonly tenant: string;
  readonly userId: string;
  readonly request: RunWorkflowInput['request'];
  readonly workItem: RunWorkflowInput['request']['workItem'];
  readonly policy: ReturnType<typeof moodPolicy>;
  readonly budgets: NonNullable<RunWorkflowInput['request']['budgets']>;
  readonly wallClockSeconds: number;
  readonly executeTimeoutSeconds: number;
  readonly maxReruns: number;
  readonly events: EventLog;
  readonly view: RunView;
  readonly interrupts: InterruptView[] = [];
  /** Raised once the touched paths are known when the run carries an approval floor (tenant policy, rerun). */
  approval: ReturnType<typeof approvalPolicy>;
  outcome: Outcome = { status: 'failed', stage: 'created' };
  sandbox: SandboxHandle | undefined;
  /** The sandbox is gone (the finish step removed it). */
  sandboxRemoved = false;
  removedParts: string[] = [];
  /** The run holds (or waits for) an admission slot; `released` once it went back. */
  holdsAdmission = false;
  admissionBySignal = false;
  released = false;

  constructor(
    readonly input: RunWorkflowInput,
    /** The lean shape (patch `runs-v3`, decision 0015); off when replaying histories from before. */
    readonly lean: boolean,
  ) {
    const { runId, tenant, userId, request } = input;
    this.runId = runId;
    this.tenant = tenant;
    this.userId = userId;
    this.request = request;
    this.workItem = request.workItem;
    this.policy = moodPolicy(request.mood);
    this.approval = approvalPolicy(request.mood, request.workItem.riskTier, request.review);
    this.budgets = request.budgets ?? {};
    this.wallClockSeconds = Math.min(this.policy.wallClockSeconds, this.budgets.wallClockSeconds ?? Infinity);
    this.executeTimeoutSeconds = Math.min(EXECUTE_TIMEOUT_SECONDS, this.wallClockSeconds);
    this.maxReruns = this.budgets.maxVerifierReruns ?? this.policy.verifierReruns;
    this.events = new EventLog({ runId, tenant, userId, workItemId: this.workItem.id, lean });
    this.view = {
      runId,
      status: 'created',
      tenant,
      userId,
      mood: request.mood,
      repo: request.repo,
      baseRef: request.baseRef,
      workItem: {
        id: this.workItem.id,
        description: this.workItem.description,
        riskTier: this.workItem.riskTier,
      },
      verifiers: [],
      createdAt: new Date(input.requestedAt).toISOString(),
      events: { emitted: 0, published: 0 },
      ...(input.rerun ? { rerunOf: input.rerun.of } : {}),
      ...(input.graph ? { graph: input.graph } : {}),
    };
  }

  snapshot(): RunView {
    return {
      ...this.view,
      ...(this.interrupts.length > 0 ? { interrupts: this.interrupts.map((i) => ({ ...i })) } : {}),
      events: { emitted: this.events.emittedCount, published: this.events.publishedCount },
    };
  }

  setStatus(next: RunStatus, stage: string): void {
    const previous = this.view.status;
    this.view.status = next;
    if (next === 'running' && !this.view.startedAt) this.view.startedAt = new Date().toISOString();
    if (next !== 'queued') delete this.view.queuePosition;
    if (!this.lean || LEAN_UPSERTED.has(next)) {
      upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.runStatus, value: next }]);
    }
    this.events.emit('note.status', {
      run_id: this.runId,
      status: next,
      previous,
      mood: this.view.mood,
      stage,
    });
    log.info('run status', {
      runId: this.runId,
      workItemId: this.workItem.id,
      status: next,
      previous,
      stage,
    });
  }

  /** Ends the run as discarded at `stage`: the error, the event, the outcome. */
  discard(stage: string, reason: string, message: string, failed: string[] = []): void {
    this.view.error = { code: reason, message };
    this.events.emit('run.discarded', { run_id: this.runId, reason, failed });
    this.outcome = { status: 'discarded', stage };
  }
}

/** An argv as one short line for summaries and questions. */
export function summarize(argv: string[]): string {
  const line = argv.join(' ');
  return line.length > 100 ? `${line.slice(0, 97)}...` : line;
}

/** A command's outcome in event-payload form (the same fields for the work item and each verifier). */
export function outputPayload(o: CommandOutcome) {
  return {
    exit_code: o.exitCode,
    timed_out: o.timedOut,
    duration_ms: o.durationMs,
    output_sha256: o.outputSha256,
    output_bytes: o.outputBytes,
    output_tail: o.outputTail,
    oom_killed: o.oomKilled ?? false,
  };
}
