/**
 * Workflow interceptor module (not a workflow): Temporal's OpenTelemetry workflow interceptors,
 * switched off for workflow tasks first run without them.
 *
 * The OpenTelemetry interceptors wrap handlers and activity calls in async spans, which moves the
 * point at which an update completes or an activity result is seen by a few microtasks. Histories
 * recorded before tracing existed would then replay with their commands in another order (a
 * nondeterminism error, e.g. an update completion before a publishEvents activity). So every call
 * is passed straight through unless the SDK flag the interceptors package itself uses for its newer
 * methods (`OpenTelemetryInterceptorsInstrumentsAllMethods`, no alternative condition) is on: it is
 * on in every task this code runs for the first time and recorded in that task's metadata, and off
 * when replaying a task recorded without it. No command is added either way (decision 0010).
 */
import {
  OpenTelemetryInboundInterceptor,
  OpenTelemetryInternalsInterceptor,
  OpenTelemetryOutboundInterceptor,
} from '@temporalio/interceptors-opentelemetry/lib/workflow';
import type {
  WorkflowInboundCallsInterceptor,
  WorkflowInterceptorsFactory,
  WorkflowOutboundCallsInterceptor,
} from '@temporalio/workflow';
import { SdkFlags } from '@temporalio/workflow/lib/flags';
import { getActivator } from '@temporalio/workflow/lib/global-attributes';

const traced = (): boolean => getActivator().hasFlag(SdkFlags.OpenTelemetryInterceptorsInstrumentsAllMethods);

function inbound(): WorkflowInboundCallsInterceptor {
  const otel = new OpenTelemetryInboundInterceptor();
  return {
    execute: (input, next) => (traced() ? otel.execute(input, next) : next(input)),
    handleSignal: (input, next) => (traced() ? otel.handleSignal(input, next) : next(input)),
    handleUpdate: (input, next) => (traced() ? otel.handleUpdate(input, next) : next(input)),
    validateUpdate: (input, next) => (traced() ? otel.validateUpdate(input, next) : next(input)),
    handleQuery: (input, next) => (traced() ? otel.handleQuery(input, next) : next(input)),
  };
}

function outbound(): WorkflowOutboundCallsInterceptor {
  const otel = new OpenTelemetryOutboundInterceptor();
  return {
    scheduleActivity: (input, next) => (traced() ? otel.scheduleActivity(input, next) : next(input)),
    scheduleLocalActivity: (input, next) =>
      traced() ? otel.scheduleLocalActivity(input, next) : next(input),
    startChildWorkflowExecution: (input, next) =>
      traced() ? otel.startChildWorkflowExecution(input, next) : next(input),
    continueAsNew: (input, next) => (traced() ? otel.continueAsNew(input, next) : next(input)),
    signalWorkflow: (input, next) => (traced() ? otel.signalWorkflow(input, next) : next(input)),
    startNexusOperation: (input, next) => (traced() ? otel.startNexusOperation(input, next) : next(input)),
    // Log attributes only read the active span: no effect on commands.
    getLogAttributes: (input, next) => otel.getLogAttributes(input, next),
  };
}

export const interceptors: WorkflowInterceptorsFactory = () => ({
  inbound: [inbound()],
  outbound: [outbound()],
  internals: [new OpenTelemetryInternalsInterceptor()],
});
