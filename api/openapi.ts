/**
 * The OpenAPI 3.1 document of the HTTP API, generated from the same zod schemas the routes
 * validate with and the responses are typed by (contracts/), so the two cannot drift apart.
 */
import { z } from 'zod';
import {
  ERROR_CODES,
  approvalBodySchema,
  interruptAnswerBodySchema,
  interruptViewSchema,
  rerunRequestSchema,
  rebuildDecisionBodySchema,
  rebuildRequestSchema,
  rebuildViewSchema,
  deployedViewSchema,
  runListPageSchema,
  runListQuerySchema,
  runRequestSchema,
  runViewSchema,
  deliveryViewSchema,
  workGraphRequestSchema,
  workGraphViewSchema,
} from '../contracts';

const json = (schema: z.ZodType, io: 'input' | 'output' = 'output'): Record<string, unknown> =>
  z.toJSONSchema(schema, { target: 'draft-2020-12', io, unrepresentable: 'any' });

const problemSchema = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  code: z.enum(ERROR_CODES),
  detail: z.string(),
  instance: z.string().optional(),
  errors: z.array(z.object({ field: z.string(), message: z.string() })).optional(),
});

const natsCredentialsSchema = z.object({
  servers: z.array(z.string()),
  user_id: z.string(),
  tenant: z.string(),
  subject_prefix: z.string(),
  inbox_prefix: z.string(),
  jwt: z.string(),
  seed: z.string(),
  creds: z.string(),
  expires_at: z.string(),
});

const approvalResponseSchema = z.object({
  result: z.object({
    outcome: z.enum(['approved', 'rejected', 'pending']),
    approvals: z.number().int(),
    quorum: z.number().int(),
  }),
  run: runViewSchema,
});

const readinessSchema = z.object({
  status: z.enum(['ready', 'not_ready']),
  checks: z.record(z.string(), z.object({ ok: z.boolean() })),
});

const problems = (...statuses: number[]): Record<string, unknown> =>
  Object.fromEntries(
    statuses.map((s) => [
      String(s),
      {
        description: `problem (${s})`,
        content: { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } },
      },
    ]),
  );
const ok = (description: string, ref: string, status = '200'): Record<string, unknown> => ({
  [status]: {
    description,
    content: { 'application/json': { schema: { $ref: `#/components/schemas/${ref}` } } },
  },
});
const graphIdParam = {
  name: 'graphId',
  in: 'path',
  required: true,
  schema: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' },
};
const runIdParam = {
  name: 'runId',
  in: 'path',
  required: true,
  schema: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' },
};

const rebuildIdParam = {
  name: 'rebuildId',
  in: 'path',
  required: true,
  schema: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' },
};

function decision(summary: string): Record<string, unknown> {
  return {
    security: [{ bearer: [] }],
    summary,
    parameters: [rebuildIdParam],
    requestBody: {
      required: false,
      content: { 'application/json': { schema: { $ref: '#/components/schemas/RebuildDecision' } } },
    },
    responses: {
      ...ok('the rebuild after the decision', 'RebuildView'),
      ...problems(400, 401, 403, 404, 409, 429, 503),
    },
  };
}

function queryParams(schema: z.ZodObject): Record<string, unknown>[] {
  const js = json(schema, 'input') as { properties?: Record<string, unknown>; required?: string[] };
  return Object.entries(js.properties ?? {}).map(([name, s]) => ({
    name,
    in: 'query',
    required: js.required?.includes(name) ?? false,
    schema: s,
  }));
}

