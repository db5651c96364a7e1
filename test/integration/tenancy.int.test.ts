/**
 * Tenants walled off, against the real stack (Temporal dev server, NATS with operator-mode auth,
 * Docker sandboxes, git): repository grants, and a cross-tenant matrix over HTTP runs, graphs
 * and approvals, gRPC, SSE, NATS credentials, core subscriptions and JetStream reads. Every
 * principal of the matrix is one that must not reach acme/alice's run; the test counts what they
 * did reach (it must be 0), prints the matrix, and checks the owner and acme's tenant admin (the
 * positive controls) do reach it, so a refusal-for-everyone bug fails too.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { JSONCodec, connect, credsAuthenticator, type NatsConnection, type Subscription } from 'nats';
import {
  EVENT_STREAM,
  parseVerifierFile,
  type EventEnvelope,
  type RunView,
  type TenantsConfig,
} from '../../contracts';
import { createJetStreamEventSource } from '../../api/events/source';
import { createGrpcServer, listenGrpc } from '../../api/grpc/server';
import { createTemporalRunService } from '../../api/runs/service';
import {
  ROOT,
  connectNats,
  env,
  git,
  logger,
  makeGitRepo,
  startTestApi,
  startTestWorker,
  type TestApi,
  type TestWorker,
} from '../helpers/integration';
import { grpcCode, runsClient, type RunsClient } from '../helpers/grpc-client';
import { apiClient, recordHistory } from '../helpers/runs';
import { readSse } from '../helpers/sse';

let worker: TestWorker;
let api: TestApi;
let service: NatsConnection;
let grpcServer: grpc.Server;
let rpc: RunsClient;
let client: ReturnType<typeof apiClient>;
let acmeDir: string;
let globexDir: string;

beforeAll(async () => {
  const base = await mkdtemp(join(env.workDir(), 'tenancy-'));
  acmeDir = join(base, 'acme');
  globexDir = join(base, 'globex');
  await mkdir(acmeDir);
  await mkdir(globexDir);
  const tenants: TenantsConfig = {
    version: 1,
    tenants: {
      acme: { repos: [`${acmeDir}/`] },
      globex: { repos: [`${globexDir}/`] },
      // A grant of everything: the platform's own paths must still be refused.
      wide: { repos: ['/'] },
      // Approval floors: changing RESULT.txt needs the owner's approval, whatever the request says.
      floors: {
        repos: [`${env.workDir()}/`],
        policy: { protected: [{ paths: ['RESULT.txt', 'infra/**'], approval: 'owner' }] },
      },
    },
  };
  // The worker re-checks grants with the API's tenants, except that a file cannot grant "/" (the
  // API's object does, to show the platform paths refused under any grant): the worker's `wide`
  // grant is the test work dir, where that test's granted repository lives.
  worker = await startTestWorker('it-tenancy', {
    tenants: { ...tenants, tenants: { ...tenants.tenants, wide: { repos: [`${env.workDir()}/`] } } },
  });
  api = await startTestApi({ tenants, platformPaths: [worker.dataDir] });
  client = apiClient(api);
  service = await connectNats(env.apiCreds(), 'tenancy-service');
  grpcServer = createGrpcServer({
    verifyToken: api.verifyToken,
    runs: createTemporalRunService({ client: api.client, logger, repoAccess: api.repoAccess }),
    events: createJetStreamEventSource(service),
    verifiers: parseVerifierFile(await readFile(join(ROOT, 'test/fixtures/verifiers.yaml'), 'utf8'), 'test'),
    logger,
  });
  rpc = runsClient(`127.0.0.1:${await listenGrpc(grpcServer, '127.0.0.1', 0)}`);
});

afterAll(async () => {
  rpc?.close();
  grpcServer?.forceShutdown();
  await service?.drain();
  await api?.stop();
  await worker?.stop();
});

/** A git repository with one commit, inside `dir`. */
async function repoIn(dir: string): Promise<string> {
  const path = await mkdtemp(join(dir, 'repo-'));
  git(path, 'init', '-q', '-b', 'main');
  git(
    path,
    '-c',
    'user.name=T',
    '-c',
    'user.email=t@example.invalid',
    'commit',
    '-q',
    '--allow-empty',
    '-m',
    'init',
  );
  return path;
}

const runBody = (repo: string, mood = 'CALM') => ({
  repo,
  baseRef: 'main',
  mood,
  workItem: {
    description: 'write the result file',
    execute: ['sh', '-c', 'echo done > RESULT.txt'],
    requiredVerifiers: ['V-RESULT-FILE'],
    riskTier: 'low',
  },
});

