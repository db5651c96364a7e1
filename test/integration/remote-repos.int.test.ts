/**
 * Remote repositories (decision 0019) and the forge adapter (decision 0020) against the real stack
 * (Temporal dev server, NATS, Docker sandboxes) and a real git server on loopback: the installed
 * git's `git http-backend` behind a small HTTP server that checks credentials
 * (test/helpers/git-server.ts), and a local fake of GitHub's pull request API.
 */
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { temporal } from '@temporalio/proto';
import type { NatsConnection } from 'nats';
import pino from 'pino';
import type { DeliveryView, EventEnvelope, RunView, TenantsConfig, WorkGraphView } from '../../contracts';
import { deriveRunId } from '../../api/runs/service';
import { main as cli } from '../../api/cli/main';
import { deliveryWorkflowId } from '../../contracts';
import { ensureMirror, mirrorLockPath, mirrorPath } from '../../activities/workspace/mirror';
import { createRemoteCredentials } from '../../tenancy';
import {
  connectNats,
  env,
  poll,
  startTestApi,
  startTestWorker,
  type TestApi,
  type TestWorker,
} from '../helpers/integration';
import { startGitServer, type GitServer } from '../helpers/git-server';
import { startFakeGitHub, type FakeGitHub } from '../helpers/fake-github';
import { apiClient, readRunEvents, recordHistory } from '../helpers/runs';

const ACME_TOKEN = `acme-git-token-${randomUUID()}`;
const WRONG_TOKEN = `wrong-git-token-${randomUUID()}`;
const FORGE_TOKEN = `acme-forge-token-${randomUUID()}`;
/** hooli reaches the server as a GitHub App: the fake mints this installation token for its JWT. */
const APP_INSTALLATION_TOKEN = `ghs_${randomUUID().replace(/-/g, '')}`;
const APP_KEYS = generateKeyPairSync('rsa', { modulusLength: 2048 });
const APP_PRIVATE_KEY = APP_KEYS.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
/** Every form a credential could leak in: the tokens and the basic-auth header value. */
const SECRETS = [
  ACME_TOKEN,
  WRONG_TOKEN,
  FORGE_TOKEN,
  Buffer.from(`x-access-token:${ACME_TOKEN}`).toString('base64'),
  APP_INSTALLATION_TOKEN,
  Buffer.from(`x-access-token:${APP_INSTALLATION_TOKEN}`).toString('base64'),
  APP_PRIVATE_KEY.split('\n')[1] ?? 'no key line',
];

let server: GitServer;
let forge: FakeGitHub;
let worker: TestWorker;
let api: TestApi;
let nats: NatsConnection;
let client: ReturnType<typeof apiClient>;
const logLines: string[] = [];
/** acme's run that failed before committing (ref_not_found): nothing to deliver. */
let failedRunId = '';
const capture = (): pino.Logger =>
  pino(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        logLines.push(chunk.toString('utf8'));
        cb();
      },
    }),
  );
/** Runs started by the tests, whose events, views and histories the leak check reads. */
const started: { runId: string; tenant: string; userId: string; token: string }[] = [];

