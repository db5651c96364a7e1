/** Builds the Express app without listening: tests drive it with supertest, main.ts listens. */
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Tracer } from '@opentelemetry/api';
import type { Logger } from 'pino';
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import {
  AppError,
  approvalBodySchema,
  interruptAnswerBodySchema,
  parseEventId,
  rebuildDecisionBodySchema,
  rebuildRequestSchema,
  rerunRequestSchema,
  runListQuerySchema,
  type SubjectOwner,
  type VerifierSpec,
} from '../contracts';
import { checkIdempotencyKey, parseBody, parseRunId, parseRunRequest } from './runs/validate';
import { parseWorkGraphRequest } from './graphs/validate';
import type { WorkGraphService } from './graphs/service';
import { authenticate, principalOf, requireAction } from './auth/middleware';
import type { TokenVerifier } from './auth/token-verifier';
import { errorMiddleware, sendProblem, validationError } from './errors';
import type { RunEventSource } from './events/source';
import type { UserNatsCredentials } from './nats/credentials';
import type { RunService } from './runs/service';
import type { RebuildService } from './rebuilds/service';
import { createApiMetrics, type ApiMetrics } from './metrics';
import { openApiDocument } from './openapi';
import { enforceRateLimit, type RateLimiter } from './rate-limit';
import type { StreamLimiter } from './stream-limit';
import { httpServerSpans } from './tracing';
import { withTimeout } from './temporal';

export interface ReadinessCheck {
  name: string;
  check: () => Promise<void>;
}

export interface AppDeps {
  verifyToken: TokenVerifier;
  runs: RunService;
  /** Work graphs; without it the graph routes answer 503. */
  graphs?: WorkGraphService;
  /** Verifier allow-list lookup, to reject unknown ids at request time. */
  verifiers: { get(id: string): VerifierSpec | undefined };
  readiness: ReadinessCheck[];
  /** A run's events from JetStream, for SSE. */
  events: RunEventSource;
  /** Mints a principal's (tenant, user) short-lived NATS credentials; absent when the account key is not configured. */
  natsCredentials?: { servers: string[]; mint(owner: SubjectOwner): Promise<UserNatsCredentials> };
  /** Per-principal request limits; none when absent. */
  rateLimiter?: RateLimiter;
  /** Concurrent event streams per principal (shared with gRPC WatchRun); unlimited when absent. */
  streamLimiter?: StreamLimiter;
  /** Prometheus metrics; a private registry when absent. */
  metrics?: ApiMetrics;
  /**
   * Where `GET /metrics` is served: on this app unless `onApiPort` is false (a listener of its own,
   * createMetricsApp), and behind `Authorization: Bearer <token>` when a token is set. Default: on
   * this app, open.
   */
  metricsEndpoint?: { onApiPort: boolean; token?: string };
  /** Self-rebuilds; the rebuild routes answer 503 when absent. */
  rebuilds?: RebuildService;
  /** Version reported on /healthz (the commit a rebuild built this API from). */
  version?: string;
  /** SSE comment heartbeat interval. */
  sseHeartbeatMs?: number;
  /**
   * Aborted when the process drains (SIGTERM): requests on kept-alive connections get 503
   * `service_unavailable` with `Connection: close`, `/readyz` answers 503 and SSE streams end
   * (clients reconnect elsewhere with `Last-Event-ID`).
   */
  shutdown?: AbortSignal;
  /** OpenTelemetry tracer: a SERVER span per request (api/tracing.ts); no spans when absent. */
  tracer?: Tracer;
  logger: Logger;
}

const BODY_LIMIT = '256kb';
/** A readiness check that has not answered by then counts as failed (`/readyz` answers 503 at once). */
const READINESS_CHECK_TIMEOUT_MS = 3000;
/** A graph carries up to 1000 work items. */
const GRAPH_BODY_LIMIT = '4mb';

type Handler = (req: Request, res: Response) => Promise<void>;
const route =
  (h: Handler) =>
  (req: Request, res: Response, next: NextFunction): void => {
    h(req, res).catch(next);
  };

