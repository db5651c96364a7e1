/**
 * Gateway benchmark (`npm run bench:gateway`), loopback only, bounded:
 *  1. requests/s and p50/p99 of `GET /v1/runs/:id` through the full app with real JWT verification
 *     vs the same app whose token verifier is replaced for this benchmark only by one that accepts
 *     without checking (the product has no such switch); blocks alternate A/B/A/B in one run;
 *  2. token verifications/s through the gateway's verifier for RS256 and ES256.
 * The run service is an in-memory fake: this measures the gateway, not Temporal.
 */
import { Agent, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import pino from 'pino';
import type { Principal } from '../contracts';
import { createApp } from '../api/app';
import { createTokenVerifier, type TokenVerifier } from '../api/auth/token-verifier';
import { emptyEventSource, fakeRunService, oneVerifierCatalog } from '../test/helpers/fakes';
import { TestIssuer, makeKey } from '../test/helpers/jwks-server';
import { pct } from './util';

const REQUESTS_PER_BLOCK = Number(process.env.BENCH_REQUESTS ?? 4000);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 16);
const VERIFICATIONS = Number(process.env.BENCH_VERIFICATIONS ?? 3000);

const runs = fakeRunService({ owner: null });

async function serve(
  verifyToken: TokenVerifier | ((t: string) => Promise<Principal>),
): Promise<{ url: string; close: () => void }> {
  const app = createApp({
    verifyToken: verifyToken,
    runs,
    verifiers: oneVerifierCatalog(),
    readiness: [],
    events: emptyEventSource,
    logger: pino({ level: 'silent' }),
  });
  const server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => server.close() };
}

async function load(url: string, token: string): Promise<{ rps: number; lat: number[] }> {
  const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  const lat: number[] = [];
  let next = 0;
  const one = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const t0 = performance.now();
      const req = request(
        `${url}/v1/runs/run-abc`,
        { agent, headers: { authorization: `Bearer ${token}` } },
        (res) => {
          res.resume();
          res.on('end', () => {
            if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
            lat.push(performance.now() - t0);
            resolve();
          });
        },
      );
      req.on('error', reject);
      req.end();
    });
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < REQUESTS_PER_BLOCK) {
        next += 1;
        await one();
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  agent.destroy();
  return { rps: REQUESTS_PER_BLOCK / seconds, lat };
}

async function main(): Promise<void> {
  const issuer = await new TestIssuer().start();
  const es = await makeKey('ES256');
  const rs = await makeKey('RS256');
  issuer.published = [es, rs];
  const verifier = createTokenVerifier({
    issuers: [{ issuer: issuer.url, audience: 'choiros-api' }],
    algorithms: ['ES256', 'RS256'],
    clockToleranceSeconds: 5,
    tenantClaim: 'tenant',
    defaultTenant: 'default',
  });
  const principal: Principal = { userId: 'alice', tenant: 'acme', scopes: ['runs:read', 'runs:write'] };
  const withAuth = await serve(verifier);
  const withoutAuth = await serve(() => Promise.resolve(principal));
  const token = await issuer.sign(es);

  await load(withAuth.url, token); // warm-up both paths
  await load(withoutAuth.url, token);
  const a: { rps: number; lat: number[] }[] = [];
  const b: { rps: number; lat: number[] }[] = [];
  for (let i = 0; i < 2; i++) {
    a.push(await load(withAuth.url, token));
    b.push(await load(withoutAuth.url, token));
  }
  const sum = (xs: { rps: number; lat: number[] }[]) => ({
    rps: xs.reduce((s, x) => s + x.rps, 0) / xs.length,
    lat: xs.flatMap((x) => x.lat),
  });
  const A = sum(a);
  const B = sum(b);
  const f = (n: number): string => n.toFixed(2);
  console.log(
    `GET /v1/runs/:id, ${REQUESTS_PER_BLOCK} requests x 2 blocks each, concurrency ${CONCURRENCY}, alternating`,
  );
  console.log(
    `  with JWT verification (ES256)  ${Math.round(A.rps)} req/s  p50 ${f(pct(A.lat, 50))} ms  p99 ${f(pct(A.lat, 99))} ms`,
  );
  console.log(
    `  verification stubbed (bench)   ${Math.round(B.rps)} req/s  p50 ${f(pct(B.lat, 50))} ms  p99 ${f(pct(B.lat, 99))} ms`,
  );
  console.log(
    `  ratio auth/no-auth: throughput ${f(A.rps / B.rps)}x, p50 ${f(pct(A.lat, 50) / pct(B.lat, 50))}x`,
  );

  for (const [name, key] of [
    ['RS256', rs],
    ['ES256', es],
  ] as const) {
    const t = await issuer.sign(key);
    await verifier(t);
    const t0 = performance.now();
    for (let i = 0; i < VERIFICATIONS; i++) await verifier(t);
    console.log(
      `  token verifications (${name}): ${Math.round(VERIFICATIONS / ((performance.now() - t0) / 1000))}/s`,
    );
  }
  withAuth.close();
  withoutAuth.close();
  await issuer.stop();
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
