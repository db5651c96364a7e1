/**
 * Bare mirror cache: one mirror per (tenant, repository URL), shared by that tenant's runs of that
 * repository and by no other tenant's. Fetches take the origin's branches and tags except the
 * platform's own namespaces (`choiros/*`): run and graph branches live only here (and, for remote
 * repositories, on the origin once delivered), and nothing an origin serves can overwrite one.
 *
 * Remote origins (https, decision 0019): each fetch runs under a lock file next to the mirror (one
 * fetch at a time across processes sharing the data dir, none lost), is bounded in time, and the
 * mirror in size; failures carry stable codes (`repo_unreachable`, `repo_auth_failed`,
 * `repo_not_found`, `repo_too_large`) and leave neither a half-made mirror nor a lock behind.
 * Credentials reach git only through its environment (tenancy/credentials.ts).
 */
import { createHash, randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { lstat, mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { isGitUrl, isRemoteRepoUrl, isValidId } from '../../contracts';
import { GitError, git } from './git';
import { lockConflicts } from './locks';

/**
 * Transports a run may use. `ext::` (runs a command) and everything else is refused by git itself,
 * on top of the schema check, so a crafted URL cannot reach a transport helper. Plain http is only
 * ever a loopback URL (the schema refuses others).
 */
export const PROTOCOL_CONFIG = [
  '-c',
  'protocol.allow=never',
  '-c',
  'protocol.file.allow=always',
  '-c',
  'protocol.https.allow=always',
  '-c',
  'protocol.http.allow=always',
  '-c',
  'protocol.ssh.allow=always',
];

/** How remote origins are reached and bounded (worker settings CHOIROS_MIRROR_*). */
export interface RemoteMirrorOptions {
  /** Git environment entries for `tenant`'s transfers with `url` (the credential header). Never logged. */
  gitAuth(tenant: string, url: string): Promise<{ env: Record<string, string> }>;
  /** Most bytes a mirror may hold after a fetch (CHOIROS_MIRROR_MAX_BYTES). */
  maxBytes: number;
  /** One fetch or push may take this long (CHOIROS_MIRROR_FETCH_TIMEOUT_SECONDS). */
  timeoutMs: number;
  /** Called after each fetch from an origin (metrics, tests). */
  onFetch?: (info: { tenant: string; url: string; created: boolean; bytes: number }) => void;
}

export const MIRROR_DEFAULTS = { maxBytes: 2 * 1024 * 1024 * 1024, timeoutMs: 600_000 };

/** Serialises work on one mirror inside this process; the lock file does it across processes. */
const locks = new Map<string, Promise<unknown>>();
async function withLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
  const prev = locks.get(key) ?? Promise.resolve();
  const next = prev.then(fn, fn);
  locks.set(
    key,
    next.catch(() => undefined),
  );
  return next;
}

export function mirrorPath(mirrorRoot: string, tenant: string, url: string): string {
  if (!isValidId(tenant)) throw new Error(`tenant ${JSON.stringify(tenant)} is not a valid id`);
  return join(mirrorRoot, tenant, `${createHash('sha256').update(url).digest('hex').slice(0, 32)}.git`);
}

/** The lock file of a mirror (beside it, so removing a mirror never removes a held lock). */
export const mirrorLockPath = (mirror: string): string => `${mirror}.lock`;

/**
 * Holds the mirror's lock file while `fn` runs: created exclusively, holding `host pid time`; one
 * left by a dead process of this host, or older than `staleMs`, is taken over. Always removed.
 */
export async function withMirrorLock<T>(mirror: string, staleMs: number, fn: () => Promise<T>): Promise<T> {
  const lock = mirrorLockPath(mirror);
  const deadline = Date.now() + staleMs * 2;
  const me = `${hostname()} ${process.pid} ${Date.now()}`;
  for (;;) {
    try {
      const fh = await open(lock, 'wx', 0o600);
      await fh.writeFile(me);
      await fh.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const held = await readFile(lock, 'utf8').catch(() => '');
      const [host, pid, at] = held.split(' ');
      const dead = host === hostname() && pid !== undefined && !processAlive(Number(pid));
      if (dead || Date.now() - Number(at ?? 0) > staleMs) {
        await rm(lock, { force: true });
        continue;
      }
      if (Date.now() > deadline)
        throw ApplicationFailure.create({
          type: 'repo_unreachable',
          message: 'the repository mirror stayed locked by another fetch',
          nonRetryable: false,
        });
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(lock, { force: true });
  }
}

function processAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Bytes under `dir` (lstat only: a mirror holds no symlinks the platform follows). */
export async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += await dirBytes(p);
    else if (e.isFile()) total += (await lstat(p)).size;
  }
  return total;
}

