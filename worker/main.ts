/** Worker process entrypoint: connects to Temporal, NATS and Docker, runs until SIGTERM/SIGINT, then drains. */
import pino from 'pino';
import { traceLogFields } from '../telemetry/tracing';
import { loadWorkerConfig } from './config';
import { runWorkerProcess } from './process';

async function main(): Promise<void> {
  const config = loadWorkerConfig(process.env);
  const logger = pino({
    level: config.LOG_LEVEL,
    base: { service: 'choiros-worker', host: config.CHOIROS_HOST_ID },
    mixin: traceLogFields,
  });
  await runWorkerProcess({ config, logger });
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`worker: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
