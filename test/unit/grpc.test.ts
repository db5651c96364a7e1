/** The gRPC front end with real jose verification and a fake run service: the bad-token table, scopes, validation. */
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { AppError, VerifierCatalog, type RunView } from '../../contracts';
import { createTokenVerifier } from '../../api/auth/token-verifier';
import { createGrpcServer, listenGrpc } from '../../api/grpc/server';
import type { RunService } from '../../api/runs/service';
import { badTokenCases } from '../helpers/bad-tokens';
import { runsClient, type RunsClient } from '../helpers/grpc-client';
import { TestIssuer, makeKey, type TestKey } from '../helpers/jwks-server';

const view = {
  runId: 'run-abc',
  status: 'created',
  tenant: 'acme',
  userId: 'alice',
  mood: 'CALM',
  repo: '/srv/repo',
  baseRef: 'main',
  workItem: { id: 'wi-1', description: 'd', riskTier: 'low' },
  verifiers: [],
  createdAt: new Date(0).toISOString(),
  events: { emitted: 0, published: 0 },
} as RunView;
const started: unknown[] = [];
const runs: RunService = {
  start: (_p, req) => {
    started.push(req);
    return Promise.resolve(view);
  },
  get: (p, id) =>
    id === 'run-abc' && p.userId === 'alice'
      ? Promise.resolve(view)
      : Promise.reject(new AppError('not_found', 'x')),
  cancel: (p, id) =>
    id === 'run-abc' && p.userId === 'alice'
      ? Promise.resolve(view)
      : Promise.reject(new AppError('not_found', 'x')),
  list: () => Promise.resolve({ runs: [] }),
};

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
    verifyToken: createTokenVerifier({
      issuers: [{ issuer: issuer.url, audience: 'choiros-api' }],
      algorithms: ['ES256', 'RS256'],
      clockToleranceSeconds: 30,
      tenantClaim: 'tenant',
      defaultTenant: 'default',
      jwksCooldownMs: 60_000,
    }),
    runs,
    events: {
      stream: () => ({
        [Symbol.asyncIterator]: () => ({
          next: () => Promise.resolve({ done: true as const, value: undefined }),
        }),
      }),
    },
    verifiers: new VerifierCatalog([
      {
        id: 'V-1',
        description: 'one',
        argv: ['true'],
        timeoutSeconds: 10,
        scopes: [],
        moods: [],
        artifacts: [],
      },
    ]),
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

const code = async (p: Promise<unknown>): Promise<[number, string | undefined]> => {
  try {
    await p;
    return [grpc.status.OK, undefined];
  } catch (e) {
    const err = e as grpc.ServiceError;
    return [err.code, err.metadata?.get('choiros-error-code')[0] as string | undefined];
  }
};

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
    started.length = 0;
    const good = {
      request: {
        repo: '/srv/repo',
        work_item: { description: 'x', execute: ['sh', '-c', 'true'], required_verifiers: ['V-1'] },
      },
      idempotency_key: 'k',
    };
    const run = await client.call<{ run_id: string; status: string }>('StartRun', good, t);
    expect(run).toMatchObject({ run_id: 'run-abc', status: 'created' });
    expect(started[0]).toEqual({
      repo: '/srv/repo',
      baseRef: 'main',
      mood: 'CALM',
      workItem: {
        description: 'x',
        execute: ['sh', '-c', 'true'],
        requiredVerifiers: ['V-1'],
        riskTier: 'low',
        acceptanceCriteria: [],
      },
    });
  });
});
