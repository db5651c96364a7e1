/**
 * Host git, through argv (never a shell) with option injection closed off and every
 * command-running setting switched off (see activities/workspace/workspace.ts for the threat model).
 */
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { recoverStaleLocks } from './locks';
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
 * Configuration that makes git run a program, switched off on every host git call (command-line
 * `-c` wins over every config file). Filters, textconv and diff drivers need a `filter.<x>.*` /
 * `diff.<x>.*` entry to run anything; run git dirs are made by the platform and have none, and the
 * user's and the system's config files are not read at all (GIT_CONFIG_GLOBAL / NOSYSTEM below).
 */
export const HARDENED_CONFIG: readonly string[] = [
  'core.fsmonitor=false',
  'core.hooksPath=/dev/null',
  'core.pager=cat',
  'core.askPass=',
  'core.attributesFile=/dev/null',
  'core.untrackedCache=false',
  'core.protectNTFS=true',
  'core.protectHFS=true',
  'core.symlinks=true',
  'core.autocrlf=false',
  'credential.helper=',
  'gc.auto=0',
  'maintenance.auto=false',
  'commit.gpgsign=false',
  'tag.gpgsign=false',
  'submodule.recurse=false',
  'fetch.recurseSubmodules=false',
  'protocol.ext.allow=never',
].flatMap((kv) => ['-c', kv]);

/** The environment of every host git call: nothing inherited that could point git elsewhere. */
function gitEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? '/tmp',
    GIT_TERMINAL_PROMPT: '0',
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_CONFIG_GLOBAL: '/dev/null',
    GIT_ATTR_NOSYSTEM: '1',
    GIT_NO_REPLACE_OBJECTS: '1',
    GIT_OPTIONAL_LOCKS: '0',
    GIT_PAGER: 'cat',
    PAGER: 'cat',
    LC_ALL: 'C',
    ...extra,
  };
}

/**
 * Runs git with a fixed, sanitised environment and HARDENED_CONFIG. `safeDirs` are trusted
 * explicitly (a repository owned by another user is refused otherwise). `env` adds git's own
 * variables (GIT_INDEX_FILE, GIT_OBJECT_DIRECTORY) for the workspace's explicit git dirs.
 */
export function git(
  args: string[],
  opts: { cwd: string; safeDirs?: string[]; timeoutMs?: number; env?: Record<string, string> },
): Promise<GitResult> {
  const safe = (opts.safeDirs ?? []).flatMap((d) => ['-c', `safe.directory=${d}`]);
  const fullArgs = [...safe, ...HARDENED_CONFIG, ...args];
  const run = (): Promise<GitResult> =>
    runProcess('git', fullArgs, {
      cwd: opts.cwd,
      timeoutMs: opts.timeoutMs ?? 120_000,
      maxBuffer: 16 * 1024 * 1024,
      env: gitEnv(opts.env),
    });
  // A lock a killed git left behind (locks.ts): removed when stale, and the call made once more.
  // `update-index -q` exits 128 without a word when its index is locked: that lock is named here.
  const indexLock = opts.env?.GIT_INDEX_FILE ? [`${opts.env.GIT_INDEX_FILE}.lock`] : [];
  const once = run().catch(async (err: unknown) => {
    if (!(err instanceof ProcessError)) throw err;
    const silent = err.code === 128 && err.stderr.trim() === '' ? indexLock : [];
    if (await recoverStaleLocks(err.stderr, silent, lockDirsOf(args, opts.cwd, opts.env))) return run();
    throw err;
  });
  return once.catch((err: unknown) => {
    if (!(err instanceof ProcessError)) throw err;
    const code = typeof err.code === 'number' ? err.code : null;
    // Name the subcommand, not a leading `-c key=value` or `--git-dir <dir>`.
    const sub =
      args.find(
        (a, i) => !a.startsWith('-') && !['-c', '--git-dir', '--work-tree'].includes(args[i - 1] ?? ''),
      ) ?? '';
    throw new GitError(`git ${sub} failed: ${err.stderr.trim() || err.message}`, code, err.stderr);
  });
}

/**
 * Where a git call may hold locks: each `--git-dir`, else `<cwd>/.git`, and its index file's own
 * lock. Never the work tree: that is a run's, and nothing in it is git's to unlock.
 */
export function lockDirsOf(args: string[], cwd: string, env?: Record<string, string>): string[] {
  const gitDirs = args.flatMap((a, i) =>
    a === '--git-dir' && args[i + 1]
      ? [resolve(cwd, args[i + 1] as string)]
      : a.startsWith('--git-dir=')
        ? [resolve(cwd, a.slice(10))]
        : [],
  );
  const index = env?.GIT_INDEX_FILE ? [`${resolve(cwd, env.GIT_INDEX_FILE)}.lock`] : [];
  return [...(gitDirs.length > 0 ? gitDirs : [resolve(cwd, '.git')]), ...index];
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
