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
  expect: { statuses: RunStatus[]; errorCodes?: string[]; retried?: boolean };
  /** Turns the fault on; resolves with the function that heals it. */
  inject(stack: FaultStack): Promise<() => Promise<void>>;
  /** How long the fault stays on before it is healed (an outage length, not a wait for readiness). */
  downMs: number;
}

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
