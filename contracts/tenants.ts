/**
 * The tenant configuration (`CHOIROS_TENANTS_FILE`, docs/tenancy.md) and the repository-grant
 * decision. Pure: the file is read and paths are resolved elsewhere (tenancy/); this module only
 * validates and compares.
 */
import { z } from 'zod';
import { ID_PATTERN } from './ids';
import { scopeMatches } from './glob';
import { APPROVAL_RANK, type ApprovalPolicy, type ApprovalRequirement } from './moods';

/** A path grant: an absolute directory prefix ending in "/" (or `~/…`, the platform user's home). */
const PATH_GRANT = /^(\/|~\/)/;
/** A URL grant: a scheme the platform knows, then a prefix. */
const URL_GRANT = /^(file|https?|ssh|git):\/\//;

const GRANT_MESSAGE = 'must be an absolute directory prefix ending in "/" or a URL prefix';

function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** True for an https URL, or an http URL to a loopback host (local dev issuers only). */
export function isSecureOrLoopbackUrl(raw: string): boolean {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return false;
  }
  if (url.protocol === 'https:') return true;
  return url.protocol === 'http:' && isLoopbackHost(url.hostname);
}

/** An issuer or JWKS URL: https, or http on loopback only. */
export const trustedUrlSchema = z
  .string()
  .url()
  .refine(isSecureOrLoopbackUrl, 'must be an https URL (http only on a loopback host)');

const repoGrantSchema = z
  .string()
  .min(2)
  .max(1024)
  .refine((g) => !g.includes('\0'), GRANT_MESSAGE)
  .refine((g) => {
    if (PATH_GRANT.test(g)) return g.endsWith('/') && !g.split('/').some((s) => s === '..' || s === '.');
    if (URL_GRANT.test(g)) return normaliseRepoUrl(g) !== undefined;
    return false;
  }, GRANT_MESSAGE);

const capsSchema = z
  .object({
    /** Runs of one user in flight at once; more wait as `queued` (CHOIROS_MAX_RUNS_PER_USER otherwise). */
    runsPerUser: z.number().int().min(1).max(10_000).optional(),
    /** Runs of the tenant in flight at once (CHOIROS_MAX_RUNS_PER_TENANT otherwise). */
    runsPerTenant: z.number().int().min(1).max(100_000).optional(),
    /** Event streams (SSE and gRPC WatchRun) one principal may hold open at once (API_MAX_STREAMS_PER_PRINCIPAL otherwise). */
    eventStreamsPerPrincipal: z.number().int().min(1).max(10_000).optional(),
  })
  .strict();

/** One approval floor: touching any of `paths` needs this approval, whatever mood and risk tier asked. */
const protectedPathsSchema = z
  .object({
    /** Repository-relative globs (`infra/**`, `*.lock`) or directory prefixes ending in "/". */
    paths: z.array(z.string().min(1).max(200)).min(1).max(100),
    approval: z.enum(['owner', 'independent']),
    /** Distinct approvers needed (default 1). */
    quorum: z.number().int().min(1).max(10).optional(),
  })
  .strict();

/** A tenant's policy: floors a request can raise, never lower. */
export const tenantPolicySchema = z
  .object({
    protected: z.array(protectedPathsSchema).max(100).default([]),
  })
  .strict();
export type TenantPolicy = z.output<typeof tenantPolicySchema>;

const secretRefSchema = z
  .string()
  .regex(/^(env|file):.+$/, 'must be a reference, env:VAR or file:/path (never a value)');

/**
 * Credentials for a remote repository host, by reference (decision 0019): host-side git sends them
 * as an `Authorization` header to URLs under `url` only. `bearer` sends the token as is; `basic`
 * sends `username:token` (GitHub, Gitea and GitLab accept a token as the password).
 */
const repoCredentialSchema = z
  .object({
    /** A URL prefix (https, or http on a loopback host), compared like a grant. */
    url: z
      .string()
      .max(1024)
      .refine(
        (u) => /^https?:\/\//.test(u) && isSecureOrLoopbackUrl(u) && normaliseRepoUrl(u) !== undefined,
        'must be an https URL prefix (http only on a loopback host), without user info',
      ),
    /** A token (personal, deploy or installation token), by reference. */
    token: secretRefSchema.optional(),
    /**
     * Or a GitHub App: the worker signs a short JWT with the app's private key and exchanges it for
     * an installation token (`POST {api}/app/installations/{id}/access_tokens`), cached until shortly
     * before it expires; git gets the installation token as basic auth.
     */
    githubApp: z
      .object({
        api: trustedUrlSchema,
        appId: z.union([z.number().int().positive(), z.string().regex(/^[A-Za-z0-9._-]{1,64}$/)]),
        installationId: z.number().int().positive(),
        privateKey: secretRefSchema,
      })
      .strict()
      .optional(),
    scheme: z.enum(['basic', 'bearer']).default('basic'),
    username: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/)
      .default('x-access-token'),
  })
  .strict()
  .refine((c) => (c.token === undefined) !== (c.githubApp === undefined), {
    message: 'needs exactly one of token and githubApp',
  });
