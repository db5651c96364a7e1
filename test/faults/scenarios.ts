/**
 * The faults, one at a time, each against a load of runs through the real API. Each scenario says
 * how its load looks, how the fault is injected and healed, and which outcomes are correct.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, readdir, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { mirrorPath } from '../../activities/workspace/mirror';
import type { RunBudgets, RunStatus } from '../../contracts';
import type { FaultStack } from './stack';

/** What a scenario's fault may aim at: its tenant, repositories and the runs started before it. */
export interface FaultContext {
  tenant: string;
  /** The scenario's repositories (local paths). */
  repos: string[];
  /** What runs were started with (the path, or its `file://` URL with `repoUrls`). */
  repoArg: (i: number) => string;
  /** Ids of the runs started before the fault. */
  runIds: string[];
  /** Ids of the runs started once the fault was healed (`runsAfter`); filled in after the heal. */
  afterRunIds: string[];
}

export interface Scenario {
  name: string;
  /** What the fault does, for the table and docs/reliability.md. */
  fault: string;
  /** Runs started before the fault. */
  runs: number;
  /** Runs started while the fault is on (their client retries documented 503s). */
  runsDuring: number;
  /** Runs started once the fault is healed (expected: `expect.after`). */
  runsAfter?: number;
  /** The first this-many runs have an SSE client following their events through the fault. */
  followEvents?: number;
  /** Users of the scenario's one tenant the runs are spread over (round robin); 2 by default. */
  users?: number;
  /** All runs on one repository (a burst), instead of one repository per run. */
  sharedRepo?: boolean;
  /** Runs name their repository by `file://` URL (the worker uses a tenant mirror of it). */
  repoUrls?: boolean;
  /** How long the runs may take to settle after the fault; 300 s by default. */
  settleMs?: number;
  /** The work item's shell command. */
  command: string;
  budgets?: RunBudgets;
  /** Inject once every run started before the fault has reached this status (`created`: at once). */
  injectWhen: 'created' | 'running';
  /**
   * Outcomes that are correct for this fault. `retried`: at least one run must show the fault in its
   * history (an activity attempt > 1, a timed-out or failed attempt or workflow task), so a fault
   * that missed every run does not pass.
   */
  expect: {
    statuses: RunStatus[];
    /** The codes a run that did not commit may fail with. */
    errorCodes?: string[];
    /** Outcomes of the runs started after the heal; `committed` by default. */
    after?: RunStatus[];
    retried?: boolean;
    /**
     * Joining the admission queue retried for at most 2 % of the runs (a slow signal-with-start on a
     * loaded machine times out at 30 s; the livelock of issue 18 retried thousands of times), and
     * the tenant's gate had no failed workflow task.
     */
    admissionClean?: boolean;
  };
  /** Turns the fault on; resolves with the function that heals it. */
  inject(stack: FaultStack, ctx: FaultContext): Promise<() => Promise<void>>;
  /** Before the scenario's runs start (e.g. a worker with a test-only hook). */
  prepare?(stack: FaultStack): Promise<void>;
  /** Scenario-specific checks once every run settled; returns failed checks. */
  verify?(stack: FaultStack, ctx: FaultContext): Promise<string[]>;
  /** After the checks: puts the stack back as the next scenario expects it (e.g. a worker without a hook). */
  finish?(stack: FaultStack): Promise<void>;
  /** How long the fault stays on before it is healed (an outage length, not a wait for readiness). */
  downMs: number;
}

/** Runs of the burst scenario (CHOIROS_FAULTS_BURST_RUNS, default 300, as in issue 18). */
const BURST_RUNS = Number(process.env.CHOIROS_FAULTS_BURST_RUNS ?? 300);

/** A lock file as a git killed `agoMs` ago leaves it: written, never removed. */
function leftLock(path: string, agoMs: number): void {
  writeFileSync(path, '');
  const t = (Date.now() - agoMs) / 1000;
  utimesSync(path, t, t);
}

/** The locks the worker logged as removed (`event: git.lock.removed`, worker-*.log). */
async function removedLocks(stack: FaultStack): Promise<string[]> {
  const out: string[] = [];
  for (const f of (await readdir(stack.logDir)).filter((n) => /^worker-\d+\.log$/.test(n))) {
    for (const line of (await readFile(join(stack.logDir, f), 'utf8')).split('\n')) {
      if (!line.includes('"git.lock.removed"')) continue;
      try {
        const l = JSON.parse(line) as { lock?: unknown };
        if (typeof l.lock === 'string') out.push(l.lock);
      } catch {
        /* not a log line of ours */
      }
    }
  }
  return out;
}

