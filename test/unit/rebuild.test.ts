/**
 * Self-rebuild without services: .dockerignore semantics, rebuild ids and templates, target
 * validation, the rebuild scopes in the policy, and the HTTP routes over a fake rebuild service.
 */
import { join } from 'node:path';
import pino from 'pino';
import request from 'supertest';
import {
  AppError,
  expandTemplate,
  parseRebuildId,
  rebuildIdOf,
  rebuildRefAllowed,
  rebuildTargetSchema,
  type Principal,
  type RebuildRequest,
  type RebuildView,
} from '../../contracts';
import { createApp } from '../../api/app';
import { authorize } from '../../api/auth/policy';
import type { RebuildService } from '../../api/rebuilds/service';
import { loadRebuildTargets } from '../../api/rebuilds/targets';
import { isIgnored, parseDockerignore } from '../../activities/images/dockerignore';
import { emptyEventSource, fakeRunService, oneVerifierCatalog, testTokenVerifier } from '../helpers/fakes';
import { TestIssuer, makeKey, type TestKey } from '../helpers/jwks-server';

const RUN_ID = '01a2143d-2d96-7c8a-9fad-b076fb080914';

describe('.dockerignore', () => {
  const rules = parseDockerignore('# comment\n.git\nnode_modules/\n**/*.md\ndocs\n!docs/keep.txt\n/dist\n');
  test.each([
    ['.git/config', true],
    ['node_modules/x/index.js', true],
    ['README.md', true],
    ['api/notes.md', true],
    ['docs/big.txt', true],
    ['docs/keep.txt', false],
    ['dist/app.js', true],
    ['api/app.ts', false],
    ['infra/Dockerfile.api', false],
  ])('when the context holds %s, then ignored is %s', (path, ignored) => {
    expect(isIgnored(rules, path)).toBe(ignored);
  });
});

describe('rebuild ids and templates', () => {
  test('when a rebuild id is made from a target and a run id, then it parses back and is a strict id', () => {
    const id = rebuildIdOf('choiros', RUN_ID);
    expect(id).toMatch(/^[A-Za-z0-9_-]{1,64}$/);
    expect(parseRebuildId(id)).toEqual({ target: 'choiros', runId: RUN_ID });
    expect(parseRebuildId(rebuildIdOf('a-23-characters-target0', RUN_ID))?.target).toBe(
      'a-23-characters-target0',
    );
  });

  test.each(['run-abc', 'rb_choiros_not-a-uuid', `rb_Choiros_${RUN_ID}`, `rb_choiros_${RUN_ID}x`])(
    'when %s is given as a rebuild id, then it is refused',
    (id) => {
      expect(parseRebuildId(id)).toBeUndefined();
    },
  );

  test('when a config string names the commit and an image, then both are filled in', () => {
    expect(
      expandTemplate('{{image:sandbox}} @ {{commit}} {{image:other}}', {
        commit: 'abc',
        images: { sandbox: 'choiros-sandbox:abc' },
      }),
    ).toBe('choiros-sandbox:abc @ abc {{image:other}}');
  });
});

describe('rebuild targets', () => {
  const target = {
    name: 'choiros',
    repo: '/srv/choiros',
    images: [{ name: 'api', image: 'choiros-api', dockerfile: 'infra/Dockerfile.api' }],
  };

  test('when a target is minimal, then defaults fill in (noop deployer, no suites, context ".")', () => {
    const t = rebuildTargetSchema.parse(target);
    expect(t).toMatchObject({ deployer: 'noop', suites: [], services: [] });
    expect(t.images[0]?.context).toBe('.');
  });

  test.each([
    [
      'a service naming an unknown image',
      { services: [{ name: 'api', image: 'nope', container: 'c', containerPort: 1, hostPort: 2 }] },
    ],
    [
      'a Dockerfile path escaping the repository',
      { images: [{ name: 'api', image: 'x', dockerfile: '../Dockerfile' }] },
    ],
    ['an upper-case target name', { name: 'Choiros' }],
    [
      'a start-first service with a published port',
      {
        services: [
          { name: 'w', image: 'api', container: 'c', containerPort: 1, hostPort: 2, strategy: 'start-first' },
        ],
      },
    ],
    [
      'a port without its host port',
      { services: [{ name: 'w', image: 'api', container: 'c', containerPort: 1 }] },
    ],
    ['a relative repository', { repo: 'srv/choiros' }],
    ['an image name with a tag', { images: [{ name: 'api', image: 'x:latest', dockerfile: 'D' }] }],
    [
      'a docker-deployed service without a container name',
      { deployer: 'docker', services: [{ name: 'api', image: 'api' }] },
    ],
  ])('when a target has %s, then it is refused', (_what, patch) => {
    expect(rebuildTargetSchema.safeParse({ ...target, ...patch }).success).toBe(false);
  });

  test('when the compose stack loads its targets file, then choiros deploys api stop-first, then worker start-first, with the compose deployer', async () => {
    const targets = await loadRebuildTargets(join(__dirname, '../../infra/compose/rebuild-targets.yaml'));
    const t = targets.get('choiros');
    expect(t).toMatchObject({ deployer: 'compose', repo: '/srv/choiros/platform' });
    expect(t?.services.map((s) => [s.name, s.image, s.strategy, s.container])).toEqual([
      ['api', 'api', 'stop-first', undefined],
      ['worker', 'worker', 'start-first', undefined],
    ]);
    // The same suites and images as the development target (infra/rebuild-targets.yaml).
    const dev = (await loadRebuildTargets(join(__dirname, '../../infra/rebuild-targets.yaml'))).get(
      'choiros',
    );
    expect(t?.suites).toEqual(dev?.suites);
    expect(t?.images).toEqual(dev?.images);
    expect(dev?.deployer).toBe('noop');
  });
});

