/**
 * Sandboxes end to end (real Temporal, Docker, git, artifact store): verifier plans from touched
 * paths, full output in the artifact store with `npm run verdict`, cancellation mid-command, and
 * the orphan sweeper.
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { WorkflowFailedError } from '@temporalio/client';
import Docker from 'dockerode';
import pino from 'pino';
import type { RunView } from '../../contracts';
import { LABELS } from '../../activities/sandbox/docker-driver';
import { HOST_LABEL, sweepOrphans, type RunState } from '../../activities/sandbox/sweeper';
import {
  ROOT,
  env,
  git,
  makeGitRepo,
  poll,
  startTestApi,
  startTestWorker,
  testWorkspaces,
  type TestApi,
  type TestWorker,
} from '../helpers/integration';

const execFileAsync = promisify(execFile);
const docker = new Docker();
const suffix = randomBytes(4).toString('hex');
const hostId = `it-sbx-${suffix}`;
const MAX_LOG = 2 * 1024 * 1024;

let api: TestApi;
let worker: TestWorker;
const startedRuns: string[] = [];

beforeAll(async () => {
  worker = await startTestWorker(hostId, { extraEnv: { CHOIROS_MAX_LOG_BYTES: String(MAX_LOG) } });
  api = await startTestApi();
});

afterAll(async () => {
  await api?.stop();
  await worker?.stop();
  // Nothing with the project's labels from this file's runs remains on the engine.
  for (const runId of startedRuns) expect(await containerNames(runId)).toEqual([]);
});

async function startRun(repo: string, execute: string[], requiredVerifiers: string[]): Promise<string> {
  const res = await fetch(`${api.url}/v1/runs`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${await api.token()}`,
      'idempotency-key': `sbx-${randomBytes(8).toString('hex')}`,
    },
    body: JSON.stringify({
      repo,
      baseRef: 'main',
      mood: 'CALM',
      workItem: { description: 'sandboxes test', execute, requiredVerifiers, riskTier: 'low' },
    }),
  });
  expect(res.status).toBe(201);
  const runId = ((await res.json()) as RunView).runId;
  startedRuns.push(runId);
  return runId;
}

async function getRun(runId: string): Promise<RunView> {
  const res = await fetch(`${api.url}/v1/runs/${runId}`, {
    headers: { authorization: `Bearer ${await api.token()}` },
  });
  return (await res.json()) as RunView;
}

const waitTerminal = (runId: string): Promise<RunView> =>
  poll(
    () => getRun(runId),
    (v) => ['committed', 'discarded', 'failed', 'cancelled'].includes(v.status),
    120_000,
  );

async function containerNames(runId: string): Promise<string[]> {
  const list = await docker.listContainers({ all: true, filters: { label: [`${LABELS.runId}=${runId}`] } });
  // A lane from the warm pool (decision 0016) has the pool's labels and the run's name.
  const pooled = await docker.listContainers({
    all: true,
    filters: { name: [`^/choiros-run-${runId}$`], label: [LABELS.pool] },
  });
  return [...new Set([...list, ...pooled].map((c) => (c.Names[0] ?? '').replace(/^\//, '')))];
}

describe('verifier plans', () => {
  test('when a run touches docs/ and .github/, then the scoped verifiers join the required one and run', async () => {
    const repo = await makeGitRepo();
    const runId = await startRun(
      repo.path,
      [
        'sh',
        '-c',
        'mkdir -p docs .github/workflows && echo guide > docs/guide.md && echo on: push > .github/workflows/ci.yml && echo done > RESULT.txt',
      ],
      ['V-RESULT-FILE'],
    );
    const view = await waitTerminal(runId);
    expect(view.status).toBe('committed');
    expect(view.plan?.touchedPaths).toEqual(['.github/workflows/ci.yml', 'RESULT.txt', 'docs/guide.md']);
    expect(view.plan?.verifierIds).toEqual(['V-CI-SCOPED', 'V-DOCS-SCOPED', 'V-RESULT-FILE']);
    expect(view.plan?.planId).toMatch(/^[0-9a-f]{64}$/);
    expect(view.verifiers.map((v) => [v.id, v.result])).toEqual([
      ['V-RESULT-FILE', 'pass'],
      ['V-CI-SCOPED', 'pass'],
      ['V-DOCS-SCOPED', 'pass'],
    ]);
    // With CHOIROS_RECORD_HISTORIES=1 this run becomes a replay fixture of the patched plan path.
    if (process.env.CHOIROS_RECORD_HISTORIES === '1') {
      await poll(
        () => getRun(runId),
        (v) => v.events.published === v.events.emitted,
        60_000,
      );
      const json = execFileSync(
        process.env.CHOIROS_TEMPORAL_BIN ?? 'temporal',
        ['workflow', 'show', '--workflow-id', runId, '--output', 'json', '--address', env.temporalAddress()],
        { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
      );
      await writeFile(join(ROOT, 'test/fixtures/histories/run-verifier-plan.json'), json);
    }
  });

  test('when a required verifier left the allow-list, then it is reported as error and the run is discarded', async () => {
    const repo = await makeGitRepo();
    // The API refuses unknown ids, so start the workflow directly as a stale request would arrive.
    const runId = `run-stale-${suffix}`;
    startedRuns.push(runId);
    const handle = await api.client.workflow.start('runWorkflow', {
      taskQueue: 'choiros-orchestration',
      workflowId: runId,
      args: [
        {
          runId,
          tenant: 'acme',
          userId: 'alice',
          requestHash: 'x',
          requestedAt: Date.now(),
          request: {
            repo: repo.path,
            baseRef: 'main',
            mood: 'CALM',
            workItem: {
              id: `wi-${suffix}`,
              description: 'stale',
              execute: ['sh', '-c', 'echo done > RESULT.txt'],
              requiredVerifiers: ['V-RESULT-FILE', 'V-REMOVED'],
              riskTier: 'low',
              acceptanceCriteria: [],
            },
          },
        },
      ],
    });
    const view = (await handle.result()) as RunView;
    expect(view.status).toBe('discarded');
    expect(view.plan?.unknownRequired).toEqual(['V-REMOVED']);
    expect(view.verifiers.find((v) => v.id === 'V-REMOVED')?.result).toBe('error');
  });
});

describe('artifacts', () => {
  test('when commands print megabytes, then full output goes to the store (bounded), and npm run verdict re-derives the verdict', async () => {
    const repo = await makeGitRepo();
    const runId = await startRun(
      repo.path,
      ['sh', '-c', 'yes execution-output-line | head -c 3145728; echo done > RESULT.txt'],
      ['V-RESULT-FILE', 'V-BIG-OUTPUT'],
    );
    const view = await waitTerminal(runId);
    expect(view.status).toBe('committed');
    const store = join(worker.dataDir, 'artifacts', 'sha256');

    // Execution: 3 MiB of output, the first 2 MiB stored, the digest of all of it kept.
    expect(view.execution).toMatchObject({ outputBytes: 3145728, log: { bytes: MAX_LOG, truncated: true } });
    const execLog = await readFile(
      join(store, view.execution!.log!.digest.slice(0, 2), view.execution!.log!.digest),
    );
    expect(execLog.length).toBe(MAX_LOG);
    expect(execLog.subarray(0, 22).toString()).toBe('execution-output-line\n');

    // Verifier: exactly 2 MiB, stored whole; the stored log's digest is the output digest.
    const big = view.verifiers.find((v) => v.id === 'V-BIG-OUTPUT')!;
    expect(big).toMatchObject({
      result: 'pass',
      outputBytes: 2097152,
      log: { bytes: 2097152, truncated: false },
    });
    expect(big.log?.digest).toBe(big.outputSha256);
    expect(big.outputTail.length).toBeLessThan(10_000);

    const verdict = async (digest: string) => {
      try {
        const r = await execFileAsync(
          'bash',
          ['infra/scripts/node-entry.sh', 'worker/verdict-cli.ts', digest],
          {
            cwd: ROOT,
            env: { PATH: process.env.PATH, HOME: process.env.HOME, CHOIROS_DATA_DIR: worker.dataDir },
          },
        );
        return { code: 0, out: JSON.parse(r.stdout) as { result: string; verifierId: string } };
      } catch (err) {
        const e = err as { code: number; stdout: string };
        return { code: e.code, out: JSON.parse(e.stdout) as { result: string; verifierId: string } };
      }
    };
    expect(await verdict(big.reportDigest!)).toEqual({
      code: 0,
      out: expect.objectContaining({ result: 'pass', verifierId: 'V-BIG-OUTPUT', problems: [] }) as unknown,
    });

    // Tampering with the stored log turns the recomputed verdict into error.
    await writeFile(join(store, big.log!.digest.slice(0, 2), big.log!.digest), 'forged\n');
    expect(await verdict(big.reportDigest!)).toMatchObject({ code: 2, out: { result: 'error' } });
  });
});

describe('bare mirror cache', () => {
  test('when two runs name the same file:// URL, then both use one refreshed mirror and the origin is untouched', async () => {
    const origin = await makeGitRepo();
    const url = `file://${origin.path}`;
    const first = await startRun(url, ['sh', '-c', 'echo one > RESULT.txt'], ['V-RESULT-FILE']);
    const v1 = await waitTerminal(first);
    expect(v1.status).toBe('committed');
    expect(v1.baseCommit).toBe(origin.head);

    // A new commit on the origin: the next run must see it (the mirror is fetched, not re-cloned).
    git(
      origin.path,
      '-c',
      'user.name=T',
      '-c',
      'user.email=t@example.invalid',
      'commit',
      '--allow-empty',
      '-qm',
      'second',
    );
    const head2 = git(origin.path, 'rev-parse', 'HEAD');
    const second = await startRun(url, ['sh', '-c', 'echo two > RESULT.txt'], ['V-RESULT-FILE']);
    const v2 = await waitTerminal(second);
    expect(v2.status).toBe('committed');
    expect(v2.baseCommit).toBe(head2);

    // One mirror, in the tenant's own mirror directory.
    expect(await readdir(join(worker.dataDir, 'mirrors'))).toEqual(['acme']);
    const mirrors = await readdir(join(worker.dataDir, 'mirrors', 'acme'));
    expect(mirrors.filter((m) => m.endsWith('.git'))).toHaveLength(1);
    const mirror = join(
      worker.dataDir,
      'mirrors',
      'acme',
      mirrors.find((m) => m.endsWith('.git'))!,
    );
    // Both run branches live in the mirror, with the runs' changes; the origin has none of them.
    expect(git(mirror, 'show', `choiros/run/${first}:RESULT.txt`)).toBe('one');
    expect(git(mirror, 'show', `choiros/run/${second}:RESULT.txt`)).toBe('two');
    expect(git(origin.path, 'branch', '--list', 'choiros/*')).toBe('');
    expect(git(mirror, 'worktree', 'list')).not.toContain('worktrees/');
  });

  test('when the URL names no repository, then the run fails with repo_not_found', async () => {
    const runId = await startRun(
      `file://${env.workDir()}/no-such-repo-${suffix}`,
      ['true'],
      ['V-RESULT-FILE'],
    );
    const view = await waitTerminal(runId);
    expect(view).toMatchObject({ status: 'failed', error: { code: 'repo_not_found' } });
  });
});

describe('cancellation and orphans', () => {
  test('when a run is cancelled mid-command, then its container and worktree are gone within seconds', async () => {
    const repo = await makeGitRepo();
    const runId = await startRun(repo.path, ['sleep', '600'], ['V-RESULT-FILE']);
    const worktree = join(worker.dataDir, 'worktrees', runId);
    await poll(
      async () => (await getRun(runId)).status,
      (s) => s === 'running',
      60_000,
    );
    await poll(
      async () => {
        const top = await docker
          .getContainer(`choiros-run-${runId}`)
          .top()
          .catch(() => ({ Processes: [] as string[][] }));
        return (top as { Processes: string[][] }).Processes.some((p) => p.join(' ').includes('sleep 600'));
      },
      (yes) => yes,
      30_000,
    );

    await api.client.workflow.getHandle(runId).cancel();
    await poll(
      async () => ({ containers: await containerNames(runId), worktree: existsSync(worktree) }),
      (s) => s.containers.length === 0 && !s.worktree,
      15_000,
    );
    await expect(api.client.workflow.getHandle(runId).result()).rejects.toBeInstanceOf(WorkflowFailedError);
    const view = await getRun(runId);
    expect(view.status).toBe('cancelled');
    expect(git(repo.path, 'branch', '--list', `choiros/run/${runId}`)).toBe('');
    expect(git(repo.path, 'worktree', 'list')).not.toContain(runId);
  });

  test('when orphans of unknown or finished runs exist, then the sweeper removes them and keeps live runs', async () => {
    const repo = await makeGitRepo();
    const live = await startRun(repo.path, ['sleep', '600'], ['V-RESULT-FILE']);
    await poll(
      async () => containerNames(live),
      (n) => n.length === 1,
      60_000,
    );

    // An orphan container and worktree of a run Temporal never heard of, on this host.
    const orphanRun = `orphan-${suffix}`;
    startedRuns.push(orphanRun);
    const orphan = await docker.createContainer({
      name: `choiros-run-${orphanRun}`,
      Image: env.sandboxImage(),
      Cmd: ['sleep', '600'],
      Labels: { [LABELS.managed]: 'true', [LABELS.runId]: orphanRun, [HOST_LABEL]: hostId },
      HostConfig: { NetworkMode: 'none' },
    });
    await orphan.start();
    const worktreeRoot = join(worker.dataDir, 'worktrees');
    await mkdir(worktreeRoot, { recursive: true });
    const orphanTree = join(worktreeRoot, orphanRun);
    // An orphan workspace as a worker that died would leave it: its tree a mounted filesystem.
    const workspaces = testWorkspaces(worker.dataDir, { quotaMb: 32 });
    await workspaces.create({ runId: orphanRun, tenant: 'acme', repo: repo.path, baseRef: 'main' });
    expect(await readFile('/proc/self/mountinfo', 'utf8')).toContain(join(orphanTree, 'tree'));
    // The run that already finished above (cancelled) counts as finished: nothing of it may remain either.

    const runState = async (runId: string): Promise<RunState> => {
      try {
        const d = await api.client.workflow.getHandle(runId).describe();
        return d.status.name === 'RUNNING' ? 'open' : 'closed';
      } catch {
        return 'unknown';
      }
    };
    const swept = await sweepOrphans({
      docker,
      hostId,
      worktreeRoot,
      graceMs: 0,
      runState,
      logger: pino({ level: 'silent' }),
    });
    expect(swept.containers).toEqual([`choiros-run-${orphanRun}`]);
    expect(swept.worktrees).toEqual([orphanTree]);
    expect(existsSync(orphanTree)).toBe(false);
    expect(await readFile('/proc/self/mountinfo', 'utf8')).not.toContain(orphanTree);
    // The live run is untouched.
    expect(await containerNames(live)).toEqual([`choiros-run-${live}`]);
    expect(existsSync(join(worktreeRoot, live))).toBe(true);

    await api.client.workflow.getHandle(live).cancel();
    await poll(
      async () => containerNames(live),
      (n) => n.length === 0,
      30_000,
    );
  });

  test("when a worker starts, then it sweeps this host's orphans at once", async () => {
    const orphanRun = `orphan-start-${suffix}`;
    startedRuns.push(orphanRun);
    const sweepHost = `it-sweep-${suffix}`;
    const orphan = await docker.createContainer({
      name: `choiros-run-${orphanRun}`,
      Image: env.sandboxImage(),
      Cmd: ['sleep', '600'],
      Labels: { [LABELS.managed]: 'true', [LABELS.runId]: orphanRun, [HOST_LABEL]: sweepHost },
      HostConfig: { NetworkMode: 'none' },
    });
    await orphan.start();
    const second = await startTestWorker(sweepHost, {
      extraEnv: { CHOIROS_SWEEP_INTERVAL_SECONDS: '3600', CHOIROS_SWEEP_GRACE_SECONDS: '0' },
    });
    try {
      await poll(
        async () => containerNames(orphanRun),
        (n) => n.length === 0,
        30_000,
      );
    } finally {
      await second.stop();
    }
  });
});
