/**
 * workGraphWorkflow: a graph's work items in dependency order, one child runWorkflow per attempt,
 * at most `parallelism` at once; committed items are merged into the graph's integration branch,
 * which every later item starts from; failed items are retried in a stricter mood, then block
 * their dependants. Long graphs continue as new with their state and event numbering.
 */
import {
  ApplicationFailure,
  ChildWorkflowCancellationType,
  CancellationScope,
  ParentClosePolicy,
  condition,
  executeChild,
  isCancellation,
  log,
  makeContinueAsNewFunc,
  patched,
  proxyActivities,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import {
  SEARCH_ATTRIBUTES,
  TASK_QUEUES,
  WORKFLOW_TYPES,
  canonicalJson,
  graphRunId,
  isRemoteRepoUrl,
  orderWorkGraph,
  runStartMetadata,
  sha256Hex,
  stricterMood,
  workGraphViewQuery,
  type GraphItemView,
  type GraphStatus,
  type RunView,
  type RunWorkflowInput,
  type WorkGraphView,
  type WorkGraphWorkflowInput,
  type WorkItemStatus,
} from '../contracts';
import type {
  GraphBranchActivities,
  GraphDelivery,
  GraphMergeItem,
  GraphMergeItemResult,
} from '../activities/workspace/graph-branch';
import type { runWorkflow } from './run';
import { EventLog } from './lib/event-log';
import { describeFailure } from './lib/failures';

const { prepareGraphBranch, mergeIntoGraphBranch } = proxyActivities<GraphBranchActivities>({
  taskQueue: TASK_QUEUES.sandbox,
  startToCloseTimeout: '1 minute',
  retry: {
    maximumAttempts: 10,
    nonRetryableErrorTypes: ['repo_not_found', 'ref_not_found', 'invalid_sandbox_request', 'merge_conflict'],
  },
});

/** Items started in one workflow run before it continues as new (a history stays well below its limits). */
export const DEFAULT_CONTINUE_AS_NEW_AFTER = 100;

export async function workGraphWorkflow(input: WorkGraphWorkflowInput): Promise<WorkGraphView> {
  const { graphId, tenant, userId } = input;
  const carried = input.carried;
  const events = new EventLog({ runId: graphId, tenant, userId, startSeq: carried?.eventSeq ?? 0 });
  const defs = new Map(input.items.map((i) => [i.id, i]));
  const states = new Map<string, GraphItemView>(
    (
      carried?.items ??
      input.items.map((i): GraphItemView => ({
        id: i.id,
        status: 'pending',
        dependsOn: [...i.dependsOn],
        runs: [],
      }))
    ).map((v) => [v.id, v]),
  );
  const view: WorkGraphView = {
    graphId,
    status: 'running',
    tenant,
    userId,
    repo: input.repo,
    baseRef: input.baseRef,
    mood: input.mood,
    parallelism: input.parallelism,
    counts: {},
    items: [],
    continuedAsNew: carried?.continuedAsNew ?? 0,
    integrationBranch: `choiros/graph/${graphId}`,
    createdAt: new Date(input.requestedAt).toISOString(),
  };
  const counts = (): Record<string, number> => {
    const c: Record<string, number> = {};
    for (const s of states.values()) c[s.status] = (c[s.status] ?? 0) + 1;
    return c;
  };
  const snapshot = (): WorkGraphView => ({ ...view, counts: counts(), items: [...states.values()] });
  setHandler(workGraphViewQuery, snapshot);

  // The API checked the graph; a workflow started some other way fails fast on the same rules.
  const ordered = orderWorkGraph(input.items);
  if (!ordered.ok)
    throw ApplicationFailure.create({ type: ordered.code, message: ordered.message, nonRetryable: true });
  if (states.size !== defs.size || [...states.keys()].some((id) => !defs.has(id)))
    throw ApplicationFailure.create({
      type: 'validation_failed',
      message: 'carried item states do not match the graph',
      nonRetryable: true,
    });
  const dependants = new Map<string, string[]>(input.items.map((i) => [i.id, []]));
  for (const i of input.items) for (const d of new Set(i.dependsOn)) dependants.get(d)?.push(i.id);

  events.start();
  if (!carried) {
    events.emit('graph.created', {
      graph_id: graphId,
      repo: input.repo,
      base_ref: input.baseRef,
      mood: input.mood,
      items: input.items.length,
      parallelism: input.parallelism,
    });
  }
  log.info('graph started', {
    graphId,
    items: input.items.length,
    continuedAsNew: view.continuedAsNew,
    eventSeq: events.emittedCount,
  });

  const finish = async (status: GraphStatus): Promise<WorkGraphView> => {
    for (const s of states.values())
      if (s.status === 'pending' || s.status === 'running') s.status = 'cancelled';
    view.status = status;
    view.finishedAt = new Date().toISOString();
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.runStatus, value: status }]);
    events.emit('graph.completed', { graph_id: graphId, status, counts: counts() });
    log.info('graph finished', { graphId, status, counts: counts() });
    await events.close();
    return snapshot();
  };

  // Remote repositories: the integration branch is pushed to the origin at every move (decision 0019).
  const remote = isRemoteRepoUrl(input.repo) && patched('remote-delivery');
  let deliveries = view.delivery?.attempt ?? 0;
  const delivered = (d: GraphDelivery | undefined, commit: string): void => {
    if (!remote || !d) return;
    deliveries += 1;
    view.delivery = {
      status: d.status,
      remoteRef: d.remoteRef,
      commit,
      attempt: deliveries,
      at: new Date().toISOString(),
    };
    events.emit('receipt.delivery', {
      run_id: graphId,
      remote_ref: d.remoteRef,
      commit,
      result: d.status,
      attempt: deliveries,
      error: null,
    });
  };

  let integrationCommit: string;
  try {
    const branch = await prepareGraphBranch({
      graphId,
      repo: input.repo,
      baseRef: input.baseRef,
      ...(remote ? { tenant } : {}),
    });
    integrationCommit = branch.commit;
    view.integrationBranch = branch.branch;
    view.integrationCommit = branch.commit;
    if (!carried) delivered(branch.delivered, branch.commit);
  } catch (err) {
    if (isCancellation(err)) {
      await finish('cancelled');
      throw err;
    }
    view.error = describeFailure(err);
    return finish('failed');
  }

  // One merge activity at a time moves the branch; items that commit meanwhile wait and go in
  // together as the next batch (each a merge from the head the previous one left).
  const mergeQueue: { item: GraphMergeItem; resolve: (r: GraphMergeItemResult) => void }[] = [];
  let merging = false;
  const drainMerges = async (): Promise<void> => {
    if (merging) return;
    merging = true;
    try {
      while (mergeQueue.length > 0) {
        const batch = mergeQueue.splice(0, 50);
        try {
          const merged = await CancellationScope.nonCancellable(() =>
            mergeIntoGraphBranch({
              graphId,
              repo: input.repo,
              items: batch.map((b) => b.item),
              ...(remote ? { tenant } : {}),
            }),
          );
          integrationCommit = merged.commit;
          view.integrationCommit = merged.commit;
          if (merged.delivered?.status === 'pushed') delivered(merged.delivered, merged.commit);
          batch.forEach((b, i) => b.resolve(merged.items[i] ?? missingResult(b.item)));
        } catch (err) {
          const error = describeFailure(err);
          for (const b of batch)
            b.resolve({
              itemId: b.item.itemId,
              ok: false,
              error,
            });
        }
      }
    } finally {
      merging = false;
    }
  };
  const merge = (item: GraphMergeItem): Promise<GraphMergeItemResult> =>
    new Promise((resolve) => {
      mergeQueue.push({ item, resolve });
      void drainMerges();
    });

  let dirty = true;
  // Items started in this workflow run: what its history grows with, so what continue-as-new bounds.
  let startedHere = 0;
  const finishItem = (state: GraphItemView, status: WorkItemStatus): void => {
    state.status = status;
    const last = state.runs[state.runs.length - 1];
    events.emit('workitem.completed', {
      graph_id: graphId,
      item_id: state.id,
      run_id: last?.runId ?? '',
      status,
      commit: status === 'committed' ? (last?.commit ?? null) : null,
    });
    log.info('work item finished', {
      graphId,
      itemId: state.id,
      runId: last?.runId,
      status,
      error: state.error,
    });
    // Dependants of an item that failed (or whose run someone cancelled) can never start; when the
    // whole graph is being cancelled they end `cancelled` with it instead.
    if (status === 'failed' || (status === 'cancelled' && !CancellationScope.current().consideredCancelled))
      block(state.id);
  };

  /** Marks every transitive dependant of a finally failed item blocked, naming the failed item. */
  const block = (failedId: string): void => {
    const stack = [...(dependants.get(failedId) ?? [])];
    const seen = new Set<string>();
    while (stack.length > 0) {
      const id = stack.pop() as string;
      if (seen.has(id)) continue;
      seen.add(id);
      const s = states.get(id);
      if (!s) continue;
      if (s.status === 'pending') {
        s.status = 'blocked';
        s.blockedBy = [failedId];
        events.emit('workitem.blocked', { graph_id: graphId, item_id: id, blocked_by: [failedId] });
      } else if (s.status === 'blocked' && !(s.blockedBy ?? []).includes(failedId)) {
        s.blockedBy = [...(s.blockedBy ?? []), failedId];
      } else continue;
      stack.push(...(dependants.get(id) ?? []));
    }
  };

  // Slots count runs in flight: an item holds one from its first run's start until its last run
  // ends (retries keep it), and gives it back before its merge, so the next run starts at once.
  let runsInFlight = 0;
  const runItem = async (id: string): Promise<void> => {
    const def = defs.get(id);
    const state = states.get(id);
    if (!def || !state) return;
    state.status = 'running';
    startedHere += 1;
    runsInFlight += 1;
    let holdsSlot = true;
    const release = (): void => {
      if (!holdsSlot) return;
      holdsSlot = false;
      runsInFlight -= 1;
      dirty = true;
    };
    for (;;) {
      if (!holdsSlot) {
        // A retry after its merge failed waits for a slot like any other run.
        await condition(() => runsInFlight < input.parallelism);
        runsInFlight += 1;
        holdsSlot = true;
      }
      const attempt = state.runs.length + 1;
      const previous = state.runs[state.runs.length - 1];
      const mood = previous ? stricterMood(previous.mood) : input.mood;
      if (previous) {
        events.emit('workitem.retry', {
          graph_id: graphId,
          item_id: id,
          attempt,
          previous_run_id: previous.runId,
          from_mood: previous.mood,
          to_mood: mood,
        });
        events.emit('run.mood.transition', {
          from: previous.mood,
          to: mood,
          reason: `work item ${id} attempt ${attempt - 1} ended ${previous.status}${state.error ? ` (${state.error.code})` : ''}; retried in a stricter mood`,
          item_id: id,
          run_id: previous.runId,
        });
      }
      const runId = graphRunId(graphId, id, attempt);
      const run: GraphItemView['runs'][number] = { runId, mood, status: 'created' };
      state.runs.push(run);
      delete state.error;
      events.emit('workitem.started', { graph_id: graphId, item_id: id, run_id: runId, attempt, mood });
      log.info('work item started', {
        graphId,
        itemId: id,
        runId,
        attempt,
        mood,
        baseCommit: integrationCommit,
      });
      const request: RunWorkflowInput['request'] = {
        repo: input.repo,
        baseRef: integrationCommit,
        mood,
        ...(input.budgets ? { budgets: input.budgets } : {}),
        workItem: def,
      };
      const runInput: RunWorkflowInput = {
        runId,
        tenant,
        userId,
        request,
        requestHash: sha256Hex(canonicalJson(request)),
        requestedAt: Date.now(),
        ...(input.startedBy ? { startedBy: input.startedBy } : {}),
        ...(input.approvalFloor ? { approvalFloor: input.approvalFloor } : {}),
        graph: { graphId, itemId: id, attempt },
      };
      const { memo, typedSearchAttributes } = runStartMetadata(runInput);
      try {
        const result: RunView = await executeChild<typeof runWorkflow>(WORKFLOW_TYPES.run, {
          workflowId: runId,
          taskQueue: TASK_QUEUES.orchestration,
          args: [runInput],
          // Cancelling the graph cancels its runs, and waits until they have cleaned their sandboxes.
          parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
          cancellationType: ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
          // The same memo and search attributes the API gives a run, so GET /v1/runs/:id and the UI know it.
          memo,
          typedSearchAttributes,
          staticSummary: `graph ${graphId} item ${id} attempt ${attempt} (${mood})`,
        });
        run.status = result.status;
        if (result.commit) run.commit = result.commit;
        if (result.error) state.error = result.error;
      } catch (err) {
        if (isCancellation(err)) {
          run.status = 'cancelled';
          release();
          return finishItem(state, 'cancelled');
        }
        run.status = 'failed';
        state.error = describeFailure(err);
      }
      if (run.status === 'committed' && run.commit) {
        release();
        const merged = await merge({ commit: run.commit, itemId: id, runId });
        if (merged.ok) return finishItem(state, 'committed');
        state.error = merged.error;
      }
      if (run.status === 'cancelled' || attempt >= input.maxAttempts) {
        release();
        return finishItem(state, run.status === 'cancelled' ? 'cancelled' : 'failed');
      }
    }
  };

  const continueAfter = input.continueAsNewAfter ?? DEFAULT_CONTINUE_AS_NEW_AFTER;
  const draining = (): boolean => startedHere >= continueAfter || workflowInfo().continueAsNewSuggested;
  const ready = (s: GraphItemView): boolean =>
    s.status === 'pending' && s.dependsOn.every((d) => states.get(d)?.status === 'committed');
  const inFlight = new Map<string, Promise<void>>();
  try {
    for (;;) {
      dirty = false;
      if (!draining()) {
        for (const id of ordered.order) {
          if (runsInFlight >= input.parallelism) break;
          const s = states.get(id);
          if (s && ready(s)) {
            inFlight.set(
              id,
              runItem(id).finally(() => {
                inFlight.delete(id);
                dirty = true;
              }),
            );
          }
        }
      }
      if (inFlight.size === 0) break;
      await condition(() => dirty);
    }
  } catch (err) {
    if (!isCancellation(err)) throw err;
    // Children were asked to cancel with the graph; each item settles once its run has cleaned up.
    await Promise.allSettled(inFlight.values());
    await finish('cancelled');
    throw err;
  }

  if (draining() && [...states.values()].some((s) => s.status === 'pending')) {
    // Every run of this workflow run has finished and its events are flushed: continue with the state.
    await events.close();
    log.info('graph continues as new', { graphId, startedHere, eventSeq: events.emittedCount });
    const info = workflowInfo();
    // Memo and search attributes explicitly, so the next run is found and described like this one.
    return makeContinueAsNewFunc<typeof workGraphWorkflow>({
      ...(info.memo ? { memo: info.memo } : {}),
      typedSearchAttributes: info.typedSearchAttributes,
    })({
      ...input,
      carried: {
        items: [...states.values()],
        continuedAsNew: view.continuedAsNew + 1,
        eventSeq: events.emittedCount,
      },
    });
  }
  const all = [...states.values()];
  return finish(all.every((s) => s.status === 'committed') ? 'completed' : 'failed');
}

function missingResult(item: GraphMergeItem): GraphMergeItemResult {
  return {
    itemId: item.itemId,
    ok: false,
    error: { code: 'merge_conflict', message: 'the merge reported no result' },
  };
}