describe('rebuild policy', () => {
  const p = (scope: string): Principal => ({ userId: 'u', tenant: 't', scopes: scope.split(' ') });
  test('when a token holds rebuild:write, then it starts and reads but cannot decide', () => {
    expect(authorize(p('rebuild:write'), 'rebuilds.start')).toBe('allow');
    expect(authorize(p('rebuild:write'), 'rebuilds.read')).toBe('allow');
    expect(authorize(p('rebuild:write'), 'rebuilds.decide')).toBe('forbidden');
  });
  test('when a token holds rebuild:approve, then it reads and decides but cannot start', () => {
    expect(authorize(p('rebuild:approve'), 'rebuilds.read')).toBe('allow');
    expect(authorize(p('rebuild:approve'), 'rebuilds.decide')).toBe('allow');
    expect(authorize(p('rebuild:approve'), 'rebuilds.start')).toBe('forbidden');
  });
  test('when a token holds run scopes only, then every rebuild action is forbidden', () => {
    for (const a of ['rebuilds.start', 'rebuilds.read', 'rebuilds.decide'] as const)
      expect(authorize(p('runs:write runs:read'), a)).toBe('forbidden');
  });
});

function buildRebuildView(overrides: Partial<RebuildView> = {}): RebuildView {
  return {
    rebuildId: rebuildIdOf('choiros', RUN_ID),
    target: 'choiros',
    ref: 'main',
    stage: 'resolving',
    requestedBy: { tenant: 'acme', userId: 'alice' },
    createdAt: new Date(0).toISOString(),
    verify: [],
    images: [],
    deploy: [],
    stageMs: {},
    events: { emitted: 0, published: 0 },
    ...overrides,
  };
}

/** A rebuild service with one running rebuild of `choiros`; a second start is a conflict. */
function fakeRebuildService(): RebuildService & { started: RebuildRequest[] } {
  const started: RebuildRequest[] = [];
  const view = buildRebuildView();
  return {
    started,
    start(_principal, req) {
      if (req.target !== 'choiros')
        return Promise.reject(new AppError('unknown_target', `no target ${req.target}`));
      if (started.length > 0)
        return Promise.reject(
          new AppError('rebuild_in_progress', `rebuild ${view.rebuildId} of target choiros is still running`),
        );
      started.push(req);
      return Promise.resolve(view);
    },
    deployed: (_p, target) =>
      target === 'choiros'
        ? Promise.resolve({
            target,
            rebuildId: view.rebuildId,
            commit: 'c'.repeat(40),
            deployedAt: new Date(0).toISOString(),
            services: [{ service: 'api', image: `choiros-api:${'c'.repeat(40)}`, imageId: 'sha256:abc' }],
          })
        : Promise.reject(new AppError('unknown_target', `no target ${target}`)),
    get: (_p, id) =>
      id === view.rebuildId
        ? Promise.resolve(view)
        : Promise.reject(new AppError('not_found', `rebuild ${id} does not exist`)),
    decide: (p, id, decision, reason) =>
      id === view.rebuildId
        ? Promise.resolve({
            ...view,
            stage: 'awaiting_approval',
            approval: {
              decision,
              by: p.userId,
              at: new Date(0).toISOString(),
              ...(reason ? { reason } : {}),
            },
          })
        : Promise.reject(new AppError('not_found', 'no')),
  };
}

