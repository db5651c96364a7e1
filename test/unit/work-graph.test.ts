/**
 * Work graphs without Temporal: the pure ordering (diamond, cycles named, self-dependency,
 * unknown dependency, duplicates), deterministic child run ids, the API's validation and ownership
 * (supertest with a fake graph service), and the integration-branch git plumbing on a temp repo.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import request from 'supertest';
import { graphRunId, orderWorkGraph, stricterMood } from '../../contracts';
import { createApp } from '../../api/app';
import { main as cli } from '../../api/cli/main';
import { deriveGraphId } from '../../api/graphs/service';
import { authorize } from '../../api/auth/policy';
import { createGraphBranchActivities, graphBranch } from '../../activities/workspace/graph-branch';
import {
  emptyEventSource,
  fakeRunService,
  fakeWorkGraphService,
  oneVerifierCatalog,
  testTokenVerifier,
} from '../helpers/fakes';
import {
  DEV_AUDIENCE,
  loadOrCreateDevKey,
  mintDevToken,
  serveDevIssuer,
  type DevIssuerKey,
} from '../../infra/dev-issuer/issuer';

const logger = pino({ level: 'silent' });
const items = (spec: Record<string, string[]>) =>
  Object.entries(spec).map(([id, dependsOn]) => ({ id, dependsOn }));

describe('orderWorkGraph', () => {
  test('when the graph is a diamond (B and C need A, D needs B and C), then A comes first and D last', () => {
    const r = orderWorkGraph(items({ D: ['B', 'C'], C: ['A'], B: ['A'], A: [] }));
    expect(r).toEqual({ ok: true, order: ['A', 'C', 'B', 'D'] });
  });

  test('when items have no dependencies, then the order is the order given', () => {
    expect(orderWorkGraph(items({ x: [], y: [], z: [] }))).toEqual({ ok: true, order: ['x', 'y', 'z'] });
  });

  test('when a → b → c → a, then the cycle is named in order and repeats its start', () => {
    const r = orderWorkGraph(items({ a: ['c'], b: ['a'], c: ['b'], free: [] }));
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.code).toBe('dependency_cycle');
    expect(r.message).toMatch(/^dependency cycle: (\w) → (\w) → (\w) → \1$/);
    expect(new Set(r.items)).toEqual(new Set(['a', 'b', 'c']));
    // "x → y" reads "x runs before y": each arrow follows a real dependency.
    const names = r.message.replace('dependency cycle: ', '').split(' → ');
    const deps: Record<string, string[]> = { a: ['c'], b: ['a'], c: ['b'] };
    for (let i = 0; i + 1 < names.length; i++) expect(deps[names[i + 1]!]).toContain(names[i]);
  });

  test('when two items need each other behind an orderable prefix, then exactly those two are named', () => {
    const r = orderWorkGraph(items({ root: [], a: ['root', 'b'], b: ['a'] }));
    expect(r).toMatchObject({
      ok: false,
      code: 'dependency_cycle',
      message: expect.stringMatching(/^dependency cycle: (a → b → a|b → a → b)$/),
    });
  });

  test('when an item depends on itself, then that is a cycle of one', () => {
    expect(orderWorkGraph(items({ a: ['a'] }))).toMatchObject({
      ok: false,
      code: 'dependency_cycle',
      message: 'dependency cycle: a → a',
    });
  });

  test('when an item names an unknown dependency, then unknown_dependency names it', () => {
    expect(orderWorkGraph(items({ a: ['ghost'] }))).toMatchObject({
      ok: false,
      code: 'unknown_dependency',
      items: ['ghost'],
    });
  });

  test('when an id appears twice, then duplicate_item names it', () => {
    expect(orderWorkGraph([...items({ a: [] }), ...items({ a: [] })])).toMatchObject({
      ok: false,
      code: 'duplicate_item',
      items: ['a'],
    });
  });
});

describe('graph ids', () => {
  test('when computing child run ids, then they are deterministic, distinct per attempt and valid workflow ids', () => {
    const a1 = graphRunId('graph-1', 'A', 1);
    expect(a1).toBe(graphRunId('graph-1', 'A', 1));
    expect(a1).toMatch(/^run-[0-9a-f]{32}$/);
    expect(
      new Set([
        a1,
        graphRunId('graph-1', 'A', 2),
        graphRunId('graph-1', 'B', 1),
        graphRunId('graph-2', 'A', 1),
      ]).size,
    ).toBe(4);
  });

  test('when deriving a graph id, then it is graph-<32 hex> per tenant, user and key', () => {
    expect(deriveGraphId('acme', 'alice', 'k')).toMatch(/^graph-[0-9a-f]{32}$/);
    expect(deriveGraphId('acme', 'alice', 'k')).toBe(deriveGraphId('acme', 'alice', 'k'));
    expect(deriveGraphId('acme', 'bob', 'k')).not.toBe(deriveGraphId('acme', 'alice', 'k'));
  });

  test('when a CALM item is retried, then its next mood is SKEPTICAL', () => {
    expect(stricterMood('CALM')).toBe('SKEPTICAL');
  });
});

describe('graph authorisation', () => {
  const graph = { tenant: 'acme', ownerId: 'bob' };
  test("when a tenant admin acts on a user's graph, then reading is allowed and cancelling answers like a missing graph", () => {
    const admin = { tenant: 'acme', userId: 'root', scopes: ['runs:read', 'runs:write', 'tenant:admin'] };
    expect(authorize(admin, 'graphs.read', graph)).toBe('allow');
    expect(authorize(admin, 'graphs.cancel', graph)).toBe('not_found');
    expect(authorize({ ...admin, tenant: 'other' }, 'graphs.read', graph)).toBe('not_found');
  });

  test('when a token lacks the runs scope of a graph action, then it is forbidden before any lookup', () => {
    const reader = { tenant: 'acme', userId: 'bob', scopes: ['runs:read'] };
    expect(authorize(reader, 'graphs.start')).toBe('forbidden');
    expect(authorize(reader, 'graphs.cancel', graph)).toBe('forbidden');
    expect(authorize(reader, 'graphs.read', graph)).toBe('allow');
  });
});

describe('the work graph API', () => {
  let key: DevIssuerKey;
  let issuer: Awaited<ReturnType<typeof serveDevIssuer>>;
  const graphs = fakeWorkGraphService();
  let app: ReturnType<typeof createApp>;

  beforeAll(async () => {
    key = await loadOrCreateDevKey(await mkdtemp(join(tmpdir(), 'choiros-unit-graph-')));
    issuer = await serveDevIssuer({ key, host: '127.0.0.1', port: 0 });
    app = createApp({
      verifyToken: testTokenVerifier(issuer.issuer),
      runs: fakeRunService(),
      graphs,
      verifiers: oneVerifierCatalog(),
      readiness: [],
      events: emptyEventSource,
      logger,
    });
  });
  afterAll(async () => {
    await issuer.close();
  });

  const token = (claims: { sub?: string; scope?: string } = {}): Promise<string> =>
    mintDevToken(
      key,
      { issuer: issuer.issuer, audience: DEV_AUDIENCE },
      { sub: 'alice', tenant: 'acme', ...claims },
    );
  const item = (id: string, dependsOn: string[] = [], requiredVerifiers = ['V-1']) => ({
    id,
    description: `item ${id}`,
    execute: ['true'],
    requiredVerifiers,
    dependsOn,
  });
  const post = async (body: unknown, t?: string) =>
    request(app)
      .post('/v1/work-graphs')
      .set('authorization', `Bearer ${t ?? (await token())}`)
      .set('idempotency-key', 'g-1')
      .send(body as object);

  test('when a valid diamond is posted, then 201 with the graph and defaults applied', async () => {
    const res = await post({
      repo: '/srv/repo',
      items: [item('A'), item('B', ['A']), item('C', ['A']), item('D', ['B', 'C'])],
    });
    expect(res.status).toBe(201);
    expect(res.headers.location).toBe('/v1/work-graphs/graph-abc');
    const last = graphs.started[graphs.started.length - 1]!;
    expect(last).toMatchObject({
      key: 'g-1',
      request: { baseRef: 'main', mood: 'CALM', parallelism: 4, maxAttempts: 2 },
    });
  });

  test('when the graph has a cycle, then 400 dependency_cycle naming it', async () => {
    const res = await post({ repo: '/srv/repo', items: [item('a', ['b']), item('b', ['a'])] });
    expect(res.status).toBe(400);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(res.body).toMatchObject({
      code: 'dependency_cycle',
      detail: expect.stringMatching(/^dependency cycle: (a → b → a|b → a → b)$/),
    });
  });

  test.each([
    ['unknown_dependency', [item('a', ['ghost'])]],
    ['duplicate_item', [item('a'), item('a')]],
    ['unknown_verifier', [item('a', [], ['V-NOPE'])]],
    ['validation_failed', [item('a', [], [])]],
    ['validation_failed', []],
  ])('when the graph is refused as %s, then 400 with that code', async (code, list) => {
    const res = await post({ repo: '/srv/repo', items: list });
    expect(res.status).toBe(400);
    expect(res.body.code).toBe(code);
  });

  test('when the repo is a file:// URL or parallelism is out of range, then 400 validation_failed naming the field', async () => {
    const url = await post({ repo: 'file:///srv/repo', items: [item('a')] });
    expect([url.status, url.body.errors?.[0]?.field]).toEqual([400, 'repo']);
    const par = await post({ repo: '/srv/repo', parallelism: 0, items: [item('a')] });
    expect([par.status, par.body.errors?.[0]?.field]).toEqual([400, 'parallelism']);
  });

  test('when the token lacks runs:write, then starting is 403; reading needs runs:read', async () => {
    expect(
      (await post({ repo: '/srv/repo', items: [item('a')] }, await token({ scope: 'runs:read' }))).status,
    ).toBe(403);
    const res = await request(app)
      .get('/v1/work-graphs/graph-abc')
      .set('authorization', `Bearer ${await token({ scope: 'runs:write' })}`);
    expect(res.status).toBe(403);
  });

  test("when someone else reads or cancels a user's graph, then 404 as for a graph that does not exist", async () => {
    const bob = await token({ sub: 'bob' });
    for (const [method, path] of [
      ['get', '/v1/work-graphs/graph-abc'],
      ['post', '/v1/work-graphs/graph-abc/cancel'],
    ] as const) {
      const res = await request(app)[method](path).set('authorization', `Bearer ${bob}`);
      expect(res.status).toBe(404);
    }
    const own = await request(app)
      .post('/v1/work-graphs/graph-abc/cancel')
      .set('authorization', `Bearer ${await token()}`);
    expect(own.status).toBe(202);
    expect(graphs.cancelled).toEqual(['graph-abc']);
  });
  test('when the CLI starts, reads and cancels a graph, then it talks to the same routes', async () => {
    const server = app.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const { port } = server.address() as { port: number };
    const dir = await mkdtemp(join(tmpdir(), 'choiros-cli-graph-'));
    const file = join(dir, 'graph.json');
    await writeFile(file, JSON.stringify({ repo: '/srv/repo', items: [item('A'), item('B', ['A'])] }));
    const lines: string[] = [];
    const run = async (...args: string[]) =>
      cli([...args, '--api', `http://127.0.0.1:${port}`, '--token', await token()], {}, (l) => lines.push(l));
    try {
      expect(await run('graphs', 'start', file, '--idempotency-key', 'cli-1')).toBe(0);
      expect(graphs.started[graphs.started.length - 1]).toMatchObject({ key: 'cli-1' });
      expect(await run('graphs', 'status', 'graph-abc')).toBe(0);
      expect(await run('graphs', 'cancel', 'graph-abc')).toBe(0);
    } finally {
      server.close();
    }
    expect(lines[0]).toBe('started graph-abc');
    expect(lines[1]).toMatch(/^graph graph-abc: running/);
    expect(lines[2]).toMatch(/^cancellation requested for graph-abc/);
  });
});

describe('the integration branch (git plumbing)', () => {
  const g = (repo: string, ...args: string[]): string =>
    execFileSync('git', ['-c', 'user.name=T', '-c', 'user.email=t@example.invalid', ...args], {
      cwd: repo,
      encoding: 'utf8',
    }).trim();
  /** A commit on top of `parent` changing `file` to `content`, made without touching the work tree. */
  const commitOn = (repo: string, parent: string, file: string, content: string): string => {
    const blob = execFileSync('git', ['hash-object', '-w', '--stdin'], {
      cwd: repo,
      input: content,
      encoding: 'utf8',
    }).trim();
    const idx = join(repo, '.git', `idx-${file}-${Date.now()}`);
    const env = { ...process.env, GIT_INDEX_FILE: idx };
    execFileSync('git', ['read-tree', parent], { cwd: repo, env });
    execFileSync('git', ['update-index', '--add', '--cacheinfo', `100644,${blob},${file}`], {
      cwd: repo,
      env,
    });
    const tree = execFileSync('git', ['write-tree'], { cwd: repo, env, encoding: 'utf8' }).trim();
    return g(repo, 'commit-tree', tree, '-p', parent, '-m', `change ${file}`);
  };
  const acts = createGraphBranchActivities({ logger });

  test('when items commit, then the graph branch fast-forwards, merges in parallel work, and a repeated merge is a no-op', async () => {
    const repo = await mkdtemp(join(tmpdir(), 'choiros-graph-git-'));
    g(repo, 'init', '-q', '-b', 'main');
    await writeFile(join(repo, 'README.md'), 'hello\n');
    g(repo, 'add', '.');
    g(repo, 'commit', '-qm', 'init');
    const base = g(repo, 'rev-parse', 'HEAD');

    const prepared = await acts.prepareGraphBranch({ graphId: 'graph-t', repo, baseRef: 'main' });
    expect(prepared).toEqual({ branch: graphBranch('graph-t'), commit: base, baseCommit: base });

    const a = commitOn(repo, base, 'a.txt', 'a\n');
    const b = commitOn(repo, base, 'b.txt', 'b\n');
    const one = (commit: string, itemId: string) => ({ commit, itemId, runId: `run-${itemId}` });
    expect(await acts.mergeIntoGraphBranch({ graphId: 'graph-t', repo, items: [one(a, 'A')] })).toEqual({
      commit: a,
      items: [{ itemId: 'A', ok: true, how: 'fast_forward', commit: a }],
    });
    const merged = await acts.mergeIntoGraphBranch({ graphId: 'graph-t', repo, items: [one(b, 'B')] });
    expect(merged.items).toEqual([{ itemId: 'B', ok: true, how: 'merge', commit: merged.commit }]);
    expect(g(repo, 'rev-parse', 'choiros/graph/graph-t')).toBe(merged.commit);
    expect(g(repo, 'ls-tree', '--name-only', merged.commit).split('\n').sort()).toEqual([
      'README.md',
      'a.txt',
      'b.txt',
    ]);
    expect(g(repo, 'rev-parse', `${merged.commit}^1`, `${merged.commit}^2`)).toBe(`${a}\n${b}`);
    // A retried activity after the ref moved: nothing changes.
    expect(await acts.mergeIntoGraphBranch({ graphId: 'graph-t', repo, items: [one(b, 'B')] })).toEqual({
      commit: merged.commit,
      items: [{ itemId: 'B', ok: true, how: 'already_merged', commit: merged.commit }],
    });
    // Preparing again (a retry, a continued graph) keeps the branch where it is; main never moved.
    expect((await acts.prepareGraphBranch({ graphId: 'graph-t', repo, baseRef: 'main' })).commit).toBe(
      merged.commit,
    );
    expect(g(repo, 'rev-parse', 'main')).toBe(base);
    expect(g(repo, 'status', '--porcelain')).toBe('');

    // A batch: the first README change goes in, the second conflicts with it (named; the branch
    // does not take it), the third still merges after it.
    const c1 = commitOn(repo, base, 'README.md', 'one\n');
    const c2 = commitOn(repo, base, 'README.md', 'two\n');
    const c3 = commitOn(repo, base, 'c3.txt', 'three\n');
    const batch = await acts.mergeIntoGraphBranch({
      graphId: 'graph-t',
      repo,
      items: [one(c1, 'C1'), one(c2, 'C2'), one(c3, 'C3')],
    });
    expect(batch.items.map((r) => [r.itemId, r.ok ? r.how : r.error.code])).toEqual([
      ['C1', 'merge'],
      ['C2', 'merge_conflict'],
      ['C3', 'merge'],
    ]);
    expect(batch.items[1]).toMatchObject({ error: { message: expect.stringContaining('README.md') } });
    expect(g(repo, 'rev-parse', 'choiros/graph/graph-t')).toBe(batch.commit);
    expect(g(repo, 'show', `${batch.commit}:README.md`)).toBe('one');
    expect(g(repo, 'show', `${batch.commit}:c3.txt`)).toBe('three');
  });

  test('when the repo is a file:// URL, then the graph branch is refused non-retryably', async () => {
    await expect(
      acts.prepareGraphBranch({ graphId: 'graph-t', repo: 'file:///srv/x', baseRef: 'main' }),
    ).rejects.toMatchObject({
      type: 'invalid_sandbox_request',
      nonRetryable: true,
    });
  });
});
