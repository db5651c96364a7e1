/**
 * Credentials of remote repository hosts (decision 0019): the tenants file names them by reference
 * (`env:VAR`, `file:/path`); this module reads the reference when host-side git needs it (so a
 * rotated file applies to the next fetch or push) and hands git an `Authorization` header through
 * its environment (`GIT_CONFIG_COUNT`/`KEY`/`VALUE`), never through argv, a file in a worktree, a
 * log line, an event or a workflow payload.
 */
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
  /** The git environment for `tenant`'s fetches and pushes of `url`. Throws when a reference is unreadable. */
  gitAuth(tenant: string, url: string): RemoteGitAuth;
  /** The raw token for `tenant`'s forge (GitHub API); undefined without a forge. */
  forgeToken(tenant: string): string | undefined;
}

/** Reads a reference `env:VAR` / `file:/path`; throws naming the reference (never a value). */
export function readSecretRef(ref: string, env: NodeJS.ProcessEnv): string {
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
  if (value === undefined || value === '' || /[\0\r\n]/.test(value))
    throw new Error(`the reference ${kind}:${target} is unset, unreadable or not one line`);
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

/**
 * Builds the worker's credential source from the tenants file. Every reference is read once now,
 * so a missing one stops the worker at start (naming `tenants.<t>.credentials[i]`), and again at
 * each use.
 */
export function createRemoteCredentials(
  config: TenantsConfig,
  env: NodeJS.ProcessEnv,
  source = 'the tenants file',
): RemoteCredentials {
  for (const [tenant, t] of Object.entries(config.tenants)) {
    (t.credentials ?? []).forEach((c, i) => {
      try {
        readSecretRef(c.token, env);
      } catch (err) {
        throw new Error(
          `${source}: tenants.${tenant}.credentials[${i}].token: ${err instanceof Error ? err.message : String(err)}`,
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
    gitAuth(tenant, url) {
      const cred = credentialFor(config, tenant, url);
      const header = cred ? authorizationHeader(cred, readSecretRef(cred.token, env)) : undefined;
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
