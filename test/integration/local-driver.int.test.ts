/**
 * The `local` driver (host child processes, weaker isolation) against real processes and real git:
 * a whole run through Temporal with CHOIROS_SANDBOX_DRIVER=local, and its process-group timeout,
 * cancellation and minimal environment.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pino from 'pino';
import type { RunView } from '../../contracts';
import { LocalSandboxDriver } from '../../activities/sandbox/local-driver';
import {
  env,
  git,
  makeGitRepo,
  poll,
  startTestApi,
  startTestWorker,
  type TestApi,
} from '../helpers/integration';

const suffix = randomBytes(4).toString('hex');
const labels = {
  tenant: 't',
  userId: 'u',
  runId: `local-${suffix}`,
  workItemId: 'w',
  lane: 'execution' as const,
};

function processesWith(marker: string): string[] {
  const out = execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes(marker) && !l.includes('ps -eo'));
}

describe('local driver', () => {
  let driver: LocalSandboxDriver;
  let workspace: string;
  beforeAll(async () => {
    const dir = await mkdtemp(join(env.workDir(), 'local-driver-'));
    workspace = (await makeGitRepo()).path;
    execFileSync('chmod', ['-R', 'a+rwX', workspace]);
    driver = new LocalSandboxDriver({
      stateDir: join(dir, 'state'),
      user: '10001:10001',
      path: '/usr/local/bin:/usr/bin:/bin',
      executionEnv: { CHOIROS_LOCAL_SECRET: `sec-${suffix}` },
      logger: pino({ level: 'silent' }),
    });
    await driver.createExecutionSandbox({ name: `choiros-run-${labels.runId}`, workspace, labels });
  });

  test('when a command outlives its timeout, then its whole process group is killed and it reports timeout', async () => {
    // Unusual durations name this test's processes: the background one must die with the foreground one.
    const n = 3000 + Math.floor(Math.random() * 900);
    const outcome = await driver.exec(
      `choiros-run-${labels.runId}`,
      ['sh', '-c', `sleep ${n} & sleep ${n + 1}`],
      {
        timeoutMs: 1000,
      },
    );
    expect(outcome).toMatchObject({ timedOut: true, exitCode: 124 });
    expect(processesWith(`sleep ${n}`)).toEqual([]);
    expect(processesWith(`sleep ${n + 1}`)).toEqual([]);
  });

  test('when cancelled, then the command is killed and the call rejects', async () => {
    const ac = new AbortController();
    const marker = `sleep ${300 + Math.floor(Math.random() * 600)}`;
    const p = driver.exec(`choiros-run-${labels.runId}`, marker.split(' '), {
      timeoutMs: 60_000,
      signal: ac.signal,
    });
    // Cancel once the command really runs, then check it is gone.
    await poll(
      async () => processesWith(marker).length,
      (n) => n === 1,
      10_000,
      50,
    );
    ac.abort(new Error('cancelled by test'));
    await expect(p).rejects.toThrow('cancelled by test');
    await poll(
      async () => processesWith(marker),
      (l) => l.length === 0,
      10_000,
      50,
    );
    expect(processesWith(marker)).toEqual([]);
  });

  test('when commands read their environment, then only the execution lane has the secret and neither has the worker env', async () => {
    process.env.CHOIROS_WORKER_ONLY = 'worker-env-value';
    const execOut = await driver.exec(`choiros-run-${labels.runId}`, ['env'], { timeoutMs: 10_000 });
    const verOut = await driver.runVerifier(
      {
        name: `choiros-verify-${labels.runId}`,
        workspace,
        argv: ['env'],
        labels: { ...labels, lane: 'verifier' },
      },
      { timeoutMs: 10_000 },
    );
    expect(execOut.outputTail).toContain(`CHOIROS_LOCAL_SECRET=sec-${suffix}`);
    expect(verOut.outputTail).not.toContain('CHOIROS_LOCAL_SECRET');
    for (const o of [execOut, verOut]) expect(o.outputTail).not.toContain('worker-env-value');
    delete process.env.CHOIROS_WORKER_ONLY;
  });

  test('when the program does not exist, then the outcome is a failure, not a crash', async () => {
    const o = await driver.exec(`choiros-run-${labels.runId}`, ['/nonexistent/program'], {
      timeoutMs: 10_000,
    });
    expect(o.exitCode).not.toBe(0);
    expect(o.outputTail).toContain('cannot run');
  });
});

describe('a run with CHOIROS_SANDBOX_DRIVER=local', () => {
  let api: TestApi;
  let stop: () => Promise<void>;
  beforeAll(async () => {
    const dir = await mkdtemp(join(env.workDir(), 'local-verifiers-'));
    const file = join(dir, 'verifiers.yaml');
    // Verifier paths are relative: the local driver runs commands in the worktree, which is not /workspace.
    await writeFile(
      file,
      "version: 1\nverifiers:\n  - {id: V-RESULT-FILE, description: result, argv: ['test', '-s', 'RESULT.txt'], timeoutSeconds: 30}\n",
    );
    const w = await startTestWorker(`it-local-${suffix}`, {
      extraEnv: {
        CHOIROS_SANDBOX_DRIVER: 'local',
        CHOIROS_LOCAL_DRIVER: 'trusted-dev',
        CHOIROS_VERIFIERS_FILE: file,
      },
    });
    stop = () => w.stop();
    api = await startTestApi();
  });
  afterAll(async () => {
    await api?.stop();
    await stop?.();
  });

  test('when the work item writes the result, then the run commits it on its branch', async () => {
    const repo = await makeGitRepo();
    const res = await fetch(`${api.url}/v1/runs`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${await api.token()}`,
        'idempotency-key': `local-${suffix}`,
      },
      body: JSON.stringify({
        repo: repo.path,
        baseRef: 'main',
        workItem: {
          description: 'local run',
          execute: ['sh', '-c', 'echo local > RESULT.txt'],
          requiredVerifiers: ['V-RESULT-FILE'],
        },
      }),
    });
    expect(res.status).toBe(201);
    const { runId } = (await res.json()) as RunView;
    const view = await poll(
      async () =>
        (await (
          await fetch(`${api.url}/v1/runs/${runId}`, {
            headers: { authorization: `Bearer ${await api.token()}` },
          })
        ).json()) as RunView,
      (v) => ['committed', 'discarded', 'failed', 'cancelled'].includes(v.status),
      120_000,
    );
    expect(view.status).toBe('committed');
    expect(view.verifiers.map((v) => [v.id, v.result])).toEqual([['V-RESULT-FILE', 'pass']]);
    expect(git(repo.path, 'show', `choiros/run/${runId}:RESULT.txt`)).toBe('local');
  });
});