/** Every ref, the worktree list and HEAD: what a run would change in a repository. */
const repoState = (path: string): string =>
  [
    git(path, 'for-each-ref'),
    git(path, 'worktree', 'list', '--porcelain'),
    git(path, 'rev-parse', 'HEAD'),
  ].join('\n');

describe('repositories by grant only', () => {
  test("when acme runs on its granted repository, it commits; globex asking for acme's repository gets 403 repo_not_allowed over HTTP and gRPC and the repository is untouched", async () => {
    const acmeRepo = await repoIn(acmeDir);
    const alice = await api.token({ sub: 'alice', tenant: 'acme' });
    const before = repoState(acmeRepo);
    const globexAlice = await api.token({ sub: 'alice', tenant: 'globex' });

    const refused = await client.call<{ code: string; status: number }>('POST', '/v1/runs', {
      token: globexAlice,
      body: runBody(acmeRepo),
      key: randomUUID(),
    });
    expect([refused.status, refused.body.code]).toEqual([403, 'repo_not_allowed']);
    const graph = await client.call<{ code: string }>('POST', '/v1/work-graphs', {
      token: globexAlice,
      body: {
        repo: acmeRepo,
        items: [{ id: 'a', description: 'x', execute: ['true'], requiredVerifiers: ['V-RESULT-FILE'] }],
      },
      key: randomUUID(),
    });
    expect([graph.status, graph.body.code]).toEqual([403, 'repo_not_allowed']);
    const viaGrpc = await grpcCode(
      rpc.call(
        'StartRun',
        {
          request: {
            repo: acmeRepo,
            work_item: { description: 'x', execute: ['true'], required_verifiers: ['V-RESULT-FILE'] },
          },
          idempotency_key: randomUUID(),
        },
        globexAlice,
      ),
    );
    expect(viaGrpc).toEqual([7 /* PERMISSION_DENIED */, 'repo_not_allowed']);
    expect(repoState(acmeRepo)).toBe(before);

    const started = await client.call<RunView>('POST', '/v1/runs', {
      token: alice,
      body: runBody(acmeRepo),
      key: randomUUID(),
    });
    expect(started.status).toBe(201);
    const done = await client.waitTerminal(started.body.runId, alice);
    expect(done.status).toBe('committed');
    expect(git(acmeRepo, 'branch', '--list', `choiros/run/${done.runId}`)).not.toBe('');

    // A grant withdrawn later: a rerun is a new run and passes the gate again.
    const grants = api.tenants.tenants.acme!.repos;
    api.tenants.tenants.acme!.repos = [];
    try {
      const rerun = await client.call<{ code: string }>('POST', `/v1/runs/${done.runId}/rerun`, {
        token: alice,
        key: randomUUID(),
      });
      expect([rerun.status, rerun.body.code]).toEqual([403, 'repo_not_allowed']);
    } finally {
      api.tenants.tenants.acme!.repos = grants;
    }
  });

  test("when a grant covers the platform's data dir and its checkout, then both are refused all the same, and the checkout gets no run branch", async () => {
    const wide = await api.token({ sub: 'root', tenant: 'wide' });
    const inData = await repoIn(worker.dataDir);
    const branchesBefore = git(ROOT, 'branch', '--list', 'choiros/run/*');
    for (const repo of [ROOT, join(ROOT, 'contracts'), worker.dataDir, inData, `file://${inData}`]) {
      const res = await client.call<{ code: string }>('POST', '/v1/runs', {
        token: wide,
        body: runBody(repo),
        key: randomUUID(),
      });
      expect([repo, res.status, res.body.code]).toEqual([repo, 403, 'repo_not_allowed']);
    }
    expect(git(ROOT, 'branch', '--list', 'choiros/run/*')).toBe(branchesBefore);
    // The same grant does let a repository elsewhere through (the refusals above are about the paths).
    const elsewhere = await makeGitRepo();
    const ok = await client.call<RunView>('POST', '/v1/runs', {
      token: wide,
      body: runBody(elsewhere.path),
      key: randomUUID(),
    });
    expect(ok.status).toBe(201);
    expect((await client.waitTerminal(ok.body.runId, wide)).status).toBe('committed');
  });
});

interface Cell {
  family: string;
  access: string;
  kind: 'read' | 'write';
}

