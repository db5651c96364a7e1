/**
 * Events against real NATS JetStream and Temporal: exactly-once in the stream after a retried
 * publish, SSE with resume, per-user credentials that cannot reach another user's events through
 * any subject or JetStream API, and re-publishing a run's events from its Temporal history.
 */
import { JSONCodec, connect, credsAuthenticator, type NatsConnection } from 'nats';
import { republishRunEvents } from '../../activities/events/republish';
import {
  EVENT_STREAM,
  legacyRunEventsFilter,
  runEventsFilter,
  type EventEnvelope,
  type RunView,
} from '../../contracts';
import {
  connectNats,
  env,
  makeGitRepo,
  poll,
  startTestApi,
  startTestWorker,
  type TestApi,
  type TestWorker,
} from '../helpers/integration';
import { readSse } from '../helpers/sse';
import { main as cli } from '../../api/cli/main';
import Docker from 'dockerode';

let api: TestApi;
let worker: TestWorker;
let service: NatsConnection;
const injected: string[] = [];

beforeAll(async () => {
  worker = await startTestWorker('it-events', {
    // The first attempt of the batch holding seq 3 dies after publishing seqs 1-2 of it.
    eventFaults: (event, attempt) => {
      if (event.seq === 3 && attempt === 1) {
        injected.push(event.id);
        throw new Error('injected fault after a partial batch');
      }
    },
  });
  api = await startTestApi();
  service = await connectNats(env.apiCreds(), 'events-test-service');
});

afterAll(async () => {
  await api?.stop();
  await worker?.stop();
  await service?.drain();
});

