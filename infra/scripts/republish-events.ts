/**
 * `npm run events:republish -- <runId> [<runId> ...]`: restores a run's events in JetStream from
 * its Temporal history (after a lost or purged stream). Safe to repeat: only missing events are sent.
 * Uses TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, NATS_URL and NATS_CREDS (worker credentials).
 */
import { readFile } from 'node:fs/promises';
import { Client, Connection } from '@temporalio/client';
import { connect, credsAuthenticator } from 'nats';
import { isValidId } from '../../contracts';
import { republishRunEvents } from '../../activities/events/republish';
import { workerConfigSchema } from '../../worker/config';

async function main(): Promise<void> {
  const runIds = process.argv.slice(2);
  if (runIds.length === 0 || runIds.some((r) => !isValidId(r))) {
    throw new Error('usage: npm run events:republish -- <runId> [<runId> ...]');
  }
  // The worker's settings (same keys, defaults and validation): this command publishes as a worker.
  const config = workerConfigSchema
    .pick({ TEMPORAL_ADDRESS: true, TEMPORAL_NAMESPACE: true, NATS_URL: true, NATS_CREDS: true })
    .parse(process.env);
  const connection = await Connection.connect({ address: config.TEMPORAL_ADDRESS });
  const nc = await connect({
    servers: config.NATS_URL.split(','),
    authenticator: config.NATS_CREDS ? credsAuthenticator(await readFile(config.NATS_CREDS)) : undefined,
  });
  try {
    const client = new Client({ connection, namespace: config.TEMPORAL_NAMESPACE });
    for (const runId of runIds) {
      const r = await republishRunEvents({ client, js: nc.jetstream() }, runId);
      process.stdout.write(
        `${runId}: ${r.inHistory} events in history, ${r.alreadyInStream} already in the stream, ${r.republished} re-published\n`,
      );
    }
  } finally {
    await nc.drain();
    await connection.close();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`events:republish: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
