/**
 * Bare mirror cache: one mirror per (tenant, repository URL), shared by that tenant's runs of that
 * repository and by no other tenant's. Fetches take the origin's branches and tags except the
 * platform's own namespaces (`choiros/*`): run and graph branches live only here, and nothing an
 * origin serves can overwrite one.
 */
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { isGitUrl, isValidId } from '../../contracts';
import { GitError, git } from './git';
import { lockConflicts } from './locks';

/**
 * Transports a run may use. `ext::` (runs a command) and everything else is refused by git itself,
 * on top of the schema check, so a crafted URL cannot reach a transport helper.
 */
const PROTOCOL_CONFIG = [
  '-c',
  'protocol.allow=never',
  '-c',
  'protocol.file.allow=always',
  '-c',
  'protocol.https.allow=always',
  '-c',
  'protocol.ssh.allow=always',
];

/** Serialises work on one mirror inside this process (git itself locks refs across processes). */
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

/** What a refresh takes from the origin: everything but the platform's own branch namespace. */
const FETCH_REFSPECS = ['+refs/heads/*:refs/heads/*', '+refs/tags/*:refs/tags/*', '^refs/heads/choiros/*'];

/**
 * Makes (first time: init + fetch into a temp dir, then rename) or refreshes (fetch, no prune) the bare
 * mirror of `url`, and returns its path. Fails non-retryably with `repo_not_found` when the URL
 * is refused or cannot be cloned.
 */
export async function ensureMirror(mirrorRoot: string, tenant: string, url: string): Promise<string> {
  if (!isGitUrl(url)) {
    throw ApplicationFailure.create({
      type: 'repo_not_found',
      message: `repository URL ${JSON.stringify(url)} is not an accepted git URL`,
      nonRetryable: true,
    });
  }
  const path = mirrorPath(mirrorRoot, tenant, url);
  const root = join(mirrorRoot, tenant);
  return withLock(path, async () => {
    await mkdir(root, { recursive: true });
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
          await git(['--git-dir', tmp, ...PROTOCOL_CONFIG, 'fetch', '--quiet', 'origin', ...FETCH_REFSPECS], {
            cwd: root,
            safeDirs: [tmp],
            timeoutMs: 600_000,
          });
          await rename(tmp, path);
        } finally {
          await rm(tmp, { recursive: true, force: true });
        }
      } else {
        // No --prune: run branches live only in the mirror and must survive a refresh.
        await git(['--git-dir', path, ...PROTOCOL_CONFIG, 'fetch', '--quiet', 'origin', ...FETCH_REFSPECS], {
          cwd: root,
          safeDirs: [path],
          timeoutMs: 600_000,
        });
      }
    } catch (err) {
      // A git lock that is not (yet) stale is transient: retried, never "no such repository".
      if (err instanceof GitError && lockConflicts(err.stderr).length > 0) throw err;
      throw ApplicationFailure.create({
        type: 'repo_not_found',
        message: `cannot mirror ${url}: ${err instanceof Error ? err.message : String(err)}`,
        nonRetryable: true,
        cause: err instanceof Error ? err : undefined,
      });
    }
    return path;
  });
}
