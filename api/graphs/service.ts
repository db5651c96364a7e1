/** Starts, reads and cancels work graphs through the Temporal client; idempotency and ownership as for runs. */
import { createHash, randomUUID } from 'node:crypto';
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  type Client,
  type WorkflowExecutionDescription,
} from '@temporalio/client';
import type { Logger } from 'pino';
import { authorize, forbidden, type Action } from '../auth/policy';
import { QUERY_TIMEOUT_MS, guardedWithin, withTimeout } from '../temporal';
import { requireRepoGrant, type RepoGate } from '../repo-grants';
import {
  AppError,
  GRAPH_STATUSES,
  SEARCH_ATTRIBUTES,
  ownerSearchAttributes,
  TASK_QUEUES,
  WORKFLOW_TYPES,
  canonicalJson,
  isValidId,
  workGraphViewQuery,
  type GraphStatus,
  type Mood,
  type Principal,
  type WorkGraphRequest,
  type WorkGraphView,
  type WorkGraphWorkflowInput,
  type TenantPolicy,
} from '../../contracts';

export interface WorkGraphService {
  start(
    principal: Principal,
    request: WorkGraphRequest,
    idempotencyKey: string | undefined,
  ): Promise<WorkGraphView>;
  get(principal: Principal, graphId: string): Promise<WorkGraphView>;
  /** Requests cancellation; the graph cancels its runs (which clean their sandboxes) and ends `cancelled`. Idempotent. */
  cancel(principal: Principal, graphId: string): Promise<WorkGraphView>;
}

/** Workflow id = graph id, derived from tenant, user and idempotency key (a retried request is the same graph). */
export function deriveGraphId(tenant: string, userId: string, idempotencyKey: string): string {
  const digest = createHash('sha256').update(`graph\0${tenant}\0${userId}\0${idempotencyKey}`).digest('hex');
  return `graph-${digest.slice(0, 32)}`;
}

/** What the memo holds: enough to describe a graph when no worker answers queries. */
interface GraphMemo {
  requestHash: string;
  requestedAt: number;
  summary: { repo: string; baseRef: string; mood: Mood; parallelism: number; items: number };
}

