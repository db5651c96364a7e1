/** Builds the worker set of one process: orchestration (workflows + event flush), sandbox and host queues. */
import { copyFile, mkdir, rename } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Client, WorkflowNotFoundError } from '@temporalio/client';
import { Worker, type NativeConnection, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type Docker from 'dockerode';
import type { NatsConnection } from 'nats';
import type { Logger } from 'pino';
import { TASK_QUEUES, hostSandboxQueue, tenantCaps } from '../contracts';
import { createRemoteCredentials, createRepoAccess, loadTenantsFile } from '../tenancy';
import { createDeliveryActivities } from '../activities/delivery/activities';
import { githubForge } from '../activities/delivery/forge';
import type { RemoteMirrorOptions } from '../activities/workspace/mirror';
import {
  createEventActivities,
  ensureEventStream,
  publishCarried,
  type EventActivityDeps,
} from '../activities/events/publisher';
import { createAdmissionActivities } from '../activities/admission/activities';
import { createStepActivities } from '../activities/steps/activities';
import { LocalArtifactStore } from '../activities/artifacts/local-store';
import { HOST_LABEL, startSweeper, type RunState } from '../activities/sandbox/sweeper';
import {
  createSandboxActivities,
  isPoolDriver,
  workspacesFor,
  type SandboxDeps,
} from '../activities/sandbox/activities';
import { SandboxPool } from '../activities/sandbox/pool';
import { createGraphBranchActivities } from '../activities/workspace/graph-branch';
import { quotaUnavailable } from '../activities/workspace/quota';
import { configureGitLocks } from '../activities/workspace/locks';
import { DockerSandboxDriver, EGRESS_PROXY_SCRIPT } from '../activities/sandbox/docker-driver';
import type { SandboxDriver } from '../activities/sandbox/driver';
import { LocalSandboxDriver } from '../activities/sandbox/local-driver';
import { loadVerifierCatalog } from '../activities/verifiers/catalog';
import type { Carried, CreateSandboxInput } from '../activities/types';
import { createBuildActivities } from '../activities/images/activities';
import { createDeployActivities } from '../activities/deploy/activities';
import type { Deployer } from '../activities/deploy/deployer';
import { resolveSecretRefs, type WorkerConfig } from './config';
import { createWorkerMetrics, observePublished, type WorkerMetrics } from './metrics';
import type { Tracing } from '../telemetry/tracing';
import { bundleWorkflows } from './bundle';
import { activityTracingInterceptors, workflowTracingOptions } from './tracing';

/** The checkout (or install dir) this worker runs from. */
const PLATFORM_ROOT = resolve(__dirname, '..');

export interface WorkerSet {
  workers: Worker[];
  metrics: WorkerMetrics;
  /** Resolves when every worker has stopped (after `shutdown()`), rejects if one crashes. */
  run(): Promise<void>;
  shutdown(): void;
}

/**
 * Copies the egress proxy script into the data dir: the Docker engine resolves bind-mount sources
 * on its own host, and the data dir is the one path a containerised worker shares with it at the
 * same place (docker-compose.yml). Replaced atomically on every start, so it matches this build.
 */
async function stageEgressProxy(dataDir: string): Promise<string> {
  const dir = join(dataDir, 'egress-proxy');
  await mkdir(dir, { recursive: true });
  const target = join(dir, 'proxy.js');
  const tmp = `${target}.tmp-${process.pid}`;
  await copyFile(EGRESS_PROXY_SCRIPT, tmp);
  await rename(tmp, target);
  return target;
}

export async function createWorkerSet(opts: {
  config: WorkerConfig;
  connection: NativeConnection;
  nats: NatsConnection;
  docker: Docker;
  logger: Logger;
  /** Test-only fault injection into event publishing (see createEventActivities). */
  eventFaults?: EventActivityDeps['beforePublish'];
  /** Pre-bundled workflow code from bundleWorkflows() (tests bundle once); bundled here otherwise. */
  workflowBundle?: WorkflowBundleWithSourceMap;
  /** Test-only deployer overrides (e.g. a deployer that fails); the docker and noop deployers otherwise. */
  deployers?: { docker?: Deployer; noop?: Deployer };
  /** The process's metrics (served by worker/process.ts); a private registry when absent. */
  metrics?: WorkerMetrics;
  /** The process's tracing (telemetry/tracing.ts); workflow spans go to a no-op sink without it. */
  tracing?: Tracing;
}): Promise<WorkerSet> {
  const { config, logger } = opts;
  configureGitLocks({
    staleAfterMs: config.CHOIROS_GIT_LOCK_STALE_SECONDS * 1000,
    logger: logger.child({ component: 'workspace' }),
  });
  const metrics = opts.metrics ?? createWorkerMetrics({ worktreeRoot: join(config.dataDir, 'worktrees') });
  const hostQueue = hostSandboxQueue(config.CHOIROS_HOST_ID);
  const jsm = await opts.nats.jetstreamManager();
  await ensureEventStream(jsm, {
    maxAgeDays: config.CHOIROS_EVENTS_MAX_AGE_DAYS,
    maxBytes: config.CHOIROS_EVENTS_MAX_BYTES,
    duplicateWindowSeconds: 300,
  });
  const verifiers = await loadVerifierCatalog(config.verifiersFile);
  // Validated at start (a bad file stops the worker with the bad key's path).
  const tenants = await loadTenantsFile(config.tenantsFile);
  // Each tenant's secrets, resolved now (an unset or unreadable reference stops the worker, naming it).
  const tenantSecrets = Object.fromEntries(
    Object.entries(tenants.tenants).map(([tenant, t]) => {
      try {
        const refs = Object.entries(t.secrets ?? {}).map(([name, ref]) => `${name}=${ref}`);
        return [tenant, resolveSecretRefs(refs.join(','), process.env)];
      } catch (err) {
        const why =
          err instanceof Error ? err.message.replace(/^CHOIROS_SANDBOX_SECRETS: /, '') : String(err);
        throw new Error(`${config.tenantsFile}: tenants.${tenant}.secrets: ${why}`);
      }
    }),
  );
  // Remote repositories' credentials (by reference; an unreadable one stops the worker, naming it).
  const credentials = createRemoteCredentials(tenants, process.env, config.tenantsFile);
  const remote: RemoteMirrorOptions = {
    gitAuth: (tenant, url) => credentials.gitAuth(tenant, url),
    maxBytes: config.CHOIROS_MIRROR_MAX_BYTES,
    timeoutMs: config.CHOIROS_MIRROR_TIMEOUT_SECONDS * 1000,
    onFetch: (info) => {
      metrics.mirrorFetches.inc();
      logger.info({ event: 'mirror.fetched', ...info }, 'mirror fetched');
    },
  };
  const repoAccess = createRepoAccess({
    config: tenants,
    platformPaths: [config.dataDir, config.artifactsDir],
  });
  const egressProxyScript =
    config.CHOIROS_SANDBOX_DRIVER === 'docker' ? await stageEgressProxy(config.dataDir) : undefined;
  if (config.CHOIROS_SANDBOX_DRIVER === 'local' && config.CHOIROS_LOCAL_DRIVER !== 'trusted-dev') {
    throw new Error(
      'CHOIROS_SANDBOX_DRIVER=local runs work items as host processes, without container isolation; ' +
        'it is for trusted development only and needs CHOIROS_LOCAL_DRIVER=trusted-dev (docs/security.md)',
    );
  }
  const workspace = {
    quotaMb: await usableQuotaMb(config.CHOIROS_WORKSPACE_QUOTA_MB, config.dataDir, logger),
    maxEntries: config.CHOIROS_WORKSPACE_MAX_ENTRIES,
    maxBytes: config.CHOIROS_WORKSPACE_MAX_BYTES,
    // The platform's own data and the code it runs from are never a run's repository.
    forbiddenRepoRoots: [config.dataDir, config.artifactsDir, PLATFORM_ROOT],
  };
  const driver: SandboxDriver =
    config.CHOIROS_SANDBOX_DRIVER === 'local'
      ? new LocalSandboxDriver({
          stateDir: join(config.dataDir, 'local-sandboxes'),
          user: config.CHOIROS_SANDBOX_USER,
          path: '/usr/local/bin:/usr/bin:/bin',
          executionEnv: config.secrets,
          logger: logger.child({ component: 'sandbox' }),
        })
      : new DockerSandboxDriver(opts.docker, {
          image: config.CHOIROS_SANDBOX_IMAGE,
          user: config.CHOIROS_SANDBOX_USER,
          memoryBytes: config.CHOIROS_SANDBOX_MEMORY_MB * 1024 * 1024,
          nanoCpus: Math.round(config.CHOIROS_SANDBOX_CPUS * 1e9),
          pidsLimit: config.CHOIROS_SANDBOX_PIDS,
          tmpfsSizeMb: 64,
          executionEnv: config.secrets,
          extraLabels: { [HOST_LABEL]: config.CHOIROS_HOST_ID },
          egressProxyScript,
          egress: {
            allowCidrs: config.CHOIROS_EGRESS_ALLOW_CIDRS,
            denyCidrs: config.CHOIROS_EGRESS_DENY_CIDRS,
            ratePerSecond: config.CHOIROS_EGRESS_RATE_PER_SECOND,
            maxAttempts: config.CHOIROS_EGRESS_MAX_ATTEMPTS,
          },
        });
  const sandboxDeps: SandboxDeps = {
    repoAccess,
    tenantSecrets,
    remote,
    driver,
    verifiers,
    worktreeRoot: join(config.dataDir, 'worktrees'),
    mirrorRoot: join(config.dataDir, 'mirrors'),
    workspace,
    hostId: config.CHOIROS_HOST_ID,
    hostQueue,
    image: config.CHOIROS_SANDBOX_IMAGE,
    sandboxUser: config.CHOIROS_SANDBOX_USER,
    artifacts: new LocalArtifactStore(config.artifactsDir),
    disk: {
      dirs: [join(config.dataDir, 'worktrees'), join(config.dataDir, 'mirrors'), config.artifactsDir],
      minFreeMb: config.CHOIROS_DISK_MIN_FREE_MB,
      waitSeconds: config.CHOIROS_DISK_FULL_WAIT_SECONDS,
    },
    maxLogBytes: config.CHOIROS_MAX_LOG_BYTES,
    logger: logger.child({ component: 'sandbox' }),
    metrics,
  };
  // The warm pool (decision 0016): the Docker driver only; size 0 turns it off.
  // A tenant lane holds its tenant's secrets; a lane for a tenant without any would never be drawn from.
  const poolLanes = Object.fromEntries(
    Object.entries(config.CHOIROS_SANDBOX_POOL_LANES).filter(([tenant]) => {
      const has = Object.keys(tenantSecrets[tenant] ?? {}).length > 0;
      if (!has) {
        logger.warn(
          { event: 'sandbox.pool.lane.ignored', tenant },
          'CHOIROS_SANDBOX_POOL_LANES names a tenant without secrets: its runs use the shared lane',
        );
      }
      return has;
    }),
  );
  const poolSize = config.CHOIROS_SANDBOX_POOL_SIZE + Object.values(poolLanes).reduce((a, b) => a + b, 0);
  const pool =
    poolSize > 0 && isPoolDriver(driver)
      ? new SandboxPool({
          driver,
          workspaces: workspacesFor(sandboxDeps),
          root: sandboxDeps.worktreeRoot,
          settings: {
            size: config.CHOIROS_SANDBOX_POOL_SIZE,
            lanes: poolLanes,
            refillConcurrency: config.CHOIROS_SANDBOX_POOL_REFILL,
          },
          laneEnv: (tenant) => tenantSecrets[tenant] ?? {},
          logger: logger.child({ component: 'sandbox-pool' }),
        })
      : undefined;
  // Claims find nothing until the pool starts (below, once the workers exist).
  if (pool) sandboxDeps.pool = pool;
  const sandboxActivities = createSandboxActivities(sandboxDeps);
  const deliveryActivities = createDeliveryActivities({
    mirrorRoot: sandboxDeps.mirrorRoot,
    remote,
    forgeFor: (tenant) => {
      const forge = Object.prototype.hasOwnProperty.call(tenants.tenants, tenant)
        ? tenants.tenants[tenant]?.forge
        : undefined;
      return forge
        ? githubForge({
            api: forge.api,
            token: () => credentials.forgeToken(tenant) ?? '',
            defaultBase: forge.defaultBase,
          })
        : undefined;
    },
    logger: logger.child({ component: 'delivery' }),
  });
  const eventDeps: EventActivityDeps = {
    js: opts.nats.jetstream(),
    logger: logger.child({ component: 'events' }),
    beforePublish: opts.eventFaults,
    onPublished: (event, duplicate) => observePublished(metrics, event, duplicate, Date.now()),
  };
  const eventActivities = createEventActivities(eventDeps);
  // Steps carry the run's pending events and publish them first (decision 0015).
  const carry = (events: readonly unknown[]): Promise<number> => publishCarried(eventDeps, events);
  const stepActivities = createStepActivities({
    sandbox: sandboxActivities,
    carry,
    logger: logger.child({ component: 'steps' }),
  });
  const buildActivities = createBuildActivities({
    docker: opts.docker,
    driver,
    root: join(config.dataDir, 'rebuilds'),
    ...(config.CHOIROS_REBUILD_REGISTRY ? { registry: config.CHOIROS_REBUILD_REGISTRY } : {}),
    logger: logger.child({ component: 'rebuild' }),
  });
  const deployActivities = createDeployActivities({
    docker: opts.docker,
    logger: logger.child({ component: 'deploy' }),
    ...(opts.deployers ? { deployers: opts.deployers } : {}),
  });
  // Not versioned routing (see docs/decisions/0008): the build id is stamped on each task so a
  // history shows which build ran which step; replay safety comes from patched() and replay tests.
  const common = {
    connection: opts.connection,
    namespace: config.TEMPORAL_NAMESPACE,
    // SIGTERM: stop polling, let in-flight activities finish for this long, then cancel them so
    // Temporal retries them elsewhere (activities heartbeat, so a cancel reaches them).
    shutdownGraceTime: config.CHOIROS_SHUTDOWN_GRACE_SECONDS * 1000,
    workerDeploymentOptions: {
      version: { deploymentName: 'choiros', buildId: config.CHOIROS_BUILD_ID },
      useWorkerVersioning: false as const,
    },
    interceptors: activityTracingInterceptors(opts.tracing),
  };
  // One bundle with the workflow interceptor modules (worker/bundle.ts); tests pass it pre-built.
  const workflowBundle = opts.workflowBundle ?? (await bundleWorkflows());

  const workers = await Promise.all([
    Worker.create({
      ...common,
      workflowBundle,
      ...workflowTracingOptions(opts.tracing),
      workflowThreadPoolSize: config.CHOIROS_WORKFLOW_THREADS,
      maxConcurrentWorkflowTaskExecutions: config.CHOIROS_WORKFLOW_TASK_SLOTS,
      taskQueue: TASK_QUEUES.orchestration,
      activities: {
        ...eventActivities,
        ...createAdmissionActivities({
          capsFor: (tenant) => {
            const caps = tenantCaps(tenants, tenant, {
              runsPerUser: config.CHOIROS_MAX_RUNS_PER_USER,
              runsPerTenant: config.CHOIROS_MAX_RUNS_PER_TENANT,
            });
            return { perUser: caps.runsPerUser, perTenant: caps.runsPerTenant };
          },
          maxWaitSeconds: config.CHOIROS_ADMISSION_TIMEOUT_SECONDS,
          logger: logger.child({ component: 'admission' }),
          carry,
        }),
      },
    }),
    Worker.create({
      ...common,
      taskQueue: TASK_QUEUES.sandbox,
      // Work graphs' integration branches live in local repositories, like run worktrees' sources.
      activities: {
        createSandbox: (input: CreateSandboxInput) => sandboxActivities.createSandbox(input),
        createSandboxStep: (input: Carried<CreateSandboxInput>) => stepActivities.createSandboxStep(input),
        ...createGraphBranchActivities({
          logger: logger.child({ component: 'graph-branch' }),
          mirrorRoot: sandboxDeps.mirrorRoot,
          remote,
        }),
      },
    }),
    // Heartbeats reach the server within ~2 s (not 80% of the heartbeat timeout), so a
    // cancelled run's command is killed and its sandbox removed within a few seconds.
    Worker.create({
      ...common,
      taskQueue: hostQueue,
      activities: {
        ...sandboxActivities,
        ...stepActivities,
        ...deliveryActivities,
      },
      maxHeartbeatThrottleInterval: '2 seconds',
    }),
    // Image builds and deploys: build progress reaches the server within ~2 s for the UI and the API.
    Worker.create({
      ...common,
      taskQueue: TASK_QUEUES.build,
      activities: { ...buildActivities, ...deployActivities },
      maxHeartbeatThrottleInterval: '2 seconds',
    }),
  ]);
  await pool?.start();
  const client = new Client({ connection: opts.connection, namespace: config.TEMPORAL_NAMESPACE });
  const runState = async (runId: string): Promise<RunState> => {
    try {
      const d = await client.workflow.getHandle(runId).describe();
      return d.status.name === 'RUNNING' ? 'open' : 'closed';
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) return 'unknown';
      throw err;
    }
  };
  const sweeper =
    config.CHOIROS_SWEEP_INTERVAL_SECONDS > 0
      ? startSweeper(
          {
            docker: opts.docker,
            hostId: config.CHOIROS_HOST_ID,
            worktreeRoot: join(config.dataDir, 'worktrees'),
            graceMs: config.CHOIROS_SWEEP_GRACE_SECONDS * 1000,
            runState,
            logger: logger.child({ component: 'sweeper' }),
            ...(isPoolDriver(driver) ? { pools: { driver, livePoolId: pool?.id } } : {}),
          },
          config.CHOIROS_SWEEP_INTERVAL_SECONDS * 1000,
        )
      : undefined;
  logger.info(
    {
      event: 'worker.ready',
      queues: [TASK_QUEUES.orchestration, TASK_QUEUES.sandbox, hostQueue, TASK_QUEUES.build],
      buildId: config.CHOIROS_BUILD_ID,
      verifiers: verifiers.ids(),
      // Names only: secret values never reach a log line.
      executionSecrets: Object.keys(config.secrets),
      sweepIntervalSeconds: config.CHOIROS_SWEEP_INTERVAL_SECONDS,
      pool: pool ? { shared: config.CHOIROS_SANDBOX_POOL_SIZE, lanes: poolLanes } : null,
    },
    'workers created',
  );
  return {
    workers,
    metrics,
    async run() {
      try {
        await Promise.all(workers.map((w) => w.run()));
      } finally {
        await sweeper?.stop();
        // Idle pool containers and slots go with the worker (a killed worker's: the next one's start).
        await pool?.stop();
      }
    },
    shutdown() {
      void sweeper?.stop();
      for (const w of workers) {
        if (w.getState() === 'RUNNING') w.shutdown();
      }
    },
  };
}

/**
 * The per-run quota size this host can give (CHOIROS_WORKSPACE_QUOTA_MB), or 0 with a warning when
 * it cannot make loop-mounted filesystems (not root, or a container without the privilege).
 */
async function usableQuotaMb(quotaMb: number, dataDir: string, logger: Logger): Promise<number> {
  if (quotaMb === 0) return 0;
  await mkdir(dataDir, { recursive: true });
  const why = await quotaUnavailable(dataDir);
  if (why === undefined) return quotaMb;
  logger.warn(
    { event: 'workspace.quota.off', reason: why },
    'per-run disk quota is off: this host cannot loop-mount a filesystem per run; run trees are plain directories without a size limit (docs/security.md)',
  );
  return 0;
}
