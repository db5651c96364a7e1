/**
 * Repository grants with the file system in the loop: resolves a run's repository, the grants and
 * the platform's own paths to real paths (no `..`, no symlink escape), then asks the pure
 * `repoGrant` (contracts/tenants.ts). The API calls it before any git touches the path; the
 * worker's createSandbox calls it again right before it does.
 */
import { realpath } from 'node:fs/promises';
import { ApplicationFailure } from '@temporalio/common';
import { resolve } from 'node:path';
import {
  fileUrlPath,
  normaliseRepoUrl,
  repoGrant,
  type RepoGrantDecision,
  type ResolvedGrants,
  type ResolvedRepo,
  type TenantsConfig,
} from '../contracts';

/** The checkout (or install dir) the platform runs from: never a run's repository. */
export const PLATFORM_ROOT = resolve(__dirname, '..');

export interface RepoAccess {
  /** Allowed, or why not; never throws for a bad repository (only for I/O it cannot judge). */
  check(tenant: string, repo: string): Promise<RepoGrantDecision>;
  /** The tenants configuration it decides with. */
  readonly config: TenantsConfig;
}

/** `path` and, when it exists, its real path (a missing path stands for itself). */
async function realForms(path: string): Promise<string[]> {
  const literal = resolve(path);
  try {
    const real = await realpath(literal);
    return real === literal ? [literal] : [literal, real];
  } catch {
    return [literal];
  }
}

/** How long the real paths of grants and platform paths are reused (the repository's never is). */
const FORMS_TTL_MS = 5000;

export function createRepoAccess(opts: {
  config: TenantsConfig;
  /** The platform's own paths (data dir, artifact store, …); PLATFORM_ROOT is always added. */
  platformPaths: readonly string[];
}): RepoAccess {
  const { config } = opts;
  // Grants and platform paths are the operator's, not the caller's: their real paths are reused
  // for a few seconds instead of costing each request several realpath calls (issue 17). The
  // run's repository, which the caller names, is resolved afresh every time.
  const forms = new Map<string, { at: number; value: Promise<string[]> }>();
  const cachedForms = (path: string): Promise<string[]> => {
    const hit = forms.get(path);
    if (hit && Date.now() - hit.at < FORMS_TTL_MS) return hit.value;
    const value = realForms(path);
    forms.set(path, { at: Date.now(), value });
    return value;
  };

  const grantsOf = async (tenant: string): Promise<ResolvedGrants> => {
    const paths = new Map<string, string[]>();
    const t = Object.prototype.hasOwnProperty.call(config.tenants, tenant)
      ? config.tenants[tenant]
      : undefined;
    for (const grant of t?.repos ?? []) {
      const dir = grant.startsWith('/') ? grant : fileUrlPath(grant);
      if (dir === undefined) continue;
      paths.set(
        grant,
        (await cachedForms(dir)).map((d) => (d.endsWith('/') ? d : `${d}/`)),
      );
    }
    return { paths };
  };

  return {
    config,
    async check(tenant, repo) {
      const platform = (
        await Promise.all([...opts.platformPaths, PLATFORM_ROOT].map((p) => cachedForms(p)))
      ).flat();
      const grants = await grantsOf(tenant);
      // First on the path as written, touching nothing outside a grant…
      const literal = repoGrant(config, tenant, repo, platform, grants);
      if (!literal.allowed) return literal;
      const path = repo.startsWith('/') ? repo : fileUrlPath(repo);
      if (path === undefined) return literal; // a remote URL: nothing local to resolve
      // …then on the real path, so a symlink cannot lead out of the grant or into the platform.
      let real: string;
      try {
        real = await realpath(path);
      } catch {
        return literal; // missing: the worker reports repo_not_found (and checks again)
      }
      const resolved: ResolvedRepo = {
        path: real,
        ...(repo.startsWith('/') ? {} : { url: normaliseRepoUrl(repo) }),
      };
      return repoGrant(config, tenant, resolved, platform, grants);
    },
  };
}

/**
 * For activities (createSandbox): resolves unless `tenant` may use `repo`, else throws the
 * non-retryable `repo_not_allowed` failure (a retry will not grant it). The detail names the rule,
 * never a resolved path.
 */
export async function assertRepoAllowed(
  access: Pick<RepoAccess, 'check'>,
  tenant: string,
  repo: string,
): Promise<void> {
  const decision = await access.check(tenant, repo);
  if (decision.allowed) return;
  throw ApplicationFailure.create({
    type: 'repo_not_allowed',
    message: `repository not allowed for tenant ${tenant}: ${decision.detail}`,
    nonRetryable: true,
    details: [{ reason: decision.reason }],
  });
}
