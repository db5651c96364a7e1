/** Remote repositories (decision 0019) and the forge adapter (decision 0020): the pure and local parts. */
import { createVerify, generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import {
  credentialFor,
  parseTenantsConfig,
  pullRequestBase,
  pullRequestBody,
  repoGrant,
  type TenantsConfig,
} from '../../contracts';
import pino from 'pino';
import { createDeliveryActivities } from '../../activities/delivery/activities';
import { githubForge, ownerAndName } from '../../activities/delivery/forge';
import { createGraphBranchActivities } from '../../activities/workspace/graph-branch';
import { classifyRemoteFailure, mirrorLockPath, withMirrorLock } from '../../activities/workspace/mirror';
import { poll } from '../helpers/poll';
import { GitError } from '../../activities/workspace/git';
import { createRemoteCredentials, githubAppJwt, remoteGitEnv } from '../../tenancy';
import { startFakeGitHub, type FakeGitHub } from '../helpers/fake-github';

const config = (): TenantsConfig =>
  parseTenantsConfig(
    {
      version: 1,
      tenants: {
        acme: {
          repos: ['https://git.example.com/acme/', 'http://127.0.0.1:8080/acme/'],
          credentials: [
            { url: 'https://git.example.com/', token: 'env:WIDE' },
            { url: 'https://git.example.com/acme/', token: 'env:ACME', scheme: 'bearer' },
          ],
        },
        globex: { repos: ['https://git.example.com/globex/'] },
      },
    },
    'test',
  );

describe('grants and credentials of remote repositories', () => {
  test.each([
    ['acme', 'https://git.example.com/acme/app.git', true],
    ['acme', 'https://GIT.example.com/acme/app', true],
    ['acme', 'http://127.0.0.1:8080/acme/app.git', true],
    ['acme', 'https://git.example.com/acme-evil/app.git', false],
    ['acme', 'https://git.example.com/globex/app.git', false],
    ['acme', 'http://127.0.0.1:8081/acme/app.git', false],
    ['globex', 'https://git.example.com/acme/app.git', false],
  ])('when %s asks for %s, then allowed is %s', (tenant, repo, allowed) => {
    expect(repoGrant(config(), tenant, repo, []).allowed).toBe(allowed);
  });

  test('when several credentials cover a URL, then the longest prefix wins, and none covers a sibling prefix', () => {
    const c = config();
    expect(credentialFor(c, 'acme', 'https://git.example.com/acme/app.git')?.token).toBe('env:ACME');
    expect(credentialFor(c, 'acme', 'https://git.example.com/acme-evil/app.git')?.token).toBe('env:WIDE');
    expect(credentialFor(c, 'globex', 'https://git.example.com/acme/app.git')).toBeUndefined();
  });

  test.each([
    [{ url: 'https://h.example/', token: 'ghp_literalvalue' }, 'token'],
    [{ url: 'http://h.example/', token: 'env:X' }, 'url'],
    [{ url: 'https://u:p@h.example/', token: 'env:X' }, 'url'],
    [{ url: 'https://h.example/', token: 'env:X', scheme: 'digest' }, 'scheme'],
  ])('when a credential is %j, then the file is refused at %s', (cred, key) => {
    expect(() =>
      parseTenantsConfig({ version: 1, tenants: { acme: { repos: [], credentials: [cred] } } }, 'f.yaml'),
    ).toThrow(`tenants.acme.credentials[0].${key}`);
  });

  test('when a credential has neither or both of token and githubApp, then the file is refused', () => {
    const app = { api: 'https://api.github.com', appId: 1, installationId: 2, privateKey: 'file:/k.pem' };
    for (const cred of [
      { url: 'https://h.example/' },
      { url: 'https://h.example/', token: 'env:X', githubApp: app },
    ])
      expect(() =>
        parseTenantsConfig({ version: 1, tenants: { acme: { repos: [], credentials: [cred] } } }, 'f.yaml'),
      ).toThrow('tenants.acme.credentials[0]: needs exactly one of token and githubApp');
  });

  test('when a GitHub App JWT is made, then it is RS256 over iss/iat/exp and verifies with the public key', () => {
    const keys = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const pem = keys.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    const jwt = githubAppJwt(4242, pem, 1_000_000);
    const [h, p, sig] = jwt.split('.');
    expect(JSON.parse(Buffer.from(h ?? '', 'base64url').toString())).toEqual({ alg: 'RS256', typ: 'JWT' });
    expect(JSON.parse(Buffer.from(p ?? '', 'base64url').toString())).toEqual({
      iat: 999_940,
      exp: 1_000_540,
      iss: '4242',
    });
    expect(
      createVerify('RSA-SHA256')
        .update(`${h}.${p}`)
        .verify(keys.publicKey, Buffer.from(sig ?? '', 'base64url')),
    ).toBe(true);
  });

  test('when a reference cannot be read, then the worker stops naming the key, not a value', () => {
    expect(() => createRemoteCredentials(config(), { WIDE: 'w' }, 'f.yaml')).toThrow(
      'f.yaml: tenants.acme.credentials[1].token: the reference env:ACME is unset',
    );
  });

  test('when git needs a credential, then it gets the header through GIT_CONFIG_* env only, basic or bearer', async () => {
    const creds = createRemoteCredentials(config(), { WIDE: 'wide-secret', ACME: 'acme-secret' });
    const bearer = await creds.gitAuth('acme', 'https://git.example.com/acme/app.git');
    expect(bearer.configured).toBe(true);
    expect(bearer.env).toMatchObject({ GIT_CONFIG_KEY_3: 'http.extraHeader' });
    expect(bearer.env.GIT_CONFIG_VALUE_3).toBe('Authorization: Bearer acme-secret');
    const basic = await creds.gitAuth('acme', 'https://git.example.com/other/app.git');
    expect(basic.env.GIT_CONFIG_VALUE_3).toBe(
      `Authorization: Basic ${Buffer.from('x-access-token:wide-secret').toString('base64')}`,
    );
    const none = await creds.gitAuth('globex', 'https://git.example.com/globex/app.git');
    expect(none).toEqual({ configured: false, env: remoteGitEnv(undefined) });
    // No redirects: the header must not follow one to another host.
    expect(none.env).toMatchObject({ GIT_CONFIG_KEY_0: 'http.followRedirects', GIT_CONFIG_VALUE_0: 'false' });
  });

  test.each([
    ["fatal: Authentication failed for 'https://h/acme/app.git/'", 'repo_auth_failed'],
    ["fatal: could not read Username for 'https://h': terminal prompts disabled", 'repo_auth_failed'],
    ["fatal: unable to access 'https://h/': The requested URL returned error: 403", 'repo_auth_failed'],
    ["fatal: repository 'https://h/x.git/' not found", 'repo_not_found'],
    ["fatal: unable to access 'https://h/': Could not resolve host: h", 'repo_unreachable'],
    [
      "fatal: unable to access 'http://127.0.0.1:9/': Failed to connect to 127.0.0.1 port 9",
      'repo_unreachable',
    ],
  ])('when git says %j, then the code is %s', (stderr, code) => {
    expect(classifyRemoteFailure(new GitError('git fetch failed', 128, stderr)).code).toBe(code);
  });
});

describe('pull requests', () => {
  let fake: FakeGitHub;
  beforeAll(async () => {
    fake = await startFakeGitHub('forge-token');
  });
  afterAll(async () => {
    await fake.close();
  });

  test('when the forge opens a pull request twice for one head, then the second finds the first', async () => {
    const forge = githubForge({ api: fake.url, token: () => 'forge-token' });
    const req = {
      repo: 'https://git.example.com/acme/app.git',
      head: 'choiros/run/r1',
      base: 'main',
      title: 't',
      body: 'b',
    };
    const first = await forge.openPullRequest(req);
    expect(first).toMatchObject({ forge: 'github', number: 1, existing: false });
    expect(await forge.openPullRequest(req)).toEqual({ ...first, existing: true });
    expect(fake.pulls).toHaveLength(1);
  });

  test('when the forge refuses the token, then the step fails for good with delivery_failed', async () => {
    const forge = githubForge({ api: fake.url, token: () => 'wrong' });
    const err: unknown = await forge
      .openPullRequest({
        repo: 'https://h.example/a/b',
        head: 'choiros/run/r2',
        base: 'main',
        title: 't',
        body: '',
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect(err).toMatchObject({ type: 'delivery_failed', nonRetryable: true });
    expect((err as Error).message).not.toContain('wrong');
  });

  test('when a body is built, then it carries each verifier result with its digests and the changed paths', () => {
    const body = pullRequestBody({
      runId: 'r1',
      description: 'fix it\nmore',
      commit: 'a'.repeat(40),
      baseCommit: 'b'.repeat(40),
      verifiers: [
        {
          id: 'V-1',
          result: 'pass',
          reportDigest: 'c'.repeat(64),
          outputSha256: 'd'.repeat(64),
          log: undefined,
        },
      ],
      changedPaths: ['src/a.ts'],
    });
    expect(body).toContain(`| V-1 | pass | \`${'c'.repeat(64)}\` | \`${'d'.repeat(64)}\` |`);
    expect(body).toContain('- `src/a.ts`');
    expect(body).toContain('fix it');
    expect(body).not.toContain('more');
  });

  test.each([
    ['main', 'main'],
    ['refs/heads/release/1.2', 'release/1.2'],
    ['a'.repeat(40), 'trunk'],
    ['v1..v2', 'trunk'],
  ])('when the base ref is %s, then the pull request targets %s', (ref, base) => {
    expect(pullRequestBase(ref, 'trunk')).toBe(base);
  });

  test('when a repository URL is read for the forge, then owner and name are its last two segments', () => {
    expect(ownerAndName('https://github.com/acme/app.git')).toEqual({ owner: 'acme', name: 'app' });
    expect(() => ownerAndName('https://github.com/app')).toThrow(/owner and name/);
  });
});

describe('the mirror lock file', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'mirror-lock-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  test('when two holders want one mirror, then the second waits for the first, and no lock is left', async () => {
    const mirror = join(dir, 'm.git');
    const order: string[] = [];
    let release: () => void = () => undefined;
    const first = withMirrorLock(mirror, 60_000, async () => {
      order.push('first in');
      await new Promise<void>((r) => (release = r));
      order.push('first out');
    });
    await poll(
      async () => order.length,
      (n) => n === 1,
      5000,
      10,
    );
    const second = withMirrorLock(mirror, 60_000, async () => {
      order.push('second in');
    });
    // Give the second holder a few of its 100 ms retries: a broken lock would let it in now.
    await new Promise((r) => setTimeout(r, 350));
    expect(order).toEqual(['first in']);
    release();
    await Promise.all([first, second]);
    expect(order).toEqual(['first in', 'first out', 'second in']);
    expect(existsSync(mirrorLockPath(mirror))).toBe(false);
  });

  test('when a lock was left by a process that is gone, then it is taken over; a failing holder removes its lock', async () => {
    const mirror = join(dir, 'm.git');
    writeFileSync(mirrorLockPath(mirror), `${hostname()} 999999999 ${Date.now()}`);
    await expect(withMirrorLock(mirror, 60_000, async () => 'ran')).resolves.toBe('ran');
    await expect(
      withMirrorLock(mirror, 60_000, async () => {
        throw new Error('fetch failed');
      }),
    ).rejects.toThrow('fetch failed');
    expect(existsSync(mirrorLockPath(mirror))).toBe(false);
  });
});

