/** Starts and reads runs through the Temporal client; enforces idempotency and ownership. */
import { createHash, randomUUID } from 'node:crypto';
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  WorkflowUpdateRPCTimeoutOrCancelledError,
  type Client,
  type WorkflowExecutionDescription,
} from '@temporalio/client';
import type { Logger } from 'pino';
import { decodeTypedSearchAttributes } from '@temporalio/common/lib/converter/payload-search-attributes';
import { ApplicationFailure, defaultPayloadConverter } from '@temporalio/common';
import { authorize, forbidden, isTenantAdmin, type Action } from '../auth/policy';
import { QUERY_TIMEOUT_MS, guardedWithin, withTimeout } from '../temporal';
import { requireRepoGrant, type RepoGate } from '../repo-grants';
import { retryDelivery, withLatestDelivery } from './delivery';
import {
  AppError,
  SEARCH_ATTRIBUTES,
  TASK_QUEUES,
  WORKFLOW_TYPES,
  canonicalJson,
  isValidId,
  runStatusSchema,
  runViewQuery,
  ERROR_CODES,
  answerInterruptUpdate,
  approvalUpdate,
  type ApprovalResult,
  type DeliveryView,
  type ErrorCode,
  type InterruptView,
  type Mood,
  runStartMetadata,
  initialRunView,
  type Principal,
  type RunMemo,
  type RunRequest,
  type RunStatus,
  type RunSummary,
  type RunView,
  type RunWorkflowInput,
  type SubjectOwner,
  type ApprovalFloor,
  type TenantPolicy,
} from '../../contracts';

export interface RunListQuery {
  status?: RunStatus;
  pageSize: number;
  pageToken?: string;
  /** Tenant admins may list one user's runs; ignored for everyone else. */
  userId?: string;
}

export interface RunListPage {
  runs: RunSummary[];
  nextPageToken?: string;
}

export interface RunService {
  start(principal: Principal, request: RunRequest, idempotencyKey: string | undefined): Promise<RunView>;
  /** `action` is `runs.read` (default) or `runs.watch`: the same visibility rules. */
  get(principal: Principal, runId: string, action?: 'runs.read' | 'runs.watch'): Promise<RunView>;
  list(principal: Principal, query: RunListQuery): Promise<RunListPage>;
  /** Requests cancellation; the run cleans up its sandbox and ends `cancelled`. Idempotent. */
  cancel(principal: Principal, runId: string): Promise<RunView>;
  /**
   * Throws not_found (or forbidden) unless the caller may perform `action` on the run; answers the
   * run's owner (tenant, user), under whose subject prefix its events live. Reads nothing else.
   */
  checkVisible(
    principal: Principal,
    runId: string,
    action: 'runs.read' | 'runs.watch',
  ): Promise<SubjectOwner>;
  /** Approves or rejects a run waiting in `awaiting_approval`, as the verified caller. */
  decide(
    principal: Principal,
    runId: string,
    decision: 'approve' | 'reject',
    comment: string | undefined,
  ): Promise<{ result: ApprovalResult; run: RunView }>;
  /** Answers one of the run's open human interrupts. */
  answerInterrupt(
    principal: Principal,
    runId: string,
    interruptId: string,
    answer: { answer: string; comment?: string },
  ): Promise<InterruptView>;
  /** Starts a new run of the same work item from the exact base commit and image the run recorded. */
  rerun(
    principal: Principal,
    runId: string,
    options: { mood?: Mood },
    idempotencyKey: string | undefined,
  ): Promise<RunView>;
  /** Retries the failed delivery of a committed run's branch to its remote origin (decision 0019). */
  retryDelivery(principal: Principal, runId: string): Promise<DeliveryView>;
}

/** The bound on a tenant's runs not yet running (CHOIROS_MAX_QUEUED_PER_TENANT). */
export interface QueueBound {
  maxQueuedPerTenant: number;
  retryAfterSeconds: number;
}

/**
 * Visibility query of a tenant's runs waiting for a slot: created (not yet admitted) or queued. A
 * count in the visibility store costs the hot admission workflow nothing (decision 0013).
 */
