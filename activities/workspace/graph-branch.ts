/**
 * A work graph's integration branch `choiros/graph/<graphId>`: created at the graph's base commit,
 * advanced by merging each committed item's run commit into it with git plumbing only (no worktree,
 * no index), so dependants start from their dependencies' changes.
 */
import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from 'pino';
import { isGitUrl, isValidId } from '../../contracts';
import { GitError, git, gitAnswered, resolveCommit, resolveRepo } from './git';

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
      const repo = await localRepo(input.repo);
      const branch = graphBranch(input.graphId);
      const ref = `refs/heads/${branch}`;
      const opts = { cwd: repo, safeDirs: [repo] };
      const log = logger.child({ graphId: input.graphId });
      const head = await resolveCommit(repo, ref);
      let current = head;
      const results: GraphMergeItemResult[] = [];
      for (const item of input.items) {
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
      if (current !== head) {
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
      return { commit: current, items: results };
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
