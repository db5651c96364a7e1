/**
 * The workflow bundle every worker runs: `workflows/` plus the workflow interceptor modules
 * (worker/tracing.ts), tracing on or off. Workers, test workers, the replay test and the fault suite
 * all run this one bundle, so what replays and what is tested is what production runs.
 */
import { bundleWorkflowCode, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { WORKFLOW_INTERCEPTOR_MODULES } from './tracing';

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, log() {} };

export function bundleWorkflows(): Promise<WorkflowBundleWithSourceMap> {
  return bundleWorkflowCode({
    workflowsPath: require.resolve('../workflows'),
    workflowInterceptorModules: WORKFLOW_INTERCEPTOR_MODULES,
    logger: quiet,
  });
}
