/** Sandbox activities: a workspace (activities/workspace) + containers per run, commands in lanes, commit or discard, teardown. */
import type { Writable } from 'node:stream';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from 'pino';
import type { Counter, Histogram } from 'prom-client';
import {
  canonicalJson,
  isValidId,
  selectVerifierPlan,
  verdictOf,
  type CommandOutcome,
  type VerifierOutcome,
  type VerifierPlan,
  type VerifierReport,
} from '../../contracts';
import type { ArtifactStore } from '../artifacts/store';
import type { VerifierCatalog } from '../verifiers/catalog';
import type {
  CommitInput,
  CommitResult,
  CreateSandboxInput,
  DestroyInput,
  ExecInput,
  PlanInput,
  SandboxActivities,
  SandboxHandle,
  VerifyInput,
} from '../types';
import type { PoolDriver, SandboxDriver, SandboxLabels } from './driver';
import { SHARED_LANE, type PoolSlot, type SandboxPool } from './pool';
import { heartbeatWhile } from '../heartbeat';
import { guardDisk } from '../workspace/disk-full';
import { Workspaces, runBranch } from '../workspace/workspace';
import type { RemoteMirrorOptions } from '../workspace/mirror';
import { assertRepoAllowed, type RepoAccess } from '../../tenancy';

/**
 * TEST ONLY (the fault suite's `worker-kill-in-create`): with `CHOIROS_TEST_PAUSE_CREATE_DIR` set,
 * createSandbox writes `<dir>/<runId>` once the run's workspace is made and then waits (up to 10
 * min, heartbeating) before creating the container, so the suite can kill the worker in exactly
 * that window. Never set it on a real worker (docs/reference.md).
 */
async function testOnlyPauseAfterWorkspace(runId: string): Promise<void> {
  const dir = process.env.CHOIROS_TEST_PAUSE_CREATE_DIR;
  if (!dir) return;
  const { writeFile } = await import('node:fs/promises');
  await writeFile(`${dir}/${runId}`, '');
  await new Promise((r) => setTimeout(r, 600_000));
}

/** How often createSandbox heartbeats (the workflow's heartbeat timeout for it is 30 s). */
const LIVENESS_INTERVAL_MS = 5_000;

export interface SandboxDeps {
  driver: SandboxDriver;
  verifiers: VerifierCatalog;
  /** Directory holding run workspaces (`<dataDir>/worktrees`). */
  worktreeRoot: string;
  /** Directory holding bare mirrors of repository URLs, per tenant (`<dataDir>/mirrors`). */
  mirrorRoot: string;
  /** Workspace limits (activities/workspace); defaults in WORKSPACE_DEFAULTS. */
  workspace?: Partial<WorkspaceLimits>;
  /**
   * The tenants' repository grants (tenancy/): createSandbox re-checks the run's repository right
   * before git touches it (the gateway checked at request time; anyone reaching Temporal did not).
   */
  repoAccess?: Pick<RepoAccess, 'check'>;
  /** Resolved secrets per tenant (the tenants file's `secrets`), for that tenant's execution lanes only. */
  tenantSecrets?: Record<string, Record<string, string>>;
  /** Credentials and bounds for remote (https) repositories' mirrors (activities/workspace/mirror.ts). */
  remote?: RemoteMirrorOptions;
  hostId: string;
  /** This host's task queue, returned by create so later steps run here. */
  hostQueue: string;
  image: string;
  /** uid:gid that owns worktrees while a sandbox uses them (when the worker runs as root). */
  sandboxUser: string;
  /** Where full command output (logs) and verifier reports go. */
  artifacts: ArtifactStore;
  /** At most this many bytes of one command's output are stored; the rest is counted, hashed and dropped. */
  maxLogBytes: number;
  logger: Logger;
  /** Prometheus instruments of the worker process (worker/metrics.ts); nothing is recorded without them. */
  metrics?: SandboxMetrics;
  /**
   * The data disk running full (decision 0023): host steps that fail for want of space wait up to
   * `waitSeconds` for it to come back, then fail `host_disk_full`. `dirs` are the data dirs watched
   * (the worktree and mirror roots when absent; the worker adds its artifact store).
   */
  disk?: Partial<DiskLimits>;
  /**
   * The warm pool (decision 0016): execution lanes of runs with network policy `none` start in one
   * of its containers (of their tenant's lane when it has secrets); others, and every run whose
   * lane is empty, get a lane made for them.
   */
  pool?: Pick<SandboxPool, 'claim' | 'release'>;
}

