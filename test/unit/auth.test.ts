/**
 * Token verification against a real JWKS over HTTP (loopback): the bad-token table, key
 * rotation without restart, the refetch cooldown under a flood of unknown kids, and cached keys
 * while the JWKS endpoint is down. Driven through the Express app, as clients see it.
 */
import pino from 'pino';
import request from 'supertest';
import { createApp } from '../../api/app';
import { createTokenVerifier, type TokenVerifier } from '../../api/auth/token-verifier';
import { emptyEventSource, fakeRunService, oneVerifierCatalog, testTokenVerifier } from '../helpers/fakes';
import { badTokenCases } from '../helpers/bad-tokens';
import { poll } from '../helpers/poll';
import { TestIssuer, makeKey, type TestKey } from '../helpers/jwks-server';

const logger = pino({ level: 'silent' });
const runs = fakeRunService();

function appFor(verifier: TokenVerifier) {
  return createApp({
    verifyToken: verifier,
    runs,
    verifiers: oneVerifierCatalog(),
    readiness: [],
    events: emptyEventSource,
    logger,
  });
}

function verifierFor(
  issuer: TestIssuer,
  extra: { typ?: string; cooldownMs?: number; onJwksError?: (e: unknown) => void; now?: () => number } = {},
): TokenVerifier {
  return testTokenVerifier(issuer.url, {
    fetchTimeoutMs: 1000,
    ...(extra.now ? { now: extra.now } : {}),
    jwksCooldownMs: extra.cooldownMs ?? 60_000,
    ...(extra.typ ? { typ: extra.typ } : {}),
    ...(extra.onJwksError ? { onJwksError: extra.onJwksError } : {}),
  });
}