export type RepoCredential = z.output<typeof repoCredentialSchema>;

/**
 * A forge that opens pull requests for delivered branches (decision 0020). `github` speaks GitHub's
 * REST API (`POST /repos/{owner}/{repo}/pulls`), which Gitea also serves under `/api/v1`.
 */
const forgeSchema = z
  .object({
    type: z.literal('github'),
    /** API base: https://api.github.com, or a Gitea's https://host/api/v1 (http only on loopback). */
    api: trustedUrlSchema,
    token: secretRefSchema,
    /** The branch pull requests target when the run's base ref is not a branch name. */
    defaultBase: z
      .string()
      .regex(/^[A-Za-z0-9._/-]{1,200}$/)
      .default('main'),
  })
  .strict();
export type ForgeConfig = z.output<typeof forgeSchema>;

const tenantSchema = z
  .object({
    /** Repositories the tenant's runs may use: directory prefixes ending in "/" or URL prefixes. */
    repos: z.array(repoGrantSchema).max(256),
    /**
     * Issuers whose tokens may assert this tenant. Absent: only the platform's primary issuer
     * (AUTH_ISSUER); other configured issuers must be listed by the tenants they may assert.
     */
    issuers: z.array(trustedUrlSchema).max(32).optional(),
    caps: capsSchema.optional(),
    /** Secrets for this tenant's execution lane, by reference (name → env:VAR | file:/path). */
    secrets: z
      .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/, 'must be an env-var name'), secretRefSchema)
      .optional(),
    /** Approval floors: paths whose change needs approval, whatever the request said. */
    policy: tenantPolicySchema.optional(),
    /** Credentials for remote repository hosts, by reference; used by host-side git only. */
    credentials: z.array(repoCredentialSchema).max(64).optional(),
    /** Optional: opens a pull request for each delivered branch. */
    forge: forgeSchema.optional(),
  })
  .strict();

export const tenantsConfigSchema = z
  .object({
    version: z.literal(1),
    /**
     * Platform operations. A rebuild replaces the platform every tenant shares, so the rebuild
     * scopes count only in tokens of these tenants (the platform's own operators); absent: no
     * tenant may rebuild.
     */
    platform: z
      .object({
        operators: z.array(z.string().regex(ID_PATTERN, 'tenant names are ids')).max(16).default([]),
      })
      .strict()
      .optional(),
    tenants: z.record(
      z.string().regex(ID_PATTERN, 'tenant names are ids (A-Z a-z 0-9 _ -, 1-64)'),
      tenantSchema,
    ),
  })
  .strict();

export type TenantsConfig = z.output<typeof tenantsConfigSchema>;
export type TenantConfig = TenantsConfig['tenants'][string];

/** `tenants.acme.repos[1]`: the path of a bad key, as an operator reads it in the file. */
export function formatConfigPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out === '' ? String(p) : `.${String(p)}`;
  }
  return out || '(root)';
}

/** Validates a parsed tenants file; throws one message with a line per bad key (`<path>: <problem>`). */
export function parseTenantsConfig(raw: unknown, source: string): TenantsConfig {
  const parsed = tenantsConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${formatConfigPath(i.path)}: ${i.message}`);
    throw new Error(`invalid tenants file ${source}:\n${lines.join('\n')}`);
  }
  return parsed.data;
}

/**
 * A repository URL in one canonical form (lower-case scheme and host, no default port, no user
 * info, no query or fragment, no `.`/`..` segments, no trailing `.git`, no trailing "/"), or
 * undefined when it is not a URL the platform compares.
 */
export function normaliseRepoUrl(raw: string): string | undefined {
  if (!URL_GRANT.test(raw)) return undefined;
  // Dot segments are refused before the URL parser would silently resolve them.
  if (raw.split(/[/\\]/).some((s) => s === '..' || s === '.' || /^%2e(%2e)?$/i.test(s))) return undefined;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return undefined;
  }
  if (url.username || url.password || url.search || url.hash) return undefined;
  const path = url.pathname
    .replace(/\/+/g, '/')
    .replace(/\.git\/?$/, '')
    .replace(/\/$/, '');
  return `${url.protocol}//${url.host.toLowerCase()}${path}`;
}

