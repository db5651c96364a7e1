/**
 * `npm run test:compose`: brings the production-shaped stack (docker-compose.yml) up from the
 * locally built images (infra/images/build.sh) in its own compose project, on free loopback ports,
 * and drives it as an operator and a release manager would:
 *   1. `compose.sh up` prints the machine-readable lines; api and worker are healthy;
 *   2. a run started through the stack's API commits (its branch is in the repository);
 *   3. the self-rebuild: the test owns a scratch copy of the platform repository (this checkout's
 *      files, committed), mounted as the worker's platform repository; it commits a change, starts
 *      a rebuild of the `choiros` target through the API, starts a run whose command sleeps in its
 *      sandbox, approves with a second user's token (the requester's own approval is refused); the
 *      `compose` deployer replaces api and worker (new image ids = the rebuild's images, /healthz
 *      answers the commit), the in-flight run commits after the new worker started with gap-free
 *      events, the first run is still readable (same data);
 *   4. a deliberately broken commit (its worker exits at start, so its health check fails) is
 *      rebuilt and approved: the rebuild ends `rolled_back` (`health_check_failed`) with api and
 *      worker back on the previous image ids and no `-prev` container left;
 *   5. `compose.sh down` leaves no container of the project and no volume but the named data volumes;
 *   6. `compose.sh up` again: the run is still there and committed (PostgreSQL and JetStream kept it),
 *      and a second run commits on the restarted stack;
 *   7. `down --volumes` removes everything the test made.
 * Exits non-zero on the first failed check. Prints `[compose-test]` progress lines and timings.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { z } from 'zod';
import { deployedViewSchema } from '../../contracts';
import { ensureDockerEngine } from '../../infra/stack/docker';
import type { ManagedProcess } from '../../infra/stack/process';

const run = promisify(execFile);
const ROOT = resolve(__dirname, '../..');
const PROJECT = process.env.CHOIROS_COMPOSE_TEST_PROJECT ?? 'choiros-composetest';
const WORK = `/tmp/choiros-compose-test-${PROJECT}`;
const NAMED_VOLUMES = [
  'postgres-data',
  'nats-keys',
  'nats-server-config',
  'nats-api',
  'nats-worker',
  'nats-jetstream',
  'dev-issuer',
].map((v) => `${PROJECT}_${v}`);

const say = (msg: string): void => void process.stdout.write(`[compose-test] ${msg}\n`);

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => res(port));
    });
  });
}

async function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function poll<T>(
  what: string,
  fn: () => Promise<T>,
  ok: (v: T) => boolean,
  timeoutMs: number,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: T | undefined;
  let lastErr = '';
  while (Date.now() < end) {
    try {
      last = await fn();
      if (ok(last)) return last;
    } catch (err) {
      lastErr = err instanceof Error ? err.message : String(err);
    }
    await sleep(1000);
  }
  throw new Error(`timed out waiting for ${what}; last value ${JSON.stringify(last)} ${lastErr}`);
}

/** Runs compose.sh with the test's environment; stdout is returned, stderr streamed with a prefix. */
async function compose(env: NodeJS.ProcessEnv, args: string[]): Promise<string> {
  const started = Date.now();
  const child = spawn('bash', ['infra/scripts/compose.sh', ...args], {
    cwd: ROOT,
    env,
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => {
    for (const line of d.toString().split('\n')) if (line.trim()) process.stdout.write(`  | ${line}\n`);
  });
  const code = await new Promise<number | null>((r) => child.on('exit', r));
  if (code !== 0) throw new Error(`compose.sh ${args.join(' ')} exited ${String(code)}\n${out}`);
  say(`compose.sh ${args.join(' ')}: ${Math.round((Date.now() - started) / 1000)}s`);
  return out;
}

/** The id of the service's running container. */
async function containerOf(svc: string): Promise<string> {
  const { stdout } = await run('docker', [
    'ps',
    '--filter',
    `label=com.docker.compose.project=${PROJECT}`,
    '--filter',
    `label=com.docker.compose.service=${svc}`,
    '--format',
    '{{.ID}}',
  ]);
  const id = stdout.trim().split('\n')[0] ?? '';
  assert.ok(id, `no running container for ${svc}`);
  return id;
}

/** When the service's running container started (ms since the epoch). */
async function serviceStartedAt(svc: string): Promise<number> {
  const { stdout } = await run('docker', [
    'ps',
    '--filter',
    `label=com.docker.compose.project=${PROJECT}`,
    '--filter',
    `label=com.docker.compose.service=${svc}`,
    '--format',
    '{{.ID}}',
  ]);
  const id = stdout.trim().split('\n')[0] ?? '';
  assert.ok(id, `no running container for ${svc}`);
  return Date.parse((await run('docker', ['inspect', '-f', '{{.State.StartedAt}}', id])).stdout.trim());
}

function lines(out: string): Record<string, string> {
  const kv: Record<string, string> = {};
  for (const m of out.matchAll(/^([A-Z_]+)=(.*)$/gm)) if (m[1] && m[2] !== undefined) kv[m[1]] = m[2];
  return kv;
}

async function projectObjects(kind: 'ps' | 'volume'): Promise<string[]> {
  const args =
    kind === 'ps'
      ? ['ps', '-a', '--filter', `label=com.docker.compose.project=${PROJECT}`, '--format', '{{.Names}}']
      : ['volume', 'ls', '--filter', `label=com.docker.compose.project=${PROJECT}`, '--format', '{{.Name}}'];
  const { stdout } = await run('docker', args);
  return stdout.split('\n').filter(Boolean).sort();
}

const runView = z.object({
  runId: z.string(),
  status: z.string(),
  finishedAt: z.string().optional(),
});

async function healthVersion(apiUrl: string): Promise<string> {
  const res = await fetch(`${apiUrl}/healthz`);
  return z.object({ version: z.string() }).parse(await res.json()).version;
}

/** Image id of each service's running container (compose labels). */
async function serviceImages(services: readonly string[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const svc of services) {
    const { stdout } = await run('docker', [
      'ps',
      '--filter',
      `label=com.docker.compose.project=${PROJECT}`,
      '--filter',
      `label=com.docker.compose.service=${svc}`,
      '--format',
      '{{.ID}}',
    ]);
    const id = stdout.trim().split('\n')[0] ?? '';
    assert.ok(id, `no running container for ${svc}`);
    out[svc] = (await run('docker', ['inspect', '-f', '{{.Image}}', id])).stdout.trim();
  }
  return out;
}

async function startRun(
  apiUrl: string,
  token: string,
  repo: string,
  key: string,
  script = `echo ${key} > RESULT.txt`,
): Promise<string> {
  const res = await fetch(`${apiUrl}/v1/runs`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${token}`,
      'content-type': 'application/json',
      'idempotency-key': key,
    },
    body: JSON.stringify({
      repo,
      baseRef: 'main',
      mood: 'CALM',
      workItem: {
        description: `compose test ${key}`,
        execute: ['sh', '-c', script],
        requiredVerifiers: ['V-01-RESULT-FILE'],
      },
    }),
  });
  const body = await res.text();
  assert.equal(res.status, 201, `POST /v1/runs: ${res.status} ${body}`);
  return z.object({ runId: z.string() }).parse(JSON.parse(body)).runId;
}

async function getRun(apiUrl: string, token: string, runId: string): Promise<z.infer<typeof runView>> {
  const res = await fetch(`${apiUrl}/v1/runs/${runId}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  if (!res.ok) throw new Error(`GET /v1/runs/${runId}: ${res.status} ${await res.text()}`);
  return runView.parse(await res.json());
}

async function waitCommitted(apiUrl: string, token: string, runId: string): Promise<void> {
  const done = await poll(
    `run ${runId} to finish`,
    () => getRun(apiUrl, token, runId),
    (v) => v.finishedAt !== undefined,
    300_000,
  );
  assert.equal(done.status, 'committed', `run ${runId} ended ${done.status}`);
}

const rebuildView = z.object({
  rebuildId: z.string(),
  stage: z.string(),
  commit: z.string().optional(),
  finishedAt: z.string().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
  images: z.array(z.object({ name: z.string(), tag: z.string(), imageId: z.string() })),
  deploy: z.array(
    z.object({ service: z.string(), image: z.string(), healthy: z.boolean().optional() }).passthrough(),
  ),
});
type RebuildView = z.infer<typeof rebuildView>;

async function api(
  apiUrl: string,
  token: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: unknown }> {
  const res = await fetch(`${apiUrl}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let json: unknown = text;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: kept as text for the assertion message
  }
  return { status: res.status, json };
}

async function getRebuild(apiUrl: string, token: string, id: string): Promise<RebuildView> {
  const r = await api(apiUrl, token, 'GET', `/v1/rebuilds/${id}`);
  if (r.status !== 200) throw new Error(`GET /v1/rebuilds/${id}: ${r.status} ${JSON.stringify(r.json)}`);
  return rebuildView.parse(r.json);
}

/** Starts a rebuild of the `choiros` target at `main` and waits until it awaits approval. */
async function rebuildUntilApproval(apiUrl: string, token: string, reason: string): Promise<RebuildView> {
  const t = Date.now();
  const r = await api(apiUrl, token, 'POST', '/v1/rebuilds', { target: 'choiros', ref: 'main', reason });
  assert.equal(r.status, 201, `POST /v1/rebuilds: ${r.status} ${JSON.stringify(r.json)}`);
  const id = rebuildView.pick({ rebuildId: true }).parse(r.json).rebuildId;
  let lastStage = '';
  const v = await poll(
    `rebuild ${id} to await approval`,
    async () => {
      const view = await getRebuild(apiUrl, token, id);
      if (view.stage !== lastStage)
        say(`  rebuild ${id}: ${(lastStage = view.stage)} (${Math.round((Date.now() - t) / 1000)}s)`);
      return view;
    },
    (view) => view.stage === 'awaiting_approval' || view.finishedAt !== undefined,
    1_500_000,
  );
  assert.equal(v.stage, 'awaiting_approval', `rebuild ${id} ended ${v.stage}: ${JSON.stringify(v.error)}`);
  return v;
}

async function waitRebuildDone(apiUrl: string, token: string, id: string): Promise<RebuildView> {
  // The API itself is replaced during the deploy: errors while it restarts are retried by poll().
  return poll(
    `rebuild ${id} to finish`,
    () => getRebuild(apiUrl, token, id),
    (v) => v.finishedAt !== undefined,
    900_000,
  );
}

/** The run's event sequence numbers, read from its SSE stream for a few seconds. */
async function eventSeqs(apiUrl: string, token: string, runId: string): Promise<number[]> {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 8000);
  let text = '';
  try {
    const res = await fetch(`${apiUrl}/v1/runs/${runId}/events`, {
      headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
      signal: ctl.signal,
    });
    assert.equal(res.status, 200, `GET /v1/runs/${runId}/events: ${res.status}`);
    const reader = res.body?.getReader();
    const dec = new TextDecoder();
    for (;;) {
      const chunk = await reader?.read();
      if (!chunk || chunk.done) break;
      text += dec.decode(chunk.value, { stream: true });
    }
  } catch (err) {
    if (!ctl.signal.aborted) throw err;
  } finally {
    clearTimeout(timer);
  }
  return [...text.matchAll(/^id: ?\S+:(\d+)$/gm)].map((m) => Number(m[1]));
}

/** The `choiros` CLI (bin/choiros.js) against the stack's API as the holder of `token`; stdout is kept. */
function cli(
  apiUrl: string,
  token: string,
  args: string[],
): { done: Promise<number | null>; out: () => string } {
  const child = spawn(process.execPath, [join(ROOT, 'bin', 'choiros.js'), ...args], {
    cwd: ROOT,
    env: { ...process.env, CHOIROS_API_URL: apiUrl, CHOIROS_TOKEN: token },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    for (const line of d.toString().split('\n'))
      if (line.trim()) process.stdout.write(`  choiros> ${line}\n`);
  });
  child.stderr.on('data', (d: Buffer) => process.stdout.write(`  choiros! ${d.toString()}`));
  return { done: new Promise((r) => child.on('exit', r)), out: () => out };
}

/** A scratch copy of this checkout's files (what CI tests, committed or not) as a git repository on main. */
function scratchPlatform(dir: string): (...a: string[]) => string {
  execFileSync('mkdir', ['-p', dir]);
  const files = execFileSync('git', ['-C', ROOT, 'ls-files', '-z', '-co', '--exclude-standard'])
    .toString()
    .split('\0')
    .filter((f) => f && f !== 'node_modules' && !f.startsWith('node_modules/'));
  execFileSync('tar', ['-C', ROOT, '--null', '-T', '-', '-cf', join(dir, '..', 'platform.tar')], {
    input: files.join('\0'),
  });
  execFileSync('tar', ['-C', dir, '-xf', join(dir, '..', 'platform.tar')]);
  const g = (...a: string[]): string =>
    execFileSync(
      'git',
      ['-C', dir, '-c', 'user.name=compose-test', '-c', 'user.email=ct@example.invalid', ...a],
      {
        encoding: 'utf8',
      },
    );
  g('init', '-q', '-b', 'main');
  g('add', '-A');
  g('commit', '-q', '-m', 'the platform as checked out');
  return g;
}

/** The dockerd this test started, if any: stopped at the end, passed or failed. */
let startedEngine: ManagedProcess | undefined;

async function main(): Promise<void> {
  const t0 = Date.now();
  await rm(WORK, { recursive: true, force: true });
  const repo = join(WORK, 'repos', 'demo');
  await mkdir(repo, { recursive: true });
  const git = (...a: string[]): string => execFileSync('git', ['-C', repo, ...a], { encoding: 'utf8' });
  git('init', '-q', '-b', 'main');
  await writeFile(join(repo, 'README.md'), '# demo\n');
  git('add', '.');
  git('-c', 'user.name=t', '-c', 'user.email=t@example.invalid', 'commit', '-q', '-m', 'init');
  // The engine `npm test` (or `npm start`) uses; started here when none answers (CI runs this after
  // `npm test`, whose global setup stops the engine it started), and stopped again at the end.
  await mkdir(join(WORK, 'logs'), { recursive: true });
  const engine = await ensureDockerEngine({
    dataRoot: process.env.CHOIROS_DOCKER_DATA_ROOT ?? '/var/lib/choiros-docker',
    logDir: join(WORK, 'logs'),
  });
  if (engine.process) say(`started dockerd (log ${engine.process.logFile})`);
  startedEngine = engine.process;
  const platform = join(WORK, 'platform', 'src');
  const pgit = scratchPlatform(platform);

  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['AUTH_ISSUER', 'AUTH_JWKS_URL', 'TEMPORAL_ADDRESS', 'NATS_URL', 'NATS_CREDS'])
    delete env[k];
  Object.assign(env, {
    CHOIROS_COMPOSE_PROJECT: PROJECT,
    CHOIROS_HOST_DATA_DIR: join(WORK, 'data'),
    CHOIROS_REPOS_DIR: join(WORK, 'repos'),
    CHOIROS_PLATFORM_REPO: platform,
    CHOIROS_HOST_ID: `${PROJECT}-1`,
    CHOIROS_API_PORT: String(await freePort()),
    CHOIROS_GRPC_PORT: String(await freePort()),
    CHOIROS_TEMPORAL_UI_PORT: String(await freePort()),
    CHOIROS_NATS_PORT: String(await freePort()),
  });

  try {
    say(`project ${PROJECT}; work dir ${WORK}`);
    const up1 = lines(await compose(env, ['up']));
    for (const k of ['API_URL', 'TEMPORAL_UI_URL', 'NATS_URL', 'GRPC_ADDRESS', 'DEV_TOKEN'])
      assert.ok(up1[k], `compose up did not print ${k}=`);
    const apiUrl = up1.API_URL ?? '';
    const token = up1.DEV_TOKEN ?? '';
    assert.equal(apiUrl, `http://127.0.0.1:${env.CHOIROS_API_PORT}`);
    // A second release manager: approves what `dev` requested (four eyes).
    const approver = (await compose(env, ['token', '--sub', 'rm2'])).trim();

    // The Temporal UI (built from its Go module) answers and lists the namespace.
    const ui = await poll(
      'the Temporal UI',
      async () => (await fetch(`${up1.TEMPORAL_UI_URL}/api/v1/namespaces/default`)).status,
      (s) => s === 200,
      60_000,
    );
    assert.equal(ui, 200);

    const t1 = Date.now();
    const run1 = await startRun(apiUrl, token, repo, 'compose-1');
    await waitCommitted(apiUrl, token, run1);
    assert.match(git('branch', '--list', `choiros/run/${run1}`), /choiros\/run\//);
    say(`run ${run1} committed through the compose API in ${Math.round((Date.now() - t1) / 1000)}s`);

    // --- The self-rebuild from a new commit, approved by a second user, with a run in flight. ---
    const ids1 = await serviceImages(['api', 'worker']);
    await writeFile(join(platform, 'docs', 'compose-test-release.md'), `release made by ${PROJECT}\n`);
    pgit('add', '-A');
    pgit('commit', '-q', '-m', 'a new release of the platform');
    const commitB = pgit('rev-parse', 'HEAD').trim();
    const t2 = Date.now();
    const rb = await rebuildUntilApproval(apiUrl, token, 'compose test: upgrade');
    assert.equal(rb.commit, commitB);
    say(
      `rebuild ${rb.rebuildId}: verified and built ${commitB.slice(0, 12)} in ${Math.round((Date.now() - t2) / 1000)}s`,
    );
    const inflight = await startRun(
      apiUrl,
      token,
      repo,
      'compose-inflight',
      'sleep 45; echo inflight > RESULT.txt',
    );
    await poll(
      'the in-flight run to be running',
      () => getRun(apiUrl, token, inflight),
      (v) => v.status === 'running',
      120_000,
    );
    const self = await api(apiUrl, token, 'POST', `/v1/rebuilds/${rb.rebuildId}/approve`, {});
    assert.ok(self.status === 403 || self.status === 409, `self-approval answered ${self.status}`);
    const t3 = Date.now();
    // The second release manager approves with the CLI.
    const approve = cli(apiUrl, approver, ['rebuilds', 'approve', rb.rebuildId, '--reason', 'compose test']);
    assert.equal(await approve.done, 0, `choiros rebuilds approve: ${approve.out()}`);
    assert.match(approve.out(), new RegExp(`approved ${rb.rebuildId}`));
    const done = await waitRebuildDone(apiUrl, token, rb.rebuildId);
    assert.equal(done.stage, 'completed', `rebuild ended ${done.stage}: ${JSON.stringify(done.error)}`);
    say(`rebuild ${rb.rebuildId}: deployed in ${Math.round((Date.now() - t3) / 1000)}s`);
    const ids2 = await serviceImages(['api', 'worker']);
    for (const svc of ['api', 'worker'] as const) {
      const built = done.images.find((i) => i.name === svc);
      assert.ok(built, `no built image ${svc}`);
      assert.notEqual(ids2[svc], ids1[svc], `${svc} was not replaced`);
      assert.equal(ids2[svc], built.imageId, `${svc} does not run the rebuilt image`);
    }
    assert.equal(await healthVersion(apiUrl), commitB, 'the API does not answer with the new commit');
    // `choiros rebuilds status` names what runs now: the commit and each service's image id.
    const status = cli(apiUrl, token, ['rebuilds', 'status', '--target', 'choiros', '--json']);
    assert.equal(await status.done, 0, `choiros rebuilds status: ${status.out()}`);
    const deployed = deployedViewSchema.parse(JSON.parse(status.out()));
    assert.equal(deployed.commit, commitB);
    assert.deepEqual(
      Object.fromEntries(deployed.services.map((d) => [d.service, d.imageId])),
      ids2,
      'rebuilds status does not name the running image ids',
    );
    const workerStarted = await serviceStartedAt('worker');
    // The old worker ran the deploy; it could not remove itself: the new worker finalized it.
    const newWorker = (await containerOf('worker')).slice(0, 12);
    const logs = execFileSync('docker', ['logs', newWorker], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    assert.match(
      logs,
      /"event":"rebuild\.deploy\.finalized"[^\n]*"service":"worker"/,
      'the new worker did not finalize the old worker container',
    );
    await waitCommitted(apiUrl, token, inflight);
    const finished = (await getRun(apiUrl, token, inflight)).finishedAt ?? '';
    assert.ok(
      Date.parse(finished) > workerStarted,
      `the in-flight run finished (${finished}) before the new worker started (${new Date(workerStarted).toISOString()})`,
    );
    const seqs = await eventSeqs(apiUrl, token, inflight);
    assert.ok(seqs.length > 3, `too few events of ${inflight}: ${seqs.join(',')}`);
    assert.deepEqual(
      seqs,
      seqs.map((_, i) => i + 1),
      `events of ${inflight} are not gap-free`,
    );
    assert.equal((await getRun(apiUrl, token, run1)).status, 'committed', 'data lost across the rebuild');
    assert.deepEqual(
      (await projectObjects('ps')).filter((n) => n.endsWith('-prev')),
      [],
      'a -prev container is left after the deploy',
    );
    say(
      `rebuild: api ${ids1.api?.slice(7, 19)} -> ${ids2.api?.slice(7, 19)}, worker ${ids1.worker?.slice(7, 19)} -> ${ids2.worker?.slice(7, 19)}; in-flight run ${inflight} committed with ${seqs.length} gap-free events`,
    );

    // --- A broken release: its worker exits at start; the deploy is rolled back. ---
    const dockerfile = join(platform, 'infra', 'Dockerfile.worker');
    await writeFile(
      dockerfile,
      (await readFile(dockerfile, 'utf8')).replace(
        /^CMD .*$/m,
        'CMD ["node", "-e", "console.error(\'deliberately broken release\'); process.exit(3)"]',
      ),
    );
    pgit('commit', '-q', '-am', 'a broken release: the worker exits at start');
    const t4 = Date.now();
    // As a release manager runs it: `choiros rebuilds start --watch` until the rebuild ends.
    const watch = cli(apiUrl, token, [
      'rebuilds',
      'start',
      '--target',
      'choiros',
      '--ref',
      'main',
      '--watch',
    ]);
    const badId = (
      await poll(
        'choiros rebuilds start to name the rebuild',
        () => Promise.resolve(/^started (\S+)$/m.exec(watch.out())?.[1] ?? ''),
        (v) => v !== '',
        60_000,
      )
    ).trim();
    await poll(
      `rebuild ${badId} to await approval`,
      () => getRebuild(apiUrl, token, badId),
      (v) => v.stage === 'awaiting_approval' || v.finishedAt !== undefined,
      1_500_000,
    );
    const approveBad = cli(apiUrl, approver, ['rebuilds', 'approve', badId]);
    assert.equal(await approveBad.done, 0, `choiros rebuilds approve: ${approveBad.out()}`);
    assert.equal(
      await watch.done,
      1,
      'choiros rebuilds start --watch should exit 1 on a rolled-back rebuild',
    );
    const watched = watch.out();
    for (const line of [
      '[verifying]',
      '  suite typecheck: pass',
      '[building]',
      '  image api: built choiros-api:',
      '  image worker: built choiros-worker:',
      '[awaiting_approval]',
      '  approved by rm2',
      '  deploy worker:',
      '  health worker: UNHEALTHY',
      '  rolled back worker to',
      '  rolled back api to',
      '[rolled_back]',
    ])
      assert.ok(watched.includes(line), `choiros rebuilds start --watch did not print "${line}"`);
    const bad = { rebuildId: badId };
    const rolled = await waitRebuildDone(apiUrl, token, bad.rebuildId);
    assert.equal(
      rolled.stage,
      'rolled_back',
      `broken rebuild ended ${rolled.stage}: ${JSON.stringify(rolled.error)}`,
    );
    assert.equal(rolled.error?.code, 'health_check_failed');
    assert.deepEqual(
      await serviceImages(['api', 'worker']),
      ids2,
      'api and worker are not back on the previous images',
    );
    assert.equal(await healthVersion(apiUrl), commitB, 'the API does not answer with the previous commit');
    assert.deepEqual(
      (await projectObjects('ps')).filter((n) => n.endsWith('-prev')),
      [],
      'a -prev container is left after the rollback',
    );
    say(
      `broken rebuild ${bad.rebuildId} rolled back in ${Math.round((Date.now() - t4) / 1000)}s: ${rolled.error?.message ?? ''}`,
    );

    await compose(env, ['down']);
    assert.deepEqual(await projectObjects('ps'), [], 'containers left after down');
    const vols = await projectObjects('volume');
    const stray = vols.filter((v) => !NAMED_VOLUMES.includes(v));
    assert.deepEqual(stray, [], 'volumes other than the named data volumes left after down');
    assert.ok(vols.includes(`${PROJECT}_postgres-data`), 'postgres-data volume is gone after down');
    say(`down: no containers; volumes ${vols.join(', ')}`);

    const up2 = lines(await compose(env, ['up']));
    const token2 = up2.DEV_TOKEN ?? '';
    const again = await getRun(apiUrl, token2, run1);
    assert.equal(again.status, 'committed', 'the run from before down+up is not committed any more');
    // The token minted before down+up still verifies: the dev issuer key is in its volume.
    assert.equal((await getRun(apiUrl, token, run1)).status, 'committed');
    const run2 = await startRun(apiUrl, token2, repo, 'compose-2');
    await waitCommitted(apiUrl, token2, run2);
    say(`after down+up: run ${run1} still committed; run ${run2} committed`);
  } finally {
    await compose(env, ['down', '--volumes']).catch((err: unknown) => say(`cleanup failed: ${String(err)}`));
  }
  assert.deepEqual(await projectObjects('ps'), [], 'containers left after down --volumes');
  assert.deepEqual(await projectObjects('volume'), [], 'volumes left after down --volumes');
  await startedEngine?.stop(20_000);
  await rm(WORK, { recursive: true, force: true });
  say(`passed in ${Math.round((Date.now() - t0) / 1000)}s`);
}

main().catch(async (err: unknown) => {
  process.stderr.write(
    `[compose-test] FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  await startedEngine?.stop(20_000).catch(() => undefined);
  process.exit(1);
});
