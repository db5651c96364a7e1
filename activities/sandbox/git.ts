/** Git operations for run worktrees, through argv (never a shell) with option injection closed off. */
import { stat } from 'node:fs/promises';
import { ApplicationFailure } from '@temporalio/common';
import { ProcessError, runProcess } from './process-helper';

export interface GitResult {
  stdout: string;
  stderr: string;
}

export class GitError extends Error {
  override readonly name = 'GitError';
  constructor(
    message: string,
    /** Git's exit code; null when git gave no answer (not started, killed, lost with the helper). */
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(message);
  }
}

/**
 * Whether git ran and answered with a failure (an exit code), as opposed to a failure to run it at
 * all: only an answer may be read as "no such repository/ref/branch"; the rest is transient.
 */
export const gitAnswered = (err: unknown): err is GitError =>
  err instanceof GitError && err.exitCode !== null;

/**
 * Runs git with a fixed, sanitised environment. `safeDirs` are trusted explicitly: worktrees are
 * owned by the sandbox user, and git refuses repositories owned by someone else otherwise.
 */
export function git(
  args: string[],
  opts: { cwd: string; safeDirs?: string[]; timeoutMs?: number },
): Promise<GitResult> {
  const safe = (opts.safeDirs ?? []).flatMap((d) => ['-c', `safe.directory=${d}`]);
  const fullArgs = [...safe, '-c', 'core.hooksPath=/dev/null', '-c', 'commit.gpgsign=false', ...args];
  return runProcess('git', fullArgs, {
    cwd: opts.cwd,
    timeoutMs: opts.timeoutMs ?? 120_000,
    maxBuffer: 16 * 1024 * 1024,
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: process.env.HOME ?? '/tmp',
      GIT_TERMINAL_PROMPT: '0',
      GIT_CONFIG_NOSYSTEM: '1',
      LC_ALL: 'C',
    },
  }).catch((err: unknown) => {
    if (!(err instanceof ProcessError)) throw err;
    const code = typeof err.code === 'number' ? err.code : null;
    // Name the subcommand, not a leading `-c key=value` or `--git-dir <dir>`.
    const sub =
      args.find((a, i) => !a.startsWith('-') && args[i - 1] !== '-c' && args[i - 1] !== '--git-dir') ?? '';
    throw new GitError(`git ${sub} failed: ${err.stderr.trim() || err.message}`, code, err.stderr);
  });
}

/**
 * Resolves `repo` to the top level of a git repository, or fails non-retryably with `repo_not_found`
 * (a git that could not be run at all fails retryably).
 */
export async function resolveRepo(repo: string): Promise<string> {
  try {
    const s = await stat(repo);
    if (!s.isDirectory()) throw new Error('not a directory');
    const { stdout } = await git(['rev-parse', '--show-toplevel'], { cwd: repo, safeDirs: [repo] });
    return stdout.trim();
  } catch (err) {
    if (err instanceof GitError && !gitAnswered(err)) throw err;
    throw ApplicationFailure.create({
      type: 'repo_not_found',
      message: `repository ${repo} is not a git repository on this host`,
      nonRetryable: true,
      cause: err instanceof Error ? err : undefined,
    });
  }
}

/** Resolves a ref to a full commit sha, or fails non-retryably with `ref_not_found` (see resolveRepo). */
export async function resolveCommit(repo: string, ref: string): Promise<string> {
  try {
    const { stdout } = await git(
      ['rev-parse', '--verify', '--quiet', '--end-of-options', `${ref}^{commit}`],
      {
        cwd: repo,
        safeDirs: [repo],
      },
    );
    const sha = stdout.trim();
    if (!/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(sha)) throw new Error(`unexpected rev-parse output ${sha}`);
    return sha;
  } catch (err) {
    if (err instanceof GitError && !gitAnswered(err)) throw err;
    throw ApplicationFailure.create({
      type: 'ref_not_found',
      message: `ref ${ref} does not name a commit in ${repo}`,
      nonRetryable: true,
      cause: err instanceof Error ? err : undefined,
    });
  }
}

export async function branchExists(repo: string, branch: string): Promise<boolean> {
  try {
    await git(['show-ref', '--verify', '--quiet', `refs/heads/${branch}`], { cwd: repo, safeDirs: [repo] });
    return true;
  } catch (err) {
    if (gitAnswered(err)) return false;
    throw err;
  }
}

/** Lists registered worktree paths of `repo`. */
export async function listWorktrees(repo: string): Promise<string[]> {
  const { stdout } = await git(['worktree', 'list', '--porcelain'], { cwd: repo, safeDirs: [repo] });
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('worktree '))
    .map((l) => l.slice('worktree '.length));
}

/**
 * Repository-relative paths a worktree changed against its HEAD: modified, added, deleted, both
 * sides of a rename, and untracked files that are not ignored (what a commit would take).
 */
export async function touchedPaths(worktree: string): Promise<string[]> {
  const opts = { cwd: worktree, safeDirs: [worktree] };
  const changed = (await git(['diff', '--name-only', '--no-renames', '-z', 'HEAD', '--'], opts)).stdout;
  const untracked = (await git(['ls-files', '--others', '--exclude-standard', '-z', '--'], opts)).stdout;
  return [...new Set([...changed.split('\0'), ...untracked.split('\0')].filter(Boolean))].sort();
}
