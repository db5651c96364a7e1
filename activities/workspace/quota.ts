/**
 * Per-run disk quota: the run's tree is its own small ext4 filesystem in a sparse image file,
 * loop-mounted at the tree's path (decision 0012). A run that fills it gets ENOSPC inside its
 * sandbox; the host's disk and other runs are untouched. Needs root (mount); a worker that is not
 * root gets plain directories and says so at start.
 */
import { mkdir, open, readFile, rm, rmdir, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { runProcess } from './process-helper';

export interface QuotaSpec {
  /** Size of the filesystem in MiB. */
  sizeMb: number;
  /** Inodes of the filesystem (a file-count bomb runs out of them). */
  inodes: number;
  /** `uid:gid` that owns the filesystem's root directory. */
  owner: string;
}

const TIMEOUT_MS = 60_000;

/** The mount options of `path` when it is a mount point (from /proc/self/mountinfo, whose paths escape space, tab, \ and newline as octal). */
async function mountOptions(path: string): Promise<string[] | undefined> {
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const unescape = (s: string): string =>
    s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  // The last mount on a path is the one in effect.
  const line = info
    .split('\n')
    .filter((l) => unescape(l.split(' ')[4] ?? '') === path)
    .pop();
  return line === undefined ? undefined : (line.split(' ')[5] ?? '').split(',');
}

export async function isMountPoint(path: string): Promise<boolean> {
  return (await mountOptions(path)) !== undefined;
}

/** Makes `image` (sparse) with an empty ext4 filesystem and mounts it at `mountPoint` (an empty directory). */
export async function mountQuota(image: string, mountPoint: string, spec: QuotaSpec): Promise<void> {
  if (await isMountPoint(mountPoint)) return; // a retried create finds its own mount
  const fh = await open(image, 'w', 0o600);
  try {
    await fh.truncate(spec.sizeMb * 1024 * 1024);
  } finally {
    await fh.close();
  }
  await runProcess(
    'mkfs.ext4',
    [
      '-q',
      '-F',
      '-m',
      '0',
      '-O',
      '^has_journal',
      '-N',
      String(spec.inodes),
      '-E',
      `root_owner=${spec.owner},lazy_itable_init=1,nodiscard`,
      '--',
      image,
    ],
    { timeoutMs: TIMEOUT_MS },
  );
  await runProcess('mount', ['-o', 'loop,nodev,nosuid', '--', image, mountPoint], { timeoutMs: TIMEOUT_MS });
  await rmdir(`${mountPoint}/lost+found`).catch(() => undefined);
}

/** Makes a mounted tree read-only (after the run's command, before the host reads it). */
export async function remountReadOnly(mountPoint: string): Promise<void> {
  await runProcess('mount', ['-o', 'remount,ro', '--', mountPoint], { timeoutMs: TIMEOUT_MS });
}

/** Makes a mounted tree writable again (a retried execution). */
export async function remountWritable(mountPoint: string): Promise<void> {
  await runProcess('mount', ['-o', 'remount,rw', '--', mountPoint], { timeoutMs: TIMEOUT_MS });
}

/** Whether the mounted tree is read-only now. */
export async function isReadOnly(mountPoint: string): Promise<boolean> {
  return (await mountOptions(mountPoint))?.includes('ro') ?? false;
}

/** Unmounts a tree; a busy one (a process still inside) is detached lazily and goes when it is left. */
export async function unmountQuota(mountPoint: string): Promise<void> {
  if (!(await isMountPoint(mountPoint))) return;
  try {
    await runProcess('umount', ['--', mountPoint], { timeoutMs: TIMEOUT_MS });
  } catch {
    await runProcess('umount', ['-l', '--', mountPoint], { timeoutMs: TIMEOUT_MS });
  }
}

/** Whether the run filled its filesystem: under 1 MiB or no inode left. */
export async function quotaExhausted(
  mountPoint: string,
): Promise<{ full: boolean; freeBytes: number; freeInodes: number }> {
  const s = await statfs(mountPoint);
  const freeBytes = s.bavail * s.bsize;
  return { full: freeBytes < 1024 * 1024 || s.ffree === 0, freeBytes, freeInodes: s.ffree };
}

/**
 * Whether this host can give runs a filesystem of their own: a root process that can make and
 * loop-mount a small image under `dir` (a container without CAP_SYS_ADMIN or loop devices cannot).
 * Returns why not, or undefined when it can.
 */
export async function quotaUnavailable(dir: string): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'the worker is not root (mount needs it)';
  const probe = join(dir, `.quota-probe-${process.pid}`);
  try {
    await mkdir(join(probe, 'mnt'), { recursive: true });
    await mountQuota(join(probe, 'disk.img'), join(probe, 'mnt'), { sizeMb: 4, inodes: 64, owner: '0:0' });
    await unmountQuota(join(probe, 'mnt'));
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  } finally {
    await unmountQuota(join(probe, 'mnt')).catch(() => undefined);
    await rm(probe, { recursive: true, force: true });
  }
}
