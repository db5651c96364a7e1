/**
 * Delivery (decision 0019): a committed run's branch (or a work graph's integration branch) is
 * pushed from the tenant's mirror back to the repository's origin, with a lease: the remote branch
 * must be absent (or already hold exactly this commit), so a push never overwrites anyone's work.
 * Runs on the host that holds the mirror; credentials reach git through its environment only.
 */
import { stat } from 'node:fs/promises';
import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from 'pino';
import { ID_PATTERN, isRemoteRepoUrl, isValidId, pullRequestBase } from '../../contracts';
import { GitError, git } from '../workspace/git';
import {
  PROTOCOL_CONFIG,
  classifyRemoteFailure,
  mirrorPath,
  pushWithLease,
  type RemoteMirrorOptions,
} from '../workspace/mirror';
import type { ForgeAdapter } from './forge';
import type {
  DeliverInput,
  DeliverResult,
  DeliveryActivities,
  PullRequestInput,
  PullRequestResult,
} from './types';

export interface DeliveryDeps {
  /** `<dataDir>/mirrors`, as the sandbox activities use it. */
  mirrorRoot: string;
  remote: RemoteMirrorOptions;
  /** The tenant's forge, when its configuration names one. */
  forgeFor?: (tenant: string) => ForgeAdapter | undefined;
  logger: Logger;
}

const BRANCH = new RegExp(`^choiros/(run|graph)/${ID_PATTERN.source.replace(/^\^|\$$/g, '')}$`);
const SHA = /^[0-9a-f]{40}([0-9a-f]{24})?$/;

function refuse(type: string, message: string): ApplicationFailure {
  return ApplicationFailure.create({ type, message, nonRetryable: true });
}

export function createDeliveryActivities(deps: DeliveryDeps): DeliveryActivities {
  const { logger } = deps;

  const mirrorOf = async (tenant: string, repo: string): Promise<string> => {
    if (!isValidId(tenant)) throw refuse('invalid_sandbox_request', 'tenant is not a valid id');
    if (!isRemoteRepoUrl(repo))
      throw refuse('not_delivered', 'only remote (https) repositories are delivered');
    const path = mirrorPath(deps.mirrorRoot, tenant, repo);
    const present = await stat(path).then(
      () => true,
      () => false,
    );
    if (!present) throw refuse('not_delivered', "the repository's mirror is not on this host");
    return path;
  };

  /** The commit the origin's `ref` holds, or undefined. */
  const remoteHead = async (
    mirror: string,
    env: Record<string, string>,
    ref: string,
  ): Promise<string | undefined> => {
    const { stdout } = await git(['--git-dir', mirror, ...PROTOCOL_CONFIG, 'ls-remote', 'origin', ref], {
      cwd: '/',
      safeDirs: [mirror],
      timeoutMs: deps.remote.timeoutMs,
      env,
    });
    const line = stdout.split('\n').find((l) => l.endsWith(`\t${ref}`));
    return line?.split('\t')[0];
  };

  return {
    async deliverBranch(input: DeliverInput): Promise<DeliverResult> {
      if (!BRANCH.test(input.branch)) throw refuse('invalid_sandbox_request', 'not a platform branch');
      if (!SHA.test(input.commit)) throw refuse('invalid_sandbox_request', 'not a commit id');
      const mirror = await mirrorOf(input.tenant, input.repo);
      const ref = `refs/heads/${input.branch}`;
      const local = await git(['--git-dir', mirror, 'rev-parse', '--verify', '--quiet', `${ref}^{commit}`], {
        cwd: '/',
        safeDirs: [mirror],
      }).then(
        (r) => r.stdout.trim(),
        () => '',
      );
      if (local !== input.commit)
        throw refuse(
          'not_delivered',
          `the mirror's ${input.branch} does not hold the committed run's commit`,
        );
      const forge = deps.forgeFor?.(input.tenant) !== undefined;
      const log = logger.child({ tenant: input.tenant, repo: input.repo, branch: input.branch });
      const done = (status: DeliverResult['status']): DeliverResult => {
        log.info({ event: 'delivery.done', status, commit: input.commit }, 'branch delivered');
        return { status, remoteRef: ref, commit: input.commit, forge };
      };
      // Only credentials and a missing repository are final; a host that did not answer may next time.
      const transferFailure = (err: unknown): ApplicationFailure => {
        if (err instanceof ApplicationFailure) return err;
        const { code } = classifyRemoteFailure(err);
        return ApplicationFailure.create({
          type: code === 'repo_unreachable' ? 'delivery_failed' : code,
          message: `cannot push ${input.branch} to ${input.repo}: ${code.replace(/_/g, ' ')}`,
          nonRetryable: code !== 'repo_unreachable',
        });
      };
      const transfer = async <T>(fn: () => Promise<T>): Promise<T> => {
        try {
          return await fn();
        } catch (err) {
          throw transferFailure(err);
        }
      };
      const env = await transfer(async () => (await deps.remote.gitAuth(input.tenant, input.repo)).env);
      const current = await transfer(() => remoteHead(mirror, env, ref));
      if (current === input.commit) return done('already_present');
      if (current !== undefined)
        throw refuse(
          'delivery_conflict',
          `${ref} on the origin holds another commit; nothing was overwritten`,
        );
      try {
        // The lease: the ref must still be absent on the origin when the push lands.
        await pushWithLease(mirror, ref, input.commit, undefined, { env, timeoutMs: deps.remote.timeoutMs });
      } catch (err) {
        if (!(err instanceof GitError) || err.exitCode === null) throw transferFailure(err);
        // A lost lease or a rejected update: look again, the push may have landed on an earlier attempt.
        const after = await transfer(() => remoteHead(mirror, env, ref));
        if (after === input.commit) return done('already_present');
        if (after !== undefined)
          throw refuse(
            'delivery_conflict',
            `${ref} on the origin holds another commit; nothing was overwritten`,
          );
        if (/rejected|denied|hook declined/i.test(err.stderr) && !/40[13]/.test(err.stderr))
          throw refuse('delivery_failed', `the origin refused ${ref}`);
        throw transferFailure(err);
      }
      return done('pushed');
    },

    async openPullRequest(input: PullRequestInput): Promise<PullRequestResult> {
      const forge = deps.forgeFor?.(input.tenant);
      if (!forge) throw refuse('not_delivered', `tenant ${input.tenant} has no forge configured`);
      if (!BRANCH.test(input.head)) throw refuse('invalid_sandbox_request', 'not a platform branch');
      const result = await forge.openPullRequest({
        repo: input.repo,
        head: input.head,
        base: pullRequestBase(input.baseRef, forge.defaultBase),
        title: input.title,
        body: input.body,
      });
      logger.info(
        { event: 'delivery.pull_request', tenant: input.tenant, head: input.head, number: result.number },
        'pull request opened',
      );
      return result;
    },
  };
}