beforeAll(async () => {
  server = await startGitServer({
    tokens: { [ACME_TOKEN]: 'acme-bot', [APP_INSTALLATION_TOKEN]: 'hooli-app' },
    workDir: env.workDir(),
  });
  forge = await startFakeGitHub(FORGE_TOKEN, [
    {
      appId: '4242',
      installationId: 77,
      publicKeyPem: APP_KEYS.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
      installationToken: APP_INSTALLATION_TOKEN,
    },
  ]);
  const keyFile = join(await mkdtemp(join(env.workDir(), 'app-key-')), 'hooli-app.pem');
  await writeFile(keyFile, APP_PRIVATE_KEY, { mode: 0o600 });
  process.env.CHOIROS_TEST_ACME_GIT_TOKEN = ACME_TOKEN;
  process.env.CHOIROS_TEST_WRONG_GIT_TOKEN = WRONG_TOKEN;
  process.env.CHOIROS_TEST_ACME_FORGE_TOKEN = FORGE_TOKEN;
  const tenants: TenantsConfig = {
    version: 1,
    tenants: {
      acme: {
        repos: [`${env.workDir()}/`, `${server.url}/acme/`],
        credentials: [
          {
            url: `${server.url}/acme/`,
            token: 'env:CHOIROS_TEST_ACME_GIT_TOKEN',
            scheme: 'basic',
            username: 'x-access-token',
          },
        ],
        forge: {
          type: 'github',
          api: forge.url,
          token: 'env:CHOIROS_TEST_ACME_FORGE_TOKEN',
          defaultBase: 'main',
        },
      },
      // Granted the repository, but its credential is not one the server knows.
      initech: {
        repos: [`${server.url}/acme/`],
        credentials: [
          {
            url: `${server.url}/`,
            token: 'env:CHOIROS_TEST_WRONG_GIT_TOKEN',
            scheme: 'bearer',
            username: 'x-access-token',
          },
        ],
      },
      // A GitHub App installation: tokens minted from the app's key, never configured as values.
      hooli: {
        repos: [`${server.url}/hooli/`],
        credentials: [
          {
            url: `${server.url}/hooli/`,
            githubApp: { api: forge.url, appId: '4242', installationId: 77, privateKey: `file:${keyFile}` },
            scheme: 'basic',
            username: 'x-access-token',
          },
        ],
      },
      // No grant on the server's URLs at all.
      globex: { repos: [`${env.workDir()}/`] },
    },
  };
  worker = await startTestWorker('it-remote', { tenants, logger: capture() });
  api = await startTestApi({ tenants, platformPaths: [worker.dataDir], logger: capture() });
  client = apiClient(api);
  nats = await connectNats(env.apiCreds(), 'remote-repos');
});

afterAll(async () => {
  await nats?.drain();
  await api?.stop();
  await worker?.stop();
  await forge?.close();
  await server?.close();
});

const runBody = (repo: string, baseRef = 'main') => ({
  repo,
  baseRef,
  mood: 'CALM',
  workItem: {
    description: 'write the result file',
    execute: ['sh', '-c', 'echo done > RESULT.txt'],
    requiredVerifiers: ['V-RESULT-FILE'],
    riskTier: 'low',
  },
});

async function startRun(
  tenant: string,
  repo: string,
  baseRef = 'main',
  key: string = randomUUID(),
): Promise<{ runId: string; token: string }> {
  const userId = `u-${tenant}`;
  const token = await api.token({ sub: userId, tenant });
  const res = await client.call<RunView>('POST', '/v1/runs', {
    token,
    body: runBody(repo, baseRef),
    key,
  });
  expect(res.status).toBe(201);
  started.push({ runId: res.body.runId, tenant, userId, token });
  return { runId: res.body.runId, token };
}

const exists = (p: string): Promise<boolean> =>
  stat(p).then(
    () => true,
    () => false,
  );

/** Files under `dir` (recursively), for leftovers and leak checks. */
async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

const mirrorOf = (tenant: string, url: string): string =>
  mirrorPath(join(worker.dataDir, 'mirrors'), tenant, url);

