/**
 * Reads a run's tree as hostile data: a walk with lstat only (no symlink is ever followed), bounded
 * in entries and bytes, that finds what the host must not hand to git as it is.
 *
 * - `.git` entries (any case, files or directories, at any depth): git metadata a run wrote. They
 *   are never obeyed; the workspace drops them before git reads the tree.
 * - Special files (FIFOs, sockets, devices): reading one could block or reach a device; dropped.
 * - Hard links whose other names lie outside the tree (more links than names seen in the tree):
 *   committing one would copy a host file's content into the repository; refused.
 * - More entries or bytes than the caps: refused (`workspace_too_large`). The walk stops at the cap,
 *   so a file-count bomb costs the host at most `maxEntries` lstat calls.
 */
import { lstat, opendir } from 'node:fs/promises';
import { join, relative } from 'node:path';

export interface ScanLimits {
  /** Most entries (files, links, directories) the tree may hold. */
  maxEntries: number;
  /** Most bytes of regular-file content (st_size, so a sparse file counts at its full size). */
  maxBytes: number;
}

export interface TreeScan {
  entries: number;
  bytes: number;
  /** Tree-relative paths of `.git` entries (their contents are not walked). */
  gitEntries: string[];
  /** Tree-relative paths of FIFOs, sockets and device nodes. */
  specialFiles: string[];
  /** Tree-relative paths of regular files with links outside the tree. */
  outsideHardLinks: string[];
  /** Set when the walk stopped at a cap: which one. */
  overLimit?: 'entries' | 'bytes';
}

/** `.git` in any case, and its NTFS short name, which git itself refuses to index. */
const isGitName = (name: string): boolean => ['.git', 'git~1'].includes(name.toLowerCase());

/** Walks `root` (not following symlinks) and reports what it found; stops early past a cap. */
export async function scanTree(root: string, limits: ScanLimits): Promise<TreeScan> {
  const scan: TreeScan = { entries: 0, bytes: 0, gitEntries: [], specialFiles: [], outsideHardLinks: [] };
  /** Names seen per multiply-linked inode, to compare with its link count at the end. */
  const linked = new Map<string, { path: string; nlink: number; seen: number }>();
  const stack: string[] = [root];
  while (stack.length > 0 && !scan.overLimit) {
    const dir = stack.pop() as string;
    const handle = await opendir(dir);
    for await (const entry of handle) {
      const path = join(dir, entry.name);
      const rel = relative(root, path);
      if (isGitName(entry.name)) {
        scan.gitEntries.push(rel);
        continue;
      }
      scan.entries += 1;
      if (scan.entries > limits.maxEntries) {
        scan.overLimit = 'entries';
        break;
      }
      const st = await lstat(path, { bigint: false });
      if (st.isSymbolicLink()) continue;
      if (st.isDirectory()) {
        stack.push(path);
        continue;
      }
      if (!st.isFile()) {
        scan.specialFiles.push(rel);
        continue;
      }
      scan.bytes += st.size;
      if (scan.bytes > limits.maxBytes) {
        scan.overLimit = 'bytes';
        break;
      }
      if (st.nlink > 1) {
        const key = `${st.dev}:${st.ino}`;
        const known = linked.get(key);
        if (known) known.seen += 1;
        else linked.set(key, { path: rel, nlink: st.nlink, seen: 1 });
      }
    }
    // A `break` leaves the directory handle open; close it (closing an exhausted one throws).
    await handle.close().catch(() => undefined);
  }
  if (!scan.overLimit) {
    for (const l of linked.values()) if (l.seen < l.nlink) scan.outsideHardLinks.push(l.path);
  }
  scan.gitEntries.sort();
  scan.specialFiles.sort();
  scan.outsideHardLinks.sort();
  return scan;
}
