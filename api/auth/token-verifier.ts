/**
 * Verifies JWT access tokens with jose and builds the Principal. Issuers are a fixed map
 * issuer → (JWKS, audience) from configuration; keys are never fetched from a URL named in a token.
 */
import { decodeJwt, decodeProtectedHeader, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import { AppError, isSecureOrLoopbackUrl, isValidId, type Principal } from '../../contracts';
import { JwksCache } from './jwks-cache';
import { DEFAULT_ROLE_SCOPES } from './policy';

export interface IssuerConfig {
  issuer: string;
  audience: string;
  /** When absent, discovered once from `${issuer}/.well-known/openid-configuration`. */
  jwksUrl?: string;
}

export interface TokenVerifierOptions {
  issuers: IssuerConfig[];
  algorithms: string[];
  clockToleranceSeconds: number;
  tenantClaim: string;
  defaultTenant: string;
  /** Required `typ` header (e.g. `at+jwt`), when configured. */
  typ?: string;
  /** Oldest token accepted (seconds since `iat`, which then becomes required); unset: no limit but `exp`. */
  maxTokenAgeSeconds?: number;
  /** Roles (`roles` claim) → scopes; DEFAULT_ROLE_SCOPES when absent. An unknown role grants nothing. */
  roleScopes?: Readonly<Record<string, readonly string[]>>;
  /**
   * The issuers that may assert a tenant (tenants file); undefined for an unknown tenant. A token
   * whose issuer may not assert its tenant is refused like any bad token. No binding when absent.
   */
  tenantIssuers?: (tenant: string) => readonly string[] | undefined;
  fetchTimeoutMs?: number;
  /** At most one JWKS fetch per cooldown for unknown `kid`s. */
  jwksCooldownMs?: number;
  /** Cached keys older than this are refreshed in the background. */
  jwksMaxAgeMs?: number;
  onJwksError?: (err: unknown) => void;
  /** Clock for the JWKS cache's cooldown and age (tests); Date.now by default. */
  now?: () => number;
}

export type TokenVerifier = (token: string) => Promise<Principal>;

/** Largest bearer token we parse; anything bigger is refused unread. */
export const MAX_TOKEN_LENGTH = 8192;

/**
 * The token of an `Authorization: Bearer …` value (HTTP header or gRPC metadata), or undefined.
 * The length is capped before any parsing.
 */
/** 401 for a request without a usable bearer token. */
export function missingToken(): AppError {
  return new AppError('unauthenticated', 'the access token is missing, invalid or expired', {
    headers: { 'WWW-Authenticate': 'Bearer' },
  });
}

export function bearerToken(header: unknown): string | undefined {
  if (typeof header !== 'string' || header.length > MAX_TOKEN_LENGTH + 7) return undefined;
  return /^Bearer ([A-Za-z0-9._~+/=-]+)$/.exec(header)?.[1];
}

function unauthenticated(cause?: unknown): AppError {
  // One detail for every failure: nothing that helps an attacker tell the cases apart.
  return new AppError('unauthenticated', 'the access token is missing, invalid or expired', {
    cause,
    headers: { 'WWW-Authenticate': 'Bearer error="invalid_token"' },
  });
}

function unavailable(cause: unknown): AppError {
  return new AppError('service_unavailable', 'the token issuer cannot be reached', {
    cause,
    headers: { 'Retry-After': '5' },
  });
}

async function discoverJwksUrl(issuer: string, timeoutMs: number): Promise<string> {
  const url = `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), redirect: 'error' });
  if (!res.ok) throw new Error(`OIDC discovery at ${url} answered ${res.status}`);
  const doc = (await res.json()) as { issuer?: unknown; jwks_uri?: unknown };
  if (doc.issuer !== issuer)
    throw new Error(`OIDC discovery at ${url} names issuer ${String(doc.issuer)}, expected ${issuer}`);
  if (typeof doc.jwks_uri !== 'string') throw new Error(`OIDC discovery at ${url} has no jwks_uri`);
  if (!isSecureOrLoopbackUrl(doc.jwks_uri))
    throw new Error(`OIDC discovery at ${url} names a JWKS URL that is neither https nor loopback`);
  return doc.jwks_uri;
}

function scopesOf(payload: JWTPayload, roleScopes: Readonly<Record<string, readonly string[]>>): string[] {
  const out = new Set<string>();
  const values = (v: unknown): string[] => {
    if (typeof v === 'string') return v.split(/\s+/).filter(Boolean);
    if (Array.isArray(v)) return v.filter((s): s is string => typeof s === 'string');
    return [];
  };
  for (const s of [...values(payload.scope), ...values(payload.scp)]) out.add(s);
  // Roles grant what the configured mapping says, and nothing else.
  for (const role of values(payload.roles)) {
    const granted = Object.prototype.hasOwnProperty.call(roleScopes, role) ? roleScopes[role] : undefined;
    for (const s of granted ?? []) out.add(s);
  }
  return [...out].sort();
}

interface IssuerState {
  config: IssuerConfig;
  cache: JwksCache;
}

export function createTokenVerifier(opts: TokenVerifierOptions): TokenVerifier {
  const timeoutMs = opts.fetchTimeoutMs ?? 5000;
  if (opts.algorithms.some((a) => a === 'none' || a.startsWith('HS'))) {
    throw new Error('AUTH_ALGORITHMS may not include none or HS* (asymmetric algorithms only)');
  }
  const issuers = new Map<string, IssuerState>();
  for (const config of opts.issuers) {
    for (const url of [config.issuer, config.jwksUrl]) {
      if (url !== undefined && !isSecureOrLoopbackUrl(url))
        throw new Error(`issuer and JWKS URLs must be https (http only on loopback): ${url}`);
    }
    let discovered: Promise<string> | undefined;
    const jwksUrl = (): Promise<string> => {
      if (config.jwksUrl) return Promise.resolve(config.jwksUrl);
      discovered ??= discoverJwksUrl(config.issuer, timeoutMs).catch((err: unknown) => {
        discovered = undefined; // retried on a later request, not cached as a failure
        throw err;
      });
      return discovered;
    };
    issuers.set(config.issuer, {
      config,
      cache: new JwksCache({
        jwksUrl,
        fetchTimeoutMs: timeoutMs,
        cooldownMs: opts.jwksCooldownMs ?? 30_000,
        maxAgeMs: opts.jwksMaxAgeMs ?? 600_000,
        onError: opts.onJwksError,
        ...(opts.now ? { now: opts.now } : {}),
      }),
    });
  }

  const verify = async (token: string): Promise<Principal> => {
    if (token.length === 0 || token.length > MAX_TOKEN_LENGTH) throw unauthenticated();
    let state: IssuerState | undefined;
    let kid: string | undefined;
    try {
      const header = decodeProtectedHeader(token);
      kid = typeof header.kid === 'string' && header.kid.length > 0 ? header.kid : undefined;
      const iss = decodeJwt(token).iss;
      state = typeof iss === 'string' ? issuers.get(iss) : undefined;
    } catch (err) {
      throw unauthenticated(err); // malformed base64 / JSON
    }
    // A token must name its key and come from a configured issuer: no key guessing, no keys from token URLs.
    if (!state || !kid) throw unauthenticated();
    const { cache, config } = state;
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(
        token,
        async (header) => {
          const key = await cache.getKey(kid, header.alg);
          if (!key) throw new joseErrors.JWKSNoMatchingKey();
          return key;
        },
        {
          issuer: config.issuer,
          audience: config.audience,
          algorithms: opts.algorithms,
          clockTolerance: opts.clockToleranceSeconds,
          requiredClaims: opts.maxTokenAgeSeconds ? ['exp', 'sub', 'iat'] : ['exp', 'sub'],
          ...(opts.maxTokenAgeSeconds ? { maxTokenAge: opts.maxTokenAgeSeconds } : {}),
          ...(opts.typ ? { typ: opts.typ } : {}),
        },
      ));
    } catch (err) {
      if (err instanceof joseErrors.JOSEError) throw unauthenticated(err);
      throw unavailable(err);
    }
    const sub = payload.sub;
    if (!isValidId(sub)) throw unauthenticated();
    const tenantClaim = (payload as Record<string, unknown>)[opts.tenantClaim];
    const tenant = tenantClaim === undefined ? opts.defaultTenant : tenantClaim;
    if (!isValidId(tenant)) throw unauthenticated();
    if (opts.tenantIssuers && !opts.tenantIssuers(tenant)?.includes(config.issuer)) throw unauthenticated();
    return {
      userId: sub,
      tenant,
      scopes: scopesOf(payload, opts.roleScopes ?? DEFAULT_ROLE_SCOPES),
      tokenId: typeof payload.jti === 'string' ? payload.jti : undefined,
    };
  };
  return verify;
}
