/**
 * The one authorisation policy of the gateway (HTTP and gRPC alike). Actions need a scope; run
 * resources are visible to their owner, and read-only to their tenant's admins. A resource the
 * caller may not see answers exactly like one that does not exist.
 */
import { AppError, type Principal } from '../../contracts';

export type Action =
  | 'runs.start'
  | 'runs.read'
  | 'runs.list'
  | 'runs.watch'
  | 'runs.cancel'
  | 'runs.approve'
  | 'runs.answer'
  | 'nats.credentials'
  | 'graphs.start'
  | 'graphs.read'
  | 'graphs.cancel'
  | 'rebuilds.start'
  | 'rebuilds.read'
  | 'rebuilds.decide';

export type Scope = 'runs:write' | 'runs:read' | 'runs:approve' | 'rebuild:write' | 'rebuild:approve';

/** Scope that lets a user read every run of their own tenant. */
const TENANT_ADMIN_ROLE = 'tenant:admin';

/**
 * The default roles → scopes mapping (AUTH_ROLE_SCOPES replaces it): named roles, and each scope
 * as a role of its own so that issuers which put scopes in `roles` keep working.
 */
export const DEFAULT_ROLE_SCOPES: Readonly<Record<string, readonly string[]>> = {
  engineer: ['runs:read', 'runs:write'],
  reviewer: ['runs:read', 'runs:approve'],
  'tenant-admin': ['runs:read', TENANT_ADMIN_ROLE],
  'release-manager': ['rebuild:write', 'rebuild:approve'],
  ...Object.fromEntries(
    ['runs:read', 'runs:write', 'runs:approve', 'rebuild:write', 'rebuild:approve', TENANT_ADMIN_ROLE].map(
      (s) => [s, [s]],
    ),
  ),
};

export const REQUIRED_SCOPE: Record<Action, Scope> = {
  'runs.start': 'runs:write',
  'runs.cancel': 'runs:write',
  'runs.read': 'runs:read',
  'runs.list': 'runs:read',
  'runs.watch': 'runs:read',
  // Owners act on their own runs with runs:write; reviewers (runs:approve) on their tenant's.
  'runs.approve': 'runs:write',
  'runs.answer': 'runs:write',
  'nats.credentials': 'runs:read',
  // Work graphs are sets of runs: the same scopes.
  'graphs.start': 'runs:write',
  'graphs.cancel': 'runs:write',
  'graphs.read': 'runs:read',
  'rebuilds.start': 'rebuild:write',
  'rebuilds.read': 'rebuild:write',
  'rebuilds.decide': 'rebuild:approve',
};

/** Scopes that also grant an action: approvers read the rebuilds they approve; reviewers approve runs. */
const ALSO_GRANTED_BY: Partial<Record<Action, Scope[]>> = {
  'rebuilds.read': ['rebuild:approve'],
  'runs.approve': ['runs:approve'],
  'runs.answer': ['runs:approve'],
};

/** Actions a tenant's reviewers (scope `runs:approve`) may take on runs they do not own. */
const REVIEW: ReadonlySet<Action> = new Set(['runs.approve', 'runs.answer']);
const REVIEWER_SCOPE: Scope = 'runs:approve';

const READ_ONLY: ReadonlySet<Action> = new Set(['runs.read', 'runs.list', 'runs.watch', 'graphs.read']);

export interface RunResource {
  tenant: string;
  ownerId: string;
  /** The run's status (ChoirRunStatus), where known: reviewers read runs awaiting approval. */
  status?: string;
}

/** What a tenant's reviewers may read of a run they are asked to approve (status, touched paths, receipts, events). */
const REVIEW_READ: ReadonlySet<Action> = new Set(['runs.read', 'runs.watch']);

export type Decision = 'allow' | 'forbidden' | 'not_found';

export function isTenantAdmin(p: Principal): boolean {
  return p.scopes.includes(TENANT_ADMIN_ROLE);
}

/** Decides one action, optionally on one run. */
export function authorize(principal: Principal, action: Action, resource?: RunResource): Decision {
  const reviewer = REVIEW.has(action) && principal.scopes.includes(REVIEWER_SCOPE);
  const granted = [REQUIRED_SCOPE[action], ...(ALSO_GRANTED_BY[action] ?? [])];
  if (!granted.some((scope) => principal.scopes.includes(scope))) return 'forbidden';
  if (!resource) return 'allow';
  if (resource.tenant !== principal.tenant) return 'not_found';
  if (resource.ownerId === principal.userId) {
    // A reviewer's own run is theirs to act on only with the owner's scope (runs:write).
    return REVIEW.has(action) && !principal.scopes.includes(REQUIRED_SCOPE[action]) ? 'forbidden' : 'allow';
  }
  if (reviewer) return 'allow';
  if (
    REVIEW_READ.has(action) &&
    resource.status === 'awaiting_approval' &&
    principal.scopes.includes(REVIEWER_SCOPE)
  )
    return 'allow';
  if (READ_ONLY.has(action) && isTenantAdmin(principal)) return 'allow';
  return 'not_found';
}

/** The 403 for a caller whose token lacks the action's scope. */
export function forbidden(action: Action): AppError {
  const scopes = REVIEW.has(action)
    ? `${REQUIRED_SCOPE[action]} (own runs) or ${REVIEWER_SCOPE}`
    : REQUIRED_SCOPE[action];
  return new AppError('forbidden', `this operation needs the ${scopes} scope`);
}

/** Throws 403 unless the token carries the action's scope (resource checks come later). */
export function requireScopeFor(principal: Principal, action: Action): void {
  if (authorize(principal, action) === 'forbidden') throw forbidden(action);
}
