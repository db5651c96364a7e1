/**
 * `npm start` as a user runs it: the whole stack comes up on its own ports and data dir, prints
 * the machine-readable lines, a run started with the printed token completes and is visible
 * through the Temporal Web UI's API with its search attributes, `npm run token` mints a working
 * token, and Ctrl-C (SIGINT to the foreground process group) leaves no process behind.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort, portOpen } from '../../infra/stack/process';
import { ROOT, env, makeGitRepo, poll } from '../helpers/integration';

jest.setTimeout(300_000);

let child: ChildProcess | undefined;
let output = '';

afterAll(() => {
  try {
    if (child?.pid) process.kill(-child.pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('when a user runs npm start, then the stack serves a run end to end and Ctrl-C stops everything', async () => {
  const dataDir = await mkdtemp(join(env.workDir(), 'npm-start-'));
  const ports = {
    CHOIROS_TEMPORAL_PORT: await freePort(),
    CHOIROS_TEMPORAL_UI_PORT: await freePort(),
    CHOIROS_NATS_PORT: await freePort(),
    CHOIROS_DEV_ISSUER_PORT: await freePort(),
    API_PORT: await freePort(),
    GRPC_PORT: await freePort(),
  };
  const childEnv: NodeJS.ProcessEnv = { ...process.env, CHOIROS_DATA_DIR: dataDir };
  for (const [k, v] of Object.entries(ports)) childEnv[k] = String(v);
  for (const k of ['TEMPORAL_ADDRESS', 'NATS_URL', 'NATS_CREDS', 'AUTH_ISSUER', 'AUTH_JWKS_URL'])
    delete childEnv[k];

  child = spawn('npm', ['start'], {
    cwd: ROOT,
    env: childEnv,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child?.on('exit', (code, signal) => r({ code, signal })),
  );

  await poll(
    async () => output,
    (o) => /^DEV_TOKEN=/m.test(o) || child?.exitCode !== null,
    240_000,
    500,
  );
  const line = (name: string): string => {
    const m = new RegExp(`^${name}=(.+)$`, 'm').exec(output);
    if (!m?.[1]) throw new Error(`npm start did not print ${name}=; output:\n${output}`);
    return m[1].trim();
  };
  const apiUrl = line('API_URL');
  const uiUrl = line('TEMPORAL_UI_URL');
  const token = line('DEV_TOKEN');
  expect(line('NATS_URL')).toBe(`nats://127.0.0.1:${ports.CHOIROS_NATS_PORT}`);
  expect(apiUrl).toBe(`http://127.0.0.1:${ports.API_PORT}`);
  expect(uiUrl).toBe(`http://127.0.0.1:${ports.CHOIROS_TEMPORAL_UI_PORT}`);

  // A run with the printed token, as with curl.
  const repo = await makeGitRepo();
  const res = await fetch(`${apiUrl}/v1/runs`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${token}`,
      'content-type': 'application/json',
      'idempotency-key': 'e2e-1',
    },
    body: JSON.stringify({
      repo: repo.path,
      baseRef: 'main',
      mood: 'CALM',
      workItem: {
        description: 'e2e',
        execute: ['sh', '-c', 'echo ok > RESULT.txt'],
        requiredVerifiers: ['V-01-RESULT-FILE'],
      },
    }),
  });
  expect(res.status).toBe(201);
  const { runId } = (await res.json()) as { runId: string };
  const done = await poll(
    async () =>
      (await (
        await fetch(`${apiUrl}/v1/runs/${runId}`, { headers: { authorization: `Bearer ${token}` } })
      ).json()) as { status: string; finishedAt?: string },
    (v) => v.finishedAt !== undefined,
    120_000,
    500,
  );
  expect(done.status).toBe('committed');

  // Visible in the Temporal Web UI (its HTTP API) with the search attributes.
  const ui = (await (
    await fetch(
      `${uiUrl}/api/v1/namespaces/default/workflows?query=${encodeURIComponent(`WorkflowId="${runId}"`)}`,
    )
  ).json()) as { executions?: { searchAttributes?: { indexedFields?: Record<string, unknown> } }[] };
  const fields = Object.keys(ui.executions?.[0]?.searchAttributes?.indexedFields ?? {});
  expect(fields).toEqual(
    expect.arrayContaining(['ChoirTenant', 'ChoirUserId', 'ChoirRunStatus', 'ChoirMood', 'ChoirRepo']),
  );

  // npm run token mints a token the API accepts; another user cannot see the run.
  const bobToken = execFileSync('npm', ['run', '--silent', 'token', '--', '--sub', 'bob', '--ttl', '600'], {
    cwd: ROOT,
    env: childEnv,
    encoding: 'utf8',
  }).trim();
  const asBob = await fetch(`${apiUrl}/v1/runs/${runId}`, {
    headers: { authorization: `Bearer ${bobToken}` },
  });
  expect(asBob.status).toBe(404);

  // Ctrl-C: SIGINT to the foreground process group, as a terminal sends it.
  const pids = (
    JSON.parse(await readFile(join(dataDir, 'stack.pids.json'), 'utf8')) as { name: string; pid: number }[]
  ).map((p) => p.pid);
  expect(pids.length).toBeGreaterThanOrEqual(4);
  process.kill(-child.pid!, 'SIGINT');
  // npm itself dies of the SIGINT (as in a terminal); the launcher it ran finishes the shutdown.
  const exit = await exited;
  expect(exit.code === 0 || exit.signal === 'SIGINT').toBe(true);
  await poll(
    async () => output,
    (o) => o.includes('nothing left running'),
    60_000,
  );
  await poll(
    async () => pids.filter(alive),
    (left) => left.length === 0,
    20_000,
  );
  for (const port of Object.values(ports)) expect(await portOpen('127.0.0.1', port)).toBe(false);
});