describe('the cross-tenant matrix', () => {
  test("when four principals who must not reach acme/alice's run try every route family, then they reach nothing (0 reads, 0 writes), while the owner and acme's admin do", async () => {
    const acmeRepo = await repoIn(acmeDir);
    const tok = {
      owner: await api.token({ sub: 'alice', tenant: 'acme', scope: 'runs:read runs:write' }),
      acmeAdmin: await api.token({ sub: 'root', tenant: 'acme', scope: 'runs:read tenant:admin' }),
      sameIdOtherTenant: await api.token({
        sub: 'alice',
        tenant: 'globex',
        scope: 'runs:read runs:write runs:approve',
      }),
      otherTenantAdmin: await api.token({
        sub: 'root',
        tenant: 'globex',
        scope: 'runs:read runs:write tenant:admin',
      }),
      otherTenantReviewer: await api.token({ sub: 'rev', tenant: 'globex', scope: 'runs:read runs:approve' }),
      outsider: await api.token({ sub: 'bob', tenant: 'acme', scope: 'runs:read runs:write' }),
    };
    const intruders = ['sameIdOtherTenant', 'otherTenantAdmin', 'otherTenantReviewer', 'outsider'] as const;

    // acme/alice's run, held at approval (CONTRITE: the owner approves), and a work graph of hers.
    const run = await client.call<RunView>('POST', '/v1/runs', {
      token: tok.owner,
      body: runBody(acmeRepo, 'CONTRITE'),
      key: randomUUID(),
    });
    expect(run.status).toBe(201);
    const runId = run.body.runId;
    await client.waitStatus(runId, tok.owner, 'awaiting_approval', 120_000);
    const graph = await client.call<{ graphId: string }>('POST', '/v1/work-graphs', {
      token: tok.owner,
      body: {
        repo: acmeRepo,
        items: [
          {
            id: 'g1',
            description: 'graph item',
            execute: ['sh', '-c', 'echo done > RESULT.txt'],
            requiredVerifiers: ['V-RESULT-FILE'],
          },
        ],
      },
      key: randomUUID(),
    });
    expect(graph.status).toBe(201);
    const graphId = graph.body.graphId;

    // Live NATS: every principal subscribes with its own credentials, to its own prefix and to the
    // owner's; messages of the run that reach them are counted.
    const codec = JSONCodec<EventEnvelope>();
    const live: Record<
      string,
      { nc: NatsConnection; received: number; types: Set<string>; refused: string[] }
    > = {};
    const subs: Subscription[] = [];
    for (const who of [...intruders, 'owner'] as const) {
      const res = await fetch(`${api.url}/v1/nats/credentials`, {
        method: 'POST',
        headers: { authorization: `Bearer ${tok[who]}` },
      });
      expect(res.status).toBe(200);
      const c = (await res.json()) as { creds: string; inbox_prefix: string; subject_prefix: string };
      const nc = await connect({
        servers: env.natsUrl(),
        authenticator: credsAuthenticator(new TextEncoder().encode(c.creds)),
        inboxPrefix: c.inbox_prefix,
        reconnect: false,
      });
      const entry = { nc, received: 0, types: new Set<string>(), refused: [] as string[] };
      live[who] = entry;
      for (const subject of [c.subject_prefix, 'choiros.acme.alice.>', `choiros.*.*.run.${runId}.>`, '>']) {
        const sub = nc.subscribe(subject);
        subs.push(sub);
        void (async () => {
          try {
            for await (const m of sub) {
              const e = codec.decode(m.data);
              if (e.run_id === runId) {
                entry.received += 1;
                entry.types.add(e.event_type);
              }
            }
          } catch {
            entry.refused.push(subject);
          }
        })();
      }
      await nc.flush().catch(() => undefined);
    }

    const cells: Cell[] = [];
    const matrix: Record<string, Record<string, number>> = {};
    const count = (who: string, cell: Cell, reached: boolean): void => {
      if (!cells.some((c) => c.family === cell.family && c.access === cell.access)) cells.push(cell);
      matrix[who] ??= {};
      matrix[who][`${cell.family} ${cell.access}`] = reached ? 1 : 0;
    };
    const http = async (method: string, path: string, token: string, body?: unknown) =>
      client.call<Record<string, unknown>>(method, path, {
        token,
        ...(body ? { body } : {}),
        key: randomUUID(),
      });
    const ok = (status: number): boolean => status >= 200 && status < 300;
    const grpcOk = async (p: Promise<unknown>): Promise<boolean> => (await grpcCode(p))[0] === 0;
    const jsRead = async (nc: NatsConnection, subject: string, data: unknown): Promise<boolean> => {
      try {
        const r = await nc.request(subject, new TextEncoder().encode(JSON.stringify(data)), {
          timeout: 1000,
        });
        const text = new TextDecoder().decode(r.data);
        return (
          !text.includes('"error"') && (text.length > 0 || r.headers?.get('Nats-Stream') === EVENT_STREAM)
        );
      } catch {
        return false;
      }
    };

    for (const who of intruders) {
      const t = tok[who];
      const rd = (family: string, access: string, reached: boolean) =>
        count(who, { family, access, kind: 'read' }, reached);
      const wr = (family: string, access: string, reached: boolean) =>
        count(who, { family, access, kind: 'write' }, reached);
      // HTTP runs and approvals.
      rd('http', 'GET run', ok((await http('GET', `/v1/runs/${runId}`, t)).status));
      const listed = await http('GET', '/v1/runs?pageSize=100', t);
      rd('http', 'GET runs (list)', JSON.stringify(listed.body).includes(runId));
      const adminList = await http('GET', '/v1/runs?pageSize=100&userId=alice', t);
      rd('http', 'GET runs?userId=alice', JSON.stringify(adminList.body).includes(runId));
      wr('http', 'POST cancel', ok((await http('POST', `/v1/runs/${runId}/cancel`, t)).status));
      wr('http', 'POST approve', ok((await http('POST', `/v1/runs/${runId}/approve`, t, {})).status));
      wr('http', 'POST reject', ok((await http('POST', `/v1/runs/${runId}/reject`, t, {})).status));
      wr('http', 'POST rerun', ok((await http('POST', `/v1/runs/${runId}/rerun`, t, {})).status));
      // Grants are per tenant: bob of acme may use acme's repositories, so only other tenants count here.
      if (who !== 'outsider')
        wr(
          'http',
          'POST run on acme repo',
          ok((await http('POST', '/v1/runs', t, runBody(acmeRepo))).status),
        );
      // HTTP graphs.
      rd('http', 'GET graph', ok((await http('GET', `/v1/work-graphs/${graphId}`, t)).status));
      wr(
        'http',
        'POST graph cancel',
        ok((await http('POST', `/v1/work-graphs/${graphId}/cancel`, t)).status),
      );
      // SSE (runs and graphs).
      const sse = await readSse(`${api.url}/v1/runs/${runId}/events`, { authorization: `Bearer ${t}` }, 1);
      rd('sse', 'run events', sse.status === 200 || sse.frames.length > 0);
      const gsse = await readSse(
        `${api.url}/v1/work-graphs/${graphId}/events`,
        { authorization: `Bearer ${t}` },
        1,
      );
      rd('sse', 'graph events', gsse.status === 200 || gsse.frames.length > 0);
      // gRPC.
      rd('grpc', 'GetRun', await grpcOk(rpc.call('GetRun', { run_id: runId }, t)));
      rd('grpc', 'WatchRun', await grpcOk(rpc.watch({ run_id: runId }, t)));
      const rpcList = await rpc
        .call<{ runs: { run_id: string }[] }>('ListRuns', { user_id: 'alice' }, t)
        .catch(() => ({ runs: [] }));
      rd(
        'grpc',
        'ListRuns',
        rpcList.runs.some((r) => r.run_id === runId),
      );
      wr('grpc', 'CancelRun', await grpcOk(rpc.call('CancelRun', { run_id: runId }, t)));
      wr('grpc', 'ApproveRun', await grpcOk(rpc.call('ApproveRun', { run_id: runId }, t)));
      wr('grpc', 'RejectRun', await grpcOk(rpc.call('RejectRun', { run_id: runId }, t)));
      wr(
        'grpc',
        'RerunRun',
        await grpcOk(rpc.call('RerunRun', { run_id: runId, idempotency_key: randomUUID() }, t)),
      );
      // NATS: JetStream read paths with the principal's own credentials.
      const nc = live[who]!.nc;
      rd(
        'jetstream',
        'consumer on owner prefix',
        await jsRead(nc, `$JS.API.CONSUMER.CREATE.${EVENT_STREAM}`, {
          stream_name: EVENT_STREAM,
          config: { filter_subject: 'choiros.acme.alice.>', deliver_policy: 'all', ack_policy: 'none' },
        }),
      );
      rd(
        'jetstream',
        'STREAM.MSG.GET',
        await jsRead(nc, `$JS.API.STREAM.MSG.GET.${EVENT_STREAM}`, {
          last_by_subj: `choiros.acme.alice.run.${runId}.run.created`,
        }),
      );
      rd(
        'jetstream',
        'DIRECT.GET',
        await jsRead(nc, `$JS.API.DIRECT.GET.${EVENT_STREAM}`, {
          last_by_subj: `choiros.acme.alice.run.${runId}.run.created`,
        }),
      );
      rd('jetstream', 'STREAM.INFO', await jsRead(nc, `$JS.API.STREAM.INFO.${EVENT_STREAM}`, {}));
    }

    // Positive controls: the owner reads and watches; acme's admin reads, lists and watches (SSE
    // and gRPC) the member's run and receives its events, up to run.completed after approval.
    expect((await http('GET', `/v1/runs/${runId}`, tok.owner)).status).toBe(200);
    expect((await http('GET', `/v1/runs/${runId}`, tok.acmeAdmin)).status).toBe(200);
    expect(
      JSON.stringify((await http('GET', '/v1/runs?pageSize=100&userId=alice', tok.acmeAdmin)).body),
    ).toContain(runId);
    // And JetStream reads with the owner's own credentials are refused too: history goes through the gateway.
    expect(
      await jsRead(live.owner!.nc, `$JS.API.DIRECT.GET.${EVENT_STREAM}`, {
        last_by_subj: `choiros.acme.alice.run.${runId}.run.created`,
      }),
    ).toBe(false);
    const adminSse = readSse(`${api.url}/v1/runs/${runId}/events`, {
      authorization: `Bearer ${tok.acmeAdmin}`,
    });
    const adminGrpc = rpc.watch({ run_id: runId }, tok.acmeAdmin);
    const ownerSse = readSse(`${api.url}/v1/runs/${runId}/events`, { authorization: `Bearer ${tok.owner}` });
    const approved = await http('POST', `/v1/runs/${runId}/approve`, tok.owner, {});
    expect(approved.status).toBe(200);
    const done = await client.waitTerminal(runId, tok.owner);
    expect(done.status).toBe('committed');
    const [admin, adminRpc, owner] = await Promise.all([adminSse, adminGrpc, ownerSse]);
    expect(admin.status).toBe(200);
    const ids = owner.frames.map((f) => f.id);
    expect(ids.length).toBe(done.events.emitted);
    expect(admin.frames.map((f) => f.id)).toEqual(ids);
    expect(adminRpc.map((e) => e.id)).toEqual(ids);
    expect(admin.frames[admin.frames.length - 1]?.event).toBe('run.completed');

    // Live NATS after the run's last events: the owner got them on her prefix, nobody else any.
    await service.flush();
    const settle = Date.now() + 3000;
    // (Live subscriptions see what is published after they subscribed: the run's events from the approval on.)
    while (!live.owner!.types.has('run.completed') && Date.now() < settle)
      await new Promise((r) => setTimeout(r, 100));
    expect(live.owner!.types).toContain('run.approval.decided');
    expect(live.owner!.types).toContain('run.completed');
    for (const who of intruders) {
      const l = live[who]!;
      count(
        who,
        { family: 'nats', access: 'core subscribe (live events received)', kind: 'read' },
        l.received > 0,
      );
    }
    for (const s of subs) s.unsubscribe();
    for (const l of Object.values(live)) await l.nc.close().catch(() => undefined);

    // The matrix: one row per route family and access, one column per principal; 1 = reached.
    const header = ['family / access', 'kind', ...intruders];
    const rows = cells.map((c) => [
      `${c.family} ${c.access}`,
      c.kind,
      ...intruders.map((w) => String(matrix[w]?.[`${c.family} ${c.access}`] ?? '-')),
    ]);
    const width = header.map((_, i) => Math.max(...[header, ...rows].map((r) => r[i]!.length)));
    const line = (r: string[]) => `| ${r.map((v, i) => v.padEnd(width[i]!)).join(' | ')} |`;
    const totals = (kind: 'read' | 'write') =>
      cells
        .filter((c) => c.kind === kind)
        .reduce(
          (n, c) => n + intruders.reduce((m, w) => m + (matrix[w]?.[`${c.family} ${c.access}`] ?? 0), 0),
          0,
        );
    process.stdout.write(
      [
        "cross-tenant matrix (target: acme/alice's run and graph; 1 = the principal reached it)",
        line(header),
        line(width.map((w) => '-'.repeat(w))),
        ...rows.map(line),
        `unauthorised reads: ${totals('read')}, unauthorised writes: ${totals('write')}, cells: ${cells.length * intruders.length}`,
        '',
      ].join('\n'),
    );
    expect({ reads: totals('read'), writes: totals('write') }).toEqual({ reads: 0, writes: 0 });
    for (const who of intruders) {
      const l = live[who]!;
      // Only their own prefix was accepted; the owner's prefix, the run wildcard and '>' were refused.
      expect([who, l.refused.sort()]).toEqual([
        who,
        ['>', 'choiros.*.*.run.' + runId + '.>', 'choiros.acme.alice.>'].sort(),
      ]);
    }
    expect(cells.length).toBeGreaterThanOrEqual(24);
    // Nothing the intruders did changed the run: it was approved by its owner and committed.
    expect(done.approval?.decidedBy).toMatchObject({ userId: 'alice', tenant: 'acme' });
  });
});