/** The worker metrics sandbox activities record (a subset of worker/metrics.ts WorkerMetrics). */
export interface SandboxMetrics {
  workItemDuration: Histogram<'outcome'>;
  verifierDuration: Histogram<'verifier' | 'result'>;
  sandboxesCreated: Counter;
  sandboxesDestroyed: Counter;
}

function commandOutcomeLabel(o: CommandOutcome): string {
  if (o.timedOut) return 'timeout';
  if (o.oomKilled) return 'oom';
  return o.exitCode === 0 ? 'ok' : 'nonzero';
}

/** Everything the host keeps about one sandbox, derived from its id alone (so any retry finds it). */
interface SandboxRecord {
  runId: string;
  tree: string;
  branch: string;
  container: string;
}

/** Per-run workspace limits (worker settings CHOIROS_WORKSPACE_*). */
export interface WorkspaceLimits {
  /** Size of a run's own filesystem in MiB (0: no quota). */
  quotaMb: number;
  maxEntries: number;
  maxBytes: number;
  /** Paths that can never be a run's repository (the platform's checkout, data dir). */
  forbiddenRepoRoots: string[];
}

/** When the worker's data disk counts as full, and how long a step waits for space (worker settings CHOIROS_DISK_*). */
export interface DiskLimits {
  dirs: string[];
  minFreeMb: number;
  waitSeconds: number;
}

export const DISK_DEFAULTS: Omit<DiskLimits, 'dirs'> = { minFreeMb: 64, waitSeconds: 60 };

export const WORKSPACE_DEFAULTS: WorkspaceLimits = {
  quotaMb: 1024,
  maxEntries: 100_000,
  maxBytes: 512 * 1024 * 1024,
  forbiddenRepoRoots: [],
};

export { runBranch };

function assertId(kind: string, value: string): void {
  if (!isValidId(value)) {
    throw ApplicationFailure.create({
      type: 'invalid_sandbox_request',
      message: `${kind} ${JSON.stringify(value)} is not a valid id`,
      nonRetryable: true,
    });
  }
}

/**
 * Workspaces with a worker's settings for its warm pool's slots (prepareSlot/removeSlot only: no
 * repository is resolved through it); the activities make their own, with the same limits.
 */
export function workspacesFor(
  deps: Pick<SandboxDeps, 'worktreeRoot' | 'mirrorRoot' | 'sandboxUser' | 'workspace' | 'logger'>,
): Workspaces {
  return new Workspaces({
    root: deps.worktreeRoot,
    mirrorRoot: deps.mirrorRoot,
    sandboxUser: deps.sandboxUser,
    ...WORKSPACE_DEFAULTS,
    ...deps.workspace,
    logger: deps.logger,
  });
}

/** Whether a driver can keep a warm pool (the Docker driver can; the local driver cannot). */
export function isPoolDriver(driver: SandboxDriver): driver is SandboxDriver & PoolDriver {
  const d = driver as Partial<PoolDriver>;
  return (
    typeof d.createPoolSandbox === 'function' &&
    typeof d.adoptPoolSandbox === 'function' &&
    typeof d.listPoolSandboxes === 'function'
  );
}

