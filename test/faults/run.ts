/**
 * `npm run test:faults`: the fault-injection suite. Starts its own stack (test/faults/stack.ts),
 * then for each scenario (test/faults/scenarios.ts) starts a load of runs through the real API,
 * injects the fault, heals it, and checks that every run ends as expected, that its events are
 * gap- and duplicate-free in JetStream, that no container or worktree is left, and that the API
 * answered no 5xx but documented 503s. Prints a table of faults × outcome; exits 1 on any failed
 * check. `FAULTS=name,name` runs a subset; `CHOIROS_FAULTS_KEEP=1` keeps the work dir (logs).
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { connect, credsAuthenticator } from 'nats';
import type { RunView } from '../../contracts';
import { joinOf, localActivities } from '../helpers/history';
import { expectGapFree, readRunEvents } from '../helpers/runs';
import {
  RecordingClient,
  followEvents,
  isDocumented503,
  isSettled,
  type Recorded,
  type SseFollow,
} from './client';
import { SCENARIOS, type Scenario } from './scenarios';
import { FaultStack } from './stack';

/** Every wait of a scenario ends by these deadlines. */
const START_DEADLINE_MS = 120_000;
const SETTLE_DEADLINE_MS = 300_000;

interface Result {
  name: string;
  runs: number;
  terminal: number;
  outcomes: Record<string, number>;
  eventsOk: number;
  /** Runs whose history shows the fault: a retried, failed or timed-out activity or workflow task. */
  retried: number;
  orphanContainers: number;
  orphanWorktrees: number;
  http5xx: number;
  readyz503: number;
  api503: number;
  noResponse: number;
  outageMs: number;
  recoveryMs: number;
  failures: string[];
}

const log = (m: string): void => {
  process.stdout.write(`[faults ${new Date().toISOString().slice(11, 19)}] ${m}\n`);
};

function gitRepo(dir: string): string {
  const g = (...args: string[]): string =>
    execFileSync('git', ['-c', 'user.name=Faults', '-c', 'user.email=faults@example.invalid', ...args], {
      cwd: dir,
      encoding: 'utf8',
    }).trim();
  g('init', '-q', '-b', 'main');
  execFileSync('sh', ['-c', 'echo hello > README.md'], { cwd: dir });
  g('add', '.');
  g('commit', '-qm', 'initial');
  return dir;
}

/** `*.lock` files under `dir` (no symlink followed). */
async function findLocks(dir: string): Promise<string[]> {
  const out: string[] = [];
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await findLocks(p)));
    else if (e.name.endsWith('.lock')) out.push(p);
  }
  return out;
}

