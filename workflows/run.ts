/** runWorkflow: one bounded attempt at one work item, ending in a verified commit or a clean discard. */
import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  log,
  patched,
  proxyActivities,
  setHandler,
  sleep,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import {
  EGRESS_INDIVIDUAL_ATTEMPTS,
  EGRESS_SUMMARY_MAX_KEYS,
  SEARCH_ATTRIBUTES,
  TASK_QUEUES,
  answerInterruptUpdate,
  approvalPolicy,
  applyApprovalFloor,
  approvalUpdate,
  judgeVerifierAttempts,
  isRemoteRepoUrl,
  moodPolicy,
  nextVerifierAttempt,
  runViewQuery,
  type ApprovalDecision,
  type CommandOutcome,
  type InterruptAnswer,
  type InterruptView,
  type RunStatus,
  type RunView,
  type RunWorkflowInput,
  type VerifierOutcome,
} from '../contracts';
import type { AdmissionActivities, SandboxActivities, SandboxHandle } from '../activities/types';
import { AdmissionTicket } from './lib/admission-ticket';
import { deliver } from './lib/delivery';
import { EventLog } from './lib/event-log';

/** Failure types a retry cannot fix; the run fails at once with that code. */
const NON_RETRYABLE = ['repo_not_found', 'ref_not_found', 'sandbox_image_missing', 'invalid_sandbox_request'];

const { createSandbox } = proxyActivities<SandboxActivities>({
  taskQueue: TASK_QUEUES.sandbox,
  startToCloseTimeout: '3 minutes',
  // createSandbox heartbeats its phase every 5 s: a worker lost mid-creation is retried after this.
  heartbeatTimeout: '30 seconds',
  retry: { maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE },
});

// The gate is another workflow on the same service: retry while Temporal is reachable at all.
const admission = proxyActivities<AdmissionActivities>({
  taskQueue: TASK_QUEUES.orchestration,
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '20 seconds' },
});

/** Activities pinned to the host that holds the sandbox (worker-specific task queue pattern). */
function hostActivities(hostQueue: string, timeoutSeconds: number) {
  return proxyActivities<SandboxActivities>({
    taskQueue: hostQueue,
    // The activity enforces the command's own timeout; this bound only catches a lost worker.
    startToCloseTimeout: `${timeoutSeconds + 120} seconds`,
    scheduleToStartTimeout: '5 minutes',
    heartbeatTimeout: '30 seconds',
    retry: { maximumAttempts: 3, nonRetryableErrorTypes: NON_RETRYABLE },
  });
}

/** Cleanup keeps retrying while the host may come back, then gives up to the orphan sweeper. */
function destroyOn(hostQueue: string) {
  return proxyActivities<SandboxActivities>({
    taskQueue: hostQueue,
    startToCloseTimeout: '2 minutes',
    scheduleToCloseTimeout: '30 minutes',
    retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds' },
  });
}

const EXECUTE_TIMEOUT_SECONDS = 600;
const VERIFIER_ACTIVITY_BOUND_SECONDS = 3600;
const DEFAULT_APPROVAL_TIMEOUT_SECONDS = 24 * 3600;
const DEFAULT_INTERRUPT_TIMEOUT_SECONDS = 3600;

/** How a run ends, decided by the steps and applied after cleanup. */
interface Outcome {
  status: RunStatus;
  stage: string;
}

