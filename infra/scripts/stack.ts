/**
 * The local stack behind `npm start`: Docker engine (started if absent), sandbox image, Temporal dev
 * server (Web UI, SQLite state), NATS with JetStream (operator-mode auth), the dev OIDC issuer,
 * the worker and the API. Prints URLs and a dev token; Ctrl-C stops everything it started, in order.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { ensureDockerEngine } from '../stack/docker';
import { ensureSandboxImage, DEFAULT_SANDBOX_IMAGE } from '../stack/sandbox-image';
import { startTemporalDevServer } from '../stack/temporal';
import { startNatsServer } from '../stack/nats';
import { portOpen, startEntry, waitFor, type ManagedProcess } from '../stack/process';
import { DEFAULT_TENANTS_FILE } from '../../tenancy/load';
import {
  DEV_AUDIENCE,
  loadOrCreateDevKey,
  mintDevToken,
  serveDevIssuer,
  writeDevIssuerInfo,
} from '../dev-issuer/issuer';

const ROOT = resolve(__dirname, '../..');
const say = (msg: string): void => {
  process.stdout.write(`[choiros] ${msg}\n`);
};

function envInt(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new Error(`${name}=${v} is not a TCP port`);
  return n;
}

/** Stops processes a previous launcher left behind (it was killed before it could clean up). */
async function reapStale(pidFile: string): Promise<void> {
  if (!existsSync(pidFile)) return;
  const pids = JSON.parse(await readFile(pidFile, 'utf8')) as { name: string; pid: number }[];
  for (const { name, pid } of pids) {
    try {
      process.kill(-pid, 'SIGTERM');
      say(`stopped ${name} (pid ${pid}) left behind by an earlier run`);
    } catch {
      /* not running */
    }
  }
  await rm(pidFile, { force: true });
}

