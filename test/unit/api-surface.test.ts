/**
 * The API's surface: the OpenAPI document matches the routes the app serves (both ways), request
 * bodies never cause a 5xx whatever JSON arrives (property test), rate limits answer 429 with
 * Retry-After, and /metrics exposes the counters.
 */
import fc from 'fast-check';
import pino from 'pino';
import request from 'supertest';
import type { AddressInfo } from 'node:net';
import { AppError, type EventEnvelope } from '../../contracts';
import type { RunEventSource } from '../../api/events/source';
import { createApp } from '../../api/app';
import { createApiMetrics } from '../../api/metrics';
import { documentedRoutes, openApiDocument } from '../../api/openapi';
import { RateLimiter } from '../../api/rate-limit';
import { emptyEventSource, fakeRunService, oneVerifierCatalog, testTokenVerifier } from '../helpers/fakes';
import { TestIssuer, makeKey, type TestKey } from '../helpers/jwks-server';

// Anyone may read run-abc here: these tests are about the surface, not ownership.
const runs = fakeRunService({ owner: null });
let issuer: TestIssuer;
let key: TestKey;

beforeAll(async () => {
  issuer = await new TestIssuer().start();
  key = await makeKey('ES256');
  issuer.published = [key];
});
afterAll(async () => {
  await issuer.stop();
});

function build(extra: { rateLimiter?: RateLimiter; shutdown?: AbortSignal; events?: RunEventSource } = {}) {
  const metrics = createApiMetrics({ defaultMetrics: false });
  const app = createApp({
    verifyToken: testTokenVerifier(issuer.url),
    runs,
    verifiers: oneVerifierCatalog(),
    readiness: [],
    events: extra.events ?? emptyEventSource,
    natsCredentials: {
      servers: ['nats://127.0.0.1:4222'],
      mint: () => Promise.reject(new AppError('service_unavailable', 'n/a')),
    },
    metrics,
    logger: pino({ level: 'silent' }),
    ...extra,
  });
  return { app, metrics };
}

/** Routes the Express app really serves, as `METHOD /path` with `{param}` placeholders. */
function servedRoutes(app: ReturnType<typeof build>['app']): string[] {
  type Layer = { route?: { path: string; methods: Record<string, boolean> }; handle?: { stack?: Layer[] } };
  const stack = (app as unknown as { router: { stack: Layer[] } }).router.stack;
  const fmt = (prefix: string, l: Layer): string[] =>
    l.route
      ? Object.keys(l.route.methods).map(
          (m) => `${m.toUpperCase()} ${prefix}${l.route!.path.replace(/:([A-Za-z]+)/g, '{$1}')}`,
        )
      : [];
  const routers = stack.filter((l) => !l.route && l.handle?.stack);
  expect(routers).toHaveLength(1); // the /v1 router
  return [
    ...stack.flatMap((l) => fmt('', l)),
    ...routers.flatMap((r) => r.handle!.stack!.flatMap((l) => fmt('/v1', l))),
  ].sort();
}

describe('OpenAPI', () => {
  test('when the app is built, then every served route is documented and every documented route is served', () => {
    const { app } = build();
    expect(servedRoutes(app)).toEqual(documentedRoutes().sort());
  });

  test('when /openapi.json is fetched, then it is OpenAPI 3.1 with the run request schema from the validating zod schema', async () => {
    const res = await request(build().app).get('/openapi.json');
    expect(res.status).toBe(200);
    expect(res.body.openapi).toBe('3.1.0');
    const runRequest = res.body.components.schemas.RunRequest;
    expect(runRequest.required).toEqual(expect.arrayContaining(['repo', 'workItem']));
    expect(runRequest.properties.workItem.properties.execute.type).toBe('array');
    expect(res.body).toEqual(JSON.parse(JSON.stringify(openApiDocument())));
  });
});

describe('request bodies', () => {
  test('when any JSON value is posted as a run request, then the answer is never a 5xx', async () => {
    const { app } = build();
    const token = await issuer.sign(key);
    const runLike = fc.record(
      {
        repo: fc.oneof(fc.string(), fc.constant('/srv/repo'), fc.constant('../x'), fc.integer()),
        baseRef: fc.oneof(fc.string(), fc.constant('--upload-pack=x'), fc.constant('main')),
        mood: fc.oneof(fc.string(), fc.constant('CALM')),
        workItem: fc.oneof(
          fc.anything(),
          fc.record({
            description: fc.oneof(fc.string(), fc.anything()),
            execute: fc.oneof(fc.array(fc.string()), fc.string(), fc.anything()),
            requiredVerifiers: fc.oneof(fc.array(fc.constantFrom('V-1', 'V-2', 'a.b')), fc.anything()),
          }),
        ),
      },
      { requiredKeys: [] },
    );
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.jsonValue(), runLike), async (body) => {
        const res = await request(app)
          .post('/v1/runs')
          .set('authorization', `Bearer ${token}`)
          .set('content-type', 'application/json')
          .send(JSON.stringify(body) ?? 'null');
        return res.status < 500;
      }),
      { numRuns: 300, seed: 20261125 },
    );
  });
});

