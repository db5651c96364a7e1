/** Build-queue activities of the self-rebuild: resolve the ref, verify in sandboxes, build/tag/push images. */
import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type Docker from 'dockerode';
import type { Logger } from 'pino';
import { expandTemplate, parseRebuildId, type RebuildTarget } from '../../contracts';
import { heartbeatWhile } from '../heartbeat';
import type { SandboxDriver } from '../sandbox/driver';
import { git, resolveCommit } from '../workspace/git';
import { contextFiles } from './context';
import type { BuildActivities, BuildProgress, BuiltImage, RebuildRef, SuiteResult } from './types';

export interface BuildDeps {
  docker: Docker;
  /** Runs verifier suites (the worker's sandbox driver). */
  driver: SandboxDriver;
  /** Directory holding rebuild worktrees (`<dataDir>/rebuilds`). */
  root: string;
  /** Registry host[/prefix] to push `<image>:<commit>` to; no push when absent. */
  registry?: string;
  logger: Logger;
}

/** Labels on every image a rebuild builds: the commit it came from, and the target's own labels. */
export const COMMIT_LABEL = 'choiros.rebuild.commit';
export const TARGET_LABEL = 'choiros.rebuild.target';

function assertRebuildId(rebuildId: string, target: RebuildTarget): void {
  if (parseRebuildId(rebuildId)?.target !== target.name) {
    throw ApplicationFailure.create({
      type: 'invalid_rebuild_request',
      message: `rebuild id ${JSON.stringify(rebuildId)} does not belong to target ${target.name}`,
      nonRetryable: true,
    });
  }
}

function assertCommit(commit: string): void {
  if (!/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(commit)) {
    throw ApplicationFailure.create({
      type: 'invalid_rebuild_request',
      message: `commit ${JSON.stringify(commit)} is not a full sha`,
      nonRetryable: true,
    });
  }
}

interface BuildEvent {
  stream?: string;
  error?: string;
  errorDetail?: { message?: string };
  aux?: { ID?: string };
}

