/** Starts nats-server with JetStream in operator mode, writing config and service credentials. */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ACCOUNT_SEED_FILE,
  ensureNatsAuth,
  mintServiceCreds,
  renderServerConfig,
  type NatsAuthMaterial,
} from '../nats/auth';
import { portOpen, startProcess, waitFor, type ManagedProcess } from './process';

export interface NatsServer {
  url: string;
  workerCredsFile: string;
  apiCredsFile: string;
  /** The account seed file; the gateway signs users' credentials with it. */
  accountSeedFile: string;
  auth: NatsAuthMaterial;
  process: ManagedProcess;
}

export async function startNatsServer(opts: {
  binary: string;
  host: string;
  port: number;
  /** Holds keys, config, credentials and the JetStream store. */
  dir: string;
  logDir: string;
}): Promise<NatsServer> {
  const authDir = join(opts.dir, 'auth');
  const storeDir = join(opts.dir, 'jetstream');
  await mkdir(storeDir, { recursive: true });
  const auth = await ensureNatsAuth(authDir);
  const configFile = join(opts.dir, 'nats-server.conf');
  await writeFile(
    configFile,
    renderServerConfig({ auth, host: opts.host, port: opts.port, storeDir, serverName: 'choiros-local' }),
    { mode: 0o600 },
  );
  const workerCredsFile = join(authDir, 'worker.creds');
  const apiCredsFile = join(authDir, 'api.creds');
  await writeFile(workerCredsFile, await mintServiceCreds(auth, 'worker'), { mode: 0o600 });
  await writeFile(apiCredsFile, await mintServiceCreds(auth, 'api'), { mode: 0o600 });
  const proc = startProcess({
    name: 'nats',
    command: opts.binary,
    args: ['-c', configFile],
    logFile: join(opts.logDir, 'nats.log'),
  });
  await waitFor('nats-server', () => portOpen(opts.host, opts.port), { timeoutMs: 30_000, proc });
  return {
    url: `nats://${opts.host}:${opts.port}`,
    workerCredsFile,
    apiCredsFile,
    accountSeedFile: join(authDir, ACCOUNT_SEED_FILE),
    auth,
    process: proc,
  };
}
