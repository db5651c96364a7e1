/**
 * In-memory stand-ins for narrow unit tests of the gateway (HTTP and gRPC front ends, benches).
 * The real run service, event source and verifier file are exercised by the integration tests.
 */
import {
  AppError,
  VerifierCatalog,
  type Principal,
  type RunRequest,
  type RunView,
  type WorkGraphRequest,
  type WorkGraphView,
} from '../../contracts';
import type { RunEventSource } from '../../api/events/source';
import type { RunService } from '../../api/runs/service';
import type { WorkGraphService } from '../../api/graphs/service';
import {
  createTokenVerifier,
  type TokenVerifier,
  type TokenVerifierOptions,
} from '../../api/auth/token-verifier';

export function buildView(overrides: Partial<RunView> = {}): RunView {
  return {
    runId: 'run-abc',
    status: 'created',
    tenant: 'acme',
    userId: 'alice',
    mood: 'CALM',
    repo: '/srv/repo',
    baseRef: 'main',
    workItem: { id: 'wi-1', description: 'd', riskTier: 'low' },
    verifiers: [],
    createdAt: new Date(0).toISOString(),
    events: { emitted: 0, published: 0 },
    ...overrides,
  };
}

/**
 * A run service holding one run (`run-abc` unless `runId`), owned by `owner` (null: visible to anyone); any other
 * run, or another user, is not_found. `started` records every start request.
 */
export function fakeRunService(
  opts: { owner?: string | null; runId?: string; view?: RunView } = {},
): RunService & {
  started: { principal: Principal; request: RunRequest; key?: string }[];
} {
  const owner = opts.owner === undefined ? 'alice' : opts.owner;
  const known = opts.runId ?? 'run-abc';
  const view = opts.view ?? buildView({ runId: known });
  const visible = (p: Principal, runId: string): void => {
    if (runId !== known || (owner !== null && p.userId !== owner)) {
      throw new AppError('not_found', `run ${runId} does not exist`);
    }
  };
  const started: { principal: Principal; request: RunRequest; key?: string }[] = [];
  return {
    started,
    start: async (principal, request, key) => {
      started.push({ principal, request, ...(key ? { key } : {}) });
      return { ...view, userId: principal.userId, tenant: principal.tenant };
    },
    get: async (p, runId) => (visible(p, runId), view),
    cancel: async (p, runId) => (visible(p, runId), view),
    checkVisible: async (p, runId) => (visible(p, runId), { tenant: view.tenant, userId: view.userId }),
    list: async () => ({ runs: [] }),
    decide: async (p, runId) => (
      visible(p, runId),
      { result: { outcome: 'approved', approvals: 1, quorum: 1 }, run: view }
    ),
    answerInterrupt: async (p, runId, interruptId, a) => (
      visible(p, runId),
      {
        id: interruptId,
        kind: 'REQUEST_REVIEW',
        question: 'q',
        options: ['proceed', 'abort'],
        defaultAction: 'abort',
        deadline: new Date(0).toISOString(),
        status: 'answered',
        answer: a.answer,
      }
    ),
    rerun: async (p, runId) => (visible(p, runId), view),
    retryDelivery: async (p, runId) => {
      visible(p, runId);
      throw new AppError('not_delivered', `run ${runId} has no committed branch of a remote repository`);
    },
  };
}

/**
 * A work graph service holding one graph (`graph-abc`) owned by `owner`; any other graph, or
 * another user, is not_found. `started` records every start request.
 */
export function fakeWorkGraphService(opts: { owner?: string } = {}): WorkGraphService & {
  started: { principal: Principal; request: WorkGraphRequest; key?: string }[];
  cancelled: string[];
} {
  const owner = opts.owner ?? 'alice';
  const view = (request?: WorkGraphRequest): WorkGraphView => ({
    graphId: 'graph-abc',
    status: 'running',
    tenant: 'acme',
    userId: owner,
    repo: request?.repo ?? '/srv/repo',
    baseRef: request?.baseRef ?? 'main',
    mood: request?.mood ?? 'CALM',
    parallelism: request?.parallelism ?? 4,
    counts: { pending: request?.items.length ?? 0 },
    items: (request?.items ?? []).map((i) => ({
      id: i.id,
      status: 'pending',
      dependsOn: i.dependsOn,
      runs: [],
    })),
    continuedAsNew: 0,
    createdAt: new Date(0).toISOString(),
  });
  const visible = (p: Principal, graphId: string): void => {
    if (graphId !== 'graph-abc' || p.userId !== owner) {
      throw new AppError('not_found', `work graph ${graphId} does not exist`);
    }
  };
  const started: { principal: Principal; request: WorkGraphRequest; key?: string }[] = [];
  const cancelled: string[] = [];
  return {
    started,
    cancelled,
    start: async (principal, request, key) => {
      started.push({ principal, request, ...(key ? { key } : {}) });
      return { ...view(request), userId: principal.userId, tenant: principal.tenant };
    },
    get: async (p, graphId) => (visible(p, graphId), view()),
    cancel: async (p, graphId) => (visible(p, graphId), cancelled.push(graphId), view()),
  };
}

/** An event source with no events. */
export const emptyEventSource: RunEventSource = {
  stream: () => ({
    [Symbol.asyncIterator]: () => ({
      next: () => Promise.resolve({ done: true as const, value: undefined }),
    }),
  }),
};

/** An allow-list with one verifier, `V-1`. */
export function oneVerifierCatalog(): VerifierCatalog {
  return new VerifierCatalog([
    {
      id: 'V-1',
      description: 'one',
      argv: ['true'],
      timeoutSeconds: 10,
      scopes: [],
      moods: [],
      artifacts: [],
    },
  ]);
}

/** The gateway's verifier for one test issuer (audience `choiros-api`), with overridable options. */
export function testTokenVerifier(
  issuer: string,
  overrides: Partial<TokenVerifierOptions> = {},
): TokenVerifier {
  return createTokenVerifier({
    issuers: [{ issuer, audience: 'choiros-api' }],
    algorithms: ['ES256', 'RS256'],
    clockToleranceSeconds: 30,
    tenantClaim: 'tenant',
    defaultTenant: 'default',
    ...overrides,
  });
}
