/** Reads and validates `CHOIROS_TENANTS_FILE` once at start (api and worker alike). */
import { readFile, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { resolve } from 'node:path';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { parseTenantsConfig, type TenantsConfig } from '../contracts';

/** The documented default file: tenant `default`, local repositories under /tmp/ and the home dir. */
export const DEFAULT_TENANTS_FILE = resolve(__dirname, '../infra/tenants.default.yaml');

/**
 * Parses a tenants file's text: YAML, then the schema (contracts/tenants.ts); a bad file is refused
 * with the path of each bad key (`tenants.acme.repos[1]: …`). `~/` grants become the home dir.
 */
export function parseTenantsFile(text: string, source: string, home = homedir()): TenantsConfig {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new Error(
      `invalid tenants file ${source}: not YAML (${err instanceof Error ? err.message : String(err)})`,
    );
  }
  const config = parseTenantsConfig(raw, source);
  const homePrefix = `${home.replace(/\/+$/, '')}/`;
  for (const tenant of Object.values(config.tenants)) {
    tenant.repos = tenant.repos.map((g) => (g.startsWith('~/') ? `${homePrefix}${g.slice(2)}` : g));
  }
  return config;
}

/** Reads and validates the tenants file at `path`. */
export async function loadTenantsFile(path: string, home = homedir()): Promise<TenantsConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(
      `cannot read the tenants file ${path} (CHOIROS_TENANTS_FILE): ${err instanceof Error ? err.message : String(err)}`,
    );
  }
  return parseTenantsFile(text, path, home);
}

/**
 * Writes a tenants file granting each named tenant the given repository prefixes (test stacks and
 * benchmarks that run the real API process with tenants of their own). Returns its path.
 */
export async function writeTenantsFile(
  path: string,
  tenants: readonly string[],
  repos: readonly string[],
): Promise<string> {
  return writeTenantsConfig(path, {
    version: 1,
    tenants: Object.fromEntries(tenants.map((t) => [t, { repos: [...repos] }])),
  });
}

/** Writes a whole tenants config as a file (validated first: never one the platform would refuse). */
export async function writeTenantsConfig(path: string, config: TenantsConfig): Promise<string> {
  parseTenantsConfig(config, path);
  await writeFile(path, stringifyYaml(config));
  return path;
}