/** The local path of a `file://` URL, or undefined. */
export function fileUrlPath(raw: string): string | undefined {
  if (!raw.startsWith('file:///')) return undefined;
  const n = normaliseRepoUrl(raw);
  return n === undefined ? undefined : decodeURIComponent(n.slice('file://'.length)) || '/';
}

/** True when `path` is `dir` or lies inside it (both absolute, resolved, without trailing "/"). */
export function isPathWithin(path: string, dir: string): boolean {
  const d = dir.length > 1 ? dir.replace(/\/+$/, '') : dir;
  return path === d || path.startsWith(d === '/' ? '/' : `${d}/`);
}

export type RepoDenyReason = 'unknown_tenant' | 'invalid_repo' | 'platform_path' | 'no_grant';

export type RepoGrantDecision =
  { allowed: true; grant: string } | { allowed: false; reason: RepoDenyReason; detail: string };

/**
 * A repository as the grant decision sees it: `path` is its resolved real path (a local path, or
 * the path of a `file://` URL), `url` its normalised URL when it was named by one.
 */
export interface ResolvedRepo {
  path?: string;
  url?: string;
}

/** Path grants of a tenant with their resolved real forms (tenancy/ resolves symlinks such as /tmp → /private/tmp). */
export interface ResolvedGrants {
  /** Grant as written → the real directories it stands for (the literal and its realpath). */
  paths: Map<string, string[]>;
}

/**
 * May `tenant`'s runs use `repo`? Pure: `repo` must already be resolved (a local path as its real
 * path, a URL normalised; tenancy/repo-access.ts does that), as must `platformPaths` (the data dir,
 * the checkout the platform runs from, …). Refusal order: unknown tenant, invalid repo, platform
 * path (even under a grant, and also when the repository contains a platform path), no grant.
 *
 * - A local path is allowed under a path grant, compared on the real path.
 * - A `file://` URL is a local path too: allowed under a path grant or under the path of a `file://`
 *   URL grant, compared on its real path (a symlink cannot lead out of the grant).
 * - Any other URL is allowed under a URL grant of the same normalised scheme, host and path prefix.
 */
export function repoGrant(
  config: TenantsConfig,
  tenant: string,
  repo: string | ResolvedRepo,
  platformPaths: readonly string[],
  resolvedGrants?: ResolvedGrants,
): RepoGrantDecision {
  const t = Object.prototype.hasOwnProperty.call(config.tenants, tenant) ? config.tenants[tenant] : undefined;
  if (!t) return { allowed: false, reason: 'unknown_tenant', detail: `tenant ${tenant} is not configured` };
  const target = typeof repo === 'string' ? resolveLiterally(repo) : repo;
  if (!target || (target.path === undefined && target.url === undefined))
    return {
      allowed: false,
      reason: 'invalid_repo',
      detail: 'the repository is not an absolute path or a URL',
    };
  const { path, url } = target;
  if (path !== undefined) {
    if (!path.startsWith('/') || path.split('/').some((s) => s === '..' || s === '.'))
      return {
        allowed: false,
        reason: 'invalid_repo',
        detail: 'the repository path is not absolute and resolved',
      };
    for (const p of platformPaths) {
      if (isPathWithin(path, p) || isPathWithin(p, path))
        return {
          allowed: false,
          reason: 'platform_path',
          detail: 'the repository is (or contains) a path of the platform itself',
        };
    }
    for (const grant of t.repos) {
      const dirs = grantDirs(grant, resolvedGrants);
      if (dirs.some((d) => isPathWithin(path, d) && path !== d.replace(/\/+$/, '')))
        return { allowed: true, grant };
    }
    return {
      allowed: false,
      reason: 'no_grant',
      detail: `no repository grant of tenant ${tenant} covers it`,
    };
  }
  for (const grant of t.repos) {
    const g = normaliseRepoUrl(grant);
    if (g !== undefined && url !== undefined && (url === g || url.startsWith(`${g}/`)))
      return { allowed: true, grant };
  }
  return { allowed: false, reason: 'no_grant', detail: `no repository grant of tenant ${tenant} covers it` };
}

/** A repository string taken as already resolved (paths as real paths). */
function resolveLiterally(repo: string): ResolvedRepo | undefined {
  if (repo.startsWith('/')) return { path: repo.length > 1 ? repo.replace(/\/+$/, '') : repo };
  const path = fileUrlPath(repo);
  if (path !== undefined) return { path, url: normaliseRepoUrl(repo) };
  const url = normaliseRepoUrl(repo);
  return url === undefined ? undefined : { url };
}

