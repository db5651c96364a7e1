/**
 * API process entrypoint: loads config, connects to Temporal and NATS, serves HTTP and gRPC with
 * the same verifier, policy, run service and limits, and drains on SIGTERM/SIGINT.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type * as grpc from '@grpc/grpc-js';
import { Client, Connection } from '@temporalio/client';
import { connect, credsAuthenticator, type NatsConnection } from 'nats';
import pino from 'pino';
import {
  isPlatformOperatorTenant,
  issuersForTenant,
  parseVerifierFile,
  tenantPolicyOf,
  type SubjectOwner,
} from '../contracts';
import { createRepoAccess, loadTenantsFile } from '../tenancy';
import { createApp, createMetricsApp } from './app';
import { createTokenVerifier } from './auth/token-verifier';
import { loadApiConfig } from './config';
import { natsTlsOptions, temporalConnectionSecurity } from '../infra/tls/connections';
import { createJetStreamEventSource } from './events/source';
import { createGrpcServer, listenGrpc } from './grpc/server';
import { createApiMetrics } from './metrics';
import { mintUserCreds } from './nats/credentials';
import { RateLimiter } from './rate-limit';
import { StreamLimiter } from './stream-limit';
import { createTemporalRunService } from './runs/service';
import { temporalCallInterceptors } from './temporal';
import { createTemporalWorkGraphService } from './graphs/service';
import { createTemporalRebuildService } from './rebuilds/service';
import { loadRebuildTargets, rebuildTargets } from './rebuilds/targets';
import { startTracing, traceLogFields } from '../telemetry/tracing';
import { temporalClientTracing } from './tracing';

async function main(): Promise<void> {
  const config = loadApiConfig(process.env);
  const logger = pino({ level: config.LOG_LEVEL, base: { service: 'choiros-api' }, mixin: traceLogFields });
  const tracing = startTracing({
    serviceName: 'choiros-api',
    serviceVersion: config.CHOIROS_VERSION,
    config,
    logger,
  });
  let connection: Connection | undefined;
  let nats: NatsConnection | undefined;
  let server: Server | undefined;
  let metricsServer: Server | undefined;
  let grpcServer: grpc.Server | undefined;
  const shutdown = new AbortController();
  try {
    connection = await Connection.connect({
      address: config.TEMPORAL_ADDRESS,
      ...(await temporalConnectionSecurity(config)),
      interceptors: temporalCallInterceptors(config.API_TEMPORAL_CALL_TIMEOUT_SECONDS * 1000),
    });
    const temporalConn = connection;
    const client = new Client({
      connection,
      namespace: config.TEMPORAL_NAMESPACE,
      ...(tracing ? { interceptors: temporalClientTracing(tracing.tracer) } : {}),
    });
    nats = await connect({
      servers: config.NATS_URL.split(','),
      name: 'choiros-api',
      ...natsTlsOptions(config),
      authenticator: config.NATS_CREDS ? credsAuthenticator(await readFile(config.NATS_CREDS)) : undefined,
      maxReconnectAttempts: -1,
      pingInterval: config.NATS_PING_INTERVAL_SECONDS * 1000,
      maxPingOut: 2,
    });
    const natsConn = nats;
    const verifiers = parseVerifierFile(await readFile(config.verifiersFile, 'utf8'), config.verifiersFile);
    // Validated before anything listens: a bad tenants file stops the API with the bad key's path.
    const tenants = await loadTenantsFile(config.tenantsFile);
    const repoAccess = createRepoAccess({
      config: tenants,
      platformPaths: [config.dataDir, ...config.CHOIROS_PLATFORM_PATHS],
    });
    const metricsToken = config.API_METRICS_TOKEN_FILE
      ? (await readFile(config.API_METRICS_TOKEN_FILE, 'utf8')).trim()
      : undefined;
    if (metricsToken !== undefined && metricsToken.length < 16)
      throw new Error('API_METRICS_TOKEN_FILE must hold a token of at least 16 characters');
    const accountSeed = config.NATS_ACCOUNT_SEED_FILE
      ? (await readFile(config.NATS_ACCOUNT_SEED_FILE, 'utf8')).trim()
      : undefined;
    const verifyToken = createTokenVerifier({
      issuers: [
        { issuer: config.AUTH_ISSUER, audience: config.AUTH_AUDIENCE, jwksUrl: config.AUTH_JWKS_URL },
        ...config.AUTH_EXTRA_ISSUERS,
      ],
      typ: config.AUTH_TOKEN_TYP,
      ...(config.AUTH_MAX_TOKEN_AGE_SECONDS ? { maxTokenAgeSeconds: config.AUTH_MAX_TOKEN_AGE_SECONDS } : {}),
      ...(config.AUTH_ROLE_SCOPES ? { roleScopes: config.AUTH_ROLE_SCOPES } : {}),
      tenantIssuers: (tenant) => issuersForTenant(tenants, tenant, config.AUTH_ISSUER),
      jwksCooldownMs: config.AUTH_JWKS_COOLDOWN_SECONDS * 1000,
      jwksMaxAgeMs: config.AUTH_JWKS_MAX_AGE_SECONDS * 1000,
      onJwksError: (err) =>
        logger.warn({ event: 'auth.jwks.error', err }, 'JWKS fetch failed; cached keys stay in use'),
      algorithms: config.AUTH_ALGORITHMS,
      clockToleranceSeconds: config.AUTH_CLOCK_TOLERANCE_SECONDS,
      tenantClaim: config.AUTH_TENANT_CLAIM,
      defaultTenant: config.AUTH_DEFAULT_TENANT,
    });
    const requestDeadlineMs = config.API_TEMPORAL_CALL_TIMEOUT_SECONDS * 1000;
    const tenantPolicy = (tenant: string) => tenantPolicyOf(tenants, tenant);
    const runs = createTemporalRunService({
      client,
      logger,
      requestDeadlineMs,
      repoAccess,
      tenantPolicy,
      queueBound: {
        maxQueuedPerTenant: config.CHOIROS_MAX_QUEUED_PER_TENANT,
        retryAfterSeconds: config.CHOIROS_QUEUE_RETRY_AFTER_SECONDS,
      },
    });
    const targets = existsSync(config.rebuildTargetsFile)
      ? await loadRebuildTargets(config.rebuildTargetsFile)
      : rebuildTargets([]);
    const rebuilds = createTemporalRebuildService({
      isOperatorTenant: (tenant) => isPlatformOperatorTenant(tenants, tenant),
      client,
      targets,
      defaultApprovalTimeoutSeconds: config.CHOIROS_REBUILD_APPROVAL_TIMEOUT_SECONDS,
      logger,
      requestDeadlineMs,
    });
    const events = createJetStreamEventSource(natsConn);
    const streamLimiter = new StreamLimiter(
      (p) =>
        (Object.prototype.hasOwnProperty.call(tenants.tenants, p.tenant)
          ? tenants.tenants[p.tenant]?.caps?.eventStreamsPerPrincipal
          : undefined) ?? config.API_MAX_STREAMS_PER_PRINCIPAL,
    );
    const rateLimiter =
      config.API_RATE_LIMIT_PER_MINUTE > 0
        ? new RateLimiter({ perMinute: config.API_RATE_LIMIT_PER_MINUTE, burst: config.API_RATE_LIMIT_BURST })
        : undefined;

    const apiMetrics = createApiMetrics();
    const app = createApp({
      verifyToken,
      runs,
      graphs: createTemporalWorkGraphService({ client, logger, requestDeadlineMs, repoAccess, tenantPolicy }),
      rebuilds,
      version: config.CHOIROS_VERSION,
      events,
      verifiers,
      metrics: apiMetrics,
      metricsEndpoint: {
        onApiPort: config.API_METRICS_PORT === 0,
        ...(metricsToken ? { token: metricsToken } : {}),
      },
      shutdown: shutdown.signal,
      ...(tracing ? { tracer: tracing.tracer } : {}),
      ...(rateLimiter ? { rateLimiter } : {}),
      streamLimiter,
      ...(accountSeed
        ? {
            natsCredentials: {
              servers: (config.NATS_CLIENT_URL ?? config.NATS_URL).split(','),
              mint: (owner: SubjectOwner) =>
                mintUserCreds(accountSeed, owner, config.NATS_USER_CREDS_TTL_SECONDS),
            },
          }
        : {}),
      readiness: [
        {
          name: 'temporal',
          check: async () => {
            await temporalConn.healthService.check({});
          },
        },
        {
          name: 'nats',
          check: async () => {
            if (natsConn.isClosed()) throw new Error('connection closed');
            await natsConn.rtt();
          },
        },
      ],
      logger,
    });
    // HTTPS when a certificate and key are configured (both files are read once, at start).
    const listening: Server =
      config.API_TLS_CERT_FILE && config.API_TLS_KEY_FILE
        ? createHttpsServer(
            {
              cert: await readFile(config.API_TLS_CERT_FILE),
              key: await readFile(config.API_TLS_KEY_FILE),
            },
            app,
          ).listen(config.API_PORT, config.API_HOST)
        : app.listen(config.API_PORT, config.API_HOST);
    server = listening;
    await new Promise<void>((resolve, reject) => {
      listening.once('listening', () => resolve());
      listening.once('error', reject);
    });
    if (config.API_METRICS_PORT > 0) {
      const m = createMetricsApp({ metrics: apiMetrics, ...(metricsToken ? { token: metricsToken } : {}) });
      const listeningMetrics = m.listen(config.API_METRICS_PORT, config.API_METRICS_HOST);
      metricsServer = listeningMetrics;
      await new Promise<void>((resolve, reject) => {
        listeningMetrics.once('listening', () => resolve());
        listeningMetrics.once('error', reject);
      });
    }
    if (config.GRPC_PORT > 0) {
      grpcServer = createGrpcServer({
        verifyToken,
        runs,
        events,
        verifiers,
        ...(rateLimiter ? { rateLimiter } : {}),
        streamLimiter,
        ...(tracing ? { tracer: tracing.tracer } : {}),
        logger,
      });
      await listenGrpc(grpcServer, config.GRPC_HOST, config.GRPC_PORT);
    }
    logger.info(
      {
        event: 'api.started',
        port: config.API_PORT,
        host: config.API_HOST,
        tls: config.API_TLS_CERT_FILE !== undefined,
        grpcPort: config.GRPC_PORT || null,
        metricsPort: config.API_METRICS_PORT || config.API_PORT,
        tenants: Object.keys(tenants.tenants),
        issuer: config.AUTH_ISSUER,
        version: config.CHOIROS_VERSION,
        rebuildTargets: targets.names(),
      },
      'API listening',
    );
    const signal = await new Promise<string>((resolve) => {
      process.once('SIGTERM', () => resolve('SIGTERM'));
      process.once('SIGINT', () => resolve('SIGINT'));
    });
    // Drain: refuse new connections and requests (503 + Connection: close on kept-alive ones),
    // end SSE streams, let in-flight calls finish within the grace period, then close the rest.
    const graceMs = config.API_SHUTDOWN_GRACE_SECONDS * 1000;
    logger.info({ event: 'api.shutdown', signal, graceSeconds: graceMs / 1000 }, 'shutting down: draining');
    shutdown.abort();
    const drained = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), graceMs);
      let pending = grpcServer ? 2 : 1;
      const done = (): void => {
        pending -= 1;
        if (pending === 0) {
          clearTimeout(timer);
          resolve(true);
        }
      };
      grpcServer?.tryShutdown(() => done());
      listening.close(() => done());
      listening.closeIdleConnections();
    });
    logger.info(
      { event: 'api.stopped', drained },
      drained ? 'drained' : 'grace period over; closing the rest',
    );
  } finally {
    server?.closeAllConnections();
    metricsServer?.closeAllConnections();
    metricsServer?.close();
    grpcServer?.forceShutdown();
    await nats?.drain().catch(() => undefined);
    await connection?.close().catch(() => undefined);
    await tracing?.shutdown();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`api: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
