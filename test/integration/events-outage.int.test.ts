/**
 * A NATS outage in the middle of a run: the run completes, and once NATS is back every event is
 * in the stream, in order, gap- and duplicate-free. This file runs its own Temporal dev server and
 * NATS server, so stopping NATS disturbs no other test.
 */
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { JSONCodec, connect, credsAuthenticator, type NatsConnection } from 'nats';
import { EVENT_STREAM, runEventsFilter, type EventEnvelope, type RunView } from '../../contracts';
import { startNatsServer, type NatsServer } from '../../infra/stack/nats';
import { freePort } from '../../infra/stack/process';
import { startTemporalDevServer, type TemporalDevServer } from '../../infra/stack/temporal';
import {
  env,
  makeGitRepo,
  poll,
  startTestApi,
  startTestWorker,
  type TestApi,
  type TestWorker,
} from '../helpers/integration';

jest.setTimeout(240_000);

let temporal: TemporalDevServer;
let nats: NatsServer;
let natsDir: string;
let natsPort: number;
let logDir: string;
let worker: TestWorker;
let api: TestApi;

beforeAll(async () => {
  const bin = process.env.CHOIROS_TEMPORAL_BIN;
  if (!bin)
    throw new Error('this test needs the Temporal CLI (CHOIROS_TEMPORAL_BIN; run `npm run provision`)');
  const natsBin = process.env.CHOIROS_NATS_SERVER_BIN;
  if (!natsBin)
    throw new Error('this test needs nats-server (CHOIROS_NATS_SERVER_BIN; run `npm run provision`)');
  const work = await mkdtemp(join(env.workDir(), 'outage-'));
  logDir = work;
  temporal = await startTemporalDevServer({
    binary: bin,
    host: '127.0.0.1',
    port: await freePort(),
    logDir,
    namespace: 'default',
  });
  natsDir = join(work, 'nats');
  natsPort = await freePort();
  nats = await startNatsServer({ binary: natsBin, host: '127.0.0.1', port: natsPort, dir: natsDir, logDir });
  worker = await startTestWorker('it-outage', {
    natsUrl: nats.url,
    natsCreds: nats.workerCredsFile,
    temporalAddress: temporal.address,
  });
  api = await startTestApi({ temporalAddress: temporal.address });
});

afterAll(async () => {
  await api?.stop();
  await worker?.stop();
  await nats?.process.stop();
  await temporal?.process.stop();
});

test('when NATS is down for 20 s in the middle of a run, then the run completes and no event is lost or reordered', async () => {
  const repo = await makeGitRepo();
  const token = await api.token();
  const res = await fetch(`${api.url}/v1/runs`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({
      repo: repo.path,
      workItem: {
        description: 'outage',
        execute: ['sh', '-c', 'sleep 6; echo done > RESULT.txt'],
        requiredVerifiers: ['V-RESULT-FILE'],
      },
    }),
  });
  expect(res.status).toBe(201);
  const { runId } = (await res.json()) as RunView;
  const get = async (): Promise<RunView> =>
    (await (
      await fetch(`${api.url}/v1/runs/${runId}`, { headers: { authorization: `Bearer ${token}` } })
    ).json()) as RunView;

  await poll(get, (v) => v.status === 'running', 60_000);
  await nats.process.stop();
  const downAt = Date.now();
  // While NATS is down the run goes on: it verifies, commits and cleans up; events wait.
  const during = await poll(get, (v) => v.finishedAt !== undefined || Date.now() - downAt > 20_000, 30_000);
  await new Promise((r) => setTimeout(r, Math.max(0, 20_000 - (Date.now() - downAt))));
  const stuck = await get();
  expect(stuck.events.published).toBeLessThan(stuck.events.emitted);

  nats = await startNatsServer({
    binary: process.env.CHOIROS_NATS_SERVER_BIN!,
    host: '127.0.0.1',
    port: natsPort,
    dir: natsDir,
    logDir,
  });
  const done = await poll(
    get,
    (v) => v.finishedAt !== undefined && v.events.published === v.events.emitted,
    120_000,
  );
  expect(done.status).toBe('committed');
  expect(during.status).toBe('committed'); // the outage did not hold the run back

  const reader: NatsConnection = await connect({
    servers: nats.url,
    authenticator: credsAuthenticator(await readFile(nats.apiCredsFile)),
  });
  try {
    const consumer = await reader.jetstream().consumers.get(EVENT_STREAM, {
      filterSubjects: runEventsFilter({ tenant: 'acme', userId: 'alice' }, runId),
    });
    const codec = JSONCodec<EventEnvelope>();
    const events: EventEnvelope[] = [];
    for await (const m of await consumer.fetch({ max_messages: 1000, expires: 2000 })) {
      events.push(codec.decode(m.data));
      if (m.info.pending === 0) break;
    }
    expect(events.map((e) => e.seq)).toEqual(Array.from({ length: done.events.emitted }, (_, i) => i + 1));
    expect(events[events.length - 1]?.event_type).toBe('run.completed');
  } finally {
    await reader.close();
  }
});
