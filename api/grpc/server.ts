/**
 * The gRPC front end (`choiros.v1.Runs`, contracts/proto/choiros/v1/runs.proto): the same token
 * verification, rate limits, validation, run service and policy as the HTTP API; errors map to
 * the matching gRPC status, with the stable error code in the `choiros-error-code` trailer.
 */
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { context, type Tracer } from '@opentelemetry/api';
import type { Logger } from 'pino';
import {
  AppError,
  approvalBodySchema,
  interruptAnswerBodySchema,
  rerunRequestSchema,
  runListQuerySchema,
  type InterruptView,
  type ErrorCode,
  type Principal,
  type RunSummary,
  type RunView,
  type VerifierSpec,
} from '../../contracts';
import { bearerToken, missingToken, type TokenVerifier } from '../auth/token-verifier';
import { requireScopeFor, type Action } from '../auth/policy';
import { validationError } from '../errors';
import type { RunEventSource } from '../events/source';
import { enforceRateLimit, type RateLimiter } from '../rate-limit';
import type { StreamLimiter } from '../stream-limit';
import type { RunService } from '../runs/service';
import { startRpcSpan } from '../tracing';
import { checkIdempotencyKey, parseBody, parseRunId, parseRunRequest } from '../runs/validate';

const PROTO_FILE = join(__dirname, '../../contracts/proto/choiros/v1/runs.proto');

export interface GrpcDeps {
  verifyToken: TokenVerifier;
  runs: RunService;
  events: RunEventSource;
  verifiers: { get(id: string): VerifierSpec | undefined };
  rateLimiter?: RateLimiter;
  /** Concurrent event streams per principal, shared with SSE; unlimited when absent. */
  streamLimiter?: StreamLimiter;
  /** OpenTelemetry tracer: a SERVER span per unary call (api/tracing.ts); no spans when absent. */
  tracer?: Tracer;
  logger: Logger;
}

const STATUS_BY_CODE: Partial<Record<ErrorCode, grpc.status>> = {
  validation_failed: grpc.status.INVALID_ARGUMENT,
  unknown_verifier: grpc.status.INVALID_ARGUMENT,
  unauthenticated: grpc.status.UNAUTHENTICATED,
  forbidden: grpc.status.PERMISSION_DENIED,
  not_found: grpc.status.NOT_FOUND,
  conflict: grpc.status.ALREADY_EXISTS,
  idempotency_key_reused: grpc.status.FAILED_PRECONDITION,
  rate_limited: grpc.status.RESOURCE_EXHAUSTED,
  queue_full: grpc.status.RESOURCE_EXHAUSTED,
  payload_too_large: grpc.status.RESOURCE_EXHAUSTED,
  service_unavailable: grpc.status.UNAVAILABLE,
  not_awaiting_approval: grpc.status.FAILED_PRECONDITION,
  self_approval_forbidden: grpc.status.PERMISSION_DENIED,
  already_approved: grpc.status.ALREADY_EXISTS,
  interrupt_not_found: grpc.status.NOT_FOUND,
  interrupt_closed: grpc.status.FAILED_PRECONDITION,
  invalid_answer: grpc.status.INVALID_ARGUMENT,
  rerun_unavailable: grpc.status.FAILED_PRECONDITION,
  repo_not_allowed: grpc.status.PERMISSION_DENIED,
};

