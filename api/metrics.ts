/** Prometheus metrics of the gateway (`GET /metrics`). */
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface ApiMetrics {
  registry: Registry;
  requests: Counter<'method' | 'route' | 'status'>;
  duration: Histogram<'method' | 'route' | 'status'>;
  runStarts: Counter<'mood'>;
  authFailures: Counter<'code'>;
  rateLimited: Counter;
}

export function createApiMetrics(opts: { defaultMetrics?: boolean } = {}): ApiMetrics {
  const registry = new Registry();
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'choiros_api_' });
  return {
    registry,
    requests: new Counter({
      name: 'choiros_api_requests_total',
      help: 'HTTP requests by method, route template and status',
      labelNames: ['method', 'route', 'status'],
      registers: [registry],
    }),
    duration: new Histogram({
      name: 'choiros_api_request_duration_seconds',
      help: 'HTTP request duration by method, route template and status',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    authFailures: new Counter({
      name: 'choiros_api_auth_failures_total',
      help: 'Requests refused by authentication or authorisation, by error code',
      labelNames: ['code'],
      registers: [registry],
    }),
    runStarts: new Counter({
      name: 'choiros_api_run_starts_total',
      help: 'Runs started through POST /v1/runs (201), by mood; an idempotent repeat counts again',
      labelNames: ['mood'],
      registers: [registry],
    }),
    rateLimited: new Counter({
      name: 'choiros_api_rate_limited_total',
      help: 'Requests refused with 429',
      registers: [registry],
    }),
  };
}