/** Lines of the workers' logs (worker-*.log) with this `event`. */
async function workerLogEvents(stack: FaultStack, event: string): Promise<number> {
  let n = 0;
  for (const f of (await readdir(stack.logDir)).filter((x) => /^worker-\d+\.log$/.test(x)))
    n += (await readFile(join(stack.logDir, f), 'utf8')).split(`"event":"${event}"`).length - 1;
  return n;
}

/** How long nats-partition drops NATS's packets (CHOIROS_FAULTS_PARTITION_SECONDS, default 25). */
const PARTITION_SECONDS = Number(process.env.CHOIROS_FAULTS_PARTITION_SECONDS ?? 25);

/** Size of the filesystem disk-full mounts over the worker's data dir. */
const DATA_DISK_MB = 128;
/** Ballast files that fill the data disk (disk-full), removed to heal it. */
const ballast = (stack: FaultStack): string => join(stack.dataDir, '.faults-ballast');

/** Fills the filesystem of `dir` with preallocated files until not one more block fits; returns the bytes taken. */
function fillDisk(dir: string, free: () => Promise<number>): Promise<number> {
  mkdirSync(dir, { recursive: true });
  return (async () => {
    let taken = 0;
    let size = await free();
    for (let i = 0; size >= 4096; i++) {
      try {
        execFileSync('fallocate', ['-l', String(size), join(dir, `fill-${i}`)], { stdio: 'pipe' });
        taken += size;
        size = await free();
      } catch {
        rmSync(join(dir, `fill-${i}`), { force: true });
        size = Math.floor(size / 2 / 4096) * 4096;
      }
    }
    return taken;
  })();
}

/** `git fsck --strict` of a git dir: undefined when clean, else what it said. */
function fsck(gitDir: string): string | undefined {
  try {
    execFileSync(
      'git',
      ['-c', 'safe.directory=*', '--git-dir', gitDir, 'fsck', '--no-progress', '--strict'],
      {
        stdio: 'pipe',
      },
    );
    return undefined;
  } catch (err) {
    return String((err as { stderr?: unknown }).stderr ?? err).trim();
  }
}

/** The artifact store's problems: a blob whose bytes do not hash to its name, a temp file left. */
async function artifactProblems(root: string): Promise<string[]> {
  const problems: string[] = [];
  const fan = await readdir(join(root, 'sha256')).catch(() => [] as string[]);
  for (const ab of fan) {
    for (const name of await readdir(join(root, 'sha256', ab))) {
      const digest = createHash('sha256')
        .update(await readFile(join(root, 'sha256', ab, name)))
        .digest('hex');
      if (digest !== name || !name.startsWith(ab))
        problems.push(`artifact ${ab}/${name} hashes to ${digest}`);
    }
  }
  for (const t of await readdir(join(root, 'tmp')).catch(() => [] as string[]))
    problems.push(`artifact temp file left: tmp/${t}`);
  return problems;
}

/** Where createSandbox leaves a file per run while it is held (worker-kill-in-create). */
const pauseDir = (stack: FaultStack): string => join(stack.logDir, '..', 'create-pauses');

/** Locks the stale-git-lock scenario planted, by what they stand for. */
const planted = new Map<string, string>();

/** A command that outlives the fault: the fault hits while it runs. */
const WORK = 'sleep 8; echo done > RESULT.txt';