async function main(): Promise<void> {
  const dataDir = resolve(process.env.CHOIROS_DATA_DIR ?? join(ROOT, '.data'));
  const logDir = join(dataDir, 'logs');
  await mkdir(logDir, { recursive: true });
  const pidFile = join(dataDir, 'stack.pids.json');
  await reapStale(pidFile);

  const started: ManagedProcess[] = [];
  const closers: (() => Promise<void>)[] = [];
  let stopping = false;
  const recordPids = async (): Promise<void> => {
    await writeFile(pidFile, JSON.stringify(started.map((p) => ({ name: p.name, pid: p.pid }))));
  };
  const shutdown = async (reason: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    say(`stopping (${reason}) ...`);
    for (const p of [...started].reverse()) {
      await p.stop(p.name === 'dockerd' ? 20_000 : 10_000);
      say(`  ${p.name} stopped`);
    }
    for (const c of closers.reverse()) await c();
    await rm(pidFile, { force: true });
    say('stopped; nothing left running');
  };
  process.once('SIGINT', () => void shutdown('SIGINT').then(() => process.exit(0)));
  process.once('SIGTERM', () => void shutdown('SIGTERM').then(() => process.exit(0)));

  try {
    // Docker engine + sandbox image.
    say('checking the Docker engine');
    const engine = await ensureDockerEngine({
      dataRoot: process.env.CHOIROS_DOCKER_DATA_ROOT ?? '/var/lib/choiros-docker',
      logDir,
    });
    if (engine.process) {
      started.push(engine.process);
      await recordPids();
      say(`started dockerd (log ${engine.process.logFile})`);
    }
    const busybox = process.env.CHOIROS_BUSYBOX || '/bin/busybox';
    const image = process.env.CHOIROS_SANDBOX_IMAGE ?? DEFAULT_SANDBOX_IMAGE;
    const img = await ensureSandboxImage({
      docker: engine.docker,
      repoRoot: ROOT,
      busybox,
      image,
      baseImage: process.env.BASE_IMAGE,
      log: (l) => say(`  ${l}`),
    });
    say(`sandbox image ${img.image} ${img.built ? 'built' : 'up to date'} (${img.id.slice(0, 19)})`);

    // Temporal.
    let temporalAddress = process.env.TEMPORAL_ADDRESS;
    let temporalUi = process.env.TEMPORAL_UI_URL;
    if (!temporalAddress) {
      const bin = process.env.CHOIROS_TEMPORAL_BIN;
      if (!bin)
        throw new Error(
          'the Temporal CLI is missing (set TEMPORAL_CLI, put temporal on PATH, or install Go)',
        );
      const port = envInt('CHOIROS_TEMPORAL_PORT', 7233);
      const uiPort = envInt('CHOIROS_TEMPORAL_UI_PORT', 8233);
      if (await portOpen('127.0.0.1', port))
        throw new Error(
          `port ${port} is taken; set TEMPORAL_ADDRESS to use that server or CHOIROS_TEMPORAL_PORT to move ours`,
        );
      say(`starting the Temporal dev server on 127.0.0.1:${port} (state in ${join(dataDir, 'temporal.db')})`);
      const t = await startTemporalDevServer({
        binary: bin,
        host: '127.0.0.1',
        port,
        uiPort,
        dbFile: join(dataDir, 'temporal.db'),
        logDir,
        namespace: process.env.TEMPORAL_NAMESPACE ?? 'default',
      });
      started.push(t.process);
      await recordPids();
      temporalAddress = t.address;
      temporalUi = t.uiUrl;
    }

    // NATS.
    let natsUrl = process.env.NATS_URL;
    let workerCreds = process.env.NATS_CREDS;
    let apiCreds = process.env.NATS_CREDS;
    let accountSeedFile = process.env.NATS_ACCOUNT_SEED_FILE;
    if (!natsUrl) {
      const bin = process.env.CHOIROS_NATS_SERVER_BIN;
      if (!bin) throw new Error('nats-server is missing (npm run provision installs it)');
      const port = envInt('CHOIROS_NATS_PORT', 4222);
      if (await portOpen('127.0.0.1', port))
        throw new Error(
          `port ${port} is taken; set NATS_URL to use that server or CHOIROS_NATS_PORT to move ours`,
        );
      say(`starting nats-server with JetStream on 127.0.0.1:${port}`);
      const n = await startNatsServer({
        binary: bin,
        host: '127.0.0.1',
        port,
        dir: join(dataDir, 'nats'),
        logDir,
      });
      started.push(n.process);
      await recordPids();
      natsUrl = n.url;
      workerCreds = n.workerCredsFile;
      apiCreds = n.apiCredsFile;
      accountSeedFile = n.accountSeedFile;
    }

    // Identity: the configured issuer, or the local dev issuer.
    let authIssuer = process.env.AUTH_ISSUER;
    let devToken: string | undefined;
    const authEnv: NodeJS.ProcessEnv = {};
    if (!authIssuer) {
      const dir = join(dataDir, 'dev-issuer');
      const key = await loadOrCreateDevKey(dir);
      const issuerPort = envInt('CHOIROS_DEV_ISSUER_PORT', 8091);
      const issuer = await serveDevIssuer({ key, host: '127.0.0.1', port: issuerPort });
      closers.push(issuer.close);
      await writeDevIssuerInfo(dir, { issuer: issuer.issuer, audience: DEV_AUDIENCE });
      authIssuer = issuer.issuer;
      authEnv.AUTH_AUDIENCE = DEV_AUDIENCE;
      authEnv.AUTH_ALGORITHMS = 'ES256';
      devToken = await mintDevToken(
        key,
        { issuer: issuer.issuer, audience: DEV_AUDIENCE },
        { sub: 'dev', tenant: 'default', ttlSeconds: 12 * 3600 },
      );
      say(`dev issuer at ${issuer.issuer} (key in ${dir})`);
    }

    // Tenants (repository grants, issuers, caps): CHOIROS_TENANTS_FILE from the environment, or
    // the documented default (tenant `default`: local repositories under /tmp/ and the home dir).
    const tenantsFile = resolve(process.env.CHOIROS_TENANTS_FILE ?? DEFAULT_TENANTS_FILE);
    say(`tenants file ${tenantsFile}`);
    const serviceEnv: NodeJS.ProcessEnv = {
      ...process.env,
      CHOIROS_TENANTS_FILE: tenantsFile,
      TEMPORAL_ADDRESS: temporalAddress,
      NATS_URL: natsUrl,
      CHOIROS_DATA_DIR: dataDir,
      CHOIROS_SANDBOX_IMAGE: image,
    };
    const apiPort = envInt('API_PORT', 8080);
    const grpcPort = envInt('GRPC_PORT', 9090);
    const workerMetricsPort = envInt('CHOIROS_METRICS_PORT', 9464);
    say('starting the worker');
    const worker = startEntry({
      name: 'worker',
      entry: 'worker/main.ts',
      logFile: join(logDir, 'worker.log'),
      env: {
        ...serviceEnv,
        ...(workerCreds ? { NATS_CREDS: workerCreds } : {}),
        CHOIROS_METRICS_PORT: String(workerMetricsPort),
      },
    });
    started.push(worker);
    await recordPids();
    say('starting the API');
    const api = startEntry({
      name: 'api',
      entry: 'api/main.ts',
      logFile: join(logDir, 'api.log'),
      env: {
        ...serviceEnv,
        ...authEnv,
        ...(apiCreds ? { NATS_CREDS: apiCreds } : {}),
        ...(accountSeedFile ? { NATS_ACCOUNT_SEED_FILE: accountSeedFile } : {}),
        AUTH_ISSUER: authIssuer,
        API_PORT: String(apiPort),
        GRPC_PORT: String(grpcPort),
      },
    });
    started.push(api);
    await recordPids();
    const apiUrl = `http://127.0.0.1:${apiPort}`;
    await waitFor(
      'API readiness',
      async () => (await fetch(`${apiUrl}/readyz`, { signal: AbortSignal.timeout(2000) })).ok,
      { timeoutMs: 120_000, proc: api },
    );
    await waitFor(
      'worker',
      async () => (await readFile(worker.logFile, 'utf8')).includes('"worker.started"'),
      {
        timeoutMs: 120_000,
        proc: worker,
      },
    );

    say('the stack is up. Logs: ' + logDir);
    process.stdout.write(`API_URL=${apiUrl}\n`);
    if (temporalUi) process.stdout.write(`TEMPORAL_UI_URL=${temporalUi}\n`);
    process.stdout.write(`TEMPORAL_ADDRESS=${temporalAddress}\n`);
    process.stdout.write(`NATS_URL=${natsUrl}\n`);
    if (grpcPort > 0) process.stdout.write(`GRPC_ADDRESS=127.0.0.1:${grpcPort}\n`);
    process.stdout.write(`API_METRICS_URL=${apiUrl}/metrics\n`);
    process.stdout.write(`WORKER_METRICS_URL=http://127.0.0.1:${workerMetricsPort}/metrics\n`);
    if (devToken) process.stdout.write(`DEV_TOKEN=${devToken}\n`);
    say(
      'try: curl -s -X POST "$API_URL/v1/runs" -H "Authorization: Bearer $DEV_TOKEN" -H "Content-Type: application/json" -d @request.json',
    );
    say('press Ctrl-C to stop everything');

    // Stay in the foreground; if a service dies, stop the rest and fail.
    const firstExit = await Promise.race(started.map((p) => p.exited.then((code) => ({ p, code }))));
    if (!stopping) {
      say(
        `${firstExit.p.name} exited unexpectedly (code ${String(firstExit.code)}; log ${firstExit.p.logFile})`,
      );
      await shutdown(`${firstExit.p.name} exited`);
      process.exit(1);
    }
  } catch (err) {
    process.stderr.write(`[choiros] ERROR: ${err instanceof Error ? err.message : String(err)}\n`);
    await shutdown('start-up failed');
    process.exit(1);
  }
}

void main();
