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
import {
  chmod,
  lchown,
  lstat,
  mkdir,
  readFile,
  readdir,
  realpath,
  rename,
  rm,
  stat,
  symlink,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from 'pino';
import { z } from 'zod';
import { ID_PATTERN, isGitUrl, isValidId } from '../../contracts';
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
  /** The warm pool slot the run's directory was made from (its `.pool/<slot>` link is removed with it). */
  slot: z.string().regex(ID_PATTERN).optional(),
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
  // A claimed pool slot's name is a link to its run's directory: only the link goes.
  if ((await lstat(dir).catch(() => undefined))?.isSymbolicLink()) return unlink(dir);
  const tree = join(dir, 'tree');
  if (await isMountPoint(tree)) await unmountQuota(tree);
  await rm(dir, { recursive: true, force: true });
}

/** Directory of the warm pool's slots (and their pools' leases) under a worktree root (decision 0016). */
export const POOL_DIR = '.pool';

/** Checkouts of up to this many entries are chowned in process; larger ones by `chown -R`. */
const CHOWN_IN_PROCESS_MAX = 2_000;

/**
 * Gives a freshly checked-out tree to `owner` (`uid:gid`) entry by entry, never following a
 * symlink (lchown; links are not descended). Returns false, part done, when the tree has more than
 * `max` entries, for the caller to finish with `chown -R`.
 */