async function startRun(
  token?: string,
  execute = ['sh', '-c', 'sleep 1; echo done > RESULT.txt'],
): Promise<string> {
  const repo = await makeGitRepo();
  const res = await fetch(`${api.url}/v1/runs`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token ?? (await api.token())}` },
    body: JSON.stringify({
      repo: repo.path,
      workItem: { description: 'events', execute, requiredVerifiers: ['V-RESULT-FILE'] },
    }),
  });
  expect(res.status).toBe(201);
  return ((await res.json()) as RunView).runId;
}

async function waitDone(runId: string, sub = 'alice'): Promise<RunView> {
  const token = await api.token({ sub });
  return poll(
    async () =>
      (await (
        await fetch(`${api.url}/v1/runs/${runId}`, { headers: { authorization: `Bearer ${token}` } })
      ).json()) as RunView,
    (v) => v.finishedAt !== undefined && v.events.published === v.events.emitted,
    120_000,
  );
}

/** Every message in the stream for the run, duplicates included (raw count matters). */
async function rawStreamEvents(userId: string, runId: string, tenant = 'acme'): Promise<EventEnvelope[]> {
  const codec = JSONCodec<EventEnvelope>();
  const consumer = await service
    .jetstream()
    .consumers.get(EVENT_STREAM, { filterSubjects: runEventsFilter({ tenant, userId }, runId) });
  const out: EventEnvelope[] = [];
  const batch = await consumer.fetch({ max_messages: 1000, expires: 1500 });
  for await (const m of batch) {
    out.push(codec.decode(m.data));
    if (m.info.pending === 0) break;
  }
  return out;
}

describe('publishing', () => {
  test('when a publish attempt fails mid-batch and is retried, then the stream holds every event exactly once, in order', async () => {
    const runId = await startRun();
    const view = await waitDone(runId);
    expect(view.status).toBe('committed');
    expect(injected).toContain(`${runId}:3`);
    const events = await rawStreamEvents('alice', runId);
    expect(events.map((e) => e.seq)).toEqual(Array.from({ length: view.events.emitted }, (_, i) => i + 1));
    expect(new Set(events.map((e) => e.id)).size).toBe(events.length);
  });
});

describe('server-sent events', () => {
  test('when a client disconnects after k events and reconnects with Last-Event-ID, then it gets k+1.. with none lost or repeated', async () => {
    const runId = await startRun();
    const token = await api.token();
    const url = `${api.url}/v1/runs/${runId}/events`;
    const first = await readSse(url, { authorization: `Bearer ${token}` }, 3);
    expect(first.status).toBe(200);
    expect(first.contentType).toMatch(/^text\/event-stream/);
    expect(first.frames.map((f) => f.id)).toEqual([`${runId}:1`, `${runId}:2`, `${runId}:3`]);
    const rest = await readSse(url, {
      authorization: `Bearer ${token}`,
      'last-event-id': first.frames[2]!.id!,
    });
    const all = [...first.frames, ...rest.frames].map((f) => JSON.parse(f.data) as EventEnvelope);
    expect(all.map((e) => e.seq)).toEqual(all.map((_, i) => i + 1));
    expect(all[all.length - 1]?.event_type).toBe('run.completed'); // the stream closes when the run ends
    expect(rest.frames.every((f, i) => f.event === all[i + 3]?.event_type)).toBe(true);
    const view = await waitDone(runId);
    expect(all.length).toBe(view.events.emitted);
    // A client that reconnects after the last event (browsers do, on close) gets an empty stream that ends.
    const afterEnd = await readSse(url, {
      authorization: `Bearer ${token}`,
      'last-event-id': `${runId}:${all.length}`,
    });
    expect([afterEnd.status, afterEnd.frames]).toEqual([200, []]);
  });

  test("when another user asks for a run's events, then 404; a foreign Last-Event-ID is a 400", async () => {
    const runId = await startRun();
    const bob = await readSse(`${api.url}/v1/runs/${runId}/events`, {
      authorization: `Bearer ${await api.token({ sub: 'bob' })}`,
    });
    expect(bob.status).toBe(404);
    const bad = await readSse(`${api.url}/v1/runs/${runId}/events`, {
      authorization: `Bearer ${await api.token()}`,
      'last-event-id': 'run-other:3',
    });
    expect(bad.status).toBe(400);
    await waitDone(runId);
  });
});

describe('NATS credentials from the gateway', () => {
  async function credsFor(sub: string): Promise<{
    creds: string;
    subject_prefix: string;
    inbox_prefix: string;
    expires_at: string;
    servers: string[];
  }> {
    const res = await fetch(`${api.url}/v1/nats/credentials`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await api.token({ sub })}` },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-store');
    return (await res.json()) as {
      creds: string;
      subject_prefix: string;
      inbox_prefix: string;
      expires_at: string;
      servers: string[];
    };
  }

  async function userConnection(sub: string): Promise<NatsConnection> {
    const c = await credsFor(sub);
    return connect({
      servers: c.servers,
      authenticator: credsAuthenticator(new TextEncoder().encode(c.creds)),
      inboxPrefix: c.inbox_prefix,
      reconnect: false,
    });
  }

  async function subscriptionRefused(nc: NatsConnection, subject: string): Promise<boolean> {
    const sub = nc.subscribe(subject);
    try {
      for await (const _ of sub) return false;
      return false;
    } catch (e) {
      return /permissions violation/i.test((e as Error).message);
    }
  }

  test('when alice asks, then she gets short-lived credentials scoped to her prefix and inbox', async () => {
    const c = await credsFor('alice');
    expect(c.subject_prefix).toBe('choiros.acme.alice.>');
    expect(c.inbox_prefix).toBe('_INBOX_acme.alice');
    const ttl = (Date.parse(c.expires_at) - Date.now()) / 1000;
    expect(ttl).toBeGreaterThan(200);
    expect(ttl).toBeLessThanOrEqual(300);
  });

  test("when alice's credentials try to read bob's events through subjects, inboxes or any JetStream API, then every attempt is refused", async () => {
    const bobRun = await startRun(await api.token({ sub: 'bob' }));
    await waitDone(bobRun, 'bob');
    const nc = await userConnection('alice');
    for (const subject of [
      'choiros.acme.bob.>',
      `choiros.acme.bob.run.${bobRun}.>`,
      'choiros.acme.>',
      'choiros.*.alice.>',
      'choiros.>',
      '_INBOX.>',
      '_INBOX_acme.bob.>',
      '$JS.API.>',
    ]) {
      expect([subject, await subscriptionRefused(nc, subject)]).toEqual([subject, true]);
    }
    const enc = (o: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(o));
    // A message that exists, so every read below would return data to someone allowed to ask.
    const seq = (await (await service.jetstreamManager()).streams.info(EVENT_STREAM)).state.last_seq;
    const jsApi: [string, Uint8Array][] = [
      [
        `$JS.API.CONSUMER.CREATE.${EVENT_STREAM}`,
        enc({
          stream_name: EVENT_STREAM,
          config: { filter_subject: `choiros.acme.bob.>`, deliver_policy: 'all', ack_policy: 'none' },
        }),
      ],
      [
        `$JS.API.CONSUMER.CREATE.${EVENT_STREAM}`,
        enc({ stream_name: EVENT_STREAM, config: { deliver_policy: 'all', ack_policy: 'none' } }),
      ],
      [
        `$JS.API.CONSUMER.DURABLE.CREATE.${EVENT_STREAM}.peek`,
        enc({ stream_name: EVENT_STREAM, config: { durable_name: 'peek', ack_policy: 'explicit' } }),
      ],
      [`$JS.API.STREAM.MSG.GET.${EVENT_STREAM}`, enc({ seq })],
      [`$JS.API.DIRECT.GET.${EVENT_STREAM}`, enc({ seq })],
      ['$JS.API.INFO', enc({})],
    ];
    for (const [subject, data] of jsApi) {
      await expect(nc.request(subject, data, { timeout: 1000 })).rejects.toThrow();
    }
    // Control: every one of those requests succeeds for a service identity, so the refusals above are permissions.
    for (const [subject, data] of jsApi) {
      const ok = await service.request(subject, data, { timeout: 2000 });
      if (subject.startsWith('$JS.API.DIRECT.GET')) expect(ok.headers?.get('Nats-Stream')).toBe(EVENT_STREAM);
      else
        expect([subject, JSON.parse(new TextDecoder().decode(ok.data))]).not.toEqual([
          subject,
          expect.objectContaining({ error: expect.anything() }),
        ]);
    }
    await (await service.jetstreamManager()).consumers.delete(EVENT_STREAM, 'peek');
    await nc.close().catch(() => undefined);
  });
});

