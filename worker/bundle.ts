/**
 * The workflow bundle every worker runs: `workflows/` plus the workflow interceptor modules
 * (worker/tracing.ts), tracing on or off. Workers, test workers, the replay test and the fault suite
 * all run this one bundle, so what replays and what is tested is what production runs.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundleWorkflowCode, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { z } from 'zod';
import { WORKFLOW_INTERCEPTOR_MODULES } from './tracing';

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, log() {} };

/**
 * Modules evaluated once per workflow context and shared by every workflow in it (the SDK's
 * reusable V8 context deep-freezes them). Without this each workflow evaluates its own copy of
 * the contracts and what they import (zod, yaml): measured ~6 MiB and ~100 ms of workflow-thread
 * CPU per run (issue 17, docs/benchmarks.md). Only stateless modules belong here: contracts holds
 * schemas, constants and pure functions, and nothing in it keeps per-workflow state.
 */
export const SHARED_WORKFLOW_MODULES = [require.resolve('../contracts')];

export function bundleWorkflows(): Promise<WorkflowBundleWithSourceMap> {
  return bundleWorkflowCode({
    workflowsPath: require.resolve('../workflows'),
    workflowInterceptorModules: WORKFLOW_INTERCEPTOR_MODULES,
    preloadModules: SHARED_WORKFLOW_MODULES,
    logger: quiet,
  });
}

const bundleFileSchema = z.object({ code: z.string().min(1), sourceMap: z.string() });

/**
 * The same bundle, made by a short-lived child process (worker/bundle-child.ts): webpack grows a
 * process by ~200 MiB that V8 never hands back, so the long-lived worker does not bundle itself
 * (issue 17, "Memory"). The child runs with this process's Node flags (the tsx loader).
 */
export async function bundleWorkflowsInChild(timeoutMs = 180_000): Promise<WorkflowBundleWithSourceMap> {
  const dir = await mkdtemp(join(tmpdir(), 'choiros-bundle-'));
  const out = join(dir, 'bundle.json');
  try {
    await new Promise<void>((resolve, reject) => {
      execFile(
        process.execPath,
        [...process.execArgv, require.resolve('./bundle-child'), out],
        { timeout: timeoutMs, maxBuffer: 1024 * 1024 },
        (err, _stdout, stderr) => {
          if (err) reject(new Error(`bundling the workflows failed: ${stderr.trim() || err.message}`));
          else resolve();
        },
      );
    });
    return bundleFileSchema.parse(JSON.parse(await readFile(out, 'utf8')));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
