/** Small helpers shared by the benchmarks. */
import { execFileSync } from 'node:child_process';
import { Agent, request } from 'node:http';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from '@temporalio/client';
import { startNatsServer, type NatsServer } from '../infra/stack/nats';
import { freePort, startEntry, waitFor, type ManagedProcess } from '../infra/stack/process';
import { startTemporalDevServer, type TemporalDevServer } from '../infra/stack/temporal';

/** The p-th percentile (0-100) of a sample, nearest-rank. */
export function pct(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

function need(name: string, script: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run via \`npm run ${script}\` (it provisions the binaries)`);
  return v;
}

export interface BenchStack {
  /** Scratch dir, removed by `stop()`. */
  work: string;
  temporal: TemporalDevServer;
  nats: NatsServer;
  /** A repository with one commit on `main`. */
  repo: string;
  /** The bench's verifier allow-list, written to a file. */
  verifiersFile: string;
  /** Run by `stop()` in order (put what depends on the services first: `unshift`). */
  cleanups: (() => Promise<unknown>)[];
  stop(): Promise<void>;
}

/**
 * A benchmark's own services on loopback: an in-memory Temporal dev server, nats-server with the
 * project's auth, a one-commit repository and the verifier file (CHOIROS_TEMPORAL_BIN,
 * CHOIROS_NATS_SERVER_BIN: the `npm run <script>` wrapper provisions them).
 */
export async function startBenchStack(script: string, verifiersYaml: string): Promise<BenchStack> {
  const work = await mkdtemp(join(tmpdir(), `choiros-${script.replace(':', '-')}-`));
  const temporal = await startTemporalDevServer({
    binary: need('CHOIROS_TEMPORAL_BIN', script),
    host: '127.0.0.1',
    port: await freePort(),
    logDir: work,
    namespace: 'default',
  });
  const cleanups: (() => Promise<unknown>)[] = [
    () => temporal.process.stop(),
    () => rm(work, { recursive: true, force: true }),
  ];
  const stop = async (): Promise<void> => {
    for (const c of cleanups) await c().catch((err: unknown) => console.error('cleanup failed:', err));
  };
  try {
    const nats = await startNatsServer({
      binary: need('CHOIROS_NATS_SERVER_BIN', script),
      host: '127.0.0.1',
      port: await freePort(),
      dir: join(work, 'nats'),
      logDir: work,
    });
    cleanups.unshift(() => nats.process.stop());
    const repo = join(work, 'repo');
    execFileSync('git', ['init', '-q', '-b', 'main', repo]);
    await writeFile(join(repo, 'README.md'), 'hello\n');
    const g = (...a: string[]) =>
      execFileSync('git', ['-c', 'user.name=B', '-c', 'user.email=b@x.invalid', ...a], { cwd: repo });
    g('add', '.');
    g('commit', '-qm', 'init');
    const verifiersFile = join(work, 'verifiers.yaml');
    await writeFile(verifiersFile, verifiersYaml);
    return { work, temporal, nats, repo, verifiersFile, cleanups, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * History events per run and sandbox-ready time (sandbox step scheduled → completed, as the run
 * saw it: queueing, worktree and container), read from each run's history, ten at a time.
 */
/** The activity that makes a run's sandbox, by run shape (v2: createSandbox, lean: createSandboxStep). */
const SANDBOX_STEPS = new Set(['createSandbox', 'createSandboxStep']);

export async function historyShape(
  client: Client,
  runIds: string[],
): Promise<{ events: number[]; sandboxReadyMs: number[] }> {
  const events: number[] = [];
  const sandboxReadyMs: number[] = [];
  const queue = [...runIds];
  const ms = (
    t: { seconds?: { toNumber(): number } | number | null; nanos?: number | null } | null | undefined,
  ) => (t ? Number(t.seconds ?? 0) * 1000 + (t.nanos ?? 0) / 1e6 : NaN);
  await Promise.all(
    Array.from({ length: 10 }, async () => {
      for (let id = queue.shift(); id; id = queue.shift()) {
        const h = await client.workflow.getHandle(id).fetchHistory();
        const list = h.events ?? [];
        events.push(list.length);
        const scheduled = list.find((e) =>
          SANDBOX_STEPS.has(e.activityTaskScheduledEventAttributes?.activityType?.name ?? ''),
        );
        const done = scheduled
          ? list.find(
              (e) =>
                Number(e.activityTaskCompletedEventAttributes?.scheduledEventId ?? -1) ===
                Number(scheduled.eventId),
            )
          : undefined;
        if (scheduled && done) sandboxReadyMs.push(ms(done.eventTime) - ms(scheduled.eventTime));
      }
    }),
  );
  return { events, sandboxReadyMs };
}

/**
 * The real API (`api/main.ts`) as a process of its own, as in production: a bench's client and the
 * gateway do not share an event loop. Token verification against `issuer` (ES256, dev audience).
 */
export async function startApiProcess(
  stack: Pick<BenchStack, 'work' | 'temporal' | 'nats' | 'verifiersFile' | 'cleanups'>,
  opts: { issuer: string; audience: string; tenantsFile: string; env?: NodeJS.ProcessEnv },
): Promise<{ url: string; proc: ManagedProcess }> {
  const port = await freePort();
  const proc = startEntry({
    name: 'api',
    entry: 'api/main.ts',
    logFile: join(stack.work, 'api.log'),
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: stack.temporal.address,
      NATS_URL: stack.nats.url,
      NATS_CREDS: stack.nats.apiCredsFile,
      NATS_ACCOUNT_SEED_FILE: stack.nats.accountSeedFile,
      CHOIROS_VERIFIERS_FILE: stack.verifiersFile,
      CHOIROS_TENANTS_FILE: opts.tenantsFile,
      CHOIROS_DATA_DIR: join(stack.work, 'data'),
      AUTH_ISSUER: opts.issuer,
      AUTH_AUDIENCE: opts.audience,
      AUTH_ALGORITHMS: 'ES256',
      API_HOST: '127.0.0.1',
      API_PORT: String(port),
      GRPC_PORT: '0',
      LOG_LEVEL: 'warn',
      ...opts.env,
    },
  });
  stack.cleanups.unshift(() => proc.stop(30_000));
  const url = `http://127.0.0.1:${port}`;
  await waitFor('API', async () => (await fetch(`${url}/readyz`)).ok, { timeoutMs: 120_000, proc });
  return { url, proc };
}

const keepAlive = new Agent({ keepAlive: true, maxSockets: 64 });

/**
 * POSTs JSON over a kept-alive connection with node:http and answers the status and parsed body.
 * The benches' HTTP client: undici's fetch costs the caller a few ms per request of its own (under
 * load ~8 ms between the client's clock and the API's, against ~1 ms for node:http).
 */
export function postJson(
  url: string,
  headers: Record<string, string>,
  body: unknown,
): Promise<{ status: number; body: unknown }> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'POST',
        agent: keepAlive,
        headers: { ...headers, 'content-type': 'application/json', 'content-length': String(payload.length) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          try {
            resolve({
              status: res.statusCode ?? 0,
              body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown,
            });
          } catch (err) {
            reject(err instanceof Error ? err : new Error(String(err)));
          }
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}
