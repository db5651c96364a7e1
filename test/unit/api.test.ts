/**
 * The gateway's front door: real jose verification against a JWKS served over HTTP on loopback
 * by the dev issuer, problem+json errors, and request validation. The run service is a fake here;
 * the integration tests drive the same app against real Temporal.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, generateKeyPair, type KeyLike } from 'jose';
import pino from 'pino';
import request from 'supertest';
import { createApp } from '../../api/app';
import { emptyEventSource, fakeRunService, oneVerifierCatalog, testTokenVerifier } from '../helpers/fakes';
import {
  DEV_AUDIENCE,
  loadOrCreateDevKey,
  mintDevToken,
  serveDevIssuer,
  type DevIssuerKey,
} from '../../infra/dev-issuer/issuer';

const logger = pino({ level: 'silent' });
let key: DevIssuerKey;
let issuer: Awaited<ReturnType<typeof serveDevIssuer>>;
let app: ReturnType<typeof createApp>;
const fakeRuns = fakeRunService();
const started = fakeRuns.started;

const goodBody = {
  repo: '/srv/repo',
  baseRef: 'main',
  mood: 'CALM',
  workItem: {
    description: 'write a file',
    execute: ['sh', '-c', 'echo hi > f'],
    requiredVerifiers: ['V-1'],
    riskTier: 'low',
  },
};

beforeAll(async () => {
  key = await loadOrCreateDevKey(await mkdtemp(join(tmpdir(), 'choiros-unit-issuer-')));
  issuer = await serveDevIssuer({ key, host: '127.0.0.1', port: 0 });
  app = createApp({
    verifyToken: testTokenVerifier(issuer.issuer, { algorithms: ['ES256', 'RS256', 'EdDSA'] }),
    runs: fakeRuns,
    verifiers: oneVerifierCatalog(),
    readiness: [],
    events: emptyEventSource,
    logger,
  });
});

afterAll(async () => {
  await issuer.close();
});

const token = (claims: { sub?: string; tenant?: string; scope?: string } = {}): Promise<string> =>
  mintDevToken(
    key,
    { issuer: issuer.issuer, audience: DEV_AUDIENCE },
    { sub: 'alice', tenant: 'acme', ...claims },
  );

async function signWith(
  privateKey: KeyLike | Uint8Array,
  alg: string,
  kid: string,
  mutate: (j: SignJWT) => SignJWT,
): Promise<string> {
  const base = new SignJWT({ scope: 'runs:write runs:read', tenant: 'acme' })
    .setProtectedHeader({ alg, kid })
    .setIssuer(issuer.issuer)
    .setAudience(DEV_AUDIENCE)
    .setSubject('alice')
    .setIssuedAt();
  return mutate(base).sign(privateKey);
}

function expectProblem(res: request.Response, status: number, code: string): void {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  expect(res.body).toMatchObject({
    status,
    code,
    type: expect.stringContaining('/problems/'),
    title: expect.any(String),
    detail: expect.any(String),
  });
}

describe('authentication', () => {
  test('when no token is sent, then 401 problem+json', async () => {
    const res = await request(app).get('/v1/runs/run-abc');
    expectProblem(res, 401, 'unauthenticated');
    expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
  });

  test('when the token is expired beyond the clock tolerance, then 401', async () => {
    const t = await signWith(key.privateKey, 'ES256', key.kid, (j) =>
      j
        .setIssuedAt(Math.floor(Date.now() / 1000) - 7200)
        .setExpirationTime(Math.floor(Date.now() / 1000) - 120),
    );
    expectProblem(
      await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${t}`),
      401,
      'unauthenticated',
    );
  });

  test('when the token is signed by another key with the same kid, then 401', async () => {
    const other = await generateKeyPair('ES256');
    const t = await signWith(other.privateKey, 'ES256', key.kid, (j) => j.setExpirationTime('1h'));
    expectProblem(
      await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${t}`),
      401,
      'unauthenticated',
    );
  });

  test('when the token is signed by an unknown key, then 401', async () => {
    const other = await generateKeyPair('ES256');
    const t = await signWith(other.privateKey, 'ES256', 'some-other-kid', (j) => j.setExpirationTime('1h'));
    expectProblem(
      await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${t}`),
      401,
      'unauthenticated',
    );
  });

  test('when the token has no exp, then 401 (jose would accept it unless exp is required)', async () => {
    const t = await signWith(key.privateKey, 'ES256', key.kid, (j) => j);
    expectProblem(
      await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${t}`),
      401,
      'unauthenticated',
    );
  });

  test('when the audience or issuer is wrong, then 401', async () => {
    const wrongAud = await signWith(key.privateKey, 'ES256', key.kid, (j) =>
      j.setExpirationTime('1h').setAudience('someone-else'),
    );
    const wrongIss = await signWith(key.privateKey, 'ES256', key.kid, (j) =>
      j.setExpirationTime('1h').setIssuer('http://evil.invalid'),
    );
    for (const t of [wrongAud, wrongIss]) {
      expectProblem(
        await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${t}`),
        401,
        'unauthenticated',
      );
    }
  });

  test('when the token uses alg none or an HMAC with a guessable secret, then 401', async () => {
    const header = Buffer.from(JSON.stringify({ alg: 'none', kid: key.kid })).toString('base64url');
    const payload = Buffer.from(
      JSON.stringify({ sub: 'alice', iss: issuer.issuer, aud: DEV_AUDIENCE, exp: 9999999999 }),
    ).toString('base64url');
    expectProblem(
      await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${header}.${payload}.`),
      401,
      'unauthenticated',
    );
    const hs = await signWith(new TextEncoder().encode('x'.repeat(32)), 'HS256', key.kid, (j) =>
      j.setExpirationTime('1h'),
    );
    expectProblem(
      await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${hs}`),
      401,
      'unauthenticated',
    );
  });

  test('when the header is oversized or not a bearer token, then 401 without parsing', async () => {
    expectProblem(
      await request(app)
        .get('/v1/runs/run-abc')
        .set('authorization', `Bearer ${'a'.repeat(10_000)}`),
      401,
      'unauthenticated',
    );
    expectProblem(
      await request(app).get('/v1/runs/run-abc').set('authorization', 'Basic dXNlcjpwYXNz'),
      401,
      'unauthenticated',
    );
  });

  test('when the subject cannot be a subject token, then 401', async () => {
    expectProblem(
      await request(app)
        .get('/v1/runs/run-abc')
        .set('authorization', `Bearer ${await token({ sub: 'alice.>' })}`),
      401,
      'unauthenticated',
    );
  });

  test('when the token lacks the scope, then 403', async () => {
    const t = await token({ scope: 'runs:read' });
    expectProblem(
      await request(app).post('/v1/runs').set('authorization', `Bearer ${t}`).send(goodBody),
      403,
      'forbidden',
    );
  });

  test('when the token is valid, then the principal carries user, tenant and scopes', async () => {
    started.length = 0;
    const res = await request(app)
      .post('/v1/runs')
      .set('authorization', `Bearer ${await token()}`)
      .set('idempotency-key', 'k-1')
      .send(goodBody);
    expect(res.status).toBe(201);
    expect(res.body.runId).toBe('run-abc');
    expect(started[0]?.principal).toMatchObject({
      userId: 'alice',
      tenant: 'acme',
      scopes: expect.arrayContaining(['runs:write']),
    });
    expect(started[0]?.key).toBe('k-1');
    expect(started[0]?.request.workItem.requiredVerifiers).toEqual(['V-1']);
  });

  test('when the token has no tenant claim, then the default tenant applies', async () => {
    started.length = 0;
    const t = await mintDevToken(key, { issuer: issuer.issuer, audience: DEV_AUDIENCE }, { sub: 'carol' });
    expect(
      (await request(app).post('/v1/runs').set('authorization', `Bearer ${t}`).send(goodBody)).status,
    ).toBe(201);
    expect(started[0]?.principal.tenant).toBe('default');
  });
});

describe('request validation', () => {
  const post = async (body: unknown, type = 'application/json') =>
    request(app)
      .post('/v1/runs')
      .set('authorization', `Bearer ${await token()}`)
      .set('content-type', type)
      .send(typeof body === 'string' ? body : JSON.stringify(body));

  test('when execute is a string instead of argv, then 400 names workItem.execute', async () => {
    const res = await post({ ...goodBody, workItem: { ...goodBody.workItem, execute: 'rm -rf /' } });
    expectProblem(res, 400, 'validation_failed');
    expect(res.body.errors).toEqual(
      expect.arrayContaining([expect.objectContaining({ field: 'workItem.execute' })]),
    );
    expect(res.body.detail).toContain('workItem.execute');
  });

  test('when the repo is relative or the ref injects an option, then 400 names the fields', async () => {
    const res = await post({ ...goodBody, repo: 'relative/path', baseRef: '--upload-pack=evil' });
    expectProblem(res, 400, 'validation_failed');
    const fields = (res.body.errors as { field: string }[]).map((e) => e.field);
    expect(fields).toEqual(expect.arrayContaining(['repo', 'baseRef']));
  });

  test('when an unknown field or mood is sent, then 400 names it', async () => {
    const res = await post({ ...goodBody, mood: 'ANGRY', extra: 1 });
    expectProblem(res, 400, 'validation_failed');
    expect(res.body.detail).toMatch(/mood/);
  });

  test('when a verifier id is not in the allow-list, then 400 unknown_verifier', async () => {
    const res = await post({
      ...goodBody,
      workItem: { ...goodBody.workItem, requiredVerifiers: ['V-1', 'V-NOPE'] },
    });
    expectProblem(res, 400, 'unknown_verifier');
    expect(res.body.detail).toContain('V-NOPE');
  });

  test('when no verifier is named, then 400: a run that cannot be verified is refused', async () => {
    const res = await post({ ...goodBody, workItem: { ...goodBody.workItem, requiredVerifiers: [] } });
    expectProblem(res, 400, 'validation_failed');
  });

  test('when the body is not JSON, then 400; when not declared JSON, then 415; when too large, then 413', async () => {
    expectProblem(await post('{"repo":', 'application/json'), 400, 'validation_failed');
    expectProblem(await post('repo=/x', 'application/x-www-form-urlencoded'), 415, 'unsupported_media_type');
    const big = { ...goodBody, workItem: { ...goodBody.workItem, description: 'x'.repeat(300 * 1024) } };
    expectProblem(await post(big), 413, 'payload_too_large');
  });

  test('when the Idempotency-Key has control characters, then 400', async () => {
    const res = await request(app)
      .post('/v1/runs')
      .set('authorization', `Bearer ${await token()}`)
      .set('idempotency-key', 'a b')
      .send(goodBody);
    expectProblem(res, 400, 'validation_failed');
  });

  test("when a run id is malformed, then 400; when it is not the caller's, then 404", async () => {
    const t = await token();
    expectProblem(
      await request(app).get('/v1/runs/bad.id').set('authorization', `Bearer ${t}`),
      400,
      'validation_failed',
    );
    expectProblem(
      await request(app).get('/v1/runs/run-zzz').set('authorization', `Bearer ${t}`),
      404,
      'not_found',
    );
    expect((await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${t}`)).status).toBe(200);
  });

  test('when a route does not exist, then 404 problem+json; every response has a request id', async () => {
    const res = await request(app).get('/nope');
    expectProblem(res, 404, 'not_found');
    expect(res.headers['x-request-id']).toBeTruthy();
    expect((await request(app).get('/healthz')).body).toEqual({ status: 'ok' });
  });
});

describe('run control routes', () => {
  const send = async (path: string, body?: unknown, type = 'application/json') => {
    const req = request(app)
      .post(path)
      .set('authorization', `Bearer ${await token()}`);
    return body === undefined ? req : req.set('content-type', type).send(JSON.stringify(body));
  };

  test('when approve is posted without a body, then the decision goes through (the body is optional)', async () => {
    const res = await send('/v1/runs/run-abc/approve');
    expect(res.status).toBe(200);
    expect(res.body.result).toEqual({ outcome: 'approved', approvals: 1, quorum: 1 });
  });

  test('when approve carries an unknown field or a non-JSON body, then 400 or 415', async () => {
    expectProblem(
      await send('/v1/runs/run-abc/approve', { comment: 'ok', approver: 'mallory' }),
      400,
      'validation_failed',
    );
    expectProblem(await send('/v1/runs/run-abc/reject', 'x', 'text/plain'), 415, 'unsupported_media_type');
  });

  test('when an interrupt answer is missing or the interrupt id is malformed, then 400 names the field', async () => {
    const missing = await send('/v1/runs/run-abc/interrupts/int-1/answer', {});
    expectProblem(missing, 400, 'validation_failed');
    expect(missing.body.errors[0].field).toBe('answer');
    const bad = await send('/v1/runs/run-abc/interrupts/int.1/answer', { answer: 'proceed' });
    expectProblem(bad, 400, 'validation_failed');
    expect(bad.body.errors[0].field).toBe('interruptId');
  });

  test("when someone else's run is approved, answered or rerun, then 404", async () => {
    const bob = await token({ sub: 'bob' });
    for (const path of ['/v1/runs/run-abc/approve', '/v1/runs/run-abc/rerun']) {
      const res = await request(app).post(path).set('authorization', `Bearer ${bob}`);
      expectProblem(res, 404, 'not_found');
    }
  });

  test('when a rerun asks for an unknown mood, then 400; a token without runs:write gets 403', async () => {
    expectProblem(await send('/v1/runs/run-abc/rerun', { mood: 'ANGRY' }), 400, 'validation_failed');
    const readOnly = await token({ scope: 'runs:read' });
    const res = await request(app).post('/v1/runs/run-abc/rerun').set('authorization', `Bearer ${readOnly}`);
    expectProblem(res, 403, 'forbidden');
  });
});
