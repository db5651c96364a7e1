/** The gateway's repository gate: a run's `repo` must fall under a grant of the caller's tenant. */
import { AppError, type RepoGrantDecision } from '../contracts';

/** What the gateway needs of tenancy/repo-access.ts (a fake in unit tests). */
export interface RepoGate {
  check(tenant: string, repo: string): Promise<RepoGrantDecision>;
}

/**
 * Throws `403 repo_not_allowed` unless `tenant` may use `repo`. Called before any git touches the
 * path; the detail names the rule, never a resolved path.
 */
export async function requireRepoGrant(gate: RepoGate, tenant: string, repo: string): Promise<void> {
  const decision = await gate.check(tenant, repo);
  if (decision.allowed) return;
  throw new AppError('repo_not_allowed', `repository not allowed for tenant ${tenant}: ${decision.detail}`, {
    errors: [{ field: 'repo', message: decision.reason }],
  });
}
