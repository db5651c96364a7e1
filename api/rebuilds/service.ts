/** Starts, reads and decides rebuilds through the Temporal client: one rebuild per target at a time. */
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  type Client,
  type WorkflowExecutionDescription,
} from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import type { Logger } from 'pino';
import { authorize, forbidden, type Action } from '../auth/policy';
import { QUERY_TIMEOUT_MS, guardedWithin, withTimeout } from '../temporal';
import type { RebuildTargets } from './targets';
import {
  AppError,
  SEARCH_ATTRIBUTES,
  TASK_QUEUES,
  WORKFLOW_TYPES,
  parseRebuildId,
  rebuildDecisionUpdate,
  rebuildRefAllowed,
  rebuildIdOf,
  rebuildTimingsSchema,
  rebuildViewQuery,
  rebuildWorkflowId,
  type DeployedView,
  type Principal,
  type RebuildRequest,
  type RebuildTimings,
  type RebuildView,
  type RebuildWorkflowInput,
} from '../../contracts';

export interface RebuildService {
  start(principal: Principal, request: RebuildRequest): Promise<RebuildView>;
  get(principal: Principal, rebuildId: string): Promise<RebuildView>;
  /** What the target runs now: the services and image ids of its last completed rebuild. */
  deployed(principal: Principal, target: string): Promise<DeployedView>;
  decide(
    principal: Principal,
    rebuildId: string,
    decision: 'approve' | 'reject',
    reason: string | undefined,
  ): Promise<RebuildView>;
}

interface RebuildMemo {
  target: string;
  ref: string;
  requestedAt: number;
  reason?: string;
}

