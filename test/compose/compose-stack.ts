/**
 * `npm run test:compose`: brings the production-shaped stack (docker-compose.yml) up from the
 * locally built images (infra/images/build.sh) in its own compose project, on free loopback ports,
 * and drives it as an operator would:
 *   1. `compose.sh up` prints the machine-readable lines; api and worker are healthy;
 *   2. a run started through the stack's API commits (its branch is in the repository);
 *      then an upgrade by hand (new platform images, `compose.sh up`) while a run is in flight:
 *      api and worker run new images and answer the new version, the in-flight run commits;
 *   3. `compose.sh down` leaves no container of the project and no volume but the named data volumes;
 *   4. `compose.sh up` again: the run is still there and committed (PostgreSQL and JetStream kept it),
 *      and a second run commits on the restarted stack;
 *   5. `down --volumes` removes everything the test made.
 * Exits non-zero on the first failed check. Prints `[compose-test]` progress lines and timings.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { z } from 'zod';

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

/** Runs a repository script with the test's environment (output streamed with a prefix). */
async function script(env: NodeJS.ProcessEnv, path: string): Promise<void> {
  const started = Date.now();
  const child = spawn('bash', [path], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const prefix = (d: Buffer): void => {
    for (const line of d.toString().split('\n')) if (line.trim()) process.stdout.write(`  | ${line}\n`);
  };
  child.stdout.on('data', prefix);
  child.stderr.on('data', prefix);
  const code = await new Promise<number | null>((r) => child.on('exit', r));
  if (code !== 0) throw new Error(`${path} exited ${String(code)}`);
  say(`${path}: ${Math.round((Date.now() - started) / 1000)}s`);
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

  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['AUTH_ISSUER', 'AUTH_JWKS_URL', 'TEMPORAL_ADDRESS', 'NATS_URL', 'NATS_CREDS'])
    delete env[k];
  Object.assign(env, {
    CHOIROS_COMPOSE_PROJECT: PROJECT,
    CHOIROS_HOST_DATA_DIR: join(WORK, 'data'),
    CHOIROS_REPOS_DIR: join(WORK, 'repos'),
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

    // Upgrade by hand while a run is in flight: a new version of the platform images, `up`
    // recreates api and worker (new image ids, same volumes); the in-flight run commits.
    const v1 = await healthVersion(apiUrl);
    const ids1 = await serviceImages(['api', 'worker']);
    // The new images first (build.sh), so that `up` below only swaps containers while the run's
    // command is still sleeping in its sandbox.
    env.CHOIROS_VERSION = `${v1}-next`;
    await script(env, 'infra/images/build.sh');
    const inflight = await startRun(
      apiUrl,
      token,
      repo,
      'compose-inflight',
      'sleep 40; echo inflight > RESULT.txt',
    );
    await poll(
      'the in-flight run to be running',
      () => getRun(apiUrl, token, inflight),
      (v) => v.status === 'running',
      120_000,
    );
    await compose(env, ['up']);
    const workerStarted = await serviceStartedAt('worker');
    const ids2 = await serviceImages(['api', 'worker']);
    assert.equal(await healthVersion(apiUrl), `${v1}-next`, 'the API does not answer with the new version');
    for (const svc of ['api', 'worker'] as const)
      assert.notEqual(ids2[svc], ids1[svc], `${svc} was not replaced by a new image`);
    await waitCommitted(apiUrl, token, inflight);
    const finished = (await getRun(apiUrl, token, inflight)).finishedAt ?? '';
    assert.ok(
      Date.parse(finished) > workerStarted,
      `the in-flight run finished (${finished}) before the new worker started (${new Date(workerStarted).toISOString()})`,
    );
    assert.equal((await getRun(apiUrl, token, run1)).status, 'committed', 'data lost across the upgrade');
    say(`upgrade ${v1} -> ${v1}-next: api and worker on new images; in-flight run ${inflight} committed`);

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
  await rm(WORK, { recursive: true, force: true });
  say(`passed in ${Math.round((Date.now() - t0) / 1000)}s`);
}

main().catch((err: unknown) => {
  process.stderr.write(
    `[compose-test] FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exit(1);
});