export function createTemporalWorkGraphService(deps: {
  client: Client;
  logger: Logger;
  /** Repository grants of tenants: checked before a graph starts. */
  repoAccess: RepoGate;
  /** A tenant's policy: its protected paths become every run's approval floor. */
  tenantPolicy?: (tenant: string) => TenantPolicy | undefined;
  /** Deadline of one request's Temporal calls, together; none: per call only. */
  requestDeadlineMs?: number;
}): WorkGraphService {
  const guarded = guardedWithin(deps.client, deps.requestDeadlineMs);
  const { client, logger } = deps;

  const describeOwned = async (
    principal: Principal,
    graphId: string,
    action: Action,
  ): Promise<WorkflowExecutionDescription> => {
    const notFound = new AppError('not_found', `work graph ${graphId} does not exist`);
    if (!isValidId(graphId)) throw notFound;
    let desc: WorkflowExecutionDescription;
    try {
      desc = await client.workflow.getHandle(graphId).describe();
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) throw notFound;
      throw err;
    }
    if (desc.type !== WORKFLOW_TYPES.workGraph) throw notFound;
    const decision = authorize(principal, action, {
      tenant: desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.tenant) ?? '',
      ownerId: desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.userId) ?? '',
    });
    if (decision === 'forbidden') throw forbidden(action);
    if (decision === 'not_found') throw notFound;
    return desc;
  };

  const fallbackView = (desc: WorkflowExecutionDescription): WorkGraphView => {
    // A graph started by other means than this service may carry less of a memo.
    const memo = (desc.memo ?? {}) as unknown as Partial<GraphMemo>;
    const sa = desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.runStatus);
    let status: GraphStatus = (GRAPH_STATUSES as readonly string[]).includes(sa ?? '')
      ? (sa as GraphStatus)
      : 'running';
    if (desc.status.name === 'CANCELLED') status = 'cancelled';
    if (['FAILED', 'TERMINATED', 'TIMED_OUT'].includes(desc.status.name)) status = 'failed';
    return {
      graphId: desc.workflowId,
      status,
      tenant: desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.tenant) ?? '',
      userId: desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.userId) ?? '',
      repo: memo.summary?.repo ?? desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.repo) ?? '',
      baseRef: memo.summary?.baseRef ?? '',
      mood: memo.summary?.mood ?? 'CALM',
      parallelism: memo.summary?.parallelism ?? 0,
      counts: {},
      items: [],
      continuedAsNew: 0,
      createdAt: new Date(memo.requestedAt ?? desc.startTime.getTime()).toISOString(),
      ...(desc.closeTime ? { finishedAt: desc.closeTime.toISOString() } : {}),
      ...(status === 'failed' && desc.status.name !== 'COMPLETED'
        ? {
            error: {
              code: `workflow_${desc.status.name.toLowerCase()}`,
              message: `the graph's workflow ended ${desc.status.name}`,
            },
          }
        : {}),
    };
  };

  const viewOf = async (desc: WorkflowExecutionDescription): Promise<WorkGraphView> => {
    // By workflow id only: after continue-as-new the latest run answers.
    const handle = client.workflow.getHandle(desc.workflowId);
    if (desc.status.name === 'COMPLETED') return (await handle.result()) as WorkGraphView;
    try {
      return await withTimeout(handle.query(workGraphViewQuery), QUERY_TIMEOUT_MS);
    } catch (err) {
      logger.debug({ graphId: desc.workflowId, err }, 'graph view query failed; using memo');
      return fallbackView(desc);
    }
  };

  return {
    start: (principal, request, key) => guarded(() => start(principal, request, key)),
    get: (principal, graphId) =>
      guarded(async () => viewOf(await describeOwned(principal, graphId, 'graphs.read'))),
    cancel: (principal, graphId) =>
      guarded(async () => {
        const desc = await describeOwned(principal, graphId, 'graphs.cancel');
        if (desc.status.name === 'RUNNING') {
          await client.workflow.getHandle(graphId).cancel();
          logger.info(
            { event: 'graph.cancel', graphId, userId: principal.userId },
            'graph cancellation requested',
          );
        }
        return viewOf(desc);
      }),
  };

  async function start(
    principal: Principal,
    request: WorkGraphRequest,
    idempotencyKey: string | undefined,
  ): Promise<WorkGraphView> {
    await requireRepoGrant(deps.repoAccess, principal.tenant, request.repo);
    const graphId = deriveGraphId(principal.tenant, principal.userId, idempotencyKey ?? randomUUID());
    const requestHash = createHash('sha256').update(canonicalJson(request)).digest('hex');
    const requestedAt = Date.now();
    const protectedPaths = deps.tenantPolicy?.(principal.tenant)?.protected ?? [];
    const input: WorkGraphWorkflowInput = {
      graphId,
      tenant: principal.tenant,
      userId: principal.userId,
      repo: request.repo,
      baseRef: request.baseRef,
      mood: request.mood,
      parallelism: request.parallelism,
      maxAttempts: request.maxAttempts,
      ...(request.budgets ? { budgets: request.budgets } : {}),
      items: request.items,
      ...(protectedPaths.length > 0 ? { approvalFloor: { protected: protectedPaths } } : {}),
      requestHash,
      requestedAt,
      startedBy: { scopes: principal.scopes, ...(principal.tokenId ? { tokenId: principal.tokenId } : {}) },
    };
    const memo: GraphMemo = {
      requestHash,
      requestedAt,
      summary: {
        repo: request.repo,
        baseRef: request.baseRef,
        mood: request.mood,
        parallelism: request.parallelism,
        items: request.items.length,
      },
    };
    try {
      await client.workflow.start(WORKFLOW_TYPES.workGraph, {
        workflowId: graphId,
        taskQueue: TASK_QUEUES.orchestration,
        args: [input],
        workflowIdConflictPolicy: 'USE_EXISTING',
        workflowIdReusePolicy: 'REJECT_DUPLICATE',
        memo: memo as unknown as Record<string, unknown>,
        typedSearchAttributes: ownerSearchAttributes({
          tenant: principal.tenant,
          userId: principal.userId,
          status: 'running',
          mood: request.mood,
          repo: request.repo,
        }),
        staticSummary: `${principal.userId}: work graph of ${request.items.length} item(s)`,
        staticDetails: `repo ${request.repo} @ ${request.baseRef}, mood ${request.mood}, parallelism ${request.parallelism}, items ${request.items
          .map((i) => i.id)
          .join(', ')
          .slice(0, 500)}`,
      });
    } catch (err) {
      if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    }
    const desc = await describeOwned(principal, graphId, 'graphs.start');
    if ((desc.memo as unknown as GraphMemo | undefined)?.requestHash !== requestHash) {
      throw new AppError(
        'idempotency_key_reused',
        `Idempotency-Key was already used for work graph ${graphId} with a different request body`,
      );
    }
    logger.info(
      {
        event: 'graph.start',
        graphId,
        tenant: principal.tenant,
        userId: principal.userId,
        items: request.items.length,
      },
      'work graph started',
    );
    return viewOf(desc);
  }
}