describe('delivery and graph-branch activities refuse before any git runs', () => {
  const logger = pino({ level: 'silent' });
  const remote = { gitAuth: async () => ({ env: {} }), maxBytes: 1024 * 1024, timeoutMs: 1000 };

  test.each([
    [{ branch: 'main' }, 'invalid_sandbox_request'],
    [{ branch: 'choiros/run/r1', commit: 'HEAD' }, 'invalid_sandbox_request'],
    [{ repo: '/srv/local' }, 'not_delivered'],
    [{ repo: 'file:///srv/local' }, 'not_delivered'],
    [{}, 'not_delivered'], // no mirror of it on this host
  ])('when a delivery names %j, then it fails %s for good', async (override, type) => {
    const acts = createDeliveryActivities({ mirrorRoot: join(tmpdir(), 'no-mirrors-here'), remote, logger });
    await expect(
      acts.deliverBranch({
        tenant: 'acme',
        repo: 'https://git.example.com/acme/app.git',
        branch: 'choiros/run/r1',
        commit: 'a'.repeat(40),
        ...override,
      }),
    ).rejects.toMatchObject({ type, nonRetryable: true });
  });

  test('when a graph on a remote repository names no tenant, then its branch is refused for good', async () => {
    const acts = createGraphBranchActivities({ logger, mirrorRoot: tmpdir(), remote });
    await expect(
      acts.prepareGraphBranch({
        graphId: 'graph-t',
        repo: 'https://git.example.com/acme/app',
        baseRef: 'main',
      }),
    ).rejects.toMatchObject({ type: 'invalid_sandbox_request', nonRetryable: true });
  });
});
