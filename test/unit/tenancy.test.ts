/**
 * Tenancy without services: the tenants file (validation with the bad key's path), the pure
 * repository-grant decision, grants on real paths (symlinks on a real file system), issuers bound
 * to tenants, token age and the roles → scopes mapping, and the operational endpoints.
 */
import { mkdtemp, mkdir, symlink, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import pino from 'pino';
import request from 'supertest';
import { createApp, createMetricsApp } from '../../api/app';
import { loadApiConfig } from '../../api/config';
import { createApiMetrics } from '../../api/metrics';
import type { RunEventSource } from '../../api/events/source';
import { StreamLimiter } from '../../api/stream-limit';
import { issuersForTenant, repoGrant, type EventEnvelope, type TenantsConfig } from '../../contracts';
import {
  DEFAULT_TENANTS_FILE,
  PLATFORM_ROOT,
  assertRepoAllowed,
  createRepoAccess,
  loadTenantsFile,
  parseTenantsFile,
} from '../../tenancy';
import { emptyEventSource, fakeRunService, oneVerifierCatalog, testTokenVerifier } from '../helpers/fakes';
import { TestIssuer, makeKey, type TestKey } from '../helpers/jwks-server';
import { poll } from '../helpers/poll';

const logger = pino({ level: 'silent' });

describe('the tenants file', () => {
  test('when a grant is neither a directory prefix ending in "/" nor a URL, then the file is refused naming tenants.<t>.repos[i]', () => {
    const text = 'version: 1\ntenants:\n  acme:\n    repos: ["/srv/acme/", "/srv/globex"]\n';
    expect(() => parseTenantsFile(text, 'tenants.yaml')).toThrow(
      'tenants.acme.repos[1]: must be an absolute directory prefix ending in "/" or a URL prefix',
    );
  });

  test.each([
    ['an unknown version', 'version: 2\ntenants: {}\n', 'version:'],
    ['an unknown key', 'version: 1\ntenants:\n  acme:\n    repos: []\n    repoz: []\n', 'tenants.acme:'],
    [
      'a tenant name that is not an id',
      'version: 1\ntenants:\n  "ac.me":\n    repos: []\n',
      'tenants.ac.me:',
    ],
    ['a relative grant', 'version: 1\ntenants:\n  acme:\n    repos: ["srv/"]\n', 'tenants.acme.repos[0]:'],
    [
      'a dot-dot grant',
      'version: 1\ntenants:\n  acme:\n    repos: ["/srv/../etc/"]\n',
      'tenants.acme.repos[0]:',
    ],
    [
      'an http issuer off loopback',
      'version: 1\ntenants:\n  acme:\n    repos: []\n    issuers: ["http://login.acme.example"]\n',
      'tenants.acme.issuers[0]: must be an https URL',
    ],
    [
      'a secret given by value',
      'version: 1\ntenants:\n  acme:\n    repos: []\n    secrets: { TOKEN: "hunter2" }\n',
      'tenants.acme.secrets.TOKEN:',
    ],
    [
      'a cap of 0',
      'version: 1\ntenants:\n  acme:\n    repos: []\n    caps: { runsPerUser: 0 }\n',
      'tenants.acme.caps.runsPerUser:',
    ],
    ['not YAML', 'version: [1\n', 'not YAML'],
  ])('when the file has %s, then it is refused with %j', (_name, text, message) => {
    expect(() => parseTenantsFile(text, 'tenants.yaml')).toThrow(message);
  });

  test('when the documented default file is loaded, then tenant default may use /tmp/ and the home dir, and nothing else is configured', async () => {
    const config = await loadTenantsFile(DEFAULT_TENANTS_FILE, '/home/dev');
    expect(config.tenants).toEqual({ default: { repos: ['/tmp/', '/home/dev/'] } });
    expect(config.platform).toEqual({ operators: ['default'] });
    expect(repoGrant(config, 'default', '/home/dev/src/app', []).allowed).toBe(true);
    expect(repoGrant(config, 'default', '/srv/app', []).allowed).toBe(false);
  });

  test('when a grant starts with ~/, then it stands for the home dir of the platform user', () => {
    const config = parseTenantsFile('version: 1\ntenants:\n  t:\n    repos: ["~/code/"]\n', 'x');
    expect(config.tenants.t?.repos).toEqual([`${homedir().replace(/\/$/, '')}/code/`]);
  });

  test('when an issuer is listed for a tenant, then only it may assert the tenant; otherwise only the primary issuer; an unknown tenant has none', () => {
    const config = parseTenantsFile(
      'version: 1\ntenants:\n  acme:\n    repos: []\n    issuers: ["https://login.acme.example"]\n  globex:\n    repos: []\n',
      'x',
    );
    expect(issuersForTenant(config, 'acme', 'https://primary.example')).toEqual([
      'https://login.acme.example',
    ]);
    expect(issuersForTenant(config, 'globex', 'https://primary.example')).toEqual([
      'https://primary.example',
    ]);
    expect(issuersForTenant(config, 'initech', 'https://primary.example')).toBeUndefined();
    expect(issuersForTenant(config, 'constructor', 'https://primary.example')).toBeUndefined();
  });
});

describe('repoGrant (pure)', () => {
  const config: TenantsConfig = {
    version: 1,
    tenants: {
      acme: { repos: ['/srv/acme/', 'file:///srv/git/acme/', 'https://git.example.com/acme/'] },
      globex: { repos: ['/srv/globex/', '/'] },
    },
  };
  const platform = ['/srv/choiros/data', '/opt/choiros'];

  test.each([
    ['/srv/acme/app', 'acme', true, undefined],
    ['/srv/acme', 'acme', false, 'no_grant'], // the grant is the directory's contents, not the directory
    ['/srv/acme-evil/app', 'acme', false, 'no_grant'], // prefix of a name is not a prefix of a path
    ['/srv/globex/app', 'acme', false, 'no_grant'], // another tenant's repository
    ['/srv/acme/../globex/app', 'acme', false, 'invalid_repo'],
    ['file:///srv/git/acme/app.git', 'acme', true, undefined],
    ['file:///srv/acme/app', 'acme', true, undefined], // a file URL is a local path: path grants apply
    ['file:///srv/git/globex/app', 'acme', false, 'no_grant'],
    ['https://GIT.example.com/acme/app.git', 'acme', true, undefined],
    ['https://git.example.com/acme-evil/app', 'acme', false, 'no_grant'],
    ['https://user:pw@git.example.com/acme/app', 'acme', false, 'invalid_repo'],
    ['https://git.example.com/acme/../globex/app', 'acme', false, 'invalid_repo'],
    ['/srv/acme/app', 'initech', false, 'unknown_tenant'],
    ['/srv/acme/app', '__proto__', false, 'unknown_tenant'],
    // The platform's own paths, even under a grant (globex holds "/"), and any repository around them.
    ['/srv/choiros/data/worktrees/run-1', 'globex', false, 'platform_path'],
    ['/opt/choiros', 'globex', false, 'platform_path'],
    ['/srv/choiros', 'globex', false, 'platform_path'],
    ['/opt/choiros-other/app', 'globex', true, undefined],
  ])('when %s is asked for tenant %s, then allowed=%s (%s)', (repo, tenant, allowed, reason) => {
    const d = repoGrant(config, tenant, repo, platform);
    expect(d.allowed).toBe(allowed);
    if (!d.allowed) expect(d.reason).toBe(reason);
  });
});

describe('grants on real paths', () => {
  let root: string;
  let access: ReturnType<typeof createRepoAccess>;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'choiros-grants-'));
    for (const d of ['acme/app', 'globex/secret', 'data/worktrees/run-1'])
      await mkdir(join(root, d), { recursive: true });
    await symlink(join(root, 'globex/secret'), join(root, 'acme/escape'));
    await symlink(join(root, 'data/worktrees'), join(root, 'acme/into-data'));
    await symlink(PLATFORM_ROOT, join(root, 'acme/into-checkout'));
    await symlink(join(root, 'acme'), join(root, 'acme-link'));
    access = createRepoAccess({
      config: {
        version: 1,
        tenants: {
          acme: { repos: [`${root}/acme/`, `${root}/acme-link/`, `file://${root}/acme/`] },
          globex: { repos: [`${root}/globex/`] },
        },
      },
      platformPaths: [join(root, 'data')],
    });
  });

  test.each([
    ['acme/app', true, undefined],
    ['acme/escape', false, 'no_grant'], // a symlink out of the grant, into another tenant's repository
    ['acme/into-data/run-1', false, 'platform_path'],
    ['acme/into-checkout', false, 'platform_path'],
    ['acme-link/app', true, undefined], // a grant written through a symlink covers what it points at
    ['acme/not-yet', true, undefined], // missing: judged as written; the worker reports repo_not_found
    ['data/worktrees/run-1', false, 'platform_path'],
  ])('when acme asks for <root>/%s, then allowed=%s (%s)', async (rel, allowed, reason) => {
    const d = await access.check('acme', join(root, rel));
    expect(d.allowed).toBe(allowed);
    if (!d.allowed) expect(d.reason).toBe(reason);
  });

  test('when a file:// URL leads through a symlink out of the grant, then it is refused like the path', async () => {
    expect((await access.check('acme', `file://${root}/acme/app`)).allowed).toBe(true);
    expect(await access.check('acme', `file://${root}/acme/escape`)).toMatchObject({
      allowed: false,
      reason: 'no_grant',
    });
  });

  test('when an activity asserts a refused repository, then it throws the non-retryable repo_not_allowed failure', async () => {
    await expect(assertRepoAllowed(access, 'acme', join(root, 'acme/app'))).resolves.toBeUndefined();
    const err = await assertRepoAllowed(access, 'acme', join(root, 'acme/escape')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect(err).toMatchObject({ type: 'repo_not_allowed', nonRetryable: true });
    expect((err as Error).message).not.toContain(root);
  });

  test("when the platform's checkout is under a grant, then it is refused all the same", async () => {
    const wide = createRepoAccess({
      config: { version: 1, tenants: { t: { repos: ['/'] } } },
      platformPaths: [],
    });
    expect(await wide.check('t', PLATFORM_ROOT)).toMatchObject({ allowed: false, reason: 'platform_path' });
    expect(await wide.check('t', join(PLATFORM_ROOT, 'contracts'))).toMatchObject({
      allowed: false,
      reason: 'platform_path',
    });
  });
});

