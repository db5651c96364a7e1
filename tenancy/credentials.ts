/**
 * Credentials of remote repository hosts (decision 0019): the tenants file names them by reference
 * (`env:VAR`, `file:/path`); this module reads the reference when host-side git needs it (so a
 * rotated file applies to the next fetch or push) and hands git an `Authorization` header through
 * its environment (`GIT_CONFIG_COUNT`/`KEY`/`VALUE`), never through argv, a file in a worktree, a
 * log line, an event or a workflow payload.
 */
import { createSign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { credentialFor, type RepoCredential, type TenantsConfig } from '../contracts';

/** What host-side git needs for one remote: extra environment entries (empty without a credential). */
export interface RemoteGitAuth {
  /** `GIT_CONFIG_*` entries carrying the header; merge into git's environment, never log. */
  env: Record<string, string>;
  /** Whether a credential was found for the URL (for logs: never the value). */
  configured: boolean;
}

export interface RemoteCredentials {
  /**
   * The git environment for `tenant`'s fetches and pushes of `url`. Throws when a reference is
   * unreadable or a GitHub App's installation token cannot be minted (`AuthMintError`).
   */
  gitAuth(tenant: string, url: string): Promise<RemoteGitAuth>;
  /** The raw token for `tenant`'s forge (GitHub API); undefined without a forge. */
  forgeToken(tenant: string): string | undefined;
}

/** Reads a reference `env:VAR` / `file:/path`; throws naming the reference (never a value). */
export function readSecretRef(
  ref: string,
  env: NodeJS.ProcessEnv,
  opts: { multiline?: boolean } = {},
): string {
  const m = /^(env|file):(.+)$/.exec(ref);
  if (!m) throw new Error(`${ref.split(':')[0] ?? ''} is not env:VAR or file:/path`);
  const [, kind, target = ''] = m;
  let value: string | undefined;
  if (kind === 'env') value = env[target];
  else {
    try {
      value = readFileSync(target, 'utf8').replace(/\r?\n$/, '');
    } catch {
      value = undefined;
    }
  }
  if (
    value === undefined ||
    value === '' ||
    value.includes('\0') ||
    (!opts.multiline && /[\r\n]/.test(value))
  )
    throw new Error(
      `the reference ${kind}:${target} is unset, unreadable or ${opts.multiline ? 'has a NUL byte' : 'not one line'}`,
    );
  return value;
}

/** The `Authorization` header value for a credential with its token. */
export function authorizationHeader(cred: RepoCredential, token: string): string {
  return cred.scheme === 'bearer'
    ? `Bearer ${token}`
    : `Basic ${Buffer.from(`${cred.username}:${token}`).toString('base64')}`;
}

/**
 * Git settings for a remote, as environment entries (git ≥ 2.31 reads `GIT_CONFIG_COUNT`). No
 * redirects (the header must not follow one to another host) and a low-speed bound so a stalled
 * transfer ends; the header only when the tenant has a credential for the URL.
 */
export function remoteGitEnv(header: string | undefined): Record<string, string> {
  const entries: [string, string][] = [
    ['http.followRedirects', 'false'],
    ['http.lowSpeedLimit', '1000'],
    ['http.lowSpeedTime', '30'],
  ];
  if (header !== undefined) entries.push(['http.extraHeader', `Authorization: ${header}`]);
  const env: Record<string, string> = { GIT_CONFIG_COUNT: String(entries.length) };
  entries.forEach(([k, v], i) => {
    env[`GIT_CONFIG_KEY_${i}`] = k;
    env[`GIT_CONFIG_VALUE_${i}`] = v;
  });
  return env;
}

/** A GitHub App installation token could not be minted: the host refuses the credential. */
export class AuthMintError extends Error {
  override readonly name = 'AuthMintError';
}

type GithubApp = NonNullable<RepoCredential['githubApp']>;

/** A GitHub App JWT (RS256, 9 minutes, `iat` 60 s back for clock drift), signed with its private key. */
export function githubAppJwt(appId: string | number, privateKeyPem: string, nowSeconds: number): string {
  const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${b64({ alg: 'RS256', typ: 'JWT' })}.${b64({ iat: nowSeconds - 60, exp: nowSeconds + 540, iss: String(appId) })}`;
  const signature = createSign('RSA-SHA256').update(input).sign(privateKeyPem).toString('base64url');
  return `${input}.${signature}`;
}

/**
 * Installation tokens of GitHub Apps, minted on demand and cached until 5 minutes before they
 * expire (GitHub's last an hour). Neither the key nor a token is ever logged.
 */
function appTokenCache(env: NodeJS.ProcessEnv, fetchImpl: typeof fetch) {
  const cache = new Map<string, { token: string; expiresAt: number }>();
  return async (app: GithubApp): Promise<string> => {
    const key = `${app.api}\0${String(app.appId)}\0${app.installationId}`;
    const hit = cache.get(key);
    if (hit && hit.expiresAt - 5 * 60_000 > Date.now()) return hit.token;
    const jwt = githubAppJwt(
      app.appId,
      readSecretRef(app.privateKey, env, { multiline: true }),
      Math.floor(Date.now() / 1000),
    );
    let res: Response;
    try {
      res = await fetchImpl(
        `${app.api.replace(/\/+$/, '')}/app/installations/${app.installationId}/access_tokens`,
        {
          method: 'POST',
          headers: {
            accept: 'application/vnd.github+json',
            authorization: `Bearer ${jwt}`,
            'x-github-api-version': '2022-11-28',
            'user-agent': 'choiros-orchestrator',
          },
          redirect: 'error',
          signal: AbortSignal.timeout(30_000),
        },
      );
    } catch (err) {
      throw new AuthMintError(
        `the GitHub App token endpoint could not be reached (${err instanceof Error ? err.name : 'error'})`,
      );
    }
    if (res.status !== 201) throw new AuthMintError(`the GitHub App token endpoint answered ${res.status}`);
    const body = (await res.json()) as { token?: unknown; expires_at?: unknown };
    if (typeof body.token !== 'string' || body.token === '')
      throw new AuthMintError('the GitHub App token endpoint gave no token');
    const expiresAt = typeof body.expires_at === 'string' ? Date.parse(body.expires_at) : NaN;
    cache.set(key, {
      token: body.token,
      expiresAt: Number.isFinite(expiresAt) ? expiresAt : Date.now() + 10 * 60_000,
    });
    return body.token;
  };
}

/**
 * Builds the worker's credential source from the tenants file. Every reference is read once now,
 * so a missing one stops the worker at start (naming `tenants.<t>.credentials[i]`), and again at
 * each use.
 */
export function createRemoteCredentials(
  config: TenantsConfig,
  env: NodeJS.ProcessEnv,
  source = 'the tenants file',
  fetchImpl: typeof fetch = fetch,
): RemoteCredentials {
  const appToken = appTokenCache(env, fetchImpl);
  for (const [tenant, t] of Object.entries(config.tenants)) {
    (t.credentials ?? []).forEach((c, i) => {
      const [key, ref] = c.githubApp
        ? ['githubApp.privateKey', c.githubApp.privateKey]
        : ['token', c.token ?? ''];
      try {
        readSecretRef(ref, env, { multiline: c.githubApp !== undefined });
      } catch (err) {
        throw new Error(
          `${source}: tenants.${tenant}.credentials[${i}].${key}: ${err instanceof Error ? err.message : String(err)}`,
        );
      }
    });
    if (t.forge) {
      try {
        readSecretRef(t.forge.token, env);
      } catch (err) {
        throw new Error(
          `${source}: tenants.${tenant}.forge.token: ${err instanceof Error ? err.message : String(err)}`,
        );
      }
    }
  }
  return {
    async gitAuth(tenant, url) {
      const cred = credentialFor(config, tenant, url);
      let header: string | undefined;
      if (cred?.githubApp)
        header = `Basic ${Buffer.from(`x-access-token:${await appToken(cred.githubApp)}`).toString('base64')}`;
      else if (cred?.token) header = authorizationHeader(cred, readSecretRef(cred.token, env));
      return { env: remoteGitEnv(header), configured: cred !== undefined };
    },
    forgeToken(tenant) {
      const t = Object.prototype.hasOwnProperty.call(config.tenants, tenant)
        ? config.tenants[tenant]
        : undefined;
      return t?.forge ? readSecretRef(t.forge.token, env) : undefined;
    },
  };
}