describe('runs on a remote repository', () => {
  test('when acme runs on an http loopback URL, then it commits, its branch appears on the server with exactly the change, and the forge opens a pull request with the receipts', async () => {
    const repo = server.createRepo('acme/app.git', { 'README.md': 'hello\n' });
    const { runId, token } = await startRun('acme', repo.url);
    const done = await client.waitTerminal(runId, token);
    await recordHistory(runId, 'run-remote-delivered');
    expect([done.status, done.error]).toEqual(['committed', undefined]);
    const branch = `choiros/run/${runId}`;
    expect(done.delivery).toMatchObject({
      status: 'pushed',
      remoteRef: `refs/heads/${branch}`,
      commit: done.commit,
      attempt: 1,
    });
    // On the server: the run's commit on the run branch, on the base, with exactly the change.
    expect(server.git('acme/app.git', 'rev-parse', `refs/heads/${branch}`)).toBe(done.commit);
    expect(server.git('acme/app.git', 'rev-parse', `${branch}^`)).toBe(repo.head);
    expect(server.git('acme/app.git', 'diff', '--name-status', 'main', branch)).toBe('A\tRESULT.txt');
    expect(server.git('acme/app.git', 'show', `${branch}:RESULT.txt`)).toBe('done');
    expect(server.git('acme/app.git', 'rev-parse', 'main')).toBe(repo.head);

    // The pull request: against main, with the verifier receipts (result and report digest) in its body.
    const pull = forge.pulls.find((p) => p.head === branch);
    expect(pull).toMatchObject({ owner: 'acme', repo: 'app', base: 'main' });
    const verifier = done.verifiers.find((v) => v.id === 'V-RESULT-FILE');
    expect(verifier?.reportDigest).toMatch(/^[0-9a-f]{64}$/);
    expect(pull?.body).toContain(`| V-RESULT-FILE | pass | \`${verifier?.reportDigest ?? ''}\``);
    expect(pull?.body).toContain(String(done.commit));
    expect(done.delivery?.pullRequest).toEqual({
      url: pull?.html_url,
      number: pull?.number,
      forge: 'github',
    });

    const events = await readRunEvents(nats, { tenant: 'acme', userId: 'u-acme' }, runId);
    const delivery = events.find((e) => e.event_type === 'receipt.delivery');
    expect(delivery?.payload).toEqual({
      run_id: runId,
      remote_ref: `refs/heads/${branch}`,
      commit: done.commit,
      result: 'pushed',
      attempt: 1,
      error: null,
    });
    expect(events.find((e) => e.event_type === 'receipt.pull_request')?.payload).toMatchObject({
      url: pull?.html_url,
      number: pull?.number,
      error: null,
    });
  });

  test('when a tenant asks with a credential the server refuses, then the run fails repo_auth_failed and leaves no worktree, mirror or lock', async () => {
    const repo = server.createRepo('acme/locked.git', { 'README.md': 'hello\n' });
    const { runId, token } = await startRun('initech', repo.url);
    const done = await client.waitTerminal(runId, token);
    expect([done.status, done.error?.code]).toEqual(['failed', 'repo_auth_failed']);
    expect(await exists(join(worker.dataDir, 'worktrees', runId))).toBe(false);
    const mirror = mirrorOf('initech', repo.url);
    expect(await exists(mirror)).toBe(false);
    expect(await exists(mirrorLockPath(mirror))).toBe(false);
    const leftovers = (await readdir(join(worker.dataDir, 'mirrors', 'initech')).catch(() => [])).filter(
      (n) => n.startsWith('.tmp-') || n.endsWith('.lock'),
    );
    expect(leftovers).toEqual([]);
  });

  test('when a tenant reaches the server as a GitHub App, then the worker mints an installation token and the run is delivered', async () => {
    const repo = server.createRepo('hooli/app.git', { 'README.md': 'hello\n' });
    const mintedBefore = forge.minted;
    const { runId, token } = await startRun('hooli', repo.url);
    const done = await client.waitTerminal(runId, token);
    expect([done.status, done.delivery?.status]).toEqual(['committed', 'pushed']);
    expect(server.git('hooli/app.git', 'rev-parse', `refs/heads/choiros/run/${runId}`)).toBe(done.commit);
    expect(
      server.requests
        .filter((r) => r.path.startsWith('/hooli/') && r.status === 200)
        .every((r) => r.user === 'hooli-app'),
    ).toBe(true);
    // One token for the fetch and the push: it is cached until shortly before it expires.
    expect(forge.minted - mintedBefore).toBe(1);
  });

  test('when the base ref does not exist on the origin, then the run fails ref_not_found and leaves no worktree or lock', async () => {
    const repo = server.createRepo('acme/noref.git', { 'README.md': 'hello\n' });
    const { runId, token } = await startRun('acme', repo.url, 'no-such-branch');
    failedRunId = runId;
    const done = await client.waitTerminal(runId, token);
    expect([done.status, done.error?.code]).toEqual(['failed', 'ref_not_found']);
    expect(await exists(join(worker.dataDir, 'worktrees', runId))).toBe(false);
    expect(await exists(mirrorLockPath(mirrorOf('acme', repo.url)))).toBe(false);
  });

  test('when two runs of one tenant start together, then they share one mirror with one fetch each, and both branches reach the server', async () => {
    const repo = server.createRepo('acme/shared.git', { 'README.md': 'hello\n' });
    const fetchedBefore = logLines.filter(
      (l) => l.includes('"mirror.fetched"') && l.includes(repo.url),
    ).length;
    const runs = await Promise.all([startRun('acme', repo.url), startRun('acme', repo.url)]);
    const views = await Promise.all(runs.map((r) => client.waitTerminal(r.runId, r.token)));
    expect(views.map((v) => [v.status, v.delivery?.status])).toEqual([
      ['committed', 'pushed'],
      ['committed', 'pushed'],
    ]);
    const fetches = logLines
      .filter((l) => l.includes('"mirror.fetched"') && l.includes(repo.url))
      .map((l) => JSON.parse(l) as { created: boolean; tenant: string });
    expect(fetches.length - fetchedBefore).toBe(2);
    expect(fetches.map((f) => [f.tenant, f.created])).toEqual([
      ['acme', true],
      ['acme', false],
    ]);
    // One mirror for the tenant's URL, holding both run branches (no lost ref), and no lock left.
    const mirror = mirrorOf('acme', repo.url);
    const mirrorBranches = (await filesUnder(join(mirror, 'refs/heads/choiros/run'))).length;
    const packed = await readFile(join(mirror, 'packed-refs'), 'utf8').catch(() => '');
    expect(
      mirrorBranches + packed.split('\n').filter((l) => l.includes('refs/heads/choiros/run/')).length,
    ).toBe(2);
    expect(await exists(mirrorLockPath(mirror))).toBe(false);
    for (const v of views)
      expect(server.git('acme/shared.git', 'rev-parse', `refs/heads/choiros/run/${v.runId}`)).toBe(v.commit);
  });

  test('when another tenant without a grant names the same URL, or a URL embeds credentials, then the API refuses it before any git runs', async () => {
    const repo = server.createRepo('acme/guarded.git', { 'README.md': 'hello\n' });
    const requestsBefore = server.requests.length;
    const globex = await api.token({ sub: 'bob', tenant: 'globex' });
    const refused = await client.call<{ code: string }>('POST', '/v1/runs', {
      token: globex,
      body: runBody(repo.url),
      key: randomUUID(),
    });
    expect([refused.status, refused.body.code]).toEqual([403, 'repo_not_allowed']);

    const acme = await api.token({ sub: 'alice', tenant: 'acme' });
    const withCredentials = repo.url.replace('http://', `http://x-access-token:${ACME_TOKEN}@`);
    const embedded = await client.call<{ code: string; errors: { field: string; message: string }[] }>(
      'POST',
      '/v1/runs',
      { token: acme, body: runBody(withCredentials), key: randomUUID() },
    );
    expect([embedded.status, embedded.body.code]).toEqual([400, 'validation_failed']);
    expect(embedded.body.errors).toContainEqual({
      field: 'repo',
      message: expect.stringMatching(/must not embed credentials/),
    });
    expect(JSON.stringify(embedded.body)).not.toContain(ACME_TOKEN);
    expect(server.requests.length).toBe(requestsBefore);
  });

  test('when the push fails for good, then the run stays committed with a failed delivery, and a retry through the API delivers it', async () => {
    const repo = server.createRepo('acme/retry.git', { 'README.md': 'hello\n' });
    const key = randomUUID();
    const runId = deriveRunId('acme', 'u-acme', key);
    const branch = `choiros/run/${runId}`;
    // Someone else's commit already holds the run branch on the origin: the lease refuses to overwrite it.
    server.git('acme/retry.git', 'update-ref', `refs/heads/${branch}`, repo.head);
    const { token } = await startRun('acme', repo.url, 'main', key);
    const done = await client.waitTerminal(runId, token);
    expect(done.status).toBe('committed');
    await recordHistory(runId, 'run-remote-delivery-failed');
    expect(done.delivery).toMatchObject({
      status: 'failed',
      attempt: 1,
      error: { code: 'delivery_conflict' },
    });
    expect(server.git('acme/retry.git', 'rev-parse', `refs/heads/${branch}`)).toBe(repo.head);

    server.git('acme/retry.git', 'update-ref', '-d', `refs/heads/${branch}`);
    const retried = await client.call<DeliveryView>('POST', `/v1/runs/${runId}/delivery`, { token });
    await recordHistory(deliveryWorkflowId(runId), 'delivery-retry');
    expect([retried.status, retried.body.status, retried.body.attempt]).toEqual([200, 'pushed', 2]);
    expect(server.git('acme/retry.git', 'rev-parse', `refs/heads/${branch}`)).toBe(done.commit);
    // The run view shows the latest delivery; asking again changes nothing.
    expect((await client.getRun(runId, token)).body.delivery).toMatchObject({ status: 'pushed', attempt: 2 });
    const again = await client.call<DeliveryView>('POST', `/v1/runs/${runId}/delivery`, { token });
    expect([again.status, again.body.attempt]).toEqual([200, 2]);
    const lines: string[] = [];
    const code = await cli(['runs', 'deliver', runId, '--api', api.url, '--token', token], {}, (l) =>
      lines.push(l),
    );
    expect([code, lines.join('\n')]).toEqual([
      0,
      `${runId}: delivery pushed (attempt 2) refs/heads/${branch}${
        again.body.pullRequest?.url ? ` pull request ${again.body.pullRequest.url}` : ''
      }`,
    ]);
    // A run with nothing delivered (it failed before committing) answers 409 not_delivered.
    const nothing = await client.call<{ code: string }>('POST', `/v1/runs/${failedRunId}/delivery`, {
      token,
    });
    expect([nothing.status, nothing.body.code]).toEqual([409, 'not_delivered']);

    const events = await poll(
      () => readRunEvents(nats, { tenant: 'acme', userId: 'u-acme' }, runId),
      (es) => es.filter((e) => e.event_type === 'receipt.delivery').length === 2,
      30_000,
    );
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
    expect(
      events
        .filter((e) => e.event_type === 'receipt.delivery')
        .map((e) => [e.payload.attempt, e.payload.result]),
    ).toEqual([
      [1, 'failed'],
      [2, 'pushed'],
    ]);
  });

  test('when a work graph runs on the remote repository, then its integration branch is delivered to the server with every item', async () => {
    const repo = server.createRepo('acme/graph.git', { 'README.md': 'hello\n' });
    const token = await api.token({ sub: 'u-graph', tenant: 'acme' });
    const item = (id: string, dependsOn: string[]) => ({
      id,
      description: `graph item ${id}`,
      execute: ['sh', '-c', `echo ${id} > ${id}.txt`],
      requiredVerifiers: ['V-TRUE'],
      dependsOn,
    });
    const res = await client.call<WorkGraphView>('POST', '/v1/work-graphs', {
      token,
      body: { repo: repo.url, parallelism: 2, items: [item('a', []), item('b', ['a'])] },
      key: randomUUID(),
    });
    expect(res.status).toBe(201);
    const graphId = res.body.graphId;
    const view = (
      await poll(
        () => client.call<WorkGraphView>('GET', `/v1/work-graphs/${graphId}`, { token }),
        (v) => v.body.status !== 'running',
        240_000,
        1000,
      )
    ).body;
    await recordHistory(graphId, 'work-graph-remote');
    expect([view.status, view.counts]).toEqual(['completed', { committed: 2 }]);
    const branch = `choiros/graph/${graphId}`;
    expect(view.delivery).toMatchObject({
      status: 'pushed',
      remoteRef: `refs/heads/${branch}`,
      commit: view.integrationCommit,
    });
    expect(server.git('acme/graph.git', 'rev-parse', `refs/heads/${branch}`)).toBe(view.integrationCommit);
    expect(server.git('acme/graph.git', 'ls-tree', '--name-only', branch).split('\n').sort()).toEqual([
      'README.md',
      'a.txt',
      'b.txt',
    ]);
    // Each item's run branch was delivered too, and b started from a's change.
    for (const i of view.items) {
      const runId = i.runs[i.runs.length - 1]?.runId ?? '';
      expect(
        server.git('acme/graph.git', 'rev-parse', '--verify', `refs/heads/choiros/run/${runId}`),
      ).toMatch(/^[0-9a-f]{40}$/);
    }
    const events = await readRunEvents(nats, { tenant: 'acme', userId: 'u-graph' }, graphId);
    const deliveries = events.filter((e) => e.event_type === 'receipt.delivery');
    expect(deliveries.length).toBeGreaterThanOrEqual(2);
    expect(deliveries[deliveries.length - 1]?.payload).toMatchObject({
      commit: view.integrationCommit,
      result: 'pushed',
    });
  });

  test('when every run is done, then no credential appears in any event, log line, run view, workflow history or file of the worker', async () => {
    expect(started.length).toBeGreaterThanOrEqual(4);
    const haystacks: { where: string; text: Buffer }[] = [];
    for (const r of started) {
      const events: EventEnvelope[] = await readRunEvents(
        nats,
        { tenant: r.tenant, userId: r.userId },
        r.runId,
      );
      expect(events.length).toBeGreaterThan(0);
      haystacks.push({ where: `events of ${r.runId}`, text: Buffer.from(JSON.stringify(events)) });
      const view = await client.getRun(r.runId, r.token);
      haystacks.push({ where: `view of ${r.runId}`, text: Buffer.from(JSON.stringify(view.body)) });
      // The history as Temporal stores it (protobuf, payloads as their raw bytes).
      const history = await api.client.workflow.getHandle(r.runId).fetchHistory();
      haystacks.push({
        where: `history of ${r.runId}`,
        text: Buffer.from(temporal.api.history.v1.History.encode(history).finish()),
      });
    }
    expect(logLines.length).toBeGreaterThan(0);
    expect(logLines.some((l) => l.includes('"mirror.fetched"'))).toBe(true);
    haystacks.push({ where: 'log lines', text: Buffer.from(logLines.join('')) });
    for (const file of await filesUnder(worker.dataDir)) {
      if (file.endsWith('tenants.yaml')) continue; // references only (env:…), checked below
      haystacks.push({ where: file, text: await readFile(file) });
    }
    const tenantsFile = await readFile(join(worker.dataDir, 'tenants.yaml'), 'utf8');
    expect(tenantsFile).toContain('env:CHOIROS_TEST_ACME_GIT_TOKEN');
    haystacks.push({ where: 'tenants.yaml', text: Buffer.from(tenantsFile) });
    const leaks = haystacks.flatMap((h) => SECRETS.filter((s) => h.text.includes(s)).map(() => h.where));
    expect(leaks).toEqual([]);
  });
});

