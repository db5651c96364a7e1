/**
 * Stale git lock files: the `index.lock`, `<ref>.lock`, `packed-refs.lock`, `config.lock` … that a
 * git killed half-way (a worker SIGKILL, an OOM kill, a host crash) leaves behind. Git never
 * removes another process's lock, so without this every later git call on that repository fails
 * with "Unable to create '<path>.lock': File exists" — forever.
 *
 * Recovery is reactive: only a lock that a failed git call named in its error is looked at (see
 * git.ts), and it is removed only when it is stale, i.e. all of
 *
 * - it is a regular file (never a symlink or a directory), older (mtime) than `staleAfterMs`
 *   (`CHOIROS_GIT_LOCK_STALE_SECONDS`, 60 s by default; the guard for an owner this host cannot
 *   see, e.g. another pid namespace);
 * - no process on this host has it open (`/proc/<pid>/fd`);
 * - no git process on this host works on its repository: none whose cwd, argv or `GIT_*`
 *   environment is in the lock's git dir (or the work tree around a `.git`, or the directory of a
 *   lock outside any git dir, such as a run's `index.lock`).
 *
 * Removal is atomic and checked: the lock is renamed aside, and put back if what was renamed is not
 * the file that was judged stale (a live git may have taken the lock again in between). Every
 * removal is logged (`event: git.lock.removed`). A lock that is not stale yet (young, or held by a
 * live process) is waited for, at most the bound, while the activity heartbeats; one still not
 * stale then is left alone and the git call fails as before (retryably: the activity tries again).
 */
import { randomUUID } from 'node:crypto';
import { link, lstat, readFile, readdir, readlink, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, sep } from 'node:path';
import { Context } from '@temporalio/activity';
import pino, { type Logger } from 'pino';

export interface LockPolicy {
  /** A lock younger than this is never removed. */
  staleAfterMs: number;
  logger: Logger;
  /** Where processes are listed (`/proc`; tests may point elsewhere). */
  procRoot: string;
}

let policy: LockPolicy = {
  staleAfterMs: 60_000,
  logger: pino({ name: 'git-locks' }),
  procRoot: '/proc',
};

/** Sets the worker's lock policy (worker start: `CHOIROS_GIT_LOCK_STALE_SECONDS` and its logger). */
export function configureGitLocks(p: Partial<LockPolicy>): void {
  policy = { ...policy, ...p };
}

export function gitLockPolicy(): LockPolicy {
  return policy;
}

const CONFLICT = /Unable to create '([^']+\.lock)': File exists/g;

/** The lock files a git error names as "already exists" (absolute paths only). */
export function lockConflicts(stderr: string): string[] {
  const out = new Set<string>();
  for (const m of stderr.matchAll(CONFLICT)) {
    const p = m[1];
    if (p && isAbsolute(p)) out.add(p);
  }
  return [...out];
}

export type LockVerdict =
  | { path: string; state: 'gone' }
  | { path: string; state: 'not_a_file' }
  | { path: string; state: 'young'; ageMs: number }
  | { path: string; state: 'held'; ageMs: number; pids: number[]; why: 'open' | 'git_running' }
  | { path: string; state: 'stale'; ageMs: number; ino: number };

const within = (parent: string, child: string): boolean => {
  const rel = relative(parent, child);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
};

const isFile = (p: string): Promise<boolean> =>
  stat(p).then(
    (s) => s.isFile(),
    () => false,
  );
const isDir = (p: string): Promise<boolean> =>
  stat(p).then(
    (s) => s.isDirectory(),
    () => false,
  );

/**
 * The directories whose git processes may own `lock`: its git dir (the nearest ancestor with `HEAD`
 * and `objects/`), plus the work tree when that git dir is a `.git`; or the lock's own directory
 * when it is in no git dir (a run's `index.lock` next to its `git/`).
 */
export async function lockScope(lock: string): Promise<string[]> {
  let dir = dirname(lock);
  for (;;) {
    if ((await isFile(join(dir, 'HEAD'))) && (await isDir(join(dir, 'objects')))) {
      return basename(dir) === '.git' ? [dir, dirname(dir)] : [dir];
    }
    const up = dirname(dir);
    if (up === dir) return [dirname(lock)];
    dir = up;
  }
}

