/** Integration-test helpers: real connections to the services the global setup started, test workers, the API. */
import { ACCOUNT_SEED_FILE } from '../../infra/nats/auth';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import {
  DefaultLogger,
  NativeConnection,
  Runtime,
  type WorkflowBundleWithSourceMap,
} from '@temporalio/worker';
import Docker from 'dockerode';
import { connect, credsAuthenticator, type NatsConnection } from 'nats';
import pino from 'pino';
import { Workspaces, type WorkspaceConfig } from '../../activities/workspace/workspace';
import { poll } from './poll';
import {
  isPlatformOperatorTenant,
  issuersForTenant,
  parseVerifierFile,
  tenantPolicyOf,
  type SubjectOwner,
  type TenantsConfig,
  type EventEnvelope,
  type RebuildTarget,
  type RebuildTimings,
} from '../../contracts';
import { createTemporalRebuildService } from '../../api/rebuilds/service';
import { rebuildTargets } from '../../api/rebuilds/targets';
import { createApp } from '../../api/app';
import { createTokenVerifier, type TokenVerifier } from '../../api/auth/token-verifier';
import { createJetStreamEventSource } from '../../api/events/source';
import { mintUserCreds } from '../../api/nats/credentials';
import { createTemporalRunService } from '../../api/runs/service';
import { createTemporalWorkGraphService } from '../../api/graphs/service';
import {
  DEV_AUDIENCE,
  loadOrCreateDevKey,
  mintDevToken,
  serveDevIssuer,
  type DevTokenClaims,
} from '../../infra/dev-issuer/issuer';
import { loadWorkerConfig } from '../../worker/config';
import { createRepoAccess, writeTenantsConfig, type RepoAccess } from '../../tenancy';
import { bundleWorkflows } from '../../worker/bundle';
import { createWorkerSet, type WorkerSet } from '../../worker/workers';

export { poll };

export const ROOT = resolve(__dirname, '../..');
export const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'warn' });

// Quiet SDK logs in tests (worker state changes), unless asked for.
Runtime.install({ logger: new DefaultLogger(process.env.TEST_LOG_LEVEL === 'debug' ? 'DEBUG' : 'WARN') });

function need(name: string): string {
  const v = process.env[name];
  if (!v)
    throw new Error(
      `${name} is not set: integration tests must run through jest's integration project (global setup)`,
    );
  return v;
}

export const env = {
  temporalAddress: () => need('CHOIROS_TEST_TEMPORAL_ADDRESS'),
  natsUrl: () => need('CHOIROS_TEST_NATS_URL'),
  workerCreds: () => process.env.CHOIROS_TEST_NATS_WORKER_CREDS,
  apiCreds: () => process.env.CHOIROS_TEST_NATS_API_CREDS,
  natsAuthDir: () => need('CHOIROS_TEST_NATS_AUTH_DIR'),
  workDir: () => need('CHOIROS_TEST_WORK_DIR'),
  sandboxImage: () => need('CHOIROS_TEST_SANDBOX_IMAGE'),
};

export async function connectNats(credsFile: string | undefined, name: string): Promise<NatsConnection> {
  return connect({
    servers: env.natsUrl(),
    name,
    authenticator: credsFile ? credsAuthenticator(await readFile(credsFile)) : undefined,
  });
}

/** A git repository with one commit on `main`, in a fresh temp dir. */
export async function makeGitRepo(
  files: Record<string, string> = { 'README.md': 'hello\n' },
): Promise<{ path: string; head: string }> {
  const path = await mkdtemp(join(env.workDir(), 'repo-'));
  const g = (...args: string[]): string =>
    execFileSync('git', ['-c', 'user.name=Test', '-c', 'user.email=test@example.invalid', ...args], {
      cwd: path,
      encoding: 'utf8',
    }).trim();
  g('init', '-q', '-b', 'main');
  for (const [name, content] of Object.entries(files)) await writeFile(join(path, name), content);
  g('add', '.');
  g('commit', '-qm', 'initial');
  return { path, head: g('rev-parse', 'HEAD') };
}

export function git(repo: string, ...args: string[]): string {
  return execFileSync('git', ['-c', `safe.directory=*`, ...args], { cwd: repo, encoding: 'utf8' }).trim();
}

let bundle: Promise<WorkflowBundleWithSourceMap> | undefined;
/** Bundles the workflows once per test file. */
export function workflowBundle(): Promise<WorkflowBundleWithSourceMap> {
  bundle ??= bundleWorkflows();
  return bundle;
}

export interface TestWorker {
  set: WorkerSet;
  running: Promise<void>;
  dataDir: string;
  stop(): Promise<void>;
}

/** Starts the real worker set against the test services, with its own host id and data dir. */
/** Tenants the integration tests act as (the test API adds them on demand, the worker's file has them). */
export const TEST_TENANTS = ['acme', 'globex', 'default', 'initech', 'other', 'grpc-control', 't', 'a'];

