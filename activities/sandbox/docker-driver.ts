/** Docker sandbox driver (dockerode): locked-down containers, argv only, bounded output, hard timeouts. */
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import type Docker from 'dockerode';
import { ApplicationFailure } from '@temporalio/common';
import { z } from 'zod';
import {
  EGRESS_INDIVIDUAL_ATTEMPTS,
  egressAttemptSchema,
  egressSummarySchema,
  type CommandOutcome,
  type EgressAttempt,
  type EgressRule,
  type EgressSummary,
} from '../../contracts';
import { BoundedOutput } from './output';
import type {
  CommandOptions,
  ExecutionSandboxSpec,
  PoolSandboxInfo,
  PoolSandboxSpec,
  SandboxDriver,
  SandboxLabels,
  VerifierRunSpec,
} from './driver';

export interface DockerDriverOptions {
  image: string;
  /** `uid:gid` the sandbox processes run as; never root. */
  user: string;
  memoryBytes: number;
  nanoCpus: number;
  pidsLimit: number;
  tmpfsSizeMb: number;
  /** Environment of the execution lane only (resolved secrets); the verifier lane never gets it. */
  executionEnv?: Record<string, string>;
  /** Extra labels on every container (e.g. the host id). */
  extraLabels?: Record<string, string>;
  /**
   * Path of the egress proxy script, bind-mounted into proxy containers. The Docker engine resolves
   * it on its host, so a containerised worker passes a copy under its data dir (mounted at the same
   * path on the host); default: the script next to this code.
   */
  egressProxyScript?: string;
  /** Trusted platform settings of every run's egress proxy (docs/egress.md). */
  egress?: EgressProxySettings;
}

/** Platform configuration of the egress proxy; none of it comes from a run. */
export interface EgressProxySettings {
  /** CIDRs the proxy may connect to although they are not public (e.g. a test target); default none. */
  allowCidrs?: string[];
  /** CIDRs refused even when public or allowed (e.g. the Docker host's own addresses). */
  denyCidrs?: string[];
  /** Sustained attempts per second (token bucket; bursts of twice that). */
  ratePerSecond?: number;
  /** Attempts one proxy decides on in its life; the rest are `rate_limited`. */
  maxAttempts?: number;
}

/** Label keys; the `choiros.managed` label marks everything this platform owns. */
export const LABELS = {
  managed: 'choiros.managed',
  tenant: 'choiros.tenant',
  userId: 'choiros.user-id',
  runId: 'choiros.run-id',
  workItemId: 'choiros.work-item-id',
  lane: 'choiros.lane',
  /** Pool containers (activities/sandbox/pool.ts): the id of the pool that made them. */
  pool: 'choiros.pool',
  /** Pool containers: the worktree root whose `.pool/` holds their slot (and their pool's lease). */
  poolRoot: 'choiros.pool-root',
  /** Pool containers: the pool lane (`*`, or the tenant whose secrets they hold). */
  poolLane: 'choiros.pool-lane',
} as const;

/** Name prefix of an idle pool container; a claimed one is renamed to its run's container name. */
export const POOL_CONTAINER_PREFIX = 'choiros-pool-';

const PROGRESS_INTERVAL_MS = 1_000;
/**
 * How long an output stream may stay open after its process is gone (it exited, or was killed on
 * timeout or cancellation) before it is closed from this side. Docker 20.10 now and then never ends
 * the attach/exec stream of a process that has exited (seen by the fault suite under load): without
 * this bound the activity would heartbeat for its whole start-to-close timeout.
 */
const STREAM_GRACE_MS = 5_000;
/** How often a running exec is inspected, so its end is noticed even if its stream never ends. */
const EXEC_POLL_MS = 2_000;
const BASE_ENV = ['HOME=/tmp', 'PATH=/usr/local/bin:/usr/bin:/bin'];

/** Name of a run's own network (policy `internal`). */
/** The project's own bridge network that egress proxies use to reach allowed destinations. */
export const EGRESS_NETWORK = 'choiros-egress';
/** Host name of a run's egress proxy on the run's network. */
export const EGRESS_PROXY_ALIAS = 'egress-proxy';
const EGRESS_PROXY_PORT = 3128;
/** The egress proxy script shipped with this code. */
export const EGRESS_PROXY_SCRIPT = join(__dirname, '../../infra/images/egress-proxy/proxy.js');

