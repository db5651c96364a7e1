/**
 * Prometheus metrics of a worker process (`GET /metrics` on CHOIROS_METRICS_PORT): runs, work items,
 * verifiers, event flushing and sandboxes from this process, followed by the Temporal SDK's own
 * metrics (workflow/activity task latencies, slots, polls) that the SDK core serves on a loopback
 * port of its own.
 */
import { readdir } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { EventEnvelope } from '../contracts';

export interface WorkerMetrics {
  registry: Registry;
  runsStarted: Counter;
  runsCompleted: Counter<'status'>;
  workItemDuration: Histogram<'outcome'>;
  verifierDuration: Histogram<'verifier' | 'result'>;
  eventFlushLag: Histogram;
  eventsPublished: Counter<'duplicate'>;
  sandboxesCreated: Counter;
  sandboxesDestroyed: Counter;
  /** Fetches of remote repositories into tenants' mirrors (decision 0019). */
  mirrorFetches: Counter;
}

const DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600];

export function createWorkerMetrics(opts: { worktreeRoot: string; defaultMetrics?: boolean }): WorkerMetrics {
  const registry = new Registry();
  if (opts.defaultMetrics ?? false) collectDefaultMetrics({ register: registry, prefix: 'choiros_worker_' });
  new Gauge({
    name: 'choiros_sandboxes_active',
    help: 'Sandboxes present on this host (run worktrees on disk; each has at most one execution container)',
    registers: [registry],
    async collect() {
      const entries = await readdir(opts.worktreeRoot).catch(() => []);
      // `.pool/` holds the warm pool's slots (decision 0016), not runs' sandboxes.
      this.set(entries.filter((e) => !e.startsWith('.')).length);
    },
  });
  return {
    registry,
    runsStarted: new Counter({
      name: 'choiros_runs_started_total',
      help: 'Runs started (their run.created event was published for the first time by this process)',
      registers: [registry],
    }),
    runsCompleted: new Counter({
      name: 'choiros_runs_completed_total',
      help: 'Runs that reached a terminal state, by status (committed, discarded, failed, cancelled)',
      labelNames: ['status'],
      registers: [registry],
    }),
    workItemDuration: new Histogram({
      name: 'choiros_work_item_duration_seconds',
      help: "Duration of a work item's execute step in its sandbox, by outcome (ok, nonzero, timeout, oom)",
      labelNames: ['outcome'],
      buckets: DURATION_BUCKETS,
      registers: [registry],
    }),
    verifierDuration: new Histogram({
      name: 'choiros_verifier_duration_seconds',
      help: 'Duration of one verifier attempt, by verifier id and result',
      labelNames: ['verifier', 'result'],
      buckets: DURATION_BUCKETS,
      registers: [registry],
    }),
    eventFlushLag: new Histogram({
      name: 'choiros_event_flush_lag_seconds',
      help: 'Time from an event being recorded by its workflow to its first acknowledged publish in JetStream',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [registry],
    }),
    eventsPublished: new Counter({
      name: 'choiros_events_published_total',
      help: 'Event publishes acknowledged by JetStream; duplicate="true" when the stream already had it (a retried flush)',
      labelNames: ['duplicate'],
      registers: [registry],
    }),
    sandboxesCreated: new Counter({
      name: 'choiros_sandboxes_created_total',
      help: 'Sandboxes created on this host (a retried create of the same sandbox counts once)',
      registers: [registry],
    }),
    sandboxesDestroyed: new Counter({
      name: 'choiros_sandboxes_destroyed_total',
      help: 'Sandboxes destroyed on this host (a destroy that found nothing left is not counted)',
      registers: [registry],
    }),
    mirrorFetches: new Counter({
      name: 'choiros_mirror_fetches_total',
      help: 'Fetches of remote repositories into tenant mirrors on this host',
      registers: [registry],
    }),
  };
}

/** Run and flush metrics from one acknowledged publish; duplicates (retries) only count as such. */
export function observePublished(
  metrics: WorkerMetrics,
  event: EventEnvelope,
  duplicate: boolean,
  now: number,
): void {
  metrics.eventsPublished.inc({ duplicate: String(duplicate) });
  if (duplicate) return;
  metrics.eventFlushLag.observe(Math.max(0, now - event.timestamp) / 1000);
  if (event.event_type === 'run.created') metrics.runsStarted.inc();
  if (event.event_type === 'run.completed') {
    const status = (event.payload as { status?: unknown }).status;
    metrics.runsCompleted.inc({ status: typeof status === 'string' ? status : 'unknown' });
  }
}

export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

/**
 * Serves `GET /metrics`: this process's registry, then (when `sdkMetricsUrl` is set) the Temporal
 * SDK core's Prometheus text; if the core endpoint does not answer, our metrics are still served.
 */
export async function serveWorkerMetrics(opts: {
  registry: Registry;
  host: string;
  port: number;
  sdkMetricsUrl?: string;
  logger: Logger;
}): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    void (async () => {
      try {
        let text = await opts.registry.metrics();
        if (opts.sdkMetricsUrl) {
          const sdk = await fetch(opts.sdkMetricsUrl, { signal: AbortSignal.timeout(2000) })
            .then((r) => (r.ok ? r.text() : ''))
            .catch(() => '');
          if (sdk) text += `\n${sdk}`;
        }
        res.writeHead(200, { 'content-type': opts.registry.contentType }).end(text);
      } catch (err) {
        opts.logger.warn({ event: 'metrics.scrape.failed', err }, 'metrics scrape failed');
        res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n');
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
