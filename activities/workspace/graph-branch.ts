/**
 * A work graph's integration branch `choiros/graph/<graphId>`: created at the graph's base commit,
 * advanced by merging each committed item's run commit into it with git plumbing only (no worktree,
 * no index), so dependants start from their dependencies' changes.
 *
 * Remote (https) repositories (decision 0019): the branch lives on the origin, which every worker
 * reaches. Each activity refreshes the tenant's mirror (which brings the origin's `choiros/*`
 * branches under ORIGIN_CHOIROS_NAMESPACE: delivered run branches and the graph branch), merges
 * there, and pushes the new head with a lease on the old one: the integration branch is delivered
 * the way run branches are, by every move.
 */
import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from 'pino';
import { isGitUrl, isRemoteRepoUrl, isValidId } from '../../contracts';
import { GitError, git, gitAnswered, resolveCommit, resolveRepo } from './git';
import {
  ORIGIN_CHOIROS_NAMESPACE,
  classifyRemoteFailure,
  ensureMirror,
  pushWithLease,
  type RemoteMirrorOptions,
} from './mirror';

export interface PrepareGraphBranchInput {
  graphId: string;
  repo: string;
  baseRef: string;
  /** The graph's tenant: whose mirror and credentials a remote repository uses. */
  tenant?: string;
}

/** A remote repository's integration branch after an activity moved (or found) it on the origin. */
export interface GraphDelivery {
  remoteRef: string;
  status: 'pushed' | 'already_present';
}

export interface GraphBranch {
  branch: string;
  /** The branch's commit now (the base commit when it was just created). */
  commit: string;
  /** The commit `baseRef` resolved to. */
  baseCommit: string;
  /** Remote repositories: the branch on the origin. */
  delivered?: GraphDelivery;
}

/** One committed run to merge: the tip of its run branch. */
export interface GraphMergeItem {
  commit: string;
  itemId: string;
  runId: string;
}

export interface MergeIntoGraphBranchInput {
  graphId: string;
  repo: string;
  /** Merged in this order; the branch moves once, after all of them. */
  items: GraphMergeItem[];
  tenant?: string;
}

/** How one item got in: `fast_forward`, `merge` (a two-parent commit) or `already_merged` (a retry), or why not. */
export type GraphMergeItemResult =
  | { itemId: string; ok: true; how: 'fast_forward' | 'merge' | 'already_merged'; commit: string }
  | { itemId: string; ok: false; error: { code: string; message: string } };

export interface GraphMergeResult {
  /** The integration branch's commit after the batch. */
  commit: string;
  /** One per input item, in order. */
  items: GraphMergeItemResult[];
  /** Remote repositories: the branch on the origin. */
  delivered?: GraphDelivery;
}

/** What workflows import (type only) and the worker registers on the generic sandbox queue. */
export interface GraphBranchActivities {
  prepareGraphBranch(input: PrepareGraphBranchInput): Promise<GraphBranch>;
  mergeIntoGraphBranch(input: MergeIntoGraphBranchInput): Promise<GraphMergeResult>;
}

export function graphBranch(graphId: string): string {
  return `choiros/graph/${graphId}`;
}

const SHA = /^[0-9a-f]{40}([0-9a-f]{24})?$/;

function invalid(message: string): ApplicationFailure {
  return ApplicationFailure.create({ type: 'invalid_sandbox_request', message, nonRetryable: true });
}

/** Local repositories, and remote ones through the origin; for `file://` URLs run branches live in one worker's mirror. */
async function localRepo(repo: string): Promise<string> {
  if (isGitUrl(repo))
    throw invalid(
      `work graphs need a local repository path or an https URL; ${repo} is a file URL (its run branches stay in a worker's mirror)`,
    );
  return resolveRepo(repo);
}

export interface GraphBranchDeps {
  logger: Logger;
  /** `<dataDir>/mirrors` and the remote options: needed for graphs on remote repositories. */
  mirrorRoot?: string;
  remote?: RemoteMirrorOptions;
}

/** A graph's repository as the activities use it: a git dir, and for a remote one how to push. */
interface GraphRepo {
  gitDir: string;
  push?: (ref: string, commit: string, expected: string | undefined) => Promise<void>;
}