/** The directories a grant stands for when compared with a local path ([] for non-file URLs). */
function grantDirs(grant: string, resolved: ResolvedGrants | undefined): string[] {
  const known = resolved?.paths.get(grant);
  if (known) return known;
  if (grant.startsWith('/')) return [grant];
  const p = fileUrlPath(grant);
  return p === undefined ? [] : [`${p}/`];
}

/**
 * The credential of `tenant` for a remote repository `url`: the one whose URL prefix is longest
 * among those covering it (normalised like grants), or undefined.
 */
export function credentialFor(
  config: TenantsConfig,
  tenant: string,
  url: string,
): RepoCredential | undefined {
  const t = Object.prototype.hasOwnProperty.call(config.tenants, tenant) ? config.tenants[tenant] : undefined;
  const target = normaliseRepoUrl(url);
  if (!t || target === undefined) return undefined;
  let best: { cred: RepoCredential; len: number } | undefined;
  for (const cred of t.credentials ?? []) {
    const prefix = normaliseRepoUrl(cred.url);
    if (prefix === undefined || !(target === prefix || target.startsWith(`${prefix}/`))) continue;
    if (!best || prefix.length > best.len) best = { cred, len: prefix.length };
  }
  return best?.cred;
}

/** The caps of a tenant, with the platform defaults where the file names none. */
export function tenantCaps(
  config: TenantsConfig | undefined,
  tenant: string,
  defaults: { runsPerUser: number; runsPerTenant: number },
): { runsPerUser: number; runsPerTenant: number } {
  const caps =
    config && Object.prototype.hasOwnProperty.call(config.tenants, tenant)
      ? config.tenants[tenant]?.caps
      : undefined;
  return {
    runsPerUser: caps?.runsPerUser ?? defaults.runsPerUser,
    runsPerTenant: caps?.runsPerTenant ?? defaults.runsPerTenant,
  };
}

/**
 * The issuers whose tokens may assert `tenant`: the tenant's `issuers`, or only the platform's
 * primary issuer when the file names none; undefined for a tenant the file does not configure
 * (no issuer may assert it).
 */
export function issuersForTenant(
  config: TenantsConfig,
  tenant: string,
  primaryIssuer: string,
): readonly string[] | undefined {
  const t = Object.prototype.hasOwnProperty.call(config.tenants, tenant) ? config.tenants[tenant] : undefined;
  if (!t) return undefined;
  return t.issuers ?? [primaryIssuer];
}

/**
 * The approval floor a run carries (RunWorkflowInput.approvalFloor): its tenant's protected paths,
 * and for a rerun the approval the first run needed. Workflows raise the mood's and risk tier's
 * approval to it once the touched paths are known; nothing in a request lowers it.
 */
export interface ApprovalFloor {
  protected?: TenantPolicy['protected'];
  minimum?: { requirement: ApprovalRequirement; quorum: number; reason: string };
}

/** `base` raised to the floor for `touchedPaths` (pure; the reasons say which rule raised it). */
export function applyApprovalFloor(
  base: ApprovalPolicy,
  floor: ApprovalFloor,
  touchedPaths: readonly string[],
): ApprovalPolicy {
  const raises: { requirement: ApprovalRequirement; quorum: number; reason: string }[] = [];
  for (const rule of floor.protected ?? []) {
    const hit = touchedPaths.find((p) => rule.paths.some((g) => scopeMatches(g, p)));
    if (hit !== undefined)
      raises.push({
        requirement: rule.approval,
        quorum: rule.quorum ?? 1,
        reason: `tenant policy: ${hit} is protected (${rule.paths.join(', ')})`,
      });
  }
  if (floor.minimum && floor.minimum.requirement !== 'none') raises.push(floor.minimum);
  let { requirement, quorum } = base;
  const reasons = [...base.reasons];
  for (const r of raises) {
    if (APPROVAL_RANK[r.requirement] > APPROVAL_RANK[requirement]) requirement = r.requirement;
    quorum = Math.max(quorum, r.quorum);
    reasons.push(`${r.reason}: ${r.requirement}`);
  }
  return { requirement, quorum: requirement === 'none' ? 0 : Math.max(1, quorum), reasons };
}

/** A tenant's policy, or undefined (unknown tenant, or none configured). */
export function tenantPolicyOf(config: TenantsConfig, tenant: string): TenantPolicy | undefined {
  return Object.prototype.hasOwnProperty.call(config.tenants, tenant)
    ? config.tenants[tenant]?.policy
    : undefined;
}

/** True when `tenant`'s principals may use platform scopes (rebuilds): the file's `platform.operators`. */
export function isPlatformOperatorTenant(config: TenantsConfig, tenant: string): boolean {
  return config.platform?.operators.includes(tenant) ?? false;
}