/** Every documented route, as `METHOD /path` with `{param}` placeholders. */
export function documentedRoutes(doc = openApiDocument()): string[] {
  const paths = doc.paths as Record<string, Record<string, unknown>>;
  return Object.entries(paths).flatMap(([path, ops]) =>
    Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`),
  );
}

export function openApiDocument(): Record<string, unknown> {
  const secured = { security: [{ bearer: [] }] };
  return {
    openapi: '3.1.0',
    info: {
      title: 'ChoirOS Orchestrator API',
      version: '1',
      description:
        'Start, read, watch and cancel verified code runs. Errors are RFC 9457 problem+json with a stable `code`.',
    },
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } },
      schemas: {
        RunRequest: json(runRequestSchema, 'input'),
        RunView: json(runViewSchema),
        RunListPage: json(runListPageSchema),
        WorkGraphRequest: json(workGraphRequestSchema, 'input'),
        WorkGraphView: json(workGraphViewSchema),
        NatsCredentials: json(natsCredentialsSchema),
        ApprovalBody: json(approvalBodySchema, 'input'),
        ApprovalResponse: json(approvalResponseSchema),
        InterruptAnswer: json(interruptAnswerBodySchema, 'input'),
        Interrupt: json(interruptViewSchema),
        RerunRequest: json(rerunRequestSchema, 'input'),
        DeliveryView: json(deliveryViewSchema),
        Readiness: json(readinessSchema),
        Problem: json(problemSchema),
        RebuildRequest: json(rebuildRequestSchema, 'input'),
        RebuildDecision: json(rebuildDecisionBodySchema, 'input'),
        RebuildView: json(rebuildViewSchema),
        DeployedView: json(deployedViewSchema),
      },
    },
    paths: {
      '/healthz': { get: { summary: 'Liveness', responses: { '200': { description: 'the process runs' } } } },
      '/readyz': {
        get: {
          summary: 'Readiness: Temporal and NATS reachable',
          responses: {
            ...ok('ready', 'Readiness'),
            '503': {
              description: 'not ready',
              content: { 'application/json': { schema: { $ref: '#/components/schemas/Readiness' } } },
            },
          },
        },
      },
      '/openapi.json': {
        get: { summary: 'This document', responses: { '200': { description: 'OpenAPI 3.1' } } },
      },
      '/metrics': {
        get: {
          summary:
            'Prometheus metrics (on API_METRICS_PORT instead when set; bearer token when API_METRICS_TOKEN_FILE is set)',
          responses: {
            '200': { description: 'text exposition format' },
            '401': { description: 'the metrics token is required and was not given' },
          },
        },
      },
      '/v1/runs': {
        post: {
          ...secured,
          summary: 'Start a run (scope runs:write)',
          parameters: [
            {
              name: 'Idempotency-Key',
              in: 'header',
              required: false,
              schema: { type: 'string', pattern: '^[\\x21-\\x7e]{1,255}$' },
            },
          ],
          requestBody: {
            required: true,
            content: { 'application/json': { schema: { $ref: '#/components/schemas/RunRequest' } } },
          },
          responses: {
            ...ok('the run (same Idempotency-Key, same run)', 'RunView', '201'),
            ...problems(400, 401, 403, 413, 415, 422, 429, 503),
            '429': {
              description:
                "problem (429): `rate_limited`, or `queue_full` when the tenant's runs not yet running reach CHOIROS_MAX_QUEUED_PER_TENANT; retry after `Retry-After` seconds with the same Idempotency-Key",
              headers: { 'Retry-After': { schema: { type: 'integer', minimum: 1 } } },
              content: { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } },
            },
          },
        },
        get: {
          ...secured,
          summary: "List the caller's runs (tenant admins: their tenant's), newest first (scope runs:read)",
          parameters: queryParams(runListQuerySchema),
          responses: { ...ok('a page of runs', 'RunListPage'), ...problems(400, 401, 403, 429) },
        },
      },
      '/v1/runs/{runId}': {
        get: {
          ...secured,
          summary: 'Read a run (scope runs:read)',
          parameters: [runIdParam],
          responses: { ...ok('the run', 'RunView'), ...problems(400, 401, 403, 404, 429) },
        },
      },
      '/v1/runs/{runId}/cancel': {
        post: {
          ...secured,
          summary: 'Cancel a run; its sandbox is cleaned up (scope runs:write)',
          parameters: [runIdParam],
          responses: {
            ...ok('cancellation requested', 'RunView', '202'),
            ...problems(400, 401, 403, 404, 429),
          },
        },
      },
      ...Object.fromEntries(
        (['approve', 'reject'] as const).map((decision) => [
          `/v1/runs/{runId}/${decision}`,
          {
            post: {
              ...secured,
              summary:
                decision === 'approve'
                  ? 'Approve a run waiting in awaiting_approval, as the caller (own runs: runs:write; reviewers: runs:approve). The author cannot approve where independent review is required; a quorum needs distinct approvers.'
                  : 'Reject a run waiting in awaiting_approval; it is discarded (own runs: runs:write; reviewers: runs:approve)',
              parameters: [runIdParam],
              requestBody: {
                required: false,
                content: { 'application/json': { schema: { $ref: '#/components/schemas/ApprovalBody' } } },
              },
              responses: {
                ...ok('the decision was recorded', 'ApprovalResponse'),
                ...problems(400, 401, 403, 404, 409, 415, 429),
              },
            },
          },
        ]),
      ),
      '/v1/runs/{runId}/interrupts/{interruptId}/answer': {
        post: {
          ...secured,
          summary:
            "Answer a run's open human interrupt with one of its options (own runs: runs:write; reviewers: runs:approve)",
          parameters: [runIdParam, { ...runIdParam, name: 'interruptId' }],
          requestBody: {
            required: true,
            content: { 'application/json': { schema: { $ref: '#/components/schemas/InterruptAnswer' } } },
          },
          responses: {
            ...ok('the answered interrupt', 'Interrupt'),
            ...problems(400, 401, 403, 404, 409, 415, 429),
          },
        },
      },
      '/v1/runs/{runId}/rerun': {
        post: {
          ...secured,
          summary:
            'Start a new run of the same work item from the exact base commit and sandbox image the run recorded, optionally in another mood (scope runs:write)',
          parameters: [
            runIdParam,
            {
              name: 'Idempotency-Key',
              in: 'header',
              required: false,
              schema: { type: 'string', pattern: '^[\\x21-\\x7e]{1,255}$' },
            },
          ],
          requestBody: {
            required: false,
            content: { 'application/json': { schema: { $ref: '#/components/schemas/RerunRequest' } } },
          },
          responses: {
            ...ok('the new run, linked to the first by rerunOf', 'RunView', '201'),
            ...problems(400, 401, 403, 404, 409, 415, 422, 429, 503),
          },
        },
      },
      '/v1/runs/{runId}/delivery': {
        post: {
          ...secured,
          summary:
            "Retry the failed delivery of a committed run's branch to its remote origin; answers the delivery (scope runs:write)",
          parameters: [runIdParam],
          responses: {
            ...ok('the delivery after the retry (or the successful one already made)', 'DeliveryView'),
            ...problems(400, 401, 403, 404, 409, 415, 429, 503),
          },
        },
      },
      '/v1/runs/{runId}/events': {
        get: {
          ...secured,
          summary: "The run's events as server-sent events, resumable with Last-Event-ID (scope runs:read)",
          parameters: [
            runIdParam,
            { name: 'Last-Event-ID', in: 'header', required: false, schema: { type: 'string' } },
          ],
          responses: {
            '200': {
              description: 'text/event-stream; id = event id, event = event type, data = envelope',
              content: { 'text/event-stream': { schema: { type: 'string' } } },
            },
            ...problems(400, 401, 403, 404, 429),
          },
        },
      },
      '/v1/work-graphs': {
        post: {
          ...secured,
          summary:
            'Start a work graph: items run in dependency order, each as a run from the graph branch (scope runs:write). A cycle, an unknown dependency or a duplicate item is a 400 naming them.',
          parameters: [
            {
              name: 'Idempotency-Key',
              in: 'header',
              required: false,
              schema: { type: 'string', pattern: '^[\\x21-\\x7e]{1,255}$' },
            },
          ],
          requestBody: {
            required: true,
            content: { 'application/json': { schema: { $ref: '#/components/schemas/WorkGraphRequest' } } },
          },
          responses: {
            ...ok('the graph (same Idempotency-Key, same graph)', 'WorkGraphView', '201'),
            ...problems(400, 401, 403, 413, 415, 422, 429, 503),
          },
        },
      },
      '/v1/work-graphs/{graphId}': {
        get: {
          ...secured,
          summary: 'Read a work graph: its status and every item with its runs (scope runs:read)',
          parameters: [graphIdParam],
          responses: { ...ok('the graph', 'WorkGraphView'), ...problems(400, 401, 403, 404, 429, 503) },
        },
      },
      '/v1/work-graphs/{graphId}/events': {
        get: {
          ...secured,
          summary:
            "The graph's own events (graph.created, workitem.*, run.mood.transition, graph.completed) as server-sent events, resumable with Last-Event-ID (scope runs:read)",
          parameters: [
            graphIdParam,
            { name: 'Last-Event-ID', in: 'header', required: false, schema: { type: 'string' } },
          ],
          responses: {
            '200': {
              description: 'text/event-stream; id = event id, event = event type, data = envelope',
              content: { 'text/event-stream': { schema: { type: 'string' } } },
            },
            ...problems(400, 401, 403, 404, 429, 503),
          },
        },
      },
      '/v1/work-graphs/{graphId}/cancel': {
        post: {
          ...secured,
          summary:
            'Cancel a work graph; its runs are cancelled and their sandboxes cleaned up (scope runs:write)',
          parameters: [graphIdParam],
          responses: {
            ...ok('cancellation requested', 'WorkGraphView', '202'),
            ...problems(400, 401, 403, 404, 429, 503),
          },
        },
      },
      '/v1/rebuilds': {
        post: {
          ...secured,
          summary:
            'Rebuild a target from a git ref: verify, build images, wait for approval, deploy, roll back on failed health (scope rebuild:write). One per target at a time: 409 rebuild_in_progress names the running one.',
          requestBody: {
            required: false,
            content: { 'application/json': { schema: { $ref: '#/components/schemas/RebuildRequest' } } },
          },
          responses: {
            ...ok('the rebuild, started', 'RebuildView', '201'),
            ...problems(400, 401, 403, 409, 413, 415, 429, 503),
          },
        },
      },
      '/v1/rebuilds/{rebuildId}': {
        get: {
          ...secured,
          summary:
            "A rebuild's stage, progress, verify results, images and deploy (scope rebuild:write or rebuild:approve)",
          parameters: [rebuildIdParam],
          responses: { ...ok('the rebuild', 'RebuildView'), ...problems(400, 401, 403, 404, 429, 503) },
        },
      },
      '/v1/rebuild-targets/{target}/deployed': {
        get: {
          ...secured,
          summary:
            'What a rebuild target runs now: commit, services and image ids of its last completed rebuild (scope rebuild:write or rebuild:approve)',
          parameters: [
            {
              name: 'target',
              in: 'path',
              required: true,
              schema: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' },
            },
          ],
          responses: {
            ...ok('the deployed release', 'DeployedView'),
            ...problems(400, 401, 403, 404, 429, 503),
          },
        },
      },
      '/v1/rebuilds/{rebuildId}/approve': {
        post: decision('Approve a rebuild waiting for approval: it deploys (scope rebuild:approve)'),
      },
      '/v1/rebuilds/{rebuildId}/reject': {
        post: decision('Reject a rebuild waiting for approval: nothing is deployed (scope rebuild:approve)'),
      },
      '/v1/nats/credentials': {
        post: {
          ...secured,
          summary: 'Short-lived NATS credentials: subscribe to your own prefix only (scope runs:read)',
          responses: { ...ok('credentials', 'NatsCredentials'), ...problems(401, 403, 429, 503) },
        },
      },
    },
  };
}
