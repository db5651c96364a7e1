/**
 * API tracing: a SERVER span per HTTP request and per gRPC call (the parent of every Temporal client
 * call the request makes), and the Temporal client interceptor that carries the trace context into
 * workflow headers. The provider itself is started in main.ts (telemetry/tracing.ts).
 */
import type { Metadata } from '@grpc/grpc-js';
import {
  SpanKind,
  SpanStatusCode,
  context,
  propagation,
  trace,
  type Context,
  type Tracer,
} from '@opentelemetry/api';
import type { ClientInterceptors } from '@temporalio/client';
import { OpenTelemetryWorkflowClientInterceptor } from '@temporalio/interceptors-opentelemetry/lib/client';
import type { NextFunction, Request, RequestHandler, Response } from 'express';

/** The route template a request matched (`/v1/runs/:runId`), never the raw path; undefined when none matched. */
export function routeTemplate(req: Request): string | undefined {
  return req.route ? `${req.baseUrl}${String((req.route as { path: string }).path)}` : undefined;
}

/**
 * Express middleware (mount first): one SERVER span per request, continuing a `traceparent` the
 * caller sent, named `<METHOD> <route template>` once routing is done, with the status code and the
 * run id the handler recorded in `res.locals.runId`. 5xx answers mark the span as an error.
 */
export function httpServerSpans(tracer: Tracer): RequestHandler {
  return (req: Request, res: Response, next: NextFunction): void => {
    const parent = propagation.extract(context.active(), req.headers);
    const span = tracer.startSpan(
      req.method,
      {
        kind: SpanKind.SERVER,
        attributes: { 'http.request.method': req.method, 'url.path': req.path, 'url.scheme': 'http' },
      },
      parent,
    );
    let ended = false;
    const end = (): void => {
      if (ended) return;
      ended = true;
      const route = routeTemplate(req);
      if (route) {
        span.updateName(`${req.method} ${route}`);
        span.setAttribute('http.route', route);
      }
      span.setAttribute('http.response.status_code', res.statusCode);
      const runId = res.locals.runId as unknown;
      if (typeof runId === 'string') span.setAttribute('choiros.run_id', runId);
      const requestId = res.locals.requestId as unknown;
      if (typeof requestId === 'string') span.setAttribute('choiros.request_id', requestId);
      if (res.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      if (!res.writableFinished) span.setAttribute('choiros.aborted', true);
      span.end();
    };
    res.once('finish', end);
    res.once('close', end);
    context.with(trace.setSpan(parent, span), next);
  };
}

/** A started gRPC SERVER span: run the handler in `ctx`, then `end` it with the call's gRPC status. */
export interface RpcSpan {
  ctx: Context;
  end(grpcStatus: number): void;
}

/** Starts the SERVER span of one gRPC call of choiros.v1.Runs, continuing a `traceparent` in its metadata. */
export function startRpcSpan(tracer: Tracer, method: string, metadata: Metadata): RpcSpan {
  const carrier: Record<string, string> = {};
  for (const [k, v] of Object.entries(metadata.getMap())) if (typeof v === 'string') carrier[k] = v;
  const parent = propagation.extract(context.active(), carrier);
  const span = tracer.startSpan(
    `choiros.v1.Runs/${method}`,
    {
      kind: SpanKind.SERVER,
      attributes: { 'rpc.system': 'grpc', 'rpc.service': 'choiros.v1.Runs', 'rpc.method': method },
    },
    parent,
  );
  return {
    ctx: trace.setSpan(parent, span),
    end(grpcStatus) {
      span.setAttribute('rpc.grpc.status_code', grpcStatus);
      // INTERNAL, UNAVAILABLE, UNKNOWN, DEADLINE_EXCEEDED: the server's failures, not the caller's.
      if ([2, 4, 13, 14].includes(grpcStatus)) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    },
  };
}

/** Temporal client interceptors: StartWorkflow/Query/Signal/... spans, trace context in workflow headers. */
export function temporalClientTracing(tracer: Tracer): ClientInterceptors {
  return { workflow: [new OpenTelemetryWorkflowClientInterceptor({ tracer })] };
}
