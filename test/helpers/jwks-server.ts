/** A controllable OIDC issuer for auth tests: rotating keys, counted JWKS fetches, an on/off switch. */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { SignJWT, exportJWK, generateKeyPair, type JWK, type JWTPayload, type KeyLike } from 'jose';

export interface TestKey {
  kid: string;
  alg: 'ES256' | 'RS256';
  privateKey: KeyLike;
  publicKey: KeyLike;
  publicJwk: JWK;
}

export async function makeKey(alg: 'ES256' | 'RS256' = 'ES256'): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const kid = randomUUID();
  return {
    kid,
    alg,
    privateKey,
    publicKey,
    publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' },
  };
}

export class TestIssuer {
  url = '';
  jwksFetches = 0;
  up = true;
  published: TestKey[] = [];
  private server: Server | undefined;

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      if (!this.up) {
        res.writeHead(503).end();
        return;
      }
      if (req.url === '/.well-known/openid-configuration') {
        res
          .writeHead(200, { 'content-type': 'application/json' })
          .end(JSON.stringify({ issuer: this.url, jwks_uri: `${this.url}/jwks` }));
        return;
      }
      if (req.url === '/jwks') {
        this.jwksFetches += 1;
        res
          .writeHead(200, { 'content-type': 'application/json' })
          .end(JSON.stringify({ keys: this.published.map((k) => k.publicJwk) }));
        return;
      }
      res.writeHead(404).end();
    });
    await new Promise<void>((r) => this.server?.listen(0, '127.0.0.1', () => r()));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  /** Signs a token; `header`/`claims` override the defaults of a valid token. */
  async sign(
    key: TestKey,
    opts: {
      audience?: string;
      claims?: JWTPayload;
      header?: Record<string, unknown>;
      exp?: number | string | null;
      kid?: string | null;
    } = {},
  ): Promise<string> {
    const header: Record<string, unknown> = {
      alg: key.alg,
      typ: 'JWT',
      ...(opts.kid === null ? {} : { kid: opts.kid ?? key.kid }),
      ...opts.header,
    };
    let jwt = new SignJWT({ scope: 'runs:read runs:write', tenant: 'acme', ...opts.claims })
      .setProtectedHeader(header as { alg: string })
      .setIssuer(this.url)
      .setAudience(opts.audience ?? 'choiros-api')
      .setSubject(opts.claims?.sub ?? 'alice')
      .setIssuedAt(opts.claims?.iat);
    if (opts.exp !== null) jwt = jwt.setExpirationTime(opts.exp ?? '10m');
    if (opts.claims?.iss) jwt = jwt.setIssuer(opts.claims.iss);
    if (opts.claims?.nbf) jwt = jwt.setNotBefore(opts.claims.nbf);
    return jwt.sign(key.privateKey);
  }
}