/**
 * Writes a worker's tenants file: TEST_TENANTS and `extra` (a test's own tenant names), each granted
 * the test work dir. Workers re-check repository grants, so they must know the tenants the test API
 * admits.
 */
export function writeTestTenantsFile(path: string, extra: readonly string[] = []): Promise<string> {
  return writeTenantsConfig(path, {
    version: 1,
    tenants: Object.fromEntries(
      [...TEST_TENANTS, ...extra].map((t) => [t, { repos: [`${env.workDir()}/`] }]),
    ),
  });
}

export async function startTestWorker(
  hostId: string,
  opts: {
    natsUrl?: string;
    natsCreds?: string;
    temporalAddress?: string;
    eventFaults?: (event: EventEnvelope, attempt: number) => void;
    /** Extra worker environment (CHOIROS_* settings). */
    extraEnv?: Record<string, string>;
    /**
     * The worker's tenants file (it re-checks repository grants): by default the tenants the tests
     * use, each granted the test work dir. A test with its own tenants gives the API's config here.
     */
    tenants?: TenantsConfig;
    /** Tenant names of the test's own, added to the default tenants. */
    extraTenants?: string[];
    /** The worker's logger (tests that read its log lines); the shared test logger otherwise. */
    logger?: pino.Logger;
  } = {},
): Promise<TestWorker> {
  const dataDir = await mkdtemp(join(env.workDir(), `data-${hostId}-`));
  const tenantsPath = join(dataDir, 'tenants.yaml');
  const tenantsFile = opts.tenants
    ? await writeTenantsConfig(tenantsPath, opts.tenants)
    : await writeTestTenantsFile(tenantsPath, opts.extraTenants);
  const config = loadWorkerConfig({
    TEMPORAL_ADDRESS: opts.temporalAddress ?? env.temporalAddress(),
    NATS_URL: opts.natsUrl ?? env.natsUrl(),
    CHOIROS_DATA_DIR: dataDir,
    CHOIROS_VERIFIERS_FILE: join(ROOT, 'test/fixtures/verifiers.yaml'),
    CHOIROS_SANDBOX_IMAGE: env.sandboxImage(),
    CHOIROS_HOST_ID: hostId,
    CHOIROS_TENANTS_FILE: tenantsFile,
    // Off unless a test asks: the Docker engine is shared with other test runs.
    CHOIROS_SWEEP_INTERVAL_SECONDS: '0',
    LOG_LEVEL: 'warn',
    // The warm pool (decision 0016) for every test worker: e.g. the hostile suites with the pool on.
    ...(process.env.CHOIROS_TEST_SANDBOX_POOL_SIZE
      ? { CHOIROS_SANDBOX_POOL_SIZE: process.env.CHOIROS_TEST_SANDBOX_POOL_SIZE }
      : {}),
    ...opts.extraEnv,
  });
  const connection = await NativeConnection.connect({ address: config.TEMPORAL_ADDRESS });
  const nats = await connect({
    servers: config.NATS_URL,
    name: `test-worker-${hostId}`,
    authenticator: credsAuthenticator(
      await readFile(opts.natsCreds ?? need('CHOIROS_TEST_NATS_WORKER_CREDS')),
    ),
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
  });
  const set = await createWorkerSet({
    config,
    connection,
    nats,
    docker: new Docker(),
    logger: opts.logger ?? logger,
    workflowBundle: await workflowBundle(),
    eventFaults: opts.eventFaults,
  });
  const running = set.run();
  return {
    set,
    running,
    dataDir,
    async stop() {
      set.shutdown();
      await running;
      await nats.drain();
      await connection.close();
    },
  };
}

export interface TestApi {
  url: string;
  client: Client;
  /**
   * A dev token (tenant `acme`, user `alice` unless the claims say otherwise). Unless the API was
   * started with `tenants`, a tenant named here for the first time is added to its tenants config
   * with a grant of the test work dir, where makeGitRepo creates repositories.
   */
  token(claims?: Partial<DevTokenClaims>): Promise<string>;
  /** The tenants config the API decides with (grants, issuers); tests may change it. */
  tenants: TenantsConfig;
  /** The API's token verifier and repository gate, for other front ends under test (gRPC). */
  verifyToken: TokenVerifier;
  repoAccess: RepoAccess;
  issuer: string;
  stop(): Promise<void>;
}