export const SCENARIOS: Scenario[] = [
  {
    name: 'worker-sigkill',
    fault:
      'SIGKILL of the worker process group mid-command; a replacement worker (same host id) starts at once',
    runs: 8,
    runsDuring: 2,
    command: WORK,
    injectWhen: 'running',
    expect: { statuses: ['committed'], retried: true },
    downMs: 0,
    async inject(stack) {
      await stack.killWorker();
      return async () => void (await stack.startWorker());
    },
  },
  {
    name: 'temporal-restart',
    fault: 'Temporal dev server stopped for 10 s, then started on the same port with the same SQLite file',
    runs: 8,
    runsDuring: 2,
    command: WORK,
    injectWhen: 'running',
    expect: { statuses: ['committed'] },
    downMs: 10_000,
    async inject(stack) {
      await stack.stopTemporal();
      return () => stack.startTemporal();
    },
  },
  {
    name: 'nats-restart',
    fault: 'nats-server stopped for 10 s, then started on the same port with the same JetStream store',
    runs: 8,
    runsDuring: 2,
    command: WORK,
    injectWhen: 'running',
    expect: { statuses: ['committed'] },
    downMs: 10_000,
    async inject(stack) {
      await stack.stopNats();
      return () => stack.startNats();
    },
  },
  {
    name: 'nats-partition',
    fault: `every packet into and out of NATS's network namespace dropped (iptables in that namespace) for ${PARTITION_SECONDS} s: no connection is closed, nothing answers`,
    runs: 8,
    runsDuring: 2,
    followEvents: 4,
    command: WORK,
    injectWhen: 'running',
    // Publishes time out and are retried (the workflow's outbox, the steps' carried events), so
    // histories show the fault; JetStream's Nats-Msg-Id dedup drops what the dead connection
    // delivers late once the partition heals.
    expect: { statuses: ['committed'], retried: true },
    downMs: PARTITION_SECONDS * 1000,
    async inject(stack) {
      await stack.partitionNats(true);
      return () => stack.partitionNats(false);
    },
    async verify(stack) {
      const unpublished = await workerLogEvents(stack, 'events.carried.unpublished');
      process.stdout.write(
        `[faults] nats-partition: ${unpublished} step(s) left carried events to the workflow\n`,
      );
      return [];
    },
  },
  {
    name: 'docker-restart',
    fault:
      "the suite's own dockerd stopped (its containers die with it) for 5 s, then started on the same data root",
    runs: 8,
    runsDuring: 2,
    command: WORK,
    injectWhen: 'running',
    expect: { statuses: ['committed'], retried: true },
    downMs: 5_000,
    async inject(stack) {
      await stack.stopDockerd();
      return () => stack.startDockerd();
    },
  },
  {
    name: 'worker-kill-in-create',
    fault:
      "SIGKILL of the worker while every run's createSandbox is half-way: its workspace (tree, host git dir) made, its container not yet (held there by the test-only CHOIROS_TEST_PAUSE_CREATE_DIR); a replacement worker starts at once",
    runs: 4,
    runsDuring: 0,
    command: WORK,
    injectWhen: 'created',
    expect: { statuses: ['committed'], retried: true },
    downMs: 0,
    async prepare(stack) {
      await rm(pauseDir(stack), { recursive: true, force: true });
      await mkdir(pauseDir(stack), { recursive: true });
      await stack.stopWorker();
      await stack.startWorker({ CHOIROS_TEST_PAUSE_CREATE_DIR: pauseDir(stack) });
    },
    async inject(stack, ctx) {
      const deadline = Date.now() + 120_000;
      for (;;) {
        const paused = await readdir(pauseDir(stack));
        if (ctx.runIds.every((id) => paused.includes(id))) break;
        if (Date.now() > deadline)
          throw new Error(
            `only ${paused.length}/${ctx.runIds.length} runs reached the pause in createSandbox`,
          );
        await new Promise((r) => setTimeout(r, 250));
      }
      // Every run's workspace is made and none has a container: the window the fault is about.
      for (const id of ctx.runIds) {
        if (!existsSync(join(stack.worktreeRoot, id, 'state.json')))
          throw new Error(`run ${id} paused without a complete workspace`);
      }
      const before = await stack.docker.listContainers({
        all: true,
        filters: { label: ['choiros.managed=true'] },
      });
      if (before.length > 0) throw new Error(`${before.length} container(s) exist before the kill`);
      await stack.killWorker();
      return async () => void (await stack.startWorker());
    },
    async verify(_stack, ctx) {
      // One run branch per run, named for it: no second branch from the retry.
      const failures: string[] = [];
      ctx.repos.forEach((repo, i) => {
        const branches = execFileSync(
          'git',
          ['-C', repo, 'for-each-ref', '--format=%(refname)', 'refs/heads/choiros/'],
          {
            encoding: 'utf8',
          },
        )
          .split('\n')
          .filter(Boolean);
        const want = [`refs/heads/choiros/run/${ctx.runIds[i]}`];
        if (JSON.stringify(branches) !== JSON.stringify(want))
          failures.push(`${repo} has branches ${JSON.stringify(branches)}, expected ${JSON.stringify(want)}`);
      });
      return failures;
    },
  },
  {
    name: 'stale-git-lock',
    fault:
      "lock files as a killed git leaves them: in the tenant's mirror `refs/heads/main.lock` (10 min old, and the origin's main moved on) and a fresh run-branch ref lock; in a run's host git dir a 10 min old `index.lock`",
    runs: 4,
    runsDuring: 2,
    sharedRepo: true,
    repoUrls: true,
    command: WORK,
    injectWhen: 'running',
    // The worker absorbs the fault inside the attempt (it waits for / removes the lock and runs git
    // again): histories stay clean, the evidence is the worker's `git.lock.removed` lines (verify).
    expect: { statuses: ['committed'] },
    downMs: 0,
    async inject(stack, ctx) {
      planted.clear();
      const mirror = mirrorPath(join(stack.dataDir, 'mirrors'), ctx.tenant, ctx.repoArg(0));
      // The origin moves on, so the next fetch must update the mirror's main: it meets the lock.
      const origin = ctx.repos[0] as string;
      execFileSync('sh', ['-c', 'echo more >> README.md'], { cwd: origin });
      execFileSync(
        'git',
        ['-c', 'user.name=Faults', '-c', 'user.email=faults@example.invalid', 'commit', '-qam', 'moved on'],
        { cwd: origin },
      );
      const mainLock = join(mirror, 'refs', 'heads', 'main.lock');
      leftLock(mainLock, 10 * 60_000);
      planted.set(mainLock, 'mirror main (stale)');
      // A git killed a moment ago while writing run 0's branch: young, so the worker waits for it.
      const runDir = join(mirror, 'refs', 'heads', 'choiros', 'run');
      mkdirSync(runDir, { recursive: true });
      const refLock = join(runDir, `${ctx.runIds[0]}.lock`);
      leftLock(refLock, 0);
      planted.set(refLock, 'mirror run branch (young)');
      // A git killed in run 1's own host git dir (its index).
      const indexLock = join(stack.worktreeRoot, ctx.runIds[1] as string, 'index.lock');
      leftLock(indexLock, 10 * 60_000);
      planted.set(indexLock, 'run index (stale)');
      return () => Promise.resolve();
    },
    async verify(stack, ctx) {
      const failures: string[] = [];
      const removed = new Set(await removedLocks(stack));
      for (const [lock, what] of planted)
        if (!removed.has(lock)) failures.push(`the ${what} lock ${lock} was not logged as removed`);
      const mirror = mirrorPath(join(stack.dataDir, 'mirrors'), ctx.tenant, ctx.repoArg(0));
      try {
        execFileSync('git', ['--git-dir', mirror, 'fsck', '--no-progress', '--strict'], { stdio: 'pipe' });
      } catch (err) {
        failures.push(
          `git fsck of the mirror failed: ${String((err as { stderr?: unknown }).stderr ?? err)}`,
        );
      }
      const originMain = execFileSync('git', ['-C', ctx.repos[0] as string, 'rev-parse', 'main'], {
        encoding: 'utf8',
      }).trim();
      const mirrorMain = execFileSync('git', ['--git-dir', mirror, 'rev-parse', 'main'], {
        encoding: 'utf8',
      }).trim();
      if (originMain !== mirrorMain)
        failures.push(`the mirror's main ${mirrorMain} is not the origin's ${originMain}`);
      return failures;
    },
  },
  {
    name: 'disk-full',
    fault: `the worker's data dir (worktrees, mirrors, artifacts) is a ${DATA_DISK_MB} MiB ext4 filesystem the suite loop-mounts; it is filled (preallocated ballast) while the runs execute, for 30 s, then the ballast is removed`,
    runs: 4,
    runsDuring: 2,
    runsAfter: 2,
    repoUrls: true,
    command: WORK,
    injectWhen: 'running',
    // Decision 0023: a step that runs out of space waits CHOIROS_DISK_FULL_WAIT_SECONDS (10 s here)
    // for it, then the run fails host_disk_full; the runs started after the heal commit.
    expect: { statuses: ['failed'], errorCodes: ['host_disk_full'], retried: true, after: ['committed'] },
    downMs: 30_000,
    async prepare(stack) {
      await stack.stopWorker();
      await stack.mountDataDisk(DATA_DISK_MB);
      await stack.startWorker({ CHOIROS_DISK_FULL_WAIT_SECONDS: '10', CHOIROS_DISK_MIN_FREE_MB: '8' });
    },
    async inject(stack) {
      const free = async (): Promise<number> => {
        const st = await statfs(stack.dataDir);
        return st.bavail * st.bsize;
      };
      const before = await free();
      const taken = await fillDisk(ballast(stack), free);
      process.stdout.write(
        `[faults] disk-full: ${(before / 1048576).toFixed(1)} MiB were free, ballast ${(taken / 1048576).toFixed(1)} MiB, ${await free()} bytes left\n`,
      );
      return () => rm(ballast(stack), { recursive: true, force: true });
    },
    async verify(stack, ctx) {
      const failures: string[] = [];
      // Nothing corrupted: the origins, every mirror of the tenant (on the full disk), the artifact store.
      for (const repo of ctx.repos) {
        const bad = fsck(join(repo, '.git'));
        if (bad) failures.push(`git fsck of ${repo}: ${bad}`);
      }
      const mirrors = join(stack.dataDir, 'mirrors', ctx.tenant);
      const names = await readdir(mirrors).catch(() => [] as string[]);
      for (const m of names) {
        if (!existsSync(join(mirrors, m, 'HEAD'))) {
          failures.push(`left in the mirrors dir: ${m}`);
          continue;
        }
        const bad = fsck(join(mirrors, m));
        if (bad) failures.push(`git fsck of mirror ${m}: ${bad}`);
      }
      if (names.length === 0) failures.push('no mirror was made: the runs never reached the disk');
      failures.push(...(await artifactProblems(join(stack.dataDir, 'artifacts'))));
      const gaveUp = await workerLogEvents(stack, 'host.disk.full.gave_up');
      process.stdout.write(`[faults] disk-full: ${gaveUp} host step(s) gave up on the full disk\n`);
      if (gaveUp === 0) failures.push('the worker never logged host.disk.full.gave_up');
      return failures;
    },
    async finish(stack) {
      // The next scenarios run on the data dir as it was, with a worker of the usual settings.
      await stack.stopWorker();
      await stack.unmountDataDisk();
      await stack.startWorker();
    },
  },
  {
    name: 'temporal-slow',
    fault:
      'every call of the API and the worker to Temporal delayed 500–1500 ms (a delaying TCP proxy the suite runs in front of it) for 60 s',
    runs: 6,
    runsDuring: 4,
    command: WORK,
    injectWhen: 'created',
    expect: { statuses: ['committed'] },
    downMs: 60_000,
    async inject(stack) {
      const proxy = stack.temporalProxy;
      if (!proxy) throw new Error('the suite has no Temporal proxy');
      proxy.delayed = 0;
      proxy.delay = { minMs: 500, maxMs: 1500 };
      return () => {
        proxy.delay = undefined;
        return Promise.resolve();
      };
    },
    verify(stack) {
      const n = stack.temporalProxy?.delayed ?? 0;
      process.stdout.write(`[faults] temporal-slow: ${n} client→Temporal chunks delayed\n`);
      // The fault's evidence: the calls went through the proxy while it delayed them.
      return Promise.resolve(n > 0 ? [] : ['no call to Temporal was delayed: the fault missed']);
    },
  },
  {
    name: 'burst-one-tenant',
    fault: `${BURST_RUNS} runs of one tenant from 10 users started at once (issue 18: this once livelocked admission)`,
    runs: BURST_RUNS,
    runsDuring: 0,
    users: 10,
    sharedRepo: true,
    command: 'echo done > RESULT.txt',
    injectWhen: 'created',
    expect: { statuses: ['committed'], admissionClean: true },
    downMs: 0,
    settleMs: 1_200_000,
    inject() {
      // The load is the fault: every run asks the tenant's one admission gate at once.
      return Promise.resolve(() => Promise.resolve());
    },
  },
  {
    name: 'timeout-storm',
    fault: '10 runs at once whose command (sleep 300) outlives its 10 s wall-clock budget',
    runs: 10,
    runsDuring: 0,
    command: 'sleep 300; echo done > RESULT.txt',
    budgets: { wallClockSeconds: 10 },
    injectWhen: 'created',
    expect: { statuses: ['failed'], errorCodes: ['budget_exceeded', 'execution_timeout'] },
    downMs: 0,
    inject() {
      // The load is the fault: every run hits its budget at about the same time.
      return Promise.resolve(() => Promise.resolve());
    },
  },
];