const get = (app: ReturnType<typeof appFor>, token: string) =>
  request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${token}`);

let issuer: TestIssuer;
let es: TestKey;
let rs: TestKey;

beforeAll(async () => {
  issuer = await new TestIssuer().start();
  es = await makeKey('ES256');
  rs = await makeKey('RS256');
  issuer.published = [es, rs];
});

afterAll(async () => {
  await issuer.stop();
});

describe('the bad-token table', () => {
  const cases = badTokenCases(() => ({ issuer, es, rs }));

  test.each([
    ['ES256', () => es],
    ['RS256', () => rs],
  ] as const)('when a valid %s token is sent, then 200 (the control)', async (_alg, key) => {
    expect((await get(appFor(verifierFor(issuer)), await issuer.sign(key()))).status).toBe(200);
  });

  test.each(cases)('when the token has %s, then 401 problem+json', async (_name, make) => {
    const res = await get(appFor(verifierFor(issuer)), await make());
    expect(res.status).toBe(401);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(res.body.code).toBe('unauthenticated');
    expect(res.body.detail).toBe('the access token is missing, invalid or expired');
  });

  test('when a typ is configured and the token has another, then 401; with the right typ, 200', async () => {
    const app = appFor(verifierFor(issuer, { typ: 'at+jwt' }));
    expect((await get(app, await issuer.sign(es))).status).toBe(401);
    expect((await get(app, await issuer.sign(es, { header: { typ: 'at+jwt' } }))).status).toBe(200);
  });

  test('when a token has an unknown kid, then the JWKS is refetched exactly once before the 401', async () => {
    let now = 1_000_000;
    const app = appFor(verifierFor(issuer, { cooldownMs: 50, now: () => now }));
    expect((await get(app, await issuer.sign(es))).status).toBe(200);
    now += 60; // past the cooldown of that first fetch
    const before = issuer.jwksFetches;
    expect((await get(app, await issuer.sign(es, { kid: 'unknown-kid' }))).status).toBe(401);
    expect(issuer.jwksFetches - before).toBe(1);
  });
});

describe('key rotation and the JWKS cache', () => {
  test('when the issuer rotates to a new key, then new tokens verify without a restart and the rotated-out key is refused', async () => {
    const local = await new TestIssuer().start();
    const oldKey = await makeKey('ES256');
    local.published = [oldKey];
    let now = 1_000_000;
    const app = appFor(verifierFor(local, { cooldownMs: 50, now: () => now }));
    expect((await get(app, await local.sign(oldKey))).status).toBe(200);
    const newKey = await makeKey('ES256');
    local.published = [newKey];
    now += 60; // past the refetch cooldown
    expect((await get(app, await local.sign(newKey))).status).toBe(200);
    expect((await get(app, await local.sign(oldKey))).status).toBe(401);
    await local.stop();
  });

  test('when a flood of tokens with random kids arrives, then at most one JWKS fetch happens per cooldown', async () => {
    const local = await new TestIssuer().start();
    const key = await makeKey('ES256');
    local.published = [key];
    let now = 1_000_000;
    const app = appFor(verifierFor(local, { cooldownMs: 60_000, now: () => now }));
    expect((await get(app, await local.sign(key))).status).toBe(200);
    const flood = async (): Promise<number[]> =>
      Promise.all(
        Array.from(
          { length: 50 },
          async (_, i) =>
            (await get(app, await local.sign(key, { kid: `random-${i}-${Math.random()}` }))).status,
        ),
      );
    // Inside the cooldown of the first fetch: no fetch at all.
    let before = local.jwksFetches;
    expect(new Set(await flood())).toEqual(new Set([401]));
    expect(local.jwksFetches - before).toBe(0);
    // Once the cooldown has passed: exactly one fetch for the whole flood.
    now += 60_001;
    before = local.jwksFetches;
    expect(new Set(await flood())).toEqual(new Set([401]));
    expect(local.jwksFetches - before).toBe(1);
    await local.stop();
  });

  test('when the JWKS endpoint is down, then tokens signed by cached keys still verify', async () => {
    const local = await new TestIssuer().start();
    const key = await makeKey('RS256');
    local.published = [key];
    const errors: unknown[] = [];
    let now = 1_000_000;
    const app = appFor(
      createTokenVerifier({
        issuers: [{ issuer: local.url, audience: 'choiros-api', jwksUrl: `${local.url}/jwks` }],
        algorithms: ['RS256'],
        clockToleranceSeconds: 5,
        tenantClaim: 'tenant',
        defaultTenant: 'default',
        fetchTimeoutMs: 500,
        jwksCooldownMs: 10,
        jwksMaxAgeMs: 10, // stale at once: a background refresh is attempted and fails
        onJwksError: (e) => errors.push(e),
        now: () => now,
      }),
    );
    expect((await get(app, await local.sign(key))).status).toBe(200);
    local.up = false;
    now += 30;
    for (let i = 0; i < 3; i++) expect((await get(app, await local.sign(key))).status).toBe(200);
    // The background refresh really was attempted, and failed.
    await poll(
      async () => errors.length,
      (n) => n >= 1,
      5000,
      20,
    );
    await local.stop();
  });

  test('when the issuer has never been reachable, then 503 with Retry-After, not 401', async () => {
    const local = await new TestIssuer().start();
    const key = await makeKey('ES256');
    local.up = false;
    const app = appFor(verifierFor(local));
    // Every request of the cooldown, not only the one that tried the fetch.
    for (let i = 0; i < 3; i++) {
      const res = await get(app, await local.sign(key));
      expect(res.status).toBe(503);
      expect(res.headers['retry-after']).toBe('5');
    }
    await local.stop();
  });

  test('when a token names an issuer outside the configured map, then 401 and no fetch to that issuer', async () => {
    const other = await new TestIssuer().start();
    const key = await makeKey('ES256');
    other.published = [key];
    const res = await get(appFor(verifierFor(issuer)), await other.sign(key));
    expect(res.status).toBe(401);
    expect(other.jwksFetches).toBe(0);
    await other.stop();
  });
});