export function createApp(deps: AppDeps): express.Express {
  const app = express();
  const metrics = deps.metrics ?? createApiMetrics({ defaultMetrics: false });
  const openapi = JSON.stringify(openApiDocument());
  app.disable('x-powered-by');
  app.set('trust proxy', false);
  if (deps.tracer) app.use(httpServerSpans(deps.tracer));

  app.use((req, res, next) => {
    const incoming = req.header('x-request-id');
    const requestId = incoming && /^[A-Za-z0-9._-]{1,128}$/.test(incoming) ? incoming : randomUUID();
    res.locals.requestId = requestId;
    res.setHeader('X-Request-Id', requestId);
    const started = Date.now();
    res.on('finish', () => {
      // Route templates, never raw paths: ids must not explode label cardinality.
      const template = req.route
        ? `${req.baseUrl}${String((req.route as { path: string }).path)}`
        : 'unmatched';
      metrics.requests.inc({ method: req.method, route: template, status: String(res.statusCode) });
      metrics.duration.observe(
        { method: req.method, route: template, status: String(res.statusCode) },
        (Date.now() - started) / 1000,
      );
      if (res.statusCode === 401 || res.statusCode === 403)
        metrics.authFailures.inc({ code: String(res.statusCode) });
      deps.logger.info(
        {
          event: 'http.request',
          requestId,
          method: req.method,
          path: req.path,
          status: res.statusCode,
          ms: Date.now() - started,
          runId: res.locals.runId as string | undefined,
        },
        'request',
      );
    });
    if (deps.shutdown?.aborted) {
      res.setHeader('Connection', 'close');
      res.setHeader('Retry-After', '1');
      sendProblem(res, 'service_unavailable', 'this API instance is shutting down; retry on another');
      return;
    }
    next();
  });

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok', ...(deps.version ? { version: deps.version } : {}) });
  });

  app.get(
    '/readyz',
    route(async (_req, res) => {
      // Unauthenticated: ready or not per dependency, never the error text (it names hosts, ports
      // and internals); the reason goes to the log.
      const checks: Record<string, { ok: boolean }> = {};
      await Promise.all(
        deps.readiness.map(async (r) => {
          try {
            // A dependency that does not answer in time is as not-ready as one that refuses.
            await withTimeout(r.check(), READINESS_CHECK_TIMEOUT_MS);
            checks[r.name] = { ok: true };
          } catch (err) {
            checks[r.name] = { ok: false };
            deps.logger.warn({ event: 'readyz.not_ready', check: r.name, err }, 'readiness check failed');
          }
        }),
      );
      const ready = Object.values(checks).every((c) => c.ok);
      res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'not_ready', checks });
    }),
  );

  app.get('/openapi.json', (_req, res) => {
    res.type('application/json').send(openapi);
  });

  if (deps.metricsEndpoint?.onApiPort !== false) {
    app.get('/metrics', metricsHandler(metrics, deps.metricsEndpoint?.token));
  }

  const v1 = express.Router();
  v1.use(authenticate(deps.verifyToken));
  if (deps.rateLimiter) {
    const limiter = deps.rateLimiter;
    v1.use((_req, res, next) => {
      enforceRateLimit(limiter, principalOf(res), () => metrics.rateLimited.inc());
      next();
    });
  }

  /** JSON bodies only; `optional` lets a body-less POST through (its body reads as `{}`). */
  const jsonBody = (optional: boolean) => [
    (req: Request, _res: Response, next: NextFunction) => {
      const hasBody =
        Number(req.header('content-length') ?? 0) > 0 || req.header('transfer-encoding') !== undefined;
      if ((hasBody || !optional) && !req.is('application/json')) {
        return next(new AppError('unsupported_media_type', 'send the request body as application/json'));
      }
      next();
    },
    express.json({ limit: BODY_LIMIT, strict: true }),
  ];

  v1.post(
    '/runs',
    requireAction('runs.start'),
    ...jsonBody(false),
    route(async (req, res) => {
      const principal = principalOf(res);
      const key = req.header('idempotency-key');
      checkIdempotencyKey(key);
      const runRequest = parseRunRequest(req.body, deps.verifiers);
      const view = await deps.runs.start(principal, runRequest, key);
      res.locals.runId = view.runId;
      metrics.runStarts.inc({ mood: runRequest.mood });
      res.status(201).location(`/v1/runs/${view.runId}`).json(view);
    }),
  );

  v1.get(
    '/runs',
    requireAction('runs.list'),
    route(async (req, res) => {
      const query = runListQuerySchema.safeParse(req.query);
      if (!query.success) throw validationError(query.error);
      res.json(await deps.runs.list(principalOf(res), query.data));
    }),
  );

  v1.get(
    '/runs/:runId',
    requireAction('runs.read'),
    route(async (req, res) => {
      const runId = parseRunId(req.params.runId, 'runId');
      res.locals.runId = runId;
      res.json(await deps.runs.get(principalOf(res), runId));
    }),
  );

  v1.post(
    '/runs/:runId/cancel',
    requireAction('runs.cancel'),
    route(async (req, res) => {
      const runId = parseRunId(req.params.runId, 'runId');
      res.locals.runId = runId;
      res.status(202).json(await deps.runs.cancel(principalOf(res), runId));
    }),
  );

  for (const decision of ['approve', 'reject'] as const) {
    v1.post(
      `/runs/:runId/${decision}`,
      requireAction('runs.approve'),
      ...jsonBody(true),
      route(async (req, res) => {
        const runId = parseRunId(req.params.runId, 'runId');
        res.locals.runId = runId;
        const body = parseBody(approvalBodySchema, req.body);
        res.json(await deps.runs.decide(principalOf(res), runId, decision, body.comment));
      }),
    );
  }

  v1.post(
    '/runs/:runId/interrupts/:interruptId/answer',
    requireAction('runs.answer'),
    ...jsonBody(false),
    route(async (req, res) => {
      const runId = parseRunId(req.params.runId, 'runId');
      const interruptId = parseRunId(req.params.interruptId, 'interruptId');
      res.locals.runId = runId;
      const body = parseBody(interruptAnswerBodySchema, req.body);
      res.json(await deps.runs.answerInterrupt(principalOf(res), runId, interruptId, body));
    }),
  );

  v1.post(
    '/runs/:runId/rerun',
    requireAction('runs.start'),
    ...jsonBody(true),
    route(async (req, res) => {
      const runId = parseRunId(req.params.runId, 'runId');
      const key = req.header('idempotency-key');
      checkIdempotencyKey(key);
      const body = parseBody(rerunRequestSchema, req.body);
      const view = await deps.runs.rerun(principalOf(res), runId, body, key);
      res.locals.runId = view.runId;
      res.status(201).location(`/v1/runs/${view.runId}`).json(view);
    }),
  );

  v1.post(
    '/runs/:runId/delivery',
    requireAction('runs.start'),
    ...jsonBody(true),
    route(async (req, res) => {
      const runId = parseRunId(req.params.runId, 'runId');
      res.locals.runId = runId;
      res.json(await deps.runs.retryDelivery(principalOf(res), runId));
    }),
  );

  v1.get(
    '/runs/:runId/events',
    requireAction('runs.watch'),
    route(async (req, res) => {
      const principal = principalOf(res);
      const runId = parseRunId(req.params.runId, 'runId');
      res.locals.runId = runId;
      const afterSeq = parseLastEventId(
        req.header('last-event-id') ??
          (typeof req.query.lastEventId === 'string' ? req.query.lastEventId : undefined),
        runId,
      );
      // Ownership first: someone else's run is a 404 before any byte is sent. The stream is the
      // owner's (tenant, user) prefix, so a tenant admin watching a member's run gets its events.
      const owner = await deps.runs.checkVisible(principal, runId, 'runs.watch');
      const release = deps.streamLimiter?.acquire(principal);
      try {
        await streamEvents(req, res, deps, owner, runId, afterSeq);
      } finally {
        release?.();
      }
    }),
  );

  const graphs = (): WorkGraphService => {
    if (!deps.graphs)
      throw new AppError('service_unavailable', 'work graphs are not configured on this gateway');
    return deps.graphs;
  };

  v1.post(
    '/work-graphs',
    requireAction('graphs.start'),
    (req, _res, next) => {
      if (!req.is('application/json')) {
        return next(new AppError('unsupported_media_type', 'send the work graph as application/json'));
      }
      next();
    },
    express.json({ limit: GRAPH_BODY_LIMIT, strict: true }),
    route(async (req, res) => {
      const key = req.header('idempotency-key');
      checkIdempotencyKey(key);
      const request = parseWorkGraphRequest(req.body, deps.verifiers);
      const view = await graphs().start(principalOf(res), request, key);
      res.status(201).location(`/v1/work-graphs/${view.graphId}`).json(view);
    }),
  );

  v1.get(
    '/work-graphs/:graphId',
    requireAction('graphs.read'),
    route(async (req, res) => {
      const graphId = parseRunId(req.params.graphId, 'graphId');
      res.json(await graphs().get(principalOf(res), graphId));
    }),
  );

  v1.get(
    '/work-graphs/:graphId/events',
    requireAction('graphs.read'),
    route(async (req, res) => {
      const graphId = parseRunId(req.params.graphId, 'graphId');
      const afterSeq = parseLastEventId(
        req.header('last-event-id') ??
          (typeof req.query.lastEventId === 'string' ? req.query.lastEventId : undefined),
        graphId,
      );
      // Ownership first (404 before any byte); the events live under the owner's subject prefix.
      const view = await graphs().get(principalOf(res), graphId);
      const release = deps.streamLimiter?.acquire(principalOf(res));
      try {
        await streamEvents(req, res, deps, { tenant: view.tenant, userId: view.userId }, graphId, afterSeq);
      } finally {
        release?.();
      }
    }),
  );

  v1.post(
    '/work-graphs/:graphId/cancel',
    requireAction('graphs.cancel'),
    route(async (req, res) => {
      const graphId = parseRunId(req.params.graphId, 'graphId');
      res.status(202).json(await graphs().cancel(principalOf(res), graphId));
    }),
  );

  v1.post(
    '/nats/credentials',
    requireAction('nats.credentials'),
    route(async (_req, res) => {
      if (!deps.natsCredentials)
        throw new AppError('service_unavailable', 'NATS credentials are not configured on this gateway');
      const principal = principalOf(res);
      const c = await deps.natsCredentials.mint({ tenant: principal.tenant, userId: principal.userId });
      res.setHeader('Cache-Control', 'no-store');
      res.json({
        servers: deps.natsCredentials.servers,
        user_id: principal.userId,
        tenant: principal.tenant,
        subject_prefix: c.subjectPrefix,
        inbox_prefix: c.inboxPrefix,
        jwt: c.jwt,
        seed: c.seed,
        creds: c.creds,
        expires_at: new Date(c.expiresAt * 1000).toISOString(),
      });
    }),
  );

  const rebuilds = (): RebuildService => {
    if (!deps.rebuilds)
      throw new AppError('service_unavailable', 'self-rebuild is not configured on this gateway');
    return deps.rebuilds;
  };

  v1.post(
    '/rebuilds',
    requireAction('rebuilds.start'),
    ...jsonBody(true),
    route(async (req, res) => {
      const parsed = rebuildRequestSchema.safeParse(req.body ?? {});
      if (!parsed.success) throw validationError(parsed.error);
      const view = await rebuilds().start(principalOf(res), parsed.data);
      res.locals.runId = view.rebuildId;
      res.status(201).location(`/v1/rebuilds/${view.rebuildId}`).json(view);
    }),
  );

  v1.get(
    '/rebuild-targets/:target/deployed',
    requireAction('rebuilds.read'),
    route(async (req, res) => {
      const target = parseRunId(req.params.target, 'target');
      res.json(await rebuilds().deployed(principalOf(res), target));
    }),
  );

  v1.get(
    '/rebuilds/:rebuildId',
    requireAction('rebuilds.read'),
    route(async (req, res) => {
      const rebuildId = parseRunId(req.params.rebuildId, 'rebuildId');
      res.locals.runId = rebuildId;
      res.json(await rebuilds().get(principalOf(res), rebuildId));
    }),
  );

  for (const decision of ['approve', 'reject'] as const) {
    v1.post(
      `/rebuilds/:rebuildId/${decision}`,
      requireAction('rebuilds.decide'),
      ...jsonBody(true),
      route(async (req, res) => {
        const rebuildId = parseRunId(req.params.rebuildId, 'rebuildId');
        res.locals.runId = rebuildId;
        const body = rebuildDecisionBodySchema.safeParse(req.body ?? {});
        if (!body.success) throw validationError(body.error);
        res.json(await rebuilds().decide(principalOf(res), rebuildId, decision, body.data.reason));
      }),
    );
  }

  app.use('/v1', v1);
  app.use((req, _res, next) => next(new AppError('not_found', `no route for ${req.method} ${req.path}`)));
  app.use(errorMiddleware(deps.logger));
  return app;
}

