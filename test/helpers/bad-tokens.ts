/** The bad-token table of the gateway issue: each token must be refused (401 / UNAUTHENTICATED). */
import { sign, type KeyObject } from 'node:crypto';
import { SignJWT, base64url } from 'jose';
import type { TestIssuer, TestKey } from './jwks-server';

const now = (): number => Math.floor(Date.now() / 1000);

/** Named token factories; `ctx` is read when a case runs (after beforeAll has made the keys). */
export function badTokenCases(
  ctx: () => { issuer: TestIssuer; es: TestKey; rs: TestKey },
): [string, () => Promise<string>][] {
  const issuer = {
    get url(): string {
      return ctx().issuer.url;
    },
    sign: (...args: Parameters<TestIssuer['sign']>): Promise<string> => ctx().issuer.sign(...args),
  };
  const es = new Proxy({} as TestKey, { get: (_t, k) => ctx().es[k as keyof TestKey] });
  const rs = new Proxy({} as TestKey, { get: (_t, k) => ctx().rs[k as keyof TestKey] });
  return [
    [
      'alg none',
      async () =>
        `${base64url.encode(JSON.stringify({ alg: 'none', kid: es.kid }))}.${base64url.encode(JSON.stringify({ sub: 'alice', iss: issuer.url, aud: 'choiros-api', exp: now() + 600 }))}.`,
    ],
    ['no exp', () => issuer.sign(es, { exp: null })],
    [
      'unknown crit header',
      async () => {
        // jose refuses to sign with an unknown crit, so sign by hand (ES256 = P-256 + SHA-256, IEEE P1363).
        const header = base64url.encode(
          JSON.stringify({ alg: 'ES256', kid: es.kid, crit: ['x-choiros'], 'x-choiros': true }),
        );
        const body = base64url.encode(
          JSON.stringify({
            sub: 'alice',
            tenant: 'acme',
            scope: 'runs:read',
            iss: issuer.url,
            aud: 'choiros-api',
            exp: now() + 600,
          }),
        );
        const sig = sign('sha256', Buffer.from(`${header}.${body}`), {
          key: es.privateKey as KeyObject,
          dsaEncoding: 'ieee-p1363',
        });
        return `${header}.${body}.${base64url.encode(sig)}`;
      },
    ],
    [
      'HS256 signed with the RSA public key',
      async () => {
        const secret = new TextEncoder().encode(JSON.stringify(rs.publicJwk));
        return new SignJWT({ tenant: 'acme', scope: 'runs:read' })
          .setProtectedHeader({ alg: 'HS256', kid: rs.kid })
          .setIssuer(issuer.url)
          .setAudience('choiros-api')
          .setSubject('alice')
          .setExpirationTime('10m')
          .sign(secret);
      },
    ],
    ['expired', () => issuer.sign(es, { exp: now() - 120 })],
    ['nbf in the future beyond tolerance', () => issuer.sign(es, { claims: { nbf: now() + 300 } })],
    ['wrong iss', () => issuer.sign(es, { claims: { iss: 'http://127.0.0.1:1/other' } })],
    ['wrong aud', () => issuer.sign(es, { audience: 'someone-else' })],
    ['missing kid', () => issuer.sign(es, { kid: null })],
    ['unknown kid', () => issuer.sign(es, { kid: 'not-a-published-kid' })],
    [
      'tampered payload',
      async () => {
        const [h, p, s] = (await issuer.sign(es)).split('.');
        const claims = JSON.parse(new TextDecoder().decode(base64url.decode(p!))) as Record<string, unknown>;
        return [h, base64url.encode(JSON.stringify({ ...claims, sub: 'mallory' })), s].join('.');
      },
    ],
    ['malformed base64', async () => 'eyJ!!!.###.$$$'],
    ['oversized token', async () => `${await issuer.sign(es)}${'A'.repeat(9000)}`],
  ];
}