async function graphRepo(
  deps: GraphBranchDeps,
  repo: string,
  tenant: string | undefined,
): Promise<GraphRepo> {
  if (!isRemoteRepoUrl(repo)) return { gitDir: await localRepo(repo) };
  if (!tenant || !isValidId(tenant)) throw invalid('a graph on a remote repository needs its tenant');
  if (!deps.mirrorRoot || !deps.remote)
    throw invalid('this worker has no mirror settings for remote repositories');
  const remote = deps.remote;
  const gitDir = await ensureMirror(deps.mirrorRoot, tenant, repo, remote);
  return {
    gitDir,
    push: async (ref, commit, expected) => {
      try {
        await pushWithLease(gitDir, ref, commit, expected, {
          env: (await remote.gitAuth(tenant, repo)).env,
          timeoutMs: remote.timeoutMs,
        });
      } catch (err) {
        const { code } = classifyRemoteFailure(err);
        // A lost lease or an unreachable host: the activity's retry refreshes the mirror and tries again.
        throw ApplicationFailure.create({
          type: code === 'repo_unreachable' ? 'delivery_failed' : code,
          message: `cannot push ${ref} to ${repo}: ${code.replace(/_/g, ' ')}`,
          nonRetryable: code === 'repo_auth_failed' || code === 'repo_not_found',
        });
      }
      // The mirror's copy of the origin's branch follows at once (the next fetch would bring the same).
      await git(['update-ref', originRef(ref), commit], { cwd: gitDir, safeDirs: [gitDir] });
    },
  };
}

