/** The memo and search attributes a run starts with, whoever starts it (API, work graph, benchmark). */
import type { SearchAttributePair } from '@temporalio/common';
import { SEARCH_ATTRIBUTES } from './constants';
import type { Mood, RunView, RunWorkflowInput } from './run';

/** What a run's memo holds: enough to describe it when no worker answers queries. */
export type RunMemo = {
  requestHash: string;
  requestedAt: number;
  /** Token id (jti) of the request that started the run. */
  startedByTokenId?: string;
  /** The work graph that started the run as a child. */
  graphId?: string;
  summary: {
    repo: string;
    baseRef: string;
    mood: Mood;
    workItemId: string;
    description: string;
    riskTier: string;
    execute: string;
  };
};

/** Memo and search attributes of a run, from its workflow input; pure, so workflows may call it. */
export function runStartMetadata(input: RunWorkflowInput): {
  memo: RunMemo;
  typedSearchAttributes: SearchAttributePair[];
} {
  const { request } = input;
  const workItem = request.workItem;
  const tokenId = input.startedBy?.tokenId;
  return {
    memo: {
      requestHash: input.requestHash,
      requestedAt: input.requestedAt,
      ...(tokenId ? { startedByTokenId: tokenId } : {}),
      ...(input.graph ? { graphId: input.graph.graphId } : {}),
      summary: {
        repo: request.repo,
        baseRef: request.baseRef,
        mood: request.mood,
        workItemId: workItem.id,
        description: workItem.description.slice(0, 500),
        riskTier: workItem.riskTier,
        execute: workItem.execute.join(' ').slice(0, 500),
      },
    },
    typedSearchAttributes: ownerSearchAttributes({
      tenant: input.tenant,
      userId: input.userId,
      status: 'created',
      mood: request.mood,
      repo: request.repo,
    }),
  };
}

/** The search attributes a run or work graph starts with (owner, status, mood, repo). */
export function ownerSearchAttributes(s: {
  tenant: string;
  userId: string;
  status: string;
  mood: Mood;
  repo: string;
}): SearchAttributePair[] {
  return [
    { key: SEARCH_ATTRIBUTES.tenant, value: s.tenant },
    { key: SEARCH_ATTRIBUTES.userId, value: s.userId },
    { key: SEARCH_ATTRIBUTES.runStatus, value: s.status },
    { key: SEARCH_ATTRIBUTES.mood, value: s.mood },
    { key: SEARCH_ATTRIBUTES.repo, value: s.repo },
  ];
}

/**
 * A run's view before its first workflow task: everything in it follows from the input, so the API
 * answers a new start with it instead of asking a worker (issue 17, decision 0021). Pure.
 */
export function initialRunView(input: RunWorkflowInput): RunView {
  const { request } = input;
  const workItem = request.workItem;
  return {
    runId: input.runId,
    status: 'created',
    tenant: input.tenant,
    userId: input.userId,
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
}