export function createSandboxActivities(deps: SandboxDeps): SandboxActivities {
  const { driver, logger } = deps;
  const limits = { ...WORKSPACE_DEFAULTS, ...deps.workspace };
  const workspaces = new Workspaces({
    root: deps.worktreeRoot,
    mirrorRoot: deps.mirrorRoot,
    sandboxUser: deps.sandboxUser,
    ...limits,
    ...(deps.remote ? { remote: deps.remote } : {}),
    logger,
  });
  const diskLimits = { ...DISK_DEFAULTS, dirs: [deps.worktreeRoot, deps.mirrorRoot], ...deps.disk };
  /** A host step whose failure for want of space becomes host_disk_full (decision 0023). */
  const guarded = <T>(what: string, fn: () => Promise<T>): Promise<T> =>
    guardDisk(
      {
        dirs: diskLimits.dirs,
        minFreeBytes: diskLimits.minFreeMb * 1024 * 1024,
        waitMs: diskLimits.waitSeconds * 1000,
        logger,
        heartbeat: (details) => Context.current().heartbeat(details),
      },
      what,
      fn,
    );
  const record = (sandboxId: string): SandboxRecord => {
    assertId('sandboxId', sandboxId);
    return {
      runId: sandboxId,
      tree: workspaces.paths(sandboxId).tree,
      branch: runBranch(sandboxId),
      container: `choiros-run-${sandboxId}`,
    };
  };

  /**
   * Nothing of the run's execution lane may run while the host reads its tree: the workspace seals
   * the tree on every read (activities/workspace), and this makes sure the lane is stopped first.
   */
  const stopped = (rec: SandboxRecord) => driver.stop(rec.container);

  /**
   * Once its command is done, the execution lane is not needed again (verifiers run in fresh
   * containers): it is removed, with its egress proxy, so a run waiting for approval holds no
   * container, and a pooled container is gone after its one run.
   */
  const released = async (rec: SandboxRecord): Promise<void> => {
    await stopped(rec);
    await driver.remove(rec.container);
    await driver.removeEgressProxy?.(rec.container);
  };

  const heartbeatingOptions = (timeoutSeconds: number) => {
    const ctx = Context.current();
    return {
      timeoutMs: timeoutSeconds * 1000,
      signal: ctx.cancellationSignal,
      onProgress: (p: { outputBytes: number; elapsedMs: number }) => ctx.heartbeat(p),
    };
  };

  /** Runs `fn` with its output streaming into the artifact store; the outcome carries the stored log. */
  const withStoredLog = async (
    fn: (output: Writable) => Promise<CommandOutcome>,
  ): Promise<CommandOutcome> => {
    const writer = await deps.artifacts.writer({ maxBytes: deps.maxLogBytes });
    let outcome: CommandOutcome;
    try {
      outcome = await fn(writer.stream);
    } catch (err) {
      await writer.abort();
      throw err;
    }
    const log = await writer.finish();
    return { ...outcome, log: { digest: log.digest, bytes: log.size, truncated: log.truncated } };
  };

  const createSandbox = async (
    input: CreateSandboxInput,
    phase: (name: string) => void,
  ): Promise<SandboxHandle> => {
    for (const [k, v] of Object.entries({
      runId: input.runId,
      tenant: input.tenant,
      userId: input.userId,
      workItemId: input.workItemId,
    })) {
      assertId(k, v);
    }
    const rec = record(input.runId);
    const log = logger.child({ runId: input.runId, workItemId: input.workItemId });
    phase('image');
    const imageId = await driver.imageId(input.imageId);
    if (deps.repoAccess) await assertRepoAllowed(deps.repoAccess, input.tenant, input.repo);
    const network = input.network ?? 'none';
    const secrets = deps.tenantSecrets?.[input.tenant];
    // A pool container is a lane with policy `none`: a run needing a network of its own gets a
    // container made for it. Its environment is fixed at create, so a tenant with secrets draws
    // from its own pool lane (if configured), every other run from the shared lane.
    const poolable = deps.pool !== undefined && isPoolDriver(driver) && network === 'none';
    const lane = Object.keys(secrets ?? {}).length > 0 ? input.tenant : SHARED_LANE;
    let slot: PoolSlot | undefined = poolable ? deps.pool?.claim(lane, imageId, !input.imageId) : undefined;
    let made: { baseCommit: string; tree: string; slotUsed: boolean };
    try {
      made = await workspaces.create({
        runId: input.runId,
        tenant: input.tenant,
        repo: input.repo,
        baseRef: input.baseRef,
        phase,
        ...(slot ? { slot: slot.slot } : {}),
      });
    } catch (err) {
      if (slot) await deps.pool?.release(slot);
      throw err;
    }
    const { baseCommit, tree } = made;
    if (slot && !made.slotUsed) {
      // A retry found the workspace made: its container (pooled or not) is found below.
      await deps.pool?.release(slot);
      slot = undefined;
    }
    deps.metrics?.sandboxesCreated.inc();
    await testOnlyPauseAfterWorkspace(input.runId);
    phase('container');
    // The slot's directory is the run's now; its container becomes the run's by name, or (gone
    // meanwhile) the run gets a cold one over the same tree.
    let pooled = false;
    if (slot && isPoolDriver(driver)) {
      try {
        pooled = await driver.adoptPoolSandbox(slot.container, rec.container);
      } catch (err) {
        // Not adopted (or not known to be): it must not linger under its pool name. A retry finds
        // the workspace made and its container, if the rename did happen, by the run's name.
        await driver.remove(slot.container).catch(() => undefined);
        throw err;
      }
    }
    if (!pooled) {
      await driver.createExecutionSandbox({
        name: rec.container,
        workspace: tree,
        labels: {
          tenant: input.tenant,
          userId: input.userId,
          runId: input.runId,
          workItemId: input.workItemId,
          lane: 'execution',
        },
        network,
        ...(input.egress ? { egress: input.egress } : {}),
        ...(secrets ? { env: secrets } : {}),
        image: imageId,
      });
    }
    log.info(
      {
        event: 'sandbox.created',
        tree,
        branch: rec.branch,
        baseCommit,
        quota: workspaces.quotaEnabled,
        container: rec.container,
        pooled,
        ...(slot ? { slot: slot.slot } : {}),
      },
      'sandbox created',
    );
    return {
      sandboxId: input.runId,
      hostId: deps.hostId,
      hostQueue: deps.hostQueue,
      branch: rec.branch,
      baseCommit,
      image: input.imageId ?? deps.image,
      imageId,
    };
  };

  const execInSandbox = async (input: ExecInput): Promise<CommandOutcome> => {
    const rec = record(input.sandboxId);
    const log = logger.child({ runId: rec.runId });
    log.info(
      { event: 'sandbox.exec.start', argv0: input.argv[0], args: input.argv.length },
      'executing work item',
    );
    await workspaces.unseal(rec.runId);
    const outcome = await withStoredLog((output) =>
      driver.exec(rec.container, input.argv, { ...heartbeatingOptions(input.timeoutSeconds), output }),
    );
    // Nothing the command left behind keeps running (best effort here; the seal insists).
    await driver
      .stop(rec.container)
      .catch((err: unknown) =>
        log.warn(
          { event: 'sandbox.stop.failed', err },
          'could not stop the execution lane after its command',
        ),
      );
    const disk = await workspaces.quotaExceeded(rec.runId);
    if (disk.full) {
      log.warn({ event: 'workspace.quota.exceeded', ...disk }, 'run filled its workspace');
      throw ApplicationFailure.create({
        type: 'disk_quota_exceeded',
        message: `the work item filled its workspace (${limits.quotaMb} MiB, CHOIROS_WORKSPACE_QUOTA_MB): ${disk.freeBytes} bytes and ${disk.freeInodes} inodes left`,
        nonRetryable: true,
      });
    }
    log.info(
      {
        event: 'sandbox.exec.done',
        exitCode: outcome.exitCode,
        timedOut: outcome.timedOut,
        oomKilled: outcome.oomKilled ?? false,
        durationMs: outcome.durationMs,
        log: outcome.log,
      },
      'work item executed',
    );
    deps.metrics?.workItemDuration.observe(
      { outcome: commandOutcomeLabel(outcome) },
      outcome.durationMs / 1000,
    );
    return outcome;
  };

  const runVerifier = async (input: VerifyInput): Promise<VerifierOutcome> => {
    const rec = record(input.sandboxId);
    assertId('verifierId', input.verifierId);
    const spec = deps.verifiers.get(input.verifierId);
    if (!spec) {
      // Ids are checked at request time; the allow-list changed since. Report, never run unlisted commands.
      return {
        id: input.verifierId,
        result: 'error',
        exitCode: -1,
        timedOut: false,
        durationMs: 0,
        outputTail: `verifier ${input.verifierId} is not in the allow-list`,
        outputSha256: '',
        outputBytes: 0,
      };
    }
    const log = logger.child({ runId: rec.runId, verifierId: spec.id });
    for (const k of ['tenant', 'userId', 'workItemId'] as const) assertId(k, input.owner[k]);
    const labels: SandboxLabels = { ...input.owner, runId: rec.runId, lane: 'verifier' };
    const outcome = await withStoredLog((output) =>
      driver.runVerifier(
        {
          name: `choiros-verify-${rec.runId}-${spec.id}`,
          workspace: rec.tree,
          argv: spec.argv,
          labels,
          ...(input.imageId ? { image: input.imageId } : {}),
        },
        { ...heartbeatingOptions(spec.timeoutSeconds), output },
      ),
    );
    const result = verdictOf(outcome);
    const storedLog = outcome.log ?? { digest: outcome.outputSha256, bytes: 0, truncated: true };
    const report: VerifierReport = {
      kind: 'choiros.verifier.report',
      version: 1,
      runId: rec.runId,
      verifierId: spec.id,
      argv: spec.argv,
      timeoutSeconds: spec.timeoutSeconds,
      exitCode: outcome.exitCode,
      timedOut: outcome.timedOut,
      oomKilled: outcome.oomKilled ?? false,
      durationMs: Math.round(outcome.durationMs),
      outputSha256: outcome.outputSha256,
      outputBytes: outcome.outputBytes,
      log: storedLog,
    };
    const stored = await deps.artifacts.put(Buffer.from(canonicalJson(report)));
    log.info(
      {
        event: 'verifier.done',
        result,
        exitCode: outcome.exitCode,
        oomKilled: report.oomKilled,
        durationMs: outcome.durationMs,
        reportDigest: stored.digest,
      },
      'verifier finished',
    );
    deps.metrics?.verifierDuration.observe({ verifier: spec.id, result }, outcome.durationMs / 1000);
    return { ...outcome, id: spec.id, result, reportDigest: stored.digest };
  };

  const planVerifiers = async (input: PlanInput): Promise<VerifierPlan> => {
    const rec = record(input.sandboxId);
    await released(rec);
    const paths = await workspaces.touchedPaths(rec.runId);
    const plan = selectVerifierPlan(deps.verifiers, {
      mood: input.mood,
      required: input.required,
      touchedPaths: paths,
      riskTier: input.riskTier,
    });
    logger.info(
      {
        event: 'verifier.plan',
        runId: rec.runId,
        planId: plan.planId,
        verifierIds: plan.verifierIds,
        unknownRequired: plan.unknownRequired,
        touched: paths.length,
      },
      'verifier plan selected',
    );
    return plan;
  };

  const commitSandbox = async (input: CommitInput): Promise<CommitResult> => {
    const rec = record(input.sandboxId);
    await released(rec);
    const result = await workspaces.commit(rec.runId, input);
    logger.info(
      {
        event: 'sandbox.commit',
        runId: rec.runId,
        commit: result.commit,
        changed: result.changedPaths.length,
      },
      'run committed',
    );
    return result;
  };

  return {
    // Heartbeats its phase on a clock: a worker lost mid-creation is noticed within the heartbeat
    // timeout, and the Temporal UI shows where a slow creation is (pending activity details).
    createSandbox: (input: CreateSandboxInput): Promise<SandboxHandle> => {
      let current = 'start';
      const phase = (name: string): void => {
        current = name;
        Context.current().heartbeat({ phase: name });
      };
      return heartbeatWhile(
        () => ({ phase: current }),
        LIVENESS_INTERVAL_MS,
        () => guarded('createSandbox', () => createSandbox(input, phase)),
      );
    },

    execInSandbox: (input: ExecInput): Promise<CommandOutcome> =>
      guarded('execInSandbox', () => execInSandbox(input)),
    runVerifier: (input: VerifyInput): Promise<VerifierOutcome> =>
      guarded('runVerifier', () => runVerifier(input)),
    planVerifiers: (input: PlanInput): Promise<VerifierPlan> =>
      guarded('planVerifiers', () => planVerifiers(input)),
    commitSandbox: (input: CommitInput): Promise<CommitResult> =>
      guarded('commitSandbox', () => commitSandbox(input)),

    async findCommit(input: {
      sandboxId: string;
      tenant?: string;
      repo: string;
    }): Promise<CommitResult | null> {
      const rec = record(input.sandboxId);
      return (
        (await workspaces.committedBranch({
          runId: rec.runId,
          ...(input.tenant ? { tenant: input.tenant } : {}),
          repo: input.repo,
        })) ?? null
      );
    },

    async destroySandbox(input: DestroyInput): Promise<{ removed: string[] }> {
      const rec = record(input.sandboxId);
      const removed: string[] = [];
      if (await driver.remove(rec.container)) removed.push('container');
      // The proxy before the network it sits on.
      if (await driver.removeEgressProxy?.(rec.container)) removed.push('egress-proxy');
      if (await driver.removeRunNetwork(rec.runId)) removed.push('network');
      const gone = await workspaces.destroy({
        runId: rec.runId,
        ...(input.tenant ? { tenant: input.tenant } : {}),
        repo: input.repo,
        keepBranch: input.keepBranch,
      });
      if (gone.includes('worktree')) deps.metrics?.sandboxesDestroyed.inc();
      removed.push(...gone);
      logger.info(
        { event: 'sandbox.destroyed', runId: rec.runId, removed, keptBranch: input.keepBranch },
        'sandbox destroyed',
      );
      return { removed };
    },
  };
}
