/** The data disk running full (decision 0023): which failures are "no space", and what a host step then throws. */
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import pino from 'pino';
import { GitError } from '../../activities/workspace/git';
import { ProcessError } from '../../activities/workspace/process-helper';
import {
  classifyDiskFailure,
  freeSpaceOf,
  guardDisk,
  isNoSpaceError,
  type DiskGuardOptions,
  type FreeSpace,
} from '../../activities/workspace/disk-full';

const MiB = 1024 * 1024;

/** A real ENOSPC from the kernel: /dev/full refuses every write with it. */
async function realEnospc(): Promise<unknown> {
  return writeFile('/dev/full', 'x').then(
    () => new Error('/dev/full accepted a write'),
    (err: unknown) => err,
  );
}

function buildGuard(
  free: () => FreeSpace,
  overrides: Partial<DiskGuardOptions> = {},
): DiskGuardOptions & { lines: string[]; beats: unknown[] } {
  const lines: string[] = [];
  const beats: unknown[] = [];
  return {
    dirs: ['/data/worktrees', '/data/mirrors'],
    minFreeBytes: 64 * MiB,
    waitMs: 200,
    pollMs: 10,
    logger: pino({ level: 'info' }, { write: (s: string) => void lines.push(s) }),
    heartbeat: (d) => void beats.push(d),
    free: () => Promise.resolve(free()),
    lines,
    beats,
    ...overrides,
  };
}

const plenty = (): FreeSpace => ({ bytes: 10_000 * MiB, inodes: 100_000 });
const full = (): FreeSpace => ({ bytes: 12 * 4096, inodes: 100 });

describe('isNoSpaceError', () => {
  it('when the kernel answers ENOSPC (a real write to /dev/full), then it is no space', async () => {
    const err = await realEnospc();
    expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
    expect(isNoSpaceError(err)).toBe(true);
  });

  it('when git or mkfs print strerror on stderr, then it is no space', () => {
    const git = new GitError(
      'git fetch failed',
      128,
      'error: unable to write file objects/ab/cd: No space left on device\nfatal: unpack-objects failed',
    );
    const mkfs = new ProcessError(
      'mkfs.ext4 exited 1',
      1,
      null,
      '',
      'mkfs.ext4: No space left on device while writing out and closing file system',
    );
    expect(isNoSpaceError(git)).toBe(true);
    expect(isNoSpaceError(mkfs)).toBe(true);
    expect(isNoSpaceError(new Error('write EDQUOT'))).toBe(true);
  });

  it('when the no-space error is the cause of another, then it is still no space', async () => {
    const wrapped = new Error('could not store the log', { cause: await realEnospc() });
    expect(isNoSpaceError(wrapped)).toBe(true);
  });

  it('when the failure is anything else, then it is not', () => {
    expect(isNoSpaceError(new GitError('git fetch failed', 128, 'fatal: repository not found'))).toBe(false);
    expect(isNoSpaceError(Object.assign(new Error('open'), { code: 'ENOENT' }))).toBe(false);
    expect(isNoSpaceError(undefined)).toBe(false);
    expect(isNoSpaceError('no space in this sentence')).toBe(false);
  });
});