export function waitingRunsQuery(tenant: string): string {
  return `WorkflowType = '${WORKFLOW_TYPES.run}' AND ExecutionStatus = 'Running' AND ChoirTenant = '${tenant}' AND ChoirRunStatus IN ('created', 'queued')`;
}

/** Workflow id = run id, derived from tenant, user and idempotency key: a retried request is the same run. */
export function deriveRunId(tenant: string, userId: string, idempotencyKey: string): string {
  const digest = createHash('sha256').update(`${tenant}\0${userId}\0${idempotencyKey}`).digest('hex');
  return `run-${digest.slice(0, 32)}`;
}

/** The verified identity a decision is recorded under (never ids from a request body). */
function actorOf(p: Principal): { userId: string; tenant: string; tokenId?: string } {
  return { userId: p.userId, tenant: p.tenant, ...(p.tokenId ? { tokenId: p.tokenId } : {}) };
}

/** How long a tenant's waiting-run count is reused while far below the bound. */
const WAITING_COUNT_TTL_MS = 1000;

export function createTemporalRunService(deps: {
  client: Client;
  logger: Logger;
  /** Repository grants of tenants (tenancy/repo-access.ts): checked before a run starts. */
  repoAccess: RepoGate;
  /** A tenant's policy (tenants file): its protected paths become the run's approval floor. */
  tenantPolicy?: (tenant: string) => TenantPolicy | undefined;
  /** Deadline of one request's Temporal calls, together (API_TEMPORAL_CALL_TIMEOUT_SECONDS); none: per call only. */
  requestDeadlineMs?: number;
  /** Backpressure (decision 0013): absent or 0, runs are started whatever the tenant's backlog. */
  queueBound?: QueueBound;
}): RunService {
  const { client, logger } = deps;
  const guarded = guardedWithin(client, deps.requestDeadlineMs);
  /** In-flight counts per tenant: the requests of a burst share one count instead of one each. */
  const counting = new Map<string, Promise<number>>();
  /** The last count per tenant and the runs started since (see waitingCount). */
  const waitingCache = new Map<string, { count: number; at: number; startedSince: number }>();

  const describeOwned = async (
    principal: Principal,
    runId: string,
    action: Action,
  ): Promise<WorkflowExecutionDescription> => {
    const notFound = new AppError('not_found', `run ${runId} does not exist`);
    if (!isValidId(runId)) throw notFound;
    let desc: WorkflowExecutionDescription;
    try {
      desc = await client.workflow.getHandle(runId).describe();
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) throw notFound;
      throw err;
    }
    const ownerId = desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.userId) ?? '';
    const tenant = desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.tenant) ?? '';
    if (desc.type !== WORKFLOW_TYPES.run) throw notFound;
    // Someone else's run answers exactly like a run that does not exist.
    const status = desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.runStatus);
    const decision = authorize(principal, action, { tenant, ownerId, ...(status ? { status } : {}) });
    if (decision === 'forbidden') throw forbidden(action);
    if (decision === 'not_found') throw notFound;
    return desc;
  };

  /** Runs an update; a refusal by the workflow's validator becomes the AppError its failure type names. */
  const updateRun = async <T>(runId: string, ended: AppError, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof WorkflowUpdateFailedError && err.cause instanceof ApplicationFailure) {
        const type = err.cause.type ?? '';
        if ((ERROR_CODES as readonly string[]).includes(type))
          throw new AppError(type as ErrorCode, err.cause.message, { cause: err });
      }
      // No worker took the update in time (all workers down or busy): retryable, nothing recorded.
      if (err instanceof WorkflowUpdateRPCTimeoutOrCancelledError) {
        throw new AppError('service_unavailable', 'no worker answered the request in time; retry later', {
          cause: err,
          headers: { 'Retry-After': '5' },
        });
      }
      // The run closed between the describe and the update (it was finishing): nothing to decide.
      const now = await client.workflow
        .getHandle(runId)
        .describe()
        .catch(() => undefined);
      if (now && now.status.name !== 'RUNNING') throw ended;
      throw err;
    }
  };

  const fallbackView = (desc: WorkflowExecutionDescription): RunView => {
    const memo = desc.memo as unknown as RunMemo;
    const sa = runStatusSchema.safeParse(desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.runStatus));
    let status = sa.success ? sa.data : 'created';
    let error: RunView['error'];
    if (desc.status.name === 'CANCELLED') status = 'cancelled';
    if (['FAILED', 'TERMINATED', 'TIMED_OUT'].includes(desc.status.name)) {
      status = 'failed';
      error = {
        code: `workflow_${desc.status.name.toLowerCase()}`,
        message: `the run's workflow ended ${desc.status.name}`,
      };
    }
    return {
      runId: desc.workflowId,
      status,
      tenant: desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.tenant) ?? '',
      userId: desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.userId) ?? '',
      mood: memo.summary.mood,
      repo: memo.summary.repo,
      baseRef: memo.summary.baseRef,
      workItem: {
        id: memo.summary.workItemId,
        description: memo.summary.description,
        riskTier: memo.summary.riskTier,
      },
      verifiers: [],
      createdAt: new Date(memo.requestedAt).toISOString(),
      ...(desc.closeTime ? { finishedAt: desc.closeTime.toISOString() } : {}),
      ...(error ? { error } : {}),
      events: { emitted: 0, published: 0 },
    };
  };

  const viewOf = async (desc: WorkflowExecutionDescription): Promise<RunView> => {
    const handle = client.workflow.getHandle(desc.workflowId, desc.runId);
    if (desc.status.name === 'COMPLETED') return (await handle.result()) as RunView;
    try {
      return await withTimeout(handle.query(runViewQuery), QUERY_TIMEOUT_MS);
    } catch (err) {
      // No worker answered (yet): describe the run from its memo and search attributes.
      logger.debug({ runId: desc.workflowId, err }, 'run view query failed; using memo');
      return fallbackView(desc);
    }
  };

  return {
    start: (principal, request, idempotencyKey) => guarded(() => start(principal, request, idempotencyKey)),
    get: (principal, runId, action = 'runs.read') =>
      guarded(async () =>
        withLatestDelivery(client, await viewOf(await describeOwned(principal, runId, action))),
      ),
    list: (principal, query) => guarded(() => list(principal, query)),
    cancel: (principal, runId) =>
      guarded(async () => {
        const desc = await describeOwned(principal, runId, 'runs.cancel');
        if (desc.status.name === 'RUNNING') {
          await client.workflow.getHandle(runId).cancel();
          logger.info({ event: 'run.cancel', runId, userId: principal.userId }, 'run cancellation requested');
        }
        // Cancellation is asynchronous: the view shows where the run is; it ends `cancelled`.
        return viewOf(desc);
      }),
    checkVisible: (principal, runId, action) =>
      guarded(async () => {
        const desc = await describeOwned(principal, runId, action);
        return {
          tenant: desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.tenant) ?? '',
          userId: desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.userId) ?? '',
        };
      }),
    decide: (principal, runId, decision, comment) =>
      guarded(async () => {
        const desc = await describeOwned(principal, runId, 'runs.approve');
        const ended = new AppError(
          'not_awaiting_approval',
          `run ${runId} has ended; there is nothing to approve`,
        );
        if (desc.status.name !== 'RUNNING') throw ended;
        const result = await updateRun(runId, ended, () =>
          client.workflow.getHandle(runId).executeUpdate(approvalUpdate, {
            args: [{ decision, actor: actorOf(principal), ...(comment ? { comment } : {}) }],
          }),
        );
        logger.info(
          { event: 'run.approval', runId, userId: principal.userId, decision, outcome: result.outcome },
          'approval decision recorded',
        );
        return { result, run: await viewOf(desc) };
      }),
    answerInterrupt: (principal, runId, interruptId, answer) =>
      guarded(async () => {
        const desc = await describeOwned(principal, runId, 'runs.answer');
        const ended = new AppError('interrupt_closed', `run ${runId} has ended; its interrupts are closed`);
        if (desc.status.name !== 'RUNNING') throw ended;
        const view = await updateRun(runId, ended, () =>
          client.workflow.getHandle(runId).executeUpdate(answerInterruptUpdate, {
            args: [{ interruptId, actor: actorOf(principal), ...answer }],
          }),
        );
        logger.info(
          { event: 'run.interrupt.answer', runId, interruptId, userId: principal.userId },
          'interrupt answered',
        );
        return view;
      }),
    rerun: (principal, runId, options, idempotencyKey) =>
      guarded(() => rerun(principal, runId, options, idempotencyKey)),
    retryDelivery: (principal, runId) =>
      guarded(async () => {
        const view = await viewOf(await describeOwned(principal, runId, 'runs.start'));
        return retryDelivery({ client, logger, repoAccess: deps.repoAccess, principal, view });
      }),
  };

  /** The original input of a run: the first event of its history. */
  async function originalInput(runId: string): Promise<RunWorkflowInput> {
    const res = await client.workflowService.getWorkflowExecutionHistory({
      namespace: client.options.namespace,
      execution: { workflowId: runId },
      maximumPageSize: 1,
    });
    const payload = res.history?.events?.[0]?.workflowExecutionStartedEventAttributes?.input?.payloads?.[0];
    if (!payload) throw new AppError('internal', `run ${runId} has no recorded input`);
    return defaultPayloadConverter.fromPayload<RunWorkflowInput>(payload);
  }

  async function rerun(
    principal: Principal,
    runId: string,
    options: { mood?: Mood },
    idempotencyKey: string | undefined,
  ): Promise<RunView> {
    const desc = await describeOwned(principal, runId, 'runs.start');
    const first = await viewOf(desc);
    if (!first.baseCommit || !first.imageId) {
      throw new AppError(
        'rerun_unavailable',
        `run ${runId} has not recorded its base commit and sandbox image yet (status ${first.status}); retry once it has a sandbox`,
      );
    }
    const original = await originalInput(runId);
    // Grants can be withdrawn: a rerun is a new run and passes the gate again.
    await requireRepoGrant(deps.repoAccess, principal.tenant, original.request.repo);
    const key = idempotencyKey ?? randomUUID();
    const request: RunRequest & { workItem: RunWorkflowInput['request']['workItem'] } = {
      ...original.request,
      mood: options.mood ?? original.request.mood,
    };
    // A rerun never needs less approval than its first run did, whatever mood it asks for.
    const firstApproval = first.approval;
    const floor = floorFor(
      principal.tenant,
      firstApproval
        ? {
            requirement: firstApproval.requirement,
            quorum: firstApproval.quorum,
            reason: `rerun of ${runId}, which needed it`,
          }
        : undefined,
    );
    return startRun(principal, {
      ...(floor ? { approvalFloor: floor } : {}),
      runId: deriveRunId(principal.tenant, principal.userId, `rerun:${runId}:${key}`),
      request,
      requestHash: createHash('sha256')
        .update(canonicalJson({ rerunOf: runId, mood: request.mood }))
        .digest('hex'),
      rerun: { of: runId, baseCommit: first.baseCommit, imageId: first.imageId },
    });
  }

  async function list(principal: Principal, query: RunListQuery): Promise<RunListPage> {
    if (authorize(principal, 'runs.list') !== 'allow') throw forbidden('runs.list');
    // Only the caller's runs, or (tenant admins) their tenant's; values are strict ids, safe to quote.
    const clauses = [`WorkflowType = '${WORKFLOW_TYPES.run}'`, `ChoirTenant = '${principal.tenant}'`];
    const userId = isTenantAdmin(principal) ? query.userId : principal.userId;
    if (userId) clauses.push(`ChoirUserId = '${userId}'`);
    if (query.status) clauses.push(`ChoirRunStatus = '${query.status}'`);
    const res = await client.workflowService.listWorkflowExecutions({
      namespace: client.options.namespace,
      query: clauses.join(' AND '),
      pageSize: query.pageSize,
      nextPageToken: query.pageToken ? Buffer.from(query.pageToken, 'base64url') : undefined,
    });
    const runs: RunSummary[] = (res.executions ?? []).map((e) => {
      const sa = decodeTypedSearchAttributes(e.searchAttributes?.indexedFields);
      const memoField = e.memo?.fields?.summary;
      const summary = memoField
        ? defaultPayloadConverter.fromPayload<RunMemo['summary']>(memoField)
        : undefined;
      const requestedAt = e.memo?.fields?.requestedAt
        ? defaultPayloadConverter.fromPayload<number>(e.memo.fields.requestedAt)
        : undefined;
      const status = runStatusSchema.safeParse(sa.get(SEARCH_ATTRIBUTES.runStatus));
      return {
        runId: e.execution?.workflowId ?? '',
        status: status.success ? status.data : 'created',
        tenant: sa.get(SEARCH_ATTRIBUTES.tenant) ?? '',
        userId: sa.get(SEARCH_ATTRIBUTES.userId) ?? '',
        mood: summary?.mood ?? 'CALM',
        repo: sa.get(SEARCH_ATTRIBUTES.repo) ?? summary?.repo ?? '',
        workItem: { id: summary?.workItemId ?? '', description: summary?.description ?? '' },
        createdAt: new Date(requestedAt ?? Number(e.startTime?.seconds ?? 0) * 1000).toISOString(),
        ...(e.closeTime?.seconds
          ? { closedAt: new Date(Number(e.closeTime.seconds) * 1000).toISOString() }
          : {}),
      };
    });
    const token =
      res.nextPageToken && res.nextPageToken.length > 0
        ? Buffer.from(res.nextPageToken).toString('base64url')
        : undefined;
    return { runs, ...(token ? { nextPageToken: token } : {}) };
  }

  async function start(
    principal: Principal,
    request: RunRequest,
    idempotencyKey: string | undefined,
  ): Promise<RunView> {
    await requireRepoGrant(deps.repoAccess, principal.tenant, request.repo);
    const key = idempotencyKey ?? randomUUID();
    const runId = deriveRunId(principal.tenant, principal.userId, key);
    const workItem = { ...request.workItem, id: request.workItem.id ?? `wi-${runId.slice(4, 28)}` };
    const requestHash = createHash('sha256').update(canonicalJson(request)).digest('hex');
    const floor = floorFor(principal.tenant);
    return startRun(principal, {
      runId,
      request: { ...request, workItem },
      requestHash,
      ...(floor ? { approvalFloor: floor } : {}),
    });
  }

  /** The approval floor of a new run: the tenant's protected paths, and a minimum (reruns). */
  function floorFor(tenant: string, minimum?: ApprovalFloor['minimum']): ApprovalFloor | undefined {
    const rules = deps.tenantPolicy?.(tenant)?.protected ?? [];
    if (rules.length === 0 && !minimum) return undefined;
    return { ...(rules.length > 0 ? { protected: rules } : {}), ...(minimum ? { minimum } : {}) };
  }

  /**
   * The tenant's waiting runs, as far as this API knows: a count from the visibility store, reused
   * for up to a second plus the runs this API started since. Near the bound (half of it or more)
   * every request counts afresh, so the bound stays as exact as the visibility store allows; far
   * below it a start costs no count at all. Requests of a burst share one count.
   */
  async function waitingCount(tenant: string, bound: number): Promise<number> {
    const cached = waitingCache.get(tenant);
    if (cached && Date.now() - cached.at < WAITING_COUNT_TTL_MS) {
      const estimate = cached.count + cached.startedSince;
      if (estimate * 2 < bound) return estimate;
    }
    let pending = counting.get(tenant);
    if (!pending) {
      const at = Date.now();
      pending = client.workflow
        .count(waitingRunsQuery(tenant))
        .then((r) => {
          waitingCache.set(tenant, { count: r.count, at, startedSince: 0 });
          return r.count;
        })
        .finally(() => counting.delete(tenant));
      counting.set(tenant, pending);
    }
    return pending;
  }

  /** A run this API started counts as waiting until the next count sees it. */
  function waitingStarted(tenant: string): void {
    const cached = waitingCache.get(tenant);
    if (cached) cached.startedSince += 1;
  }

  /**
   * Refuses a new run with `429 queue_full` while the tenant's waiting runs are at the bound; a
   * retried request for a run that exists is answered as usual. The count lags starts by the
   * visibility store's delay, so a burst may overshoot the bound once; the gate itself copes with
   * any number.
   */
  async function checkQueueRoom(tenant: string, runId: string): Promise<void> {
    const bound = deps.queueBound;
    if (!bound || bound.maxQueuedPerTenant === 0) return;
    const count = await waitingCount(tenant, bound.maxQueuedPerTenant);
    if (count < bound.maxQueuedPerTenant) return;
    const exists = await client.workflow
      .getHandle(runId)
      .describe()
      .then(
        () => true,
        (err: unknown) => {
          if (err instanceof WorkflowNotFoundError) return false;
          throw err;
        },
      );
    if (exists) return;
    logger.info({ event: 'run.queue_full', tenant, waiting: count }, 'run refused: queue full');
    throw new AppError(
      'queue_full',
      `tenant ${tenant} has ${count} runs waiting for a slot (bound ${bound.maxQueuedPerTenant}); retry later`,
      { headers: { 'Retry-After': String(bound.retryAfterSeconds) } },
    );
  }

  /**
   * Starts the run's workflow and answers with its view. A new run costs one start call: its
   * first view follows from the input, and its id is derived from the caller's own tenant and
   * user, so it is theirs by construction. Only a retried request (the id exists) reads the
   * existing run, to compare request hashes and check ownership (decision 0021).
   */
  async function startRun(
    principal: Principal,
    spec: Pick<RunWorkflowInput, 'runId' | 'request' | 'requestHash' | 'rerun' | 'approvalFloor'>,
  ): Promise<RunView> {
    const { runId, request, requestHash } = spec;
    const workItem = request.workItem;
    const requestedAt = Date.now();
    const input: RunWorkflowInput = {
      ...spec,
      tenant: principal.tenant,
      userId: principal.userId,
      requestedAt,
      startedBy: { scopes: principal.scopes, ...(principal.tokenId ? { tokenId: principal.tokenId } : {}) },
    };
    const { memo, typedSearchAttributes } = runStartMetadata(input);
    await checkQueueRoom(principal.tenant, runId);
    const logStart = (fresh: boolean): void =>
      logger.info(
        {
          event: 'run.start',
          runId,
          tenant: principal.tenant,
          userId: principal.userId,
          workItemId: workItem.id,
          fresh,
        },
        fresh ? 'run started' : 'run start retried; answered with the existing run',
      );
    try {
      await client.workflow.start(WORKFLOW_TYPES.run, {
        workflowId: runId,
        taskQueue: TASK_QUEUES.orchestration,
        args: [input],
        // An existing id (a retried request, running or closed) is an error, never a second run;
        // the SDK's own retries of this call carry one request id, which the server deduplicates.
        workflowIdConflictPolicy: 'FAIL',
        workflowIdReusePolicy: 'REJECT_DUPLICATE',
        memo,
        typedSearchAttributes,
        staticSummary: `${principal.userId}: ${workItem.description.split('\n')[0]?.slice(0, 120) ?? ''}`,
        staticDetails: `repo ${request.repo} @ ${spec.rerun ? `${spec.rerun.baseCommit} (rerun of ${spec.rerun.of}, image ${spec.rerun.imageId})` : request.baseRef}, mood ${request.mood}, execute \`${memo.summary.execute}\`, verifiers ${workItem.requiredVerifiers.join(', ') || '(none)'}`,
      });
      waitingStarted(principal.tenant);
      logStart(true);
      return initialRunView(input);
    } catch (err) {
      if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    }
    // `runs.start` (not `runs.read`): a write-only token that started the run may be answered.
    const desc = await describeOwned(principal, runId, 'runs.start');
    const existing = desc.memo as unknown as RunMemo | undefined;
    if (existing?.requestHash !== requestHash) {
      throw new AppError(
        'idempotency_key_reused',
        `Idempotency-Key was already used for run ${runId} with a different request body`,
      );
    }
    logStart(false);
    return viewOf(desc);
  }
}
