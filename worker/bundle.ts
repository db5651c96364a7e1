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

export function bundleWorkflows(): Promise<WorkflowBundleWithSourceMap> {
  return bundleWorkflowCode({
    workflowsPath: require.resolve('../workflows'),
    workflowInterceptorModules: WORKFLOW_INTERCEPTOR_MODULES,
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
