/**
 * The local dev OIDC issuer: an ES256 key kept in the data dir, an HTTP endpoint serving discovery
 * and JWKS, and token minting. Used only by `npm start` and tests, so the real verification path
 * (jose against a JWKS over HTTP) runs locally too.
 */
import { createServer, type Server } from 'node:http';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { SignJWT, exportJWK, generateKeyPair, importJWK, type JWK, type KeyLike } from 'jose';

export const DEV_ALG = 'ES256';
export const DEV_AUDIENCE = 'choiros-api';
export const DEFAULT_DEV_SCOPES = 'runs:write runs:read rebuild:write rebuild:approve';

export interface DevIssuerKey {
  kid: string;
  privateKey: KeyLike | Uint8Array;
  publicJwk: JWK;
}

/** What `npm run token` needs to mint tokens for the running dev issuer. */
export interface DevIssuerInfo {
  issuer: string;
  audience: string;
}

export async function loadOrCreateDevKey(dir: string): Promise<DevIssuerKey> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file = join(dir, 'signing-key.json');
  let jwk: JWK;
  try {
    jwk = JSON.parse(await readFile(file, 'utf8')) as JWK;
  } catch {
    const { privateKey } = await generateKeyPair(DEV_ALG, { extractable: true });
    jwk = { ...(await exportJWK(privateKey)), kid: randomUUID(), alg: DEV_ALG, use: 'sig' };
    await writeFile(file, JSON.stringify(jwk), { mode: 0o600 });
  }
  const { d: _d, ...publicJwk } = jwk;
  void _d;
  return { kid: jwk.kid ?? 'dev', privateKey: await importJWK(jwk, DEV_ALG), publicJwk };
}

export async function writeDevIssuerInfo(dir: string, info: DevIssuerInfo): Promise<void> {
  await writeFile(join(dir, 'issuer.json'), JSON.stringify(info, null, 2), { mode: 0o600 });
}

export async function readDevIssuerInfo(dir: string): Promise<DevIssuerInfo> {
  return JSON.parse(await readFile(join(dir, 'issuer.json'), 'utf8')) as DevIssuerInfo;
}

/** Serves `/.well-known/openid-configuration` and `/.well-known/jwks.json` on host:port. */
export async function serveDevIssuer(opts: { key: DevIssuerKey; host: string; port: number }): Promise<{
  issuer: string;
  jwksUrl: string;
  server: Server;
  close: () => Promise<void>;
}> {
  let issuer = '';
  let jwksUrl = '';
  const server = createServer((req, res) => {
    const send = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'max-age=60' });
      res.end(JSON.stringify(body));
    };
    if (req.method !== 'GET') return send(405, { error: 'method not allowed' });
    if (req.url === '/.well-known/openid-configuration') {
      return send(200, { issuer, jwks_uri: jwksUrl, id_token_signing_alg_values_supported: [DEV_ALG] });
    }
    if (req.url === '/.well-known/jwks.json')
      return send(200, { keys: [{ ...opts.key.publicJwk, kid: opts.key.kid }] });
    return send(404, { error: 'not found' });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  // Port 0 picks a free port; the issuer URL names the real one.
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : opts.port;
  issuer = `http://${opts.host}:${port}`;
  jwksUrl = `${issuer}/.well-known/jwks.json`;
  return {
    issuer,
    jwksUrl,
    server,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

export interface DevTokenClaims {
  sub: string;
  tenant?: string;
  scope?: string;
  ttlSeconds?: number;
}

/** Signs an access token as the dev issuer would. */
export async function mintDevToken(
  key: DevIssuerKey,
  info: DevIssuerInfo,
  claims: DevTokenClaims,
): Promise<string> {
  const jwt = new SignJWT({
    scope: claims.scope ?? DEFAULT_DEV_SCOPES,
    ...(claims.tenant ? { tenant: claims.tenant } : {}),
  })
    .setProtectedHeader({ alg: DEV_ALG, kid: key.kid, typ: 'JWT' })
    .setIssuer(info.issuer)
    .setAudience(info.audience)
    .setSubject(claims.sub)
    .setJti(randomUUID())
    .setIssuedAt()
    .setExpirationTime(`${claims.ttlSeconds ?? 3600}s`);
  return jwt.sign(key.privateKey);
}
