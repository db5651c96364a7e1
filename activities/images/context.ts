/** The build context of an image: the files of a worktree directory that `.dockerignore` keeps. */
import { readFile, readdir } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { isIgnored, parseDockerignore } from './dockerignore';

/**
 * Context-relative paths of every file and symlink under `dir` not excluded by its `.dockerignore`
 * (`.git` is always left out; the Dockerfile is always kept so the engine can read it).
 */
export async function contextFiles(dir: string, dockerfile: string): Promise<string[]> {
  const text = await readFile(join(dir, '.dockerignore'), 'utf8').catch(() => '');
  const rules = parseDockerignore(text);
  const out: string[] = [];
  const walk = async (abs: string): Promise<void> => {
    for (const entry of await readdir(abs, { withFileTypes: true })) {
      const full = join(abs, entry.name);
      const rel = relative(dir, full).split('\\').join('/');
      if (rel === '.git') continue;
      if (entry.isDirectory()) {
        // A directory excluded outright is skipped unless an exception could bring back something inside it.
        if (isIgnored(rules, rel) && !text.includes('!')) continue;
        await walk(full);
      } else if (!isIgnored(rules, rel) || rel === dockerfile || rel === '.dockerignore') {
        out.push(rel);
      }
    }
  };
  await walk(dir);
  return out.sort();
}
