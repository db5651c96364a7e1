/** The sandbox driver interface: what the run activities need from an isolation technology. */
import type { Writable } from 'node:stream';
import type { CommandOutcome, EgressRule, NetworkPolicy } from '../../contracts';

/** Labels put on every container the platform creates, so a sweeper can find orphans. */
export interface SandboxLabels {
  tenant: string;
  userId: string;
  runId: string;
  workItemId: string;
  lane: 'execution' | 'verifier' | 'egress-proxy';
}

export interface CommandOptions {
  timeoutMs: number;
  /** Called every few seconds while the command runs (activities heartbeat from it). */
  onProgress?: (p: { outputBytes: number; elapsedMs: number }) => void;
  /** Aborting kills the command and its container. */
  signal?: AbortSignal;
  /** Receives the full combined output as it arrives (e.g. an artifact writer); ended by the caller. */
  output?: Writable;
}

/** The execution-lane container of a run. */
export interface ExecutionSandboxSpec {
  name: string;
  workspace: string;
  labels: SandboxLabels;
  network?: NetworkPolicy;
  /** Allowed destinations for policy `allowlist`. */
  egress?: EgressRule[];
  /** Image to run (an id from imageId()); the configured image when absent. */
  image?: string;
  /** The run's tenant's secrets (resolved), for this execution lane only; never the verifier lane. */
  env?: Record<string, string>;
}

/** One verifier attempt in a fresh container (or process) over the run's worktree. */
export interface VerifierRunSpec {
  name: string;
  workspace: string;
  argv: string[];
  labels: SandboxLabels;
  image?: string;
}

export interface SandboxDriver {
  /**
   * Identifier of the image sandboxes run (the configured one, or `pinned` when given);
   * throws `sandbox_image_missing` when absent.
   */
  imageId(pinned?: string): Promise<string>;
  /**
   * Creates (or finds, on a retry) the execution-lane container for a run. It runs only while a
   * command does: exec starts it, stop ends it.
   */
  createExecutionSandbox(spec: ExecutionSandboxSpec): Promise<void>;
  /** Runs argv in the execution-lane container, in /workspace. */
  exec(name: string, argv: string[], opts: CommandOptions): Promise<CommandOutcome>;
  /** Runs argv in a fresh, network-less verifier-lane container with the workspace mounted read-only. */
  runVerifier(spec: VerifierRunSpec, opts: CommandOptions): Promise<CommandOutcome>;
  /** Removes an execution container's egress proxy, if the driver makes them; true when one was removed. */
  removeEgressProxy?(container: string): Promise<boolean>;
  /**
   * Stops every process of an execution lane (a later exec starts it again); nothing of the run
   * runs once it returns. Succeeds for a lane that is already stopped or gone.
   */
  stop(name: string): Promise<void>;
  /** Removes a container if it exists; true when something was removed. */
  remove(name: string): Promise<boolean>;
  /** Removes the run's own network (policy `internal`) if it exists; true when something was removed. */
  removeRunNetwork(runId: string): Promise<boolean>;
}

/** An idle pool container to make (decision 0016). */
export interface PoolSandboxSpec {
  /** Container name (`choiros-pool-<slot>`). */
  name: string;
  /** The pool slot's tree, bind-mounted at /workspace exactly as a run's tree is. */
  workspace: string;
  /** Id of the pool (one per worker process) that owns the container. */
  poolId: string;
  /** The worktree root the slot lives under (its `.pool/` directory). */
  root: string;
  /** The pool lane: SHARED_LANE, or the tenant whose secrets `env` holds. */
  lane: string;
  /** The lane's own variables (a tenant lane's secrets), merged over the platform's as for a run's lane. */
  env: Record<string, string>;
}

export interface PoolSandboxInfo {
  id: string;
  name: string;
  poolId: string;
  imageId: string;
  running: boolean;
}

/** What a driver offers so a warm pool can keep execution-lane containers ready (the Docker driver). */
export interface PoolDriver {
  imageId(pinned?: string): Promise<string>;
  createPoolSandbox(spec: PoolSandboxSpec): Promise<{ imageId: string }>;
  /** Renames an idle pool container to a run's container name; false when it is gone or dead. */
  adoptPoolSandbox(poolName: string, runName: string): Promise<boolean>;
  listPoolSandboxes(root: string): Promise<PoolSandboxInfo[]>;
  remove(name: string): Promise<boolean>;
}