describe('rate limits and metrics', () => {
  test('when a principal exceeds its burst, then 429 problem+json with Retry-After, and other principals are unaffected', async () => {
    let now = 0;
    const { app } = build({ rateLimiter: new RateLimiter({ perMinute: 60, burst: 3, now: () => now }) });
    const alice = await issuer.sign(key);
    const bob = await issuer.sign(key, { claims: { sub: 'bob' } });
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++)
      statuses.push(
        (await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${alice}`)).status,
      );
    expect(statuses).toEqual([200, 200, 200, 429, 429]);
    const limited = await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${alice}`);
    expect(limited.headers['content-type']).toMatch(/problem\+json/);
    expect(limited.body.code).toBe('rate_limited');
    expect(Number(limited.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect((await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${bob}`)).status).toBe(
      200,
    );
    now += 1000; // one token per second comes back
    expect((await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${alice}`)).status).toBe(
      200,
    );
  });

  test('when requests were served, then /metrics shows them by route template and status', async () => {
    const { app } = build();
    await request(app)
      .get('/v1/runs/run-abc')
      .set('authorization', `Bearer ${await issuer.sign(key)}`);
    await request(app).get('/v1/runs/run-abc');
    const res = await request(app).get('/metrics');
    expect(res.status).toBe(200);
    expect(res.text).toMatch(/choiros_api_requests_total\{method="GET",route="[^"]*",status="200"\} 1/);
    expect(res.text).toMatch(/choiros_api_auth_failures_total\{code="401"\} 1/);
    expect(res.text).not.toContain('run-abc');
  });
});

describe('draining (SIGTERM)', () => {
  test('when the process drains, then every request, readiness included, gets 503 with Connection: close and Retry-After', async () => {
    const shutdown = new AbortController();
    const { app } = build({ shutdown: shutdown.signal });
    const auth = `Bearer ${await issuer.sign(key)}`;
    expect((await request(app).get('/readyz')).status).toBe(200);
    expect((await request(app).get('/v1/runs/run-abc').set('authorization', auth)).status).toBe(200);
    shutdown.abort();
    for (const res of [
      await request(app).get('/readyz'),
      await request(app).get('/v1/runs/run-abc').set('authorization', auth),
      await request(app).post('/v1/runs').set('authorization', auth).send({}),
    ]) {
      expect(res.status).toBe(503);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(res.body).toMatchObject({ code: 'service_unavailable', status: 503 });
      expect(res.headers.connection).toBe('close');
      expect(res.headers['retry-after']).toBe('1');
    }
  });

  test('when the process drains, then an open SSE stream ends (the client resumes elsewhere with Last-Event-ID)', async () => {
    const shutdown = new AbortController();
    // A live run with no new events: the stream waits until its signal aborts.
    const waiting: RunEventSource = {
      stream: (_u, _r, _a, signal) => ({
        [Symbol.asyncIterator]: () => ({
          next: () =>
            new Promise<IteratorResult<EventEnvelope>>((resolve) =>
              signal.addEventListener('abort', () => resolve({ done: true, value: undefined }), {
                once: true,
              }),
            ),
        }),
      }),
    };
    const { app } = build({ shutdown: shutdown.signal, events: waiting });
    const server = app.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    try {
      const { port } = server.address() as AddressInfo;
      const res = await fetch(`http://127.0.0.1:${port}/v1/runs/run-abc/events`, {
        headers: { authorization: `Bearer ${await issuer.sign(key)}` },
      });
      expect(res.status).toBe(200);
      const reader = res.body!.getReader();
      const first = new TextDecoder().decode((await reader.read()).value);
      expect(first).toContain(': connected');
      shutdown.abort();
      let rest = '';
      for (;;) {
        const chunk = await reader.read();
        if (chunk.done) break;
        rest += new TextDecoder().decode(chunk.value);
      }
      expect(rest).not.toContain('event: error');
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});
