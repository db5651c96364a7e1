/**
 * The workspace boundary: the one module that touches a run's files on the host. Sandbox drivers
 * only manage containers; every host-side git and file operation on a run's tree is here.
 *
 * Threat model (docs/security.md). Untrusted: the work item's command and everything it writes
 * into its tree — file contents, names, symlinks, hard links, FIFOs, sizes, and any git metadata
 * (`.git` files or directories, `.gitattributes`, hooks, config). Trusted: the platform's
 * configuration, the source repository's git dir (never mounted into a sandbox), the worker.
 * The host must never execute, obey or follow anything from the untrusted side:
 *
 * - The git dir is host-owned and out of the sandbox's reach. Each run has
 *   `<root>/<runId>/` (mode 0711, owned by the worker) holding `git/` (a bare git dir the platform
 *   made: its config has no filter, diff driver, hook or fsmonitor), `index` (0600) and `state.json`;
 *   only `tree/` is mounted into containers. There is no `.git` in the tree: host git always runs
 *   with explicit `--git-dir`/`--work-tree`, GIT_INDEX_FILE and GIT_OBJECT_DIRECTORY (the source
 *   repository's object store, where the commit's objects go), never discovering a repository from
 *   the tree, and with every command-running setting switched off (git.ts HARDENED_CONFIG; user
 *   and system config files are not read).
 * - Before the host reads a tree (`seal`), the execution container is stopped (nothing of the run
 *   is still running) and the tree is walked with lstat only (scan.ts): `.git` entries and special
 *   files are dropped (deleted, never followed), hard links to files outside the tree and trees
 *   past the entry/byte caps are refused, and a quota-mounted tree is remounted read-only, so what
 *   is verified is what is committed.
 * - Per-run disk quota: the tree is a loop-mounted ext4 image of its own (quota.ts); a run that
 *   fills it fails `disk_quota_exceeded` and the host's disk is untouched.
 * - The run branch is written only by the platform, with compare-and-swap (`update-ref` from
 *   nothing), at commit time; no other ref of the source repository is ever touched.
 */
