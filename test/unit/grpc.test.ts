/** The gRPC front end with real jose verification and a fake run service: the bad-token table, scopes, validation. */
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { createGrpcServer, listenGrpc } from '../../api/grpc/server';
import { emptyEventSource, fakeRunService, oneVerifierCatalog, testTokenVerifier } from '../helpers/fakes';
import { badTokenCases } from '../helpers/bad-tokens';
import { grpcCode as code, runsClient, type RunsClient } from '../helpers/grpc-client';
import { TestIssuer, makeKey, type TestKey } from '../helpers/jwks-server';

const runs = fakeRunService();

let issuer: TestIssuer;
let es: TestKey;
let rs: TestKey;
let server: grpc.Server;
let client: RunsClient;

beforeAll(async () => {
  issuer = await new TestIssuer().start();
  es = await makeKey('ES256');
  rs = await makeKey('RS256');
  issuer.published = [es, rs];
  server = createGrpcServer({
    verifyToken: testTokenVerifier(issuer.url),
    runs,
    events: emptyEventSource,
    verifiers: oneVerifierCatalog(),
    logger: pino({ level: 'silent' }),
  });
  const port = await listenGrpc(server, '127.0.0.1', 0);
  client = runsClient(`127.0.0.1:${port}`);
});

afterAll(async () => {
  client.close();
  server.forceShutdown();
  await issuer.stop();
});

describe('the bad-token table over gRPC', () => {
  test('when the token is valid, then OK (the control)', async () => {
    expect(await code(client.call('GetRun', { run_id: 'run-abc' }, await issuer.sign(es)))).toEqual([
      grpc.status.OK,
      undefined,
    ]);
    expect(await code(client.call('GetRun', { run_id: 'run-abc' }, await issuer.sign(rs)))).toEqual([
      grpc.status.OK,
      undefined,
    ]);
  });

  test.each(badTokenCases(() => ({ issuer, es, rs })))(
    'when the token has %s, then UNAUTHENTICATED',
    async (_n, make) => {
      expect(await code(client.call('GetRun', { run_id: 'run-abc' }, await make()))).toEqual([
        grpc.status.UNAUTHENTICATED,
        'unauthenticated',
      ]);
    },
  );

  test('when no token is sent, then UNAUTHENTICATED; with the token on a stream, too', async () => {
    expect((await code(client.call('GetRun', { run_id: 'run-abc' })))[0]).toBe(grpc.status.UNAUTHENTICATED);
    expect((await code(client.watch({ run_id: 'run-abc' })))[0]).toBe(grpc.status.UNAUTHENTICATED);
  });
});

describe('policy and validation over gRPC', () => {
  test("when another user asks for or cancels alice's run, then NOT_FOUND", async () => {
    const bob = await issuer.sign(es, { claims: { sub: 'bob' } });
    expect(await code(client.call('GetRun', { run_id: 'run-abc' }, bob))).toEqual([
      grpc.status.NOT_FOUND,
      'not_found',
    ]);
    expect(await code(client.call('CancelRun', { run_id: 'run-abc' }, bob))).toEqual([
      grpc.status.NOT_FOUND,
      'not_found',
    ]);
    expect(await code(client.watch({ run_id: 'run-abc' }, bob))).toEqual([
      grpc.status.NOT_FOUND,
      'not_found',
    ]);
  });

  test('when the scope is missing, then PERMISSION_DENIED', async () => {
    const readOnly = await issuer.sign(es, { claims: { scope: 'runs:read' } });
    expect(await code(client.call('CancelRun', { run_id: 'run-abc' }, readOnly))).toEqual([
      grpc.status.PERMISSION_DENIED,
      'forbidden',
    ]);
  });

  test('when StartRun gets a bad request, then INVALID_ARGUMENT; a good one reaches the run service as the HTTP body would', async () => {
    const t = await issuer.sign(es);
    const bad = {
      request: {
        repo: 'relative',
        work_item: { description: 'x', execute: ['true'], required_verifiers: ['V-1'] },
      },
    };
    expect(await code(client.call('StartRun', bad, t))).toEqual([
      grpc.status.INVALID_ARGUMENT,
      'validation_failed',
    ]);
    const unknown = {
      request: {
        repo: '/srv/repo',
        work_item: { description: 'x', execute: ['true'], required_verifiers: ['V-X'] },
      },
    };
    expect(await code(client.call('StartRun', unknown, t))).toEqual([
      grpc.status.INVALID_ARGUMENT,
      'unknown_verifier',
    ]);
    runs.started.length = 0;
    const good = {
      request: {
        repo: '/srv/repo',
        work_item: { description: 'x', execute: ['sh', '-c', 'true'], required_verifiers: ['V-1'] },
      },
      idempotency_key: 'k',
    };
    const run = await client.call<{ run_id: string; status: string }>('StartRun', good, t);
    expect(run).toMatchObject({ run_id: 'run-abc', status: 'created' });
    expect(runs.started[0]?.request).toEqual({
      repo: '/srv/repo',
      baseRef: 'main',
      mood: 'CALM',
      workItem: {
        description: 'x',
        execute: ['sh', '-c', 'true'],
        requiredVerifiers: ['V-1'],
        riskTier: 'low',
        acceptanceCriteria: [],
        dependsOn: [],
      },
    });
  });
});

describe('run control over gRPC', () => {
  test('when the owner approves, rejects, answers or reruns, then the run service is asked as over HTTP', async () => {
    const t = await issuer.sign(es);
    const approved = await client.call<{ outcome: string; run: { run_id: string } }>(
      'ApproveRun',
      { run_id: 'run-abc', comment: 'ok' },
      t,
    );
    expect(approved).toMatchObject({ outcome: 'approved', run: { run_id: 'run-abc' } });
    const answered = await client.call<{ status: string; answer: string }>(
      'AnswerInterrupt',
      { run_id: 'run-abc', interrupt_id: 'int-1', answer: 'proceed' },
      t,
    );
    expect(answered).toMatchObject({ status: 'answered', answer: 'proceed' });
    const rerun = await client.call<{ run_id: string }>(
      'RerunRun',
      { run_id: 'run-abc', mood: 'SKEPTICAL' },
      t,
    );
    expect(rerun.run_id).toBe('run-abc');
  });

  test('when another user or a bad request arrives, then NOT_FOUND or INVALID_ARGUMENT naming the field', async () => {
    const bob = await issuer.sign(es, { claims: { sub: 'bob' } });
    for (const method of ['ApproveRun', 'RejectRun', 'RerunRun'] as const) {
      expect(await code(client.call(method, { run_id: 'run-abc' }, bob))).toEqual([
        grpc.status.NOT_FOUND,
        'not_found',
      ]);
    }
    const t = await issuer.sign(es);
    expect(
      await code(client.call('AnswerInterrupt', { run_id: 'run-abc', interrupt_id: 'int-1', answer: '' }, t)),
    ).toEqual([grpc.status.INVALID_ARGUMENT, 'validation_failed']);
    expect(await code(client.call('RerunRun', { run_id: 'run-abc', mood: 'ANGRY' }, t))).toEqual([
      grpc.status.INVALID_ARGUMENT,
      'validation_failed',
    ]);
    const readOnly = await issuer.sign(es, { claims: { scope: 'runs:read' } });
    expect(await code(client.call('ApproveRun', { run_id: 'run-abc' }, readOnly))).toEqual([
      grpc.status.PERMISSION_DENIED,
      'forbidden',
    ]);
  });
});
