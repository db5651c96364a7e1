/**
 * OpenTelemetry tracing shared by the api and worker processes: the settings (parsed with each
 * process's config), one tracer provider per process exporting OTLP over HTTP through a batch span
 * processor, and the pino mixin that stamps trace and span ids on log lines.
 */
import {
  DiagLogLevel,
  context,
  diag,
  isSpanContextValid,
  trace,
  type Tracer,
  type DiagLogFunction,
} from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { Resource, envDetectorSync } from '@opentelemetry/resources';
import { BatchSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import type { Logger } from 'pino';
import { z } from 'zod';

const optionalUrl = z.preprocess(
  (v) => (v === '' ? undefined : v),
  z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }).optional(),
);

/**
 * Tracing settings, spread into the api and worker config schemas. The OTLP exporter itself also reads
 * the standard OTEL_EXPORTER_OTLP_* variables (headers, timeout, compression) and the SDK reads
 * OTEL_TRACES_SAMPLER*, OTEL_BSP_* and OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME.
 */
export const tracingConfigShape = {
  CHOIROS_TRACING: z
    .enum(['auto', 'on', 'off'])
    .default('auto')
    .describe(
      '`auto`: on when an OTLP endpoint below is set; `on` (default endpoint `http://localhost:4318`); `off`',
    ),
  OTEL_EXPORTER_OTLP_ENDPOINT: optionalUrl.describe(
    'OTLP/HTTP base URL (http/https) of a collector; traces go to `<url>/v1/traces`',
  ),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: optionalUrl.describe(
    'OTLP/HTTP URL for traces only, used as is; wins over `OTEL_EXPORTER_OTLP_ENDPOINT`',
  ),
  OTEL_SDK_DISABLED: z
    .preprocess(
      (v) => (typeof v === 'string' ? v.trim().toLowerCase() || undefined : v),
      z.enum(['true', 'false']).default('false'),
    )
    .describe('The OpenTelemetry SDK switch: `true` turns tracing off whatever `CHOIROS_TRACING` says'),
};

export type TracingConfig = z.output<z.ZodObject<typeof tracingConfigShape>>;

/** Whether a process with these settings exports traces. */
export function tracingEnabled(config: TracingConfig): boolean {
  if (config.OTEL_SDK_DISABLED === 'true' || config.CHOIROS_TRACING === 'off') return false;
  if (config.CHOIROS_TRACING === 'on') return true;
  return Boolean(config.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? config.OTEL_EXPORTER_OTLP_ENDPOINT);
}

/** A process's tracing: the tracer for its own spans and the processor every span ends in. */
export interface Tracing {
  tracer: Tracer;
  resource: Resource;
  /** The batch processor behind the provider; the worker hands it to the workflow span sink too. */
  processor: SpanProcessor;
  /** Exports buffered spans and stops the exporter; call once, at the end of the SIGTERM drain. */
  shutdown(): Promise<void>;
}

/**
 * Starts tracing for one process when the settings ask for it (undefined otherwise): registers a
 * global provider (W3C trace-context propagation, AsyncLocalStorage context) with resource
 * `service.name` / `service.version`, and routes the SDK's own errors (failed exports) to `logger`.
 */
export function startTracing(opts: {
  serviceName: string;
  serviceVersion: string;
  config: TracingConfig;
  logger: Logger;
}): Tracing | undefined {
  if (!tracingEnabled(opts.config)) return undefined;
  const log = opts.logger.child({ component: 'otel' });
  const warn: DiagLogFunction = (message, ...args) =>
    log.warn({ event: 'otel.diag', detail: args.map((a) => String(a)).join(' ') || undefined }, message);
  const quiet: DiagLogFunction = () => undefined;
  diag.setLogger({ error: warn, warn, info: quiet, debug: quiet, verbose: quiet }, DiagLogLevel.WARN);

  // Ours are the defaults; OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES override or add to them.
  const resource = Resource.default()
    .merge(new Resource({ 'service.name': opts.serviceName, 'service.version': opts.serviceVersion }))
    .merge(envDetectorSync.detect());
  const url = opts.config.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
  const processor = new BatchSpanProcessor(new OTLPTraceExporter(url ? { url } : {}));
  const provider = new NodeTracerProvider({ resource, spanProcessors: [processor] });
  provider.register();
  log.info(
    {
      event: 'otel.started',
      endpoint:
        url ??
        (opts.config.OTEL_EXPORTER_OTLP_ENDPOINT
          ? `${opts.config.OTEL_EXPORTER_OTLP_ENDPOINT.replace(/\/$/, '')}/v1/traces`
          : 'http://localhost:4318/v1/traces'),
    },
    'tracing on: spans are exported over OTLP/HTTP',
  );
  let stopped: Promise<void> | undefined;
  return {
    tracer: provider.getTracer('choiros', opts.serviceVersion),
    resource,
    processor,
    shutdown() {
      stopped ??= provider.shutdown().catch((err: unknown) => {
        log.warn({ event: 'otel.shutdown.error', err }, 'could not flush spans at shutdown');
      });
      return stopped;
    },
  };
}

/**
 * pino `mixin`: `trace_id` and `span_id` of the active span, when there is one (an HTTP request, a
 * gRPC call, an activity), so a log line leads to its trace and back.
 */
export function traceLogFields(): Record<string, string> {
  const span = trace.getSpan(context.active());
  const sc = span?.spanContext();
  return sc && isSpanContextValid(sc) ? { trace_id: sc.traceId, span_id: sc.spanId } : {};
}
