/** Verifies JWT access tokens with jose against the configured issuer's JWKS and builds the Principal. */
import {
  createRemoteJWKSet,
  errors as joseErrors,
  jwtVerify,
  type JWTPayload,
  type JWTVerifyGetKey,
} from 'jose';
import { AppError, isValidId, type Principal } from '../../contracts';

export interface TokenVerifierOptions {
  issuer: string;
  audience: string;
  /** When absent, discovered from `${issuer}/.well-known/openid-configuration`. */
  jwksUrl?: string;
  algorithms: string[];
  clockToleranceSeconds: number;
  tenantClaim: string;
  defaultTenant: string;
  fetchTimeoutMs?: number;
}

export type TokenVerifier = (token: string) => Promise<Principal>;

/** Largest bearer token we parse; anything bigger is refused unread. */
export const MAX_TOKEN_LENGTH = 8192;

const AUTH_FAILURE_CODES = new Set([
  'ERR_JWT_EXPIRED',
  'ERR_JWT_CLAIM_VALIDATION_FAILED',
  'ERR_JWT_INVALID',
  'ERR_JWS_INVALID',
  'ERR_JWS_SIGNATURE_VERIFICATION_FAILED',
  'ERR_JWKS_NO_MATCHING_KEY',
  'ERR_JWKS_MULTIPLE_MATCHING_KEYS',
  'ERR_JOSE_ALG_NOT_ALLOWED',
  'ERR_JOSE_NOT_SUPPORTED',
  'ERR_JWK_INVALID',
]);

function unauthenticated(cause?: unknown): AppError {
  // One detail for every failure: nothing that helps an attacker tell the cases apart.
  return new AppError('unauthenticated', 'the access token is missing, invalid or expired', {
    cause,
    headers: { 'WWW-Authenticate': 'Bearer error="invalid_token"' },
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
  return doc.jwks_uri;
}

function scopesOf(payload: JWTPayload): string[] {
  const out = new Set<string>();
  const add = (v: unknown): void => {
    if (typeof v === 'string')
      v.split(/\s+/)
        .filter(Boolean)
        .forEach((s) => out.add(s));
    else if (Array.isArray(v)) v.filter((s): s is string => typeof s === 'string').forEach((s) => out.add(s));
  };
  add(payload.scope);
  add(payload.scp);
  add(payload.roles);
  return [...out].sort();
}

export function createTokenVerifier(opts: TokenVerifierOptions): TokenVerifier {
  const timeoutMs = opts.fetchTimeoutMs ?? 5000;
  let keys: Promise<JWTVerifyGetKey> | undefined;
  const getKeys = (): Promise<JWTVerifyGetKey> => {
    keys ??= (async () => {
      const jwksUrl = opts.jwksUrl ?? (await discoverJwksUrl(opts.issuer, timeoutMs));
      return createRemoteJWKSet(new URL(jwksUrl), { timeoutDuration: timeoutMs, cooldownDuration: 30_000 });
    })();
    // A failed discovery is retried on the next request rather than cached forever.
    keys.catch(() => {
      keys = undefined;
    });
    return keys;
  };

  return async (token: string): Promise<Principal> => {
    if (token.length === 0 || token.length > MAX_TOKEN_LENGTH) throw unauthenticated();
    let jwks: JWTVerifyGetKey;
    try {
      jwks = await getKeys();
    } catch (err) {
      throw new AppError('service_unavailable', 'the token issuer cannot be reached', { cause: err });
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, jwks, {
        issuer: opts.issuer,
        audience: opts.audience,
        algorithms: opts.algorithms,
        clockTolerance: opts.clockToleranceSeconds,
        requiredClaims: ['exp', 'sub'],
      }));
    } catch (err) {
      if (err instanceof joseErrors.JOSEError && AUTH_FAILURE_CODES.has(err.code)) throw unauthenticated(err);
      if (err instanceof joseErrors.JOSEError && err.code !== 'ERR_JWKS_TIMEOUT') throw unauthenticated(err);
      throw new AppError('service_unavailable', 'the token issuer cannot be reached', { cause: err });
    }
    const sub = payload.sub;
    if (!isValidId(sub)) throw unauthenticated();
    const tenantClaim = (payload as Record<string, unknown>)[opts.tenantClaim];
    const tenant = tenantClaim === undefined ? opts.defaultTenant : tenantClaim;
    if (!isValidId(tenant)) throw unauthenticated();
    return {
      userId: sub,
      tenant,
      scopes: scopesOf(payload),
      tokenId: typeof payload.jti === 'string' ? payload.jti : undefined,
    };
  };
}
