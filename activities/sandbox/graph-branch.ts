/**
 * A work graph's integration branch `choiros/graph/<graphId>`: created at the graph's base commit,
 * advanced by merging each committed item's run commit into it with git plumbing only (no worktree,
 * no index), so dependants start from their dependencies' changes.
 */
import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from 'pino';
import { isGitUrl, isValidId } from '../../contracts';
import { GitError, git, resolveCommit, resolveRepo } from './git';

export interface PrepareGraphBranchInput {
  graphId: string;
  repo: string;
  baseRef: string;
}

export interface GraphBranch {
  branch: string;
  /** The branch's commit now (the base commit when it was just created). */
  commit: string;
  /** The commit `baseRef` resolved to. */
  baseCommit: string;
}

export interface MergeIntoGraphBranchInput {
  graphId: string;
  repo: string;
  /** The committed run's commit (the tip of its run branch). */
  commit: string;
  itemId: string;
  runId: string;
}

export interface GraphMergeResult {
  /** The integration branch's commit after the merge. */
  commit: string;
  /** How it got there: `fast_forward`, `merge` (a two-parent commit) or `already_merged` (a retry). */
  how: 'fast_forward' | 'merge' | 'already_merged';
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

/** Only local repositories: for `file://` URLs run branches live in one worker's bare mirror. */
async function localRepo(repo: string): Promise<string> {
  if (isGitUrl(repo))
    throw invalid(
      `work graphs need a local repository path; ${repo} is a URL (its run branches stay in a worker's mirror)`,
    );
  return resolveRepo(repo);
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

export function createGraphBranchActivities(deps: { logger: Logger }): GraphBranchActivities {
  const { logger } = deps;
  return {
    async prepareGraphBranch(input) {
      if (!isValidId(input.graphId))
        throw invalid(`graphId ${JSON.stringify(input.graphId)} is not a valid id`);
      const repo = await localRepo(input.repo);
      const branch = graphBranch(input.graphId);
      const baseCommit = await resolveCommit(repo, input.baseRef);
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
        if (!(err instanceof GitError)) throw err;
      }
      const commit = await resolveCommit(repo, `refs/heads/${branch}`);
      return { branch, commit, baseCommit };
    },

    async mergeIntoGraphBranch(input) {
      if (!isValidId(input.graphId))
        throw invalid(`graphId ${JSON.stringify(input.graphId)} is not a valid id`);
      if (!SHA.test(input.commit)) throw invalid(`commit ${JSON.stringify(input.commit)} is not a commit id`);
      const repo = await localRepo(input.repo);
      const branch = graphBranch(input.graphId);
      const ref = `refs/heads/${branch}`;
      const opts = { cwd: repo, safeDirs: [repo] };
      const log = logger.child({ graphId: input.graphId, itemId: input.itemId, runId: input.runId });
      const head = await resolveCommit(repo, ref);
      // A retry after the ref moved: the commit is in already.
      if (await isAncestor(repo, input.commit, head)) return { commit: head, how: 'already_merged' };
      let next: string;
      let how: GraphMergeResult['how'];
      if (await isAncestor(repo, head, input.commit)) {
        next = input.commit;
        how = 'fast_forward';
      } else {
        let tree: string;
        try {
          tree = (await git(['merge-tree', '--write-tree', '--no-messages', head, input.commit], opts)).stdout
            .split('\n')[0]!
            .trim();
        } catch (err) {
          // Exit 1: the merge has conflicts (stdout lists the conflicted files after the tree id).
          if (err instanceof GitError && err.exitCode === 1) {
            const conflicted = await conflictedFiles(repo, head, input.commit);
            log.warn({ event: 'graph.merge.conflict', conflicted }, 'merge conflict');
            throw ApplicationFailure.create({
              type: 'merge_conflict',
              message: `item ${input.itemId} (run ${input.runId}) conflicts with ${branch}${conflicted.length ? ` (both changed ${conflicted.join(', ')})` : ''}`,
              nonRetryable: true,
            });
          }
          throw err;
        }
        next = (
          await git(
            [
              '-c',
              'user.name=ChoirOS',
              '-c',
              'user.email=graph@choiros.invalid',
              'commit-tree',
              tree,
              '-p',
              head,
              '-p',
              input.commit,
              '-m',
              `choiros graph ${input.graphId}: merge item ${input.itemId} (run ${input.runId})`,
            ],
            opts,
          )
        ).stdout.trim();
        how = 'merge';
      }
      // Compare-and-swap: fails (and the activity retries) if someone else moved the branch meanwhile.
      await git(['update-ref', '-m', `choiros graph merge ${input.runId}`, ref, next, head], opts);
      log.info({ event: 'graph.merged', how, from: head, to: next }, 'item merged into graph branch');
      return { commit: next, how };
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
