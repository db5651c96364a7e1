/** Loads the rebuild targets file (YAML): the targets release managers may rebuild, validated once at start. */
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse } from 'yaml';
import { rebuildTargetsFileSchema, type RebuildTarget } from '../../contracts';

export interface RebuildTargets {
  get(name: string): RebuildTarget | undefined;
  names(): string[];
}

/** Targets from a list (tests) or a parsed file. */
export function rebuildTargets(targets: RebuildTarget[]): RebuildTargets {
  const byName = new Map(targets.map((t) => [t.name, t]));
  return { get: (name) => byName.get(name), names: () => [...byName.keys()] };
}

/** Parses the file; a relative `repo` is resolved against the file's directory's parent (the repository root for `infra/`). */
export async function loadRebuildTargets(file: string): Promise<RebuildTargets> {
  const raw: unknown = parse(await readFile(file, 'utf8'));
  const base = resolve(dirname(file), '..');
  const withRepos =
    typeof raw === 'object' && raw !== null && Array.isArray((raw as { targets?: unknown }).targets)
      ? {
          ...raw,
          targets: (raw as { targets: Record<string, unknown>[] }).targets.map((t) =>
            typeof t.repo === 'string' && !isAbsolute(t.repo) ? { ...t, repo: resolve(base, t.repo) } : t,
          ),
        }
      : raw;
  const parsed = rebuildTargetsFileSchema.safeParse(withRepos);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new Error(`invalid rebuild targets file ${file}:\n${lines.join('\n')}`);
  }
  return rebuildTargets(parsed.data.targets);
}
