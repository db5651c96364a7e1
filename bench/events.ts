/**
 * Event delivery benchmark (`npm run bench:events`), everything on loopback and bounded:
 *  1. latency from a worker's JetStream publish to receipt by a raw NATS subscriber holding a
 *     user's gateway-minted credentials, and to receipt by an SSE client through the gateway —
 *     measured side by side on the same events (p50/p99);
 *  2. events/s one run sustains through the worker's publish path (batches of 100, acked).
 * Starts its own nats-server; needs CHOIROS_NATS_SERVER_BIN (npm run provision).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { connect, credsAuthenticator, JSONCodec } from 'nats';
import pino from 'pino';
import {
  EVENT_SCHEMA_VERSION,
  eventId,
  runEventSubject,
  runEventsFilter,
  type EventEnvelope,
} from '../contracts';
import { createEventActivities, ensureEventStream } from '../activities/events/publisher';
import { createApp } from '../api/app';
import { sseFrames } from '../api/cli/sse';
import { createJetStreamEventSource } from '../api/events/source';
import { mintUserCreds } from '../api/nats/credentials';
import { DEV_AUDIENCE, loadOrCreateDevKey, mintDevToken, serveDevIssuer } from '../infra/dev-issuer/issuer';
import { startNatsServer } from '../infra/stack/nats';
import { freePort } from '../infra/stack/process';
import { fakeRunService, oneVerifierCatalog, testTokenVerifier } from '../test/helpers/fakes';
import { pct } from './util';

const LATENCY_EVENTS = Number(process.env.BENCH_EVENTS ?? 1000);
const RATE_PER_SECOND = Number(process.env.BENCH_RATE ?? 200);
const THROUGHPUT_EVENTS = Number(process.env.BENCH_THROUGHPUT_EVENTS ?? 5000);
const BENCH_OWNER = { tenant: 'default', userId: 'bench' };

function event(runId: string, seq: number, sentAt: number): EventEnvelope {
  return {
    schema_version: EVENT_SCHEMA_VERSION,
    id: eventId(runId, seq),
    timestamp: Date.now(),
    user_id: 'bench',
    source: 'system',
    event_type: 'note.status',
    payload: {
      run_id: runId,
      status: 'running',
      previous: 'created',
      mood: 'CALM',
      stage: 'bench',
      sent_at: sentAt,
    },
    tenant: 'default',
    run_id: runId,
    seq,
  };
}

async function main(): Promise<void> {
  const bin = process.env.CHOIROS_NATS_SERVER_BIN;
  if (!bin)
    throw new Error(
      'CHOIROS_NATS_SERVER_BIN is not set: run via `npm run bench:events` (it provisions nats-server)',
    );
  const work = await mkdtemp(join(tmpdir(), 'choiros-bench-'));
  const nats = await startNatsServer({
    binary: bin,
    host: '127.0.0.1',
    port: await freePort(),
    dir: join(work, 'nats'),
    logDir: work,
  });
  const logger = pino({ level: 'silent' });
  const worker = await connect({
    servers: nats.url,
    authenticator: credsAuthenticator(await readFile(nats.workerCredsFile)),
  });
  const gatewayNc = await connect({
    servers: nats.url,
    authenticator: credsAuthenticator(await readFile(nats.apiCredsFile)),
  });
  await ensureEventStream(await worker.jetstreamManager());
  const publisher = createEventActivities({ js: worker.jetstream(), logger });

  // The gateway, with a run service that owns one bench run.
  const runId = `bench-${Date.now()}`;
  const key = await loadOrCreateDevKey(join(work, 'issuer'));
  const issuer = await serveDevIssuer({ key, host: '127.0.0.1', port: 0 });
  const app = createApp({
    verifyToken: testTokenVerifier(issuer.issuer),
    runs: fakeRunService({ owner: 'bench', runId }),
    verifiers: oneVerifierCatalog(),
    readiness: [],
    events: createJetStreamEventSource(gatewayNc),
    logger,
  });
  const server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const apiUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const token = await mintDevToken(key, { issuer: issuer.issuer, audience: DEV_AUDIENCE }, { sub: 'bench' });

  // Raw subscriber with a user's credentials.
  const userCreds = await mintUserCreds(nats.auth.accountSeed, BENCH_OWNER, 600);
  const user = await connect({
    servers: nats.url,
    authenticator: credsAuthenticator(new TextEncoder().encode(userCreds.creds)),
    inboxPrefix: userCreds.inboxPrefix,
  });
  const raw: number[] = [];
  const sse: number[] = [];
  const codec = JSONCodec<EventEnvelope>();
  const sub = user.subscribe(runEventsFilter(BENCH_OWNER, runId));
  const rawDone = (async () => {
    for await (const m of sub) {
      const e = codec.decode(m.data);
      raw.push(performance.now() - Number(e.payload.sent_at));
      if (raw.length >= LATENCY_EVENTS) return;
    }
  })();
  await user.flush();

  // SSE client through the gateway.
  const abort = new AbortController();
  const res = await fetch(`${apiUrl}/v1/runs/${runId}/events`, {
    headers: { authorization: `Bearer ${token}` },
    signal: abort.signal,
  });
  const sseDone = (async () => {
    for await (const frame of sseFrames(res.body as unknown as AsyncIterable<Uint8Array>)) {
      const e = JSON.parse(frame.data) as EventEnvelope;
      sse.push(performance.now() - Number(e.payload.sent_at));
      if (sse.length >= LATENCY_EVENTS) return;
    }
  })();
  await new Promise((r) => setTimeout(r, 300)); // let the gateway's consumer attach

  // 1. Latency: one event at a time at a fixed rate, each through the worker's publish path.
  const interval = 1000 / RATE_PER_SECOND;
  const started = performance.now();
  for (let seq = 1; seq <= LATENCY_EVENTS; seq++) {
    const due = started + (seq - 1) * interval;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await publisher.publishEvents({ events: [event(runId, seq, performance.now())] });
  }
  const timeout = setTimeout(() => abort.abort(), 30_000);
  await Promise.all([rawDone, sseDone]);
  clearTimeout(timeout);
  abort.abort();

  // 2. Throughput of one run's flush path: sequential acked publishes in batches of 100.
  const tRun = `bench-tp-${Date.now()}`;
  const t0 = performance.now();
  for (let seq = 1; seq <= THROUGHPUT_EVENTS; seq += 100) {
    const batch = Array.from({ length: Math.min(100, THROUGHPUT_EVENTS - seq + 1) }, (_, i) =>
      event(tRun, seq + i, 0),
    );
    await publisher.publishEvents({ events: batch });
  }
  const seconds = (performance.now() - t0) / 1000;

  raw.sort((a, b) => a - b);
  sse.sort((a, b) => a - b);
  const f = (n: number): string => n.toFixed(2);
  console.log(
    `events: ${LATENCY_EVENTS} at ${RATE_PER_SECOND}/s (latency), ${THROUGHPUT_EVENTS} (throughput); subject ${runEventSubject(BENCH_OWNER, runId, 'note.status')}`,
  );
  console.log(
    `raw NATS subscriber   p50 ${f(pct(raw, 50))} ms  p99 ${f(pct(raw, 99))} ms  (n=${raw.length})`,
  );
  console.log(
    `SSE through gateway   p50 ${f(pct(sse, 50))} ms  p99 ${f(pct(sse, 99))} ms  (n=${sse.length})`,
  );
  console.log(
    `ratio SSE/raw         p50 ${f(pct(sse, 50) / pct(raw, 50))}x  p99 ${f(pct(sse, 99) / pct(raw, 99))}x`,
  );
  console.log(
    `one run's publish path: ${Math.round(THROUGHPUT_EVENTS / seconds)} events/s (acked, deduplicated, in order)`,
  );

  server.closeAllConnections();
  server.close();
  await issuer.close();
  await user.drain();
  await gatewayNc.drain();
  await worker.drain();
  await nats.process.stop();
  await rm(work, { recursive: true, force: true });
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