describe('re-publishing from Temporal history', () => {
  test("when a run's messages are deleted from the stream, then the republish command restores them identical by id and seq", async () => {
    const runId = await startRun();
    await waitDone(runId);
    const before = await rawStreamEvents('alice', runId);
    const jsm = await service.jetstreamManager();
    await jsm.streams.purge(EVENT_STREAM, {
      filter: runEventsFilter({ tenant: 'acme', userId: 'alice' }, runId),
    });
    expect(await rawStreamEvents('alice', runId)).toEqual([]);
    const report = await republishRunEvents({ client: api.client, js: service.jetstream() }, runId);
    expect(report).toMatchObject({
      inHistory: before.length,
      alreadyInStream: 0,
      republished: before.length,
    });
    const after = await rawStreamEvents('alice', runId);
    expect(after).toEqual(before);
    // Running it again changes nothing.
    expect(
      (await republishRunEvents({ client: api.client, js: service.jetstream() }, runId)).republished,
    ).toBe(0);
    expect((await rawStreamEvents('alice', runId)).length).toBe(before.length);
  });

  test('when a run was published under subject layout 1 (user id only) before the upgrade, then republish puts its events on the tenant-qualified subjects and SSE serves them', async () => {
    const runId = await startRun();
    await waitDone(runId);
    const before = await rawStreamEvents('alice', runId);
    const jsm = await service.jetstreamManager();
    // What the stream held before the upgrade: the same envelopes on `choiros.<userId>.run.<runId>.<type>`.
    await jsm.streams.purge(EVENT_STREAM, {
      filter: runEventsFilter({ tenant: 'acme', userId: 'alice' }, runId),
    });
    const codec = JSONCodec<EventEnvelope>();
    for (const e of before) {
      await service.jetstream().publish(`choiros.alice.run.${runId}.${e.event_type}`, codec.encode(e), {
        msgID: `${e.id}:layout1`,
      });
    }
    const legacy = await service
      .jetstream()
      .consumers.get(EVENT_STREAM, { filterSubjects: legacyRunEventsFilter('alice', runId) });
    let legacyCount = 0;
    for await (const m of await legacy.fetch({ max_messages: 1000, expires: 1500 })) {
      legacyCount += 1;
      if (m.info.pending === 0) break;
    }
    expect(legacyCount).toBe(before.length);
    expect(await rawStreamEvents('alice', runId)).toEqual([]);
    const report = await republishRunEvents({ client: api.client, js: service.jetstream() }, runId);
    expect(report).toMatchObject({
      inHistory: before.length,
      alreadyInStream: 0,
      republished: before.length,
    });
    expect(await rawStreamEvents('alice', runId)).toEqual(before);
    const sse = await readSse(`${api.url}/v1/runs/${runId}/events`, {
      authorization: `Bearer ${await api.token()}`,
    });
    expect(sse.frames.map((f) => f.id)).toEqual(before.map((e) => e.id));
  });
});