interface ProcInfo {
  pid: number;
  comm: string;
  cwd?: string;
  argv: string[];
  envPaths: string[];
  fds: string[];
}

async function readProc(root: string, pid: number): Promise<ProcInfo | undefined> {
  const base = join(root, String(pid));
  const comm = (await readFile(join(base, 'comm'), 'utf8').catch(() => '')).trim();
  if (!comm) return undefined;
  const cwd = await readlink(join(base, 'cwd')).catch(() => undefined);
  const argv = (await readFile(join(base, 'cmdline'), 'utf8').catch(() => '')).split('\0').filter(Boolean);
  const envPaths = (await readFile(join(base, 'environ'), 'utf8').catch(() => ''))
    .split('\0')
    .filter((kv) => kv.startsWith('GIT_'))
    .map((kv) => kv.slice(kv.indexOf('=') + 1))
    .filter((v) => isAbsolute(v));
  const fdNames = await readdir(join(base, 'fd')).catch(() => [] as string[]);
  const fds = (
    await Promise.all(fdNames.map((fd) => readlink(join(base, 'fd', fd)).catch(() => undefined)))
  ).filter((x): x is string => typeof x === 'string');
  return { pid, comm, ...(cwd ? { cwd } : {}), argv, envPaths, fds };
}

async function processes(root: string): Promise<ProcInfo[]> {
  const names = await readdir(root).catch(() => [] as string[]);
  const pids = names.filter((n) => /^\d+$/.test(n)).map(Number);
  const self = process.pid;
  const infos = await Promise.all(pids.filter((p) => p !== self).map((p) => readProc(root, p)));
  return infos.filter((x): x is ProcInfo => x !== undefined);
}

const isGitProcess = (p: ProcInfo): boolean =>
  p.comm === 'git' || p.comm.startsWith('git-') || basename(p.argv[0] ?? '') === 'git';

/** Judges one lock file: gone, not a file, too young, held by a live process, or stale. */
export async function inspectLock(
  lock: string,
  opts: { staleAfterMs?: number; now?: number; procRoot?: string } = {},
): Promise<LockVerdict> {
  const staleAfterMs = opts.staleAfterMs ?? policy.staleAfterMs;
  const st = await lstat(lock).catch(() => undefined);
  if (!st) return { path: lock, state: 'gone' };
  if (!st.isFile()) return { path: lock, state: 'not_a_file' };
  const ageMs = Math.max(0, (opts.now ?? Date.now()) - st.mtimeMs);
  // The owner first: a lock a live process holds is "held" at any age (the caller need not wait).
  const scope = await lockScope(lock);
  const procs = await processes(opts.procRoot ?? policy.procRoot);
  const open = procs.filter((p) => p.fds.includes(lock)).map((p) => p.pid);
  if (open.length > 0) return { path: lock, state: 'held', ageMs, pids: open, why: 'open' };
  const inScope = (path: string): boolean => scope.some((s) => within(s, path));
  const gits = procs
    .filter(isGitProcess)
    .filter(
      (p) =>
        (p.cwd !== undefined && inScope(p.cwd)) ||
        p.argv.some((a) => isAbsolute(a) && inScope(a)) ||
        p.envPaths.some(inScope),
    )
    .map((p) => p.pid);
  if (gits.length > 0) return { path: lock, state: 'held', ageMs, pids: gits, why: 'git_running' };
  if (ageMs < staleAfterMs) return { path: lock, state: 'young', ageMs };
  return { path: lock, state: 'stale', ageMs, ino: st.ino };
}

/**
 * Removes `lock` if it is stale (see the module comment); returns the verdict and whether it went.
 * Never removes a lock a live process holds or took again in the meantime.
 */