import { randomUUID } from 'node:crypto';
import { chmod, lstat, mkdir, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from 'pino';
import { z } from 'zod';
import { isGitUrl, isValidId } from '../../contracts';
import { GitError, branchExists, git, gitAnswered, resolveCommit, resolveRepo } from './git';
import { ensureMirror, mirrorPath, type RemoteMirrorOptions } from './mirror';
import { runProcess } from './process-helper';
import {
  isMountPoint,
  isReadOnly,
  mountQuota,
  quotaExhausted,
  remountReadOnly,
  remountWritable,
  unmountQuota,
} from './quota';
import { scanTree, type TreeScan } from './scan';

export interface WorkspaceConfig {
  /** Directory holding one directory per run (`<dataDir>/worktrees`). */
  root: string;
  /** Directory holding bare mirrors of repository URLs, one directory per tenant (`<dataDir>/mirrors`). */
  mirrorRoot: string;
  /** `uid:gid` that owns a tree while a sandbox uses it (when the worker runs as root). */
  sandboxUser: string;
  /** Per-run filesystem size in MiB; 0 turns the quota off. Needs root. */
  quotaMb: number;
  /** Most entries (files, links, directories) a tree may hold when the host reads it. */
  maxEntries: number;
  /** Most bytes of file content a tree may hold when the host reads it. */
  maxBytes: number;
  /**
   * Paths a run's repository may never be (or be inside): the platform's own data and checkout.
   * The tenancy grants check this at the API; the worker checks it again.
   */
  forbiddenRepoRoots?: string[];
  /** Credentials and bounds for remote (https) origins (decision 0019). */
  remote?: RemoteMirrorOptions;
  logger: Logger;
}

/** What the host keeps about a run's workspace, written once creation is complete. */
const stateSchema = z.object({
  version: z.literal(1),
  /** The source repository's git dir (a local repository's common dir, or the tenant's mirror). */
  gitDir: z.string(),
  /** Its object store, where the run's commit objects are written. */
  objectsDir: z.string(),
  baseCommit: z.string().regex(/^[0-9a-f]{40}([0-9a-f]{24})?$/),
  quota: z.boolean(),
});
type WorkspaceState = z.infer<typeof stateSchema>;

export interface WorkspacePaths {
  dir: string;
  tree: string;
  gitDir: string;
  index: string;
  state: string;
  image: string;
}

export interface SealResult {
  entries: number;
  bytes: number;
  /** `.git` entries and special files the run left, removed before git read the tree. */
  dropped: string[];
}

function refuse(type: string, message: string): ApplicationFailure {
  return ApplicationFailure.create({ type, message, nonRetryable: true });
}

const isRoot = (): boolean => process.getuid?.() === 0;

const within = (parent: string, child: string): boolean => {
  const rel = relative(parent, child);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
};

/**
 * Unmounts a run directory's tree filesystem and deletes the directory, reading nothing in it and
 * following no symlink (also the sweeper's way to remove an orphan).
 */
export async function removeRunDir(dir: string): Promise<void> {
  const tree = join(dir, 'tree');
  if (await isMountPoint(tree)) await unmountQuota(tree);
  await rm(dir, { recursive: true, force: true });
}

export function runBranch(runId: string): string {
  return `choiros/run/${runId}`;
}

export class Workspaces {
  constructor(private readonly cfg: WorkspaceConfig) {}

  /** Whether trees get a filesystem of their own (quota on and the worker is root). */
  get quotaEnabled(): boolean {
    return this.cfg.quotaMb > 0 && isRoot();
  }

  paths(runId: string): WorkspacePaths {
    if (!isValidId(runId))
      throw refuse('invalid_sandbox_request', `runId ${JSON.stringify(runId)} is not a valid id`);
    const dir = join(this.cfg.root, runId);
    return {
      dir,
      tree: join(dir, 'tree'),
      gitDir: join(dir, 'git'),
      index: join(dir, 'index'),
      state: join(dir, 'state.json'),
      image: join(dir, 'disk.img'),
    };
  }

  /** The source repository's git dir and object store, resolved before any run code ran. */
  private async source(tenant: string, repo: string): Promise<{ gitDir: string; objectsDir: string }> {
    if (isGitUrl(repo)) {
      const mirror = await ensureMirror(this.cfg.mirrorRoot, tenant, repo, this.cfg.remote);
      return { gitDir: mirror, objectsDir: join(mirror, 'objects') };
    }
    // Checked on the path as given and as git resolves it, before and after git looks at it.
    await this.assertNotPlatformPath(repo);
    const top = await resolveRepo(repo);
    await this.assertNotPlatformPath(top);
    const out = (
      await git(['rev-parse', '--path-format=absolute', '--git-common-dir', '--git-path', 'objects'], {
        cwd: top,
        safeDirs: [top],
      })
    ).stdout
      .trim()
      .split('\n');
    const [gitDir, objectsDir] = out;
    if (!gitDir || !objectsDir) throw new Error(`git rev-parse gave no git dir for ${top}`);
    return { gitDir, objectsDir };
  }

  private async assertNotPlatformPath(repo: string): Promise<void> {
    const real = await realpath(repo).catch(() => resolve(repo));
    for (const root of [this.cfg.root, this.cfg.mirrorRoot, ...(this.cfg.forbiddenRepoRoots ?? [])]) {
      const forbidden = await realpath(root).catch(() => resolve(root));
      if (within(forbidden, real) || within(real, forbidden)) {
        throw refuse(
          'repo_not_allowed',
          `repository ${repo} is (or contains) a platform path and cannot be a run's repository`,
        );
      }
    }
  }

  private async readState(runId: string): Promise<WorkspaceState | undefined> {
    const raw = await readFile(this.paths(runId).state, 'utf8').catch(() => undefined);
    if (raw === undefined) return undefined;
    return stateSchema.parse(JSON.parse(raw));
  }

  private async state(runId: string): Promise<WorkspaceState> {
    const s = await this.readState(runId);
    if (!s) throw refuse('sandbox_not_found', `run ${runId} has no workspace on this host`);
    return s;
  }

  /** git with the run's host-owned git dir, index and the source's object store. */
  private runGit(runId: string, state: WorkspaceState, args: string[], timeoutMs?: number) {
    const p = this.paths(runId);
    return git(['--git-dir', p.gitDir, '--work-tree', p.tree, ...args], {
      cwd: p.dir,
      safeDirs: [p.gitDir, p.tree],
      env: { GIT_INDEX_FILE: p.index, GIT_OBJECT_DIRECTORY: state.objectsDir },
      ...(timeoutMs ? { timeoutMs } : {}),
    });
  }

  /** git on the source repository's git dir (refs only: nothing here reads a tree). */
  private srcGit(state: Pick<WorkspaceState, 'gitDir'>, args: string[]) {
    return git(['--git-dir', state.gitDir, ...args], { cwd: '/', safeDirs: [state.gitDir] });
  }

  /**
   * Makes the run's workspace at `baseRef` (idempotent: a retry finds a complete one, and a
   * half-made one is removed and made again). Returns the base commit and the tree to mount.
   */
  async create(input: {
    runId: string;
    tenant: string;
    repo: string;
    baseRef: string;
    phase?: (name: string) => void;
  }): Promise<{ baseCommit: string; tree: string }> {
    const p = this.paths(input.runId);
    const existing = await this.readState(input.runId).catch(() => undefined);
    if (existing) return { baseCommit: existing.baseCommit, tree: p.tree };
    input.phase?.('repository');
    const src = await this.source(input.tenant, input.repo);
    const baseCommit = await resolveCommit(src.gitDir, input.baseRef);
    input.phase?.('worktree');
    await this.removeDir(p); // leftovers of an attempt that died half-way
    await mkdir(this.cfg.root, { recursive: true });
    await mkdir(p.dir, { mode: 0o711 });
    await chmod(p.dir, 0o711);
    await git(['init', '--quiet', '--bare', '--end-of-options', p.gitDir], { cwd: p.dir });
    await chmod(p.gitDir, 0o700);
    await mkdir(p.tree, { mode: 0o755 });
    const quota = this.quotaEnabled;
    if (quota) {
      await mountQuota(p.image, p.tree, {
        sizeMb: this.cfg.quotaMb,
        // Room for the caps plus what the host may drop, never more than ext4 allows for the size.
        inodes: Math.min(this.cfg.maxEntries + 1024, Math.floor((this.cfg.quotaMb * 1024 * 1024) / 4096)),
        owner: this.cfg.sandboxUser,
      });
    }
    const state: WorkspaceState = {
      version: 1,
      gitDir: src.gitDir,
      objectsDir: src.objectsDir,
      baseCommit,
      quota,
    };
    await this.runGit(input.runId, state, ['read-tree', '--reset', '-u', baseCommit], 600_000);
    if (isRoot()) {
      // The sandbox runs as an unprivileged user; it owns the tree (and nothing else of the run).
      await runProcess('chown', ['-R', '--', this.cfg.sandboxUser, p.tree], { timeoutMs: 120_000 });
    }
    // The chown changed every file's ctime: refresh now, so the run's changes are all that differ later.
    await this.refresh(input.runId, state);
    await chmod(p.index, 0o600);
    const tmp = `${p.state}.${randomUUID()}`;
    await writeFile(tmp, JSON.stringify(state), { mode: 0o600 });
    await rename(tmp, p.state);
    return { baseCommit, tree: p.tree };
  }

  private async refresh(runId: string, state: WorkspaceState): Promise<void> {
    // Exit 1 means "some entries need updating" (changed files): not an error here.
    await this.runGit(runId, state, ['update-index', '-q', '--refresh'], 600_000).catch((err: unknown) => {
      if (!(err instanceof GitError && err.exitCode === 1)) throw err;
    });
  }

  /** Before a (retried) execution: a tree that was sealed read-only is writable again. */
  async unseal(runId: string): Promise<void> {
    const p = this.paths(runId);
    if ((await isMountPoint(p.tree)) && (await isReadOnly(p.tree))) await remountWritable(p.tree);
  }

  /** After the run's command: whether it filled its filesystem (always false without a quota). */
  async quotaExceeded(runId: string): Promise<{ full: boolean; freeBytes: number; freeInodes: number }> {
    const p = this.paths(runId);
    if (!(await isMountPoint(p.tree))) return { full: false, freeBytes: -1, freeInodes: -1 };
    return quotaExhausted(p.tree);
  }

  /**
   * Makes the tree safe for the host to read; call only once nothing of the run runs any more (the
   * execution container is stopped). Drops `.git` entries and special files, refuses outside hard
   * links and trees past the caps, and remounts a quota tree read-only. Idempotent.
   */
  async seal(runId: string): Promise<SealResult> {
    const p = this.paths(runId);
    await this.state(runId);
    const mounted = await isMountPoint(p.tree);
    const readOnly = mounted && (await isReadOnly(p.tree));
    let scan: TreeScan = await scanTree(p.tree, {
      maxEntries: this.cfg.maxEntries,
      maxBytes: this.cfg.maxBytes,
    });
    const dropped = [...scan.gitEntries, ...scan.specialFiles];
    if (dropped.length > 0 && !readOnly) {
      for (const rel of dropped) {
        const target = join(p.tree, rel);
        // Never follows a symlink: lstat says what the entry itself is, rm removes the entry.
        await lstat(target).then(
          () => rm(target, { recursive: true, force: true }),
          () => undefined,
        );
      }
      scan = await scanTree(p.tree, { maxEntries: this.cfg.maxEntries, maxBytes: this.cfg.maxBytes });
    }
    if (scan.overLimit) {
      const cap =
        scan.overLimit === 'entries' ? `${this.cfg.maxEntries} entries` : `${this.cfg.maxBytes} bytes`;
      throw refuse(
        'workspace_too_large',
        `the run's tree holds more than ${cap} (CHOIROS_WORKSPACE_MAX_${scan.overLimit === 'entries' ? 'ENTRIES' : 'BYTES'}); nothing of it is stored`,
      );
    }
    if (scan.outsideHardLinks.length > 0) {
      throw refuse(
        'workspace_unsafe',
        `the run's tree has hard links to files outside it (${scan.outsideHardLinks.slice(0, 5).join(', ')}); nothing of it is stored`,
      );
    }
    if (scan.gitEntries.length + scan.specialFiles.length > 0) {
      throw refuse(
        'workspace_unsafe',
        `could not drop ${[...scan.gitEntries, ...scan.specialFiles].slice(0, 5).join(', ')} from the run's tree`,
      );
    }
    if (mounted && !readOnly) await remountReadOnly(p.tree);
    if (dropped.length > 0) {
      this.cfg.logger.warn(
        { event: 'workspace.dropped', runId, dropped: dropped.slice(0, 50), count: dropped.length },
        'dropped .git entries / special files the run left in its tree',
      );
    }
    return { entries: scan.entries, bytes: scan.bytes, dropped };
  }

  /**
   * Repository-relative paths the run changed against its base: modified, added, deleted (both
   * sides of a rename) and untracked files that are not ignored — what a commit takes. Seals the
   * tree first (as commit does): nothing here reads an unsealed tree.
   */
  async touchedPaths(runId: string): Promise<string[]> {
    const state = await this.state(runId);
    await this.seal(runId);
    await this.refresh(runId, state);
    const changed = (
      await this.runGit(runId, state, [
        'diff-index',
        '--name-only',
        '--no-renames',
        '-z',
        state.baseCommit,
        '--',
      ])
    ).stdout;
    const untracked = (
      await this.runGit(runId, state, ['ls-files', '--others', '--exclude-standard', '-z', '--'])
    ).stdout;
    return [...new Set([...changed.split('\0'), ...untracked.split('\0')].filter(Boolean))].sort();
  }

  /**
   * Commits the sealed tree on the run branch in the source repository, created from nothing
   * (compare-and-swap): a retry finds its own commit; any other branch of that name is an error.
   */
  async commit(
    runId: string,
    msg: { message: string; authorName: string; authorEmail: string },
  ): Promise<{ branch: string; commit: string; changedPaths: string[] }> {
    const state = await this.state(runId);
    await this.seal(runId);
    const branch = runBranch(runId);
    const ref = `refs/heads/${branch}`;
    await this.runGit(runId, state, ['add', '--all', '--', '.'], 600_000);
    const tree = (await this.runGit(runId, state, ['write-tree'])).stdout.trim();
    const changedPaths = async (commit: string): Promise<string[]> =>
      (
        await this.srcGit(state, [
          'diff-tree',
          '--no-commit-id',
          '--name-only',
          '--no-renames',
          '-r',
          '-z',
          state.baseCommit,
          commit,
        ])
      ).stdout
        .split('\0')
        .filter(Boolean);
    const existing = await this.srcGit(state, ['rev-parse', '--verify', '--quiet', `${ref}^{commit}`]).then(
      (r) => r.stdout.trim(),
      (err: unknown) => {
        if (gitAnswered(err)) return undefined;
        throw err;
      },
    );
    if (existing) {
      // A retried commit: the branch holds exactly this tree on the base.
      const info = (await this.srcGit(state, ['show', '-s', '--format=%T %P', existing])).stdout.trim();
      if (info === `${tree} ${state.baseCommit}`)
        return { branch, commit: existing, changedPaths: await changedPaths(existing) };
      throw refuse(
        'branch_conflict',
        `branch ${branch} already exists with other content; the run's commit was not written`,
      );
    }
    const commit = (
      await git(
        [
          '--git-dir',
          this.paths(runId).gitDir,
          'commit-tree',
          tree,
          '-p',
          state.baseCommit,
          '-m',
          msg.message,
        ],
        {
          cwd: this.paths(runId).dir,
          safeDirs: [this.paths(runId).gitDir],
          env: {
            GIT_OBJECT_DIRECTORY: state.objectsDir,
            GIT_AUTHOR_NAME: msg.authorName,
            GIT_AUTHOR_EMAIL: msg.authorEmail,
            GIT_COMMITTER_NAME: 'ChoirOS',
            GIT_COMMITTER_EMAIL: 'runs@choiros.invalid',
          },
        },
      )
    ).stdout.trim();
    await this.srcGit(state, [
      'update-ref',
      '-m',
      `choiros run ${runId}`,
      ref,
      commit,
      '0'.repeat(commit.length),
    ]);
    return { branch, commit, changedPaths: await changedPaths(commit) };
  }

  private async removeDir(p: WorkspacePaths): Promise<void> {
    await removeRunDir(p.dir);
  }

  /**
   * Removes the run's workspace and, unless kept, its branch. Works from what the host recorded;
   * `repo` (from the workflow) locates the branch when the workspace is already gone.
   */
  async destroy(input: {
    runId: string;
    tenant?: string;
    repo: string;
    keepBranch: boolean;
  }): Promise<string[]> {
    const p = this.paths(input.runId);
    const removed: string[] = [];
    const state = await this.readState(input.runId).catch(() => undefined);
    const present = await stat(p.dir).then(
      () => true,
      () => false,
    );
    if (present) {
      await this.removeDir(p);
      removed.push('worktree');
    }
    if (!input.keepBranch) {
      const gitDir = state?.gitDir ?? (await this.locateSource(input.tenant, input.repo));
      if (gitDir && (await branchExists(gitDir, runBranch(input.runId)))) {
        await this.srcGit({ gitDir }, ['branch', '-D', '--end-of-options', runBranch(input.runId)]);
        removed.push('branch');
      }
    }
    return removed;
  }

  /** The source git dir of a run whose workspace is gone, if it still exists (never creates a mirror). */
  private async locateSource(tenant: string | undefined, repo: string): Promise<string | undefined> {
    if (isGitUrl(repo)) {
      if (!tenant || !isValidId(tenant)) return undefined;
      const path = mirrorPath(this.cfg.mirrorRoot, tenant, repo);
      return stat(path).then(
        () => path,
        () => undefined,
      );
    }
    try {
      return (await this.source(tenant ?? 'default', repo)).gitDir;
    } catch (err) {
      // Gone (or never allowed): nothing of it to clean. Any other failure is retried.
      if (
        err instanceof ApplicationFailure &&
        (err.type === 'repo_not_found' || err.type === 'repo_not_allowed')
      )
        return undefined;
      throw err;
    }
  }
}