/** The `choiros.v1.Runs` client constructor from the .proto (keepCase: field names as in the file). */
export function loadRunsConstructor(): grpc.ServiceClientConstructor {
  const def = protoLoader.loadSync(PROTO_FILE, {
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    choiros: { v1: { Runs: grpc.ServiceClientConstructor } };
  };
  return pkg.choiros.v1.Runs;
}

/** The service definition the server implements. */
function loadRunsService(): grpc.ServiceDefinition {
  return loadRunsConstructor().service;
}

function toServiceError(err: unknown, logger: Logger): Partial<grpc.ServiceError> {
  const metadata = new grpc.Metadata();
  if (err instanceof AppError) {
    metadata.set('choiros-error-code', err.code);
    const retry = err.options.headers?.['Retry-After'];
    if (retry) metadata.set('retry-after', retry);
    return { code: STATUS_BY_CODE[err.code] ?? grpc.status.INTERNAL, details: err.message, metadata };
  }
  logger.error({ err }, 'unhandled gRPC error');
  metadata.set('choiros-error-code', 'internal');
  return { code: grpc.status.INTERNAL, details: 'an internal error occurred', metadata };
}

const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

function runToProto(v: RunView): Record<string, unknown> {
  const outcome = (o: RunView['execution']) =>
    o && {
      exit_code: o.exitCode,
      timed_out: o.timedOut,
      duration_ms: o.durationMs,
      output_tail: o.outputTail,
      output_sha256: o.outputSha256,
      output_bytes: o.outputBytes,
    };
  return {
    run_id: v.runId,
    status: v.status,
    tenant: v.tenant,
    user_id: v.userId,
    mood: v.mood,
    repo: v.repo,
    base_ref: v.baseRef,
    work_item_id: v.workItem.id,
    description: v.workItem.description,
    risk_tier: v.workItem.riskTier,
    branch: v.branch ?? '',
    commit: v.commit ?? '',
    base_commit: v.baseCommit ?? '',
    execution: outcome(v.execution),
    verifiers: v.verifiers.map((x) => ({ id: x.id, result: x.result, outcome: outcome(x) })),
    created_at: v.createdAt,
    started_at: v.startedAt ?? '',
    finished_at: v.finishedAt ?? '',
    error: v.error,
    events_emitted: v.events.emitted,
    events_published: v.events.published,
    rerun_of: v.rerunOf ?? '',
    queue_position: v.queuePosition ?? 0,
    interrupts: (v.interrupts ?? []).map(interruptToProto),
    approval: v.approval && {
      requirement: v.approval.requirement,
      quorum: v.approval.quorum,
      deadline: v.approval.deadline,
      approvers: v.approval.approvals.map((a) => a.userId),
      decision: v.approval.decision ?? '',
    },
    image_id: v.imageId ?? '',
  };
}

function interruptToProto(i: InterruptView): Record<string, unknown> {
  return {
    id: i.id,
    kind: i.kind,
    question: i.question,
    options: i.options,
    default_action: i.defaultAction,
    deadline: i.deadline,
    status: i.status,
    answer: i.answer ?? '',
    answered_by: i.answeredBy?.userId ?? '',
  };
}

function summaryToProto(s: RunSummary): Record<string, unknown> {
  return {
    run_id: s.runId,
    status: s.status,
    tenant: s.tenant,
    user_id: s.userId,
    mood: s.mood,
    repo: s.repo,
    work_item_id: s.workItem.id,
    description: s.workItem.description,
    created_at: s.createdAt,
    closed_at: s.closedAt ?? '',
  };
}

export function createGrpcServer(deps: GrpcDeps): grpc.Server {
  const { logger } = deps;

  /** Authenticates from metadata, applies the rate limit and the action's scope. */
  const principalFor = async (metadata: grpc.Metadata, action: Action): Promise<Principal> => {
    const token = bearerToken(metadata.get('authorization')[0]);
    if (!token) throw missingToken();
    const principal = await deps.verifyToken(token);
    enforceRateLimit(deps.rateLimiter, principal);
    requireScopeFor(principal, action);
    return principal;
  };

  const unary =
    <Req, Res>(name: string, fn: (req: Req, metadata: grpc.Metadata) => Promise<Res>) =>
    (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>): void => {
      const started = Date.now();
      const span = deps.tracer ? startRpcSpan(deps.tracer, name, call.metadata) : undefined;
      // Inside the span's context: the handler's Temporal calls are its children, its logs carry its ids.
      const handle = (): void =>
        void fn(call.request, call.metadata).then(
          (res) => {
            logger.info({ event: 'grpc.request', method: name, ms: Date.now() - started }, 'gRPC request');
            span?.end(grpc.status.OK);
            callback(null, res);
          },
          (err: unknown) => {
            const e = toServiceError(err, logger);
            logger.info(
              { event: 'grpc.request', method: name, status: e.code, ms: Date.now() - started },
              'gRPC request',
            );
            span?.end(e.code ?? grpc.status.UNKNOWN);
            callback(e, null);
          },
        );
      if (span) context.with(span.ctx, handle);
      else handle();
    };

  const server = new grpc.Server({ 'grpc.max_receive_message_length': 256 * 1024 });
  server.addService(loadRunsService(), {
    StartRun: unary(
      'StartRun',
      async (
        req: {
          request?: {
            repo?: string;
            base_ref?: string;
            mood?: string;
            work_item?: Record<string, unknown>;
            network?: string;
            egress?: { host: string; port: number }[];
          };
          idempotency_key?: string;
        },
        md,
      ) => {
        const principal = await principalFor(md, 'runs.start');
        const key = str(req.idempotency_key);
        checkIdempotencyKey(key);
        const r = req.request ?? {};
        const wi = r.work_item ?? {};
        const body = {
          repo: r.repo,
          ...(str(r.base_ref) ? { baseRef: r.base_ref } : {}),
          ...(str(r.mood) ? { mood: r.mood } : {}),
          ...(str(r.network) ? { network: r.network } : {}),
          ...(r.egress?.length ? { egress: r.egress } : {}),
          workItem: {
            ...(str(wi.id) ? { id: wi.id } : {}),
            description: wi.description,
            execute: wi.execute,
            requiredVerifiers: wi.required_verifiers,
            ...(str(wi.risk_tier) ? { riskTier: wi.risk_tier } : {}),
            acceptanceCriteria: wi.acceptance_criteria,
          },
        };
        return runToProto(await deps.runs.start(principal, parseRunRequest(body, deps.verifiers), key));
      },
    ),
    GetRun: unary('GetRun', async (req: { run_id?: string }, md) => {
      const principal = await principalFor(md, 'runs.read');
      return runToProto(await deps.runs.get(principal, parseRunId(req.run_id, 'run_id'), 'runs.read'));
    }),
    ...Object.fromEntries(
      (['approve', 'reject'] as const).map((decision) => {
        const name = decision === 'approve' ? 'ApproveRun' : 'RejectRun';
        return [
          name,
          unary(name, async (req: { run_id?: string; comment?: string }, md) => {
            const principal = await principalFor(md, 'runs.approve');
            const runId = parseRunId(req.run_id, 'run_id');
            const body = parseBody(approvalBodySchema, str(req.comment) ? { comment: req.comment } : {});
            const { result, run } = await deps.runs.decide(principal, runId, decision, body.comment);
            return { ...result, run: runToProto(run) };
          }),
        ];
      }),
    ),
    AnswerInterrupt: unary(
      'AnswerInterrupt',
      async (req: { run_id?: string; interrupt_id?: string; answer?: string; comment?: string }, md) => {
        const principal = await principalFor(md, 'runs.answer');
        const runId = parseRunId(req.run_id, 'run_id');
        const interruptId = parseRunId(req.interrupt_id, 'interrupt_id');
        const body = parseBody(interruptAnswerBodySchema, {
          answer: req.answer ?? '',
          ...(str(req.comment) ? { comment: req.comment } : {}),
        });
        return interruptToProto(await deps.runs.answerInterrupt(principal, runId, interruptId, body));
      },
    ),
    RerunRun: unary(
      'RerunRun',
      async (req: { run_id?: string; mood?: string; idempotency_key?: string }, md) => {
        const principal = await principalFor(md, 'runs.start');
        const runId = parseRunId(req.run_id, 'run_id');
        const key = str(req.idempotency_key);
        checkIdempotencyKey(key);
        const body = parseBody(rerunRequestSchema, str(req.mood) ? { mood: req.mood } : {});
        return runToProto(await deps.runs.rerun(principal, runId, body, key));
      },
    ),
    CancelRun: unary('CancelRun', async (req: { run_id?: string }, md) => {
      const principal = await principalFor(md, 'runs.cancel');
      return runToProto(await deps.runs.cancel(principal, parseRunId(req.run_id, 'run_id')));
    }),
    ListRuns: unary(
      'ListRuns',
      async (req: { status?: string; page_size?: number; page_token?: string; user_id?: string }, md) => {
        const principal = await principalFor(md, 'runs.list');
        const q = runListQuerySchema.safeParse({
          ...(str(req.status) ? { status: req.status } : {}),
          ...(req.page_size ? { pageSize: req.page_size } : {}),
          ...(str(req.page_token) ? { pageToken: req.page_token } : {}),
          ...(str(req.user_id) ? { userId: req.user_id } : {}),
        });
        if (!q.success) throw validationError(q.error);
        const page = await deps.runs.list(principal, q.data);
        return { runs: page.runs.map(summaryToProto), next_page_token: page.nextPageToken ?? '' };
      },
    ),
    WatchRun: (call: grpc.ServerWritableStream<{ run_id?: string; after_seq?: number }, unknown>) => {
      const abort = new AbortController();
      let release: (() => void) | undefined;
      call.on('cancelled', () => abort.abort());
      void (async () => {
        try {
          const principal = await principalFor(call.metadata, 'runs.watch');
          const runId = parseRunId(call.request.run_id, 'run_id');
          // The owner's events: a tenant admin or reviewer watches the member's stream, not their own.
          const owner = await deps.runs.checkVisible(principal, runId, 'runs.watch');
          release = deps.streamLimiter?.acquire(principal);
          for await (const e of deps.events.stream(
            owner,
            runId,
            Math.max(0, call.request.after_seq ?? 0),
            abort.signal,
          )) {
            call.write({
              ...e,
              work_item_id: e.work_item_id ?? '',
              payload_json: JSON.stringify(e.payload),
              payload: undefined,
            });
          }
          call.end();
        } catch (err) {
          // grpc-js ends a server stream with a status by emitting it as an error.
          if (!abort.signal.aborted) call.emit('error', toServiceError(err, logger));
        } finally {
          release?.();
        }
      })();
    },
  });
  return server;
}

/** Binds on host:port (plaintext; terminate TLS in front, as for HTTP) and returns the bound port. */
export function listenGrpc(server: grpc.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) =>
      err ? reject(err) : resolve(bound),
    );
  });
}
