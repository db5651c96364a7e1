/**
 * The worker's data disk running full (decision 0023): a failure of a host step that an out-of-space
 * condition explains becomes `host_disk_full`. The step waits a bounded time for space to come back
 * (heartbeating); when it does, the step fails retryably and Temporal runs it again; when it does
 * not, the run fails with `host_disk_full`, non-retryable, instead of spending its attempts on a
 * generic error.
 */
import { statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from 'pino';

export const HOST_DISK_FULL = 'host_disk_full';

/** errno codes of "no room": no space (blocks or inodes), a user's disk quota. */
const NO_SPACE_CODES = new Set(['ENOSPC', 'EDQUOT']);
/** What git, mkfs, tar, Docker … print for them (strerror, or Node's / Go's error text). */
const NO_SPACE_TEXT = /No space left on device|Disk quota exceeded|\bENOSPC\b|\bEDQUOT\b/i;

/** Failures a run causes itself in its own filesystem: never the host's disk, never reclassified. */
const RUN_OWN = new Set(['disk_quota_exceeded', 'workspace_too_large', 'workspace_unsafe', HOST_DISK_FULL]);

/**
 * Whether `err` (or a cause of it) says "no space left": an errno of ENOSPC / EDQUOT, or that text in
 * its message or a process's stderr (git and mkfs report strerror only as text).
 */
export function isNoSpaceError(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 8; depth++) {
    if (typeof e !== 'object') return typeof e === 'string' && NO_SPACE_TEXT.test(e);
    const o = e as { code?: unknown; message?: unknown; stderr?: unknown; cause?: unknown };
    if (typeof o.code === 'string' && NO_SPACE_CODES.has(o.code)) return true;
    if (typeof o.message === 'string' && NO_SPACE_TEXT.test(o.message)) return true;
    if (typeof o.stderr === 'string' && NO_SPACE_TEXT.test(o.stderr)) return true;
    e = o.cause;
  }
  return false;
}

/** Free bytes and inodes (for an unprivileged user: what root alone may use is not counted). */
export interface FreeSpace {
  bytes: number;
  inodes: number;
}

/** statfs of `dir`, or of its nearest existing parent (a data dir not made yet lives on its parent's disk). */
export async function freeSpaceOf(dir: string): Promise<FreeSpace> {
  for (let d = dir; ; d = dirname(d)) {
    try {
      const s = await statfs(d);
      return { bytes: s.bavail * s.bsize, inodes: s.ffree };
    } catch (err) {
      if (dirname(d) === d) throw err;
    }
  }
}

export interface DiskGuardOptions {
  /** The worker's data dirs (worktrees, mirrors, artifacts); any of them low means the host's disk is full. */
  dirs: string[];
  /** Under this many free bytes a data dir's filesystem counts as full (CHOIROS_DISK_MIN_FREE_MB). */
  minFreeBytes: number;
  /** How long a step waits for space to come back before the run fails (CHOIROS_DISK_FULL_WAIT_SECONDS). */
  waitMs: number;
  /** How often the wait looks again; 1 s by default. */
  pollMs?: number;
  logger: Logger;
  /** Called while waiting (the activity's heartbeat). */
  heartbeat?: (details: unknown) => void;
  /** statfs, replaceable in unit tests. */
  free?: (dir: string) => Promise<FreeSpace>;
}

/** The data dir that is low on space (under the bound, or no inode left), if any. */
async function lowDir(opts: DiskGuardOptions): Promise<{ dir: string; free: FreeSpace } | undefined> {
  const free = opts.free ?? freeSpaceOf;
  for (const dir of opts.dirs) {
    const f = await free(dir).catch(() => undefined);
    if (f && (f.bytes < opts.minFreeBytes || f.inodes === 0)) return { dir, free: f };
  }
  return undefined;
}

const messageOf = (err: unknown): string =>
  typeof err === 'object' && err !== null && typeof (err as { message?: unknown }).message === 'string'
    ? (err as { message: string }).message
    : String(err);

const mib = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(1)} MiB`;

/**
 * Runs the host step `fn` (`what` names it in logs). A failure it throws that the data disk being
 * full explains — an ENOSPC anywhere in it, or any failure while a data dir is under `minFreeBytes`
 * (git often reports a failed write without its errno: "unable to write new index file") — becomes
 * `host_disk_full`: after waiting up to `waitMs` for space, retryable when space came back (the step
 * runs again), non-retryable when it did not. Anything else is rethrown unchanged, as is a run
 * filling its own quota filesystem (`disk_quota_exceeded`, the tree caps).
 */
export async function guardDisk<T>(opts: DiskGuardOptions, what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw await classifyDiskFailure(opts, what, err);
  }
}

/** The failure `guardDisk` throws for `err` (waits while the disk stays full; see there). */
export async function classifyDiskFailure(
  opts: DiskGuardOptions,
  what: string,
  err: unknown,
): Promise<unknown> {
  if (err instanceof ApplicationFailure && err.type && RUN_OWN.has(err.type)) return err;
  const noSpace = isNoSpaceError(err);
  let low = await lowDir(opts);
  if (!noSpace && !low) return err;
  // (An error of another realm, e.g. Node's own under a test runner's vm, is not `instanceof Error`.)
  const cause = err instanceof Error ? err : new Error(messageOf(err));
  const started = Date.now();
  const first = low;
  opts.logger.warn(
    {
      event: 'host.disk.full',
      step: what,
      dir: low?.dir,
      freeBytes: low?.free.bytes,
      freeInodes: low?.free.inodes,
      err: messageOf(err),
    },
    'a host step ran out of disk space; waiting for space to come back',
  );
  const pollMs = opts.pollMs ?? 1000;
  while (low && Date.now() - started < opts.waitMs) {
    opts.heartbeat?.({ waiting: 'host_disk_full', dir: low.dir, freeBytes: low.free.bytes });
    await new Promise((r) => setTimeout(r, pollMs));
    low = await lowDir(opts);
  }
  const waited = Math.round((Date.now() - started) / 1000);
  if (!low) {
    opts.logger.warn(
      { event: 'host.disk.recovered', step: what, waitedSeconds: waited },
      'disk space is back; the step is retried',
    );
    return ApplicationFailure.create({
      type: HOST_DISK_FULL,
      message: `${what} ran out of disk space on the worker${first ? ` (${first.dir}: ${mib(first.free.bytes)} free)` : ''}; space is back, the step is retried`,
      nonRetryable: false,
      cause,
    });
  }
  opts.logger.error(
    {
      event: 'host.disk.full.gave_up',
      step: what,
      dir: low.dir,
      freeBytes: low.free.bytes,
      waitedSeconds: waited,
    },
    'the data disk stayed full; the run fails host_disk_full',
  );
  return ApplicationFailure.create({
    type: HOST_DISK_FULL,
    message: `the worker's data disk is full (${low.dir}: ${mib(low.free.bytes)} and ${low.free.inodes} inodes free, under CHOIROS_DISK_MIN_FREE_MB); ${what} waited ${waited} s (CHOIROS_DISK_FULL_WAIT_SECONDS) and gave up`,
    nonRetryable: true,
    cause,
  });
}