describe('rebuild routes', () => {
  let issuer: TestIssuer;
  let key: TestKey;
  beforeAll(async () => {
    issuer = await new TestIssuer().start();
    key = await makeKey('ES256');
    issuer.published = [key];
  });
  afterAll(async () => {
    await issuer.stop();
  });

  const build = (rebuilds?: RebuildService) =>
    createApp({
      verifyToken: testTokenVerifier(issuer.url),
      runs: fakeRunService(),
      ...(rebuilds ? { rebuilds } : {}),
      verifiers: oneVerifierCatalog(),
      readiness: [],
      events: emptyEventSource,
      logger: pino({ level: 'silent' }),
    });
  const token = (scope: string) => issuer.sign(key, { claims: { scope } });

  test('when a release manager starts a rebuild, then 201 with Location, and a second start is 409 rebuild_in_progress naming the first', async () => {
    const svc = fakeRebuildService();
    const app = build(svc);
    const auth = `Bearer ${await token('rebuild:write')}`;
    const first = await request(app).post('/v1/rebuilds').set('authorization', auth).send({ ref: 'main' });
    expect(first.status).toBe(201);
    expect(first.headers.location).toBe(`/v1/rebuilds/${rebuildIdOf('choiros', RUN_ID)}`);
    expect(svc.started).toEqual([{ target: 'choiros', ref: 'main' }]);
    const second = await request(app).post('/v1/rebuilds').set('authorization', auth).send({});
    expect(second.status).toBe(409);
    expect(second.headers['content-type']).toContain('application/problem+json');
    expect(second.body).toMatchObject({ code: 'rebuild_in_progress', status: 409 });
    expect(second.body.detail).toContain(rebuildIdOf('choiros', RUN_ID));
  });

  test('when the request is malformed, then 400 naming the field; an unknown target is 400 unknown_target', async () => {
    const app = build(fakeRebuildService());
    const auth = `Bearer ${await token('rebuild:write')}`;
    const bad = await request(app)
      .post('/v1/rebuilds')
      .set('authorization', auth)
      .send({ ref: '--upload-pack=x', extra: 1 });
    expect(bad.status).toBe(400);
    const errors = (bad.body as { errors: { field: string }[] }).errors;
    expect(errors.map((e) => e.field).sort()).toEqual(['(body)', 'ref']);
    const unknown = await request(app)
      .post('/v1/rebuilds')
      .set('authorization', auth)
      .send({ target: 'nope' });
    expect(unknown.status).toBe(400);
    expect(unknown.body.code).toBe('unknown_target');
  });

  test('when a token lacks rebuild:approve, then approve is 403; with it, the decision is recorded', async () => {
    const app = build(fakeRebuildService());
    const id = rebuildIdOf('choiros', RUN_ID);
    const denied = await request(app)
      .post(`/v1/rebuilds/${id}/approve`)
      .set('authorization', `Bearer ${await token('rebuild:write runs:write')}`);
    expect(denied.status).toBe(403);
    const ok = await request(app)
      .post(`/v1/rebuilds/${id}/reject`)
      .set('authorization', `Bearer ${await token('rebuild:approve')}`)
      .send({ reason: 'not today' });
    expect(ok.status).toBe(200);
    expect(ok.body.approval).toMatchObject({ decision: 'reject', by: 'alice', reason: 'not today' });
  });

  test('when a run-only token reads a rebuild, then 403; an unknown rebuild is 404', async () => {
    const app = build(fakeRebuildService());
    const id = rebuildIdOf('choiros', RUN_ID);
    const runOnly = await request(app)
      .get(`/v1/rebuilds/${id}`)
      .set('authorization', `Bearer ${await token('runs:read')}`);
    expect(runOnly.status).toBe(403);
    const missing = await request(app)
      .get(`/v1/rebuilds/${rebuildIdOf('other', RUN_ID)}`)
      .set('authorization', `Bearer ${await token('rebuild:approve')}`);
    expect(missing.status).toBe(404);
  });

  test('when a release manager asks what a target runs, then its deployed commit and image ids; a run-only token is 403', async () => {
    const app = build(fakeRebuildService());
    const ok = await request(app)
      .get('/v1/rebuild-targets/choiros/deployed')
      .set('authorization', `Bearer ${await token('rebuild:approve')}`);
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({
      target: 'choiros',
      services: [{ service: 'api', imageId: 'sha256:abc' }],
    });
    const denied = await request(app)
      .get('/v1/rebuild-targets/choiros/deployed')
      .set('authorization', `Bearer ${await token('runs:read')}`);
    expect(denied.status).toBe(403);
    const bad = await request(app)
      .get('/v1/rebuild-targets/no.such/deployed')
      .set('authorization', `Bearer ${await token('rebuild:approve')}`);
    expect(bad.status).toBe(400);
  });

  test('when the gateway has no rebuild service, then the routes answer 503', async () => {
    const res = await request(build())
      .post('/v1/rebuilds')
      .set('authorization', `Bearer ${await token('rebuild:write')}`)
      .send({});
    expect(res.status).toBe(503);
  });
});

describe('rebuild refs', () => {
  test.each([
    [undefined, 'main', true],
    [undefined, 'choiros/run/run-1', false],
    [undefined, 'refs/heads/choiros/run/run-1', false],
    [undefined, 'heads/choiros/run/run-1', false],
    [['main', 'release/*'], 'main', true],
    [['main', 'release/*'], 'refs/heads/release/1.2', true],
    [['main', 'release/*'], 'release/1.2/hotfix', false],
    [['main', 'release/*'], 'feature/x', false],
    [['main', 'release/*'], '0123456789abcdef0123456789abcdef01234567', false],
    [['**'], 'choiros/run/run-1', false],
  ])('when the target allows %j, then ref %s is allowed=%s', (refs, ref, allowed) => {
    expect(rebuildRefAllowed(refs ? { refs } : {}, ref)).toBe(allowed);
  });
});
