/**
 * Spawns the real worker process (test/helpers/worker-child.ts → worker/process.ts) against the
 * test stack, with a pre-bundled workflow bundle, and resolves once it polls.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT, env, workflowBundle } from './integration';

export interface WorkerProcess {
  proc: ChildProcess;
  /** Resolves with the exit code (null after a signal). */
  exited: Promise<number | null>;
  /** The `/metrics` port, when CHOIROS_METRICS_PORT was set. */
  metricsPort?: number;
  /** The worker's identity in Temporal histories (`<pid>@<hostname>`, the SDK default). */
  pid: number;
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

export async function spawnWorkerProcess(opts: {
  bundlePath: string;
  hostId: string;
  dataDir: string;
  name: string;
  extraEnv?: Record<string, string>;
  readyTimeoutMs?: number;
}): Promise<WorkerProcess> {
  const log = createWriteStream(join(env.workDir(), `logs/worker-${opts.name}.log`));
  const proc = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test/helpers/worker-child.ts')], {
    cwd: ROOT,
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: env.temporalAddress(),
      NATS_URL: env.natsUrl(),
      NATS_CREDS: env.workerCreds() ?? '',
      CHOIROS_DATA_DIR: opts.dataDir,
      CHOIROS_VERIFIERS_FILE: join(ROOT, 'test/fixtures/verifiers.yaml'),
      CHOIROS_SANDBOX_IMAGE: env.sandboxImage(),
      CHOIROS_HOST_ID: opts.hostId,
      CHOIROS_SWEEP_INTERVAL_SECONDS: '0',
      CHOIROS_METRICS_PORT: '0',
      CHOIROS_CHILD_BUNDLE: opts.bundlePath,
      LOG_LEVEL: 'info',
      ...opts.extraEnv,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  let out = '';
  let errOut = '';
  proc.stderr?.on('data', (chunk: Buffer) => {
    errOut = (errOut + chunk.toString()).slice(-4000);
    log.write(chunk);
  });
  proc.stdout?.on('data', (chunk: Buffer) => {
    out += chunk.toString();
    log.write(chunk);
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`worker ${opts.name} not ready in time:\n${out.slice(-2000)}`)),
      opts.readyTimeoutMs ?? 120_000,
    );
    const check = (): void => {
      if (out.includes('READY\n')) {
        clearTimeout(timer);
        resolve();
      }
    };
    proc.stdout?.on('data', check);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(
        new Error(`worker ${opts.name} exited with ${String(code)} before it was ready:\n${out}\n${errOut}`),
      );
    });
  });
  const m = /^METRICS (\d+)$/m.exec(out);
  return { proc, exited, pid: proc.pid ?? -1, ...(m ? { metricsPort: Number(m[1]) } : {}) };
}