describe('mirrors of remote repositories, bounded', () => {
  const remote = (maxBytes: number) => {
    const creds = createRemoteCredentials(
      {
        version: 1,
        tenants: {
          acme: {
            repos: [`${server.url}/`],
            credentials: [
              { url: `${server.url}/`, token: 'env:T', scheme: 'bearer', username: 'x-access-token' },
            ],
          },
        },
      },
      { T: ACME_TOKEN },
    );
    return { gitAuth: (t: string, u: string) => creds.gitAuth(t, u), maxBytes, timeoutMs: 60_000 };
  };

  test('when a repository is larger than the mirror bound, then the fetch fails repo_too_large and leaves no mirror and no lock', async () => {
    const big = server.createRepo('acme/big.git', { 'blob.txt': randomBytes(200_000).toString('hex') });
    const root = join(worker.dataDir, 'bounded-mirrors');
    await expect(ensureMirror(root, 'acme', big.url, remote(64 * 1024))).rejects.toMatchObject({
      type: 'repo_too_large',
      nonRetryable: true,
    });
    expect(await readdir(join(root, 'acme'))).toEqual([]);
    // Within the bound it is mirrored.
    await expect(ensureMirror(root, 'acme', big.url, remote(64 * 1024 * 1024))).resolves.toBe(
      mirrorPath(root, 'acme', big.url),
    );
  });

  test('when the host is unreachable, then the fetch fails repo_unreachable and leaves no mirror and no lock', async () => {
    const root = join(worker.dataDir, 'unreachable-mirrors');
    const url = 'http://127.0.0.1:9/acme/gone.git';
    await expect(ensureMirror(root, 'acme', url, remote(1024 * 1024))).rejects.toMatchObject({
      type: 'repo_unreachable',
    });
    expect(await readdir(join(root, 'acme'))).toEqual([]);
  });
});
