/**
 * One-shot NATS auth setup for the compose stack (docker-compose.yml, service `nats-init`): the
 * same operator, SYS and CHOIROS accounts as the local stack (infra/nats/auth.ts), written into
 * separate directories (compose volumes) so each service mounts only what it needs:
 *
 *   --keys-dir    operator/account seeds (this job's private state; created once, reused after)
 *   --server-dir  nats-server.conf: operator mode, memory resolver preloaded with the account JWTs, JetStream
 *   --api-dir     api.creds and the CHOIROS account seed (the API signs users' credentials with it)
 *   --worker-dir  worker.creds
 *
 * Idempotent: keys are kept, JWTs and service credentials are re-issued on every run, and files are
 * replaced atomically (write + rename), so re-running it on `docker compose up` is safe.
 */
import { chown, mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { z } from 'zod';
import { ACCOUNT_SEED_FILE, ensureNatsAuth, mintServiceCreds, renderServerConfig } from '../nats/auth';

/** File names the compose file (and its test) refer to. */
export const NATS_INIT_FILES = {
  serverConfig: 'nats-server.conf',
  apiCreds: 'api.creds',
  apiAccountSeed: ACCOUNT_SEED_FILE,
  workerCreds: 'worker.creds',
} as const;

const port = z.coerce.number().int().min(1).max(65535);
const argsSchema = z.object({
  'keys-dir': z.string().min(1),
  'server-dir': z.string().min(1),
  'api-dir': z.string().min(1),
  'worker-dir': z.string().min(1),
  /** Client interface (all interfaces in a container; tests use loopback). */
  host: z.string().min(1).default('0.0.0.0'),
  port: port.default(4222),
  'monitor-port': port.default(8222),
  /** The monitoring endpoint stays on loopback unless told otherwise (it answers without auth). */
  'monitor-host': z.string().min(1).default('127.0.0.1'),
  'store-dir': z.string().min(1).default('/data/jetstream'),
  'server-name': z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,64}$/)
    .default('choiros-nats-0'),
  /** uid:gid that owns the API's files (the API image runs as 10001:10001); applied when run as root. */
  'api-owner': z
    .string()
    .regex(/^[0-9]+:[0-9]+$/)
    .default('10001:10001'),
});
export type NatsInitOptions = z.output<typeof argsSchema>;

async function writeAtomic(
  path: string,
  text: string,
  mode: number,
  owner?: [number, number],
): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, text, { mode });
  if (owner) await chown(tmp, owner[0], owner[1]);
  await rename(tmp, path);
}

export async function runNatsInit(opts: NatsInitOptions): Promise<{ account: string }> {
  const auth = await ensureNatsAuth(opts['keys-dir']);
  const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const [uid = 0, gid = 0] = opts['api-owner'].split(':').map(Number);
  const apiOwner: [number, number] | undefined = asRoot ? [uid, gid] : undefined;
  for (const dir of [opts['server-dir'], opts['api-dir'], opts['worker-dir']]) {
    await mkdir(dir, { recursive: true });
  }
  if (apiOwner) await chown(opts['api-dir'], apiOwner[0], apiOwner[1]);
  // The server config holds only public material (JWTs, public keys): world-readable.
  await writeAtomic(
    join(opts['server-dir'], NATS_INIT_FILES.serverConfig),
    renderServerConfig({
      auth,
      host: opts.host,
      port: opts.port,
      monitorPort: opts['monitor-port'],
      monitorHost: opts['monitor-host'],
      storeDir: opts['store-dir'],
      serverName: opts['server-name'],
    }),
    0o644,
  );
  await writeAtomic(
    join(opts['api-dir'], NATS_INIT_FILES.apiCreds),
    await mintServiceCreds(auth, 'api'),
    0o400,
    apiOwner,
  );
  await writeAtomic(
    join(opts['api-dir'], NATS_INIT_FILES.apiAccountSeed),
    `${auth.accountSeed}\n`,
    0o400,
    apiOwner,
  );
  await writeAtomic(
    join(opts['worker-dir'], NATS_INIT_FILES.workerCreds),
    await mintServiceCreds(auth, 'worker'),
    0o400,
  );
  return { account: auth.accountPub };
}

async function main(): Promise<void> {
  const logger = pino({ base: { service: 'choiros-nats-init' } });
  const { values } = parseArgs({
    options: Object.fromEntries(Object.keys(argsSchema.shape).map((k) => [k, { type: 'string' as const }])),
    strict: true,
  });
  const parsed = argsSchema.safeParse(values);
  if (!parsed.success) {
    throw new Error(
      `invalid arguments:\n${parsed.error.issues.map((i) => `  --${i.path.join('.')}: ${i.message}`).join('\n')}`,
    );
  }
  const result = await runNatsInit(parsed.data);
  logger.info(
    {
      event: 'nats.init.done',
      account: result.account,
      serverDir: parsed.data['server-dir'],
      apiDir: parsed.data['api-dir'],
      workerDir: parsed.data['worker-dir'],
    },
    'NATS operator config and service credentials written',
  );
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`nats-init: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
