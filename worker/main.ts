/** Worker process entrypoint: connects to Temporal, NATS and Docker, runs until SIGTERM/SIGINT, then drains. */
import { readFile } from 'node:fs/promises';
import { NativeConnection } from '@temporalio/worker';
import Docker from 'dockerode';
import { connect, credsAuthenticator, type NatsConnection } from 'nats';
import pino from 'pino';
import { loadWorkerConfig } from './config';
import { createWorkerSet } from './workers';
import { startTracing, traceLogFields } from '../telemetry/tracing';

async function main(): Promise<void> {
  const config = loadWorkerConfig(process.env);
  const logger = pino({
    level: config.LOG_LEVEL,
    base: { service: 'choiros-worker', host: config.CHOIROS_HOST_ID },
    mixin: traceLogFields,
  });
  const tracing = startTracing({
    serviceName: 'choiros-worker',
    serviceVersion: config.CHOIROS_BUILD_ID,
    config,
    logger,
  });
  let connection: NativeConnection | undefined;
  let nats: NatsConnection | undefined;
  try {
    connection = await NativeConnection.connect({ address: config.TEMPORAL_ADDRESS });
    nats = await connect({
      servers: config.NATS_URL.split(','),
      name: `choiros-worker-${config.CHOIROS_HOST_ID}`,
      authenticator: config.NATS_CREDS ? credsAuthenticator(await readFile(config.NATS_CREDS)) : undefined,
      maxReconnectAttempts: -1,
    });
    const docker = new Docker();
    await docker.ping().catch((err: unknown) => {
      throw new Error(`Docker engine not reachable: ${err instanceof Error ? err.message : String(err)}`);
    });
    const set = await createWorkerSet({ config, connection, nats, docker, logger, tracing });
    const stop = (signal: string): void => {
      logger.info({ event: 'worker.shutdown', signal }, 'shutting down: finishing in-flight tasks');
      set.shutdown();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    logger.info(
      { event: 'worker.started', temporal: config.TEMPORAL_ADDRESS, nats: config.NATS_URL },
      'worker running',
    );
    await set.run();
    logger.info({ event: 'worker.stopped' }, 'worker stopped');
  } finally {
    await nats?.drain().catch(() => undefined);
    await connection?.close().catch(() => undefined);
    await tracing?.shutdown();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`worker: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