describe('issuers bound to tenants, token age, roles', () => {
  let primary: TestIssuer;
  let other: TestIssuer;
  let key: TestKey;
  beforeAll(async () => {
    key = await makeKey('ES256');
    primary = await new TestIssuer().start();
    other = await new TestIssuer().start();
    primary.published = [key];
    other.published = [key];
  });
  afterAll(async () => {
    await primary.stop();
    await other.stop();
  });

  const tenants = (): TenantsConfig => ({
    version: 1,
    tenants: { acme: { repos: [] }, globex: { repos: [], issuers: [other.url] } },
  });
  const appWith = (extra: Parameters<typeof testTokenVerifier>[1] = {}) =>
    createApp({
      verifyToken: testTokenVerifier(primary.url, {
        issuers: [
          { issuer: primary.url, audience: 'choiros-api' },
          { issuer: other.url, audience: 'choiros-api' },
        ],
        tenantIssuers: (t) => issuersForTenant(tenants(), t, primary.url),
        ...extra,
      }),
      runs: fakeRunService({ owner: null }),
      verifiers: oneVerifierCatalog(),
      readiness: [],
      events: emptyEventSource,
      logger,
    });
  const get = async (token: string) =>
    request(appWith()).get('/v1/runs/run-abc').set('authorization', `Bearer ${token}`);

  test("when a token's issuer may not assert the tenant it names, then 401 exactly like any bad token", async () => {
    const ok = await get(await primary.sign(key, { claims: { tenant: 'acme' } }));
    expect(ok.status).toBe(200);
    const wrongIssuer = await get(await other.sign(key, { claims: { tenant: 'acme' } }));
    const unknownTenant = await get(await primary.sign(key, { claims: { tenant: 'initech' } }));
    const primaryForGlobex = await get(await primary.sign(key, { claims: { tenant: 'globex' } }));
    const expired = await get(
      await primary.sign(key, { claims: { tenant: 'acme' }, exp: Math.floor(Date.now() / 1000) - 3600 }),
    );
    for (const res of [wrongIssuer, unknownTenant, primaryForGlobex]) {
      expect(res.status).toBe(401);
      expect(res.body).toEqual(expired.body);
      expect(res.headers['www-authenticate']).toBe(expired.headers['www-authenticate']);
    }
    expect((await get(await other.sign(key, { claims: { tenant: 'globex' } }))).status).toBe(200);
  });

  test('when a maximum token age is set, then an older token (or one without iat) is refused with 401', async () => {
    const app = appWith({ maxTokenAgeSeconds: 300 });
    const old = await primary.sign(key, { claims: { iat: Math.floor(Date.now() / 1000) - 600 } });
    const fresh = await primary.sign(key);
    expect((await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${fresh}`)).status).toBe(
      200,
    );
    expect((await request(app).get('/v1/runs/run-abc').set('authorization', `Bearer ${old}`)).status).toBe(
      401,
    );
  });

  test('when a token carries roles, then exactly the configured scopes are granted; an unknown role grants nothing', async () => {
    const app = appWith({ roleScopes: { viewer: ['runs:read'] } });
    const as = async (roles: string[]) =>
      request(app)
        .get('/v1/runs/run-abc')
        .set('authorization', `Bearer ${await primary.sign(key, { claims: { scope: '', roles } })}`);
    expect((await as(['viewer'])).status).toBe(200);
    expect((await as(['runs:read'])).status).toBe(403); // not in this mapping
    expect((await as(['admin'])).status).toBe(403);
  });

  test('when an issuer or JWKS URL is plain http off loopback, then the verifier and the API config refuse it', () => {
    expect(() =>
      testTokenVerifier('http://login.example.com', {
        issuers: [{ issuer: 'http://login.example.com', audience: 'a' }],
      }),
    ).toThrow(/https/);
    expect(() => loadApiConfig({ AUTH_ISSUER: 'http://login.example.com' })).toThrow(
      /AUTH_ISSUER: must be an https URL/,
    );
    expect(() =>
      loadApiConfig({
        AUTH_ISSUER: 'https://login.example.com',
        AUTH_JWKS_URL: 'http://keys.example.com/jwks',
      }),
    ).toThrow(/AUTH_JWKS_URL/);
    expect(loadApiConfig({ AUTH_ISSUER: 'http://127.0.0.1:8091' }).AUTH_ISSUER).toBe('http://127.0.0.1:8091');
  });
});

describe('operational endpoints', () => {
  const base = {
    verifyToken: testTokenVerifier('https://issuer.invalid'),
    runs: fakeRunService(),
    verifiers: oneVerifierCatalog(),
    events: emptyEventSource,
    logger,
  };

  test('when a dependency is down, then /readyz says which is not ready and never its error text', async () => {
    const app = createApp({
      ...base,
      readiness: [
        {
          name: 'temporal',
          check: () => Promise.reject(new Error('connect ECONNREFUSED 10.1.2.3:7233 secret-host')),
        },
        { name: 'nats', check: async () => undefined },
      ],
    });
    const res = await request(app).get('/readyz');
    expect(res.status).toBe(503);
    expect(res.body).toEqual({
      status: 'not_ready',
      checks: { temporal: { ok: false }, nats: { ok: true } },
    });
    expect(res.text).not.toMatch(/ECONNREFUSED|10\.1\.2\.3|secret-host/);
  });

  test('when a metrics token is configured, then /metrics needs it; with a listener of its own, the API port has no /metrics', async () => {
    const metrics = createApiMetrics({ defaultMetrics: false });
    const token = 'metrics-token-0123456789';
    const guarded = createApp({
      ...base,
      readiness: [],
      metrics,
      metricsEndpoint: { onApiPort: true, token },
    });
    expect((await request(guarded).get('/metrics')).status).toBe(401);
    expect((await request(guarded).get('/metrics').set('authorization', 'Bearer wrong')).status).toBe(401);
    const ok = await request(guarded).get('/metrics').set('authorization', `Bearer ${token}`);
    expect(ok.status).toBe(200);
    expect(ok.text).toContain('choiros_api_requests_total');

    const api = createApp({ ...base, readiness: [], metrics, metricsEndpoint: { onApiPort: false } });
    expect((await request(api).get('/metrics')).status).toBe(404);
    const own = createMetricsApp({ metrics });
    expect((await request(own).get('/metrics')).status).toBe(200);
    expect((await request(own).get('/v1/runs')).status).toBe(404);
  });
});

describe('event streams per principal', () => {
  test('when a principal holds its cap of open streams, then one more is 429; closing one frees a slot; another principal is not affected', async () => {
    const issuer = await new TestIssuer().start();
    const key = await makeKey('ES256');
    issuer.published = [key];
    // A live run with no new events: each stream stays open until its client goes away.
    const waiting: RunEventSource = {
      stream: (_o, _r, _a, signal) => ({
        [Symbol.asyncIterator]: () => ({
          next: () =>
            new Promise<IteratorResult<EventEnvelope>>((resolve) =>
              signal.addEventListener('abort', () => resolve({ done: true, value: undefined }), {
                once: true,
              }),
            ),
        }),
      }),
    };
    const app = createApp({
      verifyToken: testTokenVerifier(issuer.url),
      runs: fakeRunService({ owner: null }),
      verifiers: oneVerifierCatalog(),
      readiness: [],
      events: waiting,
      streamLimiter: new StreamLimiter((p) => (p.tenant === 'acme' ? 2 : 5)),
      logger,
    });
    const server = app.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const { port } = server.address() as AddressInfo;
    const open = async (sub: string) => {
      const abort = new AbortController();
      const res = await fetch(`http://127.0.0.1:${port}/v1/runs/run-abc/events`, {
        headers: { authorization: `Bearer ${await issuer.sign(key, { claims: { sub } })}` },
        signal: abort.signal,
      });
      return {
        status: res.status,
        body: res.status === 200 ? undefined : await res.json(),
        close: () => abort.abort(),
      };
    };
    try {
      const a1 = await open('alice');
      const a2 = await open('alice');
      const a3 = await open('alice');
      const b1 = await open('bob');
      expect([a1.status, a2.status, a3.status, b1.status]).toEqual([200, 200, 429, 200]);
      expect(a3.body).toMatchObject({ code: 'rate_limited' });
      a1.close();
      const again = await poll(
        async () => {
          const o = await open('alice');
          if (o.status === 200) o.close();
          return o.status;
        },
        (st) => st === 200,
        5000,
        50,
      );
      expect(again).toBe(200);
      a2.close();
      b1.close();
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await issuer.stop();
    }
  });
});

test('when a tenants file is written for a stack, then the platform accepts it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'choiros-tenants-'));
  const path = join(dir, 'tenants.yaml');
  await writeFile(path, 'version: 1\ntenants:\n  a:\n    repos: ["/tmp/"]\n    caps: { runsPerUser: 2 }\n');
  expect((await loadTenantsFile(path)).tenants.a).toEqual({ repos: ['/tmp/'], caps: { runsPerUser: 2 } });
});