/** The real API app (real jose verification against a dev issuer over HTTP, real Temporal client). */
export async function startTestApi(
  opts: {
    temporalAddress?: string;
    /** Rebuild targets the API knows (self-rebuild routes answer 503 without). */
    rebuildTargets?: RebuildTarget[];
    rebuildTimings?: Partial<RebuildTimings>;
    /** A fixed tenants config (no tenant is added on demand). */
    tenants?: TenantsConfig;
    /** The platform's own paths besides its checkout (e.g. a worker's data dir): never a run's repository. */
    platformPaths?: string[];
    /** Backpressure bound of `POST /v1/runs` (CHOIROS_MAX_QUEUED_PER_TENANT); none by default. */
    maxQueuedPerTenant?: number;
    /** The API's logger (tests that read its log lines); the shared test logger otherwise. */
    logger?: pino.Logger;
  } = {},
): Promise<TestApi> {
  const apiLogger = opts.logger ?? logger;
  const fixedTenants = opts.tenants !== undefined;
  // acme operates the platform here (the rebuild fixtures' release managers are acme's).
  const tenants: TenantsConfig = opts.tenants ?? {
    version: 1,
    platform: { operators: ['acme'] },
    tenants: {},
  };
  const ensureTenant = (tenant: string): void => {
    if (fixedTenants || Object.prototype.hasOwnProperty.call(tenants.tenants, tenant)) return;
    tenants.tenants[tenant] = { repos: [`${env.workDir()}/`] };
  };
  const repoAccess = createRepoAccess({ config: tenants, platformPaths: opts.platformPaths ?? [] });
  const tenantPolicy = (tenant: string) => tenantPolicyOf(tenants, tenant);
  const keyDir = await mkdtemp(join(env.workDir(), 'issuer-'));
  const key = await loadOrCreateDevKey(keyDir);
  const issuer = await serveDevIssuer({ key, host: '127.0.0.1', port: 0 });
  const issuerUrl = issuer.issuer;
  const connection = await Connection.connect({ address: opts.temporalAddress ?? env.temporalAddress() });
  const client = new Client({ connection });
  const nats = await connectNats(env.apiCreds(), 'test-api');
  const verifiers = parseVerifierFile(
    await readFile(join(ROOT, 'test/fixtures/verifiers.yaml'), 'utf8'),
    'test verifiers',
  );
  const verifyToken = createTokenVerifier({
    issuers: [{ issuer: issuerUrl, audience: DEV_AUDIENCE }],
    algorithms: ['ES256'],
    clockToleranceSeconds: 5,
    tenantClaim: 'tenant',
    defaultTenant: 'default',
    tenantIssuers: (tenant) => issuersForTenant(tenants, tenant, issuerUrl),
  });
  const app = createApp({
    verifyToken,
    runs: createTemporalRunService({
      client,
      logger: apiLogger,
      repoAccess,
      tenantPolicy,
      ...(opts.maxQueuedPerTenant
        ? { queueBound: { maxQueuedPerTenant: opts.maxQueuedPerTenant, retryAfterSeconds: 7 } }
        : {}),
    }),
    graphs: createTemporalWorkGraphService({ client, logger: apiLogger, repoAccess, tenantPolicy }),
    ...(opts.rebuildTargets
      ? {
          rebuilds: createTemporalRebuildService({
            isOperatorTenant: (tenant) => isPlatformOperatorTenant(tenants, tenant),
            client,
            targets: rebuildTargets(opts.rebuildTargets),
            defaultApprovalTimeoutSeconds: 300,
            ...(opts.rebuildTimings ? { timings: opts.rebuildTimings } : {}),
            logger: apiLogger,
          }),
        }
      : {}),
    events: createJetStreamEventSource(nats),
    natsCredentials: {
      servers: [env.natsUrl()],
      mint: async (owner: SubjectOwner) =>
        mintUserCreds(
          (await readFile(join(env.natsAuthDir(), ACCOUNT_SEED_FILE), 'utf8')).trim(),
          owner,
          300,
        ),
    },
    sseHeartbeatMs: 1000,
    verifiers,
    readiness: [
      { name: 'temporal', check: async () => void (await connection.healthService.check({})) },
      { name: 'nats', check: async () => void (await nats.rtt()) },
    ],
    logger: apiLogger,
  });
  const server: Server = await new Promise((res) => {
    const s = app.listen(0, '127.0.0.1', () => res(s));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    client,
    issuer: issuerUrl,
    tenants,
    verifyToken,
    repoAccess,
    token: (claims = {}) => {
      ensureTenant(claims.tenant ?? 'acme');
      return mintDevToken(
        key,
        { issuer: issuerUrl, audience: DEV_AUDIENCE },
        { sub: 'alice', tenant: 'acme', ...claims },
      );
    },
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await issuer.close();
      await nats.drain();
      await connection.close();
    },
  };
}

/** The workspace module on its own (activities/workspace), with small limits, under `dataDir`. */
export function testWorkspaces(dataDir: string, overrides: Partial<WorkspaceConfig> = {}): Workspaces {
  return new Workspaces({
    root: join(dataDir, 'worktrees'),
    mirrorRoot: join(dataDir, 'mirrors'),
    sandboxUser: '10001:10001',
    quotaMb: 0,
    maxEntries: 1000,
    maxBytes: 1024 * 1024,
    logger: pino({ level: 'silent' }),
    ...overrides,
  });
}