export function createTemporalRebuildService(deps: {
  client: Client;
  targets: RebuildTargets;
  /** Approval deadline when a request names none. */
  defaultApprovalTimeoutSeconds: number;
  /** Activity timing knobs for every rebuild (tests shorten heartbeats). */
  timings?: Partial<RebuildTimings>;
  logger: Logger;
  /** Deadline of one request's Temporal calls, together; none: per call only. */
  requestDeadlineMs?: number;
  /**
   * Tenants whose principals operate the platform (tenants file `platform.operators`): the
   * rebuild scopes count only in their tokens, and they see every rebuild.
   */
  isOperatorTenant: (tenant: string) => boolean;
}): RebuildService {
  const { client, logger } = deps;
  const guarded = guardedWithin(client, deps.requestDeadlineMs);
  const timings = rebuildTimingsSchema.parse(deps.timings ?? {});

  const check = (principal: Principal, action: Action): void => {
    if (authorize(principal, action) === 'forbidden') throw forbidden(action);
    // A tenant's release manager does not replace the platform every tenant shares.
    if (!deps.isOperatorTenant(principal.tenant))
      throw new AppError(
        'forbidden',
        `rebuilds are platform operations; tenant ${principal.tenant} does not operate the platform`,
      );
  };

  /** The rebuild's execution, if it exists (else 404); platform operators see every rebuild. */
  const describeVisible = async (
    principal: Principal,
    rebuildId: string,
  ): Promise<WorkflowExecutionDescription> => {
    const notFound = new AppError('not_found', `rebuild ${rebuildId} does not exist`);
    const parsed = parseRebuildId(rebuildId);
    if (!parsed) throw notFound;
    let desc: WorkflowExecutionDescription;
    try {
      desc = await client.workflow.getHandle(rebuildWorkflowId(parsed.target), parsed.runId).describe();
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) throw notFound;
      throw err;
    }
    if (desc.type !== WORKFLOW_TYPES.rebuild) throw notFound;
    return desc;
  };

  /** Live progress: the heartbeat details of the activity running now (e.g. build step n/m). */
  const progressOf = (desc: WorkflowExecutionDescription): Record<string, unknown> | undefined => {
    const pending = desc.raw.pendingActivities?.[0];
    const payload = pending?.heartbeatDetails?.payloads?.[0];
    const base = pending
      ? { activity: pending.activityType?.name ?? '', attempt: pending.attempt ?? 1 }
      : undefined;
    if (!base) return undefined;
    if (!payload) return base;
    try {
      const details = defaultPayloadConverter.fromPayload<unknown>(payload);
      return typeof details === 'object' && details !== null ? { ...base, ...details } : base;
    } catch {
      return base;
    }
  };

  const viewOf = async (desc: WorkflowExecutionDescription): Promise<RebuildView> => {
    const handle = client.workflow.getHandle(desc.workflowId, desc.runId);
    if (desc.status.name === 'COMPLETED') return (await handle.result()) as RebuildView;
    try {
      const view = await withTimeout(handle.query(rebuildViewQuery), QUERY_TIMEOUT_MS);
      const progress = desc.status.name === 'RUNNING' ? progressOf(desc) : undefined;
      return progress ? { ...view, progress } : view;
    } catch (err) {
      logger.debug({ rebuildWorkflow: desc.workflowId, err }, 'rebuild view query failed; using memo');
      const memo = desc.memo as unknown as RebuildMemo;
      const stage =
        desc.status.name === 'CANCELLED'
          ? 'cancelled'
          : desc.status.name === 'RUNNING'
            ? 'resolving'
            : 'failed';
      return {
        rebuildId: rebuildIdOf(memo.target, desc.runId),
        target: memo.target,
        ref: memo.ref,
        stage,
        requestedBy: {
          tenant: desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.tenant) ?? '',
          userId: desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.userId) ?? '',
        },
        createdAt: new Date(memo.requestedAt).toISOString(),
        verify: [],
        images: [],
        deploy: [],
        stageMs: {},
        events: { emitted: 0, published: 0 },
      };
    }
  };

  return {
    start: (principal, request) =>
      guarded(async () => {
        check(principal, 'rebuilds.start');
        const target = deps.targets.get(request.target);
        if (!target)
          throw new AppError('unknown_target', `no rebuild target named ${request.target}`, {
            errors: [{ field: 'target', message: `known targets: ${deps.targets.names().join(', ')}` }],
          });
        if (!rebuildRefAllowed(target, request.ref))
          throw new AppError(
            'ref_not_allowed',
            `target ${target.name} may not be rebuilt from ${request.ref}${target.refs ? ` (allowed: ${target.refs.join(', ')})` : ' (run branches never)'}`,
            { errors: [{ field: 'ref', message: 'not an allowed ref of this target' }] },
          );
        const workflowId = rebuildWorkflowId(target.name);
        const requestedAt = Date.now();
        const approvalTimeoutSeconds = request.approvalTimeoutSeconds ?? deps.defaultApprovalTimeoutSeconds;
        const input: RebuildWorkflowInput = {
          tenant: principal.tenant,
          userId: principal.userId,
          request,
          target,
          approvalTimeoutSeconds,
          timings,
          requestedAt,
        };
        const memo: RebuildMemo = {
          target: target.name,
          ref: request.ref,
          requestedAt,
          ...(request.reason ? { reason: request.reason } : {}),
        };
        let runId: string;
        try {
          const handle = await client.workflow.start(WORKFLOW_TYPES.rebuild, {
            workflowId,
            taskQueue: TASK_QUEUES.orchestration,
            args: [input],
            // One rebuild per target: a second start while one runs fails; a finished one may be followed.
            workflowIdConflictPolicy: 'FAIL',
            workflowIdReusePolicy: 'ALLOW_DUPLICATE',
            memo: memo as unknown as Record<string, unknown>,
            typedSearchAttributes: [
              { key: SEARCH_ATTRIBUTES.tenant, value: principal.tenant },
              { key: SEARCH_ATTRIBUTES.userId, value: principal.userId },
              { key: SEARCH_ATTRIBUTES.rebuildTarget, value: target.name },
              { key: SEARCH_ATTRIBUTES.rebuildStage, value: 'resolving' },
            ],
            staticSummary: `rebuild ${target.name} @ ${request.ref} (by ${principal.userId})`,
            staticDetails: `images ${target.images.map((i) => i.image).join(', ')}; suites ${target.suites.map((s) => s.name).join(', ') || '(none)'}; deployer ${target.deployer}; approval within ${approvalTimeoutSeconds}s${request.reason ? `; reason: ${request.reason}` : ''}`,
          });
          runId = handle.firstExecutionRunId;
        } catch (err) {
          if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
          const running = await client.workflow.getHandle(workflowId).describe();
          const runningId = rebuildIdOf(target.name, running.runId);
          // Callers are platform operators (check above), who may read every rebuild: naming it is fine.
          throw new AppError(
            'rebuild_in_progress',
            `rebuild ${runningId} of target ${target.name} is still running; wait for it, or approve/reject it`,
            { headers: { 'Content-Location': `/v1/rebuilds/${runningId}` } },
          );
        }
        const rebuildId = rebuildIdOf(target.name, runId);
        logger.info(
          {
            event: 'rebuild.start',
            rebuildId,
            target: target.name,
            ref: request.ref,
            userId: principal.userId,
          },
          'rebuild started',
        );
        return {
          rebuildId,
          target: target.name,
          ref: request.ref,
          stage: 'resolving',
          requestedBy: { tenant: principal.tenant, userId: principal.userId },
          ...(request.reason ? { reason: request.reason } : {}),
          createdAt: new Date(requestedAt).toISOString(),
          verify: [],
          images: [],
          deploy: [],
          stageMs: {},
          events: { emitted: 0, published: 0 },
        };
      }),

    deployed: (principal, targetName) =>
      guarded(async () => {
        check(principal, 'rebuilds.read');
        const target = deps.targets.get(targetName);
        if (!target) throw new AppError('unknown_target', `no rebuild target named ${targetName}`);
        // Newest first; the stage attribute is set by the workflow at each stage change.
        const query = `WorkflowId = '${rebuildWorkflowId(target.name)}' AND ${SEARCH_ATTRIBUTES.rebuildStage.name} = 'completed'`;
        for await (const execution of client.workflow.list({ query, pageSize: 1 })) {
          const view = (await client.workflow
            .getHandle(execution.workflowId, execution.runId)
            .result()) as RebuildView;
          const idOf = new Map(view.images.map((i) => [i.tag, i.imageId]));
          return {
            target: target.name,
            rebuildId: view.rebuildId,
            ...(view.commit ? { commit: view.commit } : {}),
            ...(view.finishedAt ? { deployedAt: view.finishedAt } : {}),
            services: view.deploy.map((d) => ({
              service: d.service,
              image: d.image,
              imageId: idOf.get(d.image) ?? '',
            })),
          };
        }
        return { target: target.name, services: [] };
      }),

    get: (principal, rebuildId) =>
      guarded(async () => {
        check(principal, 'rebuilds.read');
        return viewOf(await describeVisible(principal, rebuildId));
      }),

    decide: (principal, rebuildId, decision, reason) =>
      guarded(async () => {
        check(principal, 'rebuilds.decide');
        const desc = await describeVisible(principal, rebuildId);
        if (desc.status.name !== 'RUNNING')
          throw new AppError('rebuild_not_awaiting_approval', `rebuild ${rebuildId} has finished`);
        // Four eyes: whoever asked for a rebuild of the shared platform never approves it.
        // (Rejecting one's own request is allowed: it only stops it.)
        if (
          decision === 'approve' &&
          desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.tenant) === principal.tenant &&
          desc.typedSearchAttributes.get(SEARCH_ATTRIBUTES.userId) === principal.userId
        )
          throw new AppError(
            'self_approval_forbidden',
            `rebuild ${rebuildId} was requested by you; another release manager must approve it`,
          );
        const handle = client.workflow.getHandle(desc.workflowId, desc.runId);
        try {
          const view = await handle.executeUpdate(rebuildDecisionUpdate, {
            args: [
              {
                decision,
                tenant: principal.tenant,
                userId: principal.userId,
                ...(reason ? { reason } : {}),
              },
            ],
          });
          logger.info(
            { event: 'rebuild.decision', rebuildId, decision, userId: principal.userId },
            'rebuild decided',
          );
          return view;
        } catch (err) {
          if (err instanceof WorkflowUpdateFailedError) {
            const message = err.cause instanceof Error ? err.cause.message : '';
            // The workflow's validator names its refusal first (four eyes, one vote per approver).
            const code = /^(self_approval_forbidden|already_approved):/.exec(message)?.[1];
            if (code === 'self_approval_forbidden' || code === 'already_approved')
              throw new AppError(code, message.slice(code.length + 1).trim());
            throw new AppError(
              'rebuild_not_awaiting_approval',
              message || `rebuild ${rebuildId} is not awaiting approval`,
            );
          }
          throw err;
        }
      }),
  };
}