/** `GET /metrics`: the registry's text, behind `Authorization: Bearer <token>` when a token is set. */
function metricsHandler(metrics: ApiMetrics, token: string | undefined) {
  const expected = token === undefined ? undefined : createHash('sha256').update(token).digest();
  return route(async (req, res) => {
    if (expected) {
      const given = /^Bearer (\S+)$/.exec(req.header('authorization') ?? '')?.[1] ?? '';
      // Compared as digests: constant time, whatever the lengths.
      if (!timingSafeEqual(createHash('sha256').update(given).digest(), expected)) {
        res.setHeader('WWW-Authenticate', 'Bearer realm="metrics"');
        sendProblem(res, 'unauthenticated', 'GET /metrics needs the metrics bearer token');
        return;
      }
    }
    res.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });
}

/** The `/metrics` endpoint alone, for a listener of its own (API_METRICS_PORT). */
export function createMetricsApp(opts: { metrics: ApiMetrics; token?: string }): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.get('/metrics', metricsHandler(opts.metrics, opts.token));
  app.use((_req, res) => {
    res.status(404).end();
  });
  return app;
}

/** `Last-Event-ID` is an event id `<runId>:<seq>`; events after that seq are sent. */
function parseLastEventId(raw: string | undefined, runId: string): number {
  if (raw === undefined || raw === '') return 0;
  const parsed = parseEventId(raw);
  if (parsed?.runId !== runId) {
    throw new AppError(
      'validation_failed',
      `Last-Event-ID must be an event id of run ${runId} (<runId>:<seq>)`,
      {
        errors: [{ field: 'Last-Event-ID', message: 'must be <runId>:<seq> of this run' }],
      },
    );
  }
  return parsed.seq;
}