describe('guardDisk', () => {
  it('when the step succeeds, then its value comes back and the disk is not looked at', async () => {
    let looked = 0;
    const g = buildGuard(() => {
      looked += 1;
      return full();
    });
    await expect(guardDisk(g, 'step', () => Promise.resolve(42))).resolves.toBe(42);
    expect(looked).toBe(0);
  });

  it('when a failure has nothing to do with space and the disk has room, then it is rethrown unchanged', async () => {
    const err = new GitError('git rev-parse failed', 128, 'fatal: bad revision');
    const g = buildGuard(plenty);
    await expect(guardDisk(g, 'step', () => Promise.reject(err))).rejects.toBe(err);
  });

  it('when a step fails ENOSPC and the disk stays full, then it waits the bound, heartbeating, and fails host_disk_full non-retryably', async () => {
    const g = buildGuard(full);
    // The step fails as a real one does: the write itself throws.
    const thrown = await guardDisk(g, 'createSandbox', () => writeFile('/dev/full', 'x')).catch(
      (e: unknown) => e,
    );
    expect(thrown).toBeInstanceOf(ApplicationFailure);
    const f = thrown as ApplicationFailure;
    expect(f.type).toBe('host_disk_full');
    expect(f.nonRetryable).toBe(true);
    expect(f.message).toContain('/data/worktrees');
    expect(f.cause?.message).toContain('ENOSPC');
    expect(g.beats.length).toBeGreaterThan(0);
    expect(g.lines.some((l) => l.includes('"host.disk.full.gave_up"'))).toBe(true);
  });

  it('when space comes back within the bound, then the step fails host_disk_full retryably (Temporal runs it again)', async () => {
    let calls = 0;
    const g = buildGuard(() => (++calls > 3 ? plenty() : full()), { waitMs: 10_000 });
    const thrown = await classifyDiskFailure(g, 'commitSandbox', await realEnospc());
    const f = thrown as ApplicationFailure;
    expect(f.type).toBe('host_disk_full');
    expect(f.nonRetryable).toBe(false);
    expect(g.lines.some((l) => l.includes('"host.disk.recovered"'))).toBe(true);
  });

  it('when git fails without naming the errno while the disk is full, then it is host_disk_full too', async () => {
    const g = buildGuard(full);
    const silent = new GitError('git update-index failed', 128, 'fatal: unable to write new index file');
    const f = (await classifyDiskFailure(g, 'planVerifiers', silent)) as ApplicationFailure;
    expect(f.type).toBe('host_disk_full');
    expect(f.nonRetryable).toBe(true);
  });

  it('when an ENOSPC came while the disk has room again (another step freed it), then it is retried at once', async () => {
    const g = buildGuard(plenty);
    const f = (await classifyDiskFailure(g, 'execInSandbox', await realEnospc())) as ApplicationFailure;
    expect(f.type).toBe('host_disk_full');
    expect(f.nonRetryable).toBe(false);
    expect(g.beats).toHaveLength(0);
  });

  it('when no inode is left, then the disk is full whatever the bytes', async () => {
    const g = buildGuard(() => ({ bytes: 10_000 * MiB, inodes: 0 }));
    const f = (await classifyDiskFailure(
      g,
      'createSandbox',
      new Error('mkdir failed'),
    )) as ApplicationFailure;
    expect(f.type).toBe('host_disk_full');
  });

  it('when the run filled its own quota filesystem, then that stays disk_quota_exceeded', async () => {
    const g = buildGuard(full);
    const own = ApplicationFailure.create({
      type: 'disk_quota_exceeded',
      message: 'the work item filled its workspace: No space left on device',
      nonRetryable: true,
    });
    await expect(classifyDiskFailure(g, 'execInSandbox', own)).resolves.toBe(own);
  });

  it('when a mirror fetch was classified repo_not_found but says ENOSPC, then it is host_disk_full', async () => {
    const g = buildGuard(plenty);
    const mapped = ApplicationFailure.create({
      type: 'repo_not_found',
      message: 'cannot mirror file:///r: git fetch failed: error: No space left on device',
      nonRetryable: true,
    });
    const f = (await classifyDiskFailure(g, 'createSandbox', mapped)) as ApplicationFailure;
    expect(f.type).toBe('host_disk_full');
  });
});

describe('freeSpaceOf', () => {
  it('when the dir does not exist yet, then it measures the disk of its nearest parent', async () => {
    const f = await freeSpaceOf(join(tmpdir(), 'choiros-not-made', 'worktrees'));
    expect(f.bytes).toBeGreaterThan(0);
    expect(f.inodes).toBeGreaterThanOrEqual(0);
  });
});