/** What a refresh takes from the origin: everything but the platform's own branch namespace. */
const FETCH_REFSPECS = ['+refs/heads/*:refs/heads/*', '+refs/tags/*:refs/tags/*', '^refs/heads/choiros/*'];

/**
 * Where a remote origin's own `choiros/*` branches (runs and graphs delivered from any worker) are
 * kept: outside `refs/heads/`, so they can never overwrite a branch of this mirror, yet their
 * commits are here for a graph's next item or merge on whichever worker it lands.
 */
export const ORIGIN_CHOIROS_NAMESPACE = 'refs/origin-choiros';
const REMOTE_EXTRA_REFSPECS = [`+refs/heads/choiros/*:${ORIGIN_CHOIROS_NAMESPACE}/*`];

/**
 * The stable code of a failed transfer with a remote origin, read from git's answer: refused
 * credentials, a host that cannot be reached (or a transfer past the time bound), or no such
 * repository. Never includes the credential (git prints no header without GIT_TRACE/GIT_CURL_VERBOSE).
 */
export function classifyRemoteFailure(err: unknown): { code: string; retryable: boolean } {
  const text = err instanceof GitError ? err.stderr : err instanceof Error ? err.message : String(err);
  if (err instanceof GitError && err.exitCode === null) return { code: 'repo_unreachable', retryable: true };
  // tenancy/credentials.ts could not mint a GitHub App installation token.
  if (err instanceof Error && err.name === 'AuthMintError')
    return { code: 'repo_auth_failed', retryable: false };
  if (
    /Authentication failed|could not read (Username|Password)|terminal prompts disabled|returned error: 40[13]|HTTP 40[13]|Permission denied/i.test(
      text,
    )
  )
    return { code: 'repo_auth_failed', retryable: false };
  if (
    /returned error: 404|HTTP 404|repository .* not found|does not appear to be a git repository/i.test(text)
  )
    return { code: 'repo_not_found', retryable: false };
  return { code: 'repo_unreachable', retryable: false };
}

/** A failure with the transfer's stable code; the message names the URL, never a credential. */
function remoteFailure(url: string, err: unknown): ApplicationFailure {
  const { code, retryable } = classifyRemoteFailure(err);
  const why = {
    repo_auth_failed: 'the host refused the credentials (or asked for some and none are configured)',
    repo_not_found: 'the host has no such repository',
    repo_unreachable: 'the host could not be reached or the transfer did not finish in time',
  }[code as 'repo_auth_failed' | 'repo_not_found' | 'repo_unreachable'];
  return ApplicationFailure.create({
    type: code,
    message: `cannot fetch ${url}: ${why}`,
    nonRetryable: !retryable,
  });
}

/**
 * Makes (first time: init + fetch into a temp dir, then rename) or refreshes (fetch, no prune) the bare
 * mirror of `url`, and returns its path. Fails non-retryably with `repo_not_found` when the URL
 * is refused or cannot be cloned; remote origins fail with their transfer's code (see above).
 */