/** Server-sent events: `id` = event id (resumable), `event` = event type, `data` = the envelope. */
async function streamEvents(
  req: Request,
  res: Response,
  deps: AppDeps,
  owner: SubjectOwner,
  runId: string,
  afterSeq: number,
): Promise<void> {
  const abort = new AbortController();
  req.on('close', () => abort.abort());
  const onShutdown = (): void => abort.abort();
  deps.shutdown?.addEventListener('abort', onShutdown, { once: true });
  res.writeHead(200, {
    'Content-Type': 'text/event-stream; charset=utf-8',
    'Cache-Control': 'no-cache, no-transform',
    Connection: 'keep-alive',
    'X-Accel-Buffering': 'no',
  });
  res.write('retry: 2000\n: connected\n\n');
  const heartbeat = setInterval(() => res.write(': ping\n\n'), deps.sseHeartbeatMs ?? 15_000);
  let sent = 0;
  try {
    for await (const event of deps.events.stream(owner, runId, afterSeq, abort.signal)) {
      res.write(`id: ${event.id}\nevent: ${event.event_type}\ndata: ${JSON.stringify(event)}\n\n`);
      sent += 1;
    }
  } catch (err) {
    if (!abort.signal.aborted) {
      deps.logger.warn({ event: 'sse.error', runId, err }, 'event stream failed');
      res.write(
        `event: error\ndata: ${JSON.stringify({ code: 'service_unavailable', detail: 'event stream interrupted; reconnect with Last-Event-ID' })}\n\n`,
      );
    }
  } finally {
    clearInterval(heartbeat);
    deps.shutdown?.removeEventListener('abort', onShutdown);
    deps.logger.info({ event: 'sse.closed', runId, afterSeq, sent }, 'event stream closed');
    res.end();
  }
}