describe('approval floors', () => {
  test('when a low/CALM request touches a path the tenant protects, then it waits for approval; one that does not, commits without', async () => {
    const alice = await api.token({ sub: 'alice', tenant: 'floors' });
    const repo = await makeGitRepo();
    const touching = await client.call<RunView>('POST', '/v1/runs', {
      token: alice,
      body: runBody(repo.path, 'CALM'),
      key: randomUUID(),
    });
    expect(touching.status).toBe(201);
    const untouched = await client.call<RunView>('POST', '/v1/runs', {
      token: alice,
      body: {
        ...runBody(repo.path, 'CALM'),
        workItem: {
          description: 'leave the protected file alone',
          execute: ['sh', '-c', 'echo x > OTHER.txt'],
          requiredVerifiers: ['V-README-INTACT'],
          riskTier: 'low',
        },
      },
      key: randomUUID(),
    });
    expect(untouched.status).toBe(201);
    const waiting = await client.waitStatus(touching.body.runId, alice, 'awaiting_approval', 120_000);
    expect(waiting.approval?.requirement).toBe('owner');
    expect(waiting.approval?.reasons.join('\n')).toMatch(/tenant policy: RESULT\.txt is protected/);
    // A reviewer of the tenant reads what they are asked to approve: status and touched paths.
    const reviewer = await api.token({ sub: 'rev', tenant: 'floors', scope: 'runs:read runs:approve' });
    const seen = await client.getRun(touching.body.runId, reviewer);
    expect(seen.status).toBe(200);
    expect(seen.body.plan?.touchedPaths).toContain('RESULT.txt');
    expect((await client.waitTerminal(untouched.body.runId, alice)).status).toBe('committed');
    expect(
      (await client.call('POST', `/v1/runs/${touching.body.runId}/approve`, { token: alice, body: {} }))
        .status,
    ).toBe(200);
    expect((await client.waitTerminal(touching.body.runId, alice)).status).toBe('committed');
    // Once decided, the run is the owner's again (tenant admins aside).
    expect((await client.getRun(touching.body.runId, reviewer)).status).toBe(404);
    await recordHistory(touching.body.runId, 'run-tenant-approval-floor');
  });

  test('when a run that needed approval is rerun in a milder mood, then the rerun keeps the floor', async () => {
    const acmeRepo = await repoIn(acmeDir);
    const alice = await api.token({ sub: 'alice', tenant: 'acme' });
    const first = await client.call<RunView>('POST', '/v1/runs', {
      token: alice,
      body: runBody(acmeRepo, 'CONTRITE'),
      key: randomUUID(),
    });
    expect(first.status).toBe(201);
    await client.waitStatus(first.body.runId, alice, 'awaiting_approval', 120_000);
    await client.call('POST', `/v1/runs/${first.body.runId}/approve`, { token: alice, body: {} });
    expect((await client.waitTerminal(first.body.runId, alice)).status).toBe('committed');

    const rerun = await client.call<RunView>('POST', `/v1/runs/${first.body.runId}/rerun`, {
      token: alice,
      body: { mood: 'CALM' },
      key: randomUUID(),
    });
    expect(rerun.status).toBe(201);
    const waiting = await client.waitStatus(rerun.body.runId, alice, 'awaiting_approval', 120_000);
    expect(waiting.mood).toBe('CALM');
    expect(waiting.approval?.reasons.join('\n')).toMatch(new RegExp(`rerun of ${first.body.runId}`));
    await client.call('POST', `/v1/runs/${rerun.body.runId}/reject`, { token: alice, body: {} });
    expect((await client.waitTerminal(rerun.body.runId, alice)).status).toBe('discarded');
    await recordHistory(rerun.body.runId, 'run-rerun-approval-floor');
  });
});