async function runScenario(stack: FaultStack, s: Scenario, workDir: string): Promise<Result> {
  const failures: string[] = [];
  const client = new RecordingClient(stack.apiUrl);
  const tenant = `faults-${s.name}`;
  const users = s.users ? Array.from({ length: s.users }, (_, u) => `user${u}`) : ['alice', 'bob'];
  const tokens = new Map<string, string>();
  for (const u of users) tokens.set(u, await stack.token(u, tenant));
  const repos: string[] = [];
  const total = s.runs + s.runsDuring + (s.runsAfter ?? 0);
  for (let i = 0; i < (s.sharedRepo ? 1 : total); i++) {
    await mkdir(join(workDir, 'repos'), { recursive: true });
    const dir = await mkdtemp(join(workDir, 'repos', `${s.name}-${i}-`));
    repos.push(gitRepo(dir));
  }
  const repoArg = (i: number): string => {
    const path = (s.sharedRepo ? repos[0] : repos[i]) as string;
    return s.repoUrls ? `file://${path}` : path;
  };
  const request = (i: number) => ({
    repo: repoArg(i),
    workItem: {
      description: `${s.name} load ${i}`,
      execute: ['sh', '-c', s.command],
      requiredVerifiers: ['V-RESULT-FILE'],
    },
    ...(s.budgets ? { budgets: s.budgets } : {}),
  });
  const owner = (i: number): string => users[i % users.length] as string;
  const tokenOf = (i: number): string => tokens.get(owner(i)) as string;

  // Readiness as a load balancer would see it, for the whole scenario.
  let done = false;
  const probing = (async () => {
    while (!done) {
      await client.once('GET', '/readyz', 'GET /readyz');
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();

  if (s.prepare) await s.prepare(stack);
  const ids: string[] = new Array<string>(total);
  const startOne = async (i: number): Promise<void> => {
    const view = await client.startRun(tokenOf(i), request(i), randomUUID(), Date.now() + START_DEADLINE_MS);
    ids[i] = view.runId;
  };
  await Promise.all(Array.from({ length: s.runs }, (_, i) => startOne(i)));
  log(`${s.name}: ${s.runs} runs started`);
  // SSE clients that follow the first runs' events through the fault, reconnecting as a browser would.
  const following: Promise<SseFollow>[] = ids
    .slice(0, s.followEvents ?? 0)
    .map((id, i) =>
      followEvents(client, stack.apiUrl, id, tokenOf(i), Date.now() + (s.settleMs ?? SETTLE_DEADLINE_MS)),
    );
  if (s.injectWhen === 'running') {
    const deadline = Date.now() + START_DEADLINE_MS;
    await Promise.all(
      ids.slice(0, s.runs).map(async (id, i) => {
        for (;;) {
          const r = await client.withRetry('GET', `/v1/runs/${id}`, 'GET /v1/runs/:runId', {
            token: tokenOf(i),
            deadline,
          });
          const v = r.body as RunView | undefined;
          if (v?.status === 'running') return;
          if (v && isSettled(v)) throw new Error(`${s.name}: run ${id} ended (${v.status}) before the fault`);
          if (Date.now() > deadline) throw new Error(`${s.name}: run ${id} not running in time`);
          await new Promise((res) => setTimeout(res, 500));
        }
      }),
    );
    log(`${s.name}: all ${s.runs} runs are executing; injecting the fault`);
  }

  const faultAt = Date.now();
  const ctx = { tenant, repos, repoArg, runIds: ids.slice(0, s.runs), afterRunIds: [] as string[] };
  const heal = await s.inject(stack, ctx);
  const during = Promise.all(Array.from({ length: s.runsDuring }, (_, j) => startOne(s.runs + j)));
  if (s.downMs > 0) await new Promise((r) => setTimeout(r, s.downMs));
  await heal();
  const outageMs = Date.now() - faultAt;
  log(`${s.name}: healed after ${outageMs} ms`);
  await during;
  // Runs after the fault: the worker serves again once it is healed.
  const firstAfter = s.runs + s.runsDuring;
  await Promise.all(Array.from({ length: s.runsAfter ?? 0 }, (_, j) => startOne(firstAfter + j)));
  ctx.afterRunIds = ids.slice(firstAfter);

  const views = await Promise.all(
    ids.map(async (id, i) => {
      const v = await client.waitSettled(id, tokenOf(i), faultAt + (s.settleMs ?? SETTLE_DEADLINE_MS));
      return { id, i, v, at: Date.now() };
    }),
  );
  const recoveryMs = Math.max(...views.map((x) => x.at)) - faultAt;
  done = true;
  await probing;

  // What the SSE clients saw: every event once, in order, through to run.completed.
  const follows = await Promise.all(following);
  const sseOk = (f: SseFollow): boolean => f.completed && f.seqs.every((seq, k) => seq === k + 1);
  for (const f of follows) {
    if (!f.completed)
      failures.push(`SSE client of ${f.runId} never saw run.completed (seqs ${f.seqs.join(',')})`);
    else if (!sseOk(f)) failures.push(`SSE client of ${f.runId} saw seqs ${f.seqs.join(',')}`);
  }
  if (follows.length > 0)
    log(
      `${s.name}: SSE clients: ${follows.filter(sseOk).length}/${follows.length} saw every event once in order; ` +
        `connections ${follows.map((f) => f.connections).join('/')}, error frames ${follows.map((f) => f.errors).join('/')}, ` +
        `longest quiet ${follows.map((f) => (f.longestGapMs / 1000).toFixed(1)).join('/')} s`,
    );

  // Outcomes.
  const outcomes: Record<string, number> = {};
  let terminal = 0;
  for (const { id, i, v } of views) {
    const key = v ? `${v.status}${v.error ? `:${v.error.code}` : ''}` : 'unknown';
    outcomes[key] = (outcomes[key] ?? 0) + 1;
    if (!v || !isSettled(v)) {
      failures.push(
        `run ${id} did not settle (last: ${v ? `${v.status}, events ${JSON.stringify(v.events)}` : '-'})`,
      );
      continue;
    }
    terminal += 1;
    const after = i >= s.runs + s.runsDuring;
    const statuses = after ? (s.expect.after ?? ['committed']) : s.expect.statuses;
    if (!statuses.includes(v.status))
      failures.push(
        `run ${id}${after ? ' (after the fault)' : ''} ended ${v.status} (${v.error?.code ?? '-'}: ${v.error?.message ?? ''})`,
      );
    if (
      !after &&
      v.status !== 'committed' &&
      s.expect.errorCodes &&
      !s.expect.errorCodes.includes(v.error?.code ?? '')
    )
      failures.push(`run ${id} failed with ${v.error?.code ?? 'no error code'}`);
    if (v.status === 'committed' && !v.commit) failures.push(`run ${id} committed without a commit`);
  }

  // Events, read from JetStream after the fact.
  const nats = stack.natsServer;
  const reader = await connect({
    servers: nats.url,
    name: 'faults-reader',
    authenticator: credsAuthenticator(await readFile(nats.apiCredsFile)),
  });
  let eventsOk = 0;
  try {
    for (const { id, i, v } of views) {
      const events = await readRunEvents(reader, { tenant, userId: owner(i) }, id);
      const problems: string[] = [];
      try {
        expectGapFree(events);
      } catch (err) {
        problems.push(err instanceof Error ? err.message : String(err));
      }
      if (new Set(events.map((e) => e.id)).size !== events.length) problems.push('duplicate event ids');
      if (v && events.length !== v.events.emitted)
        problems.push(`${events.length} events in the stream, ${v.events.emitted} emitted`);
      if (events.filter((e) => e.event_type === 'run.completed').length !== 1)
        problems.push('not exactly one run.completed');
      const completed = events[events.length - 1];
      if (completed?.event_type !== 'run.completed') problems.push('run.completed is not last');
      // The failure a run view shows is the one its events carry (a client may follow either).
      const carried = (completed?.payload.error as { code?: unknown } | null | undefined)?.code;
      if (completed?.event_type === 'run.completed' && v?.error && carried !== v.error.code)
        problems.push(`run.completed carries error ${String(carried)}, the run view ${v.error.code}`);
      const seen = follows.find((f) => f.runId === id);
      if (seen?.completed && seen.seqs.length !== events.length)
        problems.push(`the SSE client saw ${seen.seqs.length} events, the stream holds ${events.length}`);
      if (problems.length === 0) eventsOk += 1;
      else failures.push(`run ${id} events: ${problems.join('; ')}`);
    }
  } finally {
    await reader.close();
  }

  // Did the fault reach the runs? Their histories say.
  const connection = await Connection.connect({ address: stack.temporalAddress });
  let retried = 0;
  let admissionRetries = 0;
  try {
    const temporal = new Client({ connection });
    if (s.expect.admissionClean) {
      const gate = await temporal.workflow.getHandle(`admission-${tenant}`).fetchHistory();
      const failedTasks = (gate.events ?? []).filter(
        (e) => e.workflowTaskFailedEventAttributes || e.workflowTaskTimedOutEventAttributes,
      ).length;
      if (failedTasks > 0) failures.push(`the admission gate had ${failedTasks} failed workflow task(s)`);
    }
    for (const { id } of views) {
      const history = await temporal.workflow.getHandle(id).fetchHistory();
      const enqueues = new Set(
        (history.events ?? [])
          .filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'enqueueAdmission')
          .map((e) => String(e.eventId)),
      );
      for (const e of history.events ?? []) {
        const a = e.activityTaskStartedEventAttributes;
        if (a && enqueues.has(String(a.scheduledEventId))) admissionRetries += (a.attempt ?? 1) - 1;
      }
      // Lean runs (decision 0015) join by a local activity: its retries are in its markers.
      admissionRetries += joinOf(history.events ?? []).retries;
      const locals = localActivities(history.events ?? []);
      const hit =
        locals.some((l) => l.attempt > 1 || l.result === undefined) ||
        (history.events ?? []).some(
          (e) =>
            (e.activityTaskStartedEventAttributes?.attempt ?? 1) > 1 ||
            e.activityTaskFailedEventAttributes ||
            e.activityTaskTimedOutEventAttributes ||
            e.workflowTaskTimedOutEventAttributes ||
            e.workflowTaskFailedEventAttributes,
        );
      if (hit) retried += 1;
    }
  } finally {
    await connection.close();
  }
  if (s.expect.retried && retried === 0) failures.push('no run shows the fault in its history: it missed');
  if (s.expect.admissionClean) {
    log(`${s.name}: joining the admission queue was retried ${admissionRetries} time(s) over ${total} runs`);
    if (admissionRetries > Math.max(1, Math.floor(total / 50)))
      failures.push(`joining the admission queue was retried ${admissionRetries} time(s)`);
  }

  // Orphans: containers of the platform on the suite's engine, worktrees on disk and in the repos.
  const containers = await stack.docker.listContainers({
    all: true,
    filters: { label: ['choiros.managed=true'] },
  });
  for (const c of containers) failures.push(`orphan container ${c.Names.join(',')} (${c.State})`);
  const onDisk = await readdir(stack.worktreeRoot).catch(() => [] as string[]);
  let orphanWorktrees = onDisk.length;
  for (const w of onDisk) failures.push(`orphan worktree ${join(stack.worktreeRoot, w)}`);
  for (const repo of repos) {
    const list = execFileSync('git', ['-c', 'safe.directory=*', 'worktree', 'list', '--porcelain'], {
      cwd: repo,
      encoding: 'utf8',
    });
    const extra = list.split('\n').filter((l) => l.startsWith('worktree ')).length - 1;
    if (extra > 0) {
      orphanWorktrees += extra;
      failures.push(`${repo} still lists ${extra} run worktree(s)`);
    }
  }

  // Locks: no lock file left in the scenario's repositories, the tenant's mirrors or run dirs.
  const lockRoots = [
    ...repos.map((r) => join(r, '.git')),
    join(stack.dataDir, 'mirrors', tenant),
    stack.worktreeRoot,
  ];
  for (const root of lockRoots) {
    for (const lock of await findLocks(root)) failures.push(`orphan lock file ${lock}`);
  }

  if (s.verify) failures.push(...(await s.verify(stack, ctx)));
  if (s.finish) await s.finish(stack);

  // API answers.
  const responses: Recorded[] = client.responses;
  const bad = responses.filter((r) => r.status >= 500 && !isDocumented503(r));
  for (const r of bad)
    failures.push(
      `API answered ${r.status} ${r.code ?? ''} to ${r.route}${r.retryAfter ? '' : ' (no Retry-After)'}`,
    );
  const lost = responses.filter((r) => r.status === 0);
  const noResponse = lost.length;
  if (noResponse > 0)
    failures.push(
      `${noResponse} requests got no response in 15 s: ${[...new Set(lost.map((r) => r.route))].join(', ')}`,
    );

  log(`${s.name}: ${failures.length === 0 ? 'ok' : `${failures.length} failed check(s)`}`);
  return {
    name: s.name,
    runs: total,
    terminal,
    outcomes,
    eventsOk,
    retried,
    orphanContainers: containers.length,
    orphanWorktrees,
    http5xx: bad.length,
    readyz503: responses.filter((r) => isDocumented503(r) && r.route === 'GET /readyz').length,
    api503: responses.filter((r) => isDocumented503(r) && r.route !== 'GET /readyz').length,
    noResponse,
    outageMs,
    recoveryMs: Math.max(0, recoveryMs),
    failures,
  };
}

function table(results: Result[]): string {
  const s = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
  const rows = [
    '| fault | runs | terminal | outcomes | events ok | hit by fault | orphans (containers/worktrees) | 5xx | 503 /v1 (documented) | 503 /readyz | no response | outage | recovery | result |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...results.map((r) => {
      const outcomes = Object.entries(r.outcomes)
        .map(([k, n]) => `${k} ×${n}`)
        .join(', ');
      const cells = [
        r.name,
        r.runs,
        r.terminal,
        outcomes,
        `${r.eventsOk}/${r.runs}`,
        r.retried,
        `${r.orphanContainers}/${r.orphanWorktrees}`,
        r.http5xx,
        r.api503,
        r.readyz503,
        r.noResponse,
        s(r.outageMs),
        s(r.recoveryMs),
        r.failures.length === 0 ? 'PASS' : 'FAIL',
      ];
      return `| ${cells.join(' | ')} |`;
    }),
  ];
  return rows.join('\n');
}

