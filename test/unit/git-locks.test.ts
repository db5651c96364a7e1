/**
 * Stale git locks (activities/workspace/locks.ts) with real git and real processes: a lock a killed
 * git left is removed once stale and the git call goes through; a young lock, a lock a live process
 * has open and a lock of a repository a live git works in are never removed.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { GitError, git, lockDirsOf } from '../../activities/workspace/git';
import {
  configureGitLocks,
  inspectLock,
  lockConflicts,
  lockScope,
  recoverStaleLocks,
  removeStaleLock,
} from '../../activities/workspace/locks';

const STALE_MS = 60_000;
let dir: string;
let lines: string[];
const children: ChildProcess[] = [];

const sh = (cwd: string, ...args: string[]): string =>
  execFileSync('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', ...args], { cwd, encoding: 'utf8' });

/** A lock file as a git killed `agoMs` ago leaves it (git writes it, then dies). */
function leftLock(path: string, agoMs: number): void {
  writeFileSync(path, '');
  const t = (Date.now() - agoMs) / 1000;
  utimesSync(path, t, t);
}

function workRepo(name: string): string {
  const repo = join(dir, name);
  mkdirSync(repo);
  sh(repo, 'init', '-q', '-b', 'main');
  writeFileSync(join(repo, 'a.txt'), 'a\n');
  sh(repo, 'add', '.');
  sh(repo, 'commit', '-qm', 'base');
  return repo;
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'choiros-locks-unit-'));
  lines = [];
  configureGitLocks({
    staleAfterMs: STALE_MS,
    logger: pino({ level: 'info' }, { write: (s: string) => void lines.push(s) }),
  });
});
afterEach(async () => {
  for (const c of children.splice(0)) {
    if (c.exitCode === null && c.signalCode === null) {
      c.kill('SIGKILL');
      await new Promise((r) => c.once('exit', r));
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

const events = (): { event?: string; lock?: string; state?: string; why?: string }[] =>
  lines.map((l) => JSON.parse(l) as { event?: string });

test('lockConflicts reads the lock paths out of git errors', () => {
  expect(
    lockConflicts(
      "fatal: Unable to create '/r/.git/index.lock': File exists.\n\nAnother git process seems to be running",
    ),
  ).toEqual(['/r/.git/index.lock']);
  expect(
    lockConflicts(
      "error: cannot lock ref 'refs/heads/main': Unable to create '/m.git/refs/heads/main.lock': File exists.",
    ),
  ).toEqual(['/m.git/refs/heads/main.lock']);
  expect(lockConflicts("fatal: Unable to create 'relative/index.lock': File exists.")).toEqual([]);
  expect(lockConflicts('fatal: not a git repository')).toEqual([]);
});

test('a stale index.lock is removed, logged, and the git call goes through', async () => {
  const repo = workRepo('w');
  writeFileSync(join(repo, 'b.txt'), 'b\n');
  const lock = join(repo, '.git', 'index.lock');
  leftLock(lock, 10 * 60_000);
  await git(['add', '--', 'b.txt'], { cwd: repo, safeDirs: [repo] });
  expect(existsSync(lock)).toBe(false);
  expect(sh(repo, 'diff', '--cached', '--name-only').trim()).toBe('b.txt');
  const removed = events().filter((e) => e.event === 'git.lock.removed');
  expect(removed).toEqual([expect.objectContaining({ lock, staleAfterMs: STALE_MS })]);
});

test('an unowned young lock is waited for until it is stale, then removed', async () => {
  configureGitLocks({ staleAfterMs: 1500 });
  const repo = workRepo('w');
  writeFileSync(join(repo, 'b.txt'), 'b\n');
  const lock = join(repo, '.git', 'index.lock');
  leftLock(lock, 0);
  await git(['add', '--', 'b.txt'], { cwd: repo, safeDirs: [repo] });
  expect(existsSync(lock)).toBe(false);
  const removed = events().filter((e) => e.event === 'git.lock.removed') as { ageMs?: number }[];
  expect(removed).toHaveLength(1);
  expect(removed[0]?.ageMs).toBeGreaterThanOrEqual(1500);
});

test('a lock a live process holds fails the call (retryably, after the bound) naming it, and is kept', async () => {
  configureGitLocks({ staleAfterMs: 1000 });
  const repo = workRepo('w');
  const lock = join(repo, '.git', 'index.lock');
  leftLock(lock, 0);
  const fd = openSync(lock, 'r');
  const holder = spawn('sleep', ['60'], { cwd: '/', stdio: ['ignore', fd, 'ignore'] });
  children.push(holder);
  closeSync(fd);
  await new Promise((r) => holder.once('spawn', r));
  const err = await git(['add', '--', 'a.txt'], { cwd: repo, safeDirs: [repo] }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(GitError);
  expect(lockConflicts((err as GitError).stderr)).toEqual([lock]);
  expect(existsSync(lock)).toBe(true);
  expect(events()).toEqual([
    expect.objectContaining({ event: 'git.lock.kept', lock, state: 'held', why: 'open' }),
  ]);
});

test('a stale ref lock in a bare mirror is removed and update-ref goes through', async () => {
  const src = workRepo('src');
  const mirror = join(dir, 'm.git');
  execFileSync('git', ['clone', '-q', '--mirror', src, mirror]);
  const head = sh(src, 'rev-parse', 'HEAD').trim();
  const lock = join(mirror, 'refs', 'heads', 'choiros', 'run', 'r1.lock');
  mkdirSync(join(mirror, 'refs', 'heads', 'choiros', 'run'), { recursive: true });
  leftLock(lock, 5 * 60_000);
  expect(await lockScope(lock)).toEqual([mirror]);
  await git(['--git-dir', mirror, 'update-ref', 'refs/heads/choiros/run/r1', head, '0'.repeat(40)], {
    cwd: '/',
    safeDirs: [mirror],
  });
  expect(existsSync(lock)).toBe(false);
  expect(
    execFileSync('git', ['--git-dir', mirror, 'rev-parse', 'choiros/run/r1'], { encoding: 'utf8' }).trim(),
  ).toBe(head);
});

test("a run's index.lock next to its host git dir is recovered (scope: the run dir)", async () => {
  const src = workRepo('src');
  const run = join(dir, 'run1');
  mkdirSync(join(run, 'tree'), { recursive: true });
  execFileSync('git', ['init', '-q', '--bare', join(run, 'git')]);
  const env = { GIT_INDEX_FILE: join(run, 'index'), GIT_OBJECT_DIRECTORY: join(src, '.git', 'objects') };
  const base = sh(src, 'rev-parse', 'HEAD').trim();
  const runGit = (args: string[]) =>
    git(['--git-dir', join(run, 'git'), '--work-tree', join(run, 'tree'), ...args], {
      cwd: run,
      safeDirs: [join(run, 'git'), join(run, 'tree')],
      env,
    });
  await runGit(['read-tree', '--reset', '-u', base]);
  const lock = join(run, 'index.lock');
  leftLock(lock, 2 * STALE_MS);
  expect(await lockScope(lock)).toEqual([run]);
  writeFileSync(join(run, 'tree', 'c.txt'), 'c\n');
  // update-index -q --refresh exits 128 without a word on a locked index (found by the fault suite).
  await runGit(['update-index', '-q', '--refresh']);
  expect(existsSync(lock)).toBe(false);
  leftLock(lock, 2 * STALE_MS);
  await runGit(['add', '--all', '--', '.']);
  expect(existsSync(lock)).toBe(false);
});

test('a lock a live process has open is never removed, however old', async () => {
  const repo = workRepo('w');
  const lock = join(repo, '.git', 'index.lock');
  leftLock(lock, 10 * 60_000);
  const fd = openSync(lock, 'r');
  const holder = spawn('sleep', ['60'], { cwd: '/', stdio: ['ignore', fd, 'ignore'] });
  children.push(holder);
  closeSync(fd);
  await new Promise((r) => holder.once('spawn', r));
  const { verdict, removed } = await removeStaleLock(lock);
  expect(removed).toBe(false);
  expect(verdict).toEqual(expect.objectContaining({ state: 'held', why: 'open', pids: [holder.pid] }));
  expect(existsSync(lock)).toBe(true);
});

test('the lock of a repository a live git works in is never removed, however old', async () => {
  const repo = workRepo('w');
  const lock = join(repo, '.git', 'index.lock');
  leftLock(lock, 10 * 60_000);
  // A live git in the work tree (waiting on its stdin), as a git mid-command between taking a lock
  // and writing it: the lock may be its own.
  const inTree = spawn('git', ['cat-file', '--batch'], {
    cwd: join(repo),
    stdio: ['pipe', 'ignore', 'ignore'],
  });
  children.push(inTree);
  await new Promise((r) => inTree.once('spawn', r));
  let { verdict, removed } = await removeStaleLock(lock);
  expect(removed).toBe(false);
  expect(verdict).toEqual(expect.objectContaining({ state: 'held', why: 'git_running', pids: [inTree.pid] }));
  inTree.kill('SIGKILL');
  await new Promise((r) => inTree.once('exit', r));

  // A live git elsewhere that names the git dir on its command line.
  const byArg = spawn('git', ['--git-dir', join(repo, '.git'), 'cat-file', '--batch'], {
    cwd: '/',
    stdio: ['pipe', 'ignore', 'ignore'],
  });
  children.push(byArg);
  await new Promise((r) => byArg.once('spawn', r));
  ({ verdict, removed } = await removeStaleLock(lock));
  expect(removed).toBe(false);
  expect(verdict).toEqual(expect.objectContaining({ state: 'held', why: 'git_running', pids: [byArg.pid] }));
  expect(existsSync(lock)).toBe(true);
  byArg.kill('SIGKILL');
  await new Promise((r) => byArg.once('exit', r));

  // Its owner gone, the same lock is stale.
  expect((await removeStaleLock(lock)).removed).toBe(true);
});

test('a symlink named like a lock is not a lock file and is left alone', async () => {
  const repo = workRepo('w');
  const lock = join(repo, '.git', 'index.lock');
  symlinkSync(join(dir, 'elsewhere'), lock);
  expect(await inspectLock(lock)).toEqual({ path: lock, state: 'not_a_file' });
  expect((await removeStaleLock(lock)).removed).toBe(false);
});

test("a lock git's error names outside the call's git dirs is never removed (the text may be a run's)", async () => {
  const repo = workRepo('scoped');
  const elsewhere = join(dir, 'elsewhere');
  mkdirSync(elsewhere);
  const victim = join(elsewhere, 'Cargo.lock');
  leftLock(victim, 10 * STALE_MS);
  // A file name in a run's tree can put any text into git's stderr, e.g. a crafted warning.
  const stderr = `warning: could not open directory 'x/Unable to create '${victim}': File exists.'`;
  expect(lockConflicts(stderr)).toEqual([victim]);
  expect(await recoverStaleLocks(stderr, [], lockDirsOf(['add', '.'], repo))).toBe(false);
  expect(existsSync(victim)).toBe(true);
  expect(events().some((e) => e.event === 'git.lock.out_of_scope' && e.lock === victim)).toBe(true);
  // The same claim inside the call's git dir is acted on.
  const own = join(repo, '.git', 'index.lock');
  leftLock(own, 10 * STALE_MS);
  expect(
    await recoverStaleLocks(
      `fatal: Unable to create '${own}': File exists.`,
      [],
      lockDirsOf(['add', '.'], repo),
    ),
  ).toBe(true);
  expect(existsSync(own)).toBe(false);
  // Scope: each --git-dir, else <cwd>/.git, and the index file's own lock, never the work tree.
  expect(
    lockDirsOf(['--git-dir', '/d/git', '--work-tree', '/d/tree', 'add'], '/d', {
      GIT_INDEX_FILE: '/d/index',
    }),
  ).toEqual(['/d/git', '/d/index.lock']);
});
