/**
 * NATS decentralized auth for the local stack: an operator, a system account and the CHOIROS
 * account, all as nkeys + JWTs (nats-jwt). Workers and the API get service credentials; each user
 * gets short-lived credentials that may only subscribe to their own prefix and inbox.
 */
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { encodeAccount, encodeOperator, encodeUser, fmtCreds } from 'nats-jwt';
import { createAccount, createOperator, createUser, fromSeed, type KeyPair } from 'nkeys.js';

/** File name of the CHOIROS account seed in the auth dir (the gateway signs users' credentials with it). */
export const ACCOUNT_SEED_FILE = 'choiros-account.seed';

export interface NatsAuthMaterial {
  operatorJwt: string;
  systemAccountPub: string;
  systemAccountJwt: string;
  accountPub: string;
  accountJwt: string;
  /** Seed of the CHOIROS account: signs user credentials. Kept 0600 in the data dir. */
  accountSeed: string;
}

async function loadOrCreateSeed(path: string, create: () => KeyPair): Promise<KeyPair> {
  try {
    const seed = (await readFile(path, 'utf8')).trim();
    return fromSeed(new TextEncoder().encode(seed));
  } catch {
    const kp = create();
    await writeFile(path, new TextDecoder().decode(kp.getSeed()), { mode: 0o600 });
    await chmod(path, 0o600);
    return kp;
  }
}

/** Creates (once) the operator and account keys under `dir`; re-signs the JWTs on every call. */
export async function ensureNatsAuth(dir: string): Promise<NatsAuthMaterial> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const operator = await loadOrCreateSeed(join(dir, 'operator.seed'), createOperator);
  const system = await loadOrCreateSeed(join(dir, 'system-account.seed'), createAccount);
  const account = await loadOrCreateSeed(join(dir, ACCOUNT_SEED_FILE), createAccount);
  const operatorJwt = await encodeOperator('CHOIROS_LOCAL', operator, {
    system_account: system.getPublicKey(),
  });
  const systemAccountJwt = await encodeAccount('SYS', system, {}, { signer: operator });
  const accountJwt = await encodeAccount(
    'CHOIROS',
    account,
    {
      // JetStream is enabled for the account by giving it storage limits (-1 = unlimited; the stream bounds itself).
      limits: {
        subs: -1,
        data: -1,
        payload: -1,
        imports: -1,
        exports: -1,
        wildcards: true,
        conn: -1,
        leaf: -1,
        disk_storage: -1,
        mem_storage: -1,
        streams: -1,
        consumer: -1,
      },
    },
    { signer: operator },
  );
  return {
    operatorJwt,
    systemAccountPub: system.getPublicKey(),
    systemAccountJwt,
    accountPub: account.getPublicKey(),
    accountJwt,
    accountSeed: new TextDecoder().decode(account.getSeed()),
  };
}

/** nats-server configuration in operator mode with a memory resolver preloaded with our accounts. */
export function renderServerConfig(opts: {
  auth: NatsAuthMaterial;
  host: string;
  port: number;
  monitorPort?: number;
  /** Interface of the monitoring endpoint (`/healthz`, `/varz`); default `host`. */
  monitorHost?: string;
  storeDir: string;
  serverName: string;
}): string {
  const q = (s: string): string => JSON.stringify(s);
  return [
    `server_name: ${q(opts.serverName)}`,
    `listen: ${q(`${opts.host}:${opts.port}`)}`,
    opts.monitorPort ? `http: ${q(`${opts.monitorHost ?? opts.host}:${opts.monitorPort}`)}` : '',
    'jetstream {',
    `  store_dir: ${q(opts.storeDir)}`,
    '  max_memory_store: 268435456',
    '  max_file_store: 10737418240',
    '}',
    `operator: ${q(opts.auth.operatorJwt)}`,
    `system_account: ${q(opts.auth.systemAccountPub)}`,
    'resolver: MEMORY',
    'resolver_preload: {',
    `  ${opts.auth.systemAccountPub}: ${q(opts.auth.systemAccountJwt)}`,
    `  ${opts.auth.accountPub}: ${q(opts.auth.accountJwt)}`,
    '}',
    '',
  ]
    .filter((l) => l !== '')
    .join('\n');
}

function accountKey(auth: NatsAuthMaterial): KeyPair {
  return fromSeed(new TextEncoder().encode(auth.accountSeed));
}

/** Credentials (creds file text) for a platform service: workers publish events and use JetStream. */
export async function mintServiceCreds(auth: NatsAuthMaterial, name: 'worker' | 'api'): Promise<string> {
  const user = createUser();
  const jwt = await encodeUser(`choiros-${name}`, user, accountKey(auth), {});
  return new TextDecoder().decode(fmtCreds(jwt, user));
}
