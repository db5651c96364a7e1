/**
 * Real service processes for integration tests: an entry point (worker/main.ts, api/main.ts, or
 * test/helpers/worker-child.ts, the worker process with a pre-bundled workflow bundle) in its own
 * process group, resolved once it logs its start event. Tests SIGKILL them (a crash) or SIGTERM them
 * (a drain) through `signal`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT, env, workflowBundle, writeTestTenantsFile } from './integration';

export interface ServiceProcess {
  proc: ChildProcess;
  pid: number;
  /** Every stdout line so far (pino JSON lines). */
  lines: string[];
  /** Resolves with the exit code (null after a signal). */
  exited: Promise<number | null>;
  /** Sends `sig` to the process group (if still running); resolves with the exit code. */
  signal(sig: NodeJS.Signals): Promise<number | null>;
}

/** Starts `entry` with `envVars` (over the test's environment); resolves once a line has `"event":"<readyEvent>"`. */
export async function spawnService(opts: {
  entry: string;
  name: string;
  env: NodeJS.ProcessEnv;
  readyEvent: string;
  readyTimeoutMs?: number;
}): Promise<ServiceProcess> {
  const log = createWriteStream(join(env.workDir(), `logs/${opts.name}.log`));
  const proc = spawn(process.execPath, ['--import', 'tsx', join(ROOT, opts.entry)], {
    cwd: ROOT,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: opts.env,
  });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const lines: string[] = [];
  let partial = '';
  let stderr = '';
  proc.stdout?.on('data', (chunk: Buffer) => {
    log.write(chunk);
    const parts = (partial + chunk.toString()).split('\n');
    partial = parts.pop() ?? '';
    lines.push(...parts);
  });
  proc.stderr?.on('data', (chunk: Buffer) => {
    log.write(chunk);
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  const service: ServiceProcess = {
    proc,
    pid: proc.pid ?? -1,
    lines,
    exited,
    async signal(sig) {
      if (proc.exitCode === null && proc.signalCode === null) {
        try {
          process.kill(-service.pid, sig);
        } catch {
          // already gone
        }
      }
      return exited;
    },
  };
  const ready = `"event":"${opts.readyEvent}"`;
  await new Promise<void>((resolve, reject) => {
    const done = (err?: Error): void => {
      clearTimeout(timer);
      clearInterval(check);
      if (err) reject(err);
      else resolve();
    };
    const output = (): string => `${lines.slice(-40).join('\n')}\n${stderr}`;
    const timer = setTimeout(
      () => done(new Error(`${opts.name} (${opts.entry}) did not start in time:\n${output()}`)),
      opts.readyTimeoutMs ?? 150_000,
    );
    const check = setInterval(() => {
      if (lines.some((l) => l.includes(ready))) done();
    }, 100);
    void exited.then((code) =>
      done(
        new Error(`${opts.name} (${opts.entry}) exited with ${String(code)} before it started:\n${output()}`),
      ),
    );
  });
  return service;
}

export interface WorkerProcess extends ServiceProcess {
  /** The `/metrics` port, when CHOIROS_METRICS_PORT was set. */
  metricsPort?: number;
}

/** Bundles the workflows once and writes them where child workers read them (CHOIROS_CHILD_BUNDLE). */
export async function writeWorkflowBundle(): Promise<string> {
  const bundle = await workflowBundle();
  const dir = await mkdtemp(join(env.workDir(), 'bundle-'));
  const path = join(dir, 'workflows.js');
  await writeFile(path, bundle.code);
  await writeFile(`${path}.map`, bundle.sourceMap);
  return path;
}

/**
 * The real worker process against the test stack: test/helpers/worker-child.ts with `bundlePath`
 * (ready in seconds), or worker/main.ts, which bundles the workflows itself, without it.
 */
export async function spawnWorkerProcess(opts: {
  bundlePath?: string;
  hostId: string;
  dataDir: string;
  name: string;
  extraEnv?: Record<string, string>;
  /** Tenant names of the test's own, besides TEST_TENANTS (the worker re-checks grants). */
  extraTenants?: string[];
  /** The environment the worker's settings go over; the test's own by default. */
  baseEnv?: NodeJS.ProcessEnv;
}): Promise<WorkerProcess> {
  const tenantsFile = await writeTestTenantsFile(
    join(opts.dataDir, `tenants-${opts.name}.yaml`),
    opts.extraTenants,
  );
  const service = await spawnService({
    entry: opts.bundlePath ? 'test/helpers/worker-child.ts' : 'worker/main.ts',
    name: `worker-${opts.name}`,
    readyEvent: 'worker.started',
    env: {
      ...(opts.baseEnv ?? process.env),
      TEMPORAL_ADDRESS: env.temporalAddress(),
      NATS_URL: env.natsUrl(),
      NATS_CREDS: env.workerCreds() ?? '',
      CHOIROS_DATA_DIR: opts.dataDir,
      CHOIROS_VERIFIERS_FILE: join(ROOT, 'test/fixtures/verifiers.yaml'),
      CHOIROS_SANDBOX_IMAGE: env.sandboxImage(),
      CHOIROS_HOST_ID: opts.hostId,
      CHOIROS_TENANTS_FILE: tenantsFile,
      CHOIROS_SWEEP_INTERVAL_SECONDS: '0',
      CHOIROS_METRICS_PORT: '0',
      ...(opts.bundlePath ? { CHOIROS_CHILD_BUNDLE: opts.bundlePath } : {}),
      LOG_LEVEL: 'info',
      ...opts.extraEnv,
    },
  });
  const started = service.lines.find((l) => l.includes('"event":"worker.started"'));
  const metricsPort = started ? (JSON.parse(started) as { metricsPort?: number | null }).metricsPort : null;
  return { ...service, ...(metricsPort ? { metricsPort } : {}) };
}