export async function runWorkflow(input: RunWorkflowInput): Promise<RunView> {
  const { runId, tenant, userId, request } = input;
  const workItem = request.workItem;
  const events = new EventLog({ runId, tenant, userId, workItemId: workItem.id });
  // Mood engine, admission, approvals, interrupts, reruns and budgets; histories from before replay without them.
  const v2 = patched('runs-v2');
  const policy = moodPolicy(request.mood);
  // Raised once the touched paths are known when the run carries an approval floor (tenant policy, rerun).
  let approval = approvalPolicy(request.mood, workItem.riskTier, request.review);
  const budgets = request.budgets ?? {};
  const wallClockSeconds = Math.min(policy.wallClockSeconds, budgets.wallClockSeconds ?? Infinity);
  const executeTimeoutSeconds = v2
    ? Math.min(EXECUTE_TIMEOUT_SECONDS, wallClockSeconds)
    : EXECUTE_TIMEOUT_SECONDS;
  const maxReruns = budgets.maxVerifierReruns ?? policy.verifierReruns;

  const view: RunView = {
    runId,
    status: 'created',
    tenant,
    userId,
    mood: request.mood,
    repo: request.repo,
    baseRef: request.baseRef,
    workItem: { id: workItem.id, description: workItem.description, riskTier: workItem.riskTier },
    verifiers: [],
    createdAt: new Date(input.requestedAt).toISOString(),
    events: { emitted: 0, published: 0 },
    ...(input.rerun ? { rerunOf: input.rerun.of } : {}),
    ...(input.graph ? { graph: input.graph } : {}),
  };
  const interrupts: InterruptView[] = [];
  const snapshot = (): RunView => ({
    ...view,
    ...(interrupts.length > 0 ? { interrupts: interrupts.map((i) => ({ ...i })) } : {}),
    events: { emitted: events.emittedCount, published: events.publishedCount },
  });
  // Handlers before the first await: queries, updates and signals may arrive at once.
  setHandler(runViewQuery, snapshot);
  const ticket = new AdmissionTicket({ tenant, userId, runId });
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
            `run ${runId} needs independent review (${approval.reasons.join('; ')}); its author cannot approve it`,
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

  const setStatus = (next: RunStatus, stage: string): void => {
    const previous = view.status;
    view.status = next;
    if (next === 'running' && !view.startedAt) view.startedAt = new Date().toISOString();
    if (next !== 'queued') delete view.queuePosition;
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.runStatus, value: next }]);
    events.emit('note.status', { run_id: runId, status: next, previous, mood: view.mood, stage });
    log.info('run status', { runId, workItemId: workItem.id, status: next, previous, stage });
  };

  /** Asks a human a typed question; on the deadline the default action is taken and `receipt.timeout` emitted. */
  const ask = async (
    kind: InterruptView['kind'],
    question: string,
    options: string[],
    defaultAction: string,
  ): Promise<string> => {
    const timeoutSeconds = budgets.interruptTimeoutSeconds ?? DEFAULT_INTERRUPT_TIMEOUT_SECONDS;
    const it: InterruptView = {
      id: `int-${interrupts.length + 1}`,
      kind,
      question,
      options,
      defaultAction,
      deadline: new Date(Date.now() + timeoutSeconds * 1000).toISOString(),
      status: 'open',
    };
    interrupts.push(it);
    events.emit('run.interrupt.requested', {
      run_id: runId,
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
      events.emit('receipt.timeout', {
        run_id: runId,
        kind: 'interrupt',
        id: it.id,
        deadline: it.deadline,
        default_action: defaultAction,
      });
    }
    return it.answer ?? defaultAction;
  };

  events.start();
  events.emit('run.created', {
    repo: request.repo,
    base_ref: request.baseRef,
    mood: request.mood,
    work_item: {
      id: workItem.id,
      description: workItem.description,
      execute: workItem.execute,
      required_verifiers: workItem.requiredVerifiers,
      risk_tier: workItem.riskTier,
      acceptance_criteria: workItem.acceptanceCriteria,
      ...(v2 ? { depends_on: workItem.dependsOn ?? [], parent_id: workItem.parentId ?? null } : {}),
    },
    ...(v2
      ? {
          rerun_of: input.rerun?.of ?? null,
          image_id: input.rerun?.imageId ?? null,
          graph_id: input.graph?.graphId ?? null,
          ...(input.graph ? { attempt: input.graph.attempt } : {}),
        }
      : {}),
  });
  if (v2) {
    events.emit('run.mood.policy', {
      run_id: runId,
      mood: policy.mood,
      summary: policy.summary,
      verifier_reruns: Math.min(policy.verifierReruns, maxReruns),
      confirm_runs: policy.confirmRuns,
      flaky_passes: policy.flakyPasses,
      egress: policy.egress,
      approval: approval.requirement,
      interrupt_before_execute: policy.interruptBeforeExecute,
      wall_clock_seconds: wallClockSeconds,
    });
  }

  let sandbox: SandboxHandle | undefined;
  let cancellation: Error | undefined;
  let holdsAdmission = false;
  /** Joined the queue by signal (decision 0013): the slot goes back by a signal from here, too. */
  let admissionBySignal = false;
  let outcome: Outcome = { status: 'failed', stage: 'created' };

  /** Sandbox → execute → plan → verifiers. True when every verifier passed (the commit may follow). */
  const executeAndVerify = async (): Promise<boolean> => {
    const network = v2 && policy.egress === 'none' ? 'none' : (request.network ?? 'none');
    sandbox = await createSandbox({
      runId,
      tenant,
      userId,
      workItemId: workItem.id,
      repo: request.repo,
      baseRef: input.rerun?.baseCommit ?? request.baseRef,
      network,
      ...(request.egress && network === 'allowlist' ? { egress: request.egress } : {}),
      ...(input.rerun ? { imageId: input.rerun.imageId } : {}),
    });
    const handle = sandbox;
    view.branch = handle.branch;
    view.baseCommit = handle.baseCommit;
    view.imageId = handle.imageId;
    events.emit('sandbox.created', {
      sandbox_id: handle.sandboxId,
      host_id: handle.hostId,
      branch: handle.branch,
      base_commit: handle.baseCommit,
      image: handle.image,
      image_id: handle.imageId,
    });

    setStatus('running', 'execute');
    const exec = hostActivities(handle.hostQueue, executeTimeoutSeconds);
    const execInput = {
      sandboxId: handle.sandboxId,
      argv: workItem.execute,
      timeoutSeconds: executeTimeoutSeconds,
    };
    const execution: CommandOutcome = v2
      ? await exec.execInSandbox.executeWithOptions({ summary: `execute: ${summarize(workItem.execute)}` }, [
          execInput,
        ])
      : await exec.execInSandbox(execInput);
    view.execution = execution;
    events.emit('run.execution.completed', { ...outputPayload(execution), log: execution.log ?? null });
    if (patched('egress-events')) {
      // Attempts through the egress proxy (policy allowlist), allowed or denied, are events: before
      // `egress-summary` every attempt; since, at most the first EGRESS_INDIVIDUAL_ATTEMPTS plus one
      // summary that counts all of them, so a flood of attempts cannot grow events or history.
      const bounded = patched('egress-summary');
      const attempts = execution.egress ?? [];
      for (const a of bounded ? attempts.slice(0, EGRESS_INDIVIDUAL_ATTEMPTS) : attempts) {
        events.emit('sandbox.egress', {
          run_id: runId,
          host: a.host,
          port: a.port,
          allowed: a.allowed,
          reason: a.reason,
          at: a.at,
          ...(bounded ? { address: a.address ?? null } : {}),
        });
      }
      const summary = execution.egressSummary;
      if (bounded && summary) {
        events.emit('sandbox.egress.summary', {
          run_id: runId,
          total: summary.total,
          allowed: summary.allowed,
          denied: summary.denied,
          rate_limited: summary.rateLimited,
          individual: Math.min(summary.individual, EGRESS_INDIVIDUAL_ATTEMPTS),
          destinations: summary.destinations.slice(0, EGRESS_SUMMARY_MAX_KEYS),
          other: summary.other,
          reasons: summary.reasons,
          complete: summary.complete,
        });
      }
    }

    if (execution.exitCode !== 0 || execution.timedOut) {
      view.error = {
        code: execution.timedOut ? 'execution_timeout' : 'execution_failed',
        message: execution.timedOut
          ? `the work item's command timed out after ${executeTimeoutSeconds}s`
          : execution.oomKilled
            ? `the work item's command was killed at the sandbox memory limit (exit ${execution.exitCode})`
            : `the work item's command exited with code ${execution.exitCode}`,
      };
      outcome = { status: 'failed', stage: 'execute' };
      return false;
    }

    setStatus('verifying', 'verify');
    const verify = hostActivities(handle.hostQueue, VERIFIER_ACTIVITY_BOUND_SECONDS);
    let verifierIds = workItem.requiredVerifiers;
    if (patched('verifier-plan')) {
      // The plan adds mood profiles and path-scoped verifiers; unknown required ids stay in the
      // list so runVerifier reports each as `error` and the run is discarded, never silently passed.
      const plan = await verify.planVerifiers({
        sandboxId: handle.sandboxId,
        mood: request.mood,
        required: workItem.requiredVerifiers,
        riskTier: workItem.riskTier,
      });
      view.plan = {
        planId: plan.planId,
        verifierIds: plan.verifierIds,
        unknownRequired: plan.unknownRequired,
        touchedPaths: plan.touchedPaths,
      };
      events.emit('run.verifier.plan', {
        run_id: runId,
        plan_id: plan.planId,
        inputs_hash: plan.inputsHash,
        verifier_ids: plan.verifierIds,
        unknown_required: plan.unknownRequired,
        reasons: plan.reasons,
        touched_paths: plan.touchedPaths,
      });
      // The tenant's protected paths and a rerun's floor raise the approval the run needs; a
      // request's mood and risk tier can only add to them.
      if (input.approvalFloor && patched('tenant-approval-floor')) {
        approval = applyApprovalFloor(approval, input.approvalFloor, plan.touchedPaths);
      }
      // Required ids keep the order the request gave them (the run view lists verifiers in it).
      const required = new Set(workItem.requiredVerifiers);
      verifierIds = [
        ...new Set(workItem.requiredVerifiers),
        ...plan.verifierIds.filter((id) => !required.has(id)),
      ];
    }

    /** One verifier under the mood: reruns after a non-pass, confirmations after a pass, each in a fresh container. */
    const verifyOne = async (verifierId: string): Promise<VerifierOutcome> => {
      const attempts: VerifierOutcome[] = [];
      const owner = { tenant, userId, workItemId: workItem.id };
      for (;;) {
        const results = attempts.map((a) => a.result);
        const next =
          attempts.length === 0 ? 'first' : v2 ? nextVerifierAttempt(results, policy, maxReruns) : 'done';
        if (next === 'done') break;
        if (next !== 'first') {
          events.emit('run.verifier.rerun', {
            run_id: runId,
            verifier_id: verifierId,
            attempt: attempts.length + 1,
            reason: next,
            previous: results,
          });
        }
        const verifyInput = {
          sandboxId: handle.sandboxId,
          verifierId,
          owner,
          imageId: handle.imageId,
          attempt: attempts.length + 1,
        };
        attempts.push(
          v2
            ? await verify.runVerifier.executeWithOptions(
                { summary: `verify ${verifierId} (attempt ${attempts.length + 1})` },
                [verifyInput],
              )
            : await verify.runVerifier(verifyInput),
        );
      }
      const [only] = attempts;
      if (attempts.length === 1 && only) return only;
      const judged = judgeVerifierAttempts(
        attempts.map((a) => a.result),
        policy,
      );
      // The receipt shows the attempt that decided: a passing one for a pass, else the first failure.
      const shown =
        (judged.result === 'pass'
          ? attempts.filter((a) => a.result === 'pass').pop()
          : attempts.find((a) => a.result !== 'pass')) ?? only;
      if (!shown) throw new Error(`verifier ${verifierId} ran no attempt`);
      return {
        ...shown,
        result: judged.result,
        attempts: attempts.map((a) => a.result),
        flaky: judged.flaky,
      };
    };

    const outcomes = await Promise.all(verifierIds.map(verifyOne));
    for (const result of outcomes) {
      view.verifiers.push(result);
      events.emit('receipt.verifier.attestations', {
        run_id: runId,
        attestation: {
          verifier_id: result.id,
          result: result.result,
          ...outputPayload(result),
          artifact_hash: result.log?.digest ?? null,
          report_hash: result.reportDigest ?? null,
          ...(result.attempts ? { attempts: result.attempts, flaky: result.flaky ?? false } : {}),
        },
      });
    }
    // The exit code is a floor: anything but an explicit pass of every verifier discards.
    const failed = outcomes.filter((o) => o.result !== 'pass');
    if (failed.length === 0 && outcomes.length > 0) return true;
    view.error = {
      code: 'verification_failed',
      message:
        outcomes.length === 0
          ? 'no verifier ran, so nothing was verified'
          : `verifier(s) did not pass: ${failed.map((f) => `${f.id}=${f.result}${f.flaky ? ' (flaky)' : ''}`).join(', ')}`,
    };
    events.emit('run.discarded', {
      run_id: runId,
      reason: 'verification_failed',
      failed: failed.map((f) => f.id),
    });
    outcome = { status: 'discarded', stage: 'verify' };
    return false;
  };

  /** The budgeted part of the run: past the wall-clock budget it is cancelled and the run fails. */
  let budgetExceeded = false;
  const withinBudget = async (fn: () => Promise<boolean>): Promise<boolean> => {
    const work = new CancellationScope();
    const budget = new CancellationScope();
    const timer = budget
      .run(() => sleep(wallClockSeconds * 1000))
      .then(
        () => {
          budgetExceeded = true;
          work.cancel();
        },
        () => undefined,
      );
    try {
      return await work.run(fn);
    } finally {
      budget.cancel();
      await timer;
    }
  };

  /** The commit gate: approval by update when mood, risk tier or request asks for it; the deadline discards. */
  const approved = async (): Promise<boolean> => {
    if (!v2 || approval.requirement === 'none') return true;
    const timeoutSeconds = budgets.approvalTimeoutSeconds ?? DEFAULT_APPROVAL_TIMEOUT_SECONDS;
    const gate: NonNullable<RunView['approval']> = {
      requirement: approval.requirement,
      quorum: approval.quorum,
      reasons: approval.reasons,
      deadline: new Date(Date.now() + timeoutSeconds * 1000).toISOString(),
      approvals: [],
    };
    view.approval = gate;
    setStatus('awaiting_approval', 'approval');
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
    const reason = gate.decision === 'rejected' ? 'approval_rejected' : 'approval_timeout';
    view.error = {
      code: reason,
      message:
        gate.decision === 'rejected'
          ? `rejected by ${gate.decidedBy?.userId ?? 'a reviewer'}`
          : `no approval by ${gate.deadline}; discarded (the safe default)`,
    };
    events.emit('run.discarded', { run_id: runId, reason, failed: [] });
    outcome = { status: 'discarded', stage: 'approval' };
    return false;
  };

  try {
    let proceed = true;
    if (v2 && policy.interruptBeforeExecute) {
      const answer = await ask(
        'REQUEST_REVIEW',
        `Run \`${summarize(workItem.execute)}\` on ${request.repo} @ ${input.rerun?.baseCommit ?? request.baseRef}?`,
        ['proceed', 'abort'],
        'abort',
      );
      if (answer !== 'proceed') {
        proceed = false;
        view.error = { code: 'interrupt_declined', message: `the pre-execution review answered ${answer}` };
        events.emit('run.discarded', { run_id: runId, reason: 'interrupt_declined', failed: [] });
        outcome = { status: 'discarded', stage: 'review' };
      }
    }
    if (proceed && v2 && patched('admission-signals')) {
      holdsAdmission = true;
      admissionBySignal = true;
      await ticket.join((notice) => {
        view.queuePosition = notice.position;
        setStatus('queued', 'admission');
        events.emit('run.queued', { run_id: runId, per_user: notice.perUser, per_tenant: notice.perTenant });
        return (waitedMs) => events.emit('run.admitted', { run_id: runId, waited_ms: waitedMs });
      });
    } else if (proceed && v2) {
      holdsAdmission = true;
      const grant = await admission.requestAdmission({ tenant, userId, runId });
      if (!grant.admitted && !ticket.admitted) {
        const queuedAt = Date.now();
        view.queuePosition = grant.position;
        setStatus('queued', 'admission');
        events.emit('run.queued', { run_id: runId, per_user: grant.perUser, per_tenant: grant.perTenant });
        await condition(() => ticket.admitted);
        events.emit('run.admitted', { run_id: runId, waited_ms: Date.now() - queuedAt });
      }
    }
    if (proceed) {
      const verified = v2 ? await withinBudget(executeAndVerify) : await executeAndVerify();
      if (verified && (await approved())) {
        const handle = sandbox as SandboxHandle;
        const commit = await hostActivities(handle.hostQueue, VERIFIER_ACTIVITY_BOUND_SECONDS).commitSandbox({
          sandboxId: handle.sandboxId,
          message: `choiros run ${runId}: ${workItem.description.split('\n')[0]?.slice(0, 72) ?? ''}`,
          authorName: userId,
          authorEmail: `${userId}@${tenant}.choiros.invalid`,
        });
        view.commit = commit.commit;
        view.branch = commit.branch;
        events.emit('receipt.commit', {
          run_id: runId,
          branch: commit.branch,
          commit: commit.commit,
          base_commit: handle.baseCommit,
          changed_paths: commit.changedPaths,
          verifier_ids: view.verifiers.map((o) => o.id),
        });
        outcome = { status: 'committed', stage: 'commit' };
        // Remote repositories: push the branch back to the origin (decision 0019); a failed push
        // fails the delivery step only, never the verified commit.
        if (isRemoteRepoUrl(request.repo) && patched('remote-delivery')) {
          view.delivery = await deliver(
            {
              runId,
              tenant,
              repo: request.repo,
              baseRef: request.baseRef,
              branch: commit.branch,
              commit: commit.commit,
              hostQueue: handle.hostQueue,
              hostId: handle.hostId,
              attempt: 1,
              receipts: {
                description: workItem.description,
                baseCommit: handle.baseCommit,
                verifiers: view.verifiers,
                changedPaths: commit.changedPaths,
              },
            },
            events,
          );
        }
      }
    }
  } catch (err) {
    if (isCancellation(err) && budgetExceeded) {
      view.error = {
        code: 'budget_exceeded',
        message: `the run's wall-clock budget of ${wallClockSeconds}s ran out during ${view.status}`,
      };
      events.emit('run.failed', { run_id: runId, error: view.error });
      outcome = { status: 'failed', stage: view.status };
    } else if (isCancellation(err)) {
      cancellation = err as Error;
      outcome = { status: 'cancelled', stage: view.status };
    } else {
      view.error = describeFailure(err);
      events.emit('run.failed', { run_id: runId, error: view.error });
      outcome = { status: 'failed', stage: view.status };
    }
  }

  // Destroy always, also on failure and cancellation; the terminal status is set only afterwards,
  // so a client that sees it knows nothing of the run is left on the host.
  const keepBranch = outcome.status === 'committed';
  await CancellationScope.nonCancellable(async () => {
    const handle = sandbox;
    if (handle) {
      try {
        const removed = await destroyOn(handle.hostQueue).destroySandbox({
          sandboxId: handle.sandboxId,
          tenant,
          repo: request.repo,
          keepBranch,
        });
        events.emit('sandbox.destroyed', {
          sandbox_id: handle.sandboxId,
          removed: removed.removed,
          kept_branch: keepBranch,
        });
      } catch (err) {
        // The host stayed unreachable for the whole cleanup budget: record it; the orphan sweeper finishes the job.
        const error = describeFailure(err);
        log.warn('sandbox cleanup failed', { runId, error });
        events.emit('sandbox.destroy.failed', { sandbox_id: handle.sandboxId, error });
      }
    }
    // The slot goes back (or the queue place is left) only once the sandbox is gone.
    if (holdsAdmission && admissionBySignal) await ticket.release();
    else if (holdsAdmission) await admission.releaseAdmission({ tenant, runId });
  });
  if (!keepBranch) delete view.branch;
  view.finishedAt = new Date().toISOString();
  setStatus(outcome.status, outcome.stage);
  events.emit('run.completed', { run_id: runId, status: view.status, error: view.error ?? null });
  await events.close();
  view.events = { emitted: events.emittedCount, published: events.publishedCount };
  const result = snapshot();
  // Rethrown so Temporal records the execution as Canceled, after cleanup and the final flush.
  if (cancellation !== undefined) throw cancellation;
  return result;
}

/** An update refusal the API maps to its error code (the failure's type). */
function refusal(code: string, message: string): ApplicationFailure {
  return ApplicationFailure.create({ type: code, message, nonRetryable: true });
}

/** An argv as one short line for summaries and questions. */
function summarize(argv: string[]): string {
  const line = argv.join(' ');
  return line.length > 100 ? `${line.slice(0, 97)}...` : line;
}

/** A command's outcome in event-payload form (the same fields for the work item and each verifier). */
function outputPayload(o: CommandOutcome) {
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

function describeFailure(err: unknown): { code: string; message: string } {
  let cause: unknown = err;
  if (cause instanceof ActivityFailure && cause.cause) cause = cause.cause;
  if (cause instanceof ApplicationFailure) {
    return { code: cause.type ?? 'activity_failed', message: cause.message };
  }
  if (cause instanceof Error) return { code: 'internal', message: cause.message };
  return { code: 'internal', message: String(cause) };
}
