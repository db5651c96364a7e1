/**
 * Test-only worker process: the real worker set, configured from the environment like worker/main.ts,
 * but running a pre-bundled workflow bundle (CHOIROS_CHILD_BUNDLE, written by the test) so it is
 * ready in seconds. Tests SIGKILL it (a crashed worker) or SIGTERM it (a replaced worker). Prints
 * READY once polling.
 */
import { readFile } from 'node:fs/promises';
import { NativeConnection } from '@temporalio/worker';
import Docker from 'dockerode';
import { connect, credsAuthenticator } from 'nats';
import pino from 'pino';
import { loadWorkerConfig } from '../../worker/config';
import { createWorkerSet } from '../../worker/workers';

async function main(): Promise<void> {
  const config = loadWorkerConfig(process.env);
  const bundle = process.env.CHOIROS_CHILD_BUNDLE;
  if (!bundle) throw new Error('CHOIROS_CHILD_BUNDLE is not set');
  const logger = pino({ level: config.LOG_LEVEL, base: { buildId: config.CHOIROS_BUILD_ID } });
  const connection = await NativeConnection.connect({ address: config.TEMPORAL_ADDRESS });
  const nats = await connect({
    servers: config.NATS_URL,
    authenticator: config.NATS_CREDS ? credsAuthenticator(await readFile(config.NATS_CREDS)) : undefined,
    maxReconnectAttempts: -1,
  });
  const set = await createWorkerSet({
    config,
    connection,
    nats,
    docker: new Docker(),
    logger,
    workflowBundle: {
      code: await readFile(bundle, 'utf8'),
      sourceMap: await readFile(`${bundle}.map`, 'utf8'),
    },
  });
  process.once('SIGTERM', () => set.shutdown());
  const running = set.run();
  process.stdout.write('READY\n');
  try {
    await running;
  } finally {
    await nats.drain().catch(() => undefined);
    await connection.close().catch(() => undefined);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(
      `worker-child: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