/** `refs/heads/choiros/graph/x` → where the mirror keeps the origin's copy of it. */
const originRef = (ref: string): string =>
  ref.replace(/^refs\/heads\/choiros\//, `${ORIGIN_CHOIROS_NAMESPACE}/`);

async function revParse(repo: string, ref: string): Promise<string | undefined> {
  return git(['rev-parse', '--verify', '--quiet', `${ref}^{commit}`], { cwd: repo, safeDirs: [repo] }).then(
    (r) => r.stdout.trim(),
    (err: unknown) => {
      if (gitAnswered(err)) return undefined;
      throw err;
    },
  );
}

async function isAncestor(repo: string, ancestor: string, descendant: string): Promise<boolean> {
  try {
    await git(['merge-base', '--is-ancestor', ancestor, descendant], { cwd: repo, safeDirs: [repo] });
    return true;
  } catch (err) {
    if (err instanceof GitError && err.exitCode === 1) return false;
    throw err;
  }
}

export function createGraphBranchActivities(deps: GraphBranchDeps): GraphBranchActivities {
  const { logger } = deps;
  return {
    async prepareGraphBranch(input) {
      if (!isValidId(input.graphId))
        throw invalid(`graphId ${JSON.stringify(input.graphId)} is not a valid id`);
      const target = await graphRepo(deps, input.repo, input.tenant);
      const repo = target.gitDir;
      const branch = graphBranch(input.graphId);
      const baseCommit = await resolveCommit(repo, input.baseRef);
      if (target.push) {
        // On the origin: created from nothing (a retry or a continued graph finds it as it was).
        const ref = `refs/heads/${branch}`;
        const existing = await revParse(repo, originRef(ref));
        if (existing)
          return {
            branch,
            commit: existing,
            baseCommit,
            delivered: { remoteRef: ref, status: 'already_present' },
          };
        await target.push(ref, baseCommit, undefined);
        logger.info(
          { event: 'graph.branch.created', graphId: input.graphId, branch, baseCommit, remote: true },
          'graph branch created',
        );
        return { branch, commit: baseCommit, baseCommit, delivered: { remoteRef: ref, status: 'pushed' } };
      }
      // Create only if absent (old value all zeros): a retry or a continued graph finds it as it was.
      try {
        await git(['update-ref', `refs/heads/${branch}`, baseCommit, '0'.repeat(baseCommit.length)], {
          cwd: repo,
          safeDirs: [repo],
        });
        logger.info(
          { event: 'graph.branch.created', graphId: input.graphId, branch, baseCommit },
          'graph branch created',
        );
      } catch (err) {
        // It exists already (git said so); a git that did not run at all is retried.
        if (!gitAnswered(err)) throw err;
      }
      const commit = await resolveCommit(repo, `refs/heads/${branch}`);
      return { branch, commit, baseCommit };
    },

    async mergeIntoGraphBranch(input) {
      if (!isValidId(input.graphId))
        throw invalid(`graphId ${JSON.stringify(input.graphId)} is not a valid id`);
      const bad = input.items.find((i) => !SHA.test(i.commit));
      if (bad) throw invalid(`commit ${JSON.stringify(bad.commit)} of item ${bad.itemId} is not a commit id`);
      const target = await graphRepo(deps, input.repo, input.tenant);
      const repo = target.gitDir;
      const branch = graphBranch(input.graphId);
      const ref = `refs/heads/${branch}`;
      const opts = { cwd: repo, safeDirs: [repo] };
      const log = logger.child({ graphId: input.graphId });
      const head = await resolveCommit(repo, target.push ? originRef(ref) : ref);
      let current = head;
      const results: GraphMergeItemResult[] = [];
      for (const item of input.items) {
        // Remote: an item's commit reaches this worker's mirror through its delivered run branch.
        if (target.push && (await revParse(repo, item.commit)) === undefined) {
          results.push({
            itemId: item.itemId,
            ok: false,
            error: {
              code: 'not_delivered',
              message: `item ${item.itemId} (run ${item.runId}): its commit is not on the origin (was its branch delivered?)`,
            },
          });
          continue;
        }
        // A retry after the ref moved finds the commit in already.
        if (await isAncestor(repo, item.commit, current)) {
          results.push({ itemId: item.itemId, ok: true, how: 'already_merged', commit: current });
          continue;
        }
        if (await isAncestor(repo, current, item.commit)) {
          current = item.commit;
          results.push({ itemId: item.itemId, ok: true, how: 'fast_forward', commit: current });
          continue;
        }
        let tree: string;
        try {
          tree = (
            await git(['merge-tree', '--write-tree', '--no-messages', current, item.commit], opts)
          ).stdout
            .split('\n')[0]!
            .trim();
        } catch (err) {
          // Exit 1: the merge has conflicts; the branch stays where it was for this item.
          if (!(err instanceof GitError && err.exitCode === 1)) throw err;
          const conflicted = await conflictedFiles(repo, current, item.commit);
          log.warn(
            { event: 'graph.merge.conflict', itemId: item.itemId, runId: item.runId, conflicted },
            'merge conflict',
          );
          results.push({
            itemId: item.itemId,
            ok: false,
            error: {
              code: 'merge_conflict',
              message: `item ${item.itemId} (run ${item.runId}) conflicts with ${branch}${conflicted.length ? ` (both changed ${conflicted.join(', ')})` : ''}`,
            },
          });
          continue;
        }
        current = (
          await git(
            [
              '-c',
              'user.name=ChoirOS',
              '-c',
              'user.email=graph@choiros.invalid',
              'commit-tree',
              tree,
              '-p',
              current,
              '-p',
              item.commit,
              '-m',
              `choiros graph ${input.graphId}: merge item ${item.itemId} (run ${item.runId})`,
            ],
            opts,
          )
        ).stdout.trim();
        results.push({ itemId: item.itemId, ok: true, how: 'merge', commit: current });
      }
      if (current !== head && target.push) {
        // A lease on the head it merged onto: fails (and the activity retries) if the branch moved meanwhile.
        await target.push(ref, current, head);
      } else if (current !== head) {
        // Compare-and-swap: fails (and the activity retries) if someone else moved the branch meanwhile.
        await git(
          ['update-ref', '-m', `choiros graph merge of ${input.items.length} item(s)`, ref, current, head],
          opts,
        );
      }
      log.info(
        {
          event: 'graph.merged',
          from: head,
          to: current,
          items: results.map((r) => [r.itemId, r.ok ? r.how : r.error.code]),
        },
        'items merged into graph branch',
      );
      return {
        commit: current,
        items: results,
        ...(target.push
          ? {
              delivered: {
                remoteRef: ref,
                status: current !== head ? ('pushed' as const) : ('already_present' as const),
              },
            }
          : {}),
      };
    },
  };
}

/** Paths both sides changed since their merge base: where the conflict is (git's own list is on stdout, which GitError drops). */
async function conflictedFiles(repo: string, ours: string, theirs: string): Promise<string[]> {
  const opts = { cwd: repo, safeDirs: [repo] };
  try {
    const base = (await git(['merge-base', ours, theirs], opts)).stdout.trim();
    const changed = async (to: string) =>
      (await git(['diff', '--name-only', '--no-renames', '-z', base, to, '--'], opts)).stdout
        .split('\0')
        .filter(Boolean);
    const mine = new Set(await changed(ours));
    return (await changed(theirs)).filter((p) => mine.has(p)).slice(0, 20);
  } catch {
    return [];
  }
}