export async function removeStaleLock(
  lock: string,
  opts: { staleAfterMs?: number; now?: number; procRoot?: string; logger?: Logger } = {},
): Promise<{ verdict: LockVerdict; removed: boolean }> {
  const logger = opts.logger ?? policy.logger;
  const verdict = await inspectLock(lock, opts);
  if (verdict.state !== 'stale') return { verdict, removed: false };
  const aside = `${lock}.stale-${randomUUID()}`;
  try {
    await rename(lock, aside);
  } catch {
    // Gone already (its owner finished, or another worker removed it): nothing to do.
    return { verdict, removed: false };
  }
  const moved = await lstat(aside).catch(() => undefined);
  if (!moved || moved.ino !== verdict.ino) {
    // A live git took the lock again between the check and the rename: give it back (link fails
    // if yet another lock exists; then the renamed one's owner fails its own commit, retryably).
    await link(aside, lock).catch(() => undefined);
    await unlink(aside).catch(() => undefined);
    logger.warn(
      { event: 'git.lock.raced', lock },
      'git lock was taken again while being removed; left in place',
    );
    return { verdict, removed: false };
  }
  await unlink(aside).catch(() => undefined);
  logger.warn(
    {
      event: 'git.lock.removed',
      lock,
      ageMs: Math.round(verdict.ageMs),
      staleAfterMs: opts.staleAfterMs ?? policy.staleAfterMs,
    },
    'removed a stale git lock (no live process holds it)',
  );
  return { verdict, removed: true };
}

/** Keeps an activity alive while it waits for a lock to age (no-op outside an activity). */
function heartbeat(details: unknown): void {
  try {
    Context.current().heartbeat(details);
  } catch {
    /* not in an activity */
  }
}

/**
 * After a git call failed: removes the stale locks its error names (and those of `maybe` that
 * exist). A lock that is not stale yet —
 * younger than the bound (its git was killed moments ago) or held by a live process (another git
 * on the same repository) — is waited for, re-checked every second while the activity heartbeats,
 * for at most the bound. True when the error named at least one lock and none is left (the call may
 * be run again); false when one is still there (logged, left alone; the call fails retryably).
 */
export async function recoverStaleLocks(
  stderr: string,
  maybe: string[] = [],
  /**
   * The git dirs the failed call worked on. Only a lock inside one of them is touched: git's
   * stderr can carry text a run wrote (a file name in a warning), so a path it names is a claim,
   * never a licence to remove a file elsewhere on the host.
   */
  scope: string[] = [],
): Promise<boolean> {
  // `maybe`: locks a git that failed without a word may have met; only those present count.
  const present = (
    await Promise.all(maybe.map(async (p) => ((await lstat(p).catch(() => undefined)) ? p : undefined)))
  ).filter((p): p is string => p !== undefined);
  const claimed = lockConflicts(stderr);
  const inScope = claimed.filter((lock) => scope.some((dir) => within(dir, lock)));
  for (const lock of claimed.filter((l) => !inScope.includes(l))) {
    policy.logger.warn(
      { event: 'git.lock.out_of_scope', lock, scope },
      "git named a lock outside the call's git dirs; left alone",
    );
  }
  const named = [...new Set([...inScope, ...present])];
  if (named.length === 0) return false;
  const waitUntil = Date.now() + policy.staleAfterMs + 1000;
  for (const lock of named) {
    for (;;) {
      const { verdict, removed } = await removeStaleLock(lock);
      if (removed || verdict.state === 'gone') break;
      if ((verdict.state === 'young' || verdict.state === 'held') && Date.now() < waitUntil) {
        heartbeat({ phase: 'git-lock', lock, ageMs: Math.round(verdict.ageMs) });
        await new Promise((r) =>
          setTimeout(r, Math.min(1000, Math.max(50, policy.staleAfterMs - verdict.ageMs))),
        );
        continue;
      }
      policy.logger.warn(
        {
          event: 'git.lock.kept',
          lock,
          state: verdict.state,
          ...('ageMs' in verdict ? { ageMs: Math.round(verdict.ageMs) } : {}),
          ...(verdict.state === 'held' ? { pids: verdict.pids, why: verdict.why } : {}),
          staleAfterMs: policy.staleAfterMs,
        },
        'git lock is not stale; the git call fails and is retried',
      );
      return false;
    }
  }
  return true;
}