export function createBuildActivities(deps: BuildDeps): BuildActivities {
  const worktreeOf = (rebuildId: string): string => join(deps.root, rebuildId, 'src');

  // Suites run in parallel and each may be the first to need the worktree: one maker at a time per rebuild.
  const making = new Map<string, Promise<string>>();
  const ensureWorktree = (ref: RebuildRef, commit: string): Promise<string> => {
    const key = ref.rebuildId;
    const next = (making.get(key) ?? Promise.resolve(''))
      .catch(() => '')
      .then(() => makeWorktree(ref, commit));
    making.set(key, next);
    void next
      .finally(() => {
        if (making.get(key) === next) making.delete(key);
      })
      .catch(() => undefined);
    return next;
  };

  /** The commit's worktree, made on first use (any activity of the rebuild, on any attempt, may be first). */
  const makeWorktree = async (ref: RebuildRef, commit: string): Promise<string> => {
    assertRebuildId(ref.rebuildId, ref.target);
    assertCommit(commit);
    const path = worktreeOf(ref.rebuildId);
    const repo = ref.target.repo;
    const present = await stat(join(path, '.git')).then(
      () => true,
      () => false,
    );
    if (present) {
      const { stdout } = await git(['rev-parse', 'HEAD'], { cwd: path, safeDirs: [path, repo] });
      if (stdout.trim() === commit) return path;
    }
    await rm(path, { recursive: true, force: true });
    await mkdir(join(deps.root, ref.rebuildId), { recursive: true });
    await git(['worktree', 'prune'], { cwd: repo, safeDirs: [repo] });
    await git(['worktree', 'add', '--detach', '--end-of-options', path, commit], {
      cwd: repo,
      safeDirs: [repo],
    });
    return path;
  };

  return {
    async resolveRef({ rebuildId, target, ref }) {
      assertRebuildId(rebuildId, target);
      const repoOk = await stat(target.repo).then(
        (s) => s.isDirectory(),
        () => false,
      );
      if (!repoOk)
        throw ApplicationFailure.create({
          type: 'repo_not_found',
          message: `target ${target.name}: repository ${target.repo} does not exist`,
          nonRetryable: true,
        });
      return { commit: await resolveCommit(target.repo, ref) };
    },

    async runSuite({ rebuildId, target, commit, suite, owner }): Promise<SuiteResult> {
      const spec = target.suites.find((s) => s.name === suite);
      if (!spec)
        throw ApplicationFailure.create({
          type: 'invalid_rebuild_request',
          message: `target ${target.name} has no suite ${suite}`,
          nonRetryable: true,
        });
      const workspace = await ensureWorktree({ rebuildId, target }, commit);
      const ctx = Context.current();
      const outcome = await deps.driver.runVerifier(
        {
          name: `choiros-rb-${target.name}-${suite}-${commit.slice(0, 12)}`.slice(0, 120),
          workspace,
          argv: spec.argv,
          ...(spec.image ? { image: spec.image } : {}),
          labels: {
            tenant: owner.tenant,
            userId: owner.userId,
            runId: rebuildId,
            workItemId: suite,
            lane: 'verifier',
          },
        },
        {
          timeoutMs: spec.timeoutSeconds * 1000,
          signal: ctx.cancellationSignal,
          onProgress: (p) => ctx.heartbeat({ suite, ...p }),
        },
      );
      const passed = outcome.exitCode === 0 && !outcome.timedOut;
      deps.logger.info(
        { event: 'rebuild.suite', rebuildId, suite, passed, exitCode: outcome.exitCode },
        'verifier suite finished',
      );
      return {
        suite,
        passed,
        exitCode: outcome.exitCode,
        timedOut: outcome.timedOut,
        durationMs: outcome.durationMs,
        outputTail: outcome.outputTail.slice(-4000),
      };
    },

    async buildImage({ rebuildId, target, commit, image }): Promise<BuiltImage> {
      const ctx = Context.current();
      const tag = `${image.image}:${commit}`;
      const started = Date.now();
      // A resumed or retried build finds the image a previous attempt finished: nothing to do.
      const existing = await deps.docker
        .getImage(tag)
        .inspect()
        .catch(() => undefined);
      if (existing?.Config?.Labels?.[COMMIT_LABEL] === commit) {
        deps.logger.info({ event: 'rebuild.build.reused', rebuildId, tag }, 'image already built');
        return {
          name: image.name,
          tag,
          imageId: existing.Id,
          durationMs: Date.now() - started,
          cachedSteps: 0,
          totalSteps: 0,
          reused: true,
        };
      }
      const worktree = await ensureWorktree({ rebuildId, target }, commit);
      const contextDir = join(worktree, image.context);
      const dockerfile = join(worktree, image.dockerfile)
        .slice(contextDir.length + 1)
        .split('\\')
        .join('/');
      if (!join(worktree, image.dockerfile).startsWith(`${contextDir}/`))
        throw ApplicationFailure.create({
          type: 'invalid_rebuild_request',
          message: `image ${image.name}: the Dockerfile ${image.dockerfile} is outside its context ${image.context}`,
          nonRetryable: true,
        });
      const files = await contextFiles(contextDir, dockerfile);
      if (!files.includes(dockerfile))
        throw ApplicationFailure.create({
          type: 'build_failed',
          message: `image ${image.name}: ${image.dockerfile} does not exist at ${commit}`,
          nonRetryable: true,
        });
      const buildargs = Object.fromEntries(
        Object.entries(image.buildArgs).map(([k, v]) => [k, expandTemplate(v, { commit, images: {} })]),
      );
      const progress: BuildProgress = { image: image.name, step: 0, totalSteps: 0, cachedSteps: 0, line: '' };
      let imageId = '';
      let failure: string | undefined;
      // A step may print nothing for minutes (a long RUN): heartbeat on a clock, not only on output.
      await heartbeatWhile(
        () => progress,
        1000,
        async () => {
          const stream = await deps.docker.buildImage(
            { context: contextDir, src: files },
            {
              t: tag,
              dockerfile,
              buildargs,
              labels: { ...target.labels, [COMMIT_LABEL]: commit, [TARGET_LABEL]: target.name },
              rm: true,
              forcerm: true,
              // No network unless the target asks (targets captured before the setting had none).
              ...((target.buildNetwork ?? 'none') === 'none' ? { networkmode: 'none' } : {}),
              abortSignal: ctx.cancellationSignal,
            },
          );
          await new Promise<void>((resolve, reject) => {
            deps.docker.modem.followProgress(
              stream,
              (err: Error | null) => (err ? reject(err) : resolve()),
              (ev: BuildEvent) => {
                if (ev.error) failure = ev.errorDetail?.message ?? ev.error;
                if (ev.aux?.ID) imageId = ev.aux.ID;
                const line = ev.stream?.trim();
                if (!line) return;
                const step = /^Step (\d+)\/(\d+) :/.exec(line);
                if (step) {
                  progress.step = Number(step[1]);
                  progress.totalSteps = Number(step[2]);
                }
                if (line.includes('Using cache')) progress.cachedSteps += 1;
                progress.line = line.slice(0, 300);
                ctx.heartbeat(progress);
              },
            );
          }).catch((err: unknown) => {
            if (ctx.cancellationSignal.aborted) throw err;
            failure ??= err instanceof Error ? err.message : String(err);
          });
        },
      );
      if (failure !== undefined) {
        // A base this engine lacks is pulled, and fails without a registry: say what builds it.
        const missingBase =
          /pull access denied|repository does not exist|manifest unknown|registry-1\.docker\.io/i.test(
            failure,
          )
            ? ' (a base image named in its build args is missing on this engine: `npm run images:build` builds the choiros-*:compose images)'
            : '';
        throw ApplicationFailure.create({
          type: 'build_failed',
          message: `image ${image.name} (${image.dockerfile}) failed to build: ${failure.slice(0, 2000)}${missingBase}`,
          // A Dockerfile that fails on a commit fails again; the engine going away is retried.
          nonRetryable: missingBase !== '' || !/connect|ECONNRESET|socket hang up|EPIPE/.test(failure),
        });
      }
      const info = await deps.docker.getImage(tag).inspect();
      const built: BuiltImage = {
        name: image.name,
        tag,
        imageId: imageId || info.Id,
        durationMs: Date.now() - started,
        cachedSteps: progress.cachedSteps,
        totalSteps: progress.totalSteps,
        reused: false,
      };
      deps.logger.info({ event: 'rebuild.build.done', rebuildId, ...built }, 'image built');
      return built;
    },

    async pushImage({ rebuildId, target, commit, tag }) {
      assertRebuildId(rebuildId, target);
      assertCommit(commit);
      if (!deps.registry) return { remote: null };
      const [repo] = tag.split(':');
      const remoteRepo = `${deps.registry.replace(/\/$/, '')}/${repo ?? ''}`;
      await deps.docker.getImage(tag).tag({ repo: remoteRepo, tag: commit });
      const ctx = Context.current();
      const stream = await deps.docker
        .getImage(`${remoteRepo}:${commit}`)
        .push({ abortSignal: ctx.cancellationSignal });
      await new Promise<void>((resolve, reject) => {
        deps.docker.modem.followProgress(
          stream,
          (err: Error | null, res: BuildEvent[]) => {
            const failed = res?.find((r) => r.error);
            if (err || failed)
              reject(
                new Error(`push of ${remoteRepo}:${commit} failed: ${err?.message ?? failed?.error ?? ''}`),
              );
            else resolve();
          },
          (ev: { status?: string }) =>
            ctx.heartbeat({ push: `${remoteRepo}:${commit}`, status: ev.status ?? '' }),
        );
      });
      return { remote: `${remoteRepo}:${commit}` };
    },

    async cleanupRebuild({ rebuildId, target }) {
      assertRebuildId(rebuildId, target);
      await rm(join(deps.root, rebuildId), { recursive: true, force: true });
      await git(['worktree', 'prune'], { cwd: target.repo, safeDirs: [target.repo] }).catch(() => undefined);
    },
  };
}