export async function ensureMirror(
  mirrorRoot: string,
  tenant: string,
  url: string,
  remote?: RemoteMirrorOptions,
): Promise<string> {
  if (!isGitUrl(url)) {
    throw ApplicationFailure.create({
      type: 'repo_not_found',
      message: `repository URL ${JSON.stringify(url)} is not an accepted git URL`,
      nonRetryable: true,
    });
  }
  const isRemote = isRemoteRepoUrl(url);
  const opts = { ...MIRROR_DEFAULTS, ...remote };
  const path = mirrorPath(mirrorRoot, tenant, url);
  const root = join(mirrorRoot, tenant);
  const transferEnv = async (): Promise<Record<string, string>> =>
    isRemote && remote ? (await remote.gitAuth(tenant, url)).env : {};
  const fetchWith = async (gitDir: string, refspecs: string[]) =>
    git(['--git-dir', gitDir, ...PROTOCOL_CONFIG, 'fetch', '--quiet', 'origin', ...refspecs], {
      cwd: root,
      safeDirs: [gitDir],
      timeoutMs: opts.timeoutMs,
      env: await transferEnv(),
    });
  // A negative refspec excludes a ref from every refspec of a fetch: the origin's choiros/* come in a second one.
  const fetch = async (gitDir: string): Promise<void> => {
    await fetchWith(gitDir, FETCH_REFSPECS);
    if (isRemote) await fetchWith(gitDir, REMOTE_EXTRA_REFSPECS);
  };
  const bounded = async (gitDir: string): Promise<number> => {
    const bytes = await dirBytes(gitDir);
    if (isRemote && bytes > opts.maxBytes)
      throw ApplicationFailure.create({
        type: 'repo_too_large',
        message: `${url} takes ${bytes} bytes, more than the mirror bound of ${opts.maxBytes} (CHOIROS_MIRROR_MAX_BYTES)`,
        nonRetryable: true,
      });
    return bytes;
  };
  return withLock(path, async () => {
    await mkdir(root, { recursive: true });
    const work = async (): Promise<string> => {
      const exists = await stat(join(path, 'HEAD')).then(
        () => true,
        () => false,
      );
      try {
        if (!exists) {
          const tmp = join(root, `.tmp-${randomUUID()}`);
          try {
            // init + fetch rather than clone --mirror: the same refspecs as a refresh, so an origin's
            // own `choiros/*` branches are never taken in.
            await git(['init', '--quiet', '--bare', '--end-of-options', tmp], { cwd: root });
            await git(['--git-dir', tmp, 'remote', 'add', '--end-of-options', 'origin', url], {
              cwd: root,
              safeDirs: [tmp],
            });
            await fetch(tmp);
            const bytes = await bounded(tmp);
            await rename(tmp, path);
            remote?.onFetch?.({ tenant, url, created: true, bytes });
          } finally {
            await rm(tmp, { recursive: true, force: true });
          }
        } else {
          // No --prune: run branches live only in the mirror and must survive a refresh.
          await fetch(path);
          const bytes = await bounded(path);
          remote?.onFetch?.({ tenant, url, created: false, bytes });
        }
      } catch (err) {
        if (err instanceof ApplicationFailure) throw err;
        // A git lock that is not (yet) stale is transient: retried, never "no such repository".
        if (err instanceof GitError && lockConflicts(err.stderr).length > 0) throw err;
        if (isRemote) throw remoteFailure(url, err);
        throw ApplicationFailure.create({
          type: 'repo_not_found',
          message: `cannot mirror ${url}: ${err instanceof Error ? err.message : String(err)}`,
          nonRetryable: true,
          cause: err instanceof Error ? err : undefined,
        });
      }
      return path;
    };
    return isRemote ? withMirrorLock(path, opts.timeoutMs + 60_000, work) : work();
  });
}

/**
 * Pushes `commit` to the origin's `ref` from a mirror, with a lease: the origin's ref must still be
 * `expected` (absent when undefined) when the push lands. Throws the GitError of a failed push.
 */
export async function pushWithLease(
  mirror: string,
  ref: string,
  commit: string,
  expected: string | undefined,
  opts: { env: Record<string, string>; timeoutMs: number },
): Promise<void> {
  await git(
    [
      '--git-dir',
      mirror,
      ...PROTOCOL_CONFIG,
      'push',
      '--quiet',
      '--no-verify',
      `--force-with-lease=${ref}:${expected ?? ''}`,
      'origin',
      `${commit}:${ref}`,
    ],
    { cwd: '/', safeDirs: [mirror], timeoutMs: opts.timeoutMs, env: opts.env },
  );
}