describe('the choiros CLI', () => {
  test('when a run is started with --watch, then events print live with a progress line and the exit code says committed', async () => {
    const repo = await makeGitRepo();
    const lines: string[] = [];
    const code = await cli(
      [
        'runs',
        'start',
        '--repo',
        repo.path,
        '--verifier',
        'V-RESULT-FILE',
        '--watch',
        '--',
        'sh',
        '-c',
        'echo ok > RESULT.txt',
      ],
      { CHOIROS_API_URL: api.url, CHOIROS_TOKEN: await api.token() },
      (l) => lines.push(l),
    );
    expect(code).toBe(0);
    const text = lines.join('\n');
    expect(text).toMatch(/^started run-[0-9a-f]{32}$/m);
    expect(text).toMatch(/#1 .* run\.created/);
    expect(text).toMatch(/note\.status running → verifying/);
    expect(text).toMatch(/receipt\.verifier\.attestations V-RESULT-FILE: pass/);
    expect(text).toMatch(/run\.completed committed\n {2}\[wi-[0-9a-f]+\] committed/);
  });

  test('when a running run is cancelled, then it ends cancelled, its container is gone and watch exits non-zero', async () => {
    const token = await api.token();
    const runId = await startRun(token, ['sleep', '60']);
    await poll(
      async () =>
        (await (
          await fetch(`${api.url}/v1/runs/${runId}`, { headers: { authorization: `Bearer ${token}` } })
        ).json()) as RunView,
      (v) => v.status === 'running',
      60_000,
    );
    const out: string[] = [];
    const envs = { CHOIROS_API_URL: api.url, CHOIROS_TOKEN: token };
    expect(await cli(['runs', 'cancel', runId], envs, (l) => out.push(l))).toBe(0);
    expect(await cli(['runs', 'watch', runId], envs, (l) => out.push(l))).toBe(1);
    expect(out.join('\n')).toMatch(/run\.completed cancelled/);
    const view = await waitDone(runId);
    expect(view.status).toBe('cancelled');
    const containers = await new Docker().listContainers({
      all: true,
      filters: { label: [`choiros.run-id=${runId}`] },
    });
    expect(containers).toEqual([]);
    expect((await api.client.workflow.getHandle(runId).describe()).status.name).toBe('CANCELLED');
  });
});