async function chownSmallTree(tree: string, owner: string, max: number): Promise<boolean> {
  const [uid, gid] = owner.split(':').map(Number);
  if (uid === undefined || gid === undefined || !Number.isInteger(uid) || !Number.isInteger(gid))
    return false;
  let count = 0;
  const walk = async (dir: string): Promise<boolean> => {
    const entries = await readdir(dir, { withFileTypes: true });
    count += entries.length;
    if (count > max) return false;
    await Promise.all(entries.map((e) => lchown(join(dir, e.name), uid, gid)));
    for (const e of entries) {
      if (e.isDirectory() && !(await walk(join(dir, e.name)))) return false;
    }
    return true;
  };
  await lchown(tree, uid, gid);
  return walk(tree);
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

  /** A warm pool slot's directory: `<root>/.pool/<slot>`, on the same filesystem as run directories. */
  slotDir(slot: string): string {
    if (!isValidId(slot))
      throw refuse('invalid_sandbox_request', `slot ${JSON.stringify(slot)} is not a valid id`);
    return join(this.cfg.root, POOL_DIR, slot);
  }

  /**
   * Makes a warm pool slot (decision 0016): everything of a run's directory that does not depend on
   * the run — the directory (0711), an empty host-owned bare git dir (0700) and an empty tree, with
   * its own quota filesystem when quotas are on. Returns the tree, which a pool container mounts.
   */
  async prepareSlot(slot: string): Promise<string> {
    const dir = this.slotDir(slot);
    await mkdir(join(this.cfg.root, POOL_DIR), { recursive: true, mode: 0o711 });
    await removeRunDir(dir);
    await mkdir(dir, { mode: 0o711 });
    await chmod(dir, 0o711);
    await this.initRunDir(dir);
    return join(dir, 'tree');
  }

  /** Removes a slot that no run claimed (or a claimed slot's link). */
  async removeSlot(slot: string): Promise<void> {
    await removeRunDir(this.slotDir(slot));
  }

  /** The run-independent part of a run directory `dir` (which exists, mode 0711). */
  private async initRunDir(dir: string): Promise<void> {
    const gitDir = join(dir, 'git');
    const tree = join(dir, 'tree');
    await git(['init', '--quiet', '--bare', '--end-of-options', gitDir], { cwd: dir });
    await chmod(gitDir, 0o700);
    await mkdir(tree, { mode: 0o755 });
    if (this.quotaEnabled) {
      await mountQuota(join(dir, 'disk.img'), tree, {
        sizeMb: this.cfg.quotaMb,
        // Room for the caps plus what the host may drop, never more than ext4 allows for the size.
        inodes: Math.min(this.cfg.maxEntries + 1024, Math.floor((this.cfg.quotaMb * 1024 * 1024) / 4096)),
        owner: this.cfg.sandboxUser,
      });
    }
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
  /** The paths a commit changed against `from` (no rename detection), from the source git dir. */
  private async changed(state: Pick<WorkspaceState, 'gitDir'>, from: string, to: string): Promise<string[]> {
    const out = await this.srcGit(state, [
      'diff-tree',
      '--no-commit-id',
      '--name-only',
      '--no-renames',
      '-r',
      '-z',
      from,
      to,
    ]);
    return out.stdout.split('\0').filter(Boolean);
  }

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
    /**
     * A warm pool slot (prepareSlot) to become the run's directory: moved into place, and its name
     * left as a link to it, so a pool container that mounted the slot's tree mounts the run's tree.
     * Used only when the workspace is made here (not when a retry finds it made).
     */
    slot?: string;
  }): Promise<{ baseCommit: string; tree: string; slotUsed: boolean }> {
    const p = this.paths(input.runId);
    const existing = await this.readState(input.runId).catch(() => undefined);
    if (existing) return { baseCommit: existing.baseCommit, tree: p.tree, slotUsed: false };
    input.phase?.('repository');
    const src = await this.source(input.tenant, input.repo);
    const baseCommit = await resolveCommit(src.gitDir, input.baseRef);
    input.phase?.('worktree');
    await this.removeDir(p); // leftovers of an attempt that died half-way
    await mkdir(this.cfg.root, { recursive: true });
    if (input.slot) {
      const slotDir = this.slotDir(input.slot);
      // The slot was made by this worker and no run ran in it: its git dir and tree are empty.
      await rename(slotDir, p.dir);
      await symlink(join('..', input.runId), slotDir);
    } else {
      await mkdir(p.dir, { mode: 0o711 });
      await chmod(p.dir, 0o711);
      await this.initRunDir(p.dir);
    }
    const quota = this.quotaEnabled;
    const state: WorkspaceState = {
      version: 1,
      gitDir: src.gitDir,
      objectsDir: src.objectsDir,
      baseCommit,
      quota,
      ...(input.slot ? { slot: input.slot } : {}),
    };
    await this.runGit(input.runId, state, ['read-tree', '--reset', '-u', baseCommit], 600_000);
    if (isRoot()) {
      // The sandbox runs as an unprivileged user; it owns the tree (and nothing else of the run).
      // A small checkout is walked here (no process to start); a large one goes to chown -R.
      if (!(await chownSmallTree(p.tree, this.cfg.sandboxUser, CHOWN_IN_PROCESS_MAX))) {
        await runProcess('chown', ['-R', '--', this.cfg.sandboxUser, p.tree], { timeoutMs: 120_000 });
      }
    }
    // The chown changed every file's ctime, so the index's stat data is stale until refreshed. The
    // refresh re-reads every file, and the first host read (touchedPaths, commit) refreshes anyway:
    // it is left to then, off the path to the run's first command (decision 0016).
    await chmod(p.index, 0o600);
    const tmp = `${p.state}.${randomUUID()}`;
    await writeFile(tmp, JSON.stringify(state), { mode: 0o600 });
    await rename(tmp, p.state);
    return { baseCommit, tree: p.tree, slotUsed: input.slot !== undefined };
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
    const changedPaths = (commit: string): Promise<string[]> => this.changed(state, state.baseCommit, commit);
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
    // The link a pool slot's name left behind (its container is gone: destroySandbox removed it first).
    if (state?.slot) await this.removeSlot(state.slot);
    if (!input.keepBranch) {
      const gitDir = state?.gitDir ?? (await this.locateSource(input.tenant, input.repo));
      if (gitDir && (await branchExists(gitDir, runBranch(input.runId)))) {
        await this.srcGit({ gitDir }, ['branch', '-D', '--end-of-options', runBranch(input.runId)]);
        removed.push('branch');
      }
    }
    return removed;
  }

  /**
   * The commit a run's finish step made before its workspace was removed: for a finish step retried
   * after a worker died between the removal and its answer (decision 0015). Only when the workspace
   * is gone and the run's own branch (a platform namespace no origin can write) exists.
   */
  async committedBranch(input: {
    runId: string;
    tenant?: string;
    repo: string;
  }): Promise<{ branch: string; commit: string; changedPaths: string[] } | undefined> {
    if (await this.readState(input.runId).catch(() => undefined)) return undefined;
    const gitDir = await this.locateSource(input.tenant, input.repo);
    if (!gitDir) return undefined;
    const branch = runBranch(input.runId);
    const commit = await this.srcGit({ gitDir }, [
      'rev-parse',
      '--verify',
      '--quiet',
      `refs/heads/${branch}^{commit}`,
    ]).then(
      (r) => r.stdout.trim(),
      (err: unknown) => {
        if (gitAnswered(err)) return undefined;
        throw err;
      },
    );
    if (!commit) return undefined;
    const changedPaths = await this.changed({ gitDir }, `${commit}^`, commit);
    return { branch, commit, changedPaths };
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
