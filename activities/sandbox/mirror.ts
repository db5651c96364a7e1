/** Bare mirror cache: one `git clone --mirror` per repository URL, shared by every run of that repository. */
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { isGitUrl } from '../../contracts';
import { git } from './git';

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

export function mirrorPath(mirrorRoot: string, url: string): string {
  return join(mirrorRoot, `${createHash('sha256').update(url).digest('hex').slice(0, 32)}.git`);
}

/**
 * Makes (first time: clone into a temp dir, then rename) or refreshes (`fetch --prune`) the bare
 * mirror of `url`, and returns its path. Fails non-retryably with `repo_not_found` when the URL
 * is refused or cannot be cloned.
 */
export async function ensureMirror(mirrorRoot: string, url: string): Promise<string> {
  if (!isGitUrl(url)) {
    throw ApplicationFailure.create({
      type: 'repo_not_found',
      message: `repository URL ${JSON.stringify(url)} is not an accepted git URL`,
      nonRetryable: true,
    });
  }
  const path = mirrorPath(mirrorRoot, url);
  return withLock(path, async () => {
    await mkdir(mirrorRoot, { recursive: true });
    const exists = await stat(join(path, 'HEAD')).then(
      () => true,
      () => false,
    );
    try {
      if (!exists) {
        const tmp = join(mirrorRoot, `.tmp-${randomUUID()}`);
        try {
          await git([...PROTOCOL_CONFIG, 'clone', '--mirror', '--quiet', '--end-of-options', url, tmp], {
            cwd: mirrorRoot,
            timeoutMs: 600_000,
          });
          await rename(tmp, path);
        } finally {
          await rm(tmp, { recursive: true, force: true });
        }
      } else {
        // No --prune: run branches live only in the mirror and must survive a refresh.
        await git(
          [
            ...PROTOCOL_CONFIG,
            'fetch',
            '--quiet',
            'origin',
            '+refs/heads/*:refs/heads/*',
            '+refs/tags/*:refs/tags/*',
          ],
          { cwd: path, safeDirs: [path], timeoutMs: 600_000 },
        );
      }
    } catch (err) {
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
