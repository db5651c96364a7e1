/**
 * The faults, one at a time, each against a load of runs through the real API. Each scenario says
 * how its load looks, how the fault is injected and healed, and which outcomes are correct.
 */
import type { RunBudgets, RunStatus } from '../../contracts';
import type { FaultStack } from './stack';

export interface Scenario {
  name: string;
  /** What the fault does, for the table and docs/reliability.md. */
  fault: string;
  /** Runs started before the fault. */
  runs: number;
  /** Runs started while the fault is on (their client retries documented 503s). */
  runsDuring: number;
  /** Users of the scenario's one tenant the runs are spread over (round robin); 2 by default. */
  users?: number;
  /** All runs on one repository (a burst), instead of one repository per run. */
  sharedRepo?: boolean;
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
    errorCodes?: string[];
    retried?: boolean;
    /**
     * Joining the admission queue retried for at most 2 % of the runs (a slow signal-with-start on a
     * loaded machine times out at 30 s; the livelock of issue 18 retried thousands of times), and
     * the tenant's gate had no failed workflow task.
     */
    admissionClean?: boolean;
  };
  /** Turns the fault on; resolves with the function that heals it. */
  inject(stack: FaultStack): Promise<() => Promise<void>>;
  /** How long the fault stays on before it is healed (an outage length, not a wait for readiness). */
  downMs: number;
}

/** Runs of the burst scenario (CHOIROS_FAULTS_BURST_RUNS, default 300, as in issue 18). */
const BURST_RUNS = Number(process.env.CHOIROS_FAULTS_BURST_RUNS ?? 300);

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