/** The egress proxy container of an execution container. */
export function egressProxyName(container: string): string {
  return `${container}-egress`;
}

const SUMMARY_POLLS = 30;
const SUMMARY_POLL_MS = 100;

/** A proxy's summary line (`{"summary":{seq,…}}`, printed on SIGUSR2). */
const summaryLineSchema = z.object({
  summary: egressSummarySchema.omit({ complete: true }).extend({ seq: z.number().int() }),
});

function egressSummaryLine(line: unknown): z.infer<typeof summaryLineSchema>['summary'] | undefined {
  const parsed = summaryLineSchema.safeParse(line);
  return parsed.success ? parsed.data.summary : undefined;
}

/** Counts made from the individual attempts alone, when the proxy could not give its own. */
function summariseAttempts(attempts: EgressAttempt[]): EgressSummary {
  const destinations = new Map<string, EgressSummary['destinations'][number]>();
  const reasons: Record<string, number> = {};
  for (const a of attempts) {
    const key = `${a.host}:${a.port}`;
    const d = destinations.get(key) ?? { host: a.host, port: a.port, allowed: 0, denied: 0 };
    d[a.allowed ? 'allowed' : 'denied'] += 1;
    destinations.set(key, d);
    reasons[a.reason] = (reasons[a.reason] ?? 0) + 1;
  }
  const allowed = attempts.filter((a) => a.allowed).length;
  return {
    total: attempts.length,
    allowed,
    denied: attempts.length - allowed,
    rateLimited: attempts.filter((a) => a.reason === 'rate_limited').length,
    individual: attempts.length,
    destinations: [...destinations.values()],
    other: { allowed: 0, denied: 0 },
    reasons,
    complete: false,
  };
}

export function runNetworkName(runId: string): string {
  return `choiros-net-${runId}`;
}

/** How long one attempt waits for an engine that stopped answering (a restart) before it fails. */
const ENGINE_WAIT_MS = 120_000;
const ENGINE_POLL_MS = 1_000;

/** The engine's socket did not answer (dockerd restarting or down), as opposed to an answer that refuses. */
export function isEngineUnreachable(err: unknown): boolean {
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  return typeof code === 'string' && ['ENOENT', 'ECONNREFUSED', 'ECONNRESET', 'EPIPE'].includes(code);
}

/**
 * Polls `check` (true once the process is gone) every EXEC_POLL_MS until it says so or is
 * cancelled; errors (e.g. an engine that does not answer) just mean "ask again".
 */
function stoppedWhen(check: () => Promise<boolean>): { stopped: Promise<void>; cancel: () => void } {
  let cancelled = false;
  let timer: NodeJS.Timeout | undefined;
  const stopped = new Promise<void>((resolve) => {
    const tick = (): void => {
      if (cancelled) return;
      check().then(
        (yes) => (yes ? resolve() : void (timer = setTimeout(tick, EXEC_POLL_MS))),
        () => void (timer = setTimeout(tick, EXEC_POLL_MS)),
      );
    };
    timer = setTimeout(tick, EXEC_POLL_MS);
  });
  return {
    stopped,
    cancel: () => {
      cancelled = true;
      clearTimeout(timer);
    },
  };
}

function isNotFound(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { statusCode?: number }).statusCode === 404;
}

function isConflict(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { statusCode?: number }).statusCode === 409;
}

export class DockerSandboxDriver implements SandboxDriver {
  constructor(
    private readonly docker: Docker,
    private readonly opts: DockerDriverOptions,
  ) {}

  async imageId(pinned?: string): Promise<string> {
    return this.onEngine(() => this.inspectImage(pinned));
  }

  private async inspectImage(pinned?: string): Promise<string> {
    const image = pinned ?? this.opts.image;
    try {
      const info = await this.docker.getImage(image).inspect();
      return info.Id;
    } catch (err) {
      if (isNotFound(err)) {
        throw ApplicationFailure.create({
          type: 'sandbox_image_missing',
          message: pinned
            ? `sandbox image ${pinned} (pinned by the run) is no longer on this Docker engine`
            : `sandbox image ${image} is not on this Docker engine (npm start / npm test build it)`,
          nonRetryable: true,
        });
      }
      throw err;
    }
  }

