/**
 * Jest global setup for integration tests: a Docker engine, the sandbox image, a Temporal dev
 * server and a NATS server with JetStream, on free loopback ports. Reuses services named by
 * CHOIROS_TEST_TEMPORAL_ADDRESS / CHOIROS_TEST_NATS_URL instead of starting them. A missing
 * service fails the run with a message naming it; nothing is skipped.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ensureDockerEngine } from '../../infra/stack/docker';
import { startNatsServer } from '../../infra/stack/nats';
import { freePort, type ManagedProcess } from '../../infra/stack/process';
import { ensureSandboxImage } from '../../infra/stack/sandbox-image';
import { startTemporalDevServer } from '../../infra/stack/temporal';
import { SEARCH_ATTRIBUTE_NAMES } from '../../contracts';

export const TEST_SANDBOX_IMAGE = 'choiros-sandbox:local';

declare global {
  var __choirosTestStack: { processes: ManagedProcess[]; stopEnv?: () => Promise<void> } | undefined;
}

export default async function globalSetup(): Promise<void> {
  const root = resolve(__dirname, '../..');
  const work = await mkdtemp(join(tmpdir(), 'choiros-it-'));
  const logDir = join(work, 'logs');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(logDir, { recursive: true });
  const processes: ManagedProcess[] = [];
  globalThis.__choirosTestStack = { processes };
  const log = (m: string): void => {
    process.stderr.write(`[it-setup] ${m}\n`);
  };

  const engine = await ensureDockerEngine({
    dataRoot: process.env.CHOIROS_DOCKER_DATA_ROOT ?? '/var/lib/choiros-docker',
    logDir,
  }).catch((err: unknown) => {
    throw new Error(
      `integration tests need a Docker engine: ${err instanceof Error ? err.message : String(err)}`,
    );
  });
  if (engine.process) {
    processes.push(engine.process);
    log(`started dockerd (log ${engine.process.logFile})`);
  }
  const busybox = process.env.CHOIROS_BUSYBOX || '/bin/busybox';
  const img = await ensureSandboxImage({
    docker: engine.docker,
    repoRoot: root,
    busybox,
    image: TEST_SANDBOX_IMAGE,
  });
  log(`sandbox image ${img.image} ${img.built ? 'built' : 'ready'}`);

  if (!process.env.CHOIROS_TEST_TEMPORAL_ADDRESS) {
    const bin = process.env.CHOIROS_TEMPORAL_BIN;
    if (bin) {
      const t = await startTemporalDevServer({
        binary: bin,
        host: '127.0.0.1',
        port: await freePort(),
        logDir,
        namespace: 'default',
      });
      processes.push(t.process);
      process.env.CHOIROS_TEST_TEMPORAL_ADDRESS = t.address;
      log(`Temporal dev server at ${t.address} (log ${t.process.logFile})`);
    } else {
      // No binary and no Go: let the SDK download the dev server (works on an internet-connected machine).
      const { TestWorkflowEnvironment } = await import('@temporalio/testing');
      const env = await TestWorkflowEnvironment.createLocal({
        server: {
          searchAttributes: SEARCH_ATTRIBUTE_NAMES.map((name) => ({ name, type: 'KEYWORD' as const })),
        },
      });
      process.env.CHOIROS_TEST_TEMPORAL_ADDRESS = env.address;
      globalThis.__choirosTestStack.stopEnv = () => env.teardown();
      log(`Temporal dev server (SDK download) at ${env.address}`);
    }
  }

  if (!process.env.CHOIROS_TEST_NATS_URL) {
    const bin = process.env.CHOIROS_NATS_SERVER_BIN;
    if (!bin)
      throw new Error(
        'integration tests need nats-server (run `npm run provision`, or set CHOIROS_NATS_SERVER_BIN)',
      );
    const natsDir = join(work, 'nats');
    const n = await startNatsServer({
      binary: bin,
      host: '127.0.0.1',
      port: await freePort(),
      dir: natsDir,
      logDir,
    });
    processes.push(n.process);
    process.env.CHOIROS_TEST_NATS_URL = n.url;
    process.env.CHOIROS_TEST_NATS_WORKER_CREDS = n.workerCredsFile;
    process.env.CHOIROS_TEST_NATS_API_CREDS = n.apiCredsFile;
    process.env.CHOIROS_TEST_NATS_AUTH_DIR = join(natsDir, 'auth');
    log(`nats-server at ${n.url} (log ${n.process.logFile})`);
  }
  process.env.CHOIROS_TEST_WORK_DIR = work;
  // The image id, not the tag: another checkout on the same engine may retag the image meanwhile.
  process.env.CHOIROS_TEST_SANDBOX_IMAGE = img.id;
}
