/**
 * Local sandbox driver: plain child processes in the run's worktree, for machines without Docker.
 * Isolation is much weaker than the Docker driver's and it says so: no separate file system,
 * network or pid namespace, no memory/pids limits, and the verifier lane can write the worktree.
 * What it does do: argv only (no shell), a minimal environment (secrets only in the execution
 * lane), the unprivileged sandbox uid/gid when the worker is root, a process group per command
 * that a timeout or cancellation kills as a whole.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import type { Logger } from 'pino';
import { ApplicationFailure } from '@temporalio/common';
import type { CommandOutcome, NetworkPolicy } from '../../contracts';
import type { CommandOptions, SandboxDriver, SandboxLabels } from './driver';
import { BoundedOutput } from './output';
import {
  spawnGroup,
  type SpawnGroupOptions,
  type SpawnedExit,
  type SpawnedGroup,
} from '../workspace/process-helper';

export interface LocalDriverOptions {
  /** Where the driver remembers each sandbox's workspace (so a restarted worker finds it). */
  stateDir: string;
  /** `uid:gid` to run commands as when the worker runs as root. */
  user: string;
  /** PATH given to commands. */
  path: string;
  /** Environment of the execution lane only (resolved secrets). */
  executionEnv?: Record<string, string>;
  logger: Logger;
  /**
   * Starts a command in its own process group. Default: from the worker's process helper, since a
   * spawn forks its caller and the worker is large (activities/workspace/process-helper.ts).
   */
  spawn?: (file: string, args: string[], opts: SpawnGroupOptions) => SpawnedGroup;
}

const PROGRESS_INTERVAL_MS = 1_000;

export class LocalSandboxDriver implements SandboxDriver {
  /** Process groups still running, per sandbox name. */
  private readonly groups = new Map<string, Set<number>>();
  /**
   * Tenant secrets per execution lane, kept in memory only (never in the state file): a worker that
   * restarts runs a retried command without them (this driver is for trusted development).
   */
  private readonly laneEnv = new Map<string, Record<string, string>>();

  constructor(private readonly opts: LocalDriverOptions) {
    opts.logger.warn(
      { event: 'sandbox.driver.local' },
      'local sandbox driver: commands run as host processes without container isolation (no fs, network, pid or memory isolation)',
    );
  }

  async imageId(pinned?: string): Promise<string> {
    const own = `local:node-${process.version}`;
    if (pinned !== undefined && pinned !== own) {
      throw ApplicationFailure.create({
        type: 'sandbox_image_missing',
        message: `the run pins ${pinned}, but this host's local driver runs ${own}`,
        nonRetryable: true,
      });
    }
    return own;
  }

  async removeRunNetwork(): Promise<boolean> {
    return false;
  }

  private stateFile(name: string): string {
    return join(this.opts.stateDir, `${name}.json`);
  }

  async createExecutionSandbox(spec: {
    name: string;
    workspace: string;
    labels: SandboxLabels;
    network?: NetworkPolicy;
    env?: Record<string, string>;
  }): Promise<void> {
    if (spec.network === 'internal' || spec.network === 'allowlist') {
      throw ApplicationFailure.create({
        type: 'invalid_sandbox_request',
        message: `network policy ${spec.network} needs the docker driver (the local driver has no network isolation)`,
        nonRetryable: true,
      });
    }
    if (spec.env) this.laneEnv.set(spec.name, spec.env);
    await mkdir(this.opts.stateDir, { recursive: true });
    await writeFile(
      this.stateFile(spec.name),
      JSON.stringify({ workspace: spec.workspace, labels: spec.labels }),
    );
  }

  async exec(name: string, argv: string[], opts: CommandOptions): Promise<CommandOutcome> {
    const state = JSON.parse(await readFile(this.stateFile(name), 'utf8')) as { workspace: string };
    return this.run(
      name,
      state.workspace,
      argv,
      { ...this.baseEnv(), ...this.opts.executionEnv, ...this.laneEnv.get(name) },
      opts,
    );
  }

