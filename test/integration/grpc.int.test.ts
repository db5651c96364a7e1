/** The gRPC API against real Temporal, NATS and Docker: start, watch to the end, read, list; other users get NOT_FOUND. */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { NatsConnection } from 'nats';
import { parseVerifierFile } from '../../contracts';
import { createJetStreamEventSource } from '../../api/events/source';
import { createGrpcServer, listenGrpc } from '../../api/grpc/server';
import { createTemporalRunService } from '../../api/runs/service';
import {
  ROOT,
  connectNats,
  env,
  logger,
  makeGitRepo,
  poll,
  startTestApi,
  startTestWorker,
  type TestApi,
  type TestWorker,
} from '../helpers/integration';
import { grpcCode, runsClient, type RunsClient } from '../helpers/grpc-client';

let api: TestApi;
let worker: TestWorker;
let nats: NatsConnection;
let server: grpc.Server;
let client: RunsClient;

beforeAll(async () => {
  worker = await startTestWorker('it-grpc');
  api = await startTestApi();
  nats = await connectNats(env.apiCreds(), 'grpc-test');
  server = createGrpcServer({
    verifyToken: api.verifyToken,
    runs: createTemporalRunService({ client: api.client, logger, repoAccess: api.repoAccess }),
    events: createJetStreamEventSource(nats),
    verifiers: parseVerifierFile(await readFile(join(ROOT, 'test/fixtures/verifiers.yaml'), 'utf8'), 'test'),
    logger,
  });
  client = runsClient(`127.0.0.1:${await listenGrpc(server, '127.0.0.1', 0)}`);
});

afterAll(async () => {
  client?.close();
  server?.forceShutdown();
  await nats?.drain();
  await api?.stop();
  await worker?.stop();
});

const status = async (p: Promise<unknown>): Promise<number> => (await grpcCode(p))[0];

test('when a run is started over gRPC and watched, then the stream carries every event to run.completed and GetRun says committed', async () => {
  const repo = await makeGitRepo();
  const token = await api.token();
  const run = await client.call<{ run_id: string }>(
    'StartRun',
    {
      request: {
        repo: repo.path,
        work_item: {
          description: 'grpc',
          execute: ['sh', '-c', 'echo ok > RESULT.txt'],
          required_verifiers: ['V-RESULT-FILE'],
        },
      },
      idempotency_key: 'grpc-1',
    },
    token,
  );
  expect(run.run_id).toMatch(/^run-/);
  const events = await client.watch({ run_id: run.run_id }, token);
  expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
  expect(events[events.length - 1]?.event_type).toBe('run.completed');
  expect(JSON.parse(String(events[events.length - 1]?.payload_json))).toMatchObject({ status: 'committed' });
  const got = await client.call<{
    status: string;
    verifiers: { id: string; result: string }[];
    branch: string;
  }>('GetRun', { run_id: run.run_id }, token);
  expect(got).toMatchObject({ status: 'committed', branch: `choiros/run/${run.run_id}` });
  expect(got.verifiers).toEqual([expect.objectContaining({ id: 'V-RESULT-FILE', result: 'pass' })]);
  const list = await client.call<{ runs: { run_id: string }[] }>('ListRuns', { page_size: 100 }, token);
  expect(list.runs.map((r) => r.run_id)).toContain(run.run_id);
  // The same key again is the same run.
  const again = await client.call<{ run_id: string }>(
    'StartRun',
    {
      request: {
        repo: repo.path,
        work_item: {
          description: 'grpc',
          execute: ['sh', '-c', 'echo ok > RESULT.txt'],
          required_verifiers: ['V-RESULT-FILE'],
        },
      },
      idempotency_key: 'grpc-1',
    },
    token,
  );
  expect(again.run_id).toBe(run.run_id);

  for (const intruder of [await api.token({ sub: 'bob' }), await api.token({ tenant: 'globex' })]) {
    expect(await status(client.call('GetRun', { run_id: run.run_id }, intruder))).toBe(grpc.status.NOT_FOUND);
    expect(await status(client.call('CancelRun', { run_id: run.run_id }, intruder))).toBe(
      grpc.status.NOT_FOUND,
    );
    expect(await status(client.watch({ run_id: run.run_id }, intruder))).toBe(grpc.status.NOT_FOUND);
    const theirs = await client.call<{ runs: { run_id: string }[] }>(
      'ListRuns',
      { page_size: 100 },
      intruder,
    );
    expect(theirs.runs.map((r) => r.run_id)).not.toContain(run.run_id);
  }
});

test('when a DEFERENTIAL run is steered over gRPC, then the interrupt answer and the approval reach the workflow and the run commits', async () => {
  const repo = await makeGitRepo();
  const token = await api.token({ sub: 'gina', tenant: 'grpc-control' });
  const run = await client.call<{ run_id: string }>(
    'StartRun',
    {
      request: {
        repo: repo.path,
        mood: 'DEFERENTIAL',
        work_item: {
          description: 'grpc control',
          execute: ['sh', '-c', 'echo ok > RESULT.txt'],
          required_verifiers: ['V-RESULT-FILE'],
        },
      },
      idempotency_key: 'grpc-control-1',
    },
    token,
  );
  type ProtoRun = {
    status: string;
    interrupts: { id: string; status: string }[];
    approval?: { requirement: string; approvers: string[]; decision: string };
  };
  const asked = await poll(
    () => client.call<ProtoRun>('GetRun', { run_id: run.run_id }, token),
    (r) => r.interrupts[0]?.status === 'open',
  );
  const answer = await client.call<{ status: string; answered_by: string }>(
    'AnswerInterrupt',
    { run_id: run.run_id, interrupt_id: asked.interrupts[0]?.id, answer: 'proceed' },
    token,
  );
  expect(answer).toMatchObject({ status: 'answered', answered_by: 'gina' });
  await poll(
    () => client.call<ProtoRun>('GetRun', { run_id: run.run_id }, token),
    (r) => r.status === 'awaiting_approval',
    120_000,
  );
  const decided = await client.call<{ outcome: string }>('ApproveRun', { run_id: run.run_id }, token);
  expect(decided.outcome).toBe('approved');
  const done = await poll(
    () => client.call<ProtoRun>('GetRun', { run_id: run.run_id }, token),
    (r) => r.status === 'committed',
    120_000,
  );
  expect(done.approval).toMatchObject({ requirement: 'owner', approvers: ['gina'], decision: 'approved' });
  // Approving again is a precondition failure with its stable code.
  expect(await grpcCode(client.call('ApproveRun', { run_id: run.run_id }, token))).toEqual([
    grpc.status.FAILED_PRECONDITION,
    'not_awaiting_approval',
  ]);
});
