/**
 * Git helpers (activities/sandbox/git.ts) with real git through the process helper: git's answers
 * ("not a repository", "no such ref", "no such branch") are final, while a git that could not run
 * at all is a transient failure, never taken for one of those answers.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import {
  GitError,
  branchExists,
  gitAnswered,
  resolveCommit,
  resolveRepo,
} from '../../activities/workspace/git';

let repo: string;
let notRepo: string;
beforeAll(() => {
  repo = mkdtempSync(join(tmpdir(), 'choiros-git-unit-'));
  notRepo = mkdtempSync(join(tmpdir(), 'choiros-git-unit-plain-'));
  const g = (...args: string[]) => execFileSync('git', args, { cwd: repo, encoding: 'utf8' });
  g('init', '-q', '-b', 'main');
  g('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '--allow-empty', '-m', 'base');
});
afterAll(() => {
  rmSync(repo, { recursive: true, force: true });
  rmSync(notRepo, { recursive: true, force: true });
});

const failureOf = async (p: Promise<unknown>): Promise<unknown> => {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected the call to fail');
};

test("git's answers: a repository, its commit, a present and a missing branch; not a repo and a missing ref fail for good", async () => {
  expect(await resolveRepo(repo)).toBe(repo);
  expect(await resolveCommit(repo, 'main')).toMatch(/^[0-9a-f]{40}$/);
  expect(await branchExists(repo, 'main')).toBe(true);
  expect(await branchExists(repo, 'nope')).toBe(false);

  const notFound = await failureOf(resolveRepo(notRepo));
  expect(notFound).toBeInstanceOf(ApplicationFailure);
  expect(notFound).toMatchObject({ type: 'repo_not_found', nonRetryable: true });
  const noRef = await failureOf(resolveCommit(repo, 'no-such-ref'));
  expect(noRef).toMatchObject({ type: 'ref_not_found', nonRetryable: true });
});

test('a git that cannot run fails retryably as GitError without an exit code, not as "not found" or "no branch"', async () => {
  const path = process.env.PATH;
  process.env.PATH = join(notRepo, 'no-bin');
  try {
    const calls = [
      () => resolveRepo(repo),
      () => resolveCommit(repo, 'main'),
      () => branchExists(repo, 'main'),
    ];
    for (const call of calls) {
      const err = await failureOf(call());
      expect(err).toBeInstanceOf(GitError);
      expect(gitAnswered(err)).toBe(false);
      expect((err as GitError).message).toMatch(/^git rev-parse failed|^git show-ref failed/);
    }
  } finally {
    process.env.PATH = path;
  }
});
