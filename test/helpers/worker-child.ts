/**
 * Test-only worker process: the real worker process (worker/process.ts: metrics, drain on SIGTERM),
 * configured from the environment like worker/main.ts, but running a pre-bundled workflow bundle
 * (CHOIROS_CHILD_BUNDLE, written by the test) so it is ready in seconds. Tests SIGKILL it (a crashed
 * worker) or SIGTERM it (a replaced worker). Prints READY once polling.
 */
import { readFile } from 'node:fs/promises';
import pino from 'pino';
import { traceLogFields } from '../../telemetry/tracing';
import { loadWorkerConfig } from '../../worker/config';
import { runWorkerProcess } from '../../worker/process';

async function main(): Promise<void> {
  const config = loadWorkerConfig(process.env);
  const bundle = process.env.CHOIROS_CHILD_BUNDLE;
  if (!bundle) throw new Error('CHOIROS_CHILD_BUNDLE is not set');
  const logger = pino({
    level: config.LOG_LEVEL,
    base: { buildId: config.CHOIROS_BUILD_ID },
    mixin: traceLogFields,
  });
  await runWorkerProcess({
    config,
    logger,
    workflowBundle: {
      code: await readFile(bundle, 'utf8'),
      sourceMap: await readFile(`${bundle}.map`, 'utf8'),
    },
    onReady: () => process.stdout.write('READY\n'),
  });
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(
      `worker-child: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
