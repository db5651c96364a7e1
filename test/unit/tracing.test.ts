/**
 * Tracing pieces without a collector: when tracing is on, the API's HTTP and gRPC server spans (names
 * from route templates, status codes, run ids, a caller's traceparent continued), and the pino mixin.
 * The integration test (tracing.int.test.ts) covers the whole path through Temporal.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { SpanKind, SpanStatusCode, context, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import pino from 'pino';
import request from 'supertest';
import { z } from 'zod';
import { createApp } from '../../api/app';
import { createGrpcServer, listenGrpc } from '../../api/grpc/server';
import {
  DEV_AUDIENCE,
  loadOrCreateDevKey,
  mintDevToken,
  serveDevIssuer,
  type DevIssuerKey,
} from '../../infra/dev-issuer/issuer';
import { traceLogFields, tracingConfigShape, tracingEnabled } from '../../telemetry/tracing';
import { emptyEventSource, fakeRunService, oneVerifierCatalog, testTokenVerifier } from '../helpers/fakes';
import { grpcCode, runsClient } from '../helpers/grpc-client';

const exporter = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
// Global (this test file's): W3C propagation and AsyncLocalStorage context, as startTracing registers.
provider.register();
const tracer = provider.getTracer('test');
const logger = pino({ level: 'silent' });

let key: DevIssuerKey;
let issuer: Awaited<ReturnType<typeof serveDevIssuer>>;

beforeAll(async () => {
  key = await loadOrCreateDevKey(await mkdtemp(join(tmpdir(), 'choiros-unit-issuer-')));
  issuer = await serveDevIssuer({ key, host: '127.0.0.1', port: 0 });
});

afterAll(async () => {
  await issuer.close();
  await provider.shutdown();
});

beforeEach(() => exporter.reset());

const token = (): Promise<string> =>
  mintDevToken(key, { issuer: issuer.issuer, audience: DEV_AUDIENCE }, { sub: 'alice', tenant: 'acme' });

const finished = (name: string): ReadableSpan[] => exporter.getFinishedSpans().filter((s) => s.name === name);

describe('the tracing switch', () => {
  const parse = (env: Record<string, string>) => z.object(tracingConfigShape).parse(env);

  test.each([
    [{}, false],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }, true],
    [{ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces' }, true],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: '' }, false],
    [{ CHOIROS_TRACING: 'on' }, true],
    [{ CHOIROS_TRACING: 'off', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }, false],
    [{ CHOIROS_TRACING: 'on', OTEL_SDK_DISABLED: 'true' }, false],
    [{ CHOIROS_TRACING: 'on', OTEL_SDK_DISABLED: 'TRUE' }, false],
    [{ CHOIROS_TRACING: 'on', OTEL_SDK_DISABLED: '' }, true],
  ])('when the environment is %j, then tracing on is %s', (env, on) => {
    expect(tracingEnabled(parse(env))).toBe(on);
  });

  test('when an endpoint is not a URL or the switch is unknown, then the config is refused', () => {
    expect(() => parse({ OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' })).toThrow();
    expect(() => parse({ CHOIROS_TRACING: 'yes' })).toThrow();
  });
});

describe('HTTP server spans', () => {
  // The verifier needs the issuer URL, known only after beforeAll.
  let traced: ReturnType<typeof createApp>;
  beforeAll(() => {
    traced = createApp({
      verifyToken: testTokenVerifier(issuer.issuer, { algorithms: ['ES256'] }),
      runs: fakeRunService(),
      verifiers: oneVerifierCatalog(),
      readiness: [],
      events: emptyEventSource,
      logger,
      tracer,
    });
  });

  test('when a run is read, then one SERVER span named by the route template carries the status and the run id', async () => {
    const res = await request(traced)
      .get('/v1/runs/run-abc')
      .set('authorization', `Bearer ${await token()}`);
    expect(res.status).toBe(200);
    const [span, ...more] = finished('GET /v1/runs/:runId');
    expect(more).toHaveLength(0);
    expect(span?.kind).toBe(SpanKind.SERVER);
    expect(span?.attributes).toMatchObject({
      'http.request.method': 'GET',
      'http.route': '/v1/runs/:runId',
      'http.response.status_code': 200,
      'choiros.run_id': 'run-abc',
      'choiros.request_id': res.headers['x-request-id'],
    });
    expect(span?.status.code).toBe(SpanStatusCode.UNSET);
  });

  test('when the caller sends a traceparent, then the request span continues its trace', async () => {
    const traceId = '0af7651916cd43dd8448eb211c80319c';
    await request(traced).get('/healthz').set('traceparent', `00-${traceId}-b7ad6b7169203331-01`);
    const [span] = finished('GET /healthz');
    expect(span?.spanContext().traceId).toBe(traceId);
    expect(span?.parentSpanId).toBe('b7ad6b7169203331');
  });

  test('when no route matches or the request is refused, then the span has the method only or the 4xx status, not an error', async () => {
    await request(traced).get('/no/such/path');
    expect(finished('GET')[0]?.attributes['http.response.status_code']).toBe(404);
    await request(traced).get('/v1/runs/run-abc');
    const refused = exporter
      .getFinishedSpans()
      .find((s) => s.attributes['http.response.status_code'] === 401);
    expect(refused?.status.code).toBe(SpanStatusCode.UNSET);
  });

  test('when a readiness check fails, then the 503 span is an error', async () => {
    const failing = createApp({
      verifyToken: testTokenVerifier(issuer.issuer, { algorithms: ['ES256'] }),
      runs: fakeRunService(),
      verifiers: oneVerifierCatalog(),
      readiness: [{ name: 'temporal', check: () => Promise.reject(new Error('down')) }],
      events: emptyEventSource,
      logger,
      tracer,
    });
    expect((await request(failing).get('/readyz')).status).toBe(503);
    expect(finished('GET /readyz')[0]?.status.code).toBe(SpanStatusCode.ERROR);
  });
});

describe('gRPC server spans', () => {
  test('when a call succeeds or is refused, then its SERVER span carries the gRPC status', async () => {
    const server = createGrpcServer({
      verifyToken: testTokenVerifier(issuer.issuer, { algorithms: ['ES256'] }),
      runs: fakeRunService(),
      events: emptyEventSource,
      verifiers: oneVerifierCatalog(),
      logger,
      tracer,
    });
    const client = runsClient(`127.0.0.1:${await listenGrpc(server, '127.0.0.1', 0)}`);
    try {
      expect((await grpcCode(client.call('GetRun', { run_id: 'run-abc' }, await token())))[0]).toBe(
        grpc.status.OK,
      );
      expect((await grpcCode(client.call('GetRun', { run_id: 'run-abc' })))[0]).toBe(
        grpc.status.UNAUTHENTICATED,
      );
    } finally {
      client.close();
      server.forceShutdown();
    }
    const spans = finished('choiros.v1.Runs/GetRun');
    expect(spans.map((s) => [s.kind, s.attributes['rpc.grpc.status_code'], s.status.code])).toEqual([
      [SpanKind.SERVER, grpc.status.OK, SpanStatusCode.UNSET],
      [SpanKind.SERVER, grpc.status.UNAUTHENTICATED, SpanStatusCode.UNSET],
    ]);
  });
});

describe('trace ids in log lines', () => {
  test('when a span is active, then the mixin gives its trace and span id; otherwise nothing', () => {
    expect(traceLogFields()).toEqual({});
    const span = tracer.startSpan('work');
    const fields = context.with(trace.setSpan(context.active(), span), () => traceLogFields());
    span.end();
    expect(fields).toEqual({ trace_id: span.spanContext().traceId, span_id: span.spanContext().spanId });
  });
});
