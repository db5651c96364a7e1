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
import type { SandboxDriver, SandboxLabels } from './driver';
import { heartbeatWhile } from '../heartbeat';
import { Workspaces, runBranch } from '../workspace/workspace';
import type { RemoteMirrorOptions } from '../workspace/mirror';
import { assertRepoAllowed, type RepoAccess } from '../../tenancy';

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
    const { baseCommit, tree } = await workspaces.create({
      runId: input.runId,
      tenant: input.tenant,
      repo: input.repo,
      baseRef: input.baseRef,
      phase,
    });
    deps.metrics?.sandboxesCreated.inc();
    phase('container');
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
      network: input.network ?? 'none',
      ...(input.egress ? { egress: input.egress } : {}),
      ...(deps.tenantSecrets?.[input.tenant] ? { env: deps.tenantSecrets[input.tenant] } : {}),
      image: imageId,
    });
    log.info(
      {
        event: 'sandbox.created',
        tree,
        branch: rec.branch,
        baseCommit,
        quota: workspaces.quotaEnabled,
        container: rec.container,
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
        () => createSandbox(input, phase),
      );
    },

    async execInSandbox(input: ExecInput): Promise<CommandOutcome> {
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
    },

    async runVerifier(input: VerifyInput): Promise<VerifierOutcome> {
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
    },

    async planVerifiers(input: PlanInput): Promise<VerifierPlan> {
      const rec = record(input.sandboxId);
      await stopped(rec);
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
    },

    async commitSandbox(input: CommitInput): Promise<CommitResult> {
      const rec = record(input.sandboxId);
      await stopped(rec);
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