  private labels(l: SandboxLabels): Record<string, string> {
    return {
      ...(this.opts.extraLabels ?? {}),
      [LABELS.managed]: 'true',
      [LABELS.tenant]: l.tenant,
      [LABELS.userId]: l.userId,
      [LABELS.runId]: l.runId,
      [LABELS.workItemId]: l.workItemId,
      [LABELS.lane]: l.lane,
    };
  }

  /** The locked-down host config shared by both lanes. */
  private hostConfig(workspace: string, readOnlyWorkspace: boolean, networkMode = 'none'): Docker.HostConfig {
    return {
      Binds: [`${workspace}:/workspace:${readOnlyWorkspace ? 'ro' : 'rw'}`],
      NetworkMode: networkMode,
      CapDrop: ['ALL'],
      SecurityOpt: ['no-new-privileges'],
      ReadonlyRootfs: true,
      Tmpfs: { '/tmp': `rw,noexec,nosuid,size=${this.opts.tmpfsSizeMb}m` },
      PidsLimit: this.opts.pidsLimit,
      Memory: this.opts.memoryBytes,
      MemorySwap: this.opts.memoryBytes,
      NanoCpus: this.opts.nanoCpus,
      AutoRemove: false,
    };
  }

  /**
   * Runs one engine operation. When the engine stops answering (dockerd restarting; its
   * containers die with it), the attempt waits — heartbeating through `onProgress` — until the
   * engine answers again and then fails with the retryable `docker_engine_unavailable`, so the
   * activity's next attempt starts against a live engine (containers are started again on exec)
   * instead of spending its retries in the seconds the engine is down.
   */
  private async onEngine<T>(fn: () => Promise<T>, opts: Partial<CommandOptions> = {}): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (!isEngineUnreachable(err)) throw err;
      const started = Date.now();
      for (;;) {
        if (
          await this.docker.ping().then(
            () => true,
            () => false,
          )
        )
          break;
        if (opts.signal?.aborted || Date.now() - started > ENGINE_WAIT_MS) break;
        opts.onProgress?.({ outputBytes: 0, elapsedMs: Date.now() - started });
        await new Promise((r) => setTimeout(r, ENGINE_POLL_MS));
      }
      throw ApplicationFailure.create({
        type: 'docker_engine_unavailable',
        message: `the Docker engine did not answer (${err instanceof Error ? err.message : String(err)}); the step is retried`,
        cause: err instanceof Error ? err : undefined,
      });
    }
  }

  async createExecutionSandbox(spec: ExecutionSandboxSpec): Promise<void> {
    return this.onEngine(() => this.createExecution(spec));
  }

  private async createExecution(spec: ExecutionSandboxSpec): Promise<void> {
    const allowlist = spec.network === 'allowlist';
    const internal = spec.network === 'internal' || allowlist;
    if (internal) await this.ensureRunNetwork(spec.labels);
    if (allowlist) await this.startEgressProxy(spec.name, spec.labels, spec.egress ?? []);
    const proxyEnv = allowlist
      ? ['http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY'].map(
          (k) => `${k}=http://${EGRESS_PROXY_ALIAS}:${EGRESS_PROXY_PORT}`,
        )
      : [];
    try {
      await this.docker.createContainer(
        this.executionContainer({
          name: spec.name,
          image: spec.image ?? this.opts.image,
          workspace: spec.workspace,
          proxyEnv,
          env: spec.env ?? {},
          labels: this.labels(spec.labels),
          network: internal ? runNetworkName(spec.labels.runId) : 'none',
        }),
      );
    } catch (err) {
      // A retried create finds the container it made before.
      if (!isConflict(err)) throw err;
    }
    // Not started here: the lane runs only while a command does (exec starts it, stop ends it).
  }

  /**
   * The one definition of an execution-lane container, for a run's own (createExecutionSandbox) and
   * a pool's (createPoolSandbox) alike: the same image rules, user, environment and locked-down host
   * config, so a pooled sandbox is hardened exactly as a cold one.
   */
  private executionContainer(c: {
    name: string;
    image: string;
    workspace: string;
    /** The egress proxy's variables (policy allowlist). */
    proxyEnv: string[];
    /** The run's own variables (its tenant's secrets), merged over the platform's execution secrets. */
    env: Record<string, string>;
    labels: Record<string, string>;
    network: string;
  }): Docker.ContainerCreateOptions {
    return {
      name: c.name,
      Image: c.image,
      // An idle PID 1 that keeps the sandbox alive between execs.
      Cmd: ['sleep', '2147483647'],
      User: this.opts.user,
      WorkingDir: '/workspace',
      Env: [
        ...BASE_ENV,
        ...c.proxyEnv,
        ...Object.entries({ ...this.opts.executionEnv, ...c.env }).map(([k, v]) => `${k}=${v}`),
      ],
      Labels: c.labels,
      NetworkDisabled: c.network === 'none',
      HostConfig: this.hostConfig(c.workspace, false, c.network),
    };
  }

  /**
   * Creates and starts one pool container (decision 0016): an execution-lane container exactly as
   * a run's with policy `none` (and its lane's tenant secrets), over a pool slot's empty tree, idling in its
   * PID 1 until a run claims it. Returns the image id it runs.
   */
  async createPoolSandbox(spec: PoolSandboxSpec): Promise<{ imageId: string }> {
    return this.onEngine(async () => {
      const imageId = await this.inspectImage();
      const container = await this.docker.createContainer(
        this.executionContainer({
          name: spec.name,
          image: imageId,
          workspace: spec.workspace,
          proxyEnv: [],
          env: spec.env,
          labels: {
            ...(this.opts.extraLabels ?? {}),
            [LABELS.managed]: 'true',
            [LABELS.lane]: 'execution',
            [LABELS.pool]: spec.poolId,
            [LABELS.poolRoot]: spec.root,
            [LABELS.poolLane]: spec.lane,
          },
          network: 'none',
        }),
      );
      try {
        await container.start();
      } catch (err) {
        await container.remove({ force: true }).catch(() => undefined);
        throw err;
      }
      return { imageId };
    });
  }

  /**
   * Hands an idle pool container to a run: renamed to the run's container name, atomically on the
   * engine (a second claim of the same container finds no such name and fails). False when the
   * container is gone. One that died while idle ran nothing but its PID 1: exec starts it again,
   * like any stopped lane, over the run's tree (the slot's path is a link to it).
   */
  async adoptPoolSandbox(poolName: string, runName: string): Promise<boolean> {
    try {
      await this.docker.getContainer(poolName).rename({ name: runName });
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /** Pool containers on this engine made for `root`'s pools (any pool id), idle or claimed. */
  async listPoolSandboxes(root: string): Promise<PoolSandboxInfo[]> {
    const list = await this.docker.listContainers({
      all: true,
      filters: { label: [`${LABELS.managed}=true`, `${LABELS.poolRoot}=${root}`] },
    });
    return list.map((c) => ({
      id: c.Id,
      name: (c.Names[0] ?? c.Id).replace(/^\//, ''),
      poolId: c.Labels[LABELS.pool] ?? '',
      imageId: c.ImageID,
      running: c.State === 'running',
    }));
  }

  async exec(name: string, argv: string[], opts: CommandOptions): Promise<CommandOutcome> {
    return this.onEngine(() => this.execOnce(name, argv, opts), opts);
  }

  private async execOnce(name: string, argv: string[], opts: CommandOptions): Promise<CommandOutcome> {
    const started = Date.now();
    const container = this.docker.getContainer(name);
    // The lane runs only while a command does: exec starts it and the activity stops it afterwards.
    // (A worker that shut down mid-command took it down too; a retry on the next worker starts it.)
    const info = await container.inspect();
    const running = info.State.Running;
    if (!running) await container.start();
    // Only a lane on a network of its own can have an egress proxy (policy allowlist).
    const mayHaveProxy = (info.HostConfig.NetworkMode ?? 'none') !== 'none';
    // A container started for this command has a new memory cgroup, whose OOM counter starts at 0;
    // one found running (a stop that failed) may have counted kills before this command.
    // A pool container that no exec has entered has run only its PID 1 (whose death would have
    // stopped it): its counter is 0 without asking.
    const untouched = info.Config.Labels[LABELS.pool] !== undefined && (info.ExecIDs ?? []).length === 0;
    const oomBefore = running && !untouched ? await this.cgroupOomKills(name) : 0;
    const exec = await container.exec({
      Cmd: argv,
      AttachStdout: true,
      AttachStderr: true,
      AttachStdin: false,
      Tty: false,
      WorkingDir: '/workspace',
      User: this.opts.user,
    });
    const stream = await exec.start({ hijack: true, stdin: false });
    const output = new BoundedOutput();
    const sink = output.writable(opts.output);
    this.docker.modem.demuxStream(stream, sink, sink);
    // A timed-out or cancelled command takes its whole container down: nothing keeps running.
    const killContainer = async (): Promise<void> => {
      await container.kill().catch(() => undefined);
    };
    const gone = stoppedWhen(async () => !(await exec.inspect()).Running);
    let result: Omit<CommandOutcome, 'exitCode'>;
    try {
      result = await this.supervise(stream, sink, output, opts, killContainer, gone.stopped);
    } finally {
      gone.cancel();
    }
    const inspected = await exec.inspect();
    const exitCode = result.timedOut ? 124 : (inspected.ExitCode ?? 137);
    // Docker 20.10 sets State.OOMKilled only when PID 1 dies; an exec'd process killed by the
    // OOM killer shows up in the container's cgroup counter instead.
    // The cgroup counter covers the container's whole life: only a rise during this command counts.
    const oomKilled =
      exitCode === 137 && !result.timedOut ? (await this.cgroupOomKills(name)) - oomBefore : 0;
    // Nothing the command left running in the lane may go on writing: the lane goes down now, before
    // the output is stored or anything else is asked (the activity's stop after it is then a no-op).
    // Only the OOM counter above needed the container's cgroup, which the kill removes.
    await killContainer();
    const egress = mayHaveProxy ? await this.egressAttempts(name, started) : undefined;
    return {
      ...result,
      exitCode,
      ...(oomKilled > 0 ? { oomKilled: true } : {}),
      ...egress,
    };
  }

  /**
   * The run's proxy: on the run's internal network (alias `egress-proxy`) and on the project's
   * egress network, the only way out of the execution lane; locked down like a sandbox.
   */
  private async startEgressProxy(
    container: string,
    labels: SandboxLabels,
    egress: EgressRule[],
  ): Promise<void> {
    // The egress bridge's gateway is the Docker host itself: refused even if an allowed CIDR covers it.
    const gateways = await this.ensureEgressNetwork();
    // The proxy listens only on the run's network: nothing on the egress bridge can use it.
    const runSubnets = (
      (
        (await this.docker.getNetwork(runNetworkName(labels.runId)).inspect()) as {
          IPAM?: { Config?: Array<{ Subnet?: string }> };
        }
      ).IPAM?.Config ?? []
    ).flatMap((c) => (c.Subnet ? [c.Subnet] : []));
    const settings = this.opts.egress ?? {};
    const name = egressProxyName(container);
    try {
      await this.docker.createContainer({
        name,
        Image: this.opts.image,
        Cmd: ['node', '/opt/choiros/egress-proxy.js'],
        User: this.opts.user,
        Env: [
          ...BASE_ENV,
          `CHOIROS_EGRESS_ALLOW=${egress.map((r) => `${r.host}:${r.port}`).join(',')}`,
          `CHOIROS_EGRESS_PORT=${EGRESS_PROXY_PORT}`,
          `CHOIROS_EGRESS_ALLOW_CIDRS=${(settings.allowCidrs ?? []).join(',')}`,
          `CHOIROS_EGRESS_DENY_CIDRS=${[...gateways, ...(settings.denyCidrs ?? [])].join(',')}`,
          `CHOIROS_EGRESS_LOG_FIRST=${EGRESS_INDIVIDUAL_ATTEMPTS}`,
          `CHOIROS_EGRESS_LISTEN_CIDRS=${runSubnets.join(',')}`,
          ...(settings.ratePerSecond ? [`CHOIROS_EGRESS_RATE_PER_SECOND=${settings.ratePerSecond}`] : []),
          ...(settings.maxAttempts ? [`CHOIROS_EGRESS_MAX_ATTEMPTS=${settings.maxAttempts}`] : []),
        ],
        Labels: this.labels({ ...labels, lane: 'egress-proxy' }),
        HostConfig: {
          Binds: [`${this.opts.egressProxyScript ?? EGRESS_PROXY_SCRIPT}:/opt/choiros/egress-proxy.js:ro`],
          NetworkMode: runNetworkName(labels.runId),
          CapDrop: ['ALL'],
          SecurityOpt: ['no-new-privileges'],
          ReadonlyRootfs: true,
          PidsLimit: 64,
          Memory: 128 * 1024 * 1024,
          MemorySwap: 128 * 1024 * 1024,
          // The proxy logs a bounded number of lines by design; the engine bounds the file as well.
          LogConfig: { Type: 'json-file', Config: { 'max-size': '1m', 'max-file': '1' } },
        },
        NetworkingConfig: {
          EndpointsConfig: { [runNetworkName(labels.runId)]: { Aliases: [EGRESS_PROXY_ALIAS] } },
        },
      });
    } catch (err) {
      if (!isConflict(err)) throw err; // a retried create finds the proxy it made before
    }
    const proxy = this.docker.getContainer(name);
    const info = await proxy.inspect();
    // Checked, not assumed: an attempt that died between create and connect left it without a way out.
    if (!info.NetworkSettings.Networks[EGRESS_NETWORK]) {
      await this.docker.getNetwork(EGRESS_NETWORK).connect({ Container: name });
    }
    if (!info.State.Running) await proxy.start();
    // Ready when it has printed its first line.
    for (let i = 0; i < 50; i++) {
      const logs = (await proxy.logs({ stdout: true, stderr: false })).toString('utf8');
      if (logs.includes('"ready":true')) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`egress proxy ${name} did not start`);
  }

  /**
   * Creates the project's egress bridge when missing; returns its gateway addresses (the Docker
   * host's side of the bridge), which every proxy refuses.
   */
  private async ensureEgressNetwork(): Promise<string[]> {
    const network = this.docker.getNetwork(EGRESS_NETWORK);
    let info: { IPAM?: { Config?: Array<{ Gateway?: string; Subnet?: string }> } };
    try {
      info = await network.inspect();
    } catch (err) {
      if (!isNotFound(err)) throw err;
      try {
        await this.docker.createNetwork({
          Name: EGRESS_NETWORK,
          Driver: 'bridge',
          CheckDuplicate: true,
          Labels: { [LABELS.managed]: 'true', 'choiros.purpose': 'egress' },
        });
      } catch (e) {
        if (!isConflict(e)) throw e;
      }
      info = await network.inspect();
    }
    const gateways = (info.IPAM?.Config ?? []).flatMap((c) => (c.Gateway ? [c.Gateway] : []));
    if (gateways.length === 0) throw new Error(`network ${EGRESS_NETWORK} has no gateway address to refuse`);
    return gateways;
  }

  /**
   * What the run's proxy saw: the attempts it logged one by one since `sinceMs` (at most
   * EGRESS_INDIVIDUAL_ATTEMPTS in its life) and its counts of every attempt, which it prints when
   * sent SIGUSR2. Undefined when the run has no proxy.
   */
  private async egressAttempts(
    container: string,
    sinceMs: number,
  ): Promise<Pick<CommandOutcome, 'egress' | 'egressSummary'> | undefined> {
    const proxy = this.docker.getContainer(egressProxyName(container));
    let lines: unknown[];
    try {
      lines = await this.proxyLines(proxy);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
    const lastSeq = (ls: unknown[]): number => Math.max(0, ...ls.map((l) => egressSummaryLine(l)?.seq ?? 0));
    const before = lastSeq(lines);
    let summary: EgressSummary | undefined;
    const signalled = await proxy.kill({ signal: 'SIGUSR2' }).then(
      () => true,
      () => false, // a proxy that died (e.g. at its memory limit) has no counts to give
    );
    for (let i = 0; signalled && i < SUMMARY_POLLS && !summary; i++) {
      await new Promise((r) => setTimeout(r, SUMMARY_POLL_MS));
      lines = await this.proxyLines(proxy);
      const fresh = lines.map(egressSummaryLine).filter((l) => l !== undefined && l.seq > before);
      const line = fresh.at(-1);
      if (line) {
        const { seq: _seq, ...counts } = line;
        summary = { ...counts, complete: true };
      }
    }
    const attempts = lines.flatMap((l) => {
      const a = egressAttemptSchema.safeParse(l);
      return a.success && a.data.at >= sinceMs ? [a.data] : [];
    });
    const egress = attempts.slice(0, EGRESS_INDIVIDUAL_ATTEMPTS);
    return { egress, egressSummary: summary ?? summariseAttempts(egress) };
  }

  /** The JSON lines of a proxy's stdout (bounded: the proxy logs a bounded number of lines). */
  private async proxyLines(proxy: Docker.Container): Promise<unknown[]> {
    const raw = await proxy.logs({ stdout: true, stderr: false });
    const lines: unknown[] = [];
    // Non-TTY logs are multiplexed: 8-byte frame headers, then the payload.
    for (let off = 0; off + 8 <= raw.length;) {
      const size = raw.readUInt32BE(off + 4);
      const text = raw.subarray(off + 8, off + 8 + size).toString('utf8');
      off += 8 + size;
      for (const line of text.split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          lines.push(JSON.parse(line));
        } catch {
          /* a partial line: skip */
        }
      }
    }
    return lines;
  }

  /** Number of OOM kills in a running container's memory cgroup (v2 `memory.events` or v1 `memory.oom_control`). */
  private async cgroupOomKills(name: string): Promise<number> {
    const probe = new BoundedOutput(4096);
    try {
      const exec = await this.docker.getContainer(name).exec({
        Cmd: [
          'sh',
          '-c',
          'cat /sys/fs/cgroup/memory.events 2>/dev/null || cat /sys/fs/cgroup/memory/memory.oom_control',
        ],
        AttachStdout: true,
        AttachStderr: false,
        User: this.opts.user,
      });
      const stream = await exec.start({ hijack: true, stdin: false });
      const sink = probe.writable();
      this.docker.modem.demuxStream(stream, sink, sink);
      await new Promise<void>((resolve) => {
        stream.on('end', resolve);
        stream.on('close', resolve);
        stream.on('error', () => resolve());
      });
    } catch {
      return 0;
    }
    const m = /^oom_kill (\d+)$/m.exec(probe.finish().outputTail);
    return m ? Number(m[1]) : 0;
  }

  async runVerifier(spec: VerifierRunSpec, opts: CommandOptions): Promise<CommandOutcome> {
    return this.onEngine(() => this.runVerifierOnce(spec, opts), opts);
  }

  private async runVerifierOnce(spec: VerifierRunSpec, opts: CommandOptions): Promise<CommandOutcome> {
    await this.remove(spec.name); // a retried attempt starts clean
    const container = await this.docker.createContainer({
      name: spec.name,
      Image: spec.image ?? this.opts.image,
      Cmd: spec.argv,
      User: this.opts.user,
      WorkingDir: '/workspace',
      Env: [...BASE_ENV],
      Labels: this.labels(spec.labels),
      NetworkDisabled: true,
      HostConfig: this.hostConfig(spec.workspace, true),
    });
    try {
      const stream = await container.attach({ stream: true, stdout: true, stderr: true });
      const output = new BoundedOutput();
      const sink = output.writable(opts.output);
      this.docker.modem.demuxStream(stream, sink, sink);
      await container.start();
      const kill = async (): Promise<void> => {
        await container.kill().catch(() => undefined);
      };
      // Polled, not `wait`ed: the engine's answer is the one thing trusted to notice the exit.
      const gone = stoppedWhen(async () => !(await container.inspect()).State.Running);
      let result: Omit<CommandOutcome, 'exitCode'>;
      try {
        result = await this.supervise(stream, sink, output, opts, kill, gone.stopped);
      } finally {
        gone.cancel();
      }
      let state = (await container.inspect()).State;
      if (state.Running) {
        // The stream usually ends as the process exits; give the engine a moment to agree, and
        // past it (a stream closed from this side) the process gets no more time.
        let t: NodeJS.Timeout | undefined;
        await Promise.race([
          container.wait().catch(() => undefined),
          new Promise((r) => (t = setTimeout(r, STREAM_GRACE_MS))),
        ]);
        clearTimeout(t);
        state = (await container.inspect()).State;
        if (state.Running) {
          await kill();
          state = (await container.inspect()).State;
        }
      }
      return {
        ...result,
        exitCode: result.timedOut ? 124 : state.Running ? 137 : state.ExitCode,
        ...(state.OOMKilled && !result.timedOut ? { oomKilled: true } : {}),
      };
    } finally {
      await container.remove({ force: true }).catch(() => undefined);
    }
  }

  /**
   * The run's own network, labelled like its containers. `Internal` stops forwarding out of it,
   * but the host would still answer on the bridge's gateway address (and so would every host
   * service bound to 0.0.0.0 or another bridge); `inhibit_ipv4` leaves the host without an
   * address on this bridge, so only the run's own containers are reachable.
   */
  private async ensureRunNetwork(labels: SandboxLabels): Promise<void> {
    try {
      await this.docker.createNetwork({
        Name: runNetworkName(labels.runId),
        Driver: 'bridge',
        Internal: true,
        CheckDuplicate: true,
        Options: { 'com.docker.network.bridge.inhibit_ipv4': 'true' },
        Labels: this.labels(labels),
      });
    } catch (err) {
      if (!isConflict(err)) throw err; // a retried create finds the network it made before
    }
  }

  async removeRunNetwork(runId: string): Promise<boolean> {
    try {
      await this.docker.getNetwork(runNetworkName(runId)).remove();
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /** Removes an execution container's egress proxy (policy allowlist), if it has one. */
  async removeEgressProxy(container: string): Promise<boolean> {
    return this.remove(egressProxyName(container));
  }

  async stop(name: string): Promise<void> {
    await this.onEngine(async () => {
      try {
        // SIGKILL (the default) to PID 1 takes the container's whole pid namespace down, and the
        // engine answers a SIGKILL only once the container has stopped (or fails the call).
        await this.docker.getContainer(name).kill();
      } catch (err) {
        // Gone, or not running: either way nothing runs.
        if (isNotFound(err) || isConflict(err)) return;
        throw err;
      }
    });
  }

  async remove(name: string): Promise<boolean> {
    try {
      await this.docker.getContainer(name).remove({ force: true });
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /** Waits for the output stream to end, enforcing the timeout and cancellation, reporting progress. */
  private async supervise(
    stream: NodeJS.ReadableStream,
    sink: Writable,
    output: BoundedOutput,
    opts: CommandOptions,
    kill: () => Promise<void>,
    /** Settles when the engine says the process is gone (its stream gets STREAM_GRACE_MS more). */
    exited?: Promise<unknown>,
  ): Promise<Omit<CommandOutcome, 'exitCode'>> {
    const started = Date.now();
    let timedOut = false;
    let finished = false;
    let endNow: () => void = () => undefined;
    const ended = new Promise<void>((resolve, reject) => {
      endNow = resolve;
      stream.on('end', () => resolve());
      stream.on('close', () => resolve());
      stream.on('error', (e: Error) => reject(e));
    });
    let forceTimer: NodeJS.Timeout | undefined;
    const closeSoon = (): void => {
      if (finished || forceTimer) return;
      forceTimer = setTimeout(() => {
        // Destroying does not always make the stream emit end/close: the wait ends here either way.
        (stream as NodeJS.ReadableStream & { destroy?: () => void }).destroy?.();
        endNow();
      }, STREAM_GRACE_MS);
    };
    void exited?.then(closeSoon, closeSoon);
    const timer = setTimeout(() => {
      timedOut = true;
      void kill();
      closeSoon();
    }, opts.timeoutMs);
    const progress = setInterval(() => {
      opts.onProgress?.({ outputBytes: output.bytes, elapsedMs: Date.now() - started });
    }, PROGRESS_INTERVAL_MS);
    const onAbort = (): void => {
      void kill();
      closeSoon();
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await ended;
    } finally {
      finished = true;
      clearTimeout(timer);
      clearTimeout(forceTimer);
      clearInterval(progress);
      opts.signal?.removeEventListener('abort', onAbort);
    }
    // Every demultiplexed chunk has reached the capture (and the tee) before it is summarised.
    await new Promise<void>((resolve) => sink.end(() => resolve()));
    if (opts.signal?.aborted) throw opts.signal.reason ?? new Error('cancelled');
    return { timedOut, durationMs: Date.now() - started, ...output.finish() };
  }
}