  async runVerifier(
    spec: { name: string; workspace: string; argv: string[]; labels: SandboxLabels },
    opts: CommandOptions,
  ): Promise<CommandOutcome> {
    return this.run(spec.name, spec.workspace, spec.argv, this.baseEnv(), opts);
  }

  async stop(name: string): Promise<void> {
    for (const pgid of this.groups.get(name) ?? []) killGroup(pgid);
  }

  async remove(name: string): Promise<boolean> {
    const groups = this.groups.get(name);
    for (const pgid of groups ?? []) killGroup(pgid);
    this.groups.delete(name);
    this.laneEnv.delete(name);
    const existed = await readFile(this.stateFile(name)).then(
      () => true,
      () => false,
    );
    await rm(this.stateFile(name), { force: true });
    return existed || (groups?.size ?? 0) > 0;
  }

  private baseEnv(): Record<string, string> {
    return { HOME: '/tmp', PATH: this.opts.path, LC_ALL: 'C' };
  }

  private async run(
    name: string,
    cwd: string,
    argv: string[],
    env: Record<string, string>,
    opts: CommandOptions,
  ): Promise<CommandOutcome> {
    const [program = '', ...args] = argv;
    const [uid, gid] = this.opts.user.split(':').map(Number);
    const asRoot = process.getuid?.() === 0;
    const started = Date.now();
    const output = new BoundedOutput();
    const sink: Writable = output.writable(opts.output);
    const groups = this.groups.get(name) ?? new Set<number>();
    this.groups.set(name, groups);
    // Its own process group, so a timeout kills everything the command started.
    const child = (this.opts.spawn ?? spawnGroup)(program, args, {
      cwd,
      env,
      ...(asRoot ? { uid, gid } : {}),
      output: (chunk) =>
        new Promise<void>((resolve) => (sink.write(chunk) ? resolve() : sink.once('drain', resolve))),
    });
    let pgid: number | undefined;
    let timedOut = false;
    const kill = (): void => {
      if (pgid !== undefined) killGroup(pgid);
    };
    // Registered as soon as it runs, so a stop() or remove() meanwhile reaches it too.
    const running = child.pid.then((pid) => {
      pgid = pid;
      if (pid !== undefined) groups.add(pid);
      // Timed out, cancelled or removed before it had a pid: it goes at once.
      if (timedOut || opts.signal?.aborted || this.groups.get(name) !== groups) kill();
    });
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, opts.timeoutMs);
    const progress = setInterval(() => {
      opts.onProgress?.({ outputBytes: output.bytes, elapsedMs: Date.now() - started });
    }, PROGRESS_INTERVAL_MS);
    opts.signal?.addEventListener('abort', kill, { once: true });
    let result: SpawnedExit;
    try {
      result = await child.exited;
    } finally {
      await running;
      clearTimeout(timer);
      clearInterval(progress);
      opts.signal?.removeEventListener('abort', kill);
      // Whatever the command left running in its group goes with it.
      kill();
      if (pgid !== undefined) groups.delete(pgid);
    }
    const spawnError = result.spawnError;
    if (spawnError) sink.write(Buffer.from(`cannot run ${program}: ${spawnError.message}\n`));
    await new Promise<void>((resolve) => sink.end(() => resolve()));
    if (opts.signal?.aborted) throw opts.signal.reason ?? new Error('cancelled');
    const exitCode = timedOut ? 124 : spawnError ? 127 : (result.code ?? 128 + signalNumber(result.signal));
    return { exitCode, timedOut, durationMs: Date.now() - started, ...output.finish() };
  }
}

function killGroup(pgid: number): void {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

function signalNumber(signal: NodeJS.Signals | null): number {
  return signal === 'SIGKILL' ? 9 : signal === 'SIGTERM' ? 15 : 1;
}