function needEnv(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run \`npm run provision\` and source provisioned.env)`);
  return v;
}

async function main(): Promise<number> {
  const only = process.env.FAULTS?.split(',').filter(Boolean);
  // Names may repeat (FAULTS=temporal-restart,temporal-restart runs it twice).
  const scenarios = only
    ? only.map((name) => {
        const s = SCENARIOS.find((x) => x.name === name);
        if (!s)
          throw new Error(`unknown scenario ${name}; known: ${SCENARIOS.map((x) => x.name).join(', ')}`);
        return s;
      })
    : SCENARIOS;
  const workDir = await mkdtemp(join(tmpdir(), 'choiros-faults-'));
  const stack = new FaultStack({
    workDir,
    dockerDataRoot: process.env.CHOIROS_FAULTS_DOCKER_DATA_ROOT ?? '/var/lib/choiros-faults-docker',
    dockerExecRoot: process.env.CHOIROS_FAULTS_DOCKER_EXEC_ROOT ?? '/run/choiros-faults',
    temporalBin: needEnv('CHOIROS_TEMPORAL_BIN'),
    natsBin: needEnv('CHOIROS_NATS_SERVER_BIN'),
    busybox: process.env.CHOIROS_BUSYBOX || '/bin/busybox',
    log,
  });
  const stopOnSignal = (): void => {
    void stack.stop().then(() => process.exit(130));
  };
  process.once('SIGINT', stopOnSignal);
  process.once('SIGTERM', stopOnSignal);
  const t0 = Date.now();
  const results: Result[] = [];
  let failed = true;
  try {
    log(`work dir ${workDir}`);
    await stack.start();
    log(`stack up in ${((Date.now() - t0) / 1000).toFixed(0)} s (API ${stack.apiUrl})`);
    for (const s of scenarios) results.push(await runScenario(stack, s, workDir));
    failed = results.some((r) => r.failures.length > 0);
  } catch (err) {
    log(`ERROR: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  } finally {
    await stack.stop();
  }
  const out = table(results);
  process.stdout.write(`\n${out}\n\n`);
  for (const r of results) for (const f of r.failures) process.stdout.write(`FAIL ${r.name}: ${f}\n`);
  await writeFile(join(workDir, 'results.json'), JSON.stringify(results, null, 2));
  log(`total ${((Date.now() - t0) / 1000).toFixed(0)} s; ${failed ? 'FAILED' : 'all checks passed'}`);
  if (failed || process.env.CHOIROS_FAULTS_KEEP === '1') log(`logs and results kept in ${workDir}`);
  else await rm(workDir, { recursive: true, force: true });
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`faults: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
