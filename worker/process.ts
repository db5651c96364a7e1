/**
 * One worker process: installs the SDK runtime (with its Prometheus exporter), connects to Temporal,
 * NATS and Docker, runs the worker set, serves `/metrics`, and on SIGTERM/SIGINT drains: stops
 * polling, lets in-flight activities finish for CHOIROS_SHUTDOWN_GRACE_SECONDS, then hands the rest
 * back to Temporal, flushes NATS and closes every connection. Used by worker/main.ts and by the
 * test worker child (pre-bundled workflows).
 */
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { NativeConnection, Runtime, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import Docker from 'dockerode';
import { connect, credsAuthenticator, type NatsConnection } from 'nats';
import type { Logger } from 'pino';
import { startTracing } from '../telemetry/tracing';
import type { WorkerConfig } from './config';
import { createWorkerMetrics, serveWorkerMetrics, type MetricsServer } from './metrics';
import { bundleWorkflowsInChild } from './bundle';
import { createWorkerSet } from './workers';
import { natsTlsOptions, temporalConnectionSecurity } from '../infra/tls/connections';

/** A free loopback port for the SDK core's exporter (it needs a concrete address). */
async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

export interface WorkerProcessOptions {
  config: WorkerConfig;
  logger: Logger;
  /** Pre-bundled workflow code; bundled from `workflows/` otherwise. */
  workflowBundle?: WorkflowBundleWithSourceMap;
  /** Called once the workers poll and `/metrics` answers. */
  onReady?: (info: { metricsPort?: number }) => void;
}

export async function runWorkerProcess(opts: WorkerProcessOptions): Promise<void> {
  const { config, logger } = opts;
  // Traces (OTLP) when configured; spans still buffered are flushed after the drain.
  const tracing = startTracing({
    serviceName: 'choiros-worker',
    serviceVersion: config.CHOIROS_BUILD_ID,
    config,
    logger,
  });
  const metricsOn = config.CHOIROS_METRICS_PORT > 0;
  let sdkMetricsUrl: string | undefined;
  if (metricsOn && config.CHOIROS_TEMPORAL_SDK_METRICS) {
    const port = await freeLoopbackPort();
    Runtime.install({
      telemetryOptions: {
        metrics: {
          prometheus: { bindAddress: `127.0.0.1:${port}` },
          globalTags: { host: config.CHOIROS_HOST_ID },
        },
      },
    });
    sdkMetricsUrl = `http://127.0.0.1:${port}/metrics`;
  }
  let connection: NativeConnection | undefined;
  let nats: NatsConnection | undefined;
  let metricsServer: MetricsServer | undefined;
  try {
    connection = await NativeConnection.connect({
      address: config.TEMPORAL_ADDRESS,
      ...(await temporalConnectionSecurity(config)),
    });
    nats = await connect({
      servers: config.NATS_URL.split(','),
      name: `choiros-worker-${config.CHOIROS_HOST_ID}`,
      ...natsTlsOptions(config),
      authenticator: config.NATS_CREDS ? credsAuthenticator(await readFile(config.NATS_CREDS)) : undefined,
      maxReconnectAttempts: -1,
      pingInterval: config.NATS_PING_INTERVAL_SECONDS * 1000,
      maxPingOut: 2,
    });
    const docker = new Docker();
    await docker.ping().catch((err: unknown) => {
      throw new Error(`Docker engine not reachable: ${err instanceof Error ? err.message : String(err)}`);
    });
    const metrics = createWorkerMetrics({
      worktreeRoot: join(config.dataDir, 'worktrees'),
      defaultMetrics: true,
    });
    const workerSet = await createWorkerSet({
      config,
      connection,
      nats,
      docker,
      logger,
      metrics,
      ...(tracing ? { tracing } : {}),
      // Bundled by a child process, not here: webpack's memory would stay with the worker.
      workflowBundle: opts.workflowBundle ?? (await bundleWorkflowsInChild()),
    });
    const stop = (signal: string): void => {
      logger.info(
        { event: 'worker.shutdown', signal, graceSeconds: config.CHOIROS_SHUTDOWN_GRACE_SECONDS },
        'shutting down: no new tasks; in-flight tasks finish or are handed back',
      );
      workerSet.shutdown();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    const running = workerSet.run();
    if (metricsOn) {
      metricsServer = await serveWorkerMetrics({
        registry: metrics.registry,
        host: config.CHOIROS_METRICS_HOST,
        port: config.CHOIROS_METRICS_PORT,
        ...(sdkMetricsUrl ? { sdkMetricsUrl } : {}),
        logger,
      });
    }
    logger.info(
      {
        event: 'worker.started',
        temporal: config.TEMPORAL_ADDRESS,
        nats: config.NATS_URL,
        metricsPort: metricsServer?.port ?? null,
      },
      'worker running',
    );
    opts.onReady?.({ ...(metricsServer ? { metricsPort: metricsServer.port } : {}) });
    await running;
    logger.info({ event: 'worker.stopped' }, 'worker stopped: every worker drained');
  } finally {
    await metricsServer?.close();
    await nats?.drain().catch(() => undefined);
    await connection?.close().catch(() => undefined);
    await tracing?.shutdown();
  }
}
