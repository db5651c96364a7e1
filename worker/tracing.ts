/**
 * Worker tracing: Temporal's OpenTelemetry interceptors. Workflow spans (RunWorkflow, StartActivity,
 * StartChildWorkflow, HandleSignal...) are made inside the workflow sandbox and leave it through the
 * `exporter` sink; activity spans (RunActivity) continue the context the workflow put in the activity's
 * headers, so a run's activities are children of the API request that started it.
 *
 * The workflow interceptor modules are part of every workflow bundle, tracing on or off, so the
 * workflow code (and what replay sees) never depends on a tracing setting; with tracing off their
 * spans go to a no-op sink. Tasks first run before the interceptors existed replay without them
 * (workflows/lib/tracing-interceptors.ts).
 */
import type { Tracer } from '@opentelemetry/api';
import { NoopSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { Resource } from '@opentelemetry/resources';
import type { ClientInterceptors } from '@temporalio/client';
import { OpenTelemetryWorkflowClientInterceptor } from '@temporalio/interceptors-opentelemetry/lib/client';
import {
  OpenTelemetryActivityInboundInterceptor,
  OpenTelemetryActivityOutboundInterceptor,
  makeWorkflowExporter,
} from '@temporalio/interceptors-opentelemetry/lib/worker';
import type { InjectedSinks, WorkerInterceptors } from '@temporalio/worker';
import type { OpenTelemetrySinks } from '@temporalio/interceptors-opentelemetry/lib/workflow/definitions';
import type { Tracing } from '../telemetry/tracing';

/**
 * Workflow interceptor modules: give them to bundleWorkflowCode (or Worker.create's interceptors).
 * Temporal's OpenTelemetry workflow interceptors, off for tasks recorded without them (see the module).
 */
export const WORKFLOW_INTERCEPTOR_MODULES: string[] = [
  require.resolve('../workflows/lib/tracing-interceptors'),
];

/** The worker options tracing adds to a worker that runs workflows. */
export function workflowTracingOptions(tracing: Tracing | undefined): {
  sinks: InjectedSinks<OpenTelemetrySinks>;
} {
  const processor: SpanProcessor = tracing?.processor ?? new NoopSpanProcessor();
  return { sinks: { exporter: makeWorkflowExporter(processor, tracing?.resource ?? Resource.empty()) } };
}

/**
 * Interceptors for every worker: RunActivity spans (and trace ids on the SDK's activity log
 * attributes), and client spans for the activities' own Temporal calls (the admission gate's).
 * Empty when tracing is off.
 */
export function activityTracingInterceptors(
  tracing: Tracing | undefined,
): Pick<WorkerInterceptors, 'activity' | 'client'> {
  if (!tracing) return {};
  const tracer: Tracer = tracing.tracer;
  const client: ClientInterceptors = { workflow: [new OpenTelemetryWorkflowClientInterceptor({ tracer })] };
  return {
    client,
    activity: [
      (ctx) => ({
        inbound: new OpenTelemetryActivityInboundInterceptor(ctx, { tracer }),
        outbound: new OpenTelemetryActivityOutboundInterceptor(ctx),
      }),
    ],
  };
}
